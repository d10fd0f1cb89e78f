//! Commands that prepare or tidy the machine: `provision`, `install`, `clean`, `probe-kvm`.

use crate::vm_args::VmArgs;
use crate::{print_chain, Ctx, EXIT_INFRA, EXIT_PASS, EXIT_TEST_FAILED, EXIT_USAGE};
use clap::Args;
use harness::Progress;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Args)]
pub(crate) struct ProvisionCmd {
    #[command(flatten)]
    vm: VmArgs,
    /// Re-resolve package versions even when cached.
    #[arg(long)]
    refresh: bool,
}

#[derive(Debug, Args)]
pub(crate) struct InstallCmd {
    /// Install prefix (e.g. ~/.local or /usr/local).
    #[arg(long, value_name = "DIR")]
    prefix: PathBuf,
}

impl ProvisionCmd {
    pub(crate) fn run(&self, mut ctx: Ctx) -> ExitCode {
        self.vm.apply(&mut ctx.cfg);
        let cfg = &ctx.cfg;
        let (tools, imgs) =
            match harness::provision(cfg, &self.vm.tools(), self.refresh, &mut ctx.rep) {
                Ok(t) => t,
                Err(e) => {
                    print_chain(&e);
                    return ExitCode::from(if e.is_usage() { EXIT_USAGE } else { EXIT_INFRA });
                }
            };
        ctx.rep.step("provisioned");
        println!(
            "QEMU       {} ({})",
            imgs.qemu.version,
            imgs.qemu.program.display()
        );
        println!(
            "kernel     {} ({} {})",
            imgs.kernel.release, cfg.kernel_package, imgs.kernel.version
        );
        println!("vmlinux    {}", imgs.kernel.vmlinux.display());
        println!(
            "initramfs  {} (busybox {}, modules {})",
            imgs.initramfs.display(),
            imgs.busybox_version,
            imgs.modules.join(" ")
        );
        println!("agent      {}", tools.agent.display());
        println!(
            "servers    {} {}",
            tools.sdxi_server.display(),
            tools.hmu_server.display()
        );
        println!(
            "took {:.1}s, downloaded {:.1} MB",
            imgs.seconds,
            imgs.download_bytes as f64 / 1e6
        );
        ExitCode::SUCCESS
    }
}

impl InstallCmd {
    pub(crate) fn run(&self, mut ctx: Ctx) -> ExitCode {
        // Installed programs are for every user of the machine.
        // SAFETY: umask(2) cannot fail.
        unsafe { libc::umask(0o022) };
        match harness::tools::install(&self.prefix, None, &mut ctx.rep) {
            Ok(files) => {
                for f in &files {
                    println!("{}", f.display());
                }
                println!(
                    "run {}/bin/harness (add {0}/bin to PATH); it needs no source tree or cargo",
                    self.prefix.display()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                print_chain(&e);
                ExitCode::from(match e {
                    harness::tools::ToolsError::NotACheckout => EXIT_USAGE,
                    _ => EXIT_INFRA,
                })
            }
        }
    }
}

pub(crate) fn clean(mut ctx: Ctx) -> ExitCode {
    let r = harness::reclaim_leftovers(&mut ctx.rep);
    println!(
        "removed {} directories of killed runs; {} live runs left alone",
        r.removed.len(),
        r.live.len()
    );
    ExitCode::from(if r.failed.is_empty() {
        EXIT_PASS
    } else {
        EXIT_INFRA
    })
}

pub(crate) fn probe_kvm() -> ExitCode {
    match harness::kvm::probe(std::time::Duration::from_secs(3)) {
        Ok(()) => {
            println!("KVM runs guests here: --accel auto will use it");
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("KVM cannot run guests here ({e}): --accel auto will use TCG");
            ExitCode::from(EXIT_TEST_FAILED)
        }
    }
}
