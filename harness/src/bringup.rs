//! `harness bringup`: boot the test bed with both devices attached and unclaimed, load the
//! user's kernel modules (built for the guest kernel if asked), run their script or attach
//! an interactive console, and return what the guest reported.

use crate::config::{self, VmConfig};
use crate::provision::{provision, reclaim_leftovers};
use crate::{console, kernel_loop, vm, RunError, ToolPaths};
use images::Progress;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A guest console line starting with this is shown as a progress line while a bring-up
/// script runs (`echo "@@progress TEXT" > /dev/console`).
pub const PROGRESS_MARK: &str = "@@progress ";
/// How often the console is read for progress lines.
const PROGRESS_POLL: Duration = Duration::from_secs(2);

/// Follows the run directory's `console.log` and shows its [`PROGRESS_MARK`] lines.
struct ConsoleProgress {
    path: PathBuf,
    offset: u64,
    partial: Vec<u8>,
}

impl ConsoleProgress {
    fn new(path: PathBuf) -> Self {
        Self {
            path,
            offset: 0,
            partial: Vec::new(),
        }
    }

    /// Reads what the console got since the last call; shows each complete progress line.
    fn poll(&mut self, progress: &mut dyn Progress) {
        use std::io::{Read, Seek, SeekFrom};
        let Ok(mut f) = std::fs::File::open(&self.path) else {
            return;
        };
        if f.seek(SeekFrom::Start(self.offset)).is_err() {
            return;
        }
        let Ok(n) = f.read_to_end(&mut self.partial) else {
            return;
        };
        self.offset += n as u64;
        while let Some(i) = self.partial.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=i).collect();
            let line = String::from_utf8_lossy(&line);
            if let Some(text) = line.trim().strip_prefix(PROGRESS_MARK.trim_end()) {
                progress.step(text.trim());
            }
        }
    }
}

/// Driver bring-up: the user's modules (loaded in order, with parameters) and script, with
/// both devices attached and unclaimed.
#[derive(Clone, Debug, Default)]
pub struct BringupSpec {
    /// Kbuild trees to build for the guest kernel first (their modules load first, in
    /// dependency order); subdirectories are kept, see [`images::kbuild::build_module`].
    pub build: Vec<PathBuf>,
    /// (module file, parameters) in load order; `.ko`, `.ko.xz` or `.ko.zst`.
    pub modules: Vec<(PathBuf, String)>,
    pub script: Option<PathBuf>,
    /// An interactive shell on the guest console instead of a script.
    pub console: bool,
}

/// What happened in a bring-up run (`bringup.json`).
#[derive(Clone, Debug, Serialize)]
pub struct BringupReport {
    /// `ok NAME` or `failed NAME: message`, in load order.
    pub modules: Vec<String>,
    pub exit_code: Option<i32>,
    pub output: String,
    pub teardown: vm::Teardown,
    pub run_dir: PathBuf,
}

impl BringupReport {
    /// The script's exit code, or 1 if a module failed to load, else 0.
    pub fn status(&self) -> i32 {
        if self.modules.iter().any(|m| !m.starts_with("ok ")) {
            return 1;
        }
        self.exit_code.unwrap_or(0)
    }
}

/// Checks what `--module` and `--build-module` name before anything is provisioned or built:
/// each module a file ending in `.ko`, `.ko.xz` or `.ko.zst`, each tree a directory with a
/// `Kbuild` or `Makefile` at its top.
pub fn check_driver_paths(modules: &[(PathBuf, String)], builds: &[PathBuf]) -> Result<(), String> {
    for (m, _) in modules {
        let name = m.to_string_lossy();
        if ![".ko", ".ko.xz", ".ko.zst"]
            .iter()
            .any(|x| name.ends_with(x))
        {
            return Err(format!(
                "--module {name}: not a kernel module (.ko, .ko.xz or .ko.zst)"
            ));
        }
        if !m.is_file() {
            return Err(format!("--module {name}: no such file"));
        }
    }
    for d in builds {
        if !d.is_dir() {
            return Err(format!("--build-module {}: not a directory", d.display()));
        }
        if !d.join("Kbuild").is_file() && !d.join("Makefile").is_file() {
            return Err(format!(
                "--build-module {}: no Kbuild or Makefile at its top",
                d.display()
            ));
        }
    }
    Ok(())
}

/// Boots the test bed in bring-up mode and returns what the guest reported.
pub fn bringup(
    cfg: &VmConfig,
    paths: &ToolPaths,
    spec: &BringupSpec,
    results_dir: Option<&Path>,
    interrupted: Arc<AtomicBool>,
    progress: &mut dyn Progress,
) -> Result<BringupReport, RunError> {
    if cfg.kernel_image.is_some() && !spec.build.is_empty() {
        return Err(config::ConfigError::Invalid(
            "--build-module builds for the provisioned Debian kernel; with --kernel-image build the module yourself and pass --module".into(),
        )
        .into());
    }
    check_driver_paths(&spec.modules, &spec.build).map_err(config::ConfigError::Invalid)?;
    // The kernel under test (`--kernel-image`) and guest files come with the images.
    let (tools, imgs) = provision(cfg, paths, false, progress)?;
    kernel_loop::check_config(
        cfg,
        &imgs,
        &kernel_loop::bringup_needs(cfg),
        "a bring-up boot",
        progress,
    )?;
    let mut all: Vec<(PathBuf, String)> = Vec::new();
    if !spec.build.is_empty() {
        let root = images::kbuild::build_root(&cfg.cache_dir, &imgs.kernel.release, progress)?;
        for dir in &spec.build {
            for ko in images::kbuild::build_module(&root, &imgs.kernel.release, dir, progress)? {
                all.push((ko, String::new()));
            }
        }
    }
    all.extend(spec.modules.iter().cloned());
    let mut mods = Vec::new();
    for (p, params) in &all {
        let name = images::kernel::module_name(p).ok_or_else(|| {
            config::ConfigError::Invalid(format!("--module {}: not a .ko file", p.display()))
        })?;
        let data = images::kernel::read_module(p)?;
        mods.push((name, params.clone(), data));
    }
    let script = match &spec.script {
        Some(p) => Some(std::fs::read(p).map_err(|e| config::ConfigError::Read(p.clone(), e))?),
        None => None,
    };
    let accel = vm::choose_accel(cfg.accel).map_err(RunError::Accel)?;
    reclaim_leftovers(progress);
    let base = results_dir.map_or_else(|| cfg.cache_dir.join("runs"), Path::to_owned);
    let run = vm::RunDir::create(&base).map_err(|e| RunError::Vm(e, base.clone()))?;
    let vm_err = |e| RunError::Vm(e, run.dir.clone());
    let initrd = run.path("initrd-bringup.cpio");
    let mut bytes =
        std::fs::read(&imgs.initramfs).map_err(|e| RunError::Results(imgs.initramfs.clone(), e))?;
    bytes.extend(images::initramfs::bringup_archive(
        &mods,
        script.as_deref(),
        spec.console,
    ));
    vm::private_file(&initrd)
        .and_then(|mut f| std::io::Write::write_all(&mut f, &bytes))
        .map_err(|e| RunError::Results(initrd.clone(), e))?;
    progress.step(&format!(
        "booting for driver bring-up ({} modules, accel {})",
        mods.len(),
        accel.accel
    ));
    let boot = vm::Boot::Bringup {
        initrd,
        console: spec.console,
    };
    let mut vm = vm::Vm::start_with(cfg, &boot, &imgs, &tools, accel.accel, &run, interrupted)
        .map_err(vm_err)?;
    if let Some(con) = vm.take_console() {
        progress.step("guest console attached (Ctrl-] leaves)");
        let ended =
            console::attach(con).map_err(|e| RunError::Results(run.path("console.log"), e))?;
        if ended == console::Ended::Detached {
            vm.kill_child("qemu");
        }
        let teardown = vm
            .finish(Duration::from_secs(cfg.request_timeout_s))
            .map_err(vm_err)?;
        return Ok(BringupReport {
            modules: Vec::new(),
            exit_code: None,
            output: String::new(),
            teardown,
            run_dir: run.dir.clone(),
        });
    }
    let deadline = Instant::now() + Duration::from_secs(cfg.boot_timeout_s + cfg.request_timeout_s);
    let mut shown = ConsoleProgress::new(run.path("console.log"));
    let report = loop {
        // Wakes every few seconds to show the script's progress lines.
        let step = deadline.min(Instant::now() + PROGRESS_POLL);
        match vm.next_message(step, "the bring-up report") {
            Err(vm::VmError::Timeout(..)) if step < deadline => shown.poll(progress),
            r => break r.map_err(vm_err)?,
        }
    };
    shown.poll(progress);
    let (modules, exit_code, output) = match report {
        guest_agent::protocol::AgentMessage::Bringup {
            modules,
            exit_code,
            output,
            ..
        } => (modules, exit_code, output),
        other => {
            return Err(vm_err(vm::VmError::Protocol(format!(
                "expected a bring-up report, got {other:?}"
            ))))
        }
    };
    let teardown = vm
        .finish(Duration::from_secs(cfg.request_timeout_s))
        .map_err(vm_err)?;
    let report = BringupReport {
        modules,
        exit_code,
        output,
        teardown,
        run_dir: run.dir.clone(),
    };
    let path = run.path("bringup.json");
    let json = serde_json::to_vec_pretty(&report)
        .map_err(|e| RunError::Results(path.clone(), e.into()))?;
    std::fs::write(&path, json).map_err(|e| RunError::Results(path.clone(), e))?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Steps(Vec<String>);

    impl Progress for Steps {
        fn step(&mut self, what: &str) {
            self.0.push(what.to_owned());
        }
        fn line(&mut self, _: &str) {}
    }

    #[test]
    fn driver_paths_are_checked_before_anything_is_built() {
        let dir = std::env::temp_dir().join(format!("driver-paths-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let ko = dir.join("my.ko.xz");
        std::fs::write(&ko, b"").expect("write");
        let m = |p: &Path| vec![(p.to_owned(), String::new())];
        assert_eq!(check_driver_paths(&m(&ko), &[]), Ok(()));
        let e = check_driver_paths(&m(&dir.join("my.c")), &[]).expect_err("not a module");
        assert!(e.contains("my.c: not a kernel module"), "{e}");
        let e = check_driver_paths(&m(&dir.join("gone.ko")), &[]).expect_err("missing");
        assert!(e.contains("gone.ko: no such file"), "{e}");
        let e = check_driver_paths(&[], std::slice::from_ref(&dir)).expect_err("no Kbuild");
        assert!(e.contains("no Kbuild or Makefile"), "{e}");
        std::fs::write(dir.join("Kbuild"), b"obj-m := my.o\n").expect("write");
        assert_eq!(check_driver_paths(&[], std::slice::from_ref(&dir)), Ok(()));
        let e = check_driver_paths(&[], std::slice::from_ref(&ko)).expect_err("a file");
        assert!(e.contains("not a directory"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn progress_lines_on_the_console_are_shown_once_each_and_only_when_complete() {
        let path = std::env::temp_dir().join(format!("console-progress-{}", std::process::id()));
        let mut c = ConsoleProgress::new(path.clone());
        let mut steps = Steps::default();
        c.poll(&mut steps);
        assert!(steps.0.is_empty(), "no console yet");
        std::fs::write(
            &path,
            "[   1.0] kernel line\r\n@@progress dmatest polled.4KiB: started\r\n@@progress half",
        )
        .expect("write");
        c.poll(&mut steps);
        assert_eq!(steps.0, ["dmatest polled.4KiB: started"]);
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .expect("open");
        std::io::Write::write_all(&mut f, b" a line\nnot @@progress this\n").expect("append");
        c.poll(&mut steps);
        c.poll(&mut steps);
        assert_eq!(steps.0, ["dmatest polled.4KiB: started", "half a line"]);
        let _ = std::fs::remove_file(&path);
    }
}
