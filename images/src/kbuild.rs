//! Building out-of-tree kernel modules for the guest kernel: a private root holding that
//! kernel's Debian headers and the compiler Debian built it with (gcc-14), entered with
//! `chroot` inside a private mount and PID namespace (`unshare`), so nothing on the host
//! changes and nothing stays mounted. As a normal user it also enters a user namespace
//! (`--map-root-user`, user_namespaces(7)), so no step needs root; the root's `/dev/null` is
//! the host's, bind-mounted for the build.

use crate::{apt, mkdir, run_logged, ImagesError, Progress};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Packages of the build root besides the kernel's headers.
const TOOLCHAIN: &[&str] = &[
    "gcc-14",
    "make",
    "libc6-dev",
    "dash",
    "coreutils",
    "sed",
    "grep",
    "mawk",
    "findutils",
];

/// Provisions (or reuses) the build root for kernel `release`.
pub fn build_root(
    cache: &Path,
    release: &str,
    progress: &mut dyn Progress,
) -> Result<PathBuf, ImagesError> {
    let root = cache.join("kbuild").join(release);
    if root.join(".ready").is_file() {
        return Ok(root);
    }
    progress.step(&format!(
        "installing linux-headers-{release} and gcc-14 into a private build root"
    ));
    let mut a = apt::Apt::new(&cache.join("apt"))?;
    a.update(progress)?;
    let mut specs: Vec<String> = vec![format!("linux-headers-{release}")];
    specs.extend(TOOLCHAIN.iter().map(|s| (*s).to_owned()));
    let debs = a.download_closure(&specs, progress)?;
    if let Some(parent) = root.parent() {
        mkdir(parent)?;
    }
    crate::extract_root(&debs, &root, progress)?;
    // Usr-merge links, the awk alternative, and what a build needs inside the root.
    for d in ["bin", "lib", "lib64", "sbin"] {
        let l = root.join(d);
        if !l.exists() {
            std::os::unix::fs::symlink(format!("usr/{d}"), &l)
                .map_err(|e| ImagesError::io("linking", &l, e))?;
        }
    }
    let awk = root.join("usr/bin/awk");
    if !awk.exists() {
        std::os::unix::fs::symlink("mawk", &awk)
            .map_err(|e| ImagesError::io("linking", &awk, e))?;
    }
    for d in ["proc", "dev", "tmp", "build"] {
        mkdir(&root.join(d))?;
    }
    // The mount point of the host's /dev/null during a build (mknod needs root).
    let null = root.join("dev/null");
    let _ = std::fs::remove_file(&null);
    std::fs::write(&null, b"").map_err(|e| ImagesError::io("creating", &null, e))?;
    std::fs::write(root.join(".ready"), b"").map_err(|e| ImagesError::io("writing", &root, e))?;
    Ok(root)
}

/// Builds the Kbuild module directory `src` against kernel `release` in `root`; returns the
/// `.ko` files it produced.
pub fn build_module(
    root: &Path,
    release: &str,
    src: &Path,
    progress: &mut dyn Progress,
) -> Result<Vec<PathBuf>, ImagesError> {
    let name = src
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| {
            ImagesError::Kernel(format!("module directory {} has no name", src.display()))
        })?;
    let work = root.join("build").join(&name);
    if work.exists() {
        std::fs::remove_dir_all(&work).map_err(|e| ImagesError::io("cleaning", &work, e))?;
    }
    mkdir(&work)?;
    for e in std::fs::read_dir(src)
        .map_err(|e| ImagesError::io("reading", src, e))?
        .filter_map(Result::ok)
    {
        if e.file_type().is_ok_and(|t| t.is_file()) {
            let to = work.join(e.file_name());
            std::fs::copy(e.path(), &to).map_err(|err| ImagesError::io("copying", &to, err))?;
        }
    }
    progress.step(&format!(
        "building module {name} for {release} (gcc-14, Debian headers)"
    ));
    let script = format!(
        "mount -t proc proc '{root}/proc' && mount --bind /dev/null '{root}/dev/null' && exec chroot '{root}' make -C /usr/src/linux-headers-{release} M=/build/{name} CC=x86_64-linux-gnu-gcc-14 modules",
        root = root.display()
    );
    let mut c = Command::new("unshare");
    let root_user =
        std::fs::metadata("/proc/self").is_ok_and(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0);
    if !root_user {
        c.arg("--map-root-user");
    }
    c.args(["--mount", "--pid", "--fork", "sh", "-c", &script]);
    run_logged(c, &format!("building {}", src.display()), progress)?;
    let mut kos: Vec<PathBuf> = std::fs::read_dir(&work)
        .map_err(|e| ImagesError::io("reading", &work, e))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "ko"))
        .collect();
    kos.sort();
    if kos.is_empty() {
        return Err(ImagesError::Kernel(format!(
            "building {} produced no .ko",
            src.display()
        )));
    }
    Ok(kos)
}
