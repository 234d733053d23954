//! Turns at the work that renders an environment and talks to its cluster: sync passes,
//! diffs, previews, comparisons and pre-flight checks all take one, so `--concurrent-syncs`
//! bounds the memory and cluster connections of all of them together, however many clients ask.

use std::sync::Arc;

use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A fixed number of turns, shared by every clone.
#[derive(Debug, Clone)]
pub struct Turns {
    semaphore: Arc<Semaphore>,
    size: u32,
    running: Gauge,
    waiting: Gauge,
}

impl Turns {
    /// `size` turns (at least one).
    pub fn new(size: usize) -> Self {
        let size = u32::try_from(size.max(1)).unwrap_or(u32::MAX);
        Self {
            semaphore: Arc::new(Semaphore::new(size as usize)),
            size,
            running: Gauge::default(),
            waiting: Gauge::default(),
        }
    }

    /// The same turns, counting the work holding one in `running` and the work waiting for one
    /// in `waiting`.
    pub fn counted(self, running: Gauge, waiting: Gauge) -> Self {
        Self {
            running,
            waiting,
            ..self
        }
    }

    /// Waits for a turn, in the order asked; the turn ends when the returned value is dropped.
    pub async fn take(&self) -> Turn {
        self.waiting.inc();
        let permit = self
            .semaphore
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        self.waiting.dec();
        self.running.inc();
        Turn {
            _permit: permit,
            running: self.running.clone(),
        }
    }

    /// Completes once no work holds a turn, and holds every turn from then on: work that asks
    /// for one afterwards waits for ever. For a shutdown that lets the work in flight finish;
    /// the semaphore is fair, so nothing asked after this starts before it.
    pub async fn drain(&self) {
        self.semaphore
            .clone()
            .acquire_many_owned(self.size)
            .await
            .expect("the semaphore is never closed")
            .forget();
    }
}

/// One turn, held until dropped.
#[derive(Debug)]
pub struct Turn {
    _permit: OwnedSemaphorePermit,
    running: Gauge,
}

impl Drop for Turn {
    fn drop(&mut self) {
        self.running.dec();
    }
}

#[cfg(test)]
mod tests {
    use futures::FutureExt as _;

    use super::*;

    #[tokio::test]
    async fn a_drain_waits_for_the_turns_in_flight_and_lets_none_start_after_it() {
        let turns = Turns::new(2);
        let held = turns.take().await;
        let mut drain = Box::pin(turns.drain());
        assert!(drain.as_mut().now_or_never().is_none(), "a turn is held");
        let mut later = Box::pin(turns.take());
        assert!(
            later.as_mut().now_or_never().is_none(),
            "a turn asked after the drain waits behind it"
        );
        drop(held);
        drain.await;
        assert!(
            later.now_or_never().is_none(),
            "drained turns never come back"
        );
    }
}
