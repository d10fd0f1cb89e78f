//! Cold-folio detection on node 0, from access counts scanned and aged: the way the kernel's
//! reclaim finds demotion candidates from page-table Accessed bits (mm/vmscan.c,
//! `folio_referenced()`; MGLRU's generations), with a count per scan instead of one bit, as
//! DAMON's `nr_accesses` (mm/damon/core.c), so frequency separates a hot folio from one a
//! uniform background touches now and then.
//!
//! The counts come from the workload's own accounting: each access bumps its folio's byte in
//! [`crate::arena::Arena::accessed`] (saturating at 255). That source was chosen over the
//! alternatives because it sees both folio sizes on node 0 and costs no kernel round trip:
//! DAMON's virtual-address ops do not report hugetlb folios (and the run's promotion source may
//! already use DAMON), and `/sys/kernel/mm/page_idle/bitmap` tracks only LRU pages (not hugetlb),
//! one bit per page, and needs CONFIG_IDLE_PAGE_TRACKING. The CHMU cannot help: it only sees the
//! CXL device's memory (node 1).
//!
//! Each scan reads and clears the counts of node 0's folios and folds them into a decayed heat
//! (`heat / 2 + count`). Demotion takes the coolest folios that have been on node 0 for at
//! least `cold_scans` scans (so a folio just promoted is not sent back before it had a chance
//! to be seen), coolest first; how many is the budget's business, not a threshold's.

/// Decayed access counts of node-0 folios and how long each has been there.
#[derive(Debug)]
pub struct ColdScan {
    heat: Vec<u16>,
    /// Scans since the folio arrived on node 0 (saturating).
    resident: Vec<u8>,
    cold_scans: u8,
    pub scans: u64,
}

impl ColdScan {
    pub fn new(folios: usize, cold_scans: u8) -> Self {
        Self {
            heat: vec![0; folios],
            resident: vec![0; folios],
            cold_scans,
            scans: 0,
        }
    }

    /// One scan over the folios `on_node0` says are on node 0: `take_accessed(i)` reads and
    /// clears folio `i`'s access count.
    pub fn scan(
        &mut self,
        on_node0: impl Fn(usize) -> bool,
        mut take_accessed: impl FnMut(usize) -> u8,
    ) {
        self.scans += 1;
        for (i, (h, r)) in self.heat.iter_mut().zip(&mut self.resident).enumerate() {
            if !on_node0(i) {
                continue;
            }
            *h = (*h / 2).saturating_add(u16::from(take_accessed(i)));
            *r = r.saturating_add(1);
        }
    }

    /// A folio just arrived on node 0: resident from now, with no history.
    pub fn arrived(&mut self, folio: u32) {
        let i = folio as usize;
        if let (Some(h), Some(r)) = (self.heat.get_mut(i), self.resident.get_mut(i)) {
            (*h, *r) = (0, 0);
        }
    }

    pub fn heat(&self, folio: u32) -> u16 {
        self.heat.get(folio as usize).copied().unwrap_or(0)
    }

    /// Up to `max` demotion candidates among the folios on node 0 resident for at least
    /// `cold_scans` scans, coolest first (ties by index).
    pub fn coldest(&self, on_node0: impl Fn(usize) -> bool, max: usize) -> Vec<u32> {
        if max == 0 {
            return Vec::new();
        }
        let mut c: Vec<(u16, u32)> = (0..self.heat.len())
            .filter(|&i| self.resident[i] >= self.cold_scans && on_node0(i))
            .map(|i| (self.heat[i], i as u32))
            .collect();
        if c.len() > max {
            c.select_nth_unstable(max - 1);
            c.truncate(max);
        }
        c.sort_unstable();
        c.into_iter().map(|(_, i)| i).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frequency_not_recency_decides() {
        // Folio 0 is hot (50 accesses a scan), 1 is touched once a scan (a uniform
        // background), 2 not at all.
        let mut c = ColdScan::new(3, 2);
        let on0 = |_: usize| true;
        let counts = [50u8, 1, 0];
        c.scan(on0, |i| counts[i]);
        assert!(
            c.coldest(on0, 3).is_empty(),
            "one scan: nobody resident long enough"
        );
        c.scan(on0, |i| counts[i]);
        assert_eq!(c.coldest(on0, 3), vec![2, 1, 0]);
        assert_eq!(c.coldest(on0, 2), vec![2, 1], "the hot one stays");
        assert_eq!(c.heat(0), 75, "50/2 + 50");
    }

    #[test]
    fn heat_decays_and_arrivals_wait_their_residency() {
        let mut c = ColdScan::new(4, 1);
        let on0 = |i: usize| i != 3;
        c.scan(on0, |i| if i == 0 { 200 } else { 10 });
        // Folio 0 stops being used: its heat halves each scan.
        for _ in 0..5 {
            c.scan(on0, |i| if i == 0 { 0 } else { 10 });
        }
        assert_eq!(c.heat(0), 6, "200 halved 5 times, rounded down");
        assert_eq!(
            c.coldest(on0, 1),
            vec![0],
            "cooler than the steady 10s (heat 19)"
        );
        c.arrived(0);
        assert_eq!(
            c.coldest(on0, 10),
            vec![1, 2],
            "0 just arrived; 3 is not on node 0"
        );
    }

    #[test]
    fn residency_zero_takes_anyone() {
        let mut c = ColdScan::new(3, 0);
        c.scan(|_| true, |i| [5, 0, 9][i]);
        c.arrived(2);
        assert_eq!(c.coldest(|_| true, 3), vec![1, 2, 0]);
    }
}
