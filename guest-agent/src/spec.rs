//! What a migration run is asked to do ([`MigrateSpec`], also the `[migrate]` table of a
//! harness scenario file) and what it reports ([`MigrateReport`], [`BenchReport`]). Shared by
//! the agent and the harness, so both read the same field names and defaults.
//!
//! The defaults follow the kernel work the migrator models (see `migrate` for the mapping):
//! pghot's frequency threshold 2, window 3 s, rate limit 65536 MB/s and target node 0;
//! kmigrated's batch of 512 folios (64-1024) and 100 ms wake-up.

use serde::{Deserialize, Serialize};

/// Folio size of the workload's pages.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum FolioSize {
    /// 4 KiB base pages (shmem).
    #[default]
    #[serde(rename = "4k")]
    Base,
    /// 2 MiB huge pages (hugetlbfs).
    #[serde(rename = "2m")]
    Huge,
}

impl FolioSize {
    pub fn bytes(self) -> u64 {
        match self {
            Self::Base => 4096,
            Self::Huge => 2 << 20,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Base => "4k",
            Self::Huge => "2m",
        }
    }
}

/// Which pages the workload favours.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pattern {
    /// Every page equally likely.
    Uniform,
    /// Page ranks follow a Zipf law with exponent `zipf_s` (ranks shuffled over the pages).
    #[default]
    Zipf,
    /// `hot_fraction` of the pages get 90 % of the accesses; the hot set moves every
    /// `phase_ms`.
    Phases,
}

/// The synthetic workload: threads reading and writing a working set placed on node 1.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkloadSpec {
    /// Working-set size in folios.
    pub pages: u32,
    pub folio: FolioSize,
    pub threads: u32,
    pub pattern: Pattern,
    pub zipf_s: f64,
    /// Share of the pages that counts as the hot set (Phases; and the "known hot set" the
    /// report scores sources against for Zipf: the most likely pages).
    pub hot_fraction: f64,
    pub phase_ms: u64,
    /// Percent of accesses that are writes (each an increment of the thread's own counter in
    /// the page, so lost writes are counted exactly).
    pub write_percent: u8,
    pub seed: u64,
}

impl Default for WorkloadSpec {
    fn default() -> Self {
        Self {
            pages: 2048,
            folio: FolioSize::Base,
            threads: 1,
            pattern: Pattern::Zipf,
            zipf_s: 1.0,
            hot_fraction: 0.1,
            phase_ms: 2000,
            write_percent: 20,
            seed: 1,
        }
    }
}

/// Where hotness information comes from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    /// The CXL Hotness Monitoring Unit's hotlist (hardware hints; needs the chmu-tap feed).
    #[default]
    Chmu,
    /// DAMON (virtual-address ops, page-table Accessed bits) through sysfs.
    Damon,
    /// Every workload page is a candidate at once (engine tests and benchmarks).
    All,
    /// No migrator: the kernel's own NUMA balancing in memory-tiering mode finds and
    /// promotes the hot pages (the baseline; see [`KernelSpec`]).
    Kernel,
}

/// The promotion engine (a model of pghot / kpromoted).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PromotionSpec {
    /// Accesses within one window that make a page hot.
    pub threshold: u32,
    pub window_ms: u64,
    /// Promotion rate limit in MB/s (token bucket, one second deep).
    pub rate_limit_mbps: u64,
    pub target_node: u32,
}

impl Default for PromotionSpec {
    fn default() -> Self {
        Self {
            threshold: 2,
            window_ms: 3000,
            rate_limit_mbps: 65536,
            target_node: 0,
        }
    }
}

/// The batching migrator (a model of kmigrated + migrate_pages_batch).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BatchSpec {
    /// Flush at this many folios (64..=1024; 1 for page-at-a-time baselines).
    pub size: u32,
    /// ... or when the oldest candidate has waited this long.
    pub timeout_ms: u64,
    /// Tune the size between 64 and 1024 from measured per-folio cost.
    pub auto_tune: bool,
}

impl Default for BatchSpec {
    fn default() -> Self {
        Self {
            size: 512,
            timeout_ms: 100,
            auto_tune: false,
        }
    }
}

/// Which engine copies a batch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EngineKind {
    /// CPU threads copying (optionally with non-temporal stores).
    Cpu,
    /// The SDXi engine: one COPY descriptor per folio, one doorbell and one interrupt per
    /// batch and channel.
    #[default]
    Sdxi,
    /// The kernel's `move_pages(2)` on the batch (it unmaps, copies and remaps itself).
    MovePages,
}

impl EngineKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::Cpu => "cpu",
            Self::Sdxi => "sdxi",
            Self::MovePages => "move_pages",
        }
    }
}

/// How each batch's engine is chosen.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    Cpu,
    #[default]
    Sdxi,
    MovePages,
    /// SDXi or the CPU, batch by batch, whichever the cost model fed by this run's measured
    /// batch costs predicts cheaper for the batch's size ([`crate::cost_model`]; the seeds'
    /// "DMA vs CPU" question answered by measurement, not a threshold).
    Auto,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineSpec {
    pub policy: Policy,
    /// CPU copy threads; 0 picks them per batch from its size and the CPUs left idle
    /// ([`crate::cost_model::copy_threads`]).
    pub cpu_threads: u32,
    pub nt_stores: bool,
    /// SDXi contexts used as channels (a batch is split across them).
    pub sdxi_channels: u32,
    /// A batch whose DMA has not completed by then falls back to the CPU.
    pub dma_timeout_ms: u64,
}

impl Default for EngineSpec {
    fn default() -> Self {
        Self {
            policy: Policy::Sdxi,
            cpu_threads: 2,
            nt_stores: false,
            sdxi_channels: 1,
            dma_timeout_ms: 10_000,
        }
    }
}

/// A whole migration run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MigrateSpec {
    pub workload: WorkloadSpec,
    pub source: SourceKind,
    pub promotion: PromotionSpec,
    pub batch: BatchSpec,
    pub engine: EngineSpec,
    /// How long the workload runs (ms).
    pub duration_ms: u64,
    /// Period of the node-0 access-fraction time series (ms).
    pub sample_ms: u64,
    /// How often the source is polled (ms): the CHMU hotlist drain, DAMON's region update.
    pub scan_ms: u64,
    /// CHMU: hotlist threshold (unit accesses per epoch) and epoch (CFG1 scale, multiplier).
    pub chmu_threshold: u32,
    pub chmu_epoch_scale: u8,
    pub chmu_epoch_mult: u16,
    /// Which copies the guest checksums (the harness reads every moved folio back anyway).
    pub verify: crate::verify::VerifyMode,
    /// The DRAM budget and demotion (none by default: promotion only).
    pub tiering: crate::budget::TieringSpec,
    /// The kernel's tiering knobs (source `kernel` only).
    pub kernel: KernelSpec,
}

/// The stock kernel's tiering as a baseline (source `kernel`): NUMA balancing in
/// memory-tiering mode (`numa_balancing = 2`, Linux
/// `Documentation/admin-guide/sysctl/kernel.rst`), which samples the workload's pages with
/// hint faults and promotes those it finds hot from the slow tier (node 1) to the CPUs' node;
/// demotion on (`/sys/kernel/mm/numa/demotion_enabled`), so reclaim on node 0 demotes to
/// node 1 instead of dropping (`mm/memory-tiers.c`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KernelSpec {
    /// `/proc/sys/kernel/numa_balancing_promote_rate_limit_MBps`.
    pub rate_limit_mbps: u64,
    /// `/sys/kernel/debug/sched/numa_balancing/hot_threshold_ms`: a page whose hint fault
    /// comes within this long of its scan counts as hot (set only where debugfs is).
    pub hot_threshold_ms: u64,
    /// `scan_delay_ms` and `scan_period_min_ms` in the same directory (None: the kernel's).
    pub scan_delay_ms: Option<u64>,
    pub scan_period_min_ms: Option<u64>,
    pub demotion: bool,
    /// Let the kernel back the workload with transparent huge pages (2 MiB folios, each
    /// promoted by one hint fault); off, the arena keeps 4 KiB pages (`MADV_NOHUGEPAGE`),
    /// the migrator's folio size.
    pub thp: bool,
}

impl Default for KernelSpec {
    fn default() -> Self {
        Self {
            rate_limit_mbps: 65536,
            hot_threshold_ms: 1000,
            scan_delay_ms: None,
            scan_period_min_ms: None,
            demotion: true,
            thp: false,
        }
    }
}

/// What the kernel's tiering did in a `kernel` run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct KernelReport {
    /// Each knob: (path, value written), or why it was not.
    pub settings: Vec<(String, String)>,
    /// `/proc/vmstat` counters over the run (deltas): pgpromote_success,
    /// pgpromote_candidate, numa_hint_faults, numa_pages_migrated, pgdemote_*, ...
    pub vmstat: Vec<(String, u64)>,
    /// pgpromote_success over the run.
    pub pages_promoted: u64,
    /// CPU time the agent spent finding where the pages are (move_pages(2) queries every
    /// 100 ms): the observer's cost, not the kernel's.
    pub observer_cpu_s: f64,
}

/// Guest CPU time over a run: the agent process's user and system time (all threads:
/// workload, migrator, copy threads, and the kernel's work done in their context, such as
/// NUMA hint faults and migrations), and the part the migrator itself spent moving batches
/// (promotions and, under a DRAM budget, demotions).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GuestCpu {
    pub user_s: f64,
    pub system_s: f64,
    pub migrator_s: f64,
}

impl MigrateSpec {
    /// Fills the zero "unset" timing fields with their defaults.
    pub fn normalized(mut self) -> Self {
        if self.duration_ms == 0 {
            self.duration_ms = 6000;
        }
        if self.sample_ms == 0 {
            self.sample_ms = 250;
        }
        if self.scan_ms == 0 {
            self.scan_ms = 50;
        }
        if self.chmu_threshold == 0 {
            self.chmu_threshold = 2;
        }
        if self.chmu_epoch_scale == 0 {
            self.chmu_epoch_scale = 3;
            self.chmu_epoch_mult = 5;
        }
        self
    }

    /// Checks ranges; the error names the field.
    pub fn validate(&self) -> Result<(), String> {
        let w = &self.workload;
        let bad = |f: &str, why: &str| Err(format!("migrate.{f}: {why}"));
        if w.pages == 0 || w.pages > 1 << 20 {
            return bad("workload.pages", "must be 1..=1048576 folios");
        }
        if w.threads == 0 || w.threads > 64 {
            return bad("workload.threads", "must be 1..=64");
        }
        if w.write_percent > 100 {
            return bad("workload.write_percent", "must be 0..=100");
        }
        if !(0.0..=1.0).contains(&w.hot_fraction) || w.hot_fraction == 0.0 {
            return bad("workload.hot_fraction", "must be in (0, 1]");
        }
        if !(w.zipf_s > 0.0 && w.zipf_s < 10.0) {
            return bad("workload.zipf_s", "must be in (0, 10)");
        }
        if self.batch.size == 0 || self.batch.size > 1024 {
            return bad("batch.size", "must be 1..=1024");
        }
        if self.engine.cpu_threads > 64 {
            return bad("engine.cpu_threads", "must be 0 (auto) or 1..=64");
        }
        if self.engine.sdxi_channels == 0 || self.engine.sdxi_channels > 16 {
            return bad("engine.sdxi_channels", "must be 1..=16");
        }
        if self.promotion.threshold == 0 {
            return bad("promotion.threshold", "must be at least 1");
        }
        if self.promotion.target_node != 0 {
            return bad(
                "promotion.target_node",
                "only node 0 (the DRAM tier) is a promotion target in this test bed",
            );
        }
        self.tiering.validate(w.pages)?;
        if self.workload.folio == FolioSize::Huge && self.source == SourceKind::Damon {
            return bad(
                "source",
                "DAMON's virtual-address ops do not report hugetlb pages; use 4k folios",
            );
        }
        if self.workload.folio == FolioSize::Huge && self.source == SourceKind::Kernel {
            return bad(
                "source",
                "NUMA balancing does not migrate hugetlb pages; use 4k folios",
            );
        }
        Ok(())
    }
}

/// Median, 90th and 99th percentile and maximum of a sample (microseconds).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub max: u64,
}

impl Percentiles {
    pub fn of(mut v: Vec<u64>) -> Self {
        if v.is_empty() {
            return Self::default();
        }
        v.sort_unstable();
        let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
        Self {
            count: v.len() as u64,
            p50: at(0.5),
            p90: at(0.9),
            p99: at(0.99),
            max: v[v.len() - 1],
        }
    }
}

/// One batch as the migrator saw it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct BatchStat {
    pub engine: EngineKind,
    pub folios: u32,
    /// Start (ms since the run began), total latency, and when its first folio was usable
    /// again (remapped) (us).
    pub start_ms: u64,
    pub latency_us: u64,
    pub first_folio_us: u64,
    pub copy_us: u64,
    /// Guest CPU time the migration of this batch took (migrator and copy threads), ns.
    pub cpu_ns: u64,
    /// Folios the DMA engine failed (or did not finish) that the CPU copied instead.
    pub fallback_folios: u32,
    /// The node the batch went to (0: promotion, 1: demotion).
    pub to_node: u8,
    /// CPU copy threads the batch used (0: no CPU copy).
    pub copy_threads: u32,
    /// Time the guest spent checksumming the batch (before and after the copy), us: not part
    /// of `latency_us`, `first_folio_us` nor `cpu_ns`.
    pub verify_us: u64,
}

/// Per-engine totals.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EngineSummary {
    pub engine: EngineKind,
    pub batches: u64,
    pub folios: u64,
    pub bytes: u64,
    pub wall_s: f64,
    pub cpu_s: f64,
    /// Guest CPU seconds per GB migrated.
    pub cpu_s_per_gb: f64,
    pub gb_per_s: f64,
}

/// What the hotness source reported, scored against the workload's known hot set.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SourceStats {
    pub source: SourceKind,
    /// Raw records (hotlist entries, DAMON regions) and the folios they named.
    pub records: u64,
    pub folios_reported: u64,
    /// Records that did not name a workload folio (other memory on node 1).
    pub foreign_records: u64,
    pub known_hot: u64,
    /// Known-hot folios the source reported, and reported folios that are not known-hot.
    pub hot_reported: u64,
    pub other_reported: u64,
}

/// Migration correctness, as the guest checked it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct VerifyStats {
    /// Folios whose checksum was taken before the copy (source) and after (destination).
    pub copies_checked: u64,
    pub copy_mismatches: u64,
    /// Writes the workload made, and what the pages' counters add up to (equal: none lost).
    pub writes: u64,
    pub counted_writes: u64,
    /// Write faults that waited for a batch (userfaultfd write-protect events).
    pub writers_blocked: u64,
    pub fallback_folios: u64,
    pub dma_errors: u64,
    /// Batches whose completion interrupt did not come although every copy completed (seen
    /// by polling the completion blocks).
    pub lost_interrupts: u64,
    /// SDXi contexts stopped (by an error, or by the function) and restarted by the driver.
    pub context_restarts: u64,
    /// Folios `move_pages(2)` (query mode) finds on node 0 / node 1 / elsewhere at the end.
    pub on_node0: u64,
    pub on_node1: u64,
    pub on_other: u64,
    /// Promoted folios not on node 0 at the end.
    pub promoted_not_on_node0: u64,
    /// Seconds the guest spent checksumming copies (kept out of the batches' times).
    pub verify_s: f64,
}

/// A promoted folio at the end of the run: its guest-physical address and the checksum of
/// its contents as the workload sees them, so the harness can check the bytes itself.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigratedFolio {
    pub index: u32,
    pub gpa: u64,
    pub checksum: u64,
}

/// The migrator's report.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MigrateReport {
    pub spec: MigrateSpec,
    pub folio_bytes: u64,
    pub folios: u64,
    pub duration_ms: u64,
    pub promoted: u64,
    /// Known-hot folios among the promoted ones.
    pub hot_promoted: u64,
    pub bytes_migrated: u64,
    pub promoted_per_s: f64,
    /// Candidates held back by the rate limit (promotion attempts deferred).
    pub rate_limited: u64,
    /// Promotion batches (demotions are in `tiering.demotion_batches`).
    pub batches: Vec<BatchStat>,
    pub batch_latency_us: Percentiles,
    pub first_folio_us: Percentiles,
    /// Totals per engine over every batch, promotions and demotions.
    pub engines: Vec<EngineSummary>,
    /// (ms since start, share of the workload's accesses that hit a folio on node 0).
    pub node0_fraction: Vec<(u64, f64)>,
    pub accesses: u64,
    pub source: SourceStats,
    pub verify: VerifyStats,
    /// Batch sizes the auto-tuner chose, in order (empty without auto-tuning).
    pub tuned_sizes: Vec<u32>,
    pub migrated: Vec<MigratedFolio>,
    /// Folios that moved and ended on node 1 (demoted), for the harness to read from node
    /// 1's guest RAM.
    pub demoted_folios: Vec<MigratedFolio>,
    /// Demotion under a DRAM budget (None without one).
    pub tiering: Option<crate::budget::TieringReport>,
    /// The `auto` policy's cost model at the end: each engine's fitted cost and how often it
    /// was chosen.
    pub engine_model: Vec<crate::cost_model::EngineEstimate>,
    /// Notes on anything degraded (a source that could not start, etc.).
    pub notes: Vec<String>,
    /// Guest CPU time over the run.
    #[serde(default)]
    pub cpu: GuestCpu,
    /// What the kernel's tiering did (source `kernel`).
    #[serde(default)]
    pub kernel: Option<KernelReport>,
}

/// The copy benchmark: every engine moves the same amount of memory from node 1 to node 0
/// in batches of each size, for each folio size.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BenchSpec {
    pub folios: Vec<FolioSize>,
    pub batch_sizes: Vec<u32>,
    pub engines: Vec<EngineKind>,
    /// Bytes moved per case (rounded up to whole batches; at least one batch).
    pub bytes_4k: u64,
    pub bytes_2m: u64,
    pub cpu_threads: u32,
    pub sdxi_channels: u32,
    /// Verification inside the timed migration (`off` by default, like the kernel): every
    /// moved folio is verified in a separate pass afterwards either way, and that pass's cost
    /// is its own column.
    pub verify: crate::verify::VerifyMode,
}

impl Default for BenchSpec {
    fn default() -> Self {
        Self {
            folios: vec![FolioSize::Base, FolioSize::Huge],
            batch_sizes: vec![1, 64, 512],
            engines: vec![EngineKind::MovePages, EngineKind::Cpu, EngineKind::Sdxi],
            bytes_4k: 4 << 20,
            bytes_2m: 128 << 20,
            cpu_threads: 2,
            sdxi_channels: 1,
            verify: crate::verify::VerifyMode::Off,
        }
    }
}

/// Where a benchmark case's batches spent the mover thread's time, as means per batch (us): the
/// batch move's steps (write-protect, the engine's copy call, remap) and, for the SDXi engine,
/// the phases of its copy call (the copy-offload series' dcbm: prepare descriptors, issue,
/// wait for completion, check the status). Verification is not among them: it is timed apart.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct BatchPhases {
    pub batches: u64,
    /// UFFDIO_WRITEPROTECT calls: protecting the batch, releasing what stayed (and, without
    /// pools, the release after `move_pages(2)`).
    pub write_protect_us: f64,
    /// The engine's copy call in all; for `move_pages(2)`, the system call.
    pub copy_us: f64,
    /// SDXi: arming the completion blocks and writing the descriptors to the ring.
    pub descriptors_us: f64,
    /// SDXi: the doorbell writes.
    pub doorbell_us: f64,
    /// SDXi: from the doorbell until the interrupt (or the completion blocks, polled).
    pub completion_wait_us: f64,
    /// SDXi: reading every completion block for its status.
    pub completion_check_us: f64,
    /// SDXi: wakeups of the waiting thread (interrupts and poll slices).
    pub wakeups: f64,
    /// Mapping the destination slots over the batch (populated), registering the new
    /// mapping for write-protect and waking waiters.
    pub remap_us: f64,
}

/// One (engine, folio size, batch size) case of the benchmark.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct BenchCase {
    pub engine: EngineKind,
    pub folio: FolioSize,
    pub batch: u32,
    pub folios: u64,
    pub bytes: u64,
    pub wall_s: f64,
    pub gb_per_s: f64,
    /// The copy step alone (no write-protect, verification or remap): for move_pages, the
    /// whole system call.
    pub copy_gb_per_s: f64,
    pub cpu_s_per_gb: f64,
    /// Mean time from a batch's start until its first folio is usable again (us).
    pub first_folio_us: f64,
    pub mismatches: u64,
    /// The separate verification pass after the timed migration: folios checked against the
    /// bytes they were filled with, and its guest time per GB.
    pub verified: u64,
    pub verify_s_per_gb: f64,
    /// Throughput relative to move_pages(2) with the same folio and batch size.
    pub vs_move_pages: Option<f64>,
    /// Where the batches' time went.
    #[serde(default)]
    pub phases: BatchPhases,
    pub note: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct BenchReport {
    pub cases: Vec<BenchCase>,
}

/// The checksum both sides compute over a folio's bytes (the harness over guest RAM files).
/// 64-bit words folded with a multiply-rotate; the length is mixed in.
pub fn folio_checksum(bytes: &[u8]) -> u64 {
    let mut h = 0x9e37_79b9_7f4a_7c15u64 ^ bytes.len() as u64;
    let mut chunks = bytes.chunks_exact(8);
    for c in &mut chunks {
        let w = u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        h = (h ^ w).wrapping_mul(0x0000_0100_0000_01b3).rotate_left(23);
    }
    for &b in chunks.remainder() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_defaults_are_the_kernel_defaults() {
        let s = MigrateSpec::default().normalized();
        assert_eq!(s.batch.size, 512);
        assert_eq!(s.promotion.threshold, 2);
        assert_eq!(s.promotion.window_ms, 3000);
        assert_eq!(s.promotion.rate_limit_mbps, 65536);
        assert!(s.validate().is_ok());
    }

    #[test]
    fn spec_parses_from_toml_like_json_and_rejects_unknown_fields() {
        let s: MigrateSpec = serde_json::from_str(
            r#"{"workload":{"pages":64,"folio":"2m","pattern":"phases"},"engine":{"policy":"auto"}}"#,
        )
        .expect("parse");
        assert_eq!(s.workload.folio, FolioSize::Huge);
        assert_eq!(s.workload.pattern, Pattern::Phases);
        assert_eq!(s.engine.policy, Policy::Auto);
        assert!(serde_json::from_str::<MigrateSpec>(r#"{"workload":{"pagez":1}}"#).is_err());
    }

    #[test]
    fn validation_names_the_field() {
        let mut s = MigrateSpec::default();
        s.batch.size = 2000;
        assert!(s.validate().expect_err("too big").contains("batch.size"));
        let mut s = MigrateSpec::default();
        s.workload.folio = FolioSize::Huge;
        s.source = SourceKind::Damon;
        assert!(s
            .validate()
            .expect_err("no DAMON on hugetlb")
            .contains("source"));
    }

    #[test]
    fn percentiles() {
        let p = Percentiles::of((1..=100).collect());
        assert_eq!(
            (p.count, p.p50, p.p90, p.p99, p.max),
            (100, 51, 90, 99, 100)
        );
        assert_eq!(Percentiles::of(Vec::new()), Percentiles::default());
    }

    #[test]
    fn checksum_sees_every_byte_and_the_length() {
        let a = vec![7u8; 4096];
        let base = folio_checksum(&a);
        for i in [0, 1, 7, 8, 4095] {
            let mut b = a.clone();
            b[i] ^= 1;
            assert_ne!(folio_checksum(&b), base, "byte {i}");
        }
        assert_ne!(folio_checksum(&a[..4095]), base);
    }
}
