//! Differences an environment leaves to other controllers (`ignoreDifferences:` of the
//! pipeline, see [`crate::pipeline::ignore`]).
//!
//! For an object that already exists, each ignored field Git sets is
//! - left out of what is applied when another field manager holds it (in whole or in part) or
//!   the cluster no longer has it: Stagehand gives up its share of the field under server-side
//!   apply and never takes it back, so the other controller's value stays;
//! - otherwise (only Stagehand holds it, or nobody) applied with the value the cluster has:
//!   leaving out a field only Stagehand holds would make the apiserver delete it (a
//!   Deployment's `spec.replicas` would fall back to 1), so it is kept as it is until another
//!   manager takes it.
//!
//! Either way a difference in an ignored field is no drift: it is reported as [`Ignored`]
//! instead. An object that does not exist yet is created with every field from Git (what
//! Argo CD's `RespectIgnoreDifferences` does, always on here).
//!
//! Fields come from JSON Pointer tokens (a key, or on a list an index) and, for
//! `managedFieldsManagers`, from the named managers' `fieldsV1` in the live object's
//! `metadata.managedFields`, where list elements are named by their key fields (`k:`), their
//! value (`v:`) or their index (`i:`).

use std::cmp::Ordering;
use std::fmt;

use serde::Serialize;
use serde_json::{Map, Value};

use super::{FIELD_MANAGER, ObjectRef, diff};
use crate::pipeline::{FieldPath, IgnoreRule};

/// A field whose value in Git the cluster does not hold, left alone by a rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Ignored {
    /// The field path, written as drift paths are (`.spec.replicas`).
    pub field: String,
    /// The index of the rule in the environment's `ignoreDifferences`.
    pub rule: usize,
}

impl fmt::Display for Ignored {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (ignoreDifferences[{}])", self.field, self.rule)
    }
}

/// Whether any rule selects the object: its kind is then listed with `managedFields`.
pub fn selects(rules: &[IgnoreRule], reference: &ObjectRef) -> bool {
    rules.iter().any(|rule| selected(rule, reference))
}

fn selected(rule: &IgnoreRule, r: &ObjectRef) -> bool {
    rule.selects(&r.group, &r.kind, r.namespace.as_deref(), &r.name)
}

/// One step into an object.
#[derive(Debug, Clone, PartialEq)]
enum Step {
    /// A mapping key, or on a list an index.
    Token(String),
    /// The list element whose fields hold these values (`k:`).
    Keys(Map<String, Value>),
    /// The set element equal to this value (`v:`).
    Value(Value),
}

/// One ignored field of one object.
#[derive(Debug)]
struct Field {
    steps: Vec<Step>,
    rule: usize,
    /// Another field manager holds it, or part of it.
    elsewhere: bool,
}

/// The ignored fields of one existing object.
#[derive(Debug, Default)]
pub struct Fields(Vec<Field>);

impl Fields {
    /// The fields the rules selecting `reference` name, and the fields their
    /// `managedFieldsManagers` hold in `live`.
    pub fn of(rules: &[IgnoreRule], reference: &ObjectRef, live: &Value) -> Self {
        let mut fields = Vec::new();
        for (rule_index, rule) in rules.iter().enumerate() {
            if !selected(rule, reference) {
                continue;
            }
            for path in &rule.fields {
                let steps = steps_of(path);
                let elsewhere = held_elsewhere(live, &steps);
                fields.push(Field {
                    steps,
                    rule: rule_index,
                    elsewhere,
                });
            }
            for (manager, set) in managed_fields(live) {
                if !rule.managers.iter().any(|m| m == manager) {
                    continue;
                }
                let mut leaves = Vec::new();
                collect_leaves(set, Some(live), &mut Vec::new(), &mut leaves);
                fields.extend(leaves.into_iter().filter(|steps| !is_identity(steps)).map(
                    |steps| Field {
                        steps,
                        rule: rule_index,
                        elsewhere: true,
                    },
                ));
            }
        }
        Self(fields)
    }

    /// Whether no field is ignored.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The ignored fields Git sets to a value the cluster does not hold, each once (named by
    /// the first rule that ignores it).
    pub fn differences(&self, desired: &Value, live: &Value) -> Vec<Ignored> {
        let mut out: Vec<Ignored> = Vec::new();
        for field in &self.0 {
            let Some(want) = get(desired, &field.steps) else {
                continue;
            };
            let differs = match get(live, &field.steps) {
                Some(have) => !diff::contains(have, want),
                None => !want.is_null(),
            };
            let name = display(&field.steps, desired);
            if differs && !out.iter().any(|i| i.field == name) {
                out.push(Ignored {
                    field: name,
                    rule: field.rule,
                });
            }
        }
        out
    }

    /// Whether Stagehand still holds, in `live`, a field Git sets that it now leaves to another
    /// manager: only an apply lets go of it, even when nothing else changed.
    pub fn releases(&self, desired: &Value, live: &Value) -> bool {
        self.0.iter().any(|field| {
            field.elsewhere
                && get(desired, &field.steps).is_some()
                && field_sets(live)
                    .any(|(m, set)| m == FIELD_MANAGER && holds(set, Some(live), &field.steps))
        })
    }

    /// What to apply to the existing object `live` instead of `desired` (see the module
    /// documentation): each ignored field Git sets is left out, or set to the live value.
    pub fn apply_config(&self, desired: &Value, live: &Value) -> Value {
        let mut out = desired.clone();
        let mut removals: Vec<&[Step]> = Vec::new();
        for field in &self.0 {
            if get(desired, &field.steps).is_none() {
                continue;
            }
            match get(live, &field.steps) {
                Some(value) if !field.elsewhere => {
                    if let Some(slot) = get_mut(&mut out, &field.steps) {
                        *slot = value.clone();
                    }
                }
                _ => removals.push(&field.steps),
            }
        }
        // Later list elements go first, so that an index still names the element it named.
        removals.sort_by(|a, b| compare_steps(b, a));
        removals.dedup();
        for steps in removals {
            remove(&mut out, steps);
        }
        out
    }
}

fn steps_of(path: &FieldPath) -> Vec<Step> {
    path.tokens.iter().cloned().map(Step::Token).collect()
}

/// Whether the steps name a field that identifies the object (never ignored, whoever holds it).
fn is_identity(steps: &[Step]) -> bool {
    let tokens: Option<Vec<&str>> = steps
        .iter()
        .map(|s| match s {
            Step::Token(t) => Some(t.as_str()),
            _ => None,
        })
        .collect();
    tokens.is_some_and(|t| FieldPath::is_identity(&t))
}

/// The index of the element of `list` that `step` names.
fn index_in(list: &[Value], step: &Step) -> Option<usize> {
    match step {
        Step::Token(t) => t.parse().ok().filter(|i| *i < list.len()),
        Step::Keys(keys) => list.iter().position(|item| {
            keys.iter()
                .all(|(k, v)| item.get(k).is_some_and(|have| diff::contains(have, v)))
        }),
        Step::Value(v) => list.iter().position(|item| item == v),
    }
}

fn child<'a>(value: &'a Value, step: &Step) -> Option<&'a Value> {
    match (value, step) {
        (Value::Object(map), Step::Token(key)) => map.get(key),
        (Value::Array(list), step) => list.get(index_in(list, step)?),
        _ => None,
    }
}

fn get<'a>(value: &'a Value, steps: &[Step]) -> Option<&'a Value> {
    steps.iter().try_fold(value, child)
}

fn get_mut<'a>(value: &'a mut Value, steps: &[Step]) -> Option<&'a mut Value> {
    steps.iter().try_fold(value, |value, step| match value {
        Value::Object(map) => match step {
            Step::Token(key) => map.get_mut(key),
            _ => None,
        },
        Value::Array(list) => {
            let i = index_in(list, step)?;
            list.get_mut(i)
        }
        _ => None,
    })
}

/// Removes the field, then the mappings that held nothing else: an empty mapping left in the
/// apply would still claim the field.
fn remove(value: &mut Value, steps: &[Step]) {
    let Some((last, parent)) = steps.split_last() else {
        return;
    };
    let removed = match get_mut(value, parent) {
        Some(Value::Object(map)) => match last {
            Step::Token(key) => map.remove(key).is_some(),
            _ => false,
        },
        Some(Value::Array(list)) => match index_in(list, last) {
            Some(i) => {
                list.remove(i);
                true
            }
            None => false,
        },
        _ => false,
    };
    if removed
        && !parent.is_empty()
        && get(value, parent).is_some_and(|v| v.as_object().is_some_and(Map::is_empty))
    {
        remove(value, parent);
    }
}

/// Orders paths so that, among siblings in a list, a higher index sorts later.
fn compare_steps(a: &[Step], b: &[Step]) -> Ordering {
    for (x, y) in a.iter().zip(b) {
        let order = match (x, y) {
            (Step::Token(x), Step::Token(y)) => match (x.parse::<u64>(), y.parse::<u64>()) {
                (Ok(x), Ok(y)) => x.cmp(&y),
                _ => x.cmp(y),
            },
            _ => Ordering::Equal,
        };
        if order != Ordering::Equal {
            return order;
        }
    }
    a.len().cmp(&b.len())
}

/// The field path as drift paths are written, read against `value` to tell list indexes from
/// keys: `.spec.replicas`, `.spec.containers[0].image`, `.spec.containers[name="web"]`.
fn display(steps: &[Step], value: &Value) -> String {
    let mut out = String::new();
    let mut at = Some(value);
    for step in steps {
        match (step, at) {
            (Step::Token(t), Some(Value::Array(_))) => out.push_str(&format!("[{t}]")),
            (Step::Token(t), _) => out = diff::child_path(&out, t),
            (Step::Keys(keys), _) => {
                let keys: Vec<String> = keys.iter().map(|(k, v)| format!("{k}={v}")).collect();
                out.push_str(&format!("[{}]", keys.join(",")));
            }
            (Step::Value(v), _) => out.push_str(&format!("[={v}]")),
        }
        at = at.and_then(|v| child(v, step));
    }
    out
}

/// Each field manager's field set (`fieldsV1`) in `live`, Stagehand's own included.
fn field_sets(live: &Value) -> impl Iterator<Item = (&str, &Map<String, Value>)> {
    live.pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|entry| {
            let manager = entry.get("manager")?.as_str()?;
            let set = entry.get("fieldsV1")?.as_object()?;
            Some((manager, set))
        })
}

/// Each other field manager's field set in `live`.
fn managed_fields(live: &Value) -> impl Iterator<Item = (&str, &Map<String, Value>)> {
    field_sets(live).filter(|(manager, _)| *manager != FIELD_MANAGER)
}

/// The step a key of a field set (`f:replicas`, `k:{"name":"web"}`, `v:"x"`, `i:0`) names.
fn step_of_key(key: &str) -> Option<Step> {
    let (prefix, rest) = key.split_at_checked(2)?;
    match prefix {
        "f:" | "i:" => Some(Step::Token(rest.to_owned())),
        "k:" => match serde_json::from_str(rest).ok()? {
            Value::Object(keys) => Some(Step::Keys(keys)),
            _ => None,
        },
        "v:" => serde_json::from_str(rest).ok().map(Step::Value),
        _ => None,
    }
}

/// Whether a manager other than Stagehand holds the field at `steps` of `live`, or part of it.
fn held_elsewhere(live: &Value, steps: &[Step]) -> bool {
    managed_fields(live).any(|(_, set)| holds(set, Some(live), steps))
}

fn holds(set: &Map<String, Value>, value: Option<&Value>, steps: &[Step]) -> bool {
    let Some((step, rest)) = steps.split_first() else {
        return true;
    };
    let members: Vec<(&String, &Value)> = set.iter().filter(|(k, _)| *k != ".").collect();
    if members.is_empty() {
        // A leaf: the manager holds the whole value, everything under it included.
        return true;
    }
    let next = value.and_then(|v| child(v, step));
    let member = match (value, step) {
        (Some(Value::Array(list)), step) => {
            let Some(index) = index_in(list, step) else {
                return false;
            };
            members.into_iter().find(|(key, _)| {
                step_of_key(key).is_some_and(|s| index_in(list, &s) == Some(index))
            })
        }
        (_, Step::Token(token)) => {
            let key = format!("f:{token}");
            members.into_iter().find(|(k, _)| **k == key)
        }
        _ => None,
    };
    match member {
        Some((_, Value::Object(inner))) => holds(inner, next, rest),
        _ => false,
    }
}

/// The paths of the fields a field set holds. A list element the set holds as a whole (`.`
/// beside its fields) is one path; a mapping's `.` only says the mapping exists, so its
/// fields are named one by one.
fn collect_leaves(
    set: &Map<String, Value>,
    value: Option<&Value>,
    path: &mut Vec<Step>,
    out: &mut Vec<Vec<Step>>,
) {
    let members: Vec<(&String, &Value)> = set.iter().filter(|(k, _)| *k != ".").collect();
    let element = matches!(path.last(), Some(Step::Keys(_) | Step::Value(_)));
    if members.is_empty() || (element && set.contains_key(".")) {
        if !path.is_empty() {
            out.push(path.clone());
        }
        return;
    }
    for (key, inner) in members {
        let (Some(step), Some(inner)) = (step_of_key(key), inner.as_object()) else {
            continue;
        };
        let next = value.and_then(|v| child(v, &step));
        path.push(step);
        collect_leaves(inner, next, path, out);
        path.pop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn deployment() -> ObjectRef {
        ObjectRef {
            group: "apps".into(),
            version: "v1".into(),
            kind: "Deployment".into(),
            namespace: Some("shop".into()),
            name: "web".into(),
        }
    }

    fn rule(pointers: &[&str], managers: &[&str]) -> IgnoreRule {
        IgnoreRule {
            group: Some("apps".into()),
            kind: "Deployment".into(),
            name: None,
            namespace: None,
            fields: pointers
                .iter()
                .map(|p| FieldPath::from_pointer(p).expect("valid"))
                .collect(),
            managers: managers.iter().map(|m| (*m).to_owned()).collect(),
        }
    }

    fn desired() -> Value {
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
               "metadata": {"name": "web", "namespace": "shop"},
               "spec": {"replicas": 3, "template": {"spec": {"containers": [
                   {"name": "web", "image": "web:2"}, {"name": "log", "image": "log:1"}]}}}})
    }

    /// `desired` as it runs with `replicas` and the web image changed, and these managers.
    fn live(managed: Value) -> Value {
        let mut live = desired();
        live["spec"]["replicas"] = json!(7);
        live["spec"]["template"]["spec"]["containers"][0]["image"] = json!("web:1");
        live["metadata"]["managedFields"] = managed;
        live
    }

    fn hpa_holds_replicas() -> Value {
        json!([
            {"manager": "stagehand", "operation": "Apply", "fieldsV1": {"f:spec": {
                "f:template": {"f:spec": {"f:containers": {
                    "k:{\"name\":\"web\"}": {".": {}, "f:image": {}, "f:name": {}}}}}}}},
            {"manager": "autoscaler", "operation": "Update", "subresource": "scale",
             "fieldsV1": {"f:spec": {"f:replicas": {}}}}
        ])
    }

    #[test]
    fn a_field_another_manager_holds_is_left_out_of_the_apply_and_reported_once() {
        let live = live(hpa_holds_replicas());
        let fields = Fields::of(&[rule(&["/spec/replicas"], &[])], &deployment(), &live);
        let config = fields.apply_config(&desired(), &live);
        assert_eq!(config["spec"].get("replicas"), None);
        assert_eq!(
            config["spec"]["template"]["spec"]["containers"][0]["image"],
            "web:2"
        );
        assert_eq!(
            fields.differences(&desired(), &live),
            vec![Ignored {
                field: ".spec.replicas".into(),
                rule: 0
            }]
        );
        assert_eq!(
            fields.differences(&desired(), &live)[0].to_string(),
            ".spec.replicas (ignoreDifferences[0])"
        );
    }

    #[test]
    fn stagehand_lets_go_of_a_field_it_shares_with_the_manager_it_leaves_it_to() {
        let shared = json!([
            {"manager": "stagehand", "operation": "Apply", "fieldsV1": {"f:spec": {"f:replicas": {}}}},
            {"manager": "autoscaler", "operation": "Apply", "fieldsV1": {"f:spec": {"f:replicas": {}}}}
        ]);
        let rules = [rule(&["/spec/replicas"], &[])];
        let live_shared = live(shared);
        assert!(Fields::of(&rules, &deployment(), &live_shared).releases(&desired(), &live_shared));
        let live_given = live(hpa_holds_replicas());
        assert!(!Fields::of(&rules, &deployment(), &live_given).releases(&desired(), &live_given));
    }

    #[test]
    fn a_field_only_stagehand_holds_keeps_the_live_value_so_the_apiserver_does_not_drop_it() {
        let live = live(json!([{"manager": "stagehand", "operation": "Apply",
                                "fieldsV1": {"f:spec": {"f:replicas": {}}}}]));
        let fields = Fields::of(&[rule(&["/spec/replicas"], &[])], &deployment(), &live);
        assert_eq!(
            fields.apply_config(&desired(), &live)["spec"]["replicas"],
            7
        );
    }

    #[test]
    fn a_field_the_cluster_no_longer_has_is_left_out_and_one_git_lacks_is_not_reported() {
        let mut live = live(json!([]));
        live["spec"]
            .as_object_mut()
            .expect("spec")
            .remove("replicas");
        let fields = Fields::of(
            &[rule(&["/spec/replicas", "/spec/paused"], &[])],
            &deployment(),
            &live,
        );
        assert_eq!(
            fields.apply_config(&desired(), &live)["spec"].get("replicas"),
            None
        );
        let ignored = fields.differences(&desired(), &live);
        assert_eq!(ignored.len(), 1, "{ignored:?}");
    }

    #[test]
    fn rules_for_other_objects_ignore_nothing() {
        let mut other = rule(&["/spec/replicas"], &[]);
        other.name = Some("api".into());
        let live = live(hpa_holds_replicas());
        assert!(Fields::of(&[other.clone()], &deployment(), &live).is_empty());
        assert!(!selects(&[other], &deployment()));
        assert!(selects(&[rule(&["/spec"], &[])], &deployment()));
    }

    #[test]
    fn the_fields_of_named_managers_are_ignored_down_to_list_elements_by_their_keys() {
        let managed = json!([
            {"manager": "injector", "operation": "Update", "fieldsV1": {
                "f:metadata": {"f:labels": {".": {}, "f:injected": {}}},
                "f:spec": {"f:template": {"f:spec": {"f:containers": {
                    "k:{\"name\":\"web\"}": {"f:image": {}},
                    "k:{\"name\":\"log\"}": {".": {}, "f:image": {}, "f:name": {}}}}}}}}
        ]);
        let live = live(managed);
        let fields = Fields::of(&[rule(&[], &["injector"])], &deployment(), &live);
        let config = fields.apply_config(&desired(), &live);
        assert_eq!(
            config["spec"]["template"]["spec"]["containers"],
            json!([{"name": "web"}]),
            "the web image is left out and the log container, held whole, too"
        );
        let names: Vec<String> = fields
            .differences(&desired(), &live)
            .into_iter()
            .map(|i| i.field)
            .collect();
        assert_eq!(
            names,
            [".spec.template.spec.containers[name=\"web\"].image"]
        );
        assert!(
            Fields::of(&[rule(&[], &["someone-else"])], &deployment(), &live).is_empty(),
            "only the named managers count"
        );
    }

    #[test]
    fn a_pointer_into_a_list_element_another_manager_holds_by_key_is_left_out() {
        let managed = json!([{"manager": "patcher", "operation": "Update", "fieldsV1": {
            "f:spec": {"f:template": {"f:spec": {"f:containers": {
                "k:{\"name\":\"log\"}": {"f:image": {}}}}}}}}]);
        let live = live(managed);
        let fields = Fields::of(
            &[rule(
                &[
                    "/spec/template/spec/containers/1/image",
                    "/spec/template/spec/containers/0/image",
                ],
                &[],
            )],
            &deployment(),
            &live,
        );
        let config = fields.apply_config(&desired(), &live);
        let containers = &config["spec"]["template"]["spec"]["containers"];
        assert_eq!(
            containers[1],
            json!({"name": "log"}),
            "held elsewhere: left out"
        );
        assert_eq!(
            containers[0]["image"], "web:1",
            "held by nobody else: kept as it runs"
        );
    }

    #[test]
    fn removing_the_last_field_of_a_mapping_removes_the_mapping() {
        let mut value = json!({"spec": {"a": {"b": 1}, "c": 2}});
        remove(
            &mut value,
            &[
                Step::Token("spec".into()),
                Step::Token("a".into()),
                Step::Token("b".into()),
            ],
        );
        assert_eq!(value, json!({"spec": {"c": 2}}));
    }
}
