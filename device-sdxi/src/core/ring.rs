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
//! - the function clears vl in every descriptor it consumes, before read_index moves past it
//!   (it writes back the descriptors it read with only that bit changed). The example's producer publishes Write_Index before it
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
//!
//! Cost: a pass reads the ring a window of up to [`WINDOW`] descriptors at a time, clears their
//! vl in one write, and moves read_index once per window (and before any CST_BLK it signals, so
//! read_index is always past a descriptor whose completion software can see). Consecutive small
//! COPYs of a window run as one batch: decoded and checked first, then copied back to back in
//! one access to guest memory (`Engine::copy_run`; the DMA space finds the host addresses of up
//! to 64 COPYs at a time, then copies them with each copy's addresses loaded before the copy
//! ahead of it starts, see `vfio_device::dma_copy`); a fenced COPY starts a new batch.
//! Completions are signalled in ring order at the window's end (or as soon as the waiting ones
//! copied [`FLUSH_BYTES`]), before a fenced descriptor and before an INTR; consecutive
//! completions to one CST_BLK (a batch counted down by one block, the way the spec's signal
//! counter is meant to be used) are one atomic subtraction. A window stopped early (an error, a
//! reset, Bus Master Enable cleared) gives the descriptors it did not run their vl back. A
//! window whose read faults is read again up to its page's end, then one descriptor; one whose
//! claim write faults claims one descriptor; so errors name the exact descriptor as before.

use super::context::{read_obj, read_u64, set_state, Cxt, CxtEvent};
use super::engine::{invalid, lock, Engine, EngineError, Platform};
use super::execute::Pass;
use crate::mem::*;
use crate::regs::FnState;
use std::sync::atomic::Ordering;
use vfio_device::dma::{CopyOp, DmaMemory};
use zerocopy::{FromZeros, IntoBytes};

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
        let mut p = Pass::new(&*mem, cxt);
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
        let mut done = Completions::new(ooo);
        // One window, refilled in place (about 5.5 KiB: not moved around).
        let mut w = Window {
            start: 0,
            slot: 0,
            d: [Descriptor::new_zeroed(); WINDOW],
            ops: [CopyOp::default(); WINDOW],
            n: 0,
            valid: 0,
            used: 0,
            released: 0,
        };
        let mut first = true;
        let result = loop {
            let (mut ri, wi) = match self.indices(p, cx, first) {
                Ok(Some(ix)) if ix.0 != ix.1 => ix,
                Ok(_) => break Ok(()),
                Err(e) => break Err(e),
            };
            first = false;
            let mut more = true;
            while more && ri < wi {
                if !self.may_run(p, generation) {
                    more = false;
                    break;
                }
                let r = w
                    .fill(p.mem, cx, ri, wi)
                    .and_then(|()| self.run_window(p, cx, &mut w, generation, &mut done));
                match r {
                    Ok((next, m)) => (ri, more) = (next, m),
                    Err(e) => {
                        self.flush(p, &mut done);
                        return Err(e);
                    }
                }
            }
            self.flush(p, &mut done);
            if !more || ri < wi {
                break Ok(());
            }
        };
        self.flush(p, &mut done);
        result
    }

    /// Whether the pass may run its next descriptor: no reset since it began, and Bus Master
    /// Enable still set (checked per descriptor, not only per pass: a pass that began before
    /// the driver cleared BME must not go on reading and copying).
    fn may_run(&self, p: &mut Pass<'_, M>, generation: u64) -> bool {
        if self.generation.load(Ordering::Acquire) != generation {
            return false;
        }
        if !self.platform.bus_master() {
            p.counts.passes_without_bus_master += 1;
            return false;
        }
        true
    }

    /// Signals the completions waiting in `done`.
    fn flush(&self, p: &mut Pass<'_, M>, done: &mut Completions) {
        done.bytes = 0;
        while let Some((csb, n)) = done.next() {
            self.complete(p.mem, &mut p.counts, csb, n, false);
        }
    }

    /// Runs the valid descriptors of one window. Returns the read index after it and whether
    /// the pass goes on (false: a slot not yet valid, a reset, or BME cleared).
    fn run_window(
        &self,
        p: &mut Pass<'_, M>,
        cx: &Cxt,
        w: &mut Window,
        generation: u64,
        done: &mut Completions,
    ) -> Result<(u64, bool), RingError> {
        if w.valid == 0 {
            // Not yet valid: software advanced the write index before setting vl (the spec's
            // multi-producer enqueue does). The ring stops here without error; read_index
            // stays on the slot and the next doorbell resumes.
            p.counts.not_yet_valid += 1;
            return Ok((w.start, false));
        }
        w.claim(p.mem)?;
        let mut i = 0;
        while i < w.valid {
            if i > 0 && !self.may_run(p, generation) {
                w.give_back(p.mem, i);
                w.release(p.mem, cx)?;
                return Ok((w.ri(), false));
            }
            let h = w.d[i].header();
            if h.fe() || (h.ty() == DSC_TYPE_INTR && !done.ooo) {
                // Everything before a fence (or an interrupt) is complete first.
                w.release(p.mem, cx)?;
                self.flush(p, done);
            }
            let before = p.counts.bytes_copied;
            let (n, r) = self.step(p, cx, w, i, done);
            done.bytes += p.counts.bytes_copied - before;
            w.used = i + n;
            let ok = if r.is_ok() { n } else { n - 1 };
            done.push_all(&w.d[i..i + ok]);
            if let Err(e) = r {
                let last = i + n - 1;
                w.give_back(p.mem, i + n);
                w.release(p.mem, cx)?;
                self.flush(p, done);
                self.complete(p.mem, &mut p.counts, w.d[last].csb(), 1, true);
                return Err((e, Some(w.start + last as u64)));
            }
            if (h.fe() && done.ooo) || (done.bytes >= FLUSH_BYTES && !done.ooo) {
                w.release(p.mem, cx)?;
                self.flush(p, done);
            }
            i += n;
        }
        let more = w.valid == w.n;
        if !more {
            p.counts.not_yet_valid += 1;
        }
        w.release(p.mem, cx)?;
        if !done.ooo {
            self.flush(p, done);
        }
        Ok((w.ri(), more))
    }

    /// Runs the descriptor at `i` of the window, or the run of small COPYs that starts there
    /// (decoded first, then copied back to back in one access: nothing between the copies
    /// but the lookups). Returns how many descriptors it consumed and, if the last of them
    /// failed, its error. No runs in forced out-of-order mode (its fences act per
    /// descriptor); a run stops once it and the completions waiting in `done` copied
    /// [`FLUSH_BYTES`].
    fn step(
        &self,
        p: &mut Pass<'_, M>,
        cx: &Cxt,
        w: &mut Window,
        i: usize,
        done: &Completions,
    ) -> (usize, Result<(), EngineError>) {
        let (run, bytes) = if done.ooo {
            (0, 0)
        } else {
            let budget = FLUSH_BYTES.saturating_sub(done.bytes);
            self.copy_run(p, cx, &w.d[i..w.valid], &mut w.ops, budget)
        };
        if run == 0 {
            return (1, self.execute(p, cx, &w.d[i]));
        }
        let (n, r) = match self.platform.copy_all(p.mem, &w.ops[..run]) {
            Ok(()) => {
                p.counts.bytes_copied += bytes;
                (run, Ok(()))
            }
            Err((k, f)) => {
                p.counts.bytes_copied += w.ops[..k].iter().map(|o| o.len).sum::<u64>();
                (k + 1, Err(EngineError::Fault(f, step::DATA)))
            }
        };
        p.counts.descriptors.copy += n as u64;
        (n, r)
    }
}

/// Descriptors read from the ring in one access.
pub const WINDOW: usize = 64;

/// Completions wait for the end of their window only while the descriptors waiting have
/// copied less than this: a window of large COPYs signals each as it finishes, as a DMA
/// engine's completion latency is bounded by bytes, not descriptor counts.
pub const FLUSH_BYTES: u64 = 256 << 10;

/// Up to [`WINDOW`] consecutive ring slots read at once, and how far the pass got in them.
struct Window {
    /// Ring index of `d[0]`.
    start: u64,
    /// Guest address of `d[0]`.
    slot: u64,
    d: [Descriptor; WINDOW],
    /// The current run of COPYs, decoded ([`Engine::step`]).
    ops: [CopyOp; WINDOW],
    /// Slots read.
    n: usize,
    /// Leading slots with vl set: the ones this window runs.
    valid: usize,
    /// Descriptors consumed (run, or failed).
    used: usize,
    /// Descriptors read_index has been moved past.
    released: usize,
}

impl Window {
    /// Reads the slots from `ri` (below `wi`) up to the window size or the ring's end. If that
    /// faults, reads the slots up to the next 4 KiB page (guest maps are whole pages), and if
    /// that faults too, one slot, so a fault names its exact descriptor.
    fn fill<M: DmaMemory>(&mut self, mem: &M, cx: &Cxt, ri: u64, wi: u64) -> Result<(), RingError> {
        let first = ri % cx.entries;
        let n = (wi - ri).min(cx.entries - first).min(WINDOW as u64) as usize;
        // Guest-chosen bases wrap instead of overflowing; guest memory bounds every access.
        self.slot = cx.ring.wrapping_add(first * DESC_SIZE);
        (self.start, self.n, self.valid, self.used, self.released) = (ri, n, 0, 0, 0);
        if mem.read(self.slot, self.d[..n].as_mut_bytes()).is_err() {
            let in_page = ((4096 - self.slot % 4096) / DESC_SIZE) as usize;
            self.n = n.min(in_page).max(1);
            if self.n > 1 && mem.read(self.slot, self.d[..self.n].as_mut_bytes()).is_ok() {
                self.count_valid();
                return Ok(());
            }
            self.n = 1;
            mem.read(self.slot, self.d[..1].as_mut_bytes())
                .map_err(|f| (EngineError::Fault(f, step::DESCRIPTOR), Some(ri)))?;
        }
        self.count_valid();
        Ok(())
    }

    /// Counts the leading slots read that have vl set.
    fn count_valid(&mut self) {
        self.valid = self.d[..self.n]
            .iter()
            .take_while(|d| d.header().vl())
            .count();
    }

    /// Consumes the valid slots: their vl goes back to 0 before read_index moves past them,
    /// so when software next reserves a slot (write index first), its previous lap's content
    /// is not valid and cannot run again. If the write faults, claims one slot only.
    fn claim<M: DmaMemory>(&mut self, mem: &M) -> Result<(), RingError> {
        // Cleared in place (the pass has read vl already), written back, and set again for
        // the pass's own reading of the headers.
        set_vl(&mut self.d[..self.valid], false);
        let mut r = Ok(());
        if self.valid > 1
            && mem
                .write(self.slot, self.d[..self.valid].as_bytes())
                .is_err()
        {
            set_vl(&mut self.d[1..self.valid], true);
            (self.n, self.valid) = (1, 1);
        }
        if self.valid == 1 {
            r = mem.write(self.slot, self.d[0].header.as_bytes());
        }
        set_vl(&mut self.d[..self.valid], true);
        r.map_err(|f| (EngineError::Fault(f, step::RING), Some(self.start)))
    }

    /// Gives the claimed slots from `from` on their vl back (they were not run).
    fn give_back<M: DmaMemory>(&mut self, mem: &M, from: usize) {
        if from < self.valid {
            let at = self.slot.wrapping_add(from as u64 * DESC_SIZE);
            let _ = mem.write(at, self.d[from..self.valid].as_bytes());
        }
        self.valid = from;
    }

    /// The read index after the consumed descriptors.
    fn ri(&self) -> u64 {
        self.start + self.used as u64
    }

    /// Moves CXT_STS.read_index past the consumed descriptors.
    fn release<M: DmaMemory>(&mut self, mem: &M, cx: &Cxt) -> Result<(), RingError> {
        if self.released == self.used {
            return Ok(());
        }
        mem.write(cx.sts + 8, &self.ri().to_le_bytes())
            .map_err(|f| (EngineError::Fault(f, step::RING), Some(self.ri() - 1)))?;
        self.released = self.used;
        Ok(())
    }
}

/// Sets or clears vl (header bit 0) in each of `ds`.
fn set_vl(ds: &mut [Descriptor], vl: bool) {
    for d in ds {
        d.header = (d.header.get() & !1 | u32::from(vl)).into();
    }
}

/// Run descriptors whose CST_BLKs are not signalled yet: in ring order, or (forced
/// out-of-order completion) last first between fences. Consecutive descriptors naming the
/// same CST_BLK (a batch counted down by one block) are kept as one entry with their number,
/// signalled in one atomic subtraction.
struct Completions {
    ooo: bool,
    csbs: std::collections::VecDeque<(Option<u64>, u32)>,
    /// Bytes copied by the descriptors waiting here.
    bytes: u64,
}

impl Completions {
    fn new(ooo: bool) -> Self {
        Self {
            ooo,
            csbs: std::collections::VecDeque::new(),
            bytes: 0,
        }
    }

    /// Adds the completions of `ds`, in ring order: each run of descriptors naming one
    /// CST_BLK is counted in one go.
    fn push_all(&mut self, mut ds: &[Descriptor]) {
        while let Some((first, rest)) = ds.split_first() {
            let csb = first.csb();
            let same = rest.iter().take_while(|d| d.csb() == csb).count();
            // A window holds far fewer than u32::MAX descriptors.
            let n = same as u32 + 1;
            match self.csbs.back_mut() {
                Some((last, m)) if *last == csb && *m <= u32::MAX - n => *m += n,
                _ => self.csbs.push_back((csb, n)),
            }
            ds = &rest[same..];
        }
    }

    /// The next CST_BLK to signal and how many completions it gets.
    fn next(&mut self) -> Option<(Option<u64>, u32)> {
        if self.ooo {
            self.csbs.pop_back()
        } else {
            self.csbs.pop_front()
        }
    }
}
