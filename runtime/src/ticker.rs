//! [`EpochTicker`]: the thread that advances the engine's epoch every tick while a job runs,
//! which is how a running guest learns that its deadline has passed. With no job running the
//! thread sleeps on a condition variable: an idle node does not wake up for it.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use wasmtime::Engine;

#[derive(Debug, Default)]
struct State {
    /// Jobs running now.
    running: usize,
    stop: bool,
}

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    /// The ticker thread's id, for the test that counts its wake-ups.
    #[cfg(test)]
    tid: Mutex<Option<String>>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Owns the ticker thread; dropping it stops the thread and waits for it.
#[derive(Debug)]
pub(crate) struct EpochTicker {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// Keeps the ticker ticking while it lives (one per running job).
#[derive(Debug)]
pub(crate) struct Ticking {
    shared: Arc<Shared>,
}

impl Drop for Ticking {
    fn drop(&mut self) {
        let mut s = self.shared.lock();
        s.running = s.running.saturating_sub(1);
    }
}

impl EpochTicker {
    pub(crate) fn start(engine: Engine, tick: Duration) -> std::io::Result<Self> {
        let shared = Arc::new(Shared::default());
        let thread = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("vvm-epoch".to_owned())
                .spawn(move || {
                    #[cfg(test)]
                    {
                        *shared.tid.lock().unwrap_or_else(|e| e.into_inner()) =
                            std::fs::read_link("/proc/thread-self").ok().and_then(|p| {
                                p.file_name().map(|n| n.to_string_lossy().into_owned())
                            });
                    }
                    let mut s = shared.lock();
                    loop {
                        if s.stop {
                            break;
                        }
                        if s.running == 0 {
                            // Idle: sleep until a job starts (or the runtime is dropped).
                            s = shared.wake.wait(s).unwrap_or_else(|e| e.into_inner());
                            continue;
                        }
                        let (next, timeout) = shared
                            .wake
                            .wait_timeout(s, tick)
                            .unwrap_or_else(|e| e.into_inner());
                        s = next;
                        // Only a full tick advances the epoch (a wake-up to stop does not).
                        if timeout.timed_out() && s.running > 0 {
                            engine.increment_epoch();
                        }
                    }
                })?
        };
        Ok(Self {
            shared,
            thread: Some(thread),
        })
    }

    /// Marks a job as running until the returned guard is dropped.
    pub(crate) fn running(&self) -> Ticking {
        let mut s = self.shared.lock();
        s.running += 1;
        if s.running == 1 {
            self.shared.wake.notify_all();
        }
        Ticking {
            shared: self.shared.clone(),
        }
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.shared.lock().stop = true;
        self.shared.wake.notify_all();
        if let Some(thread) = self.thread.take() {
            // The thread only loops and waits; it cannot have panicked in a way that matters.
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Voluntary context switches of the ticker thread: one per wake-up.
    fn wakeups(ticker: &EpochTicker) -> u64 {
        let tid = loop {
            if let Some(t) = ticker.shared.tid.lock().expect("tid").clone() {
                break t;
            }
            std::thread::yield_now();
        };
        let status =
            std::fs::read_to_string(format!("/proc/self/task/{tid}/status")).expect("status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
            .and_then(|v| v.trim().parse().ok())
            .expect("voluntary_ctxt_switches")
    }

    #[test]
    fn the_ticker_sleeps_while_no_job_runs_and_ticks_while_one_does() {
        let engine = Engine::new(wasmtime::Config::new().epoch_interruption(true)).expect("engine");
        let ticker = EpochTicker::start(engine, Duration::from_millis(1)).expect("ticker");
        let before = wakeups(&ticker);
        std::thread::sleep(Duration::from_millis(200));
        let idle = wakeups(&ticker) - before;
        // 200 ticks of 1 ms if it ticked while idle; a couple of wake-ups at most otherwise.
        assert!(idle <= 3, "the idle ticker woke {idle} times in 200 ms");
        let guard = ticker.running();
        let before = wakeups(&ticker);
        std::thread::sleep(Duration::from_millis(200));
        let busy = wakeups(&ticker) - before;
        assert!(
            busy >= 2,
            "the ticker woke only {busy} times in 200 ms of a running job"
        );
        drop(guard);
        std::thread::sleep(Duration::from_millis(20));
        let before = wakeups(&ticker);
        std::thread::sleep(Duration::from_millis(200));
        let after = wakeups(&ticker) - before;
        assert!(
            after <= 3,
            "the ticker kept waking ({after}) after the job ended"
        );
    }
}
