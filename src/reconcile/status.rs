//! What an environment's reconciliation looks like from outside: its status and its events.

use std::fmt;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::cluster::ObjectRef;
use crate::cluster::apply::Change;
use crate::cluster::health::{Health, HealthStatus};
use crate::cluster::prune::Pruned;

/// Why an environment is in the state it is in; one reason per failing stage, as Flux has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Default)]
pub enum Reason {
    /// No pass has finished yet.
    #[default]
    Pending,
    Succeeded,
    /// Applied; some objects are not healthy yet.
    Progressing,
    Suspended,
    SourceFailed,
    InvalidObjects,
    EmptySource,
    ConnectFailed,
    ClusterUnreachable,
    InventoryFailed,
    /// Another writer changed the inventory during the pass; this pass wrote nothing over it.
    InventoryConflict,
    ApplyFailed,
    PruneFailed,
    /// The pass would have pruned more than `sync.maxPrunePercent` of the environment.
    PruneWithheld,
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

/// One object of the last pass.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ObjectStatus {
    pub reference: ObjectRef,
    pub change: Change,
    pub health: Option<Health>,
}

/// Fields someone changed in the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Drift {
    pub reference: ObjectRef,
    pub fields: Vec<String>,
    /// Put back by self-heal in the same pass.
    pub healed: bool,
}

/// An environment's reconciliation status. Holds no Secret values.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EnvironmentStatus {
    pub environment: String,
    pub reason: Reason,
    /// For people: what the last pass did or why it failed.
    pub message: String,
    pub suspended: bool,
    /// The revision the last pass tried.
    pub attempted_revision: Option<String>,
    /// The revision whose every object was applied last.
    pub applied_revision: Option<String>,
    pub last_attempt: Option<SystemTime>,
    pub last_applied: Option<SystemTime>,
    pub last_error: Option<String>,
    /// Consecutive failed passes.
    pub failures: u32,
    /// Passes run so far.
    pub passes: u64,
    /// When the loop runs next unless triggered; `None` while suspended or waiting for a change.
    pub next_attempt_in: Option<Duration>,
    pub objects: Vec<ObjectStatus>,
    pub pruned: Vec<Pruned>,
    pub drift: Vec<Drift>,
    pub health: Option<HealthStatus>,
}

impl EnvironmentStatus {
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
        }
    }

    /// The status of one object of the last pass.
    pub fn object(&self, kind: &str, name: &str) -> Option<&ObjectStatus> {
        self.objects
            .iter()
            .find(|o| o.reference.kind == kind && o.reference.name == name)
    }
}

/// Something worth telling about an environment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Event {
    pub environment: String,
    pub kind: EventKind,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum EventKind {
    Drifted { object: String, fields: Vec<String> },
    Healed { object: String, fields: Vec<String> },
    Pruned { object: String },
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
