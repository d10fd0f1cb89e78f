//! Register storage for the CXL register blocks this device adds (component, memory device):
//! bytes with a writable mask, one access normaliser (1/2/4/8 bytes, naturally aligned,
//! inside the 64 KiB block), unknown offsets reading 0 and ignoring writes.

use tracing::warn;

/// Bytes of a register block as the Register Locator maps it (§8.1.9: 64 KiB aligned).
pub const BLOCK_SIZE: u64 = 0x10000;

/// Is an access of `len` bytes at `offset` well formed for a register block of `size` bytes:
/// 1, 2, 4 or 8 bytes, naturally aligned, inside the block.
pub fn access_ok(offset: u64, len: usize, size: u64) -> bool {
    matches!(len, 1 | 2 | 4 | 8)
        && offset.is_multiple_of(len as u64)
        && offset.checked_add(len as u64).is_some_and(|e| e <= size)
}

/// Access counters of one block.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct AccessCounters {
    pub mmio_reads: u64,
    pub mmio_writes: u64,
    /// Bad width or alignment, or an offset past the block's registers.
    pub guest_errors: u64,
}

/// A block's implemented registers: `bytes.len()` bytes from offset 0, the rest reads 0.
#[derive(Clone, Debug)]
pub struct RegFile {
    name: &'static str,
    pub bytes: Vec<u8>,
    pub wmask: Vec<u8>,
    pub counters: AccessCounters,
}

impl RegFile {
    pub fn new(name: &'static str, len: usize) -> Self {
        Self {
            name,
            bytes: vec![0; len],
            wmask: vec![0; len],
            counters: AccessCounters::default(),
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
        match o.filter(|o| access_ok(offset, len, BLOCK_SIZE) && o + len <= self.bytes.len()) {
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

    /// Writes through the mask; returns the range written, if the access was valid.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> Option<std::ops::Range<usize>> {
        let r = self.span(offset, data.len(), true)?;
        for (i, v) in r.clone().zip(data) {
            self.bytes[i] = (self.bytes[i] & !self.wmask[i]) | (v & self.wmask[i]);
        }
        Some(r)
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

    pub fn put(&mut self, off: usize, v: &[u8], wmask: &[u8]) {
        self.bytes[off..off + v.len()].copy_from_slice(v);
        self.wmask[off..off + wmask.len()].copy_from_slice(wmask);
    }

    pub fn put_u32(&mut self, off: usize, v: u32, wmask: u32) {
        self.put(off, &v.to_le_bytes(), &wmask.to_le_bytes());
    }

    pub fn put_u64(&mut self, off: usize, v: u64, wmask: u64) {
        self.put(off, &v.to_le_bytes(), &wmask.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_accesses_read_zero_and_are_counted() {
        let mut r = RegFile::new("t", 16);
        r.put_u64(0, u64::MAX, 0xff);
        let mut d = [0xaau8; 4];
        r.read(2, &mut d);
        assert_eq!(d, [0; 4]);
        r.read(16, &mut d);
        r.read(BLOCK_SIZE - 2, &mut d);
        assert!(r.write(u64::MAX - 3, &[0; 4]).is_none());
        assert_eq!(r.counters.guest_errors, 4);
        r.write(0, &[0x12, 0x34]);
        assert_eq!(r.get_u64(0), 0xffff_ffff_ffff_ff12);
    }
}
