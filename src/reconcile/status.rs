//! What an environment's reconciliation looks like from outside: its status and its events.

use std::fmt;
use std::time::{Duration, SystemTime};

use serde::{Serialize, Serializer};

use crate::cluster::ObjectRef;
use crate::cluster::apply::Change;
use crate::cluster::health::{Health, HealthStatus};
use crate::cluster::ignore::Ignored;
use crate::cluster::prune::{Outcome, Pruned};

/// Why an environment is in the state it is in; one reason per failing stage, as Flux has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// No pass has finished yet.
    #[default]
    Pending,
    /// Applied, and every object is healthy.
    Succeeded,
    /// Applied; some objects are not healthy yet.
    Progressing,
    /// The loop is stopped; nothing is applied.
    Suspended,
    /// The revision could not be fetched or rendered.
    SourceFailed,
    /// A SOPS file of the revision could not be decrypted (no matching key, MAC mismatch).
    DecryptionFailed,
    /// A rendered object is not a valid Kubernetes object (no kind, no name, listed twice).
    InvalidObjects,
    /// The revision has no objects while some are applied; nothing is pruned.
    EmptySource,
    /// The cluster's kubeconfig or client could not be set up.
    ConnectFailed,
    /// The apiserver did not answer.
    ClusterUnreachable,
    /// The inventory could not be read or written.
    InventoryFailed,
    /// Another writer changed the inventory during the pass; this pass wrote nothing over it.
    InventoryConflict,
    /// Some objects were not applied.
    ApplyFailed,
    /// Some objects that left Git could not be deleted.
    PruneFailed,
    /// The pass would have pruned more than `sync.maxPrunePercent` of the environment.
    PruneWithheld,
    /// Some objects failed their health check or its timeout.
    HealthCheckFailed,
    /// The pass took longer than the controller allows.
    TimedOut,
}

impl Reason {
    /// A label for metrics and logs.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Succeeded => "succeeded",
            Self::Progressing => "progressing",
            Self::Suspended => "suspended",
            Self::SourceFailed => "source_failed",
            Self::DecryptionFailed => "decryption_failed",
            Self::InvalidObjects => "invalid_objects",
            Self::EmptySource => "empty_source",
            Self::ConnectFailed => "connect_failed",
            Self::ClusterUnreachable => "cluster_unreachable",
            Self::InventoryFailed => "inventory_failed",
            Self::InventoryConflict => "inventory_conflict",
            Self::ApplyFailed => "apply_failed",
            Self::PruneFailed => "prune_failed",
            Self::PruneWithheld => "prune_withheld",
            Self::HealthCheckFailed => "health_check_failed",
            Self::TimedOut => "timed_out",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One object of the last pass. Serialised as the gRPC `ObjectStatus`: `object` (full name),
/// `action`, `health`, `message` (the error of a failed apply, else the health message),
/// `driftedFields` and `ignoredFields`, plus `changedFields`.
#[derive(Debug, Clone, PartialEq)]
pub struct ObjectStatus {
    /// The object.
    pub reference: ObjectRef,
    /// What applying did to it.
    pub change: Change,
    /// Its health after the apply; `None` in a plan.
    pub health: Option<Health>,
    /// Fields that differ from Git but that `ignoreDifferences` leaves alone.
    pub ignored: Vec<Ignored>,
}

/// Fields someone changed in the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Drift {
    /// The object.
    #[serde(rename = "object", serialize_with = "full_name")]
    pub reference: ObjectRef,
    /// The changed field paths.
    pub fields: Vec<String>,
    /// Put back by self-heal in the same pass.
    pub healed: bool,
}

/// An environment's reconciliation status. Holds no Secret values. Serialised for people and
/// programs (`stagehand sync -o json`) in camelCase with full object names and RFC 3339 times,
/// field names as in the gRPC `EnvironmentStatus`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EnvironmentStatus {
    /// The environment's name.
    pub environment: String,
    /// Why it is in this state: the outcome of the last pass or the stage that failed.
    pub reason: Reason,
    /// For people: what the last pass did or why it failed.
    pub message: String,
    /// Whether the loop is stopped.
    pub suspended: bool,
    /// The revision the last pass tried.
    pub attempted_revision: Option<String>,
    /// The revision whose every object was applied last.
    pub applied_revision: Option<String>,
    /// When the last pass started (the gRPC `last_sync_time`).
    #[serde(rename = "lastSyncTime", serialize_with = "rfc3339")]
    pub last_attempt: Option<SystemTime>,
    /// When a pass last applied every object (the gRPC `last_applied_time`).
    #[serde(rename = "lastAppliedTime", serialize_with = "rfc3339")]
    pub last_applied: Option<SystemTime>,
    /// The error of the last pass with its causes; `None` after a pass that succeeded.
    pub last_error: Option<String>,
    /// Consecutive failed passes.
    pub failures: u32,
    /// Passes run so far.
    pub passes: u64,
    /// When the loop runs next unless triggered; `None` while suspended or waiting for a change.
    #[serde(serialize_with = "duration")]
    pub next_attempt_in: Option<Duration>,
    /// Every object of the last pass, in apply order.
    pub objects: Vec<ObjectStatus>,
    /// What the last pass did to objects that left Git.
    #[serde(serialize_with = "pruned_list")]
    pub pruned: Vec<Pruned>,
    /// Objects someone changed in the cluster, found by the last pass.
    pub drift: Vec<Drift>,
    /// The worst health of the last pass's objects.
    pub health: Option<HealthStatus>,
    /// The replica that ran the last pass, when several share the work.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replica: Option<String>,
}

/// An object's full Kubernetes name, as people and the gRPC `ObjectRef` spell it; the inventory
/// keeps the compact `g`/`v`/`k`/`ns`/`n` form of [`ObjectRef`] itself.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct FullName<'a> {
    api_version: String,
    kind: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    namespace: Option<&'a str>,
    name: &'a str,
}

impl<'a> From<&'a ObjectRef> for FullName<'a> {
    fn from(r: &'a ObjectRef) -> Self {
        Self {
            api_version: r.api_version(),
            kind: &r.kind,
            namespace: r.namespace.as_deref(),
            name: &r.name,
        }
    }
}

fn full_name<S: Serializer>(r: &ObjectRef, s: S) -> Result<S::Ok, S::Error> {
    FullName::from(r).serialize(s)
}

/// `2026-11-28T14:05:09.123Z`.
fn rfc3339<S: Serializer>(time: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
    match time {
        Some(t) => s.serialize_str(&humantime::format_rfc3339_millis(*t).to_string()),
        None => s.serialize_none(),
    }
}

/// `30s`, `5m`: as durations are written in the pipeline file.
fn duration<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_str(&humantime::format_duration(*d).to_string()),
        None => s.serialize_none(),
    }
}

/// One pruned object: `object`, `outcome` (`deleted`, `gone`, `notOwned`, `kept`, `failed`) and
/// for a failure its `error`.
#[derive(Serialize)]
struct PrunedView<'a> {
    object: FullName<'a>,
    #[serde(flatten)]
    outcome: &'a Outcome,
}

fn pruned_list<S: Serializer>(list: &[Pruned], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(list.iter().map(|p| PrunedView {
        object: FullName::from(&p.reference),
        outcome: &p.outcome,
    }))
}

impl Serialize for ObjectStatus {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap as _;
        let mut map = s.serialize_map(None)?;
        map.serialize_entry("object", &FullName::from(&self.reference))?;
        let action = match &self.change {
            Change::Created => "created",
            Change::Adopted => "adopted",
            Change::Configured { fields } => {
                map.serialize_entry("changedFields", fields)?;
                "configured"
            }
            Change::Unchanged => "unchanged",
            Change::Drifted { fields } => {
                map.serialize_entry("driftedFields", fields)?;
                "drifted"
            }
            Change::Healed { fields } => {
                map.serialize_entry("driftedFields", fields)?;
                "healed"
            }
            Change::Recreated => "recreated",
            Change::Failed { .. } => "failed",
        };
        map.serialize_entry("action", action)?;
        if !self.ignored.is_empty() {
            map.serialize_entry("ignoredFields", &self.ignored)?;
        }
        if let Some(health) = &self.health {
            map.serialize_entry("health", &health.status)?;
        }
        match (&self.change, &self.health) {
            (Change::Failed { error }, _) => map.serialize_entry("message", error)?,
            (_, Some(health)) => map.serialize_entry("message", &health.message)?,
            _ => {}
        }
        map.end()
    }
}

/// One object a sync would change, as `stagehand diff` and the gRPC `ObjectDiff` show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectDiff {
    /// The object.
    #[serde(rename = "object", serialize_with = "full_name")]
    pub reference: ObjectRef,
    /// `create`, `update`, `recreate`, `failed`, `prune`, `skip` for an object that left Git
    /// but is not pruned (not ours, or annotated to be kept), or `ignore` for an object that
    /// differs from Git only in fields `ignoreDifferences` leaves alone.
    pub change: &'static str,
    /// The changed field paths, one a line; a failure's error; what pruning would do.
    pub diff: String,
    /// For a Secret: the keys under `data` or `stringData` whose value changes (never a value).
    pub changed_secret_keys: Vec<String>,
    /// Fields that differ from Git but that `ignoreDifferences` leaves alone.
    pub ignored_fields: Vec<Ignored>,
}

/// The data key a field path of a Secret names: `.data.password`, `.stringData["tls.crt"]`.
fn secret_key(path: &str) -> Option<String> {
    let rest = path
        .strip_prefix(".data")
        .or_else(|| path.strip_prefix(".stringData"))?;
    if let Some(key) = rest.strip_prefix('.') {
        return Some(key.to_owned());
    }
    let quoted = rest.strip_prefix('[')?.strip_suffix(']')?;
    serde_json::from_str(quoted).ok()
}

impl super::Plan {
    /// What would change, object by object: the objects a sync would write (unchanged ones
    /// left out, unless they differ in ignored fields: `ignore`), then those that left Git.
    pub fn diffs(&self) -> Vec<ObjectDiff> {
        let applied = self.objects.iter().filter_map(|o| {
            let (change, diff) = match &o.change {
                Change::Unchanged if o.ignored.is_empty() => return None,
                Change::Unchanged => ("ignore", Vec::new()),
                Change::Created => ("create", Vec::new()),
                Change::Adopted => ("adopt", Vec::new()),
                Change::Configured { fields }
                | Change::Drifted { fields }
                | Change::Healed { fields } => ("update", fields.clone()),
                Change::Recreated => ("recreate", Vec::new()),
                Change::Failed { error } => ("failed", vec![error.clone()]),
            };
            let changed_secret_keys = if o.reference.is_secret() && change == "update" {
                diff.iter().filter_map(|f| secret_key(f)).collect()
            } else {
                Vec::new()
            };
            Some(ObjectDiff {
                reference: o.reference.clone(),
                change,
                diff: diff.join("\n"),
                changed_secret_keys,
                ignored_fields: o.ignored.clone(),
            })
        });
        let pruned = self.prune.iter().map(|p| ObjectDiff {
            reference: p.reference.clone(),
            change: match p.outcome {
                Outcome::Deleted => "prune",
                Outcome::Failed { .. } => "failed",
                Outcome::Gone
                | Outcome::NotOwned
                | Outcome::Kept
                | Outcome::KeptAdopted
                | Outcome::Orphaned { .. }
                | Outcome::Withheld { .. } => "skip",
            },
            diff: p.outcome.to_string(),
            changed_secret_keys: Vec::new(),
            ignored_fields: Vec::new(),
        });
        applied.chain(pruned).collect()
    }
}

impl Serialize for super::Plan {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct as _;
        let mut plan = s.serialize_struct("Plan", 2)?;
        plan.serialize_field("revision", &self.revision)?;
        plan.serialize_field("objects", &self.diffs())?;
        plan.end()
    }
}

impl EnvironmentStatus {
    /// The status before the first pass.
    pub fn new(environment: &str, suspended: bool) -> Self {
        Self {
            environment: environment.to_owned(),
            reason: if suspended {
                Reason::Suspended
            } else {
                Reason::Pending
            },
            message: String::new(),
            suspended,
            attempted_revision: None,
            applied_revision: None,
            last_attempt: None,
            last_applied: None,
            last_error: None,
            failures: 0,
            passes: 0,
            next_attempt_in: None,
            objects: Vec::new(),
            pruned: Vec::new(),
            drift: Vec::new(),
            health: None,
            replica: None,
        }
    }

    /// A status as [`EnvironmentStatus`] serialises it, read back: how a replica shows an
    /// environment another replica reconciles, from what that one saved in the store. What
    /// pruning did is not read back (it is in the sync history); fields that do not parse are
    /// left as before the first pass.
    pub fn from_saved(environment: &str, saved: &serde_json::Value) -> Self {
        let text = |field: &str| saved.get(field).and_then(|v| v.as_str()).map(str::to_owned);
        let time = |field: &str| {
            saved
                .get(field)
                .and_then(|v| v.as_str())
                .and_then(|t| humantime::parse_rfc3339_weak(t).ok())
        };
        let number = |field: &str| saved.get(field).and_then(serde_json::Value::as_u64);
        let mut status = Self::new(
            environment,
            saved
                .get("suspended")
                .and_then(|v| v.as_bool())
                .unwrap_or(false),
        );
        if let Some(reason) = text("reason").and_then(|r| Reason::parse(&r)) {
            status.reason = reason;
        }
        status.message = text("message").unwrap_or_default();
        status.attempted_revision = text("attemptedRevision");
        status.applied_revision = text("appliedRevision");
        status.last_attempt = time("lastSyncTime");
        status.last_applied = time("lastAppliedTime");
        status.last_error = text("lastError");
        status.failures = number("failures")
            .and_then(|n| u32::try_from(n).ok())
            .unwrap_or(0);
        status.passes = number("passes").unwrap_or(0);
        status.next_attempt_in =
            text("nextAttemptIn").and_then(|d| humantime::parse_duration(&d).ok());
        status.health = text("health").and_then(|h| health_status(&h));
        status.replica = text("replica");
        let list = |field: &str| {
            saved
                .get(field)
                .and_then(|v| v.as_array())
                .cloned()
                .unwrap_or_default()
        };
        status.objects = list("objects").iter().filter_map(saved_object).collect();
        status.drift = list("drift")
            .iter()
            .filter_map(|d| {
                Some(Drift {
                    reference: saved_reference(d.get("object")?)?,
                    fields: strings(d.get("fields")),
                    healed: d.get("healed").and_then(|v| v.as_bool()).unwrap_or(false),
                })
            })
            .collect();
        status
    }

    /// The status of one object of the last pass.
    pub fn object(&self, kind: &str, name: &str) -> Option<&ObjectStatus> {
        self.objects
            .iter()
            .find(|o| o.reference.kind == kind && o.reference.name == name)
    }
}

impl Reason {
    /// The reason [`Reason::as_str`] names.
    pub fn parse(name: &str) -> Option<Self> {
        use Reason::*;
        [
            Pending,
            Succeeded,
            Progressing,
            Suspended,
            SourceFailed,
            DecryptionFailed,
            InvalidObjects,
            EmptySource,
            ConnectFailed,
            ClusterUnreachable,
            InventoryFailed,
            InventoryConflict,
            ApplyFailed,
            PruneFailed,
            PruneWithheld,
            HealthCheckFailed,
            TimedOut,
        ]
        .into_iter()
        .find(|reason| reason.as_str() == name)
    }
}

fn health_status(name: &str) -> Option<HealthStatus> {
    [
        HealthStatus::Healthy,
        HealthStatus::Progressing,
        HealthStatus::Failed,
    ]
    .into_iter()
    .find(|h| h.to_string() == name)
}

fn strings(value: Option<&serde_json::Value>) -> Vec<String> {
    value
        .and_then(|v| v.as_array())
        .map(|items| {
            items
                .iter()
                .filter_map(|i| i.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// An object's reference from its full name (see [`FullName`]).
fn saved_reference(value: &serde_json::Value) -> Option<ObjectRef> {
    let api_version = value.get("apiVersion")?.as_str()?;
    let (group, version) = match api_version.split_once('/') {
        Some((group, version)) => (group, version),
        None => ("", api_version),
    };
    Some(ObjectRef {
        group: group.to_owned(),
        version: version.to_owned(),
        kind: value.get("kind")?.as_str()?.to_owned(),
        namespace: value
            .get("namespace")
            .and_then(|n| n.as_str())
            .map(str::to_owned),
        name: value.get("name")?.as_str()?.to_owned(),
    })
}

/// An object of a saved status (see the `Serialize` impl of [`ObjectStatus`]).
fn saved_object(value: &serde_json::Value) -> Option<ObjectStatus> {
    let message = value
        .get("message")
        .and_then(|m| m.as_str())
        .unwrap_or_default()
        .to_owned();
    let change = match value.get("action")?.as_str()? {
        "created" => Change::Created,
        "adopted" => Change::Adopted,
        "configured" => Change::Configured {
            fields: strings(value.get("changedFields")),
        },
        "unchanged" => Change::Unchanged,
        "drifted" => Change::Drifted {
            fields: strings(value.get("driftedFields")),
        },
        "healed" => Change::Healed {
            fields: strings(value.get("driftedFields")),
        },
        "recreated" => Change::Recreated,
        "failed" => Change::Failed {
            error: message.clone(),
        },
        _ => return None,
    };
    let health = value
        .get("health")
        .and_then(|h| h.as_str())
        .and_then(health_status)
        .map(|status| Health { status, message });
    let ignored = value
        .get("ignoredFields")
        .and_then(|v| v.as_array())
        .into_iter()
        .flatten()
        .filter_map(|i| {
            Some(Ignored {
                field: i.get("field")?.as_str()?.to_owned(),
                rule: usize::try_from(i.get("rule")?.as_u64()?).ok()?,
            })
        })
        .collect();
    Some(ObjectStatus {
        reference: saved_reference(value.get("object")?)?,
        change,
        health,
        ignored,
    })
}

/// Something worth telling about an environment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Event {
    /// The environment it happened in.
    pub environment: String,
    /// What happened.
    pub kind: EventKind,
}

/// What happened; `object` is the object's reference as people read it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[allow(missing_docs)] // the variant documentation names the fields
pub enum EventKind {
    /// Someone changed `fields` of `object` in the cluster; left alone.
    Drifted { object: String, fields: Vec<String> },
    /// Someone changed `fields` of `object` in the cluster; put back.
    Healed { object: String, fields: Vec<String> },
    /// `object` left Git and was deleted.
    Pruned { object: String },
    /// A pass failed at the stage `reason` names.
    Failed { reason: Reason, message: String },
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Drifted { object, fields } => {
                write!(f, "{object} drifted from Git in {}", fields.join(", "))
            }
            Self::Healed { object, fields } => {
                write!(
                    f,
                    "{object} drifted in {} and was put back",
                    fields.join(", ")
                )
            }
            Self::Pruned { object } => write!(f, "{object} left Git and was deleted"),
            Self::Failed { reason, message } => write!(f, "{reason}: {message}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn reference(kind: &str, namespace: Option<&str>, name: &str) -> ObjectRef {
        ObjectRef {
            group: if kind == "Deployment" { "apps" } else { "" }.into(),
            version: "v1".into(),
            kind: kind.into(),
            namespace: namespace.map(str::to_owned),
            name: name.into(),
        }
    }

    #[test]
    fn a_status_serialises_in_camel_case_with_full_names_and_rfc3339_times() {
        let mut status = EnvironmentStatus::new("dev", false);
        status.reason = Reason::Progressing;
        status.last_attempt =
            Some(SystemTime::UNIX_EPOCH + Duration::from_millis(1_764_338_709_123));
        status.next_attempt_in = Some(Duration::from_secs(90));
        status.objects = vec![
            ObjectStatus {
                reference: reference("Deployment", Some("shop"), "web"),
                change: Change::Configured {
                    fields: vec![".spec.replicas".into()],
                },
                health: Some(Health {
                    status: HealthStatus::Progressing,
                    message: "1 of 3 replicas updated".into(),
                }),
                ignored: Vec::new(),
            },
            ObjectStatus {
                reference: reference("Namespace", None, "shop"),
                change: Change::Drifted {
                    fields: vec![".metadata.labels".into()],
                },
                health: None,
                ignored: Vec::new(),
            },
        ];
        status.pruned = vec![Pruned {
            reference: reference("ConfigMap", Some("shop"), "old"),
            outcome: Outcome::Failed {
                error: "forbidden".into(),
            },
        }];
        let value = serde_json::to_value(&status).expect("a status serialises");
        assert_eq!(value["reason"], "progressing");
        assert_eq!(value["lastSyncTime"], "2025-11-28T14:05:09.123Z");
        assert_eq!(value["lastAppliedTime"], Value::Null);
        assert_eq!(value["nextAttemptIn"], "1m 30s");
        assert_eq!(
            value["objects"],
            json!([
                {"object": {"apiVersion": "apps/v1", "kind": "Deployment", "namespace": "shop",
                            "name": "web"},
                 "changedFields": [".spec.replicas"], "action": "configured",
                 "health": "Progressing", "message": "1 of 3 replicas updated"},
                {"object": {"apiVersion": "v1", "kind": "Namespace", "name": "shop"},
                 "driftedFields": [".metadata.labels"], "action": "drifted"}
            ])
        );
        assert_eq!(
            value["pruned"],
            json!([{"object": {"apiVersion": "v1", "kind": "ConfigMap", "namespace": "shop",
                               "name": "old"}, "outcome": "failed", "error": "forbidden"}])
        );
    }
}

#[cfg(test)]
mod saved_tests {
    use super::*;

    #[test]
    fn a_saved_status_reads_back_as_it_was_but_for_what_pruning_did() {
        let mut status = EnvironmentStatus::new("prod", false);
        status.reason = Reason::HealthCheckFailed;
        status.message = "1 object unhealthy".into();
        status.attempted_revision = Some("abc".into());
        status.applied_revision = Some("abc".into());
        status.last_attempt =
            Some(SystemTime::UNIX_EPOCH + Duration::from_millis(1_764_338_709_123));
        status.last_error = Some("Job shop/verify failed".into());
        status.failures = 2;
        status.passes = 7;
        status.next_attempt_in = Some(Duration::from_secs(4));
        status.health = Some(HealthStatus::Failed);
        status.replica = Some("stagehand-1".into());
        let web = ObjectRef {
            group: "apps".into(),
            version: "v1".into(),
            kind: "Deployment".into(),
            namespace: Some("shop".into()),
            name: "web".into(),
        };
        status.objects = vec![
            ObjectStatus {
                reference: web.clone(),
                change: Change::Healed {
                    fields: vec![".spec.replicas".into()],
                },
                health: Some(Health {
                    status: HealthStatus::Healthy,
                    message: "rolled out".into(),
                }),
                ignored: vec![Ignored {
                    field: ".spec.template.metadata.annotations[\"example.com/at\"]".into(),
                    rule: 1,
                }],
            },
            ObjectStatus {
                reference: ObjectRef {
                    group: "batch".into(),
                    version: "v1".into(),
                    kind: "Job".into(),
                    namespace: Some("shop".into()),
                    name: "verify".into(),
                },
                change: Change::Failed {
                    error: "forbidden".into(),
                },
                health: None,
                ignored: Vec::new(),
            },
        ];
        status.drift = vec![Drift {
            reference: web,
            fields: vec![".spec.replicas".into()],
            healed: true,
        }];
        let saved = serde_json::to_value(&status).expect("a status serialises");
        assert_eq!(EnvironmentStatus::from_saved("prod", &saved), status);
    }
}

#[cfg(test)]
mod plan_tests {
    use super::*;
    use crate::reconcile::Plan;
    use serde_json::json;

    fn secret(name: &str) -> ObjectRef {
        ObjectRef {
            group: String::new(),
            version: "v1".into(),
            kind: "Secret".into(),
            namespace: Some("shop".into()),
            name: name.into(),
        }
    }

    #[test]
    fn a_plan_serialises_as_object_diffs_naming_changed_secret_keys_and_ignored_fields_and_never_unchanged_objects()
     {
        let plan = Plan {
            revision: "abc".into(),
            objects: vec![
                ObjectStatus {
                    reference: secret("db"),
                    change: Change::Configured {
                        fields: vec![".data.password".into(), ".data[\"tls.crt\"]".into()],
                    },
                    health: None,
                    ignored: Vec::new(),
                },
                ObjectStatus {
                    reference: secret("same"),
                    change: Change::Unchanged,
                    health: None,
                    ignored: Vec::new(),
                },
                ObjectStatus {
                    reference: secret("scaled"),
                    change: Change::Unchanged,
                    health: None,
                    ignored: vec![Ignored {
                        field: ".data.rotated".into(),
                        rule: 0,
                    }],
                },
            ],
            prune: vec![
                Pruned {
                    reference: secret("old"),
                    outcome: Outcome::Deleted,
                },
                Pruned {
                    reference: secret("kept"),
                    outcome: Outcome::Kept,
                },
            ],
        };
        let object = |name: &str| json!({"apiVersion": "v1", "kind": "Secret", "namespace": "shop", "name": name});
        assert_eq!(
            serde_json::to_value(&plan).expect("a plan serialises"),
            json!({"revision": "abc", "objects": [
                {"object": object("db"), "change": "update",
                 "diff": ".data.password\n.data[\"tls.crt\"]",
                 "changedSecretKeys": ["password", "tls.crt"], "ignoredFields": []},
                {"object": object("scaled"), "change": "ignore", "diff": "",
                 "changedSecretKeys": [],
                 "ignoredFields": [{"field": ".data.rotated", "rule": 0}]},
                {"object": object("old"), "change": "prune", "diff": "deleted",
                 "changedSecretKeys": [], "ignoredFields": []},
                {"object": object("kept"), "change": "skip",
                 "diff": "kept: stagehand.dev/prune is disabled", "changedSecretKeys": [],
                 "ignoredFields": []}
            ]})
        );
    }
}
