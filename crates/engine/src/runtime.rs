//! The reconcile runtime (after kube-rs' controller): it owns the
//! guarantees so reconcilers do not have to.
//!
//! - at most one reconcile per key at a time; a wake-up for a key that is
//!   running is remembered and runs once after it;
//! - wake-ups are deduplicated: a key queued many times runs once;
//! - at most `concurrency` reconciles run at once;
//! - a failing key backs off exponentially, alone: routine wake-ups (a
//!   resync's) wait for its retry, so it is retried when the log says;
//!   only a person's command (`wake_first`) cuts the back-off short;
//! - a reconcile says when to look again, and the earliest wish wins;
//! - shutdown stops dispatching and waits for running reconciles.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;

/// What a reconcile wants next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Nothing until something wakes the key.
    Idle,
    /// Look again after this long (or sooner, if woken).
    After(Duration),
}

pub const BACKOFF_START: Duration = Duration::from_secs(1);
pub const BACKOFF_MAX: Duration = Duration::from_secs(300);

struct Inner<K> {
    ready: VecDeque<K>,
    queued: HashSet<K>,
    running: HashSet<K>,
    /// Woken while running: run again as soon as the current run ends
    /// (true: by a command, which cuts a back-off short).
    dirty: HashMap<K, bool>,
    scheduled: BTreeMap<(Instant, u64), K>,
    scheduled_at: HashMap<K, (Instant, u64)>,
    seq: u64,
    failures: HashMap<K, u32>,
    stopping: bool,
}

impl<K: Clone + Eq + Hash> Inner<K> {
    fn push_ready(&mut self, key: K) {
        if self.running.contains(&key) {
            self.dirty.entry(key).or_insert(false);
        } else if self.failures.contains_key(&key) && self.scheduled_at.contains_key(&key) {
            // Backing off after a failure: the scheduled retry stands.
        } else if self.queued.insert(key.clone()) {
            if let Some(at) = self.scheduled_at.remove(&key) {
                self.scheduled.remove(&at);
            }
            self.ready.push_back(key);
        }
    }

    /// Like `push_ready`, but ahead of everything queued, moving the key
    /// forward if it already waits further back.
    fn push_first(&mut self, key: K) {
        if self.running.contains(&key) {
            self.dirty.insert(key, true);
            return;
        }
        if self.queued.contains(&key) {
            if let Some(pos) = self.ready.iter().position(|k| *k == key) {
                self.ready.remove(pos);
            }
        } else {
            self.queued.insert(key.clone());
            if let Some(at) = self.scheduled_at.remove(&key) {
                self.scheduled.remove(&at);
            }
        }
        self.ready.push_front(key);
    }

    fn schedule(&mut self, key: K, at: Instant) {
        if self.queued.contains(&key) {
            return;
        }
        if let Some(&(old, seq)) = self.scheduled_at.get(&key) {
            if old <= at {
                return;
            }
            self.scheduled.remove(&(old, seq));
        }
        self.seq += 1;
        self.scheduled.insert((at, self.seq), key.clone());
        self.scheduled_at.insert(key, (at, self.seq));
    }

    /// Moves due scheduled keys to the ready queue; returns the next
    /// scheduled instant, if any.
    fn promote_due(&mut self, now: Instant) -> Option<Instant> {
        while let Some((&(at, seq), _)) = self.scheduled.first_key_value() {
            if at > now {
                return Some(at);
            }
            let key = self.scheduled.remove(&(at, seq)).expect("present");
            self.scheduled_at.remove(&key);
            self.push_ready(key);
        }
        None
    }
}

/// A handle to wake keys; cheap to clone.
pub struct Runtime<K> {
    inner: Arc<Mutex<Inner<K>>>,
    wake: Arc<Notify>,
    concurrency: usize,
}

impl<K> Clone for Runtime<K> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            wake: self.wake.clone(),
            concurrency: self.concurrency,
        }
    }
}

impl<K: Clone + Eq + Hash + Send + Sync + 'static> Runtime<K> {
    pub fn new(concurrency: usize) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Inner {
                ready: VecDeque::new(),
                queued: HashSet::new(),
                running: HashSet::new(),
                dirty: HashMap::new(),
                scheduled: BTreeMap::new(),
                scheduled_at: HashMap::new(),
                seq: 0,
                failures: HashMap::new(),
                stopping: false,
            })),
            wake: Arc::new(Notify::new()),
            concurrency: concurrency.max(1),
        }
    }

    /// Reconcile `key` as soon as possible.
    pub fn wake(&self, key: K) {
        self.inner.lock().unwrap().push_ready(key);
        self.wake.notify_one();
    }

    /// Reconcile `key` before anything already queued: for a person's
    /// command, which should not wait behind a full resync's wake-ups.
    pub fn wake_first(&self, key: K) {
        self.inner.lock().unwrap().push_first(key);
        self.wake.notify_one();
    }

    /// Reconcile `key` after `delay`, unless something wakes it sooner.
    pub fn wake_after(&self, key: K, delay: Duration) {
        self.inner
            .lock()
            .unwrap()
            .schedule(key, Instant::now() + delay);
        self.wake.notify_one();
    }

    /// Keys queued or running, for observability and tests.
    pub fn pending(&self) -> usize {
        let inner = self.inner.lock().unwrap();
        inner.ready.len() + inner.running.len()
    }

    /// Stops dispatching; `run` returns once running reconciles end.
    pub fn shutdown(&self) {
        self.inner.lock().unwrap().stopping = true;
        self.wake.notify_one();
    }

    /// Dispatches until [`Runtime::shutdown`].
    pub async fn run<F, Fut, E>(&self, reconcile: F)
    where
        F: Fn(K) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Next, E>> + Send + 'static,
        E: std::fmt::Display + Send + 'static,
    {
        let reconcile = Arc::new(reconcile);
        let permits = Arc::new(Semaphore::new(self.concurrency));
        let mut tasks = JoinSet::new();
        loop {
            let wake = self.wake.notified();
            tokio::pin!(wake);
            wake.as_mut().enable();

            let (key, next_at) = {
                let mut inner = self.inner.lock().unwrap();
                if inner.stopping {
                    break;
                }
                let next_at = inner.promote_due(Instant::now());
                let key = if permits.available_permits() > 0 {
                    inner.ready.pop_front()
                } else {
                    None
                };
                if let Some(k) = &key {
                    inner.queued.remove(k);
                    inner.running.insert(k.clone());
                }
                (key, next_at)
            };

            let Some(key) = key else {
                let sleep = async {
                    match next_at {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    _ = &mut wake => {}
                    _ = sleep => {}
                    Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
                }
                continue;
            };

            let permit = permits.clone().acquire_owned().await.expect("never closed");
            let fut = reconcile(key.clone());
            let runtime = self.clone();
            tasks.spawn(async move {
                let result = fut.await;
                drop(permit);
                runtime.finish(key, result);
            });
        }
        while tasks.join_next().await.is_some() {}
    }

    /// How long after `key`'s running reconcile the runtime retries it if
    /// that reconcile fails (what `finish` will schedule).
    pub fn retry_delay(&self, key: &K) -> Duration {
        let failures = self.inner.lock().unwrap().failures.get(key).copied();
        backoff(failures.unwrap_or(0) + 1)
    }

    fn finish<E: std::fmt::Display>(&self, key: K, result: Result<Next, E>) {
        let mut inner = self.inner.lock().unwrap();
        inner.running.remove(&key);
        match result {
            Ok(next) => {
                inner.failures.remove(&key);
                if let Next::After(delay) = next {
                    inner.schedule(key.clone(), Instant::now() + delay);
                }
            }
            Err(err) => {
                let failures = inner.failures.entry(key.clone()).or_insert(0);
                *failures += 1;
                let delay = backoff(*failures);
                tracing::warn!(error = %err, retry_in = ?delay, "reconcile failed");
                inner.schedule(key.clone(), Instant::now() + delay);
            }
        }
        match inner.dirty.remove(&key) {
            Some(true) => inner.push_first(key),
            Some(false) => inner.push_ready(key),
            None => {}
        }
        drop(inner);
        self.wake.notify_one();
    }
}

/// 1 s, 2 s, 4 s, ... up to 5 min.
pub fn backoff(failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(16);
    (BACKOFF_START * 2u32.pow(exp)).min(BACKOFF_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[derive(Default)]
    struct Probe {
        runs: Mutex<Vec<(u32, Instant)>>,
        in_flight: Mutex<HashMap<u32, usize>>,
        max_per_key: AtomicUsize,
        total_in_flight: AtomicUsize,
        max_total: AtomicUsize,
    }

    impl Probe {
        fn enter(&self, key: u32) {
            self.runs.lock().unwrap().push((key, Instant::now()));
            let mut m = self.in_flight.lock().unwrap();
            let n = m.entry(key).or_default();
            *n += 1;
            self.max_per_key.fetch_max(*n, Ordering::SeqCst);
            let t = self.total_in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            self.max_total.fetch_max(t, Ordering::SeqCst);
        }
        fn leave(&self, key: u32) {
            *self.in_flight.lock().unwrap().get_mut(&key).unwrap() -= 1;
            self.total_in_flight.fetch_sub(1, Ordering::SeqCst);
        }
        fn runs_of(&self, key: u32) -> Vec<Instant> {
            self.runs
                .lock()
                .unwrap()
                .iter()
                .filter(|(k, _)| *k == key)
                .map(|(_, t)| *t)
                .collect()
        }
    }

    fn start(
        concurrency: usize,
        work: Duration,
        result: impl Fn(u32) -> Result<Next, String> + Send + Sync + 'static,
    ) -> (Runtime<u32>, Arc<Probe>, tokio::task::JoinHandle<()>) {
        let rt = Runtime::new(concurrency);
        let probe = Arc::new(Probe::default());
        let result = Arc::new(result);
        let handle = tokio::spawn({
            let rt = rt.clone();
            let probe = probe.clone();
            async move {
                rt.run(move |key| {
                    let probe = probe.clone();
                    let result = result.clone();
                    async move {
                        probe.enter(key);
                        tokio::time::sleep(work).await;
                        probe.leave(key);
                        result(key)
                    }
                })
                .await
            }
        });
        (rt, probe, handle)
    }

    #[tokio::test(start_paused = true)]
    async fn one_reconcile_per_key_at_a_time() {
        let (rt, probe, _h) = start(8, Duration::from_secs(1), |_| Ok(Next::Idle));
        rt.wake(1);
        tokio::time::sleep(Duration::from_millis(100)).await;
        for _ in 0..10 {
            rt.wake(1);
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(probe.max_per_key.load(Ordering::SeqCst), 1);
        // The run in progress, then exactly one for all the wake-ups during it.
        assert_eq!(probe.runs_of(1).len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn wakeups_are_deduplicated() {
        let rt = Runtime::new(4);
        for _ in 0..100 {
            rt.wake(7u32);
        }
        let probe = Arc::new(Probe::default());
        let p = probe.clone();
        let runner = rt.clone();
        tokio::spawn(async move {
            runner
                .run(move |k| {
                    let p = p.clone();
                    async move {
                        p.enter(k);
                        p.leave(k);
                        Ok::<_, String>(Next::Idle)
                    }
                })
                .await
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(probe.runs_of(7).len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn concurrency_is_bounded() {
        let (rt, probe, _h) = start(3, Duration::from_secs(1), |_| Ok(Next::Idle));
        for k in 0..10 {
            rt.wake(k);
        }
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(probe.max_total.load(Ordering::SeqCst), 3);
        assert_eq!(probe.runs.lock().unwrap().len(), 10);
    }

    #[tokio::test(start_paused = true)]
    async fn failing_key_backs_off_alone() {
        let (rt, probe, _h) = start(4, Duration::ZERO, |k| {
            if k == 1 {
                Err("boom".to_owned())
            } else {
                Ok(Next::After(Duration::from_secs(1)))
            }
        });
        let t0 = Instant::now();
        rt.wake(1);
        rt.wake(2);
        tokio::time::sleep(Duration::from_millis(7500)).await;
        let gaps: Vec<_> = probe
            .runs_of(1)
            .iter()
            .map(|t| (*t - t0).as_secs())
            .collect();
        assert_eq!(gaps, vec![0, 1, 3, 7], "1 s, 2 s, 4 s back-off");
        assert_eq!(probe.runs_of(2).len(), 8, "the healthy key keeps its pace");
    }

    /// A failing key is retried when its back-off says, however often a
    /// resync wakes it; a person's command retries it at once.
    #[tokio::test(start_paused = true)]
    async fn routine_wakes_wait_for_the_back_off_and_commands_do_not() {
        let (rt, probe, _h) = start(4, Duration::ZERO, |_| Err("boom".to_owned()));
        let t0 = Instant::now();
        rt.wake(1);
        // A resync every half second.
        for _ in 0..15 {
            tokio::time::sleep(Duration::from_millis(500)).await;
            rt.wake(1);
        }
        let secs =
            |runs: Vec<Instant>| -> Vec<u64> { runs.iter().map(|t| (*t - t0).as_secs()).collect() };
        assert_eq!(
            secs(probe.runs_of(1)),
            vec![0, 1, 3, 7],
            "1 s, 2 s, 4 s back-off"
        );
        rt.wake_first(1);
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(
            secs(probe.runs_of(1)),
            vec![0, 1, 3, 7, 7],
            "the command ran at once"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn earliest_requeue_wins_and_wake_preempts_it() {
        let (rt, probe, _h) = start(4, Duration::ZERO, |_| Ok(Next::Idle));
        let t0 = Instant::now();
        rt.wake_after(1, Duration::from_secs(10));
        rt.wake_after(1, Duration::from_secs(3));
        rt.wake_after(1, Duration::from_secs(20));
        tokio::time::sleep(Duration::from_secs(30)).await;
        let runs: Vec<_> = probe
            .runs_of(1)
            .iter()
            .map(|t| (*t - t0).as_secs())
            .collect();
        assert_eq!(runs, vec![3]);
        rt.wake_after(1, Duration::from_secs(10));
        rt.wake(1);
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert_eq!(
            probe.runs_of(1).len(),
            2,
            "a wake replaces the scheduled run"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn wake_first_jumps_the_queue() {
        // One worker, busy with key 0, and keys 1..=5 queued behind it.
        let (rt, probe, _h) = start(1, Duration::from_secs(1), |_| Ok(Next::Idle));
        rt.wake(0);
        tokio::time::sleep(Duration::from_millis(10)).await;
        for k in 1..=5 {
            rt.wake(k);
        }
        rt.wake_first(4);
        rt.wake_first(9);
        tokio::time::sleep(Duration::from_secs(10)).await;
        let order: Vec<u32> = probe.runs.lock().unwrap().iter().map(|(k, _)| *k).collect();
        assert_eq!(
            order,
            vec![0, 9, 4, 1, 2, 3, 5],
            "urgent keys first, each once"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_drains_running_reconciles() {
        let (rt, probe, handle) = start(4, Duration::from_secs(2), |_| Ok(Next::Idle));
        rt.wake(1);
        tokio::time::sleep(Duration::from_millis(10)).await;
        rt.shutdown();
        rt.wake(2);
        handle.await.unwrap();
        assert_eq!(
            probe.total_in_flight.load(Ordering::SeqCst),
            0,
            "ran to completion"
        );
        assert_eq!(
            probe.runs_of(2).len(),
            0,
            "nothing new starts after shutdown"
        );
    }

    #[test]
    fn backoff_doubles_to_a_cap() {
        assert_eq!(backoff(1), Duration::from_secs(1));
        assert_eq!(backoff(3), Duration::from_secs(4));
        assert_eq!(backoff(40), BACKOFF_MAX);
    }
}
