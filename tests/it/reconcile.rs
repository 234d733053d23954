//! Reconciling environments against the real kube-apiserver. Each test works in its own
//! namespace with its own owner, feeds desired objects through a `FedSource` and reads the
//! cluster back through the API.

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use serde_json::{Value, json};
use stagehand::cluster::apply::Change;
use stagehand::cluster::health::HealthStatus;
use stagehand::cluster::prune::Outcome;
use stagehand::pipeline::Environment;
use stagehand::reconcile::{Action, Controller, EventKind, Options, Reason, Reconciler};

use crate::support::cluster::cluster;
use crate::support::reconcile::{
    FedSource, Forwarder, apiserver_addr, capture_logs, config_map, deployment, environment,
    service, widget, widget_crd,
};
use crate::support::{Tool, tool};

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
    fn env(&self, name: &str) -> Environment {
        environment(name, &cluster().kubeconfig)
    }

    fn reconciler(&self, env: Environment) -> Reconciler<FedSource> {
        Reconciler::new(
            env,
            self.source.clone(),
            self.options.clone(),
            self.events.clone(),
        )
    }

    fn config_maps(&self) -> Api<ConfigMap> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    async fn config_map_data(&self, name: &str, key: &str) -> Option<String> {
        self.config_maps()
            .get_opt(name)
            .await
            .expect("the apiserver answers")
            .and_then(|cm| cm.data)
            .and_then(|d| d.get(key).cloned())
    }
}

fn change_of(reconciler: &Reconciler<FedSource>, kind: &str, name: &str) -> Change {
    reconciler
        .status()
        .object(kind, name)
        .unwrap_or_else(|| panic!("{kind} {name} is in the status"))
        .change
        .clone()
}

/// A Secret manifest encrypted with the real sops to a key made by age-keygen, then decrypted
/// with the real sops: what the secrets module hands the reconciler.
fn sops_decrypted_secret(ns: &str, name: &str, password: &str) -> Value {
    let dir = tempfile::tempdir().expect("temp dir");
    let key_file = dir.path().join("keys.txt");
    let recipient = crate::support::tools::age_keygen(&key_file);
    let recipient = recipient.as_str();
    let plain = dir.path().join("secret.yaml");
    std::fs::write(
        &plain,
        format!(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}\n  namespace: {ns}\ntype: Opaque\nstringData:\n  password: {password}\n"
        ),
    )
    .expect("write");
    let enc = Command::new(tool(Tool::Sops))
        .args([
            "--encrypt",
            "--age",
            recipient,
            "--encrypted-regex",
            "^(data|stringData)$",
        ])
        .arg(&plain)
        .output()
        .expect("sops runs");
    assert!(
        enc.status.success(),
        "{}",
        String::from_utf8_lossy(&enc.stderr)
    );
    let encrypted = dir.path().join("secret.enc.yaml");
    std::fs::write(&encrypted, &enc.stdout).expect("write");
    assert!(!String::from_utf8_lossy(&enc.stdout).contains(password));
    let dec = Command::new(tool(Tool::Sops))
        .args(["--decrypt"])
        .arg(&encrypted)
        .env("SOPS_AGE_KEY_FILE", &key_file)
        .output()
        .expect("sops runs");
    assert!(
        dec.status.success(),
        "{}",
        String::from_utf8_lossy(&dec.stderr)
    );
    serde_yaml_ng::from_slice(&dec.stdout).expect("sops writes the manifest back as YAML")
}

fn b64(text: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(text)
}

#[tokio::test]
async fn a_first_apply_creates_a_namespace_a_crd_and_its_instance_workloads_and_secrets() {
    let s = setup("rc-first").await;
    let app_ns = format!("{}-app", s.ns);
    let group = format!("{}.stagehand.test", s.ns);
    let password = "first-apply-password-1f3e";
    s.source.set(
        "dev",
        "rev1",
        vec![
            // Instances before their CRD and objects before their namespace: order is ours.
            widget(&group, &app_ns, "gizmo", 3),
            config_map(&app_ns, "settings", json!({"greeting": "hello"})),
            deployment(&app_ns, "web", "nginx:1.25"),
            service(&app_ns, "web"),
            sops_decrypted_secret(&app_ns, "db", password),
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": app_ns}}),
            widget_crd(&group),
        ],
    );
    let mut rec = s.reconciler(s.env("dev"));
    let action = rec.reconcile().await.expect("the first apply succeeds");

    // Deployments get no pods here, so the environment waits for them.
    assert_eq!(rec.status().reason, Reason::Progressing);
    assert!(matches!(action, Action::Requeue(_)));
    assert_eq!(rec.status().applied_revision.as_deref(), Some("rev1"));
    for (kind, name) in [
        ("Namespace", app_ns.as_str()),
        ("CustomResourceDefinition", &format!("widgets.{group}")),
        ("Widget", "gizmo"),
        ("ConfigMap", "settings"),
        ("Deployment", "web"),
        ("Service", "web"),
        ("Secret", "db"),
    ] {
        assert_eq!(
            change_of(&rec, kind, name),
            Change::Created,
            "{kind} {name}"
        );
    }
    // Namespaces and CRDs come first in the change set, which is apply order.
    let first_two: Vec<&str> = rec.status().objects[..2]
        .iter()
        .map(|o| o.reference.kind.as_str())
        .collect();
    assert_eq!(first_two, ["Namespace", "CustomResourceDefinition"]);

    let ar = ApiResource {
        group: group.clone(),
        version: "v1".into(),
        api_version: format!("{group}/v1"),
        kind: "Widget".into(),
        plural: "widgets".into(),
    };
    let gizmo = Api::<DynamicObject>::namespaced_with(s.client.clone(), &app_ns, &ar)
        .get("gizmo")
        .await
        .expect("the Widget exists");
    assert_eq!(gizmo.data["spec"]["size"], 3);
    let owner = format!("{}.dev", s.ns);
    assert_eq!(
        gizmo
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("stagehand.dev/inventory")),
        Some(&owner)
    );
    let svc = Api::<Service>::namespaced(s.client.clone(), &app_ns)
        .get("web")
        .await
        .expect("the Service exists");
    let port = &svc.spec.expect("spec").ports.expect("ports")[0];
    assert_eq!(port.protocol.as_deref(), Some("TCP"));
    let web = Api::<Deployment>::namespaced(s.client.clone(), &app_ns)
        .get("web")
        .await
        .expect("the Deployment exists");
    assert!(
        web.metadata
            .managed_fields
            .expect("managed fields")
            .iter()
            .any(|m| m.manager.as_deref() == Some("stagehand")
                && m.operation.as_deref() == Some("Apply"))
    );
    let secret = Api::<Secret>::namespaced(s.client.clone(), &app_ns)
        .get("db")
        .await
        .expect("the Secret exists");
    let data = secret.data.expect("data");
    assert_eq!(data["password"].0, password.as_bytes());

    // kubectl shows the decrypted value, as users will check it.
    let out = Command::new(tool(Tool::Kubectl))
        .arg("--kubeconfig")
        .arg(&cluster().kubeconfig)
        .args(["get", "secret", "db", "-n", &app_ns, "-o", "yaml"])
        .output()
        .expect("kubectl runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(&b64(password)));

    // The inventory is stored and lists every object.
    let inventory = s
        .config_maps()
        .get(&format!("stagehand-inventory-{owner}"))
        .await
        .expect("the inventory ConfigMap exists");
    let text = &inventory.data.expect("data")["inventory"];
    for name in ["gizmo", "settings", "web", "db", app_ns.as_str()] {
        assert!(
            text.contains(&format!("\"n\":\"{name}\"")),
            "{name} in {text}"
        );
    }
}

#[tokio::test]
async fn a_second_pass_without_changes_reports_every_object_unchanged() {
    let s = setup("rc-nochange").await;
    s.source.set(
        "dev",
        "rev1",
        vec![
            config_map(&s.ns, "a", json!({"k": "v"})),
            service(&s.ns, "web"),
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s", "namespace": s.ns},
                   "stringData": {"token": "abc"}}),
        ],
    );
    let mut rec = s.reconciler(s.env("dev"));
    rec.reconcile().await.expect("first pass");
    let before = s
        .config_maps()
        .get("a")
        .await
        .expect("exists")
        .metadata
        .resource_version;
    rec.reconcile().await.expect("second pass");
    for (kind, name) in [("ConfigMap", "a"), ("Service", "web"), ("Secret", "s")] {
        assert_eq!(
            change_of(&rec, kind, name),
            Change::Unchanged,
            "{kind} {name}"
        );
    }
    let after = s
        .config_maps()
        .get("a")
        .await
        .expect("exists")
        .metadata
        .resource_version;
    assert_eq!(before, after, "nothing was written");
    assert_eq!(rec.status().reason, Reason::Succeeded);
}

#[tokio::test]
async fn a_change_in_git_is_applied_and_names_the_changed_fields() {
    let s = setup("rc-change").await;
    s.source.set(
        "dev",
        "rev1",
        vec![config_map(
            &s.ns,
            "settings",
            json!({"greeting": "hello", "size": "1"}),
        )],
    );
    let mut rec = s.reconciler(s.env("dev"));
    rec.reconcile().await.expect("first pass");
    s.source.set(
        "dev",
        "rev2",
        vec![config_map(
            &s.ns,
            "settings",
            json!({"greeting": "goodbye", "size": "1"}),
        )],
    );
    rec.reconcile().await.expect("second pass");

    assert_eq!(
        change_of(&rec, "ConfigMap", "settings"),
        Change::Configured {
            fields: vec![".data.greeting".into()]
        }
    );
    assert_eq!(rec.status().applied_revision.as_deref(), Some("rev2"));
    assert_eq!(
        s.config_map_data("settings", "greeting").await.as_deref(),
        Some("goodbye")
    );
}

#[tokio::test]
async fn an_object_removed_from_git_is_pruned_but_kept_and_foreign_objects_stay() {
    let s = setup("rc-prune").await;
    let keep = {
        let mut cm = config_map(&s.ns, "keep", json!({"a": "1"}));
        cm["metadata"]["annotations"] = json!({"stagehand.dev/prune": "disabled"});
        cm
    };
    s.source.set(
        "dev",
        "rev1",
        vec![
            config_map(&s.ns, "stays", json!({"a": "1"})),
            config_map(&s.ns, "goes", json!({"a": "1"})),
            config_map(&s.ns, "adopted", json!({"a": "1"})),
            keep,
        ],
    );
    let mut rec = s.reconciler(s.env("dev"));
    rec.reconcile().await.expect("first pass");
    // Someone takes "adopted" over: it no longer carries our label.
    s.config_maps()
        .patch(
            "adopted",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"metadata": {"labels": {"stagehand.dev/inventory": "someone-else"}}}),
            ),
        )
        .await
        .expect("relabel");

    s.source.set(
        "dev",
        "rev2",
        vec![config_map(&s.ns, "stays", json!({"a": "1"}))],
    );
    rec.reconcile().await.expect("second pass");

    let outcome = |name: &str| {
        rec.status()
            .pruned
            .iter()
            .find(|p| p.reference.name == name)
            .map(|p| p.outcome.clone())
    };
    assert_eq!(outcome("goes"), Some(Outcome::Deleted));
    assert_eq!(outcome("keep"), Some(Outcome::Kept));
    assert_eq!(outcome("adopted"), Some(Outcome::NotOwned));
    assert!(
        s.config_maps()
            .get_opt("goes")
            .await
            .expect("answers")
            .is_none()
    );
    for name in ["stays", "keep", "adopted"] {
        assert!(
            s.config_maps()
                .get_opt(name)
                .await
                .expect("answers")
                .is_some(),
            "{name}"
        );
    }
}

async fn edit_by_hand(s: &Setup, name: &str, key: &str, value: &str) {
    // As `kubectl edit` would: an update under another field manager.
    let params = PatchParams {
        field_manager: Some("kubectl-edit".into()),
        ..PatchParams::default()
    };
    s.config_maps()
        .patch(name, &params, &Patch::Merge(json!({"data": {key: value}})))
        .await
        .expect("hand edit");
}

#[tokio::test]
async fn a_hand_edit_is_detected_as_drift_and_healed() {
    let s = setup("rc-heal").await;
    s.source.set(
        "dev",
        "rev1",
        vec![config_map(&s.ns, "settings", json!({"greeting": "hello"}))],
    );
    let mut events = s.events.subscribe();
    let mut rec = s.reconciler(s.env("dev"));
    rec.reconcile().await.expect("first pass");
    edit_by_hand(&s, "settings", "greeting", "hacked").await;

    rec.reconcile().await.expect("second pass");
    let fields = vec![".data.greeting".to_owned()];
    assert_eq!(
        change_of(&rec, "ConfigMap", "settings"),
        Change::Healed {
            fields: fields.clone()
        }
    );
    assert_eq!(
        s.config_map_data("settings", "greeting").await.as_deref(),
        Some("hello")
    );
    let drift = &rec.status().drift;
    assert_eq!(drift.len(), 1);
    assert!(drift[0].healed);
    let mut healed = false;
    while let Ok(event) = events.try_recv() {
        healed |= matches!(event.kind, EventKind::Healed { fields: ref f, .. } if *f == fields);
    }
    assert!(healed, "a Healed event was sent");
    let recorded = Api::<k8s_openapi::api::core::v1::Event>::namespaced(s.client.clone(), &s.ns)
        .list(&kube::api::ListParams::default().fields("involvedObject.name=settings"))
        .await
        .expect("events listed");
    let healed_event = recorded
        .items
        .iter()
        .find(|e| e.reason.as_deref() == Some("Healed"))
        .expect("a Kubernetes Event records the healing");
    assert!(
        healed_event
            .message
            .as_deref()
            .is_some_and(|m| m.contains(".data.greeting")),
        "{healed_event:?}"
    );
}

#[tokio::test]
async fn without_self_heal_a_hand_edit_is_reported_and_left_alone() {
    let s = setup("rc-drift").await;
    s.source.set(
        "dev",
        "rev1",
        vec![
            config_map(&s.ns, "settings", json!({"greeting": "hello"})),
            config_map(&s.ns, "other", json!({"x": "1"})),
            config_map(&s.ns, "deleted", json!({"x": "1"})),
        ],
    );
    let mut env = s.env("dev");
    env.sync.self_heal = false;
    let mut rec = s.reconciler(env);
    rec.reconcile().await.expect("first pass");
    edit_by_hand(&s, "settings", "greeting", "hacked").await;
    // A field nobody declared in Git is not drift.
    edit_by_hand(&s, "other", "added-by-hand", "yes").await;
    s.config_maps()
        .delete("deleted", &Default::default())
        .await
        .expect("deleted by hand");

    rec.reconcile().await.expect("drift alone is no failure");
    assert_eq!(
        change_of(&rec, "ConfigMap", "settings"),
        Change::Drifted {
            fields: vec![".data.greeting".into()]
        }
    );
    assert_eq!(change_of(&rec, "ConfigMap", "other"), Change::Unchanged);
    assert_eq!(
        s.config_map_data("settings", "greeting").await.as_deref(),
        Some("hacked")
    );
    assert_eq!(
        change_of(&rec, "ConfigMap", "deleted"),
        Change::Drifted {
            fields: vec!["(object deleted)".into()]
        }
    );
    assert!(
        s.config_maps()
            .get_opt("deleted")
            .await
            .expect("answers")
            .is_none()
    );
    assert_eq!(rec.status().drift.len(), 2);
    assert!(rec.status().drift.iter().all(|d| !d.healed));
}

#[tokio::test]
async fn a_failed_render_and_an_empty_render_prune_nothing() {
    let s = setup("rc-guard").await;
    s.source.set(
        "dev",
        "rev1",
        vec![
            config_map(&s.ns, "a", json!({"k": "v"})),
            config_map(&s.ns, "b", json!({"k": "v"})),
        ],
    );
    let mut rec = s.reconciler(s.env("dev"));
    rec.reconcile().await.expect("first pass");

    s.source
        .fail("dev", "kustomization.yaml: resources[1]: no such file");
    let err = rec
        .reconcile()
        .await
        .expect_err("a failed render fails the pass");
    assert_eq!(err.reason(), Reason::SourceFailed);
    assert_eq!(rec.status().reason, Reason::SourceFailed);
    assert!(
        rec.status()
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("resources[1]"))
    );

    s.source.set("dev", "rev2", Vec::new());
    let err = rec
        .reconcile()
        .await
        .expect_err("an empty render fails the pass");
    assert_eq!(err.reason(), Reason::EmptySource);
    assert_eq!(rec.status().applied_revision.as_deref(), Some("rev1"));

    for name in ["a", "b"] {
        assert!(
            s.config_maps()
                .get_opt(name)
                .await
                .expect("answers")
                .is_some(),
            "{name} kept"
        );
    }
}

#[tokio::test]
async fn an_apply_failure_of_one_object_prunes_nothing_and_names_the_object() {
    let s = setup("rc-applyfail").await;
    s.source.set(
        "dev",
        "rev1",
        vec![
            config_map(&s.ns, "a", json!({"k": "v"})),
            config_map(&s.ns, "old", json!({"k": "v"})),
        ],
    );
    let mut rec = s.reconciler(s.env("dev"));
    rec.reconcile().await.expect("first pass");
    // "old" leaves Git while another object is invalid: nothing may be pruned.
    let mut bad = config_map(&s.ns, "bad", json!({"k": "v"}));
    bad["data"] = json!({"not a valid key!": "v"});
    s.source.set(
        "dev",
        "rev2",
        vec![config_map(&s.ns, "a", json!({"k": "v"})), bad],
    );
    let err = rec
        .reconcile()
        .await
        .expect_err("an invalid object fails the pass");
    assert_eq!(err.reason(), Reason::ApplyFailed);
    assert!(
        err.to_string().contains(&format!("ConfigMap {}/bad", s.ns)),
        "{err}"
    );
    assert!(
        s.config_maps()
            .get_opt("old")
            .await
            .expect("answers")
            .is_some()
    );
    assert_eq!(rec.status().applied_revision.as_deref(), Some("rev1"));
}

#[tokio::test]
async fn an_immutable_field_change_fails_the_object_or_recreates_it_where_configured() {
    let s = setup("rc-immutable").await;
    s.source
        .set("dev", "rev1", vec![deployment(&s.ns, "web", "nginx:1")]);
    let mut env = s.env("dev");
    env.sync.timeout = Duration::from_secs(3600);
    let mut rec = s.reconciler(env.clone());
    rec.reconcile().await.expect("first pass");
    let mut moved = deployment(&s.ns, "web", "nginx:1");
    moved["spec"]["selector"]["matchLabels"]["app"] = json!("web2");
    moved["spec"]["template"]["metadata"]["labels"]["app"] = json!("web2");
    s.source.set("dev", "rev2", vec![moved]);
    rec.reconcile()
        .await
        .expect_err("the selector is immutable");
    let Change::Failed { error } = change_of(&rec, "Deployment", "web") else {
        panic!("the Deployment failed");
    };
    assert!(error.contains("immutable"), "{error}");

    env.sync.recreate = true;
    let mut rec = s.reconciler(env);
    rec.reconcile().await.expect("recreating works");
    assert_eq!(change_of(&rec, "Deployment", "web"), Change::Recreated);
    let live = Api::<Deployment>::namespaced(s.client.clone(), &s.ns)
        .get("web")
        .await
        .expect("exists");
    let labels = live.spec.selector.match_labels.expect("labels");
    assert_eq!(labels["app"], "web2");
}

async fn set_rolled_out(s: &Setup, name: &str) {
    let api = Api::<Deployment>::namespaced(s.client.clone(), &s.ns);
    let generation = api.get(name).await.expect("exists").metadata.generation;
    let status = json!({"status": {"observedGeneration": generation, "replicas": 1,
        "updatedReplicas": 1, "readyReplicas": 1, "availableReplicas": 1,
        "conditions": [{"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable"}]}});
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .expect("status set");
}

#[tokio::test]
async fn a_rolled_out_deployment_becomes_healthy_and_a_stalled_one_fails_after_the_timeout() {
    let s = setup("rc-health").await;
    s.source.set(
        "dev",
        "rev1",
        vec![
            deployment(&s.ns, "ready", "nginx:1"),
            deployment(&s.ns, "stuck", "nginx:1"),
        ],
    );
    let mut env = s.env("dev");
    env.sync.timeout = Duration::from_secs(2);
    let mut rec = s.reconciler(env);
    rec.reconcile().await.expect("first pass");
    assert_eq!(rec.status().health, Some(HealthStatus::Progressing));

    set_rolled_out(&s, "ready").await;
    // Let the health timeout run out for the Deployment nobody rolls out.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let err = rec
        .reconcile()
        .await
        .expect_err("the stalled Deployment fails the pass");
    assert_eq!(err.reason(), Reason::HealthCheckFailed);
    let health = |name: &str| {
        rec.status()
            .object("Deployment", name)
            .and_then(|o| o.health.clone())
            .expect("health assessed")
            .status
    };
    assert_eq!(health("ready"), HealthStatus::Healthy);
    assert_eq!(health("stuck"), HealthStatus::Failed);
    assert!(err.to_string().contains("stuck"), "{err}");

    set_rolled_out(&s, "stuck").await;
    rec.reconcile().await.expect("both rolled out");
    assert_eq!(rec.status().health, Some(HealthStatus::Healthy));
    assert_eq!(rec.status().reason, Reason::Succeeded);
}

async fn wait_for(
    controller: &Controller,
    env: &str,
    what: &str,
    done: impl Fn(&stagehand::reconcile::EnvironmentStatus) -> bool,
) -> stagehand::reconcile::EnvironmentStatus {
    let mut watch = controller.watch(env).expect("known environment");
    let found = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let status = watch.borrow_and_update().clone();
            if done(&status) {
                return status;
            }
            watch.changed().await.expect("the loop runs");
        }
    })
    .await;
    found.unwrap_or_else(|_| panic!("{env}: {what}: {:#?}", controller.status(env)))
}

#[tokio::test]
async fn an_unreachable_apiserver_backs_off_with_a_clear_status_and_never_stalls_another_environment()
 {
    let s = setup("rc-unreachable").await;
    let dir = tempfile::tempdir().expect("temp dir");
    let forwarder = Forwarder::start(apiserver_addr(&cluster().kubeconfig)).await;
    let far_kubeconfig = forwarder.kubeconfig(&cluster().kubeconfig, dir.path());
    forwarder.cut();

    s.source.set(
        "far",
        "rev1",
        vec![config_map(&s.ns, "far", json!({"k": "v"}))],
    );
    s.source.set(
        "near",
        "rev1",
        vec![config_map(&s.ns, "near", json!({"k": "v"}))],
    );
    let far = environment("far", &far_kubeconfig);
    let near = s.env("near");
    let options = Options {
        backoff_base: Duration::from_millis(100),
        backoff_max: Duration::from_secs(30),
        ..(*s.options).clone()
    };
    let controller = Controller::start(vec![far, near], s.source.clone(), options);

    let near_status = wait_for(&controller, "near", "succeeds", |st| {
        st.reason == Reason::Succeeded
    })
    .await;
    assert_eq!(near_status.failures, 0);
    let far_status = wait_for(&controller, "far", "fails three times", |st| {
        st.failures >= 3
    })
    .await;
    assert_eq!(far_status.reason, Reason::ClusterUnreachable);
    let error = far_status.last_error.expect("the error is kept");
    assert!(
        error.contains("Unreachable") || error.contains("onnect"),
        "{error}"
    );
    // Backoff doubles per consecutive failure: 100 ms, 200 ms, 400 ms ...
    let expected = Duration::from_millis(100) * (1 << (far_status.failures - 1));
    assert_eq!(
        far_status.next_attempt_in,
        Some(expected.min(Duration::from_secs(30)))
    );
    assert!(
        s.config_maps()
            .get_opt("far")
            .await
            .expect("answers")
            .is_none()
    );

    forwarder.restore().await;
    controller.trigger("far").expect("known environment");
    let recovered = wait_for(&controller, "far", "recovers", |st| {
        st.reason == Reason::Succeeded
    })
    .await;
    assert_eq!(recovered.failures, 0);
    assert!(recovered.last_error.is_none());
    assert_eq!(s.config_map_data("far", "k").await.as_deref(), Some("v"));
    controller.shutdown().await;
}

#[tokio::test]
async fn a_suspended_environment_applies_nothing_until_resumed() {
    let s = setup("rc-suspend").await;
    s.source.set(
        "dev",
        "rev1",
        vec![config_map(&s.ns, "x", json!({"k": "v"}))],
    );
    let mut env = s.env("dev");
    env.sync.suspend = true;
    let controller = Controller::start(vec![env], s.source.clone(), (*s.options).clone());
    controller.trigger("dev").expect("known environment");
    let status = wait_for(&controller, "dev", "is suspended", |st| {
        st.reason == Reason::Suspended
    })
    .await;
    assert_eq!(status.passes, 0);
    assert!(
        s.config_maps()
            .get_opt("x")
            .await
            .expect("answers")
            .is_none()
    );
    assert!(controller.trigger("nope").is_err());

    controller.resume("dev").expect("known environment");
    let status = wait_for(&controller, "dev", "runs", |st| {
        st.reason == Reason::Succeeded
    })
    .await;
    assert!(!status.suspended);
    assert!(
        s.config_maps()
            .get_opt("x")
            .await
            .expect("answers")
            .is_some()
    );
    controller.shutdown().await;
}

#[tokio::test]
async fn logs_status_and_events_of_syncs_with_secrets_hold_no_secret_value() {
    let logs = capture_logs();
    let s = setup("rc-secrets").await;
    let values = [
        "sentinel-password-7c1d",
        "sentinel-token-9a2b",
        "sentinel-replaced-4e5f",
    ];
    let secret = |password: &str| {
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db", "namespace": s.ns},
               "stringData": {"password": password}, "data": {"token": b64(values[1])}})
    };
    // An invalid Secret: the apiserver refuses it and its error must not quote the value.
    let invalid = json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "tls", "namespace": s.ns}, "type": "kubernetes.io/tls",
        "stringData": {"tls.crt": values[2]}});
    let mut events = s.events.subscribe();
    s.source.set("dev", "rev1", vec![secret(values[0])]);
    let mut rec = s.reconciler(s.env("dev"));
    rec.reconcile().await.expect("first pass");
    // A hand edit of the Secret, then a changed value from Git, then an invalid one.
    let params = PatchParams {
        field_manager: Some("kubectl-edit".into()),
        ..PatchParams::default()
    };
    Api::<Secret>::namespaced(s.client.clone(), &s.ns)
        .patch(
            "db",
            &params,
            &Patch::Merge(json!({"stringData": {"password": "by-hand-1234"}})),
        )
        .await
        .expect("hand edit");
    rec.reconcile().await.expect("healed");
    assert_eq!(
        change_of(&rec, "Secret", "db"),
        Change::Healed {
            fields: vec![".data.password".into()]
        }
    );
    s.source
        .set("dev", "rev2", vec![secret(values[2]), invalid]);
    let err = rec.reconcile().await.expect_err("the invalid Secret fails");

    let live = Api::<Secret>::namespaced(s.client.clone(), &s.ns)
        .get("db")
        .await
        .expect("exists");
    assert_eq!(live.data.expect("data")["password"].0, values[2].as_bytes());

    let mut seen = logs.text();
    seen.push_str(&format!("{err}\n{err:?}\n{:?}\n", rec.status()));
    seen.push_str(&serde_json::to_string(rec.status()).expect("status serialises"));
    while let Ok(event) = events.try_recv() {
        seen.push_str(&format!("{event:?}"));
    }
    assert!(
        seen.contains("Secret"),
        "something was logged about the Secrets"
    );
    for value in values {
        for form in [value.to_owned(), b64(value)] {
            assert!(!seen.contains(&form), "{form} leaked");
        }
    }
}

#[tokio::test]
async fn a_plan_names_what_a_sync_would_change_and_changes_nothing() {
    let s = setup("rc-plan").await;
    s.source.set(
        "dev",
        "rev1",
        vec![
            config_map(&s.ns, "changes", json!({"k": "old"})),
            config_map(&s.ns, "leaves", json!({"k": "v"})),
            config_map(&s.ns, "same", json!({"k": "v"})),
        ],
    );
    let mut rec = s.reconciler(s.env("dev"));
    rec.reconcile().await.expect("first pass");

    let new_ns = format!("{}-new", s.ns);
    let value = "plan-secret-value-5d6e";
    s.source.set(
        "dev",
        "rev2",
        vec![
            config_map(&s.ns, "changes", json!({"k": "new"})),
            config_map(&s.ns, "same", json!({"k": "v"})),
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": new_ns}}),
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db", "namespace": new_ns},
                   "stringData": {"password": value}}),
        ],
    );
    let plan = rec.plan().await.expect("planning works");
    let change = |kind: &str, name: &str| {
        plan.objects
            .iter()
            .find(|o| o.reference.kind == kind && o.reference.name == name)
            .map(|o| o.change.clone())
            .unwrap_or_else(|| panic!("{kind} {name} planned"))
    };
    assert_eq!(plan.revision, "rev2");
    assert_eq!(
        change("ConfigMap", "changes"),
        Change::Configured {
            fields: vec![".data.k".into()]
        }
    );
    assert_eq!(change("ConfigMap", "same"), Change::Unchanged);
    assert_eq!(change("Namespace", &new_ns), Change::Created);
    assert_eq!(change("Secret", "db"), Change::Created);
    assert_eq!(plan.prune.len(), 1);
    assert_eq!(plan.prune[0].reference.name, "leaves");
    assert_eq!(plan.prune[0].outcome, Outcome::Deleted);
    let shown = format!(
        "{plan:?}{}",
        serde_json::to_string(&plan).expect("serialises")
    );
    assert!(!shown.contains(value) && !shown.contains(&b64(value)));

    // Nothing changed in the cluster.
    assert_eq!(
        s.config_map_data("changes", "k").await.as_deref(),
        Some("old")
    );
    assert!(
        s.config_maps()
            .get_opt("leaves")
            .await
            .expect("answers")
            .is_some()
    );
    let namespaces = Api::<k8s_openapi::api::core::v1::Namespace>::all(s.client.clone());
    assert!(
        namespaces
            .get_opt(&new_ns)
            .await
            .expect("answers")
            .is_none()
    );
}

#[tokio::test]
async fn objects_of_one_kind_in_many_namespaces_are_found_unchanged_on_the_next_pass() {
    let s = setup("rc-wide").await;
    let mut objects = Vec::new();
    for i in 0..6 {
        let ns = format!("{}-{i}", s.ns);
        objects.push(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}));
        objects.push(config_map(&ns, "settings", json!({"index": i.to_string()})));
    }
    s.source.set("dev", "rev1", objects);
    let mut rec = s.reconciler(s.env("dev"));
    rec.reconcile().await.expect("first pass");
    rec.reconcile().await.expect("second pass");
    let changes: Vec<&Change> = rec.status().objects.iter().map(|o| &o.change).collect();
    assert_eq!(changes.len(), 12);
    assert!(
        changes.iter().all(|c| **c == Change::Unchanged),
        "{changes:?}"
    );
}

fn pruned_outcome(reconciler: &Reconciler<FedSource>, name: &str) -> Option<Outcome> {
    reconciler
        .status()
        .pruned
        .iter()
        .find(|p| p.reference.name == name)
        .map(|p| p.outcome.clone())
}

async fn exists(s: &Setup, name: &str) -> bool {
    s.config_maps()
        .get_opt(name)
        .await
        .expect("the apiserver answers")
        .is_some()
}

#[tokio::test]
async fn an_object_that_existed_before_is_adopted_only_when_allowed_and_survives_leaving_git() {
    let s = setup("rc-adopt").await;
    // Made by hand before Stagehand ever ran: no owner label.
    let by_hand: ConfigMap =
        serde_json::from_value(config_map(&s.ns, "prior", json!({"k": "by hand"})))
            .expect("valid ConfigMap");
    s.config_maps()
        .create(&Default::default(), &by_hand)
        .await
        .expect("created by hand");
    let desired = |data: &str| {
        vec![
            config_map(&s.ns, "prior", json!({"k": data})),
            config_map(&s.ns, "ours", json!({"k": "v"})),
        ]
    };
    s.source.set("dev", "rev1", desired("from git"));
    let mut env = s.env("dev");
    let mut rec = s.reconciler(env.clone());
    let err = rec
        .reconcile()
        .await
        .expect_err("an object that exists without an owner is a conflict");
    assert_eq!(err.reason(), Reason::ApplyFailed);
    let Change::Failed { error } = change_of(&rec, "ConfigMap", "prior") else {
        panic!("prior is not taken over without sync.adopt");
    };
    assert!(
        error.contains(&format!("ConfigMap {}/prior", s.ns)) && error.contains("sync.adopt"),
        "{error}"
    );
    assert_eq!(
        s.config_map_data("prior", "k").await.as_deref(),
        Some("by hand")
    );
    // The conflict fails one object; the others are applied.
    assert_eq!(change_of(&rec, "ConfigMap", "ours"), Change::Created);

    env.sync.adopt = true;
    let mut rec = s.reconciler(env.clone());
    rec.reconcile().await.expect("adopting works");
    assert_eq!(change_of(&rec, "ConfigMap", "prior"), Change::Adopted);
    assert_eq!(
        s.config_map_data("prior", "k").await.as_deref(),
        Some("from git")
    );
    rec.reconcile().await.expect("a second pass");
    assert_eq!(change_of(&rec, "ConfigMap", "prior"), Change::Unchanged);

    // It leaves Git: it stays, reported, pass after pass.
    s.source.set(
        "dev",
        "rev2",
        vec![config_map(&s.ns, "ours", json!({"k": "v"}))],
    );
    for _ in 0..2 {
        rec.reconcile()
            .await
            .expect("leaving an adopted object is no failure");
        assert_eq!(pruned_outcome(&rec, "prior"), Some(Outcome::KeptAdopted));
        assert!(exists(&s, "prior").await);
    }

    // Only the pipeline's word prunes it.
    env.sync.prune_adopted = true;
    let mut rec = s.reconciler(env);
    rec.reconcile().await.expect("pruning the adopted object");
    assert_eq!(pruned_outcome(&rec, "prior"), Some(Outcome::Deleted));
    assert!(!exists(&s, "prior").await);
}

#[tokio::test]
async fn a_namespace_and_a_crd_that_leave_git_are_orphaned_unless_the_pipeline_opts_in() {
    let s = setup("rc-orphan").await;
    let app_ns = format!("{}-app", s.ns);
    let group = format!("{}.stagehand.test", s.ns);
    let crd_name = format!("widgets.{group}");
    s.source.set(
        "dev",
        "rev1",
        vec![
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": app_ns}}),
            widget_crd(&group),
            config_map(&s.ns, "a", json!({"k": "v"})),
            config_map(&s.ns, "b", json!({"k": "v"})),
        ],
    );
    let mut env = s.env("dev");
    let mut rec = s.reconciler(env.clone());
    rec.reconcile().await.expect("first pass");

    s.source.set(
        "dev",
        "rev2",
        vec![
            config_map(&s.ns, "a", json!({"k": "v"})),
            config_map(&s.ns, "b", json!({"k": "v"})),
        ],
    );
    rec.reconcile().await.expect("orphaning is no failure");
    assert_eq!(
        pruned_outcome(&rec, &app_ns),
        Some(Outcome::Orphaned {
            setting: "sync.pruneNamespaces"
        })
    );
    assert_eq!(
        pruned_outcome(&rec, &crd_name),
        Some(Outcome::Orphaned {
            setting: "sync.pruneCRDs"
        })
    );
    let namespaces = Api::<k8s_openapi::api::core::v1::Namespace>::all(s.client.clone());
    let crds = Api::<
        k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
    >::all(s.client.clone());
    let ns_live = namespaces.get(&app_ns).await.expect("the namespace stays");
    assert!(ns_live.metadata.deletion_timestamp.is_none());
    let crd_live = crds.get(&crd_name).await.expect("the CRD stays");
    assert!(crd_live.metadata.deletion_timestamp.is_none());

    env.sync.prune_namespaces = true;
    env.sync.prune_crds = true;
    let mut rec = s.reconciler(env);
    rec.reconcile().await.expect("pruning with the opt-in");
    assert_eq!(pruned_outcome(&rec, &app_ns), Some(Outcome::Deleted));
    assert_eq!(pruned_outcome(&rec, &crd_name), Some(Outcome::Deleted));
    // No namespace controller runs here: a deleted namespace stays Terminating.
    let deleting = |live: Option<Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>>| {
        live.is_none_or(|t| t.is_some())
    };
    let ns_live = namespaces.get_opt(&app_ns).await.expect("answers");
    assert!(deleting(ns_live.map(|n| n.metadata.deletion_timestamp)));
    let crd_live = crds.get_opt(&crd_name).await.expect("answers");
    assert!(deleting(crd_live.map(|c| c.metadata.deletion_timestamp)));
}

#[tokio::test]
async fn a_pass_that_would_prune_most_of_the_environment_deletes_nothing_and_says_so() {
    let s = setup("rc-share").await;
    let all: Vec<Value> = (0..11)
        .map(|i| config_map(&s.ns, &format!("cm-{i}"), json!({"k": "v"})))
        .collect();
    s.source.set("dev", "rev1", all.clone());
    let mut env = s.env("dev");
    let mut rec = s.reconciler(env.clone());
    rec.reconcile().await.expect("first pass");

    s.source.set("dev", "rev2", all[..2].to_vec());
    let err = rec
        .reconcile()
        .await
        .expect_err("pruning 9 of 11 objects stops the pass");
    assert_eq!(err.reason(), Reason::PruneWithheld);
    assert_eq!(rec.status().reason, Reason::PruneWithheld);
    assert!(
        err.to_string().contains("9 of 11") && err.to_string().contains("maxPrunePercent"),
        "{err}"
    );
    let withheld = Outcome::Withheld {
        count: 9,
        total: 11,
        max_percent: 50,
    };
    assert_eq!(pruned_outcome(&rec, "cm-10"), Some(withheld));
    for i in 0..11 {
        assert!(exists(&s, &format!("cm-{i}")).await, "cm-{i} kept");
    }
    // Held back, not forgotten: the next pass stops again.
    rec.reconcile()
        .await
        .expect_err("still more than half on the next pass");

    env.sync.max_prune_percent = 100;
    let mut rec = s.reconciler(env);
    rec.reconcile()
        .await
        .expect("a raised limit lets it through");
    for i in 0..11 {
        assert_eq!(exists(&s, &format!("cm-{i}")).await, i < 2, "cm-{i}");
    }
}

#[tokio::test]
async fn two_installations_with_the_same_pipeline_and_environment_names_leave_each_others_objects_alone()
 {
    let s = setup("rc-installs").await;
    let state = [
        tempfile::tempdir().expect("temp dir"),
        tempfile::tempdir().expect("temp dir"),
    ];
    let reconciler = |state: &std::path::Path, source: Arc<FedSource>| {
        let options = Options {
            // Same pipeline name, same environment, same inventory namespace.
            owner_prefix: "shop.".into(),
            inventory_namespace: s.ns.clone(),
            installation: Some(
                stagehand::cluster::installation::load_or_create(state)
                    .expect("an installation ID"),
            ),
            ..Options::default()
        };
        Reconciler::new(s.env("dev"), source, Arc::new(options), s.events.clone())
    };
    let (source_a, source_b) = (
        Arc::new(FedSource::default()),
        Arc::new(FedSource::default()),
    );
    let mut a = reconciler(state[0].path(), source_a.clone());
    let mut b = reconciler(state[1].path(), source_b.clone());
    let cms = |names: &[&str]| -> Vec<Value> {
        names
            .iter()
            .map(|n| config_map(&s.ns, n, json!({"k": "v"})))
            .collect()
    };
    source_a.set("dev", "a1", cms(&["a-1", "a-2", "a-3"]));
    source_b.set("dev", "b1", cms(&["b-1", "b-2", "b-3"]));
    a.reconcile().await.expect("installation A applies");
    b.reconcile().await.expect("installation B applies");
    assert!(b.status().pruned.is_empty(), "{:?}", b.status().pruned);

    source_a.set("dev", "a2", cms(&["a-1", "a-2"]));
    a.reconcile()
        .await
        .expect("installation A prunes one of its own");
    b.reconcile().await.expect("installation B again");
    assert!(b.status().pruned.is_empty(), "{:?}", b.status().pruned);
    for (name, there) in [
        ("a-1", true),
        ("a-2", true),
        ("a-3", false),
        ("b-1", true),
        ("b-2", true),
        ("b-3", true),
    ] {
        assert_eq!(exists(&s, name).await, there, "{name}");
    }

    // An object A owns is not B's to take, adopt or not.
    source_b.set("dev", "b2", cms(&["b-1", "b-2", "b-3", "a-1"]));
    b.reconcile().await.expect_err("B may not take A's object");
    let Change::Failed { error } = change_of(&b, "ConfigMap", "a-1") else {
        panic!("a-1 is A's");
    };
    assert!(error.contains("belongs to Stagehand owner"), "{error}");
}

#[tokio::test]
async fn a_concurrent_inventory_writer_fails_the_pass_instead_of_being_overwritten() {
    let s = setup("rc-conflict").await;
    let group = format!("{}.stagehand.test", s.ns);
    let crds = Api::<
        k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
    >::all(s.client.clone());
    // A CRD that already holds the kind Widget in the group: the pass's own Widget CRD cannot
    // become Established until it goes, which holds the pass between reading and writing its
    // inventory for as long as the test needs.
    let mut blocker = widget_crd(&group);
    blocker["metadata"]["name"] = json!(format!("gadgets.{group}"));
    blocker["spec"]["names"]["plural"] = json!("gadgets");
    blocker["spec"]["names"]["singular"] = json!("gadget");
    crds.create(
        &Default::default(),
        &serde_json::from_value(blocker).expect("valid CRD"),
    )
    .await
    .expect("blocker created");
    s.source.set(
        "dev",
        "rev1",
        vec![
            widget_crd(&group),
            config_map(&s.ns, "a", json!({"k": "v"})),
        ],
    );
    let mut rec = s.reconciler(s.env("dev"));
    let pass = tokio::spawn(async move {
        let result = rec.reconcile().await;
        (rec, result)
    });
    // Until the pass has made its CRD (or ended, which the assertions below then report).
    while !pass.is_finished()
        && crds
            .get_opt(&format!("widgets.{group}"))
            .await
            .expect("answers")
            .is_none()
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The other writer: another Stagehand with the same owner stores its inventory.
    let inventory = format!("stagehand-inventory-{}.dev", s.ns);
    let theirs: ConfigMap = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": inventory, "namespace": s.ns},
        "data": {"inventory": "[]", "writer": "the other one"}
    }))
    .expect("valid");
    s.config_maps()
        .create(&Default::default(), &theirs)
        .await
        .expect("the other writer stores first");
    crds.delete(&format!("gadgets.{group}"), &Default::default())
        .await
        .expect("blocker removed");

    let (rec, result) = pass.await.expect("the pass does not panic");
    let err = result.expect_err("the pass finds the inventory written since it read it");
    assert_eq!(err.reason(), Reason::InventoryConflict, "{err}");
    assert_eq!(rec.status().reason, Reason::InventoryConflict);
    let chain = stagehand::error_chain::ErrorChain(&err).to_string();
    assert!(chain.contains(&inventory), "{chain}");
    assert_eq!(
        s.config_map_data(&inventory, "writer").await.as_deref(),
        Some("the other one")
    );
}

#[tokio::test]
async fn a_secret_that_fails_while_being_recreated_is_reported_as_carefully_as_a_failed_apply() {
    let s = setup("rc-recreate-secret").await;
    let secret = |data: Value| {
        json!({"apiVersion": "v1", "kind": "Secret", "immutable": true,
               "metadata": {"name": "db", "namespace": s.ns}, "data": data})
    };
    s.source
        .set("dev", "rev1", vec![secret(json!({"password": b64("one")}))]);
    let mut env = s.env("dev");
    env.sync.recreate = true;
    let mut rec = s.reconciler(env);
    rec.reconcile().await.expect("first pass");
    // Immutable data changes, so the Secret is deleted and applied again, and the new one is
    // invalid: the apiserver's message about it is reduced to field names, as for an apply.
    s.source.set(
        "dev",
        "rev2",
        vec![secret(
            json!({"password": b64("two"), "not a valid key!": b64("three")}),
        )],
    );
    rec.reconcile()
        .await
        .expect_err("the new Secret is invalid");
    let Change::Failed { error } = change_of(&rec, "Secret", "db") else {
        panic!("the Secret failed");
    };
    assert!(error.contains("apply after delete"), "{error}");
    assert!(error.contains("(FieldValueInvalid)"), "{error}");
    assert!(!error.contains("a valid config key"), "{error}");
}

/// Counts the passes that are reading their desired state at once; each read takes a while,
/// so passes that were allowed to overlap would.
struct Counted {
    inner: Arc<FedSource>,
    in_flight: std::sync::atomic::AtomicUsize,
    most: std::sync::atomic::AtomicUsize,
}

impl stagehand::reconcile::DesiredState for Counted {
    async fn desired(
        &self,
        env: &Environment,
    ) -> Result<stagehand::reconcile::Desired, stagehand::reconcile::SourceError> {
        use std::sync::atomic::Ordering::SeqCst;
        let now = self.in_flight.fetch_add(1, SeqCst) + 1;
        self.most.fetch_max(now, SeqCst);
        tokio::time::sleep(Duration::from_millis(200)).await;
        let desired = self.inner.desired(env).await;
        self.in_flight.fetch_sub(1, SeqCst);
        desired
    }
}

#[tokio::test]
async fn no_more_passes_run_at_once_than_the_limit_and_every_environment_gets_its_turn() {
    let s = setup("rc-turns").await;
    let names: Vec<String> = (0..6).map(|i| format!("env{i}")).collect();
    for name in &names {
        s.source.set(
            name,
            "rev1",
            vec![config_map(&s.ns, name, json!({"k": "v"}))],
        );
    }
    let source = Arc::new(Counted {
        inner: s.source.clone(),
        in_flight: Default::default(),
        most: Default::default(),
    });
    let options = Options {
        passes: stagehand::reconcile::Turns::new(2),
        ..(*s.options).clone()
    };
    let environments = names.iter().map(|n| s.env(n)).collect();
    let controller = Controller::start(environments, source.clone(), options);
    for name in &names {
        wait_for(&controller, name, "succeeds", |st| {
            st.reason == Reason::Succeeded
        })
        .await;
        assert_eq!(s.config_map_data(name, "k").await.as_deref(), Some("v"));
    }
    // Two at a time: never more, and the limit is not a queue of one.
    assert_eq!(source.most.load(std::sync::atomic::Ordering::SeqCst), 2);
    controller.shutdown().await;
}
