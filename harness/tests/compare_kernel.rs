//! VM test: `harness run compare-kernel` runs the kernel's own tiering (NUMA balancing in
//! memory-tiering mode, on 4 KiB pages and with transparent huge pages) and the project's
//! migrator (CHMU + SDXi) on the same seeded workload in one boot, passes every check of
//! every run, and its report shows the node-0 share curves on one chart and the runs side
//! by side.

mod common;
use common::*;
use std::path::{Path, PathBuf};

/// The run directory the harness made under `out`.
fn run_dir(out: &Path) -> PathBuf {
    std::fs::read_dir(out)
        .expect("results dir")
        .flatten()
        .map(|e| e.path())
        .find(|p| p.join("result.json").is_file())
        .unwrap_or_else(|| panic!("no run directory with result.json under {}", out.display()))
}

#[test]
fn the_kernels_tiering_and_the_migrator_run_side_by_side_with_both_curves() {
    let _vm = serial();
    let out = results_dir("compare-kernel");
    let stdout = output_of_success(
        std::process::Command::new(env!("CARGO_BIN_EXE_harness"))
            .args(["run", "compare-kernel", "--results"])
            .arg(&out),
    );
    let dir = run_dir(&out);
    let result: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("result.json")).expect("result.json"))
            .expect("parse result.json");
    let runs = result["migrate"].as_array().expect("migrate runs");
    let names: Vec<&str> = runs.iter().filter_map(|m| m["name"].as_str()).collect();
    assert_eq!(names, ["kernel", "kernel-thp", "migrator"], "{stdout}");
    for m in runs {
        let curve = m["report"]["node0_fraction"].as_array().expect("series");
        assert!(curve.len() >= 4, "{}: a curve, not a point", m["name"]);
        assert!(m["report"]["promoted"].as_u64() > Some(0), "{}", m["name"]);
    }
    for (run, pages) in [
        (&runs[0], "4 KiB pages"),
        (&runs[1], "transparent huge pages"),
    ] {
        let kernel = &run["report"]["kernel"];
        let settings = kernel["settings"].to_string();
        assert!(
            settings.contains("numa_balancing\",\"2\""),
            "memory-tiering mode was set: {settings}"
        );
        assert!(settings.contains(pages), "{settings}");
        assert!(kernel["pages_promoted"].as_u64() > Some(0), "{kernel}");
    }
    assert!(runs[2]["report"]["kernel"].is_null());
    // Both curves on one chart, and the table with both runs.
    let chart = std::fs::read_to_string(dir.join("node0-share-all-runs.svg")).expect("chart");
    assert_eq!(chart.matches("<polyline").count(), 3, "three curves");
    assert!(chart.contains("kernel") && chart.contains("migrator"));
    let md = std::fs::read_to_string(dir.join("report.md")).expect("report.md");
    let table = md
        .split("## Runs side by side")
        .nth(1)
        .expect("side-by-side table");
    for run in [
        "| kernel | kernel NUMA balancing",
        "| kernel-thp | kernel NUMA balancing",
    ] {
        assert!(table.contains(run), "{table}");
    }
    assert!(
        table.contains("| migrator | migrator: chmu source"),
        "{table}"
    );
    assert!(md.contains("node0-share-all-runs.svg"));
    std::fs::remove_dir_all(out).ok();
}
