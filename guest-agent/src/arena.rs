//! The memory a migration moves, and the kernel interfaces it is moved with (memfd_create(2), mbind(2),
//! mmap(2) `MAP_FIXED`, userfaultfd(2) write-protect mode):
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
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};

/// Errors of the memory plumbing name the call and the object.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
pub struct MemError {
    pub what: String,
    #[source]
    pub source: std::io::Error,
}

fn err(what: impl Into<String>) -> MemError {
    MemError {
        what: what.into(),
        source: std::io::Error::last_os_error(),
    }
}

pub type Result<T> = std::result::Result<T, MemError>;

const MPOL_BIND: i32 = 2;
const MPOL_MF_STRICT: u32 = 1;
const MPOL_MF_MOVE: u32 = 1 << 1;

/// Binds `[addr, addr+len)` to `node` (MPOL_BIND, strict).
pub(crate) fn mbind(addr: *mut u8, len: usize, node: u32) -> Result<()> {
    let mask: u64 = 1 << node;
    // SAFETY: mbind(2) on a mapping of ours with a one-word node mask.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mbind,
            addr,
            len,
            MPOL_BIND,
            &mask,
            64u64,
            MPOL_MF_STRICT | MPOL_MF_MOVE,
        )
    };
    if r != 0 {
        return Err(err(format!("mbind of {len} bytes to node {node}")));
    }
    Ok(())
}

/// `move_pages(2)` on our own pages: with `node` Some, moves them there; with None, queries.
/// Returns each page's status (its node, or a negative errno).
pub fn move_pages(pages: &[*mut u8], node: Option<i32>) -> Result<Vec<i32>> {
    let mut status = vec![0i32; pages.len()];
    let nodes = node.map(|n| vec![n; pages.len()]);
    // SAFETY: arrays of pages.len() entries; the kernel writes `status`.
    let r = unsafe {
        libc::syscall(
            libc::SYS_move_pages,
            0,
            pages.len() as libc::c_ulong,
            pages.as_ptr(),
            nodes.as_ref().map_or(std::ptr::null(), |n| n.as_ptr()),
            status.as_mut_ptr(),
            if node.is_some() { MPOL_MF_MOVE } else { 0 },
        )
    };
    if r < 0 {
        return Err(err(format!("move_pages of {} pages", pages.len())));
    }
    Ok(status)
}

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

fn mmap(addr: *mut u8, len: usize, flags: i32, fd: i32, off: usize, what: &str) -> Result<*mut u8> {
    // SAFETY: either a fresh mapping, or MAP_FIXED over a range this module owns.
    let p = unsafe {
        libc::mmap(
            addr.cast(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            flags,
            fd,
            off as libc::off_t,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(err(format!("mmap of {len} bytes ({what})")));
    }
    Ok(p.cast())
}

/// Reserves `len` bytes of address space aligned to `align` (PROT_NONE until mapped over).
fn reserve(len: usize, align: usize) -> Result<*mut u8> {
    // SAFETY: a fresh PROT_NONE reservation; trimmed below to the aligned part.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len + align,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(err(format!("reserving {len} bytes of address space")));
    }
    let a = (p as usize).next_multiple_of(align);
    // SAFETY: unmapping the unaligned head and the tail of our own reservation.
    unsafe {
        if a > p as usize {
            libc::munmap(p, a - p as usize);
        }
        libc::munmap((a + len) as *mut libc::c_void, p as usize + align - a);
    }
    Ok(a as *mut u8)
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
    pub fn new(node: u32, folio: FolioSize, n: usize) -> Result<Self> {
        let len = n * folio.bytes() as usize;
        let name = std::ffi::CString::new(format!("tierbed-pool{node}")).expect("no NUL");
        let mut flags = libc::MFD_CLOEXEC;
        if folio == FolioSize::Huge {
            flags |= libc::MFD_HUGETLB | (21 << libc::MFD_HUGE_SHIFT);
        }
        // SAFETY: memfd_create with a NUL-terminated name.
        let fd = unsafe { libc::memfd_create(name.as_ptr(), flags) };
        if fd < 0 {
            return Err(err(format!("memfd_create for the node-{node} pool")));
        }
        // SAFETY: a fresh fd we own.
        let fd = unsafe { File::from_raw_fd(fd) };
        fd.set_len(len as u64).map_err(|e| MemError {
            what: format!("sizing the node-{node} pool to {len} bytes"),
            source: e,
        })?;
        let align = folio.bytes() as usize;
        let at = reserve(len, align)?;
        let view = mmap(
            at,
            len,
            libc::MAP_SHARED | libc::MAP_FIXED,
            fd.as_raw_fd(),
            0,
            "pool view",
        )?;
        let p = Self {
            fd,
            view,
            len,
            node,
        };
        mbind(view, len, node)?;
        for off in (0..len).step_by(align) {
            // SAFETY: inside the view; the write allocates the folio on `node`.
            unsafe { std::ptr::write_volatile(view.add(off), 0) };
        }
        // SAFETY: mlock on our own view (keeps it resident; VFIO pins it when mapped).
        unsafe { libc::mlock(view.cast(), len) };
        Ok(p)
    }

    pub fn slot(&self, i: usize, folio: usize) -> *mut u8 {
        // SAFETY: callers pass i < n.
        unsafe { self.view.add(i * folio) }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        // SAFETY: the view we mapped.
        unsafe { libc::munmap(self.view.cast(), self.len) };
    }
}

// userfaultfd ABI (include/uapi/linux/userfaultfd.h).
const UFFD_API: u64 = 0xAA;
const UFFD_FEATURE_WP_HUGETLBFS_SHMEM: u64 = 1 << 12;
const UFFDIO_API: libc::c_ulong = 0xC018_AA3F;
const UFFDIO_REGISTER: libc::c_ulong = 0xC020_AA00;
const UFFDIO_WAKE: libc::c_ulong = 0x8010_AA02;
const UFFDIO_WRITEPROTECT: libc::c_ulong = 0xC018_AA06;
const UFFDIO_REGISTER_MODE_WP: u64 = 1 << 1;
const UFFDIO_WRITEPROTECT_MODE_WP: u64 = 1;

#[repr(C)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}

#[repr(C)]
struct UffdioRange {
    start: u64,
    len: u64,
}

#[repr(C)]
struct UffdioRegister {
    range: UffdioRange,
    mode: u64,
    ioctls: u64,
}

#[repr(C)]
struct UffdioWriteprotect {
    range: UffdioRange,
    mode: u64,
}

/// A userfaultfd used for write-protection only.
#[derive(Debug)]
pub struct Uffd {
    fd: File,
    /// Write faults that waited (events drained from the fd).
    pub blocked: AtomicU64,
}

impl Uffd {
    pub fn new() -> Result<Self> {
        // SAFETY: userfaultfd(2); root may handle kernel faults too.
        let fd =
            unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC | libc::O_NONBLOCK) };
        if fd < 0 {
            return Err(err("userfaultfd"));
        }
        // SAFETY: a fresh fd we own.
        let fd = unsafe { File::from_raw_fd(fd as i32) };
        let mut api = UffdioApi {
            api: UFFD_API,
            features: UFFD_FEATURE_WP_HUGETLBFS_SHMEM,
            ioctls: 0,
        };
        // SAFETY: the kernel reads and writes a uffdio_api we own.
        if unsafe { libc::ioctl(fd.as_raw_fd(), UFFDIO_API, &mut api) } < 0 {
            return Err(err("UFFDIO_API (write-protect on shmem and hugetlbfs)"));
        }
        Ok(Self {
            fd,
            blocked: AtomicU64::new(0),
        })
    }

    /// Registers `[start, start+len)` for write-protect faults.
    pub fn register(&self, start: *mut u8, len: usize) -> Result<()> {
        let mut r = UffdioRegister {
            range: UffdioRange {
                start: start as u64,
                len: len as u64,
            },
            mode: UFFDIO_REGISTER_MODE_WP,
            ioctls: 0,
        };
        // SAFETY: the kernel reads and writes a uffdio_register we own.
        if unsafe { libc::ioctl(self.fd.as_raw_fd(), UFFDIO_REGISTER, &mut r) } < 0 {
            return Err(err(format!("UFFDIO_REGISTER of {len} bytes")));
        }
        Ok(())
    }

    /// Write-protects (`on`) or releases the range; releasing wakes its waiters.
    pub fn protect(&self, start: *mut u8, len: usize, on: bool) -> Result<()> {
        if !on {
            // Count the waiters first: waking removes their messages.
            self.drain();
        }
        let mut w = UffdioWriteprotect {
            range: UffdioRange {
                start: start as u64,
                len: len as u64,
            },
            mode: if on { UFFDIO_WRITEPROTECT_MODE_WP } else { 0 },
        };
        // SAFETY: the kernel reads a uffdio_writeprotect we own.
        if unsafe { libc::ioctl(self.fd.as_raw_fd(), UFFDIO_WRITEPROTECT, &mut w) } < 0 {
            return Err(err(format!(
                "UFFDIO_WRITEPROTECT ({}) of {len} bytes",
                if on { "protect" } else { "release" }
            )));
        }
        Ok(())
    }

    /// Wakes writers waiting on `[start, start+len)` (after the range was remapped).
    pub fn wake(&self, start: *mut u8, len: usize) -> Result<()> {
        let r = UffdioRange {
            start: start as u64,
            len: len as u64,
        };
        // Count the waiters first: waking removes their messages.
        self.drain();
        // SAFETY: the kernel reads a uffdio_range we own.
        if unsafe { libc::ioctl(self.fd.as_raw_fd(), UFFDIO_WAKE, &r) } < 0 {
            return Err(err(format!("UFFDIO_WAKE of {len} bytes")));
        }
        Ok(())
    }

    /// Reads pending fault messages (32 bytes each), counting them.
    pub fn drain(&self) {
        let mut buf = [0u8; 32 * 64];
        loop {
            // SAFETY: reading into a live buffer from our non-blocking fd.
            let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                return;
            }
            self.blocked.fetch_add(n as u64 / 32, Ordering::Relaxed);
        }
    }
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
        let fb = folio.bytes() as usize;
        let len = n * fb;
        let base = reserve(len, fb)?;
        let backing = if pools {
            let pool1 = Pool::new(1, folio, n)?;
            let pool0 = Pool::new(0, folio, n)?;
            mmap(
                base,
                len,
                libc::MAP_SHARED | libc::MAP_FIXED,
                pool1.fd.as_raw_fd(),
                0,
                "arena over the node-1 pool",
            )?;
            Backing::Pools { pool1, pool0 }
        } else {
            let mut flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED;
            if folio == FolioSize::Huge {
                flags |= libc::MAP_HUGETLB | (21 << libc::MAP_HUGE_SHIFT);
            }
            mmap(base, len, flags, -1, 0, "anonymous arena")?;
            mbind(base, len, 1)?;
            Backing::Anon
        };
        let a = Self {
            base,
            folio: fb,
            n,
            backing,
            uffd: Uffd::new()?,
            node: (0..n).map(|_| AtomicU8::new(1)).collect(),
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
        let Backing::Pools { pool0, .. } = &self.backing else {
            return Ok(());
        };
        let (at, len) = (self.at(start), count * self.folio);
        // Populated, as the kernel's remap installs the new page-table entries.
        mmap(
            at,
            len,
            libc::MAP_SHARED | libc::MAP_FIXED | libc::MAP_POPULATE,
            pool0.fd.as_raw_fd(),
            start * self.folio,
            "node-0 slots over the arena",
        )?;
        self.uffd.register(at, len)?;
        for i in start..start + count {
            self.node[i].store(0, Ordering::Release);
        }
        self.uffd.wake(at, len)
    }

    /// `move_pages(2)` query of every folio: (on node 0, on node 1, elsewhere or failed; a
    /// page not mapped at the time counts as failed).
    pub fn census(&self) -> Result<(u64, u64, u64)> {
        let pages: Vec<*mut u8> = (0..self.n).map(|i| self.at(i)).collect();
        let st = move_pages(&pages, None)?;
        let count = |want: i32| st.iter().filter(|&&s| s == want).count() as u64;
        let (a, b) = (count(0), count(1));
        Ok((a, b, self.n as u64 - a - b))
    }
}

impl Drop for Arena {
    fn drop(&mut self) {
        // SAFETY: the arena's range, which we mapped.
        unsafe { libc::munmap(self.base.cast(), self.len()) };
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

/// CPU time of the calling thread (ns).
pub fn thread_cpu_ns() -> u64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes a timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
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
