//! Fuzz entry points (used by `fuzz/` targets and by deterministic smoke tests): MMIO sequences
//! against the CHMU register block interleaved with accesses, clock advances and resets;
//! register accesses and mailbox commands against the memory device block; the feed's record
//! decoder and the trace parser.

use crate::core::chmu::ChmuBlock;
use crate::core::hotlist_store::VecHotlist;
use crate::core::hotness::{Access, Hotness, ReqKind};
use crate::spec::layout::ChmuConfig;
use crate::spec::regs::*;

/// MMIO writes/reads of any width and offset against a CHMU whose configuration the first
/// bytes pick (instances, hotlist size, placement, capacity, mapped hotlists), interleaved with
/// accesses, clock advances and resets. Checked throughout: the registers describe a layout
/// inside the block (each hotlist inside its instance unless a window was asked for), and an
/// enable only takes with a configuration the capabilities allow.
pub fn mmio_sequence(data: &[u8]) {
    let (head, ops) = data.split_at(data.len().min(4));
    let pick = |i: usize| head.get(i).copied().unwrap_or(0);
    let cfg = ChmuConfig {
        instances: pick(0) % 16 + 1,
        // Up to 8191 entries: a window of 16 such hotlists is already an 8 MiB BAR.
        hotlist_size: u16::from_le_bytes([pick(1), pick(2)]) % 8192,
        hotlist_window: (pick(3) & 1 != 0).then_some(CHMU_HOTLIST_WINDOW),
        capacity: 1 << (28 + (pick(3) >> 2) % 8),
        ..ChmuConfig::default()
    };
    let mut b = ChmuBlock::new(cfg);
    let (n, size) = (b.config().instances, b.config().hotlist_size);
    if pick(3) & 2 != 0 {
        b.set_hotlist_memory(Box::new(VecHotlist::new(n, size)));
    }
    check_layout(&mut b);
    let mut h = Hotness::new(n, b.config().capacity);
    let mut t = 0u64;
    for op in ops.chunks_exact(12) {
        let off = u64::from(u16::from_le_bytes([op[1], op[2]]));
        let v = u64::from_le_bytes([op[3], op[4], op[5], op[6], op[7], op[8], op[9], op[10]]);
        let width = [1usize, 2, 4, 8, 3][usize::from(op[11]) % 5];
        match op[0] % 6 {
            0 => write_checked(&mut b, off, &v.to_le_bytes()[..width]),
            1 => {
                let mut out = [0u8; 8];
                b.mmio_read(off, &mut out[..width]);
            }
            2 => {
                t = t.wrapping_add(v % 1_000_000);
                let kind = if v & 1 == 0 {
                    ReqKind::Read
                } else {
                    ReqKind::Write
                };
                let a = Access {
                    dpa: v % (1 << 36),
                    kind,
                    time: t,
                };
                h.feed_weighted(&mut b, [(a, u32::from(op[11]))]);
            }
            3 => {
                t = t.wrapping_add(v % 100_000_000);
                h.advance(&mut b, t);
            }
            4 => {
                // A whole CFG0 write to an instance (the enable path), any value.
                let at = b.config().instance_base(op[1] % n) + CHMU_CFG0;
                write_checked(&mut b, at, &v.to_le_bytes());
            }
            _ => b.reset(),
        }
    }
    check_layout(&mut b);
}

/// A register write, then: every instance it enabled has a configuration the capabilities
/// allow (epoch within CAP0's range, offered unit size and factor, and so on).
fn write_checked(b: &mut ChmuBlock, off: u64, data: &[u8]) {
    let n = b.config().instances;
    let status =
        |b: &ChmuBlock, i: u8| ChmuStatus::from(b.get(b.config().instance_base(i) + CHMU_STATUS));
    let before: Vec<bool> = (0..n).map(|i| status(b, i).enabled()).collect();
    b.mmio_write(off, data);
    for i in 0..n {
        let st = status(b, i);
        assert_eq!(st.op_in_progress(), 0, "operations complete at once");
        if st.enabled() && !before[usize::from(i)] {
            assert_eq!(
                b.check_enable(i),
                Ok(()),
                "instance {i} enabled out of range"
            );
        }
    }
}

/// The layout the registers describe, as a driver reads it: instances inside the 64 KiB
/// block, each hotlist (CAP3 + hotlist size x 8) inside its instance unless a window is used.
fn check_layout(b: &mut ChmuBlock) {
    let rd = |b: &mut ChmuBlock, off: u64| {
        let mut d = [0u8; 8];
        b.mmio_read(off, &mut d);
        u64::from_le_bytes(d)
    };
    let n = u64::from(CommonCap0::from(rd(b, CHMU_COMMON_CAP0)).num_instances());
    let len = u64::from(CommonCap1::from(rd(b, CHMU_COMMON_CAP1)).instance_length());
    assert!(
        CHMU_FIRST_INSTANCE + n * len <= CHMU_BLOCK_SIZE,
        "instances leave the block"
    );
    for i in 0..n {
        let base = CHMU_FIRST_INSTANCE + i * len;
        let entries = u64::from(ChmuCap0::from(rd(b, base + CHMU_CAP0)).hotlist_size());
        let cap3 = rd(b, base + CHMU_CAP3);
        if b.config().hotlist_window.is_none() {
            assert!(cap3 + entries * 8 <= len, "hotlist {i} leaves its instance");
        }
    }
}

/// The memory device block: register accesses of any width and offset, and mailbox commands
/// (an implemented opcode or any, a payload of any length and content) with the clock moving
/// so background operations start, run and complete. After every doorbell the mailbox must be
/// idle again and report a return code.
pub fn mailbox_sequence(data: &[u8]) {
    use crate::core::mailbox::{MemdevIdentity, COMMANDS, PAYLOAD_SIZE};
    use crate::core::memdev::*;
    let mut b = MemdevBlock::new(MemdevIdentity {
        capacity: 1 << 30,
        fw_revision: "fuzz".into(),
    });
    let mut now = 0u64;
    let mut ops = data;
    while let [op, a, b0, b1, rest @ ..] = ops {
        let arg = u16::from_le_bytes([*b0, *b1]);
        match op % 4 {
            0 | 1 => {
                let width = [1usize, 2, 4, 8, 3][usize::from(*a) % 5];
                let off = u64::from(arg) % 0x1100;
                let v = rest.get(..8).unwrap_or(&[0xa5; 8]);
                let mut d = [0u8; 8];
                if op % 4 == 0 {
                    b.mmio_write(off, &v[..width], now);
                } else {
                    b.mmio_read(off, &mut d[..width], now);
                }
            }
            2 => {
                // A command: opcode from the table (or raw), payload from the input.
                let opcode = match a % 3 {
                    0 => arg,
                    _ => COMMANDS[usize::from(arg) % COMMANDS.len()].opcode,
                };
                let len = usize::from(arg >> 4).min(rest.len()).min(PAYLOAD_SIZE + 8);
                for (i, c) in rest[..len].chunks(8).enumerate() {
                    let mut w = [0u8; 8];
                    w[..c.len()].copy_from_slice(c);
                    b.mmio_write(MAILBOX_OFFSET + MB_PAYLOAD + 8 * i as u64, &w, now);
                }
                let len = if a & 0x80 != 0 {
                    u64::from(arg) << 5
                } else {
                    len as u64
                };
                let cmd = u64::from(opcode) | (len << 16);
                b.mmio_write(MAILBOX_OFFSET + MB_COMMAND, &cmd.to_le_bytes(), now);
                b.mmio_write(MAILBOX_OFFSET + MB_CONTROL, &[1], now);
                let mut d = [0u8; 8];
                b.mmio_read(MAILBOX_OFFSET + MB_CONTROL, &mut d, now);
                assert_eq!(d[0] & 1, 0, "the doorbell clears once the command is done");
                ops = &rest[len.min(rest.len() as u64) as usize..];
                continue;
            }
            _ => {
                now = now.saturating_add(u64::from(arg) * 100_000);
                if a & 0xf0 == 0xf0 {
                    b.reset();
                }
            }
        }
        ops = rest;
    }
}

/// The socket feed's record decoder and the trace parser on arbitrary bytes.
#[cfg(feature = "server")]
pub fn feed_decoder(data: &[u8]) {
    use crate::spec::record::{Record, RECORD_SIZE};
    use crate::transport::trace::parse_trace;
    for r in data.chunks_exact(RECORD_SIZE) {
        if let Ok(r) = r.try_into() {
            let a = Record::decode(r);
            assert_eq!(Record::decode(&a.encode()), a, "feed records round-trip");
        }
    }
    let _ = parse_trace(&String::from_utf8_lossy(data));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs(n: usize, len: usize, seed: u64) -> impl Iterator<Item = Vec<u8>> {
        (0..n as u64).map(move |i| {
            vfio_device::pattern::xorshift_bytes(
                len,
                seed.wrapping_add(i.wrapping_mul(0x9e37_79b9)),
            )
        })
    }

    #[test]
    fn mmio_sequences_never_panic() {
        for d in inputs(200, 1200, 0xc0ffee) {
            mmio_sequence(&d);
        }
    }

    #[test]
    fn mailbox_sequences_never_panic_nor_wedge() {
        for d in inputs(300, 1500, 0x3a11) {
            mailbox_sequence(&d);
        }
    }

    #[cfg(feature = "server")]
    #[test]
    fn feed_decoding_never_panics() {
        for d in inputs(200, 700, 0xfeed) {
            feed_decoder(&d);
        }
        feed_decoder(b"0x40000000 R 1\nzz\n\xff\xfe 0x1 W 99999999999999999999999\n");
    }
}
