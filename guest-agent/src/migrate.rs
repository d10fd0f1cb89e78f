//! The batched tiered-memory migrator: a userspace model, run for real in the guest, of the
//! kernel work in kernel-migration.md:
//!
//! | kernel | here |
//! |---|---|
//! | CHMU / hint faults -> `pghot_record_access` | [`crate::sources`] -> [`Promoter::record`] |
//! | pghot frequency/window/rate limit, target nid | [`Promoter`] |
//! | kmigrated, batch_nr 512, wake-ups | [`Batcher`] and the loop in [`run`] |
//! | `migrate_pages_batch` batch move: unmap all, copy all in one call, remap all | [`Mover::migrate`]: write-protect all, one [`CopyEngine::copy`] call, remap all |
//! | `migrator->offload_copy` (dcbm over SDXi, mtcopy) with CPU fallback | [`SdxiCopy`], [`CpuCopy`]; failed folios copied by the CPU |
//! | `move_pages(2)` | [`EngineKind::MovePages`] on an anonymous arena (the baseline) |
//!
//! Pages really move: a promoted folio's virtual address maps a node-0 page afterwards
//! (`move_pages(2)` in query mode says so), and writers that touch a folio of a batch wait
//! (userfaultfd write-protect) until it is remapped, so no write is lost. Every copy is
//! checked (checksum of the source before, of the destination after; a mismatch is copied
//! again by the CPU, and a folio that still differs stays where it was).

use crate::arena::{self, gpa_of, runs, thread_cpu_ns, Arena, Backing, MemError};
use crate::chmu::ChmuError;
use crate::copy::{copy_folio, CopyEngine, CpuCopy, FolioCopy, SdxiCopy};
use crate::promote::{Batcher, Promoter};
use crate::sdxi::SdxiError;
use crate::sources::{ChmuSource, DamonError, DamonSource, HotnessSource};
use crate::spec::*;
use crate::workload::{counted_writes, fill, Workload};
use std::collections::HashSet;
use std::fs::File;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Where the pools appear in the SDXi engine's address space (IOVAs); each bench case moves
/// on by [`IOVA_STEP`].
const POOL_IOVA: u64 = 0x80_0000_0000;
const IOVA_STEP: u64 = 0x10_0000_0000;

/// Errors of a migration run.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("invalid migration spec: {0}")]
    Spec(String),
    #[error("memory")]
    Mem(#[from] MemError),
    #[error("SDXi engine")]
    Sdxi(#[from] SdxiError),
    #[error("CHMU source")]
    Chmu(#[from] ChmuError),
    #[error("DAMON source")]
    Damon(#[from] DamonError),
    #[error("{0}")]
    Missing(String),
}

/// PCI addresses of the devices (None when absent).
#[derive(Clone, Copy, Debug, Default)]
pub struct Devices<'a> {
    pub sdxi: Option<&'a str>,
    pub chmu: Option<&'a str>,
}

/// Moves batches of folios of one arena from node 1 to node 0.
#[derive(Debug)]
pub struct Mover<'a> {
    pub arena: Arc<Arena>,
    policy: Policy,
    dma_min_batch: usize,
    cpu: CpuCopy,
    sdxi: Option<&'a mut SdxiCopy>,
    /// IOVAs of the node-1 and node-0 pools.
    iova: (u64, u64),
    pub verify: VerifyStats,
    pub move_failed: u64,
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
            dma_min_batch: engine.dma_min_batch as usize,
            cpu: CpuCopy {
                threads: engine.cpu_threads as usize,
                nt: engine.nt_stores,
            },
            sdxi,
            iova,
            verify: VerifyStats::default(),
            move_failed: 0,
        })
    }

    /// The engine for a batch of `n` folios.
    fn choose(&self, n: usize) -> EngineKind {
        match self.policy {
            Policy::Cpu => EngineKind::Cpu,
            Policy::MovePages => EngineKind::MovePages,
            Policy::Sdxi if self.sdxi.is_some() => EngineKind::Sdxi,
            Policy::Auto
                if self.sdxi.is_some() && (self.arena.folio > 4096 || n >= self.dma_min_batch) =>
            {
                EngineKind::Sdxi
            }
            _ => EngineKind::Cpu,
        }
    }

    fn copies(&self, folios: &[u32]) -> Vec<FolioCopy> {
        let a = &self.arena;
        let Backing::Pools { pool1, pool0 } = &a.backing else {
            return Vec::new();
        };
        folios
            .iter()
            .map(|&f| {
                let off = f as usize * a.folio;
                FolioCopy {
                    src: pool1.slot(f as usize, a.folio),
                    dst: pool0.slot(f as usize, a.folio),
                    src_iova: self.iova.0 + off as u64,
                    dst_iova: self.iova.1 + off as u64,
                    len: a.folio,
                }
            })
            .collect()
    }

    /// Migrates `folios` (all on node 1) as one batch; returns the batch's statistics and the
    /// folios that stayed on node 1.
    pub fn migrate(
        &mut self,
        mut folios: Vec<u32>,
        run_start: Instant,
    ) -> Result<(BatchStat, Vec<u32>), MigrateError> {
        folios.sort_unstable();
        let t0 = Instant::now();
        let cpu0 = thread_cpu_ns();
        let engine = self.choose(folios.len());
        let arena = Arc::clone(&self.arena);
        let a = &*arena;
        let fb = a.folio;
        // 1. Unmap (write-protect) all.
        for &(s, c) in &runs(&folios) {
            a.uffd.protect(a.at(s), c * fb, true)?;
        }
        // 2. Copy all in one call.
        let copies = self.copies(&folios);
        let src = |i: usize| -> &[u8] {
            match copies.get(i) {
                // SAFETY: a pool slot of `len` bytes.
                Some(c) => unsafe { std::slice::from_raw_parts(c.src, c.len) },
                None => a.bytes(folios[i] as usize),
            }
        };
        let before: Vec<u64> = (0..folios.len()).map(|i| folio_checksum(src(i))).collect();
        let tc = Instant::now();
        let mut helper_cpu_ns = 0;
        let mut fallback = 0u32;
        let mut moved = vec![true; folios.len()];
        match engine {
            EngineKind::MovePages => {
                let pages: Vec<*mut u8> = folios.iter().map(|&f| a.at(f as usize)).collect();
                let st = arena::move_pages(&pages, Some(0))?;
                for (m, s) in moved.iter_mut().zip(&st) {
                    *m = *s == 0;
                }
            }
            EngineKind::Cpu | EngineKind::Sdxi => {
                let out = match (engine, self.sdxi.as_deref_mut()) {
                    (EngineKind::Sdxi, Some(s)) => s.copy(&copies),
                    _ => self.cpu.copy(&copies),
                };
                helper_cpu_ns += out.helper_cpu_ns;
                self.verify.dma_errors += out.dma_errors;
                self.verify.lost_interrupts += out.lost_interrupts;
                if let Some(s) = self.sdxi.as_deref() {
                    self.verify.context_restarts = s.restarts;
                }
                for &i in &out.failed {
                    copy_folio(&copies[i], self.cpu.nt);
                }
                fallback = out.failed.len() as u32;
            }
        }
        let copy_us = tc.elapsed().as_micros() as u64;
        // 3. Verify every copy.
        let dst = |i: usize| -> &[u8] {
            match copies.get(i) {
                // SAFETY: a pool slot of `len` bytes.
                Some(c) => unsafe { std::slice::from_raw_parts(c.dst, c.len) },
                None => a.bytes(folios[i] as usize),
            }
        };
        for i in 0..folios.len() {
            if !moved[i] {
                continue;
            }
            self.verify.copies_checked += 1;
            if folio_checksum(dst(i)) != before[i] {
                self.verify.copy_mismatches += 1;
                if let Some(c) = copies.get(i) {
                    copy_folio(c, false);
                    moved[i] = folio_checksum(dst(i)) == before[i];
                }
            }
        }
        // 4. Remap all (the ones that moved); release the others.
        let mut first_folio_us = 0;
        let done: Vec<u32> = folios
            .iter()
            .zip(&moved)
            .filter(|(_, m)| **m)
            .map(|(f, _)| *f)
            .collect();
        let stayed: Vec<u32> = folios
            .iter()
            .zip(&moved)
            .filter(|(_, m)| !**m)
            .map(|(f, _)| *f)
            .collect();
        for &(s, c) in &runs(&done) {
            match a.backing {
                Backing::Pools { .. } => a.remap_to_node0(s, c)?,
                Backing::Anon => {
                    for i in s..s + c {
                        a.node[i].store(0, Ordering::Release);
                    }
                    a.uffd.protect(a.at(s), c * fb, false)?;
                }
            }
            if first_folio_us == 0 {
                first_folio_us = t0.elapsed().as_micros() as u64;
            }
        }
        for &(s, c) in &runs(&stayed) {
            a.uffd.protect(a.at(s), c * fb, false)?;
        }
        a.uffd.drain();
        self.move_failed += stayed.len() as u64;
        self.verify.fallback_folios += u64::from(fallback);
        let stat = BatchStat {
            engine,
            folios: done.len() as u32,
            start_ms: t0.duration_since(run_start).as_millis() as u64,
            latency_us: t0.elapsed().as_micros() as u64,
            first_folio_us,
            copy_us,
            cpu_ns: thread_cpu_ns() - cpu0 + helper_cpu_ns,
            fallback_folios: fallback,
        };
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

fn summarize(batches: &[BatchStat], folio_bytes: u64) -> Vec<EngineSummary> {
    let mut by: Vec<EngineSummary> = Vec::new();
    for b in batches {
        let i = match by.iter().position(|e| e.engine == b.engine) {
            Some(i) => i,
            None => {
                by.push(EngineSummary {
                    engine: b.engine,
                    ..EngineSummary::default()
                });
                by.len() - 1
            }
        };
        let e = &mut by[i];
        e.batches += 1;
        e.folios += u64::from(b.folios);
        e.bytes += u64::from(b.folios) * folio_bytes;
        e.wall_s += b.latency_us as f64 / 1e6;
        e.cpu_s += b.cpu_ns as f64 / 1e9;
    }
    for e in &mut by {
        let gb = e.bytes as f64 / 1e9;
        e.cpu_s_per_gb = if gb > 0.0 { e.cpu_s / gb } else { 0.0 };
        e.gb_per_s = if e.wall_s > 0.0 { gb / e.wall_s } else { 0.0 };
    }
    by
}

/// Huge pages the arena needs: node 1 holds the folios, node 0 their destinations.
fn reserve_for(folio: FolioSize, n: usize) -> Result<(), MigrateError> {
    if folio == FolioSize::Huge {
        arena::reserve_huge_pages(1, n as u64)?;
        arena::reserve_huge_pages(0, n as u64)?;
    }
    Ok(())
}

fn open_sdxi(
    dev: Devices,
    channels: u32,
    max_batch: usize,
    timeout: Duration,
) -> Result<SdxiCopy, MigrateError> {
    let bdf = dev
        .sdxi
        .ok_or_else(|| MigrateError::Missing("the SDXi engine is needed but absent".into()))?;
    Ok(SdxiCopy::new(bdf, channels as u16, max_batch, timeout)?)
}

/// The memory of a finished run, held until the harness has read the promoted folios from
/// guest RAM (freed pages would be reused at once). Dropping it frees the memory and returns
/// unused huge pages.
#[derive(Debug)]
pub struct Retained {
    arena: Option<Arc<Arena>>,
    huge: bool,
}

impl Drop for Retained {
    fn drop(&mut self) {
        drop(self.arena.take());
        if self.huge {
            arena::release_huge_pages(0);
            arena::release_huge_pages(1);
        }
    }
}

/// Runs the workload, the source, the promotion engine and the batching migrator for
/// `spec.duration_ms`, then checks and reports.
pub fn run(spec: MigrateSpec, dev: Devices) -> Result<(MigrateReport, Retained), MigrateError> {
    let spec = spec.normalized();
    spec.validate().map_err(MigrateError::Spec)?;
    let mut notes = Vec::new();
    // The kernel's own NUMA balancing would promote pages behind our back.
    if std::fs::write("/proc/sys/kernel/numa_balancing", "0").is_err() {
        notes.push("could not turn kernel NUMA balancing off".to_owned());
    }
    let w = &spec.workload;
    let folio = w.folio;
    let fb = folio.bytes();
    let n = w.pages as usize;
    reserve_for(folio, n)?;
    let pools = spec.engine.policy != Policy::MovePages;
    let seed = w.seed;
    let arena = Arc::new(Arena::new(folio, n, pools, |i, b| fill(seed, i, b))?);
    let mut sdxi = match spec.engine.policy {
        Policy::Sdxi | Policy::Auto => Some(open_sdxi(
            dev,
            spec.engine.sdxi_channels,
            1024,
            Duration::from_millis(spec.engine.dma_timeout_ms),
        )?),
        _ => None,
    };
    let mut mover = Mover::new(Arc::clone(&arena), &spec.engine, sdxi.as_mut(), POOL_IOVA)?;
    let pagemap = File::open("/proc/self/pagemap")
        .map_err(|e| MigrateError::Missing(format!("/proc/self/pagemap: {e}")))?;
    let frames: Vec<(u64, u32)> = (0..n)
        .filter_map(|i| gpa_of(&pagemap, arena.at(i) as usize).map(|g| (g, i as u32)))
        .collect();
    let mut source: Option<Box<dyn HotnessSource>> = match spec.source {
        SourceKind::Chmu => {
            let bdf = dev
                .chmu
                .ok_or_else(|| MigrateError::Missing("no CHMU for the chmu source".into()))?;
            Some(Box::new(ChmuSource::start(
                bdf,
                &frames,
                fb,
                spec.chmu_threshold,
                (spec.chmu_epoch_scale, spec.chmu_epoch_mult),
            )?))
        }
        SourceKind::Damon => Some(Box::new(DamonSource::start(
            arena.base as u64,
            fb,
            w.pages,
            5_000,
            spec.scan_ms.max(20) * 1000,
        )?)),
        SourceKind::All => None,
    };
    let p = &spec.promotion;
    let mut promoter = Promoter::new(p.threshold, p.window_ms, p.rate_limit_mbps, fb);
    let mut batcher = Batcher::new(spec.batch.size, spec.batch.timeout_ms, spec.batch.auto_tune);
    let mut st = SourceStats {
        source: spec.source,
        ..SourceStats::default()
    };
    let mut reported: HashSet<u32> = HashSet::new();
    if spec.source == SourceKind::All {
        for f in 0..w.pages {
            promoter.record(f, p.threshold, SourceKind::All, 0);
        }
    }
    let workload = Workload::start(Arc::clone(&arena), w);
    let start = workload.started;
    let ms = || start.elapsed().as_millis() as u64;
    let mut batches = Vec::new();
    let mut series = Vec::new();
    let mut tuned = Vec::new();
    let (mut next_scan, mut next_sample) = (0u64, spec.sample_ms);
    let mut last = (0u64, 0u64);
    let mut sample = |now: u64, workload: &Workload, series: &mut Vec<(u64, f64)>| {
        let (acc, n0) = workload.totals();
        let (da, dn) = (acc - last.0, n0 - last.1);
        if da > 0 {
            series.push((now, dn as f64 / da as f64));
        }
        last = (acc, n0);
    };
    loop {
        let now = ms();
        if now >= spec.duration_ms {
            break;
        }
        if now >= next_scan {
            next_scan = now + spec.scan_ms;
            if let Some(s) = source.as_mut() {
                let f = s.poll();
                st.records += f.records;
                st.foreign_records += f.foreign;
                for (folio, count) in f.hits {
                    reported.insert(folio);
                    promoter.record(folio, count, s.kind(), now);
                }
            }
        }
        let room = (batcher.size() as usize * 2).saturating_sub(batcher.pending());
        for f in promoter.take(now, room) {
            batcher.push(f, now);
        }
        // Sampled even while batches follow each other back to back.
        if now >= next_sample {
            next_sample = now + spec.sample_ms;
            sample(now, &workload, &mut series);
        }
        if let Some(b) = batcher.flush(now) {
            if batches.is_empty() {
                // The series starts with the share before anything moved.
                sample(now, &workload, &mut series);
            }
            let (stat, stayed) = mover.migrate(b, start)?;
            batcher.observe(stat.folios, stat.latency_us);
            if spec.batch.auto_tune {
                tuned.push(batcher.size());
            }
            batches.push(stat);
            for f in stayed {
                promoter.requeue(f);
            }
            continue;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let rest = batcher.drain_all();
    if !rest.is_empty() {
        let (stat, _) = mover.migrate(rest, start)?;
        batches.push(stat);
    }
    sample(ms(), &workload, &mut series);
    let elapsed = ms();
    let known: HashSet<u32> = workload.chooser.known_hot(elapsed).into_iter().collect();
    let writes = workload.stop();
    drop(source);
    let acc = last.0;
    // Which folios moved: the arena's node map is the migrator's own record.
    let promoted: Vec<u32> = (0..n as u32)
        .filter(|&i| arena.node[i as usize].load(Ordering::Acquire) == 0)
        .collect();
    let mut v = std::mem::take(&mut mover.verify);
    v.writers_blocked = arena.uffd.blocked.load(Ordering::Relaxed);
    v.writes = writes.iter().sum();
    v.counted_writes = counted_writes(&arena, writes.len()).iter().sum();
    let (n0, n1, other) = arena.census()?;
    (v.on_node0, v.on_node1, v.on_other) = (n0, n1, other);
    let pages: Vec<*mut u8> = promoted.iter().map(|&f| arena.at(f as usize)).collect();
    let where_now = arena::move_pages(&pages, None)?;
    v.promoted_not_on_node0 = where_now.iter().filter(|&&s| s != 0).count() as u64;
    let migrated: Vec<MigratedFolio> = promoted
        .iter()
        .map(|&f| MigratedFolio {
            index: f,
            gpa: gpa_of(&pagemap, arena.at(f as usize) as usize).unwrap_or(0),
            checksum: folio_checksum(arena.bytes(f as usize)),
        })
        .collect();
    st.folios_reported = reported.len() as u64;
    st.known_hot = known.len() as u64;
    st.hot_reported = reported.intersection(&known).count() as u64;
    st.other_reported = reported.len() as u64 - st.hot_reported;
    if mover.move_failed > 0 {
        notes.push(format!(
            "{} folio migrations did not complete and were retried",
            mover.move_failed
        ));
    }
    let bytes = migrated.len() as u64 * fb;
    let report = MigrateReport {
        folio_bytes: fb,
        folios: n as u64,
        duration_ms: elapsed,
        promoted: migrated.len() as u64,
        hot_promoted: promoted.iter().filter(|f| known.contains(f)).count() as u64,
        bytes_migrated: bytes,
        promoted_per_s: migrated.len() as f64 / (elapsed as f64 / 1e3).max(1e-3),
        rate_limited: promoter.counters.rate_limited,
        batch_latency_us: Percentiles::of(batches.iter().map(|b| b.latency_us).collect()),
        first_folio_us: Percentiles::of(batches.iter().map(|b| b.first_folio_us).collect()),
        engines: summarize(&batches, fb),
        batches,
        node0_fraction: series,
        accesses: acc,
        source: st,
        verify: v,
        tuned_sizes: tuned,
        migrated,
        notes,
        spec,
    };
    drop(mover);
    Ok((
        report,
        Retained {
            arena: Some(arena),
            huge: folio == FolioSize::Huge,
        },
    ))
}

/// The copy benchmark: for each folio size, batch size and engine, a fresh arena on node 1 is
/// moved to node 0 batch by batch (no workload, no source) and every copy verified.
pub fn bench(spec: &BenchSpec, dev: Devices) -> Result<BenchReport, MigrateError> {
    let _ = std::fs::write("/proc/sys/kernel/numa_balancing", "0");
    let max_batch = spec
        .batch_sizes
        .iter()
        .copied()
        .max()
        .unwrap_or(1)
        .clamp(1, 1024) as usize;
    let mut sdxi = if spec.engines.contains(&EngineKind::Sdxi) {
        Some(open_sdxi(
            dev,
            spec.sdxi_channels,
            max_batch,
            Duration::from_secs(10),
        )?)
    } else {
        None
    };
    let mut cases = Vec::new();
    let mut k = 0u64;
    for &folio in &spec.folios {
        let fb = folio.bytes();
        let bytes = match folio {
            FolioSize::Base => spec.bytes_4k,
            FolioSize::Huge => spec.bytes_2m,
        };
        let total = bytes.div_ceil(fb).max(1) as usize;
        for &batch in &spec.batch_sizes {
            let batch = batch.clamp(1, 1024) as usize;
            let (n, note) = if batch > total {
                (
                    total,
                    format!(
                        "batch {batch} > {total} folios in {bytes} bytes: one batch of {total}"
                    ),
                )
            } else {
                (total / batch * batch, String::new())
            };
            reserve_for(folio, n)?;
            let first = cases.len();
            for &engine in &spec.engines {
                k += 1;
                let es = EngineSpec {
                    policy: match engine {
                        EngineKind::Cpu => Policy::Cpu,
                        EngineKind::Sdxi => Policy::Sdxi,
                        EngineKind::MovePages => Policy::MovePages,
                    },
                    cpu_threads: spec.cpu_threads,
                    ..EngineSpec::default()
                };
                let arena = Arc::new(Arena::new(
                    folio,
                    n,
                    engine != EngineKind::MovePages,
                    |i, b| fill(k, i, b),
                )?);
                let s = if engine == EngineKind::Sdxi {
                    sdxi.as_mut()
                } else {
                    None
                };
                let mut m = Mover::new(Arc::clone(&arena), &es, s, POOL_IOVA + k * IOVA_STEP)?;
                let t = Instant::now();
                let (mut wall_us, mut cpu_ns, mut first, mut copy_us) = (0u64, 0u64, 0u64, 0u64);
                let mut nb = 0u64;
                let mut moved = 0u64;
                for chunk in (0..n as u32).collect::<Vec<_>>().chunks(batch) {
                    let (stat, _) = m.migrate(chunk.to_vec(), t)?;
                    wall_us += stat.latency_us;
                    copy_us += stat.copy_us;
                    cpu_ns += stat.cpu_ns;
                    first += stat.first_folio_us;
                    moved += u64::from(stat.folios);
                    nb += 1;
                }
                let gb = (moved * fb) as f64 / 1e9;
                let (n0, _, _) = arena.census()?;
                let mut note = note.clone();
                if n0 != n as u64 {
                    note = format!(
                        "{note}{}only {n0} of {n} folios on node 0 afterwards",
                        if note.is_empty() { "" } else { "; " }
                    );
                }
                cases.push(BenchCase {
                    engine,
                    folio,
                    batch: batch as u32,
                    folios: moved,
                    bytes: moved * fb,
                    wall_s: wall_us as f64 / 1e6,
                    gb_per_s: gb / (wall_us as f64 / 1e6).max(1e-9),
                    copy_gb_per_s: gb / (copy_us as f64 / 1e6).max(1e-9),
                    cpu_s_per_gb: (cpu_ns as f64 / 1e9) / gb.max(1e-12),
                    first_folio_us: first as f64 / nb.max(1) as f64,
                    mismatches: m.verify.copy_mismatches,
                    vs_move_pages: None,
                    note,
                });
            }
            let base = cases[first..]
                .iter()
                .find(|c| c.engine == EngineKind::MovePages)
                .map(|c| c.gb_per_s);
            if let Some(b) = base.filter(|b| *b > 0.0) {
                for c in &mut cases[first..] {
                    c.vs_move_pages = Some(c.gb_per_s / b);
                }
            }
        }
        if folio == FolioSize::Huge {
            arena::release_huge_pages(0);
            arena::release_huge_pages(1);
        }
    }
    Ok(BenchReport { cases })
}
