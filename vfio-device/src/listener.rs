//! The listening unix socket a device server accepts its vfio-user client on (QEMU
//! `docs/interop/vfio-user.rst`, "Socket": the server listens, the client connects): a path the
//! server creates (`--socket`), replacing a stale socket a dead server left, or a listening
//! socket inherited as an fd (`--fd`, as the harness and the tests hand one over).
//!
//! Left out: abstract-namespace sockets and TCP.

use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

/// Why a listening socket could not be had.
#[derive(Debug, thiserror::Error)]
pub enum ListenerError {
    #[error("socket {0} is in use by a running server")]
    SocketInUse(PathBuf),
    #[error("cannot remove stale socket {path}")]
    StaleSocket {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot listen on {path}")]
    Bind {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("fd {0} is not an open listening unix socket")]
    BadFd(RawFd),
    #[error("give either --socket PATH or --fd N")]
    NoListener,
}

/// A listening socket for the server: a path it created, or an inherited fd.
#[derive(Debug)]
pub struct Listener {
    fd: OwnedFd,
    path: Option<PathBuf>,
}

impl Listener {
    /// Listens on `path`, removing a stale socket left by a dead server.
    pub fn bind(path: &Path) -> Result<Self, ListenerError> {
        if path.exists() {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(ListenerError::SocketInUse(path.to_owned()));
            }
            std::fs::remove_file(path).map_err(|source| ListenerError::StaleSocket {
                path: path.to_owned(),
                source,
            })?;
        }
        let l = UnixListener::bind(path).map_err(|source| ListenerError::Bind {
            path: path.to_owned(),
            source,
        })?;
        Ok(Self {
            fd: l.into(),
            path: Some(path.to_owned()),
        })
    }

    /// Takes over an inherited listening socket.
    pub fn from_fd(fd: RawFd) -> Result<Self, ListenerError> {
        let mut ty: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into `ty`, a live c_int.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_ACCEPTCONN,
                (&mut ty as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        if rc != 0 || ty == 0 {
            return Err(ListenerError::BadFd(fd));
        }
        // SAFETY: the fd is open (getsockopt succeeded) and the caller hands its ownership to us.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Self { fd, path: None })
    }

    pub fn from_args(socket: Option<&Path>, fd: Option<RawFd>) -> Result<Self, ListenerError> {
        match (socket, fd) {
            (Some(p), None) => Self::bind(p),
            (None, Some(fd)) => Self::from_fd(fd),
            _ => Err(ListenerError::NoListener),
        }
    }

    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The listening socket, for the server loop.
    pub(crate) fn into_fd(self) -> OwnedFd {
        self.fd
    }
}
