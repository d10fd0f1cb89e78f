//! `sdxi-bench`: measures the SDXi engine against plain memcpy, side by side in one run, and
//! doorbell-to-completion latency through the socket and through the mapped doorbell page.
//!
//! Run it optimised: `cargo run --release -p device-sdxi --bin sdxi-bench`.

use clap::Parser;
use device_sdxi::core::{Engine, EngineOptions, Platform};
use device_sdxi::driver::{self, csb_status, Driver, DriverMemory, Mmio};
use device_sdxi::mem::{AkeyEnt, CstBlk, CxtState, Descriptor};
use device_sdxi::regs::SdxiConfig;
use device_sdxi::regs::{CONTROL_BAR, DOORBELL_BAR};
use device_sdxi::transport::workers::Workers;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};
use vfio_device::dma::{GuestRam, HostMap, MapSpec};
use vfio_device::dma_copy::HostCopy;
use vfio_device::dma_space::DmaSpace;
use vfio_device::testing::ServerProcess;
use zerocopy::IntoBytes;

#[derive(Debug, Parser)]
#[command(
    name = "sdxi-bench",
    about = "SDXi engine throughput vs memcpy, and doorbell latency (socket vs mapped)"
)]
struct Args {
    /// Repetitions of each throughput measurement (the median is reported).
    #[arg(long, default_value_t = 31)]
    reps: usize,
    /// Round trips per latency measurement.
    #[arg(long, default_value_t = 2000)]
    latency_iters: usize,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Run only these rows (comma-separated; default all): copy-2m, copy-4k, two-workers,
    /// doorbell. For profiling one path, e.g. `perf record ... sdxi-bench --rows copy-4k`.
    #[arg(long, value_delimiter = ',', value_enum)]
    rows: Vec<Row>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Row {
    #[value(name = "copy-2m")]
    Copy2m,
    #[value(name = "copy-4k")]
    Copy4k,
    TwoWorkers,
    Doorbell,
}

#[derive(Debug)]
struct NoIrq;
impl Platform for NoIrq {
    fn trigger(&self, _: u16) -> bool {
        true
    }
}

const BASE: u64 = 0x1000_0000;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn percentile(mut v: Vec<f64>, p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 - 1.0) * p) as usize]
}

/// Guest memory the way the server has it: a memfd mapped into a live [`DmaSpace`].
fn guest_space(size: u64) -> (Arc<DmaSpace>, std::fs::File) {
    let file = vfio_device::dma::memfd(c"bench-ram", size).expect("memfd");
    let space = Arc::new(DmaSpace::default());
    space
        .map(&MapSpec {
            iova: BASE,
            size,
            file: &file,
            file_offset: 0,
            writable: true,
        })
        .expect("map");
    (space, file)
}

/// A CST_BLK counting `count` completions, alone in its cache lines: each context's
/// completions then cost its worker no cache-line transfers with the other's (a driver keeps
/// per-channel completion blocks apart the same way).
fn own_line_csb(drv: &mut Driver, ram: &DmaSpace, count: u64) -> u64 {
    let csb = drv.alloc(128, 128).expect("csb");
    let blk = CstBlk {
        signal: count.into(),
        ..CstBlk::default()
    };
    ram.write_bytes(csb, blk.as_bytes());
    csb
}

/// The guest memory as a CPU sees it: a second shared mapping of the same file, so the memcpy
/// baseline copies the very pages the engine copies. (A private buffer is other memory: on
/// the development host the same copy loop ran at 35 GB/s over a fresh `Vec` and at 48 GB/s
/// over guest memory, in one process, back to back.)
struct Cpu {
    map: HostMap,
}

impl Cpu {
    fn new(file: &std::fs::File, size: u64) -> Self {
        let map = HostMap::file(file.as_raw_fd(), size as usize, true).expect("mirror mapping");
        Self { map }
    }

    /// The host address of guest address `addr` (inside the mapping).
    fn at(&self, addr: u64) -> usize {
        self.map.as_ptr() as usize + (addr - BASE) as usize
    }

    /// One-core copy of `count` blocks of `len` bytes from `src` to `dst` with `how`, GB/s.
    fn copy(&self, how: CpuCopy, src: u64, dst: u64, len: usize, count: usize) -> f64 {
        let all = self.shares(src, dst, len, count, 1);
        let t = Instant::now();
        all.copy(how, 0);
        all.bytes() as f64 / t.elapsed().as_secs_f64() / 1e9
    }

    /// `count` blocks of `len` bytes from `src` to `dst`, in `threads` contiguous shares.
    fn shares(&self, src: u64, dst: u64, len: usize, count: usize, threads: usize) -> Shares {
        Shares {
            src: self.at(src),
            dst: self.at(dst),
            len,
            per: count / threads,
            threads,
        }
    }

    /// The copy split over long-lived threads, each taking its share, as the engine's workers
    /// do: per round the threads block until released (the engine's workers block until
    /// kicked), copy, and report back; as with the engine, an untimed round precedes each
    /// timed one. GB/s from release to the last one's end, medians. What the memory system
    /// and the scheduler give a blocking pool of that many threads.
    fn copy_parallel(&self, sh: Shares, reps: usize) -> f64 {
        let barriers = (
            std::sync::Barrier::new(sh.threads + 1),
            std::sync::Barrier::new(sh.threads + 1),
        );
        let mut rates = Vec::with_capacity(reps);
        std::thread::scope(|scope| {
            for k in 0..sh.threads {
                let (go, done) = (&barriers.0, &barriers.1);
                scope.spawn(move || {
                    for _ in 0..2 * reps {
                        go.wait();
                        sh.copy(CpuCopy::Memcpy, k);
                        done.wait();
                    }
                });
            }
            for _ in 0..reps {
                barriers.0.wait();
                barriers.1.wait();
                let t = Instant::now();
                barriers.0.wait();
                barriers.1.wait();
                rates.push(sh.bytes() as f64 / t.elapsed().as_secs_f64() / 1e9);
            }
        });
        median(rates)
    }

    /// The same split over threads that never sleep: this thread copies the first share, and
    /// the other threads spin between rounds instead of blocking. What the memory system
    /// alone gives that many cores, without the wake-ups that a blocking pool (the engine's,
    /// or the one of [`Self::copy_parallel`]) pays every round. GB/s, medians, each timed
    /// round after an untimed one. Needs a core per thread.
    fn copy_spinning(&self, sh: Shares, reps: usize) -> f64 {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let (round, done) = (AtomicUsize::new(0), AtomicUsize::new(0));
        let mut rates = Vec::with_capacity(reps);
        std::thread::scope(|scope| {
            for k in 1..sh.threads {
                let (round, done) = (&round, &done);
                scope.spawn(move || {
                    for r in 1..=2 * reps {
                        while round.load(Ordering::Acquire) < r {
                            std::hint::spin_loop();
                        }
                        sh.copy(CpuCopy::Memcpy, k);
                        done.fetch_add(1, Ordering::AcqRel);
                    }
                });
            }
            for r in 1..=2 * reps {
                let t = Instant::now();
                round.store(r, Ordering::Release);
                sh.copy(CpuCopy::Memcpy, 0);
                while done.load(Ordering::Acquire) < r * (sh.threads - 1) {
                    std::hint::spin_loop();
                }
                if r % 2 == 0 {
                    rates.push(sh.bytes() as f64 / t.elapsed().as_secs_f64() / 1e9);
                }
            }
        });
        median(rates)
    }
}

/// A copy split into contiguous shares, one per thread (host addresses in the mirror mapping).
#[derive(Clone, Copy, Debug)]
struct Shares {
    src: usize,
    dst: usize,
    len: usize,
    /// Blocks per share.
    per: usize,
    threads: usize,
}

impl Shares {
    /// Copies share `k` with `how`.
    fn copy(self, how: CpuCopy, k: usize) {
        for i in k * self.per..(k + 1) * self.per {
            let at = i * self.len;
            // SAFETY: the shares lie inside the mapping (the bench's layout), are disjoint,
            // and source and destination do not overlap; nothing else touches them while a
            // baseline runs.
            unsafe { how.block(self.src + at, self.dst + at, self.len) };
        }
    }

    /// Bytes all the shares copy.
    fn bytes(self) -> usize {
        self.per * self.threads * self.len
    }
}

/// A CPU copy loop the engine is measured against: the C library's memcpy (the rows'
/// targets are against it) and, where the CPU has ERMS, `rep movsb` in the same tight loop.
/// The engine copies runs of small COPYs with `rep movsb` (`vfio-device/src/dma_copy.rs`), so
/// the ratio against that loop shows what the engine adds beyond its choice of instruction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
enum CpuCopy {
    Memcpy,
    RepMovsb,
}

impl CpuCopy {
    /// The loops this CPU has.
    fn available() -> Vec<Self> {
        let mut v = vec![Self::Memcpy];
        if vfio_device::dma_copy::erms() {
            v.push(Self::RepMovsb);
        }
        v
    }

    /// Copies `len` bytes from host address `src` to `dst`.
    ///
    /// # Safety
    /// Both ranges must be mapped, writable at `dst`, and not overlap.
    #[inline(always)]
    unsafe fn block(self, src: usize, dst: usize, len: usize) {
        #[cfg(target_arch = "x86_64")]
        if self == Self::RepMovsb {
            let o = HostCopy {
                src: src as *const u8,
                dst: dst as *mut u8,
                len,
            };
            // SAFETY: the caller's contract; the engine's own copy instruction.
            return unsafe { vfio_device::dma_copy::movsb(o, o) };
        }
        // SAFETY: the caller's contract.
        unsafe { std::ptr::copy_nonoverlapping(src as *const u8, dst as *mut u8, len) };
    }
}

/// One context's batch: `count` COPYs of `len` bytes counted down by one CST_BLK.
struct Batch {
    src: u64,
    dst: u64,
    len: u64,
    count: u64,
}

/// Submits every context's batch (context `c` copies the `c`-th span of the source); returns
/// the CST_BLKs to wait for.
fn submit(drv: &mut Driver, ram: &DmaSpace, b: &Batch, contexts: u16) -> Vec<u64> {
    (1..=contexts)
        .map(|c| {
            let csb = own_line_csb(drv, ram, b.count);
            let base = u64::from(c - 1) * b.len * b.count;
            let descs: Vec<Descriptor> = (0..b.count)
                .map(|i| {
                    let o = base + i * b.len;
                    driver::copy(b.src + o, b.dst + o, b.len, Some(csb), false)
                })
                .collect();
            drv.submit(ram, c, &descs);
            csb
        })
        .collect()
}

/// Engine throughput vs CPU copy loops over the same guest memory, for `count` descriptors of
/// `len` bytes on each of `contexts` contexts, GB/s medians. One context runs its pass on
/// this thread; several run on a pool of as many workers (the server's pool), all at once,
/// and then memcpy is also measured on as many threads, blocking and spinning (`Rate::par`).
/// Each timed run, engine or CPU, follows an untimed run of the same kind, so each starts
/// from the cache state its own kind leaves (not from whatever the other left).
fn throughput(reps: usize, len: u64, count: u64, contexts: u16) -> Rate {
    let span = len * count;
    let n = u64::from(contexts);
    let size = 2 * span * n + (16 << 20);
    let (ram, file) = guest_space(size);
    let cpu = Cpu::new(&file, size);
    let batch = Batch {
        src: BASE + (16 << 20),
        dst: BASE + (16 << 20) + span * n,
        len,
        count,
    };
    let pattern: Vec<u8> = (0..span * n).map(|i| (i % 251) as u8).collect();
    ram.write_bytes(batch.src, &pattern);
    ram.write_bytes(batch.dst, &vec![0u8; (span * n) as usize]);
    let e = Arc::new(Engine::new(
        SdxiConfig::default(),
        NoIrq,
        EngineOptions::default(),
    ));
    e.set_memory(Some(Arc::clone(&ram)));
    let mut drv = Driver::new(&*ram, BASE, 16 << 20).expect("tables");
    drv.add_context(&*ram, 0, 1024, &[AkeyEnt::new(None, 0)], CxtState::Run)
        .expect("admin");
    let entries = u32::try_from(count.next_power_of_two().max(1024)).unwrap_or(4096);
    for c in 1..=contexts {
        drv.add_context(&*ram, c, entries, &[AkeyEnt::new(None, 0)], CxtState::Run)
            .expect("context");
    }
    e.mmio_write(device_sdxi::regs::MMIO_CXT_L2, &drv.l2.to_le_bytes());
    e.mmio_write(device_sdxi::regs::MMIO_CTL0, &3u64.to_le_bytes());
    let (pass, space) = (Arc::clone(&e), Arc::clone(&ram));
    let (done_tx, done) = std::sync::mpsc::channel::<u16>();
    let done_tx = std::sync::Mutex::new(done_tx);
    let workers = (contexts > 1).then(|| {
        Workers::new(usize::from(contexts), usize::from(contexts) + 1, move |c| {
            let kicks = space.pass(|| pass.process(c));
            let _ = done_tx.lock().map(|t| t.send(c));
            kicks
        })
    });
    let mut engine_once = || {
        let csbs = submit(&mut drv, &ram, &batch, contexts);
        let t = Instant::now();
        match &workers {
            None => {
                ram.pass(|| e.process(1));
            }
            Some(w) => {
                (1..=contexts).for_each(|c| w.kick(c));
                // Blocks (no spinning): on two cores this thread must not take a worker's.
                while csbs.iter().any(|c| csb_status(&*ram, *c).0 != 0) {
                    let _ = done.recv_timeout(Duration::from_millis(100));
                }
            }
        }
        let rate = (span * n) as f64 / t.elapsed().as_secs_f64() / 1e9;
        for c in &csbs {
            assert_eq!(
                csb_status(&*ram, *c),
                (0, false),
                "engine completed the batch"
            );
        }
        rate
    };
    let (l, c) = (len as usize, (count * n) as usize);
    let loops = CpuCopy::available();
    let (mut eng, mut mem) = (Vec::new(), vec![Vec::new(); loops.len()]);
    for _ in 0..reps {
        for (how, rates) in loops.iter().zip(&mut mem) {
            cpu.copy(*how, batch.src, batch.dst, l, c);
            rates.push(cpu.copy(*how, batch.src, batch.dst, l, c));
        }
        engine_once();
        eng.push(engine_once());
    }
    let mut out = vec![0u8; (span * n) as usize];
    ram.read_bytes(batch.dst, &mut out);
    assert!(out == pattern, "the engine copied every byte");
    let par = (contexts > 1).then(|| {
        let sh = cpu.shares(batch.src, batch.dst, l, c, usize::from(contexts));
        (cpu.copy_parallel(sh, reps), cpu.copy_spinning(sh, reps))
    });
    let loop_rates: Vec<f64> = mem.into_iter().map(median).collect();
    Rate {
        engine: median(eng),
        memcpy: loop_rates[0],
        movsb: loop_rates.get(1).copied(),
        par,
    }
}

struct ClientMmio<'a> {
    c: &'a mut vfio_user::Client,
    page: Option<*mut u64>,
}

impl Mmio for ClientMmio<'_> {
    fn read64(&mut self, offset: u64) -> u64 {
        let mut b = [0u8; 8];
        let _ = self.c.region_read(u32::from(CONTROL_BAR), offset, &mut b);
        u64::from_le_bytes(b)
    }
    fn write64(&mut self, offset: u64, value: u64) {
        let _ = self
            .c
            .region_write(u32::from(CONTROL_BAR), offset, &value.to_le_bytes());
    }
    fn doorbell(&mut self, cxt: u16, value: u64) {
        match self.page {
            // SAFETY: the page is the server's doorbell BAR mapped here; cxt * 512 u64s is
            // inside it (4 KiB stride, cxt <= max_cxt).
            Some(p) => unsafe { std::ptr::write_volatile(p.add(usize::from(cxt) * 512), value) },
            None => {
                let _ = self.c.region_write(
                    u32::from(DOORBELL_BAR),
                    u64::from(cxt) * 4096,
                    &value.to_le_bytes(),
                );
            }
        }
    }
}

/// Doorbell-to-completion latency (us: median, p99) for one NOP, trapped or mapped.
fn latency(server: &std::path::Path, mode: &str, iters: usize) -> (f64, f64) {
    let srv = ServerProcess::spawn(
        server,
        &["--doorbell", mode, "--max-clients", "1", "--max-cxt", "7"],
    )
    .expect("spawn server");
    let mut c = srv.client().expect("connect");
    let size = 16u64 << 20;
    let file = vfio_device::dma::memfd(c"bench-ram", size).expect("memfd");
    c.dma_map(0, BASE, size, file.as_raw_fd()).expect("map");
    c.region_write(7, 4, &6u16.to_le_bytes())
        .expect("bus master");
    let ram = GuestRam::build(&[MapSpec {
        iova: BASE,
        size,
        file: &file,
        file_offset: 0,
        writable: true,
    }])
    .expect("ram");
    let page = c.region(u32::from(DOORBELL_BAR)).and_then(|r| {
        let fo = r.file_offset.as_ref()?;
        // SAFETY: a shared mapping of the doorbell BAR fd the server sent.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                r.size as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fo.file().as_raw_fd(),
                fo.start() as i64,
            )
        };
        (p != libc::MAP_FAILED).then_some(p.cast::<u64>())
    });
    assert_eq!(
        page.is_some(),
        mode == "mapped",
        "doorbell BAR mappable only in mapped mode"
    );
    let mut mmio = ClientMmio { c: &mut c, page };
    let mut drv = Driver::new(&ram, BASE, 8 << 20).expect("tables");
    driver::init_function(&mut mmio, &ram, &mut drv, None).expect("init");
    driver::start_context(
        &mut mmio,
        &ram,
        &mut drv,
        1,
        4096,
        None,
        Duration::from_secs(5),
    )
    .expect("start");
    let mut lat = Vec::with_capacity(iters);
    for _ in 0..iters {
        let Ok(csb) = drv.csb(&ram, 1) else {
            break;
        };
        let wi = drv.submit(&ram, 1, &[driver::nop(Some(csb), false)]);
        let t = Instant::now();
        mmio.doorbell(1, wi);
        while csb_status(&ram, csb).0 != 0 {
            std::hint::spin_loop();
            assert!(t.elapsed() < Duration::from_secs(5), "completion timed out");
        }
        lat.push(t.elapsed().as_secs_f64() * 1e6);
    }
    drop(c);
    let _ = srv.finish();
    (median(lat.clone()), percentile(lat, 0.99))
}

/// A throughput row, GB/s medians: the engine, the CPU loops on one core, and (several
/// workers) memcpy on as many threads.
#[derive(Clone, Copy, Debug)]
struct Rate {
    engine: f64,
    memcpy: f64,
    /// `rep movsb` (x86-64 with ERMS only).
    movsb: Option<f64>,
    /// memcpy on as many threads as workers: blocking between rounds, and spinning.
    par: Option<(f64, f64)>,
}

impl Rate {
    /// The engine against each one-core CPU loop, as printed; the row's target (against
    /// memcpy) after the first.
    fn versus(&self, target: f64) -> String {
        let e = self.engine;
        let mut s = format!(
            "memcpy {:6.2} GB/s: {:.2} (target >= {target})",
            self.memcpy,
            e / self.memcpy
        );
        if let Some(m) = self.movsb {
            s += &format!("  rep movsb {m:6.2} GB/s: {:.2}", e / m);
        }
        s
    }
}

fn main() {
    let args = Args::parse();
    let want = |r: Row| args.rows.is_empty() || args.rows.contains(&r);
    let row = |r, len, count, cxts| want(r).then(|| throughput(args.reps, len, count, cxts));
    let r2m = row(Row::Copy2m, 2 << 20, 32, 1);
    let r4k = row(Row::Copy4k, 4096, 512, 1);
    let r2w = row(Row::TwoWorkers, 4096, 1024, 2);
    let server = std::env::current_exe()
        .ok()
        .and_then(|p| Some(p.parent()?.join("sdxi-server")))
        .filter(|p| p.is_file());
    let lat = server.filter(|_| want(Row::Doorbell)).map(|s| {
        (
            latency(&s, "trapped", args.latency_iters),
            latency(&s, "mapped", args.latency_iters),
        )
    });
    if args.json {
        let json = to_json(r2m, r4k, r2w, lat);
        println!(
            "{}",
            serde_json::to_string_pretty(&json).unwrap_or_default()
        );
        return;
    }
    println!(
        "SDXi engine vs CPU copy loops over the same pages (medians of {} runs)",
        args.reps
    );
    for (r, what) in [
        (r2m, "2 MiB x 32 descriptors "),
        (r4k, "4 KiB x 512 descriptors"),
    ] {
        if let Some(r) = r {
            println!("  {what}: engine {:6.2} GB/s | {}", r.engine, r.versus(0.9));
        }
    }
    if let Some(r) = r2w {
        let (e, m) = (r.engine, r.memcpy);
        let (p, spin) = r.par.unwrap_or((f64::NAN, f64::NAN));
        println!(
            "  2 workers, 2 contexts x 1024 x 4 KiB: engine {e:6.2} GB/s | one core: {}",
            r.versus(1.7)
        );
        println!("    a blocking pool of 2 memcpy threads, woken like the workers: {p:6.2} GB/s = {:.2} x one core; the engine gets {:.2} of it", p / m, e / p);
        println!("    2 memcpy threads that never sleep (no wake-ups): {spin:6.2} GB/s = {:.2} x one core; the engine gets {:.2} of it", spin / m, e / spin);
    }
    match lat {
        Some(((tm, tp), (mm, mp))) => {
            println!("doorbell to completion, one NOP ({} round trips)", args.latency_iters);
            println!("  trapped (socket): median {tm:7.1} us  p99 {tp:7.1} us");
            println!("  mapped (page)   : median {mm:7.1} us  p99 {mp:7.1} us");
        }
        None if want(Row::Doorbell) => println!("doorbell latency skipped: no sdxi-server next to this binary (cargo build --release first)"),
        None => {}
    }
}

/// The rows run, as JSON (a row not run is null).
fn to_json(
    r2m: Option<Rate>,
    r4k: Option<Rate>,
    r2w: Option<Rate>,
    lat: Option<((f64, f64), (f64, f64))>,
) -> serde_json::Value {
    let one = |r: Rate| {
        serde_json::json!({ "engine_gbs": r.engine, "memcpy_gbs": r.memcpy, "ratio": r.engine / r.memcpy,
        "target": 0.9, "rep_movsb_gbs": r.movsb, "ratio_vs_rep_movsb": r.movsb.map(|m| r.engine / m) })
    };
    serde_json::json!({
        "copy_2mib_x32": r2m.map(one),
        "copy_4kib_x512": r4k.map(one),
        "copy_4kib_x1024_2_workers": r2w.map(|r| {
            let (e, m) = (r.engine, r.memcpy);
            let (p, spin) = r.par.unwrap_or((f64::NAN, f64::NAN));
            serde_json::json!({ "engine_gbs": e, "memcpy_one_core_gbs": m, "ratio": e / m, "target": 1.7,
                "rep_movsb_one_core_gbs": r.movsb, "ratio_vs_rep_movsb": r.movsb.map(|v| e / v),
                "memcpy_two_threads_gbs": p, "two_thread_memcpy_ratio": p / m, "engine_vs_two_thread_memcpy": e / p,
                "memcpy_two_spinning_threads_gbs": spin, "two_spinning_thread_memcpy_ratio": spin / m,
                "engine_vs_two_spinning_thread_memcpy": e / spin })
        }),
        "doorbell_to_completion_us": lat.map(|((tm, tp), (mm, mp))| serde_json::json!({
            "trapped": { "median": tm, "p99": tp }, "mapped": { "median": mm, "p99": mp }
        })),
    })
}
