//! Transitional re-exports (the block moved to `core`).
pub use crate::core::check::Refusal;
pub use crate::core::chmu::ChmuBlock;
pub use crate::core::hotlist_store::{HotlistMemory, VecHotlist};
pub use crate::layout::{epoch_units, ChmuConfig, Placement, EPOCH_MAX, EPOCH_MIN};
