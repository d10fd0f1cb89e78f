//! A small shared last-level-cache model in front of the CHMU, so only misses count as CXL
//! traffic (as a real host's accesses to CXL memory would): set-associative, 64-byte lines,
//! least-recently-used replacement (a use stamp per way from a per-set clock), lock-free (each
//! way is an atomic tag and stamp; races between vCPUs only blur the model, as concurrent
//! accesses do on real hardware). It sees the plugin's sampled access stream: with
//! `sample=1` every access, otherwise one in `sample` instructions' accesses.

use std::sync::atomic::{AtomicU64, Ordering};

pub const LINE: u64 = 64;

#[derive(Debug)]
pub struct Llc {
    sets: u64,
    ways: usize,
    /// `line address + 1` per way (0 = empty).
    tags: Vec<AtomicU64>,
    /// Last use of each way, from its set's clock.
    stamps: Vec<AtomicU64>,
    clock: Vec<AtomicU64>,
    pub hits: AtomicU64,
    pub misses: AtomicU64,
}

impl Llc {
    /// A cache of `bytes` (rounded down to a power-of-two number of sets) with `ways` ways.
    pub fn new(bytes: u64, ways: usize) -> Option<Self> {
        let ways = ways.max(1);
        let lines = bytes / LINE;
        let sets = (lines / ways as u64).max(1);
        let sets = 1u64 << (63 - sets.leading_zeros());
        (bytes >= LINE * ways as u64).then(|| Self {
            sets,
            ways,
            tags: (0..sets as usize * ways)
                .map(|_| AtomicU64::new(0))
                .collect(),
            stamps: (0..sets as usize * ways)
                .map(|_| AtomicU64::new(0))
                .collect(),
            clock: (0..sets as usize).map(|_| AtomicU64::new(1)).collect(),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        })
    }

    pub fn bytes(&self) -> u64 {
        self.sets * self.ways as u64 * LINE
    }

    /// Looks `addr` up, filling it on a miss; true on a hit.
    pub fn access(&self, addr: u64) -> bool {
        let line = addr / LINE;
        let set = (line & (self.sets - 1)) as usize;
        let tag = line + 1;
        let range = set * self.ways..(set + 1) * self.ways;
        let (ways, stamps) = (&self.tags[range.clone()], &self.stamps[range]);
        let now = self.clock[set].fetch_add(1, Ordering::Relaxed);
        if let Some(i) = ways.iter().position(|w| w.load(Ordering::Relaxed) == tag) {
            stamps[i].store(now, Ordering::Relaxed);
            self.hits.fetch_add(1, Ordering::Relaxed);
            return true;
        }
        // The least recently used way (an empty one has stamp 0).
        let v = (0..self.ways)
            .min_by_key(|&i| stamps[i].load(Ordering::Relaxed))
            .unwrap_or(0);
        ways[v].store(tag, Ordering::Relaxed);
        stamps[v].store(now, Ordering::Relaxed);
        self.misses.fetch_add(1, Ordering::Relaxed);
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_hits_after_its_miss_and_any_byte_of_it_hits() {
        let c = Llc::new(64 << 10, 4).expect("cache");
        assert_eq!(c.bytes(), 64 << 10);
        assert!(!c.access(0x1000));
        assert!(c.access(0x1000));
        assert!(c.access(0x103f), "same 64-byte line");
        assert!(!c.access(0x1040), "next line");
        assert_eq!(
            (
                c.hits.load(Ordering::Relaxed),
                c.misses.load(Ordering::Relaxed)
            ),
            (2, 2)
        );
    }

    #[test]
    fn a_set_holds_exactly_its_ways() {
        // 4 ways, 256 sets: lines 256 apart share a set.
        let c = Llc::new(64 << 10, 4).expect("cache");
        let stride = 256 * LINE;
        for i in 0..4 {
            assert!(!c.access(i * stride));
        }
        for i in 0..4 {
            assert!(c.access(i * stride), "way {i} still cached");
        }
        // Line 0 used again: line 1 is now the least recently used.
        assert!(c.access(0));
        assert!(!c.access(4 * stride), "a fifth line evicts the LRU one");
        assert!(!c.access(stride), "line 1 was the victim");
        assert!(c.access(0), "the recently used line stayed");
    }

    #[test]
    fn a_working_set_bigger_than_the_cache_misses_and_a_smaller_one_hits() {
        let c = Llc::new(32 << 10, 8).expect("cache");
        let sweep = |bytes: u64| (0..bytes / LINE).filter(|l| !c.access(l * LINE)).count();
        sweep(16 << 10);
        assert_eq!(sweep(16 << 10), 0, "16 KiB fits in 32 KiB");
        sweep(128 << 10);
        assert!(sweep(128 << 10) > 1500, "128 KiB streams through 32 KiB");
        assert!(Llc::new(100, 8).is_none(), "smaller than one set");
    }
}
