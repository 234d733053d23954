//! Several `stagehand serve` processes against one apiserver and one PostgreSQL database, 20
//! environments shared through Leases: each environment reconciled by exactly one replica, a
//! SIGKILLed replica's environments and leadership move to the other, a promotion in flight on
//! the killed leader ends Succeeded exactly once, and a replica cut off from the apiserver stops
//! writing before its environments move.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use stagehand::cluster::lease::Leases;
use stagehand::proto;
use stagehand::proto::promotion_service_client::PromotionServiceClient;
use stagehand::store::{PostgresStore, PostgresUrl, PromotionState, Store};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::service::{
    SECRET, Server, app, eventually, github_signature, overlay, post_webhook, start_server_env,
};
use crate::support::cluster::cluster;
use crate::support::git::{Repo, bare_remote};
use crate::support::git_http::GitHttpServer;
use crate::support::postgres::fresh_database;

/// Short, so that the test waits seconds rather than minutes for a Lease to expire.
const LEASE: Duration = Duration::from_secs(4);
const ENVIRONMENTS: usize = 20;

fn env_name(i: usize) -> String {
    format!("e{i:02}")
}

/// The fault injector of this test: a TCP proxy between one replica and the apiserver. `cut`
/// closes every connection through it and refuses new ones, as a network partition would;
/// `heal` lets connections through again.
struct FaultInjector {
    addr: SocketAddr,
    cut: Arc<AtomicBool>,
    connections: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl FaultInjector {
    async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("bound");
        let cut = Arc::new(AtomicBool::new(false));
        let connections: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let accept = tokio::spawn({
            let cut = cut.clone();
            let connections = connections.clone();
            async move {
                while let Ok((mut inbound, _)) = listener.accept().await {
                    if cut.load(Ordering::SeqCst) {
                        drop(inbound);
                        continue;
                    }
                    let task = tokio::spawn(async move {
                        if let Ok(mut outbound) = TcpStream::connect(upstream).await {
                            let _ =
                                tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        }
                    });
                    connections.lock().expect("not poisoned").push(task);
                }
            }
        });
        Self {
            addr,
            cut,
            connections,
            accept,
        }
    }

    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for connection in self.connections.lock().expect("not poisoned").drain(..) {
            connection.abort();
        }
    }
}

impl Drop for FaultInjector {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

/// The test cluster's kubeconfig and the `server:` it names.
fn kubeconfig_and_server() -> (String, String) {
    let text = std::fs::read_to_string(&cluster().kubeconfig).expect("kubeconfig");
    let server = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("server: "))
        .expect("the kubeconfig names its server")
        .to_owned();
    (text, server)
}

/// The test apiserver's address.
fn apiserver() -> SocketAddr {
    kubeconfig_and_server()
        .1
        .trim_start_matches("https://")
        .parse()
        .expect("the test apiserver listens on an IP address")
}

/// The test cluster's kubeconfig with its server moved to `addr` (same IP, so its certificate
/// still matches).
fn proxied_kubeconfig(dir: &Path, addr: SocketAddr) -> PathBuf {
    let (text, server) = kubeconfig_and_server();
    let path = dir.join("proxied.kubeconfig");
    std::fs::write(&path, text.replace(&server, &format!("https://{addr}")))
        .expect("write kubeconfig");
    path
}

struct Fixture {
    dir: tempfile::TempDir,
    work: Repo,
    pipeline: PathBuf,
    pipeline_name: String,
    database: String,
    lease_namespace: String,
    namespaces: BTreeMap<String, String>,
    leases: Leases,
    store: PostgresStore,
    _http: GitHttpServer,
}

impl Fixture {
    async fn new(kube: &kube::Client) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let remotes = dir.path().join("remotes");
        bare_remote(&remotes.join("shop.git"));
        let http = GitHttpServer::start(&remotes, None);
        let work = Repo::init(&dir.path().join("work"));
        let mut environments = String::new();
        let mut namespaces = BTreeMap::new();
        for i in 0..ENVIRONMENTS {
            let env = env_name(i);
            let namespace = cluster().namespace(kube, &format!("rp-{env}")).await;
            namespaces.insert(env.clone(), namespace.clone());
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
            // Every environment but the first is promoted from it. A sync interval of an hour
            // means that nothing is fetched but at start and on a webhook or a promotion.
            environments.push_str(&format!(
                "    - name: {env}\n      source: {{overlay: environments/{env}}}\n      sync: {{interval: 1h}}\n"
            ));
            if i > 0 {
                environments
                    .push_str("      promotesFrom: e00\n      promote: {files: [app.yaml]}\n");
            }
        }
        work.commit("twenty environments");
        work.git(&["remote", "add", "origin", &http.url("shop.git")]);
        work.git(&["push", "-q", "origin", "main"]);
        let lease_namespace = cluster().namespace(kube, "rp-leases").await;
        let pipeline_name = format!("rp{}", &lease_namespace[lease_namespace.len() - 6..]);
        let pipeline = dir.path().join("pipeline.yaml");
        std::fs::write(
            &pipeline,
            format!(
                "apiVersion: stagehand.dev/v1alpha1\nkind: Pipeline\nmetadata: {{name: {pipeline_name}}}\nspec:\n  repository: {{url: {}, branch: main}}\n  environments:\n{environments}",
                http.url("shop.git")
            ),
        )
        .expect("pipeline file");
        std::fs::write(dir.path().join("webhook-secret"), format!("{SECRET}\n"))
            .expect("secret file");
        let database = fresh_database("replicas").await;
        let store = PostgresStore::connect(&PostgresUrl::parse(&database).expect("a URL"))
            .await
            .expect("the test database opens");
        Self {
            leases: Leases::new(kube.clone(), &lease_namespace),
            dir,
            work,
            pipeline,
            pipeline_name,
            database,
            lease_namespace,
            namespaces,
            store,
            _http: http,
        }
    }

    /// Starts replica `id`, through `kubeconfig` when given.
    fn start(&self, id: &str, kubeconfig: Option<&Path>) -> Server {
        let state = self.dir.path().join(id);
        std::fs::create_dir_all(&state).expect("state dir");
        let duration = format!("{}s", LEASE.as_secs());
        let mut env: Vec<(&str, &Path)> = Vec::new();
        if let Some(kubeconfig) = kubeconfig {
            env.push(("KUBECONFIG", kubeconfig));
        }
        start_server_env(
            &self.pipeline,
            &state,
            &self.dir.path().join("webhook-secret"),
            &[
                "--lease-namespace",
                &self.lease_namespace,
                "--replica-id",
                id,
                "--lease-duration",
                &duration,
                "--database-url",
                &self.database,
            ],
            &env,
        )
    }

    /// Per environment, the replica holding its Lease.
    async fn holders(&self) -> BTreeMap<String, Option<String>> {
        self.leases
            .list("stagehand.dev/role=environment")
            .await
            .expect("list Leases")
            .into_iter()
            .filter_map(|lease| {
                let env = lease
                    .annotations
                    .get(stagehand::shard::names::ENVIRONMENT_ANNOTATION)?
                    .clone();
                Some((env, lease.holder))
            })
            .collect()
    }

    async fn held_by(&self, replica: &str) -> BTreeSet<String> {
        self.holders()
            .await
            .into_iter()
            .filter(|(_, holder)| holder.as_deref() == Some(replica))
            .map(|(env, _)| env)
            .collect()
    }

    async fn leader(&self) -> Option<String> {
        self.leases
            .get(&stagehand::shard::names::leader(&self.pipeline_name))
            .await
            .expect("get the leader Lease")
            .and_then(|lease| lease.holder)
    }

    /// Per environment, the replica that saved its last status and when its pass started.
    async fn saved(&self) -> BTreeMap<String, (String, SystemTime)> {
        self.store
            .environments()
            .await
            .expect("the store answers")
            .into_iter()
            .filter_map(|record| {
                let status = record.status?;
                let replica = status.get("replica")?.as_str()?.to_owned();
                let started =
                    humantime::parse_rfc3339_weak(status.get("lastSyncTime")?.as_str()?).ok()?;
                Some((record.name, (replica, started)))
            })
            .collect()
    }

    /// Whether every environment of `envs` is held by `replica` and had a pass by it that
    /// started after `since`.
    async fn moved(&self, envs: &BTreeSet<String>, replica: &str, since: SystemTime) -> bool {
        let holders = self.holders().await;
        let saved = self.saved().await;
        envs.iter().all(|env| {
            holders.get(env).cloned().flatten().as_deref() == Some(replica)
                && saved
                    .get(env)
                    .is_some_and(|(by, started)| by == replica && *started >= since)
        })
    }

    fn commits_of(&self, id: &str) -> Vec<String> {
        self.work.git(&["fetch", "-q", "origin"]);
        self.work
            .git(&[
                "log",
                "origin/main",
                "--format=%H",
                &format!("--grep=^Stagehand-Promotion: {id}$"),
            ])
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

/// The passes `http` (a replica's HTTP listener) counted, per environment.
async fn passes(http: SocketAddr) -> BTreeMap<String, u64> {
    let text = tokio::task::spawn_blocking(move || {
        use std::io::{Read as _, Write as _};
        let mut stream = std::net::TcpStream::connect(http).expect("metrics reachable");
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .expect("request sent");
        let mut text = String::new();
        stream.read_to_string(&mut text).expect("response read");
        text
    })
    .await
    .expect("the metrics request ran");
    let mut counted = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("stagehand_reconcile_passes_total{") else {
            continue;
        };
        let Some(env) = rest
            .split(',')
            .find_map(|label| label.strip_prefix("environment=\""))
            .and_then(|v| v.split('"').next())
        else {
            continue;
        };
        let count: u64 = line
            .rsplit(' ')
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        *counted.entry(env.to_owned()).or_default() += count;
    }
    counted
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_the_environments_and_take_over_from_a_killed_or_cut_off_one() {
    let kube = cluster().client().await;
    let fx = Fixture::new(&kube).await;
    let all: BTreeSet<String> = (0..ENVIRONMENTS).map(env_name).collect();

    // A starts alone and leads; B joins and takes its share.
    let mut a = fx.start("replica-a", None);
    eventually("replica-a leads", || async {
        fx.leader().await.as_deref() == Some("replica-a")
    })
    .await;
    let b = fx.start("replica-b", None);
    eventually("the environments are spread over both replicas", || async {
        let holders = fx.holders().await;
        holders.len() == ENVIRONMENTS
            && holders.values().all(Option::is_some)
            && !fx.held_by("replica-b").await.is_empty()
            && !fx.held_by("replica-a").await.is_empty()
    })
    .await;
    // Rendezvous hashing settles in a few rounds: wait until it stops moving.
    let mut last = fx.holders().await;
    loop {
        tokio::time::sleep(LEASE).await;
        let now = fx.holders().await;
        if now == last && now.values().all(Option::is_some) {
            break;
        }
        last = now;
    }
    let on_a = fx.held_by("replica-a").await;
    let on_b = fx.held_by("replica-b").await;
    eprintln!("replica-a holds {on_a:?}, replica-b holds {on_b:?}");
    assert_eq!(&on_a | &on_b, all);
    assert!(on_a.len() >= 5 && on_b.len() >= 5, "roughly spread");
    eventually("every environment ran a pass by its holder", || async {
        let saved = fx.saved().await;
        let holders = fx.holders().await;
        all.iter().all(|env| {
            saved.get(env).map(|(by, _)| by.clone()) == holders.get(env).cloned().flatten()
        })
    })
    .await;

    // A commit to every environment and a webhook to each replica: both fetch it, and each
    // environment's pass runs on its holder alone.
    let before = (passes(a.http).await, passes(b.http).await);
    for env in &all {
        fx.work.write(&[(
            &format!("environments/{env}/app.yaml"),
            &app(&format!("{env}-2")),
        )]);
    }
    fx.work.commit("every environment moves to 2");
    fx.work.git(&["push", "-q", "origin", "main"]);
    let body = br#"{"ref":"refs/heads/main"}"#;
    let signed = [("X-Hub-Signature-256", github_signature(body))];
    for http in [a.http, b.http] {
        let signed = signed.clone();
        let status = tokio::task::spawn_blocking(move || post_webhook(http, &signed, body))
            .await
            .expect("webhook sent");
        assert_eq!(status, 202);
    }
    eventually("every environment ran a pass at the new commit", || async {
        let (on_a_now, on_b_now) = (passes(a.http).await, passes(b.http).await);
        all.iter().all(|env| {
            on_a_now.get(env) != before.0.get(env) || on_b_now.get(env) != before.1.get(env)
        })
    })
    .await;
    let after = (passes(a.http).await, passes(b.http).await);
    for env in &all {
        let by_a = after.0.get(env) != before.0.get(env);
        let by_b = after.1.get(env) != before.1.get(env);
        assert!(
            by_a != by_b,
            "{env}: passes on replica-a {by_a}, on replica-b {by_b}"
        );
        assert_eq!(
            by_a,
            on_a.contains(env),
            "{env} ran where its Lease is held"
        );
    }

    // A promotion into an environment B reconciles: requested from the leader A; B refuses it.
    let target = on_b
        .iter()
        .find(|env| env.as_str() != "e00")
        .expect("B holds an environment promoted from e00")
        .clone();
    let request = proto::RequestPromotionRequest {
        target_environment: target.clone(),
        revision: String::new(),
        reason: "release 3".into(),
        rerun: false,
    };
    fx.work
        .write(&[("environments/e00/app.yaml", &app("e00-3"))]);
    fx.work.commit("e00 moves to 3");
    fx.work.git(&["push", "-q", "origin", "main"]);
    for http in [a.http, b.http] {
        let signed = signed.clone();
        tokio::task::spawn_blocking(move || post_webhook(http, &signed, body))
            .await
            .expect("webhook sent");
    }
    eventually("e00 runs 3", || async {
        crate::service::value_in(&kube, &fx.namespaces["e00"])
            .await
            .as_deref()
            == Some("e00-3")
    })
    .await;
    let mut on_b_api = PromotionServiceClient::connect(b.grpc.clone())
        .await
        .expect("replica-b answers");
    let refused = on_b_api
        .request_promotion(request.clone())
        .await
        .expect_err("replica-b does not lead");
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert!(
        refused
            .message()
            .contains("replica replica-b is not the leader; replica replica-a drives promotions"),
        "{}",
        refused.message()
    );
    let on_a_api = PromotionServiceClient::connect(a.grpc.clone())
        .await
        .expect("replica-a answers");
    // The leader accepts it once e00 is Healthy at 3 as the store says (it reads e00's status
    // from there when replica-b reconciles it).
    let started = Instant::now();
    let id = loop {
        match on_a_api.clone().request_promotion(request.clone()).await {
            Ok(answer) => break answer.into_inner().id,
            Err(status) => {
                assert!(
                    started.elapsed() < Duration::from_secs(90),
                    "replica-a never took the promotion: {status:?}"
                );
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    };
    // B fetches only on a webhook: the promotion waits in Syncing for B to apply its commit.
    eventually(
        "the promotion is committed and waits for the target",
        || async {
            let state = fx
                .store
                .promotion(&id)
                .await
                .expect("the store answers")
                .map(|d| d.promotion.state);
            state == Some(PromotionState::Syncing)
        },
    )
    .await;

    // SIGKILL the leader: B takes over A's environments and the leadership, and finishes the
    // promotion.
    let killed_at = (Instant::now(), SystemTime::now());
    a.child.kill().expect("SIGKILL replica-a");
    a.child.wait().expect("replica-a is gone");
    eventually("replica-a's environments moved to replica-b", || async {
        fx.moved(&on_a, "replica-b", killed_at.1).await
    })
    .await;
    let moved_after = killed_at.0.elapsed();
    eprintln!(
        "after SIGKILL, replica-a's {} environments were held and reconciled by replica-b within {moved_after:?} (lease duration {LEASE:?})",
        on_a.len()
    );
    eventually("replica-b leads", || async {
        fx.leader().await.as_deref() == Some("replica-b")
    })
    .await;
    eventually("the promotion succeeded", || async {
        fx.store
            .promotion(&id)
            .await
            .expect("the store answers")
            .is_some_and(|d| d.promotion.state == PromotionState::Succeeded)
    })
    .await;
    let detail = fx
        .store
        .promotion(&id)
        .await
        .expect("the store answers")
        .expect("the promotion");
    let succeeded = detail
        .transitions
        .iter()
        .filter(|t| t.to == PromotionState::Succeeded)
        .count();
    assert_eq!(
        succeeded, 1,
        "one Succeeded transition: {:?}",
        detail.transitions
    );
    assert_eq!(
        fx.commits_of(&id),
        [detail.promotion.commit.clone().expect("a commit")],
        "one promotion commit in Git"
    );

    // C joins through the fault injector and takes its share from B.
    let proxy_dir = tempfile::tempdir().expect("temp dir");
    let injector = FaultInjector::start(apiserver()).await;
    let kubeconfig = proxied_kubeconfig(proxy_dir.path(), injector.addr);
    let c = fx.start("replica-c", Some(&kubeconfig));
    eventually("replica-c holds its share and reconciled it", || async {
        let on_c = fx.held_by("replica-c").await;
        let saved = fx.saved().await;
        !on_c.is_empty()
            && on_c
                .iter()
                .all(|env| saved.get(env).is_some_and(|(by, _)| by == "replica-c"))
    })
    .await;
    let mut on_c = fx.held_by("replica-c").await;
    loop {
        tokio::time::sleep(LEASE).await;
        let now = fx.held_by("replica-c").await;
        if now == on_c {
            break;
        }
        on_c = now;
    }

    // Cut C off the apiserver: its passes fail from then on, and it must stop recording them
    // once its claims lapse, before B takes its environments over.
    let cut_at = (Instant::now(), SystemTime::now());
    injector.cut();
    let since = SystemTime::now();
    eventually("replica-c's environments moved to replica-b", || async {
        fx.moved(&on_c, "replica-b", since).await
    })
    .await;
    eprintln!(
        "after the cut, replica-c's {} environments were held and reconciled by replica-b within {:?} (lease duration {LEASE:?})",
        on_c.len(),
        cut_at.0.elapsed()
    );
    // Give a replica that kept writing the time to show it.
    tokio::time::sleep(LEASE).await;
    let deadline = cut_at.1 + LEASE;
    for env in &on_c {
        let history = fx.store.sync_history(env, 100).await.expect("history");
        // B reaches the apiserver: only C, cut off, records failed passes.
        let late: Vec<_> = history
            .iter()
            .filter(|r| r.run.result != "succeeded" && r.run.finished_at > deadline)
            .collect();
        assert!(
            late.is_empty(),
            "{env}: replica-c recorded passes after its Leases lapsed: {late:?}"
        );
    }
    drop(c);
    drop(b);
}
