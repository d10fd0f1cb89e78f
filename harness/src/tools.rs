//! The programs the harness runs besides QEMU: the two device servers (host binaries), the
//! statically linked guest agent and the chmu-tap TCG plugin (a shared library QEMU loads).
//!
//! Each is found, in this order: a flag (`--sdxi-server`, `--hmu-server`, `--agent`,
//! `--plugin`); an environment variable (`TIERBED_SDXI_SERVER`, `TIERBED_HMU_SERVER`,
//! `TIERBED_AGENT`, `TIERBED_PLUGIN`); then, when this harness runs from a source checkout
//! (its executable lies inside the workspace, as under `cargo run` and `cargo test`), built
//! with cargo into the checkout's own target directory (`target/tierbed`, so a harness started
//! by cargo never waits on its own cargo's lock, and never runs a stale server); otherwise an
//! installed layout: next to the harness executable, in `<prefix>/lib/tierbed/` (the prefix
//! being the parent of the executable's directory), and the device servers also on `PATH`.
//! The plugin is needed, and built, only when the CHMU feed is on. [`install`] makes such a
//! layout from a checkout.

use images::Progress;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Paths of the helper programs, and how each was found.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Tools {
    pub sdxi_server: PathBuf,
    pub hmu_server: PathBuf,
    pub agent: PathBuf,
    /// The chmu-tap TCG plugin (None when the CHMU feed is off).
    pub plugin: Option<PathBuf>,
    /// One line per helper: its path and where it came from.
    pub origins: Vec<String>,
}

/// Explicit helper paths (flags; each overrides its environment variable).
#[derive(Clone, Debug, Default)]
pub struct ToolPaths {
    pub sdxi_server: Option<PathBuf>,
    pub hmu_server: Option<PathBuf>,
    pub agent: Option<PathBuf>,
    pub plugin: Option<PathBuf>,
}

/// Errors locating or building the helpers.
#[derive(Debug, thiserror::Error)]
pub enum ToolsError {
    #[error("{what} not found (looked at {looked}); pass {flag} PATH or set {env}")]
    Missing {
        what: &'static str,
        looked: String,
        flag: &'static str,
        env: &'static str,
    },
    #[error("{what} {} (from {origin}) is not a file", path.display())]
    NotAFile {
        what: &'static str,
        path: PathBuf,
        origin: String,
    },
    #[error("cannot run cargo to build {what}")]
    Spawn {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("building {what} failed ({status}):\n{tail}")]
    Build {
        what: &'static str,
        status: String,
        tail: String,
    },
    #[error("`harness install` runs from a source checkout (cargo run --release -p harness -- install --prefix DIR)")]
    NotACheckout,
    #[error("installing {}", path.display())]
    Install {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// One helper program: what it is and where to look for it.
struct Helper {
    what: &'static str,
    file: &'static str,
    flag: &'static str,
    env: &'static str,
    /// A host program (also looked for on PATH, installed into `bin/`).
    host: bool,
}

const SDXI: Helper = Helper {
    what: "sdxi-server",
    file: "sdxi-server",
    flag: "--sdxi-server",
    env: "TIERBED_SDXI_SERVER",
    host: true,
};
const HMU: Helper = Helper {
    what: "cxl-hmu-server",
    file: "cxl-hmu-server",
    flag: "--hmu-server",
    env: "TIERBED_HMU_SERVER",
    host: true,
};
const AGENT: Helper = Helper {
    what: "the static guest agent",
    file: "guest-agent",
    flag: "--agent",
    env: "TIERBED_AGENT",
    host: false,
};
const PLUGIN: Helper = Helper {
    what: "the chmu-tap TCG plugin",
    file: "libchmu_tap.so",
    flag: "--plugin",
    env: "TIERBED_PLUGIN",
    host: false,
};

/// The workspace root this harness was built from, if its sources are still there.
pub fn workspace_root() -> Option<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent()?.to_owned();
    root.join("device-sdxi/Cargo.toml")
        .is_file()
        .then_some(root)
}

/// The checkout this harness runs from: its executable lies inside the workspace it was
/// built from (or inside `$CARGO_TARGET_DIR`). An installed copy is not run from a checkout,
/// even when the sources are still on the machine.
pub fn checkout() -> Option<PathBuf> {
    let root = workspace_root()?;
    // The directory, not the file: a rebuild may have replaced the running executable.
    let exe = std::env::current_exe()
        .ok()?
        .parent()?
        .canonicalize()
        .ok()?;
    let inside = |d: &Path| d.canonicalize().is_ok_and(|d| exe.starts_with(d));
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from);
    (inside(&root) || target.as_deref().is_some_and(inside)).then_some(root)
}

const HOST_TARGET: &str = "x86_64-unknown-linux-gnu";

fn cargo(root: &Path) -> Command {
    let mut c = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    c.current_dir(root)
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET");
    c
}

fn run_build(
    mut c: Command,
    what: &'static str,
    progress: &mut dyn Progress,
) -> Result<(), ToolsError> {
    progress.step(&format!("building {what} (cargo, release)"));
    let out = c
        .output()
        .map_err(|source| ToolsError::Spawn { what, source })?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = err.lines().collect();
        return Err(ToolsError::Build {
            what,
            status: out.status.to_string(),
            tail: lines[lines.len().saturating_sub(30)..].join("\n"),
        });
    }
    Ok(())
}

/// Builds `helpers` in checkout `root`; returns where each was built.
fn build(
    root: &Path,
    helpers: &[&Helper],
    progress: &mut dyn Progress,
) -> Result<Vec<PathBuf>, ToolsError> {
    let t = root.join("target/tierbed");
    let has = |h: &Helper| helpers.iter().any(|x| x.file == h.file);
    let servers: Vec<&str> = [&SDXI, &HMU]
        .into_iter()
        .filter(|h| has(h))
        .flat_map(|h| ["--bin", h.file])
        .collect();
    if !servers.is_empty() {
        let mut c = cargo(root);
        c.args(["build", "--release"])
            .args(&servers)
            .arg("--target-dir")
            .arg(&t);
        run_build(c, "the device servers", progress)?;
    }
    if has(&PLUGIN) {
        let mut c = cargo(root);
        c.args([
            "build",
            "--release",
            "-p",
            "chmu-tap",
            "--lib",
            "--target-dir",
        ])
        .arg(&t);
        run_build(c, PLUGIN.what, progress)?;
    }
    if has(&AGENT) {
        let mut c = cargo(root);
        c.args([
            "build",
            "--release",
            "-p",
            "guest-agent",
            "--bin",
            "guest-agent",
            "--target",
            HOST_TARGET,
            "--target-dir",
        ])
        .arg(&t)
        .env("CARGO_ENCODED_RUSTFLAGS", "-Ctarget-feature=+crt-static");
        run_build(c, AGENT.what, progress)?;
    }
    Ok(helpers
        .iter()
        .map(|h| {
            if h.file == AGENT.file {
                t.join(HOST_TARGET).join("release").join(h.file)
            } else {
                t.join("release").join(h.file)
            }
        })
        .collect())
}

/// Where an installed harness looks for `h`: next to itself, in `<prefix>/lib/tierbed`, and
/// (host programs) on PATH.
fn installed_candidates(h: &Helper) -> Vec<(PathBuf, &'static str)> {
    let mut v = Vec::new();
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_owned))
    {
        v.push((dir.join(h.file), "next to the harness"));
        if let Some(prefix) = dir.parent() {
            v.push((
                prefix.join("lib/tierbed").join(h.file),
                "in the install prefix",
            ));
        }
    }
    if h.host {
        if let Some(path) = std::env::var_os("PATH") {
            v.extend(std::env::split_paths(&path).map(|d| (d.join(h.file), "on PATH")));
        }
    }
    v
}

/// Locates (from a checkout: builds) the helpers; the plugin only when `need_plugin`.
pub fn ensure(
    paths: &ToolPaths,
    need_plugin: bool,
    progress: &mut dyn Progress,
) -> Result<Tools, ToolsError> {
    let mut wanted: Vec<(&Helper, Option<&PathBuf>)> = vec![
        (&SDXI, paths.sdxi_server.as_ref()),
        (&HMU, paths.hmu_server.as_ref()),
        (&AGENT, paths.agent.as_ref()),
    ];
    if need_plugin {
        wanted.push((&PLUGIN, paths.plugin.as_ref()));
    }
    let mut found: Vec<Option<(PathBuf, String)>> = wanted
        .iter()
        .map(|(h, flag)| match (flag, std::env::var_os(h.env)) {
            (Some(p), _) => Some(((*p).clone(), h.flag.to_owned())),
            (None, Some(p)) => Some((PathBuf::from(p), format!("${}", h.env))),
            (None, None) => None,
        })
        .collect();
    let root = checkout();
    if let Some(root) = &root {
        let missing: Vec<&Helper> = wanted
            .iter()
            .zip(&found)
            .filter(|(_, f)| f.is_none())
            .map(|((h, _), _)| *h)
            .collect();
        let mut built = build(root, &missing, progress)?.into_iter();
        for f in found.iter_mut().filter(|f| f.is_none()) {
            *f = built
                .next()
                .map(|p| (p, "built from the checkout".to_owned()));
        }
    }
    let mut out = Vec::new();
    let mut origins = Vec::new();
    for ((h, _), f) in wanted.iter().zip(found) {
        let (path, origin) = match f {
            Some(f) => f,
            None => {
                let cands = installed_candidates(h);
                match cands.iter().find(|(p, _)| p.is_file()) {
                    Some((p, o)) => (p.clone(), (*o).to_owned()),
                    None => {
                        return Err(ToolsError::Missing {
                            what: h.what,
                            looked: looked_at(&cands),
                            flag: h.flag,
                            env: h.env,
                        })
                    }
                }
            }
        };
        if !path.is_file() {
            return Err(ToolsError::NotAFile {
                what: h.what,
                path,
                origin,
            });
        }
        origins.push(format!("{} {} ({origin})", h.file, path.display()));
        out.push(path);
    }
    let mut it = out.into_iter();
    let mut next = || it.next().unwrap_or_default();
    Ok(Tools {
        sdxi_server: next(),
        hmu_server: next(),
        agent: next(),
        plugin: need_plugin.then(next),
        origins,
    })
}

fn looked_at(cands: &[(PathBuf, &str)]) -> String {
    let shown: Vec<String> = cands
        .iter()
        .filter(|(_, o)| *o != "on PATH")
        .map(|(p, _)| p.display().to_string())
        .collect();
    let on_path = cands.iter().any(|(_, o)| *o == "on PATH");
    format!(
        "{}{}",
        shown.join(", "),
        if on_path { " and PATH" } else { "" }
    )
}

/// Copies `from` to `to` (through a temporary name, so a running copy is replaced safely)
/// with `mode`.
fn install_file(from: &Path, to: &Path, mode: u32) -> Result<(), ToolsError> {
    let err = |source| ToolsError::Install {
        path: to.to_owned(),
        source,
    };
    let tmp = to.with_extension("tierbed-new");
    std::fs::copy(from, &tmp).map_err(err)?;
    std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(mode))
        .map_err(err)?;
    std::fs::rename(&tmp, to).map_err(err)
}

/// Builds every helper from the checkout this harness runs from and installs them with
/// `harness` (this executable, or the given one) into `prefix`: the host programs in
/// `bin/`, the guest agent and the plugin in `lib/tierbed/`. Returns the installed files.
pub fn install(
    prefix: &Path,
    harness: Option<&Path>,
    progress: &mut dyn Progress,
) -> Result<Vec<PathBuf>, ToolsError> {
    let root = checkout().ok_or(ToolsError::NotACheckout)?;
    let helpers = [&SDXI, &HMU, &AGENT, &PLUGIN];
    let built = build(&root, &helpers, progress)?;
    // This very executable, even when a rebuild has replaced its file meanwhile.
    let exe = harness.map_or_else(|| PathBuf::from("/proc/self/exe"), Path::to_owned);
    let (bin, lib) = (prefix.join("bin"), prefix.join("lib/tierbed"));
    for d in [&bin, &lib] {
        std::fs::create_dir_all(d).map_err(|source| ToolsError::Install {
            path: d.clone(),
            source,
        })?;
    }
    let mut files = vec![(exe, bin.join("harness"))];
    for (h, from) in helpers.iter().zip(built) {
        let dir = if h.host { &bin } else { &lib };
        files.push((from, dir.join(h.file)));
    }
    let mut done = Vec::new();
    for (from, to) in files {
        install_file(&from, &to, 0o755)?;
        progress.step(&format!("installed {}", to.display()));
        done.push(to);
    }
    Ok(done)
}
