//! Where the CHMU's accesses come from: a stream of records on a unix socket (the QEMU TCG
//! plugin's feed; 16-byte records, accesses with their weights and clock ticks,
//! [`crate::spec::record`]), or a trace file ([`super::trace`]). Both carry guest-physical
//! addresses; the [`Sink`] keeps those inside the device's range (DVSEC Range 1), counts them
//! by DPA in the core ([`crate::core::hotness`]) and raises the vectors it returns. In host-
//! clock mode a thread also ends epochs on the host's clock.

use crate::core::hotness::Access;
use crate::spec::dvsec::MemRange;
pub use crate::spec::record::{GpaAccess, Record, RECORD_SIZE};
use crate::transport::device::HmuState;
use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

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

    /// Whether the host has enabled any instance since the device started.
    pub fn any_enabled(&self) -> bool {
        let s = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        s.block.counters().enables > 0
    }
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
