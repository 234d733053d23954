//! The loop that keeps this replica's Leases: one round every third of the Lease duration.
//!
//! A round renews the membership Lease, lists every Lease of the pipeline in one request,
//! works out the live members, keeps or takes the leadership, and then per environment renews,
//! takes, gives up or releases its Lease. A Lease this replica is no longer preferred for is
//! given up first (its claim ends, so its loop stops and every later write is refused) and
//! released one round later, so that writes already on the wire land before anyone else starts.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Weak;
use std::time::Duration;

use futures::StreamExt as _;
use tokio::sync::watch;
use tokio::time::Instant;

use super::{Claim, Leadership, Shared, names, publish, rendezvous};
use crate::cluster::lease::{self, Leases, Meta, Observed, Observer, Outcome};

/// Lease writes in flight at once.
const CONCURRENT_WRITES: usize = 16;

/// What a Lease is for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum What {
    Member,
    Leader,
    Environment(String),
}

impl What {
    fn describe(&self) -> String {
        match self {
            Self::Member => "its membership".to_owned(),
            Self::Leader => "the leadership".to_owned(),
            Self::Environment(name) => format!("environment {name:?}"),
        }
    }
}

/// A Lease this replica holds.
struct Kept {
    what: What,
    lease: Observed,
    claim: Claim,
}

/// A write to make this round.
enum Write {
    Create(What, String, Meta),
    Renew(Observed),
    Take(What, Observed),
    Release(Observed),
}

struct Keeper {
    replica: String,
    duration: Duration,
    /// How long a round may take: a third of the duration.
    tick: Duration,
    /// Taken off each claim's deadline: time for a write checked at the deadline to land.
    margin: Duration,
    observer: Observer,
    kept: HashMap<String, Kept>,
    /// Leases given up last round, released this one.
    releasing: HashSet<String>,
}

pub(super) async fn run(
    shared: Weak<Shared>,
    leases: Leases,
    duration: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let tick = duration / 3;
    let Some(replica) = shared.upgrade().map(|s| s.replica.clone()) else {
        return;
    };
    let mut keeper = Keeper {
        replica,
        duration,
        tick,
        margin: duration / 5,
        observer: Observer::new(),
        kept: HashMap::new(),
        releasing: HashSet::new(),
    };
    loop {
        let started = Instant::now();
        {
            let Some(shared) = shared.upgrade() else {
                return;
            };
            keeper.round(&shared, &leases).await;
        }
        tokio::select! {
            () = tokio::time::sleep_until(started + tick) => {}
            _ = stop.changed() => break,
        }
    }
    if let Some(shared) = shared.upgrade() {
        keeper.release_all(&shared, &leases).await;
    }
}

impl Keeper {
    async fn round(&mut self, shared: &Shared, leases: &Leases) {
        let Some(environments) = shared.environments.borrow().clone() else {
            return;
        };
        let pipeline = environments.pipeline.as_str();
        self.drop_lapsed(shared);

        let member = names::member(pipeline, &self.replica);
        let member_write = match self.kept.get(&member) {
            Some(kept) => Write::Renew(kept.lease.clone()),
            None => Write::Create(
                What::Member,
                member.clone(),
                meta(pipeline, names::ROLE_REPLICA, None),
            ),
        };
        self.write_all(shared, leases, vec![member_write]).await;

        let listed = match self.bounded(leases.list(&selector(pipeline))).await {
            Some(listed) => listed,
            None => {
                // Without a listing nothing new is taken, but what is held is still renewed:
                // a listing that failed once must not cost the claims.
                let renewals = self
                    .kept
                    .iter()
                    .filter(|(name, kept)| {
                        kept.what != What::Member && !self.releasing.contains(*name)
                    })
                    .map(|(_, kept)| Write::Renew(kept.lease.clone()))
                    .collect();
                self.write_all(shared, leases, renewals).await;
                return;
            }
        };
        let now = Instant::now();
        for lease in &listed {
            self.observer.observe(lease, now);
        }
        self.observer
            .retain(&listed.iter().map(|l| l.name.as_str()).collect());
        let listed: HashMap<String, Observed> =
            listed.into_iter().map(|l| (l.name.clone(), l)).collect();
        self.notice_takeovers(shared, &listed);

        let is_member = self.kept.contains_key(&member);
        let mut members: Vec<String> = listed
            .values()
            .filter(|l| role(l) == Some(names::ROLE_REPLICA))
            .filter(|l| !self.observer.expired(l, now) && l.name != member)
            .filter_map(|l| l.holder.clone())
            .collect();
        if is_member {
            members.push(self.replica.clone());
        }
        members.sort();
        members.dedup();

        let mut writes = Vec::new();
        let mut gone = Vec::new();
        for lease in listed.values() {
            // Membership Leases of replicas that died: nobody will renew them again.
            if role(lease) == Some(names::ROLE_REPLICA)
                && lease.name != member
                && self.observer.expired(lease, now)
            {
                gone.push(lease.clone());
            }
        }

        let leader = names::leader(pipeline);
        match (self.kept.get(&leader), listed.get(&leader)) {
            (Some(kept), _) => writes.push(Write::Renew(kept.lease.clone())),
            (None, _) if !is_member => {}
            (None, None) => writes.push(Write::Create(
                What::Leader,
                leader.clone(),
                meta(pipeline, names::ROLE_LEADER, None),
            )),
            (None, Some(lease)) if self.free_for_me(lease, now) => {
                writes.push(Write::Take(What::Leader, lease.clone()))
            }
            (None, Some(_)) => {}
        }

        let mut wanted = HashSet::new();
        for environment in &environments.names {
            let name = names::environment(pipeline, environment);
            wanted.insert(name.clone());
            let mine = rendezvous::preferred(&members, environment) == Some(&self.replica);
            if let Some(kept) = self.kept.get(&name) {
                if mine {
                    writes.push(Write::Renew(kept.lease.clone()));
                } else if self.releasing.contains(&name) {
                    writes.push(Write::Release(kept.lease.clone()));
                } else {
                    let to = rendezvous::preferred(&members, environment).unwrap_or("nobody");
                    tracing::info!(environment = %environment, to = %to, "giving up the environment: another replica is preferred for it now");
                    kept.claim.revoke();
                    publish(shared, environment, None, Some(self.replica.clone()));
                    self.releasing.insert(name.clone());
                }
                continue;
            }
            let holder = listed.get(&name).and_then(|l| l.holder.clone());
            publish(shared, environment, None, holder);
            if !(mine && is_member) {
                continue;
            }
            match listed.get(&name) {
                None => writes.push(Write::Create(
                    What::Environment(environment.clone()),
                    name,
                    meta(pipeline, names::ROLE_ENVIRONMENT, Some(environment)),
                )),
                Some(lease) if self.free_for_me(lease, now) => writes.push(Write::Take(
                    What::Environment(environment.clone()),
                    lease.clone(),
                )),
                Some(_) => {}
            }
        }
        // Environments the pipeline no longer has.
        for (name, kept) in &self.kept {
            if matches!(kept.what, What::Environment(_)) && !wanted.contains(name) {
                kept.claim.revoke();
                writes.push(Write::Release(kept.lease.clone()));
            }
        }
        self.write_all(shared, leases, writes).await;
        for lease in gone {
            if let Some(Err(error)) = tokio::time::timeout(self.tick, leases.delete(&lease))
                .await
                .ok()
                .map(|r| r.map(|_| ()))
            {
                tracing::debug!(lease = %lease.name, error = %crate::error_chain::ErrorChain(&error).to_string(), "cannot delete the membership Lease of a replica that is gone");
            }
        }
        let holder = match self.kept.get(&leader) {
            Some(_) => Some(self.replica.clone()),
            None => listed.get(&leader).and_then(|l| l.holder.clone()),
        };
        let claim = self.kept.get(&leader).map(|k| k.claim.clone());
        set_leadership(shared, claim, holder);
    }

    /// Whether this replica may take `lease`: released, expired, or its own from an earlier
    /// run (or from before a renewal failed).
    fn free_for_me(&self, lease: &Observed, now: Instant) -> bool {
        lease.is_held_by(&self.replica) || self.observer.expired(lease, now)
    }

    /// Ends the claims whose deadline passed without a renewal: their work stops now, and
    /// their Leases are taken again (if still ours and still preferred) like any free one.
    fn drop_lapsed(&mut self, shared: &Shared) {
        let lapsed: Vec<String> = self
            .kept
            .iter()
            .filter(|(_, kept)| !kept.claim.is_valid())
            .map(|(name, _)| name.clone())
            .collect();
        for name in lapsed {
            let Some(kept) = self.kept.remove(&name) else {
                continue;
            };
            self.releasing.remove(&name);
            kept.claim.revoke();
            tracing::warn!(lease = %name, "{} lapsed before a renewal went through: stopped writing it", kept.what.describe());
            self.lost(shared, &kept.what);
        }
    }

    /// Ends the claims on Leases someone else holds now (or that are gone).
    fn notice_takeovers(&mut self, shared: &Shared, listed: &HashMap<String, Observed>) {
        let taken: Vec<String> = self
            .kept
            .keys()
            .filter(|name| {
                listed
                    .get(*name)
                    .is_none_or(|lease| !lease.is_held_by(&self.replica))
            })
            .cloned()
            .collect();
        for name in taken {
            if let Some(kept) = self.kept.remove(&name) {
                self.releasing.remove(&name);
                kept.claim.revoke();
                tracing::warn!(lease = %name, holder = ?listed.get(&name).and_then(|l| l.holder.clone()), "{} was taken over: stopped writing it", kept.what.describe());
                self.lost(shared, &kept.what);
            }
        }
        for (name, kept) in &mut self.kept {
            if let Some(lease) = listed.get(name) {
                kept.lease = lease.clone();
            }
        }
    }

    fn lost(&self, shared: &Shared, what: &What) {
        match what {
            What::Environment(environment) => publish(shared, environment, None, None),
            What::Leader => set_leadership(shared, None, None),
            What::Member => {}
        }
    }

    async fn bounded<T>(
        &self,
        request: impl std::future::Future<Output = Result<T, lease::Error>>,
    ) -> Option<T> {
        match tokio::time::timeout(self.tick, request).await {
            Ok(Ok(value)) => Some(value),
            Ok(Err(error)) => {
                tracing::warn!(error = %crate::error_chain::ErrorChain(&error).to_string(), "Lease request failed");
                None
            }
            Err(_) => {
                tracing::warn!(after = ?self.tick, "Lease request timed out");
                None
            }
        }
    }

    async fn write_all(&mut self, shared: &Shared, leases: &Leases, writes: Vec<Write>) {
        let duration = self.duration;
        let tick = self.tick;
        let requests: Vec<(What, String, Request)> = writes
            .into_iter()
            .map(|write| -> (What, String, Request) {
                let leases = leases.clone();
                let holder = self.replica.clone();
                match write {
                    Write::Create(what, name, meta) => {
                        let key = name.clone();
                        let request = Box::pin(async move {
                            leases
                                .create(&name, &meta, &holder, duration)
                                .await
                                .map(WriteResult::Written)
                        });
                        (what, key, request)
                    }
                    Write::Renew(lease) => {
                        let what = self.what_of(&lease.name);
                        let key = lease.name.clone();
                        let request = Box::pin(async move {
                            leases
                                .renew(&lease, &holder)
                                .await
                                .map(WriteResult::Written)
                        });
                        (what, key, request)
                    }
                    Write::Take(what, lease) => {
                        let key = lease.name.clone();
                        let request = Box::pin(async move {
                            leases
                                .take(&lease, &holder, duration)
                                .await
                                .map(WriteResult::Written)
                        });
                        (what, key, request)
                    }
                    Write::Release(lease) => {
                        let what = self.what_of(&lease.name);
                        let key = lease.name.clone();
                        let request = Box::pin(async move {
                            leases.release(&lease).await.map(WriteResult::Released)
                        });
                        (what, key, request)
                    }
                }
            })
            .collect();
        let bounded: Vec<Bounded> = requests
            .into_iter()
            .map(|(what, name, request)| -> Bounded {
                Box::pin(async move {
                    let result = match tokio::time::timeout(tick, request).await {
                        Ok(Ok(result)) => result,
                        Ok(Err(error)) => {
                            WriteResult::Failed(crate::error_chain::ErrorChain(&error).to_string())
                        }
                        Err(_) => WriteResult::Failed(format!("no answer within {tick:?}")),
                    };
                    (what, name, result)
                })
            })
            .collect();
        let results: Vec<(What, String, WriteResult)> = futures::stream::iter(bounded)
            .buffer_unordered(CONCURRENT_WRITES)
            .collect()
            .await;
        for (what, name, result) in results {
            self.settle(shared, what, name, result);
        }
    }

    fn what_of(&self, name: &str) -> What {
        self.kept
            .get(name)
            .map(|kept| kept.what.clone())
            .unwrap_or(What::Member)
    }

    /// Records what a write did.
    fn settle(&mut self, shared: &Shared, what: What, name: String, result: WriteResult) {
        match result {
            WriteResult::Written(Outcome::Held(held)) => {
                let deadline = held.sent + self.duration - self.margin;
                match self.kept.get_mut(&name) {
                    Some(kept) => {
                        kept.claim.extend(deadline);
                        kept.lease = held.lease;
                    }
                    None => {
                        let claim = Claim::until(what.describe(), &self.replica, deadline);
                        match &what {
                            What::Environment(environment) => {
                                tracing::info!(environment = %environment, lease = %name, "took the environment");
                                publish(
                                    shared,
                                    environment,
                                    Some(claim.clone()),
                                    Some(self.replica.clone()),
                                );
                            }
                            What::Leader => {
                                tracing::info!(lease = %name, "took the leadership: this replica drives promotions now");
                                set_leadership(
                                    shared,
                                    Some(claim.clone()),
                                    Some(self.replica.clone()),
                                );
                            }
                            What::Member => {
                                tracing::info!(lease = %name, "joined as a member")
                            }
                        }
                        self.kept.insert(
                            name,
                            Kept {
                                what,
                                lease: held.lease,
                                claim,
                            },
                        );
                    }
                }
            }
            WriteResult::Written(Outcome::Conflict(now)) => {
                if let Some(lease) = &now {
                    self.observer.observe(lease, Instant::now());
                }
                if let Some(kept) = self.kept.remove(&name) {
                    self.releasing.remove(&name);
                    kept.claim.revoke();
                    tracing::warn!(lease = %name, holder = ?now.and_then(|l| l.holder), "{} was taken over: stopped writing it", kept.what.describe());
                    self.lost(shared, &kept.what);
                }
            }
            WriteResult::Released(outcome) => {
                if let Some(kept) = self.kept.remove(&name) {
                    match outcome {
                        lease::Released::Released => {
                            tracing::info!(lease = %name, "released {}", kept.what.describe())
                        }
                        lease::Released::Conflict => {
                            tracing::info!(lease = %name, "{} was written by someone else before its release", kept.what.describe())
                        }
                    }
                }
                self.releasing.remove(&name);
            }
            WriteResult::Failed(error) => {
                // The claim stands until its deadline; the next round tries again.
                tracing::warn!(lease = %name, %error, "cannot write the Lease of {}", what.describe());
            }
        }
    }

    /// On shutdown: ends every claim, then releases every Lease (the membership last), so that
    /// the others take over at once.
    async fn release_all(&mut self, shared: &Shared, leases: &Leases) {
        for kept in self.kept.values() {
            kept.claim.revoke();
            self.lost(shared, &kept.what);
        }
        let mut writes: Vec<Write> = self
            .kept
            .values()
            .filter(|kept| kept.what != What::Member)
            .map(|kept| Write::Release(kept.lease.clone()))
            .collect();
        self.write_all(shared, leases, std::mem::take(&mut writes))
            .await;
        let member: Vec<Observed> = self
            .kept
            .values()
            .filter(|kept| kept.what == What::Member)
            .map(|kept| kept.lease.clone())
            .collect();
        for lease in member {
            // Deleted, or at least released where the role may not delete Leases: either way
            // the others stop counting this replica at once.
            let deleted = tokio::time::timeout(self.tick, leases.delete(&lease)).await;
            if !matches!(deleted, Ok(Ok(_))) {
                let _ = tokio::time::timeout(self.tick, leases.release(&lease)).await;
            }
        }
        tracing::info!("released every Lease");
    }
}

type Request = futures::future::BoxFuture<'static, Result<WriteResult, lease::Error>>;
type Bounded = futures::future::BoxFuture<'static, (What, String, WriteResult)>;

enum WriteResult {
    Written(Outcome),
    Released(lease::Released),
    Failed(String),
}

fn set_leadership(shared: &Shared, claim: Option<Claim>, holder: Option<String>) {
    shared.leadership.send_if_modified(|now| {
        let same_claim = match (&now.claim, &claim) {
            (Some(a), Some(b)) => a.same(b),
            (None, None) => true,
            _ => false,
        };
        if same_claim && now.holder == holder {
            return false;
        }
        if let Some(metrics) = &shared.metrics {
            metrics.leader.set(i64::from(claim.is_some()));
        }
        *now = Leadership { claim, holder };
        true
    });
}

fn selector(pipeline: &str) -> String {
    format!("{}={}", names::PIPELINE_LABEL, names::label(pipeline))
}

fn role(lease: &Observed) -> Option<&str> {
    lease.labels.get(names::ROLE_LABEL).map(String::as_str)
}

fn meta(pipeline: &str, role: &str, environment: Option<&str>) -> Meta {
    let mut labels = BTreeMap::new();
    labels.insert(names::PIPELINE_LABEL.to_owned(), names::label(pipeline));
    labels.insert(names::ROLE_LABEL.to_owned(), role.to_owned());
    let mut annotations = BTreeMap::new();
    if let Some(environment) = environment {
        annotations.insert(
            names::ENVIRONMENT_ANNOTATION.to_owned(),
            environment.to_owned(),
        );
    }
    Meta {
        labels,
        annotations,
    }
}
