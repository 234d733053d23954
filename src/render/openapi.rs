//! A custom OpenAPI schema named by a kustomization's `openapi: {path: ...}`: it tells strategic
//! merge patches how the lists of kinds kustomize does not know merge
//! (`x-kubernetes-patch-merge-key`, `x-kubernetes-patch-strategy`).

use serde_json::{Map, Value};

use super::resource::Gvk;

/// The `definitions` of a Swagger 2 / OpenAPI v2 document.
#[derive(Debug)]
pub struct Schema {
    definitions: Map<String, Value>,
}

/// How the list at some field path merges, as the schema declares it.
pub enum ListRule<'a> {
    /// Elements with equal values of this field merge.
    MergeKey(&'a str),
    /// Elements (scalars) are a set: the patch's join the existing ones.
    MergeSet,
    /// The patch's list replaces the existing one.
    Replace,
    /// The path leads into a Kubernetes type the schema refers to without defining: kustomize
    /// completes custom schemas with its builtin one, so the builtin rules apply.
    Builtin,
}

/// A custom OpenAPI document without `definitions`.
#[derive(Debug, thiserror::Error)]
#[error("the schema has no definitions")]
pub struct NoDefinitions;

impl Schema {
    pub fn parse(doc: &Value) -> Result<Self, NoDefinitions> {
        match doc.get("definitions") {
            Some(Value::Object(d)) => Ok(Self {
                definitions: d.clone(),
            }),
            _ => Err(NoDefinitions),
        }
    }

    /// The definition whose `x-kubernetes-group-version-kind` names `gvk`.
    pub fn definition(&self, gvk: &Gvk) -> Option<&Value> {
        self.definitions.values().find(|d| {
            d.get("x-kubernetes-group-version-kind")
                .and_then(Value::as_array)
                .is_some_and(|ids| {
                    ids.iter().any(|id| {
                        let s = |k: &str| id.get(k).and_then(Value::as_str).unwrap_or("");
                        s("group") == gvk.group
                            && s("version") == gvk.version
                            && s("kind") == gvk.kind
                    })
                })
        })
    }

    /// Follows `$ref`s to the definition they name; a chain longer than the definitions can
    /// only be a loop, which resolves to nothing rather than recursing forever.
    fn resolve<'a>(&'a self, mut v: &'a Value) -> Option<&'a Value> {
        for _ in 0..=self.definitions.len() {
            match v.get("$ref").and_then(Value::as_str) {
                Some(r) => v = self.definitions.get(r.strip_prefix("#/definitions/")?)?,
                None => return Some(v),
            }
        }
        None
    }

    /// The rule for the list at `path` (field names from the object root) in `def`; `None` when
    /// the schema does not describe that field.
    pub fn list_rule<'a>(&'a self, def: &'a Value, path: &[String]) -> Option<ListRule<'a>> {
        let mut cur = self.resolve(def)?;
        for (i, seg) in path.iter().enumerate() {
            let field = cur.get("properties")?.get(seg.as_str())?;
            if i + 1 == path.len() {
                let strategy = field
                    .get("x-kubernetes-patch-strategy")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                let key = field
                    .get("x-kubernetes-patch-merge-key")
                    .and_then(Value::as_str);
                return Some(match (strategy.split(',').any(|s| s == "merge"), key) {
                    (true, Some(k)) => ListRule::MergeKey(k),
                    (true, None) => ListRule::MergeSet,
                    (false, _) => ListRule::Replace,
                });
            }
            let Some(resolved) = self.resolve(field) else {
                return self.builtin_ref(field);
            };
            cur = match resolved.get("items") {
                Some(items) => match self.resolve(items) {
                    Some(d) => d,
                    None => return self.builtin_ref(items),
                },
                None => resolved,
            };
        }
        None
    }

    /// `Builtin` when `v` refers to a Kubernetes API type this schema leaves undefined.
    fn builtin_ref<'a>(&self, v: &Value) -> Option<ListRule<'a>> {
        v.get("$ref")
            .and_then(Value::as_str)
            .and_then(|r| r.strip_prefix("#/definitions/io.k8s."))
            .map(|_| ListRule::Builtin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ref_loop_resolves_to_nothing() {
        let s = Schema::parse(&serde_json::json!({"definitions": {
            "a": {"$ref": "#/definitions/b"},
            "b": {"$ref": "#/definitions/a"},
        }}))
        .unwrap();
        assert!(
            s.resolve(&serde_json::json!({"$ref": "#/definitions/a"}))
                .is_none()
        );
    }

    fn schema() -> Schema {
        Schema::parse(&serde_json::json!({"definitions": {
            "v1.Widget": {
                "properties": {"spec": {"properties": {
                    "parts": {
                        "type": "array",
                        "items": {"$ref": "#/definitions/v1.Part"},
                        "x-kubernetes-patch-merge-key": "id",
                        "x-kubernetes-patch-strategy": "merge"
                    },
                    "tags": {"type": "array", "x-kubernetes-patch-strategy": "merge"},
                    "notes": {"type": "array"},
                    "template": {"$ref": "#/definitions/io.k8s.api.core.v1.PodTemplateSpec"}
                }}},
                "x-kubernetes-group-version-kind": [
                    {"group": "example.com", "version": "v1", "kind": "Widget"}
                ]
            },
            "v1.Part": {"properties": {"pins": {
                "type": "array",
                "x-kubernetes-patch-merge-key": "n",
                "x-kubernetes-patch-strategy": "merge,retainKeys"
            }}}
        }}))
        .expect("the schema has definitions")
    }

    fn rule(s: &Schema, path: &[&str]) -> Option<String> {
        let gvk = Gvk::from_api_version("example.com/v1", "Widget");
        let def = s.definition(&gvk).expect("Widget is defined");
        let path: Vec<String> = path.iter().map(|p| p.to_string()).collect();
        s.list_rule(def, &path).map(|r| match r {
            ListRule::MergeKey(k) => format!("key {k}"),
            ListRule::MergeSet => "set".into(),
            ListRule::Replace => "replace".into(),
            ListRule::Builtin => "builtin".into(),
        })
    }

    #[test]
    fn list_rules_follow_refs_and_array_items_to_the_merge_key() {
        let s = schema();
        assert_eq!(rule(&s, &["spec", "parts"]).as_deref(), Some("key id"));
        assert_eq!(
            rule(&s, &["spec", "parts", "pins"]).as_deref(),
            Some("key n")
        );
        assert_eq!(rule(&s, &["spec", "tags"]).as_deref(), Some("set"));
        assert_eq!(rule(&s, &["spec", "notes"]).as_deref(), Some("replace"));
        assert_eq!(rule(&s, &["spec", "missing"]), None);
    }

    #[test]
    fn undefined_kubernetes_types_defer_to_the_builtin_rules() {
        let s = schema();
        assert_eq!(
            rule(&s, &["spec", "template", "spec", "containers"]).as_deref(),
            Some("builtin")
        );
    }

    #[test]
    fn kinds_the_schema_does_not_name_have_no_definition() {
        let s = schema();
        assert!(
            s.definition(&Gvk::from_api_version("v1", "Widget"))
                .is_none()
        );
        assert!(Schema::parse(&serde_json::json!({"swagger": "2.0"})).is_err());
    }
}
