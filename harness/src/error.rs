//! [`RunError`]: what stops a run before a verdict, and how the CLI maps it to an exit code.

use crate::{config, migration, scenario, tools, vm};
use std::path::PathBuf;

/// Errors that stop a run before a verdict (exit code 3), or an interruption (130).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error("building or locating helper programs")]
    Tools(#[from] tools::ToolsError),
    #[error("provisioning images")]
    Images(#[from] images::ImagesError),
    #[error("{0}")]
    Accel(String),
    #[error("running the VM (logs in {})", .1.display())]
    Vm(#[source] vm::VmError, PathBuf),
    #[error("unknown scenario {0:?}; built in: {list}", list = scenario::builtin_names().join(", "))]
    UnknownScenario(String),
    #[error(transparent)]
    Scenario(#[from] migration::ScenarioError),
    #[error(transparent)]
    Kernel(#[from] crate::kernel_loop::KernelError),
    #[error("writing results to {}", .0.display())]
    Results(PathBuf, #[source] std::io::Error),
}

impl RunError {
    pub fn interrupted(&self) -> bool {
        matches!(self, Self::Vm(vm::VmError::Interrupted, _))
    }

    /// The user asked for something impossible (bad configuration or scenario name).
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            Self::Config(_)
                | Self::UnknownScenario(_)
                | Self::Accel(_)
                | Self::Scenario(_)
                | Self::Kernel(_)
                | Self::Vm(vm::VmError::Refused { .. }, _)
        )
    }
}
