//! The CHMU register block (CXL 3.2 §8.2.8): the common capability and N instances, built
//! from the register table (`spec::chmu_table`) and driven by the instance state machine
//! ([`super::state`]). No I/O.
//!
//! The whole 64 KiB block is a byte array with per-byte write and write-1-to-clear masks taken
//! from the table, so any naturally aligned access of 1, 2, 4 or 8 bytes works uniformly (the
//! spec asks for 8-byte accesses to STATUS, the bitmap and hotlist entries and 2-byte ones to
//! HEAD/TAIL; other widths are undefined there and this model serves them as plain bytes).
//! Where registers and hotlists lie: [`crate::spec::layout`]. Hotlist entries outside the block's
//! bytes: [`super::hotlist_store`].
//!
//! Left out: operations that take time (Operation in Progress always reads 0) and the
//! counting itself ([`crate::core::hotness`]).

use super::hotlist_store::{HotlistMemory, VecHotlist};
use super::state::{self, Count, Event, Latch, State};
use crate::core::regfile::access_ok;
use crate::metrics::ChmuMetrics;
use crate::spec::chmu_table::{instance_reg_at, ChmuReg, Lock, PostWrite, Scope, REGISTERS};
use crate::spec::layout::{ChmuConfig, Placement};
use crate::spec::regs::*;
use tracing::{debug, info, warn};

/// The CHMU register block.
#[derive(Debug)]
pub struct ChmuBlock {
    config: ChmuConfig,
    bytes: Vec<u8>,
    wmask: Vec<u8>,
    w1c: Vec<u8>,
    counters: ChmuMetrics,
    /// Per instance, bumped by every row that restarts counting.
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
            counters: ChmuMetrics::default(),
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

    pub fn counters(&self) -> &ChmuMetrics {
        &self.counters
    }

    /// Stores register `r`'s reset value and masks at block offset `off`.
    fn put(&mut self, off: u64, r: &ChmuReg, i: u8) {
        let (o, w) = (off as usize, usize::from(r.width));
        let value = r.reset.value(&self.config, i).to_le_bytes();
        self.bytes[o..o + w].copy_from_slice(&value[..w]);
        self.wmask[o..o + w].copy_from_slice(&r.wmask.to_le_bytes()[..w]);
        self.w1c[o..o + w].copy_from_slice(&r.w1c.to_le_bytes()[..w]);
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

    /// Restores every register to its reset value (the register table's), then runs the
    /// Reset event of every instance.
    pub fn reset(&mut self) {
        self.bytes.fill(0);
        self.wmask.fill(0);
        self.w1c.fill(0);
        let n = self.config.instances;
        for r in REGISTERS {
            match r.scope {
                Scope::Common => self.put(r.offset, r, 0),
                Scope::Instance => {
                    for i in 0..n {
                        self.put(self.config.instance_base(i) + r.offset, r, i);
                    }
                }
            }
        }
        for i in 0..n {
            self.reset_range_bitmap(i);
            self.apply(i, Event::Reset);
        }
        if let Some(m) = &self.external {
            m.clear();
        }
    }

    /// The range bitmap (§8.2.8.7) resets to 0; bits covering the device's memory are
    /// writable, the rest reserved.
    fn reset_range_bitmap(&mut self, i: u8) {
        let bm = (self.config.instance_base(i) + CHMU_RANGE_BITMAP) as usize;
        let bits = self.config.range_bits() as usize;
        self.wmask[bm..bm + bits / 8].fill(0xff);
        if !bits.is_multiple_of(8) {
            self.wmask[bm + bits / 8] = (1u8 << (bits % 8)) - 1;
        }
    }

    /// An access of 1, 2, 4 or 8 bytes, naturally aligned, inside the block.
    fn valid(offset: u64, len: usize) -> bool {
        access_ok(offset, len, CHMU_BLOCK_SIZE)
    }

    /// Which instance and instance-relative offset `offset` falls in.
    fn instance_of(&self, offset: u64) -> Option<(u8, u64)> {
        let rel = offset.checked_sub(CHMU_FIRST_INSTANCE)?;
        let len = self.config.instance_length();
        let i = rel / len;
        (i < u64::from(self.config.instances)).then_some((i as u8, rel % len))
    }

    fn status(&self, i: u8) -> ChmuStatus {
        ChmuStatus::from(self.get(self.config.instance_base(i) + CHMU_STATUS))
    }

    /// Instance `i`'s state, as STATUS shows it.
    pub fn state(&self, i: u8) -> State {
        State::from_enabled(self.status(i).enabled())
    }

    /// The one setter of the state: mirrors `to` into STATUS (Enabled; Operation in Progress
    /// done) and keeps the latched bits in `status`.
    fn set_state(&mut self, i: u8, mut status: ChmuStatus, to: State) {
        status.set_enabled(to == State::Enabled);
        status.set_op_in_progress(0);
        self.device_set(self.config.instance_base(i) + CHMU_STATUS, status.into());
    }

    /// Runs instance `i`'s row for `event`; returns the vector to raise, if the row latched a
    /// status bit whose interrupt is enabled and which was clear.
    pub fn apply(&mut self, i: u8, event: Event) -> Option<u16> {
        let base = self.config.instance_base(i);
        let mut status = self.status(i);
        let row = state::step(State::from_enabled(status.enabled()), event)?;
        let e = row.effects;
        if e.restart {
            if let Some(g) = self.generation.get_mut(usize::from(i)) {
                *g += 1;
            }
        }
        if let Some(c) = e.count {
            let n = &mut self.counters;
            *match c {
                Count::Enables => &mut n.enables,
                Count::Disables => &mut n.disables,
                Count::CounterResets => &mut n.counter_resets,
                Count::InvalidConfigs => &mut n.invalid_configs,
            } += 1;
        }
        let cfg0 = ChmuCfg0::from(self.get(base + CHMU_CFG0));
        if e.drop_enable {
            self.device_set(base + CHMU_CFG0, cfg0.with_enable(false).into());
        }
        let mut irq = None;
        if let Some(l) = e.latch {
            let (was, int_en) = match l {
                Latch::Overflow => (status.overflow(), cfg0.overflow_int_en()),
                Latch::FillReached => (status.fill_reached(), cfg0.fill_int_en()),
            };
            match l {
                Latch::Overflow => status.set_overflow(true),
                Latch::FillReached => status.set_fill_reached(true),
            }
            irq = (!was && int_en).then_some(u16::from(self.config.msix_vector));
        }
        self.set_state(i, status, row.to);
        if row.from != row.to {
            info!(instance = i, from = ?row.from, to = ?row.to, ?event, "CHMU state");
        }
        irq
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

    /// A host write: each byte through its register's masks (bytes of a register locked in
    /// the current state are ignored), then the post-write hook of the register written.
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
        let enabled = inst.is_some_and(|(i, _)| self.state(i) == State::Enabled);
        let mut hook = PostWrite::None;
        for (k, v) in data.iter().enumerate() {
            let reg = inst.and_then(|(_, rel)| instance_reg_at(rel + k as u64));
            if reg.is_some_and(|r| r.lock == Lock::WhileEnabled && enabled) {
                continue;
            }
            if let Some(r) = reg.filter(|r| r.post_write != PostWrite::None) {
                hook = r.post_write;
            }
            let (w, c) = (self.wmask[o + k], self.w1c[o + k]);
            self.bytes[o + k] = ((self.bytes[o + k] & !w) | (v & w)) & !(v & c);
        }
        if let (Some((i, _)), PostWrite::Cfg0) = (inst, hook) {
            self.cfg0_written(i);
        }
    }

    /// CFG0's post-write hook: Reset Counters (an action: it reads back 0), then Enable
    /// against the current state (an enable from Disabled is checked first).
    fn cfg0_written(&mut self, i: u8) {
        let at = self.config.instance_base(i) + CHMU_CFG0;
        let cfg0 = ChmuCfg0::from(self.get(at));
        if cfg0.reset_counters() {
            self.device_set(at, cfg0.with_reset_counters(false).into());
            self.apply(i, Event::ResetCounters);
            debug!(instance = i, "CHMU counters reset");
        }
        let event = match (self.state(i), cfg0.enable()) {
            (State::Disabled, true) => match self.check_enable(i) {
                Ok(()) => Event::Enable,
                Err(why) => {
                    warn!(instance = i, %why, "CHMU enable refused");
                    Event::EnableRefused
                }
            },
            (State::Enabled, true) => Event::Enable,
            (_, false) => Event::Disable,
        };
        self.apply(i, event);
    }
}

#[cfg(test)]
#[path = "chmu_tests.rs"]
mod tests;
