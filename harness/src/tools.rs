//! The programs the harness runs besides QEMU: the two device servers (host binaries) and the
//! statically linked guest agent. From a source checkout they are built with cargo into their
//! own target directory (`target/tierbed`), so a harness started by `cargo run` or
//! `cargo test` never waits on its own cargo's lock, and never runs a stale server.

use crate::Progress;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Paths of the helper programs.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Tools {
    pub sdxi_server: PathBuf,
    pub hmu_server: PathBuf,
    pub agent: PathBuf,
    /// The chmu-tap TCG plugin (None outside a source checkout).
    pub plugin: Option<PathBuf>,
}

/// Errors locating or building the helpers.
#[derive(Debug, thiserror::Error)]
pub enum ToolsError {
    #[error("{what} was not found at {} and there is no source checkout to build it from; pass its path", path.display())]
    Missing { what: &'static str, path: PathBuf },
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
}

/// The workspace root this harness was built from, if its sources are still there.
pub fn workspace_root() -> Option<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent()?.to_owned();
    root.join("device-sdxi/Cargo.toml")
        .is_file()
        .then_some(root)
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

/// Builds (or, with explicit paths, checks) the helpers.
pub fn ensure(
    sdxi: Option<&Path>,
    hmu: Option<&Path>,
    agent: Option<&Path>,
    progress: &mut dyn Progress,
) -> Result<Tools, ToolsError> {
    let root = workspace_root();
    let target = root.as_ref().map(|r| r.join("target/tierbed"));
    let need_servers = sdxi.is_none() || hmu.is_none();
    if let (Some(r), Some(t), true) = (&root, &target, need_servers) {
        let mut c = cargo(r);
        c.args([
            "build",
            "--release",
            "--bin",
            "sdxi-server",
            "--bin",
            "cxl-hmu-server",
            "--target-dir",
        ])
        .arg(t);
        run_build(c, "the device servers", progress)?;
    }
    if let (Some(r), Some(t)) = (&root, &target) {
        let mut c = cargo(r);
        c.args([
            "build",
            "--release",
            "-p",
            "chmu-tap",
            "--lib",
            "--target-dir",
        ])
        .arg(t);
        run_build(c, "the chmu-tap TCG plugin", progress)?;
    }
    if let (Some(r), Some(t), None) = (&root, &target, agent) {
        let mut c = cargo(r);
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
        .arg(t)
        .env("CARGO_ENCODED_RUSTFLAGS", "-Ctarget-feature=+crt-static");
        run_build(c, "the static guest agent", progress)?;
    }
    let pick = |given: Option<&Path>,
                built: Option<PathBuf>,
                what: &'static str|
     -> Result<PathBuf, ToolsError> {
        let p = given
            .map(Path::to_owned)
            .or(built)
            .unwrap_or_else(|| PathBuf::from(what));
        if p.is_file() {
            Ok(p)
        } else {
            Err(ToolsError::Missing { what, path: p })
        }
    };
    Ok(Tools {
        sdxi_server: pick(
            sdxi,
            target.as_ref().map(|t| t.join("release/sdxi-server")),
            "sdxi-server",
        )?,
        hmu_server: pick(
            hmu,
            target.as_ref().map(|t| t.join("release/cxl-hmu-server")),
            "cxl-hmu-server",
        )?,
        agent: pick(
            agent,
            target
                .as_ref()
                .map(|t| t.join(HOST_TARGET).join("release/guest-agent")),
            "guest-agent",
        )?,
        plugin: target
            .map(|t| t.join("release/libchmu_tap.so"))
            .filter(|p| p.is_file()),
    })
}
