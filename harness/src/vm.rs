//! Boots the test bed: device servers on sockets the harness creates, then QEMU with two NUMA
//! nodes (node 1 memory-only, in a lower memory tier through HMAT), a virtual IOMMU and both
//! devices as `vfio-user-pci`; then talks to the guest agent on the second serial port.
//!
//! Every wait has a deadline and watches the child processes and Ctrl-C; dropping a [`Vm`]
//! kills the whole process tree (each child leads its own process group, and dies with the
//! harness through PR_SET_PDEATHSIG) and removes sockets and guest-RAM files.
//!
//! Privacy: sockets and guest RAM sit in directories of their own, made exclusively with
//! random names and mode 0700 ([`crate::private_dir`]); the RAM files are created here with
//! mode 0600 before QEMU opens them, and every child runs with umask 077, so nothing a run
//! makes is readable by other local users.

use crate::config::{Accel, GpaRange, VmConfig};
use crate::tools::Tools;
use guest_agent::protocol::{AgentMessage, HostMessage, Outcome, Reply, Request, PROTOCOL_VERSION};
use images::Images;
use serde::Serialize;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};

mod qemu;
use qemu::{plugin_arg, shell_words};
pub use qemu::{qemu_args, Boot, REPRODUCIBLE_RTC_BASE};

/// Why a VM run could not proceed (infrastructure, not a test verdict).
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("{what} {}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start {name}")]
    Spawn {
        name: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{name} exited early ({status}); see {}", log.display())]
    ChildExited {
        name: &'static str,
        status: String,
        log: PathBuf,
    },
    #[error("timed out after {0:?} waiting for {1}")]
    Timeout(Duration, String),
    #[error("interrupted")]
    Interrupted,
    #[error("guest agent protocol: {0}")]
    Protocol(String),
    #[error("guest agent failed the request: {0}")]
    Agent(String),
    #[error("refusing to use {} for run directories: {why}", path.display())]
    Refused { path: PathBuf, why: String },
}

/// Files of one run, kept for the user after the run (logs, results).
#[derive(Clone, Debug, Serialize)]
pub struct RunDir {
    pub dir: PathBuf,
}

impl RunDir {
    /// A new directory `<base>/<time>-<pid>-<random>`, mode 0700, made exclusively; `base`
    /// is created (0700) if missing, and refused if another user could change it.
    pub fn create(base: &Path) -> Result<Self, VmError> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| VmError::Io {
                what: "creating run directory",
                path,
                source,
            }
        };
        std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700)
            .create(base)
            .map_err(io(base))?;
        if let Some(why) = crate::private_dir::unsafe_parent(base) {
            return Err(VmError::Refused {
                path: base.to_owned(),
                why,
            });
        }
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let pid = std::process::id();
        let dir = crate::private_dir::create_exclusive(base, || {
            Ok(format!(
                "{stamp}-{pid}-{}",
                crate::private_dir::random_suffix(6)?
            ))
        })
        .map_err(io(base))?;
        Ok(Self { dir })
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The last `n` lines of each log, for failure reports.
    pub fn log_tails(&self, n: usize) -> String {
        let mut out = String::new();
        for log in [
            "qemu.log",
            "console.log",
            "sdxi-server.log",
            "cxl-hmu-server.log",
        ] {
            let p = self.path(log);
            let Ok(text) = std::fs::read_to_string(&p) else {
                continue;
            };
            let lines: Vec<&str> = text.lines().collect();
            out.push_str(&format!(
                "---- {} (last {} lines) ----\n",
                p.display(),
                n.min(lines.len())
            ));
            for l in &lines[lines.len().saturating_sub(n)..] {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }
}

/// The accelerator chosen for a run, and why.
#[derive(Clone, Debug, Serialize)]
pub struct AccelChoice {
    pub accel: &'static str,
    pub reason: String,
}

/// Resolves `auto` with the KVM probe.
pub fn choose_accel(a: Accel) -> Result<AccelChoice, String> {
    let probe = || crate::kvm::probe(Duration::from_secs(3));
    match a {
        Accel::Tcg => Ok(AccelChoice {
            accel: "tcg",
            reason: "requested".into(),
        }),
        Accel::Kvm => probe()
            .map(|()| AccelChoice {
                accel: "kvm",
                reason: "requested; probe guest ran".into(),
            })
            .map_err(|e| format!("--accel kvm: KVM cannot run guests here: {e}")),
        Accel::Auto => Ok(match probe() {
            Ok(()) => AccelChoice {
                accel: "kvm",
                reason: "probe guest ran under KVM".into(),
            },
            Err(e) => AccelChoice {
                accel: "tcg",
                reason: format!("KVM probe failed: {e}"),
            },
        }),
    }
}

struct Proc {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

/// What a finished run leaves: exit statuses and device counters.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Teardown {
    pub qemu_exit: Option<String>,
    pub counters: serde_json::Map<String, serde_json::Value>,
    /// Processes still alive that belong to this run (must be empty).
    pub stray_processes: Vec<u32>,
    /// Processes killed as a planned fault while the run went on: (name, exit status).
    pub killed: Vec<(String, String)>,
}

/// A running test-bed VM.
pub struct Vm {
    run: RunDir,
    sock_dir: PathBuf,
    ram_dir: PathBuf,
    /// The locks of `sock_dir` and `ram_dir`, held while the VM lives; removed with them.
    private: Vec<crate::private_dir::PrivateDir>,
    procs: Vec<Proc>,
    agent_tx: Option<UnixStream>,
    agent_rx: Option<Receiver<std::io::Result<String>>>,
    interrupted: Arc<AtomicBool>,
    next_id: u64,
    started: Instant,
    pub hello_after: Duration,
    pub node1: GpaRange,
    /// (node, gpa, size, file offset) of guest RAM, read through `node<N>.ram`.
    ram_map: Vec<(u32, u64, u64, u64)>,
    /// `node0.ram` and `node1.ram`, opened on the first read.
    ram_files: std::sync::OnceLock<[std::io::Result<std::fs::File>; 2]>,
    /// The guest console, when it is interactive.
    console: Option<UnixStream>,
    /// Children whose death is a planned fault the run goes on without.
    tolerated: Vec<String>,
}

/// Directories of this user's running test beds' device control sockets (`harness inspect`
/// looks here): live runs only, never the leftovers of a killed one.
pub fn running_control_dirs() -> Vec<PathBuf> {
    crate::private_dir::live(crate::private_dir::SOCKETS)
        .into_iter()
        .filter(|p| p.join("sdxi.ctl").exists())
        .collect()
}

/// Sends one control request to a device server's control socket.
pub fn control_request(
    socket: &Path,
    request: &serde_json::Value,
    timeout: Duration,
) -> std::io::Result<serde_json::Value> {
    let mut s = UnixStream::connect(socket)?;
    s.set_read_timeout(Some(timeout))?;
    let mut line = serde_json::to_vec(request).map_err(std::io::Error::other)?;
    line.push(b'\n');
    s.write_all(&line)?;
    let mut answer = String::new();
    BufReader::new(s).read_line(&mut answer)?;
    serde_json::from_str(&answer).map_err(std::io::Error::other)
}

impl crate::migration::GuestRam for Vm {
    fn node_of(&self, gpa: u64) -> Option<u32> {
        self.ram_map
            .iter()
            .find(|(_, base, size, _)| (*base..base + size).contains(&gpa))
            .map(|r| r.0)
    }

    fn read(&self, gpa: u64, buf: &mut [u8]) -> std::io::Result<()> {
        let end = gpa + buf.len() as u64;
        let Some(&(node, base, _, off)) = self
            .ram_map
            .iter()
            .find(|(_, base, size, _)| *base <= gpa && end <= base + size)
        else {
            return Err(std::io::Error::other(format!(
                "{gpa:#x}+{:#x} is not inside one RAM range",
                buf.len()
            )));
        };
        let files = self.ram_files.get_or_init(|| {
            [0, 1].map(|n| std::fs::File::open(self.ram_dir.join(format!("node{n}.ram"))))
        });
        match files.get(node as usize) {
            Some(Ok(f)) => std::os::unix::fs::FileExt::read_exact_at(f, buf, off + gpa - base),
            Some(Err(e)) => Err(std::io::Error::new(
                e.kind(),
                format!("node{node}.ram: {e}"),
            )),
            None => Err(std::io::Error::other(format!(
                "no RAM file for node {node}"
            ))),
        }
    }
}

impl std::fmt::Debug for Vm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vm")
            .field("run", &self.run.dir)
            .finish_non_exhaustive()
    }
}

fn private_dir(parent: &Path, prefix: &str) -> Result<crate::private_dir::PrivateDir, VmError> {
    crate::private_dir::PrivateDir::create(parent, prefix).map_err(|source| VmError::Io {
        what: "creating a private directory in",
        path: parent.to_owned(),
        source,
    })
}

/// Creates `path` for the harness's own output, readable by its owner only.
pub fn private_file(path: &Path) -> std::io::Result<File> {
    std::os::unix::fs::OpenOptionsExt::mode(
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true),
        0o600,
    )
    .open(path)
}

fn log_file(p: &Path) -> Result<(File, File), VmError> {
    let f = private_file(p).map_err(|source| VmError::Io {
        what: "creating log",
        path: p.to_owned(),
        source,
    })?;
    let g = f.try_clone().map_err(|source| VmError::Io {
        what: "duplicating log fd",
        path: p.to_owned(),
        source,
    })?;
    Ok((f, g))
}

/// Spawns a child in its own process group that dies with the harness; `listen_fd` becomes
/// its fd 3.
fn spawn(
    name: &'static str,
    mut cmd: Command,
    log: &Path,
    listen_fd: Option<RawFd>,
) -> Result<Proc, VmError> {
    let (out, err) = log_file(log)?;
    cmd.stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0);
    // SAFETY: the closure runs between fork and exec and only calls the async-signal-safe
    // prctl and umask (what the child creates -- sockets, counters, QEMU's files -- is its
    // owner's only).
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            libc::umask(0o077);
            Ok(())
        });
    }
    if let Some(fd) = listen_fd {
        vfio_device::cli::pass_listener_as_fd3(&mut cmd, fd);
    }
    debug!(?cmd, "spawning {name}");
    let child = cmd
        .spawn()
        .map_err(|source| VmError::Spawn { name, source })?;
    Ok(Proc {
        name,
        child,
        log: log.to_owned(),
    })
}

/// A device server's command with what every server gets: its listener as fd 3, logs,
/// counters (`<name>-counters.json`), a control socket (`<name>.ctl`) and, if asked, a trace.
fn server_command(
    bin: &Path,
    name: &str,
    cfg: &VmConfig,
    run: &RunDir,
    sock_dir: &Path,
) -> Command {
    let mut c = Command::new(bin);
    c.args(["--fd", "3", "--log", "info", "--counters"])
        .arg(run.path(&format!("{name}-counters.json")))
        .arg("--control")
        .arg(sock_dir.join(format!("{name}.ctl")));
    if !cfg.trace.is_empty() {
        c.arg("--trace-file")
            .arg(run.path(&format!("{name}-trace.log")))
            .args(["--trace", &cfg.trace]);
    }
    c
}

fn bind(path: &Path) -> Result<UnixListener, VmError> {
    UnixListener::bind(path).map_err(|source| VmError::Io {
        what: "listening on",
        path: path.to_owned(),
        source,
    })
}

impl Vm {
    /// Starts servers and QEMU, and waits for the guest agent's hello.
    pub fn start(
        cfg: &VmConfig,
        images: &Images,
        tools: &Tools,
        accel: &str,
        run: &RunDir,
        interrupted: Arc<AtomicBool>,
    ) -> Result<Self, VmError> {
        Self::start_with(cfg, &Boot::Agent, images, tools, accel, run, interrupted)
    }

    /// Starts servers and QEMU for `boot`; with the agent, waits for its hello.
    pub fn start_with(
        cfg: &VmConfig,
        boot: &Boot,
        images: &Images,
        tools: &Tools,
        accel: &str,
        run: &RunDir,
        interrupted: Arc<AtomicBool>,
    ) -> Result<Self, VmError> {
        let started = Instant::now();
        let mut vm = Self::prepare(cfg, run, interrupted, started)?;
        let feed = vm.start_servers(cfg, tools)?;
        let agent_l = bind(&vm.sock_dir.join("agent.sock"))?;
        let console_l = match boot {
            Boot::Bringup { console: true, .. } => Some(bind(&vm.sock_dir.join("console.sock"))?),
            _ => None,
        };
        agent_l
            .set_nonblocking(true)
            .map_err(|source| VmError::Io {
                what: "configuring",
                path: vm.sock_dir.join("agent.sock"),
                source,
            })?;
        vm.start_qemu(cfg, boot, images, accel, feed)?;
        let deadline = started + Duration::from_secs(cfg.boot_timeout_s);
        if let Some(l) = &console_l {
            vm.console = Some(vm.accept(l, deadline)?);
        }
        vm.connect_agent(&agent_l, deadline)?;
        if !matches!(boot, Boot::Bringup { .. }) {
            vm.await_hello(deadline)?;
        }
        Ok(vm)
    }

    /// The private socket and guest-RAM directories (after reclaiming what killed runs left)
    /// and the RAM files, owner-only, which QEMU then sizes; no process yet.
    fn prepare(
        cfg: &VmConfig,
        run: &RunDir,
        interrupted: Arc<AtomicBool>,
        started: Instant,
    ) -> Result<Self, VmError> {
        let node1 = cfg
            .node1_range()
            .map_err(|e| VmError::Protocol(e.to_string()))?;
        // Every boot first reclaims what killed runs left (callers that report progress have
        // done so already; this covers every other way in).
        for (dir, strays) in crate::private_dir::reclaim_stale().removed {
            info!(dir = %dir.display(), ?strays, "removed what a killed run left behind");
        }
        let sock = private_dir(&std::env::temp_dir(), crate::private_dir::SOCKETS)?;
        let shm = Path::new("/dev/shm");
        let tmp = std::env::temp_dir();
        let ram = private_dir(
            if shm.is_dir() { shm } else { &tmp },
            crate::private_dir::RAM,
        )?;
        // QEMU uses existing files (and sizes them), so they are made here, owner-only.
        for i in 0..2 {
            let p = ram.path().join(format!("node{i}.ram"));
            std::os::unix::fs::OpenOptionsExt::mode(
                std::fs::OpenOptions::new().write(true).create_new(true),
                0o600,
            )
            .open(&p)
            .map_err(|source| VmError::Io {
                what: "creating guest RAM file",
                path: p.clone(),
                source,
            })?;
        }
        Ok(Self {
            run: run.clone(),
            sock_dir: sock.path().to_owned(),
            ram_dir: ram.path().to_owned(),
            private: vec![sock, ram],
            procs: Vec::new(),
            agent_tx: None,
            agent_rx: None,
            interrupted,
            next_id: 1,
            started,
            hello_after: Duration::ZERO,
            node1,
            ram_map: cfg
                .ram_map()
                .map_err(|e| VmError::Protocol(e.to_string()))?,
            console: None,
            tolerated: Vec::new(),
            ram_files: std::sync::OnceLock::new(),
        })
    }

    /// Starts both device servers, each on a socket created here and handed over as fd 3;
    /// with the CHMU feed on, also the feed socket the plugin will connect to (fd 4 of the
    /// CXL server), returned with the plugin's path.
    fn start_servers(
        &mut self,
        cfg: &VmConfig,
        tools: &Tools,
    ) -> Result<Option<(UnixListener, PathBuf)>, VmError> {
        let run = self.run.clone();
        let sdxi_l = bind(&self.sock_dir.join("sdxi.sock"))?;
        let mut c = server_command(&tools.sdxi_server, "sdxi", cfg, &run, &self.sock_dir);
        c.args(["--max-cxt", &cfg.sdxi_max_cxt.to_string()]);
        if cfg.sdxi_out_of_order {
            c.arg("--force-out-of-order");
        }
        if let Some(d) = cfg.sdxi_doorbell {
            c.args(["--doorbell", d.as_arg()]);
        }
        self.procs.push(spawn(
            "sdxi-server",
            c,
            &run.path("sdxi-server.log"),
            Some(sdxi_l.as_raw_fd()),
        )?);
        drop(sdxi_l);
        let hmu_l = bind(&self.sock_dir.join("hmu.sock"))?;
        let mut c = server_command(&tools.hmu_server, "cxl-hmu", cfg, &run, &self.sock_dir);
        c.args([
            "--hpa-base",
            &format!("{:#x}", self.node1.base),
            "--size",
            &format!("{:#x}", self.node1.size),
            "--instances",
            &cfg.chmu_instances.to_string(),
        ]);
        let feed = if cfg.chmu_feed {
            let plugin = tools.plugin.clone().ok_or_else(|| {
                VmError::Protocol(
                    "chmu_feed needs the chmu-tap plugin (a source checkout builds it)".into(),
                )
            })?;
            let l = bind(&self.sock_dir.join("feed.sock"))?;
            let clock = match cfg.chmu_clock {
                crate::config::ChmuClock::Host => "host",
                crate::config::ChmuClock::Insns => "records",
            };
            c.args(["--feed-fd", "4", "--clock", clock]);
            vfio_device::cli::pass_fd(&mut c, l.as_raw_fd(), 4);
            Some((l, plugin))
        } else {
            None
        };
        self.procs.push(spawn(
            "cxl-hmu-server",
            c,
            &run.path("cxl-hmu-server.log"),
            Some(hmu_l.as_raw_fd()),
        )?);
        drop(hmu_l);
        Ok(feed)
    }

    /// Starts QEMU (with the chmu-tap plugin when `feed` is given), writing its command line
    /// to `qemu.cmdline` in the run directory.
    fn start_qemu(
        &mut self,
        cfg: &VmConfig,
        boot: &Boot,
        images: &Images,
        accel: &str,
        feed: Option<(UnixListener, PathBuf)>,
    ) -> Result<(), VmError> {
        let run = self.run.clone();
        let mut args = qemu_args(
            cfg,
            boot,
            images,
            accel,
            &self.ram_dir,
            &self.sock_dir,
            &run.path("console.log"),
        );
        if let Some((l, plugin)) = feed {
            args.push("-plugin".into());
            args.push(plugin_arg(cfg, &plugin, &self.sock_dir, self.node1));
            drop(l);
        }
        args.extend(crate::kernel_loop::qemu_extra_args(
            cfg,
            images,
            &run,
            &self.sock_dir,
        ));
        std::fs::write(run.path("qemu.cmdline"), shell_words(&images.qemu, &args)).map_err(
            |source| VmError::Io {
                what: "writing",
                path: run.path("qemu.cmdline"),
                source,
            },
        )?;
        let mut c = images.qemu.command();
        c.args(&args);
        self.procs
            .push(spawn("qemu", c, &run.path("qemu.log"), None)?);
        info!(accel, control = %self.sock_dir.display(), "QEMU started; device control sockets in this directory");
        Ok(())
    }

    /// Accepts the guest agent's serial connection and starts the thread that reads its
    /// lines.
    fn connect_agent(&mut self, agent_l: &UnixListener, deadline: Instant) -> Result<(), VmError> {
        let stream = self.accept(agent_l, deadline)?;
        let tx = stream.try_clone().map_err(|source| VmError::Io {
            what: "cloning agent socket",
            path: self.sock_dir.join("agent.sock"),
            source,
        })?;
        let (sender, receiver) = mpsc::channel();
        std::thread::Builder::new()
            .name("agent-reader".into())
            .spawn(move || {
                for line in BufReader::new(stream).lines() {
                    let end = line.is_err();
                    if sender.send(line).is_err() || end {
                        break;
                    }
                }
            })
            .map_err(|source| VmError::Spawn {
                name: "agent reader thread",
                source,
            })?;
        self.agent_tx = Some(tx);
        self.agent_rx = Some(receiver);
        Ok(())
    }

    /// Waits for the agent's hello and checks its protocol version.
    fn await_hello(&mut self, deadline: Instant) -> Result<(), VmError> {
        match self.next_message(deadline, "the guest agent's hello")? {
            AgentMessage::Hello {
                v, kernel_release, ..
            } => {
                if v != PROTOCOL_VERSION {
                    return Err(VmError::Protocol(format!(
                        "agent speaks protocol {v}, harness {PROTOCOL_VERSION}"
                    )));
                }
                self.hello_after = self.started.elapsed();
                info!(kernel = %kernel_release, after = ?self.hello_after, "guest agent ready");
                Ok(())
            }
            other => Err(VmError::Protocol(format!("expected hello, got {other:?}"))),
        }
    }

    /// Fails if a child died or the user interrupted.
    fn check_alive(&mut self) -> Result<(), VmError> {
        if self.interrupted.load(Ordering::Relaxed) {
            return Err(VmError::Interrupted);
        }
        for p in &mut self.procs {
            if self.tolerated.iter().any(|t| t == p.name) {
                continue;
            }
            if let Ok(Some(st)) = p.child.try_wait() {
                return Err(VmError::ChildExited {
                    name: p.name,
                    status: st.to_string(),
                    log: p.log.clone(),
                });
            }
        }
        Ok(())
    }

    fn accept(&mut self, l: &UnixListener, deadline: Instant) -> Result<UnixStream, VmError> {
        loop {
            match l.accept() {
                Ok((s, _)) => {
                    s.set_nonblocking(false).map_err(|source| VmError::Io {
                        what: "configuring",
                        path: self.sock_dir.join("agent.sock"),
                        source,
                    })?;
                    return Ok(s);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(source) => {
                    return Err(VmError::Io {
                        what: "accepting on",
                        path: self.sock_dir.join("agent.sock"),
                        source,
                    })
                }
            }
            self.check_alive()?;
            let now = Instant::now();
            if now >= deadline {
                return Err(VmError::Timeout(
                    deadline - self.started,
                    "QEMU to open the agent serial port".into(),
                ));
            }
            let mut pfd = libc::pollfd {
                fd: l.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let wait = (deadline - now).min(Duration::from_millis(200)).as_millis() as libc::c_int;
            // SAFETY: one valid pollfd for the duration of the call.
            unsafe { libc::poll(&mut pfd, 1, wait) };
        }
    }

    pub fn next_message(&mut self, deadline: Instant, what: &str) -> Result<AgentMessage, VmError> {
        loop {
            self.check_alive()?;
            let now = Instant::now();
            if now >= deadline {
                return Err(VmError::Timeout(
                    deadline.saturating_duration_since(self.started),
                    what.to_owned(),
                ));
            }
            let rx = self
                .agent_rx
                .as_ref()
                .ok_or_else(|| VmError::Protocol("agent channel closed".into()))?;
            match rx.recv_timeout((deadline - now).min(Duration::from_millis(200))) {
                Ok(Ok(line)) => {
                    let line = line.trim();
                    if line.is_empty() {
                        continue;
                    }
                    match serde_json::from_str::<AgentMessage>(line) {
                        Ok(m) => return Ok(m),
                        // Bytes before the agent opens the port (e.g. a getty) are skipped.
                        Err(e) => {
                            warn!(error = %e, line, "ignoring a non-protocol line from the guest")
                        }
                    }
                }
                Ok(Err(e)) => {
                    return Err(VmError::Protocol(format!("reading the agent port: {e}")))
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(VmError::Protocol("the guest closed the agent port".into()))
                }
            }
        }
    }

    /// Process fault: SIGKILLs the named child (its whole process group).
    pub fn kill_child(&mut self, name: &str) -> bool {
        match self.procs.iter().find(|p| p.name == name) {
            Some(p) => {
                warn!(name, "killing on request (process fault)");
                // SAFETY: kill(2) of our child's process group.
                unsafe { libc::kill(-(p.child.id() as libc::pid_t), libc::SIGKILL) };
                true
            }
            None => false,
        }
    }

    /// The interactive guest console (once; `Boot::Bringup` with `console`).
    pub fn take_console(&mut self) -> Option<UnixStream> {
        self.console.take()
    }

    /// Lets the run go on when child `name` dies (a planned process fault); the teardown lists
    /// it under `killed`.
    pub fn tolerate_death(&mut self, name: &str) {
        self.tolerated.push(name.to_owned());
    }

    /// The process-group id of child `name` (its pid), while it runs.
    pub fn pid_of(&self, name: &str) -> Option<u32> {
        self.procs
            .iter()
            .find(|p| p.name == name)
            .map(|p| p.child.id())
    }

    /// A socket of this run's socket directory, e.g. `console.sock`.
    pub fn socket_path(&self, name: &str) -> PathBuf {
        self.sock_dir.join(name)
    }

    /// The control socket of device server `device` (`sdxi` or `cxl-hmu`).
    pub fn control_path(&self, device: &str) -> PathBuf {
        self.sock_dir.join(format!("{device}.ctl"))
    }

    /// A request to a device server's control socket (`device` is `sdxi` or `cxl-hmu`); an
    /// answer with an `error` field is an error.
    pub fn control(
        &self,
        device: &str,
        request: &serde_json::Value,
    ) -> Result<serde_json::Value, VmError> {
        let path = self.control_path(device);
        let a = control_request(&path, request, Duration::from_secs(10))
            .map_err(|e| VmError::Protocol(format!("control socket {}: {e}", path.display())))?;
        if let Some(e) = a.get("error") {
            return Err(VmError::Protocol(format!(
                "{device} refused {request}: {e}"
            )));
        }
        Ok(a)
    }

    /// Sends one request and waits for its response.
    pub fn request(&mut self, request: Request, timeout: Duration) -> Result<Reply, VmError> {
        let id = self.next_id;
        self.next_id += 1;
        let mut line = serde_json::to_vec(&HostMessage {
            v: PROTOCOL_VERSION,
            id,
            request: request.clone(),
        })
        .map_err(|e| VmError::Protocol(e.to_string()))?;
        line.push(b'\n');
        let tx = self
            .agent_tx
            .as_mut()
            .ok_or_else(|| VmError::Protocol("agent not connected".into()))?;
        tx.write_all(&line)
            .map_err(|e| VmError::Protocol(format!("writing to the agent port: {e}")))?;
        let deadline = Instant::now() + timeout;
        loop {
            match self.next_message(deadline, &format!("the agent's answer to {request:?}"))? {
                AgentMessage::Response {
                    id: rid, result, ..
                } if rid == id => {
                    return match result {
                        Outcome::Ok(r) => Ok(r),
                        Outcome::Error(e) => Err(VmError::Agent(e)),
                    }
                }
                other => debug!(?other, "skipping unrelated agent message"),
            }
        }
    }

    /// Asks the guest to power off, waits for QEMU, stops the servers (they write their
    /// counters), and reports what is left.
    pub fn shutdown(mut self, timeout: Duration) -> Result<Teardown, VmError> {
        self.request(Request::Shutdown, timeout)?;
        self.finish(timeout)
    }

    /// Waits for the guest to power off, stops the servers (they write their counters), and
    /// reports what is left.
    pub fn finish(mut self, timeout: Duration) -> Result<Teardown, VmError> {
        let mut t = Teardown::default();
        let deadline = Instant::now() + timeout;
        let qemu = self
            .procs
            .iter_mut()
            .find(|p| p.name == "qemu")
            .ok_or_else(|| VmError::Protocol("no QEMU process".into()))?;
        let st = wait_deadline(&mut qemu.child, deadline, &self.interrupted)?.ok_or_else(|| {
            VmError::Timeout(timeout, "QEMU to exit after the guest powered off".into())
        })?;
        t.qemu_exit = Some(st.to_string());
        for p in self.procs.iter_mut().filter(|p| p.name != "qemu") {
            // SAFETY: plain kill(2) of our own child's pid.
            unsafe { libc::kill(p.child.id() as libc::pid_t, libc::SIGTERM) };
            let dl = Instant::now() + Duration::from_secs(10);
            if wait_deadline(&mut p.child, dl, &self.interrupted)?.is_none() {
                warn!(name = p.name, "did not exit on SIGTERM; killing");
            }
        }
        for (key, file) in [
            ("sdxi", "sdxi-counters.json"),
            ("cxl_hmu", "cxl-hmu-counters.json"),
        ] {
            if let Some(v) = std::fs::read(self.run.path(file))
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
            {
                t.counters.insert(key.into(), v);
            }
        }
        for p in self.procs.iter_mut() {
            if self.tolerated.iter().any(|n| n == p.name) {
                if let Ok(Some(st)) = p.child.try_wait() {
                    t.killed.push((p.name.to_owned(), st.to_string()));
                }
            }
        }
        self.kill_all();
        t.stray_processes = stray_processes(&[&self.sock_dir, &self.run.dir, &self.ram_dir]);
        Ok(t)
    }

    fn kill_all(&mut self) {
        for p in &mut self.procs {
            if let Ok(None) = p.child.try_wait() {
                // SAFETY: kill(2) of the child's process group (it leads it: process_group(0)).
                unsafe { libc::kill(-(p.child.id() as libc::pid_t), libc::SIGKILL) };
            }
            let _ = p.child.wait();
        }
        for d in &mut self.private {
            d.remove();
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.kill_all();
    }
}

fn wait_deadline(
    child: &mut Child,
    deadline: Instant,
    interrupted: &AtomicBool,
) -> Result<Option<ExitStatus>, VmError> {
    loop {
        if let Ok(Some(st)) = child.try_wait() {
            return Ok(Some(st));
        }
        if interrupted.load(Ordering::Relaxed) {
            return Err(VmError::Interrupted);
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        // pidfd polling would avoid this short wait; 20 ms keeps shutdown latency low.
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Processes whose command line mentions any of `marks` (the run's private paths).
pub fn stray_processes(marks: &[&Path]) -> Vec<u32> {
    let me = std::process::id();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != me)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                let c = String::from_utf8_lossy(&c);
                // A directory's own path and what is inside it ("-1" must not match "-10").
                marks.iter().any(|m| {
                    let m = m.to_string_lossy();
                    c.contains(&format!("{m}/")) || c.split('\0').any(|a| a == m)
                })
            })
        })
        .collect()
}
