//! The checks and the figure of a migration run with a DRAM budget (tiering both ways; the
//! built-ins `tiering` and `soak`): folios were demoted, the node-0 share of accesses
//! recovered after each move of the hot set (and how long that took), ping-pong stayed under
//! its bound, and the run's total of migrations. The harness's own reading of every moved
//! folio (both directions) is checked with the other migration checks
//! ([`crate::migration::migrate_checks`]).

use crate::migration::Expect;
use crate::scenario::{check, Check};
use guest_agent::spec::{MigrateReport, Pattern};

/// After each phase change of a `phases` workload (every `phase_ms` from the start, leaving
/// out a change with less than half a phase of the run after it), the time until the node-0
/// share of accesses first reached `target` again (None: not within the phase). `series` is
/// (ms since start, share).
pub fn recoveries(
    series: &[(u64, f64)],
    phase_ms: u64,
    until_ms: u64,
    target: f64,
) -> Vec<Option<u64>> {
    let mut out = Vec::new();
    if phase_ms == 0 {
        return out;
    }
    let mut change = phase_ms;
    while change + phase_ms / 2 < until_ms {
        let end = change + phase_ms;
        // The first sample after the change covers accesses from before it: skip it.
        let first_after = series.iter().position(|&(t, _)| t > change);
        let back = first_after.and_then(|i| {
            series[i + 1..]
                .iter()
                .take_while(|&&(t, _)| t <= end)
                .find(|&&(_, s)| s >= target)
                .map(|&(t, _)| t - change)
        });
        out.push(back);
        change = end;
    }
    out
}

/// Folio migrations in the run, both ways.
pub fn migrations(r: &MigrateReport) -> u64 {
    r.tiering
        .as_ref()
        .map_or(r.promoted, |t| t.promoted_total + t.demoted_total)
}

/// The tiering checks asked for by `e` (none without a budget in the run).
pub fn checks(r: &MigrateReport, e: &Expect) -> Vec<Check> {
    let Some(t) = &r.tiering else {
        return Vec::new();
    };
    let mut c = vec![check(
        "dram_budget_held",
        t.max_used <= t.dram_budget,
        format!(
            "at most {} folios on node 0 against a budget of {} (watermarks {}/{}); {} promotions waited for demotion",
            t.max_used, t.dram_budget, t.low_watermark, t.high_watermark, t.promotions_deferred
        ),
    )];
    if let Some(min) = e.min_demoted {
        c.push(check(
            "folios_demoted",
            t.demoted_total >= min,
            format!(
                "{} folios demoted to node 1 in {} batches ({} promoted in all); {} access-count scans, {} demotions wanted but no folio resident long enough",
                t.demoted_total,
                t.demotion_batches.len(),
                t.promoted_total,
                t.scans,
                t.short_of_cold
            ),
        ));
    }
    if let Some(min) = e.min_migrations {
        c.push(check(
            "migrations_both_ways",
            migrations(r) >= min,
            format!(
                "{} folio migrations ({} promotions, {} demotions), at least {min} expected",
                migrations(r),
                t.promoted_total,
                t.demoted_total
            ),
        ));
    }
    if let Some(max) = e.max_pingpong_share {
        let p = &t.pingpong;
        let share = p.promoted_within_window as f64 / t.demoted_total.max(1) as f64;
        c.push(check(
            "pingpong_bounded",
            share <= max,
            format!(
                "{} folios promoted again within {} ms of their demotion ({:.1} % of {} demotions, at most {:.0} %); {} promotion requests came that soon ({:.1} % of demotions), {} of them held back",
                p.promoted_within_window,
                r.spec.tiering.pingpong_window_ms,
                share * 100.0,
                t.demoted_total,
                max * 100.0,
                p.within_window,
                p.within_window as f64 / t.demoted_total.max(1) as f64 * 100.0,
                p.held_back
            ),
        ));
    }
    if let (Some(target), Pattern::Phases) = (e.recover_share, r.spec.workload.pattern) {
        let rec = recoveries(
            &r.node0_fraction,
            r.spec.workload.phase_ms,
            r.duration_ms,
            target,
        );
        let shown: Vec<String> = rec
            .iter()
            .map(|x| x.map_or_else(|| "never".to_owned(), |ms| format!("{ms} ms")))
            .collect();
        c.push(check(
            "node0_share_recovers_after_phase_changes",
            !rec.is_empty() && rec.iter().all(Option::is_some),
            format!(
                "time for the node-0 share to get back to {:.0} % after each of {} hot-set moves: {}",
                target * 100.0,
                rec.len(),
                shown.join(", ")
            ),
        ));
    }
    c
}

/// The series of the tiering figure, in percent: the node-0 share of accesses, node-0 usage
/// against the budget, and promotions and demotions per sample period against the budget.
pub fn figure_series(r: &MigrateReport) -> Vec<(String, Vec<(f64, f64)>)> {
    let Some(t) = &r.tiering else {
        return Vec::new();
    };
    let budget = f64::from(t.dram_budget.max(1));
    let secs = |ms: u64| ms as f64 / 1e3;
    let share = r
        .node0_fraction
        .iter()
        .map(|&(ms, f)| (secs(ms), f * 100.0))
        .collect();
    let used = t
        .timeline
        .iter()
        .map(|&(ms, _, _, u)| (secs(ms), f64::from(u) / budget * 100.0))
        .collect();
    // Moves per period of the share samples.
    let period = r.spec.sample_ms.max(1);
    let end = r.duration_ms.max(period);
    let mut up = Vec::new();
    let mut down = Vec::new();
    // One walk along the timeline (it is in time order): the totals at the end of each period.
    let mut events = t.timeline.iter().peekable();
    let mut at = (0, 0);
    let mut prev = (0, 0);
    let mut ms = period;
    while ms <= end + period {
        while let Some(e) = events.next_if(|e| e.0 <= ms) {
            at = (e.1, e.2);
        }
        let now = at;
        up.push((secs(ms), (now.0 - prev.0) as f64 / budget * 100.0));
        down.push((secs(ms), (now.1 - prev.1) as f64 / budget * 100.0));
        prev = now;
        ms += period;
    }
    vec![
        ("node-0 share of accesses".to_owned(), share),
        ("node-0 use / budget".to_owned(), used),
        (format!("promoted per {period} ms / budget"), up),
        (format!("demoted per {period} ms / budget"), down),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use guest_agent::budget::TieringReport;

    #[test]
    fn recovery_is_timed_from_each_phase_change() {
        // Phases of 1000 ms; samples every 250 ms.
        let s = vec![
            (250, 0.1),
            (500, 0.6),
            (750, 0.8),
            (1000, 0.8),
            (1250, 0.7), // mostly accesses from before the change: skipped
            (1500, 0.2),
            (1750, 0.5),
            (2000, 0.7),
            (2250, 0.3),
            (2500, 0.3),
            (2750, 0.3),
            (3000, 0.3),
        ];
        assert_eq!(
            recoveries(&s, 1000, 3000, 0.5),
            vec![Some(750), None],
            "phase 2 recovered 750 ms after its change; phase 3 never did"
        );
        assert_eq!(
            recoveries(&s, 1000, 3400, 0.5).len(),
            2,
            "a change 400 ms before the end is left out"
        );
        assert!(recoveries(&s, 0, 3000, 0.5).is_empty());
    }

    fn report() -> MigrateReport {
        let mut r = MigrateReport {
            duration_ms: 1000,
            ..MigrateReport::default()
        };
        r.spec.sample_ms = 500;
        r.tiering = Some(TieringReport {
            dram_budget: 100,
            promoted_total: 150,
            demoted_total: 60,
            max_used: 100,
            timeline: vec![(100, 100, 0, 100), (600, 150, 60, 90)],
            ..TieringReport::default()
        });
        r
    }

    #[test]
    fn checks_follow_the_expectations() {
        let r = report();
        let e = Expect {
            min_demoted: Some(50),
            min_migrations: Some(211),
            max_pingpong_share: Some(0.1),
            ..Expect::default()
        };
        let c = checks(&r, &e);
        let verdict = |n: &str| c.iter().find(|c| c.name == n).map(|c| c.passed);
        assert_eq!(verdict("dram_budget_held"), Some(true));
        assert_eq!(verdict("folios_demoted"), Some(true));
        assert_eq!(verdict("migrations_both_ways"), Some(false), "210 < 211");
        assert_eq!(verdict("pingpong_bounded"), Some(true));
        assert!(
            checks(&MigrateReport::default(), &e).is_empty(),
            "no budget, no checks"
        );
    }

    #[test]
    fn the_figure_counts_moves_per_period() {
        let s = figure_series(&report());
        assert_eq!(s.len(), 4);
        let up = &s[2].1;
        let down = &s[3].1;
        assert_eq!(
            up[0],
            (0.5, 100.0),
            "100 promoted in the first 500 ms, of a budget of 100"
        );
        assert_eq!(up[1], (1.0, 50.0));
        assert_eq!(down[1], (1.0, 60.0));
        assert_eq!(s[1].1, vec![(0.1, 100.0), (0.6, 90.0)]);
    }
}
