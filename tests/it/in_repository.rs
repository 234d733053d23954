//! The copy of the pipeline file in the repository (`repository.pipelinePath`) tried as someone
//! who can push to the repository would: `stagehand serve` over a Git remote served by
//! `git http-backend` that asks for a token, a second identity over gRPC, and an HTTP server
//! that records whether anyone sent it credentials.

use std::io::{BufRead, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use stagehand::proto;
use stagehand::proto::environment_service_client::EnvironmentServiceClient;
use tonic::transport::Channel;

use crate::service::{Server, eventually, start_server_env, with_token};
use crate::support::cluster::cluster;
use crate::support::git::{Repo, bare_remote};
use crate::support::git_http::GitHttpServer;

const GIT_TOKEN: &str = "git-token-41c9e2";
const VIEWER: &str = "viewer-token-7d21a0";
const OPERATOR: &str = "operator-token-c3b88e";

/// An HTTP server that asks every request for basic credentials, as a Git host does, and counts
/// the requests, and those that carried credentials.
struct Decoy {
    addr: SocketAddr,
    requests: Arc<AtomicUsize>,
    with_credentials: Arc<AtomicUsize>,
}

impl Decoy {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("loopback port");
        let addr = listener.local_addr().expect("bound address");
        let requests = Arc::new(AtomicUsize::new(0));
        let with_credentials = Arc::new(AtomicUsize::new(0));
        let (all, credentialed) = (requests.clone(), with_credentials.clone());
        std::thread::spawn(move || {
            for mut stream in listener.incoming().flatten() {
                let mut reader = std::io::BufReader::new(&mut stream);
                let mut line = String::new();
                let mut authorized = false;
                while reader.read_line(&mut line).unwrap_or(0) > 0 && !line.trim().is_empty() {
                    authorized |= line.to_ascii_lowercase().starts_with("authorization:");
                    line.clear();
                }
                all.fetch_add(1, Ordering::SeqCst);
                if authorized {
                    credentialed.fetch_add(1, Ordering::SeqCst);
                }
                let _ = stream.write_all(
                    b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"git\"\r\n\
                      Content-Length: 0\r\nConnection: close\r\n\r\n",
                );
            }
        });
        Self {
            addr,
            requests,
            with_credentials,
        }
    }
}

/// The demo repository (SOPS Secrets, keys per environment) with dev in a namespace of its own,
/// pushed to a remote that wants `GIT_TOKEN`; the pipeline file on disk lies elsewhere, beside
/// its own copy of the keys, and names its copy in the repository.
struct Fixture {
    _dir: tempfile::TempDir,
    work: Repo,
    /// The pipeline file on disk, as it started the service.
    on_disk: String,
    pipeline: std::path::PathBuf,
    state: std::path::PathBuf,
    namespace: String,
    _remote: GitHttpServer,
}

impl Fixture {
    async fn new(kube: &kube::Client) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let namespace = cluster().namespace(kube, "repo-dev").await;
        let remotes = dir.path().join("remotes");
        bare_remote(&remotes.join("shop.git"));
        let remote = GitHttpServer::start(&remotes, Some(("x-access-token", GIT_TOKEN)));
        let url = remote.url("shop.git");

        let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("environments");
        let work_dir = dir.path().join("work");
        let copied = Command::new("cp")
            .arg("-r")
            .arg(&demo)
            .arg(&work_dir)
            .status()
            .expect("cp runs");
        assert!(copied.success());
        for file in ["dev/kustomization.yaml", "dev/namespace.yaml"] {
            let path = work_dir.join(file);
            let text = std::fs::read_to_string(&path).expect("demo file");
            std::fs::write(&path, text.replace("shop-dev", &namespace)).expect("write");
        }
        // The keys live beside the pipeline file on disk, where `ageKeysDir: keys` points.
        let etc = dir.path().join("etc");
        std::fs::create_dir_all(etc.join("keys")).expect("etc");
        std::fs::copy(
            work_dir.join("keys/dev.agekey"),
            etc.join("keys/dev.agekey"),
        )
        .expect("key");
        std::fs::remove_dir_all(work_dir.join("keys")).expect("no keys in the repository");
        let name = format!("repo{}", &namespace[namespace.len() - 6..]);
        let on_disk = format!(
            "apiVersion: stagehand.dev/v1alpha1
kind: Pipeline
metadata: {{name: {name}}}
spec:
  repository:
    url: {url}
    branch: main
    pipelinePath: pipeline.yaml
    inRepository: {{mayChange: [freezeWindows]}}
  decryption: {{ageKeysDir: keys}}
  environments:
    - name: dev
      source: {{overlay: dev}}
      # The test made the namespace the demo declares.
      sync: {{interval: 1h, adopt: true}}
    - name: staging
      promotesFrom: dev
      source: {{overlay: staging}}
      sync: {{interval: 1h, auto: false}}
  access:
    - {{groups: [viewers], environments: [\"*\"], permissions: [view]}}
    - {{groups: [operators], environments: [\"*\"], permissions: [sync]}}
"
        );
        let pipeline = etc.join("pipeline.yaml");
        std::fs::write(&pipeline, &on_disk).expect("pipeline file");
        let work = Repo { dir: work_dir };
        work.write(&[("pipeline.yaml", &on_disk)]);
        work.git(&["init", "-q", "-b", "main"]);
        work.commit("the demo and its pipeline");
        let pushing = url.replacen("http://", &format!("http://x-access-token:{GIT_TOKEN}@"), 1);
        work.git(&["remote", "add", "origin", &pushing]);
        work.git(&["push", "-q", "origin", "main"]);

        let state = dir.path().join("state");
        std::fs::create_dir_all(&state).expect("state dir");
        let hash = stagehand::api::auth::hash_token;
        std::fs::write(
            state.join("tokens.yaml"),
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
        std::fs::write(state.join("git-token"), GIT_TOKEN).expect("git token file");
        std::fs::write(state.join("webhook-secret"), "webhook-secret\n").expect("secret");
        Self {
            _dir: dir,
            work,
            on_disk,
            pipeline,
            state,
            namespace,
            _remote: remote,
        }
    }

    fn serve(&self) -> Server {
        let tokens = self.state.join("tokens.yaml").display().to_string();
        let git_token = self.state.join("git-token").display().to_string();
        start_server_env(
            &self.pipeline,
            &self.state,
            &self.state.join("webhook-secret"),
            &["--tokens-file", &tokens, "--git-token-file", &git_token],
            &[],
        )
    }

    /// Commits the pipeline file on disk with `from` replaced by `to` as the repository's copy.
    fn push_pipeline(&self, from: &str, to: &str) -> String {
        let text = self.on_disk.replace(from, to);
        assert_ne!(text, self.on_disk, "{from:?} is in the pipeline file");
        self.work.write(&[("pipeline.yaml", &text)]);
        let commit = self.work.commit(&format!("pipeline: {to}"));
        self.work.git(&["push", "-q", "origin", "main"]);
        commit
    }
}

/// Fetches now, as an operator may, so that the new commit is read.
async fn fetch(api: &mut EnvironmentServiceClient<Channel>) {
    api.sync_environment(with_token(
        OPERATOR,
        proto::SyncEnvironmentRequest {
            name: "dev".into(),
            fetch: true,
            // The service may be replaced by a new pipeline while a pass runs.
            wait: false,
        },
    ))
    .await
    .expect("an operator may sync dev, and the remote on disk answers");
}

async fn rejected(api: &mut EnvironmentServiceClient<Channel>) -> String {
    api.list_environments(with_token(VIEWER, proto::ListEnvironmentsRequest {}))
        .await
        .expect("ListEnvironments answers")
        .into_inner()
        .rejected_pipeline
}

async fn environment(
    api: &mut EnvironmentServiceClient<Channel>,
    name: &str,
) -> proto::Environment {
    api.get_environment(with_token(
        VIEWER,
        proto::GetEnvironmentRequest { name: name.into() },
    ))
    .await
    .expect("a viewer may look")
    .into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_to_the_pipeline_in_the_repository_cannot_widen_access_or_move_the_credentials() {
    let kube = cluster().client().await;
    let fx = Fixture::new(&kube).await;
    let server = fx.serve();
    let mut api = EnvironmentServiceClient::connect(server.grpc.clone())
        .await
        .expect("gRPC reachable");
    let secrets: Api<Secret> = Api::namespaced(kube.clone(), &fx.namespace);
    eventually("dev applied with its decrypted Secret", || async {
        secrets
            .get_opt("shop-db")
            .await
            .expect("get works")
            .is_some()
    })
    .await;

    // A commit that gives viewers `sync`: refused, naming the field and the commit.
    let widened = fx.push_pipeline(
        "    - {groups: [operators]",
        "    - {groups: [viewers], environments: [dev], permissions: [sync]}\n    - {groups: [operators]",
    );
    fetch(&mut api).await;
    eventually("the wider access is refused", || {
        let mut api = api.clone();
        let widened = widened.clone();
        async move {
            let message = rejected(&mut api).await;
            message.contains("spec.access") && message.contains(&widened)
        }
    })
    .await;
    // The old rules still apply: a viewer may not sync.
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
        .expect_err("viewers still may not sync");
    assert_eq!(denied.code(), tonic::Code::PermissionDenied, "{denied:?}");

    // A commit that points the repository at another server: refused, and that server never
    // hears from the service, let alone its Git token.
    let decoy = Decoy::start();
    let remote_url = fx
        .on_disk
        .lines()
        .find_map(|l| l.trim().strip_prefix("url: "))
        .expect("the url line")
        .to_owned();
    let moved = fx.push_pipeline(&remote_url, &format!("http://{}/shop.git", decoy.addr));
    fetch(&mut api).await;
    eventually("the new repository URL is refused", || {
        let mut api = api.clone();
        let moved = moved.clone();
        async move {
            let message = rejected(&mut api).await;
            message.contains("spec.repository.url") && message.contains(&moved)
        }
    })
    .await;
    // The service still fetches from the remote on disk.
    fetch(&mut api).await;
    assert_eq!(decoy.with_credentials.load(Ordering::SeqCst), 0);
    assert_eq!(decoy.requests.load(Ordering::SeqCst), 0);

    // A commit that changes only a comment and how often dev is read: taken, and dev still
    // decrypts with the key beside the file on disk.
    fx.push_pipeline(
        "      sync: {interval: 1h, adopt: true}\n",
        "      # read less often\n      sync: {interval: 2h, adopt: true}\n",
    );
    fetch(&mut api).await;
    eventually("the harmless commit runs", || {
        let mut api = api.clone();
        async move {
            let dev = environment(&mut api, "dev").await;
            rejected(&mut api).await.is_empty()
                && dev.sync.is_some_and(|s| s.interval_seconds == 7200)
        }
    })
    .await;
    let kustomization = fx.work.dir.join("dev/kustomization.yaml");
    let text = std::fs::read_to_string(&kustomization).expect("dev kustomization");
    std::fs::write(&kustomization, text.replace("count: 1", "count: 2")).expect("write");
    fx.work.commit("dev: two web replicas");
    fx.work.git(&["push", "-q", "origin", "main"]);
    fetch(&mut api).await;
    let deployments: Api<Deployment> = Api::namespaced(kube.clone(), &fx.namespace);
    eventually("dev applies its next commit, Secret and all", || async {
        deployments
            .get_opt("web")
            .await
            .expect("get works")
            .and_then(|d| d.spec.replicas)
            == Some(2)
    })
    .await;
    let dev = environment(&mut api, "dev").await;
    let status = dev.status.expect("status");
    assert!(status.last_error.is_empty(), "{status:?}");

    // A change the file on disk allows (freezeWindows): taken.
    fx.push_pipeline(
        "      sync: {interval: 1h, auto: false}\n",
        "      sync: {interval: 1h, auto: false}\n      freezeWindows: [{start: \"Fri 16:00\", end: \"Mon 08:00\"}]\n",
    );
    fetch(&mut api).await;
    eventually("the allowed change runs", || {
        let mut api = api.clone();
        async move {
            rejected(&mut api).await.is_empty()
                && environment(&mut api, "staging").await.freeze_windows.len() == 1
        }
    })
    .await;
    assert_eq!(decoy.requests.load(Ordering::SeqCst), 0);
}
