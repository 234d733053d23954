//! `ignoreDifferences` against the real kube-apiserver: a second field manager (as a
//! HorizontalPodAutoscaler would) owns `spec.replicas` of a Deployment Stagehand applies with
//! self-heal on.

use std::sync::Arc;

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, ListParams, Patch, PatchParams};
use serde_json::{Value, json};
use stagehand::cluster::apply::Change;
use stagehand::cluster::ignore::Ignored;
use stagehand::pipeline::{Environment, FieldPath, IgnoreRule};
use stagehand::proto;
use stagehand::proto::environment_service_client::EnvironmentServiceClient;
use stagehand::reconcile::{EventKind, Options, Reconciler};

use crate::service::{eventually, start_server_with};
use crate::support::cluster::cluster;
use crate::support::git::Repo;
use crate::support::reconcile::{FedSource, deployment, environment};

struct Setup {
    client: kube::Client,
    ns: String,
    source: Arc<FedSource>,
    options: Arc<Options>,
    events: tokio::sync::broadcast::Sender<stagehand::reconcile::Event>,
}

async fn setup(prefix: &str) -> Setup {
    let cluster = cluster();
    let client = cluster.client().await;
    let ns = cluster.namespace(&client, prefix).await;
    let options = Options {
        owner_prefix: format!("{ns}."),
        inventory_namespace: ns.clone(),
        ..Options::default()
    };
    Setup {
        client,
        ns,
        source: Arc::new(FedSource::default()),
        options: Arc::new(options),
        events: tokio::sync::broadcast::channel(256).0,
    }
}

impl Setup {
    /// dev, ignoring `spec.replicas` of Deployments when `ignore` is set.
    fn env(&self, ignore: bool) -> Environment {
        let mut env = environment("dev", &cluster().kubeconfig);
        if ignore {
            env.ignore_differences = vec![IgnoreRule {
                group: Some("apps".into()),
                kind: "Deployment".into(),
                name: Some("web".into()),
                namespace: None,
                fields: vec![FieldPath::from_pointer("/spec/replicas").expect("valid")],
                managers: Vec::new(),
            }];
        }
        env
    }

    fn reconciler(&self, env: Environment) -> Reconciler<FedSource> {
        Reconciler::new(
            env,
            self.source.clone(),
            self.options.clone(),
            self.events.clone(),
        )
    }

    /// Git's `web` Deployment: `replicas` and `image` as given.
    fn git(&self, revision: &str, replicas: i64, image: &str) {
        let mut web = deployment(&self.ns, "web", image);
        web["spec"]["replicas"] = json!(replicas);
        self.source.set("dev", revision, vec![web]);
    }

    fn deployments(&self) -> Api<Deployment> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    /// Scales `web` as an autoscaler does: an update under its own field manager.
    async fn autoscale(&self, replicas: i64) {
        let params = PatchParams {
            field_manager: Some("autoscaler".into()),
            ..PatchParams::default()
        };
        self.deployments()
            .patch(
                "web",
                &params,
                &Patch::Merge(json!({"spec": {"replicas": replicas}})),
            )
            .await
            .expect("scaled");
    }

    /// `web` as it runs: replicas, first image, and the field managers holding `spec.replicas`.
    async fn live(&self) -> (i64, String, Vec<String>) {
        let web = self.deployments().get("web").await.expect("web exists");
        let value = serde_json::to_value(&web).expect("serialises");
        let holders = value["metadata"]["managedFields"]
            .as_array()
            .expect("managedFields")
            .iter()
            .filter(|m| m.pointer("/fieldsV1/f:spec/f:replicas").is_some())
            .map(|m| m["manager"].as_str().expect("manager").to_owned())
            .collect();
        let replicas = value["spec"]["replicas"].as_i64().expect("replicas");
        let image = value["spec"]["template"]["spec"]["containers"][0]["image"]
            .as_str()
            .expect("image")
            .to_owned();
        (replicas, image, holders)
    }

    /// Reasons of the Kubernetes Events recorded about `web`.
    async fn event_reasons(&self) -> Vec<String> {
        Api::<k8s_openapi::api::core::v1::Event>::namespaced(self.client.clone(), &self.ns)
            .list(&ListParams::default().fields("involvedObject.name=web"))
            .await
            .expect("events listed")
            .items
            .into_iter()
            .filter_map(|e| e.reason)
            .collect()
    }
}

fn web_of(reconciler: &Reconciler<FedSource>) -> (Change, Vec<Ignored>) {
    let object = reconciler
        .status()
        .object("Deployment", "web")
        .expect("web is in the status");
    (object.change.clone(), object.ignored.clone())
}

fn replicas_ignored() -> Vec<Ignored> {
    vec![Ignored {
        field: ".spec.replicas".into(),
        rule: 0,
    }]
}

#[tokio::test]
async fn with_a_rule_the_autoscalers_replicas_stay_pass_after_pass_and_are_reported_as_ignored() {
    let s = setup("ig-rule").await;
    s.git("rev1", 2, "web:1");
    let mut events = s.events.subscribe();
    let mut rec = s.reconciler(s.env(true));
    rec.reconcile().await.expect("first pass");
    assert_eq!(web_of(&rec), (Change::Created, Vec::new()));
    assert_eq!(s.live().await.0, 2, "created with Git's replicas");

    s.autoscale(5).await;
    for pass in 0..3 {
        rec.reconcile().await.expect("a pass");
        assert_eq!(
            web_of(&rec),
            (Change::Unchanged, replicas_ignored()),
            "pass {pass}"
        );
        assert!(rec.status().drift.is_empty(), "pass {pass}: no drift");
        let (replicas, _, holders) = s.live().await;
        assert_eq!(replicas, 5, "pass {pass}: the autoscaler's value stays");
        assert_eq!(
            holders,
            ["autoscaler"],
            "pass {pass}: Stagehand took nothing back"
        );
    }
    while let Ok(event) = events.try_recv() {
        assert!(
            !matches!(
                event.kind,
                EventKind::Drifted { .. } | EventKind::Healed { .. }
            ),
            "{event:?}"
        );
    }
    let reasons = s.event_reasons().await;
    assert!(
        !reasons.iter().any(|r| r == "Drifted" || r == "Healed"),
        "{reasons:?}"
    );
    let status = serde_json::to_value(rec.status()).expect("serialises");
    let web = status["objects"]
        .as_array()
        .expect("objects")
        .iter()
        .find(|o| o["object"]["name"] == "web")
        .expect("web");
    assert_eq!(
        web["ignoredFields"],
        json!([{"field": ".spec.replicas", "rule": 0}])
    );

    // What `stagehand diff` and DiffEnvironment show: the object, its ignored field, no change.
    let plan = rec.plan().await.expect("a plan");
    let diffs = plan.diffs();
    assert_eq!(diffs.len(), 1, "{diffs:?}");
    assert_eq!(diffs[0].reference.name, "web");
    assert_eq!(diffs[0].change, "ignore");
    assert_eq!(diffs[0].ignored_fields, replicas_ignored());
    assert_eq!(s.live().await.0, 5, "planning changes nothing");

    // A new image in Git still goes out; replicas stay the autoscaler's.
    s.git("rev2", 2, "web:2");
    let plan = rec.plan().await.expect("a plan");
    let planned: Vec<(&str, String)> = plan
        .diffs()
        .into_iter()
        .map(|d| (d.change, d.diff))
        .collect();
    assert_eq!(
        planned,
        [(
            "update",
            ".spec.template.spec.containers[0].image".to_owned()
        )]
    );
    rec.reconcile().await.expect("a pass with the new image");
    assert_eq!(
        web_of(&rec),
        (
            Change::Configured {
                fields: vec![".spec.template.spec.containers[0].image".into()]
            },
            replicas_ignored()
        )
    );
    let (replicas, image, holders) = s.live().await;
    assert_eq!((replicas, image.as_str()), (5, "web:2"));
    assert_eq!(holders, ["autoscaler"]);
}

#[tokio::test]
async fn without_a_rule_the_autoscalers_replicas_are_healed_back_to_git() {
    let s = setup("ig-none").await;
    s.git("rev1", 2, "web:1");
    let mut events = s.events.subscribe();
    let mut rec = s.reconciler(s.env(false));
    rec.reconcile().await.expect("first pass");
    s.autoscale(5).await;

    rec.reconcile().await.expect("second pass");
    assert_eq!(
        web_of(&rec),
        (
            Change::Healed {
                fields: vec![".spec.replicas".into()]
            },
            Vec::new()
        )
    );
    let (replicas, _, holders) = s.live().await;
    assert_eq!(replicas, 2, "Git's value is back");
    assert_eq!(holders, ["stagehand"]);
    let mut healed = false;
    while let Ok(event) = events.try_recv() {
        healed |= matches!(event.kind, EventKind::Healed { .. });
    }
    assert!(healed, "a Healed event was sent");
    assert!(s.event_reasons().await.iter().any(|r| r == "Healed"));
}

#[tokio::test]
async fn a_rule_added_for_a_field_only_stagehand_holds_keeps_the_running_value_instead_of_dropping_it()
 {
    let s = setup("ig-added").await;
    s.git("rev1", 3, "web:1");
    let mut rec = s.reconciler(s.env(false));
    rec.reconcile().await.expect("first pass, no rule yet");

    // The rule comes first, the autoscaler later: leaving the field out of the apply would make
    // the apiserver drop it (a Deployment without replicas runs one); Git's new value is
    // ignored too.
    s.git("rev2", 4, "web:2");
    let mut rec = s.reconciler(s.env(true));
    rec.reconcile().await.expect("a pass with the rule");
    let (replicas, image, holders) = s.live().await;
    assert_eq!((replicas, image.as_str()), (3, "web:2"));
    assert_eq!(holders, ["stagehand"]);
    assert_eq!(
        web_of(&rec),
        (
            Change::Configured {
                fields: vec![".spec.template.spec.containers[0].image".into()]
            },
            replicas_ignored()
        )
    );

    // Once the autoscaler takes the field, it is left to it.
    s.autoscale(6).await;
    rec.reconcile().await.expect("a pass after scaling");
    let (replicas, _, holders) = s.live().await;
    assert_eq!(replicas, 6);
    assert_eq!(holders, ["autoscaler"]);
}

#[tokio::test]
async fn a_field_shared_with_another_manager_is_let_go_so_that_managers_apply_never_conflicts() {
    let s = setup("ig-shared").await;
    s.git("rev1", 2, "web:1");
    let mut rec = s.reconciler(s.env(true));
    rec.reconcile().await.expect("first pass");
    // Another manager applies the same value: both hold the field now.
    let apply = |replicas: i64| {
        let body: Value = json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": s.ns}, "spec": {"replicas": replicas}});
        let api = s.deployments();
        async move {
            api.patch(
                "web",
                &PatchParams::apply("autoscaler"),
                &Patch::Apply(&body),
            )
            .await
        }
    };
    apply(2)
        .await
        .expect("the same value applies without conflict");
    assert_eq!(s.live().await.2.len(), 2, "both hold spec.replicas");

    rec.reconcile().await.expect("a pass");
    assert_eq!(s.live().await.2, ["autoscaler"], "Stagehand let go");
    apply(7)
        .await
        .expect("the other manager's apply no longer conflicts with Stagehand");
    rec.reconcile().await.expect("a pass");
    assert_eq!(s.live().await.0, 7);
}

#[tokio::test]
async fn the_fields_a_named_manager_holds_are_left_to_it_down_to_a_container_matched_by_name() {
    let s = setup("ig-manager").await;
    s.git("rev1", 2, "web:1");
    let mut env = s.env(false);
    env.ignore_differences = vec![IgnoreRule {
        group: Some("apps".into()),
        kind: "Deployment".into(),
        name: None,
        namespace: Some(s.ns.clone()),
        fields: Vec::new(),
        managers: vec!["injector".into()],
    }];
    let mut rec = s.reconciler(env);
    rec.reconcile().await.expect("first pass");
    // Another controller rewrites the container's image, as an image-pinning webhook would.
    let params = PatchParams {
        field_manager: Some("injector".into()),
        ..PatchParams::default()
    };
    let pinned = json!({"spec": {"template": {"spec": {"containers": [
        {"name": "app", "image": "web:1@sha256:pinned"}]}}}});
    s.deployments()
        .patch("web", &params, &Patch::Strategic(pinned))
        .await
        .expect("pinned");
    let image = ".spec.template.spec.containers[name=\"app\"].image";
    for pass in 0..2 {
        rec.reconcile().await.expect("a pass");
        assert_eq!(
            web_of(&rec),
            (
                Change::Unchanged,
                vec![Ignored {
                    field: image.into(),
                    rule: 0
                }]
            ),
            "pass {pass}"
        );
        assert_eq!(s.live().await.1, "web:1@sha256:pinned", "pass {pass}");
    }
    // Fields the manager does not hold still follow Git.
    s.git("rev2", 3, "web:2");
    rec.reconcile().await.expect("a pass with new replicas");
    assert_eq!(
        web_of(&rec).0,
        Change::Configured {
            fields: vec![".spec.replicas".into()]
        }
    );
    let (replicas, image_now, _) = s.live().await;
    assert_eq!((replicas, image_now.as_str()), (3, "web:1@sha256:pinned"));
}

/// A kustomization putting `web` (two replicas) into `namespace`.
fn overlay(namespace: &str) -> [(String, String); 2] {
    let web = serde_json::to_string(&{
        let mut web = deployment(namespace, "web", "web:1");
        web["spec"]["replicas"] = json!(2);
        web
    })
    .expect("serialises");
    [
        (
            "kustomization.yaml".to_owned(),
            format!("namespace: {namespace}\nresources: [web.yaml]\n"),
        ),
        ("web.yaml".to_owned(), web),
    ]
}

/// Scales `web` in `namespace` as an autoscaler does.
async fn autoscale(client: &kube::Client, namespace: &str, replicas: i64) {
    let params = PatchParams {
        field_manager: Some("autoscaler".into()),
        ..PatchParams::default()
    };
    Api::<Deployment>::namespaced(client.clone(), namespace)
        .patch(
            "web",
            &params,
            &Patch::Merge(json!({"spec": {"replicas": replicas}})),
        )
        .await
        .expect("scaled");
}

async fn status_of(
    api: &mut EnvironmentServiceClient<tonic::transport::Channel>,
    name: &str,
) -> proto::EnvironmentStatus {
    api.get_environment(proto::GetEnvironmentRequest { name: name.into() })
        .await
        .expect("GetEnvironment answers")
        .into_inner()
        .status
        .expect("a status")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_raises_no_drift_alert_for_an_ignored_field_and_names_it_in_status_and_diff() {
    let client = cluster().client().await;
    let scaled_ns = cluster().namespace(&client, "ig-svc-scaled").await;
    let control_ns = cluster().namespace(&client, "ig-svc-control").await;
    let dir = tempfile::tempdir().expect("temp dir");
    let repo = Repo::init(&dir.path().join("gitops"));
    let files: Vec<(String, String)> = [("scaled", &scaled_ns), ("control", &control_ns)]
        .into_iter()
        .flat_map(|(env, ns)| overlay(ns).map(|(f, text)| (format!("{env}/{f}"), text)))
        .collect();
    let files: Vec<(&str, &str)> = files
        .iter()
        .map(|(f, t)| (f.as_str(), t.as_str()))
        .collect();
    repo.write(&files);
    // Both report drift without healing it, and alert once it lasts a second; only `scaled`
    // leaves replicas to the autoscaler.
    repo.write(&[(
        "pipeline.yaml",
        "apiVersion: stagehand.dev/v1alpha1
kind: Pipeline
metadata: {name: ignoring}
spec:
  alerts: {driftAfter: 1s}
  environments:
    - name: scaled
      source: {overlay: scaled}
      sync: {interval: 1s, selfHeal: false}
      ignoreDifferences:
        - {group: apps, kind: Deployment, name: web, jsonPointers: [/spec/replicas]}
    - name: control
      source: {overlay: control}
      sync: {interval: 1s, selfHeal: false}
",
    )]);
    repo.commit("two environments");
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).expect("state dir");
    let secret = dir.path().join("webhook-secret");
    std::fs::write(&secret, "secret\n").expect("secret file");
    let server = start_server_with(&repo.dir.join("pipeline.yaml"), &state, &secret, &[]);
    let mut api = EnvironmentServiceClient::connect(server.grpc.clone())
        .await
        .expect("the service answers");

    for name in ["scaled", "control"] {
        eventually(&format!("{name} is applied"), || {
            let mut api = api.clone();
            async move { !status_of(&mut api, name).await.applied_revision.is_empty() }
        })
        .await;
    }
    autoscale(&client, &scaled_ns, 5).await;
    autoscale(&client, &control_ns, 5).await;

    // The control environment shows the alert would fire within this time.
    eventually("the control environment raises a drift alert", || {
        let mut api = api.clone();
        async move {
            status_of(&mut api, "control")
                .await
                .alerts
                .iter()
                .any(|a| a.contains("drifted from Git"))
        }
    })
    .await;
    let passes = status_of(&mut api, "scaled").await.passes;
    eventually("scaled runs three more passes", || {
        let mut api = api.clone();
        async move { status_of(&mut api, "scaled").await.passes >= passes + 3 }
    })
    .await;

    let status = status_of(&mut api, "scaled").await;
    assert!(status.alerts.is_empty(), "{:?}", status.alerts);
    let web = status
        .objects
        .iter()
        .find(|o| o.object.as_ref().is_some_and(|r| r.name == "web"))
        .expect("web is in the status");
    assert_eq!(web.action, "unchanged");
    assert!(web.drifted_fields.is_empty(), "{web:?}");
    assert_eq!(
        web.ignored_fields,
        [proto::IgnoredField {
            field: ".spec.replicas".into(),
            rule: 0
        }]
    );
    let live = Api::<Deployment>::namespaced(client.clone(), &scaled_ns)
        .get("web")
        .await
        .expect("web exists");
    assert_eq!(live.spec.replicas, Some(5));
    let drifted_events: Vec<_> =
        Api::<k8s_openapi::api::core::v1::Event>::namespaced(client.clone(), &scaled_ns)
            .list(&ListParams::default())
            .await
            .expect("events listed")
            .items
            .into_iter()
            .filter(|e| e.reason.as_deref() == Some("Drifted"))
            .collect();
    assert!(drifted_events.is_empty(), "{drifted_events:?}");

    let diff = api
        .diff_environment(proto::DiffEnvironmentRequest {
            name: "scaled".into(),
            revision: String::new(),
        })
        .await
        .expect("DiffEnvironment answers")
        .into_inner();
    let objects: Vec<(String, String, Vec<proto::IgnoredField>)> = diff
        .objects
        .into_iter()
        .map(|o| (o.object.expect("object").name, o.change, o.ignored_fields))
        .collect();
    assert_eq!(
        objects,
        [(
            "web".to_owned(),
            "ignore".to_owned(),
            web.ignored_fields.clone()
        )]
    );

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_stagehand"))
        .args(["status", "scaled", "-o", "table", "--server", &server.grpc])
        .env_remove("STAGEHAND_TOKEN")
        .env_remove("STAGEHAND_TOKEN_FILE")
        .output()
        .expect("stagehand runs");
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.lines().any(|l| l.contains("Deployment")
            && l.contains("web")
            && l.contains("ignored .spec.replicas (ignoreDifferences[0])")),
        "{table}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
