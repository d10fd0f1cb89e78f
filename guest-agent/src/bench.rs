//! The copy benchmark: every engine (`move_pages(2)`, CPU threads, the SDXi engine) moves
//! the same amount of memory from node 1 to node 0 in batches of each size, for each folio
//! size, through the migrator's own [`Mover`] (write-protect, copy, verify, remap), with no
//! workload and no hotness source. Throughput, guest CPU per GB and first-folio latency are
//! reported per case, with each engine's ratio to `move_pages(2)`.

use crate::arena::{self, Arena};
use crate::copy::SdxiPhases;
use crate::migrate::{open_sdxi, reserve_for, Devices, MigrateError, POOL_IOVA};
use crate::mover::{Mover, IOVA_STEP};
use crate::spec::*;
use crate::workload::fill;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

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
                cases.push(bench_case(
                    sdxi.as_mut(),
                    Case {
                        engine,
                        folio,
                        batch,
                        n,
                        k,
                        cpu_threads: spec.cpu_threads,
                        verify: spec.verify,
                    },
                    &note,
                )?);
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

/// One case of the benchmark: `n` folios of `folio` moved by `engine` in batches of `batch`,
/// on a fresh arena whose pools sit at the `k`-th IOVA step.
#[derive(Clone, Copy, Debug)]
struct Case {
    engine: EngineKind,
    folio: FolioSize,
    batch: usize,
    n: usize,
    k: u64,
    cpu_threads: u32,
    verify: crate::verify::VerifyMode,
}

fn bench_case(
    mut sdxi: Option<&mut crate::copy::SdxiCopy>,
    c: Case,
    note: &str,
) -> Result<BenchCase, MigrateError> {
    let Case {
        engine,
        folio,
        batch,
        n,
        k,
        cpu_threads,
        verify,
    } = c;
    let fb = folio.bytes();
    let es = EngineSpec {
        policy: match engine {
            EngineKind::Cpu => Policy::Cpu,
            EngineKind::Sdxi => Policy::Sdxi,
            EngineKind::MovePages => Policy::MovePages,
        },
        cpu_threads,
        ..EngineSpec::default()
    };
    let arena = Arc::new(Arena::new(
        folio,
        n,
        engine != EngineKind::MovePages,
        |i, b| fill(k, i, b),
    )?);
    let p0 = sdxi.as_deref().map(|x| x.phases).unwrap_or_default();
    let s = if engine == EngineKind::Sdxi {
        sdxi.as_deref_mut()
    } else {
        None
    };
    let mut m = Mover::new(Arc::clone(&arena), &es, s, POOL_IOVA + k * IOVA_STEP)?;
    m.verify_mode = verify;
    // Verification apart from the timed migration, as the guest's full mode does it: every
    // source's checksum before, every destination's after (no workload writes to them).
    let tv = Instant::now();
    let before: Vec<u64> = (0..n).map(|i| folio_checksum(arena.bytes(i))).collect();
    let mut verify_s = tv.elapsed().as_secs_f64();
    let t = Instant::now();
    let (mut wall_us, mut cpu_ns, mut first, mut copy_us) = (0u64, 0u64, 0u64, 0u64);
    let mut nb = 0u64;
    let mut moved = 0u64;
    for chunk in (0..n as u32).collect::<Vec<_>>().chunks(batch) {
        let (stat, _) = m.migrate(chunk.to_vec(), t.elapsed().as_millis() as u64)?;
        wall_us += stat.latency_us;
        copy_us += stat.copy_us;
        cpu_ns += stat.cpu_ns;
        first += stat.first_folio_us;
        moved += u64::from(stat.folios);
        nb += 1;
    }
    let gb = (moved * fb) as f64 / 1e9;
    let copy_mismatches = m.verify.copy_mismatches;
    drop(m);
    let sdxi_phases = sdxi.as_deref().map(|x| x.phases.since(&p0));
    let phases = batch_phases(nb, copy_us, &arena, &sdxi_phases.unwrap_or_default());
    let tv = Instant::now();
    let bad = (0..n)
        .filter(|&i| folio_checksum(arena.bytes(i)) != before[i])
        .count() as u64;
    verify_s += tv.elapsed().as_secs_f64();
    let (n0, _, _) = arena.census()?;
    let mut note = note.to_owned();
    if n0 != n as u64 {
        note = format!(
            "{note}{}only {n0} of {n} folios on node 0 afterwards",
            if note.is_empty() { "" } else { "; " }
        );
    }
    Ok(BenchCase {
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
        mismatches: copy_mismatches + bad,
        verified: n as u64,
        verify_s_per_gb: verify_s / ((n as u64 * fb) as f64 / 1e9).max(1e-12),
        vs_move_pages: None,
        phases,
        note,
    })
}

/// Means per batch of the time `nb` batches spent in each step (`copy_us` in all) and in the
/// SDXi engine's phases.
fn batch_phases(nb: u64, copy_us: u64, arena: &Arena, sdxi: &SdxiPhases) -> BatchPhases {
    let per = |ns: u64| ns as f64 / 1e3 / nb.max(1) as f64;
    BatchPhases {
        batches: nb,
        write_protect_us: per(arena.uffd.wp_ns.load(Ordering::Relaxed)),
        copy_us: per(copy_us * 1000),
        descriptors_us: per(sdxi.build_ns),
        doorbell_us: per(sdxi.doorbell_ns),
        completion_wait_us: per(sdxi.wait_ns),
        completion_check_us: per(sdxi.check_ns),
        wakeups: sdxi.wakeups as f64 / nb.max(1) as f64,
        remap_us: per(arena.remap_ns.load(Ordering::Relaxed)),
    }
}
