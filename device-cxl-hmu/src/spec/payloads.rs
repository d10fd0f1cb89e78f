//! The CXL 3.2 command interface's definitions (§8.2.10): return codes, the opcodes this
//! device implements, command effects, and the payloads, one `#[repr(C)]` little-endian
//! `zerocopy` type per spec table, pinned by size asserts. Section numbers are
//! CXL 3.2's (the numbering Linux's drivers/cxl cites for 3.2; CXL 3.1 has the same tables one
//! section lower, under §8.2.9).
//!
//! Shared by the device's mailbox ([`crate::core::mailbox`]) and by tests and guest-side drivers.
//! Left out: variable-length tails (log entries, handles, records) are addressed as arrays of
//! their entry type after the fixed header.

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Capacity fields of Identify and partition info count in these units (256 MiB).
pub const CAPACITY_UNIT: u64 = 256 << 20;

/// Command Effects Log UUID (§8.2.10.5.2.1): 0da9c0b5-bf41-4b78-8f79-96b1623b3f17.
pub const CEL_UUID: [u8; 16] = [
    0x0d, 0xa9, 0xc0, 0xb5, 0xbf, 0x41, 0x4b, 0x78, 0x8f, 0x79, 0x96, 0xb1, 0x62, 0x3b, 0x3f, 0x17,
];

/// Identify Memory Device output (§8.2.10.9.1.1).
#[repr(C, packed)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct IdentifyOut {
    /// FW Revision: ASCII, NUL padded.
    pub fw_revision: [u8; 16],
    pub total_capacity: U64,
    pub volatile_only_capacity: U64,
    pub persistent_only_capacity: U64,
    pub partition_alignment: U64,
    pub info_event_log_size: U16,
    pub warning_event_log_size: U16,
    pub failure_event_log_size: U16,
    pub fatal_event_log_size: U16,
    pub lsa_size: U32,
    /// Poison List Maximum Media Error Records (24 bits).
    pub poison_list_max_mer: [u8; 3],
    pub inject_poison_limit: U16,
    pub poison_handling_capabilities: u8,
    pub qos_telemetry_capabilities: u8,
    pub dynamic_capacity_event_log_size: U16,
}
const _: () = assert!(core::mem::size_of::<IdentifyOut>() == 0x45);

/// Get Partition Info output (§8.2.10.9.2.1).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct PartitionInfoOut {
    pub active_volatile_capacity: U64,
    pub active_persistent_capacity: U64,
    pub next_volatile_capacity: U64,
    pub next_persistent_capacity: U64,
}
const _: () = assert!(core::mem::size_of::<PartitionInfoOut>() == 0x20);

/// Get Supported Logs output header (§8.2.10.5.1); [`SupportedLogEntry`]s follow.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct SupportedLogsOut {
    pub number_of_entries: U16,
    pub reserved: [u8; 6],
}
const _: () = assert!(core::mem::size_of::<SupportedLogsOut>() == 8);

/// Supported Log Entry.
#[repr(C, packed)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct SupportedLogEntry {
    pub log_identifier: [u8; 16],
    pub log_size: U32,
}
const _: () = assert!(core::mem::size_of::<SupportedLogEntry>() == 20);

/// Get Log input (§8.2.10.5.2).
#[repr(C, packed)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct GetLogIn {
    pub log_identifier: [u8; 16],
    pub offset: U32,
    pub length: U32,
}
const _: () = assert!(core::mem::size_of::<GetLogIn>() == 0x18);

/// Command Effects Log entry (§8.2.10.5.2.1).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct CelEntry {
    pub opcode: U16,
    pub command_effect: U16,
}
const _: () = assert!(core::mem::size_of::<CelEntry>() == 4);

/// Command Effect bits of a CEL entry (§8.2.10.5.2.1, Command Effects table).
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

/// Opcodes of the commands this device implements (§8.2.10, command tables).
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

/// Command Effects (the CEL entry's bits, §8.2.10.5.2.1).
pub mod effect {
    pub const CONFIG_CHANGE_COLD_RESET: u16 = 1 << 0;
    pub const IMMEDIATE_CONFIG_CHANGE: u16 = 1 << 1;
    pub const IMMEDIATE_DATA_CHANGE: u16 = 1 << 2;
    pub const IMMEDIATE_POLICY_CHANGE: u16 = 1 << 3;
    pub const IMMEDIATE_LOG_CHANGE: u16 = 1 << 4;
    pub const SECURITY_STATE_CHANGE: u16 = 1 << 5;
    pub const BACKGROUND_OPERATION: u16 = 1 << 6;
}

/// Get Event Records output header (§8.2.10.2.2); 128-byte event records follow.
#[repr(C, packed)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct GetEventRecordsOut {
    /// \[0\] Overflow, \[1\] More Event Records.
    pub flags: u8,
    pub reserved: u8,
    pub overflow_error_count: U16,
    pub first_overflow_timestamp: U64,
    pub last_overflow_timestamp: U64,
    pub event_record_count: U16,
    pub reserved2: [u8; 10],
}
const _: () = assert!(core::mem::size_of::<GetEventRecordsOut>() == 0x20);

/// Clear Event Records input header (§8.2.10.2.3); `number_of_handles` u16 handles follow.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct ClearEventRecordsIn {
    pub event_log: u8,
    /// \[0\] Clear All Events.
    pub flags: u8,
    pub number_of_handles: u8,
    pub reserved: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<ClearEventRecordsIn>() == 6);

/// Event logs (Event Log field of Get/Clear Event Records).
pub const EVENT_LOGS: u8 = 5;

/// Event Interrupt Policy (§8.2.10.2.4 output, §8.2.10.2.5 input). Each settings byte:
/// \[1:0\] Interrupt Mode (0 none, 1 MSI/MSI-X, 2 FW interrupt), \[7:4\] Interrupt Message Number.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub struct EventInterruptPolicy {
    pub informational: u8,
    pub warning: u8,
    pub failure: u8,
    pub fatal: u8,
    pub dynamic_capacity: u8,
}
const _: () = assert!(core::mem::size_of::<EventInterruptPolicy>() == 5);

/// Set Timestamp input / Get Timestamp output (§8.2.10.4): ns since the Unix epoch.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct Timestamp {
    pub timestamp: U64,
}
const _: () = assert!(core::mem::size_of::<Timestamp>() == 8);

/// Get LSA input (§8.2.10.9.2.3).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct GetLsaIn {
    pub offset: U32,
    pub length: U32,
}
const _: () = assert!(core::mem::size_of::<GetLsaIn>() == 8);

/// Set LSA input header (§8.2.10.9.2.4); the data follows.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct SetLsaIn {
    pub offset: U32,
    pub reserved: U32,
}
const _: () = assert!(core::mem::size_of::<SetLsaIn>() == 8);

/// Get Health Info output (§8.2.10.9.3.1).
#[repr(C, packed)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct HealthInfoOut {
    pub health_status: u8,
    pub media_status: u8,
    pub additional_status: u8,
    pub life_used: u8,
    pub device_temperature: U16,
    pub dirty_shutdown_count: U32,
    pub corrected_volatile_error_count: U32,
    pub corrected_persistent_error_count: U32,
}
const _: () = assert!(core::mem::size_of::<HealthInfoOut>() == 0x12);

/// Get Poison List input (§8.2.10.9.4.1); also Get Scan Media Capabilities input
/// (§8.2.10.9.4.4). Address is a DPA (\[5:0\] reserved), length counts 64-byte lines.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct DpaRangeIn {
    pub physical_address: U64,
    pub physical_address_length: U64,
}
const _: () = assert!(core::mem::size_of::<DpaRangeIn>() == 0x10);

/// Get Poison List output header (§8.2.10.9.4.1); 16-byte media error records follow.
#[repr(C, packed)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct PoisonListOut {
    /// \[0\] More Media Error Records, \[1\] Poison List Overflow, \[2\] Scan Media in Progress.
    pub flags: u8,
    pub reserved: u8,
    pub overflow_timestamp: U64,
    pub media_error_record_count: U16,
    pub reserved2: [u8; 20],
}
const _: () = assert!(core::mem::size_of::<PoisonListOut>() == 0x20);

/// Get Scan Media Capabilities output (§8.2.10.9.4.4).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct ScanMediaCapsOut {
    /// Estimated Scan Media Time, ms.
    pub estimated_scan_media_time: U32,
}
const _: () = assert!(core::mem::size_of::<ScanMediaCapsOut>() == 4);

/// Scan Media input (§8.2.10.9.4.5).
#[repr(C, packed)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct ScanMediaIn {
    pub physical_address: U64,
    pub physical_address_length: U64,
    /// \[0\] No Event Log.
    pub flags: u8,
}
const _: () = assert!(core::mem::size_of::<ScanMediaIn>() == 0x11);

/// Get Scan Media Results output header (§8.2.10.9.4.6); 16-byte media error records follow.
#[repr(C, packed)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct ScanMediaResultsOut {
    pub restart_physical_address: U64,
    pub restart_physical_address_length: U64,
    /// \[0\] More Media Error Records, \[1\] Scan Stopped Prematurely.
    pub flags: u8,
    pub reserved: u8,
    pub media_error_record_count: U16,
    pub reserved2: [u8; 12],
}
const _: () = assert!(core::mem::size_of::<ScanMediaResultsOut>() == 0x20);

#[cfg(test)]
mod tests {
    use super::*;

    /// Byte offset of the first byte a `set` leaves non-0xFF in a 0xFF-poisoned copy of `T`.
    fn changed<T: FromBytes + IntoBytes + Immutable + KnownLayout>(
        set: impl Fn(&mut T),
    ) -> Vec<usize> {
        let mut t = T::new_zeroed();
        t.as_mut_bytes().fill(0xff);
        set(&mut t);
        t.as_bytes()
            .iter()
            .enumerate()
            .filter(|(_, b)| **b != 0xff)
            .map(|(i, _)| i)
            .collect()
    }

    // Oracles: byte offsets from the spec tables, written out independently of the structs.
    #[test]
    fn identify_fields_sit_at_the_spec_offsets() {
        let at = |f: fn(&mut IdentifyOut)| changed::<IdentifyOut>(f)[0];
        assert_eq!(at(|i| i.fw_revision[0] = 0), 0x00);
        assert_eq!(at(|i| i.total_capacity = U64::new(0)), 0x10);
        assert_eq!(at(|i| i.volatile_only_capacity = U64::new(0)), 0x18);
        assert_eq!(at(|i| i.persistent_only_capacity = U64::new(0)), 0x20);
        assert_eq!(at(|i| i.partition_alignment = U64::new(0)), 0x28);
        assert_eq!(at(|i| i.info_event_log_size = U16::new(0)), 0x30);
        assert_eq!(at(|i| i.warning_event_log_size = U16::new(0)), 0x32);
        assert_eq!(at(|i| i.failure_event_log_size = U16::new(0)), 0x34);
        assert_eq!(at(|i| i.fatal_event_log_size = U16::new(0)), 0x36);
        assert_eq!(at(|i| i.lsa_size = U32::new(0)), 0x38);
        assert_eq!(at(|i| i.poison_list_max_mer = [0; 3]), 0x3c);
        assert_eq!(at(|i| i.inject_poison_limit = U16::new(0)), 0x3f);
        assert_eq!(at(|i| i.poison_handling_capabilities = 0), 0x41);
        assert_eq!(at(|i| i.qos_telemetry_capabilities = 0), 0x42);
        assert_eq!(
            at(|i| i.dynamic_capacity_event_log_size = U16::new(0)),
            0x43
        );
    }

    #[test]
    fn event_and_log_payload_fields_sit_at_the_spec_offsets() {
        let ev = |f: fn(&mut GetEventRecordsOut)| changed::<GetEventRecordsOut>(f)[0];
        assert_eq!(ev(|e| e.flags = 0), 0);
        assert_eq!(ev(|e| e.overflow_error_count = U16::new(0)), 2);
        assert_eq!(ev(|e| e.first_overflow_timestamp = U64::new(0)), 4);
        assert_eq!(ev(|e| e.last_overflow_timestamp = U64::new(0)), 0x0c);
        assert_eq!(ev(|e| e.event_record_count = U16::new(0)), 0x14);
        let cl = |f: fn(&mut ClearEventRecordsIn)| changed::<ClearEventRecordsIn>(f)[0];
        assert_eq!(cl(|c| c.event_log = 0), 0);
        assert_eq!(cl(|c| c.flags = 0), 1);
        assert_eq!(cl(|c| c.number_of_handles = 0), 2);
        let gl = |f: fn(&mut GetLogIn)| changed::<GetLogIn>(f)[0];
        assert_eq!(gl(|g| g.offset = U32::new(0)), 0x10);
        assert_eq!(gl(|g| g.length = U32::new(0)), 0x14);
        let se = |f: fn(&mut SupportedLogEntry)| changed::<SupportedLogEntry>(f)[0];
        assert_eq!(se(|s| s.log_size = U32::new(0)), 0x10);
        let ce = |f: fn(&mut CelEntry)| changed::<CelEntry>(f)[0];
        assert_eq!(ce(|c| c.command_effect = U16::new(0)), 2);
        let ip = |f: fn(&mut EventInterruptPolicy)| changed::<EventInterruptPolicy>(f)[0];
        assert_eq!(ip(|p| p.fatal = 0), 3);
        assert_eq!(ip(|p| p.dynamic_capacity = 0), 4);
    }

    #[test]
    fn memory_device_payload_fields_sit_at_the_spec_offsets() {
        let hi = |f: fn(&mut HealthInfoOut)| changed::<HealthInfoOut>(f)[0];
        assert_eq!(hi(|h| h.life_used = 0), 3);
        assert_eq!(hi(|h| h.device_temperature = U16::new(0)), 4);
        assert_eq!(hi(|h| h.dirty_shutdown_count = U32::new(0)), 6);
        assert_eq!(hi(|h| h.corrected_volatile_error_count = U32::new(0)), 0x0a);
        assert_eq!(
            hi(|h| h.corrected_persistent_error_count = U32::new(0)),
            0x0e
        );
        let pl = |f: fn(&mut PoisonListOut)| changed::<PoisonListOut>(f)[0];
        assert_eq!(pl(|p| p.overflow_timestamp = U64::new(0)), 2);
        assert_eq!(pl(|p| p.media_error_record_count = U16::new(0)), 0x0a);
        let sm = |f: fn(&mut ScanMediaIn)| changed::<ScanMediaIn>(f)[0];
        assert_eq!(sm(|s| s.physical_address_length = U64::new(0)), 8);
        assert_eq!(sm(|s| s.flags = 0), 0x10);
        let sr = |f: fn(&mut ScanMediaResultsOut)| changed::<ScanMediaResultsOut>(f)[0];
        assert_eq!(sr(|s| s.restart_physical_address_length = U64::new(0)), 8);
        assert_eq!(sr(|s| s.flags = 0), 0x10);
        assert_eq!(sr(|s| s.media_error_record_count = U16::new(0)), 0x12);
        let pi = |f: fn(&mut PartitionInfoOut)| changed::<PartitionInfoOut>(f)[0];
        assert_eq!(pi(|p| p.next_persistent_capacity = U64::new(0)), 0x18);
        let sl = |f: fn(&mut SetLsaIn)| changed::<SetLsaIn>(f)[0];
        assert_eq!(sl(|s| s.reserved = U32::new(0)), 4);
    }

    #[test]
    fn cel_uuid_is_the_spec_value() {
        let text = "0da9c0b5-bf41-4b78-8f79-96b1623b3f17".replace('-', "");
        let bytes: Vec<u8> = (0..16)
            .map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16).unwrap_or(0))
            .collect();
        assert_eq!(bytes, CEL_UUID);
    }
}
