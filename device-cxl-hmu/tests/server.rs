//! End-to-end: the real `cxl-hmu-server` process driven by a real vfio-user client.

use device_cxl_hmu::metrics::HmuMetrics;
use device_cxl_hmu::spec::dvsec::decode_range1;
use device_cxl_hmu::spec::layout::ChmuConfig;
use device_cxl_hmu::spec::regs::*;
use std::path::Path;
use vfio_device::pci::dvsecs;
use vfio_device::testing::{arm_msix, read_u64, wait_event, write_u64, ServerProcess};

const CONFIG: u32 = vfio_device::testing::CONFIG_REGION;

fn server(extra: &[&str]) -> ServerProcess {
    let mut args = vec!["--max-clients", "1"];
    args.extend_from_slice(extra);
    ServerProcess::spawn(Path::new(env!("CARGO_BIN_EXE_cxl-hmu-server")), &args)
        .expect("spawn cxl-hmu-server")
}

/// The device's counters once the server has exited.
fn metrics(srv: ServerProcess) -> HmuMetrics {
    let dump = srv.finish().expect("counters");
    HmuMetrics::from_server_json(&dump).expect("device counters")
}

fn rd(c: &mut vfio_user::Client, off: u64) -> u64 {
    read_u64(c, u32::from(REGS_BAR), CHMU_BLOCK_OFFSET + off)
}

fn wr(c: &mut vfio_user::Client, off: u64, v: u64) {
    write_u64(c, u32::from(REGS_BAR), CHMU_BLOCK_OFFSET + off, v);
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
    // The CHMU is the locator's block 5, at the offset its entry gives.
    let chmu = (loc.offset + REG_LOCATOR_FIRST_ENTRY..loc.offset + loc.length)
        .step_by(8)
        .map(|e| {
            let w = |o: usize| u32::from_le_bytes([cfg[o], cfg[o + 1], cfg[o + 2], cfg[o + 3]]);
            let low = RegLocLow::from(w(e));
            (low.block_id(), low.bir(), low.offset(w(e + 4)))
        })
        .find(|b| b.0 == RBI_CHMU)
        .expect("CHMU block");
    assert_eq!(chmu, (RBI_CHMU, REGS_BAR, CHMU_BLOCK_OFFSET));
    let cap0 = CommonCap0::from(rd(&mut c, CHMU_COMMON_CAP0));
    assert_eq!((cap0.version(), cap0.num_instances()), (1, 3));
    let cfg3 = ChmuConfig {
        instances: 3,
        ..ChmuConfig::default()
    }
    .fitted();
    let len = u64::from(CommonCap1::from(rd(&mut c, CHMU_COMMON_CAP1)).instance_length());
    assert_eq!(len, cfg3.instance_length());
    assert_eq!(rd(&mut c, cfg3.instance_base(2) + CHMU_CAP0), cfg3.cap0());
    assert_eq!(rd(&mut c, 0x10 + 2 * len + CHMU_CAP3), 0xff0);
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
    c.region_write(
        u32::from(REGS_BAR),
        CHMU_BLOCK_OFFSET + base + CHMU_RANGE_BITMAP,
        &[0x0f],
    )
    .expect("bitmap");
    wr(
        &mut c,
        base + CHMU_CFG0,
        ChmuCfg0::new().with_enable(true).into(),
    );
    assert!(!ChmuStatus::from(rd(&mut c, base + CHMU_STATUS)).enabled());
    // 4 KiB units but an epoch of 1 s x 101, past CAP0's maximum (1 s x 100): refused.
    let cfg1 = ChmuCfg1::new()
        .with_unit_size(12)
        .with_epoch_scale(5)
        .with_epoch_mult(101);
    wr(&mut c, base + CHMU_CFG1, cfg1.into());
    let cfg0 = ChmuCfg0::new().with_m2s_req_type(6).with_enable(true);
    wr(&mut c, base + CHMU_CFG0, cfg0.into());
    assert!(!ChmuStatus::from(rd(&mut c, base + CHMU_STATUS)).enabled());
    assert!(!ChmuCfg0::from(rd(&mut c, base + CHMU_CFG0)).enable());
    // 1 s x 100: accepted.
    wr(&mut c, base + CHMU_CFG1, cfg1.with_epoch_mult(100).into());
    wr(&mut c, base + CHMU_CFG0, cfg0.with_threshold(8).into());
    let st = ChmuStatus::from(rd(&mut c, base + CHMU_STATUS));
    assert!(st.enabled() && st.op_in_progress() == 0);
    drop(c);
    let chmu = metrics(srv).chmu;
    assert_eq!(
        (chmu.invalid_configs, chmu.enables, chmu.guest_errors),
        (2, 1, 0),
        "{chmu:?}"
    );
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

/// Enables instance 0 for 4 KiB units, threshold `thr`, 100 us epochs, fill threshold `fill`.
fn enable(c: &mut vfio_user::Client, thr: u32, fill: u16) {
    let base = ChmuConfig::default().instance_base(0);
    wr(
        c,
        base + CHMU_CFG1,
        ChmuCfg1::new()
            .with_unit_size(12)
            .with_epoch_scale(1)
            .with_epoch_mult(1)
            .into(),
    );
    wr(c, base + CHMU_CFG2, u64::from(fill));
    c.region_write(
        u32::from(REGS_BAR),
        CHMU_BLOCK_OFFSET + base + CHMU_RANGE_BITMAP,
        &[0x0f],
    )
    .expect("bitmap");
    let cfg0 = ChmuCfg0::new()
        .with_m2s_req_type(6)
        .with_threshold(thr)
        .with_fill_int_en(true)
        .with_enable(true);
    wr(c, base + CHMU_CFG0, cfg0.into());
}

/// Drains instance 0's hotlist as the driver does: entries [head, tail), then HEAD = TAIL.
fn drain(c: &mut vfio_user::Client) -> Vec<(u64, u64)> {
    let base = ChmuConfig::default().instance_base(0);
    let u16_at = |c: &mut vfio_user::Client, off: u64| {
        let mut b = [0u8; 2];
        c.region_read(u32::from(REGS_BAR), CHMU_BLOCK_OFFSET + off, &mut b)
            .expect("read");
        u64::from(u16::from_le_bytes(b))
    };
    // HEAD and TAIL are 2-byte registers (CXL 3.2 §8.2.8.5/6).
    let (head, tail) = (
        u16_at(c, base + CHMU_HOTLIST_HEAD),
        u16_at(c, base + CHMU_HOTLIST_TAIL),
    );
    let w = ChmuStatus::from(rd(c, base + CHMU_STATUS)).counter_width();
    // The hotlist is where CAP3 says, inside the instance.
    let hotlist = base + rd(c, base + CHMU_CAP3);
    let mut out = Vec::new();
    let mut h = head;
    while h != tail {
        let e = rd(c, hotlist + h * 8);
        out.push(device_cxl_hmu::core::hotness::decode_entry(e, w));
        h = (h + 1) % 1024;
    }
    c.region_write(
        u32::from(REGS_BAR),
        CHMU_BLOCK_OFFSET + base + CHMU_HOTLIST_HEAD,
        &(tail as u16).to_le_bytes(),
    )
    .expect("head");
    out
}

#[test]
fn trace_replay_reports_the_hot_units_with_a_fill_interrupt() {
    let dir = std::env::temp_dir().join(format!("hmu-trace-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("mkdir");
    let trace = dir.join("t.trace");
    // Monitored range 0x40000000+1 GiB. Unit 0x10 is hot (50 accesses), 0x20 warm (5), one
    // access outside the range; epoch 1 then has unit 0x30 hot.
    let mut t = String::from("# gpa kind time\n");
    for i in 0..50 {
        t.push_str(&format!("{:#x} R {}\n", 0x4001_0000 + (i % 64) * 64, i));
    }
    for i in 0..5 {
        t.push_str(&format!("{:#x} W {}\n", 0x4002_0000, 100 + i));
    }
    t.push_str("0x1000 R 200\n");
    for i in 0..30 {
        t.push_str(&format!("{:#x} W {}\n", 0x4003_0000, 150_000 + i));
    }
    std::fs::write(&trace, t).expect("trace");
    let tp = trace.to_string_lossy().into_owned();
    let srv = server(&["--replay", &tp]);
    let mut c = srv.client().expect("connect");
    let v = arm_msix(&mut c, 1);
    enable(&mut c, 10, 1);
    assert!(
        wait_event(&v[0], std::time::Duration::from_secs(10)) > 0,
        "fill-threshold interrupt"
    );
    // The replay ends both epochs; poll the hotlist for both reports.
    let mut got = Vec::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while got.len() < 2 && std::time::Instant::now() < deadline {
        got.extend(drain(&mut c));
    }
    assert_eq!(got, vec![(0x10, 50), (0x30, 30)]);
    drop(c);
    let h = metrics(srv).hotness;
    assert_eq!(
        (h.accesses_seen, h.accesses_in_range, h.entries_written),
        (86, 85, 2),
        "{h:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn socket_feed_records_reach_the_hotlist() {
    use device_cxl_hmu::spec::record::ReqKind;
    use device_cxl_hmu::spec::record::{GpaAccess, Record};
    use std::io::Write;
    let dir = std::env::temp_dir().join(format!("hmu-feed-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("mkdir");
    let sock = dir.join("feed.sock");
    let sp = sock.to_string_lossy().into_owned();
    let ctl = dir.join("ctl.sock").to_string_lossy().into_owned();
    let srv = server(&["--feed-socket", &sp, "--control", &ctl]);
    let mut c = srv.client().expect("connect");
    enable(&mut c, 3, 0);
    let mut feed = std::os::unix::net::UnixStream::connect(&sock).expect("feed socket");
    let mut bytes = Vec::new();
    for i in 0..8u64 {
        bytes.extend(
            GpaAccess {
                gpa: 0x4005_0000 + i * 8,
                kind: ReqKind::Read,
                time: i,
                weight: 1,
            }
            .encode(),
        );
    }
    feed.write_all(&bytes).expect("feed");
    // On the records' clock nothing ends the epoch yet.
    let quiet = std::time::Instant::now() + std::time::Duration::from_millis(150);
    while std::time::Instant::now() < quiet {
        assert_eq!(
            drain(&mut c),
            vec![],
            "an epoch ended without a record or tick past it"
        );
    }
    // A clock tick past the epoch end closes it (the plugin's flusher sends these).
    feed.write_all(&Record::Tick(500_000).encode())
        .expect("tick");
    drop(feed);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut got = Vec::new();
    while got.is_empty() && std::time::Instant::now() < deadline {
        got = drain(&mut c);
    }
    assert_eq!(got, vec![(0x50, 8)]);
    let ctl_answer = {
        use std::io::{BufRead, BufReader};
        let mut s = std::os::unix::net::UnixStream::connect(dir.join("ctl.sock")).expect("control");
        s.write_all(b"{\"cmd\":\"state\"}\n").expect("send");
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).expect("answer");
        serde_json::from_str::<serde_json::Value>(&line).expect("json")
    };
    assert_eq!(ctl_answer["instances"][0]["enabled"], true);
    let ov = {
        use std::io::{BufRead, BufReader};
        let mut s = std::os::unix::net::UnixStream::connect(dir.join("ctl.sock")).expect("control");
        s.write_all(b"{\"cmd\":\"overflow\",\"instance\":0}\n")
            .expect("send");
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).expect("answer");
        serde_json::from_str::<serde_json::Value>(&line).expect("json")
    };
    assert_eq!(ov["overflow"], 0);
    let base = ChmuConfig::default().instance_base(0);
    assert!(
        ChmuStatus::from(rd(&mut c, base + CHMU_STATUS)).overflow(),
        "forced overflow shows in STATUS"
    );
    assert_eq!(
        ctl_answer["instances"][0]["head"],
        ctl_answer["instances"][0]["tail"]
    );
    drop(c);
    srv.finish().expect("counters");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The hotlists are page-aligned sparse mmap areas of BAR 2 inside their instances, and the
/// bytes the client maps are the entries the registers return.
#[test]
fn hotlists_are_mappable_pages_inside_their_instances() {
    use device_cxl_hmu::core::hotness::decode_entry;
    let dir = std::env::temp_dir().join(format!("hmu-map-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("mkdir");
    let sock = dir.join("feed.sock");
    let sp = sock.to_string_lossy().into_owned();
    let srv = server(&["--feed-socket", &sp]);
    let mut c = srv.client().expect("connect");
    let cfg = ChmuConfig::default().fitted();
    let (areas, file) = {
        let region = c.region(u32::from(REGS_BAR)).expect("BAR 2");
        let areas: Vec<(u64, u64)> = region
            .sparse_areas
            .iter()
            .map(|a| (a.offset, a.size))
            .collect();
        let fo = region.file_offset.as_ref().expect("an fd to map");
        (areas, fo.file().try_clone().expect("dup"))
    };
    assert_eq!(areas, cfg.mapped_areas());
    let len = u64::from(CommonCap1::from(rd(&mut c, CHMU_COMMON_CAP1)).instance_length());
    for (i, (off, size)) in areas.iter().enumerate() {
        let base = 0x10 + i as u64 * len;
        assert_eq!(
            CHMU_BLOCK_OFFSET + base + rd(&mut c, base + CHMU_CAP3),
            *off
        );
        assert_eq!(off % 4096, 0);
        assert!(
            off + size <= CHMU_BLOCK_OFFSET + base + len,
            "area {i} leaves its instance"
        );
    }
    let map = |off: u64| {
        let mut b = [0u8; 8];
        use std::os::unix::fs::FileExt;
        file.read_exact_at(&mut b, off).expect("pread");
        u64::from_le_bytes(b)
    };
    enable(&mut c, 3, 0);
    let mut feed = std::os::unix::net::UnixStream::connect(&sock).expect("feed socket");
    use device_cxl_hmu::spec::record::Record;
    use std::io::Write;
    let mut bytes = Vec::new();
    for i in 0..8u64 {
        bytes.extend(
            device_cxl_hmu::spec::record::GpaAccess {
                gpa: 0x4007_0000 + i * 64,
                kind: device_cxl_hmu::spec::record::ReqKind::Read,
                time: i,
                weight: 1,
            }
            .encode(),
        );
    }
    bytes.extend(Record::Tick(500_000).encode());
    feed.write_all(&bytes).expect("feed");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let base = ChmuConfig::default().instance_base(0);
    let tail_at = |c: &mut vfio_user::Client| rd(c, base + CHMU_HOTLIST_HEAD) >> 16 & 0xffff;
    while tail_at(&mut c) == 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let w = ChmuStatus::from(rd(&mut c, base + CHMU_STATUS)).counter_width();
    let cap3 = rd(&mut c, base + CHMU_CAP3);
    let trapped = rd(&mut c, base + cap3);
    assert_eq!(decode_entry(trapped, w), (0x70, 8));
    assert_eq!(map(areas[0].0), trapped, "the mapped page holds the entry");
    drop(c);
    srv.finish().expect("counters");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Reads and writes past the end of a BAR or of the configuration space get an error reply
/// on the socket, never data; the server keeps serving.
#[test]
fn accesses_past_the_end_of_a_region_get_error_replies() {
    use vfio_device::testing::RawClient;
    let srv = server(&[]);
    let mut c = RawClient::connect(&srv.socket).expect("connect");
    let bar2 = c.bar_size(REGS_BAR).expect("BAR 2 size");
    assert!(bar2 >= CHMU_BLOCK_OFFSET + CHMU_BLOCK_SIZE);
    let bar = u32::from(REGS_BAR);
    assert!(!c.read(bar, bar2 - 8, 8).expect("last word").error);
    for (region, off, n) in [
        (bar, bar2, 8),
        (bar, bar2 - 4, 8),
        (CONFIG, 4096, 4),
        (CONFIG, 4094, 4),
        (1, 0, 4),
        (bar, u64::MAX - 3, 8),
    ] {
        let refused = c.refused(region, off, n).expect("replies");
        assert!(refused, "{n} bytes of region {region} at {off:#x} answered");
    }
    let cap0 = c
        .read(bar, CHMU_BLOCK_OFFSET + CHMU_COMMON_CAP0, 8)
        .expect("cap");
    assert!(!cap0.error);
    assert_eq!(
        CommonCap0::from(u64::from_le_bytes(cap0.data[..8].try_into().expect("8"))).version(),
        1
    );
    drop(c);
    let counters = srv.finish().expect("counters");
    assert_eq!(counters["transport"]["out_of_range_accesses"], 12);
}
