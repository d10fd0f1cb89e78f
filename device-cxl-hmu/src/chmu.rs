//! CHMU register block core: common capability plus N instances (CXL 3.2 §8.2.8). No I/O.
//!
//! The whole 64 KiB block is a byte array with per-byte write and write-1-to-clear masks, so
//! any naturally aligned access of 1, 2, 4 or 8 bytes works uniformly (the spec asks for
//! 8-byte accesses to STATUS, the bitmap and hotlist entries and 2-byte ones to HEAD/TAIL;
//! other widths are undefined there and this model serves them as plain bytes).
//! Implemented here: capabilities, configuration, enable/disable/reset through STATUS
//! operation-in-progress (completed at once, the driver polls), RW1C status bits, HEAD/TAIL,
//! range bitmap, hotlist storage. Where registers and hotlists lie: [`crate::layout`].
//!
//! An enable is refused when a CFG field is outside what the capabilities advertise (request
//! type, unit size, down-sampling factor, epoch scale, epoch length outside CAP0's
//! minimum..maximum, a threshold the counters cannot exceed, an empty range bitmap): the
//! instance stays disabled, as §8.2.8.4 leaves no other way to say so (STATUS bits [15:1] are
//! reserved; no error field exists), and the enable bit reads back 0. Fields the spec says the
//! device ignores when out of range are ignored: an unsupported reporting mode counts as
//! epoch-based, a notification threshold above the hotlist size never fires (§8.2.8.3).

use crate::regs::*;
use serde::Serialize;
use tracing::{debug, info, warn};

pub use crate::layout::{epoch_units, ChmuConfig, Placement, EPOCH_MAX, EPOCH_MIN};

/// Storage of the hotlist entries when they do not live in the block's bytes (a mapping the
/// guest reads directly, or the window).
pub trait HotlistMemory: Send + std::fmt::Debug {
    /// Entry `slot` of instance `i`'s hotlist.
    fn read(&self, i: u8, slot: u64) -> u64;
    fn write(&self, i: u8, slot: u64, v: u64);
    /// Zeroes every entry (device reset).
    fn clear(&self);
}

/// In-process hotlist storage (window hotlists of servers that cannot map them, tests).
#[derive(Debug, Default)]
pub struct VecHotlist {
    entries: std::sync::Mutex<Vec<u64>>,
    per_instance: u64,
}

impl VecHotlist {
    pub fn new(instances: u8, per_instance: u16) -> Self {
        let n = usize::from(instances) * usize::from(per_instance);
        Self {
            entries: std::sync::Mutex::new(vec![0; n]),
            per_instance: u64::from(per_instance),
        }
    }

    fn index(&self, i: u8, slot: u64) -> Option<usize> {
        (slot < self.per_instance)
            .then(|| usize::try_from(u64::from(i) * self.per_instance + slot).ok())
            .flatten()
    }
}

impl HotlistMemory for VecHotlist {
    fn read(&self, i: u8, slot: u64) -> u64 {
        let Some(k) = self.index(i, slot) else {
            return 0;
        };
        self.entries
            .lock()
            .ok()
            .and_then(|v| v.get(k).copied())
            .unwrap_or(0)
    }
    fn write(&self, i: u8, slot: u64, v: u64) {
        let Some(k) = self.index(i, slot) else { return };
        if let Some(e) = self.entries.lock().ok().as_mut().and_then(|g| g.get_mut(k)) {
            *e = v;
        }
    }
    fn clear(&self) {
        if let Ok(mut g) = self.entries.lock() {
            g.fill(0);
        }
    }
}

/// Why an enable was refused: the CFG field outside the advertised capabilities.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("M2S request type {0} is reserved or not tracked (CAP0)")]
    RequestType(u8),
    #[error("unit size 2^{0} bytes is not offered (CAP1)")]
    UnitSize(u32),
    #[error("down-sampling factor 2^{0} is not offered (CAP1)")]
    DownSampling(u8),
    #[error("epoch scale {0} is reserved")]
    EpochScale(u8),
    #[error("epoch {scale}x{mult} is outside the advertised {min:?}..{max:?} (CAP0)")]
    Epoch {
        scale: u8,
        mult: u16,
        min: (u8, u16),
        max: (u8, u16),
    },
    #[error("hotness threshold {0} cannot be exceeded by the counters (STATUS counter width)")]
    Threshold(u32),
    #[error("the range bitmap selects no memory of the device")]
    EmptyRange,
}

/// Counters of the register interface.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ChmuCounters {
    pub mmio_reads: u64,
    pub mmio_writes: u64,
    pub guest_errors: u64,
    pub enables: u64,
    pub disables: u64,
    pub counter_resets: u64,
    pub invalid_configs: u64,
}

/// The CHMU register block.
#[derive(Debug)]
pub struct ChmuBlock {
    config: ChmuConfig,
    bytes: Vec<u8>,
    wmask: Vec<u8>,
    w1c: Vec<u8>,
    counters: ChmuCounters,
    /// Per instance, bumped by enable, disable and reset-counters: counting restarts.
    generation: Vec<u64>,
    /// Hotlist entries when they do not live in `bytes` (mapped, or in the window).
    external: Option<Box<dyn HotlistMemory>>,
}

impl ChmuBlock {
    /// A block for `config`, fitted to the 64 KiB block (a hotlist too large for the instances
    /// to fit is reduced to the largest that fits; see [`ChmuConfig::fitted`]).
    pub fn new(config: ChmuConfig) -> Self {
        let requested = config.hotlist_size;
        let config = config.fitted();
        if config.hotlist_size != requested {
            warn!(
                requested,
                fitted = config.hotlist_size,
                placement = ?config.placement(),
                "CHMU hotlist size fitted to the register block"
            );
        }
        let size = CHMU_BLOCK_SIZE as usize;
        let mut b = Self {
            config: config.clone(),
            bytes: vec![0; size],
            wmask: vec![0; size],
            w1c: vec![0; size],
            counters: ChmuCounters::default(),
            generation: vec![0; usize::from(config.instances)],
            external: None,
        };
        if config.hotlist_window.is_some() {
            b.external = Some(Box::new(VecHotlist::new(
                config.instances,
                config.hotlist_size,
            )));
        }
        b.reset();
        b
    }

    pub fn config(&self) -> &ChmuConfig {
        &self.config
    }

    pub fn counters(&self) -> &ChmuCounters {
        &self.counters
    }

    fn put(&mut self, off: u64, v: u64, wmask: u64, w1c: u64) {
        let o = off as usize;
        self.bytes[o..o + 8].copy_from_slice(&v.to_le_bytes());
        self.wmask[o..o + 8].copy_from_slice(&wmask.to_le_bytes());
        self.w1c[o..o + 8].copy_from_slice(&w1c.to_le_bytes());
    }

    pub fn get(&self, off: u64) -> u64 {
        let Ok(o) = usize::try_from(off) else {
            return 0;
        };
        self.bytes
            .get(o..o.saturating_add(8))
            .and_then(|b| b.try_into().ok())
            .map_or(0, u64::from_le_bytes)
    }

    /// A device-side register update, bypassing the host write masks.
    pub fn device_set(&mut self, off: u64, v: u64) {
        if let Some(b) = self.bytes.get_mut(off as usize..off as usize + 8) {
            b.copy_from_slice(&v.to_le_bytes());
        }
    }

    /// Puts the hotlists' entries in `mem` (a mapping the guest reads directly); a compact
    /// layout keeps them in the block (they are not page aligned).
    pub fn set_hotlist_memory(&mut self, mem: Box<dyn HotlistMemory>) {
        if self.config.placement() != Placement::Compact {
            self.external = Some(mem);
        }
    }

    /// Writes entry `slot` of instance `i`'s hotlist.
    pub fn write_hotlist(&mut self, i: u8, slot: u64, v: u64) {
        let slot = slot % u64::from(self.config.hotlist_size.max(1));
        match &self.external {
            Some(m) => m.write(i, slot, v),
            None => {
                let off = self.config.instance_base(i) + self.config.cap3(i) + slot * 8;
                self.device_set(off, v);
            }
        }
    }

    /// Reads entry `slot` of instance `i`'s hotlist.
    pub fn read_hotlist(&self, i: u8, slot: u64) -> u64 {
        let slot = slot % u64::from(self.config.hotlist_size.max(1));
        match &self.external {
            Some(m) => m.read(i, slot),
            None => self.get(self.config.instance_base(i) + self.config.cap3(i) + slot * 8),
        }
    }

    /// The hotlist entry (instance, slot) holding block offset `offset`, if it is one.
    fn hotlist_entry_at(&self, offset: u64) -> Option<(u8, u64)> {
        if matches!(self.config.placement(), Placement::Window(_)) {
            return None;
        }
        let (i, rel) = self.instance_of(offset)?;
        let rel = rel.checked_sub(self.config.cap3(i))?;
        (rel / 8 < u64::from(self.config.hotlist_size)).then_some((i, rel / 8))
    }

    /// A read of the hotlist window through the socket (when the client did not map it):
    /// `offset` is relative to the window.
    pub fn window_read(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let stride = self.config.hotlist_stride().max(8);
        let (i, within) = (offset / stride, offset % stride);
        if self.config.hotlist_window.is_none()
            || i >= u64::from(self.config.instances)
            || within % 8 != 0
        {
            return;
        }
        let v = if within / 8 < u64::from(self.config.hotlist_size) {
            self.read_hotlist(i as u8, within / 8)
        } else {
            0
        };
        let b = v.to_le_bytes();
        let n = data.len().min(8);
        data[..n].copy_from_slice(&b[..n]);
    }

    /// Hotlist HEAD (host-written) and TAIL (device-written) of instance `i`.
    pub fn head_tail(&self, i: u8) -> (u64, u64) {
        let v = self.get(self.config.instance_base(i) + CHMU_HOTLIST_HEAD);
        (v & 0xffff, (v >> 16) & 0xffff)
    }

    pub fn set_tail(&mut self, i: u8, tail: u64) {
        let o = (self.config.instance_base(i) + CHMU_HOTLIST_TAIL) as usize;
        self.bytes[o..o + 2].copy_from_slice(&(tail as u16).to_le_bytes());
    }

    /// Whether instance `i`'s range bitmap selects the 256 MiB range holding `dpa`.
    pub fn range_selected(&self, i: u8, dpa: u64) -> bool {
        let bit = dpa / CHMU_RANGE_UNIT;
        if bit >= self.config.range_bits() {
            return false;
        }
        let o = (self.config.instance_base(i) + CHMU_RANGE_BITMAP + bit / 8) as usize;
        self.bytes[o] & (1 << (bit % 8)) != 0
    }

    /// Counting generation of instance `i` (changes when counting must restart).
    pub fn generation(&self, i: u8) -> u64 {
        self.generation.get(usize::from(i)).copied().unwrap_or(0)
    }

    /// Restores every register to its reset value.
    pub fn reset(&mut self) {
        self.generation.iter_mut().for_each(|g| *g += 1);
        self.bytes.fill(0);
        self.wmask.fill(0);
        self.w1c.fill(0);
        let c = self.config.clone();
        let common0 = CommonCap0::new()
            .with_version(1)
            .with_num_instances(c.instances);
        self.put(CHMU_COMMON_CAP0, common0.into(), 0, 0);
        let common1 = CommonCap1::new().with_instance_length(c.instance_length() as u16);
        self.put(CHMU_COMMON_CAP1, common1.into(), 0, 0);
        for i in 0..c.instances {
            self.reset_instance(&c, i);
        }
        if let Some(m) = &self.external {
            m.clear();
        }
    }

    fn reset_instance(&mut self, c: &ChmuConfig, i: u8) {
        let base = c.instance_base(i);
        self.put(base + CHMU_CAP0, c.cap0(), 0, 0);
        self.put(base + CHMU_CAP1, c.cap1(), 0, 0);
        self.put(base + CHMU_CAP2, CHMU_RANGE_BITMAP, 0, 0);
        self.put(base + CHMU_CAP3, c.cap3(i), 0, 0);
        let cfg0_mask: u64 = ChmuCfg0::new()
            .with_m2s_req_type(0xff)
            .with_randomized_downsampling(true)
            .with_overflow_int_en(true)
            .with_fill_int_en(true)
            .with_enable(true)
            .with_reset_counters(true)
            .with_threshold(u32::MAX)
            .into();
        self.put(base + CHMU_CFG0, 0, cfg0_mask, 0);
        let cfg1_mask: u64 = ChmuCfg1::new()
            .with_unit_size(u32::MAX)
            .with_downsampling(0xf)
            .with_reporting_mode(0xff)
            .with_epoch_scale(0xf)
            .with_epoch_mult(0xfff)
            .into();
        self.put(base + CHMU_CFG1, 0, cfg1_mask, 0);
        self.put(base + CHMU_CFG2, 0, 0xffff, 0);
        let status = ChmuStatus::new().with_counter_width(c.counter_width);
        let w1c: u64 = ChmuStatus::new()
            .with_overflow(true)
            .with_fill_reached(true)
            .into();
        self.put(base + CHMU_STATUS, status.into(), 0, w1c);
        // HEAD and TAIL are host-writable u16s (TAIL only while disabled, see mmio_write).
        self.put(base + CHMU_HOTLIST_HEAD, 0, 0xffff_ffff, 0);
        // Bitmap bits covering the device's memory are writable; the rest is reserved.
        let bm = (base + CHMU_RANGE_BITMAP) as usize;
        let bits = c.range_bits() as usize;
        self.wmask[bm..bm + bits / 8].fill(0xff);
        if !bits.is_multiple_of(8) {
            self.wmask[bm + bits / 8] = (1u8 << (bits % 8)) - 1;
        }
    }

    fn valid(offset: u64, len: usize) -> bool {
        matches!(len, 1 | 2 | 4 | 8)
            && offset.is_multiple_of(len as u64)
            && offset
                .checked_add(len as u64)
                .is_some_and(|e| e <= CHMU_BLOCK_SIZE)
    }

    /// Which instance and instance-relative offset `offset` falls in.
    fn instance_of(&self, offset: u64) -> Option<(u8, u64)> {
        let rel = offset.checked_sub(CHMU_FIRST_INSTANCE)?;
        let len = self.config.instance_length();
        let i = rel / len;
        (i < u64::from(self.config.instances)).then_some((i as u8, rel % len))
    }

    fn enabled(&self, i: u8) -> bool {
        ChmuStatus::from(self.get(self.config.instance_base(i) + CHMU_STATUS)).enabled()
    }

    pub fn mmio_read(&mut self, offset: u64, data: &mut [u8]) {
        self.counters.mmio_reads += 1;
        if !Self::valid(offset, data.len()) {
            self.counters.guest_errors += 1;
            warn!(offset, len = data.len(), "CHMU: bad read width/alignment");
            data.fill(0);
            return;
        }
        let o = offset as usize;
        match (self.external.is_some(), self.hotlist_entry_at(offset)) {
            (true, Some((i, slot))) => {
                let e = self.read_hotlist(i, slot).to_le_bytes();
                let within = o % 8;
                data.copy_from_slice(&e[within..within + data.len()]);
            }
            _ => data.copy_from_slice(&self.bytes[o..o + data.len()]),
        }
        tracing::trace!(target: "chmu::mmio", op = "read", offset = format_args!("{offset:#x}"), width = data.len());
    }

    pub fn mmio_write(&mut self, offset: u64, data: &[u8]) {
        self.counters.mmio_writes += 1;
        if !Self::valid(offset, data.len()) {
            self.counters.guest_errors += 1;
            warn!(offset, len = data.len(), "CHMU: bad write width/alignment");
            return;
        }
        let o = offset as usize;
        tracing::trace!(target: "chmu::mmio", op = "write", offset = format_args!("{offset:#x}"), width = data.len());
        let inst = self.instance_of(offset);
        // TAIL must not change while the instance is enabled (§8.2.8.6): ignored then.
        let tail_locked = inst.is_some_and(|(i, _)| self.enabled(i));
        for (k, v) in data.iter().enumerate() {
            let rel = inst.map(|(_, r)| r + k as u64);
            if tail_locked
                && rel.is_some_and(|r| (CHMU_HOTLIST_TAIL..CHMU_HOTLIST_TAIL + 2).contains(&r))
            {
                continue;
            }
            let (w, c) = (self.wmask[o + k], self.w1c[o + k]);
            self.bytes[o + k] = ((self.bytes[o + k] & !w) | (v & w)) & !(v & c);
        }
        if let Some((i, rel)) = inst {
            if rel & !7 == CHMU_CFG0 {
                self.cfg0_written(i);
            }
        }
    }

    /// Checks the configuration an enable of instance `i` asks for against the capabilities.
    pub fn check_enable(&self, i: u8) -> Result<(), Refusal> {
        let base = self.config.instance_base(i);
        let cfg0 = ChmuCfg0::from(self.get(base + CHMU_CFG0));
        let cfg1 = ChmuCfg1::from(self.get(base + CHMU_CFG1));
        let cap0 = ChmuCap0::from(self.get(base + CHMU_CAP0));
        let req = cfg0.m2s_req_type();
        if !(1..=6).contains(&req) || cap0.tracked_m2s() & (1 << (req - 1)) == 0 {
            return Err(Refusal::RequestType(req));
        }
        let unit = cfg1.unit_size();
        if !unit
            .checked_sub(8)
            .is_some_and(|n| n < 32 && self.config.unit_sizes & (1 << n) != 0)
        {
            return Err(Refusal::UnitSize(unit));
        }
        let ds = cfg1.downsampling();
        if self.config.downsampling & (1 << ds) == 0 {
            return Err(Refusal::DownSampling(ds));
        }
        let (scale, mult) = (cfg1.epoch_scale(), cfg1.epoch_mult());
        let epoch = epoch_units(scale, mult).ok_or(Refusal::EpochScale(scale))?;
        let min = (cap0.min_epoch_scale(), cap0.min_epoch_mult());
        let max = (cap0.max_epoch_scale(), cap0.max_epoch_mult());
        let in_range = epoch_units(min.0, min.1).is_some_and(|m| epoch >= m.max(1))
            && epoch_units(max.0, max.1).is_some_and(|m| epoch <= m);
        if !in_range {
            return Err(Refusal::Epoch {
                scale,
                mult,
                min,
                max,
            });
        }
        let width = ChmuStatus::from(self.get(base + CHMU_STATUS)).counter_width();
        let counter_max = (1u64 << width.min(63)) - 1;
        if u64::from(cfg0.threshold()) >= counter_max {
            return Err(Refusal::Threshold(cfg0.threshold()));
        }
        if !(0..self.config.range_bits()).any(|b| self.range_selected(i, b * CHMU_RANGE_UNIT)) {
            return Err(Refusal::EmptyRange);
        }
        Ok(())
    }

    fn cfg0_written(&mut self, inst: u8) {
        let base = self.config.instance_base(inst);
        let mut cfg0 = ChmuCfg0::from(self.get(base + CHMU_CFG0));
        let mut status = ChmuStatus::from(self.get(base + CHMU_STATUS));
        if let Some(g) = self.generation.get_mut(usize::from(inst)) {
            *g += 1;
        }
        if cfg0.reset_counters() {
            self.counters.counter_resets += 1;
            cfg0.set_reset_counters(false);
            debug!(instance = inst, "CHMU counters reset");
        }
        if cfg0.enable() && !status.enabled() {
            match self.check_enable(inst) {
                Ok(()) => {
                    self.counters.enables += 1;
                    status.set_enabled(true);
                    info!(instance = inst, "CHMU enabled");
                }
                Err(why) => {
                    // Refused: the enable bit does not stick and STATUS stays disabled.
                    self.counters.invalid_configs += 1;
                    cfg0.set_enable(false);
                    warn!(instance = inst, %why, "CHMU enable refused");
                }
            }
        } else if !cfg0.enable() && status.enabled() {
            self.counters.disables += 1;
            status.set_enabled(false);
            info!(instance = inst, "CHMU disabled");
        }
        status.set_op_in_progress(0);
        self.device_set(base + CHMU_CFG0, cfg0.into());
        self.device_set(base + CHMU_STATUS, status.into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rd(b: &mut ChmuBlock, off: u64) -> u64 {
        let mut d = [0u8; 8];
        b.mmio_read(off, &mut d);
        u64::from_le_bytes(d)
    }

    fn wr(b: &mut ChmuBlock, off: u64, v: u64) {
        b.mmio_write(off, &v.to_le_bytes());
    }

    #[test]
    fn common_capability_describes_instances() {
        let mut b = ChmuBlock::new(ChmuConfig::default());
        let cap0 = CommonCap0::from(rd(&mut b, CHMU_COMMON_CAP0));
        assert_eq!((cap0.version(), cap0.num_instances()), (1, 2));
        let len = CommonCap1::from(rd(&mut b, CHMU_COMMON_CAP1)).instance_length();
        assert_eq!(len, 0x3000);
    }

    #[test]
    fn instance_capabilities_and_offsets() {
        let mut b = ChmuBlock::new(ChmuConfig::default());
        let base = b.config().instance_base(1);
        assert_eq!(base, 0x3010);
        assert_eq!(
            ChmuCap0::from(rd(&mut b, base + CHMU_CAP0)).hotlist_size(),
            1024
        );
        assert_eq!(rd(&mut b, base + CHMU_CAP2), 0x70);
        assert_eq!(rd(&mut b, base + CHMU_CAP3), 0xff0);
        let st = ChmuStatus::from(rd(&mut b, base + CHMU_STATUS));
        assert_eq!(st.counter_width(), 16);
    }

    /// What a driver finds walking the registers, for every instance count: each hotlist
    /// (CAP3 + CAP0 hotlist size x 8) inside its instance (CHMU Instance Length), every
    /// instance inside the 64 KiB block, and (paged) each hotlist on a page boundary.
    #[test]
    fn registers_describe_hotlists_inside_their_instances_and_the_block() {
        for n in 1..=16u8 {
            let mut b = ChmuBlock::new(ChmuConfig {
                instances: n,
                hotlist_size: u16::MAX,
                ..ChmuConfig::default()
            });
            let len = u64::from(CommonCap1::from(rd(&mut b, CHMU_COMMON_CAP1)).instance_length());
            assert!(
                0x10 + u64::from(n) * len <= CHMU_BLOCK_SIZE,
                "{n} instances"
            );
            for i in 0..u64::from(n) {
                let base = 0x10 + i * len;
                let size = u64::from(ChmuCap0::from(rd(&mut b, base + CHMU_CAP0)).hotlist_size());
                let cap2 = rd(&mut b, base + CHMU_CAP2);
                let cap3 = rd(&mut b, base + CHMU_CAP3);
                assert!(cap2 >= CHMU_HOTLIST_TAIL + 2 && cap3 > cap2);
                assert!(
                    cap3 + size * 8 <= len,
                    "{n} instances: hotlist {i} leaves it"
                );
                if n <= 7 {
                    assert_eq!((CHMU_BLOCK_OFFSET + base + cap3) % 0x1000, 0);
                }
            }
        }
    }

    /// A configuration every check accepts: 4 KiB units, all requests, 100 us x 1 epochs,
    /// the first 256 MiB.
    fn configure(b: &mut ChmuBlock, base: u64, unit_log2: u32) {
        wr(
            b,
            base + CHMU_CFG1,
            ChmuCfg1::new()
                .with_unit_size(unit_log2)
                .with_epoch_scale(1)
                .with_epoch_mult(1)
                .into(),
        );
        b.mmio_write(base + CHMU_RANGE_BITMAP, &[1]);
    }

    fn enable(b: &mut ChmuBlock, base: u64, cfg0: ChmuCfg0) -> bool {
        wr(b, base + CHMU_CFG0, cfg0.with_enable(true).into());
        ChmuStatus::from(rd(b, base + CHMU_STATUS)).enabled()
    }

    fn all_requests() -> ChmuCfg0 {
        ChmuCfg0::new().with_m2s_req_type(6)
    }

    #[test]
    fn enable_with_valid_config_sets_enabled() {
        let mut b = ChmuBlock::new(ChmuConfig::default());
        let base = b.config().instance_base(0);
        configure(&mut b, base, 12);
        assert!(enable(&mut b, base, all_requests()));
        let st = ChmuStatus::from(rd(&mut b, base + CHMU_STATUS));
        assert_eq!(st.op_in_progress(), 0);
        assert_eq!(b.counters().enables, 1);
    }

    /// Sets CFG1's epoch, tries to enable, and returns whether it took and the refusal.
    fn try_epoch(scale: u8, mult: u16) -> (bool, Result<(), Refusal>) {
        let mut b = ChmuBlock::new(ChmuConfig::default());
        let base = b.config().instance_base(1);
        configure(&mut b, base, 12);
        let cfg1 = ChmuCfg1::from(rd(&mut b, base + CHMU_CFG1))
            .with_epoch_scale(scale)
            .with_epoch_mult(mult);
        wr(&mut b, base + CHMU_CFG1, cfg1.into());
        wr(&mut b, base + CHMU_CFG0, all_requests().into());
        let why = b.check_enable(1);
        (enable(&mut b, base, all_requests()), why)
    }

    #[test]
    fn epochs_outside_the_advertised_range_never_enable() {
        let cap0 = ChmuCap0::from(ChmuConfig::default().cap0());
        assert_eq!((cap0.min_epoch_scale(), cap0.min_epoch_mult()), (1, 1));
        assert_eq!((cap0.max_epoch_scale(), cap0.max_epoch_mult()), (5, 100));
        for (scale, mult) in [(1, 1), (2, 7), (4, 1), (5, 100), (4, 1000), (3, 4095)] {
            assert_eq!(try_epoch(scale, mult), (true, Ok(())), "{scale}x{mult}");
        }
        // 100 s + 1 s, 409.5 s, 10 ms x 4095 (40.95 s) is fine but 100 ms x 1001 is not.
        for (scale, mult) in [(5, 101), (5, 4095), (4, 1001)] {
            let (on, why) = try_epoch(scale, mult);
            assert!(!on, "{scale}x{mult} enabled");
            assert!(matches!(why, Err(Refusal::Epoch { .. })), "{why:?}");
        }
        for scale in [0u8, 6, 15] {
            assert_eq!(
                try_epoch(scale, 1),
                (false, Err(Refusal::EpochScale(scale)))
            );
        }
        assert!(matches!(
            try_epoch(1, 0),
            (false, Err(Refusal::Epoch { .. }))
        ));
    }

    #[test]
    fn each_out_of_range_field_refuses_the_enable() {
        type Edit = fn(&mut ChmuBlock, u64) -> ChmuCfg0;
        let cases: [(Edit, Refusal); 6] = [
            (|_, _| ChmuCfg0::new(), Refusal::RequestType(0)),
            (
                |_, _| ChmuCfg0::new().with_m2s_req_type(7),
                Refusal::RequestType(7),
            ),
            (
                |b, base| {
                    configure(b, base, 40);
                    all_requests()
                },
                Refusal::UnitSize(40),
            ),
            (
                |b, base| {
                    let c = ChmuCfg1::from(b.get(base + CHMU_CFG1)).with_unit_size(7);
                    wr(b, base + CHMU_CFG1, c.into());
                    all_requests()
                },
                Refusal::UnitSize(7),
            ),
            (
                |_, _| all_requests().with_threshold(0xffff),
                Refusal::Threshold(0xffff),
            ),
            (
                |b, base| {
                    b.mmio_write(base + CHMU_RANGE_BITMAP, &[0]);
                    all_requests()
                },
                Refusal::EmptyRange,
            ),
        ];
        for (edit, want) in cases {
            let mut b = ChmuBlock::new(ChmuConfig::default());
            let base = b.config().instance_base(0);
            configure(&mut b, base, 12);
            let cfg0 = edit(&mut b, base);
            wr(&mut b, base + CHMU_CFG0, cfg0.into());
            assert_eq!(b.check_enable(0), Err(want));
            assert!(!enable(&mut b, base, cfg0), "{want} enabled");
            assert!(!ChmuCfg0::from(rd(&mut b, base + CHMU_CFG0)).enable());
            assert_eq!(b.counters().invalid_configs, 1, "{want}");
        }
    }

    #[test]
    fn unsupported_down_sampling_factors_and_reserved_bitmap_bits_refuse() {
        let mut b = ChmuBlock::new(ChmuConfig {
            downsampling: 0b101,
            capacity: 1 << 30,
            ..ChmuConfig::default()
        });
        let base = b.config().instance_base(0);
        configure(&mut b, base, 12);
        let cfg1 = ChmuCfg1::from(b.get(base + CHMU_CFG1));
        wr(&mut b, base + CHMU_CFG1, cfg1.with_downsampling(1).into());
        assert!(!enable(&mut b, base, all_requests()));
        assert_eq!(b.check_enable(0), Err(Refusal::DownSampling(1)));
        wr(&mut b, base + CHMU_CFG1, cfg1.with_downsampling(2).into());
        assert!(enable(&mut b, base, all_requests()));
        // 1 GiB: four bitmap bits; the fifth is reserved and does not stick.
        let mut b = ChmuBlock::new(ChmuConfig {
            capacity: 1 << 30,
            ..ChmuConfig::default()
        });
        configure(&mut b, base, 12);
        b.mmio_write(base + CHMU_RANGE_BITMAP, &[0xf0]);
        assert_eq!(rd(&mut b, base + CHMU_RANGE_BITMAP) & 0xff, 0x00);
        wr(&mut b, base + CHMU_CFG0, all_requests().into());
        assert_eq!(b.check_enable(0), Err(Refusal::EmptyRange));
    }

    #[test]
    fn tail_is_writable_only_while_disabled_and_head_writable_as_u16() {
        let mut b = ChmuBlock::new(ChmuConfig::default());
        let base = b.config().instance_base(0);
        b.mmio_write(base + CHMU_HOTLIST_TAIL, &7u16.to_le_bytes());
        b.mmio_write(base + CHMU_HOTLIST_HEAD, &5u16.to_le_bytes());
        assert_eq!(b.head_tail(0), (5, 7));
        configure(&mut b, base, 12);
        assert!(enable(&mut b, base, all_requests()));
        b.mmio_write(base + CHMU_HOTLIST_HEAD, &0x0009_0003u32.to_le_bytes());
        let mut t = [0u8; 2];
        b.mmio_read(base + CHMU_HOTLIST_TAIL, &mut t);
        assert_eq!((b.head_tail(0).0, u16::from_le_bytes(t)), (3, 7));
    }

    #[test]
    fn hotlist_entries_read_through_the_registers_at_cap3() {
        for mapped in [false, true] {
            let mut b = ChmuBlock::new(ChmuConfig::default());
            if mapped {
                b.set_hotlist_memory(Box::new(VecHotlist::new(2, 1024)));
            }
            b.write_hotlist(1, 3, 0xabcd_0001);
            let base = b.config().instance_base(1);
            let at = base + rd(&mut b, base + CHMU_CAP3);
            assert_eq!(rd(&mut b, at + 3 * 8), 0xabcd_0001, "mapped {mapped}");
            let mut half = [0u8; 4];
            b.mmio_read(at + 3 * 8 + 4, &mut half);
            assert_eq!(half, [0; 4]);
            b.mmio_read(at + 3 * 8, &mut half);
            assert_eq!(u32::from_le_bytes(half), 0xabcd_0001);
            // Entries are read-only to the host.
            wr(&mut b, at + 3 * 8, 0);
            assert_eq!(b.read_hotlist(1, 3), 0xabcd_0001);
        }
    }

    #[test]
    fn a_hotlist_window_moves_cap3_past_the_block() {
        let cfg = ChmuConfig {
            hotlist_window: Some(CHMU_HOTLIST_WINDOW),
            ..ChmuConfig::default()
        };
        let mut b = ChmuBlock::new(cfg.clone());
        for i in 0..2u8 {
            let base = cfg.instance_base(i);
            let cap3 = rd(&mut b, base + CHMU_CAP3);
            assert_eq!(
                CHMU_BLOCK_OFFSET + base + cap3,
                CHMU_HOTLIST_WINDOW + u64::from(i) * 8192
            );
        }
        b.write_hotlist(1, 3, 0xabcd);
        assert_eq!(b.read_hotlist(1, 3), 0xabcd);
        let mut d = [0u8; 8];
        b.window_read(8192 + 3 * 8, &mut d);
        assert_eq!(u64::from_le_bytes(d), 0xabcd);
        b.window_read(u64::MAX - 7, &mut d);
        assert_eq!(d, [0; 8]);
    }

    #[test]
    fn oversized_hotlists_are_reduced_to_fit_the_block() {
        let b = ChmuBlock::new(ChmuConfig {
            instances: 2,
            hotlist_size: u16::MAX,
            ..ChmuConfig::default()
        });
        let c = b.config();
        assert_eq!(c.hotlist_size, 3072);
        assert!(c.instance_base(2) <= CHMU_BLOCK_SIZE);
    }

    #[test]
    fn capabilities_are_read_only() {
        let mut b = ChmuBlock::new(ChmuConfig::default());
        wr(&mut b, CHMU_COMMON_CAP0, 0);
        let base = b.config().instance_base(0);
        wr(&mut b, base + CHMU_CAP3, 0);
        assert_eq!(
            CommonCap0::from(rd(&mut b, CHMU_COMMON_CAP0)).num_instances(),
            2
        );
        assert_eq!(rd(&mut b, base + CHMU_CAP3), 0xff0);
    }

    #[test]
    fn misaligned_and_out_of_block_accesses_are_guest_errors() {
        let mut b = ChmuBlock::new(ChmuConfig::default());
        let mut d = [0xffu8; 4];
        b.mmio_read(2, &mut d);
        assert_eq!(d, [0; 4]);
        b.mmio_write(CHMU_BLOCK_SIZE - 4, &[0; 8]);
        b.mmio_write(u64::MAX - 3, &[0; 4]);
        assert_eq!(b.counters().guest_errors, 3);
    }
}
