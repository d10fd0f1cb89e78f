//! The Memory Device registers block (Register Locator block 3; CXL 3.2 §8.2.9): its register
//! table ([`crate::spec::memdev`]) in a [`RegFile`], and the mailbox protocol (§8.2.9.4):
//! a doorbell write runs the command in the Command and Payload registers to completion
//! before the write returns, so the host never sees the doorbell set; Scan Media runs in the
//! background (§8.2.9.4.6-7): the mailbox reports Background Command Started and keeps
//! serving foreground commands, a second background command gets Busy. Time comes from the
//! caller (`now`, ns). The commands themselves: [`crate::core::mailbox`].
//!
//! Left out: the secondary mailbox, mailbox interrupts (not advertised, so drivers poll).

use crate::core::mailbox::{Mailbox, MemdevIdentity, ReturnCode};
use crate::core::regfile::RegFile;
use crate::metrics::MemdevMetrics;
use crate::spec::block_table::PostWrite;
use crate::spec::dvsec::MemRange;
pub use crate::spec::memdev::*;

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
        // No register of this block comes from the memory range.
        let no_range = MemRange {
            hpa_base: 0,
            size: 0,
        };
        self.regs.reset(MEMDEV_REGISTERS, &no_range);
        let p = mb(MB_PAYLOAD);
        self.regs.wmask[p..p + PAYLOAD_SIZE].fill(0xff);
    }

    /// Function reset: registers and mailbox state back to their reset values.
    pub fn reset(&mut self) {
        self.reset_registers();
        self.mailbox.reset();
    }

    pub fn counters(&self) -> MemdevMetrics {
        MemdevMetrics {
            doorbells: self.doorbells,
            access: self.regs.counters.clone(),
        }
    }

    /// Mirrors the background operation into the status registers.
    fn refresh(&mut self, now: u64) {
        let bg = self.mailbox.background(now);
        let st = MbStatus::from(self.regs.get_u64(mb(MB_STATUS)))
            .with_background_operation(bg.is_some_and(|b| b.done.is_none()));
        self.regs.set_u64(mb(MB_STATUS), st.into());
        if let Some(b) = bg {
            let v = MbBackgroundStatus::new()
                .with_opcode(b.opcode)
                .with_percentage_complete(b.percent(now))
                .with_return_code(b.done.map_or(0, |rc| rc as u16));
            self.regs.set_u64(mb(MB_BACKGROUND_STATUS), v.into());
        }
    }

    pub fn mmio_read(&mut self, offset: u64, data: &mut [u8], now: u64) {
        self.refresh(now);
        self.regs.read(offset, data);
    }

    pub fn mmio_write(&mut self, offset: u64, data: &[u8], now: u64) {
        let hook = self.regs.write(offset, data, MEMDEV_REGISTERS);
        if hook == Some(PostWrite::Doorbell)
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
        self.regs.set_u64(mb(MB_COMMAND), cmd.into());
        let st = MbStatus::new().with_return_code(rc as u16);
        self.regs.set_u64(mb(MB_STATUS), st.into());
        let ctl = MbControl::from(self.regs.get_u32(mb(MB_CONTROL))).with_doorbell(false);
        self.regs.set_u32(mb(MB_CONTROL), ctl.into());
        self.refresh(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::mailbox::opcode;

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
        let half = crate::core::mailbox::SCAN_MEDIA_BASE_NS;
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
