//! The IOVA -> host table behind guest memory: an interval map of DMA maps with one shared
//! mapping per backing file (vfio-user `VFIO_USER_DMA_MAP` / `VFIO_USER_DMA_UNMAP`, QEMU
//! `docs/interop/vfio-user.rst`).
//!
//! With a virtual IOMMU QEMU sends one DMA_MAP per guest mapping, typically one per 4 KiB
//! page, so a guest that maps much of its RAM sends hundreds of thousands. The table spends no
//! fd and no mmap per map: the first map of a file (keyed by its `(st_dev, st_ino)`) mmaps the
//! whole file once (its size, or as far as a map reaches); later maps of the same file only add
//! an extent. Adjacent maps of contiguous file bytes merge into one extent, so a guest mapping
//! its RAM page by page in order leaves one extent. Map and unmap are O(log n + k) for the k
//! extents they touch. The fd a DMA_MAP carries is closed once the message is handled.
//!
//! Left out: maps of files that cannot be mmapped whole get a mapping of their own range
//! (counted in `range_mappings`), and a map that cannot be mmapped at all is recorded as
//! unreachable (its addresses fault), never refused.

use crate::dma::{Extent, GuestRam, HostMap, Lookup, MapError, MapSpec};
use std::cell::Cell;
use std::collections::{BTreeMap, HashMap};
use std::os::fd::AsRawFd;
use std::sync::Arc;

/// Idle file mappings kept (so unmap/map churn does not remap a file each time).
const IDLE_FILES_KEPT: usize = 16;

/// Counters of the table (the server reports them; they stay bounded by the number of backing
/// files, not the number of maps).
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct TableCounters {
    /// Extents in the table now (adjacent maps merged).
    pub extents: usize,
    /// Whole-file mappings held now.
    pub file_mappings: usize,
    /// Most extents and whole-file mappings ever held at once.
    pub peak_extents: usize,
    pub peak_file_mappings: usize,
    /// mmap calls made so far (whole files and ranges).
    pub mmaps: u64,
    /// Maps that got a mapping of their own range.
    pub range_mappings: u64,
    /// Maps whose memory could not be mapped (their addresses fault).
    pub unreachable_maps: u64,
}

/// The interval map.
#[derive(Debug, Default)]
pub struct DmaTable {
    extents: BTreeMap<u64, Extent>,
    files: HashMap<(u64, u64), Arc<HostMap>>,
    counters: TableCounters,
}

/// `(st_dev, st_ino)`, size, and whether the fd was opened read-write.
fn file_identity(file: &std::fs::File) -> std::io::Result<((u64, u64), u64, bool)> {
    use std::os::unix::fs::MetadataExt;
    let m = file.metadata()?;
    // SAFETY: F_GETFL on an fd we hold.
    let fl = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETFL) };
    let rw = fl >= 0 && fl & libc::O_ACCMODE == libc::O_RDWR;
    Ok(((m.dev(), m.ino()), m.size(), rw))
}

impl DmaTable {
    pub fn counters(&self) -> TableCounters {
        TableCounters {
            extents: self.extents.len(),
            file_mappings: self.files.len(),
            ..self.counters
        }
    }

    /// Adds a map, replacing whatever was mapped in its range.
    pub fn map(&mut self, s: &MapSpec<'_>) -> Result<(), MapError> {
        let bad = |why: &str| MapError::Bad {
            iova: s.iova,
            size: s.size,
            why: why.into(),
        };
        if s.size == 0 || s.iova.checked_add(s.size).is_none() {
            return Err(bad("empty or wrapping"));
        }
        let end_in_file = s
            .file_offset
            .checked_add(s.size)
            .ok_or_else(|| bad("file offset wraps"))?;
        let len = usize::try_from(s.size).map_err(|_| bad("too large"))?;
        let (host, off) = match self.whole_file(s.file, end_in_file, s.writable) {
            Some(h) => (
                h,
                usize::try_from(s.file_offset).map_err(|_| bad("offset"))?,
            ),
            None => (self.range_mapping(s, len)?, 0),
        };
        let writable = s.writable && host.writable();
        self.unmap(s.iova, s.size);
        self.insert(Extent {
            start: s.iova,
            len: s.size,
            host,
            off,
            writable,
        });
        let c = &mut self.counters;
        c.peak_extents = c.peak_extents.max(self.extents.len());
        c.peak_file_mappings = c.peak_file_mappings.max(self.files.len());
        Ok(())
    }

    /// The shared mapping of `file`, made or grown so it covers `end` bytes; None if the file
    /// cannot be mapped whole.
    fn whole_file(
        &mut self,
        file: &std::fs::File,
        end: u64,
        writable: bool,
    ) -> Option<Arc<HostMap>> {
        let (key, size, rw) = file_identity(file).ok()?;
        if let Some(h) = self.files.get(&key) {
            if h.len() as u64 >= end && (h.writable() || !(writable && rw)) {
                return Some(Arc::clone(h));
            }
        }
        let len = usize::try_from(size.max(end).next_multiple_of(4096)).ok()?;
        let h = Arc::new(HostMap::file(file.as_raw_fd(), len, rw).ok()?);
        self.counters.mmaps += 1;
        self.evict_idle_files();
        self.files.insert(key, Arc::clone(&h));
        Some(h)
    }

    fn range_mapping(&mut self, s: &MapSpec<'_>, len: usize) -> Result<Arc<HostMap>, MapError> {
        let h = HostMap::file_range(s.file.as_raw_fd(), s.file_offset, len, s.writable).map_err(
            |source| MapError::Os {
                iova: s.iova,
                size: s.size,
                what: "mmap",
                source,
            },
        )?;
        self.counters.mmaps += 1;
        self.counters.range_mappings += 1;
        Ok(Arc::new(h))
    }

    /// Drops cached file mappings no extent uses once more than a few are idle.
    fn evict_idle_files(&mut self) {
        let idle = self
            .files
            .values()
            .filter(|h| Arc::strong_count(h) == 1)
            .count();
        if idle >= IDLE_FILES_KEPT {
            self.files.retain(|_, h| Arc::strong_count(h) > 1);
        }
    }

    /// Records a map whose memory cannot be reached: its range faults from now on.
    pub fn map_unreachable(&mut self, iova: u64, size: u64) {
        self.counters.unreachable_maps += 1;
        self.unmap(iova, size);
    }

    fn insert(&mut self, mut e: Extent) {
        let prev = self.extents.range(..e.start).next_back().map(|(_, p)| p);
        if let Some(prev) = prev.filter(|p| p.joins(&e)).cloned() {
            self.extents.remove(&prev.start);
            e = Extent {
                len: prev.len + e.len,
                ..prev
            };
        }
        if let Some(next) = self.extents.get(&e.end()).filter(|n| e.joins(n)) {
            let next_len = next.len;
            self.extents.remove(&e.end());
            e.len += next_len;
        }
        self.extents.insert(e.start, e);
    }

    /// Removes `iova..iova+size` from the table (splitting extents at its edges).
    pub fn unmap(&mut self, iova: u64, size: u64) {
        let end = iova.saturating_add(size);
        if let Some((&k, prev)) = self.extents.range(..iova).next_back() {
            if prev.end() > iova {
                let prev = prev.clone();
                self.extents.insert(k, prev.part(0, iova - k));
                if prev.end() > end {
                    self.extents
                        .insert(end, prev.part(end - k, prev.end() - end));
                }
            }
        }
        let inside: Vec<u64> = self.extents.range(iova..end).map(|(k, _)| *k).collect();
        for k in inside {
            if let Some(e) = self.extents.remove(&k) {
                if e.end() > end {
                    self.extents.insert(end, e.part(end - k, e.end() - end));
                }
            }
        }
    }

    /// Forgets every map (client gone).
    pub fn clear(&mut self) {
        self.extents.clear();
        self.files.clear();
    }

    /// An immutable copy of the table.
    pub fn view(&self) -> GuestRam {
        GuestRam::from_extents(self.extents.values().cloned().collect())
    }

    /// The host pieces behind `iova..iova+size`: (mapping, offset, length).
    pub fn pieces(&self, iova: u64, size: u64) -> Vec<(Arc<HostMap>, usize, usize)> {
        let end = iova.saturating_add(size);
        let first = self
            .extents
            .range(..=iova)
            .next_back()
            .map_or(iova, |(k, _)| *k);
        self.extents
            .range(first..end)
            .filter(|(_, e)| e.end() > iova)
            .map(|(_, e)| {
                let s = iova.max(e.start);
                let t = end.min(e.end());
                (
                    Arc::clone(&e.host),
                    e.off + (s - e.start) as usize,
                    (t - s) as usize,
                )
            })
            .collect()
    }
}

impl Lookup for DmaTable {
    fn find(&self, addr: u64) -> Option<&Extent> {
        let (_, e) = self.extents.range(..=addr).next_back()?;
        (addr < e.end()).then_some(e)
    }
}

/// The extents a reader found last, most recent first: a device's accesses come in runs on
/// the same one or two extents (a COPY's source and destination, the ring, a CST_BLK), and
/// checking them costs a compare where the tree costs a walk. Null entries are empty.
pub(crate) type Hint = [*const Extent; 2];

/// No extents remembered.
pub(crate) const NO_HINT: Hint = [std::ptr::null(); 2];

/// The table seen through a reader's [`Hint`]. The hint's pointers are into the table's own
/// nodes, so they are only valid while the table has not changed since they were taken: the
/// reader must have held its read lock throughout (the space clears the hint whenever it
/// takes the lock anew).
pub(crate) struct Hinted<'a> {
    pub table: &'a DmaTable,
    pub hint: Cell<Hint>,
}

impl Lookup for Hinted<'_> {
    #[inline]
    fn find(&self, addr: u64) -> Option<&Extent> {
        let h = self.hint.get();
        for p in h {
            // SAFETY: a non-null hint points at an extent of `self.table`, which has not
            // changed since it was taken (see `Hinted`).
            if let Some(e) = unsafe { p.as_ref() } {
                if e.start <= addr && addr < e.end() {
                    return Some(e);
                }
            }
        }
        let e = self.table.find(addr)?;
        self.hint.set([e, h[0]]);
        Some(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dma::DmaMemory;

    fn memfd(size: u64) -> std::fs::File {
        crate::dma::memfd(c"ram", size).expect("memfd")
    }

    fn spec(file: &std::fs::File, iova: u64, size: u64, off: u64) -> MapSpec<'_> {
        MapSpec {
            iova,
            size,
            file,
            file_offset: off,
            writable: true,
        }
    }

    #[test]
    fn page_maps_in_order_merge_into_one_extent_and_one_mapping() {
        let f = memfd(1 << 20);
        let mut t = DmaTable::default();
        for p in 0..256u64 {
            t.map(&spec(&f, 0x10_0000 + p * 4096, 4096, p * 4096))
                .expect("map");
        }
        let c = t.counters();
        assert_eq!((c.extents, c.file_mappings, c.mmaps), (1, 1, 1));
        // Unmapping a page in the middle splits it in two; mapping it back merges again.
        t.unmap(0x10_0000 + 7 * 4096, 4096);
        assert_eq!(t.counters().extents, 2);
        assert!(t.read(0x10_0000 + 7 * 4096, &mut [0u8; 1]).is_err());
        assert!(t.read(0x10_0000 + 8 * 4096, &mut [0u8; 1]).is_ok());
        assert!(t.read(0x10_0000 + 6 * 4096, &mut [0u8; 1]).is_ok());
        t.map(&spec(&f, 0x10_0000 + 7 * 4096, 4096, 7 * 4096))
            .expect("map");
        assert_eq!(t.counters().extents, 1);
        assert_eq!(t.counters().mmaps, 1);
    }

    #[test]
    fn scattered_maps_reach_their_own_file_bytes_and_nothing_else() {
        let f = memfd(8 << 20);
        std::os::unix::fs::FileExt::write_all_at(&f, b"page-nine", 9 * 4096).expect("pwrite");
        let mut t = DmaTable::default();
        // IOVA order reversed against file order: no merging.
        t.map(&spec(&f, 0xfff0_0000, 4096, 9 * 4096)).expect("map");
        t.map(&spec(&f, 0xfff0_1000, 4096, 2 * 4096)).expect("map");
        assert_eq!(t.counters().extents, 2);
        let mut b = [0u8; 9];
        t.read(0xfff0_0000, &mut b).expect("read");
        assert_eq!(&b, b"page-nine");
        assert!(t.check(0xfff0_0000, 0x2000, true).is_ok(), "spans both");
        assert!(t.check(0xfff0_0000, 0x2001, false).is_err());
        // A map over part of an extent replaces that part only.
        t.map(&spec(&f, 0xfff0_0800, 0x1000, 0x40_0000))
            .expect("map");
        let v = t.view();
        assert_eq!(v.regions(), 3);
        let mut b = [0u8; 4];
        v.read(0xfff0_0000, &mut b).expect("read");
        assert_eq!(&b, b"page");
        v.read(0xfff0_1800, &mut b).expect("read the tail kept");
    }

    #[test]
    fn a_map_past_the_end_of_the_file_grows_the_mapping() {
        let f = memfd(0x2000);
        let mut t = DmaTable::default();
        t.map(&spec(&f, 0, 0x1000, 0)).expect("map");
        f.set_len(0x10000).expect("grow");
        t.map(&spec(&f, 0x8000, 0x1000, 0x8000)).expect("map");
        t.write(0x8000, b"x").expect("write");
        t.write(0x0, b"y").expect("write");
        assert_eq!(t.counters().file_mappings, 1);
    }

    /// Random map/unmap churn against a model (one entry per IOVA page): every page reads
    /// its own file page or faults exactly when the model says, and the table never holds
    /// more extents than the model has runs.
    #[test]
    fn random_maps_and_unmaps_agree_with_a_page_model() {
        const PAGES: u64 = 256;
        let f = memfd(PAGES * 4096);
        for p in 0..PAGES {
            std::os::unix::fs::FileExt::write_all_at(&f, &[p as u8], p * 4096).expect("pwrite");
        }
        let mut model: Vec<Option<(u64, bool)>> = vec![None; PAGES as usize];
        let mut t = DmaTable::default();
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        for _ in 0..5_000 {
            let (start, len) = (next(PAGES), 1 + next(8));
            let len = len.min(PAGES - start);
            if next(3) == 0 {
                t.unmap(start * 4096, len * 4096);
                (start..start + len).for_each(|p| model[p as usize] = None);
            } else {
                // Mostly contiguous file pages (so merges happen), sometimes scattered.
                let file = if next(4) == 0 {
                    next(PAGES - len)
                } else {
                    start
                };
                let writable = next(5) != 0;
                let s = MapSpec {
                    writable,
                    ..spec(&f, start * 4096, len * 4096, file * 4096)
                };
                t.map(&s).expect("map");
                for i in 0..len {
                    model[(start + i) as usize] = Some((file + i, writable));
                }
            }
            for p in 0..PAGES {
                let mut b = [0u8; 1];
                let got = t.read(p * 4096 + 7, &mut b).ok().map(|()| b[0]);
                let want = model[p as usize].map(|(fp, _)| fp as u8);
                assert_eq!(got, if want.is_some() { Some(0) } else { None }, "page {p}");
                let mut b = [0u8; 1];
                let first = t.read(p * 4096, &mut b).ok().map(|()| b[0]);
                assert_eq!(first, want, "page {p} reads its own file page");
                let w = model[p as usize].is_some_and(|(_, w)| w);
                assert_eq!(
                    t.check(p * 4096, 4096, true).is_ok(),
                    w,
                    "page {p} writable"
                );
            }
            let runs = model
                .iter()
                .enumerate()
                .filter(|(i, m)| {
                    m.is_some()
                        && (*i == 0 || model[i - 1].is_none_or(|(fp, w)| Some((fp + 1, w)) != **m))
                })
                .count();
            assert!(
                t.counters().extents <= runs,
                "extents merge as far as the model's runs"
            );
        }
        assert_eq!(t.counters().mmaps, 1);
    }

    #[test]
    fn bad_maps_are_refused_and_a_read_only_fd_gives_read_only_memory() {
        let f = memfd(0x2000);
        let mut t = DmaTable::default();
        assert!(t.map(&spec(&f, 0, 0, 0)).is_err());
        assert!(t.map(&spec(&f, u64::MAX - 10, 0x1000, 0)).is_err());
        let path = format!("/proc/self/fd/{}", f.as_raw_fd());
        let ro = std::fs::File::open(path).expect("reopen read-only");
        t.map(&spec(&ro, 0x1000, 0x1000, 0)).expect("map");
        assert!(t.read(0x1000, &mut [0u8; 8]).is_ok());
        assert!(t.write(0x1000, &[1]).is_err(), "fd opened read-only");
    }
}
