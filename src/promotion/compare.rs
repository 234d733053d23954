//! What differs between two environments' rendered objects, field by field: what a person wants
//! to see before approving. Objects are matched by kind and name, since each environment usually
//! has a namespace of its own; Secret values, and any value that came out of SOPS decryption
//! wherever the render put it, are compared but never shown.

use std::collections::BTreeMap;

use serde_json::Value;

use super::{Engine, Error};
use crate::cluster::redact::Redactor;
use crate::reconcile::{Desired, DesiredState as _};

/// Shown instead of a Secret's value or a decrypted one.
pub const MASK: &str = "(secret)";

/// How an object of one environment compares with its match in the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Only the first environment renders it.
    OnlyInFrom,
    /// Only the second environment renders it.
    OnlyInTo,
    /// Both render it, with the fields listed differing.
    Differs,
    /// Both render it alike (namespace aside).
    Same,
}

impl Status {
    /// The name the API uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OnlyInFrom => "only_in_from",
            Self::OnlyInTo => "only_in_to",
            Self::Differs => "differs",
            Self::Same => "same",
        }
    }
}

/// One field that differs between two matched objects.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldDifference {
    /// Dotted path with list indexes, such as `spec.template.spec.containers[0].image`.
    pub path: String,
    /// JSON of the value, [`MASK`] for Secret data; `None` when absent.
    pub from: Option<String>,
    /// As `from`, in the second environment.
    pub to: Option<String>,
}

/// One object, matched by kind and name across the two environments.
#[derive(Debug, Clone, PartialEq)]
pub struct ObjectComparison {
    /// The object's kind.
    pub kind: String,
    /// The object's name (its namespace is left out of the match).
    pub name: String,
    /// Whether it is in both and alike.
    pub status: Status,
    /// What differs, for [`Status::Differs`].
    pub fields: Vec<FieldDifference>,
}

/// Two environments compared, at the revisions Git says they should run.
#[derive(Debug, Clone, PartialEq)]
pub struct Comparison {
    /// The first environment's revision.
    pub from_revision: String,
    /// The second environment's revision.
    pub to_revision: String,
    /// Every object of either, by kind and name.
    pub objects: Vec<ObjectComparison>,
}

impl Engine {
    /// `from` and `to` rendered at the revisions Git says they should run, compared.
    pub async fn compare(&self, from: &str, to: &str) -> Result<Comparison, Error> {
        let from_env = self.environment(from)?.clone();
        let to_env = self.environment(to)?.clone();
        let render = |env: crate::pipeline::Environment| async move {
            self.source
                .desired(&env)
                .await
                .map_err(|source| Error::Check {
                    target: env.name.clone(),
                    source: Box::new(crate::reconcile::Error::Source {
                        env: env.name.clone(),
                        source,
                    }),
                })
        };
        // Rendering both holds their objects: it takes a turn as a sync pass does.
        let _turn = self.options.passes.take().await;
        let a = render(from_env).await?;
        let b = render(to_env).await?;
        Ok(compare(a, b))
    }
}

/// The comparison of two rendered environments (Secrets decrypted; masked here).
pub fn compare(from: Desired, to: Desired) -> Comparison {
    let mut decrypted = Redactor::default();
    decrypted.add_tainted(&from.tainted);
    decrypted.add_tainted(&to.tainted);
    let index = |objects: &[Value]| -> BTreeMap<(String, String), BTreeMap<String, String>> {
        objects
            .iter()
            .map(|object| {
                let kind = text(object, "/kind");
                let name = text(object, "/metadata/name");
                let mut fields = BTreeMap::new();
                flatten(object, String::new(), &mut fields);
                fields.remove("metadata.namespace");
                ((kind, name), fields)
            })
            .collect()
    };
    let a = index(&from.objects);
    let b = index(&to.objects);
    let mut keys: Vec<&(String, String)> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    let objects = keys
        .into_iter()
        .map(|key| {
            let secret = key.0 == "Secret";
            let (status, fields) = match (a.get(key), b.get(key)) {
                (Some(x), Some(y)) => {
                    let fields = differences(x, y, secret, &decrypted);
                    let status = if fields.is_empty() {
                        Status::Same
                    } else {
                        Status::Differs
                    };
                    (status, fields)
                }
                (Some(_), None) => (Status::OnlyInFrom, Vec::new()),
                _ => (Status::OnlyInTo, Vec::new()),
            };
            ObjectComparison {
                kind: key.0.clone(),
                name: key.1.clone(),
                status,
                fields,
            }
        })
        .collect();
    Comparison {
        from_revision: from.revision,
        to_revision: to.revision,
        objects,
    }
}

fn text(object: &Value, pointer: &str) -> String {
    object
        .pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

/// Leaf values by dotted path (`spec.template.spec.containers[0].image`), as JSON.
fn flatten(value: &Value, path: String, out: &mut BTreeMap<String, String>) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (key, child) in map {
                let next = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                flatten(child, next, out);
            }
        }
        Value::Array(items) if !items.is_empty() => {
            for (i, child) in items.iter().enumerate() {
                flatten(child, format!("{path}[{i}]"), out);
            }
        }
        leaf => {
            out.insert(path, leaf.to_string());
        }
    }
}

/// A leaf's text as the render holds it (a string without JSON's quotes and escapes).
fn unquoted(json: &str) -> String {
    match serde_json::from_str::<Value>(json) {
        Ok(Value::String(s)) => s,
        _ => json.to_owned(),
    }
}

fn is_secret_value(path: &str) -> bool {
    path.starts_with("data.") || path.starts_with("stringData.")
}

fn differences(
    a: &BTreeMap<String, String>,
    b: &BTreeMap<String, String>,
    secret: bool,
    decrypted: &Redactor,
) -> Vec<FieldDifference> {
    let mut paths: Vec<&String> = a.keys().chain(b.keys()).collect();
    paths.sort();
    paths.dedup();
    paths
        .into_iter()
        .filter(|path| a.get(*path) != b.get(*path))
        .map(|path| {
            let show = |value: Option<&String>| {
                value.map(|v| {
                    if (secret && is_secret_value(path)) || decrypted.hides(&unquoted(v)) {
                        MASK.to_owned()
                    } else {
                        v.clone()
                    }
                })
            };
            FieldDifference {
                path: path.clone(),
                from: show(a.get(path)),
                to: show(b.get(path)),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn desired(revision: &str, objects: Vec<Value>) -> Desired {
        Desired {
            revision: revision.into(),
            objects,
            tainted: Default::default(),
        }
    }

    #[test]
    fn objects_match_by_kind_and_name_across_namespaces_and_secret_values_never_show() {
        let from = desired(
            "a",
            vec![
                json!({"kind": "ConfigMap", "metadata": {"name": "app", "namespace": "dev"}, "data": {"LEVEL": "debug", "SAME": "x"}}),
                json!({"kind": "Secret", "metadata": {"name": "db", "namespace": "dev"}, "data": {"password": "ZGV2LXB3", "user": "YXBw"}}),
                json!({"kind": "Service", "metadata": {"name": "only-dev"}}),
            ],
        );
        let to = desired(
            "b",
            vec![
                json!({"kind": "ConfigMap", "metadata": {"name": "app", "namespace": "prod"}, "data": {"LEVEL": "info", "SAME": "x"}}),
                json!({"kind": "Secret", "metadata": {"name": "db", "namespace": "prod"}, "data": {"password": "cHJvZC1wdw==", "user": "YXBw"}}),
            ],
        );
        let comparison = compare(from, to);
        let by_name = |name: &str| {
            comparison
                .objects
                .iter()
                .find(|o| o.name == name)
                .expect("object compared")
        };
        let config = by_name("app");
        assert_eq!(config.status, Status::Differs);
        assert_eq!(
            config.fields,
            vec![FieldDifference {
                path: "data.LEVEL".into(),
                from: Some("\"debug\"".into()),
                to: Some("\"info\"".into()),
            }]
        );
        let secret = by_name("db");
        assert_eq!(secret.status, Status::Differs);
        assert_eq!(secret.fields.len(), 1, "only the changed key is named");
        assert_eq!(secret.fields[0].path, "data.password");
        assert_eq!(secret.fields[0].from.as_deref(), Some(MASK));
        assert_eq!(secret.fields[0].to.as_deref(), Some(MASK));
        let text = format!("{comparison:?}");
        assert!(!text.contains("ZGV2LXB3") && !text.contains("cHJvZC1wdw"));
        assert_eq!(by_name("only-dev").status, Status::OnlyInFrom);
    }

    #[test]
    fn a_decrypted_value_moved_into_another_kind_is_compared_but_never_shown() {
        let config = |ns: &str, password: &str| {
            json!({"kind": "ConfigMap", "metadata": {"name": "app", "namespace": ns},
                   "data": {"PASSWORD": password, "LEVEL": ns}})
        };
        let mut from = desired("a", vec![config("dev", "dev \"pw\" one")]);
        from.tainted = crate::secrets::taint::of_dotenv("PASSWORD=dev \"pw\" one\n");
        let mut to = desired("b", vec![config("prod", "prod-pw-two")]);
        to.tainted = crate::secrets::taint::of_dotenv("PASSWORD=prod-pw-two\n");
        let comparison = compare(from, to);
        let fields = &comparison.objects[0].fields;
        let password = fields
            .iter()
            .find(|f| f.path == "data.PASSWORD")
            .expect("the changed value is named");
        assert_eq!(password.from.as_deref(), Some(MASK));
        assert_eq!(password.to.as_deref(), Some(MASK));
        let level = fields
            .iter()
            .find(|f| f.path == "data.LEVEL")
            .expect("LEVEL");
        assert_eq!(level.to.as_deref(), Some("\"prod\""));
        let text = format!("{comparison:?}");
        assert!(
            !text.contains("pw") && !text.contains("prod-pw-two"),
            "{text}"
        );
    }
}
