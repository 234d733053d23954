//! The Verifying state and what follows from it: the target Healthy at the promotion commit, its
//! Job succeeded, then every check of `verify.checks` decided; a failure marks the environment
//! (which blocks promotions out of it) and, with `onFailure: rollback`, asks for a rollback to
//! the last verified revision. Re-verification runs the checks again while an environment stays
//! on a revision.

use std::sync::Weak;
use std::time::{Duration, SystemTime};

use gix::ObjectId;
use tokio::time::Instant;

use super::engine::{Blocker, BlockerKind, Detail, Engine};
use super::lane::{Step, fail, holds};
use super::verify::{self, CheckResult, CheckStatus};
use super::{Actor, Error, SELF, checks};
use crate::cluster::health::HealthStatus;
use crate::pipeline::verify::{OnFailure, Verify};
use crate::store::{
    AuditAction, FailedVerification, NewAuditEvent, PromotionKind, PromotionRecord, PromotionState,
    VerificationRecord, VerifiedRevision,
};

/// How often a promotion that waits on the target's health looks again.
const HEALTH_POLL: Duration = Duration::from_secs(1);

/// Healthy within the environment's timeout and the Job succeeded, then the checks.
pub(super) async fn verifying(engine: &Engine, promotion: &PromotionRecord) -> Result<Step, Error> {
    let Some(commit) = super::lane::commit_of(promotion) else {
        return fail(
            engine,
            promotion,
            "no promotion commit was recorded".to_owned(),
        )
        .await;
    };
    let target = &promotion.target_environment;
    let env = engine.environment(target)?.clone();
    let service = engine.service()?;
    let view = service.environment(target)?;
    let health = view.status.health;
    let mut detail = Detail::of(promotion);
    if detail.checks.is_empty() {
        // A status restored after a restart names the applied revision but no objects: only a
        // pass of this process can say whether the Job is there and how it is.
        let at_commit = view.status.passes > 0
            && holds(engine, view.status.applied_revision.as_deref(), commit).await;
        let job_name = env.verify.as_ref().and_then(|v| v.job.clone());
        let job = match &job_name {
            None => Some(HealthStatus::Healthy),
            Some(name) => view
                .status
                .objects
                .iter()
                .find(|o| o.reference.kind == "Job" && &o.reference.name == name)
                .map(|o| {
                    o.health
                        .as_ref()
                        .map_or(HealthStatus::Progressing, |h| h.status)
                }),
        };
        if at_commit && health == Some(HealthStatus::Healthy) && job == Some(HealthStatus::Healthy)
        {
            return healthy(engine, promotion, commit, env.verify.as_ref(), detail).await;
        }
        if let Some(name) = &job_name {
            let failed = match job {
                None if at_commit => Some(format!(
                    "verification Job {name:?} is not among the objects of {target}"
                )),
                Some(HealthStatus::Failed) => Some(format!("verification Job {name:?} failed")),
                _ => None,
            };
            if let Some(why) = failed {
                let mut result = CheckResult::new(name, "job", SystemTime::now());
                result.decide(CheckStatus::Failed, why.clone());
                detail.checks.push(result);
                return failed_verification(engine, promotion, commit, detail, why).await;
            }
        }
        let why = if health == Some(HealthStatus::Failed) {
            Some(format!(
                "{target} is not Healthy: {}",
                checks::unhealthy_objects(&view).join(", ")
            ))
        } else if SystemTime::now() > promotion.updated_at + env.sync.timeout {
            Some(format!(
                "{target} was not Healthy within {}: {}",
                humantime::format_duration(env.sync.timeout),
                checks::unhealthy_objects(&view).join(", ")
            ))
        } else {
            None
        };
        if let Some(why) = why {
            return failed_verification(engine, promotion, commit, detail, why).await;
        }
        // Health is read by passes: ask for one rather than wait for the interval.
        if let Err(error) = service.sync(target, false, false).await {
            tracing::debug!(error = %crate::service::describe(&error), "cannot start a verification pass");
        }
        return Ok(Step::Wait(Instant::now() + HEALTH_POLL));
    }

    // The checks run; the objects must stay Healthy meanwhile.
    if health == Some(HealthStatus::Failed) {
        let why = format!(
            "{target} is no longer Healthy: {}",
            checks::unhealthy_objects(&view).join(", ")
        );
        return failed_verification(engine, promotion, commit, detail, why).await;
    }
    let Some(verify) = env.verify.as_ref() else {
        // `verify:` was taken out of the pipeline meanwhile: nothing is left to check.
        return succeeded(engine, promotion, commit, detail).await;
    };
    let now = SystemTime::now();
    let ran = run_due(engine, verify, &mut detail.checks, now).await;
    if let Some(why) = decided_failure(&detail.checks) {
        return failed_verification(engine, promotion, commit, detail, why).await;
    }
    if detail
        .checks
        .iter()
        .all(|c| c.status == CheckStatus::Passed)
    {
        return succeeded(engine, promotion, commit, detail).await;
    }
    if !ran.is_empty() {
        let why = ran
            .iter()
            .filter_map(|name| detail.checks.iter().find(|c| &c.name == name))
            .map(CheckResult::summary)
            .collect::<Vec<_>>()
            .join("; ");
        engine
            .move_by(
                promotion,
                PromotionState::Verifying,
                SELF,
                &why,
                Some(&detail),
                None,
                None,
            )
            .await?;
        return Ok(Step::Moved);
    }
    Ok(Step::Wait(next_wake(verify, &detail.checks, now)))
}

/// The target is Healthy at the commit (and the Job succeeded): Succeeded, or on to the checks.
async fn healthy(
    engine: &Engine,
    promotion: &PromotionRecord,
    commit: ObjectId,
    verify: Option<&Verify>,
    mut detail: Detail,
) -> Result<Step, Error> {
    let target = &promotion.target_environment;
    let now = SystemTime::now();
    if let Some(job) = verify.and_then(|v| v.job.as_ref()) {
        let mut result = CheckResult::new(job, "job", now);
        result.decide(CheckStatus::Passed, format!("Job {job} succeeded"));
        detail.checks.push(result);
    }
    let checks = verify.map(|v| v.checks.as_slice()).unwrap_or_default();
    if checks.is_empty() {
        return succeeded(engine, promotion, commit, detail).await;
    }
    for check in checks {
        detail
            .checks
            .push(CheckResult::new(&check.name, check.probe.kind(), now));
    }
    let names: Vec<&str> = checks.iter().map(|c| c.name.as_str()).collect();
    engine
        .move_by(
            promotion,
            PromotionState::Verifying,
            SELF,
            &format!("{target} is Healthy; running checks {}", names.join(", ")),
            Some(&detail),
            None,
            None,
        )
        .await?;
    Ok(Step::Moved)
}

/// Runs every check whose time has come, side by side; returns the names of those that ran.
async fn run_due(
    engine: &Engine,
    verify: &Verify,
    results: &mut Vec<CheckResult>,
    now: SystemTime,
) -> Vec<String> {
    for check in &verify.checks {
        if !results.iter().any(|r| r.name == check.name) {
            // A check added to the pipeline while this one verifies starts now.
            results.push(CheckResult::new(&check.name, check.probe.kind(), now));
        }
    }
    let due: Vec<_> = verify
        .checks
        .iter()
        .filter(|check| {
            results
                .iter()
                .find(|r| r.name == check.name)
                .and_then(|r| r.next_run(check))
                .is_some_and(|at| at <= now)
        })
        .collect();
    let runs =
        futures::future::join_all(due.iter().map(|check| verify::run(&engine.http, check))).await;
    let finished = SystemTime::now();
    let mut ran = Vec::new();
    for (check, run) in due.into_iter().zip(runs) {
        if let Some(result) = results.iter_mut().find(|r| r.name == check.name) {
            result.record(check, run, finished);
            ran.push(check.name.clone());
        }
    }
    ran
}

/// The failed checks, for a message; `None` while none has failed.
fn decided_failure(results: &[CheckResult]) -> Option<String> {
    let failed: Vec<String> = results
        .iter()
        .filter(|r| r.status == CheckStatus::Failed)
        .map(CheckResult::summary)
        .collect();
    (!failed.is_empty()).then(|| failed.join("; "))
}

fn next_wake(verify: &Verify, results: &[CheckResult], now: SystemTime) -> Instant {
    let next = verify
        .checks
        .iter()
        .filter_map(|check| {
            results
                .iter()
                .find(|r| r.name == check.name)
                .and_then(|r| r.next_run(check))
        })
        .min()
        .unwrap_or(now + Duration::from_secs(10));
    Instant::now() + next.duration_since(now).unwrap_or_default()
}

async fn succeeded(
    engine: &Engine,
    promotion: &PromotionRecord,
    commit: ObjectId,
    detail: Detail,
) -> Result<Step, Error> {
    let target = &promotion.target_environment;
    let mut why = format!("{target} is Healthy");
    let passed: Vec<String> = detail
        .checks
        .iter()
        .map(|c| match &c.value {
            Some(value) => format!("{} ({value})", c.name),
            None => c.name.clone(),
        })
        .collect();
    if !passed.is_empty() {
        why.push_str(&format!(" and passed {}", passed.join(", ")));
    }
    engine
        .move_by(
            promotion,
            PromotionState::Succeeded,
            SELF,
            &why,
            Some(&detail),
            None,
            None,
        )
        .await?;
    record_verified(engine, target, &commit.to_string(), None).await;
    Ok(Step::Moved)
}

/// Remembers that `revision` passed verification in `environment`, clearing a failure.
async fn record_verified(engine: &Engine, environment: &str, revision: &str, why: Option<&str>) {
    let mut record = match engine.store.environment(environment).await {
        Ok(record) => record.map(|r| r.verification).unwrap_or_default(),
        Err(error) => {
            tracing::warn!(environment, error = %crate::service::describe(&error), "cannot read the environment's verification");
            return;
        }
    };
    let recovered = record.failed.take();
    record.verified = Some(VerifiedRevision {
        revision: revision.to_owned(),
        at: SystemTime::now(),
    });
    let audit = recovered.as_ref().map(|failed| NewAuditEvent {
        at: SystemTime::now(),
        actor: SELF.to_owned(),
        action: AuditAction::VerificationRecovered,
        environment: Some(environment.to_owned()),
        promotion_id: None,
        revision: Some(revision.to_owned()),
        reason: why.map_or_else(
            || {
                format!(
                    "{} passed verification; {} had failed it",
                    short_text(revision),
                    short_text(&failed.revision)
                )
            },
            str::to_owned,
        ),
    });
    if let Err(error) = write(engine, environment, &record, audit).await {
        tracing::warn!(environment, error = %crate::service::describe(&error), "cannot record the environment's verification");
    }
    if recovered.is_some()
        && let Ok(service) = engine.service()
    {
        service.verification_alert(environment, None);
    }
}

async fn write(
    engine: &Engine,
    environment: &str,
    record: &VerificationRecord,
    audit: Option<NewAuditEvent>,
) -> Result<(), Error> {
    engine
        .writer()?
        .set_verification(environment, record, audit)
        .await?;
    Ok(())
}

fn short_text(revision: &str) -> &str {
    &revision[..revision.len().min(12)]
}

/// The promotion failed verification: Failed, the environment marked, and with
/// `onFailure: rollback` a rollback to the last verified revision asked for.
async fn failed_verification(
    engine: &Engine,
    promotion: &PromotionRecord,
    commit: ObjectId,
    detail: Detail,
    why: String,
) -> Result<Step, Error> {
    let target = &promotion.target_environment;
    let env = engine.environment(target)?.clone();
    let mut record = engine
        .store
        .environment(target)
        .await?
        .map(|r| r.verification)
        .unwrap_or_default();
    let mut message = format!("verification failed: {why}");
    let rollback = env
        .verify
        .as_ref()
        .is_some_and(|v| v.on_failure == OnFailure::Rollback)
        // A rollback that fails its own verification is not rolled back again: that way
        // lies a loop. It stays, marked, for people to decide.
        && promotion.kind == PromotionKind::Promotion;
    if rollback {
        // Asked before the promotion is marked Failed, so that a crash in between asks again
        // (finding the first request) rather than never.
        match automatic_rollback(engine, promotion, &record, &detail, &why).await {
            Ok(id) => message.push_str(&format!("; rollback {id} requested")),
            Err(error) => {
                let error = crate::service::describe(&error);
                tracing::warn!(promotion = %promotion.id, %error, "cannot request the automatic rollback");
                message.push_str(&format!("; no rollback: {error}"));
            }
        }
    }
    engine
        .move_by(
            promotion,
            PromotionState::Failed,
            SELF,
            &message,
            Some(&detail),
            None,
            None,
        )
        .await?;
    tracing::warn!(promotion = %promotion.id, reason = %message, "verification failed");
    record.failed = Some(FailedVerification {
        revision: commit.to_string(),
        at: SystemTime::now(),
        reason: why.clone(),
        promotion_id: Some(promotion.id.clone()),
    });
    let audit = NewAuditEvent {
        at: SystemTime::now(),
        actor: SELF.to_owned(),
        action: AuditAction::VerificationFailed,
        environment: Some(target.clone()),
        promotion_id: Some(promotion.id.clone()),
        revision: Some(commit.to_string()),
        reason: why,
    };
    write(engine, target, &record, Some(audit)).await?;
    Ok(Step::Moved)
}

/// Asks for the rollback of a failed verification, or finds the one asked for already.
async fn automatic_rollback(
    engine: &Engine,
    promotion: &PromotionRecord,
    record: &VerificationRecord,
    detail: &Detail,
    why: &str,
) -> Result<String, Error> {
    let target = &promotion.target_environment;
    let reason = format!(
        "automatic rollback: promotion {} failed verification: {why}",
        promotion.id
    );
    let marker = format!("promotion {} failed verification", promotion.id);
    if let Some(asked) = engine.open(target).await?.into_iter().find(|p| {
        p.kind == PromotionKind::Rollback && p.requested_by == SELF && p.reason.contains(&marker)
    }) {
        return Ok(asked.id);
    }
    let commit = promotion.commit.as_deref().unwrap_or_default();
    let revision = record
        .verified
        .as_ref()
        .map(|v| v.revision.clone())
        .filter(|v| v != commit)
        .or_else(|| detail.checked_tip.clone())
        .ok_or_else(|| Error::NoVerifiedRevision {
            environment: target.clone(),
        })?;
    let view = engine
        .rollback(&Actor::stagehand(), target, &revision, &reason)
        .await?;
    Ok(view.promotion.id)
}

/// A blocker when `source` runs a revision that failed verification: nothing moves out of an
/// environment whose revision is known to be bad.
pub(super) async fn source_verification(
    engine: &Engine,
    source: &str,
) -> Result<Option<Blocker>, Error> {
    let Some(failed) = engine
        .store
        .environment(source)
        .await?
        .and_then(|r| r.verification.failed)
    else {
        return Ok(None);
    };
    let running = engine
        .service()?
        .environment(source)?
        .status
        .applied_revision
        .clone();
    if let Some(running) = running
        && !engine
            .same_revision(source, &running, &failed.revision)
            .await?
    {
        // The environment moved on by other means (a commit of its own): that revision was
        // never verified, but it is not the one that failed.
        return Ok(None);
    }
    let which = match &failed.promotion_id {
        Some(id) => format!("the verification of promotion {id}"),
        None => "its re-verification".to_owned(),
    };
    Ok(Some(Blocker::new(
        BlockerKind::SourceVerification,
        format!(
            "environment {source:?} runs {}, which failed {which}: {}; promotions out of it wait until it passes verification",
            short_text(&failed.revision),
            failed.reason
        ),
    )))
}

/// Runs the checks of every environment with `verify.every` again, while it stays on a revision
/// it passed them on and no promotion into it is open.
pub(super) async fn reverify(engine: Weak<Engine>, environment: String) {
    loop {
        let Some(every) = engine
            .upgrade()
            .and_then(|e| {
                e.environment(&environment)
                    .ok()
                    .and_then(|env| env.verify.clone())
            })
            .and_then(|v| v.every)
        else {
            return;
        };
        tokio::time::sleep(every).await;
        let Some(strong) = engine.upgrade() else {
            return;
        };
        if let Err(error) = reverify_once(&strong, &environment).await {
            tracing::warn!(environment = %environment, error = %crate::service::describe(&error), "cannot re-verify");
        }
    }
}

async fn reverify_once(engine: &Engine, environment: &str) -> Result<(), Error> {
    if engine.ownership.lead().is_err() || !engine.open(environment).await?.is_empty() {
        return Ok(());
    }
    let Some(verify) = engine.environment(environment)?.verify.clone() else {
        return Ok(());
    };
    let Some(revision) = engine
        .service()?
        .environment(environment)?
        .status
        .applied_revision
        .clone()
    else {
        return Ok(());
    };
    let started = SystemTime::now();
    let mut results: Vec<CheckResult> = verify
        .checks
        .iter()
        .map(|c| CheckResult::new(&c.name, c.probe.kind(), started))
        .collect();
    loop {
        let now = SystemTime::now();
        run_due(engine, &verify, &mut results, now).await;
        if results.iter().all(|r| r.status != CheckStatus::Running) {
            break;
        }
        tokio::time::sleep_until(next_wake(&verify, &results, SystemTime::now())).await;
    }
    match decided_failure(&results) {
        None => {
            let why = format!(
                "{} passed re-verification: {}",
                short_text(&revision),
                results
                    .iter()
                    .map(CheckResult::summary)
                    .collect::<Vec<_>>()
                    .join("; ")
            );
            record_verified(engine, environment, &revision, Some(&why)).await;
        }
        Some(why) => {
            let mut record = engine
                .store
                .environment(environment)
                .await?
                .map(|r| r.verification)
                .unwrap_or_default();
            let known = match &record.failed {
                Some(failed) => {
                    engine
                        .same_revision(environment, &failed.revision, &revision)
                        .await?
                }
                None => false,
            };
            // A revision that failed already keeps the first failure: the one that tells
            // people the most (a promotion's verification, with its checks).
            if !known {
                record.failed = Some(FailedVerification {
                    revision: revision.clone(),
                    at: SystemTime::now(),
                    reason: why.clone(),
                    promotion_id: None,
                });
                let audit = NewAuditEvent {
                    at: SystemTime::now(),
                    actor: SELF.to_owned(),
                    action: AuditAction::VerificationFailed,
                    environment: Some(environment.to_owned()),
                    promotion_id: None,
                    revision: Some(revision.clone()),
                    reason: format!("re-verification failed: {why}"),
                };
                write(engine, environment, &record, Some(audit)).await?;
            }
            engine.service()?.verification_alert(
                environment,
                Some(format!(
                    "re-verification of {} failed: {why}",
                    short_text(&revision)
                )),
            );
        }
    }
    Ok(())
}

impl Engine {
    /// Whether `a` and `b` are one revision of `environment`: the same commit, or commits whose
    /// files of the environment are the same entry of its history.
    pub(super) async fn same_revision(
        &self,
        environment: &str,
        a: &str,
        b: &str,
    ) -> Result<bool, Error> {
        if a == b {
            return Ok(true);
        }
        let (Ok(a), Ok(b)) = (
            ObjectId::from_hex(a.as_bytes()),
            ObjectId::from_hex(b.as_bytes()),
        ) else {
            return Ok(false);
        };
        let (a, b) = (
            self.history_entry(environment, a).await?,
            self.history_entry(environment, b).await?,
        );
        Ok(a.is_some() && a == b)
    }
}
