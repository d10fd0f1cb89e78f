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
    // The parts are accesses of other threads: a read lock this pass keeps would make an
    // unmap that arrives meanwhile wait on it while the parts wait on the unmap.
    mem.step_out();
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
    fn split_copies_in_a_pass_and_unmaps_meanwhile_both_go_on() {
        use std::sync::Arc;
        use std::time::Duration;
        use vfio_device::dma::MapSpec;
        use vfio_device::dma_space::DmaSpace;
        let file = vfio_device::dma::memfd(c"ram", 64 << 20).expect("memfd");
        let spec = |iova, size| MapSpec {
            iova,
            size,
            file: &file,
            file_offset: iova,
            writable: true,
        };
        let space = Arc::new(DmaSpace::default());
        space.map(&spec(0, 32 << 20)).expect("map");
        let (tx, rx) = std::sync::mpsc::channel();
        let s = Arc::clone(&space);
        std::thread::spawn(move || {
            let copies = s.pass(|| {
                (0..200)
                    .filter(|_| split_copy(&*s, 16 << 20, 0, 8 << 20, 2, 1 << 20).is_ok())
                    .count()
            });
            let _ = tx.send(copies);
        });
        // Unrelated maps and unmaps while the pass copies: each waits for the pass's lock.
        let (s, f) = (Arc::clone(&space), Arc::new(file.try_clone().expect("fd")));
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for _ in 0..500 {
                let m = MapSpec {
                    iova: 48 << 20,
                    size: 4096,
                    file: &f,
                    file_offset: 48 << 20,
                    writable: true,
                };
                s.map(&m).expect("map");
                s.unmap(48 << 20, 4096);
            }
            let _ = done_tx.send(());
        });
        let n = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the copies finished");
        assert_eq!(n, 200, "every split copy succeeded");
        done_rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the maps and unmaps finished");
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
