//! What migration costs, measured in this run, and the decisions made from it:
//!
//! - [`CostModel`]: the `auto` engine policy. Each engine's batch cost (wall microseconds plus
//!   guest CPU microseconds: the time writers of the batch wait, plus the CPU the workload
//!   loses) is fitted as `fixed + per_folio * n` over the batches it moved (least squares,
//!   older batches decaying), and each batch goes to the engine predicted cheapest for its
//!   size. No fixed thresholds: an engine with fewer than [`EXPLORE`] measured batches is tried
//!   first, and every [`REFRESH`]th batch goes to the engine measured longest ago, so the fit
//!   follows the run (a faulting device, a busy CPU). The question it answers is the copy
//!   offload series' "DMA vs CPU" (`migrate_offload`'s `should_batch`: offload pays only for
//!   large enough batches), settled by measurement instead of a cut-off.
//! - [`Attribution`]: who pays: each batch's guest CPU time, wall time and bytes are charged
//!   to the owners of its folios (a workload, a cgroup) in proportion to their folios — the
//!   question pghot v7's memcg-grouped batches (`promote_misplaced_memcg_folios()`) raise.
//! - [`copy_threads`]: CPU copy threads for a batch, from its size and the CPUs left idle
//!   ([`IdleMeter`], from `/proc/stat`: the only I/O here).
//!
//! No clock: callers pass measurements in, so tests run on made-up costs.

use crate::spec::EngineKind;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Batches each engine gets before the model trusts its fit.
pub const EXPLORE: u64 = 2;
/// Every this many batches, the engine measured longest ago is tried again.
pub const REFRESH: u64 = 16;
/// Weight of the previous batches at each new one.
const DECAY: f64 = 0.8;

/// Decayed sums for a least-squares line through (folios, cost).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Fit {
    w: f64,
    sx: f64,
    sy: f64,
    sxx: f64,
    sxy: f64,
    batches: u64,
    last_seq: u64,
}

impl Fit {
    fn add(&mut self, x: f64, y: f64, seq: u64) {
        for s in [
            &mut self.w,
            &mut self.sx,
            &mut self.sy,
            &mut self.sxx,
            &mut self.sxy,
        ] {
            *s *= DECAY;
        }
        self.w += 1.0;
        self.sx += x;
        self.sy += y;
        self.sxx += x * x;
        self.sxy += x * y;
        self.batches += 1;
        self.last_seq = seq;
    }

    /// (fixed, per folio) cost in us; a line through the origin while every batch had (almost)
    /// the same size.
    fn line(&self) -> (f64, f64) {
        let var = self.sxx * self.w - self.sx * self.sx;
        if var <= 1e-6 * self.sxx * self.w || self.w < 1.5 {
            return (0.0, self.sy / self.sx.max(1e-9));
        }
        let b = (self.sxy * self.w - self.sx * self.sy) / var;
        let a = (self.sy - b * self.sx) / self.w;
        if a < 0.0 || b < 0.0 {
            // Noise gave a line that cannot be: per-folio only.
            return (0.0, self.sy / self.sx.max(1e-9));
        }
        (a, b)
    }
}

/// A model's view of one engine, for the report.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EngineEstimate {
    pub engine: EngineKind,
    pub batches: u64,
    /// Fitted fixed cost per batch and cost per folio (us of wall plus CPU time).
    pub fixed_us: f64,
    pub per_folio_us: f64,
    /// Batches the model sent to this engine.
    pub chosen: u64,
}

/// The `auto` policy's cost model.
#[derive(Debug, Default)]
pub struct CostModel {
    fits: Vec<(EngineKind, Fit, u64)>,
    seq: u64,
}

impl CostModel {
    /// A model choosing among `engines` (in order of preference when costs tie).
    pub fn new(engines: &[EngineKind]) -> Self {
        Self {
            fits: engines.iter().map(|&e| (e, Fit::default(), 0)).collect(),
            seq: 0,
        }
    }

    /// A batch of `folios` moved by `engine` took `wall_us` and `cpu_ns` of guest CPU.
    pub fn observe(&mut self, engine: EngineKind, folios: u32, wall_us: u64, cpu_ns: u64) {
        if folios == 0 {
            return;
        }
        self.seq += 1;
        let seq = self.seq;
        if let Some((_, f, _)) = self.fits.iter_mut().find(|(e, _, _)| *e == engine) {
            f.add(f64::from(folios), wall_us as f64 + cpu_ns as f64 / 1e3, seq);
        }
    }

    /// Predicted cost (us) of a batch of `folios` on `engine` (None before any measurement).
    pub fn predict(&self, engine: EngineKind, folios: u32) -> Option<f64> {
        let (_, f, _) = self.fits.iter().find(|(e, _, _)| *e == engine)?;
        (f.batches > 0).then(|| {
            let (a, b) = f.line();
            a + b * f64::from(folios)
        })
    }

    /// The engine for the next batch of `folios`.
    pub fn choose(&mut self, folios: u32) -> EngineKind {
        let i = self.pick(folios);
        match self.fits.get_mut(i) {
            Some((e, _, chosen)) => {
                *chosen += 1;
                *e
            }
            None => EngineKind::Cpu,
        }
    }

    fn pick(&self, folios: u32) -> usize {
        if let Some(i) = self.fits.iter().position(|(_, f, _)| f.batches < EXPLORE) {
            return i;
        }
        let decided = self.fits.iter().map(|(_, f, _)| f.batches).sum::<u64>();
        if self.fits.len() > 1 && decided % REFRESH == REFRESH - 1 {
            // Re-measure the engine heard from longest ago.
            return (0..self.fits.len())
                .min_by_key(|&i| self.fits[i].1.last_seq)
                .unwrap_or(0);
        }
        (0..self.fits.len())
            .min_by(|&i, &j| {
                let c = |k: usize| self.predict(self.fits[k].0, folios).unwrap_or(f64::MAX);
                c(i).total_cmp(&c(j))
            })
            .unwrap_or(0)
    }

    /// Each engine's fit and how often it was chosen.
    pub fn estimates(&self) -> Vec<EngineEstimate> {
        self.fits
            .iter()
            .map(|(e, f, chosen)| {
                let (fixed_us, per_folio_us) = if f.batches > 0 { f.line() } else { (0.0, 0.0) };
                EngineEstimate {
                    engine: *e,
                    batches: f.batches,
                    fixed_us,
                    per_folio_us,
                    chosen: *chosen,
                }
            })
            .collect()
    }
}

/// Which way a batch went.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Node 1 -> node 0.
    Promote,
    /// Node 0 -> node 1.
    Demote,
}

/// What one owner (workload, cgroup) was charged.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct OwnerCost {
    pub owner: String,
    pub promoted: u64,
    pub demoted: u64,
    pub bytes: u64,
    /// Guest CPU seconds and wall seconds of the batches, by share of folios.
    pub cpu_s: f64,
    pub wall_s: f64,
}

/// Migration cost charged to owners.
#[derive(Debug, Default)]
pub struct Attribution {
    owners: BTreeMap<String, OwnerCost>,
}

impl Attribution {
    /// A batch moved `dir`: `owners` names the owner of each folio moved; the batch's
    /// `cpu_ns` and `wall_us` are split by folio count.
    pub fn charge(
        &mut self,
        owners: &[&str],
        dir: Direction,
        folio_bytes: u64,
        cpu_ns: u64,
        wall_us: u64,
    ) {
        if owners.is_empty() {
            return;
        }
        let mut counts: BTreeMap<&str, u64> = BTreeMap::new();
        for o in owners {
            *counts.entry(o).or_default() += 1;
        }
        let n = owners.len() as f64;
        for (o, k) in counts {
            let c = self
                .owners
                .entry(o.to_owned())
                .or_insert_with(|| OwnerCost {
                    owner: o.to_owned(),
                    ..OwnerCost::default()
                });
            match dir {
                Direction::Promote => c.promoted += k,
                Direction::Demote => c.demoted += k,
            }
            c.bytes += k * folio_bytes;
            let share = k as f64 / n;
            c.cpu_s += cpu_ns as f64 / 1e9 * share;
            c.wall_s += wall_us as f64 / 1e6 * share;
        }
    }

    pub fn owners(&self) -> Vec<OwnerCost> {
        self.owners.values().cloned().collect()
    }
}

/// Jain's fairness index of the owners' promotions (1: equal; 1/n: one took everything).
pub fn fairness(promoted: &[u64]) -> f64 {
    let s: f64 = promoted.iter().map(|&x| x as f64).sum();
    let q: f64 = promoted.iter().map(|&x| (x as f64).powi(2)).sum();
    if q == 0.0 {
        return 1.0;
    }
    s * s / (promoted.len() as f64 * q)
}

/// Bytes below which one more copy thread does not pay for its start and join.
pub const BYTES_PER_THREAD: u64 = 256 << 10;

/// CPU copy threads for a batch of `batch_bytes` with `idle_tenths` tenths of a CPU (from
/// /proc/stat) left idle: one per [`BYTES_PER_THREAD`], at most one per idle CPU (rounded
/// down), never fewer than one nor more than `max`.
pub fn copy_threads(batch_bytes: u64, idle_tenths: u32, max: u32) -> u32 {
    let by_size = (batch_bytes / BYTES_PER_THREAD).max(1);
    let by_cpu = u64::from(idle_tenths / 10).max(1);
    by_size.min(by_cpu).min(u64::from(max.max(1))) as u32
}

/// (idle, total) jiffies of the aggregate `cpu ` line of `/proc/stat` (idle counts idle and
/// iowait; see Documentation/filesystems/proc.rst).
pub fn parse_proc_stat(text: &str) -> Option<(u64, u64)> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let idle = v.get(3)? + v.get(4).copied().unwrap_or(0);
    Some((idle, v.iter().sum()))
}

/// CPUs left idle since the previous look, in tenths of a CPU.
#[derive(Debug)]
pub struct IdleMeter {
    last: Option<(u64, u64)>,
    cpus: u32,
}

impl Default for IdleMeter {
    fn default() -> Self {
        Self {
            last: None,
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
        }
    }
}

impl IdleMeter {
    /// Idle tenths of a CPU since the previous call (all CPUs idle on the first).
    pub fn idle_tenths(&mut self) -> u32 {
        let now = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|t| parse_proc_stat(&t));
        self.idle_since(now)
    }

    /// Idle tenths of a CPU between the previous reading and `now` ((idle, total) jiffies,
    /// None when /proc/stat could not be read). Idle counts iowait, which can go down
    /// (Documentation/filesystems/proc.rst): a drop reads as no idle time, not an underflow.
    fn idle_since(&mut self, now: Option<(u64, u64)>) -> u32 {
        let out = match (self.last, now) {
            (Some((i0, t0)), Some((i1, t1))) if t1 > t0 => {
                (i1.saturating_sub(i0) as f64 / (t1 - t0) as f64 * f64::from(self.cpus) * 10.0)
                    as u32
            }
            _ => self.cpus * 10,
        };
        self.last = now.or(self.last);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Batches cost `fixed + per * n` exactly, all of it wall time.
    fn feed(m: &mut CostModel, e: EngineKind, fixed: u64, per: u64, sizes: &[u32]) {
        for &n in sizes {
            m.observe(e, n, fixed + per * u64::from(n), 0);
        }
    }

    #[test]
    fn the_fit_recovers_fixed_and_per_folio_costs() {
        let mut m = CostModel::new(&[EngineKind::Sdxi]);
        feed(&mut m, EngineKind::Sdxi, 500, 3, &[64, 512, 128, 1024, 256]);
        let e = &m.estimates()[0];
        assert!((e.fixed_us - 500.0).abs() < 1.0, "{e:?}");
        assert!((e.per_folio_us - 3.0).abs() < 0.01, "{e:?}");
        assert_eq!(
            m.predict(EngineKind::Sdxi, 100).map(f64::round),
            Some(800.0)
        );
    }

    #[test]
    fn cpu_time_counts_as_cost() {
        let mut m = CostModel::new(&[EngineKind::Cpu]);
        m.observe(EngineKind::Cpu, 10, 100, 50_000);
        assert_eq!(m.predict(EngineKind::Cpu, 10).map(f64::round), Some(150.0));
    }

    #[test]
    fn each_engine_is_tried_then_the_cheaper_one_wins_by_batch_size() {
        // DMA: 2000 us per batch + 1 us per folio; CPU: 10 us per folio.
        // Break-even near 222 folios: small batches to the CPU, large ones to DMA.
        let mut m = CostModel::new(&[EngineKind::Sdxi, EngineKind::Cpu]);
        let mut order = Vec::new();
        for _ in 0..4 {
            let e = m.choose(64);
            order.push(e);
            let (f, p) = if e == EngineKind::Sdxi {
                (2000, 1)
            } else {
                (0, 10)
            };
            feed(
                &mut m,
                e,
                f,
                p,
                &[if order.len() % 2 == 0 { 512 } else { 64 }],
            );
        }
        assert_eq!(
            order,
            vec![
                EngineKind::Sdxi,
                EngineKind::Sdxi,
                EngineKind::Cpu,
                EngineKind::Cpu
            ],
            "exploration first"
        );
        assert_eq!(m.choose(64), EngineKind::Cpu);
        assert_eq!(m.choose(1024), EngineKind::Sdxi);
    }

    #[test]
    fn a_slowed_engine_loses_and_the_refresh_notices_recovery() {
        let mut m = CostModel::new(&[EngineKind::Sdxi, EngineKind::Cpu]);
        feed(&mut m, EngineKind::Sdxi, 0, 1, &[512, 256]);
        feed(&mut m, EngineKind::Cpu, 0, 5, &[512, 256]);
        assert_eq!(m.choose(512), EngineKind::Sdxi);
        // The device becomes slow (faults, a dead server's timeouts): the decayed fit follows.
        feed(
            &mut m,
            EngineKind::Sdxi,
            0,
            50,
            &[512, 512, 512, 512, 512, 512],
        );
        assert_eq!(m.choose(512), EngineKind::Cpu);
        // CPU batches from now on; within REFRESH batches SDXi is measured again.
        let mut tried_sdxi = false;
        for _ in 0..REFRESH {
            let e = m.choose(512);
            tried_sdxi |= e == EngineKind::Sdxi;
            let per = if e == EngineKind::Sdxi { 1 } else { 5 };
            feed(&mut m, e, 0, per, &[512]);
        }
        assert!(tried_sdxi, "re-measured: {:?}", m.estimates());
    }

    #[test]
    fn cost_is_attributed_by_share_of_folios() {
        let mut a = Attribution::default();
        a.charge(
            &["a", "a", "a", "b"],
            Direction::Promote,
            4096,
            4_000_000,
            8000,
        );
        a.charge(&["b", "b"], Direction::Demote, 4096, 1_000_000, 1000);
        let o = a.owners();
        assert_eq!(o.len(), 2);
        let (ca, cb) = (&o[0], &o[1]);
        assert_eq!(
            (ca.owner.as_str(), ca.promoted, ca.demoted, ca.bytes),
            ("a", 3, 0, 3 * 4096)
        );
        assert!((ca.cpu_s - 0.003).abs() < 1e-12 && (ca.wall_s - 0.006).abs() < 1e-12);
        assert_eq!((cb.promoted, cb.demoted, cb.bytes), (1, 2, 3 * 4096));
        assert!((cb.cpu_s - 0.002).abs() < 1e-12, "{cb:?}");
        assert!((cb.wall_s - 0.003).abs() < 1e-12, "{cb:?}");
    }

    #[test]
    fn fairness_index() {
        assert!((fairness(&[10, 10]) - 1.0).abs() < 1e-12);
        assert!((fairness(&[10, 0]) - 0.5).abs() < 1e-12);
        assert_eq!(fairness(&[0, 0]), 1.0);
    }

    #[test]
    fn proc_stat_idle_includes_iowait() {
        let t = "cpu  10 1 5 80 4 0 0 0 0 0\ncpu0 5 0 2 40 2 0 0 0 0 0\n";
        assert_eq!(parse_proc_stat(t), Some((84, 100)));
        assert_eq!(parse_proc_stat("intr 1\n"), None);
    }

    #[test]
    fn idle_time_that_went_down_reads_as_none() {
        let mut m = IdleMeter {
            last: None,
            cpus: 4,
        };
        assert_eq!(m.idle_since(Some((500, 1000))), 40, "first look: all idle");
        assert_eq!(m.idle_since(Some((700, 1400))), 20, "half of 4 CPUs idle");
        // iowait went down by more than idle went up.
        assert_eq!(m.idle_since(Some((690, 1500))), 0);
        assert_eq!(m.idle_since(None), 40, "unreadable: all idle");
        assert_eq!(
            m.idle_since(Some((790, 1600))),
            40,
            "the last good reading kept"
        );
    }

    #[test]
    fn copy_threads_follow_size_and_idle_cpu() {
        assert_eq!(copy_threads(4096, 20, 8), 1, "a page: one thread");
        assert_eq!(copy_threads(1 << 30, 20, 8), 2, "1 GiB, 2 idle CPUs");
        assert_eq!(copy_threads(1 << 30, 5, 8), 1, "half a CPU idle: one");
        assert_eq!(copy_threads(1 << 20, 80, 8), 4, "1 MiB: 4 x 256 KiB");
        assert_eq!(copy_threads(1 << 30, 640, 8), 8, "capped");
    }
}
