//! Outgoing notifications: each event of the pipeline's environments, as a JSON document POSTed
//! to the URLs the pipeline's `notifications:` name, signed with HMAC-SHA256 in
//! `X-Stagehand-Signature: sha256=<hex>` when a secret is given. Sending never blocks
//! reconciliation: events go into a bounded queue per target (dropped with a warning when it is
//! full), and each target's worker retries with backoff. Messages carry what statuses carry:
//! object names, field paths and reasons, never Secret values.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::mpsc;

use super::webhook::WebhookSecret;
use crate::pipeline::Pipeline;

/// Messages waiting per target before new ones are dropped.
const QUEUE: usize = 256;
/// Tries per message: the first and four retries, 1 s to 8 s apart.
const ATTEMPTS: u32 = 5;

/// One event, as the receiver gets it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Message {
    /// The pipeline's name.
    pub pipeline: String,
    /// The environment it happened in.
    pub environment: String,
    /// `drifted`, `healed`, `pruned`, `failed`, `alert` or `recovered`.
    pub event: String,
    /// What happened, for people.
    pub message: String,
    /// RFC 3339.
    pub time: String,
}

/// A notification target that cannot be set up.
#[derive(Debug, thiserror::Error)]
#[error("notification {name:?}: cannot read {file}")]
pub struct Error {
    /// The notification's name.
    pub name: String,
    /// The URL or secret file.
    pub file: PathBuf,
    /// Why it cannot be read.
    #[source]
    pub source: std::io::Error,
}

struct Target {
    name: String,
    events: Vec<String>,
    queue: mpsc::Sender<Message>,
}

/// Hands events to every target that wants them.
pub struct Notifier {
    targets: Vec<Target>,
}

fn read(name: &str, file: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(file).map_err(|source| Error {
        name: name.to_owned(),
        file: file.to_owned(),
        source,
    })
}

impl Notifier {
    /// Reads each target's URL and secret files and starts its worker. Must run inside a tokio
    /// runtime.
    pub fn start(pipeline: &Pipeline) -> Result<Self, Error> {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(10))
            .build()
            .expect("a client with timeouts only builds");
        let mut targets = Vec::new();
        for n in &pipeline.notifications {
            let url = String::from_utf8_lossy(&read(&n.name, &n.url_file)?)
                .trim()
                .to_owned();
            let secret = match &n.secret_file {
                Some(file) => WebhookSecret::from_file_contents(read(&n.name, file)?),
                None => None,
            };
            let (queue, messages) = mpsc::channel(QUEUE);
            tokio::spawn(deliver(
                n.name.clone(),
                url,
                secret,
                client.clone(),
                messages,
            ));
            targets.push(Target {
                name: n.name.clone(),
                events: n.events.clone(),
                queue,
            });
        }
        Ok(Self { targets })
    }

    /// Queues `message` for every target that wants its event; never waits.
    pub fn send(&self, message: &Message) {
        for target in &self.targets {
            if !target.events.is_empty() && !target.events.contains(&message.event) {
                continue;
            }
            if target.queue.try_send(message.clone()).is_err() {
                tracing::warn!(
                    notification = %target.name,
                    environment = %message.environment,
                    "notification dropped: the target is not keeping up"
                );
            }
        }
    }
}

async fn deliver(
    name: String,
    url: String,
    secret: Option<WebhookSecret>,
    client: reqwest::Client,
    mut messages: mpsc::Receiver<Message>,
) {
    while let Some(message) = messages.recv().await {
        let body = serde_json::to_vec(&message).expect("a message serialises");
        let mut delay = Duration::from_secs(1);
        for attempt in 1..=ATTEMPTS {
            let mut request = client
                .post(&url)
                .header("Content-Type", "application/json")
                .body(body.clone());
            if let Some(secret) = &secret {
                request = request.header("X-Stagehand-Signature", secret.sign(&body));
            }
            // The URL is left out of logs: it often carries a token.
            match request.send().await {
                Ok(response) if response.status().is_success() => break,
                Ok(response) => tracing::warn!(
                    notification = %name, attempt, status = %response.status(),
                    "notification refused by its receiver"
                ),
                Err(error) => tracing::warn!(
                    notification = %name, attempt, error = %crate::service::describe(&error.without_url()),
                    "notification not delivered"
                ),
            }
            if attempt == ATTEMPTS {
                tracing::warn!(notification = %name, event = %message.event, "notification given up");
                break;
            }
            tokio::time::sleep(delay).await;
            delay *= 2;
        }
    }
}
