//! Hotness sources behind one trait, so hardware hints and a software scanner can be compared
//! on one workload (the producers that feed `pghot_record_access()` in the pghot RFC series,
//! lore.kernel.org/r/20250910144653.212066-1-bharata@amd.com):
//!
//! - [`ChmuSource`]: drains the CHMU hotlist (as the RFC hmu.c driver does on its interrupt)
//!   and translates each unit's address (DPA -> HPA by DVSEC Range 1, done by the driver) to
//!   the workload folio that lives there;
//! - [`DamonSource`]: DAMON's virtual-address monitoring (page-table Accessed bits) through
//!   sysfs (Linux `Documentation/admin-guide/mm/damon/usage.rst`), reading the regions of a
//!   `stat` scheme after each aggregation.

use crate::chmu::{Chmu, ChmuError};
use crate::spec::SourceKind;
use std::collections::HashMap;
use std::path::PathBuf;

/// One poll's findings: (folio, accesses) and how many raw records did not name a folio.
#[derive(Debug, Default)]
pub struct Findings {
    pub hits: Vec<(u32, u32)>,
    pub records: u64,
    pub foreign: u64,
}

pub trait HotnessSource {
    fn kind(&self) -> SourceKind;
    fn poll(&mut self) -> Findings;
}

/// The CHMU's hotlist.
#[derive(Debug)]
pub struct ChmuSource {
    chmu: Chmu,
    /// Guest-physical frame (address >> shift) -> folio.
    by_frame: HashMap<u64, u32>,
    shift: u32,
    buf: Vec<(u64, u64)>,
}

impl ChmuSource {
    /// Enables instance 0 (4 KiB units over the whole range) with the given threshold and
    /// epoch; `frames` maps each folio's guest-physical address to its index.
    pub fn start(
        bdf: &str,
        frames: &[(u64, u32)],
        folio_bytes: u64,
        threshold: u32,
        epoch: (u8, u16),
    ) -> Result<Self, ChmuError> {
        let chmu = Chmu::open(bdf)?;
        chmu.enable(0, threshold, epoch.0, epoch.1)?;
        let shift = folio_bytes.trailing_zeros();
        Ok(Self {
            chmu,
            by_frame: frames.iter().map(|&(g, f)| (g >> shift, f)).collect(),
            shift,
            buf: Vec::new(),
        })
    }

    pub fn range(&self) -> (u64, u64) {
        (self.chmu.hpa_base, self.chmu.size)
    }
}

impl HotnessSource for ChmuSource {
    fn kind(&self) -> SourceKind {
        SourceKind::Chmu
    }

    fn poll(&mut self) -> Findings {
        self.buf.clear();
        self.chmu.drain(0, &mut self.buf);
        let mut f = Findings {
            records: self.buf.len() as u64,
            ..Findings::default()
        };
        for &(gpa, count) in &self.buf {
            match self.by_frame.get(&(gpa >> self.shift)) {
                Some(&folio) => f.hits.push((folio, count.min(u64::from(u32::MAX)) as u32)),
                None => f.foreign += 1,
            }
        }
        f
    }
}

/// Errors setting up DAMON name the sysfs file.
#[derive(Debug, thiserror::Error)]
#[error("DAMON sysfs: writing {value:?} to {}", path.display())]
pub struct DamonError {
    path: PathBuf,
    value: String,
    #[source]
    source: std::io::Error,
}

const DAMON: &str = "/sys/kernel/mm/damon/admin/kdamonds";

/// DAMON monitoring one address range of this process.
#[derive(Debug)]
pub struct DamonSource {
    kdamond: PathBuf,
    scheme: PathBuf,
    start: u64,
    folio: u64,
    n: u32,
}

fn put(path: PathBuf, value: impl ToString) -> Result<(), DamonError> {
    let value = value.to_string();
    std::fs::write(&path, &value).map_err(|source| DamonError {
        path,
        value,
        source,
    })
}

impl DamonSource {
    /// Starts one kdamond with a vaddr context over `[start, start + n * folio)` of this
    /// process (turning the built-in damon_stat monitor off first: it holds DAMON otherwise).
    pub fn start(
        start: u64,
        folio: u64,
        n: u32,
        sample_us: u64,
        aggr_us: u64,
    ) -> Result<Self, DamonError> {
        let _ = std::fs::write("/sys/module/damon_stat/parameters/enabled", "N");
        let root = PathBuf::from(DAMON);
        put(root.join("nr_kdamonds"), 1)?;
        let k = root.join("0");
        put(k.join("contexts/nr_contexts"), 1)?;
        let c = k.join("contexts/0");
        put(c.join("operations"), "vaddr")?;
        let attrs = c.join("monitoring_attrs");
        put(attrs.join("intervals/sample_us"), sample_us)?;
        put(attrs.join("intervals/aggr_us"), aggr_us)?;
        put(attrs.join("intervals/update_us"), aggr_us * 10)?;
        // Every poll reads each region's files through sysfs, which is slow in a TCG guest:
        // a few hundred regions keep a poll in the tens of milliseconds.
        let regions = (n / 32).clamp(10, 100);
        put(attrs.join("nr_regions/max"), regions * 3)?;
        put(attrs.join("nr_regions/min"), regions)?;
        put(c.join("targets/nr_targets"), 1)?;
        put(c.join("targets/0/pid_target"), std::process::id())?;
        put(c.join("targets/0/regions/nr_regions"), 1)?;
        put(c.join("targets/0/regions/0/start"), start)?;
        put(
            c.join("targets/0/regions/0/end"),
            start + folio * u64::from(n),
        )?;
        put(c.join("schemes/nr_schemes"), 1)?;
        let scheme = c.join("schemes/0");
        put(scheme.join("action"), "stat")?;
        // The access pattern's bounds default to 0 (nothing matches): every size and age, and
        // regions seen accessed at least once per aggregation.
        let pat = scheme.join("access_pattern");
        put(pat.join("sz/max"), u64::MAX)?;
        put(pat.join("nr_accesses/min"), 1)?;
        put(pat.join("nr_accesses/max"), u32::MAX)?;
        put(pat.join("age/max"), u32::MAX)?;
        put(k.join("state"), "on")?;
        Ok(Self {
            kdamond: k,
            scheme,
            start,
            folio,
            n,
        })
    }
}

impl HotnessSource for DamonSource {
    fn kind(&self) -> SourceKind {
        SourceKind::Damon
    }

    fn poll(&mut self) -> Findings {
        let mut f = Findings::default();
        if put(self.kdamond.join("state"), "update_schemes_tried_regions").is_err() {
            return f;
        }
        let dir = self.scheme.join("tried_regions");
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return f;
        };
        let num = |p: PathBuf| -> u64 {
            std::fs::read_to_string(p)
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(0)
        };
        for e in entries.flatten() {
            let p = e.path();
            if !p.join("start").exists() {
                continue;
            }
            f.records += 1;
            let (s, end, acc) = (
                num(p.join("start")),
                num(p.join("end")),
                num(p.join("nr_accesses")),
            );
            if acc == 0 {
                continue;
            }
            let first = s.saturating_sub(self.start) / self.folio;
            let last = end
                .saturating_sub(self.start)
                .div_ceil(self.folio)
                .min(u64::from(self.n));
            if s < self.start || first >= last {
                f.foreign += 1;
                continue;
            }
            // Every folio of the region gets the region's access count (DAMON's resolution).
            let n = acc.min(u64::from(u32::MAX)) as u32;
            f.hits.extend((first..last).map(|i| (i as u32, n)));
        }
        f
    }
}

impl Drop for DamonSource {
    fn drop(&mut self) {
        let _ = std::fs::write(self.kdamond.join("state"), "off");
    }
}
