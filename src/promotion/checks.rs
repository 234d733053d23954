//! What is checked before a promotion may go on: the source's health and soak at the promoted
//! revision (when it is requested) and the pre-flight of the target at the candidate commit
//! (before any commit reaches Git).

use std::sync::Arc;
use std::time::SystemTime;

use gix::ObjectId;

use super::{Error, policy};
use crate::cluster::apply::Change;
use crate::cluster::health::HealthStatus;
use crate::pipeline::Environment;
use crate::reconcile::{self, Plan, Reconciler, source::AtCommit, source::GitSource};
use crate::service::EnvironmentView;
use crate::store::Store;

/// The source runs `revision` (`runs`: its applied commit holds the same revision of the
/// source's own files, whatever other environments committed since), is Healthy there (when
/// the target's policy demands it) and has run those files for the target's soak time.
pub(super) async fn source_ready(
    target: &Environment,
    source: &EnvironmentView,
    revision: &str,
    runs: bool,
    store: &dyn Store,
) -> Result<(), Error> {
    let policy = &target.promotion;
    if !policy.require_healthy && policy.soak.is_zero() {
        return Ok(());
    }
    let name = &source.environment.name;
    let running = source.status.applied_revision.clone().unwrap_or_default();
    if !runs {
        return Err(Error::SourceNotRunning {
            source_env: name.clone(),
            revision: revision.to_owned(),
            running,
        });
    }
    if policy.require_healthy {
        let unhealthy = unhealthy_objects(source);
        if !unhealthy.is_empty() || source.status.health != Some(HealthStatus::Healthy) {
            return Err(Error::SourceUnhealthy {
                source_env: name.clone(),
                revision: revision.to_owned(),
                objects: if unhealthy.is_empty() {
                    vec![format!("the environment is {}", health_word(source))]
                } else {
                    unhealthy
                },
            });
        }
    }
    // The store moves applied_at only when the source's files change.
    let applied_at = store
        .environment(name)
        .await?
        .filter(|record| record.applied_revision.as_deref() == Some(running.as_str()))
        .and_then(|record| record.applied_at);
    if let Some(remaining) = policy::soak_remaining(policy.soak, applied_at, SystemTime::now()) {
        return Err(Error::NotSoaked {
            source_env: name.clone(),
            revision: revision.to_owned(),
            soak: policy.soak,
            remaining,
        });
    }
    Ok(())
}

/// The objects of an environment that are not Healthy, as people name them.
pub(super) fn unhealthy_objects(env: &EnvironmentView) -> Vec<String> {
    env.status
        .objects
        .iter()
        .filter_map(|object| match &object.health {
            Some(health) if health.status != HealthStatus::Healthy => Some(format!(
                "{} is {} ({})",
                object.reference, health.status, health.message
            )),
            _ => None,
        })
        .collect()
}

fn health_word(env: &EnvironmentView) -> String {
    match env.status.health {
        Some(health) => health.to_string(),
        None => format!("without a health verdict ({})", env.status.reason.as_str()),
    }
}

/// Pre-flight: `target` rendered at `commit` (pushed or not), its Secrets decrypted with the
/// identities the target decrypts with, and every object applied to the target cluster by a
/// server-side dry run. `Err` carries what failed, naming the file or object.
pub(super) async fn preflight(
    target: &Environment,
    source: Arc<GitSource>,
    commit: ObjectId,
    options: Arc<reconcile::Options>,
) -> Result<Plan, String> {
    let (events, _) = tokio::sync::broadcast::channel(1);
    let mut planner = Reconciler::new(
        target.clone(),
        Arc::new(AtCommit { source, commit }),
        options,
        events,
    );
    let plan = planner
        .plan()
        .await
        .map_err(|error| crate::service::describe(&error))?;
    let failed: Vec<String> = plan
        .objects
        .iter()
        .filter_map(|object| match &object.change {
            Change::Failed { error } => Some(format!("{}: {error}", object.reference)),
            _ => None,
        })
        .collect();
    if failed.is_empty() {
        Ok(plan)
    } else {
        Err(format!(
            "the dry run in {:?} refused {}",
            target.name,
            failed.join("; ")
        ))
    }
}
