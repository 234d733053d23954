//! Running the pipeline file as it changes. The file is read again every few seconds and, when
//! the pipeline names its own path in the repository (`repository.pipelinePath`), after every
//! fetch from the tip of the repository's branch; the version that changed last wins. A new
//! valid version replaces the running service (its loops stop, new ones start from the new
//! file), while an invalid one is refused: its error is reported and the last valid version
//! keeps running. The copy in the repository is also refused when it changes a setting that
//! only the file on disk may change (see [`crate::pipeline::in_repository`]); its relative paths
//! resolve as those of the file on disk do.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use super::{Config, Service};
use crate::pipeline::{Pipeline, in_repository};

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
        let disk = service.pipeline.clone();
        let (current, _) = watch::channel(service);
        let supervisor = Arc::new(Self {
            current,
            rejected: Mutex::new(None),
        });
        tokio::spawn(follow(
            Arc::downgrade(&supervisor),
            file,
            (text, disk),
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

/// One version of the pipeline file and where it was read.
struct Version {
    text: Vec<u8>,
    /// How errors name it: the file on disk, or its path in the repository at a commit.
    name: PathBuf,
    /// Read from the repository rather than from the file on disk.
    in_repository: bool,
}

/// `first`: the text of the file on disk that started the service, and its pipeline.
async fn follow(
    supervisor: std::sync::Weak<Supervisor>,
    file: PathBuf,
    first: (Vec<u8>, Arc<Pipeline>),
    build: Builder,
    every: Duration,
) {
    let (text, mut disk) = first;
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut on_disk = text.clone();
    let mut running = text;
    // The newest version refused, not tried again until another one comes.
    let mut refused: Option<Vec<u8>> = None;
    // The commit whose copy of the file was last read: a tip that did not move is not read again.
    let mut read_at: Option<ReadAt> = None;
    loop {
        let Some(mut fetched) = supervisor
            .upgrade()
            .map(|s| s.service().desired.subscribe())
        else {
            return;
        };
        // A fetch wakes the loop at once so that a commit to the file is read without waiting
        // for the next tick; a stopped service only leaves the ticks.
        tokio::select! {
            _ = ticks.tick() => {}
            _ = async {
                if fetched.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            } => {}
        }
        let Some(supervisor) = supervisor.upgrade() else {
            return;
        };
        // Whichever source changed last wins: the file on disk, or the file in the repository
        // (`repository.pipelinePath`) as fetched.
        let mut candidate = None;
        match tokio::fs::read(&file).await {
            Ok(text) if text != on_disk => {
                on_disk = text.clone();
                candidate = Some(Version {
                    text,
                    name: file.clone(),
                    in_repository: false,
                });
            }
            Ok(_) => {}
            Err(error) => {
                reject(
                    &supervisor,
                    format!("cannot read {}: {error}", file.display()),
                );
            }
        }
        let service = supervisor.service();
        // A new file on disk goes first, so that the copy in the repository is then checked
        // against it rather than against the version it replaces.
        let pipeline_path = match candidate {
            None => service.pipeline.repository.pipeline_path.clone(),
            Some(_) => None,
        };
        if let Some(path) = pipeline_path {
            let repository = service.repository.clone();
            let branch = service.pipeline.repository.branch.clone();
            let last = read_at.clone();
            let read = tokio::task::spawn_blocking(move || {
                read_in_repository(&repository, &branch, &path, last.as_ref())
            })
            .await
            .unwrap_or_else(|failed| {
                tracing::error!(error = %crate::git::poll::panic_message(failed), "reading the pipeline file in the repository panicked");
                Ok(None)
            });
            match read {
                Ok(None) => {}
                Ok(Some((at, version))) => {
                    read_at = Some(at);
                    candidate = Some(version);
                }
                Err((at, message)) => {
                    read_at = Some(at);
                    reject(&supervisor, message);
                }
            }
        }
        let Some(version) = candidate else {
            continue;
        };
        if version.text == running {
            // The newest version is the one running (a refused edit was undone).
            clear_rejected(&supervisor);
            continue;
        }
        if refused.as_ref() == Some(&version.text) {
            continue;
        }
        refused = Some(version.text.clone());
        let name = version.name;
        let parsed = std::str::from_utf8(&version.text)
            .map_err(|e| format!("{}: not UTF-8: {e}", name.display()))
            .and_then(|t| Pipeline::parse_for(&file, &name, t).map_err(|e| super::describe(&e)))
            .and_then(|pipeline| {
                if version.in_repository {
                    in_repository::check(&disk, &pipeline)
                        .map_err(|e| format!("pipeline file {}: {e}", name.display()))?;
                }
                Ok(pipeline)
            });
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
        tracing::info!(file = %name.display(), pipeline = %pipeline.name, "pipeline file changed: restarting its environments");
        match Service::start(config).await {
            Ok(service) => {
                // The new loops wait for their first fetch: the old ones stop before that.
                supervisor.service().stop();
                supervisor.current.send_replace(service);
                running = version.text;
                refused = None;
                if !version.in_repository {
                    disk = pipeline;
                }
                // The repository may be another one now, its copy not read yet.
                read_at = None;
            }
            Err(error) => {
                reject(&supervisor, super::describe(&error));
                continue;
            }
        }
        clear_rejected(&supervisor);
    }
}

/// Where a copy of the pipeline file was read: its path in the repository and the commit.
type ReadAt = (String, gix::ObjectId);

/// The file at `path` on the tip of `branch`, unless that tip is where it was last read
/// (`last`). Nothing while the branch cannot be read (not fetched yet: fetch errors are reported
/// by the service). A file that cannot be read at the tip is an error, reported once per commit.
fn read_in_repository(
    repository: &crate::git::Repository,
    branch: &str,
    path: &str,
    last: Option<&ReadAt>,
) -> Result<Option<(ReadAt, Version)>, (ReadAt, String)> {
    use crate::render::fs::FileSystem;
    let tip = match repository.try_branch_tip(branch) {
        Ok(Some(tip)) => tip,
        Ok(None) => return Ok(None),
        Err(error) => {
            tracing::debug!(error = %super::describe(&error), "the pipeline file in the repository cannot be read yet");
            return Ok(None);
        }
    };
    let at = (path.to_owned(), tip);
    if last == Some(&at) {
        return Ok(None);
    }
    let text = repository
        .tree(tip)
        .map_err(|e| super::describe(&e))
        .and_then(|tree| tree.read_file(path).map_err(|e| super::describe(&e)));
    match text {
        Ok(text) => Ok(Some((
            at,
            Version {
                text,
                name: PathBuf::from(format!("{path} at {tip}")),
                in_repository: true,
            },
        ))),
        Err(message) => Err((
            at,
            format!("repository.pipelinePath {path:?} cannot be read at {tip}: {message}"),
        )),
    }
}

fn clear_rejected(supervisor: &Supervisor) {
    if let Ok(mut rejected) = supervisor.rejected.lock() {
        *rejected = None;
    }
}

fn reject(supervisor: &Supervisor, message: String) {
    tracing::error!(error = %message, "the new pipeline file is refused; the last valid one keeps running");
    if let Ok(mut rejected) = supervisor.rejected.lock() {
        *rejected = Some(message);
    }
}
