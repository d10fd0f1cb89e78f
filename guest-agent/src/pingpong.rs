//! Ping-pong control: a folio demoted and then wanted on node 0 again within a window moved
//! twice for nothing (the thrashing the kernel's promotion rate limit and hot-threshold tuning
//! in kernel/sched/fair.c `numa_promotion_tuning`/`should_numa_migrate_memory` guard against).
//! Each such promotion request is counted; with hold-back on, the folio is held back until the
//! window since its demotion has passed, and only then may it be promoted (if still hot).
//!
//! No I/O: the migrator passes the time (ms) in, so the tests run on a fake clock.

use std::collections::HashMap;

/// Counters of ping-pong control.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct PingPongCounters {
    /// Promotion requests for a folio demoted less than a window earlier.
    pub within_window: u64,
    /// Of those, the ones held back (the others were promoted at once: hold-back off).
    pub held_back: u64,
    /// Folios actually promoted within a window of their demotion.
    pub promoted_within_window: u64,
}

/// Demotion times and hold-backs per folio.
#[derive(Debug)]
pub struct PingPong {
    window_ms: u64,
    hold_back: bool,
    demoted_at: HashMap<u32, u64>,
    pub counters: PingPongCounters,
}

impl PingPong {
    /// `window_ms` 0 turns the control off (nothing counted or held).
    pub fn new(window_ms: u64, hold_back: bool) -> Self {
        Self {
            window_ms,
            hold_back,
            demoted_at: HashMap::new(),
            counters: PingPongCounters::default(),
        }
    }

    /// `folio` went to node 1 at `now_ms`.
    pub fn demoted(&mut self, folio: u32, now_ms: u64) {
        if self.window_ms > 0 {
            self.demoted_at.insert(folio, now_ms);
        }
    }

    /// Whether `folio` may be promoted at `now_ms`: false while it is held back. Every
    /// request within the window is counted.
    pub fn admit(&mut self, folio: u32, now_ms: u64) -> bool {
        let Some(&t) = self.demoted_at.get(&folio) else {
            return true;
        };
        if now_ms.saturating_sub(t) >= self.window_ms {
            self.demoted_at.remove(&folio);
            return true;
        }
        self.counters.within_window += 1;
        if self.hold_back {
            self.counters.held_back += 1;
            return false;
        }
        // Kept, so `promoted` counts the quick return.
        true
    }

    /// When a held folio's window ends (None: not held).
    pub fn release_at(&self, folio: u32) -> Option<u64> {
        self.demoted_at.get(&folio).map(|t| t + self.window_ms)
    }

    /// `folio` went to node 0 at `now_ms` (after [`PingPong::admit`] let it).
    pub fn promoted(&mut self, folio: u32, now_ms: u64) {
        if let Some(t) = self.demoted_at.remove(&folio) {
            if now_ms.saturating_sub(t) < self.window_ms {
                self.counters.promoted_within_window += 1;
            }
        }
    }
}

/// Folios held back, each with the time it may go: released in time order.
#[derive(Debug, Default)]
pub struct HeldBack {
    held: std::collections::BTreeMap<(u64, u32), ()>,
}

impl HeldBack {
    pub fn hold(&mut self, folio: u32, until_ms: u64) {
        self.held.insert((until_ms, folio), ());
    }

    pub fn len(&self) -> usize {
        self.held.len()
    }

    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// Folios whose hold ended by `now_ms`.
    pub fn release(&mut self, now_ms: u64) -> Vec<u32> {
        let later = self.held.split_off(&(now_ms + 1, 0));
        let due = std::mem::replace(&mut self.held, later);
        due.into_keys().map(|(_, f)| f).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quick_return_is_counted_and_held_back_until_the_window_passes() {
        let mut p = PingPong::new(2000, true);
        p.demoted(7, 1000);
        assert!(!p.admit(7, 1500), "wanted back 500 ms after demotion: held");
        assert!(!p.admit(7, 2999), "still inside the window");
        assert_eq!(p.release_at(7), Some(3000));
        assert!(p.admit(7, 3000), "the window passed");
        p.promoted(7, 3000);
        assert_eq!(
            p.counters,
            PingPongCounters {
                within_window: 2,
                held_back: 2,
                promoted_within_window: 0
            }
        );
    }

    #[test]
    fn without_hold_back_it_is_counted_and_promoted() {
        let mut p = PingPong::new(2000, false);
        p.demoted(3, 0);
        assert!(p.admit(3, 100));
        p.promoted(3, 100);
        assert_eq!(p.counters.within_window, 1);
        assert_eq!(p.counters.held_back, 0);
        assert_eq!(p.counters.promoted_within_window, 1);
    }

    #[test]
    fn folios_never_demoted_or_demoted_long_ago_go_freely() {
        let mut p = PingPong::new(2000, true);
        assert!(p.admit(1, 0));
        p.demoted(2, 0);
        assert!(p.admit(2, 5000));
        assert_eq!(p.counters, PingPongCounters::default());
        let mut off = PingPong::new(0, true);
        off.demoted(4, 0);
        assert!(off.admit(4, 0), "window 0: control off");
    }

    #[test]
    fn held_folios_are_released_in_time_order() {
        let mut h = HeldBack::default();
        h.hold(5, 300);
        h.hold(1, 100);
        h.hold(9, 200);
        assert!(h.release(99).is_empty());
        assert_eq!(h.release(200), vec![1, 9]);
        assert_eq!(h.len(), 1);
        assert_eq!(h.release(1000), vec![5]);
        assert!(h.is_empty());
    }
}
