//! eventfd(2) and poll(2), through which MSI-X vectors reach the SDXi driver (vfio-pci
//! signals a vector's eventfd), and the serial port's raw mode (termios(3)).

use super::last_err;
use std::fs::File;
use std::io::Result;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::time::Duration;

/// An eventfd (counter semantics).
#[derive(Debug)]
pub struct EventFd(File);

impl EventFd {
    pub fn new() -> Result<Self> {
        // SAFETY: plain eventfd creation.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(last_err());
        }
        // SAFETY: a fresh fd nothing else owns.
        Ok(Self(unsafe { File::from_raw_fd(fd) }))
    }

    /// Adds 1 to the counter (what the kernel does when the vector fires).
    pub fn signal(&self) -> Result<()> {
        let one = 1u64.to_ne_bytes();
        // SAFETY: an 8-byte write from a live buffer to an eventfd we own.
        if unsafe { libc::write(self.0.as_raw_fd(), one.as_ptr().cast(), 8) } != 8 {
            return Err(last_err());
        }
        Ok(())
    }

    /// Consumes the counter; true if it was non-zero. Blocks while it is zero, so call it
    /// after [`poll`] said the fd is readable.
    pub fn consume(&self) -> bool {
        let mut v = [0u8; 8];
        // SAFETY: an 8-byte read from an eventfd we own into a live buffer.
        unsafe { libc::read(self.0.as_raw_fd(), v.as_mut_ptr().cast(), 8) == 8 }
    }

    /// Waits up to `timeout` for the counter to become non-zero and consumes it.
    pub fn wait(&self, timeout: Duration) -> bool {
        poll(&[self.fd()], timeout).first().copied() == Some(true) && self.consume()
    }
}

impl AsRawFd for EventFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

impl EventFd {
    pub fn fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// poll(2) for input on `fds` for up to `timeout`: which are readable (all false on a
/// timeout or an error).
pub fn poll(fds: &[RawFd], timeout: Duration) -> Vec<bool> {
    let mut p: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
    // SAFETY: `p` holds p.len() valid pollfds the kernel may write.
    let n = unsafe { libc::poll(p.as_mut_ptr(), p.len() as libc::nfds_t, ms) };
    p.iter().map(|q| n > 0 && q.revents != 0).collect()
}

/// Puts a terminal in raw mode (no echo, no line editing); the baud rate is left as it is.
pub fn raw_mode(f: &File) -> Result<()> {
    // SAFETY: termios is plain data; tcgetattr fills it completely before it is used.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: a valid fd and a live termios.
    if unsafe { libc::tcgetattr(f.as_raw_fd(), &mut t) } != 0 {
        return Err(last_err());
    }
    // SAFETY: cfmakeraw only modifies the struct we own.
    unsafe { libc::cfmakeraw(&mut t) };
    // SAFETY: a valid fd and termios.
    if unsafe { libc::tcsetattr(f.as_raw_fd(), libc::TCSANOW, &t) } != 0 {
        return Err(last_err());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_eventfd_wakes_a_waiter_once_per_signal() {
        let e = EventFd::new().expect("eventfd");
        assert!(!e.wait(Duration::ZERO), "nothing signalled yet");
        e.signal().expect("signal");
        e.signal().expect("signal");
        assert!(e.wait(Duration::from_millis(100)), "signalled");
        assert!(!e.wait(Duration::ZERO), "one read consumes the whole count");
    }

    #[test]
    fn poll_says_which_fd_is_readable() {
        let (a, b) = (EventFd::new().expect("a"), EventFd::new().expect("b"));
        b.signal().expect("signal");
        assert_eq!(
            poll(&[a.fd(), b.fd()], Duration::from_millis(100)),
            vec![false, true]
        );
        assert_eq!(poll(&[a.fd()], Duration::ZERO), vec![false]);
    }
}
