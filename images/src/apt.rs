//! A private apt state for Debian trixie and trixie-backports: package lists, dependency
//! resolution and downloads go to a folder of the cache; the host's apt sources, lists and
//! packages are never read or changed (apt reads only the config file written here, through
//! `APT_CONFIG`). Packages are unpacked with `dpkg-deb -x`, no maintainer script runs.

use crate::{run_logged, ImagesError, Progress};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Debian mirror used for the private apt state.
pub const MIRROR: &str = "http://deb.debian.org/debian";
/// Keyring that signs trixie (shipped by bookworm's debian-archive-keyring).
pub const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// The private apt state.
#[derive(Debug)]
pub struct Apt {
    root: PathBuf,
    updated: bool,
}

/// One package as apt knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PackageInfo {
    pub name: String,
    pub version: String,
    /// Names of the first alternative of each Depends entry.
    pub depends: Vec<String>,
    /// The archive section (`libs` for shared libraries, `utils`, ...).
    pub section: String,
}

impl Apt {
    /// Creates (or reuses) the private apt state under `root`.
    pub fn new(root: &Path) -> Result<Self, ImagesError> {
        for d in [
            "etc/apt/apt.conf.d",
            "etc/apt/preferences.d",
            "etc/apt/sources.list.d",
            "var/lib/apt/lists/partial",
            "var/cache/apt/archives/partial",
            "var/lib/dpkg",
            "var/log/apt",
        ] {
            let p = root.join(d);
            std::fs::create_dir_all(&p)
                .map_err(|e| ImagesError::io("creating apt state", &p, e))?;
        }
        let status = root.join("var/lib/dpkg/status");
        if !status.exists() {
            std::fs::write(&status, b"").map_err(|e| ImagesError::io("creating", &status, e))?;
        }
        let sources = format!(
            "deb [signed-by={KEYRING}] {MIRROR} trixie main\n\
             deb [signed-by={KEYRING}] {MIRROR} trixie-backports main\n"
        );
        let r = root.display();
        let conf = format!(
            "Dir \"{r}/\";\n\
             Dir::State::status \"{r}/var/lib/dpkg/status\";\n\
             Dir::Etc \"{r}/etc/apt/\";\n\
             Dir::Etc::Parts \"{r}/etc/apt/apt.conf.d/\";\n\
             Dir::Etc::sourcelist \"{r}/etc/apt/sources.list\";\n\
             Dir::Etc::sourceparts \"{r}/etc/apt/sources.list.d/\";\n\
             Dir::Etc::preferences \"{r}/etc/apt/preferences\";\n\
             Dir::Etc::preferencesparts \"{r}/etc/apt/preferences.d/\";\n\
             APT::Architecture \"amd64\";\n\
             APT::Architectures {{ \"amd64\"; }};\n\
             APT::Install-Recommends \"false\";\n\
             Acquire::Languages \"none\";\n\
             Acquire::Retries \"3\";\n\
             Debug::NoLocking \"true\";\n"
        );
        write_if_changed(&root.join("etc/apt/sources.list"), &sources)?;
        write_if_changed(&root.join("apt.conf"), &conf)?;
        Ok(Self {
            root: root.to_owned(),
            updated: false,
        })
    }

    fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.env("APT_CONFIG", self.root.join("apt.conf"))
            .env("DEBIAN_FRONTEND", "noninteractive")
            .env("LC_ALL", "C");
        c
    }

    /// Holds the apt state for one operation that writes it. apt's own locking is off (it
    /// wants root for its lock files), so runs at once (`--jobs`, two harness processes) take
    /// turns through this `flock`; one process never holds it across two operations.
    fn exclusive(&self, progress: &mut dyn Progress) -> Result<std::fs::File, ImagesError> {
        crate::lock_file(
            &self.root.join(".lock"),
            "another run using the private apt state",
            progress,
        )
    }

    /// Fetches the package lists (once per provisioning run).
    pub fn update(&mut self, progress: &mut dyn Progress) -> Result<(), ImagesError> {
        if self.updated {
            return Ok(());
        }
        let _held = self.exclusive(progress)?;
        progress.step("fetching Debian trixie + trixie-backports package lists");
        let mut c = self.cmd("apt-get");
        c.args(["-q", "update"]);
        run_logged(c, "apt-get update (trixie, trixie-backports)", progress)?;
        self.updated = true;
        Ok(())
    }

    /// What apt knows of `spec` (`name` or `name/suite`), as the candidate it would pick.
    pub fn show(&self, spec: &str) -> Result<PackageInfo, ImagesError> {
        let mut c = self.cmd("apt-cache");
        c.args(["show", "--no-all-versions", spec]);
        let out = c.output().map_err(|e| ImagesError::Spawn {
            what: "apt-cache".into(),
            source: e,
        })?;
        if !out.status.success() {
            return Err(ImagesError::Package {
                package: spec.into(),
                why: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
        parse_show(&String::from_utf8_lossy(&out.stdout)).ok_or_else(|| ImagesError::Package {
            package: spec.into(),
            why: "apt-cache show printed no package record".into(),
        })
    }

    /// Downloads `specs` and their whole dependency closure (as an empty system would need)
    /// into the archive cache; returns the .deb paths of that closure.
    pub fn download_closure(
        &self,
        specs: &[String],
        progress: &mut dyn Progress,
    ) -> Result<Vec<PathBuf>, ImagesError> {
        let _held = self.exclusive(progress)?;
        let mut c = self.cmd("apt-get");
        c.args(["-q", "-s", "install"]).args(specs);
        let out = c.output().map_err(|e| ImagesError::Spawn {
            what: "apt-get".into(),
            source: e,
        })?;
        if !out.status.success() {
            return Err(ImagesError::Package {
                package: specs.join(" "),
                why: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
        let pkgs = parse_simulation(&String::from_utf8_lossy(&out.stdout));
        let mut c = self.cmd("apt-get");
        c.args(["-q", "-y", "--download-only", "install"])
            .args(specs);
        run_logged(
            c,
            &format!("downloading {} ({} packages)", specs.join(" "), pkgs.len()),
            progress,
        )?;
        pkgs.iter().map(|(n, v)| self.find_deb(n, v)).collect()
    }

    fn find_deb(&self, name: &str, version: &str) -> Result<PathBuf, ImagesError> {
        let dir = self.root.join("var/cache/apt/archives");
        // apt names files name_version_arch.deb with ':' escaped as %3a.
        let prefix = format!("{name}_{}_", version.replace(':', "%3a"));
        std::fs::read_dir(&dir)
            .map_err(|e| ImagesError::io("listing", &dir, e))?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .and_then(|f| f.to_str())
                    .is_some_and(|f| f.starts_with(&prefix) && f.ends_with(".deb"))
            })
            .ok_or_else(|| ImagesError::Package {
                package: format!("{name}={version}"),
                why: "the download left no .deb".into(),
            })
    }

    /// Downloads exactly the given `name=version` packages (no dependencies).
    pub fn download_exact(
        &self,
        pkgs: &[(String, String)],
        progress: &mut dyn Progress,
    ) -> Result<Vec<PathBuf>, ImagesError> {
        let _held = self.exclusive(progress)?;
        let dir = self.root.join("var/cache/apt/archives");
        let mut c = self.cmd("apt-get");
        c.current_dir(&dir).args(["-q", "download"]);
        c.args(pkgs.iter().map(|(n, v)| format!("{n}={v}")));
        run_logged(
            c,
            &format!(
                "downloading {}",
                pkgs.iter()
                    .map(|(n, _)| n.as_str())
                    .collect::<Vec<_>>()
                    .join(" ")
            ),
            progress,
        )?;
        pkgs.iter().map(|(n, v)| self.find_deb(n, v)).collect()
    }

    /// Follows Depends from `spec` through packages whose names start with one of `prefixes`
    /// (e.g. the kernel's linux-image/-binary/-modules split); returns name -> version.
    pub fn closure_by_prefix(
        &self,
        spec: &str,
        prefixes: &[&str],
    ) -> Result<BTreeMap<String, String>, ImagesError> {
        let mut out = BTreeMap::new();
        let mut seen = BTreeSet::new();
        let mut todo = vec![spec.to_owned()];
        while let Some(s) = todo.pop() {
            if !seen.insert(s.clone()) {
                continue;
            }
            let info = self.show(&s)?;
            for d in &info.depends {
                if prefixes.iter().any(|p| d.starts_with(p)) {
                    todo.push(d.clone());
                }
            }
            out.insert(info.name, info.version);
        }
        Ok(out)
    }
}

/// Unpacks `deb` into `root` with `dpkg-deb -x`.
pub fn extract(deb: &Path, root: &Path) -> Result<(), ImagesError> {
    let out = Command::new("dpkg-deb")
        .arg("-x")
        .arg(deb)
        .arg(root)
        .output()
        .map_err(|e| ImagesError::Spawn {
            what: "dpkg-deb".into(),
            source: e,
        })?;
    if !out.status.success() {
        return Err(ImagesError::Package {
            package: deb.display().to_string(),
            why: format!(
                "dpkg-deb -x failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    Ok(())
}

fn write_if_changed(p: &Path, content: &str) -> Result<(), ImagesError> {
    if std::fs::read_to_string(p).ok().as_deref() != Some(content) {
        std::fs::write(p, content).map_err(|e| ImagesError::io("writing", p, e))?;
    }
    Ok(())
}

/// Parses `apt-get -s install` output into (name, version) of every package it would install.
pub fn parse_simulation(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("Inst ")?;
            let mut it = rest.splitn(2, ' ');
            let name = it.next()?;
            let version = it.next()?.strip_prefix('(')?.split_whitespace().next()?;
            Some((name.to_owned(), version.to_owned()))
        })
        .collect()
}

/// Parses the first record of `apt-cache show` output.
pub fn parse_show(text: &str) -> Option<PackageInfo> {
    let record = text.split("\n\n").next()?;
    let mut name = None;
    let mut version = None;
    let mut depends = Vec::new();
    let mut section = String::new();
    for line in record.lines() {
        if let Some(v) = line.strip_prefix("Package: ") {
            name = Some(v.trim().to_owned());
        } else if let Some(v) = line.strip_prefix("Version: ") {
            version = Some(v.trim().to_owned());
        } else if let Some(v) = line.strip_prefix("Section: ") {
            section = v.trim().to_owned();
        } else if let Some(v) = line.strip_prefix("Depends: ") {
            depends = v
                .split(',')
                .filter_map(|alt| {
                    let first = alt.split('|').next()?.trim();
                    let name = first.split([' ', '(', ':']).next()?.trim();
                    (!name.is_empty()).then(|| name.to_owned())
                })
                .collect();
        }
    }
    Some(PackageInfo {
        name: name?,
        version: version?,
        depends,
        section,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_show_takes_first_alternatives_and_strips_versions() {
        let t = "Package: linux-image-7.3.4+deb13-amd64\nVersion: 7.3.4-1~bpo13+1\n\
                 Depends: dracut | initramfs-tools (>= 0.120), linux-base-7.3.4+deb13-amd64 (= 7.3.4-1~bpo13+1), kmod:any\n\
                 Section: kernel\nSize: 1900\n\nPackage: other\n";
        let p = parse_show(t).expect("record");
        assert_eq!(p.name, "linux-image-7.3.4+deb13-amd64");
        assert_eq!(p.version, "7.3.4-1~bpo13+1");
        assert_eq!(
            p.depends,
            vec!["dracut", "linux-base-7.3.4+deb13-amd64", "kmod"]
        );
        assert_eq!(p.section, "kernel");
    }

    #[test]
    fn parse_simulation_lists_installs_only() {
        let t = "NOTE: x\nInst libc6 (2.41-12 Debian:13.2/stable [amd64])\nInst qemu-system-x86 (1:11.1.3+ds-2~bpo13+1 Debian Backports:stable-backports [amd64])\nConf libc6 (2.41-12)\n";
        assert_eq!(
            parse_simulation(t),
            vec![
                ("libc6".to_owned(), "2.41-12".to_owned()),
                (
                    "qemu-system-x86".to_owned(),
                    "1:11.1.3+ds-2~bpo13+1".to_owned()
                )
            ]
        );
    }

    #[test]
    fn parse_show_without_version_is_none() {
        assert!(parse_show("Package: x\n").is_none());
    }
}
