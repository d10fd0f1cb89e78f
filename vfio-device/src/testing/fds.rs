//! File descriptors a test plays the client with: a memfd as shared guest RAM (what QEMU's
//! `memory-backend-memfd,share=on` gives the server through DMA_MAP), eventfds for interrupts
//! (what SET_IRQS hands over), and waits on them. Test code: failures panic.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::time::{Duration, Instant};

/// A shared memfd of `size` bytes, the guest RAM a test maps into the device.
pub fn memfd(size: u64) -> File {
    crate::dma::memfd(c"guest-ram", size).expect("memfd_create")
}

/// A non-blocking eventfd, as QEMU hands one over per interrupt vector.
pub fn eventfd() -> File {
    // SAFETY: plain eventfd creation.
    let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    assert!(fd >= 0, "eventfd: {}", std::io::Error::last_os_error());
    // SAFETY: a fresh fd we own.
    unsafe { File::from_raw_fd(fd) }
}

/// Waits up to `timeout` for an eventfd to fire; returns its count (0 on timeout).
pub fn wait_event(f: &File, timeout: Duration) -> u64 {
    let mut p = libc::pollfd {
        fd: f.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: one valid pollfd.
    let n = unsafe { libc::poll(&mut p, 1, ms) };
    if n <= 0 {
        return 0;
    }
    let mut v = [0u8; 8];
    // SAFETY: reading 8 bytes into a live buffer from our eventfd.
    let r = unsafe { libc::read(f.as_raw_fd(), v.as_mut_ptr().cast(), 8) };
    if r == 8 {
        u64::from_le_bytes(v)
    } else {
        0
    }
}

/// Polls `cond` every 200 us until it holds; panics naming `what` after `timeout`.
pub fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_micros(200));
    }
}
