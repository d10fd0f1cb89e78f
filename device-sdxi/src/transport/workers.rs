//! Worker threads that run context passes. A doorbell only marks its context runnable; a
//! context is queued at most once and run by one worker at a time, and a doorbell that
//! arrives during a pass makes the worker run it once more. Idle workers sleep on a condition
//! variable: no core is burnt while nothing is queued.
//!
//! Transport only: SDXi lets a function run its contexts in any order and in parallel; the
//! per-context serialisation the spec's ring rules need is the engine's (one pass at a time).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

const IDLE: u8 = 0;
const QUEUED: u8 = 1;
const RUNNING: u8 = 2;
const RUNNING_AGAIN: u8 = 3;

type Pass = dyn Fn(u16) -> Vec<u16> + Send + Sync;

struct Shared {
    queue: Mutex<VecDeque<u16>>,
    ready: Condvar,
    state: Vec<AtomicU8>,
    stop: std::sync::atomic::AtomicBool,
    pass: Box<Pass>,
}

impl Shared {
    fn kick(&self, cxt: u16) {
        let Some(s) = self.state.get(usize::from(cxt)) else {
            return;
        };
        loop {
            let cur = s.load(Ordering::Acquire);
            let next = match cur {
                IDLE => QUEUED,
                RUNNING => RUNNING_AGAIN,
                _ => return,
            };
            if s.compare_exchange(cur, next, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                if next == QUEUED {
                    self.queue
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .push_back(cxt);
                    self.ready.notify_one();
                }
                return;
            }
        }
    }

    fn work(&self) {
        loop {
            let cxt = {
                let mut q = self
                    .queue
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                loop {
                    if self.stop.load(Ordering::Acquire) {
                        return;
                    }
                    if let Some(c) = q.pop_front() {
                        break c;
                    }
                    q = self
                        .ready
                        .wait(q)
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                }
            };
            let s = &self.state[usize::from(cxt)];
            s.store(RUNNING, Ordering::Release);
            loop {
                for k in (self.pass)(cxt) {
                    self.kick(k);
                }
                if s.compare_exchange(RUNNING, IDLE, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    break;
                }
                // RUNNING_AGAIN: a doorbell arrived during the pass.
                s.store(RUNNING, Ordering::Release);
            }
        }
    }
}

/// The worker pool.
pub struct Workers {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Workers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workers")
            .field("threads", &self.threads.len())
            .finish()
    }
}

impl Workers {
    /// `n` threads serving contexts `0..contexts`, each pass done by `pass(cxt)`, which
    /// returns further contexts to kick.
    pub fn new(
        n: usize,
        contexts: usize,
        pass: impl Fn(u16) -> Vec<u16> + Send + Sync + 'static,
    ) -> Self {
        let shared = Arc::new(Shared {
            queue: Mutex::new(VecDeque::new()),
            ready: Condvar::new(),
            state: (0..contexts).map(|_| AtomicU8::new(IDLE)).collect(),
            stop: std::sync::atomic::AtomicBool::new(false),
            pass: Box::new(pass),
        });
        let threads = (0..n.max(1))
            .filter_map(|i| {
                let s = Arc::clone(&shared);
                std::thread::Builder::new()
                    .name(format!("sdxi-worker-{i}"))
                    .spawn(move || s.work())
                    .ok()
            })
            .collect();
        Self { shared, threads }
    }

    /// Marks `cxt` runnable.
    pub fn kick(&self, cxt: u16) {
        self.shared.kick(cxt);
    }

    pub fn threads(&self) -> usize {
        self.threads.len()
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        self.shared.ready.notify_all();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;
    use std::sync::mpsc;
    use std::time::Duration;

    #[test]
    fn every_kick_is_followed_by_a_pass_and_kicked_contexts_run() {
        let runs: Arc<Vec<AtomicU64>> = Arc::new((0..4).map(|_| AtomicU64::new(0)).collect());
        let (tx, rx) = mpsc::channel();
        let tx = Mutex::new(tx);
        let r = Arc::clone(&runs);
        let w = Workers::new(2, 4, move |c| {
            r[usize::from(c)].fetch_add(1, Ordering::SeqCst);
            let _ = tx.lock().expect("lock").send(c);
            if c == 0 {
                vec![3]
            } else {
                vec![]
            }
        });
        w.kick(0);
        let mut seen = vec![rx.recv_timeout(Duration::from_secs(5)).expect("pass")];
        seen.push(
            rx.recv_timeout(Duration::from_secs(5))
                .expect("kicked pass"),
        );
        seen.sort_unstable();
        assert_eq!(seen, vec![0, 3]);
        w.kick(99);
        drop(w);
        assert_eq!(runs[3].load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_kick_during_a_pass_runs_it_again() {
        let (started_tx, started_rx) = mpsc::channel::<()>();
        let (go_tx, go_rx) = mpsc::channel::<()>();
        let (tx, rx) = mpsc::channel();
        let started_tx = Mutex::new(started_tx);
        let go_rx = Mutex::new(go_rx);
        let tx = Mutex::new(tx);
        let w = Workers::new(1, 1, move |c| {
            let _ = started_tx.lock().expect("lock").send(());
            let _ = go_rx
                .lock()
                .expect("lock")
                .recv_timeout(Duration::from_secs(5));
            let _ = tx.lock().expect("lock").send(c);
            vec![]
        });
        w.kick(0);
        started_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("first pass started");
        w.kick(0);
        w.kick(0);
        go_tx.send(()).expect("go");
        go_tx.send(()).expect("go");
        rx.recv_timeout(Duration::from_secs(5)).expect("first pass");
        rx.recv_timeout(Duration::from_secs(5))
            .expect("second pass");
        assert!(
            rx.recv_timeout(Duration::from_millis(100)).is_err(),
            "coalesced to one re-run"
        );
    }
}
