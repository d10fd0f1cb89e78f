//! A CXL 3.2 Hotness Monitoring Unit in a CXL memory device, served over vfio-user.
//!
//! - [`regs`]: DVSEC and CHMU register definitions (shared with the guest driver).
//! - [`chmu`]: the CHMU register block core; no I/O.
//! - [`layout`]: where the CHMU's instances and hotlists lie in the block.
//! - [`device`]: the PCI function (identity, DVSECs, BAR routing).
//! - [`cxl_blocks`]: the CXL register blocks Linux's `cxl_pci` needs, in front of the CHMU:
//!   [`component`] (HDM decoder capability) and [`memdev`] (device capabilities, mailbox),
//!   whose commands are in [`mailbox`] with their payloads in [`payloads`].
//! - [`record`]: the access feed's wire format (shared with the `chmu-tap` plugin).
//!
//! The PCI configuration space and the vfio-user transport are device-independent and come
//! from the `vfio-device` crate (`pci`, `server`, `cli`), which the SDXi device uses too.
//!
//! Threat model: the guest is untrusted; accesses are width/alignment checked against the
//! 64 KiB block and invalid configurations are refused, never a panic.

pub mod chmu;
pub mod core;
pub use crate::core::component;
pub mod cxl_blocks;
pub mod device;
#[cfg(feature = "server")]
pub mod feed;
#[doc(hidden)]
pub mod fuzzing;
#[cfg(feature = "server")]
pub mod hotlist_map;
pub mod hotness;
pub mod layout;
pub mod mailbox;
pub use crate::core::memdev;
pub mod metrics;
pub mod payloads;
pub mod record;
pub mod regfile;
pub mod regs;
pub mod spec;
pub use spec::chmu_table;
