//! The flags of every command that boots the test bed ([`VmArgs`]), and how they override the
//! configuration file's `[vm]` table.

use clap::Args;
use harness::config::{Accel, VmConfig};
use harness::ToolPaths;
use std::path::PathBuf;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum OnOff {
    On,
    Off,
}

#[derive(Debug, Args, Default)]
pub(crate) struct VmArgs {
    /// Node 0 (CPUs + DRAM) size in MiB, a multiple of 256.
    #[arg(long, value_name = "MIB")]
    node0_mib: Option<u64>,
    /// Node 1 (memory-only "CXL" tier) size in MiB, a multiple of 256.
    #[arg(long, value_name = "MIB")]
    node1_mib: Option<u64>,
    /// Number of vCPUs (all on node 0).
    #[arg(long)]
    cpus: Option<u32>,
    /// Accelerator: auto uses KVM only if a probe guest runs correctly under it.
    #[arg(long, value_enum)]
    accel: Option<Accel>,
    /// Debian package selecting the guest kernel, e.g. linux-image-amd64/trixie-backports (7.3.x)
    /// or linux-image-amd64/trixie (6.12.x).
    #[arg(long, value_name = "PKG")]
    kernel: Option<String>,
    /// QEMU binary (>= 10.1, with vfio-user-pci) instead of the system's or a private one.
    #[arg(long, value_name = "PATH")]
    qemu: Option<PathBuf>,
    /// Seconds to wait for the guest agent after starting QEMU.
    #[arg(long, value_name = "S")]
    boot_timeout: Option<u64>,
    /// Extra guest kernel command-line arguments.
    #[arg(long, value_name = "ARGS", allow_hyphen_values = true)]
    kernel_args: Option<String>,
    /// Clock of the CHMU's epochs when the TCG plugin feeds it: host time, or guest
    /// instructions executed (reproducible for a deterministic guest).
    #[arg(long, value_enum)]
    chmu_clock: Option<harness::config::ChmuClock>,
    /// A deterministic guest (TCG counting instructions as time, seeded randomness, fixed
    /// RTC; the workload runs at boot): the same --seed gives the same CHMU hotlist. For the
    /// chmu-hot scenario; implies --chmu-clock insns, --accel tcg and one vCPU.
    #[arg(long)]
    reproducible: bool,
    /// Seed of the chmu-hot workload's hot set and the tap's instruction sampling (and, with
    /// --reproducible, of the guest's randomness).
    #[arg(long, value_name = "N")]
    seed: Option<u64>,
    /// The CHMU plugin samples one in this many guest memory accesses (each access has the
    /// same chance, whichever instruction made it) and sends each with weight N, so the CHMU's
    /// counts estimate true access counts; 1 to 4095 [default: 8].
    #[arg(long, value_name = "N")]
    chmu_sample: Option<u64>,
    /// How the chmu-hot workload reads its hot pages: sites64 (64 load instructions per page),
    /// indexed_load (one load instruction), rep_movsb (one string instruction) or
    /// pointer_chase (one load following a chain).
    #[arg(long, value_name = "KIND")]
    chmu_workload: Option<guest_agent::protocol::HotLoop>,
    /// A last-level-cache model of this many KiB in front of the CHMU: only misses reach it
    /// (the model sees the sampled accesses).
    #[arg(long, value_name = "KIB")]
    chmu_llc_kib: Option<u64>,
    /// SDXi doorbell path: mapped (BAR2 in guest memory, a store per doorbell) or trapped
    /// (every doorbell through the vfio-user socket) [default: the server's].
    #[arg(long, value_enum)]
    sdxi_doorbell: Option<harness::config::SdxiDoorbell>,
    /// Device trace categories to record in the run directory: mmio, doorbell, descriptor,
    /// completion, interrupt, errlog, hotlist, epoch, or all (comma-separated).
    #[arg(long, value_name = "CATS")]
    trace: Option<String>,
    /// Process fault: SIGKILL this process once the guest is up (sdxi-server, cxl-hmu-server,
    /// qemu); the run must report it and clean up.
    #[arg(long, value_name = "PROC")]
    kill_after_boot: Option<String>,
    /// With --kill-after-boot: kill that many milliseconds after the agent is ready, so the
    /// fault lands mid-scenario (e.g. during a migration batch).
    #[arg(long, value_name = "MS", requires = "kill_after_boot")]
    kill_delay_ms: Option<u64>,
    /// Use this sdxi-server binary instead of building it.
    #[arg(long, value_name = "PATH")]
    sdxi_server: Option<PathBuf>,
    /// Use this cxl-hmu-server binary instead of building it.
    #[arg(long, value_name = "PATH")]
    hmu_server: Option<PathBuf>,
    /// Use this statically linked guest-agent instead of building it.
    #[arg(long, value_name = "PATH")]
    agent: Option<PathBuf>,
    /// Use this chmu-tap TCG plugin (libchmu_tap.so) for the CHMU feed instead of building it.
    #[arg(long, value_name = "PATH")]
    plugin: Option<PathBuf>,
    /// The kernel under test, files in the guest, QEMU arguments, gdb.
    #[command(flatten)]
    boot: harness::kernel_loop::BootArgs,
}

impl VmArgs {
    pub(crate) fn apply(&self, cfg: &mut VmConfig) {
        macro_rules! set {
            ($($f:ident => $t:ident),*) => { $(if let Some(v) = &self.$f { cfg.$t = v.clone(); })* };
        }
        set!(node0_mib => node0_mib, node1_mib => node1_mib, cpus => cpus, accel => accel,
             kernel => kernel_package, boot_timeout => boot_timeout_s, kernel_args => kernel_args,
             chmu_clock => chmu_clock, chmu_sample => chmu_sample, chmu_llc_kib => chmu_llc_kib,
             chmu_workload => chmu_workload,
             trace => trace, seed => seed);
        if self.reproducible {
            cfg.reproducible = true;
        }
        if self.sdxi_doorbell.is_some() {
            cfg.sdxi_doorbell = self.sdxi_doorbell;
        }
        if self.kill_after_boot.is_some() {
            cfg.kill_after_boot = self.kill_after_boot.clone();
        }
        if let Some(ms) = self.kill_delay_ms {
            cfg.kill_delay_ms = ms;
        }
        if self.qemu.is_some() {
            cfg.qemu = self.qemu.clone();
        }
        self.boot.apply(cfg);
    }

    pub(crate) fn tools(&self) -> ToolPaths {
        ToolPaths {
            sdxi_server: self.sdxi_server.clone(),
            hmu_server: self.hmu_server.clone(),
            agent: self.agent.clone(),
            plugin: self.plugin.clone(),
        }
    }
}
