//! Where the CHMU's accesses come from: a trace file replayed by the server, or a stream of
//! records on a unix socket (the QEMU TCG plugin's feed). Both carry guest-physical addresses;
//! the device keeps those inside its range (DVSEC Range 1) and counts them by DPA.
//!
//! Socket feed format: 16-byte records, accesses (each with its weight: how many guest
//! accesses it stands for) and clock ticks ([`crate::spec::record`]).
//! Trace file format: text lines `GPA KIND TIME [WEIGHT]` (GPA hex with or without 0x, KIND
//! `R` or `W`, TIME decimal, WEIGHT 1 to 4095, 1 when left out); `#` starts a comment.

use crate::core::hotness::{Access, ReqKind};
use crate::spec::dvsec::MemRange;
pub use crate::spec::record::{GpaAccess, Record, RECORD_SIZE};
use crate::transport::device::HmuState;
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
        let (a, k, t, w) = match f[..] {
            [a, k, t] => (a, k, t, None),
            [a, k, t, w] => (a, k, t, Some(w)),
            _ => return Err(bad(format!("expected `GPA KIND TIME [WEIGHT]`, got {l:?}"))),
        };
        let gpa = u64::from_str_radix(a.trim_start_matches("0x"), 16)
            .map_err(|e| bad(format!("address {a:?}: {e}")))?;
        let kind = match k {
            "R" | "r" => ReqKind::Read,
            "W" | "w" => ReqKind::Write,
            _ => return Err(bad(format!("kind {k:?} is not R or W"))),
        };
        let time = t.parse().map_err(|e| bad(format!("time {t:?}: {e}")))?;
        let weight = match w {
            None => 1,
            Some(w) => w
                .parse()
                .ok()
                .filter(|w| (1..=crate::spec::record::MAX_WEIGHT).contains(w))
                .ok_or_else(|| {
                    bad(format!(
                        "weight {w:?}: not a number from 1 to {}",
                        crate::spec::record::MAX_WEIGHT
                    ))
                })?,
        };
        out.push(GpaAccess {
            gpa,
            kind,
            time,
            weight,
        });
    }
    Ok(out)
}

/// Feeds records into the shared CHMU state and raises the vectors it reports.
#[derive(Clone, Debug)]
pub struct Sink {
    pub state: Arc<Mutex<HmuState>>,
    pub range: MemRange,
    pub interrupts: vfio_device::interrupts::Interrupts,
    /// Host-clock mode: records are stamped with the time since this instant on arrival
    /// (their own stamps come from another process's clock).
    pub host_clock: Option<std::time::Instant>,
}

impl Sink {
    /// Feeds guest-physical accesses with their weights (those outside the range are counted
    /// and dropped).
    pub fn push(&self, recs: &[GpaAccess]) {
        if recs.is_empty() {
            return;
        }
        let end = self.range.hpa_base.saturating_add(self.range.size);
        let now = self.host_clock.map(|t| t.elapsed().as_nanos() as u64);
        let accesses = recs.iter().map(|r| {
            let a = Access {
                // Out-of-range records map beyond the device, where Hotness counts them as seen.
                dpa: if (self.range.hpa_base..end).contains(&r.gpa) {
                    r.gpa - self.range.hpa_base
                } else {
                    u64::MAX
                },
                kind: r.kind,
                time: now.unwrap_or(r.time),
            };
            (a, r.weight)
        });
        self.step(|block, hotness| hotness.feed_weighted(block, accesses));
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
        f: impl FnOnce(
            &mut crate::core::chmu::ChmuBlock,
            &mut crate::core::hotness::Hotness,
        ) -> Vec<u16>,
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
        let ok = parse_trace("# hot page\n0x40001000 R 5\n40002000 w 6 # write\n0x3000 R 7 8\n")
            .expect("valid");
        assert_eq!(ok.len(), 3);
        assert_eq!(
            ok[1],
            GpaAccess {
                gpa: 0x4000_2000,
                kind: ReqKind::Write,
                time: 6,
                weight: 1,
            }
        );
        assert_eq!(ok[2].weight, 8, "a sampled access's weight");
        for bad in ["0x1 R 1 0", "0x1 R 1 4096", "0x1 R 1 x", "0x1 R 1 2 3"] {
            let e = parse_trace(bad).expect_err(bad);
            assert_eq!(e.line, 1, "{bad}");
        }
        assert!(parse_trace("0x1 R 1 0")
            .expect_err("zero")
            .why
            .contains("weight"));
        let e = parse_trace("0x1000 R 1\n0x2000 X 2\n").expect_err("bad kind");
        assert_eq!(e.line, 2);
        assert!(e.why.contains("\"X\""));
        assert_eq!(parse_trace("0x1000 R").expect_err("short").line, 1);
        assert!(parse_trace("zz R 1")
            .expect_err("hex")
            .why
            .contains("address"));
    }

    /// A block with instance 0 enabled: 4 KiB units, 100 us epochs, threshold 3, down-sampling
    /// 2^`ds`.
    fn enabled(ds: u8) -> (crate::core::chmu::ChmuBlock, crate::core::hotness::Hotness) {
        use crate::spec::regs::*;
        let mut b = crate::core::chmu::ChmuBlock::new(crate::spec::layout::ChmuConfig::default());
        let base = b.config().instance_base(0);
        let cfg1 = ChmuCfg1::new()
            .with_unit_size(12)
            .with_downsampling(ds)
            .with_epoch_scale(1)
            .with_epoch_mult(1);
        b.mmio_write(base + CHMU_CFG1, &u64::from(cfg1).to_le_bytes());
        b.mmio_write(base + CHMU_RANGE_BITMAP, &[0xff]);
        let cfg0 = ChmuCfg0::new()
            .with_m2s_req_type(6)
            .with_threshold(3)
            .with_enable(true);
        b.mmio_write(base + CHMU_CFG0, &u64::from(cfg0).to_le_bytes());
        (b, crate::core::hotness::Hotness::new(2, 1 << 30))
    }

    /// The hotlist of instance 0 as (unit, count).
    fn entries(b: &crate::core::chmu::ChmuBlock) -> Vec<(u64, u64)> {
        let (head, tail) = b.head_tail(0);
        let w = crate::spec::regs::ChmuStatus::from(
            b.get(b.config().instance_base(0) + crate::spec::regs::CHMU_STATUS),
        )
        .counter_width();
        (head..tail)
            .map(|s| crate::core::hotness::decode_entry(b.read_hotlist(0, s), w))
            .collect()
    }

    #[test]
    fn a_weighted_record_counts_as_its_weight_in_accesses() {
        use crate::core::hotness::Access;
        let at = |unit: u64, time: u64| Access {
            dpa: unit << 12,
            kind: ReqKind::Read,
            time,
        };
        let (mut b, mut h) = enabled(0);
        // Unit 1: one sampled access of weight 8 (8 accesses, over the threshold of 3); unit
        // 2: three unsampled ones (not over it); unit 3: weights 2 + 2 (4, over it).
        let recs = [
            (at(1, 10), 8),
            (at(2, 11), 1),
            (at(2, 12), 1),
            (at(2, 13), 1),
            (at(3, 14), 2),
            (at(3, 15), 2),
        ];
        h.feed_weighted(&mut b, recs);
        h.advance(&mut b, 10 + 100_000);
        assert_eq!(entries(&b), vec![(1, 8), (3, 4)]);
        assert_eq!(h.counters.accesses_in_range, 15);
        // Down-sampling by 4 keeps one in four of the accesses a record stands for: weight 8
        // gives 2, weight 16 gives 4 (over 3).
        let (mut b, mut h) = enabled(2);
        h.feed_weighted(&mut b, [(at(1, 10), 8), (at(2, 11), 16)]);
        h.advance(&mut b, 10 + 100_000);
        assert_eq!(entries(&b), vec![(2, 4)]);
        assert_eq!(h.counters.sampled, 6);
    }
}
