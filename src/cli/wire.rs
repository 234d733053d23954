//! The gRPC messages of `EnvironmentService` as the CLI prints them in JSON and YAML: the
//! messages' own field names in camelCase, every field present (unset ones as `null` or empty),
//! times in RFC 3339 (UTC, milliseconds) and health as `sync -o json` spells it. One schema for
//! the offline `diff`/`sync` and the commands that ask a server.

use std::time::SystemTime;

use serde_json::{Value, json};
use stagehand::proto;

pub fn environments(list: &proto::ListEnvironmentsResponse) -> Value {
    json!({
        "pipeline": list.pipeline,
        "environments": list.environments.iter().map(environment).collect::<Vec<_>>(),
        "rejectedPipeline": list.rejected_pipeline,
    })
}

pub fn environment(env: &proto::Environment) -> Value {
    let source = match env.source.as_ref().and_then(|s| s.model.as_ref()) {
        Some(proto::source::Model::Overlay(o)) => {
            json!({"overlay": {"path": o.path, "branch": o.branch}})
        }
        Some(proto::source::Model::Branch(b)) => {
            json!({"branch": {"branch": b.branch, "path": b.path}})
        }
        None => Value::Null,
    };
    json!({
        "name": env.name,
        "promotesFrom": env.promotes_from,
        "source": source,
        "approval": env.approval.as_ref().map(|a| json!({
            "required": a.required,
            "groups": a.groups,
            "allowSelfApproval": a.allow_self_approval,
        })),
        "freezeWindows": env.freeze_windows.iter().map(|w| json!({
            "start": w.start, "end": w.end, "timezone": w.timezone,
        })).collect::<Vec<_>>(),
        "sync": env.sync.as_ref().map(|s| json!({
            "intervalSeconds": s.interval_seconds,
            "prune": s.prune,
            "selfHeal": s.self_heal,
            "suspended": s.suspended,
            "auto": s.auto,
        })),
        "status": env.status.as_ref().map(status),
    })
}

pub fn status(status: &proto::EnvironmentStatus) -> Value {
    json!({
        "desiredRevision": status.desired_revision,
        "appliedRevision": status.applied_revision,
        "attemptedRevision": status.attempted_revision,
        "lastSyncTime": time(&status.last_sync_time),
        "health": health(status.health),
        "lastError": status.last_error,
        "objects": status.objects.iter().map(|o| json!({
            "object": o.object.as_ref().map(object),
            "action": o.action,
            "health": health(o.health),
            "message": o.message,
            "driftedFields": o.drifted_fields,
            "ignoredFields": o.ignored_fields.iter().map(ignored).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "reason": status.reason,
        "message": status.message,
        "suspended": status.suspended,
        "outOfSync": status.out_of_sync,
        "nextSyncTime": time(&status.next_sync_time),
        "lastAppliedTime": time(&status.last_applied_time),
        "failures": status.failures,
        "passes": status.passes,
        "fetchedTime": time(&status.fetched_time),
        "alerts": status.alerts,
    })
}

pub fn sync_response(response: &proto::SyncEnvironmentResponse) -> Value {
    json!({"status": response.status.as_ref().map(status)})
}

pub fn revisions(list: &proto::ListRevisionsResponse) -> Value {
    let revisions: Vec<Value> = list
        .revisions
        .iter()
        .map(|r| {
            json!({
                "commit": r.commit,
                "summary": r.summary,
                "time": time(&r.time),
                "promotionId": r.promotion_id,
                "promotedFrom": r.promoted_from,
                "requestedBy": r.requested_by,
                "approvedBy": r.approved_by,
                "applied": r.applied,
                "images": r.images,
                "syncs": r.syncs.iter().map(|s| json!({
                    "startTime": time(&s.start_time),
                    "endTime": time(&s.end_time),
                    "result": s.result,
                    "message": s.message,
                    "applied": s.applied,
                    "passes": s.passes,
                    "created": s.created,
                    "changed": s.changed,
                    "pruned": s.pruned,
                    "drifted": s.drifted,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({ "revisions": revisions })
}

/// A field `ignoreDifferences` left alone, as `sync -o json` writes it.
fn ignored(i: &proto::IgnoredField) -> Value {
    json!({"field": i.field, "rule": i.rule})
}

/// The object's names; `namespace` is absent for cluster-scoped objects, as in `diff -o json`.
pub fn object(o: &proto::ObjectRef) -> Value {
    let mut value = json!({"apiVersion": o.api_version, "kind": o.kind, "name": o.name});
    if !o.namespace.is_empty() {
        value["namespace"] = json!(o.namespace);
    }
    value
}

/// As the reconcile status spells health, so `sync -o json` and `status -o json` agree.
fn health(value: i32) -> Value {
    match proto::Health::try_from(value) {
        Ok(proto::Health::Healthy) => json!("Healthy"),
        Ok(proto::Health::Progressing) => json!("Progressing"),
        Ok(proto::Health::Degraded) => json!("Degraded"),
        Ok(proto::Health::Failed) => json!("Failed"),
        Ok(proto::Health::Unspecified) | Err(_) => Value::Null,
    }
}

pub fn time(value: &Option<prost_types::Timestamp>) -> Value {
    value
        .and_then(|t| SystemTime::try_from(t).ok())
        .map_or(Value::Null, |t| {
            json!(humantime::format_rfc3339_millis(t).to_string())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_environment_prints_with_the_messages_camel_case_names_and_readable_values() {
        let env = proto::Environment {
            name: "staging".into(),
            promotes_from: "dev".into(),
            source: Some(proto::Source {
                model: Some(proto::source::Model::Overlay(proto::OverlaySource {
                    path: "environments/staging".into(),
                    branch: "main".into(),
                })),
            }),
            status: Some(proto::EnvironmentStatus {
                applied_revision: "abc".into(),
                health: proto::Health::Progressing as i32,
                last_sync_time: Some(prost_types::Timestamp {
                    seconds: 1_795_000_000,
                    nanos: 123_000_000,
                }),
                objects: vec![proto::ObjectStatus {
                    object: Some(proto::ObjectRef {
                        api_version: "v1".into(),
                        kind: "Namespace".into(),
                        namespace: String::new(),
                        name: "shop".into(),
                    }),
                    action: "unchanged".into(),
                    health: proto::Health::Healthy as i32,
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        };
        let value = environment(&env);
        assert_eq!(value["promotesFrom"], "dev");
        assert_eq!(value["source"]["overlay"]["path"], "environments/staging");
        assert_eq!(value["sync"], Value::Null);
        let status = &value["status"];
        assert_eq!(status["appliedRevision"], "abc");
        assert_eq!(status["health"], "Progressing");
        assert_eq!(status["lastSyncTime"], "2026-11-18T11:06:40.123Z");
        assert_eq!(status["nextSyncTime"], Value::Null);
        assert_eq!(
            status["objects"][0]["object"],
            json!({"apiVersion": "v1", "kind": "Namespace", "name": "shop"})
        );
        assert_eq!(status["objects"][0]["health"], "Healthy");
    }
}
