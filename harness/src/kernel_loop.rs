//! The kernel in the loop: the boot options a kernel developer uses with every command that
//! boots (`run`, `demo`, `bringup`; [`BootArgs`]), the check of the kernel's configuration
//! against what a scenario needs before it boots ([`check_config`]), QEMU's gdb stub
//! ([`gdb_command`]) and the console after a scenario ([`finish_run`]).
//!
//! The kernel under test itself (a `vmlinux` or bzImage with its module tree, no download)
//! and the guest's extra files (overlays, Debian packages) are provisioned by `images`
//! ([`images::kconfig`], [`images::guest_files`]).
//!
//! Configuration options are those of Linux's Kconfig files (`drivers/vfio/Kconfig`,
//! `drivers/iommu/intel/Kconfig`, `mm/Kconfig`, `mm/damon/Kconfig`, `init/Kconfig`,
//! `drivers/cxl/Kconfig`, `drivers/dma/Kconfig`).

use crate::config::VmConfig;
use crate::migration::ScenarioFile;
use crate::{console, vm};
use images::kconfig::KernelConfig;
use images::{Images, Progress};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The kernel under test and what goes into the guest, for every command that boots.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct BootArgs {
    /// Boot your own kernel: an uncompressed vmlinux with PVH (CONFIG_PVH=y) or a bzImage,
    /// instead of the Debian package (nothing is downloaded for it).
    #[arg(long, value_name = "PATH")]
    pub kernel_image: Option<PathBuf>,
    /// Module tree of that kernel (…/lib/modules/RELEASE): vfio, uio and configfs load from
    /// it; without it they must be built in.
    #[arg(long, value_name = "DIR", requires = "kernel_image")]
    pub modules_dir: Option<PathBuf>,
    /// Read the kernel's configuration from this file (a .config) instead of the image's
    /// embedded one (CONFIG_IKCONFIG) or the files next to it or its module tree; it is
    /// checked before boot against what the scenario needs.
    #[arg(long, value_name = "FILE")]
    pub kernel_config: Option<PathBuf>,
    /// Copy this directory tree into the guest's root (repeatable; later trees win).
    #[arg(long, value_name = "DIR")]
    pub overlay: Vec<PathBuf>,
    /// Unpack this Debian package from trixie (`NAME` or `NAME/SUITE`) with the libraries it
    /// depends on into the guest, e.g. numactl, linux-perf, trace-cmd (repeatable).
    #[arg(long = "package", value_name = "NAME")]
    pub packages: Vec<String>,
    /// Pass this argument through to QEMU (repeatable), e.g. --qemu-arg=-d --qemu-arg=int.
    #[arg(long = "qemu-arg", value_name = "ARG", allow_hyphen_values = true)]
    pub qemu_args: Vec<String>,
    /// Start QEMU's gdb stub on a Unix socket in the run directory, boot with nokaslr, and
    /// print the gdb command that attaches to it.
    #[arg(long)]
    pub gdb: bool,
}

impl BootArgs {
    /// Sets what was given on the command line, over the configuration file's values.
    pub fn apply(&self, cfg: &mut VmConfig) {
        if self.kernel_image.is_some() {
            cfg.kernel_image = self.kernel_image.clone();
            cfg.modules_dir = self.modules_dir.clone();
        }
        if self.kernel_config.is_some() {
            cfg.kernel_config = self.kernel_config.clone();
        }
        cfg.overlay.extend(self.overlay.iter().cloned());
        cfg.packages.extend(self.packages.iter().cloned());
        cfg.qemu_args.extend(self.qemu_args.iter().cloned());
        cfg.gdb |= self.gdb;
    }
}

/// The `images` view of the kernel under test and the guest files.
pub fn images_config(cfg: &VmConfig, refresh: bool) -> images::ImagesConfig {
    images::ImagesConfig {
        cache_dir: cfg.cache_dir.clone(),
        kernel_package: cfg.kernel_package.clone(),
        qemu: cfg.qemu.clone(),
        modules: images::default_modules(),
        refresh,
        kernel_image: cfg.kernel_image.clone(),
        modules_dir: cfg.modules_dir.clone(),
        guest_files: images::guest_files::GuestFiles {
            overlay: cfg.overlay.clone(),
            packages: cfg.packages.clone(),
        },
    }
}

/// One configuration option a scenario needs, and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Need {
    /// The option without `CONFIG_`.
    pub option: &'static str,
    /// The module it builds when it is `=m` (then the module must be in the module tree).
    pub module: Option<&'static str>,
    pub why: &'static str,
}

const fn need(option: &'static str, module: Option<&'static str>, why: &'static str) -> Need {
    Need {
        option,
        module,
        why,
    }
}

/// What every boot needs: the initramfs, the serial ports of the console and the agent,
/// PCI with MSI-X for the two devices, and the two NUMA nodes with the slow one's tier
/// (HMAT).
pub const BOOT: &[Need] = &[
    need(
        "BLK_DEV_INITRD",
        None,
        "the test bed boots from an initramfs",
    ),
    need("DEVTMPFS", None, "/init mounts devtmpfs"),
    need("TMPFS", None, "/init mounts /tmp"),
    need(
        "SERIAL_8250",
        None,
        "the console and the agent use ttyS0 and ttyS1",
    ),
    need("SERIAL_8250_CONSOLE", None, "the kernel console is ttyS0"),
    need("PCI", None, "both devices are PCI functions"),
    need("PCI_MSI", None, "both devices signal through MSI-X"),
    need("NUMA", None, "node 1 is the slow memory tier"),
    need("ACPI_NUMA", None, "QEMU describes the nodes in ACPI SRAT"),
    need(
        "ACPI_HMAT",
        None,
        "node 1's lower memory tier comes from HMAT",
    ),
];

/// The virtual IOMMU (on unless `--iommu off`).
pub const IOMMU: &[Need] = &[need(
    "INTEL_IOMMU",
    None,
    "the devices sit behind QEMU's intel-iommu",
)];

/// The guest agent drives both devices through vfio-pci.
pub const AGENT: &[Need] = &[
    need(
        "VFIO",
        Some("vfio"),
        "the guest agent drives both devices through VFIO",
    ),
    need(
        "VFIO_PCI",
        Some("vfio_pci"),
        "the guest agent binds both devices to vfio-pci",
    ),
    need("EVENTFD", None, "VFIO signals MSI-X through eventfds"),
];

/// VFIO's type-1 IOMMU backend, with the virtual IOMMU.
pub const AGENT_IOMMU: &[Need] = &[need(
    "VFIO_IOMMU_TYPE1",
    Some("vfio_iommu_type1"),
    "the agent maps DMA buffers at IOVAs through VFIO's type-1 IOMMU backend",
)];

/// The migrator: pages move between nodes, write-protected by userfaultfd while they do.
pub const MIGRATE: &[Need] = &[
    need(
        "MIGRATION",
        None,
        "the migrator moves pages between nodes (move_pages(2))",
    ),
    need(
        "USERFAULTFD",
        None,
        "the migrator write-protects pages in flight with userfaultfd",
    ),
    need(
        "HAVE_ARCH_USERFAULTFD_WP",
        None,
        "userfaultfd write-protect (UFFDIO_WRITEPROTECT)",
    ),
    need(
        "PTE_MARKER_UFFD_WP",
        None,
        "userfaultfd write-protect on shared memory (the workload's memfd pages)",
    ),
    need("MEMFD_CREATE", None, "the workload's pages are memfd pages"),
];

/// DAMON as the hotness source (`source = "damon"`).
pub const DAMON: &[Need] = &[
    need(
        "DAMON",
        None,
        "the damon source samples accesses with DAMON",
    ),
    need(
        "DAMON_VADDR",
        None,
        "the damon source monitors the workload's virtual addresses",
    ),
    need(
        "DAMON_SYSFS",
        None,
        "the damon source drives DAMON through sysfs",
    ),
];

/// The kernel's own tiering (NUMA balancing in memory-tiering mode), the baseline
/// (`source = "kernel"`).
pub const KERNEL_TIERING: &[Need] = &[
    need(
        "NUMA_BALANCING",
        None,
        "the kernel's tiering promotes through NUMA balancing (numa_balancing=2)",
    ),
    need("MIGRATION", None, "the kernel's tiering migrates pages"),
];

/// The kernel's CXL drivers (the cxl_pci test).
pub const CXL: &[Need] = &[
    need(
        "CXL_BUS",
        None,
        "cxl_pci registers the memory device on the CXL bus",
    ),
    need(
        "CXL_PCI",
        Some("cxl_pci"),
        "cxl_pci binds the CXL memory device",
    ),
    need("CXL_MEM", Some("cxl_mem"), "cxl_mem attaches the memdev"),
];

/// The kernel's DMA engine API and dmatest.
pub const DMATEST: &[Need] = &[need(
    "DMA_ENGINE",
    None,
    "dmatest and the driver under test use the dmaengine API",
)];

/// Scenarios that need more than their steps and files say, by name.
/// (dmatest's own run checks [`DMATEST`] itself, before it builds anything.)
const BY_NAME: &[(&str, &[Need])] = &[("compare-kernel", KERNEL_TIERING)];

/// What scenario `name` (with its file, if it has one) needs from the kernel.
pub fn scenario_needs(cfg: &VmConfig, name: &str, file: Option<&ScenarioFile>) -> Vec<Need> {
    let mut n: Vec<Need> = BOOT.iter().chain(AGENT).copied().collect();
    if cfg.iommu {
        n.extend(IOMMU.iter().chain(AGENT_IOMMU));
    }
    if let Some(f) = file {
        let runs = f.runs();
        if !runs.is_empty() || f.bench.is_some() {
            n.extend(MIGRATE);
        }
        let uses = |k: guest_agent::spec::SourceKind| runs.iter().any(|r| r.migrate.source == k);
        if uses(guest_agent::spec::SourceKind::Damon) {
            n.extend(DAMON);
        }
        if uses(guest_agent::spec::SourceKind::Kernel) {
            n.extend(KERNEL_TIERING);
        }
    }
    for (_, extra) in BY_NAME.iter().filter(|(s, _)| *s == name) {
        n.extend(*extra);
    }
    n
}

/// Checks the kernel against what `scenario` needs, before it boots.
pub fn check_scenario(
    cfg: &VmConfig,
    imgs: &Images,
    scenario: &crate::scenario::Scenario,
    progress: &mut dyn Progress,
) -> Result<(), KernelError> {
    let needs = scenario_needs(cfg, &scenario.name, scenario.file.as_ref());
    let what = format!("scenario {}", scenario.name);
    check_config(cfg, imgs, &needs, &what, progress)
}

/// What a bring-up boot needs (the user's script decides the rest).
pub fn bringup_needs(cfg: &VmConfig) -> Vec<Need> {
    let mut n = BOOT.to_vec();
    if cfg.iommu {
        n.extend(IOMMU);
    }
    n
}

/// A kernel that cannot run what was asked of it.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("the kernel {kernel} cannot run {what}:\n{}\n(configuration read from {source_file}; \
             rebuild with these options, or pass the right --kernel-config FILE)",
            missing.iter().map(|m| format!("  - {m}")).collect::<Vec<_>>().join("\n"))]
    Missing {
        kernel: String,
        what: String,
        source_file: String,
        missing: Vec<String>,
    },
    #[error("reading the kernel's configuration")]
    Config(#[from] images::ImagesError),
}

/// Why `need` is not met by `config` (with the kernel's module tree `modules`), or `None`.
pub fn unmet(
    need: &Need,
    config: &KernelConfig,
    modules: Option<&images::kernel::ModuleIndex>,
) -> Option<String> {
    let why = need.why;
    match config.get(need.option) {
        Some("y") => None,
        Some("m") => {
            let Some(module) = need.module else {
                return Some(format!(
                    "CONFIG_{}=m but it must be built in ({why})",
                    need.option
                ));
            };
            match modules {
                Some(idx) if idx.contains(module) || idx.is_builtin(module) => None,
                Some(_) => Some(format!(
                    "CONFIG_{}=m but {module}.ko is not in the module tree ({why})",
                    need.option
                )),
                None => Some(format!(
                    "CONFIG_{}=m but no module tree was given (--modules-dir) ({why})",
                    need.option
                )),
            }
        }
        Some(other) if need.module.is_none() && other != "n" => None,
        _ => Some(format!("CONFIG_{} is not set ({why})", need.option)),
    }
}

/// Checks the kernel `imgs` boots against `needs` of `what` (a scenario, `bring-up`), before
/// it boots. Without any configuration to read, the check is skipped with a note.
pub fn check_config(
    cfg: &VmConfig,
    imgs: &Images,
    needs: &[Need],
    what: &str,
    progress: &mut dyn Progress,
) -> Result<(), KernelError> {
    let k = &imgs.kernel;
    let modules_dir = (!k.modules_dir.as_os_str().is_empty()).then_some(k.modules_dir.as_path());
    let config = images::kconfig::load(
        cfg.kernel_config.as_deref(),
        &k.vmlinux,
        modules_dir,
        &k.release,
        k.user,
    )?;
    let Some(config) = config else {
        progress.step(&format!(
            "kernel configuration not found (no IKCONFIG in {}, no .config next to it or its module tree): options not checked; pass --kernel-config FILE to check them",
            k.vmlinux.display()
        ));
        return Ok(());
    };
    let index = modules_dir
        .map(images::kernel::ModuleIndex::scan)
        .transpose()?;
    let mut missing: Vec<String> = Vec::new();
    for n in needs {
        if let Some(m) = unmet(n, &config, index.as_ref()) {
            if !missing.contains(&m) {
                missing.push(m);
            }
        }
    }
    if !missing.is_empty() {
        return Err(KernelError::Missing {
            kernel: format!("{} ({})", k.vmlinux.display(), k.release),
            what: what.to_owned(),
            source_file: config.source.clone(),
            missing,
        });
    }
    progress.step(&format!(
        "kernel configuration has the {} options {what} needs (from {})",
        needs.len(),
        config.source
    ));
    Ok(())
}

/// Checks the boot options themselves (the paths exist), before anything is provisioned.
pub fn validate_paths(cfg: &VmConfig) -> Result<(), String> {
    let exists = |flag: &str, p: &Option<PathBuf>| match p {
        Some(p) if !p.exists() => Err(format!("{flag} {}: no such file or directory", p.display())),
        _ => Ok(()),
    };
    exists("--kernel-image", &cfg.kernel_image)?;
    exists("--modules-dir", &cfg.modules_dir)?;
    exists("--kernel-config", &cfg.kernel_config)?;
    if cfg.modules_dir.is_some() && cfg.kernel_image.is_none() {
        return Err(
            "--modules-dir goes with --kernel-image (the Debian kernel brings its own)".into(),
        );
    }
    match cfg.overlay.iter().find(|d| !d.is_dir()) {
        Some(d) => Err(format!("--overlay {}: not a directory", d.display())),
        None => Ok(()),
    }
}

/// Longest path a Unix socket address holds (`sun_path`, less its terminating NUL).
const SUN_PATH_MAX: usize = 107;

/// The gdb stub's socket: `gdb.sock` in the run directory, or in the run's socket directory
/// when the run directory's path is too long for a socket address.
pub fn gdb_socket(run_dir: &Path, sock_dir: &Path) -> PathBuf {
    let p = run_dir.join("gdb.sock");
    if p.as_os_str().len() <= SUN_PATH_MAX {
        p
    } else {
        sock_dir.join("gdb.sock")
    }
}

/// The gdb command line that attaches to the stub at `socket` with `vmlinux`'s symbols.
pub fn gdb_command(vmlinux: &Path, socket: &Path) -> String {
    format!(
        "gdb {} -ex 'target remote {}'",
        vmlinux.display(),
        socket.display()
    )
}

/// QEMU arguments from the boot options: the gdb stub (and its command, printed and written
/// to `gdb.txt` in the run directory), then the user's own `--qemu-arg`s.
pub fn qemu_extra_args(
    cfg: &VmConfig,
    imgs: &Images,
    run: &vm::RunDir,
    sock_dir: &Path,
) -> Vec<String> {
    let mut a = Vec::new();
    if cfg.gdb {
        let sock = gdb_socket(&run.dir, sock_dir);
        a.push("-gdb".into());
        a.push(format!("unix:{},server=on,wait=off", sock.display()));
        let cmd = gdb_command(&imgs.kernel.vmlinux, &sock);
        // The one line a user asked for with --gdb: printed whatever the verbosity.
        eprintln!("gdb: {cmd}");
        let _ = std::fs::write(run.path("gdb.txt"), format!("{cmd}\n"));
    }
    a.extend(cfg.qemu_args.iter().cloned());
    a
}

/// Kernel command-line arguments from the boot options: `nokaslr` with the gdb stub (so the
/// symbols' addresses are the running kernel's), the console shell after a scenario.
pub fn kernel_cmdline_args(cfg: &VmConfig) -> String {
    let mut s = String::new();
    if cfg.gdb {
        s.push_str(" nokaslr");
    }
    if cfg.console {
        s.push_str(&format!(" {}=1", images::initramfs::CONSOLE_PARAM));
    }
    s
}

/// Ends a scenario's boot: with `--console`, the guest console is bridged to this terminal
/// first (the shell started at boot; `exit` powers the guest off, Ctrl-] leaves and the
/// harness shuts the guest down); then the usual shutdown.
pub fn finish_run(
    vm: vm::Vm,
    cfg: &VmConfig,
    timeout: Duration,
    progress: &mut dyn Progress,
) -> Result<vm::Teardown, vm::VmError> {
    if !cfg.console {
        return vm.shutdown(timeout);
    }
    let path = vm.socket_path("console.sock");
    let stream =
        std::os::unix::net::UnixStream::connect(&path).map_err(|source| vm::VmError::Io {
            what: "connecting to the guest console",
            path: path.clone(),
            source,
        })?;
    progress.step(
        "scenario done; guest console attached (press Enter for a prompt; exit powers off, Ctrl-] leaves)",
    );
    match console::attach(stream) {
        Ok(console::Ended::GuestExited) => vm.finish(timeout),
        Ok(console::Ended::Detached) | Err(_) => vm.shutdown(timeout),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> KernelConfig {
        KernelConfig::parse(text, "test")
    }

    #[test]
    fn an_option_that_is_unset_or_n_is_unmet_and_named() {
        let n = need("USERFAULTFD", None, "uffd");
        assert_eq!(unmet(&n, &config("CONFIG_USERFAULTFD=y\n"), None), None);
        let e = unmet(&n, &config("# CONFIG_USERFAULTFD is not set\n"), None).expect("unmet");
        assert!(e.contains("CONFIG_USERFAULTFD is not set (uffd)"), "{e}");
        assert!(unmet(&n, &config("CONFIG_USERFAULTFD=n\n"), None).is_some());
    }

    #[test]
    fn a_module_option_needs_its_module_in_the_tree() {
        let dir = std::env::temp_dir().join(format!("kloop-mods-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("kernel")).expect("mkdir");
        std::fs::write(dir.join("kernel/vfio-pci.ko"), b"").expect("write");
        std::fs::write(dir.join("modules.builtin"), "kernel/drivers/vfio/vfio.ko\n").expect("w");
        let idx = images::kernel::ModuleIndex::scan(&dir).expect("scan");
        let c = config("CONFIG_VFIO=m\nCONFIG_VFIO_PCI=m\nCONFIG_VFIO_IOMMU_TYPE1=m\n");
        for n in AGENT.iter().chain(AGENT_IOMMU).take(2) {
            assert_eq!(unmet(n, &c, Some(&idx)), None, "{n:?}");
        }
        let e = unmet(&AGENT_IOMMU[0], &c, Some(&idx)).expect("not in the tree");
        assert!(
            e.contains("vfio_iommu_type1.ko is not in the module tree"),
            "{e}"
        );
        let e = unmet(&AGENT[1], &c, None).expect("no tree");
        assert!(e.contains("CONFIG_VFIO_PCI=m but no module tree"), "{e}");
        // A bool option set to m cannot be: it is unmet.
        assert!(unmet(&BOOT[0], &config("CONFIG_BLK_DEV_INITRD=m\n"), Some(&idx)).is_some());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn scenarios_need_what_their_runs_use() {
        let cfg = VmConfig::default();
        let opts = |n: Vec<Need>| n.iter().map(|n| n.option).collect::<Vec<_>>();
        let inv = opts(scenario_needs(&cfg, "inventory", None));
        assert!(inv.contains(&"VFIO_PCI") && inv.contains(&"INTEL_IOMMU"));
        assert!(!inv.contains(&"USERFAULTFD"));
        let no_iommu = VmConfig {
            iommu: false,
            ..VmConfig::default()
        };
        let b = opts(bringup_needs(&no_iommu));
        assert!(!b.contains(&"INTEL_IOMMU") && !b.contains(&"VFIO") && b.contains(&"ACPI_HMAT"));
        let damon = ScenarioFile::parse(
            "d.toml",
            "[migrate]\nsource = \"damon\"\nduration_ms = 1000\n",
        )
        .expect("scenario");
        let m = opts(scenario_needs(&cfg, "d.toml", Some(&damon)));
        for o in [
            "USERFAULTFD",
            "HAVE_ARCH_USERFAULTFD_WP",
            "MIGRATION",
            "DAMON_SYSFS",
        ] {
            assert!(m.contains(&o), "{o}: {m:?}");
        }
        assert!(opts(scenario_needs(&cfg, "compare-kernel", None)).contains(&"NUMA_BALANCING"));
        let kernel = ScenarioFile::parse("k.toml", "[migrate]\nsource = \"kernel\"\n").expect("k");
        assert!(opts(scenario_needs(&cfg, "k.toml", Some(&kernel))).contains(&"NUMA_BALANCING"));
    }

    #[test]
    fn the_missing_options_error_names_each_option_and_the_scenario() {
        let e = KernelError::Missing {
            kernel: "/k/vmlinux (6.99)".into(),
            what: "scenario migrate".into(),
            source_file: "/k/.config".into(),
            missing: vec!["CONFIG_USERFAULTFD is not set (uffd)".into()],
        }
        .to_string();
        assert!(e.contains("cannot run scenario migrate"), "{e}");
        assert!(e.contains("  - CONFIG_USERFAULTFD is not set"), "{e}");
        assert!(e.contains("/k/.config"), "{e}");
    }

    #[test]
    fn the_gdb_socket_stays_within_a_socket_address() {
        let short = gdb_socket(Path::new("/tmp/run"), Path::new("/tmp/s"));
        assert_eq!(short, Path::new("/tmp/run/gdb.sock"));
        let long = "/x".repeat(60);
        assert_eq!(
            gdb_socket(Path::new(&long), Path::new("/tmp/s")),
            Path::new("/tmp/s/gdb.sock")
        );
        assert_eq!(
            gdb_command(Path::new("/k/vmlinux"), &short),
            "gdb /k/vmlinux -ex 'target remote /tmp/run/gdb.sock'"
        );
    }

    #[test]
    fn boot_args_extend_the_configuration() {
        let mut cfg = VmConfig::default();
        BootArgs {
            kernel_image: Some("/k/bzImage".into()),
            modules_dir: Some("/k/mods".into()),
            packages: vec!["numactl".into()],
            qemu_args: vec!["-d".into(), "int".into()],
            gdb: true,
            ..BootArgs::default()
        }
        .apply(&mut cfg);
        assert_eq!(cfg.kernel_image.as_deref(), Some(Path::new("/k/bzImage")));
        assert_eq!(cfg.packages, ["numactl"]);
        assert_eq!(cfg.qemu_args, ["-d", "int"]);
        assert!(kernel_cmdline_args(&cfg).contains("nokaslr"));
        let i = images_config(&cfg, false);
        assert_eq!(i.guest_files.packages, ["numactl"]);
        assert_eq!(i.modules_dir.as_deref(), Some(Path::new("/k/mods")));
    }
}
