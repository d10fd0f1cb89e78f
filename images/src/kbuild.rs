//! Building out-of-tree kernel modules for the guest kernel: a private root holding that
//! kernel's Debian headers and the compiler Debian built it with (gcc-14), entered with
//! `chroot` inside a private mount and PID namespace (`unshare`), so nothing on the host
//! changes and nothing stays mounted. As a normal user it also enters a user namespace
//! (`--map-root-user`, user_namespaces(7)), so no step needs root; the root's `/dev/null` is
//! the host's, bind-mounted for the build.

use crate::{apt, kernel, mkdir, run_logged, ImagesError, Progress};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

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
    mkdir(&cache.join("kbuild"))?;
    let _lock = crate::lock_file(
        &cache.join("kbuild").join(format!("{release}.lock")),
        "another run provisioning the build root",
        progress,
    )?;
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

/// Builds the Kbuild module tree `src` against kernel `release` in `root`; returns the `.ko`
/// files it produced, dependencies first.
///
/// The whole tree is copied into the build root with its subdirectories (build outputs left
/// out, see [`copy_tree`]) and `make M=` runs at its top, so the tree's own `Kbuild` or
/// `Makefile` picks what to build: a flat module directory (`obj-m := foo.o`) or a tree that
/// mirrors a kernel directory, such as `drivers/dma` with `obj-m += sdxi/` at the top and the
/// driver's sources including `../dmaengine.h`. Modules are collected from every
/// subdirectory and ordered by their `.modinfo` `depends=` among themselves.
pub fn build_module(
    root: &Path,
    release: &str,
    src: &Path,
    progress: &mut dyn Progress,
) -> Result<Vec<PathBuf>, ImagesError> {
    let src = &std::fs::canonicalize(src).map_err(|e| ImagesError::io("reading", src, e))?;
    let name = src
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| {
            ImagesError::Kernel(format!("module directory {} has no name", src.display()))
        })?;
    if !src.join("Kbuild").is_file() && !src.join("Makefile").is_file() {
        return Err(ImagesError::Kernel(format!(
            "{} has no Kbuild or Makefile at its top",
            src.display()
        )));
    }
    remove_stale_builds(&root.join("build"));
    let work_name = work_dir_name(&name);
    let work = root.join("build").join(&work_name);
    copy_tree(src, &work)?;
    progress.step(&format!(
        "building module {name} for {release} (gcc-14, Debian headers)"
    ));
    // Paths and names go in as positional parameters, never into the script's text: a
    // directory name with spaces, quotes or `$(...)` stays one word.
    let script = r#"mount -t proc proc "$1/proc" && mount --bind /dev/null "$1/dev/null" && exec chroot "$1" make -C "/usr/src/linux-headers-$2" "M=/build/$3" CC=x86_64-linux-gnu-gcc-14 modules"#;
    let mut c = Command::new("unshare");
    let root_user =
        std::fs::metadata("/proc/self").is_ok_and(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0);
    if !root_user {
        c.arg("--map-root-user");
    }
    c.args(["--mount", "--pid", "--fork", "sh", "-c", script, "sh"]);
    c.arg(root).arg(release).arg(&work_name);
    run_logged(c, &format!("building {}", src.display()), progress)?;
    let kos = find_modules(&work)?;
    if kos.is_empty() {
        return Err(ImagesError::Kernel(format!(
            "building {} produced no .ko",
            src.display()
        )));
    }
    load_order(kos)
}

/// A build directory of this process's own, `NAME.PID.SEQ`: runs at once (`--jobs`, or two
/// harness processes) never build in, or clean, each other's directory, and the `.ko` paths a
/// build returns stay valid while the process lives.
fn work_dir_name(name: &str) -> String {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    // Kbuild takes no spaces in M=, and the name reaches make: keep it plain.
    let plain: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{plain}.{}.{seq}", std::process::id())
}

/// Removes the build directories of processes that have ended (and of the older layout
/// without a process id); a live process's directories are left alone.
fn remove_stale_builds(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.filter_map(Result::ok) {
        let name = e.file_name().to_string_lossy().into_owned();
        let pid = name.rsplit('.').nth(1).and_then(|p| p.parse::<u32>().ok());
        let alive = pid.is_some_and(|p| Path::new("/proc").join(p.to_string()).exists());
        if !alive && e.file_type().is_ok_and(|t| t.is_dir()) {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// True for what a kernel build leaves in a module tree, and for hidden entries (`.git`,
/// `.*.cmd`, `.tmp_versions`): none of it is copied into the build root.
fn is_build_output(name: &str) -> bool {
    const SUFFIXES: &[&str] = &[".o", ".ko", ".mod", ".mod.c", ".a", ".dwo", ".symvers"];
    name.starts_with('.') || name == "modules.order" || SUFFIXES.iter().any(|s| name.ends_with(s))
}

/// Copies the module tree `src` to `dst` with its subdirectories, leaving build outputs out.
/// Symbolic links are followed for files; linked directories are not entered.
pub fn copy_tree(src: &Path, dst: &Path) -> Result<(), ImagesError> {
    mkdir(dst)?;
    for e in std::fs::read_dir(src)
        .map_err(|e| ImagesError::io("reading", src, e))?
        .filter_map(Result::ok)
    {
        let file_name = e.file_name();
        if is_build_output(&file_name.to_string_lossy()) {
            continue;
        }
        let (from, to) = (e.path(), dst.join(&file_name));
        let kind = e
            .file_type()
            .map_err(|err| ImagesError::io("reading", &from, err))?;
        if kind.is_dir() {
            copy_tree(&from, &to)?;
        } else if kind.is_file() || (kind.is_symlink() && from.is_file()) {
            std::fs::copy(&from, &to).map_err(|err| ImagesError::io("copying", &to, err))?;
        }
    }
    Ok(())
}

/// Every `.ko` under `dir`, sorted by path.
fn find_modules(dir: &Path) -> Result<Vec<PathBuf>, ImagesError> {
    let mut kos = Vec::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d)
            .map_err(|e| ImagesError::io("reading", &d, e))?
            .filter_map(Result::ok)
        {
            let p = e.path();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                todo.push(p);
            } else if p.extension().is_some_and(|x| x == "ko") {
                kos.push(p);
            }
        }
    }
    kos.sort();
    Ok(kos)
}

/// Orders modules so each comes after the ones it depends on (`depends=` in `.modinfo`);
/// dependencies outside `kos` are the kernel's and are left to it. Otherwise path order.
pub fn load_order(kos: Vec<PathBuf>) -> Result<Vec<PathBuf>, ImagesError> {
    let mut deps = BTreeMap::new();
    for ko in &kos {
        let name = kernel::module_name(ko)
            .ok_or_else(|| ImagesError::Kernel(format!("{}: not a .ko", ko.display())))?;
        let d: BTreeSet<String> = kernel::depends(&kernel::read_module(ko)?)
            .into_iter()
            .collect();
        deps.insert(name, (ko.clone(), d));
    }
    let mut order: Vec<PathBuf> = Vec::new();
    let mut placed = BTreeSet::new();
    while placed.len() < deps.len() {
        let ready: Vec<String> = deps
            .iter()
            .filter(|(n, (_, d))| {
                !placed.contains(*n)
                    && d.iter()
                        .all(|x| placed.contains(x) || !deps.contains_key(x))
            })
            .map(|(n, _)| n.clone())
            .collect();
        if ready.is_empty() {
            return Err(ImagesError::Kernel(
                "the built modules depend on each other in a cycle".into(),
            ));
        }
        for n in ready {
            order.push(deps[&n].0.clone());
            placed.insert(n);
        }
    }
    Ok(order)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::tests::elf_with_modinfo;

    /// A scratch directory removed when dropped.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(tag: &str) -> Self {
            let d = std::env::temp_dir().join(format!("kbuild-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&d);
            std::fs::create_dir_all(&d).expect("mkdir");
            Self(d)
        }

        fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn write(p: &Path, data: &[u8]) {
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(p, data).expect("write");
    }

    #[test]
    fn each_build_gets_its_own_directory_and_only_ended_runs_are_cleaned() {
        let t = Scratch::new("stale");
        let (a, b) = (work_dir_name("sdxi-dma"), work_dir_name("sdxi-dma"));
        assert_ne!(a, b, "two builds in one process share no directory");
        let odd = work_dir_name("my driver's $(tree).v2");
        assert!(
            odd.starts_with("my_driver_s___tree__v2."),
            "one plain word: {odd}"
        );
        let me = format!("sdxi-dma.{}.7", std::process::id());
        assert!(
            a.starts_with(&format!("sdxi-dma.{}.", std::process::id())),
            "{a}"
        );
        // pid_max is at most 2^22, so this process id never exists.
        let gone = "sdxi-dma.4294967295.0";
        for d in [me.as_str(), gone, "sdxi-dma"] {
            std::fs::create_dir_all(t.path().join(d).join("sub")).expect("mkdir");
        }
        remove_stale_builds(t.path());
        assert!(t.path().join(&me).is_dir(), "a live run's build stays");
        assert!(!t.path().join(gone).exists(), "an ended run's build goes");
        assert!(!t.path().join("sdxi-dma").exists(), "the old layout goes");
    }

    #[test]
    fn a_module_tree_is_copied_with_its_subdirectories_and_without_build_outputs() {
        let t = Scratch::new("copy");
        let (src, dst) = (t.path().join("dma"), t.path().join("copy"));
        for f in [
            "Kbuild",
            "dmaengine.h",
            "sdxi/Makefile",
            "sdxi/dma.c",
            "sdxi/deep/more.h",
        ] {
            write(&src.join(f), f.as_bytes());
        }
        for f in [
            "sdxi/dma.o",
            "sdxi/sdxi-core.ko",
            "sdxi/sdxi-core.mod",
            "sdxi/sdxi-core.mod.c",
            "sdxi/.dma.o.cmd",
            "modules.order",
            "Module.symvers",
            ".git/HEAD",
        ] {
            write(&src.join(f), b"stale");
        }
        copy_tree(&src, &dst).expect("copy");
        let mut got = Vec::new();
        let mut todo = vec![dst.clone()];
        while let Some(d) = todo.pop() {
            for e in std::fs::read_dir(&d).expect("read").flatten() {
                if e.path().is_dir() {
                    todo.push(e.path());
                } else {
                    let rel = e.path().strip_prefix(&dst).expect("rel").to_owned();
                    got.push(rel.to_string_lossy().into_owned());
                }
            }
        }
        got.sort();
        assert_eq!(
            got,
            [
                "Kbuild",
                "dmaengine.h",
                "sdxi/Makefile",
                "sdxi/deep/more.h",
                "sdxi/dma.c"
            ]
        );
        assert_eq!(
            std::fs::read(dst.join("sdxi/deep/more.h")).expect("read"),
            b"sdxi/deep/more.h"
        );
    }

    #[test]
    fn built_modules_load_after_the_built_modules_they_depend_on() {
        let t = Scratch::new("order");
        // Path order would load sdxi-pci before sdxi-core; zz_client depends on both and on
        // a kernel module (virt_dma) that is not part of the build.
        let modules = [
            ("a/sdxi-pci.ko", "depends=sdxi_core\0"),
            ("b/sdxi-core.ko", "depends=\0"),
            ("a/zz_client.ko", "depends=virt_dma,sdxi-pci,sdxi_core\0"),
            ("c/alone.ko", "license=GPL\0"),
        ];
        for (f, info) in modules {
            write(&t.path().join(f), &elf_with_modinfo(info.as_bytes()));
        }
        let kos = find_modules(t.path()).expect("find");
        assert_eq!(kos.len(), 4);
        let names: Vec<String> = load_order(kos)
            .expect("order")
            .iter()
            .filter_map(|p| kernel::module_name(p))
            .collect();
        assert_eq!(names, ["alone", "sdxi_core", "sdxi_pci", "zz_client"]);
    }

    #[test]
    fn modules_that_depend_on_each_other_in_a_cycle_are_refused() {
        let t = Scratch::new("cycle");
        write(&t.path().join("x.ko"), &elf_with_modinfo(b"depends=y\0"));
        write(&t.path().join("y.ko"), &elf_with_modinfo(b"depends=x\0"));
        let err = load_order(find_modules(t.path()).expect("find")).expect_err("cycle");
        assert!(err.to_string().contains("cycle"), "{err}");
    }
}
