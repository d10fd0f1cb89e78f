//! VM tests of tiering both ways: the built-in `tiering` (a moving hot set over a working set
//! four times the DRAM budget; CHMU hints, promotion and demotion by SDXi) and, ignored by
//! default, the `soak` long run (over a million migrations both ways with faults and a
//! server kill):
//!
//!     cargo test -p harness --test tiering -- --nocapture
//!     cargo test -p harness --test tiering soak -- --ignored --nocapture

mod common;
use common::*;
use guest_agent::spec::EngineKind;
use harness::config::VmConfig;

fn print_checks(r: &harness::RunResult) {
    for c in &r.checks {
        let verdict = if c.passed { "ok  " } else { "FAIL" };
        eprintln!("{verdict} {}: {}", c.name, c.detail);
    }
}

#[test]
fn a_moving_hot_set_under_a_dram_budget_is_promoted_and_demoted_by_sdxi_and_nothing_is_lost() {
    let _vm = serial();
    let (r, out) = run(&VmConfig::default(), "tiering", "tiering");
    print_checks(&r);
    let m = &r.migrate[0];
    let t = m.report.tiering.as_ref().expect("a tiering report");
    // Independently of the scenario's checks: both directions happened, by the engine.
    assert!(
        t.demoted_total > 0 && t.promoted_total > t.demoted_total,
        "{t:?}"
    );
    assert!(t.max_used <= t.dram_budget);
    let demoted_by_sdxi = t
        .demotion_batches
        .iter()
        .filter(|b| b.engine == EngineKind::Sdxi && b.to_node == 1)
        .count();
    assert!(demoted_by_sdxi > 0, "SDXi copied node 0 -> node 1");
    // Every folio that moved was read back by the harness from the node it ended on.
    let h = &m.host_verify;
    assert!(h.demoted > 0, "{h:?}");
    assert_eq!(h.matched, h.folios, "{h:?}");
    assert_eq!(m.report.verify.writes, m.report.verify.counted_writes);
    // The run's directory (one inside `out`) holds the tiering figure.
    let figure = std::fs::read_dir(&out)
        .expect("results")
        .filter_map(Result::ok)
        .any(|d| d.path().join("tiering-migrate.svg").is_file());
    assert!(figure, "the tiering figure");
    std::fs::remove_dir_all(out).ok();
}

#[test]
#[ignore = "long run (20-40 min): cargo test -p harness --test tiering soak -- --ignored"]
fn soak_a_million_migrations_both_ways_with_faults_and_a_server_kill_lose_nothing() {
    let _vm = serial();
    let (r, out) = run(&VmConfig::default(), "soak", "soak");
    print_checks(&r);
    let mut total = 0;
    for m in &r.migrate {
        let rep = &m.report;
        let t = rep.tiering.as_ref().expect("a tiering report");
        total += t.promoted_total + t.demoted_total;
        let fallback: u64 = rep
            .batches
            .iter()
            .map(|b| u64::from(b.fallback_folios))
            .sum();
        eprintln!(
            "run {}: {} promotions, {} demotions, {} batches; {} DMA errors, {} lost interrupts, {} context restarts, {} folios copied by the CPU after a DMA failure; {} writes, {} counted; host read {} folios back, {} matched; engine model {:?}",
            m.name,
            t.promoted_total,
            t.demoted_total,
            rep.batches.len() + t.demotion_batches.len(),
            rep.verify.dma_errors,
            rep.verify.lost_interrupts,
            rep.verify.context_restarts,
            fallback,
            rep.verify.writes,
            rep.verify.counted_writes,
            m.host_verify.folios,
            m.host_verify.matched,
            rep.engine_model
        );
        assert_eq!(rep.verify.copy_mismatches, 0);
        assert_eq!(rep.verify.writes, rep.verify.counted_writes);
        assert_eq!(m.host_verify.matched, m.host_verify.folios);
    }
    assert!(total >= 1_000_000, "{total} migrations");
    assert_eq!(r.teardown.killed.len(), 1, "{:?}", r.teardown);
    assert_nothing_left(std::process::id());
    std::fs::remove_dir_all(out).ok();
}
