//! Deleting what left Git, one object at a time in the order given (the inventory's diff
//! gives reverse apply order), and only objects that are ours.

use std::fmt;

use kube::api::{DeleteParams, PropagationPolicy};
use serde::Serialize;
use serde_json::Value;

use super::apply::to_value;
use super::{Connection, Error, INVENTORY_LABEL, ObjectRef, PRUNE_ANNOTATION, api_error};

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "camelCase")]
pub enum Outcome {
    Deleted,
    /// Already gone (deleted by hand, or its kind went with its CRD).
    Gone,
    /// Its [`INVENTORY_LABEL`] names another owner or none: not ours to delete.
    NotOwned,
    /// Annotated [`PRUNE_ANNOTATION`]`: disabled`.
    Kept,
    Failed {
        error: String,
    },
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Deleted => f.write_str("deleted"),
            Self::Gone => f.write_str("already gone"),
            Self::NotOwned => f.write_str("skipped: not owned by this environment"),
            Self::Kept => write!(f, "kept: {PRUNE_ANNOTATION} is disabled"),
            Self::Failed { error } => write!(f, "prune failed: {error}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Pruned {
    pub reference: ObjectRef,
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// Deletes each of `stale` owned by `owner`, in order. With `dry_run`, says what it would do.
pub async fn prune(
    conn: &Connection,
    stale: &[ObjectRef],
    owner: &str,
    dry_run: bool,
) -> Vec<Pruned> {
    let mut out = Vec::with_capacity(stale.len());
    for reference in stale {
        let outcome = match prune_one(conn, reference, owner, dry_run).await {
            Ok(outcome) => outcome,
            Err(e) => Outcome::Failed {
                error: e.to_string(),
            },
        };
        out.push(Pruned {
            reference: reference.clone(),
            outcome,
        });
    }
    out
}

async fn prune_one(
    conn: &Connection,
    reference: &ObjectRef,
    owner: &str,
    dry_run: bool,
) -> Result<Outcome, Error> {
    let resolved = match conn.resolve(reference).await {
        Ok(resolved) => resolved,
        Err(Error::UnknownKind { .. }) => return Ok(Outcome::Gone),
        Err(e) => return Err(e),
    };
    let api = conn.api(&resolved, reference.namespace.as_deref());
    let target = || reference.to_string();
    let Some(live) = api
        .get_opt(&reference.name)
        .await
        .map_err(|e| api_error("read before prune", target(), e, None))?
    else {
        return Ok(Outcome::Gone);
    };
    let live = to_value(live, &resolved);
    let meta = |field: &str, key: &str| {
        live.pointer(&format!("/metadata/{field}"))
            .and_then(|m| m.get(key))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    if meta("labels", INVENTORY_LABEL).as_deref() != Some(owner) {
        return Ok(Outcome::NotOwned);
    }
    if meta("annotations", PRUNE_ANNOTATION).as_deref() == Some("disabled") {
        return Ok(Outcome::Kept);
    }
    let params = DeleteParams {
        dry_run,
        propagation_policy: Some(PropagationPolicy::Background),
        ..DeleteParams::default()
    };
    match api.delete(&reference.name, &params).await {
        Ok(_) => Ok(Outcome::Deleted),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(Outcome::Gone),
        Err(e) => Err(api_error("prune", target(), e, None)),
    }
}
