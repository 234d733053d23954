//! Keeping each environment's cluster equal to what Git says.
//!
//! # Public API
//! - [`DesiredState`]: where a pass gets the desired objects of an environment (the git,
//!   render and secrets modules behind one call); [`Desired`] is a revision and its objects,
//!   [`SourceError`] says which stage failed.
//! - [`Reconciler`]: one environment. [`Reconciler::reconcile`] runs one pass (source →
//!   connect → inventory → apply → prune → health → status) and returns the next [`Action`];
//!   [`error_policy`] turns a failed pass into a backoff. [`Reconciler::status`] is the
//!   environment's [`EnvironmentStatus`]. [`Reconciler::plan`] asks the apiserver what a pass
//!   would change (server-side dry-run) without changing anything: a [`Plan`], the base of
//!   `stagehand diff`.
//! - [`Controller`]: one task per environment, all in parallel, so a failure in one never
//!   stalls another. [`Controller::trigger`] runs a pass now (a new revision, an API call),
//!   [`Controller::suspend`] / [`Controller::resume`], [`Controller::status`] /
//!   [`Controller::watch`], and [`Controller::events`] for drift, heal, prune and failure
//!   events.
//!
//! Decrypted Secret data reaches the apiserver and nowhere else: statuses, events, errors and
//! logs carry object references, change kinds and field paths, and apiserver messages about
//! Secrets are reduced to field names (see [`crate::cluster::redact`]).

mod controller;
pub mod source;
mod status;
mod turns;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;

use crate::cluster::apply::{self, Change, ChangeSet};
use crate::cluster::health::HealthStatus;
use crate::cluster::installation::InstallationId;
use crate::cluster::inventory::{self, Inventory, Location, Version};
use crate::cluster::prune::{self, Outcome};
use crate::cluster::redact::Redactor;
use crate::cluster::{self, Connection, Connections, Object, ObjectError, ObjectRef, events};
use crate::error_chain::ErrorChain;
use crate::pipeline::Environment;

pub use controller::{Controller, FirstPass, UnknownEnvironment};
pub use status::{Drift, EnvironmentStatus, Event, EventKind, ObjectDiff, ObjectStatus, Reason};
pub use turns::{Turn, Turns};

/// What Git says an environment should run: a revision and its objects (Secrets decrypted).
#[derive(Clone)]
pub struct Desired {
    /// The commit (and tree) the objects come from.
    pub revision: String,
    /// The rendered objects, in apply order.
    pub objects: Vec<Value>,
    /// The values SOPS decryption produced for them, kept out of every message and comparison.
    pub tainted: crate::secrets::Tainted,
}

impl std::fmt::Debug for Desired {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Desired")
            .field("revision", &self.revision)
            .field("objects", &self.objects.len())
            .field("tainted", &self.tainted)
            .finish()
    }
}

/// The stage of getting desired objects that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum SourceStage {
    /// Getting the revision from Git.
    Fetch,
    /// Building the kustomization.
    Render,
    /// Decrypting SOPS files; told apart so the status says a key is missing.
    Decrypt,
}

impl std::fmt::Display for SourceStage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Fetch => "fetch",
            Self::Render => "render",
            Self::Decrypt => "decrypt",
        })
    }
}

/// The desired objects could not be produced. The source must not put Secret values in it.
#[derive(Debug, thiserror::Error)]
#[error("{stage} failed{}", revision.as_ref().map(|r| format!(" at revision {r}")).unwrap_or_default())]
pub struct SourceError {
    /// Which stage failed.
    pub stage: SourceStage,
    /// The revision, when the fetch got that far.
    pub revision: Option<String>,
    /// Why.
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

/// Where desired objects come from.
pub trait DesiredState: Send + Sync + 'static {
    /// The desired objects of `env` at its current revision.
    fn desired(
        &self,
        env: &Environment,
    ) -> impl std::future::Future<Output = Result<Desired, SourceError>> + Send;
}

/// What happens after a pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Run again after this long (or sooner when triggered).
    Requeue(Duration),
    /// Run again only when triggered.
    AwaitChange,
}

/// A pass that failed, by stage.
#[derive(Debug, thiserror::Error)]
// Each variant is described by its message, and its fields by the names the message uses.
#[allow(missing_docs)]
pub enum Error {
    #[error("environment {env}")]
    Source {
        env: String,
        #[source]
        source: SourceError,
    },
    #[error("environment {env}: revision {revision}")]
    InvalidObjects {
        env: String,
        revision: String,
        #[source]
        source: ObjectError,
    },
    #[error(
        "environment {env}: revision {revision} has no objects but {applied} are applied; refusing to prune them all (an empty source is taken for a mistake)"
    )]
    EmptySource {
        env: String,
        revision: String,
        applied: usize,
    },
    #[error("environment {env}: owner {owner:?} is not a valid label value")]
    Owner { env: String, owner: String },
    #[error("environment {env}")]
    Connect {
        env: String,
        #[source]
        source: Box<cluster::ConnectError>,
    },
    #[error("environment {env}")]
    Inventory {
        env: String,
        #[source]
        source: cluster::Error,
    },
    #[error(
        "environment {env}: revision {revision}: {failed} of {total} objects not applied; first: {first}"
    )]
    Apply {
        env: String,
        revision: String,
        failed: usize,
        total: usize,
        first: String,
    },
    #[error(
        "environment {env}: the pass would prune {count} of {total} objects, more than sync.maxPrunePercent ({max_percent}%); nothing was pruned"
    )]
    PruneWithheld {
        env: String,
        count: usize,
        total: usize,
        max_percent: u8,
    },
    #[error("environment {env}: {failed} objects not pruned; first: {first}")]
    Prune {
        env: String,
        failed: usize,
        first: String,
    },
    #[error("environment {env}: the pass did not finish within {after:?}")]
    Timeout { env: String, after: Duration },
    #[error(
        "environment {env}: revision {revision}: {failed} objects unhealthy (timeout {timeout:?}); first: {first}"
    )]
    Health {
        env: String,
        revision: String,
        failed: usize,
        timeout: Duration,
        first: String,
    },
}

impl Error {
    /// The status reason, also fit as a metric label.
    pub fn reason(&self) -> Reason {
        match self {
            Self::Source { source, .. } if source.stage == SourceStage::Decrypt => {
                Reason::DecryptionFailed
            }
            Self::Source { .. } => Reason::SourceFailed,
            Self::InvalidObjects { .. } => Reason::InvalidObjects,
            Self::EmptySource { .. } => Reason::EmptySource,
            Self::Owner { .. } | Self::Connect { .. } => Reason::ConnectFailed,
            Self::Inventory { source, .. } if source.is_unreachable() => Reason::ClusterUnreachable,
            Self::Inventory {
                source: cluster::Error::InventoryConflict { .. },
                ..
            } => Reason::InventoryConflict,
            Self::Inventory { .. } => Reason::InventoryFailed,
            Self::Apply { .. } => Reason::ApplyFailed,
            Self::Prune { .. } => Reason::PruneFailed,
            Self::PruneWithheld { .. } => Reason::PruneWithheld,
            Self::Health { .. } => Reason::HealthCheckFailed,
            Self::Timeout { .. } => Reason::TimedOut,
        }
    }
}

/// Settings shared by every environment of a controller.
#[derive(Debug, Clone)]
pub struct Options {
    /// Environment `dev` is owner `<installation>.<owner_prefix>dev` (without an installation,
    /// `<owner_prefix>dev`): the inventory label value. Must leave a valid label value (63
    /// characters, alphanumerics and `-_.`).
    pub owner_prefix: String,
    /// This installation of Stagehand (see [`crate::cluster::installation`]): two
    /// installations that run pipelines of the same name on one cluster own different objects.
    pub installation: Option<InstallationId>,
    /// Namespace of the inventory ConfigMaps (created when missing).
    pub inventory_namespace: String,
    /// Objects applied at once per stage.
    pub concurrency: usize,
    /// Passes run at once over all environments (Flux's `--concurrent`); the others wait their
    /// turn in order. A pass holds its rendered objects and its requests until it ends, so this
    /// bounds the memory and connections of a commit that wakes every environment at once.
    /// Diffs, previews, comparisons and pre-flight checks take the same turns.
    pub passes: Turns,
    /// First retry delay after a failure; doubles per consecutive failure.
    pub backoff_base: Duration,
    /// Longest retry delay; the environment's interval when that is shorter.
    pub backoff_max: Duration,
    /// How soon to look again while objects are Progressing.
    pub progress_poll: Duration,
    /// A pass that takes longer is abandoned and counts as failed (an apiserver that accepts
    /// connections but never answers must not hold an environment forever).
    pub pass_timeout: Duration,
    /// The clients of the environments' clusters, one per distinct cluster.
    pub connections: Connections,
}

/// The owner label value of `environment`'s objects (see [`Options::owner_prefix`]).
pub fn owner(options: &Options, environment: &str) -> String {
    let installation = options
        .installation
        .as_ref()
        .map(|id| format!("{id}."))
        .unwrap_or_default();
    format!("{installation}{}{environment}", options.owner_prefix)
}

impl Default for Options {
    fn default() -> Self {
        Self {
            owner_prefix: String::new(),
            installation: None,
            inventory_namespace: "stagehand-system".into(),
            concurrency: 16,
            passes: Turns::new(8),
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(300),
            progress_poll: Duration::from_secs(5),
            pass_timeout: Duration::from_secs(600),
            connections: Connections::default(),
        }
    }
}

/// The delay after `failures` consecutive failed passes: exponential from
/// `options.backoff_base`, capped by `options.backoff_max` and the environment's interval.
pub fn error_policy(error: &Error, failures: u32, options: &Options, interval: Duration) -> Action {
    let _ = error; // Every stage backs off alike; the reason only labels the status.
    let exponent = failures.saturating_sub(1).min(20);
    let delay = options.backoff_base.saturating_mul(1 << exponent);
    Action::Requeue(
        delay
            .min(options.backoff_max)
            .min(interval.max(options.backoff_base)),
    )
}

/// What [`Reconciler::load`] hands a pass or a plan.
struct Loaded {
    conn: Arc<Connection>,
    revision: String,
    objects: Vec<Object>,
    redactor: Redactor,
    owner: String,
    location: Location,
    previous: Inventory,
    /// The stored inventory's version as read: every write of this pass goes over it.
    version: Version,
    options: apply::Options,
}

/// What a sync would change (from [`Reconciler::plan`]). Serialised as `stagehand diff -o json`
/// prints it and as the gRPC `DiffEnvironmentResponse` is: the revision and
/// [`Plan::diffs`].
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The revision the plan is for.
    pub revision: String,
    /// Per object: created, configured (with the fields), unchanged, drifted or failed.
    pub objects: Vec<ObjectStatus>,
    /// What pruning would do to the objects that left Git.
    pub prune: Vec<prune::Pruned>,
}

/// One environment's reconciler.
pub struct Reconciler<S> {
    env: Environment,
    source: Arc<S>,
    options: Arc<Options>,
    connection: Option<Arc<Connection>>,
    /// When the last pass that changed something in the cluster ran: the health timeout runs
    /// from there.
    last_change: Option<Instant>,
    status: EnvironmentStatus,
    events: tokio::sync::broadcast::Sender<Event>,
    /// Asked before every cluster write of a pass, when several replicas share the work.
    fence: Option<Arc<dyn cluster::WriteGuard>>,
}

impl<S: DesiredState> Reconciler<S> {
    /// A reconciler that has not run; it connects to the cluster on its first pass.
    pub fn new(
        env: Environment,
        source: Arc<S>,
        options: Arc<Options>,
        events: tokio::sync::broadcast::Sender<Event>,
    ) -> Self {
        let status = EnvironmentStatus::new(&env.name, env.sync.suspend);
        Self {
            env,
            source,
            options,
            connection: None,
            last_change: None,
            status,
            events,
            fence: None,
        }
    }

    /// Makes every cluster write of the next passes ask `fence` first (`None`: write freely).
    pub fn set_fence(&mut self, fence: Option<Arc<dyn cluster::WriteGuard>>) {
        self.fence = fence;
    }

    /// The environment it reconciles.
    pub fn environment(&self) -> &Environment {
        &self.env
    }

    /// The status after the last pass.
    pub fn status(&self) -> &EnvironmentStatus {
        &self.status
    }

    pub(crate) fn status_mut(&mut self) -> &mut EnvironmentStatus {
        &mut self.status
    }

    fn owner(&self) -> String {
        owner(&self.options, &self.env.name)
    }

    fn prune_policy(&self, owner: &str) -> prune::Policy {
        let sync = &self.env.sync;
        prune::Policy {
            namespaces: sync.prune_namespaces,
            crds: sync.prune_crds,
            adopted: sync.prune_adopted,
            max_percent: sync.max_prune_percent,
            ..prune::Policy::new(owner)
        }
    }

    /// Sends an event to subscribers and the log, and, when it is about an object, records a
    /// Kubernetes Event on it.
    async fn emit(&self, about: Option<(&Connection, &ObjectRef)>, kind: EventKind) {
        let message = kind.to_string();
        let (event_type, reason) = match &kind {
            EventKind::Drifted { .. } => (events::Type::Warning, "Drifted"),
            EventKind::Healed { .. } => (events::Type::Normal, "Healed"),
            EventKind::Pruned { .. } => (events::Type::Normal, "Pruned"),
            EventKind::Failed { .. } => (events::Type::Warning, "ReconcileFailed"),
        };
        match event_type {
            events::Type::Warning => {
                tracing::warn!(environment = %self.env.name, "{message}")
            }
            events::Type::Normal => tracing::info!(environment = %self.env.name, "{message}"),
        }
        // Nobody listening is fine: events are also logged.
        let _ = self.events.send(Event {
            environment: self.env.name.clone(),
            kind,
        });
        if let Some((conn, object)) = about
            && let Err(e) =
                events::record(conn.client(), object, event_type, reason, &message).await
        {
            // An event is a courtesy; failing to record one must not fail the sync.
            tracing::debug!(environment = %self.env.name, "{e}");
        }
    }

    /// One pass. On error the status holds the stage's reason and message; the caller picks
    /// the backoff with [`error_policy`].
    pub async fn reconcile(&mut self) -> Result<Action, Error> {
        self.status.last_attempt = Some(SystemTime::now());
        let limit = self.options.pass_timeout;
        let result = match tokio::time::timeout(limit, self.pass()).await {
            Ok(result) => result,
            Err(_) => Err(Error::Timeout {
                env: self.env.name.clone(),
                after: limit,
            }),
        };
        match &result {
            Ok(_) => self.status.last_error = None,
            Err(e) => {
                // Each error's message leaves its cause to `source()`: people read the chain.
                let message = ErrorChain(e).to_string();
                self.status.reason = e.reason();
                self.status.message = message.clone();
                self.status.last_error = Some(message.clone());
                self.emit(
                    None,
                    EventKind::Failed {
                        reason: e.reason(),
                        message,
                    },
                )
                .await;
            }
        }
        result
    }

    /// The first stages of a pass and of a plan: the desired objects, a connection, and the
    /// inventory of the last sync.
    async fn load(&mut self) -> Result<Loaded, Error> {
        let env = self.env.name.clone();
        let desired = self
            .source
            .desired(&self.env)
            .await
            .map_err(|source| Error::Source {
                env: env.clone(),
                source,
            })?;
        let revision = desired.revision.clone();
        self.status.attempted_revision = Some(revision.clone());
        let mut redactor = Redactor::from_manifests(&desired.objects);
        redactor.add_tainted(&desired.tainted);
        let objects =
            Object::from_manifests(desired.objects).map_err(|source| Error::InvalidObjects {
                env: env.clone(),
                revision: revision.clone(),
                source,
            })?;

        let owner = self.owner();
        if !inventory::valid_owner(&owner) {
            return Err(Error::Owner { env, owner });
        }
        // A kubeconfig Secret is read again every pass: the next pass after a change uses it.
        if self.connection.is_none()
            || matches!(
                self.env.cluster,
                crate::pipeline::Cluster::KubeconfigSecret { .. }
            )
        {
            let conn = self
                .options
                .connections
                .get(&self.env.cluster)
                .await
                .map_err(|source| Error::Connect {
                    env: env.clone(),
                    source: Box::new(source),
                })?;
            self.connection = Some(conn);
        }
        let raw = self
            .connection
            .clone()
            .expect("the connection was set just above");
        let conn = match &self.fence {
            Some(fence) => Arc::new(raw.fenced(fence.clone())),
            None => raw.clone(),
        };

        let location = Location::for_owner(&self.options.inventory_namespace, &owner);
        let (previous, version) = match inventory::load(conn.client(), &location).await {
            Ok(loaded) => loaded,
            Err(source) => {
                // Read the kubeconfig again next time: it may have been fixed or rotated.
                if source.is_unreachable() {
                    self.options
                        .connections
                        .forget(&self.env.cluster, &raw)
                        .await;
                    self.connection = None;
                }
                return Err(Error::Inventory { env, source });
            }
        };
        if objects.is_empty() && !previous.is_empty() {
            return Err(Error::EmptySource {
                env,
                revision,
                applied: previous.len(),
            });
        }
        let mut options = apply::Options::new(owner.clone());
        options.force = self.env.sync.force;
        options.self_heal = self.env.sync.self_heal;
        options.recreate = self.env.sync.recreate;
        options.adopt = self.env.sync.adopt;
        options.ignore = self.env.ignore_differences.clone();
        options.concurrency = self.options.concurrency;
        Ok(Loaded {
            conn,
            revision,
            objects,
            redactor,
            owner,
            location,
            previous,
            version,
            options,
        })
    }

    /// What a pass would do now, asked of the apiserver with server-side dry-run; changes
    /// nothing (`stagehand diff`). Secret values appear nowhere in the plan: changes are
    /// field paths, so key names show and values do not.
    /// Waits for one of [`Options::passes`] first, as a pass does.
    pub async fn plan(&mut self) -> Result<Plan, Error> {
        let _turn = self.options.passes.take().await;
        let Loaded {
            conn,
            revision,
            objects,
            redactor,
            owner,
            previous,
            mut options,
            ..
        } = self.load().await?;
        options.dry_run = true;
        let changes = apply::apply(&conn, objects, &options, &redactor, &previous).await;
        let next = Inventory::new(changes.references().cloned());
        let prune = if self.env.sync.prune {
            let policy = self.prune_policy(&owner);
            prune::prune(&conn, &previous.diff(&next), &previous, &policy, true).await
        } else {
            Vec::new()
        };
        Ok(Plan {
            revision,
            objects: changes
                .entries
                .iter()
                .map(|e| ObjectStatus {
                    reference: e.reference.clone(),
                    change: e.change.clone(),
                    health: None,
                    ignored: e.ignored.clone(),
                })
                .collect(),
            prune,
        })
    }

    /// One pass: load, then the steps below in order; each returns early with its stage's
    /// error.
    async fn pass(&mut self) -> Result<Action, Error> {
        let Loaded {
            conn,
            revision,
            objects,
            redactor,
            owner,
            location,
            previous,
            version,
            options,
        } = self.load().await?;
        let total = objects.len();
        let changes = self
            .apply_step(&conn, objects, &options, &redactor, &previous)
            .await;
        self.drift_step(&conn, &changes).await;
        self.health_timeout_step(&changes);
        let stored = Stored {
            location,
            previous,
            version,
        };
        let next = self
            .applied_step(&conn, &changes, &revision, &stored)
            .await?;
        self.prune_step(&conn, &owner, stored, next).await?;
        self.conclude(&revision, total)
    }

    /// Applies the desired objects and logs what changed.
    async fn apply_step(
        &mut self,
        conn: &Connection,
        objects: Vec<Object>,
        options: &apply::Options,
        redactor: &Redactor,
        previous: &Inventory,
    ) -> ChangeSet {
        let changes = apply::apply(conn, objects, options, redactor, previous).await;
        for entry in &changes.entries {
            for ignored in &entry.ignored {
                // Every pass would say it again: the status carries it for people.
                tracing::debug!(environment = %self.env.name, object = %entry.reference, "ignored: {ignored}");
            }
            match &entry.change {
                Change::Unchanged | Change::Drifted { .. } | Change::Healed { .. } => {}
                change => {
                    tracing::info!(environment = %self.env.name, object = %entry.reference, "{change}")
                }
            }
        }
        if changes.wrote() {
            self.last_change = Some(Instant::now());
        }
        changes
    }

    /// Records drifted and healed objects in the status and as events.
    async fn drift_step(&mut self, conn: &Connection, changes: &ChangeSet) {
        self.status.drift.clear();
        for entry in changes.drifted() {
            let (fields, healed) = match &entry.change {
                Change::Healed { fields } => (fields.clone(), true),
                Change::Drifted { fields } => (fields.clone(), false),
                _ => continue,
            };
            self.status.drift.push(Drift {
                reference: entry.reference.clone(),
                fields: fields.clone(),
                healed,
            });
            let object = entry.reference.to_string();
            let kind = if healed {
                EventKind::Healed { object, fields }
            } else {
                EventKind::Drifted { object, fields }
            };
            self.emit(Some((conn, &entry.reference)), kind).await;
        }
    }

    /// Records each object's change and health; an object still Progressing longer than the
    /// environment's timeout after the last change counts as Failed.
    fn health_timeout_step(&mut self, changes: &ChangeSet) {
        let timed_out = self
            .last_change
            .is_some_and(|t| Instant::now().duration_since(t) > self.env.sync.timeout);
        let timeout = self.env.sync.timeout;
        self.status.objects = changes
            .entries
            .iter()
            .map(|e| {
                let mut health = e.health();
                if let Some(h) = health.as_mut()
                    && h.status == HealthStatus::Progressing
                    && timed_out
                {
                    h.status = HealthStatus::Failed;
                    h.message = format!("still progressing after {timeout:?}: {}", h.message);
                }
                ObjectStatus {
                    reference: e.reference.clone(),
                    change: e.change.clone(),
                    health,
                    ignored: e.ignored.clone(),
                }
            })
            .collect();
    }

    /// Fails the pass when an object was not applied, after tracking what was created so that a
    /// later sync can prune it; otherwise records the revision as applied and returns the
    /// inventory of this sync.
    async fn applied_step(
        &mut self,
        conn: &Connection,
        changes: &ChangeSet,
        revision: &str,
        stored: &Stored,
    ) -> Result<Inventory, Error> {
        let previous = &stored.previous;
        let adopted: Vec<_> = changes
            .adopted()
            .chain(previous.adopted().cloned())
            .collect();
        let applied_ok: Vec<_> = changes
            .entries
            .iter()
            .filter(|e| !matches!(e.change, Change::Failed { .. }))
            .map(|e| e.reference.clone())
            .collect();
        let failed: Vec<_> = changes.failed().collect();
        if let Some(first) = failed.first() {
            let tracked = Inventory::new(applied_ok)
                .merge(previous.entries())
                .with_adopted(&adopted);
            if &tracked != previous {
                self.store_inventory(conn, stored, &tracked).await?;
            }
            return Err(Error::Apply {
                env: self.env.name.clone(),
                revision: revision.to_owned(),
                failed: failed.len(),
                total: changes.entries.len(),
                first: format!("{}: {}", first.reference, first.change),
            });
        }
        self.status.applied_revision = Some(revision.to_owned());
        self.status.last_applied = Some(SystemTime::now());
        Ok(Inventory::new(applied_ok).with_adopted(&adopted))
    }

    /// Deletes what left Git (when the environment prunes) and stores the inventory: `next`
    /// plus the objects a later pass must look at again (prune failed, withheld, or left in
    /// place as adopted or orphaned).
    ///
    /// Before deleting anything the inventory is written over the version this pass read, so
    /// that a concurrent writer (another Stagehand with the same owner) fails this pass before
    /// it deletes, rather than after.
    async fn prune_step(
        &mut self,
        conn: &Connection,
        owner: &str,
        mut stored: Stored,
        next: Inventory,
    ) -> Result<(), Error> {
        let previous = &stored.previous;
        let stale = previous.diff(&next);
        self.status.pruned.clear();
        let mut retained = Vec::new();
        if self.env.sync.prune && !stale.is_empty() {
            let claim = next.merge(&stale).with_adopted(previous.adopted());
            stored.version = self.store_inventory(conn, &stored, &claim).await?;
            let policy = self.prune_policy(owner);
            for pruned in prune::prune(conn, &stale, previous, &policy, false).await {
                if pruned.outcome.is_retained() {
                    retained.push(pruned.reference.clone());
                }
                if pruned.outcome == Outcome::Deleted {
                    let object = pruned.reference.to_string();
                    self.emit(
                        Some((conn, &pruned.reference)),
                        EventKind::Pruned { object },
                    )
                    .await
                }
                self.status.pruned.push(pruned);
            }
        }
        let next = next.merge(&retained).with_adopted(previous.adopted());
        if &next != previous {
            self.store_inventory(conn, &stored, &next).await?;
        }
        let withheld = self.status.pruned.iter().find_map(|p| match p.outcome {
            Outcome::Withheld {
                count,
                total,
                max_percent,
            } => Some((count, total, max_percent)),
            _ => None,
        });
        if let Some((count, total, max_percent)) = withheld {
            return Err(Error::PruneWithheld {
                env: self.env.name.clone(),
                count,
                total,
                max_percent,
            });
        }
        let failed: Vec<&prune::Pruned> = self
            .status
            .pruned
            .iter()
            .filter(|p| matches!(p.outcome, Outcome::Failed { .. }))
            .collect();
        let Some(first) = failed.first() else {
            return Ok(());
        };
        Err(Error::Prune {
            env: self.env.name.clone(),
            failed: failed.len(),
            first: format!("{}: {}", first.reference, first.outcome),
        })
    }

    /// The environment's health from its objects' health, and what happens next.
    fn conclude(&mut self, revision: &str, total: usize) -> Result<Action, Error> {
        let worst = self
            .status
            .objects
            .iter()
            .filter_map(|o| o.health.as_ref().map(|h| h.status))
            .max()
            .unwrap_or(HealthStatus::Healthy);
        self.status.health = Some(worst);
        match worst {
            HealthStatus::Failed => {
                let failed: Vec<&ObjectStatus> = self
                    .status
                    .objects
                    .iter()
                    .filter(|o| {
                        o.health
                            .as_ref()
                            .is_some_and(|h| h.status == HealthStatus::Failed)
                    })
                    .collect();
                let first = failed
                    .first()
                    .and_then(|o| {
                        o.health
                            .as_ref()
                            .map(|h| format!("{}: {}", o.reference, h.message))
                    })
                    .unwrap_or_default();
                Err(Error::Health {
                    env: self.env.name.clone(),
                    revision: revision.to_owned(),
                    failed: failed.len(),
                    timeout: self.env.sync.timeout,
                    first,
                })
            }
            HealthStatus::Progressing => {
                self.status.reason = Reason::Progressing;
                self.status.message =
                    format!("revision {revision} applied; waiting for objects to become healthy");
                Ok(Action::Requeue(
                    self.options.progress_poll.min(self.env.sync.interval),
                ))
            }
            HealthStatus::Healthy => {
                self.status.reason = Reason::Succeeded;
                self.status.message =
                    format!("revision {revision} applied and healthy ({total} objects)");
                Ok(Action::Requeue(self.env.sync.interval))
            }
        }
    }

    /// Writes `inventory` over the version `stored` holds; returns the version written.
    async fn store_inventory(
        &self,
        conn: &Connection,
        stored: &Stored,
        inventory: &Inventory,
    ) -> Result<Version, Error> {
        inventory::save(conn.client(), &stored.location, inventory, &stored.version)
            .await
            .map_err(|source| Error::Inventory {
                env: self.env.name.clone(),
                source,
            })
    }
}

/// The inventory of the last sync as a pass read it, and where it is kept.
struct Stored {
    location: Location,
    previous: Inventory,
    version: Version,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn some_error() -> Error {
        Error::EmptySource {
            env: "dev".into(),
            revision: "abc".into(),
            applied: 3,
        }
    }

    #[test]
    fn backoff_doubles_per_failure_up_to_the_cap() {
        let options = Options {
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(10),
            ..Options::default()
        };
        let hour = Duration::from_secs(3600);
        let delays: Vec<Action> = (1..=6)
            .map(|n| error_policy(&some_error(), n, &options, hour))
            .collect();
        let secs = |s| Action::Requeue(Duration::from_secs(s));
        assert_eq!(
            delays,
            [secs(1), secs(2), secs(4), secs(8), secs(10), secs(10)]
        );
    }

    #[test]
    fn backoff_never_waits_longer_than_the_interval() {
        let options = Options::default();
        assert_eq!(
            error_policy(&some_error(), 12, &options, Duration::from_secs(30)),
            Action::Requeue(Duration::from_secs(30))
        );
    }

    #[test]
    fn each_failed_stage_has_its_own_reason() {
        assert_eq!(some_error().reason(), Reason::EmptySource);
        let source = Error::Source {
            env: "dev".into(),
            source: SourceError {
                stage: SourceStage::Render,
                revision: Some("abc".into()),
                source: "kustomization.yaml: resources[0]: not found".into(),
            },
        };
        assert_eq!(source.reason(), Reason::SourceFailed);
        assert_eq!(
            ErrorChain(&source).to_string(),
            "environment dev: render failed at revision abc: kustomization.yaml: resources[0]: not found"
        );
        let decrypt = Error::Source {
            env: "dev".into(),
            source: SourceError {
                stage: SourceStage::Decrypt,
                revision: Some("abc".into()),
                source: "dev/db.sops.yaml: MAC mismatch".into(),
            },
        };
        assert_eq!(decrypt.reason(), Reason::DecryptionFailed);
        assert_eq!(decrypt.reason().as_str(), "decryption_failed");
    }
}
