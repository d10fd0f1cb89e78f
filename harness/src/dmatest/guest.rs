//! The guest side of `harness run dmatest`: the busybox script that drives the kernel's
//! dmatest module through its parameters (Documentation/driver-api/dmaengine/dmatest.rst:
//! iterations, threads_per_chan, test_buf_size, polled, timeout, norandom, then one
//! `channel` write per channel and `run=1`), and the reader of what it prints.
//!
//! The script prints `@@dmatest` marker lines around each run and, after each, the kernel
//! log since the previous one (`dmesg -c`): every dmatest summary line, the first lines of
//! the rest, and every line that looks like a kernel problem, so a long failing run cannot
//! flood the serial port. It waits for a run by polling `run` (reading it also releases the
//! channels of a finished test), not with `wait`, whose read sleeps uninterruptibly.

use std::fmt::Write as _;

/// Lines of the kernel log that fail a run wherever they appear: warnings, BUGs (soft lockups
/// print `watchdog: BUG:`), oopses, hung tasks, RCU stalls, IOMMU faults.
pub const PROBLEMS: &[&str] = &[
    "WARNING:",
    "BUG:",
    "Oops",
    "Call Trace",
    "general protection fault",
    "kernel BUG",
    "blocked for more than",
    "rcu: INFO",
    "DMAR: [DMA",
    "DMAR: DRHD: handling fault",
    "UBSAN:",
    "KASAN:",
    "KFENCE:",
    // SLUB's own reports (`BUG kmalloc-64 (Not tainted): Poison overwritten`), typical of a
    // DMA into freed memory.
    "] BUG ",
];

/// Lines of a run's kernel log kept besides summaries and problems.
const KEEP_LINES: usize = 120;

/// One dmatest run: a completion mode and a buffer size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunPlan {
    pub polled: bool,
    pub buffer: u64,
    pub iterations: u64,
}

impl RunPlan {
    pub fn mode(&self) -> &'static str {
        if self.polled {
            "polled"
        } else {
            "interrupt"
        }
    }

    /// `polled.4KiB`, `interrupt.1MiB`, `polled.3000B`.
    pub fn label(&self) -> String {
        format!("{}.{}", self.mode(), size_label(self.buffer))
    }
}

/// 4096 -> `4KiB`, 1048576 -> `1MiB`, others in bytes.
pub fn size_label(b: u64) -> String {
    if b >= 1 << 20 && b.is_multiple_of(1 << 20) {
        format!("{}MiB", b >> 20)
    } else if b >= 1 << 10 && b.is_multiple_of(1 << 10) {
        format!("{}KiB", b >> 10)
    } else {
        format!("{b}B")
    }
}

/// What the script needs besides the runs.
#[derive(Clone, Debug)]
pub struct ScriptPlan {
    pub channels: u32,
    pub threads_per_chan: u32,
    pub timeout_ms: u64,
    pub norandom: bool,
    /// Seconds a run may take before the script stops it.
    pub run_timeout_s: u64,
    /// Modules to unload afterwards, in order (dmatest first); empty: no unload.
    pub unload: Vec<String>,
    pub runs: Vec<RunPlan>,
}

/// The guest script.
pub fn script(p: &ScriptPlan) -> String {
    let problems = PROBLEMS
        .iter()
        .map(|s| s.replace('[', "\\["))
        .collect::<Vec<_>>()
        .join("|");
    let mut s = format!(
        r#"P=/sys/module/dmatest/parameters
say() {{ echo "@@dmatest $*"; }}
progress() {{ echo "{mark}dmatest $*" > /dev/console 2>/dev/null; }}
# The kernel log since the last call: summaries, then the first (or with "tail", the last)
# lines of the rest, then every problem line.
log_part() {{
  dmesg -c > /tmp/dmatest.part
  grep ' summary ' /tmp/dmatest.part
  grep -v ' summary ' /tmp/dmatest.part | ${{1:-head}} -n {KEEP_LINES}
  grep -E '{problems}' /tmp/dmatest.part | head -n 60
  say loglines $(wc -l < /tmp/dmatest.part)
}}
# Sets a dmatest parameter; a value the kernel refuses is an error, not a silent old value.
set_param() {{ echo "$2" > $P/$1 || say error parameter $1 refused $2; }}
say load
log_part tail
[ -d $P ] || {{ say error dmatest is not loaded; exit 1; }}
# Only the SDXi function's channels (PCI class {class}), whatever other DMA engines exist.
chans=
for c in $(ls /sys/class/dma 2>/dev/null); do
  [ "$(cat /sys/class/dma/$c/device/class 2>/dev/null)" = {class} ] && chans="$chans $c"
done
chans=$(echo $chans | tr ' ' '\n' | head -n {channels})
say channels $chans
"#,
        channels = p.channels,
        mark = crate::bringup::PROGRESS_MARK,
        class = format_args!("{:#08x}", device_sdxi::regs::SDXI_CLASS_CODE),
    );
    for r in &p.runs {
        let _ = write!(
            s,
            r#"say run {label} begin
progress "{label}: {iterations} iterations x {threads} threads x $(echo $chans | wc -w) channels, started"
set_param iterations {iterations}
set_param threads_per_chan {threads}
set_param test_buf_size {buffer}
set_param polled {polled}
set_param timeout {timeout_ms}
set_param norandom {norandom}
for c in $chans; do echo $c > $P/channel || say refused $c; done
read t0 rest < /proc/uptime
echo 1 > $P/run
st=timeout
end=$(( ${{t0%.*}} + {run_timeout_s} ))
while :; do
  sleep 0.2
  if [ "$(cat $P/run)" = N ]; then st=finished; break; fi
  read now rest < /proc/uptime
  [ ${{now%.*}} -lt $end ] || break
done
[ $st = finished ] || {{ echo 0 > $P/run; sleep 1; cat $P/run > /dev/null; }}
read t1 rest < /proc/uptime
log_part
say run {label} end $st $t0 $t1
progress "{label}: $st after $(( ${{t1%.*}} - ${{t0%.*}} )) s"
"#,
            label = r.label(),
            iterations = r.iterations,
            threads = p.threads_per_chan,
            buffer = r.buffer,
            polled = u8::from(r.polled),
            timeout_ms = p.timeout_ms,
            norandom = u8::from(p.norandom),
            run_timeout_s = p.run_timeout_s,
        );
    }
    if !p.unload.is_empty() {
        let _ = write!(
            s,
            "st=ok\nfor m in {}; do rmmod $m || st=\"failed $m\"; done\nlog_part\nsay unload $st\n",
            p.unload.join(" ")
        );
    }
    s.push_str("exit 0\n");
    s
}

/// One dmatest thread's summary line.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Summary {
    pub channel: String,
    pub thread: String,
    pub tests: u64,
    pub failures: u64,
    pub iops: f64,
    pub kbs: u64,
    /// The thread's own result, `(ret)` at the end of the line: not 0 when it could not run
    /// (e.g. -ENOMEM setting up its buffers).
    pub ret: i64,
}

/// Parses `dmatest: dma0chan1-copy0: summary 200 tests, 0 failures 222.92 iops 421 KB/s (0)`
/// (drivers/dma/dmatest.c, dmatest_func).
pub fn parse_summary(line: &str) -> Option<Summary> {
    let rest = &line[line.find("dmatest: ")? + 9..];
    let (thread, rest) = rest.split_once(": summary ")?;
    let channel = thread.rsplit_once('-').map_or(thread, |(c, _)| c);
    let w: Vec<&str> = rest.split_whitespace().collect();
    // [N, "tests,", F, "failures", IOPS, "iops", KBS, "KB/s", "(ret)"]
    if w.len() < 8 || w[1] != "tests," || w[3] != "failures" || w[5] != "iops" {
        return None;
    }
    Some(Summary {
        channel: channel.to_owned(),
        thread: thread.to_owned(),
        tests: w[0].parse().ok()?,
        failures: w[2].parse().ok()?,
        iops: w[4].parse().ok()?,
        kbs: w[6].parse().ok()?,
        ret: w
            .get(8)
            .and_then(|r| r.strip_prefix('(')?.strip_suffix(')')?.parse().ok())
            .unwrap_or(0),
    })
}

/// What the script reported for one run.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct RunOutput {
    pub label: String,
    /// `finished`, `timeout`, or empty when the script never got to its end.
    pub status: String,
    pub seconds: f64,
    pub summaries: Vec<Summary>,
    /// The run's kernel log as the script kept it.
    pub log: Vec<String>,
}

/// Everything the script printed, sorted out.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct Output {
    pub channels: Vec<String>,
    pub runs: Vec<RunOutput>,
    /// Kernel problems, each once, in order.
    pub problems: Vec<String>,
    /// The log of module loading (before the first run).
    pub load_log: Vec<String>,
    /// `ok`, `failed MODULE`, or None when nothing was unloaded.
    pub unload: Option<String>,
    pub errors: Vec<String>,
}

/// Reads the script's output.
pub fn parse(text: &str) -> Output {
    let mut o = Output::default();
    let mut cur: Option<RunOutput> = None;
    let mut loading = false;
    for line in text.lines() {
        if let Some(m) = line.strip_prefix("@@dmatest ") {
            let w: Vec<&str> = m.split_whitespace().collect();
            match w.as_slice() {
                ["load"] => loading = true,
                ["channels", rest @ ..] => {
                    loading = false;
                    o.channels = rest.iter().map(|s| (*s).to_owned()).collect();
                }
                ["run", label, "begin"] => {
                    cur = Some(RunOutput {
                        label: (*label).to_owned(),
                        ..RunOutput::default()
                    });
                }
                ["run", _, "end", st, t0, t1] => {
                    if let Some(mut r) = cur.take() {
                        r.status = (*st).to_owned();
                        r.seconds =
                            t1.parse::<f64>().unwrap_or(0.0) - t0.parse::<f64>().unwrap_or(0.0);
                        o.runs.push(r);
                    }
                }
                ["unload", rest @ ..] => o.unload = Some(rest.join(" ")),
                ["error", ..] | ["refused", ..] => o.errors.push(m.to_owned()),
                _ => {}
            }
            continue;
        }
        if PROBLEMS.iter().any(|p| line.contains(p)) && !o.problems.iter().any(|x| x == line) {
            o.problems.push(line.to_owned());
        }
        if let Some(r) = cur.as_mut() {
            if let Some(s) = parse_summary(line) {
                if !r.summaries.contains(&s) {
                    r.summaries.push(s);
                }
            } else if !r.log.iter().any(|x| x == line) {
                r.log.push(line.to_owned());
            }
        } else if loading {
            o.load_log.push(line.to_owned());
        }
    }
    // A run the script never finished (the VM died or the harness stopped waiting).
    if let Some(mut r) = cur {
        r.status = String::new();
        o.runs.push(r);
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_lines_are_read_field_by_field() {
        let s = parse_summary(
            "[    5.562019] dmatest: dma0chan1-copy0: summary 200 tests, 3 failures 222.92 iops 421 KB/s (0)",
        )
        .expect("summary");
        assert_eq!(s.channel, "dma0chan1");
        assert_eq!(s.thread, "dma0chan1-copy0");
        assert_eq!((s.tests, s.failures, s.kbs), (200, 3, 421));
        assert!((s.iops - 222.92).abs() < 1e-9);
        assert_eq!(s.ret, 0);
        let failed = parse_summary(
            "[    5.6] dmatest: dma0chan0-copy1: summary 0 tests, 0 failures 0.00 iops 0 KB/s (-12)",
        )
        .expect("summary");
        assert_eq!(failed.ret, -12);
        assert!(parse_summary("dmatest: Added 2 threads using dma0chan0").is_none());
        assert!(parse_summary("dmatest: dma0chan0-copy0: summary lots tests").is_none());
    }

    #[test]
    fn the_script_sets_every_parameter_and_adds_each_channel() {
        let plan = ScriptPlan {
            channels: 2,
            threads_per_chan: 2,
            timeout_ms: 3000,
            norandom: false,
            run_timeout_s: 60,
            unload: vec!["dmatest".into(), "tierbed_sdxi_dma".into()],
            runs: vec![RunPlan {
                polled: true,
                buffer: 4096,
                iterations: 2000,
            }],
        };
        let s = script(&plan);
        for want in [
            "set_param iterations 2000",
            "set_param threads_per_chan 2",
            "set_param test_buf_size 4096",
            "set_param polled 1",
            "set_param timeout 3000",
            "|| say error parameter $1 refused $2",
            "device/class 2>/dev/null)\" = 0x120100 ]",
            "head -n 2)",
            "echo $c > $P/channel",
            "say run polled.4KiB begin",
            "end=$(( ${t0%.*} + 60 ))",
            "for m in dmatest tierbed_sdxi_dma; do rmmod $m",
            "DMAR: \\[DMA",
        ] {
            assert!(s.contains(want), "{want}\n{s}");
        }
        let parsed = std::process::Command::new("sh")
            .args(["-n", "-c", &s])
            .output()
            .expect("sh -n");
        assert!(
            parsed.status.success(),
            "the script parses: {}",
            String::from_utf8_lossy(&parsed.stderr)
        );
    }

    #[test]
    fn output_is_sorted_into_runs_with_their_summaries_logs_and_problems() {
        let text = "\
@@dmatest load
[ 4.2] tierbed_sdxi_dma 0000:01:00.0: SDXi function active
@@dmatest loglines 1
@@dmatest channels dma0chan0 dma0chan1
@@dmatest run polled.4KiB begin
[ 5.5] dmatest: dma0chan0-copy0: summary 10 tests, 0 failures 1.00 iops 4 KB/s (0)
[ 5.6] dmatest: dma0chan0-copy0: result #3: 'test timed out' with src_off=0x1
[ 5.7] WARNING: CPU: 0 PID: 1 at drivers/dma/x.c:1 f+0x1
[ 5.7] WARNING: CPU: 0 PID: 1 at drivers/dma/x.c:1 f+0x1
@@dmatest loglines 3
@@dmatest run polled.4KiB end finished 4.50 7.25
@@dmatest run interrupt.4KiB begin
[ 9.0] dmatest: Started 2 threads using dma0chan0
";
        let o = parse(text);
        assert_eq!(o.channels, ["dma0chan0", "dma0chan1"]);
        assert_eq!(o.load_log.len(), 1);
        assert_eq!(o.runs.len(), 2);
        let r = &o.runs[0];
        assert_eq!(
            (r.label.as_str(), r.status.as_str()),
            ("polled.4KiB", "finished")
        );
        assert!((r.seconds - 2.75).abs() < 1e-9);
        assert_eq!(r.summaries.len(), 1);
        assert_eq!(r.log.len(), 2, "{:?}", r.log);
        assert_eq!(o.problems.len(), 1);
        assert_eq!(
            o.runs[1].status, "",
            "an unfinished run is kept, without status"
        );
        assert_eq!(size_label(1 << 20), "1MiB");
        assert_eq!(size_label(3000), "3000B");
    }
}
