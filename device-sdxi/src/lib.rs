//! An SNIA SDXi 1.0 DMA engine emulated as a PCI function served over vfio-user.
//!
//! Read it in layers, each depending only on the ones before it:
//! - [`spec`]: what SDXi 1.0 defines, shared with the guest driver: the BAR0 register table
//!   ([`regs`]) and the in-memory structures ([`mem`]: context tables, descriptors, completion
//!   blocks, error-log entries). Re-exported at the crate root as `regs` and `mem`.
//! - [`metrics`]: every counter of the function in one serde struct (plain data).
//! - [`core`] (feature `engine`): the function state machine and the engine (context walk,
//!   descriptor execution, admin commands, error log); no I/O, no threads, no sleeps.
//! - [`transport`] (feature `engine`; the vfio-user device with feature `server`): the PCI
//!   identity, BAR routing, worker threads, the mapped doorbell page, and the engine's
//!   platform (interrupts, delays, split copies).
//! - [`driver`]: the driver side of the spec's protocols, shared by the device's tests and the
//!   guest agent.
//!
//! The PCI configuration space, the vfio-user server loop, the DMA map table and the server
//! binary's plumbing are device-neutral and come from the `vfio-device` crate. Without default
//! features this crate is the spec layer only (`regs`, `mem`, `metrics`, `driver`): what a
//! guest driver needs, no engine.
//!
//! Threat model: the guest is untrusted. Every register access is width/alignment checked,
//! unknown offsets read 0, and nothing the guest writes can panic the server.

#[cfg(feature = "engine")]
pub mod core;
pub mod driver;
#[cfg(feature = "engine")]
#[doc(hidden)]
pub mod fuzzing;
pub mod metrics;
pub mod spec;
#[cfg(feature = "engine")]
pub mod transport;

pub use spec::{mem, regs};

/// The path the harness uses for [`regs::SdxiConfig`].
#[cfg(feature = "engine")]
pub use crate::core::function;
