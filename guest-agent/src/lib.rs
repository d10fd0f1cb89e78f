//! The guest agent: runs inside the test-bed guest, speaks the harness protocol on a serial
//! port and drives the emulated devices from userspace through vfio-pci.
//!
//! - [`protocol`]: the versioned JSON-lines protocol (shared with the harness).
//! - [`inventory`]: PCI functions, NUMA nodes, memory tiers from sysfs.
//! - [`vfio`]: the VFIO plumbing (container, group, device, BAR mmaps).
//! - [`drivers`]: identity probes of the SDXi and CHMU functions.

pub mod chmu;
pub mod drivers;
pub mod inventory;
pub mod protocol;
pub mod sdxi;
pub mod vfio;
