//! VFIO ioctls (Linux `include/uapi/linux/vfio.h`; `Documentation/driver-api/vfio.rst`
//! describes the container -> group -> device sequence) and BAR mmaps.

use super::{checked, last_err, Bar};
use std::fs::File;
use std::io::Result;
use std::os::fd::{AsRawFd, FromRawFd};
pub use vfio_bindings::bindings::vfio::{
    vfio_group_status, vfio_irq_info, vfio_region_info, VFIO_TYPE1v2_IOMMU,
    VFIO_GROUP_FLAGS_VIABLE, VFIO_PCI_CONFIG_REGION_INDEX, VFIO_REGION_INFO_FLAG_MMAP,
};
use vmm_sys_util::ioctl_io_nr;

/// `VFIO_TYPE` and `VFIO_BASE`: every VFIO ioctl is `_IO(VFIO_TYPE, VFIO_BASE + n)`.
const VFIO_TYPE: u32 = b';' as u32;
const VFIO_BASE: u32 = 100;
ioctl_io_nr!(VFIO_GET_API_VERSION, VFIO_TYPE, VFIO_BASE);
ioctl_io_nr!(VFIO_CHECK_EXTENSION, VFIO_TYPE, VFIO_BASE + 1);
ioctl_io_nr!(VFIO_SET_IOMMU, VFIO_TYPE, VFIO_BASE + 2);
ioctl_io_nr!(VFIO_GROUP_GET_STATUS, VFIO_TYPE, VFIO_BASE + 3);
ioctl_io_nr!(VFIO_GROUP_SET_CONTAINER, VFIO_TYPE, VFIO_BASE + 4);
ioctl_io_nr!(VFIO_GROUP_GET_DEVICE_FD, VFIO_TYPE, VFIO_BASE + 6);
ioctl_io_nr!(VFIO_DEVICE_GET_REGION_INFO, VFIO_TYPE, VFIO_BASE + 8);
ioctl_io_nr!(VFIO_DEVICE_GET_IRQ_INFO, VFIO_TYPE, VFIO_BASE + 9);
ioctl_io_nr!(VFIO_DEVICE_SET_IRQS, VFIO_TYPE, VFIO_BASE + 10);
ioctl_io_nr!(VFIO_IOMMU_MAP_DMA, VFIO_TYPE, VFIO_BASE + 13);
ioctl_io_nr!(VFIO_IOMMU_UNMAP_DMA, VFIO_TYPE, VFIO_BASE + 14);

/// `struct vfio_iommu_type1_dma_map`.
#[repr(C)]
struct DmaMap {
    argsz: u32,
    flags: u32,
    vaddr: u64,
    iova: u64,
    size: u64,
}

/// `struct vfio_iommu_type1_dma_unmap` (without the bitmap extension).
#[repr(C)]
struct DmaUnmap {
    argsz: u32,
    flags: u32,
    iova: u64,
    size: u64,
}

/// `struct vfio_irq_set` without its trailing data: argsz, flags, index, start, count.
const IRQ_SET_HEADER: usize = 20;
const VFIO_DMA_MAP_FLAG_READ: u32 = 1;
const VFIO_DMA_MAP_FLAG_WRITE: u32 = 2;
const VFIO_IRQ_SET_DATA_EVENTFD: u32 = 1 << 2;
const VFIO_IRQ_SET_ACTION_TRIGGER: u32 = 1 << 5;
/// `VFIO_PCI_MSIX_IRQ_INDEX`.
pub const MSIX_IRQ_INDEX: u32 = 2;

fn check(r: libc::c_int) -> Result<libc::c_int> {
    if r < 0 {
        Err(last_err())
    } else {
        Ok(r)
    }
}

/// `VFIO_GET_API_VERSION` of a container.
pub fn api_version(container: &File) -> Result<i32> {
    // SAFETY: an argument-less ioctl on a file we own.
    check(unsafe { libc::ioctl(container.as_raw_fd(), VFIO_GET_API_VERSION()) })
}

/// `VFIO_CHECK_EXTENSION`: > 0 when the container supports IOMMU type `ext`.
pub fn check_extension(container: &File, ext: u32) -> Result<i32> {
    // SAFETY: VFIO_CHECK_EXTENSION takes an integer argument by value.
    check(unsafe {
        libc::ioctl(
            container.as_raw_fd(),
            VFIO_CHECK_EXTENSION(),
            ext as libc::c_ulong,
        )
    })
}

/// `VFIO_GROUP_GET_STATUS`: the group's flags.
pub fn group_flags(group: &File) -> Result<u32> {
    let mut status = vfio_group_status {
        argsz: std::mem::size_of::<vfio_group_status>() as u32,
        flags: 0,
    };
    // SAFETY: the kernel writes a vfio_group_status into `status`, which is live and sized.
    check(unsafe { libc::ioctl(group.as_raw_fd(), VFIO_GROUP_GET_STATUS(), &mut status) })?;
    Ok(status.flags)
}

/// `VFIO_GROUP_SET_CONTAINER`.
pub fn group_set_container(group: &File, container: &File) -> Result<()> {
    let cfd: libc::c_int = container.as_raw_fd();
    // SAFETY: the kernel reads one int (the container fd) from the pointer.
    check(unsafe { libc::ioctl(group.as_raw_fd(), VFIO_GROUP_SET_CONTAINER(), &cfd) })?;
    Ok(())
}

/// `VFIO_SET_IOMMU`.
pub fn set_iommu(container: &File, kind: u32) -> Result<()> {
    // SAFETY: integer argument by value.
    check(unsafe {
        libc::ioctl(
            container.as_raw_fd(),
            VFIO_SET_IOMMU(),
            kind as libc::c_ulong,
        )
    })?;
    Ok(())
}

/// `VFIO_GROUP_GET_DEVICE_FD` for the device named `name` (its PCI address).
pub fn group_get_device(group: &File, name: &std::ffi::CStr) -> Result<File> {
    // SAFETY: the kernel reads a NUL-terminated string from `name`, which outlives the call.
    let fd = check(unsafe {
        libc::ioctl(group.as_raw_fd(), VFIO_GROUP_GET_DEVICE_FD(), name.as_ptr())
    })?;
    // SAFETY: the ioctl returned a new fd that nothing else owns.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// `VFIO_DEVICE_GET_REGION_INFO` of region `index`.
pub fn region_info(device: &File, index: u32) -> Result<vfio_region_info> {
    let mut info = vfio_region_info {
        argsz: std::mem::size_of::<vfio_region_info>() as u32,
        index,
        ..Default::default()
    };
    // SAFETY: the kernel fills a vfio_region_info of `argsz` bytes at `info`.
    check(unsafe { libc::ioctl(device.as_raw_fd(), VFIO_DEVICE_GET_REGION_INFO(), &mut info) })?;
    Ok(info)
}

/// `VFIO_DEVICE_GET_IRQ_INFO` of interrupt index `index`: how many vectors it has.
pub fn irq_count(device: &File, index: u32) -> Result<u32> {
    let mut info = vfio_irq_info {
        argsz: std::mem::size_of::<vfio_irq_info>() as u32,
        index,
        ..Default::default()
    };
    // SAFETY: the kernel fills a vfio_irq_info of `argsz` bytes at `info`.
    check(unsafe { libc::ioctl(device.as_raw_fd(), VFIO_DEVICE_GET_IRQ_INFO(), &mut info) })?;
    Ok(info.count)
}

/// `VFIO_DEVICE_SET_IRQS`: vectors `0..fds.len()` of `index` trigger the eventfds `fds`.
pub fn set_irq_eventfds(device: &File, index: u32, fds: &[i32]) -> Result<()> {
    let argsz = IRQ_SET_HEADER + 4 * fds.len();
    let mut buf = Vec::with_capacity(argsz);
    for v in [
        argsz as u32,
        VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER,
        index,
        0,
        fds.len() as u32,
    ] {
        buf.extend_from_slice(&v.to_ne_bytes());
    }
    for fd in fds {
        buf.extend_from_slice(&fd.to_ne_bytes());
    }
    // SAFETY: the kernel reads a vfio_irq_set header followed by `count` fds, all in `buf`.
    check(unsafe { libc::ioctl(device.as_raw_fd(), VFIO_DEVICE_SET_IRQS(), buf.as_ptr()) })?;
    Ok(())
}

/// `VFIO_IOMMU_MAP_DMA`: `size` bytes of this process at `vaddr` readable and writable by
/// the container's devices at `iova` (the kernel pins them).
pub fn map_dma(container: &File, vaddr: u64, iova: u64, size: u64) -> Result<()> {
    let m = DmaMap {
        argsz: std::mem::size_of::<DmaMap>() as u32,
        flags: VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE,
        vaddr,
        iova,
        size,
    };
    // SAFETY: the kernel reads a vfio_iommu_type1_dma_map of `argsz` bytes; the memory it
    // names belongs to this process and stays mapped while the device uses it (callers).
    check(unsafe { libc::ioctl(container.as_raw_fd(), VFIO_IOMMU_MAP_DMA(), &m) })?;
    Ok(())
}

/// `VFIO_IOMMU_UNMAP_DMA` of `[iova, iova + size)`.
pub fn unmap_dma(container: &File, iova: u64, size: u64) -> Result<()> {
    let m = DmaUnmap {
        argsz: std::mem::size_of::<DmaUnmap>() as u32,
        flags: 0,
        iova,
        size,
    };
    // SAFETY: the kernel reads (and writes back the size of) a vfio_iommu_type1_dma_unmap.
    check(unsafe { libc::ioctl(container.as_raw_fd(), VFIO_IOMMU_UNMAP_DMA(), &m) })?;
    Ok(())
}

/// A BAR mapped from a VFIO device fd; accesses are volatile and bounds-checked.
#[derive(Debug)]
pub struct MappedBar {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the mapping is device memory owned by this value; accesses are volatile and
// bounds-checked, and the device serialises them.
unsafe impl Send for MappedBar {}

impl MappedBar {
    /// Maps `len` bytes of `device` at `offset` (a region's offset from
    /// `VFIO_DEVICE_GET_REGION_INFO`), shared, read-write.
    pub fn map(device: &File, offset: u64, len: usize) -> Result<Self> {
        let off = usize::try_from(offset).map_err(std::io::Error::other)?;
        // The kernel validates offset and length against the BAR.
        let ptr = super::mm::mmap(
            std::ptr::null_mut(),
            len,
            libc::MAP_SHARED,
            device.as_raw_fd(),
            off,
        )?;
        Ok(Self { ptr, len })
    }

    fn at(&self, off: usize, width: usize) -> Option<*mut u8> {
        // SAFETY: `checked` proved off + width <= len, so the pointer stays in the mapping.
        checked(off, width, self.len).map(|o| unsafe { self.ptr.add(o) })
    }
}

impl Bar for MappedBar {
    fn read16(&self, off: usize) -> Option<u16> {
        // SAFETY: `at` proved the 2 aligned bytes are inside the live mapping.
        self.at(off, 2)
            .map(|p| unsafe { std::ptr::read_volatile(p.cast::<u16>()) })
    }
    fn read32(&self, off: usize) -> Option<u32> {
        // SAFETY: as in read16, for 4 bytes.
        self.at(off, 4)
            .map(|p| unsafe { std::ptr::read_volatile(p.cast::<u32>()) })
    }
    fn read64(&self, off: usize) -> Option<u64> {
        // SAFETY: as in read16, for 8 bytes.
        self.at(off, 8)
            .map(|p| unsafe { std::ptr::read_volatile(p.cast::<u64>()) })
    }
    fn write16(&self, off: usize, v: u16) -> bool {
        // SAFETY: as in read16.
        self.at(off, 2)
            .map(|p| unsafe { std::ptr::write_volatile(p.cast::<u16>(), v) })
            .is_some()
    }
    fn write32(&self, off: usize, v: u32) -> bool {
        // SAFETY: as in read32.
        self.at(off, 4)
            .map(|p| unsafe { std::ptr::write_volatile(p.cast::<u32>(), v) })
            .is_some()
    }
    fn write64(&self, off: usize, v: u64) -> bool {
        // SAFETY: as in read64.
        self.at(off, 8)
            .map(|p| unsafe { std::ptr::write_volatile(p.cast::<u64>(), v) })
            .is_some()
    }
    fn len(&self) -> usize {
        self.len
    }
}

impl Drop for MappedBar {
    fn drop(&mut self) {
        // SAFETY: ptr/len are exactly what mmap returned; nothing references the mapping now.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_match_linux_uapi() {
        // include/uapi/linux/vfio.h: _IO(VFIO_TYPE, VFIO_BASE + n) with VFIO_TYPE ';' (0x3b)
        // and VFIO_BASE 100 (0x64); _IO has no size or direction bits: 0x3b00 | (100 + n).
        assert_eq!(VFIO_GET_API_VERSION(), 0x3b64);
        assert_eq!(VFIO_CHECK_EXTENSION(), 0x3b65);
        assert_eq!(VFIO_SET_IOMMU(), 0x3b66);
        assert_eq!(VFIO_GROUP_GET_STATUS(), 0x3b67);
        assert_eq!(VFIO_GROUP_SET_CONTAINER(), 0x3b68);
        assert_eq!(VFIO_GROUP_GET_DEVICE_FD(), 0x3b6a);
        assert_eq!(VFIO_DEVICE_GET_REGION_INFO(), 0x3b6c);
        assert_eq!(VFIO_DEVICE_GET_IRQ_INFO(), 0x3b6d);
        assert_eq!(VFIO_DEVICE_SET_IRQS(), 0x3b6e);
        assert_eq!(VFIO_IOMMU_MAP_DMA(), 0x3b71);
        assert_eq!(VFIO_IOMMU_UNMAP_DMA(), 0x3b72);
    }

    #[test]
    fn argument_layouts_match_linux_uapi() {
        // vfio.h: struct vfio_iommu_type1_dma_map { __u32 argsz, flags; __u64 vaddr, iova,
        // size; } = 32 bytes; dma_unmap { argsz, flags, iova, size } = 24;
        // vfio_group_status { argsz, flags } = 8; vfio_region_info { argsz, flags, index,
        // cap_offset; __u64 size, offset } = 32; vfio_irq_info { argsz, flags, index,
        // count } = 16; vfio_irq_set { argsz, flags, index, start, count; data[] } = 20.
        assert_eq!(std::mem::size_of::<DmaMap>(), 32);
        assert_eq!(std::mem::size_of::<DmaUnmap>(), 24);
        assert_eq!(std::mem::size_of::<vfio_group_status>(), 8);
        assert_eq!(std::mem::size_of::<vfio_region_info>(), 32);
        assert_eq!(std::mem::size_of::<vfio_irq_info>(), 16);
        assert_eq!(IRQ_SET_HEADER, 5 * 4);
        // VFIO_DMA_MAP_FLAG_READ (1 << 0), _WRITE (1 << 1); VFIO_IRQ_SET_DATA_EVENTFD
        // (1 << 2), VFIO_IRQ_SET_ACTION_TRIGGER (1 << 5); VFIO_PCI_MSIX_IRQ_INDEX = 2 (after
        // INTX 0 and MSI 1); VFIO_TYPE1v2_IOMMU = 3; VFIO_GROUP_FLAGS_VIABLE (1 << 0);
        // VFIO_REGION_INFO_FLAG_MMAP (1 << 2); VFIO_PCI_CONFIG_REGION_INDEX = 7 (after BARs
        // 0-5 and the ROM).
        assert_eq!(
            (VFIO_DMA_MAP_FLAG_READ, VFIO_DMA_MAP_FLAG_WRITE),
            (0x1, 0x2)
        );
        assert_eq!(
            (VFIO_IRQ_SET_DATA_EVENTFD, VFIO_IRQ_SET_ACTION_TRIGGER),
            (0x4, 0x20)
        );
        assert_eq!(MSIX_IRQ_INDEX, 2);
        assert_eq!(VFIO_TYPE1v2_IOMMU, 3);
        assert_eq!(VFIO_GROUP_FLAGS_VIABLE, 1);
        assert_eq!(VFIO_REGION_INFO_FLAG_MMAP, 4);
        assert_eq!(VFIO_PCI_CONFIG_REGION_INDEX, 7);
    }
}
