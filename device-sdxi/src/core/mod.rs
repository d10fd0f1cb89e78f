//! The SDXi function core: the register file and function state machine ([`function`]) and
//! the engine that walks contexts and runs their descriptors ([`engine`]).
//!
//! No I/O, no threads, no sleeps: the core is generic over guest memory
//! ([`vfio_device::dma::DmaMemory`]) and over its [`Platform`] (interrupts, Bus Master Enable,
//! the delays fault injection asks for, and how a large COPY is carried out), which the
//! transport provides. Its counters are the plain [`crate::metrics::EngineCounters`].
//!
//! The engine is split the way SDXi 1.0 names the parts of a function:
//! - [`context`]: the context-level tables (L2 -> L1 -> CXT_CTL, AKEY_ENT, CXT_STS state);
//! - [`ring`]: one pass of a context over its descriptor ring (§"Descriptor Ring Operation");
//! - [`execute`]: data descriptors (DMAB NOP/COPY, IntrGrp INTR) and completion (CST_BLK);
//! - [`admin`]: the admin group on context 0 (CXT_START_NM/RS, CXT_STOP, SYNC, *_UPD);
//! - [`errlog`]: the function's error log (ERRLOG_HD_ENT, ERR_* registers, vector 0);
//! - [`faults`]: fault injection (a test facility, not part of the spec).

pub mod admin;
pub mod context;
pub mod engine;
pub mod errlog;
pub mod execute;
pub mod faults;
pub mod function;
pub mod ring;

pub use engine::{Engine, EngineError, EngineOptions, Platform, StartHook};
pub use faults::FaultPlan;
pub use function::{SdxiConfig, SdxiFunction};

#[cfg(test)]
mod engine_tests;
