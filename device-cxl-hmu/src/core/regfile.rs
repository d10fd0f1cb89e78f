//! Register storage for the CXL register blocks this device adds (component, memory device):
//! bytes with writable and write-1-to-clear masks built from a block's register table
//! ([`crate::spec::block_table`]), one access normaliser (1/2/4/8 bytes, naturally aligned,
//! inside the 64 KiB block), unknown offsets reading 0 and ignoring writes.

use crate::metrics::BlockAccess;
use crate::spec::block_table::{BlockReg, PostWrite};
use crate::spec::dvsec::{MemRange, REGISTER_BLOCK_SIZE};
use tracing::warn;

/// Is an access of `len` bytes at `offset` well formed for a register block of `size` bytes:
/// 1, 2, 4 or 8 bytes, naturally aligned, inside the block.
pub fn access_ok(offset: u64, len: usize, size: u64) -> bool {
    matches!(len, 1 | 2 | 4 | 8)
        && offset.is_multiple_of(len as u64)
        && offset.checked_add(len as u64).is_some_and(|e| e <= size)
}

/// A block's implemented registers: `bytes.len()` bytes from offset 0, the rest reads 0.
#[derive(Clone, Debug)]
pub struct RegFile {
    name: &'static str,
    pub bytes: Vec<u8>,
    pub wmask: Vec<u8>,
    pub w1c: Vec<u8>,
    pub counters: BlockAccess,
}

impl RegFile {
    pub fn new(name: &'static str, len: usize) -> Self {
        Self {
            name,
            bytes: vec![0; len],
            wmask: vec![0; len],
            w1c: vec![0; len],
            counters: BlockAccess::default(),
        }
    }

    /// Every byte to 0 and read-only, then each register of `table` to its reset value and
    /// masks (`range` for the values that come from the device's memory range).
    pub fn reset(&mut self, table: &[BlockReg], range: &MemRange) {
        self.bytes.fill(0);
        self.wmask.fill(0);
        self.w1c.fill(0);
        for r in table {
            let (o, w) = (r.offset as usize, usize::from(r.width));
            if o + w > self.bytes.len() {
                warn!(
                    block = self.name,
                    register = r.name,
                    "register past the storage"
                );
                continue;
            }
            let v = r.reset.value(range).to_le_bytes();
            self.bytes[o..o + w].copy_from_slice(&v[..w]);
            self.wmask[o..o + w].copy_from_slice(&r.wmask.to_le_bytes()[..w]);
            self.w1c[o..o + w].copy_from_slice(&r.w1c.to_le_bytes()[..w]);
        }
    }

    /// The implemented byte range an access covers, counting the access; `None` for a guest
    /// error (which reads 0).
    fn span(&mut self, offset: u64, len: usize, write: bool) -> Option<std::ops::Range<usize>> {
        if write {
            self.counters.mmio_writes += 1;
        } else {
            self.counters.mmio_reads += 1;
        }
        let o = usize::try_from(offset).ok();
        match o
            .filter(|o| access_ok(offset, len, REGISTER_BLOCK_SIZE) && o + len <= self.bytes.len())
        {
            Some(o) => Some(o..o + len),
            None => {
                self.counters.guest_errors += 1;
                warn!(block = self.name, offset, len, write, "bad register access");
                None
            }
        }
    }

    pub fn read(&mut self, offset: u64, data: &mut [u8]) {
        match self.span(offset, data.len(), false) {
            Some(r) => data.copy_from_slice(&self.bytes[r]),
            None => data.fill(0),
        }
    }

    /// Writes through the masks; returns the post-write hook of the register of `table` the
    /// write touched, if the access was valid.
    pub fn write(&mut self, offset: u64, data: &[u8], table: &[BlockReg]) -> Option<PostWrite> {
        let r = self.span(offset, data.len(), true)?;
        for (i, v) in r.clone().zip(data) {
            let (w, c) = (self.wmask[i], self.w1c[i]);
            self.bytes[i] = ((self.bytes[i] & !w) | (v & w)) & !(v & c);
        }
        let (start, end) = (r.start as u64, r.end as u64);
        table
            .iter()
            .find(|reg| reg.offset < end && start < reg.offset + u64::from(reg.width))
            .map(|reg| reg.post_write)
    }

    pub fn get_u32(&self, off: usize) -> u32 {
        let mut b = [0u8; 4];
        b.copy_from_slice(&self.bytes[off..off + 4]);
        u32::from_le_bytes(b)
    }

    pub fn get_u64(&self, off: usize) -> u64 {
        let mut b = [0u8; 8];
        b.copy_from_slice(&self.bytes[off..off + 8]);
        u64::from_le_bytes(b)
    }

    /// A device-side update (the host's masks do not apply).
    pub fn set_u32(&mut self, off: usize, v: u32) {
        self.bytes[off..off + 4].copy_from_slice(&v.to_le_bytes());
    }

    /// A device-side update (the host's masks do not apply).
    pub fn set_u64(&mut self, off: usize, v: u64) {
        self.bytes[off..off + 8].copy_from_slice(&v.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_accesses_read_zero_and_are_counted() {
        use crate::spec::block_table::{ro, rw};
        let table = [
            BlockReg {
                w1c: 0xff00,
                ..ro(0, "r", 8, u64::MAX)
            },
            rw(8, "w", 8, 0xff),
        ];
        let mut r = RegFile::new("t", 16);
        let range = MemRange {
            hpa_base: 0,
            size: 0,
        };
        r.reset(&table, &range);
        let mut d = [0xaau8; 4];
        r.read(2, &mut d);
        assert_eq!(d, [0; 4]);
        r.read(16, &mut d);
        r.read(REGISTER_BLOCK_SIZE - 2, &mut d);
        assert!(r.write(u64::MAX - 3, &[0; 4], &table).is_none());
        assert_eq!(r.counters.guest_errors, 4);
        // Writable bits take the value, write-1-to-clear bits clear on 1, the rest stays.
        r.write(0, &[0x12, 0x34], &table);
        assert_eq!(r.get_u64(0), 0xffff_ffff_ffff_cbff);
        assert_eq!(r.write(8, &[0x12, 0x34], &table), Some(PostWrite::None));
        assert_eq!(r.get_u64(8), 0x12);
    }
}
