//! `harness run` (one scenario, or several with JUnit output, shards and jobs), `harness demo`
//! (the main job) and `harness scenarios`.

use crate::vm_args::VmArgs;
use crate::{
    print_chain, run_error_exit, Ctx, EXIT_INFRA, EXIT_INTERRUPTED, EXIT_PASS, EXIT_TEST_FAILED,
    EXIT_USAGE,
};
use clap::Args;
use harness::report::Outcome;
use harness::ToolPaths;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

#[derive(Debug, Args)]
pub(crate) struct RunCmd {
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
pub(crate) struct DemoCmd {
    #[command(flatten)]
    vm: VmArgs,
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
    pub(crate) fn run(&self, mut ctx: Ctx) -> ExitCode {
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
    pub(crate) fn run(&self, mut ctx: Ctx) -> ExitCode {
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

pub(crate) fn list_scenarios() -> ExitCode {
    for b in harness::scenario::BUILTIN {
        println!("{:<14} {}", b.name, b.about);
    }
    println!(
        "\nA scenario can also be a file: harness run path/to/scenario.toml (see harness/scenarios/)."
    );
    ExitCode::SUCCESS
}
