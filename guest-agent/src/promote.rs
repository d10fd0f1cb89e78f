//! The migrator's decision logic, with no I/O and an explicit clock (milliseconds passed in),
//! so it is tested with a fake clock and fake sources.
//!
//! - [`Promoter`] models pghot / kpromoted (the RFC series on linux-mm:
//!   lore.kernel.org/r/20250306054532.221138-1-bharata@amd.com for kpromoted,
//!   lore.kernel.org/r/20250910144653.212066-1-bharata@amd.com for pghot): per-folio records
//!   (frequency within a time window, last access, source); a folio becomes hot when its
//!   frequency reaches the threshold within one window; hot folios leave hottest first (pghot
//!   v2's max-heap; first come first served among equals) through a promotion rate limit (a
//!   one-second token bucket in MB/s) towards the target node.
//! - [`Batcher`] models kmigrated and batch migration for NUMA balancing
//!   (lore.kernel.org/r/20250616133931.206626-1-bharata@amd.com) feeding `migrate_pages_batch()`
//!   (Linux `mm/migrate.c`): candidates collect
//!   until the batch size (default 512) or until the oldest has waited the timeout; an
//!   optional tuner moves the size between 64 and 1024 towards the lowest per-folio cost.
//!
//! Left out: pghot's compact per-PFN encodings (the records here are a hash map) and memcg
//! grouping of batches (one process, one memcg).

use crate::spec::SourceKind;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};

/// One folio's hotness record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record {
    pub freq: u32,
    pub window_start_ms: u64,
    pub last_ms: u64,
    pub source: SourceKind,
    state: State,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Cold,
    Ready,
    Promoted,
}

/// Counters of the promotion engine.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PromoterCounters {
    pub accesses_recorded: u64,
    pub became_hot: u64,
    pub handed_out: u64,
    /// Times a ready folio had to wait for rate-limit tokens.
    pub rate_limited: u64,
    /// Records for folios already promoted (ignored).
    pub already_promoted: u64,
}

/// Hot-folio detection with a frequency threshold, a time window and a rate limit.
#[derive(Debug)]
pub struct Promoter {
    threshold: u32,
    window_ms: u64,
    folio_bytes: u64,
    /// Bytes per millisecond; the bucket holds at most one second's worth.
    rate_bytes_per_ms: f64,
    tokens: f64,
    last_refill_ms: u64,
    records: HashMap<u32, Record>,
    /// (frequency, arrival, folio); entries whose frequency is out of date are skipped.
    ready: BinaryHeap<(u32, Reverse<u64>, u32)>,
    ready_count: usize,
    seq: u64,
    pub counters: PromoterCounters,
}

impl Promoter {
    pub fn new(threshold: u32, window_ms: u64, rate_limit_mbps: u64, folio_bytes: u64) -> Self {
        let rate = rate_limit_mbps as f64 * 1e6 / 1e3;
        Self {
            threshold: threshold.max(1),
            window_ms: window_ms.max(1),
            folio_bytes,
            rate_bytes_per_ms: rate,
            tokens: rate * 1000.0,
            last_refill_ms: 0,
            records: HashMap::new(),
            ready: BinaryHeap::new(),
            ready_count: 0,
            seq: 0,
            counters: PromoterCounters::default(),
        }
    }

    /// `n` accesses to `folio` seen by `source` at `now_ms` (pghot_record_access / _range).
    pub fn record(&mut self, folio: u32, n: u32, source: SourceKind, now_ms: u64) {
        self.counters.accesses_recorded += u64::from(n);
        let r = self.records.entry(folio).or_insert(Record {
            freq: 0,
            window_start_ms: now_ms,
            last_ms: now_ms,
            source,
            state: State::Cold,
        });
        match r.state {
            State::Promoted => {
                self.counters.already_promoted += 1;
                return;
            }
            State::Ready => {
                // Hotter while waiting: re-queued at its new frequency.
                r.freq = r.freq.saturating_add(n);
                r.last_ms = now_ms;
                self.seq += 1;
                self.ready.push((r.freq, Reverse(self.seq), folio));
                return;
            }
            State::Cold => {}
        }
        if now_ms.saturating_sub(r.window_start_ms) >= self.window_ms {
            r.freq = 0;
            r.window_start_ms = now_ms;
        }
        r.freq = r.freq.saturating_add(n);
        r.last_ms = now_ms;
        r.source = source;
        if r.freq >= self.threshold {
            r.state = State::Ready;
            self.counters.became_hot += 1;
            self.seq += 1;
            self.ready.push((r.freq, Reverse(self.seq), folio));
            self.ready_count += 1;
        }
    }

    pub fn record_of(&self, folio: u32) -> Option<Record> {
        self.records.get(&folio).copied()
    }

    /// Ready folios waiting for the rate limit.
    pub fn pending(&self) -> usize {
        self.ready_count
    }

    /// Hands out up to `max` hot folios the rate limit allows at `now_ms`; they count as
    /// promoted from now on (a failed migration may [`Promoter::requeue`] them).
    pub fn take(&mut self, now_ms: u64, max: usize) -> Vec<u32> {
        let dt = now_ms.saturating_sub(self.last_refill_ms) as f64;
        self.last_refill_ms = self.last_refill_ms.max(now_ms);
        self.tokens =
            (self.tokens + dt * self.rate_bytes_per_ms).min(self.rate_bytes_per_ms * 1000.0);
        let mut out = Vec::new();
        while out.len() < max {
            let Some(&(freq, _, f)) = self.ready.peek() else {
                break;
            };
            let current = self
                .records
                .get(&f)
                .is_some_and(|r| r.state == State::Ready && r.freq == freq);
            if !current {
                self.ready.pop();
                continue;
            }
            if self.tokens < self.folio_bytes as f64 {
                self.counters.rate_limited += 1;
                break;
            }
            self.tokens -= self.folio_bytes as f64;
            self.ready.pop();
            self.ready_count -= 1;
            if let Some(r) = self.records.get_mut(&f) {
                r.state = State::Promoted;
            }
            out.push(f);
        }
        self.counters.handed_out += out.len() as u64;
        out
    }

    /// Forgets `folio` (it was demoted): later records count from zero, so it is promoted
    /// again only once it is hot again.
    pub fn forget(&mut self, folio: u32) {
        if let Some(r) = self.records.remove(&folio) {
            if r.state == State::Ready {
                self.ready_count -= 1;
            }
        }
    }

    /// A folio whose migration failed becomes ready again.
    pub fn requeue(&mut self, folio: u32) {
        if let Some(r) = self.records.get_mut(&folio) {
            if r.state != State::Ready {
                r.state = State::Ready;
                self.ready_count += 1;
            }
            self.seq += 1;
            self.ready.push((r.freq, Reverse(self.seq), folio));
        }
    }
}

/// Collects candidates and decides when a batch goes.
#[derive(Debug)]
pub struct Batcher {
    size: u32,
    timeout_ms: u64,
    pending: VecDeque<(u32, u64)>,
    tuner: Option<Tuner>,
    pub flushed_full: u64,
    pub flushed_timeout: u64,
}

impl Batcher {
    pub fn new(size: u32, timeout_ms: u64, auto_tune: bool) -> Self {
        Self {
            size: size.clamp(1, 1024),
            timeout_ms,
            pending: VecDeque::new(),
            tuner: auto_tune.then(|| Tuner::new(size.clamp(MIN_TUNED, MAX_TUNED))),
            flushed_full: 0,
            flushed_timeout: 0,
        }
    }

    pub fn size(&self) -> u32 {
        self.tuner.as_ref().map_or(self.size, |t| t.size)
    }

    pub fn push(&mut self, folio: u32, now_ms: u64) {
        self.pending.push_back((folio, now_ms));
    }

    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// The next batch, if one is due at `now_ms` (full, or its oldest candidate timed out).
    pub fn flush(&mut self, now_ms: u64) -> Option<Vec<u32>> {
        let size = self.size() as usize;
        let &(_, oldest) = self.pending.front()?;
        if self.pending.len() >= size {
            self.flushed_full += 1;
        } else if now_ms.saturating_sub(oldest) >= self.timeout_ms {
            self.flushed_timeout += 1;
        } else {
            return None;
        }
        let n = size.min(self.pending.len());
        Some(self.pending.drain(..n).map(|(f, _)| f).collect())
    }

    /// The next batch at the end of a run, due or not: up to the batch size of what is
    /// still pending (None when nothing is).
    pub fn drain(&mut self) -> Option<Vec<u32>> {
        if self.pending.is_empty() {
            return None;
        }
        let n = (self.size() as usize).min(self.pending.len());
        Some(self.pending.drain(..n).map(|(f, _)| f).collect())
    }

    /// Feeds a finished batch's cost to the tuner (no-op without auto-tuning).
    pub fn observe(&mut self, folios: u32, micros: u64) {
        if let Some(t) = &mut self.tuner {
            t.observe(folios, micros);
        }
    }
}

const MIN_TUNED: u32 = 64;
const MAX_TUNED: u32 = 1024;
/// A size change must improve the per-folio cost by this factor to keep going.
const GAIN: f64 = 0.95;

/// Hill-climbing over powers of two in 64..=1024 on the per-folio cost of full batches.
#[derive(Debug)]
struct Tuner {
    size: u32,
    /// Per-folio cost (us) measured at each size, the latest.
    cost: HashMap<u32, f64>,
    up: bool,
    settled: u32,
}

impl Tuner {
    fn new(size: u32) -> Self {
        Self {
            size: size.next_power_of_two().clamp(MIN_TUNED, MAX_TUNED),
            cost: HashMap::new(),
            up: true,
            settled: 0,
        }
    }

    fn observe(&mut self, folios: u32, micros: u64) {
        // Partial (timeout) batches say little about the size's cost.
        if folios < self.size {
            return;
        }
        let c = micros as f64 / f64::from(folios);
        self.cost.insert(self.size, c);
        if self.settled > 0 {
            self.settled -= 1;
            return;
        }
        let next = if self.up {
            (self.size * 2).min(MAX_TUNED)
        } else {
            (self.size / 2).max(MIN_TUNED)
        };
        if next == self.size {
            self.up = !self.up;
            self.settled = 4;
            return;
        }
        match self.cost.get(&next) {
            // Known and not clearly better: stay, re-explore later the other way.
            Some(&nc) if nc >= c * GAIN => {
                self.up = !self.up;
                self.settled = 4;
            }
            _ => self.size = next,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: u64 = 4096;

    #[test]
    fn a_folio_is_hot_at_the_threshold_within_the_window() {
        let mut p = Promoter::new(2, 3000, 65536, PAGE);
        p.record(7, 1, SourceKind::Chmu, 0);
        assert!(p.take(0, 10).is_empty());
        p.record(7, 1, SourceKind::Chmu, 2999);
        assert_eq!(p.take(2999, 10), vec![7]);
        assert_eq!(p.counters.became_hot, 1);
        // Promoted: further records are ignored, it is never handed out twice.
        p.record(7, 5, SourceKind::Chmu, 3000);
        assert!(p.take(3000, 10).is_empty());
        assert_eq!(p.counters.already_promoted, 1);
    }

    #[test]
    fn the_window_expires_old_accesses() {
        let mut p = Promoter::new(2, 3000, 65536, PAGE);
        p.record(1, 1, SourceKind::Damon, 0);
        p.record(1, 1, SourceKind::Damon, 3000);
        assert!(
            p.take(3000, 10).is_empty(),
            "first access fell out of the window"
        );
        assert_eq!(
            p.record_of(1).map(|r| (r.freq, r.window_start_ms)),
            Some((1, 3000))
        );
        p.record(1, 1, SourceKind::Damon, 3500);
        assert_eq!(p.take(3500, 10), vec![1]);
    }

    #[test]
    fn a_range_record_counts_all_its_accesses() {
        let mut p = Promoter::new(4, 1000, 65536, PAGE);
        p.record(3, 4, SourceKind::Chmu, 10);
        assert_eq!(p.take(10, 10), vec![3]);
        assert_eq!(p.record_of(3).map(|r| r.source), Some(SourceKind::Chmu));
    }

    #[test]
    fn the_rate_limit_meters_promotion() {
        // 1 MB/s of 4 KiB folios: the bucket holds 244 folios; then 1 folio per ~4 ms.
        let mut p = Promoter::new(1, 1000, 1, PAGE);
        for f in 0..1000 {
            p.record(f, 1, SourceKind::All, 0);
        }
        let first = p.take(0, 1000).len();
        assert_eq!(first, 1_000_000 / 4096);
        assert!(p.counters.rate_limited >= 1);
        assert!(p.take(0, 1000).is_empty());
        let later = p.take(100, 1000).len();
        assert_eq!(
            later,
            (100_000 + 1_000_000 % 4096) / 4096,
            "100 ms of tokens plus what the first take left"
        );
        assert_eq!(p.pending(), 1000 - first - later);
    }

    #[test]
    fn the_hottest_ready_folio_leaves_first() {
        let mut p = Promoter::new(2, 1000, 65536, PAGE);
        p.record(1, 2, SourceKind::Chmu, 0);
        p.record(2, 5, SourceKind::Chmu, 0);
        p.record(3, 2, SourceKind::Chmu, 0);
        p.record(1, 9, SourceKind::Chmu, 1);
        assert_eq!(p.pending(), 3);
        assert_eq!(
            p.take(1, 10),
            vec![1, 2, 3],
            "11 > 5 > 2; then arrival order"
        );
        assert_eq!(p.pending(), 0);
    }

    #[test]
    fn a_forgotten_folio_must_be_hot_again_to_leave_again() {
        let mut p = Promoter::new(2, 3000, 65536, PAGE);
        p.record(4, 2, SourceKind::Chmu, 0);
        p.record(5, 2, SourceKind::Chmu, 0);
        assert_eq!(p.take(0, 1), vec![4]);
        // 4 demoted after its promotion, 5 dropped while still ready.
        p.forget(4);
        p.forget(5);
        assert_eq!(p.pending(), 0);
        p.record(4, 1, SourceKind::Chmu, 10);
        assert!(p.take(10, 10).is_empty(), "one access: not hot again yet");
        p.record(4, 1, SourceKind::Chmu, 20);
        assert_eq!(p.take(20, 10), vec![4]);
    }

    #[test]
    fn hot_folios_leave_in_order_and_requeue_works() {
        let mut p = Promoter::new(1, 1000, 65536, PAGE);
        for f in [5, 3, 9] {
            p.record(f, 1, SourceKind::Chmu, 0);
        }
        assert_eq!(p.take(0, 2), vec![5, 3]);
        p.requeue(5);
        assert_eq!(p.take(1, 10), vec![9, 5]);
    }

    /// A source that replays scripted findings, one list per poll.
    struct FakeSource(std::collections::VecDeque<Vec<(u32, u32)>>);

    impl crate::sources::HotnessSource for FakeSource {
        fn kind(&self) -> SourceKind {
            SourceKind::Chmu
        }
        fn poll(&mut self) -> crate::sources::Findings {
            let hits = self.0.pop_front().unwrap_or_default();
            crate::sources::Findings {
                records: hits.len() as u64,
                hits,
                foreign: 0,
            }
        }
    }

    /// The migrator's loop (poll every 50 ms, hand hot folios to the batcher, flush) on a fake
    /// clock: (time, batch) of every flush.
    fn drive(
        src: &mut dyn crate::sources::HotnessSource,
        p: &mut Promoter,
        b: &mut Batcher,
        until_ms: u64,
    ) -> Vec<(u64, Vec<u32>)> {
        let mut out = Vec::new();
        for now in (0..until_ms).step_by(10) {
            if now % 50 == 0 {
                for (f, n) in src.poll().hits {
                    p.record(f, n, src.kind(), now);
                }
            }
            for f in p.take(now, 2048) {
                b.push(f, now);
            }
            while let Some(batch) = b.flush(now) {
                out.push((now, batch));
            }
        }
        out
    }

    #[test]
    fn hot_folios_from_a_source_reach_batches_and_one_off_accesses_do_not() {
        // Folios 0..600 are seen twice (hot at threshold 2), 1000..1100 once (cold).
        let polls = vec![
            (0..600)
                .map(|f| (f, 1))
                .chain((1000..1100).map(|f| (f, 1)))
                .collect(),
            (0..600).map(|f| (f, 1)).collect(),
        ];
        let mut src = FakeSource(polls.into());
        let mut p = Promoter::new(2, 3000, 65536, PAGE);
        let mut b = Batcher::new(512, 100, false);
        let batches = drive(&mut src, &mut p, &mut b, 1000);
        assert_eq!(batches.len(), 2);
        assert_eq!(batches[0].0, 50, "full at the second poll");
        assert_eq!(batches[0].1.len(), 512);
        assert_eq!(batches[1].0, 150, "the remaining 88 at the 100 ms timeout");
        assert_eq!(batches[1].1.len(), 88);
        let all: std::collections::HashSet<u32> = batches
            .iter()
            .flat_map(|(_, v)| v.iter().copied())
            .collect();
        assert_eq!(all, (0..600).collect());
    }

    #[test]
    fn a_rate_limited_source_spreads_batches_over_time() {
        // 4 MB/s of 4 KiB folios: 976 folios in the first second's bucket, ~10 per 10 ms after.
        let polls = vec![(0..2000).map(|f| (f, 2)).collect()];
        let mut src = FakeSource(polls.into());
        let mut p = Promoter::new(2, 3000, 4, PAGE);
        let mut b = Batcher::new(512, 100, false);
        let batches = drive(&mut src, &mut p, &mut b, 1000);
        let handed = p.counters.handed_out;
        assert!(
            (1900..=1960).contains(&handed),
            "one second's bucket (976) plus 990 ms at 4 MB/s (966): {handed}"
        );
        assert!(batches.len() >= 3, "{} batches", batches.len());
        assert!(batches.windows(2).all(|w| w[0].0 < w[1].0));
        assert!(p.counters.rate_limited > 0);
    }

    #[test]
    fn a_batch_goes_when_full() {
        let mut b = Batcher::new(4, 100, false);
        for f in 0..6 {
            b.push(f, 0);
        }
        assert_eq!(b.flush(0), Some(vec![0, 1, 2, 3]));
        assert_eq!(b.flush(0), None, "2 left, not timed out");
        assert_eq!(b.flushed_full, 1);
    }

    #[test]
    fn a_partial_batch_goes_at_the_timeout_of_its_oldest() {
        let mut b = Batcher::new(512, 100, false);
        b.push(1, 10);
        b.push(2, 50);
        assert_eq!(b.flush(109), None);
        assert_eq!(b.flush(110), Some(vec![1, 2]));
        assert_eq!(b.flushed_timeout, 1);
        assert_eq!(b.flush(1000), None);
    }

    /// Per-folio cost with a fixed per-batch overhead and a penalty past 256 folios (as a
    /// cache that stops holding the batch would cause): the best size is 256.
    fn cost_us(folios: u32) -> u64 {
        let f = u64::from(folios);
        2000 + 10 * f + if f > 256 { (f - 256) * 30 } else { 0 }
    }

    #[test]
    fn the_tuner_finds_the_cheapest_size_and_stays_in_range() {
        let mut b = Batcher::new(64, 100, true);
        let mut sizes = Vec::new();
        for _ in 0..40 {
            let s = b.size();
            assert!((64..=1024).contains(&s));
            sizes.push(s);
            b.observe(s, cost_us(s));
        }
        let tail = &sizes[20..];
        let at_best = tail.iter().filter(|&&s| s == 256).count();
        assert!(at_best * 2 > tail.len(), "mostly at 256: {sizes:?}");
    }

    #[test]
    fn the_tuner_ignores_partial_batches() {
        let mut b = Batcher::new(128, 100, true);
        b.observe(3, 1_000_000);
        assert_eq!(b.size(), 128);
    }
}
