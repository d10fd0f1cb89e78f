//! Waiting for the vfio-user messages a client has already sent: the transport side of
//! [`crate::dma_space::Quiesce`].
//!
//! The `vfio_user` crate's server loop owns the connection and handles one message at a time
//! on the serving thread, blocking in `recvmsg(2)` on the connection while idle. Every message
//! the client sent before a moment T has been handled once, after T, the connection's receive
//! queue is empty (`FIONREAD`) and then the serving thread is seen blocked in `recvmsg` on it:
//! an empty queue means each earlier message was dequeued whole (QEMU writes a message with one
//! `sendmsg`), and the loop only returns to `recvmsg` after handling what it dequeued. The
//! serving thread's state comes from `/proc/self/task/<tid>/syscall` (Linux `proc(5)`), which
//! also names the connection's fd (the syscall's first argument).
//!
//! The cheap test before a pass ([`SocketWatch::maybe_pending`]) only reads the queue length and
//! whether a DMA message is being handled; the exact wait runs when that says "maybe".
//!
//! Left out: systems without `/proc/self/task/<tid>/syscall` (the wait then returns at once,
//! without the guarantee), and transports with more than one serving thread. A wait that does
//! not see the socket drained within its limit ([`crate::dma_space::QUIESCE_LIMIT`]) gives up
//! and counts it (`gave_up`).

use crate::dma_space::Quiesce;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The serving thread's progress, as seen from device threads.
#[derive(Debug)]
pub struct SocketWatch {
    tid: AtomicI32,
    conn: AtomicI32,
    dma_in_progress: AtomicU64,
    /// Exact waits run, and those that gave up at their limit.
    pub waits: AtomicU64,
    pub gave_up: AtomicU64,
}

impl Default for SocketWatch {
    fn default() -> Self {
        Self {
            tid: AtomicI32::new(0),
            conn: AtomicI32::new(-1),
            dma_in_progress: AtomicU64::new(0),
            waits: AtomicU64::new(0),
            gave_up: AtomicU64::new(0),
        }
    }
}

/// Bytes waiting in a socket's receive queue.
fn queued(fd: i32) -> Option<usize> {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one c_int into `n`; a stale fd only makes the ioctl fail.
    let rc = unsafe { libc::ioctl(fd, libc::FIONREAD, &mut n) };
    (rc == 0).then(|| usize::try_from(n).unwrap_or(0))
}

impl SocketWatch {
    /// Called on the thread that runs the server loop, before it serves.
    pub fn serving_thread(&self) {
        // SAFETY: gettid has no preconditions.
        self.tid.store(unsafe { libc::gettid() }, Ordering::Release);
    }

    /// The connection ended (its fd number may be reused).
    pub fn connection_closed(&self) {
        self.conn.store(-1, Ordering::Release);
    }

    /// A DMA_MAP or DMA_UNMAP handler starts / ends.
    pub fn dma_begin(&self) {
        self.dma_in_progress.fetch_add(1, Ordering::AcqRel);
    }
    pub fn dma_end(&self) {
        self.dma_in_progress.fetch_sub(1, Ordering::AcqRel);
    }

    /// The syscall the serving thread is blocked in and its first argument.
    fn blocked_in(&self) -> Option<(i64, i64)> {
        let tid = self.tid.load(Ordering::Acquire);
        if tid == 0 {
            return None;
        }
        let s = std::fs::read_to_string(format!("/proc/self/task/{tid}/syscall")).ok()?;
        let mut w = s.split_whitespace();
        let nr: i64 = w.next()?.parse().ok()?;
        let arg = w
            .next()
            .and_then(|a| i64::from_str_radix(a.trim_start_matches("0x"), 16).ok());
        Some((nr, arg.unwrap_or(-1)))
    }

    /// Whether every message sent before this call has been handled: Some(true) yes,
    /// Some(false) not yet, None cannot tell.
    fn drained(&self) -> Option<bool> {
        let Some((nr, fd)) = self.blocked_in() else {
            // "running", or not readable: busy unless we cannot read it at all.
            return (self.tid.load(Ordering::Acquire) != 0).then_some(false);
        };
        if nr == libc::SYS_accept4 || nr == libc::SYS_accept {
            return Some(true);
        }
        if nr != libc::SYS_recvmsg {
            return Some(false);
        }
        let fd = i32::try_from(fd).ok()?;
        if queued(fd)? > 0 {
            return Some(false);
        }
        let again = self.blocked_in();
        let idle = again == Some((nr, i64::from(fd)));
        if idle {
            self.conn.store(fd, Ordering::Release);
        }
        Some(idle)
    }
}

impl Quiesce for SocketWatch {
    fn quiesce(&self, limit: Duration) -> bool {
        self.waits.fetch_add(1, Ordering::Relaxed);
        let deadline = Instant::now() + limit;
        let mut spins = 0u32;
        loop {
            match self.drained() {
                Some(true) => return true,
                None => return false,
                Some(false) if Instant::now() >= deadline => {
                    self.gave_up.fetch_add(1, Ordering::Relaxed);
                    return false;
                }
                Some(false) => {
                    spins += 1;
                    if spins < 20 {
                        std::thread::yield_now();
                    } else {
                        std::thread::sleep(Duration::from_micros(20));
                    }
                }
            }
        }
    }

    fn maybe_pending(&self) -> bool {
        if self.dma_in_progress.load(Ordering::Acquire) > 0 {
            return true;
        }
        let fd = self.conn.load(Ordering::Acquire);
        fd < 0 || queued(fd).is_none_or(|n| n > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;
    use std::sync::Arc;

    /// Blocks in recvmsg(2) for one 16-byte message, as the server loop does.
    fn recv_header(s: &UnixStream) -> bool {
        let mut b = [0u8; 16];
        let mut iov = libc::iovec {
            iov_base: b.as_mut_ptr().cast(),
            iov_len: b.len(),
        };
        // SAFETY: an all-zero msghdr is valid; it points at one live iovec.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        // SAFETY: recvmsg into the buffers above.
        unsafe { libc::recvmsg(s.as_raw_fd(), &mut msg, libc::MSG_WAITALL) == 16 }
    }

    #[test]
    fn quiesce_returns_once_every_message_sent_before_it_was_handled() {
        let (mut client, server) = UnixStream::pair().expect("socketpair");
        let watch = Arc::new(SocketWatch::default());
        let handled = Arc::new(AtomicU64::new(0));
        let (w, h) = (Arc::clone(&watch), Arc::clone(&handled));
        let serving = std::thread::spawn(move || {
            w.serving_thread();
            while recv_header(&server) {
                // A slow handler: the waiter must not return before it is done.
                std::thread::sleep(Duration::from_millis(30));
                h.fetch_add(1, Ordering::SeqCst);
            }
        });
        // Idle: the serving thread is blocked in recvmsg with nothing queued.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !watch.quiesce(Duration::from_millis(100)) {
            assert!(
                Instant::now() < deadline,
                "an idle server never looked idle"
            );
        }
        assert!(!watch.maybe_pending(), "idle connection known and empty");
        for round in 1..=3u64 {
            client.write_all(&[0u8; 16]).expect("send");
            client.write_all(&[0u8; 16]).expect("send");
            assert!(watch.maybe_pending(), "bytes queued");
            assert!(watch.quiesce(Duration::from_secs(5)), "drained in time");
            assert_eq!(
                handled.load(Ordering::SeqCst),
                2 * round,
                "both handled first"
            );
        }
        drop(client);
        serving.join().expect("serving thread");
    }
}
