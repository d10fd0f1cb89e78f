//! The workload's DRAM budget on node 0, with watermarks: the userspace model of a tiered node's
//! reclaim watermarks (mm/vmscan.c: kswapd reclaims, and on a node with a lower tier demotes
//! through `demote_folio_list()`, from the low watermark until the high one is met) and of
//! promotion's room check (mm/migrate.c `migrate_balanced_pgdat()`: a NUMA-balancing promotion
//! only goes when the target node has room, and otherwise wakes kswapd to make some).
//!
//! Here the budget counts the workload's folios on node 0. Usage above the high watermark
//! (or promotions waiting that would take it there) starts demotion, which goes on until usage
//! is down to the low watermark; a promotion only goes while usage is below the budget itself,
//! so promotions wait for demotion instead of overflowing it.
//!
//! No I/O and no clock: the migrator passes counts in.

use serde::{Deserialize, Serialize};

/// Demotion and the DRAM budget (`[migrate.tiering]`); `dram_budget = 0` means node 0 is
/// unlimited and nothing is ever demoted (promotion only).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TieringSpec {
    /// Folios of the workload allowed on node 0 (0: no budget, no demotion).
    pub dram_budget: u32,
    /// Demotion stops at this share of the budget (percent).
    pub low_percent: u8,
    /// Demotion starts above this share of the budget (percent), counting waiting promotions.
    pub high_percent: u8,
    /// How often node 0's access counts are scanned and aged (ms).
    pub scan_ms: u64,
    /// A folio becomes a demotion candidate after this many scans on node 0; candidates go
    /// coolest first (decayed access count, [`crate::cold`]).
    pub cold_scans: u8,
    /// Most folios in one demotion batch.
    pub demote_batch: u32,
    /// A folio promoted again within this long of its demotion is a ping-pong (0: not
    /// tracked).
    pub pingpong_window_ms: u64,
    /// Hold a ping-pong candidate back until the window since its demotion has passed.
    pub hold_back: bool,
}

impl Default for TieringSpec {
    fn default() -> Self {
        Self {
            dram_budget: 0,
            low_percent: 85,
            high_percent: 95,
            scan_ms: 100,
            cold_scans: 2,
            demote_batch: 512,
            pingpong_window_ms: 2000,
            hold_back: true,
        }
    }
}

impl TieringSpec {
    /// Checks ranges; the error names the field.
    pub fn validate(&self, folios: u32) -> Result<(), String> {
        let bad = |f: &str, why: &str| Err(format!("migrate.tiering.{f}: {why}"));
        if self.dram_budget == 0 {
            return Ok(());
        }
        if self.dram_budget >= folios {
            return bad(
                "dram_budget",
                "must be smaller than workload.pages (or 0: no budget)",
            );
        }
        if self.high_percent > 100 {
            return bad("high_percent", "must be at most 100");
        }
        if self.low_percent >= self.high_percent {
            return bad("low_percent", "needs low_percent < high_percent <= 100");
        }
        if self.demote_batch == 0 || self.demote_batch > 1024 {
            return bad("demote_batch", "must be 1..=1024");
        }
        if self.scan_ms == 0 {
            return bad("scan_ms", "must be at least 1");
        }
        Ok(())
    }
}

/// What tiering did in a run (in the migrator's report when a budget was set).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TieringReport {
    pub dram_budget: u32,
    pub low_watermark: u32,
    pub high_watermark: u32,
    /// Folios moved to node 0 / to node 1 over the run.
    pub promoted_total: u64,
    pub demoted_total: u64,
    pub demotion_batches: Vec<crate::spec::BatchStat>,
    /// After each batch: (ms, promoted so far, demoted so far, folios on node 0).
    pub timeline: Vec<(u64, u64, u64, u32)>,
    /// Most folios on node 0 at once (never above the budget).
    pub max_used: u32,
    /// Promotions sent back because the budget was full (they waited for demotion).
    pub promotions_deferred: u64,
    /// Demotions wanted but not made: too few folios resident on node 0 for `cold_scans`.
    pub short_of_cold: u64,
    pub pingpong: crate::pingpong::PingPongCounters,
    /// Accessed-bit scans of node 0.
    pub scans: u64,
    /// Folios still held back when the run ended.
    pub held_at_end: u64,
    /// Migration cost charged to each owner of folios.
    pub owners: Vec<crate::cost_model::OwnerCost>,
}

/// The budget and its two watermarks, in folios.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budget {
    pub pages: u32,
    pub low: u32,
    pub high: u32,
}

impl Budget {
    /// None without a budget.
    pub fn of(s: &TieringSpec) -> Option<Self> {
        (s.dram_budget > 0).then(|| {
            let at = |p: u8| (u64::from(s.dram_budget) * u64::from(p) / 100) as u32;
            Self {
                pages: s.dram_budget,
                low: at(s.low_percent),
                high: at(s.high_percent).max(at(s.low_percent) + 1),
            }
        })
    }

    /// Promotions that may go now with `used` folios on node 0: the room under the budget.
    pub fn room(&self, used: u32) -> u32 {
        self.pages.saturating_sub(used)
    }

    /// Folios to demote now: none while `used` plus the `waiting` promotions stay at or under
    /// the high watermark; otherwise enough to bring usage down to the low watermark while
    /// making room for the waiting promotions (they count as usage to come).
    pub fn to_demote(&self, used: u32, waiting: u32) -> u32 {
        let want = used.saturating_add(waiting);
        if want <= self.high {
            return 0;
        }
        want.saturating_sub(self.low).min(used)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(pages: u32) -> Budget {
        Budget::of(&TieringSpec {
            dram_budget: pages,
            ..TieringSpec::default()
        })
        .expect("a budget")
    }

    #[test]
    fn watermarks_are_shares_of_the_budget() {
        let b = budget(1000);
        assert_eq!((b.pages, b.low, b.high), (1000, 850, 950));
        assert_eq!(Budget::of(&TieringSpec::default()), None, "0: no budget");
        // Tiny budgets still have high > low.
        let b = budget(4);
        assert!(b.high > b.low, "{b:?}");
    }

    #[test]
    fn demotion_starts_above_high_and_goes_down_to_low() {
        let b = budget(1000);
        assert_eq!(b.to_demote(950, 0), 0, "at the high watermark: nothing yet");
        assert_eq!(b.to_demote(951, 0), 101, "above it: down to 850");
        assert_eq!(b.to_demote(1000, 0), 150);
        assert_eq!(b.to_demote(0, 0), 0);
    }

    #[test]
    fn waiting_promotions_count_as_usage_to_come() {
        let b = budget(1000);
        assert_eq!(b.to_demote(900, 50), 0, "fits under high");
        assert_eq!(
            b.to_demote(900, 100),
            150,
            "1000 wanted: 150 go so 100 fit at low"
        );
        // Never more than what is on node 0.
        assert_eq!(b.to_demote(10, 5000), 10);
    }

    #[test]
    fn promotion_room_is_what_is_left_of_the_budget() {
        let b = budget(1000);
        assert_eq!(b.room(990), 10);
        assert_eq!(b.room(1000), 0);
        assert_eq!(b.room(1200), 0, "over budget: nothing goes");
    }

    #[test]
    fn validation_names_the_field() {
        let s = TieringSpec {
            dram_budget: 100,
            low_percent: 90,
            high_percent: 80,
            ..TieringSpec::default()
        };
        assert!(s
            .validate(1000)
            .expect_err("low >= high")
            .contains("low_percent"));
        let s = TieringSpec {
            dram_budget: 100,
            high_percent: 120,
            ..TieringSpec::default()
        };
        let e = s.validate(1000).expect_err("high > 100");
        assert!(
            e.contains("high_percent") && !e.contains("low_percent"),
            "{e}"
        );
        let s = TieringSpec {
            dram_budget: 1000,
            ..TieringSpec::default()
        };
        assert!(s
            .validate(1000)
            .expect_err("too big")
            .contains("dram_budget"));
        assert!(TieringSpec::default().validate(10).is_ok());
    }
}
