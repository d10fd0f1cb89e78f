//! Deterministic byte patterns (xorshift64) for tests, fuzz smoke runs and guest workloads:
//! data that differs byte by byte, so a copy that lands at the wrong offset or a stale buffer
//! shows up in a comparison. Not random enough for anything else.

/// `len` pseudo-random bytes from `seed` (xorshift64; the same seed gives the same bytes).
pub fn xorshift_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_bytes_other_seed_other_bytes() {
        assert_eq!(xorshift_bytes(64, 7), xorshift_bytes(64, 7));
        assert_ne!(xorshift_bytes(64, 7), xorshift_bytes(64, 8));
        let b = xorshift_bytes(4096, 1);
        assert!(b.windows(2).filter(|w| w[0] == w[1]).count() < 64);
    }
}
