//! The chmu-hot step: a guest workload with a known hot set on node 1 while the chmu-tap
//! TCG plugin feeds the CHMU; the guest's CHMU driver configures an instance and drains the
//! hotlist, and must find the hot pages and none of the cold ones.

use crate::config::{ChmuClock, VmConfig};
use crate::scenario::{check, Check, Step};
use guest_agent::protocol::{Reply, Request};

/// The chmu-hot step (the CHMU feed on; `--reproducible` runs it at boot).
pub const STEP: Step = Step {
    what: "guest CHMU driver: hot-page workload on node 1, draining the hotlist",
    request,
    accepts: |r| matches!(r, Reply::ChmuHot(_)),
    timeout_mult: 1,
    check: |_, reply, counters| match reply {
        Reply::ChmuHot(r) => checks(r, counters.get("cxl_hmu")),
        _ => Vec::new(),
    },
};

/// Workload of the chmu-hot scenario: hot pages, cold pages, rounds, CHMU threshold in
/// sampled accesses per epoch (see [`threshold`]).
pub const WORKLOAD: (u32, u32, u32, u32) = (32, 256, 300, 4);

/// How many guest accesses one record of the tap stands for: its sampling period (1 with the
/// LLC model, which sees every access).
pub fn weight(cfg: &VmConfig) -> u64 {
    if cfg.chmu_llc_kib > 0 {
        1
    } else {
        cfg.chmu_sample.max(1)
    }
}

/// The chmu-hot threshold in accesses per epoch: `samples` sampled accesses' worth. Counts
/// estimate true access counts in steps of the sampling period N, so a threshold below N
/// would report any unit one access happened to be sampled from (a cold page read once is
/// then reported with probability 1/N); above `samples` x N a unit needs more than `samples`
/// samples in the epoch, which a page read once never has.
pub fn threshold(cfg: &VmConfig, samples: u32) -> u32 {
    u32::try_from(u64::from(samples) * weight(cfg)).unwrap_or(u32::MAX)
}

/// The chmu-hot scenario's request for `cfg`. Epochs: 10 ms of host time, or on the
/// instruction clock 100 us as 100k guest instructions (the workload runs only a few million
/// instructions, and an idle guest hardly advances the clock). A reproducible run drains only
/// at the end, so its epochs are ten times longer to keep the hotlist within its 1024 slots.
pub fn request(cfg: &VmConfig) -> Request {
    request_for(cfg, cfg.chmu_workload, cfg.seed)
}

/// The chmu-hot request of `cfg` with another workload and seed.
pub fn request_for(cfg: &VmConfig, workload: guest_agent::protocol::HotLoop, seed: u64) -> Request {
    let (hot_pages, cold_pages, rounds, samples) = WORKLOAD;
    let threshold = threshold(cfg, samples);
    let (epoch_scale, epoch_mult) = match (cfg.chmu_clock, cfg.reproducible) {
        (_, true) => (2, 1),
        (ChmuClock::Host, false) => (3, 1),
        (ChmuClock::Insns, false) => (1, 1),
    };
    Request::ChmuHot {
        hot_pages,
        cold_pages,
        rounds,
        threshold,
        epoch_scale,
        epoch_mult,
        seed,
        reproducible: cfg.reproducible,
        workload,
    }
}

/// Checks the guest CHMU driver's report and the device's counters.
pub fn checks(
    r: &guest_agent::protocol::ChmuHotReport,
    device_counters: Option<&serde_json::Value>,
) -> Vec<Check> {
    let recall = r.hot_found as f64 / r.hot_pages.max(1) as f64;
    let h = device_counters.map(|c| &c["registers"]["hotness"]);
    let in_range = h.and_then(|h| h["accesses_in_range"].as_u64()).unwrap_or(0);
    let mut out = Vec::new();
    if r.reproducible {
        // The guest drained once the hotlist was still: everything the device wrote must be
        // there, or the run raced the feed and its hotlist is not the reproducible one.
        let written = h.and_then(|h| h["entries_written"].as_u64());
        let overflows = h.and_then(|h| h["overflows"].as_u64()).unwrap_or(0);
        out.push(check(
            "chmu.hotlist_complete",
            written == Some(r.entries) && overflows == 0,
            format!(
                "{} entries drained, {} written by the device, {overflows} dropped; hotlist digest {:#018x} (seed {}: compare across runs)",
                r.entries,
                written.map_or("?".into(), |w| w.to_string()),
                hotlist_digest(&r.hotlist),
                r.seed
            ),
        ));
    }
    out.extend([
        check(
            "chmu.workload_on_node1",
            r.pages_on_node1 == r.hot_pages + r.cold_pages && r.hot_pages > 0,
            format!(
                "{} of {} workload pages inside the monitored range",
                r.pages_on_node1,
                r.hot_pages + r.cold_pages
            ),
        ),
        check(
            "chmu.hot_pages_reported",
            recall >= 0.95,
            format!(
                "{} of {} hot pages in the hotlist (recall {recall:.2}; precision {:.2}: {} distinct units reported, {} outside the workload's pages)",
                r.hot_found,
                r.hot_pages,
                r.hot_found as f64 / r.distinct_units.max(1) as f64,
                r.distinct_units,
                r.distinct_units
                    .saturating_sub(r.hot_found)
                    .saturating_sub(r.cold_reported)
            ),
        ),
        check(
            "chmu.cold_pages_not_reported",
            r.cold_reported == 0,
            format!(
                "{} of {} cold pages reported",
                r.cold_reported, r.cold_pages
            ),
        ),
        check(
            "chmu.device_fed",
            in_range > 0,
            format!(
                "the CHMU saw {in_range} accesses in range; {} hotlist entries drained",
                r.entries
            ),
        ),
    ]);
    out
}

/// FNV-1a over a drained hotlist's (address, count) entries in order: one number to compare
/// between runs.
pub fn hotlist_digest(entries: &[(u64, u64)]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for (a, c) in entries {
        for b in a.to_le_bytes().into_iter().chain(c.to_le_bytes()) {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use guest_agent::protocol::*;

    #[test]
    fn the_threshold_is_in_sampled_accesses_and_the_workload_is_passed_on() {
        let cfg = VmConfig {
            chmu_workload: guest_agent::protocol::HotLoop::RepMovsb,
            ..VmConfig::default()
        };
        // One in 8 sampled, weight 8: more than 4 samples is more than 32 accesses.
        assert_eq!(threshold(&cfg, 4), 32);
        let llc = VmConfig {
            chmu_llc_kib: 8192,
            ..cfg.clone()
        };
        assert_eq!(threshold(&llc, 4), 4, "the LLC model sees every access");
        match request(&cfg) {
            guest_agent::protocol::Request::ChmuHot {
                threshold,
                workload,
                ..
            } => assert_eq!(
                (threshold, workload),
                (32, guest_agent::protocol::HotLoop::RepMovsb)
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_reproducible_hotlist_must_be_complete_and_has_a_digest() {
        let r = ChmuHotReport {
            hot_pages: 1,
            pages_on_node1: 1,
            hot_found: 1,
            entries: 2,
            hotlist: vec![(0x4000_0000, 9), (0x4000_1000, 5)],
            reproducible: true,
            seed: 3,
            ..ChmuHotReport::default()
        };
        let counters = |written: u64, overflows: u64| {
            serde_json::json!({"registers": {"hotness": {
                "entries_written": written, "overflows": overflows, "accesses_in_range": 10}}})
        };
        let find = |c: &serde_json::Value| {
            checks(&r, Some(c))
                .into_iter()
                .find(|c| c.name == "chmu.hotlist_complete")
                .expect("check present")
        };
        let ok = find(&counters(2, 0));
        assert!(ok.passed, "{}", ok.detail);
        assert!(
            ok.detail
                .contains(&format!("{:#018x}", hotlist_digest(&r.hotlist))),
            "{}",
            ok.detail
        );
        assert!(!find(&counters(3, 0)).passed, "an entry left in the device");
        assert!(!find(&counters(2, 1)).passed, "an entry dropped");
        // The digest depends on order and counts.
        let d = hotlist_digest(&r.hotlist);
        assert_ne!(d, hotlist_digest(&[(0x4000_1000, 5), (0x4000_0000, 9)]));
        assert_ne!(d, hotlist_digest(&[(0x4000_0000, 9), (0x4000_1000, 6)]));
        // Not reproducible: no such check.
        let plain = ChmuHotReport {
            reproducible: false,
            ..r.clone()
        };
        assert!(checks(&plain, Some(&counters(2, 0)))
            .iter()
            .all(|c| c.name != "chmu.hotlist_complete"));
    }
}
