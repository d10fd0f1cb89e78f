//! The transport: the PCI function served over vfio-user (`vfio-device`), and where the
//! CHMU's accesses come from. Threads, sockets, files and the host clock live here.
//!
//! - [`device`]: the PCI function (identity, DVSECs, BARs, MSI-X) routing BAR accesses to the
//!   core, the control commands (`state`, `overflow` fault injection) and the counter dump;
//! - [`feed`]: the access feeds into the core (the TCG plugin's socket, the host clock);
//! - [`trace`]: the trace file format and its replay;
//! - [`hotlist_map`]: the hotlists in a memfd the guest maps directly.

pub mod device;
#[cfg(feature = "server")]
pub mod feed;
#[cfg(feature = "server")]
pub mod hotlist_map;
#[cfg(feature = "server")]
pub mod trace;
