//! Helpers shared by the VM test files: one VM at a time within a test binary (cargo runs test
//! binaries one after another), private result directories, and the nothing-left-behind check.
#![allow(dead_code)]

use harness::config::VmConfig;
use harness::{Reporter, ToolPaths};
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, MutexGuard};

pub static ONE_VM_AT_A_TIME: Mutex<()> = Mutex::new(());

pub fn serial() -> MutexGuard<'static, ()> {
    ONE_VM_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

pub fn results_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("harness-vmtest-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).expect("results dir");
    d
}

/// Runs `scenario` in a VM with `cfg`, results in a private directory; panics on an
/// infrastructure error and returns the result (and the directory, to remove at the end).
pub fn run(cfg: &VmConfig, scenario: &str, name: &str) -> (harness::RunResult, PathBuf) {
    let out = results_dir(name);
    let r = harness::execute(
        cfg,
        &ToolPaths::default(),
        scenario,
        Some(&out),
        Arc::new(AtomicBool::new(false)),
        &mut Reporter::new(false, false),
    )
    .unwrap_or_else(|e| panic!("{e:#?}"));
    assert!(r.passed, "{}", r.summary());
    (r, out)
}

/// The start of the names of harness process `pid`'s private directories (sockets, guest RAM,
/// scratch results): `<prefix>.<pid>.<random>`.
pub fn private_marks(pid: u32) -> Vec<String> {
    use harness::private_dir::{BENCH, RAM, SOCKETS};
    [SOCKETS, RAM, BENCH]
        .iter()
        .map(|p| format!("{p}.{pid}."))
        .collect()
}

/// The private directories of harness process `pid` now in `parent`.
pub fn private_dirs_of(pid: u32, parent: &std::path::Path) -> Vec<PathBuf> {
    let marks = private_marks(pid);
    std::fs::read_dir(parent)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .filter(|e| {
                    let n = e.file_name().to_string_lossy().into_owned();
                    marks.iter().any(|m| n.starts_with(m.as_str()))
                })
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default()
}

/// No process, socket directory or guest-RAM directory of harness process `pid` is left.
pub fn assert_nothing_left(pid: u32) {
    let marks = private_marks(pid);
    for m in &marks {
        assert!(
            processes_mentioning(m).is_empty(),
            "{:?}",
            processes_mentioning(m)
        );
    }
    for d in [std::env::temp_dir(), PathBuf::from("/dev/shm")] {
        let left = private_dirs_of(pid, &d);
        assert!(left.is_empty(), "left in {}: {left:?}", d.display());
    }
}

/// `harness run inventory -q --results <out>` in the background, output discarded.
pub fn spawn_inventory(out: &std::path::Path) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_harness"))
        .args(["run", "inventory", "-q", "--results"])
        .arg(out)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn harness")
}

/// Waits (up to 120 s, while `child` runs) for a private directory of `child` in `parent`
/// for which `ready` holds.
pub fn wait_for_private_dir(
    child: &mut std::process::Child,
    parent: &std::path::Path,
    ready: impl Fn(&std::path::Path) -> bool,
) -> PathBuf {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        if let Some(d) = private_dirs_of(child.id(), parent)
            .into_iter()
            .find(|d| ready(d))
        {
            return d;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no ready directory in {}",
            parent.display()
        );
        assert!(
            child.try_wait().expect("wait").is_none(),
            "harness ended first"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Processes whose command line mentions `mark`.
pub fn processes_mentioning(mark: &str) -> Vec<String> {
    std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(Result::ok)
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let c = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let c = String::from_utf8_lossy(&c).replace('\0', " ");
            (pid != std::process::id() && c.contains(mark)).then(|| format!("{pid}: {c}"))
        })
        .collect()
}

/// Runs `cmd` (the harness binary with its arguments) and returns its standard output; panics
/// with both outputs unless it exits with 0.
pub fn output_of_success(cmd: &mut std::process::Command) -> String {
    let o = cmd.output().expect("run the harness");
    let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
    assert_eq!(
        o.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    stdout
}
