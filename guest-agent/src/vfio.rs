//! Minimal VFIO userspace driver plumbing (Linux `include/uapi/linux/vfio.h`, type1v2 IOMMU;
//! `Documentation/driver-api/vfio.rst`): bind a PCI function to vfio-pci, open its group in
//! a container, get the device fd, read region info, map BARs and read configuration space.
//! The ioctls themselves are in [`crate::sys::vfio`].

use crate::sys::vfio::{self as sys, MappedBar};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
pub use sys::MSIX_IRQ_INDEX;
use sys::{
    VFIO_TYPE1v2_IOMMU, VFIO_GROUP_FLAGS_VIABLE, VFIO_PCI_CONFIG_REGION_INDEX,
    VFIO_REGION_INFO_FLAG_MMAP,
};

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
        let api =
            sys::api_version(&container).map_err(VfioError::sys(bdf, "VFIO_GET_API_VERSION"))?;
        if api != 0 {
            return Err(VfioError::Unsupported {
                bdf: bdf.to_owned(),
                what: format!("VFIO API version {api}, expected 0"),
            });
        }
        if sys::check_extension(&container, VFIO_TYPE1v2_IOMMU).unwrap_or(0) <= 0 {
            return Err(VfioError::Unsupported {
                bdf: bdf.to_owned(),
                what: "no type1v2 IOMMU support".into(),
            });
        }
        let gfile = rw(&format!("/dev/vfio/{group}"))
            .map_err(VfioError::sys(bdf, "opening the VFIO group"))?;
        let flags =
            sys::group_flags(&gfile).map_err(VfioError::sys(bdf, "VFIO_GROUP_GET_STATUS"))?;
        if flags & VFIO_GROUP_FLAGS_VIABLE == 0 {
            return Err(VfioError::Unsupported {
                bdf: bdf.to_owned(),
                what: format!(
                    "IOMMU group {group} is not viable (another device in it is bound elsewhere)"
                ),
            });
        }
        sys::group_set_container(&gfile, &container)
            .map_err(VfioError::sys(bdf, "VFIO_GROUP_SET_CONTAINER"))?;
        sys::set_iommu(&container, VFIO_TYPE1v2_IOMMU)
            .map_err(VfioError::sys(bdf, "VFIO_SET_IOMMU"))?;
        let name = std::ffi::CString::new(bdf).map_err(|_| VfioError::Unsupported {
            bdf: bdf.to_owned(),
            what: "device name contains NUL".into(),
        })?;
        let device = sys::group_get_device(&gfile, &name)
            .map_err(VfioError::sys(bdf, "VFIO_GROUP_GET_DEVICE_FD"))?;
        Ok(Self {
            bdf: bdf.to_owned(),
            group,
            container,
            _group: gfile,
            device,
        })
    }

    pub fn region(&self, index: u32) -> Result<RegionInfo, VfioError> {
        let info = sys::region_info(&self.device, index)
            .map_err(VfioError::sys(&self.bdf, "VFIO_DEVICE_GET_REGION_INFO"))?;
        Ok(RegionInfo {
            index,
            flags: info.flags,
            size: info.size,
            offset: info.offset,
        })
    }

    /// Number of interrupts at `index` (2 = MSI-X).
    pub fn irq_count(&self, index: u32) -> Result<u32, VfioError> {
        sys::irq_count(&self.device, index)
            .map_err(VfioError::sys(&self.bdf, "VFIO_DEVICE_GET_IRQ_INFO"))
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
        sys::map_dma(&self.container, vaddr, iova, size)
            .map_err(VfioError::sys(&self.bdf, "VFIO_IOMMU_MAP_DMA"))
    }

    /// Removes the device's mapping of `[iova, iova+size)` (unpinning the memory).
    pub fn unmap_dma(&self, iova: u64, size: u64) -> Result<(), VfioError> {
        sys::unmap_dma(&self.container, iova, size)
            .map_err(VfioError::sys(&self.bdf, "VFIO_IOMMU_UNMAP_DMA"))
    }

    /// Arms MSI-X vectors `0..fds.len()` with eventfds.
    pub fn set_msix(&self, fds: &[i32]) -> Result<(), VfioError> {
        sys::set_irq_eventfds(&self.device, MSIX_IRQ_INDEX, fds)
            .map_err(VfioError::sys(&self.bdf, "VFIO_DEVICE_SET_IRQS"))
    }

    /// Writes configuration space (vfio-pci virtualises what it must, e.g. BARs).
    pub fn config_write(&self, offset: u64, data: &[u8]) -> Result<(), VfioError> {
        let r = self.region(VFIO_PCI_CONFIG_REGION_INDEX)?;
        self.device
            .write_all_at(data, r.offset + offset)
            .map_err(VfioError::sys(&self.bdf, "writing configuration space"))
    }

    /// Maps a BAR.
    pub fn map_bar(&self, index: u32) -> Result<MappedBar, VfioError> {
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
        MappedBar::map(&self.device, r.offset, len)
            .map_err(VfioError::sys(&self.bdf, "mmap of a BAR"))
    }
}
