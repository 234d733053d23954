//! Deleting what left Git, one object at a time in the order given (the inventory's diff
//! gives reverse apply order), and only objects that are ours.
//!
//! Each stale object is read first and sorted: gone, not ours, kept by annotation, kept
//! because it was adopted or is a Namespace or CRD without the opt-in, or to delete. When more
//! than [`Policy::max_percent`] of the environment would be deleted, nothing is (a commit that
//! drops most of an environment is more likely a mistake); otherwise each delete carries the
//! UID that was read, so an object someone deleted and made again in between is left alone.

use std::fmt;

use kube::api::{DeleteParams, Preconditions, PropagationPolicy};
use serde::Serialize;
use serde_json::Value;

use super::apply::to_value;
use super::inventory::Inventory;
use super::{Connection, Error, INVENTORY_LABEL, ObjectRef, PRUNE_ANNOTATION, api_error};

/// What pruning did with one object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "camelCase")]
pub enum Outcome {
    /// Deleted.
    Deleted,
    /// Already gone (deleted by hand, or its kind went with its CRD).
    Gone,
    /// Its [`INVENTORY_LABEL`] names another owner or none: not ours to delete.
    NotOwned,
    /// Annotated [`PRUNE_ANNOTATION`]`: disabled`.
    Kept,
    /// It existed before Stagehand adopted it; left in the cluster without `sync.pruneAdopted`.
    KeptAdopted,
    /// A Namespace or CRD (deleting it deletes everything in it), left in the cluster without
    /// the `setting` that allows pruning it.
    Orphaned {
        /// The `sync` setting, such as `pruneNamespaces`.
        setting: &'static str,
    },
    /// Not deleted because the pass would have deleted `count` of the environment's `total`
    /// objects, more than `max_percent`.
    Withheld {
        /// Objects the pass would have deleted.
        count: usize,
        /// Objects of the environment.
        total: usize,
        /// The limit.
        max_percent: u8,
    },
    /// The delete failed.
    Failed {
        /// Why.
        error: String,
    },
}

impl Outcome {
    /// Whether the object stays in the inventory, so that a later pass looks at it again.
    pub fn is_retained(&self) -> bool {
        matches!(
            self,
            Self::KeptAdopted | Self::Orphaned { .. } | Self::Withheld { .. } | Self::Failed { .. }
        )
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Deleted => f.write_str("deleted"),
            Self::Gone => f.write_str("already gone"),
            Self::NotOwned => f.write_str("skipped: not owned by this environment"),
            Self::Kept => write!(f, "kept: {PRUNE_ANNOTATION} is disabled"),
            Self::KeptAdopted => {
                f.write_str("kept: it existed before it was adopted (sync.pruneAdopted is off)")
            }
            Self::Orphaned { setting } => write!(f, "orphaned: left in place ({setting} is off)"),
            Self::Withheld {
                count,
                total,
                max_percent,
            } => write!(
                f,
                "withheld: the pass would prune {count} of {total} objects, more than {max_percent}%"
            ),
            Self::Failed { error } => write!(f, "prune failed: {error}"),
        }
    }
}

/// One object pruning looked at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Pruned {
    /// The object.
    pub reference: ObjectRef,
    /// What became of it.
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// What pruning may delete.
#[derive(Debug, Clone)]
pub struct Policy {
    /// The value of [`INVENTORY_LABEL`] on objects that are ours.
    pub owner: String,
    /// Whether Namespaces may be deleted.
    pub namespaces: bool,
    /// Whether CRDs may be deleted.
    pub crds: bool,
    /// Whether adopted objects may be deleted.
    pub adopted: bool,
    /// The largest share of the environment's objects one pass deletes, in percent.
    pub max_percent: u8,
}

impl Policy {
    /// Deletes only what is ours, no Namespace, CRD or adopted object, and at most half.
    pub fn new(owner: impl Into<String>) -> Self {
        Self {
            owner: owner.into(),
            namespaces: false,
            crds: false,
            adopted: false,
            max_percent: 50,
        }
    }
}

/// Deletes each of `stale` (objects of `inventory` that left Git) that `policy` allows, in
/// order. With `dry_run`, says what it would do.
pub async fn prune(
    conn: &Connection,
    stale: &[ObjectRef],
    inventory: &Inventory,
    policy: &Policy,
    dry_run: bool,
) -> Vec<Pruned> {
    let mut out = Vec::with_capacity(stale.len());
    let mut doomed = Vec::new();
    for reference in stale {
        let outcome = match examine(conn, reference, inventory, policy).await {
            Ok(Examined::Delete(uid)) => {
                doomed.push((out.len(), uid));
                Outcome::Deleted
            }
            Ok(Examined::Leave(outcome)) => outcome,
            Err(e) => Outcome::Failed {
                error: e.to_string(),
            },
        };
        out.push(Pruned {
            reference: reference.clone(),
            outcome,
        });
    }
    let total = inventory.len();
    let count = doomed.len();
    if count * 100 > usize::from(policy.max_percent) * total {
        for (index, _) in doomed {
            out[index].outcome = Outcome::Withheld {
                count,
                total,
                max_percent: policy.max_percent,
            };
        }
        return out;
    }
    for (index, uid) in doomed {
        let entry = &mut out[index];
        entry.outcome = match delete(conn, &entry.reference, uid, dry_run).await {
            Ok(outcome) => outcome,
            Err(e) => Outcome::Failed {
                error: e.to_string(),
            },
        };
    }
    out
}

enum Examined {
    /// Ours to delete; the UID as read.
    Delete(String),
    Leave(Outcome),
}

async fn examine(
    conn: &Connection,
    reference: &ObjectRef,
    inventory: &Inventory,
    policy: &Policy,
) -> Result<Examined, Error> {
    let resolved = match conn.resolve(reference).await {
        Ok(resolved) => resolved,
        Err(Error::UnknownKind { .. }) => return Ok(Examined::Leave(Outcome::Gone)),
        Err(e) => return Err(e),
    };
    let api = conn.api(&resolved, reference.namespace.as_deref());
    let Some(live) = api
        .get_opt(&reference.name)
        .await
        .map_err(|e| api_error("read before prune", reference.to_string(), e, None))?
    else {
        return Ok(Examined::Leave(Outcome::Gone));
    };
    let live = to_value(live, &resolved);
    let meta = |field: &str, key: &str| {
        live.pointer(&format!("/metadata/{field}"))
            .and_then(|m| m.get(key))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let leave = |outcome| Ok(Examined::Leave(outcome));
    if meta("labels", INVENTORY_LABEL).as_deref() != Some(policy.owner.as_str()) {
        return leave(Outcome::NotOwned);
    }
    if meta("annotations", PRUNE_ANNOTATION).as_deref() == Some("disabled") {
        return leave(Outcome::Kept);
    }
    if reference.is_namespace() && !policy.namespaces {
        return leave(Outcome::Orphaned {
            setting: "sync.pruneNamespaces",
        });
    }
    if reference.is_crd() && !policy.crds {
        return leave(Outcome::Orphaned {
            setting: "sync.pruneCRDs",
        });
    }
    if inventory.is_adopted(&reference.key()) && !policy.adopted {
        return leave(Outcome::KeptAdopted);
    }
    match live.pointer("/metadata/uid").and_then(Value::as_str) {
        Some(uid) => Ok(Examined::Delete(uid.to_owned())),
        // Without a UID the delete could not be limited to this object.
        None => leave(Outcome::Failed {
            error: format!("{reference}: the apiserver returned it without a UID"),
        }),
    }
}

/// Deletes `reference` if its UID is still `uid` (a precondition the apiserver checks), so that
/// an object someone deleted and made again since it was read is left alone: that is a
/// [`Outcome::Failed`] naming the precondition, tried again on the next pass.
pub async fn delete(
    conn: &Connection,
    reference: &ObjectRef,
    uid: String,
    dry_run: bool,
) -> Result<Outcome, Error> {
    let resolved = conn.resolve(reference).await?;
    let api = conn.api(&resolved, reference.namespace.as_deref());
    let params = DeleteParams {
        dry_run,
        propagation_policy: Some(PropagationPolicy::Background),
        preconditions: Some(Preconditions {
            uid: Some(uid),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    match api.delete(&reference.name, &params).await {
        Ok(_) => Ok(Outcome::Deleted),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(Outcome::Gone),
        Err(e) => Err(api_error("prune", reference.to_string(), e, None)),
    }
}
