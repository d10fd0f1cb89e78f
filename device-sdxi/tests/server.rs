//! End-to-end: the real `sdxi-server` process driven by a real vfio-user client over its
//! socket (the role QEMU plays), no VM.

use device_sdxi::function::SdxiConfig;
use device_sdxi::regs::*;
use std::path::Path;
use vfio_device::testing::ServerProcess;

const CONFIG: u32 = 7;
const MSIX: u32 = 2;

/// A server that exits after `clients` connections, so its counters are final.
fn server(clients: u32) -> ServerProcess {
    let n = clients.to_string();
    ServerProcess::spawn(
        Path::new(env!("CARGO_BIN_EXE_sdxi-server")),
        &["--max-cxt", "15", "--max-clients", &n],
    )
    .expect("spawn sdxi-server")
}

fn read64(c: &mut vfio_user::Client, off: u64) -> u64 {
    let mut b = [0u8; 8];
    c.region_read(u32::from(CONTROL_BAR), off, &mut b)
        .expect("BAR0 read");
    u64::from_le_bytes(b)
}

fn write64(c: &mut vfio_user::Client, off: u64, v: u64) {
    c.region_write(u32::from(CONTROL_BAR), off, &v.to_le_bytes())
        .expect("BAR0 write");
}

/// The function's counters out of the server's counters JSON.
fn metrics(c: &serde_json::Value) -> device_sdxi::metrics::SdxiMetrics {
    device_sdxi::metrics::SdxiMetrics::from_server_json(c).expect("the server's counters")
}

#[test]
fn identity_regions_and_interrupts_as_the_driver_sees_them() {
    let srv = server(1);
    let mut c = srv.client().expect("connect");
    let mut cfg = [0u8; 64];
    c.region_read(CONFIG, 0, &mut cfg).expect("config read");
    assert_eq!(u16::from_le_bytes([cfg[0], cfg[1]]), EMU_VENDOR_ID);
    assert_eq!(
        u32::from_le_bytes([cfg[8], cfg[9], cfg[10], cfg[11]]) >> 8,
        SDXI_CLASS_CODE
    );
    assert_eq!(
        c.region(u32::from(CONTROL_BAR)).map(|r| r.size),
        Some(CONTROL_BAR_SIZE)
    );
    assert_eq!(
        c.region(u32::from(DOORBELL_BAR)).map(|r| r.size),
        Some(16 * 4096)
    );
    assert_eq!(c.region(CONFIG).map(|r| r.size), Some(4096));
    assert_eq!(c.get_irq_info(MSIX).expect("irq info").count, 17);
    assert_eq!(read64(&mut c, MMIO_VERSION), 0x0001_0000);
    let cap1 = Cap1::from(read64(&mut c, MMIO_CAP1));
    assert_eq!(cap1.max_cxt(), 15);
    assert_eq!(
        u64::from(cap1),
        SdxiConfig {
            max_cxt: 15,
            ..SdxiConfig::default()
        }
        .cap1()
    );
    drop(c);
    let counters = srv.finish().expect("counters");
    assert_eq!(metrics(&counters).function.mmio_reads, 2);
    assert_eq!(counters["transport"]["connections"], 1);
    // The typed struct reads every field the server wrote and nothing else (a renamed
    // counter would otherwise read back as a silent 0).
    let typed = serde_json::to_value(metrics(&counters)).expect("json");
    assert_eq!(typed, counters["registers"]);
}

#[test]
fn state_machine_through_the_socket_and_reset_on_reconnect() {
    let srv = server(2);
    let mut c = srv.client().expect("connect");
    write64(&mut c, MMIO_CXT_L2, 0x20_0000);
    write64(&mut c, MMIO_CTL0, FnRequest::Active as u64);
    assert_eq!(
        Sts0::from(read64(&mut c, MMIO_STS0)).fn_gsv(),
        FnState::Active as u8
    );
    drop(c);
    // A new client (QEMU restarted) finds the function in its reset state.
    let mut c = srv.client().expect("reconnect");
    assert_eq!(
        Sts0::from(read64(&mut c, MMIO_STS0)).fn_gsv(),
        FnState::Stop as u8
    );
    assert_eq!(read64(&mut c, MMIO_CXT_L2), 0);
    drop(c);
    let counters = srv.finish().expect("counters");
    assert_eq!(counters["transport"]["connections"], 2);
}

#[test]
fn hostile_accesses_are_counted_and_the_server_keeps_serving() {
    let mut srv = server(1);
    let mut c = srv.client().expect("connect");
    let mut odd = [0u8; 3];
    c.region_read(u32::from(CONTROL_BAR), MMIO_VERSION + 1, &mut odd)
        .expect("odd read answered");
    assert_eq!(odd, [0, 0, 0]);
    // (Accesses past the end of a region get error replies instead: see
    // accesses_past_the_end_of_a_region_get_error_replies.)
    c.region_write(u32::from(DOORBELL_BAR), 12, &[1, 2])
        .expect("bad doorbell answered");
    assert_eq!(read64(&mut c, MMIO_VERSION), 0x0001_0000, "still serving");
    assert!(srv.alive());
    drop(c);
    let counters = srv.finish().expect("counters");
    let m = metrics(&counters);
    assert_eq!(m.function.guest_errors, 1);
    assert_eq!(m.doorbells.doorbell_guest_errors, 1);
}

#[test]
fn dma_maps_with_fds_are_recorded() {
    let srv = server(1);
    let mut c = srv.client().expect("connect");
    let name = std::ffi::CString::new("guest-ram").expect("name");
    // SAFETY: memfd_create with a valid NUL-terminated name.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), 0) };
    assert!(fd >= 0);
    // SAFETY: fd is the memfd just created.
    assert_eq!(unsafe { libc::ftruncate(fd, 1 << 20) }, 0);
    c.dma_map(0, 0x1000_0000, 1 << 20, fd).expect("dma map");
    c.dma_unmap(0x1000_0000, 1 << 20).expect("dma unmap");
    drop(c);
    // SAFETY: closing our own fd.
    unsafe { libc::close(fd) };
    let counters = srv.finish().expect("counters");
    assert_eq!(counters["transport"]["dma_maps"], 1);
    assert_eq!(counters["transport"]["dma_maps_without_fd"], 0);
    assert_eq!(counters["transport"]["dma_unmaps"], 1);
}

#[test]
fn sigterm_writes_counters_and_exits() {
    let srv = server(5);
    let mut c = srv.client().expect("connect");
    assert_eq!(read64(&mut c, MMIO_VERSION), 0x0001_0000);
    let counters = srv.stop().expect("counters written on SIGTERM");
    assert_eq!(counters["device"], "sdxi");
    assert_eq!(metrics(&counters).function.mmio_reads, 1);
}

#[test]
fn socket_path_mode_replaces_a_stale_socket_and_refuses_a_live_one() {
    let dir = std::env::temp_dir().join(format!("sdxi-sock-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("mkdir");
    let sock = dir.join("s.sock");
    // A stale socket file: bound, then its listener closed.
    drop(std::os::unix::net::UnixListener::bind(&sock).expect("bind"));
    let mut first = std::process::Command::new(env!("CARGO_BIN_EXE_sdxi-server"))
        .arg("--socket")
        .arg(&sock)
        .args(["--max-clients", "1"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    // The server owns the path once a client gets through.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let client = loop {
        if let Ok(c) = vfio_user::Client::new(&sock) {
            break c;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "server never listened"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    let second = std::process::Command::new(env!("CARGO_BIN_EXE_sdxi-server"))
        .arg("--socket")
        .arg(&sock)
        .output()
        .expect("run");
    assert!(!second.status.success());
    assert!(
        String::from_utf8_lossy(&second.stderr).contains("in use"),
        "{second:?}"
    );
    drop(client);
    assert!(first.wait().expect("wait").success());
    assert!(!sock.exists(), "socket removed at exit");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Reads and writes past the end of a BAR or of the configuration space get an error reply
/// on the socket, never data, and are counted; the server keeps serving.
#[test]
fn accesses_past_the_end_of_a_region_get_error_replies() {
    use vfio_device::testing::RawClient;
    let srv = server(1);
    let mut c = RawClient::connect(&srv.socket).expect("connect");
    let bar0 = c.bar_size(CONTROL_BAR).expect("BAR 0 size");
    assert!(bar0 >= 0x1000);
    let bar = u32::from(CONTROL_BAR);
    assert!(!c.read(bar, bar0 - 8, 8).expect("last word").error);
    let cases = [
        (bar, bar0, 8),
        (bar, bar0 - 4, 8),
        (bar, u64::MAX - 7, 8),
        (CONFIG, 4096, 4),
        (CONFIG, 0xffff_fff0, 8),
        (5, 0, 4),
    ];
    for (region, off, n) in cases {
        let refused = c.refused(region, off, n).expect("replies");
        assert!(refused, "{n} bytes of region {region} at {off:#x} answered");
    }
    let ok = c.read(CONFIG, 0, 4).expect("vendor/device");
    assert!(!ok.error && ok.data.len() == 4);
    drop(c);
    let counters = srv.finish().expect("counters");
    assert_eq!(counters["transport"]["out_of_range_accesses"], 12);
}
