//! An SNIA SDXi 1.0 DMA engine emulated as a PCI function served over vfio-user.
//!
//! - [`regs`]: the BAR0 register map (shared with the guest driver).
//! - [`function`]: the register file and function state machine; no I/O.
//! - [`pci`]: device-independent PCI configuration space emulation.
//! - [`device`]: the SDXi function's PCI identity and BAR routing.
//! - `vfio_server`, `cli` (feature `server`): the vfio-user transport and the server binary's
//!   plumbing, device-independent and also used by the CXL HMU server.
//!
//! Threat model: the guest is untrusted. Every register access is width/alignment checked,
//! unknown offsets read 0, and nothing the guest writes can panic the server.

pub mod device;
pub mod dma;
pub mod dma_space;
pub mod dma_table;
pub mod driver;
pub mod engine;
pub mod function;
#[doc(hidden)]
pub mod fuzzing;
pub mod mem;
pub mod pci;
pub mod regs;
pub mod workers;

#[cfg(feature = "server")]
pub mod cli;
#[cfg(feature = "server")]
pub mod doorbell;
#[cfg(feature = "server")]
pub mod quiesce;
#[cfg(feature = "server")]
#[doc(hidden)]
pub mod testing;
#[cfg(feature = "server")]
pub mod vfio_server;
