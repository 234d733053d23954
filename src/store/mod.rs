//! Durable state: what Stagehand must still know after a restart.
//!
//! Per environment: the last applied revision, whether it is suspended (and by whom, when, why),
//! its last reported status, its sync history and its events. For promotions: each promotion with
//! its state, every transition (who, when, why) written *before* it takes effect, approvals, and
//! the audit trail that `ListAuditEvents` answers.
//!
//! [`Store`] is the interface the service uses. [`SqliteStore`] is the embedded implementation,
//! one SQLite file in the state directory, for one replica; [`PostgresStore`] keeps the same
//! data in a PostgreSQL database that several replicas share, with the same schema versions
//! and the same behaviour (the tests run one body on both). The store holds no Secret values: statuses and events are written by modules that
//! already redact them.

mod delivery;
mod postgres;
mod schema;
mod sqlite;

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use delivery::{
    DEFAULT_WINDOW as DEFAULT_DELIVERY_WINDOW, DeliveryMetrics, DeliveryQuery, FIRST_COMMIT_AT,
    MAX_WINDOW as MAX_DELIVERY_WINDOW, Spread,
};
pub use postgres::{PostgresStore, PostgresUrl};
pub use sqlite::{DATABASE_FILE, SqliteStore};

/// The database a store works on, as errors and logs name it: the SQLite file, or the
/// PostgreSQL server and database as a URL without its password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Database {
    /// The embedded store's file.
    File(PathBuf),
    /// A PostgreSQL database, `postgresql://user@host:port/name`: never a password.
    Postgres(String),
}

impl fmt::Display for Database {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File(path) => path.display().fmt(f),
            Self::Postgres(url) => f.write_str(url),
        }
    }
}

/// The error a database library reported, kept as the source of an [`Error`].
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// From SQLite.
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
    /// From PostgreSQL or the connection to it.
    #[error(transparent)]
    Postgres(#[from] tokio_postgres::Error),
    /// From the pool of PostgreSQL connections (a timeout waiting for one, mostly).
    #[error(transparent)]
    Pool(#[from] deadpool_postgres::PoolError),
}

/// Why a store call failed. Every variant names the database (or, for the state directory's own
/// files, the path); none holds a password.
#[derive(Debug, thiserror::Error)]
// Each variant is described by its message, and its fields by the names the message uses.
#[allow(missing_docs)]
pub enum Error {
    #[error("cannot create the state directory {path}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot make {path} readable by this user only")]
    Permissions {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The connection string could not be parsed. Its text is not repeated: it may hold a
    /// password.
    #[error(
        "the PostgreSQL connection string is not valid{detail}; expected postgresql://USER:PASSWORD@HOST:PORT/DATABASE or key=value pairs"
    )]
    InvalidUrl { detail: String },
    #[error("cannot open the database {database}")]
    Open {
        database: Database,
        #[source]
        source: BackendError,
    },
    /// The file is damaged or not an SQLite database at all. It is left as it is: an operator
    /// decides whether to restore it from a backup or move it away.
    #[error(
        "database {database} is corrupt ({detail}); restore it from a backup or move it away to start empty"
    )]
    Corrupt { database: Database, detail: String },
    #[error("{database} is an SQLite database of another application (application_id {found:#x})")]
    ForeignDatabase { database: Database, found: i64 },
    /// Written by a newer Stagehand; opening it with this one could lose what it added.
    #[error(
        "database {database} has schema version {found}, newer than version {supported} that this stagehand supports; run a newer stagehand"
    )]
    NewerSchema {
        database: Database,
        found: i64,
        supported: i64,
    },
    #[error("cannot migrate database {database} to schema version {version}")]
    Migrate {
        database: Database,
        version: i64,
        #[source]
        source: BackendError,
    },
    #[error("database {database}: {what} failed")]
    Query {
        database: Database,
        what: &'static str,
        #[source]
        source: BackendError,
    },
    /// A stored value that this build cannot read (a state name it does not know, say).
    #[error("database {database}: {what}: {detail}")]
    Invalid {
        database: Database,
        what: &'static str,
        detail: String,
    },
    #[error("database {database}: page token {token:?} is not one this store handed out")]
    PageToken { database: Database, token: String },
    #[error("database {database}: cannot start the store's thread")]
    Thread {
        database: Database,
        #[source]
        source: std::io::Error,
    },
    #[error("database {database}: the store has been closed")]
    Closed { database: Database },
}

/// A store call's result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The durable state of the service.
///
/// Methods are async because a shared engine answers over the network; the embedded SQLite
/// store runs its blocking calls on a thread of its own.
#[async_trait::async_trait]
pub trait Store: Send + Sync {
    /// One environment's record; `None` when nothing was ever stored for it.
    async fn environment(&self, name: &str) -> Result<Option<EnvironmentRecord>>;

    /// Every environment with a record, by name.
    async fn environments(&self) -> Result<Vec<EnvironmentRecord>>;

    /// Suspends an environment (`Some`) or resumes it (`None`), with an audit event written in the
    /// same transaction.
    async fn set_suspension(
        &self,
        environment: &str,
        suspension: Option<Hold>,
        audit: NewAuditEvent,
    ) -> Result<()>;

    /// Holds or releases automatic promotion into an environment (after a manual rollback), with
    /// an audit event written in the same transaction.
    async fn set_auto_promotion_hold(
        &self,
        environment: &str,
        hold: Option<Hold>,
        audit: NewAuditEvent,
    ) -> Result<()>;

    /// Replaces where an environment's verification stands, with an audit event (a failure, a
    /// recovery) written in the same transaction when there is one.
    async fn set_verification(
        &self,
        environment: &str,
        verification: &VerificationRecord,
        audit: Option<NewAuditEvent>,
    ) -> Result<()>;

    /// Replaces an environment's last reported status (JSON, no Secret values), so that after a
    /// restart the service answers it at once.
    ///
    /// This, [`Store::record_sync`] and [`Store::append_event`] survive a crash of the process
    /// at once, and a crash of the machine once a later promotion, approval, audit or
    /// suspension write syncs them: the next reconcile pass writes them again anyway, and a
    /// disk sync per environment per pass would be the service's largest cost.
    async fn save_status(
        &self,
        environment: &str,
        status: Box<serde_json::value::RawValue>,
    ) -> Result<()>;

    /// Records a finished sync pass; when it applied its revision, that becomes the environment's
    /// applied revision in the same transaction. A pass that changed nothing and ended like the
    /// environment's previous record (same revision, result and message, which changed nothing
    /// either) is folded into that record, so that history grows with what happens rather than
    /// with the poll interval. At most [`HISTORY_PER_ENVIRONMENT`] records are kept.
    async fn record_sync(&self, run: SyncRun) -> Result<SyncRecord>;

    /// The newest sync passes of an environment first.
    async fn sync_history(&self, environment: &str, limit: u32) -> Result<Vec<SyncRecord>>;

    /// Records an event; at most [`HISTORY_PER_ENVIRONMENT`] are kept per environment.
    async fn append_event(&self, event: NewEvent) -> Result<EventRecord>;

    /// The newest events first; `environment: None` means every environment.
    async fn events(&self, environment: Option<&str>, limit: u32) -> Result<Vec<EventRecord>>;

    /// Stores a new promotion in its first state, with that first transition and a `Requested`
    /// (or `RolledBack`) audit event, in one transaction.
    async fn create_promotion(&self, promotion: NewPromotion) -> Result<PromotionRecord>;

    /// A promotion with its approvals and transitions.
    async fn promotion(&self, id: &str) -> Result<Option<PromotionDetail>>;

    /// Promotions, newest first, one page at a time.
    async fn promotions(&self, filter: &PromotionFilter) -> Result<Page<PromotionRecord>>;

    /// Moves a promotion from `transition.from` to `transition.to`, compare-and-swap: nothing is
    /// written unless the promotion is still in `from`. Callers act on the new state only after
    /// this returns [`TransitionOutcome::Applied`].
    async fn transition(&self, transition: Transition) -> Result<TransitionOutcome>;

    /// Records an approval with its audit event; the same approver twice counts once.
    async fn add_approval(&self, promotion_id: &str, approval: Approval)
    -> Result<ApprovalOutcome>;

    /// Records an audit event on its own, for actions no other call records.
    async fn append_audit(&self, event: NewAuditEvent) -> Result<AuditEvent>;

    /// Audit events, newest first, one page at a time.
    async fn audit_events(&self, filter: &AuditFilter) -> Result<Page<AuditEvent>>;

    /// Deployment frequency, lead time, change failure rate and time to restore of each
    /// environment of `query` over its window (defined in the `delivery` module), from one
    /// read of the promotions that moved since the window's start.
    async fn delivery_metrics(&self, query: &DeliveryQuery) -> Result<Vec<DeliveryMetrics>>;
}

/// A deliberate state set by someone: a suspension, or a hold on automatic promotion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hold {
    /// Why, in the words of whoever set it.
    pub reason: String,
    /// The identity that set it.
    pub by: String,
    /// When it was set.
    pub at: SystemTime,
}

/// What the store remembers of an environment.
#[derive(Debug, Clone, PartialEq)]
pub struct EnvironmentRecord {
    /// The environment's name in the pipeline.
    pub name: String,
    /// The last revision a pass applied in full; `None` before the first.
    pub applied_revision: Option<String>,
    /// When the applied revision was first applied; later passes at the same revision keep it,
    /// so soak time counts from here.
    pub applied_at: Option<SystemTime>,
    /// Set while the environment is suspended.
    pub suspended: Option<Hold>,
    /// Set while automatic promotion into the environment is held.
    pub auto_promotion_hold: Option<Hold>,
    /// The last status reconcile reported, as it serialised it.
    pub status: Option<serde_json::Value>,
    /// Where the environment's verification stands.
    pub verification: VerificationRecord,
}

/// Where an environment's verification (`verify:`) stands: the last revision that passed it, and
/// a failure that has not been made good since.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VerificationRecord {
    /// The last revision (commit) that passed verification in the environment.
    #[serde(default)]
    pub verified: Option<VerifiedRevision>,
    /// The revision that failed verification and is still what the environment runs, as far
    /// as the last verification knows.
    #[serde(default)]
    pub failed: Option<FailedVerification>,
}

/// A revision that passed verification.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VerifiedRevision {
    /// The commit.
    pub revision: String,
    /// When it passed.
    pub at: SystemTime,
}

/// A revision that failed verification: in a promotion, or when it ran again later.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FailedVerification {
    /// The commit.
    pub revision: String,
    /// When it failed.
    pub at: SystemTime,
    /// Which checks failed and why.
    pub reason: String,
    /// The promotion whose verification failed; `None` for a re-verification.
    #[serde(default)]
    pub promotion_id: Option<String>,
}

/// Objects a sync pass touched, by what happened to them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncCounts {
    /// Objects the pass created.
    pub created: u32,
    /// Objects the pass changed.
    pub changed: u32,
    /// Objects the pass deleted.
    pub pruned: u32,
    /// Objects found changed in the cluster since the last pass.
    pub drifted: u32,
    /// Objects that existed without our inventory label and were taken over.
    pub adopted: u32,
}

/// A finished sync pass.
#[derive(Debug, Clone, PartialEq)]
pub struct SyncRun {
    /// The environment.
    pub environment: String,
    /// The revision the pass rendered.
    pub revision: String,
    /// The tree of the environment's directory at that revision, when known: passes at two
    /// revisions with the same content ran the same files.
    pub content: Option<String>,
    /// When the pass began.
    pub started_at: SystemTime,
    /// When the pass ended.
    pub finished_at: SystemTime,
    /// A `reconcile::Reason` label such as `succeeded` or `apply_failed`.
    pub result: String,
    /// The status message the pass ended with.
    pub message: String,
    /// What started the pass: `poll`, `webhook`, `manual`, `promotion`, `drift`, …
    pub trigger: String,
    /// Whether every object of the revision was applied, making it the applied revision.
    pub applied: bool,
    /// What happened to the objects.
    pub counts: SyncCounts,
}

/// A sync pass as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct SyncRecord {
    /// Its row, for paging.
    pub id: i64,
    /// The passes this record stands for: more than one when quiet passes were folded into it;
    /// then `run.started_at` is the first one's start and `run.finished_at` the last one's end.
    pub passes: u32,
    /// The pass (or the folded passes).
    pub run: SyncRun,
}

/// How many sync records and events the store keeps per environment (give or take 63);
/// older ones are dropped.
pub const HISTORY_PER_ENVIRONMENT: u32 = 10_000;

/// How much an event matters, as Kubernetes events grade them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// Worth knowing.
    Normal,
    /// Worth acting on.
    Warning,
}

/// Something worth telling about an environment, or the pipeline when `environment` is `None`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    /// The environment; `None` for the pipeline.
    pub environment: Option<String>,
    /// When it happened.
    pub at: SystemTime,
    /// How much it matters.
    pub severity: Severity,
    /// A short machine-readable kind, such as `DriftDetected`.
    pub kind: String,
    /// What happened, for people.
    pub message: String,
    /// The revision it concerns, if any.
    pub revision: Option<String>,
}

/// An event as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRecord {
    /// Its row, for paging.
    pub id: i64,
    /// The event.
    pub event: NewEvent,
}

/// Where a promotion is in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PromotionState {
    /// Requested; checks (freeze windows, soak time) not yet passed.
    Pending,
    /// Waiting for the approvals the target requires.
    AwaitingApproval,
    /// Approved; the commit is about to be made.
    Approved,
    /// Making the promotion commit.
    Promoting,
    /// Committed; waiting for the target to apply it.
    Syncing,
    /// Applied; waiting for the target to be healthy.
    Verifying,
    /// The target runs the revision, healthy.
    Succeeded,
    /// An approver refused it.
    Rejected,
    /// The commit, the sync or the health check failed.
    Failed,
    /// Withdrawn, or superseded by a newer promotion.
    Aborted,
}

impl PromotionState {
    /// Every state, in lifecycle order.
    pub const ALL: [PromotionState; 10] = [
        Self::Pending,
        Self::AwaitingApproval,
        Self::Approved,
        Self::Promoting,
        Self::Syncing,
        Self::Verifying,
        Self::Succeeded,
        Self::Rejected,
        Self::Failed,
        Self::Aborted,
    ];

    /// The state's name as stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "Pending",
            Self::AwaitingApproval => "AwaitingApproval",
            Self::Approved => "Approved",
            Self::Promoting => "Promoting",
            Self::Syncing => "Syncing",
            Self::Verifying => "Verifying",
            Self::Succeeded => "Succeeded",
            Self::Rejected => "Rejected",
            Self::Failed => "Failed",
            Self::Aborted => "Aborted",
        }
    }

    /// Whether the promotion has ended; it never changes state again.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Succeeded | Self::Rejected | Self::Failed | Self::Aborted
        )
    }
}

impl fmt::Display for PromotionState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for PromotionState {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| format!("unknown promotion state {s:?}"))
    }
}

/// Whether a revision moves forward or back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PromotionKind {
    /// A revision of the source environment moves into the target.
    Promotion,
    /// The target goes back to an earlier revision of its own.
    Rollback,
}

impl PromotionKind {
    /// The kind's name as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Promotion => "promotion",
            Self::Rollback => "rollback",
        }
    }
}

impl FromStr for PromotionKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "promotion" => Ok(Self::Promotion),
            "rollback" => Ok(Self::Rollback),
            other => Err(format!("unknown promotion kind {other:?}")),
        }
    }
}

/// A promotion as it is requested.
#[derive(Debug, Clone, PartialEq)]
pub struct NewPromotion {
    /// Unique across stores and restarts, because the Git commit's trailer carries it and
    /// resuming after a crash looks it up there; see [`new_promotion_id`].
    pub id: String,
    /// Forward or back.
    pub kind: PromotionKind,
    /// `None` for a rollback, which moves the target back along its own history.
    pub source_environment: Option<String>,
    /// The environment that receives the revision.
    pub target_environment: String,
    /// The revision being promoted (or rolled back to).
    pub revision: String,
    /// Promoting the revision the target already runs, on purpose.
    pub rerun: bool,
    /// The identity that asked.
    pub requested_by: String,
    /// Why, in their words.
    pub reason: String,
    /// The first state.
    pub state: PromotionState,
    /// When it was requested.
    pub at: SystemTime,
    /// Data of the first state, for the promotion engine.
    pub detail: Option<serde_json::Value>,
}

/// A promotion as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct PromotionRecord {
    /// See [`NewPromotion::id`].
    pub id: String,
    /// Forward or back.
    pub kind: PromotionKind,
    /// `None` for a rollback.
    pub source_environment: Option<String>,
    /// The environment that receives the revision.
    pub target_environment: String,
    /// The revision being promoted.
    pub revision: String,
    /// Promoting the revision the target already runs, on purpose.
    pub rerun: bool,
    /// The identity that asked.
    pub requested_by: String,
    /// Why, in their words.
    pub reason: String,
    /// Where it is now.
    pub state: PromotionState,
    /// Why it is in its state: the reason of its last transition.
    pub message: String,
    /// The commit that carries the promotion in Git, once made.
    pub commit: Option<String>,
    /// Data of the current state (what it waits for, a freeze override, …) for the engine.
    pub detail: Option<serde_json::Value>,
    /// When it was requested.
    pub created_at: SystemTime,
    /// When it last changed state.
    pub updated_at: SystemTime,
    /// Incremented by every transition.
    pub version: i64,
}

/// A promotion with everything that happened to it.
#[derive(Debug, Clone, PartialEq)]
pub struct PromotionDetail {
    /// The promotion as it is now.
    pub promotion: PromotionRecord,
    /// In the order they were given.
    pub approvals: Vec<Approval>,
    /// Oldest first; the first one is the creation.
    pub transitions: Vec<TransitionRecord>,
}

/// A request to move a promotion from one state to the next.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    /// The promotion to move.
    pub promotion_id: String,
    /// The state the caller saw; the transition is refused if the promotion is no longer in it.
    pub from: PromotionState,
    /// The version the caller read; when set, the transition is also refused if anything moved
    /// the promotion since (a same-state move that changed its data, for example).
    pub from_version: Option<i64>,
    /// The state to move to.
    pub to: PromotionState,
    /// The identity moving it, or `stagehand`.
    pub actor: String,
    /// Why, for the audit log and the promotion's message.
    pub reason: String,
    /// When.
    pub at: SystemTime,
    /// Sets the promotion commit (Promoting → Syncing); `None` keeps it.
    pub commit: Option<String>,
    /// Replaces the promotion's state data.
    pub detail: Option<serde_json::Value>,
    /// An audit event written in the same transaction (rejected, aborted, overrode, …).
    pub audit: Option<AuditAction>,
}

/// A state change as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct TransitionRecord {
    /// 1 for the creation, then one more per transition.
    pub seq: i64,
    /// `None` for the creation.
    pub from: Option<PromotionState>,
    /// The state entered.
    pub to: PromotionState,
    /// The identity that moved it.
    pub actor: String,
    /// Why.
    pub reason: String,
    /// When.
    pub at: SystemTime,
    /// The state data set with it.
    pub detail: Option<serde_json::Value>,
}

/// What became of a transition; a refused one wrote nothing.
#[derive(Debug, Clone, PartialEq)]
pub enum TransitionOutcome {
    /// The promotion as it is now.
    Applied(Box<PromotionRecord>),
    /// The promotion was no longer in the expected state (another replica or call moved it).
    Conflict {
        /// The state it is in.
        current: PromotionState,
    },
    /// No promotion has that id.
    NotFound,
}

/// One approval of a promotion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Approval {
    /// The approving identity.
    pub approver: String,
    /// Its e-mail, when the token file names one.
    pub email: String,
    /// Its groups when it approved, which decide whether it counts.
    pub groups: Vec<String>,
    /// When.
    pub at: SystemTime,
    /// What the approver wrote.
    pub comment: String,
}

/// What became of an approval.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApprovalOutcome {
    /// Stored and counted.
    Recorded,
    /// This approver had already approved; nothing was written.
    AlreadyApproved,
    /// No promotion has that id.
    NotFound,
    /// The promotion is past approval (in Git, or ended); nothing was written.
    Closed {
        /// Its state.
        state: PromotionState,
    },
}

/// What someone did, as the audit log names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuditAction {
    /// A promotion was requested.
    Requested,
    /// An approval was given.
    Approved,
    /// A promotion was rejected by an approver.
    Rejected,
    /// Someone asked to approve a promotion and the policy refused them.
    ApprovalRefused,
    /// Someone asked to let a promotion through a freeze window and was refused.
    OverrideRefused,
    /// A promotion was withdrawn.
    Aborted,
    /// A newer promotion replaced a waiting one.
    Superseded,
    /// A permitted group bypassed a freeze window.
    Overrode,
    /// A rollback was requested.
    RolledBack,
    /// A sync was asked for by hand.
    Synced,
    /// An environment was suspended.
    Suspended,
    /// An environment was resumed.
    Resumed,
    /// Automatic promotion into an environment was held.
    AutoPromotionHeld,
    /// Automatic promotion into an environment was released.
    AutoPromotionResumed,
    /// An environment's revision failed verification.
    VerificationFailed,
    /// An environment that had failed verification passed it again.
    VerificationRecovered,
}

impl AuditAction {
    /// Every action.
    pub const ALL: [AuditAction; 16] = [
        Self::Requested,
        Self::Approved,
        Self::Rejected,
        Self::ApprovalRefused,
        Self::OverrideRefused,
        Self::Aborted,
        Self::Superseded,
        Self::Overrode,
        Self::RolledBack,
        Self::Synced,
        Self::Suspended,
        Self::Resumed,
        Self::AutoPromotionHeld,
        Self::AutoPromotionResumed,
        Self::VerificationFailed,
        Self::VerificationRecovered,
    ];

    /// The action's name as stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Requested => "requested",
            Self::Approved => "approved",
            Self::Rejected => "rejected",
            Self::ApprovalRefused => "approval_refused",
            Self::OverrideRefused => "override_refused",
            Self::Aborted => "aborted",
            Self::Superseded => "superseded",
            Self::Overrode => "overrode",
            Self::RolledBack => "rolled_back",
            Self::Synced => "synced",
            Self::Suspended => "suspended",
            Self::Resumed => "resumed",
            Self::AutoPromotionHeld => "auto_promotion_held",
            Self::AutoPromotionResumed => "auto_promotion_resumed",
            Self::VerificationFailed => "verification_failed",
            Self::VerificationRecovered => "verification_recovered",
        }
    }
}

impl fmt::Display for AuditAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for AuditAction {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|action| action.as_str() == s)
            .ok_or_else(|| format!("unknown audit action {s:?}"))
    }
}

/// Something someone did, as it is logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAuditEvent {
    /// When.
    pub at: SystemTime,
    /// The identity that acted, or `stagehand` for the service itself.
    pub actor: String,
    /// What.
    pub action: AuditAction,
    /// The environment it concerns.
    pub environment: Option<String>,
    /// The promotion it concerns.
    pub promotion_id: Option<String>,
    /// The revision it concerns.
    pub revision: Option<String>,
    /// Why, in the actor's words.
    pub reason: String,
}

/// An audit event as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    /// Its row, for paging.
    pub id: i64,
    /// The event.
    pub event: NewAuditEvent,
}

/// Which promotions to list. Empty fields match everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PromotionFilter {
    /// The target environment: promotions into it (rollbacks included).
    pub environment: Option<String>,
    /// Only these states; empty for all.
    pub states: Vec<PromotionState>,
    /// Created at or after.
    pub since: Option<SystemTime>,
    /// Created before.
    pub until: Option<SystemTime>,
    /// Page size; 0 means [`DEFAULT_PAGE_SIZE`].
    pub limit: u32,
    /// From a previous page's `next_page_token`.
    pub page_token: Option<String>,
    /// Only promotions into these environments (those the caller may see); `None` for all.
    pub environments: Option<Vec<String>>,
}

/// Which audit events to list. Empty fields match everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFilter {
    /// Only events about this environment.
    pub environment: Option<String>,
    /// Only events about this promotion.
    pub promotion_id: Option<String>,
    /// Only events of this actor (an identity's name, or `stagehand`).
    pub actor: Option<String>,
    /// Only these actions; empty for all.
    pub actions: Vec<AuditAction>,
    /// At or after.
    pub since: Option<SystemTime>,
    /// Before.
    pub until: Option<SystemTime>,
    /// Page size; 0 means [`DEFAULT_PAGE_SIZE`].
    pub limit: u32,
    /// From a previous page's `next_page_token`.
    pub page_token: Option<String>,
    /// Only events about these environments (those the caller may see) or about none; `None`
    /// for all.
    pub environments: Option<Vec<String>>,
}

/// The page size when a listing asks for none.
pub const DEFAULT_PAGE_SIZE: u32 = 100;
/// The largest page a listing returns, whatever it asks for.
pub const MAX_PAGE_SIZE: u32 = 1000;

/// One page of a listing; `next_page_token` is `None` on the last page.
#[derive(Debug, Clone, PartialEq)]
pub struct Page<T> {
    /// This page's items.
    pub items: Vec<T>,
    /// Where the next page starts.
    pub next_page_token: Option<String>,
}

/// A fresh promotion id: 48 bits of milliseconds (so ids sort by creation) and 48 random bits
/// (so two stores, or a store restored from an old backup, never hand out the same id).
pub fn new_promotion_id() -> String {
    let mut random = [0u8; 6];
    getrandom::fill(&mut random).expect("the operating system provides random bytes");
    let millis = to_millis(SystemTime::now()) & 0xffff_ffff_ffff;
    format!("{millis:012x}{}", hex::encode(random))
}

// What both backends share: how times are stored, when quiet passes fold, how pages are cut.

/// Times are stored as milliseconds since the Unix epoch; earlier times do not occur.
fn to_millis(time: SystemTime) -> i64 {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    i64::try_from(since.as_millis())
        .expect("milliseconds since 1970 fit in 63 bits until the year 292 million")
}

fn from_millis(millis: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(millis.max(0).unsigned_abs())
}

/// Trimming walks the environment's newest records, so it runs on every 64th insert rather
/// than on each; an environment holds at most 63 records over the limit.
const TRIM_EVERY: i64 = 64;

/// A pass that changed nothing and ended as the previous record did, which changed nothing
/// either, adds nothing to the history but its time.
fn folds_into(previous: &SyncRun, run: &SyncRun) -> bool {
    let quiet = SyncCounts::default();
    previous.counts == quiet
        && run.counts == quiet
        && previous.revision == run.revision
        && previous.content == run.content
        && previous.result == run.result
        && previous.message == run.message
        && previous.applied == run.applied
}

fn page_size(limit: u32) -> u32 {
    match limit {
        0 => DEFAULT_PAGE_SIZE,
        n => n.min(MAX_PAGE_SIZE),
    }
}

impl Severity {
    fn as_str(self) -> &'static str {
        match self {
            Self::Normal => "Normal",
            Self::Warning => "Warning",
        }
    }
}

impl FromStr for Severity {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "Normal" => Ok(Self::Normal),
            "Warning" => Ok(Self::Warning),
            other => Err(format!("unknown event severity {other:?}")),
        }
    }
}

/// Takes one row more than the page holds, to learn whether another page follows.
fn paginate<T>(mut items: Vec<(i64, T)>, size: u32) -> Page<T> {
    let size = size as usize;
    let next_page_token = if items.len() > size {
        items.truncate(size);
        items.last().map(|(key, _)| key.to_string())
    } else {
        None
    };
    Page {
        items: items.into_iter().map(|(_, item)| item).collect(),
        next_page_token,
    }
}
