//! The batched tiered-memory migrator: a userspace model, run for real in the guest, of the
//! kernel's tiered-memory promotion work. Its pieces, and the kernel work each models:
//!
//! | kernel | here |
//! |---|---|
//! | CHMU / hint faults / page-table scans -> `pghot_record_access()` (the "pghot" RFC series on linux-mm) | [`crate::sources`] -> [`Promoter::record`] |
//! | pghot frequency/window/rate limit, target nid | [`Promoter`] |
//! | kmigrated, batch_nr 512, wake-ups | [`Batcher`] and [`crate::pipeline`] |
//! | `migrate_pages_batch()` (Linux `mm/migrate.c`) with the batch copy of the copy-offload series ("Enhancements to Page Migration with Multi-threading and Batch Offloading to DMA", lore.kernel.org/r/20250319192211.10092-1-shivankg@amd.com): unmap all, copy all in one call, remap all | [`Mover::migrate`]: write-protect all, one [`crate::copy::CopyEngine::copy`] call, remap all |
//! | `migrator->offload_copy` (dcbm over a dmaengine, mtcopy) with CPU fallback | [`crate::copy::SdxiCopy`], [`crate::copy::CpuCopy`]; failed folios copied by the CPU |
//! | `move_pages(2)` | [`EngineKind::MovePages`] on an anonymous arena (the baseline) |
//!
//! [`run`] sets a run up (arena, devices, source), drives the [`Pipeline`] (source ->
//! promoter -> batcher -> mover -> report) for the run's duration, then checks and reports.
//! [`crate::bench`] is the copy benchmark.
//!
//! Pages really move: a promoted folio's virtual address maps a node-0 page afterwards
//! (`move_pages(2)` in query mode says so), and writers that touch a folio of a batch wait
//! (userfaultfd write-protect) until it is remapped, so no write is lost. Every copy is
//! checked (checksum of the source before, of the destination after; a mismatch is copied
//! again by the CPU, and a folio that still differs stays where it was).

use crate::arena::{self, gpa_of, Arena, MemError};
use crate::budget::TieringReport;
use crate::chmu::ChmuError;
use crate::copy::SdxiCopy;
use crate::demote::{BudgetSide, DemoteStage, PromoteSide, Tiering};
use crate::mover::Mover;
use crate::pipeline::{Budget, Clock, Pipeline, Sampler, SourceStage, Stage, WallClock};
use crate::promote::{Batcher, Promoter};
use crate::sdxi::SdxiError;
use crate::sources::{ChmuSource, DamonError, DamonSource, HotnessSource};
use crate::spec::*;
use crate::sys;
use crate::workload::{counted_writes, fill, Workload};
use std::collections::HashSet;
use std::fs::File;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// Where the pools appear in the SDXi engine's address space (IOVAs); each bench case moves
/// on by [`crate::mover::IOVA_STEP`].
pub(crate) const POOL_IOVA: u64 = 0x80_0000_0000;

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

pub(crate) fn summarize<'b>(
    batches: impl IntoIterator<Item = &'b BatchStat>,
    folio_bytes: u64,
) -> Vec<EngineSummary> {
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
pub(crate) fn reserve_for(folio: FolioSize, n: usize) -> Result<(), MigrateError> {
    if folio == FolioSize::Huge {
        arena::reserve_huge_pages(1, n as u64)?;
        arena::reserve_huge_pages(0, n as u64)?;
    }
    Ok(())
}

pub(crate) fn open_sdxi(
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

impl Retained {
    pub(crate) fn new(arena: Arc<Arena>, huge: bool) -> Self {
        Self {
            arena: Some(arena),
            huge,
        }
    }
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

/// Opens the hotness source the spec names (None for `all`: every folio is recorded up
/// front).
fn open_source(
    spec: &MigrateSpec,
    dev: Devices,
    arena: &Arena,
    pagemap: &File,
) -> Result<Option<Box<dyn HotnessSource>>, MigrateError> {
    let fb = spec.workload.folio.bytes();
    Ok(match spec.source {
        SourceKind::Chmu => {
            let bdf = dev
                .chmu
                .ok_or_else(|| MigrateError::Missing("no CHMU for the chmu source".into()))?;
            let frames: Vec<(u64, u32)> = (0..arena.n)
                .filter_map(|i| gpa_of(pagemap, arena.at(i) as usize).map(|g| (g, i as u32)))
                .collect();
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
            spec.workload.pages,
            5_000,
            spec.scan_ms.max(20) * 1000,
        )?)),
        SourceKind::All | SourceKind::Kernel => None,
    })
}

pub(crate) fn open_pagemap() -> Result<File, MigrateError> {
    File::open("/proc/self/pagemap")
        .map_err(|e| MigrateError::Missing(format!("/proc/self/pagemap: {e}")))
}

/// Runs the workload, the source, the promotion engine and the batching migrator for
/// `spec.duration_ms`, then checks and reports.
pub fn run(spec: MigrateSpec, dev: Devices) -> Result<(MigrateReport, Retained), MigrateError> {
    let spec = spec.normalized();
    spec.validate().map_err(MigrateError::Spec)?;
    if spec.source == SourceKind::Kernel {
        return crate::kernel_tiering::run(spec);
    }
    let mut notes = Vec::new();
    // The kernel's own NUMA balancing would promote pages behind our back.
    if std::fs::write("/proc/sys/kernel/numa_balancing", "0").is_err() {
        notes.push("could not turn kernel NUMA balancing off".to_owned());
    }
    let w = &spec.workload;
    let (folio, n, seed) = (w.folio, w.pages as usize, w.seed);
    reserve_for(folio, n)?;
    let pools = spec.engine.policy != Policy::MovePages;
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
    mover.verify_mode = spec.verify;
    let pagemap = open_pagemap()?;
    let source = open_source(&spec, dev, &arena, &pagemap)?;
    let p = &spec.promotion;
    // Promotion goes through the tiering state (budget, ping-pong hold-back); with a budget,
    // demotion runs as an extra stage through the same mover.
    let tier = Tiering::new(
        &spec.tiering,
        &mut mover,
        &*arena,
        spec.source,
        p.threshold,
        folio.bytes(),
        Box::new(|_| "workload".to_owned()),
    );
    let mut up = PromoteSide(Rc::clone(&tier));
    let budgeted = spec.tiering.dram_budget > 0;
    let mut pipe = Pipeline {
        source: SourceStage::new(spec.source, source, spec.scan_ms),
        promoter: Promoter::new(p.threshold, p.window_ms, p.rate_limit_mbps, folio.bytes()),
        batcher: Batcher::new(spec.batch.size, spec.batch.timeout_ms, spec.batch.auto_tune),
        mover: &mut up,
        sampler: Sampler::new(spec.sample_ms),
        budget: budgeted.then(|| Box::new(BudgetSide(Rc::clone(&tier))) as Box<dyn Budget>),
        stages: if budgeted {
            vec![Box::new(DemoteStage(Rc::clone(&tier))) as Box<dyn Stage>]
        } else {
            Vec::new()
        },
        batches: Vec::new(),
        tuned: Vec::new(),
        auto_tune: spec.batch.auto_tune,
    };
    if spec.source == SourceKind::All {
        for f in 0..w.pages {
            pipe.promoter.record(f, p.threshold, SourceKind::All, 0);
        }
    }
    let ran = Ran::run(&mut pipe, &arena, &spec)?;
    drop(pipe);
    drop(up);
    let (tiering, moved) = {
        let mut t = tier.borrow_mut();
        (budgeted.then(|| t.finish()), std::mem::take(&mut t.moved))
    };
    drop(tier);
    let engine_model = if spec.engine.policy == Policy::Auto {
        mover.model.estimates()
    } else {
        Vec::new()
    };
    let mut verify = std::mem::take(&mut mover.verify);
    if mover.move_failed > 0 {
        notes.push(format!(
            "{} folio migrations did not complete and were retried",
            mover.move_failed
        ));
    }
    drop(mover);
    verify_end_state(&arena, &ran, &mut verify)?;
    let mut report = report(spec, &arena, &pagemap, ran, verify, notes);
    report.demoted_folios = moved_folios(&arena, &pagemap, &moved, 1);
    add_tiering(&mut report, tiering);
    report.engine_model = engine_model;
    let huge = folio == FolioSize::Huge;
    Ok((
        report,
        Retained {
            arena: Some(arena),
            huge,
        },
    ))
}

/// Adds what tiering did to the report. Demotion batches go through the same mover as
/// promotions, so they count in the migrator's CPU time and in the per-engine totals;
/// `batches` and its latency percentiles stay the promotions'.
pub(crate) fn add_tiering(r: &mut MigrateReport, tiering: Option<TieringReport>) {
    if let Some(t) = &tiering {
        r.cpu.migrator_s += cpu_s(&t.demotion_batches);
        r.engines = summarize(r.batches.iter().chain(&t.demotion_batches), r.folio_bytes);
    }
    r.tiering = tiering;
}

/// The CPU seconds `batches` took.
fn cpu_s(batches: &[BatchStat]) -> f64 {
    batches.iter().map(|b| b.cpu_ns).sum::<u64>() as f64 / 1e9
}

/// What the pipeline left when the run ended.
#[derive(Debug)]
pub(crate) struct Ran {
    pub elapsed: u64,
    /// The workload's known hot set.
    pub known: HashSet<u32>,
    /// Writes each workload thread made.
    pub writes: Vec<u64>,
    pub accesses: u64,
    pub series: Vec<(u64, f64)>,
    pub batches: Vec<BatchStat>,
    pub tuned: Vec<u32>,
    pub source: SourceStats,
    pub reported: HashSet<u32>,
    pub rate_limited: u64,
    pub cpu: GuestCpu,
}

impl Ran {
    /// Starts the workload on `arena`, runs `pipe` for the run's duration and collects.
    pub(crate) fn run(
        pipe: &mut Pipeline<'_>,
        arena: &Arc<Arena>,
        spec: &MigrateSpec,
    ) -> Result<Self, MigrateError> {
        let cpu0 = sys::mm::process_cpu_ns();
        let workload = Workload::start(Arc::clone(arena), &spec.workload);
        let clock = WallClock(workload.started);
        pipe.run(&clock, &workload, spec.duration_ms)?;
        Ok(Self::collect(pipe, workload, &clock, cpu0))
    }

    /// Stops the workload and the source and takes what the pipeline gathered; `cpu0` is
    /// the process's CPU time when the workload started.
    pub(crate) fn collect(
        pipe: &mut Pipeline<'_>,
        workload: Workload,
        clock: &WallClock,
        cpu0: (u64, u64),
    ) -> Self {
        let elapsed = clock.now_ms();
        let known: HashSet<u32> = workload.chooser.known_hot(elapsed).into_iter().collect();
        let writes = workload.stop();
        let cpu1 = sys::mm::process_cpu_ns();
        pipe.source.stop();
        let batches = std::mem::take(&mut pipe.batches);
        let cpu = GuestCpu {
            user_s: cpu1.0.saturating_sub(cpu0.0) as f64 / 1e9,
            system_s: cpu1.1.saturating_sub(cpu0.1) as f64 / 1e9,
            migrator_s: cpu_s(&batches),
        };
        Self {
            elapsed,
            known,
            writes,
            accesses: pipe.sampler.last.0,
            series: std::mem::take(&mut pipe.sampler.series),
            batches,
            tuned: std::mem::take(&mut pipe.tuned),
            source: std::mem::take(&mut pipe.source.stats),
            reported: std::mem::take(&mut pipe.source.reported),
            rate_limited: pipe.promoter.counters.rate_limited,
            cpu,
        }
    }
}

/// Folios the migrator moved (its own record: the arena's node map).
fn promoted(arena: &Arena) -> Vec<u32> {
    (0..arena.n as u32)
        .filter(|&i| arena.node[i as usize].load(Ordering::Acquire) == 0)
        .collect()
}

/// The checks of the memory itself at the end: writes counted in the folios, where
/// `move_pages(2)` finds every folio, and whether every promoted folio is on node 0.
pub(crate) fn verify_end_state(
    arena: &Arena,
    ran: &Ran,
    v: &mut VerifyStats,
) -> Result<(), MigrateError> {
    v.writers_blocked = arena.uffd.blocked.load(Ordering::Relaxed);
    v.writes = ran.writes.iter().sum();
    v.counted_writes = counted_writes(arena, ran.writes.len()).iter().sum();
    let (n0, n1, other) = arena.census()?;
    (v.on_node0, v.on_node1, v.on_other) = (n0, n1, other);
    let pages: Vec<*mut u8> = promoted(arena)
        .iter()
        .map(|&f| arena.at(f as usize))
        .collect();
    let where_now = arena.move_pages(&pages, None)?;
    v.promoted_not_on_node0 = where_now.iter().filter(|&&s| s != 0).count() as u64;
    Ok(())
}

/// Folios that moved at least once and are on `node` now, each with its guest-physical
/// address and checksum for the harness.
fn moved_folios(arena: &Arena, pagemap: &File, moved: &[bool], node: u8) -> Vec<MigratedFolio> {
    (0..arena.n)
        .filter(|&i| moved.get(i).copied().unwrap_or(false))
        .filter(|&i| arena.node[i].load(Ordering::Acquire) == node)
        .map(|i| MigratedFolio {
            index: i as u32,
            gpa: gpa_of(pagemap, arena.at(i) as usize).unwrap_or(0),
            checksum: folio_checksum(arena.bytes(i)),
        })
        .collect()
}

/// The report of a finished run.
pub(crate) fn report(
    spec: MigrateSpec,
    arena: &Arena,
    pagemap: &File,
    ran: Ran,
    verify: VerifyStats,
    notes: Vec<String>,
) -> MigrateReport {
    let fb = arena.folio as u64;
    let promoted = promoted(arena);
    let migrated: Vec<MigratedFolio> = promoted
        .iter()
        .map(|&f| MigratedFolio {
            index: f,
            gpa: gpa_of(pagemap, arena.at(f as usize) as usize).unwrap_or(0),
            checksum: folio_checksum(arena.bytes(f as usize)),
        })
        .collect();
    let mut st = ran.source;
    st.folios_reported = ran.reported.len() as u64;
    st.known_hot = ran.known.len() as u64;
    st.hot_reported = ran.reported.intersection(&ran.known).count() as u64;
    st.other_reported = ran.reported.len() as u64 - st.hot_reported;
    let batches = ran.batches;
    MigrateReport {
        folio_bytes: fb,
        folios: arena.n as u64,
        duration_ms: ran.elapsed,
        promoted: migrated.len() as u64,
        hot_promoted: promoted.iter().filter(|f| ran.known.contains(f)).count() as u64,
        bytes_migrated: migrated.len() as u64 * fb,
        promoted_per_s: migrated.len() as f64 / (ran.elapsed as f64 / 1e3).max(1e-3),
        rate_limited: ran.rate_limited,
        batch_latency_us: Percentiles::of(batches.iter().map(|b| b.latency_us).collect()),
        first_folio_us: Percentiles::of(batches.iter().map(|b| b.first_folio_us).collect()),
        engines: summarize(&batches, fb),
        batches,
        node0_fraction: ran.series,
        accesses: ran.accesses,
        source: st,
        verify,
        tuned_sizes: ran.tuned,
        migrated,
        notes,
        spec,
        cpu: ran.cpu,
        kernel: None,
        demoted_folios: Vec::new(),
        tiering: None,
        engine_model: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(engine: EngineKind, folios: u32, cpu_ns: u64) -> BatchStat {
        BatchStat {
            engine,
            folios,
            cpu_ns,
            latency_us: 1000,
            ..BatchStat::default()
        }
    }

    #[test]
    fn demotion_batches_count_in_the_migrators_cpu_and_engine_totals() {
        let batches = vec![batch(EngineKind::Sdxi, 10, 1_000_000_000)];
        let mut r = MigrateReport {
            folio_bytes: 4096,
            engines: summarize(&batches, 4096),
            cpu: GuestCpu {
                migrator_s: cpu_s(&batches),
                ..GuestCpu::default()
            },
            batches,
            ..MigrateReport::default()
        };
        let t = TieringReport {
            demotion_batches: vec![
                batch(EngineKind::Cpu, 5, 500_000_000),
                batch(EngineKind::Sdxi, 2, 250_000_000),
            ],
            ..TieringReport::default()
        };
        add_tiering(&mut r, Some(t));
        assert!((r.cpu.migrator_s - 1.75).abs() < 1e-9, "{:?}", r.cpu);
        let e: Vec<(EngineKind, u64, u64, u64)> = r
            .engines
            .iter()
            .map(|e| (e.engine, e.batches, e.folios, e.bytes))
            .collect();
        assert_eq!(
            e,
            vec![
                (EngineKind::Sdxi, 2, 12, 12 * 4096),
                (EngineKind::Cpu, 1, 5, 5 * 4096)
            ]
        );
        assert_eq!(r.batches.len(), 1, "batches stay the promotions");
        assert!(r.tiering.is_some());
    }

    #[test]
    fn without_a_budget_the_figures_stay_the_promotions() {
        let batches = vec![batch(EngineKind::Cpu, 3, 1000)];
        let mut r = MigrateReport {
            engines: summarize(&batches, 4096),
            batches,
            ..MigrateReport::default()
        };
        let before = r.clone();
        add_tiering(&mut r, None);
        assert_eq!(r, before);
    }
}
