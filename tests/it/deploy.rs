//! deploy/ as users apply it: every directory renders the same with `stagehand render` and
//! `kubectl kustomize`; the base and every overlay go to the real apiserver with
//! `kubectl apply --server-side`; and the service, run with the ServiceAccount's own token,
//! reconciles an environment (the RBAC is enough) while the apiserver refuses what the
//! documented rules leave out.

use std::path::{Path, PathBuf};
use std::process::Command;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Node};
use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use crate::keys::{Serve, identity, password, repository, sealed_secret};
use crate::service::eventually;
use crate::support::{Tool, cluster::cluster, kubectl_kustomize, tool, yaml_documents};

/// The namespace deploy/ installs into; fixed, since Stagehand keeps its inventories there.
pub(crate) const NAMESPACE: &str = "stagehand-system";

fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// deploy/base and every directory under deploy/overlays, so that a new overlay is covered.
pub(crate) fn deploy_dirs() -> Vec<PathBuf> {
    let mut overlays: Vec<PathBuf> = std::fs::read_dir(repo_root().join("deploy/overlays"))
        .expect("deploy/overlays exists")
        .map(|entry| entry.expect("readable").path())
        .filter(|path| path.is_dir())
        .collect();
    overlays.sort();
    assert!(!overlays.is_empty(), "deploy/overlays holds the overlays");
    std::iter::once(repo_root().join("deploy/base"))
        .chain(overlays)
        .collect()
}

/// The rendered objects of a deploy/ directory, as JSON.
pub(crate) fn rendered(dir: &Path) -> Vec<Value> {
    yaml_documents(&kubectl_kustomize(dir))
        .into_iter()
        .map(|doc| serde_json::to_value(doc).expect("YAML objects are JSON"))
        .collect()
}

/// The rendered object of `kind` named `name`.
pub(crate) fn object<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} rendered"))
}

#[test]
fn every_deploy_directory_renders_the_same_with_stagehand_and_kubectl() {
    for dir in deploy_dirs() {
        let out = Command::new(env!("CARGO_BIN_EXE_stagehand"))
            .arg("render")
            .arg(&dir)
            .output()
            .expect("stagehand runs");
        assert!(
            out.status.success(),
            "stagehand render {}: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let ours = String::from_utf8(out.stdout).expect("UTF-8");
        assert_eq!(ours, kubectl_kustomize(&dir), "{}", dir.display());
    }
}

#[test]
fn the_example_pipeline_in_deploy_is_valid() {
    let out = Command::new(env!("CARGO_BIN_EXE_stagehand"))
        .args(["pipeline", "validate", "--pipeline"])
        .arg(repo_root().join("deploy/base/pipeline.yaml"))
        .output()
        .expect("stagehand runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Test-only: what the local apiserver (1.20) lacks and every supported Kubernetes has. gRPC
/// probes came in 1.24 (beta) and PodDisruptionBudget `policy/v1` in 1.21, so on older
/// servers the probes become TCP probes of the same port and the budget `policy/v1beta1`.
/// Nothing else is changed.
pub(crate) fn for_apiserver(mut objects: Vec<Value>, minor: u32) -> Vec<Value> {
    for object in &mut objects {
        if minor < 21 && object["kind"] == "PodDisruptionBudget" {
            object["apiVersion"] = json!("policy/v1beta1");
        }
        if minor >= 24 || object["kind"] != "Deployment" {
            continue;
        }
        let containers = object["spec"]["template"]["spec"]["containers"]
            .as_array_mut()
            .expect("a Deployment has containers");
        for container in containers {
            for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
                let Some(probe) = container.get_mut(probe).and_then(Value::as_object_mut) else {
                    continue;
                };
                if let Some(grpc) = probe.remove("grpc") {
                    probe.insert("tcpSocket".into(), json!({"port": grpc["port"]}));
                }
            }
        }
    }
    objects
}

/// The apiserver's minor version.
async fn minor_version(kube: &kube::Client) -> u32 {
    let info = kube.apiserver_version().await.expect("/version answers");
    info.minor
        .trim_end_matches('+')
        .parse()
        .expect("a numeric minor version")
}

pub(crate) fn kubectl(args: &[&str], kubeconfig: &Path) -> String {
    let out = Command::new(tool(Tool::Kubectl))
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .output()
        .expect("kubectl runs");
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8")
}

/// Applies `objects` as users do, `kubectl apply --server-side`, as the cluster's admin.
pub(crate) fn apply(objects: &[Value], dir: &Path) {
    let file = dir.join("objects.json");
    let list = json!({"apiVersion": "v1", "kind": "List", "items": objects});
    std::fs::write(&file, list.to_string()).expect("write");
    let file = file.to_str().expect("UTF-8 path");
    kubectl(
        &[
            "apply",
            "--server-side",
            "--field-manager",
            "deploy-test",
            "-f",
            file,
        ],
        &cluster().kubeconfig,
    );
    // Every object is there as applied.
    kubectl(&["get", "-f", file, "-o", "name"], &cluster().kubeconfig);
}

/// A kubeconfig for the same apiserver that authenticates as `token`.
fn kubeconfig_with_token(token: &str, dir: &Path) -> PathBuf {
    let admin = std::fs::read_to_string(&cluster().kubeconfig).expect("kubeconfig");
    let server = admin
        .lines()
        .find_map(|l| l.trim().strip_prefix("server: "))
        .expect("the kubeconfig names its server");
    let file = dir.join("stagehand.kubeconfig");
    std::fs::write(
        &file,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {{server: {server}, insecure-skip-tls-verify: true}}\nusers:\n- name: stagehand\n  user: {{token: {token}}}\ncontexts:\n- name: c\n  context: {{cluster: c, user: stagehand, namespace: {NAMESPACE}}}\ncurrent-context: c\n"
        ),
    )
    .expect("write");
    file
}

pub(crate) async fn client_of(kubeconfig: &Path) -> kube::Client {
    crate::support::cluster::install_crypto_provider();
    let config = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::read_from(kubeconfig).expect("kubeconfig"),
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .expect("valid kubeconfig");
    kube::Client::try_from(config).expect("client")
}

fn assert_forbidden<T: std::fmt::Debug>(what: &str, result: Result<T, kube::Error>) {
    match result {
        Err(kube::Error::Api(status)) if status.code == 403 => {}
        other => panic!("{what}: expected 403 Forbidden, got {other:?}"),
    }
}

/// As a controller would after rolling it out: the local apiserver runs none.
async fn set_rolled_out(kube: &kube::Client, namespace: &str, name: &str) {
    let api = Api::<Deployment>::namespaced(kube.clone(), namespace);
    let generation = api.get(name).await.expect("exists").metadata.generation;
    let status = json!({"status": {"observedGeneration": generation, "replicas": 1,
        "updatedReplicas": 1, "readyReplicas": 1, "availableReplicas": 1,
        "conditions": [{"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable"}]}});
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .expect("status set");
}

// One test for the base and every overlay: they install the same cluster-wide objects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_applies_to_the_apiserver_and_its_service_account_reconciles_with_its_rbac_and_no_more()
 {
    let admin = cluster().client().await;
    let minor = minor_version(&admin).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let dirs = deploy_dirs();
    apply(&for_apiserver(rendered(&dirs[0]), minor), dir.path());

    // The ServiceAccount's own token, from the TokenRequest API: no token Secret is made
    // without a controller manager, and RBAC then applies to it as in a pod.
    let token = kubectl(
        &[
            "create",
            "token",
            "stagehand",
            "-n",
            NAMESPACE,
            "--duration",
            "1h",
        ],
        &cluster().kubeconfig,
    );
    let kubeconfig = kubeconfig_with_token(token.trim(), dir.path());
    let sa = client_of(&kubeconfig).await;

    // Outside the documented rules, the apiserver refuses.
    assert_forbidden(
        "listing Nodes",
        Api::<Node>::all(sa.clone())
            .list(&ListParams::default())
            .await,
    );
    assert_forbidden(
        "Leases outside its namespace",
        Api::<Lease>::namespaced(sa.clone(), "kube-system")
            .list(&ListParams::default())
            .await,
    );
    let binding: ClusterRoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "stagehand-escalates"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
        "subjects": [{"kind": "ServiceAccount", "name": "stagehand", "namespace": NAMESPACE}],
    }))
    .expect("valid binding");
    assert_forbidden(
        "binding itself to cluster-admin",
        Api::<ClusterRoleBinding>::all(sa.clone())
            .create(&PostParams::default(), &binding)
            .await,
    );
    // An environment of the kinds the ClusterRole lists (its Namespace, a SOPS Secret, a
    // ConfigMap, a Service, a ServiceAccount, a Deployment), and one holding a Role, which it
    // does not list.
    let ns = format!("deploy-app-{}", std::process::id());
    let (key, recipient) = identity(dir.path(), "app");
    let sealed = sealed_secret(dir.path(), &ns, "db", "hunter2-deploy", &recipient);
    let app: Vec<(&str, String)> = vec![
        (
            "namespace.yaml",
            format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}}}\n"),
        ),
        ("db.sops.yaml", sealed),
        (
            "config.yaml",
            format!(
                "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: web, namespace: {ns}}}\ndata: {{greeting: hello}}\n"
            ),
        ),
        (
            "service.yaml",
            format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: {ns}}}\nspec:\n  ports: [{{port: 80}}]\n  selector: {{app: web}}\n"
            ),
        ),
        (
            "account.yaml",
            format!(
                "apiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: web, namespace: {ns}}}\n"
            ),
        ),
        (
            "deployment.yaml",
            format!(
                "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: web, namespace: {ns}}}\nspec:\n  selector: {{matchLabels: {{app: web}}}}\n  template:\n    metadata: {{labels: {{app: web}}}}\n    spec:\n      containers: [{{name: web, image: nginx}}]\n"
            ),
        ),
    ];
    let escalate: Vec<(&str, String)> = vec![(
        "role.yaml",
        format!(
            "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {{name: everything, namespace: {ns}}}\nrules: [{{apiGroups: ['*'], resources: ['*'], verbs: ['*']}}]\n"
        ),
    )];
    let pipeline = repository(
        dir.path(),
        &format!("deploy{}", std::process::id()),
        &[("app", "", &app), ("escalate", "", &escalate)],
    );
    // The age identities as the Deployment takes them: a mounted Secret directory.
    let keys = dir.path().join("age");
    std::fs::create_dir(&keys).expect("mkdir");
    std::fs::write(keys.join("app.agekey"), key).expect("write");
    let serve = Serve::start_as(
        dir.path(),
        &pipeline,
        &["--age-keys-dir", keys.to_str().expect("UTF-8")],
        &kubeconfig,
    );

    eventually("app's objects are applied", || async {
        Api::<Deployment>::namespaced(admin.clone(), &ns)
            .get_opt("web")
            .await
            .expect("answers")
            .is_some()
    })
    .await;
    set_rolled_out(&admin, &ns, "web").await;
    eventually("app succeeds with the ServiceAccount's rights", || async {
        serve.status("app").0 == "succeeded"
    })
    .await;
    assert_eq!(
        password(&admin, &ns, "db").await.as_deref(),
        Some("hunter2-deploy")
    );
    let installation = std::fs::read_to_string(dir.path().join("state/installation-id"))
        .expect("the service keeps its installation ID");
    let inventory = format!(
        "stagehand-inventory-{}.deploy{}.app",
        installation.trim(),
        std::process::id()
    );
    assert!(
        Api::<ConfigMap>::namespaced(admin.clone(), NAMESPACE)
            .get_opt(&inventory)
            .await
            .expect("answers")
            .is_some(),
        "the inventory is kept in {NAMESPACE}"
    );

    eventually(
        "escalate fails: Roles are not in the ClusterRole",
        || async { serve.status("escalate").0 == "apply_failed" },
    )
    .await;
    let (_, message) = serve.status("escalate");
    assert!(
        message.contains("forbidden") && message.contains("roles"),
        "{message}"
    );
    drop(serve);

    // Every overlay applies over the base as users would switch to it.
    for overlay in &dirs[1..] {
        let objects = rendered(overlay);
        apply(&for_apiserver(objects.clone(), minor), dir.path());
        let deployment = Api::<Deployment>::namespaced(admin.clone(), NAMESPACE)
            .get("stagehand")
            .await
            .expect("the Deployment is there");
        let rendered_replicas = object(&objects, "Deployment", "stagehand")["spec"]["replicas"]
            .as_i64()
            .expect("replicas");
        assert_eq!(
            deployment.spec.replicas.map(i64::from),
            Some(rendered_replicas),
            "{}",
            overlay.display()
        );
    }
}
