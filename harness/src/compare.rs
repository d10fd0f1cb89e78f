//! Side by side: the migration runs of one scenario on the same seeded workload (the
//! built-ins `compare-kernel`, the kernel's own tiering against the project's migrator, and
//! `compare-sources`, CHMU against DAMON). The report gets every run's node-0 share curve on
//! one chart and a table: the time each run took until 80 % of the workload's accesses were
//! served from node 0, the pages it moved, and the guest CPU it cost.

use crate::migration::MigrateRun;
use crate::plots;
use guest_agent::spec::{MigrateReport, SourceKind};

/// The node-0 share the comparison times.
pub const TARGET_SHARE: f64 = 0.8;

/// When the share of accesses served from node 0 first reached `target` (ms since the
/// workload started): each point of `series` is the share over the sample period ending
/// then.
pub fn time_to_share(series: &[(u64, f64)], target: f64) -> Option<u64> {
    series.iter().find(|&&(_, s)| s >= target).map(|&(t, _)| t)
}

/// One run in the comparison.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub name: String,
    /// "kernel NUMA balancing (memory tiering)" or "migrator: chmu source, sdxi engine".
    pub who: String,
    pub time_to_target_ms: Option<u64>,
    /// The share over the last sample period.
    pub final_share: f64,
    /// Pages moved to node 0: the kernel's pgpromote_success, or the migrator's promoted
    /// folios (in 4 KiB pages).
    pub pages_moved: u64,
    /// Guest CPU over the run: the agent process's system time (less what the kernel run's
    /// observer spent asking where the pages are), its user time, and what the migrator
    /// itself spent moving batches.
    pub system_s: f64,
    pub user_s: f64,
    pub migrator_s: f64,
    /// The kernel run's observer (`move_pages(2)` queries), left out of `system_s`.
    pub observer_s: f64,
    /// NUMA hint faults the kernel took (kernel runs).
    pub hint_faults: Option<u64>,
    /// Workload accesses made in the run (the work the CPU cost bought).
    pub accesses: u64,
}

fn vmstat(r: &MigrateReport, key: &str) -> Option<u64> {
    r.kernel
        .as_ref()?
        .vmstat
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| *v)
}

/// The row of one run.
pub fn row(name: &str, r: &MigrateReport) -> Row {
    let kernel = r.source.source == SourceKind::Kernel;
    let pages_per_folio = r.folio_bytes / 4096;
    let observer = r.kernel.as_ref().map_or(0.0, |k| k.observer_cpu_s);
    Row {
        name: name.to_owned(),
        who: if kernel {
            "kernel NUMA balancing (memory tiering)".into()
        } else {
            format!(
                "migrator: {:?} source, {:?} engine",
                r.source.source, r.spec.engine.policy
            )
            .to_lowercase()
        },
        time_to_target_ms: time_to_share(&r.node0_fraction, TARGET_SHARE),
        final_share: r.node0_fraction.last().map_or(0.0, |p| p.1),
        pages_moved: if kernel {
            r.kernel.as_ref().map_or(0, |k| k.pages_promoted)
        } else {
            r.promoted * pages_per_folio.max(1)
        },
        system_s: (r.cpu.system_s - observer).max(0.0),
        user_s: r.cpu.user_s,
        migrator_s: r.cpu.migrator_s,
        observer_s: observer,
        hint_faults: vmstat(r, "numa_hint_faults"),
        accesses: r.accesses,
    }
}

/// The rows of every run, in order.
pub fn rows(runs: &[MigrateRun]) -> Vec<Row> {
    runs.iter().map(|m| row(&m.name, &m.report)).collect()
}

/// Every run's node-0 share curve on one chart (percent over seconds).
pub fn share_chart(runs: &[MigrateRun]) -> String {
    let series: Vec<(String, Vec<(f64, f64)>)> = runs
        .iter()
        .map(|m| {
            (
                m.name.clone(),
                m.report
                    .node0_fraction
                    .iter()
                    .map(|&(ms, f)| (ms as f64 / 1000.0, f * 100.0))
                    .collect(),
            )
        })
        .collect();
    plots::line_chart(
        "Accesses served from DRAM, every run",
        "seconds since the workload started",
        "% of accesses on node 0",
        (0.0, 100.0),
        &series,
    )
}

/// The comparison as a Markdown table.
pub fn markdown(rows: &[Row]) -> String {
    let mut s = format!(
        "| run | who moves pages | time to {:.0} % on node 0 | final share | pages moved | NUMA hint faults | guest CPU: system s | user s | migrator s | observer s | accesses |\n|---|---|---|---|---|---|---|---|---|---|---|\n",
        TARGET_SHARE * 100.0
    );
    for r in rows {
        s.push_str(&format!(
            "| {} | {} | {} | {:.0} % | {} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {} |\n",
            r.name,
            r.who,
            r.time_to_target_ms
                .map_or("not reached".into(), |t| format!(
                    "{:.2} s",
                    t as f64 / 1000.0
                )),
            r.final_share * 100.0,
            r.pages_moved,
            r.hint_faults.map_or("-".into(), |h| h.to_string()),
            r.system_s,
            r.user_s,
            r.migrator_s,
            r.observer_s,
            r.accesses
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use guest_agent::spec::{GuestCpu, KernelReport};

    #[test]
    fn time_to_share_is_the_first_sample_at_or_above_the_target() {
        let s = [
            (250, 0.1),
            (500, 0.79),
            (750, 0.8),
            (1000, 0.95),
            (1250, 0.7),
        ];
        assert_eq!(time_to_share(&s, 0.8), Some(750));
        assert_eq!(time_to_share(&s, 0.96), None);
        assert_eq!(time_to_share(&[], 0.8), None);
    }

    #[test]
    fn a_kernel_run_counts_the_kernels_promotions_and_a_migrator_run_its_folios() {
        let mut k = MigrateReport {
            folio_bytes: 4096,
            promoted: 700,
            node0_fraction: vec![(500, 0.2), (1000, 0.85)],
            cpu: GuestCpu {
                user_s: 7.5,
                system_s: 0.5,
                migrator_s: 0.0,
            },
            kernel: Some(KernelReport {
                pages_promoted: 650,
                observer_cpu_s: 0.25,
                vmstat: vec![("numa_hint_faults".into(), 4000)],
                ..KernelReport::default()
            }),
            ..MigrateReport::default()
        };
        k.source.source = SourceKind::Kernel;
        let r = row("kernel", &k);
        assert_eq!(r.pages_moved, 650);
        assert_eq!(r.hint_faults, Some(4000));
        assert_eq!(r.time_to_target_ms, Some(1000));
        assert_eq!(
            (r.system_s, r.observer_s),
            (0.25, 0.25),
            "the observer left out"
        );
        assert!(r.who.contains("kernel"));
        let mut m = k.clone();
        m.source.source = SourceKind::Chmu;
        m.kernel = None;
        m.folio_bytes = 2 << 20;
        m.promoted = 3;
        let r = row("migrator", &m);
        assert_eq!(r.pages_moved, 3 * 512);
        assert_eq!(r.hint_faults, None);
        assert!(r.who.contains("chmu"), "{}", r.who);
        let md = markdown(&[row("kernel", &k), r]);
        assert!(md.contains("| kernel | kernel NUMA balancing"), "{md}");
        assert!(md.contains("1.00 s"), "{md}");
    }
}
