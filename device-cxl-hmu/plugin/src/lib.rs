//! `chmu-tap`: a QEMU TCG plugin (plugin API version 7, QEMU 11.1) that feeds the emulated
//! CHMU with the guest's memory accesses to the monitored range.
//!
//! # Sampling
//!
//! Every guest memory access has the same chance, `1/sample`, of being counted, whichever
//! instruction made it: loads, stores, each element of a string instruction (`rep movsb`), the
//! kernel's accesses. At translation time every instruction gets a memory callback; on each
//! access the callback decrements its vCPU's countdown ([`sampler`]) and returns. When the
//! countdown runs out the access is sampled: a physical-address lookup, a range check, and a
//! 16-byte record (`device_cxl_hmu::spec::record`: `gpa | write`, weight `sample`, `time` in host
//! nanoseconds since load or guest instructions with `clock=insns`) appended to the vCPU's
//! batch. The next countdown is a geometric gap of mean `sample` drawn from a generator seeded
//! by `seed` and the vCPU index, so samples are a Bernoulli(1/sample) draw of the access stream
//! (no aliasing with a loop's period) and, on a deterministic guest, the same in every run.
//! The record's weight makes the CHMU add `sample` per sampled access: its counts estimate
//! true access counts.
//!
//! Why this design, from what plugin API 7 offers:
//! - a memory callback is the only way to see an access's address; API 7 has no conditional
//!   memory callback (conditional callbacks exist for instruction and block execution, before
//!   the instruction runs, when the address is not known), and inline memory ops can only add
//!   or store an immediate into a scoreboard. So unbiased per-access sampling needs a callback
//!   on every memory instruction whose common path is as short as possible: a per-vCPU
//!   countdown, no shared atomics, no address lookup;
//! - instrumenting a fixed subset of instructions (the tap's earlier design, by a hash of the
//!   instruction address) is cheaper but sees a loop whose accesses come from one instruction
//!   fully or not at all;
//! - rotating that subset needs retranslation: `qemu_plugin_reset` unregisters every callback
//!   and flushes the whole translation cache, so every few milliseconds the guest would
//!   retranslate all its hot code (the kernel's included); and within an epoch a hot site is
//!   still seen in some rotation periods and missed in others (high variance), which hurts
//!   recall at a threshold.
//!
//! Cost: one call per guest memory access (measured with `harness bench-tap`, see the
//! README), plus the sampled accesses' work.
//!
//! A flusher thread sends what every vCPU has batched once a millisecond, followed by a clock
//! tick: it holds every vCPU's batch while it reads the clock, and a vCPU stamps and appends a
//! record under its batch's lock, so every access stamped before the tick is in the stream
//! before it. Ticks end epochs while the guest runs elsewhere (the instruction clock advances
//! without accesses to the monitored range), and the tail of a batch never waits for the next
//! access.
//!
//! Arguments (`-plugin libchmu_tap.so,feed=PATH,base=0x...,size=0x...,sample=N,seed=S`,
//! optionally `clock=insns`, and `llc=BYTES,llc_ways=N` to put a last-level-cache model
//! ([`llc`]) in front of the CHMU: a cache must see every access, so with it every access is
//! looked up (sampling is off) and each miss in the monitored range is sent with weight 1).

pub mod llc;
pub mod sampler;

use device_cxl_hmu::spec::record::{encode_access, encode_tick, RECORD_SIZE};
use sampler::{Sampler, MAX_SAMPLE};
use std::ffi::{c_char, c_int, c_uint, c_void, CStr};
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

/// The API version this plugin is written against (QEMU 11.1 accepts only 7).
#[no_mangle]
pub static qemu_plugin_version: c_int = 7;

#[repr(C)]
#[derive(Debug)]
pub struct QemuPluginTb {
    _private: [u8; 0],
}
#[repr(C)]
#[derive(Debug)]
pub struct QemuPluginInsn {
    _private: [u8; 0],
}
#[repr(C)]
#[derive(Debug)]
pub struct QemuPluginHwaddr {
    _private: [u8; 0],
}

/// `qemu_info_t` (the system-emulation member of its union).
#[repr(C)]
#[derive(Debug)]
pub struct QemuInfo {
    pub target_name: *const c_char,
    pub version_min: c_int,
    pub version_cur: c_int,
    pub system_emulation: bool,
    /// `system.smp_vcpus` and `system.max_vcpus` (system emulation).
    pub smp_vcpus: c_int,
    pub max_vcpus: c_int,
}

/// `struct qemu_plugin_scoreboard` (opaque).
#[repr(C)]
#[derive(Debug)]
pub struct QemuPluginScoreboard {
    _private: [u8; 0],
}

/// `qemu_plugin_u64`: a u64 at `offset` in every vCPU's scoreboard entry (passed by value).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct QemuPluginU64 {
    pub score: *mut QemuPluginScoreboard,
    pub offset: usize,
}

/// `QEMU_PLUGIN_INLINE_ADD_U64`.
const INLINE_ADD_U64: c_int = 0;

type TbTransCb = extern "C" fn(*mut QemuPluginTb, *mut c_void);
type MemCb = extern "C" fn(c_uint, u32, u64, *mut c_void);
type AtExitCb = extern "C" fn(*mut c_void);

extern "C" {
    fn qemu_plugin_register_vcpu_tb_trans_cb(id: u64, cb: TbTransCb, userdata: *mut c_void);
    fn qemu_plugin_tb_n_insns(tb: *const QemuPluginTb) -> usize;
    fn qemu_plugin_tb_get_insn(tb: *const QemuPluginTb, idx: usize) -> *mut QemuPluginInsn;
    fn qemu_plugin_register_vcpu_mem_cb(
        insn: *mut QemuPluginInsn,
        cb: MemCb,
        flags: c_int,
        rw: c_int,
        userdata: *mut c_void,
    );
    fn qemu_plugin_get_hwaddr(meminfo: u32, vaddr: u64) -> *mut QemuPluginHwaddr;
    fn qemu_plugin_hwaddr_phys_addr(h: *const QemuPluginHwaddr) -> u64;
    fn qemu_plugin_mem_is_store(meminfo: u32) -> bool;
    fn qemu_plugin_register_atexit_cb(id: u64, cb: AtExitCb, userdata: *mut c_void);
    fn qemu_plugin_scoreboard_new(element_size: usize) -> *mut QemuPluginScoreboard;
    fn qemu_plugin_register_vcpu_tb_exec_inline_per_vcpu(
        tb: *mut QemuPluginTb,
        op: c_int,
        entry: QemuPluginU64,
        imm: u64,
    );
    fn qemu_plugin_u64_sum(entry: QemuPluginU64) -> u64;
}

/// QEMU_PLUGIN_CB_NO_REGS and QEMU_PLUGIN_MEM_RW.
const CB_NO_REGS: c_int = 0;
const MEM_RW: c_int = 3;
/// Records per vCPU batch (the flusher sends smaller ones within a millisecond).
const BATCH: usize = 1024;

/// Parsed plugin arguments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub feed: String,
    pub base: u64,
    pub size: u64,
    pub sample: u64,
    pub seed: u64,
    /// Stamp records with the guest's executed instruction count (all vCPUs) instead of host
    /// nanoseconds.
    pub insns_clock: bool,
    /// Size of the LLC model in bytes (0: none) and its associativity.
    pub llc_bytes: u64,
    pub llc_ways: u64,
}

fn num(v: &str) -> Option<u64> {
    match v.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None => v.parse().ok(),
    }
}

/// Parses `key=value` arguments; the error names the offending one.
pub fn parse_args<'a>(args: impl IntoIterator<Item = &'a str>) -> Result<Config, String> {
    let mut c = Config {
        feed: String::new(),
        base: 0,
        size: 0,
        sample: 1,
        seed: 0,
        insns_clock: false,
        llc_bytes: 0,
        llc_ways: 16,
    };
    for a in args {
        let (k, v) = a
            .split_once('=')
            .ok_or_else(|| format!("argument {a:?} is not key=value"))?;
        let n = || num(v).ok_or_else(|| format!("{k}={v:?} is not a number"));
        match k {
            "feed" => c.feed = v.to_owned(),
            "base" => c.base = n()?,
            "size" => c.size = n()?,
            "sample" => {
                c.sample = n()?;
                if !(1..=MAX_SAMPLE).contains(&c.sample) {
                    return Err(format!("sample={v}: use 1 to {MAX_SAMPLE}"));
                }
            }
            "seed" => c.seed = n()?,
            "llc" => c.llc_bytes = n()?,
            "llc_ways" => c.llc_ways = n()?.clamp(1, 64),
            "clock" => {
                c.insns_clock = match v {
                    "insns" => true,
                    "host" => false,
                    _ => return Err(format!("clock={v:?}: use insns or host")),
                }
            }
            _ => {
                return Err(format!(
                    "unknown argument {k:?} (feed, base, size, sample, seed, clock, llc, llc_ways)"
                ))
            }
        }
    }
    if c.feed.is_empty() || c.size == 0 {
        return Err("feed=PATH and size=BYTES are required".into());
    }
    if c.llc_bytes != 0 && c.llc_bytes < llc::LINE * c.llc_ways {
        return Err(format!(
            "llc={}: smaller than one set of {} 64-byte lines",
            c.llc_bytes, c.llc_ways
        ));
    }
    Ok(c)
}

struct State {
    cfg: Config,
    /// Executed instructions per vCPU (inline counter), when the clock is instructions.
    insns: Option<QemuPluginU64>,
    out: Mutex<UnixStream>,
    llc: Option<llc::Llc>,
    sampler: Sampler,
    /// Weight of a sampled record (the sampling period; 1 with the LLC model).
    weight: u32,
    start: Instant,
    instrumented: AtomicU64,
    sent: AtomicU64,
    ticks: AtomicU64,
}

static STATE: OnceLock<State> = OnceLock::new();

// SAFETY: the scoreboard pointer is only handed back to QEMU's thread-safe accessors.
unsafe impl Send for State {}
// SAFETY: as above.
unsafe impl Sync for State {}

/// Every vCPU thread's batch of encoded records not yet sent, for the flusher.
static BATCHES: Mutex<Vec<Arc<Mutex<Vec<u8>>>>> = Mutex::new(Vec::new());

thread_local! {
    static MINE: Arc<Mutex<Vec<u8>>> = {
        let b = Arc::new(Mutex::new(Vec::new()));
        lock(&BATCHES).push(Arc::clone(&b));
        start_flusher();
        b
    };
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl State {
    /// The feed's clock now.
    fn now(&self) -> u64 {
        match self.insns {
            // SAFETY: the scoreboard lives for the plugin's life; summing reads every vCPU's
            // entry (the vCPUs exist before the first access, so it is not resized under us).
            Some(e) => unsafe { qemu_plugin_u64_sum(e) },
            None => self.start.elapsed().as_nanos() as u64,
        }
    }

    /// Sends the records in `buf` (then empties it); called with the batch's lock held.
    fn send(&self, buf: &mut Vec<u8>) {
        if buf.is_empty() {
            return;
        }
        if lock(&self.out).write_all(buf).is_ok() {
            self.sent
                .fetch_add((buf.len() / RECORD_SIZE) as u64, Ordering::Relaxed);
        }
        buf.clear();
    }

    /// Sends every vCPU's batch, then a tick at the clock read while all batches were held.
    fn flush_all(&self) {
        let all = lock(&BATCHES);
        let mut held: Vec<MutexGuard<'_, Vec<u8>>> = all.iter().map(|b| lock(b)).collect();
        let now = self.now();
        for b in &mut held {
            self.send(b);
        }
        let _ = lock(&self.out).write_all(&encode_tick(now));
        self.ticks.fetch_add(1, Ordering::Relaxed);
    }
}

/// Starts the flusher thread once (from the first vCPU that sends a record).
fn start_flusher() {
    static STARTED: OnceLock<()> = OnceLock::new();
    STARTED.get_or_init(|| {
        let _ = std::thread::Builder::new()
            .name("chmu-tap-flush".into())
            .spawn(|| loop {
                std::thread::sleep(Duration::from_millis(1));
                if let Some(s) = STATE.get() {
                    s.flush_all();
                }
            });
    });
}

extern "C" fn on_mem(vcpu: c_uint, meminfo: u32, vaddr: u64, _ud: *mut c_void) {
    let Some(s) = STATE.get() else {
        return;
    };
    // The common path: this vCPU's countdown, nothing shared.
    if !s.sampler.pick(vcpu as usize) {
        return;
    }
    // SAFETY: meminfo/vaddr come from QEMU for this access; the hwaddr is valid during the
    // callback only and is not kept.
    let gpa = unsafe {
        let h = qemu_plugin_get_hwaddr(meminfo, vaddr);
        if h.is_null() {
            return;
        }
        qemu_plugin_hwaddr_phys_addr(h)
    };
    // The cache sees every access (node 0 traffic evicts lines too); only misses reach the
    // memory device.
    if s.llc.as_ref().is_some_and(|c| c.access(gpa)) {
        return;
    }
    if gpa.wrapping_sub(s.cfg.base) >= s.cfg.size {
        return;
    }
    // SAFETY: a pure query on the meminfo QEMU passed in.
    let write = unsafe { qemu_plugin_mem_is_store(meminfo) };
    let _ = MINE.try_with(|b| {
        // Stamped under the batch's lock: the flusher's tick cannot pass this record.
        let mut b = lock(b);
        let now = s.now();
        b.extend_from_slice(&encode_access(gpa, write, s.weight, now));
        if b.len() >= BATCH * RECORD_SIZE {
            s.send(&mut b);
        }
    });
}

extern "C" fn on_tb(tb: *mut QemuPluginTb, _ud: *mut c_void) {
    let Some(s) = STATE.get() else {
        return;
    };
    // SAFETY: `tb` is the block QEMU is translating; its instructions are valid during the
    // callback, where they are instrumented.
    unsafe {
        let n = qemu_plugin_tb_n_insns(tb);
        if let Some(e) = s.insns {
            qemu_plugin_register_vcpu_tb_exec_inline_per_vcpu(tb, INLINE_ADD_U64, e, n as u64);
        }
        // Every instruction: QEMU calls back only for those that access memory.
        for i in 0..n {
            let insn = qemu_plugin_tb_get_insn(tb, i);
            if insn.is_null() {
                continue;
            }
            s.instrumented.fetch_add(1, Ordering::Relaxed);
            qemu_plugin_register_vcpu_mem_cb(
                insn,
                on_mem,
                CB_NO_REGS,
                MEM_RW,
                std::ptr::null_mut(),
            );
        }
    }
}

extern "C" fn on_exit(_ud: *mut c_void) {
    if let Some(s) = STATE.get() {
        s.flush_all();
        let insns = s.insns.map(|_| s.now());
        eprintln!("chmu-tap: guest instructions counted: {insns:?}");
        let (accesses, sampled) = s.sampler.totals();
        eprintln!(
            "chmu-tap: instrumented {} instructions, {accesses} accesses, {sampled} sampled (1 in {}), {} records (sampled in range) and {} clock ticks sent",
            s.instrumented.load(Ordering::Relaxed),
            s.sampler.weight(),
            s.sent.load(Ordering::Relaxed),
            s.ticks.load(Ordering::Relaxed)
        );
        if let Some(c) = &s.llc {
            eprintln!(
                "chmu-tap: LLC model {} KiB, {} hits, {} misses",
                c.bytes() >> 10,
                c.hits.load(Ordering::Relaxed),
                c.misses.load(Ordering::Relaxed)
            );
        }
    }
}

/// The plugin entry point.
///
/// # Safety
/// Called by QEMU with `argc` valid C strings in `argv`.
#[no_mangle]
pub unsafe extern "C" fn qemu_plugin_install(
    id: u64,
    info: *const QemuInfo,
    argc: c_int,
    argv: *const *const c_char,
) -> c_int {
    let args: Vec<String> = (0..usize::try_from(argc).unwrap_or(0))
        .map(|i| {
            // SAFETY: QEMU passes argc valid NUL-terminated strings.
            unsafe { CStr::from_ptr(*argv.add(i)) }
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    let cfg = match parse_args(args.iter().map(String::as_str)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("chmu-tap: {e}");
            return -1;
        }
    };
    let out = match UnixStream::connect(&cfg.feed) {
        Ok(o) => o,
        Err(e) => {
            eprintln!(
                "chmu-tap: cannot connect to the CHMU feed {}: {e}",
                cfg.feed
            );
            return -1;
        }
    };
    let insns = cfg.insns_clock.then(|| QemuPluginU64 {
        // SAFETY: allocates a per-vCPU scoreboard of one u64, owned by QEMU for our life.
        score: unsafe { qemu_plugin_scoreboard_new(8) },
        offset: 0,
    });
    let llc = (cfg.llc_bytes > 0)
        .then(|| llc::Llc::new(cfg.llc_bytes, cfg.llc_ways as usize))
        .flatten();
    // SAFETY: QEMU passes a valid qemu_info_t for the duration of this call.
    let vcpus = unsafe { info.as_ref() }
        .filter(|i| i.system_emulation)
        .map_or(1, |i| i.max_vcpus.max(i.smp_vcpus).max(1) as usize);
    // A cache model must see every access: no sampling with it.
    let sample = if llc.is_some() { 1 } else { cfg.sample };
    let sampler = Sampler::new(sample, cfg.seed, vcpus);
    let _ = STATE.set(State {
        insns,
        cfg,
        out: Mutex::new(out),
        llc,
        weight: u32::try_from(sampler.weight()).unwrap_or(1),
        sampler,
        start: Instant::now(),
        instrumented: AtomicU64::new(0),
        sent: AtomicU64::new(0),
        ticks: AtomicU64::new(0),
    });
    // SAFETY: registering our callbacks with the id QEMU gave us.
    unsafe {
        qemu_plugin_register_vcpu_tb_trans_cb(id, on_tb, std::ptr::null_mut());
        qemu_plugin_register_atexit_cb(id, on_exit, std::ptr::null_mut());
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_parse_and_errors_name_the_argument() {
        let c = parse_args([
            "feed=/tmp/f.sock",
            "base=0x40000000",
            "size=1073741824",
            "sample=8",
            "seed=3",
        ])
        .expect("valid");
        assert_eq!(
            (c.base, c.size, c.sample, c.seed),
            (0x4000_0000, 1 << 30, 8, 3)
        );
        assert!(parse_args(["feed=/x", "size=1", "bogus=1"])
            .expect_err("unknown")
            .contains("bogus"));
        assert!(parse_args(["feed=/x", "size=zz"])
            .expect_err("number")
            .contains("size"));
        assert!(parse_args(["base=1"])
            .expect_err("required")
            .contains("required"));
        assert!(
            parse_args(["feed=/x", "size=1", "clock=insns"])
                .expect("valid")
                .insns_clock
        );
        assert!(parse_args(["feed=/x", "size=1", "clock=tsc"])
            .expect_err("clock")
            .contains("tsc"));
        let c = parse_args(["feed=/x", "size=1", "llc=0x800000", "llc_ways=8"]).expect("llc");
        assert_eq!((c.llc_bytes, c.llc_ways), (8 << 20, 8));
        assert!(parse_args(["feed=/x", "size=1", "llc=64"])
            .expect_err("too small")
            .contains("llc=64"));
        for bad in ["sample=0", "sample=4096"] {
            assert!(parse_args(["feed=/x", "size=1", bad])
                .expect_err(bad)
                .contains(bad));
        }
    }
}
