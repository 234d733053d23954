//! The calls the API makes: request, approve, reject, abort, override, roll back, read, watch.
//! Each writes to the store first and then wakes the lane of the target environment, which
//! moves the promotion on (see `lane`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::SystemTime;

use gix::ObjectId;
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, broadcast};
use tokio::task::JoinHandle;
use tracing::Instrument as _;

use super::{Actor, Error, People, checks, lane, policy};
use crate::git::{self, promote::Candidate};
use crate::pipeline::{Environment, Pipeline};
use crate::reconcile::{self, Plan, source::GitSource};
use crate::service::{Service, UnknownEnvironment};
use crate::store::{
    self, Approval, ApprovalOutcome, AuditAction, NewPromotion, Page, PromotionDetail,
    PromotionFilter, PromotionKind, PromotionRecord, PromotionState, Store, Transition,
    TransitionOutcome,
};

/// How many commits are walked for the authors of a promoted range; a longer range is refused
/// where the author rule applies.
const AUTHORS_LIMIT: usize = 5000;
/// How far back an environment's history is searched: for a named revision, and for the
/// promotion a rollback's content came from.
const HISTORY_LIMIT: usize = git::history::WALK_LIMIT;

/// The promotion engine of one pipeline; part of the running [`Service`].
pub struct Engine {
    pub(super) pipeline: Arc<Pipeline>,
    pub(super) repository: git::Repository,
    pub(super) store: Arc<dyn Store>,
    pub(super) service: Weak<Service>,
    pub(super) source: Arc<GitSource>,
    pub(super) options: Arc<reconcile::Options>,
    pub(super) git: git::promote::Options,
    /// The identities as they are now; `None` without a tokens file.
    people: Option<Arc<dyn People>>,
    /// Only the leader drives promotions and writes them.
    pub(super) ownership: crate::shard::Ownership,
    /// One wake-up per target environment.
    lanes: HashMap<String, Arc<Notify>>,
    /// The id of every promotion that changed.
    changes: broadcast::Sender<String>,
    /// The client of the verification checks.
    pub(super) http: reqwest::Client,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

/// The engine's own data about a promotion, kept in the store with it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Detail {
    /// E-mails of who wrote the promoted range (authors, committers, co-authors), for
    /// `allowAuthorApproval: false`.
    #[serde(default)]
    pub authors: Vec<String>,
    /// The requester's e-mail when they asked: one person may hold several identities.
    #[serde(default)]
    pub requester_email: String,
    /// Every promotion commit Stagehand wrote for this promotion, recorded before its push:
    /// only these count as the promotion having landed.
    #[serde(default)]
    pub commits: Vec<String>,
    /// Git steps that failed for a reason other than someone pushing first.
    #[serde(default)]
    pub git_failures: u32,
    /// The target branch tip the last pre-flight checked the candidate on.
    #[serde(default)]
    pub checked_tip: Option<String>,
    /// Who let it through a freeze window, and why.
    #[serde(default)]
    pub freeze_override: Option<Override>,
    /// When the change it brings began: the oldest committer time (milliseconds since the
    /// Unix epoch) of the promoted range, recorded at request so that delivery metrics never
    /// read Git. Stored under [`store::FIRST_COMMIT_AT`]; `None` for rollbacks, for a range
    /// with no commits, and for one too long to walk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_commit_at: Option<i64>,
    /// The verification's checks, once the target is Healthy: each with its counts and the
    /// value its last run saw.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<super::verify::CheckResult>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct Override {
    pub by: String,
    pub reason: String,
    /// The end of the freeze it was given for; a later freeze holds the promotion again.
    #[serde(default)]
    pub until: Option<SystemTime>,
}

impl Override {
    /// Whether this override lets the promotion through `frozen`.
    pub(super) fn covers(&self, frozen: &policy::Frozen) -> bool {
        self.until
            .is_some_and(|until| SystemTime::from(frozen.until) <= until)
    }
}

/// Whether `detail` lets its promotion through the freeze active now, if any: the freeze that
/// holds it, else `None`.
pub(super) fn holding_freeze(env: &Environment, detail: &Detail) -> Option<policy::Frozen> {
    let frozen = policy::active_freeze(&env.freeze_windows, jiff::Timestamp::now())?;
    match &detail.freeze_override {
        Some(given) if given.covers(&frozen) => None,
        _ => Some(frozen),
    }
}

impl Detail {
    pub(super) fn of(record: &PromotionRecord) -> Self {
        record
            .detail
            .clone()
            .and_then(|value| serde_json::from_value(value).ok())
            .unwrap_or_default()
    }

    pub(super) fn to_value(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("the promotion detail serialises to JSON")
    }
}

/// What a promotion waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockerKind {
    /// Approvals are missing.
    Approvals,
    /// A freeze window holds it.
    Freeze,
    /// An older promotion into the same environment goes first.
    Queue,
    /// The source is not Healthy at the promoted revision.
    SourceHealth,
    /// The target is suspended.
    Suspended,
    /// The source runs a revision that failed verification.
    SourceVerification,
}

impl BlockerKind {
    /// The name the API uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Approvals => "approvals",
            Self::Freeze => "freeze",
            Self::Queue => "queue",
            Self::SourceHealth => "source_health",
            Self::Suspended => "suspended",
            Self::SourceVerification => "source_verification",
        }
    }
}

/// One thing a waiting promotion waits for, for people.
#[derive(Debug, Clone, PartialEq)]
pub struct Blocker {
    /// What kind of wait.
    pub kind: BlockerKind,
    /// For people: what is missing, and who or what can end the wait.
    pub message: String,
    /// Approvals: the groups whose members may still approve (empty: anyone authenticated).
    pub groups: Vec<String>,
    /// Freeze: when the window ends.
    pub until: Option<SystemTime>,
    /// Queue: the promotion ahead.
    pub promotion_id: Option<String>,
    /// Source health: the objects that are not Healthy.
    pub objects: Vec<String>,
}

impl Blocker {
    pub(super) fn new(kind: BlockerKind, message: String) -> Self {
        Self {
            kind,
            message,
            groups: Vec::new(),
            until: None,
            promotion_id: None,
            objects: Vec::new(),
        }
    }
}

/// A promotion as the API shows it: what the store holds, and what it waits for now.
#[derive(Debug, Clone)]
pub struct PromotionView {
    /// The promotion as the store holds it.
    pub promotion: PromotionRecord,
    /// Empty in listings.
    pub approvals: Vec<Approval>,
    /// Empty in listings.
    pub transitions: Vec<store::TransitionRecord>,
    /// Approvals still needed; 0 in listings.
    pub approvals_missing: u32,
    /// Empty in listings and once the promotion moves or has ended.
    pub blockers: Vec<Blocker>,
    /// The verification's checks and where each stands; empty before Verifying.
    pub verification: Vec<super::verify::CheckResult>,
}

/// States in which a promotion has not reached Git and can still be approved, rejected,
/// aborted or let through a freeze.
pub(super) fn before_git(state: PromotionState) -> bool {
    matches!(
        state,
        PromotionState::Pending | PromotionState::AwaitingApproval | PromotionState::Approved
    )
}

impl Engine {
    // Each argument is one part of the graph `Service::start` builds.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        pipeline: Arc<Pipeline>,
        repository: git::Repository,
        store: Arc<dyn Store>,
        service: Weak<Service>,
        source: Arc<GitSource>,
        options: reconcile::Options,
        git: git::promote::Options,
        people: Option<Arc<dyn People>>,
        ownership: crate::shard::Ownership,
    ) -> Self {
        let lanes = pipeline
            .environments
            .iter()
            .filter(|env| env.promotes_from.is_some())
            .map(|env| (env.name.clone(), Arc::new(Notify::new())))
            .collect();
        Self {
            pipeline,
            repository,
            store,
            service,
            source,
            options: Arc::new(options),
            git,
            people,
            ownership,
            lanes,
            changes: broadcast::channel(256).0,
            http: super::verify::client(),
            tasks: Mutex::new(Vec::new()),
        }
    }

    /// Starts the lane of every target environment (each resumes the promotions the store
    /// holds open) and the automatic promotions.
    pub(crate) fn start(self: &Arc<Self>) {
        let mut tasks = Vec::new();
        for (target, wake) in &self.lanes {
            let span = tracing::info_span!("promotions", environment = %target);
            tasks.push(tokio::spawn(
                lane::run(Arc::downgrade(self), target.clone(), wake.clone()).instrument(span),
            ));
        }
        for env in &self.pipeline.environments {
            if env.verify.as_ref().is_some_and(|v| v.every.is_some()) {
                let span = tracing::info_span!("reverify", environment = %env.name);
                tasks.push(tokio::spawn(
                    super::verifying::reverify(Arc::downgrade(self), env.name.clone())
                        .instrument(span),
                ));
            }
            if env.promotion.auto {
                let span = tracing::info_span!("auto_promotion", environment = %env.name);
                tasks.push(tokio::spawn(
                    lane::auto_promote(Arc::downgrade(self), env.name.clone()).instrument(span),
                ));
            }
        }
        if let Ok(mut running) = self.tasks.lock() {
            running.extend(tasks);
        }
    }

    /// Stops every lane; promotions stay in the store as they are and resume on the next start.
    pub(crate) fn stop(&self) {
        if let Ok(tasks) = self.tasks.lock() {
            for task in tasks.iter() {
                task.abort();
            }
        }
    }

    /// The store, for a write: only while this replica leads, checked right before the write.
    pub(super) fn writer(&self) -> Result<&dyn Store, Error> {
        self.ownership.lead()?;
        Ok(&*self.store)
    }

    pub(super) fn service(&self) -> Result<Arc<Service>, Error> {
        self.service.upgrade().ok_or(Error::Stopping)
    }

    pub(super) fn environment(&self, name: &str) -> Result<&Environment, UnknownEnvironment> {
        self.pipeline
            .environment(name)
            .ok_or_else(|| UnknownEnvironment {
                environment: name.to_owned(),
                pipeline: self.pipeline.name.clone(),
            })
    }

    pub(super) fn wake(&self, target: &str) {
        if let Some(lane) = self.lanes.get(target) {
            lane.notify_one();
        }
    }

    pub(super) fn changed(&self, id: &str) {
        // Nobody watching is fine.
        let _ = self.changes.send(id.to_owned());
    }

    /// Whether promotions into `env` need approvals, for this kind of promotion.
    pub(super) fn approvals_required(env: &Environment, kind: PromotionKind) -> bool {
        env.approval.required > 0
            && !(kind == PromotionKind::Rollback && env.approval.exempt_rollbacks)
    }

    async fn resolve(&self, revision: &str) -> Result<ObjectId, Error> {
        let repository = self.repository.clone();
        let spec = revision.to_owned();
        tokio::task::spawn_blocking(move || repository.resolve(&spec))
            .await
            .expect("resolving a revision returns errors rather than panicking")
            .map_err(|source| Error::UnknownRevision {
                revision: revision.to_owned(),
                source,
            })
    }

    /// What `change` would commit into `target` now (after a fetch).
    pub(super) async fn candidate(
        &self,
        promotion: git::promote::PromotionCommit,
        ours: Vec<ObjectId>,
    ) -> Result<Candidate, Error> {
        let service = self.service()?;
        if let Err(error) = service.fetch_now().await {
            // The cache may still be good enough to check; the Git step fetches again.
            tracing::warn!(error = %crate::service::describe(&error), "fetch before a promotion check failed");
        }
        let repository = self.repository.clone();
        let pipeline = self.pipeline.clone();
        let options = self.git.clone();
        let target = promotion.target.clone();
        tokio::task::spawn_blocking(move || {
            repository.candidate(&pipeline, &promotion, &options, &ours)
        })
        .await
        .expect("building a candidate returns errors rather than panicking")
        .map_err(|source| Error::Git {
            target,
            source: Box::new(source),
        })
    }

    /// The Git change of a stored promotion.
    pub(super) fn git_promotion(
        record: &PromotionRecord,
        approvals: &[Approval],
    ) -> Result<git::promote::PromotionCommit, Error> {
        let commit =
            ObjectId::from_hex(record.revision.as_bytes()).map_err(|_| Error::StoredRevision {
                id: record.id.clone(),
                revision: record.revision.clone(),
            })?;
        let change = match (&record.kind, &record.source_environment) {
            (PromotionKind::Promotion, Some(source)) => git::promote::Change::Promote {
                source: source.clone(),
                commit,
            },
            _ => git::promote::Change::Rollback { commit },
        };
        Ok(git::promote::PromotionCommit {
            id: record.id.clone(),
            target: record.target_environment.clone(),
            change,
            requested_by: record.requested_by.clone(),
            approved_by: approvals.iter().map(|a| a.approver.clone()).collect(),
        })
    }

    /// Asks to promote `revision` of the target's source (default: what the source runs now).
    pub async fn request(
        &self,
        actor: &Actor,
        target: &str,
        revision: Option<&str>,
        reason: &str,
        rerun: bool,
    ) -> Result<PromotionView, Error> {
        self.ownership.lead()?;
        let service = self.service()?;
        let target_env = self.environment(target)?.clone();
        let source_name = target_env
            .promotes_from
            .clone()
            .ok_or_else(|| Error::NoSource {
                environment: target.to_owned(),
            })?;
        let source_view = service.environment(&source_name)?;
        let running = source_view
            .status
            .applied_revision
            .as_deref()
            .and_then(|r| ObjectId::from_hex(r.as_bytes()).ok());
        let revision = match revision.filter(|r| !r.is_empty()) {
            Some(named) => self.resolve(named).await?,
            None => running.ok_or_else(|| Error::NothingApplied {
                source_env: source_name.clone(),
            })?,
        };
        // Only what the source environment's history holds moves, whatever the checks below.
        let entry = self.in_history(&source_name, revision).await?;
        let runs = match running {
            Some(running) => self
                .revision_of(&source_name, running)
                .await?
                .is_some_and(|now| now.commit == entry.commit),
            None => false,
        };
        let revision = revision.to_string();
        checks::source_ready(&target_env, &source_view, &revision, runs, &*self.store).await?;
        if let Some(blocker) = super::verifying::source_verification(self, &source_name).await? {
            return Err(Error::SourceVerificationFailed {
                message: blocker.message,
            });
        }
        let id = store::new_promotion_id();
        let record = PromotionRecord {
            id: id.clone(),
            kind: PromotionKind::Promotion,
            source_environment: Some(source_name.clone()),
            target_environment: target.to_owned(),
            revision: revision.clone(),
            rerun,
            requested_by: actor.name.clone(),
            reason: reason.to_owned(),
            state: PromotionState::Pending,
            message: String::new(),
            commit: None,
            detail: None,
            created_at: SystemTime::now(),
            updated_at: SystemTime::now(),
            version: 0,
        };
        let candidate = self
            .candidate(Self::git_promotion(&record, &[])?, Vec::new())
            .await?;
        if matches!(candidate, Candidate::NoChange { .. }) && !rerun {
            return Err(Error::AlreadyRuns {
                target: target.to_owned(),
                revision,
            });
        }
        let (authors, first_commit_at) = self.authors(&source_name, &target_env, &revision).await?;
        self.create(
            record,
            Detail {
                authors,
                requester_email: actor.email.clone(),
                first_commit_at,
                ..Detail::default()
            },
        )
        .await
    }

    /// Where `commit` stands in `environment`'s history, if it is part of it.
    async fn revision_of(
        &self,
        environment: &str,
        commit: ObjectId,
    ) -> Result<Option<git::history::Entry>, Error> {
        let repository = self.repository.clone();
        let pipeline = self.pipeline.clone();
        let environment = environment.to_owned();
        tokio::task::spawn_blocking(move || {
            repository.revision_of(&pipeline, &environment, commit, HISTORY_LIMIT)
        })
        .await
        .expect("reading history returns errors rather than panicking")
        .map_err(Error::Repository)
    }

    /// The revision of `environment`'s history whose files `commit` holds; refused when
    /// `commit` is not on that history (another branch, a candidate commit, a commit older
    /// than the environment).
    async fn in_history(
        &self,
        environment: &str,
        commit: ObjectId,
    ) -> Result<git::history::Entry, Error> {
        self.revision_of(environment, commit)
            .await?
            .ok_or_else(|| Error::OutsideHistory {
                environment: environment.to_owned(),
                revision: commit.to_string(),
                why: "only a revision the environment's own branch holds can be promoted or \
                      restored; a commit of another branch, a preview or candidate commit, or \
                      one from before the environment existed is refused",
            })
    }

    /// Restores `revision` of `environment`'s own history, through the same gates; holds the
    /// environment's automatic promotion so that it does not undo the rollback.
    pub async fn rollback(
        &self,
        actor: &Actor,
        environment: &str,
        revision: &str,
        reason: &str,
    ) -> Result<PromotionView, Error> {
        self.ownership.lead()?;
        let env = self.environment(environment)?.clone();
        let resolved = self.resolve(revision).await?;
        let entry = self.in_history(environment, resolved).await?;
        let commit = resolved.to_string();
        let authors = self.restored_authors(&env, &entry).await?;
        let record = PromotionRecord {
            id: store::new_promotion_id(),
            kind: PromotionKind::Rollback,
            source_environment: None,
            target_environment: environment.to_owned(),
            revision: commit.clone(),
            rerun: false,
            requested_by: actor.name.clone(),
            reason: reason.to_owned(),
            state: PromotionState::Pending,
            message: String::new(),
            commit: None,
            detail: None,
            created_at: SystemTime::now(),
            updated_at: SystemTime::now(),
            version: 0,
        };
        let candidate = self
            .candidate(Self::git_promotion(&record, &[])?, Vec::new())
            .await?;
        if matches!(candidate, Candidate::NoChange { .. }) {
            return Err(Error::AlreadyRuns {
                target: environment.to_owned(),
                revision: commit,
            });
        }
        if env.promotion.auto {
            let why = format!("rolled back to {commit} by {}", actor.name);
            self.writer()?
                .set_auto_promotion_hold(
                    environment,
                    Some(store::Hold {
                        reason: why.clone(),
                        by: actor.name.clone(),
                        at: SystemTime::now(),
                    }),
                    audit(
                        actor,
                        AuditAction::AutoPromotionHeld,
                        environment,
                        None,
                        Some(&commit),
                        &why,
                    ),
                )
                .await?;
        }
        self.create(
            record,
            Detail {
                authors,
                requester_email: actor.email.clone(),
                ..Detail::default()
            },
        )
        .await
    }

    /// Lets automatic promotion into `environment` go on after a rollback held it.
    pub async fn resume_auto_promotion(
        &self,
        actor: &Actor,
        environment: &str,
    ) -> Result<(), Error> {
        self.ownership.lead()?;
        self.environment(environment)?;
        self.writer()?
            .set_auto_promotion_hold(
                environment,
                None,
                audit(
                    actor,
                    AuditAction::AutoPromotionResumed,
                    environment,
                    None,
                    None,
                    "automatic promotion resumed",
                ),
            )
            .await?;
        self.wake(environment);
        Ok(())
    }

    async fn create(
        &self,
        record: PromotionRecord,
        detail: Detail,
    ) -> Result<PromotionView, Error> {
        let target = record.target_environment.clone();
        let env = self.environment(&target)?;
        let superseded = if env.promotion.supersede {
            self.open(&target).await?
        } else {
            Vec::new()
        };
        let created = self
            .writer()?
            .create_promotion(NewPromotion {
                id: record.id.clone(),
                kind: record.kind,
                source_environment: record.source_environment.clone(),
                target_environment: target.clone(),
                revision: record.revision.clone(),
                rerun: record.rerun,
                requested_by: record.requested_by.clone(),
                reason: record.reason.clone(),
                state: PromotionState::Pending,
                at: SystemTime::now(),
                detail: Some(detail.to_value()),
            })
            .await?;
        for older in superseded.iter().filter(|p| before_git(p.state)) {
            let why = format!("superseded by promotion {}", created.id);
            let outcome = self
                .writer()?
                .transition(Transition {
                    promotion_id: older.id.clone(),
                    from: older.state,
                    from_version: Some(older.version),
                    to: PromotionState::Aborted,
                    actor: created.requested_by.clone(),
                    reason: why,
                    at: SystemTime::now(),
                    commit: None,
                    detail: older.detail.clone(),
                    audit: Some(AuditAction::Superseded),
                })
                .await?;
            if matches!(outcome, TransitionOutcome::Applied(_)) {
                self.changed(&older.id);
            }
        }
        tracing::info!(promotion = %created.id, target = %target, revision = %created.revision, by = %created.requested_by, "promotion requested");
        self.changed(&created.id);
        self.wake(&target);
        self.get(&created.id).await
    }

    /// Who wrote what promoting `revision` of `source` into `target` brings, and when the
    /// oldest of it was committed: the commits since the source revision of the target's last
    /// promotion that Stagehand itself landed (the store, not trailers anyone can push), that
    /// changed what moves: the source's directory in the overlay model, the whole tree in the
    /// branch model. A commit that is a promotion Stagehand landed into the source stands for
    /// the authors and first commit time it recorded, which come from further up the
    /// pipeline. No time when the range has no commits or is too long to walk. With
    /// `requireSignedCommits`, every commit of that range must carry a good SSH signature by a
    /// key of the target's allowed signers, else the promotion is refused naming them; a signed
    /// commit is credited to its signer.
    async fn authors(
        &self,
        source: &str,
        target: &Environment,
        revision: &str,
    ) -> Result<(Vec<String>, Option<i64>), Error> {
        let to = ObjectId::from_hex(revision.as_bytes()).map_err(|_| Error::StoredRevision {
            id: String::new(),
            revision: revision.to_owned(),
        })?;
        let since = self.last_promoted(source, &target.name).await?;
        let path = match target.source {
            crate::pipeline::Source::Overlay { .. } => {
                Some(git::Location::of(&self.pipeline, source).map_err(Error::Repository)?)
            }
            crate::pipeline::Source::Branch { .. } => None,
        };
        let signers = match &target.require_signed_commits {
            None => None,
            Some(rule) => Some(self.allowed_signers(target, rule).await?),
        };
        let repository = self.repository.clone();
        let found = tokio::task::spawn_blocking(move || {
            repository.authored(to, since, path.as_ref(), AUTHORS_LIMIT, signers.as_ref())
        })
        .await
        .expect("reading authors returns errors rather than panicking");
        let authored = match found {
            Ok(authored) => authored,
            // Signatures cannot be checked on a range that is not read whole.
            Err(git::history::AuthorsError::TooLong(source))
                if target.require_signed_commits.is_some() =>
            {
                return Err(Error::AuthorsUnknown {
                    environment: target.name.clone(),
                    source,
                });
            }
            Err(error) => {
                return self
                    .authors_or_refuse(target, Err(error))
                    .map(|authors| (authors, None));
            }
        };
        let unsigned: Vec<String> = authored
            .iter()
            .filter_map(|commit| {
                let verdict = commit.signature.as_ref()?;
                (!verdict.is_good()).then(|| {
                    format!(
                        "{} {:?}: {verdict}",
                        &commit.commit.to_string()[..12],
                        commit.summary
                    )
                })
            })
            .collect();
        if !unsigned.is_empty() {
            return Err(Error::UnsignedCommits {
                environment: target.name.clone(),
                commits: unsigned,
            });
        }
        let mut authors: Vec<String> = Vec::new();
        let mut first_commit_at: Option<i64> = None;
        for commit in &authored {
            let own_time = commit.time.saturating_mul(1000);
            let (people, time) = match self
                .landed(source, commit.commit, commit.promotion.as_deref())
                .await?
            {
                // A promotion recorded before first commit times were kept counts from its
                // own commit: later than the change began, but never earlier.
                Some(landed) => {
                    let detail = Detail::of(&landed);
                    (detail.authors, detail.first_commit_at.unwrap_or(own_time))
                }
                None => (commit.people.clone(), own_time),
            };
            for email in people {
                if !authors.contains(&email) {
                    authors.push(email);
                }
            }
            first_commit_at = Some(first_commit_at.map_or(time, |first| first.min(time)));
        }
        Ok((authors, first_commit_at))
    }

    /// The allowed signers of `target` as they are now: its file read, or its Secret read
    /// through the API.
    async fn allowed_signers(
        &self,
        target: &Environment,
        rule: &crate::pipeline::SignedCommits,
    ) -> Result<git::allowed_signers::AllowedSigners, Error> {
        use git::allowed_signers::{AllowedSigners, Error as SignersError};
        let loaded = match &rule.allowed_signers {
            crate::pipeline::AllowedSignersSource::File(file) => {
                let file = file.clone();
                tokio::task::spawn_blocking(move || AllowedSigners::load(&file))
                    .await
                    .expect("reading the allowed signers returns errors rather than panicking")
            }
            crate::pipeline::AllowedSignersSource::Secret { name, key } => {
                match self.options.connections.secret_entry(name, key).await {
                    Ok((secret, bytes)) => {
                        AllowedSigners::parse(format!("Secret {secret} entry {key}"), &bytes)
                    }
                    Err(error) => Err(SignersError::Unavailable {
                        origin: format!("Secret {name} entry {key}"),
                        problem: crate::service::describe(&error),
                    }),
                }
            }
        };
        loaded.map_err(|source| Error::AllowedSigners {
            environment: target.name.clone(),
            source,
        })
    }

    /// Checks again, right before the Git step, that what a promotion brings is signed as its
    /// target requires (the allowed signers may have changed since the request).
    pub(super) async fn check_signatures(&self, record: &PromotionRecord) -> Result<(), Error> {
        let target = self.environment(&record.target_environment)?;
        let (Some(source), Some(_)) = (&record.source_environment, &target.require_signed_commits)
        else {
            return Ok(());
        };
        if record.kind != PromotionKind::Promotion {
            return Ok(());
        }
        self.authors(source, target, &record.revision).await?;
        Ok(())
    }

    /// The authors found, or why the promotion is refused when the author rule needs them.
    fn authors_or_refuse(
        &self,
        target: &Environment,
        found: Result<Vec<String>, git::history::AuthorsError>,
    ) -> Result<Vec<String>, Error> {
        match found {
            Ok(authors) => Ok(authors),
            Err(git::history::AuthorsError::Read(error)) => Err(Error::Repository(error)),
            Err(git::history::AuthorsError::TooLong(source)) => {
                if target.approval.allow_author_approval {
                    tracing::info!(environment = %target.name, error = %source, "authors not recorded; the author rule does not apply here");
                    Ok(Vec::new())
                } else {
                    Err(Error::AuthorsUnknown {
                        environment: target.name.clone(),
                        source,
                    })
                }
            }
        }
    }

    /// The source revision of the newest promotion from `source` into `target` that landed.
    async fn last_promoted(&self, source: &str, target: &str) -> Result<Option<ObjectId>, Error> {
        let mut filter = PromotionFilter {
            environment: Some(target.to_owned()),
            states: vec![PromotionState::Succeeded],
            limit: store::MAX_PAGE_SIZE,
            ..PromotionFilter::default()
        };
        loop {
            let page = self.store.promotions(&filter).await?;
            let found = page.items.iter().find(|p| {
                p.kind == PromotionKind::Promotion
                    && p.source_environment.as_deref() == Some(source)
            });
            if let Some(found) = found {
                return Ok(ObjectId::from_hex(found.revision.as_bytes()).ok());
            }
            match page.next_page_token {
                Some(token) => filter.page_token = Some(token),
                None => return Ok(None),
            }
        }
    }

    /// Who wrote the files a rollback to `entry` restores: walking the environment's history
    /// back from it, the people of each commit that changed its directory, up to a promotion
    /// Stagehand landed, whose recorded authors stand for what came before.
    async fn restored_authors(
        &self,
        env: &Environment,
        entry: &git::history::Entry,
    ) -> Result<Vec<String>, Error> {
        let repository = self.repository.clone();
        let pipeline = self.pipeline.clone();
        let name = env.name.clone();
        let from = entry.commit;
        let walked = tokio::task::spawn_blocking(move || {
            let history = repository.history(&pipeline, &name, HISTORY_LIMIT)?;
            // The walk has a bound: the history is whole only if its oldest revision is the one
            // that created the environment's directory.
            let complete = match history.last() {
                Some(oldest) => repository.creates(&pipeline, &name, oldest.commit)?,
                None => true,
            };
            let mut revisions = Vec::new();
            for entry in history.into_iter().skip_while(|e| e.commit != from) {
                let people = repository.people(entry.commit)?;
                revisions.push((entry, people));
            }
            Ok((revisions, complete))
        })
        .await
        .expect("reading history returns errors rather than panicking")
        .map_err(Error::Repository)?;
        let (revisions, complete) = walked;
        let mut authors: Vec<String> = Vec::new();
        let mut add = |email: &String| {
            if !authors.contains(email) {
                authors.push(email.clone());
            }
        };
        for (entry, people) in &revisions {
            if let Some(landed) = self
                .landed(&env.name, entry.commit, entry.trailers.promotion.as_deref())
                .await?
            {
                Detail::of(&landed).authors.iter().for_each(&mut add);
                return Ok(authors);
            }
            people.iter().for_each(&mut add);
        }
        if complete {
            return Ok(authors);
        }
        self.authors_or_refuse(
            env,
            Err(git::history::RangeTooLong {
                to: entry.commit,
                since: None,
                limit: HISTORY_LIMIT,
            }
            .into()),
        )
    }

    /// The promotion `id` (a commit's trailer) if the store holds it as having landed as
    /// `commit` into `environment`.
    async fn landed(
        &self,
        environment: &str,
        commit: ObjectId,
        id: Option<&str>,
    ) -> Result<Option<PromotionRecord>, Error> {
        let Some(id) = id else {
            return Ok(None);
        };
        let commit = commit.to_string();
        Ok(self.store.promotion(id).await?.and_then(|detail| {
            (detail.promotion.target_environment == environment
                && detail.promotion.commit.as_deref() == Some(commit.as_str()))
            .then_some(detail.promotion)
        }))
    }

    /// The open promotions into `target`, oldest first: the queue.
    pub(super) async fn open(&self, target: &str) -> Result<Vec<PromotionRecord>, Error> {
        let mut open = Vec::new();
        let mut filter = PromotionFilter {
            environment: Some(target.to_owned()),
            states: PromotionState::ALL
                .into_iter()
                .filter(|s| !s.is_terminal())
                .collect(),
            limit: store::MAX_PAGE_SIZE,
            ..PromotionFilter::default()
        };
        loop {
            let page = self.store.promotions(&filter).await?;
            open.extend(page.items);
            match page.next_page_token {
                Some(token) => filter.page_token = Some(token),
                None => break,
            }
        }
        open.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(open)
    }

    async fn detail(&self, id: &str) -> Result<PromotionDetail, Error> {
        self.store
            .promotion(id)
            .await?
            .ok_or_else(|| Error::NotFound { id: id.to_owned() })
    }

    /// One promotion, with its approvals, transitions and what it waits for.
    pub async fn get(&self, id: &str) -> Result<PromotionView, Error> {
        let detail = self.detail(id).await?;
        let env = self.environment(&detail.promotion.target_environment)?;
        let progress = self.progress(env, &detail.promotion, &detail.approvals);
        let missing = if Self::approvals_required(env, detail.promotion.kind)
            && !detail.promotion.state.is_terminal()
        {
            progress.missing
        } else {
            0
        };
        let blockers = if detail.promotion.state.is_terminal() {
            Vec::new()
        } else {
            self.blockers(&detail, &progress, missing).await?
        };
        let verification = Detail::of(&detail.promotion).checks;
        Ok(PromotionView {
            promotion: detail.promotion,
            approvals: detail.approvals,
            transitions: detail.transitions,
            approvals_missing: missing,
            blockers,
            verification,
        })
    }

    /// Promotions, newest first, one page at a time (without approvals, transitions and
    /// blockers: [`Engine::get`] has them).
    pub async fn list(&self, filter: &PromotionFilter) -> Result<Page<PromotionView>, Error> {
        let page = self.store.promotions(filter).await?;
        Ok(Page {
            items: page
                .items
                .into_iter()
                .map(|promotion| PromotionView {
                    verification: Detail::of(&promotion).checks,
                    promotion,
                    approvals: Vec::new(),
                    transitions: Vec::new(),
                    approvals_missing: 0,
                    blockers: Vec::new(),
                })
                .collect(),
            next_page_token: page.next_page_token,
        })
    }

    /// Audit events, newest first.
    pub async fn audit_events(
        &self,
        filter: &store::AuditFilter,
    ) -> Result<Page<store::AuditEvent>, Error> {
        Ok(self.store.audit_events(filter).await?)
    }

    /// The delivery metrics of `environments` (each must be the pipeline's) over `[since,
    /// until)`, from the store alone; any replica answers them.
    pub async fn delivery_metrics(
        &self,
        environments: Vec<String>,
        since: SystemTime,
        until: SystemTime,
    ) -> Result<Vec<store::DeliveryMetrics>, Error> {
        for environment in &environments {
            self.environment(environment)?;
        }
        let query = store::DeliveryQuery {
            environments,
            since,
            until,
        };
        Ok(self.store.delivery_metrics(&query).await?)
    }

    /// The ids of promotions as they change.
    pub fn changes(&self) -> broadcast::Receiver<String> {
        self.changes.subscribe()
    }

    /// Where `promotion` stands with `approvals` under the policy of `env` as it is now: each
    /// approver with the groups and e-mail the tokens file gives them today (an identity that
    /// is gone counts for nothing).
    pub(super) fn progress(
        &self,
        env: &Environment,
        promotion: &PromotionRecord,
        approvals: &[Approval],
    ) -> policy::Progress {
        let own = Detail::of(promotion);
        let current: Vec<Approval> = match &self.people {
            None => approvals.to_vec(),
            Some(people) => approvals
                .iter()
                .filter_map(|approval| {
                    let person = people.person(&approval.approver)?;
                    Some(Approval {
                        email: person.email,
                        groups: person.groups,
                        ..approval.clone()
                    })
                })
                .collect(),
        };
        policy::approval_progress(
            &env.approval,
            &current,
            &policy::Requester {
                name: &promotion.requested_by,
                email: &own.requester_email,
            },
            &own.authors,
        )
    }

    /// Everything a promotion that has not ended waits for now.
    async fn blockers(
        &self,
        detail: &PromotionDetail,
        progress: &policy::Progress,
        missing: u32,
    ) -> Result<Vec<Blocker>, Error> {
        let promotion = &detail.promotion;
        let env = self.environment(&promotion.target_environment)?;
        let own = Detail::of(promotion);
        let mut blockers = Vec::new();
        let service = self.service()?;
        let target = service.environment(&promotion.target_environment)?;
        if target.status.suspended {
            blockers.push(Blocker::new(
                BlockerKind::Suspended,
                format!(
                    "environment {:?} is suspended; it goes on once the environment is resumed",
                    promotion.target_environment
                ),
            ));
        }
        if !before_git(promotion.state) {
            return Ok(blockers);
        }
        if missing > 0 {
            let who = if progress.groups.is_empty() {
                "any authenticated identity".to_owned()
            } else {
                format!("members of {}", progress.groups.join(", "))
            };
            let mut message = format!("needs {missing} more approval(s) from {who}");
            if !env.approval.allow_self_approval {
                message.push_str(&format!(", not {}", promotion.requested_by));
            }
            if !env.approval.allow_author_approval && !own.authors.is_empty() {
                message.push_str(&format!(
                    ", nor the authors of the promoted commits ({})",
                    own.authors.join(", ")
                ));
            }
            let mut blocker = Blocker::new(BlockerKind::Approvals, message);
            blocker.groups = progress.groups.clone();
            blockers.push(blocker);
        }
        if let Some(frozen) = holding_freeze(env, &own) {
            let until = Some(SystemTime::from(frozen.until));
            let mut blocker = Blocker::new(
                BlockerKind::Freeze,
                format!(
                    "held by the freeze window {}.freezeWindows[{}]{} until {}; an identity with the override permission may let it through",
                    promotion.target_environment,
                    frozen.window,
                    frozen
                        .reason
                        .as_deref()
                        .map(|r| format!(" ({r})"))
                        .unwrap_or_default(),
                    frozen.until
                ),
            );
            blocker.until = until;
            blockers.push(blocker);
        }
        let open = self.open(&promotion.target_environment).await?;
        if let Some(ahead) = open.iter().take_while(|p| p.id != promotion.id).last() {
            let mut blocker = Blocker::new(
                BlockerKind::Queue,
                format!(
                    "queued behind promotion {} ({}) into {}",
                    ahead.id, ahead.state, ahead.target_environment
                ),
            );
            blocker.promotion_id = Some(ahead.id.clone());
            blockers.push(blocker);
        }
        if let Some(blocker) = self.source_blocker(promotion, env)? {
            blockers.push(blocker);
        }
        if let Some(blocker) = self.verification_blocker(promotion).await? {
            blockers.push(blocker);
        }
        Ok(blockers)
    }

    /// The source's unhealthy objects, when policy wants the source Healthy and it still runs
    /// the promoted revision.
    pub(super) fn source_blocker(
        &self,
        promotion: &PromotionRecord,
        env: &Environment,
    ) -> Result<Option<Blocker>, Error> {
        let Some(source) = &promotion.source_environment else {
            return Ok(None);
        };
        if !env.promotion.require_healthy {
            return Ok(None);
        }
        let view = self.service()?.environment(source)?;
        if view.status.applied_revision.as_deref() != Some(promotion.revision.as_str()) {
            return Ok(None);
        }
        let objects = checks::unhealthy_objects(&view);
        if objects.is_empty() {
            return Ok(None);
        }
        let mut blocker = Blocker::new(
            BlockerKind::SourceHealth,
            format!(
                "environment {source:?} is not Healthy at {}: {}",
                promotion.revision,
                objects.join(", ")
            ),
        );
        blocker.objects = objects;
        Ok(Some(blocker))
    }

    /// The source's failed verification, for a promotion out of it.
    pub(super) async fn verification_blocker(
        &self,
        promotion: &PromotionRecord,
    ) -> Result<Option<Blocker>, Error> {
        match (&promotion.source_environment, promotion.kind) {
            (Some(source), PromotionKind::Promotion) => {
                super::verifying::source_verification(self, source).await
            }
            _ => Ok(None),
        }
    }

    /// The commit of the entry of `environment`'s history that `commit` holds, if any.
    pub(super) async fn history_entry(
        &self,
        environment: &str,
        commit: ObjectId,
    ) -> Result<Option<ObjectId>, Error> {
        Ok(self
            .revision_of(environment, commit)
            .await?
            .map(|entry| entry.commit))
    }

    /// Approves a promotion for `actor`; the same identity twice counts once.
    pub async fn approve(
        &self,
        actor: &Actor,
        id: &str,
        comment: &str,
    ) -> Result<PromotionView, Error> {
        self.ownership.lead()?;
        let detail = self.not_in_git(id, "approve").await?;
        let promotion = &detail.promotion;
        let env = self.environment(&promotion.target_environment)?;
        let own = Detail::of(promotion);
        let allowed = policy::may_approve(
            &env.approval,
            &policy::Approver {
                name: &actor.name,
                email: &actor.email,
                groups: &actor.groups,
            },
            &policy::Requester {
                name: &promotion.requested_by,
                email: &own.requester_email,
            },
            &own.authors,
        );
        if let Err(refusal) = allowed {
            self.writer()?
                .append_audit(audit(
                    actor,
                    AuditAction::ApprovalRefused,
                    &promotion.target_environment,
                    Some(id),
                    Some(&promotion.revision),
                    &refusal.to_string(),
                ))
                .await?;
            return Err(Error::Refused {
                id: id.to_owned(),
                refusal,
            });
        }
        let outcome = self
            .writer()?
            .add_approval(
                id,
                Approval {
                    approver: actor.name.clone(),
                    email: actor.email.clone(),
                    groups: actor.groups.clone(),
                    at: SystemTime::now(),
                    comment: comment.to_owned(),
                },
            )
            .await?;
        match outcome {
            ApprovalOutcome::NotFound => return Err(Error::NotFound { id: id.to_owned() }),
            ApprovalOutcome::Closed { state } => {
                return Err(Error::WrongState {
                    id: id.to_owned(),
                    state,
                    action: "approve",
                });
            }
            ApprovalOutcome::AlreadyApproved | ApprovalOutcome::Recorded => {}
        }
        tracing::info!(promotion = %id, by = %actor.name, "approved");
        self.changed(id);
        self.wake(&promotion.target_environment);
        self.get(id).await
    }

    /// Records that `actor` asked to act on promotion `id` and was refused, saying `why`.
    pub async fn refused(
        &self,
        actor: &Actor,
        id: &str,
        action: AuditAction,
        why: &str,
    ) -> Result<(), Error> {
        let promotion = self.detail(id).await?.promotion;
        self.writer()?
            .append_audit(audit(
                actor,
                action,
                &promotion.target_environment,
                Some(id),
                Some(&promotion.revision),
                why,
            ))
            .await?;
        Ok(())
    }

    /// Ends a promotion that has not reached Git: `Rejected` (an approver said no) or
    /// `Aborted` (someone withdrew it).
    pub async fn end(
        &self,
        actor: &Actor,
        id: &str,
        reason: &str,
        rejected: bool,
    ) -> Result<PromotionView, Error> {
        self.ownership.lead()?;
        let (to, action, verb) = if rejected {
            (PromotionState::Rejected, AuditAction::Rejected, "reject")
        } else {
            (PromotionState::Aborted, AuditAction::Aborted, "abort")
        };
        let detail = self.not_in_git(id, verb).await?;
        let promotion = &detail.promotion;
        let reason = if reason.is_empty() {
            format!("{verb}ed by {}", actor.name)
        } else {
            reason.to_owned()
        };
        self.move_by(
            promotion,
            to,
            &actor.name,
            &reason,
            None,
            None,
            Some(action),
        )
        .await?;
        self.get(id).await
    }

    /// Lets a promotion held by a freeze window go ahead; audited as an override.
    pub async fn override_freeze(
        &self,
        actor: &Actor,
        id: &str,
        reason: &str,
    ) -> Result<PromotionView, Error> {
        self.ownership.lead()?;
        // The lane may move the promotion between our read and our write; the override is
        // written onto the state the promotion is in then, as long as Git is not yet touched.
        loop {
            let detail = self.not_in_git(id, "override the freeze of").await?;
            let promotion = &detail.promotion;
            let env = self.environment(&promotion.target_environment)?;
            let Some(frozen) = policy::active_freeze(&env.freeze_windows, jiff::Timestamp::now())
            else {
                self.writer()?
                    .append_audit(audit(
                        actor,
                        AuditAction::OverrideRefused,
                        &promotion.target_environment,
                        Some(id),
                        Some(&promotion.revision),
                        &format!("no freeze window holds it: {reason}"),
                    ))
                    .await?;
                return Err(Error::NotFrozen { id: id.to_owned() });
            };
            let mut own = Detail::of(promotion);
            own.freeze_override = Some(Override {
                by: actor.name.clone(),
                reason: reason.to_owned(),
                until: Some(SystemTime::from(frozen.until)),
            });
            let why = format!("freeze window overridden by {}: {reason}", actor.name);
            match self
                .move_by(
                    promotion,
                    promotion.state,
                    &actor.name,
                    &why,
                    Some(&own),
                    None,
                    Some(AuditAction::Overrode),
                )
                .await
            {
                Ok(_) => return self.get(id).await,
                Err(Error::WrongState { state, .. }) if before_git(state) => continue,
                Err(error) => return Err(error),
            }
        }
    }

    /// The promotion `id` if it has not reached Git yet, when `action` is still possible.
    async fn not_in_git(&self, id: &str, action: &'static str) -> Result<PromotionDetail, Error> {
        let detail = self.detail(id).await?;
        if !before_git(detail.promotion.state) {
            return Err(Error::WrongState {
                id: id.to_owned(),
                state: detail.promotion.state,
                action,
            });
        }
        Ok(detail)
    }

    /// Moves `promotion` from the state it was read in to `to`, written before it takes
    /// effect; a promotion that moved meanwhile is refused as being in the wrong state.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn move_by(
        &self,
        promotion: &PromotionRecord,
        to: PromotionState,
        actor: &str,
        reason: &str,
        detail: Option<&Detail>,
        commit: Option<String>,
        audit: Option<AuditAction>,
    ) -> Result<PromotionRecord, Error> {
        let outcome = self
            .writer()?
            .transition(Transition {
                promotion_id: promotion.id.clone(),
                from: promotion.state,
                from_version: Some(promotion.version),
                to,
                actor: actor.to_owned(),
                reason: reason.to_owned(),
                at: SystemTime::now(),
                commit,
                detail: Some(
                    detail
                        .cloned()
                        .unwrap_or_else(|| Detail::of(promotion))
                        .to_value(),
                ),
                audit,
            })
            .await?;
        match outcome {
            TransitionOutcome::Applied(record) => {
                tracing::info!(promotion = %promotion.id, from = %promotion.state, to = %to, %reason, "promotion moved");
                self.changed(&promotion.id);
                self.wake(&promotion.target_environment);
                Ok(*record)
            }
            TransitionOutcome::Conflict { current } => Err(Error::WrongState {
                id: promotion.id.clone(),
                state: current,
                action: "move",
            }),
            TransitionOutcome::NotFound => Err(Error::NotFound {
                id: promotion.id.clone(),
            }),
        }
    }

    /// The target rendered at the candidate commit, compared with the live target by a
    /// server-side dry run.
    pub async fn preview(
        &self,
        target: &str,
        revision: Option<&str>,
    ) -> Result<(String, Option<ObjectId>, Plan), Error> {
        let service = self.service()?;
        let env = self.environment(target)?.clone();
        let source = env.promotes_from.clone().ok_or_else(|| Error::NoSource {
            environment: target.to_owned(),
        })?;
        let revision = match revision.filter(|r| !r.is_empty()) {
            Some(revision) => self.resolve(revision).await?.to_string(),
            None => service
                .environment(&source)?
                .status
                .applied_revision
                .ok_or_else(|| Error::NothingApplied {
                    source_env: source.clone(),
                })?,
        };
        let record = PromotionRecord {
            id: format!("preview-{}", store::new_promotion_id()),
            kind: PromotionKind::Promotion,
            source_environment: Some(source),
            target_environment: target.to_owned(),
            revision: revision.clone(),
            rerun: true,
            requested_by: "preview".to_owned(),
            reason: String::new(),
            state: PromotionState::Pending,
            message: String::new(),
            commit: None,
            detail: None,
            created_at: SystemTime::now(),
            updated_at: SystemTime::now(),
            version: 0,
        };
        let candidate = self
            .candidate(Self::git_promotion(&record, &[])?, Vec::new())
            .await?;
        let new_commit = match candidate {
            Candidate::Change { commit, .. } => Some(commit),
            _ => None,
        };
        let mut planner = reconcile::Reconciler::new(
            env,
            Arc::new(reconcile::source::AtCommit {
                source: self.source.clone(),
                commit: candidate.commit(),
            }),
            self.options.clone(),
            broadcast::channel(1).0,
        );
        let plan = planner.plan().await.map_err(|source| Error::Check {
            target: target.to_owned(),
            source: Box::new(source),
        })?;
        Ok((revision, new_commit, plan))
    }
}

fn audit(
    actor: &Actor,
    action: AuditAction,
    environment: &str,
    promotion: Option<&str>,
    revision: Option<&str>,
    reason: &str,
) -> store::NewAuditEvent {
    store::NewAuditEvent {
        at: SystemTime::now(),
        actor: actor.name.clone(),
        action,
        environment: Some(environment.to_owned()),
        promotion_id: promotion.map(str::to_owned),
        revision: revision.map(str::to_owned),
        reason: reason.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::Override;
    use crate::promotion::policy::Frozen;

    fn frozen(until: SystemTime) -> Frozen {
        Frozen {
            window: 0,
            until: jiff::Timestamp::try_from(until).expect("a representable time"),
            reason: None,
        }
    }

    #[test]
    fn the_first_commit_time_is_stored_under_the_key_delivery_metrics_read() {
        let detail = super::Detail {
            first_commit_at: Some(1_700_000_000_000),
            ..super::Detail::default()
        };
        assert_eq!(
            detail.to_value()[crate::store::FIRST_COMMIT_AT],
            serde_json::json!(1_700_000_000_000i64)
        );
        // Unknown stays absent rather than null, as in promotions stored before it existed.
        let value = super::Detail::default().to_value();
        assert!(
            value.get(crate::store::FIRST_COMMIT_AT).is_none(),
            "{value}"
        );
    }

    #[test]
    fn an_override_covers_only_the_freeze_it_was_given_for() {
        let end = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let given = Override {
            by: "morgan".into(),
            reason: "hotfix".into(),
            until: Some(end),
        };
        assert!(given.covers(&frozen(end)));
        assert!(given.covers(&frozen(end - Duration::from_secs(60))));
        // Next week's window, or the same one extended, holds the promotion again.
        assert!(!given.covers(&frozen(end + Duration::from_secs(7 * 24 * 3600))));
        // An override stored before overrides named their freeze covers none.
        let old = Override {
            until: None,
            ..given
        };
        assert!(!old.covers(&frozen(end)));
    }
}
