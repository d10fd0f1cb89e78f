//! The CHMU's counting and reporting (CXL 3.2 §8.2.8, the CHMU's theory of operation):
//! accesses in, hot units out through each instance's hotlist ring (§8.2.8.5-8). No I/O: the
//! transport feeds it records (from the TCG plugin or a trace) and raises the vectors it
//! returns. A full hotlist and a crossed fill threshold are events of the instance state
//! machine ([`crate::core::state`]), which latches the STATUS bits and decides the interrupt.
//!
//! Time is whatever clock the records carry (host nanoseconds, or guest instructions counted
//! as one nanosecond each); epochs end when a record's or a clock tick's time crosses the
//! epoch boundary, so the same records always give the same hotlist. Readings chosen here:
//! - the first epoch starts at the first access in range after enable (or reset), not at
//!   enable: the server does not know the feed's clock at the moment of the register write,
//!   and anchoring on an access keeps the epoch grid a function of the accesses alone;
//! - down-sampling keeps every 2^n-th matching access of an instance (or a seeded random one
//!   in 2^n with CFG0 randomized down-sampling);
//! - a record may stand for several accesses (its weight: a sampling feed that picks one in N
//!   accesses sends weight N); it adds its weight to its unit's count, so counts estimate true
//!   access counts, and down-sampling keeps one in 2^n of the accesses it stands for;
//! - counts saturate at 2^counter_width - 1; a unit is hot when its count exceeds the
//!   threshold; at epoch end the hot units are appended in unit order, then counters clear;
//! - always-on reporting appends a unit the moment its count first exceeds the threshold in
//!   the epoch; a reporting mode other than 0 or 1 counts as epoch-based (§8.2.8.3: the device
//!   ignores an unsupported mode);
//! - the fill (notification) threshold sets STATUS level-crossed only while its interrupt is
//!   enabled and only up to the hotlist size (§8.2.8.3: otherwise the field is ignored);
//! - a full hotlist drops further entries and sets STATUS.overflow (CAP1 insert-after-clear
//!   is not offered);
//! - TEE and non-TEE request types are not distinguished (there is no TEE traffic).
//!
//! Left out: per-counter epochs (CAP0 advertises the global epoch type only), overlapping
//! address ranges and insert-after-clear (not advertised in CAP1).

use crate::core::chmu::ChmuBlock;
use crate::core::state::Event;
use crate::metrics::HotnessMetrics;
pub use crate::spec::layout::epoch_length;
pub use crate::spec::record::ReqKind;
use crate::spec::regs::*;
use std::collections::BTreeMap;

/// One access to the monitored memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Access {
    /// Device physical address (offset in the monitored range).
    pub dpa: u64,
    pub kind: ReqKind,
    /// Clock value of the access (ns, or instructions).
    pub time: u64,
}

/// Whether request type `cfg` (CFG0\[7:0\]) tracks `kind`.
pub fn tracks(cfg: u8, kind: ReqKind) -> bool {
    matches!(
        (cfg, kind),
        (1 | 4, ReqKind::Read) | (2 | 5, ReqKind::Write) | (3 | 6, _)
    )
}

/// Per-instance counting state.
#[derive(Debug, Default, Clone)]
struct Tracker {
    counts: BTreeMap<u64, u64>,
    reported: std::collections::BTreeSet<u64>,
    epoch_end: Option<u64>,
    seen: u64,
    rng: u64,
    generation: u64,
}

/// Counting and reporting for every instance of a CHMU block.
#[derive(Debug, Default)]
pub struct Hotness {
    trackers: Vec<Tracker>,
    /// Size of the monitored memory (accesses beyond it are out of range).
    pub range_size: u64,
    pub counters: HotnessMetrics,
}

impl Hotness {
    pub fn new(instances: u8, range_size: u64) -> Self {
        Self {
            trackers: (0..instances)
                .map(|i| Tracker {
                    rng: 0x9e37_79b9_7f4a_7c15 ^ u64::from(i),
                    ..Tracker::default()
                })
                .collect(),
            range_size,
            counters: HotnessMetrics::default(),
        }
    }

    /// Forgets all counts (enable, disable, reset-counters action, device reset).
    pub fn clear(&mut self, instance: u8) {
        if let Some(t) = self.trackers.get_mut(usize::from(instance)) {
            t.counts.clear();
            t.reported.clear();
            t.epoch_end = None;
            t.seen = 0;
        }
    }

    /// Feeds accesses in time order; returns the MSI-X vectors to raise.
    pub fn feed(&mut self, block: &mut ChmuBlock, accesses: &[Access]) -> Vec<u16> {
        self.feed_weighted(block, accesses.iter().map(|a| (*a, 1)))
    }

    /// Feeds accesses in time order, each standing for `weight` guest accesses (a sampling
    /// feed's one in N, weight N: it adds N to its unit's count, so counts estimate true
    /// access counts); returns the MSI-X vectors to raise.
    pub fn feed_weighted(
        &mut self,
        block: &mut ChmuBlock,
        accesses: impl IntoIterator<Item = (Access, u32)>,
    ) -> Vec<u16> {
        let mut irqs = Vec::new();
        let n = self
            .trackers
            .len()
            .min(usize::from(block.config().instances));
        for (a, weight) in accesses {
            let w = u64::from(weight.max(1));
            if self.counters.accesses_seen == 0 {
                self.counters.first_time = a.time;
            }
            self.counters.last_time = a.time;
            self.counters.accesses_seen += w;
            if a.dpa >= self.range_size {
                continue;
            }
            self.counters.accesses_in_range += w;
            for i in 0..n {
                self.account(block, i as u8, &a, w, &mut irqs);
            }
        }
        irqs.sort_unstable();
        irqs.dedup();
        irqs
    }

    /// Ends every epoch that is over at `now` (for a clock that advances without accesses).
    pub fn advance(&mut self, block: &mut ChmuBlock, now: u64) -> Vec<u16> {
        let mut irqs = Vec::new();
        for i in 0..self
            .trackers
            .len()
            .min(usize::from(block.config().instances))
        {
            self.roll(block, i as u8, now, false, &mut irqs);
        }
        irqs.sort_unstable();
        irqs.dedup();
        irqs
    }

    /// Ends the epochs over at `now`; with `open`, a first access also starts the first epoch
    /// (a clock advance alone never does, so the epoch grid is anchored on the first access
    /// after enable: the same accesses give the same epochs whenever ticks arrive).
    fn roll(&mut self, block: &mut ChmuBlock, i: u8, now: u64, open: bool, irqs: &mut Vec<u16>) {
        self.sync_generation(block, i);
        let base = block.config().instance_base(i);
        if !ChmuStatus::from(block.get(base + CHMU_STATUS)).enabled() {
            return;
        }
        let cfg1 = ChmuCfg1::from(block.get(base + CHMU_CFG1));
        let Some(len) = epoch_length(cfg1.epoch_scale(), cfg1.epoch_mult()) else {
            return;
        };
        let t = &mut self.trackers[usize::from(i)];
        if t.epoch_end.is_none() && !open {
            return;
        }
        let end = *t.epoch_end.get_or_insert(now.saturating_add(len));
        if i == 0 {
            self.counters.epoch_end_0 = end;
        }
        if now < end {
            return;
        }
        self.end_epoch(block, i, irqs);
        // Skip whole idle epochs at once.
        let skipped = (now - end) / len;
        self.trackers[usize::from(i)].epoch_end =
            Some(end.saturating_add(skipped.saturating_add(1).saturating_mul(len)));
    }

    /// Restarts counting if the host enabled, disabled or reset the instance since last time.
    fn sync_generation(&mut self, block: &ChmuBlock, i: u8) {
        let g = block.generation(i);
        if self.trackers[usize::from(i)].generation != g {
            self.clear(i);
            self.trackers[usize::from(i)].generation = g;
        }
    }

    /// Counts `a` (standing for `w` accesses) in instance `i`.
    fn account(&mut self, block: &mut ChmuBlock, i: u8, a: &Access, w: u64, irqs: &mut Vec<u16>) {
        self.sync_generation(block, i);
        let base = block.config().instance_base(i);
        let status = ChmuStatus::from(block.get(base + CHMU_STATUS));
        if !status.enabled() {
            return;
        }
        self.roll(block, i, a.time, true, irqs);
        let cfg0 = ChmuCfg0::from(block.get(base + CHMU_CFG0));
        let cfg1 = ChmuCfg1::from(block.get(base + CHMU_CFG1));
        if !tracks(cfg0.m2s_req_type(), a.kind) || !block.range_selected(i, a.dpa) {
            return;
        }
        let t = &mut self.trackers[usize::from(i)];
        let every = 1u64 << cfg1.downsampling().min(15);
        // Down-sampling keeps one in `every` of the `w` accesses this record stands for.
        let keep = if cfg0.randomized_downsampling() {
            (0..w)
                .filter(|_| {
                    t.rng ^= t.rng << 13;
                    t.rng ^= t.rng >> 7;
                    t.rng ^= t.rng << 17;
                    t.rng.is_multiple_of(every)
                })
                .count() as u64
        } else {
            (t.seen + w) / every - t.seen / every
        };
        t.seen += w;
        if keep == 0 {
            return;
        }
        self.counters.sampled += keep;
        let unit = a.dpa >> cfg1.unit_size().min(63);
        let max = (1u64 << status.counter_width().min(63)) - 1;
        let c = t.counts.entry(unit).or_insert(0);
        *c = (*c + keep).min(max);
        let count = *c;
        if cfg1.reporting_mode() == 1
            && count > u64::from(cfg0.threshold())
            && t.reported.insert(unit)
        {
            self.append(block, i, unit, count, irqs);
        }
    }

    fn end_epoch(&mut self, block: &mut ChmuBlock, i: u8, irqs: &mut Vec<u16>) {
        self.counters.epochs += 1;
        tracing::trace!(target: "chmu::epoch", instance = i, units = self.trackers[usize::from(i)].counts.len());
        let base = block.config().instance_base(i);
        let cfg0 = ChmuCfg0::from(block.get(base + CHMU_CFG0));
        let cfg1 = ChmuCfg1::from(block.get(base + CHMU_CFG1));
        let t = &mut self.trackers[usize::from(i)];
        let counts = std::mem::take(&mut t.counts);
        t.reported.clear();
        if cfg1.reporting_mode() == 1 {
            return;
        }
        for (unit, count) in counts {
            if count > u64::from(cfg0.threshold()) {
                self.append(block, i, unit, count, irqs);
            }
        }
    }

    /// Appends one hotlist entry, or on a full hotlist drops it (Hotlist Full event); checks
    /// the fill threshold (Fill Reached event).
    fn append(&mut self, block: &mut ChmuBlock, i: u8, unit: u64, count: u64, irqs: &mut Vec<u16>) {
        let base = block.config().instance_base(i);
        let size = u64::from(block.config().hotlist_size.max(1));
        let (head, tail) = block.head_tail(i);
        if (tail + 1) % size == head % size {
            self.counters.overflows += 1;
            irqs.extend(block.apply(i, Event::HotlistFull));
            return;
        }
        let cfg0 = ChmuCfg0::from(block.get(base + CHMU_CFG0));
        let fill = u64::from(ChmuCfg2::from(block.get(base + CHMU_CFG2)).fill_threshold());
        let status = ChmuStatus::from(block.get(base + CHMU_STATUS));
        let w = u32::from(status.counter_width().min(63));
        let entry = (unit << w) | count.min((1u64 << w) - 1);
        block.write_hotlist(i, tail % size, entry);
        tracing::trace!(target: "chmu::hotlist", instance = i, slot = tail % size, unit, count);
        let new_tail = (tail + 1) % size;
        block.set_tail(i, new_tail);
        self.counters.entries_written += 1;
        let used = (new_tail + size - head % size) % size;
        if cfg0.fill_int_en() && fill > 0 && fill <= size && used >= fill && !status.fill_reached()
        {
            self.counters.fill_events += 1;
            irqs.extend(block.apply(i, Event::FillReached));
        }
    }
}

impl Hotness {
    /// Fault injection: behaves as if instance `i`'s hotlist had just overflowed (STATUS
    /// overflow set; the vector returned if overflow interrupts are enabled and the bit was
    /// clear).
    pub fn force_overflow(&mut self, block: &mut ChmuBlock, i: u8) -> Vec<u16> {
        if i >= block.config().instances {
            return Vec::new();
        }
        self.counters.overflows += 1;
        block.apply(i, Event::HotlistFull).into_iter().collect()
    }
}

/// Decodes a hotlist entry into (unit index, count) for counter width `w`.
pub fn decode_entry(entry: u64, w: u8) -> (u64, u64) {
    let w = u32::from(w.min(63));
    (entry >> w, entry & ((1u64 << w) - 1))
}

#[cfg(test)]
#[path = "hotness_tests.rs"]
mod tests;
