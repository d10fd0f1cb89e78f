//! Faults timed by the device during a run: control requests sent to the SDXi server once
//! its engine has executed a number of COPY descriptors (a scenario file's `sdxi_control`,
//! a delayed process kill's `kill_after_sdxi_copies`).

use crate::{migration, vm};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// COPY descriptors the SDXi server behind control socket `ctl` has executed (None when it
/// does not answer).
fn sdxi_copies(ctl: &Path) -> Option<u64> {
    vm::control_request(
        ctl,
        &serde_json::json!({ "cmd": "counters" }),
        Duration::from_secs(5),
    )
    .ok()?["registers"]["engine"]["descriptors"]["copy"]
        .as_u64()
}

/// Polls until the SDXi server has executed `n` COPY descriptors: true when it did, false
/// when it stopped answering first.
pub(crate) fn wait_for_sdxi_copies(ctl: &Path, n: u64) -> bool {
    loop {
        match sdxi_copies(ctl) {
            Some(d) if d >= n => return true,
            Some(_) => std::thread::sleep(Duration::from_millis(10)),
            None => return false,
        }
    }
}

/// Sends `at.request` to the SDXi control socket `ctl` once the engine has executed
/// `at.after_copies` more COPY descriptors than now (from a thread; gives up when the server
/// stops answering).
pub(crate) fn control_after_copies(ctl: PathBuf, at: migration::ControlAt) {
    std::thread::spawn(move || {
        let Some(start) = sdxi_copies(&ctl) else {
            return;
        };
        if !wait_for_sdxi_copies(&ctl, start + at.after_copies) {
            return;
        }
        match vm::control_request(&ctl, &at.request, Duration::from_secs(5)) {
            Ok(a) => tracing::info!(request = %at.request, answer = %a, "SDXi control mid-run"),
            Err(e) => {
                tracing::warn!(request = %at.request, error = %e, "SDXi control mid-run failed")
            }
        }
    });
}
