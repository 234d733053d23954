//! Kubernetes Events about applied objects, so that `kubectl describe` and `kubectl get events`
//! show drift, healing and pruning next to the object, as they do for Flux.

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use std::collections::HashMap;
use std::time::{Duration, Instant};

use kube::api::{Api, Patch, PatchParams, PostParams};

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
    create(client, object, kind, reason, message)
        .await
        .map(drop)
}

/// Creates the Event; returns its name.
async fn create(
    client: &kube::Client,
    object: &ObjectRef,
    kind: Type,
    reason: &str,
    message: &str,
) -> Result<String, Error> {
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
        .map(|created| created.metadata.name.unwrap_or_default())
        .map_err(|e| api_error("record event about", object.to_string(), e, None))
}

/// How long an Event can be counted again instead of recorded anew (kubelet's correlator keeps
/// a similar series).
const SERIES_WINDOW: Duration = Duration::from_secs(10 * 60);
/// Events recorded at once before [`Series`] throttles, and how often one more is allowed:
/// kubelet's spam filter uses the same shape (a burst, then one per five minutes).
const BURST: u32 = 25;
const REFILL: Duration = Duration::from_secs(5 * 60);

/// What [`Series::record`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recorded {
    /// A new Event, with its name.
    Created(String),
    /// The Event already recorded for this reason and message, now counting this many.
    Counted {
        /// The Event's name.
        name: String,
        /// How often it happened, this time included.
        count: i32,
    },
    /// Too many Events lately: this one was dropped.
    Throttled,
}

/// Events about one object, deduplicated and rate-limited as kubelet does: the same reason and
/// message again within a while increments the `count` of the Event already recorded instead
/// of creating another one, and a burst of distinct Events is followed by at most one per
/// [`REFILL`].
#[derive(Debug)]
pub struct Series {
    object: ObjectRef,
    recent: HashMap<(String, String), (String, i32, Instant)>,
    tokens: u32,
    refilled: Instant,
}

impl Series {
    /// A series about `object`, with a full burst allowance.
    pub fn new(object: ObjectRef) -> Self {
        Self {
            object,
            recent: HashMap::new(),
            tokens: BURST,
            refilled: Instant::now(),
        }
    }

    /// Records (or counts) an Event about this series' object; see [`record`] for `message`.
    /// A missing namespace is created, as for inventories.
    pub async fn record(
        &mut self,
        client: &kube::Client,
        kind: Type,
        reason: &str,
        message: &str,
    ) -> Result<Recorded, Error> {
        let now = Instant::now();
        self.recent
            .retain(|_, (_, _, last)| now.duration_since(*last) < SERIES_WINDOW);
        let key = (reason.to_owned(), message.to_owned());
        if let Some((name, count, last)) = self.recent.get_mut(&key) {
            let namespace = self.object.namespace.as_deref().unwrap_or("default");
            let patch = serde_json::json!({
                "count": *count + 1,
                "lastTimestamp": Time(k8s_openapi::jiff::Timestamp::now()),
            });
            match Api::<Event>::namespaced(client.clone(), namespace)
                .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {
                    *count += 1;
                    *last = now;
                    return Ok(Recorded::Counted {
                        name: name.clone(),
                        count: *count,
                    });
                }
                // Deleted (or expired) meanwhile: a new one is recorded below.
                Err(kube::Error::Api(status)) if status.code == 404 => {}
                Err(e) => {
                    return Err(api_error(
                        "count event about",
                        self.object.to_string(),
                        e,
                        None,
                    ));
                }
            }
        }
        let earned = now.duration_since(self.refilled).as_secs() / REFILL.as_secs();
        if earned > 0 {
            self.tokens = (self.tokens + u32::try_from(earned).unwrap_or(BURST)).min(BURST);
            self.refilled = now;
        }
        if self.tokens == 0 {
            return Ok(Recorded::Throttled);
        }
        let name = match create(client, &self.object, kind, reason, message).await {
            Err(Error::Api {
                code: Some(404), ..
            }) if self.object.namespace.is_some() => {
                let namespace = self.object.namespace.clone().unwrap_or_default();
                super::inventory::create_namespace(client, &namespace).await?;
                create(client, &self.object, kind, reason, message).await?
            }
            other => other?,
        };
        self.tokens -= 1;
        self.recent.insert(key, (name.clone(), 1, now));
        Ok(Recorded::Created(name))
    }
}
