//! The inventory step, every scenario's first: the guest enumerates PCI functions, NUMA
//! nodes and memory tiers, binds both devices to vfio-pci behind the vIOMMU and reads their
//! identity registers through the BAR mmaps; the checks compare that with what the harness
//! configured and the servers define.

use crate::config::VmConfig;
use crate::scenario::{check, Check, Counters, Step};
use device_cxl_hmu::chmu::ChmuConfig;
use device_sdxi::function::SdxiConfig;
use guest_agent::protocol::{Inventory, ProbeResult, Reply, Request};

/// Checks an inventory against what the harness configured: each device found with its
/// class code and the identity registers its server defines, node 1 memory-only in a lower
/// memory tier.
pub fn checks(cfg: &VmConfig, inv: &Inventory) -> Vec<Check> {
    let mut out = sdxi_checks(cfg, inv);
    out.extend(chmu_checks(cfg, inv));
    out.extend(numa_checks(inv));
    out
}

/// The inventory step's checks (see [`checks`]).
fn step_checks(cfg: &VmConfig, reply: &Reply, _: &Counters) -> Vec<Check> {
    match reply {
        Reply::Inventory(inv) => checks(cfg, inv),
        _ => Vec::new(),
    }
}

/// The first step of every scenario.
pub const STEP: Step = Step {
    what: "inventory: PCI functions, NUMA nodes, memory tiers, both devices bound to vfio-pci",
    request: |_| Request::Inventory,
    accepts: |r| matches!(r, Reply::Inventory(_)),
    timeout_mult: 1,
    check: step_checks,
};

/// A PCI function with class code `class` was enumerated.
fn class_code_check(inv: &Inventory, name: &str, class: u32) -> Check {
    let f = inv.pci.iter().find(|f| f.class == class);
    check(
        name,
        f.is_some(),
        f.map_or(format!("no PCI function with class {class:#08x}"), |f| {
            format!(
                "{} {:04x}:{:04x} class {:#08x}",
                f.bdf, f.vendor, f.device, f.class
            )
        }),
    )
}

/// The SDXi function: class code, VERSION, CAP0/CAP1 and BAR0/MSI-X as the server defines
/// them.
fn sdxi_checks(cfg: &VmConfig, inv: &Inventory) -> Vec<Check> {
    let mut out = Vec::new();
    let sdxi_cfg = SdxiConfig {
        max_cxt: cfg.sdxi_max_cxt,
        ..SdxiConfig::default()
    };
    out.push(class_code_check(
        inv,
        "sdxi.class_code",
        device_sdxi::regs::SDXI_CLASS_CODE,
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
    out
}

/// The CXL memory device: class code, the Register Locator pointing at the CHMU block,
/// the CHMU capabilities, and the monitored range equal to node 1.
fn chmu_checks(cfg: &VmConfig, inv: &Inventory) -> Vec<Check> {
    let mut out = Vec::new();
    let chmu_cfg = ChmuConfig {
        instances: cfg.chmu_instances,
        ..ChmuConfig::default()
    };
    out.push(class_code_check(
        inv,
        "chmu.class_code",
        device_cxl_hmu::regs::CXL_MEMDEV_CLASS_CODE,
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
    out
}

/// Node 1 has memory and no CPUs, and sits in a lower memory tier than node 0.
fn numa_checks(inv: &Inventory) -> Vec<Check> {
    let mut out = Vec::new();
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
        let checks = checks(&cfg, &good_inventory(&cfg));
        assert!(checks.iter().all(|c| c.passed), "{checks:#?}");
        assert_eq!(checks.len(), 10);
    }

    #[test]
    fn a_missing_function_fails_its_class_check_naming_the_class() {
        let cfg = VmConfig::default();
        let mut inv = good_inventory(&cfg);
        inv.pci.retain(|f| f.class != 0x050210);
        let c = checks(&cfg, &inv)
            .into_iter()
            .find(|c| c.name == "chmu.class_code")
            .expect("check present");
        assert!(!c.passed);
        assert_eq!(c.detail, "no PCI function with class 0x050210");
    }

    #[test]
    fn same_tier_for_both_nodes_fails() {
        let cfg = VmConfig::default();
        let mut inv = good_inventory(&cfg);
        inv.memory_tiers = vec![MemoryTier {
            id: 4,
            nodes: vec![0, 1],
        }];
        let failed: Vec<String> = checks(&cfg, &inv)
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
        let failed: Vec<String> = checks(&cfg, &inv)
            .into_iter()
            .filter(|c| !c.passed)
            .map(|c| c.name)
            .collect();
        assert_eq!(failed, vec!["sdxi.version", "chmu.probe"]);
    }
}
