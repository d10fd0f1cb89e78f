//! Userspace drivers' identity probes for the two emulated devices, through guest vfio-pci.
//! Register positions come from the device crates, so driver and device cannot disagree.

use crate::protocol::{ChmuIdentity, RegisterBlock, SdxiIdentity, VfioFacts};
use crate::sys::Bar;
use crate::vfio::{VfioDevice, VfioError};
use device_cxl_hmu::regs as hmu;
use device_sdxi::regs as sdxi;

/// Errors of a driver probe.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error(transparent)]
    Vfio(#[from] VfioError),
    #[error("{0}")]
    Device(String),
}

fn facts(dev: &VfioDevice) -> Result<VfioFacts, VfioError> {
    let mut bars = Vec::new();
    for i in 0..6u8 {
        let r = dev.region(u32::from(i))?;
        if r.size > 0 {
            bars.push((i, r.size, r.mappable()));
        }
    }
    Ok(VfioFacts {
        iommu_group: dev.group,
        bars,
        msix_vectors: dev.irq_count(2)?,
        config_size: dev.region(7)?.size,
    })
}

/// Reads the SDXi function's identity registers (SNIA SDXi v1.0a MMIO register map) through the BAR0 mmap.
pub fn probe_sdxi(bdf: &str) -> Result<SdxiIdentity, DriverError> {
    crate::vfio::bind_vfio_pci(bdf)?;
    let dev = VfioDevice::open(bdf)?;
    let bar0 = dev.map_bar(u32::from(sdxi::CONTROL_BAR))?;
    let rd = |off: u64| {
        bar0.read64(off as usize)
            .ok_or_else(|| DriverError::Device(format!("BAR0 offset {off:#x} outside the mapping")))
    };
    let version = sdxi::Version::from(rd(sdxi::MMIO_VERSION)?);
    let cap0 = rd(sdxi::MMIO_CAP0)?;
    let cap1 = rd(sdxi::MMIO_CAP1)?;
    Ok(SdxiIdentity {
        vfio: facts(&dev)?,
        version_major: version.major(),
        version_minor: version.minor(),
        cap0,
        cap1,
        sts0: rd(sdxi::MMIO_STS0)?,
        max_cxt: sdxi::Cap1::from(cap1).max_cxt(),
        db_stride_bytes: 4096 << sdxi::Cap0::from(cap0).db_stride(),
    })
}

/// Finds the CHMU through the Register Locator DVSEC and reads its capabilities (CXL 3.2
/// §8.1.9, §8.2.8), and the monitored range from DVSEC 0 Range 1.
pub fn probe_chmu(bdf: &str) -> Result<ChmuIdentity, DriverError> {
    crate::vfio::bind_vfio_pci(bdf)?;
    let dev = VfioDevice::open(bdf)?;
    let cfg = dev.config()?;
    let dvsecs = vfio_device::pci::dvsecs(&cfg);
    let cxl = |id: u16| {
        dvsecs
            .iter()
            .find(|d| d.vendor == hmu::CXL_DVSEC_VENDOR && d.id == id)
    };
    let loc = cxl(hmu::CXL_DVSEC_REG_LOCATOR)
        .ok_or_else(|| DriverError::Device("no CXL Register Locator DVSEC".into()))?;
    let mut blocks = Vec::new();
    let mut e = loc.offset + hmu::REG_LOCATOR_FIRST_ENTRY;
    while e + 8 <= loc.offset + loc.length && e + 8 <= cfg.len() {
        let low = u32::from_le_bytes([cfg[e], cfg[e + 1], cfg[e + 2], cfg[e + 3]]);
        let high = u32::from_le_bytes([cfg[e + 4], cfg[e + 5], cfg[e + 6], cfg[e + 7]]);
        let l = hmu::RegLocLow::from(low);
        blocks.push(RegisterBlock {
            block_id: l.block_id(),
            bar: l.bir(),
            offset: l.offset(high),
        });
        e += 8;
    }
    let chmu = blocks
        .iter()
        .find(|b| b.block_id == hmu::RBI_CHMU)
        .copied()
        .ok_or_else(|| DriverError::Device("Register Locator has no CHMU block (id 5)".into()))?;
    let range = cxl(hmu::CXL_DVSEC_PCIE_DEVICE)
        .and_then(|d| device_cxl_hmu::spec::dvsec::decode_range1(&cfg, d.offset))
        .ok_or_else(|| DriverError::Device("no PCIe DVSEC for CXL devices (range 1)".into()))?;
    let bar = dev.map_bar(u32::from(chmu.bar))?;
    let rd = |off: u64| {
        usize::try_from(chmu.offset + off)
            .ok()
            .and_then(|o| bar.read64(o))
            .ok_or_else(|| {
                DriverError::Device(format!("CHMU offset {off:#x} outside BAR{}", chmu.bar))
            })
    };
    let common_cap0 = rd(hmu::CHMU_COMMON_CAP0)?;
    let common_cap1 = rd(hmu::CHMU_COMMON_CAP1)?;
    let instances = hmu::CommonCap0::from(common_cap0).num_instances();
    let len = u64::from(hmu::CommonCap1::from(common_cap1).instance_length());
    let mut instance_cap0 = Vec::new();
    let mut instance_cap1 = Vec::new();
    let mut counter_width = 0;
    for i in 0..u64::from(instances) {
        let base = hmu::CHMU_FIRST_INSTANCE + i * len;
        instance_cap0.push(rd(base + hmu::CHMU_CAP0)?);
        instance_cap1.push(rd(base + hmu::CHMU_CAP1)?);
        counter_width = hmu::ChmuStatus::from(rd(base + hmu::CHMU_STATUS)?).counter_width();
    }
    Ok(ChmuIdentity {
        vfio: facts(&dev)?,
        register_blocks: blocks,
        hpa_base: range.hpa_base,
        size: range.size,
        common_cap0,
        common_cap1,
        instances,
        hotlist_size: instance_cap0
            .first()
            .map_or(0, |c| hmu::ChmuCap0::from(*c).hotlist_size()),
        instance_cap0,
        instance_cap1,
        counter_width,
    })
}
