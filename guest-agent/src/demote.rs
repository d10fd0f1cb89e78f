//! Tiering both ways: demotion of cold folios from node 0 to node 1 under the workload's DRAM
//! budget, plugged into the migrator's pipeline ([`crate::pipeline`]) as three parts sharing
//! one [`Tiering`] state:
//!
//! - [`PromoteSide`], the pipeline's mover: holds back ping-pong candidates
//!   ([`crate::pingpong`]), sends back what does not fit under the budget (the promoter
//!   requeues it: promotion waits for demotion, as mm/migrate.c `migrate_balanced_pgdat()`
//!   makes a promotion wait for room on the target node), and moves the rest to node 0;
//! - [`BudgetSide`], the pipeline's budget: the promoter hands out no more than the room left;
//! - [`DemoteStage`], an extra stage: every `scan_ms` it ages the access counts of node 0's
//!   folios ([`crate::cold`]); above the high watermark ([`crate::budget`]), counting the
//!   promotions waiting, it demotes the coldest folios in one batch down to the low watermark
//!   (mm/vmscan.c `demote_folio_list()`: reclaim on a node with a lower tier migrates instead
//!   of discarding). Demotion goes through the same mover as promotion: the same engines (SDXi
//!   copies node 0 -> node 1 too), the same write-protect/copy/remap steps, the same
//!   verification and CPU fallback. A demoted folio is forgotten by the promoter, so it comes
//!   back only once a source finds it hot again (with source `all`, at once: a churn test).
//!
//! Every batch is charged to its folios' owner ([`crate::cost_model::Attribution`]) and
//! logged with its direction for the report's promotion/demotion plot.

use crate::arena::Arena;
use crate::budget::{Budget as Watermarks, TieringReport, TieringSpec};
use crate::cold::ColdScan;
use crate::cost_model::{Attribution, Direction};
use crate::migrate::MigrateError;
use crate::mover::BatchMover;
use crate::pingpong::{HeldBack, PingPong};
use crate::pipeline::{Budget, Stage, Tick};
use crate::spec::{BatchStat, SourceKind};
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::Ordering;

/// Moves a batch to either node (node 1 -> 0 promotes, 0 -> 1 demotes).
pub trait TierMover {
    /// Moves `folios` (all on the other node) to `node` as one batch starting at `start_ms`;
    /// returns the batch's statistics and the folios that stayed.
    fn move_to(
        &mut self,
        folios: Vec<u32>,
        start_ms: u64,
        node: u8,
    ) -> Result<(BatchStat, Vec<u32>), MigrateError>;
}

impl TierMover for crate::mover::Mover<'_> {
    fn move_to(
        &mut self,
        folios: Vec<u32>,
        start_ms: u64,
        node: u8,
    ) -> Result<(BatchStat, Vec<u32>), MigrateError> {
        self.migrate_to(folios, start_ms, node)
    }
}

/// Where each folio is and how often it was accessed: the arena, or a fake in tests.
pub trait Placement {
    fn folios(&self) -> usize;
    fn node(&self, i: usize) -> u8;
    /// Reads and clears folio `i`'s access count.
    fn take_accessed(&self, i: usize) -> u8;
}

impl Placement for Arena {
    fn folios(&self) -> usize {
        self.n
    }
    fn node(&self, i: usize) -> u8 {
        self.node[i].load(Ordering::Acquire)
    }
    fn take_accessed(&self, i: usize) -> u8 {
        self.accessed[i].swap(0, Ordering::Relaxed)
    }
}

/// The state the three parts share.
pub struct Tiering<'m> {
    mover: &'m mut dyn TierMover,
    place: &'m dyn Placement,
    spec: TieringSpec,
    marks: Option<Watermarks>,
    cold: ColdScan,
    pingpong: PingPong,
    held: HeldBack,
    /// Folios of the workload on node 0 now.
    used: u32,
    next_scan: u64,
    /// With source `all`, a demoted folio is recorded again at once (at this threshold).
    rerecord: Option<u32>,
    /// Owner of folio `i` (workload or cgroup name) for cost attribution.
    owner: Box<dyn Fn(u32) -> String + 'm>,
    folio_bytes: u64,
    pub attribution: Attribution,
    pub report: TieringReport,
    /// Every folio that moved at least once (either way).
    pub moved: Vec<bool>,
}

impl std::fmt::Debug for Tiering<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tiering")
            .field("used", &self.used)
            .field("marks", &self.marks)
            .finish_non_exhaustive()
    }
}

/// The handle the pipeline's parts hold.
pub type Shared<'m> = Rc<RefCell<Tiering<'m>>>;

impl<'m> Tiering<'m> {
    pub fn new(
        spec: &TieringSpec,
        mover: &'m mut dyn TierMover,
        place: &'m dyn Placement,
        source: SourceKind,
        threshold: u32,
        folio_bytes: u64,
        owner: Box<dyn Fn(u32) -> String + 'm>,
    ) -> Shared<'m> {
        let n = place.folios();
        let used = (0..n).filter(|&i| place.node(i) == 0).count() as u32;
        let marks = Watermarks::of(spec);
        Rc::new(RefCell::new(Self {
            mover,
            place,
            spec: spec.clone(),
            marks,
            cold: ColdScan::new(n, spec.cold_scans),
            pingpong: PingPong::new(spec.pingpong_window_ms, spec.hold_back),
            held: HeldBack::default(),
            used,
            next_scan: spec.scan_ms,
            rerecord: (source == SourceKind::All).then_some(threshold),
            owner,
            folio_bytes,
            attribution: Attribution::default(),
            report: TieringReport {
                dram_budget: spec.dram_budget,
                low_watermark: marks.map_or(0, |m| m.low),
                high_watermark: marks.map_or(0, |m| m.high),
                ..TieringReport::default()
            },
            moved: vec![false; n],
        }))
    }

    /// Folios on node 0 now.
    pub fn used(&self) -> u32 {
        self.used
    }

    /// Moves a batch and does the bookkeeping common to both directions.
    fn move_batch(
        &mut self,
        folios: Vec<u32>,
        now: u64,
        node: u8,
    ) -> Result<(BatchStat, Vec<u32>), MigrateError> {
        let (stat, stayed) = self.mover.move_to(folios.clone(), now, node)?;
        let dir = if node == 0 {
            Direction::Promote
        } else {
            Direction::Demote
        };
        let stayed_set: std::collections::HashSet<u32> = stayed.iter().copied().collect();
        let done: Vec<u32> = folios
            .into_iter()
            .filter(|f| !stayed_set.contains(f))
            .collect();
        let owners: Vec<String> = done.iter().map(|&f| (self.owner)(f)).collect();
        let refs: Vec<&str> = owners.iter().map(String::as_str).collect();
        self.attribution
            .charge(&refs, dir, self.folio_bytes, stat.cpu_ns, stat.latency_us);
        for &f in &done {
            if let Some(m) = self.moved.get_mut(f as usize) {
                *m = true;
            }
        }
        let k = done.len() as u32;
        let r = &mut self.report;
        match dir {
            Direction::Promote => {
                self.used += k;
                r.promoted_total += u64::from(k);
                for &f in &done {
                    // The count grew on node 1, where no scan cleared it: it starts afresh.
                    self.place.take_accessed(f as usize);
                    self.cold.arrived(f);
                    self.pingpong.promoted(f, now);
                }
            }
            Direction::Demote => {
                self.used = self.used.saturating_sub(k);
                r.demoted_total += u64::from(k);
                r.demotion_batches.push(stat.clone());
                for &f in &done {
                    self.pingpong.demoted(f, now);
                }
            }
        }
        r.timeline
            .push((now, r.promoted_total, r.demoted_total, self.used));
        r.max_used = r.max_used.max(self.used);
        Ok((stat, stayed))
    }

    /// The report with the counters of the parts filled in.
    pub fn finish(&mut self) -> TieringReport {
        let mut r = std::mem::take(&mut self.report);
        r.pingpong = self.pingpong.counters;
        r.scans = self.cold.scans;
        r.held_at_end = self.held.len() as u64;
        r.owners = self.attribution.owners();
        r
    }
}

/// The pipeline's mover: promotion with hold-back and the budget.
#[derive(Debug)]
pub struct PromoteSide<'m>(pub Shared<'m>);

impl BatchMover for PromoteSide<'_> {
    fn move_batch(
        &mut self,
        folios: Vec<u32>,
        start_ms: u64,
    ) -> Result<(BatchStat, Vec<u32>), MigrateError> {
        let mut t = self.0.borrow_mut();
        let mut go = Vec::with_capacity(folios.len());
        for f in folios {
            if t.pingpong.admit(f, start_ms) {
                go.push(f);
            } else if let Some(at) = t.pingpong.release_at(f) {
                t.held.hold(f, at);
            }
        }
        // What does not fit under the budget goes back to the promoter and waits.
        let room = t.marks.map_or(usize::MAX, |m| m.room(t.used) as usize);
        let mut back = Vec::new();
        if go.len() > room {
            back = go.split_off(room);
            t.report.promotions_deferred += back.len() as u64;
        }
        if go.is_empty() {
            let stat = BatchStat {
                start_ms,
                ..BatchStat::default()
            };
            return Ok((stat, back));
        }
        let (stat, mut stayed) = t.move_batch(go, start_ms, 0)?;
        stayed.extend(back);
        Ok((stat, stayed))
    }
}

/// The pipeline's budget: no more promotions handed out than there is room for.
#[derive(Debug)]
pub struct BudgetSide<'m>(pub Shared<'m>);

impl Budget for BudgetSide<'_> {
    fn allow(&mut self, _now_ms: u64, want: usize) -> usize {
        let t = self.0.borrow();
        t.marks.map_or(want, |m| want.min(m.room(t.used) as usize))
    }
}

/// The demotion stage.
#[derive(Debug)]
pub struct DemoteStage<'m>(pub Shared<'m>);

impl Stage for DemoteStage<'_> {
    fn tick(&mut self, tick: Tick<'_>) -> Result<(), MigrateError> {
        let now = tick.now_ms;
        let mut t = self.0.borrow_mut();
        // Held-back folios whose window passed may be promoted again.
        for f in t.held.release(now) {
            tick.promoter.requeue(f);
        }
        let Some(marks) = t.marks else {
            return Ok(());
        };
        if now < t.next_scan {
            return Ok(());
        }
        t.next_scan = now + t.spec.scan_ms;
        let place = t.place;
        t.cold
            .scan(|i| place.node(i) == 0, |i| place.take_accessed(i));
        let batch = t.spec.demote_batch;
        // Waiting: ready in the promoter, or handed out and in the batcher.
        let waiting = ((tick.promoter.pending() + tick.queued) as u32).min(batch);
        let want = marks.to_demote(t.used, waiting).min(batch) as usize;
        if want == 0 {
            return Ok(());
        }
        let victims = t.cold.coldest(|i| place.node(i) == 0, want);
        if victims.len() < want {
            t.report.short_of_cold += (want - victims.len()) as u64;
        }
        if victims.is_empty() {
            return Ok(());
        }
        let (_, stayed) = t.move_batch(victims.clone(), now, 1)?;
        for f in victims {
            if stayed.contains(&f) {
                continue;
            }
            tick.promoter.forget(f);
            if let Some(th) = t.rerecord {
                tick.promoter.record(f, th, SourceKind::All, now);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::{AccessCounter, Clock, Pipeline, Sampler, SourceStage};
    use crate::promote::{Batcher, Promoter};
    use std::cell::Cell;

    /// Nodes and access counts in cells; the mover flips nodes (and fails the folios listed).
    struct Fake {
        node: Vec<Cell<u8>>,
        accessed: Vec<Cell<u8>>,
    }

    impl Fake {
        fn new(n: usize) -> Self {
            Self {
                node: (0..n).map(|_| Cell::new(1)).collect(),
                accessed: (0..n).map(|_| Cell::new(0)).collect(),
            }
        }
    }

    impl Placement for Fake {
        fn folios(&self) -> usize {
            self.node.len()
        }
        fn node(&self, i: usize) -> u8 {
            self.node[i].get()
        }
        fn take_accessed(&self, i: usize) -> u8 {
            self.accessed[i].replace(0)
        }
    }

    struct FakeMover<'a> {
        fake: &'a Fake,
        /// (node, folios) of each batch.
        log: Vec<(u8, Vec<u32>)>,
    }

    impl TierMover for FakeMover<'_> {
        fn move_to(
            &mut self,
            folios: Vec<u32>,
            start_ms: u64,
            node: u8,
        ) -> Result<(BatchStat, Vec<u32>), MigrateError> {
            for &f in &folios {
                assert_ne!(
                    self.fake.node[f as usize].get(),
                    node,
                    "folio {f} already there"
                );
                self.fake.node[f as usize].set(node);
            }
            self.log.push((node, folios.clone()));
            let stat = BatchStat {
                folios: folios.len() as u32,
                start_ms,
                latency_us: 100,
                cpu_ns: 1000 * folios.len() as u64,
                ..BatchStat::default()
            };
            Ok((stat, Vec::new()))
        }
    }

    fn spec(budget: u32) -> TieringSpec {
        TieringSpec {
            dram_budget: budget,
            low_percent: 50,
            high_percent: 90,
            scan_ms: 10,
            cold_scans: 1,
            demote_batch: 64,
            pingpong_window_ms: 1000,
            hold_back: true,
        }
    }

    /// The shared state over a fake placement and mover, with the test budget.
    fn tiering<'m, 'f: 'm>(
        mover: &'m mut FakeMover<'f>,
        fake: &'m Fake,
        budget: u32,
        source: SourceKind,
        owner: Option<Box<dyn Fn(u32) -> String + 'm>>,
    ) -> Shared<'m> {
        let owner = owner.unwrap_or_else(|| Box::new(|_| "w".into()));
        Tiering::new(&spec(budget), mover, fake, source, 1, 4096, owner)
    }

    impl<'a> FakeMover<'a> {
        fn new(fake: &'a Fake) -> Self {
            Self {
                fake,
                log: Vec::new(),
            }
        }
    }

    fn tick(stage: &mut DemoteStage<'_>, p: &mut Promoter, now: u64) {
        tick_queued(stage, p, now, 0);
    }

    /// A tick with `queued` folios waiting in the batcher.
    fn tick_queued(stage: &mut DemoteStage<'_>, p: &mut Promoter, now: u64, queued: usize) {
        stage
            .tick(Tick {
                now_ms: now,
                promoter: p,
                queued,
                batches: &[],
            })
            .expect("tick");
    }

    /// 2 ms per idle tick, as the wall clock sleeps; no workload accesses.
    struct Ms(Cell<u64>);

    impl Clock for Ms {
        fn now_ms(&self) -> u64 {
            self.0.get()
        }
        fn idle(&self) {
            self.0.set(self.0.get() + 2);
        }
    }

    impl AccessCounter for Ms {
        fn totals(&self) -> (u64, u64) {
            (0, 0)
        }
    }

    #[test]
    fn folios_in_the_batcher_count_against_the_room() {
        let fake = Fake::new(40);
        let mut mover = FakeMover::new(&fake);
        let t = tiering(&mut mover, &fake, 20, SourceKind::All, None);
        let mut up = PromoteSide(Rc::clone(&t));
        let mut p = Pipeline {
            source: SourceStage::new(SourceKind::All, None, 50),
            promoter: Promoter::new(1, 1000, 65536, 4096),
            batcher: Batcher::new(512, 100, false),
            mover: &mut up,
            sampler: Sampler::new(250),
            budget: Some(Box::new(BudgetSide(Rc::clone(&t)))),
            stages: Vec::new(),
            batches: Vec::new(),
            tuned: Vec::new(),
            auto_tune: false,
        };
        for f in 0..40 {
            p.promoter.record(f, 1, SourceKind::All, 0);
        }
        // Ticks every 2 ms while the first batch waits 100 ms for its timeout.
        let clock = Ms(Cell::new(0));
        p.run(&clock, &clock, 150).expect("run");
        let handed_out = p.promoter.counters.handed_out;
        drop(p);
        assert_eq!(handed_out, 20, "the room once, not at every tick");
        let r = t.borrow().report.clone();
        assert_eq!((r.promoted_total, r.promotions_deferred), (20, 0));
    }

    #[test]
    fn a_promoted_folio_starts_with_no_access_count() {
        let fake = Fake::new(4);
        let mut mover = FakeMover::new(&fake);
        let t = tiering(&mut mover, &fake, 3, SourceKind::Chmu, None);
        let (mut up, mut down) = (PromoteSide(Rc::clone(&t)), DemoteStage(Rc::clone(&t)));
        // Accessed 200 times while on node 1, where scans do not clear the count.
        fake.accessed[0].set(200);
        up.move_batch(vec![0, 1], 0).expect("promote");
        fake.accessed[1].set(3);
        let mut p = Promoter::new(1, 1000, 65536, 4096);
        tick(&mut down, &mut p, 10);
        let t = t.borrow();
        assert_eq!(
            (t.cold.heat(0), t.cold.heat(1)),
            (0, 3),
            "only accesses since the promotion count"
        );
    }

    #[test]
    fn promotions_in_the_batcher_count_as_waiting_for_demotion() {
        let fake = Fake::new(40);
        let mut mover = FakeMover::new(&fake);
        let t = tiering(&mut mover, &fake, 20, SourceKind::Chmu, None);
        let (mut up, mut down) = (PromoteSide(Rc::clone(&t)), DemoteStage(Rc::clone(&t)));
        up.move_batch((0..10).collect(), 0).expect("promote");
        let mut p = Promoter::new(1, 1000, 65536, 4096);
        tick_queued(&mut down, &mut p, 10, 0);
        assert_eq!(
            t.borrow().report.demoted_total,
            0,
            "10 used: under high (18)"
        );
        // 10 used + 10 in the batcher > high: down to low (10) with room for the 10.
        tick_queued(&mut down, &mut p, 20, 10);
        assert_eq!(t.borrow().report.demoted_total, 10);
    }

    #[test]
    fn promotion_stops_at_the_budget_and_demotion_makes_room_with_cold_folios() {
        let fake = Fake::new(40);
        let mut mover = FakeMover::new(&fake);
        let t = tiering(&mut mover, &fake, 20, SourceKind::Chmu, None);
        let (mut up, mut budget, mut down) = (
            PromoteSide(Rc::clone(&t)),
            BudgetSide(Rc::clone(&t)),
            DemoteStage(Rc::clone(&t)),
        );
        assert_eq!(budget.allow(0, 100), 20, "room: the whole budget");
        // 25 folios offered: 20 move, 5 wait.
        let (stat, back) = up.move_batch((0..25).collect(), 0).expect("move");
        assert_eq!((stat.folios, back.len()), (20, 5));
        assert_eq!(t.borrow().used(), 20);
        assert_eq!(budget.allow(1, 100), 0, "full");
        // Folios 0..10 stay hot, 10..20 go cold; the 5 wait as ready promotions.
        let mut p = Promoter::new(1, 1000, 65536, 4096);
        for f in 20..25 {
            p.record(f, 1, SourceKind::Chmu, 0);
        }
        for i in 0..10 {
            fake.accessed[i].set(9);
        }
        tick(&mut down, &mut p, 10);
        // 20 used + 5 waiting > high (18): down to low (10) plus room for 5: 15 demoted, the
        // 10 cold ones first, then 5 of the hot ones.
        let r = t.borrow().report.clone();
        assert_eq!(r.demoted_total, 15);
        assert_eq!(r.short_of_cold, 0);
        assert_eq!(t.borrow().used(), 5);
        assert!(
            (10..20).all(|i| fake.node[i].get() == 1),
            "the cold ones went"
        );
        assert_eq!(
            (0..10).filter(|&i| fake.node[i].get() == 0).count(),
            5,
            "half the hot ones stayed"
        );
        assert_eq!(budget.allow(11, 100), 15);
        drop((up, budget, down, t));
        let log = &mover.log;
        assert_eq!(log.len(), 2);
        assert_eq!(log[1].0, 1, "the second batch demoted");
    }

    #[test]
    fn a_folio_wanted_back_within_the_window_is_held_then_requeued() {
        let fake = Fake::new(10);
        let mut mover = FakeMover::new(&fake);
        let t = tiering(&mut mover, &fake, 4, SourceKind::Chmu, None);
        let (mut up, mut down) = (PromoteSide(Rc::clone(&t)), DemoteStage(Rc::clone(&t)));
        up.move_batch(vec![0, 1, 2, 3], 0).expect("promote");
        let mut p = Promoter::new(1, 1000, 65536, 4096);
        tick(&mut down, &mut p, 10); // all 4 age, used 4 > high 3: down to 2.
        assert_eq!(t.borrow().report.demoted_total, 2);
        let demoted: Vec<u32> = (0..4)
            .filter(|&i| fake.node[i].get() == 1)
            .map(|i| i as u32)
            .collect();
        assert_eq!(demoted, vec![0, 1]);
        // Wanted back 100 ms later: held, not moved.
        let (stat, back) = up.move_batch(demoted.clone(), 110).expect("held");
        assert_eq!((stat.folios, back.len()), (0, 0));
        assert_eq!(t.borrow().pingpong.counters.held_back, 2);
        // The window (1000 ms after the demotion at 10) ends at 1010: requeued then.
        p.record(0, 1, SourceKind::Chmu, 0);
        p.take(0, 10);
        tick(&mut down, &mut p, 1009);
        assert_eq!(p.pending(), 0);
        tick(&mut down, &mut p, 1010);
        assert_eq!(
            p.pending(),
            1,
            "folio 0 (known to the promoter) ready again"
        );
        let (stat, _) = up.move_batch(vec![0, 1], 1011).expect("after the window");
        assert_eq!(stat.folios, 2);
        let r = t.borrow_mut().finish();
        assert_eq!(r.pingpong.promoted_within_window, 0);
    }

    #[test]
    fn cost_is_charged_per_owner_and_direction() {
        let fake = Fake::new(8);
        let mut mover = FakeMover::new(&fake);
        let owner = |f: u32| {
            if f < 4 {
                "a".to_owned()
            } else {
                "b".to_owned()
            }
        };
        let t = tiering(&mut mover, &fake, 4, SourceKind::All, Some(Box::new(owner)));
        let (mut up, mut down) = (PromoteSide(Rc::clone(&t)), DemoteStage(Rc::clone(&t)));
        up.move_batch(vec![0, 1, 4, 5], 0).expect("promote");
        let mut p = Promoter::new(1, 1000, 65536, 4096);
        for f in [2, 3, 6, 7] {
            p.record(f, 1, SourceKind::All, 0);
        }
        tick(&mut down, &mut p, 10);
        let r = t.borrow_mut().finish();
        let (a, b) = (&r.owners[0], &r.owners[1]);
        assert_eq!((a.promoted, b.promoted), (2, 2));
        assert_eq!(a.demoted + b.demoted, r.demoted_total);
        assert!(r.demoted_total >= 2);
        // Source `all`: demoted folios are recorded again at once.
        assert!(p.pending() >= 4 + r.demoted_total as usize);
        assert!((a.cpu_s + b.cpu_s - 1e-6 * (4 + r.demoted_total) as f64).abs() < 1e-12);
    }
}
