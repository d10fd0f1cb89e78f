//! The memory device's mailbox commands (CXL 3.2 §8.2.10, command interface): one table of
//! opcode, name, input-length rule, command effect and handler, run by [`Mailbox::execute`];
//! the handlers are in `commands`.
//! No I/O and no clock of its own: callers pass the time in ns.
//!
//! Implemented: Events (§8.2.10.2: Get/Clear Event Records, Get/Set Event Interrupt Policy;
//! the logs stay empty, nothing in this model raises events), Timestamp (§8.2.10.4), Logs
//! (§8.2.10.5: Get Supported Logs, Get Log of the Command Effects Log), Identify Memory Device
//! (§8.2.10.9.1.1), Get Partition Info, Get/Set LSA (§8.2.10.9.2), Get Health Info
//! (§8.2.10.9.3.1), Get Poison List, Get Scan Media Capabilities, Scan Media and Get Scan
//! Media Results (§8.2.10.9.4). Scan Media is this device's background command (§8.2.9.4.6):
//! it runs for a time proportional to the range and finds no media error.
//!
//! Left out (return Unsupported): firmware update, partition changes, poison injection,
//! security, sanitize, features, alert configuration, shutdown state, abort.

use crate::metrics::MailboxMetrics;
use crate::spec::payloads::*;
pub use crate::spec::payloads::{opcode, ReturnCode};

mod commands;
use commands::*;
use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, IntoBytes};

pub use crate::spec::memdev::{PAYLOAD_SIZE, PAYLOAD_SIZE_LOG2};
/// Bytes of label storage area.
pub const LSA_SIZE: usize = 4096;
/// Records the poison list could hold (Identify's Poison List Maximum Media Error Records).
pub const POISON_LIST_MAX: u32 = 256;
/// Scan Media's speed in this model: its running time is 20 ms plus 1 ms per 64 MiB.
pub const SCAN_MEDIA_BASE_NS: u64 = 20_000_000;
pub const SCAN_MEDIA_NS_PER_64MIB: u64 = 1_000_000;

/// How long a command's input payload must be.
#[derive(Clone, Copy, Debug)]
pub enum InputLen {
    Exactly(usize),
    /// A fixed header and a tail the handler checks.
    AtLeast(usize),
    /// Either length (an optional trailing field).
    OneOf(usize, usize),
}

impl InputLen {
    fn accepts(self, n: usize) -> bool {
        match self {
            InputLen::Exactly(l) => n == l,
            InputLen::AtLeast(l) => n >= l,
            InputLen::OneOf(a, b) => n == a || n == b,
        }
    }
}

/// What a handler did: the output length, or a background operation of this many ns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reply {
    Done(usize),
    Background { duration_ns: u64 },
}

type Handler = fn(&mut Mailbox, &[u8], &mut [u8], u64) -> Result<Reply, ReturnCode>;

/// One row of the command table.
#[derive(Clone, Copy)]
pub struct Command {
    pub opcode: u16,
    pub name: &'static str,
    pub input: InputLen,
    /// Command Effect as reported in the CEL.
    pub effect: u16,
    handler: Handler,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:#06x} {}", self.opcode, self.name)
    }
}

use effect::*;
use opcode::*;

/// The command set, in opcode order; its rows are also the Command Effects Log.
#[rustfmt::skip]
pub const COMMANDS: &[Command] = &[
    cmd(GET_EVENT_RECORDS, "Get Event Records", InputLen::Exactly(1), 0, get_event_records),
    cmd(CLEAR_EVENT_RECORDS, "Clear Event Records", InputLen::AtLeast(6), IMMEDIATE_LOG_CHANGE, clear_event_records),
    cmd(GET_EVENT_INTERRUPT_POLICY, "Get Event Interrupt Policy", InputLen::Exactly(0), 0, get_event_interrupt_policy),
    cmd(SET_EVENT_INTERRUPT_POLICY, "Set Event Interrupt Policy", InputLen::OneOf(4, 5), IMMEDIATE_CONFIG_CHANGE, set_event_interrupt_policy),
    cmd(GET_TIMESTAMP, "Get Timestamp", InputLen::Exactly(0), 0, get_timestamp),
    cmd(SET_TIMESTAMP, "Set Timestamp", InputLen::Exactly(8), IMMEDIATE_POLICY_CHANGE, set_timestamp),
    cmd(GET_SUPPORTED_LOGS, "Get Supported Logs", InputLen::Exactly(0), 0, get_supported_logs),
    cmd(GET_LOG, "Get Log", InputLen::Exactly(0x18), 0, get_log),
    cmd(IDENTIFY_MEMORY_DEVICE, "Identify Memory Device", InputLen::Exactly(0), 0, identify),
    cmd(GET_PARTITION_INFO, "Get Partition Info", InputLen::Exactly(0), 0, get_partition_info),
    cmd(GET_LSA, "Get LSA", InputLen::Exactly(8), 0, get_lsa),
    cmd(SET_LSA, "Set LSA", InputLen::AtLeast(8), IMMEDIATE_CONFIG_CHANGE | IMMEDIATE_DATA_CHANGE, set_lsa),
    cmd(GET_HEALTH_INFO, "Get Health Info", InputLen::Exactly(0), 0, get_health_info),
    cmd(GET_POISON_LIST, "Get Poison List", InputLen::Exactly(0x10), 0, get_poison_list),
    cmd(GET_SCAN_MEDIA_CAPABILITIES, "Get Scan Media Capabilities", InputLen::Exactly(0x10), 0, get_scan_media_caps),
    cmd(SCAN_MEDIA, "Scan Media", InputLen::Exactly(0x11), BACKGROUND_OPERATION, scan_media),
    cmd(GET_SCAN_MEDIA_RESULTS, "Get Scan Media Results", InputLen::Exactly(0), 0, get_scan_media_results),
];

const fn cmd(
    opcode: u16,
    name: &'static str,
    input: InputLen,
    effect: u16,
    handler: Handler,
) -> Command {
    Command {
        opcode,
        name,
        input,
        effect,
        handler,
    }
}

/// The command with this opcode, if the device implements it.
pub fn command(opcode: u16) -> Option<&'static Command> {
    COMMANDS.iter().find(|c| c.opcode == opcode)
}

/// What the memdev reports about itself.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct MemdevIdentity {
    /// Volatile capacity in bytes (a multiple of 256 MiB).
    pub capacity: u64,
    /// FW Revision, ASCII (at most 16 bytes).
    pub fw_revision: String,
}

/// A background operation in progress or finished (§8.2.9.4.6-7).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Background {
    pub opcode: u16,
    pub started_ns: u64,
    pub duration_ns: u64,
    /// Return code once complete.
    pub done: Option<ReturnCode>,
}

impl Background {
    /// Percentage Complete at `now`.
    pub fn percent(&self, now: u64) -> u8 {
        if self.done.is_some() {
            return 100;
        }
        let e = now.saturating_sub(self.started_ns);
        (u128::from(e) * 100 / u128::from(self.duration_ns.max(1))).min(99) as u8
    }
}

/// The mailbox's command state: what survives between commands.
#[derive(Debug)]
pub struct Mailbox {
    identity: MemdevIdentity,
    lsa: Vec<u8>,
    /// (timestamp set by the host, device time when it was set).
    timestamp: Option<(u64, u64)>,
    event_policy: EventInterruptPolicy,
    background: Option<Background>,
    /// Range of the Scan Media in progress (DPA, bytes).
    scanning: Option<(u64, u64)>,
    /// Range of the last completed Scan Media.
    scanned: Option<(u64, u64)>,
    pub counters: MailboxMetrics,
}

/// The result of one command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub rc: ReturnCode,
    pub out_len: usize,
}

impl Mailbox {
    pub fn new(identity: MemdevIdentity) -> Self {
        Self {
            identity,
            lsa: vec![0; LSA_SIZE],
            timestamp: None,
            event_policy: EventInterruptPolicy::default(),
            background: None,
            scanning: None,
            scanned: None,
            counters: MailboxMetrics::default(),
        }
    }

    pub fn identity(&self) -> &MemdevIdentity {
        &self.identity
    }

    /// Back to the reset state (the LSA is non-volatile and keeps its contents).
    pub fn reset(&mut self) {
        self.timestamp = None;
        self.event_policy = EventInterruptPolicy::default();
        self.background = None;
        self.scanning = None;
        self.scanned = None;
    }

    /// The background operation, brought up to date at `now`.
    pub fn background(&mut self, now: u64) -> Option<Background> {
        if let Some(bg) = self.background.as_mut() {
            if bg.done.is_none() && now.saturating_sub(bg.started_ns) >= bg.duration_ns {
                bg.done = Some(ReturnCode::Success);
                self.counters.outcomes.background_completed += 1;
                if bg.opcode == SCAN_MEDIA {
                    self.scanned = self.scanning.take();
                }
            }
        }
        self.background
    }

    fn background_running(&mut self, now: u64) -> bool {
        self.background(now).is_some_and(|b| b.done.is_none())
    }

    /// Counts a command refused before it reached the table (its length field is past the
    /// payload registers) and returns `rc`.
    pub fn refuse(&mut self, rc: ReturnCode) -> ReturnCode {
        self.counters.outcomes.commands += 1;
        self.failed(rc)
    }

    /// Counts a failed command by its return code.
    fn failed(&mut self, rc: ReturnCode) -> ReturnCode {
        let c = &mut self.counters.outcomes;
        c.failed += 1;
        match rc {
            ReturnCode::Unsupported => c.unsupported += 1,
            ReturnCode::InvalidPayloadLength => c.invalid_payload_length += 1,
            ReturnCode::Busy => c.busy += 1,
            _ => {}
        }
        rc
    }

    /// Runs `opcode` on the `input` payload; the output goes to `out` (the payload area).
    pub fn execute(&mut self, opcode: u16, input: &[u8], out: &mut [u8], now: u64) -> Outcome {
        self.counters.outcomes.commands += 1;
        let fail = |m: &mut Self, rc: ReturnCode| Outcome {
            rc: m.failed(rc),
            out_len: 0,
        };
        let Some(c) = command(opcode) else {
            tracing::debug!(
                opcode = format_args!("{opcode:#06x}"),
                "mailbox: unsupported command"
            );
            return fail(self, ReturnCode::Unsupported);
        };
        *self
            .counters
            .by_command
            .entry(std::borrow::Cow::Borrowed(c.name))
            .or_default() += 1;
        if input.len() > PAYLOAD_SIZE || !c.input.accepts(input.len()) {
            return fail(self, ReturnCode::InvalidPayloadLength);
        }
        let background = c.effect & BACKGROUND_OPERATION != 0;
        if background && self.background_running(now) {
            return fail(self, ReturnCode::Busy);
        }
        let n = out.len().min(PAYLOAD_SIZE);
        let out = &mut out[..n];
        match (c.handler)(self, input, out, now) {
            Ok(Reply::Done(n)) => {
                self.counters.outcomes.succeeded += 1;
                Outcome {
                    rc: ReturnCode::Success,
                    out_len: n,
                }
            }
            Ok(Reply::Background { duration_ns }) => {
                self.counters.outcomes.background_started += 1;
                self.background = Some(Background {
                    opcode,
                    started_ns: now,
                    duration_ns,
                    done: None,
                });
                Outcome {
                    rc: ReturnCode::BackgroundCommandStarted,
                    out_len: 0,
                }
            }
            Err(rc) => fail(self, rc),
        }
    }

    fn capacity_units(&self) -> u64 {
        self.identity.capacity / CAPACITY_UNIT
    }

    /// Checks a DPA range (64-byte aligned address, length in 64-byte lines) against capacity.
    fn dpa_range(&self, addr: u64, lines: u64) -> Result<(u64, u64), ReturnCode> {
        if !addr.is_multiple_of(64) || lines == 0 {
            return Err(ReturnCode::InvalidInput);
        }
        let len = lines.checked_mul(64).ok_or(ReturnCode::InvalidInput)?;
        match addr.checked_add(len) {
            Some(end) if end <= self.identity.capacity => Ok((addr, len)),
            _ => Err(ReturnCode::InvalidPhysicalAddress),
        }
    }
}
