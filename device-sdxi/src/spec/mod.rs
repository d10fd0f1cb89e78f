//! The SDXi 1.0 definitions shared by the device and the guest driver, so the two cannot
//! disagree: the BAR0 register map as one table ([`regs`], SDXi 1.0 §9.2) and the in-memory
//! structures as `#[repr(C)]` zerocopy types with size asserts ([`mem`], the context-level,
//! descriptor and error-log chapters).

pub mod mem;
pub mod regs;
