//! The core: the device's state machines and storage, on top of [`crate::spec`]. No I/O, no
//! threads, no sleeps: time comes from the caller, interrupts go back as vector numbers.
//!
//! - [`chmu`]: the CHMU register block (CXL 3.2 §8.2.8), with [`state`] (the instance state
//!   machine), [`check`] (the enable's capability check) and [`hotlist_store`];
//! - [`hotness`]: counting accesses into epochs and hotlist entries (§8.2.8's theory of
//!   operation);
//! - [`regfile`], [`component`], [`memdev`], [`mailbox`], [`cxl_blocks`]: the CXL register
//!   blocks Linux's `cxl_pci` needs (§8.2.4, §8.2.9) and the mailbox commands (§8.2.10).

pub mod check;
pub mod chmu;
pub mod component;
pub mod cxl_blocks;
pub mod hotlist_store;
pub mod hotness;
pub mod mailbox;
pub mod memdev;
pub mod regfile;
pub mod state;
