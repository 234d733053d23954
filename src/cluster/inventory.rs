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

use std::collections::{BTreeSet, HashSet};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use serde_json::json;

use super::object::{KeyRef, ObjectKey, ObjectRef};
use super::{Error, FIELD_MANAGER, api_error};

/// The objects of one environment, in apply order, and which of them were adopted (they existed
/// before Stagehand applied them).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inventory {
    entries: Vec<ObjectRef>,
    adopted: BTreeSet<ObjectKey>,
}

impl Inventory {
    /// An inventory of `refs`, sorted into apply order (stable, so that objects of one stage
    /// keep their order); a reference listed twice is kept once.
    pub fn new(refs: impl IntoIterator<Item = ObjectRef>) -> Self {
        let mut entries: Vec<ObjectRef> = refs.into_iter().collect();
        let mut seen = HashSet::with_capacity(entries.len());
        let first: Vec<bool> = entries.iter().map(|r| seen.insert(r.key_ref())).collect();
        drop(seen);
        let mut first = first.into_iter();
        entries.retain(|_| first.next().unwrap_or(false));
        entries.sort_by_key(ObjectRef::stage);
        Self {
            entries,
            adopted: BTreeSet::new(),
        }
    }

    /// `self` with `adopted` marked as adopted; keys of objects it does not hold are ignored.
    pub fn with_adopted<'a>(mut self, adopted: impl IntoIterator<Item = &'a ObjectKey>) -> Self {
        let held: HashSet<KeyRef> = self.entries.iter().map(ObjectRef::key_ref).collect();
        self.adopted.extend(
            adopted
                .into_iter()
                .filter(|k| held.contains(&k.as_ref()))
                .cloned(),
        );
        self
    }

    /// The objects, in apply order.
    pub fn entries(&self) -> &[ObjectRef] {
        &self.entries
    }

    /// The objects that existed before Stagehand applied them.
    pub fn adopted(&self) -> impl Iterator<Item = &ObjectKey> {
        self.adopted.iter()
    }

    /// Whether the object was adopted rather than created.
    pub fn is_adopted(&self, key: &ObjectKey) -> bool {
        self.adopted.contains(key)
    }

    /// Whether nothing is tracked.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// How many objects are tracked.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the object is tracked.
    pub fn contains(&self, key: &ObjectKey) -> bool {
        self.entries.iter().any(|e| e.key_ref() == key.as_ref())
    }

    /// The objects of `self` (the last sync) that `next` no longer has, in reverse apply order:
    /// what to prune, in the order to prune it.
    pub fn diff(&self, next: &Inventory) -> Vec<ObjectRef> {
        let keep: HashSet<KeyRef> = next.entries.iter().map(ObjectRef::key_ref).collect();
        self.entries
            .iter()
            .rev()
            .filter(|e| !keep.contains(&e.key_ref()))
            .cloned()
            .collect()
    }

    /// `self` plus `retained`: objects whose prune failed or was held back stay tracked, so
    /// that the next sync tries again instead of forgetting them. Adoption marks of `self`
    /// stay.
    pub fn merge(&self, retained: &[ObjectRef]) -> Inventory {
        Inventory::new(self.entries.iter().chain(retained).cloned()).with_adopted(&self.adopted)
    }

    /// The compact JSON stored in the inventory ConfigMap.
    pub fn to_json(&self) -> String {
        serde_json::to_string(&self.entries).expect("object references always serialise")
    }

    /// Reads [`Inventory::to_json`]'s form.
    pub fn from_json(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str::<Vec<ObjectRef>>(text).map(Self::new)
    }

    /// The adopted objects as JSON references, in apply order.
    fn adopted_json(&self) -> String {
        let adopted: Vec<&ObjectRef> = self
            .entries
            .iter()
            .filter(|e| self.adopted.contains(&e.key()))
            .collect();
        serde_json::to_string(&adopted).expect("object references always serialise")
    }
}

/// Where an environment's inventory ConfigMap lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// Its namespace (the environment's own, or Stagehand's).
    pub namespace: String,
    /// Its name, derived from the pipeline and environment.
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

    fn target(&self) -> String {
        format!("ConfigMap {}/{}", self.namespace, self.name)
    }
}

/// The stored inventory's `resourceVersion` as read, so that [`save`] writes only over what
/// [`load`] saw (none: nothing was stored).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Version(Option<String>);

const DATA_KEY: &str = "inventory";
const ADOPTED_KEY: &str = "adopted";

/// Reads the stored inventory and its version; none stored yet is an empty inventory.
pub async fn load(client: &kube::Client, at: &Location) -> Result<(Inventory, Version), Error> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), &at.namespace);
    let Some(cm) = api
        .get_opt(&at.name)
        .await
        .map_err(|e| api_error("read inventory", at.target(), e, None))?
    else {
        return Ok((Inventory::default(), Version::default()));
    };
    let field = |key: &'static str| {
        let text = cm
            .data
            .as_ref()
            .and_then(|d| d.get(key))
            .map(String::as_str)
            .unwrap_or("[]");
        serde_json::from_str::<Vec<ObjectRef>>(text).map_err(|source| Error::InventoryCorrupt {
            target: at.target(),
            key,
            source,
        })
    };
    let adopted: Vec<ObjectKey> = field(ADOPTED_KEY)?.iter().map(ObjectRef::key).collect();
    let inventory = Inventory::new(field(DATA_KEY)?).with_adopted(&adopted);
    Ok((inventory, Version(cm.metadata.resource_version)))
}

/// Stores `inventory` over the version [`load`] read (optimistic concurrency): when another
/// writer stored one since, or created one where there was none, nothing is written and the
/// answer is [`Error::InventoryConflict`]. Creates the namespace if it does not exist yet.
/// Returns the version written.
pub async fn save(
    client: &kube::Client,
    at: &Location,
    inventory: &Inventory,
    read: &Version,
) -> Result<Version, Error> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), &at.namespace);
    let mut data = serde_json::Map::new();
    data.insert(DATA_KEY.into(), inventory.to_json().into());
    if inventory.adopted().next().is_some() {
        data.insert(ADOPTED_KEY.into(), inventory.adopted_json().into());
    }
    let cm: ConfigMap = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": at.name, "namespace": at.namespace,
                     "resourceVersion": read.0,
                     "labels": {"app.kubernetes.io/managed-by": FIELD_MANAGER}},
        "data": data,
    }))
    .expect("an inventory ConfigMap is a valid ConfigMap");
    let params = PostParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PostParams::default()
    };
    let conflict = || Error::InventoryConflict {
        target: at.target(),
    };
    let written = match &read.0 {
        Some(_) => match api.replace(&at.name, &params, &cm).await {
            // Deleted since it was read: someone else is writing it too.
            Err(kube::Error::Api(status)) if matches!(status.code, 404 | 409) => {
                return Err(conflict());
            }
            other => other,
        },
        None => match api.create(&params, &cm).await {
            Err(kube::Error::Api(status)) if status.code == 409 => return Err(conflict()),
            Err(kube::Error::Api(status)) if status.code == 404 => {
                create_namespace(client, &at.namespace).await?;
                match api.create(&params, &cm).await {
                    Err(kube::Error::Api(status)) if status.code == 409 => {
                        return Err(conflict());
                    }
                    other => other,
                }
            }
            other => other,
        },
    };
    let written = written.map_err(|e| api_error("write inventory", at.target(), e, None))?;
    Ok(Version(written.metadata.resource_version))
}

pub(crate) async fn create_namespace(client: &kube::Client, namespace: &str) -> Result<(), Error> {
    let namespaces: Api<DynamicObject> = Api::all_with(
        client.clone(),
        &kube::api::ApiResource::erase::<k8s_openapi::api::core::v1::Namespace>(&()),
    );
    let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}});
    namespaces
        .patch(
            namespace,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&ns),
        )
        .await
        .map(drop)
        .map_err(|e| {
            api_error(
                "create inventory namespace",
                format!("Namespace {namespace}"),
                e,
                None,
            )
        })
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
    fn adoption_marks_survive_a_merge_and_name_only_held_objects() {
        let inv = Inventory::new([r("ConfigMap", "a"), r("ConfigMap", "b")])
            .with_adopted(&[r("ConfigMap", "a").key(), r("ConfigMap", "gone").key()]);
        assert_eq!(inv.adopted().count(), 1);
        let merged = Inventory::new([r("ConfigMap", "b")])
            .with_adopted(inv.adopted())
            .merge(&[r("ConfigMap", "c")]);
        assert!(!merged.is_adopted(&r("ConfigMap", "a").key()));
        let kept = inv.merge(&[]);
        assert!(kept.is_adopted(&r("ConfigMap", "a").key()));
        assert_ne!(
            kept,
            Inventory::new([r("ConfigMap", "a"), r("ConfigMap", "b")])
        );
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
