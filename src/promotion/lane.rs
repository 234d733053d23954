//! The lane of one target environment: a loop that moves its open promotions on, one at a
//! time past approval, oldest first. It reads the queue from the store on every turn, so after
//! a restart it picks up where the stored states say, and a call that moved a promotion
//! meanwhile (an abort, a rejection) simply wins the compare-and-swap.

use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use gix::ObjectId;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::engine::{Detail, Engine, holding_freeze};
use super::{Actor, Error, SELF, checks};
use crate::cluster::health::HealthStatus;
use crate::git::promote::{Candidate, Outcome};
use crate::store::{PromotionKind, PromotionRecord, PromotionState};

/// How long a lane sleeps when nothing wakes it: it looks again for time-bound changes
/// (a freeze window ending, a suspension lifted, a source becoming Healthy).
const IDLE: Duration = Duration::from_secs(10);
/// How often a promotion that waits on the cluster (sync, health) looks again.
const POLL: Duration = Duration::from_millis(500);
/// Added to the environment's health timeout for the pass that applies the promotion.
const SYNC_GRACE: Duration = Duration::from_secs(60);
/// Git steps that may fail for a reason other than a lease conflict (the remote declined the
/// push, could not be reached, refused the credentials) before the promotion fails.
const GIT_ATTEMPTS: u32 = 5;

/// What one step did.
pub(super) enum Step {
    /// The promotion changed state; read the queue again.
    Moved,
    /// Nothing to do before this moment (or a wake-up).
    Wait(Instant),
}

pub(super) async fn run(engine: Weak<Engine>, target: String, wake: Arc<Notify>) {
    let Some(mut leadership) = engine.upgrade().map(|e| e.ownership.leadership()) else {
        return;
    };
    loop {
        let Some(strong) = engine.upgrade() else {
            return;
        };
        if strong.ownership.lead().is_err() {
            drop(strong);
            // Only the leader moves promotions on. A replica that becomes leader reads every
            // queue from the store again, as after a restart, and resumes what is in flight.
            tokio::select! {
                changed = leadership.changed() => if changed.is_err() { return },
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            continue;
        }
        let next = turn(&strong, &target).await;
        drop(strong);
        match next {
            Some(until) => {
                tokio::select! {
                    () = wake.notified() => {}
                    () = tokio::time::sleep_until(until) => {}
                }
            }
            None => tokio::task::yield_now().await,
        }
    }
}

/// Steps every open promotion of `target` once; `None` when one moved (look again at once).
async fn turn(engine: &Engine, target: &str) -> Option<Instant> {
    let open = match engine.open(target).await {
        Ok(open) => open,
        Err(error) => {
            tracing::warn!(environment = %target, error = %crate::service::describe(&error), "cannot read the promotion queue");
            return Some(Instant::now() + Duration::from_secs(5));
        }
    };
    let mut until = Instant::now() + IDLE;
    for (position, promotion) in open.iter().enumerate() {
        match step(engine, promotion, position == 0).await {
            Ok(Step::Moved) => return None,
            Ok(Step::Wait(at)) => until = until.min(at),
            Err(Error::WrongState { .. }) => return None,
            Err(error) => {
                tracing::warn!(promotion = %promotion.id, error = %crate::service::describe(&error), "promotion step failed; trying again");
                until = until.min(Instant::now() + Duration::from_secs(5));
            }
        }
    }
    Some(until)
}

fn idle() -> Step {
    Step::Wait(Instant::now() + IDLE)
}

fn soon() -> Step {
    Step::Wait(Instant::now() + POLL)
}

async fn step(engine: &Engine, promotion: &PromotionRecord, head: bool) -> Result<Step, Error> {
    match promotion.state {
        PromotionState::Pending => pending(engine, promotion).await,
        PromotionState::AwaitingApproval => awaiting_approval(engine, promotion).await,
        PromotionState::Approved if head => approved(engine, promotion).await,
        PromotionState::Approved => Ok(idle()),
        PromotionState::Promoting => promoting(engine, promotion).await,
        PromotionState::Syncing => syncing(engine, promotion).await,
        PromotionState::Verifying => super::verifying::verifying(engine, promotion).await,
        PromotionState::Succeeded
        | PromotionState::Rejected
        | PromotionState::Failed
        | PromotionState::Aborted => Ok(idle()),
    }
}

pub(super) async fn fail(
    engine: &Engine,
    promotion: &PromotionRecord,
    why: String,
) -> Result<Step, Error> {
    tracing::warn!(promotion = %promotion.id, reason = %why, "promotion failed");
    engine
        .move_by(
            promotion,
            PromotionState::Failed,
            SELF,
            &why,
            None,
            None,
            None,
        )
        .await?;
    Ok(Step::Moved)
}

/// Pre-flight of the candidate, then on to approvals (or straight to Approved).
async fn pending(engine: &Engine, promotion: &PromotionRecord) -> Result<Step, Error> {
    let candidate = match engine
        .candidate(Engine::git_promotion(promotion, &[])?, Vec::new())
        .await
    {
        Ok(candidate) => candidate,
        Err(Error::Git { source, .. }) if !retryable(source.as_ref()) => {
            return fail(
                engine,
                promotion,
                format!(
                    "cannot build the promotion: {}",
                    crate::service::describe(&source)
                ),
            )
            .await;
        }
        Err(error) => return Err(error),
    };
    let (tip, commit) = match candidate {
        Candidate::Change { tip, commit } => (tip, commit),
        Candidate::NoChange { tip } => (tip, tip),
        Candidate::AlreadyDone { commit } => (commit, commit),
    };
    let env = engine.environment(&promotion.target_environment)?;
    if let Err(why) =
        checks::preflight(env, engine.source.clone(), commit, engine.options.clone()).await
    {
        return fail(engine, promotion, format!("pre-flight failed: {why}")).await;
    }
    let mut detail = Detail::of(promotion);
    detail.checked_tip = Some(tip.to_string());
    let (to, why) = if Engine::approvals_required(env, promotion.kind) {
        (
            PromotionState::AwaitingApproval,
            format!(
                "pre-flight passed at {}; waiting for {} approval(s)",
                short(&commit),
                env.approval.required
            ),
        )
    } else {
        (
            PromotionState::Approved,
            format!(
                "pre-flight passed at {}; no approval required",
                short(&commit)
            ),
        )
    };
    engine
        .move_by(promotion, to, SELF, &why, Some(&detail), None, None)
        .await?;
    Ok(Step::Moved)
}

async fn awaiting_approval(engine: &Engine, promotion: &PromotionRecord) -> Result<Step, Error> {
    let Some(detail) = engine_detail(engine, &promotion.id).await? else {
        return Ok(idle());
    };
    let env = engine.environment(&promotion.target_environment)?;
    let progress = engine.progress(env, promotion, &detail.approvals);
    if progress.missing > 0 {
        return Ok(idle());
    }
    let why = format!("approved by {}", progress.counted.join(", "));
    engine
        .move_by(
            promotion,
            PromotionState::Approved,
            SELF,
            &why,
            None,
            None,
            None,
        )
        .await?;
    Ok(Step::Moved)
}

async fn engine_detail(
    engine: &Engine,
    id: &str,
) -> Result<Option<crate::store::PromotionDetail>, Error> {
    Ok(engine.store.promotion(id).await?)
}

/// At the head of the queue: checks its approvals again against the rules and people of now,
/// waits for freeze windows, a suspension and the source's health, then goes to Git.
async fn approved(engine: &Engine, promotion: &PromotionRecord) -> Result<Step, Error> {
    let env = engine.environment(&promotion.target_environment)?;
    let detail = Detail::of(promotion);
    if Engine::approvals_required(env, promotion.kind) {
        let approvals = engine_detail(engine, &promotion.id)
            .await?
            .map(|d| d.approvals)
            .unwrap_or_default();
        let progress = engine.progress(env, promotion, &approvals);
        if progress.missing > 0 {
            let why = format!(
                "its approvals no longer suffice under the current rules and groups: {} more needed",
                progress.missing
            );
            engine
                .move_by(
                    promotion,
                    PromotionState::AwaitingApproval,
                    SELF,
                    &why,
                    None,
                    None,
                    None,
                )
                .await?;
            return Ok(Step::Moved);
        }
    }
    if let Some(frozen) = holding_freeze(env, &detail) {
        let left = SystemTime::from(frozen.until)
            .duration_since(SystemTime::now())
            .ok()
            .unwrap_or_default();
        return Ok(Step::Wait(
            Instant::now() + left.min(IDLE) + Duration::from_millis(10),
        ));
    }
    let service = engine.service()?;
    if service
        .environment(&promotion.target_environment)?
        .status
        .suspended
    {
        return Ok(idle());
    }
    if promotion.kind == PromotionKind::Promotion
        && (engine.source_blocker(promotion, env)?.is_some()
            || engine.verification_blocker(promotion).await?.is_some())
    {
        return Ok(Step::Wait(Instant::now() + Duration::from_secs(2)));
    }
    // The second guard of requireSignedCommits, against the allowed signers of now.
    match engine.check_signatures(promotion).await {
        Ok(()) => {}
        Err(
            error @ (Error::UnsignedCommits { .. }
            | Error::AllowedSigners { .. }
            | Error::AuthorsUnknown { .. }),
        ) => {
            return fail(engine, promotion, crate::service::describe(&error)).await;
        }
        Err(error) => return Err(error),
    }
    engine
        .move_by(
            promotion,
            PromotionState::Promoting,
            SELF,
            "committing to Git",
            None,
            None,
            None,
        )
        .await?;
    Ok(Step::Moved)
}

/// Git errors worth another try: the remote could not be reached, refused this once, or kept
/// moving.
fn retryable(error: &crate::git::promote::Error) -> bool {
    use crate::git::promote::Error as E;
    matches!(error, E::Fetch(_) | E::Push(_) | E::Refused(_))
}

/// The commit: idempotent by the commits Stagehand recorded for this promotion before pushing
/// them, so a run killed here and started again finds its own commit on the remote instead of
/// making a second one, and a commit someone else pushed with the promotion's trailer is never
/// taken for it.
async fn promoting(engine: &Engine, promotion: &PromotionRecord) -> Result<Step, Error> {
    let approvals = engine_detail(engine, &promotion.id)
        .await?
        .map(|d| d.approvals)
        .unwrap_or_default();
    let change = Engine::git_promotion(promotion, &approvals)?;
    let mut detail = Detail::of(promotion);
    let ours: Vec<ObjectId> = detail
        .commits
        .iter()
        .filter_map(|c| ObjectId::from_hex(c.as_bytes()).ok())
        .collect();
    let candidate = match engine.candidate(change.clone(), ours.clone()).await {
        Ok(candidate) => candidate,
        Err(Error::Git { source, .. }) if !retryable(source.as_ref()) => {
            return fail(
                engine,
                promotion,
                format!(
                    "cannot build the promotion: {}",
                    crate::service::describe(&source)
                ),
            )
            .await;
        }
        Err(error) => return Err(error),
    };
    if let Candidate::Change { tip, commit } = candidate {
        // The target moved since the pre-flight: check what will really be committed.
        if detail.checked_tip.as_deref() != Some(tip.to_string().as_str()) {
            let env = engine.environment(&promotion.target_environment)?;
            if let Err(why) =
                checks::preflight(env, engine.source.clone(), commit, engine.options.clone()).await
            {
                return fail(engine, promotion, format!("pre-flight failed: {why}")).await;
            }
            detail.checked_tip = Some(tip.to_string());
        }
    }
    let mut ledger = StoreLedger {
        runtime: tokio::runtime::Handle::current(),
        ownership: engine.ownership.clone(),
        store: engine.store.clone(),
        promotion: promotion.clone(),
        detail,
        ours,
    };
    let repository = engine.repository.clone();
    let pipeline = engine.pipeline.clone();
    let options = engine.git.clone();
    let (outcome, ledger) = tokio::task::spawn_blocking(move || {
        let outcome = repository.promote(&pipeline, &change, &options, &mut ledger);
        (outcome, ledger)
    })
    .await
    .expect("promoting returns errors rather than panicking");
    let StoreLedger {
        promotion: current,
        mut detail,
        ..
    } = ledger;
    let (commit, why) = match outcome {
        Ok(Outcome::Pushed { commit, .. }) => (commit, format!("committed {}", short(&commit))),
        Ok(Outcome::AlreadyDone { commit }) => (
            commit,
            format!("commit {} was already on the remote", short(&commit)),
        ),
        Ok(Outcome::NoChange { commit }) => (
            commit,
            format!(
                "nothing to commit: the target already had it at {}",
                short(&commit)
            ),
        ),
        Err(
            error @ crate::git::promote::Error::Refused(crate::git::write::Refused::Contended {
                ..
            }),
        ) => {
            // Others pushed first every time: not a fault of the remote, so not counted.
            tracing::warn!(promotion = %promotion.id, error = %crate::service::describe(&error), "cannot push the promotion yet");
            return Ok(Step::Wait(Instant::now() + Duration::from_secs(5)));
        }
        Err(error) if retryable(&error) => {
            let why = crate::service::describe(&error);
            detail.git_failures += 1;
            if detail.git_failures >= GIT_ATTEMPTS {
                return fail(
                    engine,
                    &current,
                    format!("cannot commit the promotion after {GIT_ATTEMPTS} attempts: {why}"),
                )
                .await;
            }
            tracing::warn!(promotion = %promotion.id, error = %why, "cannot push the promotion yet");
            engine
                .move_by(
                    &current,
                    PromotionState::Promoting,
                    SELF,
                    &format!(
                        "attempt {} of {GIT_ATTEMPTS} failed: {why}",
                        detail.git_failures
                    ),
                    Some(&detail),
                    None,
                    None,
                )
                .await?;
            return Ok(Step::Wait(Instant::now() + Duration::from_secs(5)));
        }
        Err(error) => {
            return fail(
                engine,
                &current,
                format!(
                    "cannot commit the promotion: {}",
                    crate::service::describe(&error)
                ),
            )
            .await;
        }
    };
    engine
        .move_by(
            &current,
            PromotionState::Syncing,
            SELF,
            &why,
            Some(&detail),
            Some(commit.to_string()),
            None,
        )
        .await?;
    Ok(Step::Moved)
}

/// The Git step's ledger: each commit is written into the promotion's stored detail before it
/// is pushed. Runs on the blocking thread of the Git step, so it waits for the store there.
struct StoreLedger {
    runtime: tokio::runtime::Handle,
    /// Checked before the commit is recorded, which comes right before its push.
    ownership: crate::shard::Ownership,
    store: Arc<dyn crate::store::Store>,
    /// The promotion as last written.
    promotion: PromotionRecord,
    detail: Detail,
    ours: Vec<ObjectId>,
}

impl crate::git::promote::Ledger for StoreLedger {
    fn is_ours(&self, commit: ObjectId) -> bool {
        self.ours.contains(&commit)
    }

    fn remember(&mut self, commit: ObjectId) -> Result<(), String> {
        self.ownership.lead().map_err(|e| e.to_string())?;
        let mut detail = self.detail.clone();
        detail.commits.push(commit.to_string());
        let transition = crate::store::Transition {
            promotion_id: self.promotion.id.clone(),
            from: self.promotion.state,
            from_version: Some(self.promotion.version),
            to: self.promotion.state,
            actor: SELF.to_owned(),
            reason: format!("pushing commit {}", short(&commit)),
            at: SystemTime::now(),
            commit: None,
            detail: Some(detail.to_value()),
            audit: None,
        };
        match self.runtime.block_on(self.store.transition(transition)) {
            Ok(crate::store::TransitionOutcome::Applied(record)) => {
                self.promotion = *record;
                self.detail = detail;
                self.ours.push(commit);
                Ok(())
            }
            Ok(crate::store::TransitionOutcome::Conflict { current }) => Err(format!(
                "the promotion moved meanwhile; it is {current} now"
            )),
            Ok(crate::store::TransitionOutcome::NotFound) => {
                Err("the promotion is no longer in the store".to_owned())
            }
            Err(error) => Err(crate::service::describe(&error)),
        }
    }
}

pub(super) fn short(commit: &ObjectId) -> String {
    commit.to_string()[..12].to_owned()
}

pub(super) fn commit_of(promotion: &PromotionRecord) -> Option<ObjectId> {
    promotion
        .commit
        .as_deref()
        .and_then(|c| ObjectId::from_hex(c.as_bytes()).ok())
}

/// Whether `revision` (an environment's applied or attempted revision) holds `commit`.
pub(super) async fn holds(engine: &Engine, revision: Option<&str>, commit: ObjectId) -> bool {
    let Some(revision) = revision.and_then(|r| ObjectId::from_hex(r.as_bytes()).ok()) else {
        return false;
    };
    let repository = engine.repository.clone();
    tokio::task::spawn_blocking(move || repository.descends_from(revision, commit))
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or(false)
}

fn deadline(promotion: &PromotionRecord, timeout: Duration) -> SystemTime {
    promotion.updated_at + timeout
}

/// The target's reconcile loop at the promotion commit (or a later one).
async fn syncing(engine: &Engine, promotion: &PromotionRecord) -> Result<Step, Error> {
    let Some(commit) = commit_of(promotion) else {
        return fail(
            engine,
            promotion,
            "no promotion commit was recorded".to_owned(),
        )
        .await;
    };
    let target = &promotion.target_environment;
    let env = engine.environment(target)?;
    let service = engine.service()?;
    let view = match service.sync(target, true, true).await {
        Ok(view) => view,
        Err(crate::service::Error::Suspended { .. }) => return Ok(idle()),
        // Another replica reconciles the target: it applies the commit after its own next
        // fetch; what it reports comes through the store.
        Err(crate::service::Error::NotHolder(_)) => service.environment(target)?,
        Err(error) => {
            tracing::warn!(promotion = %promotion.id, error = %crate::service::describe(&error), "cannot sync the target yet");
            return Ok(Step::Wait(Instant::now() + Duration::from_secs(2)));
        }
    };
    if holds(engine, view.status.applied_revision.as_deref(), commit).await {
        engine
            .move_by(
                promotion,
                PromotionState::Verifying,
                SELF,
                &format!("{target} applied {}", short(&commit)),
                None,
                None,
                None,
            )
            .await?;
        return Ok(Step::Moved);
    }
    let attempted = holds(engine, view.status.attempted_revision.as_deref(), commit).await;
    if attempted && view.status.last_error.is_some() {
        return fail(
            engine,
            promotion,
            format!(
                "{target} could not apply {}: {}",
                short(&commit),
                view.status.message
            ),
        )
        .await;
    }
    if SystemTime::now() > deadline(promotion, env.sync.timeout + SYNC_GRACE) {
        return fail(
            engine,
            promotion,
            format!(
                "{target} did not apply {} within {}: {}",
                short(&commit),
                humantime::format_duration(env.sync.timeout + SYNC_GRACE),
                view.status.message
            ),
        )
        .await;
    }
    Ok(soon())
}

/// Requests a promotion into `target` whenever its source runs a new revision Healthy and
/// soaked, unless a rollback put the target's automatic promotion on hold.
pub(super) async fn auto_promote(engine: Weak<Engine>, target: String) {
    let mut done: Option<String> = None;
    loop {
        let Some(strong) = engine.upgrade() else {
            return;
        };
        let wait = auto_turn(&strong, &target, &mut done).await;
        drop(strong);
        tokio::time::sleep(wait).await;
    }
}

async fn auto_turn(engine: &Engine, target: &str, done: &mut Option<String>) -> Duration {
    const AGAIN: Duration = Duration::from_secs(1);
    if engine.ownership.lead().is_err() {
        return AGAIN;
    }
    let Ok(env) = engine.environment(target) else {
        return IDLE;
    };
    let Some(source) = env.promotes_from.clone() else {
        return IDLE;
    };
    let Ok(service) = engine.service() else {
        return IDLE;
    };
    let Ok(view) = service.environment(&source) else {
        return IDLE;
    };
    let Some(revision) = view.status.applied_revision.clone() else {
        return AGAIN;
    };
    if done.as_deref() == Some(revision.as_str())
        || view.status.health != Some(HealthStatus::Healthy)
    {
        return AGAIN;
    }
    match engine.store.environment(target).await {
        Ok(Some(record)) if record.auto_promotion_hold.is_some() => return AGAIN,
        Ok(_) => {}
        Err(error) => {
            tracing::warn!(environment = %target, error = %crate::service::describe(&error), "cannot read the automatic promotion hold");
            return AGAIN;
        }
    }
    let asked = engine
        .store
        .promotions(&crate::store::PromotionFilter {
            environment: Some(target.to_owned()),
            limit: 50,
            ..Default::default()
        })
        .await
        .map(|page| {
            page.items
                .iter()
                .any(|p| p.revision == revision && p.kind == PromotionKind::Promotion)
        })
        .unwrap_or(true);
    if asked {
        *done = Some(revision);
        return AGAIN;
    }
    match engine
        .request(
            &Actor::stagehand(),
            target,
            Some(&revision),
            "automatic promotion",
            false,
        )
        .await
    {
        Ok(view) => {
            tracing::info!(promotion = %view.promotion.id, environment = %target, %revision, "automatic promotion requested");
            *done = Some(revision);
            AGAIN
        }
        Err(Error::NotSoaked { remaining, .. }) => remaining.min(IDLE),
        Err(Error::AlreadyRuns { .. }) => {
            *done = Some(revision);
            AGAIN
        }
        Err(error) => {
            tracing::debug!(environment = %target, error = %crate::service::describe(&error), "no automatic promotion yet");
            AGAIN
        }
    }
}
