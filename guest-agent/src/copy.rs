//! Copy engines behind one trait (the `migrator->offload_copy(dst, src, nr)` hook of the copy
//! offload series, "Enhancements to Page Migration with Multi-threading and Batch Offloading
//! to DMA", lore.kernel.org/r/20250319192211.10092-1-shivankg@amd.com): a batch of folios is
//! copied in one call, and the
//! engine says which folios it failed so the caller can fall back for exactly those.
//!
//! - [`CpuCopy`]: N threads (the series' mtcopy), optionally with non-temporal stores; the
//!   helper threads are started once and kept, as mtcopy's workqueue workers are.
//! - [`SdxiCopy`]: the SDXi engine (the series' dcbm over a dmaengine provider): the batch is
//!   split across channels (contexts); one COPY descriptor per folio, each with its own
//!   completion block, then one INTR per channel: one doorbell and one interrupt per batch and
//!   channel. A context that errs or times out is stopped before anything is retried, so a
//!   late DMA can never overwrite a folio after the fallback.

use crate::sdxi::{Function, SdxiError, Wait};
use crate::spec::EngineKind;
use device_sdxi::driver::{self, DriverMemory};
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};

mod workers;

/// Where the SDXi engine's batches spent the calling thread's wall time, summed over batches
/// (ns): the phases of a DMA offload as the copy-offload series' dcbm driver has them
/// (prepare descriptors, issue, wait for completion, check the status).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SdxiPhases {
    pub batches: u64,
    /// Arming the completion blocks and writing the descriptors to the ring.
    pub build_ns: u64,
    /// Doorbell writes.
    pub doorbell_ns: u64,
    /// From the last doorbell until the wait ended (interrupt, completion seen, stop).
    pub wait_ns: u64,
    /// Reading every completion block after the wait.
    pub check_ns: u64,
    /// Times a waiting thread woke up (interrupts, error-log interrupts, poll slices).
    pub wakeups: u64,
}

impl SdxiPhases {
    /// `self - earlier`, phase by phase (the phases of the batches in between).
    pub fn since(&self, earlier: &Self) -> Self {
        Self {
            batches: self.batches - earlier.batches,
            build_ns: self.build_ns - earlier.build_ns,
            doorbell_ns: self.doorbell_ns - earlier.doorbell_ns,
            wait_ns: self.wait_ns - earlier.wait_ns,
            check_ns: self.check_ns - earlier.check_ns,
            wakeups: self.wakeups - earlier.wakeups,
        }
    }
}

/// Nanoseconds since `t`.
fn ns_since(t: Instant) -> u64 {
    t.elapsed().as_nanos() as u64
}

/// One folio to copy: CPU addresses and device addresses of both slots.
#[derive(Clone, Copy, Debug)]
pub struct FolioCopy {
    pub src: *const u8,
    pub dst: *mut u8,
    pub src_iova: u64,
    pub dst_iova: u64,
    pub len: usize,
}

// SAFETY: the addresses point into pools shared by the process; a batch's folios are disjoint.
unsafe impl Send for FolioCopy {}
// SAFETY: as above.
unsafe impl Sync for FolioCopy {}

/// What a copy call did.
#[derive(Debug, Default)]
pub struct CopyOutcome {
    /// Indices (into the batch) of folios the engine did not copy correctly.
    pub failed: Vec<usize>,
    /// CPU time of helper threads (the caller measures its own thread).
    pub helper_cpu_ns: u64,
    pub dma_errors: u64,
    pub lost_interrupts: u64,
}

pub trait CopyEngine {
    fn kind(&self) -> EngineKind;
    fn copy(&mut self, batch: &[FolioCopy]) -> CopyOutcome;
}

/// Copies with plain or non-temporal stores on the calling thread.
pub fn copy_folio(f: &FolioCopy, nt: bool) {
    #[cfg(target_arch = "x86_64")]
    if nt
        && f.len.is_multiple_of(64)
        && (f.dst as usize).is_multiple_of(16)
        && (f.src as usize).is_multiple_of(16)
    {
        use std::arch::x86_64::{__m128i, _mm_load_si128, _mm_sfence, _mm_stream_si128};
        let (s, d) = (f.src.cast::<__m128i>(), f.dst.cast::<__m128i>());
        for i in 0..f.len / 16 {
            // SAFETY: SSE2 is baseline on x86_64; both slots are 16-byte aligned and len bytes.
            unsafe { _mm_stream_si128(d.add(i), _mm_load_si128(s.add(i))) };
        }
        // SAFETY: orders the streaming stores before anything that follows.
        unsafe { _mm_sfence() };
        return;
    }
    let _ = nt;
    // SAFETY: distinct pool slots of len bytes each.
    unsafe { std::ptr::copy_nonoverlapping(f.src, f.dst, f.len) };
}

/// Multi-threaded CPU copy: the caller and `threads - 1` helpers kept across batches
/// (`workers`).
#[derive(Debug)]
pub struct CpuCopy {
    pub threads: usize,
    pub nt: bool,
}

impl CopyEngine for CpuCopy {
    fn kind(&self) -> EngineKind {
        EngineKind::Cpu
    }

    fn copy(&mut self, batch: &[FolioCopy]) -> CopyOutcome {
        let threads = self.threads.clamp(1, batch.len().max(1));
        if threads == 1 {
            batch.iter().for_each(|f| copy_folio(f, self.nt));
            return CopyOutcome::default();
        }
        // Split by bytes (folios are equal-sized), the caller's thread taking a share too.
        let shares: Vec<&[FolioCopy]> = batch.chunks(batch.len().div_ceil(threads)).collect();
        let helper_cpu_ns = workers::run(&shares, self.nt);
        CopyOutcome {
            helper_cpu_ns,
            ..CopyOutcome::default()
        }
    }
}

/// The SDXi engine as a copy engine.
#[derive(Debug)]
pub struct SdxiCopy {
    pub f: Function,
    channels: u16,
    /// First CST_BLK of each channel's array (`max_batch` each).
    csbs: Vec<u64>,
    max_batch: usize,
    timeout: Duration,
    pub restarts: u64,
    /// Where the batches' time went.
    pub phases: SdxiPhases,
    /// A context could not be restarted: the engine is given up on and every later batch goes
    /// to the CPU at once (a dead or hung device must not cost a timeout per batch).
    pub failed_engine: bool,
}

impl SdxiCopy {
    /// `channels` contexts with rings big enough for `max_batch` folios and the INTR.
    pub fn new(
        bdf: &str,
        channels: u16,
        max_batch: usize,
        timeout: Duration,
    ) -> Result<Self, SdxiError> {
        let entries = (max_batch + 1).next_power_of_two().max(64) as u32;
        let mut f = Function::open(bdf, channels, entries, 0)?;
        let csbs = (0..channels)
            .map(|_| f.alloc_csbs(max_batch))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            f,
            channels,
            csbs,
            max_batch,
            timeout,
            restarts: 0,
            phases: SdxiPhases::default(),
            failed_engine: false,
        })
    }
}

/// How often a waiting driver looks at the completion blocks itself, in case the interrupt
/// was lost.
const POLL_SLICE: Duration = Duration::from_millis(20);

/// Submission rounds per channel and batch: after an error the context is restarted and the
/// descriptors that never ran are submitted again.
const MAX_ROUNDS: u32 = 64;

impl SdxiCopy {
    /// Waits until channel `c`'s `n` completion blocks are all written, the context stops or
    /// the deadline passes; true if the channel's interrupt came meanwhile. The interrupt only
    /// wakes the wait: an event left over from an earlier batch (its INTR landed after that
    /// batch was found complete by polling) must not be taken for this batch's. Every
    /// [`POLL_SLICE`] the context's status and the completion blocks are read, so a lost
    /// interrupt or a stop whose vector-0 interrupt was missed costs a slice, not the timeout.
    fn wait(&mut self, c: usize, n: usize, deadline: Instant) -> bool {
        let cxt = c as u16 + 1;
        let mut irq = false;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            self.phases.wakeups += 1;
            match self.f.wait_interrupt_or_error(cxt, left.min(POLL_SLICE)) {
                Wait::Interrupt => irq = true,
                Wait::Stopped => return irq,
                Wait::Timeout if left.is_zero() => return irq,
                Wait::Timeout => {}
            }
            let m = self.f.memory();
            if (0..n).all(|j| driver::csb_status(m, self.csbs[c] + 32 * j as u64).0 == 0) {
                return irq;
            }
            if !self.f.context_running(cxt) {
                return irq;
            }
        }
    }

    /// Writes COPY descriptors for `items` (indices into `batch`) with completion blocks
    /// `0..items.len()` of channel `c`, then an INTR, and rings the doorbell once.
    fn submit(&mut self, c: usize, batch: &[FolioCopy], items: &[usize]) {
        let t = Instant::now();
        let base = self.csbs[c];
        let mut arm = vec![0u8; 32 * items.len()];
        for b in arm.chunks_mut(32) {
            b[..8].copy_from_slice(&1u64.to_le_bytes());
        }
        self.f.memory().write_bytes(base, &arm);
        let mut descs: Vec<_> = items
            .iter()
            .enumerate()
            .map(|(j, &i)| {
                let fc = &batch[i];
                driver::copy(
                    fc.src_iova,
                    fc.dst_iova,
                    fc.len as u64,
                    Some(base + 32 * j as u64),
                    false,
                )
            })
            .collect();
        descs.push(driver::intr(0, true));
        let wi = self.f.enqueue(c as u16 + 1, &descs);
        let tb = Instant::now();
        self.f.ring(c as u16 + 1, wi);
        self.phases.build_ns += (tb - t).as_nanos() as u64;
        self.phases.doorbell_ns += ns_since(tb);
    }
}

impl CopyEngine for SdxiCopy {
    fn kind(&self) -> EngineKind {
        EngineKind::Sdxi
    }

    fn copy(&mut self, batch: &[FolioCopy]) -> CopyOutcome {
        let mut out = CopyOutcome::default();
        if self.failed_engine {
            out.failed.extend(0..batch.len());
            return out;
        }
        self.phases.batches += 1;
        let per = batch.len().div_ceil(usize::from(self.channels)).max(1);
        let mut pending: Vec<Vec<usize>> = Vec::new();
        for (c, start) in (0..batch.len()).step_by(per).enumerate() {
            let items: Vec<usize> = (start..(start + per).min(batch.len())).collect();
            if items.len() > self.max_batch {
                out.failed.extend(items);
                pending.push(Vec::new());
                continue;
            }
            self.submit(c, batch, &items);
            pending.push(items);
        }
        let deadline = Instant::now() + self.timeout;
        for (c, mut items) in pending.into_iter().enumerate() {
            let cxt = c as u16 + 1;
            let mut round = 0;
            while !items.is_empty() {
                round += 1;
                let tw = Instant::now();
                let irq = self.wait(c, items.len(), deadline);
                let tc = Instant::now();
                self.phases.wait_ns += (tc - tw).as_nanos() as u64;
                let mut not_run = Vec::new();
                let mut erred = false;
                for (j, &i) in items.iter().enumerate() {
                    // The wait returned with every block written, or with the context stopped
                    // or out of time: what is not written now never ran.
                    match driver::wait_csb(
                        self.f.memory(),
                        self.csbs[c] + 32 * j as u64,
                        Duration::ZERO,
                    ) {
                        Some(false) => {}
                        Some(true) => {
                            erred = true;
                            out.dma_errors += 1;
                            out.failed.push(i);
                        }
                        None => not_run.push(i),
                    }
                }
                self.phases.check_ns += ns_since(tc);
                if not_run.is_empty() && !erred {
                    // Everything completed; without the interrupt it was lost (or is late).
                    if !irq {
                        out.lost_interrupts += 1;
                    }
                    break;
                }
                // The context stopped (or hung): stop it for good before anything else touches
                // these folios, re-initialise it, and resubmit what never ran.
                self.restarts += 1;
                if let Err(e) = self.f.restart(cxt, self.timeout) {
                    eprintln!(
                        "guest-agent: SDXi context {cxt} could not be restarted ({e}); the CPU copies from now on"
                    );
                    self.failed_engine = true;
                    out.failed.extend(not_run);
                    break;
                }
                if round >= MAX_ROUNDS || Instant::now() >= deadline {
                    out.failed.extend(not_run);
                    break;
                }
                if !not_run.is_empty() {
                    self.submit(c, batch, &not_run);
                }
                items = not_run;
            }
        }
        out
    }
}
