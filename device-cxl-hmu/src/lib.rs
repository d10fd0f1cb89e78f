//! A CXL 3.2 Hotness Monitoring Unit (CHMU, §8.2.8) in a CXL memory device (§8.2.9), served
//! over vfio-user. Read it in layers, each depending only on those before it:
//!
//! - [`spec`]: register definitions and tables, the CHMU's layout, mailbox payloads, the
//!   access feed's record format: what the guest driver and the TCG plugin share;
//! - [`mod@core`]: the CHMU block and its state machine, counting into hotlists, the CXL
//!   register blocks and mailbox `cxl_pci` needs; no I/O, no threads;
//! - [`transport`]: the PCI function over vfio-user and the access feeds;
//! - [`metrics`]: every counter of the device in one struct, [`metrics::HmuMetrics`].
//!
//! Features: `device` (the core, transport and metrics), `server` (the vfio-user transport and
//! the `cxl-hmu-server` binary; default). Without features the crate is [`spec`] alone.
//!
//! The PCI configuration space and the vfio-user transport are device-independent and come
//! from the `vfio-device` crate (`pci`, `server`, `cli`), which the SDXi device uses too.
//!
//! Threat model: the guest is untrusted; accesses are width/alignment checked against the
//! 64 KiB block and invalid configurations are refused, never a panic.

#[cfg(feature = "device")]
pub mod core;
#[cfg(feature = "device")]
#[doc(hidden)]
pub mod fuzzing;
#[cfg(feature = "device")]
pub mod metrics;
pub mod spec;
#[cfg(feature = "device")]
pub mod transport;

// Shorter paths the guest agent and the harness use.
#[cfg(feature = "device")]
pub use crate::core::{cxl_blocks, mailbox};
pub use spec::{layout, regs};
/// The CHMU's capabilities ([`spec::layout::ChmuConfig`]) where the harness finds them.
pub mod chmu {
    pub use crate::spec::layout::ChmuConfig;
}
