//! The migrator's run loop as a pipeline: source -> promoter -> batcher -> mover -> report.
//!
//! Each tick, at most every 2 ms (right away after a batch moved):
//!
//! 1. [`SourceStage`]: every `scan_ms`, polls the hotness source and records what it found
//!    with the promoter (the kernel's `pghot_record_access()` producers);
//! 2. the [`Promoter`] hands out the hot folios its rate limit allows, up to two batches'
//!    worth beyond what waits, capped by an optional [`Budget`];
//! 3. the [`Batcher`] flushes a batch when it is full or its oldest folio timed out;
//! 4. the [`BatchMover`] moves it; folios that stayed are requeued with the promoter;
//! 5. [`Sampler`]: every `sample_ms`, the share of the workload's accesses served by node 0
//!    (and once right before the first batch, so the series starts before anything moved).
//!
//! Extra [`Stage`]s (for example demotion) run after the mover at every tick. Time comes
//! from a [`Clock`], the workload's counts from an [`AccessCounter`], so the loop runs in
//! unit tests on a fake clock with a scripted source and mover.

use crate::migrate::MigrateError;
use crate::mover::BatchMover;
use crate::promote::{Batcher, Promoter};
use crate::sources::HotnessSource;
use crate::spec::{BatchStat, SourceKind, SourceStats};
use std::collections::HashSet;
use std::time::{Duration, Instant};

/// The run's time base.
pub trait Clock {
    /// Milliseconds since the run started.
    fn now_ms(&self) -> u64;
    /// Waits a little when a tick had nothing to move.
    fn idle(&self);
}

/// The wall clock from the workload's start; idling sleeps 2 ms.
#[derive(Clone, Copy, Debug)]
pub struct WallClock(pub Instant);

impl Clock for WallClock {
    fn now_ms(&self) -> u64 {
        self.0.elapsed().as_millis() as u64
    }
    fn idle(&self) {
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// The workload's access counts so far: (accesses, accesses that hit node 0).
pub trait AccessCounter {
    fn totals(&self) -> (u64, u64);
}

impl AccessCounter for crate::workload::Workload {
    fn totals(&self) -> (u64, u64) {
        crate::workload::Workload::totals(self)
    }
}

/// Caps how many folios the promoter may hand to the batcher at a tick (for example a
/// capacity budget of the fast tier). The default pipeline has none.
pub trait Budget {
    /// How many of the `want` folios may go at `now_ms`; `want` counts the folios already
    /// waiting in the batcher too (handed out, not yet moved), so the answer does as well.
    fn allow(&mut self, now_ms: u64, want: usize) -> usize;
    /// A batch moved.
    fn moved(&mut self, _stat: &BatchStat) {}
}

/// What an extra stage sees at each tick.
#[derive(Debug)]
pub struct Tick<'a> {
    pub now_ms: u64,
    pub promoter: &'a mut Promoter,
    /// Folios handed out by the promoter and waiting in the batcher for their batch.
    pub queued: usize,
    /// Every batch moved so far.
    pub batches: &'a [BatchStat],
}

/// An extra stage run at every tick after the mover (for example demotion).
pub trait Stage {
    fn tick(&mut self, t: Tick<'_>) -> Result<(), MigrateError>;
}

/// Stage 1: the hotness source, polled every `scan_ms`, and what it reported.
pub struct SourceStage {
    source: Option<Box<dyn HotnessSource>>,
    scan_ms: u64,
    next_scan: u64,
    pub stats: SourceStats,
    /// Every folio the source named.
    pub reported: HashSet<u32>,
}

impl std::fmt::Debug for SourceStage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceStage")
            .field("scan_ms", &self.scan_ms)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl SourceStage {
    /// `source` None: nothing is polled (every folio was recorded up front, or something
    /// other than the migrator promotes).
    pub fn new(kind: SourceKind, source: Option<Box<dyn HotnessSource>>, scan_ms: u64) -> Self {
        Self {
            source,
            scan_ms,
            next_scan: 0,
            stats: SourceStats {
                source: kind,
                ..SourceStats::default()
            },
            reported: HashSet::new(),
        }
    }

    /// Polls the source if a scan is due and records its findings with `promoter`.
    pub fn tick(&mut self, now: u64, promoter: &mut Promoter) {
        if now < self.next_scan {
            return;
        }
        self.next_scan = now + self.scan_ms;
        let Some(s) = self.source.as_mut() else {
            return;
        };
        let f = s.poll();
        self.stats.records += f.records;
        self.stats.foreign_records += f.foreign;
        for (folio, count) in f.hits {
            self.reported.insert(folio);
            promoter.record(folio, count, s.kind(), now);
        }
    }

    /// Stops the source (a CHMU instance or a kdamond keeps running until dropped).
    pub fn stop(&mut self) {
        self.source = None;
    }
}

/// Stage 5: the node-0 share of the workload's accesses over time.
#[derive(Debug, Default)]
pub struct Sampler {
    sample_ms: u64,
    next: u64,
    /// Totals at the last sample.
    pub last: (u64, u64),
    /// (ms since start, share of the accesses since the previous sample that hit node 0).
    pub series: Vec<(u64, f64)>,
}

impl Sampler {
    pub fn new(sample_ms: u64) -> Self {
        Self {
            sample_ms,
            next: sample_ms,
            ..Self::default()
        }
    }

    /// Samples if one is due.
    pub fn tick(&mut self, now: u64, acc: &dyn AccessCounter) {
        if now >= self.next {
            self.next = now + self.sample_ms;
            self.sample(now, acc);
        }
    }

    /// Adds a point for the accesses since the previous one (none if there were none).
    pub fn sample(&mut self, now: u64, acc: &dyn AccessCounter) {
        let (a, n0) = acc.totals();
        let (da, dn) = (
            a.saturating_sub(self.last.0),
            n0.saturating_sub(self.last.1),
        );
        if da > 0 {
            self.series.push((now, dn as f64 / da as f64));
        }
        self.last = (a, n0);
    }
}

/// The stages of one run.
pub struct Pipeline<'a> {
    pub source: SourceStage,
    pub promoter: Promoter,
    pub batcher: Batcher,
    pub mover: &'a mut dyn BatchMover,
    pub sampler: Sampler,
    pub budget: Option<Box<dyn Budget + 'a>>,
    pub stages: Vec<Box<dyn Stage + 'a>>,
    /// Every batch moved, in order.
    pub batches: Vec<BatchStat>,
    /// Batch sizes the auto-tuner chose (recorded when `auto_tune`).
    pub tuned: Vec<u32>,
    pub auto_tune: bool,
}

impl std::fmt::Debug for Pipeline<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("source", &self.source)
            .field("batches", &self.batches.len())
            .finish_non_exhaustive()
    }
}

impl<'a> Pipeline<'a> {
    /// Runs ticks until `until_ms`, then moves what is still pending and takes a last
    /// sample.
    pub fn run(
        &mut self,
        clock: &dyn Clock,
        acc: &dyn AccessCounter,
        until_ms: u64,
    ) -> Result<(), MigrateError> {
        loop {
            let now = clock.now_ms();
            if now >= until_ms {
                break;
            }
            self.source.tick(now, &mut self.promoter);
            self.promote(now);
            // Sampled even while batches follow each other back to back.
            self.sampler.tick(now, acc);
            let moved = self.move_due(now, acc)?;
            for s in &mut self.stages {
                s.tick(Tick {
                    now_ms: now,
                    promoter: &mut self.promoter,
                    queued: self.batcher.pending(),
                    batches: &self.batches,
                })?;
            }
            if !moved {
                clock.idle();
            }
        }
        // What is still pending goes in batches of the usual size, the usual way.
        while let Some(b) = self.batcher.drain() {
            self.move_one(b, clock.now_ms(), acc)?;
        }
        self.sampler.sample(clock.now_ms(), acc);
        Ok(())
    }

    /// Stage 2: hot folios from the promoter to the batcher, up to two batches waiting.
    fn promote(&mut self, now: u64) {
        let pend = self.batcher.pending();
        let mut room = (self.batcher.size() as usize * 2).saturating_sub(pend);
        if let Some(b) = self.budget.as_mut() {
            // The folios in the batcher already took their share of the budget.
            room = b.allow(now, room + pend).saturating_sub(pend).min(room);
        }
        for f in self.promoter.take(now, room) {
            self.batcher.push(f, now);
        }
    }

    /// Stages 3 and 4: moves a batch if one is due; true if one moved.
    fn move_due(&mut self, now: u64, acc: &dyn AccessCounter) -> Result<bool, MigrateError> {
        match self.batcher.flush(now) {
            Some(b) => self.move_one(b, now, acc),
            None => Ok(false),
        }
    }

    /// Stage 4: moves batch `b` and records it; requeues what stayed; true if a folio moved.
    fn move_one(
        &mut self,
        b: Vec<u32>,
        now: u64,
        acc: &dyn AccessCounter,
    ) -> Result<bool, MigrateError> {
        if self.batches.is_empty() {
            // The series starts with the share before anything moved.
            self.sampler.sample(now, acc);
        }
        let (stat, stayed) = self.mover.move_batch(b, now)?;
        if stat.folios == 0 {
            // Nothing moved (every folio held back, deferred or failed): no batch to record
            // or to feed the tuner and the budget, and no reason to skip the idle wait.
            for f in stayed {
                self.promoter.requeue(f);
            }
            return Ok(false);
        }
        self.batcher.observe(stat.folios, stat.latency_us);
        if self.auto_tune {
            self.tuned.push(self.batcher.size());
        }
        if let Some(b) = self.budget.as_mut() {
            b.moved(&stat);
        }
        self.batches.push(stat);
        for f in stayed {
            self.promoter.requeue(f);
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    //! The pipeline on a fake clock, with a scripted source, a mover that records its
    //! batches, and access counts that follow what moved.
    use super::*;
    use crate::sources::Findings;
    use std::cell::Cell;
    use std::collections::VecDeque;
    use std::rc::Rc;

    /// 2 ms per idle tick, as the wall clock sleeps.
    struct FakeClock(Cell<u64>);

    impl Clock for FakeClock {
        fn now_ms(&self) -> u64 {
            self.0.get()
        }
        fn idle(&self) {
            self.0.set(self.0.get() + 2);
        }
    }

    /// Findings replayed one list per poll.
    struct Script(VecDeque<Vec<(u32, u32)>>);

    impl HotnessSource for Script {
        fn kind(&self) -> SourceKind {
            SourceKind::Chmu
        }
        fn poll(&mut self) -> Findings {
            let hits = self.0.pop_front().unwrap_or_default();
            Findings {
                records: hits.len() as u64,
                hits,
                foreign: 0,
            }
        }
    }

    /// Records each batch; a folio in `refuse` stays once.
    #[derive(Default)]
    struct Recorder {
        batches: Vec<(u64, Vec<u32>)>,
        refuse: HashSet<u32>,
        moved: Rc<Cell<u64>>,
    }

    impl BatchMover for Recorder {
        fn move_batch(
            &mut self,
            folios: Vec<u32>,
            start_ms: u64,
        ) -> Result<(BatchStat, Vec<u32>), MigrateError> {
            let (stayed, done): (Vec<u32>, Vec<u32>) =
                folios.iter().partition(|f| self.refuse.remove(f));
            self.moved.set(self.moved.get() + done.len() as u64);
            self.batches.push((start_ms, done.clone()));
            let stat = BatchStat {
                folios: done.len() as u32,
                start_ms,
                ..BatchStat::default()
            };
            Ok((stat, stayed))
        }
    }

    /// 1000 accesses per look, spread evenly over `n` folios: the moved ones hit node 0.
    struct Even {
        n: u64,
        moved: Rc<Cell<u64>>,
        looks: Cell<u64>,
        node0: Cell<u64>,
    }

    impl Even {
        fn over(n: u64, rec: &Recorder) -> Self {
            Self {
                n,
                moved: Rc::clone(&rec.moved),
                looks: Cell::new(0),
                node0: Cell::new(0),
            }
        }
    }

    impl AccessCounter for Even {
        fn totals(&self) -> (u64, u64) {
            self.looks.set(self.looks.get() + 1);
            self.node0
                .set(self.node0.get() + 1000 * self.moved.get() / self.n);
            (1000 * self.looks.get(), self.node0.get())
        }
    }

    fn pipeline<'a>(polls: Vec<Vec<(u32, u32)>>, mover: &'a mut Recorder) -> Pipeline<'a> {
        Pipeline {
            source: SourceStage::new(SourceKind::Chmu, Some(Box::new(Script(polls.into()))), 50),
            promoter: Promoter::new(2, 3000, 65536, 4096),
            batcher: Batcher::new(512, 100, false),
            mover,
            sampler: Sampler::new(250),
            budget: None,
            stages: Vec::new(),
            batches: Vec::new(),
            tuned: Vec::new(),
            auto_tune: false,
        }
    }

    fn twice(folios: std::ops::Range<u32>) -> Vec<Vec<(u32, u32)>> {
        let once: Vec<(u32, u32)> = folios.map(|f| (f, 1)).collect();
        vec![once.clone(), once]
    }

    #[test]
    fn hot_folios_flow_from_the_source_through_batches_and_the_share_rises() {
        let mut rec = Recorder::default();
        let acc = Even::over(1000, &rec);
        let mut p = pipeline(twice(0..600), &mut rec);
        p.run(&FakeClock(Cell::new(0)), &acc, 1000).expect("run");
        let (series, source) = (p.sampler.series.clone(), p.source.stats.clone());
        assert_eq!(p.batches.len(), 2);
        drop(p);
        let sizes: Vec<(u64, usize)> = rec.batches.iter().map(|(t, b)| (*t, b.len())).collect();
        assert_eq!(
            sizes,
            vec![(50, 512), (150, 88)],
            "full at the second poll, then timeout"
        );
        assert_eq!(source.records, 1200);
        assert_eq!(
            series.first().map(|s| (s.0, s.1)),
            Some((50, 0.0)),
            "before any move"
        );
        assert!(series.last().is_some_and(|s| s.1 > 0.55), "{series:?}");
        assert!(series.windows(2).all(|w| w[0].0 < w[1].0), "in time order");
    }

    #[test]
    fn a_folio_that_stayed_is_requeued_and_moves_later() {
        let mut rec = Recorder {
            refuse: [7].into(),
            ..Recorder::default()
        };
        let acc = Even::over(10, &rec);
        let mut p = pipeline(twice(0..10), &mut rec);
        p.run(&FakeClock(Cell::new(0)), &acc, 1000).expect("run");
        drop(p);
        let firsts: Vec<u32> = rec.batches[0].1.clone();
        assert!(!firsts.contains(&7));
        assert!(rec.batches[1..].iter().any(|(_, b)| b == &vec![7]));
        assert_eq!(rec.moved.get(), 10);
    }

    /// Lets nothing through before `from` ms, then everything; counts what moved.
    struct From {
        from: u64,
        moved: Rc<Cell<u32>>,
    }

    impl Budget for From {
        fn allow(&mut self, now: u64, want: usize) -> usize {
            if now < self.from {
                0
            } else {
                want
            }
        }
        fn moved(&mut self, stat: &BatchStat) {
            self.moved.set(self.moved.get() + stat.folios);
        }
    }

    /// Counts its ticks and the batches it saw.
    struct Ticks(Rc<Cell<(u64, usize)>>);

    impl Stage for Ticks {
        fn tick(&mut self, t: Tick<'_>) -> Result<(), MigrateError> {
            let (n, _) = self.0.get();
            self.0.set((n + 1, t.batches.len()));
            Ok(())
        }
    }

    #[test]
    fn a_budget_caps_promotion_and_extra_stages_tick() {
        let mut rec = Recorder::default();
        let acc = Even::over(600, &rec);
        let seen = Rc::new(Cell::new((0, 0)));
        let budget_saw = Rc::new(Cell::new(0));
        let mut p = pipeline(twice(0..600), &mut rec);
        p.budget = Some(Box::new(From {
            from: 200,
            moved: Rc::clone(&budget_saw),
        }));
        p.stages.push(Box::new(Ticks(Rc::clone(&seen))));
        p.run(&FakeClock(Cell::new(0)), &acc, 1000).expect("run");
        drop(p);
        assert_eq!(
            rec.batches[0].0, 200,
            "held back until the budget allowed it"
        );
        assert_eq!(rec.moved.get(), 600);
        assert_eq!(budget_saw.get(), 600, "the budget hears of every batch");
        let (ticks, batches) = seen.get();
        assert!(ticks >= 400, "a tick every 2 ms: {ticks}");
        assert_eq!(batches, 2);
    }

    #[test]
    fn a_batch_that_moved_nothing_is_not_recorded() {
        let mut rec = Recorder {
            refuse: (0..10).collect(),
            ..Recorder::default()
        };
        let acc = Even::over(10, &rec);
        let seen = Rc::new(Cell::new((0, 0)));
        let mut p = pipeline(twice(0..10), &mut rec);
        p.stages.push(Box::new(Ticks(Rc::clone(&seen))));
        p.run(&FakeClock(Cell::new(0)), &acc, 1000).expect("run");
        let folios: Vec<u32> = p.batches.iter().map(|b| b.folios).collect();
        drop(p);
        assert_eq!(
            folios,
            vec![10],
            "only the batch that moved the requeued ten"
        );
        assert_eq!(rec.batches.len(), 2, "the mover was asked twice");
        assert!(
            seen.get().0 <= 501,
            "the empty batch did not skip the idle wait"
        );
    }

    #[test]
    fn the_end_drains_in_batches_of_the_usual_size_the_usual_way() {
        let mut rec = Recorder {
            refuse: [3].into(),
            ..Recorder::default()
        };
        let acc = Even::over(10, &rec);
        let budget_saw = Rc::new(Cell::new(0));
        let mut p = pipeline(Vec::new(), &mut rec);
        p.batcher = Batcher::new(4, 10_000, false);
        p.budget = Some(Box::new(From {
            from: 0,
            moved: Rc::clone(&budget_saw),
        }));
        for f in 0..10 {
            p.promoter.record(f, 2, SourceKind::All, 0);
        }
        // More pending than one batch holds when the run ends (as after the tuner shrank
        // the size).
        for f in p.promoter.take(0, 10) {
            p.batcher.push(f, 0);
        }
        p.run(&FakeClock(Cell::new(0)), &acc, 0).expect("run");
        let (recorded, waiting) = (p.batches.len(), p.promoter.pending());
        drop(p);
        let sizes: Vec<usize> = rec.batches.iter().map(|(_, b)| b.len()).collect();
        assert_eq!(sizes, vec![3, 4, 2], "folio 3 stayed in the first batch");
        assert_eq!(recorded, 3);
        assert_eq!(
            budget_saw.get(),
            9,
            "the budget hears of the drained batches"
        );
        assert_eq!(waiting, 1, "what stayed went back to the promoter");
    }

    #[test]
    fn what_is_pending_at_the_end_still_moves() {
        let mut rec = Recorder::default();
        let acc = Even::over(10, &rec);
        let mut p = pipeline(twice(0..10), &mut rec);
        p.batcher = Batcher::new(512, 10_000, false);
        p.run(&FakeClock(Cell::new(0)), &acc, 300).expect("run");
        drop(p);
        assert_eq!(rec.batches.len(), 1);
        assert_eq!(rec.batches[0].0, 300, "at the end of the run");
        assert_eq!(rec.moved.get(), 10);
    }
}
