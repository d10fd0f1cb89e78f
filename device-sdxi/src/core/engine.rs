//! The SDXi engine of one function: what it is made of, the register interface around the
//! function state machine, doorbells and reset (SDXi 1.0 §3-§6; the structure layouts as
//! AMD's Linux driver `drivers/dma/sdxi/hw.h` gives them). The parts of a pass are in the
//! sibling modules ([`super::ring`], [`super::execute`], [`super::admin`],
//! [`super::errlog`], [`super::context`]).
//!
//! One pass of a context is serialised by a per-context lock; different contexts run in
//! parallel on the transport's workers, which call [`Engine::process`] when a doorbell rings.
//!
//! Decisions (the spec text itself could not be quoted here; each is the reading that AMD's
//! public driver needs, in one place):
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

use super::faults::FaultState;
use super::function::{SdxiConfig, SdxiFunction};
use crate::mem::{CxtState, ErrClass};
use crate::metrics::EngineCounters;
use crate::regs::FnState;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use vfio_device::dma::{CopyOp, DmaMemory, Fault};
use vfio_device::dma_space::{thread_shard as shard, SHARDS};

/// Context state after a descriptor error.
pub const ERROR_STATE: CxtState = CxtState::ErrFn;

/// What the engine needs from the machine around it, provided by the transport: interrupts,
/// Bus Master Enable, time, and the way a COPY's bytes are moved. The core itself never
/// sleeps and never starts a thread.
pub trait Platform: Send + Sync {
    /// Signals MSI-X `vector`; false when it could not be delivered (masked, bus mastering off).
    fn trigger(&self, vector: u16) -> bool;
    /// PCI Command.Bus Master Enable: while clear the engine does no DMA at all.
    fn bus_master(&self) -> bool {
        true
    }
    /// Waits `us` microseconds: the completion and interrupt delays a fault plan asks for.
    /// The default does not wait (tests, benchmarks, fuzzing).
    fn delay(&self, us: u64) {
        let _ = us;
    }
    /// Copies `len` bytes from `src` to `dst` (checked not to overlap). The server's platform
    /// splits large copies over threads.
    fn copy<M: DmaMemory>(&self, mem: &M, dst: u64, src: u64, len: u64) -> Result<(), Fault> {
        mem.copy(dst, src, len)
    }
    /// Copies a run of small COPYs in order (see [`DmaMemory::copy_all`]): the index of the
    /// one that faulted, and its fault.
    fn copy_all<M: DmaMemory>(&self, mem: &M, ops: &[CopyOp]) -> Result<(), (usize, Fault)> {
        mem.copy_all(ops)
    }
}

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
    Fault(#[source] Fault, u8),
}

impl EngineError {
    pub fn class(&self) -> ErrClass {
        match self {
            Self::Invalid { class, .. } => *class,
            Self::Fault(..) => ErrClass::AddressFault,
        }
    }
    pub fn step(&self) -> u8 {
        match self {
            Self::Invalid { step, .. } | Self::Fault(_, step) => *step,
        }
    }
}

pub(crate) fn invalid(class: ErrClass, step: u8, what: &'static str) -> EngineError {
    EngineError::Invalid { class, step, what }
}

/// Tunables of the engine.
#[derive(Debug, Default)]
pub struct EngineOptions {
    /// Complete the descriptors between two fences in reverse order (tests drivers'
    /// handling of out-of-order completion).
    pub force_out_of_order: AtomicBool,
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

    pub(crate) fn call(&self, cxt: u16) {
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

/// A counter shard: a thread adds what it counted into its own shard (a pass merges once, at
/// its end); a read sums them. A thread's shard is the one it has in the DMA space
/// ([`vfio_device::dma_space::thread_shard`]).
#[repr(align(128))]
#[derive(Debug, Default)]
struct Shard(Mutex<EngineCounters>);

/// The SDXi engine of one function.
#[derive(Debug)]
pub struct Engine<M, P> {
    pub(crate) config: SdxiConfig,
    pub(crate) regs: Mutex<SdxiFunction>,
    mem: RwLock<Option<Arc<M>>>,
    pub(crate) platform: P,
    pub(crate) busy: Vec<Mutex<()>>,
    /// Bumped by every reset; a pass started before it stops at its next descriptor.
    pub(crate) generation: AtomicU64,
    pub(crate) faults: FaultState,
    counters: [Shard; SHARDS],
    pub options: EngineOptions,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl<M: DmaMemory, P: Platform> Engine<M, P> {
    pub fn new(config: SdxiConfig, platform: P, options: EngineOptions) -> Self {
        let n = usize::from(config.max_cxt) + 1;
        Self {
            regs: Mutex::new(SdxiFunction::new(config.clone())),
            config,
            mem: RwLock::new(None),
            platform,
            busy: (0..n).map(|_| Mutex::new(())).collect(),
            generation: AtomicU64::new(0),
            faults: FaultState::default(),
            counters: Default::default(),
            options,
        }
    }

    pub fn options(&self) -> &EngineOptions {
        &self.options
    }

    pub fn platform(&self) -> &P {
        &self.platform
    }

    /// The function's capabilities (fixed at creation).
    pub fn config(&self) -> &SdxiConfig {
        &self.config
    }

    /// The engine's counters: every shard summed.
    pub fn counters(&self) -> EngineCounters {
        let mut sum = EngineCounters::default();
        for s in &self.counters {
            sum.add(&lock(&s.0));
        }
        sum
    }

    /// Adds `c` into this thread's counter shard.
    pub(crate) fn merge(&self, c: &EngineCounters) {
        if !c.is_zero() {
            lock(&self.counters[shard()].0).add(c);
        }
    }

    /// Counts one event outside a pass.
    pub(crate) fn count(&self, f: impl FnOnce(&mut EngineCounters)) {
        f(&mut lock(&self.counters[shard()].0));
    }

    /// Replaces the guest memory the engine works on (DMA map/unmap).
    pub fn set_memory(&self, mem: Option<Arc<M>>) {
        *self
            .mem
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = mem;
    }

    pub(crate) fn memory(&self) -> Option<Arc<M>> {
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
        self.count(|c| c.doorbells += 1);
        usize::from(cxt) < self.busy.len() && lock(&self.regs).state() == FnState::Active
    }
}
