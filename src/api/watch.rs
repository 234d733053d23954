//! What a `Watch*` stream may hold: a slot among its identity's open streams, and its caller's
//! `view` permission, checked again on every event and every [`RECHECK`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tonic::Status;

use crate::api::auth::{self, Authenticator, Permission};
use crate::service::reload::Supervisor;

/// Watch streams (`WatchEnvironments` and `WatchPromotion` together) one identity may have
/// open at once.
pub const WATCHES_PER_IDENTITY: usize = 16;

/// How often an open watch checks that its caller still holds `view`, events or not.
pub const RECHECK: Duration = Duration::from_secs(1);

/// The open watch streams per identity.
#[derive(Clone)]
pub struct Watches {
    per_identity: usize,
    open: Arc<Mutex<HashMap<String, usize>>>,
}

impl Watches {
    /// At most `per_identity` streams per identity.
    pub fn new(per_identity: usize) -> Self {
        Self {
            per_identity,
            open: Arc::default(),
        }
    }

    /// A slot for one more stream of `identity`, held until the slot is dropped (when the
    /// stream ends); RESOURCE_EXHAUSTED when it has the most open already.
    pub fn open(&self, identity: &str) -> Result<WatchSlot, Status> {
        let mut open = self
            .open
            .lock()
            .expect("the watch table is never held across a panic");
        let count = open.entry(identity.to_owned()).or_insert(0);
        if *count >= self.per_identity {
            return Err(Status::resource_exhausted(format!(
                "{identity:?} has {} watch streams open, the most allowed; end one first",
                self.per_identity
            )));
        }
        *count += 1;
        Ok(WatchSlot {
            open: self.open.clone(),
            identity: identity.to_owned(),
        })
    }
}

/// One open watch stream of an identity.
pub struct WatchSlot {
    open: Arc<Mutex<HashMap<String, usize>>>,
    identity: String,
}

impl Drop for WatchSlot {
    fn drop(&mut self) {
        let mut open = self
            .open
            .lock()
            .expect("the watch table is never held across a panic");
        if let Some(count) = open.get_mut(&self.identity) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.identity);
            }
        }
    }
}

/// The caller of a watch, looked up again each time: the tokens file and the pipeline's
/// access rules may both have changed since the stream opened.
#[derive(Clone)]
pub struct Watcher {
    pub(super) name: String,
    pub(super) authenticator: Authenticator,
    pub(super) supervisor: Arc<Supervisor>,
}

impl Watcher {
    /// Whether the caller may still view `environment`, under the current tokens and rules.
    pub fn may_view(&self, environment: &str) -> Result<(), Status> {
        let identity = self.authenticator.current(&self.name).ok_or_else(|| {
            Status::permission_denied(format!(
                "{:?} is no longer an identity of the tokens file",
                self.name
            ))
        })?;
        auth::authorize(
            self.supervisor.service().access(),
            &identity,
            environment,
            Permission::View,
        )
        .map_err(Status::from)
    }

    /// Ok when the caller may view at least one environment of the pipeline now;
    /// PERMISSION_DENIED otherwise.
    pub fn views_any(&self) -> Result<(), Status> {
        let service = self.supervisor.service();
        if service
            .pipeline()
            .environments
            .iter()
            .any(|env| self.may_view(&env.name).is_ok())
        {
            Ok(())
        } else {
            Err(Status::permission_denied(format!(
                "permission \"view\" is not granted to {:?} on any environment",
                self.name
            )))
        }
    }
}

/// How many [`RECHECK`] periods a watch whose service stopped waits for the reloaded one.
const RELOAD_WAIT: u32 = 10;

/// Returns once `supervisor` runs a service other than `stopped` (a reload replaced it), or
/// after [`RELOAD_WAIT`] ticks of `ticks` (the server stops).
pub async fn until_replaced(
    supervisor: &Supervisor,
    stopped: &Arc<crate::service::Service>,
    ticks: &mut tokio::time::Interval,
) {
    for _ in 0..RELOAD_WAIT {
        if !Arc::ptr_eq(stopped, &supervisor.service()) {
            return;
        }
        ticks.tick().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_identity_gets_its_slots_back_when_its_streams_end() {
        let watches = Watches::new(2);
        let a = watches.open("ann").expect("first");
        let _b = watches.open("ann").expect("second");
        let refused = watches.open("ann").err().expect("a third is refused");
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert!(refused.message().contains("\"ann\""), "{refused:?}");
        watches.open("bo").expect("others are counted apart");
        drop(a);
        watches.open("ann").expect("a slot is free again");
    }
}
