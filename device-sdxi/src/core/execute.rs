//! Descriptor execution (SDXi 1.0 chapter 5, the DMA base group and interrupt group, and the
//! completion status block of chapter 6): DMAB NOP and COPY, IntrGrp INTR, the AKey checks
//! they make, and CST_BLK signalling. Admin descriptors go to [`super::admin`].
//!
//! - COPY checks both AKeys (source akey0, destination akey1), refuses overlapping ranges
//!   (the spec leaves them undefined) and moves `size + 1` bytes through the platform;
//! - INTR raises the vector in its AKey's intr_num, which must have `iv`;
//! - a CST_BLK gets `er` first when the descriptor failed, then its signal decremented.
//!
//! Left out: WRT_IMM, REP_COPY and the atomic group (2022 prototype only; reported as invalid
//! descriptors), COPY's attr byte (accepted and ignored).

use super::context::{akey, Cxt};
use super::engine::{invalid, Engine, EngineError, Platform};
use crate::mem::*;
use crate::metrics::EngineCounters;
use vfio_device::dma::{CopyOp, DmaMemory, Fault};

/// The longest COPY a run takes (`Engine::copy_run`); longer ones go through
/// [`Platform::copy`] one by one (the server's platform splits the large ones over threads).
/// A run stops once it holds what may still wait for its completions (the ring's
/// `FLUSH_BYTES`), so it stays short: Bus Master Enable and reset are checked before it and
/// after it, not between its copies, and an unmap waits for at most that much copying.
pub const RUN_COPY_MAX: u64 = 64 << 10;

/// One pass's working state: the memory it reads, the context, what it counted (merged into
/// the engine's counters when the pass ends), the contexts it started, and the AKey entry it
/// read last (kept for the pass only: AKEY_UPD has nothing to invalidate between passes).
pub(crate) struct Pass<'a, M> {
    pub mem: &'a M,
    pub cxt: u16,
    pub counts: EngineCounters,
    pub kicks: Vec<u16>,
    pub akey: Option<(u16, AkeyEnt)>,
}

impl<'a, M: DmaMemory> Pass<'a, M> {
    pub fn new(mem: &'a M, cxt: u16) -> Self {
        Self {
            mem,
            cxt,
            counts: EngineCounters::default(),
            kicks: Vec::new(),
            akey: None,
        }
    }

    /// AKey `index` of the context (see [`akey`]), read once per pass.
    #[inline]
    fn akey(&mut self, cx: &Cxt, index: u16) -> Result<AkeyEnt, EngineError> {
        match self.akey {
            Some((i, a)) if i == index => Ok(a),
            _ => {
                let a = akey(self.mem, cx, index)?;
                self.akey = Some((index, a));
                Ok(a)
            }
        }
    }
}

impl<M: DmaMemory, P: Platform> Engine<M, P> {
    /// Executes one valid descriptor of context `p.cxt`.
    pub(crate) fn execute(
        &self,
        p: &mut Pass<'_, M>,
        cx: &Cxt,
        d: &Descriptor,
    ) -> Result<(), EngineError> {
        let h = d.header();
        if tracing::enabled!(target: "sdxi::descriptor", tracing::Level::TRACE) {
            tracing::trace!(target: "sdxi::descriptor", cxt = p.cxt, "{}", describe(d));
        }
        if matches!(h.ty(), DSC_TYPE_DMAB | DSC_TYPE_INTR) {
            self.injected_fault(&mut p.counts)?;
        }
        let bad = |what| Err(invalid(ErrClass::InvalidDescriptor, step::DESCRIPTOR, what));
        match (h.ty(), h.subtype()) {
            (DSC_TYPE_DMAB, DSC_DMAB_NOP) => {
                p.counts.descriptors.nop += 1;
                Ok(())
            }
            (DSC_TYPE_DMAB, DSC_DMAB_COPY) => {
                p.counts.descriptors.copy += 1;
                match d.view::<DscDmabCopy>() {
                    Some(c) => self.copy(p, cx, c),
                    None => bad("COPY layout"),
                }
            }
            (DSC_TYPE_INTR, DSC_INTR) => {
                p.counts.descriptors.intr += 1;
                let akey = d.view::<DscIntr>().map_or(u16::MAX, |i| i.akey.get());
                let a = p.akey(cx, akey)?;
                if !a.iv() {
                    return Err(invalid(
                        ErrClass::InvalidAkey,
                        step::INT,
                        "INTR through an AKey without an interrupt",
                    ));
                }
                self.raise(a.intr_num(), &mut p.counts);
                Ok(())
            }
            (DSC_TYPE_ADMIN, sub) if p.cxt == 0 => {
                p.counts.descriptors.admin += 1;
                self.admin(p, sub, d)
            }
            (DSC_TYPE_ADMIN, _) => bad("admin descriptor on a data context"),
            _ => bad("unknown descriptor type or subtype"),
        }
    }

    /// Decodes the run of small plain COPYs that `ds` starts with into `ops` (the first may
    /// be fenced, the others not); returns how many there are and the bytes they copy. The
    /// run stops before anything else: a descriptor of another kind, one the checks would
    /// refuse (it then runs alone and reports its error), a COPY longer than
    /// [`RUN_COPY_MAX`], and once it holds `budget` bytes (its first COPY is always taken).
    /// No run while descriptors are traced or a fault plan is armed: those go one by one
    /// through [`Self::execute`].
    pub(crate) fn copy_run(
        &self,
        p: &mut Pass<'_, M>,
        cx: &Cxt,
        ds: &[Descriptor],
        ops: &mut [CopyOp],
        budget: u64,
    ) -> (usize, u64) {
        if self.faults.armed()
            || tracing::enabled!(target: "sdxi::descriptor", tracing::Level::TRACE)
        {
            return (0, 0);
        }
        let (mut n, mut bytes) = (0, 0);
        for (d, op) in ds.iter().zip(ops.iter_mut()) {
            if n > 0 && bytes >= budget {
                break;
            }
            let h = d.header();
            if (n > 0 && h.fe()) || (h.ty(), h.subtype()) != (DSC_TYPE_DMAB, DSC_DMAB_COPY) {
                break;
            }
            let Some(c) = d.view::<DscDmabCopy>() else {
                break;
            };
            let len = u64::from(c.size.get()) + 1;
            let (src, dst) = (c.addr0.get(), c.addr1.get());
            // In range and not overlapping, as `copy` checks (else it runs alone and fails).
            let fits = len <= RUN_COPY_MAX
                && match (src.checked_add(len), dst.checked_add(len)) {
                    (Some(src_end), Some(dst_end)) => dst >= src_end || src >= dst_end,
                    _ => false,
                };
            if !fits || p.akey(cx, c.akey0.get()).is_err() || p.akey(cx, c.akey1.get()).is_err() {
                break;
            }
            *op = CopyOp { dst, src, len };
            (n, bytes) = (n + 1, bytes + len);
        }
        (n, bytes)
    }

    fn copy(&self, p: &mut Pass<'_, M>, cx: &Cxt, c: &DscDmabCopy) -> Result<(), EngineError> {
        p.akey(cx, c.akey0.get())?;
        p.akey(cx, c.akey1.get())?;
        let len = u64::from(c.size.get()) + 1;
        let (src, dst) = (c.addr0.get(), c.addr1.get());
        let (Some(src_end), Some(dst_end)) = (src.checked_add(len), dst.checked_add(len)) else {
            let f = Fault {
                addr: src.max(dst),
                len,
                write: false,
            };
            return Err(EngineError::Fault(f, step::DATA));
        };
        if src < dst_end && dst < src_end {
            return Err(invalid(
                ErrClass::Overlap,
                step::DATA,
                "COPY source and destination overlap",
            ));
        }
        self.platform
            .copy(p.mem, dst, src, len)
            .map_err(|f| EngineError::Fault(f, step::DATA))?;
        p.counts.bytes_copied += len;
        Ok(())
    }

    /// Raises `vector` (unless the fault plan drops or delays it).
    pub(crate) fn raise(&self, vector: u16, c: &mut EngineCounters) {
        let (drop, delay_us) = self.faults.next_interrupt();
        if drop {
            c.interrupts_dropped += 1;
            c.faults_injected += 1;
            tracing::trace!(target: "sdxi::interrupt", vector, injected = "dropped");
            return;
        }
        if delay_us > 0 {
            self.platform.delay(delay_us);
        }
        tracing::trace!(target: "sdxi::interrupt", vector);
        if self.platform.trigger(vector) {
            c.interrupts += 1;
        } else {
            c.interrupts_dropped += 1;
        }
    }

    /// Signals `n` completions to a CST_BLK: er first (if failed), then the signal
    /// decremented by `n` in one atomic step (the same as `n` decrements at once: software
    /// only ever sees a signal that counts every descriptor completed so far).
    pub(crate) fn complete(
        &self,
        mem: &M,
        c: &mut EngineCounters,
        csb: Option<u64>,
        n: u32,
        failed: bool,
    ) {
        let Some(a) = csb else {
            return;
        };
        tracing::trace!(target: "sdxi::completion", csb = format_args!("{a:#x}"), n, er = failed);
        if failed {
            let _ = mem.or_u32(a + 8, CST_FLAGS_ER);
        }
        match mem.subtract_u64(a, u64::from(n)) {
            Ok(_) => c.completions += u64::from(n),
            Err(f) => {
                // One report per completion, as if each had been signalled alone.
                for _ in 0..n {
                    let e = EngineError::Fault(f, step::COMPLETION);
                    self.log_error(mem, c, None, None, e, RE_INFORM);
                }
            }
        }
    }
}

/// A descriptor decoded by name and field, for traces.
pub fn describe(d: &Descriptor) -> String {
    let h = d.header();
    let flags = format!(
        "{}{}{}",
        if h.fe() { " fe" } else { "" },
        if h.se() { " se" } else { "" },
        if h.vl() { "" } else { " !vl" }
    );
    let csb = d.csb().map_or("none".to_owned(), |c| format!("{c:#x}"));
    match (h.ty(), h.subtype()) {
        (DSC_TYPE_DMAB, DSC_DMAB_COPY) => {
            let c: DscDmabCopy = d.as_type();
            format!(
                "DMAB.COPY{flags} src={:#x} dst={:#x} len={} akey0={} akey1={} csb={csb}",
                c.addr0.get(),
                c.addr1.get(),
                u64::from(c.size.get()) + 1,
                c.akey0.get(),
                c.akey1.get()
            )
        }
        (DSC_TYPE_DMAB, DSC_DMAB_NOP) => format!("DMAB.NOP{flags} csb={csb}"),
        (DSC_TYPE_INTR, DSC_INTR) => {
            let i: DscIntr = d.as_type();
            format!("INTR{flags} akey={} csb={csb}", i.akey.get())
        }
        (DSC_TYPE_ADMIN, sub) => {
            let s: DscCxtStart = d.as_type();
            let name = match sub {
                DSC_ADMIN_CXT_START_NM => "CXT_START_NM",
                DSC_ADMIN_CXT_START_RS => "CXT_START_RS",
                DSC_ADMIN_CXT_STOP => "CXT_STOP",
                DSC_ADMIN_SYNC => "SYNC",
                DSC_ADMIN_CXT_UPD => "CXT_UPD",
                DSC_ADMIN_AKEY_UPD => "AKEY_UPD",
                DSC_ADMIN_FN_UPD => "FN_UPD",
                _ => "unknown",
            };
            format!(
                "ADMIN.{name}{flags} cxt={}..={} db_value={} csb={csb}",
                s.cxt_start.get(),
                s.cxt_end.get(),
                s.db_value.get()
            )
        }
        (ty, sub) => format!("type={ty:#x} subtype={sub:#x}{flags} csb={csb}"),
    }
}
