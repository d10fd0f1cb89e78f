//! The CXL register blocks in front of the CHMU in the registers' BAR, and the Register Locator
//! entries that name them (CXL 3.2 §8.1.9): Component Registers (block 1) at
//! [`COMPONENT_BLOCK_OFFSET`], Memory Device registers (block 3) at [`MEMDEV_BLOCK_OFFSET`],
//! the CHMU (block 5) at [`CHMU_BLOCK_OFFSET`]. With these, Linux's `cxl_pci` binds the
//! function and registers a memdev; the CHMU stays where the locator says.

use crate::component::ComponentBlock;
use crate::device::MemRange;
use crate::mailbox::MemdevIdentity;
use crate::memdev::MemdevBlock;
use crate::metrics::CxlMetrics;
use crate::regfile::BLOCK_SIZE;
use crate::regs::*;

/// FW Revision the memdev reports (Identify; Linux shows it as `firmware_version`).
pub const FW_REVISION: &str = concat!("tierbed ", env!("CARGO_PKG_VERSION"));
/// Serial number the device reports unless told otherwise (PCIe Device Serial Number).
pub const DEFAULT_SERIAL: u64 = 0x1b36_5d11_0000_0001;

/// The Register Locator's entries: (block identifier, offset in [`REGS_BAR`]).
pub const REGISTER_BLOCKS: [(u8, u64); 3] = [
    (RBI_COMPONENT, COMPONENT_BLOCK_OFFSET),
    (RBI_MEMDEV, MEMDEV_BLOCK_OFFSET),
    (RBI_CHMU, CHMU_BLOCK_OFFSET),
];
const _: () = {
    let mut i = 0;
    while i < REGISTER_BLOCKS.len() {
        assert!(REGISTER_BLOCKS[i].1.is_multiple_of(BLOCK_SIZE));
        i += 1;
    }
    assert!(MEMDEV_BLOCK_OFFSET >= COMPONENT_BLOCK_OFFSET + BLOCK_SIZE);
    assert!(CHMU_BLOCK_OFFSET >= MEMDEV_BLOCK_OFFSET + BLOCK_SIZE);
};

/// The Register Locator DVSEC's body after its header: 2 reserved bytes, then one 8-byte
/// entry per block.
pub fn register_locator_body() -> Vec<u8> {
    let mut d = vec![0u8; 2];
    for (id, off) in REGISTER_BLOCKS {
        let low: u32 = RegLocLow::new()
            .with_bir(REGS_BAR)
            .with_block_id(id)
            .with_offset_hi16((off >> 16) as u16)
            .into();
        d.extend_from_slice(&low.to_le_bytes());
        d.extend_from_slice(&((off >> 32) as u32).to_le_bytes());
    }
    d
}

/// The component and memory device blocks, with the clock the mailbox's background
/// operations run on.
#[derive(Debug)]
pub struct CxlBlocks {
    pub component: ComponentBlock,
    pub memdev: MemdevBlock,
    start: std::time::Instant,
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
            start: std::time::Instant::now(),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Serves a read at `offset` of [`REGS_BAR`] if it falls in one of these blocks.
    pub fn read(&mut self, offset: u64, data: &mut [u8]) -> bool {
        self.access(offset, |b, rel, now| match b {
            Block::Component(c) => c.mmio_read(rel, data),
            Block::Memdev(m) => m.mmio_read(rel, data, now),
        })
    }

    /// Serves a write at `offset` of [`REGS_BAR`] if it falls in one of these blocks.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> bool {
        self.access(offset, |b, rel, now| match b {
            Block::Component(c) => c.mmio_write(rel, data),
            Block::Memdev(m) => m.mmio_write(rel, data, now),
        })
    }

    /// Runs `f` on the block `offset` falls in, with the block-relative offset and the time.
    fn access(&mut self, offset: u64, f: impl FnOnce(Block<'_>, u64, u64)) -> bool {
        let now = self.now();
        let in_block = |block: u64| offset.checked_sub(block).filter(|r| *r < BLOCK_SIZE);
        if let Some(rel) = in_block(COMPONENT_BLOCK_OFFSET) {
            f(Block::Component(&mut self.component), rel, now);
        } else if let Some(rel) = in_block(MEMDEV_BLOCK_OFFSET) {
            f(Block::Memdev(&mut self.memdev), rel, now);
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
    fn locator_entries_name_each_block_at_its_offset() {
        let b = register_locator_body();
        assert_eq!(b.len(), 2 + 3 * 8);
        let entry =
            |i: usize| u32::from_le_bytes([b[2 + 8 * i], b[3 + 8 * i], b[4 + 8 * i], b[5 + 8 * i]]);
        // Oracle from the spec table: BIR [2:0], block id [15:8], offset bits [31:16].
        assert_eq!(entry(0), 0x0000_0102);
        assert_eq!(entry(1), 0x0001_0302);
        assert_eq!(entry(2), 0x0002_0502);
    }

    #[test]
    fn accesses_reach_the_block_they_fall_in() {
        let mut c = CxlBlocks::new(MemRange {
            hpa_base: 0x4000_0000,
            size: 0x4000_0000,
        });
        let mut d = [0u8; 4];
        assert!(c.read(COMPONENT_BLOCK_OFFSET + 0x1000, &mut d));
        assert_eq!(u32::from_le_bytes(d) & 0xffff, 1);
        assert!(c.read(MEMDEV_BLOCK_OFFSET + 0x10, &mut d));
        assert_eq!(
            u32::from_le_bytes(d) & 0xffff,
            1,
            "device status capability"
        );
        assert!(!c.read(CHMU_BLOCK_OFFSET, &mut d));
        assert!(!c.write(CHMU_BLOCK_OFFSET, &d));
    }
}
