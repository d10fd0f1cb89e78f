//! The context level (SDXi 1.0 chapter 3, "context-level" structures): finding a context
//! through the level-2 and level-1 tables and its CXT_CTL, its AKey table, and the state in
//! its CXT_STS.
//!
//! The function writes CXT_STS.state on four events, whatever the state was before (software
//! owns the field too: AMD's driver sets RUN itself for the admin context), as
//! [`CXT_TRANSITIONS`] lists. Nothing is cached between passes: every pass walks the tables
//! again, so CXT_UPD has nothing to invalidate.
//!
//! Left out: PASIDs (L1 pv/pasid), the per-context max_buffer and opb_000_enb limits, RKeys.

use super::engine::{invalid, Engine, EngineError, Platform};
use crate::mem::{step, table_indices, AkeyEnt, CxtCtl, CxtL1Ent, CxtL2Ent, CxtState, ErrClass};
use crate::regs::{self, CxtL2};
use vfio_device::dma::DmaMemory;
use zerocopy::FromBytes;

/// What makes the function write a context's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CxtEvent {
    /// Admin CXT_START_NM / CXT_START_RS.
    Start,
    /// Admin CXT_STOP.
    Stop,
    /// A descriptor error in the context's ring.
    DescriptorError,
    /// A function-side stop (fault injection's `stop_context`).
    FunctionStop,
}

/// The state each event leaves in CXT_STS, from any state.
pub const CXT_TRANSITIONS: &[(CxtEvent, CxtState)] = &[
    (CxtEvent::Start, CxtState::Run),
    (CxtEvent::Stop, CxtState::StopSw),
    (CxtEvent::DescriptorError, super::engine::ERROR_STATE),
    (CxtEvent::FunctionStop, CxtState::StopFn),
];

/// A context as its tables describe it.
#[derive(Clone, Copy, Debug)]
pub struct Cxt {
    pub ring: u64,
    pub entries: u64,
    pub sts: u64,
    pub write_index: u64,
    pub akey_table: u64,
    pub akey_entries: u32,
}

/// Reads a structure of at most 64 bytes from guest memory.
pub(crate) fn read_obj<T: FromBytes, M: DmaMemory>(
    mem: &M,
    addr: u64,
    step: u8,
) -> Result<T, EngineError> {
    let mut buf = [0u8; 64];
    let n = std::mem::size_of::<T>().min(64);
    mem.read(addr, &mut buf[..n])
        .map_err(|f| EngineError::Fault(f, step))?;
    T::read_from_bytes(&buf[..n])
        .map_err(|_| invalid(ErrClass::InvalidDescriptor, step, "short read"))
}

pub(crate) fn read_u64<M: DmaMemory>(mem: &M, addr: u64, step: u8) -> Result<u64, EngineError> {
    let mut b = [0u8; 8];
    mem.read(addr, &mut b)
        .map_err(|f| EngineError::Fault(f, step))?;
    Ok(u64::from_le_bytes(b))
}

/// Writes the state `event` leaves into the context's CXT_STS.
pub(crate) fn set_state<M: DmaMemory>(
    mem: &M,
    cx: &Cxt,
    event: CxtEvent,
) -> Result<(), EngineError> {
    let s = CXT_TRANSITIONS
        .iter()
        .find(|(e, _)| *e == event)
        .map_or(CxtState::StopFn, |(_, s)| *s);
    mem.write(cx.sts, &(s as u32).to_le_bytes())
        .map_err(|f| EngineError::Fault(f, step::CXT_TABLE))
}

impl<M: DmaMemory, P: Platform> Engine<M, P> {
    /// Walks L2 -> L1 -> CXT_CTL for `cxt`.
    pub(crate) fn load(&self, mem: &M, cxt: u16) -> Result<Cxt, EngineError> {
        let l2_base = CxtL2::from(self.registers().reg(regs::MMIO_CXT_L2)).ptr() << 12;
        let bad = |what| invalid(ErrClass::InvalidContext, step::CXT_TABLE, what);
        let (i2, i1) = table_indices(cxt);
        let l2: CxtL2Ent = read_obj(
            mem,
            l2_base.wrapping_add(u64::from(i2) * 8),
            step::CXT_TABLE,
        )?;
        if !l2.vl() {
            return Err(bad("level-2 entry not valid"));
        }
        let l1: CxtL1Ent = read_obj(
            mem,
            l2.ptr().wrapping_add(u64::from(i1) * 32),
            step::CXT_TABLE,
        )?;
        if !l1.vl() {
            return Err(bad("level-1 entry not valid"));
        }
        let ctl: CxtCtl = read_obj(mem, l1.cxt_ctl(), step::CXT_TABLE)?;
        if !ctl.vl() {
            return Err(bad("CXT_CTL not valid"));
        }
        let entries = u64::from(ctl.ds_ring_sz.get());
        let max = 1024u64 << self.config.max_ds_ring_sz.min(20);
        if entries == 0 || entries > max {
            return Err(bad("ring size zero or above CAP0.max_ds_ring_sz"));
        }
        Ok(Cxt {
            ring: ctl.ring(),
            entries,
            sts: ctl.sts(),
            write_index: ctl.write_index(),
            akey_table: l1.akey_table(),
            akey_entries: l1.akey_entries(),
        })
    }
}

/// Reads AKey `index` of the context's table; it must exist and be valid.
pub(crate) fn akey<M: DmaMemory>(mem: &M, cx: &Cxt, index: u16) -> Result<AkeyEnt, EngineError> {
    if u32::from(index) >= cx.akey_entries {
        return Err(invalid(
            ErrClass::InvalidAkey,
            step::AKEY,
            "AKey index beyond the table",
        ));
    }
    let a: AkeyEnt = read_obj(
        mem,
        cx.akey_table.wrapping_add(u64::from(index) * 16),
        step::AKEY,
    )?;
    if !a.vl() {
        return Err(invalid(
            ErrClass::InvalidAkey,
            step::AKEY,
            "AKey entry not valid",
        ));
    }
    Ok(a)
}
