//! Promotions on approval: a revision of one environment moves into the next through
//! pre-flight, approvals, freeze windows and a queue per target, then a commit in Git, a sync and
//! a verification of the target. Rollbacks take the same road.
//!
//! ```text
//!  Pending ──pre-flight──► AwaitingApproval ──approvals──► Approved ──queue, freeze──► Promoting
//!     │                          │                            │                          │ commit
//!     └──────► Failed            └──► Rejected | Aborted ◄────┘              Syncing ◄───┘
//!                                                                               │ applied
//!                               Succeeded ◄──Healthy, Job and checks passed── Verifying
//! ```
//!
//! Every transition is written to the store (compare-and-swap on the state the engine saw)
//! *before* it takes effect, with who, when and why; after a crash each open promotion is
//! picked up in its stored state. The Git step is idempotent by the promotion's trailer, so a
//! promotion killed while committing lands exactly one commit. `policy` holds the pure rules;
//! `engine` the calls the API makes; `lane` the loop that moves the promotions of one target.

mod checks;
pub mod compare;
mod engine;
mod lane;
pub mod policy;
pub mod verify;
mod verifying;

use std::time::Duration;

pub use engine::{Blocker, BlockerKind, Engine, PromotionView};

use crate::git;
use crate::service::UnknownEnvironment;
use crate::store::{self, PromotionState};

/// Who calls: an authenticated identity, or Stagehand itself (auto-promotion).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    /// The identity's name, as transitions and the audit log record it.
    pub name: String,
    /// Matched against Git author e-mails (`allowAuthorApproval`); empty for Stagehand.
    pub email: String,
    /// Checked against the environment's `approval.groups`.
    pub groups: Vec<String>,
}

impl Actor {
    /// Stagehand acting on its own, as the audit log names it.
    pub fn stagehand() -> Self {
        Self {
            name: SELF.to_owned(),
            email: String::new(),
            groups: Vec::new(),
        }
    }
}

/// The actor name of Stagehand itself in transitions and the audit log; no identity may have it.
pub const SELF: &str = "stagehand";

/// The identities as they are now (the tokens file after its last reload), so that an approval
/// counts with the approver's groups and e-mail of today, not of the day it was given.
pub trait People: Send + Sync {
    /// The identity called `name` now; `None` once it is gone.
    fn person(&self, name: &str) -> Option<Actor>;
}

/// Why a promotion call was refused or failed. Messages name the environment, revision or
/// promotion, and never a Secret value.
#[derive(Debug, thiserror::Error)]
// Each variant is described by its message, and its fields by the names the message uses.
#[allow(missing_docs)]
pub enum Error {
    #[error(transparent)]
    Unknown(#[from] UnknownEnvironment),
    #[error("environment {environment:?} has no promotesFrom: nothing is promoted into it")]
    NoSource { environment: String },
    #[error("no promotion {id:?}")]
    NotFound { id: String },
    #[error("revision {revision:?}: no such commit in the repository")]
    UnknownRevision {
        revision: String,
        #[source]
        source: git::revision::Error,
    },
    #[error(
        "revision {revision:?} is not in the history of environment {environment:?} (the \
         first-parent line of its branch that ListRevisions shows): {why}"
    )]
    OutsideHistory {
        environment: String,
        revision: String,
        why: &'static str,
    },
    #[error("cannot tell who wrote (or signed) what promoting into {environment:?} would bring")]
    AuthorsUnknown {
        environment: String,
        #[source]
        source: git::history::RangeTooLong,
    },
    #[error(
        "environment {environment:?} requires signed commits (requireSignedCommits), and {} of \
         the commits this promotion would bring {}: {}",
        commits.len(),
        if commits.len() == 1 { "is not signed by an allowed key" } else { "are not signed by an allowed key" },
        commits.join("; ")
    )]
    UnsignedCommits {
        environment: String,
        /// Each as `<short id> "<subject>": <why>`.
        commits: Vec<String>,
    },
    #[error("environment {environment:?}: cannot check signed commits (requireSignedCommits)")]
    AllowedSigners {
        environment: String,
        #[source]
        source: git::allowed_signers::Error,
    },
    #[error("environment {source_env:?} has not applied any revision yet; name one to promote")]
    NothingApplied { source_env: String },
    #[error("{message}")]
    SourceVerificationFailed { message: String },
    #[error(
        "environment {environment:?} has no verified revision to roll back to: no promotion into it passed verification, and the one that failed recorded no earlier revision"
    )]
    NoVerifiedRevision { environment: String },
    #[error(
        "environment {source_env:?} runs {running}, not {revision}; only the revision it runs can be checked for health and soak"
    )]
    SourceNotRunning {
        source_env: String,
        revision: String,
        running: String,
    },
    #[error(
        "environment {source_env:?} is not Healthy at {revision}: {}",
        objects.join(", ")
    )]
    SourceUnhealthy {
        source_env: String,
        revision: String,
        objects: Vec<String>,
    },
    #[error(
        "environment {source_env:?} has run {revision} for less than its soak time of {}; {} to go",
        humantime::format_duration(whole_seconds(*soak)),
        humantime::format_duration(whole_seconds(*remaining))
    )]
    NotSoaked {
        source_env: String,
        revision: String,
        soak: Duration,
        remaining: Duration,
    },
    #[error(
        "environment {target:?} already runs what {revision} would bring; ask for a re-run to promote it again"
    )]
    AlreadyRuns { target: String, revision: String },
    #[error("promotion {id} may not be approved by this identity")]
    Refused {
        id: String,
        #[source]
        refusal: policy::Refusal,
    },
    #[error("promotion {id} is {state}; cannot {action} it")]
    WrongState {
        id: String,
        state: PromotionState,
        action: &'static str,
    },
    #[error("promotion {id}: its stored revision {revision:?} is not a commit id")]
    StoredRevision { id: String, revision: String },
    #[error("promotion {id} is not held by a freeze window")]
    NotFrozen { id: String },
    #[error("cannot build the promotion into {target:?}")]
    Git {
        target: String,
        #[source]
        source: Box<git::promote::Error>,
    },
    #[error("cannot read the repository")]
    Repository(#[source] git::revision::Error),
    #[error("cannot check the target {target:?}")]
    Check {
        target: String,
        #[source]
        source: Box<crate::reconcile::Error>,
    },
    #[error("the promotion store failed; nothing took effect")]
    Store(#[from] store::Error),
    #[error("the service is stopping")]
    Stopping,
    #[error(transparent)]
    NotLeader(#[from] crate::shard::NotLeader),
}

/// A duration for people: whole seconds, rounded up so that a wait never reads as zero.
fn whole_seconds(duration: Duration) -> Duration {
    Duration::from_secs(duration.as_secs() + u64::from(duration.subsec_nanos() > 0))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::Error;

    #[test]
    fn a_soak_still_to_go_reads_in_whole_seconds() {
        let error = Error::NotSoaked {
            source_env: "staging".into(),
            revision: "abc".into(),
            soak: Duration::from_secs(1800),
            remaining: Duration::from_millis(754_321),
        };
        assert!(
            error
                .to_string()
                .ends_with("soak time of 30m; 12m 35s to go"),
            "{error}"
        );
    }
}
