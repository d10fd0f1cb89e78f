//! The access feed's wire format, shared by the CHMU server and the `chmu-tap` plugin: a
//! stream of 16-byte little-endian records `{ u64 word, u64 time }`.
//!
//! - An access: `word` is the guest-physical address (bits 51:1; a unit is at least 4 KiB,
//!   so bit 0 is free) with bit 0 set for a write, and in bits 63:52 the access's weight
//!   minus one: how many guest accesses this record stands for (a sampling feed picks one in
//!   N accesses and sends weight N, so summed weights estimate true counts; 0 there, weight
//!   1, is an unsampled access). `time` is the feed's clock.
//! - A clock tick: `word` is [`TICK_WORD`] (all ones, an address no access can have): the
//!   feed's clock has reached `time` and every access stamped before `time` has been sent.
//!   Ticks let epochs end on a clock that advances without accesses (guest instructions while
//!   the workload is elsewhere).

/// Size of one socket feed record.
pub const RECORD_SIZE: usize = 16;

/// First word of a clock-tick record.
pub const TICK_WORD: u64 = u64::MAX;

/// Bits of the first word holding the guest-physical address (x86-64: 52-bit physical).
pub const GPA_MASK: u64 = (1 << WEIGHT_SHIFT) - 2;
const WEIGHT_SHIFT: u32 = 52;
/// Largest weight a record carries (the field's all-ones value with the highest write
/// address would be a tick).
pub const MAX_WEIGHT: u32 = 4095;

/// Kind of a memory request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReqKind {
    Read,
    Write,
}

/// A guest-physical access as feeds carry it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GpaAccess {
    pub gpa: u64,
    pub kind: ReqKind,
    pub time: u64,
    /// Guest accesses this record stands for (1 unsampled; N when one in N was sampled).
    pub weight: u32,
}

impl GpaAccess {
    pub fn encode(&self) -> [u8; RECORD_SIZE] {
        encode(
            access_word(self.gpa, self.kind == ReqKind::Write, self.weight),
            self.time,
        )
    }
}

/// The first word of an access record; the weight is clamped to 1..=4096 (4096 only decodes,
/// see [`MAX_WEIGHT`]).
fn access_word(gpa: u64, write: bool, weight: u32) -> u64 {
    let w = u64::from(weight.clamp(1, 4096) - 1);
    (w << WEIGHT_SHIFT) | (gpa & GPA_MASK) | u64::from(write)
}

/// One decoded feed record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Record {
    Access(GpaAccess),
    /// The feed's clock reached this time.
    Tick(u64),
}

impl Record {
    pub fn decode(r: &[u8; RECORD_SIZE]) -> Self {
        let w = u64::from_le_bytes([r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7]]);
        let time = u64::from_le_bytes([r[8], r[9], r[10], r[11], r[12], r[13], r[14], r[15]]);
        if w == TICK_WORD {
            return Self::Tick(time);
        }
        Self::Access(GpaAccess {
            gpa: w & GPA_MASK,
            kind: if w & 1 != 0 {
                ReqKind::Write
            } else {
                ReqKind::Read
            },
            time,
            weight: (w >> WEIGHT_SHIFT) as u32 + 1,
        })
    }

    pub fn encode(&self) -> [u8; RECORD_SIZE] {
        match self {
            Self::Access(a) => a.encode(),
            Self::Tick(t) => encode(TICK_WORD, *t),
        }
    }
}

/// An access record from its parts (the plugin's hot path: no enum on the way); `weight`
/// at most [`MAX_WEIGHT`].
#[inline]
pub fn encode_access(gpa: u64, write: bool, weight: u32, time: u64) -> [u8; RECORD_SIZE] {
    encode(access_word(gpa, write, weight.min(MAX_WEIGHT)), time)
}

/// A clock-tick record.
#[inline]
pub fn encode_tick(time: u64) -> [u8; RECORD_SIZE] {
    encode(TICK_WORD, time)
}

fn encode(word: u64, time: u64) -> [u8; RECORD_SIZE] {
    let mut r = [0u8; RECORD_SIZE];
    r[..8].copy_from_slice(&word.to_le_bytes());
    r[8..].copy_from_slice(&time.to_le_bytes());
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_with_the_kind_bit() {
        let a = GpaAccess {
            gpa: 0x4000_1040,
            kind: ReqKind::Write,
            time: 77,
            weight: 1,
        };
        assert_eq!(Record::decode(&a.encode()), Record::Access(a));
        let r = GpaAccess {
            kind: ReqKind::Read,
            ..a
        };
        assert_eq!(Record::decode(&r.encode()), Record::Access(r));
        // Spec positions written out: word little-endian in bytes 0..8, bit 0 = write.
        let bytes = encode_access(0x4000_1040, true, 1, 77);
        assert_eq!(bytes[0], 0x41);
        assert_eq!(bytes[1], 0x10);
        assert_eq!(bytes[3], 0x40);
        assert_eq!(bytes[7], 0, "weight 1: field 0");
        assert_eq!(bytes[8], 77);
        assert_eq!(bytes, a.encode());
    }

    #[test]
    fn the_weight_sits_in_bits_63_52_as_weight_minus_one() {
        // Weight 8: 7 << 52, i.e. byte 6 bits 7:4 = 0x7, byte 7 = 0x00.
        let b = encode_access(0x4000_2000, false, 8, 5);
        assert_eq!(b[6], 0x70);
        assert_eq!(b[7], 0x00);
        // Weight 4095: 4094 << 52 = 0xffe << 52: byte 7 = 0xff, byte 6 high nibble 0xe.
        let b = encode_access(0x4000_2000, false, 4095, 5);
        assert_eq!((b[7], b[6] & 0xf0), (0xff, 0xe0));
        let Record::Access(a) = Record::decode(&b) else {
            panic!("an access");
        };
        assert_eq!(
            (a.gpa, a.weight, a.kind),
            (0x4000_2000, 4095, ReqKind::Read)
        );
        // Larger weights are capped; the address never spills into the weight.
        assert_eq!(encode_access(0x4000_2000, false, 9999, 5), b);
        let top = encode_access(u64::MAX, true, 1, 0);
        assert_eq!(top[7], 0x00);
        assert_eq!(top[6], 0x0f);
        // A record without a weight field (all zero) is one access.
        let old = encode(0x4000_3001, 9);
        assert!(matches!(
            Record::decode(&old),
            Record::Access(GpaAccess { weight: 1, .. })
        ));
    }

    #[test]
    fn ticks_are_all_ones_and_never_an_access() {
        let t = encode_tick(0x0102_0304_0506_0708);
        assert_eq!(&t[..8], &[0xff; 8]);
        assert_eq!(t[8], 0x08);
        assert_eq!(Record::decode(&t), Record::Tick(0x0102_0304_0506_0708));
        assert_eq!(Record::Tick(5).encode(), encode_tick(5));
        // The highest address a write can carry still decodes as an access.
        let top = encode_access(u64::MAX - 1, true, MAX_WEIGHT, 1);
        assert!(matches!(Record::decode(&top), Record::Access(_)));
    }
}
