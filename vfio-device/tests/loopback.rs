//! The crate on its own, through a real socket: a small PCI function (a page of scratch
//! registers, one directly mapped page, four MSI-X vectors, a DVSEC) served by [`serve`] on a
//! thread, driven by the `vfio_user` crate's client the way QEMU drives a device. The devices
//! of this project are tested the same way through their own servers; this checks what the
//! crate promises to any device: configuration space and capability walk, BAR routing with
//! range checks, sparse mmap areas, SET_IRQS gated by Bus Master Enable, DMA maps visible to the
//! device and gone after their unmap, reset, and a second client after the first left.

use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use vfio_device::dma::{memfd, DmaMemory};
use vfio_device::dma_space::DmaSpace;
use vfio_device::interrupts::Interrupts;
use vfio_device::pci::{dvsecs, BarDef, ConfigSpace, ConfigSpaceBuilder, MsixDef};
use vfio_device::server::{serve, Backend, Listener, PciDevice};
use vfio_device::testing::{
    arm_msix, read_u64, wait_event, write_u64, MappedArea, RawClient, CONFIG_REGION,
};

/// Writing v here raises MSI-X vector v.
const RAISE: u64 = 0x100;
/// Writing an IOVA here makes the device read the u64 there into VALUE (all ones on a fault).
const FETCH: u64 = 0x200;
const VALUE: u64 = 0x208;

#[derive(Debug)]
struct Scratch {
    regs: Vec<u8>,
    irq: Interrupts,
    dma: Arc<DmaSpace>,
    page: File,
    resets: u64,
}

impl PciDevice for Scratch {
    fn name(&self) -> &'static str {
        "scratch"
    }
    fn interrupts(&self) -> Interrupts {
        self.irq.clone()
    }
    fn dma_space(&self) -> Option<Arc<DmaSpace>> {
        Some(Arc::clone(&self.dma))
    }
    fn bar_mmap(&self, bar: u8) -> Option<(RawFd, u64, u64)> {
        (bar == 2).then(|| (self.page.as_raw_fd(), 0, 4096))
    }
    fn bar_read(&mut self, bar: u8, offset: u64, data: &mut [u8]) {
        let o = offset as usize;
        match self.regs.get(o..o + data.len()) {
            Some(r) if bar == 0 => data.copy_from_slice(r),
            _ => data.fill(0),
        }
    }
    fn bar_write(&mut self, bar: u8, offset: u64, data: &[u8]) {
        let o = offset as usize;
        if bar != 0 || o + data.len() > self.regs.len() {
            return;
        }
        self.regs[o..o + data.len()].copy_from_slice(data);
        let v = u64::from_le_bytes(self.regs[o & !7..(o & !7) + 8].try_into().expect("8"));
        match offset & !7 {
            RAISE => {
                self.irq.trigger(v as u16);
            }
            FETCH => {
                let mut b = [0xffu8; 8];
                if self.dma.read(v, &mut b).is_err() {
                    b = [0xff; 8];
                }
                self.regs[VALUE as usize..VALUE as usize + 8].copy_from_slice(&b);
            }
            _ => {}
        }
    }
    fn reset(&mut self) {
        self.regs.fill(0);
        self.resets += 1;
    }
    fn counters(&self) -> serde_json::Value {
        serde_json::json!({ "resets": self.resets })
    }
}

fn config() -> ConfigSpace {
    let bar = |index| BarDef {
        index,
        size: 0x1000,
        is_64bit: true,
        prefetchable: false,
    };
    ConfigSpaceBuilder::new(0x1234, 0x5678, 0xff_00_00, 2, 4096)
        .bar(bar(0))
        .and_then(|b| b.bar(bar(2)))
        .and_then(|b| b.bar(bar(4)))
        .and_then(|b| {
            b.msix(MsixDef {
                vectors: 4,
                table_bar: 4,
                table_offset: 0,
                pba_bar: 4,
                pba_offset: 0x800,
            })
        })
        .and_then(|b| b.pcie_endpoint())
        .and_then(|b| b.dvsec(0x1e98, 1, 7, &[0xaa; 6]))
        .expect("a valid configuration space")
        .build()
}

/// Removes the socket's directory when a test ends.
struct Cleanup(PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Serves the scratch function for `clients` clients on a fresh socket.
fn start(clients: u64) -> (PathBuf, Arc<Mutex<Backend<Scratch>>>, Cleanup) {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("vfio-loopback-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("socket dir");
    let path = dir.join("scratch.sock");
    let page = memfd(c"scratch-page", 4096).expect("memfd");
    let device = Scratch {
        regs: vec![0; 4096],
        irq: Interrupts::default(),
        dma: Arc::new(DmaSpace::default()),
        page,
        resets: 0,
    };
    let backend = Arc::new(Mutex::new(Backend::new(device, config())));
    let listener = Listener::bind(&path).expect("listen");
    let b = Arc::clone(&backend);
    std::thread::spawn(move || serve(listener, &b, Some(clients)));
    (path, backend, Cleanup(dir))
}

fn client(path: &std::path::Path) -> vfio_user::Client {
    vfio_user::Client::new(path).expect("connect")
}

#[test]
fn configuration_space_and_bars_reach_the_device_and_nothing_past_their_end() {
    let (path, backend, _dir) = start(2);
    let mut c = client(&path);
    let mut cfg = vec![0u8; 4096];
    for (i, chunk) in cfg.chunks_mut(256).enumerate() {
        c.region_read(CONFIG_REGION, 256 * i as u64, chunk)
            .expect("config read");
    }
    assert_eq!(
        u32::from_le_bytes(cfg[..4].try_into().expect("4")),
        0x5678_1234
    );
    let d = dvsecs(&cfg);
    assert_eq!(d.len(), 1, "the DVSEC is found by the walker");
    assert_eq!((d[0].vendor, d[0].id, d[0].length), (0x1e98, 7, 16));
    write_u64(&mut c, 0, 0x40, 0x1122_3344_5566_7788);
    assert_eq!(read_u64(&mut c, 0, 0x40), 0x1122_3344_5566_7788);
    assert_eq!(backend.lock().expect("lock").device.regs[0x40], 0x88);
    drop(c);
    let mut raw = RawClient::connect(&path).expect("raw client");
    assert!(
        raw.refused(0, 0xffc, 8).expect("BAR0 end"),
        "past BAR0's end"
    );
    assert!(raw.refused(CONFIG_REGION, 4096, 4).expect("config end"));
    assert!(
        !raw.refused(0, 0xff8, 8).expect("inside"),
        "the last word is fine"
    );
    assert_eq!(raw.bar_size(0).expect("sizing"), 0x1000);
    drop(raw);
    let b = backend.lock().expect("lock");
    assert_eq!(
        b.counters.out_of_range_accesses, 4,
        "a read and a write each"
    );
}

#[test]
fn msix_needs_bus_master_and_an_armed_vector() {
    let (path, _backend, _dir) = start(1);
    let mut c = client(&path);
    assert_eq!(
        c.get_irq_info(vfio_device::testing::MSIX_IRQ)
            .expect("info")
            .count,
        4
    );
    write_u64(&mut c, 0, RAISE, 1);
    let vectors = arm_msix(&mut c, 4);
    write_u64(&mut c, 0, RAISE, 2);
    assert!(
        wait_event(&vectors[2], Duration::from_secs(5)) > 0,
        "vector 2"
    );
    assert_eq!(
        wait_event(&vectors[1], Duration::from_millis(50)),
        0,
        "not vector 1"
    );
    // Bus Master Enable off: the device's interrupt is dropped.
    c.region_write(CONFIG_REGION, 4, &0x0002u16.to_le_bytes())
        .expect("command");
    write_u64(&mut c, 0, RAISE, 3);
    assert_eq!(wait_event(&vectors[3], Duration::from_millis(50)), 0);
    drop(c);
}

#[test]
fn dma_maps_are_visible_to_the_device_until_unmapped_and_the_sparse_page_is_shared() {
    let (path, backend, _dir) = start(1);
    let mut c = client(&path);
    let ram = memfd(c"guest", 1 << 20).expect("memfd");
    std::os::unix::fs::FileExt::write_all_at(&ram, &0xfeed_f00d_u64.to_le_bytes(), 0x3000)
        .expect("seed");
    c.dma_map(0, 0x8000_0000, 1 << 20, ram.as_raw_fd())
        .expect("DMA_MAP");
    write_u64(&mut c, 0, FETCH, 0x8000_3000);
    assert_eq!(read_u64(&mut c, 0, VALUE), 0xfeed_f00d, "mapped bytes");
    c.dma_unmap(0x8000_0000, 1 << 20).expect("DMA_UNMAP");
    write_u64(&mut c, 0, FETCH, 0x8000_3000);
    assert_eq!(
        read_u64(&mut c, 0, VALUE),
        u64::MAX,
        "a fault after the unmap"
    );
    let area = MappedArea::map(&c, 2).expect("BAR2 is mappable");
    area.write_u64(0x10, 42);
    let b = backend.lock().expect("lock");
    let mut v = [0u8; 8];
    std::os::unix::fs::FileExt::read_exact_at(&b.device.page, &mut v, 0x10).expect("page");
    assert_eq!(
        u64::from_le_bytes(v),
        42,
        "the client's store is in the device's page"
    );
    assert_eq!((b.counters.dma_maps, b.counters.dma_unmaps), (1, 1));
    drop(b);
    drop(c);
}

#[test]
fn reset_and_a_new_client_find_the_function_in_its_reset_state() {
    let (path, backend, _dir) = start(2);
    let mut c = client(&path);
    write_u64(&mut c, 0, 0x40, 7);
    c.reset().expect("DEVICE_RESET");
    assert_eq!(read_u64(&mut c, 0, 0x40), 0);
    write_u64(&mut c, 0, 0x40, 9);
    drop(c);
    let mut c = client(&path);
    assert_eq!(
        read_u64(&mut c, 0, 0x40),
        0,
        "the second client starts from reset"
    );
    drop(c);
    let b = backend.lock().expect("lock");
    assert!(b.device.resets >= 2, "DEVICE_RESET and the disconnect");
    assert_eq!(b.counters.resets, 1);
}
