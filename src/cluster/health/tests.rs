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
    let job =
        |c: Value| json!({"apiVersion": "batch/v1", "kind": "Job", "status": {"conditions": c}});
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
    let cluster_ip = json!({"apiVersion": "v1", "kind": "Service", "spec": {"type": "ClusterIP"}});
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
    let cr =
        |status: Value| json!({"apiVersion": "example.com/v1", "kind": "Widget", "status": status});
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
