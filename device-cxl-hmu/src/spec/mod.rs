pub mod block_table;
pub mod chmu_table;
pub mod component;
pub mod memdev;
