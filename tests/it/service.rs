//! `stagehand serve` running a pipeline end to end: a real Git remote served over HTTP by
//! `git http-backend`, the real kube-apiserver, the service as its own process driven over gRPC
//! and its webhook listener.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Event};
use kube::api::{Api, Patch, PatchParams};
use stagehand::proto;
use stagehand::proto::environment_service_client::EnvironmentServiceClient;
use stagehand::service::webhook::WebhookSecret;
use tokio_stream::StreamExt;

use crate::support::cluster::cluster;
use crate::support::git::{Repo, bare_remote};
use crate::support::git_http::GitHttpServer;
use crate::support::reconcile::apiserver_addr;
use crate::support::{Tool, tool};

pub(crate) const SECRET: &str = "webhook-secret";

/// Runs tests/it/support/generic_client.py and returns what it prints.
pub(crate) fn generic_client(args: &[&str]) -> serde_json::Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/support/generic_client.py");
    let out = Command::new(tool(Tool::Python))
        .arg(script)
        .args(args)
        .output()
        .expect("python runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("the client prints JSON")
}

pub(crate) struct Server {
    pub(crate) child: Child,
    pub(crate) grpc: String,
    pub(crate) http: SocketAddr,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_server(pipeline: &Path, state: &Path, secret_file: &Path) -> Server {
    start_server_with(pipeline, state, secret_file, &[])
}

pub(crate) fn start_server_with(
    pipeline: &Path,
    state: &Path,
    secret_file: &Path,
    extra: &[&str],
) -> Server {
    start_server_env(pipeline, state, secret_file, extra, &[])
}

/// As [`start_server_with`], with extra environment variables for the server.
pub(crate) fn start_server_env(
    pipeline: &Path,
    state: &Path,
    secret_file: &Path,
    extra: &[&str],
    env: &[(&str, &Path)],
) -> Server {
    start_server_at(pipeline, state, secret_file, "127.0.0.1:0", extra, env)
}

/// As [`start_server_env`], with the HTTP listener on `http` (for senders that must know the
/// address before the server starts, such as a registry's notification endpoint).
pub(crate) fn start_server_at(
    pipeline: &Path,
    state: &Path,
    secret_file: &Path,
    http: &str,
    extra: &[&str],
    env: &[(&str, &Path)],
) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_stagehand"))
        .args(["serve", "--listen", "127.0.0.1:0", "--http-listen", http])
        .arg("--pipeline")
        .arg(pipeline)
        .arg("--state-dir")
        .arg(state)
        .arg("--webhook-secret-file")
        .arg(secret_file)
        .args(["--log-level", "debug"])
        .args(extra)
        .env("KUBECONFIG", &cluster().kubeconfig)
        .env_remove("SOPS_AGE_KEY")
        .env_remove("SOPS_AGE_KEY_FILE")
        .env_remove("SOPS_AGE_KEY_CMD")
        .env("XDG_CONFIG_HOME", state.join("no-config"))
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(state.join("server.log")).expect("log file"))
        .spawn()
        .expect("stagehand serve starts");
    let mut stdout = std::io::BufReader::new(child.stdout.take().expect("piped stdout"));
    let mut grpc = None;
    let mut http = None;
    while grpc.is_none() || http.is_none() {
        let mut line = String::new();
        let read = std::io::BufRead::read_line(&mut stdout, &mut line).expect("stdout readable");
        assert!(
            read > 0,
            "serve exited before listening: see {}",
            state.join("server.log").display()
        );
        if let Some(addr) = line.trim().strip_prefix("http listening on ") {
            http = Some(addr.parse().expect("an address"));
        } else if let Some(addr) = line.trim().strip_prefix("listening on ") {
            grpc = Some(format!("http://{addr}"));
        }
    }
    Server {
        child,
        grpc: grpc.expect("read above"),
        http: http.expect("read above"),
    }
}

/// Posts a webhook body with the given headers; returns the HTTP status code.
pub(crate) fn post_webhook(addr: SocketAddr, headers: &[(&str, String)], body: &[u8]) -> u16 {
    let mut stream = TcpStream::connect(addr).expect("webhook listener reachable");
    let mut request = format!(
        "POST /api/webhook HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).expect("request sent");
    stream.write_all(body).expect("body sent");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("response read");
    response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {response:?}"))
}

pub(crate) fn github_signature(body: &[u8]) -> String {
    WebhookSecret::from_file_contents(SECRET.as_bytes().to_vec())
        .expect("not empty")
        .sign(body)
}

pub(crate) fn overlay(namespace: &str) -> String {
    format!(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nnamespace: {namespace}\nresources: [app.yaml]\n"
    )
}

pub(crate) fn app(value: &str) -> String {
    format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: app\ndata:\n  value: {value:?}\n")
}

pub(crate) async fn value_in(client: &kube::Client, namespace: &str) -> Option<String> {
    Api::<ConfigMap>::namespaced(client.clone(), namespace)
        .get_opt("app")
        .await
        .expect("the apiserver answers")
        .and_then(|cm| cm.data)
        .and_then(|d| d.get("value").cloned())
}

/// Polls `check` until it holds; the bound only catches a service that never gets there.
pub(crate) async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(90);
    while !check().await {
        assert!(Instant::now() < deadline, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// One request a [`Receiver`] got: its headers (lower-case names) and body.
type Received = (Vec<(String, String)>, Vec<u8>);

/// An HTTP server on loopback that answers 200 to every request and keeps them.
struct Receiver {
    addr: SocketAddr,
    requests: std::sync::Arc<std::sync::Mutex<Vec<Received>>>,
}

impl Receiver {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("bound");
        let requests = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let kept = requests.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let mut reader = std::io::BufReader::new(stream);
                let mut headers = Vec::new();
                let mut line = String::new();
                let mut length = 0;
                while std::io::BufRead::read_line(&mut reader, &mut line).unwrap_or(0) > 0 {
                    if line.trim().is_empty() {
                        break;
                    }
                    if let Some((name, value)) = line.trim().split_once(':') {
                        let name = name.trim().to_ascii_lowercase();
                        if name == "content-length" {
                            length = value.trim().parse().unwrap_or(0);
                        }
                        headers.push((name, value.trim().to_owned()));
                    }
                    line.clear();
                }
                let mut body = vec![0; length];
                if reader.read_exact(&mut body).is_err() {
                    continue;
                }
                let _ = reader.get_mut().write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
                kept.lock().expect("not poisoned").push((headers, body));
            }
        });
        Self { addr, requests }
    }

    fn received(&self) -> Vec<Received> {
        self.requests.lock().expect("not poisoned").clone()
    }
}

/// A TCP port that accepts connections and never answers: an apiserver that hangs.
fn black_hole() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("bound");
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().flatten() {
            held.push(stream);
        }
    });
    addr
}

/// A pipeline over a real Git remote served by `git http-backend`: `failing` (its directory is
/// missing), `broken` (an apiserver that never answers), `dev`, `staging` (manual sync) and
/// `prod` (its own branch). The CLI tests in cli_api.rs use it too.
pub(crate) struct Fixture {
    _dir: tempfile::TempDir,
    work: Repo,
    pub(crate) pipeline: PathBuf,
    pub(crate) state: PathBuf,
    pub(crate) secret: PathBuf,
    pub(crate) namespaces: [String; 3],
    _http: GitHttpServer,
    notifications: Receiver,
}

impl Fixture {
    pub(crate) async fn new(client: &kube::Client) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut namespaces = Vec::new();
        for env in ["dev", "staging", "prod"] {
            namespaces.push(cluster().namespace(client, &format!("svc-{env}")).await);
        }
        let namespaces: [String; 3] = namespaces.try_into().expect("three");
        let remotes = dir.path().join("remotes");
        bare_remote(&remotes.join("shop.git"));
        let http = GitHttpServer::start(&remotes, None);

        let work = Repo::init(&dir.path().join("work"));
        work.write(&[
            (
                "environments/dev/kustomization.yaml",
                &overlay(&namespaces[0]),
            ),
            ("environments/dev/app.yaml", &app("dev-1")),
            (
                "environments/staging/kustomization.yaml",
                &overlay(&namespaces[1]),
            ),
            ("environments/staging/app.yaml", &app("staging-1")),
            (
                "environments/broken/kustomization.yaml",
                &overlay(&namespaces[0]),
            ),
            ("environments/broken/app.yaml", &app("never")),
        ]);
        work.commit("dev and staging");
        work.git(&["remote", "add", "origin", &http.url("shop.git")]);
        work.git(&["push", "-q", "origin", "main"]);
        // The branch model: prod's own branch.
        work.git(&["checkout", "-q", "-b", "env/prod"]);
        work.write(&[
            (
                "environments/prod/kustomization.yaml",
                &overlay(&namespaces[2]),
            ),
            ("environments/prod/app.yaml", &app("prod-1")),
        ]);
        work.commit("prod");
        work.git(&["push", "-q", "origin", "env/prod"]);
        work.git(&["checkout", "-q", "main"]);

        let state = dir.path().join("state");
        std::fs::create_dir_all(&state).expect("state dir");
        let secret = dir.path().join("webhook-secret");
        std::fs::write(&secret, format!("{SECRET}\n")).expect("secret file");
        // An environment whose apiserver accepts connections and never answers.
        let kubeconfig = std::fs::read_to_string(&cluster().kubeconfig).expect("kubeconfig");
        let hung = kubeconfig.replace(
            &apiserver_addr(&cluster().kubeconfig).to_string(),
            &black_hole().to_string(),
        );
        let hung_kubeconfig = dir.path().join("hung-kubeconfig");
        std::fs::write(&hung_kubeconfig, hung).expect("kubeconfig");
        let notifications = Receiver::start();
        let notify_url = dir.path().join("notify-url");
        std::fs::write(&notify_url, format!("http://{}/hook\n", notifications.addr))
            .expect("url file");
        let pipeline = dir.path().join("pipeline.yaml");
        let name = format!("svc{}", &namespaces[0][namespaces[0].len() - 6..]);
        std::fs::write(
            &pipeline,
            format!(
                "apiVersion: stagehand.dev/v1alpha1
kind: Pipeline
metadata: {{name: {name}}}
spec:
  repository: {{url: {url}, branch: main}}
  notifications:
    - {{name: chat, urlFile: {notify_url}, secretFile: {secret}, events: [healed, alert]}}
  alerts: {{failuresInARow: 2}}
  environments:
    - name: failing
      source: {{overlay: environments/missing}}
      sync: {{interval: 1h}}
    - name: broken
      source: {{overlay: environments/broken}}
      cluster: {{kubeconfig: {hung}}}
      sync: {{interval: 1h}}
    - name: dev
      source: {{overlay: environments/dev}}
      sync: {{interval: 1h}}
    - name: staging
      promotesFrom: dev
      source: {{overlay: environments/staging}}
      sync: {{interval: 1h, auto: false}}
    - name: prod
      promotesFrom: staging
      source: {{branch: env/prod, path: environments/prod}}
      sync: {{interval: 1h}}
",
                url = http.url("shop.git"),
                hung = hung_kubeconfig.display(),
                notify_url = notify_url.display(),
                secret = secret.display(),
            ),
        )
        .expect("pipeline file");
        Self {
            _dir: dir,
            work,
            pipeline,
            state,
            secret,
            namespaces,
            _http: http,
            notifications,
        }
    }

    pub(crate) fn push_dev(&self, value: &str) -> String {
        self.work
            .write(&[("environments/dev/app.yaml", &app(value))]);
        let commit = self.work.commit(&format!("dev: {value}"));
        self.work.git(&["push", "-q", "origin", "main"]);
        commit
    }
}

async fn environment(
    client: &mut EnvironmentServiceClient<tonic::transport::Channel>,
    name: &str,
) -> proto::Environment {
    client
        .get_environment(proto::GetEnvironmentRequest { name: name.into() })
        .await
        .expect("GetEnvironment answers")
        .into_inner()
}

fn status(env: &proto::Environment) -> proto::EnvironmentStatus {
    env.status.clone().expect("the service reports a status")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_applies_pushes_on_signed_webhooks_reports_drift_and_honours_manual_and_suspended_environments()
 {
    let kube = cluster().client().await;
    let fx = Fixture::new(&kube).await;
    let [dev_ns, staging_ns, prod_ns] = fx.namespaces.clone();
    let mut server = start_server(&fx.pipeline, &fx.state, &fx.secret);
    let mut api = EnvironmentServiceClient::connect(server.grpc.clone())
        .await
        .expect("gRPC reachable");

    // The first fetch applies both automatic environments, whatever the hung one does.
    eventually("dev and prod applied at start", || async {
        value_in(&kube, &dev_ns).await.as_deref() == Some("dev-1")
            && value_in(&kube, &prod_ns).await.as_deref() == Some("prod-1")
    })
    .await;
    // Manual mode: staging is out of sync and nothing of it is applied until asked.
    let staging = status(&environment(&mut api, "staging").await);
    assert!(staging.out_of_sync, "{staging:?}");
    assert!(!staging.desired_revision.is_empty());
    assert_eq!(value_in(&kube, &staging_ns).await, None);
    let synced = api
        .sync_environment(proto::SyncEnvironmentRequest {
            name: "staging".into(),
            fetch: false,
            wait: true,
        })
        .await
        .expect("SyncEnvironment answers")
        .into_inner()
        .status
        .expect("a status");
    assert_eq!(synced.reason, "succeeded", "{synced:?}");
    assert!(!synced.out_of_sync);
    assert_eq!(
        value_in(&kube, &staging_ns).await.as_deref(),
        Some("staging-1")
    );

    // A push with a badly signed webhook: refused, and nothing is fetched (the poll interval
    // is an hour).
    let before = status(&environment(&mut api, "dev").await);
    let pushed = fx.push_dev("dev-2");
    let body = br#"{"ref":"refs/heads/main"}"#;
    let forged = [("X-Hub-Signature-256", github_signature(b"another body"))];
    assert_eq!(post_webhook(server.http, &forged, body), 401);
    assert_eq!(post_webhook(server.http, &[], body), 401);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = status(&environment(&mut api, "dev").await);
    assert_eq!(
        after.fetched_time, before.fetched_time,
        "a refused webhook fetched"
    );
    assert_eq!(value_in(&kube, &dev_ns).await.as_deref(), Some("dev-1"));

    // The signed webhook gets it applied.
    let signed = [("X-Hub-Signature-256", github_signature(body))];
    assert_eq!(post_webhook(server.http, &signed, body), 202);
    eventually("dev applies the pushed commit", || async {
        value_in(&kube, &dev_ns).await.as_deref() == Some("dev-2")
    })
    .await;
    eventually("dev reports the pushed commit as applied", || {
        let mut api = api.clone();
        let pushed = pushed.clone();
        async move { status(&environment(&mut api, "dev").await).applied_revision == pushed }
    })
    .await;
    // Staging is manual: the same fetch leaves it alone (its files did not change either).
    assert_eq!(
        value_in(&kube, &staging_ns).await.as_deref(),
        Some("staging-1")
    );

    // A hand edit shows up as drift in the watch stream (and self-heal puts it back).
    let mut watch = api
        .watch_environments(proto::WatchEnvironmentsRequest {
            names: vec!["dev".into()],
        })
        .await
        .expect("WatchEnvironments answers")
        .into_inner();
    let first = watch.next().await.expect("a snapshot").expect("no error");
    assert_eq!(first.name, "dev");
    Api::<ConfigMap>::namespaced(kube.clone(), &dev_ns)
        .patch(
            "app",
            &PatchParams::apply("a-person").force(),
            &Patch::Apply(serde_json::json!({
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "app"}, "data": {"value": "by hand"}
            })),
        )
        .await
        .expect("hand edit");
    api.sync_environment(proto::SyncEnvironmentRequest {
        name: "dev".into(),
        fetch: false,
        wait: false,
    })
    .await
    .expect("SyncEnvironment answers");
    let drifted = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(update) = watch.next().await {
            let update = update.expect("no stream error");
            let drift: Vec<_> = status(&update)
                .objects
                .into_iter()
                .filter(|o| !o.drifted_fields.is_empty())
                .collect();
            if !drift.is_empty() {
                return drift;
            }
        }
        panic!("the watch stream ended");
    })
    .await
    .expect("drift reaches the watch stream");
    assert_eq!(drifted[0].object.as_ref().expect("object").name, "app");
    assert!(
        drifted[0]
            .drifted_fields
            .iter()
            .any(|f| f.contains("value")),
        "{drifted:?}"
    );

    // A suspended environment ignores new commits, and applies them when resumed.
    let suspended = api
        .suspend_environment(proto::SuspendEnvironmentRequest {
            name: "dev".into(),
            reason: "release freeze".into(),
        })
        .await
        .expect("SuspendEnvironment answers")
        .into_inner();
    eventually("dev reports suspended", || {
        let mut api = api.clone();
        async move { status(&environment(&mut api, "dev").await).suspended }
    })
    .await;
    let refused = api
        .sync_environment(proto::SyncEnvironmentRequest {
            name: "dev".into(),
            fetch: false,
            wait: true,
        })
        .await
        .expect_err("a suspended environment does not sync");
    assert_eq!(
        refused.code(),
        tonic::Code::FailedPrecondition,
        "{refused:?}"
    );
    assert_eq!(suspended.name, "dev");

    // Killed with SIGKILL and started again, the service still holds dev suspended and answers
    // its applied revision at once, before any pass.
    server.child.kill().expect("SIGKILL");
    server.child.wait().expect("the server is gone");
    server = start_server(&fx.pipeline, &fx.state, &fx.secret);
    api = EnvironmentServiceClient::connect(server.grpc.clone())
        .await
        .expect("gRPC reachable again");
    let restarted = environment(&mut api, "dev").await;
    let restarted = status(&restarted);
    assert!(restarted.suspended, "{restarted:?}");
    assert_eq!(restarted.applied_revision, pushed, "{restarted:?}");
    assert_eq!(restarted.passes, 0, "{restarted:?}");
    let refused = api
        .sync_environment(proto::SyncEnvironmentRequest {
            name: "dev".into(),
            fetch: false,
            wait: true,
        })
        .await
        .expect_err("still suspended after the restart");
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    assert_eq!(post_webhook(server.http, &forged, body), 401);

    let third = fx.push_dev("dev-3");
    assert_eq!(post_webhook(server.http, &signed, body), 202);
    eventually("the suspended environment sees the new revision", || {
        let mut api = api.clone();
        let third = third.clone();
        async move { status(&environment(&mut api, "dev").await).desired_revision == third }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Self-heal put the hand edit back before the suspension; the new commit waits.
    assert_eq!(value_in(&kube, &dev_ns).await.as_deref(), Some("dev-2"));
    api.resume_environment(proto::ResumeEnvironmentRequest { name: "dev".into() })
        .await
        .expect("ResumeEnvironment answers");
    eventually("dev applies the commit made while suspended", || async {
        value_in(&kube, &dev_ns).await.as_deref() == Some("dev-3")
    })
    .await;

    // All along, the environment whose apiserver hangs has not finished a pass.
    let broken = status(&environment(&mut api, "broken").await);
    assert_eq!(broken.passes, 0, "{broken:?}");

    // Notifications: the heal, and the alert of the environment that fails every pass, each
    // signed with the secret.
    let failing = status(&environment(&mut api, "failing").await);
    eventually("the failing environment raises an alert", || {
        let mut api = api.clone();
        async move {
            !status(&environment(&mut api, "failing").await)
                .alerts
                .is_empty()
        }
    })
    .await;
    assert_eq!(failing.reason, "source_failed", "{failing:?}");
    eventually("the heal and the alert are notified", || async {
        let events: Vec<String> = fx
            .notifications
            .received()
            .iter()
            .map(|(_, body)| {
                let doc: serde_json::Value = serde_json::from_slice(body).expect("JSON");
                format!(
                    "{}/{}",
                    doc["environment"].as_str().unwrap_or(""),
                    doc["event"].as_str().unwrap_or("")
                )
            })
            .collect();
        events.contains(&"dev/healed".to_owned()) && events.contains(&"failing/alert".to_owned())
    })
    .await;
    for (headers, body) in fx.notifications.received() {
        let signature = headers
            .iter()
            .find(|(name, _)| name == "x-stagehand-signature")
            .map(|(_, value)| value.clone())
            .expect("every notification is signed");
        assert_eq!(signature, github_signature(&body));
        let doc: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
        assert!(
            humantime::parse_rfc3339(doc["time"].as_str().expect("a time")).is_ok(),
            "{doc}"
        );
    }

    // A client with no code generated from our protos: reflection only.
    let grpc_target = server.grpc.trim_start_matches("http://").to_owned();
    let got = generic_client(&[
        &grpc_target,
        "call",
        "stagehand.v1.EnvironmentService/GetEnvironment",
        r#"{"name": "dev"}"#,
    ]);
    assert_eq!(
        got["status"]["appliedRevision"],
        serde_json::json!(third),
        "{got}"
    );
    let watched = generic_client(&[
        &grpc_target,
        "stream",
        "stagehand.v1.EnvironmentService/WatchEnvironments",
        r#"{"names": ["dev", "prod"]}"#,
        "2",
    ]);
    let names: Vec<_> = watched
        .as_array()
        .expect("a list of messages")
        .iter()
        .map(|e| e["name"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(names, ["dev", "prod"], "{watched}");

    // /metrics, read by the Prometheus client library's own parser; its counters start with
    // the restarted process.
    let metrics = generic_client(&[&format!("http://{}/metrics", server.http), "metrics"]);
    let sample = |family: &str, labels: serde_json::Value, suffix: &str| -> f64 {
        metrics[family]
            .as_array()
            .unwrap_or_else(|| panic!("no family {family} in {metrics}"))
            .iter()
            .filter(|s| s["name"].as_str().is_some_and(|n| n.ends_with(suffix)))
            .filter(|s| {
                labels
                    .as_object()
                    .expect("labels")
                    .iter()
                    .all(|(k, v)| &s["labels"][k] == v)
            })
            .map(|s| s["value"].as_f64().expect("a number"))
            .sum()
    };
    assert_eq!(
        sample(
            "stagehand_webhook_deliveries",
            serde_json::json!({"provider": "github", "result": "accepted"}),
            "_total"
        ),
        1.0
    );
    assert_eq!(
        sample(
            "stagehand_webhook_deliveries",
            serde_json::json!({"result": "refused"}),
            "_total"
        ),
        1.0
    );
    assert!(
        sample(
            "stagehand_reconcile_duration_seconds",
            serde_json::json!({"environment": "dev", "reason": "succeeded"}),
            "_count"
        ) >= 1.0
    );
    assert!(
        sample(
            "stagehand_git_fetch_duration_seconds",
            serde_json::json!({"result": "ok"}),
            "_count"
        ) >= 2.0
    );
    assert!(
        sample(
            "stagehand_grpc_request_duration_seconds",
            serde_json::json!({"method": "/stagehand.v1.EnvironmentService/GetEnvironment", "code": "Ok"}),
            "_count"
        ) >= 1.0
    );
    assert_eq!(
        sample(
            "stagehand_grpc_request_duration_seconds",
            serde_json::json!({"method": "/stagehand.v1.EnvironmentService/SyncEnvironment", "code": "FailedPrecondition"}),
            "_count"
        ),
        1.0
    );

    // The pipeline file is read again when it changes: an invalid version is refused with its
    // error and the last valid one keeps running; a valid one replaces it.
    let valid = std::fs::read_to_string(&fx.pipeline).expect("pipeline file");
    std::fs::write(
        &fx.pipeline,
        valid.replace("kind: Pipeline", "kind: Pipelin"),
    )
    .expect("write");
    eventually("the invalid pipeline file is refused", || {
        let mut api = api.clone();
        async move {
            let list = api
                .list_environments(proto::ListEnvironmentsRequest {})
                .await
                .expect("ListEnvironments answers")
                .into_inner();
            list.rejected_pipeline.contains("kind") && list.environments.len() == 5
        }
    })
    .await;
    let without_failing = valid.replace(
        "    - name: failing\n      source: {overlay: environments/missing}\n      sync: {interval: 1h}\n",
        "",
    );
    assert_ne!(without_failing, valid);
    std::fs::write(&fx.pipeline, without_failing).expect("write");
    eventually("the new pipeline file runs", || {
        let mut api = api.clone();
        async move {
            let list = api
                .list_environments(proto::ListEnvironmentsRequest {})
                .await
                .expect("ListEnvironments answers")
                .into_inner();
            list.rejected_pipeline.is_empty()
                && list.environments.iter().all(|e| e.name != "failing")
        }
    })
    .await;
    eventually("dev runs again under the new pipeline file", || {
        let mut api = api.clone();
        let third = third.clone();
        async move { status(&environment(&mut api, "dev").await).applied_revision == third }
    })
    .await;

    // Unknown environments are named.
    let missing = api
        .get_environment(proto::GetEnvironmentRequest { name: "qa".into() })
        .await
        .expect_err("no such environment");
    assert_eq!(missing.code(), tonic::Code::NotFound);
    assert!(missing.message().contains("\"qa\""), "{missing:?}");
}

impl Fixture {
    /// Commits `text` as deploy/pipeline.yaml on main and pushes it; returns the commit.
    fn push_pipeline(&self, text: &str, message: &str) -> String {
        self.work.write(&[("deploy/pipeline.yaml", text)]);
        let commit = self.work.commit(message);
        self.work.git(&["push", "-q", "origin", "main"]);
        commit
    }
}

async fn list(
    api: &mut EnvironmentServiceClient<tonic::transport::Channel>,
) -> proto::ListEnvironmentsResponse {
    api.list_environments(proto::ListEnvironmentsRequest {})
        .await
        .expect("ListEnvironments answers")
        .into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_file_kept_in_the_repository_is_followed_as_its_commits_are_fetched() {
    let kube = cluster().client().await;
    let fx = Fixture::new(&kube).await;
    let dev_ns = fx.namespaces[0].clone();
    // The file on disk starts the service, names its own copy in the repository, and lets that
    // copy change which environments there are.
    let on_disk = std::fs::read_to_string(&fx.pipeline)
        .expect("pipeline file")
        .replace(
            "branch: main}",
            "branch: main, pipelinePath: deploy/pipeline.yaml, inRepository: {mayChange: [environments]}}",
        );
    std::fs::write(&fx.pipeline, &on_disk).expect("write");
    fx.push_pipeline(&on_disk, "the pipeline itself");
    let server = start_server(&fx.pipeline, &fx.state, &fx.secret);
    let mut api = EnvironmentServiceClient::connect(server.grpc.clone())
        .await
        .expect("gRPC reachable");
    eventually("dev applied at start", || async {
        value_in(&kube, &dev_ns).await.as_deref() == Some("dev-1")
    })
    .await;
    // The environment failing every pass raises an alert: a Warning Event about its inventory
    // ConfigMap in its cluster.
    let pipeline_name = format!("svc{}", &dev_ns[dev_ns.len() - 6..]);
    eventually(
        "the alert is an Event in the failing environment's cluster",
        || {
            let kube = kube.clone();
            let suffix = format!(".{pipeline_name}.failing");
            async move {
                Api::<Event>::namespaced(kube, "stagehand-system")
                    .list(&Default::default())
                    .await
                    .expect("events listed")
                    .items
                    .iter()
                    .any(|e| {
                        e.reason.as_deref() == Some("AlertRaised")
                            && e.type_.as_deref() == Some("Warning")
                            && e.message
                                .as_deref()
                                .is_some_and(|m| m.contains("passes failed in a row"))
                            && e.involved_object.kind.as_deref() == Some("ConfigMap")
                            && e.involved_object.name.as_deref().is_some_and(|n| {
                                n.starts_with("stagehand-inventory-") && n.ends_with(&suffix)
                            })
                    })
            }
        },
    )
    .await;
    let body = br#"{"ref":"refs/heads/main"}"#;
    let signed = [("X-Hub-Signature-256", github_signature(body))];

    // A commit that drops an environment from the file in the repository: fetched (the poll
    // interval is an hour), read and run, the file on disk left as it was.
    let without_failing = on_disk.replace(
        "    - name: failing\n      source: {overlay: environments/missing}\n      sync: {interval: 1h}\n",
        "",
    );
    assert_ne!(without_failing, on_disk);
    fx.push_pipeline(&without_failing, "drop the failing environment");
    assert_eq!(post_webhook(server.http, &signed, body), 202);
    eventually("the committed pipeline runs", || {
        let mut api = api.clone();
        async move {
            let list = list(&mut api).await;
            list.rejected_pipeline.is_empty()
                && list.environments.len() == 4
                && list.environments.iter().all(|e| e.name != "failing")
        }
    })
    .await;
    assert_eq!(
        std::fs::read_to_string(&fx.pipeline).expect("pipeline file"),
        on_disk
    );

    // An invalid version committed: refused with its error naming the file and the commit, and
    // the last valid version keeps running — it applies the next change of dev.
    let invalid = fx.push_pipeline(
        &without_failing.replace("kind: Pipeline", "kind: Pipelin"),
        "a typo",
    );
    assert_eq!(post_webhook(server.http, &signed, body), 202);
    eventually("the invalid committed pipeline is refused", || {
        let mut api = api.clone();
        let invalid = invalid.clone();
        async move {
            let list = list(&mut api).await;
            list.rejected_pipeline.contains("kind")
                && list
                    .rejected_pipeline
                    .contains(&format!("deploy/pipeline.yaml at {invalid}"))
        }
    })
    .await;
    fx.push_dev("dev-2");
    assert_eq!(post_webhook(server.http, &signed, body), 202);
    eventually("the last valid pipeline applies dev", || async {
        value_in(&kube, &dev_ns).await.as_deref() == Some("dev-2")
    })
    .await;
    let list = list(&mut api).await;
    assert_eq!(list.environments.len(), 4, "{list:?}");
    assert!(list.rejected_pipeline.contains("kind"), "{list:?}");
}

pub(crate) fn with_token<T>(token: &str, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("ASCII"),
    );
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_tokens_file_callers_need_a_known_token_and_the_permission_and_no_token_is_logged() {
    let kube = cluster().client().await;
    let fx = Fixture::new(&kube).await;
    const VIEWER: &str = "viewer-token-5b1c0d7e";
    const OPERATOR: &str = "operator-token-9f3a21c4";
    let hash = |t: &str| stagehand::api::auth::hash_token(t);
    let tokens = fx.state.join("tokens.yaml");
    std::fs::write(
        &tokens,
        format!(
            "apiVersion: stagehand.dev/v1alpha1
kind: Tokens
identities:
  - {{name: vera, email: vera@example.test, groups: [viewers], tokenSha256: [{}]}}
  - {{name: otto, email: otto@example.test, groups: [operators], tokenSha256: [{}]}}
",
            hash(VIEWER),
            hash(OPERATOR)
        ),
    )
    .expect("tokens file");
    let text = std::fs::read_to_string(&fx.pipeline).expect("pipeline");
    std::fs::write(
        &fx.pipeline,
        text + "  access:
    - {groups: [viewers], environments: [\"*\"], permissions: [view]}
    - {groups: [operators], environments: [dev], permissions: [sync, suspend]}
",
    )
    .expect("pipeline with access rules");
    let tokens_arg = tokens.display().to_string();
    let server = start_server_with(
        &fx.pipeline,
        &fx.state,
        &fx.secret,
        &["--tokens-file", &tokens_arg],
    );
    let mut api = EnvironmentServiceClient::connect(server.grpc.clone())
        .await
        .expect("gRPC reachable");
    let get = |name: &str| proto::GetEnvironmentRequest { name: name.into() };

    let anonymous = api.get_environment(get("dev")).await.expect_err("no token");
    assert_eq!(
        anonymous.code(),
        tonic::Code::Unauthenticated,
        "{anonymous:?}"
    );
    let unknown = api
        .get_environment(with_token("not-a-token", get("dev")))
        .await
        .expect_err("unknown token");
    assert_eq!(unknown.code(), tonic::Code::Unauthenticated, "{unknown:?}");

    let seen = api
        .get_environment(with_token(VIEWER, get("prod")))
        .await
        .expect("a viewer may look");
    assert_eq!(seen.into_inner().name, "prod");
    let denied = api
        .sync_environment(with_token(
            VIEWER,
            proto::SyncEnvironmentRequest {
                name: "dev".into(),
                fetch: false,
                wait: false,
            },
        ))
        .await
        .expect_err("a viewer may not sync");
    assert_eq!(denied.code(), tonic::Code::PermissionDenied, "{denied:?}");
    assert!(
        denied.message().contains("\"sync\"") && denied.message().contains("\"dev\""),
        "{denied:?}"
    );
    let outside = api
        .suspend_environment(with_token(
            OPERATOR,
            proto::SuspendEnvironmentRequest {
                name: "prod".into(),
                reason: "not mine".into(),
            },
        ))
        .await
        .expect_err("operators hold suspend in dev only");
    // Operators may not view prod either: to them it does not exist.
    assert_eq!(outside.code(), tonic::Code::NotFound);
    let suspended = api
        .suspend_environment(with_token(
            OPERATOR,
            proto::SuspendEnvironmentRequest {
                name: "dev".into(),
                reason: "maintenance".into(),
            },
        ))
        .await
        .expect("an operator may suspend dev");
    assert_eq!(suspended.into_inner().name, "dev");

    drop(server);
    let log = std::fs::read_to_string(fx.state.join("server.log")).expect("server log");
    assert!(
        log.contains("refused an unauthenticated call"),
        "the log is captured"
    );
    for secret in [VIEWER, OPERATOR, "not-a-token"] {
        assert!(!log.contains(secret), "the log holds a token");
    }
}

#[test]
fn without_a_tokens_file_serve_refuses_an_address_other_than_loopback() {
    let dir = tempfile::tempdir().expect("temp dir");
    let pipeline = dir.path().join("pipeline.yaml");
    std::fs::write(
        &pipeline,
        "apiVersion: stagehand.dev/v1alpha1\nkind: Pipeline\nmetadata: {name: open}\nspec:\n  environments:\n    - {name: dev, source: {overlay: dev}}\n",
    )
    .expect("pipeline");
    let out = Command::new(env!("CARGO_BIN_EXE_stagehand"))
        .args(["serve", "--listen", "0.0.0.0:0", "--pipeline"])
        .arg(&pipeline)
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .output()
        .expect("stagehand runs");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--insecure") && stderr.contains("tokens file"),
        "{stderr}"
    );
}
