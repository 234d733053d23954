//! Several `stagehand serve` replicas on Leases and one PostgreSQL database:
//! - moves: 20 environments over two replicas; SIGKILL one, time until every one of its
//!   environments is held by the other and has had a pass there, for several lease durations;
//! - round: 1,000 environments × 10 objects on one replica and on two, a commit touching all →
//!   every environment applied (wall time of the round), and each replica's RSS.
//!
//! `cargo bench --bench replicas [moves|round ...]` (all by default). Needs
//! `STAGEHAND_TEST_DATABASE_URL` (scripts/postgres.sh up DIR); uses `STAGEHAND_TEST_KUBECONFIG`
//! when set, else starts a private apiserver.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use stagehand::proto;
use stagehand::proto::environment_service_client::EnvironmentServiceClient;
use stagehand::service::webhook::WebhookSecret;

#[path = "support/cluster.rs"]
mod cluster;

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args([
            "-c",
            "user.name=bench",
            "-c",
            "user.email=bench@example.test",
        ])
        .args(args)
        .current_dir(dir)
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A scenario: its repository, pipeline and database.
struct Scenario {
    dir: PathBuf,
    work: PathBuf,
    pipeline: PathBuf,
    database: String,
    lease_namespace: String,
    envs: Vec<String>,
}

impl Scenario {
    async fn new(root: &Path, name: &str, envs: usize, kubeconfig: &Path) -> Self {
        let dir = root.join(name);
        let remote = dir.join("remote.git");
        std::fs::create_dir_all(&remote).expect("remote dir");
        git(&remote, &["init", "-q", "--bare", "-b", "main"]);
        let work = dir.join("work");
        std::fs::create_dir_all(&work).expect("work dir");
        git(&work, &["init", "-q", "-b", "main"]);
        git(
            &work,
            &["remote", "add", "origin", &remote.display().to_string()],
        );
        let run = format!("{:x}", std::process::id() % 0xfff);
        let envs: Vec<String> = (0..envs).map(|i| format!("b{run}-{name}-{i:04}")).collect();
        let pipeline = dir.join("pipeline.yaml");
        let mut text = format!(
            "apiVersion: stagehand.dev/v1alpha1\nkind: Pipeline\nmetadata: {{name: {name}{run}}}\nspec:\n  repository: {{url: {}, branch: main}}\n  environments:\n",
            remote.display()
        );
        for env in &envs {
            text.push_str(&format!(
                "    - name: {env}\n      source: {{overlay: envs/{env}}}\n      cluster: {{kubeconfig: {}}}\n      sync: {{interval: 1h}}\n",
                kubeconfig.display()
            ));
        }
        std::fs::write(&pipeline, text).expect("pipeline");
        let database = format!("bench_{name}_{run}");
        let admin = database_url(None);
        let (client, connection) = tokio_postgres::connect(&admin, tokio_postgres::NoTls)
            .await
            .expect("PostgreSQL answers");
        tokio::spawn(connection);
        client
            .batch_execute(&format!("CREATE DATABASE \"{database}\""))
            .await
            .expect("database created");
        let scenario = Self {
            dir,
            work,
            pipeline,
            database: database_url(Some(&database)),
            lease_namespace: format!("b{run}-{name}-leases"),
            envs,
        };
        kubectl(
            kubeconfig,
            &["create", "namespace", &scenario.lease_namespace],
        );
        scenario
    }

    /// Each environment's Namespace and `objects` ConfigMaps at `revision`; returns the commit.
    fn commit(&self, objects: usize, revision: &str) -> String {
        for env in &self.envs {
            let dir = self.work.join("envs").join(env);
            std::fs::create_dir_all(&dir).expect("env dir");
            std::fs::write(
                dir.join("kustomization.yaml"),
                format!("namespace: {env}\nresources: [objects.yaml]\n"),
            )
            .expect("kustomization");
            let mut text = format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {env}\n");
            for i in 0..objects {
                text.push_str(&format!(
                    "---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cm-{i}\ndata:\n  revision: {revision}\n"
                ));
            }
            std::fs::write(dir.join("objects.yaml"), text).expect("objects");
        }
        git(&self.work, &["add", "-A"]);
        git(&self.work, &["commit", "-q", "-m", revision]);
        git(&self.work, &["push", "-q", "origin", "main"]);
        git(&self.work, &["rev-parse", "HEAD"])
    }

    fn start(&self, replica: &str, leases: Option<Duration>, kubeconfig: &Path) -> Server {
        let state = self.dir.join(replica);
        std::fs::create_dir_all(&state).expect("state");
        let secret = self.dir.join("webhook-secret");
        std::fs::write(&secret, "bench-secret\n").expect("secret");
        let mut command = Command::new(env!("CARGO_BIN_EXE_stagehand"));
        command
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--http-listen",
                "127.0.0.1:0",
            ])
            .arg("--pipeline")
            .arg(&self.pipeline)
            .arg("--state-dir")
            .arg(&state)
            .arg("--webhook-secret-file")
            .arg(&secret)
            .args(["--database-url", &self.database, "--log-level", "warn"])
            .env("KUBECONFIG", kubeconfig);
        if let Some(duration) = leases {
            command
                .args([
                    "--lease-namespace",
                    &self.lease_namespace,
                    "--replica-id",
                    replica,
                ])
                .args(["--lease-duration", &format!("{}s", duration.as_secs())]);
        }
        Server::spawn(command, replica)
    }
}

fn database_url(database: Option<&str>) -> String {
    let url = std::env::var("STAGEHAND_TEST_DATABASE_URL")
        .expect("STAGEHAND_TEST_DATABASE_URL: start one with scripts/postgres.sh up DIR");
    match database {
        None => url,
        Some(database) => {
            let (base, _) = url.rsplit_once('/').expect("a URL with a database");
            format!("{base}/{database}")
        }
    }
}

fn kubectl(kubeconfig: &Path, args: &[&str]) {
    let kubectl = std::env::var("STAGEHAND_KUBECTL").unwrap_or_else(|_| "kubectl".into());
    let out = Command::new(kubectl)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .output()
        .expect("kubectl runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

struct Server {
    child: Child,
    replica: String,
    grpc: String,
    http: SocketAddr,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn spawn(mut command: Command, replica: &str) -> Self {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("stagehand serve starts");
        let mut stdout = BufReader::new(child.stdout.take().expect("piped"));
        let (mut grpc, mut http) = (None, None);
        while grpc.is_none() || http.is_none() {
            let mut line = String::new();
            assert!(
                stdout.read_line(&mut line).expect("stdout") > 0,
                "serve exited"
            );
            if let Some(a) = line.trim().strip_prefix("http listening on ") {
                http = Some(a.parse().expect("address"));
            } else if let Some(a) = line.trim().strip_prefix("listening on ") {
                grpc = Some(format!("http://{a}"));
            }
        }
        Self {
            child,
            replica: replica.to_owned(),
            grpc: grpc.expect("read"),
            http: http.expect("read"),
        }
    }

    /// (peak RSS, RSS now) in MiB.
    fn rss(&self) -> (f64, f64) {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).expect("status");
        let field = |name: &str| -> f64 {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
                .expect("a /proc field")
        };
        (field("VmHWM:") / 1024.0, field("VmRSS:") / 1024.0)
    }

    fn webhook(&self) {
        let secret = WebhookSecret::from_file_contents(b"bench-secret".to_vec()).expect("secret");
        let body = br#"{"ref":"refs/heads/main"}"#;
        let mut stream = TcpStream::connect(self.http).expect("webhook listener");
        let request = format!(
            "POST /api/webhook HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nX-Stagehand-Signature: {}\r\nConnection: close\r\n\r\n",
            body.len(),
            secret.sign(body)
        );
        stream.write_all(request.as_bytes()).expect("send");
        stream.write_all(body).expect("send");
        let mut response = String::new();
        stream.read_to_string(&mut response).expect("read");
        assert!(response.contains(" 202 "), "{response}");
    }

    /// The environments this replica reconciles (all of them alone) that applied `commit`
    /// with a pass started at or after `since`.
    async fn applied(&self, commit: &str, since: SystemTime) -> Vec<String> {
        let mut client = EnvironmentServiceClient::connect(self.grpc.clone())
            .await
            .expect("gRPC");
        let list = client
            .list_environments(proto::ListEnvironmentsRequest {})
            .await
            .expect("ListEnvironments")
            .into_inner();
        list.environments
            .into_iter()
            .filter(|e| {
                e.status.as_ref().is_some_and(|s| {
                    (s.replica.is_empty() || s.replica == self.replica)
                        && s.applied_revision == commit
                        && s.last_sync_time.as_ref().is_some_and(|t| {
                            SystemTime::UNIX_EPOCH + Duration::new(t.seconds as u64, t.nanos as u32)
                                >= since
                        })
                })
            })
            .map(|e| e.name)
            .collect()
    }
}

/// Waits until the replicas together report every environment of `envs` applied at `commit`
/// by a pass started at or after `since`; returns how long it took.
async fn until_applied(
    servers: &[&Server],
    envs: &[String],
    commit: &str,
    since: SystemTime,
) -> Duration {
    let started = Instant::now();
    loop {
        let mut done = std::collections::BTreeSet::new();
        for server in servers {
            done.extend(server.applied(commit, since).await);
        }
        if envs.iter().all(|e| done.contains(e)) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(1800),
            "only {} of {} environments applied {commit}",
            done.len(),
            envs.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn moves(root: &Path, kubeconfig: &Path) {
    for seconds in [3, 6, 12] {
        let lease = Duration::from_secs(seconds);
        let scenario = Scenario::new(root, &format!("moves{seconds}"), 20, kubeconfig).await;
        let commit = scenario.commit(10, "r0");
        let mut a = scenario.start("replica-a", Some(lease), kubeconfig);
        let b = scenario.start("replica-b", Some(lease), kubeconfig);
        until_applied(&[&a, &b], &scenario.envs, &commit, SystemTime::UNIX_EPOCH).await;
        // Let the shares settle (a joining replica takes its share in about three rounds).
        tokio::time::sleep(lease * 2).await;
        until_applied(&[&a, &b], &scenario.envs, &commit, SystemTime::UNIX_EPOCH).await;
        let on_a = a.applied(&commit, SystemTime::UNIX_EPOCH).await;
        let killed = (Instant::now(), SystemTime::now());
        a.child.kill().expect("SIGKILL");
        a.child.wait().expect("gone");
        until_applied(&[&b], &on_a, &commit, killed.1).await;
        let took = killed.0.elapsed();
        println!(
            "moves: lease duration {lease:?}: the {} environments of a SIGKILLed replica held and reconciled by the other after {took:?} ({:.2} lease durations)",
            on_a.len(),
            took.as_secs_f64() / lease.as_secs_f64()
        );
    }
}

async fn round(root: &Path, kubeconfig: &Path) {
    for replicas in [1, 2] {
        let scenario = Scenario::new(root, &format!("round{replicas}"), 1000, kubeconfig).await;
        let first = scenario.commit(10, "r0");
        let leases = (replicas > 1).then_some(Duration::from_secs(15));
        let servers: Vec<Server> = (0..replicas)
            .map(|i| scenario.start(&format!("replica-{i}"), leases, kubeconfig))
            .collect();
        let refs: Vec<&Server> = servers.iter().collect();
        let took = until_applied(&refs, &scenario.envs, &first, SystemTime::UNIX_EPOCH).await;
        println!(
            "round: {replicas} replica(s), 1,000 environments x 10 objects: first apply {took:?}"
        );
        if replicas > 1 {
            // Passes ran on whichever replica held an environment first; let the shares settle.
            tokio::time::sleep(Duration::from_secs(30)).await;
        }
        let commit = scenario.commit(10, "r1");
        let since = SystemTime::now();
        let started = Instant::now();
        for server in &servers {
            server.webhook();
        }
        until_applied(&refs, &scenario.envs, &commit, since).await;
        let took = started.elapsed();
        let rss: Vec<String> = servers
            .iter()
            .map(|s| {
                let (peak, now) = s.rss();
                format!("{}: peak {peak:.0} MiB, now {now:.0} MiB", s.replica)
            })
            .collect();
        println!(
            "round: {replicas} replica(s), a commit touching all 1,000 environments -> every one applied in {took:?}; RSS {}",
            rss.join("; ")
        );
    }
}

fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let chosen: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let wants = |s: &str| chosen.is_empty() || chosen.iter().any(|c| c == s);
    let root =
        std::env::temp_dir().join(format!("stagehand-bench-replicas-{}", std::process::id()));
    std::fs::create_dir_all(&root).expect("bench dir");
    let kubeconfig = cluster::kubeconfig();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        if wants("moves") {
            moves(&root, &kubeconfig).await;
        }
        if wants("round") {
            round(&root, &kubeconfig).await;
        }
    });
    let _ = std::fs::remove_dir_all(root);
}
