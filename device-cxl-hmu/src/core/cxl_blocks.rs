//! The CXL register blocks in front of the CHMU in the registers' BAR, where the Register
//! Locator names them (CXL 3.2 §8.1.9, [`crate::spec::dvsec::REGISTER_BLOCKS`]): Component
//! Registers (block 1) at [`COMPONENT_BLOCK_OFFSET`], Memory Device registers (block 3) at
//! [`MEMDEV_BLOCK_OFFSET`]; the CHMU (block 5) at [`CHMU_BLOCK_OFFSET`] is served by
//! [`crate::core::chmu`]. With these, Linux's `cxl_pci` binds the function and registers a
//! memdev. This module routes accesses to the two blocks; the caller passes the time (ns) the
//! mailbox's background operations run on.

use crate::core::component::ComponentBlock;
use crate::core::mailbox::MemdevIdentity;
use crate::core::memdev::MemdevBlock;
use crate::metrics::CxlMetrics;
use crate::spec::dvsec::MemRange;
use crate::spec::dvsec::REGISTER_BLOCK_SIZE;
use crate::spec::regs::*;

/// FW Revision the memdev reports (Identify; Linux shows it as `firmware_version`).
pub const FW_REVISION: &str = concat!("tierbed ", env!("CARGO_PKG_VERSION"));
/// Serial number the device reports unless told otherwise (PCIe Device Serial Number).
pub const DEFAULT_SERIAL: u64 = 0x1b36_5d11_0000_0001;

/// The component and memory device blocks.
#[derive(Debug)]
pub struct CxlBlocks {
    pub component: ComponentBlock,
    pub memdev: MemdevBlock,
}

impl CxlBlocks {
    /// Blocks for a device whose memory is `range` (its size is the volatile capacity).
    pub fn new(range: MemRange) -> Self {
        Self {
            component: ComponentBlock::new(range),
            memdev: MemdevBlock::new(MemdevIdentity {
                capacity: range.size,
                fw_revision: FW_REVISION.into(),
            }),
        }
    }

    /// Serves a read at `offset` of [`REGS_BAR`] at time `now` (ns) if it falls in one of
    /// these blocks.
    pub fn read(&mut self, offset: u64, data: &mut [u8], now: u64) -> bool {
        self.access(offset, |b, rel| match b {
            Block::Component(c) => c.mmio_read(rel, data),
            Block::Memdev(m) => m.mmio_read(rel, data, now),
        })
    }

    /// Serves a write at `offset` of [`REGS_BAR`] at time `now` (ns) if it falls in one of
    /// these blocks.
    pub fn write(&mut self, offset: u64, data: &[u8], now: u64) -> bool {
        self.access(offset, |b, rel| match b {
            Block::Component(c) => c.mmio_write(rel, data),
            Block::Memdev(m) => m.mmio_write(rel, data, now),
        })
    }

    /// Runs `f` on the block `offset` falls in, with the block-relative offset.
    fn access(&mut self, offset: u64, f: impl FnOnce(Block<'_>, u64)) -> bool {
        let in_block = |block: u64| {
            offset
                .checked_sub(block)
                .filter(|r| *r < REGISTER_BLOCK_SIZE)
        };
        if let Some(rel) = in_block(COMPONENT_BLOCK_OFFSET) {
            f(Block::Component(&mut self.component), rel);
        } else if let Some(rel) = in_block(MEMDEV_BLOCK_OFFSET) {
            f(Block::Memdev(&mut self.memdev), rel);
        } else {
            return false;
        }
        true
    }

    pub fn reset(&mut self) {
        self.component.reset();
        self.memdev.reset();
    }

    /// Accesses per block and the mailbox's commands.
    pub fn counters(&self) -> CxlMetrics {
        CxlMetrics {
            component: self.component.counters(),
            memdev: self.memdev.counters(),
            mailbox: self.memdev.mailbox.counters.clone(),
        }
    }
}

enum Block<'a> {
    Component(&'a mut ComponentBlock),
    Memdev(&'a mut MemdevBlock),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accesses_reach_the_block_they_fall_in() {
        let mut c = CxlBlocks::new(MemRange {
            hpa_base: 0x4000_0000,
            size: 0x4000_0000,
        });
        let mut d = [0u8; 4];
        assert!(c.read(COMPONENT_BLOCK_OFFSET + 0x1000, &mut d, 0));
        assert_eq!(u32::from_le_bytes(d) & 0xffff, 1);
        assert!(c.read(MEMDEV_BLOCK_OFFSET + 0x10, &mut d, 0));
        assert_eq!(
            u32::from_le_bytes(d) & 0xffff,
            1,
            "device status capability"
        );
        assert!(!c.read(CHMU_BLOCK_OFFSET, &mut d, 0));
        assert!(!c.write(CHMU_BLOCK_OFFSET, &d, 0));
    }
}
