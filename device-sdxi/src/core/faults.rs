//! Fault injection, to exercise drivers' error paths (a test facility, not part of SDXi): a
//! [`FaultPlan`] fails chosen data descriptors (COPY, NOP, INTR) with the full error reaction
//! of a chosen class, delays completions and interrupts, or drops one interrupt; and
//! [`Engine::stop_context`] stops a context the way a function-side fault would.
//!
//! The core only decides; the waiting itself is the platform's ([`Platform::delay`]). While no
//! plan is armed the per-descriptor check is one relaxed load.

use super::context::{set_state, CxtEvent};
use super::engine::{invalid, lock, Engine, EngineError, Platform};
use crate::mem::{step, ErrClass, RE_CONTEXT_STOPPED};
use crate::metrics::EngineCounters;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use vfio_device::dma::{DmaMemory, Fault};

/// Faults injected into data descriptors (COPY, NOP, INTR). A faulted descriptor is not
/// executed and gets the full error reaction of its class.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
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
struct Counts {
    plan: FaultPlan,
    seen: u64,
    interrupts: u64,
}

/// The plan and how far it has counted.
#[derive(Debug, Default)]
pub(crate) struct FaultState {
    /// Whether the plan does anything (else nothing is counted: counting restarts with a
    /// new plan anyway).
    armed: AtomicBool,
    counts: Mutex<Counts>,
}

impl FaultState {
    /// Whether a plan is in force (then every descriptor goes through its check).
    pub(crate) fn armed(&self) -> bool {
        self.armed.load(Ordering::Acquire)
    }

    fn set(&self, plan: FaultPlan) {
        let mut c = lock(&self.counts);
        self.armed
            .store(plan != FaultPlan::default(), Ordering::Release);
        *c = Counts {
            plan,
            seen: 0,
            interrupts: 0,
        };
    }

    /// Whether the next data descriptor is to fail, and its completion delay.
    fn next_descriptor(&self) -> (Option<ErrClass>, u64) {
        if !self.armed.load(Ordering::Acquire) {
            return (None, 0);
        }
        let mut f = lock(&self.counts);
        f.seen += 1;
        let n = f.seen;
        let p = &f.plan;
        let fail =
            p.fail_nth == Some(n) || p.fail_every.is_some_and(|e| e > 0 && n.is_multiple_of(e));
        (fail.then_some(p.class), p.delay_us)
    }

    /// Whether the next interrupt is dropped, and its delay.
    pub(crate) fn next_interrupt(&self) -> (bool, u64) {
        if !self.armed.load(Ordering::Acquire) {
            return (false, 0);
        }
        let mut f = lock(&self.counts);
        f.interrupts += 1;
        (
            f.plan.drop_interrupt_nth == Some(f.interrupts),
            f.plan.interrupt_delay_us,
        )
    }
}

impl<M: DmaMemory, P: Platform> Engine<M, P> {
    /// Replaces the fault plan (counting restarts).
    pub fn set_faults(&self, plan: FaultPlan) {
        self.faults.set(plan);
    }

    pub fn faults(&self) -> FaultPlan {
        lock(&self.faults.counts).plan.clone()
    }

    /// Applies the plan to the next data descriptor: its delay, and the error it is to fail
    /// with.
    pub(crate) fn injected_fault(&self, c: &mut EngineCounters) -> Result<(), EngineError> {
        let (fault, delay_us) = self.faults.next_descriptor();
        if delay_us > 0 {
            self.platform.delay(delay_us);
        }
        let Some(class) = fault else {
            return Ok(());
        };
        c.faults_injected += 1;
        Err(match class {
            ErrClass::AddressFault => EngineError::Fault(
                Fault {
                    addr: 0,
                    len: 0,
                    write: false,
                },
                step::DATA,
            ),
            c => invalid(c, step::DATA, "injected fault"),
        })
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
        let mut c = EngineCounters::default();
        let _ = set_state(&*mem, &cx, CxtEvent::FunctionStop);
        c.contexts_stopped += 1;
        c.faults_injected += 1;
        let e = invalid(
            ErrClass::InvalidContext,
            step::CXT_TABLE,
            "context stopped by fault injection",
        );
        self.log_error(&mem, &mut c, Some(cxt), None, e, RE_CONTEXT_STOPPED);
        self.merge(&c);
        true
    }
}
