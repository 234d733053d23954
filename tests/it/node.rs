//! deploy/overlays/ha as real pods: a cluster of its own with a kubelet that runs them as
//! containers of the local Docker engine (scripts/local-node.sh), the Deployment from the local
//! image, its service account's token (RBAC enforced by the apiserver), the age keys, tokens,
//! TLS and database URL from Secrets, the store in the run's PostgreSQL server. Deleting the pod
//! that holds environments moves them to the other replica.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{Api, ListParams};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use crate::cli_api::certificates;
use crate::deploy::{NAMESPACE, client_of, for_apiserver, kubectl, rendered};
use crate::image::image;
use crate::keys::{Overlay, identity, password, repository, sealed_secret};
use crate::support::git::git;
use crate::support::git_http::GitHttpServer;
use crate::support::postgres::fresh_database;

/// How long the test's replicas hold a Lease: the shortest the service allows, for a quick test.
const LEASE_DURATION: Duration = Duration::from_secs(5);

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scripts")
        .join(name)
}

/// A kube-apiserver and a node of the test's own, stopped (pods' containers removed) on drop.
struct NodeCluster {
    dir: tempfile::TempDir,
}

impl NodeCluster {
    fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let up = Command::new(script("local-cluster.sh"))
            .arg("up")
            .arg(dir.path())
            .args(["--watch", &std::process::id().to_string()])
            .output()
            .expect("local-cluster.sh runs");
        assert!(
            up.status.success(),
            "local-cluster.sh up: {}",
            String::from_utf8_lossy(&up.stderr)
        );
        let cluster = Self { dir };
        let node = Command::new(script("local-node.sh"))
            .arg("up")
            .arg(cluster.dir.path())
            .output()
            .expect("local-node.sh runs");
        assert!(
            node.status.success(),
            "local-node.sh up: {}",
            String::from_utf8_lossy(&node.stderr)
        );
        cluster
    }

    fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("kubeconfig")
    }

    fn apiserver_port(&self) -> String {
        let text = std::fs::read_to_string(self.kubeconfig()).expect("kubeconfig");
        text.lines()
            .find_map(|l| l.trim().strip_prefix("server: "))
            .and_then(|server| server.rsplit_once(':'))
            .map(|(_, port)| port.to_owned())
            .expect("the kubeconfig names its server")
    }
}

impl Drop for NodeCluster {
    fn drop(&mut self) {
        let _ = Command::new(script("local-cluster.sh"))
            .arg("down")
            .arg(self.dir.path())
            .output();
    }
}

fn secret(name: &str, entries: &[(&str, &[u8])]) -> Value {
    use base64::Engine as _;
    let data: BTreeMap<&str, String> = entries
        .iter()
        .map(|(key, value)| {
            (
                *key,
                base64::engine::general_purpose::STANDARD.encode(value),
            )
        })
        .collect();
    json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": name, "namespace": NAMESPACE}, "data": data})
}

/// Test-only, for a one-node cluster with no pod network: the pods share the host's network,
/// where two replicas cannot both listen on the Deployment's fixed ports, so they listen on
/// free loopback ports, and the container ports (host ports there) and the probes go; with no kube-proxy the
/// apiserver is reached at its loopback address; the image is the local one, never pulled.
fn for_one_node(objects: &mut [Value], image: &str, apiserver_port: &str) {
    for object in objects.iter_mut().filter(|o| o["kind"] == "Deployment") {
        let spec = &mut object["spec"]["template"]["spec"];
        spec["hostNetwork"] = json!(true);
        spec["dnsPolicy"] = json!("ClusterFirstWithHostNet");
        let container = &mut spec["containers"][0];
        container["image"] = json!(image);
        container["imagePullPolicy"] = json!("Never");
        let fields = container.as_object_mut().expect("a container is an object");
        for field in ["ports", "startupProbe", "readinessProbe", "livenessProbe"] {
            fields.remove(field);
        }
        let env = container["env"].as_array_mut().expect("env");
        let overrides = [
            ("STAGEHAND_LISTEN", "127.0.0.1:0".to_owned()),
            ("STAGEHAND_HTTP_LISTEN", "127.0.0.1:0".to_owned()),
            ("STAGEHAND_HEALTH_LISTEN", "127.0.0.1:0".to_owned()),
            ("STAGEHAND_LEASE_DURATION", "5s".to_owned()),
            ("KUBERNETES_SERVICE_HOST", "127.0.0.1".to_owned()),
            ("KUBERNETES_SERVICE_PORT", apiserver_port.to_owned()),
        ];
        env.retain(|e| !overrides.iter().any(|(name, _)| e["name"] == *name));
        env.extend(
            overrides
                .iter()
                .map(|(name, value)| json!({"name": name, "value": value})),
        );
    }
}

/// Which replica holds each environment's Lease, by environment (the Lease's annotation).
async fn holders(kube: &kube::Client) -> BTreeMap<String, String> {
    let leases = Api::<Lease>::namespaced(kube.clone(), NAMESPACE)
        .list(&ListParams::default().labels("stagehand.dev/role=environment"))
        .await
        .expect("Leases list");
    leases
        .items
        .into_iter()
        .filter_map(|lease| {
            let env = lease
                .metadata
                .annotations?
                .get("stagehand.dev/environment")?
                .clone();
            let holder = lease.spec?.holder_identity?;
            Some((env, holder))
        })
        .collect()
}

async fn running_pods(kube: &kube::Client) -> Vec<Pod> {
    Api::<Pod>::namespaced(kube.clone(), NAMESPACE)
        .list(&ListParams::default().labels("app.kubernetes.io/name=stagehand"))
        .await
        .expect("pods list")
        .items
        .into_iter()
        .filter(|pod| {
            pod.metadata.deletion_timestamp.is_none()
                && pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
        })
        .collect()
}

/// The pods, their events and the last lines each logged: what a failed wait shows.
fn explain(kubeconfig: &Path) -> String {
    let mut text = kubectl(
        &["get", "pods,events", "-n", NAMESPACE, "-o", "wide"],
        kubeconfig,
    );
    // From the engine: the apiserver cannot reach the kubelet for `kubectl logs`, since the
    // node has no address but loopback.
    let names = docker_inspect(&[
        "ps",
        "-a",
        "--filter",
        "name=k8s_stagehand_",
        "--format",
        "{{.Names}}",
    ]);
    for container in names.lines() {
        let logs = Command::new("docker")
            .args(["logs", "--tail", "40", container])
            .output()
            .expect("docker runs");
        text.push_str(&format!(
            "\n--- {container}\n{}{}",
            String::from_utf8_lossy(&logs.stdout),
            String::from_utf8_lossy(&logs.stderr)
        ));
    }
    text
}

/// Waits up to two minutes for `check`, else fails with what the pods say.
async fn within<F, Fut>(what: &str, kubeconfig: &Path, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while !check().await {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "never happened: {what}\n{}",
            explain(kubeconfig)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn greeting(kube: &kube::Client, namespace: &str) -> Option<String> {
    Api::<ConfigMap>::namespaced(kube.clone(), namespace)
        .get_opt("web")
        .await
        .ok()
        .flatten()?
        .data?
        .get("greeting")
        .cloned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ha_deployment_runs_as_pods_from_the_local_image_and_a_deleted_pods_environments_move()
{
    let image = image();
    let database = fresh_database("node").await;
    let node = NodeCluster::start();
    let kubeconfig = node.kubeconfig();
    let admin = client_of(&kubeconfig).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path();

    // Eight environments, each its Namespace, a ConfigMap and a SOPS Secret, for one key.
    let (key, recipient) = identity(root, "all");
    let envs: Vec<String> = (0..8).map(|i| format!("e{i}")).collect();
    let files: Vec<Vec<(&str, String)>> = envs
        .iter()
        .map(|env| {
            let ns = format!("node-{env}");
            vec![
                (
                    "namespace.yaml",
                    format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}}}\n"),
                ),
                (
                    "config.yaml",
                    format!(
                        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: web, namespace: {ns}}}\ndata: {{greeting: hello}}\n"
                    ),
                ),
                (
                    "db.sops.yaml",
                    sealed_secret(root, &ns, "db", &format!("hunter2-{env}"), &recipient),
                ),
            ]
        })
        .collect();
    let overlays: Vec<Overlay<'_>> = envs
        .iter()
        .zip(&files)
        .map(|(env, files)| (env.as_str(), "", files.as_slice()))
        .collect();
    let pipeline = repository(root, "node", &overlays);
    git(
        root,
        &["clone", "-q", "--bare", "gitops", "served/gitops.git"],
    );
    let server = GitHttpServer::start(&root.join("served"), None);
    let pipeline_text = std::fs::read_to_string(&pipeline)
        .expect("pipeline")
        .replace(
            &root.join("gitops").display().to_string(),
            &server.url("gitops.git"),
        );

    // deploy/overlays/ha as the apiserver takes it, with the Secrets it mounts.
    let minor: u32 = admin
        .apiserver_version()
        .await
        .expect("/version")
        .minor
        .trim_end_matches('+')
        .parse()
        .expect("numeric minor");
    let mut objects = for_apiserver(
        rendered(&Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/overlays/ha")),
        minor,
    );
    for_one_node(&mut objects, image, &node.apiserver_port());
    for object in objects.iter_mut().filter(|o| o["kind"] == "ConfigMap") {
        object["data"] = json!({"pipeline.yaml": pipeline_text});
    }
    let certs = root.join("certs");
    std::fs::create_dir(&certs).expect("mkdir");
    certificates(&certs);
    let token = "node-test-token";
    let tokens = format!(
        "apiVersion: stagehand.dev/v1alpha1\nkind: Tokens\nidentities:\n  - {{name: ci, groups: [viewers], tokenSha256: [{}]}}\n",
        hex::encode(Sha256::digest(token.as_bytes()))
    );
    objects.extend([
        secret(
            "stagehand-tls",
            &[
                (
                    "tls.crt",
                    &std::fs::read(certs.join("server.pem")).expect("cert"),
                ),
                (
                    "tls.key",
                    &std::fs::read(certs.join("server.key")).expect("key"),
                ),
            ],
        ),
        secret("stagehand-tokens", &[("tokens.yaml", tokens.as_bytes())]),
        secret("stagehand-webhook", &[("secret", b"webhook-secret")]),
        secret("stagehand-age-keys", &[("all.agekey", key.as_bytes())]),
        secret("stagehand-database", &[("url", database.as_bytes())]),
    ]);
    // The Namespace first, then the rest, as `kubectl apply` takes a list in order.
    let file = root.join("objects.json");
    std::fs::write(
        &file,
        json!({"apiVersion": "v1", "kind": "List", "items": objects}).to_string(),
    )
    .expect("write");
    kubectl(
        &[
            "apply",
            "--server-side",
            "--field-manager",
            "node-test",
            "-f",
            file.to_str().expect("UTF-8"),
        ],
        &kubeconfig,
    );

    // Two pods from the local image, running as the Deployment says.
    within("two stagehand pods run", &kubeconfig, || async {
        running_pods(&admin).await.len() == 2
    })
    .await;
    for pod in running_pods(&admin).await {
        let status = &pod
            .status
            .expect("status")
            .container_statuses
            .expect("statuses")[0];
        assert_eq!(status.image, image, "{status:?}");
        let id = docker_inspect(&["image", "inspect", "-f", "{{.Id}}", image]);
        assert!(status.image_id.ends_with(id.trim()), "{status:?} vs {id}");
    }

    // Every environment applied (its Secret decrypted in the pod) and held by one of them.
    for env in &envs {
        let ns = format!("node-{env}");
        within(
            &format!("{env}'s Secret is applied"),
            &kubeconfig,
            || async {
                password(&admin, &ns, "db").await.as_deref() == Some(&format!("hunter2-{env}"))
            },
        )
        .await;
    }
    let pods: Vec<String> = running_pods(&admin)
        .await
        .into_iter()
        .filter_map(|p| p.metadata.name)
        .collect();
    let held = holders(&admin).await;
    assert_eq!(
        held.keys().cloned().collect::<Vec<_>>(),
        envs,
        "a Lease per environment: {held:?}"
    );
    assert!(
        held.values().all(|holder| pods.contains(holder)),
        "{held:?} held by the pods {pods:?}"
    );

    // The pod holding the most environments goes, as `kubectl delete pod` does it (graceful).
    let mut counts: BTreeMap<&String, usize> = BTreeMap::new();
    for holder in held.values() {
        *counts.entry(holder).or_default() += 1;
    }
    let (victim, _) = counts
        .iter()
        .max_by_key(|(_, count)| **count)
        .expect("some pod holds environments");
    let victim = (*victim).clone();
    let moved: Vec<String> = held
        .iter()
        .filter(|(_, holder)| **holder == victim)
        .map(|(env, _)| env.clone())
        .collect();
    let deleted = Instant::now();
    kubectl(
        &["delete", "pod", &victim, "-n", NAMESPACE, "--wait=false"],
        &kubeconfig,
    );
    within(
        "the deleted pod's environments move",
        &kubeconfig,
        || async {
            let now = holders(&admin).await;
            moved
                .iter()
                .all(|env| now.get(env).is_some_and(|holder| *holder != victim))
        },
    )
    .await;
    println!(
        "{} environments moved {:?} after `kubectl delete pod` (Lease duration {LEASE_DURATION:?})",
        moved.len(),
        deleted.elapsed()
    );

    // And they are reconciled where they went: a new commit reaches every environment.
    let repo = root.join("gitops");
    for env in &envs {
        let file = repo.join(format!("envs/{env}/config.yaml"));
        let text = std::fs::read_to_string(&file).expect("read");
        std::fs::write(&file, text.replace("greeting: hello", "greeting: moved")).expect("write");
    }
    git(&repo, &["commit", "-qam", "greet the moved"]);
    git(&repo, &["push", "-q", "../served/gitops.git", "HEAD:main"]);
    for env in &envs {
        let ns = format!("node-{env}");
        within(
            &format!("{env} gets the new commit"),
            &kubeconfig,
            || async { greeting(&admin, &ns).await.as_deref() == Some("moved") },
        )
        .await;
    }
}

fn docker_inspect(args: &[&str]) -> String {
    let out = Command::new("docker")
        .args(args)
        .output()
        .expect("docker runs");
    assert!(
        out.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8")
}
