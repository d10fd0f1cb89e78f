//! The memory device's mailbox end to end: the real `cxl-hmu-server` process driven over a
//! real vfio-user socket, found the way Linux's cxl_pci finds it (Register Locator -> Memory
//! Device block -> Device Capabilities Array -> Primary Mailbox), every command cxl_pci and
//! cxl_mem send at probe, unsupported and malformed commands, a background command and the
//! doorbell protocol.

use device_cxl_hmu::metrics::{HmuMetrics, MailboxMetrics};
use device_cxl_hmu::spec::regs::*;
use std::path::Path;
use vfio_device::pci::dvsecs;
use vfio_device::testing::ServerProcess;

const CONFIG: u32 = 7;
const SIZE: u64 = 0x6000_0000;
const SERIAL: u64 = 0x5e71_a1de_0000_0042;

// Return codes and opcodes written out from the spec's tables (CXL 3.2 §8.2.10).
const SUCCESS: u16 = 0;
const BACKGROUND_STARTED: u16 = 1;
const INVALID_INPUT: u16 = 2;
const UNSUPPORTED: u16 = 3;
const BUSY: u16 = 6;
const INVALID_HANDLE: u16 = 0xe;
const INVALID_PHYSICAL_ADDRESS: u16 = 0xf;
const INVALID_PAYLOAD_LENGTH: u16 = 0x16;
const INVALID_LOG: u16 = 0x17;
const CEL: [u8; 16] = [
    0x0d, 0xa9, 0xc0, 0xb5, 0xbf, 0x41, 0x4b, 0x78, 0x8f, 0x79, 0x96, 0xb1, 0x62, 0x3b, 0x3f, 0x17,
];

struct Memdev {
    c: vfio_user::Client,
    mbox: u64,
    memdev_status: u64,
}

fn server() -> ServerProcess {
    ServerProcess::spawn(
        Path::new(env!("CARGO_BIN_EXE_cxl-hmu-server")),
        &[
            "--max-clients",
            "1",
            "--hpa-base",
            "0x80000000",
            "--size",
            &format!("{SIZE:#x}"),
            "--serial",
            &format!("{SERIAL:#x}"),
        ],
    )
    .expect("spawn cxl-hmu-server")
}

fn config(c: &mut vfio_user::Client) -> Vec<u8> {
    let mut cfg = vec![0u8; 4096];
    for (i, chunk) in cfg.chunks_mut(64).enumerate() {
        c.region_read(CONFIG, 64 * i as u64, chunk)
            .expect("config read");
    }
    cfg
}

fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}

impl Memdev {
    /// Finds the memory device block through the Register Locator and the mailbox and memory
    /// device status through the capability array, as cxl_pci does.
    fn open(mut c: vfio_user::Client) -> Self {
        let cfg = config(&mut c);
        let loc = dvsecs(&cfg)
            .into_iter()
            .find(|d| d.vendor == 0x1e98 && d.id == 8)
            .expect("Register Locator");
        let mut block = None;
        for e in (loc.offset + 0x0c..loc.offset + loc.length).step_by(8) {
            let (low, high) = (u32_at(&cfg, e), u32_at(&cfg, e + 4));
            if (low >> 8) & 0xff == 3 {
                assert_eq!(low & 7, u32::from(REGS_BAR));
                block = Some((u64::from(high) << 32) | u64::from(low & 0xffff_0000));
            }
        }
        let block = block.expect("Memory Device block (id 3)");
        let mut m = Self {
            c,
            mbox: 0,
            memdev_status: 0,
        };
        let array = m.rd(block);
        assert_eq!(array & 0xffff, 0, "Device Capabilities Array ID");
        for i in 1..=(array >> 32) & 0xffff {
            let h = m.rd(block + 0x10 * i);
            let off = block + (h >> 32);
            match h & 0xffff {
                2 => m.mbox = off,
                0x4000 => m.memdev_status = off,
                _ => {}
            }
        }
        assert!(
            m.mbox != 0 && m.memdev_status != 0,
            "mailbox and memdev status found"
        );
        m
    }

    fn rd(&mut self, off: u64) -> u64 {
        let mut b = [0u8; 8];
        self.c
            .region_read(u32::from(REGS_BAR), off, &mut b)
            .expect("read");
        u64::from_le_bytes(b)
    }

    /// A 4-byte read (Mailbox Control is a 32-bit register, read as Linux's readl does).
    fn rd32(&mut self, off: u64) -> u32 {
        let mut b = [0u8; 4];
        self.c
            .region_read(u32::from(REGS_BAR), off, &mut b)
            .expect("read");
        u32::from_le_bytes(b)
    }

    fn wr(&mut self, off: u64, v: &[u8]) {
        self.c
            .region_write(u32::from(REGS_BAR), off, v)
            .expect("write");
    }

    /// Linux's __cxl_pci_mbox_send_cmd: doorbell clear, command, payload, doorbell, wait,
    /// status, output length, output. Returns (return code, output).
    fn send_len(&mut self, opcode: u16, input: &[u8], len: u64) -> (u16, Vec<u8>) {
        assert_eq!(
            self.rd32(self.mbox + 4) & 1,
            0,
            "doorbell clear before a command"
        );
        self.wr(
            self.mbox + 8,
            &(u64::from(opcode) | (len << 16)).to_le_bytes(),
        );
        for (i, c) in input.chunks(8).enumerate() {
            let mut w = [0u8; 8];
            w[..c.len()].copy_from_slice(c);
            self.wr(self.mbox + 0x20 + 8 * i as u64, &w);
        }
        self.wr(self.mbox + 4, &1u32.to_le_bytes());
        assert_eq!(self.rd32(self.mbox + 4) & 1, 0, "doorbell clears when done");
        let rc = (self.rd(self.mbox + 0x10) >> 32) as u16;
        let n = ((self.rd(self.mbox + 8) >> 16) & 0x1f_ffff) as usize;
        let mut out = vec![0u8; n];
        for (i, c) in out.chunks_mut(8).enumerate() {
            let v = self.rd(self.mbox + 0x20 + 8 * i as u64).to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
        (rc, out)
    }

    fn send(&mut self, opcode: u16, input: &[u8]) -> (u16, Vec<u8>) {
        self.send_len(opcode, input, input.len() as u64)
    }
}

/// The server's counters, once it has exited.
fn counters(srv: ServerProcess) -> HmuMetrics {
    let dump = srv.finish().expect("counters");
    HmuMetrics::from_server_json(&dump).expect("device counters")
}

/// The server's mailbox counters, once it has exited.
fn mailbox_counters(srv: ServerProcess) -> MailboxMetrics {
    counters(srv).cxl.mailbox
}

fn dpa_range(addr: u64, lines: u64) -> Vec<u8> {
    [addr.to_le_bytes(), lines.to_le_bytes()].concat()
}

#[test]
fn every_command_cxl_pci_sends_at_probe_answers_in_spec_format() {
    let srv = server();
    let mut m = Memdev::open(srv.client().expect("connect"));
    let cfg = config(&mut m.c);
    // Serial: the Device Serial Number capability (0003h) carries --serial.
    let mut off = 0x100;
    let mut serial = None;
    while off != 0 {
        let h = u32_at(&cfg, off);
        if h & 0xffff == 3 {
            serial =
                Some(u64::from(u32_at(&cfg, off + 4)) | (u64::from(u32_at(&cfg, off + 8)) << 32));
        }
        off = (h >> 20) as usize;
    }
    assert_eq!(serial, Some(SERIAL));
    // Memory Device Status: media ready (01b at [3:2]), mailbox interfaces ready ([4]).
    let st = m.rd(m.memdev_status);
    assert_eq!(((st >> 2) & 3, (st >> 4) & 1), (1, 1));
    // Mailbox Capabilities: payload 2^n >= 256 bytes.
    let payload = 1usize << (m.rd(m.mbox) & 0x1f);
    assert!(payload >= 256);

    // cxl_enumerate_cmds: Get Supported Logs, then the CEL in payload-sized chunks.
    let (rc, gsl) = m.send(0x0400, &[]);
    assert_eq!((rc, u16::from_le_bytes([gsl[0], gsl[1]])), (SUCCESS, 1));
    assert_eq!(&gsl[8..24], &CEL);
    let cel_size = u32_at(&gsl, 24) as usize;
    let mut cel = Vec::new();
    while cel.len() < cel_size {
        let n = (cel_size - cel.len()).min(payload);
        let input = [
            &CEL[..],
            &(cel.len() as u32).to_le_bytes(),
            &(n as u32).to_le_bytes(),
        ]
        .concat();
        let (rc, out) = m.send(0x0401, &input);
        assert_eq!((rc, out.len()), (SUCCESS, n));
        cel.extend_from_slice(&out);
    }
    let opcodes: Vec<u16> = cel
        .chunks(4)
        .map(|e| u16::from_le_bytes([e[0], e[1]]))
        .collect();
    for op in [
        0x0100, 0x0101, 0x0102, 0x0103, 0x0301, 0x0400, 0x0401, 0x4000, 0x4100, 0x4102, 0x4103,
        0x4200, 0x4300, 0x4304,
    ] {
        assert!(opcodes.contains(&op), "{op:#06x} in the CEL: {opcodes:x?}");
    }
    // Scan Media's CEL entry says Background Operation (bit 6).
    let scan = cel
        .chunks(4)
        .find(|e| e[..2] == [0x04, 0x43])
        .expect("scan media");
    assert_eq!(u16::from_le_bytes([scan[2], scan[3]]) & (1 << 6), 1 << 6);

    // cxl_set_timestamp, then Get Timestamp moves on from it.
    let t = 1_700_000_000_000_000_000u64;
    assert_eq!(m.send(0x0301, &t.to_le_bytes()).0, SUCCESS);
    let (rc, out) = m.send(0x0300, &[]);
    let now = u64::from_le_bytes(out[..8].try_into().expect("8 bytes"));
    assert!(
        rc == SUCCESS && now >= t && now < t + 10_000_000_000,
        "{now}"
    );

    // cxl_dev_state_identify: capacity in 256 MiB units, volatile only, no partition
    // alignment (so no Get Partition Info at probe), FW revision, LSA size, poison records.
    let (rc, id) = m.send(0x4000, &[]);
    assert_eq!((rc, id.len()), (SUCCESS, 0x45));
    let q = |o: usize| u64::from_le_bytes(id[o..o + 8].try_into().expect("8 bytes"));
    assert_eq!(
        (q(0x10), q(0x18), q(0x20), q(0x28)),
        (SIZE >> 28, SIZE >> 28, 0, 0)
    );
    assert!(id[..16].starts_with(b"tierbed "), "{:?}", &id[..16]);
    let lsa = u32_at(&id, 0x38) as usize;
    assert!(lsa > 0);
    assert!(u32::from_le_bytes([id[0x3c], id[0x3d], id[0x3e], 0]) > 0);
    let (rc, pi) = m.send(0x4100, &[]);
    assert_eq!((rc, pi.len()), (SUCCESS, 0x20));
    assert_eq!(
        u64::from_le_bytes(pi[..8].try_into().expect("8 bytes")),
        SIZE >> 28
    );

    // Event logs (cxl_event_config): policy set to MSI/MSI-X and read back, each log empty.
    assert_eq!(m.send(0x0103, &[1, 1, 1, 1]).0, SUCCESS);
    let (rc, pol) = m.send(0x0102, &[]);
    assert_eq!((rc, &pol[..4]), (SUCCESS, &[1u8, 1, 1, 1][..]));
    for log in 0..4u8 {
        let (rc, ev) = m.send(0x0100, &[log]);
        assert_eq!((rc, ev.len()), (SUCCESS, 0x20));
        assert_eq!(u16::from_le_bytes([ev[0x14], ev[0x15]]), 0, "no records");
        assert_eq!(
            m.send(0x0101, &[log, 1, 0, 0, 0, 0]).0,
            SUCCESS,
            "clear all"
        );
    }
    // A handle the log never gave out.
    assert_eq!(m.send(0x0101, &[0, 0, 1, 0, 0, 0, 7, 0]).0, INVALID_HANDLE);

    // Health, LSA round trip, poison list.
    let (rc, hi) = m.send(0x4200, &[]);
    assert_eq!((rc, hi.len(), hi[0], hi[1]), (SUCCESS, 0x12, 0, 0));
    let label: Vec<u8> = (0..100u8).collect();
    let set = [&64u32.to_le_bytes()[..], &[0; 4], &label].concat();
    assert_eq!(m.send(0x4103, &set).0, SUCCESS);
    let get = [64u32.to_le_bytes(), 100u32.to_le_bytes()].concat();
    assert_eq!(m.send(0x4102, &get), (SUCCESS, label));
    let (rc, pl) = m.send(0x4300, &dpa_range(0, SIZE / 64));
    assert_eq!(
        (rc, pl.len(), u16::from_le_bytes([pl[0x0a], pl[0x0b]])),
        (SUCCESS, 0x20, 0)
    );
    drop(m);
    let cxl = counters(srv).cxl;
    // Every command went through one doorbell, every access was well formed.
    assert_eq!(cxl.memdev.doorbells, cxl.mailbox.outcomes.commands);
    assert_eq!(cxl.memdev.access.guest_errors, 0);
    let mb = cxl.mailbox;
    assert_eq!(mb.outcomes.failed, 1, "{mb:?}");
    assert_eq!(
        mb.by_command.get("Identify Memory Device"),
        Some(&1),
        "{mb:?}"
    );
}

#[test]
fn unsupported_and_malformed_commands_get_the_spec_return_codes() {
    let srv = server();
    let mut m = Memdev::open(srv.client().expect("connect"));
    // Opcodes this device does not implement: sanitize, set partition info, vendor, 0.
    for op in [0x4400, 0x4101, 0xc000, 0x0000, 0xffff] {
        assert_eq!(m.send(op, &[]), (UNSUPPORTED, vec![]), "{op:#06x}");
    }
    // Wrong input lengths.
    assert_eq!(m.send(0x4000, &[0]).0, INVALID_PAYLOAD_LENGTH);
    assert_eq!(m.send(0x0301, &[0; 7]).0, INVALID_PAYLOAD_LENGTH);
    assert_eq!(m.send(0x0401, &[0; 0x17]).0, INVALID_PAYLOAD_LENGTH);
    assert_eq!(
        m.send(0x0101, &[0, 0, 2, 0, 0, 0, 1, 0]).0,
        INVALID_PAYLOAD_LENGTH
    );
    // A length past the payload registers (21-bit field).
    assert_eq!(m.send_len(0x4103, &[], 0x1f_ffff).0, INVALID_PAYLOAD_LENGTH);
    // Bad field values.
    assert_eq!(m.send(0x0100, &[9]).0, INVALID_INPUT, "no event log 9");
    assert_eq!(
        m.send(0x0103, &[2, 0, 0, 0]).0,
        INVALID_INPUT,
        "FW interrupt mode"
    );
    let other_log = [&[0u8; 16][..], &0u32.to_le_bytes(), &4u32.to_le_bytes()].concat();
    assert_eq!(m.send(0x0401, &other_log).0, INVALID_LOG);
    let past_cel = [&CEL[..], &0x1000u32.to_le_bytes(), &4u32.to_le_bytes()].concat();
    assert_eq!(m.send(0x0401, &past_cel).0, INVALID_INPUT);
    let past_lsa = [u32::MAX.to_le_bytes(), 2u32.to_le_bytes()].concat();
    assert_eq!(m.send(0x4102, &past_lsa).0, INVALID_INPUT);
    assert_eq!(
        m.send(0x4300, &dpa_range(SIZE, 1)).0,
        INVALID_PHYSICAL_ADDRESS
    );
    assert_eq!(
        m.send(0x4300, &dpa_range(3, 1)).0,
        INVALID_INPUT,
        "unaligned DPA"
    );
    // Read-only registers ignore writes: capabilities, status, memory device status.
    let (caps, status) = (m.rd(m.mbox), m.rd(m.memdev_status));
    m.wr(m.mbox, &[0; 8]);
    m.wr(m.mbox + 0x10, &u64::MAX.to_le_bytes());
    m.wr(m.memdev_status, &[0; 8]);
    assert_eq!((m.rd(m.mbox), m.rd(m.memdev_status)), (caps, status));
    // The mailbox keeps serving.
    assert_eq!(m.send(0x4000, &[]).0, SUCCESS);
    drop(m);
    let mb = mailbox_counters(srv).outcomes;
    assert_eq!(
        (mb.unsupported, mb.invalid_payload_length),
        (5, 5),
        "{mb:?}"
    );
}

#[test]
fn scan_media_runs_in_the_background_while_foreground_commands_go_on() {
    let srv = server();
    let mut m = Memdev::open(srv.client().expect("connect"));
    let caps = m.send(0x4303, &dpa_range(0, SIZE / 64));
    assert_eq!((caps.0, caps.1.len()), (SUCCESS, 4));
    let estimate_ms = u64::from(u32_at(&caps.1, 0));
    assert!(estimate_ms > 0);
    let mut scan = dpa_range(0, SIZE / 64);
    scan.push(0);
    let started = std::time::Instant::now();
    assert_eq!(m.send(0x4304, &scan).0, BACKGROUND_STARTED);
    // Mailbox Status [0]: background operation running; BG status names Scan Media.
    assert_eq!(m.rd(m.mbox + 0x10) & 1, 1);
    assert_eq!(m.rd(m.mbox + 0x18) & 0xffff, 0x4304);
    // Foreground commands run meanwhile; a second background command is Busy.
    assert_eq!(m.send(0x4200, &[]).0, SUCCESS);
    assert_eq!(m.send(0x4304, &scan).0, BUSY);
    assert_eq!(m.send(0x4305, &[]).0, BUSY);
    // Poll Percentage Complete like cxl_pci does, until 100.
    let bg = loop {
        let bg = m.rd(m.mbox + 0x18);
        if (bg >> 16) & 0x7f == 100 {
            break bg;
        }
        assert!(
            started.elapsed().as_secs() < 10,
            "background command never completes"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    };
    assert!(started.elapsed().as_millis() as u64 + 5 >= estimate_ms);
    assert_eq!(bg >> 32 & 0xffff, u64::from(SUCCESS));
    assert_eq!(m.rd(m.mbox + 0x10) & 1, 0, "background operation over");
    let (rc, res) = m.send(0x4305, &[]);
    assert_eq!((rc, res.len()), (SUCCESS, 0x20));
    assert_eq!(
        u16::from_le_bytes([res[0x12], res[0x13]]),
        0,
        "no media errors"
    );
    drop(m);
    let mb = mailbox_counters(srv).outcomes;
    assert_eq!(
        (mb.background_started, mb.background_completed),
        (1, 1),
        "{mb:?}"
    );
}
