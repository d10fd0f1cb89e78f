//! `cxl-hmu-server`: serves one emulated CXL memory device with a CHMU over vfio-user.

use anyhow::Context;
use clap::Parser;
use device_cxl_hmu::spec::dvsec::MemRange;
use device_cxl_hmu::spec::layout::ChmuConfig;
use device_cxl_hmu::transport::device::{config_space, HmuDevice};
use device_cxl_hmu::transport::feed::{self, Sink};
use device_cxl_hmu::transport::trace;
use std::process::ExitCode;
use vfio_device::cli::{self, ServerArgs};
use vfio_device::server::PciDevice;

fn parse_u64(s: &str) -> Result<u64, String> {
    let r = match s.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16),
        None => s.parse(),
    };
    r.map_err(|e| format!("{s:?} is not a number: {e}"))
}

#[derive(Debug, Parser)]
#[command(
    name = "cxl-hmu-server",
    version,
    about = "Emulated CXL 3.2 Hotness Monitoring Unit (in a CXL memory device), served to QEMU over vfio-user",
    after_help = cli::qemu_usage(
        "/run/hmu.sock",
        "  --hpa-base/--size must be the guest-physical range of the memory the unit monitors\n  (e.g. the second NUMA node's RAM); they must be 256 MiB aligned.\n\n\
         The access feed (the chmu-tap TCG plugin, built from device-cxl-hmu/plugin) goes next to\n\
         the -device arguments, with this server started with --feed-socket /run/feed.sock:\n\
         \x20 -plugin target/release/libchmu_tap.so,feed=/run/feed.sock,base=0x40000000,size=0x40000000,sample=8,seed=1\n\
         \x20 (base/size as --hpa-base/--size; add clock=insns with -icount for reproducible runs)"
    )
)]
struct Args {
    #[command(flatten)]
    server: ServerArgs,
    /// Guest-physical base of the monitored memory (DVSEC Range 1 Base; 256 MiB aligned).
    #[arg(long, value_parser = parse_u64, default_value = "0x40000000")]
    hpa_base: u64,
    /// Size of the monitored memory in bytes (256 MiB multiple); also the memory device's
    /// volatile capacity (Identify).
    #[arg(long, value_parser = parse_u64, default_value = "0x40000000")]
    size: u64,
    /// Serial number of the memory device (PCIe Device Serial Number; Linux's memdev `serial`).
    #[arg(long, value_parser = parse_u64, default_value_t = device_cxl_hmu::core::cxl_blocks::DEFAULT_SERIAL)]
    serial: u64,
    /// Number of CHMU instances.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(1..=16))]
    instances: u8,
    /// Serve the hotlists only through messages (every read trapped) instead of as page-aligned
    /// areas of the register block the guest maps directly.
    #[arg(long)]
    trapped_hotlist: bool,
    /// Put the hotlists in a window after the 64 KiB register block (CAP3 then points outside
    /// the instance and the block: outside the CXL 3.2 layout; for drivers that map one window).
    #[arg(long, conflicts_with = "trapped_hotlist")]
    hotlist_window: bool,
    /// Replay this trace (lines `GPA R|W TIME`) once the host enables an instance; epochs
    /// follow the trace's times, so the resulting hotlist is reproducible.
    #[arg(long, value_name = "FILE")]
    replay: Option<std::path::PathBuf>,
    /// Accept access feeds (16-byte records, e.g. from the TCG plugin) on this unix socket.
    #[arg(long, value_name = "PATH")]
    feed_socket: Option<std::path::PathBuf>,
    /// Accept access feeds on this inherited, already listening unix socket fd instead.
    #[arg(long, value_name = "N", conflicts_with = "feed_socket")]
    feed_fd: Option<i32>,
    /// Clock of the socket feed's records: `records` (their own time stamps, e.g. guest
    /// instruction counts; the feed's clock ticks end epochs between accesses) or `host`
    /// (records and ticks are stamped on arrival, and epochs also end on the host's clock).
    #[arg(long, value_enum, default_value = "records")]
    clock: Clock,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Clock {
    Records,
    Host,
}

fn main() -> ExitCode {
    let args = Args::parse();
    const ALIGN: u64 = 256 << 20;
    if args.hpa_base % ALIGN != 0 || args.size % ALIGN != 0 || args.size == 0 {
        eprintln!(
            "cxl-hmu-server: --hpa-base {:#x} and --size {:#x} must be non-zero multiples of 256 MiB",
            args.hpa_base, args.size
        );
        return ExitCode::from(2);
    }
    let cfg = ChmuConfig {
        instances: args.instances,
        hotlist_window: args
            .hotlist_window
            .then_some(device_cxl_hmu::spec::regs::CHMU_HOTLIST_WINDOW),
        ..ChmuConfig::default()
    };
    let range = MemRange {
        hpa_base: args.hpa_base,
        size: args.size,
    };
    let device = HmuDevice::new(cfg.clone(), range, !args.trapped_hotlist);
    let sink = Sink {
        state: std::sync::Arc::clone(&device.state),
        range,
        interrupts: device.interrupts(),
        host_clock: None,
    };
    let feed_sink = Sink {
        host_clock: (args.clock == Clock::Host).then(std::time::Instant::now),
        ..sink.clone()
    };
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let feeds = (|| -> anyhow::Result<()> {
        if let Some(t) = &args.replay {
            trace::spawn_trace_replay(t, sink.clone(), std::sync::Arc::clone(&stop))
                .with_context(|| format!("trace {}", t.display()))?;
        }
        if let Some(p) = &args.feed_socket {
            let _ = std::fs::remove_file(p);
            let l = std::os::unix::net::UnixListener::bind(p)
                .with_context(|| format!("feed socket {}", p.display()))?;
            feed::spawn_feed_listener(l, feed_sink.clone())?;
        }
        if let Some(fd) = args.feed_fd {
            // SAFETY: the caller hands over an open listening socket with this number.
            let l = unsafe {
                <std::os::unix::net::UnixListener as std::os::fd::FromRawFd>::from_raw_fd(fd)
            };
            feed::spawn_feed_listener(l, feed_sink.clone())?;
        }
        if args.feed_socket.is_some() || args.feed_fd.is_some() {
            feed::spawn_host_clock(feed_sink.clone(), std::sync::Arc::clone(&stop))?;
        }
        Ok(())
    })();
    if let Err(e) = feeds {
        eprintln!("cxl-hmu-server: {e:#}");
        return ExitCode::from(2);
    }
    let result = config_space(&cfg, range, args.serial)
        .map_err(anyhow::Error::from)
        .and_then(|space| cli::run(&args.server, device, space));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cxl-hmu-server: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    /// clap's own consistency checks (duplicate names, conflicts) that release builds skip.
    #[test]
    fn command_line_definition_is_consistent() {
        <super::Args as clap::CommandFactory>::command().debug_assert();
    }
}
