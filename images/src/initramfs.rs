//! The guest's initramfs: a `newc` cpio archive (the host has no cpio) holding busybox-static,
//! the statically linked guest agent, the kernel modules it needs and an `/init` script.
//! Uncompressed on purpose: under TCG the kernel's decompression costs more than reading.

use std::io::Write;

/// A cpio `newc` archive writer (Linux `Documentation/driver-api/early-userspace/buffer-format.rst`).
#[derive(Debug, Default)]
pub struct Cpio {
    buf: Vec<u8>,
    ino: u32,
}

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFCHR: u32 = 0o020000;
const S_IFLNK: u32 = 0o120000;

impl Cpio {
    pub fn new() -> Self {
        Self::default()
    }

    fn entry(&mut self, name: &str, mode: u32, data: &[u8], rdev: (u32, u32)) {
        self.ino += 1;
        let namesize = name.len() + 1;
        let fields = [
            self.ino,
            mode,
            0,
            0,
            if mode & S_IFDIR == S_IFDIR { 2 } else { 1 },
            0,
            data.len() as u32,
            0,
            0,
            rdev.0,
            rdev.1,
            namesize as u32,
            0,
        ];
        let _ = write!(self.buf, "070701");
        for f in fields {
            let _ = write!(self.buf, "{f:08x}");
        }
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.push(0);
        self.pad();
        self.buf.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }

    pub fn dir(&mut self, name: &str) -> &mut Self {
        self.dir_mode(name, 0o755)
    }

    /// A directory with these permission bits.
    pub fn dir_mode(&mut self, name: &str, mode: u32) -> &mut Self {
        self.entry(name, S_IFDIR | (mode & 0o7777), &[], (0, 0));
        self
    }

    pub fn file(&mut self, name: &str, mode: u32, data: &[u8]) -> &mut Self {
        self.entry(name, S_IFREG | (mode & 0o7777), data, (0, 0));
        self
    }

    pub fn symlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.entry(name, S_IFLNK | 0o777, target.as_bytes(), (0, 0));
        self
    }

    pub fn char_dev(&mut self, name: &str, major: u32, minor: u32) -> &mut Self {
        self.entry(name, S_IFCHR | 0o600, &[], (major, minor));
        self
    }

    pub fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, &[], (0, 0));
        while !self.buf.len().is_multiple_of(512) {
            self.buf.push(0);
        }
        self.buf
    }
}

/// Kernel command-line key the init script reads to choose what runs (`tierbed.mode=`).
pub const MODE_PARAM: &str = "tierbed.mode";

/// Kernel command-line key that starts a shell on the console next to the guest agent
/// (`tierbed.console=1`), for `harness run --console`.
pub const CONSOLE_PARAM: &str = "tierbed.console";

/// `/init`: mounts the pseudo file systems, loads the modules listed in `/etc/modules` in order
/// (lines starting with `?` are optional: their failure is not reported), each with its listed
/// parameters and then, as modprobe does, the kernel command line's `MODULE.PARAM=VALUE`
/// entries for it (`-` and `_` alike in the name, quoted values kept whole, nothing after
/// `--`), mounts debugfs,
/// tracefs and configfs, and hands over to the guest agent on the dedicated serial port
/// (ttyS1). The kernel console stays on ttyS0. If the agent exits, the guest powers off.
/// `PATH` puts `/usr` first, so tools unpacked from packages win over busybox's applets.
pub const INIT_SCRIPT: &str = r#"#!/bin/busybox sh
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
/bin/busybox mkdir -p /proc /sys /dev /tmp /run /sys/fs/cgroup
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs devtmpfs /dev 2>/dev/null
/bin/busybox mount -t tmpfs tmpfs /tmp
/bin/busybox --install -s /bin
echo "tierbed: init on $(uname -r)"
set -f
nl='
'
cmdline=/proc/cmdline
# MODULE.PARAM=VALUE entries for module $1 in the kernel command line file $2, as modprobe
# applies them: one per line, quotes removed (a quoted value may hold spaces), none after --.
cmdline_params() {
  m=$(echo "$1" | tr - _)
  xargs -n1 < "$2" 2>/dev/null | while IFS= read -r a; do
    [ "$a" = "--" ] && break
    case "$a" in
      *.*=*) [ "$(echo "${a%%.*}" | tr - _)" = "$m" ] && printf '%s\n' "${a#*.}" ;;
    esac
  done
}
# load FILE MODULE [ARGS...]: insmod with the listed ARGS, then the command line's for MODULE.
load() {
  f=$1
  m=$2
  shift 2
  p=$(cmdline_params "$m" "$cmdline")
  IFS=$nl
  set -- "$@" $p
  unset IFS
  insmod "$f" "$@"
}
while read -r mod args; do
  [ -n "$mod" ] || continue
  case "$mod" in
    \?*) load "/lib/modules/${mod#?}.ko" "${mod#?}" $args 2>/dev/null ;;
    *) load "/lib/modules/$mod.ko" "$mod" $args || echo "tierbed: insmod $mod failed" ;;
  esac
done < /etc/modules
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
mount -t configfs configfs /sys/kernel/config 2>/dev/null
mode=agent
console=0
for a in $(cat /proc/cmdline); do
  case "$a" in
    tierbed.mode=*) mode="${a#tierbed.mode=}" ;;
    tierbed.console=*) console="${a#tierbed.console=}" ;;
  esac
done
if [ "$console" = 1 ] && [ "$mode" = agent ]; then
  (setsid cttyhack sh; poweroff -f) &
fi
if [ "$mode" = bringup ]; then
  : > /tmp/bringup-modules.log
  if [ -f /bringup/modules ]; then
    while read -r mod args; do
      [ -n "$mod" ] || continue
      if out=$(load "/bringup/$mod.ko" "$mod" $args 2>&1); then
        echo "ok $mod" >> /tmp/bringup-modules.log
      else
        echo "failed $mod: $out" >> /tmp/bringup-modules.log
      fi
    done < /bringup/modules
  fi
  if [ -f /bringup/console ]; then
    cat /tmp/bringup-modules.log
    echo "tierbed: bring-up console; the devices are unclaimed. exit (or Ctrl-D) powers off, Ctrl-] leaves."
    setsid cttyhack sh
  else
    /bin/guest-agent --port /dev/ttyS1 --bringup
    echo "tierbed: guest-agent exited with $?"
  fi
elif [ "$mode" = shell ]; then
  setsid cttyhack sh
else
  /bin/guest-agent --port /dev/ttyS1
  echo "tierbed: guest-agent exited with $?"
fi
poweroff -f
"#;

/// An archive to append to the initramfs for `tierbed.mode=bringup` (the kernel unpacks
/// concatenated archives in order): the user's modules (loaded in order with their
/// parameters) and an optional script the agent runs, returning its output and exit code.
/// With `console` the guest gives a shell on its console instead of running the agent.
pub fn bringup_archive(
    modules: &[(String, String, Vec<u8>)],
    script: Option<&[u8]>,
    console: bool,
) -> Vec<u8> {
    let mut c = Cpio::new();
    c.dir("bringup");
    let mut list = String::new();
    for (name, params, data) in modules {
        c.file(&format!("bringup/{name}.ko"), 0o644, data);
        list.push_str(&format!("{name} {params}\n"));
    }
    c.file("bringup/modules", 0o644, list.as_bytes());
    if let Some(s) = script {
        c.file("bringup/run.sh", 0o755, s);
    }
    if console {
        c.file("bringup/console", 0o644, b"");
    }
    c.finish()
}

/// Builds the initramfs. `modules` are (name, module bytes) in load order; a name starting
/// with `?` is an optional module (loaded if it can be, silently otherwise).
pub fn build(busybox: &[u8], agent: &[u8], modules: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut c = Cpio::new();
    for d in [
        "bin",
        "dev",
        "etc",
        "lib",
        "lib/modules",
        "proc",
        "sys",
        "tmp",
        "run",
        "sbin",
        "usr",
        "usr/bin",
        "usr/sbin",
    ] {
        c.dir(d);
    }
    c.char_dev("dev/console", 5, 1).char_dev("dev/null", 1, 3);
    c.file("bin/busybox", 0o755, busybox)
        .symlink("bin/sh", "busybox")
        .file("bin/guest-agent", 0o755, agent)
        .file("init", 0o755, INIT_SCRIPT.as_bytes());
    let mut list = String::new();
    for (name, data) in modules {
        let file = name.trim_start_matches('?');
        c.file(&format!("lib/modules/{file}.ko"), 0o644, data);
        list.push_str(name);
        list.push('\n');
    }
    c.file("etc/modules", 0o644, list.as_bytes());
    c.finish()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn module_parameters_come_from_the_kernel_command_line_as_modprobe_reads_them() {
        let start = INIT_SCRIPT.find("set -f\n").expect("definitions");
        let end = INIT_SCRIPT
            .find("while read -r mod args")
            .expect("their end");
        let dir = std::env::temp_dir().join(format!("tierbed-cmdline-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let cmdline = dir.join("cmdline");
        std::fs::write(
            &cmdline,
            "console=ttyS0 sdxi_core.dma_channels=2 sdxi-core.dyndbg=+p sdxi_corex.a=1 \
             other.b=2 sdxi_core.name=\"a *b\" quiet -- sdxi_core.after=1\n",
        )
        .expect("write");
        // A file the value's `*b` would match, were it globbed.
        std::fs::write(dir.join("a-b"), "").expect("write");
        // insmod shows the arguments it got, one per line.
        let script = format!(
            "{}\ncmdline={}\ninsmod() {{ for a in \"$@\"; do echo \"[$a]\"; done; }}\n\
             load /x/sdxi-core.ko sdxi-core listed=1",
            &INIT_SCRIPT[start..end],
            cmdline.display()
        );
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(script)
            .current_dir(&dir)
            .output()
            .expect("sh");
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "[/x/sdxi-core.ko]\n[listed=1]\n[dma_channels=2]\n[dyndbg=+p]\n[name=a *b]\n",
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Parses a newc archive back: (name, mode, data).
    pub(crate) fn parse(a: &[u8]) -> Vec<(String, u32, Vec<u8>)> {
        let mut out = Vec::new();
        let mut p = 0;
        loop {
            assert_eq!(&a[p..p + 6], b"070701");
            let field = |i: usize| {
                u32::from_str_radix(
                    std::str::from_utf8(&a[p + 6 + 8 * i..p + 14 + 8 * i]).expect("hex"),
                    16,
                )
                .expect("hex")
            };
            let (mode, size, namesize) = (field(1), field(6) as usize, field(11) as usize);
            let name_start = p + 110;
            let name =
                String::from_utf8(a[name_start..name_start + namesize - 1].to_vec()).expect("utf8");
            let data_start = (name_start + namesize + 3) & !3;
            let data = a[data_start..data_start + size].to_vec();
            p = (data_start + size + 3) & !3;
            if name == "TRAILER!!!" {
                break;
            }
            out.push((name, mode, data));
        }
        out
    }

    #[test]
    fn archive_round_trips_files_and_modes() {
        let img = build(b"BB", b"AGENT", &[("vfio".into(), b"KO".to_vec())]);
        assert_eq!(img.len() % 512, 0);
        let e = parse(&img);
        let get = |n: &str| e.iter().find(|x| x.0 == n).cloned().expect(n);
        assert_eq!(get("bin/guest-agent").2, b"AGENT");
        assert_eq!(get("bin/guest-agent").1, 0o100755);
        assert_eq!(get("lib/modules/vfio.ko").2, b"KO");
        assert_eq!(get("etc/modules").2, b"vfio\n");
        assert_eq!(get("dev/console").1 & 0o170000, 0o020000);
        assert!(String::from_utf8(get("init").2)
            .expect("utf8")
            .starts_with("#!/bin/busybox sh"));
    }
}
