//! The memory a migration moves, and the kernel interfaces it is moved with (memfd_create(2),
//! mbind(2), mmap(2) `MAP_FIXED`, userfaultfd(2) write-protect mode), reached through
//! [`crate::sys`]'s [`MemorySys`] so the arena also lives in unit tests on a one-node host:
//!
//! - [`Pool`]: a memfd (shmem, or hugetlbfs for 2 MiB folios) whose pages are allocated on one
//!   NUMA node, mapped once as a "view" the copy engines read and write (and that is mapped
//!   for the SDXi engine through VFIO, which pins it).
//! - [`Arena`]: the workload's address range. With [`Backing::Pools`] folio `i` is mapped
//!   `MAP_SHARED|MAP_FIXED` onto slot `i` of the node-1 pool; promoting it maps slot `i` of the
//!   node-0 pool over the same virtual address. With [`Backing::Anon`] it is private memory the
//!   kernel's `move_pages(2)` moves.
//! - [`Uffd`]: userfaultfd write-protect, so writers wait while a batch is copied; a remap
//!   creates a new mapping that is registered again, and waiters on the old one are woken.

use crate::spec::FolioSize;
use crate::sys::mm::{self as sysmm, Linux, MemorySys};
use crate::sys::uffd::WriteProtect;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;

pub use crate::sys::mm::thread_cpu_ns;

/// Errors of the memory plumbing name the call and the object.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
pub struct MemError {
    pub what: String,
    #[source]
    pub source: std::io::Error,
}

/// Names what failed.
fn what(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> MemError {
    let what = what.into();
    move |source| MemError { what, source }
}

pub type Result<T> = std::result::Result<T, MemError>;

/// Guest-physical address of the page at `va`, from /proc/self/pagemap (root sees PFNs).
pub fn gpa_of(pagemap: &File, va: usize) -> Option<u64> {
    let mut e = [0u8; 8];
    std::os::unix::fs::FileExt::read_exact_at(pagemap, &mut e, (va / 4096 * 8) as u64).ok()?;
    let v = u64::from_le_bytes(e);
    let pfn = v & ((1 << 55) - 1);
    (v >> 63 == 1 && pfn != 0).then_some(pfn * 4096)
}

/// Makes sure node `node` has at least `n` free 2 MiB huge pages beyond what is in use.
pub fn reserve_huge_pages(node: u32, n: u64) -> Result<()> {
    let dir = format!("/sys/devices/system/node/node{node}/hugepages/hugepages-2048kB");
    let read = |f: &str| -> u64 {
        std::fs::read_to_string(format!("{dir}/{f}"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    };
    let (total, free) = (read("nr_hugepages"), read("free_hugepages"));
    if free >= n {
        return Ok(());
    }
    let want = total + (n - free);
    std::fs::write(format!("{dir}/nr_hugepages"), want.to_string()).map_err(|e| MemError {
        what: format!("reserving {want} huge pages on node {node}"),
        source: e,
    })?;
    let got = read("free_hugepages");
    if got < n {
        return Err(MemError {
            what: format!("node {node} could only provide {got} of {n} free 2 MiB huge pages"),
            source: std::io::Error::from_raw_os_error(libc::ENOMEM),
        });
    }
    Ok(())
}

/// Releases every unused huge page on `node`.
pub fn release_huge_pages(node: u32) {
    let dir = format!("/sys/devices/system/node/node{node}/hugepages/hugepages-2048kB");
    let _ = std::fs::write(format!("{dir}/nr_hugepages"), "0");
}

/// Folios of one size allocated on one node, behind a memfd.
#[derive(Debug)]
pub struct Pool {
    pub fd: File,
    pub view: *mut u8,
    pub len: usize,
    pub node: u32,
}

// SAFETY: the view is plain shared memory; the migrator hands out disjoint folios.
unsafe impl Send for Pool {}
// SAFETY: as above.
unsafe impl Sync for Pool {}

impl Pool {
    /// A pool of `n` folios populated on `node`.
    pub fn new(sys: &dyn MemorySys, node: u32, folio: FolioSize, n: usize) -> Result<Self> {
        let len = n * folio.bytes() as usize;
        let mut flags = libc::MFD_CLOEXEC;
        if folio == FolioSize::Huge {
            flags |= libc::MFD_HUGETLB | (21 << libc::MFD_HUGE_SHIFT);
        }
        let fd = sysmm::memfd_create(&format!("tierbed-pool{node}"), flags)
            .map_err(what(format!("memfd_create for the node-{node} pool")))?;
        fd.set_len(len as u64)
            .map_err(what(format!("sizing the node-{node} pool to {len} bytes")))?;
        let align = folio.bytes() as usize;
        let at = sysmm::reserve(len, align)
            .map_err(what(format!("reserving {len} bytes of address space")))?;
        let view = sysmm::mmap(
            at,
            len,
            libc::MAP_SHARED | libc::MAP_FIXED,
            fd.as_raw_fd(),
            0,
        )
        .map_err(what(format!("mmap of {len} bytes (pool view)")))?;
        let p = Self {
            fd,
            view,
            len,
            node,
        };
        sys.mbind(view, len, node)
            .map_err(what(format!("mbind of {len} bytes to node {node}")))?;
        for off in (0..len).step_by(align) {
            // SAFETY: inside the view; the write allocates the folio on `node`.
            unsafe { std::ptr::write_volatile(view.add(off), 0) };
        }
        // Keeps the view resident (VFIO pins it when it is mapped for the device).
        sysmm::mlock(view, len);
        Ok(p)
    }

    pub fn slot(&self, i: usize, folio: usize) -> *mut u8 {
        // SAFETY: callers pass i < n.
        unsafe { self.view.add(i * folio) }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        // SAFETY: the view we mapped; the arena that maps the pool is gone first.
        unsafe { sysmm::munmap(self.view, self.len) };
    }
}

/// The arena's write-protect handle; counts the writers that waited.
#[derive(Debug)]
pub struct Uffd {
    wp: Box<dyn WriteProtect>,
    /// Write faults that waited (fault messages drained).
    pub blocked: AtomicU64,
    /// Time spent in UFFDIO_WRITEPROTECT calls (protect and release), ns.
    pub wp_ns: AtomicU64,
}

impl Uffd {
    pub fn new(wp: Box<dyn WriteProtect>) -> Self {
        Self {
            wp,
            blocked: AtomicU64::new(0),
            wp_ns: AtomicU64::new(0),
        }
    }

    /// Registers `[start, start+len)` for write-protect faults.
    pub fn register(&self, start: *mut u8, len: usize) -> Result<()> {
        self.wp
            .register(start, len)
            .map_err(what(format!("UFFDIO_REGISTER of {len} bytes")))
    }

    /// Write-protects (`on`) or releases the range; releasing wakes its waiters.
    pub fn protect(&self, start: *mut u8, len: usize, on: bool) -> Result<()> {
        if !on {
            // Count the waiters first: waking removes their messages.
            self.drain();
        }
        let t = std::time::Instant::now();
        let r = self.wp.protect(start, len, on).map_err(what(format!(
            "UFFDIO_WRITEPROTECT ({}) of {len} bytes",
            if on { "protect" } else { "release" }
        )));
        self.wp_ns
            .fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
        r
    }

    /// Wakes writers waiting on `[start, start+len)` (after the range was remapped).
    pub fn wake(&self, start: *mut u8, len: usize) -> Result<()> {
        // Count the waiters first: waking removes their messages.
        self.drain();
        self.wp
            .wake(start, len)
            .map_err(what(format!("UFFDIO_WAKE of {len} bytes")))
    }

    /// Reads pending fault messages, counting them.
    pub fn drain(&self) {
        self.blocked.fetch_add(self.wp.drain(), Ordering::Relaxed);
    }
}

/// How an arena is built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// Over a node-1 and a node-0 pool ([`Backing::Pools`]).
    Pools,
    /// Private memory ([`Backing::Anon`]); the kernel may back 4 KiB folios with
    /// transparent huge pages.
    Anon,
    /// Private memory in base pages only (`MADV_NOHUGEPAGE`), so the kernel moves 4 KiB
    /// pages as the migrator does.
    AnonBasePages,
}

/// What backs the arena.
#[derive(Debug)]
pub enum Backing {
    /// Folio `i` is slot `i` of `pool1` until promoted, then slot `i` of `pool0`.
    Pools { pool1: Pool, pool0: Pool },
    /// Private memory on node 1 that `move_pages(2)` moves.
    Anon,
}

/// The workload's folios and where each currently lives.
#[derive(Debug)]
pub struct Arena {
    pub base: *mut u8,
    pub folio: usize,
    pub n: usize,
    pub backing: Backing,
    pub uffd: Uffd,
    /// Current node of each folio (0 or 1), read by the workload's threads.
    pub node: Vec<AtomicU8>,
    /// Access count of each folio (saturating at 255): bumped by the workload's threads on
    /// access, read and cleared by demotion's scan ([`crate::cold`]).
    pub accessed: Vec<AtomicU8>,
    /// The kernel (or a test double).
    pub sys: Arc<dyn MemorySys>,
    /// Time spent remapping ([`Arena::remap_to`]), ns.
    pub remap_ns: AtomicU64,
}

// SAFETY: the arena's memory is shared by design; the workload threads only read `node` and
// access folios through `base`.
unsafe impl Send for Arena {}
// SAFETY: as above.
unsafe impl Sync for Arena {}

impl Arena {
    /// `n` folios on node 1, each filled by `fill(index, bytes)`, registered for
    /// write-protect.
    pub fn new(
        folio: FolioSize,
        n: usize,
        pools: bool,
        fill: impl Fn(usize, &mut [u8]),
    ) -> Result<Self> {
        Self::with_sys(Arc::new(Linux), folio, n, pools, fill)
    }

    /// [`Arena::new`] through `sys`.
    pub fn with_sys(
        sys: Arc<dyn MemorySys>,
        folio: FolioSize,
        n: usize,
        pools: bool,
        fill: impl Fn(usize, &mut [u8]),
    ) -> Result<Self> {
        let layout = if pools { Layout::Pools } else { Layout::Anon };
        Self::build(sys, folio, n, layout, fill)
    }

    /// `n` folios of `folio` laid out as `layout`, on node 1, each filled by
    /// `fill(index, bytes)`, registered for write-protect.
    pub fn build(
        sys: Arc<dyn MemorySys>,
        folio: FolioSize,
        n: usize,
        layout: Layout,
        fill: impl Fn(usize, &mut [u8]),
    ) -> Result<Self> {
        let pools = layout == Layout::Pools;
        let fb = folio.bytes() as usize;
        let len = n * fb;
        let base = sysmm::reserve(len, fb)
            .map_err(what(format!("reserving {len} bytes of address space")))?;
        let backing = if pools {
            let pool1 = Pool::new(&*sys, 1, folio, n)?;
            let pool0 = Pool::new(&*sys, 0, folio, n)?;
            sysmm::mmap(
                base,
                len,
                libc::MAP_SHARED | libc::MAP_FIXED,
                pool1.fd.as_raw_fd(),
                0,
            )
            .map_err(what(format!(
                "mmap of {len} bytes (arena over the node-1 pool)"
            )))?;
            Backing::Pools { pool1, pool0 }
        } else {
            let mut flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED;
            if folio == FolioSize::Huge {
                flags |= libc::MAP_HUGETLB | (21 << libc::MAP_HUGE_SHIFT);
            }
            sysmm::mmap(base, len, flags, -1, 0)
                .map_err(what(format!("mmap of {len} bytes (anonymous arena)")))?;
            if layout == Layout::AnonBasePages {
                sysmm::no_huge_pages(base, len)
                    .map_err(what(format!("madvise(MADV_NOHUGEPAGE) of {len} bytes")))?;
            }
            sys.mbind(base, len, 1)
                .map_err(what(format!("mbind of {len} bytes to node 1")))?;
            Backing::Anon
        };
        let wp = sys
            .write_protect()
            .map_err(what("userfaultfd (write-protect on shmem and hugetlbfs)"))?;
        let a = Self {
            base,
            folio: fb,
            n,
            backing,
            uffd: Uffd::new(wp),
            node: (0..n).map(|_| AtomicU8::new(1)).collect(),
            accessed: (0..n).map(|_| AtomicU8::new(0)).collect(),
            sys,
            remap_ns: AtomicU64::new(0),
        };
        for i in 0..n {
            // SAFETY: folio i lies inside the arena mapping.
            fill(i, unsafe { std::slice::from_raw_parts_mut(a.at(i), fb) });
        }
        a.uffd.register(base, len)?;
        Ok(a)
    }

    pub fn at(&self, i: usize) -> *mut u8 {
        // SAFETY: callers pass i < n.
        unsafe { self.base.add(i * self.folio) }
    }

    pub fn bytes(&self, i: usize) -> &[u8] {
        // SAFETY: folio i is mapped for the arena's lifetime.
        unsafe { std::slice::from_raw_parts(self.at(i), self.folio) }
    }

    pub fn len(&self) -> usize {
        self.n * self.folio
    }

    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Maps node-0 slots over folios `start..start+count`, registers the new mapping for
    /// write-protect and wakes writers that waited on the old one.
    pub fn remap_to_node0(&self, start: usize, count: usize) -> Result<()> {
        self.remap_to(0, start, count)
    }

    /// Maps the slots of `node`'s pool (0 or 1) over folios `start..start+count` (promotion:
    /// node 0; demotion: node 1), registers the new mapping for write-protect and wakes
    /// writers that waited on the old one.
    pub fn remap_to(&self, node: u8, start: usize, count: usize) -> Result<()> {
        let Backing::Pools { pool0, pool1 } = &self.backing else {
            return Ok(());
        };
        let pool = if node == 0 { pool0 } else { pool1 };
        let (at, len) = (self.at(start), count * self.folio);
        let t = std::time::Instant::now();
        // Populated, as the kernel's remap installs the new page-table entries.
        sysmm::mmap(
            at,
            len,
            libc::MAP_SHARED | libc::MAP_FIXED | libc::MAP_POPULATE,
            pool.fd.as_raw_fd(),
            start * self.folio,
        )
        .map_err(what(format!(
            "mmap of {len} bytes (node-{node} slots over the arena)"
        )))?;
        self.uffd.register(at, len)?;
        for i in start..start + count {
            self.node[i].store(node, Ordering::Release);
        }
        let r = self.uffd.wake(at, len);
        self.remap_ns
            .fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
        r
    }

    /// `move_pages(2)` of the arena's pages: with `node` Some, moves them there; with None,
    /// queries. Each page's status: its node, or a negative errno.
    pub fn move_pages(&self, pages: &[*mut u8], node: Option<i32>) -> Result<Vec<i32>> {
        self.sys
            .move_pages(pages, node)
            .map_err(what(format!("move_pages of {} pages", pages.len())))
    }

    /// `move_pages(2)` query of every folio: (on node 0, on node 1, elsewhere or failed; a
    /// page not mapped at the time counts as failed).
    pub fn census(&self) -> Result<(u64, u64, u64)> {
        let pages: Vec<*mut u8> = (0..self.n).map(|i| self.at(i)).collect();
        let st = self.move_pages(&pages, None)?;
        let count = |want: i32| st.iter().filter(|&&s| s == want).count() as u64;
        let (a, b) = (count(0), count(1));
        Ok((a, b, self.n as u64 - a - b))
    }
}

impl Drop for Arena {
    fn drop(&mut self) {
        // SAFETY: the arena's range, which we mapped; nothing uses it once the arena goes.
        unsafe { sysmm::munmap(self.base, self.len()) };
    }
}

/// Contiguous runs `(start, count)` of sorted folio indices.
pub fn runs(sorted: &[u32]) -> Vec<(usize, usize)> {
    let mut out: Vec<(usize, usize)> = Vec::new();
    for &f in sorted {
        let f = f as usize;
        match out.last_mut() {
            Some((s, c)) if *s + *c == f => *c += 1,
            _ => out.push((f, 1)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_split_at_gaps() {
        assert_eq!(runs(&[1, 2, 3, 7, 8, 10]), vec![(1, 3), (7, 2), (10, 1)]);
        assert!(runs(&[]).is_empty());
    }
}
