//! One pass of a context over its descriptor ring (SDXi 1.0 "SDXI Descriptor Ring Operation"
//! chapter): the indices, the vl rules, fences and out-of-order completion, and the reaction
//! to a descriptor error (the context stops; see [`super::engine`]).
//!
//! The chapter's example code "Enqueuing one or more Descriptors" (SNIA, BSD-3; imported in
//! AMD's RFC series as `drivers/dma/sdxi/enqueue.c`) is multi-producer: it advances Write_Index with a
//! compare-and-swap *first*, then writes each slot's quadwords 1-7, a write barrier, quadword 0
//! (which holds vl), and rings the doorbell. AMD's driver does the same (`sdxi_ring_try_reserve`
//! stores the new write index at once; `issue_pending` sets vl later, "transferring ownership
//! of the descriptor from software to the SDXI implementation", v1 patch 16/23). That code is
//! only correct if the function reads the ring this way, so it does:
//! - a slot below the write index whose vl is clear is *not yet valid*: the pass stops there
//!   without any error report, read_index stays on the slot, CXT_STS.state stays RUN (the
//!   spec's context states - STOP_SW, RUN, STOPG_SW, STOP_FN, STOPG_FN, ERR_FN - have no
//!   waiting state: a context with nothing valid to run is running), and the next doorbell
//!   (a doorbell during the pass makes the transport run one more) resumes from that slot;
//! - the function clears vl (only that bit of dword 0) in every descriptor it consumes, before
//!   read_index moves past it. The example's producer publishes Write_Index before it
//!   overwrites a reclaimed slot, so a slot that kept vl=1 from its previous lap would run
//!   again (or run the old header over the new body). AMD's driver states the same duty of the
//!   function: "Reserved-but-reclaimed ring slots are vl=0 (the function clears vl as it
//!   executes), so advancing the write index here exposes only invalid slots until
//!   make_valid; the device waits on them" (`dma.c`, `sdxi_dma_drain_locked`, AMDESE tree);
//!   the v3 review flagged stale vl=1 slots as the hazard otherwise. A descriptor carries
//!   nothing lap-dependent (no sequence or phase bit), so this is the only protection.
//!
//! The SDXi 1.0 specification text itself could not be quoted while writing this; the rules
//! rest on its example code and on AMD's driver, which AMD reports working on its hardware.

use super::context::{read_obj, read_u64, set_state, Cxt, CxtEvent};
use super::engine::{invalid, lock, Engine, EngineError, Platform};
use super::execute::Pass;
use crate::mem::*;
use crate::metrics::EngineCounters;
use crate::regs::FnState;
use std::sync::atomic::Ordering;
use vfio_device::dma::DmaMemory;

/// A pass's failure: the error and the ring index of the descriptor it concerns.
type RingError = (EngineError, Option<u64>);

impl<M: DmaMemory, P: Platform> Engine<M, P> {
    /// Runs one pass of context `cxt`: every descriptor between the read and the write index.
    /// Returns the contexts the pass started (admin CXT_START), which need a pass too.
    pub fn process(&self, cxt: u16) -> Vec<u16> {
        let Some(busy) = self.busy.get(usize::from(cxt)) else {
            return Vec::new();
        };
        let _pass = lock(busy);
        if self.registers().state() != FnState::Active {
            return Vec::new();
        }
        if !self.platform.bus_master() {
            self.count(|c| c.passes_without_bus_master += 1);
            return Vec::new();
        }
        let Some(mem) = self.memory() else {
            return Vec::new();
        };
        let mut p = Pass {
            mem: &*mem,
            cxt,
            counts: EngineCounters::default(),
            kicks: Vec::new(),
        };
        p.counts.passes += 1;
        match self.load(&mem, cxt) {
            Ok(cx) => {
                if let Err((e, index)) = self.run_ring(&mut p, &cx) {
                    p.counts.contexts_stopped += 1;
                    let _ = set_state(&*mem, &cx, CxtEvent::DescriptorError);
                    self.log_error(&mem, &mut p.counts, Some(cxt), index, e, RE_CONTEXT_STOPPED);
                }
            }
            Err(e) => self.log_error(&mem, &mut p.counts, Some(cxt), None, e, RE_INFORM),
        }
        self.merge(&p.counts);
        p.kicks
    }

    /// The ring's indices, or None when the context is not RUN (the pass ends quietly).
    fn indices(
        &self,
        p: &mut Pass<'_, M>,
        cx: &Cxt,
        first: bool,
    ) -> Result<Option<(u64, u64)>, RingError> {
        let sts: CxtSts = read_obj(p.mem, cx.sts, step::RING).map_err(|e| (e, None))?;
        if CxtState::from_bits(sts.state.get() as u8) != Some(CxtState::Run) {
            if first {
                p.counts.doorbells_not_running += 1;
            }
            return Ok(None);
        }
        let wi = read_u64(p.mem, cx.write_index, step::RING).map_err(|e| (e, None))?;
        let ri = sts.read_index.get();
        if ri > wi || wi - ri > cx.entries {
            return Err((
                invalid(
                    ErrClass::RingIndex,
                    step::RING,
                    "write index behind the read index or past the ring",
                ),
                Some(ri),
            ));
        }
        Ok(Some((ri, wi)))
    }

    fn run_ring(&self, p: &mut Pass<'_, M>, cx: &Cxt) -> Result<(), RingError> {
        let ooo = self.options.force_out_of_order.load(Ordering::Relaxed);
        let generation = self.generation.load(Ordering::Acquire);
        let mut deferred: Vec<Option<u64>> = Vec::new();
        let mut first = true;
        let result = loop {
            let (mut ri, wi) = match self.indices(p, cx, first) {
                Ok(Some(ix)) if ix.0 != ix.1 => ix,
                Ok(_) => break Ok(()),
                Err(e) => break Err(e),
            };
            first = false;
            while ri < wi {
                if self.generation.load(Ordering::Acquire) != generation {
                    break;
                }
                // Bus mastering is checked per descriptor, not only per pass: a pass that began
                // before the driver cleared BME must not go on reading and copying.
                if !self.platform.bus_master() {
                    p.counts.passes_without_bus_master += 1;
                    break;
                }
                match self.step(p, cx, ri, ooo, &mut deferred) {
                    Ok(true) => ri += 1,
                    Ok(false) => break,
                    Err(e) => {
                        self.flush(p, &mut deferred);
                        return Err(e);
                    }
                }
            }
            self.flush(p, &mut deferred);
            if ri < wi {
                break Ok(());
            }
        };
        self.flush(p, &mut deferred);
        result
    }

    /// Completes the deferred (out-of-order) descriptors, last first.
    fn flush(&self, p: &mut Pass<'_, M>, deferred: &mut Vec<Option<u64>>) {
        while let Some(csb) = deferred.pop() {
            self.complete(p.mem, &mut p.counts, csb, false);
        }
    }

    /// Consumes the descriptor at ring index `ri`. Ok(false): not yet valid, the pass stops.
    fn step(
        &self,
        p: &mut Pass<'_, M>,
        cx: &Cxt,
        ri: u64,
        ooo: bool,
        deferred: &mut Vec<Option<u64>>,
    ) -> Result<bool, RingError> {
        // Guest-chosen bases wrap instead of overflowing; guest memory bounds every access.
        let slot = cx.ring.wrapping_add((ri % cx.entries) * DESC_SIZE);
        let d: Descriptor = read_obj(p.mem, slot, step::DESCRIPTOR).map_err(|e| (e, Some(ri)))?;
        let h = d.header();
        if !h.vl() {
            // Not yet valid: software advanced the write index before setting vl (the spec's
            // multi-producer enqueue does). The ring stops here without error; read_index
            // stays on the slot and the next doorbell resumes.
            p.counts.not_yet_valid += 1;
            return Ok(false);
        }
        // Consumed: vl goes back to 0 before read_index moves past the slot, so when software
        // next reserves the slot (write index first), its previous lap's content is not valid
        // and cannot run again.
        p.mem
            .write(slot, &(d.header.get() & !1).to_le_bytes())
            .map_err(|f| (EngineError::Fault(f, step::RING), Some(ri)))?;
        if h.fe() {
            self.flush(p, deferred);
        }
        let r = self.execute(p, cx, &d);
        p.mem
            .write(cx.sts + 8, &(ri + 1).to_le_bytes())
            .map_err(|f| (EngineError::Fault(f, step::RING), Some(ri)))?;
        match r {
            Ok(()) if ooo && !h.fe() => deferred.push(d.csb()),
            Ok(()) => self.complete(p.mem, &mut p.counts, d.csb(), false),
            Err(e) => {
                self.flush(p, deferred);
                self.complete(p.mem, &mut p.counts, d.csb(), true);
                return Err((e, Some(ri)));
            }
        }
        Ok(true)
    }
}
