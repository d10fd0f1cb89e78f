//! The access feed's wire format, shared by the CHMU server and the `chmu-tap` plugin: a
//! stream of 16-byte little-endian records `{ u64 word, u64 time }`.
//!
//! - An access: `word` is the guest-physical address with bit 0 set for a write (addresses
//!   are at least 2-byte granular, so the bit is free); `time` is the feed's clock.
//! - A clock tick: `word` is [`TICK_WORD`] (all ones, an address no access can have): the
//!   feed's clock has reached `time` and every access stamped before `time` has been sent.
//!   Ticks let epochs end on a clock that advances without accesses (guest instructions while
//!   the workload is elsewhere).

use crate::hotness::ReqKind;

/// Size of one socket feed record.
pub const RECORD_SIZE: usize = 16;

/// First word of a clock-tick record.
pub const TICK_WORD: u64 = u64::MAX;

/// A guest-physical access as feeds carry it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GpaAccess {
    pub gpa: u64,
    pub kind: ReqKind,
    pub time: u64,
}

impl GpaAccess {
    pub fn encode(&self) -> [u8; RECORD_SIZE] {
        encode(
            (self.gpa & !1) | u64::from(self.kind == ReqKind::Write),
            self.time,
        )
    }
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
            gpa: w & !1,
            kind: if w & 1 != 0 {
                ReqKind::Write
            } else {
                ReqKind::Read
            },
            time,
        })
    }

    pub fn encode(&self) -> [u8; RECORD_SIZE] {
        match self {
            Self::Access(a) => a.encode(),
            Self::Tick(t) => encode(TICK_WORD, *t),
        }
    }
}

/// An access record from its parts (the plugin's hot path: no enum on the way).
#[inline]
pub fn encode_access(gpa: u64, write: bool, time: u64) -> [u8; RECORD_SIZE] {
    encode((gpa & !1) | u64::from(write), time)
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
        };
        assert_eq!(Record::decode(&a.encode()), Record::Access(a));
        let r = GpaAccess {
            kind: ReqKind::Read,
            ..a
        };
        assert_eq!(Record::decode(&r.encode()), Record::Access(r));
        // Spec positions written out: word little-endian in bytes 0..8, bit 0 = write.
        let bytes = encode_access(0x4000_1040, true, 77);
        assert_eq!(bytes[0], 0x41);
        assert_eq!(bytes[1], 0x10);
        assert_eq!(bytes[3], 0x40);
        assert_eq!(bytes[8], 77);
        assert_eq!(bytes, a.encode());
    }

    #[test]
    fn ticks_are_all_ones_and_never_an_access() {
        let t = encode_tick(0x0102_0304_0506_0708);
        assert_eq!(&t[..8], &[0xff; 8]);
        assert_eq!(t[8], 0x08);
        assert_eq!(Record::decode(&t), Record::Tick(0x0102_0304_0506_0708));
        assert_eq!(Record::Tick(5).encode(), encode_tick(5));
        // The highest address a write can carry still decodes as an access.
        let top = encode_access(u64::MAX - 1, false, 1);
        assert!(matches!(Record::decode(&top), Record::Access(_)));
    }
}
