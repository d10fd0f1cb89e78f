//! `harness`: the test bed's command line.

use clap::{Args, Parser, Subcommand};
use harness::config::{Accel, VmConfig};
use harness::{Progress, Reporter, ToolPaths};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

/// Exit codes: what a CI system needs to tell a failed test from a broken test bed.
const EXIT_PASS: u8 = 0;
const EXIT_TEST_FAILED: u8 = 1;
const EXIT_USAGE: u8 = 2;
const EXIT_INFRA: u8 = 3;
const EXIT_INTERRUPTED: u8 = 130;

#[derive(Debug, Parser)]
#[command(
    name = "harness",
    version,
    about = "Tiered-memory test bed: a QEMU guest with an emulated SDXi DMA engine and a CXL Hotness Monitoring Unit",
    long_about = "Tiered-memory test bed without CXL hardware.\n\n\
        Boots a Debian guest under QEMU (TCG unless KVM is proven to work) with two NUMA nodes -- \
        node 0 with the CPUs and DRAM, node 1 memory-only in a lower memory tier (the \"CXL\" tier) -- \
        a virtual IOMMU, and two vfio-user devices served by this project: an SNIA SDXi DMA engine \
        (sdxi-server) and a CXL memory device with a Hotness Monitoring Unit (cxl-hmu-server). \
        A guest agent drives them from userspace and reports to the harness over a serial port.\n\n\
        Everything needed (QEMU >= 10.1 with vfio-user-pci, a Debian kernel, busybox) is provisioned \
        on first use into a cache directory, without touching the host's packages.",
    after_help = "Exit codes: 0 passed, 1 a check failed, 2 bad usage, 3 the test bed itself failed \
        (provisioning, boot, timeouts; logs are printed), 130 interrupted.\n\
        Configuration: flags override an optional TOML file (--config) whose [vm] table takes the \
        same names with underscores, e.g. node1_mib = 2048."
)]
struct Cli {
    /// TOML configuration file ([vm] table: node0_mib, node1_mib, cpus, accel, kernel_package, ...).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Cache for QEMU, kernels, initramfs images and run results [default: $TIERBED_CACHE or ~/.cache/tierbed].
    #[arg(long, global = true, value_name = "DIR")]
    cache_dir: Option<PathBuf>,
    /// Show tool output (apt, cargo) and debug logs.
    #[arg(short, long, global = true)]
    verbose: bool,
    /// Print only the result (no progress lines).
    #[arg(short, long, global = true)]
    quiet: bool,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Provision images only: QEMU with vfio-user-pci, the guest kernel, busybox, the guest
    /// agent and the initramfs. Idempotent; a second run reuses the cache offline.
    Provision {
        #[command(flatten)]
        vm: VmArgs,
        /// Re-resolve package versions even when cached.
        #[arg(long)]
        refresh: bool,
    },
    /// Boot the test bed and run one scenario; writes result.json and logs to a run directory.
    Run {
        /// Scenarios to run, one after another: built-in names (see `harness scenarios`),
        /// scenario files (`*.toml` with a `[migrate]` or `[bench]` table, or `[[runs]]`; see
        /// harness/scenarios/ for annotated examples) or directories of scenario files.
        #[arg(default_value = harness::scenario::DEFAULT)]
        scenarios: Vec<String>,
        /// Scenarios run at once [default: one per two cores, so 1 on a 2-core machine]; each
        /// VM is independent (own sockets, guest-RAM files, run directory).
        #[arg(long, short = 'j', value_name = "N")]
        jobs: Option<usize>,
        /// Run only shard K of N of the (sorted) scenarios, for a CI system's job matrix.
        #[arg(long, value_name = "K/N")]
        shard: Option<harness::matrix::Shard>,
        /// Also write the outcomes as JUnit XML to this file.
        #[arg(long, value_name = "FILE")]
        junit: Option<PathBuf>,
        /// Time limit per scenario, in seconds (provisioning included).
        #[arg(long, value_name = "S")]
        scenario_timeout: Option<u64>,
        #[command(flatten)]
        vm: VmArgs,
        /// Directory for run directories [default: <cache>/runs].
        #[arg(long, value_name = "DIR")]
        results: Option<PathBuf>,
        /// Print the result JSON on stdout instead of the summary.
        #[arg(long)]
        json: bool,
    },
    /// The main job: provision if needed, boot, run the default scenario, print a summary.
    Demo {
        #[command(flatten)]
        vm: VmArgs,
    },
    /// Driver bring-up: boot with both devices attached and unclaimed, load your kernel
    /// modules in order, run your script in the guest, and get its output and exit code back
    /// (the command exits with it).
    Bringup {
        #[command(flatten)]
        vm: VmArgs,
        /// A kernel module to load (.ko, .ko.xz, .ko.zst), optionally `PATH:param=value ...`;
        /// repeatable, loaded in the order given.
        #[arg(long = "module", value_name = "PATH[:PARAMS]")]
        modules: Vec<String>,
        /// Build this out-of-tree module tree (a Kbuild directory) for the guest kernel with its
        /// Debian headers and gcc-14 in a private root, then load its modules, dependencies
        /// first (before the --module ones); repeatable. The whole tree is copied with its
        /// subdirectories (build outputs left out) and built at its top, so its Kbuild picks
        /// the subdirectories (e.g. a tree mirroring drivers/dma with `obj-m += sdxi/` at the
        /// top, whose sources include `../dmaengine.h`).
        #[arg(long = "build-module", value_name = "DIR")]
        build_modules: Vec<PathBuf>,
        /// Boot your own kernel (an uncompressed vmlinux with PVH, or a bzImage) instead of the
        /// provisioned Debian one.
        #[arg(long = "kernel-image", value_name = "PATH")]
        kernel_image: Option<PathBuf>,
        /// Module tree of that kernel (…/lib/modules/RELEASE): the test bed loads vfio and uio
        /// from it.
        #[arg(long, value_name = "DIR", requires = "kernel_image")]
        modules_dir: Option<PathBuf>,
        /// A shell script to run in the guest (busybox sh) after the modules are loaded.
        #[arg(long, value_name = "SCRIPT", conflicts_with = "console")]
        run: Option<PathBuf>,
        /// An interactive shell on the guest console instead of a script (standard input and
        /// output; Ctrl-C goes to the guest, Ctrl-] leaves, `exit` powers the guest off).
        #[arg(long)]
        console: bool,
        /// Put the virtual IOMMU in front of the devices (driver DMA addresses are IOVAs) or not
        /// (guest-physical).
        #[arg(long, value_enum, default_value = "on")]
        iommu: OnOff,
        /// Turn the CHMU's access feed on: the chmu-tap TCG plugin sends the guest's accesses to
        /// node 1 to the CHMU (one in --chmu-sample, seeded by --seed), so your own driver and
        /// workload see a working hotlist.
        #[arg(long)]
        chmu_feed: bool,
        /// Directory for the run directory [default: <cache>/runs].
        #[arg(long, value_name = "DIR")]
        results: Option<PathBuf>,
    },
    /// List the built-in scenarios.
    Scenarios,
    /// Ask a running test bed's device servers for their state or counters (function state,
    /// registers by name, fault plan; CHMU instance configuration and hotlist fill).
    Inspect {
        /// Control-socket directory of the test bed (default: the only one running).
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
        /// Which device.
        #[arg(long, value_enum, default_value = "sdxi")]
        device: InspectDevice,
        /// What to ask: state or counters.
        #[arg(long, default_value = "state")]
        what: String,
    },
    /// Measure the chmu-tap TCG plugin's overhead: the same boot with the tap off and on,
    /// alternating, in one run, and after each boot a memory-bound loop on node 1 timed by
    /// the guest.
    BenchTap {
        #[command(flatten)]
        vm: VmArgs,
        /// Boots per variant.
        #[arg(long, default_value_t = 3)]
        reps: usize,
        /// Sample one in this many guest memory accesses.
        #[arg(long, default_value_t = 8)]
        sample: u64,
    },
    /// Report whether KVM can run guests here (the probe `--accel auto` uses).
    ProbeKvm,
    /// Remove what runs killed before their cleanup (SIGKILL, a CI timeout) left behind: this
    /// user's socket and guest-RAM directories whose harness is dead, and processes still
    /// using them. Live runs are not touched; every run also does this first.
    Clean,
    /// Install the harness and its helpers (device servers, static guest agent, chmu-tap
    /// plugin) into a prefix, from a source checkout: PREFIX/bin and PREFIX/lib/tierbed.
    /// The installed harness runs without the sources or cargo.
    Install {
        /// Install prefix (e.g. ~/.local or /usr/local).
        #[arg(long, value_name = "DIR")]
        prefix: PathBuf,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum OnOff {
    On,
    Off,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum InspectDevice {
    Sdxi,
    CxlHmu,
}

#[derive(Debug, Args, Default)]
struct VmArgs {
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
}

impl VmArgs {
    fn apply(&self, cfg: &mut VmConfig) {
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
    }

    fn tools(&self) -> ToolPaths {
        ToolPaths {
            sdxi_server: self.sdxi_server.clone(),
            hmu_server: self.hmu_server.clone(),
            agent: self.agent.clone(),
            plugin: self.plugin.clone(),
        }
    }
}

/// Several scenarios (or JUnit output, or a time limit): run them all, summarise, exit with
/// the worst outcome.
#[allow(clippy::too_many_arguments)]
fn run_matrix(
    cfg: &VmConfig,
    vm: &VmArgs,
    scenarios: &[String],
    jobs: usize,
    results: Option<&std::path::Path>,
    junit: Option<&std::path::Path>,
    timeout: Option<u64>,
    json: bool,
    interrupted: Arc<AtomicBool>,
    rep: &mut Reporter,
) -> ExitCode {
    if let Some(bad) = scenarios
        .iter()
        .find(|s| !harness::scenario::BUILTIN.iter().any(|(n, _)| n == *s) && !s.ends_with(".toml"))
    {
        eprintln!(
            "error: unknown scenario {bad:?} (see `harness scenarios`; a scenario file must end in .toml)"
        );
        return ExitCode::from(EXIT_USAGE);
    }
    for s in scenarios.iter().filter(|s| s.ends_with(".toml")) {
        if let Err(e) = harness::migration::resolve(s) {
            print_chain(&e);
            return ExitCode::from(EXIT_USAGE);
        }
    }
    let limit = timeout.map(std::time::Duration::from_secs);
    let outcomes = harness::run_matrix(
        cfg,
        &vm.tools(),
        scenarios,
        results,
        limit,
        jobs.max(1),
        Arc::clone(&interrupted),
        rep,
    );
    for o in &outcomes {
        match o {
            harness::report::Outcome::Ran(r) if json => {
                println!("{}", serde_json::to_string_pretty(&**r).unwrap_or_default())
            }
            harness::report::Outcome::Ran(r) => print!("{}", r.summary()),
            harness::report::Outcome::Error {
                scenario, message, ..
            } => println!("scenario {scenario}: ERROR: {message}"),
        }
    }
    if let Some(p) = junit {
        if let Err(e) = std::fs::write(p, harness::report::junit_xml(&outcomes)) {
            eprintln!("error: writing JUnit XML to {}: {e}", p.display());
            return ExitCode::from(EXIT_INFRA);
        }
    }
    let passed = outcomes.iter().filter(|o| o.passed()).count();
    let errors = outcomes
        .iter()
        .filter(|o| matches!(o, harness::report::Outcome::Error { .. }))
        .count();
    println!(
        "{passed} passed, {} failed",
        outcomes.len() - passed - errors
    );
    if errors > 0 {
        println!("{errors} scenarios could not run (test bed errors)");
    }
    if interrupted.load(std::sync::atomic::Ordering::Relaxed) {
        ExitCode::from(EXIT_INTERRUPTED)
    } else if errors > 0 {
        ExitCode::from(EXIT_INFRA)
    } else if passed < outcomes.len() {
        ExitCode::from(EXIT_TEST_FAILED)
    } else {
        ExitCode::from(EXIT_PASS)
    }
}

fn print_chain(e: &dyn std::error::Error) {
    eprintln!("error: {e}");
    let mut cur = e.source();
    while let Some(s) = cur {
        eprintln!("  caused by: {s}");
        cur = s.source();
    }
}

fn main() -> ExitCode {
    // Everything the harness and its children create (run directories, logs, results, the
    // cache) is its owner's only.
    // SAFETY: umask(2) cannot fail; set before any thread starts.
    unsafe { libc::umask(0o077) };
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(if cli.verbose {
            "debug"
        } else {
            "warn"
        }))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let interrupted = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        if let Err(e) = signal_hook::flag::register(sig, Arc::clone(&interrupted)) {
            eprintln!("error: installing the signal handler: {e}");
            return ExitCode::from(EXIT_INFRA);
        }
    }
    let mut cfg = match VmConfig::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            print_chain(&e);
            return ExitCode::from(EXIT_USAGE);
        }
    };
    if let Some(d) = &cli.cache_dir {
        cfg.cache_dir = d.clone();
    }
    let mut rep = Reporter::new(cli.verbose, cli.quiet);
    let (vm_args, scenario, results, json) = match &cli.command {
        Cmd::Scenarios => {
            for (n, d) in harness::scenario::BUILTIN {
                println!("{n:<14} {d}");
            }
            println!(
                "\nA scenario can also be a file: harness run path/to/scenario.toml (see harness/scenarios/)."
            );
            return ExitCode::SUCCESS;
        }
        Cmd::Bringup {
            vm,
            modules,
            build_modules,
            kernel_image,
            modules_dir,
            run,
            console,
            iommu,
            chmu_feed,
            results,
        } => {
            vm.apply(&mut cfg);
            cfg.iommu = *iommu == OnOff::On;
            cfg.chmu_feed |= *chmu_feed;
            let spec = harness::BringupSpec {
                build: build_modules.clone(),
                kernel: kernel_image.clone(),
                modules_dir: modules_dir.clone(),
                modules: modules
                    .iter()
                    .map(|m| match m.split_once(':') {
                        Some((p, params)) => (PathBuf::from(p), params.replace(',', " ")),
                        None => (PathBuf::from(m), String::new()),
                    })
                    .collect(),
                script: run.clone(),
                console: *console,
            };
            return match harness::bringup(
                &cfg,
                &vm.tools(),
                &spec,
                results.as_deref(),
                interrupted,
                &mut rep,
            ) {
                Ok(r) => {
                    for m in &r.modules {
                        eprintln!("module {m}");
                    }
                    print!("{}", r.output);
                    if *console {
                        eprintln!(
                            "console session ended; run directory {} (console.log)",
                            r.run_dir.display()
                        );
                    } else {
                        eprintln!(
                            "script exit code {:?}; run directory {}",
                            r.exit_code,
                            r.run_dir.display()
                        );
                    }
                    ExitCode::from(u8::try_from(r.status()).unwrap_or(1))
                }
                Err(e) => {
                    print_chain(&e);
                    if let harness::RunError::Vm(_, dir) = &e {
                        eprint!("{}", harness::vm::RunDir { dir: dir.clone() }.log_tails(25));
                    }
                    ExitCode::from(if e.is_usage() { EXIT_USAGE } else { EXIT_INFRA })
                }
            };
        }
        Cmd::Inspect { dir, device, what } => {
            let dirs = harness::vm::running_control_dirs();
            let dir = match (dir, dirs.as_slice()) {
                (Some(d), _) => d.clone(),
                (None, [one]) => one.clone(),
                (None, []) => {
                    eprintln!(
                        "error: no running test bed of yours found (control sockets in {}/{}.*)",
                        std::env::temp_dir().display(),
                        harness::private_dir::SOCKETS
                    );
                    return ExitCode::from(EXIT_INFRA);
                }
                (None, many) => {
                    eprintln!("error: several test beds are running; pick one with --dir:");
                    for d in many {
                        eprintln!("  {}", d.display());
                    }
                    return ExitCode::from(EXIT_USAGE);
                }
            };
            let sock = dir.join(match device {
                InspectDevice::Sdxi => "sdxi.ctl",
                InspectDevice::CxlHmu => "cxl-hmu.ctl",
            });
            let req = serde_json::json!({ "cmd": what });
            return match harness::vm::control_request(
                &sock,
                &req,
                std::time::Duration::from_secs(5),
            ) {
                Ok(v) => {
                    println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
                    if v.get("error").is_some() {
                        ExitCode::from(EXIT_USAGE)
                    } else {
                        ExitCode::SUCCESS
                    }
                }
                Err(e) => {
                    eprintln!("error: {}: {e}", sock.display());
                    ExitCode::from(EXIT_INFRA)
                }
            };
        }
        Cmd::Clean => {
            let r = harness::reclaim_leftovers(&mut rep);
            println!(
                "removed {} directories of killed runs; {} live runs left alone",
                r.removed.len(),
                r.live.len()
            );
            return ExitCode::from(if r.failed.is_empty() {
                EXIT_PASS
            } else {
                EXIT_INFRA
            });
        }
        Cmd::Install { prefix } => {
            // Installed programs are for every user of the machine.
            // SAFETY: umask(2) cannot fail.
            unsafe { libc::umask(0o022) };
            return match harness::tools::install(prefix, None, &mut rep) {
                Ok(files) => {
                    for f in &files {
                        println!("{}", f.display());
                    }
                    println!(
                        "run {}/bin/harness (add {0}/bin to PATH); it needs no source tree or cargo",
                        prefix.display()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    print_chain(&e);
                    ExitCode::from(match e {
                        harness::tools::ToolsError::NotACheckout => EXIT_USAGE,
                        _ => EXIT_INFRA,
                    })
                }
            };
        }
        Cmd::ProbeKvm => {
            return match harness::kvm::probe(std::time::Duration::from_secs(3)) {
                Ok(()) => {
                    println!("KVM runs guests here: --accel auto will use it");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    println!("KVM cannot run guests here ({e}): --accel auto will use TCG");
                    ExitCode::from(EXIT_TEST_FAILED)
                }
            };
        }
        Cmd::Provision { vm, refresh } => {
            vm.apply(&mut cfg);
            return match harness::provision(&cfg, &vm.tools(), *refresh, &mut rep) {
                Ok((tools, imgs)) => {
                    rep.step("provisioned");
                    println!(
                        "QEMU       {} ({})",
                        imgs.qemu.version,
                        imgs.qemu.program.display()
                    );
                    println!(
                        "kernel     {} ({} {})",
                        imgs.kernel.release, cfg.kernel_package, imgs.kernel.version
                    );
                    println!("vmlinux    {}", imgs.kernel.vmlinux.display());
                    println!(
                        "initramfs  {} (busybox {}, modules {})",
                        imgs.initramfs.display(),
                        imgs.busybox_version,
                        imgs.modules.join(" ")
                    );
                    println!("agent      {}", tools.agent.display());
                    println!(
                        "servers    {} {}",
                        tools.sdxi_server.display(),
                        tools.hmu_server.display()
                    );
                    println!(
                        "took {:.1}s, downloaded {:.1} MB",
                        imgs.seconds,
                        imgs.download_bytes as f64 / 1e6
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    print_chain(&e);
                    ExitCode::from(if e.is_usage() { EXIT_USAGE } else { EXIT_INFRA })
                }
            };
        }
        Cmd::BenchTap { vm, reps, sample } => {
            vm.apply(&mut cfg);
            cfg.chmu_sample = *sample;
            return match harness::bench_tap(&cfg, &vm.tools(), *reps, interrupted, &mut rep) {
                Ok(b) => {
                    println!(
                        "chmu-tap overhead (sample 1/{}): boot to agent, medians of {} boots each",
                        b.sample,
                        b.boot_off_s.len()
                    );
                    println!("  tap off {:.2} s {:?}", b.median_off_s, b.boot_off_s);
                    println!("  tap on  {:.2} s {:?}", b.median_on_s, b.boot_on_s);
                    println!(
                        "  ratio {:.2} (target <= 2), feed {:.0} records/s",
                        b.ratio, b.records_per_s
                    );
                    println!(
                        "memory-bound loop on node 1 ({} loads by one instruction), guest-timed, medians:",
                        b.loop_loads
                    );
                    println!("  tap off {:.3} s {:?}", b.loop_median_off_s, b.loop_off_s);
                    println!("  tap on  {:.3} s {:?}", b.loop_median_on_s, b.loop_on_s);
                    println!("  ratio {:.2}", b.loop_ratio);
                    println!("  {}", b.plugin_line);
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    print_chain(&e);
                    ExitCode::from(EXIT_INFRA)
                }
            };
        }
        Cmd::Run {
            scenarios,
            jobs,
            shard,
            junit,
            scenario_timeout,
            vm,
            results,
            json,
        } => {
            let scenarios = match harness::matrix::expand_dirs(scenarios) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(EXIT_USAGE);
                }
            };
            let selected = harness::matrix::select(&scenarios, *shard);
            if selected.len() != 1 || junit.is_some() || scenario_timeout.is_some() {
                vm.apply(&mut cfg);
                return run_matrix(
                    &cfg,
                    vm,
                    &selected,
                    jobs.unwrap_or_else(harness::default_jobs),
                    results.as_deref(),
                    junit.as_deref(),
                    *scenario_timeout,
                    *json,
                    interrupted,
                    &mut rep,
                );
            }
            (vm, selected[0].clone(), results.clone(), *json)
        }
        Cmd::Demo { vm } => (vm, harness::scenario::DEFAULT.to_owned(), None, false),
    };
    vm_args.apply(&mut cfg);
    match harness::execute(
        &cfg,
        &vm_args.tools(),
        &scenario,
        results.as_deref(),
        interrupted,
        &mut rep,
    ) {
        Ok(r) => {
            if json {
                println!("{}", serde_json::to_string_pretty(&r).unwrap_or_default());
            } else {
                print!("{}", r.summary());
            }
            ExitCode::from(if r.passed {
                EXIT_PASS
            } else {
                EXIT_TEST_FAILED
            })
        }
        Err(e) => {
            print_chain(&e);
            if let harness::RunError::Vm(_, dir) = &e {
                eprint!("{}", harness::vm::RunDir { dir: dir.clone() }.log_tails(25));
            }
            ExitCode::from(if e.interrupted() {
                EXIT_INTERRUPTED
            } else if e.is_usage() {
                EXIT_USAGE
            } else {
                EXIT_INFRA
            })
        }
    }
}

#[cfg(test)]
mod tests {
    /// clap's own consistency checks (duplicate names, conflicts) that release builds skip.
    #[test]
    fn command_line_definition_is_consistent() {
        <super::Cli as clap::CommandFactory>::command().debug_assert();
    }
}
