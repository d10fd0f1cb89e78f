//! `guest-agent`: started by the initramfs `/init`; talks to the harness over a serial port.

use guest_agent::drivers::{probe_chmu, probe_sdxi};
use guest_agent::inventory;
use guest_agent::protocol::{
    decode_autorun, AgentMessage, HostMessage, Inventory, Outcome, Probe, ProbeResult, Reply,
    Request, AUTORUN_PARAM, PROTOCOL_VERSION,
};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::ExitCode;

fn send(out: &mut File, m: &AgentMessage) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(m).map_err(std::io::Error::other)?;
    line.push(b'\n');
    out.write_all(&line)?;
    out.flush()
}

fn probe<T>(
    bdf: Option<&str>,
    f: impl Fn(&str) -> Result<T, guest_agent::drivers::DriverError>,
) -> Option<Probe<T>> {
    let bdf = bdf?;
    Some(Probe {
        bdf: bdf.to_owned(),
        result: match f(bdf) {
            Ok(v) => ProbeResult::Found(v),
            Err(e) => ProbeResult::Failed(format!("{e}: {}", chain(&e))),
        },
    })
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut parts = Vec::new();
    let mut cur = e.source();
    while let Some(s) = cur {
        parts.push(s.to_string());
        cur = s.source();
    }
    parts.join(": ")
}

fn inventory() -> Inventory {
    let sys = Path::new("/sys");
    let pci = inventory::pci_functions(sys);
    let find = |class: u32| pci.iter().find(|f| f.class == class).map(|f| f.bdf.clone());
    let sdxi_bdf = find(device_sdxi::regs::SDXI_CLASS_CODE);
    let chmu_bdf = find(device_cxl_hmu::regs::CXL_MEMDEV_CLASS_CODE);
    let sdxi = probe(sdxi_bdf.as_deref(), probe_sdxi);
    let chmu = probe(chmu_bdf.as_deref(), probe_chmu);
    Inventory {
        kernel_release: read_trim("/proc/sys/kernel/osrelease"),
        cmdline: read_trim("/proc/cmdline"),
        nodes: inventory::numa_nodes(sys),
        memory_tiers: inventory::memory_tiers(sys),
        // Re-read: binding changed the drivers.
        pci: inventory::pci_functions(sys),
        modules: inventory::modules(),
        sdxi,
        chmu,
    }
}

fn sdxi_copy(sizes: &[u64]) -> Outcome {
    let pci = inventory::pci_functions(Path::new("/sys"));
    let Some(f) = pci
        .iter()
        .find(|f| f.class == device_sdxi::regs::SDXI_CLASS_CODE)
    else {
        return Outcome::Error("no SDXi function (class 0x120100)".into());
    };
    match guest_agent::sdxi::copy_test(&f.bdf, sizes) {
        Ok(r) => Outcome::Ok(Reply::SdxiCopy(r)),
        Err(e) => Outcome::Error(format!("{e}: {}", chain(&e))),
    }
}

fn chmu_hot(t: guest_agent::chmu::HotTest) -> Outcome {
    let pci = inventory::pci_functions(Path::new("/sys"));
    let Some(f) = pci
        .iter()
        .find(|f| f.class == device_cxl_hmu::regs::CXL_MEMDEV_CLASS_CODE)
    else {
        return Outcome::Error("no CXL memory device (class 0x050210)".into());
    };
    match guest_agent::chmu::hot_test(&f.bdf, t) {
        Ok(r) => Outcome::Ok(Reply::ChmuHot(r)),
        Err(e) => Outcome::Error(format!("{e}: {}", chain(&e))),
    }
}

/// PCI addresses of the SDXi function and the CXL memory device, when present.
fn device_bdfs() -> (Option<String>, Option<String>) {
    let pci = inventory::pci_functions(Path::new("/sys"));
    let find = |class: u32| pci.iter().find(|f| f.class == class).map(|f| f.bdf.clone());
    (
        find(device_sdxi::regs::SDXI_CLASS_CODE),
        find(device_cxl_hmu::regs::CXL_MEMDEV_CLASS_CODE),
    )
}

/// Runs a migration; the run's memory stays in `retained` until the next request, so the
/// harness can read the promoted folios from guest RAM.
fn migrate(
    spec: guest_agent::spec::MigrateSpec,
    retained: &mut Option<guest_agent::migrate::Retained>,
) -> Outcome {
    let (sdxi, chmu) = device_bdfs();
    let dev = guest_agent::migrate::Devices {
        sdxi: sdxi.as_deref(),
        chmu: chmu.as_deref(),
    };
    match guest_agent::migrate::run(spec, dev) {
        Ok((r, keep)) => {
            *retained = Some(keep);
            Outcome::Ok(Reply::Migrate(Box::new(r)))
        }
        Err(e) => Outcome::Error(format!("{e}: {}", chain(&e))),
    }
}

fn migrate_bench(spec: &guest_agent::spec::BenchSpec) -> Outcome {
    let (sdxi, chmu) = device_bdfs();
    let dev = guest_agent::migrate::Devices {
        sdxi: sdxi.as_deref(),
        chmu: chmu.as_deref(),
    };
    match guest_agent::bench::bench(spec, dev) {
        Ok(r) => Outcome::Ok(Reply::MigrateBench(r)),
        Err(e) => Outcome::Error(format!("{e}: {}", chain(&e))),
    }
}

fn read_trim(p: &str) -> String {
    std::fs::read_to_string(p)
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// Bring-up mode: run /bringup/run.sh (if any), report, exit.
fn bringup(port: &str) -> std::io::Result<()> {
    let mut out = open_port(port)?;
    let modules: Vec<String> = std::fs::read_to_string("/tmp/bringup-modules.log")
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect();
    let (exit_code, output) = if Path::new("/bringup/run.sh").exists() {
        match std::process::Command::new("/bin/sh")
            .args(["-c", "exec 2>&1; /bin/sh /bringup/run.sh"])
            .output()
        {
            Ok(o) => (
                o.status.code(),
                String::from_utf8_lossy(&o.stdout).into_owned(),
            ),
            Err(e) => (None, format!("cannot run the script: {e}")),
        }
    } else {
        (None, String::new())
    };
    send(
        &mut out,
        &AgentMessage::Bringup {
            v: PROTOCOL_VERSION,
            modules,
            exit_code,
            output,
        },
    )
}

/// Opens the harness's serial port (not as a controlling terminal) in raw mode.
fn open_port(port: &str) -> std::io::Result<File> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags_noctty()
        .open(port)?;
    guest_agent::sys::event::raw_mode(&f)?;
    Ok(f)
}

/// Serves one request; true when the agent should stop after answering.
fn handle(
    request: Request,
    retained: &mut Option<guest_agent::migrate::Retained>,
) -> (Outcome, bool) {
    let result = match request {
        Request::Ping => Outcome::Ok(Reply::Pong),
        Request::Inventory => Outcome::Ok(Reply::Inventory(Box::new(inventory()))),
        Request::SdxiCopy { sizes } => sdxi_copy(&sizes),
        Request::ChmuHot {
            hot_pages,
            cold_pages,
            rounds,
            threshold,
            epoch_scale,
            epoch_mult,
            seed,
            reproducible,
            workload,
        } => chmu_hot(guest_agent::chmu::HotTest {
            hot: hot_pages as usize,
            cold: cold_pages as usize,
            rounds: rounds as usize,
            threshold,
            epoch: (epoch_scale, epoch_mult),
            seed,
            reproducible,
            workload,
        }),
        Request::Migrate { spec } => migrate(*spec, retained),
        Request::MigrateBench { spec } => migrate_bench(&spec),
        Request::Autorun => Outcome::Error("autorun is answered by the serving loop".into()),
        Request::Shutdown => return (Outcome::Ok(Reply::ShuttingDown), true),
    };
    (result, false)
}

fn run(port: &str) -> std::io::Result<()> {
    // A request on the kernel command line runs first, before anything from the host can
    // reach the guest (a reproducible run's guest depends on nothing but its inputs).
    let mut retained: Option<guest_agent::migrate::Retained> = None;
    let mut autorun = match decode_autorun(&read_trim("/proc/cmdline")) {
        None => None,
        Some(Err(e)) => Some(Outcome::Error(e)),
        Some(Ok(Request::Shutdown | Request::Autorun)) => Some(Outcome::Error(
            "shutdown and autorun cannot be autorun".into(),
        )),
        Some(Ok(r)) => Some(handle(r, &mut retained).0),
    };
    let f = open_port(port)?;
    let mut out = f.try_clone()?;
    let uptime = read_trim("/proc/uptime")
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    send(
        &mut out,
        &AgentMessage::Hello {
            v: PROTOCOL_VERSION,
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
            kernel_release: read_trim("/proc/sys/kernel/osrelease"),
            uptime_s: uptime,
        },
    )?;
    let mut reader = BufReader::new(f);
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let text = line.trim();
        if text.is_empty() {
            continue;
        }
        // The previous migration's memory is no longer needed.
        retained = None;
        let (id, result, stop) = match serde_json::from_str::<HostMessage>(text) {
            Err(e) => (0, Outcome::Error(format!("bad request: {e}")), false),
            Ok(m) if m.v != PROTOCOL_VERSION => (
                m.id,
                Outcome::Error(format!(
                    "protocol version {} unsupported (agent speaks {PROTOCOL_VERSION})",
                    m.v
                )),
                false,
            ),
            Ok(HostMessage {
                id,
                request: Request::Autorun,
                ..
            }) => (
                id,
                autorun.take().unwrap_or_else(|| {
                    Outcome::Error(format!(
                        "no request on the kernel command line ({AUTORUN_PARAM}), or its reply was taken"
                    ))
                }),
                false,
            ),
            Ok(m) => {
                let (result, stop) = handle(m.request, &mut retained);
                (m.id, result, stop)
            }
        };
        send(
            &mut out,
            &AgentMessage::Response {
                v: PROTOCOL_VERSION,
                id,
                result,
            },
        )?;
        if stop {
            return Ok(());
        }
    }
}

trait NoCtty {
    fn custom_flags_noctty(&mut self) -> &mut Self;
}

impl NoCtty for OpenOptions {
    fn custom_flags_noctty(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.custom_flags(libc::O_NOCTTY)
    }
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let mut port = "/dev/ttyS1".to_owned();
    let mut bringup_mode = false;
    let mut one_request = None;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--port" => port = args.next().unwrap_or(port),
            "--bringup" => bringup_mode = true,
            // One request (its protocol JSON) served here, the outcome printed as JSON: for
            // bring-up scripts that run a scenario's guest part after their own checks.
            "--request" => one_request = args.next(),
            "--help" | "-h" => {
                println!("guest-agent [--port /dev/ttyS1] [--bringup] [--request JSON]: serves the tierbed harness protocol on a serial port (or runs one request and prints its outcome)");
                return ExitCode::SUCCESS;
            }
            other => {
                eprintln!("guest-agent: unknown argument {other:?}");
                return ExitCode::from(2);
            }
        }
    }
    if let Some(r) = one_request {
        return match serde_json::from_str::<Request>(&r) {
            Ok(r) => {
                let (outcome, _) = handle(r, &mut None);
                println!("{}", serde_json::to_string(&outcome).unwrap_or_default());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("guest-agent: --request: {e}");
                ExitCode::from(2)
            }
        };
    }
    let result = if bringup_mode {
        bringup(&port)
    } else {
        run(&port)
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("guest-agent: {port}: {e}");
            ExitCode::FAILURE
        }
    }
}
