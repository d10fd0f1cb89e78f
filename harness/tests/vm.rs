//! VM tests: the real QEMU, the real Debian guest, real vfio-user sockets and device servers.
//! They provision on first use (about 15 s and 160 MB on a fresh machine) and run one VM at a
//! time.

mod common;

use common::*;
use harness::config::VmConfig;
use harness::{Reporter, ToolPaths};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

#[test]
fn guest_sees_both_devices_their_registers_and_a_lower_cxl_tier() {
    let _vm = serial();
    let cfg = VmConfig::default();
    let (r, out) = run(&cfg, "inventory", "inventory");

    // Guest side, checked here independently of the scenario's own checks.
    let inv = &r.inventory;
    assert!(inv
        .pci
        .iter()
        .any(|f| f.class == 0x12_01_00 && f.driver.as_deref() == Some("vfio-pci")));
    assert!(inv
        .pci
        .iter()
        .any(|f| f.class == 0x05_02_10 && f.driver.as_deref() == Some("vfio-pci")));
    let sdxi = match &inv.sdxi.as_ref().expect("sdxi probed").result {
        guest_agent::protocol::ProbeResult::Found(id) => id.clone(),
        other => panic!("SDXi probe: {other:?}"),
    };
    assert_eq!((sdxi.version_major, sdxi.version_minor), (1, 0));
    assert_eq!(sdxi.max_cxt, cfg.sdxi_max_cxt);
    let n1 = inv.node(1).expect("node 1");
    assert!(
        n1.cpus.is_empty() && n1.mem_total_kib > 900 * 1024,
        "{n1:?}"
    );
    assert!(inv.tier_of(1) > inv.tier_of(0), "{:?}", inv.memory_tiers);
    for m in ["vfio_pci", "vfio_iommu_type1", "uio_pci_generic"] {
        assert!(
            inv.modules.iter().any(|x| x == m),
            "module {m} not loaded: {:?}",
            inv.modules
        );
    }

    // Device side: the servers saw the guest's BAR reads and guest RAM arrived with fds.
    let sdxi_c = &r.teardown.counters["sdxi"];
    assert!(
        sdxi_c["registers"]["function"]["mmio_reads"].as_u64() >= Some(4),
        "{sdxi_c}"
    );
    assert_eq!(sdxi_c["registers"]["function"]["guest_errors"], 0);
    assert!(
        sdxi_c["transport"]["dma_maps"].as_u64()
            > sdxi_c["transport"]["dma_maps_without_fd"].as_u64()
    );
    let hmu_c = &r.teardown.counters["cxl_hmu"];
    assert!(
        hmu_c["registers"]["chmu"]["mmio_reads"].as_u64() >= Some(2),
        "{hmu_c}"
    );

    // Nothing left behind: processes, sockets, guest RAM files.
    assert!(r.teardown.stray_processes.is_empty());
    assert!(
        r.teardown
            .qemu_exit
            .as_deref()
            .is_some_and(|s| s.contains('0')),
        "{:?}",
        r.teardown.qemu_exit
    );
    assert_nothing_left(std::process::id());
    assert!(Path::new(&r.run_dir).join("result.json").is_file());
    assert!(Path::new(&r.run_dir).join("console.log").is_file());
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn ctrl_c_during_boot_kills_everything_and_exits_130() {
    let _vm = serial();
    let out = results_dir("sigint");
    let mut child = Command::new(env!("CARGO_BIN_EXE_harness"))
        .args(["run", "--results"])
        .arg(&out)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn harness");
    let pid = child.id();
    let stderr = child.stderr.take().expect("stderr");
    let mut seen = Vec::new();
    for line in BufReader::new(stderr).lines().map_while(Result::ok) {
        seen.push(line.clone());
        if line.contains("booting the guest") {
            // SAFETY: kill(2) of our own child.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGINT) };
        }
    }
    let st = child.wait().expect("wait");
    assert_eq!(st.code(), Some(130), "{seen:#?}");
    assert_nothing_left(pid);
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn a_device_server_that_cannot_serve_is_an_infrastructure_failure_with_logs() {
    let _vm = serial();
    let out = results_dir("badserver");
    let o = Command::new(env!("CARGO_BIN_EXE_harness"))
        .args(["run", "--sdxi-server", "/bin/false", "--results"])
        .arg(&out)
        .output()
        .expect("run harness");
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(3), "{err}");
    assert!(err.contains("exited early"), "{err}");
    assert!(err.contains("qemu.log"), "log tails printed: {err}");
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn invalid_configuration_is_a_usage_error_naming_the_value() {
    let o = Command::new(env!("CARGO_BIN_EXE_harness"))
        .args(["run", "--node1-mib", "100"])
        .output()
        .expect("run harness");
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("node1_mib = 100"));
    // Reproducible mode is about the CHMU's hotlist: refused for another scenario, before
    // anything is provisioned or booted.
    let o = Command::new(env!("CARGO_BIN_EXE_harness"))
        .args(["run", "inventory", "--reproducible", "-q"])
        .output()
        .expect("run harness");
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("--reproducible applies to the chmu-hot scenario"),
        "{err}"
    );
    assert!(!err.contains("building"), "{err}");
}

#[test]
fn guest_sdxi_driver_copies_through_the_device_byte_exact_with_msix() {
    let _vm = serial();
    let (r, out) = run(&VmConfig::default(), "sdxi-copy", "sdxi-copy");
    let rep = r.sdxi_copy.as_ref().expect("copy report");
    // Checked here independently of the scenario's checks: every size, every byte.
    let sizes: Vec<u64> = rep.results.iter().map(|x| x.bytes).collect();
    assert_eq!(sizes, harness::sdxi_copy::SIZES);
    assert!(
        rep.results
            .iter()
            .all(|x| x.completed && !x.error_flag && x.mismatched_bytes == 0),
        "{rep:?}"
    );
    assert!(rep.interrupt_received);
    // The device saw the same bytes, through IOVA maps QEMU sent for the guest's DMA buffer.
    let engine = &r.teardown.counters["sdxi"]["registers"]["engine"];
    assert_eq!(
        engine["bytes_copied"].as_u64(),
        Some(sizes.iter().sum::<u64>())
    );
    assert_eq!(
        engine["descriptors"]["copy"].as_u64(),
        Some(sizes.len() as u64)
    );
    assert_eq!(engine["descriptors"]["intr"].as_u64(), Some(1));
    assert_eq!(engine["contexts_started"].as_u64(), Some(1));
    assert!(r.teardown.counters["sdxi"]["interrupts"]["raised"].as_u64() >= Some(1));
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn chmu_fed_by_the_tcg_plugin_reports_the_guest_hot_pages() {
    let _vm = serial();
    let (r, out) = run(&VmConfig::default(), "chmu-hot", "chmu-hot");
    let rep = r.chmu_hot.as_ref().expect("CHMU report");
    // Independently of the scenario's checks: every hot page's guest-physical address lies in
    // node 1, and the device's own counters show the plugin's feed.
    assert_eq!(rep.hot_gpas.len() as u64, rep.hot_pages);
    assert!(rep
        .hot_gpas
        .iter()
        .all(|g| (rep.hpa_base..rep.hpa_base + rep.size).contains(g)));
    assert!(rep.hot_found * 100 >= rep.hot_pages * 95, "{rep:?}");
    assert_eq!(rep.cold_reported, 0, "{rep:?}");
    // Without a cache model every sampled access counts: far more than one per line.
    assert!(
        rep.hot_counts.iter().filter(|&&c| c > 64).count() * 100 >= rep.hot_counts.len() * 95,
        "{:?}",
        rep.hot_counts
    );
    let h = &r.teardown.counters["cxl_hmu"]["registers"]["hotness"];
    assert!(h["entries_written"].as_u64() >= Some(rep.hot_found), "{h}");
    assert!(h["epochs"].as_u64() > Some(0), "{h}");
    let qemu_log = std::fs::read_to_string(r.run_dir.join("qemu.log")).unwrap_or_default();
    assert!(
        qemu_log.contains("chmu-tap: instrumented"),
        "plugin reported at exit: {qemu_log}"
    );
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn chmu_epochs_on_the_guest_instruction_clock_also_find_the_hot_pages() {
    let _vm = serial();
    let cfg = VmConfig {
        chmu_clock: harness::config::ChmuClock::Insns,
        ..VmConfig::default()
    };
    let (r, out) = run(&cfg, "chmu-hot", "chmu-insns");
    let h = &r.teardown.counters["cxl_hmu"]["registers"]["hotness"];
    // The records carry instruction counts: billions after a boot, not host nanoseconds.
    assert!(h["last_time"].as_u64() > h["first_time"].as_u64(), "{h}");
    let qemu_log = std::fs::read_to_string(r.run_dir.join("qemu.log")).unwrap_or_default();
    assert!(
        qemu_log.contains("guest instructions counted: Some("),
        "{qemu_log}"
    );
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn reproducible_runs_give_the_same_hotlist_and_another_seed_another() {
    let _vm = serial();
    let cfg = VmConfig {
        reproducible: true,
        seed: 7,
        ..VmConfig::default()
    };
    let (a, out_a) = run(&cfg, "chmu-hot", "repro-a");
    let (b, out_b) = run(&cfg, "chmu-hot", "repro-b");
    let (c, out_c) = run(&VmConfig { seed: 8, ..cfg }, "chmu-hot", "repro-c");
    let [ra, rb, rc] = [&a, &b, &c].map(|r| r.chmu_hot.clone().expect("CHMU report"));
    for (r, rep) in [(&a, &ra), (&b, &rb), (&c, &rc)] {
        assert!(rep.reproducible, "{rep:?}");
        // Complete (nothing left in the device or dropped) and the hot set found.
        let h = &r.teardown.counters["cxl_hmu"]["registers"]["hotness"];
        assert_eq!(h["entries_written"].as_u64(), Some(rep.entries), "{h}");
        assert_eq!(rep.hot_found, rep.hot_pages, "{rep:?}");
        let cmdline = std::fs::read_to_string(r.run_dir.join("qemu.cmdline")).expect("cmdline");
        assert!(cmdline.contains("-icount") && cmdline.contains("tierbed.autorun="));
    }
    assert!(ra.hotlist.len() as u64 >= ra.hot_pages, "{ra:?}");
    // Same workload, same seed: the same pages at the same addresses, the same entries in the
    // same order with the same counts.
    assert_eq!(ra.hot_gpas, rb.hot_gpas);
    assert_eq!(ra.hotlist, rb.hotlist);
    assert_eq!(
        ra.workload_micros, rb.workload_micros,
        "guest time is instructions"
    );
    // Another seed: another hot set, another hotlist.
    assert_ne!(ra.hot_gpas, rc.hot_gpas);
    assert_ne!(ra.hotlist, rc.hotlist);
    for o in [out_a, out_b, out_c] {
        let _ = std::fs::remove_dir_all(&o);
    }
}

#[test]
fn the_main_job_demo_passes_every_check_in_one_boot() {
    let _vm = serial();
    let o = Command::new(env!("CARGO_BIN_EXE_harness"))
        .args(["demo", "-q"])
        .output()
        .expect("run harness demo");
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{out}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(out.contains("scenario migrate: PASSED"), "{out}");
    for check in [
        "migrate_promoted",
        "host_verified_copies",
        "migrate_no_lost_writes",
        "source_found_hot_set",
        "hot_set_on_node0",
        "accesses_moved_to_node0",
        "sdxi_device_did_the_copies",
        "numa.node1_lower_tier",
        "no_stray_processes",
    ] {
        assert!(
            out.contains(check),
            "{check} missing from the summary: {out}"
        );
    }
    assert!(!out.contains("[FAIL]"), "{out}");
}

fn junit_counts(xml: &str) -> (usize, usize, usize, usize) {
    let mut reader = quick_xml::Reader::from_str(xml);
    let (mut suites, mut cases, mut failures, mut errors) = (0, 0, 0, 0);
    loop {
        match reader.read_event().expect("well-formed JUnit XML") {
            quick_xml::events::Event::Eof => break,
            quick_xml::events::Event::Start(e) | quick_xml::events::Event::Empty(e) => {
                match e.name().as_ref() {
                    b"testsuite" => suites += 1,
                    b"testcase" => cases += 1,
                    b"failure" => failures += 1,
                    b"error" => errors += 1,
                    _ => {}
                }
            }
            _ => {}
        }
    }
    (suites, cases, failures, errors)
}

#[test]
fn a_matrix_run_writes_junit_that_ci_tools_can_read() {
    let _vm = serial();
    let out = results_dir("matrix");
    let junit = out.join("junit.xml");
    let o = Command::new(env!("CARGO_BIN_EXE_harness"))
        // Two VMs at once: the parallel path (each VM has its own sockets and RAM files).
        .args([
            "run",
            "inventory",
            "sdxi-copy",
            "-q",
            "--jobs",
            "2",
            "--junit",
        ])
        .arg(&junit)
        .arg("--results")
        .arg(&out)
        .output()
        .expect("run harness");
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(stdout.contains("2 passed, 0 failed"), "{stdout}");
    let xml = std::fs::read_to_string(&junit).expect("junit written");
    let (suites, cases, failures, errors) = junit_counts(&xml);
    assert_eq!((suites, failures, errors), (2, 0, 0));
    assert!(cases >= 20, "one test case per check: {cases}");
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn a_scenario_over_its_time_limit_is_an_error_and_leaves_nothing_behind() {
    let _vm = serial();
    let out = results_dir("timeout");
    let junit = out.join("junit.xml");
    let child = Command::new(env!("CARGO_BIN_EXE_harness"))
        .args([
            "run",
            "inventory",
            "-q",
            "--scenario-timeout",
            "2",
            "--junit",
        ])
        .arg(&junit)
        .arg("--results")
        .arg(&out)
        .output()
        .expect("run harness");
    let stdout = String::from_utf8_lossy(&child.stdout);
    assert_eq!(child.status.code(), Some(3), "{stdout}");
    assert!(stdout.contains("time limit"), "{stdout}");
    let (suites, _, _, errors) = junit_counts(&std::fs::read_to_string(&junit).expect("junit"));
    assert_eq!((suites, errors), (1, 1));
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn inspect_reads_a_running_devices_state_through_its_control_socket() {
    let _vm = serial();
    let out = results_dir("inspect");
    let mut child = spawn_inventory(&out);
    let dir = wait_for_private_dir(&mut child, &std::env::temp_dir(), |d| {
        d.join("cxl-hmu.ctl").exists()
    });
    let ask = |device: &str| {
        let o = Command::new(env!("CARGO_BIN_EXE_harness"))
            .args(["inspect", "--device", device, "--dir"])
            .arg(&dir)
            .output()
            .expect("run inspect");
        assert_eq!(
            o.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&o.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&o.stdout).expect("JSON")
    };
    let sdxi = ask("sdxi");
    assert_eq!(sdxi["device"], "sdxi");
    assert_eq!(sdxi["registers"]["MMIO_VERSION"], "0x10000");
    let hmu = ask("cxl-hmu");
    assert_eq!(hmu["device"], "cxl-hmu");
    assert_eq!(hmu["instances"].as_array().map(Vec::len), Some(2));
    assert_eq!(child.wait().expect("wait").code(), Some(0));
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn a_device_server_killed_mid_run_is_reported_and_everything_is_cleaned_up() {
    let _vm = serial();
    let out = results_dir("kill");
    let mut child = Command::new(env!("CARGO_BIN_EXE_harness"))
        .args([
            "run",
            "sdxi-copy",
            "--kill-after-boot",
            "sdxi-server",
            "--results",
        ])
        .arg(&out)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn harness");
    let pid = child.id();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut err)
        .expect("stderr");
    let st = child.wait().expect("wait");
    assert_eq!(st.code(), Some(3), "{err}");
    assert!(err.contains("sdxi-server exited early"), "{err}");
    assert!(err.contains("sdxi-server.log"), "log tails printed: {err}");
    assert_nothing_left(pid);
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn bringup_loads_user_modules_runs_the_script_and_returns_its_output_and_exit_code() {
    let _vm = serial();
    let out = results_dir("bringup");
    // A module of the guest kernel's own tree stands in for a user's driver.
    let (_, imgs) = harness::provision(
        &VmConfig::default(),
        &ToolPaths::default(),
        false,
        &mut images::Silent,
    )
    .unwrap_or_else(|e| panic!("{e:#?}"));
    let module = imgs
        .kernel
        .modules_dir
        .join("kernel/drivers/net/dummy.ko.xz");
    assert!(module.is_file(), "{}", module.display());
    let script = out.join("probe.sh");
    std::fs::write(
        &script,
        "test -d /sys/module/dummy && echo dummy-loaded\n\
         echo dummies=$(ls /sys/class/net | grep -c '^dummy')\n\
         echo iommu-groups=$(ls /sys/kernel/iommu_groups | wc -l)\n\
         grep -q '^vfio_pci ' /proc/modules && echo base-modules-loaded\n\
         dev=$(dirname $(grep -l 0x120100 /sys/bus/pci/devices/*/class | head -1))\n\
         echo driver=$(basename \"$(readlink $dev/driver)\")\n\
         echo 1 > $dev/enable\n\
         bar0=$(head -1 $dev/resource | cut -d' ' -f1)\n\
         echo VERSION=$(devmem $(( bar0 + 0x210 )) 32)\n\
         exit 5\n",
    )
    .expect("script");
    // The kernel given explicitly (here the provisioned one, through the same path a user's
    // own kernel takes), with its module tree for the test bed's own modules.
    let o = Command::new(env!("CARGO_BIN_EXE_harness"))
        .args(["bringup", "-q", "--iommu", "off", "--kernel-image"])
        .arg(&imgs.kernel.vmlinux)
        .arg("--modules-dir")
        .arg(&imgs.kernel.modules_dir)
        .arg("--module")
        .arg(format!("{}:numdummies=3", module.display()))
        .arg("--run")
        .arg(&script)
        .arg("--results")
        .arg(&out)
        .output()
        .expect("run harness bringup");
    let stdout = String::from_utf8_lossy(&o.stdout);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(
        o.status.code(),
        Some(5),
        "the script's exit code: {stdout}\n{stderr}"
    );
    assert!(stderr.contains("module ok dummy"), "{stderr}");
    // numdummies=3 made three interfaces; no IOMMU without --iommu on; the SDXi function is
    // unclaimed and its VERSION register reads 1.0 through /dev/mem.
    for line in [
        "dummy-loaded",
        "dummies=3",
        "base-modules-loaded",
        "iommu-groups=0",
        "driver=",
        "VERSION=0x00010000",
    ] {
        assert!(
            stdout.lines().any(|l| l.trim() == line),
            "{line} missing: {stdout}"
        );
    }
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn an_out_of_tree_sdxi_driver_is_built_loaded_and_reads_the_version_register() {
    let _vm = serial();
    let out = results_dir("build-module");
    let script = out.join("probe.sh");
    std::fs::write(
        &script,
        "echo version=$(cat /sys/module/sdxi_probe/parameters/version)\n\
         dev=$(dirname $(grep -l 0x120100 /sys/bus/pci/devices/*/class | head -1))\n\
         echo driver=$(basename \"$(readlink $dev/driver)\")\n",
    )
    .expect("script");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdxi_probe");
    let o = Command::new(env!("CARGO_BIN_EXE_harness"))
        .args(["bringup", "-q", "--build-module"])
        .arg(&src)
        .arg("--run")
        .arg(&script)
        .arg("--results")
        .arg(&out)
        .output()
        .expect("run harness bringup");
    let stdout = String::from_utf8_lossy(&o.stdout);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(stderr.contains("module ok sdxi_probe"), "{stderr}");
    // The driver bound to the SDXi function and read MMIO_VERSION = 1.0 (0x10000).
    assert!(
        stdout.lines().any(|l| l.trim() == "version=65536"),
        "{stdout}"
    );
    assert!(
        stdout.lines().any(|l| l.trim() == "driver=sdxi_probe"),
        "{stdout}"
    );
    let _ = std::fs::remove_dir_all(&out);
}

fn scenario_file(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/scenarios")
        .join(name)
        .to_string_lossy()
        .into_owned()
}

#[test]
fn every_engine_moves_the_same_pages_under_writers_and_dma_faults_fall_back_per_folio() {
    let _vm = serial();
    let (r, out) = run(
        &VmConfig::default(),
        &scenario_file("engines.toml"),
        "engines",
    );
    let names: Vec<&str> = r.migrate.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "cpu",
            "sdxi",
            "move_pages",
            "huge-auto",
            "dma-faults",
            "lost-interrupts",
            "auto-tune",
            "stopped-context"
        ]
    );
    let moved = |name: &str| -> Vec<u32> {
        let m = r.migrate.iter().find(|m| m.name == name).expect(name);
        let mut v: Vec<u32> = m.report.migrated.iter().map(|f| f.index).collect();
        v.sort_unstable();
        v
    };
    let all: Vec<u32> = (0..512).collect();
    for e in ["cpu", "sdxi", "move_pages"] {
        assert_eq!(moved(e), all, "{e} moved every page");
    }
    for m in &r.migrate {
        let v = &m.report.verify;
        assert_eq!(v.writes, v.counted_writes, "{}: no write lost", m.name);
        assert_eq!(m.host_verify.matched, m.report.promoted, "{}", m.name);
    }
    let faults = &r.migrate[4].report.verify;
    assert!(faults.dma_errors > 0 && faults.fallback_folios == faults.dma_errors);
    let lost = &r.migrate[5].report.verify;
    assert!(lost.lost_interrupts > 0, "{lost:?}");
    assert_eq!(
        lost.fallback_folios, 0,
        "a lost interrupt is not a failed copy"
    );
    let stopped = &r.migrate[7].report.verify;
    assert!(stopped.context_restarts >= 1, "{stopped:?}");
    assert_eq!(
        stopped.fallback_folios, 0,
        "what had not run went back to the engine"
    );
    let tuned = &r.migrate[6].report.tuned_sizes;
    assert!(
        tuned.iter().any(|&s| s > 64) && tuned.iter().all(|s| (64..=1024).contains(s)),
        "the tuner moved the batch size within 64..=1024: {tuned:?}"
    );
    std::fs::remove_dir_all(out).ok();
}

#[test]
fn damon_as_the_software_source_promotes_part_of_the_hot_set() {
    let _vm = serial();
    let (r, out) = run(&VmConfig::default(), &scenario_file("damon.toml"), "damon");
    let m = &r.migrate[0].report;
    assert!(m.source.records > 0, "DAMON reported regions");
    assert!(m.promoted > 0);
    std::fs::remove_dir_all(out).ok();
}

#[test]
fn the_copy_benchmark_runs_every_engine_folio_and_batch_size_verified() {
    let _vm = serial();
    let (r, out) = run(
        &VmConfig::default(),
        &scenario_file("bench-small.toml"),
        "bench",
    );
    let b = r.bench.as_ref().expect("bench report");
    assert_eq!(b.cases.len(), 18);
    for c in &b.cases {
        assert!(c.gb_per_s > 0.0 && c.mismatches == 0, "{c:?}");
        assert!(c.vs_move_pages.is_some(), "{c:?}");
    }
    std::fs::remove_dir_all(out).ok();
}

#[test]
fn bringup_console_is_an_interactive_shell_on_the_guest_console() {
    use std::io::{Read, Write};
    let _vm = serial();
    let mut child = Command::new(env!("CARGO_BIN_EXE_harness"))
        .args(["bringup", "--console", "-q"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("harness bringup --console");
    let mut out = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut b = [0u8; 4096];
        while let Ok(n) = out.read(&mut b) {
            if n == 0 || tx.send(b[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let wait_for = |what: &str, seen: &mut Vec<u8>| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        while !String::from_utf8_lossy(seen).contains(what) {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(b) => seen.extend(b),
                Err(_) => panic!("{what:?} never appeared: {}", String::from_utf8_lossy(seen)),
            }
        }
    };
    wait_for("~ # ", &mut seen);
    let mut stdin = child.stdin.take().expect("stdin");
    stdin
        .write_all(b"echo answer-$((6*7)); ls /sys/bus/pci/drivers/vfio-pci | grep -c :\n")
        .expect("type");
    wait_for("answer-42", &mut seen);
    stdin.write_all(b"exit\n").expect("type");
    let st = child.wait().expect("wait");
    let text = String::from_utf8_lossy(&seen);
    assert!(st.success(), "{text}");
    assert!(text.contains("devices are unclaimed"), "{text}");
}

#[test]
fn an_sdxi_server_killed_mid_migration_costs_no_page_and_no_write() {
    let _vm = serial();
    let (r, out) = run(
        &VmConfig::default(),
        &scenario_file("kill-sdxi.toml"),
        "kill-sdxi",
    );
    assert_eq!(r.teardown.killed.len(), 1, "{:?}", r.teardown);
    assert_eq!(r.teardown.killed[0].0, "sdxi-server");
    let m = &r.migrate[0].report;
    let offloaded = m.batches.iter().filter(|b| b.fallback_folios == 0).count();
    let fell_back = m.batches.iter().filter(|b| b.fallback_folios > 0).count();
    assert!(
        offloaded > 0 && fell_back > 0,
        "the kill landed mid-run: {offloaded} batches by the engine, {fell_back} by the CPU"
    );
    assert_eq!(m.verify.writes, m.verify.counted_writes);
    assert_eq!(r.migrate[0].host_verify.matched, 4096);
    std::fs::remove_dir_all(out).ok();
}

#[test]
fn an_llc_model_in_front_of_the_chmu_leaves_only_compulsory_misses() {
    let _vm = serial();
    // The chmu-hot workload's hot set (32 pages, of which the plugin samples about 8 lines
    // each) fits an 8 MiB cache: after the first round its accesses hit, and the CHMU, which
    // sees only misses, counts no more than the first round's compulsory misses (at most one
    // per line; without the model every sampled access counts, 300 rounds of them).
    let cfg = VmConfig {
        chmu_llc_kib: 8192,
        ..VmConfig::default()
    };
    let out = results_dir("llc");
    let r = harness::execute(
        &cfg,
        &ToolPaths::default(),
        "chmu-hot",
        Some(&out),
        Arc::new(AtomicBool::new(false)),
        &mut Reporter::new(false, false),
    )
    .unwrap_or_else(|e| panic!("{e:#?}"));
    let h = r.chmu_hot.as_ref().expect("chmu report");
    assert_eq!(h.hot_counts.len() as u64, h.hot_pages);
    assert!(
        h.hot_counts.iter().all(|&c| c <= 64),
        "cached hot pages count only compulsory misses: {:?}",
        h.hot_counts
    );
    let log = std::fs::read_to_string(r.run_dir.join("qemu.log")).unwrap_or_default();
    let line = log
        .lines()
        .find(|l| l.starts_with("chmu-tap: LLC model 8192 KiB"))
        .unwrap_or_else(|| panic!("no LLC line in qemu.log: {log}"));
    let n = |what: &str| -> u64 {
        line.split(", ")
            .find_map(|f| f.strip_suffix(what)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {what} in {line}"))
    };
    assert!(n(" hits") > n(" misses"), "{line}");
    std::fs::remove_dir_all(out).ok();
}
