pub mod check;
pub mod chmu;
pub mod component;
pub mod hotlist_store;
pub mod memdev;
pub mod state;
