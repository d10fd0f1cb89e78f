//! SDXi function core: the BAR0 register file and the function state machine
//! (SDXi 1.0 §3.2 function states, §9.2 register map; as AMD's Linux driver `device.c` drives
//! them).
//!
//! No I/O: the vfio-user transport calls [`SdxiFunction::mmio_read`] and
//! [`SdxiFunction::mmio_write`]; context tables, rings, descriptors and the error log are the
//! engine's (`engine.rs`).
//!
//! Activation: a request for ACTIVE with no level-2 context table programmed (MMIO_CXT_L2
//! pointer 0) fails into ERROR, which only GSR=RESET leaves (to STOP), as the Linux driver's
//! stop path does; its probe fails on ERROR instead of waiting for a function that cannot
//! find the admin context. A non-zero pointer is not read at activation: the function reads
//! the tables when a doorbell needs them (the admin "jump start" doorbell first), and a table
//! it cannot read is reported then as an address fault with reaction "inform" while the
//! function stays ACTIVE, so software can fix the table and ring again.

use crate::regs::{self, Cap0, Cap1, CxtL2, FnRequest, FnState, Version, REGISTERS};
use serde::Serialize;
use tracing::{debug, info, warn};

/// Capabilities of an emulated function (fixed at creation).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SdxiConfig {
    /// Highest context ID (CAP1.max_cxt); context 0 is the admin context, so the default
    /// offers 64 data contexts.
    pub max_cxt: u16,
    /// Doorbell stride exponent: stride = 4 KiB << db_stride.
    pub db_stride: u8,
    /// Largest ring: 1024 << max_ds_ring_sz descriptors.
    pub max_ds_ring_sz: u8,
    /// CAP1.max_buffer; 11 is read by the driver as 4 GiB.
    pub max_buffer: u8,
    pub max_akey_sz: u8,
    pub max_errlog_sz: u8,
    /// Operation group 000 capability bitmap.
    pub opb_000_cap: u32,
}

impl Default for SdxiConfig {
    fn default() -> Self {
        Self {
            max_cxt: 64,
            db_stride: 0,
            max_ds_ring_sz: 4,
            max_buffer: 11,
            max_akey_sz: 0,
            max_errlog_sz: 0,
            // DMAB, admin and interrupt groups.
            opb_000_cap: 0b1_0111,
        }
    }
}

impl SdxiConfig {
    pub fn cap0(&self) -> u64 {
        Cap0::new()
            .with_sfunc(0)
            .with_db_stride(self.db_stride)
            .with_max_ds_ring_sz(self.max_ds_ring_sz)
            .into()
    }

    pub fn cap1(&self) -> u64 {
        Cap1::new()
            .with_max_buffer(self.max_buffer)
            .with_mmio64(true)
            .with_max_errlog_sz(self.max_errlog_sz)
            .with_max_akey_sz(self.max_akey_sz)
            .with_max_cxt(self.max_cxt)
            .with_opb_000_cap(self.opb_000_cap)
            .into()
    }

    pub fn version(&self) -> u64 {
        Version::new().with_major(1).with_minor(0).into()
    }

    /// Doorbell stride in bytes.
    pub fn doorbell_stride(&self) -> u64 {
        4096u64 << self.db_stride
    }

    /// BAR2 size: one doorbell page per context, rounded up to a power of two.
    pub fn doorbell_bar_size(&self) -> u64 {
        (u64::from(self.max_cxt) + 1)
            .saturating_mul(self.doorbell_stride())
            .next_power_of_two()
    }

    /// MSI-X vectors: vector 0 for the error log, one per context after it.
    pub fn msix_vectors(&self) -> u16 {
        self.max_cxt.saturating_add(2).min(2048)
    }
}

/// The state machine's transition table (SDXi 1.0 §3.2; the requests AMD's `device.c` makes).
/// Transitions are instantaneous, which
/// the driver accepts since it polls STS0.
pub const TRANSITIONS: &[(FnState, FnRequest, FnState)] = &[
    (FnState::Stop, FnRequest::Active, FnState::Active),
    (FnState::Stop, FnRequest::Reset, FnState::Stop),
    (FnState::Stop, FnRequest::StopSf, FnState::Stop),
    (FnState::Stop, FnRequest::StopHd, FnState::Stop),
    (FnState::Init, FnRequest::Active, FnState::Active),
    (FnState::Init, FnRequest::StopSf, FnState::Stop),
    (FnState::Init, FnRequest::StopHd, FnState::Stop),
    (FnState::Active, FnRequest::Active, FnState::Active),
    (FnState::Active, FnRequest::StopSf, FnState::Stop),
    (FnState::Active, FnRequest::StopHd, FnState::Stop),
    (FnState::Active, FnRequest::Reset, FnState::Stop),
    (FnState::StopgSf, FnRequest::StopHd, FnState::Stop),
    (FnState::Error, FnRequest::Reset, FnState::Stop),
];

/// Counters of the register interface.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RegCounters {
    pub mmio_reads: u64,
    pub mmio_writes: u64,
    /// Accesses with a bad width or alignment, or to unlisted offsets.
    pub guest_errors: u64,
    pub state_transitions: u64,
}

/// One SDXi PCI function's register state.
#[derive(Debug)]
pub struct SdxiFunction {
    config: SdxiConfig,
    values: Vec<u64>,
    state: FnState,
    counters: RegCounters,
}

impl SdxiFunction {
    pub fn new(config: SdxiConfig) -> Self {
        let mut f = Self {
            values: vec![0; REGISTERS.len()],
            config,
            state: FnState::Stop,
            counters: RegCounters::default(),
        };
        f.reset();
        f
    }

    pub fn config(&self) -> &SdxiConfig {
        &self.config
    }

    pub fn state(&self) -> FnState {
        self.state
    }

    pub fn counters(&self) -> &RegCounters {
        &self.counters
    }

    /// Function-level reset: every register to its reset value, state STOP.
    pub fn reset(&mut self) {
        for (i, r) in REGISTERS.iter().enumerate() {
            self.values[i] = match r.offset {
                regs::MMIO_CAP0 => self.config.cap0(),
                regs::MMIO_CAP1 => self.config.cap1(),
                regs::MMIO_VERSION => self.config.version(),
                _ => 0,
            };
        }
        self.set_state(FnState::Stop);
    }

    fn index_of(offset: u64) -> Option<usize> {
        regs::lookup(offset).map(|(i, _)| i)
    }

    fn set_state(&mut self, s: FnState) {
        if s != self.state {
            info!(from = ?self.state, to = ?s, "SDXi function state");
            self.counters.state_transitions += 1;
        }
        self.state = s;
        if let Some(i) = Self::index_of(regs::MMIO_STS0) {
            self.values[i] = regs::Sts0::new().with_fn_gsv(s as u8).into();
        }
    }

    /// The current value of the register at `offset` (0 for holes).
    pub fn reg(&self, offset: u64) -> u64 {
        Self::index_of(offset).map_or(0, |i| self.values[i])
    }

    /// A device-side update (not subject to the software write masks), e.g. ERR_WRT.
    pub fn device_set(&mut self, offset: u64, value: u64) {
        if let Some(i) = Self::index_of(offset) {
            self.values[i] = value;
        }
    }

    /// Checks an access the way the spec's access rules allow: 4- or 8-byte, naturally aligned.
    fn valid_access(offset: u64, len: usize) -> bool {
        matches!(len, 4 | 8) && offset.is_multiple_of(len as u64)
    }

    /// A guest read of BAR0. Bad accesses and holes read as 0.
    pub fn mmio_read(&mut self, offset: u64, data: &mut [u8]) {
        self.counters.mmio_reads += 1;
        data.fill(0);
        if !Self::valid_access(offset, data.len()) {
            self.counters.guest_errors += 1;
            warn!(
                offset,
                len = data.len(),
                "SDXi BAR0: bad read width/alignment"
            );
            return;
        }
        let Some(i) = Self::index_of(offset) else {
            self.counters.guest_errors += 1;
            debug!(offset, "SDXi BAR0: read of unlisted offset");
            return;
        };
        let bytes = self.values[i].to_le_bytes();
        let start = (offset & 7) as usize;
        data.copy_from_slice(&bytes[start..start + data.len()]);
        tracing::trace!(target: "sdxi::mmio", op = "read", offset = format_args!("{offset:#x}"), width = data.len(), reg = REGISTERS[i].name, value = format_args!("{:#x}", self.values[i]));
    }

    /// A guest write of BAR0. Bad accesses and writes to holes are ignored.
    pub fn mmio_write(&mut self, offset: u64, data: &[u8]) {
        self.counters.mmio_writes += 1;
        if !Self::valid_access(offset, data.len()) {
            self.counters.guest_errors += 1;
            warn!(
                offset,
                len = data.len(),
                "SDXi BAR0: bad write width/alignment"
            );
            return;
        }
        let Some((i, info)) = regs::lookup(offset) else {
            self.counters.guest_errors += 1;
            debug!(offset, "SDXi BAR0: write to unlisted offset ignored");
            return;
        };
        let shift = (offset & 7) * 8;
        let lane: u64 = if data.len() == 8 {
            u64::MAX
        } else {
            0xffff_ffff << shift
        };
        let mut raw = [0u8; 8];
        raw[..data.len()].copy_from_slice(data);
        let value = u64::from_le_bytes(raw) << shift;
        let old = self.values[i];
        let wmask = info.wmask & lane;
        let w1c = info.w1c & lane;
        let new = ((old & !wmask) | (value & wmask)) & !(value & w1c);
        self.values[i] = new;
        debug!(reg = info.name, old, new, "SDXi BAR0 write");
        tracing::trace!(target: "sdxi::mmio", op = "write", offset = format_args!("{offset:#x}"), width = data.len(), reg = info.name, value = format_args!("{new:#x}"), old = format_args!("{old:#x}"));
        if info.offset == regs::MMIO_CTL0 {
            self.ctl0_written();
        }
    }

    fn ctl0_written(&mut self) {
        let gsr = regs::Ctl0::from(self.reg(regs::MMIO_CTL0)).fn_gsr();
        let req = FnRequest::from_gsr(gsr);
        let Some(&(_, _, mut to)) = TRANSITIONS
            .iter()
            .find(|(from, r, _)| *from == self.state && *r == req)
        else {
            warn!(state = ?self.state, request = ?req, "SDXi: state request ignored in this state");
            return;
        };
        if to == FnState::Active && self.state != FnState::Active {
            let l2 = CxtL2::from(self.reg(regs::MMIO_CXT_L2)).ptr();
            if l2 == 0 {
                warn!("SDXi: ACTIVE requested without a level-2 context table: function error");
                to = FnState::Error;
            }
        }
        self.set_state(to);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::regs::*;

    fn read64(f: &mut SdxiFunction, off: u64) -> u64 {
        let mut b = [0u8; 8];
        f.mmio_read(off, &mut b);
        u64::from_le_bytes(b)
    }

    fn write64(f: &mut SdxiFunction, off: u64, v: u64) {
        f.mmio_write(off, &v.to_le_bytes());
    }

    #[test]
    fn version_reads_one_point_zero() {
        let mut f = SdxiFunction::new(SdxiConfig::default());
        let v = read64(&mut f, MMIO_VERSION);
        assert_eq!(v, 0x0001_0000);
    }

    #[test]
    fn capability_registers_describe_the_config() {
        let mut f = SdxiFunction::new(SdxiConfig::default());
        let cap1 = Cap1::from(read64(&mut f, MMIO_CAP1));
        assert_eq!(cap1.max_cxt(), 64);
        assert_eq!(cap1.max_buffer(), 11);
        let cap0 = Cap0::from(read64(&mut f, MMIO_CAP0));
        assert_eq!(cap0.max_ds_ring_sz(), 4);
    }

    #[test]
    fn thirty_two_bit_halves_compose_the_register() {
        let mut f = SdxiFunction::new(SdxiConfig::default());
        let mut lo = [0u8; 4];
        let mut hi = [0u8; 4];
        f.mmio_read(MMIO_CAP1, &mut lo);
        f.mmio_read(MMIO_CAP1 + 4, &mut hi);
        let joined = u64::from(u32::from_le_bytes(lo)) | (u64::from(u32::from_le_bytes(hi)) << 32);
        assert_eq!(joined, SdxiConfig::default().cap1());
    }

    #[test]
    fn read_only_registers_ignore_writes() {
        let mut f = SdxiFunction::new(SdxiConfig::default());
        write64(&mut f, MMIO_VERSION, 0xdead);
        write64(&mut f, MMIO_STS0, 2);
        assert_eq!(read64(&mut f, MMIO_VERSION), 0x0001_0000);
        assert_eq!(f.state(), FnState::Stop);
    }

    #[test]
    fn upper_dword_write_keeps_lower_half() {
        let mut f = SdxiFunction::new(SdxiConfig::default());
        write64(&mut f, MMIO_ERR_RD, 0x1111_2222_3333_4444);
        f.mmio_write(MMIO_ERR_RD + 4, &0xaaaa_bbbbu32.to_le_bytes());
        assert_eq!(read64(&mut f, MMIO_ERR_RD), 0xaaaa_bbbb_3333_4444);
    }

    #[test]
    fn unaligned_or_odd_width_access_counts_guest_error_and_reads_zero() {
        let mut f = SdxiFunction::new(SdxiConfig::default());
        let mut b = [0xffu8; 2];
        f.mmio_read(MMIO_VERSION, &mut b);
        assert_eq!(b, [0, 0]);
        f.mmio_write(MMIO_CTL0 + 2, &[3, 0, 0, 0]);
        assert_eq!(f.counters().guest_errors, 2);
        assert_eq!(f.state(), FnState::Stop);
    }

    #[test]
    fn holes_read_zero_and_ignore_writes() {
        let mut f = SdxiFunction::new(SdxiConfig::default());
        write64(&mut f, 0x8, u64::MAX);
        assert_eq!(read64(&mut f, 0x8), 0);
        assert_eq!(read64(&mut f, 0x3fff8), 0);
    }

    #[test]
    fn active_with_l2_table_then_soft_stop() {
        let mut f = SdxiFunction::new(SdxiConfig::default());
        write64(&mut f, MMIO_CXT_L2, 0x10_0000);
        write64(&mut f, MMIO_CTL0, FnRequest::Active as u64);
        assert_eq!(
            Sts0::from(read64(&mut f, MMIO_STS0)).fn_gsv(),
            FnState::Active as u8
        );
        write64(&mut f, MMIO_CTL0, FnRequest::StopSf as u64);
        assert_eq!(f.state(), FnState::Stop);
        assert_eq!(f.counters().state_transitions, 2);
    }

    #[test]
    fn active_without_l2_table_is_function_error_cleared_by_reset_request() {
        let mut f = SdxiFunction::new(SdxiConfig::default());
        write64(&mut f, MMIO_CTL0, FnRequest::Active as u64);
        assert_eq!(f.state(), FnState::Error);
        write64(&mut f, MMIO_CTL0, FnRequest::Reset as u64);
        assert_eq!(f.state(), FnState::Stop);
    }

    #[test]
    fn err_sts_is_write_one_to_clear() {
        let mut f = SdxiFunction::new(SdxiConfig::default());
        let i = SdxiFunction::index_of(MMIO_ERR_STS).expect("ERR_STS in table");
        f.values[i] = 0b1011;
        write64(&mut f, MMIO_ERR_STS, 0b0001);
        assert_eq!(read64(&mut f, MMIO_ERR_STS), 0b1010);
    }

    #[test]
    fn reset_restores_reset_values() {
        let mut f = SdxiFunction::new(SdxiConfig::default());
        write64(&mut f, MMIO_CXT_L2, 0x1000);
        write64(&mut f, MMIO_CTL0, 3);
        f.reset();
        assert_eq!(read64(&mut f, MMIO_CXT_L2), 0);
        assert_eq!(f.state(), FnState::Stop);
    }

    #[test]
    fn doorbell_bar_holds_one_page_per_context() {
        let c = SdxiConfig::default();
        // 65 contexts (admin + 64 data contexts), rounded up to 128 pages.
        assert_eq!(c.doorbell_bar_size(), 128 * 4096);
        assert_eq!(c.msix_vectors(), 66);
    }
}
