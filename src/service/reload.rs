//! Running the pipeline file as it changes. The file is read again every few seconds; a new
//! valid version replaces the running service (its loops stop, new ones start from the new
//! file), while an invalid one is refused: its error is reported and the last valid version
//! keeps running.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use super::{Config, Service};
use crate::pipeline::Pipeline;

/// Turns a validated pipeline into what [`Service::start`] needs (opening its repository,
/// reading its notification files, ...).
pub type Builder = Box<
    dyn Fn(Arc<Pipeline>) -> Result<Config, Box<dyn std::error::Error + Send + Sync>> + Send + Sync,
>;

/// The service of the current pipeline file, swapped when the file changes.
pub struct Supervisor {
    current: watch::Sender<Arc<Service>>,
    rejected: Mutex<Option<String>>,
}

impl Supervisor {
    /// Starts `service` (built from `file` as it reads now) and a task that reads `file` again
    /// every `every`. Must run inside a tokio runtime.
    pub fn start(
        file: PathBuf,
        text: Vec<u8>,
        service: Arc<Service>,
        build: Builder,
        every: Duration,
    ) -> Arc<Self> {
        let (current, _) = watch::channel(service);
        let supervisor = Arc::new(Self {
            current,
            rejected: Mutex::new(None),
        });
        tokio::spawn(follow(
            Arc::downgrade(&supervisor),
            file,
            text,
            build,
            every,
        ));
        supervisor
    }

    /// The service running now.
    pub fn service(&self) -> Arc<Service> {
        self.current.borrow().clone()
    }

    /// Why the newest version of the pipeline file was refused, while an older one runs.
    pub fn rejected(&self) -> Option<String> {
        self.rejected.lock().ok().and_then(|r| r.clone())
    }

    /// Stops the running service.
    pub fn stop(&self) {
        self.service().stop();
    }
}

async fn follow(
    supervisor: std::sync::Weak<Supervisor>,
    file: PathBuf,
    mut last: Vec<u8>,
    build: Builder,
    every: Duration,
) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(supervisor) = supervisor.upgrade() else {
            return;
        };
        let text = match tokio::fs::read(&file).await {
            Ok(text) => text,
            Err(error) => {
                let message = format!("cannot read {}: {error}", file.display());
                reject(&supervisor, message);
                continue;
            }
        };
        if text == last {
            continue;
        }
        last = text.clone();
        let parsed = std::str::from_utf8(&text)
            .map_err(|e| format!("{}: not UTF-8: {e}", file.display()))
            .and_then(|t| Pipeline::parse(&file, t).map_err(|e| super::describe(&e)));
        let pipeline = match parsed {
            Ok(pipeline) => Arc::new(pipeline),
            Err(message) => {
                reject(&supervisor, message);
                continue;
            }
        };
        let config = match build(pipeline.clone()) {
            Ok(config) => config,
            Err(error) => {
                reject(&supervisor, super::describe(error.as_ref()));
                continue;
            }
        };
        tracing::info!(file = %file.display(), pipeline = %pipeline.name, "pipeline file changed: restarting its environments");
        match Service::start(config).await {
            Ok(service) => {
                // The new loops wait for their first fetch: the old ones stop before that.
                supervisor.service().stop();
                supervisor.current.send_replace(service);
            }
            Err(error) => {
                reject(&supervisor, super::describe(&error));
                continue;
            }
        }
        if let Ok(mut rejected) = supervisor.rejected.lock() {
            *rejected = None;
        }
    }
}

fn reject(supervisor: &Supervisor, message: String) {
    tracing::error!(error = %message, "the new pipeline file is refused; the last valid one keeps running");
    if let Ok(mut rejected) = supervisor.rejected.lock() {
        *rejected = Some(message);
    }
}
