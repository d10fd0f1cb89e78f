//! The engine's [`Platform`] in the server: MSI-X through the vfio-user client's eventfds,
//! Bus Master Enable from the Command register, the fault plan's delays as real sleeps, and
//! large COPYs split over scoped threads.

use crate::core::Platform;
use vfio_device::dma::{DmaMemory, Fault};
use vfio_device::interrupts::Interrupts;

/// What the server's engine runs on.
#[derive(Clone, Debug)]
pub struct ServerPlatform {
    pub interrupts: Interrupts,
    /// Threads one large COPY is split over (1: never split).
    pub copy_threads: usize,
    /// COPYs at least this long are split.
    pub split_copy_min: u64,
}

impl ServerPlatform {
    pub fn new(interrupts: Interrupts, copy_threads: usize) -> Self {
        Self {
            interrupts,
            copy_threads,
            split_copy_min: 8 << 20,
        }
    }
}

impl Platform for ServerPlatform {
    fn trigger(&self, vector: u16) -> bool {
        self.interrupts.trigger(vector)
    }

    fn bus_master(&self) -> bool {
        self.interrupts.bus_master()
    }

    fn delay(&self, us: u64) {
        std::thread::sleep(std::time::Duration::from_micros(us));
    }

    fn copy<M: DmaMemory>(&self, mem: &M, dst: u64, src: u64, len: u64) -> Result<(), Fault> {
        split_copy(mem, dst, src, len, self.copy_threads, self.split_copy_min)
    }
}

/// Copies `len` bytes, over `threads` scoped threads in 4 KiB-aligned parts when it is at
/// least `min` long. Both ranges are checked whole first, so a fault copies nothing.
pub fn split_copy<M: DmaMemory>(
    mem: &M,
    dst: u64,
    src: u64,
    len: u64,
    threads: usize,
    min: u64,
) -> Result<(), Fault> {
    let threads = threads.max(1) as u64;
    if threads == 1 || len < min {
        return mem.copy(dst, src, len);
    }
    mem.check(src, len, false)?;
    mem.check(dst, len, true)?;
    let part = len.div_ceil(threads).next_multiple_of(4096);
    let failed = Fault {
        addr: src,
        len,
        write: false,
    };
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|i| i * part)
            .filter(|off| *off < len)
            .map(|off| s.spawn(move || mem.copy(dst + off, src + off, part.min(len - off))))
            .collect();
        handles
            .into_iter()
            .try_for_each(|h| h.join().unwrap_or(Err(failed)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::driver::DriverMemory;
    use vfio_device::dma::GuestRam;

    #[test]
    fn large_copies_split_over_threads_are_exact() {
        let ram = GuestRam::anonymous(0x10_0000, 64 << 20);
        let len = (20 << 20) + 12345;
        let (src, dst) = (0x10_0000 + (2 << 20), 0x10_0000 + (30 << 20));
        let v: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        ram.write_bytes(src, &v);
        split_copy(&ram, dst, src, len as u64, 4, 1 << 20).expect("copy");
        let mut out = vec![0u8; len];
        ram.read_bytes(dst, &mut out);
        assert!(out == v);
    }

    #[test]
    fn a_split_copy_with_an_unmapped_end_copies_nothing() {
        let ram = GuestRam::anonymous(0x10_0000, 4 << 20);
        let dst = 0x10_0000 + (2 << 20);
        ram.write_bytes(0x10_0000, &[7u8; 4096]);
        let r = split_copy(&ram, dst, 0x10_0000, 3 << 20, 4, 1 << 20);
        assert!(r.is_err());
        let mut out = [0u8; 16];
        ram.read_bytes(dst, &mut out);
        assert_eq!(out, [0u8; 16]);
    }
}
