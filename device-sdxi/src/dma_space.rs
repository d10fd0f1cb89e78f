//! Live guest memory: the DMA table ([`DmaTable`]) the transport changes on every DMA_MAP and
//! DMA_UNMAP, read by the engine's workers on every access, with the ordering a guest relies
//! on (vfio-user: QEMU `docs/interop/vfio-user.rst`, DMA_MAP/DMA_UNMAP).
//!
//! - **A map is visible to every access that starts after it was applied**: accesses look the
//!   table up each time, never through a snapshot taken at the start of a pass.
//! - **A map the client sent before a doorbell is visible to the descriptors that doorbell
//!   runs**, also for a doorbell that does not travel on the socket (the direct-mapped page):
//!   before a pass, and again before an access is declared a fault, the space asks the
//!   transport ([`Quiesce`]) to wait until every message already in the socket has been
//!   handled; a faulting access is retried once if the table changed meanwhile.
//! - **No access reaches a range after its unmap was acknowledged**: the table is guarded by a
//!   big-reader lock (one reader lock per thread shard, all taken by a writer), so an unmap
//!   returns (and the transport replies) only once every access that could still see the old
//!   range has finished. An access holds its lock for one copy at most, never while waiting.
//!
//! The reader side costs one uncontended lock on a cache line of the thread's own shard.

use crate::dma::{DmaMemory, Fault, MapError, MapSpec};
use crate::dma_table::{DmaTable, TableCounters};
use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

/// Reader shards of the table lock.
const SHARDS: usize = 8;
/// Longest wait for the transport before a pass or before declaring a fault.
pub const QUIESCE_LIMIT: Duration = Duration::from_millis(50);
/// Maps at least this large are populated in the background while the function runs.
const PREFAULT_MIN: u64 = 2 << 20;

/// What the transport offers the space: a way to wait for messages in flight.
pub trait Quiesce: Send + Sync + std::fmt::Debug {
    /// Waits, at most `limit`, until every message the client had sent when this was called
    /// has been handled. Returns false if it could not tell (then the caller goes on).
    fn quiesce(&self, limit: Duration) -> bool;
    /// Cheap test: whether a DMA_MAP or DMA_UNMAP may still be unhandled.
    fn maybe_pending(&self) -> bool;
}

/// Counters of the space.
#[derive(Debug, Default)]
pub struct SpaceCounters {
    pub maps: AtomicU64,
    pub unmaps: AtomicU64,
    /// Passes that waited for the transport first.
    pub pass_quiesces: AtomicU64,
    /// Faulting accesses that waited for the transport and looked again.
    pub fault_rechecks: AtomicU64,
    /// ... and then succeeded (a map was still in flight).
    pub faults_recovered: AtomicU64,
}

#[repr(align(128))]
#[derive(Debug, Default)]
struct Shard(RwLock<()>);

fn shard() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SHARD: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
    }
    SHARD.with(|s| *s)
}

/// The live table.
#[derive(Debug, Default)]
pub struct DmaSpace {
    shards: [Shard; SHARDS],
    writer: Mutex<()>,
    table: UnsafeCell<DmaTable>,
    quiesce: RwLock<Option<Arc<dyn Quiesce>>>,
    prefault: AtomicBool,
    pub counters: SpaceCounters,
}

// SAFETY: `table` is only reached through `read` (a shard's read lock held: no writer) and
// `write` (the writer mutex and every shard's write lock held: no reader, no other writer).
unsafe impl Sync for DmaSpace {}

fn lock_ok<T>(r: Result<T, std::sync::PoisonError<T>>) -> T {
    r.unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl DmaSpace {
    #[inline]
    fn reading<R>(&self, f: impl FnOnce(&DmaTable) -> R) -> R {
        let _g = lock_ok(self.shards[shard()].0.read());
        // SAFETY: a shard's read lock is held, so no writer holds the table (see `Sync`).
        f(unsafe { &*self.table.get() })
    }

    fn writing<R>(&self, f: impl FnOnce(&mut DmaTable) -> R) -> R {
        let _w = lock_ok(self.writer.lock());
        let _all: Vec<_> = self.shards.iter().map(|s| lock_ok(s.0.write())).collect();
        // SAFETY: every shard's write lock is held: no reader and no other writer.
        f(unsafe { &mut *self.table.get() })
    }

    /// The transport this space waits for (None: no transport, e.g. tests).
    pub fn set_quiesce(&self, q: Option<Arc<dyn Quiesce>>) {
        *lock_ok(self.quiesce.write()) = q;
    }

    fn transport(&self) -> Option<Arc<dyn Quiesce>> {
        lock_ok(self.quiesce.read()).clone()
    }

    /// DMA_MAP: replaces whatever was mapped in the range.
    pub fn map(&self, s: &MapSpec<'_>) -> Result<(), MapError> {
        self.counters.maps.fetch_add(1, Ordering::Relaxed);
        self.writing(|t| t.map(s))?;
        if s.size >= PREFAULT_MIN && self.prefault.load(Ordering::Acquire) {
            self.populate(s.iova, s.size);
        }
        Ok(())
    }

    /// A DMA_MAP the server cannot back: the range faults from now on.
    pub fn map_unreachable(&self, iova: u64, size: u64) {
        self.counters.maps.fetch_add(1, Ordering::Relaxed);
        self.writing(|t| t.map_unreachable(iova, size));
    }

    /// DMA_UNMAP: returns once no access can reach the range any more.
    pub fn unmap(&self, iova: u64, size: u64) {
        self.counters.unmaps.fetch_add(1, Ordering::Relaxed);
        self.writing(|t| t.unmap(iova, size));
    }

    /// The client left: every map is gone.
    pub fn clear(&self) {
        self.writing(DmaTable::clear);
        self.prefault.store(false, Ordering::Release);
    }

    pub fn table_counters(&self) -> TableCounters {
        self.reading(DmaTable::counters)
    }

    /// Counters as JSON (table sizes and the ordering counters).
    pub fn counters_json(&self) -> serde_json::Value {
        let c = &self.counters;
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        serde_json::json!({
            "table": self.table_counters(),
            "maps": n(&c.maps),
            "unmaps": n(&c.unmaps),
            "pass_quiesces": n(&c.pass_quiesces),
            "fault_rechecks": n(&c.fault_rechecks),
            "faults_recovered": n(&c.faults_recovered),
        })
    }

    /// The function started running: populate the large maps now and any made from now on,
    /// in the background at the lowest CPU priority (not at DMA_MAP time: QEMU waits for the
    /// replies while the guest boots).
    pub fn start_prefault(&self) {
        if !self.prefault.swap(true, Ordering::AcqRel) {
            self.populate(0, u64::MAX);
        }
    }

    fn populate(&self, iova: u64, size: u64) {
        let pieces: Vec<_> = self
            .reading(|t| t.pieces(iova, size))
            .into_iter()
            .filter(|(_, _, len)| *len as u64 >= PREFAULT_MIN)
            .collect();
        if pieces.is_empty() {
            return;
        }
        let _ = std::thread::Builder::new()
            .name("dma-prefault".into())
            .spawn(move || {
                // SAFETY: setpriority on this thread only.
                unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 19) };
                for (h, off, len) in pieces {
                    h.populate(off, len);
                }
            });
    }

    /// Before a pass: if a map or unmap may still be in the socket, wait for it.
    pub fn settle(&self) {
        if let Some(q) = self.transport().filter(|q| q.maybe_pending()) {
            self.counters.pass_quiesces.fetch_add(1, Ordering::Relaxed);
            q.quiesce(QUIESCE_LIMIT);
        }
    }

    /// Runs `f` on the table; a fault is looked at again once the transport has handled what
    /// it had received (a failed access changed nothing, so it can run again).
    #[inline]
    fn access<R>(&self, mut f: impl FnMut(&DmaTable) -> Result<R, Fault>) -> Result<R, Fault> {
        match self.reading(&mut f) {
            Err(fault) => {
                let Some(q) = self.transport() else {
                    return Err(fault);
                };
                self.counters.fault_rechecks.fetch_add(1, Ordering::Relaxed);
                q.quiesce(QUIESCE_LIMIT);
                let r = self.reading(&mut f);
                if r.is_ok() {
                    self.counters
                        .faults_recovered
                        .fetch_add(1, Ordering::Relaxed);
                }
                r
            }
            ok => ok,
        }
    }
}

impl DmaMemory for DmaSpace {
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), Fault> {
        self.access(|t| t.read(addr, buf))
    }
    fn write(&self, addr: u64, buf: &[u8]) -> Result<(), Fault> {
        self.access(|t| t.write(addr, buf))
    }
    fn copy(&self, dst: u64, src: u64, len: u64) -> Result<(), Fault> {
        self.access(|t| t.copy(dst, src, len))
    }
    fn decrement_u64(&self, addr: u64) -> Result<u64, Fault> {
        self.access(|t| t.decrement_u64(addr))
    }
    fn or_u32(&self, addr: u64, bits: u32) -> Result<(), Fault> {
        self.access(|t| t.or_u32(addr, bits))
    }
    fn check(&self, addr: u64, len: u64, write: bool) -> Result<(), Fault> {
        self.access(|t| t.check(addr, len, write))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    fn memfd(size: u64) -> std::fs::File {
        crate::dma::memfd(c"ram", size).expect("memfd")
    }

    fn spec(file: &std::fs::File, iova: u64, size: u64) -> MapSpec<'_> {
        MapSpec {
            iova,
            size,
            file,
            file_offset: 0,
            writable: true,
        }
    }

    /// A transport whose "pending" map lands when the space waits for it.
    struct Late(Mutex<Option<Box<dyn FnOnce() + Send>>>);

    impl std::fmt::Debug for Late {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("Late")
        }
    }

    impl Quiesce for Late {
        fn quiesce(&self, _limit: Duration) -> bool {
            if let Some(f) = lock_ok(self.0.lock()).take() {
                f();
            }
            true
        }
        fn maybe_pending(&self) -> bool {
            lock_ok(self.0.lock()).is_some()
        }
    }

    #[test]
    fn a_fault_is_retried_after_the_transport_handled_a_pending_map() {
        let f = Arc::new(memfd(0x10000));
        let space = Arc::new(DmaSpace::default());
        let (s2, f2) = (Arc::clone(&space), Arc::clone(&f));
        space.set_quiesce(Some(Arc::new(Late(Mutex::new(Some(Box::new(
            move || {
                s2.map(&spec(&f2, 0x5000, 0x1000)).expect("map");
            },
        )))))));
        space
            .write(0x5000, b"ok")
            .expect("the pending map lands, then the write");
        assert_eq!(space.counters.faults_recovered.load(Ordering::Relaxed), 1);
        assert!(space.write(0x9000, b"no").is_err(), "still a fault");
        assert_eq!(space.counters.fault_rechecks.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn unmap_waits_for_an_access_in_flight() {
        let f = memfd(64 << 20);
        let space = Arc::new(DmaSpace::default());
        space.map(&spec(&f, 0, 64 << 20)).expect("map");
        let (tx, rx) = mpsc::channel();
        let s = Arc::clone(&space);
        let copier = std::thread::spawn(move || {
            let mut n = 0;
            while n < 1000 && s.copy(32 << 20, 0, 32 << 20).is_ok() {
                n += 1;
            }
            let _ = tx.send(n);
        });
        std::thread::sleep(Duration::from_millis(5));
        space.unmap(0, 64 << 20);
        // Once unmap returned, nothing reaches the range.
        assert!(space.read(0, &mut [0u8; 1]).is_err());
        let copies = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("copier done");
        assert!(copies < 1000, "the copier saw the unmap");
        let _ = copier.join();
        assert_eq!(space.table_counters().extents, 0);
    }
}
