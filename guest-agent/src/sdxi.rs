//! The guest's SDXi userspace driver: vfio-pci, BAR mmaps, DMA buffers mapped through the
//! virtual IOMMU (so descriptors carry IOVAs), MSI-X through eventfds. It programs the device
//! with the same shared helper (`device_sdxi::driver`) the device's own tests use.

use crate::protocol::{CopyResult, SdxiCopyReport};
use crate::vfio::{BarMapping, VfioDevice, VfioError};
use device_sdxi::driver::{self, Driver, DriverMemory, Mmio};
use device_sdxi::regs;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
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
        // SAFETY: a fresh anonymous mapping owned by the returned value.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(SdxiError::Os(format!(
                "mmap of {len} bytes: {}",
                std::io::Error::last_os_error()
            )));
        }
        let b = Self {
            ptr: p.cast(),
            len,
            iova,
        };
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
        // SAFETY: exactly the mapping created in new().
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
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
struct BarMmio {
    bar0: BarMapping,
    bar2: BarMapping,
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

fn eventfd() -> Result<File, SdxiError> {
    // SAFETY: plain eventfd creation.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    if fd < 0 {
        return Err(SdxiError::Os(format!(
            "eventfd: {}",
            std::io::Error::last_os_error()
        )));
    }
    // SAFETY: a fresh fd we own.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// Waits for an eventfd; true if it fired within `timeout`.
fn wait_event(f: &File, timeout: Duration) -> bool {
    let mut p = libc::pollfd {
        fd: f.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let n = unsafe { libc::poll(&mut p, 1, timeout.as_millis().min(i32::MAX as u128) as i32) };
    if n <= 0 {
        return false;
    }
    let mut v = [0u8; 8];
    // SAFETY: an 8-byte read from our eventfd into a live buffer.
    unsafe { libc::read(f.as_raw_fd(), v.as_mut_ptr().cast(), 8) == 8 }
}

fn pattern(len: usize, seed: u64) -> Vec<u8> {
    device_sdxi::fuzzing::xorshift_bytes(len, seed.wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

/// Initialises the function, starts context 1 and copies each size through the device,
/// checking every byte; the last copy is followed by an INTR, awaited on MSI-X vector 1.
pub fn copy_test(bdf: &str, sizes: &[u64]) -> Result<SdxiCopyReport, SdxiError> {
    crate::vfio::bind_vfio_pci(bdf)?;
    let dev = VfioDevice::open(bdf)?;
    // Memory space and bus mastering on (the device drops DMA and MSI-X without it).
    let mut cmd = [0u8; 2];
    let cfg = dev.config()?;
    cmd.copy_from_slice(&cfg[4..6]);
    let cmd = u16::from_le_bytes(cmd) | 0x6;
    dev.config_write(4, &cmd.to_le_bytes())?;
    let vectors = [eventfd()?, eventfd()?];
    dev.set_msix(&[vectors[0].as_raw_fd(), vectors[1].as_raw_fd()])?;
    let largest = sizes
        .iter()
        .copied()
        .max()
        .unwrap_or(0)
        .next_multiple_of(4096) as usize;
    let buf = DmaBuffer::new(&dev, TABLES as usize + 2 * largest, DMA_IOVA)?;
    let mut mmio = BarMmio {
        bar0: dev.map_bar(u32::from(regs::CONTROL_BAR))?,
        bar2: dev.map_bar(u32::from(regs::DOORBELL_BAR))?,
        stride: 4096,
    };
    let t0 = Instant::now();
    let mut drv = Driver::new(&buf, DMA_IOVA, TABLES - (64 << 10))?;
    let errlog = DMA_IOVA + TABLES - (64 << 10);
    driver::init_function(&mut mmio, &buf, &mut drv, Some(errlog))?;
    mmio.stride = 4096 << regs::Cap0::from(mmio.read64(regs::MMIO_CAP0)).db_stride();
    driver::start_context(
        &mut mmio,
        &buf,
        &mut drv,
        1,
        1024,
        Some(1),
        COMPLETION_TIMEOUT,
    )?;
    let init_micros = t0.elapsed().as_micros() as u64;
    let src = DMA_IOVA + TABLES;
    let dst = src + largest as u64;
    let mut results = Vec::new();
    let mut interrupt = false;
    let mut interrupt_micros = 0;
    for (i, &len) in sizes.iter().enumerate() {
        let data = pattern(len as usize, i as u64 + 1);
        buf.write_bytes(src, &data);
        buf.write_bytes(dst, &vec![0u8; len as usize]);
        let csb = drv.csb(&buf, 1)?;
        let last = i + 1 == sizes.len();
        let mut descs = vec![driver::copy(src, dst, len, Some(csb), false)];
        if last {
            descs.push(driver::intr(0, true));
        }
        let t = Instant::now();
        let wi = drv.submit(&buf, 1, &descs);
        mmio.doorbell(1, wi);
        let done = driver::wait_csb(&buf, csb, COMPLETION_TIMEOUT);
        let micros = t.elapsed().as_micros() as u64;
        if last {
            interrupt = wait_event(&vectors[1], Duration::from_secs(10));
            interrupt_micros = t.elapsed().as_micros() as u64;
        }
        let mut out = vec![0u8; len as usize];
        buf.read_bytes(dst, &mut out);
        let mismatched = out.iter().zip(&data).filter(|(a, b)| a != b).count() as u64;
        results.push(CopyResult {
            bytes: len,
            completed: done.is_some(),
            error_flag: done == Some(true),
            mismatched_bytes: mismatched,
            micros,
        });
    }
    let errlog_entries = mmio.read64(regs::MMIO_ERR_WRT);
    Ok(SdxiCopyReport {
        init_micros,
        results,
        interrupt_received: interrupt,
        interrupt_micros,
        errlog_entries,
        dma_iova: DMA_IOVA,
    })
}
