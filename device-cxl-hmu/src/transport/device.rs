//! The CXL memory device function that carries the CHMU, served over vfio-user:
//! - configuration space: CXL memory device class (050210h), BAR 0 (MSI-X table and PBA),
//!   BAR [`REGS_BAR`] (the register blocks), the PCIe DVSEC for CXL Devices and the Register
//!   Locator DVSEC (CXL 3.2 §8.1.3, §8.1.9; [`crate::spec::dvsec`]: the monitored range is
//!   DVSEC Range 1, so Linux's `cxl_pci` binds the function and registers a memdev), and the
//!   Device Serial Number Extended Capability (PCIe Base 6.0 §7.9.3);
//! - BAR accesses routed to the component and memory device blocks
//!   ([`crate::core::cxl_blocks`]) and the CHMU block ([`crate::core::chmu`]); hotlist pages
//!   as sparse mmap areas of the BAR ([`super::hotlist_map`]);
//! - control commands (`state`, `overflow` fault injection) and the counter dump
//!   ([`crate::metrics::HmuMetrics`]).
//!
//! Left out: the CXL.mem data path itself (the guest's accesses reach node 1's RAM directly;
//! the CHMU learns of them from the feeds, [`super::feed`]).

use crate::core::chmu::ChmuBlock;
use crate::core::hotness::Hotness;
use crate::metrics::HmuMetrics;
use crate::spec::dvsec::*;
/// The DVSEC's range and its decoder, where guest drivers have found them.
pub use crate::spec::dvsec::{decode_range1, MemRange};
use crate::spec::layout::ChmuConfig;
use crate::spec::regs::*;
use std::sync::{Arc, Mutex, MutexGuard};
use vfio_device::pci::{
    BarDef, ConfigError, ConfigSpace, ConfigSpaceBuilder, MsixDef, CONFIG_SPACE_EXTENDED,
};

/// Size of the registers' BAR: the register blocks (plus the hotlist window if there is
/// one), a power of two.
pub fn regs_bar_size(cfg: &ChmuConfig) -> u64 {
    let blocks = CHMU_BLOCK_OFFSET + CHMU_BLOCK_SIZE;
    match cfg.hotlist_window {
        Some(w) => (w + cfg.hotlist_window_size())
            .max(blocks)
            .next_power_of_two(),
        None => blocks.next_power_of_two(),
    }
}

/// Builds the configuration space. The range must be 256 MiB aligned (DVSEC granularity);
/// `serial` is the PCIe Device Serial Number (Linux's memdev `serial`).
pub fn config_space(
    cfg: &ChmuConfig,
    range: MemRange,
    serial: u64,
) -> Result<ConfigSpace, ConfigError> {
    Ok(ConfigSpaceBuilder::new(
        EMU_VENDOR_ID,
        EMU_DEVICE_ID,
        CXL_MEMDEV_CLASS_CODE,
        1,
        CONFIG_SPACE_EXTENDED,
    )
    .bar(BarDef {
        index: MSIX_BAR,
        size: 0x1000,
        is_64bit: true,
        prefetchable: false,
    })?
    .bar(BarDef {
        index: REGS_BAR,
        size: regs_bar_size(cfg),
        is_64bit: true,
        prefetchable: false,
    })?
    .msix(MsixDef {
        vectors: u16::from(cfg.msix_vector) + 1,
        table_bar: MSIX_BAR,
        table_offset: 0,
        pba_bar: MSIX_BAR,
        pba_offset: 0x800,
    })?
    .pcie_endpoint()?
    .dvsec(
        CXL_DVSEC_VENDOR,
        2,
        CXL_DVSEC_PCIE_DEVICE,
        &cxl_device_dvsec_body(range),
    )?
    .dvsec(
        CXL_DVSEC_VENDOR,
        0,
        CXL_DVSEC_REG_LOCATOR,
        &register_locator_body(),
    )?
    .device_serial_number(serial)?
    .build())
}

/// The CHMU's registers and counting state, shared by the transport (MMIO) and the feeds.
#[derive(Debug)]
pub struct HmuState {
    pub block: ChmuBlock,
    pub hotness: Hotness,
}

impl HmuState {
    pub fn new(cfg: ChmuConfig, range: MemRange) -> Self {
        let instances = cfg.instances;
        let cfg = ChmuConfig {
            capacity: range.size,
            ..cfg
        };
        Self {
            block: ChmuBlock::new(cfg),
            hotness: Hotness::new(instances, range.size),
        }
    }
}

/// The device model behind the transport.
#[derive(Debug)]
pub struct HmuDevice {
    pub state: Arc<Mutex<HmuState>>,
    pub range: MemRange,
    /// The component and memory device register blocks (mailbox) in front of the CHMU.
    pub cxl: crate::core::cxl_blocks::CxlBlocks,
    /// The clock of the mailbox's background operations (ns since the device started).
    #[cfg(feature = "server")]
    start: std::time::Instant,
    #[cfg(feature = "server")]
    interrupts: vfio_device::interrupts::Interrupts,
    /// The memfd backing the hotlists the guest maps (paged layout or window).
    #[cfg(feature = "server")]
    hotlists: Option<crate::transport::hotlist_map::HotlistFile>,
}

impl HmuDevice {
    /// The device; with `mapped`, its hotlists live in a memfd the client may map into the
    /// guest (sparse mmap areas of the registers' BAR), otherwise every read is a message.
    pub fn new(cfg: ChmuConfig, range: MemRange, mapped: bool) -> Self {
        let state = HmuState::new(cfg, range);
        #[cfg(feature = "server")]
        let cfg = state.block.config().clone();
        #[allow(unused_mut)]
        let mut d = Self {
            state: Arc::new(Mutex::new(state)),
            range,
            cxl: crate::core::cxl_blocks::CxlBlocks::new(range),
            #[cfg(feature = "server")]
            start: std::time::Instant::now(),
            #[cfg(feature = "server")]
            interrupts: vfio_device::interrupts::Interrupts::default(),
            #[cfg(feature = "server")]
            hotlists: None,
        };
        #[cfg(feature = "server")]
        if mapped || cfg.hotlist_window.is_some() {
            match crate::transport::hotlist_map::MappedHotlist::new(&cfg, regs_bar_size(&cfg)) {
                Ok(Some((file, mem))) => {
                    d.lock().block.set_hotlist_memory(Box::new(mem));
                    d.hotlists = Some(file);
                }
                Ok(None) => tracing::warn!(
                    "compact CHMU layout: hotlists are not page aligned and stay behind the socket"
                ),
                Err(e) => {
                    tracing::error!(error = %e, "hotlists not mappable; they stay behind the socket")
                }
            }
        }
        #[cfg(not(feature = "server"))]
        let _ = mapped;
        d
    }

    /// Nanoseconds since the device started (the mailbox's clock).
    #[cfg(feature = "server")]
    fn now(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Every counter of the device, now.
    pub fn metrics(&self) -> HmuMetrics {
        let s = self.lock();
        HmuMetrics {
            chmu: s.block.counters().clone(),
            hotness: s.hotness.counters.clone(),
            range: self.range,
            cxl: self.cxl.counters(),
        }
    }

    pub fn lock(&self) -> MutexGuard<'_, HmuState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(feature = "server")]
impl vfio_device::server::PciDevice for HmuDevice {
    fn name(&self) -> &'static str {
        "cxl-hmu"
    }

    fn interrupts(&self) -> vfio_device::interrupts::Interrupts {
        self.interrupts.clone()
    }

    fn bar_read(&mut self, bar: u8, offset: u64, data: &mut [u8]) {
        if bar == REGS_BAR && self.cxl.read(offset, data, self.now()) {
            return;
        }
        match offset.checked_sub(CHMU_BLOCK_OFFSET) {
            Some(rel) if bar == REGS_BAR && rel < CHMU_BLOCK_SIZE => {
                self.lock().block.mmio_read(rel, data)
            }
            _ if bar == REGS_BAR && offset >= CHMU_HOTLIST_WINDOW => self
                .lock()
                .block
                .window_read(offset - CHMU_HOTLIST_WINDOW, data),
            _ => data.fill(0),
        }
    }

    fn bar_mmap_areas(&self, bar: u8) -> Option<(std::os::fd::RawFd, Vec<(u64, u64)>)> {
        let f = self.hotlists.as_ref().filter(|_| bar == REGS_BAR)?;
        Some((f.fd(), f.areas.clone()))
    }

    fn bar_write(&mut self, bar: u8, offset: u64, data: &[u8]) {
        if bar == REGS_BAR && self.cxl.write(offset, data, self.now()) {
            return;
        }
        if let Some(rel) = offset.checked_sub(CHMU_BLOCK_OFFSET) {
            if bar == REGS_BAR && rel < CHMU_BLOCK_SIZE {
                self.lock().block.mmio_write(rel, data);
            }
        }
    }

    fn reset(&mut self) {
        self.cxl.reset();
        let mut s = self.lock();
        s.block.reset();
        let n = s.block.config().instances;
        for i in 0..n {
            s.hotness.clear(i);
        }
    }

    fn control(&mut self, req: &serde_json::Value) -> Result<serde_json::Value, String> {
        if req["cmd"].as_str() == Some("overflow") {
            let i = req["instance"]
                .as_u64()
                .and_then(|i| u8::try_from(i).ok())
                .ok_or("overflow needs \"instance\": an instance number")?;
            let irqs = {
                let mut s = self.lock();
                let HmuState { block, hotness } = &mut *s;
                if i >= block.config().instances {
                    return Err(format!("no instance {i}"));
                }
                hotness.force_overflow(block, i)
            };
            for v in &irqs {
                self.interrupts.trigger(*v);
            }
            return Ok(serde_json::json!({ "overflow": i, "interrupts": irqs }));
        }
        if req["cmd"].as_str() != Some("state") {
            return Err(format!(
                "unknown command {} (counters, state, overflow)",
                req["cmd"]
            ));
        }
        let s = self.lock();
        let b = &s.block;
        let instances: Vec<serde_json::Value> = (0..b.config().instances)
            .map(|i| {
                let base = b.config().instance_base(i);
                let (head, tail) = b.head_tail(i);
                let st = ChmuStatus::from(b.get(base + CHMU_STATUS));
                serde_json::json!({
                    "instance": i,
                    "cfg0": format!("{:#x}", b.get(base + CHMU_CFG0)),
                    "cfg1": format!("{:#x}", b.get(base + CHMU_CFG1)),
                    "enabled": st.enabled(),
                    "overflow": st.overflow(),
                    "fill_reached": st.fill_reached(),
                    "head": head,
                    "tail": tail,
                })
            })
            .collect();
        Ok(serde_json::json!({ "device": "cxl-hmu", "range": self.range, "instances": instances }))
    }

    fn counters(&self) -> serde_json::Value {
        serde_json::to_value(self.metrics()).unwrap_or_else(|e| {
            tracing::error!(error = %e, "counters not serializable");
            serde_json::Value::Null
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vfio_device::pci::dvsecs;

    fn raw(c: &ConfigSpace) -> Vec<u8> {
        let mut v = vec![0u8; c.size()];
        c.read(0, &mut v);
        v
    }

    #[test]
    fn identity_is_a_cxl_memory_device() {
        let range = MemRange {
            hpa_base: 0x4000_0000,
            size: 0x4000_0000,
        };
        let c = config_space(&ChmuConfig::default(), range, 7).expect("valid");
        assert_eq!(c.get_u32(0x08) >> 8, 0x05_02_10);
        assert_eq!(c.size(), 4096);
    }

    #[test]
    fn register_locator_names_component_memdev_and_chmu_blocks() {
        let range = MemRange {
            hpa_base: 0x4000_0000,
            size: 0x4000_0000,
        };
        let c = raw(&config_space(&ChmuConfig::default(), range, 7).expect("valid"));
        let d = dvsecs(&c);
        let loc = d
            .iter()
            .find(|d| d.vendor == 0x1e98 && d.id == 8)
            .expect("locator");
        assert_eq!(loc.length, 0x0c + 3 * 8);
        // Oracle from the spec table: BIR [2:0], block id [15:8], offset [31:16] (64 KiB).
        let blocks: Vec<(u32, u32, u32)> = (0..3)
            .map(|i| {
                let e = loc.offset + 0x0c + 8 * i;
                let low = u32::from_le_bytes([c[e], c[e + 1], c[e + 2], c[e + 3]]);
                (low & 7, (low >> 8) & 0xff, low >> 16)
            })
            .collect();
        assert_eq!(blocks, [(2, 1, 0), (2, 3, 1), (2, 5, 2)]);
    }

    #[test]
    fn the_serial_number_is_in_a_device_serial_number_capability() {
        let range = MemRange {
            hpa_base: 0x4000_0000,
            size: 0x4000_0000,
        };
        let serial = 0x0123_4567_89ab_cdef;
        let c = raw(&config_space(&ChmuConfig::default(), range, serial).expect("valid"));
        // Walk the extended capabilities for ID 0003h (PCIe Base 6.0 §7.9.3).
        let rd = |o: usize| u32::from_le_bytes([c[o], c[o + 1], c[o + 2], c[o + 3]]);
        let mut off = 0x100;
        let mut found = None;
        while off != 0 {
            let h = rd(off);
            if h & 0xffff == 3 {
                found = Some(u64::from(rd(off + 4)) | (u64::from(rd(off + 8)) << 32));
            }
            off = (h >> 20) as usize;
        }
        assert_eq!(found, Some(serial));
    }

    #[test]
    fn range1_carries_the_monitored_range() {
        let range = MemRange {
            hpa_base: 0x1_4000_0000,
            size: 0x8000_0000,
        };
        let c = raw(&config_space(&ChmuConfig::default(), range, 7).expect("valid"));
        let d = dvsecs(&c);
        let dev = d
            .iter()
            .find(|d| d.vendor == 0x1e98 && d.id == 0)
            .expect("dvsec 0");
        assert_eq!(dev.length, 0x3c);
        assert_eq!(decode_range1(&c, dev.offset), Some(range));
    }
}
