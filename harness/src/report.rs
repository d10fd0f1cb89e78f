//! Running several scenarios (a matrix), sharding it across CI machines, and reporting the
//! outcomes as JUnit XML for CI systems.

use crate::RunResult;
use std::fmt::Write as _;

/// `--shard K/N`: this machine runs the scenarios whose position (sorted by name) is K-1
/// modulo N, so a CI system's own job matrix can spread a scenario set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    pub k: usize,
    pub n: usize,
}

impl std::str::FromStr for Shard {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (k, n) = s
            .split_once('/')
            .ok_or_else(|| format!("shard {s:?} is not K/N"))?;
        let k: usize = k
            .parse()
            .map_err(|_| format!("shard {s:?}: K is not a number"))?;
        let n: usize = n
            .parse()
            .map_err(|_| format!("shard {s:?}: N is not a number"))?;
        if n == 0 || k == 0 || k > n {
            return Err(format!("shard {s:?}: need 1 <= K <= N"));
        }
        Ok(Self { k, n })
    }
}

/// Replaces each argument that is a directory by the scenario files (`*.toml`) in it, sorted.
pub fn expand_dirs(args: &[String]) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for a in args {
        let p = std::path::Path::new(a);
        if !p.is_dir() {
            out.push(a.clone());
            continue;
        }
        let rd =
            std::fs::read_dir(p).map_err(|e| format!("reading scenario directory {a}: {e}"))?;
        let mut files: Vec<String> = rd
            .flatten()
            .map(|e| e.path())
            .filter(|f| f.extension().is_some_and(|x| x == "toml"))
            .map(|f| f.to_string_lossy().into_owned())
            .collect();
        if files.is_empty() {
            return Err(format!(
                "scenario directory {a} holds no *.toml scenario files"
            ));
        }
        files.sort();
        out.extend(files);
    }
    Ok(out)
}

/// The scenarios this shard runs, in a stable order (sorted, duplicates removed).
pub fn select(scenarios: &[String], shard: Option<Shard>) -> Vec<String> {
    let mut all: Vec<String> = scenarios.to_vec();
    all.sort();
    all.dedup();
    match shard {
        None => all,
        Some(s) => all
            .into_iter()
            .enumerate()
            .filter(|(i, _)| i % s.n == s.k - 1)
            .map(|(_, n)| n)
            .collect(),
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
            schema_version: crate::RESULT_SCHEMA_VERSION,
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
            timings: crate::Timings::default(),
            qemu: String::new(),
            kernel: String::new(),
            kernel_package_version: String::new(),
            download_bytes: 0,
            inventory: Default::default(),
            sdxi_copy: None,
            chmu_hot: None,
            migrate: Vec::new(),
            bench: None,
            teardown: Default::default(),
            run_dir: "/tmp/run".into(),
        }
    }

    #[test]
    fn directories_expand_to_their_scenario_files() {
        let d = std::env::temp_dir().join(format!("tierbed-dirs-{}", std::process::id()));
        std::fs::create_dir_all(&d).expect("dir");
        for f in ["b.toml", "a.toml", "notes.txt"] {
            std::fs::write(d.join(f), "").expect("file");
        }
        let ds = d.to_string_lossy().into_owned();
        let got = expand_dirs(&["inventory".into(), ds.clone()]).expect("expand");
        assert_eq!(
            got,
            vec![
                "inventory".to_owned(),
                format!("{ds}/a.toml"),
                format!("{ds}/b.toml")
            ]
        );
        std::fs::remove_file(d.join("a.toml")).ok();
        std::fs::remove_file(d.join("b.toml")).ok();
        assert!(expand_dirs(&[ds]).expect_err("empty").contains("no *.toml"));
        std::fs::remove_dir_all(d).ok();
    }

    #[test]
    fn shards_partition_the_sorted_scenarios() {
        let s: Vec<String> = ["c", "a", "d", "b", "a", "e"]
            .iter()
            .map(|x| (*x).to_owned())
            .collect();
        let parts: Vec<Vec<String>> = (1..=2)
            .map(|k| select(&s, Some(Shard { k, n: 2 })))
            .collect();
        assert_eq!(parts[0], vec!["a", "c", "e"]);
        assert_eq!(parts[1], vec!["b", "d"]);
        assert_eq!(select(&s, None).len(), 5);
        assert_eq!("2/3".parse::<Shard>(), Ok(Shard { k: 2, n: 3 }));
        for bad in ["0/2", "3/2", "1/0", "x/2", "2"] {
            assert!(bad.parse::<Shard>().is_err(), "{bad}");
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
