//! The cluster module on its own against the real kube-apiserver: discovery that refreshes
//! when a kind appears, and a staged apply into a fresh group.

use serde_json::json;
use stagehand::cluster::apply::{self, Change};
use stagehand::cluster::inventory::Inventory;
use stagehand::cluster::redact::Redactor;
use stagehand::cluster::{Connection, Error, Object, ObjectRef};

use crate::support::cluster::cluster;
use crate::support::reconcile::widget_crd;

fn crd(group: &str, kind: &str, plural: &str) -> serde_json::Value {
    let mut crd = widget_crd(group);
    crd["metadata"]["name"] = json!(format!("{plural}.{group}"));
    crd["spec"]["names"] = json!({"plural": plural, "singular": kind.to_lowercase(), "kind": kind});
    crd
}

fn kind_ref(group: &str, kind: &str) -> ObjectRef {
    ObjectRef {
        group: group.into(),
        version: "v1".into(),
        kind: kind.into(),
        namespace: Some("default".into()),
        name: "x".into(),
    }
}

/// Discovery may trail a CRD's Established condition by a moment; each try is a fresh look-up
/// on a cache miss, which is what is under test.
async fn resolve_soon(conn: &Connection, reference: &ObjectRef) -> stagehand::cluster::Resolved {
    let mut tries = 0;
    loop {
        match conn.resolve(reference).await {
            Ok(resolved) => return resolved,
            Err(Error::UnknownKind { .. }) if tries < 50 => {
                tries += 1;
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Err(e) => panic!("{reference} does not resolve: {e}"),
        }
    }
}

#[tokio::test]
async fn discovery_learns_a_kind_added_to_a_group_it_has_already_cached() {
    let cluster = cluster();
    let client = cluster.client().await;
    let ns = cluster.namespace(&client, "cl-discovery").await;
    let group = format!("{ns}.stagehand.test");
    let conn = Connection::from_client(client);
    let options = apply::Options::new(format!("{ns}.discovery"));

    let unknown = conn.resolve(&kind_ref(&group, "Widget")).await;
    assert!(
        matches!(unknown, Err(Error::UnknownKind { .. })),
        "{unknown:?}"
    );

    let apply_one = |manifest| {
        let objects = Object::from_manifests(vec![manifest]).expect("valid");
        let (conn, options) = (&conn, &options);
        async move {
            apply::apply(
                conn,
                objects,
                options,
                &Redactor::default(),
                &Inventory::default(),
            )
            .await
        }
    };
    let set = apply_one(crd(&group, "Widget", "widgets")).await;
    assert_eq!(set.entries[0].change, Change::Created, "{set:?}");
    let widget = resolve_soon(&conn, &kind_ref(&group, "Widget")).await;
    assert!(widget.namespaced);
    assert_eq!(widget.resource.plural, "widgets");

    // The group-version is cached now, without Gadget: asking for it must look again.
    let set = apply_one(crd(&group, "Gadget", "gadgets")).await;
    assert_eq!(set.entries[0].change, Change::Created, "{set:?}");
    let gadget = resolve_soon(&conn, &kind_ref(&group, "Gadget")).await;
    assert_eq!(gadget.resource.plural, "gadgets");
}
