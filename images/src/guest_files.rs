//! Files and tools in the guest: directory trees copied into the guest's root (`--overlay`)
//! and Debian packages from trixie unpacked with their library closure (`--package`), as a
//! `newc` archive appended to the initramfs (the kernel unpacks concatenated archives in
//! order, later files replacing earlier ones; Linux
//! `Documentation/driver-api/early-userspace/buffer-format.rst`).
//!
//! - **Packages.** Each named package, and recursively each `Depends` of it that is a shared
//!   library (archive section `libs`, or a name starting with `lib`: `libc6`, `libnuma1`,
//!   `zlib1g`, ...), is downloaded through the
//!   private apt state ([`crate::apt`]) and unpacked with `dpkg-deb -x`; no maintainer script
//!   runs. Documentation, manual pages and locales are left out. Other dependencies (an
//!   interpreter, `coreutils`) are not followed: name them with `--package` if a tool needs
//!   them. The archive is cached under `guest-files/`, keyed by the package names (with
//!   `refresh`, versions are resolved again).
//! - **Overlays.** Each tree's files, directories and symbolic links keep their relative
//!   paths and permission bits; overlays come after the packages, in the order given, so they
//!   win. The archive is keyed by a hash of the trees' contents.
//! - **Loader paths.** Debian's binaries look for `/lib64/ld-linux-x86-64.so.2` and their
//!   libraries in `/lib/x86_64-linux-gnu`; the archive links both into `/usr` (trixie ships
//!   everything under `/usr`), since the initramfs has real `/bin` and `/lib` directories.

use crate::initramfs::Cpio;
use crate::{apt, mkdir, ImagesError, Progress};
use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// What goes into the guest besides the test bed's own files.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GuestFiles {
    /// Directory trees copied into the guest's root, in order.
    pub overlay: Vec<PathBuf>,
    /// Debian packages (`name` or `name/suite`) unpacked with their library closure.
    pub packages: Vec<String>,
}

impl GuestFiles {
    pub fn is_empty(&self) -> bool {
        self.overlay.is_empty() && self.packages.is_empty()
    }
}

/// Parts of unpacked packages that a test guest never needs.
const SKIPPED: &[&str] = &[
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
    "usr/share/lintian",
    "usr/share/bug",
];

/// Whether a package is a shared library (what the closure follows).
fn is_library(p: &apt::PackageInfo) -> bool {
    p.section == "libs" || p.section == "oldlibs" || p.name.starts_with("lib")
}

/// The packages `specs` name and every library package they depend on, recursively, as
/// name -> version. `show` is apt's view of a package (`name` or `name/suite`).
pub fn library_closure(
    specs: &[String],
    show: &mut dyn FnMut(&str) -> Result<apt::PackageInfo, ImagesError>,
    progress: &mut dyn Progress,
) -> Result<BTreeMap<String, String>, ImagesError> {
    let mut out = BTreeMap::new();
    let mut seen = BTreeSet::new();
    let mut todo: Vec<(String, bool)> = specs.iter().map(|s| (s.clone(), true)).collect();
    while let Some((spec, named)) = todo.pop() {
        if !seen.insert(spec.clone()) {
            continue;
        }
        let info = match show(&spec) {
            Ok(i) => i,
            Err(e) if named => return Err(e),
            Err(_) => {
                // A virtual package or an alternative apt has no record for: left out.
                progress.line(&format!("{spec}: no package of that name, left out"));
                continue;
            }
        };
        if !named && !is_library(&info) {
            progress.line(&format!(
                "{} ({}) is not a library: left out (add it with --package)",
                info.name, info.section
            ));
            continue;
        }
        for d in &info.depends {
            if !seen.contains(d) {
                todo.push((d.clone(), false));
            }
        }
        out.insert(info.name, info.version);
    }
    Ok(out)
}

/// Adds the tree under `root` to `cpio` under `prefix` (without a leading `/`): directories
/// before what they hold, files with their permission bits, symbolic links as links.
/// Paths in `skip` (relative to `root`) are left out.
pub fn add_tree(
    cpio: &mut Cpio,
    root: &Path,
    rel: &Path,
    skip: &[&str],
    hash: &mut DefaultHasher,
) -> Result<(), ImagesError> {
    let dir = root.join(rel);
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .map_err(|e| ImagesError::io("reading", &dir, e))?
        .filter_map(Result::ok)
        .collect();
    entries.sort_by_key(std::fs::DirEntry::file_name);
    for e in entries {
        let rel = rel.join(e.file_name());
        let name = rel.to_string_lossy().into_owned();
        if skip.iter().any(|s| *s == name) {
            continue;
        }
        let path = e.path();
        let meta = std::fs::symlink_metadata(&path)
            .map_err(|err| ImagesError::io("reading", &path, err))?;
        let mode = meta.permissions().mode() & 0o7777;
        name.hash(hash);
        mode.hash(hash);
        if meta.is_dir() {
            cpio.dir_mode(&name, mode);
            add_tree(cpio, root, &rel, skip, hash)?;
        } else if meta.file_type().is_symlink() {
            let target =
                std::fs::read_link(&path).map_err(|err| ImagesError::io("reading", &path, err))?;
            let target = target.to_string_lossy();
            target.hash(hash);
            cpio.symlink(&name, &target);
        } else if meta.is_file() {
            let data =
                std::fs::read(&path).map_err(|err| ImagesError::io("reading", &path, err))?;
            data.hash(hash);
            cpio.file(&name, mode, &data);
        }
        // Device nodes, sockets and pipes are not copied.
    }
    Ok(())
}

/// The archive of unpacked packages, cached by package names; builds it with `apt` when it
/// is not cached (or on `refresh`). Returns the archive and `name=version` of each package.
fn packages_archive(
    cache: &Path,
    packages: &[String],
    refresh: bool,
    apt: &mut dyn FnMut(&mut dyn Progress) -> Result<apt::Apt, ImagesError>,
    progress: &mut dyn Progress,
) -> Result<(Vec<u8>, Vec<String>, u64), ImagesError> {
    let dir = cache.join("guest-files");
    mkdir(&dir)?;
    let mut h = DefaultHasher::new();
    packages.hash(&mut h);
    let key = format!("packages-{:016x}", h.finish());
    let (archive, list) = (
        dir.join(format!("{key}.cpio")),
        dir.join(format!("{key}.json")),
    );
    if !refresh {
        if let (Ok(a), Some(l)) = (std::fs::read(&archive), crate::read_manifest(&list)) {
            progress.step(&format!("guest packages cached: {}", packages.join(" ")));
            return Ok((a, l, 0));
        }
    }
    progress.step(&format!(
        "resolving guest packages and their libraries: {}",
        packages.join(" ")
    ));
    let a = apt(progress)?;
    let closure = library_closure(packages, &mut |s| a.show(s), progress)?;
    let pkgs: Vec<(String, String)> = closure.into_iter().collect();
    progress.step(&format!(
        "downloading {} guest packages ({})",
        pkgs.len(),
        pkgs.iter()
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>()
            .join(" ")
    ));
    let debs = a.download_exact(&pkgs, progress)?;
    let downloaded = crate::file_size(&debs);
    let root = dir.join(format!("{key}.root"));
    crate::extract_root(&debs, &root, progress)?;
    let mut c = Cpio::new();
    add_tree(
        &mut c,
        &root,
        Path::new(""),
        SKIPPED,
        &mut DefaultHasher::new(),
    )?;
    loader_links(&mut c, &root);
    let bytes = c.finish();
    let tmp = archive.with_extension("tmp");
    std::fs::write(&tmp, &bytes).map_err(|e| ImagesError::io("writing", &tmp, e))?;
    std::fs::rename(&tmp, &archive).map_err(|e| ImagesError::io("renaming", &tmp, e))?;
    let names: Vec<String> = pkgs.iter().map(|(n, v)| format!("{n}={v}")).collect();
    crate::write_manifest(&list, &names)?;
    let _ = std::fs::remove_dir_all(&root);
    Ok((bytes, names, downloaded))
}

/// Links the dynamic loader's and the libraries' classic paths into `/usr`.
fn loader_links(c: &mut Cpio, root: &Path) {
    if root.join("usr/lib64").is_dir() && !root.join("lib64").exists() {
        c.symlink("lib64", "usr/lib64");
    }
    if root.join("usr/lib/x86_64-linux-gnu").is_dir() && !root.join("lib/x86_64-linux-gnu").exists()
    {
        c.dir("lib");
        c.symlink("lib/x86_64-linux-gnu", "../usr/lib/x86_64-linux-gnu");
    }
}

/// What [`build`] made.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Built {
    /// The archive to append to the initramfs.
    pub archive: Vec<u8>,
    /// Hash of everything in it.
    pub key: u64,
    /// `name=version` of every package in it.
    pub packages: Vec<String>,
    /// Bytes of packages downloaded to build it (0 when cached).
    pub download_bytes: u64,
}

/// Builds the archive of `files`: packages first (cached), then each overlay tree.
pub fn build(
    cache: &Path,
    files: &GuestFiles,
    refresh: bool,
    apt: &mut dyn FnMut(&mut dyn Progress) -> Result<apt::Apt, ImagesError>,
    progress: &mut dyn Progress,
) -> Result<Built, ImagesError> {
    let mut out = Built::default();
    let mut h = DefaultHasher::new();
    if !files.packages.is_empty() {
        let (bytes, names, downloaded) =
            packages_archive(cache, &files.packages, refresh, apt, progress)?;
        bytes.hash(&mut h);
        out.archive = bytes;
        out.packages = names;
        out.download_bytes = downloaded;
    }
    for dir in &files.overlay {
        if !dir.is_dir() {
            return Err(ImagesError::Kernel(format!(
                "--overlay {}: not a directory",
                dir.display()
            )));
        }
        progress.step(&format!("overlay {} -> /", dir.display()));
        let mut c = Cpio::new();
        add_tree(&mut c, dir, Path::new(""), &[], &mut h)?;
        out.archive.extend(c.finish());
    }
    out.key = h.finish();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::initramfs::tests::parse;

    #[test]
    fn library_closure_follows_library_dependencies_only() {
        let db: BTreeMap<&str, (&str, &str, Vec<&str>)> = [
            (
                "numactl",
                (
                    "2.0.19-1",
                    "utils",
                    vec!["libc6", "libnuma1", "perl", "zlib1g"],
                ),
            ),
            ("libnuma1", ("2.0.19-1", "libs", vec!["libc6"])),
            (
                "libc6",
                ("2.41-12", "libs", vec!["libgcc-s1", "libvirtual-x"]),
            ),
            (
                "libgcc-s1",
                ("14.2.0-19", "libs", vec!["gcc-14-base", "libc6"]),
            ),
            ("gcc-14-base", ("14.2.0-19", "libs", vec![])),
            ("zlib1g", ("1:1.3", "libs", vec!["libc6"])),
            ("perl", ("5.40", "perl", vec!["libperl5.40"])),
        ]
        .into_iter()
        .collect();
        let mut show = |spec: &str| {
            let name = spec.split('/').next().unwrap_or(spec);
            db.get(name)
                .map(|(v, section, d)| apt::PackageInfo {
                    name: name.to_owned(),
                    version: (*v).to_owned(),
                    depends: d.iter().map(|s| (*s).to_owned()).collect(),
                    section: (*section).to_owned(),
                })
                .ok_or_else(|| ImagesError::Package {
                    package: spec.to_owned(),
                    why: "unknown".into(),
                })
        };
        let got =
            library_closure(&["numactl".into()], &mut show, &mut crate::Silent).expect("closure");
        assert_eq!(
            got.keys().map(String::as_str).collect::<Vec<_>>(),
            [
                "gcc-14-base",
                "libc6",
                "libgcc-s1",
                "libnuma1",
                "numactl",
                "zlib1g"
            ]
        );
        assert_eq!(got["libc6"], "2.41-12");
        let e = library_closure(&["nosuch".into()], &mut show, &mut crate::Silent)
            .expect_err("a named package must exist")
            .to_string();
        assert!(e.contains("nosuch"), "{e}");
    }

    #[test]
    fn an_overlay_keeps_paths_modes_and_links_and_its_key_follows_its_content() {
        let dir = std::env::temp_dir().join(format!("guest-files-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("etc/tierbed")).expect("mkdir");
        std::fs::write(dir.join("etc/tierbed/hello"), b"hi\n").expect("write");
        let tool = dir.join("etc/tierbed/tool.sh");
        std::fs::write(&tool, b"#!/bin/sh\necho tool\n").expect("write");
        std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o750)).expect("chmod");
        std::os::unix::fs::symlink("tierbed/hello", dir.join("etc/hello")).expect("link");
        let files = GuestFiles {
            overlay: vec![dir.clone()],
            packages: Vec::new(),
        };
        let mut no_apt = |_: &mut dyn Progress| -> Result<apt::Apt, ImagesError> {
            panic!("an overlay needs no apt")
        };
        let cache = std::env::temp_dir().join(format!("gf-cache-{}", std::process::id()));
        let a = build(&cache, &files, false, &mut no_apt, &mut crate::Silent).expect("build");
        let entries = parse(&a.archive);
        let get = |n: &str| entries.iter().find(|e| e.0 == n).cloned().expect(n);
        assert_eq!(get("etc").1 & 0o170000, 0o040000);
        let pos = |n: &str| entries.iter().position(|e| e.0 == n).expect(n);
        assert!(pos("etc/tierbed") < pos("etc/tierbed/hello"));
        assert_eq!(get("etc/tierbed/hello").2, b"hi\n");
        assert_eq!(get("etc/tierbed/tool.sh").1, 0o100750);
        assert_eq!(get("etc/hello").1 & 0o170000, 0o120000);
        assert_eq!(get("etc/hello").2, b"tierbed/hello");
        let same = build(&cache, &files, false, &mut no_apt, &mut crate::Silent).expect("build");
        assert_eq!(same.key, a.key);
        std::fs::write(dir.join("etc/tierbed/hello"), b"hi!\n").expect("write");
        let changed = build(&cache, &files, false, &mut no_apt, &mut crate::Silent).expect("build");
        assert_ne!(changed.key, a.key);
        let missing = GuestFiles {
            overlay: vec![dir.join("absent")],
            packages: Vec::new(),
        };
        let e = build(&cache, &missing, false, &mut no_apt, &mut crate::Silent)
            .expect_err("missing overlay")
            .to_string();
        assert!(e.contains("absent"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
        let _ = std::fs::remove_dir_all(&cache);
    }
}
