//! The kernel in the loop, through a real QEMU and guest: a scenario on a kernel given as
//! `--kernel-image` + `--modules-dir` (the provisioned Debian kernel stands in for a user's),
//! a configuration that lacks an option the scenario needs (refused before boot, naming
//! it), files and a Debian package's binary used by a guest script, and the gdb stub
//! answering the gdb remote protocol on the socket `--gdb` prints.

mod common;
use common::*;
use harness::config::VmConfig;
use harness::{BringupSpec, ToolPaths};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The provisioned Debian kernel: (vmlinux, module tree, release).
fn debian_kernel() -> (PathBuf, PathBuf, String) {
    let (_, imgs) = harness::provision(
        &VmConfig::default(),
        &ToolPaths::default(),
        false,
        &mut images::Silent,
    )
    .unwrap_or_else(|e| panic!("{e:#?}"));
    (
        imgs.kernel.vmlinux,
        imgs.kernel.modules_dir,
        imgs.kernel.release,
    )
}

#[test]
fn migrate_runs_on_a_kernel_given_as_an_image_and_a_module_tree() {
    let _vm = serial();
    let (vmlinux, modules, release) = debian_kernel();
    let cfg = VmConfig {
        kernel_image: Some(vmlinux),
        modules_dir: Some(modules),
        ..VmConfig::default()
    };
    let t0 = Instant::now();
    let (r, out) = run(&cfg, "migrate", "kl-migrate");
    eprintln!("migrate on the user kernel: {:?}", t0.elapsed());
    assert_eq!(r.kernel, release);
    // No package version: the kernel came from the given image, not from apt.
    assert_eq!(r.kernel_package_version, "");
    assert!(r.migrate.iter().all(|m| !m.report.migrated.is_empty()));
    let _ = std::fs::remove_dir_all(&out);
}

/// The provisioned Debian kernel's bzImage (`/usr/lib/modules/RELEASE/vmlinuz` of the package
/// the provisioning left in the private apt cache), unpacked into `dir`.
fn debian_bzimage(release: &str, dir: &Path) -> PathBuf {
    let archives = VmConfig::default()
        .cache_dir
        .join("apt/var/cache/apt/archives");
    // Debian's 7.x kernels split the image package: vmlinuz is in linux-binary-RELEASE.
    let prefixes = [
        format!("linux-binary-{release}_"),
        format!("linux-image-{release}_"),
    ];
    let debs: Vec<PathBuf> = std::fs::read_dir(&archives)
        .expect("the private apt cache")
        .flatten()
        .map(|e| e.path())
        .collect();
    let deb = prefixes
        .iter()
        .find_map(|x| {
            debs.iter().find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(x.as_str()) && n.ends_with(".deb"))
            })
        })
        .unwrap_or_else(|| panic!("no {prefixes:?}*.deb in {}", archives.display()));
    let image = dir.join("bzImage");
    // Where Debian's 7.x packages put it; older ones had /boot/vmlinuz-RELEASE.
    let script =
        r#"dpkg-deb --fsys-tarfile "$1" | tar -xOf - "./usr/lib/modules/$2/vmlinuz" > "$3""#;
    let st = Command::new("sh")
        .args(["-c", script, "sh"])
        .arg(deb)
        .arg(release)
        .arg(&image)
        .status()
        .expect("dpkg-deb | tar");
    assert!(st.success(), "unpacking vmlinuz from {}", deb.display());
    image
}

#[test]
fn a_bzimage_boots_as_the_kernel_under_test() {
    let _vm = serial();
    let (_, modules, release) = debian_kernel();
    let scratch = results_dir("kl-bzimage-file");
    let image = debian_bzimage(&release, &scratch);
    let bytes = std::fs::read(&image).expect("read the bzImage");
    assert!(images::kernel::is_bzimage(&bytes), "vmlinuz is a bzImage");
    assert!(!images::kernel::is_elf(&bytes));
    let cfg = VmConfig {
        kernel_image: Some(image),
        modules_dir: Some(modules),
        ..VmConfig::default()
    };
    let (r, out) = run(&cfg, "sdxi-copy", "kl-bzimage");
    assert_eq!(r.kernel, release, "the guest runs the bzImage's kernel");
    assert_eq!(r.kernel_package_version, "");
    let _ = std::fs::remove_dir_all(&out);
    let _ = std::fs::remove_dir_all(&scratch);
}

#[test]
fn a_configuration_without_an_option_the_scenario_needs_is_refused_before_boot() {
    let _vm = serial();
    let (_, modules, _) = debian_kernel();
    let out = results_dir("kl-config");
    let full = std::fs::read_to_string(modules.join("config")).expect("Debian's config");
    assert!(full.contains("\nCONFIG_USERFAULTFD=y\n"));
    let lacking = out.join("config-without-uffd");
    std::fs::write(
        &lacking,
        full.replace(
            "CONFIG_USERFAULTFD=y\n",
            "# CONFIG_USERFAULTFD is not set\n",
        ),
    )
    .expect("config");
    let o = Command::new(env!("CARGO_BIN_EXE_harness"))
        .args(["run", "migrate", "-q", "--kernel-config"])
        .arg(&lacking)
        .arg("--results")
        .arg(&out)
        .output()
        .expect("run the harness");
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "a usage error: {err}");
    assert!(err.contains("cannot run scenario migrate"), "{err}");
    assert!(err.contains("CONFIG_USERFAULTFD is not set"), "{err}");
    assert!(err.contains("config-without-uffd"), "{err}");
    // Nothing booted: no run directory was made.
    let runs: Vec<_> = std::fs::read_dir(&out)
        .expect("results")
        .filter_map(Result::ok)
        .filter(|e| e.path().is_dir())
        .collect();
    assert!(runs.is_empty(), "{runs:?}");
    // The same file with the option is accepted up to the boot (inventory needs no uffd).
    let lib = harness::execute(
        &VmConfig {
            kernel_config: Some(lacking),
            ..VmConfig::default()
        },
        &ToolPaths::default(),
        "inventory",
        Some(&out),
        Arc::new(AtomicBool::new(false)),
        &mut harness::Reporter::new(false, true),
    );
    assert!(lib.is_ok_and(|r| r.passed));
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn an_overlay_file_and_a_package_binary_are_used_by_a_guest_script() {
    let _vm = serial();
    let out = results_dir("kl-files");
    let overlay = out.join("overlay");
    std::fs::create_dir_all(overlay.join("etc/tierbed-test")).expect("mkdir");
    std::fs::create_dir_all(overlay.join("usr/local/bin")).expect("mkdir");
    std::fs::write(
        overlay.join("etc/tierbed-test/greeting"),
        "hello from the overlay\n",
    )
    .expect("file");
    let tool = overlay.join("usr/local/bin/nodes-of");
    std::fs::write(&tool, "#!/bin/sh\nnumactl --hardware | grep '^available'\n").expect("tool");
    std::fs::set_permissions(&tool, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let script = out.join("use.sh");
    std::fs::write(
        &script,
        "cat /etc/tierbed-test/greeting\n\
         nodes-of\n\
         numactl --hardware | grep '^node 1 size'\n\
         test -f /sys/kernel/tracing/trace && echo tracefs-mounted\n\
         grep -q ' /sys/kernel/debug debugfs ' /proc/mounts && echo debugfs-mounted\n\
         grep -q ' /sys/kernel/config configfs ' /proc/mounts && echo configfs-mounted\n",
    )
    .expect("script");
    let cfg = VmConfig {
        overlay: vec![overlay],
        packages: vec!["numactl".into()],
        ..VmConfig::default()
    };
    let t0 = Instant::now();
    let r = harness::bringup(
        &cfg,
        &ToolPaths::default(),
        &BringupSpec {
            script: Some(script),
            ..BringupSpec::default()
        },
        Some(&out),
        Arc::new(AtomicBool::new(false)),
        &mut harness::Reporter::new(false, false),
    )
    .unwrap_or_else(|e| panic!("{e:#?}"));
    let o = &r.output;
    eprintln!(
        "bring-up with an overlay and numactl: {:?}\n{o}",
        t0.elapsed()
    );
    assert_eq!(r.exit_code, Some(0), "{o}");
    for line in [
        "hello from the overlay",
        "available: 2 nodes (0-1)",
        "tracefs-mounted",
        "debugfs-mounted",
        "configfs-mounted",
    ] {
        assert!(o.lines().any(|l| l.trim() == line), "{line} missing: {o}");
    }
    // numactl reads node 1's size from the guest kernel: all of it but what the kernel keeps.
    let node1: u64 = o
        .lines()
        .find_map(|l| {
            l.strip_prefix("node 1 size: ")?
                .strip_suffix(" MB")?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no node 1 size: {o}"));
    assert!(
        (cfg.node1_mib * 9 / 10..=cfg.node1_mib).contains(&node1),
        "{node1} MB: {o}"
    );
    let _ = std::fs::remove_dir_all(&out);
}

/// A child process that is stopped (SIGTERM, so it cleans up) if the test fails first.
struct Stopped(Option<std::process::Child>);

impl Drop for Stopped {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = Command::new("kill").arg(c.id().to_string()).status();
            let _ = c.wait();
        }
    }
}

/// `$data#checksum`, the gdb remote protocol's packet framing.
fn packet(data: &str) -> String {
    let sum = data.bytes().fold(0u8, |s, b| s.wrapping_add(b));
    format!("${data}#{sum:02x}")
}

/// Reads one packet (after any `+` acknowledgements) and checks its checksum.
fn read_packet(s: &mut std::os::unix::net::UnixStream) -> String {
    let mut bytes = Vec::new();
    let mut b = [0u8; 1];
    while !bytes.ends_with(b"#") || bytes.len() < 2 {
        s.read_exact(&mut b).expect("a reply from the gdb stub");
        if bytes.is_empty() && b[0] == b'+' {
            continue;
        }
        bytes.push(b[0]);
    }
    let mut sum = [0u8; 2];
    s.read_exact(&mut sum).expect("checksum");
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let data = text
        .strip_prefix('$')
        .and_then(|t| t.strip_suffix('#'))
        .unwrap_or_else(|| panic!("not a packet: {text}"));
    let want = data.bytes().fold(0u8, |s, b| s.wrapping_add(b));
    assert_eq!(
        String::from_utf8_lossy(&sum),
        format!("{want:02x}"),
        "{text}"
    );
    data.to_owned()
}

#[test]
fn gdb_prints_a_command_whose_socket_answers_the_gdb_remote_protocol() {
    let _vm = serial();
    let out = results_dir("kl-gdb");
    let script = out.join("done.sh");
    std::fs::write(&script, "echo kaslr=$(grep -c nokaslr /proc/cmdline)\n").expect("script");
    let t0 = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_harness"))
        .args([
            "bringup",
            "-q",
            "--gdb",
            "--qemu-arg=-name",
            "--qemu-arg=kl-gdb-test",
        ])
        .arg("--run")
        .arg(&script)
        .arg("--results")
        .arg(&out)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn harness");
    let mut stderr = BufReader::new(child.stderr.take().expect("stderr"));
    let mut guard = Stopped(Some(child));
    let mut line = String::new();
    let cmd = loop {
        line.clear();
        let n = stderr.read_line(&mut line).expect("stderr");
        assert!(n > 0, "the harness ended without a gdb line");
        if let Some(c) = line.trim().strip_prefix("gdb: ") {
            break c.to_owned();
        }
    };
    // gdb VMLINUX -ex 'target remote SOCKET'
    let (vmlinux, target) = cmd
        .strip_prefix("gdb ")
        .and_then(|c| c.split_once(" -ex 'target remote "))
        .unwrap_or_else(|| panic!("unexpected gdb command: {cmd}"));
    let sock = PathBuf::from(target.trim_end_matches('\''));
    assert!(Path::new(vmlinux).is_file(), "{cmd}");
    assert!(sock.starts_with(&out), "in the run directory: {cmd}");
    // QEMU makes the socket as it starts listening.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !sock.exists() {
        assert!(Instant::now() < deadline, "no {}", sock.display());
        std::thread::sleep(Duration::from_millis(50));
    }
    // gdb itself, when the host has it, attaches with the printed target and detaches.
    if Command::new("gdb")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        let g = Command::new("gdb")
            .args(["-batch", "-nx", "-ex"])
            .arg(format!("target remote {}", sock.display()))
            .args(["-ex", "print/x $pc", "-ex", "detach", vmlinux])
            .output()
            .expect("gdb");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&g.stdout),
            String::from_utf8_lossy(&g.stderr)
        );
        assert!(g.status.success(), "{text}");
        assert!(
            text.contains("$1 = 0x"),
            "gdb read the program counter: {text}"
        );
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut s = loop {
        match std::os::unix::net::UnixStream::connect(&sock) {
            Ok(s) => break s,
            Err(e) => {
                assert!(Instant::now() < deadline, "{}: {e}", sock.display());
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    };
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    s.write_all(packet("qSupported:xmlRegisters=i386").as_bytes())
        .expect("qSupported");
    let supported = read_packet(&mut s);
    assert!(supported.contains("PacketSize="), "{supported}");
    s.write_all(b"+").expect("ack");
    // The stop reason, then detach: the guest runs on.
    s.write_all(packet("?").as_bytes()).expect("?");
    let stop = read_packet(&mut s);
    assert!(stop.starts_with('T') || stop.starts_with('S'), "{stop}");
    s.write_all(b"+").expect("ack");
    // Process 1 (QEMU's first CPU cluster): gdb's own session above turned the stub's
    // multiprocess mode on, where a bare D is refused.
    s.write_all(packet("D;1").as_bytes()).expect("detach");
    assert_eq!(read_packet(&mut s), "OK");
    drop(s);
    let mut rest = String::new();
    stderr.read_to_string(&mut rest).expect("stderr");
    let child = guard.0.take().expect("the harness");
    let o = child.wait_with_output().expect("harness");
    let stdout = String::from_utf8_lossy(&o.stdout);
    eprintln!("gdb bring-up: {:?}", t0.elapsed());
    assert_eq!(o.status.code(), Some(0), "{stdout}\n{rest}");
    assert!(stdout.contains("kaslr=1"), "booted with nokaslr: {stdout}");
    let run_dir = sock.parent().expect("run dir");
    let cmdline = std::fs::read_to_string(run_dir.join("qemu.cmdline")).expect("cmdline");
    assert!(cmdline.contains(" -name kl-gdb-test"), "{cmdline}");
    assert!(
        std::fs::read_to_string(run_dir.join("gdb.txt")).is_ok_and(|t| t.trim() == cmd),
        "gdb.txt"
    );
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn run_console_gives_a_shell_after_the_scenario() {
    let _vm = serial();
    let out = results_dir("kl-console");
    let mut child = Command::new(env!("CARGO_BIN_EXE_harness"))
        .args(["run", "inventory", "-q", "--console", "--results"])
        .arg(&out)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn harness");
    // Piped input waits until the scenario is done and the console is attached.
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"echo console-$((6 * 7)) $(cat /sys/kernel/tracing/tracing_on)\nexit\n")
        .expect("input");
    let o = child.wait_with_output().expect("harness");
    let stdout = String::from_utf8_lossy(&o.stdout);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{stdout}\n{stderr}");
    // The shell ran in the guest (tracefs mounted), and the scenario's verdict followed.
    assert!(
        stdout.lines().any(|l| l.trim() == "console-42 1"),
        "{stdout}"
    );
    assert!(stdout.contains("scenario inventory: PASSED"), "{stdout}");
    let _ = std::fs::remove_dir_all(&out);
}
