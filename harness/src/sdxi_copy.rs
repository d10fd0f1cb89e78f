//! The sdxi-copy step: the guest's userspace SDXi driver runs the Linux driver's init
//! sequence, starts a context through the admin ring, copies buffers of 1 B to 16 MiB through
//! the device at IOVAs mapped through the vIOMMU, and waits for the INTR descriptor's MSI-X
//! interrupt; the checks compare every byte and the device's own counters.

use crate::config::VmConfig;
use crate::scenario::{check, Check, Step};
use guest_agent::protocol::{Reply, Request};

/// The sdxi-copy step.
pub const STEP: Step = Step {
    what: "guest SDXi driver: init, context start, copies through the device",
    request: |_: &VmConfig| Request::SdxiCopy {
        sizes: SIZES.to_vec(),
    },
    accepts: |r| matches!(r, Reply::SdxiCopy(_)),
    timeout_mult: 1,
    check: |_, reply, counters| match reply {
        Reply::SdxiCopy(r) => checks(r, counters.get("sdxi")),
        _ => Vec::new(),
    },
};

/// Sizes the sdxi-copy scenario copies.
pub const SIZES: &[u64] = &[1, 4096, 65536, 2 << 20, 16 << 20];

/// Checks the guest's SDXi copy report and the device's own counters of the same run.
pub fn checks(
    report: &guest_agent::protocol::SdxiCopyReport,
    device_counters: Option<&serde_json::Value>,
) -> Vec<Check> {
    let mut out = Vec::new();
    for r in &report.results {
        out.push(check(
            &format!("sdxi.copy_{}", r.bytes),
            r.completed && !r.error_flag && r.mismatched_bytes == 0,
            format!(
                "{} bytes: completed {}, er {}, {} mismatched bytes, {} us doorbell to completion",
                r.bytes, r.completed, r.error_flag, r.mismatched_bytes, r.micros
            ),
        ));
    }
    out.push(check(
        "sdxi.msix_interrupt",
        report.interrupt_received,
        format!(
            "INTR -> MSI-X vector 1 after {} us",
            report.interrupt_micros
        ),
    ));
    let total: u64 = report.results.iter().map(|r| r.bytes).sum();
    let engine = device_counters.map(|c| &c["registers"]["engine"]);
    let copied = engine.and_then(|e| e["bytes_copied"].as_u64());
    let errors: u64 = engine.and_then(|e| e["errors"].as_object()).map_or(0, |m| {
        m.values().filter_map(serde_json::Value::as_u64).sum()
    });
    out.push(check(
        "sdxi.device_counters",
        copied == Some(total) && errors == 0 && report.errlog_entries == 0,
        format!(
            "device copied {copied:?} of {total} bytes, {errors} errors, {} error-log entries",
            report.errlog_entries
        ),
    ));
    out
}
