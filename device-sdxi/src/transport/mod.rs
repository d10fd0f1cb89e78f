//! What surrounds the core in the server: the SDXi function's PCI identity and BAR routing
//! ([`device`]), the worker threads that run context passes ([`workers`]), the direct-mapped
//! doorbell page and its watcher ([`doorbell`]), and the engine's [`platform`] (MSI-X,
//! Bus Master Enable, sleeps for injected delays, large copies split over threads).
//!
//! The vfio-user server loop itself is device-neutral (`vfio_device::server`).

pub mod device;
#[cfg(feature = "server")]
pub mod doorbell;
#[cfg(feature = "server")]
pub mod platform;
pub mod workers;
