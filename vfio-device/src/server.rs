//! A thin vfio-user transport for an emulated PCI function (QEMU `docs/interop/vfio-user.rst`),
//! built on the `vfio_user` crate's server.
//!
//! Device-neutral: both device servers of the project use it. It owns the listening socket
//! ([`Listener`]), the configuration space, the interrupt eventfds and the DMA map table; the
//! device model only sees BAR accesses, resets, counters and control requests ([`PciDevice`]).
//! It serves one client at a time and keeps listening after a client leaves, so QEMU can
//! restart without restarting the server.
//!
//! Messages handled (vfio-user.rst section names): `VFIO_USER_VERSION` (by the crate),
//! `VFIO_USER_DEVICE_GET_INFO`, `VFIO_USER_DEVICE_GET_REGION_INFO` (the BARs from the
//! configuration space, the configuration space at its fixed index, and the device's sparse
//! mmap areas with their fd), `VFIO_USER_DEVICE_GET_IRQ_INFO`, `VFIO_USER_DEVICE_SET_IRQS`
//! (MSI-X and INTx eventfds), `VFIO_USER_REGION_READ`/`REGION_WRITE`, `VFIO_USER_DMA_MAP`/
//! `DMA_UNMAP` (applied to the device's [`DmaSpace`]; a map is never refused, one the server
//! cannot use faults instead) and `VFIO_USER_DEVICE_RESET`. The Command register's Bus Master
//! Enable gates the interrupts (PCI Express Base 6.0 §7.5.1.1.3).
//!
//! Left out: `VFIO_USER_DMA_READ`/`DMA_WRITE` (memory without an fd is unreachable), MSI,
//! `VFIO_USER_DEVICE_FEATURE` (migration and dirty-page tracking), `REGION_WRITE_MULTI` and
//! `GET_REGION_IO_FDS`.
//!
//! Quirks of the `vfio_user` crate (0.1.7) handled here: a backend error becomes an error
//! reply with errno 0, so only accesses that must fail return one (a read or write past the end
//! of a BAR or of the configuration space: QEMU then sees a short access, never silent data);
//! `SET_IRQS` arrives raw (eventfd per vector, `count=0` to disable, a missing fd to
//! de-assign).

use crate::dma::MapSpec;
use crate::dma_space::DmaSpace;
use crate::interrupts::Interrupts;
pub use crate::listener::{Listener, ListenerError};
use crate::pci::ConfigSpace;
use crate::quiesce::SocketWatch;
use serde::Serialize;
use std::fs::File;
use std::os::fd::RawFd;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use tracing::{debug, info, warn};
use vfio_bindings::bindings::vfio::{
    vfio_region_info, vfio_region_sparse_mmap_area, VFIO_IRQ_INFO_EVENTFD,
    VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_IRQ_SET_DATA_EVENTFD, VFIO_IRQ_SET_DATA_NONE,
    VFIO_PCI_CONFIG_REGION_INDEX, VFIO_PCI_ERR_IRQ_INDEX, VFIO_PCI_INTX_IRQ_INDEX,
    VFIO_PCI_MSIX_IRQ_INDEX, VFIO_PCI_MSI_IRQ_INDEX, VFIO_PCI_NUM_REGIONS, VFIO_PCI_REQ_IRQ_INDEX,
    VFIO_REGION_INFO_FLAG_MMAP, VFIO_REGION_INFO_FLAG_READ, VFIO_REGION_INFO_FLAG_WRITE,
};
use vfio_user::{
    DmaMapFlags, DmaUnmapFlags, IrqInfo, Server, ServerBackend, ServerRegion, SparseArea,
};

/// Errors of the transport.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error(transparent)]
    Listener(#[from] ListenerError),
    #[error("vfio-user server failed")]
    Server(#[source] vfio_user::Error),
}

/// The emulated function as the transport sees it.
pub trait PciDevice: Send {
    /// Short name for logs ("sdxi", "cxl-hmu").
    fn name(&self) -> &'static str;
    /// The interrupt handle the transport arms from SET_IRQS and gates with Bus Master Enable.
    fn interrupts(&self) -> Interrupts;
    /// The guest memory this device reaches by DMA; the transport applies DMA_MAP and
    /// DMA_UNMAP to it (a device without one gets a private space nobody reads).
    fn dma_space(&self) -> Option<Arc<DmaSpace>> {
        None
    }
    /// A part of `bar` the client may map directly: (fd, offset, size), where the fd's bytes
    /// at `offset` back the BAR's bytes at `offset` (a vfio-user sparse mmap area).
    fn bar_mmap(&self, _bar: u8) -> Option<(RawFd, u64, u64)> {
        None
    }
    /// Every part of `bar` the client may map directly, all backed by one fd at the same
    /// offsets (vfio-user sparse mmap areas); defaults to [`Self::bar_mmap`]'s one area.
    fn bar_mmap_areas(&self, bar: u8) -> Option<(RawFd, Vec<(u64, u64)>)> {
        self.bar_mmap(bar)
            .map(|(fd, off, size)| (fd, vec![(off, size)]))
    }
    fn bar_read(&mut self, bar: u8, offset: u64, data: &mut [u8]);
    fn bar_write(&mut self, bar: u8, offset: u64, data: &[u8]);
    /// Function-level or device reset: restore reset values, drop in-flight work.
    fn reset(&mut self);
    /// Counters as JSON, for `--counters` and logs.
    fn counters(&self) -> serde_json::Value;
    /// A control-socket request other than `counters` (e.g. `state`, `fault`); the answer
    /// or an error naming what was wrong.
    fn control(&mut self, request: &serde_json::Value) -> Result<serde_json::Value, String> {
        Err(format!("unknown command {}", request["cmd"]))
    }
}

/// Transport counters.
#[derive(Clone, Debug, Default, Serialize)]
pub struct TransportCounters {
    pub connections: u64,
    pub config_reads: u64,
    pub config_writes: u64,
    pub dma_maps: u64,
    pub dma_maps_without_fd: u64,
    pub dma_unmaps: u64,
    pub dma_map_failures: u64,
    pub resets: u64,
    pub set_irqs: u64,
    /// Region accesses refused with an error reply (past the end of a BAR or config space).
    pub out_of_range_accesses: u64,
}

/// Adapter from [`PciDevice`] to the crate's [`ServerBackend`].
#[derive(Debug)]
pub struct Backend<D> {
    pub device: D,
    config: ConfigSpace,
    pristine: ConfigSpace,
    pub interrupts: Interrupts,
    pub dma: Arc<DmaSpace>,
    /// The serving thread's progress, for doorbells that do not travel on the socket.
    pub watch: Arc<SocketWatch>,
    pub counters: TransportCounters,
}

impl<D: PciDevice> Backend<D> {
    pub fn new(device: D, config: ConfigSpace) -> Self {
        let dma = device.dma_space().unwrap_or_default();
        let watch = Arc::new(SocketWatch::default());
        dma.set_quiesce(Some(Arc::clone(&watch) as _));
        Self {
            interrupts: device.interrupts(),
            device,
            pristine: config.clone(),
            config,
            dma,
            watch,
            counters: TransportCounters::default(),
        }
    }

    pub fn config(&self) -> &ConfigSpace {
        &self.config
    }

    /// The vfio regions: BARs, then the configuration space at its fixed index.
    pub fn regions(&self) -> Vec<ServerRegion> {
        (0..VFIO_PCI_NUM_REGIONS)
            .map(|index| {
                let size = self.region_size(index);
                let mut flags = if size > 0 {
                    VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE
                } else {
                    0
                };
                let mmap = u8::try_from(index)
                    .ok()
                    .filter(|_| index != VFIO_PCI_CONFIG_REGION_INDEX && size > 0)
                    .and_then(|b| self.device.bar_mmap_areas(b))
                    .filter(|(_, areas)| !areas.is_empty());
                let mmap_fd = mmap.as_ref().map(|(fd, _)| *fd);
                let sparse_areas = match mmap {
                    Some((_, areas)) => {
                        flags |= VFIO_REGION_INFO_FLAG_MMAP;
                        areas
                            .into_iter()
                            .map(|(offset, size)| SparseArea {
                                area: vfio_region_sparse_mmap_area { offset, size },
                            })
                            .collect()
                    }
                    None => Vec::new(),
                };
                ServerRegion {
                    region_info: vfio_region_info {
                        argsz: std::mem::size_of::<vfio_region_info>() as u32,
                        flags,
                        index,
                        cap_offset: 0,
                        size,
                        offset: 0,
                    },
                    sparse_areas,
                    mmap_fd,
                }
            })
            .collect()
    }

    /// Bytes of vfio region `index`: the configuration space, a BAR, or 0 (no such BAR).
    fn region_size(&self, index: u32) -> u64 {
        if index == VFIO_PCI_CONFIG_REGION_INDEX {
            self.config.size() as u64
        } else {
            u8::try_from(index)
                .ok()
                .and_then(|i| self.config.bar(i))
                .map_or(0, |b| b.size)
        }
    }

    /// Refuses an access that does not lie wholly inside its region (counted and logged); the
    /// crate turns the error into an error reply.
    fn check_range(&mut self, region: u32, offset: u64, len: usize) -> std::io::Result<()> {
        let size = self.region_size(region);
        if offset
            .checked_add(len as u64)
            .is_some_and(|end| end <= size)
        {
            return Ok(());
        }
        self.counters.out_of_range_accesses += 1;
        warn!(
            region,
            offset, len, size, "access past the end of the region refused"
        );
        Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("region {region}: {len} bytes at {offset:#x} past its {size:#x} bytes"),
        ))
    }

    /// The interrupt indexes: INTx, MSI (none), MSI-X, ERR (one, silences QEMU's warning), REQ.
    pub fn irqs(&self) -> Vec<IrqInfo> {
        let msix = self.config.msix().map_or(0, |m| u32::from(m.vectors));
        [
            (VFIO_PCI_INTX_IRQ_INDEX, 1),
            (VFIO_PCI_MSI_IRQ_INDEX, 0),
            (VFIO_PCI_MSIX_IRQ_INDEX, msix),
            (VFIO_PCI_ERR_IRQ_INDEX, 1),
            (VFIO_PCI_REQ_IRQ_INDEX, 0),
        ]
        .into_iter()
        .map(|(index, count)| IrqInfo {
            index,
            flags: VFIO_IRQ_INFO_EVENTFD,
            count,
        })
        .collect()
    }

    /// Forgets everything tied to a client connection.
    pub fn disconnect(&mut self) {
        self.watch.connection_closed();
        self.dma.clear();
        self.interrupts.clear();
        self.config.reset(&self.pristine);
        self.device.reset();
    }

    /// All counters of the transport and the device as one JSON object.
    pub fn counters_json(&self) -> serde_json::Value {
        serde_json::json!({
            "device": self.device.name(),
            "transport": self.counters,
            "dma": self.dma.counters_json(),
            "socket_waits": {
                "waits": self.watch.waits.load(Ordering::Relaxed),
                "gave_up": self.watch.gave_up.load(Ordering::Relaxed),
            },
            "interrupts": { "raised": self.interrupts.raised(), "dropped": self.interrupts.dropped() },
            "registers": self.device.counters(),
        })
    }
}

impl<D: PciDevice> ServerBackend for Backend<D> {
    fn region_read(&mut self, region: u32, offset: u64, data: &mut [u8]) -> std::io::Result<()> {
        self.check_range(region, offset, data.len())?;
        if region == VFIO_PCI_CONFIG_REGION_INDEX {
            self.counters.config_reads += 1;
            self.config.read(offset, data);
        } else if let Some(bar) = u8::try_from(region)
            .ok()
            .filter(|b| self.config.bar(*b).is_some())
        {
            self.device.bar_read(bar, offset, data);
        } else {
            data.fill(0);
        }
        Ok(())
    }

    fn region_write(&mut self, region: u32, offset: u64, data: &[u8]) -> std::io::Result<()> {
        self.check_range(region, offset, data.len())?;
        if region == VFIO_PCI_CONFIG_REGION_INDEX {
            self.counters.config_writes += 1;
            if self.config.write(offset, data) {
                let bme = self.config.bus_master();
                debug!(bme, "command register written");
                self.interrupts.set_bus_master(bme);
            }
        } else if let Some(bar) = u8::try_from(region)
            .ok()
            .filter(|b| self.config.bar(*b).is_some())
        {
            self.device.bar_write(bar, offset, data);
        }
        Ok(())
    }

    fn dma_map(
        &mut self,
        flags: DmaMapFlags,
        offset: u64,
        address: u64,
        size: u64,
        fd: Option<File>,
    ) -> std::io::Result<()> {
        self.counters.dma_maps += 1;
        if fd.is_none() {
            self.counters.dma_maps_without_fd += 1;
        }
        // trace, not debug: a guest behind a vIOMMU sends one map per page.
        tracing::trace!(
            iova = address,
            size,
            offset,
            has_fd = fd.is_some(),
            "DMA map"
        );
        match fd {
            Some(file) => {
                let spec = MapSpec {
                    iova: address,
                    size,
                    file: &file,
                    file_offset: offset,
                    writable: flags.contains(DmaMapFlags::WRITE),
                };
                if let Err(e) = self.dma.map(&spec) {
                    // Still answered with success: the range faults instead (QEMU aborts on a
                    // failed map), and the counter shows it.
                    self.counters.dma_map_failures += 1;
                    warn!(error = %e, "DMA map not usable by the device");
                    self.dma.map_unreachable(address, size);
                }
            }
            None => self.dma.map_unreachable(address, size),
        }
        Ok(())
    }

    fn dma_unmap(&mut self, _flags: DmaUnmapFlags, address: u64, size: u64) -> std::io::Result<()> {
        self.counters.dma_unmaps += 1;
        tracing::trace!(iova = address, size, "DMA unmap");
        self.dma.unmap(address, size);
        Ok(())
    }

    fn reset(&mut self) -> std::io::Result<()> {
        self.counters.resets += 1;
        info!(device = self.device.name(), "device reset");
        self.config.reset(&self.pristine);
        self.interrupts.set_bus_master(false);
        self.device.reset();
        Ok(())
    }

    fn set_irqs(
        &mut self,
        index: u32,
        flags: u32,
        start: u32,
        count: u32,
        fds: Vec<File>,
    ) -> std::io::Result<()> {
        self.counters.set_irqs += 1;
        debug!(index, flags, start, count, nfds = fds.len(), "SET_IRQS");
        let trigger = flags & VFIO_IRQ_SET_ACTION_TRIGGER != 0;
        if index == VFIO_PCI_MSIX_IRQ_INDEX && trigger {
            let max = self.config.msix().map_or(0, |m| usize::from(m.vectors));
            let mut table = self.interrupts.msix_table();
            table.resize_with(max, || None);
            if flags & VFIO_IRQ_SET_DATA_EVENTFD != 0 {
                let mut fds = fds.into_iter();
                for v in start..start.saturating_add(count) {
                    if let Some(slot) = table.get_mut(v as usize) {
                        // Fewer fds than count: the remaining vectors are de-assigned.
                        *slot = fds.next();
                    }
                }
            } else if flags & VFIO_IRQ_SET_DATA_NONE != 0 && count == 0 {
                table.iter_mut().for_each(|f| *f = None);
            }
        } else if index == VFIO_PCI_INTX_IRQ_INDEX
            && trigger
            && flags & VFIO_IRQ_SET_DATA_EVENTFD != 0
        {
            self.interrupts.set_intx(fds.into_iter().next());
        }
        Ok(())
    }
}

/// Serves clients one after another until the listener fails. The backend is reset between
/// clients, so a restarted QEMU finds a function in its reset state.
pub fn serve<D: PciDevice>(
    listener: Listener,
    backend: &Mutex<Backend<D>>,
    max_clients: Option<u64>,
) -> Result<(), TransportError> {
    let (regions, irqs) = {
        let b = backend
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        (b.regions(), b.irqs())
    };
    // The crate removes its socket file on drop only for paths it bound itself; we keep the
    // path and remove it ourselves.
    let server = Server::from_owned_fd(listener.into_fd(), true, irqs, regions);
    let watch = Arc::clone(
        &backend
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .watch,
    );
    watch.serving_thread();
    let mut served = 0u64;
    loop {
        let mut guard = LockedBackend(backend, Arc::clone(&watch));
        let result = server.run(&mut guard);
        served += 1;
        let mut b = backend
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        b.counters.connections += 1;
        match result {
            Ok(()) => info!(
                device = b.device.name(),
                "client disconnected; listening again"
            ),
            Err(vfio_user::Error::SocketAccept(e)) => {
                return Err(TransportError::Server(vfio_user::Error::SocketAccept(e)))
            }
            Err(e) => {
                warn!(device = b.device.name(), error = %e, "client connection failed; listening again")
            }
        }
        b.disconnect();
        if max_clients.is_some_and(|m| served >= m) {
            return Ok(());
        }
    }
}

/// Lets the crate's single-threaded loop drive a backend that device threads also reach.
struct LockedBackend<'a, D>(&'a Mutex<Backend<D>>, Arc<SocketWatch>);

impl<D: PciDevice> LockedBackend<'_, D> {
    fn get(&mut self) -> MutexGuard<'_, Backend<D>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl<D: PciDevice> ServerBackend for LockedBackend<'_, D> {
    fn region_read(&mut self, region: u32, offset: u64, data: &mut [u8]) -> std::io::Result<()> {
        self.get().region_read(region, offset, data)
    }
    fn region_write(&mut self, region: u32, offset: u64, data: &[u8]) -> std::io::Result<()> {
        self.get().region_write(region, offset, data)
    }
    fn dma_map(
        &mut self,
        flags: DmaMapFlags,
        offset: u64,
        address: u64,
        size: u64,
        fd: Option<File>,
    ) -> std::io::Result<()> {
        self.1.dma_begin();
        let r = self.get().dma_map(flags, offset, address, size, fd);
        self.1.dma_end();
        r
    }
    fn dma_unmap(&mut self, flags: DmaUnmapFlags, address: u64, size: u64) -> std::io::Result<()> {
        self.1.dma_begin();
        let r = self.get().dma_unmap(flags, address, size);
        self.1.dma_end();
        r
    }
    fn reset(&mut self) -> std::io::Result<()> {
        self.get().reset()
    }
    fn set_irqs(
        &mut self,
        index: u32,
        flags: u32,
        start: u32,
        count: u32,
        fds: Vec<File>,
    ) -> std::io::Result<()> {
        self.get().set_irqs(index, flags, start, count, fds)
    }
}
