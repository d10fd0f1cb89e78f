//! End-to-end: the real `cxl-hmu-server` process driven by a real vfio-user client.

use device_cxl_hmu::chmu::ChmuConfig;
use device_cxl_hmu::device::decode_range1;
use device_cxl_hmu::regs::*;
use device_sdxi::pci::dvsecs;
use device_sdxi::testing::ServerProcess;
use std::path::Path;

const CONFIG: u32 = 7;

fn server(extra: &[&str]) -> ServerProcess {
    let mut args = vec!["--max-clients", "1"];
    args.extend_from_slice(extra);
    ServerProcess::spawn(Path::new(env!("CARGO_BIN_EXE_cxl-hmu-server")), &args)
        .expect("spawn cxl-hmu-server")
}

fn rd(c: &mut vfio_user::Client, off: u64) -> u64 {
    let mut b = [0u8; 8];
    c.region_read(u32::from(REGS_BAR), CHMU_BLOCK_OFFSET + off, &mut b)
        .expect("read");
    u64::from_le_bytes(b)
}

fn wr(c: &mut vfio_user::Client, off: u64, v: u64) {
    c.region_write(
        u32::from(REGS_BAR),
        CHMU_BLOCK_OFFSET + off,
        &v.to_le_bytes(),
    )
    .expect("write");
}

#[test]
fn discovery_through_dvsecs_finds_the_chmu_and_the_monitored_range() {
    let srv = server(&[
        "--hpa-base",
        "0x100000000",
        "--size",
        "0x20000000",
        "--instances",
        "3",
    ]);
    let mut c = srv.client().expect("connect");
    let mut cfg = vec![0u8; 4096];
    for (i, chunk) in cfg.chunks_mut(64).enumerate() {
        c.region_read(CONFIG, 64 * i as u64, chunk)
            .expect("config read");
    }
    assert_eq!(
        u32::from_le_bytes([cfg[8], cfg[9], cfg[10], cfg[11]]) >> 8,
        CXL_MEMDEV_CLASS_CODE
    );
    let d = dvsecs(&cfg);
    let dev = d
        .iter()
        .find(|d| d.vendor == CXL_DVSEC_VENDOR && d.id == 0)
        .expect("DVSEC 0");
    let range = decode_range1(&cfg, dev.offset).expect("range 1");
    assert_eq!((range.hpa_base, range.size), (0x1_0000_0000, 0x2000_0000));
    let loc = d
        .iter()
        .find(|d| d.vendor == CXL_DVSEC_VENDOR && d.id == 8)
        .expect("locator");
    let e = loc.offset + REG_LOCATOR_FIRST_ENTRY;
    let low = RegLocLow::from(u32::from_le_bytes([
        cfg[e],
        cfg[e + 1],
        cfg[e + 2],
        cfg[e + 3],
    ]));
    assert_eq!((low.block_id(), low.bir()), (RBI_CHMU, REGS_BAR));
    let cap0 = CommonCap0::from(rd(&mut c, CHMU_COMMON_CAP0));
    assert_eq!((cap0.version(), cap0.num_instances()), (1, 3));
    let cfg3 = ChmuConfig {
        instances: 3,
        ..ChmuConfig::default()
    };
    assert_eq!(rd(&mut c, cfg3.instance_base(2) + CHMU_CAP0), cfg3.cap0());
    drop(c);
    srv.finish().expect("counters");
}

#[test]
fn enable_goes_through_status_and_bad_config_is_refused() {
    let srv = server(&[]);
    let mut c = srv.client().expect("connect");
    let base = ChmuConfig::default().instance_base(0);
    // Unsupported unit size (2^40): refused, STATUS stays disabled.
    wr(
        &mut c,
        base + CHMU_CFG1,
        ChmuCfg1::new().with_unit_size(40).into(),
    );
    c.region_write(u32::from(REGS_BAR), base + CHMU_RANGE_BITMAP, &[0x0f])
        .expect("bitmap");
    wr(
        &mut c,
        base + CHMU_CFG0,
        ChmuCfg0::new().with_enable(true).into(),
    );
    assert!(!ChmuStatus::from(rd(&mut c, base + CHMU_STATUS)).enabled());
    // 4 KiB units: accepted.
    wr(
        &mut c,
        base + CHMU_CFG1,
        ChmuCfg1::new().with_unit_size(12).into(),
    );
    wr(
        &mut c,
        base + CHMU_CFG0,
        ChmuCfg0::new().with_enable(true).with_threshold(8).into(),
    );
    let st = ChmuStatus::from(rd(&mut c, base + CHMU_STATUS));
    assert!(st.enabled() && st.op_in_progress() == 0);
    drop(c);
    let counters = srv.finish().expect("counters");
    assert_eq!(counters["registers"]["chmu"]["invalid_configs"], 1);
    assert_eq!(counters["registers"]["chmu"]["enables"], 1);
}

#[test]
fn misaligned_range_is_refused_at_start() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cxl-hmu-server"))
        .args(["--socket", "/nonexistent/x.sock", "--hpa-base", "0x1000"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("256 MiB"));
}
