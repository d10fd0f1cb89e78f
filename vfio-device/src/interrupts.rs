//! Interrupts of an emulated PCI function as a vfio-user client arms them: one eventfd per
//! MSI-X vector and one for INTx (vfio-user `VFIO_USER_DEVICE_SET_IRQS`, QEMU
//! `docs/interop/vfio-user.rst`), gated by the Command register's Bus Master Enable (PCI Express
//! Base 6.0 §7.5.1.1.3: a function without it issues no memory requests, and an MSI-X message
//! is one).
//!
//! The handle is cheap to clone and shared by the transport (which arms it) and the device's
//! worker threads (which trigger it). Left out: MSI (the functions here offer MSI-X only), the
//! per-vector Mask bits and the Pending Bit Array, which QEMU emulates itself.

use std::fs::File;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// MSI-X/INTx eventfds and Bus Master Enable, shared with device worker threads.
#[derive(Clone, Debug, Default)]
pub struct Interrupts {
    inner: Arc<InterruptsInner>,
}

#[derive(Debug, Default)]
struct InterruptsInner {
    msix: Mutex<Vec<Option<File>>>,
    intx: Mutex<Option<File>>,
    bus_master: AtomicBool,
    raised: AtomicU64,
    dropped: AtomicU64,
}

impl Interrupts {
    /// The MSI-X vectors' eventfds (index = vector), as SET_IRQS arms them.
    pub(crate) fn msix_table(&self) -> MutexGuard<'_, Vec<Option<File>>> {
        self.inner
            .msix
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Signals MSI-X `vector`. Returns false (and counts a drop) when bus mastering is off or
    /// the vector has no eventfd.
    pub fn trigger(&self, vector: u16) -> bool {
        if !self.inner.bus_master.load(Ordering::Acquire) {
            self.inner.dropped.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        let v = self.msix_table();
        let ok = match v.get(usize::from(vector)).and_then(Option::as_ref) {
            Some(mut f) => f.write_all(&1u64.to_ne_bytes()).is_ok(),
            None => false,
        };
        let c = if ok {
            &self.inner.raised
        } else {
            &self.inner.dropped
        };
        c.fetch_add(1, Ordering::Relaxed);
        ok
    }

    pub fn set_bus_master(&self, on: bool) {
        self.inner.bus_master.store(on, Ordering::Release);
    }

    pub fn bus_master(&self) -> bool {
        self.inner.bus_master.load(Ordering::Acquire)
    }

    /// Number of MSI-X vectors that currently have an eventfd.
    pub fn armed_vectors(&self) -> usize {
        self.msix_table().iter().filter(|f| f.is_some()).count()
    }

    pub fn raised(&self) -> u64 {
        self.inner.raised.load(Ordering::Relaxed)
    }

    pub fn dropped(&self) -> u64 {
        self.inner.dropped.load(Ordering::Relaxed)
    }

    /// Arms (or with `None` disarms) the INTx eventfd.
    pub(crate) fn set_intx(&self, fd: Option<File>) {
        *self
            .inner
            .intx
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = fd;
    }

    /// Drops every eventfd and turns bus mastering off (the client left).
    pub(crate) fn clear(&self) {
        self.msix_table().iter_mut().for_each(|f| *f = None);
        self.set_intx(None);
        self.set_bus_master(false);
    }
}
