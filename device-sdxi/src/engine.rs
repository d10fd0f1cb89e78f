//! The SDXi engine core: context tables, descriptor rings, admin and data descriptors,
//! completions, interrupts and the error log (SDXi 1.0 §3-§6; the register and structure
//! layouts as AMD's Linux driver `drivers/dma/sdxi/hw.h` gives them).
//!
//! No I/O: generic over guest memory ([`DmaMemory`]) and interrupts ([`Irq`]); the transport
//! owns sockets and threads and calls [`Engine::process`] for a context when its doorbell
//! rings. One pass of a context is serialised by a per-context lock; different contexts run
//! in parallel on the transport's workers.
//!
//! The ring walk (not-yet-valid slots, vl cleared on consumption) and its evidence are in
//! `ring_walk.rs`.
//!
//! Other decisions (the spec text itself could not be quoted here; each is the reading that
//! AMD's public driver needs, in one place):
//! - a descriptor error stops its context: CXT_STS.state = ERR_FN ([`ERROR_STATE`]), the
//!   CST_BLK gets `er`, an ERRLOG_HD_ENT is written with reaction "context stopped". Only that
//!   context stops; the function stays ACTIVE and other contexts keep running. A driver
//!   without error handling (AMD's v3) recovers by releasing and reallocating the channel:
//!   CXT_STOP and SYNC(STOP) complete on an errored context and leave it STOP_SW, and the next
//!   CXT_START_NM starts the re-published context from its fresh ring; CXT_START_RS resumes
//!   it in place; a function reset (GSR=RESET, or module reload) clears everything;
//! - a doorbell for a context that is not RUN (never started, stopped, errored) is ignored:
//!   nothing past CXT_STS is read, nothing is logged (counted as `doorbells_not_running`);
//!   a doorbell for a context without a valid table entry is logged as InvalidContext with
//!   reaction "inform" (there is nothing to stop);
//! - COPY with overlapping source and destination is an error (spec §5.6 leaves it undefined;
//!   the Linux driver never submits it);
//! - a doorbell is a hint: the write index is always read from memory;
//! - SYNC completes once every context in its range has finished its current pass;
//! - CXT_UPD / AKEY_UPD / FN_UPD succeed at once (nothing is cached between passes).
//!
//! Left out: RKeys, PASIDs, atomics and the 2022 prototype's extra descriptor types (they are
//! reported as invalid descriptors).

use crate::function::{SdxiConfig, SdxiFunction};
use crate::mem::*;
use crate::regs::{self, CxtL2, ErrCfg, ErrCtl, ErrSts, FnState};
use serde::Serialize;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use tracing::{debug, warn};
use vfio_device::dma::{DmaMemory, Fault};
use zerocopy::{FromBytes, IntoBytes};

/// Context state after a descriptor error.
pub const ERROR_STATE: CxtState = CxtState::ErrFn;

/// Signals an MSI-X vector.
pub trait Irq: Send + Sync {
    /// Returns false when the interrupt could not be delivered (masked, bus mastering off).
    fn trigger(&self, vector: u16) -> bool;
    /// PCI Command.Bus Master Enable: while clear the engine does no DMA at all.
    fn bus_master(&self) -> bool {
        true
    }
}

pub use crate::mem::{step, ErrClass, ERR_CLASSES, RE_CONTEXT_STOPPED, RE_INFORM};

/// Why a descriptor or context failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    #[error("{what}")]
    Invalid {
        class: ErrClass,
        step: u8,
        what: &'static str,
    },
    #[error("{0}")]
    Fault(Fault, u8),
}

impl EngineError {
    fn class(&self) -> ErrClass {
        match self {
            Self::Invalid { class, .. } => *class,
            Self::Fault(..) => ErrClass::AddressFault,
        }
    }
    fn step(&self) -> u8 {
        match self {
            Self::Invalid { step, .. } | Self::Fault(_, step) => *step,
        }
    }
}

fn invalid(class: ErrClass, step: u8, what: &'static str) -> EngineError {
    EngineError::Invalid { class, step, what }
}

/// Engine counters.
#[derive(Debug, Default)]
pub struct EngineCounters {
    pub doorbells: AtomicU64,
    pub passes: AtomicU64,
    /// Passes refused because Bus Master Enable was clear.
    pub passes_without_bus_master: AtomicU64,
    /// Passes that stopped at a slot below the write index whose vl was still clear.
    pub not_yet_valid: AtomicU64,
    /// Passes for a context whose state was not RUN (ignored, nothing logged).
    pub doorbells_not_running: AtomicU64,
    pub dsc_nop: AtomicU64,
    pub dsc_copy: AtomicU64,
    pub dsc_intr: AtomicU64,
    pub dsc_admin: AtomicU64,
    pub bytes_copied: AtomicU64,
    pub completions: AtomicU64,
    pub interrupts: AtomicU64,
    pub interrupts_dropped: AtomicU64,
    pub errors: [AtomicU64; 6],
    pub errlog_entries: AtomicU64,
    pub errlog_overflows: AtomicU64,
    pub faults_injected: AtomicU64,
    pub contexts_started: AtomicU64,
    pub contexts_stopped: AtomicU64,
}

impl EngineCounters {
    pub fn json(&self) -> serde_json::Value {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let errors: serde_json::Map<String, serde_json::Value> = ERR_CLASSES
            .iter()
            .zip(&self.errors)
            .map(|(c, n)| (format!("{c:?}"), g(n).into()))
            .collect();
        serde_json::json!({
            "doorbells": g(&self.doorbells),
            "passes": g(&self.passes),
            "passes_without_bus_master": g(&self.passes_without_bus_master),
            "not_yet_valid": g(&self.not_yet_valid),
            "doorbells_not_running": g(&self.doorbells_not_running),
            "descriptors": { "nop": g(&self.dsc_nop), "copy": g(&self.dsc_copy), "intr": g(&self.dsc_intr), "admin": g(&self.dsc_admin) },
            "bytes_copied": g(&self.bytes_copied),
            "completions": g(&self.completions),
            "interrupts": g(&self.interrupts),
            "interrupts_dropped": g(&self.interrupts_dropped),
            "errors": errors,
            "errlog_entries": g(&self.errlog_entries),
            "errlog_overflows": g(&self.errlog_overflows),
            "faults_injected": g(&self.faults_injected),
            "contexts_started": g(&self.contexts_started),
            "contexts_stopped": g(&self.contexts_stopped),
        })
    }

    pub fn error_count(&self, c: ErrClass) -> u64 {
        self.errors[c as usize - 1].load(Ordering::Relaxed)
    }
}

/// Faults injected into data descriptors (COPY, NOP, INTR), to exercise drivers' error paths.
/// A faulted descriptor is not executed and gets the full error reaction of its class.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FaultPlan {
    /// Fail the Nth data descriptor counted from when the plan is set (1 = the next one).
    pub fail_nth: Option<u64>,
    /// Fail every Nth data descriptor.
    pub fail_every: Option<u64>,
    /// The error class reported for an injected fault.
    pub class: ErrClass,
    /// Delay every completion by this many microseconds.
    pub delay_us: u64,
    /// Drop the Nth interrupt counted from when the plan is set (1 = the next one).
    pub drop_interrupt_nth: Option<u64>,
    /// Delay every interrupt by this many microseconds.
    pub interrupt_delay_us: u64,
}

impl Default for FaultPlan {
    fn default() -> Self {
        Self {
            fail_nth: None,
            fail_every: None,
            class: ErrClass::AddressFault,
            delay_us: 0,
            drop_interrupt_nth: None,
            interrupt_delay_us: 0,
        }
    }
}

#[derive(Debug, Default)]
struct FaultState {
    plan: FaultPlan,
    seen: u64,
    interrupts: u64,
}

/// Tunables of the engine.
#[derive(Debug)]
pub struct EngineOptions {
    /// Complete the descriptors between two fences in reverse order (tests drivers'
    /// handling of out-of-order completion).
    pub force_out_of_order: AtomicBool,
    /// Threads one large COPY is split over.
    pub copy_threads: usize,
    /// COPYs at least this long are split.
    pub split_copy_min: u64,
    /// Called for each context CXT_START starts, before the start completes (the transport
    /// forgets the context's last doorbell value: a re-initialised context rings from 1 again).
    pub on_context_start: StartHook,
}

/// A callback the transport installs once.
#[derive(Default)]
pub struct StartHook(std::sync::OnceLock<Box<dyn Fn(u16) + Send + Sync>>);

impl StartHook {
    pub fn set(&self, f: impl Fn(u16) + Send + Sync + 'static) {
        let _ = self.0.set(Box::new(f));
    }

    fn call(&self, cxt: u16) {
        if let Some(f) = self.0.get() {
            f(cxt);
        }
    }
}

impl std::fmt::Debug for StartHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.get().is_some() {
            "StartHook(set)"
        } else {
            "StartHook(none)"
        })
    }
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            force_out_of_order: AtomicBool::new(false),
            copy_threads: 1,
            split_copy_min: 8 << 20,
            on_context_start: StartHook::default(),
        }
    }
}

/// A context as its tables describe it.
#[derive(Clone, Copy, Debug)]
struct Cxt {
    ring: u64,
    entries: u64,
    sts: u64,
    write_index: u64,
    akey_table: u64,
    akey_entries: u32,
}

/// The SDXi engine of one function.
#[derive(Debug)]
pub struct Engine<M, I> {
    config: SdxiConfig,
    regs: Mutex<SdxiFunction>,
    mem: RwLock<Option<Arc<M>>>,
    irq: I,
    busy: Vec<Mutex<()>>,
    /// Bumped by every reset; a pass started before it stops at its next descriptor.
    generation: AtomicU64,
    faults: Mutex<FaultState>,
    pub counters: EngineCounters,
    pub options: EngineOptions,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl<M: DmaMemory, I: Irq> Engine<M, I> {
    pub fn new(config: SdxiConfig, irq: I, options: EngineOptions) -> Self {
        let n = usize::from(config.max_cxt) + 1;
        Self {
            regs: Mutex::new(SdxiFunction::new(config.clone())),
            config,
            mem: RwLock::new(None),
            irq,
            busy: (0..n).map(|_| Mutex::new(())).collect(),
            generation: AtomicU64::new(0),
            faults: Mutex::new(FaultState::default()),
            counters: EngineCounters::default(),
            options,
        }
    }

    pub fn options(&self) -> &EngineOptions {
        &self.options
    }

    /// Replaces the fault plan (counting restarts).
    pub fn set_faults(&self, plan: FaultPlan) {
        *lock(&self.faults) = FaultState {
            plan,
            seen: 0,
            interrupts: 0,
        };
    }

    pub fn faults(&self) -> FaultPlan {
        lock(&self.faults).plan.clone()
    }

    /// Stops context `cxt` as a function-side fault would: CXT_STS.state = STOP_FN, an error-log
    /// entry (invalid context, reaction "context stopped"). Returns false when it has no valid
    /// table entry.
    pub fn stop_context(&self, cxt: u16) -> bool {
        let Some(busy) = self.busy.get(usize::from(cxt)) else {
            return false;
        };
        let _pass = lock(busy);
        let Some(mem) = self.memory() else {
            return false;
        };
        let Ok(cx) = self.load(&mem, cxt) else {
            return false;
        };
        let _ = Self::set_cxt_state(&mem, cx.sts, CxtState::StopFn);
        self.counters
            .contexts_stopped
            .fetch_add(1, Ordering::Relaxed);
        self.counters
            .faults_injected
            .fetch_add(1, Ordering::Relaxed);
        let e = invalid(
            ErrClass::InvalidContext,
            step::CXT_TABLE,
            "context stopped by fault injection",
        );
        self.log_error(&mem, Some(cxt), None, e, RE_CONTEXT_STOPPED);
        true
    }

    /// Whether the next data descriptor is to fail, and the completion delay.
    fn fault_for_next(&self) -> (Option<ErrClass>, u64) {
        let mut f = lock(&self.faults);
        f.seen += 1;
        let n = f.seen;
        let p = &f.plan;
        let fail =
            p.fail_nth == Some(n) || p.fail_every.is_some_and(|e| e > 0 && n.is_multiple_of(e));
        (fail.then_some(p.class), p.delay_us)
    }

    /// The function's capabilities (fixed at creation).
    pub fn config(&self) -> &SdxiConfig {
        &self.config
    }

    /// Replaces the guest memory the engine works on (DMA map/unmap).
    pub fn set_memory(&self, mem: Option<Arc<M>>) {
        *self
            .mem
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = mem;
    }

    fn memory(&self) -> Option<Arc<M>> {
        self.mem
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    pub fn registers(&self) -> MutexGuard<'_, SdxiFunction> {
        lock(&self.regs)
    }

    pub fn mmio_read(&self, offset: u64, data: &mut [u8]) {
        lock(&self.regs).mmio_read(offset, data);
    }

    pub fn mmio_write(&self, offset: u64, data: &[u8]) {
        lock(&self.regs).mmio_write(offset, data);
    }

    /// Function-level reset: waits for passes in flight, then restores the registers.
    pub fn reset(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        let _all: Vec<_> = self.busy.iter().map(lock).collect();
        lock(&self.regs).reset();
    }

    /// A doorbell write to context `cxt`'s page: returns whether the context should be
    /// processed (the value itself is only a hint).
    pub fn doorbell(&self, cxt: u16) -> bool {
        self.counters.doorbells.fetch_add(1, Ordering::Relaxed);
        usize::from(cxt) < self.busy.len() && lock(&self.regs).state() == FnState::Active
    }

    fn read_obj<T: FromBytes>(mem: &M, addr: u64, step: u8) -> Result<T, EngineError> {
        let mut buf = [0u8; 64];
        let n = std::mem::size_of::<T>();
        mem.read(addr, &mut buf[..n])
            .map_err(|f| EngineError::Fault(f, step))?;
        T::read_from_bytes(&buf[..n])
            .map_err(|_| invalid(ErrClass::InvalidDescriptor, step, "short read"))
    }

    fn read_u64(mem: &M, addr: u64, step: u8) -> Result<u64, EngineError> {
        let mut b = [0u8; 8];
        mem.read(addr, &mut b)
            .map_err(|f| EngineError::Fault(f, step))?;
        Ok(u64::from_le_bytes(b))
    }

    /// Walks L2 -> L1 -> CXT_CTL for `cxt`.
    fn load(&self, mem: &M, cxt: u16) -> Result<Cxt, EngineError> {
        let l2_base = CxtL2::from(lock(&self.regs).reg(regs::MMIO_CXT_L2)).ptr() << 12;
        let bad = |what| invalid(ErrClass::InvalidContext, step::CXT_TABLE, what);
        let (i2, i1) = table_indices(cxt);
        let l2: CxtL2Ent = Self::read_obj(
            mem,
            l2_base.wrapping_add(u64::from(i2) * 8),
            step::CXT_TABLE,
        )?;
        if !l2.vl() {
            return Err(bad("level-2 entry not valid"));
        }
        let l1: CxtL1Ent = Self::read_obj(
            mem,
            l2.ptr().wrapping_add(u64::from(i1) * 32),
            step::CXT_TABLE,
        )?;
        if !l1.vl() {
            return Err(bad("level-1 entry not valid"));
        }
        let ctl: CxtCtl = Self::read_obj(mem, l1.cxt_ctl(), step::CXT_TABLE)?;
        if !ctl.vl() {
            return Err(bad("CXT_CTL not valid"));
        }
        let entries = u64::from(ctl.ds_ring_sz.get());
        let max = 1024u64 << self.config().max_ds_ring_sz.min(20);
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

    fn set_cxt_state(mem: &M, sts: u64, s: CxtState) -> Result<(), EngineError> {
        mem.write(sts, &(s as u32).to_le_bytes())
            .map_err(|f| EngineError::Fault(f, step::CXT_TABLE))
    }

    fn akey(&self, mem: &M, cx: &Cxt, index: u16) -> Result<AkeyEnt, EngineError> {
        if u32::from(index) >= cx.akey_entries {
            return Err(invalid(
                ErrClass::InvalidAkey,
                step::AKEY,
                "AKey index beyond the table",
            ));
        }
        let a: AkeyEnt = Self::read_obj(
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

    fn raise(&self, vector: u16) {
        let (drop, delay_us) = {
            let mut f = lock(&self.faults);
            f.interrupts += 1;
            (
                f.plan.drop_interrupt_nth == Some(f.interrupts),
                f.plan.interrupt_delay_us,
            )
        };
        if drop {
            self.counters
                .interrupts_dropped
                .fetch_add(1, Ordering::Relaxed);
            self.counters
                .faults_injected
                .fetch_add(1, Ordering::Relaxed);
            tracing::trace!(target: "sdxi::interrupt", vector, injected = "dropped");
            return;
        }
        if delay_us > 0 {
            std::thread::sleep(std::time::Duration::from_micros(delay_us));
        }
        tracing::trace!(target: "sdxi::interrupt", vector);
        if self.irq.trigger(vector) {
            self.counters.interrupts.fetch_add(1, Ordering::Relaxed);
        } else {
            self.counters
                .interrupts_dropped
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Signals a CST_BLK: er first (if failed), then the signal decrement.
    fn complete(&self, mem: &M, csb: Option<u64>, failed: bool) {
        let Some(a) = csb else {
            return;
        };
        tracing::trace!(target: "sdxi::completion", csb = format_args!("{a:#x}"), er = failed);
        if failed {
            let _ = mem.or_u32(a + 8, CST_FLAGS_ER);
        }
        match mem.decrement_u64(a) {
            Ok(_) => {
                self.counters.completions.fetch_add(1, Ordering::Relaxed);
            }
            Err(f) => {
                let e = EngineError::Fault(f, step::COMPLETION);
                self.log_error(mem, None, None, e, RE_INFORM);
            }
        }
    }

    fn execute(
        &self,
        mem: &M,
        cxt: u16,
        cx: &Cxt,
        d: &Descriptor,
        kicks: &mut Vec<u16>,
    ) -> Result<(), EngineError> {
        let h = d.header();
        if tracing::enabled!(target: "sdxi::descriptor", tracing::Level::TRACE) {
            tracing::trace!(target: "sdxi::descriptor", cxt, "{}", describe(d));
        }
        if matches!(h.ty(), DSC_TYPE_DMAB | DSC_TYPE_INTR) {
            let (fault, delay_us) = self.fault_for_next();
            if delay_us > 0 {
                std::thread::sleep(std::time::Duration::from_micros(delay_us));
            }
            if let Some(class) = fault {
                self.counters
                    .faults_injected
                    .fetch_add(1, Ordering::Relaxed);
                return Err(match class {
                    ErrClass::AddressFault => EngineError::Fault(
                        Fault {
                            addr: 0,
                            len: 0,
                            write: false,
                        },
                        step::DATA,
                    ),
                    c => invalid(c, step::DATA, "injected fault"),
                });
            }
        }
        let bad = |what| Err(invalid(ErrClass::InvalidDescriptor, step::DESCRIPTOR, what));
        match (h.ty(), h.subtype()) {
            (DSC_TYPE_DMAB, DSC_DMAB_NOP) => {
                self.counters.dsc_nop.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            (DSC_TYPE_DMAB, DSC_DMAB_COPY) => {
                self.counters.dsc_copy.fetch_add(1, Ordering::Relaxed);
                let c: DscDmabCopy = d.as_type();
                self.copy(mem, cx, &c)
            }
            (DSC_TYPE_INTR, DSC_INTR) => {
                self.counters.dsc_intr.fetch_add(1, Ordering::Relaxed);
                let i: DscIntr = d.as_type();
                let a = self.akey(mem, cx, i.akey.get())?;
                if !a.iv() {
                    return Err(invalid(
                        ErrClass::InvalidAkey,
                        step::INT,
                        "INTR through an AKey without an interrupt",
                    ));
                }
                self.raise(a.intr_num());
                Ok(())
            }
            (DSC_TYPE_ADMIN, sub) if cxt == 0 => {
                self.counters.dsc_admin.fetch_add(1, Ordering::Relaxed);
                self.admin(mem, sub, d, kicks)
            }
            (DSC_TYPE_ADMIN, _) => bad("admin descriptor on a data context"),
            _ => bad("unknown descriptor type or subtype"),
        }
    }

    fn copy(&self, mem: &M, cx: &Cxt, c: &DscDmabCopy) -> Result<(), EngineError> {
        self.akey(mem, cx, c.akey0.get())?;
        self.akey(mem, cx, c.akey1.get())?;
        let len = u64::from(c.size.get()) + 1;
        let (src, dst) = (c.addr0.get(), c.addr1.get());
        let (src_end, dst_end) = match (src.checked_add(len), dst.checked_add(len)) {
            (Some(a), Some(b)) => (a, b),
            _ => {
                return Err(EngineError::Fault(
                    Fault {
                        addr: src.max(dst),
                        len,
                        write: false,
                    },
                    step::DATA,
                ))
            }
        };
        if src < dst_end && dst < src_end {
            return Err(invalid(
                ErrClass::Overlap,
                step::DATA,
                "COPY source and destination overlap",
            ));
        }
        let fault = |f| EngineError::Fault(f, step::DATA);
        let threads = self.options.copy_threads.max(1) as u64;
        if threads > 1 && len >= self.options.split_copy_min {
            mem.check(src, len, false).map_err(fault)?;
            mem.check(dst, len, true).map_err(fault)?;
            let part = len.div_ceil(threads).next_multiple_of(4096);
            let results: Vec<Result<(), Fault>> = std::thread::scope(|s| {
                let handles: Vec<_> = (0..threads)
                    .map(|i| i * part)
                    .filter(|off| *off < len)
                    .map(|off| s.spawn(move || mem.copy(dst + off, src + off, part.min(len - off))))
                    .collect();
                handles
                    .into_iter()
                    .map(|h| {
                        h.join().unwrap_or(Err(Fault {
                            addr: src,
                            len,
                            write: false,
                        }))
                    })
                    .collect()
            });
            results
                .into_iter()
                .collect::<Result<(), Fault>>()
                .map_err(fault)?;
        } else {
            mem.copy(dst, src, len).map_err(fault)?;
        }
        self.counters.bytes_copied.fetch_add(len, Ordering::Relaxed);
        Ok(())
    }

    fn admin(
        &self,
        mem: &M,
        sub: u8,
        d: &Descriptor,
        kicks: &mut Vec<u16>,
    ) -> Result<(), EngineError> {
        let max = self.busy.len() as u16 - 1;
        let range = |start: u16, end: u16| -> Result<std::ops::RangeInclusive<u16>, EngineError> {
            if start == 0 || start > end || end > max {
                return Err(invalid(
                    ErrClass::InvalidContext,
                    step::DESCRIPTOR,
                    "context range empty, includes 0 or exceeds max_cxt",
                ));
            }
            Ok(start..=end)
        };
        match sub {
            DSC_ADMIN_CXT_START_NM | DSC_ADMIN_CXT_START_RS => {
                let s: DscCxtStart = d.as_type();
                for id in range(s.cxt_start.get(), s.cxt_end.get())? {
                    let cx = self.load(mem, id)?;
                    self.options.on_context_start.call(id);
                    Self::set_cxt_state(mem, cx.sts, CxtState::Run)?;
                    self.counters
                        .contexts_started
                        .fetch_add(1, Ordering::Relaxed);
                    debug!(cxt = id, "context started");
                    kicks.push(id);
                }
                Ok(())
            }
            DSC_ADMIN_CXT_STOP => {
                let s: DscCxtStart = d.as_type();
                for id in range(s.cxt_start.get(), s.cxt_end.get())? {
                    // Waits for the context's pass in flight; then it stays stopped.
                    let _pass = lock(&self.busy[usize::from(id)]);
                    let cx = self.load(mem, id)?;
                    Self::set_cxt_state(mem, cx.sts, CxtState::StopSw)?;
                    self.counters
                        .contexts_stopped
                        .fetch_add(1, Ordering::Relaxed);
                }
                Ok(())
            }
            DSC_ADMIN_SYNC => {
                let s: DscSync = d.as_type();
                let (a, b) = (s.cxt_start.get().max(1), s.cxt_end.get().min(max));
                for id in a..=b {
                    drop(lock(&self.busy[usize::from(id)]));
                }
                Ok(())
            }
            DSC_ADMIN_CXT_UPD | DSC_ADMIN_AKEY_UPD | DSC_ADMIN_FN_UPD => Ok(()),
            _ => Err(invalid(
                ErrClass::InvalidDescriptor,
                step::DESCRIPTOR,
                "unknown admin subtype",
            )),
        }
    }

    /// Records an error: counter, ERRLOG_HD_ENT (when the log is enabled), ERR_STS, vector 0.
    pub fn log_error(&self, mem: &M, cxt: Option<u16>, index: Option<u64>, e: EngineError, re: u8) {
        let class = e.class();
        self.counters.errors[class as usize - 1].fetch_add(1, Ordering::Relaxed);
        tracing::trace!(target: "sdxi::errlog", ?cxt, ?index, ?class, step = e.step(), re, error = %e);
        warn!(?cxt, ?index, ?class, error = %e, "SDXi error");
        let mut regs = lock(&self.regs);
        let cfg = ErrCfg::from(regs.reg(regs::MMIO_ERR_CFG));
        if !cfg.en() {
            return;
        }
        let entries = errlog_entries(cfg.sz());
        let (wrt, rd) = (regs.reg(regs::MMIO_ERR_WRT), regs.reg(regs::MMIO_ERR_RD));
        let mut sts = ErrSts::from(regs.reg(regs::MMIO_ERR_STS));
        if wrt.wrapping_sub(rd) >= entries {
            self.counters
                .errlog_overflows
                .fetch_add(1, Ordering::Relaxed);
            sts.set_ovf(true);
        } else {
            let hdr = ErrlogHdr::new()
                .with_vl(true)
                .with_step(e.step())
                .with_ty(ERRLOG_TYPE as u16)
                .with_cv(cxt.is_some())
                .with_div(index.is_some())
                .with_re(re)
                .with_cxt_num(cxt.unwrap_or(0));
            let ent = ErrlogHdEnt {
                hdr: u64::from(hdr).into(),
                dsc_index: index.unwrap_or(0).into(),
                err_class: (class as u16).into(),
                ..Default::default()
            };
            let addr = (cfg.ptr() << 12).wrapping_add((wrt % entries) * 64);
            if mem.write(addr, ent.as_bytes()).is_ok() {
                regs.device_set(regs::MMIO_ERR_WRT, wrt + 1);
                self.counters.errlog_entries.fetch_add(1, Ordering::Relaxed);
                sts.set_sts(true);
            } else {
                sts.set_err(true);
            }
        }
        regs.device_set(regs::MMIO_ERR_STS, sts.into());
        let intr = ErrCtl::from(regs.reg(regs::MMIO_ERR_CTL)).en()
            && regs::Ctl0::from(regs.reg(regs::MMIO_CTL0)).fn_err_intr_en();
        drop(regs);
        if intr {
            self.raise(0);
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

#[path = "ring_walk.rs"]
mod ring_walk;

#[cfg(test)]
#[path = "engine_tests.rs"]
mod tests;
