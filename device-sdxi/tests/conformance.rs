//! Conformance suite: the real `sdxi-server` process, a real vfio-user client (QEMU's role),
//! and a shared memfd as guest memory, driven the way the Linux SDXi driver drives the device
//! (AMD's SDXi series, `device.c`/`context.c`/`dma.c`). No VM; runs in seconds.

mod common;

use common::*;
use device_sdxi::driver::{self, csb_status, DriverMemory};
use device_sdxi::mem::ErrClass;
use device_sdxi::mem::*;
use device_sdxi::metrics::SdxiMetrics;
use device_sdxi::regs::*;
use std::time::Duration;

/// The function's counters out of the server's counters JSON.
fn metrics(c: &serde_json::Value) -> SdxiMetrics {
    SdxiMetrics::from_server_json(c).expect("the server's counters")
}

#[test]
fn init_sequence_admin_context_and_eight_contexts() {
    let d = Dut::start(&[], 8);
    let counters = d.finish();
    let e = metrics(&counters).engine;
    assert_eq!(e.contexts_started, 8);
    assert_eq!(e.descriptors.admin, 8);
    assert_eq!(e.errlog_entries, 0);
}

#[test]
fn copies_from_one_byte_to_64_mib_are_exact() {
    let mut d = Dut::start(&[], 1);
    let sizes = [
        1u64,
        2,
        63,
        64,
        4095,
        4096,
        4097,
        65536,
        1 << 20,
        (2 << 20) + 17,
        64 << 20,
    ];
    let src = DATA;
    let dst = DATA + (72 << 20);
    let mut total = 0;
    for len in sizes {
        d.fill(src, len, len);
        // A guard byte after the destination must survive.
        d.ram.write_bytes(dst + len, &[0xa5]);
        let csb = d.drv.csb(&d.ram, 1).expect("csb");
        d.submit(1, &[driver::copy(src, dst, len, Some(csb), false)]);
        d.wait_csb(csb, "copy");
        assert_eq!(csb_status(&d.ram, csb), (0, false), "len {len}");
        assert!(d.same(src, dst, len), "len {len}");
        let mut g = [0u8];
        d.ram.read_bytes(dst + len, &mut g);
        assert_eq!(g, [0xa5], "len {len}: wrote past the end");
        total += len;
    }
    let counters = d.finish();
    let e = metrics(&counters).engine;
    assert_eq!(e.bytes_copied, total);
    assert_eq!(e.descriptors.copy, sizes.len() as u64);
}

#[test]
fn batch_of_512_pages_with_one_completion_and_an_interrupt() {
    let mut d = Dut::start(&[], 2);
    let n = 512u64;
    d.fill(DATA, n * 4096, 3);
    let csb = d.drv.csb(&d.ram, n).expect("csb");
    let mut descs: Vec<Descriptor> = (0..n)
        .map(|i| {
            driver::copy(
                DATA + i * 4096,
                DATA + (8 << 20) + i * 4096,
                4096,
                Some(csb),
                false,
            )
        })
        .collect();
    descs.push(driver::intr(0, true));
    // 513 descriptors do not fit a 1024 ring twice: submit in two halves.
    d.submit(2, &descs[..256]);
    d.submit(2, &descs[256..]);
    d.wait_csb(csb, "batch");
    assert!(d.same(DATA, DATA + (8 << 20), n * 4096));
    assert!(
        wait_event(&d.vectors[2], Duration::from_secs(5)) >= 1,
        "context 2's vector"
    );
    assert_eq!(d.drv.read_index(&d.ram, 2), n + 1);
    let counters = d.finish();
    assert!(counters["interrupts"]["raised"].as_u64() >= Some(1));
}

#[test]
fn contexts_run_in_parallel_and_complete_independently() {
    let mut d = Dut::start(&["--workers", "4"], 4);
    let mut csbs = Vec::new();
    for id in 1..=4u16 {
        let base = DATA + u64::from(id) * (16 << 20);
        d.fill(base, 1 << 20, u64::from(id));
        let csb = d.drv.csb(&d.ram, 8).expect("csb");
        let descs: Vec<Descriptor> = (0..8u64)
            .map(|i| {
                driver::copy(
                    base + i * (128 << 10),
                    base + (8 << 20) + i * (128 << 10),
                    128 << 10,
                    Some(csb),
                    false,
                )
            })
            .collect();
        d.submit(id, &descs);
        csbs.push((id, base, csb));
    }
    for (id, base, csb) in csbs {
        d.wait_csb(csb, "parallel contexts");
        assert!(d.same(base, base + (8 << 20), 1 << 20), "context {id}");
    }
    d.finish();
}

#[test]
fn errors_reach_the_cst_the_error_log_and_vector_zero_then_the_device_keeps_serving() {
    let mut d = Dut::start(&[], 2);
    let cases = [
        (
            1u16,
            driver::copy(DATA, DATA + 8, 64, None, false),
            ErrClass::Overlap,
        ),
        (
            2u16,
            driver::copy(0x1000, DATA, 64, None, false),
            ErrClass::AddressFault,
        ),
    ];
    for (i, (cxt, mut desc, class)) in cases.into_iter().enumerate() {
        let csb = d.drv.csb(&d.ram, 1).expect("csb");
        desc.csb_ptr = Descriptor::csb_field(Some(csb));
        d.submit(cxt, &[desc]);
        d.wait_csb(csb, "failed descriptor's completion");
        assert_eq!(csb_status(&d.ram, csb), (0, true), "{class:?}");
        assert!(
            wait_event(&d.vectors[0], Duration::from_secs(5)) >= 1,
            "vector 0 for {class:?}"
        );
        assert_eq!(d.rd(MMIO_ERR_WRT), i as u64 + 1);
        let mut ent = [0u8; 64];
        d.ram.read_bytes(ERRLOG + i as u64 * 64, &mut ent);
        assert_eq!(u16::from_le_bytes([ent[44], ent[45]]), class as u16);
        assert_eq!(d.drv.state(&d.ram, cxt), Some(CxtState::ErrFn));
        assert!(ErrSts::from(d.rd(MMIO_ERR_STS)).sts());
    }
    // Software consumes the log; the admin context restarts context 1, which works again.
    d.wr(MMIO_ERR_RD, 2);
    d.wr(MMIO_ERR_STS, 1);
    let csb = d.drv.csb(&d.ram, 1).expect("csb");
    let wi = d
        .drv
        .submit(&d.ram, 0, &[driver::cxt_start(1, 1, true, 0, Some(csb))]);
    d.doorbell(0, wi);
    d.wait_csb(csb, "restart");
    let csb = d.drv.csb(&d.ram, 1).expect("csb");
    d.fill(DATA, 4096, 1);
    d.submit(
        1,
        &[driver::copy(DATA, DATA + (1 << 20), 4096, Some(csb), false)],
    );
    d.wait_csb(csb, "copy after restart");
    assert_eq!(csb_status(&d.ram, csb), (0, false));
    let counters = d.finish();
    let errs = metrics(&counters).engine.errors;
    assert_eq!(
        (
            errs.get(ErrClass::Overlap),
            errs.get(ErrClass::AddressFault)
        ),
        (1, 1)
    );
}

#[test]
fn hostile_rings_and_registers_never_crash_the_server() {
    let mut d = Dut::start(&[], 1);
    // Garbage in the whole ring, a write index far ahead, doorbells on every context page.
    let c = d.drv.context(1).expect("cxt");
    let junk: Vec<u8> = (0..64 * 1024u64)
        .map(|i| (i * 2654435761 % 251) as u8)
        .collect();
    d.ram.write_bytes(c.ring, &junk);
    d.ram.write_bytes(c.write_index, &u64::MAX.to_le_bytes());
    for cxt in 0..64u16 {
        d.doorbell(cxt, u64::MAX);
    }
    for off in (0..0x21000u64).step_by(0x108) {
        d.wr(off & !7, 0xffff_ffff_ffff_ffff);
    }
    // Still answering.
    assert_eq!(d.rd(MMIO_VERSION), 0x0001_0000);
    assert!(d.srv.alive());
    d.finish();
}

#[test]
fn reset_in_the_middle_of_work_stops_the_function_and_all_progress() {
    let mut d = Dut::start(&["--workers", "2"], 1);
    let csb = d.drv.csb(&d.ram, 200).expect("csb");
    let descs: Vec<Descriptor> = (0..200u64)
        .map(|i| {
            driver::copy(
                DATA,
                DATA + (16 << 20) + (i % 4) * (2 << 20),
                2 << 20,
                Some(csb),
                false,
            )
        })
        .collect();
    d.submit(1, &descs);
    d.c.reset().expect("DEVICE_RESET");
    assert_eq!(Sts0::from(d.rd(MMIO_STS0)).fn_gsv(), FnState::Stop as u8);
    assert_eq!(d.rd(MMIO_CXT_L2), 0);
    // Whatever completed before the reset completed; nothing runs after it.
    let done = d.drv.read_index(&d.ram, 1);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(d.drv.read_index(&d.ram, 1), done, "no progress after reset");
    d.finish();
}

#[test]
fn no_dma_while_bus_mastering_is_off() {
    let mut d = Dut::start(&[], 1);
    d.c.region_write(CONFIG_REGION, 4, &0x0002u16.to_le_bytes())
        .expect("BME off");
    d.fill(DATA, 4096, 5);
    let csb = d.drv.csb(&d.ram, 1).expect("csb");
    d.submit(
        1,
        &[driver::copy(DATA, DATA + (1 << 20), 4096, Some(csb), false)],
    );
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(
        csb_status(&d.ram, csb),
        (1, false),
        "nothing done without bus mastering"
    );
    assert_eq!(d.drv.read_index(&d.ram, 1), 0);
    // Bus mastering back on: the next doorbell runs the pending work.
    d.c.region_write(CONFIG_REGION, 4, &0x0006u16.to_le_bytes())
        .expect("BME on");
    d.doorbell(1, 1);
    d.wait_csb(csb, "copy after BME");
    assert!(d.same(DATA, DATA + (1 << 20), 4096));
    let counters = d.finish();
    assert!(metrics(&counters).engine.passes_without_bus_master >= 1);
}

#[test]
fn faults_injected_at_run_time_get_the_spec_reaction_and_show_in_counters() {
    let ctl = std::env::temp_dir().join(format!("sdxi-ctl-{}.sock", std::process::id()));
    let cp = ctl.to_string_lossy().into_owned();
    let mut d = Dut::start(&["--control", &cp], 1);
    let s = control(&ctl, r#"{"cmd":"state"}"#);
    assert_eq!(s["state"], "Active");
    assert_eq!(s["registers"]["MMIO_VERSION"], "0x10000");
    // The 2nd data descriptor from now fails as an overlap.
    let r = control(&ctl, r#"{"cmd":"fault","fail_nth":2,"class":"Overlap"}"#);
    assert_eq!(r["faults"]["fail_nth"], 2);
    assert!(control(&ctl, r#"{"cmd":"fault","fail_nth":"x"}"#)["error"]
        .as_str()
        .is_some_and(|e| e.contains("bad fault plan")));
    assert!(control(&ctl, r#"{"cmd":"nope"}"#)["error"]
        .as_str()
        .is_some_and(|e| e.contains("unknown command")));
    d.fill(DATA, 4096, 2);
    let csbs: Vec<u64> = (0..2).map(|_| d.drv.csb(&d.ram, 1).expect("csb")).collect();
    d.submit(
        1,
        &[
            driver::copy(DATA, DATA + (1 << 20), 4096, Some(csbs[0]), false),
            driver::copy(DATA, DATA + (2 << 20), 4096, Some(csbs[1]), false),
        ],
    );
    d.wait_csb(csbs[1], "faulted completion");
    assert_eq!(csb_status(&d.ram, csbs[0]), (0, false));
    assert_eq!(csb_status(&d.ram, csbs[1]), (0, true));
    assert!(
        wait_event(&d.vectors[0], Duration::from_secs(5)) >= 1,
        "vector 0"
    );
    let mut ent = [0u8; 64];
    d.ram.read_bytes(ERRLOG, &mut ent);
    assert_eq!(
        u16::from_le_bytes([ent[44], ent[45]]),
        ErrClass::Overlap as u16
    );
    let c = control(&ctl, r#"{"cmd":"counters"}"#);
    let e = metrics(&c).engine;
    assert_eq!(e.faults_injected, 1);
    assert_eq!(e.errors.get(ErrClass::Overlap), 1);
    d.finish();
    let _ = std::fs::remove_file(&ctl);
}

#[test]
fn faults_given_at_start_apply_from_the_first_descriptor() {
    let mut d = Dut::start(
        &["--faults", r#"{"fail_every":2,"class":"AddressFault"}"#],
        1,
    );
    let csbs: Vec<u64> = (0..4).map(|_| d.drv.csb(&d.ram, 1).expect("csb")).collect();
    let descs: Vec<Descriptor> = csbs.iter().map(|c| driver::nop(Some(*c), false)).collect();
    d.submit(1, &descs[..1]);
    d.wait_csb(csbs[0], "first NOP");
    d.submit(1, &descs[1..2]);
    d.wait_csb(csbs[1], "second NOP");
    assert_eq!(csb_status(&d.ram, csbs[0]), (0, false));
    assert_eq!(
        csb_status(&d.ram, csbs[1]),
        (0, true),
        "every 2nd data descriptor fails"
    );
    let counters = d.finish();
    let e = metrics(&counters).engine;
    assert_eq!(e.faults_injected, 1);
    assert_eq!(e.errors.get(ErrClass::AddressFault), 1);
}

#[test]
fn a_context_stopped_by_an_error_is_restarted_in_place_and_serves_again() {
    let mut d = Dut::start(&["--faults", r#"{"fail_nth":2}"#], 1);
    let csbs: Vec<u64> = (0..3).map(|_| d.drv.csb(&d.ram, 1).expect("csb")).collect();
    d.fill(DATA, 3 * 4096, 5);
    let copy = |i: u64, csb| {
        driver::copy(
            DATA + i * 4096,
            DATA + (8 << 20) + i * 4096,
            4096,
            Some(csb),
            false,
        )
    };
    let descs: Vec<Descriptor> = (0..3).map(|i| copy(i, csbs[i as usize])).collect();
    d.submit(1, &descs);
    d.wait_csb(csbs[1], "the failing copy");
    assert_eq!(csb_status(&d.ram, csbs[1]), (0, true));
    assert_eq!(
        d.drv.state(&d.ram, 1),
        Some(device_sdxi::core::engine::ERROR_STATE)
    );
    assert_eq!(
        csb_status(&d.ram, csbs[2]).0,
        1,
        "nothing after the error runs while the context is stopped"
    );
    let scratch = d.drv.csb(&d.ram, 0).expect("csb");
    driver::restart_context(
        &mut ClientMmio(&mut d.c),
        &d.ram,
        &mut d.drv,
        1,
        scratch,
        Duration::from_secs(10),
    )
    .expect("restart");
    assert_eq!(d.drv.state(&d.ram, 1), Some(CxtState::Run));
    assert_eq!(d.drv.read_index(&d.ram, 1), 0, "re-initialised in place");
    let again = d.drv.csb(&d.ram, 1).expect("csb");
    d.submit(1, &[copy(2, again)]);
    d.wait_csb(again, "copy after the restart");
    assert_eq!(csb_status(&d.ram, again), (0, false));
    assert!(d.same(DATA + 2 * 4096, DATA + (8 << 20) + 2 * 4096, 4096));
    let counters = d.finish();
    assert_eq!(metrics(&counters).engine.faults_injected, 1);
}

#[test]
fn a_bad_fault_plan_is_refused_at_start_naming_it() {
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_sdxi-server"))
        .args([
            "--socket",
            "/nonexistent/x.sock",
            "--faults",
            r#"{"fail_nth":1,"class":"Bogus"}"#,
        ])
        .output()
        .expect("run");
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("Bogus"));
}

#[test]
fn the_trace_file_records_registers_doorbells_descriptors_and_completions_by_name() {
    let trace = std::env::temp_dir().join(format!("sdxi-trace-{}.log", std::process::id()));
    let tp = trace.to_string_lossy().into_owned();
    let mut d = Dut::start(
        &[
            "--trace-file",
            &tp,
            "--trace",
            "mmio,doorbell,descriptor,completion,interrupt",
        ],
        1,
    );
    let csb = d.drv.csb(&d.ram, 1).expect("csb");
    d.submit(
        1,
        &[
            driver::copy(DATA, DATA + (1 << 20), 4096, Some(csb), false),
            driver::intr(0, true),
        ],
    );
    d.wait_csb(csb, "copy");
    d.finish();
    let t = std::fs::read_to_string(&trace).expect("trace written");
    for needle in [
        "MMIO_VERSION",
        "MMIO_CXT_L2",
        "sdxi::doorbell",
        "ADMIN.CXT_START_NM",
        "DMAB.COPY",
        "len=4096",
        "sdxi::completion",
        "sdxi::interrupt",
    ] {
        assert!(t.contains(needle), "{needle} missing from the trace:\n{t}");
    }
    assert!(
        !t.contains("sdxi::errlog"),
        "errlog category was not asked for"
    );
    let _ = std::fs::remove_file(&trace);
}

#[test]
fn an_unknown_trace_category_is_refused_naming_it() {
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_sdxi-server"))
        .args([
            "--socket",
            "/nonexistent/x.sock",
            "--trace-file",
            "/tmp/t.log",
            "--trace",
            "mmio,bogus",
        ])
        .output()
        .expect("run");
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("\"bogus\""),
        "{o:?}"
    );
}

#[test]
fn dropped_interrupts_and_stopped_contexts_through_the_control_socket() {
    let ctl = std::env::temp_dir().join(format!("sdxi-ctl2-{}.sock", std::process::id()));
    let cp = ctl.to_string_lossy().into_owned();
    let mut d = Dut::start(&["--control", &cp], 2);
    // The next interrupt is dropped: the INTR completes but vector 1 stays silent.
    control(&ctl, r#"{"cmd":"fault","drop_interrupt_nth":1}"#);
    let csb = d.drv.csb(&d.ram, 1).expect("csb");
    d.submit(1, &[driver::intr(0, false), driver::nop(Some(csb), true)]);
    d.wait_csb(csb, "after the INTR");
    assert_eq!(
        wait_event(&d.vectors[1], Duration::from_millis(300)),
        0,
        "dropped"
    );
    d.submit(1, &[driver::intr(0, false)]);
    assert!(
        wait_event(&d.vectors[1], Duration::from_secs(5)) >= 1,
        "the next one is delivered"
    );
    // Context 2 stopped by the device: logged, and its work no longer runs.
    let answer = control(&ctl, r#"{"cmd":"stop_context","cxt":2}"#);
    assert_eq!(answer["stopped"], 2, "{answer}");
    assert_eq!(d.drv.state(&d.ram, 2), Some(CxtState::StopFn));
    assert!(control(&ctl, r#"{"cmd":"stop_context","cxt":9}"#)["error"].is_string());
    let csb = d.drv.csb(&d.ram, 1).expect("csb");
    d.submit(2, &[driver::nop(Some(csb), false)]);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(
        csb_status(&d.ram, csb),
        (1, false),
        "stopped context does not run"
    );
    let mut ent = [0u8; 64];
    d.ram.read_bytes(ERRLOG, &mut ent);
    assert_eq!(
        u16::from_le_bytes([ent[44], ent[45]]),
        ErrClass::InvalidContext as u16
    );
    let c = d.finish();
    assert_eq!(metrics(&c).engine.faults_injected, 2);
    let _ = std::fs::remove_file(&ctl);
}

#[test]
fn out_of_order_completion_switched_on_at_run_time_keeps_every_copy_exact() {
    let ctl = std::env::temp_dir().join(format!("sdxi-ctl3-{}.sock", std::process::id()));
    let cp = ctl.to_string_lossy().into_owned();
    let mut d = Dut::start(&["--control", &cp], 1);
    assert_eq!(
        control(&ctl, r#"{"cmd":"out_of_order","on":true}"#)["out_of_order"],
        true
    );
    assert!(control(&ctl, r#"{"cmd":"out_of_order"}"#)["error"]
        .as_str()
        .is_some_and(|e| e.contains("\"on\"")));
    d.fill(DATA, 8 * 4096, 9);
    let csbs: Vec<u64> = (0..8).map(|_| d.drv.csb(&d.ram, 1).expect("csb")).collect();
    let mut descs: Vec<Descriptor> = (0..8u64)
        .map(|i| {
            driver::copy(
                DATA + i * 4096,
                DATA + (8 << 20) + i * 4096,
                4096,
                Some(csbs[i as usize]),
                false,
            )
        })
        .collect();
    descs.push(driver::intr(0, true));
    d.submit(1, &descs);
    for c in &csbs {
        d.wait_csb(*c, "out-of-order copy");
        assert_eq!(csb_status(&d.ram, *c), (0, false));
    }
    assert!(d.same(DATA, DATA + (8 << 20), 8 * 4096));
    assert!(wait_event(&d.vectors[1], Duration::from_secs(5)) >= 1);
    d.finish();
    let _ = std::fs::remove_file(&ctl);
}
