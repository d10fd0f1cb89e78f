//! Fuzz entry points (used by the `cargo fuzz` targets in `fuzz/` and by a deterministic
//! smoke test in the unit tests, so CI runs them too). Fuzz bytes are decoded into structured
//! operations; the device must never panic and never reach memory outside the guest's maps
//! (guaranteed by [`GuestRam`], which the targets use as their only memory).

use crate::core::{Engine, EngineOptions, Platform};
use crate::driver::DriverMemory;
use crate::regs;
use crate::regs::SdxiConfig;
use std::sync::Arc;
use vfio_device::dma::GuestRam;

#[derive(Debug)]
struct NoIrq;
impl Platform for NoIrq {
    fn trigger(&self, _: u16) -> bool {
        true
    }
}

pub use vfio_device::pattern::xorshift_bytes;

mod dma_churn;
pub use dma_churn::ring_dma_churn;

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

/// Write index versus vl timing on one data context, checked against a model. The input is
/// a stream of steps: producers reserve slots (the write index is stored first, as the spec's
/// multi-producer enqueue and the Linux driver do) and write NOPs or COPYs with vl clear at
/// once or only later (so a pass can meet the slot's previous lap), set vl on any slot of any
/// open reservation, cancel a reservation by overwriting what is not consumed with valid NOPs
/// (terminate_all), plant valid "trap" descriptors beyond the write index, and the function
/// runs passes in between. Every descriptor has its own CST_BLK, so after each pass: a
/// descriptor ran at most once and never before its vl was set, and no trap ran. At the end
/// every slot is made valid and the ring must drain with every descriptor run exactly once.
pub fn ring_protocol(data: &[u8]) {
    let Some(mut m) = ProtocolModel::new() else {
        return;
    };
    let mut b = Bytes(data);
    while let (Some(op), Some(arg)) = (b.u8(), b.u8()) {
        let ok = match op % 6 {
            0 | 1 => m.reserve(op % 6 == 1, arg),
            2 => {
                m.validate(arg);
                true
            }
            3 => {
                m.terminate(arg);
                true
            }
            4 => {
                m.trap(arg);
                true
            }
            _ => {
                m.pass();
                true
            }
        };
        if !ok {
            return;
        }
    }
    m.drain();
}

/// One open reservation of [`ProtocolModel`].
struct Open {
    r: crate::driver::Reservation,
    csbs: Vec<u64>,
    valid: Vec<bool>,
    /// Descriptors not written to the ring yet.
    unwritten: Vec<Option<crate::mem::Descriptor>>,
}

/// Software's side of [`ring_protocol`] and what it expects of the function.
struct ProtocolModel {
    ram: Arc<GuestRam>,
    e: Engine<GuestRam, NoIrq>,
    drv: crate::driver::Driver,
    trap: u64,
    /// Ring indices holding a planted trap (software wrote them; it overwrites them when it
    /// reserves them, never leaving its own valid descriptor to a later lap).
    traps: Vec<u64>,
    open: Vec<Open>,
    /// CST_BLKs of descriptors whose every slot software has made valid.
    tickets: Vec<u64>,
}

impl ProtocolModel {
    const DATA: u64 = RAM_BASE + (RAM_SIZE as u64 / 2);

    fn new() -> Option<Self> {
        use crate::mem::{AkeyEnt, CxtState};
        let ram = Arc::new(GuestRam::anonymous(RAM_BASE, RAM_SIZE));
        let mut drv = crate::driver::Driver::new(&*ram, RAM_BASE, RAM_SIZE as u64 / 2).ok()?;
        for id in 0..2u16 {
            drv.add_context(&*ram, id, 64, &[AkeyEnt::new(Some(1), 0)], CxtState::Run)
                .ok()?;
        }
        let trap = drv.csb(&*ram, 1).ok()?;
        let e = engine(&ram);
        e.mmio_write(regs::MMIO_CXT_L2, &drv.l2.to_le_bytes());
        e.mmio_write(
            regs::MMIO_CTL0,
            &(regs::FnRequest::Active as u64).to_le_bytes(),
        );
        Some(Self {
            ram,
            e,
            drv,
            trap,
            traps: Vec::new(),
            open: Vec::new(),
            tickets: Vec::new(),
        })
    }

    /// Reserves 1-4 slots of NOPs or COPYs; false when the model ran out of CST_BLK space.
    fn reserve(&mut self, copies: bool, arg: u8) -> bool {
        use crate::driver;
        let n = 1 + u64::from(arg % 4);
        let Some(r) = self.drv.reserve(&*self.ram, 1, n) else {
            return true;
        };
        let mut o = Open {
            r,
            csbs: Vec::new(),
            valid: vec![false; n as usize],
            unwritten: Vec::new(),
        };
        for i in 0..n {
            let Ok(c) = self.drv.csb(&*self.ram, 1) else {
                return false;
            };
            let d = if copies {
                let k = (r.start + i) % 64;
                let (src, dst) = (Self::DATA + k * 256, Self::DATA + (64 + k) * 256);
                driver::copy(src, dst, 256, Some(c), false)
            } else {
                driver::nop(Some(c), arg & 0x80 != 0)
            };
            // Bit 6: write the slot only when it is validated.
            let trapped = self.traps.contains(&(r.start + i));
            if arg & 0x40 == 0 || trapped {
                r.write(&*self.ram, i, &d, false);
                o.unwritten.push(None);
            } else {
                o.unwritten.push(Some(d));
            }
            o.csbs.push(c);
        }
        self.traps.retain(|t| *t >= r.start + n);
        self.open.push(o);
        true
    }

    /// Sets vl on one slot software has not validated yet (it sets vl once per slot: a slot
    /// it validated may have been consumed and reserved again on the next lap).
    fn validate(&mut self, arg: u8) {
        if self.open.is_empty() {
            return;
        }
        let k = usize::from(arg) % self.open.len();
        let v = &self.open[k].valid;
        let first = usize::from(arg >> 4) % v.len();
        if let Some(i) = (first..v.len()).chain(0..first).find(|i| !v[*i]) {
            self.validate_slot(k, i);
        }
    }

    /// Writes slot `i` of open reservation `k` if it is not yet, then sets its vl.
    fn validate_slot(&mut self, k: usize, i: usize) {
        let o = &mut self.open[k];
        if let Some(d) = o.unwritten[i].take() {
            o.r.write(&*self.ram, i as u64, &d, false);
        }
        o.r.make_valid(&*self.ram, i as u64);
        o.valid[i] = true;
        if o.valid.iter().all(|v| *v) {
            let o = self.open.swap_remove(k);
            self.tickets.extend(o.csbs);
        }
    }

    /// terminate_all: what the function has not consumed yet becomes valid NOPs (consumed
    /// slots are software's again, possibly reserved on the next lap).
    fn terminate(&mut self, arg: u8) {
        if self.open.is_empty() {
            return;
        }
        let o = self.open.swap_remove(usize::from(arg) % self.open.len());
        let ri = self.drv.read_index(&*self.ram, 1);
        for (i, csb) in o.csbs.iter().enumerate() {
            if o.r.start + i as u64 >= ri {
                let nop = crate::driver::nop(Some(*csb), false);
                o.r.write(&*self.ram, i as u64, &nop, true);
            }
        }
        self.tickets.extend(o.csbs);
    }

    /// A valid trap descriptor at or just beyond the write index, in a slot software owns
    /// (the next reservation overwrites it).
    fn trap(&mut self, arg: u8) {
        let Some(c) = self.drv.context(1) else {
            return;
        };
        let at = self.ram.read_u64(c.write_index) + u64::from(arg % 2);
        if at - self.drv.read_index(&*self.ram, 1) < 64 {
            let d = crate::driver::nop(Some(self.trap), false);
            self.ram
                .write_bytes(c.ring + (at % 64) * 64, zerocopy::IntoBytes::as_bytes(&d));
            self.traps.push(at);
        }
    }

    fn pass(&self) {
        self.e.process(1);
        self.check();
    }

    /// After a pass: no slot software has not validated ran, no trap ran. (A descriptor that
    /// ran twice leaves its CST_BLK at u64::MAX, which the final check in `drain` sees, so the
    /// validated ones need not be read after every pass.)
    fn check(&self) {
        use crate::driver::csb_status;
        for o in &self.open {
            for (csb, valid) in o.csbs.iter().zip(&o.valid) {
                let (signal, er) = csb_status(&*self.ram, *csb);
                assert!(!er, "a well-formed descriptor failed");
                assert!(signal <= 1, "a descriptor ran twice");
                assert!(signal == 1 || *valid, "a descriptor ran before vl was set");
            }
        }
        let trap = csb_status(&*self.ram, self.trap).0;
        assert_eq!(trap, 1, "a slot beyond the write index ran");
    }

    /// Validates everything still open, runs a pass, and expects every descriptor done once.
    fn drain(mut self) {
        while let Some(o) = self.open.last() {
            let k = self.open.len() - 1;
            if let Some(i) = o.valid.iter().position(|v| !v) {
                self.validate_slot(k, i);
            }
        }
        self.pass();
        for csb in &self.tickets {
            let got = crate::driver::csb_status(&*self.ram, *csb);
            assert_eq!(got, (0, false), "every descriptor ran once");
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
    fn write_index_and_vl_in_any_order_run_each_descriptor_once() {
        for d in inputs(200, 800, 0x0dd5) {
            ring_protocol(&d);
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
