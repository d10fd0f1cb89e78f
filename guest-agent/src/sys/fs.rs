//! mount(2), for the one filesystem the agent may have to mount itself: debugfs, where the
//! kernel keeps NUMA balancing's scan and hot-threshold knobs
//! (`/sys/kernel/debug/sched/numa_balancing/`).

use super::last_err;
use std::io::Result;

/// Mounts debugfs at `/sys/kernel/debug` (a no-op error if it is already there).
pub fn mount_debugfs() -> Result<()> {
    let (src, dir, kind) = (c"debugfs", c"/sys/kernel/debug", c"debugfs");
    // SAFETY: NUL-terminated strings that outlive the call; no mount data.
    let r = unsafe {
        libc::mount(
            src.as_ptr(),
            dir.as_ptr(),
            kind.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if r != 0 {
        return Err(last_err());
    }
    Ok(())
}
