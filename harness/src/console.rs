//! The interactive guest console of `harness bringup --console` (and of `harness run
//! --console` once the scenario is done): the guest's ttyS0 on a Unix socket (QEMU also logs
//! it to `console.log`), bridged to this terminal in raw mode, so keys such as Ctrl-C reach
//! the guest. Ctrl-] leaves (the harness then stops the VM); `exit` in the guest shell powers
//! it off. Standard input may also be a pipe (scripted sessions).

use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;

/// Ctrl-]: leave the console.
pub const ESCAPE: u8 = 0x1d;

/// The terminal in raw mode until dropped.
struct RawTerminal(Option<libc::termios>);

impl RawTerminal {
    fn enter() -> Self {
        // SAFETY: isatty on fd 0.
        if unsafe { libc::isatty(0) } != 1 {
            return Self(None);
        }
        // SAFETY: termios is plain data, filled by tcgetattr before use.
        let mut t: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: fd 0 and a live termios.
        if unsafe { libc::tcgetattr(0, &mut t) } != 0 {
            return Self(None);
        }
        let saved = t;
        // SAFETY: cfmakeraw edits our copy; tcsetattr applies it to fd 0.
        unsafe {
            libc::cfmakeraw(&mut t);
            libc::tcsetattr(0, libc::TCSANOW, &t);
        }
        Self(Some(saved))
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        if let Some(t) = &self.0 {
            // SAFETY: restores the attributes saved from fd 0.
            unsafe { libc::tcsetattr(0, libc::TCSANOW, t) };
        }
    }
}

/// How the session ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    /// The guest closed the console (it powered off).
    GuestExited,
    /// The user pressed Ctrl-].
    Detached,
}

/// Bridges standard input and output to the console until the guest exits or the user leaves.
pub fn attach(stream: UnixStream) -> std::io::Result<Ended> {
    let _raw = RawTerminal::enter();
    let mut to_guest = stream.try_clone()?;
    let detached = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = std::sync::Arc::clone(&detached);
    std::thread::Builder::new()
        .name("console-input".into())
        .spawn(move || {
            let mut b = [0u8; 256];
            let mut stdin = std::io::stdin().lock();
            loop {
                let n = match stdin.read(&mut b) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                if let Some(i) = b[..n].iter().position(|&c| c == ESCAPE) {
                    let _ = to_guest.write_all(&b[..i]);
                    flag.store(true, std::sync::atomic::Ordering::Relaxed);
                    let _ = to_guest.shutdown(Shutdown::Both);
                    return;
                }
                if to_guest.write_all(&b[..n]).is_err() {
                    return;
                }
            }
        })?;
    let mut from_guest = stream;
    let mut out = std::io::stdout();
    let mut b = [0u8; 4096];
    loop {
        match from_guest.read(&mut b) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                out.write_all(&b[..n])?;
                out.flush()?;
            }
        }
    }
    Ok(if detached.load(std::sync::atomic::Ordering::Relaxed) {
        Ended::Detached
    } else {
        Ended::GuestExited
    })
}
