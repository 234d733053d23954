//! Defaults that older apiservers need spelled out under server-side apply.
//!
//! Client-side apply accepted a Service port or a container port without `protocol`, but the
//! 1.20 apiserver's server-side apply rejects it ("associative list with keys has an element
//! that omits key field"), because `protocol` is part of the list's merge key and the
//! defaulting runs too late. Users' manifests should work unchanged, so the default goes in
//! before the request. A Secret's `stringData` is write-only (the apiserver folds it into
//! `data`), so applying it would look like drift forever; it is folded into `data` here.

use base64::Engine as _;
use serde_json::{Map, Value};

/// Adds the defaults described in the module documentation, in place.
pub fn normalize(manifest: &mut Value) {
    let api_version = manifest
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let kind = manifest
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let pod_spec = match (api_version.as_str(), kind.as_str()) {
        ("v1", "Service") => {
            default_protocols(manifest.pointer_mut("/spec/ports"));
            None
        }
        ("v1", "Secret") => {
            fold_string_data(manifest);
            None
        }
        ("v1", "Pod") => Some("/spec"),
        ("batch/v1" | "batch/v1beta1", "CronJob") => Some("/spec/jobTemplate/spec/template/spec"),
        (_, "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job")
        | ("v1", "ReplicationController") => Some("/spec/template/spec"),
        _ => None,
    };
    if let Some(spec) = pod_spec.and_then(|p| manifest.pointer_mut(p)) {
        for list in ["containers", "initContainers", "ephemeralContainers"] {
            if let Some(containers) = spec.get_mut(list).and_then(Value::as_array_mut) {
                for container in containers {
                    default_protocols(container.get_mut("ports"));
                }
            }
        }
    }
}

fn default_protocols(ports: Option<&mut Value>) {
    let Some(ports) = ports.and_then(Value::as_array_mut) else {
        return;
    };
    for port in ports.iter_mut().filter_map(Value::as_object_mut) {
        port.entry("protocol")
            .or_insert_with(|| Value::String("TCP".into()));
    }
}

fn fold_string_data(manifest: &mut Value) {
    let Some(object) = manifest.as_object_mut() else {
        return;
    };
    let Some(Value::Object(string_data)) = object.remove("stringData") else {
        return;
    };
    let data = object
        .entry("data")
        .or_insert_with(|| Value::Object(Map::new()));
    if let Some(data) = data.as_object_mut() {
        let b64 = base64::engine::general_purpose::STANDARD;
        for (key, value) in string_data {
            if let Some(text) = value.as_str() {
                // stringData wins over data for the same key, as on the apiserver.
                data.insert(key, Value::String(b64.encode(text)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_service_port_without_protocol_gets_tcp() {
        let mut svc = json!({"apiVersion": "v1", "kind": "Service",
            "spec": {"ports": [{"port": 80}, {"port": 53, "protocol": "UDP"}]}});
        normalize(&mut svc);
        assert_eq!(svc["spec"]["ports"][0]["protocol"], "TCP");
        assert_eq!(svc["spec"]["ports"][1]["protocol"], "UDP");
    }

    #[test]
    fn container_ports_of_every_workload_kind_get_tcp() {
        for (api, kind, path) in [
            ("apps/v1", "Deployment", "/spec/template/spec"),
            (
                "batch/v1",
                "CronJob",
                "/spec/jobTemplate/spec/template/spec",
            ),
            ("v1", "Pod", "/spec"),
        ] {
            let mut spec = json!({"containers": [{"name": "a", "ports": [{"containerPort": 8080}]}],
                                  "initContainers": [{"name": "b", "ports": [{"containerPort": 1}]}]});
            let mut obj = json!({"apiVersion": api, "kind": kind});
            let mut cursor = &mut obj;
            let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
            for (i, part) in parts.iter().enumerate() {
                let value = if i + 1 == parts.len() {
                    spec.take()
                } else {
                    json!({})
                };
                cursor[*part] = value;
                cursor = &mut cursor[*part];
            }
            normalize(&mut obj);
            let spec = obj.pointer(path).expect("path exists");
            assert_eq!(
                spec["containers"][0]["ports"][0]["protocol"], "TCP",
                "{kind}"
            );
            assert_eq!(
                spec["initContainers"][0]["ports"][0]["protocol"], "TCP",
                "{kind}"
            );
        }
    }

    #[test]
    fn secret_string_data_is_folded_into_data() {
        let mut secret = json!({"apiVersion": "v1", "kind": "Secret",
            "data": {"a": "YQ=="}, "stringData": {"b": "bee", "a": "ay"}});
        normalize(&mut secret);
        assert!(secret.get("stringData").is_none());
        assert_eq!(secret["data"], json!({"a": "YXk=", "b": "YmVl"}));
    }
}
