//! VM tests of `harness run dmatest`: the kernel's dmatest against the SDXi function through
//! the project's fixture dmaengine driver (harness/fixtures/sdxi-dma), through the CLI so the
//! exit code, the JUnit cases and the run directory's reports are what a user gets.
//!
//! The default suite runs the built-in scenario (2 channels x 2 threads, polled and
//! interrupt, 2000 x 4 KiB and 10 x 1 MiB, IOMMU on), the broken fixture (never_complete=1)
//! which must fail with the kernel log in the report, the user-driver path (--build-module,
//! --iommu off), and completions out of order with mapped doorbells. The full load
//! (harness/scenarios/dmatest-load-{polled,interrupt}.toml) is `#[ignore]`d:
//! cargo test -p harness --test dmatest -- --ignored

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn manifest(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

/// `harness run ARGS --results OUT`.
fn harness_run(args: &[&str], out: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_harness"))
        .arg("run")
        .args(args)
        .arg("--results")
        .arg(out)
        .output()
        .expect("run the harness")
}

fn text(o: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The one run directory under `out`.
fn run_dir(out: &Path) -> PathBuf {
    let dirs: Vec<PathBuf> = std::fs::read_dir(out)
        .expect("results")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("result.json").is_file())
        .collect();
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    dirs[0].clone()
}

fn result_json(dir: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dir.join("result.json")).expect("result.json"))
        .expect("json")
}

/// The check named `name` in a result.
fn check<'a>(r: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    r["checks"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == name))
        .unwrap_or_else(|| panic!("no check {name} in {r:#}"))
}

#[test]
fn the_fixture_passes_dmatest_polled_and_interrupt_with_the_iommu_on() {
    let _g = serial();
    let out = results_dir("dmatest");
    let junit = out.join("junit.xml");
    let o = harness_run(
        &["dmatest", "--junit", junit.to_str().expect("utf-8")],
        &out,
    );
    assert!(o.status.success(), "{}", text(&o));
    let x = std::fs::read_to_string(&junit).expect("junit");
    assert!(!x.contains("<failure"), "{x}");
    for mode in ["polled", "interrupt"] {
        for size in ["4KiB", "1MiB"] {
            for ch in ["dma0chan0", "dma0chan1"] {
                let case = format!("name=\"dmatest.{mode}.{size}.{ch}\"");
                assert!(x.contains(&case), "{case} in {x}");
            }
        }
    }
    let dir = run_dir(&out);
    let r = result_json(&dir);
    assert_eq!(r["passed"], true);
    let c = check(&r, "dmatest.interrupt.4KiB.dma0chan1");
    assert!(
        c["detail"]
            .as_str()
            .is_some_and(|d| d.starts_with("4000/4000 tests, 0 failures, 2 of 2 threads")),
        "{c}"
    );
    assert_eq!(check(&r, "dmatest.unload")["passed"], true);
    let qemu = std::fs::read_to_string(dir.join("qemu.cmdline")).expect("qemu.cmdline");
    assert!(qemu.contains("intel-iommu"), "{qemu}");
    let report = std::fs::read_to_string(dir.join("report.md")).expect("report.md");
    assert!(
        report.contains("| polled.4KiB | dma0chan0 | 4000 | 0 |"),
        "{report}"
    );
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn a_driver_that_never_signals_completions_fails_with_the_kernel_log() {
    let _g = serial();
    let out = results_dir("dmatest-broken");
    let file = manifest("tests/scenarios/dmatest-broken.toml");
    let o = harness_run(&[file.to_str().expect("utf-8")], &out);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("FAILED"), "{}", text(&o));
    let dir = run_dir(&out);
    let r = result_json(&dir);
    for mode in ["polled", "interrupt"] {
        for ch in ["dma0chan0", "dma0chan1"] {
            let c = check(&r, &format!("dmatest.{mode}.4KiB.{ch}"));
            assert_eq!(c["passed"], false, "{c}");
            let d = c["detail"].as_str().unwrap_or_default();
            assert!(d.contains("0/4 tests") || d.contains(", 4 failures"), "{d}");
            assert!(
                d.contains("test timed out"),
                "the kernel log is in the check: {d}"
            );
        }
    }
    // The hardware did the copies and the module still unloads: only completions are missing.
    assert_eq!(check(&r, "dmatest.unload")["passed"], true);
    let report = std::fs::read_to_string(dir.join("report.md")).expect("report.md");
    assert!(report.contains("## Kernel log of polled.4KiB"), "{report}");
    assert!(report.contains("dma_sync_wait: timeout!"), "{report}");
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn your_own_driver_tree_is_built_and_tested_without_the_iommu() {
    let _g = serial();
    let out = results_dir("dmatest-own");
    let file = manifest("tests/scenarios/dmatest-quick.toml");
    let tree = manifest("fixtures/sdxi-dma");
    let o = harness_run(
        &[
            file.to_str().expect("utf-8"),
            "--build-module",
            tree.to_str().expect("utf-8"),
            "--iommu",
            "off",
            // A module parameter from the kernel command line, as modprobe would apply it
            // (the file name's dashes stand for the module name's underscores).
            "--kernel-args",
            "tierbed-sdxi-dma.ring_entries=2048",
        ],
        &out,
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("with your driver"), "{}", text(&o));
    let dir = run_dir(&out);
    let log = std::fs::read_to_string(dir.join("dmatest-guest.log")).expect("guest log");
    assert!(
        log.contains("2048-entry rings"),
        "the parameter reached the module"
    );
    let qemu = std::fs::read_to_string(dir.join("qemu.cmdline")).expect("qemu.cmdline");
    assert!(!qemu.contains("intel-iommu"), "{qemu}");
    let r = result_json(&dir);
    assert_eq!(r["passed"], true);
    assert!(check(&r, "dmatest.modules")["detail"]
        .as_str()
        .is_some_and(|d| d.contains("ok tierbed_sdxi_dma") && d.contains("ok dmatest")));
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn the_fixture_retires_in_order_when_the_engine_completes_out_of_order() {
    let _g = serial();
    let out = results_dir("dmatest-ooo");
    let file = manifest("tests/scenarios/dmatest-out-of-order.toml");
    let o = harness_run(&[file.to_str().expect("utf-8")], &out);
    assert!(o.status.success(), "{}", text(&o));
    let r = result_json(&run_dir(&out));
    assert_eq!(r["passed"], true);
    // The doorbells were stores to the mapped page: none came through the socket.
    let sdxi = &r["teardown"]["counters"]["sdxi"]["registers"];
    assert_eq!(sdxi["doorbells"]["doorbells"], 0, "{sdxi}");
    assert_eq!(sdxi["engine"]["descriptors"]["copy"], 1600, "{sdxi}");
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn a_driver_for_a_scenario_that_loads_none_is_a_usage_error() {
    let out = results_dir("dmatest-usage");
    let o = harness_run(&["inventory", "--module", "/nonexistent/x.ko"], &out);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("apply to dmatest scenarios"),
        "{}",
        text(&o)
    );
    let _ = std::fs::remove_dir_all(&out);
}

/// The full load, each mode in its own VM and both at once (`--jobs 2`): 2 channels x 2
/// threads, 20000 x 4 KiB and 20000 x 1 MiB per thread, IOMMU on
/// (harness/scenarios/dmatest-load-{polled,interrupt}.toml; 82 min under TCG on 2 cores).
#[test]
#[ignore = "long run: cargo test -p harness --test dmatest -- --ignored"]
fn the_fixture_passes_the_dmatest_load() {
    let _g = serial();
    let out = results_dir("dmatest-load");
    let modes = ["polled", "interrupt"];
    let files = modes.map(|m| manifest(&format!("scenarios/dmatest-load-{m}.toml")));
    let mut args: Vec<&str> = files.iter().map(|f| f.to_str().expect("utf-8")).collect();
    args.extend(["--jobs", "2"]);
    let o = harness_run(&args, &out);
    println!("{}", text(&o));
    assert!(o.status.success(), "{}", text(&o));
    let results: Vec<serde_json::Value> = std::fs::read_dir(&out)
        .expect("results")
        .flatten()
        .filter(|e| e.path().join("result.json").is_file())
        .map(|e| result_json(&e.path()))
        .collect();
    assert_eq!(results.len(), 2, "one run directory per mode");
    for m in modes {
        let r = results
            .iter()
            .find(|r| r["checks"].to_string().contains(&format!("dmatest.{m}.")))
            .unwrap_or_else(|| panic!("no run of mode {m}"));
        for size in ["4KiB", "1MiB"] {
            for chan in ["dma0chan0", "dma0chan1"] {
                let c = check(r, &format!("dmatest.{m}.{size}.{chan}"));
                assert!(
                    c["detail"]
                        .as_str()
                        .is_some_and(|d| d.starts_with("40000/40000 tests, 0 failures")),
                    "{c}"
                );
            }
        }
        assert_eq!(check(r, "dmatest.kernel_log")["passed"], true, "{r:#}");
    }
    let _ = std::fs::remove_dir_all(&out);
}
