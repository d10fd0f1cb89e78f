//! The mover stage of the migrator: one batch of folios from one node to the other (node 1 ->
//! 0 promotes, 0 -> 1 demotes, [`Mover::migrate_to`]), in the four steps of the kernel's batch move (`migrate_pages_batch()` with the batch-copy path of the
//! copy-offload series: unmap all, copy all in one call, then remap all; Linux
//! `mm/migrate.c`):
//!
//! 1. [`Mover::protect`]: write-protect every folio of the batch (userfaultfd), so writers
//!    wait instead of racing the copy (the kernel unmaps and writers fault);
//! 2. `Mover::copy_all`: one call of the chosen [`CopyEngine`] for the whole batch (SDXi or
//!    CPU threads; folios the engine failed are copied again by the CPU), or `move_pages(2)`
//!    for the baseline;
//! 3. `Mover::verify`: every destination's checksum against its source's, taken before the
//!    copy; a mismatch is copied again, and a folio that still differs stays where it was;
//! 4. `Mover::remap`: map the destination node's slots over the moved folios and release the
//!    rest.
//!
//! [`BatchMover`] is the promotion side's interface to the pipeline ([`crate::pipeline`]), so
//! the pipeline is tested with a scripted mover; demotion calls [`Mover::migrate_to`] through
//! [`crate::demote::TierMover`].

use crate::arena::{runs, thread_cpu_ns, Arena, Backing};
use crate::copy::{copy_folio, CopyEngine, CpuCopy, FolioCopy, SdxiCopy};
use crate::cost_model::{copy_threads, CostModel, IdleMeter};

/// Most CPU copy threads the automatic choice uses.
const MAX_AUTO_THREADS: u32 = 8;
use crate::migrate::MigrateError;
use crate::spec::{folio_checksum, BatchStat, EngineKind, EngineSpec, Policy, VerifyStats};
use crate::verify::VerifyMode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

/// Distance between the IOVAs of a mover's node-1 pool and its node-0 pool, and between the
/// pools of the copy benchmark's cases.
pub const IOVA_STEP: u64 = 0x10_0000_0000;

/// The mover stage as the pipeline sees it.
pub trait BatchMover {
    /// Promotes `folios` (all on node 1) as one batch that starts at `start_ms` of the run;
    /// returns the batch's statistics (0 `folios`: nothing moved, and the pipeline records no
    /// batch) and the folios that stayed on node 1 for the promoter to requeue. A mover may
    /// keep folios back itself ([`crate::demote::PromoteSide`] holds ping-pong candidates);
    /// those are in neither.
    fn move_batch(
        &mut self,
        folios: Vec<u32>,
        start_ms: u64,
    ) -> Result<(BatchStat, Vec<u32>), MigrateError>;
}

/// Moves batches of folios of one arena between its two nodes.
#[derive(Debug)]
pub struct Mover<'a> {
    pub arena: Arc<Arena>,
    policy: Policy,
    cpu: CpuCopy,
    sdxi: Option<&'a mut SdxiCopy>,
    /// IOVAs of the node-1 and node-0 pools.
    iova: (u64, u64),
    pub verify: VerifyStats,
    pub move_failed: u64,
    /// Which copies step 3 checks.
    pub verify_mode: VerifyMode,
    /// With `cpu_threads = 0`: the CPUs left idle, to pick each batch's copy threads.
    idle: Option<IdleMeter>,
    /// The `auto` policy's model of each engine's measured cost ([`crate::cost_model`]).
    pub model: CostModel,
}

/// What the copy step did: which folios moved, helper threads' CPU time, folios the CPU
/// copied after the engine failed them.
struct Copied {
    /// CPU copy threads used (0: the engine copied).
    threads: u32,
    moved: Vec<bool>,
    helper_cpu_ns: u64,
    fallback: u32,
}

impl<'a> Mover<'a> {
    /// Maps the arena's pools for the SDXi engine at `iova_base` when there is one.
    pub fn new(
        arena: Arc<Arena>,
        engine: &EngineSpec,
        sdxi: Option<&'a mut SdxiCopy>,
        iova_base: u64,
    ) -> Result<Self, MigrateError> {
        let iova = (iova_base, iova_base + IOVA_STEP / 2);
        if let (Some(s), Backing::Pools { pool1, pool0 }) = (sdxi.as_deref(), &arena.backing) {
            s.f.map(pool1.view as u64, iova.0, pool1.len as u64)?;
            s.f.map(pool0.view as u64, iova.1, pool0.len as u64)?;
        }
        Ok(Self {
            arena,
            policy: engine.policy,
            cpu: CpuCopy {
                threads: engine.cpu_threads as usize,
                nt: engine.nt_stores,
            },
            sdxi,
            iova,
            verify: VerifyStats::default(),
            move_failed: 0,
            verify_mode: VerifyMode::Full,
            idle: (engine.cpu_threads == 0).then(IdleMeter::default),
            model: CostModel::new(&[EngineKind::Sdxi, EngineKind::Cpu]),
        })
    }

    /// The engine for a batch of `n` folios: `auto` asks the cost model (measured costs of
    /// this run, no thresholds).
    fn choose(&mut self, n: usize) -> EngineKind {
        match self.policy {
            Policy::Cpu => EngineKind::Cpu,
            Policy::MovePages => EngineKind::MovePages,
            Policy::Sdxi if self.sdxi.is_some() => EngineKind::Sdxi,
            Policy::Auto if self.sdxi.is_some() => self.model.choose(n as u32),
            _ => EngineKind::Cpu,
        }
    }

    /// The copies of a batch towards node `to` (0: promotion, 1: demotion).
    fn copies(&self, folios: &[u32], to: u8) -> Vec<FolioCopy> {
        let a = &self.arena;
        let Backing::Pools { pool1, pool0 } = &a.backing else {
            return Vec::new();
        };
        folios
            .iter()
            .map(|&f| {
                let off = f as usize * a.folio;
                let (s1, s0) = (
                    pool1.slot(f as usize, a.folio),
                    pool0.slot(f as usize, a.folio),
                );
                let (i1, i0) = (self.iova.0 + off as u64, self.iova.1 + off as u64);
                let (src, dst, src_iova, dst_iova) = if to == 0 {
                    (s1, s0, i1, i0)
                } else {
                    (s0, s1, i0, i1)
                };
                FolioCopy {
                    src,
                    dst,
                    src_iova,
                    dst_iova,
                    len: a.folio,
                }
            })
            .collect()
    }

    /// Step 1 (and the release of step 4): write-protects (`on`) or releases `folios`.
    pub fn protect(&self, folios: &[u32], on: bool) -> Result<(), MigrateError> {
        let a = &self.arena;
        for &(s, c) in &runs(folios) {
            a.uffd.protect(a.at(s), c * a.folio, on)?;
        }
        Ok(())
    }

    /// Step 2: copies the batch in one call of `engine`; the CPU copies what the engine
    /// failed.
    fn copy_all(
        &mut self,
        engine: EngineKind,
        folios: &[u32],
        copies: &[FolioCopy],
        to: u8,
    ) -> Result<Copied, MigrateError> {
        let mut done = Copied {
            threads: 0,
            moved: vec![true; folios.len()],
            helper_cpu_ns: 0,
            fallback: 0,
        };
        if engine == EngineKind::MovePages {
            let pages: Vec<*mut u8> = folios.iter().map(|&f| self.arena.at(f as usize)).collect();
            let st = self.arena.move_pages(&pages, Some(i32::from(to)))?;
            for (m, s) in done.moved.iter_mut().zip(&st) {
                *m = *s == i32::from(to);
            }
            return Ok(done);
        }
        let out = match (engine, self.sdxi.as_deref_mut()) {
            (EngineKind::Sdxi, Some(s)) => s.copy(copies),
            _ => {
                if let Some(m) = self.idle.as_mut() {
                    let bytes = (copies.len() * self.arena.folio) as u64;
                    self.cpu.threads =
                        copy_threads(bytes, m.idle_tenths(), MAX_AUTO_THREADS) as usize;
                }
                done.threads = self.cpu.threads as u32;
                self.cpu.copy(copies)
            }
        };
        done.helper_cpu_ns = out.helper_cpu_ns;
        self.verify.dma_errors += out.dma_errors;
        self.verify.lost_interrupts += out.lost_interrupts;
        if let Some(s) = self.sdxi.as_deref() {
            self.verify.context_restarts = s.restarts;
        }
        for &i in &out.failed {
            copy_folio(&copies[i], self.cpu.nt);
        }
        done.fallback = out.failed.len() as u32;
        Ok(done)
    }

    /// The bytes of folio `i` of the batch: its pool slot (source or destination), or the
    /// arena's mapping when the kernel moves it.
    fn folio_bytes(&self, folios: &[u32], copies: &[FolioCopy], i: usize, dst: bool) -> &[u8] {
        match copies.get(i) {
            // SAFETY: a pool slot of `len` bytes, mapped for the arena's lifetime.
            Some(c) => unsafe {
                std::slice::from_raw_parts(if dst { c.dst.cast_const() } else { c.src }, c.len)
            },
            None => self.arena.bytes(folios[i] as usize),
        }
    }

    /// Step 3: checks every checked folio (the verification mode's choice) against its
    /// checksum from before the copy; a mismatch is copied again by the CPU, and a folio that
    /// still differs stays.
    fn verify(
        &mut self,
        folios: &[u32],
        copies: &[FolioCopy],
        before: &[Option<u64>],
        moved: &mut [bool],
    ) {
        for i in 0..folios.len() {
            let Some(before) = before[i] else {
                continue;
            };
            if !moved[i] {
                continue;
            }
            self.verify.copies_checked += 1;
            if folio_checksum(self.folio_bytes(folios, copies, i, true)) != before {
                self.verify.copy_mismatches += 1;
                if let Some(c) = copies.get(i) {
                    copy_folio(c, false);
                    moved[i] = folio_checksum(self.folio_bytes(folios, copies, i, true)) == before;
                }
            }
        }
    }

    /// Step 4: remaps the folios that moved onto node `to` and releases the ones that
    /// stayed; returns when the first folio was usable again (us since `t0`).
    fn remap(
        &self,
        done: &[u32],
        stayed: &[u32],
        t0: Instant,
        to: u8,
    ) -> Result<u64, MigrateError> {
        let a = &self.arena;
        let mut first_folio_us = 0;
        for &(s, c) in &runs(done) {
            match a.backing {
                Backing::Pools { .. } => a.remap_to(to, s, c)?,
                Backing::Anon => {
                    for i in s..s + c {
                        a.node[i].store(to, Ordering::Release);
                    }
                    a.uffd.protect(a.at(s), c * a.folio, false)?;
                }
            }
            if first_folio_us == 0 {
                first_folio_us = t0.elapsed().as_micros() as u64;
            }
        }
        self.protect(stayed, false)?;
        a.uffd.drain();
        Ok(first_folio_us)
    }

    /// Migrates `folios` (all on node 1) to node 0 as one batch: the four steps above.
    pub fn migrate(
        &mut self,
        folios: Vec<u32>,
        start_ms: u64,
    ) -> Result<(BatchStat, Vec<u32>), MigrateError> {
        self.migrate_to(folios, start_ms, 0)
    }

    /// Migrates `folios` (all on the other node) to node `to` as one batch: the four steps
    /// above, the same both ways. The checksums of step 3 are timed apart (`verify_us`) and
    /// left out of the batch's latency and CPU time.
    pub fn migrate_to(
        &mut self,
        mut folios: Vec<u32>,
        start_ms: u64,
        to: u8,
    ) -> Result<(BatchStat, Vec<u32>), MigrateError> {
        folios.sort_unstable();
        let t0 = Instant::now();
        let cpu0 = thread_cpu_ns();
        let engine = self.choose(folios.len());
        self.protect(&folios, true)?;
        let copies = self.copies(&folios, to);
        let tv = (Instant::now(), thread_cpu_ns());
        let mode = self.verify_mode;
        let before: Vec<Option<u64>> = (0..folios.len())
            .map(|i| {
                mode.checks(folios[i], i)
                    .then(|| folio_checksum(self.folio_bytes(&folios, &copies, i, false)))
            })
            .collect();
        let mut verify_us = tv.0.elapsed().as_micros() as u64;
        let mut verify_ns = thread_cpu_ns() - tv.1;
        let tc = Instant::now();
        let mut copied = self.copy_all(engine, &folios, &copies, to)?;
        let copy_us = tc.elapsed().as_micros() as u64;
        let tv = (Instant::now(), thread_cpu_ns());
        self.verify(&folios, &copies, &before, &mut copied.moved);
        verify_us += tv.0.elapsed().as_micros() as u64;
        verify_ns += thread_cpu_ns() - tv.1;
        let pick = |want: bool| -> Vec<u32> {
            folios
                .iter()
                .zip(&copied.moved)
                .filter(|(_, m)| **m == want)
                .map(|(f, _)| *f)
                .collect()
        };
        let (done, stayed) = (pick(true), pick(false));
        let first_folio_us = self
            .remap(&done, &stayed, t0, to)?
            .saturating_sub(verify_us);
        self.move_failed += stayed.len() as u64;
        self.verify.fallback_folios += u64::from(copied.fallback);
        let stat = BatchStat {
            engine,
            folios: done.len() as u32,
            start_ms,
            latency_us: (t0.elapsed().as_micros() as u64).saturating_sub(verify_us),
            first_folio_us,
            copy_us,
            cpu_ns: (thread_cpu_ns() - cpu0 + copied.helper_cpu_ns).saturating_sub(verify_ns),
            fallback_folios: copied.fallback,
            to_node: to,
            copy_threads: copied.threads,
            verify_us,
        };
        self.verify.verify_s += verify_us as f64 / 1e6;
        if engine != EngineKind::MovePages {
            self.model
                .observe(engine, stat.folios, stat.latency_us, stat.cpu_ns);
        }
        Ok((stat, stayed))
    }
}

impl Drop for Mover<'_> {
    fn drop(&mut self) {
        if let (Some(s), Backing::Pools { pool1, pool0 }) =
            (self.sdxi.as_deref(), &self.arena.backing)
        {
            let _ = s.f.unmap(self.iova.0, pool1.len as u64);
            let _ = s.f.unmap(self.iova.1, pool0.len as u64);
        }
    }
}

#[cfg(test)]
mod tests {
    //! The mover's steps on real memory (memfd pools, `MAP_FIXED` remaps) with the kernel's
    //! NUMA and userfaultfd calls played by [`FakeMemory`], so they run on a one-node host.
    use super::*;
    use crate::spec::FolioSize;
    use crate::sys::double::{FakeMemory, WpCall};
    use crate::workload::fill;

    fn arena(fake: &FakeMemory, n: usize, pools: bool) -> Arc<Arena> {
        let sys = Arc::new(fake.clone());
        Arc::new(
            Arena::with_sys(sys, FolioSize::Base, n, pools, |i, b| fill(7, i, b)).expect("arena"),
        )
    }

    fn spec(policy: Policy) -> EngineSpec {
        EngineSpec {
            policy,
            cpu_threads: 2,
            ..EngineSpec::default()
        }
    }

    #[test]
    fn a_batch_is_protected_copied_verified_and_remapped_onto_node_0() {
        let fake = FakeMemory::default();
        let a = arena(&fake, 16, true);
        let before: Vec<Vec<u8>> = (0..16).map(|i| a.bytes(i).to_vec()).collect();
        let mut m = Mover::new(Arc::clone(&a), &spec(Policy::Cpu), None, 0).expect("mover");
        let (stat, stayed) = m.migrate(vec![5, 3, 4, 9], 40).expect("migrate");
        assert!(stayed.is_empty());
        assert_eq!(
            (
                stat.engine,
                stat.folios,
                stat.start_ms,
                stat.fallback_folios
            ),
            (EngineKind::Cpu, 4, 40, 0)
        );
        for (i, b) in before.iter().enumerate() {
            let want = if [3, 4, 5, 9].contains(&i) { 0 } else { 1 };
            assert_eq!(a.node[i].load(Ordering::Acquire), want, "folio {i}");
            assert_eq!(a.bytes(i), &b[..], "folio {i} keeps its contents");
        }
        assert_eq!((m.verify.copies_checked, m.verify.copy_mismatches), (4, 0));
        // The arena now maps node-0 slots: a write through it lands in pool 0, not pool 1.
        // SAFETY: folio 3 is mapped for the arena's lifetime.
        unsafe { a.at(3).write_volatile(0xAB) };
        let Backing::Pools { pool1, pool0 } = &a.backing else {
            panic!("pools")
        };
        // SAFETY: slot 3 of each pool is inside its view.
        let (p0, p1) = unsafe { (*pool0.slot(3, 4096), *pool1.slot(3, 4096)) };
        assert_eq!((p0, p1), (0xAB, 0));
        let calls = fake.wp.calls.lock().expect("calls").clone();
        let (at, page) = (|i: usize| a.at(i) as usize, 4096);
        assert_eq!(
            calls[1..],
            [
                WpCall::Protect(at(3), 3 * page, true),
                WpCall::Protect(at(9), page, true),
                WpCall::Register(at(3), 3 * page),
                WpCall::Wake(at(3), 3 * page),
                WpCall::Register(at(9), page),
                WpCall::Wake(at(9), page),
            ],
            "unmap (write-protect) all, then remap each run and wake its writers"
        );
    }

    #[test]
    fn the_move_pages_baseline_lets_the_kernel_move_the_batch() {
        let fake = FakeMemory::default();
        let a = arena(&fake, 8, false);
        assert_eq!(a.census().expect("census"), (0, 8, 0), "bound to node 1");
        let mut m = Mover::new(Arc::clone(&a), &spec(Policy::MovePages), None, 0).expect("mover");
        let (stat, stayed) = m.migrate(vec![6, 1], 0).expect("migrate");
        assert!(stayed.is_empty());
        assert_eq!((stat.engine, stat.folios), (EngineKind::MovePages, 2));
        assert_eq!(a.census().expect("census"), (2, 6, 0));
        assert_eq!(a.node[1].load(Ordering::Acquire), 0);
        assert_eq!(m.verify.copies_checked, 2);
    }

    #[test]
    fn without_an_sdxi_engine_every_policy_copies_with_the_cpu() {
        let fake = FakeMemory::default();
        let a = arena(&fake, 4, true);
        for p in [Policy::Sdxi, Policy::Auto, Policy::Cpu] {
            let mut m = Mover::new(Arc::clone(&a), &spec(p), None, 0).expect("mover");
            assert_eq!(m.choose(512), EngineKind::Cpu, "{p:?}");
        }
    }
}
