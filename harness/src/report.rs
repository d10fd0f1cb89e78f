//! What a run reports: [`RunResult`] (`result.json`, schema in `harness/RESULTS.md`) with
//! its human summary, a matrix's [`Outcome`]s, and those outcomes as JUnit XML for CI
//! systems. The Markdown/HTML report with plots is [`crate::document`].

use crate::{migration, scenario, vm};
use guest_agent::protocol::{Inventory, Reply};
use serde::Serialize;
use std::fmt::Write as _;
use std::path::PathBuf;

/// Version of the result JSON schema (`result.json`); bumped on incompatible changes.
pub const RESULT_SCHEMA_VERSION: u32 = 1;

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
    /// Replies of the scenario's steps that have no field of their own, in order (each
    /// names its kind in `reply`).
    pub steps: Vec<Reply>,
    /// Each migration run: the migrator's report and the harness's own check of every
    /// promoted folio through the guest-RAM files (migration scenarios).
    pub migrate: Vec<migration::MigrateRun>,
    /// The copy benchmark's report (benchmark scenarios).
    pub bench: Option<guest_agent::spec::BenchReport>,
    pub teardown: vm::Teardown,
    pub run_dir: PathBuf,
}

impl RunResult {
    /// A passed-if-every-check-passed result of `scenario` with no scenario reports yet
    /// (inventory, migration runs, benchmark: the caller fills in what it has).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        scenario: &str,
        checks: Vec<scenario::Check>,
        accel: vm::AccelChoice,
        timings: Timings,
        imgs: &images::Images,
        teardown: vm::Teardown,
        run_dir: PathBuf,
    ) -> Self {
        Self {
            schema_version: RESULT_SCHEMA_VERSION,
            scenario: scenario.to_owned(),
            passed: checks.iter().all(|c| c.passed),
            checks,
            accel,
            timings,
            qemu: imgs.qemu.version.clone(),
            kernel: imgs.kernel.release.clone(),
            kernel_package_version: imgs.kernel.version.clone(),
            download_bytes: imgs.download_bytes,
            inventory: Inventory::default(),
            sdxi_copy: None,
            chmu_hot: None,
            steps: Vec::new(),
            migrate: Vec::new(),
            bench: None,
            teardown,
            run_dir,
        }
    }

    /// Files a step's reply: the inventory and the classic reports in their own fields,
    /// any other in `steps`.
    pub fn record(&mut self, reply: Reply) {
        match reply {
            Reply::Inventory(i) => self.inventory = *i,
            Reply::SdxiCopy(r) => self.sdxi_copy = Some(r),
            Reply::ChmuHot(r) => self.chmu_hot = Some(r),
            other => self.steps.push(other),
        }
    }

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

/// How one scenario ended.
#[derive(Debug)]
pub enum Outcome {
    /// The scenario ran; its checks decide pass or fail.
    Ran(Box<RunResult>),
    /// The test bed failed (or the time limit hit) before a verdict.
    Error {
        scenario: String,
        message: String,
        seconds: f64,
    },
}

impl Outcome {
    pub fn passed(&self) -> bool {
        matches!(self, Self::Ran(r) if r.passed)
    }
}

fn esc(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_control() || *c == '\n' || *c == '\t')
        .map(|c| match c {
            '&' => "&amp;".to_owned(),
            '<' => "&lt;".to_owned(),
            '>' => "&gt;".to_owned(),
            '"' => "&quot;".to_owned(),
            '\'' => "&apos;".to_owned(),
            c => c.to_string(),
        })
        .collect()
}

/// JUnit XML: one test suite per scenario, one test case per check; an infrastructure error is
/// one test case with an `<error>`.
pub fn junit_xml(outcomes: &[Outcome]) -> String {
    let mut x =
        String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites name=\"tierbed\">\n");
    for o in outcomes {
        match o {
            Outcome::Ran(r) => {
                let failures = r.checks.iter().filter(|c| !c.passed).count();
                let _ = writeln!(
                    x,
                    "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{failures}\" errors=\"0\" time=\"{:.3}\">",
                    esc(&r.scenario),
                    r.checks.len(),
                    r.timings.total_s
                );
                for c in &r.checks {
                    let _ = write!(
                        x,
                        "    <testcase classname=\"tierbed.{}\" name=\"{}\"",
                        esc(&r.scenario),
                        esc(&c.name)
                    );
                    if c.passed {
                        let _ = writeln!(x, "/>");
                    } else {
                        let _ = writeln!(
                            x,
                            ">\n      <failure message=\"{}\"/>\n    </testcase>",
                            esc(&c.detail)
                        );
                    }
                }
                let _ = writeln!(
                    x,
                    "    <system-out>{}</system-out>",
                    esc(&r.run_dir.display().to_string())
                );
                x.push_str("  </testsuite>\n");
            }
            Outcome::Error {
                scenario,
                message,
                seconds,
            } => {
                let _ = writeln!(
                    x,
                    "  <testsuite name=\"{0}\" tests=\"1\" failures=\"0\" errors=\"1\" time=\"{seconds:.3}\">\n    <testcase classname=\"tierbed.{0}\" name=\"test bed\">\n      <error message=\"{1}\"/>\n    </testcase>\n  </testsuite>",
                    esc(scenario),
                    esc(message)
                );
            }
        }
    }
    x.push_str("</testsuites>\n");
    x
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::scenario::Check;

    /// A result with every field present (for the schema check).
    pub(crate) fn sample_result() -> RunResult {
        result("inventory", vec![("a", true)])
    }

    fn result(name: &str, checks: Vec<(&str, bool)>) -> RunResult {
        RunResult {
            schema_version: RESULT_SCHEMA_VERSION,
            scenario: name.into(),
            passed: checks.iter().all(|c| c.1),
            checks: checks
                .into_iter()
                .map(|(n, p)| Check {
                    name: n.into(),
                    passed: p,
                    detail: "got <3> & \"x\"".into(),
                })
                .collect(),
            accel: crate::vm::AccelChoice {
                accel: "tcg",
                reason: "test".into(),
            },
            timings: Timings::default(),
            qemu: String::new(),
            kernel: String::new(),
            kernel_package_version: String::new(),
            download_bytes: 0,
            inventory: Default::default(),
            sdxi_copy: None,
            chmu_hot: None,
            steps: vec![Reply::Pong],
            migrate: Vec::new(),
            bench: None,
            teardown: Default::default(),
            run_dir: "/tmp/run".into(),
        }
    }

    /// Parses the XML back with a real parser and counts what CI tools count.
    #[test]
    fn junit_output_parses_back_with_the_right_counts() {
        let outcomes = vec![
            Outcome::Ran(Box::new(result(
                "inventory",
                vec![("a", true), ("b", false)],
            ))),
            Outcome::Error {
                scenario: "chmu-hot".into(),
                message: "timed out <after> 30 s".into(),
                seconds: 30.0,
            },
        ];
        let xml = junit_xml(&outcomes);
        let mut reader = quick_xml::Reader::from_str(&xml);
        let (mut suites, mut cases, mut failures, mut errors) = (0, 0, 0, 0);
        let mut messages = Vec::new();
        loop {
            match reader.read_event().expect("well-formed XML") {
                quick_xml::events::Event::Eof => break,
                quick_xml::events::Event::Start(e) | quick_xml::events::Event::Empty(e) => {
                    match e.name().as_ref() {
                        b"testsuite" => suites += 1,
                        b"testcase" => cases += 1,
                        b"failure" => failures += 1,
                        b"error" => errors += 1,
                        _ => {}
                    }
                    for a in e.attributes() {
                        let a = a.expect("attribute");
                        if a.key.as_ref() == b"message" {
                            messages.push(a.unescape_value().expect("escaped").into_owned());
                        }
                    }
                }
                _ => {}
            }
        }
        assert_eq!((suites, cases, failures, errors), (2, 3, 1, 1));
        assert_eq!(messages, vec!["got <3> & \"x\"", "timed out <after> 30 s"]);
    }
}

#[cfg(test)]
mod schema_doc {
    /// The key column of RESULTS.md's table must be exactly the top-level keys of `result.json`.
    #[test]
    fn results_md_documents_every_top_level_key() {
        let doc = include_str!("../RESULTS.md");
        let mut documented: Vec<String> = doc
            .lines()
            .filter_map(|l| l.strip_prefix("| `"))
            .filter_map(|l| l.split('`').next())
            .map(str::to_owned)
            .collect();
        documented.sort();
        let r = super::tests::sample_result();
        let v = serde_json::to_value(&r).expect("serialize");
        let mut keys: Vec<String> = v.as_object().expect("object").keys().cloned().collect();
        keys.sort();
        assert_eq!(documented, keys);
        assert_eq!(v["schema_version"], 1);
    }
}
