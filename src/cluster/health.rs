//! Health of a live object, in the manner of kstatus: a pure function of the object as the
//! apiserver returns it. Timeouts are the caller's business: an object that stays
//! [`HealthStatus::Progressing`] too long is failed by the reconcile loop.

use std::fmt;

use serde::Serialize;
use serde_json::Value;

/// How an object is doing, as kstatus grades it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum HealthStatus {
    /// Rolled out, ready, or a kind with nothing to wait for.
    Healthy,
    /// Not there yet, and nothing says it never will be.
    Progressing,
    /// The object itself says it failed (a Job's `Failed` condition, a Deployment past its
    /// progress deadline), or the reconcile loop's timeout ran out.
    Failed,
}

impl fmt::Display for HealthStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Healthy => "Healthy",
            Self::Progressing => "Progressing",
            Self::Failed => "Failed",
        })
    }
}

/// An object's health and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Health {
    /// The grade.
    pub status: HealthStatus,
    /// Why, for people: "1 of 3 replicas updated".
    pub message: String,
}

impl Health {
    fn healthy(message: impl Into<String>) -> Self {
        Self {
            status: HealthStatus::Healthy,
            message: message.into(),
        }
    }
    fn progressing(message: impl Into<String>) -> Self {
        Self {
            status: HealthStatus::Progressing,
            message: message.into(),
        }
    }
    fn failed(message: impl Into<String>) -> Self {
        Self {
            status: HealthStatus::Failed,
            message: message.into(),
        }
    }
}

fn int(v: &Value, pointer: &str) -> Option<i64> {
    v.pointer(pointer).and_then(Value::as_i64)
}

/// The condition of `type` as (status, reason, message).
fn condition<'a>(v: &'a Value, kind: &str) -> Option<(&'a str, &'a str, &'a str)> {
    v.pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c.get("type").and_then(Value::as_str) == Some(kind))
        .map(|c| {
            let field = |f: &str| c.get(f).and_then(Value::as_str).unwrap_or_default();
            (field("status"), field("reason"), field("message"))
        })
}

/// Assesses one live object.
pub fn assess(live: &Value) -> Health {
    let api_version = live
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let group = api_version.rsplit_once('/').map_or("", |(g, _)| g);
    let kind = live.get("kind").and_then(Value::as_str).unwrap_or_default();

    // Whatever the kind: a controller that has not seen the latest spec says nothing yet.
    if let (Some(generation), Some(observed)) = (
        int(live, "/metadata/generation"),
        int(live, "/status/observedGeneration"),
    ) && observed < generation
    {
        return Health::progressing(format!("observed generation {observed} of {generation}"));
    }
    match (group, kind) {
        ("apps", "Deployment") => deployment(live),
        ("apps", "StatefulSet") => stateful_set(live),
        ("apps", "DaemonSet") => daemon_set(live),
        ("batch", "Job") => job(live),
        ("", "PersistentVolumeClaim") => {
            match live.pointer("/status/phase").and_then(Value::as_str) {
                Some("Bound") => Health::healthy("bound"),
                Some("Lost") => Health::failed("claim lost its volume"),
                phase => Health::progressing(format!("phase {}", phase.unwrap_or("unknown"))),
            }
        }
        ("", "Service") => service(live),
        _ => match condition(live, "Ready") {
            Some(("True", _, _)) => Health::healthy("Ready"),
            Some((_, reason, message)) => {
                Health::progressing(format!("not Ready: {reason} {message}").trim().to_owned())
            }
            None => Health::healthy("current"),
        },
    }
}

fn needs_status(live: &Value) -> Option<Health> {
    if int(live, "/status/observedGeneration").is_none() {
        return Some(Health::progressing("no status observed yet"));
    }
    None
}

fn deployment(live: &Value) -> Health {
    if let Some(("False", "ProgressDeadlineExceeded", message)) = condition(live, "Progressing") {
        return Health::failed(format!("progress deadline exceeded: {message}"));
    }
    if let Some(h) = needs_status(live) {
        return h;
    }
    let want = int(live, "/spec/replicas").unwrap_or(1);
    let updated = int(live, "/status/updatedReplicas").unwrap_or(0);
    let available = int(live, "/status/availableReplicas").unwrap_or(0);
    let total = int(live, "/status/replicas").unwrap_or(0);
    if updated < want {
        return Health::progressing(format!("{updated} of {want} replicas updated"));
    }
    if total > updated {
        return Health::progressing(format!(
            "{} old replicas pending termination",
            total - updated
        ));
    }
    if available < want {
        return Health::progressing(format!("{available} of {want} replicas available"));
    }
    Health::healthy(format!("{want} replicas available"))
}

fn stateful_set(live: &Value) -> Health {
    if let Some(h) = needs_status(live) {
        return h;
    }
    let want = int(live, "/spec/replicas").unwrap_or(1);
    let ready = int(live, "/status/readyReplicas").unwrap_or(0);
    if ready < want {
        return Health::progressing(format!("{ready} of {want} replicas ready"));
    }
    let rolling = live
        .pointer("/spec/updateStrategy/type")
        .and_then(Value::as_str)
        .is_none_or(|t| t == "RollingUpdate");
    if rolling {
        let updated = int(live, "/status/updatedReplicas").unwrap_or(0);
        if updated < want {
            return Health::progressing(format!("{updated} of {want} replicas updated"));
        }
        let current = live.pointer("/status/currentRevision");
        if current.is_some() && current != live.pointer("/status/updateRevision") {
            return Health::progressing("rollout to the update revision in progress");
        }
    }
    Health::healthy(format!("{want} replicas ready"))
}

fn daemon_set(live: &Value) -> Health {
    if let Some(h) = needs_status(live) {
        return h;
    }
    let want = int(live, "/status/desiredNumberScheduled").unwrap_or(0);
    let updated = int(live, "/status/updatedNumberScheduled").unwrap_or(0);
    let available = int(live, "/status/numberAvailable").unwrap_or(0);
    if updated < want {
        return Health::progressing(format!("{updated} of {want} pods updated"));
    }
    if available < want {
        return Health::progressing(format!("{available} of {want} pods available"));
    }
    Health::healthy(format!("{want} pods available"))
}

fn job(live: &Value) -> Health {
    match (condition(live, "Complete"), condition(live, "Failed")) {
        (_, Some(("True", reason, message))) => {
            Health::failed(format!("job failed: {reason} {message}").trim().to_owned())
        }
        (Some(("True", _, _)), _) => Health::healthy("job complete"),
        _ => Health::progressing("job running"),
    }
}

fn service(live: &Value) -> Health {
    if live.pointer("/spec/type").and_then(Value::as_str) != Some("LoadBalancer") {
        return Health::healthy("current");
    }
    let ingress = live
        .pointer("/status/loadBalancer/ingress")
        .and_then(Value::as_array)
        .is_some_and(|i| !i.is_empty());
    if ingress {
        Health::healthy("load balancer ready")
    } else {
        Health::progressing("waiting for a load balancer address")
    }
}

#[cfg(test)]
mod tests;
