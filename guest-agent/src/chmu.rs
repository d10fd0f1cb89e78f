//! The guest's CHMU userspace driver and a hot-page workload on the CXL node: discover the
//! CHMU through the Register Locator DVSEC (CXL 3.2 §8.1.9), configure and enable an
//! instance (§8.2.8), run a workload whose hot pages are known (their guest-physical
//! addresses from /proc/self/pagemap), drain the hotlist as the Linux RFC driver does
//! (entries [HEAD, TAIL), then HEAD = TAIL) and compare.
//!
//! Registers are reached through a [`Bar`], so the driver runs in unit tests against a
//! register block in memory. Left out: interrupts on hotlist overflow (the driver polls),
//! and more than one instance at a time.

use crate::protocol::ChmuHotReport;
use crate::sys::{mm, Bar};
use crate::vfio::{VfioDevice, VfioError};
use device_cxl_hmu::regs::*;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Errors of the CHMU driver.
#[derive(Debug, thiserror::Error)]
pub enum ChmuError {
    #[error(transparent)]
    Vfio(#[from] VfioError),
    #[error("{0}")]
    Device(String),
    #[error("{0}")]
    Os(String),
}

/// An opened CHMU: its register block through the BAR mmap and the memory range it watches.
///
/// Follows the layout the registers describe (CXL 3.2 §8.2.8): instance i at block + 10h +
/// CHMU Instance Length x i, its hotlist at the instance + CAP3, CAP0 hotlist size entries.
/// The hotlist pages are mapped straight into the guest when the device offers them as
/// sparse mmap areas; every other register access is a trapped message, so what does not
/// change (CAP3, counter width, HEAD, which only this driver writes) is read once.
#[derive(Debug)]
pub struct Chmu {
    _dev: Option<VfioDevice>,
    bar: Box<dyn Bar>,
    block: usize,
    pub hpa_base: u64,
    pub size: u64,
    instance_len: u64,
    instances: u8,
    counter_width: u8,
    hotlist_size: u64,
    /// Per instance: hotlist offset from the block (instance base + CAP3).
    hotlists: Vec<u64>,
    /// Per instance: the HEAD this driver last wrote (the host is its only writer).
    heads: Vec<std::cell::Cell<u16>>,
}

/// Finds the CHMU register block (BAR, offset) through the Register Locator DVSEC and the
/// monitored range through the PCIe DVSEC's Range 1 (CXL 3.2 §8.1.9, §8.1.3.8).
/// Returns (BAR, block offset, range base, range size).
fn locate(cfg: &[u8]) -> Result<(u8, u64, u64, u64), ChmuError> {
    let dvsecs = vfio_device::pci::dvsecs(cfg);
    let find = |id: u16| {
        dvsecs
            .iter()
            .find(|d| d.vendor == CXL_DVSEC_VENDOR && d.id == id)
            .copied()
    };
    let loc = find(CXL_DVSEC_REG_LOCATOR)
        .ok_or_else(|| ChmuError::Device("no Register Locator".into()))?;
    let mut block = None;
    let mut e = loc.offset + REG_LOCATOR_FIRST_ENTRY;
    while e + 8 <= (loc.offset + loc.length).min(cfg.len()) {
        let low = RegLocLow::from(u32::from_le_bytes([
            cfg[e],
            cfg[e + 1],
            cfg[e + 2],
            cfg[e + 3],
        ]));
        let high = u32::from_le_bytes([cfg[e + 4], cfg[e + 5], cfg[e + 6], cfg[e + 7]]);
        if low.block_id() == RBI_CHMU {
            block = Some((low.bir(), low.offset(high)));
        }
        e += 8;
    }
    let (bir, off) = block.ok_or_else(|| ChmuError::Device("no CHMU block (id 5)".into()))?;
    let range = find(CXL_DVSEC_PCIE_DEVICE)
        .and_then(|d| device_cxl_hmu::spec::dvsec::decode_range1(cfg, d.offset))
        .ok_or_else(|| ChmuError::Device("no DVSEC range 1".into()))?;
    Ok((bir, off, range.hpa_base, range.size))
}

impl Chmu {
    pub fn open(bdf: &str) -> Result<Self, ChmuError> {
        crate::vfio::bind_vfio_pci(bdf)?;
        let dev = VfioDevice::open(bdf)?;
        let cfg = dev.config()?;
        let (bir, off, hpa_base, size) = locate(&cfg)?;
        let bar = dev.map_bar(u32::from(bir))?;
        let mut c = Self::with_bar(Box::new(bar), off, hpa_base, size)?;
        c._dev = Some(dev);
        Ok(c)
    }

    /// A CHMU whose register block sits at `block` of `bar`, watching `size` bytes of
    /// guest-physical memory from `hpa_base`.
    pub fn with_bar(
        bar: Box<dyn Bar>,
        block: u64,
        hpa_base: u64,
        size: u64,
    ) -> Result<Self, ChmuError> {
        let block = usize::try_from(block).map_err(|_| ChmuError::Device("block offset".into()))?;
        let mut c = Self {
            _dev: None,
            bar,
            block,
            hpa_base,
            size,
            instance_len: 0,
            instances: 0,
            counter_width: 16,
            hotlist_size: 0,
            hotlists: Vec::new(),
            heads: Vec::new(),
        };
        c.describe()?;
        Ok(c)
    }

    /// Reads the layout from the capabilities and checks every hotlist lies in the BAR.
    fn describe(&mut self) -> Result<(), ChmuError> {
        self.instances = CommonCap0::from(self.rd(CHMU_COMMON_CAP0)).num_instances();
        self.instance_len =
            u64::from(CommonCap1::from(self.rd(CHMU_COMMON_CAP1)).instance_length());
        if self.instances == 0 {
            return Err(ChmuError::Device("the CHMU has no instances".into()));
        }
        let i0 = CHMU_FIRST_INSTANCE;
        self.hotlist_size = u64::from(ChmuCap0::from(self.rd(i0 + CHMU_CAP0)).hotlist_size());
        self.counter_width = ChmuStatus::from(self.rd(i0 + CHMU_STATUS)).counter_width();
        for i in 0..self.instances {
            let base = self.base(i);
            let hotlist = base + self.rd(base + CHMU_CAP3);
            let end = (self.block as u64)
                .checked_add(hotlist)
                .and_then(|s| s.checked_add(self.hotlist_size * 8));
            if end.is_none_or(|e| e > self.bar.len() as u64) {
                return Err(ChmuError::Device(format!(
                    "instance {i}: hotlist at block + {hotlist:#x} ({} entries) outside the BAR",
                    self.hotlist_size
                )));
            }
            self.hotlists.push(hotlist);
            let head = self
                .bar
                .read16(self.block + (base + CHMU_HOTLIST_HEAD) as usize)
                .unwrap_or(0);
            self.heads.push(std::cell::Cell::new(head));
        }
        Ok(())
    }

    fn rd(&self, off: u64) -> u64 {
        self.bar.read64(self.block + off as usize).unwrap_or(0)
    }

    fn wr(&self, off: u64, v: u64) {
        self.bar.write64(self.block + off as usize, v);
    }

    fn base(&self, i: u8) -> u64 {
        CHMU_FIRST_INSTANCE + u64::from(i) * self.instance_len
    }

    fn instance(&self, i: u8) -> Result<u64, ChmuError> {
        if i < self.instances {
            Ok(self.base(i))
        } else {
            Err(ChmuError::Device(format!(
                "no instance {i} ({} instances)",
                self.instances
            )))
        }
    }

    /// Configures instance `i` for 4 KiB units over the whole range and enables it, polling
    /// operation-in-progress (100 ms, as the driver does).
    pub fn enable(
        &self,
        i: u8,
        threshold: u32,
        epoch_scale: u8,
        epoch_mult: u16,
    ) -> Result<(), ChmuError> {
        let b = self.instance(i)?;
        self.wr(
            b + CHMU_CFG1,
            ChmuCfg1::new()
                .with_unit_size(12)
                .with_epoch_scale(epoch_scale)
                .with_epoch_mult(epoch_mult)
                .into(),
        );
        self.wr(b + CHMU_CFG2, 0);
        // The range bitmap is written as 8-byte words (§8.2.8.7), one bit per 256 MiB.
        let bits = self.size.div_ceil(CHMU_RANGE_UNIT);
        for word in 0..bits.div_ceil(64) {
            let n = (bits - word * 64).min(64);
            let v = if n == 64 { u64::MAX } else { (1u64 << n) - 1 };
            self.wr(b + CHMU_RANGE_BITMAP + word * 8, v);
        }
        self.wr(
            b + CHMU_CFG0,
            ChmuCfg0::new()
                .with_m2s_req_type(6)
                .with_threshold(threshold)
                .with_enable(true)
                .into(),
        );
        if self.settle(b)?.enabled() {
            Ok(())
        } else {
            Err(ChmuError::Device(
                "the CHMU refused the configuration".into(),
            ))
        }
    }

    /// Disables instance `i` (counting stops; the hotlist stays), as the driver does when its
    /// event stops.
    pub fn disable(&self, i: u8) -> Result<(), ChmuError> {
        let b = self.instance(i)?;
        let cfg0 = ChmuCfg0::from(self.rd(b + CHMU_CFG0)).with_enable(false);
        self.wr(b + CHMU_CFG0, cfg0.into());
        if self.settle(b)?.enabled() {
            return Err(ChmuError::Device("the CHMU stayed enabled".into()));
        }
        Ok(())
    }

    /// Polls STATUS until operation-in-progress clears (100 ms, as the driver does).
    fn settle(&self, b: u64) -> Result<ChmuStatus, ChmuError> {
        let deadline = Instant::now() + Duration::from_millis(100);
        loop {
            let st = ChmuStatus::from(self.rd(b + CHMU_STATUS));
            if st.op_in_progress() == 0 {
                return Ok(st);
            }
            if Instant::now() > deadline {
                return Err(ChmuError::Device(
                    "operation in progress did not clear within 100 ms".into(),
                ));
            }
        }
    }

    /// Drains instance `i`'s hotlist: (guest-physical address of the unit, count); returns
    /// how many entries there were (HEAD is written only when there were some). An empty
    /// hotlist costs one trapped read (TAIL, 2 bytes); entries come through the mapping.
    pub fn drain(&self, i: u8, out: &mut Vec<(u64, u64)>) -> usize {
        let (Ok(b), Some(&hotlist), Some(head_cell)) = (
            self.instance(i),
            self.hotlists.get(usize::from(i)),
            self.heads.get(usize::from(i)),
        ) else {
            return 0;
        };
        let head = u64::from(head_cell.get());
        let tail = u64::from(
            self.bar
                .read16(self.block + (b + CHMU_HOTLIST_TAIL) as usize)
                .unwrap_or(0),
        );
        let size = self.hotlist_size.max(1);
        if head == tail || tail >= size {
            return 0;
        }
        let w = u32::from(self.counter_width.min(63));
        let mut h = head;
        while h != tail {
            let e = self.rd(hotlist + (h % size) * 8);
            out.push((self.hpa_base + ((e >> w) << 12), e & ((1 << w) - 1)));
            h = (h + 1) % size;
        }
        self.bar
            .write16(self.block + (b + CHMU_HOTLIST_HEAD) as usize, tail as u16);
        head_cell.set(tail as u16);
        ((tail + size - head) % size) as usize
    }
}

/// The chmu-hot workload: `hot` pages read `rounds` times (64 reads each, through the
/// instructions `workload` names), `cold` pages read once, all on node 1; which pages are hot
/// is a permutation seeded by `seed`.
#[derive(Clone, Copy, Debug)]
pub struct HotTest {
    pub hot: usize,
    pub cold: usize,
    pub rounds: usize,
    pub threshold: u32,
    /// CFG1 epoch scale and multiplier.
    pub epoch: (u8, u16),
    pub seed: u64,
    /// Deterministic guest: no draining until the workload is over (see
    /// [`crate::protocol::Request::ChmuHot`]).
    pub reproducible: bool,
    pub workload: crate::hot_loops::HotLoop,
}

/// Trapped reads of HEAD/TAIL without a new entry after which a reproducible run's hotlist is
/// taken as complete. The workload's last epoch has ended on the guest clock by then (three
/// epochs of spinning); this covers the feed's latency on the host (the tap flushes and ticks
/// every millisecond; one trapped read costs tens of microseconds or more under TCG).
const STILL_READS: u32 = 2000;

/// Page indices in a seeded order (Fisher-Yates over xorshift64*).
fn permutation(n: usize, seed: u64) -> Vec<usize> {
    let mut x = seed ^ 0x9e37_79b9_7f4a_7c15;
    let mut v: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        let r = x.wrapping_mul(0x2545_f491_4f6c_dd1d);
        v.swap(i, (r % (i as u64 + 1)) as usize);
    }
    v
}

/// Private anonymous pages bound to node 1, each faulted in there; unmapped on drop.
#[derive(Debug)]
struct NodeOnePages {
    base: *mut u8,
    len: usize,
}

impl NodeOnePages {
    fn new(pages: usize) -> Result<Self, ChmuError> {
        let len = pages * 4096;
        let base = mm::mmap_anon(len, 0).map_err(|e| ChmuError::Os(format!("mmap: {e}")))?;
        let p = Self { base, len };
        mm::MemorySys::mbind(&mm::Linux, base, len, 1)
            .map_err(|e| ChmuError::Os(format!("mbind of {len} bytes to node 1: {e}")))?;
        for i in 0..pages {
            // SAFETY: page i is inside the mapping; the write faults it in on node 1.
            unsafe { std::ptr::write_volatile(base.add(i * 4096), i as u8) };
        }
        Ok(p)
    }

    fn page(&self, i: usize) -> *mut u8 {
        self.base.wrapping_add(i * 4096)
    }
}

impl Drop for NodeOnePages {
    fn drop(&mut self) {
        // SAFETY: the mapping made in new(); the workload is over.
        unsafe { mm::munmap(self.base, self.len) };
    }
}

/// After the workload: a reproducible run spins the guest clock three epochs past the last
/// access, then drains until the hotlist has been still for [`STILL_READS`] reads; any other
/// run lets the last epochs close for 200 ms, draining as the driver would.
fn drain_to_the_end(chmu: &Chmu, t: &HotTest, reported: &mut Vec<(u64, u64)>) -> u64 {
    let mut sink = 0u64;
    if !t.reproducible {
        let until = Instant::now() + Duration::from_millis(200);
        while Instant::now() < until {
            chmu.drain(0, reported);
            std::thread::sleep(Duration::from_millis(10));
        }
        return sink;
    }
    // One iteration is at least one instruction.
    let epoch = device_cxl_hmu::layout::epoch_length(t.epoch.0, t.epoch.1).unwrap_or(0);
    for i in 0..3 * epoch {
        sink = std::hint::black_box(sink.wrapping_add(i));
    }
    // Bounded: a device that never goes still ends the wait after 100 stillness windows.
    let mut still = 0;
    for _ in 0..100 * STILL_READS {
        if still >= STILL_READS {
            break;
        }
        still = if chmu.drain(0, reported) == 0 {
            still + 1
        } else {
            0
        };
    }
    sink
}

/// Runs the hot-page workload on node 1 and reports what the CHMU found.
pub fn hot_test(bdf: &str, t: HotTest) -> Result<ChmuHotReport, ChmuError> {
    let chmu = Chmu::open(bdf)?;
    let pages = t.hot + t.cold;
    let mem = NodeOnePages::new(pages)?;
    let pagemap = std::fs::File::open("/proc/self/pagemap")
        .map_err(|e| ChmuError::Os(format!("pagemap: {e}")))?;
    // Workload order: the first `hot` of the permutation are the hot pages.
    let order = permutation(pages, t.seed);
    let gpas: Vec<Option<u64>> = order
        .iter()
        .map(|&i| crate::arena::gpa_of(&pagemap, mem.page(i) as usize))
        .collect();
    let hot_offsets: Vec<usize> = order[..t.hot].iter().map(|&i| i * 4096).collect();
    // SAFETY: the hot pages are pages of the mapping, which outlives the set.
    let mut hot_set =
        unsafe { crate::hot_loops::HotSet::new(t.workload, mem.base, &hot_offsets, t.seed) };
    crate::hot_loops::let_the_feed_settle(t.reproducible);
    chmu.enable(0, t.threshold, t.epoch.0, t.epoch.1)?;
    let mut reported = Vec::new();
    let t0 = Instant::now();
    let mut sink = 0u64;
    for &i in &order[t.hot..] {
        // SAFETY: inside the mapping: one access per cold page.
        sink = sink.wrapping_add(u64::from(unsafe { std::ptr::read_volatile(mem.page(i)) }));
    }
    for r in 0..t.rounds {
        sink = sink.wrapping_add(hot_set.round(r));
        if !t.reproducible {
            chmu.drain(0, &mut reported);
        }
    }
    let workload_micros = t0.elapsed().as_micros() as u64;
    sink = sink.wrapping_add(drain_to_the_end(&chmu, &t, &mut reported));
    std::hint::black_box(sink);
    let disabled = chmu.disable(0);
    drop(mem);
    disabled?;
    Ok(score(&chmu, &t, &gpas, reported, workload_micros))
}

/// Scores the hotlist against the known hot set: `gpas` are the workload's pages in
/// workload order (the first `t.hot` hot).
fn score(
    chmu: &Chmu,
    t: &HotTest,
    gpas: &[Option<u64>],
    reported: Vec<(u64, u64)>,
    workload_micros: u64,
) -> ChmuHotReport {
    let on_node1 = gpas
        .iter()
        .flatten()
        .filter(|g| (chmu.hpa_base..chmu.hpa_base + chmu.size).contains(*g))
        .count();
    let mut by_gpa: BTreeMap<u64, u64> = BTreeMap::new();
    for (g, c) in &reported {
        *by_gpa.entry(*g).or_default() += c;
    }
    let hot_gpas: Vec<u64> = gpas[..t.hot].iter().flatten().copied().collect();
    let cold_gpas: Vec<u64> = gpas[t.hot..].iter().flatten().copied().collect();
    let hot_found = hot_gpas.iter().filter(|g| by_gpa.contains_key(g)).count();
    let cold_reported = cold_gpas.iter().filter(|g| by_gpa.contains_key(g)).count();
    ChmuHotReport {
        hpa_base: chmu.hpa_base,
        size: chmu.size,
        pages_on_node1: on_node1 as u64,
        hot_pages: hot_gpas.len() as u64,
        cold_pages: cold_gpas.len() as u64,
        hot_found: hot_found as u64,
        cold_reported: cold_reported as u64,
        entries: reported.len() as u64,
        distinct_units: by_gpa.len() as u64,
        workload_micros,
        hot_counts: hot_gpas
            .iter()
            .map(|g| by_gpa.get(g).copied().unwrap_or(0))
            .collect(),
        hot_gpas,
        hotlist: reported,
        seed: t.seed,
        reproducible: t.reproducible,
        workload: t.workload,
        accesses_per_hot_page: t.rounds as u64 * crate::hot_loops::ACCESSES_PER_PAGE,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hot_set_permutation_is_seeded_and_complete() {
        let a = permutation(288, 1);
        let mut sorted = a.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..288).collect::<Vec<_>>());
        assert_eq!(permutation(288, 1), a, "same seed, same order");
        assert_ne!(
            permutation(288, 2)[..32],
            a[..32],
            "another seed, another hot set"
        );
    }
}

#[cfg(test)]
mod driver_tests {
    //! The driver against a CHMU register block in memory ([`MemBar`]): one instance of
    //! 3000h bytes at block + 10h, its hotlist at the instance + CAP3 (FF0h, so block +
    //! 1000h), 64 entries of 16-bit counters, as CXL 3.2 §8.2.8 lays them out.
    use super::*;
    use crate::sys::double::MemBar;
    use std::sync::Arc;

    const HPA: u64 = 0x1_0000_0000;
    const SIZE: u64 = 512 << 20;
    const I0: usize = CHMU_FIRST_INSTANCE as usize;
    const HOTLIST: usize = 0x1000;

    /// The block; with `obeys`, an enable in CFG0 shows in STATUS as the device does.
    fn block(obeys: bool) -> Arc<MemBar> {
        let mut bar = MemBar::new(0x10000);
        if obeys {
            bar = bar.with_hook(Box::new(|m, off, v| {
                if off == I0 + CHMU_CFG0 as usize {
                    let st = I0 + CHMU_STATUS as usize;
                    m[st] = (m[st] & !1) | u8::from(ChmuCfg0::from(v).enable());
                }
            }));
        }
        let b = Arc::new(bar);
        b.set(0, 8, CommonCap0::new().with_num_instances(1).into());
        b.set(8, 8, CommonCap1::new().with_instance_length(0x3000).into());
        b.set(I0, 8, ChmuCap0::new().with_hotlist_size(64).into());
        b.set(I0 + CHMU_CAP3 as usize, 8, (HOTLIST - I0) as u64);
        b.set(
            I0 + CHMU_STATUS as usize,
            8,
            ChmuStatus::new().with_counter_width(16).into(),
        );
        b
    }

    fn entry(unit: u64, count: u64) -> u64 {
        (unit << 16) | count
    }

    #[test]
    fn drain_reads_head_to_tail_and_moves_head() {
        let b = block(true);
        let chmu = Chmu::with_bar(Box::new(Arc::clone(&b)), 0, HPA, SIZE).expect("describe");
        for (k, (unit, count)) in [(5, 7), (9, 2), (5, 1)].into_iter().enumerate() {
            b.set(HOTLIST + 8 * k, 8, entry(unit, count));
        }
        b.set(I0 + CHMU_HOTLIST_TAIL as usize, 2, 3);
        let mut out = Vec::new();
        assert_eq!(chmu.drain(0, &mut out), 3);
        assert_eq!(
            out,
            vec![
                (HPA + 5 * 4096, 7),
                (HPA + 9 * 4096, 2),
                (HPA + 5 * 4096, 1)
            ]
        );
        assert_eq!(b.get(I0 + CHMU_HOTLIST_HEAD as usize, 2), 3, "HEAD = TAIL");
        assert_eq!(chmu.drain(0, &mut out), 0, "nothing new");
        assert_eq!(out.len(), 3);
    }

    #[test]
    fn drain_wraps_around_the_end_of_the_hotlist() {
        let b = block(true);
        b.set(I0 + CHMU_HOTLIST_HEAD as usize, 2, 62);
        let chmu = Chmu::with_bar(Box::new(Arc::clone(&b)), 0, HPA, SIZE).expect("describe");
        for (slot, unit) in [(62, 1), (63, 2), (0, 3), (1, 4)] {
            b.set(HOTLIST + 8 * slot, 8, entry(unit, 1));
        }
        b.set(I0 + CHMU_HOTLIST_TAIL as usize, 2, 2);
        let mut out = Vec::new();
        assert_eq!(chmu.drain(0, &mut out), 4);
        let units: Vec<u64> = out.iter().map(|(g, _)| (g - HPA) / 4096).collect();
        assert_eq!(units, vec![1, 2, 3, 4]);
    }

    #[test]
    fn a_tail_past_the_hotlist_is_ignored() {
        let b = block(true);
        let chmu = Chmu::with_bar(Box::new(Arc::clone(&b)), 0, HPA, SIZE).expect("describe");
        b.set(I0 + CHMU_HOTLIST_TAIL as usize, 2, 64);
        let mut out = Vec::new();
        assert_eq!(chmu.drain(0, &mut out), 0);
        assert_eq!(
            b.get(I0 + CHMU_HOTLIST_HEAD as usize, 2),
            0,
            "HEAD untouched"
        );
        assert_eq!(chmu.drain(1, &mut out), 0, "no instance 1");
    }

    #[test]
    fn enable_programs_units_epoch_range_and_threshold() {
        let b = block(true);
        let chmu = Chmu::with_bar(Box::new(Arc::clone(&b)), 0, HPA, SIZE).expect("describe");
        chmu.enable(0, 4, 3, 5).expect("enabled");
        let cfg1 = ChmuCfg1::from(b.get(I0 + CHMU_CFG1 as usize, 8));
        assert_eq!(
            (cfg1.unit_size(), cfg1.epoch_scale(), cfg1.epoch_mult()),
            (12, 3, 5)
        );
        // 512 MiB is two 256 MiB range units.
        assert_eq!(b.get(I0 + CHMU_RANGE_BITMAP as usize, 8), 0b11);
        let cfg0 = ChmuCfg0::from(b.get(I0 + CHMU_CFG0 as usize, 8));
        assert_eq!((cfg0.threshold(), cfg0.enable()), (4, true));
        chmu.disable(0).expect("disabled");
        assert!(!ChmuStatus::from(b.get(I0 + CHMU_STATUS as usize, 8)).enabled());
    }

    #[test]
    fn a_refused_enable_is_an_error() {
        let b = block(false);
        let chmu = Chmu::with_bar(Box::new(Arc::clone(&b)), 0, HPA, SIZE).expect("describe");
        let e = chmu.enable(0, 4, 3, 5).expect_err("refused");
        assert!(e.to_string().contains("refused"), "{e}");
        assert!(chmu.enable(1, 4, 3, 5).is_err(), "no instance 1");
    }

    #[test]
    fn a_hotlist_outside_the_bar_is_refused() {
        let b = block(true);
        b.set(I0 + CHMU_CAP3 as usize, 8, 0xFFF0);
        let e = Chmu::with_bar(Box::new(Arc::clone(&b)), 0, HPA, SIZE).expect_err("outside");
        assert!(e.to_string().contains("outside the BAR"), "{e}");
        let empty = Arc::new(MemBar::new(0x1000));
        assert!(
            Chmu::with_bar(Box::new(empty), 0, HPA, SIZE).is_err(),
            "no instances"
        );
    }
}
