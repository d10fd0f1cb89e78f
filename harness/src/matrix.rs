//! Running several scenarios (a matrix): choosing them (scenario directories, `--shard K/N`),
//! running them `--jobs N` at a time, each within its time limit, and collecting their
//! [`Outcome`]s.

use crate::config::VmConfig;
use crate::provision::provision;
use crate::report::Outcome;
use crate::run::execute;
use crate::tools::ToolPaths;
use images::Progress;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The number of scenarios `harness run` runs at once by default: a TCG guest with two vCPUs
/// and its device servers keep about two cores busy, so one per two cores (at least one).
pub fn default_jobs() -> usize {
    std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
}

/// Runs one scenario of a matrix within `limit`; Ctrl-C (`interrupted`) stops it.
fn run_one(
    cfg: &VmConfig,
    paths: &ToolPaths,
    name: &str,
    results_dir: Option<&Path>,
    limit: Option<Duration>,
    interrupted: &Arc<AtomicBool>,
    progress: &mut dyn Progress,
) -> Outcome {
    // A per-scenario stop flag, set by Ctrl-C or by the time limit.
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicBool::new(false));
    let timed_out = Arc::new(AtomicBool::new(false));
    {
        let (stop, done, timed_out, global) = (
            Arc::clone(&stop),
            Arc::clone(&done),
            Arc::clone(&timed_out),
            Arc::clone(interrupted),
        );
        let deadline = limit.map(|l| Instant::now() + l);
        std::thread::spawn(move || {
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                if global.load(std::sync::atomic::Ordering::Relaxed) {
                    stop.store(true, std::sync::atomic::Ordering::Relaxed);
                }
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    timed_out.store(true, std::sync::atomic::Ordering::Relaxed);
                    stop.store(true, std::sync::atomic::Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
    }
    let t = Instant::now();
    let r = execute(cfg, paths, name, results_dir, stop, progress);
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    match r {
        Ok(r) => Outcome::Ran(Box::new(r)),
        Err(e) => {
            let mut message = if timed_out.load(std::sync::atomic::Ordering::Relaxed) {
                format!("time limit of {:?} exceeded", limit.unwrap_or_default())
            } else {
                e.to_string()
            };
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                message.push_str(&format!(": {s}"));
                src = s.source();
            }
            Outcome::Error {
                scenario: name.to_owned(),
                message,
                seconds: t.elapsed().as_secs_f64(),
            }
        }
    }
}

/// Runs `scenarios`, `jobs` at a time (each VM is independent: its own sockets, guest-RAM
/// files and run directory), each within `limit` if given; Ctrl-C stops the whole matrix.
/// Outcomes come back in the order of `scenarios`.
#[allow(clippy::too_many_arguments)]
pub fn run_matrix(
    cfg: &VmConfig,
    paths: &ToolPaths,
    scenarios: &[String],
    results_dir: Option<&Path>,
    limit: Option<Duration>,
    jobs: usize,
    interrupted: Arc<AtomicBool>,
    progress: &mut dyn Progress,
) -> Vec<Outcome> {
    let total = scenarios.len();
    if jobs <= 1 || total <= 1 {
        let mut out = Vec::new();
        for (i, name) in scenarios.iter().enumerate() {
            if interrupted.load(std::sync::atomic::Ordering::Relaxed) {
                break;
            }
            progress.step(&format!("scenario {}/{total}: {name}", i + 1));
            out.push(run_one(
                cfg,
                paths,
                name,
                results_dir,
                limit,
                &interrupted,
                progress,
            ));
        }
        return out;
    }
    // Build and provision once, before the workers share the cache.
    if let Err(e) = provision(cfg, paths, false, progress) {
        return scenarios
            .iter()
            .map(|n| Outcome::Error {
                scenario: n.clone(),
                message: e.to_string(),
                seconds: 0.0,
            })
            .collect();
    }
    progress.step(&format!("{total} scenarios, {jobs} at a time"));
    // Popped from the end: reversed, so the first scenario starts first.
    let queue = std::sync::Mutex::new(scenarios.iter().enumerate().rev().collect::<Vec<_>>());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::scope(|s| {
        for _ in 0..jobs.min(total) {
            let (queue, tx, interrupted) = (&queue, tx.clone(), &interrupted);
            s.spawn(move || loop {
                if interrupted.load(std::sync::atomic::Ordering::Relaxed) {
                    return;
                }
                let next = queue
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .pop();
                let Some((i, name)) = next else { return };
                let o = run_one(
                    cfg,
                    paths,
                    name,
                    results_dir,
                    limit,
                    interrupted,
                    &mut images::Silent,
                );
                if tx.send((i, o)).is_err() {
                    return;
                }
            });
        }
        drop(tx);
        let mut done: Vec<(usize, Outcome)> = Vec::new();
        for (i, o) in rx {
            let verdict = match &o {
                Outcome::Ran(r) if r.passed => "passed".to_owned(),
                Outcome::Ran(_) => "FAILED".to_owned(),
                Outcome::Error { message, .. } => format!("error: {message}"),
            };
            done.push((i, o));
            progress.step(&format!(
                "{}/{total} done: {} {verdict}",
                done.len(),
                scenarios[i]
            ));
        }
        done.sort_by_key(|(i, _)| *i);
        done.into_iter().map(|(_, o)| o).collect()
    })
}

/// `--shard K/N`: this machine runs the scenarios whose position (sorted by name) is K-1
/// modulo N, so a CI system's own job matrix can spread a scenario set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    pub k: usize,
    pub n: usize,
}

impl std::str::FromStr for Shard {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (k, n) = s
            .split_once('/')
            .ok_or_else(|| format!("shard {s:?} is not K/N"))?;
        let k: usize = k
            .parse()
            .map_err(|_| format!("shard {s:?}: K is not a number"))?;
        let n: usize = n
            .parse()
            .map_err(|_| format!("shard {s:?}: N is not a number"))?;
        if n == 0 || k == 0 || k > n {
            return Err(format!("shard {s:?}: need 1 <= K <= N"));
        }
        Ok(Self { k, n })
    }
}

/// Replaces each argument that is a directory by the scenario files (`*.toml`) in it, sorted.
pub fn expand_dirs(args: &[String]) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for a in args {
        let p = std::path::Path::new(a);
        if !p.is_dir() {
            out.push(a.clone());
            continue;
        }
        let rd =
            std::fs::read_dir(p).map_err(|e| format!("reading scenario directory {a}: {e}"))?;
        let mut files: Vec<String> = rd
            .flatten()
            .map(|e| e.path())
            .filter(|f| f.extension().is_some_and(|x| x == "toml"))
            .map(|f| f.to_string_lossy().into_owned())
            .collect();
        if files.is_empty() {
            return Err(format!(
                "scenario directory {a} holds no *.toml scenario files"
            ));
        }
        files.sort();
        out.extend(files);
    }
    Ok(out)
}

/// The scenarios this shard runs, in a stable order (sorted, duplicates removed).
pub fn select(scenarios: &[String], shard: Option<Shard>) -> Vec<String> {
    let mut all: Vec<String> = scenarios.to_vec();
    all.sort();
    all.dedup();
    match shard {
        None => all,
        Some(s) => all
            .into_iter()
            .enumerate()
            .filter(|(i, _)| i % s.n == s.k - 1)
            .map(|(_, n)| n)
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directories_expand_to_their_scenario_files() {
        let d = std::env::temp_dir().join(format!("tierbed-dirs-{}", std::process::id()));
        std::fs::create_dir_all(&d).expect("dir");
        for f in ["b.toml", "a.toml", "notes.txt"] {
            std::fs::write(d.join(f), "").expect("file");
        }
        let ds = d.to_string_lossy().into_owned();
        let got = expand_dirs(&["inventory".into(), ds.clone()]).expect("expand");
        assert_eq!(
            got,
            vec![
                "inventory".to_owned(),
                format!("{ds}/a.toml"),
                format!("{ds}/b.toml")
            ]
        );
        std::fs::remove_file(d.join("a.toml")).ok();
        std::fs::remove_file(d.join("b.toml")).ok();
        assert!(expand_dirs(&[ds]).expect_err("empty").contains("no *.toml"));
        std::fs::remove_dir_all(d).ok();
    }

    #[test]
    fn shards_partition_the_sorted_scenarios() {
        let s: Vec<String> = ["c", "a", "d", "b", "a", "e"]
            .iter()
            .map(|x| (*x).to_owned())
            .collect();
        let parts: Vec<Vec<String>> = (1..=2)
            .map(|k| select(&s, Some(Shard { k, n: 2 })))
            .collect();
        assert_eq!(parts[0], vec!["a", "c", "e"]);
        assert_eq!(parts[1], vec!["b", "d"]);
        assert_eq!(select(&s, None).len(), 5);
        assert_eq!("2/3".parse::<Shard>(), Ok(Shard { k: 2, n: 3 }));
        for bad in ["0/2", "3/2", "1/0", "x/2", "2"] {
            assert!(bad.parse::<Shard>().is_err(), "{bad}");
        }
    }
}
