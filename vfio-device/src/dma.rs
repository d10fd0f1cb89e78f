//! Guest memory as a device's DMA reaches it: an immutable view ([`GuestRam`]) of the DMA maps
//! a vfio-user client announced, each access bounds-checked against the maps.
//!
//! Addresses are whatever the client mapped: guest-physical addresses without a virtual IOMMU,
//! IOVAs with one (then QEMU sends one map per guest DMA mapping, often one per 4 KiB page), so
//! IOVA translation is the map lookup itself. A view is a sorted list of extents (adjacent maps
//! of contiguous file bytes merged into one), looked up by binary search; each extent points
//! into a [`HostMap`], one shared mapping of a whole backing file (see [`crate::dma_table`]).
//! Nothing outside the extents is reachable; writes need a writable extent.
//!
//! Left out: IOMMU permissions finer than read/write per map, and memory a client announces
//! without an fd (vfio-user's `VFIO_USER_DMA_READ`/`DMA_WRITE` path).

use crate::dma_copy::{copy_batch, HostCopy};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

/// An access outside what the guest mapped (or a write to a read-only map).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("guest memory {addr:#x}+{len:#x} is not mapped{}", if *.write { " writable" } else { "" })]
pub struct Fault {
    pub addr: u64,
    pub len: u64,
    pub write: bool,
}

/// What a device needs from guest memory (the SDXi engine's accesses, for one).
pub trait DmaMemory: Send + Sync {
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), Fault>;
    fn write(&self, addr: u64, buf: &[u8]) -> Result<(), Fault>;
    /// Copies `len` bytes; the ranges must not overlap (the engine checks).
    fn copy(&self, dst: u64, src: u64, len: u64) -> Result<(), Fault>;
    /// Atomically subtracts `n` from the u64 at `addr`, stopping at zero; returns the old
    /// value.
    fn subtract_u64(&self, addr: u64, n: u64) -> Result<u64, Fault>;
    /// Atomically ORs `bits` into the u32 at `addr`.
    fn or_u32(&self, addr: u64, bits: u32) -> Result<(), Fault>;
    /// Stops keeping a read lock from one access to the next on this thread (see
    /// [`crate::dma_space::DmaSpace::pass`]): before it waits for accesses made on other
    /// threads, which an unmap waiting for that lock would otherwise block for good.
    fn step_out(&self) {}
    /// Copies each op in order, as [`Self::copy`] one after the other would; stops at the
    /// first that faults and returns its index with the fault (the ones before it are done).
    /// An implementation may do them in one access: back to back, nothing else between the
    /// copies (the DMA space finds their host addresses up to 64 at a time, then copies
    /// those back to back, see `dma_copy.rs`).
    fn copy_all(&self, ops: &[CopyOp]) -> Result<(), (usize, Fault)> {
        ops.iter()
            .enumerate()
            .try_for_each(|(i, o)| self.copy(o.dst, o.src, o.len).map_err(|f| (i, f)))
    }
    /// Checks that `addr..addr+len` is mapped (and writable if asked).
    fn check(&self, addr: u64, len: u64, write: bool) -> Result<(), Fault>;
}

/// One copy of a batch: `len` bytes from guest address `src` to `dst` (not overlapping).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CopyOp {
    pub dst: u64,
    pub src: u64,
    pub len: u64,
}

/// A DMA map to build guest memory from.
#[derive(Debug)]
pub struct MapSpec<'a> {
    pub iova: u64,
    pub size: u64,
    pub file: &'a std::fs::File,
    pub file_offset: u64,
    pub writable: bool,
}

/// Errors mapping guest memory (a bad map from the client, or mmap failing).
#[derive(Debug, thiserror::Error)]
pub enum MapError {
    #[error("DMA map (iova {iova:#x}, size {size:#x}): {why}")]
    Bad { iova: u64, size: u64, why: String },
    #[error("DMA map (iova {iova:#x}, size {size:#x}): {what}")]
    Os {
        iova: u64,
        size: u64,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// A fresh memfd of `size` bytes (close-on-exec): shared memory a client maps for DMA or the
/// device offers as a BAR.
pub fn memfd(name: &std::ffi::CStr, size: u64) -> std::io::Result<std::fs::File> {
    // SAFETY: memfd_create with a valid NUL-terminated name.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh fd we own.
    let f = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    f.set_len(size)?;
    Ok(f)
}

/// One shared mapping of host memory (a whole backing file, or anonymous memory), unmapped
/// when the last extent and view using it are gone.
#[derive(Debug)]
pub struct HostMap {
    ptr: *mut u8,
    len: usize,
    writable: bool,
}

// SAFETY: plain shared memory; every access goes through bounds-checked raw copies or atomics.
unsafe impl Send for HostMap {}
// SAFETY: as above.
unsafe impl Sync for HostMap {}

impl HostMap {
    /// Maps `len` bytes of `fd` from offset 0 (shared), read-only unless `writable`.
    pub fn file(fd: std::os::fd::RawFd, len: usize, writable: bool) -> std::io::Result<Self> {
        let prot = if writable {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        };
        Self::mmap(len, prot, libc::MAP_SHARED, fd, 0, writable)
    }

    /// Maps `len` bytes of `fd` from `offset` (page-aligned), for a map that cannot share the
    /// whole-file mapping.
    pub fn file_range(
        fd: std::os::fd::RawFd,
        offset: u64,
        len: usize,
        writable: bool,
    ) -> std::io::Result<Self> {
        let prot = if writable {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        };
        let off = libc::off_t::try_from(offset).map_err(std::io::Error::other)?;
        Self::mmap(len, prot, libc::MAP_SHARED, fd, off, writable)
    }

    /// Private anonymous memory (tests and benchmarks).
    pub fn anonymous(len: usize) -> std::io::Result<Self> {
        Self::mmap(
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
            true,
        )
    }

    fn mmap(
        len: usize,
        prot: i32,
        flags: i32,
        fd: i32,
        off: libc::off_t,
        writable: bool,
    ) -> std::io::Result<Self> {
        if len == 0 {
            return Err(std::io::Error::from(std::io::ErrorKind::InvalidInput));
        }
        // SAFETY: a fresh mapping at an address the kernel picks; owned by the returned value.
        let p = unsafe { libc::mmap(std::ptr::null_mut(), len, prot, flags, fd, off) };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Self {
            ptr: p.cast(),
            len,
            writable,
        })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// The first byte of the mapping (valid while `self` lives).
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn writable(&self) -> bool {
        self.writable
    }

    /// Populates `off..off+len` of the mapping (page tables filled, so DMA does not pay page
    /// faults); out-of-range parts are ignored.
    pub fn populate(&self, off: usize, len: usize) {
        let page = 4096;
        let start = off & !(page - 1);
        let end = off.saturating_add(len).min(self.len);
        if start >= end {
            return;
        }
        let advice = if self.writable {
            libc::MADV_POPULATE_WRITE
        } else {
            libc::MADV_POPULATE_READ
        };
        // SAFETY: the range lies inside this live mapping; populating does not change contents.
        unsafe { libc::madvise(self.ptr.add(start).cast(), end - start, advice) };
    }
}

impl Drop for HostMap {
    fn drop(&mut self) {
        // SAFETY: exactly the mapping made in HostMap::mmap, no longer referenced.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// A guest range backed by host memory: `start..start+len` maps to `host[off..off+len]`.
#[derive(Clone, Debug)]
pub struct Extent {
    pub start: u64,
    pub len: u64,
    pub host: Arc<HostMap>,
    pub off: usize,
    pub writable: bool,
}

impl Extent {
    pub fn end(&self) -> u64 {
        self.start + self.len
    }

    /// Whether `next` continues this extent in guest and host address alike.
    pub fn joins(&self, next: &Extent) -> bool {
        self.end() == next.start
            && Arc::ptr_eq(&self.host, &next.host)
            && self.off as u64 + self.len == next.off as u64
            && self.writable == next.writable
    }

    /// The part of this extent starting `skip` bytes in, `len` bytes long.
    pub fn part(&self, skip: u64, len: u64) -> Extent {
        Extent {
            start: self.start + skip,
            len,
            host: Arc::clone(&self.host),
            off: self.off + skip as usize,
            writable: self.writable,
        }
    }
}

/// An immutable view of guest memory: sorted, disjoint, merged extents.
#[derive(Debug, Default)]
pub struct GuestRam {
    extents: Vec<Extent>,
}

impl GuestRam {
    /// A view over `extents` (sorted and disjoint, as the table keeps them).
    pub fn from_extents(extents: Vec<Extent>) -> Self {
        Self { extents }
    }

    /// Maps every spec (later maps replace earlier ones where they overlap).
    pub fn build(specs: &[MapSpec<'_>]) -> Result<Self, MapError> {
        let mut t = crate::dma_table::DmaTable::default();
        for s in specs {
            t.map(s)?;
        }
        Ok(t.view())
    }

    /// Anonymous memory at `base` (for tests and benchmarks); empty if it cannot be mapped.
    pub fn anonymous(base: u64, size: usize) -> Self {
        match HostMap::anonymous(size) {
            Ok(h) => Self::from_extents(vec![Extent {
                start: base,
                len: size as u64,
                host: Arc::new(h),
                off: 0,
                writable: true,
            }]),
            Err(_) => Self::default(),
        }
    }

    /// Number of extents (adjacent maps merged).
    pub fn regions(&self) -> usize {
        self.extents.len()
    }
}

impl Lookup for GuestRam {
    fn find(&self, addr: u64) -> Option<&Extent> {
        let i = self.extents.partition_point(|e| e.start <= addr);
        let e = self.extents.get(i.checked_sub(1)?)?;
        (addr < e.end()).then_some(e)
    }
}

/// Copies of a batch translated to host addresses at a time: 24 bytes of stack each, and as
/// many as the SDXi engine's window holds.
const COPY_BATCH: usize = 64;

/// Finds the extent holding an address; the accesses below work over any such table.
pub(crate) trait Lookup {
    fn find(&self, addr: u64) -> Option<&Extent>;

    /// The host pointer for `addr` and how many bytes (at most `len`) follow it inside one
    /// extent; None if `addr` is not mapped (or not writable when `write`).
    fn chunk(&self, addr: u64, len: u64, write: bool) -> Option<(*mut u8, usize)> {
        let e = self.find(addr)?;
        if write && !e.writable {
            return None;
        }
        let skip = addr - e.start;
        let n = usize::try_from(len.min(e.len - skip)).ok()?;
        // SAFETY: off + skip < off + len <= the mapping's length (extents never exceed their
        // host mapping: the table checks it when inserting).
        Some((unsafe { e.host.ptr.add(e.off + skip as usize) }, n))
    }

    /// The host pointer for all of `addr..addr+len` when it lies inside one extent (writable
    /// if asked): the common case, one lookup.
    #[inline]
    fn span(&self, addr: u64, len: u64, write: bool) -> Option<*mut u8> {
        let e = self.find(addr)?;
        let skip = addr - e.start;
        if (write && !e.writable) || len > e.len - skip {
            return None;
        }
        // SAFETY: off + skip + len <= off + e.len <= the mapping's length (see `chunk`).
        Some(unsafe { e.host.ptr.add(e.off + skip as usize) })
    }

    /// Calls `f` for each host piece of `addr..addr+len`, after checking all of it is mapped.
    fn pieces(
        &self,
        addr: u64,
        len: u64,
        write: bool,
        mut f: impl FnMut(*mut u8, usize, usize),
    ) -> Result<(), Fault> {
        if let Some(p) = self.span(addr, len, write) {
            f(p, len as usize, 0);
            return Ok(());
        }
        self.check_range(addr, len, write)?;
        let mut done = 0u64;
        while done < len {
            let (p, n) =
                self.chunk(addr + done, len - done, write)
                    .ok_or(Fault { addr, len, write })?;
            f(p, n, done as usize);
            done += n as u64;
        }
        Ok(())
    }

    fn check_range(&self, addr: u64, len: u64, write: bool) -> Result<(), Fault> {
        let fault = Fault { addr, len, write };
        if addr.checked_add(len).is_none() {
            return Err(fault);
        }
        if self.span(addr, len, write).is_some() {
            return Ok(());
        }
        let mut at = addr;
        let end = addr + len;
        while at < end {
            let (_, n) = self.chunk(at, end - at, write).ok_or(fault)?;
            at += n as u64;
        }
        Ok(())
    }

    /// The host addresses of a copy that lies in one extent on each side (the destination
    /// writable), or None.
    #[inline]
    fn host_copy(&self, dst: u64, src: u64, len: u64) -> Option<HostCopy> {
        Some(HostCopy {
            src: self.span(src, len, false)?,
            dst: self.span(dst, len, true)?,
            len: usize::try_from(len).ok()?,
        })
    }

    #[inline]
    fn copy_range(&self, dst: u64, src: u64, len: u64) -> Result<(), Fault> {
        if let Some(HostCopy {
            src: sp,
            dst: dp,
            len,
        }) = self.host_copy(dst, src, len)
        {
            // SAFETY: both ranges lie inside live mappings (one extent each). `copy`, not
            // `copy_nonoverlapping`: two IOVAs may map the same file bytes, so ranges the
            // engine saw as disjoint can overlap in host memory (same speed: glibc's memcpy
            // is its memmove). Bytes that two different host mappings of one file show at
            // two addresses overlap invisibly: the copy then moves some mix of old and new
            // bytes, as with concurrent guest writes (see `copy_pieces`).
            unsafe { std::ptr::copy(sp, dp, len) };
            return Ok(());
        }
        self.copy_pieces(dst, src, len)
    }

    /// Copies `ops[*done..]` in order, counting each one finished in `done`; stops at the
    /// first fault.
    fn copy_ops(&self, ops: &[CopyOp], done: &mut usize) -> Result<(), Fault> {
        let mut host = [HostCopy::EMPTY; COPY_BATCH];
        while let Some(rest) = ops.get(*done..).filter(|r| !r.is_empty()) {
            // The leading ops that lie in one extent each go to the host at once; the first
            // that does not (it spans extents or faults) goes alone through `copy_pieces`.
            let mut n = 0;
            for (h, o) in host.iter_mut().zip(rest) {
                let Some(c) = self.host_copy(o.dst, o.src, o.len) else {
                    break;
                };
                (*h, n) = (c, n + 1);
            }
            // SAFETY: each op lies inside live mappings (found above, under the read lock
            // this access holds throughout); overlaps and concurrent guest writes: see
            // `copy_range`.
            unsafe { copy_batch(&host[..n]) };
            *done += n;
            if let Some(o) = rest.get(n).filter(|_| n < COPY_BATCH) {
                self.copy_pieces(o.dst, o.src, o.len)?;
                *done += 1;
            }
        }
        Ok(())
    }

    /// [`Self::copy_range`] across extents (or faulting): checked whole, then piece by piece.
    #[cold]
    #[inline(never)]
    fn copy_pieces(&self, dst: u64, src: u64, len: u64) -> Result<(), Fault> {
        self.check_range(src, len, false)?;
        self.check_range(dst, len, true)?;
        let mut done = 0u64;
        while done < len {
            let (s, d) = (src + done, dst + done);
            let (sp, sn) = self.chunk(s, len - done, false).ok_or(Fault {
                addr: s,
                len: len - done,
                write: false,
            })?;
            let (dp, dn) = self.chunk(d, len - done, true).ok_or(Fault {
                addr: d,
                len: len - done,
                write: true,
            })?;
            let n = sn.min(dn);
            // SAFETY: both pieces are live mappings of at least `n` bytes (checked above); they
            // may overlap in host memory (see `copy_range`). The guest may write these bytes
            // concurrently, as with any DMA; the copy then transfers some mix of old and new
            // bytes, which is what real hardware does.
            unsafe { std::ptr::copy(sp, dp, n) };
            done += n as u64;
        }
        Ok(())
    }

    fn read_into(&self, addr: u64, buf: &mut [u8]) -> Result<(), Fault> {
        let dst = buf.as_mut_ptr();
        self.pieces(addr, buf.len() as u64, false, |p, n, at| {
            // SAFETY: `p..p+n` is inside a live mapping (checked by `pieces`), `at+n` inside
            // `buf`. The guest may write these bytes concurrently, as with any DMA.
            unsafe { std::ptr::copy_nonoverlapping(p, dst.add(at), n) }
        })
    }

    fn write_from(&self, addr: u64, buf: &[u8]) -> Result<(), Fault> {
        let src = buf.as_ptr();
        self.pieces(addr, buf.len() as u64, true, |p, n, at| {
            // SAFETY: as in `read_into`, with a writable map.
            unsafe { std::ptr::copy_nonoverlapping(src.add(at), p, n) }
        })
    }

    fn subtract_at(&self, addr: u64, n: u64) -> Result<u64, Fault> {
        let p = self.atomic::<u64>(addr)?;
        // SAFETY: `p` is 8-byte aligned inside a live writable mapping; guest memory is only
        // ever accessed atomically or by raw copies, never through references.
        let a = unsafe { AtomicU64::from_ptr(p) };
        Ok(a.fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
            Some(v.saturating_sub(n))
        })
        .unwrap_or_else(|v| v))
    }

    fn or_at(&self, addr: u64, bits: u32) -> Result<(), Fault> {
        let p = self.atomic::<u32>(addr)?;
        // SAFETY: as in `subtract_at`, 4-byte aligned.
        let a = unsafe { AtomicU32::from_ptr(p) };
        a.fetch_or(bits, Ordering::AcqRel);
        Ok(())
    }

    fn atomic<T>(&self, addr: u64) -> Result<*mut T, Fault> {
        let n = std::mem::size_of::<T>();
        let f = Fault {
            addr,
            len: n as u64,
            write: true,
        };
        if !addr.is_multiple_of(n as u64) {
            return Err(f);
        }
        match self.chunk(addr, n as u64, true) {
            Some((p, got)) if got == n && (p as usize).is_multiple_of(n) => Ok(p.cast()),
            _ => Err(f),
        }
    }
}

impl<T: Lookup + Send + Sync> DmaMemory for T {
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), Fault> {
        self.read_into(addr, buf)
    }

    fn write(&self, addr: u64, buf: &[u8]) -> Result<(), Fault> {
        self.write_from(addr, buf)
    }

    fn check(&self, addr: u64, len: u64, write: bool) -> Result<(), Fault> {
        self.check_range(addr, len, write)
    }

    fn copy(&self, dst: u64, src: u64, len: u64) -> Result<(), Fault> {
        self.copy_range(dst, src, len)
    }

    fn subtract_u64(&self, addr: u64, n: u64) -> Result<u64, Fault> {
        self.subtract_at(addr, n)
    }

    fn or_u32(&self, addr: u64, bits: u32) -> Result<(), Fault> {
        self.or_at(addr, bits)
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
        assert!(ram.read(0xfff, &mut [0u8; 2]).is_err(), "starts below");
    }

    #[test]
    fn decrement_stops_at_zero_and_or_sets_bits() {
        let ram = GuestRam::anonymous(0, 0x1000);
        ram.write(0x40, &2u64.to_le_bytes()).expect("write");
        assert_eq!(ram.subtract_u64(0x40, 1), Ok(2));
        assert_eq!(ram.subtract_u64(0x40, 1), Ok(1));
        assert_eq!(ram.subtract_u64(0x40, 1), Ok(0));
        let mut b = [0u8; 8];
        ram.read(0x40, &mut b).expect("read");
        assert_eq!(u64::from_le_bytes(b), 0);
        ram.or_u32(0x48, 1 << 31).expect("or");
        ram.read(0x48, &mut b[..4]).expect("read");
        assert_eq!(u32::from_le_bytes([b[0], b[1], b[2], b[3]]), 1 << 31);
        assert!(ram.subtract_u64(0x41, 1).is_err(), "misaligned");
        assert!(ram.subtract_u64(0xffc, 1).is_err(), "past the end");
    }

    #[test]
    fn a_copy_between_two_iovas_of_the_same_bytes_is_a_move() {
        // The guest maps one file page at two IOVAs: a copy from the first to 16 bytes into
        // the second is disjoint as guest addresses and overlaps in host memory.
        let file = memfd(c"ram", 0x2000).expect("memfd");
        let v: Vec<u8> = (0..64u8).collect();
        std::os::unix::fs::FileExt::write_all_at(&file, &v, 0).expect("write");
        let map = |iova| MapSpec {
            iova,
            size: 0x1000,
            file: &file,
            file_offset: 0,
            writable: true,
        };
        let ram = GuestRam::build(&[map(0x10_0000), map(0x20_0000)]).expect("ram");
        ram.copy(0x20_0010, 0x10_0000, 48).expect("copy");
        let mut b = [0u8; 64];
        ram.read(0x10_0000, &mut b).expect("read");
        assert_eq!(&b[..16], &v[..16]);
        assert_eq!(&b[16..], &v[..48], "memmove semantics");
    }

    #[test]
    fn copy_all_runs_in_order_and_stops_at_the_first_fault() {
        let ram = GuestRam::anonymous(0x1000, 0x10000);
        ram.write(0x1000, &[7u8; 64]).expect("write");
        let op = |src, dst| CopyOp { dst, src, len: 64 };
        // The second reads what the first wrote; the third faults; the fourth never runs.
        let ops = [
            op(0x1000, 0x2000),
            op(0x2000, 0x3000),
            op(0xf_0000, 0x4000),
            op(0x1000, 0x5000),
        ];
        let r = ram.copy_all(&ops);
        assert_eq!(r.map_err(|(i, f)| (i, f.addr)), Err((2, 0xf_0000)));
        let mut b = [0u8; 64];
        ram.read(0x3000, &mut b).expect("read");
        assert_eq!(b, [7u8; 64], "in order");
        ram.read(0x5000, &mut b).expect("read");
        assert_eq!(b, [0u8; 64], "nothing after the fault");
    }

    #[test]
    fn subtract_takes_several_at_once_and_stops_at_zero() {
        let ram = GuestRam::anonymous(0, 0x1000);
        ram.write(0x40, &10u64.to_le_bytes()).expect("write");
        assert_eq!(ram.subtract_u64(0x40, 7), Ok(10));
        assert_eq!(ram.subtract_u64(0x40, 7), Ok(3));
        assert_eq!(ram.subtract_u64(0x40, 1), Ok(0));
        let mut b = [0u8; 8];
        ram.read(0x40, &mut b).expect("read");
        assert_eq!(u64::from_le_bytes(b), 0);
        assert!(ram.subtract_u64(0x44, 1).is_err(), "misaligned");
    }

    #[test]
    fn file_backed_maps_share_memory_with_the_file() {
        let file = memfd(c"ram", 0x4000).expect("memfd");
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
        // A copy spanning both maps reads across the boundary.
        ram.copy(0x10_0200, 0x10_1ff8, 16).expect("copy across");
    }
}
