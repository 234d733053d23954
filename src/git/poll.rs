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
mod tests;
