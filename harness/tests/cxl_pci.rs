//! VM test: the guest kernel's own CXL drivers bind the CXL memory device, and the CHMU behind
//! it still reports the guest's hot pages in the same boot.

mod common;

use common::*;
use harness::config::VmConfig;
use harness::{BringupSpec, ToolPaths};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

/// The guest script: the memdev's sysfs, the CXL drivers' kernel messages, then the chmu-hot
/// scenario's guest part through the agent (which rebinds the function to vfio-pci).
fn script(chmu_request: &str) -> String {
    format!(
        "dev=$(dirname $(grep -l 0x050210 /sys/bus/pci/devices/*/class | head -1))\n\
         echo driver=$(basename \"$(readlink $dev/driver)\")\n\
         m=/sys/bus/cxl/devices/mem0\n\
         test -d $m && echo mem0=present\n\
         echo ram_size=$(cat $m/ram/size)\n\
         echo pmem_size=$(cat $m/pmem/size)\n\
         echo serial=$(cat $m/serial)\n\
         echo firmware=$(cat $m/firmware_version)\n\
         echo bar2=$(sed -n 3p $dev/resource | cut -d' ' -f1)\n\
         sed 's/^ */iomem: /' /proc/iomem\n\
         echo kmsg_lines=$(dmesg | wc -l)\n\
         dmesg -r | grep -i -e cxl -e mem0 | sed 's/^/kmsg: /'\n\
         echo chmu=$(/bin/guest-agent --request '{chmu_request}')\n"
    )
}

/// Kernel messages about CXL at warning level or worse (`<0>`..`<4>` of `dmesg -r`, after the
/// facility bits).
fn cxl_warnings(output: &str) -> Vec<&str> {
    output
        .lines()
        .filter_map(|l| l.strip_prefix("kmsg: <"))
        .filter(|l| {
            l.split_once('>')
                .and_then(|(n, _)| n.parse::<u32>().ok())
                .is_some_and(|n| n & 7 <= 4)
        })
        .collect()
}

/// Regions of /proc/iomem (`iomem: start-end : name` lines) that start in `[start, end)`.
fn iomem_claims(output: &str, start: u64, end: u64) -> Vec<&str> {
    output
        .lines()
        .filter_map(|l| l.strip_prefix("iomem: "))
        .filter(|l| {
            let first = l.split('-').next().unwrap_or("");
            u64::from_str_radix(first.trim(), 16).is_ok_and(|s| (start..end).contains(&s))
        })
        .collect()
}

fn value<'a>(output: &'a str, key: &str) -> &'a str {
    output
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("{key} missing: {output}"))
        .trim()
}

#[test]
fn cxl_pci_binds_the_memory_device_and_the_chmu_still_reports_hot_pages() {
    let _vm = serial();
    let out = results_dir("cxl-pci");
    let cfg = VmConfig {
        chmu_feed: true,
        ..VmConfig::default()
    };
    let (_, imgs) = harness::provision(&cfg, &ToolPaths::default(), false, &mut images::Silent)
        .unwrap_or_else(|e| panic!("{e:#?}"));
    let cxl = imgs.kernel.modules_dir.join("kernel/drivers/cxl");
    let request = serde_json::to_string(&harness::chmu_hot::request(&cfg)).expect("request JSON");
    let script_path = out.join("cxl.sh");
    std::fs::write(&script_path, script(&request)).expect("script");
    let spec = BringupSpec {
        modules: ["cxl_mem", "cxl_pci"]
            .iter()
            // dyndbg: the drivers' debug messages, among them each mailbox command sent.
            .map(|m| (cxl.join(format!("{m}.ko.xz")), "dyndbg=+p".to_owned()))
            .collect(),
        script: Some(script_path),
        ..BringupSpec::default()
    };
    let t0 = std::time::Instant::now();
    let r = harness::bringup(
        &cfg,
        &ToolPaths::default(),
        &spec,
        Some(&out),
        Arc::new(AtomicBool::new(false)),
        &mut harness::Reporter::new(false, false),
    )
    .unwrap_or_else(|e| panic!("{e:#?}"));
    let o = &r.output;
    eprintln!("cxl_pci bring-up took {:?}:\n{o}", t0.elapsed());
    assert_eq!(r.modules, ["ok cxl_mem", "ok cxl_pci"], "{o}");
    assert_eq!(r.exit_code, Some(0), "{o}");
    // Bound to cxl_pci, a memdev on the cxl bus whose volatile capacity is node 1's size
    // and whose serial is the device's.
    assert_eq!(value(o, "driver"), "cxl_pci", "{o}");
    assert_eq!(value(o, "mem0"), "present", "{o}");
    assert_eq!(
        value(o, "ram_size"),
        format!("{:#x}", cfg.node1_mib << 20),
        "{o}"
    );
    assert_eq!(value(o, "pmem_size"), "0x0", "{o}");
    assert_eq!(
        value(o, "serial"),
        format!("{:#x}", device_cxl_hmu::cxl_blocks::DEFAULT_SERIAL),
        "{o}"
    );
    assert_eq!(
        value(o, "firmware"),
        device_cxl_hmu::cxl_blocks::FW_REVISION,
        "{o}"
    );
    // cxl_pci claims its register blocks, not the CHMU's: a CHMU driver can still request it.
    let bar2 = u64::from_str_radix(value(o, "bar2").trim_start_matches("0x"), 16).expect("BAR2");
    let chmu = bar2 + device_cxl_hmu::regs::CHMU_BLOCK_OFFSET;
    let memdev = bar2 + device_cxl_hmu::regs::MEMDEV_BLOCK_OFFSET;
    assert!(
        !iomem_claims(o, memdev, chmu).is_empty(),
        "mailbox claimed: {o}"
    );
    let claims = iomem_claims(o, chmu, chmu + device_cxl_hmu::regs::CHMU_BLOCK_SIZE);
    assert!(claims.is_empty(), "{claims:?}");
    assert!(
        value(o, "kmsg_lines").parse::<u32>().is_ok_and(|n| n > 100),
        "{o}"
    );
    assert!(
        cxl_warnings(o).is_empty(),
        "CXL warnings: {:?}",
        cxl_warnings(o)
    );
    // What cxl_pci sent (its "Sending command" debug messages): the probe's commands, each
    // one the device implements.
    let sent: Vec<u16> = o
        .lines()
        .filter_map(|l| l.split("Sending command: 0x").nth(1))
        .filter_map(|h| u16::from_str_radix(h.trim(), 16).ok())
        .collect();
    eprintln!("cxl_pci sent at probe: {sent:04x?}");
    for op in [0x0400, 0x0401, 0x0301, 0x4000] {
        assert!(sent.contains(&op), "{op:#06x} not sent: {sent:04x?}");
    }
    assert!(
        sent.iter()
            .all(|op| device_cxl_hmu::mailbox::command(*op).is_some()),
        "{sent:04x?}"
    );
    // cxl_pci's probe went through the mailbox: the device counted its commands.
    let hmu = r.teardown.counters.get("cxl_hmu").expect("device counters");
    let mb = &hmu["registers"]["cxl"]["mailbox"];
    for cmd in [
        "Get Supported Logs",
        "Get Log",
        "Set Timestamp",
        "Identify Memory Device",
    ] {
        assert!(mb["by_command"][cmd].as_u64() >= Some(1), "{cmd}: {mb}");
    }
    assert_eq!(mb["failed"], 0, "{mb}");
    assert_eq!(mb["commands"].as_u64(), Some(sent.len() as u64), "{mb}");
    // Then the chmu-hot scenario's checks on the same boot.
    let outcome: guest_agent::protocol::Outcome =
        serde_json::from_str(value(o, "chmu")).unwrap_or_else(|e| panic!("{e}: {o}"));
    let guest_agent::protocol::Outcome::Ok(guest_agent::protocol::Reply::ChmuHot(rep)) = outcome
    else {
        panic!("chmu-hot failed: {o}");
    };
    for c in harness::chmu_hot::checks(&rep, Some(hmu)) {
        assert!(c.passed, "{}: {}", c.name, c.detail);
    }
    assert_nothing_left(std::process::id());
    let _ = std::fs::remove_dir_all(&out);
}
