//! Hot-set workloads shaped like real code, for the `chmu-hot` test: the same hot pages read
//! the same number of times per round, through one of several instruction patterns
//! ([`HotLoop`]):
//!
//! - [`HotLoop::Sites64`]: 64 distinct load instructions per page, one per cache line;
//! - [`HotLoop::IndexedLoad`]: one load instruction, a gather `sum += base[offset[i]]` over
//!   every line of the hot set in a seeded order;
//! - [`HotLoop::RepMovsb`]: one `rep movsb` copying 64 bytes of each hot page (one line, a
//!   different one each round) into a buffer on node 0: 64 one-byte reads per page, as TCG
//!   executes the string instruction element by element;
//! - [`HotLoop::PointerChase`]: one `mov reg, [reg]` following a cycle through every line of
//!   the hot set in a seeded order (the chain is written before the CHMU is enabled).
//!
//! Every kind makes [`ACCESSES_PER_PAGE`] reads of each hot page per round, so the workload
//! knows each hot page's true access count. The single-site loops are written in inline
//! assembly, each inside one function that is never inlined: the compiler cannot unroll or
//! duplicate the one instruction that touches the hot pages. Checked on the release build
//! with `objdump -d -M intel` of the static agent: `indexed_loads`, `rep_movsb` and `chase`
//! each appear once, and each holds one instruction that reads through a hot-page address
//! (`movzx r8d, byte [rdi+rcx]`, `rep movsb`, `mov rax, [rax]`); `touch_page` holds 64.

pub use crate::protocol::HotLoop;
use std::arch::asm;

/// Reads of each hot page per round, whatever the kind.
pub const ACCESSES_PER_PAGE: u64 = 64;
const LINE: usize = 64;
const LINES: usize = 4096 / LINE;

/// 64 distinct load instructions over a page, one per line.
#[inline(never)]
fn touch_page(p: *const u8) -> u64 {
    let mut acc = 0u64;
    macro_rules! ld {
        ($($k:literal)*) => { $(
            // SAFETY: k * 64 < 4096: inside the page the caller owns.
            acc = acc.wrapping_add(u64::from(unsafe { std::ptr::read_volatile(p.add($k * 64)) }));
        )* };
    }
    ld!(0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30 31
        32 33 34 35 36 37 38 39 40 41 42 43 44 45 46 47 48 49 50 51 52 53 54 55 56 57 58 59 60 61 62 63);
    acc
}

/// One load instruction (`movzx`) reads `base + offsets[i]` for every i.
///
/// # Safety
/// Every `base + offsets[i]` must be readable.
#[inline(never)]
unsafe fn indexed_loads(base: *const u8, offsets: &[u32]) -> u64 {
    let mut acc = 0u64;
    if offsets.is_empty() {
        return 0;
    }
    // SAFETY: the caller vouches for every address; the loop reads offsets[..len] and those.
    unsafe {
        asm!(
            "2:",
            "mov {o:e}, dword ptr [{p}]",
            "movzx {t:e}, byte ptr [{base} + {o}]",
            "add {acc}, {t}",
            "add {p}, 4",
            "dec {n}",
            "jnz 2b",
            base = in(reg) base,
            p = inout(reg) offsets.as_ptr() => _,
            n = inout(reg) offsets.len() => _,
            o = out(reg) _,
            t = out(reg) _,
            acc = inout(reg) acc,
            options(nostack, readonly),
        );
    }
    acc
}

/// One `rep movsb` of `len` bytes from `src` to `dst`.
///
/// # Safety
/// `src..src+len` readable, `dst..dst+len` writable, not overlapping.
#[inline(never)]
unsafe fn rep_movsb(src: *const u8, dst: *mut u8, len: usize) {
    // SAFETY: as the caller vouches; the direction flag is clear (the ABI's default).
    unsafe {
        asm!(
            "rep movsb",
            inout("rsi") src => _,
            inout("rdi") dst => _,
            inout("rcx") len => _,
            options(nostack, preserves_flags),
        );
    }
}

/// One load instruction (`mov reg, [reg]`) follows the chain from `start` `steps` times.
///
/// # Safety
/// Every pointer on the chain must point at a readable pointer.
#[inline(never)]
unsafe fn chase(start: *const u8, steps: usize) -> *const u8 {
    let mut p = start;
    if steps == 0 {
        return p;
    }
    // SAFETY: as the caller vouches.
    unsafe {
        asm!(
            "2:",
            "mov {p}, qword ptr [{p}]",
            "dec {n}",
            "jnz 2b",
            p = inout(reg) p,
            n = inout(reg) steps => _,
            options(nostack, readonly),
        );
    }
    p
}

/// Waits before the CHMU is enabled until the feed has delivered the accesses that faulted
/// the workload's pages in (the kernel zeroes each page: thousands of stores). The tap sends a
/// vCPU's accesses within about a millisecond, but on a busy host the server may process them
/// later, after the enable, and would count them. A deterministic guest spins a fixed number
/// of instructions instead (its sleeps take no host time).
pub fn let_the_feed_settle(reproducible: bool) {
    if reproducible {
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = std::hint::black_box(x.wrapping_add(i));
        }
        std::hint::black_box(x);
    } else {
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// Every line of the hot pages in a seeded order (xorshift64* Fisher-Yates).
fn shuffled_lines(pages: usize, seed: u64) -> Vec<(usize, usize)> {
    let mut v: Vec<(usize, usize)> = (0..pages)
        .flat_map(|p| (0..LINES).map(move |l| (p, l)))
        .collect();
    let mut x = seed ^ 0x2545_f491_4f6c_dd1d;
    for i in (1..v.len()).rev() {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        let r = x.wrapping_mul(0x2545_f491_4f6c_dd1d);
        v.swap(i, (r % (i as u64 + 1)) as usize);
    }
    v
}

/// A prepared hot-set workload over pages of a mapping the caller owns.
#[derive(Debug)]
pub struct HotSet {
    kind: HotLoop,
    base: *mut u8,
    /// Offsets of the hot pages from `base`, in workload order.
    pages: Vec<usize>,
    /// IndexedLoad: offset of every line read, from `base`.
    offsets: Vec<u32>,
    /// RepMovsb: the destination on the caller's node.
    buf: Vec<u8>,
}

impl HotSet {
    /// Prepares `kind` over the pages at `base + pages[i]` (page-aligned offsets). A pointer
    /// chase writes its chain into the hot pages now, so do this before the CHMU is enabled.
    ///
    /// # Safety
    /// `base + pages[i] .. + 4096` must be readable and writable for the life of the set, and
    /// the offsets must fit in 32 bits.
    pub unsafe fn new(kind: HotLoop, base: *mut u8, pages: &[usize], seed: u64) -> Self {
        let lines = shuffled_lines(pages.len(), seed);
        let at = |(p, l): (usize, usize)| pages[p] + l * LINE;
        let mut set = Self {
            kind,
            base,
            pages: pages.to_vec(),
            offsets: Vec::new(),
            buf: Vec::new(),
        };
        match kind {
            HotLoop::Sites64 => {}
            HotLoop::IndexedLoad => {
                set.offsets = lines.iter().map(|&x| at(x) as u32).collect();
            }
            HotLoop::RepMovsb => set.buf = vec![0; LINE],
            HotLoop::PointerChase => {
                for (i, &x) in lines.iter().enumerate() {
                    let next = base.wrapping_add(at(lines[(i + 1) % lines.len()]));
                    // SAFETY: every line of every hot page is inside the caller's mapping;
                    // line starts are 8-byte aligned.
                    unsafe { std::ptr::write_volatile(base.add(at(x)).cast::<*mut u8>(), next) };
                }
                if let Some(&first) = lines.first() {
                    set.offsets = vec![at(first) as u32];
                }
            }
        }
        set
    }

    /// Round `r`: [`ACCESSES_PER_PAGE`] reads of every hot page; returns a value that depends
    /// on what was read.
    pub fn round(&mut self, r: usize) -> u64 {
        let page = |k: usize| self.base.wrapping_add(self.pages[k]);
        match self.kind {
            HotLoop::Sites64 => (0..self.pages.len())
                .map(|k| touch_page(page(k)))
                .fold(0, u64::wrapping_add),
            // SAFETY: every offset is a line of a hot page (new's contract).
            HotLoop::IndexedLoad => unsafe { indexed_loads(self.base, &self.offsets) },
            HotLoop::RepMovsb => {
                let line = (r % LINES) * LINE;
                for k in 0..self.pages.len() {
                    // SAFETY: one line inside hot page k into our own 64-byte buffer.
                    unsafe { rep_movsb(page(k).wrapping_add(line), self.buf.as_mut_ptr(), LINE) };
                }
                self.buf.iter().map(|&b| u64::from(b)).sum()
            }
            HotLoop::PointerChase => {
                let Some(&start) = self.offsets.first() else {
                    return 0;
                };
                let steps = self.pages.len() * LINES;
                // SAFETY: the chain new() wrote is a cycle through the hot pages' lines, each
                // pointing at the next; a round walks once around it.
                let end = unsafe { chase(self.base.wrapping_add(start as usize), steps) };
                end as u64
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 4-page mapping-like buffer (page-aligned) and its hot pages 1 and 3.
    fn run(kind: HotLoop) -> (Vec<u8>, u64) {
        let mut mem = vec![0u8; 5 * 4096];
        let off = mem.as_ptr().align_offset(4096);
        let base = mem[off..].as_mut_ptr();
        for (i, b) in mem[off..off + 4 * 4096].iter_mut().enumerate() {
            *b = (i % 251) as u8;
        }
        // SAFETY: pages 1 and 3 lie inside `mem`, which outlives the set.
        let mut set = unsafe { HotSet::new(kind, base, &[4096, 3 * 4096], 9) };
        let v = (0..3).map(|r| set.round(r)).fold(0, u64::wrapping_add);
        (mem, v)
    }

    #[test]
    fn every_kind_reads_its_hot_pages() {
        // The byte at line start l*64 of page p is (p*4096 + l*64) % 251.
        let expect: u64 = [1usize, 3]
            .iter()
            .flat_map(|p| (0..64).map(move |l| ((p * 4096 + l * 64) % 251) as u64))
            .sum();
        assert_eq!(run(HotLoop::Sites64).1, 3 * expect);
        assert_eq!(run(HotLoop::IndexedLoad).1, 3 * expect);
        // Round r leaves line r of page 3 (the last hot page) in the buffer.
        let (_, v) = run(HotLoop::RepMovsb);
        let lines: u64 = (0..3)
            .flat_map(|r| (0..64).map(move |i| ((3 * 4096 + r * 64 + i) % 251) as u64))
            .sum();
        assert_eq!(v, lines);
    }

    #[test]
    fn the_pointer_chase_is_one_cycle_through_every_hot_line() {
        let mut mem = vec![0u8; 4 * 4096];
        let off = mem.as_ptr().align_offset(4096);
        let base = mem[off..].as_mut_ptr();
        // SAFETY: pages 0 and 2 lie inside `mem`.
        let set = unsafe { HotSet::new(HotLoop::PointerChase, base, &[0, 2 * 4096], 4) };
        let start = base.wrapping_add(set.offsets[0] as usize);
        let mut seen = std::collections::BTreeSet::new();
        let mut p = start.cast_const();
        for _ in 0..128 {
            seen.insert(p as usize - base as usize);
            // SAFETY: the chain lies inside `mem`.
            p = unsafe { chase(p, 1) };
        }
        assert_eq!(p, start.cast_const(), "128 steps come back to the start");
        let lines: std::collections::BTreeSet<usize> = [0usize, 2]
            .iter()
            .flat_map(|pg| (0..64).map(move |l| pg * 4096 + l * 64))
            .collect();
        assert_eq!(seen, lines);
        assert_ne!(shuffled_lines(2, 4), shuffled_lines(2, 5), "seeded order");
    }
}
