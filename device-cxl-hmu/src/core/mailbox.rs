//! The memory device's mailbox commands (CXL 3.2 §8.2.10, command interface): one table of
//! opcode, name, input-length rule, command effect and handler, run by [`Mailbox::execute`].
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
use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, IntoBytes};

/// Command return codes (§8.2.10, Command Return Codes table).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
pub enum ReturnCode {
    Success = 0x0000,
    BackgroundCommandStarted = 0x0001,
    InvalidInput = 0x0002,
    Unsupported = 0x0003,
    InternalError = 0x0004,
    Busy = 0x0006,
    InvalidHandle = 0x000e,
    InvalidPhysicalAddress = 0x000f,
    InvalidPayloadLength = 0x0016,
    InvalidLog = 0x0017,
}

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

pub mod opcode {
    pub const GET_EVENT_RECORDS: u16 = 0x0100;
    pub const CLEAR_EVENT_RECORDS: u16 = 0x0101;
    pub const GET_EVENT_INTERRUPT_POLICY: u16 = 0x0102;
    pub const SET_EVENT_INTERRUPT_POLICY: u16 = 0x0103;
    pub const GET_TIMESTAMP: u16 = 0x0300;
    pub const SET_TIMESTAMP: u16 = 0x0301;
    pub const GET_SUPPORTED_LOGS: u16 = 0x0400;
    pub const GET_LOG: u16 = 0x0401;
    pub const IDENTIFY_MEMORY_DEVICE: u16 = 0x4000;
    pub const GET_PARTITION_INFO: u16 = 0x4100;
    pub const GET_LSA: u16 = 0x4102;
    pub const SET_LSA: u16 = 0x4103;
    pub const GET_HEALTH_INFO: u16 = 0x4200;
    pub const GET_POISON_LIST: u16 = 0x4300;
    pub const GET_SCAN_MEDIA_CAPABILITIES: u16 = 0x4303;
    pub const SCAN_MEDIA: u16 = 0x4304;
    pub const GET_SCAN_MEDIA_RESULTS: u16 = 0x4305;
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

/// Writes `v` at the start of `out`; the payload area always holds every fixed output.
fn put<T: IntoBytes + zerocopy::Immutable>(out: &mut [u8], v: &T) -> Result<Reply, ReturnCode> {
    let b = v.as_bytes();
    out.get_mut(..b.len())
        .ok_or(ReturnCode::InternalError)?
        .copy_from_slice(b);
    Ok(Reply::Done(b.len()))
}

fn read<T: FromBytes>(input: &[u8]) -> Result<T, ReturnCode> {
    T::read_from_prefix(input)
        .map(|(v, _)| v)
        .map_err(|_| ReturnCode::InvalidPayloadLength)
}

fn get_event_records(
    _: &mut Mailbox,
    input: &[u8],
    out: &mut [u8],
    _: u64,
) -> Result<Reply, ReturnCode> {
    if input[0] >= EVENT_LOGS {
        return Err(ReturnCode::InvalidInput);
    }
    put(out, &GetEventRecordsOut::default())
}

fn clear_event_records(
    _: &mut Mailbox,
    input: &[u8],
    _: &mut [u8],
    _: u64,
) -> Result<Reply, ReturnCode> {
    let h: ClearEventRecordsIn = read(input)?;
    if input.len() != 6 + 2 * usize::from(h.number_of_handles) {
        return Err(ReturnCode::InvalidPayloadLength);
    }
    if h.event_log >= EVENT_LOGS {
        return Err(ReturnCode::InvalidInput);
    }
    // The logs are empty: Clear All succeeds, any handle is unknown.
    match (h.flags & 1 != 0, h.number_of_handles) {
        (true, 0) | (false, 0) => Ok(Reply::Done(0)),
        (true, _) => Err(ReturnCode::InvalidInput),
        (false, _) => Err(ReturnCode::InvalidHandle),
    }
}

fn get_event_interrupt_policy(
    m: &mut Mailbox,
    _: &[u8],
    out: &mut [u8],
    _: u64,
) -> Result<Reply, ReturnCode> {
    put(out, &m.event_policy)
}

fn set_event_interrupt_policy(
    m: &mut Mailbox,
    input: &[u8],
    _: &mut [u8],
    _: u64,
) -> Result<Reply, ReturnCode> {
    let mut settings = [0u8; 5];
    settings[..input.len()].copy_from_slice(input);
    // Interrupt Mode 0 (none) or 1 (MSI/MSI-X, message 0); FW interrupts are not offered.
    if settings.iter().any(|s| s & 0x3 > 1) {
        return Err(ReturnCode::InvalidInput);
    }
    let keep_dcd = m.event_policy.dynamic_capacity;
    let mut p =
        EventInterruptPolicy::read_from_bytes(&settings).map_err(|_| ReturnCode::InternalError)?;
    for s in p.as_mut_bytes() {
        *s &= 0x3;
    }
    if input.len() == 4 {
        p.dynamic_capacity = keep_dcd;
    }
    m.event_policy = p;
    Ok(Reply::Done(0))
}

fn device_time(m: &Mailbox, now: u64) -> u64 {
    m.timestamp
        .map_or(0, |(set, at)| set.wrapping_add(now.saturating_sub(at)))
}

fn get_timestamp(m: &mut Mailbox, _: &[u8], out: &mut [u8], now: u64) -> Result<Reply, ReturnCode> {
    put(
        out,
        &Timestamp {
            timestamp: U64::new(device_time(m, now)),
        },
    )
}

fn set_timestamp(
    m: &mut Mailbox,
    input: &[u8],
    _: &mut [u8],
    now: u64,
) -> Result<Reply, ReturnCode> {
    let t: Timestamp = read(input)?;
    m.timestamp = Some((t.timestamp.get(), now));
    Ok(Reply::Done(0))
}

const CEL_BYTES: usize = COMMANDS.len() * core::mem::size_of::<CelEntry>();

fn cel() -> Vec<u8> {
    COMMANDS
        .iter()
        .flat_map(|c| {
            let e = CelEntry {
                opcode: U16::new(c.opcode),
                command_effect: U16::new(c.effect),
            };
            e.as_bytes().to_vec()
        })
        .collect()
}

fn get_supported_logs(
    _: &mut Mailbox,
    _: &[u8],
    out: &mut [u8],
    _: u64,
) -> Result<Reply, ReturnCode> {
    let header = SupportedLogsOut {
        number_of_entries: U16::new(1),
        reserved: [0; 6],
    };
    let entry = SupportedLogEntry {
        log_identifier: CEL_UUID,
        log_size: U32::new(CEL_BYTES as u32),
    };
    let bytes = [header.as_bytes(), entry.as_bytes()].concat();
    out.get_mut(..bytes.len())
        .ok_or(ReturnCode::InternalError)?
        .copy_from_slice(&bytes);
    Ok(Reply::Done(bytes.len()))
}

fn get_log(_: &mut Mailbox, input: &[u8], out: &mut [u8], _: u64) -> Result<Reply, ReturnCode> {
    let g: GetLogIn = read(input)?;
    if g.log_identifier != CEL_UUID {
        return Err(ReturnCode::InvalidLog);
    }
    let (off, len) = (g.offset.get() as usize, g.length.get() as usize);
    if len > out.len() || off.checked_add(len).is_none_or(|e| e > CEL_BYTES) {
        return Err(ReturnCode::InvalidInput);
    }
    out[..len].copy_from_slice(&cel()[off..off + len]);
    Ok(Reply::Done(len))
}

fn identify(m: &mut Mailbox, _: &[u8], out: &mut [u8], _: u64) -> Result<Reply, ReturnCode> {
    let mut fw = [0u8; 16];
    let r = m.identity.fw_revision.as_bytes();
    let n = r.len().min(16);
    fw[..n].copy_from_slice(&r[..n]);
    let units = U64::new(m.capacity_units());
    let mer = POISON_LIST_MAX.to_le_bytes();
    put(
        out,
        &IdentifyOut {
            fw_revision: fw,
            total_capacity: units,
            volatile_only_capacity: units,
            persistent_only_capacity: U64::new(0),
            partition_alignment: U64::new(0),
            info_event_log_size: U16::new(8),
            warning_event_log_size: U16::new(8),
            failure_event_log_size: U16::new(8),
            fatal_event_log_size: U16::new(8),
            lsa_size: U32::new(LSA_SIZE as u32),
            poison_list_max_mer: [mer[0], mer[1], mer[2]],
            inject_poison_limit: U16::new(0),
            poison_handling_capabilities: 0,
            qos_telemetry_capabilities: 0,
            dynamic_capacity_event_log_size: U16::new(0),
        },
    )
}

fn get_partition_info(
    m: &mut Mailbox,
    _: &[u8],
    out: &mut [u8],
    _: u64,
) -> Result<Reply, ReturnCode> {
    put(
        out,
        &PartitionInfoOut {
            active_volatile_capacity: U64::new(m.capacity_units()),
            ..Default::default()
        },
    )
}

fn lsa_range(offset: u32, len: usize) -> Result<std::ops::Range<usize>, ReturnCode> {
    let start = offset as usize;
    match start.checked_add(len) {
        Some(end) if end <= LSA_SIZE => Ok(start..end),
        _ => Err(ReturnCode::InvalidInput),
    }
}

fn get_lsa(m: &mut Mailbox, input: &[u8], out: &mut [u8], _: u64) -> Result<Reply, ReturnCode> {
    let g: GetLsaIn = read(input)?;
    let len = g.length.get() as usize;
    if len > out.len() {
        return Err(ReturnCode::InvalidInput);
    }
    let r = lsa_range(g.offset.get(), len)?;
    out[..len].copy_from_slice(&m.lsa[r]);
    Ok(Reply::Done(len))
}

fn set_lsa(m: &mut Mailbox, input: &[u8], _: &mut [u8], _: u64) -> Result<Reply, ReturnCode> {
    let h: SetLsaIn = read(input)?;
    let data = &input[core::mem::size_of::<SetLsaIn>()..];
    let r = lsa_range(h.offset.get(), data.len())?;
    m.lsa[r].copy_from_slice(data);
    Ok(Reply::Done(0))
}

fn get_health_info(_: &mut Mailbox, _: &[u8], out: &mut [u8], _: u64) -> Result<Reply, ReturnCode> {
    // Healthy, media normal, 35 degrees C, nothing used up, no errors.
    put(
        out,
        &HealthInfoOut {
            device_temperature: U16::new(35),
            ..Default::default()
        },
    )
}

fn get_poison_list(
    m: &mut Mailbox,
    input: &[u8],
    out: &mut [u8],
    now: u64,
) -> Result<Reply, ReturnCode> {
    let r: DpaRangeIn = read(input)?;
    m.dpa_range(r.physical_address.get(), r.physical_address_length.get())?;
    let scanning =
        u8::from(m.background_running(now) && m.background.is_some_and(|b| b.opcode == SCAN_MEDIA));
    put(
        out,
        &PoisonListOut {
            flags: scanning << 2,
            ..Default::default()
        },
    )
}

fn scan_time_ns(len: u64) -> u64 {
    SCAN_MEDIA_BASE_NS + (len >> 26) * SCAN_MEDIA_NS_PER_64MIB
}

fn get_scan_media_caps(
    m: &mut Mailbox,
    input: &[u8],
    out: &mut [u8],
    _: u64,
) -> Result<Reply, ReturnCode> {
    let r: DpaRangeIn = read(input)?;
    let (_, len) = m.dpa_range(r.physical_address.get(), r.physical_address_length.get())?;
    let ms = scan_time_ns(len).div_ceil(1_000_000);
    put(
        out,
        &ScanMediaCapsOut {
            estimated_scan_media_time: U32::new(ms.min(u64::from(u32::MAX)) as u32),
        },
    )
}

fn scan_media(m: &mut Mailbox, input: &[u8], _: &mut [u8], _: u64) -> Result<Reply, ReturnCode> {
    let s: ScanMediaIn = read(input)?;
    let (addr, len) = m.dpa_range(s.physical_address.get(), s.physical_address_length.get())?;
    m.scanned = None;
    m.scanning = Some((addr, len));
    Ok(Reply::Background {
        duration_ns: scan_time_ns(len),
    })
}

fn get_scan_media_results(
    m: &mut Mailbox,
    _: &[u8],
    out: &mut [u8],
    now: u64,
) -> Result<Reply, ReturnCode> {
    // Results exist once a Scan Media has completed; none while one runs or before any.
    if m.background_running(now) {
        return Err(ReturnCode::Busy);
    }
    let Some((addr, len)) = m.scanned else {
        return Err(ReturnCode::InvalidInput);
    };
    put(
        out,
        &ScanMediaResultsOut {
            restart_physical_address: U64::new(addr + len),
            restart_physical_address_length: U64::new(0),
            ..Default::default()
        },
    )
}
