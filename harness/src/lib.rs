//! The test-bed harness: provisions images, boots the VM with both device servers, runs a
//! scenario, checks it and reports. The `harness` binary is a thin CLI over [`execute`].

pub mod config;
pub mod console;
pub mod document;
pub mod kvm;
pub mod migration;
pub mod plots;
pub mod private_dir;
pub mod report;
pub mod scenario;
pub mod session;
pub mod tap_bench;
pub mod tools;
pub mod vm;

use config::VmConfig;
use guest_agent::protocol::{Inventory, Reply, Request};
pub use images::Progress;
use serde::Serialize;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Version of the result JSON schema (`result.json`); bumped on incompatible changes.
pub const RESULT_SCHEMA_VERSION: u32 = 1;

/// Prints steps with elapsed time on stderr; tool output only when verbose, or as a
/// self-overwriting status line on a terminal.
#[derive(Debug)]
pub struct Reporter {
    start: Instant,
    verbose: bool,
    tty: bool,
    quiet: bool,
}

impl Reporter {
    pub fn new(verbose: bool, quiet: bool) -> Self {
        Self {
            start: Instant::now(),
            verbose,
            tty: std::io::stderr().is_terminal(),
            quiet,
        }
    }

    fn clear_line(&self) {
        if self.tty && !self.verbose {
            eprint!("\r\x1b[2K");
        }
    }
}

impl Progress for Reporter {
    fn step(&mut self, what: &str) {
        if self.quiet {
            return;
        }
        self.clear_line();
        eprintln!("[{:6.1}s] {what}", self.start.elapsed().as_secs_f64());
    }

    fn line(&mut self, text: &str) {
        if self.verbose {
            eprintln!("          {text}");
        } else if self.tty && !self.quiet {
            let t: String = text.chars().take(100).collect();
            eprint!("\r\x1b[2K          {t}");
        }
    }
}

pub use tap_bench::{bench_tap, TapBench};
/// Where the helper programs come from (explicit paths override finding or building them).
pub use tools::ToolPaths;

/// Errors that stop a run before a verdict (exit code 3), or an interruption (130).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error("building or locating helper programs")]
    Tools(#[from] tools::ToolsError),
    #[error("provisioning images")]
    Images(#[from] images::ImagesError),
    #[error("{0}")]
    Accel(String),
    #[error("running the VM (logs in {})", .1.display())]
    Vm(#[source] vm::VmError, PathBuf),
    #[error("unknown scenario {0:?}; built in: {list}", list = scenario::BUILTIN.iter().map(|s| s.0).collect::<Vec<_>>().join(", "))]
    UnknownScenario(String),
    #[error(transparent)]
    Scenario(#[from] migration::ScenarioError),
    #[error("writing results to {}", .0.display())]
    Results(PathBuf, #[source] std::io::Error),
}

impl RunError {
    pub fn interrupted(&self) -> bool {
        matches!(self, Self::Vm(vm::VmError::Interrupted, _))
    }

    /// The user asked for something impossible (bad configuration or scenario name).
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            Self::Config(_)
                | Self::UnknownScenario(_)
                | Self::Accel(_)
                | Self::Scenario(_)
                | Self::Vm(vm::VmError::Refused { .. }, _)
        )
    }
}

/// Provisions images (building the guest agent first).
pub fn provision(
    cfg: &VmConfig,
    paths: &ToolPaths,
    refresh: bool,
    progress: &mut dyn Progress,
) -> Result<(tools::Tools, images::Images), RunError> {
    cfg.validate()?;
    let tools = tools::ensure(paths, cfg.chmu_feed, progress)?;
    progress.step(&format!("helpers: {}", tools.origins.join("; ")));
    let icfg = images::ImagesConfig {
        cache_dir: cfg.cache_dir.clone(),
        kernel_package: cfg.kernel_package.clone(),
        qemu: cfg.qemu.clone(),
        modules: images::default_modules(),
        refresh,
    };
    let imgs = images::provision(&icfg, &tools.agent, progress)?;
    Ok((tools, imgs))
}

/// Timings of a run, in seconds.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Timings {
    pub provision_s: f64,
    pub boot_to_agent_s: f64,
    pub scenario_s: f64,
    pub shutdown_s: f64,
    pub total_s: f64,
}

/// The result of one scenario run (`result.json`).
#[derive(Clone, Debug, Serialize)]
pub struct RunResult {
    pub schema_version: u32,
    pub scenario: String,
    pub passed: bool,
    pub checks: Vec<scenario::Check>,
    pub accel: vm::AccelChoice,
    pub timings: Timings,
    pub qemu: String,
    pub kernel: String,
    pub kernel_package_version: String,
    pub download_bytes: u64,
    pub inventory: Inventory,
    /// The guest SDXi driver's report (sdxi-copy scenario).
    pub sdxi_copy: Option<guest_agent::protocol::SdxiCopyReport>,
    /// The guest CHMU driver's report (chmu-hot scenario).
    pub chmu_hot: Option<guest_agent::protocol::ChmuHotReport>,
    /// Each migration run: the migrator's report and the harness's own check of every
    /// promoted folio through the guest-RAM files (migration scenarios).
    pub migrate: Vec<migration::MigrateRun>,
    /// The copy benchmark's report (benchmark scenarios).
    pub bench: Option<guest_agent::spec::BenchReport>,
    pub teardown: vm::Teardown,
    pub run_dir: PathBuf,
}

impl RunResult {
    /// A short human summary.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "scenario {}: {}\n  accel {} ({}), {}, kernel {}\n  boot to agent {:.1}s, scenario {:.1}s, total {:.1}s\n",
            self.scenario,
            if self.passed { "PASSED" } else { "FAILED" },
            self.accel.accel,
            self.accel.reason,
            self.qemu,
            self.kernel,
            self.timings.boot_to_agent_s,
            self.timings.scenario_s,
            self.timings.total_s,
        );
        for m in &self.migrate {
            s.push_str(&format!("  run {}:\n", m.name));
            s.push_str(&migration::migrate_summary(&m.report));
        }
        if let Some(b) = &self.bench {
            s.push_str(&migration::bench_summary(b));
        }
        for c in &self.checks {
            s.push_str(&format!(
                "  [{}] {:<26} {}\n",
                if c.passed { " ok " } else { "FAIL" },
                c.name,
                c.detail
            ));
        }
        s.push_str(&format!(
            "  results and logs: {} (report.md / report.html with plots)\n",
            self.run_dir.display()
        ));
        s
    }
}

/// Provisions, boots, runs `scenario`, shuts down, checks; writes `result.json` in the run
/// directory.
pub fn execute(
    cfg: &VmConfig,
    paths: &ToolPaths,
    scenario_name: &str,
    results_dir: Option<&Path>,
    interrupted: Arc<AtomicBool>,
    progress: &mut dyn Progress,
) -> Result<RunResult, RunError> {
    let t0 = Instant::now();
    let file = migration::resolve(scenario_name)?;
    if file.is_none() && !scenario::BUILTIN.iter().any(|(n, _)| *n == scenario_name) {
        return Err(RunError::UnknownScenario(scenario_name.to_owned()));
    }
    let mut cfg = match &file {
        Some(f) => f.apply(cfg, scenario_name)?,
        None => cfg.clone(),
    };
    if scenario::uses_chmu(scenario_name) {
        cfg.chmu_feed = true;
    }
    if cfg.reproducible {
        if scenario_name != "chmu-hot" {
            return Err(RunError::Config(config::ConfigError::Invalid(format!(
                "--reproducible applies to the chmu-hot scenario (the CHMU's hotlist), not {scenario_name:?}"
            ))));
        }
        cfg.chmu_clock = config::ChmuClock::Insns;
        cfg.accel = config::Accel::Tcg;
        // Two vCPUs under -icount boot without the tap, or with it on the host clock, but
        // crashed in 3 of 3 tries with its instruction clock (the per-vCPU inline counter);
        // one vCPU also keeps the instruction stream a single, ordered one.
        cfg.cpus = 1;
    }
    let (tools, imgs) = provision(&cfg, paths, false, progress)?;
    let provision_s = t0.elapsed().as_secs_f64();
    let cfg = &cfg;
    let accel = vm::choose_accel(cfg.accel).map_err(RunError::Accel)?;
    progress.step(&format!("accelerator: {} ({})", accel.accel, accel.reason));
    reclaim_leftovers(progress);
    let base = results_dir.map_or_else(|| cfg.cache_dir.join("runs"), Path::to_owned);
    let run = vm::RunDir::create(&base).map_err(|e| RunError::Vm(e, base.clone()))?;
    let vm_err = |e| RunError::Vm(e, run.dir.clone());
    progress.step(&format!(
        "booting the guest ({} MiB DRAM + {} MiB CXL tier, {} vCPUs)",
        cfg.node0_mib, cfg.node1_mib, cfg.cpus
    ));
    let boot = if cfg.reproducible {
        progress.step("reproducible: the chmu-hot workload runs at boot on the instruction clock");
        vm::Boot::Autorun(scenario::chmu_hot_request(cfg))
    } else {
        vm::Boot::Agent
    };
    let mut vm = vm::Vm::start_with(cfg, &boot, &imgs, &tools, accel.accel, &run, interrupted)
        .map_err(vm_err)?;
    let boot = vm.hello_after.as_secs_f64();
    if let Some(k) = &cfg.kill_after_boot {
        if cfg.kill_delay_ms == 0 && cfg.kill_after_sdxi_copies.is_none() {
            progress.step(&format!("process fault: killing {k}"));
            vm.kill_child(k);
        } else if let Some(pid) = vm.pid_of(k) {
            // A planned, later kill is a fault the run goes on without, where the guest survives.
            vm.tolerate_death(k);
            progress.step(&format!(
                "process fault: {k} will be killed after {} ms{}",
                cfg.kill_delay_ms,
                cfg.kill_after_sdxi_copies
                    .map_or(String::new(), |n| format!(" and {n} SDXi COPY descriptors"))
            ));
            let delay = Duration::from_millis(cfg.kill_delay_ms);
            let (name, copies, ctl) = (
                k.clone(),
                cfg.kill_after_sdxi_copies,
                vm.control_path("sdxi"),
            );
            std::thread::spawn(move || {
                std::thread::sleep(delay);
                if let Some(n) = copies {
                    // Either way (reached, or the server no longer answers) the kill goes ahead.
                    let _ = wait_for_sdxi_copies(&ctl, n);
                }
                tracing::warn!(name, "killing on request (process fault, delayed)");
                // SAFETY: kill(2) of the child's process group (it leads its own group).
                unsafe { libc::kill(-(pid as libc::pid_t), libc::SIGKILL) };
            });
        }
    }
    progress.step(&format!(
        "guest agent ready after {boot:.1}s; running scenario {scenario_name}"
    ));
    let t1 = Instant::now();
    let timeout = Duration::from_secs(cfg.request_timeout_s);
    let inventory = match vm.request(Request::Inventory, timeout).map_err(vm_err)? {
        Reply::Inventory(i) => *i,
        other => {
            return Err(vm_err(vm::VmError::Protocol(format!(
                "expected an inventory, got {other:?}"
            ))))
        }
    };
    let sdxi_copy = if scenario::uses_sdxi(scenario_name) {
        progress.step("guest SDXi driver: init, context start, copies through the device");
        let sizes = scenario::SDXI_COPY_SIZES.to_vec();
        match vm
            .request(Request::SdxiCopy { sizes }, timeout)
            .map_err(vm_err)?
        {
            Reply::SdxiCopy(r) => Some(r),
            other => {
                return Err(vm_err(vm::VmError::Protocol(format!(
                    "expected an SDXi copy report, got {other:?}"
                ))))
            }
        }
    } else {
        None
    };
    let chmu_hot = if scenario::uses_chmu(scenario_name) {
        progress.step("guest CHMU driver: hot-page workload on node 1, draining the hotlist");
        let req = if cfg.reproducible {
            Request::Autorun
        } else {
            scenario::chmu_hot_request(cfg)
        };
        match vm.request(req, timeout).map_err(vm_err)? {
            Reply::ChmuHot(r) => Some(r),
            other => {
                return Err(vm_err(vm::VmError::Protocol(format!(
                    "expected a CHMU report, got {other:?}"
                ))))
            }
        }
    } else {
        None
    };
    let (mut migrate, mut bench) = (Vec::new(), None);
    if let Some(f) = &file {
        for run in f.runs() {
            if let Some(plan) = &run.sdxi_faults {
                progress.step(&format!("SDXi fault plan: {plan}"));
                let mut req = plan.clone();
                if let Some(o) = req.as_object_mut() {
                    o.insert("cmd".into(), "fault".into());
                }
                vm.control("sdxi", &req).map_err(vm_err)?;
            }
            if let Some(at) = &run.sdxi_control {
                control_after_copies(vm.control_path("sdxi"), at.clone());
            }
            let spec = run.migrate.clone().normalized();
            progress.step(&format!(
                "run {}: {} {} folios on node 1, {:?} source, {:?} policy, batches of {}, {:.1}s",
                run.name,
                spec.workload.pages,
                spec.workload.folio.name(),
                spec.source,
                spec.engine.policy,
                spec.batch.size,
                spec.duration_ms as f64 / 1e3
            ));
            let t = timeout + Duration::from_millis(spec.duration_ms);
            let req = Request::Migrate {
                spec: Box::new(spec),
            };
            let report = match vm.request(req, t).map_err(vm_err)? {
                Reply::Migrate(r) => r,
                other => {
                    return Err(vm_err(vm::VmError::Protocol(format!(
                        "expected a migration report, got {other:?}"
                    ))))
                }
            };
            if run.sdxi_faults.is_some() {
                vm.control("sdxi", &serde_json::json!({ "cmd": "fault" }))
                    .map_err(vm_err)?;
            }
            progress.step(&format!(
                "checking {} promoted folios in guest RAM",
                report.migrated.len()
            ));
            let host_verify = migration::verify_on_host(&report, &vm);
            migrate.push(migration::MigrateRun {
                name: run.name.clone(),
                report,
                host_verify,
            });
        }
        if let Some(spec) = &f.bench {
            progress.step("copy benchmark: engines x folio sizes x batch sizes");
            let t = timeout * 10;
            let req = Request::MigrateBench { spec: spec.clone() };
            match vm.request(req, t).map_err(vm_err)? {
                Reply::MigrateBench(r) => bench = Some(r),
                other => {
                    return Err(vm_err(vm::VmError::Protocol(format!(
                        "expected a benchmark report, got {other:?}"
                    ))))
                }
            }
        }
    }
    let scenario_s = t1.elapsed().as_secs_f64();
    progress.step("shutting down");
    let t2 = Instant::now();
    let teardown = vm.shutdown(timeout).map_err(vm_err)?;
    let mut checks = scenario::inventory_checks(cfg, &inventory);
    if let Some(r) = &sdxi_copy {
        checks.extend(scenario::sdxi_copy_checks(r, teardown.counters.get("sdxi")));
    }
    if let Some(r) = &chmu_hot {
        checks.extend(scenario::chmu_hot_checks(
            r,
            teardown.counters.get("cxl_hmu"),
        ));
    }
    if let Some(f) = &file {
        let runs = f.runs();
        for (m, spec) in migrate.iter().zip(&runs) {
            let mut c = migration::migrate_checks(
                &m.report,
                &m.host_verify,
                &spec.expect,
                teardown.counters.get("sdxi"),
            );
            if runs.len() > 1 {
                c.iter_mut()
                    .for_each(|c| c.name = format!("{}.{}", m.name, c.name));
            }
            checks.extend(c);
        }
    }
    if let (Some(r), Some(spec)) = (&bench, file.as_ref().and_then(|f| f.bench.as_ref())) {
        checks.extend(migration::bench_checks(spec, r));
    }
    checks.push(scenario::Check {
        name: "no_stray_processes".into(),
        passed: teardown.stray_processes.is_empty(),
        detail: format!("{:?}", teardown.stray_processes),
    });
    let result = RunResult {
        schema_version: RESULT_SCHEMA_VERSION,
        scenario: scenario_name.to_owned(),
        passed: checks.iter().all(|c| c.passed),
        checks,
        accel,
        timings: Timings {
            provision_s,
            boot_to_agent_s: boot,
            scenario_s,
            shutdown_s: t2.elapsed().as_secs_f64(),
            total_s: t0.elapsed().as_secs_f64(),
        },
        qemu: imgs.qemu.version.clone(),
        kernel: imgs.kernel.release.clone(),
        kernel_package_version: imgs.kernel.version.clone(),
        download_bytes: imgs.download_bytes,
        inventory,
        sdxi_copy,
        chmu_hot,
        migrate,
        bench,
        teardown,
        run_dir: run.dir.clone(),
    };
    let path = run.path("result.json");
    let json = serde_json::to_vec_pretty(&result)
        .map_err(|e| RunError::Results(path.clone(), e.into()))?;
    std::fs::write(&path, json).map_err(|e| RunError::Results(path.clone(), e))?;
    document::write(&result, &run.dir).map_err(|e| RunError::Results(run.path("report.md"), e))?;
    Ok(result)
}

/// Reclaims what runs killed before their cleanup (SIGKILL, a CI job's timeout) left behind:
/// their socket and guest-RAM directories and any process still using them; live runs are
/// not touched. Every run does this first; `harness clean` does only this.
pub fn reclaim_leftovers(progress: &mut dyn Progress) -> private_dir::Reclaimed {
    let r = private_dir::reclaim_stale();
    for (dir, strays) in &r.removed {
        progress.step(&format!(
            "removed {} (left by a run that was killed){}",
            dir.display(),
            if strays.is_empty() {
                String::new()
            } else {
                format!("; killed its stray processes {strays:?}")
            }
        ));
    }
    for (dir, e) in &r.failed {
        progress.step(&format!(
            "cannot remove {} (left by a killed run): {e}",
            dir.display()
        ));
    }
    r
}

/// COPY descriptors the SDXi server behind control socket `ctl` has executed (None when it
/// does not answer).
fn sdxi_copies(ctl: &Path) -> Option<u64> {
    vm::control_request(
        ctl,
        &serde_json::json!({ "cmd": "counters" }),
        Duration::from_secs(5),
    )
    .ok()?["registers"]["engine"]["descriptors"]["copy"]
        .as_u64()
}

/// Polls until the SDXi server has executed `n` COPY descriptors: true when it did, false
/// when it stopped answering first.
fn wait_for_sdxi_copies(ctl: &Path, n: u64) -> bool {
    loop {
        match sdxi_copies(ctl) {
            Some(d) if d >= n => return true,
            Some(_) => std::thread::sleep(Duration::from_millis(10)),
            None => return false,
        }
    }
}

/// Sends `at.request` to the SDXi control socket `ctl` once the engine has executed
/// `at.after_copies` more COPY descriptors than now (from a thread; gives up when the server
/// stops answering).
fn control_after_copies(ctl: PathBuf, at: migration::ControlAt) {
    std::thread::spawn(move || {
        let Some(start) = sdxi_copies(&ctl) else {
            return;
        };
        if !wait_for_sdxi_copies(&ctl, start + at.after_copies) {
            return;
        }
        match vm::control_request(&ctl, &at.request, Duration::from_secs(5)) {
            Ok(a) => tracing::info!(request = %at.request, answer = %a, "SDXi control mid-run"),
            Err(e) => {
                tracing::warn!(request = %at.request, error = %e, "SDXi control mid-run failed")
            }
        }
    });
}

/// The number of scenarios `harness run` runs at once by default: a TCG guest with two vCPUs
/// and its device servers keep about two cores busy, so one per two cores (at least one).
pub fn default_jobs() -> usize {
    std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
}

/// Runs one scenario of a matrix within `limit`; Ctrl-C (`interrupted`) stops it.
fn run_one(
    cfg: &VmConfig,
    paths: &ToolPaths,
    name: &str,
    results_dir: Option<&Path>,
    limit: Option<Duration>,
    interrupted: &Arc<AtomicBool>,
    progress: &mut dyn Progress,
) -> report::Outcome {
    // A per-scenario stop flag, set by Ctrl-C or by the time limit.
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicBool::new(false));
    let timed_out = Arc::new(AtomicBool::new(false));
    {
        let (stop, done, timed_out, global) = (
            Arc::clone(&stop),
            Arc::clone(&done),
            Arc::clone(&timed_out),
            Arc::clone(interrupted),
        );
        let deadline = limit.map(|l| Instant::now() + l);
        std::thread::spawn(move || {
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                if global.load(std::sync::atomic::Ordering::Relaxed) {
                    stop.store(true, std::sync::atomic::Ordering::Relaxed);
                }
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    timed_out.store(true, std::sync::atomic::Ordering::Relaxed);
                    stop.store(true, std::sync::atomic::Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
    }
    let t = Instant::now();
    let r = execute(cfg, paths, name, results_dir, stop, progress);
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    match r {
        Ok(r) => report::Outcome::Ran(Box::new(r)),
        Err(e) => {
            let mut message = if timed_out.load(std::sync::atomic::Ordering::Relaxed) {
                format!("time limit of {:?} exceeded", limit.unwrap_or_default())
            } else {
                e.to_string()
            };
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                message.push_str(&format!(": {s}"));
                src = s.source();
            }
            report::Outcome::Error {
                scenario: name.to_owned(),
                message,
                seconds: t.elapsed().as_secs_f64(),
            }
        }
    }
}

/// Runs `scenarios`, `jobs` at a time (each VM is independent: its own sockets, guest-RAM
/// files and run directory), each within `limit` if given; Ctrl-C stops the whole matrix.
/// Outcomes come back in the order of `scenarios`.
#[allow(clippy::too_many_arguments)]
pub fn run_matrix(
    cfg: &VmConfig,
    paths: &ToolPaths,
    scenarios: &[String],
    results_dir: Option<&Path>,
    limit: Option<Duration>,
    jobs: usize,
    interrupted: Arc<AtomicBool>,
    progress: &mut dyn Progress,
) -> Vec<report::Outcome> {
    let total = scenarios.len();
    if jobs <= 1 || total <= 1 {
        let mut out = Vec::new();
        for (i, name) in scenarios.iter().enumerate() {
            if interrupted.load(std::sync::atomic::Ordering::Relaxed) {
                break;
            }
            progress.step(&format!("scenario {}/{total}: {name}", i + 1));
            out.push(run_one(
                cfg,
                paths,
                name,
                results_dir,
                limit,
                &interrupted,
                progress,
            ));
        }
        return out;
    }
    // Build and provision once, before the workers share the cache.
    if let Err(e) = provision(cfg, paths, false, progress) {
        return scenarios
            .iter()
            .map(|n| report::Outcome::Error {
                scenario: n.clone(),
                message: e.to_string(),
                seconds: 0.0,
            })
            .collect();
    }
    progress.step(&format!("{total} scenarios, {jobs} at a time"));
    // Popped from the end: reversed, so the first scenario starts first.
    let queue = std::sync::Mutex::new(scenarios.iter().enumerate().rev().collect::<Vec<_>>());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::scope(|s| {
        for _ in 0..jobs.min(total) {
            let (queue, tx, interrupted) = (&queue, tx.clone(), &interrupted);
            s.spawn(move || loop {
                if interrupted.load(std::sync::atomic::Ordering::Relaxed) {
                    return;
                }
                let next = queue
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .pop();
                let Some((i, name)) = next else { return };
                let o = run_one(
                    cfg,
                    paths,
                    name,
                    results_dir,
                    limit,
                    interrupted,
                    &mut images::Silent,
                );
                if tx.send((i, o)).is_err() {
                    return;
                }
            });
        }
        drop(tx);
        let mut done: Vec<(usize, report::Outcome)> = Vec::new();
        for (i, o) in rx {
            let verdict = match &o {
                report::Outcome::Ran(r) if r.passed => "passed".to_owned(),
                report::Outcome::Ran(_) => "FAILED".to_owned(),
                report::Outcome::Error { message, .. } => format!("error: {message}"),
            };
            done.push((i, o));
            progress.step(&format!(
                "{}/{total} done: {} {verdict}",
                done.len(),
                scenarios[i]
            ));
        }
        done.sort_by_key(|(i, _)| *i);
        done.into_iter().map(|(_, o)| o).collect()
    })
}

/// Driver bring-up: the user's modules (loaded in order, with parameters) and script, with
/// both devices attached and unclaimed.
#[derive(Clone, Debug, Default)]
pub struct BringupSpec {
    /// Kbuild trees to build for the guest kernel first (their modules load first, in
    /// dependency order); subdirectories are kept, see [`images::kbuild::build_module`].
    pub build: Vec<PathBuf>,
    /// (module file, parameters) in load order; `.ko`, `.ko.xz` or `.ko.zst`.
    pub modules: Vec<(PathBuf, String)>,
    pub script: Option<PathBuf>,
    /// Boot this kernel instead (an uncompressed `vmlinux` or a `bzImage`).
    pub kernel: Option<PathBuf>,
    /// Module tree matching `kernel` (…/lib/modules/RELEASE), for the modules the test bed
    /// itself loads (vfio, uio) and for `--build-module` nothing else is needed.
    pub modules_dir: Option<PathBuf>,
    /// An interactive shell on the guest console instead of a script.
    pub console: bool,
}

/// What happened in a bring-up run (`bringup.json`).
#[derive(Clone, Debug, Serialize)]
pub struct BringupReport {
    /// `ok NAME` or `failed NAME: message`, in load order.
    pub modules: Vec<String>,
    pub exit_code: Option<i32>,
    pub output: String,
    pub teardown: vm::Teardown,
    pub run_dir: PathBuf,
}

impl BringupReport {
    /// The script's exit code, or 1 if a module failed to load, else 0.
    pub fn status(&self) -> i32 {
        if self.modules.iter().any(|m| !m.starts_with("ok ")) {
            return 1;
        }
        self.exit_code.unwrap_or(0)
    }
}

/// Boots the test bed in bring-up mode and returns what the guest reported.
pub fn bringup(
    cfg: &VmConfig,
    paths: &ToolPaths,
    spec: &BringupSpec,
    results_dir: Option<&Path>,
    interrupted: Arc<AtomicBool>,
    progress: &mut dyn Progress,
) -> Result<BringupReport, RunError> {
    if spec.kernel.is_some() && !spec.build.is_empty() {
        return Err(config::ConfigError::Invalid(
            "--build-module builds for the provisioned Debian kernel; with --kernel-image build the module yourself and pass --module".into(),
        )
        .into());
    }
    let (tools, mut imgs) = provision(cfg, paths, false, progress)?;
    // The initramfs for the user's kernel, kept in memory (nothing per run in the cache).
    let mut custom_initramfs = None;
    if let Some(k) = &spec.kernel {
        progress.step(&format!("using the kernel {}", k.display()));
        let base_modules = match &spec.modules_dir {
            Some(d) => images::kernel::ModuleIndex::scan(d)?.resolve(&images::default_modules())?,
            None => Vec::new(),
        };
        let busybox =
            std::fs::read(&imgs.busybox).map_err(|e| RunError::Results(imgs.busybox.clone(), e))?;
        let agent =
            std::fs::read(&tools.agent).map_err(|e| RunError::Results(tools.agent.clone(), e))?;
        custom_initramfs = Some(images::initramfs::build(&busybox, &agent, &base_modules));
        imgs.kernel.vmlinux = k.clone();
        if let Some(d) = &spec.modules_dir {
            imgs.kernel.modules_dir = d.clone();
        }
        imgs.modules = base_modules.into_iter().map(|(n, _)| n).collect();
    }
    let mut all: Vec<(PathBuf, String)> = Vec::new();
    if !spec.build.is_empty() {
        let root = images::kbuild::build_root(&cfg.cache_dir, &imgs.kernel.release, progress)?;
        for dir in &spec.build {
            for ko in images::kbuild::build_module(&root, &imgs.kernel.release, dir, progress)? {
                all.push((ko, String::new()));
            }
        }
    }
    all.extend(spec.modules.iter().cloned());
    let mut mods = Vec::new();
    for (p, params) in &all {
        let name = images::kernel::module_name(p).ok_or_else(|| {
            config::ConfigError::Invalid(format!("--module {}: not a .ko file", p.display()))
        })?;
        let data = images::kernel::read_module(p)?;
        mods.push((name, params.clone(), data));
    }
    let script = match &spec.script {
        Some(p) => Some(std::fs::read(p).map_err(|e| config::ConfigError::Read(p.clone(), e))?),
        None => None,
    };
    let accel = vm::choose_accel(cfg.accel).map_err(RunError::Accel)?;
    reclaim_leftovers(progress);
    let base = results_dir.map_or_else(|| cfg.cache_dir.join("runs"), Path::to_owned);
    let run = vm::RunDir::create(&base).map_err(|e| RunError::Vm(e, base.clone()))?;
    let vm_err = |e| RunError::Vm(e, run.dir.clone());
    let initrd = run.path("initrd-bringup.cpio");
    let mut bytes = match custom_initramfs {
        Some(b) => b,
        None => std::fs::read(&imgs.initramfs)
            .map_err(|e| RunError::Results(imgs.initramfs.clone(), e))?,
    };
    bytes.extend(images::initramfs::bringup_archive(
        &mods,
        script.as_deref(),
        spec.console,
    ));
    vm::private_file(&initrd)
        .and_then(|mut f| std::io::Write::write_all(&mut f, &bytes))
        .map_err(|e| RunError::Results(initrd.clone(), e))?;
    progress.step(&format!(
        "booting for driver bring-up ({} modules, accel {})",
        mods.len(),
        accel.accel
    ));
    let boot = vm::Boot::Bringup {
        initrd,
        console: spec.console,
    };
    let mut vm = vm::Vm::start_with(cfg, &boot, &imgs, &tools, accel.accel, &run, interrupted)
        .map_err(vm_err)?;
    if let Some(con) = vm.take_console() {
        progress.step("guest console attached (Ctrl-] leaves)");
        let ended =
            console::attach(con).map_err(|e| RunError::Results(run.path("console.log"), e))?;
        if ended == console::Ended::Detached {
            vm.kill_child("qemu");
        }
        let teardown = vm
            .finish(Duration::from_secs(cfg.request_timeout_s))
            .map_err(vm_err)?;
        return Ok(BringupReport {
            modules: Vec::new(),
            exit_code: None,
            output: String::new(),
            teardown,
            run_dir: run.dir.clone(),
        });
    }
    let deadline = Instant::now() + Duration::from_secs(cfg.boot_timeout_s + cfg.request_timeout_s);
    let (modules, exit_code, output) = match vm
        .next_message(deadline, "the bring-up report")
        .map_err(vm_err)?
    {
        guest_agent::protocol::AgentMessage::Bringup {
            modules,
            exit_code,
            output,
            ..
        } => (modules, exit_code, output),
        other => {
            return Err(vm_err(vm::VmError::Protocol(format!(
                "expected a bring-up report, got {other:?}"
            ))))
        }
    };
    let teardown = vm
        .finish(Duration::from_secs(cfg.request_timeout_s))
        .map_err(vm_err)?;
    let report = BringupReport {
        modules,
        exit_code,
        output,
        teardown,
        run_dir: run.dir.clone(),
    };
    let path = run.path("bringup.json");
    let json = serde_json::to_vec_pretty(&report)
        .map_err(|e| RunError::Results(path.clone(), e.into()))?;
    std::fs::write(&path, json).map_err(|e| RunError::Results(path.clone(), e))?;
    Ok(report)
}
