//! Comparing manifests: whether a live object still holds everything we declared, and which
//! fields two versions of an object differ in. Pure functions; Secret values never appear in
//! the output, only field paths.

use serde_json::Value;

/// Whether `live` holds every field of `desired` with the same value. Extra fields in `live`
/// (defaults, other managers' fields, status) do not matter; lists must have the same length and
/// hold their elements in the same order. A `true` answer means nothing we declared was
/// changed, so no request is needed; a `false` answer may be a false alarm (a quantity written
/// differently, say), which a dry-run apply settles.
pub fn contains(live: &Value, desired: &Value) -> bool {
    match (live, desired) {
        (Value::Object(live), Value::Object(desired)) => desired.iter().all(|(key, want)| {
            match live.get(key) {
                Some(have) => contains(have, want),
                // The apiserver drops null fields and empty objects are not stored for some kinds.
                None => want.is_null() || want.as_object().is_some_and(|o| o.is_empty()),
            }
        }),
        (Value::Array(live), Value::Array(desired)) => {
            live.len() == desired.len() && live.iter().zip(desired).all(|(l, d)| contains(l, d))
        }
        (Value::Number(l), Value::Number(d)) => l.as_f64() == d.as_f64(),
        (l, d) => l == d,
    }
}

/// Metadata the apiserver changes on every write; never drift.
const VOLATILE_METADATA: &[&str] = &[
    "managedFields",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "uid",
    "selfLink",
];

/// The field paths (`.spec.replicas`, `.data.password`) in which `after` differs from
/// `before`, leaving out `status` and volatile metadata. Used on a live object and the result
/// of a dry-run apply of the desired one: the paths are the drift.
pub fn changed_paths(before: &Value, after: &Value) -> Vec<String> {
    let mut out = Vec::new();
    walk(before, after, String::new(), &mut out);
    out
}

fn walk(before: &Value, after: &Value, path: String, out: &mut Vec<String>) {
    match (before, after) {
        (Value::Object(b), Value::Object(a)) => {
            let mut keys: Vec<&String> = b.keys().chain(a.keys()).collect();
            keys.sort();
            keys.dedup();
            for key in keys {
                if path.is_empty() && key == "status" {
                    continue;
                }
                if path == ".metadata" && VOLATILE_METADATA.contains(&key.as_str()) {
                    continue;
                }
                let child = child_path(&path, key);
                match (b.get(key), a.get(key)) {
                    (Some(bv), Some(av)) => walk(bv, av, child, out),
                    _ => out.push(child),
                }
            }
        }
        (Value::Array(b), Value::Array(a)) if b.len() == a.len() => {
            for (i, (bv, av)) in b.iter().zip(a).enumerate() {
                walk(bv, av, format!("{path}[{i}]"), out);
            }
        }
        (b, a) if b == a => {}
        _ => out.push(if path.is_empty() { ".".into() } else { path }),
    }
}

/// `path` and then `key`: `.key`, or `["key"]` for a key with other characters.
pub(crate) fn child_path(path: &str, key: &str) -> String {
    if key
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        format!("{path}.{key}")
    } else {
        format!("{path}[{key:?}]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_live_object_with_defaults_added_still_contains_the_desired_one() {
        let desired = json!({"spec": {"replicas": 2, "ports": [{"port": 80}]}});
        let live = json!({"spec": {"replicas": 2, "ports": [{"port": 80, "protocol": "TCP"}],
                                   "strategy": {}}, "status": {"x": 1}});
        assert!(contains(&live, &desired));
    }

    #[test]
    fn a_changed_value_a_missing_field_or_another_list_length_is_not_contained() {
        let desired = json!({"spec": {"replicas": 2, "args": ["a"]}});
        assert!(!contains(
            &json!({"spec": {"replicas": 3, "args": ["a"]}}),
            &desired
        ));
        assert!(!contains(&json!({"spec": {"args": ["a"]}}), &desired));
        assert!(!contains(
            &json!({"spec": {"replicas": 2, "args": ["a", "b"]}}),
            &desired
        ));
    }

    #[test]
    fn changed_paths_name_each_differing_field_and_skip_status_and_volatile_metadata() {
        let before = json!({"metadata": {"resourceVersion": "1", "labels": {"app.kubernetes.io/name": "a"}},
                            "spec": {"replicas": 1, "template": {"containers": [{"image": "a"}]}},
                            "status": {"ready": 1}});
        let after = json!({"metadata": {"resourceVersion": "2", "labels": {"app.kubernetes.io/name": "b"}},
                           "spec": {"replicas": 2, "template": {"containers": [{"image": "b"}]}},
                           "status": {"ready": 0}});
        assert_eq!(
            changed_paths(&before, &after),
            vec![
                ".metadata.labels[\"app.kubernetes.io/name\"]",
                ".spec.replicas",
                ".spec.template.containers[0].image"
            ]
        );
    }

    #[test]
    fn identical_objects_have_no_changed_paths() {
        let v = json!({"data": {"a": "b"}, "metadata": {"name": "x"}});
        assert!(changed_paths(&v, &v).is_empty());
    }
}
