//! The spec layer: what the CXL 3.2 specification defines and this device offers, shared by
//! the device model, guest drivers and the TCG plugin. No behaviour beyond encoding, decoding
//! and the tables; no dependency on the rest of the crate.
//!
//! - [`regs`]: the DVSEC identifiers and the CHMU register fields (§8.1.3, §8.1.9, §8.2.8);
//! - [`dvsec`]: the PCIe DVSEC for CXL Devices and the Register Locator (§8.1.3, §8.1.9);
//! - [`chmu_table`]: the CHMU register table (§8.2.8.1-6);
//! - [`layout`]: the CHMU's capabilities and where its instances and hotlists lie (§8.2.8);
//! - [`block_table`], [`component`], [`memdev`]: the Component Registers (§8.2.4) and Memory
//!   Device registers (§8.2.9) as tables; [`payloads`]: the mailbox payloads (§8.2.10);
//! - [`record`]: the access feed's wire format (this project's, not the spec's), the one
//!   thing the `chmu-tap` plugin uses.

pub mod block_table;
pub mod chmu_table;
pub mod component;
pub mod dvsec;
pub mod layout;
pub mod memdev;
pub mod payloads;
pub mod record;
pub mod regs;
