//! The device under test for the socket-level suites: the real `sdxi-server` process, a real
//! vfio-user client (QEMU's role), a shared memfd as guest memory, and the shared driver
//! helper that programs the function the way the Linux SDXi driver does.
// Each suite uses part of this module; the rest is unused in that binary.
#![allow(dead_code, unused_imports)]

use device_sdxi::driver::{self, csb_status, Driver, DriverMemory, Mmio};
use device_sdxi::mem::*;
use device_sdxi::regs::*;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::Duration;
use vfio_device::dma::{GuestRam, MapSpec};
use vfio_device::testing::{arm_msix, read_u64, write_u64, MappedArea, ServerProcess};

pub const IOVA: u64 = 0x1_0000_0000;
pub const RAM_SIZE: u64 = 160 << 20;
pub const TABLES: u64 = IOVA;
pub const ERRLOG: u64 = IOVA + (3 << 20);
pub const DATA: u64 = IOVA + (4 << 20);
pub use vfio_device::testing::CONFIG_REGION;

pub use vfio_device::testing::{memfd, wait_event, wait_for};

/// The device's registers and doorbells through vfio-user region messages.
pub struct ClientMmio<'a>(pub &'a mut vfio_user::Client);

impl driver::Mmio for ClientMmio<'_> {
    fn read64(&mut self, offset: u64) -> u64 {
        read_u64(self.0, u32::from(CONTROL_BAR), offset)
    }
    fn write64(&mut self, offset: u64, value: u64) {
        write_u64(self.0, u32::from(CONTROL_BAR), offset, value);
    }
    fn doorbell(&mut self, cxt: u16, value: u64) {
        write_u64(
            self.0,
            u32::from(DOORBELL_BAR),
            u64::from(cxt) * 4096,
            value,
        );
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
        let vectors = arm_msix(&mut c, u32::from(n) + 1);
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
pub struct MappedDoorbellPage(MappedArea);

impl MappedDoorbellPage {
    /// Maps the doorbell BAR's file; None when the server offers none (trapped doorbells).
    pub fn map(c: &vfio_user::Client) -> Option<Self> {
        MappedArea::map(c, u32::from(DOORBELL_BAR)).map(Self)
    }

    /// Writes `value` to context `cxt`'s doorbell (4 KiB stride).
    pub fn ring(&self, cxt: u16, value: u64) {
        self.0.write_u64(u64::from(cxt) * 4096, value);
    }
}
