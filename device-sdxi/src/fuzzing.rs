//! Fuzz entry points (used by the `cargo fuzz` targets in `fuzz/` and by a deterministic
//! smoke test in the unit tests, so CI runs them too). Fuzz bytes are decoded into structured
//! operations; the device must never panic and never reach memory outside the guest's maps
//! (guaranteed by [`GuestRam`], which the targets use as their only memory).

use crate::dma::GuestRam;
use crate::driver::DriverMemory;
use crate::engine::{Engine, EngineOptions, Irq};
use crate::function::SdxiConfig;
use crate::regs;
use std::sync::Arc;

#[derive(Debug)]
struct NoIrq;
impl Irq for NoIrq {
    fn trigger(&self, _: u16) -> bool {
        true
    }
}

/// Deterministic pseudo-random bytes (xorshift64), for smoke-testing fuzz entry points and
/// for data patterns that must differ byte by byte.
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

/// Base and size of the fuzzed guest memory.
pub const RAM_BASE: u64 = 0x10_0000;
pub const RAM_SIZE: usize = 1 << 20;

struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (a, b) = self.0.split_at_checked(N)?;
        self.0 = b;
        a.try_into().ok()
    }
    fn u8(&mut self) -> Option<u8> {
        self.take::<1>().map(|b| b[0])
    }
    fn u64(&mut self) -> Option<u64> {
        self.take::<8>().map(u64::from_le_bytes)
    }
}

fn engine(ram: &Arc<GuestRam>) -> Engine<GuestRam, NoIrq> {
    let cfg = SdxiConfig {
        max_cxt: 7,
        ..SdxiConfig::default()
    };
    let e = Engine::new(cfg, NoIrq, EngineOptions::default());
    e.set_memory(Some(Arc::clone(ram)));
    e
}

/// MMIO sequences: each op is (kind, offset, value) decoded from the input; writes, reads of
/// any width and offset, doorbells and passes interleaved.
pub fn mmio_sequence(data: &[u8]) {
    let ram = Arc::new(GuestRam::anonymous(RAM_BASE, 64 << 10));
    let e = engine(&ram);
    let mut b = Bytes(data);
    while let (Some(kind), Some(off), Some(v)) = (b.u8(), b.take::<3>(), b.u64()) {
        let off =
            u64::from(u32::from_le_bytes([off[0], off[1], off[2], 0])) % regs::CONTROL_BAR_SIZE;
        let width = [1usize, 2, 4, 8, 3][usize::from(kind >> 5) % 5];
        match kind & 3 {
            0 => e.mmio_write(off, &v.to_le_bytes()[..width]),
            1 => {
                let mut out = [0u8; 8];
                e.mmio_read(off, &mut out[..width]);
            }
            2 => {
                let c = (v % 9) as u16;
                if e.doorbell(c) {
                    e.process(c);
                }
            }
            _ => e.reset(),
        }
    }
}

/// Descriptor rings over hostile guest memory: valid tables are laid out the way the driver
/// does (admin context plus three data contexts, 64-entry rings), then the input overwrites
/// 8-byte words anywhere in them (ring slots, CXT_CTL, CXT_STS, write indices, L1 entries,
/// AKeys) and sets the write indices; every context is then processed, twice.
pub fn ring_processing(data: &[u8]) {
    use crate::driver::Driver;
    use crate::mem::{AkeyEnt, CxtState};
    let ram = Arc::new(GuestRam::anonymous(RAM_BASE, RAM_SIZE));
    let Ok(mut drv) = Driver::new(&*ram, RAM_BASE, RAM_SIZE as u64 / 2) else {
        return;
    };
    for id in 0..4u16 {
        let state = if id == 0 {
            CxtState::Run
        } else {
            CxtState::StopSw
        };
        if drv
            .add_context(&*ram, id, 64, &[AkeyEnt::new(Some(id), 0)], state)
            .is_err()
        {
            return;
        }
    }
    let used = drv.alloc(0, 4096).unwrap_or(RAM_BASE) - RAM_BASE;
    let mut b = Bytes(data);
    while let (Some(sel), Some(off), Some(v)) = (b.u8(), b.take::<2>(), b.u64()) {
        let off = u64::from(u16::from_le_bytes(off));
        let addr = match sel % 4 {
            // Anywhere in the tables the driver wrote.
            0 => RAM_BASE + (off * 8) % used,
            // A write index: small values, so rings are actually walked.
            1 => match drv.context(u16::from(sel >> 2) % 4) {
                Some(c) => {
                    ram.write_bytes(c.write_index, &(v % 130).to_le_bytes());
                    continue;
                }
                None => continue,
            },
            // A ring slot of some context.
            2 => match drv.context(u16::from(sel >> 2) % 4) {
                Some(c) => c.ring + (off * 8) % (64 * 64),
                None => continue,
            },
            // The data area behind the tables (copy sources, destinations, CST_BLKs).
            _ => RAM_BASE + used + (off * 8) % (RAM_SIZE as u64 - used),
        };
        ram.write_bytes(addr & !7, &v.to_le_bytes());
    }
    let e = engine(&ram);
    e.mmio_write(regs::MMIO_CXT_L2, &drv.l2.to_le_bytes());
    e.mmio_write(
        regs::MMIO_ERR_CFG,
        &((RAM_BASE + RAM_SIZE as u64 - 8192) | 1).to_le_bytes(),
    );
    e.mmio_write(
        regs::MMIO_CTL0,
        &(regs::FnRequest::Active as u64 | (1 << 4)).to_le_bytes(),
    );
    for _ in 0..2 {
        for c in 0..8u16 {
            for k in e.process(c) {
                e.process(k);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic pseudo-random inputs, so every CI run covers the same cases.
    fn inputs(n: usize, len: usize, seed: u64) -> impl Iterator<Item = Vec<u8>> {
        (0..n as u64)
            .map(move |i| xorshift_bytes(len, seed.wrapping_add(i.wrapping_mul(0x9e37_79b9))))
    }

    #[test]
    fn mmio_sequences_never_panic() {
        for d in inputs(300, 600, 0x5eed) {
            mmio_sequence(&d);
        }
    }

    #[test]
    fn random_rings_never_panic() {
        for d in inputs(60, 4000, 0xfeed) {
            ring_processing(&d);
        }
    }

    /// A structured case: valid tables built by the driver helper, then the ring slots
    /// overwritten with garbage (the most interesting place for random bytes).
    #[test]
    fn garbage_descriptors_in_a_valid_ring_never_panic() {
        use crate::driver::Driver;
        use crate::mem::{AkeyEnt, CxtState};
        for (n, d) in inputs(40, 64 * 64, 0xbeef).enumerate() {
            let ram = Arc::new(GuestRam::anonymous(RAM_BASE, RAM_SIZE));
            let e = engine(&ram);
            let mut drv = Driver::new(&*ram, RAM_BASE, 512 << 10).expect("window");
            let c = drv
                .add_context(&*ram, 0, 64, &[AkeyEnt::new(Some(1), 0)], CxtState::Run)
                .expect("admin");
            ram.write_bytes(c.ring, &d);
            ram.write_bytes(c.write_index, &(n as u64 % 70).to_le_bytes());
            e.mmio_write(regs::MMIO_CXT_L2, &drv.l2.to_le_bytes());
            e.mmio_write(
                regs::MMIO_CTL0,
                &(regs::FnRequest::Active as u64).to_le_bytes(),
            );
            for k in e.process(0) {
                e.process(k);
            }
        }
    }
}
