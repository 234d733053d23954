//! Lease operations against the real apiserver: acquire, renew, a conflicting holder refused,
//! takeover after expiry, release.

use std::collections::BTreeMap;
use std::time::Duration;

use stagehand::cluster::lease::{Leases, Meta, Observed, Observer, Outcome, Released};
use tokio::time::Instant;

use crate::support::cluster;

fn held(outcome: Outcome) -> Observed {
    match outcome {
        Outcome::Held(held) => held.lease,
        Outcome::Conflict(now) => panic!("expected the Lease to be held, it is {now:?}"),
    }
}

fn conflict(outcome: Outcome) -> Option<Observed> {
    match outcome {
        Outcome::Conflict(now) => now,
        Outcome::Held(held) => panic!("expected a conflict, the write went through: {held:?}"),
    }
}

fn meta() -> Meta {
    let mut labels = BTreeMap::new();
    labels.insert("stagehand.dev/pipeline".to_owned(), "shop".to_owned());
    Meta {
        labels,
        annotations: BTreeMap::new(),
    }
}

async fn leases() -> Leases {
    let cluster = cluster::cluster();
    let client = cluster.client().await;
    let namespace = cluster.namespace(&client, "lease").await;
    Leases::new(client, &namespace)
}

#[tokio::test]
async fn a_lease_is_acquired_renewed_and_refused_to_a_second_holder() {
    let leases = leases().await;
    let duration = Duration::from_secs(30);
    let a = held(
        leases
            .create("shop.env.dev", &meta(), "replica-a", duration)
            .await
            .expect("create"),
    );
    assert_eq!(a.holder.as_deref(), Some("replica-a"));
    assert_eq!(a.duration, duration);
    assert_eq!(
        a.labels.get("stagehand.dev/pipeline").map(String::as_str),
        Some("shop")
    );

    // B cannot create it again, and learns who holds it.
    let now = conflict(
        leases
            .create("shop.env.dev", &meta(), "replica-b", duration)
            .await
            .expect("create"),
    )
    .expect("the Lease as it is now");
    assert_eq!(now.holder.as_deref(), Some("replica-a"));

    let renewed = held(leases.renew(&a, "replica-a").await.expect("renew"));
    assert_ne!(renewed.version, a.version, "a renewal writes a new version");

    // B read the Lease before the renewal; its takeover goes over that stale version.
    let stale = a.clone();
    let refused = conflict(
        leases
            .take(&stale, "replica-b", duration)
            .await
            .expect("take"),
    )
    .expect("the Lease as it is now");
    assert_eq!(refused.holder.as_deref(), Some("replica-a"));
    assert_eq!(
        leases.get("shop.env.dev").await.expect("get"),
        Some(renewed.clone()),
        "the refused takeover wrote nothing"
    );

    // Nor can A renew over a version it no longer holds.
    conflict(leases.renew(&a, "replica-a").await.expect("renew"));
    let listed = leases
        .list("stagehand.dev/pipeline=shop")
        .await
        .expect("list");
    assert_eq!(listed, vec![renewed]);
}

#[tokio::test]
async fn an_expired_lease_is_taken_over_and_a_released_one_is_free_at_once() {
    let leases = leases().await;
    let short = Duration::from_secs(1);
    let a = held(
        leases
            .create("shop.leader", &meta(), "replica-a", short)
            .await
            .expect("create"),
    );

    // B sees A's Lease; it expires for B once its version stood still for its duration on
    // B's own clock.
    let mut observer = Observer::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let seen = loop {
        let seen = leases
            .get("shop.leader")
            .await
            .expect("get")
            .expect("the Lease exists");
        observer.observe(&seen, Instant::now());
        if observer.expired(&seen, Instant::now()) {
            break seen;
        }
        assert!(Instant::now() < deadline, "the Lease never expired");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(seen, a, "nobody renewed it meanwhile");
    let b = held(
        leases
            .take(&seen, "replica-b", Duration::from_secs(30))
            .await
            .expect("take"),
    );
    assert_eq!(b.holder.as_deref(), Some("replica-b"));
    assert_eq!(b.transitions, 1, "a takeover counts a transition");

    // A wakes up late: its renewal is refused, naming B.
    let now = conflict(leases.renew(&a, "replica-a").await.expect("renew")).expect("the Lease");
    assert_eq!(now.holder.as_deref(), Some("replica-b"));

    // B releases it: free at once for anyone, without waiting for expiry.
    assert_eq!(
        leases.release(&b).await.expect("release"),
        Released::Released
    );
    let free = leases
        .get("shop.leader")
        .await
        .expect("get")
        .expect("a released Lease stays");
    assert_eq!(free.holder, None);
    let fresh = Observer::new();
    assert!(fresh.expired(&free, Instant::now()));
    let again = held(
        leases
            .take(&free, "replica-a", Duration::from_secs(30))
            .await
            .expect("take"),
    );
    assert_eq!(again.holder.as_deref(), Some("replica-a"));
    assert_eq!(again.transitions, 2);

    // A release over a stale version is refused too.
    assert_eq!(
        leases.release(&b).await.expect("release"),
        Released::Conflict
    );
    assert_eq!(
        leases.delete(&again).await.expect("delete"),
        Released::Released
    );
    assert_eq!(leases.get("shop.leader").await.expect("get"), None);
}
