//! The Memory Device registers (Register Locator block 3; CXL 3.2 §8.2.9, "CXL Device
//! Register Interface", which CXL 3.0/3.1 number §8.2.8: 3.2 put the CHMU before it) as one
//! table: the Device Capabilities Array (§8.2.9.1-2) listing Device Status (§8.2.9.3), the
//! Primary Mailbox (§8.2.9.4) and Memory Device Status (§8.2.9.5); the mailbox's
//! capabilities, control (doorbell), command, status and background command status.
//!
//! Not a row: the Commands Payload Registers (§8.2.9.4.8), [`PAYLOAD_SIZE`] writable bytes
//! at [`MB_PAYLOAD`]. Left out: the secondary mailbox, mailbox interrupts (doorbell and
//! background-complete are not advertised, so drivers poll), vendor-specific extended status.

use super::block_table::{ro, rw, BlockReg, PostWrite};
use bitfield_struct::bitfield;

/// Payload size this mailbox offers: 2^11 bytes (Mailbox Capabilities, §8.2.9.4.3).
pub const PAYLOAD_SIZE_LOG2: u8 = 11;
pub const PAYLOAD_SIZE: usize = 1 << PAYLOAD_SIZE_LOG2;

/// Capability IDs of the Device Capabilities Array (§8.2.9.2.1).
pub const CAP_ID_DEVICE_STATUS: u16 = 0x0001;
pub const CAP_ID_PRIMARY_MAILBOX: u16 = 0x0002;
pub const CAP_ID_MEMORY_DEVICE_STATUS: u16 = 0x4000;

/// Where this model puts each capability in the block, and its length.
pub const DEVICE_STATUS_OFFSET: u64 = 0x100;
pub const DEVICE_STATUS_LENGTH: u64 = 0x8;
pub const MEMDEV_STATUS_OFFSET: u64 = 0x180;
pub const MEMDEV_STATUS_LENGTH: u64 = 0x8;
pub const MAILBOX_OFFSET: u64 = 0x200;
pub const MAILBOX_LENGTH: u64 = MB_PAYLOAD + PAYLOAD_SIZE as u64;
/// Bytes of the block that hold registers (the rest of the 64 KiB reads 0).
pub const REGS_LEN: usize = 0x1000;
const _: () = assert!(MAILBOX_OFFSET + MAILBOX_LENGTH <= REGS_LEN as u64);

/// Mailbox registers, relative to [`MAILBOX_OFFSET`] (§8.2.9.4).
pub const MB_CAPABILITIES: u64 = 0x00;
pub const MB_CONTROL: u64 = 0x04;
pub const MB_COMMAND: u64 = 0x08;
pub const MB_STATUS: u64 = 0x10;
pub const MB_BACKGROUND_STATUS: u64 = 0x18;
pub const MB_PAYLOAD: u64 = 0x20;

/// Device Capabilities Array Register (§8.2.9.1).
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct CapArray {
    pub capability_id: u16,
    pub version: u8,
    #[bits(8)]
    __: u8,
    pub capabilities_count: u16,
    #[bits(16)]
    __: u16,
}

/// Device Capability Header, low dword (§8.2.9.2); Offset and Length are the next dwords.
#[bitfield(u32)]
#[derive(PartialEq, Eq)]
pub struct CapHeader {
    pub capability_id: u16,
    pub version: u8,
    #[bits(8)]
    __: u8,
}

/// Mailbox Capabilities Register (§8.2.9.4.3).
#[bitfield(u32)]
#[derive(PartialEq, Eq)]
pub struct MbCapabilities {
    /// Payload Size: 2^n bytes.
    #[bits(5)]
    pub payload_size: u8,
    pub doorbell_interrupt_capable: bool,
    pub background_interrupt_capable: bool,
    #[bits(4)]
    pub interrupt_message_number: u8,
    #[bits(21)]
    __: u32,
}

/// Mailbox Control Register (§8.2.9.4.4).
#[bitfield(u32)]
#[derive(PartialEq, Eq)]
pub struct MbControl {
    pub doorbell: bool,
    pub doorbell_interrupt: bool,
    pub background_interrupt: bool,
    #[bits(29)]
    __: u32,
}

/// Command Register (§8.2.9.4.5).
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct MbCommand {
    pub opcode: u16,
    #[bits(21)]
    pub payload_length: u32,
    #[bits(27)]
    __: u32,
}

/// Mailbox Status Register (§8.2.9.4.6).
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct MbStatus {
    pub background_operation: bool,
    #[bits(31)]
    __: u32,
    pub return_code: u16,
    pub vendor_status: u16,
}

/// Background Command Status Register (§8.2.9.4.7).
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct MbBackgroundStatus {
    pub opcode: u16,
    #[bits(7)]
    pub percentage_complete: u8,
    #[bits(9)]
    __: u16,
    pub return_code: u16,
    pub vendor_status: u16,
}

/// Memory Device Status Register (§8.2.9.5.1).
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct MemdevStatus {
    pub device_fatal: bool,
    pub fw_halt: bool,
    /// 0 not ready, 1 ready, 2 error, 3 disabled.
    #[bits(2)]
    pub media_status: u8,
    pub mailbox_interfaces_ready: bool,
    #[bits(3)]
    pub reset_needed: u8,
    #[bits(56)]
    __: u64,
}

pub const MEDIA_STATUS_READY: u8 = 1;

/// Where the capability headers are: the array's entry i (from 1) at 10h x i (§8.2.9.2).
const fn cap_header(i: u64) -> u64 {
    0x10 * i
}

/// A capability header's three dwords: ID and version, offset, length.
macro_rules! cap_rows {
    ($i:expr, $name:literal, $id:expr, $version:expr, $off:expr, $len:expr) => {
        [
            ro(
                cap_header($i),
                concat!($name, " Capability Header"),
                4,
                ($id as u64) | ($version << 16),
            ),
            ro(
                cap_header($i) + 4,
                concat!($name, " Capability Offset"),
                4,
                $off,
            ),
            ro(
                cap_header($i) + 8,
                concat!($name, " Capability Length"),
                4,
                $len,
            ),
        ]
    };
}

const DEVICE_STATUS_ROWS: [BlockReg; 3] = cap_rows!(
    1,
    "Device Status",
    CAP_ID_DEVICE_STATUS,
    2,
    DEVICE_STATUS_OFFSET,
    DEVICE_STATUS_LENGTH
);
const MAILBOX_ROWS: [BlockReg; 3] = cap_rows!(
    2,
    "Primary Mailbox",
    CAP_ID_PRIMARY_MAILBOX,
    1,
    MAILBOX_OFFSET,
    MAILBOX_LENGTH
);
const MEMDEV_ROWS: [BlockReg; 3] = cap_rows!(
    3,
    "Memory Device Status",
    CAP_ID_MEMORY_DEVICE_STATUS,
    1,
    MEMDEV_STATUS_OFFSET,
    MEMDEV_STATUS_LENGTH
);

/// Device Capabilities Array Register: ID 0, version 1, three capabilities.
pub const CAP_ARRAY_RESET: u64 = (1 << 16) | (3 << 32);
/// Memory Device Status: media ready (01b at \[3:2\]), mailbox interfaces ready (\[4\]).
pub const MEMDEV_STATUS_RESET: u64 = (MEDIA_STATUS_READY as u64) << 2 | 1 << 4;
/// Mailbox Control: Doorbell \[0\].
pub const MB_CONTROL_WMASK: u64 = 1;
/// Command Register: Command Opcode \[15:0\], Payload Length \[36:16\].
pub const MB_COMMAND_WMASK: u64 = 0x1f_ffff_ffff;

/// The register table, in offset order.
#[rustfmt::skip]
pub const MEMDEV_REGISTERS: &[BlockReg] = &[
    ro(0x00, "Device Capabilities Array", 8, CAP_ARRAY_RESET),
    DEVICE_STATUS_ROWS[0], DEVICE_STATUS_ROWS[1], DEVICE_STATUS_ROWS[2],
    MAILBOX_ROWS[0], MAILBOX_ROWS[1], MAILBOX_ROWS[2],
    MEMDEV_ROWS[0], MEMDEV_ROWS[1], MEMDEV_ROWS[2],
    ro(DEVICE_STATUS_OFFSET, "Event Status", 8, 0),
    ro(MEMDEV_STATUS_OFFSET, "Memory Device Status", 8, MEMDEV_STATUS_RESET),
    ro(MAILBOX_OFFSET + MB_CAPABILITIES, "Mailbox Capabilities", 4, PAYLOAD_SIZE_LOG2 as u64),
    BlockReg { post_write: PostWrite::Doorbell, ..rw(MAILBOX_OFFSET + MB_CONTROL, "Mailbox Control", 4, MB_CONTROL_WMASK) },
    rw(MAILBOX_OFFSET + MB_COMMAND, "Command", 8, MB_COMMAND_WMASK),
    ro(MAILBOX_OFFSET + MB_STATUS, "Mailbox Status", 8, 0),
    ro(MAILBOX_OFFSET + MB_BACKGROUND_STATUS, "Background Command Status", 8, 0),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn register_fields_sit_at_the_spec_positions() {
        let f64 = |v: u64| !v;
        assert_eq!(
            f64(CapArray::from(u64::MAX).with_capabilities_count(0).into()),
            0xffff << 32
        );
        assert_eq!(
            f64(CapArray::from(u64::MAX).with_version(0).into()),
            0xff << 16
        );
        let c =
            |f: fn(MbCapabilities) -> MbCapabilities| !u32::from(f(MbCapabilities::from(u32::MAX)));
        assert_eq!(c(|r| r.with_payload_size(0)), 0x1f);
        assert_eq!(c(|r| r.with_doorbell_interrupt_capable(false)), 1 << 5);
        assert_eq!(c(|r| r.with_background_interrupt_capable(false)), 1 << 6);
        assert_eq!(c(|r| r.with_interrupt_message_number(0)), 0xf << 7);
        let k = |f: fn(MbControl) -> MbControl| !u32::from(f(MbControl::from(u32::MAX)));
        assert_eq!(k(|r| r.with_doorbell(false)), 1);
        assert_eq!(k(|r| r.with_background_interrupt(false)), 1 << 2);
        assert_eq!(
            f64(MbCommand::from(u64::MAX).with_payload_length(0).into()),
            0x1f_ffff << 16
        );
        assert_eq!(
            f64(MbStatus::from(u64::MAX).with_return_code(0).into()),
            0xffff << 32
        );
        assert_eq!(
            f64(MbStatus::from(u64::MAX)
                .with_background_operation(false)
                .into()),
            1
        );
        let g = |f: fn(MbBackgroundStatus) -> MbBackgroundStatus| {
            !u64::from(f(MbBackgroundStatus::from(u64::MAX)))
        };
        assert_eq!(g(|r| r.with_percentage_complete(0)), 0x7f << 16);
        assert_eq!(g(|r| r.with_return_code(0)), 0xffff << 32);
        assert_eq!(g(|r| r.with_vendor_status(0)), 0xffff << 48);
        let m = |f: fn(MemdevStatus) -> MemdevStatus| !u64::from(f(MemdevStatus::from(u64::MAX)));
        assert_eq!(m(|r| r.with_fw_halt(false)), 1 << 1);
        assert_eq!(m(|r| r.with_media_status(0)), 0b11 << 2);
        assert_eq!(m(|r| r.with_mailbox_interfaces_ready(false)), 1 << 4);
        assert_eq!(m(|r| r.with_reset_needed(0)), 0b111 << 5);
    }

    #[test]
    fn the_table_is_well_formed_and_its_masks_match_the_fields() {
        super::super::block_table::assert_well_formed(MEMDEV_REGISTERS);
        let cmd: u64 = MbCommand::new()
            .with_opcode(u16::MAX)
            .with_payload_length(0x1f_ffff)
            .into();
        assert_eq!(cmd, MB_COMMAND_WMASK);
        assert_eq!(
            u64::from(u32::from(MbControl::new().with_doorbell(true))),
            MB_CONTROL_WMASK
        );
        let array: u64 = CapArray::new()
            .with_version(1)
            .with_capabilities_count(3)
            .into();
        assert_eq!(array, CAP_ARRAY_RESET);
        let st: u64 = MemdevStatus::new()
            .with_media_status(MEDIA_STATUS_READY)
            .with_mailbox_interfaces_ready(true)
            .into();
        assert_eq!(st, MEMDEV_STATUS_RESET);
        assert!(MAILBOX_OFFSET + MAILBOX_LENGTH <= REGS_LEN as u64);
        assert_eq!(MAILBOX_LENGTH, 0x820);
    }
}
