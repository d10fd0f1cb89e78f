//! The device under test for the socket-level suites: the real `sdxi-server` process, a real
//! vfio-user client (QEMU's role), a shared memfd as guest memory, and the shared driver
//! helper that programs the function the way the Linux SDXi driver does.
#![allow(dead_code)]

use vfio_device::dma::{GuestRam, MapSpec};
use device_sdxi::driver::{self, csb_status, Driver, DriverMemory, Mmio};
use device_sdxi::mem::*;
use device_sdxi::regs::*;
use vfio_device::testing::ServerProcess;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::Path;
use std::time::{Duration, Instant};

pub const IOVA: u64 = 0x1_0000_0000;
pub const RAM_SIZE: u64 = 160 << 20;
pub const TABLES: u64 = IOVA;
pub const ERRLOG: u64 = IOVA + (3 << 20);
pub const DATA: u64 = IOVA + (4 << 20);
pub const CONFIG_REGION: u32 = 7;
pub const MSIX: u32 = 2;
pub const VFIO_IRQ_SET_DATA_EVENTFD: u32 = 1 << 2;
pub const VFIO_IRQ_SET_ACTION_TRIGGER: u32 = 1 << 5;

pub fn memfd(size: u64) -> File {
    let name = std::ffi::CString::new("guest-ram").expect("name");
    // SAFETY: memfd_create with a valid NUL-terminated name.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), 0) };
    assert!(fd >= 0, "memfd_create");
    // SAFETY: a fresh fd we own.
    let f = unsafe { File::from_raw_fd(fd) };
    f.set_len(size).expect("size");
    f
}

pub fn eventfd() -> File {
    // SAFETY: plain eventfd creation.
    let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    assert!(fd >= 0);
    // SAFETY: a fresh fd we own.
    unsafe { File::from_raw_fd(fd) }
}

/// Waits for an eventfd to fire; returns its count (0 on timeout).
pub fn wait_event(f: &File, timeout: Duration) -> u64 {
    let mut p = libc::pollfd {
        fd: f.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let n = unsafe { libc::poll(&mut p, 1, timeout.as_millis() as i32) };
    if n <= 0 {
        return 0;
    }
    let mut v = [0u8; 8];
    // SAFETY: reading 8 bytes into a live buffer from our eventfd.
    let r = unsafe { libc::read(f.as_raw_fd(), v.as_mut_ptr().cast(), 8) };
    if r == 8 {
        u64::from_le_bytes(v)
    } else {
        0
    }
}

pub fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// The device's registers and doorbells through vfio-user region messages.
pub struct ClientMmio<'a>(pub &'a mut vfio_user::Client);

impl driver::Mmio for ClientMmio<'_> {
    fn read64(&mut self, offset: u64) -> u64 {
        let mut b = [0u8; 8];
        self.0
            .region_read(u32::from(CONTROL_BAR), offset, &mut b)
            .expect("BAR0 read");
        u64::from_le_bytes(b)
    }
    fn write64(&mut self, offset: u64, value: u64) {
        self.0
            .region_write(u32::from(CONTROL_BAR), offset, &value.to_le_bytes())
            .expect("BAR0 write");
    }
    fn doorbell(&mut self, cxt: u16, value: u64) {
        self.0
            .region_write(
                u32::from(DOORBELL_BAR),
                u64::from(cxt) * 4096,
                &value.to_le_bytes(),
            )
            .expect("doorbell");
    }
}

/// A device under test: server process, client, guest memory and the driver's tables.
pub struct Dut {
    pub srv: ServerProcess,
    pub c: vfio_user::Client,
    pub ram: GuestRam,
    pub file: File,
    pub drv: Driver,
    pub vectors: Vec<File>,
}

impl Dut {
    pub fn rd(&mut self, off: u64) -> u64 {
        ClientMmio(&mut self.c).read64(off)
    }

    pub fn wr(&mut self, off: u64, v: u64) {
        ClientMmio(&mut self.c).write64(off, v);
    }

    pub fn doorbell(&mut self, cxt: u16, value: u64) {
        ClientMmio(&mut self.c).doorbell(cxt, value);
    }

    /// Function init as the Linux driver does it (the shared driver helper follows AMD's
    /// `device.c`), then `n` data contexts started through the admin ring; context i's AKey 0
    /// raises vector i.
    pub fn start(args: &[&str], n: u16) -> Self {
        let mut a = vec!["--max-clients", "1"];
        a.extend_from_slice(args);
        let srv =
            ServerProcess::spawn(Path::new(env!("CARGO_BIN_EXE_sdxi-server")), &a).expect("spawn");
        let mut c = srv.client().expect("connect");
        let file = memfd(RAM_SIZE);
        c.dma_map(0, IOVA, RAM_SIZE, file.as_raw_fd())
            .expect("DMA_MAP");
        let ram = GuestRam::build(&[MapSpec {
            iova: IOVA,
            size: RAM_SIZE,
            file: &file,
            file_offset: 0,
            writable: true,
        }])
        .expect("local view of guest RAM");
        // Bus mastering on, MSI-X vectors armed.
        c.region_write(CONFIG_REGION, 4, &0x0006u16.to_le_bytes())
            .expect("command");
        let count = u32::from(n) + 1;
        let vectors: Vec<File> = (0..count).map(|_| eventfd()).collect();
        let fds: Vec<i32> = vectors.iter().map(AsRawFd::as_raw_fd).collect();
        c.set_irqs(
            MSIX,
            VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER,
            0,
            count,
            &fds,
        )
        .expect("SET_IRQS");
        let mut drv = Driver::new(&ram, TABLES, 3 << 20).expect("tables");
        driver::init_function(&mut ClientMmio(&mut c), &ram, &mut drv, Some(ERRLOG))
            .expect("init sequence");
        for id in 1..=n {
            driver::start_context(
                &mut ClientMmio(&mut c),
                &ram,
                &mut drv,
                id,
                1024,
                Some(id),
                Duration::from_secs(10),
            )
            .expect("context start");
            assert_eq!(drv.state(&ram, id), Some(CxtState::Run));
        }
        Self {
            srv,
            c,
            ram,
            file,
            drv,
            vectors,
        }
    }

    pub fn wait_csb(&self, csb: u64, what: &str) {
        wait_for(what, Duration::from_secs(10), || {
            csb_status(&self.ram, csb).0 == 0
        });
    }

    pub fn submit(&mut self, cxt: u16, descs: &[Descriptor]) {
        let wi = self.drv.submit(&self.ram, cxt, descs);
        self.doorbell(cxt, wi);
    }

    pub fn fill(&self, addr: u64, len: u64, seed: u64) {
        let v: Vec<u8> = (0..len).map(|i| ((i * 7 + seed) % 253) as u8).collect();
        self.ram.write_bytes(addr, &v);
    }

    pub fn same(&self, a: u64, b: u64, len: u64) -> bool {
        let mut x = vec![0u8; len as usize];
        let mut y = vec![0u8; len as usize];
        self.ram.read_bytes(a, &mut x);
        self.ram.read_bytes(b, &mut y);
        x == y
    }

    pub fn finish(self) -> serde_json::Value {
        drop(self.c);
        self.srv.finish().expect("counters")
    }
}

/// One JSON-line request on the server's control socket.
pub fn control(path: &Path, req: &str) -> serde_json::Value {
    use std::io::{BufRead, BufReader, Write};
    let mut s = std::os::unix::net::UnixStream::connect(path).expect("control socket");
    s.write_all(format!("{req}\n").as_bytes()).expect("send");
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).expect("answer");
    serde_json::from_str(&line).expect("JSON answer")
}

/// The doorbell BAR as a guest has it with mapped doorbells (the server's default): the page
/// the server offers as a sparse mmap area, mapped here, so a doorbell is a plain 64-bit
/// store that never travels on the socket.
pub struct MappedDoorbellPage {
    ptr: *mut u64,
    len: usize,
}

// SAFETY: plain shared memory, written only with volatile 64-bit stores.
unsafe impl Send for MappedDoorbellPage {}
// SAFETY: as above.
unsafe impl Sync for MappedDoorbellPage {}

impl MappedDoorbellPage {
    /// Maps the doorbell BAR's file; None when the server offers none (trapped doorbells).
    pub fn map(c: &vfio_user::Client) -> Option<Self> {
        let r = c.region(u32::from(DOORBELL_BAR))?;
        let fo = r.file_offset.as_ref()?;
        let len = usize::try_from(r.size).ok()?;
        // SAFETY: a fresh shared mapping of the server's doorbell file; the kernel checks the fd,
        // length and offset, and the result is checked below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fo.file().as_raw_fd(),
                libc::off_t::try_from(fo.start()).ok()?,
            )
        };
        (p != libc::MAP_FAILED).then_some(Self { ptr: p.cast(), len })
    }

    /// Writes `value` to context `cxt`'s doorbell (4 KiB stride).
    pub fn ring(&self, cxt: u16, value: u64) {
        let i = usize::from(cxt) * 512;
        assert!(
            i * 8 < self.len,
            "doorbell of context {cxt} outside the BAR"
        );
        // SAFETY: i * 8 < len, inside the live mapping; aligned 64-bit store.
        unsafe { std::ptr::write_volatile(self.ptr.add(i), value) };
    }
}

impl Drop for MappedDoorbellPage {
    fn drop(&mut self) {
        // SAFETY: exactly the mapping made in `map`.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}
