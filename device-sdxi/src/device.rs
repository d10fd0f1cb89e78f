//! The SDXi PCI function as a vfio-user device: BAR0 control registers, BAR2 doorbells,
//! BAR4 MSI-X table (emulated by QEMU itself), and its configuration space.
//!
//! Left out at this stage: doorbell processing (a doorbell is counted and logged only).

use crate::function::{SdxiConfig, SdxiFunction};
use crate::pci::{
    BarDef, ConfigError, ConfigSpace, ConfigSpaceBuilder, MsixDef, CONFIG_SPACE_EXTENDED,
};
use crate::regs;

/// Builds the SDXi function's configuration space (digest A.1).
pub fn config_space(cfg: &SdxiConfig) -> Result<ConfigSpace, ConfigError> {
    Ok(ConfigSpaceBuilder::new(
        regs::EMU_VENDOR_ID,
        regs::EMU_DEVICE_ID,
        regs::SDXI_CLASS_CODE,
        1,
        CONFIG_SPACE_EXTENDED,
    )
    .bar(BarDef {
        index: regs::CONTROL_BAR,
        size: regs::CONTROL_BAR_SIZE,
        is_64bit: true,
        prefetchable: false,
    })?
    .bar(BarDef {
        index: regs::DOORBELL_BAR,
        size: cfg.doorbell_bar_size(),
        is_64bit: true,
        prefetchable: false,
    })?
    .bar(BarDef {
        index: regs::MSIX_BAR,
        size: 0x1000,
        is_64bit: true,
        prefetchable: false,
    })?
    .interrupt_pin(1)
    .msix(MsixDef {
        vectors: cfg.msix_vectors(),
        table_bar: regs::MSIX_BAR,
        table_offset: regs::MSIX_TABLE_OFFSET,
        pba_bar: regs::MSIX_BAR,
        pba_offset: regs::MSIX_PBA_OFFSET,
    })?
    .pcie_endpoint()?
    .build())
}

/// Doorbell counters.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct DoorbellCounters {
    pub doorbells: u64,
    pub doorbell_guest_errors: u64,
}

/// The device model behind the transport.
#[derive(Debug)]
pub struct SdxiDevice {
    pub function: SdxiFunction,
    pub doorbells: DoorbellCounters,
}

impl SdxiDevice {
    pub fn new(cfg: SdxiConfig) -> Self {
        Self {
            function: SdxiFunction::new(cfg),
            doorbells: DoorbellCounters::default(),
        }
    }
}

#[cfg(feature = "server")]
impl crate::vfio_server::PciDevice for SdxiDevice {
    fn name(&self) -> &'static str {
        "sdxi"
    }

    fn bar_read(&mut self, bar: u8, offset: u64, data: &mut [u8]) {
        match bar {
            regs::CONTROL_BAR => self.function.mmio_read(offset, data),
            _ => data.fill(0),
        }
    }

    fn bar_write(&mut self, bar: u8, offset: u64, data: &[u8]) {
        match bar {
            regs::CONTROL_BAR => self.function.mmio_write(offset, data),
            regs::DOORBELL_BAR => {
                let stride = self.function.config().doorbell_stride();
                if data.len() != 8 || !offset.is_multiple_of(stride) {
                    self.doorbells.doorbell_guest_errors += 1;
                    return;
                }
                self.doorbells.doorbells += 1;
                tracing::debug!(context = offset / stride, "doorbell");
            }
            _ => {}
        }
    }

    fn reset(&mut self) {
        self.function.reset();
    }

    fn counters(&self) -> serde_json::Value {
        serde_json::json!({
            "function": self.function.counters(),
            "state": self.function.state(),
            "doorbells": self.doorbells,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_space_has_sdxi_identity_and_bars() {
        let c = config_space(&SdxiConfig::default()).expect("valid");
        assert_eq!(c.get_u32(0x08) >> 8, 0x12_01_00);
        assert_eq!(c.bar(0).map(|b| b.size), Some(0x40000));
        assert_eq!(c.bar(2).map(|b| b.size), Some(0x40000));
        assert_eq!(c.msix().map(|m| m.vectors), Some(65));
    }
}
