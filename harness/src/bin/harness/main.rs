//! `harness`: the test bed's command line. Each subcommand is a clap struct with its own
//! `run`; they call the library ([`harness::execute`], [`harness::bringup`], ...) and turn
//! its result into output and an exit code. Flags shared by every command that boots the
//! test bed are [`vm_args::VmArgs`]; each command is in the module named after it.

mod bringup;
mod inspect;
mod run;
mod setup;
mod vm_args;

use bringup::BringupCmd;
use clap::{Parser, Subcommand};
use harness::config::VmConfig;
use harness::Reporter;
use inspect::{BenchTapCmd, InspectCmd};
use run::{DemoCmd, RunCmd};
use setup::{InstallCmd, ProvisionCmd};
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
        Cmd::Scenarios => run::list_scenarios(),
        Cmd::Inspect(c) => c.run(),
        Cmd::BenchTap(c) => c.run(ctx),
        Cmd::ProbeKvm => setup::probe_kvm(),
        Cmd::Clean => setup::clean(ctx),
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
