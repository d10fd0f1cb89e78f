//! Test-bed configuration: defaults, an optional TOML file, then command-line flags.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// How to accelerate the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// KVM if a probe guest runs correctly under it, otherwise TCG.
    Auto,
    /// QEMU's TCG software emulation (always works).
    Tcg,
    /// KVM (fails if /dev/kvm cannot run guests).
    Kvm,
}

/// The clock CHMU epochs run on when the plugin feeds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ChmuClock {
    /// Host nanoseconds.
    Host,
    /// Guest instructions executed (all vCPUs), one per nanosecond of epoch length.
    Insns,
}

/// The SDXi function's doorbell path (`sdxi-server --doorbell`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum SdxiDoorbell {
    /// BAR2 lives in guest memory: a doorbell is a store the server's watcher notices.
    Mapped,
    /// Every doorbell write travels the vfio-user socket as a region access.
    Trapped,
}

impl SdxiDoorbell {
    /// The value `sdxi-server --doorbell` takes.
    pub fn as_arg(self) -> &'static str {
        match self {
            Self::Mapped => "mapped",
            Self::Trapped => "trapped",
        }
    }
}

/// Everything that shapes a test-bed VM.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VmConfig {
    /// Node 0: CPUs + DRAM, MiB (multiple of 256).
    pub node0_mib: u64,
    /// Node 1: memory-only "CXL" tier, MiB (multiple of 256).
    pub node1_mib: u64,
    pub cpus: u32,
    pub accel: Accel,
    /// Debian package selecting the guest kernel (`name` or `name/suite`).
    pub kernel_package: String,
    /// QEMU binary to use instead of the system's or a private one.
    pub qemu: Option<PathBuf>,
    /// Cache for QEMU, kernels and initramfs images.
    pub cache_dir: PathBuf,
    /// Seconds from QEMU start until the guest agent must have said hello.
    pub boot_timeout_s: u64,
    /// Seconds one agent request may take.
    pub request_timeout_s: u64,
    /// HMAT latencies (ns) and bandwidths (MB/s) advertised for node 0 and node 1.
    pub node0_latency_ns: u64,
    pub node1_latency_ns: u64,
    pub node0_bandwidth_mbs: u64,
    pub node1_bandwidth_mbs: u64,
    /// Highest SDXi context ID (CAP1.max_cxt).
    pub sdxi_max_cxt: u16,
    /// The SDXi engine completes the descriptors between two fences in reverse order
    /// (`sdxi-server --force-out-of-order`), to test drivers' handling of it.
    pub sdxi_out_of_order: bool,
    /// SDXi doorbell path, mapped or trapped; unset: the server's default.
    pub sdxi_doorbell: Option<SdxiDoorbell>,
    /// Number of CHMU instances.
    pub chmu_instances: u8,
    /// Extra kernel command-line arguments.
    pub kernel_args: String,
    /// Let the guest kernel's DAMON_STAT run (Debian enables it by default: a kdamond that
    /// samples all physical memory, node 1 included, so it adds accesses the CHMU sees and
    /// reports, 150-300 hotlist units per run). Off by default: `damon_stat.enabled=N` on the
    /// kernel command line (mm/damon/stat.c), so only the workload touches node 1.
    pub damon_stat: bool,
    /// Load the chmu-tap TCG plugin so the CHMU sees the guest's accesses to node 1.
    pub chmu_feed: bool,
    /// The plugin samples one in this many guest memory accesses (on average, each with the
    /// same chance) and sends each sample with this weight; 1 to 4095.
    pub chmu_sample: u64,
    /// How the chmu-hot workload reads its hot pages: `sites64` (64 load instructions per
    /// page), `indexed_load` (one load instruction), `rep_movsb` or `pointer_chase`.
    pub chmu_workload: guest_agent::protocol::HotLoop,
    /// Clock of the CHMU's epochs with the plugin feed.
    pub chmu_clock: ChmuClock,
    /// A last-level-cache model of this many KiB in front of the CHMU (the plugin sends only
    /// misses); 0 for none.
    pub chmu_llc_kib: u64,
    /// Put the virtual IOMMU in front of the devices (guest DMA addresses are then IOVAs, each
    /// guest mapping a DMA_MAP message); without it they are guest-physical.
    pub iommu: bool,
    /// Process fault: SIGKILL this process (`sdxi-server`, `cxl-hmu-server` or `qemu`) once
    /// the guest agent is ready, to check that the test bed reports it and cleans up.
    pub kill_after_boot: Option<String>,
    /// With `kill_after_boot`: wait this many milliseconds after the agent is ready first, so
    /// the fault lands in the middle of the scenario (e.g. during a migration batch).
    pub kill_delay_ms: u64,
    /// With `kill_after_boot`: kill only once the SDXi server has executed this many COPY
    /// descriptors (after `kill_delay_ms`), so the fault lands between batches of a migration
    /// however fast the machine is. The run goes on without the process.
    pub kill_after_sdxi_copies: Option<u64>,
    /// Device trace categories written to the run directory (`sdxi-trace.log`,
    /// `cxl-hmu-trace.log`), e.g. "mmio,descriptor" or "all"; empty for none.
    pub trace: String,
    /// A deterministic guest, so the same workload and seed give the same hotlist: QEMU
    /// counts instructions as time (`-icount shift=0,sleep=off`), with seeded guest
    /// randomness and a fixed RTC; TCG and one vCPU; the CHMU's epochs on the instruction clock; the
    /// chmu-hot workload runs at boot from the kernel command line, before any host input.
    pub reproducible: bool,
    /// Seed of the chmu-hot workload's hot set, the tap's instruction sampling and, when
    /// reproducible, QEMU's guest randomness (`-seed`).
    pub seed: u64,
    /// A kernel under test (`vmlinux` with PVH, or bzImage) instead of `kernel_package`;
    /// see [`crate::kernel_loop`].
    pub kernel_image: Option<PathBuf>,
    /// Its module tree (…/lib/modules/RELEASE).
    pub modules_dir: Option<PathBuf>,
    /// Its configuration (`.config`), when the image and the files next to it have none.
    pub kernel_config: Option<PathBuf>,
    /// Directory trees copied into the guest's root.
    pub overlay: Vec<PathBuf>,
    /// Debian packages unpacked into the guest with their libraries.
    pub packages: Vec<String>,
    /// Extra QEMU arguments, passed through.
    pub qemu_args: Vec<String>,
    /// QEMU's gdb stub on a socket in the run directory; the guest boots with `nokaslr`.
    pub gdb: bool,
    /// After the scenario, bridge the guest console to the terminal (a shell started at
    /// boot) before shutting down.
    pub console: bool,
    /// The dmaengine driver `harness run dmatest` tests (command line only; none: the
    /// project's fixture), see [`crate::dmatest`].
    #[serde(skip)]
    pub dmatest_driver: crate::dmatest::Driver,
}

impl Default for VmConfig {
    fn default() -> Self {
        Self {
            node0_mib: 1024,
            node1_mib: 1024,
            cpus: 2,
            accel: Accel::Auto,
            kernel_package: images::DEFAULT_KERNEL_PACKAGE.to_owned(),
            qemu: None,
            cache_dir: images::default_cache_dir(),
            boot_timeout_s: 180,
            request_timeout_s: 120,
            node0_latency_ns: 100,
            node1_latency_ns: 300,
            node0_bandwidth_mbs: 20_000,
            node1_bandwidth_mbs: 5_000,
            sdxi_max_cxt: 64,
            sdxi_out_of_order: false,
            sdxi_doorbell: None,
            chmu_instances: 2,
            kernel_args: String::new(),
            damon_stat: false,
            chmu_feed: false,
            chmu_sample: 8,
            chmu_workload: guest_agent::protocol::HotLoop::Sites64,
            chmu_clock: ChmuClock::Host,
            chmu_llc_kib: 0,
            trace: String::new(),
            kill_after_boot: None,
            kill_delay_ms: 0,
            kill_after_sdxi_copies: None,
            iommu: true,
            reproducible: false,
            seed: 1,
            kernel_image: None,
            modules_dir: None,
            kernel_config: None,
            overlay: Vec::new(),
            packages: Vec::new(),
            qemu_args: Vec::new(),
            gdb: false,
            console: false,
            dmatest_driver: Default::default(),
        }
    }
}

/// Configuration errors name the file or the value at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {}", .0.display())]
    Read(PathBuf, #[source] std::io::Error),
    #[error("config file {}", .0.display())]
    Parse(PathBuf, #[source] toml::de::Error),
    #[error("{0}")]
    Invalid(String),
}

/// The file format: `[vm]` holds [`VmConfig`] keys.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    vm: VmConfig,
}

/// A guest-physical range.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpaRange {
    pub base: u64,
    pub size: u64,
}

const MIB: u64 = 1 << 20;
/// q35 puts guest RAM below 4 GiB up to 2.75 GiB, or only up to 2 GiB when there is more.
const Q35_LOWMEM_SPLIT: u64 = 0xb000_0000;
const Q35_LOWMEM: u64 = 0x8000_0000;
const FOUR_GIB: u64 = 1 << 32;

impl VmConfig {
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let Some(p) = path else {
            return Ok(Self::default());
        };
        let text = std::fs::read_to_string(p).map_err(|e| ConfigError::Read(p.to_owned(), e))?;
        let f: File = toml::from_str(&text).map_err(|e| ConfigError::Parse(p.to_owned(), e))?;
        Ok(f.vm)
    }

    /// Checks values that would make QEMU or the devices fail later with a worse message.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.node0_mib < 256 || !self.node0_mib.is_multiple_of(256) {
            return bad(format!(
                "node0_mib = {}: must be a multiple of 256, at least 256",
                self.node0_mib
            ));
        }
        if self.node1_mib < 256 || !self.node1_mib.is_multiple_of(256) {
            return bad(format!(
                "node1_mib = {}: must be a multiple of 256, at least 256 (the CXL range granularity)",
                self.node1_mib
            ));
        }
        if !(1..=64).contains(&self.cpus) {
            return bad(format!("cpus = {}: must be 1..=64", self.cpus));
        }
        if let Some(k) = &self.kill_after_boot {
            if !["sdxi-server", "cxl-hmu-server", "qemu"].contains(&k.as_str()) {
                return bad(format!(
                    "kill_after_boot = {k:?}: one of sdxi-server, cxl-hmu-server, qemu"
                ));
            }
        }
        if self.reproducible && self.accel == Accel::Kvm {
            return bad(
                "reproducible = true needs TCG (QEMU's instruction counting); use accel = \"tcg\" or \"auto\""
                    .into(),
            );
        }
        if !(1..=4095).contains(&self.chmu_sample) {
            return bad(format!(
                "chmu_sample = {}: must be 1..=4095 (one in N accesses, each sent with weight N)",
                self.chmu_sample
            ));
        }
        if self.boot_timeout_s == 0 || self.request_timeout_s == 0 {
            return bad("timeouts must be at least 1 second".into());
        }
        crate::kernel_loop::validate_paths(self).map_err(ConfigError::Invalid)?;
        self.node1_range().map(|_| ())
    }

    /// Guest-physical ranges of each node's RAM: (node, gpa, size, offset in the node's
    /// backing file). Node 0 may be split around the PCI hole below 4 GiB.
    pub fn ram_map(&self) -> Result<Vec<(u32, u64, u64, u64)>, ConfigError> {
        let n0 = self.node0_mib * MIB;
        let n1 = self.node1_range()?;
        let below = if n0 + n1.size >= Q35_LOWMEM_SPLIT {
            Q35_LOWMEM
        } else {
            n0 + n1.size
        };
        let mut v = vec![(0, 0, n0.min(below), 0)];
        if n0 > below {
            v.push((0, FOUR_GIB, n0 - below, below));
        }
        v.push((1, n1.base, n1.size, 0));
        Ok(v)
    }

    /// Where node 1's RAM lands in guest-physical space (QEMU assigns node RAM in order and
    /// splits it around the PCI hole below 4 GiB). It must be one contiguous range.
    pub fn node1_range(&self) -> Result<GpaRange, ConfigError> {
        let n0 = self.node0_mib * MIB;
        let n1 = self.node1_mib * MIB;
        let total = n0 + n1;
        let below = if total >= Q35_LOWMEM_SPLIT {
            Q35_LOWMEM
        } else {
            total
        };
        let base = if n0 < below {
            if n0 + n1 > below {
                return Err(ConfigError::Invalid(format!(
                    "node sizes {} + {} MiB put node 1 across the PCI hole below 4 GiB; use \
                     node0_mib >= 2048 or node0_mib + node1_mib < 2816",
                    self.node0_mib, self.node1_mib
                )));
            }
            n0
        } else {
            FOUR_GIB + (n0 - below)
        };
        Ok(GpaRange { base, size: n1 })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_node1_sits_right_after_node0() {
        let r = VmConfig::default().node1_range().expect("valid");
        assert_eq!(
            r,
            GpaRange {
                base: 1 << 30,
                size: 1 << 30
            }
        );
    }

    #[test]
    fn ram_map_splits_node0_around_the_pci_hole() {
        assert_eq!(
            VmConfig::default().ram_map().expect("valid"),
            vec![(0, 0, 1 << 30, 0), (1, 1 << 30, 1 << 30, 0)]
        );
        let c = VmConfig {
            node0_mib: 3072,
            node1_mib: 1024,
            ..VmConfig::default()
        };
        assert_eq!(
            c.ram_map().expect("valid"),
            vec![
                (0, 0, 2 << 30, 0),
                (0, 4 << 30, 1 << 30, 2 << 30),
                (1, 5 << 30, 1 << 30, 0)
            ]
        );
    }

    #[test]
    fn large_node0_pushes_node1_above_4g() {
        let c = VmConfig {
            node0_mib: 2048,
            node1_mib: 2048,
            ..VmConfig::default()
        };
        assert_eq!(c.node1_range().expect("valid").base, 1 << 32);
    }

    #[test]
    fn node1_across_the_hole_is_refused_with_advice() {
        let c = VmConfig {
            node0_mib: 1024,
            node1_mib: 2048,
            ..VmConfig::default()
        };
        let e = c.validate().expect_err("must fail").to_string();
        assert!(e.contains("PCI hole"), "{e}");
    }

    /// Loads `text` from a config file as the harness does; an error as its whole chain.
    fn load_text(tag: &str, text: &str) -> Result<VmConfig, String> {
        let dir = std::env::temp_dir().join(format!("harness-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let file = dir.join("vm.toml");
        std::fs::write(&file, text).expect("write");
        let r = VmConfig::load(Some(&file)).map_err(|e| format!("{:#}", anyhow::Error::from(e)));
        let _ = std::fs::remove_dir_all(&dir);
        r
    }

    #[test]
    fn toml_file_overrides_defaults_and_rejects_typos() {
        let c = load_text("cfg", "[vm]\nnode1_mib = 512\naccel = \"tcg\"\n").expect("load");
        assert_eq!((c.node1_mib, c.accel, c.node0_mib), (512, Accel::Tcg, 1024));
        let e = load_text("cfg", "[vm]\nnode1_mb = 512\n").expect_err("must fail");
        assert!(e.contains("node1_mb"), "{e}");
    }

    #[test]
    fn sdxi_doorbell_mode_comes_from_the_file_and_a_bad_one_is_named() {
        assert_eq!(VmConfig::default().sdxi_doorbell, None);
        let c = load_text("db", "[vm]\nsdxi_doorbell = \"trapped\"\n").expect("load");
        assert_eq!(c.sdxi_doorbell, Some(SdxiDoorbell::Trapped));
        assert_eq!(SdxiDoorbell::Trapped.as_arg(), "trapped");
        assert_eq!(SdxiDoorbell::Mapped.as_arg(), "mapped");
        let e = load_text("db", "[vm]\nsdxi_doorbell = \"polled\"\n").expect_err("must fail");
        assert!(e.contains("polled"), "{e}");
    }

    #[test]
    fn odd_node_size_is_refused() {
        let c = VmConfig {
            node1_mib: 300,
            ..VmConfig::default()
        };
        assert!(c
            .validate()
            .expect_err("must fail")
            .to_string()
            .contains("node1_mib = 300"));
    }
}
