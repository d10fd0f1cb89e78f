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

    #[cfg(feature = "server")]
    #[test]
    fn feed_decoding_never_panics() {
        for d in inputs(200, 700, 0xfeed) {
            feed_decoder(&d);
        }
        feed_decoder(b"0x40000000 R 1\nzz\n\xff\xfe 0x1 W 99999999999999999999999\n");
    }
}
