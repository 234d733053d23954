//! The running service: the one place that builds, from a pipeline, the graph `serve` runs.
//!
//! ```text
//!  git poller (one per repository) ──(an environment's tree moved)──► reconcile controller
//!  webhook receiver ───────────────(fetch now, coalesced)──────────►      │ status per environment
//!  api handlers ──► Service (status, sync, suspend, resume, diff, history, watch) ◄──┘
//! ```
//!
//! The reconcile loops read the repository cache without fetching: the poller keeps it fresh,
//! and after every fetch the service compares each environment's directory tree with the last
//! one it saw, waking only the environments whose own files changed. An environment in manual
//! sync mode (`sync: {auto: false}`) is shown out of sync instead and waits for
//! [`Service::sync`]. Handlers receive an `Arc<Service>` and only translate.

pub mod events;
pub mod images;
pub mod notify;
pub mod registry_webhook;
pub mod reload;
pub mod webhook;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::api::auth::AccessPolicy;
use crate::git::{self, poll::Poller};
use crate::metrics::Metrics;
use crate::pipeline::{Environment, Pipeline};
use crate::promotion::Engine;
use crate::reconcile::{
    self, Controller, EnvironmentStatus, FirstPass, Plan, Reconciler,
    source::{Fetch, GitSource},
};
use crate::secrets::Keyring;
use crate::shard::{self, Ownership};
use crate::store::{self, Store};
use notify::{Message, Notifier};

/// What the service needs to start.
pub struct Config {
    /// The pipeline to run.
    pub pipeline: Arc<Pipeline>,
    /// The cache of the pipeline's repository (not fetched yet is fine).
    pub repository: git::Repository,
    /// The age identities SOPS files are decrypted with, as they are at each pass.
    pub keys: Arc<Keyring>,
    /// How reconcile passes apply and prune.
    pub reconcile: reconcile::Options,
    /// Where passes, fetches and calls are counted.
    pub metrics: Arc<Metrics>,
    /// Where events and alerts are sent.
    pub notifier: Notifier,
    /// What the service remembers across restarts.
    pub store: Arc<dyn Store>,
    /// Who may do what, from the pipeline's `access:` rules.
    pub access: AccessPolicy,
    /// Who commits promotions to Git.
    pub git: git::promote::Options,
    /// The identities as they are now, so that approvals count with today's groups; `None`
    /// without a tokens file (every caller anonymous).
    pub people: Option<Arc<dyn crate::promotion::People>>,
    /// Which environments this replica reconciles and whether it drives promotions; one per
    /// process, shared by the services of every pipeline version.
    pub ownership: Ownership,
}

/// An environment name the pipeline does not have.
#[derive(Debug, thiserror::Error)]
#[error("environment {environment:?} is not in pipeline {pipeline:?}")]
pub struct UnknownEnvironment {
    /// The name asked for.
    pub environment: String,
    /// The running pipeline's name.
    pub pipeline: String,
}

/// Why a call into the service failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No such environment.
    #[error(transparent)]
    Unknown(#[from] UnknownEnvironment),
    /// The environment is suspended, so a sync would not run.
    #[error("environment {environment:?} is suspended; resume it first")]
    Suspended {
        /// The environment.
        environment: String,
    },
    /// The fetch a sync or diff waits for failed.
    #[error("cannot fetch the repository")]
    Fetch(#[source] Arc<git::fetch::Error>),
    /// The environment's Git history could not be read.
    #[error("cannot read the history of environment {environment:?}")]
    History {
        /// The environment.
        environment: String,
        /// Why.
        #[source]
        source: git::revision::Error,
    },
    /// A diff could not be computed.
    #[error("cannot plan a sync of environment {environment:?}")]
    Plan {
        /// The environment.
        environment: String,
        /// Why.
        #[source]
        source: reconcile::Error,
    },
    /// The service is shutting down.
    #[error("the service is stopping")]
    Stopping,
    /// Several replicas: this one does not take writes; the leader does.
    #[error(transparent)]
    NotLeader(#[from] shard::NotLeader),
    /// Several replicas: another one reconciles the environment.
    #[error(transparent)]
    NotHolder(#[from] shard::NotHolder),
    /// Several replicas: this one stopped holding what it was about to write.
    #[error(transparent)]
    Fenced(#[from] shard::Fenced),
    /// The durable state could not be read or written; nothing took effect.
    #[error("cannot record the change of environment {environment:?}")]
    Store {
        /// The environment.
        environment: String,
        /// Why.
        #[source]
        source: store::Error,
    },
}

/// What Git says an environment should run, as of the last fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredRevision {
    /// The branch tip.
    pub commit: String,
    /// The tree of the environment's directory: when only this moves, only its files changed.
    pub tree: String,
    /// When the fetch that saw it finished.
    pub fetched: SystemTime,
}

/// How an environment's revisions reach its cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncMode {
    /// New revisions are applied as soon as they are fetched.
    Auto,
    /// New revisions wait for an explicit sync.
    Manual,
}

/// One environment as the service sees it: the pipeline's definition, what Git says it should
/// run, and what its reconcile loop last did. Holds no Secret values.
#[derive(Debug, Clone)]
pub struct EnvironmentView {
    /// The pipeline's definition.
    pub environment: Environment,
    /// Whether new revisions apply by themselves.
    pub mode: SyncMode,
    /// What Git says it should run; `None` before the first fetch or when it failed.
    pub desired: Option<DesiredRevision>,
    /// Why the desired revision could not be read at the last fetch.
    pub source_error: Option<String>,
    /// What its reconcile loop last did.
    pub status: EnvironmentStatus,
    /// The tree of the environment's directory at its applied revision, when it can be read.
    pub applied_tree: Option<String>,
    /// Conditions past the pipeline's alert thresholds, for people.
    pub alerts: Vec<String>,
    /// The replica that reconciles it, when several share the work (as last listed).
    pub holder: Option<String>,
}

impl EnvironmentView {
    /// Whether Git holds files the cluster does not run yet. A newer commit that leaves the
    /// environment's directory as it was (another environment's change) is not one it lacks.
    pub fn out_of_sync(&self) -> bool {
        match &self.desired {
            Some(desired) => {
                self.status.applied_revision.as_deref() != Some(&desired.commit)
                    && self.applied_tree.as_deref() != Some(&desired.tree)
            }
            None => false,
        }
    }
}

/// One revision of an environment's history, with what the service did with it.
#[derive(Debug, Clone)]
pub struct HistoryEntry {
    /// The commit and its trailers.
    pub entry: git::history::Entry,
    /// Whether this is the revision the environment runs now.
    pub applied: bool,
    /// Whether the commit's promotion trailers are true: the store holds that promotion, and
    /// this commit as the one it landed. Anyone who can push can write such trailers.
    pub verified: bool,
    /// The recorded passes that attempted this revision, newest first.
    pub syncs: Vec<store::SyncRecord>,
    /// The images the environment's kustomization sets at this revision (`name:tag@digest`).
    pub images: Vec<String>,
}

/// What Git says per environment, shared between the fetch loop and readers.
type DesiredTable = HashMap<String, Result<DesiredRevision, String>>;

/// The running pipeline.
pub struct Service {
    pipeline: Arc<Pipeline>,
    repository: git::Repository,
    controller: Controller,
    source: Arc<GitSource>,
    options: reconcile::Options,
    poller: Arc<Poller<git::poll::FetchResult>>,
    desired: watch::Sender<Arc<DesiredTable>>,
    last_fetch_error: Mutex<Option<String>>,
    metrics: Arc<Metrics>,
    /// Raised alerts per environment.
    alerts: Arc<Mutex<HashMap<String, Vec<String>>>>,
    /// A failed re-verification per environment, raised as an alert until it passes again.
    verification_alerts: Mutex<HashMap<String, String>>,
    notifier: Arc<Notifier>,
    store: Arc<dyn Store>,
    access: AccessPolicy,
    promotions: Arc<Engine>,
    tasks: Vec<JoinHandle<()>>,
    ownership: Ownership,
    /// Several replicas: the statuses other replicas saved, for the environments this one does
    /// not reconcile (read from the store every [`REMOTE_EVERY`]).
    remote: watch::Sender<Arc<HashMap<String, EnvironmentStatus>>>,
    /// Per environment, its applied revision and that revision's directory tree, read from the
    /// repository once per revision.
    applied_trees: Mutex<HashMap<String, (String, Option<String>)>>,
    /// The loops of the image sources (`spec.images`).
    images: images::Images,
}

impl Service {
    /// Starts the fetch loop and every environment's reconcile loop, each environment as the
    /// store remembers it (suspended or not, its applied revision). Must run inside a tokio
    /// runtime.
    pub async fn start(config: Config) -> Result<Arc<Self>, store::Error> {
        let Config {
            pipeline,
            repository,
            keys,
            reconcile: options,
            metrics,
            notifier,
            store,
            access,
            git: git_options,
            people,
            ownership,
        } = config;
        let mut environments = pipeline.environments.clone();
        let mut restored = HashMap::new();
        for record in store.environments().await? {
            let Some(env) = environments.iter_mut().find(|e| e.name == record.name) else {
                continue;
            };
            env.sync.suspend |= record.suspended.is_some();
            restored.insert(env.name.clone(), restore(env, &record));
        }
        let notifier = Arc::new(notifier);
        let source = Arc::new(GitSource::new(
            pipeline.clone(),
            repository.clone(),
            keys,
            Fetch::Never,
        ));
        let names: Vec<String> = environments.iter().map(|e| e.name.clone()).collect();
        ownership.set_pipeline(&pipeline.name, &names);
        let controller = Controller::start_with(
            environments,
            source.clone(),
            options.clone(),
            FirstPass::OnTrigger,
            restored,
            ownership.clone(),
        );
        let poller = Arc::new(Poller::spawn(
            fetch_interval(&pipeline),
            {
                let repository = repository.clone();
                let metrics = metrics.clone();
                move || {
                    let started = std::time::Instant::now();
                    let result = repository.fetch().map_err(Arc::new);
                    metrics.fetch(result.is_ok(), started.elapsed());
                    result
                }
            },
            repository.panicked_fetch(),
        ));
        let images = images::Images::start(images::Context {
            pipeline: pipeline.clone(),
            repository: repository.clone(),
            git: git_options.clone(),
            ownership: ownership.clone(),
            connections: options.connections.clone(),
            poller: poller.clone(),
        });
        let alerts = Arc::new(Mutex::new(HashMap::new()));
        let mut tasks = Vec::new();
        for env in &pipeline.environments {
            let status = controller
                .watch(&env.name)
                .expect("the controller runs every environment of the pipeline");
            tasks.push(tokio::spawn(count_passes(status.clone(), metrics.clone())));
            let content = Content {
                repository: repository.clone(),
                location: git::Location::of(&pipeline, &env.name).ok(),
            };
            tasks.push(tokio::spawn(record_passes(
                status.clone(),
                store.clone(),
                content,
                ownership.clone(),
            )));
            tasks.push(tokio::spawn(watch_alerts(
                pipeline.clone(),
                env.name.clone(),
                status,
                alerts.clone(),
                notifier.clone(),
                events::AlertEvents::new(env, &options),
            )));
        }
        tasks.push(tokio::spawn(forward_events(
            pipeline.name.clone(),
            controller.events(),
            notifier.clone(),
        )));
        let (desired, _) = watch::channel(Arc::new(DesiredTable::new()));
        // The first fetch may end before the service is built; until then the loop's weak
        // reference cannot be upgraded, which it would take for the service being gone.
        let (built, service_built) = tokio::sync::oneshot::channel();
        let service = Arc::new_cyclic(|service: &std::sync::Weak<Service>| {
            tasks.push(tokio::spawn(follow_fetches(
                service.clone(),
                poller.subscribe(),
                service_built,
            )));
            if ownership.is_leased() {
                tasks.push(tokio::spawn(follow_store(service.clone())));
            }
            let promotions = Arc::new(Engine::new(
                pipeline.clone(),
                repository.clone(),
                store.clone(),
                service.clone(),
                source.clone(),
                options.clone(),
                git_options,
                people,
                ownership.clone(),
            ));
            Self {
                pipeline,
                repository,
                controller,
                source,
                options,
                poller,
                desired,
                last_fetch_error: Mutex::new(None),
                metrics,
                alerts,
                verification_alerts: Mutex::default(),
                notifier,
                store,
                access,
                promotions,
                tasks,
                applied_trees: Mutex::default(),
                ownership,
                remote: watch::channel(Arc::default()).0,
                images,
            }
        });
        let _ = built.send(());
        service.promotions.start();
        Ok(service)
    }

    /// The promotion engine of this pipeline.
    pub fn promotions(&self) -> &Arc<Engine> {
        &self.promotions
    }

    /// A receiver of `name`'s status as its reconcile loop reports it.
    pub fn watch_status(
        &self,
        name: &str,
    ) -> Result<watch::Receiver<EnvironmentStatus>, UnknownEnvironment> {
        self.environment_of(name)?;
        Ok(self
            .controller
            .watch(name)
            .expect("the controller runs every environment of the pipeline"))
    }

    /// The pipeline it runs.
    pub fn pipeline(&self) -> &Arc<Pipeline> {
        &self.pipeline
    }

    /// Its metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Who may do what in this pipeline.
    pub fn access(&self) -> &AccessPolicy {
        &self.access
    }

    fn environment_of(&self, name: &str) -> Result<&Environment, UnknownEnvironment> {
        self.pipeline
            .environment(name)
            .ok_or_else(|| UnknownEnvironment {
                environment: name.to_owned(),
                pipeline: self.pipeline.name.clone(),
            })
    }

    /// Every environment, in pipeline order.
    pub fn environments(&self) -> Vec<EnvironmentView> {
        self.pipeline
            .environments
            .iter()
            .map(|env| self.view(env))
            .collect()
    }

    /// One environment.
    pub fn environment(&self, name: &str) -> Result<EnvironmentView, UnknownEnvironment> {
        Ok(self.view(self.environment_of(name)?))
    }

    fn view(&self, env: &Environment) -> EnvironmentView {
        let local = !self.ownership.is_leased() || self.ownership.claim(&env.name).is_some();
        let remote = match local {
            true => None,
            false => self.remote.borrow().get(&env.name).cloned(),
        };
        let mut status = match remote {
            Some(status) => status,
            None => self
                .controller
                .status(&env.name)
                .expect("the controller runs every environment of the pipeline"),
        };
        // The loop reports a suspension or resumption only when it next wakes; the answer to
        // SuspendEnvironment/ResumeEnvironment (and every read after it) already says it.
        status.suspended = self
            .controller
            .is_suspended(&env.name)
            .expect("the controller runs every environment of the pipeline");
        let table = self.desired.borrow().clone();
        let (desired, source_error) = match table.get(&env.name) {
            Some(Ok(desired)) => (Some(desired.clone()), None),
            Some(Err(error)) => (None, Some(error.clone())),
            None => (
                None,
                self.last_fetch_error.lock().ok().and_then(|e| e.clone()),
            ),
        };
        let applied_tree = status
            .applied_revision
            .as_deref()
            .and_then(|commit| self.applied_tree(&env.name, commit));
        EnvironmentView {
            applied_tree,
            environment: env.clone(),
            mode: if env.sync.auto {
                SyncMode::Auto
            } else {
                SyncMode::Manual
            },
            desired,
            source_error,
            status,
            alerts: self
                .alerts
                .lock()
                .ok()
                .and_then(|a| a.get(&env.name).cloned())
                .unwrap_or_default()
                .into_iter()
                .chain(
                    self.verification_alerts
                        .lock()
                        .ok()
                        .and_then(|a| a.get(&env.name).cloned()),
                )
                .collect(),
            holder: self
                .ownership
                .is_leased()
                .then(|| self.ownership.holder(&env.name))
                .flatten(),
        }
    }

    /// Raises (`Some`) or clears (`None`) the alert of a failed re-verification of `environment`:
    /// in its status, the log, a Kubernetes Event in its cluster and an `alert` notification, as
    /// reconcile's alerts are.
    pub(crate) fn verification_alert(&self, environment: &str, alert: Option<String>) {
        let Some(env) = self.pipeline.environment(environment) else {
            return;
        };
        let previous = match self.verification_alerts.lock() {
            Ok(mut table) => match &alert {
                Some(text) => table.insert(environment.to_owned(), text.clone()),
                None => table.remove(environment),
            },
            Err(_) => return,
        };
        let (kind, reason, event, message) = match (&alert, &previous) {
            (Some(text), None) => {
                tracing::warn!(environment, "alert: {text}");
                (
                    crate::cluster::events::Type::Warning,
                    events::RAISED,
                    "alert",
                    text.clone(),
                )
            }
            (None, Some(_)) => {
                tracing::info!(environment, "verification passes again");
                (
                    crate::cluster::events::Type::Normal,
                    events::RECOVERED,
                    "recovered",
                    "verification passes again".to_owned(),
                )
            }
            // Still failing, or still fine: said already.
            _ => return,
        };
        events::AlertEvents::new(env, &self.options).record(kind, reason, message.clone());
        self.notifier.send(&Message {
            pipeline: self.pipeline.name.clone(),
            environment: environment.to_owned(),
            event: event.to_owned(),
            message,
            time: now_rfc3339(),
        });
    }

    /// Which environments this replica reconciles, and whether it leads.
    pub fn ownership(&self) -> &Ownership {
        &self.ownership
    }

    /// The tree of `name`'s directory at `commit`; `None` when the repository cache cannot say
    /// (then a newer commit counts as out of sync, as it would without the tree).
    fn applied_tree(&self, name: &str, commit: &str) -> Option<String> {
        let mut trees = self.applied_trees.lock().ok()?;
        if let Some((cached, tree)) = trees.get(name)
            && cached == commit
        {
            return tree.clone();
        }
        let tree = git::Location::of(&self.pipeline, name)
            .ok()
            .zip(commit.parse::<gix::ObjectId>().ok())
            .and_then(|(location, id)| self.repository.path_tree(&location, id).ok())
            .map(|tree| tree.to_string());
        trees.insert(name.to_owned(), (commit.to_owned(), tree.clone()));
        tree
    }

    /// Fetches the repository now (or joins the fetch already queued); the environments whose
    /// files moved are woken by the fetch loop.
    pub async fn fetch_now(&self) -> Result<(), Error> {
        self.poller
            .fetch_now()
            .await
            .map(|_| ())
            .map_err(Error::Fetch)
    }

    /// Runs a pass of `name` now. With `fetch`, the repository is fetched first; with `wait`,
    /// returns once that pass has finished, with its status.
    pub async fn sync(
        &self,
        name: &str,
        fetch: bool,
        wait: bool,
    ) -> Result<EnvironmentView, Error> {
        self.sync_as(name, fetch, wait, None).await
    }

    /// [`Service::sync`] asked for by a person, `by`: the audit log records who and the
    /// revision to apply before the pass starts (in manual sync mode this is the deployment).
    pub async fn sync_by_hand(
        &self,
        name: &str,
        fetch: bool,
        wait: bool,
        by: &str,
    ) -> Result<EnvironmentView, Error> {
        self.sync_as(name, fetch, wait, Some(by)).await
    }

    async fn sync_as(
        &self,
        name: &str,
        fetch: bool,
        wait: bool,
        by: Option<&str>,
    ) -> Result<EnvironmentView, Error> {
        let env = self.environment_of(name)?.clone();
        // Only the replica that reconciles it can run its pass.
        let claim = self.ownership.hold(name)?;
        let mut status = self
            .controller
            .watch(name)
            .expect("the controller runs every environment of the pipeline");
        if self
            .controller
            .is_suspended(name)
            .expect("the controller runs every environment of the pipeline")
        {
            return Err(Error::Suspended {
                environment: name.to_owned(),
            });
        }
        if fetch {
            self.fetch_now().await?;
        }
        let passes = status.borrow_and_update().passes;
        if let Some(by) = by {
            let revision = match self.desired.borrow().get(name) {
                Some(Ok(desired)) => Some(desired.commit.clone()),
                _ => None,
            };
            let audit = store::NewAuditEvent {
                at: SystemTime::now(),
                actor: by.to_owned(),
                action: store::AuditAction::Synced,
                environment: Some(name.to_owned()),
                promotion_id: None,
                revision,
                reason: String::new(),
            };
            claim.check()?;
            self.store
                .append_audit(audit)
                .await
                .map_err(|source| Error::Store {
                    environment: name.to_owned(),
                    source,
                })?;
        }
        self.controller
            .trigger(name)
            .expect("the controller runs every environment of the pipeline");
        if wait {
            status
                .wait_for(|s| s.passes > passes || s.suspended)
                .await
                .map_err(|_| Error::Stopping)?;
        }
        Ok(self.view(&env))
    }

    /// Stops the passes of `name` until [`Service::resume`], also after a restart: the
    /// suspension is written to the store (with its audit event) before it takes effect.
    pub async fn suspend(
        &self,
        name: &str,
        reason: &str,
        by: &str,
    ) -> Result<EnvironmentView, Error> {
        let env = self.environment_of(name)?;
        let claim = self.ownership.lead()?;
        let hold = store::Hold {
            reason: reason.to_owned(),
            by: by.to_owned(),
            at: SystemTime::now(),
        };
        self.record_suspension(&claim, name, Some(hold), reason, by)
            .await?;
        self.controller
            .suspend(name)
            .expect("the controller runs every environment of the pipeline");
        Ok(self.view(env))
    }

    /// Resumes `name` with a pass at once; written to the store first, as a suspension is.
    pub async fn resume(&self, name: &str, by: &str) -> Result<EnvironmentView, Error> {
        let env = self.environment_of(name)?;
        let claim = self.ownership.lead()?;
        self.record_suspension(&claim, name, None, "", by).await?;
        self.controller
            .resume(name)
            .expect("the controller runs every environment of the pipeline");
        Ok(self.view(env))
    }

    async fn record_suspension(
        &self,
        claim: &shard::Claim,
        name: &str,
        hold: Option<store::Hold>,
        reason: &str,
        by: &str,
    ) -> Result<(), Error> {
        let action = if hold.is_some() {
            store::AuditAction::Suspended
        } else {
            store::AuditAction::Resumed
        };
        let audit = store::NewAuditEvent {
            at: SystemTime::now(),
            actor: by.to_owned(),
            action,
            environment: Some(name.to_owned()),
            promotion_id: None,
            revision: None,
            reason: reason.to_owned(),
        };
        claim.check()?;
        self.store
            .set_suspension(name, hold, audit)
            .await
            .map_err(|source| Error::Store {
                environment: name.to_owned(),
                source,
            })
    }

    /// What a sync of `name` would change, asked of the apiserver by a server-side dry run.
    pub async fn diff(&self, name: &str) -> Result<Plan, Error> {
        let env = self.environment_of(name)?.clone();
        let (events, _) = tokio::sync::broadcast::channel(16);
        let mut planner = Reconciler::new(
            env,
            self.source.clone(),
            Arc::new(self.options.clone()),
            events,
        );
        planner.plan().await.map_err(|source| Error::Plan {
            environment: name.to_owned(),
            source,
        })
    }

    /// Up to `limit` revisions of `name` (at most [`HISTORY_MAX`]), newest first, marking the
    /// one it runs now. The walk behind it is bounded too (see [`git::history::WALK_LIMIT`]).
    pub async fn history(&self, name: &str, limit: usize) -> Result<Vec<HistoryEntry>, Error> {
        let limit = limit.min(HISTORY_MAX);
        let applied = self
            .view(self.environment_of(name)?)
            .status
            .applied_revision;
        let repository = self.repository.clone();
        let pipeline = self.pipeline.clone();
        let environment = name.to_owned();
        let entries = tokio::task::spawn_blocking(move || {
            let entries = repository.history(&pipeline, &environment, limit)?;
            let location = git::Location::of(&pipeline, &environment)?;
            // A kustomization that cannot be read shows no images; its revision still lists.
            Ok(entries
                .into_iter()
                .map(|entry| {
                    let images = repository
                        .image_references(&location, entry.commit)
                        .map(|found| found.into_iter().map(|(_, reference)| reference).collect())
                        .unwrap_or_default();
                    (entry, images)
                })
                .collect::<Vec<_>>())
        })
        .await
        .expect("reading history returns errors rather than panicking")
        .map_err(|source| Error::History {
            environment: name.to_owned(),
            source,
        })?;
        let mut syncs = self
            .store
            .sync_history(name, SYNCS_IN_HISTORY)
            .await
            .map_err(|source| Error::Store {
                environment: name.to_owned(),
                source,
            })?;
        // The environment runs the files of the newest revision at or before its applied
        // commit; in the overlay model that commit is often another environment's change.
        let applied_entry = match applied
            .as_deref()
            .and_then(|a| a.parse::<gix::ObjectId>().ok())
        {
            Some(commit) => {
                let repository = self.repository.clone();
                let pipeline = self.pipeline.clone();
                let environment = name.to_owned();
                tokio::task::spawn_blocking(move || {
                    repository.revision_of(
                        &pipeline,
                        &environment,
                        commit,
                        git::history::WALK_LIMIT,
                    )
                })
                .await
                .expect("reading history returns errors rather than panicking")
                .ok()
                .flatten()
                .map(|entry| entry.commit.to_string())
            }
            None => None,
        };
        let mut history = Vec::with_capacity(entries.len());
        for (entry, images) in entries {
            let commit = entry.commit.to_string();
            let (mine, others) = syncs.drain(..).partition(|s| s.run.revision == commit);
            syncs = others;
            let verified = match &entry.trailers.promotion {
                Some(id) => self
                    .store
                    .promotion(id)
                    .await
                    .map_err(|source| Error::Store {
                        environment: name.to_owned(),
                        source,
                    })?
                    .is_some_and(|detail| {
                        detail.promotion.target_environment == name
                            && detail.promotion.commit.as_deref() == Some(commit.as_str())
                    }),
                None => false,
            };
            history.push(HistoryEntry {
                applied: applied_entry.as_deref() == Some(commit.as_str()),
                verified,
                syncs: mine,
                entry,
                images,
            });
        }
        Ok(history)
    }

    /// The subject line and committer time of each of `commits` that the fetched repository
    /// holds, for showing revisions by more than their hash; the others are left out.
    pub async fn commit_subjects(&self, commits: Vec<String>) -> HashMap<String, (String, i64)> {
        let repository = self.repository.clone();
        tokio::task::spawn_blocking(move || {
            commits
                .into_iter()
                .filter_map(|commit| {
                    let id = commit.parse::<gix::ObjectId>().ok()?;
                    let subject = repository.subject(id).ok()?;
                    Some((commit, subject))
                })
                .collect()
        })
        .await
        .expect("reading commits returns errors rather than panicking")
    }

    /// A receiver that sees every change of any environment (its status or its desired
    /// revision): the name of the environment that changed. Callers read
    /// [`Service::environment`] for the new state, so a slow reader skips to the latest.
    pub fn changes(&self) -> tokio::sync::mpsc::UnboundedReceiver<String> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        for env in &self.pipeline.environments {
            let mut status = self
                .controller
                .watch(&env.name)
                .expect("the controller runs every environment of the pipeline");
            let mut desired = self.desired.subscribe();
            let mut remote = self.remote.subscribe();
            let tx = tx.clone();
            let name = env.name.clone();
            tokio::spawn(async move {
                let mut last_desired = desired.borrow_and_update().get(&name).cloned();
                let mut last_remote = remote.borrow_and_update().get(&name).cloned();
                loop {
                    tokio::select! {
                        changed = status.changed() => if changed.is_err() { return },
                        changed = remote.changed() => {
                            if changed.is_err() { return }
                            let now = remote.borrow_and_update().get(&name).cloned();
                            if now == last_remote { continue }
                            last_remote = now;
                        }
                        changed = desired.changed() => {
                            if changed.is_err() { return }
                            let now = desired.borrow_and_update().get(&name).cloned();
                            if now == last_desired { continue }
                            last_desired = now;
                        }
                        () = tx.closed() => return,
                    }
                    if tx.send(name.clone()).is_err() {
                        return;
                    }
                }
            });
        }
        rx
    }

    /// Every image source with what it last saw; several replicas: only the leader looks, so
    /// the others refuse naming it.
    pub fn image_sources(&self) -> Result<Vec<images::ImageSourceView>, shard::NotLeader> {
        self.ownership.lead()?;
        Ok(self.images.views(&self.pipeline))
    }

    /// Makes the image sources of a pushed repository look now, as a registry webhook asks,
    /// and again shortly while a tag it names is not listed yet; their names.
    pub fn check_images(
        &self,
        pushed: &registry_webhook::Pushed,
    ) -> Result<Vec<String>, shard::NotLeader> {
        self.images.check_now(pushed)
    }

    /// Stops the fetch loop and every reconcile loop; a pass in flight is abandoned.
    pub fn stop(&self) {
        self.images.stop();
        self.promotions.stop();
        self.poller.stop();
        for task in &self.tasks {
            task.abort();
        }
        self.controller.stop();
    }
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

/// Sends every reconcile event as a notification.
async fn forward_events(
    pipeline: String,
    mut events: tokio::sync::broadcast::Receiver<reconcile::Event>,
    notifier: Arc<Notifier>,
) {
    use reconcile::EventKind;
    loop {
        let event = match events.recv().await {
            Ok(event) => event,
            Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                tracing::warn!(missed, "notifications fell behind the events");
                continue;
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        };
        let name = match event.kind {
            EventKind::Drifted { .. } => "drifted",
            EventKind::Healed { .. } => "healed",
            EventKind::Pruned { .. } => "pruned",
            EventKind::Failed { .. } => "failed",
        };
        notifier.send(&Message {
            pipeline: pipeline.clone(),
            environment: event.environment.clone(),
            event: name.to_owned(),
            message: event.kind.to_string(),
            time: now_rfc3339(),
        });
    }
}

/// Raises an alert when an environment fails the pipeline's number of passes in a row, or keeps
/// drift past its threshold: in the environment's status, as a warning log line, as a Kubernetes
/// Event in its cluster and as an `alert` notification; and says `recovered` when it clears.
async fn watch_alerts(
    pipeline: Arc<Pipeline>,
    environment: String,
    mut status: watch::Receiver<EnvironmentStatus>,
    alerts: Arc<Mutex<HashMap<String, Vec<String>>>>,
    notifier: Arc<Notifier>,
    events: events::AlertEvents,
) {
    let thresholds = pipeline.alerts.clone();
    let mut drift_since: Option<std::time::Instant> = None;
    let mut raised: Vec<String> = Vec::new();
    loop {
        let (failures, drifted) = {
            let s = status.borrow_and_update();
            (s.failures, s.drift.iter().filter(|d| !d.healed).count())
        };
        if drifted == 0 {
            drift_since = None;
        } else {
            drift_since.get_or_insert_with(std::time::Instant::now);
        }
        let mut now_raised = Vec::new();
        if failures >= thresholds.failures_in_a_row {
            now_raised.push(format!("{failures} passes failed in a row"));
        }
        let drift_deadline = drift_since.map(|since| since + thresholds.drift_after);
        if drift_deadline.is_some_and(|d| d <= std::time::Instant::now()) {
            now_raised.push(format!(
                "{drifted} objects drifted from Git for more than {}",
                humantime::format_duration(thresholds.drift_after)
            ));
        }
        let was_raised = !raised.is_empty();
        for alert in now_raised.iter().filter(|a| {
            // A changing count is the same alert, not a new one.
            let kind = |t: &str| t.split_once(' ').map(|(_, rest)| rest.to_owned());
            !raised.iter().any(|r| kind(r) == kind(a))
        }) {
            tracing::warn!(environment = %environment, "alert: {alert}");
            events.record(
                crate::cluster::events::Type::Warning,
                events::RAISED,
                alert.clone(),
            );
            notifier.send(&Message {
                pipeline: pipeline.name.clone(),
                environment: environment.clone(),
                event: "alert".to_owned(),
                message: alert.clone(),
                time: now_rfc3339(),
            });
        }
        if was_raised && now_raised.is_empty() {
            tracing::info!(environment = %environment, "alerts cleared");
            events.record(
                crate::cluster::events::Type::Normal,
                events::RECOVERED,
                "every alert cleared".to_owned(),
            );
            notifier.send(&Message {
                pipeline: pipeline.name.clone(),
                environment: environment.clone(),
                event: "recovered".to_owned(),
                message: "every alert cleared".to_owned(),
                time: now_rfc3339(),
            });
        }
        raised = now_raised;
        if let Ok(mut table) = alerts.lock() {
            table.insert(environment.clone(), raised.clone());
        }
        let wake = async {
            match drift_deadline {
                Some(deadline) if raised.len() < 2 && deadline > std::time::Instant::now() => {
                    tokio::time::sleep_until(deadline.into()).await
                }
                _ => std::future::pending().await,
            }
        };
        tokio::select! {
            changed = status.changed() => if changed.is_err() { return },
            () = wake => {}
        }
    }
}

/// Counts each finished pass of one environment: its duration, the reason it ended with, and
/// the objects found drifted.
async fn count_passes(mut status: watch::Receiver<EnvironmentStatus>, metrics: Arc<Metrics>) {
    let mut passes = status.borrow_and_update().passes;
    let read = |s: &EnvironmentStatus| {
        let took = s
            .last_attempt
            .and_then(|started| started.elapsed().ok())
            .unwrap_or_default();
        (s.environment.clone(), s.reason, took, s.drift.len())
    };
    while let Some((environment, reason, took, drifted)) =
        next_pass(&mut status, &mut passes, read).await
    {
        metrics.pass(&environment, reason.as_str(), took);
        metrics
            .drifted_objects
            .get_or_create(&crate::metrics::EnvironmentLabels { environment })
            .set(i64::try_from(drifted).unwrap_or(i64::MAX));
    }
}

/// What `read` takes from the status that ends the next pass beyond `seen` passes; `None`
/// once the loop is gone.
async fn next_pass<T>(
    status: &mut watch::Receiver<EnvironmentStatus>,
    seen: &mut u64,
    read: impl Fn(&EnvironmentStatus) -> T,
) -> Option<T> {
    while status.changed().await.is_ok() {
        // A status changes several times per pass and holds every object: read only the one
        // that ends a pass, in place rather than from a copy.
        let s = status.borrow_and_update();
        if s.passes != *seen {
            *seen = s.passes;
            return Some(read(&s));
        }
    }
    None
}

/// What an environment's files are at a revision: the tree of its directory.
struct Content {
    repository: git::Repository,
    location: Option<git::Location>,
}

impl Content {
    /// `None` when the cache cannot say; the store then follows the revision alone.
    fn at(&self, revision: &str) -> Option<String> {
        let commit = revision.parse::<gix::ObjectId>().ok()?;
        let tree = self.repository.path_tree(self.location.as_ref()?, commit);
        tree.ok().map(|tree| tree.to_string())
    }
}

/// The sync record of the pass that ended in `s`.
fn sync_run(s: &EnvironmentStatus, content: &Content) -> store::SyncRun {
    let finished_at = SystemTime::now();
    let applied = s.applied_revision.is_some() && s.applied_revision == s.attempted_revision;
    let mut counts = store::SyncCounts::default();
    for object in &s.objects {
        use crate::cluster::apply::Change;
        match object.change {
            Change::Created => counts.created += 1,
            Change::Adopted => counts.adopted += 1,
            Change::Configured { .. } | Change::Recreated | Change::Healed { .. } => {
                counts.changed += 1
            }
            Change::Drifted { .. } => counts.drifted += 1,
            Change::Unchanged | Change::Failed { .. } => {}
        }
    }
    counts.pruned = u32::try_from(
        s.pruned
            .iter()
            .filter(|p| p.outcome == crate::cluster::prune::Outcome::Deleted)
            .count(),
    )
    .unwrap_or(u32::MAX);
    store::SyncRun {
        environment: s.environment.clone(),
        revision: s.attempted_revision.clone().unwrap_or_default(),
        content: s.attempted_revision.as_deref().and_then(|r| content.at(r)),
        started_at: s.last_attempt.unwrap_or(finished_at),
        finished_at,
        result: s.reason.as_str().to_owned(),
        message: s.message.clone(),
        trigger: "pass".to_owned(),
        applied,
        counts,
    }
}

/// The status an environment starts with after a restart: what the store remembers of it.
fn restore(env: &Environment, record: &store::EnvironmentRecord) -> EnvironmentStatus {
    let mut status = EnvironmentStatus::new(&env.name, record.suspended.is_some());
    status.applied_revision = record.applied_revision.clone();
    status.last_applied = record.applied_at;
    let saved = record.status.as_ref();
    let text = |field: &str| {
        saved
            .and_then(|s| s.get(field))
            .and_then(|v| v.as_str())
            .map(str::to_owned)
    };
    status.message = match text("message") {
        Some(message) => format!("before the restart: {message}"),
        None => "no pass since the restart yet".to_owned(),
    };
    status.last_error = text("lastError");
    status
}

/// Writes each finished pass of one environment to the store: its sync record (which makes a
/// fully applied revision the environment's applied revision) and its status. A store that
/// fails is logged; reconciliation goes on.
async fn record_passes(
    mut status: watch::Receiver<EnvironmentStatus>,
    store: Arc<dyn Store>,
    content: Content,
    ownership: Ownership,
) {
    let mut passes = status.borrow_and_update().passes;
    let read = |s: &EnvironmentStatus| (sync_run(s, &content), serde_json::value::to_raw_value(s));
    while let Some((run, json)) = next_pass(&mut status, &mut passes, read).await {
        let environment = run.environment.clone();
        // The environment may have moved since its pass: the replica holding it now writes.
        if let Err(fenced) = ownership.hold(&environment) {
            tracing::info!(%environment, reason = %fenced, "the pass is not recorded");
            continue;
        }
        if let Err(error) = store.record_sync(run).await {
            tracing::warn!(%environment, error = %describe(&error), "cannot record the pass");
        }
        match json {
            Ok(json) => {
                if let Err(fenced) = ownership.hold(&environment) {
                    tracing::info!(%environment, reason = %fenced, "the status is not saved");
                    continue;
                }
                if let Err(error) = store.save_status(&environment, json).await {
                    tracing::warn!(%environment, error = %describe(&error), "cannot save the status");
                }
            }
            Err(error) => {
                tracing::warn!(%environment, %error, "cannot serialise the status")
            }
        }
    }
}

/// How often a replica reads what the others saved (several replicas only).
const REMOTE_EVERY: Duration = Duration::from_secs(2);

/// Several replicas: reads every environment's record from the store every [`REMOTE_EVERY`],
/// for the statuses of environments other replicas reconcile and for suspensions the leader
/// wrote (a replica applies a change of the stored suspension to its own loop).
async fn follow_store(service: std::sync::Weak<Service>) {
    let mut suspensions: HashMap<String, bool> = HashMap::new();
    loop {
        tokio::time::sleep(REMOTE_EVERY).await;
        let Some(service) = service.upgrade() else {
            return;
        };
        let records = match service.store.environments().await {
            Ok(records) => records,
            Err(error) => {
                tracing::warn!(error = %describe(&error), "cannot read the environments other replicas reconcile");
                continue;
            }
        };
        let mut table = HashMap::new();
        for record in records {
            if service.pipeline.environment(&record.name).is_none() {
                continue;
            }
            if let Some(saved) = &record.status {
                let mut status = EnvironmentStatus::from_saved(&record.name, saved);
                status.applied_revision = record.applied_revision.clone();
                status.last_applied = record.applied_at;
                table.insert(record.name.clone(), status);
            }
            let suspended = record.suspended.is_some();
            if suspensions.insert(record.name.clone(), suspended) == Some(suspended) {
                continue;
            }
            let local = service.controller.is_suspended(&record.name).ok();
            match (suspended, local) {
                (true, Some(false)) => {
                    tracing::info!(environment = %record.name, "suspended by the leader");
                    let _ = service.controller.suspend(&record.name);
                }
                (false, Some(true)) => {
                    tracing::info!(environment = %record.name, "resumed by the leader");
                    let _ = service.controller.resume(&record.name);
                }
                _ => {}
            }
        }
        service.remote.send_replace(Arc::new(table));
    }
}

/// How many of the newest sync records [`Service::history`] spreads over the revisions it lists;
/// quiet passes are folded into one record, so this reaches far back.
const SYNCS_IN_HISTORY: u32 = 1_000;

/// Revisions [`Service::history`] returns when the caller names no number.
pub const HISTORY_DEFAULT: usize = 50;
/// The most revisions [`Service::history`] returns, whatever the caller asks.
pub const HISTORY_MAX: usize = 1_000;

/// The shortest sync interval of the pipeline: how often the repository is fetched.
fn fetch_interval(pipeline: &Pipeline) -> Duration {
    pipeline
        .environments
        .iter()
        .map(|env| env.sync.interval)
        .min()
        .unwrap_or(Duration::from_secs(60))
        .max(Duration::from_secs(1))
}

/// After each fetch: reads every environment's revision, records it, and wakes the
/// environments in automatic mode whose directory tree moved.
async fn follow_fetches(
    service: std::sync::Weak<Service>,
    mut fetches: watch::Receiver<Option<git::poll::Completed<git::poll::FetchResult>>>,
    built: tokio::sync::oneshot::Receiver<()>,
) {
    if built.await.is_err() {
        return;
    }
    let mut seen: HashMap<String, String> = HashMap::new();
    while fetches.changed().await.is_ok() {
        let Some(completed) = fetches.borrow_and_update().clone() else {
            continue;
        };
        let Some(service) = service.upgrade() else {
            return;
        };
        if let Err(error) = &completed.result {
            let message = describe(error.as_ref());
            tracing::warn!(error = %message, "fetch failed");
            if let Ok(mut last) = service.last_fetch_error.lock() {
                *last = Some(message);
            }
            continue;
        }
        if let Ok(mut last) = service.last_fetch_error.lock() {
            *last = None;
        }
        let repository = service.repository.clone();
        let pipeline = service.pipeline.clone();
        let table = tokio::task::spawn_blocking(move || read_revisions(&repository, &pipeline))
            .await
            .expect("reading revisions returns errors rather than panicking");
        for env in &service.pipeline.environments {
            // An environment whose revision cannot be read runs a pass too, so that the
            // failure shows in its status and counts towards its alerts.
            let (key, commit) = match table.get(&env.name) {
                Some(Ok(desired)) => (desired.tree.clone(), desired.commit.as_str()),
                Some(Err(error)) => (format!("error: {error}"), ""),
                None => continue,
            };
            let moved = seen.get(&env.name) != Some(&key);
            seen.insert(env.name.clone(), key);
            if moved && env.sync.auto {
                tracing::info!(environment = %env.name, revision = %commit, "new revision");
                service
                    .controller
                    .trigger(&env.name)
                    .expect("the controller runs every environment of the pipeline");
            }
        }
        service.desired.send_replace(Arc::new(table));
    }
}

fn read_revisions(repository: &git::Repository, pipeline: &Pipeline) -> DesiredTable {
    let fetched = SystemTime::now();
    pipeline
        .environments
        .iter()
        .map(|env| {
            let revision = repository
                .revision(pipeline, &env.name)
                .map(|r| DesiredRevision {
                    commit: r.commit.to_string(),
                    tree: r.tree.to_string(),
                    fetched,
                })
                .map_err(|e| describe(&e));
            (env.name.clone(), revision)
        })
        .collect()
}

/// An error and its sources on one line, for status fields and logs.
pub(crate) fn describe(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
