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

use super::{Actor, Error, checks, lane, policy};
use crate::git::{self, promote::Candidate};
use crate::pipeline::{Environment, Pipeline};
use crate::reconcile::{self, Plan, source::GitSource};
use crate::service::{Service, UnknownEnvironment};
use crate::store::{
    self, Approval, ApprovalOutcome, AuditAction, NewPromotion, Page, PromotionDetail,
    PromotionFilter, PromotionKind, PromotionRecord, PromotionState, Store, Transition,
    TransitionOutcome,
};

/// How many commits are searched for the authors of a promoted range.
const AUTHORS_LIMIT: usize = 1000;
/// How far back the target's history is searched for its last promotion.
const HISTORY_LIMIT: usize = 1000;

/// The promotion engine of one pipeline; part of the running [`Service`].
pub struct Engine {
    pub(super) pipeline: Arc<Pipeline>,
    pub(super) repository: git::Repository,
    pub(super) store: Arc<dyn Store>,
    pub(super) service: Weak<Service>,
    pub(super) source: Arc<GitSource>,
    pub(super) options: Arc<reconcile::Options>,
    pub(super) git: git::promote::Options,
    /// One wake-up per target environment.
    lanes: HashMap<String, Arc<Notify>>,
    /// The id of every promotion that changed.
    changes: broadcast::Sender<String>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

/// The engine's own data about a promotion, kept in the store with it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Detail {
    /// Git author e-mails of the promoted range (for `allowAuthorApproval: false`).
    #[serde(default)]
    pub authors: Vec<String>,
    /// The target branch tip the last pre-flight checked the candidate on.
    #[serde(default)]
    pub checked_tip: Option<String>,
    /// Who let it through a freeze window, and why.
    #[serde(default)]
    pub freeze_override: Option<Override>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct Override {
    pub by: String,
    pub reason: String,
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
    fn new(kind: BlockerKind, message: String) -> Self {
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
    pub(crate) fn new(
        pipeline: Arc<Pipeline>,
        repository: git::Repository,
        store: Arc<dyn Store>,
        service: Weak<Service>,
        source: Arc<GitSource>,
        options: reconcile::Options,
        git: git::promote::Options,
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
            lanes,
            changes: broadcast::channel(256).0,
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
        tokio::task::spawn_blocking(move || repository.candidate(&pipeline, &promotion, &options))
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
        let service = self.service()?;
        let target_env = self.environment(target)?.clone();
        let source_name = target_env
            .promotes_from
            .clone()
            .ok_or_else(|| Error::NoSource {
                environment: target.to_owned(),
            })?;
        let source_view = service.environment(&source_name)?;
        let revision = match revision.filter(|r| !r.is_empty()) {
            Some(revision) => self.resolve(revision).await?.to_string(),
            None => source_view.status.applied_revision.clone().ok_or_else(|| {
                Error::NothingApplied {
                    source_env: source_name.clone(),
                }
            })?,
        };
        checks::source_ready(&target_env, &source_view, &revision, &*self.store).await?;
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
        let candidate = self.candidate(Self::git_promotion(&record, &[])?).await?;
        if matches!(candidate, Candidate::NoChange { .. }) && !rerun {
            return Err(Error::AlreadyRuns {
                target: target.to_owned(),
                revision,
            });
        }
        let authors = self.authors(&source_name, target, &revision).await?;
        self.create(
            record,
            Detail {
                authors,
                ..Detail::default()
            },
        )
        .await
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
        let env = self.environment(environment)?.clone();
        let commit = self.resolve(revision).await?.to_string();
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
        let candidate = self.candidate(Self::git_promotion(&record, &[])?).await?;
        if matches!(candidate, Candidate::NoChange { .. }) {
            return Err(Error::AlreadyRuns {
                target: environment.to_owned(),
                revision: commit,
            });
        }
        if env.promotion.auto {
            let why = format!("rolled back to {commit} by {}", actor.name);
            self.store
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
        self.create(record, Detail::default()).await
    }

    /// Lets automatic promotion into `environment` go on after a rollback held it.
    pub async fn resume_auto_promotion(
        &self,
        actor: &Actor,
        environment: &str,
    ) -> Result<(), Error> {
        self.environment(environment)?;
        self.store
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
            .store
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
                .store
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

    /// The author e-mails of what promoting `revision` of `source` into `target` brings: the
    /// commits since the source revision of the target's last promotion.
    async fn authors(
        &self,
        source: &str,
        target: &str,
        revision: &str,
    ) -> Result<Vec<String>, Error> {
        let repository = self.repository.clone();
        let pipeline = self.pipeline.clone();
        let target = target.to_owned();
        let prefix = format!("{source}@");
        let to = ObjectId::from_hex(revision.as_bytes()).ok();
        tokio::task::spawn_blocking(move || {
            let Some(to) = to else {
                return Ok(Vec::new());
            };
            let since = repository
                .history(&pipeline, &target, HISTORY_LIMIT)?
                .into_iter()
                .find_map(|entry| {
                    entry
                        .trailers
                        .promoted_from
                        .as_deref()
                        .and_then(|from| from.strip_prefix(&prefix))
                        .and_then(|commit| ObjectId::from_hex(commit.as_bytes()).ok())
                });
            repository.authors(to, since, AUTHORS_LIMIT)
        })
        .await
        .expect("reading authors returns errors rather than panicking")
        .map_err(Error::Repository)
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
        let progress = policy::approval_progress(&env.approval, &detail.approvals);
        let missing = if Self::approvals_required(env, detail.promotion.kind) {
            progress.missing
        } else {
            0
        };
        let blockers = if before_git(detail.promotion.state) {
            self.blockers(&detail, &progress, missing).await?
        } else {
            Vec::new()
        };
        Ok(PromotionView {
            promotion: detail.promotion,
            approvals: detail.approvals,
            transitions: detail.transitions,
            approvals_missing: missing,
            blockers,
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

    /// The ids of promotions as they change.
    pub fn changes(&self) -> broadcast::Receiver<String> {
        self.changes.subscribe()
    }

    /// Everything a promotion that has not reached Git waits for now.
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
        if own.freeze_override.is_none()
            && let Some(frozen) = policy::active_freeze(&env.freeze_windows, jiff::Timestamp::now())
        {
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
        if let Some(blocker) = self.source_blocker(promotion, env)? {
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

    /// Approves a promotion for `actor`; the same identity twice counts once.
    pub async fn approve(
        &self,
        actor: &Actor,
        id: &str,
        comment: &str,
    ) -> Result<PromotionView, Error> {
        let detail = self.not_in_git(id, "approve").await?;
        let promotion = &detail.promotion;
        let env = self.environment(&promotion.target_environment)?;
        let own = Detail::of(promotion);
        policy::may_approve(
            &env.approval,
            &policy::Approver {
                name: &actor.name,
                email: &actor.email,
                groups: &actor.groups,
            },
            &promotion.requested_by,
            &own.authors,
        )
        .map_err(|refusal| Error::Refused {
            id: id.to_owned(),
            refusal,
        })?;
        let outcome = self
            .store
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
            ApprovalOutcome::AlreadyApproved | ApprovalOutcome::Recorded => {}
        }
        tracing::info!(promotion = %id, by = %actor.name, "approved");
        self.changed(id);
        self.wake(&promotion.target_environment);
        self.get(id).await
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
        // The lane may move the promotion between our read and our write; the override is
        // written onto the state the promotion is in then, as long as Git is not yet touched.
        loop {
            let detail = self.not_in_git(id, "override the freeze of").await?;
            let promotion = &detail.promotion;
            let env = self.environment(&promotion.target_environment)?;
            if policy::active_freeze(&env.freeze_windows, jiff::Timestamp::now()).is_none() {
                return Err(Error::NotFrozen { id: id.to_owned() });
            }
            let mut own = Detail::of(promotion);
            own.freeze_override = Some(Override {
                by: actor.name.clone(),
                reason: reason.to_owned(),
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
            .store
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
        let candidate = self.candidate(Self::git_promotion(&record, &[])?).await?;
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
