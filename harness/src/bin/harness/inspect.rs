//! `harness inspect` (a running test bed's device state) and `harness bench-tap` (the CHMU
//! plugin's overhead).

use crate::vm_args::VmArgs;
use crate::{print_chain, Ctx, EXIT_INFRA, EXIT_USAGE};
use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Args)]
pub(crate) struct InspectCmd {
    /// Control-socket directory of the test bed (default: the only one running).
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Which device.
    #[arg(long, value_enum, default_value = "sdxi")]
    device: InspectDevice,
    /// What to ask: state or counters.
    #[arg(long, default_value = "state")]
    what: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum InspectDevice {
    Sdxi,
    CxlHmu,
}

impl InspectCmd {
    /// The control-socket directory: `--dir`, else the only running test bed's.
    pub(crate) fn dir(&self) -> Result<PathBuf, ExitCode> {
        if let Some(d) = &self.dir {
            return Ok(d.clone());
        }
        match harness::vm::running_control_dirs().as_slice() {
            [one] => Ok(one.clone()),
            [] => {
                eprintln!(
                    "error: no running test bed of yours found (control sockets in {}/{}.*)",
                    std::env::temp_dir().display(),
                    harness::private_dir::SOCKETS
                );
                Err(ExitCode::from(EXIT_INFRA))
            }
            many => {
                eprintln!("error: several test beds are running; pick one with --dir:");
                for d in many {
                    eprintln!("  {}", d.display());
                }
                Err(ExitCode::from(EXIT_USAGE))
            }
        }
    }

    pub(crate) fn run(&self) -> ExitCode {
        let dir = match self.dir() {
            Ok(d) => d,
            Err(code) => return code,
        };
        let sock = dir.join(match self.device {
            InspectDevice::Sdxi => "sdxi.ctl",
            InspectDevice::CxlHmu => "cxl-hmu.ctl",
        });
        let req = serde_json::json!({ "cmd": self.what });
        match harness::vm::control_request(&sock, &req, std::time::Duration::from_secs(5)) {
            Ok(v) => {
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
                if v.get("error").is_some() {
                    ExitCode::from(EXIT_USAGE)
                } else {
                    ExitCode::SUCCESS
                }
            }
            Err(e) => {
                eprintln!("error: {}: {e}", sock.display());
                ExitCode::from(EXIT_INFRA)
            }
        }
    }
}

#[derive(Debug, Args)]
pub(crate) struct BenchTapCmd {
    #[command(flatten)]
    vm: VmArgs,
    /// Boots per variant.
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Sample one in this many guest memory accesses.
    #[arg(long, default_value_t = 8)]
    sample: u64,
}

impl BenchTapCmd {
    pub(crate) fn run(&self, mut ctx: Ctx) -> ExitCode {
        self.vm.apply(&mut ctx.cfg);
        ctx.cfg.chmu_sample = self.sample;
        let b = match harness::bench_tap(
            &ctx.cfg,
            &self.vm.tools(),
            self.reps,
            ctx.interrupted,
            &mut ctx.rep,
        ) {
            Ok(b) => b,
            Err(e) => {
                print_chain(&e);
                return ExitCode::from(EXIT_INFRA);
            }
        };
        println!(
            "chmu-tap overhead (sample 1/{}): boot to agent, medians of {} boots each",
            b.sample,
            b.boot_off_s.len()
        );
        println!("  tap off {:.2} s {:?}", b.median_off_s, b.boot_off_s);
        println!("  tap on  {:.2} s {:?}", b.median_on_s, b.boot_on_s);
        println!(
            "  ratio {:.2} (target <= 2), feed {:.0} records/s",
            b.ratio, b.records_per_s
        );
        println!(
            "memory-bound loop on node 1 ({} loads by one instruction), guest-timed, medians:",
            b.loop_loads
        );
        println!("  tap off {:.3} s {:?}", b.loop_median_off_s, b.loop_off_s);
        println!("  tap on  {:.3} s {:?}", b.loop_median_on_s, b.loop_on_s);
        println!("  ratio {:.2}", b.loop_ratio);
        println!("  {}", b.plugin_line);
        ExitCode::SUCCESS
    }
}
