//! The Component Registers block (Register Locator block 1; CXL 3.2 §8.2.4): its register
//! table ([`crate::spec::component`]) in a [`RegFile`]. Writes to the locked decoder are
//! dropped by the table's masks; nothing else happens on a write.

use crate::core::regfile::RegFile;
use crate::metrics::BlockAccess;
pub use crate::spec::component::*;
use crate::spec::dvsec::MemRange;

/// The Component Registers block.
#[derive(Debug)]
pub struct ComponentBlock {
    regs: RegFile,
    range: MemRange,
}

impl ComponentBlock {
    pub fn new(range: MemRange) -> Self {
        let mut b = Self {
            regs: RegFile::new("component", 0x2000),
            range,
        };
        b.reset();
        b
    }

    pub fn reset(&mut self) {
        self.regs.reset(COMPONENT_REGISTERS, &self.range);
    }

    pub fn counters(&self) -> BlockAccess {
        self.regs.counters.clone()
    }

    pub fn mmio_read(&mut self, offset: u64, data: &mut [u8]) {
        self.regs.read(offset, data);
    }

    /// Only the Global Control's HDM Decoder Enable is writable (decoder 0 is locked).
    pub fn mmio_write(&mut self, offset: u64, data: &[u8]) {
        self.regs.write(offset, data, COMPONENT_REGISTERS);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rd(b: &mut ComponentBlock, off: u64) -> u32 {
        let mut d = [0u8; 4];
        b.mmio_read(off, &mut d);
        u32::from_le_bytes(d)
    }

    #[test]
    fn the_hdm_decoder_is_found_through_the_capability_array_and_decodes_the_range() {
        let range = MemRange {
            hpa_base: 0x1_4000_0000,
            size: 0x8000_0000,
        };
        let mut b = ComponentBlock::new(range);
        let header = rd(&mut b, 0x1000);
        assert_eq!((header & 0xffff, header >> 24), (1, 1));
        let ptr = rd(&mut b, 0x1004);
        assert_eq!(ptr & 0xffff, 5);
        let s = 0x1000 + u64::from(ptr >> 20);
        assert_eq!(rd(&mut b, s) & 0xf, 0, "one decoder");
        assert_eq!(rd(&mut b, s + 4), 0b10, "HDM decoding enabled");
        assert_eq!(rd(&mut b, s + 0x10), 0x4000_0000);
        assert_eq!(rd(&mut b, s + 0x14), 1);
        assert_eq!(rd(&mut b, s + 0x18), 0x8000_0000);
        assert_eq!(rd(&mut b, s + 0x1c), 0);
        let ctl = rd(&mut b, s + 0x20);
        assert_eq!(
            ctl & (1 << 10 | 1 << 8 | 1 << 12),
            1 << 10 | 1 << 8 | 1 << 12
        );
        // Locked: a write to the decoder is dropped.
        b.mmio_write(s + 0x10, &0u32.to_le_bytes());
        assert_eq!(rd(&mut b, s + 0x10), 0x4000_0000);
        b.mmio_write(s + 4, &0u32.to_le_bytes());
        assert_eq!(rd(&mut b, s + 4), 0);
    }
}
