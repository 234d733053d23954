//! What an environment applied, as data with pure functions, and where it is kept.
//!
//! Every applied object carries the label [`super::INVENTORY_LABEL`] naming its environment;
//! the list of objects of the last successful sync is kept in a ConfigMap in the cluster it
//! describes ([`load`], [`save`]). The ConfigMap rather than a file under the state directory:
//! the inventory then travels with the cluster, survives a Stagehand moved to another host or
//! a lost volume, and a second Stagehand pointed at the same cluster sees the same inventory.
//! The label alone is not enough: an object deleted from Git whose label was removed by hand
//! would never be found again, and listing every kind of the cluster to find labelled objects
//! costs a request per kind.

use std::collections::HashSet;

use kube::api::{Api, DynamicObject, Patch, PatchParams};
use serde_json::json;

use super::object::{ObjectKey, ObjectRef};
use super::{Error, FIELD_MANAGER, api_error};

/// The objects of one environment, in apply order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inventory {
    entries: Vec<ObjectRef>,
}

impl Inventory {
    /// An inventory of `refs`, sorted into apply order (stable, so that objects of one stage
    /// keep their order); a reference listed twice is kept once.
    pub fn new(refs: impl IntoIterator<Item = ObjectRef>) -> Self {
        let mut seen = HashSet::new();
        let mut entries: Vec<ObjectRef> =
            refs.into_iter().filter(|r| seen.insert(r.key())).collect();
        entries.sort_by_key(ObjectRef::stage);
        Self { entries }
    }

    pub fn entries(&self) -> &[ObjectRef] {
        &self.entries
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn contains(&self, key: &ObjectKey) -> bool {
        self.entries.iter().any(|e| &e.key() == key)
    }

    /// The objects of `self` (the last sync) that `next` no longer has, in reverse apply order:
    /// what to prune, in the order to prune it.
    pub fn diff(&self, next: &Inventory) -> Vec<ObjectRef> {
        let keep: HashSet<ObjectKey> = next.entries.iter().map(ObjectRef::key).collect();
        self.entries
            .iter()
            .rev()
            .filter(|e| !keep.contains(&e.key()))
            .cloned()
            .collect()
    }

    /// `self` plus `retained`: objects whose prune failed stay tracked, so that the next sync
    /// tries again instead of forgetting them.
    pub fn merge(&self, retained: &[ObjectRef]) -> Inventory {
        Inventory::new(self.entries.iter().chain(retained).cloned())
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(&self.entries).expect("object references always serialise")
    }

    pub fn from_json(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str::<Vec<ObjectRef>>(text).map(Self::new)
    }
}

/// Where an environment's inventory ConfigMap lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub namespace: String,
    pub name: String,
}

impl Location {
    /// The ConfigMap `stagehand-inventory-<owner>` in `namespace`.
    pub fn for_owner(namespace: &str, owner: &str) -> Self {
        Self {
            namespace: namespace.to_owned(),
            name: format!("stagehand-inventory-{owner}"),
        }
    }
}

const DATA_KEY: &str = "inventory";

/// Reads the stored inventory; none stored yet is an empty inventory.
pub async fn load(client: &kube::Client, at: &Location) -> Result<Inventory, Error> {
    let api: Api<k8s_openapi::api::core::v1::ConfigMap> =
        Api::namespaced(client.clone(), &at.namespace);
    let target = || format!("ConfigMap {}/{}", at.namespace, at.name);
    let Some(cm) = api
        .get_opt(&at.name)
        .await
        .map_err(|e| api_error("read inventory", target(), e, None))?
    else {
        return Ok(Inventory::default());
    };
    let text = cm
        .data
        .as_ref()
        .and_then(|d| d.get(DATA_KEY))
        .map(String::as_str)
        .unwrap_or("[]");
    Inventory::from_json(text).map_err(|source| Error::InventoryCorrupt {
        target: target(),
        key: DATA_KEY,
        source,
    })
}

/// Stores `inventory`, creating the namespace if it does not exist yet.
pub async fn save(
    client: &kube::Client,
    at: &Location,
    inventory: &Inventory,
) -> Result<(), Error> {
    let api: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        &at.namespace,
        &kube::api::ApiResource::erase::<k8s_openapi::api::core::v1::ConfigMap>(&()),
    );
    let cm = json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": at.name, "namespace": at.namespace,
                     "labels": {"app.kubernetes.io/managed-by": FIELD_MANAGER}},
        "data": {DATA_KEY: inventory.to_json()},
    });
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let target = || format!("ConfigMap {}/{}", at.namespace, at.name);
    match api.patch(&at.name, &params, &Patch::Apply(&cm)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => {
            let namespaces: Api<DynamicObject> = Api::all_with(
                client.clone(),
                &kube::api::ApiResource::erase::<k8s_openapi::api::core::v1::Namespace>(&()),
            );
            let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": at.namespace}});
            namespaces
                .patch(&at.namespace, &params, &Patch::Apply(&ns))
                .await
                .map_err(|e| {
                    api_error(
                        "create inventory namespace",
                        format!("Namespace {}", at.namespace),
                        e,
                        None,
                    )
                })?;
            api.patch(&at.name, &params, &Patch::Apply(&cm))
                .await
                .map(drop)
                .map_err(|e| api_error("write inventory", target(), e, None))
        }
        Err(e) => Err(api_error("write inventory", target(), e, None)),
    }
}

/// The label value naming an owner must be a valid label value; this says whether it is.
pub fn valid_owner(owner: &str) -> bool {
    !owner.is_empty()
        && owner.len() <= 63
        && owner
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && owner.starts_with(|c: char| c.is_ascii_alphanumeric())
        && owner.ends_with(|c: char| c.is_ascii_alphanumeric())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(kind: &str, name: &str) -> ObjectRef {
        let (group, namespace) = match kind {
            "Namespace" => ("", None),
            "CustomResourceDefinition" => ("apiextensions.k8s.io", None),
            _ => ("", Some("shop".to_owned())),
        };
        ObjectRef {
            group: group.into(),
            version: "v1".into(),
            kind: kind.into(),
            namespace,
            name: name.into(),
        }
    }

    #[test]
    fn a_new_inventory_puts_namespaces_and_crds_first_and_keeps_the_rest_in_order() {
        let inv = Inventory::new([
            r("ConfigMap", "b"),
            r("Namespace", "shop"),
            r("ConfigMap", "a"),
            r("CustomResourceDefinition", "widgets.example.com"),
        ]);
        let names: Vec<&str> = inv.entries().iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["shop", "widgets.example.com", "b", "a"]);
    }

    #[test]
    fn diff_lists_what_left_in_reverse_apply_order() {
        let old = Inventory::new([
            r("Namespace", "shop"),
            r("ConfigMap", "a"),
            r("ConfigMap", "b"),
        ]);
        let new = Inventory::new([r("ConfigMap", "b")]);
        let stale: Vec<String> = old.diff(&new).iter().map(|e| e.name.clone()).collect();
        assert_eq!(stale, ["a", "shop"]);
    }

    #[test]
    fn diff_ignores_the_version_an_object_is_served_under() {
        let old = Inventory::new([r("ConfigMap", "a")]);
        let mut moved = r("ConfigMap", "a");
        moved.version = "v2".into();
        assert!(old.diff(&Inventory::new([moved])).is_empty());
    }

    #[test]
    fn merge_keeps_objects_whose_prune_failed() {
        let next = Inventory::new([r("ConfigMap", "b")]);
        let merged = next.merge(&[r("ConfigMap", "a")]);
        assert!(merged.contains(&r("ConfigMap", "a").key()));
        assert!(merged.contains(&r("ConfigMap", "b").key()));
        assert_eq!(merged.len(), 2);
    }

    #[test]
    fn an_inventory_survives_a_json_round_trip() {
        let inv = Inventory::new([r("Namespace", "shop"), r("ConfigMap", "a")]);
        assert_eq!(Inventory::from_json(&inv.to_json()).expect("parses"), inv);
    }

    #[test]
    fn owners_must_be_label_values() {
        assert!(valid_owner("shop.dev"));
        assert!(!valid_owner("-dev"));
        assert!(!valid_owner(&"x".repeat(64)));
        assert!(!valid_owner("a/b"));
    }
}
