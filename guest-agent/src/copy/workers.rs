//! The CPU copy engine's helper threads, started once and kept for later batches, the way the
//! copy-offload series' mtcopy queues each batch's per-thread share as work items on a
//! workqueue's long-lived kernel workers (`queue_work_on()`, Linux `kernel/workqueue.c`)
//! rather than creating threads per batch. Creating and joining a thread per batch costs
//! about as much as copying a batch of 64 base pages under TCG.
//!
//! The pool grows to the most helpers a batch asked for and never shrinks; an idle helper
//! sleeps in a channel receive. A share whose helper could not be started, or is gone, is
//! copied by the caller, so every folio is copied exactly once before [`run`] returns.

use super::{copy_folio, FolioCopy};
use crate::arena::thread_cpu_ns;
use std::sync::mpsc::{channel, Sender};
use std::sync::{Mutex, OnceLock};

/// One share of a batch: its folios, and where to report (share index, helper CPU ns).
struct Job {
    index: usize,
    folios: Vec<FolioCopy>,
    nt: bool,
    done: Sender<(usize, u64)>,
}

/// The helpers' queues, one per helper thread.
fn helpers() -> &'static Mutex<Vec<Sender<Job>>> {
    static HELPERS: OnceLock<Mutex<Vec<Sender<Job>>>> = OnceLock::new();
    HELPERS.get_or_init(|| Mutex::new(Vec::new()))
}

/// Starts one helper; None if the thread could not be created.
fn spawn_helper(n: usize) -> Option<Sender<Job>> {
    let (tx, rx) = channel::<Job>();
    std::thread::Builder::new()
        .name(format!("copy-helper-{n}"))
        .spawn(move || {
            for job in rx {
                let t = thread_cpu_ns();
                job.folios.iter().for_each(|f| copy_folio(f, job.nt));
                // The caller may have gone (it copies an unacknowledged share itself).
                let _ = job.done.send((job.index, thread_cpu_ns() - t));
            }
        })
        .ok()?;
    Some(tx)
}

/// The queues of `n` helpers, starting the ones missing (fewer if threads cannot be created).
fn queues(n: usize) -> Vec<Sender<Job>> {
    let mut h = helpers().lock().unwrap_or_else(|e| e.into_inner());
    while h.len() < n {
        let Some(tx) = spawn_helper(h.len()) else {
            break;
        };
        h.push(tx);
    }
    h.iter().take(n).cloned().collect()
}

/// Copies `shares[0]` on the calling thread and every other share on a helper, and returns
/// when all are copied; the helpers' CPU time in ns.
pub fn run(shares: &[&[FolioCopy]], nt: bool) -> u64 {
    let rest = shares.get(1..).unwrap_or(&[]);
    let (done, acks) = channel();
    let mut sent = vec![false; rest.len()];
    for ((i, share), q) in rest.iter().enumerate().zip(queues(rest.len())) {
        let job = Job {
            index: i,
            folios: share.to_vec(),
            nt,
            done: done.clone(),
        };
        sent[i] = q.send(job).is_ok();
    }
    drop(done);
    if let Some(mine) = shares.first() {
        mine.iter().for_each(|f| copy_folio(f, nt));
    }
    let mut acked = vec![false; rest.len()];
    let mut cpu_ns = 0;
    // Ends when every helper that took a share answered, or dropped its end (gone).
    for (i, ns) in acks.iter() {
        acked[i] = true;
        cpu_ns += ns;
    }
    for (i, share) in rest.iter().enumerate() {
        if !(sent[i] && acked[i]) {
            share.iter().for_each(|f| copy_folio(f, nt));
        }
    }
    cpu_ns
}

#[cfg(test)]
mod tests {
    use super::*;

    fn folios(src: &[Vec<u8>], dst: &mut [Vec<u8>]) -> Vec<FolioCopy> {
        src.iter()
            .zip(dst.iter_mut())
            .map(|(s, d)| FolioCopy {
                src: s.as_ptr(),
                dst: d.as_mut_ptr(),
                src_iova: 0,
                dst_iova: 0,
                len: s.len(),
            })
            .collect()
    }

    #[test]
    fn every_share_is_copied_once_by_helpers_kept_across_batches() {
        let src: Vec<Vec<u8>> = (0..9u8).map(|i| vec![i + 1; 4096]).collect();
        for round in 0..3 {
            let mut dst = vec![vec![0u8; 4096]; 9];
            let f = folios(&src, &mut dst);
            let shares: Vec<&[FolioCopy]> = f.chunks(3).collect();
            run(&shares, round == 1);
            assert_eq!(dst, src, "round {round}");
            let started = helpers().lock().expect("helpers").len();
            assert!(
                started >= 2,
                "two helpers for three shares, kept: {started}"
            );
        }
    }
}
