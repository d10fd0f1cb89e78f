//! Per-vCPU access sampling: every memory access the guest makes has the same probability
//! `1/sample` of being picked, whichever instruction made it (a Bernoulli sample of the access
//! stream, drawn as geometric gaps).
//!
//! Each vCPU owns a [`Slot`]: a countdown of the accesses left until the next sample and the
//! state of its random generator. The memory callback, which runs on every access, only
//! decrements the countdown; when it reaches zero the access is sampled and the next gap is
//! drawn from the geometric distribution of mean `sample` (the number of Bernoulli(1/sample)
//! trials up to the first success). A picked access stands for `sample` accesses (its
//! Horvitz-Thompson weight, 1/p), so summed weights estimate true access counts without bias.
//!
//! The generator is seeded from the plugin's `seed` and the vCPU index and advances only when
//! that vCPU samples, so a deterministic guest (one vCPU, `-icount`) gets the same samples in
//! every run with the same seed.

use std::sync::atomic::{AtomicU64, Ordering};

/// Largest sampling period (and record weight) the feed can carry.
pub const MAX_SAMPLE: u64 = device_cxl_hmu::spec::record::MAX_WEIGHT as u64;

/// One vCPU's sampling state, alone on its cache line. Only its vCPU thread writes it, with
/// plain loads and stores (no read-modify-write: nothing else writes); the atomics let the
/// exit report read it from another thread.
#[derive(Debug)]
#[repr(align(64))]
pub struct Slot {
    /// Accesses left until (and including) the next sampled one.
    left: AtomicU64,
    rng: AtomicU64,
    /// Sum of every gap drawn so far (accesses seen = drawn - left).
    drawn: AtomicU64,
    samples: AtomicU64,
}

/// Adds `n` to a counter only its owner thread writes.
fn bump(c: &AtomicU64, n: u64) {
    c.store(c.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
}

/// Sampling of one in `sample` accesses (on average) for a set of vCPUs.
#[derive(Debug)]
pub struct Sampler {
    sample: u64,
    /// ln(1 - 1/sample), for the geometric draw (unused when `sample` is 1).
    ln_q: f64,
    slots: Box<[Slot]>,
}

/// splitmix64: a small generator whose every output is a bijection of its counter.
fn splitmix(state: &AtomicU64) -> u64 {
    let s = state
        .load(Ordering::Relaxed)
        .wrapping_add(0x9e37_79b9_7f4a_7c15);
    state.store(s, Ordering::Relaxed);
    let mut z = s;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Sampler {
    /// A sampler of one in `sample` accesses (clamped to 1..=[`MAX_SAMPLE`]) for `vcpus`
    /// vCPUs, seeded by `seed`.
    pub fn new(sample: u64, seed: u64, vcpus: usize) -> Self {
        let sample = sample.clamp(1, MAX_SAMPLE);
        let ln_q = (1.0 - 1.0 / sample as f64).ln();
        let slots = (0..vcpus.max(1) as u64)
            .map(|v| Slot {
                left: AtomicU64::new(0),
                rng: AtomicU64::new(seed ^ v.wrapping_mul(0xd6e8_feb8_6659_fd93)),
                drawn: AtomicU64::new(0),
                samples: AtomicU64::new(0),
            })
            .collect();
        let s = Self {
            sample,
            ln_q,
            slots,
        };
        for slot in s.slots.iter() {
            s.redraw(slot);
        }
        s
    }

    /// The sampling period: each sampled access stands for this many.
    pub fn weight(&self) -> u64 {
        self.sample
    }

    /// A geometric gap of mean `sample` (at least 1).
    fn gap(&self, slot: &Slot) -> u64 {
        if self.sample == 1 {
            return 1;
        }
        // u in (0, 1]: 53 random bits, never 0.
        let u = ((splitmix(&slot.rng) >> 11) + 1) as f64 / (1u64 << 53) as f64;
        let g = (u.ln() / self.ln_q).floor();
        // ln(u) <= 0 and ln_q < 0: g >= 0; a gap beyond 2^40 accesses is as good as never.
        1 + (g.min((1u64 << 40) as f64) as u64)
    }

    fn redraw(&self, slot: &Slot) {
        let g = self.gap(slot);
        slot.left.store(g, Ordering::Relaxed);
        bump(&slot.drawn, g);
    }

    /// Called on every access of vCPU `vcpu`: true when this access is sampled. Only the
    /// vCPU's own thread calls it for its index.
    #[inline]
    pub fn pick(&self, vcpu: usize) -> bool {
        let Some(slot) = self.slots.get(vcpu) else {
            return false;
        };
        let left = slot.left.load(Ordering::Relaxed);
        if left > 1 {
            slot.left.store(left - 1, Ordering::Relaxed);
            return false;
        }
        bump(&slot.samples, 1);
        self.redraw(slot);
        true
    }

    /// (accesses seen, accesses sampled) over every vCPU so far.
    pub fn totals(&self) -> (u64, u64) {
        self.slots.iter().fold((0, 0), |(a, s), slot| {
            let seen = slot.drawn.load(Ordering::Relaxed) - slot.left.load(Ordering::Relaxed);
            (a + seen, s + slot.samples.load(Ordering::Relaxed))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Picks among `n` accesses of vCPU 0.
    fn picks(s: &Sampler, n: usize) -> Vec<bool> {
        (0..n).map(|_| s.pick(0)).collect()
    }

    #[test]
    fn one_in_n_accesses_is_picked_and_the_totals_add_up() {
        let s = Sampler::new(8, 3, 2);
        let n = 800_000;
        let k = picks(&s, n).iter().filter(|&&p| p).count();
        // Binomial(800k, 1/8): mean 100k, sd ~296.
        assert!((98_500..101_500).contains(&k), "{k}");
        assert_eq!(s.totals(), (n as u64, k as u64));
        assert_eq!(s.weight(), 8);
        let all = Sampler::new(1, 3, 1);
        assert!(
            picks(&all, 1000).iter().all(|&p| p),
            "sample 1 picks everything"
        );
        assert_eq!(Sampler::new(0, 1, 1).weight(), 1);
        assert_eq!(Sampler::new(1 << 20, 1, 1).weight(), MAX_SAMPLE);
        assert!(!s.pick(5), "a vCPU beyond the slots is never sampled");
    }

    #[test]
    fn every_site_of_a_periodic_pattern_gets_its_share() {
        // A loop whose accesses cycle through 32 "pages" in order, one access each: a fixed
        // period would alias with the pattern (every 8th access always hits the same 4 pages).
        let s = Sampler::new(8, 11, 1);
        let mut per_page = [0u64; 32];
        for i in 0..32 * 20_000 {
            if s.pick(0) {
                per_page[i % 32] += 8;
            }
        }
        // Each page had 20,000 accesses: every estimate within 5 %.
        for (p, est) in per_page.iter().enumerate() {
            assert!((19_000..21_000).contains(est), "page {p}: {est}");
        }
    }

    #[test]
    fn gaps_are_geometric_memoryless_and_seeded() {
        let s = Sampler::new(8, 5, 1);
        let mut gaps = Vec::new();
        let mut last = 0;
        for i in 1..=400_000usize {
            if s.pick(0) {
                gaps.push(i - last);
                last = i;
            }
        }
        // P(gap = 1) = 1/8 and P(gap > 16) = (7/8)^16 = 0.118 for a geometric of mean 8.
        let share = |f: &dyn Fn(usize) -> bool| {
            gaps.iter().filter(|&&g| f(g)).count() as f64 / gaps.len() as f64
        };
        assert!((share(&|g| g == 1) - 0.125).abs() < 0.01);
        assert!((share(&|g| g > 16) - 0.118).abs() < 0.01);
        let again = Sampler::new(8, 5, 1);
        let other = Sampler::new(8, 6, 1);
        let a = picks(&again, 10_000);
        assert_eq!(a, {
            let s = Sampler::new(8, 5, 1);
            picks(&s, 10_000)
        });
        assert_ne!(a, picks(&other, 10_000), "another seed, other samples");
    }
}
