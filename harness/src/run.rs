//! One scenario run: provision, boot, run the scenario's steps through the guest agent,
//! shut down, check, and write `result.json` and the report into the run directory.

use crate::config::{self, VmConfig};
use crate::faults::{control_after_copies, wait_for_sdxi_copies};
use crate::provision::{provision, reclaim_leftovers};
use crate::report::{RunResult, Timings, RESULT_SCHEMA_VERSION};
use crate::{document, migration, scenario, vm, RunError, ToolPaths};
use guest_agent::protocol::{Reply, Request};
use images::Progress;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

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
