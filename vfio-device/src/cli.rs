//! Command-line plumbing shared by the device server binaries: where to listen (`--socket PATH`
//! or an inherited `--fd N`), where to put counters, the control socket, logging and trace
//! categories, the QEMU arguments a user needs ([`qemu_usage`], printed by `--help`), and a clean
//! exit on SIGINT/SIGTERM (socket removed, counters written).
//!
//! Left out: configuration files and daemonizing; a server runs in the foreground until a
//! signal or `--max-clients`.

use crate::pci::ConfigSpace;
use crate::server::{serve, Backend, Listener, PciDevice};
use anyhow::Context;
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tracing::info;

/// Options every device server takes.
#[derive(Debug, Clone, clap::Args)]
pub struct ServerArgs {
    /// Listen for the vfio-user client (QEMU) on this unix socket path (created; a stale socket
    /// left by a dead server is replaced).
    #[arg(
        long,
        value_name = "PATH",
        conflicts_with = "fd",
        required_unless_present = "fd"
    )]
    pub socket: Option<PathBuf>,
    /// Use an inherited, already listening unix socket with this fd number.
    #[arg(long, value_name = "N")]
    pub fd: Option<RawFd>,
    /// Write the device's counters as JSON to this file at exit (and on SIGUSR1).
    #[arg(long, value_name = "PATH")]
    pub counters: Option<PathBuf>,
    /// Answer JSON-line requests on this unix socket: `{"cmd":"counters"}`, `{"cmd":"state"}`,
    /// and device-specific ones (SDXi: `{"cmd":"fault",...}`).
    #[arg(long, value_name = "PATH")]
    pub control: Option<PathBuf>,
    /// Exit after this many client connections instead of serving forever.
    #[arg(long, value_name = "N")]
    pub max_clients: Option<u64>,
    /// Write a device trace to this file: every MMIO access with its register, doorbells,
    /// descriptors decoded by name and field, completions, interrupts, error-log entries
    /// (CHMU: MMIO, hotlist entries, epochs).
    #[arg(long, value_name = "PATH")]
    pub trace_file: Option<PathBuf>,
    /// Trace categories, comma-separated: mmio, doorbell, descriptor, completion, interrupt,
    /// errlog, hotlist, epoch, or all.
    #[arg(long, value_name = "CATS", default_value = "all")]
    pub trace: String,
    /// Log filter (tracing `EnvFilter` syntax), e.g. `info` or `vfio_device=debug`.
    #[arg(long, value_name = "FILTER", default_value = "info", env = "RUST_LOG")]
    pub log: String,
}

/// Makes the listening socket `fd` the child's fd 3 (what `--fd 3` expects), whatever number
/// it has in the parent.
pub fn pass_listener_as_fd3(cmd: &mut std::process::Command, fd: RawFd) {
    pass_fd(cmd, fd, 3);
}

/// Makes `fd` the child's fd `target` (inherited across exec).
pub fn pass_fd(cmd: &mut std::process::Command, fd: RawFd, target: RawFd) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs between fork and exec and only calls the async-signal-safe
    // dup2/fcntl on `fd`, which is open in the child.
    unsafe {
        cmd.pre_exec(move || {
            if fd == target {
                let flags = libc::fcntl(target, libc::F_GETFD);
                libc::fcntl(target, libc::F_SETFD, flags & !libc::FD_CLOEXEC);
            } else if libc::dup2(fd, target) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// The QEMU arguments a user needs for a device served on `socket` (printed by `--help`).
pub fn qemu_usage(socket: &str, extra: &str) -> String {
    format!(
        "QEMU (>= 10.1, with vfio-user-pci) arguments for this device:\n\
         \x20 -object memory-backend-memfd,id=ram0,size=2G,share=on -machine q35,memory-backend=ram0\n\
         \x20     (guest RAM must be shared: DMA_MAP then carries fds the server maps)\n\
         \x20 -device pcie-root-port,id=rp0,chassis=1\n\
         \x20 -device '{{\"driver\":\"vfio-user-pci\",\"bus\":\"rp0\",\"socket\":{{\"type\":\"unix\",\"path\":\"{socket}\"}}}}'\n\
         \x20 For MSI-X in a guest vfio-pci driver add -device intel-iommu,caching-mode=on before the\n\
         \x20 device and boot the guest with intel_iommu=on.\n{extra}"
    )
}

fn write_counters<D: PciDevice>(backend: &Mutex<Backend<D>>, path: &Path) -> anyhow::Result<()> {
    let json = {
        let b = backend
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        b.counters_json()
    };
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(&json)?)
        .with_context(|| format!("writing counters to {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming {}", tmp.display()))?;
    Ok(())
}

/// Trace categories and the targets that carry them.
pub const TRACE_CATEGORIES: &[&str] = &[
    "mmio",
    "doorbell",
    "descriptor",
    "completion",
    "interrupt",
    "errlog",
    "hotlist",
    "epoch",
];

/// Logs to stderr (`--log`) and, with `--trace-file`, the chosen trace categories to a file.
fn init_logging(args: &ServerArgs) -> anyhow::Result<()> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;
    let stderr = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_filter(tracing_subscriber::EnvFilter::new(&args.log));
    let file = match &args.trace_file {
        None => None,
        Some(p) => {
            let cats: Vec<&str> = if args.trace == "all" {
                TRACE_CATEGORIES.to_vec()
            } else {
                args.trace
                    .split(',')
                    .map(str::trim)
                    .filter(|c| !c.is_empty())
                    .collect()
            };
            if let Some(bad) = cats.iter().find(|c| !TRACE_CATEGORIES.contains(c)) {
                anyhow::bail!(
                    "unknown trace category {bad:?} (one of {})",
                    TRACE_CATEGORIES.join(", ")
                );
            }
            let mut targets = tracing_subscriber::filter::Targets::new();
            for c in cats {
                for dev in ["sdxi", "chmu"] {
                    targets = targets.with_target(format!("{dev}::{c}"), tracing::Level::TRACE);
                }
            }
            let f =
                std::fs::File::create(p).with_context(|| format!("trace file {}", p.display()))?;
            Some(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::sync::Mutex::new(f))
                    .with_ansi(false)
                    .with_filter(targets),
            )
        }
    };
    tracing_subscriber::registry()
        .with(stderr)
        .with(file)
        .init();
    Ok(())
}

/// Answers one control request.
pub fn control_request<D: PciDevice>(backend: &Mutex<Backend<D>>, line: &str) -> serde_json::Value {
    let req: serde_json::Value = match serde_json::from_str(line) {
        Ok(v) => v,
        Err(e) => return serde_json::json!({ "error": format!("not JSON: {e}") }),
    };
    let mut b = backend
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    match req["cmd"].as_str() {
        Some("counters") => b.counters_json(),
        Some(_) => match b.device.control(&req) {
            Ok(v) => v,
            Err(e) => serde_json::json!({ "error": e }),
        },
        None => serde_json::json!({ "error": "missing \"cmd\"" }),
    }
}

fn spawn_control<D: PciDevice + 'static>(
    path: &Path,
    backend: Arc<Mutex<Backend<D>>>,
) -> anyhow::Result<()> {
    use std::io::{BufRead, BufReader, Write};
    let _ = std::fs::remove_file(path);
    let l = std::os::unix::net::UnixListener::bind(path)?;
    std::thread::Builder::new()
        .name("control".into())
        .spawn(move || {
            for conn in l.incoming() {
                let Ok(c) = conn else {
                    continue;
                };
                let Ok(mut w) = c.try_clone() else {
                    continue;
                };
                for line in BufReader::new(c).lines().map_while(Result::ok) {
                    let mut out =
                        serde_json::to_vec(&control_request(&backend, &line)).unwrap_or_default();
                    out.push(b'\n');
                    if w.write_all(&out).is_err() {
                        break;
                    }
                }
            }
        })?;
    Ok(())
}

/// Runs a device server until its listener fails or a signal arrives.
pub fn run<D: PciDevice + 'static>(
    args: &ServerArgs,
    device: D,
    config: ConfigSpace,
) -> anyhow::Result<()> {
    init_logging(args)?;
    let listener = Listener::from_args(args.socket.as_deref(), args.fd)?;
    let socket_path = listener.path().map(Path::to_owned);
    let backend = Arc::new(Mutex::new(Backend::new(device, config)));
    let name = backend
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .device
        .name();
    info!(device = name, socket = ?socket_path, fd = ?args.fd, "listening");

    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGUSR1,
    ])
    .context("installing signal handlers")?;
    {
        let backend = Arc::clone(&backend);
        let counters = args.counters.clone();
        let socket_path = socket_path.clone();
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                for sig in signals.forever() {
                    if let Some(p) = &counters {
                        if let Err(e) = write_counters(&backend, p) {
                            tracing::error!("{e:#}");
                        }
                    }
                    if sig == signal_hook::consts::SIGUSR1 {
                        continue;
                    }
                    if let Some(p) = &socket_path {
                        let _ = std::fs::remove_file(p);
                    }
                    info!(signal = sig, "exiting");
                    std::process::exit(0);
                }
            })
            .context("spawning the signal thread")?;
    }

    if let Some(p) = &args.control {
        spawn_control(p, Arc::clone(&backend))
            .with_context(|| format!("control socket {}", p.display()))?;
    }
    let result = serve(listener, &backend, args.max_clients);
    if let Some(p) = &args.counters {
        write_counters(&backend, p)?;
    }
    if let Some(p) = &socket_path {
        let _ = std::fs::remove_file(p);
    }
    result.context("serving vfio-user clients")
}
