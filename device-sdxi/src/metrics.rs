//! The SDXi function's counters: one serde struct ([`SdxiMetrics`]), the JSON the server dumps
//! with `--counters` and answers to the control socket's `counters` request (under
//! `"registers"`; the transport adds its own `transport`, `dma` and `interrupts` beside it).
//! Tests read the JSON back into this struct and assert typed deltas.
//!
//! Plain data: the core counts into [`EngineCounters`] values (one per pass, merged into
//! per-thread shards when the pass ends, summed on read), so the hot path touches no shared
//! counter. It implements no spec section; the error classes are those of ERRLOG_HD_ENT
//! ([`crate::mem::ErrClass`]).

use crate::mem::ErrClass;
use crate::regs::FnState;
use serde::{Deserialize, Serialize};

/// Every counter of one SDXi function.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SdxiMetrics {
    /// The BAR0 register interface.
    pub function: FunctionCounters,
    /// The function state (STS0.fn_gsv) when the counters were read.
    pub state: FnState,
    /// Doorbell writes that came through the socket (trapped BAR2 accesses).
    pub doorbells: DoorbellCounters,
    /// The mapped doorbell page's watcher; `null` with trapped doorbells.
    pub mapped_doorbells: Option<WatcherCounters>,
    /// Context passes, descriptors, completions, interrupts and errors.
    pub engine: EngineCounters,
}

/// Counters of the BAR0 register interface.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct FunctionCounters {
    /// BAR0 reads, valid or not.
    pub mmio_reads: u64,
    /// BAR0 writes, valid or not.
    pub mmio_writes: u64,
    /// Accesses with a bad width or alignment, or to unlisted offsets.
    pub guest_errors: u64,
    /// Changes of the function state (GSV).
    pub state_transitions: u64,
}

/// Counters of trapped doorbell writes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DoorbellCounters {
    /// Well-formed doorbell writes (8 bytes at a context's page).
    pub doorbells: u64,
    /// Doorbell writes of another width or off a page start (ignored).
    pub doorbell_guest_errors: u64,
}

/// Counters of the mapped doorbell page's watcher thread.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct WatcherCounters {
    /// Changed doorbell values seen (each rings its context once).
    pub doorbells: u64,
    /// Scans of the page.
    pub scans: u64,
    /// Idle sleeps between scans.
    pub sleeps: u64,
}

/// Counters of the engine (context walk, descriptor execution, admin, error log).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct EngineCounters {
    /// Doorbells for a context number the function has (hints to run a pass).
    pub doorbells: u64,
    /// Context passes that read the context's tables.
    pub passes: u64,
    /// Passes refused (or cut short) because Bus Master Enable was clear.
    pub passes_without_bus_master: u64,
    /// Passes that stopped at a slot below the write index whose vl was still clear.
    pub not_yet_valid: u64,
    /// Passes for a context whose state was not RUN (ignored, nothing logged).
    pub doorbells_not_running: u64,
    /// Descriptors executed, by operation.
    pub descriptors: DescriptorCounters,
    /// Bytes moved by COPY descriptors.
    pub bytes_copied: u64,
    /// CST_BLK signals decremented.
    pub completions: u64,
    /// MSI-X messages delivered (INTR descriptors and error-log interrupts).
    pub interrupts: u64,
    /// Interrupts not delivered (masked, no eventfd, bus mastering off, or dropped on purpose).
    pub interrupts_dropped: u64,
    /// Errors reported, by ERRLOG_HD_ENT class.
    pub errors: ErrorCounters,
    /// Error-log entries written.
    pub errlog_entries: u64,
    /// Errors not logged because the log was full (ERR_STS.ovf).
    pub errlog_overflows: u64,
    /// Faults injected by the fault plan or the `stop_context` request.
    pub faults_injected: u64,
    /// Contexts started by CXT_START_NM / CXT_START_RS.
    pub contexts_started: u64,
    /// Contexts stopped: by CXT_STOP, by an error, or by fault injection.
    pub contexts_stopped: u64,
}

/// Executed descriptors by operation.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DescriptorCounters {
    /// DMAB NOP.
    pub nop: u64,
    /// DMAB COPY.
    pub copy: u64,
    /// IntrGrp INTR.
    pub intr: u64,
    /// Admin group descriptors (admin context only).
    pub admin: u64,
}

/// Errors by class, named as [`ErrClass`] names them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
#[allow(non_snake_case)]
pub struct ErrorCounters {
    /// Unknown type or subtype, admin op on a data context.
    pub InvalidDescriptor: u64,
    /// An address outside what the guest mapped (or a write to a read-only map).
    pub AddressFault: u64,
    /// COPY source and destination overlap.
    pub Overlap: u64,
    /// AKey index beyond the table, or entry not valid (or no interrupt for INTR).
    pub InvalidAkey: u64,
    /// Context table entry, CXT_CTL or context range not valid.
    pub InvalidContext: u64,
    /// Read index beyond the write index, or more outstanding than the ring holds.
    pub RingIndex: u64,
}

impl ErrorCounters {
    fn slot(&mut self, c: ErrClass) -> &mut u64 {
        match c {
            ErrClass::InvalidDescriptor => &mut self.InvalidDescriptor,
            ErrClass::AddressFault => &mut self.AddressFault,
            ErrClass::Overlap => &mut self.Overlap,
            ErrClass::InvalidAkey => &mut self.InvalidAkey,
            ErrClass::InvalidContext => &mut self.InvalidContext,
            ErrClass::RingIndex => &mut self.RingIndex,
        }
    }

    /// Errors of class `c`.
    pub fn get(&self, c: ErrClass) -> u64 {
        let mut copy = *self;
        *copy.slot(c)
    }

    /// Counts one error of class `c`.
    pub fn count(&mut self, c: ErrClass) {
        *self.slot(c) += 1;
    }

    /// Errors of every class.
    pub fn total(&self) -> u64 {
        self.InvalidDescriptor
            + self.AddressFault
            + self.Overlap
            + self.InvalidAkey
            + self.InvalidContext
            + self.RingIndex
    }

    fn add(&mut self, o: &Self) {
        self.InvalidDescriptor += o.InvalidDescriptor;
        self.AddressFault += o.AddressFault;
        self.Overlap += o.Overlap;
        self.InvalidAkey += o.InvalidAkey;
        self.InvalidContext += o.InvalidContext;
        self.RingIndex += o.RingIndex;
    }
}

impl EngineCounters {
    /// Adds `o` into these counters (a pass's counts into a shard, shards into a snapshot).
    pub fn add(&mut self, o: &Self) {
        self.doorbells += o.doorbells;
        self.passes += o.passes;
        self.passes_without_bus_master += o.passes_without_bus_master;
        self.not_yet_valid += o.not_yet_valid;
        self.doorbells_not_running += o.doorbells_not_running;
        self.descriptors.nop += o.descriptors.nop;
        self.descriptors.copy += o.descriptors.copy;
        self.descriptors.intr += o.descriptors.intr;
        self.descriptors.admin += o.descriptors.admin;
        self.bytes_copied += o.bytes_copied;
        self.completions += o.completions;
        self.interrupts += o.interrupts;
        self.interrupts_dropped += o.interrupts_dropped;
        self.errors.add(&o.errors);
        self.errlog_entries += o.errlog_entries;
        self.errlog_overflows += o.errlog_overflows;
        self.faults_injected += o.faults_injected;
        self.contexts_started += o.contexts_started;
        self.contexts_stopped += o.contexts_stopped;
    }

    /// Whether nothing was counted.
    pub fn is_zero(&self) -> bool {
        *self == Self::default()
    }
}

impl SdxiMetrics {
    /// Reads the function's counters back out of the server's whole counters JSON (its
    /// `registers` object), as tests and the harness see them.
    pub fn from_server_json(v: &serde_json::Value) -> Result<Self, serde_json::Error> {
        Self::deserialize(&v["registers"])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every numeric leaf of `v` set to `n`.
    fn fill(v: &mut serde_json::Value, n: u64) {
        match v {
            serde_json::Value::Number(x) => *x = n.into(),
            serde_json::Value::Object(m) => m.values_mut().for_each(|x| fill(x, n)),
            _ => {}
        }
    }

    #[test]
    fn add_sums_every_engine_counter() {
        let mut ones = serde_json::to_value(EngineCounters::default()).expect("json");
        fill(&mut ones, 1);
        let ones: EngineCounters = serde_json::from_value(ones).expect("back");
        let mut sum = EngineCounters::default();
        sum.add(&ones);
        sum.add(&ones);
        let mut twos = serde_json::to_value(EngineCounters::default()).expect("json");
        fill(&mut twos, 2);
        assert_eq!(serde_json::to_value(&sum).expect("json"), twos);
    }

    #[test]
    fn json_keeps_the_names_the_harness_reads() {
        let mut m = SdxiMetrics::default();
        m.engine.descriptors.copy = 3;
        m.engine.errors.count(ErrClass::Overlap);
        let v = serde_json::to_value(&m).expect("json");
        assert_eq!(v["engine"]["descriptors"]["copy"], 3);
        assert_eq!(v["engine"]["errors"]["Overlap"], 1);
        assert_eq!(v["function"]["guest_errors"], 0);
        assert_eq!(v["state"], "Stop");
        assert!(v["mapped_doorbells"].is_null());
        let server = serde_json::json!({ "registers": v });
        assert_eq!(SdxiMetrics::from_server_json(&server).expect("back"), m);
    }

    #[test]
    fn error_counters_follow_their_class() {
        let mut e = ErrorCounters::default();
        e.count(ErrClass::RingIndex);
        e.count(ErrClass::RingIndex);
        e.count(ErrClass::InvalidAkey);
        assert_eq!(e.get(ErrClass::RingIndex), 2);
        assert_eq!(e.get(ErrClass::InvalidAkey), 1);
        assert_eq!(e.total(), 3);
    }
}
