//! The hotlists in shared memory the client maps into the guest (vfio-user sparse mmap areas
//! of the registers' BAR): a memfd as large as the BAR whose bytes at each hotlist's BAR offset
//! hold that hotlist, so the guest reads entries without a message per read. Which parts of the
//! BAR are hotlists: [`ChmuConfig::mapped_areas`] (one page-aligned area per instance in the
//! paged layout, the window otherwise).

use crate::core::hotlist_store::HotlistMemory;
use crate::spec::layout::ChmuConfig;
use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};
use vfio_device::dma::{memfd, HostMap};

/// The memfd and the areas of the BAR it backs.
#[derive(Debug)]
pub struct HotlistFile {
    file: File,
    pub areas: Vec<(u64, u64)>,
}

impl HotlistFile {
    pub fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

/// The hotlists seen through this process's mapping of the memfd.
#[derive(Debug)]
pub struct MappedHotlist {
    map: HostMap,
    /// BAR offset of entry 0 of each instance's hotlist.
    starts: Vec<u64>,
    entries: u64,
}

impl MappedHotlist {
    /// A memfd of `bar` bytes holding `cfg`'s hotlists, and this process's view of it; None
    /// when `cfg` has nothing to map (compact layout).
    pub fn new(cfg: &ChmuConfig, bar: u64) -> std::io::Result<Option<(HotlistFile, Self)>> {
        let areas = cfg.mapped_areas();
        if areas.is_empty() {
            return Ok(None);
        }
        if areas.iter().any(|(o, s)| o.saturating_add(*s) > bar) {
            return Err(std::io::Error::other("hotlist area outside the BAR"));
        }
        let file = memfd(c"chmu-hotlists", bar)?;
        let len = usize::try_from(bar).map_err(std::io::Error::other)?;
        let mem = Self {
            map: HostMap::file(file.as_raw_fd(), len, true)?,
            starts: (0..cfg.instances)
                .map(|i| cfg.hotlist_bar_offset(i))
                .collect(),
            entries: u64::from(cfg.hotlist_size),
        };
        Ok(Some((HotlistFile { file, areas }, mem)))
    }

    /// Byte offset in the mapping of entry `slot` of instance `i`, if inside it.
    fn at(&self, i: u8, slot: u64) -> Option<usize> {
        let start = *self.starts.get(usize::from(i))?;
        if slot >= self.entries {
            return None;
        }
        let off = usize::try_from(start.checked_add(slot.checked_mul(8)?)?).ok()?;
        (off.checked_add(8)? <= self.map.len() && off.is_multiple_of(8)).then_some(off)
    }
}

impl HotlistMemory for MappedHotlist {
    fn read(&self, i: u8, slot: u64) -> u64 {
        match self.at(i, slot) {
            // SAFETY: `at` checked the entry lies in the live mapping, 8-byte aligned.
            Some(off) => unsafe {
                std::ptr::read_volatile(self.map.as_ptr().add(off).cast::<u64>())
            },
            None => 0,
        }
    }
    fn write(&self, i: u8, slot: u64, v: u64) {
        if let Some(off) = self.at(i, slot) {
            // SAFETY: as in read.
            unsafe { std::ptr::write_volatile(self.map.as_ptr().add(off).cast::<u64>(), v) };
        }
    }
    fn clear(&self) {
        for (i, start) in self.starts.iter().enumerate() {
            let Ok(start) = usize::try_from(*start) else {
                continue;
            };
            let bytes = usize::try_from(self.entries * 8).unwrap_or(0);
            if start
                .checked_add(bytes)
                .is_some_and(|end| end <= self.map.len())
            {
                // SAFETY: the hotlist's bytes lie inside the live mapping (checked above).
                unsafe { std::ptr::write_bytes(self.map.as_ptr().add(start), 0, bytes) };
            } else {
                tracing::warn!(instance = i, "hotlist outside the mapping not cleared");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::regs::*;

    #[test]
    fn entries_land_at_their_bar_offsets_in_the_memfd() {
        let cfg = ChmuConfig::default().fitted();
        let bar = (CHMU_BLOCK_OFFSET + CHMU_BLOCK_SIZE).next_power_of_two();
        let (file, mem) = MappedHotlist::new(&cfg, bar)
            .expect("memfd")
            .expect("paged layout maps");
        assert_eq!(file.areas, cfg.mapped_areas());
        mem.write(1, 5, 0x1122_3344_5566_7788);
        mem.write(1, 1024, 1);
        let mut b = [0u8; 8];
        let off = cfg.hotlist_bar_offset(1) + 5 * 8;
        // SAFETY: pread into a local buffer.
        let n = unsafe { libc::pread(file.fd(), b.as_mut_ptr().cast(), 8, off as libc::off_t) };
        assert_eq!(n, 8);
        assert_eq!(u64::from_le_bytes(b), 0x1122_3344_5566_7788);
        assert_eq!(mem.read(1, 5), 0x1122_3344_5566_7788);
        assert_eq!(mem.read(1, 1024), 0, "past the hotlist");
        assert_eq!(mem.read(9, 0), 0, "no such instance");
        let compact = ChmuConfig {
            instances: 16,
            ..ChmuConfig::default()
        }
        .fitted();
        assert!(MappedHotlist::new(&compact, bar).expect("ok").is_none());
    }
}
