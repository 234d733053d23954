//! Kubernetes Leases (`coordination.k8s.io/v1`): read, create, renew, take over and release.
//!
//! Every write is a compare-and-swap on the Lease's `resourceVersion`: it goes over the version
//! the caller read, so two replicas that both saw a Lease free cannot both take it; the second
//! is told [`Outcome::Conflict`] with the Lease as it is now. Whether a Lease held by someone
//! else has expired is decided by [`Observer`] from this process's own monotonic clock, never
//! from the `renewTime` another machine wrote (clocks of two machines disagree; their rates
//! hardly do), as client-go's leader election does.
//!
//! [`Held::sent`] is when the write that gave or renewed the Lease was *sent*: the holder's
//! guarantee lasts from then, not from when the answer came back (see `crate::shard` for the
//! deadline built on it).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, DeleteParams, ListParams, PostParams, Preconditions};
use tokio::time::Instant;

/// A Lease write or read failed for a reason other than a conflict.
#[derive(Debug, thiserror::Error)]
#[error("Lease {namespace}/{name}: {what} failed")]
pub struct Error {
    /// The Lease's namespace.
    pub namespace: String,
    /// The Lease, or the label selector of a listing.
    pub name: String,
    /// What was being done: `get`, `create`, `renew`, ...
    pub what: &'static str,
    /// The API's error.
    #[source]
    pub source: Box<kube::Error>,
}

impl Error {
    /// Whether the apiserver was not reached at all (connection refused, reset, timed out).
    pub fn is_unreachable(&self) -> bool {
        !matches!(*self.source, kube::Error::Api(_))
    }
}

/// A Lease as read: who holds it, for how long, and the version a write must go over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    /// `metadata.name`.
    pub name: String,
    /// `spec.holderIdentity`; `None` (or empty) when released.
    pub holder: Option<String>,
    /// `spec.leaseDurationSeconds`.
    pub duration: Duration,
    /// `spec.leaseTransitions`: how often it changed hands.
    pub transitions: i32,
    /// `metadata.resourceVersion`: moves with every write, renewals included.
    pub version: String,
    /// `metadata.labels`.
    pub labels: BTreeMap<String, String>,
    /// `metadata.annotations`.
    pub annotations: BTreeMap<String, String>,
    /// `spec.acquireTime`, `spec.renewTime`: for people; expiry never reads them.
    times: (Option<MicroTime>, Option<MicroTime>),
}

impl Observed {
    fn from_lease(lease: Lease) -> Self {
        let spec = lease.spec.unwrap_or_default();
        Self {
            name: lease.metadata.name.unwrap_or_default(),
            holder: spec.holder_identity.filter(|h| !h.is_empty()),
            duration: Duration::from_secs(
                u64::try_from(spec.lease_duration_seconds.unwrap_or(0)).unwrap_or(0),
            ),
            transitions: spec.lease_transitions.unwrap_or(0),
            version: lease.metadata.resource_version.unwrap_or_default(),
            labels: lease.metadata.labels.unwrap_or_default(),
            annotations: lease.metadata.annotations.unwrap_or_default(),
            times: (spec.acquire_time, spec.renew_time),
        }
    }

    /// Whether `identity` holds it (as far as this read says).
    pub fn is_held_by(&self, identity: &str) -> bool {
        self.holder.as_deref() == Some(identity)
    }
}

/// A Lease this process holds after a write, and when that write was sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    /// The Lease as the write left it.
    pub lease: Observed,
    /// When the request was sent, on this process's monotonic clock.
    pub sent: Instant,
}

/// What a write did: it went through, or someone wrote the Lease first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The Lease is ours as written.
    Held(Held),
    /// Someone else wrote it since it was read (or created it first); nothing was written.
    /// The Lease as it is now, when it could be read back.
    Conflict(Option<Observed>),
}

/// What a release did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Released {
    /// The Lease is free now.
    Released,
    /// Someone else wrote it since it was read; it was left as they wrote it.
    Conflict,
}

/// What a new Lease carries besides its holder.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Meta {
    /// Labels, to list a pipeline's Leases by.
    pub labels: BTreeMap<String, String>,
    /// Annotations for people (the environment's name as the pipeline spells it).
    pub annotations: BTreeMap<String, String>,
}

/// The Leases of one namespace.
#[derive(Clone)]
pub struct Leases {
    api: Api<Lease>,
    namespace: String,
}

impl Leases {
    /// Leases in `namespace`, through `client`.
    pub fn new(client: kube::Client, namespace: &str) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            namespace: namespace.to_owned(),
        }
    }

    /// The namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    fn error(&self, name: &str, what: &'static str) -> impl FnOnce(kube::Error) -> Error {
        let namespace = self.namespace.clone();
        let name = name.to_owned();
        move |source| Error {
            namespace,
            name,
            what,
            source: Box::new(source),
        }
    }

    /// The Lease `name`; `None` when there is none.
    pub async fn get(&self, name: &str) -> Result<Option<Observed>, Error> {
        self.api
            .get_opt(name)
            .await
            .map(|lease| lease.map(Observed::from_lease))
            .map_err(self.error(name, "get"))
    }

    /// Every Lease matching the label `selector`, in one request.
    pub async fn list(&self, selector: &str) -> Result<Vec<Observed>, Error> {
        let leases = self
            .api
            .list(&ListParams::default().labels(selector))
            .await
            .map_err(self.error(selector, "list"))?;
        Ok(leases.items.into_iter().map(Observed::from_lease).collect())
    }

    /// Creates `name` held by `holder` for `duration`; a conflict when it exists already.
    pub async fn create(
        &self,
        name: &str,
        meta: &Meta,
        holder: &str,
        duration: Duration,
    ) -> Result<Outcome, Error> {
        let now = MicroTime(jiff::Timestamp::now());
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                namespace: Some(self.namespace.clone()),
                labels: Some(meta.labels.clone()).filter(|l| !l.is_empty()),
                annotations: Some(meta.annotations.clone()).filter(|a| !a.is_empty()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(holder.to_owned()),
                lease_duration_seconds: Some(seconds(duration)),
                acquire_time: Some(now.clone()),
                renew_time: Some(now),
                lease_transitions: Some(0),
                ..LeaseSpec::default()
            }),
        };
        let sent = Instant::now();
        match self.api.create(&PostParams::default(), &lease).await {
            Ok(lease) => Ok(Outcome::Held(Held {
                lease: Observed::from_lease(lease),
                sent,
            })),
            Err(kube::Error::Api(status)) if status.code == 409 => {
                Ok(Outcome::Conflict(self.get(name).await?))
            }
            Err(source) => Err(self.error(name, "create")(source)),
        }
    }

    /// Renews `current`, which `holder` holds, over the version read.
    pub async fn renew(&self, current: &Observed, holder: &str) -> Result<Outcome, Error> {
        self.write(current, "renew", |spec| {
            spec.holder_identity = Some(holder.to_owned());
            spec.renew_time = Some(MicroTime(jiff::Timestamp::now()));
        })
        .await
    }

    /// Takes `current` for `holder`: a Lease released, expired by [`Observer::expired`], or
    /// `holder`'s own from an earlier run. Counts a transition when it changes hands.
    pub async fn take(
        &self,
        current: &Observed,
        holder: &str,
        duration: Duration,
    ) -> Result<Outcome, Error> {
        let changes_hands = !current.is_held_by(holder);
        self.write(current, "take", |spec| {
            let now = MicroTime(jiff::Timestamp::now());
            spec.holder_identity = Some(holder.to_owned());
            spec.lease_duration_seconds = Some(seconds(duration));
            spec.acquire_time = Some(now.clone());
            spec.renew_time = Some(now);
            if changes_hands {
                spec.lease_transitions = Some(current.transitions.saturating_add(1));
            }
        })
        .await
    }

    /// Releases `current`, which its holder read: the next claimant need not wait for it to
    /// expire.
    pub async fn release(&self, current: &Observed) -> Result<Released, Error> {
        let outcome = self
            .write(current, "release", |spec| {
                spec.holder_identity = None;
                spec.acquire_time = None;
                spec.renew_time = None;
            })
            .await?;
        Ok(match outcome {
            Outcome::Held(_) => Released::Released,
            Outcome::Conflict(_) => Released::Conflict,
        })
    }

    /// Deletes `current` unless it was written since it was read (a member that came back).
    pub async fn delete(&self, current: &Observed) -> Result<Released, Error> {
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                resource_version: Some(current.version.clone()),
                uid: None,
            }),
            ..DeleteParams::default()
        };
        match self.api.delete(&current.name, &params).await {
            Ok(_) => Ok(Released::Released),
            Err(kube::Error::Api(status)) if status.code == 409 || status.code == 404 => {
                Ok(Released::Conflict)
            }
            Err(source) => Err(self.error(&current.name, "delete")(source)),
        }
    }

    /// Replaces `current`'s spec as `edit` says, over its resourceVersion.
    async fn write(
        &self,
        current: &Observed,
        what: &'static str,
        edit: impl FnOnce(&mut LeaseSpec),
    ) -> Result<Outcome, Error> {
        let mut spec = LeaseSpec {
            holder_identity: current.holder.clone(),
            lease_duration_seconds: Some(seconds(current.duration)),
            lease_transitions: Some(current.transitions),
            acquire_time: current.times.0.clone(),
            renew_time: current.times.1.clone(),
            ..LeaseSpec::default()
        };
        edit(&mut spec);
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(current.name.clone()),
                namespace: Some(self.namespace.clone()),
                resource_version: Some(current.version.clone()),
                labels: Some(current.labels.clone()).filter(|l| !l.is_empty()),
                annotations: Some(current.annotations.clone()).filter(|a| !a.is_empty()),
                ..ObjectMeta::default()
            },
            spec: Some(spec),
        };
        let sent = Instant::now();
        match self
            .api
            .replace(&current.name, &PostParams::default(), &lease)
            .await
        {
            Ok(lease) => Ok(Outcome::Held(Held {
                lease: Observed::from_lease(lease),
                sent,
            })),
            Err(kube::Error::Api(status)) if status.code == 409 || status.code == 404 => {
                Ok(Outcome::Conflict(self.get(&current.name).await?))
            }
            Err(source) => Err(self.error(&current.name, what)(source)),
        }
    }
}

fn seconds(duration: Duration) -> i32 {
    i32::try_from(duration.as_secs().max(1)).unwrap_or(i32::MAX)
}

/// Decides, from this process's clock alone, whether Leases held by others have expired: a
/// Lease is expired once its `resourceVersion` has not moved for its whole duration since this
/// process first saw that version. A process that just started therefore waits one full
/// duration before it takes a Lease someone else holds.
#[derive(Debug, Default)]
pub struct Observer {
    seen: HashMap<String, (String, Instant)>,
}

impl Observer {
    /// An observer that has seen nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Notes `lease` as read at `now`.
    pub fn observe(&mut self, lease: &Observed, now: Instant) {
        match self.seen.get_mut(&lease.name) {
            Some((version, _)) if *version == lease.version => {}
            _ => {
                self.seen
                    .insert(lease.name.clone(), (lease.version.clone(), now));
            }
        }
    }

    /// Whether `lease` (as last observed) is free to take at `now`: released, or not renewed
    /// for its duration.
    pub fn expired(&self, lease: &Observed, now: Instant) -> bool {
        if lease.holder.is_none() {
            return true;
        }
        match self.seen.get(&lease.name) {
            Some((version, since)) if *version == lease.version => {
                now.duration_since(*since) >= lease.duration
            }
            _ => false,
        }
    }

    /// Forgets Leases not in `names` (deleted, or no longer of interest).
    pub fn retain(&mut self, names: &std::collections::HashSet<&str>) {
        self.seen.retain(|name, _| names.contains(name.as_str()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(version: &str, holder: Option<&str>) -> Observed {
        Observed {
            name: "shop.env.dev".into(),
            holder: holder.map(str::to_owned),
            duration: Duration::from_secs(15),
            transitions: 0,
            version: version.into(),
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
            times: (None, None),
        }
    }

    #[test]
    fn a_lease_expires_only_after_its_version_stood_still_for_its_duration() {
        let mut observer = Observer::new();
        let start = Instant::now();
        let held = lease("1", Some("a"));
        observer.observe(&held, start);
        assert!(!observer.expired(&held, start + Duration::from_secs(14)));
        // Renewed at 10 s: the clock starts again from when the new version was seen.
        let renewed = lease("2", Some("a"));
        observer.observe(&renewed, start + Duration::from_secs(10));
        assert!(!observer.expired(&renewed, start + Duration::from_secs(24)));
        assert!(observer.expired(&renewed, start + Duration::from_secs(25)));
    }

    #[test]
    fn a_released_lease_is_free_at_once_and_an_unseen_one_is_not_expired() {
        let observer = Observer::new();
        let now = Instant::now();
        assert!(observer.expired(&lease("1", None), now));
        assert!(!observer.expired(&lease("1", Some("a")), now));
    }
}
