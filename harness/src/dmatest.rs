//! `harness run dmatest`: the kernel's DMA-engine test (`drivers/dma/dmatest.c`) against the
//! emulated SDXi function, through a dmaengine driver in the guest kernel: the user's
//! (`--module PATH[:PARAMS]`, `--build-module DIR`, as in `bringup`) or, with none given, the
//! project's own fixture (`harness/fixtures/sdxi-dma`).
//!
//! A dmatest scenario is a file with a `[dmatest]` table ([`DmatestSpec`]; the built-in
//! `dmatest` is `harness/scenarios/dmatest.toml`): the channels, threads per channel, modes
//! (polled, interrupt) and buffer sizes with their iterations. One boot in bring-up mode
//! loads the driver and `dmatest.ko` (built for the guest kernel, [`build`]), runs every
//! mode x size in turn ([`guest`]), unloads the modules, and returns what the kernel logged.
//! Each channel's dmatest summary in each run becomes a check (and so a JUnit case); a
//! failed or missing summary, a run past its time limit, or a WARN/BUG/oops anywhere in the
//! kernel log fails the run, with the kernel log's excerpt in the check and in `report.md`.

pub mod build;
pub mod guest;

use crate::bringup::{bringup, BringupReport, BringupSpec};
use crate::config::{Accel, VmConfig};
use crate::migration::{ScenarioError, ScenarioFile};
use crate::provision::provision;
use crate::report::{RunResult, Timings};
use crate::scenario::{check, Check};
use crate::{vm, RunError, ToolPaths};
use guest::{Output, RunPlan, ScriptPlan};
use images::Progress;
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

/// The built-in dmatest scenario's name.
pub const BUILTIN: &str = "dmatest";
/// Its line in `harness scenarios`.
pub const ABOUT: &str = "the kernel's dmatest against the SDXi function through a dmaengine driver (yours: --module/--build-module; else the project's fixture): polled and interrupt, 2 channels x 2 threads, IOMMU on";
const BUILTIN_FILE: &str = include_str!("../scenarios/dmatest.toml");

/// Completion modes of dmatest (its `polled` parameter).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Polled,
    Interrupt,
}

/// One buffer size and the iterations each thread runs with it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SizeSpec {
    /// dmatest's `test_buf_size`, bytes.
    pub buffer: u64,
    pub iterations: u64,
}

/// A scenario file's `[dmatest]` table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DmatestSpec {
    /// Channels tested (the first ones in /sys/class/dma); each gets `threads_per_chan`.
    pub channels: u32,
    pub threads_per_chan: u32,
    pub modes: Vec<Mode>,
    pub sizes: Vec<SizeSpec>,
    /// dmatest's per-transfer `timeout` (interrupt mode; polled waits use the kernel's 5 s).
    pub timeout_ms: u64,
    /// dmatest's `norandom`: whole buffers instead of random lengths and offsets.
    pub norandom: bool,
    /// Seconds one run (a mode x a size) may take before it is stopped and failed.
    pub run_timeout_s: u64,
    /// Parameters of the fixture driver when no `--module`/`--build-module` is given, e.g.
    /// `never_complete=1` (its broken variant).
    pub fixture_params: String,
    /// Unload dmatest and the driver at the end (module removal must work).
    pub unload: bool,
}

impl Default for DmatestSpec {
    fn default() -> Self {
        Self {
            channels: 2,
            threads_per_chan: 2,
            modes: vec![Mode::Polled, Mode::Interrupt],
            sizes: vec![SizeSpec {
                buffer: 4096,
                iterations: 2000,
            }],
            timeout_ms: 3000,
            norandom: false,
            run_timeout_s: 600,
            fixture_params: String::new(),
            unload: true,
        }
    }
}

/// A dmatest scenario file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DmatestFile {
    #[serde(default)]
    pub description: String,
    /// Overrides of the VM configuration (a config file's `[vm]` keys).
    #[serde(default)]
    pub vm: toml::Table,
    pub dmatest: DmatestSpec,
}

impl DmatestFile {
    pub fn parse(name: &str, text: &str) -> Result<Self, ScenarioError> {
        let f: Self = toml::from_str(text).map_err(|e| ScenarioError::Parse(name.into(), e))?;
        let d = &f.dmatest;
        let bad = |why: &str| Err(ScenarioError::Invalid(name.into(), why.into()));
        if d.channels == 0 || d.threads_per_chan == 0 {
            return bad("[dmatest] needs at least one channel and one thread per channel");
        }
        if d.modes.is_empty() || d.sizes.is_empty() {
            return bad("[dmatest] needs at least one mode and one size");
        }
        if d.sizes.iter().any(|s| s.buffer == 0 || s.iterations == 0) {
            return bad("[[dmatest.sizes]]: buffer and iterations must be at least 1");
        }
        if d.run_timeout_s == 0 || d.timeout_ms == 0 {
            return bad("[dmatest] timeouts must be at least 1");
        }
        if d.run_timeout_s > 86_400 || d.timeout_ms > i32::MAX as u64 {
            return bad("[dmatest] run_timeout_s is at most 86400 and timeout_ms at most 2147483647 (dmatest's int)");
        }
        if d.sizes
            .iter()
            .any(|s| s.iterations > u64::from(u32::MAX) || s.buffer > u64::from(u32::MAX))
        {
            return bad("[[dmatest.sizes]]: buffer and iterations are at most 4294967295 (dmatest's unsigned int)");
        }
        let labels: Vec<String> = f.plans().iter().map(RunPlan::label).collect();
        if let Some(l) = labels
            .iter()
            .find(|l| labels.iter().filter(|x| x == l).count() > 1)
        {
            return bad(&format!(
                "[dmatest] the run {l} is asked for twice (a mode or a buffer size repeated)"
            ));
        }
        Ok(f)
    }

    /// Every run in order: each size in each mode.
    pub fn plans(&self) -> Vec<RunPlan> {
        let d = &self.dmatest;
        d.modes
            .iter()
            .flat_map(|m| {
                d.sizes.iter().map(move |s| RunPlan {
                    polled: *m == Mode::Polled,
                    buffer: s.buffer,
                    iterations: s.iterations,
                })
            })
            .collect()
    }
}

/// The dmatest scenario `name` names: the built-in, or a `*.toml` file with a `[dmatest]`
/// table; None for anything else (other scenarios).
pub fn resolve(name: &str) -> Result<Option<DmatestFile>, ScenarioError> {
    if name == BUILTIN {
        return DmatestFile::parse(name, BUILTIN_FILE).map(Some);
    }
    if !name.ends_with(".toml") {
        return Ok(None);
    }
    let Ok(text) = std::fs::read_to_string(name) else {
        return Ok(None);
    };
    let is_dmatest = toml::from_str::<toml::Table>(&text)
        .map(|t| t.contains_key("dmatest"))
        .unwrap_or(false);
    if is_dmatest {
        DmatestFile::parse(name, &text).map(Some)
    } else {
        Ok(None)
    }
}

/// The driver under test, from the command line (`harness run --module/--build-module`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Driver {
    /// Kbuild trees to build for the guest kernel (loaded first, dependencies first).
    pub builds: Vec<PathBuf>,
    /// (module file, parameters), loaded in order after the built ones.
    pub modules: Vec<(PathBuf, String)>,
}

impl Driver {
    /// The fixture is used when the user gives no driver.
    pub fn is_fixture(&self) -> bool {
        self.builds.is_empty() && self.modules.is_empty()
    }
}

/// `harness run`'s options for dmatest scenarios: the driver under test and the IOMMU.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct DriverArgs {
    /// dmatest scenarios: load this dmaengine driver module (.ko, .ko.xz, .ko.zst) instead of
    /// the project's fixture, optionally `PATH:param=value,...`; repeatable, loaded in order.
    #[arg(long = "module", value_name = "PATH[:PARAMS]")]
    pub modules: Vec<String>,
    /// dmatest scenarios: build this out-of-tree Kbuild tree for the guest kernel (as
    /// `bringup --build-module` does) and load its modules first; repeatable.
    #[arg(long = "build-module", value_name = "DIR")]
    pub build_modules: Vec<PathBuf>,
    /// Put the virtual IOMMU in front of the devices (DMA addresses are IOVAs) or not
    /// (guest-physical) [default: on].
    #[arg(long, value_name = "on|off", value_parser = ["on", "off"])]
    pub iommu: Option<String>,
}

impl DriverArgs {
    /// Sets the driver and the IOMMU in `cfg`.
    pub fn apply(&self, cfg: &mut VmConfig) {
        cfg.dmatest_driver = Driver {
            builds: self.build_modules.clone(),
            modules: self.modules.iter().map(|m| module_arg(m)).collect(),
        };
        if let Some(v) = &self.iommu {
            cfg.iommu = v == "on";
        }
    }
}

/// A driver given for `scenarios` none of which is a dmatest scenario is a usage error, and so
/// is a module or tree that is not there.
pub fn check_driver_use(scenarios: &[String], cfg: &VmConfig) -> Result<(), String> {
    let d = &cfg.dmatest_driver;
    if d.is_fixture() {
        return Ok(());
    }
    if !scenarios.iter().any(|s| matches!(resolve(s), Ok(Some(_)))) {
        return Err("--module and --build-module apply to dmatest scenarios (`harness run dmatest`); other scenarios load no driver of yours".into());
    }
    crate::bringup::check_driver_paths(&d.modules, &d.builds)
}

/// `PATH[:param=value,...]` as `(PATH, "param=value ...")`, the way `--module` takes it. A
/// comma starts a new parameter only before `name=`; otherwise it belongs to the value, as in
/// an array parameter (`ids=1,2,3`).
pub fn module_arg(s: &str) -> (PathBuf, String) {
    let Some((p, params)) = s.split_once(':') else {
        return (PathBuf::from(s), String::new());
    };
    let starts_param = |seg: &str| {
        seg.split_once('=').is_some_and(|(k, _)| {
            !k.is_empty()
                && k.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
        })
    };
    let mut out = String::new();
    for (i, seg) in params.split(',').enumerate() {
        if i > 0 {
            out.push(if starts_param(seg) { ' ' } else { ',' });
        }
        out.push_str(seg);
    }
    (PathBuf::from(p), out)
}

/// Builds the driver (or the fixture) and dmatest; returns the modules in load order.
fn modules(
    cfg: &VmConfig,
    driver: &Driver,
    spec: &DmatestSpec,
    kernel: &images::Kernel,
    progress: &mut dyn Progress,
) -> Result<Vec<(PathBuf, String)>, RunError> {
    let mut all = Vec::new();
    let (builds, given) = if driver.is_fixture() {
        let tree = build::fixture_tree(&cfg.cache_dir, &kernel.release)?;
        (vec![(tree, spec.fixture_params.clone())], Vec::new())
    } else {
        let b = driver.builds.iter().map(|d| (d.clone(), String::new()));
        (b.collect(), driver.modules.clone())
    };
    if !builds.is_empty() && kernel.user {
        return Err(crate::config::ConfigError::Invalid(format!(
            "{} builds for the provisioned Debian kernel's headers, not for --kernel-image {}: build your driver against your kernel tree and pass it with --module",
            if driver.is_fixture() {
                "the fixture driver (no --module given)"
            } else {
                "--build-module"
            },
            kernel.vmlinux.display()
        ))
        .into());
    }
    if !builds.is_empty() {
        let root = images::kbuild::build_root(&cfg.cache_dir, &kernel.release, progress)?;
        for (dir, params) in builds {
            for ko in images::kbuild::build_module(&root, &kernel.release, &dir, progress)? {
                all.push((ko, params.clone()));
            }
        }
    }
    all.extend(given);
    let named = |p: &Path| images::kernel::module_name(p).unwrap_or_default();
    if !all.iter().any(|(p, _)| named(p) == "dmatest") {
        let ko = match tree_dmatest(kernel) {
            Some(ko) => ko,
            None => build::dmatest_module(&cfg.cache_dir, kernel, progress).map_err(|e| {
                crate::config::ConfigError::Invalid(format!(
                    "cannot build dmatest.ko for kernel {} ({e}); build your kernel with CONFIG_DMATEST=m and give its module tree (--modules-dir), or pass the module as --module PATH/dmatest.ko",
                    kernel.release
                ))
            })?,
        };
        all.push((ko, String::new()));
    }
    Ok(all)
}

/// A kernel under test's own `dmatest.ko` (CONFIG_DMATEST=m), from its module tree.
fn tree_dmatest(kernel: &images::Kernel) -> Option<PathBuf> {
    if !kernel.user || kernel.modules_dir.as_os_str().is_empty() {
        return None;
    }
    let index = images::kernel::ModuleIndex::scan(&kernel.modules_dir).ok()?;
    index.file("dmatest").map(Path::to_owned)
}

/// Runs a dmatest scenario: one bring-up boot, every run, the checks; writes `result.json`,
/// `dmatest.json` and `report.md` into the run directory.
#[allow(clippy::too_many_arguments)]
pub fn execute(
    cfg: &VmConfig,
    paths: &ToolPaths,
    name: &str,
    file: &DmatestFile,
    driver: &Driver,
    results_dir: Option<&Path>,
    interrupted: Arc<AtomicBool>,
    progress: &mut dyn Progress,
) -> Result<RunResult, RunError> {
    let t0 = Instant::now();
    let with_vm = ScenarioFile {
        vm: file.vm.clone(),
        ..ScenarioFile::default()
    };
    let mut cfg = with_vm.apply(cfg, name)?;
    // A log buffer that holds a whole run's kernel log: a WARN early in a chatty run must still
    // be there when the script reads the log at the run's end.
    cfg.kernel_args = format!("{} log_buf_len=16M", cfg.kernel_args)
        .trim()
        .to_owned();
    let accel = vm::choose_accel(cfg.accel).map_err(RunError::Accel)?;
    cfg.accel = if accel.accel == "kvm" {
        Accel::Kvm
    } else {
        Accel::Tcg
    };
    let (_, imgs) = provision(&cfg, paths, false, progress)?;
    // The kernel must have what a bring-up boot and the dmaengine API need, before any build.
    let mut needs = crate::kernel_loop::bringup_needs(&cfg);
    needs.extend(crate::kernel_loop::DMATEST);
    crate::kernel_loop::check_config(&cfg, &imgs, &needs, &format!("scenario {name}"), progress)?;
    let spec = &file.dmatest;
    let mods = modules(&cfg, driver, spec, &imgs.kernel, progress)?;
    let plans = file.plans();
    let mut unload: Vec<String> = Vec::new();
    if spec.unload {
        unload = mods
            .iter()
            .rev()
            .filter_map(|(p, _)| images::kernel::module_name(p))
            .collect();
        // dmatest holds the channels: it goes first.
        unload.sort_by_key(|m| m != "dmatest");
    }
    let text = guest::script(&ScriptPlan {
        channels: spec.channels,
        threads_per_chan: spec.threads_per_chan,
        timeout_ms: spec.timeout_ms,
        norandom: spec.norandom,
        run_timeout_s: spec.run_timeout_s,
        unload,
        runs: plans.clone(),
    });
    let script = ScriptFile::write(&cfg.cache_dir.join("dmatest"), &text)?;
    // The whole script is one bring-up "request": every run's limit, and the time stopping a
    // run may take (each thread waits out its transfer's timeout), plus loading and unloading.
    let threads = u64::from(spec.channels) * u64::from(spec.threads_per_chan);
    let stop_s = threads * spec.timeout_ms.max(5000) / 1000;
    cfg.request_timeout_s =
        cfg.request_timeout_s + plans.len() as u64 * (spec.run_timeout_s + stop_s + 10) + 60;
    let provision_s = t0.elapsed().as_secs_f64();
    progress.step(&format!(
        "dmatest: {} runs ({} channels x {} threads) with {}",
        plans.len(),
        spec.channels,
        spec.threads_per_chan,
        if driver.is_fixture() {
            format!("the fixture driver {}", build::FIXTURE_MODULE)
        } else {
            "your driver".to_owned()
        }
    ));
    let t1 = Instant::now();
    let bspec = BringupSpec {
        modules: mods,
        script: Some(script.0.clone()),
        ..BringupSpec::default()
    };
    let rep = match bringup(&cfg, paths, &bspec, results_dir, interrupted, progress) {
        // The guest stopped answering while dmatest ran: the driver's failure, not the test
        // bed's (a boot that never got as far as the script stays a test-bed error).
        Err(RunError::Vm(vm::VmError::Timeout(..), dir)) if script_started(&dir) => Err(dir),
        r => Ok(r?),
    };
    drop(script);
    let (rep, out, checks) = match rep {
        Ok(rep) => {
            let out = guest::parse(&rep.output);
            let checks = checks(spec, &plans, &rep, &out);
            (rep, out, checks)
        }
        Err(dir) => {
            let (rep, checks) = hung(dir);
            (rep, Output::default(), checks)
        }
    };
    let timings = Timings {
        provision_s,
        boot_to_agent_s: 0.0,
        scenario_s: t1.elapsed().as_secs_f64(),
        shutdown_s: 0.0,
        total_s: t0.elapsed().as_secs_f64(),
    };
    let result = RunResult::new(
        name,
        checks,
        accel,
        timings,
        &imgs,
        rep.teardown.clone(),
        rep.run_dir.clone(),
    );
    write_reports(&result, file, &out, &rep)?;
    Ok(result)
}

/// The guest script, kept in the cache for the boot and removed afterwards.
struct ScriptFile(PathBuf);

impl ScriptFile {
    fn write(dir: &Path, text: &str) -> Result<Self, RunError> {
        std::fs::create_dir_all(dir).map_err(|e| RunError::Results(dir.to_owned(), e))?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let p = dir.join(format!("script-{}-{nanos}.sh", std::process::id()));
        let mut f = vm::private_file(&p).map_err(|e| RunError::Results(p.clone(), e))?;
        std::io::Write::write_all(&mut f, text.as_bytes())
            .map_err(|e| RunError::Results(p.clone(), e))?;
        Ok(Self(p))
    }
}

impl Drop for ScriptFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The first `n` lines of `lines`, indented, for a check's detail.
fn excerpt(lines: &[String], n: usize) -> String {
    let mut s = String::new();
    for l in lines.iter().take(n) {
        let _ = write!(s, "\n    {}", l.trim());
    }
    if lines.len() > n {
        let _ = write!(s, "\n    ... {} more lines in report.md", lines.len() - n);
    }
    s
}

/// Whether the guest script had started its runs: its progress lines reach the console.
fn script_started(run_dir: &Path) -> bool {
    std::fs::read(run_dir.join("console.log")).is_ok_and(|b| {
        let mark = format!("{}dmatest", crate::bringup::PROGRESS_MARK);
        b.windows(mark.len()).any(|w| w == mark.as_bytes())
    })
}

/// The verdict of a guest that stopped answering during the runs: one failed check with the
/// end of its console (where a hung task, a soft lockup or a panic shows).
fn hung(run_dir: PathBuf) -> (BringupReport, Vec<Check>) {
    let text = std::fs::read(run_dir.join("console.log")).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let tail = &lines[lines.len().saturating_sub(30)..];
    let c = check(
        "dmatest.finished",
        false,
        format!(
            "the guest stopped answering while dmatest ran (a hung kernel or driver?); its console ends:{}",
            excerpt(tail, 30)
        ),
    );
    let rep = BringupReport {
        modules: Vec::new(),
        exit_code: None,
        output: String::new(),
        teardown: vm::Teardown::default(),
        run_dir,
    };
    (rep, vec![c])
}

/// Every check of a dmatest boot.
pub fn checks(
    spec: &DmatestSpec,
    plans: &[RunPlan],
    rep: &BringupReport,
    out: &Output,
) -> Vec<Check> {
    let mut c = Vec::new();
    let failed: Vec<&String> = rep
        .modules
        .iter()
        .filter(|m| !m.starts_with("ok "))
        .collect();
    c.push(check(
        "dmatest.modules",
        failed.is_empty() && !rep.modules.is_empty(),
        if failed.is_empty() {
            rep.modules.join("; ")
        } else {
            let tail = &out.load_log[out.load_log.len().saturating_sub(10)..];
            format!(
                "{}; kernel log:{}",
                rep.modules.join("; "),
                excerpt(tail, 10)
            )
        },
    ));
    c.push(check(
        "dmatest.channels",
        out.channels.len() >= spec.channels as usize && out.errors.is_empty(),
        format!(
            "{} of {} channels: {}{}",
            out.channels.len(),
            spec.channels,
            out.channels.join(" "),
            if out.errors.is_empty() {
                String::new()
            } else {
                format!(" ({})", out.errors.join("; "))
            }
        ),
    ));
    for p in plans {
        // Labels are unique (`DmatestFile::parse`), so a run is found by its own label.
        let run = out.runs.iter().find(|r| r.label == p.label());
        for ch in &out.channels {
            c.push(channel_check(spec, p, run, ch));
        }
    }
    c.push(check(
        "dmatest.kernel_log",
        out.problems.is_empty(),
        if out.problems.is_empty() {
            "no WARN, BUG, oops, lockup or IOMMU fault in the kernel log".into()
        } else {
            format!(
                "{} problem lines:{}",
                out.problems.len(),
                excerpt(&out.problems, 12)
            )
        },
    ));
    if spec.unload {
        let u = out.unload.clone().unwrap_or_else(|| "never reached".into());
        c.push(check("dmatest.unload", u == "ok", format!("rmmod: {u}")));
    }
    c
}

/// One channel's verdict in one run: every thread's summary, all tests run, none failed.
fn channel_check(
    spec: &DmatestSpec,
    p: &RunPlan,
    run: Option<&guest::RunOutput>,
    ch: &str,
) -> Check {
    let name = format!("dmatest.{}.{ch}", p.label());
    let Some(run) = run else {
        return check(&name, false, "the run never started (see the log)".into());
    };
    let sums: Vec<&guest::Summary> = run.summaries.iter().filter(|s| s.channel == ch).collect();
    let tests: u64 = sums.iter().map(|s| s.tests).sum();
    let failures: u64 = sums.iter().map(|s| s.failures).sum();
    let iops: f64 = sums.iter().map(|s| s.iops).sum();
    let kbs: u64 = sums.iter().map(|s| s.kbs).sum();
    let want = p.iterations * u64::from(spec.threads_per_chan);
    let finished = run.status == "finished";
    let ret_ok = sums.iter().all(|s| s.ret == 0);
    // dmatest turns polling off for a driver that declares DMA_COMPLETION_NO_ORDER; the run
    // then tests interrupts, not what its name says.
    let not_polled = p.polled && run.log.iter().any(|l| l.contains("polled disabled"));
    let passed = finished
        && sums.len() == spec.threads_per_chan as usize
        && tests == want
        && failures == 0
        && ret_ok
        && !not_polled;
    let mut detail = format!(
        "{tests}/{want} tests, {failures} failures, {} of {} threads reported; {iops:.1} iops, {kbs} KB/s; run {} after {:.1} s",
        sums.len(),
        spec.threads_per_chan,
        if run.status.is_empty() { "cut short" } else { &run.status },
        run.seconds
    );
    if !ret_ok {
        detail.push_str("; a thread ended with an error (the summary's result is not 0)");
    }
    if not_polled {
        detail.push_str("; dmatest disabled polling (the driver declares DMA_COMPLETION_NO_ORDER): this run tested interrupts");
    }
    if !passed {
        let mine: Vec<String> = run
            .log
            .iter()
            .filter(|l| l.contains(ch) || !l.contains("dmatest: "))
            .cloned()
            .collect();
        let _ = write!(detail, "; kernel log:{}", excerpt(&mine, 10));
    }
    check(&name, passed, detail)
}

/// `result.json`, `dmatest.json` (every summary and the kept kernel log), the guest's output,
/// `report.html` (the checks) and `report.md` (runs x channels, the kernel log of failures).
fn write_reports(
    r: &RunResult,
    file: &DmatestFile,
    out: &Output,
    rep: &BringupReport,
) -> Result<(), RunError> {
    let put = |name: &str, bytes: &[u8]| {
        let p = r.run_dir.join(name);
        std::fs::write(&p, bytes).map_err(|e| RunError::Results(p.clone(), e))
    };
    put(
        "result.json",
        &serde_json::to_vec_pretty(r).unwrap_or_default(),
    )?;
    let d = serde_json::json!({
        "spec": file.dmatest,
        "modules": rep.modules,
        "output": out,
    });
    put(
        "dmatest.json",
        &serde_json::to_vec_pretty(&d).unwrap_or_default(),
    )?;
    put("dmatest-guest.log", rep.output.as_bytes())?;
    // report.html with the checks, then report.md with the table and the kernel log.
    crate::document::write(r, &r.run_dir).map_err(|e| RunError::Results(r.run_dir.clone(), e))?;
    put("report.md", markdown(r, file, out).as_bytes())
}

/// The report: the verdict, a table of runs x channels, and the kernel log of what failed.
pub fn markdown(r: &RunResult, file: &DmatestFile, out: &Output) -> String {
    let d = &file.dmatest;
    let mut s = format!(
        "# dmatest: {}\n\n{}\n\n{} channels x {} threads, timeout {} ms, kernel {}, accel {}; run directory `{}`\n\n",
        if r.passed { "PASSED" } else { "FAILED" },
        file.description,
        d.channels,
        d.threads_per_chan,
        d.timeout_ms,
        r.kernel,
        r.accel.accel,
        r.run_dir.display()
    );
    s.push_str("| run | channel | tests | failures | iops | KB/s | run time (s) |\n|---|---|---|---|---|---|---|\n");
    for run in &out.runs {
        for ch in &out.channels {
            let sums: Vec<_> = run.summaries.iter().filter(|x| &x.channel == ch).collect();
            let _ = writeln!(
                s,
                "| {} | {ch} | {} | {} | {:.1} | {} | {:.1} |",
                run.label,
                sums.iter().map(|x| x.tests).sum::<u64>(),
                sums.iter().map(|x| x.failures).sum::<u64>(),
                sums.iter().map(|x| x.iops).sum::<f64>(),
                sums.iter().map(|x| x.kbs).sum::<u64>(),
                run.seconds
            );
        }
    }
    s.push_str("\n## Checks\n\n");
    for c in &r.checks {
        let _ = writeln!(
            s,
            "- {} `{}`: {}",
            if c.passed { "PASS" } else { "FAIL" },
            c.name,
            c.detail.replace('\n', "\n  ")
        );
    }
    if !out.problems.is_empty() {
        s.push_str("\n## Kernel problems\n\n```\n");
        for l in &out.problems {
            let _ = writeln!(s, "{l}");
        }
        s.push_str("```\n");
    }
    for run in out.runs.iter().filter(|x| {
        r.checks
            .iter()
            .any(|c| !c.passed && c.name.starts_with(&format!("dmatest.{}.", x.label)))
    }) {
        let _ = write!(s, "\n## Kernel log of {} (as kept)\n\n```\n", run.label);
        for l in &run.log {
            let _ = writeln!(s, "{l}");
        }
        s.push_str("```\n");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_kernel_s_own_dmatest_module_is_taken_from_its_tree() {
        let tree = std::env::temp_dir().join(format!("dmatest-tree-{}", std::process::id()));
        let ko = tree.join("kernel/drivers/dma/dmatest.ko.xz");
        std::fs::create_dir_all(ko.parent().expect("parent")).expect("mkdir");
        std::fs::write(&ko, b"").expect("write");
        let mut k = images::Kernel {
            package: "user".into(),
            version: String::new(),
            release: "7.3.0-mine".into(),
            vmlinux: PathBuf::from("/k/bzImage"),
            modules_dir: tree.clone(),
            download_bytes: 0,
            user: true,
        };
        assert_eq!(tree_dmatest(&k).as_deref(), Some(ko.as_path()));
        k.user = false;
        assert_eq!(
            tree_dmatest(&k),
            None,
            "Debian's kernel has none: it is built"
        );
        std::fs::remove_file(&ko).expect("rm");
        k.user = true;
        assert_eq!(tree_dmatest(&k), None, "a tree without it: built or given");
        let _ = std::fs::remove_dir_all(&tree);
    }

    fn report(output: &str, modules: &[&str]) -> BringupReport {
        BringupReport {
            modules: modules.iter().map(|m| (*m).to_owned()).collect(),
            exit_code: Some(0),
            output: output.to_owned(),
            teardown: vm::Teardown::default(),
            run_dir: PathBuf::from("/nonexistent"),
        }
    }

    fn spec_1x1() -> DmatestFile {
        DmatestFile::parse(
            "t",
            "[dmatest]\nchannels = 1\nthreads_per_chan = 2\nmodes = [\"polled\"]\nsizes = [{ buffer = 4096, iterations = 10 }]\n",
        )
        .expect("parse")
    }

    #[test]
    fn the_builtin_file_parses_and_runs_each_size_in_each_mode() {
        let f = resolve(BUILTIN).expect("parse").expect("built in");
        let plans = f.plans();
        assert_eq!(plans.len(), f.dmatest.modes.len() * f.dmatest.sizes.len());
        assert!(plans.iter().any(|p| p.polled) && plans.iter().any(|p| !p.polled));
        assert_eq!(resolve("migrate").expect("not ours"), None);
    }

    #[test]
    fn bad_files_are_refused_naming_what_is_wrong() {
        let e = DmatestFile::parse("f", "[dmatest]\nchannels = 0\n").expect_err("refused");
        assert!(e.to_string().contains("f"), "{e}");
        let e = DmatestFile::parse("f", "[dmatest]\nsizes = []\n").expect_err("refused");
        assert!(matches!(e, ScenarioError::Invalid(..)), "{e}");
        let e = DmatestFile::parse("f", "[dmatest]\ncolour = 1\n").expect_err("unknown key");
        assert!(matches!(e, ScenarioError::Parse(..)), "{e}");
        assert_eq!(
            module_arg("/x/a.ko:p=1,q=2"),
            (PathBuf::from("/x/a.ko"), "p=1 q=2".to_owned())
        );
        assert_eq!(
            module_arg("/x/a.ko:ids=1,2,3,dyndbg=+p,flag"),
            (
                PathBuf::from("/x/a.ko"),
                "ids=1,2,3 dyndbg=+p,flag".to_owned()
            )
        );
        assert_eq!(
            module_arg("/x/a.ko"),
            (PathBuf::from("/x/a.ko"), String::new())
        );
    }

    #[test]
    fn each_channel_passes_only_with_every_thread_summary_and_no_failure() {
        let f = spec_1x1();
        let plans = f.plans();
        let verdict = |text: &str, modules: &[&str]| {
            checks(
                &f.dmatest,
                &plans,
                &report(text, modules),
                &guest::parse(text),
            )
        };
        let named = |c: &[Check], name: &str| {
            c.iter()
                .find(|c| c.name == name)
                .cloned()
                .unwrap_or_else(|| panic!("no {name}"))
        };
        let ok = "@@dmatest channels dma0chan0\n@@dmatest run polled.4KiB begin\n\
            dmatest: dma0chan0-copy0: summary 10 tests, 0 failures 5.00 iops 20 KB/s (0)\n\
            dmatest: dma0chan0-copy1: summary 10 tests, 0 failures 5.00 iops 20 KB/s (0)\n\
            @@dmatest run polled.4KiB end finished 1.00 3.00\n@@dmatest unload ok\n";
        let c = verdict(ok, &["ok fx", "ok dmatest"]);
        assert!(c.iter().all(|c| c.passed), "{c:#?}");
        let chan = "dmatest.polled.4KiB.dma0chan0";
        assert!(named(&c, chan)
            .detail
            .starts_with("20/20 tests, 0 failures"));

        let one_thread_failed = ok
            .replace("copy1: summary 10 tests, 0 failures", "copy1: summary 10 tests, 2 failures")
            .replace(
                "@@dmatest run polled.4KiB end",
                "[ 9.1] dmatest: dma0chan0-copy1: result #4: 'test timed out'\n@@dmatest run polled.4KiB end",
            );
        let ch = named(&verdict(&one_thread_failed, &["ok fx"]), chan);
        assert!(!ch.passed);
        assert!(ch.detail.contains("test timed out"), "{}", ch.detail);

        let warn = ok.replace(
            "@@dmatest unload ok",
            "[ 9.9] WARNING: CPU: 1 PID: 7 at x.c:1\n@@dmatest unload ok",
        );
        assert!(!named(&verdict(&warn, &["ok fx"]), "dmatest.kernel_log").passed);

        // Cut short before the run's end: the channel and the unload fail.
        let cut = &ok[..ok.find("@@dmatest run polled.4KiB end").expect("end")];
        let c = verdict(cut, &["ok fx"]);
        assert!(!named(&c, chan).passed && !named(&c, "dmatest.unload").passed);

        let timeout = ok.replace("end finished", "end timeout");
        assert!(!named(&verdict(&timeout, &["ok fx"]), chan).passed);

        let one_thread = ok.replace("copy1", "copy0");
        assert!(
            !named(&verdict(&one_thread, &["ok fx"]), chan).passed,
            "a thread is missing"
        );

        assert!(!verdict(ok, &["failed fx: -19"])[0].passed);

        let thread_error = ok.replace(
            "copy1: summary 10 tests, 0 failures 5.00 iops 20 KB/s (0)",
            "copy1: summary 10 tests, 0 failures 5.00 iops 20 KB/s (-12)",
        );
        let ch = named(&verdict(&thread_error, &["ok fx"]), chan);
        assert!(
            !ch.passed && ch.detail.contains("ended with an error"),
            "{ch:?}"
        );

        let not_polled = ok.replace(
            "@@dmatest run polled.4KiB begin\n",
            "@@dmatest run polled.4KiB begin\n[ 2.0] dmatest: DMA_COMPLETION_NO_ORDER, polled disabled\n",
        );
        let ch = named(&verdict(&not_polled, &["ok fx"]), chan);
        assert!(
            !ch.passed && ch.detail.contains("tested interrupts"),
            "{ch:?}"
        );

        let refused = ok.replace(
            "@@dmatest channels dma0chan0\n",
            "@@dmatest channels dma0chan0\n@@dmatest error parameter timeout refused 99999999999\n",
        );
        let ch = named(&verdict(&refused, &["ok fx"]), "dmatest.channels");
        assert!(!ch.passed && ch.detail.contains("refused"), "{ch:?}");
    }

    #[test]
    fn a_guest_that_hangs_during_the_runs_fails_with_its_console() {
        let dir = std::env::temp_dir().join(format!("dmatest-hung-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let log = dir.join("console.log");
        std::fs::write(&log, "[ 1.0] booting\n").expect("write");
        assert!(!script_started(&dir), "a boot that never ran the script");
        std::fs::write(
            &log,
            "[ 1.0] booting\n@@progress dmatest polled.1MiB: 20000 iterations, started\n\
             [ 99.0] watchdog: BUG: soft lockup - CPU#1 stuck for 26s!\n",
        )
        .expect("write");
        assert!(script_started(&dir));
        let (rep, checks) = hung(dir.clone());
        assert_eq!(rep.run_dir, dir);
        assert_eq!(checks.len(), 1);
        assert!(!checks[0].passed);
        assert!(
            checks[0].detail.contains("soft lockup"),
            "{}",
            checks[0].detail
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_run_asked_for_twice_or_an_out_of_range_value_is_refused() {
        let twice =
            "[dmatest]\nchannels = 1\nthreads_per_chan = 1\nmodes = [\"polled\", \"polled\"]\n\
            [[dmatest.sizes]]\nbuffer = 4096\niterations = 1\n";
        let e = DmatestFile::parse("f", twice).expect_err("refused");
        assert!(
            e.to_string().contains("polled.4KiB") || format!("{e:?}").contains("polled.4KiB"),
            "{e:?}"
        );
        let huge = "[dmatest]\nchannels = 1\nthreads_per_chan = 1\nmodes = [\"polled\"]\n\
            timeout_ms = 99999999999\n[[dmatest.sizes]]\nbuffer = 4096\niterations = 1\n";
        let e = DmatestFile::parse("f", huge).expect_err("refused");
        assert!(format!("{e:?}").contains("timeout_ms"), "{e:?}");
    }
}
