//! Kubernetes Events about applied objects, so that `kubectl describe` and `kubectl get events`
//! show drift, healing and pruning next to the object, as they do for Flux.

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{Api, PostParams};

use super::{Error, FIELD_MANAGER, ObjectRef, api_error};

/// `Normal` or `Warning`, as Kubernetes has them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Type {
    /// Worth knowing.
    Normal,
    /// Worth acting on.
    Warning,
}

/// Records an Event about `object`. Cluster-scoped objects get theirs in `default`, as
/// kubectl does. `message` must hold no Secret value (field paths are fine).
pub async fn record(
    client: &kube::Client,
    object: &ObjectRef,
    kind: Type,
    reason: &str,
    message: &str,
) -> Result<(), Error> {
    let namespace = object.namespace.as_deref().unwrap_or("default");
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let event = Event {
        metadata: ObjectMeta {
            generate_name: Some(format!("{}.", object.name)),
            namespace: Some(namespace.to_owned()),
            ..ObjectMeta::default()
        },
        involved_object: ObjectReference {
            api_version: Some(object.api_version()),
            kind: Some(object.kind.clone()),
            name: Some(object.name.clone()),
            namespace: object.namespace.clone(),
            ..ObjectReference::default()
        },
        reason: Some(reason.to_owned()),
        message: Some(message.to_owned()),
        type_: Some(
            match kind {
                Type::Normal => "Normal",
                Type::Warning => "Warning",
            }
            .to_owned(),
        ),
        source: Some(EventSource {
            component: Some(FIELD_MANAGER.to_owned()),
            host: None,
        }),
        first_timestamp: Some(now.clone()),
        last_timestamp: Some(now),
        count: Some(1),
        ..Event::default()
    };
    Api::<Event>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &event)
        .await
        .map(drop)
        .map_err(|e| api_error("record event about", object.to_string(), e, None))
}
