//! The synthetic workload: threads that read and write the arena's folios with a seeded,
//! reproducible pattern (uniform, Zipf, or a hot set that moves in phases).
//!
//! Each write increments the writing thread's own counter word in the folio (word `tid` of the
//! folio's first cache lines), so at the end the counters in memory must add up to the writes
//! each thread made: a write lost to a migration shows as a missing increment. Each access
//! counts whether its folio was on node 0 at the time (the promotion-effectiveness series).

use crate::arena::Arena;
use crate::spec::{Pattern, WorkloadSpec};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Counter words at the start of each folio: one per thread (up to 64 threads).
pub const COUNTER_BYTES: usize = 64 * 8;

/// xorshift64*: small, fast, seeded.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Which folio each access goes to.
#[derive(Clone, Debug)]
pub struct Chooser {
    pattern: Pattern,
    n: usize,
    /// rank -> folio (a seeded shuffle, so hot folios are spread over the arena).
    perm: Vec<u32>,
    /// Zipf cumulative distribution over ranks.
    cdf: Vec<f64>,
    hot_n: usize,
    phase_ms: u64,
}

impl Chooser {
    pub fn new(w: &WorkloadSpec) -> Self {
        let n = w.pages as usize;
        let mut perm: Vec<u32> = (0..n as u32).collect();
        let mut rng = Rng::new(w.seed ^ 0x5eed);
        for i in (1..n).rev() {
            perm.swap(i, rng.below(i as u64 + 1) as usize);
        }
        let cdf = if w.pattern == Pattern::Zipf {
            let mut acc = 0.0;
            let mut v: Vec<f64> = (1..=n)
                .map(|k| {
                    acc += 1.0 / (k as f64).powf(w.zipf_s);
                    acc
                })
                .collect();
            v.iter_mut().for_each(|c| *c /= acc);
            v
        } else {
            Vec::new()
        };
        Self {
            pattern: w.pattern,
            n,
            perm,
            cdf,
            hot_n: ((n as f64 * w.hot_fraction).round() as usize).clamp(1, n),
            phase_ms: w.phase_ms.max(1),
        }
    }

    pub fn pick(&self, rng: &mut Rng, elapsed_ms: u64) -> usize {
        match self.pattern {
            Pattern::Uniform => rng.below(self.n as u64) as usize,
            Pattern::Zipf => {
                let u = rng.unit();
                let r = self.cdf.partition_point(|&c| c < u).min(self.n - 1);
                self.perm[r] as usize
            }
            Pattern::Phases => {
                if rng.below(10) < 9 {
                    let phase = (elapsed_ms / self.phase_ms) as usize;
                    let r = (phase * self.hot_n + rng.below(self.hot_n as u64) as usize) % self.n;
                    self.perm[r] as usize
                } else {
                    rng.below(self.n as u64) as usize
                }
            }
        }
    }

    /// The known hot set: the most likely folios (Zipf), the hot sets of the phases that ran
    /// (Phases), or nothing (Uniform).
    pub fn known_hot(&self, elapsed_ms: u64) -> Vec<u32> {
        match self.pattern {
            Pattern::Uniform => Vec::new(),
            Pattern::Zipf => self.perm[..self.hot_n].to_vec(),
            Pattern::Phases => {
                let phases = (elapsed_ms / self.phase_ms) as usize + 1;
                let mut v: Vec<u32> = (0..(phases * self.hot_n).min(self.n))
                    .map(|r| self.perm[r])
                    .collect();
                v.sort_unstable();
                v
            }
        }
    }
}

/// Per-thread counters, published every few hundred accesses.
#[derive(Debug, Default)]
pub struct ThreadCounters {
    pub accesses: AtomicU64,
    pub node0: AtomicU64,
    pub writes: AtomicU64,
}

/// The running workload.
#[derive(Debug)]
pub struct Workload {
    stop: Arc<AtomicBool>,
    handles: Vec<std::thread::JoinHandle<()>>,
    pub counters: Arc<Vec<ThreadCounters>>,
    pub chooser: Arc<Chooser>,
    pub started: Instant,
}

/// Readers of 8 cache lines of a 4 KiB page: reader `v` reads lines `8k + v`. The chmu-tap
/// plugin instruments a fixed one in N memory *instructions* (by address), so a workload
/// whose reads all went through one or two load instructions would be seen fully or not at
/// all depending on where the linker put them; 64 distinct load sites, used in turn, give the
/// tap its one in N of the reads whatever the build.
#[inline(never)]
fn read_lines<const V: usize>(p: *const u8) -> u64 {
    let mut acc = 0u64;
    macro_rules! ld {
        ($($k:literal)*) => { $(
            // SAFETY: line 8k + V of the page the caller chose (V < 8, so < 4096).
            acc = acc.wrapping_add(unsafe {
                std::ptr::read_volatile(p.add($k * 512 + V * 64).cast::<u64>())
            });
        )* };
    }
    ld!(0 1 2 3 4 5 6 7);
    acc
}

/// One reader per line offset within a 512-byte stride.
static READERS: [fn(*const u8) -> u64; 8] = [
    read_lines::<0>,
    read_lines::<1>,
    read_lines::<2>,
    read_lines::<3>,
    read_lines::<4>,
    read_lines::<5>,
    read_lines::<6>,
    read_lines::<7>,
];

/// Reads 8 cache lines of the 4 KiB page at `p` through reader `v % 8`.
fn read_page(p: *const u8, v: u64) -> u64 {
    READERS[(v % 8) as usize](p)
}

impl Workload {
    pub fn start(arena: Arc<Arena>, w: &WorkloadSpec) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let counters: Arc<Vec<ThreadCounters>> =
            Arc::new((0..w.threads).map(|_| ThreadCounters::default()).collect());
        let chooser = Arc::new(Chooser::new(w));
        let started = Instant::now();
        let handles = (0..w.threads as usize)
            .map(|tid| {
                let (arena, stop, counters, chooser) = (
                    Arc::clone(&arena),
                    Arc::clone(&stop),
                    Arc::clone(&counters),
                    Arc::clone(&chooser),
                );
                let (seed, writes_pct) = (w.seed, u64::from(w.write_percent));
                std::thread::spawn(move || {
                    let mut rng = Rng::new(seed.wrapping_add(tid as u64 * 7919));
                    let subpages = (arena.folio / 4096) as u64;
                    let (mut acc, mut n0, mut wr) = (0u64, 0u64, 0u64);
                    let mut sink = 0u64;
                    let c = &counters[tid];
                    while !stop.load(Ordering::Relaxed) {
                        for _ in 0..256 {
                            let ms = started.elapsed().as_millis() as u64;
                            let f = chooser.pick(&mut rng, ms);
                            let base = arena.at(f);
                            // The access count demotion's scan reads (saturating; threads may
                            // race and lose a count, which only blurs a frequency).
                            let c = arena.accessed[f].load(Ordering::Relaxed);
                            if c < u8::MAX {
                                arena.accessed[f].store(c + 1, Ordering::Relaxed);
                            }
                            if arena.node[f].load(Ordering::Acquire) == 0 {
                                n0 += 1;
                            }
                            acc += 1;
                            if rng.below(100) < writes_pct {
                                // SAFETY: word tid (< 64) of the folio's counter area; only
                                // this thread writes it. A plain read-modify-write, so a
                                // write that raced a copy would be visibly lost.
                                unsafe {
                                    let p = base.add(tid * 8).cast::<u64>();
                                    std::ptr::write_volatile(p, std::ptr::read_volatile(p) + 1);
                                }
                                wr += 1;
                            } else {
                                let sub = rng.below(subpages) as usize * 4096;
                                // SAFETY: sub-page `sub` lies inside folio f.
                                sink = sink.wrapping_add(read_page(unsafe { base.add(sub) }, acc));
                            }
                        }
                        c.accesses.store(acc, Ordering::Relaxed);
                        c.node0.store(n0, Ordering::Relaxed);
                        c.writes.store(wr, Ordering::Relaxed);
                    }
                    std::hint::black_box(sink);
                })
            })
            .collect();
        Self {
            stop,
            handles,
            counters,
            chooser,
            started,
        }
    }

    /// (accesses, accesses that hit node 0) so far.
    pub fn totals(&self) -> (u64, u64) {
        self.counters.iter().fold((0, 0), |(a, b), c| {
            (
                a + c.accesses.load(Ordering::Relaxed),
                b + c.node0.load(Ordering::Relaxed),
            )
        })
    }

    /// Stops the threads and waits for them; returns each thread's write count.
    pub fn stop(self) -> Vec<u64> {
        self.stop.store(true, Ordering::Relaxed);
        for h in self.handles {
            let _ = h.join();
        }
        self.counters
            .iter()
            .map(|c| c.writes.load(Ordering::Relaxed))
            .collect()
    }
}

/// Initial contents of folio `i`: zeroed counters, then seeded bytes.
pub fn fill(seed: u64, i: usize, bytes: &mut [u8]) {
    bytes[..COUNTER_BYTES].fill(0);
    let mut r = Rng::new(seed ^ (i as u64).wrapping_mul(0xa076_1d64_78bd_642f));
    for c in bytes[COUNTER_BYTES..].chunks_mut(8) {
        let v = r.next_u64().to_le_bytes();
        c.copy_from_slice(&v[..c.len()]);
    }
}

/// What the counters in memory add up to, per thread.
pub fn counted_writes(arena: &Arena, threads: usize) -> Vec<u64> {
    let mut out = vec![0u64; threads];
    for i in 0..arena.n {
        let b = arena.bytes(i);
        for (t, o) in out.iter_mut().enumerate() {
            let w = &b[t * 8..t * 8 + 8];
            *o += u64::from_le_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_readers_cover_every_line_once() {
        // Line j's first word holds 1 << j: reader v sums lines 8k + v.
        let mut page = vec![0u64; 512];
        for j in 0..64 {
            page[j * 8] = 1 << j;
        }
        let mut all = 0u64;
        for v in 0..8u64 {
            let got = read_page(page.as_ptr().cast(), v + 8);
            let want: u64 = (0..8).map(|k| 1u64 << (8 * k + v)).sum();
            assert_eq!(got, want, "reader {v}");
            all |= got;
        }
        assert_eq!(all, u64::MAX);
    }

    fn spec(pattern: Pattern) -> WorkloadSpec {
        WorkloadSpec {
            pages: 1000,
            pattern,
            ..WorkloadSpec::default()
        }
    }

    #[test]
    fn zipf_concentrates_on_the_known_hot_set() {
        let c = Chooser::new(&spec(Pattern::Zipf));
        let hot: std::collections::HashSet<u32> = c.known_hot(0).into_iter().collect();
        assert_eq!(hot.len(), 100);
        let mut rng = Rng::new(3);
        let n = 100_000;
        let in_hot = (0..n)
            .filter(|_| hot.contains(&(c.pick(&mut rng, 0) as u32)))
            .count();
        // H(100)/H(1000) = 5.19/7.49 = 0.69 for s = 1.
        let share = in_hot as f64 / n as f64;
        assert!((0.66..0.72).contains(&share), "{share}");
    }

    #[test]
    fn phases_move_the_hot_set() {
        let c = Chooser::new(&spec(Pattern::Phases));
        let mut rng = Rng::new(5);
        let first: std::collections::HashSet<u32> = c.known_hot(0).into_iter().collect();
        let in_first = |ms| {
            let mut r = rng.clone();
            (0..10_000)
                .filter(|_| first.contains(&(c.pick(&mut r, ms) as u32)))
                .count()
        };
        assert!(in_first(0) > 8500, "90 % plus the uniform share");
        assert!(in_first(2000) < 500, "the next phase's hot set is disjoint");
        assert_eq!(c.known_hot(2000).len(), 200);
        rng.next_u64();
    }

    #[test]
    fn the_same_seed_gives_the_same_accesses() {
        let c = Chooser::new(&spec(Pattern::Zipf));
        let run = |seed| {
            let mut r = Rng::new(seed);
            (0..50).map(|_| c.pick(&mut r, 0)).collect::<Vec<_>>()
        };
        assert_eq!(run(9), run(9));
        assert_ne!(run(9), run(10));
    }

    #[test]
    fn fill_zeroes_the_counters_and_is_seeded() {
        let mut a = vec![0xffu8; 4096];
        let mut b = vec![0u8; 4096];
        fill(1, 7, &mut a);
        fill(1, 7, &mut b);
        assert_eq!(a, b);
        assert!(a[..COUNTER_BYTES].iter().all(|&x| x == 0));
        fill(1, 8, &mut b);
        assert_ne!(a, b);
    }
}
