//! The kernel modules `harness run dmatest` loads besides the user's: `dmatest.ko`, built out
//! of tree from Debian's `linux-source-<major.minor>` package of the guest kernel's exact
//! version (`drivers/dma/dmatest.c` taken from the package's tarball through the private
//! apt state), and the project's own SDXi dmaengine driver (`harness/fixtures/sdxi-dma`,
//! compiled into the harness so an installed harness carries it too). Both build in the
//! private build root of `--build-module` ([`images::kbuild`]). dmatest.ko is cached per
//! kernel release; the fixture is built again on every run (about 2 s), in a build directory
//! of the run's own.

use crate::RunError;
use images::{apt, kbuild, ImagesError, Kernel, Progress};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The fixture driver's sources, as files of its Kbuild directory.
pub const FIXTURE: &[(&str, &str)] = &[
    ("Kbuild", include_str!("../../fixtures/sdxi-dma/Kbuild")),
    (
        "sdxi_dma.c",
        include_str!("../../fixtures/sdxi-dma/sdxi_dma.c"),
    ),
    (
        "sdxi_hw.h",
        include_str!("../../fixtures/sdxi-dma/sdxi_hw.h"),
    ),
];

/// The fixture's module name, as `rmmod` and `/sys/module` know it.
pub const FIXTURE_MODULE: &str = "tierbed_sdxi_dma";

/// Where dmatest and the fixture are kept for kernel `release`.
fn dir(cache: &Path, release: &str) -> PathBuf {
    cache.join("dmatest").join(release)
}

/// Writes the fixture's sources into the cache and returns the Kbuild directory. A file is
/// replaced (written aside, then renamed) only when its text changed, so a run building the
/// tree at the same time never reads a half-written file.
pub fn fixture_tree(cache: &Path, release: &str) -> Result<PathBuf, RunError> {
    let d = dir(cache, release).join("sdxi-dma");
    std::fs::create_dir_all(&d).map_err(|e| RunError::Results(d.clone(), e))?;
    for (name, text) in FIXTURE {
        let p = d.join(name);
        if std::fs::read(&p).is_ok_and(|old| old == text.as_bytes()) {
            continue;
        }
        let tmp = d.join(format!(".{name}.{}", std::process::id()));
        std::fs::write(&tmp, text)
            .and_then(|()| std::fs::rename(&tmp, &p))
            .map_err(|e| RunError::Results(p.clone(), e))?;
    }
    Ok(d)
}

/// `linux-source-7.3` for a kernel version `7.3.4-1~bpo13+1`.
pub fn source_package(version: &str) -> Option<String> {
    let mut parts = version.split(['.', '-', '+', '~']);
    let (major, minor) = (parts.next()?, parts.next()?);
    let numeric = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    (numeric(major) && numeric(minor)).then(|| format!("linux-source-{major}.{minor}"))
}

/// `dmatest.ko` for the provisioned Debian kernel `kernel`, built once per release.
pub fn dmatest_module(
    cache: &Path,
    kernel: &Kernel,
    progress: &mut dyn Progress,
) -> Result<PathBuf, RunError> {
    let out = dir(cache, &kernel.release).join("dmatest.ko");
    if out.is_file() {
        return Ok(out);
    }
    std::fs::create_dir_all(dir(cache, &kernel.release))
        .map_err(|e| RunError::Results(dir(cache, &kernel.release), e))?;
    let _lock = images::lock_file(
        &dir(cache, &kernel.release).join(".dmatest.lock"),
        "another run building dmatest.ko",
        progress,
    )?;
    if out.is_file() {
        return Ok(out);
    }
    let pkg = source_package(&kernel.version).ok_or_else(|| {
        ImagesError::Kernel(format!(
            "cannot name the linux-source package of kernel version {}",
            kernel.version
        ))
    })?;
    let mut a = apt::Apt::new(&cache.join("apt"))?;
    let deb = match a.download_exact(&[(pkg.clone(), kernel.version.clone())], progress) {
        Ok(d) => d,
        Err(_) => {
            a.update(progress)?;
            a.download_exact(&[(pkg.clone(), kernel.version.clone())], progress)?
        }
    };
    let deb = deb.into_iter().next().ok_or_else(|| ImagesError::Package {
        package: pkg.clone(),
        why: "the download left no .deb".into(),
    })?;
    let src = dir(cache, &kernel.release).join("dmatest");
    std::fs::create_dir_all(&src).map_err(|e| RunError::Results(src.clone(), e))?;
    progress.step(&format!(
        "extracting drivers/dma/dmatest.c from {pkg} {}",
        kernel.version
    ));
    extract_dmatest(&deb, &pkg, &src.join("dmatest.c"))?;
    let kbuild_file = src.join("Kbuild");
    std::fs::write(&kbuild_file, "obj-m := dmatest.o\n")
        .map_err(|e| RunError::Results(kbuild_file.clone(), e))?;
    let root = kbuild::build_root(cache, &kernel.release, progress)?;
    let kos = kbuild::build_module(&root, &kernel.release, &src, progress)?;
    let ko = kos
        .into_iter()
        .find(|k| k.file_name().is_some_and(|n| n == "dmatest.ko"))
        .ok_or_else(|| ImagesError::Kernel("building dmatest produced no dmatest.ko".into()))?;
    let tmp = out.with_extension(format!("ko.{}", std::process::id()));
    std::fs::copy(&ko, &tmp)
        .and_then(|_| std::fs::rename(&tmp, &out))
        .map_err(|e| RunError::Results(out.clone(), e))?;
    Ok(out)
}

/// Streams `drivers/dma/dmatest.c` out of the package's source tarball into `dest`.
fn extract_dmatest(deb: &Path, pkg: &str, dest: &Path) -> Result<(), RunError> {
    let tarball = format!("./usr/src/{pkg}.tar.xz");
    let member = format!("{pkg}/drivers/dma/dmatest.c");
    let script = "dpkg-deb --fsys-tarfile \"$1\" | tar -xOf - \"$2\" | tar -xJOf - --occurrence=1 \"$3\" > \"$4\"";
    let out = Command::new("sh")
        .args(["-c", script, "sh"])
        .arg(deb)
        .arg(&tarball)
        .arg(&member)
        .arg(dest)
        .output()
        .map_err(|e| ImagesError::Spawn {
            what: "dpkg-deb | tar".into(),
            source: e,
        })?;
    let size = std::fs::metadata(dest).map(|m| m.len()).unwrap_or(0);
    if !out.status.success() || size == 0 {
        let _ = std::fs::remove_file(dest);
        return Err(ImagesError::Package {
            package: pkg.into(),
            why: format!(
                "no {member} in {}: {}",
                deb.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        }
        .into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_source_package_follows_the_kernel_version() {
        assert_eq!(
            source_package("7.3.4-1~bpo13+1").as_deref(),
            Some("linux-source-7.3")
        );
        assert_eq!(
            source_package("6.12.117-1").as_deref(),
            Some("linux-source-6.12")
        );
        assert_eq!(source_package("custom"), None);
        assert_eq!(source_package("7.x.1"), None);
    }

    #[test]
    fn the_fixture_is_a_gpl_kbuild_tree() {
        let names: Vec<&str> = FIXTURE.iter().map(|(n, _)| *n).collect();
        assert!(names.contains(&"Kbuild"));
        for (name, text) in FIXTURE {
            assert!(text.contains("SPDX-License-Identifier: GPL-2.0"), "{name}");
        }
        let kbuild = FIXTURE[0].1;
        assert!(kbuild.contains(&format!("obj-m := {FIXTURE_MODULE}.o")));
    }
}
