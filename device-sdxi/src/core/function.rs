//! SDXi function core: the BAR0 register file and the function state machine
//! (SDXi 1.0 §3.2 function states, §9.2 register map; as AMD's Linux driver `device.c` drives
//! them).
//!
//! No I/O: the vfio-user transport calls [`SdxiFunction::mmio_read`] and
//! [`SdxiFunction::mmio_write`]; context tables, rings, descriptors and the error log are the
//! engine's ([`super::engine`]). Left out: MMIO_RKEY has no effect (no RKey support), and the
//! INIT, STOPG_SF and STOPG_HD states are never entered (every transition is instantaneous).
//!
//! Activation: a request for ACTIVE with no level-2 context table programmed (MMIO_CXT_L2
//! pointer 0) fails into ERROR, which only GSR=RESET leaves (to STOP), as the Linux driver's
//! stop path does; its probe fails on ERROR instead of waiting for a function that cannot
//! find the admin context. A non-zero pointer is not read at activation: the function reads
//! the tables when a doorbell needs them (the admin "jump start" doorbell first), and a table
//! it cannot read is reported then as an address fault with reaction "inform" while the
//! function stays ACTIVE, so software can fix the table and ring again.

use crate::metrics::FunctionCounters;
pub use crate::regs::SdxiConfig;
use crate::regs::{self, CxtL2, FnRequest, FnState, PostWrite, REGISTERS};
use tracing::{debug, info, warn};

/// A condition a transition needs; when it does not hold, the function goes to ERROR instead.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Guard {
    None,
    /// MMIO_CXT_L2 holds a non-zero pointer (the admin context can be found).
    CxtL2Programmed,
}

/// The state machine's transition table (SDXi 1.0 §3.2; the requests AMD's `device.c` makes):
/// current state, request written to CTL0.fn_gsr, next state, guard. Transitions are
/// instantaneous (the driver polls STS0), so STOPG_SF/STOPG_HD are never reported, and a
/// request without a row is ignored with a warning.
#[rustfmt::skip]
pub const TRANSITIONS: &[(FnState, FnRequest, FnState, Guard)] = &[
    (FnState::Stop,    FnRequest::Active, FnState::Active, Guard::CxtL2Programmed),
    (FnState::Stop,    FnRequest::Reset,  FnState::Stop,   Guard::None),
    (FnState::Stop,    FnRequest::StopSf, FnState::Stop,   Guard::None),
    (FnState::Stop,    FnRequest::StopHd, FnState::Stop,   Guard::None),
    (FnState::Init,    FnRequest::Active, FnState::Active, Guard::CxtL2Programmed),
    (FnState::Init,    FnRequest::StopSf, FnState::Stop,   Guard::None),
    (FnState::Init,    FnRequest::StopHd, FnState::Stop,   Guard::None),
    (FnState::Active,  FnRequest::Active, FnState::Active, Guard::None),
    (FnState::Active,  FnRequest::StopSf, FnState::Stop,   Guard::None),
    (FnState::Active,  FnRequest::StopHd, FnState::Stop,   Guard::None),
    (FnState::Active,  FnRequest::Reset,  FnState::Stop,   Guard::None),
    (FnState::StopgSf, FnRequest::StopHd, FnState::Stop,   Guard::None),
    (FnState::Error,   FnRequest::Reset,  FnState::Stop,   Guard::None),
];

/// The next state for `request` in `state`, or None when the table has no row.
pub fn next_state(state: FnState, request: FnRequest, cxt_l2: u64) -> Option<FnState> {
    let &(_, _, to, guard) = TRANSITIONS
        .iter()
        .find(|(from, r, _, _)| *from == state && *r == request)?;
    let ok = match guard {
        Guard::None => true,
        Guard::CxtL2Programmed => CxtL2::from(cxt_l2).ptr() != 0,
    };
    Some(if ok { to } else { FnState::Error })
}

/// One SDXi PCI function's register state.
#[derive(Debug)]
pub struct SdxiFunction {
    config: SdxiConfig,
    values: Vec<u64>,
    state: FnState,
    counters: FunctionCounters,
}

impl SdxiFunction {
    pub fn new(config: SdxiConfig) -> Self {
        let mut f = Self {
            values: vec![0; REGISTERS.len()],
            config,
            state: FnState::Stop,
            counters: FunctionCounters::default(),
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

    pub fn counters(&self) -> &FunctionCounters {
        &self.counters
    }

    /// Function-level reset: every register to its reset value, state STOP.
    pub fn reset(&mut self) {
        for (v, r) in self.values.iter_mut().zip(REGISTERS) {
            *v = r.reset.value(&self.config);
        }
        self.set_state(FnState::Stop);
    }

    fn index_of(offset: u64) -> Option<usize> {
        regs::lookup(offset).map(|(i, _)| i)
    }

    /// The one setter of the state: mirrors it into STS0.fn_gsv.
    fn set_state(&mut self, s: FnState) {
        if s != self.state {
            info!(from = ?self.state, to = ?s, "SDXi function state");
            self.counters.state_transitions += 1;
        }
        self.state = s;
        self.device_set(
            regs::MMIO_STS0,
            regs::Sts0::new().with_fn_gsv(s as u8).into(),
        );
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

    /// A guest write of BAR0: masks from the register table, then its post-write hook. Bad
    /// accesses and writes to holes are ignored.
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
        let old = self.values[i];
        let new = regs::apply_write(info, old, offset, data);
        self.values[i] = new;
        debug!(reg = info.name, old, new, "SDXi BAR0 write");
        tracing::trace!(target: "sdxi::mmio", op = "write", offset = format_args!("{offset:#x}"), width = data.len(), reg = info.name, value = format_args!("{new:#x}"), old = format_args!("{old:#x}"));
        match info.post_write {
            Some(PostWrite::FnStateRequest) => self.fn_state_requested(),
            None => {}
        }
    }

    /// CTL0 written: the request in fn_gsr moves the state machine.
    fn fn_state_requested(&mut self) {
        let gsr = regs::Ctl0::from(self.reg(regs::MMIO_CTL0)).fn_gsr();
        let req = FnRequest::from_gsr(gsr);
        match next_state(self.state, req, self.reg(regs::MMIO_CXT_L2)) {
            Some(FnState::Error) => {
                warn!("SDXi: ACTIVE requested without a level-2 context table: function error");
                self.set_state(FnState::Error);
            }
            Some(to) => self.set_state(to),
            None => {
                warn!(state = ?self.state, request = ?req, "SDXi: state request ignored in this state");
            }
        }
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
    fn every_request_in_every_state_follows_the_table() {
        // Oracle written out from the driver's expectations (SDXi 1.0 §3.2 as `device.c` uses
        // it): (state, request) -> next, with a level-2 table programmed.
        use FnRequest as R;
        use FnState as S;
        let expect = |s, r| match (s, r) {
            (S::Stop | S::Init | S::Active, R::Active) => Some(S::Active),
            (S::Stop, _) | (S::Init | S::Active, R::StopSf | R::StopHd) => Some(S::Stop),
            (S::Active, R::Reset) | (S::StopgSf, R::StopHd) | (S::Error, R::Reset) => Some(S::Stop),
            _ => None,
        };
        let states = [
            S::Stop,
            S::Init,
            S::Active,
            S::StopgSf,
            S::StopgHd,
            S::Error,
        ];
        for s in states {
            for r in [R::Reset, R::StopSf, R::StopHd, R::Active] {
                assert_eq!(next_state(s, r, 0x1000), expect(s, r), "{s:?} {r:?}");
            }
        }
        assert_eq!(next_state(S::Stop, R::Active, 0), Some(S::Error));
    }

    #[test]
    fn doorbell_bar_holds_one_page_per_context() {
        let c = SdxiConfig::default();
        // 65 contexts (admin + 64 data contexts), rounded up to 128 pages.
        assert_eq!(c.doorbell_bar_size(), 128 * 4096);
        assert_eq!(c.msix_vectors(), 66);
    }
}
