//! Test support shared by both device crates' end-to-end suites: a device server binary run as
//! a real process on a socket created here (handed over as `--fd 3`, so no waiting for the
//! server to create it) with its counters read back ([`ServerProcess`]); a raw wire-format
//! client for replies the `vfio_user` crate's client cannot show ([`RawClient`]); eventfds,
//! memfds and waits ([`fds`]); region accesses and mapped sparse areas ([`regions`]).

pub mod fds;
mod raw_client;
pub mod regions;

pub use fds::{eventfd, memfd, wait_event, wait_for};
pub use raw_client::{RawClient, RawReply};
pub use regions::{arm_msix, read_u64, write_u64, MappedArea, CONFIG_REGION, MSIX_IRQ};

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// A running device server process.
#[derive(Debug)]
pub struct ServerProcess {
    child: Child,
    dir: PathBuf,
    pub socket: PathBuf,
    pub counters: PathBuf,
    pub log: PathBuf,
}

impl ServerProcess {
    /// Starts `bin` with `args` plus `--fd 3 --counters ...`, logging to a file.
    pub fn spawn(bin: &Path, args: &[&str]) -> std::io::Result<Self> {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "vfio-dev-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir)?;
        let socket = dir.join("dev.sock");
        let counters = dir.join("counters.json");
        let log = dir.join("server.log");
        let listener = UnixListener::bind(&socket)?;
        let fd = listener.as_raw_fd();
        let mut cmd = Command::new(bin);
        cmd.args(args)
            .args(["--fd", "3", "--log", "debug", "--counters"])
            .arg(&counters)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?);
        crate::cli::pass_listener_as_fd3(&mut cmd, fd);
        let child = cmd.spawn()?;
        Ok(Self {
            child,
            dir,
            socket,
            counters,
            log,
        })
    }

    /// Connects a vfio-user client (QEMU's role).
    pub fn client(&self) -> Result<vfio_user::Client, vfio_user::Error> {
        vfio_user::Client::new(&self.socket)
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGTERM, wait, and return the counters it wrote at exit.
    pub fn stop(mut self) -> std::io::Result<serde_json::Value> {
        // SAFETY: kill(2) of our own child.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        self.child.wait()?;
        let bytes = std::fs::read(&self.counters)?;
        serde_json::from_slice(&bytes).map_err(std::io::Error::other)
    }

    /// Waits (up to 10 s) for a server started with `--max-clients` to exit by itself after
    /// its last client, and returns the counters it wrote: no race with in-flight requests.
    pub fn finish(mut self) -> std::io::Result<serde_json::Value> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            if self.child.try_wait()?.is_some() {
                break;
            }
            if std::time::Instant::now() > deadline {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "server did not exit after its last client",
                ));
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let bytes = std::fs::read(&self.counters)?;
        serde_json::from_slice(&bytes).map_err(std::io::Error::other)
    }

    /// The server's log so far (for assertion messages).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
