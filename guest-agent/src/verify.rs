//! How much of a batch the guest checks, and the check itself, kept off the timed path.
//!
//! The kernel verifies nothing after a migration copy (mm/migrate.c trusts `folio_copy()` and
//! the offload driver's status). The test bed checks, but reports that cost apart from the
//! migration's: a batch's checksums are timed separately (`BatchStat::verify_us`) and left
//! out of its latency and throughput, and the copy benchmark times migration with no
//! verification at all, then verifies every moved folio in a separate pass and reports that
//! pass's cost as its own column. Whatever the mode, the harness reads every moved folio back
//! from the guest-RAM files at the end, and the writers' per-thread counters stay on.

use crate::spec::folio_checksum;
use serde::{Deserialize, Serialize};

/// Which copies the guest checksums (`verify = "full" | "sample" | "off"`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VerifyMode {
    /// Every folio: source checksum before the copy, destination after.
    #[default]
    Full,
    /// One folio in [`SAMPLE_EVERY`] (by index, so every folio is checked in some batch of a
    /// long run), and the first folio of every batch.
    Sample,
    /// None in the guest (the host still reads every moved folio back at the end).
    Off,
}

/// The sampling period of [`VerifyMode::Sample`].
pub const SAMPLE_EVERY: u32 = 16;

impl VerifyMode {
    /// Whether the guest checks folio `folio`, the `pos`th of its batch.
    pub fn checks(self, folio: u32, pos: usize) -> bool {
        match self {
            Self::Full => true,
            Self::Sample => pos == 0 || folio.is_multiple_of(SAMPLE_EVERY),
            Self::Off => false,
        }
    }
}

/// A verification pass over copies: `pairs` yields (source, destination) bytes; returns
/// (folios checked, mismatches, microseconds spent).
pub fn check_pairs<'a>(pairs: impl Iterator<Item = (&'a [u8], &'a [u8])>) -> (u64, u64, u64) {
    let t = std::time::Instant::now();
    let (mut n, mut bad) = (0u64, 0u64);
    for (s, d) in pairs {
        n += 1;
        if folio_checksum(s) != folio_checksum(d) {
            bad += 1;
        }
    }
    (n, bad, t.elapsed().as_micros() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_pick_their_folios() {
        let picked = |m: VerifyMode| (0..64u32).filter(|&f| m.checks(f + 1, f as usize)).count();
        assert_eq!(picked(VerifyMode::Full), 64);
        assert_eq!(picked(VerifyMode::Off), 0);
        // The batch's first folio (1) and 16, 32, 48, 64.
        assert_eq!(picked(VerifyMode::Sample), 5);
    }

    #[test]
    fn a_pass_counts_mismatches() {
        let a = vec![1u8; 4096];
        let mut b = a.clone();
        let (n, bad, _) = check_pairs([(&a[..], &b[..])].into_iter());
        assert_eq!((n, bad), (1, 0));
        b[4095] = 0;
        let (n, bad, _) = check_pairs([(&a[..], &a[..]), (&a[..], &b[..])].into_iter());
        assert_eq!((n, bad), (2, 1));
    }

    #[test]
    fn the_mode_parses_from_its_names() {
        let m: Vec<VerifyMode> = serde_json::from_str(r#"["full","sample","off"]"#).expect("parse");
        assert_eq!(
            m,
            vec![VerifyMode::Full, VerifyMode::Sample, VerifyMode::Off]
        );
        assert!(serde_json::from_str::<VerifyMode>(r#""some""#).is_err());
    }
}
