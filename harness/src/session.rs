//! One booted test bed serving several agent requests: what a scenario's single pass does not
//! give (several CHMU workloads and seeds in one boot, a benchmark that times the boot and then
//! a workload). Used by `harness bench-tap` and the CHMU sampling VM tests.

use crate::error::RunError;
use crate::tools::ToolPaths;
use crate::vm::{self, RunDir, Vm, VmError};
use guest_agent::protocol::{ChmuHotReport, Reply, Request};
use images::Progress;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

/// A booted test bed (guest agent ready) and its run directory.
pub struct Session {
    vm: Vm,
    run: RunDir,
    timeout: Duration,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("run", &self.run.dir)
            .field("boot_s", &self.boot_s())
            .finish()
    }
}

/// What a session left: the teardown report and the plugin's exit line (empty without it).
#[derive(Debug)]
pub struct Ended {
    pub teardown: vm::Teardown,
    pub plugin_line: String,
}

impl Session {
    /// Provisions (or reuses) the images and helpers, then boots `cfg` with its run directory
    /// under `dir`.
    pub fn start(
        cfg: &crate::config::VmConfig,
        paths: &ToolPaths,
        dir: &Path,
        interrupted: Arc<AtomicBool>,
        progress: &mut dyn Progress,
    ) -> Result<Self, RunError> {
        let (tools, imgs) = crate::provision::provision(cfg, paths, false, progress)?;
        let accel = vm::choose_accel(cfg.accel).map_err(RunError::Accel)?;
        let run = RunDir::create(dir).map_err(|e| RunError::Vm(e, dir.to_owned()))?;
        let vm = Vm::start_with(
            cfg,
            &vm::Boot::Agent,
            &imgs,
            &tools,
            accel.accel,
            &run,
            interrupted,
        )
        .map_err(|e| RunError::Vm(e, run.dir.clone()))?;
        Ok(Self {
            vm,
            run,
            timeout: Duration::from_secs(cfg.request_timeout_s),
        })
    }

    /// Seconds from QEMU's start to the agent's hello.
    pub fn boot_s(&self) -> f64 {
        self.vm.hello_after.as_secs_f64()
    }

    pub fn run_dir(&self) -> &Path {
        &self.run.dir
    }

    /// Runs a `Request::ChmuHot` and returns its report.
    pub fn chmu_hot(&mut self, req: Request) -> Result<ChmuHotReport, RunError> {
        match self.vm.request(req, self.timeout) {
            Ok(Reply::ChmuHot(r)) => Ok(r),
            Ok(other) => Err(self.error(VmError::Protocol(format!(
                "expected a CHMU report, got {other:?}"
            )))),
            Err(e) => Err(self.error(e)),
        }
    }

    fn error(&self, e: VmError) -> RunError {
        RunError::Vm(e, self.run.dir.clone())
    }

    /// Powers the guest off and stops the servers.
    pub fn shut_down(self) -> Result<Ended, RunError> {
        let dir = self.run.dir.clone();
        let teardown = self
            .vm
            .shutdown(self.timeout)
            .map_err(|e| RunError::Vm(e, dir.clone()))?;
        let plugin_line = std::fs::read_to_string(dir.join("qemu.log"))
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with("chmu-tap: instrumented"))
            .unwrap_or_default()
            .to_owned();
        Ok(Ended {
            teardown,
            plugin_line,
        })
    }
}
