//! Memory system calls: mappings (mmap(2), munmap(2), mlock(2), memfd_create(2)), NUMA
//! memory policy and page migration (mbind(2), move_pages(2), get_mempolicy(2); Linux
//! `include/uapi/linux/mempolicy.h`, `Documentation/admin-guide/mm/numa_memory_policy.rst`),
//! and the calling thread's CPU clock (clock_gettime(2) `CLOCK_THREAD_CPUTIME_ID`).
//!
//! [`MemorySys`] is what the migrator's arena needs from the kernel: [`Linux`] makes the
//! calls; a test double keeps a node per page in memory.

use super::last_err;
use super::uffd::{Userfaultfd, WriteProtect};
use std::fs::File;
use std::io::Result;
use std::os::fd::FromRawFd;

/// `MPOL_DEFAULT`, `MPOL_BIND`; `MPOL_MF_STRICT`, `MPOL_MF_MOVE`; `MPOL_F_NODE`,
/// `MPOL_F_ADDR` (mempolicy.h).
pub const MPOL_DEFAULT: i32 = 0;
pub const MPOL_BIND: i32 = 2;
pub const MPOL_MF_STRICT: u32 = 1 << 0;
pub const MPOL_MF_MOVE: u32 = 1 << 1;
const MPOL_F_NODE: u64 = 1 << 0;
const MPOL_F_ADDR: u64 = 1 << 1;

/// Memory policy, page migration and write-protection, as the migrator's arena uses them.
pub trait MemorySys: std::fmt::Debug + Send + Sync {
    /// Binds `[addr, addr + len)` to `node` (MPOL_BIND, strict, moving what is elsewhere).
    fn mbind(&self, addr: *mut u8, len: usize, node: u32) -> Result<()>;
    /// Gives the range back the default (local) policy; its pages stay where they are.
    fn unbind(&self, addr: *mut u8, len: usize) -> Result<()>;
    /// `move_pages(2)` on this process's pages: with `node` Some, moves them there; with
    /// None, queries. Each page's status: its node, or a negative errno.
    fn move_pages(&self, pages: &[*mut u8], node: Option<i32>) -> Result<Vec<i32>>;
    /// A new write-protect handle.
    fn write_protect(&self) -> Result<Box<dyn WriteProtect>>;
}

/// The running kernel.
#[derive(Clone, Copy, Debug, Default)]
pub struct Linux;

fn mbind_raw(addr: *mut u8, len: usize, mode: i32, mask: Option<u64>, flags: u32) -> Result<()> {
    let m = mask.unwrap_or(0);
    // SAFETY: mbind(2) on a range of this process with a one-word node mask (or none).
    let r = unsafe {
        libc::syscall(
            libc::SYS_mbind,
            addr,
            len,
            mode,
            mask.map_or(std::ptr::null(), |_| &m as *const u64),
            if mask.is_some() { 64u64 } else { 0 },
            flags,
        )
    };
    if r != 0 {
        return Err(last_err());
    }
    Ok(())
}

impl MemorySys for Linux {
    fn mbind(&self, addr: *mut u8, len: usize, node: u32) -> Result<()> {
        mbind_raw(
            addr,
            len,
            MPOL_BIND,
            Some(1 << node),
            MPOL_MF_STRICT | MPOL_MF_MOVE,
        )
    }

    fn unbind(&self, addr: *mut u8, len: usize) -> Result<()> {
        mbind_raw(addr, len, MPOL_DEFAULT, None, 0)
    }

    fn move_pages(&self, pages: &[*mut u8], node: Option<i32>) -> Result<Vec<i32>> {
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
            return Err(last_err());
        }
        Ok(status)
    }

    fn write_protect(&self) -> Result<Box<dyn WriteProtect>> {
        Ok(Box::new(Userfaultfd::new()?))
    }
}

/// The node of the page at address `addr` (get_mempolicy(2) with `MPOL_F_NODE |
/// MPOL_F_ADDR`).
pub fn node_of(addr: usize) -> Result<i32> {
    let mut node: libc::c_int = -1;
    // SAFETY: the kernel writes one int to `node`; no node mask is asked for.
    let r = unsafe {
        libc::syscall(
            libc::SYS_get_mempolicy,
            &mut node as *mut libc::c_int,
            std::ptr::null_mut::<u64>(),
            0u64,
            addr,
            MPOL_F_NODE | MPOL_F_ADDR,
        )
    };
    if r != 0 {
        return Err(last_err());
    }
    Ok(node)
}

/// `mmap(2)` read-write: a fresh mapping (`addr` null) or one over a range the caller owns
/// (`MAP_FIXED`).
pub fn mmap(addr: *mut u8, len: usize, flags: i32, fd: i32, off: usize) -> Result<*mut u8> {
    // SAFETY: either a fresh mapping, or MAP_FIXED over a range the caller owns (callers
    // pass only ranges they reserved).
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
        return Err(last_err());
    }
    Ok(p.cast())
}

/// Fresh private anonymous read-write memory.
pub fn mmap_anon(len: usize, extra_flags: i32) -> Result<*mut u8> {
    mmap(
        std::ptr::null_mut(),
        len,
        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | extra_flags,
        -1,
        0,
    )
}

/// Reserves `len` bytes of address space aligned to `align` (PROT_NONE until mapped over).
pub fn reserve(len: usize, align: usize) -> Result<*mut u8> {
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
        return Err(last_err());
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

/// Unmaps `[addr, addr + len)`.
///
/// # Safety
/// The range must be a mapping the caller owns that nothing references any more.
pub unsafe fn munmap(addr: *mut u8, len: usize) {
    // SAFETY: as the caller vouches.
    unsafe { libc::munmap(addr.cast(), len) };
}

/// madvise(2) `MADV_NOHUGEPAGE`: the range keeps base pages (no transparent huge pages at
/// fault time or from khugepaged).
pub fn no_huge_pages(addr: *mut u8, len: usize) -> Result<()> {
    // SAFETY: advice on a range of ours; it changes no contents.
    if unsafe { libc::madvise(addr.cast(), len, libc::MADV_NOHUGEPAGE) } != 0 {
        return Err(last_err());
    }
    Ok(())
}

/// Locks `[addr, addr + len)` in memory (best effort: a limit is not an error here).
pub fn mlock(addr: *mut u8, len: usize) {
    // SAFETY: mlock only changes residency of a range of ours; a failure leaves it as is.
    unsafe { libc::mlock(addr.cast(), len) };
}

/// `memfd_create(2)`.
pub fn memfd_create(name: &str, flags: libc::c_uint) -> Result<File> {
    let name = std::ffi::CString::new(name).map_err(std::io::Error::other)?;
    // SAFETY: memfd_create with a NUL-terminated name.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), flags) };
    if fd < 0 {
        return Err(last_err());
    }
    // SAFETY: a fresh fd nothing else owns.
    Ok(unsafe { File::from_raw_fd(fd) })
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

/// The process's (user, system) CPU time so far, ns, all threads (getrusage(2)
/// `RUSAGE_SELF`).
pub fn process_cpu_ns() -> (u64, u64) {
    // SAFETY: rusage is plain data; getrusage fills it.
    let mut r: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes an rusage we own.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut r) };
    let ns = |t: libc::timeval| t.tv_sec as u64 * 1_000_000_000 + t.tv_usec as u64 * 1000;
    (ns(r.ru_utime), ns(r.ru_stime))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_constants_and_syscall_numbers_match_linux() {
        // include/uapi/linux/mempolicy.h: enum { MPOL_DEFAULT, MPOL_PREFERRED, MPOL_BIND,
        // ... }; MPOL_MF_STRICT (1 << 0), MPOL_MF_MOVE (1 << 1); MPOL_F_NODE (1 << 0),
        // MPOL_F_ADDR (1 << 1).
        assert_eq!((MPOL_DEFAULT, MPOL_BIND), (0, 2));
        assert_eq!((MPOL_MF_STRICT, MPOL_MF_MOVE), (1, 2));
        assert_eq!((MPOL_F_NODE, MPOL_F_ADDR), (1, 2));
        // arch/x86/entry/syscalls/syscall_64.tbl: 237 mbind, 239 get_mempolicy,
        // 279 move_pages, 323 userfaultfd.
        #[cfg(target_arch = "x86_64")]
        assert_eq!(
            (
                libc::SYS_mbind,
                libc::SYS_get_mempolicy,
                libc::SYS_move_pages,
                libc::SYS_userfaultfd
            ),
            (237, 239, 279, 323)
        );
    }

    #[test]
    fn get_mempolicy_places_a_touched_page() {
        let p = mmap_anon(4096, 0).expect("mmap");
        // SAFETY: our own fresh mapping.
        unsafe { p.write_volatile(1) };
        assert!(node_of(p as usize).expect("get_mempolicy") >= 0);
        // SAFETY: as above, unused from here.
        unsafe { munmap(p, 4096) };
    }

    #[test]
    fn a_reservation_is_aligned_and_mappable() {
        let len = 4 * 4096;
        let p = reserve(len, 1 << 21).expect("reserve");
        assert_eq!(p as usize % (1 << 21), 0);
        let q = mmap(
            p,
            len,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
            -1,
            0,
        )
        .expect("map over the reservation");
        assert_eq!(p, q);
        // SAFETY: our own fresh mapping.
        unsafe {
            q.write(7);
            munmap(q, len);
        }
    }

    #[test]
    fn the_cpu_clocks_advance() {
        let t = thread_cpu_ns();
        let mut x = 0u64;
        for i in 0..100_000u64 {
            x = std::hint::black_box(x.wrapping_add(i));
        }
        assert!(thread_cpu_ns() > t);
        let (user, system) = process_cpu_ns();
        assert!(user + system > 0);
    }
}
