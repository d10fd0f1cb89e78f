//! What every run does before it boots: build or find the helper programs, provision the
//! images, and reclaim what runs killed before their cleanup left behind.

use crate::config::VmConfig;
use crate::error::RunError;
use crate::private_dir;
use crate::tools::{self, ToolPaths};
use images::Progress;

/// Provisions images (building the guest agent first).
pub fn provision(
    cfg: &VmConfig,
    paths: &ToolPaths,
    refresh: bool,
    progress: &mut dyn Progress,
) -> Result<(tools::Tools, images::Images), RunError> {
    cfg.validate()?;
    let tools = tools::ensure(paths, cfg.chmu_feed, progress)?;
    progress.step(&format!("helpers: {}", tools.origins.join("; ")));
    // The kernel under test and the guest files come from the boot options.
    let icfg = crate::kernel_loop::images_config(cfg, refresh);
    let imgs = images::provision(&icfg, &tools.agent, progress)?;
    Ok((tools, imgs))
}

/// Reclaims what runs killed before their cleanup (SIGKILL, a CI job's timeout) left behind:
/// their socket and guest-RAM directories and any process still using them; live runs are
/// not touched. Every run does this first; `harness clean` does only this.
pub fn reclaim_leftovers(progress: &mut dyn Progress) -> private_dir::Reclaimed {
    let r = private_dir::reclaim_stale();
    for (dir, strays) in &r.removed {
        progress.step(&format!(
            "removed {} (left by a run that was killed){}",
            dir.display(),
            if strays.is_empty() {
                String::new()
            } else {
                format!("; killed its stray processes {strays:?}")
            }
        ));
    }
    for (dir, e) in &r.failed {
        progress.step(&format!(
            "cannot remove {} (left by a killed run): {e}",
            dir.display()
        ));
    }
    r
}
