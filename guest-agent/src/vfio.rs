//! Minimal VFIO userspace driver plumbing (Linux `include/uapi/linux/vfio.h`, type1v2 IOMMU):
//! bind a PCI function to vfio-pci, open its group in a container, get the device fd, read
//! region info, map BARs and read configuration space.
//!
//! Every raw call lives here, each `unsafe` with its reason; the ioctl numbers are declared
//! once with `vmm-sys-util` and checked against the kernel header's values in tests.

use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use vfio_bindings::bindings::vfio::{
    vfio_group_status, vfio_irq_info, vfio_region_info, VFIO_TYPE1v2_IOMMU,
    VFIO_GROUP_FLAGS_VIABLE, VFIO_PCI_CONFIG_REGION_INDEX, VFIO_REGION_INFO_FLAG_MMAP,
};
use vmm_sys_util::ioctl_io_nr;

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
const VFIO_DMA_MAP_FLAG_READ: u32 = 1;
const VFIO_DMA_MAP_FLAG_WRITE: u32 = 2;
const VFIO_IRQ_SET_DATA_EVENTFD: u32 = 1 << 2;
const VFIO_IRQ_SET_ACTION_TRIGGER: u32 = 1 << 5;
/// MSI-X interrupt index.
pub const MSIX_IRQ_INDEX: u32 = 2;

/// Errors of the VFIO plumbing; each names the device and the step.
#[derive(Debug, thiserror::Error)]
pub enum VfioError {
    #[error("{bdf}: {step}")]
    Sys {
        bdf: String,
        step: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{bdf}: {what}")]
    Unsupported { bdf: String, what: String },
}

impl VfioError {
    fn sys(bdf: &str, step: &'static str) -> impl FnOnce(std::io::Error) -> Self {
        let bdf = bdf.to_owned();
        move |source| Self::Sys { bdf, step, source }
    }
}

fn last_err() -> std::io::Error {
    std::io::Error::last_os_error()
}

/// Binds `bdf` to vfio-pci through `driver_override` (unbinding any current driver).
pub fn bind_vfio_pci(bdf: &str) -> Result<(), VfioError> {
    let dev = PathBuf::from("/sys/bus/pci/devices").join(bdf);
    let current = std::fs::read_link(dev.join("driver"))
        .ok()
        .and_then(|p| p.file_name().map(|f| f.to_string_lossy().into_owned()));
    if current.as_deref() == Some("vfio-pci") {
        return Ok(());
    }
    std::fs::write(dev.join("driver_override"), "vfio-pci")
        .map_err(VfioError::sys(bdf, "writing driver_override"))?;
    if current.is_some() {
        std::fs::write(dev.join("driver/unbind"), bdf)
            .map_err(VfioError::sys(bdf, "unbinding the current driver"))?;
    }
    std::fs::write("/sys/bus/pci/drivers_probe", bdf)
        .map_err(VfioError::sys(bdf, "probing vfio-pci"))?;
    Ok(())
}

/// The IOMMU group number of `bdf`.
pub fn iommu_group(bdf: &str) -> Option<u32> {
    std::fs::read_link(
        Path::new("/sys/bus/pci/devices")
            .join(bdf)
            .join("iommu_group"),
    )
    .ok()?
    .file_name()?
    .to_str()?
    .parse()
    .ok()
}

/// An open VFIO device in its own container.
#[derive(Debug)]
pub struct VfioDevice {
    pub bdf: String,
    pub group: u32,
    container: File,
    _group: File,
    device: File,
}

/// One region as vfio-pci reports it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RegionInfo {
    pub index: u32,
    pub flags: u32,
    pub size: u64,
    pub offset: u64,
}

impl RegionInfo {
    pub fn mappable(&self) -> bool {
        self.flags & VFIO_REGION_INFO_FLAG_MMAP != 0
    }
}

impl VfioDevice {
    /// Opens `bdf` (already bound to vfio-pci) through its IOMMU group.
    pub fn open(bdf: &str) -> Result<Self, VfioError> {
        let group = iommu_group(bdf).ok_or_else(|| VfioError::Unsupported {
            bdf: bdf.to_owned(),
            what: "no IOMMU group (is the virtual IOMMU on and intel_iommu=on?)".into(),
        })?;
        let rw = |p: &str| OpenOptions::new().read(true).write(true).open(p);
        let container =
            rw("/dev/vfio/vfio").map_err(VfioError::sys(bdf, "opening /dev/vfio/vfio"))?;
        // SAFETY: argument-less ioctl on a file we own.
        let api = unsafe { libc::ioctl(container.as_raw_fd(), VFIO_GET_API_VERSION()) };
        if api != 0 {
            return Err(VfioError::Unsupported {
                bdf: bdf.to_owned(),
                what: format!("VFIO API version {api}, expected 0"),
            });
        }
        // SAFETY: VFIO_CHECK_EXTENSION takes an integer argument by value.
        let ext = unsafe {
            libc::ioctl(
                container.as_raw_fd(),
                VFIO_CHECK_EXTENSION(),
                VFIO_TYPE1v2_IOMMU as libc::c_ulong,
            )
        };
        if ext <= 0 {
            return Err(VfioError::Unsupported {
                bdf: bdf.to_owned(),
                what: "no type1v2 IOMMU support".into(),
            });
        }
        let gfile = rw(&format!("/dev/vfio/{group}"))
            .map_err(VfioError::sys(bdf, "opening the VFIO group"))?;
        let mut status = vfio_group_status {
            argsz: std::mem::size_of::<vfio_group_status>() as u32,
            flags: 0,
        };
        // SAFETY: the kernel writes a vfio_group_status into `status`, which is live and sized.
        if unsafe { libc::ioctl(gfile.as_raw_fd(), VFIO_GROUP_GET_STATUS(), &mut status) } < 0 {
            return Err(VfioError::sys(bdf, "VFIO_GROUP_GET_STATUS")(last_err()));
        }
        if status.flags & VFIO_GROUP_FLAGS_VIABLE == 0 {
            return Err(VfioError::Unsupported {
                bdf: bdf.to_owned(),
                what: format!(
                    "IOMMU group {group} is not viable (another device in it is bound elsewhere)"
                ),
            });
        }
        let cfd: libc::c_int = container.as_raw_fd();
        // SAFETY: the kernel reads one int (the container fd) from the pointer.
        if unsafe { libc::ioctl(gfile.as_raw_fd(), VFIO_GROUP_SET_CONTAINER(), &cfd) } < 0 {
            return Err(VfioError::sys(bdf, "VFIO_GROUP_SET_CONTAINER")(last_err()));
        }
        // SAFETY: integer argument by value.
        if unsafe {
            libc::ioctl(
                container.as_raw_fd(),
                VFIO_SET_IOMMU(),
                VFIO_TYPE1v2_IOMMU as libc::c_ulong,
            )
        } < 0
        {
            return Err(VfioError::sys(bdf, "VFIO_SET_IOMMU")(last_err()));
        }
        let name = std::ffi::CString::new(bdf).map_err(|_| VfioError::Unsupported {
            bdf: bdf.to_owned(),
            what: "device name contains NUL".into(),
        })?;
        // SAFETY: the kernel reads a NUL-terminated string from `name`, which outlives the call.
        let dfd =
            unsafe { libc::ioctl(gfile.as_raw_fd(), VFIO_GROUP_GET_DEVICE_FD(), name.as_ptr()) };
        if dfd < 0 {
            return Err(VfioError::sys(bdf, "VFIO_GROUP_GET_DEVICE_FD")(last_err()));
        }
        // SAFETY: the ioctl returned a new fd that nothing else owns.
        let device = unsafe { File::from_raw_fd(dfd) };
        Ok(Self {
            bdf: bdf.to_owned(),
            group,
            container,
            _group: gfile,
            device,
        })
    }

    pub fn region(&self, index: u32) -> Result<RegionInfo, VfioError> {
        let mut info = vfio_region_info {
            argsz: std::mem::size_of::<vfio_region_info>() as u32,
            index,
            ..Default::default()
        };
        // SAFETY: the kernel fills a vfio_region_info of `argsz` bytes at `info`.
        if unsafe {
            libc::ioctl(
                self.device.as_raw_fd(),
                VFIO_DEVICE_GET_REGION_INFO(),
                &mut info,
            )
        } < 0
        {
            return Err(VfioError::sys(&self.bdf, "VFIO_DEVICE_GET_REGION_INFO")(
                last_err(),
            ));
        }
        Ok(RegionInfo {
            index,
            flags: info.flags,
            size: info.size,
            offset: info.offset,
        })
    }

    /// Number of interrupts at `index` (2 = MSI-X).
    pub fn irq_count(&self, index: u32) -> Result<u32, VfioError> {
        let mut info = vfio_irq_info {
            argsz: std::mem::size_of::<vfio_irq_info>() as u32,
            index,
            ..Default::default()
        };
        // SAFETY: the kernel fills a vfio_irq_info of `argsz` bytes at `info`.
        if unsafe {
            libc::ioctl(
                self.device.as_raw_fd(),
                VFIO_DEVICE_GET_IRQ_INFO(),
                &mut info,
            )
        } < 0
        {
            return Err(VfioError::sys(&self.bdf, "VFIO_DEVICE_GET_IRQ_INFO")(
                last_err(),
            ));
        }
        Ok(info.count)
    }

    /// The whole configuration space.
    pub fn config(&self) -> Result<Vec<u8>, VfioError> {
        let r = self.region(VFIO_PCI_CONFIG_REGION_INDEX)?;
        let mut buf = vec![0u8; r.size.min(4096) as usize];
        // Read dword by dword: vfio-pci splits larger reads anyway.
        for (i, chunk) in buf.chunks_mut(4).enumerate() {
            self.device
                .read_exact_at(chunk, r.offset + 4 * i as u64)
                .map_err(VfioError::sys(&self.bdf, "reading configuration space"))?;
        }
        Ok(buf)
    }

    /// Makes `size` bytes at `vaddr` (pinned by the kernel) reachable by the device at `iova`.
    pub fn map_dma(&self, vaddr: u64, iova: u64, size: u64) -> Result<(), VfioError> {
        let m = DmaMap {
            argsz: std::mem::size_of::<DmaMap>() as u32,
            flags: VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE,
            vaddr,
            iova,
            size,
        };
        // SAFETY: the kernel reads a vfio_iommu_type1_dma_map of `argsz` bytes; the memory it
        // names belongs to this process and stays mapped while the device uses it.
        if unsafe { libc::ioctl(self.container.as_raw_fd(), VFIO_IOMMU_MAP_DMA(), &m) } < 0 {
            return Err(VfioError::sys(&self.bdf, "VFIO_IOMMU_MAP_DMA")(last_err()));
        }
        Ok(())
    }

    /// Removes the device's mapping of `[iova, iova+size)` (unpinning the memory).
    pub fn unmap_dma(&self, iova: u64, size: u64) -> Result<(), VfioError> {
        #[repr(C)]
        struct DmaUnmap {
            argsz: u32,
            flags: u32,
            iova: u64,
            size: u64,
        }
        let m = DmaUnmap {
            argsz: std::mem::size_of::<DmaUnmap>() as u32,
            flags: 0,
            iova,
            size,
        };
        // SAFETY: the kernel reads (and writes back the size of) a vfio_iommu_type1_dma_unmap.
        if unsafe { libc::ioctl(self.container.as_raw_fd(), VFIO_IOMMU_UNMAP_DMA(), &m) } < 0 {
            return Err(VfioError::sys(&self.bdf, "VFIO_IOMMU_UNMAP_DMA")(last_err()));
        }
        Ok(())
    }

    /// Arms MSI-X vectors `0..fds.len()` with eventfds.
    pub fn set_msix(&self, fds: &[i32]) -> Result<(), VfioError> {
        let mut buf = Vec::with_capacity(20 + 4 * fds.len());
        let argsz = (20 + 4 * fds.len()) as u32;
        for v in [
            argsz,
            VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER,
            MSIX_IRQ_INDEX,
            0,
            fds.len() as u32,
        ] {
            buf.extend_from_slice(&v.to_ne_bytes());
        }
        for fd in fds {
            buf.extend_from_slice(&fd.to_ne_bytes());
        }
        // SAFETY: the kernel reads a vfio_irq_set header followed by `count` fds, all in `buf`.
        if unsafe {
            libc::ioctl(
                self.device.as_raw_fd(),
                VFIO_DEVICE_SET_IRQS(),
                buf.as_ptr(),
            )
        } < 0
        {
            return Err(VfioError::sys(&self.bdf, "VFIO_DEVICE_SET_IRQS")(last_err()));
        }
        Ok(())
    }

    /// Writes configuration space (vfio-pci virtualises what it must, e.g. BARs).
    pub fn config_write(&self, offset: u64, data: &[u8]) -> Result<(), VfioError> {
        let r = self.region(VFIO_PCI_CONFIG_REGION_INDEX)?;
        self.device
            .write_all_at(data, r.offset + offset)
            .map_err(VfioError::sys(&self.bdf, "writing configuration space"))
    }

    /// Maps a BAR.
    pub fn map_bar(&self, index: u32) -> Result<BarMapping, VfioError> {
        let r = self.region(index)?;
        if r.size == 0 || !r.mappable() {
            return Err(VfioError::Unsupported {
                bdf: self.bdf.clone(),
                what: format!(
                    "BAR{index} (size {:#x}, flags {:#x}) is not mappable",
                    r.size, r.flags
                ),
            });
        }
        let len = usize::try_from(r.size).map_err(|_| VfioError::Unsupported {
            bdf: self.bdf.clone(),
            what: format!("BAR{index} too large"),
        })?;
        // SAFETY: a fresh shared mapping of the device fd at the region's offset; the kernel
        // validates offset and length against the BAR. The mapping is owned by BarMapping.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                self.device.as_raw_fd(),
                r.offset as libc::off_t,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(VfioError::sys(&self.bdf, "mmap of a BAR")(last_err()));
        }
        Ok(BarMapping { ptr: p.cast(), len })
    }
}

/// A mapped BAR; accesses are volatile and bounds-checked.
#[derive(Debug)]
pub struct BarMapping {
    ptr: *mut u8,
    len: usize,
}

impl BarMapping {
    fn checked(&self, off: usize, width: usize) -> Option<*mut u8> {
        (off.is_multiple_of(width) && off.checked_add(width)? <= self.len)
            // SAFETY: off + width <= len, so the pointer stays inside the mapping.
            .then(|| unsafe { self.ptr.add(off) })
    }

    pub fn read64(&self, off: usize) -> Option<u64> {
        // SAFETY: `checked` proved the 8 aligned bytes are inside the live mapping.
        self.checked(off, 8)
            .map(|p| unsafe { std::ptr::read_volatile(p.cast::<u64>()) })
    }

    pub fn read32(&self, off: usize) -> Option<u32> {
        // SAFETY: as in read64, for 4 bytes.
        self.checked(off, 4)
            .map(|p| unsafe { std::ptr::read_volatile(p.cast::<u32>()) })
    }

    pub fn read16(&self, off: usize) -> Option<u16> {
        // SAFETY: as in read64, for 2 bytes.
        self.checked(off, 2)
            .map(|p| unsafe { std::ptr::read_volatile(p.cast::<u16>()) })
    }

    pub fn write64(&self, off: usize, v: u64) -> bool {
        // SAFETY: as in read64.
        self.checked(off, 8)
            .map(|p| unsafe { std::ptr::write_volatile(p.cast::<u64>(), v) })
            .is_some()
    }

    pub fn write16(&self, off: usize, v: u16) -> bool {
        // SAFETY: as in read64, for 2 bytes.
        self.checked(off, 2)
            .map(|p| unsafe { std::ptr::write_volatile(p.cast::<u16>(), v) })
            .is_some()
    }

    pub fn write32(&self, off: usize, v: u32) -> bool {
        // SAFETY: as in read64, for 4 bytes.
        self.checked(off, 4)
            .map(|p| unsafe { std::ptr::write_volatile(p.cast::<u32>(), v) })
            .is_some()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Drop for BarMapping {
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
        // Values of _IO(';', 100 + n) from include/uapi/linux/vfio.h, computed by hand.
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
        assert_eq!(std::mem::size_of::<DmaMap>(), 32);
    }
}
