//! `stagehand serve` as a whole, against one apiserver in one run:
//! - latency: a commit pushed → its 50 objects applied, via a signed webhook and via a 1 s poll;
//! - idle: 20 environments × 500 objects, peak RSS and CPU per idle minute once all are applied;
//! - GetEnvironment requests per second from 100 concurrent clients;
//! - fleet: 1,000 environments of 10 objects, a commit touching all → every one applied (wall
//!   time, peak RSS), the shape of Flux's published benchmark.
//!
//! - images: a tag pushed to a registry (skopeo) → the commit an image source makes for it
//!   applied in the first environment, via the registry's notification and via a 1 s poll; and
//!   the registry requests one poll of 100 image sources makes (counted by a proxy);
//! - promote: the last approval of a promotion → the target (50 objects) reported Healthy;
//! - verify: the same with and without a verification check, side by side;
//! - promotions: ListPromotions over 10,000 stored promotions from 100 concurrent clients, and
//!   the server's RSS with them;
//! - web: the web view's pipeline page at 20 environments and 1,000 stored promotions, and at
//!   1,000 and 100,000: server time per page and its size, beside ListEnvironments over gRPC.
//!
//! `cargo bench --bench service [latency|idle|rps|fleet|images|promote|verify|promotions|web ...]` (all by default). Uses
//! `STAGEHAND_TEST_KUBECONFIG` when set, else starts a private apiserver.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use stagehand::proto;
use stagehand::proto::environment_service_client::EnvironmentServiceClient;
use stagehand::proto::promotion_service_client::PromotionServiceClient;
use stagehand::service::webhook::WebhookSecret;

#[path = "support/cluster.rs"]
mod cluster;
#[path = "../tests/it/support/registry.rs"]
#[allow(dead_code)]
mod registry;

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

/// A work tree and the bare remote the service fetches from.
struct Repo {
    work: PathBuf,
}

impl Repo {
    fn new(dir: &Path) -> Self {
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
        Self { work }
    }

    /// Writes each environment's objects at `revision`: its Namespace and `objects` ConfigMaps,
    /// in one file.
    fn write(&self, envs: &[String], objects: usize, revision: &str) {
        for env in envs {
            let dir = self.work.join("envs").join(env);
            std::fs::create_dir_all(&dir).expect("env dir");
            std::fs::write(
                dir.join("kustomization.yaml"),
                format!("namespace: {env}\nresources: [objects.yaml]\n"),
            )
            .expect("kustomization");
            let namespace = format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {env}\n");
            let docs: Vec<String> = std::iter::once(namespace)
                .chain((0..objects)
                .map(|i| {
                    format!(
                        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: obj-{i:04}\ndata:\n  revision: {revision:?}\n  text: {:?}\n",
                        "x".repeat(200)
                    )
                }))
                .collect();
            std::fs::write(dir.join("objects.yaml"), docs.join("---\n")).expect("objects");
        }
    }

    fn commit_and_push(&self, message: &str) -> String {
        git(&self.work, &["add", "-A"]);
        git(&self.work, &["commit", "-q", "-m", message]);
        git(&self.work, &["push", "-q", "origin", "main"]);
        git(&self.work, &["rev-parse", "HEAD"])
    }

    fn pipeline(&self, name: &str, envs: &[String], interval: &str, kubeconfig: &Path) -> PathBuf {
        let mut text = format!(
            "apiVersion: stagehand.dev/v1alpha1\nkind: Pipeline\nmetadata: {{name: {name}}}\nspec:\n  repository: {{url: {}, branch: main}}\n  environments:\n",
            self.work
                .parent()
                .expect("dir")
                .join("remote.git")
                .display()
        );
        for env in envs {
            text.push_str(&format!(
                "    - name: {env}\n      source: {{overlay: envs/{env}}}\n      cluster: {{kubeconfig: {}}}\n      sync: {{interval: {interval}}}\n",
                kubeconfig.display()
            ));
        }
        let file = self.work.parent().expect("dir").join("pipeline.yaml");
        std::fs::write(&file, text).expect("pipeline");
        file
    }

    /// A pipeline of `envs[0]` promoted into `envs[1]` with one approval (self-approval allowed,
    /// as the bench's client is anonymous), copying its objects.
    /// `target`: more settings of the target environment, each line indented as one.
    fn promotion_pipeline(
        &self,
        name: &str,
        envs: &[String],
        kubeconfig: &Path,
        target: &str,
    ) -> PathBuf {
        let file = self.pipeline(name, &envs[..1], "1h", kubeconfig);
        let mut text = std::fs::read_to_string(&file).expect("pipeline");
        text.push_str(&format!(
            "    - name: {}\n      promotesFrom: {}\n      source: {{overlay: envs/{}}}\n      cluster: {{kubeconfig: {}}}\n      sync: {{interval: 1h}}\n      approval: {{required: 1, allowSelfApproval: true}}\n      promote: {{files: [objects.yaml]}}\n{target}",
            envs[1],
            envs[0],
            envs[1],
            kubeconfig.display()
        ));
        std::fs::write(&file, text).expect("pipeline");
        file
    }
}

struct Server {
    child: Child,
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
    fn start(pipeline: &Path, state: &Path, secret: &Path) -> Self {
        Self::start_with(pipeline, state, secret, "127.0.0.1:0", &[])
    }

    /// With the HTTP listener on `http` and `extra` arguments.
    fn start_with(
        pipeline: &Path,
        state: &Path,
        secret: &Path,
        http: &str,
        extra: &[&str],
    ) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_stagehand"))
            .args(["serve", "--listen", "127.0.0.1:0", "--http-listen", http])
            .args(extra)
            .arg("--pipeline")
            .arg(pipeline)
            .arg("--state-dir")
            .arg(state)
            .arg("--webhook-secret-file")
            .arg(secret)
            .args(["--log-level", "warn"])
            // The 100 concurrent clients of `rps` and `promotions` all connect from loopback, where
            // clients in production come from many addresses.
            .args(["--max-connections-per-peer", "1000"])
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
            grpc: grpc.expect("read"),
            http: http.expect("read"),
        }
    }

    /// (peak RSS in MiB, CPU seconds used so far) from /proc.
    fn usage(&self) -> (f64, f64) {
        let pid = self.child.id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
        let hwm_kib: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .expect("VmHWM");
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .expect("comm")
            .1
            .split_whitespace()
            .collect();
        let ticks: f64 =
            fields[11].parse::<f64>().expect("utime") + fields[12].parse::<f64>().expect("stime");
        (hwm_kib / 1024.0, ticks / 100.0)
    }
}

fn webhook(addr: SocketAddr, secret: &WebhookSecret) {
    let body = br#"{"ref":"refs/heads/main"}"#;
    let mut stream = TcpStream::connect(addr).expect("webhook listener");
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

/// Writes `images` (the `images:` of the pipeline's spec) into the pipeline file, before its
/// environments.
fn add_images(pipeline: &Path, images: &str) {
    let text = std::fs::read_to_string(pipeline).expect("pipeline");
    std::fs::write(
        pipeline,
        text.replace("  environments:\n", &format!("{images}  environments:\n")),
    )
    .expect("pipeline");
}

/// A client of the service at `grpc`, once every environment in `envs` reports `commit` applied
/// (at most 2 minutes).
async fn client_once_applied(
    grpc: &str,
    envs: &[String],
    commit: &str,
) -> EnvironmentServiceClient<tonic::transport::Channel> {
    until_applied(grpc, envs, commit, Duration::from_secs(120)).await;
    EnvironmentServiceClient::connect(grpc.to_owned())
        .await
        .expect("gRPC")
}

/// Waits until every environment in `envs` reports `commit` applied; returns how long it took.
async fn until_applied(grpc: &str, envs: &[String], commit: &str, limit: Duration) -> Duration {
    let started = Instant::now();
    let mut client = EnvironmentServiceClient::connect(grpc.to_owned())
        .await
        .expect("gRPC");
    loop {
        let list = client
            .list_environments(proto::ListEnvironmentsRequest {})
            .await
            .expect("ListEnvironments")
            .into_inner();
        let done = list
            .environments
            .iter()
            .filter(|e| envs.contains(&e.name))
            .filter(|e| {
                e.status
                    .as_ref()
                    .is_some_and(|s| s.applied_revision == commit)
            })
            .count();
        if done == envs.len() {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "only {done} of {} environments applied {commit} after {limit:?}",
            envs.len()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

struct Bench {
    dir: PathBuf,
    kubeconfig: PathBuf,
    secret_file: PathBuf,
    secret: WebhookSecret,
    run: String,
}

impl Bench {
    fn scenario(&self, name: &str) -> PathBuf {
        let dir = self.dir.join(name);
        std::fs::create_dir_all(dir.join("state")).expect("scenario dir");
        dir
    }

    fn envs(&self, prefix: &str, n: usize) -> Vec<String> {
        (0..n)
            .map(|i| format!("b{}-{prefix}-{i:04}", self.run))
            .collect()
    }

    async fn latency(&self) {
        for (mode, interval) in [("webhook", "1h"), ("poll", "1s")] {
            let dir = self.scenario(&format!("latency-{mode}"));
            let repo = Repo::new(&dir);
            let envs = self.envs(&format!("lat{mode}"), 1);
            repo.write(&envs, 50, "r0");
            let first = repo.commit_and_push("r0");
            let pipeline = repo.pipeline(
                &format!("lat{mode}{}", self.run),
                &envs,
                interval,
                &self.kubeconfig,
            );
            let server = Server::start(&pipeline, &dir.join("state"), &self.secret_file);
            until_applied(&server.grpc, &envs, &first, Duration::from_secs(120)).await;
            let mut times = Vec::new();
            for round in 1..=5 {
                repo.write(&envs, 50, &format!("r{round}"));
                let commit = repo.commit_and_push(&format!("r{round}"));
                let started = Instant::now();
                if mode == "webhook" {
                    webhook(server.http, &self.secret);
                }
                until_applied(&server.grpc, &envs, &commit, Duration::from_secs(60)).await;
                times.push(started.elapsed());
            }
            times.sort();
            println!(
                "latency via {mode:<7}: pushed -> 50 objects applied: median {:?}, min {:?}, max {:?} (5 commits)",
                times[2], times[0], times[4]
            );
        }
    }

    /// A tag pushed → its image commit applied in the first environment, via the registry's
    /// notification and via a 1 s poll; then the registry requests of polls of 100 sources.
    async fn images(&self) {
        const TOKEN: &str = "bench-registry-token";
        let token_file = self.dir.join("registry-token");
        std::fs::write(&token_file, format!("{TOKEN}\n")).expect("token file");
        let token_arg = token_file.display().to_string();
        for (mode, interval) in [("webhook", "1h"), ("poll", "1s")] {
            let dir = self.scenario(&format!("images-{mode}"));
            let http = free_address();
            let registry = registry::TestRegistry::start(
                &dir.join("registry"),
                registry::Options {
                    notify: (mode == "webhook")
                        .then(|| format!("http://{http}/api/registry-webhook")),
                    notify_token: Some(TOKEN.to_owned()),
                    ..Default::default()
                },
            );
            let image = format!("{}/shop/web", registry.address);
            registry.push("shop/web", "1.0.0");
            let repo = Repo::new(&dir);
            let env = format!("b{}-img{mode}", self.run);
            let overlay = repo.work.join("envs").join(&env);
            std::fs::create_dir_all(&overlay).expect("overlay");
            std::fs::write(
                overlay.join("kustomization.yaml"),
                format!(
                    "namespace: {env}\nresources: [app.yaml]\nimages:\n  - name: web\n    newName: {image}\n    newTag: 1.0.0\n"
                ),
            )
            .expect("kustomization");
            std::fs::write(
                overlay.join("app.yaml"),
                format!(
                    "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {env}\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  replicas: 1\n  selector: {{matchLabels: {{app: web}}}}\n  template:\n    metadata: {{labels: {{app: web}}}}\n    spec:\n      containers: [{{name: web, image: web}}]\n"
                ),
            )
            .expect("app");
            let first = repo.commit_and_push("1.0.0");
            let config = dir.join("config.json");
            std::fs::write(&config, registry.docker_config()).expect("config");
            let pipeline = repo.pipeline(
                &format!("img{mode}{}", self.run),
                std::slice::from_ref(&env),
                "1h",
                &self.kubeconfig,
            );
            add_images(
                &pipeline,
                &format!(
                    "  images:\n    - {{name: web, repository: {image}, kustomizeName: web, pinDigest: true, interval: {interval}, credentialsFile: {}, policy: {{semver: {{range: \">=1\"}}}}}}\n",
                    config.display()
                ),
            );
            let server = Server::start_with(
                &pipeline,
                &dir.join("state"),
                &self.secret_file,
                &http.to_string(),
                &["--registry-webhook-token-file", &token_arg],
            );
            let mut client =
                client_once_applied(&server.grpc, std::slice::from_ref(&env), &first).await;
            let (mut times, mut pushes) = (Vec::new(), Vec::new());
            let mut last = String::new();
            for round in 1..=5 {
                let started = Instant::now();
                registry.push("shop/web", &format!("1.0.{round}"));
                pushes.push(started.elapsed());
                let commit = loop {
                    let sources = client
                        .list_image_sources(proto::ListImageSourcesRequest {})
                        .await
                        .expect("ListImageSources")
                        .into_inner()
                        .sources;
                    let status = sources[0].status.clone().unwrap_or_default();
                    if !status.last_commit.is_empty() && status.last_commit != last {
                        break status.last_commit;
                    }
                    assert!(
                        started.elapsed() < Duration::from_secs(60),
                        "no commit for 1.0.{round}: {status:?}"
                    );
                    tokio::time::sleep(Duration::from_millis(10)).await;
                };
                until_applied(
                    &server.grpc,
                    std::slice::from_ref(&env),
                    &commit,
                    Duration::from_secs(60),
                )
                .await;
                times.push(started.elapsed());
                last = commit;
            }
            times.sort();
            pushes.sort();
            println!(
                "images via {mode:<7}: skopeo push -> new tag applied in the first environment: median {:?}, min {:?}, max {:?} (5 tags; the push itself median {:?})",
                times[2], times[0], times[4], pushes[2]
            );
        }
        for pin in [false, true] {
            self.image_requests(100, pin).await;
        }
    }

    /// Polls of `sources` image sources (one repository each, 2 s interval) through a proxy
    /// that counts the HTTP requests reaching the registry.
    async fn image_requests(&self, sources: usize, pin: bool) {
        let dir = self.scenario(&format!("images-requests-{pin}"));
        let registry =
            registry::TestRegistry::start(&dir.join("registry"), registry::Options::default());
        let proxy = CountingProxy::start(&registry.address);
        let mut digests = Vec::new();
        for i in 0..sources {
            digests.push(registry.push(&format!("app{i:03}/web"), "1.0.0"));
        }
        let repo = Repo::new(&dir);
        let env = format!("b{}-imgreq{pin}", self.run);
        let overlay = repo.work.join("envs").join(&env);
        std::fs::create_dir_all(&overlay).expect("overlay");
        let mut kustomization = format!("namespace: {env}\nresources: [ns.yaml]\nimages:\n");
        let mut images = String::from("  images:\n");
        for (i, digest) in digests.iter().enumerate() {
            let image = format!("{}/app{i:03}/web", proxy.address);
            kustomization.push_str(&format!("  - name: {image}\n    newTag: 1.0.0\n"));
            if pin {
                kustomization.push_str(&format!("    digest: {digest}\n"));
            }
            images.push_str(&format!(
                "    - {{name: app{i:03}, repository: {image}, pinDigest: {pin}, interval: 2s, credentialsFile: {}, policy: {{semver: {{range: \">=1\"}}}}}}\n",
                dir.join("config.json").display()
            ));
        }
        std::fs::write(overlay.join("kustomization.yaml"), kustomization).expect("kustomization");
        std::fs::write(
            overlay.join("ns.yaml"),
            format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {env}\n"),
        )
        .expect("ns");
        let first = repo.commit_and_push("100 images");
        let (user, password) = registry
            .credentials
            .clone()
            .expect("the registry asks for a login");
        use base64::Engine as _;
        let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        std::fs::write(
            dir.join("config.json"),
            format!(
                "{{\"auths\": {{\"{}\": {{\"auth\": \"{auth}\"}}}}}}",
                proxy.address
            ),
        )
        .expect("config");
        let pipeline = repo.pipeline(
            &format!("imgreq{pin}{}", self.run),
            std::slice::from_ref(&env),
            "1h",
            &self.kubeconfig,
        );
        add_images(&pipeline, &images);
        let server = Server::start(&pipeline, &dir.join("state"), &self.secret_file);
        let mut client =
            client_once_applied(&server.grpc, std::slice::from_ref(&env), &first).await;
        let looks = async |client: &mut EnvironmentServiceClient<tonic::transport::Channel>| {
            let sources = client
                .list_image_sources(proto::ListImageSourcesRequest {})
                .await
                .expect("ListImageSources")
                .into_inner()
                .sources;
            for s in &sources {
                let status = s.status.clone().unwrap_or_default();
                assert!(status.error.is_empty(), "{}: {}", s.name, status.error);
                assert!(status.last_commit.is_empty(), "{} committed", s.name);
            }
            sources
                .iter()
                .map(|s| s.status.clone().unwrap_or_default().checks)
                .collect::<Vec<u64>>()
        };
        // The first look of each source learns how its registry authenticates.
        while looks(&mut client).await.iter().any(|c| *c < 2) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let (requests_before, checks_before) = (proxy.requests(), looks(&mut client).await);
        let started = Instant::now();
        tokio::time::sleep(Duration::from_secs(20)).await;
        let (requests_after, checks_after) = (proxy.requests(), looks(&mut client).await);
        let checks: u64 = checks_after.iter().sum::<u64>() - checks_before.iter().sum::<u64>();
        let requests = requests_after - requests_before;
        println!(
            "images: {sources} sources (pinDigest: {pin}), 2 s interval, over {:?}: {checks} looks, {requests} registry requests: {:.2} per look, {:.0} per poll of all {sources}",
            started.elapsed(),
            requests as f64 / checks as f64,
            requests as f64 / checks as f64 * sources as f64,
        );
    }

    async fn idle(&self) {
        let dir = self.scenario("idle");
        let repo = Repo::new(&dir);
        let envs = self.envs("idle", 20);
        repo.write(&envs, 500, "r0");
        let commit = repo.commit_and_push("r0");
        let pipeline = repo.pipeline(&format!("idle{}", self.run), &envs, "1m", &self.kubeconfig);
        let server = Server::start(&pipeline, &dir.join("state"), &self.secret_file);
        let took = until_applied(&server.grpc, &envs, &commit, Duration::from_secs(900)).await;
        let (rss, cpu_before) = server.usage();
        // Three minutes: with 1m intervals a one-minute window holds anywhere from none to two
        // passes of an environment, depending on where it starts.
        let minutes = 3.0;
        tokio::time::sleep(Duration::from_secs_f64(minutes * 60.0)).await;
        let (rss_after, cpu_after) = server.usage();
        let per_minute = (cpu_after - cpu_before) / minutes;
        println!(
            "idle: 20 environments x 500 objects applied in {took:?}; peak RSS {rss:.0} MiB ({rss_after:.0} MiB after {minutes} idle minutes); CPU per idle minute with 1m sync intervals: {per_minute:.2} s ({:.2}% of one core)",
            per_minute / 60.0 * 100.0
        );
    }

    async fn rps(&self) {
        let dir = self.scenario("rps");
        let repo = Repo::new(&dir);
        let envs = self.envs("rps", 3);
        repo.write(&envs, 10, "r0");
        let commit = repo.commit_and_push("r0");
        let pipeline = repo.pipeline(&format!("rps{}", self.run), &envs, "1h", &self.kubeconfig);
        let server = Server::start(&pipeline, &dir.join("state"), &self.secret_file);
        until_applied(&server.grpc, &envs, &commit, Duration::from_secs(120)).await;
        let window = Duration::from_secs(10);
        let started = Instant::now();
        let mut tasks = Vec::new();
        for c in 0..100 {
            let grpc = server.grpc.clone();
            let name = envs[c % envs.len()].clone();
            tasks.push(tokio::spawn(async move {
                let mut client = EnvironmentServiceClient::connect(grpc).await.expect("gRPC");
                let mut latencies = Vec::new();
                while started.elapsed() < window {
                    let t = Instant::now();
                    client
                        .get_environment(proto::GetEnvironmentRequest { name: name.clone() })
                        .await
                        .expect("GetEnvironment");
                    latencies.push(t.elapsed());
                }
                latencies
            }));
        }
        let mut all = Vec::new();
        for task in tasks {
            all.extend(task.await.expect("client task"));
        }
        all.sort();
        println!(
            "GetEnvironment, 100 concurrent clients (one connection each), {window:?}: {:.0} requests/s, p50 {:?}, p99 {:?}",
            all.len() as f64 / started.elapsed().as_secs_f64(),
            all[all.len() / 2],
            all[all.len() * 99 / 100]
        );
    }

    async fn fleet(&self) {
        let dir = self.scenario("fleet");
        let repo = Repo::new(&dir);
        let envs = self.envs("fleet", 1000);
        repo.write(&envs, 10, "r0");
        let commit = repo.commit_and_push("r0");
        let pipeline = repo.pipeline(&format!("fleet{}", self.run), &envs, "1h", &self.kubeconfig);
        let started = Instant::now();
        let server = Server::start(&pipeline, &dir.join("state"), &self.secret_file);
        let first = until_applied(&server.grpc, &envs, &commit, Duration::from_secs(1800)).await;
        println!(
            "fleet: 1,000 environments x 10 objects, first apply (namespaces created): {:?}",
            started.elapsed().max(first)
        );
        repo.write(&envs, 10, "r1");
        let commit = repo.commit_and_push("r1");
        let started = Instant::now();
        webhook(server.http, &self.secret);
        let took = until_applied(&server.grpc, &envs, &commit, Duration::from_secs(1800)).await;
        let (rss, cpu) = server.usage();
        println!(
            "fleet: a commit touching all 1,000 environments -> every one applied in {took:?} (from the webhook {:?}); peak RSS {rss:.0} MiB, {cpu:.0} CPU s in all",
            started.elapsed()
        );
    }
}

impl Bench {
    async fn promote(&self) {
        let times = self.promote_rounds("promote", "").await;
        println!(
            "promote: last approval -> target (50 objects) committed, applied and Healthy: median {:?}, min {:?}, max {:?} (5 promotions)",
            times[2], times[0], times[4]
        );
    }

    /// The same promotions with and without a verification check (an HTTP check of a local
    /// endpoint that always passes, every second, 3 passes in a row): what verification adds
    /// beyond its own configured waits, 2 intervals.
    async fn verify(&self) {
        let app = axum::Router::new().route(
            "/healthz",
            axum::routing::get(|| async { r#"{"status": "ok"}"# }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a loopback port");
        let addr = listener.local_addr().expect("bound");
        tokio::spawn(async move { axum::serve(listener, app).await });
        let check = format!(
            "      verify:\n        checks:\n          - name: ready\n            http: {{url: 'http://{addr}/healthz', condition: '$.status == \"ok\"'}}\n            interval: 1s\n            successes: 3\n"
        );
        let plain = self.promote_rounds("vplain", "").await;
        let verified = self.promote_rounds("vcheck", &check).await;
        let waits = Duration::from_secs(2);
        let extra = verified[2].saturating_sub(plain[2]);
        println!(
            "verify: last approval -> Succeeded, median of 5: {:?} without verification, {:?} with an HTTP check (1 s interval, 3 passes: {:?} of configured waits); verification added {:?}, {:?} beyond its waits",
            plain[2],
            verified[2],
            waits,
            extra,
            extra.saturating_sub(waits)
        );
    }

    /// Five promotions of a 50-object environment; the time from each last approval to
    /// Succeeded, sorted.
    async fn promote_rounds(&self, scenario: &str, target: &str) -> Vec<Duration> {
        let dir = self.scenario(scenario);
        let repo = Repo::new(&dir);
        let envs = self.envs(&scenario[..scenario.len().min(5)], 2);
        repo.write(&envs, 50, "r0");
        let first = repo.commit_and_push("r0");
        let pipeline = repo.promotion_pipeline(
            &format!("{scenario}{}", self.run),
            &envs,
            &self.kubeconfig,
            target,
        );
        let server = Server::start(&pipeline, &dir.join("state"), &self.secret_file);
        let mut environments = client_once_applied(&server.grpc, &envs, &first).await;
        let mut promotions = PromotionServiceClient::connect(server.grpc.clone())
            .await
            .expect("gRPC");
        let state = |p: &proto::Promotion| proto::PromotionState::try_from(p.state).expect("state");
        let mut times = Vec::new();
        for round in 1..=5 {
            // Only the source moves; the promotion brings its objects (and its commit).
            git(&repo.work, &["pull", "-q", "--rebase", "origin", "main"]);
            repo.write(&envs[..1], 50, &format!("r{round}"));
            repo.commit_and_push(&format!("r{round}"));
            environments
                .sync_environment(proto::SyncEnvironmentRequest {
                    name: envs[0].clone(),
                    fetch: true,
                    wait: true,
                })
                .await
                .expect("source synced");
            let requested = promotions
                .request_promotion(proto::RequestPromotionRequest {
                    target_environment: envs[1].clone(),
                    ..Default::default()
                })
                .await
                .expect("requested")
                .into_inner();
            let get = proto::GetPromotionRequest {
                id: requested.id.clone(),
            };
            loop {
                let p = promotions
                    .get_promotion(get.clone())
                    .await
                    .expect("get")
                    .into_inner();
                if state(&p) == proto::PromotionState::AwaitingApproval {
                    break;
                }
                assert_ne!(state(&p), proto::PromotionState::Failed, "{}", p.message);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let started = Instant::now();
            promotions
                .approve_promotion(proto::ApprovePromotionRequest {
                    id: requested.id.clone(),
                    comment: String::new(),
                })
                .await
                .expect("approved");
            loop {
                let p = promotions
                    .get_promotion(get.clone())
                    .await
                    .expect("get")
                    .into_inner();
                if state(&p) == proto::PromotionState::Succeeded {
                    break;
                }
                assert_ne!(state(&p), proto::PromotionState::Failed, "{}", p.message);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            times.push(started.elapsed());
        }
        times.sort();
        times
    }

    async fn promotions(&self) {
        let dir = self.scenario("promotions");
        let repo = Repo::new(&dir);
        let envs = self.envs("plist", 2);
        repo.write(&envs, 10, "r0");
        let first = repo.commit_and_push("r0");
        let pipeline =
            repo.promotion_pipeline(&format!("plist{}", self.run), &envs, &self.kubeconfig, "");
        let state = dir.join("state");
        {
            // 10,000 finished promotions written through the store, as the engine writes them.
            use stagehand::store::{self, Store as _};
            let store = store::SqliteStore::open(&state).await.expect("store");
            for i in 0..10_000u32 {
                store
                    .create_promotion(store::NewPromotion {
                        id: store::new_promotion_id(),
                        kind: store::PromotionKind::Promotion,
                        source_environment: Some(envs[0].clone()),
                        target_environment: envs[1].clone(),
                        revision: first.clone(),
                        rerun: false,
                        requested_by: format!("user-{}", i % 50),
                        reason: "bench".into(),
                        state: store::PromotionState::Succeeded,
                        at: std::time::SystemTime::now(),
                        detail: None,
                    })
                    .await
                    .expect("stored");
            }
        }
        let server = Server::start(&pipeline, &state, &self.secret_file);
        until_applied(&server.grpc, &envs, &first, Duration::from_secs(120)).await;
        let window = Duration::from_secs(10);
        let started = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..100 {
            let grpc = server.grpc.clone();
            let target = envs[1].clone();
            tasks.push(tokio::spawn(async move {
                let mut client = PromotionServiceClient::connect(grpc).await.expect("gRPC");
                let mut latencies = Vec::new();
                while started.elapsed() < window {
                    let t = Instant::now();
                    let page = client
                        .list_promotions(proto::ListPromotionsRequest {
                            environment: target.clone(),
                            page_size: 100,
                            ..Default::default()
                        })
                        .await
                        .expect("ListPromotions")
                        .into_inner();
                    assert_eq!(page.promotions.len(), 100);
                    latencies.push(t.elapsed());
                }
                latencies
            }));
        }
        let mut all = Vec::new();
        for task in tasks {
            all.extend(task.await.expect("client task"));
        }
        all.sort();
        let (rss, _) = server.usage();
        println!(
            "ListPromotions (pages of 100) over 10,000 stored promotions, 100 concurrent clients, {window:?}: {:.0} requests/s, p50 {:?}, p99 {:?}; server peak RSS {rss:.0} MiB",
            all.len() as f64 / started.elapsed().as_secs_f64(),
            all[all.len() / 2],
            all[all.len() * 99 / 100]
        );
    }
}

/// The median and 90th percentile of `times` (sorted here).
fn median_p90(times: &mut [Duration]) -> (Duration, Duration) {
    times.sort();
    (times[times.len() / 2], times[times.len() * 9 / 10])
}

impl Bench {
    /// The web view's pipeline page at 20 environments and 1,000 stored promotions, then at
    /// 1,000 environments and 100,000: the time the server takes to answer a page (one client,
    /// one request at a time, over a kept-alive connection) and its size, side by side with
    /// ListEnvironments over gRPC in the same run.
    async fn web(&self) {
        self.web_at(20, 1_000).await;
        self.web_at(1_000, 100_000).await;
    }

    /// `environments` in chains of 4 (a start and three stages promoted one from the next),
    /// `stored` finished promotions written through the store as the engine writes them, and an
    /// open promotion awaiting 2 approvals into the second stage of every chain, requested over
    /// gRPC so that the page shows its blockers.
    async fn web_at(&self, environments: usize, stored: u32) {
        const CHAIN: usize = 4;
        const ROUNDS: usize = 30;
        let dir = self.scenario(&format!("web-{environments}"));
        let repo = Repo::new(&dir);
        let envs = self.envs(&format!("web{environments}"), environments);
        let (starts, rest): (Vec<_>, Vec<_>) = envs
            .iter()
            .cloned()
            .enumerate()
            .partition(|(i, _)| i % CHAIN == 0);
        let starts: Vec<String> = starts.into_iter().map(|(_, e)| e).collect();
        let rest: Vec<String> = rest.into_iter().map(|(_, e)| e).collect();
        // The starts run a revision the next stage does not, so that a promotion has something
        // to bring.
        repo.write(&starts, 1, "r1");
        repo.write(&rest, 1, "r0");
        let first = repo.commit_and_push("r0");
        let file = repo.pipeline(
            &format!("web{environments}{}", self.run),
            &envs,
            "1h",
            &self.kubeconfig,
        );
        let mut text = std::fs::read_to_string(&file).expect("pipeline");
        for (at, env) in envs.iter().enumerate().filter(|(at, _)| at % CHAIN != 0) {
            let entry = format!("    - name: {env}\n");
            text = text.replace(
                &entry,
                &format!(
                    "{entry}      promotesFrom: {}\n      approval: {{required: 2}}\n      promote: {{files: [objects.yaml]}}\n",
                    envs[at - 1]
                ),
            );
        }
        std::fs::write(&file, text).expect("pipeline");
        let state = dir.join("state");
        let filled = Instant::now();
        {
            use stagehand::store::{self, PromotionState, Store as _};
            let store = store::SqliteStore::open(&state).await.expect("store");
            let now = std::time::SystemTime::now();
            for i in 0..stored {
                let target = i as usize % rest.len();
                let at = (target / (CHAIN - 1)) * CHAIN + target % (CHAIN - 1) + 1;
                let fate = match i % 20 {
                    0 => PromotionState::Failed,
                    1 => PromotionState::Rejected,
                    _ => PromotionState::Succeeded,
                };
                store
                    .create_promotion(store::NewPromotion {
                        id: store::new_promotion_id(),
                        kind: store::PromotionKind::Promotion,
                        source_environment: Some(envs[at - 1].clone()),
                        target_environment: envs[at].clone(),
                        revision: first.clone(),
                        rerun: false,
                        requested_by: format!("user-{}", i % 50),
                        reason: "bench".into(),
                        state: fate,
                        at: now - Duration::from_secs(u64::from(stored - i)),
                        detail: None,
                    })
                    .await
                    .expect("stored");
            }
        }
        let filled = filled.elapsed();
        let server = Server::start(&file, &state, &self.secret_file);
        until_applied(&server.grpc, &envs, &first, Duration::from_secs(1800)).await;
        let mut promotions = PromotionServiceClient::connect(server.grpc.clone())
            .await
            .expect("gRPC");
        let second: Vec<&String> = envs.iter().skip(1).step_by(CHAIN).collect();
        for target in &second {
            promotions
                .request_promotion(proto::RequestPromotionRequest {
                    target_environment: (*target).clone(),
                    ..Default::default()
                })
                .await
                .expect("requested");
        }
        let started = Instant::now();
        loop {
            let waiting = promotions
                .list_promotions(proto::ListPromotionsRequest {
                    states: vec![proto::PromotionState::AwaitingApproval as i32],
                    page_size: 1000,
                    ..Default::default()
                })
                .await
                .expect("ListPromotions")
                .into_inner()
                .promotions
                .len();
            if waiting == second.len() {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(600),
                "{waiting} of {} promotions awaiting approval",
                second.len()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("HTTP client");
        let base = format!("http://{}", server.http);
        // Without a tokens file everyone is anonymous; signing in still makes the session.
        let signed_in = http
            .post(format!("{base}/ui/sign-in"))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("origin", &base)
            .body("token=")
            .send()
            .await
            .expect("sign-in");
        assert_eq!(signed_in.status(), reqwest::StatusCode::SEE_OTHER);
        let cookie = signed_in
            .headers()
            .get(reqwest::header::SET_COOKIE)
            .and_then(|c| c.to_str().ok())
            .and_then(|c| c.split(';').next())
            .expect("a session cookie")
            .to_owned();
        let pages = environments.div_ceil(24);
        let mut shown = vec![(0, "first")];
        if pages > 1 {
            shown.push((pages - 1, "last"));
        }
        let mut environments_client = EnvironmentServiceClient::connect(server.grpc.clone())
            .await
            .expect("gRPC");
        let mut list_times = Vec::new();
        let mut page_times: Vec<Vec<Duration>> = vec![Vec::new(); shown.len()];
        let mut sizes = vec![0; shown.len()];
        let mut list_size = 0;
        // In turns, so that a slow spell of the machine lands on both alike.
        for _ in 0..ROUNDS {
            let t = Instant::now();
            let list = environments_client
                .list_environments(proto::ListEnvironmentsRequest {})
                .await
                .expect("ListEnvironments")
                .into_inner();
            list_times.push(t.elapsed());
            assert_eq!(list.environments.len(), environments);
            list_size = prost::Message::encoded_len(&list);
            for (k, (page, _)) in shown.iter().enumerate() {
                let t = Instant::now();
                let response = http
                    .get(format!("{base}/ui/?page={page}"))
                    .header("cookie", &cookie)
                    .send()
                    .await
                    .expect("the pipeline page");
                assert_eq!(response.status(), reqwest::StatusCode::OK);
                let body = response.text().await.expect("a body");
                page_times[k].push(t.elapsed());
                // The page shows its open promotions with their blockers.
                assert!(
                    body.contains("awaiting_approval"),
                    "page {page} shows no waiting promotion"
                );
                sizes[k] = body.len();
            }
        }
        let (list_median, list_p90) = median_p90(&mut list_times);
        println!(
            "web, {environments} environments, {stored} stored promotions ({} open, filled in {filled:.1?}): ListEnvironments {:.0} kB, median {list_median:?}, p90 {list_p90:?}",
            second.len(),
            list_size as f64 / 1024.0
        );
        for (k, (page, name)) in shown.iter().enumerate() {
            let (median, p90) = median_p90(&mut page_times[k]);
            println!(
                "web, {environments} environments: pipeline page {} of {pages} ({name}) {:.0} kB, median {median:?}, p90 {p90:?}: {:.1}x ListEnvironments' median",
                page + 1,
                sizes[k] as f64 / 1024.0,
                median.as_secs_f64() / list_median.as_secs_f64()
            );
        }
        let (rss, _) = server.usage();
        println!("web, {environments} environments: server peak RSS {rss:.0} MiB");
    }
}

fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let chosen: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let wants = |s: &str| chosen.is_empty() || chosen.iter().any(|c| c == s);
    let dir = std::env::temp_dir().join(format!("stagehand-bench-service-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("bench dir");
    let secret_file = dir.join("webhook-secret");
    std::fs::write(&secret_file, "bench-secret\n").expect("secret");
    let bench = Bench {
        kubeconfig: cluster::kubeconfig(),
        secret: WebhookSecret::from_file_contents(b"bench-secret".to_vec()).expect("secret"),
        secret_file,
        run: format!("{:x}", std::process::id() % 0xfff),
        dir: dir.clone(),
    };
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        if wants("latency") {
            bench.latency().await;
        }
        if wants("rps") {
            bench.rps().await;
        }
        if wants("idle") {
            bench.idle().await;
        }
        if wants("images") {
            bench.images().await;
        }
        if wants("promote") {
            bench.promote().await;
        }
        if wants("verify") {
            bench.verify().await;
        }
        if wants("promotions") {
            bench.promotions().await;
        }
        if wants("fleet") {
            bench.fleet().await;
        }
        if wants("web") {
            bench.web().await;
        }
    });
    let _ = std::fs::remove_dir_all(dir);
}

/// A free loopback address, for a listener whose address must be known before it starts.
fn free_address() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("bound")
}

/// A TCP proxy on loopback in front of `upstream` that counts the HTTP requests passing it
/// (their header blocks: the requests a registry client sends have no body).
struct CountingProxy {
    address: String,
    count: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl CountingProxy {
    fn start(upstream: &str) -> Self {
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let address = listener.local_addr().expect("bound").to_string();
        let count = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counter = count.clone();
        let upstream = upstream.to_owned();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = TcpStream::connect(&upstream) else {
                    continue;
                };
                let (mut client_read, mut server_write) = (
                    client.try_clone().expect("clone"),
                    server.try_clone().expect("clone"),
                );
                let (mut server_read, mut client_write) = (server, client);
                let counter = counter.clone();
                std::thread::spawn(move || {
                    let mut buffer = [0u8; 16 * 1024];
                    let mut tail: Vec<u8> = Vec::new();
                    loop {
                        let n = match client_read.read(&mut buffer) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        tail.extend_from_slice(&buffer[..n]);
                        let ends = tail.windows(4).filter(|w| *w == b"\r\n\r\n").count();
                        counter.fetch_add(ends as u64, Ordering::Relaxed);
                        // Three bytes carry a terminator split between two reads; no
                        // counted one fits in them again.
                        let keep = tail.len().saturating_sub(3);
                        tail.drain(..keep);
                        if server_write.write_all(&buffer[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = server_write.shutdown(std::net::Shutdown::Write);
                });
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut server_read, &mut client_write);
                    let _ = client_write.shutdown(std::net::Shutdown::Write);
                });
            }
        });
        Self { address, count }
    }

    fn requests(&self) -> u64 {
        self.count.load(std::sync::atomic::Ordering::Relaxed)
    }
}
