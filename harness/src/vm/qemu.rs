//! The QEMU command line of a test bed: machine, two file-backed NUMA nodes with HMAT, the
//! virtual IOMMU, both devices as `vfio-user-pci` behind root ports, consoles, the kernel and
//! its command line (QEMU `docs/system/invocation`, `docs/system/devices/vfio-user.rst`), and
//! the chmu-tap plugin's argument.

use crate::config::{GpaRange, VmConfig};
use images::Images;
use std::path::{Path, PathBuf};

/// What the guest runs.
#[derive(Clone, Debug, Default)]
pub enum Boot {
    /// The guest agent serves harness requests.
    #[default]
    Agent,
    /// Driver bring-up: the user's modules and script; `initrd` is the initramfs with the
    /// bring-up archive appended. With `console` the guest console is a socket the harness
    /// bridges to the user's terminal (`Vm::take_console`).
    Bringup { initrd: PathBuf, console: bool },
    /// The guest agent runs this request at boot, from the kernel command line, before its
    /// hello (a reproducible run: no host input reaches the guest first); `Request::Autorun`
    /// fetches the reply.
    Autorun(guest_agent::protocol::Request),
}

impl Boot {
    pub(super) fn mode(&self) -> &'static str {
        match self {
            Self::Agent | Self::Autorun(_) => "agent",
            Self::Bringup { .. } => "bringup",
        }
    }

    pub(super) fn initrd(&self, images: &Images) -> PathBuf {
        match self {
            Self::Agent | Self::Autorun(_) => images.initramfs.clone(),
            Self::Bringup { initrd, .. } => initrd.clone(),
        }
    }
}

/// Fixed guest wall-clock start of a reproducible run (the RTC then follows the instruction
/// clock, not the host's).
pub const REPRODUCIBLE_RTC_BASE: &str = "2026-01-01T00:00:00";

/// Guest RAM as two file-backed NUMA nodes (node 1 memory-only, initiator node 0) with
/// their distance and HMAT latency and bandwidth, so the guest puts node 1 in a lower tier.
fn memory_args(cfg: &VmConfig, ram_dir: &Path) -> Vec<String> {
    let d = |p: &Path| p.display().to_string();
    let mut a: Vec<String> = Vec::new();
    let mut push = |xs: &[&str]| a.extend(xs.iter().map(|s| (*s).to_owned()));
    for (i, mib) in [cfg.node0_mib, cfg.node1_mib].into_iter().enumerate() {
        push(&[
            "-object",
            &format!(
                "memory-backend-file,id=m{i},size={mib}M,mem-path={},share=on",
                d(&ram_dir.join(format!("node{i}.ram")))
            ),
        ]);
    }
    push(&[
        "-numa",
        &format!("node,nodeid=0,cpus=0-{},memdev=m0", cfg.cpus - 1),
    ]);
    push(&["-numa", "node,nodeid=1,memdev=m1,initiator=0"]);
    push(&["-numa", "dist,src=0,dst=1,val=20"]);
    for (target, lat, bw) in [
        (0, cfg.node0_latency_ns, cfg.node0_bandwidth_mbs),
        (1, cfg.node1_latency_ns, cfg.node1_bandwidth_mbs),
    ] {
        push(&[
            "-numa",
            &format!("hmat-lb,initiator=0,target={target},hierarchy=memory,data-type=access-latency,latency={lat}"),
        ]);
        push(&[
            "-numa",
            &format!("hmat-lb,initiator=0,target={target},hierarchy=memory,data-type=access-bandwidth,bandwidth={bw}M"),
        ]);
    }
    a
}

/// The guest kernel's command line: consoles, the IOMMU, the agent's mode, the kernel
/// developer's arguments, and a reproducible run's request.
fn kernel_cmdline(cfg: &VmConfig, boot: &Boot) -> String {
    let mut cmdline = format!(
        "console=ttyS0 loglevel=4 panic=-1 {}tierbed.mode={}",
        if cfg.iommu { "intel_iommu=on " } else { "" },
        boot.mode()
    );
    if !cfg.damon_stat {
        cmdline.push_str(" damon_stat.enabled=N");
    }
    cmdline.push_str(&crate::kernel_loop::kernel_cmdline_args(cfg));
    if !cfg.kernel_args.is_empty() {
        cmdline.push(' ');
        cmdline.push_str(&cfg.kernel_args);
    }
    if let Boot::Autorun(r) = boot {
        cmdline.push_str(&format!(
            " {}={}",
            guest_agent::protocol::AUTORUN_PARAM,
            guest_agent::protocol::encode_autorun(r)
        ));
    }
    cmdline
}

/// The QEMU command line (after the binary and its prefix arguments).
pub fn qemu_args(
    cfg: &VmConfig,
    boot: &Boot,
    images: &Images,
    accel: &str,
    ram_dir: &Path,
    sock_dir: &Path,
    console: &Path,
) -> Vec<String> {
    let d = |p: &Path| p.display().to_string();
    let mut a: Vec<String> = Vec::new();
    let mut push = |xs: &[&str]| a.extend(xs.iter().map(|s| (*s).to_owned()));
    push(&[
        "-accel",
        accel,
        "-machine",
        "q35,hmat=on",
        "-smp",
        &cfg.cpus.to_string(),
    ]);
    push(&["-m", &format!("{}M", cfg.node0_mib + cfg.node1_mib)]);
    if cfg.reproducible {
        // Time is instructions (1 ns each; idle time skipped, never slept), so timer
        // interrupts land at the same instruction in every run; RDRAND and the guest's other
        // random sources come from the seed; the RTC starts at a fixed date on that clock.
        push(&[
            "-icount",
            "shift=0,sleep=off,align=off",
            "-seed",
            &cfg.seed.to_string(),
            "-rtc",
            &format!("base={REPRODUCIBLE_RTC_BASE},clock=vm"),
        ]);
    }
    push(&["-nodefaults", "-display", "none", "-no-reboot"]);
    a.extend(memory_args(cfg, ram_dir));
    let mut push = |xs: &[&str]| a.extend(xs.iter().map(|s| (*s).to_owned()));
    if cfg.iommu {
        push(&["-device", "intel-iommu,caching-mode=on"]);
    }
    for (i, sock) in ["sdxi.sock", "hmu.sock"].iter().enumerate() {
        push(&[
            "-device",
            &format!("pcie-root-port,id=rp{i},chassis={},slot={}", i + 1, i + 1),
        ]);
        push(&[
            "-device",
            &format!(
                r#"{{"driver":"vfio-user-pci","bus":"rp{i}","socket":{{"type":"unix","path":"{}"}}}}"#,
                d(&sock_dir.join(sock))
            ),
        ]);
    }
    if matches!(boot, Boot::Bringup { console: true, .. }) {
        push(&[
            "-chardev",
            &format!(
                "socket,id=con,path={},logfile={}",
                d(&sock_dir.join("console.sock")),
                d(console)
            ),
        ]);
    } else if cfg.console && matches!(boot, Boot::Agent | Boot::Autorun(_)) {
        // The console after the scenario (`run --console`): QEMU listens, the harness
        // connects once the scenario is done; until then output only goes to the log.
        push(&[
            "-chardev",
            &format!(
                "socket,id=con,path={},server=on,wait=off,logfile={}",
                d(&sock_dir.join("console.sock")),
                d(console)
            ),
        ]);
    } else {
        push(&["-chardev", &format!("file,id=con,path={}", d(console))]);
    }
    push(&["-serial", "chardev:con"]);
    push(&[
        "-chardev",
        &format!("socket,id=agent,path={}", d(&sock_dir.join("agent.sock"))),
    ]);
    push(&["-serial", "chardev:agent"]);
    push(&[
        "-kernel",
        &d(&images.kernel.vmlinux),
        "-initrd",
        &d(&boot.initrd(images)),
    ]);
    let cmdline = kernel_cmdline(cfg, boot);
    push(&["-append", &cmdline]);
    a
}

/// The chmu-tap plugin's QEMU argument: its feed socket, the monitored range (node 1), the
/// sampling, the seed, the clock and the optional LLC model.
pub(super) fn plugin_arg(
    cfg: &VmConfig,
    plugin: &Path,
    sock_dir: &Path,
    node1: GpaRange,
) -> String {
    let mut a = format!(
        "{},feed={},base={:#x},size={:#x},sample={},seed={},clock={}",
        plugin.display(),
        sock_dir.join("feed.sock").display(),
        node1.base,
        node1.size,
        cfg.chmu_sample,
        cfg.seed,
        match cfg.chmu_clock {
            crate::config::ChmuClock::Host => "host",
            crate::config::ChmuClock::Insns => "insns",
        }
    );
    if cfg.chmu_llc_kib > 0 {
        a.push_str(&format!(",llc={}", cfg.chmu_llc_kib << 10));
    }
    a
}

/// The QEMU command line as one shell line (the run directory's `qemu.cmdline`).
pub(super) fn shell_words(q: &images::Qemu, args: &[String]) -> String {
    let quote = |s: &str| {
        if s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=,:".contains(c))
        {
            s.to_owned()
        } else {
            format!("'{}'", s.replace('\'', r"'\''"))
        }
    };
    let mut w = vec![quote(&q.program.to_string_lossy())];
    w.extend(q.prefix_args.iter().map(|a| quote(&a.to_string_lossy())));
    w.extend(args.iter().map(|a| quote(a)));
    w.join(" ") + "\n"
}
