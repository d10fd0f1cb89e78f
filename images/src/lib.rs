//! Provisioning of the test bed's images without touching the host's packages:
//!
//! - a QEMU >= 10.1 with `vfio-user-pci`: the system's if it has the device, otherwise
//!   Debian trixie-backports' qemu-system-x86 unpacked into a private root and run through
//!   that root's own dynamic loader (the host's glibc is too old for it);
//! - a Debian guest kernel (`linux-image-amd64` from trixie-backports by default), its
//!   uncompressed `vmlinux` and module tree;
//! - or instead a kernel under test: the user's `vmlinux` (with PVH) or bzImage and its
//!   module tree, with no download ([`kconfig`] reads its configuration);
//! - busybox-static, and an initramfs with the guest agent and the modules it needs;
//! - files and tools for the guest ([`guest_files`]): overlay trees and Debian packages with
//!   their libraries, in an archive appended to the initramfs.
//!
//! Everything lives in one cache directory, keyed by package version or content hash,
//! guarded by a lock so two provisioning runs at once are safe, and reused offline.

pub mod apt;
pub mod guest_files;
pub mod initramfs;
pub mod kbuild;
pub mod kconfig;
pub mod kernel;

use fs2::FileExt;
use serde::{Deserialize, Serialize};
use std::collections::hash_map::DefaultHasher;
use std::ffi::OsString;
use std::hash::{Hash, Hasher};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

/// Errors of provisioning; each names the package, file or step that failed.
#[derive(Debug, thiserror::Error)]
pub enum ImagesError {
    #[error("{what} {}", path.display())]
    Io {
        what: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot run {what}")]
    Spawn {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("step '{step}' failed ({status}); last output:\n{tail}")]
    Step {
        step: String,
        status: String,
        tail: String,
    },
    #[error("package {package}: {why}")]
    Package { package: String, why: String },
    #[error("kernel: {0}")]
    Kernel(String),
    #[error("QEMU at {path}: {why}")]
    Qemu { path: PathBuf, why: String },
    #[error("manifest {path}")]
    Manifest {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

impl ImagesError {
    pub fn io(what: &str, path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            what: what.to_owned(),
            path: path.to_owned(),
            source,
        }
    }
}

/// Where provisioning reports what it does.
pub trait Progress {
    /// A new step starts.
    fn step(&mut self, what: &str);
    /// A line of a tool's output (apt's download progress, for example).
    fn line(&mut self, text: &str);
}

/// Progress that goes nowhere.
#[derive(Debug, Default)]
pub struct Silent;

impl Progress for Silent {
    fn step(&mut self, _: &str) {}
    fn line(&mut self, _: &str) {}
}

/// Runs `cmd`, forwarding its output lines to `progress`; on failure the error names `step`
/// and carries the output's last lines.
pub fn run_logged(
    mut cmd: Command,
    step: &str,
    progress: &mut dyn Progress,
) -> Result<(), ImagesError> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| ImagesError::Spawn {
            what: format!("{step} ({:?})", cmd.get_program()),
            source: e,
        })?;
    let stderr = child.stderr.take();
    let err_thread = std::thread::spawn(move || {
        stderr
            .map(|s| {
                BufReader::new(s)
                    .lines()
                    .map_while(Result::ok)
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default()
    });
    let mut tail: Vec<String> = Vec::new();
    if let Some(out) = child.stdout.take() {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            progress.line(&line);
            tail.push(line);
            if tail.len() > 40 {
                tail.remove(0);
            }
        }
    }
    let errs = err_thread.join().unwrap_or_default();
    let status = child.wait().map_err(|e| ImagesError::Spawn {
        what: step.to_owned(),
        source: e,
    })?;
    if status.success() {
        return Ok(());
    }
    tail.extend(errs);
    let keep = tail.len().saturating_sub(20);
    Err(ImagesError::Step {
        step: step.to_owned(),
        status: status.to_string(),
        tail: tail[keep..].join("\n"),
    })
}

/// What to provision.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ImagesConfig {
    pub cache_dir: PathBuf,
    /// Debian package (optionally `/suite`) that selects the guest kernel.
    pub kernel_package: String,
    /// Use this QEMU binary instead of looking for one.
    pub qemu: Option<PathBuf>,
    /// Modules loaded in the guest (dependencies are added).
    pub modules: Vec<String>,
    /// Re-resolve package versions even when the cache has them.
    pub refresh: bool,
    /// A kernel under test (ELF `vmlinux` with PVH, or bzImage) instead of the Debian package.
    pub kernel_image: Option<PathBuf>,
    /// The module tree of `kernel_image` (…/lib/modules/RELEASE); without it every module
    /// the test bed needs must be built in.
    pub modules_dir: Option<PathBuf>,
    /// Overlay trees and packages for the guest.
    pub guest_files: guest_files::GuestFiles,
}

/// Default guest kernel: Debian trixie-backports' generic amd64 kernel (7.3.x).
pub const DEFAULT_KERNEL_PACKAGE: &str = "linux-image-amd64/trixie-backports";

/// Modules loaded when the kernel has them, silently skipped otherwise: configfs (mounted at
/// `/sys/kernel/config` for drivers configured through it).
pub const OPTIONAL_MODULES: &[&str] = &["configfs"];

/// Modules the guest agent needs: vfio-pci behind the virtual IOMMU, uio for the simple path.
pub fn default_modules() -> Vec<String> {
    [
        "vfio",
        "vfio_iommu_type1",
        "vfio_pci",
        "uio",
        "uio_pci_generic",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect()
}

/// The default cache directory: `$TIERBED_CACHE`, else `$XDG_CACHE_HOME/tierbed`, else
/// `~/.cache/tierbed`.
pub fn default_cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("TIERBED_CACHE") {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(d).join("tierbed");
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from);
    home.join(".cache/tierbed")
}

impl Default for ImagesConfig {
    fn default() -> Self {
        Self {
            cache_dir: default_cache_dir(),
            kernel_package: DEFAULT_KERNEL_PACKAGE.to_owned(),
            qemu: None,
            modules: default_modules(),
            refresh: false,
            kernel_image: None,
            modules_dir: None,
            guest_files: guest_files::GuestFiles::default(),
        }
    }
}

/// How to run QEMU.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Qemu {
    /// What to execute (the binary, or the private root's dynamic loader).
    pub program: PathBuf,
    /// Arguments that come before QEMU's own (loader arguments, the binary, `-L` dirs).
    pub prefix_args: Vec<OsString>,
    /// The private root, when QEMU comes from one.
    pub root: Option<PathBuf>,
    /// `qemu-system-x86_64 --version`'s first line.
    pub version: String,
}

impl Qemu {
    /// A command with QEMU's prefix arguments applied.
    pub fn command(&self) -> Command {
        let mut c = Command::new(&self.program);
        c.args(&self.prefix_args);
        if let Some(r) = &self.root {
            c.env("QEMU_MODULE_DIR", r.join("usr/lib/x86_64-linux-gnu/qemu"));
        }
        c
    }

    /// A QEMU run from a private root through that root's loader.
    pub fn from_root(root: &Path) -> Self {
        let lib = root.join("usr/lib/x86_64-linux-gnu");
        Self {
            program: lib.join("ld-linux-x86-64.so.2"),
            prefix_args: vec![
                "--library-path".into(),
                lib.into_os_string(),
                root.join("usr/bin/qemu-system-x86_64").into_os_string(),
                "-L".into(),
                root.join("usr/share/qemu").into_os_string(),
                "-L".into(),
                root.join("usr/share/seabios").into_os_string(),
            ],
            root: Some(root.to_owned()),
            version: String::new(),
        }
    }

    /// Runs `--version` and `-device help`: fails unless `vfio-user-pci` is there.
    pub fn probe(mut self) -> Result<Self, ImagesError> {
        let path = self.program.clone();
        let run = |args: &[&str]| -> Result<String, ImagesError> {
            let out = self
                .command()
                .args(args)
                .stdin(Stdio::null())
                .output()
                .map_err(|e| ImagesError::Qemu {
                    path: path.clone(),
                    why: format!("cannot run: {e}"),
                })?;
            if !out.status.success() {
                return Err(ImagesError::Qemu {
                    path: path.clone(),
                    why: format!(
                        "{args:?} failed: {}",
                        String::from_utf8_lossy(&out.stderr).trim()
                    ),
                });
            }
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        };
        let version = run(&["--version"])?
            .lines()
            .next()
            .unwrap_or_default()
            .to_owned();
        let devices = run(&["-device", "help"])?;
        if !devices.contains("\"vfio-user-pci\"") {
            return Err(ImagesError::Qemu {
                path,
                why: format!("{version} has no vfio-user-pci device (QEMU >= 10.1 needed)"),
            });
        }
        self.version = version;
        Ok(self)
    }
}

/// The guest kernel.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Kernel {
    /// The Debian package spec it was chosen by.
    pub package: String,
    /// Debian version of the image package.
    pub version: String,
    /// `uname -r` of the kernel.
    pub release: String,
    pub vmlinux: PathBuf,
    pub modules_dir: PathBuf,
    /// Bytes downloaded when it was provisioned.
    pub download_bytes: u64,
    /// The user's own kernel (`--kernel-image`), not a Debian package.
    #[serde(default)]
    pub user: bool,
}

/// Everything a VM boot needs.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Images {
    pub qemu: Qemu,
    pub kernel: Kernel,
    pub busybox_version: String,
    /// The busybox-static binary (for building other initramfs variants).
    pub busybox: PathBuf,
    pub initramfs: PathBuf,
    /// Modules in the initramfs, in load order.
    pub modules: Vec<String>,
    /// Seconds this provisioning took and bytes it downloaded (0 when all was cached).
    pub seconds: f64,
    pub download_bytes: u64,
    /// `name=version` of the packages unpacked into the guest.
    pub guest_packages: Vec<String>,
}

fn read_manifest<T: for<'de> Deserialize<'de>>(p: &Path) -> Option<T> {
    let text = std::fs::read(p).ok()?;
    serde_json::from_slice(&text).ok()
}

fn write_manifest<T: Serialize>(p: &Path, v: &T) -> Result<(), ImagesError> {
    let tmp = p.with_extension("tmp");
    let bytes = serde_json::to_vec_pretty(v).map_err(|source| ImagesError::Manifest {
        path: p.to_owned(),
        source,
    })?;
    std::fs::write(&tmp, bytes).map_err(|e| ImagesError::io("writing", &tmp, e))?;
    std::fs::rename(&tmp, p).map_err(|e| ImagesError::io("renaming", &tmp, e))
}

pub(crate) fn mkdir(p: &Path) -> Result<(), ImagesError> {
    std::fs::create_dir_all(p).map_err(|e| ImagesError::io("creating", p, e))
}

fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._+-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn file_size(paths: &[PathBuf]) -> u64 {
    paths
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum()
}

/// Extracts `debs` into a fresh `root`, atomically (a half-extracted root is never used).
fn extract_root(
    debs: &[PathBuf],
    root: &Path,
    progress: &mut dyn Progress,
) -> Result<(), ImagesError> {
    let tmp = root.with_extension("partial");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| ImagesError::io("removing", &tmp, e))?;
    }
    mkdir(&tmp)?;
    for (i, d) in debs.iter().enumerate() {
        if i % 10 == 0 {
            progress.line(&format!("unpacking {}/{}", i + 1, debs.len()));
        }
        apt::extract(d, &tmp)?;
    }
    if root.exists() {
        std::fs::remove_dir_all(root).map_err(|e| ImagesError::io("removing", root, e))?;
    }
    std::fs::rename(&tmp, root).map_err(|e| ImagesError::io("renaming", &tmp, e))
}

/// Finds a system QEMU with `vfio-user-pci`, if any.
fn system_qemu() -> Option<Qemu> {
    let path = std::env::var_os("PATH")?;
    let bin = std::env::split_paths(&path)
        .map(|d| d.join("qemu-system-x86_64"))
        .find(|p| p.is_file())?;
    Qemu {
        program: bin,
        prefix_args: Vec::new(),
        root: None,
        version: String::new(),
    }
    .probe()
    .ok()
}

/// Provisioning state for one run.
#[derive(Debug)]
struct Run<'a> {
    cfg: &'a ImagesConfig,
    apt: Option<apt::Apt>,
    downloaded: u64,
}

impl Run<'_> {
    fn apt(&mut self, progress: &mut dyn Progress) -> Result<&mut apt::Apt, ImagesError> {
        if self.apt.is_none() {
            let mut a = apt::Apt::new(&self.cfg.cache_dir.join("apt"))?;
            a.update(progress)?;
            self.apt = Some(a);
        }
        self.apt
            .as_mut()
            .ok_or_else(|| ImagesError::Kernel("apt state missing".into()))
    }

    fn qemu(&mut self, progress: &mut dyn Progress) -> Result<Qemu, ImagesError> {
        if let Some(p) = &self.cfg.qemu {
            progress.step(&format!("checking QEMU {}", p.display()));
            return Qemu {
                program: p.clone(),
                prefix_args: Vec::new(),
                root: None,
                version: String::new(),
            }
            .probe();
        }
        if let Some(q) = system_qemu() {
            progress.step(&format!("using the system's {}", q.version));
            return Ok(q);
        }
        let dir = self.cfg.cache_dir.join("qemu");
        let manifest = dir.join("qemu.json");
        if !self.cfg.refresh {
            if let Some(q) = read_manifest::<Qemu>(&manifest) {
                if let Ok(q) = Qemu::from_root(q.root.as_deref().unwrap_or(&dir)).probe() {
                    progress.step(&format!("QEMU cached: {}", q.version));
                    return Ok(q);
                }
            }
        }
        progress.step("installing QEMU 11.x (trixie-backports) into a private root");
        let specs: Vec<String> = [
            "qemu-system-x86",
            "qemu-system-common",
            "qemu-system-data",
            "seabios",
        ]
        .iter()
        .map(|p| format!("{p}/trixie-backports"))
        .collect();
        let apt = self.apt(progress)?;
        let debs = apt.download_closure(&specs, progress)?;
        let version = debs
            .iter()
            .filter_map(|d| d.file_name()?.to_str())
            .find(|f| f.starts_with("qemu-system-x86_"))
            .and_then(|f| f.split('_').nth(1))
            .unwrap_or("unknown")
            .replace("%3a", ":");
        self.downloaded += file_size(&debs);
        let root = dir.join(sanitize(&version));
        mkdir(&dir)?;
        extract_root(&debs, &root, progress)?;
        // The i386 and microvm binaries and docs are not needed.
        for extra in ["usr/bin/qemu-system-i386", "usr/share/doc"] {
            let p = root.join(extra);
            let _ = if p.is_dir() {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            };
        }
        let q = Qemu::from_root(&root).probe()?;
        write_manifest(&manifest, &q)?;
        Ok(q)
    }

    fn kernel(&mut self, progress: &mut dyn Progress) -> Result<Kernel, ImagesError> {
        if let Some(image) = &self.cfg.kernel_image {
            return user_kernel(image, self.cfg.modules_dir.as_deref(), progress);
        }
        let dir = self.cfg.cache_dir.join("kernel");
        let manifest = dir.join(format!("{}.json", sanitize(&self.cfg.kernel_package)));
        if !self.cfg.refresh {
            if let Some(k) = read_manifest::<Kernel>(&manifest) {
                if k.vmlinux.is_file() && k.modules_dir.is_dir() {
                    progress.step(&format!("kernel cached: {} ({})", k.release, k.version));
                    return Ok(Kernel {
                        download_bytes: 0,
                        ..k
                    });
                }
            }
        }
        progress.step(&format!("resolving kernel {}", self.cfg.kernel_package));
        let spec = self.cfg.kernel_package.clone();
        let apt = self.apt(progress)?;
        let top = apt.show(&spec)?;
        let pkgs = apt.closure_by_prefix(
            &spec,
            &[
                "linux-image-",
                "linux-binary-",
                "linux-modules-",
                "linux-base-",
            ],
        )?;
        let pkgs: Vec<(String, String)> = pkgs.into_iter().collect();
        progress.step(&format!(
            "downloading kernel {} ({} packages)",
            top.version,
            pkgs.len()
        ));
        let debs = apt.download_exact(&pkgs, progress)?;
        let bytes = file_size(&debs);
        self.downloaded += bytes;
        let root = dir.join(format!("{}.root", sanitize(&top.version)));
        mkdir(&dir)?;
        progress.step("unpacking the kernel");
        extract_root(&debs, &root, progress)?;
        let (release, modules_dir) = ["usr/lib/modules", "lib/modules"]
            .iter()
            .map(|d| root.join(d))
            .filter_map(|d| std::fs::read_dir(&d).ok())
            .flat_map(|rd| rd.filter_map(Result::ok))
            .find(|e| e.path().join("kernel").is_dir())
            .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
            .ok_or_else(|| ImagesError::Kernel(format!("no module tree in {}", root.display())))?;
        let vmlinuz = [
            modules_dir.join("vmlinuz"),
            root.join(format!("boot/vmlinuz-{release}")),
        ]
        .into_iter()
        .find(|p| p.is_file())
        .ok_or_else(|| {
            ImagesError::Kernel(format!("no vmlinuz for {release} in {}", root.display()))
        })?;
        progress.step("extracting the uncompressed vmlinux (PVH boot)");
        let bz = std::fs::read(&vmlinuz).map_err(|e| ImagesError::io("reading", &vmlinuz, e))?;
        let elf = kernel::extract_vmlinux(&bz)?;
        let vmlinux = dir.join(format!("vmlinux-{release}"));
        std::fs::write(&vmlinux, elf).map_err(|e| ImagesError::io("writing", &vmlinux, e))?;
        let k = Kernel {
            package: spec,
            version: top.version,
            release,
            vmlinux,
            modules_dir,
            download_bytes: bytes,
            user: false,
        };
        write_manifest(&manifest, &k)?;
        Ok(k)
    }

    fn busybox(&mut self, progress: &mut dyn Progress) -> Result<(String, PathBuf), ImagesError> {
        let dir = self.cfg.cache_dir.join("busybox");
        let manifest = dir.join("busybox.json");
        if !self.cfg.refresh {
            if let Some((v, p)) = read_manifest::<(String, PathBuf)>(&manifest) {
                if p.is_file() {
                    return Ok((v, p));
                }
            }
        }
        progress.step("downloading busybox-static (trixie)");
        let apt = self.apt(progress)?;
        let info = apt.show("busybox-static/trixie")?;
        let debs = apt.download_exact(&[(info.name.clone(), info.version.clone())], progress)?;
        self.downloaded += file_size(&debs);
        let root = dir.join(format!("{}.root", sanitize(&info.version)));
        mkdir(&dir)?;
        extract_root(&debs, &root, progress)?;
        let bin = ["usr/bin/busybox", "bin/busybox"]
            .iter()
            .map(|p| root.join(p))
            .find(|p| p.is_file())
            .ok_or_else(|| ImagesError::Package {
                package: "busybox-static".into(),
                why: "no busybox binary in the package".into(),
            })?;
        write_manifest(&manifest, &(info.version.clone(), bin.clone()))?;
        Ok((info.version, bin))
    }
}

/// A kernel under test: `image` (an ELF `vmlinux` with the PVH note, or a bzImage) and its
/// module tree. Its release is the module tree's name, else the image's own banner.
fn user_kernel(
    image: &Path,
    modules_dir: Option<&Path>,
    progress: &mut dyn Progress,
) -> Result<Kernel, ImagesError> {
    let bad =
        |why: String| ImagesError::Kernel(format!("--kernel-image {}: {why}", image.display()));
    let bytes = std::fs::read(image).map_err(|e| ImagesError::io("reading", image, e))?;
    if kernel::is_elf(&bytes) {
        if !kernel::has_pvh_note(&bytes) {
            return Err(bad(
                "an ELF vmlinux without the PVH entry note, which QEMU needs to boot it (build with CONFIG_PVH=y, or pass the bzImage)".into(),
            ));
        }
    } else if !kernel::is_bzimage(&bytes) {
        return Err(bad("neither an ELF vmlinux nor a bzImage".into()));
    }
    if let Some(d) = modules_dir {
        if !d.is_dir() {
            return Err(ImagesError::Kernel(format!(
                "--modules-dir {}: not a directory",
                d.display()
            )));
        }
    }
    let release = modules_dir
        .and_then(|d| d.file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .or_else(|| kernel::image_release(&bytes))
        .unwrap_or_else(|| "unknown".into());
    progress.step(&format!(
        "kernel under test: {} ({release}){}",
        image.display(),
        modules_dir.map_or(String::from(", no module tree"), |d| format!(
            ", modules {}",
            d.display()
        ))
    ));
    Ok(Kernel {
        package: "user".into(),
        version: String::new(),
        release,
        vmlinux: image.to_owned(),
        modules_dir: modules_dir.map(Path::to_owned).unwrap_or_default(),
        download_bytes: 0,
        user: true,
    })
}

/// The modules of the initramfs, in load order: `wanted` with their dependencies (built-in
/// ones need no loading), then [`OPTIONAL_MODULES`] the tree has, named with a leading `?`.
/// A user kernel without a module tree gets none: it must have them built in.
fn initramfs_modules(
    kernel: &Kernel,
    wanted: &[String],
) -> Result<Vec<(String, Vec<u8>)>, ImagesError> {
    if kernel.user && kernel.modules_dir.as_os_str().is_empty() {
        return Ok(Vec::new());
    }
    let index = kernel::ModuleIndex::scan(&kernel.modules_dir)?;
    // A user's tree may have them built in without a `modules.builtin`; the harness's
    // configuration check names what is really missing.
    let wanted: Vec<String> = wanted
        .iter()
        .filter(|w| !kernel.user || index.contains(w))
        .cloned()
        .collect();
    let mut mods = index.resolve(&wanted)?;
    for opt in OPTIONAL_MODULES {
        if index.contains(opt) && !index.is_builtin(opt) {
            for (name, data) in index.resolve(&[(*opt).to_owned()])? {
                if !mods.iter().any(|(n, _)| *n == name) {
                    mods.push((format!("?{name}"), data));
                }
            }
        }
    }
    Ok(mods)
}

/// Takes the cache lock (blocking, with a message when another provisioning holds it).
fn lock(cache: &Path, progress: &mut dyn Progress) -> Result<std::fs::File, ImagesError> {
    mkdir(cache)?;
    lock_file(&cache.join(".lock"), "another provisioning run", progress)
}

/// Takes an exclusive `flock(2)` on `path` (created if missing), blocking, with a message
/// naming `holder` when someone else has it. The lock lasts as long as the returned file.
pub fn lock_file(
    path: &Path,
    holder: &str,
    progress: &mut dyn Progress,
) -> Result<std::fs::File, ImagesError> {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|e| ImagesError::io("opening", path, e))?;
    if f.try_lock_exclusive().is_err() {
        progress.step(&format!(
            "waiting for {holder} to release {}",
            path.display()
        ));
        f.lock_exclusive()
            .map_err(|e| ImagesError::io("locking", path, e))?;
    }
    Ok(f)
}

/// Provisions QEMU, kernel, busybox and an initramfs holding `agent` (the statically linked
/// guest agent). Idempotent: what the cache holds is reused without network access.
pub fn provision(
    cfg: &ImagesConfig,
    agent: &Path,
    progress: &mut dyn Progress,
) -> Result<Images, ImagesError> {
    let start = Instant::now();
    let _lock = lock(&cfg.cache_dir, progress)?;
    let mut run = Run {
        cfg,
        apt: None,
        downloaded: 0,
    };
    let qemu = run.qemu(progress)?;
    let kernel = run.kernel(progress)?;
    let (busybox_version, busybox) = run.busybox(progress)?;

    let agent_bytes =
        std::fs::read(agent).map_err(|e| ImagesError::io("reading the guest agent", agent, e))?;
    let bb = std::fs::read(&busybox).map_err(|e| ImagesError::io("reading", &busybox, e))?;
    let mut h = DefaultHasher::new();
    (
        &agent_bytes,
        &bb,
        &kernel.release,
        &cfg.modules,
        OPTIONAL_MODULES,
        initramfs::INIT_SCRIPT,
    )
        .hash(&mut h);
    if kernel.user {
        // A user's tree changes under the same release: key by its modules' sizes and times.
        kernel.modules_dir.hash(&mut h);
        if !kernel.modules_dir.as_os_str().is_empty() {
            kernel::ModuleIndex::scan(&kernel.modules_dir)?
                .fingerprint()
                .hash(&mut h);
        }
    }
    let dir = cfg.cache_dir.join("initramfs");
    mkdir(&dir)?;
    let out = dir.join(format!("initramfs-{:016x}.cpio", h.finish()));
    let list = dir.join(format!("initramfs-{:016x}.json", h.finish()));
    let modules = match read_manifest::<Vec<String>>(&list) {
        Some(m) if out.is_file() => m,
        _ => {
            progress.step("building the initramfs (busybox, guest agent, modules)");
            let mods = initramfs_modules(&kernel, &cfg.modules)?;
            let img = initramfs::build(&bb, &agent_bytes, &mods);
            let tmp = out.with_extension("tmp");
            std::fs::write(&tmp, img).map_err(|e| ImagesError::io("writing", &tmp, e))?;
            std::fs::rename(&tmp, &out).map_err(|e| ImagesError::io("renaming", &tmp, e))?;
            let names: Vec<String> = mods.into_iter().map(|(n, _)| n).collect();
            write_manifest(&list, &names)?;
            names
        }
    };
    let (initramfs, guest_packages) = if cfg.guest_files.is_empty() {
        (out, Vec::new())
    } else {
        with_guest_files(&mut run, &out, progress)?
    };
    Ok(Images {
        qemu,
        kernel,
        busybox_version,
        busybox,
        initramfs,
        modules,
        seconds: start.elapsed().as_secs_f64(),
        download_bytes: run.downloaded,
        guest_packages,
    })
}

/// How many initramfs images with guest files are kept (the oldest go first).
const KEEP_COMBINED: usize = 8;

/// The initramfs `base` with the guest files' archive appended, cached by both contents;
/// returns it and the guest packages' `name=version`.
fn with_guest_files(
    run: &mut Run<'_>,
    base: &Path,
    progress: &mut dyn Progress,
) -> Result<(PathBuf, Vec<String>), ImagesError> {
    let cfg = run.cfg;
    let mut get_apt = |p: &mut dyn Progress| -> Result<apt::Apt, ImagesError> {
        let mut a = apt::Apt::new(&cfg.cache_dir.join("apt"))?;
        a.update(p)?;
        Ok(a)
    };
    let files = guest_files::build(
        &cfg.cache_dir,
        &cfg.guest_files,
        cfg.refresh,
        &mut get_apt,
        progress,
    )?;
    run.downloaded += files.download_bytes;
    let dir = cfg.cache_dir.join("initramfs");
    let stem = base
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let out = dir.join(format!("{stem}+files-{:016x}.cpio", files.key));
    if !out.is_file() {
        progress.step("appending the guest files to the initramfs");
        let mut img = std::fs::read(base).map_err(|e| ImagesError::io("reading", base, e))?;
        img.extend(&files.archive);
        let tmp = out.with_extension("tmp");
        std::fs::write(&tmp, img).map_err(|e| ImagesError::io("writing", &tmp, e))?;
        std::fs::rename(&tmp, &out).map_err(|e| ImagesError::io("renaming", &tmp, e))?;
        prune_combined(&dir, &out);
    }
    Ok((out, files.packages))
}

/// Removes all but the newest [`KEEP_COMBINED`] initramfs images with guest files (never
/// `keep`, the one in use).
fn prune_combined(dir: &Path, keep: &Path) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    let mut combined: Vec<(std::time::SystemTime, PathBuf)> = rd
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().contains("+files-"))
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    combined.sort();
    let excess = combined.len().saturating_sub(KEEP_COMBINED);
    for (_, p) in combined.into_iter().take(excess) {
        if p != keep {
            let _ = std::fs::remove_file(p);
        }
    }
}
