//! Fuzz entry points for the CHMU (used by `fuzz/` targets and by deterministic smoke tests):
//! MMIO sequences against the register block interleaved with accesses, and the feed decoder.

use crate::chmu::{ChmuBlock, ChmuConfig};
use crate::hotness::{Access, Hotness, ReqKind};

/// MMIO writes/reads of any width and offset, interleaved with accesses and clock advances.
pub fn mmio_sequence(data: &[u8]) {
    let mut b = ChmuBlock::new(ChmuConfig::default());
    let mut h = Hotness::new(2, 1 << 30);
    let mut t = 0u64;
    for op in data.chunks_exact(12) {
        let off = u64::from(u16::from_le_bytes([op[1], op[2]]));
        let v = u64::from_le_bytes([op[3], op[4], op[5], op[6], op[7], op[8], op[9], op[10]]);
        let width = [1usize, 2, 4, 8, 3][usize::from(op[11]) % 5];
        match op[0] % 5 {
            0 => b.mmio_write(off, &v.to_le_bytes()[..width]),
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
                h.feed(
                    &mut b,
                    &[Access {
                        dpa: v % (1 << 31),
                        kind,
                        time: t,
                    }],
                );
            }
            3 => {
                t = t.wrapping_add(v % 100_000_000);
                h.advance(&mut b, t);
            }
            _ => b.reset(),
        }
    }
}

/// The memory device block: register accesses of any width and offset, and mailbox commands
/// (an implemented opcode or any, a payload of any length and content) with the clock moving
/// so background operations start, run and complete. After every doorbell the mailbox must be
/// idle again and report a return code.
pub fn mailbox_sequence(data: &[u8]) {
    use crate::mailbox::{MemdevIdentity, COMMANDS, PAYLOAD_SIZE};
    use crate::memdev::*;
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
    use crate::feed::{parse_trace, Record, RECORD_SIZE};
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
            device_sdxi::fuzzing::xorshift_bytes(
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
