//! Engine tests over in-process guest memory, driven the way the Linux driver drives the
//! device (through the shared driver helper).

use super::engine::ERROR_STATE;
use super::execute::describe;
use super::*;
use crate::driver::{self, csb_status, Driver, DriverMemory};
use crate::mem::*;
use crate::regs::*;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex as StdMutex};
use vfio_device::dma::{DmaMemory, Fault, GuestRam};
use zerocopy::{FromBytes, IntoBytes};

/// Records raised vectors.
#[derive(Debug, Default)]
struct Vectors(StdMutex<Vec<u16>>);

impl Platform for Arc<Vectors> {
    fn trigger(&self, vector: u16) -> bool {
        self.0.lock().expect("lock").push(vector);
        true
    }
}

const RAM: u64 = 0x10_0000;
const RAM_SIZE: usize = 16 << 20;
const DATA: u64 = RAM + (8 << 20);
const ERRLOG: u64 = RAM + (7 << 20);

struct Bed {
    e: Engine<GuestRam, Arc<Vectors>>,
    ram: Arc<GuestRam>,
    drv: Driver,
    vectors: Arc<Vectors>,
}

impl Bed {
    /// Init as the driver does: tables, admin context, error log, ACTIVE, jump start, then
    /// data context 1 (AKey 0 raising vector 1) started through the admin ring.
    fn new(ooo: bool) -> Self {
        let vectors = Arc::new(Vectors::default());
        let ram = Arc::new(GuestRam::anonymous(RAM, RAM_SIZE));
        let opts = EngineOptions::default();
        opts.force_out_of_order.store(ooo, Ordering::Relaxed);
        let e = Engine::new(SdxiConfig::default(), Arc::clone(&vectors), opts);
        e.set_memory(Some(Arc::clone(&ram)));
        let mut drv = Driver::new(&*ram, RAM, 4 << 20).expect("driver window");
        drv.add_context(&*ram, 0, 1024, &[AkeyEnt::new(None, 0)], CxtState::Run)
            .expect("admin");
        let w = |off: u64, v: u64| e.mmio_write(off, &v.to_le_bytes());
        w(MMIO_CXT_L2, drv.l2);
        w(MMIO_ERR_CTL, 1);
        w(MMIO_CTL0, Ctl0::new().with_fn_err_intr_en(true).into());
        w(
            MMIO_ERR_CFG,
            ErrCfg::new()
                .with_en(true)
                .with_sz(1)
                .with_ptr(ERRLOG >> 12)
                .into(),
        );
        w(
            MMIO_CTL0,
            Ctl0::new()
                .with_fn_err_intr_en(true)
                .with_fn_gsr(FnRequest::Active as u8)
                .into(),
        );
        assert_eq!(e.registers().state(), FnState::Active);
        assert!(e.doorbell(0), "jump start");
        assert!(e.process(0).is_empty());
        let mut bed = Self {
            e,
            ram,
            drv,
            vectors,
        };
        bed.drv
            .add_context(
                &*bed.ram,
                1,
                1024,
                &[AkeyEnt::new(Some(1), 0)],
                CxtState::StopSw,
            )
            .expect("context 1");
        let csb = bed.drv.csb(&*bed.ram, 1).expect("csb");
        bed.admin(&[driver::cxt_start(1, 1, false, 0, Some(csb))]);
        assert_eq!(csb_status(&*bed.ram, csb), (0, false));
        assert_eq!(bed.drv.state(&*bed.ram, 1), Some(CxtState::Run));
        bed
    }

    fn admin(&mut self, d: &[Descriptor]) {
        self.drv.submit(&*self.ram, 0, d);
        let kicks = self.e.process(0);
        for k in kicks {
            self.e.process(k);
        }
    }

    /// `n` CST_BLKs counting one completion each.
    fn csbs(&mut self, n: usize) -> Vec<u64> {
        (0..n)
            .map(|_| self.drv.csb(&*self.ram, 1).expect("csb"))
            .collect()
    }

    fn run(&mut self, cxt: u16, d: &[Descriptor]) {
        self.drv.submit(&*self.ram, cxt, d);
        assert!(self.e.doorbell(cxt));
        self.e.process(cxt);
    }

    fn fill(&self, addr: u64, len: usize, seed: u8) {
        let v: Vec<u8> = (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect();
        self.ram.write_bytes(addr, &v);
    }

    fn bytes(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.ram.read_bytes(addr, &mut v);
        v
    }

    fn errlog(&self, i: u64) -> ErrlogHdEnt {
        let mut b = [0u8; 64];
        self.ram.read_bytes(ERRLOG + i * 64, &mut b);
        ErrlogHdEnt::read_from_bytes(&b).expect("64 bytes")
    }
}

#[test]
fn copy_moves_the_bytes_completes_and_advances_the_read_index() {
    for len in [1usize, 7, 4096, 65536 + 3, 1 << 20] {
        let mut b = Bed::new(false);
        b.fill(DATA, len, len as u8);
        let csb = b.drv.csb(&*b.ram, 1).expect("csb");
        b.run(
            1,
            &[driver::copy(
                DATA,
                DATA + (2 << 20),
                len as u64,
                Some(csb),
                false,
            )],
        );
        assert_eq!(
            b.bytes(DATA + (2 << 20), len),
            b.bytes(DATA, len),
            "len {len}"
        );
        assert_eq!(
            b.bytes(DATA + (2 << 20) + len as u64, 1),
            vec![0],
            "no byte past the end"
        );
        assert_eq!(csb_status(&*b.ram, csb), (0, false));
        assert_eq!(b.drv.read_index(&*b.ram, 1), 1);
        assert_eq!(b.e.counters().bytes_copied, len as u64);
    }
}

#[test]
fn intr_raises_the_akey_vector_and_nop_completes() {
    let mut b = Bed::new(false);
    let csb = b.drv.csb(&*b.ram, 1).expect("csb");
    b.run(1, &[driver::nop(Some(csb), true), driver::intr(0, true)]);
    assert_eq!(csb_status(&*b.ram, csb).0, 0);
    assert_eq!(*b.vectors.0.lock().expect("lock"), vec![1]);
    assert_eq!(b.e.counters().descriptors.intr, 1);
}

#[test]
fn ring_wraps_over_many_batches_and_one_csb_counts_a_batch() {
    let mut b = Bed::new(false);
    b.drv
        .add_context(&*b.ram, 2, 16, &[AkeyEnt::new(None, 0)], CxtState::StopSw)
        .expect("cxt 2");
    b.admin(&[driver::cxt_start(2, 2, false, 0, None)]);
    b.fill(DATA, 64 * 512, 9);
    for batch in 0..5u64 {
        let csb = b.drv.csb(&*b.ram, 10).expect("csb");
        let descs: Vec<Descriptor> = (0..10u64)
            .map(|i| {
                let n = batch * 10 + i;
                driver::copy(
                    DATA + n * 512,
                    DATA + (4 << 20) + n * 512,
                    512,
                    Some(csb),
                    false,
                )
            })
            .collect();
        b.run(2, &descs);
        assert_eq!(csb_status(&*b.ram, csb), (0, false), "batch {batch}");
    }
    assert_eq!(b.drv.read_index(&*b.ram, 2), 50);
    assert_eq!(b.bytes(DATA + (4 << 20), 50 * 512), b.bytes(DATA, 50 * 512));
}

/// Submits one bad descriptor and checks the spec reaction: CST er, error log entry,
/// ERR_STS.sts, vector 0, context stopped in the error state; returns the log entry.
fn expect_error(b: &mut Bed, cxt: u16, d: Descriptor, class: ErrClass) -> ErrlogHdEnt {
    let before = b.e.counters().errors.get(class);
    b.run(cxt, &[d]);
    assert_eq!(b.e.counters().errors.get(class), before + 1, "{class:?}");
    let e = b.errlog(b.e.registers().reg(MMIO_ERR_WRT) - 1);
    assert_eq!(e.err_class.get(), class as u16);
    let h = ErrlogHdr::from(e.hdr.get());
    assert!(h.vl() && h.cv());
    assert_eq!(
        (h.ty(), h.cxt_num(), h.re()),
        (0x7f7, cxt, RE_CONTEXT_STOPPED)
    );
    assert!(ErrSts::from(b.e.registers().reg(MMIO_ERR_STS)).sts());
    assert_eq!(b.vectors.0.lock().expect("lock").last(), Some(&0));
    assert_eq!(b.drv.state(&*b.ram, cxt), Some(ERROR_STATE));
    e
}

#[test]
fn every_error_class_gets_the_spec_reaction() {
    let cases: Vec<(Descriptor, ErrClass)> = vec![
        (
            driver::copy(DATA, DATA + 100, 4096, None, false),
            ErrClass::Overlap,
        ),
        (
            driver::copy(DATA, 0x10, 64, None, false),
            ErrClass::AddressFault,
        ),
        (
            driver::copy(RAM + RAM_SIZE as u64 - 8, DATA, 64, None, false),
            ErrClass::AddressFault,
        ),
        (
            driver::copy(u64::MAX - 10, DATA, 64, None, false),
            ErrClass::AddressFault,
        ),
        (driver::intr(9, false), ErrClass::InvalidAkey),
        (driver::intr(300, false), ErrClass::InvalidAkey),
        (
            driver::cxt_start(1, 1, false, 0, None),
            ErrClass::InvalidDescriptor,
        ),
        (
            Descriptor {
                header: Descriptor::header_for(0x7ff, 0x99, false),
                ..Descriptor::default()
            },
            ErrClass::InvalidDescriptor,
        ),
    ];
    for (d, class) in cases {
        let mut b = Bed::new(false);
        let csb = b.drv.csb(&*b.ram, 1).expect("csb");
        let mut d = d;
        d.csb_ptr = Descriptor::csb_field(Some(csb));
        let e = expect_error(&mut b, 1, d, class);
        assert_eq!(e.dsc_index.get(), 0);
        assert_eq!(csb_status(&*b.ram, csb), (0, true), "{class:?}: CSB er");
        // The context stays stopped: later work is not executed.
        let csb2 = b.drv.csb(&*b.ram, 1).expect("csb");
        b.run(1, &[driver::nop(Some(csb2), false)]);
        assert_eq!(csb_status(&*b.ram, csb2), (1, false));
    }
}

fn total_errors(b: &Bed) -> u64 {
    ERR_CLASSES
        .iter()
        .map(|c| b.e.counters().errors.get(*c))
        .sum()
}

/// A slot below the write index whose vl is still clear is not yet valid (the spec's
/// multi-producer enqueue and the Linux driver advance the write index before setting vl):
/// the pass stops there without any error, read_index stays on the slot, the context stays
/// RUN, and the next doorbell resumes from that slot.
#[test]
fn a_slot_not_yet_valid_stops_the_ring_without_error_and_the_next_doorbell_resumes() {
    let mut b = Bed::new(false);
    let csbs = b.csbs(3);
    let r = b.drv.reserve(&*b.ram, 1, 3).expect("room");
    for (i, c) in csbs.iter().enumerate() {
        r.write(&*b.ram, i as u64, &driver::nop(Some(*c), false), i != 1);
    }
    let logged = b.e.registers().reg(MMIO_ERR_WRT);
    for _ in 0..2 {
        assert!(b.e.doorbell(1));
        b.e.process(1);
        assert_eq!(csb_status(&*b.ram, csbs[0]), (0, false));
        assert_eq!(csb_status(&*b.ram, csbs[1]), (1, false), "not yet valid");
        assert_eq!(
            csb_status(&*b.ram, csbs[2]),
            (1, false),
            "nothing passes it"
        );
        assert_eq!(
            b.drv.read_index(&*b.ram, 1),
            1,
            "read_index stays on the slot"
        );
        assert_eq!(b.drv.state(&*b.ram, 1), Some(CxtState::Run));
    }
    assert_eq!(b.e.counters().not_yet_valid, 2);
    r.make_valid(&*b.ram, 1);
    assert!(b.e.doorbell(1));
    b.e.process(1);
    for c in &csbs {
        assert_eq!(csb_status(&*b.ram, *c), (0, false));
    }
    assert_eq!(b.drv.read_index(&*b.ram, 1), 3);
    assert_eq!(total_errors(&b), 0);
    assert_eq!(b.e.registers().reg(MMIO_ERR_WRT), logged, "nothing logged");
    assert!(
        !b.vectors.0.lock().expect("lock").contains(&0),
        "no error vector"
    );
}

/// The function clears vl of every descriptor it consumes (and only that bit), before
/// read_index moves past it. A slot software reserves on the next lap (write index stored
/// first, as the Linux driver and the spec's enqueue sample do) therefore shows vl=0 until
/// software writes it, and the previous lap's descriptor cannot run a second time.
#[test]
fn consumed_descriptors_lose_vl_so_a_reserved_slot_never_reruns_its_previous_lap() {
    let mut b = Bed::new(false);
    let c = b.drv.context(1).expect("cxt");
    let entries = u64::from(c.entries);
    let csb = b.drv.csb(&*b.ram, entries).expect("csb");
    b.fill(DATA, 4096, 7);
    // One full lap of COPYs, all counted on one CST_BLK.
    let lap: Vec<Descriptor> = (0..entries)
        .map(|_| driver::copy(DATA, DATA + 4096, 64, Some(csb), false))
        .collect();
    b.run(1, &lap);
    assert_eq!(csb_status(&*b.ram, csb), (0, false));
    for i in 0..entries {
        let mut got = [0u8; 64];
        b.ram.read_bytes(c.ring + i * 64, &mut got);
        let mut want = lap[i as usize].as_bytes().to_vec();
        want[0] &= !1;
        assert_eq!(got.to_vec(), want, "slot {i}: only vl cleared");
    }
    // Next lap: reserve (write index published), do not write the slot yet, ring.
    let copies = b.e.counters().descriptors.copy;
    let r = b.drv.reserve(&*b.ram, 1, 1).expect("room");
    assert!(b.e.doorbell(1));
    b.e.process(1);
    assert_eq!(b.e.counters().descriptors.copy, copies, "nothing reran");
    assert_eq!(b.drv.read_index(&*b.ram, 1), entries);
    let csb2 = b.drv.csb(&*b.ram, 1).expect("csb");
    r.write(&*b.ram, 0, &driver::nop(Some(csb2), false), true);
    assert!(b.e.doorbell(1));
    b.e.process(1);
    assert_eq!(csb_status(&*b.ram, csb2), (0, false));
    assert_eq!(
        csb_status(&*b.ram, csb).0,
        0,
        "the old lap's CST_BLK untouched"
    );
    assert_eq!(total_errors(&b), 0);
}

/// Producers reserve (write index first), fill with vl clear and set vl in any order; passes
/// come at arbitrary points. Every descriptor runs exactly once, in ring order, over several
/// laps, and nothing is ever reported as an error.
#[test]
fn descriptors_run_once_in_ring_order_whatever_order_vl_is_set_in() {
    let mut b = Bed::new(false);
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    // One CST_BLK per descriptor, reused per lap: signal counts the runs of that index.
    let total = 3000u64;
    let csbs = b.csbs(total as usize);
    let mut open: Vec<(driver::Reservation, u64)> = Vec::new();
    let mut issued = 0u64;
    let mut runs = 0u64;
    while issued < total || !open.is_empty() {
        match next() % 4 {
            0 | 1 if issued < total => {
                let n = (1 + next() % 6).min(total - issued);
                if let Some(r) = b.drv.reserve(&*b.ram, 1, n) {
                    for i in 0..n {
                        let c = csbs[(issued + i) as usize];
                        r.write(&*b.ram, i, &driver::nop(Some(c), false), false);
                    }
                    open.push((r, issued));
                    issued += n;
                }
            }
            2 if !open.is_empty() => {
                let (r, _) = open.swap_remove((next() % open.len() as u64) as usize);
                for i in 0..r.n {
                    r.make_valid(&*b.ram, i);
                }
            }
            _ => {
                runs += 1;
                b.e.process(1);
            }
        }
    }
    b.e.process(1);
    assert!(runs > 100);
    for (i, c) in csbs.iter().enumerate() {
        assert_eq!(csb_status(&*b.ram, *c), (0, false), "descriptor {i}");
    }
    assert_eq!(b.drv.read_index(&*b.ram, 1), total);
    assert_eq!(b.e.counters().completions, total + 1);
    assert_eq!(total_errors(&b), 0);
    assert!(b.e.counters().not_yet_valid > 0);
}

#[test]
fn write_index_past_the_ring_is_a_ring_index_error() {
    let b = Bed::new(false);
    let c = b.drv.context(1).expect("cxt");
    b.ram.write_bytes(c.write_index, &5000u64.to_le_bytes());
    assert!(b.e.doorbell(1));
    b.e.process(1);
    assert_eq!(b.e.counters().errors.get(ErrClass::RingIndex), 1);
    assert_eq!(b.drv.state(&*b.ram, 1), Some(ERROR_STATE));
}

#[test]
fn starting_a_context_without_a_table_entry_fails_the_admin_descriptor() {
    let mut b = Bed::new(false);
    let csb = b.drv.csb(&*b.ram, 1).expect("csb");
    b.admin(&[driver::cxt_start(5, 5, false, 0, Some(csb))]);
    assert_eq!(csb_status(&*b.ram, csb), (0, true));
    assert_eq!(b.e.counters().errors.get(ErrClass::InvalidContext), 1);
}

#[test]
fn restart_after_an_error_resumes_the_context() {
    let mut b = Bed::new(false);
    expect_error(&mut b, 1, driver::intr(9, false), ErrClass::InvalidAkey);
    b.admin(&[driver::cxt_start(1, 1, true, 0, None)]);
    let csb = b.drv.csb(&*b.ram, 1).expect("csb");
    b.run(1, &[driver::nop(Some(csb), false)]);
    assert_eq!(csb_status(&*b.ram, csb), (0, false));
}

#[test]
fn error_log_overflow_sets_ovf_and_keeps_serving() {
    let b = Bed::new(false);
    // Doorbells of a context without a table entry: logged (reaction: inform), no stop.
    for _ in 0..70 {
        b.e.process(9);
    }
    assert_eq!(b.e.counters().errlog_entries, 64);
    assert_eq!(b.e.counters().errlog_overflows, 6);
    assert!(ErrSts::from(b.e.registers().reg(MMIO_ERR_STS)).ovf());
    // Software consumes the log (ERR_RD) and clears the status (W1C).
    b.e.mmio_write(MMIO_ERR_RD, &64u64.to_le_bytes());
    b.e.mmio_write(MMIO_ERR_STS, &0b11u64.to_le_bytes());
    b.e.process(9);
    assert_eq!(b.e.registers().reg(MMIO_ERR_WRT), 65);
    assert_eq!(ErrlogHdr::from(b.errlog(0).hdr.get()).re(), RE_INFORM);
}

#[test]
fn stop_then_sync_leaves_the_context_stopped() {
    let mut b = Bed::new(false);
    let csb = b.drv.csb(&*b.ram, 1).expect("csb");
    b.admin(&[
        driver::cxt_stop(1, 1, None),
        driver::sync(1, 1, 1, Some(csb)),
    ]);
    assert_eq!(csb_status(&*b.ram, csb), (0, false));
    assert_eq!(b.drv.state(&*b.ram, 1), Some(CxtState::StopSw));
    let csb2 = b.drv.csb(&*b.ram, 1).expect("csb");
    b.run(1, &[driver::nop(Some(csb2), false)]);
    assert_eq!(
        csb_status(&*b.ram, csb2).0,
        1,
        "stopped context does not run"
    );
}

#[test]
fn doorbells_are_ignored_unless_the_function_is_active() {
    let mut b = Bed::new(false);
    b.e.mmio_write(MMIO_CTL0, &(FnRequest::StopSf as u64).to_le_bytes());
    let csb = b.drv.csb(&*b.ram, 1).expect("csb");
    b.drv.submit(&*b.ram, 1, &[driver::nop(Some(csb), false)]);
    assert!(!b.e.doorbell(1));
    b.e.process(1);
    assert_eq!(csb_status(&*b.ram, csb).0, 1);
}

/// A doorbell for a context that was never started (or is stopped) is ignored: nothing runs,
/// nothing is logged, no interrupt; once CXT_START runs it, the queued work runs.
#[test]
fn a_doorbell_for_a_context_never_started_is_ignored_without_a_report() {
    let mut b = Bed::new(false);
    b.drv
        .add_context(
            &*b.ram,
            2,
            1024,
            &[AkeyEnt::new(Some(2), 0)],
            CxtState::StopSw,
        )
        .expect("context 2");
    let csb = b.drv.csb(&*b.ram, 1).expect("csb");
    let logged = b.e.registers().reg(MMIO_ERR_WRT);
    b.run(2, &[driver::nop(Some(csb), false)]);
    assert_eq!(csb_status(&*b.ram, csb), (1, false));
    assert_eq!(b.drv.state(&*b.ram, 2), Some(CxtState::StopSw));
    assert_eq!(b.e.registers().reg(MMIO_ERR_WRT), logged, "nothing logged");
    assert_eq!(total_errors(&b), 0);
    assert_eq!(b.e.counters().doorbells_not_running, 1);
    b.admin(&[driver::cxt_start(2, 2, false, 0, None)]);
    assert_eq!(csb_status(&*b.ram, csb), (0, false), "runs once started");
}

/// CXT_L2 is read when a doorbell needs the tables, not at activation: a non-zero pointer the
/// guest never mapped lets the function go ACTIVE; the jump start then reports an address
/// fault with reaction "inform" and the function stays ACTIVE (only a zero pointer, no table
/// at all, makes the ACTIVE request fail into ERROR; see `function.rs`).
#[test]
fn an_unreadable_level_2_table_is_reported_at_the_doorbell_not_at_activation() {
    let b = Bed::new(false);
    b.e.mmio_write(MMIO_CTL0, &(FnRequest::StopSf as u64).to_le_bytes());
    b.e.mmio_write(MMIO_CXT_L2, &0xdead_0000u64.to_le_bytes());
    b.e.mmio_write(
        MMIO_CTL0,
        &Ctl0::new()
            .with_fn_err_intr_en(true)
            .with_fn_gsr(FnRequest::Active as u8)
            .into_bits()
            .to_le_bytes(),
    );
    assert_eq!(b.e.registers().state(), FnState::Active);
    assert!(b.e.doorbell(0));
    b.e.process(0);
    assert_eq!(b.e.counters().errors.get(ErrClass::AddressFault), 1);
    let e = b.errlog(b.e.registers().reg(MMIO_ERR_WRT) - 1);
    assert_eq!(ErrlogHdr::from(e.hdr.get()).re(), RE_INFORM);
    assert_eq!(b.e.registers().state(), FnState::Active);
}

#[test]
fn consecutive_completions_to_one_cst_blk_are_one_subtraction_per_window() {
    let (ram, e, mut drv) = logged_engine(false);
    let w = crate::core::ring::WINDOW as u64;
    let on_a = w + w / 2;
    let (a, b) = (
        drv.csb(&*ram, on_a + 1).expect("a"),
        drv.csb(&*ram, 2).expect("b"),
    );
    // A full window on A, half a window on A, then B, B, and A again.
    let mut descs: Vec<Descriptor> = (0..on_a).map(|_| driver::nop(Some(a), false)).collect();
    descs.extend([
        driver::nop(Some(b), false),
        driver::nop(Some(b), false),
        driver::nop(Some(a), false),
    ]);
    drv.submit(&*ram, 0, &descs);
    e.process(0);
    let subs = ram.subtractions.lock().expect("lock").clone();
    assert_eq!(
        subs,
        vec![(a, w), (a, w / 2), (b, 2), (a, 1)],
        "one atomic step per run of one CST_BLK inside a window, in ring order"
    );
    assert_eq!(csb_status(&ram.ram, a), (0, false));
    assert_eq!(csb_status(&ram.ram, b), (0, false));
    assert_eq!(e.counters().completions, on_a + 3);
}

#[test]
fn completions_wait_for_at_most_flush_bytes_of_copying() {
    // Eight 64 KiB COPYs on one CST_BLK: a batch stops at 256 KiB, and its completions are
    // signalled before the next batch runs.
    let (ram, e, mut drv) = logged_engine(false);
    let csb = drv.csb(&*ram, 8).expect("csb");
    let data = RAM + (8 << 20);
    let len = 64 << 10;
    let descs: Vec<Descriptor> = (0..8u64)
        .map(|i| {
            driver::copy(
                data + i * len,
                data + (4 << 20) + i * len,
                len,
                Some(csb),
                false,
            )
        })
        .collect();
    drv.submit(&*ram, 0, &descs);
    e.process(0);
    let per = crate::core::ring::FLUSH_BYTES / len;
    let subs = ram.subtractions.lock().expect("lock").clone();
    assert_eq!(subs, vec![(csb, per), (csb, 8 - per)]);
    assert_eq!(csb_status(&ram.ram, csb), (0, false));
}

#[test]
fn forced_out_of_order_completion_reverses_between_fences() {
    let (ram, e, mut drv) = logged_engine(true);
    let csbs: Vec<u64> = (0..4).map(|_| drv.csb(&*ram, 1).expect("csb")).collect();
    let descs = [
        driver::nop(Some(csbs[0]), false),
        driver::nop(Some(csbs[1]), false),
        driver::nop(Some(csbs[2]), true),
        driver::nop(Some(csbs[3]), false),
    ];
    drv.submit(&*ram, 0, &descs);
    e.process(0);
    // Before the fence: 1 then 0 (reversed); the fenced descriptor completes after them.
    assert_eq!(ram.completions(), vec![csbs[1], csbs[0], csbs[2], csbs[3]]);
}

#[test]
fn reset_restores_registers_and_stops_processing() {
    let mut b = Bed::new(false);
    b.e.reset();
    assert_eq!(b.e.registers().state(), FnState::Stop);
    assert_eq!(b.e.registers().reg(MMIO_CXT_L2), 0);
    let csb = b.drv.csb(&*b.ram, 1).expect("csb");
    b.drv.submit(&*b.ram, 1, &[driver::nop(Some(csb), false)]);
    b.e.process(1);
    assert_eq!(csb_status(&*b.ram, csb).0, 1);
}

#[test]
fn update_descriptors_complete_and_nothing_is_cached_between_passes() {
    let mut b = Bed::new(false);
    let csb = b.drv.csb(&*b.ram, 3).expect("csb");
    let upd = |sub| {
        let mut d = driver::sync(1, 1, 0, Some(csb));
        d.header = Descriptor::header_for(DSC_TYPE_ADMIN, sub, true);
        d
    };
    b.admin(&[
        upd(DSC_ADMIN_CXT_UPD),
        upd(DSC_ADMIN_AKEY_UPD),
        upd(DSC_ADMIN_FN_UPD),
    ]);
    assert_eq!(csb_status(&*b.ram, csb), (0, false));
    // Change context 1's AKey 0 in memory: the next INTR uses the new vector at once.
    let c = b.drv.context(1).expect("cxt");
    b.ram
        .write_bytes(c.akeys, AkeyEnt::new(Some(7), 0).as_bytes());
    b.run(1, &[driver::intr(0, false)]);
    assert_eq!(b.vectors.0.lock().expect("lock").last(), Some(&7));
}

#[test]
fn tables_at_the_top_of_the_address_space_fault_instead_of_overflowing() {
    let mut b = Bed::new(false);
    let c = b.drv.context(1).expect("cxt");
    // Ring, AKey table and error log pointed at the last page of the 64-bit space.
    let mut ctl = [0u8; 64];
    b.ram.read_bytes(c.ctl, &mut ctl);
    ctl[0..8].copy_from_slice(&(0xffff_ffff_ffff_ffc1u64).to_le_bytes());
    b.ram.write_bytes(c.ctl, &ctl);
    let l1 = b.drv.l1 + 32;
    b.ram
        .write_bytes(l1 + 8, &(0xffff_ffff_ffff_f008u64).to_le_bytes());
    b.e.mmio_write(MMIO_ERR_CFG, &(0xffff_ffff_ffff_f03fu64).to_le_bytes());
    b.run(1, &[driver::intr(60_000, false)]);
    assert!(b.e.counters().errors.get(ErrClass::AddressFault) >= 1);
}

#[test]
fn descriptors_decode_by_name_and_field_for_traces() {
    let d = driver::copy(0x1000, 0x9000, 4096, Some(0x40), true);
    assert_eq!(
        describe(&d),
        "DMAB.COPY fe src=0x1000 dst=0x9000 len=4096 akey0=0 akey1=0 csb=0x40"
    );
    assert_eq!(
        describe(&driver::cxt_start(1, 3, false, 7, None)),
        "ADMIN.CXT_START_NM fe cxt=1..=3 db_value=7 csb=none"
    );
    assert_eq!(describe(&driver::intr(2, false)), "INTR akey=2 csb=none");
}

/// The vl bit of ring slot `i` of context `cxt`.
fn slot_valid(b: &Bed, cxt: u16, i: u64) -> bool {
    let c = b.drv.context(cxt).expect("cxt");
    let mut h = [0u8; 4];
    b.ram.read_bytes(c.ring + i * DESC_SIZE, &mut h);
    u32::from_le_bytes(h) & 1 != 0
}

#[test]
fn an_error_inside_a_window_leaves_the_later_descriptors_valid_and_unrun() {
    let mut b = Bed::new(false);
    let csbs = b.csbs(4);
    b.fill(DATA, 4096, 1);
    let bad = Descriptor {
        header: Descriptor::header_for(0x7ff, 0x99, false),
        csb_ptr: Descriptor::csb_field(Some(csbs[1])),
        ..Descriptor::default()
    };
    b.run(
        1,
        &[
            driver::copy(DATA, DATA + 8192, 4096, Some(csbs[0]), false),
            bad,
            driver::nop(Some(csbs[2]), false),
            driver::nop(Some(csbs[3]), false),
        ],
    );
    assert_eq!(csb_status(&*b.ram, csbs[0]), (0, false));
    assert_eq!(csb_status(&*b.ram, csbs[1]), (0, true));
    assert_eq!(
        (
            csb_status(&*b.ram, csbs[2]).0,
            csb_status(&*b.ram, csbs[3]).0
        ),
        (1, 1)
    );
    assert_eq!(b.drv.read_index(&*b.ram, 1), 2);
    let vl: Vec<bool> = (0..4).map(|i| slot_valid(&b, 1, i)).collect();
    assert_eq!(
        vl,
        [false, false, true, true],
        "consumed slots lose vl, the rest keep it"
    );
    assert_eq!(b.e.counters().descriptors.nop, 0);
}

#[test]
fn a_fault_inside_a_run_of_copies_names_its_descriptor_after_the_ones_before_it_ran() {
    let mut b = Bed::new(false);
    let csbs = b.csbs(6);
    b.fill(DATA, 5 * 4096, 3);
    let dst = DATA + (4 << 20);
    let past_ram = RAM + RAM_SIZE as u64;
    // Slots 0-2 copy, 3 reads past guest memory, 4-5 would copy.
    let descs: Vec<Descriptor> = (0..6u64)
        .map(|i| {
            let src = if i == 3 { past_ram } else { DATA + i * 4096 };
            driver::copy(src, dst + i * 4096, 4096, Some(csbs[i as usize]), false)
        })
        .collect();
    b.run(1, &descs);
    assert_eq!(
        b.bytes(dst, 3 * 4096),
        b.bytes(DATA, 3 * 4096),
        "0-2 copied"
    );
    assert_eq!(
        b.bytes(dst + 3 * 4096, 2 * 4096),
        vec![0u8; 2 * 4096],
        "3-5 not"
    );
    let status: Vec<(u64, bool)> = csbs.iter().map(|c| csb_status(&*b.ram, *c)).collect();
    assert_eq!(
        status,
        [
            (0, false),
            (0, false),
            (0, false),
            (0, true),
            (1, false),
            (1, false)
        ]
    );
    let e = b.errlog(b.e.registers().reg(MMIO_ERR_WRT) - 1);
    assert_eq!(e.err_class.get(), ErrClass::AddressFault as u16);
    assert_eq!(e.dsc_index.get(), 3, "the faulting descriptor");
    assert_eq!(b.drv.read_index(&*b.ram, 1), 4);
    let vl: Vec<bool> = (0..6).map(|i| slot_valid(&b, 1, i)).collect();
    assert_eq!(vl, [false, false, false, false, true, true]);
    let c = b.e.counters();
    assert_eq!((c.descriptors.copy, c.bytes_copied), (4, 3 * 4096));
}

#[test]
fn a_fence_inside_a_run_of_copies_sees_the_earlier_completions_signalled() {
    // The fenced COPY reads the first COPY's CST_BLK: it must already show the completion.
    let (ram, e, mut drv) = logged_engine(false);
    let csb = drv.csb(&*ram, 1).expect("csb");
    let data = RAM + (8 << 20);
    ram.ram.write_bytes(data, &[5u8; 4096]);
    drv.submit(
        &*ram,
        0,
        &[
            driver::copy(data, data + 4096, 4096, Some(csb), false),
            driver::copy(csb, data + 8192, 8, None, true),
        ],
    );
    e.process(0);
    let mut signal = [0xffu8; 8];
    ram.ram.read_bytes(data + 8192, &mut signal);
    assert_eq!(
        u64::from_le_bytes(signal),
        0,
        "signalled before the fenced copy ran"
    );
    assert_eq!(e.counters().descriptors.copy, 2);
}

/// Guest memory that logs, in order, writes of the admin context's read index ('r', value)
/// and CST_BLK decrements ('c', address: one per completion), and each atomic subtraction
/// as it was made (address, amount).
#[derive(Debug)]
struct Logged {
    ram: GuestRam,
    read_index: u64,
    log: StdMutex<Vec<(char, u64)>>,
    subtractions: StdMutex<Vec<(u64, u64)>>,
}

impl Logged {
    fn log(&self) -> Vec<(char, u64)> {
        self.log.lock().expect("lock").clone()
    }

    fn completions(&self) -> Vec<u64> {
        self.log()
            .into_iter()
            .filter_map(|(k, v)| (k == 'c').then_some(v))
            .collect()
    }
}

impl DmaMemory for Logged {
    fn read(&self, a: u64, b: &mut [u8]) -> Result<(), Fault> {
        self.ram.read(a, b)
    }
    fn write(&self, a: u64, b: &[u8]) -> Result<(), Fault> {
        if a == self.read_index {
            let v = u64::from_le_bytes(b.try_into().unwrap_or([0; 8]));
            self.log.lock().expect("lock").push(('r', v));
        }
        self.ram.write(a, b)
    }
    fn copy(&self, d: u64, s: u64, l: u64) -> Result<(), Fault> {
        self.ram.copy(d, s, l)
    }
    fn subtract_u64(&self, a: u64, n: u64) -> Result<u64, Fault> {
        // One entry per completion: a subtraction of n is n completions at once.
        let mut log = self.log.lock().expect("lock");
        log.extend(std::iter::repeat_n(('c', a), n as usize));
        self.subtractions.lock().expect("lock").push((a, n));
        self.ram.subtract_u64(a, n)
    }
    fn or_u32(&self, a: u64, b: u32) -> Result<(), Fault> {
        self.ram.or_u32(a, b)
    }
    fn check(&self, a: u64, l: u64, w: bool) -> Result<(), Fault> {
        self.ram.check(a, l, w)
    }
}

/// An ACTIVE engine over [`Logged`] memory with only the admin context (AKey 0 raises
/// vector 1), and its driver.
fn logged_engine(ooo: bool) -> (Arc<Logged>, Engine<Logged, Arc<Vectors>>, Driver) {
    let ram = GuestRam::anonymous(RAM, RAM_SIZE);
    let mut drv = Driver::new(&ram, RAM, 4 << 20).expect("window");
    drv.add_context(&ram, 0, 1024, &[AkeyEnt::new(Some(1), 0)], CxtState::Run)
        .expect("admin");
    let read_index = drv.context(0).expect("admin").sts + 8;
    let ram = Arc::new(Logged {
        ram,
        read_index,
        log: StdMutex::new(Vec::new()),
        subtractions: StdMutex::new(Vec::new()),
    });
    let opts = EngineOptions::default();
    opts.force_out_of_order.store(ooo, Ordering::Relaxed);
    let e = Engine::new(SdxiConfig::default(), Arc::new(Vectors::default()), opts);
    e.set_memory(Some(Arc::clone(&ram)));
    e.mmio_write(MMIO_CXT_L2, &drv.l2.to_le_bytes());
    e.mmio_write(MMIO_CTL0, &(FnRequest::Active as u64).to_le_bytes());
    (ram, e, drv)
}

#[test]
fn read_index_passes_a_descriptor_before_its_completion_is_signalled() {
    let (ram, e, mut drv) = logged_engine(false);
    // 40 descriptors: several windows, a fence and an interrupt in the middle.
    let csbs: Vec<u64> = (0..40).map(|_| drv.csb(&*ram, 1).expect("csb")).collect();
    let descs: Vec<Descriptor> = csbs
        .iter()
        .enumerate()
        .map(|(i, c)| match i {
            20 => driver::intr(0, false),
            _ => driver::nop(Some(*c), i == 7),
        })
        .collect();
    let slot_of: std::collections::HashMap<u64, u64> = csbs
        .iter()
        .enumerate()
        .map(|(i, c)| (*c, i as u64))
        .collect();
    drv.submit(&*ram, 0, &descs);
    e.process(0);
    let log = ram.log();
    let mut ri = 0;
    let mut signalled = Vec::new();
    for (kind, v) in log {
        match kind {
            'r' => ri = v,
            _ => {
                let i = slot_of[&v];
                assert!(
                    ri > i,
                    "CSB of descriptor {i} signalled with read_index {ri}"
                );
                signalled.push(i);
            }
        }
    }
    assert_eq!(ri, 40);
    let expected: Vec<u64> = (0..40).filter(|i| *i != 20).collect();
    assert_eq!(signalled, expected, "completions in ring order");
    let vectors = e.platform().0.lock().expect("lock").clone();
    assert_eq!(vectors, [1], "the INTR raised its vector");
}
