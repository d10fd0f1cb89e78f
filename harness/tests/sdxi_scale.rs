//! Long VM run, ignored by default (several minutes on two cores): a guest behind the virtual
//! IOMMU maps much of its memory page by page while 262144 4 KiB folios (1 GiB, 2 GiB nodes)
//! are promoted by the SDXi engine. QEMU sends one DMA_MAP per page the guest maps; the server
//! must take every one (one mapping per guest-RAM file, no fd per map), lose no folio and let no
//! descriptor fault.
//!
//!     cargo test -p harness --test sdxi_scale -- --ignored --nocapture

mod common;
use common::*;
use harness::config::VmConfig;

#[test]
#[ignore = "long run: cargo test -p harness --test sdxi_scale -- --ignored"]
fn a_guest_mapping_its_memory_page_by_page_moves_262144_folios_by_sdxi_and_loses_none() {
    let _vm = serial();
    let scenario = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/scenarios/sdxi-scale.toml"
    );
    let (r, out) = run(&VmConfig::default(), scenario, "sdxi-scale");
    let m = &r.migrate[0];
    assert_eq!(m.host_verify.matched, 262144, "{:?}", m.host_verify);
    assert_eq!(m.report.verify.writes, m.report.verify.counted_writes);
    let fell_back: u64 = m
        .report
        .batches
        .iter()
        .map(|b| u64::from(b.fallback_folios))
        .sum();
    assert_eq!(fell_back, 0, "every folio copied by the engine");
    let c = &r.teardown.counters["sdxi"];
    eprintln!("sdxi-server DMA counters: {}", c["dma"]);
    assert!(
        c["transport"]["dma_maps"].as_u64() >= Some(262144),
        "page-granular maps: {}",
        c["transport"]
    );
    assert_eq!(c["transport"]["dma_map_failures"], 0);
    assert_eq!(c["registers"]["engine"]["errlog_entries"], 0);
    assert!(c["dma"]["table"]["peak_file_mappings"].as_u64() <= Some(4));
    std::fs::remove_dir_all(out).ok();
}
