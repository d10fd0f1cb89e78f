//! The trace file format and its replay: text lines `GPA KIND TIME [WEIGHT]` (GPA hex with
//! or without 0x, KIND `R` or `W`, TIME decimal, WEIGHT 1 to 4095, 1 when left out); `#`
//! starts a comment. A replay starts once the host has enabled an instance and follows the
//! trace's own times, so the resulting hotlist is reproducible.

use super::feed::Sink;
use crate::spec::record::{GpaAccess, ReqKind};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

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
}
