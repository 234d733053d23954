//! Fetching one repository at an interval and on demand, with concurrent demands coalesced:
//! however many callers ask for a fetch while one runs, one more fetch follows and answers
//! them all. A caller is only answered by a fetch that started after it asked, so a commit
//! pushed before `fetch_now` is always seen. A fetch that panics is answered like a failed
//! one, and the loop goes on: it never dies silently, leaving callers waiting.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, watch};

use super::{Repository, fetch};

/// A finished fetch: `generation` counts the requests it answers.
#[derive(Debug, Clone)]
pub struct Completed<T> {
    /// The highest request generation this fetch answers.
    pub generation: u64,
    /// What the fetch returned.
    pub result: T,
}

/// The result of one fetch of a [`Repository`], shareable among the callers it answers.
pub type FetchResult = Result<fetch::Outcome, Arc<fetch::Error>>;

/// The background fetch loop of one repository. Dropping it stops the loop.
pub struct Poller<T> {
    requested: Arc<AtomicU64>,
    wake: Arc<Notify>,
    done: watch::Receiver<Option<Completed<T>>>,
    task: tokio::task::JoinHandle<()>,
}

impl<T: Clone + Send + Sync + 'static> Poller<T> {
    /// Starts a loop that runs the blocking `fetch` right away, then every `interval` and
    /// whenever [`fetch_now`](Self::fetch_now) asks; a fetch that panics is answered with
    /// `recover(panic message)`. Must be called inside a tokio runtime.
    pub fn spawn<F, R>(interval: Duration, fetch: F, recover: R) -> Self
    where
        F: Fn() -> T + Send + Sync + 'static,
        R: Fn(String) -> T + Send + 'static,
    {
        let requested = Arc::new(AtomicU64::new(0));
        let wake = Arc::new(Notify::new());
        let (sender, done) = watch::channel(None);
        let fetch = Arc::new(fetch);
        let task = tokio::spawn({
            let requested = requested.clone();
            let wake = wake.clone();
            async move {
                let mut ticks = tokio::time::interval(interval);
                ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = ticks.tick() => {}
                        () = wake.notified() => {}
                    }
                    // Every request counted so far is answered by this fetch, which starts now.
                    let generation = requested.load(Ordering::SeqCst);
                    let fetch = fetch.clone();
                    let result = match tokio::task::spawn_blocking(move || fetch()).await {
                        Ok(result) => result,
                        Err(failed) => {
                            let message = panic_message(failed);
                            tracing::error!(%message, "a fetch panicked");
                            recover(message)
                        }
                    };
                    if sender.send(Some(Completed { generation, result })).is_err() {
                        break;
                    }
                }
            }
        });
        Self {
            requested,
            wake,
            done,
            task,
        }
    }

    /// Fetches now (or joins the fetch already queued) and returns its result.
    pub async fn fetch_now(&self) -> T {
        let mine = self.requested.fetch_add(1, Ordering::SeqCst) + 1;
        self.wake.notify_one();
        let mut done = self.done.clone();
        let completed = done
            .wait_for(|c| c.as_ref().is_some_and(|c| c.generation >= mine))
            .await
            .expect("the poller task runs as long as the poller exists");
        completed
            .as_ref()
            .expect("wait_for only returns a completed fetch")
            .result
            .clone()
    }

    /// Stops the loop now, as dropping the poller does; callers waiting in `fetch_now` keep
    /// waiting, so stop only what nobody asks any more.
    pub fn stop(&self) {
        self.task.abort();
    }

    /// Every finished fetch, for a loop that reacts to new commits.
    pub fn subscribe(&self) -> watch::Receiver<Option<Completed<T>>> {
        self.done.clone()
    }
}

/// What a task that did not finish said: its panic message, when it has one.
pub(crate) fn panic_message(failed: tokio::task::JoinError) -> String {
    if !failed.is_panic() {
        return "the task was cancelled".to_owned();
    }
    let payload = failed.into_panic();
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned())
}

impl<T> Drop for Poller<T> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Repository {
    /// A [`Poller`] fetching this repository every `interval`.
    pub fn poller(&self, interval: Duration) -> Poller<FetchResult> {
        let repo = self.clone();
        Poller::spawn(
            interval,
            move || repo.fetch().map_err(Arc::new),
            self.panicked_fetch(),
        )
    }

    /// The answer of a [`Poller`] whose fetch of this repository panicked.
    pub fn panicked_fetch(&self) -> impl Fn(String) -> FetchResult + Send + 'static {
        let url = self.url().clone();
        move |message| {
            Err(Arc::new(fetch::Error::Panicked {
                url: url.clone(),
                message,
            }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::sync::mpsc;

    /// A fetch function that counts its runs and waits for the test to let each one finish.
    fn gated() -> (
        impl Fn() -> u64 + Send + Sync,
        Arc<AtomicU64>,
        mpsc::Sender<()>,
    ) {
        let runs = Arc::new(AtomicU64::new(0));
        let (open, gate) = mpsc::channel::<()>();
        let gate = Mutex::new(gate);
        let counter = runs.clone();
        let fetch = move || {
            let run = counter.fetch_add(1, Ordering::SeqCst) + 1;
            gate.lock()
                .expect("one fetch at a time")
                .recv()
                .expect("the test keeps the gate");
            run
        };
        (fetch, runs, open)
    }

    async fn until(check: impl Fn() -> bool) {
        while !check() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn requests_made_during_a_fetch_share_one_follow_up_fetch() {
        let (fetch, runs, open) = gated();
        let poller = Arc::new(Poller::spawn(Duration::from_secs(3600), fetch, |_| 0));
        // The first, periodic fetch is running and held at the gate.
        until(|| runs.load(Ordering::SeqCst) == 1).await;
        let callers: Vec<_> = (0..5)
            .map(|_| {
                let poller = poller.clone();
                tokio::spawn(async move { poller.fetch_now().await })
            })
            .collect();
        until(|| poller.requested.load(Ordering::SeqCst) == 5).await;
        open.send(()).expect("fetch 1 waits");
        until(|| runs.load(Ordering::SeqCst) == 2).await;
        open.send(()).expect("fetch 2 waits");
        for caller in callers {
            // Fetch 1 started before they asked, so each is answered by fetch 2.
            assert_eq!(caller.await.expect("caller finishes"), 2);
        }
        assert_eq!(runs.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn without_requests_the_repository_is_fetched_again_and_again() {
        let runs = Arc::new(AtomicU64::new(0));
        let counter = runs.clone();
        let poller = Poller::spawn(
            Duration::from_millis(20),
            move || counter.fetch_add(1, Ordering::SeqCst) + 1,
            |_| 0,
        );
        let mut done = poller.subscribe();
        // Generous bound: only a poller that stops fetching by itself misses it.
        tokio::time::timeout(
            Duration::from_secs(30),
            done.wait_for(|c| c.as_ref().is_some_and(|c| c.result >= 3)),
        )
        .await
        .expect("three periodic fetches happen")
        .expect("the poller runs");
        assert_eq!(poller.requested.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn a_fetch_that_panics_is_answered_as_an_error_and_the_loop_goes_on() {
        let armed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let trap = armed.clone();
        let poller = Poller::spawn(
            Duration::from_secs(3600),
            move || -> Result<(), String> {
                assert!(
                    !trap.swap(false, Ordering::SeqCst),
                    "found a corrupt object"
                );
                Ok(())
            },
            Err,
        );
        poller.fetch_now().await.expect("a first fetch");
        // A fetch already queued may take the trap; arm it again until a request meets it.
        let mut failed = None;
        for _ in 0..10 {
            armed.store(true, Ordering::SeqCst);
            if let Err(message) = poller.fetch_now().await {
                failed = Some(message);
                break;
            }
        }
        let failed = failed.expect("a fetch that panicked is answered with an error");
        assert!(failed.contains("found a corrupt object"), "{failed}");
        armed.store(false, Ordering::SeqCst);
        poller
            .fetch_now()
            .await
            .expect("the loop still fetches after a panic");
    }
}
