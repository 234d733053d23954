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
mod tests {
    use super::*;
    use serde_json::json;

    fn deploy(status: Value) -> Value {
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
               "metadata": {"generation": 2}, "spec": {"replicas": 2}, "status": status})
    }

    #[test]
    fn a_deployment_without_status_is_progressing() {
        assert_eq!(assess(&deploy(json!({}))).status, HealthStatus::Progressing);
    }

    #[test]
    fn a_deployment_whose_controller_lags_a_generation_is_progressing() {
        let d = deploy(
            json!({"observedGeneration": 1, "replicas": 2, "updatedReplicas": 2,
                              "availableReplicas": 2}),
        );
        assert_eq!(assess(&d).status, HealthStatus::Progressing);
    }

    #[test]
    fn a_rolled_out_deployment_is_healthy() {
        let d = deploy(
            json!({"observedGeneration": 2, "replicas": 2, "updatedReplicas": 2,
                              "availableReplicas": 2, "readyReplicas": 2}),
        );
        assert_eq!(assess(&d).status, HealthStatus::Healthy);
    }

    #[test]
    fn a_deployment_past_its_progress_deadline_failed() {
        let d = deploy(json!({"observedGeneration": 2, "conditions": [
            {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"}]}));
        assert_eq!(assess(&d).status, HealthStatus::Failed);
    }

    #[test]
    fn jobs_follow_their_complete_and_failed_conditions() {
        let job = |c: Value| json!({"apiVersion": "batch/v1", "kind": "Job", "status": {"conditions": c}});
        assert_eq!(
            assess(&job(json!([{"type": "Complete", "status": "True"}]))).status,
            HealthStatus::Healthy
        );
        assert_eq!(
            assess(&job(
                json!([{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}])
            ))
            .status,
            HealthStatus::Failed
        );
        assert_eq!(assess(&job(json!([]))).status, HealthStatus::Progressing);
    }

    #[test]
    fn a_load_balancer_service_waits_for_an_ingress_address() {
        let svc = |status: Value| {
            json!({"apiVersion": "v1", "kind": "Service",
            "spec": {"type": "LoadBalancer"}, "status": status})
        };
        assert_eq!(assess(&svc(json!({}))).status, HealthStatus::Progressing);
        assert_eq!(
            assess(&svc(
                json!({"loadBalancer": {"ingress": [{"ip": "10.0.0.1"}]}})
            ))
            .status,
            HealthStatus::Healthy
        );
        let cluster_ip =
            json!({"apiVersion": "v1", "kind": "Service", "spec": {"type": "ClusterIP"}});
        assert_eq!(assess(&cluster_ip).status, HealthStatus::Healthy);
    }

    #[test]
    fn stateful_sets_daemon_sets_and_claims_are_assessed_from_their_status() {
        let sts = json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "spec": {"replicas": 1},
            "status": {"observedGeneration": 1, "readyReplicas": 1, "updatedReplicas": 1,
                       "currentRevision": "a", "updateRevision": "b"}});
        assert_eq!(assess(&sts).status, HealthStatus::Progressing);
        let ds = json!({"apiVersion": "apps/v1", "kind": "DaemonSet", "status": {"observedGeneration": 1,
            "desiredNumberScheduled": 2, "updatedNumberScheduled": 2, "numberAvailable": 2}});
        assert_eq!(assess(&ds).status, HealthStatus::Healthy);
        let pvc = json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "status": {"phase": "Pending"}});
        assert_eq!(assess(&pvc).status, HealthStatus::Progressing);
    }

    #[test]
    fn custom_objects_follow_a_ready_condition_and_are_otherwise_current() {
        let cr = |status: Value| json!({"apiVersion": "example.com/v1", "kind": "Widget", "status": status});
        assert_eq!(
            assess(&cr(
                json!({"conditions": [{"type": "Ready", "status": "False"}]})
            ))
            .status,
            HealthStatus::Progressing
        );
        assert_eq!(
            assess(&cr(
                json!({"conditions": [{"type": "Ready", "status": "True"}]})
            ))
            .status,
            HealthStatus::Healthy
        );
        assert_eq!(assess(&cr(json!({}))).status, HealthStatus::Healthy);
    }
}
