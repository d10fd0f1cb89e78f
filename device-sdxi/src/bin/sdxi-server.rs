//! `sdxi-server`: serves one emulated SDXi function over vfio-user.

use clap::Parser;
use device_sdxi::regs::SdxiConfig;
use device_sdxi::transport::device::{config_space, DeviceOptions, DoorbellMode, SdxiDevice};
use std::process::ExitCode;
use vfio_device::cli::{self, ServerArgs};

#[derive(Debug, Parser)]
#[command(
    name = "sdxi-server",
    version,
    about = "Emulated SNIA SDXi 1.0 DMA engine, served to QEMU over vfio-user",
    after_help = cli::qemu_usage("/run/sdxi.sock", "")
)]
struct Args {
    #[command(flatten)]
    server: ServerArgs,
    /// Highest context ID the function offers (CAP1.max_cxt); context 0 is the admin context.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u16).range(1..=2047))]
    max_cxt: u16,
    /// Doorbell path: `trapped` sends every doorbell through the socket (the default: measured
    /// from inside a TCG guest it completes a NOP in about 7 us, where the mapped page's watcher
    /// thread, competing with the vCPUs for the host's cores, takes hundreds); `mapped` puts BAR2
    /// in guest memory (a store per doorbell, noticed by a watcher thread).
    #[arg(long, value_enum, default_value = "trapped")]
    doorbell: DoorbellMode,
    /// Worker threads running context passes (contexts run in parallel, one pass per context
    /// at a time).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=256))]
    workers: u64,
    /// Threads one large COPY (8 MiB or more) is split over.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=64))]
    copy_threads: u64,
    /// Complete the descriptors between two fences in reverse order, to test drivers'
    /// handling of out-of-order completion.
    #[arg(long)]
    force_out_of_order: bool,
    /// Fault injection from the start, as JSON (also settable at run time through the control
    /// socket): e.g. `{"fail_nth":3,"class":"AddressFault"}` or `{"fail_every":10,"delay_us":50}`.
    /// Classes: InvalidDescriptor, AddressFault, Overlap, InvalidAkey, InvalidContext, RingIndex.
    #[arg(long, value_name = "JSON", value_parser = parse_faults)]
    faults: Option<device_sdxi::core::FaultPlan>,
}

fn parse_faults(s: &str) -> Result<device_sdxi::core::FaultPlan, String> {
    serde_json::from_str(s).map_err(|e| format!("fault plan {s:?}: {e}"))
}

fn main() -> ExitCode {
    let args = Args::parse();
    let cfg = SdxiConfig {
        max_cxt: args.max_cxt,
        ..SdxiConfig::default()
    };
    let result = config_space(&cfg)
        .map_err(anyhow::Error::from)
        .and_then(|space| {
            let opts = DeviceOptions {
                doorbell: args.doorbell,
                workers: args.workers as usize,
                copy_threads: args.copy_threads as usize,
                force_out_of_order: args.force_out_of_order,
            };
            let device = SdxiDevice::new(cfg, &opts);
            if let Some(plan) = args.faults.clone() {
                device.engine.set_faults(plan);
            }
            cli::run(&args.server, device, space)
        });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sdxi-server: {e:#}");
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
