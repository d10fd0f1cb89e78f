//! userfaultfd(2) in write-protect mode (Linux `include/uapi/linux/userfaultfd.h`;
//! `Documentation/admin-guide/mm/userfaultfd.rst`, "Write Protect Notifications"): a
//! registered range can be write-protected; a writer then waits until the range is released
//! or woken, and each wait leaves a message on the fd.

use super::last_err;
use std::fs::File;
use std::io::Result;
use std::os::fd::{AsRawFd, FromRawFd};
use vmm_sys_util::{ioctl_ior_nr, ioctl_iowr_nr};

/// Write-protection of address ranges, as the migrator's mover uses it.
pub trait WriteProtect: std::fmt::Debug + Send + Sync {
    /// Registers `[start, start + len)` for write-protect faults.
    fn register(&self, start: *mut u8, len: usize) -> Result<()>;
    /// Write-protects (`on`) or releases the range; releasing wakes its waiters.
    fn protect(&self, start: *mut u8, len: usize, on: bool) -> Result<()>;
    /// Wakes writers waiting on the range (after it was mapped anew).
    fn wake(&self, start: *mut u8, len: usize) -> Result<()>;
    /// Reads the pending fault messages; returns how many there were.
    fn drain(&self) -> u64;
}

/// `UFFDIO`: the ioctl type of userfaultfd.
const UFFDIO: u32 = 0xAA;
/// `struct uffdio_api`.
#[repr(C)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}

/// `struct uffdio_range`.
#[repr(C)]
struct UffdioRange {
    start: u64,
    len: u64,
}

/// `struct uffdio_register`.
#[repr(C)]
struct UffdioRegister {
    range: UffdioRange,
    mode: u64,
    ioctls: u64,
}

/// `struct uffdio_writeprotect`.
#[repr(C)]
struct UffdioWriteprotect {
    range: UffdioRange,
    mode: u64,
}

ioctl_iowr_nr!(UFFDIO_API, UFFDIO, 0x3F, UffdioApi);
ioctl_iowr_nr!(UFFDIO_REGISTER, UFFDIO, 0x00, UffdioRegister);
ioctl_ior_nr!(UFFDIO_WAKE, UFFDIO, 0x02, UffdioRange);
ioctl_iowr_nr!(UFFDIO_WRITEPROTECT, UFFDIO, 0x06, UffdioWriteprotect);

const UFFD_API: u64 = 0xAA;
const UFFD_FEATURE_WP_HUGETLBFS_SHMEM: u64 = 1 << 12;
const UFFDIO_REGISTER_MODE_WP: u64 = 1 << 1;
const UFFDIO_WRITEPROTECT_MODE_WP: u64 = 1 << 0;
/// `sizeof(struct uffd_msg)`.
const UFFD_MSG_BYTES: usize = 32;

/// A userfaultfd used for write-protection only (shmem and hugetlbfs included).
#[derive(Debug)]
pub struct Userfaultfd {
    fd: File,
}

impl Userfaultfd {
    /// Opens a non-blocking userfaultfd and negotiates write-protect on shmem and
    /// hugetlbfs.
    pub fn new() -> Result<Self> {
        // SAFETY: userfaultfd(2) takes flags only; root may handle kernel faults too.
        let fd =
            unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC | libc::O_NONBLOCK) };
        if fd < 0 {
            return Err(last_err());
        }
        // SAFETY: a fresh fd nothing else owns.
        let fd = unsafe { File::from_raw_fd(fd as i32) };
        let mut api = UffdioApi {
            api: UFFD_API,
            features: UFFD_FEATURE_WP_HUGETLBFS_SHMEM,
            ioctls: 0,
        };
        // SAFETY: the kernel reads and writes a uffdio_api we own.
        if unsafe { libc::ioctl(fd.as_raw_fd(), UFFDIO_API(), &mut api) } < 0 {
            return Err(last_err());
        }
        Ok(Self { fd })
    }
}

fn range(start: *mut u8, len: usize) -> UffdioRange {
    UffdioRange {
        start: start as u64,
        len: len as u64,
    }
}

impl WriteProtect for Userfaultfd {
    fn register(&self, start: *mut u8, len: usize) -> Result<()> {
        let mut r = UffdioRegister {
            range: range(start, len),
            mode: UFFDIO_REGISTER_MODE_WP,
            ioctls: 0,
        };
        // SAFETY: the kernel reads and writes a uffdio_register we own.
        if unsafe { libc::ioctl(self.fd.as_raw_fd(), UFFDIO_REGISTER(), &mut r) } < 0 {
            return Err(last_err());
        }
        Ok(())
    }

    fn protect(&self, start: *mut u8, len: usize, on: bool) -> Result<()> {
        let mut w = UffdioWriteprotect {
            range: range(start, len),
            mode: if on { UFFDIO_WRITEPROTECT_MODE_WP } else { 0 },
        };
        // SAFETY: the kernel reads a uffdio_writeprotect we own.
        if unsafe { libc::ioctl(self.fd.as_raw_fd(), UFFDIO_WRITEPROTECT(), &mut w) } < 0 {
            return Err(last_err());
        }
        Ok(())
    }

    fn wake(&self, start: *mut u8, len: usize) -> Result<()> {
        let r = range(start, len);
        // SAFETY: the kernel reads a uffdio_range we own.
        if unsafe { libc::ioctl(self.fd.as_raw_fd(), UFFDIO_WAKE(), &r) } < 0 {
            return Err(last_err());
        }
        Ok(())
    }

    fn drain(&self) -> u64 {
        let mut buf = [0u8; UFFD_MSG_BYTES * 64];
        let mut n = 0;
        loop {
            // SAFETY: reading into a live buffer from our non-blocking fd.
            let r = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if r <= 0 {
                return n;
            }
            n += r as u64 / UFFD_MSG_BYTES as u64;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_match_linux_uapi() {
        // userfaultfd.h: UFFDIO_API _IOWR(UFFDIO, 0x3F, struct uffdio_api): dir 3 << 30,
        // size 24 << 16, type 0xAA << 8, nr 0x3F.
        assert_eq!(UFFDIO_API(), 0xC018_AA3F);
        // UFFDIO_REGISTER _IOWR(UFFDIO, 0x00, struct uffdio_register): size 32.
        assert_eq!(UFFDIO_REGISTER(), 0xC020_AA00);
        // UFFDIO_WAKE _IOR(UFFDIO, 0x02, struct uffdio_range): dir 2 << 30, size 16.
        assert_eq!(UFFDIO_WAKE(), 0x8010_AA02);
        // UFFDIO_WRITEPROTECT _IOWR(UFFDIO, 0x06, struct uffdio_writeprotect): size 24.
        assert_eq!(UFFDIO_WRITEPROTECT(), 0xC018_AA06);
    }

    #[test]
    fn constants_match_linux_uapi() {
        // UFFD_API ((__u64)0xAA); UFFD_FEATURE_WP_HUGETLBFS_SHMEM (1 << 12);
        // UFFDIO_REGISTER_MODE_WP ((__u64)1 << 1); UFFDIO_WRITEPROTECT_MODE_WP ((__u64)1 << 0);
        // struct uffd_msg is 32 bytes (__u8 event, 3 reserved, __u32 reserved, 24-byte arg).
        assert_eq!(UFFD_API, 0xAA);
        assert_eq!(UFFD_FEATURE_WP_HUGETLBFS_SHMEM, 0x1000);
        assert_eq!(UFFDIO_REGISTER_MODE_WP, 2);
        assert_eq!(UFFDIO_WRITEPROTECT_MODE_WP, 1);
        assert_eq!(UFFD_MSG_BYTES, 32);
        assert_eq!(std::mem::size_of::<UffdioApi>(), 24);
        assert_eq!(std::mem::size_of::<UffdioRegister>(), 32);
        assert_eq!(std::mem::size_of::<UffdioRange>(), 16);
        assert_eq!(std::mem::size_of::<UffdioWriteprotect>(), 24);
    }
}
