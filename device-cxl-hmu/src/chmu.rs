//! CHMU register block core: common capability plus N instances (CXL 3.2 CHMU register
//! interface, digest B.2). No I/O.
//!
//! The whole 64 KiB block is a byte array with per-byte write and write-1-to-clear masks, so
//! any access width the spec allows (1, 2, 4, 8 bytes, naturally aligned) works uniformly.
//! Implemented here: capabilities, configuration, enable/disable/reset through STATUS
//! operation-in-progress (completed at once, the driver polls), RW1C status bits, HEAD/TAIL,
//! range bitmap. Left out at this stage (separate issue): the access feed, epochs, hotlist
//! production and interrupts.

use crate::regs::*;
use serde::Serialize;
use tracing::{debug, info, warn};

/// Capabilities of the emulated CHMU.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ChmuConfig {
    pub instances: u8,
    pub hotlist_size: u16,
    pub counter_width: u8,
    /// CAP1 unit-size bitmap: bit N = 2^(N+8) bytes.
    pub unit_sizes: u32,
    /// CAP1 down-sampling bitmap: bit N = factor 2^N.
    pub downsampling: u16,
    /// MSI-X vector of every instance.
    pub msix_vector: u8,
    /// Where the hotlists live, as an offset in the registers' BAR past the 64 KiB register
    /// block (one 4 KiB-aligned stride per instance, CAP3 pointing there), so the server can
    /// map them straight into the guest; None keeps each hotlist inside its instance.
    pub hotlist_window: Option<u64>,
}

/// Storage of the hotlist entries when they live outside the register block.
pub trait HotlistMemory: Send + std::fmt::Debug {
    fn read(&self, index: usize) -> u64;
    fn write(&self, index: usize, v: u64);
}

/// In-process hotlist storage (tests, and servers that cannot map it).
#[derive(Debug, Default)]
pub struct VecHotlist(std::sync::Mutex<Vec<u64>>);

impl VecHotlist {
    pub fn new(entries: usize) -> Self {
        Self(std::sync::Mutex::new(vec![0; entries]))
    }
}

impl HotlistMemory for VecHotlist {
    fn read(&self, index: usize) -> u64 {
        self.0
            .lock()
            .ok()
            .and_then(|v| v.get(index).copied())
            .unwrap_or(0)
    }
    fn write(&self, index: usize, v: u64) {
        if let Some(e) = self.0.lock().ok().as_mut().and_then(|g| g.get_mut(index)) {
            *e = v;
        }
    }
}

impl Default for ChmuConfig {
    fn default() -> Self {
        Self {
            instances: 2,
            hotlist_size: 1024,
            counter_width: 16,
            // 256 B .. 2 GiB.
            unit_sizes: 0x00ff_ffff,
            // 1, 2, 4, ... 32768.
            downsampling: 0xffff,
            msix_vector: 0,
            hotlist_window: None,
        }
    }
}

impl ChmuConfig {
    /// Bytes of one instance: registers, range bitmap and hotlist, rounded to 64 bytes.
    pub fn instance_length(&self) -> u64 {
        match self.hotlist_window {
            Some(_) => (CHMU_HOTLIST + 63) & !63,
            None => (CHMU_HOTLIST + u64::from(self.hotlist_size) * 8 + 63) & !63,
        }
    }

    /// Bytes between two instances' hotlists in the window.
    pub fn hotlist_stride(&self) -> u64 {
        (u64::from(self.hotlist_size) * 8).next_multiple_of(4096)
    }

    /// CAP3 of instance `i`: its hotlist's offset from the instance base.
    pub fn cap3(&self, i: u8) -> u64 {
        match self.hotlist_window {
            Some(w) => {
                w + u64::from(i) * self.hotlist_stride()
                    - (CHMU_BLOCK_OFFSET + self.instance_base(i))
            }
            None => CHMU_HOTLIST,
        }
    }

    /// Bytes of the hotlist window (0 without one).
    pub fn hotlist_window_size(&self) -> u64 {
        self.hotlist_window
            .map_or(0, |_| u64::from(self.instances) * self.hotlist_stride())
    }

    /// The largest hotlist for which all instances fit in the 64 KiB block.
    pub fn max_hotlist_size(instances: u8, window: bool) -> u16 {
        if window {
            return u16::MAX;
        }
        let per = (CHMU_BLOCK_SIZE - CHMU_FIRST_INSTANCE) / u64::from(instances.max(1));
        let entries = (per.saturating_sub(CHMU_HOTLIST + 63)) / 8;
        u16::try_from(entries).unwrap_or(u16::MAX)
    }

    pub fn instance_base(&self, i: u8) -> u64 {
        CHMU_FIRST_INSTANCE + u64::from(i) * self.instance_length()
    }

    pub fn cap0(&self) -> u64 {
        ChmuCap0::new()
            .with_int_msg_num(self.msix_vector)
            .with_overflow_int(true)
            .with_fill_int(true)
            .with_epoch_type(0)
            .with_tracked_m2s(0x3f)
            // Epochs from 100 us x 1 up to 1 s x 100.
            .with_max_epoch_scale(5)
            .with_max_epoch_mult(100)
            .with_min_epoch_scale(1)
            .with_min_epoch_mult(1)
            .with_hotlist_size(self.hotlist_size)
            .into()
    }

    pub fn cap1(&self) -> u64 {
        ChmuCap1::new()
            .with_unit_sizes(self.unit_sizes)
            .with_downsampling(self.downsampling)
            .with_epoch_reporting(true)
            .with_always_on_reporting(true)
            .with_randomized_downsampling(true)
            .into()
    }
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
    /// Hotlist entries when they live in the window (see [`ChmuConfig::hotlist_window`]).
    external: Option<Box<dyn HotlistMemory>>,
}

impl ChmuBlock {
    /// A block for `config`; a hotlist too large for the instances to fit the 64 KiB block is
    /// reduced to the largest that fits.
    pub fn new(mut config: ChmuConfig) -> Self {
        let max = ChmuConfig::max_hotlist_size(config.instances, config.hotlist_window.is_some());
        if config.hotlist_size > max {
            warn!(
                requested = config.hotlist_size,
                max, "CHMU hotlist reduced to fit the register block"
            );
            config.hotlist_size = max;
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
            let n = usize::from(config.instances) * (config.hotlist_stride() / 8) as usize;
            b.external = Some(Box::new(VecHotlist::new(n)));
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
        let o = off as usize;
        self.bytes
            .get(o..o + 8)
            .map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
    }

    /// A device-side register update, bypassing the host write masks.
    pub fn device_set(&mut self, off: u64, v: u64) {
        if let Some(b) = self.bytes.get_mut(off as usize..off as usize + 8) {
            b.copy_from_slice(&v.to_le_bytes());
        }
    }

    /// Puts the hotlist window's entries in `mem` (e.g. a mapping the guest reads directly).
    pub fn set_hotlist_memory(&mut self, mem: Box<dyn HotlistMemory>) {
        if self.config.hotlist_window.is_some() {
            self.external = Some(mem);
        }
    }

    /// Writes entry `slot` of instance `i`'s hotlist.
    pub fn write_hotlist(&mut self, i: u8, slot: u64, v: u64) {
        let slot = slot % u64::from(self.config.hotlist_size.max(1));
        match &self.external {
            Some(m) => m.write(
                (u64::from(i) * self.config.hotlist_stride() / 8 + slot) as usize,
                v,
            ),
            None => {
                let off = self.config.instance_base(i) + CHMU_HOTLIST + slot * 8;
                self.device_set(off, v);
            }
        }
    }

    /// Reads entry `slot` of instance `i`'s hotlist.
    pub fn read_hotlist(&self, i: u8, slot: u64) -> u64 {
        let slot = slot % u64::from(self.config.hotlist_size.max(1));
        match &self.external {
            Some(m) => m.read((u64::from(i) * self.config.hotlist_stride() / 8 + slot) as usize),
            None => self.get(self.config.instance_base(i) + CHMU_HOTLIST + slot * 8),
        }
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
        let base = (self.config.instance_base(i) + CHMU_HOTLIST_HEAD) as usize;
        let h = u16::from_le_bytes([self.bytes[base], self.bytes[base + 1]]);
        let t = u16::from_le_bytes([self.bytes[base + 2], self.bytes[base + 3]]);
        (u64::from(h), u64::from(t))
    }

    pub fn set_tail(&mut self, i: u8, tail: u64) {
        let o = (self.config.instance_base(i) + CHMU_HOTLIST_TAIL) as usize;
        self.bytes[o..o + 2].copy_from_slice(&(tail as u16).to_le_bytes());
    }

    /// Whether instance `i`'s range bitmap selects the 256 MiB range holding `dpa`.
    pub fn range_selected(&self, i: u8, dpa: u64) -> bool {
        let bit = dpa / CHMU_RANGE_UNIT;
        if bit >= CHMU_RANGE_BITMAP_BYTES * 8 {
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
        self.put(
            CHMU_COMMON_CAP0,
            CommonCap0::new()
                .with_version(1)
                .with_num_instances(c.instances)
                .into(),
            0,
            0,
        );
        self.put(
            CHMU_COMMON_CAP1,
            CommonCap1::new()
                .with_instance_length(c.instance_length() as u16)
                .into(),
            0,
            0,
        );
        for i in 0..c.instances {
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
            // HEAD is host-writable (u16), TAIL read-only.
            self.put(base + CHMU_HOTLIST_HEAD, 0, 0xffff, 0);
            let bm = (base + CHMU_RANGE_BITMAP) as usize;
            self.wmask[bm..bm + CHMU_RANGE_BITMAP_BYTES as usize].fill(0xff);
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

    pub fn mmio_read(&mut self, offset: u64, data: &mut [u8]) {
        self.counters.mmio_reads += 1;
        if !Self::valid(offset, data.len()) {
            self.counters.guest_errors += 1;
            warn!(offset, len = data.len(), "CHMU: bad read width/alignment");
            data.fill(0);
            return;
        }
        let o = offset as usize;
        data.copy_from_slice(&self.bytes[o..o + data.len()]);
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
        for (i, v) in data.iter().enumerate() {
            let (w, c) = (self.wmask[o + i], self.w1c[o + i]);
            self.bytes[o + i] = ((self.bytes[o + i] & !w) | (v & w)) & !(v & c);
        }
        if let Some((inst, rel)) = self.instance_of(offset) {
            if rel & !7 == CHMU_CFG0 {
                self.cfg0_written(inst);
            }
        }
    }

    /// Validates the configuration an enable asks for (unit size and down-sampling factor
    /// must be offered in CAP1, the range bitmap must select something).
    fn config_valid(&self, base: u64) -> bool {
        let cfg1 = ChmuCfg1::from(self.get(base + CHMU_CFG1));
        let unit_ok = cfg1
            .unit_size()
            .checked_sub(8)
            .is_some_and(|n| n < 32 && self.config.unit_sizes & (1 << n) != 0);
        let ds_ok = self.config.downsampling & (1 << cfg1.downsampling()) != 0;
        let bm = (base + CHMU_RANGE_BITMAP) as usize;
        let range_ok = self.bytes[bm..bm + CHMU_RANGE_BITMAP_BYTES as usize]
            .iter()
            .any(|b| *b != 0);
        unit_ok && ds_ok && range_ok
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
            if self.config_valid(base) {
                self.counters.enables += 1;
                status.set_enabled(true);
                info!(instance = inst, "CHMU enabled");
            } else {
                // Refused: the enable bit does not stick and STATUS stays disabled.
                self.counters.invalid_configs += 1;
                cfg0.set_enable(false);
                warn!(
                    instance = inst,
                    "CHMU enable refused: unsupported unit size, factor or empty range"
                );
            }
        } else if !cfg0.enable() && status.enabled() {
            self.counters.disables += 1;
            status.set_enabled(false);
            info!(instance = inst, "CHMU disabled");
        }
        status.set_op_in_progress(0);
        let o = (base + CHMU_CFG0) as usize;
        self.bytes[o..o + 8].copy_from_slice(&u64::from(cfg0).to_le_bytes());
        let o = (base + CHMU_STATUS) as usize;
        self.bytes[o..o + 8].copy_from_slice(&u64::from(status).to_le_bytes());
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
        assert_eq!(u64::from(len), (CHMU_HOTLIST + 1024 * 8 + 63) & !63);
    }

    #[test]
    fn instance_capabilities_and_offsets() {
        let mut b = ChmuBlock::new(ChmuConfig::default());
        let base = b.config().instance_base(1);
        assert_eq!(
            ChmuCap0::from(rd(&mut b, base + CHMU_CAP0)).hotlist_size(),
            1024
        );
        assert_eq!(rd(&mut b, base + CHMU_CAP2), 0x70);
        assert_eq!(rd(&mut b, base + CHMU_CAP3), 0x270);
        let st = ChmuStatus::from(rd(&mut b, base + CHMU_STATUS));
        assert_eq!(st.counter_width(), 16);
    }

    fn configure(b: &mut ChmuBlock, base: u64, unit_log2: u32) {
        wr(
            b,
            base + CHMU_CFG1,
            ChmuCfg1::new().with_unit_size(unit_log2).into(),
        );
        b.mmio_write(base + CHMU_RANGE_BITMAP, &[1]);
    }

    #[test]
    fn enable_with_valid_config_sets_enabled() {
        let mut b = ChmuBlock::new(ChmuConfig::default());
        let base = b.config().instance_base(0);
        configure(&mut b, base, 12);
        wr(
            &mut b,
            base + CHMU_CFG0,
            ChmuCfg0::new().with_enable(true).into(),
        );
        let st = ChmuStatus::from(rd(&mut b, base + CHMU_STATUS));
        assert!(st.enabled());
        assert_eq!(st.op_in_progress(), 0);
        assert_eq!(b.counters().enables, 1);
    }

    #[test]
    fn enable_with_unsupported_unit_size_is_refused() {
        let mut b = ChmuBlock::new(ChmuConfig::default());
        let base = b.config().instance_base(0);
        configure(&mut b, base, 40);
        wr(
            &mut b,
            base + CHMU_CFG0,
            ChmuCfg0::new().with_enable(true).into(),
        );
        assert!(!ChmuStatus::from(rd(&mut b, base + CHMU_STATUS)).enabled());
        assert!(!ChmuCfg0::from(rd(&mut b, base + CHMU_CFG0)).enable());
        assert_eq!(b.counters().invalid_configs, 1);
    }

    #[test]
    fn enable_with_empty_range_is_refused() {
        let mut b = ChmuBlock::new(ChmuConfig::default());
        let base = b.config().instance_base(0);
        wr(
            &mut b,
            base + CHMU_CFG1,
            ChmuCfg1::new().with_unit_size(12).into(),
        );
        wr(
            &mut b,
            base + CHMU_CFG0,
            ChmuCfg0::new().with_enable(true).into(),
        );
        assert!(!ChmuStatus::from(rd(&mut b, base + CHMU_STATUS)).enabled());
    }

    #[test]
    fn tail_is_read_only_and_head_writable_as_u16() {
        let mut b = ChmuBlock::new(ChmuConfig::default());
        let base = b.config().instance_base(0);
        b.mmio_write(base + CHMU_HOTLIST_TAIL, &7u16.to_le_bytes());
        b.mmio_write(base + CHMU_HOTLIST_HEAD, &5u16.to_le_bytes());
        let mut h = [0u8; 2];
        let mut t = [0u8; 2];
        b.mmio_read(base + CHMU_HOTLIST_HEAD, &mut h);
        b.mmio_read(base + CHMU_HOTLIST_TAIL, &mut t);
        assert_eq!((u16::from_le_bytes(h), u16::from_le_bytes(t)), (5, 0));
    }

    #[test]
    fn a_hotlist_window_moves_cap3_past_the_block_and_shrinks_instances() {
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
        assert_eq!(cfg.instance_length(), 0x280);
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
        assert!(c.hotlist_size > 3000);
        assert!(c.instance_base(2) <= CHMU_BLOCK_SIZE);
    }

    #[test]
    fn capabilities_are_read_only() {
        let mut b = ChmuBlock::new(ChmuConfig::default());
        wr(&mut b, CHMU_COMMON_CAP0, 0);
        assert_eq!(
            CommonCap0::from(rd(&mut b, CHMU_COMMON_CAP0)).num_instances(),
            2
        );
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
