//! What the guest sees: PCI functions (sysfs), NUMA nodes and memory tiers.

use crate::protocol::{MemoryTier, NumaNode, PciFunction};
use std::path::Path;

/// Parses a kernel cpu/node list such as `0-1,4,6-7`.
pub fn parse_list(s: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for part in s.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.parse::<u32>(), b.parse::<u32>()) {
                    out.extend(a..=b.min(a.saturating_add(4096)));
                }
            }
            None => out.extend(part.parse::<u32>().ok()),
        }
    }
    out
}

fn read(p: &Path) -> Option<String> {
    std::fs::read_to_string(p).ok()
}

fn hex<T: TryFrom<u64>>(s: &str) -> Option<T> {
    u64::from_str_radix(s.trim().trim_start_matches("0x"), 16)
        .ok()
        .and_then(|v| T::try_from(v).ok())
}

/// PCI functions under /sys/bus/pci/devices.
pub fn pci_functions(sys: &Path) -> Vec<PciFunction> {
    let Ok(rd) = std::fs::read_dir(sys.join("bus/pci/devices")) else {
        return Vec::new();
    };
    let mut out: Vec<PciFunction> = rd
        .filter_map(Result::ok)
        .map(|e| {
            let d = e.path();
            let attr = |n: &str| read(&d.join(n)).unwrap_or_default();
            PciFunction {
                bdf: e.file_name().to_string_lossy().into_owned(),
                vendor: hex(&attr("vendor")).unwrap_or(0),
                device: hex(&attr("device")).unwrap_or(0),
                class: hex(&attr("class")).unwrap_or(0),
                driver: std::fs::read_link(d.join("driver"))
                    .ok()
                    .and_then(|p| p.file_name().map(|f| f.to_string_lossy().into_owned())),
                iommu_group: std::fs::read_link(d.join("iommu_group"))
                    .ok()
                    .and_then(|p| p.file_name()?.to_str()?.parse().ok()),
                numa_node: attr("numa_node").trim().parse().ok(),
            }
        })
        .collect();
    out.sort_by(|a, b| a.bdf.cmp(&b.bdf));
    out
}

/// NUMA nodes with their CPUs and memory.
pub fn numa_nodes(sys: &Path) -> Vec<NumaNode> {
    let base = sys.join("devices/system/node");
    let ids = read(&base.join("possible"))
        .map(|s| parse_list(&s))
        .unwrap_or_default();
    ids.into_iter()
        .filter_map(|id| {
            let d = base.join(format!("node{id}"));
            let meminfo = read(&d.join("meminfo"))?;
            let mem_total_kib = meminfo
                .lines()
                .find(|l| l.contains("MemTotal:"))
                .and_then(|l| l.split_whitespace().rev().nth(1))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            Some(NumaNode {
                id,
                cpus: read(&d.join("cpulist"))
                    .map(|s| parse_list(&s))
                    .unwrap_or_default(),
                mem_total_kib,
            })
        })
        .collect()
}

/// Memory tiers from /sys/devices/virtual/memory_tiering.
pub fn memory_tiers(sys: &Path) -> Vec<MemoryTier> {
    let Ok(rd) = std::fs::read_dir(sys.join("devices/virtual/memory_tiering")) else {
        return Vec::new();
    };
    let mut out: Vec<MemoryTier> = rd
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let id = name.strip_prefix("memory_tier")?.parse().ok()?;
            let nodes = parse_list(&read(&e.path().join("nodelist"))?);
            Some(MemoryTier { id, nodes })
        })
        .collect();
    out.sort_by_key(|t| t.id);
    out
}

/// Loaded modules.
pub fn modules() -> Vec<String> {
    read(Path::new("/proc/modules"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_list_handles_ranges_singles_and_empty() {
        assert_eq!(parse_list("0-1,4,6-7\n"), vec![0, 1, 4, 6, 7]);
        assert_eq!(parse_list("\n"), Vec::<u32>::new());
        assert_eq!(parse_list("x,3"), vec![3]);
    }

    #[test]
    fn sysfs_tree_is_read() {
        let root = std::env::temp_dir().join(format!("agent-sys-{}", std::process::id()));
        let node = root.join("devices/system/node");
        std::fs::create_dir_all(node.join("node0")).expect("mkdir");
        std::fs::create_dir_all(node.join("node1")).expect("mkdir");
        std::fs::write(node.join("possible"), "0-1\n").expect("w");
        std::fs::write(node.join("node0/cpulist"), "0-1\n").expect("w");
        std::fs::write(node.join("node1/cpulist"), "\n").expect("w");
        std::fs::write(
            node.join("node0/meminfo"),
            "Node 0 MemTotal:       469608 kB\n",
        )
        .expect("w");
        std::fs::write(
            node.join("node1/meminfo"),
            "Node 1 MemTotal:       515732 kB\n",
        )
        .expect("w");
        let tiers = root.join("devices/virtual/memory_tiering");
        std::fs::create_dir_all(tiers.join("memory_tier54")).expect("mkdir");
        std::fs::create_dir_all(tiers.join("memory_tier4")).expect("mkdir");
        std::fs::write(tiers.join("memory_tier4/nodelist"), "0\n").expect("w");
        std::fs::write(tiers.join("memory_tier54/nodelist"), "1\n").expect("w");
        let nodes = numa_nodes(&root);
        assert_eq!(nodes.len(), 2);
        assert_eq!(nodes[0].cpus, vec![0, 1]);
        assert!(nodes[1].cpus.is_empty());
        assert_eq!(nodes[1].mem_total_kib, 515732);
        let t = memory_tiers(&root);
        assert_eq!(t.iter().map(|t| t.id).collect::<Vec<_>>(), vec![4, 54]);
        let _ = std::fs::remove_dir_all(&root);
    }
}
