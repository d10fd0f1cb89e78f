//! VM tests of the CHMU's access feed (the chmu-tap plugin's sampling): a hot set read through
//! one load instruction, one `rep movsb`, a pointer chase, and 64 load sites is found in full
//! at the default sampling (one in 8 accesses) for three seeds, no cold page is reported, and
//! the hotlist's counts estimate the workload's true access counts. Also the cost of the tap
//! on a memory-bound loop on node 1 (tap off vs on, in one run).
//!
//! One boot runs every workload with every seed (one request each): the seed picks the hot
//! set and the order of a gather or chase; the tap's samples differ from request to request
//! (its generator runs on), as they would with another `--seed`.

mod common;
use common::*;
use guest_agent::protocol::{ChmuHotReport, HotLoop};
use harness::config::VmConfig;
use harness::session::Session;
use harness::{Reporter, ToolPaths};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

/// Boots `cfg` for several requests, results under `out`.
fn boot(cfg: &VmConfig, out: &std::path::Path) -> Session {
    Session::start(
        cfg,
        &ToolPaths::default(),
        out,
        Arc::new(AtomicBool::new(false)),
        &mut Reporter::new(false, true),
    )
    .unwrap_or_else(|e| panic!("{e:#?}"))
}

/// Summed hotlist counts of each hot page over its true access count.
fn count_ratios(r: &ChmuHotReport) -> Vec<f64> {
    r.hot_counts
        .iter()
        .map(|&c| c as f64 / r.accesses_per_hot_page.max(1) as f64)
        .collect()
}

#[test]
fn single_site_hot_loops_are_found_in_full_for_three_seeds_with_counts_near_the_truth() {
    let _vm = serial();
    let kinds = [
        HotLoop::IndexedLoad,
        HotLoop::RepMovsb,
        HotLoop::PointerChase,
        HotLoop::Sites64,
    ];
    let mut table = Vec::new();
    let cfg = VmConfig {
        chmu_feed: true,
        ..VmConfig::default()
    };
    let out = results_dir("sampling");
    let mut bed = boot(&cfg, &out);
    for seed in [1u64, 2, 3] {
        for kind in kinds {
            let r = bed
                .chmu_hot(harness::chmu_hot::request_for(&cfg, kind, seed))
                .unwrap_or_else(|e| panic!("{e:#?}"));
            let recall = r.hot_found as f64 / r.hot_pages.max(1) as f64;
            let ratios = count_ratios(&r);
            let mean = ratios.iter().sum::<f64>() / ratios.len().max(1) as f64;
            let worst = ratios
                .iter()
                .map(|x| (x - 1.0).abs())
                .fold(0.0f64, f64::max);
            // Units reported outside the workload's pages (the guest kernel's own accesses).
            let outside = r.distinct_units - r.hot_found - r.cold_reported;
            table.push(format!(
                "seed {seed} {:<13} recall {recall:.2}, cold {} of {}, count/true mean {mean:.3} (worst page off by {:.1} %), {outside} units outside the workload",
                kind.name(),
                r.cold_reported,
                r.cold_pages,
                worst * 100.0
            ));
            assert_eq!(r.workload, kind);
            assert_eq!(r.hot_pages, 32, "{r:?}");
            assert!(recall >= 0.95, "{kind:?} seed {seed}: {r:?}");
            assert_eq!(r.cold_reported, 0, "{kind:?} seed {seed}: {r:?}");
            // Averaged over epochs (summed over the run), every hot page's count is within
            // 30 % of the reads the workload made of it.
            assert!(worst <= 0.30, "{kind:?} seed {seed}: {ratios:?}");
        }
    }
    let ended = bed.shut_down().expect("shutdown");
    assert!(ended.teardown.stray_processes.is_empty(), "{ended:?}");
    table.push(ended.plugin_line);
    std::fs::remove_dir_all(&out).ok();
    println!("{}", table.join("\n"));
}

/// Runs a memory-bound loop on node 1 (one load instruction over 16 MiB, 20 passes; the
/// loop `harness bench-tap` times) with the tap off and on, in one run.
#[test]
fn a_memory_bound_loop_on_node1_slows_down_by_less_than_three_times_with_the_tap() {
    let _vm = serial();
    let mut rows = Vec::new();
    for feed in [false, true] {
        let cfg = VmConfig {
            chmu_feed: feed,
            ..VmConfig::default()
        };
        let out = results_dir(&format!("memloop-{feed}"));
        let mut bed = boot(&cfg, &out);
        let boot_s = bed.boot_s();
        let r = bed
            .chmu_hot(harness::tap_bench::memory_loop_request())
            .unwrap_or_else(|e| panic!("{e:#?}"));
        assert_eq!(r.pages_on_node1, r.hot_pages, "{r:?}");
        bed.shut_down().expect("shutdown");
        std::fs::remove_dir_all(&out).ok();
        rows.push((boot_s, r.workload_micros));
    }
    let ratio = rows[1].1 as f64 / rows[0].1.max(1) as f64;
    println!(
        "memory-bound loop on node 1: tap off {:.1} ms, on {:.1} ms: {ratio:.2}x (boots {:.1} s, {:.1} s)",
        rows[0].1 as f64 / 1e3,
        rows[1].1 as f64 / 1e3,
        rows[0].0,
        rows[1].0
    );
    assert!(ratio < 3.0, "{rows:?}");
}

/// `harness bringup --chmu-feed`: a user's own script (here the agent's CHMU driver run as a
/// one-off command, with one load instruction over the hot pages) sees a working hotlist.
#[test]
fn bringup_with_the_chmu_feed_gives_a_users_workload_a_working_hotlist() {
    let _vm = serial();
    let out = results_dir("bringup-feed");
    let cfg = VmConfig::default();
    let req = harness::chmu_hot::request_for(&cfg, HotLoop::IndexedLoad, 5);
    let json = serde_json::to_string(&req).expect("request");
    let script = out.join("hot.sh");
    std::fs::write(&script, format!("/bin/guest-agent --request '{json}'\n")).expect("script");
    let stdout = output_of_success(
        std::process::Command::new(env!("CARGO_BIN_EXE_harness"))
            .args([
                "bringup",
                "-q",
                "--chmu-feed",
                "--chmu-sample",
                "8",
                "--seed",
                "5",
            ])
            .arg("--run")
            .arg(&script)
            .arg("--results")
            .arg(&out),
    );
    let line = stdout
        .lines()
        .find(|l| l.contains("\"chmu_hot\""))
        .unwrap_or_else(|| panic!("no CHMU report: {stdout}"));
    let v: serde_json::Value = serde_json::from_str(line).expect("outcome JSON");
    let r = &v["ok"];
    assert_eq!(r["hot_found"], r["hot_pages"], "{r}");
    assert_eq!(r["cold_reported"], 0, "{r}");
    let cmdline = std::fs::read_dir(&out)
        .expect("results")
        .filter_map(Result::ok)
        .find_map(|d| std::fs::read_to_string(d.path().join("qemu.cmdline")).ok())
        .expect("qemu.cmdline");
    assert!(
        cmdline.contains("libchmu_tap.so") && cmdline.contains("sample=8,seed=5"),
        "{cmdline}"
    );
    std::fs::remove_dir_all(&out).ok();
}
