//! Scenarios: what runs in a booted test bed and the checks that decide pass or fail.
//!
//! A scenario is a value, [`Scenario`]: what it needs from the test bed ([`Needs`]), the
//! [`Step`]s it sends the guest agent in order (each a request and the checks of its reply),
//! and optionally a scenario file's migration runs or copy benchmark ([`ScenarioFile`],
//! see [`crate::migration`]). Every scenario starts with the [`inventory`] step. The
//! run itself ([`crate::run`]) knows no scenario by name.
//!
//! The built-in scenarios are the entries of [`BUILTIN`]. To add one:
//! 1. write its step in a module of its own, like [`sdxi_copy`] or [`chmu_hot`]: a
//!    `pub const STEP: Step` whose `request` builds the agent request from the configuration
//!    and whose `check` turns the reply and the device counters (taken at shutdown) into
//!    [`Check`]s; a new request and reply kind is a variant in
//!    `guest_agent::protocol::{Request, Reply}`, and a reply the result has no field for
//!    lands in `RunResult::steps`;
//! 2. add one [`Builtin`] entry to [`BUILTIN`] naming its steps and its [`Needs`] (or, for
//!    a scenario made of migration runs or a benchmark, its compiled-in file
//!    `harness/scenarios/NAME.toml` as `file`);
//! 3. add a line to the README's scenario table and a VM test that runs it.
//!
//! A scenario that is not agent steps in the usual boot has a [`Runner`] of its own instead
//! (`dmatest`: a bring-up boot running the kernel's dmatest, [`crate::dmatest`]).
//!
//! A need the test bed does not have yet (a kernel of its own, ...) is a field of [`Needs`],
//! applied to the configuration in [`Scenario::configure`].
//!
//! [`inventory`]: crate::inventory
//! [`sdxi_copy`]: crate::sdxi_copy
//! [`chmu_hot`]: crate::chmu_hot

use crate::config::{self, VmConfig};
use crate::error::RunError;
use crate::migration::ScenarioFile;
use crate::report::RunResult;
use crate::tools::ToolPaths;
use crate::{chmu_hot, inventory, sdxi_copy};
use guest_agent::protocol::{Reply, Request};
use images::Progress;
use serde::Serialize;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

/// One check's verdict.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Check {
    pub name: String,
    pub passed: bool,
    pub detail: String,
}

/// A check's verdict, named `name`.
pub fn check(name: &str, passed: bool, detail: String) -> Check {
    Check {
        name: name.to_owned(),
        passed,
        detail,
    }
}

/// The device servers' counters at shutdown, by device (`sdxi`, `cxl_hmu`).
pub type Counters = serde_json::Map<String, serde_json::Value>;

/// One step of a scenario: a request to the guest agent and the checks of its reply.
#[derive(Clone, Copy, Debug)]
pub struct Step {
    /// What the step does, for the progress line.
    pub what: &'static str,
    /// The request, for the run's configuration.
    pub request: fn(&VmConfig) -> Request,
    /// Whether a reply is of the kind this step expects (any other is a protocol error).
    pub accepts: fn(&Reply) -> bool,
    /// The step may take this many request timeouts (`--request-timeout`).
    pub timeout_mult: u32,
    /// Checks the reply, once the device counters are in (after shutdown).
    pub check: fn(&VmConfig, &Reply, &Counters) -> Vec<Check>,
}

/// What a scenario needs from the test bed beyond the default boot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Needs {
    /// The chmu-tap TCG plugin feeds the CHMU with the guest's accesses to node 1.
    pub chmu_feed: bool,
    /// `--reproducible` applies: the first step runs at boot on the instruction clock, with
    /// no input from the host (`Request::Autorun`), one vCPU, TCG.
    pub reproducible: bool,
}

impl Needs {
    /// Nothing beyond the default boot.
    pub const NONE: Self = Self {
        chmu_feed: false,
        reproducible: false,
    };
}

/// A scenario's whole run when it is not agent steps in the test bed's usual boot (dmatest
/// boots in bring-up mode and runs the kernel's own test): configuration, tool paths, the
/// scenario's name, the results directory, the interruption flag, progress.
pub type Runner = fn(
    &VmConfig,
    &ToolPaths,
    &str,
    Option<&Path>,
    Arc<AtomicBool>,
    &mut dyn Progress,
) -> Result<RunResult, RunError>;

/// A built-in scenario: one entry of [`BUILTIN`].
#[derive(Clone, Copy, Debug)]
pub struct Builtin {
    pub name: &'static str,
    /// One line for `harness scenarios`.
    pub about: &'static str,
    pub needs: Needs,
    /// The steps after the inventory, in order.
    pub steps: &'static [Step],
    /// A compiled-in scenario file (`harness/scenarios/*.toml`): its migration runs or
    /// benchmark run after the steps.
    pub file: Option<&'static str>,
    /// A run of its own instead of the steps and file (see [`Runner`]).
    pub runner: Option<Runner>,
}

/// The built-in scenarios, in the order `harness scenarios` lists them.
pub const BUILTIN: &[Builtin] = &[
    Builtin {
        name: "inventory",
        about: "boot, enumerate PCI/NUMA/tiers, bind both devices to vfio-pci and read their identity registers",
        needs: Needs::NONE,
        steps: &[],
        file: None,
        runner: None,
    },
    Builtin {
        name: "sdxi-copy",
        about: "inventory, then the guest's SDXi driver copies 1 B..16 MiB through the device (IOVAs via the vIOMMU, MSI-X), every byte checked",
        needs: Needs::NONE,
        steps: &[sdxi_copy::STEP],
        file: None,
        runner: None,
    },
    Builtin {
        name: "chmu-hot",
        about: "inventory, then a guest workload with a known hot set on node 1; the CHMU (fed by the chmu-tap TCG plugin) must report the hot pages",
        needs: Needs {
            chmu_feed: true,
            reproducible: true,
        },
        steps: &[chmu_hot::STEP],
        file: None,
        runner: None,
    },
    Builtin {
        name: "migrate",
        about: "the main job: Zipf workload on node 1, CHMU hints, promotion, batches of 512 copied by SDXi, every copy verified in the guest and by the harness",
        needs: Needs::NONE,
        steps: &[],
        file: Some(include_str!("../scenarios/migrate.toml")),
        runner: None,
    },
    Builtin {
        name: "migrate-bench",
        about: "copy benchmark: move_pages / CPU / SDXi x 4 KiB and 2 MiB folios x batches of 1, 64, 512 (GB/s, guest CPU s/GB, first-folio latency)",
        needs: Needs::NONE,
        steps: &[],
        file: Some(include_str!("../scenarios/migrate-bench.toml")),
        runner: None,
    },
    Builtin {
        name: "compare-sources",
        about: "the same Zipf workload twice in one boot: CHMU hints vs DAMON as the hotness source",
        needs: Needs::NONE,
        steps: &[],
        file: Some(include_str!("../scenarios/compare-sources.toml")),
        runner: None,
    },
    Builtin {
        name: "compare-kernel",
        about: "the same Zipf workload twice in one boot: the kernel's own tiering (NUMA balancing, memory-tiering mode) vs the migrator (CHMU + SDXi); share curves on one chart, time to 80 % on node 0, pages moved, guest CPU",
        needs: Needs::NONE,
        steps: &[],
        file: Some(include_str!("../scenarios/compare-kernel.toml")),
        runner: None,
    },
    Builtin {
        name: "tiering",
        about: "tiering both ways: a moving hot set over a working set 4x the DRAM budget; CHMU hints, promotion and demotion of cold folios by SDXi, ping-pong held back, both directions host-verified",
        needs: Needs::NONE,
        steps: &[],
        file: Some(include_str!("../scenarios/tiering.toml")),
        runner: None,
    },
    Builtin {
        name: "soak",
        about: "long run (about 10 min): >= 10^6 folio migrations both ways, 4 KiB and 2 MiB, with writers, DMA faults, lost interrupts and an sdxi-server kill; nothing lost",
        needs: Needs::NONE,
        steps: &[],
        file: Some(include_str!("../scenarios/soak.toml")),
        runner: None,
    },
    Builtin {
        name: "all",
        about: "inventory, sdxi-copy and chmu-hot in one boot (the CHMU feed on throughout)",
        needs: Needs {
            chmu_feed: true,
            reproducible: false,
        },
        steps: &[sdxi_copy::STEP, chmu_hot::STEP],
        file: None,
        runner: None,
    },
    Builtin {
        name: crate::dmatest::BUILTIN,
        about: crate::dmatest::ABOUT,
        needs: Needs::NONE,
        steps: &[],
        file: None,
        runner: Some(run_dmatest),
    },
];

/// A dmatest scenario (the built-in or a file with a `[dmatest]` table) with the driver the
/// command line gave ([`crate::dmatest`]).
fn run_dmatest(
    cfg: &VmConfig,
    paths: &ToolPaths,
    name: &str,
    results_dir: Option<&Path>,
    interrupted: Arc<AtomicBool>,
    progress: &mut dyn Progress,
) -> Result<RunResult, RunError> {
    let file =
        crate::dmatest::resolve(name)?.ok_or_else(|| RunError::UnknownScenario(name.to_owned()))?;
    let driver = cfg.dmatest_driver.clone();
    crate::dmatest::execute(
        cfg,
        paths,
        name,
        &file,
        &driver,
        results_dir,
        interrupted,
        progress,
    )
}

/// The scenario `harness demo` runs.
pub const DEFAULT: &str = "migrate";

/// The built-in scenario named `name`.
pub fn builtin(name: &str) -> Option<&'static Builtin> {
    BUILTIN.iter().find(|b| b.name == name)
}

/// The names of the built-in scenarios.
pub fn builtin_names() -> Vec<&'static str> {
    BUILTIN.iter().map(|b| b.name).collect()
}

/// A scenario ready to run: a built-in or a scenario file, resolved from its name.
#[derive(Clone, Debug)]
pub struct Scenario {
    pub name: String,
    pub needs: Needs,
    /// Every step in order, the inventory first.
    pub steps: Vec<Step>,
    /// The migration runs or benchmark after the steps.
    pub file: Option<ScenarioFile>,
    /// A run of its own instead (see [`Runner`]).
    pub runner: Option<Runner>,
}

impl Scenario {
    /// The built-in scenario `name`, or the scenario file at path `name` (`*.toml`): a
    /// dmatest file (a `[dmatest]` table) or a migration scenario file.
    pub fn resolve(name: &str) -> Result<Self, RunError> {
        let (needs, extra, file, runner) = match builtin(name) {
            Some(b) => {
                let file = b
                    .file
                    .map(|text| ScenarioFile::parse(name, text))
                    .transpose()?;
                (b.needs, b.steps, file, b.runner)
            }
            None if crate::dmatest::resolve(name)?.is_some() => {
                (Needs::NONE, &[][..], None, Some(run_dmatest as Runner))
            }
            None => match crate::migration::read_file(name)? {
                Some(f) => (Needs::NONE, &[][..], Some(f), None),
                None => return Err(RunError::UnknownScenario(name.to_owned())),
            },
        };
        let mut steps = vec![inventory::STEP];
        steps.extend_from_slice(extra);
        Ok(Self {
            name: name.to_owned(),
            needs,
            steps,
            file,
            runner,
        })
    }

    /// The configuration this scenario runs with: `cfg` with the file's `[vm]` overrides and
    /// what the scenario needs.
    pub fn configure(&self, cfg: &VmConfig) -> Result<VmConfig, RunError> {
        let mut cfg = match &self.file {
            Some(f) => f.apply(cfg, &self.name)?,
            None => cfg.clone(),
        };
        cfg.chmu_feed |= self.needs.chmu_feed;
        if cfg.reproducible {
            if !self.needs.reproducible {
                let can: Vec<&str> = BUILTIN
                    .iter()
                    .filter(|b| b.needs.reproducible)
                    .map(|b| b.name)
                    .collect();
                return Err(RunError::Config(config::ConfigError::Invalid(format!(
                    "--reproducible applies to the {} scenario (its first step runs at boot on the instruction clock), not {:?}",
                    can.join(" or "),
                    self.name
                ))));
            }
            cfg.chmu_clock = config::ChmuClock::Insns;
            cfg.accel = config::Accel::Tcg;
            // Two vCPUs under -icount boot without the tap, or with it on the host clock, but
            // crashed in 3 of 3 tries with its instruction clock (the per-vCPU inline counter);
            // one vCPU also keeps the instruction stream a single, ordered one.
            cfg.cpus = 1;
        }
        Ok(cfg)
    }

    /// The step a reproducible run does at boot (the first after the inventory).
    pub fn autorun_step(&self) -> Option<&Step> {
        self.steps.get(1).filter(|_| self.needs.reproducible)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_names_are_unique_and_each_has_steps_or_a_file() {
        let mut names = builtin_names();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), BUILTIN.len());
        for b in BUILTIN {
            assert!(!b.about.is_empty(), "{}", b.name);
            let s = Scenario::resolve(b.name).expect(b.name);
            assert!(
                s.steps.len() > 1
                    || s.file.is_some()
                    || s.runner.is_some()
                    || b.name == "inventory",
                "{} does nothing beyond the inventory",
                b.name
            );
        }
        assert!(builtin(DEFAULT).is_some());
    }

    #[test]
    fn every_scenario_starts_with_the_inventory_and_unknown_names_are_refused() {
        for b in BUILTIN {
            let s = Scenario::resolve(b.name).expect(b.name);
            assert!((s.steps[0].accepts)(&Reply::Inventory(Box::default())));
        }
        assert!(matches!(
            Scenario::resolve("no-such-scenario"),
            Err(RunError::UnknownScenario(_))
        ));
    }

    #[test]
    fn needs_reach_the_configuration_and_reproducible_is_refused_where_it_does_not_apply() {
        let cfg = VmConfig::default();
        let hot = Scenario::resolve("chmu-hot").expect("built in");
        assert!(hot.configure(&cfg).expect("ok").chmu_feed);
        assert!(
            !Scenario::resolve("sdxi-copy")
                .expect("built in")
                .configure(&cfg)
                .expect("ok")
                .chmu_feed
        );
        let rep = VmConfig {
            reproducible: true,
            ..cfg
        };
        let c = hot.configure(&rep).expect("chmu-hot can be reproducible");
        assert_eq!((c.cpus, c.accel), (1, config::Accel::Tcg));
        assert!(hot.autorun_step().is_some());
        let e = Scenario::resolve("sdxi-copy")
            .expect("built in")
            .configure(&rep)
            .expect_err("refused");
        assert!(
            e.to_string()
                .contains("--reproducible applies to the chmu-hot scenario"),
            "{e}"
        );
    }
}
