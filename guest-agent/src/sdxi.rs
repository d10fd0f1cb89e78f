//! The guest's SDXi userspace driver: vfio-pci, BAR mmaps, DMA buffers mapped through the
//! virtual IOMMU (so descriptors carry IOVAs), MSI-X through eventfds. It programs the device
//! with the same shared helper (`device_sdxi::driver`) the device's own tests use.

use crate::protocol::{CopyResult, SdxiCopyReport};
use crate::sys::event::{poll, EventFd};
use crate::sys::{mm, Bar};
use crate::vfio::{VfioDevice, VfioError};
use device_sdxi::driver::{self, Driver, DriverMemory, Mmio};
use device_sdxi::regs;
use std::time::{Duration, Instant};

/// Where the driver puts its DMA buffer in the device's address space.
pub const DMA_IOVA: u64 = 0x40_0000_0000;
const TABLES: u64 = 4 << 20;
const COMPLETION_TIMEOUT: Duration = Duration::from_secs(60);

/// Errors of the SDXi driver.
#[derive(Debug, thiserror::Error)]
pub enum SdxiError {
    #[error(transparent)]
    Vfio(#[from] VfioError),
    #[error("initialising the function")]
    Init(#[from] driver::InitError),
    #[error("{0}")]
    Os(String),
    #[error(transparent)]
    Memory(#[from] driver::OutOfMemory),
}

/// Anonymous memory pinned and mapped for the device at [`DMA_IOVA`].
#[derive(Debug)]
pub struct DmaBuffer {
    ptr: *mut u8,
    len: usize,
    iova: u64,
}

impl DmaBuffer {
    pub fn new(dev: &VfioDevice, len: usize, iova: u64) -> Result<Self, SdxiError> {
        let p = mm::mmap_anon(len, libc::MAP_POPULATE)
            .map_err(|e| SdxiError::Os(format!("mmap of {len} bytes: {e}")))?;
        let b = Self { ptr: p, len, iova };
        dev.map_dma(p as u64, iova, len as u64)?;
        Ok(b)
    }

    fn at(&self, addr: u64, n: usize) -> Option<*mut u8> {
        let off = usize::try_from(addr.checked_sub(self.iova)?).ok()?;
        // SAFETY: off + n <= len, inside the mapping.
        (off.checked_add(n)? <= self.len).then(|| unsafe { self.ptr.add(off) })
    }
}

impl Drop for DmaBuffer {
    fn drop(&mut self) {
        // SAFETY: exactly the mapping created in new(); the device's mapping of it is gone
        // with the container.
        unsafe { mm::munmap(self.ptr, self.len) };
    }
}

impl DriverMemory for DmaBuffer {
    fn write_bytes(&self, addr: u64, bytes: &[u8]) {
        if let Some(p) = self.at(addr, bytes.len()) {
            // SAFETY: `at` bounds-checked the destination inside our mapping.
            unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), p, bytes.len()) };
            std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        }
    }

    fn read_bytes(&self, addr: u64, buf: &mut [u8]) {
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        if let Some(p) = self.at(addr, buf.len()) {
            for (i, b) in buf.iter_mut().enumerate() {
                // SAFETY: inside the mapping; volatile because the device writes it.
                *b = unsafe { std::ptr::read_volatile(p.add(i)) };
            }
        }
    }
}

/// BAR0 registers and BAR2 doorbells through the vfio-pci mmaps.
#[derive(Debug)]
struct BarMmio {
    bar0: Box<dyn Bar>,
    bar2: Box<dyn Bar>,
    stride: u64,
}

impl Mmio for BarMmio {
    fn read64(&mut self, offset: u64) -> u64 {
        self.bar0.read64(offset as usize).unwrap_or(u64::MAX)
    }
    fn write64(&mut self, offset: u64, value: u64) {
        self.bar0.write64(offset as usize, value);
    }
    fn doorbell(&mut self, cxt: u16, value: u64) {
        self.bar2
            .write64((u64::from(cxt) * self.stride) as usize, value);
    }
}

fn eventfd() -> Result<EventFd, SdxiError> {
    EventFd::new().map_err(|e| SdxiError::Os(format!("eventfd: {e}")))
}

fn pattern(len: usize, seed: u64) -> Vec<u8> {
    vfio_device::pattern::xorshift_bytes(len, seed.wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

/// How a wait for a context's completion interrupt ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wait {
    /// The context's vector fired.
    Interrupt,
    /// The error log says the context stopped (a descriptor error).
    Stopped,
    Timeout,
}

/// An opened, initialised SDXi function: registers and doorbells mapped, MSI-X vectors armed
/// (vector 0 for the error log, vector `c` for context `c`), the tables in a DMA buffer.
#[derive(Debug)]
pub struct Function {
    dev: VfioDevice,
    buf: DmaBuffer,
    mmio: BarMmio,
    drv: Driver,
    vectors: Vec<EventFd>,
    /// Scratch CST_BLK for admin requests.
    admin_csb: u64,
    pub init_micros: u64,
}

impl Function {
    /// Binds, enables memory space and bus mastering, arms `contexts + 1` vectors, maps
    /// `TABLES + extra` bytes at [`DMA_IOVA`], runs the init sequence and starts data
    /// contexts `1..=contexts` with rings of `entries`.
    pub fn open(bdf: &str, contexts: u16, entries: u32, extra: usize) -> Result<Self, SdxiError> {
        crate::vfio::bind_vfio_pci(bdf)?;
        let dev = VfioDevice::open(bdf)?;
        let cfg = dev.config()?;
        let cmd = u16::from_le_bytes([cfg[4], cfg[5]]) | 0x6;
        dev.config_write(4, &cmd.to_le_bytes())?;
        let vectors = (0..=contexts)
            .map(|_| eventfd())
            .collect::<Result<Vec<_>, _>>()?;
        let fds: Vec<i32> = vectors.iter().map(EventFd::fd).collect();
        dev.set_msix(&fds)?;
        let buf = DmaBuffer::new(&dev, TABLES as usize + extra, DMA_IOVA)?;
        let mut mmio = BarMmio {
            bar0: Box::new(dev.map_bar(u32::from(regs::CONTROL_BAR))?),
            bar2: Box::new(dev.map_bar(u32::from(regs::DOORBELL_BAR))?),
            stride: 4096,
        };
        let t0 = Instant::now();
        let mut drv = Driver::new(&buf, DMA_IOVA, TABLES - (64 << 10))?;
        let errlog = DMA_IOVA + TABLES - (64 << 10);
        driver::init_function(&mut mmio, &buf, &mut drv, Some(errlog))?;
        mmio.stride = 4096 << regs::Cap0::from(mmio.read64(regs::MMIO_CAP0)).db_stride();
        for c in 1..=contexts {
            driver::start_context(
                &mut mmio,
                &buf,
                &mut drv,
                c,
                entries,
                Some(c),
                COMPLETION_TIMEOUT,
            )?;
        }
        let admin_csb = drv.csb(&buf, 0)?;
        Ok(Self {
            dev,
            buf,
            mmio,
            drv,
            vectors,
            admin_csb,
            init_micros: t0.elapsed().as_micros() as u64,
        })
    }

    /// Makes `len` bytes of this process at `vaddr` reachable by the device at `iova`.
    pub fn map(&self, vaddr: u64, iova: u64, len: u64) -> Result<(), SdxiError> {
        Ok(self.dev.map_dma(vaddr, iova, len)?)
    }

    /// Removes a mapping made with [`Function::map`].
    pub fn unmap(&self, iova: u64, len: u64) -> Result<(), SdxiError> {
        Ok(self.dev.unmap_dma(iova, len)?)
    }

    /// The DMA buffer's bytes after the tables: (IOVA, pointer, length).
    pub fn scratch(&self) -> (u64, *mut u8, usize) {
        (
            DMA_IOVA + TABLES,
            // SAFETY: TABLES < len, inside the buffer.
            unsafe { self.buf.ptr.add(TABLES as usize) },
            self.buf.len - TABLES as usize,
        )
    }

    pub fn memory(&self) -> &DmaBuffer {
        &self.buf
    }

    /// Allocates `n` CST_BLKs in a row (32 bytes apart) from the table space.
    pub fn alloc_csbs(&mut self, n: usize) -> Result<u64, SdxiError> {
        Ok(self.drv.alloc(32 * n as u64, 32)?)
    }

    /// Writes `descs` to context `cxt`'s ring and rings its doorbell.
    pub fn submit(&mut self, cxt: u16, descs: &[device_sdxi::mem::Descriptor]) {
        let wi = self.enqueue(cxt, descs);
        self.ring(cxt, wi);
    }

    /// Writes `descs` to context `cxt`'s ring and its write index; returns the doorbell value.
    pub fn enqueue(&mut self, cxt: u16, descs: &[device_sdxi::mem::Descriptor]) -> u64 {
        self.drv.submit(&self.buf, cxt, descs)
    }

    /// Rings context `cxt`'s doorbell with write index `wi`.
    pub fn ring(&mut self, cxt: u16, wi: u64) {
        self.mmio.doorbell(cxt, wi);
    }

    /// Waits up to `timeout` for context `cxt`'s interrupt (vector `cxt`).
    pub fn wait_interrupt(&self, cxt: u16, timeout: Duration) -> bool {
        self.vectors
            .get(usize::from(cxt))
            .is_some_and(|v| v.wait(timeout))
    }

    /// Waits up to `timeout` for context `cxt`'s interrupt or an error-log interrupt (vector
    /// 0) that says the context stopped.
    pub fn wait_interrupt_or_error(&mut self, cxt: u16, timeout: Duration) -> Wait {
        let deadline = Instant::now() + timeout;
        let (Some(v), Some(e)) = (
            self.vectors.get(usize::from(cxt)).map(EventFd::fd),
            self.vectors.first().map(EventFd::fd),
        ) else {
            return Wait::Timeout;
        };
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let ready = poll(&[v, e], left);
            if ready == [false, false] {
                return Wait::Timeout;
            }
            if ready[0] && self.vectors[usize::from(cxt)].consume() {
                return Wait::Interrupt;
            }
            if ready[1] {
                self.vectors[0].consume();
                self.ack_errors();
                if !self.context_running(cxt) {
                    return Wait::Stopped;
                }
            }
        }
    }

    /// Whether context `cxt` is running (CXT_STS as the device wrote it).
    pub fn context_running(&self, cxt: u16) -> bool {
        self.drv.state(&self.buf, cxt) == Some(device_sdxi::mem::CxtState::Run)
    }

    /// Consumes the error log (ERR_RD = ERR_WRT) and clears ERR_STS (write 1 to clear);
    /// returns the entries consumed.
    pub fn ack_errors(&mut self) -> u64 {
        let (wrt, rd) = (
            self.mmio.read64(regs::MMIO_ERR_WRT),
            self.mmio.read64(regs::MMIO_ERR_RD),
        );
        self.mmio.write64(regs::MMIO_ERR_RD, wrt);
        self.mmio.write64(regs::MMIO_ERR_STS, u64::MAX);
        wrt.wrapping_sub(rd)
    }

    /// Stops, re-initialises and restarts context `cxt` (after an error or a timeout), each
    /// admin step waiting up to `timeout`.
    pub fn restart(&mut self, cxt: u16, timeout: Duration) -> Result<(), SdxiError> {
        driver::restart_context(
            &mut self.mmio,
            &self.buf,
            &mut self.drv,
            cxt,
            self.admin_csb,
            timeout,
        )?;
        Ok(())
    }

    /// MMIO_ERR_WRT: error-log entries written so far.
    pub fn errlog_entries(&mut self) -> u64 {
        self.mmio.read64(regs::MMIO_ERR_WRT)
    }
}

/// Initialises the function, starts context 1 and copies each size through the device,
/// checking every byte; the last copy is followed by an INTR, awaited on MSI-X vector 1.
pub fn copy_test(bdf: &str, sizes: &[u64]) -> Result<SdxiCopyReport, SdxiError> {
    let largest = sizes
        .iter()
        .copied()
        .max()
        .unwrap_or(0)
        .next_multiple_of(4096) as usize;
    let mut f = Function::open(bdf, 1, 1024, 2 * largest)?;
    let (src, _, _) = f.scratch();
    let dst = src + largest as u64;
    let mut results = Vec::new();
    let mut interrupt = false;
    let mut interrupt_micros = 0;
    for (i, &len) in sizes.iter().enumerate() {
        let data = pattern(len as usize, i as u64 + 1);
        f.buf.write_bytes(src, &data);
        f.buf.write_bytes(dst, &vec![0u8; len as usize]);
        let csb = f.drv.csb(&f.buf, 1)?;
        let last = i + 1 == sizes.len();
        let mut descs = vec![driver::copy(src, dst, len, Some(csb), false)];
        if last {
            descs.push(driver::intr(0, true));
        }
        let t = Instant::now();
        f.submit(1, &descs);
        let done = driver::wait_csb(&f.buf, csb, COMPLETION_TIMEOUT);
        let micros = t.elapsed().as_micros() as u64;
        if last {
            interrupt = f.wait_interrupt(1, Duration::from_secs(10));
            interrupt_micros = t.elapsed().as_micros() as u64;
        }
        let mut out = vec![0u8; len as usize];
        f.buf.read_bytes(dst, &mut out);
        let mismatched = out.iter().zip(&data).filter(|(a, b)| a != b).count() as u64;
        results.push(CopyResult {
            bytes: len,
            completed: done.is_some(),
            error_flag: done == Some(true),
            mismatched_bytes: mismatched,
            micros,
        });
    }
    let (median, p99, samples) = doorbell_latency(&mut f, DOORBELL_SAMPLES)?;
    Ok(SdxiCopyReport {
        init_micros: f.init_micros,
        results,
        interrupt_received: interrupt,
        interrupt_micros,
        errlog_entries: f.errlog_entries(),
        dma_iova: DMA_IOVA,
        doorbell_nop_median_ns: median,
        doorbell_nop_p99_ns: p99,
        doorbell_nop_samples: samples,
    })
}

/// NOPs timed by [`doorbell_latency`].
const DOORBELL_SAMPLES: usize = 200;

/// Doorbell-to-completion of one NOP, `n` times, as this guest sees it: from the doorbell
/// write (a plain store to the mapped page, or a trapped MMIO write, whichever the server
/// offers) to the completion block reaching 0, polled. (median, p99, samples) in ns.
fn doorbell_latency(f: &mut Function, n: usize) -> Result<(u64, u64, u64), SdxiError> {
    let csb = f.drv.csb(&f.buf, 1)?;
    let mut ns = Vec::with_capacity(n);
    for _ in 0..n {
        f.buf.write_bytes(csb, &1u64.to_le_bytes());
        let t = Instant::now();
        f.submit(1, &[driver::nop(Some(csb), false)]);
        while driver::csb_status(&f.buf, csb).0 != 0 {
            if t.elapsed() > COMPLETION_TIMEOUT {
                break;
            }
            std::hint::spin_loop();
        }
        ns.push(t.elapsed().as_nanos() as u64);
    }
    ns.sort_unstable();
    let at = |p: f64| ns.get(((ns.len().max(1) - 1) as f64 * p) as usize).copied();
    Ok((at(0.5).unwrap_or(0), at(0.99).unwrap_or(0), ns.len() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::double::MemBar;
    use std::sync::Arc;

    #[test]
    fn registers_go_to_bar0_and_doorbells_to_their_stride_in_bar2() {
        let (bar0, bar2) = (Arc::new(MemBar::new(0x1000)), Arc::new(MemBar::new(0x4000)));
        let mut m = BarMmio {
            bar0: Box::new(Arc::clone(&bar0)),
            bar2: Box::new(Arc::clone(&bar2)),
            stride: 4096,
        };
        m.write64(regs::MMIO_CTL2, 0x1234_5000);
        assert_eq!(bar0.get(regs::MMIO_CTL2 as usize, 8), 0x1234_5000);
        m.doorbell(2, 17);
        assert_eq!(bar2.get(2 * 4096, 8), 17, "context 2's doorbell page");
        assert_eq!(bar2.get(4096, 8), 0);
        // Outside the mapping: reads all ones (as a missing device does), writes dropped.
        assert_eq!(m.read64(0x1000), u64::MAX);
        m.doorbell(4, 1);
    }

    #[test]
    fn the_dma_buffer_refuses_addresses_outside_it() {
        let p = mm::mmap_anon(8192, 0).expect("mmap");
        let b = DmaBuffer {
            ptr: p,
            len: 8192,
            iova: DMA_IOVA,
        };
        b.write_bytes(DMA_IOVA + 8, &[1, 2, 3]);
        let mut out = [0u8; 3];
        b.read_bytes(DMA_IOVA + 8, &mut out);
        assert_eq!(out, [1, 2, 3]);
        assert!(b.at(DMA_IOVA + 8190, 4).is_none(), "crosses the end");
        assert!(b.at(DMA_IOVA - 1, 1).is_none(), "below the buffer");
        let mut untouched = [9u8; 2];
        b.read_bytes(DMA_IOVA + 8191, &mut untouched);
        assert_eq!(untouched, [9, 9]);
    }
}
