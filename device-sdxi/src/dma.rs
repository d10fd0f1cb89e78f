//! Guest memory as the SDXi engine reaches it: the DMA maps a vfio-user client announced
//! (fds mmapped, pre-faulted), through `vm-memory`.
//!
//! Addresses are whatever the client mapped: guest-physical addresses without a virtual IOMMU,
//! IOVAs with one (then QEMU sends one map per guest DMA mapping), so IOVA translation is the
//! map lookup itself. Nothing outside the maps is reachable; writes need a writable map.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use vm_memory::bitmap::BitmapSlice;
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{
    Bytes, FileOffset, GuestAddress, GuestMemory, GuestMemoryBackend, GuestMemoryMmap,
    GuestMemoryRegion, GuestRegionMmap, Permissions, VolatileMemory, VolatileSlice,
};

/// An access outside what the guest mapped (or a write to a read-only map).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("guest memory {addr:#x}+{len:#x} is not mapped{}", if *.write { " writable" } else { "" })]
pub struct Fault {
    pub addr: u64,
    pub len: u64,
    pub write: bool,
}

/// What the engine needs from guest memory.
pub trait DmaMemory: Send + Sync {
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), Fault>;
    fn write(&self, addr: u64, buf: &[u8]) -> Result<(), Fault>;
    /// Copies `len` bytes; the ranges must not overlap (the engine checks).
    fn copy(&self, dst: u64, src: u64, len: u64) -> Result<(), Fault>;
    /// Atomically decrements the u64 at `addr` if non-zero; returns the old value.
    fn decrement_u64(&self, addr: u64) -> Result<u64, Fault>;
    /// Atomically ORs `bits` into the u32 at `addr`.
    fn or_u32(&self, addr: u64, bits: u32) -> Result<(), Fault>;
    /// Checks that `addr..addr+len` is mapped (and writable if asked).
    fn check(&self, addr: u64, len: u64, write: bool) -> Result<(), Fault>;
}

/// Guest RAM built from DMA maps.
#[derive(Debug, Default)]
pub struct GuestRam {
    mem: GuestMemoryMmap,
    /// Sorted (start, end) of writable maps.
    writable: Vec<(u64, u64)>,
}

/// A DMA map to build [`GuestRam`] from.
#[derive(Debug)]
pub struct MapSpec<'a> {
    pub iova: u64,
    pub size: u64,
    pub file: &'a std::fs::File,
    pub file_offset: u64,
    pub writable: bool,
}

/// Errors building guest RAM (a bad map from the client, or mmap failing).
#[derive(Debug, thiserror::Error)]
pub enum MapError {
    #[error("DMA map (iova {iova:#x}, size {size:#x}): {why}")]
    Bad { iova: u64, size: u64, why: String },
}

/// One DMA map, mmapped (shared, pre-faulted) once and reused across rebuilds.
#[derive(Clone, Debug)]
pub struct MappedRegion {
    region: Arc<GuestRegionMmap>,
    writable: bool,
    prefaulted: Arc<std::sync::atomic::AtomicBool>,
}

impl MappedRegion {
    /// Maps a spec.
    pub fn map(s: &MapSpec<'_>) -> Result<Self, MapError> {
        let bad = |why: String| MapError::Bad {
            iova: s.iova,
            size: s.size,
            why,
        };
        let size = usize::try_from(s.size).map_err(|_| bad("too large".into()))?;
        if size == 0 || s.iova.checked_add(s.size).is_none() {
            return Err(bad("empty or wrapping".into()));
        }
        let file = s.file.try_clone().map_err(|e| bad(format!("dup: {e}")))?;
        let prot = if s.writable {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        };
        let region = MmapRegionBuilder::new(size)
            .with_file_offset(FileOffset::new(file, s.file_offset))
            .with_mmap_prot(prot)
            .with_mmap_flags(libc::MAP_SHARED)
            .build()
            .map_err(|e| bad(format!("mmap: {e}")))?;
        let region = Arc::new(
            GuestRegionMmap::new(region, GuestAddress(s.iova))
                .ok_or_else(|| bad("invalid region".into()))?,
        );
        Ok(Self {
            region,
            writable: s.writable,
            prefaulted: Arc::default(),
        })
    }

    /// Pre-faults the mapping once, in the background at the lowest CPU priority, so
    /// descriptors do not pay page faults. The device asks for it when a driver activates the
    /// function (not at DMA_MAP time: QEMU waits for DMA_MAP replies while the guest boots,
    /// and populating gigabytes then costs the boot ~1.8 s on a 2-core host).
    pub fn prefault(&self) {
        if self.prefaulted.swap(true, Ordering::AcqRel) {
            return;
        }
        let r = Arc::clone(&self.region);
        let advice = if self.writable {
            libc::MADV_POPULATE_WRITE
        } else {
            libc::MADV_POPULATE_READ
        };
        let _ = std::thread::Builder::new()
            .name("dma-prefault".into())
            .spawn(move || {
                // Lowest CPU priority: on a small host this must not slow the guest's boot.
                // SAFETY: setpriority on this thread only.
                unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 19) };
                // SAFETY: the range is exactly this live mapping, kept alive by `r`; populating
                // does not change its contents.
                unsafe { libc::madvise(r.as_ptr().cast(), r.size(), advice) };
            });
    }

    pub fn start(&self) -> u64 {
        self.region.start_addr().0
    }

    pub fn len(&self) -> u64 {
        self.region.len()
    }

    pub fn is_empty(&self) -> bool {
        self.region.len() == 0
    }
}

impl GuestRam {
    /// Maps every spec. Overlapping or empty maps are refused.
    pub fn build(specs: &[MapSpec<'_>]) -> Result<Self, MapError> {
        let mapped = specs
            .iter()
            .map(MappedRegion::map)
            .collect::<Result<Vec<_>, _>>()?;
        Self::from_mapped(&mapped)
    }

    /// Guest RAM over already mapped regions (cheap: no mmap).
    pub fn from_mapped(mapped: &[MappedRegion]) -> Result<Self, MapError> {
        let mut regions: Vec<Arc<GuestRegionMmap>> =
            mapped.iter().map(|m| Arc::clone(&m.region)).collect();
        regions.sort_by_key(|r| r.start_addr());
        let mut writable: Vec<(u64, u64)> = mapped
            .iter()
            .filter(|m| m.writable)
            .map(|m| (m.start(), m.start() + m.len()))
            .collect();
        writable.sort_unstable();
        let mem = GuestMemoryMmap::from_arc_regions(regions).map_err(|e| MapError::Bad {
            iova: 0,
            size: 0,
            why: format!("overlapping maps: {e}"),
        })?;
        Ok(Self { mem, writable })
    }

    /// Anonymous memory at `base` (for tests and benchmarks).
    pub fn anonymous(base: u64, size: usize) -> Self {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(base), size)]).unwrap_or_default();
        Self {
            mem,
            writable: vec![(base, base + size as u64)],
        }
    }

    pub fn regions(&self) -> usize {
        self.mem.num_regions()
    }

    fn writable(&self, addr: u64, len: u64) -> bool {
        let end = addr.saturating_add(len);
        // Maps are disjoint; a range may span adjacent writable maps.
        let mut at = addr;
        for (s, e) in &self.writable {
            if *e <= at {
                continue;
            }
            if *s > at {
                return false;
            }
            at = *e;
            if at >= end {
                return true;
            }
        }
        len == 0
    }

    /// The largest slice at `addr` within one region, at most `len` bytes.
    fn slice(&self, addr: u64, len: u64) -> Option<VolatileSlice<'_, impl BitmapSlice + '_>> {
        let region = self.mem.find_region(GuestAddress(addr))?;
        let off = addr - region.start_addr().0;
        let avail = region.len() - off;
        let n = usize::try_from(len.min(avail)).ok()?;
        region
            .as_volatile_slice()
            .ok()?
            .offset(usize::try_from(off).ok()?)
            .ok()?
            .subslice(0, n)
            .ok()
    }

    fn fault(addr: u64, len: u64, write: bool) -> Fault {
        Fault { addr, len, write }
    }
}

impl DmaMemory for GuestRam {
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), Fault> {
        self.mem
            .read_slice(buf, GuestAddress(addr))
            .map_err(|_| Self::fault(addr, buf.len() as u64, false))
    }

    fn write(&self, addr: u64, buf: &[u8]) -> Result<(), Fault> {
        if !self.writable(addr, buf.len() as u64) {
            return Err(Self::fault(addr, buf.len() as u64, true));
        }
        self.mem
            .write_slice(buf, GuestAddress(addr))
            .map_err(|_| Self::fault(addr, buf.len() as u64, true))
    }

    fn check(&self, addr: u64, len: u64, write: bool) -> Result<(), Fault> {
        let ok = addr.checked_add(len).is_some()
            && GuestMemory::check_range(
                &self.mem,
                GuestAddress(addr),
                usize::try_from(len).unwrap_or(usize::MAX),
                Permissions::Read,
            )
            && (!write || self.writable(addr, len));
        if ok {
            Ok(())
        } else {
            Err(Self::fault(addr, len, write))
        }
    }

    fn copy(&self, dst: u64, src: u64, len: u64) -> Result<(), Fault> {
        self.check(src, len, false)?;
        self.check(dst, len, true)?;
        let mut done = 0u64;
        while done < len {
            let (s, d) = (src + done, dst + done);
            let sv = self
                .slice(s, len - done)
                .ok_or_else(|| Self::fault(s, len - done, false))?;
            let dv = self
                .slice(d, len - done)
                .ok_or_else(|| Self::fault(d, len - done, true))?;
            let n = sv.len().min(dv.len());
            // SAFETY: both slices are live mappings of at least `n` bytes (checked above);
            // the engine refuses overlapping ranges. The guest may write these bytes
            // concurrently, as with any DMA; the copy then transfers some mix of old and new
            // bytes, which is what real hardware does.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    sv.ptr_guard().as_ptr(),
                    dv.ptr_guard_mut().as_ptr(),
                    n,
                );
            }
            done += n as u64;
        }
        Ok(())
    }

    fn decrement_u64(&self, addr: u64) -> Result<u64, Fault> {
        if !addr.is_multiple_of(8) || !self.writable(addr, 8) {
            return Err(Self::fault(addr, 8, true));
        }
        let s = self
            .slice(addr, 8)
            .filter(|s| s.len() == 8)
            .ok_or_else(|| Self::fault(addr, 8, true))?;
        let a: &AtomicU64 = s
            .get_atomic_ref(0)
            .map_err(|_| Self::fault(addr, 8, true))?;
        Ok(a.fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
            Some(v.saturating_sub(1))
        })
        .unwrap_or_else(|v| v))
    }

    fn or_u32(&self, addr: u64, bits: u32) -> Result<(), Fault> {
        if !addr.is_multiple_of(4) || !self.writable(addr, 4) {
            return Err(Self::fault(addr, 4, true));
        }
        let s = self
            .slice(addr, 4)
            .filter(|s| s.len() == 4)
            .ok_or_else(|| Self::fault(addr, 4, true))?;
        let a: &AtomicU32 = s
            .get_atomic_ref(0)
            .map_err(|_| Self::fault(addr, 4, true))?;
        a.fetch_or(bits, Ordering::AcqRel);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_within_and_across_adjacent_maps() {
        let ram = GuestRam::anonymous(0x1000, 0x10000);
        ram.write(0x2000, &[7u8; 100]).expect("write");
        ram.copy(0x9000, 0x2000, 100).expect("copy");
        let mut b = [0u8; 100];
        ram.read(0x9000, &mut b).expect("read");
        assert_eq!(b, [7u8; 100]);
    }

    #[test]
    fn accesses_outside_the_maps_fault_without_touching_memory() {
        let ram = GuestRam::anonymous(0x1000, 0x1000);
        assert!(ram.copy(0x1800, 0x1f00, 0x200).is_err());
        assert!(ram.write(0x0, &[1]).is_err());
        assert!(ram.read(u64::MAX - 1, &mut [0u8; 4]).is_err());
        assert_eq!(
            ram.check(0x1ff0, 0x20, false),
            Err(Fault {
                addr: 0x1ff0,
                len: 0x20,
                write: false
            })
        );
        assert!(ram.copy(0x1000, u64::MAX - 8, 64).is_err());
    }

    #[test]
    fn decrement_stops_at_zero_and_or_sets_bits() {
        let ram = GuestRam::anonymous(0, 0x1000);
        ram.write(0x40, &2u64.to_le_bytes()).expect("write");
        assert_eq!(ram.decrement_u64(0x40), Ok(2));
        assert_eq!(ram.decrement_u64(0x40), Ok(1));
        assert_eq!(ram.decrement_u64(0x40), Ok(0));
        let mut b = [0u8; 8];
        ram.read(0x40, &mut b).expect("read");
        assert_eq!(u64::from_le_bytes(b), 0);
        ram.or_u32(0x48, 1 << 31).expect("or");
        ram.read(0x48, &mut b[..4]).expect("read");
        assert_eq!(u32::from_le_bytes([b[0], b[1], b[2], b[3]]), 1 << 31);
        assert!(ram.decrement_u64(0x41).is_err(), "misaligned");
    }

    #[test]
    fn file_backed_maps_share_memory_with_the_file() {
        let name = std::ffi::CString::new("ram").expect("name");
        // SAFETY: memfd_create with a valid name.
        let fd = unsafe { libc::memfd_create(name.as_ptr(), 0) };
        assert!(fd >= 0);
        // SAFETY: we own the fresh fd.
        let file = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        file.set_len(0x4000).expect("size");
        let ram = GuestRam::build(&[
            MapSpec {
                iova: 0x10_0000,
                size: 0x2000,
                file: &file,
                file_offset: 0,
                writable: true,
            },
            MapSpec {
                iova: 0x10_2000,
                size: 0x2000,
                file: &file,
                file_offset: 0x2000,
                writable: false,
            },
        ])
        .expect("build");
        assert_eq!(ram.regions(), 2);
        ram.write(0x10_0010, b"hello").expect("write");
        let mut b = [0u8; 5];
        std::os::unix::fs::FileExt::read_exact_at(&file, &mut b, 0x10).expect("pread");
        assert_eq!(&b, b"hello");
        assert!(ram.write(0x10_2000, b"x").is_err(), "read-only map");
        assert!(
            ram.copy(0x10_2000, 0x10_0000, 16).is_err(),
            "copy into read-only map"
        );
        ram.copy(0x10_0100, 0x10_2000, 16)
            .expect("copy from read-only map");
    }
}
