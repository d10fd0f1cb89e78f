//! `harness`: the test bed's command line. Each subcommand is a clap struct with its own
//! `run`; they call the library ([`harness::execute`], [`harness::bringup`], ...) and turn
//! its result into output and an exit code. Flags shared by every command that boots the
//! test bed are [`VmArgs`].

use clap::{Args, Parser, Subcommand};
use harness::config::{Accel, VmConfig};
use harness::report::Outcome;
use harness::{Progress, Reporter, ToolPaths};
use std::path::{Path, PathBuf};
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
    Provision(ProvisionCmd),
    /// Boot the test bed and run one scenario; writes result.json and logs to a run directory.
    Run(RunCmd),
    /// The main job: provision if needed, boot, run the default scenario, print a summary.
    Demo(DemoCmd),
    /// Driver bring-up: boot with both devices attached and unclaimed, load your kernel
    /// modules in order, run your script in the guest, and get its output and exit code back
    /// (the command exits with it).
    Bringup(BringupCmd),
    /// List the built-in scenarios.
    Scenarios,
    /// Ask a running test bed's device servers for their state or counters (function state,
    /// registers by name, fault plan; CHMU instance configuration and hotlist fill).
    Inspect(InspectCmd),
    /// Measure the chmu-tap TCG plugin's overhead: the same boot with the tap off and on,
    /// alternating, in one run, and after each boot a memory-bound loop on node 1 timed by
    /// the guest.
    BenchTap(BenchTapCmd),
    /// Report whether KVM can run guests here (the probe `--accel auto` uses).
    ProbeKvm,
    /// Remove what runs killed before their cleanup (SIGKILL, a CI timeout) left behind: this
    /// user's socket and guest-RAM directories whose harness is dead, and processes still
    /// using them. Live runs are not touched; every run also does this first.
    Clean,
    /// Install the harness and its helpers (device servers, static guest agent, chmu-tap
    /// plugin) into a prefix, from a source checkout: PREFIX/bin and PREFIX/lib/tierbed.
    /// The installed harness runs without the sources or cargo.
    Install(InstallCmd),
}

/// What every command gets: the configuration (file, then `--cache-dir`), the progress
/// reporter and the flag Ctrl-C (SIGINT, SIGTERM) sets.
struct Ctx {
    cfg: VmConfig,
    rep: Reporter,
    interrupted: Arc<AtomicBool>,
}

#[derive(Debug, Args)]
struct ProvisionCmd {
    #[command(flatten)]
    vm: VmArgs,
    /// Re-resolve package versions even when cached.
    #[arg(long)]
    refresh: bool,
}

#[derive(Debug, Args)]
struct RunCmd {
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
    #[command(flatten)]
    driver: harness::dmatest::DriverArgs,
    /// Directory for run directories [default: <cache>/runs].
    #[arg(long, value_name = "DIR")]
    results: Option<PathBuf>,
    /// Print the result JSON on stdout instead of the summary.
    #[arg(long)]
    json: bool,
    /// After the scenario, an interactive shell on the guest console before it shuts down
    /// (Ctrl-] leaves and shuts the guest down, `exit` powers it off); one scenario only.
    #[arg(long)]
    console: bool,
}

#[derive(Debug, Args)]
struct DemoCmd {
    #[command(flatten)]
    vm: VmArgs,
}

#[derive(Debug, Args)]
struct BringupCmd {
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
}

#[derive(Debug, Args)]
struct InspectCmd {
    /// Control-socket directory of the test bed (default: the only one running).
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Which device.
    #[arg(long, value_enum, default_value = "sdxi")]
    device: InspectDevice,
    /// What to ask: state or counters.
    #[arg(long, default_value = "state")]
    what: String,
}

#[derive(Debug, Args)]
struct BenchTapCmd {
    #[command(flatten)]
    vm: VmArgs,
    /// Boots per variant.
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Sample one in this many guest memory accesses.
    #[arg(long, default_value_t = 8)]
    sample: u64,
}

#[derive(Debug, Args)]
struct InstallCmd {
    /// Install prefix (e.g. ~/.local or /usr/local).
    #[arg(long, value_name = "DIR")]
    prefix: PathBuf,
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
    /// The kernel under test, files in the guest, QEMU arguments, gdb.
    #[command(flatten)]
    boot: harness::kernel_loop::BootArgs,
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
        self.boot.apply(cfg);
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

/// Prints a run's error with its causes and, when the VM had started, the tails of its logs;
/// the exit code says whether it was an interruption, bad usage or a broken test bed.
fn run_error_exit(e: &harness::RunError) -> ExitCode {
    print_chain(e);
    if let harness::RunError::Vm(_, dir) = e {
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

/// Runs one scenario and prints its summary (or its JSON).
fn run_single(
    mut ctx: Ctx,
    scenario: &str,
    tools: &ToolPaths,
    results: Option<&Path>,
    json: bool,
) -> ExitCode {
    match harness::execute(
        &ctx.cfg,
        tools,
        scenario,
        results,
        ctx.interrupted,
        &mut ctx.rep,
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
        Err(e) => run_error_exit(&e),
    }
}

impl RunCmd {
    fn run(&self, mut ctx: Ctx) -> ExitCode {
        let scenarios = match harness::matrix::expand_dirs(&self.scenarios) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(EXIT_USAGE);
            }
        };
        let selected = harness::matrix::select(&scenarios, self.shard);
        self.vm.apply(&mut ctx.cfg);
        self.driver.apply(&mut ctx.cfg);
        if let Err(e) = harness::dmatest::check_driver_use(&selected, &ctx.cfg) {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
        if self.console
            && (selected.len() != 1 || self.junit.is_some() || self.scenario_timeout.is_some())
        {
            eprintln!("error: --console goes with one scenario (no --junit, --scenario-timeout)");
            return ExitCode::from(EXIT_USAGE);
        }
        ctx.cfg.console = self.console;
        if selected.len() != 1 || self.junit.is_some() || self.scenario_timeout.is_some() {
            return self.run_matrix(ctx, &selected);
        }
        run_single(
            ctx,
            &selected[0],
            &self.vm.tools(),
            self.results.as_deref(),
            self.json,
        )
    }

    /// Several scenarios (or JUnit output, or a time limit): run them all, summarise, exit
    /// with the worst outcome.
    fn run_matrix(&self, mut ctx: Ctx, scenarios: &[String]) -> ExitCode {
        if let Some(bad) = scenarios
            .iter()
            .find(|s| harness::scenario::builtin(s).is_none() && !s.ends_with(".toml"))
        {
            eprintln!(
                "error: unknown scenario {bad:?} (see `harness scenarios`; a scenario file must end in .toml)"
            );
            return ExitCode::from(EXIT_USAGE);
        }
        for s in scenarios.iter().filter(|s| s.ends_with(".toml")) {
            if let Err(e) = harness::scenario::Scenario::resolve(s) {
                print_chain(&e);
                return ExitCode::from(EXIT_USAGE);
            }
        }
        let limit = self.scenario_timeout.map(std::time::Duration::from_secs);
        let outcomes = harness::run_matrix(
            &ctx.cfg,
            &self.vm.tools(),
            scenarios,
            self.results.as_deref(),
            limit,
            self.jobs.unwrap_or_else(harness::default_jobs).max(1),
            Arc::clone(&ctx.interrupted),
            &mut ctx.rep,
        );
        for o in &outcomes {
            match o {
                Outcome::Ran(r) if self.json => {
                    println!("{}", serde_json::to_string_pretty(&**r).unwrap_or_default())
                }
                Outcome::Ran(r) => print!("{}", r.summary()),
                Outcome::Error {
                    scenario, message, ..
                } => println!("scenario {scenario}: ERROR: {message}"),
            }
        }
        if let Some(p) = &self.junit {
            if let Err(e) = std::fs::write(p, harness::report::junit_xml(&outcomes)) {
                eprintln!("error: writing JUnit XML to {}: {e}", p.display());
                return ExitCode::from(EXIT_INFRA);
            }
        }
        let passed = outcomes.iter().filter(|o| o.passed()).count();
        let errors = outcomes
            .iter()
            .filter(|o| matches!(o, Outcome::Error { .. }))
            .count();
        println!(
            "{passed} passed, {} failed",
            outcomes.len() - passed - errors
        );
        if errors > 0 {
            println!("{errors} scenarios could not run (test bed errors)");
        }
        if ctx.interrupted.load(std::sync::atomic::Ordering::Relaxed) {
            ExitCode::from(EXIT_INTERRUPTED)
        } else if errors > 0 {
            ExitCode::from(EXIT_INFRA)
        } else if passed < outcomes.len() {
            ExitCode::from(EXIT_TEST_FAILED)
        } else {
            ExitCode::from(EXIT_PASS)
        }
    }
}

impl DemoCmd {
    fn run(&self, mut ctx: Ctx) -> ExitCode {
        self.vm.apply(&mut ctx.cfg);
        run_single(
            ctx,
            harness::scenario::DEFAULT,
            &self.vm.tools(),
            None,
            false,
        )
    }
}

impl BringupCmd {
    fn spec(&self) -> harness::BringupSpec {
        harness::BringupSpec {
            build: self.build_modules.clone(),
            modules: self
                .modules
                .iter()
                .map(|m| harness::dmatest::module_arg(m))
                .collect(),
            script: self.run.clone(),
            console: self.console,
        }
    }

    fn run(&self, mut ctx: Ctx) -> ExitCode {
        self.vm.apply(&mut ctx.cfg);
        ctx.cfg.iommu = self.iommu == OnOff::On;
        ctx.cfg.chmu_feed |= self.chmu_feed;
        let r = match harness::bringup(
            &ctx.cfg,
            &self.vm.tools(),
            &self.spec(),
            self.results.as_deref(),
            ctx.interrupted,
            &mut ctx.rep,
        ) {
            Ok(r) => r,
            Err(e) => return run_error_exit(&e),
        };
        for m in &r.modules {
            eprintln!("module {m}");
        }
        print!("{}", r.output);
        if self.console {
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
}

fn list_scenarios() -> ExitCode {
    for b in harness::scenario::BUILTIN {
        println!("{:<14} {}", b.name, b.about);
    }
    println!(
        "\nA scenario can also be a file: harness run path/to/scenario.toml (see harness/scenarios/)."
    );
    ExitCode::SUCCESS
}

impl InspectCmd {
    /// The control-socket directory: `--dir`, else the only running test bed's.
    fn dir(&self) -> Result<PathBuf, ExitCode> {
        if let Some(d) = &self.dir {
            return Ok(d.clone());
        }
        match harness::vm::running_control_dirs().as_slice() {
            [one] => Ok(one.clone()),
            [] => {
                eprintln!(
                    "error: no running test bed of yours found (control sockets in {}/{}.*)",
                    std::env::temp_dir().display(),
                    harness::private_dir::SOCKETS
                );
                Err(ExitCode::from(EXIT_INFRA))
            }
            many => {
                eprintln!("error: several test beds are running; pick one with --dir:");
                for d in many {
                    eprintln!("  {}", d.display());
                }
                Err(ExitCode::from(EXIT_USAGE))
            }
        }
    }

    fn run(&self) -> ExitCode {
        let dir = match self.dir() {
            Ok(d) => d,
            Err(code) => return code,
        };
        let sock = dir.join(match self.device {
            InspectDevice::Sdxi => "sdxi.ctl",
            InspectDevice::CxlHmu => "cxl-hmu.ctl",
        });
        let req = serde_json::json!({ "cmd": self.what });
        match harness::vm::control_request(&sock, &req, std::time::Duration::from_secs(5)) {
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
        }
    }
}

fn clean(mut ctx: Ctx) -> ExitCode {
    let r = harness::reclaim_leftovers(&mut ctx.rep);
    println!(
        "removed {} directories of killed runs; {} live runs left alone",
        r.removed.len(),
        r.live.len()
    );
    ExitCode::from(if r.failed.is_empty() {
        EXIT_PASS
    } else {
        EXIT_INFRA
    })
}

impl InstallCmd {
    fn run(&self, mut ctx: Ctx) -> ExitCode {
        // Installed programs are for every user of the machine.
        // SAFETY: umask(2) cannot fail.
        unsafe { libc::umask(0o022) };
        match harness::tools::install(&self.prefix, None, &mut ctx.rep) {
            Ok(files) => {
                for f in &files {
                    println!("{}", f.display());
                }
                println!(
                    "run {}/bin/harness (add {0}/bin to PATH); it needs no source tree or cargo",
                    self.prefix.display()
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
        }
    }
}

fn probe_kvm() -> ExitCode {
    match harness::kvm::probe(std::time::Duration::from_secs(3)) {
        Ok(()) => {
            println!("KVM runs guests here: --accel auto will use it");
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("KVM cannot run guests here ({e}): --accel auto will use TCG");
            ExitCode::from(EXIT_TEST_FAILED)
        }
    }
}

impl ProvisionCmd {
    fn run(&self, mut ctx: Ctx) -> ExitCode {
        self.vm.apply(&mut ctx.cfg);
        let cfg = &ctx.cfg;
        let (tools, imgs) =
            match harness::provision(cfg, &self.vm.tools(), self.refresh, &mut ctx.rep) {
                Ok(t) => t,
                Err(e) => {
                    print_chain(&e);
                    return ExitCode::from(if e.is_usage() { EXIT_USAGE } else { EXIT_INFRA });
                }
            };
        ctx.rep.step("provisioned");
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
}

impl BenchTapCmd {
    fn run(&self, mut ctx: Ctx) -> ExitCode {
        self.vm.apply(&mut ctx.cfg);
        ctx.cfg.chmu_sample = self.sample;
        let b = match harness::bench_tap(
            &ctx.cfg,
            &self.vm.tools(),
            self.reps,
            ctx.interrupted,
            &mut ctx.rep,
        ) {
            Ok(b) => b,
            Err(e) => {
                print_chain(&e);
                return ExitCode::from(EXIT_INFRA);
            }
        };
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
    let ctx = Ctx {
        cfg,
        rep: Reporter::new(cli.verbose, cli.quiet),
        interrupted,
    };
    match &cli.command {
        Cmd::Provision(c) => c.run(ctx),
        Cmd::Run(c) => c.run(ctx),
        Cmd::Demo(c) => c.run(ctx),
        Cmd::Bringup(c) => c.run(ctx),
        Cmd::Scenarios => list_scenarios(),
        Cmd::Inspect(c) => c.run(),
        Cmd::BenchTap(c) => c.run(ctx),
        Cmd::ProbeKvm => probe_kvm(),
        Cmd::Clean => clean(ctx),
        Cmd::Install(c) => c.run(ctx),
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
