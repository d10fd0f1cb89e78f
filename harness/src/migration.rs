//! Migration scenarios as files: a TOML file names the workload, source, policy, engines,
//! batch size and duration (`[migrate]`, the agent's `MigrateSpec`) or a copy benchmark
//! (`[bench]`), optional VM settings (`[vm]`), device faults (`[sdxi_faults]`, a fault plan
//! set through the SDXi server's control socket before the run and cleared after it) and what
//! must hold (`[expect]`). Several runs in one boot are `[[runs]]` entries, each with its own
//! `name`, `migrate`, `sdxi_faults`, `sdxi_control` (a control request once the engine has
//! executed a number of COPY descriptors) and `expect`. The built-ins made of such files
//! (`migrate`, `migrate-bench`, `compare-sources`, ...) are entries of
//! [`crate::scenario::BUILTIN`] with their file in `harness/scenarios/` compiled in; the run
//! itself is in [`crate::run`].
//!
//! Also here: the checks of a migration run and of a benchmark against the device counters,
//! and their text summaries.
//!
//! The harness checks every promoted folio itself: the agent reports each folio's final
//! guest-physical address and checksum, and the harness reads those bytes from the guest-RAM
//! file of node 0 and compares.

use crate::config::VmConfig;
use crate::scenario::{check, Check};
use guest_agent::spec::{
    folio_checksum, BenchCase, BenchReport, BenchSpec, EngineKind, FolioSize, MigrateReport,
    MigrateSpec,
};
use guest_agent::verify::VerifyMode;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// What a migration run must show (every bound optional).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Expect {
    pub min_promoted: Option<u64>,
    /// Share of the workload's known hot set the source reported.
    pub min_hot_recall: Option<f64>,
    /// Share of the known hot set that ended on node 0.
    pub min_hot_promoted: Option<f64>,
    /// The node-0 access fraction at the end must exceed the one at the start by this much.
    pub min_node0_gain: Option<f64>,
    /// Folios the CPU had to copy after a DMA failure.
    pub min_fallback_folios: Option<u64>,
    /// Write faults that must have waited for a batch (concurrent writers really raced it).
    pub min_writers_blocked: Option<u64>,
    /// SDXi context restarts the driver must have made (after errors or stopped contexts).
    pub min_context_restarts: Option<u64>,
    /// Engines that must have migrated at least one batch.
    pub engines_used: Vec<EngineKind>,
    /// With a DRAM budget ([`crate::tiering`]): folios demoted, migrations both ways, the
    /// node-0 share every phase change must climb back to, and ping-pong requests per demoted
    /// folio.
    pub min_demoted: Option<u64>,
    pub min_migrations: Option<u64>,
    pub recover_share: Option<f64>,
    pub max_pingpong_share: Option<f64>,
}

/// A control-socket request sent to the SDXi server in the middle of a run: once the engine
/// has executed `after_copies` more COPY descriptors than when the run started.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlAt {
    pub after_copies: u64,
    /// e.g. `{ cmd = "stop_context", cxt = 1 }` or `{ cmd = "out_of_order", on = true }`.
    pub request: serde_json::Value,
}

/// One migration run of a scenario.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RunSpec {
    pub name: String,
    pub migrate: MigrateSpec,
    /// A fault plan for the SDXi server (`fail_nth`, `fail_every`, `class`, ...).
    pub sdxi_faults: Option<serde_json::Value>,
    /// A device event in the middle of the run (a context stopped by the function, ...).
    pub sdxi_control: Option<ControlAt>,
    pub expect: Expect,
}

/// A scenario file.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScenarioFile {
    pub description: String,
    /// Overrides of the VM configuration (the keys of a config file's `[vm]` table).
    pub vm: toml::Table,
    pub migrate: Option<MigrateSpec>,
    pub bench: Option<BenchSpec>,
    /// A fault plan for the SDXi server (`fail_nth`, `fail_every`, `class`, ...).
    pub sdxi_faults: Option<serde_json::Value>,
    pub expect: Expect,
    /// Several migration runs in one boot (instead of `[migrate]`).
    pub runs: Vec<RunSpec>,
}

/// A migration run's results.
#[derive(Clone, Debug, Serialize)]
pub struct MigrateRun {
    pub name: String,
    pub report: Box<MigrateReport>,
    pub host_verify: HostVerify,
}

/// Errors reading a scenario file name the file.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("cannot read scenario file {0}")]
    Read(String, #[source] std::io::Error),
    #[error("scenario {0}")]
    Parse(String, #[source] toml::de::Error),
    #[error("scenario {0}: {1}")]
    Invalid(String, String),
}

impl ScenarioFile {
    pub fn parse(name: &str, text: &str) -> Result<Self, ScenarioError> {
        let f: Self = toml::from_str(text).map_err(|e| ScenarioError::Parse(name.into(), e))?;
        let kinds = [f.migrate.is_some(), f.bench.is_some(), !f.runs.is_empty()];
        match kinds.iter().filter(|k| **k).count() {
            0 => {
                return Err(ScenarioError::Invalid(
                    name.into(),
                    "needs a [migrate] or a [bench] table, or [[runs]]".into(),
                ))
            }
            1 => {}
            _ => {
                return Err(ScenarioError::Invalid(
                    name.into(),
                    "use one of [migrate], [bench] and [[runs]] per file".into(),
                ))
            }
        }
        for (i, r) in f.runs().iter().enumerate() {
            r.migrate
                .clone()
                .normalized()
                .validate()
                .map_err(|e| ScenarioError::Invalid(format!("{name} run {i} ({})", r.name), e))?;
        }
        Ok(f)
    }

    /// The migration runs: `[migrate]` as one run named "migrate", or `[[runs]]`.
    pub fn runs(&self) -> Vec<RunSpec> {
        match &self.migrate {
            Some(m) => vec![RunSpec {
                name: "migrate".into(),
                migrate: m.clone(),
                sdxi_faults: self.sdxi_faults.clone(),
                sdxi_control: None,
                expect: self.expect.clone(),
            }],
            None => self.runs.clone(),
        }
    }

    /// The VM configuration with this file's `[vm]` overrides applied.
    pub fn apply(&self, cfg: &VmConfig, name: &str) -> Result<VmConfig, ScenarioError> {
        let mut c = cfg.clone();
        if !self.vm.is_empty() {
            let mut t = toml::Table::try_from(cfg)
                .map_err(|e| ScenarioError::Invalid(name.into(), e.to_string()))?;
            for (k, v) in &self.vm {
                t.insert(k.clone(), v.clone());
            }
            c = t
                .try_into()
                .map_err(|e: toml::de::Error| ScenarioError::Parse(name.into(), e))?;
        }
        if self
            .runs()
            .iter()
            .any(|r| r.migrate.source == guest_agent::spec::SourceKind::Chmu)
        {
            c.chmu_feed = true;
        }
        Ok(c)
    }
}

/// The scenario file at path `name` (anything ending in `.toml`, or an existing file); None
/// for anything else (a built-in's name, see [`crate::scenario::Scenario::resolve`]).
pub fn read_file(name: &str) -> Result<Option<ScenarioFile>, ScenarioError> {
    if name.ends_with(".toml") || Path::new(name).is_file() {
        let text =
            std::fs::read_to_string(name).map_err(|e| ScenarioError::Read(name.into(), e))?;
        return ScenarioFile::parse(name, &text).map(Some);
    }
    Ok(None)
}

/// The harness's own check of the promoted folios, through the guest-RAM files.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct HostVerify {
    pub folios: u64,
    pub matched: u64,
    /// Promoted folios whose address is not in node 0's RAM.
    pub not_in_node0: u64,
    /// Demoted folios read from node 1's RAM, and those whose address is not in it.
    pub demoted: u64,
    pub not_in_node1: u64,
    pub mismatched: u64,
    pub unreadable: u64,
    /// The first few problems, for the report.
    pub problems: Vec<String>,
}

/// Reads guest-physical memory: (node of the address, bytes) or an error.
pub trait GuestRam {
    fn node_of(&self, gpa: u64) -> Option<u32>;
    fn read(&self, gpa: u64, buf: &mut [u8]) -> std::io::Result<()>;
}

/// Compares each promoted folio's bytes in guest RAM with the checksum the guest reported.
pub fn verify_on_host(r: &MigrateReport, ram: &dyn GuestRam) -> HostVerify {
    let mut v = HostVerify::default();
    // The report comes from the guest: only the two folio sizes it can have are read.
    if ![FolioSize::Base.bytes(), FolioSize::Huge.bytes()].contains(&r.folio_bytes) {
        v.folios = (r.migrated.len() + r.demoted_folios.len()) as u64;
        v.unreadable = v.folios;
        v.problems.push(format!(
            "folio size {} is not 4 KiB or 2 MiB",
            r.folio_bytes
        ));
        return v;
    }
    let mut buf = vec![0u8; r.folio_bytes as usize];
    let both = r
        .migrated
        .iter()
        .map(|m| (m, 0))
        .chain(r.demoted_folios.iter().map(|m| (m, 1)));
    for (m, node) in both {
        v.folios += 1;
        v.demoted += u64::from(node == 1);
        let problem = |v: &mut HostVerify, p: String| {
            if v.problems.len() < 8 {
                v.problems.push(p);
            }
        };
        if ram.node_of(m.gpa) != Some(node) {
            if node == 0 {
                v.not_in_node0 += 1;
            } else {
                v.not_in_node1 += 1;
            }
            problem(
                &mut v,
                format!("folio {} at {:#x}: not node-{node} RAM", m.index, m.gpa),
            );
            continue;
        }
        if let Err(e) = ram.read(m.gpa, &mut buf) {
            v.unreadable += 1;
            problem(&mut v, format!("folio {} at {:#x}: {e}", m.index, m.gpa));
            continue;
        }
        if folio_checksum(&buf) == m.checksum {
            v.matched += 1;
        } else {
            v.mismatched += 1;
            problem(
                &mut v,
                format!("folio {} at {:#x}: bytes differ", m.index, m.gpa),
            );
        }
    }
    v
}

fn first_last(series: &[(u64, f64)]) -> (f64, f64) {
    let first = series.first().map_or(0.0, |s| s.1);
    let last = series.last().map_or(0.0, |s| s.1);
    (first, last)
}

/// The checks of a migration run.
pub fn migrate_checks(
    r: &MigrateReport,
    host: &HostVerify,
    expect: &Expect,
    sdxi_counters: Option<&serde_json::Value>,
) -> Vec<Check> {
    let mut c = always_checks(r, host, expect.min_promoted.unwrap_or(1));
    c.extend(expected_checks(r, expect));
    c.extend(sdxi_device_check(r, sdxi_counters));
    c.extend(crate::tiering::checks(r, expect));
    c
}

/// What every migration run must show: at least `min_promoted` folios promoted, every copy
/// verified in the guest and by the harness, no write lost, the promoted folios on node 0.
fn always_checks(r: &MigrateReport, host: &HostVerify, min_promoted: u64) -> Vec<Check> {
    let v = &r.verify;
    vec![
        check(
            "migrate_promoted",
            r.promoted >= min_promoted,
            format!(
                "{} of {} folios ({} MB) promoted in {} batches, {:.0} folios/s",
                r.promoted,
                r.folios,
                r.bytes_migrated / 1_000_000,
                r.batches.len(),
                r.promoted_per_s
            ),
        ),
        check(
            "migrate_copies_verified",
            v.copy_mismatches == 0
                && (r.spec.verify != VerifyMode::Full || v.copies_checked >= r.promoted),
            format!(
                "{} copies checksummed before and after in the guest ({:?} verification, {:.2} s kept off the batch times), {} mismatched",
                v.copies_checked, r.spec.verify, v.verify_s, v.copy_mismatches
            ),
        ),
        check(
            "migrate_no_lost_writes",
            v.writes == v.counted_writes,
            format!(
                "{} writes made, {} counted in memory; {} writer faults waited for a batch",
                v.writes, v.counted_writes, v.writers_blocked
            ),
        ),
        check(
            "migrate_pages_on_node0",
            v.promoted_not_on_node0 == 0 && v.on_node0 >= r.promoted,
            format!(
                "move_pages(2) query: {} on node 0, {} on node 1, {} elsewhere; {} promoted folios not on node 0",
                v.on_node0, v.on_node1, v.on_other, v.promoted_not_on_node0
            ),
        ),
        check(
            "host_verified_copies",
            host.folios == (r.migrated.len() + r.demoted_folios.len()) as u64
                && host.folios >= r.promoted
                && host.matched == host.folios,
            format!(
                "{} of {} moved folios read back from guest RAM match ({} promoted, on node 0; {} demoted, on node 1){}",
                host.matched,
                host.folios,
                r.migrated.len(),
                host.demoted,
                if host.problems.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", host.problems.join("; "))
                }
            ),
        ),
    ]
}

/// The scenario's optional bounds (`[expect]`): hot-set recall and promotion, the node-0
/// gain, DMA fallbacks, writers that waited, context restarts, engines used.
fn expected_checks(r: &MigrateReport, expect: &Expect) -> Vec<Check> {
    let v = &r.verify;
    let mut c = Vec::new();
    let s = &r.source;
    if let Some(min) = expect.min_hot_recall {
        let recall = s.hot_reported as f64 / s.known_hot.max(1) as f64;
        c.push(check(
            "source_found_hot_set",
            recall >= min,
            format!(
                "{:?} reported {} of {} known-hot folios ({:.0} %, at least {:.0} % expected) and {} others; {} records, {} outside the workload",
                s.source,
                s.hot_reported,
                s.known_hot,
                recall * 100.0,
                min * 100.0,
                s.other_reported,
                s.records,
                s.foreign_records
            ),
        ));
    }
    if let Some(min) = expect.min_hot_promoted {
        let hot_on_0 = r.hot_promoted;
        let share = hot_on_0 as f64 / s.known_hot.max(1) as f64;
        c.push(check(
            "hot_set_on_node0",
            share >= min,
            format!(
                "{hot_on_0} of {} known-hot folios promoted ({:.0} %, at least {:.0} % expected)",
                s.known_hot,
                share * 100.0,
                min * 100.0
            ),
        ));
    }
    if let Some(min) = expect.min_node0_gain {
        let (a, b) = first_last(&r.node0_fraction);
        c.push(check(
            "accesses_moved_to_node0",
            b - a >= min,
            format!(
                "share of accesses served from node 0: {:.0} % at the start, {:.0} % at the end",
                a * 100.0,
                b * 100.0
            ),
        ));
    }
    if let Some(min) = expect.min_fallback_folios {
        c.push(check(
            "dma_failures_fell_back_to_cpu",
            v.fallback_folios >= min && v.fallback_folios == v.dma_errors,
            format!(
                "{} folios copied by the CPU after {} DMA errors (exactly the failed ones: the \
                 descriptors a stopped context never ran were resubmitted to the engine)",
                v.fallback_folios, v.dma_errors
            ),
        ));
    }
    if let Some(min) = expect.min_writers_blocked {
        c.push(check(
            "writers_waited_for_batches",
            v.writers_blocked >= min,
            format!(
                "{} writes hit a folio while its batch was in flight and waited",
                v.writers_blocked
            ),
        ));
    }
    if let Some(min) = expect.min_context_restarts {
        c.push(check(
            "sdxi_contexts_restarted",
            v.context_restarts >= min,
            format!(
                "the driver restarted a stopped SDXi context {} times and resubmitted what had not run",
                v.context_restarts
            ),
        ));
    }
    for e in &expect.engines_used {
        let n = r
            .engines
            .iter()
            .find(|s| s.engine == *e)
            .map_or(0, |s| s.batches);
        c.push(check(
            &format!("engine_{}_used", e.name()),
            n > 0,
            format!("{n} batches"),
        ));
    }
    c
}

/// The SDXi device counted at least one COPY descriptor per folio the engine copied; none
/// when the engine did not run, or the server did not exit normally (a process fault killed
/// it) and so left no counters.
fn sdxi_device_check(
    r: &MigrateReport,
    sdxi_counters: Option<&serde_json::Value>,
) -> Option<Check> {
    let counters = sdxi_counters?;
    if !r.engines.iter().any(|s| s.engine == EngineKind::Sdxi) {
        return None;
    }
    let offloaded: u64 = r
        .batches
        .iter()
        .filter(|b| b.engine == EngineKind::Sdxi)
        .map(|b| u64::from(b.folios.saturating_sub(b.fallback_folios)))
        .sum();
    let copies = counters["registers"]["engine"]["descriptors"]["copy"]
        .as_u64()
        .unwrap_or(0);
    Some(check(
        "sdxi_device_did_the_copies",
        copies >= offloaded,
        format!(
            "device counted {copies} COPY descriptors for {offloaded} folios the engine copied (the CPU copied {} after DMA failures)",
            r.verify.fallback_folios
        ),
    ))
}

/// The checks of a benchmark run.
pub fn bench_checks(spec: &BenchSpec, r: &BenchReport) -> Vec<Check> {
    let want = spec.folios.len() * spec.batch_sizes.len() * spec.engines.len();
    let bad: u64 = r.cases.iter().map(|c| c.mismatches).sum();
    let short: Vec<String> = r
        .cases
        .iter()
        .filter(|c| c.note.contains("only"))
        .map(|c| format!("{}/{}/{}", c.engine.name(), c.folio.name(), c.batch))
        .collect();
    vec![
        check(
            "bench_all_cases_ran",
            r.cases.len() == want,
            format!("{} of {want} cases", r.cases.len()),
        ),
        check(
            "bench_copies_verified",
            bad == 0,
            format!("{bad} mismatched copies"),
        ),
        check(
            "bench_everything_moved",
            short.is_empty(),
            if short.is_empty() {
                "every case ended with all its folios on node 0".into()
            } else {
                format!("cases that left folios behind: {}", short.join(", "))
            },
        ),
    ]
}

/// Human summary lines of a migration run.
pub fn migrate_summary(r: &MigrateReport) -> String {
    let mut s = String::new();
    let (a, b) = first_last(&r.node0_fraction);
    s.push_str(&format!(
        "  migration: {} {} folios, {:?} source, {} promoted; node-0 access share {:.0} % -> {:.0} %\n",
        r.folios,
        r.spec.workload.folio.name(),
        r.source.source,
        r.promoted,
        a * 100.0,
        b * 100.0
    ));
    s.push_str(&format!(
        "  batches: {} (latency p50 {} us, p99 {} us; first folio p50 {} us)\n",
        r.batches.len(),
        r.batch_latency_us.p50,
        r.batch_latency_us.p99,
        r.first_folio_us.p50
    ));
    if let Some(t) = &r.tiering {
        s.push_str(&format!(
            "  tiering: budget {} folios, {} promoted, {} demoted in {} batches, at most {} on node 0; {} ping-pong requests ({} held back)\n",
            t.dram_budget,
            t.promoted_total,
            t.demoted_total,
            t.demotion_batches.len(),
            t.max_used,
            t.pingpong.within_window,
            t.pingpong.held_back
        ));
    }
    for e in &r.engines {
        s.push_str(&format!(
            "  engine {:<10} {:>4} batches {:>7} folios {:>8.3} GB/s {:>8.2} guest CPU s/GB\n",
            e.engine.name(),
            e.batches,
            e.folios,
            e.gb_per_s,
            e.cpu_s_per_gb
        ));
    }
    s
}

/// Column titles of a benchmark table.
pub const BENCH_COLUMNS: [&str; 10] = [
    "engine",
    "folio",
    "batch",
    "folios",
    "GB/s",
    "copy GB/s",
    "CPU s/GB",
    "first-folio us",
    "vs move_pages",
    "verify s/GB",
];

/// One benchmark case as the table's cells (the text summary and the Markdown report).
pub fn bench_cells(c: &BenchCase) -> [String; 10] {
    [
        c.engine.name().to_owned(),
        c.folio.name().to_owned(),
        c.batch.to_string(),
        c.folios.to_string(),
        format!("{:.3}", c.gb_per_s),
        format!("{:.3}", c.copy_gb_per_s),
        format!("{:.2}", c.cpu_s_per_gb),
        format!("{:.0}", c.first_folio_us),
        c.vs_move_pages
            .map_or_else(|| "-".to_owned(), |x| format!("{x:.2}x")),
        format!("{:.2}", c.verify_s_per_gb),
    ]
}

/// Human table of a benchmark.
pub fn bench_summary(r: &BenchReport) -> String {
    const WIDTH: [usize; 10] = [10, 5, 6, 7, 8, 10, 9, 15, 14, 12];
    let row = |cells: &[&str]| {
        let mut line = String::from(" ");
        for (i, (c, w)) in cells.iter().zip(WIDTH).enumerate() {
            line.push(' ');
            line.push_str(&if i < 2 {
                format!("{c:<w$}")
            } else {
                format!("{c:>w$}")
            });
        }
        line + "\n"
    };
    let mut s = row(&BENCH_COLUMNS);
    for c in &r.cases {
        let cells = bench_cells(c);
        s.push_str(&row(&cells.each_ref().map(String::as_str)));
        if !c.note.is_empty() {
            s.push_str(&format!("      note: {}\n", c.note));
        }
    }
    s + &bench_phases(r)
}

/// Where the benchmark's batches spent the mover's time: the mean per batch of each step and,
/// for SDXi, of the copy call's phases.
fn bench_phases(r: &BenchReport) -> String {
    let mut s = String::from(
        "  where a batch's time goes (mean us per batch; SDXi's copy = descriptors + doorbell + wait + check):\n",
    );
    let head = [
        "wprotect",
        "copy",
        "descriptors",
        "doorbell",
        "wait",
        "check",
        "wakeups",
        "remap",
    ];
    s.push_str(&format!(
        "  {:<10} {:<5} {:>6} {:>8}",
        "engine", "folio", "batch", "batches"
    ));
    head.iter().for_each(|h| s.push_str(&format!(" {h:>11}")));
    s.push('\n');
    for c in &r.cases {
        let p = &c.phases;
        s.push_str(&format!(
            "  {:<10} {:<5} {:>6} {:>8}",
            c.engine.name(),
            c.folio.name(),
            c.batch,
            p.batches
        ));
        [
            p.write_protect_us,
            p.copy_us,
            p.descriptors_us,
            p.doorbell_us,
            p.completion_wait_us,
            p.completion_check_us,
            p.wakeups,
            p.remap_us,
        ]
        .iter()
        .for_each(|v| s.push_str(&format!(" {v:>11.1}")));
        s.push('\n');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use guest_agent::spec::{MigratedFolio, SourceKind};

    #[test]
    fn builtin_scenario_files_parse_and_validate() {
        for b in crate::scenario::BUILTIN {
            let Some(text) = b.file else { continue };
            let f = ScenarioFile::parse(b.name, text).expect(b.name);
            assert!(!f.description.is_empty(), "{} has a description", b.name);
        }
        let m = crate::scenario::Scenario::resolve("migrate")
            .expect("ok")
            .file
            .expect("built in");
        let spec = m.migrate.clone().expect("migrate table");
        assert_eq!(spec.source, SourceKind::Chmu);
        assert_eq!(spec.batch.size, 512);
        let c = m.apply(&VmConfig::default(), "migrate").expect("apply");
        assert!(c.chmu_feed, "a CHMU source turns the feed on");
    }

    #[test]
    fn bad_files_name_the_problem() {
        let e =
            ScenarioFile::parse("x", "[migrate]\nbatch = { size = 5000 }\n").expect_err("refused");
        assert!(e.to_string().contains("batch.size"), "{e}");
        let e = ScenarioFile::parse("x", "description = \"d\"\n").expect_err("refused");
        assert!(e.to_string().contains("[migrate] or a [bench]"), "{e}");
        let e =
            ScenarioFile::parse("x", "[migrate]\nworkload = { pagez = 1 }\n").expect_err("refused");
        assert!(format!("{e:?}").contains("pagez"), "{e:?}");
        assert!(read_file("/nonexistent/x.toml").is_err());
        assert!(read_file("inventory").expect("ok").is_none());
    }

    #[test]
    fn vm_overrides_apply_and_unknown_keys_fail() {
        let f = ScenarioFile::parse("x", "[vm]\nnode1_mib = 2048\n[bench]\n").expect("parse");
        let c = f.apply(&VmConfig::default(), "x").expect("apply");
        assert_eq!(c.node1_mib, 2048);
        let f = ScenarioFile::parse("x", "[vm]\nnode9_mib = 1\n[bench]\n").expect("parse");
        assert!(f.apply(&VmConfig::default(), "x").is_err());
    }

    struct FakeRam(Vec<u8>);

    impl GuestRam for FakeRam {
        fn node_of(&self, gpa: u64) -> Option<u32> {
            (gpa < self.0.len() as u64).then_some(0)
        }
        fn read(&self, gpa: u64, buf: &mut [u8]) -> std::io::Result<()> {
            let g = gpa as usize;
            buf.copy_from_slice(&self.0[g..g + buf.len()]);
            Ok(())
        }
    }

    #[test]
    fn host_verification_catches_wrong_bytes_and_wrong_nodes() {
        let ram = FakeRam(
            (0..3 * 4096)
                .map(|i: usize| (i * 7 + i / 4096) as u8)
                .collect(),
        );
        let good = folio_checksum(&ram.0[4096..8192]);
        let r = MigrateReport {
            folio_bytes: 4096,
            migrated: vec![
                MigratedFolio {
                    index: 0,
                    gpa: 4096,
                    checksum: good,
                },
                MigratedFolio {
                    index: 1,
                    gpa: 8192,
                    checksum: good,
                },
                MigratedFolio {
                    index: 2,
                    gpa: 1 << 40,
                    checksum: good,
                },
            ],
            ..MigrateReport::default()
        };
        let v = verify_on_host(&r, &ram);
        assert_eq!(
            (v.folios, v.matched, v.mismatched, v.not_in_node0),
            (3, 1, 1, 1)
        );
        assert_eq!(v.problems.len(), 2);
    }
}
