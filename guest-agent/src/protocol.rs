//! The harness <-> guest-agent protocol: JSON lines over a dedicated serial port (ttyS1).
//!
//! Every message carries the protocol version `v`. The agent speaks first with
//! [`AgentMessage::Hello`]; the harness then sends [`HostMessage`]s, each answered by exactly one
//! [`AgentMessage::Response`] with the same `id`. Unknown fields are ignored, so adding fields
//! is compatible; changing or removing one bumps [`PROTOCOL_VERSION`].

use serde::{Deserialize, Serialize};

pub const PROTOCOL_VERSION: u32 = 1;

/// Kernel command-line key carrying a request the agent runs at boot, before its hello
/// ([`Request::Autorun`] fetches the reply): the request's JSON, hex-encoded (the command
/// line has no quoting).
pub const AUTORUN_PARAM: &str = "tierbed.autorun";

/// `request` as the value of [`AUTORUN_PARAM`].
pub fn encode_autorun(request: &Request) -> String {
    let json = serde_json::to_vec(request).unwrap_or_default();
    json.iter().map(|b| format!("{b:02x}")).collect()
}

/// The request in a kernel command line's [`AUTORUN_PARAM`], if there is one.
pub fn decode_autorun(cmdline: &str) -> Option<Result<Request, String>> {
    let hex = cmdline
        .split_whitespace()
        .find_map(|a| a.strip_prefix(AUTORUN_PARAM)?.strip_prefix('='))?;
    let bytes: Result<Vec<u8>, String> = (0..hex.len() / 2)
        .map(|i| {
            hex.get(2 * i..2 * i + 2)
                .and_then(|d| u8::from_str_radix(d, 16).ok())
                .ok_or_else(|| format!("{AUTORUN_PARAM}: not hex at byte {i}"))
        })
        .collect();
    Some(bytes.and_then(|b| {
        if hex.len() % 2 != 0 {
            return Err(format!("{AUTORUN_PARAM}: odd number of hex digits"));
        }
        serde_json::from_slice(&b).map_err(|e| format!("{AUTORUN_PARAM}: {e}"))
    }))
}

/// Host -> guest.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HostMessage {
    pub v: u32,
    pub id: u64,
    #[serde(flatten)]
    pub request: Request,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "snake_case")]
pub enum Request {
    Ping,
    /// Enumerate PCI functions, NUMA nodes and memory tiers; bind both devices to vfio-pci
    /// and read their identity registers.
    Inventory,
    /// Initialise the SDXi function from userspace and copy buffers of these sizes through it,
    /// checking every byte.
    SdxiCopy {
        sizes: Vec<u64>,
    },
    /// Run a hot-page workload on node 1 with the CHMU enabled and report what it found.
    ChmuHot {
        hot_pages: u32,
        cold_pages: u32,
        rounds: u32,
        threshold: u32,
        /// CFG1 epoch scale (1 = 100 us ... 5 = 1 s) and multiplier.
        epoch_scale: u8,
        epoch_mult: u16,
        /// Chooses which of the workload's pages are hot (a seeded permutation).
        #[serde(default)]
        seed: u64,
        /// For a deterministic guest (see [`Request::Autorun`]): nothing the host's timing
        /// can change runs before the workload's last access (no draining while it runs),
        /// then the clock is run three epochs on and the hotlist drained once it is still.
        #[serde(default)]
        reproducible: bool,
        /// Which instructions read the hot pages.
        #[serde(default)]
        workload: HotLoop,
    },
    /// The reply of the request given on the kernel command line ([`AUTORUN_PARAM`]), which
    /// the agent ran at boot before its hello, with no input from the host.
    Autorun,
    /// Run the batched migrator: workload on node 1, hotness source, promotion, batches
    /// copied by the chosen engines, every copy verified.
    Migrate {
        spec: Box<crate::spec::MigrateSpec>,
    },
    /// Copy benchmark: engines x folio sizes x batch sizes.
    MigrateBench {
        spec: crate::spec::BenchSpec,
    },
    /// Answer, then exit (the init script powers the guest off).
    Shutdown,
}

/// How the chmu-hot workload reads its hot pages (`guest_agent::hot_loops`): each makes the
/// same number of reads of every hot page per round, through different instructions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HotLoop {
    /// 64 distinct load instructions per page, one per line.
    #[default]
    Sites64,
    /// One load instruction gathering every line of the hot set (`sum += base[offset[i]]`).
    IndexedLoad,
    /// One `rep movsb` copying a line of each hot page.
    RepMovsb,
    /// One `mov reg, [reg]` following a chain through every line of the hot set.
    PointerChase,
}

impl HotLoop {
    pub const ALL: [HotLoop; 4] = [
        HotLoop::Sites64,
        HotLoop::IndexedLoad,
        HotLoop::RepMovsb,
        HotLoop::PointerChase,
    ];

    /// The name used in scenarios and on the wire.
    pub fn name(self) -> &'static str {
        match self {
            HotLoop::Sites64 => "sites64",
            HotLoop::IndexedLoad => "indexed_load",
            HotLoop::RepMovsb => "rep_movsb",
            HotLoop::PointerChase => "pointer_chase",
        }
    }
}

impl std::str::FromStr for HotLoop {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Self::ALL.iter().map(|k| k.name()).collect();
                format!("unknown hot-set workload {s:?} (use {})", names.join(", "))
            })
    }
}

/// Guest -> host.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AgentMessage {
    Hello {
        v: u32,
        agent_version: String,
        kernel_release: String,
        /// Guest uptime when the agent started (seconds).
        uptime_s: f64,
    },
    Response {
        v: u32,
        id: u64,
        #[serde(flatten)]
        result: Outcome,
    },
    /// Driver bring-up mode: what happened to the user's modules and script (the devices are
    /// left unclaimed for the user's driver).
    Bringup {
        v: u32,
        /// Lines `ok NAME` or `failed NAME: message`, in load order.
        modules: Vec<String>,
        /// The script's exit code (None without a script, or when it was killed).
        exit_code: Option<i32>,
        /// The script's standard output and error, interleaved.
        output: String,
    },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Ok(Reply),
    Error(String),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum Reply {
    Pong,
    Inventory(Box<Inventory>),
    SdxiCopy(SdxiCopyReport),
    ChmuHot(ChmuHotReport),
    Migrate(Box<crate::spec::MigrateReport>),
    MigrateBench(crate::spec::BenchReport),
    ShuttingDown,
}

/// What the guest's CHMU driver found for a workload with a known hot set.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChmuHotReport {
    /// The monitored range (DVSEC Range 1).
    pub hpa_base: u64,
    pub size: u64,
    /// Workload pages that landed in the monitored range.
    pub pages_on_node1: u64,
    pub hot_pages: u64,
    pub cold_pages: u64,
    /// Hot pages that appeared in the hotlist.
    pub hot_found: u64,
    /// Cold pages (one access each) that appeared in the hotlist.
    pub cold_reported: u64,
    /// Hotlist entries drained, and distinct units among them.
    pub entries: u64,
    pub distinct_units: u64,
    pub workload_micros: u64,
    /// Guest-physical addresses of the hot pages (the harness can check them itself).
    pub hot_gpas: Vec<u64>,
    /// Summed hotlist counts of each hot page, in workload order.
    pub hot_counts: Vec<u64>,
    /// Every entry drained, in hotlist order: (guest-physical address of the unit, count).
    #[serde(default)]
    pub hotlist: Vec<(u64, u64)>,
    /// The workload's seed and whether it ran in the reproducible way.
    #[serde(default)]
    pub seed: u64,
    #[serde(default)]
    pub reproducible: bool,
    /// Which instructions read the hot pages, and how many reads each hot page had while the
    /// CHMU was counting (its true access count).
    #[serde(default)]
    pub workload: HotLoop,
    #[serde(default)]
    pub accesses_per_hot_page: u64,
}

/// One copy through the SDXi device, checked in the guest.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyResult {
    pub bytes: u64,
    /// The completion block's signal reached 0.
    pub completed: bool,
    /// The completion block's er flag.
    pub error_flag: bool,
    pub mismatched_bytes: u64,
    /// Doorbell to completion seen by the guest.
    pub micros: u64,
}

/// What the guest's SDXi driver saw.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SdxiCopyReport {
    pub init_micros: u64,
    pub results: Vec<CopyResult>,
    /// MSI-X vector 1 fired after the final INTR descriptor.
    pub interrupt_received: bool,
    pub interrupt_micros: u64,
    /// MMIO_ERR_WRT after the run.
    pub errlog_entries: u64,
    /// Where the DMA buffer sits in the device's (IOVA) address space.
    pub dma_iova: u64,
    /// Doorbell-to-completion of one NOP as the guest sees it (write of the doorbell to the
    /// completion block reaching 0, polled): median and 99th percentile over the samples, ns.
    #[serde(default)]
    pub doorbell_nop_median_ns: u64,
    #[serde(default)]
    pub doorbell_nop_p99_ns: u64,
    #[serde(default)]
    pub doorbell_nop_samples: u64,
}

/// What the guest sees.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Inventory {
    pub kernel_release: String,
    pub cmdline: String,
    pub nodes: Vec<NumaNode>,
    pub memory_tiers: Vec<MemoryTier>,
    pub pci: Vec<PciFunction>,
    /// Modules loaded (from /proc/modules).
    pub modules: Vec<String>,
    pub sdxi: Option<Probe<SdxiIdentity>>,
    pub chmu: Option<Probe<ChmuIdentity>>,
}

impl Inventory {
    /// The memory tier (its id: higher is slower) holding `node`.
    pub fn tier_of(&self, node: u32) -> Option<u32> {
        self.memory_tiers
            .iter()
            .find(|t| t.nodes.contains(&node))
            .map(|t| t.id)
    }

    pub fn node(&self, id: u32) -> Option<&NumaNode> {
        self.nodes.iter().find(|n| n.id == id)
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NumaNode {
    pub id: u32,
    pub cpus: Vec<u32>,
    pub mem_total_kib: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryTier {
    /// N of `memory_tierN` (abstract distance / chunk size): higher is slower.
    pub id: u32,
    pub nodes: Vec<u32>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PciFunction {
    pub bdf: String,
    pub vendor: u16,
    pub device: u16,
    pub class: u32,
    pub driver: Option<String>,
    pub iommu_group: Option<u32>,
    pub numa_node: Option<i32>,
}

/// A device driver's result: the identity read, or why it could not be.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Probe<T> {
    pub bdf: String,
    #[serde(flatten)]
    pub result: ProbeResult<T>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProbeResult<T> {
    Found(T),
    Failed(String),
}

/// BAR and interrupt facts as vfio-pci reports them in the guest.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VfioFacts {
    pub iommu_group: u32,
    /// (BAR index, size, mmap-able) of every non-empty BAR.
    pub bars: Vec<(u8, u64, bool)>,
    pub msix_vectors: u32,
    pub config_size: u64,
}

/// SDXi identity registers read through the BAR0 mmap.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SdxiIdentity {
    pub vfio: VfioFacts,
    pub version_major: u8,
    pub version_minor: u8,
    pub cap0: u64,
    pub cap1: u64,
    pub sts0: u64,
    pub max_cxt: u16,
    pub db_stride_bytes: u64,
}

/// A Register Locator entry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterBlock {
    pub block_id: u8,
    pub bar: u8,
    pub offset: u64,
}

/// CHMU identity read through config space (DVSECs) and the BAR mmap.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChmuIdentity {
    pub vfio: VfioFacts,
    pub register_blocks: Vec<RegisterBlock>,
    /// DVSEC 0 Range 1: the monitored memory's guest-physical base and size.
    pub hpa_base: u64,
    pub size: u64,
    pub common_cap0: u64,
    pub common_cap1: u64,
    pub instances: u8,
    pub instance_cap0: Vec<u64>,
    pub instance_cap1: Vec<u64>,
    pub hotlist_size: u16,
    pub counter_width: u8,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_message_wire_format() {
        let m = HostMessage {
            v: PROTOCOL_VERSION,
            id: 7,
            request: Request::Inventory,
        };
        let s = serde_json::to_string(&m).expect("serialize");
        assert_eq!(s, r#"{"v":1,"id":7,"request":"inventory"}"#);
        let back: HostMessage = serde_json::from_str(&s).expect("parse");
        assert_eq!(back, m);
    }

    #[test]
    fn response_round_trips_and_ignores_unknown_fields() {
        let m = AgentMessage::Response {
            v: 1,
            id: 3,
            result: Outcome::Ok(Reply::Pong),
        };
        let s = serde_json::to_string(&m).expect("serialize");
        assert_eq!(
            s,
            r#"{"type":"response","v":1,"id":3,"ok":{"reply":"pong"}}"#
        );
        let with_extra = s.replace("\"id\":3", "\"id\":3,\"future\":true");
        assert_eq!(
            serde_json::from_str::<AgentMessage>(&with_extra).expect("parse"),
            m
        );
    }

    #[test]
    fn error_outcome_wire_format() {
        let m = AgentMessage::Response {
            v: 1,
            id: 1,
            result: Outcome::Error("no such device".into()),
        };
        let s = serde_json::to_string(&m).expect("serialize");
        assert!(s.contains(r#""error":"no such device""#), "{s}");
    }

    #[test]
    fn autorun_requests_survive_the_kernel_command_line() {
        let r = Request::ChmuHot {
            hot_pages: 32,
            cold_pages: 256,
            rounds: 300,
            threshold: 4,
            epoch_scale: 2,
            epoch_mult: 1,
            seed: 7,
            reproducible: true,
            workload: HotLoop::PointerChase,
        };
        let v = encode_autorun(&r);
        assert!(v.bytes().all(|b| b.is_ascii_hexdigit()), "{v}");
        // '{' is 0x7b: the JSON text, hex-encoded.
        assert!(v.starts_with("7b"), "{v}");
        let cmdline = format!("console=ttyS0 {AUTORUN_PARAM}={v} quiet");
        assert_eq!(decode_autorun(&cmdline), Some(Ok(r)));
        assert_eq!(decode_autorun("console=ttyS0 tierbed.autorunx=7b"), None);
        assert_eq!(decode_autorun("console=ttyS0"), None);
        let bad = decode_autorun("tierbed.autorun=7g").expect("present");
        assert!(bad.expect_err("not hex").contains("not hex"));
        let odd = decode_autorun("tierbed.autorun=7b7").expect("present");
        assert!(odd.expect_err("odd").contains("odd"));
        let junk = decode_autorun("tierbed.autorun=7b7d").expect("present");
        assert!(junk.is_err(), "{{}} is no request");
    }

    #[test]
    fn hot_loop_names_parse_and_are_the_wire_names() {
        for k in HotLoop::ALL {
            assert_eq!(k.name().parse::<HotLoop>(), Ok(k));
            assert_eq!(
                serde_json::to_string(&k).expect("serialize"),
                format!("\"{}\"", k.name())
            );
        }
        assert!("memcpy"
            .parse::<HotLoop>()
            .expect_err("unknown")
            .contains("indexed_load"));
        // An older harness that sends no workload gets the 64-site loop.
        let old = r#"{"request":"chmu_hot","hot_pages":1,"cold_pages":0,"rounds":1,"threshold":4,"epoch_scale":1,"epoch_mult":1}"#;
        assert!(matches!(
            serde_json::from_str::<Request>(old).expect("parse"),
            Request::ChmuHot {
                workload: HotLoop::Sites64,
                ..
            }
        ));
    }

    #[test]
    fn tier_lookup() {
        let inv = Inventory {
            memory_tiers: vec![
                MemoryTier {
                    id: 4,
                    nodes: vec![0],
                },
                MemoryTier {
                    id: 54,
                    nodes: vec![1],
                },
            ],
            ..Inventory::default()
        };
        assert_eq!(inv.tier_of(1), Some(54));
        assert_eq!(inv.tier_of(2), None);
    }
}
