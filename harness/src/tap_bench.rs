//! `harness bench-tap`: what the chmu-tap plugin costs, tap off against tap on in one run,
//! alternating boots: the boot to the agent's hello, and a memory-bound loop on node 1 timed
//! by the guest (one load instruction gathering every line of 16 MiB, 20 passes).

use crate::config::VmConfig;
use crate::error::RunError;
use crate::private_dir;
use crate::session::Session;
use crate::tools::ToolPaths;
use guest_agent::protocol::{HotLoop, Request};
use images::Progress;
use serde::Serialize;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

/// Plugin overhead: the same boot and loop with the chmu-tap plugin off and on.
#[derive(Clone, Debug, Serialize)]
pub struct TapBench {
    pub sample: u64,
    pub boot_off_s: Vec<f64>,
    pub boot_on_s: Vec<f64>,
    pub median_off_s: f64,
    pub median_on_s: f64,
    pub ratio: f64,
    /// The memory-bound loop on node 1 (guest-timed seconds per boot), its medians and ratio.
    pub loop_off_s: Vec<f64>,
    pub loop_on_s: Vec<f64>,
    pub loop_median_off_s: f64,
    pub loop_median_on_s: f64,
    pub loop_ratio: f64,
    /// Loads the loop makes.
    pub loop_loads: u64,
    /// From the plugin's exit line: records sent per second of guest run time.
    pub records_per_s: f64,
    pub plugin_line: String,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// Pages and passes of the memory-bound loop.
const LOOP_PAGES: u32 = 4096;
const LOOP_PASSES: u32 = 20;

/// The memory-bound loop on node 1: one load instruction over every line of 16 MiB, 20
/// passes, with the CHMU counting but nothing ever over its threshold, and no draining while
/// it runs (only the loop is timed, as `workload_micros`).
pub fn memory_loop_request() -> Request {
    Request::ChmuHot {
        hot_pages: LOOP_PAGES,
        cold_pages: 0,
        rounds: LOOP_PASSES,
        threshold: 60_000,
        epoch_scale: 1,
        epoch_mult: 1,
        seed: 1,
        reproducible: true,
        workload: HotLoop::IndexedLoad,
    }
}

/// Records sent, from the plugin's exit line ("..., N records and T clock ticks sent").
fn records_sent(line: &str) -> Option<f64> {
    line.split(", ")
        .find_map(|p| p.split_once(" records"))
        .and_then(|(n, _)| n.split_whitespace().next()?.parse().ok())
}

/// Boots `reps` times without and with the tap (alternating); each boot then runs the
/// memory-bound loop.
pub fn bench_tap(
    cfg: &VmConfig,
    paths: &ToolPaths,
    reps: usize,
    interrupted: Arc<AtomicBool>,
    progress: &mut dyn Progress,
) -> Result<TapBench, RunError> {
    let (mut off, mut on, mut loop_off, mut loop_on) = (vec![], vec![], vec![], vec![]);
    let mut line = String::new();
    let mut rate = Vec::new();
    let scratch = private_dir::PrivateDir::create(&std::env::temp_dir(), private_dir::BENCH)
        .map_err(|e| RunError::Results(std::env::temp_dir(), e))?;
    for i in 0..reps * 2 {
        let c = VmConfig {
            chmu_feed: i % 2 == 1,
            ..cfg.clone()
        };
        progress.step(&format!(
            "boot {}/{} with the tap {}, then the memory-bound loop",
            i + 1,
            reps * 2,
            if c.chmu_feed { "on" } else { "off" }
        ));
        let t = std::time::Instant::now();
        let mut s = Session::start(
            &c,
            paths,
            scratch.path(),
            Arc::clone(&interrupted),
            &mut images::Silent,
        )?;
        let boot = s.boot_s();
        let r = s.chmu_hot(memory_loop_request())?;
        let ended = s.shut_down()?;
        let looped = r.workload_micros as f64 / 1e6;
        if c.chmu_feed {
            on.push(boot);
            loop_on.push(looped);
            if let Some(n) = records_sent(&ended.plugin_line) {
                rate.push(n / t.elapsed().as_secs_f64().max(1e-9));
            }
            line = ended.plugin_line;
        } else {
            off.push(boot);
            loop_off.push(looped);
        }
    }
    drop(scratch);
    let (mo, mn) = (median(off.clone()), median(on.clone()));
    let (lo, ln) = (median(loop_off.clone()), median(loop_on.clone()));
    Ok(TapBench {
        sample: cfg.chmu_sample,
        boot_off_s: off,
        boot_on_s: on,
        median_off_s: mo,
        median_on_s: mn,
        ratio: mn / mo.max(1e-9),
        loop_off_s: loop_off,
        loop_on_s: loop_on,
        loop_median_off_s: lo,
        loop_median_on_s: ln,
        loop_ratio: ln / lo.max(1e-9),
        loop_loads: u64::from(LOOP_PAGES) * 64 * u64::from(LOOP_PASSES),
        records_per_s: median(rate),
        plugin_line: line,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plugin_line_gives_the_records_sent() {
        let l = "chmu-tap: instrumented 5 instructions, 800 accesses, 100 sampled (1 in 8), 40 in range, 40 records and 7 clock ticks sent";
        assert_eq!(records_sent(l), Some(40.0));
        assert_eq!(records_sent("chmu-tap: nothing"), None);
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        match memory_loop_request() {
            Request::ChmuHot {
                workload,
                reproducible,
                ..
            } => assert!(workload == HotLoop::IndexedLoad && reproducible),
            other => panic!("{other:?}"),
        }
    }
}
