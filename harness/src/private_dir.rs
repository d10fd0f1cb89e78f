//! Private directories of a run, and the reclaiming of those a killed run left behind.
//!
//! The sockets, the guest-RAM files and the results of a run live in directories the harness
//! creates itself, exclusively: `mkdir(2)` of a new random name, mode 0700, and another random
//! name when that one exists (mkdtemp(3)'s semantics). A directory someone else made is never
//! used, whatever its name. Socket and RAM directories are named `<prefix>.<pid>.<random>`
//! and hold a lock file (`.lock`, flock(2)) for the life of the run: the kernel releases the
//! lock when the process dies, even by SIGKILL, so a later harness (every new run, and
//! `harness clean`) tells a live run from a dead one's leftovers and reclaims only those.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Prefix of a run's socket directory (in the temporary directory).
pub const SOCKETS: &str = "tierbed-run";
/// Prefix of a run's guest-RAM directory (in /dev/shm, else the temporary directory).
pub const RAM: &str = "tierbed-ram";
/// Prefix of `bench-tap`'s scratch results directory (in the temporary directory).
pub const BENCH: &str = "tierbed-bench";
const PREFIXES: [&str; 3] = [SOCKETS, RAM, BENCH];
/// The lock file inside a locked directory.
pub const LOCK: &str = ".lock";
/// A directory whose lock is free but whose owner still runs is left alone this long (its
/// owner may be between `mkdir` and `flock`).
const GRACE: Duration = Duration::from_secs(60);
/// Names tried before giving up (each clash means the name existed already).
const TRIES: usize = 64;

/// A random suffix of `n` characters from [a-z0-9] (getrandom(2)).
pub fn random_suffix(n: usize) -> io::Result<String> {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut buf = vec![0u8; n];
    let mut filled = 0;
    while filled < n {
        // SAFETY: getrandom writes at most `n - filled` bytes into the rest of `buf`.
        let r = unsafe { libc::getrandom(buf[filled..].as_mut_ptr().cast(), n - filled, 0) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
            continue;
        }
        filled += r as usize;
    }
    Ok(buf
        .iter()
        .map(|b| char::from(ALPHABET[usize::from(*b) % ALPHABET.len()]))
        .collect())
}

/// Makes a new directory `parent/<name()>`, mode 0700, never one that exists: a name that
/// exists (a directory, a file or a symlink, whoever made it) is skipped for the next one.
pub fn create_exclusive(
    parent: &Path,
    mut name: impl FnMut() -> io::Result<String>,
) -> io::Result<PathBuf> {
    for _ in 0..TRIES {
        let p = parent.join(name()?);
        match std::fs::DirBuilder::new().mode(0o700).create(&p) {
            Ok(()) => return Ok(p),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AlreadyExists,
        format!("{TRIES} names in {} all existed", parent.display()),
    ))
}

/// The effective user id of this process.
pub fn euid() -> u32 {
    // SAFETY: geteuid(2) cannot fail.
    unsafe { libc::geteuid() }
}

/// Why an existing directory cannot hold a run's directories, if it cannot: another user
/// owns it and others may write to it without the sticky bit, so they could rename what the
/// harness makes there and put their own files or links in its place.
pub fn unsafe_parent(dir: &Path) -> Option<String> {
    let m = match std::fs::metadata(dir) {
        Ok(m) => m,
        Err(e) => return Some(format!("cannot read it: {e}")),
    };
    if !m.is_dir() {
        return Some("it is not a directory".into());
    }
    let others_write = m.mode() & 0o022 != 0;
    let sticky = m.mode() & 0o1000 != 0;
    (m.uid() != euid() && others_write && !sticky).then(|| {
        format!(
            "it belongs to uid {} and others may write to it (mode {:o}, no sticky bit); use a directory of your own",
            m.uid(),
            m.mode() & 0o7777
        )
    })
}

fn flock(f: &File, op: libc::c_int) -> io::Result<()> {
    // SAFETY: flock(2) on a file descriptor this `File` owns.
    if unsafe { libc::flock(f.as_raw_fd(), op | libc::LOCK_NB) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// A directory of this run, locked while it lives and removed when dropped.
#[derive(Debug)]
pub struct PrivateDir {
    path: PathBuf,
    lock: Option<File>,
}

impl PrivateDir {
    /// `parent/<prefix>.<pid>.<random>`, created exclusively (mode 0700), with its lock held.
    pub fn create(parent: &Path, prefix: &str) -> io::Result<Self> {
        let pid = std::process::id();
        let path = create_exclusive(parent, || {
            Ok(format!("{prefix}.{pid}.{}", random_suffix(10)?))
        })?;
        let lock = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path.join(LOCK))
            .and_then(|f| flock(&f, libc::LOCK_EX).map(|()| f));
        match lock {
            Ok(f) => Ok(Self {
                path,
                lock: Some(f),
            }),
            Err(e) => {
                let _ = std::fs::remove_dir_all(&path);
                Err(e)
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Removes the directory, then releases its lock (no one sees it unlocked while it
    /// exists).
    pub fn remove(&mut self) {
        if self.lock.is_some() {
            let _ = std::fs::remove_dir_all(&self.path);
            self.lock = None;
        }
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        self.remove();
    }
}

/// Where private directories are made: the temporary directory, and /dev/shm.
pub fn roots() -> Vec<PathBuf> {
    let mut v = vec![std::env::temp_dir()];
    let shm = PathBuf::from("/dev/shm");
    if shm.is_dir() && !v.contains(&shm) {
        v.push(shm);
    }
    v
}

/// What a directory found under [`roots`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DirState {
    /// Its owner holds the lock.
    Live,
    /// Unlocked, but its owner runs and it is recent: being created right now.
    Starting,
    /// Its owner is gone: leftovers to reclaim.
    Stale,
}

/// The owner pid in a `<prefix>.<pid>.<random>` name of ours, if `name` is one.
fn owner_pid(name: &str) -> Option<u32> {
    let (prefix, rest) = name.split_once('.')?;
    if !PREFIXES.contains(&prefix) {
        return None;
    }
    let (pid, random) = rest.split_once('.')?;
    (!random.is_empty() && random.bytes().all(|b| b.is_ascii_alphanumeric()))
        .then(|| pid.parse().ok())
        .flatten()
}

fn pid_alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: kill(2) with signal 0 only checks that the process exists.
    unsafe { libc::kill(pid, 0) == 0 || *libc::__errno_location() == libc::EPERM }
}

/// Decides what `dir` (one of ours, owner `pid`) is; with the lock free, the returned file
/// keeps it held until dropped.
fn state(dir: &Path, pid: u32) -> (DirState, Option<File>) {
    let lock = File::open(dir.join(LOCK));
    let held = match &lock {
        Ok(f) => match flock(f, libc::LOCK_EX) {
            Ok(()) => false,
            Err(e) if e.raw_os_error() == Some(libc::EWOULDBLOCK) => true,
            Err(_) => false,
        },
        Err(_) => false,
    };
    if held {
        return (DirState::Live, None);
    }
    let young = std::fs::symlink_metadata(dir)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|age| age < GRACE);
    if young && pid_alive(pid) {
        (DirState::Starting, None)
    } else {
        (DirState::Stale, lock.ok())
    }
}

/// Every directory of ours (this user's, with one of our prefixes) under [`roots`], with
/// its state; the lock of a stale one is held by the returned file.
fn scan() -> Vec<(PathBuf, DirState, Option<File>)> {
    let me = euid();
    let mut out = Vec::new();
    for root in roots() {
        let Ok(rd) = std::fs::read_dir(&root) else {
            continue;
        };
        for e in rd.filter_map(Result::ok) {
            let name = e.file_name();
            let Some(pid) = name.to_str().and_then(owner_pid) else {
                continue;
            };
            let path = e.path();
            // Never follow a link, never touch someone else's directory.
            let Ok(m) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            if !m.is_dir() || m.uid() != me {
                continue;
            }
            let (s, lock) = state(&path, pid);
            out.push((path, s, lock));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// What [`reclaim_stale`] did.
#[derive(Debug, Default)]
pub struct Reclaimed {
    /// Directories removed (their owners were dead), with the stray processes killed.
    pub removed: Vec<(PathBuf, Vec<u32>)>,
    /// Directories of runs still going (left alone).
    pub live: Vec<PathBuf>,
    /// Directories that could not be removed.
    pub failed: Vec<(PathBuf, io::Error)>,
}

/// Removes the directories of this user's runs whose owning process is dead (killed
/// processes that still mention one are killed first), leaving live runs alone.
pub fn reclaim_stale() -> Reclaimed {
    let mut r = Reclaimed::default();
    for (path, s, lock) in scan() {
        match s {
            DirState::Live | DirState::Starting => r.live.push(path),
            DirState::Stale => {
                let strays = crate::vm::stray_processes(&[&path]);
                for pid in &strays {
                    if let Ok(p) = libc::pid_t::try_from(*pid) {
                        // SAFETY: kill(2) of a process still using a dead run's directory.
                        unsafe { libc::kill(p, libc::SIGKILL) };
                    }
                }
                match std::fs::remove_dir_all(&path) {
                    Ok(()) => r.removed.push((path, strays)),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => r.failed.push((path, e)),
                }
                drop(lock);
            }
        }
    }
    r
}

/// This user's live directories with `prefix` (runs going on now).
pub fn live(prefix: &str) -> Vec<PathBuf> {
    scan()
        .into_iter()
        .filter(|(p, s, _)| {
            *s == DirState::Live
                && p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&format!("{prefix}.")))
        })
        .map(|(p, _, _)| p)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn scratch(name: &str) -> PathBuf {
        let d = create_exclusive(&std::env::temp_dir(), || {
            Ok(format!("tierbed-unit-{name}-{}", random_suffix(8)?))
        })
        .expect("scratch dir");
        d
    }

    #[test]
    fn an_existing_name_is_skipped_not_reused() {
        let parent = scratch("clash");
        // Someone else's directory and symlink at the first names the harness would pick.
        std::fs::create_dir(parent.join("a")).expect("pre-create");
        std::os::unix::fs::symlink("/", parent.join("b")).expect("pre-create link");
        let mut names = ["a", "b", "c"].into_iter().map(|n| Ok(n.to_owned()));
        let got = create_exclusive(&parent, || names.next().expect("a name")).expect("create");
        assert_eq!(got, parent.join("c"));
        let mode = std::fs::metadata(&got).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        assert_eq!(std::fs::read_dir(parent.join("a")).expect("a").count(), 0);
        std::fs::remove_dir_all(&parent).expect("cleanup");
    }

    #[test]
    fn names_are_random_and_carry_the_owner() {
        let a = PrivateDir::create(&std::env::temp_dir(), SOCKETS).expect("a");
        let b = PrivateDir::create(&std::env::temp_dir(), SOCKETS).expect("b");
        assert_ne!(a.path(), b.path());
        let name = a.path().file_name().and_then(|n| n.to_str()).expect("name");
        assert_eq!(owner_pid(name), Some(std::process::id()));
        assert_eq!(owner_pid("tierbed-vm.lock"), None);
        assert_eq!(owner_pid("tierbed-run.12.x/y"), None);
        assert_eq!(owner_pid("tierbed-run.12."), None);
    }

    #[test]
    fn a_live_directory_is_kept_and_a_dead_runs_is_reclaimed() {
        let mut running = PrivateDir::create(&std::env::temp_dir(), RAM).expect("live");
        // A dead run's leftovers: its lock file exists but nobody holds it, and its owner pid
        // (beyond pid_max) does not run.
        let dead =
            std::env::temp_dir().join(format!("{RAM}.4194305.{}", random_suffix(10).expect("rnd")));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dead)
            .expect("dead dir");
        std::fs::write(dead.join(LOCK), b"").expect("lock file");
        std::fs::write(dead.join("node0.ram"), b"guest memory").expect("ram");
        let r = reclaim_stale();
        assert!(r.removed.iter().any(|(p, _)| *p == dead), "{r:?}");
        assert!(!dead.exists());
        assert!(r.live.contains(&running.path().to_owned()), "{r:?}");
        assert!(running.path().join(LOCK).is_file());
        assert!(live(RAM).contains(&running.path().to_owned()));
        let p = running.path().to_owned();
        running.remove();
        assert!(!p.exists());
    }

    #[test]
    fn an_unlocked_directory_of_a_running_owner_is_left_while_it_starts() {
        // Our own pid runs; a fresh directory without its lock yet is being created.
        let d = std::env::temp_dir().join(format!(
            "{BENCH}.{}.{}",
            std::process::id(),
            random_suffix(10).expect("rnd")
        ));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&d)
            .expect("dir");
        let r = reclaim_stale();
        assert!(r.live.contains(&d), "{r:?}");
        assert!(d.exists());
        std::fs::remove_dir_all(&d).expect("cleanup");
    }

    #[test]
    fn a_parent_others_can_change_is_refused_unless_sticky() {
        let d = scratch("parent");
        assert_eq!(unsafe_parent(&d), None);
        let tmp = Path::new("/tmp");
        if tmp.is_dir() {
            assert_eq!(unsafe_parent(tmp), None, "/tmp is sticky");
        }
        if euid() == 0 {
            // Owned by nobody and world-writable: refused.
            std::os::unix::fs::chown(&d, Some(65534), Some(65534)).expect("chown");
            std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o777)).expect("chmod");
            assert!(unsafe_parent(&d).is_some_and(|w| w.contains("65534")));
            std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o1777)).expect("chmod");
            assert_eq!(unsafe_parent(&d), None);
        }
        assert!(unsafe_parent(&d.join("missing")).is_some());
        std::fs::remove_dir_all(&d).expect("cleanup");
    }
}
