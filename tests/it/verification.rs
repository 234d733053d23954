//! Verification end to end: `stagehand serve` as its own process, the real kube-apiserver, a
//! real Prometheus (Debian's) scraping a small exporter this test runs, and an HTTP endpoint of
//! the same exporter. The exporter answers from what the cluster runs: an environment whose
//! ConfigMap value starts with `bad` has an error ratio of 0.5 and reports itself degraded,
//! as a broken release would; an outage switch makes one environment degrade with no release.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use stagehand::proto;
use stagehand::proto::environment_service_client::EnvironmentServiceClient;
use stagehand::proto::promotion_service_client::PromotionServiceClient;
use tonic::Code;
use tonic::transport::Channel;

use crate::promotions::{ALICE, until_healthy};
use crate::service::{Server, app, eventually, overlay, start_server_env, with_token};
use crate::support::cluster::cluster;
use crate::support::git::{Repo, bare_remote};
use crate::support::git_http::GitHttpServer;
use crate::support::{Tool, tool};

type Promotions = PromotionServiceClient<Channel>;
type S = proto::PromotionState;

const ENVIRONMENTS: [&str; 4] = ["dev", "staging", "canary", "prod"];

/// What the exporter reads: the namespace of each environment, and the ones in an outage.
#[derive(Clone)]
struct Oracle {
    kube: kube::Client,
    /// Filled in once the fixture has made the namespaces (it needs the exporter's address).
    namespaces: Arc<Mutex<HashMap<String, String>>>,
    outage: Arc<Mutex<HashSet<String>>>,
}

impl Oracle {
    async fn bad(&self, env: &str) -> bool {
        if self.outage.lock().expect("outage set").contains(env) {
            return true;
        }
        let Some(namespace) = self
            .namespaces
            .lock()
            .expect("namespaces")
            .get(env)
            .cloned()
        else {
            return true;
        };
        let value = Api::<ConfigMap>::namespaced(self.kube.clone(), &namespace)
            .get_opt("app")
            .await
            .ok()
            .flatten()
            .and_then(|cm| cm.data)
            .and_then(|d| d.get("value").cloned())
            .unwrap_or_default();
        value.starts_with("bad")
    }
}

async fn metrics(axum::extract::State(oracle): axum::extract::State<Oracle>) -> String {
    let mut out = String::from("# TYPE error_ratio gauge\n");
    for env in ENVIRONMENTS {
        let ratio = if oracle.bad(env).await { 0.5 } else { 0.01 };
        out.push_str(&format!("error_ratio{{env=\"{env}\"}} {ratio}\n"));
    }
    out
}

async fn health(
    axum::extract::State(oracle): axum::extract::State<Oracle>,
    axum::extract::Path(env): axum::extract::Path<String>,
) -> String {
    let status = if oracle.bad(&env).await {
        "degraded"
    } else {
        "ok"
    };
    format!("{{\"status\": \"{status}\", \"environment\": \"{env}\"}}")
}

async fn serve_oracle(oracle: Oracle) -> SocketAddr {
    let app = axum::Router::new()
        .route("/metrics", axum::routing::get(metrics))
        .route("/health/{env}", axum::routing::get(health))
        .with_state(oracle);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a loopback port");
    let addr = listener.local_addr().expect("bound");
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// Debian's Prometheus on a free loopback port, scraping `target` every second.
struct Prometheus {
    child: Child,
    url: String,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

async fn start_prometheus(dir: &Path, target: SocketAddr) -> Prometheus {
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\nscrape_configs:\n  - job_name: shop\n    static_configs: [{{targets: ['{target}']}}]\n"
        ),
    )
    .expect("prometheus config");
    let port = free_port();
    let log = std::fs::File::create(dir.join("prometheus.log")).expect("log file");
    let child = Command::new(tool(Tool::Prometheus))
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("tsdb").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("prometheus starts");
    let prometheus = Prometheus {
        child,
        url: format!("http://127.0.0.1:{port}"),
    };
    let client = reqwest::Client::new();
    let query = format!(
        "{}/api/v1/query?query=error_ratio%7Benv%3D%22staging%22%7D",
        prometheus.url
    );
    eventually("prometheus has scraped the exporter", || {
        let (client, query) = (client.clone(), query.clone());
        async move {
            let Ok(answer) = client.get(&query).send().await else {
                return false;
            };
            let body = answer.text().await.unwrap_or_default();
            body.contains("\"value\"")
        }
    })
    .await;
    prometheus
}

struct Fixture {
    _dir: tempfile::TempDir,
    work: Repo,
    pipeline: PathBuf,
    state: PathBuf,
    secret: PathBuf,
    tokens: PathBuf,
    namespaces: HashMap<String, String>,
    _http: GitHttpServer,
}

impl Fixture {
    async fn new(kube: &kube::Client, prometheus: &str, oracle: SocketAddr) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let remotes = dir.path().join("remotes");
        bare_remote(&remotes.join("shop.git"));
        let http = GitHttpServer::start(&remotes, None);
        let work = Repo::init(&dir.path().join("work"));
        let mut namespaces = HashMap::new();
        for env in ENVIRONMENTS {
            let namespace = cluster().namespace(kube, &format!("vf-{env}")).await;
            work.write(&[
                (
                    &format!("environments/{env}/kustomization.yaml"),
                    &overlay(&namespace),
                ),
                (
                    &format!("environments/{env}/app.yaml"),
                    &app(&format!("{env}-1")),
                ),
            ]);
            namespaces.insert(env.to_owned(), namespace);
        }
        work.commit("four environments");
        work.git(&["remote", "add", "origin", &http.url("shop.git")]);
        work.git(&["push", "-q", "origin", "main"]);
        let state = dir.path().join("state");
        std::fs::create_dir_all(&state).expect("state dir");
        let secret = dir.path().join("webhook-secret");
        std::fs::write(&secret, "webhook-secret\n").expect("secret file");
        let tokens = dir.path().join("tokens.yaml");
        std::fs::write(
            &tokens,
            format!(
                "apiVersion: stagehand.dev/v1alpha1\nkind: Tokens\nidentities:\n  - {{name: alice, email: alice@example.test, groups: [releasers], tokenSha256: [{}]}}\n",
                stagehand::api::auth::hash_token(ALICE)
            ),
        )
        .expect("tokens file");
        let pipeline = dir.path().join("pipeline.yaml");
        let suffix = &namespaces["dev"][namespaces["dev"].len() - 6..];
        std::fs::write(
            &pipeline,
            format!(
                r#"apiVersion: stagehand.dev/v1alpha1
kind: Pipeline
metadata: {{name: vf{suffix}}}
spec:
  repository: {{url: {url}, branch: main}}
  environments:
    - name: dev
      source: {{overlay: environments/dev}}
      sync: {{interval: 1h}}
    - name: staging
      promotesFrom: dev
      source: {{overlay: environments/staging}}
      sync: {{interval: 1h}}
      promotion: {{auto: true}}
      promote: {{files: [app.yaml]}}
      verify:
        onFailure: rollback
        checks:
          - name: error-rate
            prometheus: {{url: "{prometheus}", query: 'error_ratio{{env="staging"}}', below: 0.05}}
            interval: 2s
            successes: 3
            failures: 3
            timeout: 1m
    - name: canary
      promotesFrom: dev
      source: {{overlay: environments/canary}}
      sync: {{interval: 1h}}
      promote: {{files: [app.yaml]}}
      verify:
        every: 2s
        checks:
          - name: ready
            http: {{url: "http://{oracle}/health/canary", condition: '$.status == "ok"'}}
            interval: 1s
            failures: 2
            timeout: 1m
    - name: prod
      promotesFrom: canary
      source: {{overlay: environments/prod}}
      sync: {{interval: 1h}}
      promote: {{files: [app.yaml]}}
  access:
    - {{groups: [releasers], environments: ["*"], permissions: [view, request, rollback, sync]}}
"#,
                url = http.url("shop.git"),
            ),
        )
        .expect("pipeline file");
        Self {
            _dir: dir,
            work,
            pipeline,
            state,
            secret,
            tokens,
            namespaces,
            _http: http,
        }
    }

    fn start(&self) -> Server {
        let tokens = self.tokens.display().to_string();
        start_server_env(
            &self.pipeline,
            &self.state,
            &self.secret,
            &["--tokens-file", &tokens],
            &[],
        )
    }

    async fn value(&self, kube: &kube::Client, env: &str) -> Option<String> {
        crate::service::value_in(kube, &self.namespaces[env]).await
    }

    /// Commits `value` into dev and pushes it; returns the commit.
    fn push_dev(&self, value: &str) -> String {
        self.work.git(&["pull", "-q", "--rebase", "origin", "main"]);
        self.work
            .write(&[("environments/dev/app.yaml", &app(value))]);
        let commit = self.work.commit(&format!("dev: {value}"));
        self.work.git(&["push", "-q", "origin", "main"]);
        commit
    }

    fn commits_of(&self, id: &str) -> Vec<String> {
        self.work.git(&["fetch", "-q", "origin"]);
        let out = self.work.git(&[
            "log",
            "origin/main",
            "--format=%H",
            &format!("--grep=^Stagehand-Promotion: {id}$"),
        ]);
        out.lines().map(str::to_owned).collect()
    }
}

async fn get(api: &mut Promotions, id: &str) -> proto::Promotion {
    api.get_promotion(with_token(
        ALICE,
        proto::GetPromotionRequest { id: id.into() },
    ))
    .await
    .expect("GetPromotion answers")
    .into_inner()
}

/// Waits until promotion `id` has ended; returns it.
async fn ended(api: &Promotions, id: &str) -> proto::Promotion {
    let found = Arc::new(Mutex::new(None));
    eventually(&format!("promotion {id} ends"), || {
        let (mut api, found) = (api.clone(), found.clone());
        async move {
            let p = get(&mut api, id).await;
            let done = matches!(
                S::try_from(p.state).expect("a known state"),
                S::Succeeded | S::Failed | S::Rejected | S::Aborted
            );
            *found.lock().expect("slot") = Some(p);
            done
        }
    })
    .await;
    found.lock().expect("slot").take().expect("seen")
}

async fn request(
    api: &mut Promotions,
    target: &str,
    revision: &str,
) -> Result<proto::Promotion, tonic::Status> {
    api.request_promotion(with_token(
        ALICE,
        proto::RequestPromotionRequest {
            target_environment: target.into(),
            revision: revision.into(),
            reason: "release".into(),
            rerun: false,
        },
    ))
    .await
    .map(tonic::Response::into_inner)
}

async fn promotions_into(api: &mut Promotions, env: &str) -> Vec<proto::Promotion> {
    api.list_promotions(with_token(
        ALICE,
        proto::ListPromotionsRequest {
            environment: env.into(),
            ..Default::default()
        },
    ))
    .await
    .expect("listed")
    .into_inner()
    .promotions
}

async fn sync_dev(envs: &mut EnvironmentServiceClient<Channel>) {
    envs.sync_environment(with_token(
        ALICE,
        proto::SyncEnvironmentRequest {
            name: "dev".into(),
            fetch: true,
            wait: true,
        },
    ))
    .await
    .expect("dev syncs");
}

fn state(p: &proto::Promotion) -> S {
    S::try_from(p.state).expect("a known state")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_verification_rolls_back_holds_auto_promotion_and_blocks_promotions_out() {
    let kube = cluster().client().await;
    let scratch = tempfile::tempdir().expect("temp dir");
    let oracle = Oracle {
        kube: kube.clone(),
        namespaces: Arc::default(),
        outage: Arc::default(),
    };
    let oracle_addr = serve_oracle(oracle.clone()).await;
    let prometheus = start_prometheus(scratch.path(), oracle_addr).await;
    let fx = Fixture::new(&kube, &prometheus.url, oracle_addr).await;
    *oracle.namespaces.lock().expect("namespaces") = fx.namespaces.clone();

    let server = fx.start();
    let channel = Channel::from_shared(server.grpc.clone())
        .expect("URL")
        .connect()
        .await
        .expect("gRPC reachable");
    let mut api = PromotionServiceClient::new(channel.clone());
    let mut envs = EnvironmentServiceClient::new(channel);
    let first = until_healthy(&server.grpc, ALICE, "dev").await;

    // staging is promoted from dev by itself, and its error rate stays below 5%: Succeeded,
    // with the query's value in the result.
    let api_seen = api.clone();
    eventually("an automatic promotion into staging", || {
        let mut api = api_seen.clone();
        async move { !promotions_into(&mut api, "staging").await.is_empty() }
    })
    .await;
    let p1 = promotions_into(&mut api_seen.clone(), "staging")
        .await
        .remove(0);
    let p1 = ended(&api, &p1.id).await;
    assert_eq!(state(&p1), S::Succeeded, "{}", p1.message);
    let check = &p1.verification[0];
    assert_eq!(
        (
            check.name.as_str(),
            check.kind.as_str(),
            check.status.as_str()
        ),
        ("error-rate", "prometheus", "passed"),
        "{check:?}"
    );
    assert_eq!(check.value, "0.01");
    assert!(check.successes >= 3, "{check:?}");
    assert!(p1.message.contains("error-rate (0.01)"), "{}", p1.message);
    assert_eq!(fx.value(&kube, "staging").await.as_deref(), Some("dev-1"));

    // canary, by request: its HTTP check sees {"status": "ok"}.
    let c1 = request(&mut api, "canary", &first)
        .await
        .expect("requested");
    let c1 = ended(&api, &c1.id).await;
    assert_eq!(state(&c1), S::Succeeded, "{}", c1.message);
    assert_eq!(c1.verification[0].kind, "http");
    assert_eq!(c1.verification[0].value, "status 200");

    // Re-verification: canary degrades with no release. An alert is raised and nothing is
    // promoted out of canary until it passes again.
    fx.value(&kube, "canary").await.expect("canary runs");
    oracle
        .outage
        .lock()
        .expect("outage")
        .insert("canary".into());
    eventually("canary's re-verification raises an alert", || {
        let mut envs = envs.clone();
        async move {
            alerts(&mut envs, "canary")
                .await
                .iter()
                .any(|a| a.contains("re-verification") && a.contains("degraded"))
        }
    })
    .await;
    let refused = request(&mut api, "prod", "").await.expect_err("blocked");
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(
        refused.message().contains("failed its re-verification"),
        "{refused:?}"
    );
    oracle.outage.lock().expect("outage").remove("canary");
    eventually("canary's alert clears", || {
        let mut envs = envs.clone();
        async move { alerts(&mut envs, "canary").await.is_empty() }
    })
    .await;
    let p = request(&mut api, "prod", "")
        .await
        .expect("no longer blocked");
    assert_eq!(state(&ended(&api, &p.id).await), S::Succeeded);

    // A bad release reaches dev; staging takes it by itself and its error rate is 50%.
    let bad = fx.push_dev("bad-2");
    sync_dev(&mut envs).await;
    eventually("staging is promoted to the bad release", || {
        let mut api = api_seen.clone();
        let bad = bad.clone();
        async move {
            promotions_into(&mut api, "staging")
                .await
                .iter()
                .any(|p| p.revision == bad)
        }
    })
    .await;
    let p2 = promotions_into(&mut api_seen.clone(), "staging")
        .await
        .into_iter()
        .find(|p| p.revision == bad)
        .expect("found above");
    let p2 = ended(&api, &p2.id).await;
    assert_eq!(state(&p2), S::Failed, "{}", p2.message);
    assert!(
        p2.message.contains("verification failed")
            && p2.message.contains("value 0.5")
            && p2.message.contains("below 0.05"),
        "{}",
        p2.message
    );
    let failed_check = &p2.verification[0];
    assert_eq!(failed_check.status, "failed");
    assert_eq!(failed_check.value, "0.5");
    assert_eq!(failed_check.failures, 3);

    // Stagehand asked for one rollback to the last verified revision, which lands in one commit
    // and passes verification; staging runs what it ran before.
    let rollback = promotions_into(&mut api_seen.clone(), "staging")
        .await
        .into_iter()
        .find(|p| p.rollback)
        .expect("an automatic rollback");
    assert_eq!(rollback.requested_by, "stagehand");
    assert!(rollback.reason.contains(&p2.id), "{}", rollback.reason);
    assert_eq!(rollback.revision, p1.commit, "the last verified revision");
    assert!(p2.message.contains(&rollback.id), "{}", p2.message);
    let rollback = ended(&api, &rollback.id).await;
    assert_eq!(state(&rollback), S::Succeeded, "{}", rollback.message);
    assert_eq!(fx.commits_of(&rollback.id).len(), 1);
    assert_eq!(fx.value(&kube, "staging").await.as_deref(), Some("dev-1"));

    // The bad release into canary, which does not roll back: Failed, canary stays on it, and
    // a promotion out of canary names the failed verification.
    let c2 = request(&mut api, "canary", &bad).await.expect("requested");
    let c2 = ended(&api, &c2.id).await;
    assert_eq!(state(&c2), S::Failed, "{}", c2.message);
    assert!(
        c2.message.contains(r#"$.status is "degraded""#),
        "{}",
        c2.message
    );
    assert_eq!(fx.value(&kube, "canary").await.as_deref(), Some("bad-2"));
    assert!(
        promotions_into(&mut api, "canary")
            .await
            .iter()
            .all(|p| !p.rollback),
        "no rollback without onFailure: rollback"
    );
    let refused = request(&mut api, "prod", "").await.expect_err("blocked");
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(
        refused
            .message()
            .contains(&format!("failed the verification of promotion {}", c2.id)),
        "{refused:?}"
    );
    // Automatic promotion into staging is held: a good release in dev does not move it.
    let good = fx.push_dev("good-3");
    sync_dev(&mut envs).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(
        promotions_into(&mut api, "staging")
            .await
            .iter()
            .all(|p| p.revision != good),
        "held"
    );
    let audit = api
        .list_audit_events(with_token(ALICE, proto::ListAuditEventsRequest::default()))
        .await
        .expect("audit")
        .into_inner()
        .events;
    let did = |actor: &str, action: &str| {
        audit
            .iter()
            .any(|e| e.actor == actor && e.action == action && e.environment == "staging")
    };
    assert!(did("stagehand", "verification_failed"), "{audit:?}");
    assert!(did("stagehand", "auto_promotion_held"), "{audit:?}");
    assert!(did("stagehand", "rolled_back"), "{audit:?}");

    drop(server);
    drop(prometheus);
}

async fn alerts(envs: &mut EnvironmentServiceClient<Channel>, name: &str) -> Vec<String> {
    envs.get_environment(with_token(
        ALICE,
        proto::GetEnvironmentRequest { name: name.into() },
    ))
    .await
    .expect("GetEnvironment answers")
    .into_inner()
    .status
    .expect("a status")
    .alerts
}
