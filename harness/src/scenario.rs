//! Scenarios: what runs in a booted test bed and the checks that decide pass or fail.
//!
//! Built in so far: `inventory`, which checks the foundation: both devices found with their
//! class codes and the registers their servers define, node 1 memory-only in a lower tier.

use crate::config::{ChmuClock, VmConfig};
use device_cxl_hmu::chmu::ChmuConfig;
use device_sdxi::function::SdxiConfig;
use guest_agent::protocol::{Inventory, ProbeResult};
use serde::Serialize;

/// Names of the built-in scenarios.
pub const BUILTIN: &[(&str, &str)] = &[
    (
        "inventory",
        "boot, enumerate PCI/NUMA/tiers, bind both devices to vfio-pci and read their identity registers",
    ),
    (
        "sdxi-copy",
        "inventory, then the guest's SDXi driver copies 1 B..16 MiB through the device (IOVAs via the vIOMMU, MSI-X), every byte checked",
    ),
    (
        "chmu-hot",
        "inventory, then a guest workload with a known hot set on node 1; the CHMU (fed by the chmu-tap TCG plugin) must report the hot pages",
    ),
    (
        "migrate",
        "the main job: Zipf workload on node 1, CHMU hints, promotion, batches of 512 copied by SDXi, every copy verified in the guest and by the harness",
    ),
    (
        "migrate-bench",
        "copy benchmark: move_pages / CPU / SDXi x 4 KiB and 2 MiB folios x batches of 1, 64, 512 (GB/s, guest CPU s/GB, first-folio latency)",
    ),
    (
        "compare-sources",
        "the same Zipf workload twice in one boot: CHMU hints vs DAMON as the hotness source",
    ),
    (
        "all",
        "inventory, sdxi-copy and chmu-hot in one boot (the CHMU feed on throughout)",
    ),
];

/// Whether a scenario runs the SDXi copy step.
pub fn uses_sdxi(name: &str) -> bool {
    matches!(name, "sdxi-copy" | "all")
}

/// Whether a scenario runs the CHMU hot-page step (and so needs the plugin feed).
pub fn uses_chmu(name: &str) -> bool {
    matches!(name, "chmu-hot" | "all")
}

/// Workload of the chmu-hot scenario: hot pages, cold pages, rounds, CHMU threshold in
/// sampled accesses per epoch (see [`chmu_hot_threshold`]).
pub const CHMU_HOT: (u32, u32, u32, u32) = (32, 256, 300, 4);

/// How many guest accesses one record of the tap stands for: its sampling period (1 with the
/// LLC model, which sees every access).
pub fn chmu_weight(cfg: &VmConfig) -> u64 {
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
pub fn chmu_hot_threshold(cfg: &VmConfig, samples: u32) -> u32 {
    u32::try_from(u64::from(samples) * chmu_weight(cfg)).unwrap_or(u32::MAX)
}

/// The chmu-hot scenario's request for `cfg`. Epochs: 10 ms of host time, or on the
/// instruction clock 100 us as 100k guest instructions (the workload runs only a few million
/// instructions, and an idle guest hardly advances the clock). A reproducible run drains only
/// at the end, so its epochs are ten times longer to keep the hotlist within its 1024 slots.
pub fn chmu_hot_request(cfg: &VmConfig) -> guest_agent::protocol::Request {
    chmu_hot_request_for(cfg, cfg.chmu_workload, cfg.seed)
}

/// The chmu-hot request of `cfg` with another workload and seed.
pub fn chmu_hot_request_for(
    cfg: &VmConfig,
    workload: guest_agent::protocol::HotLoop,
    seed: u64,
) -> guest_agent::protocol::Request {
    let (hot_pages, cold_pages, rounds, samples) = CHMU_HOT;
    let threshold = chmu_hot_threshold(cfg, samples);
    let (epoch_scale, epoch_mult) = match (cfg.chmu_clock, cfg.reproducible) {
        (_, true) => (2, 1),
        (ChmuClock::Host, false) => (3, 1),
        (ChmuClock::Insns, false) => (1, 1),
    };
    guest_agent::protocol::Request::ChmuHot {
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
pub fn chmu_hot_checks(
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

/// The scenario `harness demo` runs.
pub const DEFAULT: &str = "migrate";

/// Sizes the sdxi-copy scenario copies.
pub const SDXI_COPY_SIZES: &[u64] = &[1, 4096, 65536, 2 << 20, 16 << 20];

/// Checks the guest's SDXi copy report and the device's own counters of the same run.
pub fn sdxi_copy_checks(
    report: &guest_agent::protocol::SdxiCopyReport,
    device_counters: Option<&serde_json::Value>,
) -> Vec<Check> {
    let mut out = Vec::new();
    for r in &report.results {
        out.push(check(
            &format!("sdxi.copy_{}", r.bytes),
            r.completed && !r.error_flag && r.mismatched_bytes == 0,
            format!(
                "{} bytes: completed {}, er {}, {} mismatched bytes, {} us doorbell to completion",
                r.bytes, r.completed, r.error_flag, r.mismatched_bytes, r.micros
            ),
        ));
    }
    out.push(check(
        "sdxi.msix_interrupt",
        report.interrupt_received,
        format!(
            "INTR -> MSI-X vector 1 after {} us",
            report.interrupt_micros
        ),
    ));
    let total: u64 = report.results.iter().map(|r| r.bytes).sum();
    let engine = device_counters.map(|c| &c["registers"]["engine"]);
    let copied = engine.and_then(|e| e["bytes_copied"].as_u64());
    let errors: u64 = engine.and_then(|e| e["errors"].as_object()).map_or(0, |m| {
        m.values().filter_map(serde_json::Value::as_u64).sum()
    });
    out.push(check(
        "sdxi.device_counters",
        copied == Some(total) && errors == 0 && report.errlog_entries == 0,
        format!(
            "device copied {copied:?} of {total} bytes, {errors} errors, {} error-log entries",
            report.errlog_entries
        ),
    ));
    out
}

/// One check's verdict.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Check {
    pub name: String,
    pub passed: bool,
    pub detail: String,
}

fn check(name: &str, passed: bool, detail: String) -> Check {
    Check {
        name: name.to_owned(),
        passed,
        detail,
    }
}

/// Checks an inventory against what the harness configured.
pub fn inventory_checks(cfg: &VmConfig, inv: &Inventory) -> Vec<Check> {
    let mut out = Vec::new();
    let sdxi_cfg = SdxiConfig {
        max_cxt: cfg.sdxi_max_cxt,
        ..SdxiConfig::default()
    };
    let chmu_cfg = ChmuConfig {
        instances: cfg.chmu_instances,
        ..ChmuConfig::default()
    };

    let sdxi_fn = inv
        .pci
        .iter()
        .find(|f| f.class == device_sdxi::regs::SDXI_CLASS_CODE);
    out.push(check(
        "sdxi.class_code",
        sdxi_fn.is_some(),
        sdxi_fn.map_or("no PCI function with class 0x120100".into(), |f| {
            format!(
                "{} {:04x}:{:04x} class {:#08x}",
                f.bdf, f.vendor, f.device, f.class
            )
        }),
    ));
    match inv.sdxi.as_ref().map(|p| &p.result) {
        Some(ProbeResult::Found(id)) => {
            out.push(check(
                "sdxi.version",
                (id.version_major, id.version_minor) == (1, 0),
                format!("VERSION reads {}.{}", id.version_major, id.version_minor),
            ));
            out.push(check(
                "sdxi.cap0_cap1",
                id.cap0 == sdxi_cfg.cap0() && id.cap1 == sdxi_cfg.cap1(),
                format!(
                    "CAP0 {:#x} (server {:#x}), CAP1 {:#x} (server {:#x})",
                    id.cap0,
                    sdxi_cfg.cap0(),
                    id.cap1,
                    sdxi_cfg.cap1()
                ),
            ));
            let bar0 = id.vfio.bars.iter().find(|b| b.0 == 0).map(|b| b.1);
            out.push(check(
                "sdxi.bars_msix",
                bar0 == Some(device_sdxi::regs::CONTROL_BAR_SIZE)
                    && id.vfio.msix_vectors == u32::from(sdxi_cfg.msix_vectors()),
                format!(
                    "BAR0 {} bytes, {} MSI-X vectors via vfio-pci",
                    bar0.map_or("missing".into(), |s| format!("{s:#x}")),
                    id.vfio.msix_vectors
                ),
            ));
        }
        Some(ProbeResult::Failed(e)) => out.push(check("sdxi.probe", false, e.clone())),
        None => out.push(check(
            "sdxi.probe",
            false,
            "no SDXi function to probe".into(),
        )),
    }

    let chmu_fn = inv
        .pci
        .iter()
        .find(|f| f.class == device_cxl_hmu::regs::CXL_MEMDEV_CLASS_CODE);
    out.push(check(
        "chmu.class_code",
        chmu_fn.is_some(),
        chmu_fn.map_or("no PCI function with class 0x050210".into(), |f| {
            format!(
                "{} {:04x}:{:04x} class {:#08x}",
                f.bdf, f.vendor, f.device, f.class
            )
        }),
    ));
    match inv.chmu.as_ref().map(|p| &p.result) {
        Some(ProbeResult::Found(id)) => {
            let block = id
                .register_blocks
                .iter()
                .find(|b| b.block_id == device_cxl_hmu::regs::RBI_CHMU);
            out.push(check(
                "chmu.register_locator",
                block.is_some_and(|b| b.bar == device_cxl_hmu::regs::REGS_BAR),
                format!("register blocks {:?}", id.register_blocks),
            ));
            out.push(check(
                "chmu.capabilities",
                id.instances == chmu_cfg.instances
                    && id.instance_cap0.iter().all(|c| *c == chmu_cfg.cap0())
                    && id.instance_cap1.iter().all(|c| *c == chmu_cfg.cap1())
                    && id.counter_width == chmu_cfg.counter_width,
                format!(
                    "{} instances, hotlist {} entries, counter width {}",
                    id.instances, id.hotlist_size, id.counter_width
                ),
            ));
            let node1 = cfg.node1_range().ok();
            out.push(check(
                "chmu.monitored_range",
                node1.is_some_and(|r| r.base == id.hpa_base && r.size == id.size),
                format!(
                    "DVSEC range 1 {:#x}+{:#x}, node 1 {}",
                    id.hpa_base,
                    id.size,
                    node1.map_or("invalid".into(), |r| format!("{:#x}+{:#x}", r.base, r.size))
                ),
            ));
        }
        Some(ProbeResult::Failed(e)) => out.push(check("chmu.probe", false, e.clone())),
        None => out.push(check(
            "chmu.probe",
            false,
            "no CXL memory device to probe".into(),
        )),
    }

    let n0 = inv.node(0);
    let n1 = inv.node(1);
    out.push(check(
        "numa.node1_memory_only",
        n1.is_some_and(|n| n.cpus.is_empty() && n.mem_total_kib > 0)
            && n0.is_some_and(|n| !n.cpus.is_empty()),
        format!("node0 {}, node1 {}", describe(n0), describe(n1)),
    ));
    let (t0, t1) = (inv.tier_of(0), inv.tier_of(1));
    out.push(check(
        "numa.node1_lower_tier",
        matches!((t0, t1), (Some(a), Some(b)) if b > a),
        format!("node0 in {}, node1 in {}", tier(t0), tier(t1)),
    ));
    out
}

fn describe(n: Option<&guest_agent::protocol::NumaNode>) -> String {
    n.map_or("missing".into(), |n| {
        format!("{} MiB, cpus {:?}", n.mem_total_kib / 1024, n.cpus)
    })
}

fn tier(t: Option<u32>) -> String {
    t.map_or("no tier".into(), |t| format!("memory_tier{t}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use guest_agent::protocol::*;

    #[test]
    fn the_chmu_hot_threshold_is_in_sampled_accesses_and_the_workload_is_passed_on() {
        let cfg = VmConfig {
            chmu_workload: guest_agent::protocol::HotLoop::RepMovsb,
            ..VmConfig::default()
        };
        // One in 8 sampled, weight 8: more than 4 samples is more than 32 accesses.
        assert_eq!(chmu_hot_threshold(&cfg, 4), 32);
        let llc = VmConfig {
            chmu_llc_kib: 8192,
            ..cfg.clone()
        };
        assert_eq!(
            chmu_hot_threshold(&llc, 4),
            4,
            "the LLC model sees every access"
        );
        match chmu_hot_request(&cfg) {
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
            chmu_hot_checks(&r, Some(c))
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
        assert!(chmu_hot_checks(&plain, Some(&counters(2, 0)))
            .iter()
            .all(|c| c.name != "chmu.hotlist_complete"));
    }

    fn good_inventory(cfg: &VmConfig) -> Inventory {
        let s = SdxiConfig {
            max_cxt: cfg.sdxi_max_cxt,
            ..SdxiConfig::default()
        };
        let c = ChmuConfig::default();
        let r = cfg.node1_range().expect("valid");
        Inventory {
            nodes: vec![
                NumaNode {
                    id: 0,
                    cpus: vec![0, 1],
                    mem_total_kib: 1,
                },
                NumaNode {
                    id: 1,
                    cpus: vec![],
                    mem_total_kib: 1,
                },
            ],
            memory_tiers: vec![
                MemoryTier {
                    id: 4,
                    nodes: vec![0],
                },
                MemoryTier {
                    id: 54,
                    nodes: vec![1],
                },
            ],
            pci: vec![
                PciFunction {
                    bdf: "a".into(),
                    class: 0x120100,
                    ..Default::default()
                },
                PciFunction {
                    bdf: "b".into(),
                    class: 0x050210,
                    ..Default::default()
                },
            ],
            sdxi: Some(Probe {
                bdf: "a".into(),
                result: ProbeResult::Found(SdxiIdentity {
                    vfio: VfioFacts {
                        bars: vec![(0, 0x40000, true)],
                        msix_vectors: u32::from(s.msix_vectors()),
                        ..Default::default()
                    },
                    version_major: 1,
                    cap0: s.cap0(),
                    cap1: s.cap1(),
                    ..Default::default()
                }),
            }),
            chmu: Some(Probe {
                bdf: "b".into(),
                result: ProbeResult::Found(ChmuIdentity {
                    register_blocks: vec![RegisterBlock {
                        block_id: 5,
                        bar: 2,
                        offset: 0,
                    }],
                    hpa_base: r.base,
                    size: r.size,
                    instances: 2,
                    instance_cap0: vec![c.cap0(); 2],
                    instance_cap1: vec![c.cap1(); 2],
                    counter_width: 16,
                    ..Default::default()
                }),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_conforming_inventory_passes_every_check() {
        let cfg = VmConfig::default();
        let checks = inventory_checks(&cfg, &good_inventory(&cfg));
        assert!(checks.iter().all(|c| c.passed), "{checks:#?}");
        assert_eq!(checks.len(), 10);
    }

    #[test]
    fn same_tier_for_both_nodes_fails() {
        let cfg = VmConfig::default();
        let mut inv = good_inventory(&cfg);
        inv.memory_tiers = vec![MemoryTier {
            id: 4,
            nodes: vec![0, 1],
        }];
        let failed: Vec<String> = inventory_checks(&cfg, &inv)
            .into_iter()
            .filter(|c| !c.passed)
            .map(|c| c.name)
            .collect();
        assert_eq!(failed, vec!["numa.node1_lower_tier"]);
    }

    #[test]
    fn wrong_register_values_and_failed_probe_are_reported() {
        let cfg = VmConfig::default();
        let mut inv = good_inventory(&cfg);
        if let Some(Probe {
            result: ProbeResult::Found(id),
            ..
        }) = inv.sdxi.as_mut()
        {
            id.version_minor = 1;
        }
        inv.chmu = Some(Probe {
            bdf: "b".into(),
            result: ProbeResult::Failed("no IOMMU group".into()),
        });
        let failed: Vec<String> = inventory_checks(&cfg, &inv)
            .into_iter()
            .filter(|c| !c.passed)
            .map(|c| c.name)
            .collect();
        assert_eq!(failed, vec!["sdxi.version", "chmu.probe"]);
    }
}
