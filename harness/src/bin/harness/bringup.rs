//! `harness bringup`: your modules and script (or a console) on a booted test bed.

use crate::vm_args::{OnOff, VmArgs};
use crate::{run_error_exit, Ctx};
use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Args)]
pub(crate) struct BringupCmd {
    #[command(flatten)]
    vm: VmArgs,
    /// A kernel module to load (.ko, .ko.xz, .ko.zst), optionally `PATH:param=value ...`;
    /// repeatable, loaded in the order given.
    #[arg(long = "module", value_name = "PATH[:PARAMS]")]
    modules: Vec<String>,
    /// Build this out-of-tree module tree (a Kbuild directory) for the guest kernel with its
    /// Debian headers and gcc-14 in a private root, then load its modules, dependencies
    /// first (before the --module ones); repeatable. The whole tree is copied with its
    /// subdirectories (build outputs left out) and built at its top, so its Kbuild picks
    /// the subdirectories (e.g. a tree mirroring drivers/dma with `obj-m += sdxi/` at the
    /// top, whose sources include `../dmaengine.h`).
    #[arg(long = "build-module", value_name = "DIR")]
    build_modules: Vec<PathBuf>,
    /// A shell script to run in the guest (busybox sh) after the modules are loaded.
    #[arg(long, value_name = "SCRIPT", conflicts_with = "console")]
    run: Option<PathBuf>,
    /// An interactive shell on the guest console instead of a script (standard input and
    /// output; Ctrl-C goes to the guest, Ctrl-] leaves, `exit` powers the guest off).
    #[arg(long)]
    console: bool,
    /// Put the virtual IOMMU in front of the devices (driver DMA addresses are IOVAs) or not
    /// (guest-physical).
    #[arg(long, value_enum, default_value = "on")]
    iommu: OnOff,
    /// Turn the CHMU's access feed on: the chmu-tap TCG plugin sends the guest's accesses to
    /// node 1 to the CHMU (one in --chmu-sample, seeded by --seed), so your own driver and
    /// workload see a working hotlist.
    #[arg(long)]
    chmu_feed: bool,
    /// Directory for the run directory [default: <cache>/runs].
    #[arg(long, value_name = "DIR")]
    results: Option<PathBuf>,
}

impl BringupCmd {
    pub(crate) fn spec(&self) -> harness::BringupSpec {
        harness::BringupSpec {
            build: self.build_modules.clone(),
            modules: self
                .modules
                .iter()
                .map(|m| harness::dmatest::module_arg(m))
                .collect(),
            script: self.run.clone(),
            console: self.console,
        }
    }

    pub(crate) fn run(&self, mut ctx: Ctx) -> ExitCode {
        self.vm.apply(&mut ctx.cfg);
        ctx.cfg.iommu = self.iommu == OnOff::On;
        ctx.cfg.chmu_feed |= self.chmu_feed;
        let r = match harness::bringup(
            &ctx.cfg,
            &self.vm.tools(),
            &self.spec(),
            self.results.as_deref(),
            ctx.interrupted,
            &mut ctx.rep,
        ) {
            Ok(r) => r,
            Err(e) => return run_error_exit(&e),
        };
        for m in &r.modules {
            eprintln!("module {m}");
        }
        print!("{}", r.output);
        if self.console {
            eprintln!(
                "console session ended; run directory {} (console.log)",
                r.run_dir.display()
            );
        } else {
            eprintln!(
                "script exit code {:?}; run directory {}",
                r.exit_code,
                r.run_dir.display()
            );
        }
        ExitCode::from(u8::try_from(r.status()).unwrap_or(1))
    }
}
