//! Ring protocol through the real socket, with the submission patterns of real drivers: the
//! write index is published before the descriptors' vl is set (the spec's multi-producer
//! enqueue sample, AMD's Linux driver), several producers race on one ring, doorbells arrive
//! out of order, and pending work is cancelled by overwriting it with NOPs.

mod common;

use common::*;
use device_sdxi::driver::{self, csb_status, DriverMemory, Mmio, Reservation};
use device_sdxi::mem::*;
use device_sdxi::metrics::{EngineCounters, SdxiMetrics};
use device_sdxi::regs::*;
use std::sync::Mutex;
use std::time::Duration;

/// A small xorshift for jitter (deterministic per seed).
struct Jitter(u64);

impl Jitter {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Sometimes nothing, sometimes a yield, sometimes a short sleep: widens the windows
    /// between publishing the write index, writing the slot, setting vl and ringing.
    fn pause(&mut self) {
        match self.next() % 16 {
            0..=9 => {}
            10..=13 => std::thread::yield_now(),
            _ => std::thread::sleep(Duration::from_micros(self.next() % 200)),
        }
    }
}

fn control_path(tag: &str) -> (std::path::PathBuf, String) {
    let p = std::env::temp_dir().join(format!("sdxi-{tag}-{}.sock", std::process::id()));
    let s = p.to_string_lossy().into_owned();
    (p, s)
}

fn engine_counters(ctl: &std::path::Path) -> EngineCounters {
    let c = control(ctl, r#"{"cmd":"counters"}"#);
    SdxiMetrics::from_server_json(&c)
        .expect("the server's counters")
        .engine
}

/// Reserves `n` slots of context `cxt`, waiting while the ring is full.
fn reserve(
    drv: &Mutex<&mut driver::Driver>,
    ram: &impl DriverMemory,
    cxt: u16,
    n: u64,
) -> Reservation {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(r) = drv.lock().expect("driver").reserve(ram, cxt, n) {
            return r;
        }
        assert!(std::time::Instant::now() < deadline, "ring stayed full");
        std::thread::yield_now();
    }
}

/// Four producers share context 1's 1024-slot ring for about eight laps. Each reserves (the
/// write index is stored at once), writes its COPY (and, every third time, a fenced INTR)
/// with vl clear, sets vl, and rings the doorbell with its own reservation's end, so
/// doorbells run ahead of holes and arrive out of order. Every copy must run exactly once
/// (its CST_BLK reaches 0 and no lower), move the right bytes, and nothing may be reported
/// as an error. `mapped`: doorbells are stores to the mapped doorbell page (as a guest rings
/// them by default), else region writes on the socket.
fn racing_producers(mapped: bool) {
    const THREADS: u64 = 4;
    const PER_THREAD: u64 = 1500;
    const LEN: u64 = 1024;
    let (ctl, cp) = control_path(if mapped { "producers-m" } else { "producers-t" });
    let path = if mapped { "mapped" } else { "trapped" };
    let mut d = Dut::start(&["--control", &cp, "--workers", "2", "--doorbell", path], 1);
    let total = THREADS * PER_THREAD;
    let dst_base = DATA + total * LEN;
    for i in 0..total {
        d.fill(DATA + i * LEN, LEN, i);
    }
    let csbs: Vec<u64> = (0..total)
        .map(|_| d.drv.csb(&d.ram, 1).expect("csb"))
        .collect();
    let slots = std::sync::atomic::AtomicU64::new(0);
    {
        let Dut { c, ram, drv, .. } = &mut d;
        let page = mapped.then(|| MappedDoorbellPage::map(c).expect("mapped doorbell BAR"));
        let ram = &*ram;
        let drv = Mutex::new(drv);
        let client = Mutex::new(c);
        std::thread::scope(|s| {
            for t in 0..THREADS {
                let (drv, client, csbs, slots, page) = (&drv, &client, &csbs, &slots, &page);
                s.spawn(move || {
                    let mut j = Jitter(0x9e37_79b9_7f4a_7c15 ^ ((t + 1) * 0x1234_5678_9abc));
                    for k in 0..PER_THREAD {
                        let i = t * PER_THREAD + k;
                        let mut descs = vec![driver::copy(
                            DATA + i * LEN,
                            dst_base + i * LEN,
                            LEN,
                            Some(csbs[i as usize]),
                            false,
                        )];
                        if k % 3 == 0 {
                            descs.push(driver::intr(0, true));
                        }
                        let r = reserve(drv, ram, 1, descs.len() as u64);
                        slots.fetch_add(r.n, std::sync::atomic::Ordering::Relaxed);
                        j.pause();
                        for (n, dsc) in descs.iter().enumerate() {
                            r.write(ram, n as u64, dsc, false);
                        }
                        j.pause();
                        for n in 0..r.n {
                            r.make_valid(ram, n);
                        }
                        match page {
                            Some(p) => p.ring(1, r.dbval()),
                            None => ClientMmio(&mut client.lock().expect("client"))
                                .doorbell(1, r.dbval()),
                        }
                    }
                });
            }
        });
    }
    wait_for("every copy", Duration::from_secs(60), || {
        csbs.iter().all(|c| csb_status(&d.ram, *c).0 == 0)
    });
    for (i, c) in csbs.iter().enumerate() {
        assert_eq!(csb_status(&d.ram, *c), (0, false), "copy {i}");
        let i = i as u64;
        assert!(
            d.same(DATA + i * LEN, dst_base + i * LEN, LEN),
            "copy {i}'s bytes"
        );
    }
    let slots = slots.into_inner();
    wait_for("read index at the end", Duration::from_secs(10), || {
        d.drv.read_index(&d.ram, 1) == slots
    });
    // Nothing runs late either (a stale slot would show up as an extra COPY).
    std::thread::sleep(Duration::from_millis(50));
    let e = engine_counters(&ctl);
    assert_eq!(e.descriptors.copy, total);
    assert_eq!(e.descriptors.intr, slots - total);
    assert_eq!(e.errors.total(), 0, "{e:?}");
    assert_eq!(e.errlog_entries, 0);
    assert_eq!(d.drv.state(&d.ram, 1), Some(CxtState::Run));
    eprintln!(
        "mapped {mapped}: {total} copies, {slots} slots ({} laps), passes stopped at a not-yet-valid slot: {}",
        slots / 1024,
        e.not_yet_valid
    );
    d.finish();
    let _ = std::fs::remove_file(&ctl);
}

#[test]
fn racing_producers_that_publish_the_write_index_before_vl_lose_and_repeat_nothing() {
    racing_producers(false);
}

#[test]
fn racing_producers_ringing_the_mapped_doorbell_page_lose_and_repeat_nothing() {
    racing_producers(true);
}

/// A doorbell that covers a reserved slot whose vl is still clear: the function stops there
/// without any error (no log entry, context RUN, read_index on the slot, the valid descriptor
/// behind it waits). Setting vl and ringing again runs both.
#[test]
fn a_doorbell_over_a_not_yet_valid_slot_waits_for_the_next_doorbell() {
    let (ctl, cp) = control_path("hole");
    let mut d = Dut::start(&["--control", &cp], 1);
    d.fill(DATA, 8192, 9);
    let csbs: Vec<u64> = (0..2).map(|_| d.drv.csb(&d.ram, 1).expect("csb")).collect();
    let r = d.drv.reserve(&d.ram, 1, 2).expect("room");
    let copy = |i: u64| {
        driver::copy(
            DATA + i * 4096,
            DATA + (1 << 20) + i * 4096,
            4096,
            Some(csbs[i as usize]),
            false,
        )
    };
    r.write(&d.ram, 0, &copy(0), false);
    r.write(&d.ram, 1, &copy(1), true);
    d.doorbell(1, r.dbval());
    wait_for(
        "a pass that stops at the hole",
        Duration::from_secs(10),
        || engine_counters(&ctl).not_yet_valid >= 1,
    );
    assert_eq!(csb_status(&d.ram, csbs[0]), (1, false));
    assert_eq!(
        csb_status(&d.ram, csbs[1]),
        (1, false),
        "the valid slot behind waits"
    );
    assert_eq!(d.drv.read_index(&d.ram, 1), 0);
    assert_eq!(d.drv.state(&d.ram, 1), Some(CxtState::Run));
    assert_eq!(d.rd(MMIO_ERR_WRT), 0, "no error-log entry");
    assert_eq!(
        wait_event(&d.vectors[0], Duration::from_millis(50)),
        0,
        "no vector 0"
    );
    r.make_valid(&d.ram, 0);
    d.doorbell(1, r.dbval());
    d.wait_csb(csbs[1], "both copies after the second doorbell");
    assert_eq!(csb_status(&d.ram, csbs[0]), (0, false));
    assert_eq!(csb_status(&d.ram, csbs[1]), (0, false));
    assert!(d.same(DATA, DATA + (1 << 20), 8192));
    assert_eq!(d.drv.read_index(&d.ram, 1), 2);
    assert_eq!(engine_counters(&ctl).errors.total(), 0);
    d.finish();
    let _ = std::fs::remove_file(&ctl);
}

/// Cancelling work the way the Linux driver's terminate_all does: pending descriptors are
/// overwritten with NOPs, then a fenced NOP with a CST_BLK synchronises. Here the cancelled
/// COPYs sit behind a slot another producer reserved and has not validated, so the function
/// has stopped before them; after the overwrite none of them moves a byte, every slot is
/// consumed and nothing is reported as an error.
#[test]
fn pending_descriptors_overwritten_with_nops_are_cancelled_and_the_ring_drains() {
    let (ctl, cp) = control_path("terminate");
    let mut d = Dut::start(&["--control", &cp], 1);
    d.fill(DATA, 8 * 4096, 4);
    let dst = DATA + (4 << 20);
    d.ram.write_bytes(dst, &vec![0x5a; 8 * 4096]);
    let csbs: Vec<u64> = (0..8).map(|_| d.drv.csb(&d.ram, 1).expect("csb")).collect();
    let hole = d.drv.reserve(&d.ram, 1, 1).expect("room");
    let copies = d.drv.reserve(&d.ram, 1, 8).expect("room");
    for i in 0..8u64 {
        let c = driver::copy(
            DATA + i * 4096,
            dst + i * 4096,
            4096,
            Some(csbs[i as usize]),
            false,
        );
        copies.write(&d.ram, i, &c, true);
    }
    d.doorbell(1, copies.dbval());
    wait_for(
        "the pass to stop at the hole",
        Duration::from_secs(10),
        || engine_counters(&ctl).not_yet_valid >= 1,
    );
    // terminate_all: the hole's owner gives up too; everything pending becomes a NOP.
    hole.write(&d.ram, 0, &driver::nop(None, false), true);
    for i in 0..8u64 {
        copies.write(&d.ram, i, &driver::nop(Some(csbs[i as usize]), false), true);
    }
    // synchronize: a fenced NOP with a CST_BLK, then wait for it.
    let sync = d.drv.csb(&d.ram, 1).expect("csb");
    let wi = d.drv.submit(&d.ram, 1, &[driver::nop(Some(sync), true)]);
    d.doorbell(1, wi);
    d.wait_csb(sync, "synchronize");
    for c in &csbs {
        assert_eq!(csb_status(&d.ram, *c), (0, false));
    }
    let mut after = vec![0u8; 8 * 4096];
    d.ram.read_bytes(dst, &mut after);
    assert!(
        after.iter().all(|b| *b == 0x5a),
        "a cancelled COPY moved bytes"
    );
    assert_eq!(d.drv.read_index(&d.ram, 1), 10);
    let e = engine_counters(&ctl);
    assert_eq!(e.descriptors.copy, 0);
    assert_eq!(e.descriptors.nop, 10);
    assert_eq!(e.errors.total(), 0);
    d.finish();
    let _ = std::fs::remove_file(&ctl);
}
