//! Where the CHMU's accesses come from: a trace file replayed by the server, or a stream of
//! records on a unix socket (the QEMU TCG plugin's feed). Both carry guest-physical addresses;
//! the device keeps those inside its range (DVSEC Range 1) and counts them by DPA.
//!
//! Socket feed format: 16-byte records, accesses and clock ticks ([`crate::record`]).
//! Trace file format: text lines `GPA KIND TIME` (GPA hex with or without 0x, KIND `R` or `W`,
//! TIME decimal); `#` starts a comment.

use crate::device::{HmuState, MemRange};
use crate::hotness::{Access, ReqKind};
pub use crate::record::{GpaAccess, Record, RECORD_SIZE};
use std::io::Read;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// A bad trace line.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("trace line {line}: {why}")]
pub struct TraceError {
    pub line: usize,
    pub why: String,
}

/// Parses a trace file's text.
pub fn parse_trace(text: &str) -> Result<Vec<GpaAccess>, TraceError> {
    let mut out = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let l = raw.split('#').next().unwrap_or("").trim();
        if l.is_empty() {
            continue;
        }
        let bad = |why: String| TraceError { line: n + 1, why };
        let f: Vec<&str> = l.split_whitespace().collect();
        let [a, k, t] = f[..] else {
            return Err(bad(format!("expected `GPA KIND TIME`, got {l:?}")));
        };
        let gpa = u64::from_str_radix(a.trim_start_matches("0x"), 16)
            .map_err(|e| bad(format!("address {a:?}: {e}")))?;
        let kind = match k {
            "R" | "r" => ReqKind::Read,
            "W" | "w" => ReqKind::Write,
            _ => return Err(bad(format!("kind {k:?} is not R or W"))),
        };
        let time = t.parse().map_err(|e| bad(format!("time {t:?}: {e}")))?;
        out.push(GpaAccess { gpa, kind, time });
    }
    Ok(out)
}

/// Feeds records into the shared CHMU state and raises the vectors it reports.
#[derive(Clone, Debug)]
pub struct Sink {
    pub state: Arc<Mutex<HmuState>>,
    pub range: MemRange,
    pub interrupts: device_sdxi::vfio_server::Interrupts,
    /// Host-clock mode: records are stamped with the time since this instant on arrival
    /// (their own stamps come from another process's clock).
    pub host_clock: Option<std::time::Instant>,
}

impl Sink {
    /// Feeds guest-physical accesses (those outside the range are counted and dropped).
    pub fn push(&self, recs: &[GpaAccess]) {
        if recs.is_empty() {
            return;
        }
        let end = self.range.hpa_base.saturating_add(self.range.size);
        let now = self.host_clock.map(|t| t.elapsed().as_nanos() as u64);
        let accesses: Vec<Access> = recs
            .iter()
            .map(|r| Access {
                // Out-of-range records map beyond the device, where Hotness counts them as seen.
                dpa: if (self.range.hpa_base..end).contains(&r.gpa) {
                    r.gpa - self.range.hpa_base
                } else {
                    u64::MAX
                },
                kind: r.kind,
                time: now.unwrap_or(r.time),
            })
            .collect();
        self.step(|block, hotness| hotness.feed(block, &accesses));
    }

    /// Feeds encoded records (whole ones) in order: runs of accesses, and a tick ends the
    /// epochs that are over at its time (on the host clock, at the time it arrives).
    pub fn push_records(&self, bytes: &[u8]) {
        let mut run = Vec::new();
        for r in bytes.chunks_exact(RECORD_SIZE) {
            let Ok(r) = r.try_into() else {
                continue;
            };
            match Record::decode(r) {
                Record::Access(a) => run.push(a),
                Record::Tick(t) => {
                    self.push(&run);
                    run.clear();
                    self.advance(self.host_clock.map_or(t, |s| s.elapsed().as_nanos() as u64));
                }
            }
        }
        self.push(&run);
    }

    /// Ends the epochs that are over at `now`.
    pub fn advance(&self, now: u64) {
        self.step(|block, hotness| hotness.advance(block, now));
    }

    /// Runs `f` on the locked state, then raises the vectors it returns (outside the lock).
    fn step(
        &self,
        f: impl FnOnce(&mut crate::chmu::ChmuBlock, &mut crate::hotness::Hotness) -> Vec<u16>,
    ) {
        let irqs = {
            let mut s = self
                .state
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let HmuState { block, hotness } = &mut *s;
            f(block, hotness)
        };
        for v in irqs {
            self.interrupts.trigger(v);
        }
    }

    fn any_enabled(&self) -> bool {
        let s = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        s.block.counters().enables > 0
    }
}

/// Replays a trace once the host has enabled an instance (so the replay is seen whenever the
/// driver starts); epochs follow the trace's own times, so a replay is reproducible.
pub fn spawn_trace_replay(path: &Path, sink: Sink, stop: Arc<AtomicBool>) -> std::io::Result<()> {
    let text = std::fs::read_to_string(path)?;
    let recs = parse_trace(&text).map_err(std::io::Error::other)?;
    std::thread::Builder::new()
        .name("chmu-trace".into())
        .spawn(move || {
            while !sink.any_enabled() {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            for chunk in recs.chunks(4096) {
                sink.push(chunk);
            }
            // Close the last epoch: the longest epoch the CHMU offers past the final record.
            let last = recs.last().map_or(0, |r| r.time);
            sink.advance(last.saturating_add(101_000_000_000));
            tracing::info!(records = recs.len(), "trace replayed");
        })?;
    Ok(())
}

/// Accepts feed connections on `listener` and streams their records into the sink.
pub fn spawn_feed_listener(
    listener: std::os::unix::net::UnixListener,
    sink: Sink,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("chmu-feed".into())
        .spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut c) = conn else {
                    continue;
                };
                let sink = sink.clone();
                let _ = std::thread::Builder::new()
                    .name("chmu-feed-conn".into())
                    .spawn(move || {
                        let mut buf = vec![0u8; RECORD_SIZE * 4096];
                        let mut have = 0usize;
                        loop {
                            match c.read(&mut buf[have..]) {
                                Ok(0) | Err(_) => break,
                                Ok(n) => have += n,
                            }
                            let whole = have / RECORD_SIZE * RECORD_SIZE;
                            sink.push_records(&buf[..whole]);
                            buf.copy_within(whole..have, 0);
                            have -= whole;
                        }
                    });
            }
        })?;
    Ok(())
}

/// Ends epochs on the host clock every millisecond (for a sink in host-clock mode).
pub fn spawn_host_clock(sink: Sink, stop: Arc<AtomicBool>) -> std::io::Result<()> {
    let Some(start) = sink.host_clock else {
        return Ok(());
    };
    std::thread::Builder::new()
        .name("chmu-clock".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(std::time::Duration::from_millis(1));
                sink.advance(start.elapsed().as_nanos() as u64);
            }
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_parsing_names_the_bad_line() {
        let ok =
            parse_trace("# hot page\n0x40001000 R 5\n40002000 w 6 # write\n\n").expect("valid");
        assert_eq!(ok.len(), 2);
        assert_eq!(
            ok[1],
            GpaAccess {
                gpa: 0x4000_2000,
                kind: ReqKind::Write,
                time: 6
            }
        );
        let e = parse_trace("0x1000 R 1\n0x2000 X 2\n").expect_err("bad kind");
        assert_eq!(e.line, 2);
        assert!(e.why.contains("\"X\""));
        assert_eq!(parse_trace("0x1000 R").expect_err("short").line, 1);
        assert!(parse_trace("zz R 1")
            .expect_err("hex")
            .why
            .contains("address"));
    }
}
