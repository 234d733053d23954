//! Objects as Stagehand handles them: a manifest plus the reference that names it.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::redact;

/// Names one object in a cluster. Identity ([`ObjectRef::key`]) leaves out the version, so that
/// an object served under a new version is still the same object.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ObjectRef {
    /// API group; empty for the core group.
    #[serde(rename = "g", default, skip_serializing_if = "String::is_empty")]
    pub group: String,
    /// The version it is applied with.
    #[serde(rename = "v")]
    pub version: String,
    /// Kind.
    #[serde(rename = "k")]
    pub kind: String,
    /// `None` for cluster-scoped objects.
    #[serde(rename = "ns", default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// `metadata.name`.
    #[serde(rename = "n")]
    pub name: String,
}

/// The version-free identity of an object.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    /// API group.
    pub group: String,
    /// Kind.
    pub kind: String,
    /// `None` for cluster-scoped objects.
    pub namespace: Option<String>,
    /// `metadata.name`.
    pub name: String,
}

/// [`ObjectKey`] borrowed from an [`ObjectRef`] or an [`ObjectKey`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyRef<'a> {
    group: &'a str,
    kind: &'a str,
    namespace: Option<&'a str>,
    name: &'a str,
}

impl ObjectKey {
    /// The same identity, borrowed.
    pub fn as_ref(&self) -> KeyRef<'_> {
        KeyRef {
            group: &self.group,
            kind: &self.kind,
            namespace: self.namespace.as_deref(),
            name: &self.name,
        }
    }
}

impl ObjectRef {
    /// `group/version`, or the version alone for the core group.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// The identity without the version.
    pub fn key(&self) -> ObjectKey {
        ObjectKey {
            group: self.group.clone(),
            kind: self.kind.clone(),
            namespace: self.namespace.clone(),
            name: self.name.clone(),
        }
    }

    /// The identity without the version, borrowed: for the sets a pass builds over hundreds
    /// of objects, where [`ObjectRef::key`]'s copies would cost more than the lookups.
    pub fn key_ref(&self) -> KeyRef<'_> {
        KeyRef {
            group: &self.group,
            kind: &self.kind,
            namespace: self.namespace.as_deref(),
            name: &self.name,
        }
    }

    /// Whether it is a Secret, whose values are never shown.
    pub fn is_secret(&self) -> bool {
        self.group.is_empty() && self.kind == "Secret"
    }

    /// Whether it is a Namespace, pruned only when allowed.
    pub fn is_namespace(&self) -> bool {
        self.group.is_empty() && self.kind == "Namespace"
    }

    /// Whether it is a CRD, pruned only when allowed.
    pub fn is_crd(&self) -> bool {
        self.group == "apiextensions.k8s.io" && self.kind == "CustomResourceDefinition"
    }

    /// Namespaces and CRDs are applied first, so that what lives in them or is an instance of
    /// them can be applied after; pruning runs the stages backwards.
    pub fn stage(&self) -> Stage {
        if self.is_namespace() || self.is_crd() {
            Stage::Definitions
        } else {
            Stage::Workloads
        }
    }
}

/// Apply order: every object of one stage is applied (and CRDs established) before the next.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Stage {
    /// Namespaces and CRDs.
    Definitions,
    /// Everything else.
    Workloads,
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.kind)?;
        if !self.group.is_empty() {
            write!(f, ".{}", self.group)?;
        }
        match &self.namespace {
            Some(ns) => write!(f, " {ns}/{}", self.name),
            None => write!(f, " {}", self.name),
        }
    }
}

/// A desired object: its manifest as rendered, and the reference parsed from it.
#[derive(Clone, PartialEq)]
pub struct Object {
    reference: ObjectRef,
    manifest: Value,
}

/// A manifest that cannot be an object.
#[derive(Debug, Clone, thiserror::Error)]
// Each variant is described by its message, and its fields by the names the message uses.
#[allow(missing_docs)]
pub enum ObjectError {
    #[error("object #{index}: field {field} is missing or not a string")]
    MissingField { index: usize, field: &'static str },
    #[error("object #{index}: apiVersion {api_version:?} is not GROUP/VERSION or VERSION")]
    ApiVersion { index: usize, api_version: String },
    #[error("object #{index} ({reference}): listed twice")]
    Duplicate {
        index: usize,
        reference: Box<ObjectRef>,
    },
}

/// The field of `value` at `path`, one key per level. Unlike `Value::pointer` it allocates
/// nothing, which shows when every object of every pass is looked into.
pub(crate) fn at<'a>(value: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(value, |v, key| v.get(key))
}

impl Object {
    /// Parses the reference out of a manifest; `index` names the object in errors, since a
    /// manifest without a name has nothing better to be called by.
    pub fn from_manifest(index: usize, manifest: Value) -> Result<Self, ObjectError> {
        let text = |path: &[&str], field: &'static str| {
            at(&manifest, path)
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .ok_or(ObjectError::MissingField { index, field })
        };
        let api_version = text(&["apiVersion"], "apiVersion")?;
        let kind = text(&["kind"], "kind")?;
        let name = text(&["metadata", "name"], "metadata.name")?;
        let namespace = text(&["metadata", "namespace"], "metadata.namespace").ok();
        let (group, version) = match api_version.split_once('/') {
            Some((g, v)) if !g.is_empty() && !v.is_empty() && !v.contains('/') => {
                (g.to_owned(), v.to_owned())
            }
            None => (String::new(), api_version.clone()),
            Some(_) => return Err(ObjectError::ApiVersion { index, api_version }),
        };
        Ok(Self {
            reference: ObjectRef {
                group,
                version,
                kind,
                namespace,
                name,
            },
            manifest,
        })
    }

    /// Parses a list of manifests, rejecting an object listed twice.
    pub fn from_manifests(manifests: Vec<Value>) -> Result<Vec<Self>, ObjectError> {
        let parsed: Vec<Result<Self, ObjectError>> = manifests
            .into_iter()
            .enumerate()
            .map(|(index, m)| Self::from_manifest(index, m))
            .collect();
        // The first problem in list order is the one reported.
        let mut seen = std::collections::HashSet::with_capacity(parsed.len());
        for (index, object) in parsed.iter().enumerate() {
            match object {
                Err(e) => return Err(e.clone()),
                Ok(o) if !seen.insert(o.reference.key_ref()) => {
                    return Err(ObjectError::Duplicate {
                        index,
                        reference: Box::new(o.reference.clone()),
                    });
                }
                Ok(_) => {}
            }
        }
        drop(seen);
        Ok(parsed.into_iter().flatten().collect())
    }

    /// Which object.
    pub fn reference(&self) -> &ObjectRef {
        &self.reference
    }

    /// The manifest to apply.
    pub fn manifest(&self) -> &Value {
        &self.manifest
    }

    pub(crate) fn manifest_mut(&mut self) -> &mut Value {
        &mut self.manifest
    }

    /// Sets the namespace of a namespaced object that came without one.
    pub(crate) fn set_namespace(&mut self, namespace: &str) {
        self.reference.namespace = Some(namespace.to_owned());
        if let Some(meta) = self
            .manifest
            .get_mut("metadata")
            .and_then(Value::as_object_mut)
        {
            meta.insert("namespace".into(), Value::String(namespace.to_owned()));
        }
    }

    /// Drops the namespace of a cluster-scoped object, which the apiserver would reject.
    pub(crate) fn clear_namespace(&mut self) {
        self.reference.namespace = None;
        if let Some(meta) = self
            .manifest
            .get_mut("metadata")
            .and_then(Value::as_object_mut)
        {
            meta.remove("namespace");
        }
    }
}

/// Secret values never reach a log through `{:?}`.
impl fmt::Debug for Object {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Object")
            .field("reference", &self.reference)
            .field("manifest", &redact::object(&self.manifest))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_reference_is_parsed_from_group_version_kind_namespace_and_name() {
        let o = Object::from_manifest(
            0,
            json!({"apiVersion": "apps/v1", "kind": "Deployment",
                   "metadata": {"name": "web", "namespace": "shop"}}),
        )
        .expect("valid");
        assert_eq!(o.reference().group, "apps");
        assert_eq!(o.reference().version, "v1");
        assert_eq!(o.reference().to_string(), "Deployment.apps shop/web");
        let core = Object::from_manifest(
            1,
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}}),
        )
        .expect("valid");
        assert_eq!(core.reference().group, "");
        assert_eq!(core.reference().stage(), Stage::Definitions);
    }

    #[test]
    fn a_manifest_without_a_name_is_rejected_naming_the_field() {
        let err = Object::from_manifest(3, json!({"apiVersion": "v1", "kind": "ConfigMap"}))
            .expect_err("no name");
        assert_eq!(
            err.to_string(),
            "object #3: field metadata.name is missing or not a string"
        );
    }

    #[test]
    fn an_object_listed_twice_is_rejected() {
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap",
                        "metadata": {"name": "a", "namespace": "x"}});
        let err = Object::from_manifests(vec![cm.clone(), cm]).expect_err("duplicate");
        assert!(err.to_string().contains("listed twice"), "{err}");
    }

    #[test]
    fn debug_output_of_a_secret_hides_its_values() {
        let o = Object::from_manifest(
            0,
            json!({"apiVersion": "v1", "kind": "Secret",
                   "metadata": {"name": "db", "namespace": "x"},
                   "stringData": {"password": "hunter2"}}),
        )
        .expect("valid");
        let debug = format!("{o:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(debug.contains("password"), "{debug}");
    }
}
