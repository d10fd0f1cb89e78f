//! One pass of a context over its descriptor ring (SDXi 1.0 "SDXI Descriptor Ring Operation"
//! chapter): the indices, the vl rules, fences and out-of-order completion, and the reaction
//! to a descriptor error (the context stops; see `engine.rs`).
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

use super::*;

impl<M: DmaMemory, I: Irq> Engine<M, I> {
    /// Runs one pass of context `cxt`: every descriptor between the read and the write index.
    /// Returns the contexts the pass started (admin CXT_START), which need a pass too.
    pub fn process(&self, cxt: u16) -> Vec<u16> {
        let mut kicks = Vec::new();
        let Some(busy) = self.busy.get(usize::from(cxt)) else {
            return kicks;
        };
        let _pass = lock(busy);
        if lock(&self.regs).state() != FnState::Active {
            return kicks;
        }
        if !self.irq.bus_master() {
            self.counters
                .passes_without_bus_master
                .fetch_add(1, Ordering::Relaxed);
            return kicks;
        }
        let Some(mem) = self.memory() else {
            return kicks;
        };
        self.counters.passes.fetch_add(1, Ordering::Relaxed);
        let cx = match self.load(&mem, cxt) {
            Ok(c) => c,
            Err(e) => {
                self.log_error(&mem, Some(cxt), None, e, RE_INFORM);
                return kicks;
            }
        };
        if let Err((e, index)) = self.run_ring(&mem, cxt, &cx, &mut kicks) {
            self.counters
                .contexts_stopped
                .fetch_add(1, Ordering::Relaxed);
            let _ = Self::set_cxt_state(&mem, cx.sts, ERROR_STATE);
            self.log_error(&mem, Some(cxt), index, e, RE_CONTEXT_STOPPED);
        }
        kicks
    }

    fn run_ring(
        &self,
        mem: &M,
        cxt: u16,
        cx: &Cxt,
        kicks: &mut Vec<u16>,
    ) -> Result<(), (EngineError, Option<u64>)> {
        let ooo = self.options.force_out_of_order.load(Ordering::Relaxed);
        let generation = self.generation.load(Ordering::Acquire);
        let mut deferred: Vec<Option<u64>> = Vec::new();
        let flush = |deferred: &mut Vec<Option<u64>>| {
            while let Some(csb) = deferred.pop() {
                self.complete(mem, csb, false);
            }
        };
        let mut first = true;
        let result = (|| loop {
            let sts: CxtSts = Self::read_obj(mem, cx.sts, step::RING).map_err(|e| (e, None))?;
            if CxtState::from_bits(sts.state.get() as u8) != Some(CxtState::Run) {
                if first {
                    self.counters
                        .doorbells_not_running
                        .fetch_add(1, Ordering::Relaxed);
                }
                return Ok(());
            }
            first = false;
            let wi = Self::read_u64(mem, cx.write_index, step::RING).map_err(|e| (e, None))?;
            let mut ri = sts.read_index.get();
            if ri == wi {
                return Ok(());
            }
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
            while ri < wi {
                if self.generation.load(Ordering::Acquire) != generation {
                    return Ok(());
                }
                // Bus mastering is checked per descriptor, not only per pass: a pass that began
                // before the driver cleared BME must not go on reading and copying.
                if !self.irq.bus_master() {
                    self.counters
                        .passes_without_bus_master
                        .fetch_add(1, Ordering::Relaxed);
                    return Ok(());
                }
                // Guest-chosen bases wrap instead of overflowing; GuestRam bounds every access.
                let slot = cx.ring.wrapping_add((ri % cx.entries) * DESC_SIZE);
                let d: Descriptor =
                    Self::read_obj(mem, slot, step::DESCRIPTOR).map_err(|e| (e, Some(ri)))?;
                let h = d.header();
                if !h.vl() {
                    // Not yet valid: software advanced the write index before setting vl
                    // (the spec's multi-producer enqueue does). The ring stops here without
                    // error; read_index stays on the slot and the next doorbell resumes.
                    self.counters.not_yet_valid.fetch_add(1, Ordering::Relaxed);
                    return Ok(());
                }
                // Consumed: vl goes back to 0 before read_index moves past the slot, so when
                // software next reserves the slot (write index first), its previous lap's
                // content is not valid and cannot run again.
                mem.write(slot, &(d.header.get() & !1).to_le_bytes())
                    .map_err(|f| (EngineError::Fault(f, step::RING), Some(ri)))?;
                if h.fe() {
                    flush(&mut deferred);
                }
                let r = self.execute(mem, cxt, cx, &d, kicks);
                ri += 1;
                mem.write(cx.sts + 8, &ri.to_le_bytes())
                    .map_err(|f| (EngineError::Fault(f, step::RING), Some(ri - 1)))?;
                match r {
                    Ok(()) if ooo && !h.fe() => deferred.push(d.csb()),
                    Ok(()) => self.complete(mem, d.csb(), false),
                    Err(e) => {
                        flush(&mut deferred);
                        self.complete(mem, d.csb(), true);
                        return Err((e, Some(ri - 1)));
                    }
                }
            }
            flush(&mut deferred);
        })();
        flush(&mut deferred);
        result
    }
}
