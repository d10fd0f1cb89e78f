//! One scenario run, start to finish: resolve the [`Scenario`], provision, boot, send its
//! steps to the guest agent (then its scenario file's migration runs or benchmark), shut
//! down, check every reply against the device counters, and write `result.json` and the
//! report into the run directory. Nothing here knows a scenario by name.

use crate::config::VmConfig;
use crate::error::RunError;
use crate::faults::{control_after_copies, plan_kill};
use crate::migration::{self, MigrateRun, RunSpec, ScenarioFile};
use crate::provision::{provision, reclaim_leftovers};
use crate::report::{RunResult, Timings};
use crate::scenario::{check, Check, Scenario, Step};
use crate::tools::ToolPaths;
use crate::{document, kernel_loop, vm};
use guest_agent::protocol::{Reply, Request};
use guest_agent::spec::BenchReport;
use images::Progress;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Provisions, boots, runs `scenario_name` (a built-in or a scenario file), shuts down,
/// checks; writes `result.json` in the run directory.
pub fn execute(
    cfg: &VmConfig,
    paths: &ToolPaths,
    scenario_name: &str,
    results_dir: Option<&Path>,
    interrupted: Arc<AtomicBool>,
    progress: &mut dyn Progress,
) -> Result<RunResult, RunError> {
    let t0 = Instant::now();
    let scenario = Scenario::resolve(scenario_name)?;
    if let Some(runner) = scenario.runner {
        return runner(
            cfg,
            paths,
            scenario_name,
            results_dir,
            interrupted,
            progress,
        );
    }
    let cfg = &scenario.configure(cfg)?;
    let (tools, imgs) = provision(cfg, paths, false, progress)?;
    kernel_loop::check_scenario(cfg, &imgs, &scenario, progress)?;
    let provision_s = t0.elapsed().as_secs_f64();
    let mut bed = Bed::boot(
        cfg,
        &scenario,
        &tools,
        &imgs,
        results_dir,
        interrupted,
        progress,
    )?;
    let boot_to_agent_s = bed.vm.hello_after.as_secs_f64();
    plan_kill(cfg, &mut bed.vm, progress);
    progress.step(&format!(
        "guest agent ready after {boot_to_agent_s:.1}s; running scenario {scenario_name}"
    ));
    let t1 = Instant::now();
    let replies = bed.steps(cfg, &scenario, progress)?;
    let file = match &scenario.file {
        Some(f) => bed.file_runs(cfg, f, progress)?,
        None => FileResults::default(),
    };
    let scenario_s = t1.elapsed().as_secs_f64();
    progress.step("shutting down");
    let t2 = Instant::now();
    let Bed { vm, run, accel } = bed;
    let timeout = Duration::from_secs(cfg.request_timeout_s);
    let teardown = kernel_loop::finish_run(vm, cfg, timeout, progress)
        .map_err(|e| RunError::Vm(e, run.dir.clone()))?;
    let checks = all_checks(cfg, &scenario, &replies, &file, &teardown);
    let mut result = RunResult {
        migrate: file.migrate,
        bench: file.bench,
        ..RunResult::new(
            scenario_name,
            checks,
            accel,
            Timings {
                provision_s,
                boot_to_agent_s,
                scenario_s,
                shutdown_s: t2.elapsed().as_secs_f64(),
                total_s: t0.elapsed().as_secs_f64(),
            },
            &imgs,
            teardown,
            run.dir.clone(),
        )
    };
    for (_, reply) in replies {
        result.record(reply);
    }
    write_result(&result, &run)?;
    Ok(result)
}

/// A booted test bed: the VM, its run directory and the accelerator it runs on.
struct Bed {
    vm: vm::Vm,
    run: vm::RunDir,
    accel: vm::AccelChoice,
}

/// What a scenario file's runs returned.
#[derive(Default)]
struct FileResults {
    migrate: Vec<MigrateRun>,
    bench: Option<BenchReport>,
}

impl Bed {
    /// Chooses the accelerator, makes the run directory and boots until the agent's hello
    /// (a reproducible scenario's first step runs at boot).
    fn boot(
        cfg: &VmConfig,
        scenario: &Scenario,
        tools: &crate::tools::Tools,
        imgs: &images::Images,
        results_dir: Option<&Path>,
        interrupted: Arc<AtomicBool>,
        progress: &mut dyn Progress,
    ) -> Result<Self, RunError> {
        let accel = vm::choose_accel(cfg.accel).map_err(RunError::Accel)?;
        progress.step(&format!("accelerator: {} ({})", accel.accel, accel.reason));
        reclaim_leftovers(progress);
        let base = results_dir.map_or_else(|| cfg.cache_dir.join("runs"), Path::to_owned);
        let run = vm::RunDir::create(&base).map_err(|e| RunError::Vm(e, base.clone()))?;
        progress.step(&format!(
            "booting the guest ({} MiB DRAM + {} MiB CXL tier, {} vCPUs)",
            cfg.node0_mib, cfg.node1_mib, cfg.cpus
        ));
        let boot = match scenario.autorun_step().filter(|_| cfg.reproducible) {
            Some(step) => {
                progress.step(&format!(
                    "reproducible: its first step runs at boot on the instruction clock ({})",
                    step.what
                ));
                vm::Boot::Autorun((step.request)(cfg))
            }
            None => vm::Boot::Agent,
        };
        match vm::Vm::start_with(cfg, &boot, imgs, tools, accel.accel, &run, interrupted) {
            Ok(vm) => Ok(Self { vm, run, accel }),
            Err(e) => Err(RunError::Vm(e, run.dir.clone())),
        }
    }

    fn err(&self, e: vm::VmError) -> RunError {
        RunError::Vm(e, self.run.dir.clone())
    }

    /// Sends the scenario's steps in order; a reply of the wrong kind is a protocol error.
    fn steps(
        &mut self,
        cfg: &VmConfig,
        scenario: &Scenario,
        progress: &mut dyn Progress,
    ) -> Result<Vec<(Step, Reply)>, RunError> {
        let timeout = Duration::from_secs(cfg.request_timeout_s);
        let mut replies = Vec::new();
        for (i, step) in scenario.steps.iter().enumerate() {
            if i > 0 {
                progress.step(step.what);
            }
            let autorun = cfg.reproducible && i == 1 && scenario.autorun_step().is_some();
            let req = if autorun {
                Request::Autorun
            } else {
                (step.request)(cfg)
            };
            let reply = self
                .vm
                .request(req, timeout * step.timeout_mult)
                .map_err(|e| self.err(e))?;
            if !(step.accepts)(&reply) {
                return Err(self.err(vm::VmError::Protocol(format!(
                    "expected the reply to \"{}\", got {reply:?}",
                    step.what
                ))));
            }
            replies.push((*step, reply));
        }
        Ok(replies)
    }

    /// A scenario file's migration runs, then its copy benchmark.
    fn file_runs(
        &mut self,
        cfg: &VmConfig,
        f: &ScenarioFile,
        progress: &mut dyn Progress,
    ) -> Result<FileResults, RunError> {
        let timeout = Duration::from_secs(cfg.request_timeout_s);
        let mut out = FileResults::default();
        for run in f.runs() {
            out.migrate
                .push(self.migration_run(&run, timeout, progress)?);
        }
        if let Some(spec) = &f.bench {
            progress.step("copy benchmark: engines x folio sizes x batch sizes");
            let req = Request::MigrateBench { spec: spec.clone() };
            match self
                .vm
                .request(req, timeout * 10)
                .map_err(|e| self.err(e))?
            {
                Reply::MigrateBench(r) => out.bench = Some(r),
                other => {
                    return Err(self.err(vm::VmError::Protocol(format!(
                        "expected a benchmark report, got {other:?}"
                    ))))
                }
            }
        }
        Ok(out)
    }

    /// One migration run: its SDXi fault plan and mid-run control request, the migrator in
    /// the guest, then the harness's own check of every promoted folio in guest RAM.
    fn migration_run(
        &mut self,
        run: &RunSpec,
        timeout: Duration,
        progress: &mut dyn Progress,
    ) -> Result<MigrateRun, RunError> {
        if let Some(plan) = &run.sdxi_faults {
            progress.step(&format!("SDXi fault plan: {plan}"));
            let mut req = plan.clone();
            if let Some(o) = req.as_object_mut() {
                o.insert("cmd".into(), "fault".into());
            }
            self.vm.control("sdxi", &req).map_err(|e| self.err(e))?;
        }
        if let Some(at) = &run.sdxi_control {
            control_after_copies(self.vm.control_path("sdxi"), at.clone());
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
        let report = match self.vm.request(req, t).map_err(|e| self.err(e))? {
            Reply::Migrate(r) => r,
            other => {
                return Err(self.err(vm::VmError::Protocol(format!(
                    "expected a migration report, got {other:?}"
                ))))
            }
        };
        if run.sdxi_faults.is_some() {
            self.vm
                .control("sdxi", &serde_json::json!({ "cmd": "fault" }))
                .map_err(|e| self.err(e))?;
        }
        progress.step(&format!(
            "checking {} promoted folios in guest RAM",
            report.migrated.len()
        ));
        let host_verify = migration::verify_on_host(&report, &self.vm);
        Ok(MigrateRun {
            name: run.name.clone(),
            report,
            host_verify,
        })
    }
}

/// Every check of the run, in order: each step's, each migration run's (prefixed with the
/// run's name when there are several), the benchmark's, and no process left behind.
fn all_checks(
    cfg: &VmConfig,
    scenario: &Scenario,
    replies: &[(Step, Reply)],
    file: &FileResults,
    teardown: &vm::Teardown,
) -> Vec<Check> {
    let counters = &teardown.counters;
    let mut checks: Vec<Check> = replies
        .iter()
        .flat_map(|(step, reply)| (step.check)(cfg, reply, counters))
        .collect();
    if let Some(f) = &scenario.file {
        let runs = f.runs();
        for (m, spec) in file.migrate.iter().zip(&runs) {
            let mut c = migration::migrate_checks(
                &m.report,
                &m.host_verify,
                &spec.expect,
                counters.get("sdxi"),
            );
            if runs.len() > 1 {
                c.iter_mut()
                    .for_each(|c| c.name = format!("{}.{}", m.name, c.name));
            }
            checks.extend(c);
        }
        if let (Some(r), Some(spec)) = (&file.bench, &f.bench) {
            checks.extend(migration::bench_checks(spec, r));
        }
    }
    checks.push(check(
        "no_stray_processes",
        teardown.stray_processes.is_empty(),
        format!("{:?}", teardown.stray_processes),
    ));
    checks
}

/// Writes `result.json` and the report (report.md, report.html, plots) into the run
/// directory.
fn write_result(result: &RunResult, run: &vm::RunDir) -> Result<(), RunError> {
    let path = run.path("result.json");
    let json =
        serde_json::to_vec_pretty(result).map_err(|e| RunError::Results(path.clone(), e.into()))?;
    std::fs::write(&path, json).map_err(|e| RunError::Results(path.clone(), e))?;
    document::write(result, &run.dir).map_err(|e| RunError::Results(run.path("report.md"), e))
}
