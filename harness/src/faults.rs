//! Faults during a run: a process killed after boot (`--kill-after-boot`, now or later), and
//! control requests sent to the SDXi server once its engine has executed a number of COPY
//! descriptors (a scenario file's `sdxi_control`, a delayed kill's `kill_after_sdxi_copies`).

use crate::config::VmConfig;
use crate::migration;
use crate::vm::{self, Vm};
use images::Progress;
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
fn wait_for_sdxi_copies(ctl: &Path, n: u64) -> bool {
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

/// A process fault (`--kill-after-boot`): kills that child of `vm` now, or, with a delay or a
/// COPY count, from a thread later on; a later kill is a fault the run goes on without.
pub fn plan_kill(cfg: &VmConfig, vm: &mut Vm, progress: &mut dyn Progress) {
    let Some(k) = &cfg.kill_after_boot else {
        return;
    };
    if cfg.kill_delay_ms == 0 && cfg.kill_after_sdxi_copies.is_none() {
        progress.step(&format!("process fault: killing {k}"));
        vm.kill_child(k);
        return;
    }
    let Some(pid) = vm.pid_of(k) else {
        return;
    };
    // A planned, later kill is a fault the run goes on without, where the guest survives.
    vm.tolerate_death(k);
    progress.step(&format!(
        "process fault: {k} will be killed after {} ms{}",
        cfg.kill_delay_ms,
        cfg.kill_after_sdxi_copies
            .map_or(String::new(), |n| format!(" and {n} SDXi COPY descriptors"))
    ));
    let delay = Duration::from_millis(cfg.kill_delay_ms);
    let (name, copies, ctl) = (
        k.clone(),
        cfg.kill_after_sdxi_copies,
        vm.control_path("sdxi"),
    );
    std::thread::spawn(move || {
        std::thread::sleep(delay);
        if let Some(n) = copies {
            // Either way (reached, or the server no longer answers) the kill goes ahead.
            let _ = wait_for_sdxi_copies(&ctl, n);
        }
        tracing::warn!(name, "killing on request (process fault, delayed)");
        // SAFETY: kill(2) of the child's process group (it leads its own group).
        unsafe { libc::kill(-(pid as libc::pid_t), libc::SIGKILL) };
    });
}
