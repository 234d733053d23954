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
    running: Gauge,
    waiting: Gauge,
}

impl Turns {
    /// `size` turns (at least one).
    pub fn new(size: usize) -> Self {
        Self {
            semaphore: Arc::new(Semaphore::new(size.max(1))),
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
