//! Live guest memory: the DMA table ([`DmaTable`]) the transport changes on every DMA_MAP and
//! DMA_UNMAP, read by a device's workers (the SDXi engine's) on every access, with the ordering a guest relies
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
//!   big-reader lock (a reader counts itself in its thread's shard; a writer raises a flag and
//!   waits until every shard is empty), so an unmap returns (and the transport replies) only
//!   once every access that could still see the old range has finished.
//!
//! An engine pass ([`DmaSpace::pass`]) keeps its reader count from one access to the next, so an
//! access costs a flag check and a lookup; a writer's flag makes the pass's next access step
//! out, and the pass gives the lock up before it waits on anything (the transport, its end).
//! While it holds the lock, the pass also remembers the two extents it found last, so the
//! lookup is a compare for the ring, a COPY's source and destination and a CST_BLK that stay in
//! one or two extents; the memory is forgotten whenever the lock is taken anew (the table may
//! have changed meanwhile).
//!
//! Left out: waiting for a transport that is not a [`Quiesce`] (without one, e.g. in unit tests
//! and the fuzz targets, a pass sees the maps applied so far).

use crate::dma::{CopyOp, DmaMemory, Fault, Lookup, MapError, MapSpec};
use crate::dma_table::{DmaTable, Hint, Hinted, TableCounters, NO_HINT};
use std::cell::{Cell, UnsafeCell};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

/// Reader shards of the table lock (and of per-thread counters elsewhere, see [`thread_shard`]).
pub const SHARDS: usize = 8;
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

/// Readers inside one shard (its own cache line).
#[repr(align(128))]
#[derive(Debug, Default)]
struct Shard(AtomicU64);

thread_local! {
    /// This thread's shard.
    static SHARD: Cell<usize> = const { Cell::new(usize::MAX) };
    /// The pass this thread runs, if any (see [`PassState`]).
    static PASS: Cell<PassState> = const { Cell::new(PassState::NONE) };
}

/// A thread's pass: the space whose reader lock it keeps between accesses (its address),
/// whether it holds it now, and the extents its accesses found last ([`Hint`]: valid only
/// while `held` stays true, so it is cleared whenever the lock is taken anew).
#[derive(Clone, Copy)]
struct PassState {
    space: usize,
    held: bool,
    hint: Hint,
}

impl PassState {
    const NONE: Self = Self {
        space: 0,
        held: false,
        hint: NO_HINT,
    };
}

/// This thread's shard in `0..SHARDS`: handed out round-robin on a thread's first call and kept
/// for its life, so threads spread over the shards (the table's reader counts; the SDXi
/// engine's counters use it too).
pub fn thread_shard() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    SHARD.with(|s| {
        if s.get() == usize::MAX {
            s.set(NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS);
        }
        s.get()
    })
}

/// The live table.
#[derive(Debug, Default)]
pub struct DmaSpace {
    shards: [Shard; SHARDS],
    /// A writer wants the table: readers leave and wait.
    writing: AtomicBool,
    writer: Mutex<()>,
    table: UnsafeCell<DmaTable>,
    quiesce: RwLock<Option<Arc<dyn Quiesce>>>,
    prefault: AtomicBool,
    pub counters: SpaceCounters,
}

// SAFETY: `table` is only reached through `reading` (counted in a shard while `writing` is
// clear: no writer) and `writing` (the writer mutex held, `writing` set and every shard's count
// seen at 0: no reader, no other writer).
unsafe impl Sync for DmaSpace {}

fn lock_ok<T>(r: Result<T, std::sync::PoisonError<T>>) -> T {
    r.unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl DmaSpace {
    fn id(&self) -> usize {
        self as *const Self as usize
    }

    /// Enters this thread's shard as a reader (waiting while a writer works).
    fn enter(&self) {
        let s = &self.shards[thread_shard()].0;
        loop {
            s.fetch_add(1, Ordering::SeqCst);
            if !self.writing.load(Ordering::SeqCst) {
                return;
            }
            s.fetch_sub(1, Ordering::SeqCst);
            while self.writing.load(Ordering::Acquire) {
                std::thread::yield_now();
            }
        }
    }

    fn leave(&self) {
        self.shards[thread_shard()]
            .0
            .fetch_sub(1, Ordering::Release);
    }

    /// Runs `f` with the table read-locked. Inside [`Self::pass`] the lock is kept from one
    /// access to the next (one check of a flag per access) until a writer asks for it.
    #[inline]
    fn reading<R>(&self, f: impl FnOnce(&Hinted<'_>) -> R) -> R {
        let state = PASS.with(Cell::get);
        let in_pass = state.space == self.id();
        let mut holding = in_pass && state.held;
        if holding && self.writing.load(Ordering::Acquire) {
            // A writer waits: let it in, then come back as a new reader.
            self.leave();
            holding = false;
        }
        if !holding {
            self.enter();
        }
        let t = Hinted {
            // SAFETY: this thread is counted as a reader, so no writer holds the table
            // (`Sync`).
            table: unsafe { &*self.table.get() },
            // The lock held since the hint was taken: the table has not changed.
            hint: Cell::new(if holding { state.hint } else { NO_HINT }),
        };
        let r = f(&t);
        if in_pass {
            let hint = t.hint.get();
            PASS.with(|p| {
                p.set(PassState {
                    held: true,
                    hint,
                    ..state
                })
            });
        } else {
            self.leave();
        }
        r
    }

    /// Drops a reader lock kept by [`Self::pass`] (before waiting on anything).
    fn release_pass_lock(&self) {
        let state = PASS.with(Cell::get);
        if state.space == self.id() && state.held {
            self.leave();
            PASS.with(|p| {
                p.set(PassState {
                    held: false,
                    hint: NO_HINT,
                    ..state
                })
            });
        }
    }

    /// Runs a pass of the engine on this thread: its accesses keep the reader lock between
    /// them instead of taking it each time; a writer makes the next access give it up, and the
    /// pass's end releases it. The pass must not wait for the transport while holding it
    /// (faulting accesses release it first).
    pub fn pass<R>(&self, f: impl FnOnce() -> R) -> R {
        /// Releases the kept lock however the pass ends.
        struct End<'a>(&'a DmaSpace, PassState);
        impl Drop for End<'_> {
            fn drop(&mut self) {
                self.0.release_pass_lock();
                PASS.with(|p| p.set(self.1));
            }
        }
        let mine = PassState {
            space: self.id(),
            ..PassState::NONE
        };
        let _end = End(self, PASS.with(|p| p.replace(mine)));
        f()
    }

    fn writing<R>(&self, f: impl FnOnce(&mut DmaTable) -> R) -> R {
        let _w = lock_ok(self.writer.lock());
        self.release_pass_lock();
        self.writing.store(true, Ordering::SeqCst);
        for s in &self.shards {
            while s.0.load(Ordering::SeqCst) != 0 {
                std::thread::yield_now();
            }
        }
        // SAFETY: `writing` is set and no shard counts a reader: no reader and, with the
        // writer mutex, no other writer (see `Sync`).
        let r = f(unsafe { &mut *self.table.get() });
        self.writing.store(false, Ordering::Release);
        r
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
        self.reading(|t| t.table.counters())
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
            .reading(|t| t.table.pieces(iova, size))
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
    fn access<R>(&self, mut f: impl FnMut(&Hinted<'_>) -> Result<R, Fault>) -> Result<R, Fault> {
        match self.reading(&mut f) {
            Err(fault) => {
                let Some(q) = self.transport() else {
                    return Err(fault);
                };
                self.counters.fault_rechecks.fetch_add(1, Ordering::Relaxed);
                // Never wait for the transport with the table locked: it may be unmapping.
                self.release_pass_lock();
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
        self.access(|t| t.read_into(addr, buf))
    }
    fn write(&self, addr: u64, buf: &[u8]) -> Result<(), Fault> {
        self.access(|t| t.write_from(addr, buf))
    }
    fn copy(&self, dst: u64, src: u64, len: u64) -> Result<(), Fault> {
        self.access(|t| t.copy_range(dst, src, len))
    }
    /// One access for the whole batch (the read lock taken or checked once); a fault that a
    /// map still in flight explains is retried from the op that faulted, never re-running
    /// the ones done (a later op may have overwritten an earlier one's source).
    fn copy_all(&self, ops: &[CopyOp]) -> Result<(), (usize, Fault)> {
        let mut done = 0;
        self.access(|t| t.copy_ops(ops, &mut done))
            .map_err(|f| (done, f))
    }
    fn subtract_u64(&self, addr: u64, n: u64) -> Result<u64, Fault> {
        self.access(|t| t.subtract_at(addr, n))
    }
    fn or_u32(&self, addr: u64, bits: u32) -> Result<(), Fault> {
        self.access(|t| t.or_at(addr, bits))
    }
    fn step_out(&self) {
        self.release_pass_lock();
    }
    fn check(&self, addr: u64, len: u64, write: bool) -> Result<(), Fault> {
        self.access(|t| t.check_range(addr, len, write))
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
    fn a_batch_whose_map_lands_late_resumes_at_the_op_that_faulted() {
        // Op 1 overwrites op 0's source, op 2 needs a map still in flight: the retry after
        // the transport handled it must not run op 0 again (it would copy op 1's bytes).
        let f = Arc::new(memfd(0x10000));
        let space = Arc::new(DmaSpace::default());
        space.map(&spec(&f, 0, 0x8000)).expect("map");
        let (s2, f2) = (Arc::clone(&space), Arc::clone(&f));
        space.set_quiesce(Some(Arc::new(Late(Mutex::new(Some(Box::new(
            move || {
                s2.map(&MapSpec {
                    file_offset: 0x8000,
                    ..spec(&f2, 0x8000, 0x1000)
                })
                .expect("late map");
            },
        )))))));
        space.write(0x1000, &[1u8; 16]).expect("x");
        space.write(0x3000, &[3u8; 16]).expect("z");
        let op = |src, dst| CopyOp { dst, src, len: 16 };
        let ops = [op(0x1000, 0x2000), op(0x3000, 0x1000), op(0x1000, 0x8000)];
        space.pass(|| space.copy_all(&ops)).expect("all three");
        let mut b = [0u8; 16];
        space.read(0x2000, &mut b).expect("read");
        assert_eq!(b, [1u8; 16], "op 0 ran once, before op 1");
        space.read(0x8000, &mut b).expect("read");
        assert_eq!(b, [3u8; 16], "op 2 after op 1");
        assert_eq!(space.counters.faults_recovered.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_long_batch_across_two_extents_copies_every_op_in_order() {
        // Two maps of file bytes that are not contiguous: two extents, meeting at 0x4000.
        let f = memfd(0x10000);
        let space = DmaSpace::default();
        space.map(&spec(&f, 0, 0x4000)).expect("map");
        space
            .map(&MapSpec {
                file_offset: 0x8000,
                ..spec(&f, 0x4000, 0x4000)
            })
            .expect("map");
        // A chain longer than two host batches: each op copies what the one before wrote,
        // so an op run early or late breaks it. Op 127 writes across the extents' border and
        // op 128 reads across it (the slow path, in the middle of a batch).
        let slot = |i: u64| 0x40 + i * 0x80;
        let mut ops = vec![CopyOp {
            src: 0x7000,
            dst: slot(0),
            len: 0x80,
        }];
        ops.extend((1..150).map(|i| CopyOp {
            src: slot(i - 1),
            dst: slot(i),
            len: 0x80,
        }));
        let want: Vec<u8> = (0..0x80u8).map(|b| b ^ 0x5a).collect();
        space.write(0x7000, &want).expect("source");
        space.pass(|| space.copy_all(&ops)).expect("every op");
        for i in [0, 63, 64, 126, 127, 128, 149] {
            let mut b = vec![0u8; 0x80];
            space.read(slot(i), &mut b).expect("read");
            assert_eq!(b, want, "op {i}");
        }
        let mut b = [0u8; 0x80];
        std::os::unix::fs::FileExt::read_exact_at(&f, &mut b, 0x8000 + (slot(128) - 0x4000))
            .expect("file bytes");
        assert_eq!(
            &b[..],
            &want[..],
            "the second extent is the file's bytes at 0x8000"
        );
    }

    #[test]
    fn a_fault_inside_a_long_batch_stops_it_at_the_op_that_faulted() {
        let f = memfd(0x10000);
        let space = DmaSpace::default();
        space.map(&spec(&f, 0, 0x8000)).expect("map");
        space.write(0x7000, &[9u8; 0x40]).expect("source");
        // 100 copies of 0x40 bytes from 0x7000; op 70 writes to an unmapped page.
        let dst = |i: u64| if i == 70 { 0x9000 } else { i * 0x40 };
        let ops: Vec<CopyOp> = (0..100)
            .map(|i| CopyOp {
                src: 0x7000,
                dst: dst(i),
                len: 0x40,
            })
            .collect();
        let r = space.pass(|| space.copy_all(&ops));
        assert_eq!(r.map_err(|(i, f)| (i, f.addr)), Err((70, 0x9000)));
        let mut b = [0u8; 0x40];
        space.read(dst(69), &mut b).expect("read");
        assert_eq!(b, [9u8; 0x40], "op 69 ran");
        space.read(dst(71), &mut b).expect("read");
        assert_eq!(b, [0u8; 0x40], "op 71 did not");
    }

    #[test]
    fn a_pass_keeps_the_lock_between_accesses_until_an_unmap_asks_for_it() {
        let f = memfd(1 << 20);
        let space = Arc::new(DmaSpace::default());
        space.map(&spec(&f, 0, 1 << 20)).expect("map");
        let (tx, rx) = mpsc::channel();
        let s = Arc::clone(&space);
        let pass = std::thread::spawn(move || {
            s.pass(|| {
                let mut ok = 0u32;
                // Engine work between accesses; the lock stays with the pass meanwhile.
                while s.write(0x100, &[1]).is_ok() && ok < 100_000 {
                    ok += 1;
                    if ok == 10 {
                        let _ = tx.send(());
                    }
                    std::thread::sleep(Duration::from_micros(50));
                }
                ok
            })
        });
        rx.recv_timeout(Duration::from_secs(10))
            .expect("pass running");
        let t = std::time::Instant::now();
        space.unmap(0, 1 << 20);
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "the pass gave the lock up"
        );
        let accesses = pass.join().expect("pass");
        assert!(accesses < 100_000, "the pass saw the unmap");
        // The pass ended: its lock is released, so a later writer does not wait for it.
        space.map(&spec(&f, 0, 4096)).expect("map again");
        assert!(space.read(0, &mut [0u8; 1]).is_ok());
    }

    #[test]
    fn a_pass_sees_a_remap_of_the_range_it_has_been_reading() {
        // The pass remembers the extent it read last; a map replacing it (another file at the
        // same addresses) must be what its next accesses reach, never the old mapping.
        let (old, new) = (memfd(1 << 20), memfd(1 << 20));
        std::os::unix::fs::FileExt::write_all_at(&new, &[0xab], 0x100).expect("write");
        let space = Arc::new(DmaSpace::default());
        space.map(&spec(&old, 0, 1 << 20)).expect("map");
        let (tx, rx) = mpsc::channel();
        let s = Arc::clone(&space);
        let pass = std::thread::spawn(move || {
            s.pass(|| {
                let deadline = std::time::Instant::now() + Duration::from_secs(20);
                let mut b = [0u8; 1];
                let mut reads = 0u64;
                while std::time::Instant::now() < deadline {
                    s.read(0x100, &mut b).expect("mapped throughout");
                    reads += 1;
                    if reads == 10 {
                        let _ = tx.send(());
                    }
                    if b[0] == 0xab {
                        return Some(reads);
                    }
                    std::thread::yield_now();
                }
                None
            })
        });
        rx.recv_timeout(Duration::from_secs(10))
            .expect("pass running");
        space.map(&spec(&new, 0, 1 << 20)).expect("remap");
        let seen = pass.join().expect("pass");
        assert!(seen.is_some_and(|r| r > 10), "the pass reached the new map");
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
