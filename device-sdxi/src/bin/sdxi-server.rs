//! `sdxi-server`: serves one emulated SDXi function over vfio-user.

use clap::Parser;
use device_sdxi::cli::{self, ServerArgs};
use device_sdxi::device::{config_space, SdxiDevice};
use device_sdxi::function::SdxiConfig;
use std::process::ExitCode;

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
    #[arg(long, default_value_t = 63, value_parser = clap::value_parser!(u16).range(1..=2047))]
    max_cxt: u16,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let cfg = SdxiConfig {
        max_cxt: args.max_cxt,
        ..SdxiConfig::default()
    };
    let result = config_space(&cfg)
        .map_err(anyhow::Error::from)
        .and_then(|space| cli::run(&args.server, SdxiDevice::new(cfg), space));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sdxi-server: {e:#}");
            ExitCode::FAILURE
        }
    }
}
