//! An emulated PCI function served over vfio-user (QEMU `docs/interop/vfio-user.rst`): the
//! device-neutral half of both device servers of this project (the SDXi engine and the CXL
//! memory device with its CHMU). A device supplies its identity, BAR behaviour and counters
//! through [`server::PciDevice`]; everything else is here.
//!
//! - [`pci`]: the configuration space (PCI Local Bus 3.0 §6, PCI Express Base 6.0 §7.5), its
//!   capabilities (PCI Express, MSI-X, DVSEC, Device Serial Number) and BAR definitions, and
//!   the capability walker a guest driver uses to find them again.
//! - [`pattern`]: deterministic byte patterns for tests, fuzzers and guest workloads.
//! - `dma`, `dma_table`, `dma_space`, `dma_copy` (feature `dma`): guest memory as
//!   DMA_MAP/DMA_UNMAP announce it: the IOVA -> host interval map, the live space a device's
//!   workers read, ordered behind the socket's messages, and the loop that copies a batch.
//! - `listener`, `server`, `quiesce`, `interrupts` (feature `server`): the listening socket,
//!   the vfio-user server loop (regions with sparse mmap areas, SET_IRQS, DMA_MAP/UNMAP,
//!   reset), the wait for messages a client already sent, and the MSI-X/INTx eventfds gated by
//!   Bus Master Enable.
//! - `cli` (feature `server`): the server binaries' shared options (`--socket`/`--fd`,
//!   counters, control socket, trace), logging, signals, and the QEMU usage text.
//! - `testing` (feature `server`): helpers shared by the device crates' test suites: a server
//!   process on a socket handed over as fd 3, a raw wire-format client, eventfds and memfds,
//!   region accesses, MSI-X arming and mapped sparse areas.
//!
//! Left out of vfio-user: the client side (tests use the `vfio_user` crate's client), live
//! migration, `VFIO_USER_DMA_READ`/`DMA_WRITE` (guest memory is always shared by fd here) and
//! device feature negotiation beyond what the `vfio_user` crate offers.
//!
//! Threat model: the client (and the guest behind it) is untrusted. Accesses past a region's end
//! get an error reply, unknown configuration-space bytes read as 0, and DMA reaches only mapped
//! ranges.

pub mod pattern;
pub mod pci;

#[cfg(feature = "dma")]
pub mod dma;
#[cfg(feature = "dma")]
pub mod dma_copy;
#[cfg(feature = "dma")]
pub mod dma_space;
#[cfg(feature = "dma")]
pub mod dma_table;

#[cfg(feature = "server")]
pub mod cli;
#[cfg(feature = "server")]
pub mod interrupts;
#[cfg(feature = "server")]
pub mod listener;
#[cfg(feature = "server")]
pub mod quiesce;
#[cfg(feature = "server")]
pub mod server;
#[cfg(feature = "server")]
#[doc(hidden)]
pub mod testing;
