//! The cluster module on its own against the real kube-apiserver: discovery that refreshes
//! when a kind appears, a staged apply into a fresh group, an inventory written only over the
//! version read, and deletes bound to a UID.

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::Api;
use serde_json::json;
use stagehand::cluster::apply::{self, Change};
use stagehand::cluster::inventory::{self, Inventory};
use stagehand::cluster::prune;
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

#[tokio::test]
async fn an_inventory_written_since_it_was_read_is_not_overwritten() {
    let cluster = cluster();
    let client = cluster.client().await;
    let ns = cluster.namespace(&client, "cl-inventory").await;
    let at = inventory::Location::for_owner(&ns, "shop.dev");
    let cm = |name: &str| ObjectRef {
        group: String::new(),
        version: "v1".into(),
        kind: "ConfigMap".into(),
        namespace: Some(ns.clone()),
        name: name.into(),
    };

    // Two writers find nothing stored; the second to create loses.
    let (_, none_a) = inventory::load(&client, &at).await.expect("loads");
    let (_, none_b) = inventory::load(&client, &at).await.expect("loads");
    inventory::save(&client, &at, &Inventory::new([cm("a")]), &none_a)
        .await
        .expect("the first writer creates it");
    let lost = inventory::save(&client, &at, &Inventory::new([cm("b")]), &none_b).await;
    assert!(
        matches!(lost, Err(Error::InventoryConflict { .. })),
        "{lost:?}"
    );

    // Both read the same version; the second to write loses, and what the first wrote stays.
    let (_, read_a) = inventory::load(&client, &at).await.expect("loads");
    let (_, read_b) = inventory::load(&client, &at).await.expect("loads");
    let first = Inventory::new([cm("a"), cm("c")]);
    inventory::save(&client, &at, &first, &read_a)
        .await
        .expect("the first writer writes");
    let lost = inventory::save(&client, &at, &Inventory::new([cm("b")]), &read_b).await;
    let Err(error) = lost else {
        panic!("a write over a stale version went through");
    };
    assert!(
        matches!(error, Error::InventoryConflict { .. }),
        "{error:?}"
    );
    assert!(error.to_string().contains(&at.name), "{error}");
    let (stored, _) = inventory::load(&client, &at).await.expect("loads");
    assert_eq!(stored, first);
}

#[tokio::test]
async fn a_prune_delete_leaves_an_object_that_was_made_again_since_it_was_read() {
    let cluster = cluster();
    let client = cluster.client().await;
    let ns = cluster.namespace(&client, "cl-uid").await;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let manifest: ConfigMap = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x", "namespace": ns}
    }))
    .expect("valid");
    let read = api
        .create(&Default::default(), &manifest)
        .await
        .expect("created");
    let old_uid = read.metadata.uid.expect("a UID");
    api.delete("x", &Default::default())
        .await
        .expect("deleted by someone");
    let again = api
        .create(&Default::default(), &manifest)
        .await
        .expect("made again by someone");

    let conn = Connection::from_client(client);
    let reference = ObjectRef {
        group: String::new(),
        version: "v1".into(),
        kind: "ConfigMap".into(),
        namespace: Some(ns.clone()),
        name: "x".into(),
    };
    let outcome = prune::delete(&conn, &reference, old_uid, false)
        .await
        .expect_err("the UID no longer matches");
    assert_eq!(outcome.code(), Some(409), "{outcome}");
    let live = api.get("x").await.expect("the new object stays");
    assert_eq!(live.metadata.uid, again.metadata.uid);
}

#[tokio::test]
async fn a_series_counts_a_repeated_event_on_the_one_recorded_and_creates_its_namespace() {
    use k8s_openapi::api::core::v1::Event;
    use stagehand::cluster::events::{Recorded, Series, Type};
    let cluster = cluster();
    let client = cluster.client().await;
    // A namespace that does not exist yet: the series creates it, as inventories do.
    let ns = format!("{}-new", cluster.namespace(&client, "cl-series").await);
    let mut series = Series::new(ObjectRef {
        group: String::new(),
        version: "v1".into(),
        kind: "ConfigMap".into(),
        namespace: Some(ns.clone()),
        name: "stagehand-inventory-x".into(),
    });
    let first = series
        .record(
            &client,
            Type::Warning,
            "AlertRaised",
            "2 passes failed in a row",
        )
        .await
        .expect("recorded");
    let Recorded::Created(name) = first else {
        panic!("not created: {first:?}");
    };
    let again = series
        .record(
            &client,
            Type::Warning,
            "AlertRaised",
            "2 passes failed in a row",
        )
        .await
        .expect("counted");
    assert_eq!(
        again,
        Recorded::Counted {
            name: name.clone(),
            count: 2
        }
    );
    let other = series
        .record(
            &client,
            Type::Normal,
            "AlertRecovered",
            "every alert cleared",
        )
        .await
        .expect("recorded");
    assert!(
        matches!(other, Recorded::Created(ref n) if *n != name),
        "{other:?}"
    );

    let events = Api::<Event>::namespaced(client.clone(), &ns)
        .list(&Default::default())
        .await
        .expect("events listed");
    assert_eq!(events.items.len(), 2, "{:?}", events.items);
    let raised = events
        .items
        .iter()
        .find(|e| e.metadata.name.as_deref() == Some(name.as_str()))
        .expect("the raised event");
    assert_eq!(raised.count, Some(2));
    assert_eq!(raised.type_.as_deref(), Some("Warning"));
    assert_eq!(
        raised.involved_object.name.as_deref(),
        Some("stagehand-inventory-x")
    );
    assert_eq!(raised.message.as_deref(), Some("2 passes failed in a row"));
    let _ = Api::<k8s_openapi::api::core::v1::Namespace>::all(client)
        .delete(&ns, &Default::default())
        .await;
}

#[tokio::test]
async fn environments_on_one_cluster_share_its_connection_until_it_is_forgotten() {
    use stagehand::cluster::Connections;
    use stagehand::pipeline::Cluster;
    let kubeconfig = cluster().kubeconfig.clone();
    let connections = Connections::default();
    let one = Cluster::Kubeconfig {
        path: kubeconfig.clone(),
        context: None,
    };
    let first = connections.get(&one).await.expect("connects");
    let again = connections.get(&one.clone()).await.expect("connects");
    assert!(std::sync::Arc::ptr_eq(&first, &again));
    connections.forget(&one, &first).await;
    let fresh = connections.get(&one).await.expect("connects");
    assert!(!std::sync::Arc::ptr_eq(&first, &fresh));
    // Forgetting a stale connection keeps the newer one.
    connections.forget(&one, &first).await;
    let kept = connections.get(&one).await.expect("connects");
    assert!(std::sync::Arc::ptr_eq(&fresh, &kept));
}
