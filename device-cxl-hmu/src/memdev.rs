//! The Memory Device registers block (Register Locator block 3; CXL 3.2 §8.2.9, "CXL Device
//! Register Interface", which CXL 3.0/3.1 number §8.2.8: 3.2 put the CHMU before it): the
//! Device Capabilities Array (§8.2.9.1-2) listing Device Status (§8.2.9.3), the Primary
//! Mailbox (§8.2.9.4) and Memory Device Status (§8.2.9.5), and the mailbox protocol:
//! doorbell, command and status registers, background command status.
//!
//! The doorbell runs a command to completion before the write returns, so the host never sees
//! it set; Scan Media runs in the background (§8.2.9.4.6-7): the mailbox reports Background
//! Command Started and keeps serving foreground commands, a second background command gets
//! Busy. Time comes from the caller (`now`, ns).
//!
//! Left out: the secondary mailbox, mailbox interrupts (doorbell and background-complete are
//! not advertised, so drivers poll), vendor-specific extended status.

use crate::mailbox::{Mailbox, MemdevIdentity, ReturnCode, PAYLOAD_SIZE, PAYLOAD_SIZE_LOG2};
use crate::regfile::RegFile;
use bitfield_struct::bitfield;

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
const REGS_LEN: usize = 0x1000;
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

/// Counters of the memory device block.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct MemdevCounters {
    pub doorbells: u64,
    #[serde(flatten)]
    pub access: crate::regfile::AccessCounters,
}

/// The Memory Device registers block and its mailbox.
#[derive(Debug)]
pub struct MemdevBlock {
    regs: RegFile,
    pub mailbox: Mailbox,
    doorbells: u64,
}

const fn mb(off: u64) -> usize {
    (MAILBOX_OFFSET + off) as usize
}

impl MemdevBlock {
    pub fn new(identity: MemdevIdentity) -> Self {
        let mut b = Self {
            regs: RegFile::new("memdev", REGS_LEN),
            mailbox: Mailbox::new(identity),
            doorbells: 0,
        };
        b.reset_registers();
        b
    }

    fn reset_registers(&mut self) {
        let r = &mut self.regs;
        r.bytes.fill(0);
        r.wmask.fill(0);
        let caps = [
            (
                CAP_ID_DEVICE_STATUS,
                2,
                DEVICE_STATUS_OFFSET,
                DEVICE_STATUS_LENGTH,
            ),
            (CAP_ID_PRIMARY_MAILBOX, 1, MAILBOX_OFFSET, MAILBOX_LENGTH),
            (
                CAP_ID_MEMORY_DEVICE_STATUS,
                1,
                MEMDEV_STATUS_OFFSET,
                MEMDEV_STATUS_LENGTH,
            ),
        ];
        let array = CapArray::new()
            .with_capability_id(0)
            .with_version(1)
            .with_capabilities_count(caps.len() as u16);
        r.put_u64(0, array.into(), 0);
        for (i, (id, version, off, len)) in caps.into_iter().enumerate() {
            let h = 0x10 * (i + 1);
            r.put_u32(
                h,
                CapHeader::new()
                    .with_capability_id(id)
                    .with_version(version)
                    .into(),
                0,
            );
            r.put_u32(h + 4, off as u32, 0);
            r.put_u32(h + 8, len as u32, 0);
        }
        let status = MemdevStatus::new()
            .with_media_status(MEDIA_STATUS_READY)
            .with_mailbox_interfaces_ready(true);
        r.put_u64(MEMDEV_STATUS_OFFSET as usize, status.into(), 0);
        let caps = MbCapabilities::new().with_payload_size(PAYLOAD_SIZE_LOG2);
        r.put_u32(mb(MB_CAPABILITIES), caps.into(), 0);
        r.put_u32(
            mb(MB_CONTROL),
            0,
            MbControl::new().with_doorbell(true).into(),
        );
        let cmd_mask = MbCommand::new()
            .with_opcode(u16::MAX)
            .with_payload_length(0x1f_ffff);
        r.put_u64(mb(MB_COMMAND), 0, cmd_mask.into());
        let p = mb(MB_PAYLOAD);
        r.wmask[p..p + PAYLOAD_SIZE].fill(0xff);
    }

    /// Function reset: registers and mailbox state back to their reset values.
    pub fn reset(&mut self) {
        self.reset_registers();
        self.mailbox.reset();
    }

    pub fn counters(&self) -> MemdevCounters {
        MemdevCounters {
            doorbells: self.doorbells,
            access: self.regs.counters.clone(),
        }
    }

    /// Mirrors the background operation into the status registers.
    fn refresh(&mut self, now: u64) {
        let bg = self.mailbox.background(now);
        let st = MbStatus::from(self.regs.get_u64(mb(MB_STATUS)))
            .with_background_operation(bg.is_some_and(|b| b.done.is_none()));
        self.regs.put_u64(mb(MB_STATUS), st.into(), 0);
        if let Some(b) = bg {
            let v = MbBackgroundStatus::new()
                .with_opcode(b.opcode)
                .with_percentage_complete(b.percent(now))
                .with_return_code(b.done.map_or(0, |rc| rc as u16));
            self.regs.put_u64(mb(MB_BACKGROUND_STATUS), v.into(), 0);
        }
    }

    pub fn mmio_read(&mut self, offset: u64, data: &mut [u8], now: u64) {
        self.refresh(now);
        self.regs.read(offset, data);
    }

    pub fn mmio_write(&mut self, offset: u64, data: &[u8], now: u64) {
        let Some(r) = self.regs.write(offset, data) else {
            return;
        };
        if r.contains(&mb(MB_CONTROL))
            && MbControl::from(self.regs.get_u32(mb(MB_CONTROL))).doorbell()
        {
            self.ring(now);
        }
    }

    /// Runs the command in the Command and Payload registers, then clears the doorbell.
    fn ring(&mut self, now: u64) {
        self.doorbells += 1;
        let cmd = MbCommand::from(self.regs.get_u64(mb(MB_COMMAND)));
        let len = cmd.payload_length() as usize;
        let p = mb(MB_PAYLOAD);
        let (rc, out_len) = if len > PAYLOAD_SIZE {
            (self.mailbox.refuse(ReturnCode::InvalidPayloadLength), 0)
        } else {
            let input = self.regs.bytes[p..p + len].to_vec();
            let o = self.mailbox.execute(
                cmd.opcode(),
                &input,
                &mut self.regs.bytes[p..p + PAYLOAD_SIZE],
                now,
            );
            (o.rc, o.out_len)
        };
        tracing::debug!(
            target: "cxl::mailbox",
            opcode = format_args!("{:#06x}", cmd.opcode()),
            len,
            rc = ?rc,
            out_len,
            "mailbox command"
        );
        let cmd = cmd.with_payload_length(out_len as u32);
        self.regs.put_u64(
            mb(MB_COMMAND),
            cmd.into(),
            MbCommand::new()
                .with_opcode(u16::MAX)
                .with_payload_length(0x1f_ffff)
                .into(),
        );
        let st = MbStatus::new().with_return_code(rc as u16);
        self.regs.put_u64(mb(MB_STATUS), st.into(), 0);
        let ctl = MbControl::from(self.regs.get_u32(mb(MB_CONTROL))).with_doorbell(false);
        self.regs.put_u32(
            mb(MB_CONTROL),
            ctl.into(),
            MbControl::new().with_doorbell(true).into(),
        );
        self.refresh(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mailbox::opcode;

    fn block() -> MemdevBlock {
        MemdevBlock::new(MemdevIdentity {
            capacity: 1 << 30,
            fw_revision: "test".into(),
        })
    }

    fn rd64(b: &mut MemdevBlock, off: u64, now: u64) -> u64 {
        let mut d = [0u8; 8];
        b.mmio_read(off, &mut d, now);
        u64::from_le_bytes(d)
    }

    /// Sends a command the way Linux's cxl_pci does and returns (return code, output).
    fn send(b: &mut MemdevBlock, op: u16, input: &[u8], now: u64) -> (u16, Vec<u8>) {
        let base = MAILBOX_OFFSET;
        for (i, c) in input.chunks(8).enumerate() {
            let mut w = [0u8; 8];
            w[..c.len()].copy_from_slice(c);
            b.mmio_write(base + MB_PAYLOAD + 8 * i as u64, &w, now);
        }
        let cmd = u64::from(op) | ((input.len() as u64) << 16);
        b.mmio_write(base + MB_COMMAND, &cmd.to_le_bytes(), now);
        b.mmio_write(base + MB_CONTROL, &1u32.to_le_bytes(), now);
        assert_eq!(rd64(b, base + MB_CONTROL, now) & 1, 0, "doorbell clear");
        let rc = (rd64(b, base + MB_STATUS, now) >> 32) as u16;
        let n = ((rd64(b, base + MB_COMMAND, now) >> 16) & 0x1f_ffff) as usize;
        let mut out = vec![0u8; n];
        for (i, c) in out.chunks_mut(8).enumerate() {
            let v = rd64(b, base + MB_PAYLOAD + 8 * i as u64, now).to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
        (rc, out)
    }

    // Oracles: bit positions from the spec's register tables.
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
    fn capability_array_lists_status_mailbox_and_memdev() {
        let mut b = block();
        let a = rd64(&mut b, 0, 0);
        assert_eq!((a & 0xffff, (a >> 32) & 0xffff), (0, 3));
        let mut found = Vec::new();
        for i in 1..=3u64 {
            let id = rd64(&mut b, 0x10 * i, 0) & 0xffff;
            let off_len = rd64(&mut b, 0x10 * i + 8, 0);
            let off = rd64(&mut b, 0x10 * i, 0) >> 32;
            found.push((id, off, off_len & 0xffff_ffff));
        }
        assert_eq!(
            found,
            [(1, 0x100, 8), (2, 0x200, 0x820), (0x4000, 0x180, 8)]
        );
        // Media ready (01b at [3:2]) and mailbox interfaces ready ([4]).
        assert_eq!(rd64(&mut b, MEMDEV_STATUS_OFFSET, 0), 0x14);
        assert_eq!(rd64(&mut b, MAILBOX_OFFSET, 0) & 0x1f, 11);
    }

    #[test]
    fn identify_reports_the_capacity_in_256_mib_units() {
        let mut b = block();
        let (rc, out) = send(&mut b, opcode::IDENTIFY_MEMORY_DEVICE, &[], 0);
        assert_eq!((rc, out.len()), (0, 0x45));
        assert_eq!(&out[..4], b"test");
        assert_eq!(
            u64::from_le_bytes(out[0x10..0x18].try_into().unwrap_or_default()),
            4
        );
        assert_eq!(
            u64::from_le_bytes(out[0x18..0x20].try_into().unwrap_or_default()),
            4
        );
    }

    #[test]
    fn a_payload_length_past_the_payload_registers_is_refused() {
        let mut b = block();
        let cmd = u64::from(opcode::SET_LSA) | (0x1f_ffffu64 << 16);
        b.mmio_write(MAILBOX_OFFSET + MB_COMMAND, &cmd.to_le_bytes(), 0);
        b.mmio_write(MAILBOX_OFFSET + MB_CONTROL, &[1], 0);
        assert_eq!(rd64(&mut b, MAILBOX_OFFSET + MB_STATUS, 0) >> 32, 0x16);
        assert_eq!(send(&mut b, opcode::GET_HEALTH_INFO, &[], 0).0, 0);
    }

    #[test]
    fn scan_media_runs_in_the_background_and_a_second_one_is_busy() {
        let mut b = block();
        let mut scan = [0u8; 0x11];
        scan[8..16].copy_from_slice(&(1u64 << 24).to_le_bytes()); // 1 GiB in 64-byte lines
        assert_eq!(send(&mut b, opcode::SCAN_MEDIA, &scan, 0).0, 1);
        let st = rd64(&mut b, MAILBOX_OFFSET + MB_STATUS, 1);
        assert_eq!(st & 1, 1, "background operation");
        let half = crate::mailbox::SCAN_MEDIA_BASE_NS;
        let bg = rd64(&mut b, MAILBOX_OFFSET + MB_BACKGROUND_STATUS, half);
        assert_eq!(bg & 0xffff, u64::from(opcode::SCAN_MEDIA));
        assert!((1..100).contains(&((bg >> 16) & 0x7f)), "{bg:#x}");
        // Foreground commands still run; another background command is Busy.
        assert_eq!(send(&mut b, opcode::GET_HEALTH_INFO, &[], half).0, 0);
        assert_eq!(send(&mut b, opcode::SCAN_MEDIA, &scan, half).0, 6);
        assert_eq!(send(&mut b, opcode::GET_SCAN_MEDIA_RESULTS, &[], half).0, 6);
        let done = 1_000_000_000;
        let bg = rd64(&mut b, MAILBOX_OFFSET + MB_BACKGROUND_STATUS, done);
        assert_eq!(((bg >> 16) & 0x7f, bg >> 32), (100, 0));
        assert_eq!(rd64(&mut b, MAILBOX_OFFSET + MB_STATUS, done) & 1, 0);
        let (rc, out) = send(&mut b, opcode::GET_SCAN_MEDIA_RESULTS, &[], done);
        assert_eq!((rc, out.len()), (0, 0x20));
        assert_eq!(
            u16::from_le_bytes([out[0x12], out[0x13]]),
            0,
            "no media errors"
        );
    }
}
