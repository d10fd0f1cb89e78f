//! The stock kernel's tiering as the baseline (source `kernel`): no migrator. The kernel's
//! NUMA balancing in memory-tiering mode (`numa_balancing = 2`; Linux
//! `Documentation/admin-guide/sysctl/kernel.rst`, "numa_balancing") unmaps a window of the
//! workload's pages every scan period, takes the hint fault of the next access, and
//! promotes a page of a slower tier (here node 1, a CPU-less node whose memory tier
//! `mm/memory-tiers.c` places below node 0's from the HMAT) when the fault came within the
//! hot threshold of the scan, up to the promotion rate limit (`kernel/sched/fair.c`
//! `should_numa_migrate_memory()`, `mm/migrate.c` `migrate_misplaced_folio()`). Demotion
//! (`/sys/kernel/mm/numa/demotion_enabled`) lets reclaim on node 0 move pages down instead
//! of dropping them.
//!
//! The same seeded workload as a migrator run runs on anonymous memory placed on node 1
//! (bound there while it is filled, then given back the default policy, so the kernel may
//! move it), in 4 KiB pages like the migrator's folios unless `thp` lets the kernel use
//! transparent huge pages. The report has the migrator's figures: the node-0 share of accesses over time
//! (the workload counts an access as node 0's by a node map that `Watch` refreshes from
//! `move_pages(2)` queries every 100 ms), the folios on node 0 at the end (checked
//! against their seeded contents, and by the harness in guest RAM), `/proc/vmstat`'s
//! promotion, hint-fault and demotion counters, and guest CPU time. Every knob is put back
//! when the run ends.

use crate::arena::{Arena, Layout};
use crate::migrate::{open_pagemap, report, verify_end_state, MigrateError, Ran, Retained};
use crate::mover::BatchMover;
use crate::pipeline::{Pipeline, Sampler, SourceStage, Stage, Tick};
use crate::promote::{Batcher, Promoter};
use crate::spec::*;
use crate::sys;
use crate::workload::{fill, COUNTER_BYTES};
use std::cell::Cell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;

const NUMA_BALANCING: &str = "/proc/sys/kernel/numa_balancing";
/// `NUMA_BALANCING_MEMORY_TIERING` (`include/linux/sched/sysctl.h`).
const MEMORY_TIERING: &str = "2";
const RATE_LIMIT: &str = "/proc/sys/kernel/numa_balancing_promote_rate_limit_MBps";
const SCHED_NB: &str = "/sys/kernel/debug/sched/numa_balancing";
const DEMOTION: &str = "/sys/kernel/mm/numa/demotion_enabled";
/// How often [`Watch`] asks where the pages are. A `move_pages(2)` query of 8192 pages takes
/// tens of milliseconds of guest CPU under TCG: every 100 ms keeps the node map at most one
/// period behind the kernel for about a third of a vCPU (reported as `observer_cpu_s`).
const WATCH_MS: u64 = 100;
/// Read only, for the report.
const THP: &str = "/sys/kernel/mm/transparent_hugepage/enabled";

/// The `/proc/vmstat` counters a kernel run reports (deltas over the run).
pub const VMSTAT_KEYS: &[&str] = &[
    "pgpromote_success",
    "pgpromote_candidate",
    "numa_pte_updates",
    "numa_hint_faults",
    "numa_hint_faults_local",
    "numa_pages_migrated",
    "pgmigrate_success",
    "pgmigrate_fail",
    "pgdemote_kswapd",
    "pgdemote_direct",
    "pgdemote_khugepaged",
];

/// `/proc/vmstat` as name -> value.
pub fn parse_vmstat(text: &str) -> HashMap<String, u64> {
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.to_owned(), v.trim().parse().ok()?))
        })
        .collect()
}

fn vmstat() -> HashMap<String, u64> {
    parse_vmstat(&std::fs::read_to_string("/proc/vmstat").unwrap_or_default())
}

/// The deltas of [`VMSTAT_KEYS`] from `before` to `after` (a key the kernel lacks is left
/// out).
pub fn vmstat_delta(
    before: &HashMap<String, u64>,
    after: &HashMap<String, u64>,
) -> Vec<(String, u64)> {
    VMSTAT_KEYS
        .iter()
        .filter_map(|&k| {
            let (a, b) = (before.get(k)?, after.get(k)?);
            Some((k.to_owned(), b.saturating_sub(*a)))
        })
        .collect()
}

/// The kernel's knobs as the run set them; the old values are written back on drop.
#[derive(Debug, Default)]
struct Knobs {
    saved: Vec<(PathBuf, String)>,
    settings: Vec<(String, String)>,
}

impl Knobs {
    /// Writes `value` to `path`, remembering the old value; records what happened.
    fn set(&mut self, path: &Path, value: &str) -> bool {
        let name = path.display().to_string();
        let old = match std::fs::read_to_string(path) {
            Ok(v) => v.trim().to_owned(),
            Err(e) => {
                self.settings.push((name, format!("absent ({e})")));
                return false;
            }
        };
        if let Err(e) = std::fs::write(path, value) {
            self.settings.push((name, format!("not set ({e})")));
            return false;
        }
        self.saved.push((path.to_owned(), old));
        self.settings.push((name, value.to_owned()));
        true
    }

    /// Memory-tiering mode, the rate limit, the threshold and scan knobs (debugfs, mounted
    /// if it is not), demotion.
    fn apply(k: &KernelSpec) -> Result<Self, MigrateError> {
        let mut s = Self::default();
        if !s.set(Path::new(NUMA_BALANCING), MEMORY_TIERING) {
            return Err(MigrateError::Missing(format!(
                "{NUMA_BALANCING}: the kernel's NUMA balancing is needed for the kernel source ({})",
                s.settings.last().map_or("", |x| x.1.as_str())
            )));
        }
        s.set(Path::new(RATE_LIMIT), &k.rate_limit_mbps.to_string());
        let nb = Path::new(SCHED_NB);
        if !nb.exists() {
            // Already mounted elsewhere or not built in: the knobs are then reported absent.
            let _ = sys::fs::mount_debugfs();
        }
        s.set(
            &nb.join("hot_threshold_ms"),
            &k.hot_threshold_ms.to_string(),
        );
        if let Some(v) = k.scan_delay_ms {
            s.set(&nb.join("scan_delay_ms"), &v.to_string());
        }
        if let Some(v) = k.scan_period_min_ms {
            s.set(&nb.join("scan_period_min_ms"), &v.to_string());
        }
        s.set(Path::new(DEMOTION), if k.demotion { "1" } else { "0" });
        let thp = std::fs::read_to_string(THP).unwrap_or_else(|e| format!("absent ({e})"));
        s.settings.push((THP.to_owned(), thp.trim().to_owned()));
        s.settings.push((
            "the workload's pages".to_owned(),
            if k.thp {
                "transparent huge pages allowed".to_owned()
            } else {
                "4 KiB pages (MADV_NOHUGEPAGE)".to_owned()
            },
        ));
        Ok(s)
    }
}

impl Drop for Knobs {
    fn drop(&mut self) {
        for (p, v) in self.saved.iter().rev() {
            let _ = std::fs::write(p, v);
        }
    }
}

/// Refreshes the arena's node map from `move_pages(2)` queries every `period_ms`, so the
/// workload counts its accesses by where the kernel put the pages.
struct Watch {
    arena: Arc<Arena>,
    period_ms: u64,
    next: u64,
    /// The queries' CPU time so far (ns).
    cpu_ns: Rc<Cell<u64>>,
}

/// Sets each folio's node from a `move_pages(2)` query; returns how many are on node 0.
fn refresh(arena: &Arena) -> Result<u64, MigrateError> {
    let pages: Vec<*mut u8> = (0..arena.n).map(|i| arena.at(i)).collect();
    let st = arena.move_pages(&pages, None)?;
    let mut on0 = 0;
    for (i, s) in st.iter().enumerate() {
        // A page the query could not place (a negative errno) keeps its last known node.
        if let Ok(node) = u8::try_from(*s) {
            arena.node[i].store(node, Ordering::Release);
            on0 += u64::from(node == 0);
        }
    }
    Ok(on0)
}

impl Stage for Watch {
    fn tick(&mut self, t: Tick<'_>) -> Result<(), MigrateError> {
        if t.now_ms < self.next {
            return Ok(());
        }
        self.next = t.now_ms + self.period_ms;
        let c0 = sys::mm::thread_cpu_ns();
        refresh(&self.arena)?;
        self.cpu_ns
            .set(self.cpu_ns.get() + sys::mm::thread_cpu_ns().saturating_sub(c0));
        Ok(())
    }
}

/// The pipeline's mover in a kernel run: never asked (nothing is recorded with the
/// promoter), since the kernel moves the pages itself.
struct KernelMoves;

impl BatchMover for KernelMoves {
    fn move_batch(
        &mut self,
        _folios: Vec<u32>,
        _start_ms: u64,
    ) -> Result<(BatchStat, Vec<u32>), MigrateError> {
        Err(MigrateError::Spec(
            "a kernel run has no migrator: the kernel moves the pages".into(),
        ))
    }
}

/// Checks each folio now on node 0 against its seeded contents (past the counter words the
/// workload writes): (checked, mismatched).
fn check_contents(arena: &Arena, seed: u64) -> (u64, u64) {
    let mut want = vec![0u8; arena.folio];
    let (mut checked, mut bad) = (0, 0);
    for i in 0..arena.n {
        if arena.node[i].load(Ordering::Acquire) != 0 {
            continue;
        }
        fill(seed, i, &mut want);
        checked += 1;
        bad += u64::from(arena.bytes(i)[COUNTER_BYTES..] != want[COUNTER_BYTES..]);
    }
    (checked, bad)
}

/// Runs the workload for `spec.duration_ms` with the kernel's tiering on, then checks and
/// reports as a migrator run does.
pub fn run(spec: MigrateSpec) -> Result<(MigrateReport, Retained), MigrateError> {
    let (n, seed) = (spec.workload.pages as usize, spec.workload.seed);
    let layout = if spec.kernel.thp {
        Layout::Anon
    } else {
        Layout::AnonBasePages
    };
    let arena = Arc::new(Arena::build(
        Arc::new(sys::mm::Linux),
        FolioSize::Base,
        n,
        layout,
        |i, b| fill(seed, i, b),
    )?);
    // Filled on node 1 under MPOL_BIND; the default policy lets the kernel promote.
    arena
        .sys
        .unbind(arena.base, arena.len())
        .map_err(|e| MigrateError::Missing(format!("mbind(MPOL_DEFAULT) of the arena: {e}")))?;
    let pagemap = open_pagemap()?;
    let knobs = Knobs::apply(&spec.kernel)?;
    let watch_cpu = Rc::new(Cell::new(0));
    let mut mover = KernelMoves;
    let p = &spec.promotion;
    let mut pipe = Pipeline {
        source: SourceStage::new(SourceKind::Kernel, None, spec.scan_ms),
        promoter: Promoter::new(p.threshold, p.window_ms, p.rate_limit_mbps, 4096),
        batcher: Batcher::new(spec.batch.size, spec.batch.timeout_ms, false),
        mover: &mut mover,
        sampler: Sampler::new(spec.sample_ms),
        budget: None,
        stages: vec![Box::new(Watch {
            arena: Arc::clone(&arena),
            period_ms: WATCH_MS,
            next: 0,
            cpu_ns: Rc::clone(&watch_cpu),
        })],
        batches: Vec::new(),
        tuned: Vec::new(),
        auto_tune: false,
    };
    let before = vmstat();
    let ran = Ran::run(&mut pipe, &arena, &spec)?;
    drop(pipe);
    let vm = vmstat_delta(&before, &vmstat());
    let settings = knobs.settings.clone();
    drop(knobs);
    refresh(&arena)?;
    let mut verify = VerifyStats::default();
    (verify.copies_checked, verify.copy_mismatches) = check_contents(&arena, seed);
    verify_end_state(&arena, &ran, &mut verify)?;
    let kernel = KernelReport {
        settings,
        pages_promoted: vm
            .iter()
            .find(|(k, _)| k == "pgpromote_success")
            .map_or(0, |(_, v)| *v),
        vmstat: vm,
        observer_cpu_s: watch_cpu.get() as f64 / 1e9,
    };
    let mut r = report(spec, &arena, &pagemap, ran, verify, Vec::new());
    r.kernel = Some(kernel);
    Ok((r, Retained::new(arena, false)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vmstat_deltas_cover_the_tiering_counters_the_kernel_has() {
        let a = parse_vmstat("nr_free_pages 100\npgpromote_success 5\nnuma_hint_faults 10\n");
        let b = parse_vmstat(
            "nr_free_pages 90\npgpromote_success 705\nnuma_hint_faults 4010\npgdemote_kswapd 3\n",
        );
        assert_eq!(
            vmstat_delta(&a, &b),
            vec![
                ("pgpromote_success".to_owned(), 700),
                ("numa_hint_faults".to_owned(), 4000)
            ],
            "pgdemote_kswapd was not there before: left out"
        );
    }

    #[test]
    fn knobs_are_written_and_put_back() {
        let dir = std::env::temp_dir().join(format!("agent-knobs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let f = dir.join("rate");
        std::fs::write(&f, "65536\n").expect("w");
        {
            let mut k = Knobs::default();
            assert!(k.set(&f, "100"));
            assert!(!k.set(&dir.join("missing"), "1"));
            assert_eq!(std::fs::read_to_string(&f).expect("r"), "100");
            assert_eq!(k.settings[0].1, "100");
            assert!(k.settings[1].1.starts_with("absent"), "{:?}", k.settings);
        }
        assert_eq!(std::fs::read_to_string(&f).expect("r"), "65536");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_contents_check_finds_a_changed_byte_past_the_counters() {
        let fake = crate::sys::double::FakeMemory::default();
        let a = Arena::with_sys(Arc::new(fake), FolioSize::Base, 4, false, |i, b| {
            fill(3, i, b)
        })
        .expect("arena");
        a.node[1].store(0, Ordering::Release);
        a.node[2].store(0, Ordering::Release);
        // SAFETY: folio 2 is mapped; byte 1000 is past the counter words.
        unsafe { a.at(2).add(1000).write_volatile(a.bytes(2)[1000] ^ 1) };
        // SAFETY: as above; a counter word may change.
        unsafe { a.at(1).write_volatile(9) };
        assert_eq!(check_contents(&a, 3), (2, 1));
    }
}
