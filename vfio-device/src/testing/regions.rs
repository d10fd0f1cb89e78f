//! Region accesses as a test client makes them: 64-bit reads and writes through
//! `VFIO_USER_REGION_READ`/`REGION_WRITE`, and a region's sparse mmap areas mapped the way QEMU
//! maps them into the guest (QEMU `docs/interop/vfio-user.rst`, `VFIO_USER_DEVICE_GET_REGION_INFO`
//! with `VFIO_REGION_INFO_CAP_SPARSE_MMAP`), so a store there never travels on the socket.
//! Also the setup every interrupt test repeats: memory space and bus mastering on, MSI-X vectors
//! armed with eventfds (`VFIO_USER_DEVICE_SET_IRQS`). Test code: failures panic.

use std::fs::File;
use std::os::fd::AsRawFd;
use vfio_bindings::bindings::vfio::{
    VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_IRQ_SET_DATA_EVENTFD, VFIO_PCI_CONFIG_REGION_INDEX,
    VFIO_PCI_MSIX_IRQ_INDEX,
};

/// The configuration space's vfio region index.
pub const CONFIG_REGION: u32 = VFIO_PCI_CONFIG_REGION_INDEX;
/// The MSI-X interrupt index of SET_IRQS and GET_IRQ_INFO.
pub const MSIX_IRQ: u32 = VFIO_PCI_MSIX_IRQ_INDEX;

/// Reads the little-endian u64 at `offset` of `region`.
pub fn read_u64(c: &mut vfio_user::Client, region: u32, offset: u64) -> u64 {
    let mut b = [0u8; 8];
    c.region_read(region, offset, &mut b)
        .unwrap_or_else(|e| panic!("read of region {region} at {offset:#x}: {e}"));
    u64::from_le_bytes(b)
}

/// Writes `value` little-endian at `offset` of `region`.
pub fn write_u64(c: &mut vfio_user::Client, region: u32, offset: u64, value: u64) {
    c.region_write(region, offset, &value.to_le_bytes())
        .unwrap_or_else(|e| panic!("write of region {region} at {offset:#x}: {e}"));
}

/// Turns on Memory Space and Bus Master Enable in the Command register (PCI Express Base 6.0
/// §7.5.1.1.3) and arms MSI-X vectors `0..count` with fresh eventfds, returned in vector order.
pub fn arm_msix(c: &mut vfio_user::Client, count: u32) -> Vec<File> {
    let command = crate::pci::PCI_COMMAND_MEMORY | crate::pci::PCI_COMMAND_MASTER;
    c.region_write(
        CONFIG_REGION,
        crate::pci::PCI_COMMAND as u64,
        &command.to_le_bytes(),
    )
    .expect("Command register write");
    let vectors: Vec<File> = (0..count).map(|_| super::eventfd()).collect();
    let fds: Vec<i32> = vectors.iter().map(AsRawFd::as_raw_fd).collect();
    c.set_irqs(
        MSIX_IRQ,
        VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER,
        0,
        count,
        &fds,
    )
    .expect("SET_IRQS");
    vectors
}

/// A region's backing file mapped whole and shared, as the client maps its sparse areas.
#[derive(Debug)]
pub struct MappedArea {
    ptr: *mut u64,
    len: usize,
}

// SAFETY: plain shared memory, reached only with volatile aligned 64-bit accesses.
unsafe impl Send for MappedArea {}
// SAFETY: as above.
unsafe impl Sync for MappedArea {}

impl MappedArea {
    /// Maps `region`'s file; None when the server offers no fd for it (nothing mappable).
    pub fn map(c: &vfio_user::Client, region: u32) -> Option<Self> {
        let r = c.region(region)?;
        let fo = r.file_offset.as_ref()?;
        let len = usize::try_from(r.size).ok()?;
        // SAFETY: a fresh shared mapping of the server's file; the kernel checks the fd, length
        // and offset, and the result is checked below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fo.file().as_raw_fd(),
                libc::off_t::try_from(fo.start()).ok()?,
            )
        };
        (p != libc::MAP_FAILED).then_some(Self { ptr: p.cast(), len })
    }

    fn slot(&self, offset: u64) -> usize {
        let i = usize::try_from(offset / 8).unwrap_or(usize::MAX);
        assert!(
            offset.is_multiple_of(8) && i < self.len / 8,
            "offset {offset:#x} outside the {:#x}-byte mapping or unaligned",
            self.len
        );
        i
    }

    /// Stores `value` at `offset` (8-byte aligned) as one 64-bit store.
    pub fn write_u64(&self, offset: u64, value: u64) {
        let i = self.slot(offset);
        // SAFETY: slot() checked i < len / 8, inside the live mapping; aligned 64-bit store.
        unsafe { std::ptr::write_volatile(self.ptr.add(i), value) };
    }

    /// Loads the u64 at `offset` (8-byte aligned).
    pub fn read_u64(&self, offset: u64) -> u64 {
        let i = self.slot(offset);
        // SAFETY: as in write_u64.
        unsafe { std::ptr::read_volatile(self.ptr.add(i)) }
    }
}

impl Drop for MappedArea {
    fn drop(&mut self) {
        // SAFETY: exactly the mapping made in `map`.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}
