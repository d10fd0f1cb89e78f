//! DMA maps versus doorbells through the real socket: the real `sdxi-server`, a real vfio-user
//! client (QEMU's role) and the direct-mapped doorbell page, which never travels on the socket.
//! A guest rings only after its IOMMU mapping call returned, so every map sent before a
//! doorbell must be visible to the descriptors it runs; and once an unmap is acknowledged no
//! DMA may reach the range.

mod common;
use common::*;
use device_sdxi::driver::{self, csb_status, DriverMemory};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::time::Duration;

/// Fresh IOVAs (up to 32 MiB), below the driver's RAM at [`IOVA`].
const FRESH: u64 = 0xc000_0000;
/// Pages of the second guest file the fresh maps point at.
const FILE_PAGES: u64 = 64;
/// Copies in flight at once, so a pass is usually running while the next map lands.
const IN_FLIGHT: u64 = 24;

fn pattern(i: u64) -> Vec<u8> {
    (0..4096u64)
        .map(|b| ((b * 31 + i * 7) % 251) as u8)
        .collect()
}

#[test]
fn a_fresh_map_then_a_mapped_doorbell_at_once_thousands_of_times_with_unmap_churn() {
    let mut dut = Dut::start(&["--doorbell", "mapped"], 1);
    let page = MappedDoorbellPage::map(&dut.c).expect("the server offers mapped doorbells");
    let file = memfd(FILE_PAGES * 4096 + (16 << 20));
    let csbs: Vec<u64> = (0..FILE_PAGES)
        .map(|_| dut.drv.csb(&dut.ram, 1).expect("csb"))
        .collect();
    let iters = 4000u64;
    let started = std::time::Instant::now();
    let retire = |dut: &mut Dut, j: u64| {
        let csb = csbs[(j % FILE_PAGES) as usize];
        if driver::wait_csb(&dut.ram, csb, Duration::from_secs(10)).is_none() {
            let log = dut.srv.log_text();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            panic!("copy {j} into a fresh map never completed; server log ends:\n{tail:#?}");
        }
        assert!(
            !csb_status(&dut.ram, csb).1,
            "copy {j} into a fresh map failed"
        );
        let mut got = vec![0u8; 4096];
        file.read_exact_at(&mut got, (j % FILE_PAGES) * 4096)
            .expect("pread");
        assert!(got == pattern(j), "copy {j} landed wrong");
        dut.c
            .dma_unmap(FRESH + (j % 1024) * 4096, 4096)
            .expect("DMA_UNMAP");
    };
    for i in 0..iters {
        if i >= IN_FLIGHT {
            retire(&mut dut, i - IN_FLIGHT);
        }
        let src = DATA + (i % FILE_PAGES) * 4096;
        dut.ram.write_bytes(src, &pattern(i));
        let csb = csbs[(i % FILE_PAGES) as usize];
        dut.ram.write_bytes(csb, &1u64.to_le_bytes());
        // IOVAs come back after 1024 iterations, each time over another file page.
        let iova = FRESH + (i % 1024) * 4096;
        dut.c
            .dma_map((i % FILE_PAGES) * 4096, iova, 4096, file.as_raw_fd())
            .expect("DMA_MAP");
        let wi = dut.drv.submit(
            &dut.ram,
            1,
            &[driver::copy(src, iova, 4096, Some(csb), false)],
        );
        page.ring(1, wi);
    }
    for j in iters - IN_FLIGHT..iters {
        retire(&mut dut, j);
    }
    let elapsed = started.elapsed();
    eprintln!(
        "{iters} map + mapped doorbell + copy + unmap rounds in {:.2} s",
        elapsed.as_secs_f64()
    );
    let c = dut.finish();
    let engine = device_sdxi::metrics::SdxiMetrics::from_server_json(&c)
        .expect("the server's counters")
        .engine;
    assert_eq!(engine.errlog_entries, 0, "no error of any class: {c:#}");
    assert_eq!(engine.contexts_stopped, 0, "{c:#}");
    assert_eq!(c["transport"]["dma_maps"], iters + 1);
    eprintln!("server's DMA counters: {}", c["dma"]);
    let t = &c["dma"]["table"];
    assert_eq!(t["peak_file_mappings"], 2, "one mapping per file: {c:#}");
    assert_eq!(t["mmaps"], 2, "{c:#}");
    assert!(t["peak_extents"].as_u64() <= Some(IN_FLIGHT + 2), "{c:#}");
}

#[test]
fn no_dma_reaches_a_range_once_its_unmap_is_acknowledged() {
    let mut dut = Dut::start(&["--doorbell", "mapped"], 1);
    let page = MappedDoorbellPage::map(&dut.c).expect("mapped doorbells");
    const LEN: u64 = 32 << 20;
    let file = memfd(LEN);
    let csb = dut.drv.csb(&dut.ram, 1).expect("csb");
    dut.ram.write_bytes(DATA, &[0x5a; 4096]);
    for round in 0..4u64 {
        dut.ram.write_bytes(csb, &1u64.to_le_bytes());
        dut.c
            .dma_map(0, FRESH, LEN, file.as_raw_fd())
            .expect("DMA_MAP");
        // Many small copies: some run before the unmap, the rest must fault after it.
        let descs: Vec<_> = (0..LEN / 4096)
            .map(|k| {
                let last = k == LEN / 4096 - 1;
                driver::copy(DATA, FRESH + k * 4096, 4096, last.then_some(csb), false)
            })
            .collect();
        let wi = dut.drv.submit(&dut.ram, 1, &descs[..512]);
        page.ring(1, wi);
        std::thread::sleep(Duration::from_micros(200 * round));
        dut.c.dma_unmap(FRESH, LEN).expect("DMA_UNMAP");
        let mut before = vec![0u8; LEN as usize];
        file.read_exact_at(&mut before, 0).expect("pread");
        std::thread::sleep(Duration::from_millis(100));
        let mut after = vec![0u8; LEN as usize];
        file.read_exact_at(&mut after, 0).expect("pread");
        assert!(
            before == after,
            "round {round}: DMA after the unmap was acknowledged"
        );
        // Whatever did not run before the unmap faulted and stopped the context; start over.
        wait_for("the pass to end", Duration::from_secs(10), || {
            let ri = dut.drv.read_index(&dut.ram, 1);
            ri == wi || dut.drv.state(&dut.ram, 1) != Some(device_sdxi::mem::CxtState::Run)
        });
        if dut.drv.state(&dut.ram, 1) != Some(device_sdxi::mem::CxtState::Run) {
            let scratch = dut.drv.alloc(32, 32).expect("scratch");
            driver::restart_context(
                &mut ClientMmio(&mut dut.c),
                &dut.ram,
                &mut dut.drv,
                1,
                scratch,
                Duration::from_secs(10),
            )
            .expect("restart");
        }
    }
    let c = dut.finish();
    assert_eq!(c["transport"]["dma_unmaps"], 4, "{c:#}");
}
