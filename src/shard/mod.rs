//! Which replica reconciles which environment, and which one drives promotions.
//!
//! Without `--lease-namespace` there is one replica and it does everything: every [`Claim`] it
//! hands out lasts for ever. With it, replicas agree through `coordination.k8s.io` Leases in
//! that namespace (see [`crate::cluster::lease`]):
//!
//! - each replica holds a membership Lease while it runs; the live members are those whose
//!   membership Lease has not expired;
//! - each environment has a Lease; its preferred holder is picked by rendezvous hashing over the
//!   live members ([`rendezvous`]). A replica takes an environment's Lease when it is the
//!   preferred holder and the Lease is free or expired, and gives up (then releases) those it is
//!   no longer preferred for: a replica that joins gets its share, a dead one's environments move
//!   once its Leases expire;
//! - one leader Lease: its holder drives promotions.
//!
//! Every Lease is renewed every third of its duration. A [`Claim`] stays valid until the
//! moment its last successful renewal was *sent*, plus the duration, minus a margin of a fifth
//! of it; every write for an environment (cluster, store, Git) checks its claim right before it
//! is made. Others take a Lease over only when its version has stood still for the whole
//! duration on their own clock, so a replica cut off from the apiserver has stopped writing
//! before anyone else starts, as long as the replicas' clocks run at rates within a fifth of
//! each other (their times of day may differ freely).
//!
//! The service asks [`Ownership`] before each pass ([`Ownership::watch`]) and before each
//! write ([`Claim::check`]); nothing else in the loops knows about Leases.

mod claim;
mod keeper;
pub mod names;
pub mod rendezvous;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::cluster::lease::Leases;
use crate::metrics::Metrics;

pub use claim::{Claim, Fenced};

/// The shortest Lease duration: renewals every third of it must fit round trips.
pub const MIN_DURATION: Duration = Duration::from_secs(3);

/// How replicas meet.
pub struct Config {
    /// The client of the cluster that holds the Leases.
    pub client: kube::Client,
    /// The namespace of the Leases.
    pub namespace: String,
    /// This replica's identity: unique among the replicas (the pod's name).
    pub replica: String,
    /// How long a Lease lasts without renewal; at least [`MIN_DURATION`].
    pub duration: Duration,
}

/// Refused: this replica does not drive promotions; send writes to the leader.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "replica {replica} is not the leader; {}",
    match leader {
        Some(leader) => format!("replica {leader} drives promotions and takes writes: send them there"),
        None => "no replica leads right now: try again in a few seconds".to_owned(),
    }
)]
pub struct NotLeader {
    /// This replica.
    pub replica: String,
    /// The leader, as last seen.
    pub leader: Option<String>,
}

/// Refused: another replica reconciles the environment.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "environment {environment:?} is reconciled by {}, not by replica {replica}: send this there",
    match holder {
        Some(holder) => format!("replica {holder}"),
        None => "no replica right now (it is moving)".to_owned(),
    }
)]
pub struct NotHolder {
    /// The environment.
    pub environment: String,
    /// This replica.
    pub replica: String,
    /// The replica that holds it, as last listed.
    pub holder: Option<String>,
}

/// Who holds the leadership, as this replica last saw it.
#[derive(Debug, Clone, Default)]
pub struct Leadership {
    /// This replica's claim, while it leads.
    pub claim: Option<Claim>,
    /// The replica that leads, as last listed; `None` when nobody does.
    pub holder: Option<String>,
}

/// Which environments this replica may reconcile and whether it drives promotions. Clones share
/// one state; one per process (a reloaded pipeline keeps its Leases).
#[derive(Clone)]
pub struct Ownership(Arc<Shared>);

struct Slot {
    claim: watch::Sender<Option<Claim>>,
    /// The replica holding the environment's Lease, as last listed.
    holder: Option<String>,
}

/// The environments the running pipeline has.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Environments {
    pipeline: String,
    names: Vec<String>,
}

struct Shared {
    replica: String,
    /// `None` with one replica.
    leased: Option<Leased>,
    slots: Mutex<HashMap<String, Slot>>,
    leadership: watch::Sender<Leadership>,
    environments: watch::Sender<Option<Environments>>,
    metrics: Option<Arc<Metrics>>,
}

struct Leased {
    duration: Duration,
    stop: watch::Sender<bool>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Ownership {
    /// One replica, no Leases: it holds everything for ever.
    pub fn single(replica: &str) -> Self {
        let forever = Claim::forever("the leadership".to_owned(), replica);
        Self(Arc::new(Shared {
            replica: replica.to_owned(),
            leased: None,
            slots: Mutex::default(),
            leadership: watch::channel(Leadership {
                claim: Some(forever),
                holder: Some(replica.to_owned()),
            })
            .0,
            environments: watch::channel(None).0,
            metrics: None,
        }))
    }

    /// Several replicas meeting through Leases; starts the loop that keeps them. Must run inside
    /// a tokio runtime.
    pub fn leased(config: Config, metrics: Arc<Metrics>) -> Self {
        let duration = config.duration.max(MIN_DURATION);
        let (stop, stopped) = watch::channel(false);
        let shared = Arc::new(Shared {
            replica: config.replica.clone(),
            leased: Some(Leased {
                duration,
                stop,
                task: Mutex::new(None),
            }),
            slots: Mutex::default(),
            leadership: watch::channel(Leadership::default()).0,
            environments: watch::channel(None).0,
            metrics: Some(metrics),
        });
        let leases = Leases::new(config.client, &config.namespace);
        let task = tokio::spawn(keeper::run(
            Arc::downgrade(&shared),
            leases,
            duration,
            stopped,
        ));
        if let Some(leased) = &shared.leased
            && let Ok(mut slot) = leased.task.lock()
        {
            *slot = Some(task);
        }
        Self(shared)
    }

    /// This replica's identity.
    pub fn replica(&self) -> &str {
        &self.0.replica
    }

    /// Whether replicas share the work through Leases.
    pub fn is_leased(&self) -> bool {
        self.0.leased.is_some()
    }

    /// The Lease duration; `None` with one replica.
    pub fn duration(&self) -> Option<Duration> {
        self.0.leased.as_ref().map(|l| l.duration)
    }

    /// Sets the environments of the running pipeline (at start and after a reload).
    pub fn set_pipeline(&self, pipeline: &str, environments: &[String]) {
        {
            let mut slots = self
                .0
                .slots
                .lock()
                .expect("the slots lock is never poisoned");
            for name in environments {
                slots.entry(name.clone()).or_insert_with(|| {
                    let claim = match &self.0.leased {
                        None => Some(Claim::forever(
                            format!("environment {name:?}"),
                            &self.0.replica,
                        )),
                        Some(_) => None,
                    };
                    Slot {
                        claim: watch::channel(claim).0,
                        holder: self.0.leased.is_none().then(|| self.0.replica.clone()),
                    }
                });
            }
        }
        self.0.environments.send_replace(Some(Environments {
            pipeline: pipeline.to_owned(),
            names: environments.to_vec(),
        }));
    }

    /// This replica's claim on `environment`, while it holds it.
    pub fn claim(&self, environment: &str) -> Option<Claim> {
        let slots = self
            .0
            .slots
            .lock()
            .expect("the slots lock is never poisoned");
        let claim = slots.get(environment)?.claim.borrow().clone()?;
        claim.is_valid().then_some(claim)
    }

    /// A receiver of this replica's claim on `environment`: `Some` while it holds it. `None`
    /// for an environment [`Ownership::set_pipeline`] never named.
    pub fn watch(&self, environment: &str) -> Option<watch::Receiver<Option<Claim>>> {
        let slots = self
            .0
            .slots
            .lock()
            .expect("the slots lock is never poisoned");
        slots.get(environment).map(|slot| slot.claim.subscribe())
    }

    /// The replica that holds `environment`, as last listed.
    pub fn holder(&self, environment: &str) -> Option<String> {
        let slots = self
            .0
            .slots
            .lock()
            .expect("the slots lock is never poisoned");
        slots.get(environment).and_then(|slot| slot.holder.clone())
    }

    /// This replica's claim on the leadership, while it leads.
    pub fn leader(&self) -> Option<Claim> {
        let leadership = self.0.leadership.borrow();
        leadership.claim.clone().filter(Claim::is_valid)
    }

    /// This replica's claim on the leadership, or why it has none.
    pub fn lead(&self) -> Result<Claim, NotLeader> {
        self.leader().ok_or_else(|| NotLeader {
            replica: self.0.replica.clone(),
            leader: self.0.leadership.borrow().holder.clone(),
        })
    }

    /// This replica's claim on `environment`, or who holds it instead.
    pub fn hold(&self, environment: &str) -> Result<Claim, NotHolder> {
        self.claim(environment).ok_or_else(|| NotHolder {
            environment: environment.to_owned(),
            replica: self.0.replica.clone(),
            holder: self.holder(environment),
        })
    }

    /// A receiver of the leadership as this replica sees it.
    pub fn leadership(&self) -> watch::Receiver<Leadership> {
        self.0.leadership.subscribe()
    }

    /// Gives up everything this replica holds, releasing its Leases so that the others take
    /// over at once rather than after expiry. Every claim ends before its Lease is released.
    pub async fn shutdown(&self) {
        let Some(leased) = &self.0.leased else {
            return;
        };
        leased.stop.send_replace(true);
        let task = leased.task.lock().ok().and_then(|mut task| task.take());
        if let Some(task) = task {
            // A keeper that panicked has nothing left to release.
            let _ = task.await;
        }
    }
}

/// Sets `environment`'s claim (only when it changed) and holder.
fn publish(shared: &Shared, environment: &str, claim: Option<Claim>, holder: Option<String>) {
    let mut slots = shared
        .slots
        .lock()
        .expect("the slots lock is never poisoned");
    let Some(slot) = slots.get_mut(environment) else {
        return;
    };
    slot.holder = holder;
    let same = match (&*slot.claim.borrow(), &claim) {
        (Some(a), Some(b)) => a.same(b),
        (None, None) => true,
        _ => false,
    };
    if !same {
        if let Some(metrics) = &shared.metrics {
            metrics
                .environment_held
                .get_or_create(&crate::metrics::EnvironmentLabels {
                    environment: environment.to_owned(),
                })
                .set(i64::from(claim.is_some()));
        }
        slot.claim.send_replace(claim);
    }
}
