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
#[derive(Debug)]
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
    n > 0 && read_event(f.as_raw_fd())
}

/// Consumes an eventfd's count; true if there was one.
fn read_event(fd: i32) -> bool {
    let mut v = [0u8; 8];
    // SAFETY: an 8-byte read from an eventfd we own into a live buffer.
    unsafe { libc::read(fd, v.as_mut_ptr().cast(), 8) == 8 }
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
    vectors: Vec<File>,
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
        let fds: Vec<i32> = vectors.iter().map(AsRawFd::as_raw_fd).collect();
        dev.set_msix(&fds)?;
        let buf = DmaBuffer::new(&dev, TABLES as usize + extra, DMA_IOVA)?;
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
        let wi = self.drv.submit(&self.buf, cxt, descs);
        self.mmio.doorbell(cxt, wi);
    }

    /// Waits up to `timeout` for context `cxt`'s interrupt (vector `cxt`).
    pub fn wait_interrupt(&self, cxt: u16, timeout: Duration) -> bool {
        self.vectors
            .get(usize::from(cxt))
            .is_some_and(|v| wait_event(v, timeout))
    }

    /// Waits up to `timeout` for context `cxt`'s interrupt or an error-log interrupt (vector
    /// 0) that says the context stopped.
    pub fn wait_interrupt_or_error(&mut self, cxt: u16, timeout: Duration) -> Wait {
        let deadline = Instant::now() + timeout;
        let (Some(v), Some(e)) = (
            self.vectors.get(usize::from(cxt)).map(AsRawFd::as_raw_fd),
            self.vectors.first().map(AsRawFd::as_raw_fd),
        ) else {
            return Wait::Timeout;
        };
        let mut fds = [
            libc::pollfd {
                fd: v,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: e,
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            fds[0].revents = 0;
            fds[1].revents = 0;
            // SAFETY: two valid pollfds.
            let n = unsafe {
                libc::poll(
                    fds.as_mut_ptr(),
                    2,
                    left.as_millis().min(i32::MAX as u128) as i32,
                )
            };
            if n <= 0 {
                return Wait::Timeout;
            }
            if fds[0].revents != 0 && read_event(v) {
                return Wait::Interrupt;
            }
            if fds[1].revents != 0 {
                read_event(e);
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
