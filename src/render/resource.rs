//! One object being rendered, with the bookkeeping kustomize keeps beside it: the names and
//! namespaces it had before transformers renamed it (name references are resolved against those),
//! the prefixes and suffixes applied, and generator flags.

use serde_json::{Map, Value};

/// Group, version and kind.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Gvk {
    /// Empty for the core group.
    pub group: String,
    /// Empty in a selector that takes any version.
    pub version: String,
    /// Empty in a selector that takes any kind.
    pub kind: String,
}

impl Gvk {
    /// Splits `group/version` (or a core `version`) as `apiVersion` writes it.
    pub fn from_api_version(api_version: &str, kind: &str) -> Self {
        let (group, version) = match api_version.split_once('/') {
            Some((g, v)) => (g.to_owned(), v.to_owned()),
            None => (String::new(), api_version.to_owned()),
        };
        Self {
            group,
            version,
            kind: kind.to_owned(),
        }
    }

    /// Whether every non-empty part of `sel` equals ours.
    pub fn is_selected_by(&self, sel: &Gvk) -> bool {
        (sel.group.is_empty() || sel.group == self.group)
            && (sel.version.is_empty() || sel.version == self.version)
            && (sel.kind.is_empty() || sel.kind == self.kind)
    }

    /// Whether objects of this kind have no namespace: built-in kinds only (kustomize knows no
    /// CRD's scope), and `Namespace` only in the core group.
    pub fn is_cluster_scoped(&self) -> bool {
        is_cluster_scoped_kind(&self.group, &self.kind)
    }

    /// `group_version_kind` with kustomize's placeholders for empty parts, which sort after
    /// every name.
    pub fn sort_string(&self) -> String {
        let or = |s: &str, d: &str| {
            if s.is_empty() {
                d.to_owned()
            } else {
                s.to_owned()
            }
        };
        format!(
            "{}_{}_{}",
            or(&self.group, "~G"),
            or(&self.version, "~V"),
            or(&self.kind, "~K")
        )
    }

    /// kustomize's order of Gvks: the kind's rank (`ORDER_FIRST` before the rest, `ORDER_LAST`
    /// after), then `sort_string`.
    pub fn order_key(&self) -> (i64, String) {
        let rank = match ORDER_FIRST.iter().position(|k| *k == self.kind) {
            Some(i) => i as i64 - ORDER_FIRST.len() as i64,
            None => ORDER_LAST
                .iter()
                .position(|k| *k == self.kind)
                .map_or(0, |i| 1 + i as i64),
        };
        (rank, self.sort_string())
    }
}

/// Kinds kustomize puts first, in this order, and last (`resid.Gvk.IsLessThan`, legacy sort).
pub(crate) const ORDER_FIRST: &[&str] = &[
    "Namespace",
    "ResourceQuota",
    "StorageClass",
    "CustomResourceDefinition",
    "ServiceAccount",
    "PodSecurityPolicy",
    "Role",
    "ClusterRole",
    "RoleBinding",
    "ClusterRoleBinding",
    "ConfigMap",
    "Secret",
    "Endpoints",
    "Service",
    "LimitRange",
    "PriorityClass",
    "PersistentVolume",
    "PersistentVolumeClaim",
    "Deployment",
    "StatefulSet",
    "CronJob",
    "PodDisruptionBudget",
];
pub(crate) const ORDER_LAST: &[&str] = &[
    "MutatingWebhookConfiguration",
    "ValidatingWebhookConfiguration",
];

impl std::fmt::Display for Gvk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        fn or<'a>(s: &'a str, d: &'static str) -> &'a str {
            if s.is_empty() { d } else { s }
        }
        write!(
            f,
            "{}.{}.{}",
            or(&self.kind, "[noKind]"),
            or(&self.version, "[noVer]"),
            or(&self.group, "[noGrp]")
        )
    }
}

/// Kinds of the Kubernetes API that live outside namespaces, with their API group: a custom
/// resource that borrows one of these kinds (a `Namespace` of `servicebus.azure.com`) is
/// namespaced like any other.
pub fn is_cluster_scoped_kind(group: &str, kind: &str) -> bool {
    let groups: &[&str] = match kind {
        "Namespace" | "PersistentVolume" | "Node" | "ComponentStatus" => &[""],
        "ClusterRole" | "ClusterRoleBinding" => &["rbac.authorization.k8s.io"],
        "CustomResourceDefinition" => &["apiextensions.k8s.io"],
        "StorageClass" | "CSIDriver" | "CSINode" | "VolumeAttachment" | "VolumeAttributesClass" => {
            &["storage.k8s.io"]
        }
        "PriorityClass" => &["scheduling.k8s.io"],
        "APIService" => &["apiregistration.k8s.io"],
        "MutatingWebhookConfiguration"
        | "ValidatingWebhookConfiguration"
        | "ValidatingAdmissionPolicy"
        | "ValidatingAdmissionPolicyBinding"
        | "MutatingAdmissionPolicy"
        | "MutatingAdmissionPolicyBinding" => &["admissionregistration.k8s.io"],
        "IngressClass" | "IPAddress" | "ServiceCIDR" => &["networking.k8s.io"],
        "RuntimeClass" => &["node.k8s.io"],
        "PodSecurityPolicy" => &["policy", "extensions"],
        "CertificateSigningRequest" | "ClusterTrustBundle" => &["certificates.k8s.io"],
        "TokenReview" => &["authentication.k8s.io"],
        "SelfSubjectAccessReview" | "SelfSubjectRulesReview" | "SubjectAccessReview" => {
            &["authorization.k8s.io"]
        }
        "FlowSchema" | "PriorityLevelConfiguration" => &["flowcontrol.apiserver.k8s.io"],
        "StorageVersion" => &["internal.apiserver.k8s.io"],
        "DeviceClass" => &["resource.k8s.io"],
        "StorageVersionMigration" => &["storagemigration.k8s.io"],
        _ => &[],
    };
    groups.contains(&group)
}

/// Identity of a resource: gvk, name and namespace.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ResId {
    /// Group, version and kind.
    pub gvk: Gvk,
    /// `metadata.name`.
    pub name: String,
    /// `metadata.namespace` as written; empty when unset.
    pub namespace: String,
}

impl ResId {
    /// The namespace as the API server would see it: `default` for an unset namespace of a
    /// namespaced kind, nothing for a cluster-scoped one.
    pub fn effective_namespace(&self) -> &str {
        if self.gvk.is_cluster_scoped() {
            "_non_namespaceable_"
        } else if self.namespace.is_empty() {
            "default"
        } else {
            &self.namespace
        }
    }

    /// Kustomize's identity key: same effective namespace counts as same.
    pub fn key(&self) -> (Gvk, String, String) {
        self.clone().into_key()
    }

    /// [`ResId::key`], taking the id's own strings rather than copies.
    pub fn into_key(self) -> (Gvk, String, String) {
        let namespace = match self.effective_namespace() {
            ns if ns == self.namespace => self.namespace,
            other => other.to_owned(),
        };
        (self.gvk, self.name, namespace)
    }
}

impl std::fmt::Display for ResId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ns = if self.namespace.is_empty() {
            "[noNs]"
        } else {
            &self.namespace
        };
        let gvk = self.gvk.to_string();
        // kustomize prints the group part with a slash before the name.
        write!(f, "{gvk}/{}.{ns}", self.name)
    }
}

/// A previous identity: kind, name and effective namespace before a rename.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrevId {
    /// The kind then.
    pub kind: String,
    /// The name then.
    pub name: String,
    /// The effective namespace then.
    pub namespace: String,
}

/// What a generator does with an object of the same id: kustomize's `behavior:`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Behavior {
    /// A new object; an existing one of the same id is an error.
    #[default]
    Create,
    /// Merge data, labels and annotations into the existing object.
    Merge,
    /// Take the existing object's place.
    Replace,
}

/// An object during a render, with what kustomize tracks beside it: earlier ids (for name
/// references after renames), the prefixes and suffixes applied, generator settings.
#[derive(Debug, Clone)]
pub struct Resource {
    /// The object itself.
    pub obj: Map<String, Value>,
    /// Its ids before each rename, oldest first.
    pub prev: Vec<PrevId>,
    /// Name prefixes applied, innermost first; name references match on them.
    pub prefixes: Vec<String>,
    /// Name suffixes applied, innermost first.
    pub suffixes: Vec<String>,
    /// Set on generated objects.
    pub behavior: Option<Behavior>,
    /// Whether a content hash joins the name once the render ends.
    pub needs_hash: bool,
    /// `config.kubernetes.io/origin`, when buildMetadata asks for it.
    pub origin: Option<Value>,
    /// Var names that resolved against this resource.
    pub ref_vars: Vec<String>,
    /// Transformers that ran over this resource (origin texts), when buildMetadata asks for them.
    pub transformations: Vec<String>,
}

impl Resource {
    /// An object read from a file, with nothing tracked yet.
    pub fn new(obj: Map<String, Value>) -> Self {
        Self {
            obj,
            prev: Vec::new(),
            prefixes: Vec::new(),
            suffixes: Vec::new(),
            behavior: None,
            needs_hash: false,
            origin: None,
            ref_vars: Vec::new(),
            transformations: Vec::new(),
        }
    }

    fn str_at(&self, path: &[&str]) -> &str {
        let mut cur = &self.obj;
        for (i, p) in path.iter().enumerate() {
            match cur.get(*p) {
                Some(Value::Object(m)) if i + 1 < path.len() => cur = m,
                Some(Value::String(s)) if i + 1 == path.len() => return s,
                _ => return "",
            }
        }
        ""
    }

    /// `apiVersion`; empty when missing or not text, as for the accessors below.
    pub fn api_version(&self) -> &str {
        self.str_at(&["apiVersion"])
    }
    /// `kind`.
    pub fn kind(&self) -> &str {
        self.str_at(&["kind"])
    }
    /// `metadata.name`.
    pub fn name(&self) -> &str {
        self.str_at(&["metadata", "name"])
    }
    /// `metadata.namespace`.
    pub fn namespace(&self) -> &str {
        self.str_at(&["metadata", "namespace"])
    }
    /// The object's current group, version and kind.
    pub fn gvk(&self) -> Gvk {
        Gvk::from_api_version(self.api_version(), self.kind())
    }
    /// The object's current identity, after the renames so far.
    pub fn cur_id(&self) -> ResId {
        ResId {
            gvk: self.gvk(),
            name: self.name().to_owned(),
            namespace: self.namespace().to_owned(),
        }
    }

    /// A hash of [`ResId::key`] of [`Resource::cur_id`], from the object's own strings: equal
    /// keys hash alike under one `state`.
    pub fn key_hash(&self, state: &impl std::hash::BuildHasher) -> u64 {
        let api_version = self.api_version();
        let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
        let kind = self.kind();
        let namespace = if is_cluster_scoped_kind(group, kind) {
            "_non_namespaceable_"
        } else {
            match self.namespace() {
                "" => "default",
                ns => ns,
            }
        };
        state.hash_one((group, version, kind, self.name(), namespace))
    }

    /// The identity the resource was declared with, before any rename.
    pub fn org_id(&self) -> ResId {
        match self.prev.first() {
            Some(p) => ResId {
                gvk: Gvk {
                    kind: p.kind.clone(),
                    ..self.gvk()
                },
                name: p.name.clone(),
                namespace: p.namespace.clone(),
            },
            None => self.cur_id(),
        }
    }

    /// Every identity the object had before a rename, oldest first.
    pub fn prev_ids(&self) -> Vec<ResId> {
        let gvk = self.gvk();
        self.prev
            .iter()
            .map(|p| ResId {
                gvk: Gvk {
                    kind: p.kind.clone(),
                    ..gvk.clone()
                },
                name: p.name.clone(),
                namespace: p.namespace.clone(),
            })
            .collect()
    }

    /// Remembers the current identity before a transformer may rename the object.
    pub fn store_previous_id(&mut self) {
        let id = self.cur_id();
        self.prev.push(PrevId {
            kind: id.gvk.kind.clone(),
            name: id.name.clone(),
            namespace: id.effective_namespace().to_owned(),
        });
    }

    /// `metadata`, made a map if it is missing or something else.
    pub fn metadata_mut(&mut self) -> &mut Map<String, Value> {
        let m = self
            .obj
            .entry("metadata")
            .or_insert_with(|| Value::Object(Map::new()));
        if !m.is_object() {
            *m = Value::Object(Map::new());
        }
        m.as_object_mut().expect("metadata was just made an object")
    }

    /// Sets `metadata.name`.
    pub fn set_name(&mut self, name: &str) {
        self.metadata_mut()
            .insert("name".into(), Value::String(name.to_owned()));
    }

    /// Sets `metadata.namespace`, or removes it for an empty `ns`.
    pub fn set_namespace(&mut self, ns: &str) {
        if ns.is_empty() {
            self.metadata_mut().remove("namespace");
        } else {
            self.metadata_mut()
                .insert("namespace".into(), Value::String(ns.to_owned()));
        }
    }

    /// `metadata.<field>` with scalar values as text, as kustomize's selectors see them.
    pub fn string_map(&self, field: &str) -> Map<String, Value> {
        let mut m = self
            .obj
            .get("metadata")
            .and_then(|m| m.get(field))
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        for v in m.values_mut() {
            if let Value::Number(_) | Value::Bool(_) = v {
                *v = Value::String(v.to_string());
            }
        }
        m
    }

    /// [`Resource::string_map`] of the labels.
    pub fn labels(&self) -> Map<String, Value> {
        self.string_map("labels")
    }
    /// [`Resource::string_map`] of the annotations.
    pub fn annotations(&self) -> Map<String, Value> {
        self.string_map("annotations")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resource(yaml: &str) -> Resource {
        let doc = crate::yaml::documents(yaml, crate::yaml::Reading::Resources)
            .expect("valid YAML")
            .remove(0);
        match doc {
            Value::Object(obj) => Resource::new(obj),
            other => panic!("not an object: {other}"),
        }
    }

    #[test]
    fn ids_equal_as_keys_hash_alike_and_others_apart() {
        let state = std::hash::RandomState::new();
        let same = [
            // An unset namespace is `default`; a cluster-scoped kind has none.
            (
                "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\n",
                "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\n  namespace: default\n",
            ),
            (
                "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata:\n  name: r\n",
                "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata:\n  name: r\n  namespace: x\n",
            ),
        ];
        for (a, b) in same {
            let (a, b) = (resource(a), resource(b));
            assert_eq!(a.cur_id().into_key(), b.cur_id().into_key());
            assert_eq!(a.key_hash(&state), b.key_hash(&state));
        }
        let apart = [
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\n  namespace: other\n",
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: a\n",
            "apiVersion: example.com/v1\nkind: ConfigMap\nmetadata:\n  name: a\n",
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: b\n",
        ];
        let first = resource(same[0].0).key_hash(&state);
        for other in apart {
            assert_ne!(resource(other).key_hash(&state), first, "{other}");
        }
    }
}
