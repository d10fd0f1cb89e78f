//! An SNIA SDXi 1.0 DMA engine emulated as a PCI function served over vfio-user.
//!
//! - [`regs`]: the BAR0 register map (shared with the guest driver).
//! - [`mem`]: the in-memory structures (context tables, descriptors, completion blocks).
//! - [`driver`]: the driver side of the spec's protocols, shared by the device's tests and the
//!   guest agent.
//! - [`function`] (feature `engine`): the register file and function state machine; no I/O.
//! - [`engine`], [`workers`] (feature `engine`): context passes over guest memory.
//! - [`device`] (feature `engine`): the SDXi function's PCI identity and BAR routing; with
//!   feature `server` also its vfio-user device and `doorbell` (the direct-mapped doorbell page).
//!
//! The PCI configuration space, the vfio-user transport, the DMA map table and the server
//! binary's plumbing are device-neutral and come from the `vfio-device` crate. Without default
//! features this crate is the spec layer only (`regs`, `mem`, `driver`): what a guest driver
//! needs, no engine.
//!
//! Threat model: the guest is untrusted. Every register access is width/alignment checked,
//! unknown offsets read 0, and nothing the guest writes can panic the server.

#[cfg(feature = "engine")]
pub mod device;
pub mod driver;
#[cfg(feature = "engine")]
pub mod engine;
#[cfg(feature = "engine")]
pub mod function;
#[cfg(feature = "engine")]
#[doc(hidden)]
pub mod fuzzing;
pub mod mem;
pub mod metrics;
pub mod regs;
#[cfg(feature = "engine")]
pub mod workers;

#[cfg(feature = "server")]
pub mod doorbell;
