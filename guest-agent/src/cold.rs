//! Cold-folio detection on node 0, by aging accessed bits: the way the kernel's LRU aging
//! finds reclaim (and so demotion) candidates from page-table Accessed bits (mm/vmscan.c,
//! `folio_referenced()` and the inactive list; MGLRU's generations in mm/vmscan.c are the
//! same idea with more ages).
//!
//! The bits come from the workload's own accounting: each access sets its folio's byte in
//! [`crate::arena::Arena::accessed`] (a relaxed store, skipped when already set). That source
//! was chosen over the alternatives because it sees both folio sizes on node 0 and costs no
//! kernel round trip: DAMON's virtual-address ops do not report hugetlb folios (and the run's
//! promotion source may already use DAMON), and `/sys/kernel/mm/page_idle/bitmap` tracks only
//! LRU pages (not hugetlb) and needs CONFIG_IDLE_PAGE_TRACKING. The CHMU cannot help: it only
//! sees the CXL device's memory (node 1).
//!
//! Each scan clears the bits it finds set (age 0) and ages the others by one. A folio whose age
//! reached `cold_scans` is cold; demotion takes the oldest first. `cold_scans = 0` takes the
//! least recently accessed folios whatever their age (the LRU tail under pressure).

/// Ages of node-0 folios in scans since their last access.
#[derive(Debug)]
pub struct ColdScan {
    age: Vec<u8>,
    cold_scans: u8,
    pub scans: u64,
}

impl ColdScan {
    pub fn new(folios: usize, cold_scans: u8) -> Self {
        Self {
            age: vec![0; folios],
            cold_scans,
            scans: 0,
        }
    }

    /// One aging pass over the folios `on_node0` says are on node 0: `take_accessed(i)` reads
    /// and clears folio `i`'s accessed bit.
    pub fn scan(
        &mut self,
        on_node0: impl Fn(usize) -> bool,
        mut take_accessed: impl FnMut(usize) -> bool,
    ) {
        self.scans += 1;
        for (i, a) in self.age.iter_mut().enumerate() {
            if !on_node0(i) {
                continue;
            }
            if take_accessed(i) {
                *a = 0;
            } else {
                *a = a.saturating_add(1);
            }
        }
    }

    /// A folio just arrived on node 0: young.
    pub fn arrived(&mut self, folio: u32) {
        if let Some(a) = self.age.get_mut(folio as usize) {
            *a = 0;
        }
    }

    pub fn age(&self, folio: u32) -> u8 {
        self.age.get(folio as usize).copied().unwrap_or(0)
    }

    /// Up to `max` demotion candidates among the folios on node 0, oldest first (ties by
    /// index): those at least `cold_scans` old.
    pub fn coldest(&self, on_node0: impl Fn(usize) -> bool, max: usize) -> Vec<u32> {
        if max == 0 {
            return Vec::new();
        }
        // Bucket by age (u8): a counting sort, no comparison sort over every folio.
        let mut by_age: Vec<Vec<u32>> = vec![Vec::new(); 256];
        for (i, &a) in self.age.iter().enumerate() {
            if a >= self.cold_scans && on_node0(i) {
                by_age[a as usize].push(i as u32);
            }
        }
        by_age.into_iter().rev().flatten().take(max).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn untouched_folios_age_and_touched_ones_stay_young() {
        let mut c = ColdScan::new(4, 2);
        let on0 = |_: usize| true;
        let mut touched: HashSet<usize> = [1].into();
        c.scan(on0, |i| touched.remove(&i));
        assert_eq!((c.age(0), c.age(1)), (1, 0));
        assert!(c.coldest(on0, 10).is_empty(), "one scan old: not cold yet");
        touched.insert(2);
        c.scan(on0, |i| touched.remove(&i));
        assert_eq!(
            c.coldest(on0, 10),
            vec![0, 3],
            "0 and 3 are 2 scans old; 1 only 1, 2 0"
        );
    }

    #[test]
    fn coldest_is_oldest_first_and_only_on_node0() {
        let mut c = ColdScan::new(6, 1);
        let on0 = |i: usize| i != 4;
        // Scan 1: all age. Scan 2: 2 and 5 touched. Scan 3: 5 touched.
        c.scan(on0, |_| false);
        c.scan(on0, |i| i == 2 || i == 5);
        c.scan(on0, |i| i == 5);
        // Ages: 0,1,3 -> 3; 2 -> 1; 5 -> 0; 4 not on node 0.
        assert_eq!(c.coldest(on0, 10), vec![0, 1, 3, 2]);
        assert_eq!(c.coldest(on0, 2), vec![0, 1]);
        c.arrived(0);
        assert_eq!(c.coldest(on0, 10), vec![1, 3, 2]);
    }

    #[test]
    fn cold_scans_zero_is_the_lru_tail() {
        let mut c = ColdScan::new(3, 0);
        c.scan(|_| true, |i| i == 0);
        assert_eq!(
            c.coldest(|_| true, 3),
            vec![1, 2, 0],
            "even the young one, last"
        );
    }
}
