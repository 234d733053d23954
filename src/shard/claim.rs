//! A claim: this replica's right to write something (an environment, the promotions) until a
//! deadline on its own monotonic clock.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::time::Instant;

/// Refused: the replica no longer holds what it was about to write.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("replica {replica} no longer holds {what}: it stopped writing it")]
pub struct Fenced {
    /// `environment "dev"`, or `the leadership` of a pipeline.
    pub what: String,
    /// This replica.
    pub replica: String,
}

/// May this replica write `what` now? Checked right before every write; cheap (an atomic and a
/// clock read). Clones share one state: a renewal extends every clone, a loss ends every clone.
#[derive(Clone)]
pub struct Claim(Arc<Inner>);

struct Inner {
    what: String,
    replica: String,
    /// `None`: for ever (one replica, no Leases).
    deadline: Mutex<Option<Instant>>,
    revoked: AtomicBool,
}

impl std::fmt::Debug for Claim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Claim")
            .field("what", &self.0.what)
            .field("valid", &self.is_valid())
            .finish()
    }
}

impl Claim {
    pub(super) fn forever(what: String, replica: &str) -> Self {
        Self::new(what, replica, None)
    }

    pub(super) fn until(what: String, replica: &str, deadline: Instant) -> Self {
        Self::new(what, replica, Some(deadline))
    }

    fn new(what: String, replica: &str, deadline: Option<Instant>) -> Self {
        Self(Arc::new(Inner {
            what,
            replica: replica.to_owned(),
            deadline: Mutex::new(deadline),
            revoked: AtomicBool::new(false),
        }))
    }

    /// `Ok` while the claim holds: not given up, and its deadline not passed.
    pub fn check(&self) -> Result<(), Fenced> {
        if self.is_valid() {
            Ok(())
        } else {
            Err(Fenced {
                what: self.0.what.clone(),
                replica: self.0.replica.clone(),
            })
        }
    }

    /// Whether the claim holds now.
    pub fn is_valid(&self) -> bool {
        !self.0.revoked.load(Ordering::Acquire)
            && self
                .deadline()
                .is_none_or(|deadline| Instant::now() < deadline)
    }

    /// When it ends unless renewed; `None` for ever.
    pub fn deadline(&self) -> Option<Instant> {
        *self
            .0
            .deadline
            .lock()
            .expect("the deadline lock is never held across a panic")
    }

    /// Moves the deadline later (a renewal); never earlier.
    pub(super) fn extend(&self, deadline: Instant) {
        let mut current = self
            .0
            .deadline
            .lock()
            .expect("the deadline lock is never held across a panic");
        if current.is_some_and(|c| c < deadline) {
            *current = Some(deadline);
        }
    }

    /// Ends the claim for good: every later check fails.
    pub(super) fn revoke(&self) {
        self.0.revoked.store(true, Ordering::Release);
    }

    /// Whether `other` is this very claim (or a clone of it).
    pub(super) fn same(&self, other: &Claim) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl crate::cluster::WriteGuard for Claim {
    fn may_write(&self) -> Result<(), String> {
        self.check().map_err(|fenced| fenced.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_claim_holds_until_its_deadline_or_until_revoked() {
        let claim = Claim::until(
            "environment \"dev\"".into(),
            "a",
            Instant::now() + Duration::from_secs(60),
        );
        let clone = claim.clone();
        assert_eq!(clone.check(), Ok(()));
        claim.revoke();
        assert_eq!(
            clone.check().map_err(|e| e.to_string()),
            Err("replica a no longer holds environment \"dev\": it stopped writing it".into())
        );
        let lapsed = Claim::until("the leadership".into(), "a", Instant::now());
        assert!(!lapsed.is_valid());
        lapsed.extend(Instant::now() + Duration::from_secs(60));
        assert!(
            lapsed.is_valid(),
            "a renewal extends a claim not yet noticed as lapsed"
        );
        assert!(Claim::forever("x".into(), "a").is_valid());
    }
}
