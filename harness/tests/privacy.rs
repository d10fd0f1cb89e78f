//! Privacy and installed use, through the real path: a normal user runs an installed harness
//! (no source tree, no cargo) and everything it makes is its own (0700 directories, 0600
//! files, sockets in 0700 directories); directories at predictable paths are never used; the
//! leftovers of a SIGKILLed run are reclaimed by the next run; `harness clean` removes dead
//! runs' directories and leaves live ones.

mod common;

use common::*;
use harness::config::VmConfig;
use harness::private_dir::{self, PrivateDir, LOCK, RAM, SOCKETS};
use harness::{Reporter, ToolPaths};
use std::collections::BTreeMap;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const TEST_USER: &str = "tierbed-test";
const NOBODY: u32 = 65534;

fn id_of(flag: &str, user: &str) -> Option<u32> {
    let o = Command::new("id").args([flag, user]).output().ok()?;
    String::from_utf8_lossy(&o.stdout).trim().parse().ok()
}

/// The unprivileged user the test runs the harness as: ourselves when we are not root,
/// else `tierbed-test` (created as a system user without a home if missing), else nobody.
fn test_user() -> (u32, u32) {
    if private_dir::euid() != 0 {
        // SAFETY: getegid(2) cannot fail.
        return (private_dir::euid(), unsafe { libc::getegid() });
    }
    if id_of("-u", TEST_USER).is_none() {
        let _ = Command::new("useradd")
            .args(["--system", "--no-create-home", "--home-dir", "/nonexistent"])
            .args(["--shell", "/usr/sbin/nologin", TEST_USER])
            .status();
    }
    match (id_of("-u", TEST_USER), id_of("-g", TEST_USER)) {
        (Some(u), Some(g)) => (u, g),
        _ => (NOBODY, NOBODY),
    }
}

/// Recursively: every entry under `dir` (not following links) with its metadata.
fn walk(dir: &Path, out: &mut BTreeMap<PathBuf, std::fs::Metadata>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.filter_map(Result::ok) {
        let p = e.path();
        let Ok(m) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        let is_dir = m.is_dir();
        out.insert(p.clone(), m);
        if is_dir {
            walk(&p, out);
        }
    }
}

/// Copies `from` into `to` (regular files only), owner-only modes, owned by `uid`.
fn copy_files(from: &Path, to: &Path, filter: impl Fn(&str) -> bool, uid: u32, gid: u32) {
    std::fs::create_dir_all(to).expect("create seed dir");
    let Ok(rd) = std::fs::read_dir(from) else {
        return;
    };
    for e in rd.filter_map(Result::ok) {
        let name = e.file_name().to_string_lossy().into_owned();
        if !e.file_type().is_ok_and(|t| t.is_file()) || !filter(&name) {
            continue;
        }
        let dst = to.join(&name);
        std::fs::copy(e.path(), &dst).expect("copy seed file");
        std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        std::os::unix::fs::chown(&dst, Some(uid), Some(gid)).expect("chown");
    }
}

fn chown_tree(dir: &Path, uid: u32, gid: u32) {
    let mut all = BTreeMap::new();
    walk(dir, &mut all);
    std::os::unix::fs::chown(dir, Some(uid), Some(gid)).expect("chown");
    for p in all.keys() {
        std::os::unix::fs::lchown(p, Some(uid), Some(gid)).expect("chown");
    }
}

/// The user's own cache, seeded with the package lists and .deb files this machine's cache
/// already downloaded (so the user's provisioning runs for real, apt and dpkg-deb as that
/// user, without downloading 160 MB again).
fn seed_cache(user_cache: &Path, uid: u32, gid: u32) {
    let (_, _) = harness::provision(
        &VmConfig::default(),
        &ToolPaths::default(),
        false,
        &mut images::Silent,
    )
    .expect("provision the machine's cache");
    let ours = VmConfig::default().cache_dir.join("apt");
    let theirs = user_cache.join("apt");
    copy_files(
        &ours.join("var/lib/apt/lists"),
        &theirs.join("var/lib/apt/lists"),
        |n| n != "lock",
        uid,
        gid,
    );
    copy_files(
        &ours.join("var/cache/apt/archives"),
        &theirs.join("var/cache/apt/archives"),
        |n| n.ends_with(".deb"),
        uid,
        gid,
    );
    let mut all = BTreeMap::new();
    walk(user_cache, &mut all);
    for p in all.iter().filter(|(_, m)| m.is_dir()).map(|(p, _)| p) {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    }
    std::fs::set_permissions(user_cache, std::fs::Permissions::from_mode(0o700)).expect("chmod");
}

/// What a mode check found wrong with `p`, if anything: directories 0700, guest RAM and
/// lock files 0600, every other file and socket owner-only, all owned by `uid`.
fn mode_problem(p: &Path, m: &std::fs::Metadata, uid: u32) -> Option<String> {
    let mode = m.mode() & 0o7777;
    let name = p.file_name()?.to_string_lossy().into_owned();
    let ft = m.file_type();
    let bad = if m.uid() != uid {
        Some(format!("owned by uid {}", m.uid()))
    } else if ft.is_symlink() {
        None
    } else if ft.is_dir() && mode != 0o700 {
        Some("a directory that is not 0700".to_owned())
    } else if (name.ends_with(".ram") || name == LOCK) && mode != 0o600 {
        Some("guest RAM or lock file that is not 0600".to_owned())
    } else if (ft.is_file() || ft.is_socket()) && mode & 0o077 != 0 {
        Some("readable or writable by others".to_owned())
    } else {
        None
    };
    bad.map(|why| format!("{} (mode {mode:o}): {why}", p.display()))
}

/// The installed layout, made the documented way from this checkout.
fn install_into(prefix: &Path) {
    let o = Command::new(env!("CARGO_BIN_EXE_harness"))
        .args(["install", "--prefix"])
        .arg(prefix)
        .output()
        .expect("harness install");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for f in [
        "bin/harness",
        "bin/sdxi-server",
        "bin/cxl-hmu-server",
        "lib/tierbed/guest-agent",
        "lib/tierbed/libchmu_tap.so",
    ] {
        assert!(prefix.join(f).is_file(), "{f} installed");
    }
}

/// Everything a run makes, seen while it runs: its temporary directory, its guest-RAM
/// directories and its results, sampled every 20 ms by a thread.
struct FileWatch {
    seen: Arc<Mutex<BTreeMap<PathBuf, std::fs::Metadata>>>,
    done: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl FileWatch {
    fn start(uid: u32, tmp: &Path, results: &Path) -> Self {
        let seen: Arc<Mutex<BTreeMap<PathBuf, std::fs::Metadata>>> = Arc::default();
        let done = Arc::new(AtomicBool::new(false));
        let thread = {
            let (seen, done, tmp, results) = (
                Arc::clone(&seen),
                Arc::clone(&done),
                tmp.to_owned(),
                results.to_owned(),
            );
            std::thread::spawn(move || {
                while !done.load(Ordering::Relaxed) {
                    let mut now = BTreeMap::new();
                    walk(&tmp, &mut now);
                    walk(&results, &mut now);
                    if let Ok(m) = std::fs::metadata(&results) {
                        now.insert(results.clone(), m);
                    }
                    for d in std::fs::read_dir("/dev/shm")
                        .into_iter()
                        .flatten()
                        .filter_map(Result::ok)
                    {
                        let m = std::fs::symlink_metadata(d.path());
                        if m.is_ok_and(|m| m.uid() == uid)
                            && d.file_name().to_string_lossy().starts_with(RAM)
                        {
                            if let Ok(m) = std::fs::symlink_metadata(d.path()) {
                                now.insert(d.path(), m);
                            }
                            walk(&d.path(), &mut now);
                        }
                    }
                    seen.lock().expect("seen").extend(now);
                    std::thread::sleep(Duration::from_millis(20));
                }
            })
        };
        Self { seen, done, thread }
    }

    /// Stops watching; everything seen.
    fn stop(self) -> BTreeMap<PathBuf, std::fs::Metadata> {
        self.done.store(true, Ordering::Relaxed);
        self.thread.join().expect("watcher");
        let seen = self.seen.lock().expect("seen").clone();
        seen
    }
}

/// The run said it used the installed helpers, and built nothing.
fn assert_installed_helpers_used(stderr: &str, prefix: &Path) {
    let helpers: String = stderr
        .lines()
        .filter(|l| l.contains("helpers:"))
        .collect::<Vec<_>>()
        .join("\n");
    for (what, origin) in [
        ("sdxi-server", "next to the harness"),
        ("cxl-hmu-server", "next to the harness"),
        ("guest-agent", "in the install prefix"),
        ("libchmu_tap.so", "in the install prefix"),
    ] {
        let p = if origin == "next to the harness" {
            prefix.join("bin").join(what)
        } else {
            prefix.join("lib/tierbed").join(what)
        };
        assert!(
            helpers.contains(&format!("{what} {} ({origin})", p.display())),
            "{helpers}"
        );
    }
    assert!(!stderr.contains("cargo"), "{stderr}");
}

/// The user's cache, provisioned by the run as that user: what the harness writes is
/// owner-only; unpacked Debian packages and apt's indexes keep the modes Debian gives them
/// (public package contents), inside directories that are 0700.
fn cache_mode_problems(cache_dir: &Path, uid: u32) -> Vec<String> {
    let mut cache = BTreeMap::new();
    walk(cache_dir, &mut cache);
    assert!(cache.len() > 100, "the user's cache was provisioned");
    let public = |p: &Path| {
        let rel = p.strip_prefix(cache_dir).unwrap_or(p);
        let c: Vec<_> = rel
            .components()
            .map(|c| c.as_os_str().to_string_lossy())
            .collect();
        c.len() >= 2
            && (c[..2] == ["apt", "var"]
                || (c[0] == "qemu" && cache_dir.join("qemu").join(&*c[1]).is_dir())
                || c[1].ends_with(".root"))
    };
    for fenced in ["apt/var", "qemu", "kernel", "busybox"] {
        let m = &cache[&cache_dir.join(fenced)];
        assert_eq!(m.mode() & 0o7777, 0o700, "{fenced}");
    }
    eprintln!("{} entries in the cache", cache.len());
    cache
        .iter()
        .filter(|(p, _)| !public(p))
        .filter_map(|(p, m)| mode_problem(p, m, uid))
        .collect()
}

/// Nothing left behind in the user's temporary directory or /dev/shm.
fn assert_user_left_nothing(tmp: &Path, uid: u32) {
    let tmp_left: Vec<_> = std::fs::read_dir(tmp)
        .expect("tmp")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .collect();
    assert!(tmp_left.is_empty(), "{tmp_left:?}");
    let shm_left: Vec<_> = std::fs::read_dir("/dev/shm")
        .expect("/dev/shm")
        .filter_map(Result::ok)
        .filter(|e| std::fs::symlink_metadata(e.path()).is_ok_and(|m| m.uid() == uid))
        .filter(|e| e.file_name().to_string_lossy().starts_with(RAM))
        .map(|e| e.path())
        .collect();
    assert!(shm_left.is_empty(), "{shm_left:?}");
}

#[test]
fn a_normal_user_runs_an_installed_harness_and_everything_it_makes_is_private() {
    let _vm = serial();
    let t0 = Instant::now();
    let (uid, gid) = test_user();
    let area = private_dir::create_exclusive(&std::env::temp_dir(), || {
        Ok(format!(
            "tierbed-privacy-{}",
            private_dir::random_suffix(8)?
        ))
    })
    .expect("test area");
    let (prefix, home, tmp, results) = (
        area.join("prefix"),
        area.join("home"),
        area.join("tmp"),
        area.join("results"),
    );

    install_into(&prefix);
    for d in [&home, &tmp] {
        std::fs::create_dir(d).expect("mkdir");
    }
    seed_cache(&home.join(".cache/tierbed"), uid, gid);
    chown_tree(&home, uid, gid);
    std::os::unix::fs::chown(&tmp, Some(uid), Some(gid)).expect("chown");
    std::os::unix::fs::chown(&area, Some(uid), Some(gid)).expect("chown");
    eprintln!("installed and seeded in {:.1}s", t0.elapsed().as_secs_f64());

    // No cargo and no source tree: PATH has the prefix and the system only; the harness runs
    // from the user's home.
    let path = format!(
        "{}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        prefix.join("bin").display()
    );
    assert!(
        std::env::split_paths(&path).all(|d| !d.join("cargo").exists()),
        "cargo on {path}"
    );
    let stderr_log = area.join("stderr.log");
    let mut cmd = if private_dir::euid() == 0 {
        let mut c = Command::new("setpriv");
        c.args([
            &format!("--reuid={uid}"),
            &format!("--regid={gid}"),
            "--clear-groups",
            "--",
        ]);
        c.arg(prefix.join("bin/harness"));
        c
    } else {
        Command::new(prefix.join("bin/harness"))
    };
    cmd.args(["run", "inventory", "chmu-hot", "--results"])
        .arg(&results)
        .env_clear()
        .env("PATH", &path)
        .env("HOME", &home)
        .env("TMPDIR", &tmp)
        .env("LC_ALL", "C")
        .current_dir(&home)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&stderr_log).expect("stderr log"));
    let mut child = cmd.spawn().expect("spawn the installed harness");

    let watch = FileWatch::start(uid, &tmp, &results);
    let mut stdout = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().expect("stdout"), &mut stdout)
        .expect("stdout");
    let st = child.wait().expect("wait");
    let seen = watch.stop();
    let stderr = std::fs::read_to_string(&stderr_log).unwrap_or_default();
    eprintln!("{stderr}\n{stdout}");
    assert_eq!(st.code(), Some(0), "{stderr}\n{stdout}");
    assert!(stdout.contains("2 passed, 0 failed"), "{stdout}");

    assert_installed_helpers_used(&stderr, &prefix);

    // The modes of everything the run made.
    let names: Vec<String> = seen
        .keys()
        .filter_map(|p| Some(p.file_name()?.to_string_lossy().into_owned()))
        .collect();
    for want in [
        "node0.ram",
        "node1.ram",
        "sdxi.sock",
        "hmu.sock",
        "agent.sock",
        "feed.sock",
        "sdxi.ctl",
        "cxl-hmu.ctl",
        LOCK,
        "qemu.log",
        "result.json",
    ] {
        assert!(
            names.iter().any(|n| n == want),
            "{want} never seen: {names:?}"
        );
    }
    let mut problems: Vec<String> = seen
        .iter()
        .filter_map(|(p, m)| mode_problem(p, m, uid))
        .collect();
    problems.extend(cache_mode_problems(&home.join(".cache/tierbed"), uid));
    assert!(
        problems.is_empty(),
        "{} problems, first: {:#?}",
        problems.len(),
        &problems[..problems.len().min(20)]
    );
    eprintln!("{} entries checked while running", seen.len());

    assert_user_left_nothing(&tmp, uid);
    assert!(processes_mentioning(&area.to_string_lossy()).is_empty());
    let _ = std::fs::remove_dir_all(&area);
    eprintln!("took {:.1}s", t0.elapsed().as_secs_f64());
}

#[test]
fn a_sigkilled_runs_leftovers_are_reclaimed_by_the_next_run() {
    let _vm = serial();
    let out = results_dir("sigkill");
    let mut child = spawn_inventory(&out);
    let pid = child.id();
    // Killed once QEMU runs: the socket directory is in its command line.
    let sock = wait_for_private_dir(&mut child, &std::env::temp_dir(), |d| {
        processes_mentioning(&format!("{}/", d.display()))
            .iter()
            .any(|p| p.contains("qemu"))
    });
    let ram = wait_for_private_dir(&mut child, Path::new("/dev/shm"), |d| {
        d.join("node1.ram").is_file()
    });
    child.kill().expect("SIGKILL");
    child.wait().expect("wait");
    // What a job timeout leaves: both directories, guest RAM included.
    assert!(sock.join("sdxi.ctl").exists() || sock.join("agent.sock").exists());
    assert!(ram.join("node0.ram").is_file());
    assert!(
        !harness::vm::running_control_dirs().contains(&sock),
        "inspect does not see a dead test bed"
    );

    let (r, out2) = run(&VmConfig::default(), "inventory", "after-sigkill");
    assert!(r.passed);
    assert!(!sock.exists(), "{} reclaimed", sock.display());
    assert!(!ram.exists(), "{} reclaimed", ram.display());
    assert_nothing_left(pid);
    assert_nothing_left(std::process::id());
    let _ = std::fs::remove_dir_all(&out);
    let _ = std::fs::remove_dir_all(&out2);
}

#[test]
fn a_precreated_directory_at_a_predictable_path_is_not_used() {
    let _vm = serial();
    let pid = std::process::id();
    let root = private_dir::euid() == 0;
    // Directories another user made where an older harness put this process's sockets and
    // guest RAM, world-writable.
    let mut planted = Vec::new();
    for n in 0..4 {
        planted.push(std::env::temp_dir().join(format!("tierbed-{pid}-{n}")));
        planted.push(PathBuf::from(format!("/dev/shm/tierbed-ram-{pid}-{n}")));
    }
    let foreign = std::env::temp_dir().join(format!("tierbed-foreign-results-{pid}"));
    planted.push(foreign.clone());
    for d in &planted {
        std::fs::create_dir_all(d).expect("plant");
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        if root {
            std::os::unix::fs::chown(d, Some(NOBODY), Some(NOBODY)).expect("chown");
        }
    }

    // A results directory another user controls is refused before anything starts.
    if root {
        let e = harness::execute(
            &VmConfig::default(),
            &ToolPaths::default(),
            "inventory",
            Some(&foreign),
            Arc::new(AtomicBool::new(false)),
            &mut Reporter::new(false, true),
        )
        .expect_err("a foreign results directory is refused");
        assert!(e.is_usage(), "{e:?}");
        let why = std::error::Error::source(&e).map(ToString::to_string);
        assert!(
            why.as_deref().is_some_and(
                |w| w.contains("refusing") && w.contains(&foreign.display().to_string())
            ),
            "{why:?}"
        );
        assert_eq!(std::fs::read_dir(&foreign).expect("foreign").count(), 0);
    }

    let (r, out) = run(&VmConfig::default(), "inventory", "planted");
    assert!(r.passed, "{}", r.summary());
    let cmdline = std::fs::read_to_string(r.run_dir.join("qemu.cmdline")).expect("cmdline");
    for d in &planted {
        assert_eq!(
            std::fs::read_dir(d).expect("planted").count(),
            0,
            "{} used",
            d.display()
        );
        assert!(!cmdline.contains(&format!("{}/", d.display())), "{cmdline}");
    }
    // It used directories of its own, with random names.
    for mark in [
        format!("/{SOCKETS}.{pid}."),
        format!("/dev/shm/{RAM}.{pid}."),
    ] {
        assert!(cmdline.contains(&mark), "{mark} in {cmdline}");
    }
    let m = std::fs::metadata(&r.run_dir).expect("run dir");
    assert_eq!(m.mode() & 0o7777, 0o700);
    assert_nothing_left(pid);
    for d in &planted {
        let _ = std::fs::remove_dir(d);
    }
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn clean_removes_dead_runs_directories_and_leaves_live_ones() {
    // A live run's directory (its lock held here), and a dead run's: a lock nobody holds, an
    // owner pid that does not exist, and a process still using it.
    let live = PrivateDir::create(&std::env::temp_dir(), SOCKETS).expect("live dir");
    let dead = std::env::temp_dir().join(format!(
        "{RAM}.4194305.{}",
        private_dir::random_suffix(10).expect("random")
    ));
    std::fs::create_dir(&dead).expect("dead dir");
    std::fs::write(dead.join(LOCK), b"").expect("lock");
    std::fs::write(dead.join("node1.ram"), b"guest data").expect("ram");
    let mut stray = Command::new("tail")
        .arg("-f")
        .arg(dead.join("node1.ram"))
        .stdout(Stdio::null())
        .spawn()
        .expect("stray");
    // Only once it has the file open is it "still using" the directory (before, `clean` could
    // remove the directory first and tail would fail to open the file and exit 1).
    let fds = PathBuf::from(format!("/proc/{}/fd", stray.id()));
    let ram = dead.join("node1.ram");
    let opened = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_dir(&fds)
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| std::fs::read_link(e.path()).is_ok_and(|t| t == ram))
    {
        assert!(
            Instant::now() < opened,
            "tail never opened {}",
            ram.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let o = Command::new(env!("CARGO_BIN_EXE_harness"))
        .arg("clean")
        .output()
        .expect("harness clean");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains(&format!("removed {}", dead.display())),
        "{err}"
    );
    assert!(!dead.exists());
    assert!(live.path().join(LOCK).exists(), "the live run is untouched");
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(st) = stray.try_wait().expect("wait") {
            break Some(st);
        }
        if Instant::now() > deadline {
            let _ = stray.kill();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(
        status.is_some_and(|s| s.code().is_none()),
        "the process still using the dead run's directory was killed: {status:?}"
    );
    drop(live);
}
