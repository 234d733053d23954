//! Image sources (`spec.images`): the commit that sets a chosen tag, against a real Git remote
//! checked with the git CLI; and `stagehand serve` following a real registry (Debian's
//! docker-registry with htpasswd, images pushed by skopeo) into the real apiserver, watched
//! through ListImageSources, the CLI and the registry's own notifications.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams};
use stagehand::git::images::{Error, ImageUpdate, Outcome, SetImage};
use stagehand::git::promote::{Identity, Options};
use stagehand::git::{Credentials, RemoteUrl, Repository};
use stagehand::pipeline::Pipeline;
use stagehand::proto;
use stagehand::proto::environment_service_client::EnvironmentServiceClient;

use crate::cli_api::{command, run_with};
use crate::service::{Server, eventually, start_server_at};
use crate::support::cluster::{cluster, unique_suffix};
use crate::support::git::{Repo, bare_remote, git};
use crate::support::git_http::GitHttpServer;
use crate::support::registry::{self, TestRegistry, registry};

const DEV: &str = "\
# dev: the tags the image sources move
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources: [deployment.yaml]
images:
  - name: registry.example.com/shop/web   # the front end
    newTag: \"1.0.0\"
  - name: api
    newName: registry.example.com/shop/api
    newTag: 2.0.0 # pinned below when the source says so
";

fn options() -> Options {
    Options {
        author: Identity {
            name: "Stagehand".into(),
            email: "stagehand@example.test".into(),
        },
        committer: Identity {
            name: "Stagehand".into(),
            email: "stagehand@example.test".into(),
        },
        signer: None,
        max_attempts: 5,
    }
}

fn pipeline(url: &str) -> Pipeline {
    Pipeline::parse(
        Path::new("pipeline.yaml"),
        &format!(
            "apiVersion: stagehand.dev/v1alpha1
kind: Pipeline
metadata: {{name: shop}}
spec:
  repository: {{url: {url:?}, branch: main}}
  environments:
    - name: dev
      source: {{overlay: environments/dev}}
    - name: edge
      source: {{branch: env/edge, path: environments/edge}}
"
        ),
    )
    .expect("the test pipeline is valid")
}

struct Fixture {
    dir: tempfile::TempDir,
    work: Repo,
    remote: PathBuf,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let remote = bare_remote(&dir.path().join("remote/shop.git"));
        let work = Repo::init(&dir.path().join("work"));
        work.write(&[
            ("README.md", "# shop\n"),
            ("environments/dev/kustomization.yaml", DEV),
        ]);
        work.commit("dev overlay");
        work.git(&["remote", "add", "origin", remote.to_str().expect("utf-8")]);
        work.git(&["push", "-q", "origin", "main"]);
        work.git(&["checkout", "-q", "-b", "env/edge"]);
        work.write(&[(
            "environments/edge/kustomization.yaml",
            "images:\n- name: registry.example.com/shop/web\n  newTag: 0.9.0\n",
        )]);
        work.commit("edge");
        work.git(&["push", "-q", "origin", "env/edge"]);
        work.git(&["checkout", "-q", "main"]);
        Self { dir, work, remote }
    }

    fn url(&self) -> String {
        format!("file://{}", self.remote.display())
    }

    fn cache(&self, name: &str) -> Repository {
        Repository::open(
            &self.dir.path().join(name),
            RemoteUrl::new(self.url()),
            Credentials::None,
        )
        .expect("the cache opens")
    }

    fn remote_git(&self, args: &[&str]) -> String {
        git(&self.remote, args)
    }
}

fn web(tag: &str) -> SetImage {
    SetImage {
        source: "web".into(),
        kustomize_name: "registry.example.com/shop/web".into(),
        repository: "registry.example.com/shop/web".into(),
        tag: tag.into(),
        digest: None,
    }
}

fn api(tag: &str, digest: &str) -> SetImage {
    SetImage {
        source: "api".into(),
        kustomize_name: "api".into(),
        repository: "registry.example.com/shop/api".into(),
        tag: tag.into(),
        digest: Some(digest.into()),
    }
}

/// Holds the first push that reaches the remote until `open` exists, so that the test can push
/// a commit of its own between that push's fetch and its ref update.
fn gate_first_push(remote: &Path, gate: &Path) {
    std::fs::create_dir_all(gate).expect("gate dir");
    let hook = remote.join("hooks/pre-receive");
    std::fs::write(
        &hook,
        format!(
            "#!/bin/sh\nG='{}'\nif mkdir \"$G/claimed\" 2>/dev/null; then\n  touch \"$G/entered\"\n  \
             while [ ! -e \"$G/open\" ]; do sleep 0.05; done\nfi\ncat >/dev/null\nexit 0\n",
            gate.display()
        ),
    )
    .expect("hook written");
    let mut permissions = std::fs::metadata(&hook).expect("hook").permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut permissions, 0o755);
    std::fs::set_permissions(&hook, permissions).expect("hook executable");
}

#[test]
fn a_group_update_is_one_commit_that_edits_only_its_lines_and_is_redone_when_someone_pushed_first()
{
    let fx = Fixture::new();
    let gate = fx.dir.path().join("gate");
    gate_first_push(&fx.remote, &gate);
    let update = ImageUpdate {
        environment: "dev".into(),
        group: Some("shop".into()),
        images: vec![web("1.1.0"), api("2.1.0", "sha256:2222")],
    };
    let repo = fx.cache("cache");
    let pipeline = pipeline(&fx.url());
    let racing = {
        let (repo, pipeline, update) = (repo.clone(), pipeline.clone(), update.clone());
        std::thread::spawn(move || repo.set_images(&pipeline, &update, &options(), &|| Ok(())))
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !gate.join("entered").exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "no push reached the remote"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    fx.work.write(&[("README.md", "# shop\nforeign change\n")]);
    let foreign = fx.work.commit("docs");
    fx.work.git(&["push", "-q", "origin", "main"]);
    std::fs::write(gate.join("open"), "").expect("open the gate");

    let outcome = racing.join().expect("no panic").expect("the update lands");
    let Outcome::Pushed {
        commit, attempts, ..
    } = outcome
    else {
        panic!("a commit was pushed: {outcome:?}")
    };
    assert_eq!(attempts, 2, "the first push lost the race and was redone");
    let tip = fx.remote_git(&["rev-parse", "main"]);
    assert_eq!(tip, commit.to_string());
    assert_eq!(fx.remote_git(&["rev-parse", "main~1"]), foreign);
    assert_eq!(
        fx.remote_git(&["show", "-s", "--format=%B", "main"]),
        "Set images of group shop in dev: web 1.1.0, api 2.1.0\n\n\
         Stagehand-Image-Group: shop\n\
         Stagehand-Image-Source: web registry.example.com/shop/web:1.1.0\n\
         Stagehand-Image-Source: api registry.example.com/shop/api:2.1.0@sha256:2222"
    );
    assert_eq!(
        fx.remote_git(&["show", "main:environments/dev/kustomization.yaml"]),
        DEV.replace("newTag: \"1.0.0\"", "newTag: \"1.1.0\"")
            .replace(
                "newTag: 2.0.0 # pinned below when the source says so\n",
                "newTag: 2.1.0 # pinned below when the source says so\n    digest: sha256:2222\n"
            )
            .trim_end()
    );
    assert_eq!(
        fx.remote_git(&["diff", "--name-only", "main~1", "main"]),
        "environments/dev/kustomization.yaml",
        "one file, one commit"
    );
    assert_eq!(
        fx.remote_git(&["show", "main:README.md"]),
        "# shop\nforeign change"
    );

    // Again: the kustomization already says it.
    assert!(
        !repo.would_change(&pipeline, &update).expect("reads"),
        "nothing left to change"
    );
    let again = repo
        .set_images(&pipeline, &update, &options(), &|| Ok(()))
        .expect("reads");
    assert_eq!(again, Outcome::NoChange { commit });
}

#[test]
fn an_update_lands_on_the_branch_of_a_branch_model_environment() {
    let fx = Fixture::new();
    let repo = fx.cache("cache");
    let update = ImageUpdate {
        environment: "edge".into(),
        group: None,
        images: vec![web("1.1.0")],
    };
    let main_before = fx.remote_git(&["rev-parse", "main"]);
    let outcome = repo
        .set_images(&pipeline(&fx.url()), &update, &options(), &|| Ok(()))
        .expect("the update lands");
    assert!(
        matches!(outcome, Outcome::Pushed { attempts: 1, .. }),
        "{outcome:?}"
    );
    assert_eq!(fx.remote_git(&["rev-parse", "main"]), main_before);
    assert_eq!(
        fx.remote_git(&["show", "env/edge:environments/edge/kustomization.yaml"]),
        "images:\n- name: registry.example.com/shop/web\n  newTag: 1.1.0"
    );
    assert_eq!(
        fx.remote_git(&[
            "log",
            "-1",
            "--format=%s%n%(trailers:key=Stagehand-Image-Source,valueonly)",
            "env/edge"
        ]),
        "Set image web to 1.1.0 in edge\nweb registry.example.com/shop/web:1.1.0"
    );
}

#[test]
fn a_replica_that_lost_its_claim_pushes_nothing() {
    let fx = Fixture::new();
    let before = fx.remote_git(&["rev-parse", "main"]);
    let update = ImageUpdate {
        environment: "dev".into(),
        group: None,
        images: vec![web("1.1.0")],
    };
    let refused = fx
        .cache("cache")
        .set_images(&pipeline(&fx.url()), &update, &options(), &|| {
            Err("replica r1 is not the leader".into())
        })
        .expect_err("fenced");
    assert!(matches!(refused, Error::Fenced { .. }), "{refused:?}");
    assert_eq!(
        refused.to_string(),
        "not pushed: replica r1 is not the leader"
    );
    assert_eq!(fx.remote_git(&["rev-parse", "main"]), before);
}

/// The bearer token the tests' registries send with their notifications.
const REGISTRY_TOKEN: &str = "registry-notify-token-5c1e";

/// A repository of `registry` for one test, and what its tags point at.
struct Image<'r> {
    registry: &'r TestRegistry,
    /// The path in the registry, such as `img1a2b/web`.
    path: String,
}

impl Image<'_> {
    /// `127.0.0.1:PORT/PATH`, as the pipeline and kustomize name it.
    fn reference(&self) -> String {
        format!("{}/{}", self.registry.address, self.path)
    }

    fn push(&self, tag: &str) -> String {
        self.registry.push(&self.path, tag)
    }
}

/// A Git remote over HTTP with a `dev` overlay whose Deployment `web` (and `api`) run the
/// images the test's sources set, the pipeline file, and the state directory of a server.
struct Served {
    dir: tempfile::TempDir,
    remote: PathBuf,
    _http: GitHttpServer,
    pipeline: PathBuf,
    state: PathBuf,
    namespace: String,
    kube: kube::Client,
}

/// A Deployment running `image` (the name the kustomization's `images:` entry matches).
fn deployment(name: &str, image: &str) -> String {
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: {name}\nspec:\n  replicas: 1\n  \
         selector: {{matchLabels: {{app: {name}}}}}\n  template:\n    metadata: {{labels: {{app: {name}}}}}\n    \
         spec:\n      containers:\n        - name: {name}\n          image: {image}\n"
    )
}

impl Served {
    /// `images`: the `images:` entries of the overlay's kustomization as YAML list items;
    /// `sources`: the pipeline's `spec.images` items.
    async fn new(images: &str, sources: &str) -> Self {
        let kube = cluster().client().await;
        let namespace = cluster().namespace(&kube, "img").await;
        let dir = tempfile::tempdir().expect("temp dir");
        let remotes = dir.path().join("remotes");
        let remote = bare_remote(&remotes.join("shop.git"));
        let http = GitHttpServer::start(&remotes, None);
        let work = Repo::init(&dir.path().join("work"));
        work.write(&[
            (
                "environments/dev/kustomization.yaml",
                &format!(
                    "# dev: new images arrive here\napiVersion: kustomize.config.k8s.io/v1beta1\n\
                     kind: Kustomization\nnamespace: {namespace}\nresources: [web.yaml, api.yaml]\n\
                     images:\n{images}"
                ),
            ),
            ("environments/dev/web.yaml", &deployment("web", "web")),
            ("environments/dev/api.yaml", &deployment("api", "api")),
        ]);
        work.commit("dev overlay");
        work.git(&["remote", "add", "origin", &http.url("shop.git")]);
        work.git(&["push", "-q", "origin", "main"]);
        let state = dir.path().join("state");
        std::fs::create_dir_all(&state).expect("state dir");
        std::fs::write(dir.path().join("webhook-secret"), "git-webhook-secret\n")
            .expect("secret file");
        std::fs::write(
            dir.path().join("registry-token"),
            format!("{REGISTRY_TOKEN}\n"),
        )
        .expect("token file");
        let pipeline = dir.path().join("pipeline.yaml");
        std::fs::write(
            &pipeline,
            format!(
                "apiVersion: stagehand.dev/v1alpha1
kind: Pipeline
metadata: {{name: img{name}}}
spec:
  repository: {{url: {url}, branch: main}}
  images:
{sources}  environments:
    - name: dev
      source: {{overlay: environments/dev}}
      sync: {{interval: 1h}}
",
                name = &namespace[namespace.len() - 6..],
                url = http.url("shop.git"),
            ),
        )
        .expect("pipeline file");
        Self {
            dir,
            remote,
            _http: http,
            pipeline,
            state,
            namespace,
            kube,
        }
    }

    /// A file beside the pipeline holding `bytes`.
    fn file(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, bytes).expect("file written");
        path
    }

    fn start(&self) -> Server {
        self.start_at("127.0.0.1:0")
    }

    fn start_at(&self, http: &str) -> Server {
        let token = self.dir.path().join("registry-token");
        start_server_at(
            &self.pipeline,
            &self.state,
            &self.dir.path().join("webhook-secret"),
            http,
            &[
                "--registry-webhook-token-file",
                token.to_str().expect("UTF-8 path"),
                "--namespace",
                &self.namespace,
            ],
            &[],
        )
    }

    fn remote_git(&self, args: &[&str]) -> String {
        git(&self.remote, args)
    }

    fn tip(&self) -> String {
        self.remote_git(&["rev-parse", "main"])
    }

    /// Writes the `kubernetes.io/dockerconfigjson` Secret `name` in the service's namespace.
    async fn pull_secret(&self, name: &str, config: &[u8]) {
        let secret: Secret = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/dockerconfigjson",
            "metadata": {"name": name},
            "stringData": {".dockerconfigjson": String::from_utf8(config.to_vec()).expect("JSON")},
        }))
        .expect("a Secret");
        Api::<Secret>::namespaced(self.kube.clone(), &self.namespace)
            .patch(
                name,
                &PatchParams::apply("images-test").force(),
                &Patch::Apply(&secret),
            )
            .await
            .expect("the Secret is written");
    }

    /// The image the Deployment `name` runs in the apiserver.
    async fn running(&self, name: &str) -> Option<String> {
        Api::<Deployment>::namespaced(self.kube.clone(), &self.namespace)
            .get_opt(name)
            .await
            .expect("the apiserver answers")
            .map(|d| d.spec)
            .and_then(|s| s.template.spec)
            .and_then(|s| s.containers.first().and_then(|c| c.image.clone()))
    }
}

async fn sources(server: &Server) -> Vec<proto::ImageSource> {
    EnvironmentServiceClient::connect(server.grpc.clone())
        .await
        .expect("gRPC reachable")
        .list_image_sources(proto::ListImageSourcesRequest {})
        .await
        .expect("ListImageSources answers")
        .into_inner()
        .sources
}

async fn source(server: &Server, name: &str) -> proto::ImageSourceStatus {
    sources(server)
        .await
        .into_iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no image source {name}"))
        .status
        .unwrap_or_default()
}

/// Waits until source `name`'s status satisfies `wanted`, and returns it.
async fn until_source(
    server: &Server,
    name: &str,
    what: &str,
    wanted: impl Fn(&proto::ImageSourceStatus) -> bool,
) -> proto::ImageSourceStatus {
    until_source_or_show(server, name, what, wanted, &[]).await
}

/// As [`until_source`]; when it never happens, the failure shows the source's last status and
/// the end of each of `logs` (the server's, the registry's), as the temporary directory holding
/// them is gone once the test ends.
async fn until_source_or_show(
    server: &Server,
    name: &str,
    what: &str,
    wanted: impl Fn(&proto::ImageSourceStatus) -> bool,
    logs: &[&Path],
) -> proto::ImageSourceStatus {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    loop {
        let seen = source(server, name).await;
        if wanted(&seen) {
            return seen;
        }
        if std::time::Instant::now() > deadline {
            let tails: Vec<String> = logs
                .iter()
                .map(|log| {
                    let text = std::fs::read_to_string(log).unwrap_or_default();
                    let lines: Vec<&str> = text.lines().collect();
                    format!(
                        "--- {}:\n{}",
                        log.display(),
                        lines[lines.len().saturating_sub(60)..].join("\n")
                    )
                })
                .collect();
            panic!(
                "never happened: {what}; the source's last status: {seen:#?}\n{}",
                tails.join("\n")
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// A docker config.json for `registry` whose password is `password`.
fn config_with_password(registry: &TestRegistry, password: &str) -> Vec<u8> {
    use base64::Engine as _;
    let (user, _) = registry
        .credentials
        .clone()
        .expect("the shared registry asks for a login");
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    serde_json::to_vec(&serde_json::json!({"auths": {registry.address.clone(): {"auth": auth}}}))
        .expect("JSON")
}

/// Posts `body` to the registry webhook with `authorization`; the HTTP status.
fn post_registry_webhook(addr: SocketAddr, authorization: Option<&str>, body: &[u8]) -> u16 {
    let mut stream = TcpStream::connect(addr).expect("HTTP listener reachable");
    let mut request = format!(
        "POST /api/registry-webhook HTTP/1.1\r\nHost: {addr}\r\n\
         Content-Type: application/vnd.docker.distribution.events.v1+json\r\n\
         Content-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    if let Some(value) = authorization {
        request.push_str(&format!("Authorization: {value}\r\n"));
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

/// The notification docker-registry sends for a pushed manifest.
fn push_envelope(repository: &str, tag: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({"events": [{
        "id": "e1", "timestamp": "2026-01-01T00:00:00Z", "action": "push",
        "target": {"mediaType": "application/vnd.oci.image.manifest.v1+json", "size": 400,
                   "digest": "sha256:00", "repository": repository, "tag": tag},
        "request": {"id": "r1", "host": "127.0.0.1", "method": "PUT"},
    }]}))
    .expect("JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_tag_inside_the_policy_lands_as_one_commit_that_runs_in_the_first_environment_and_tags_outside_are_reported()
 {
    let registry = registry();
    let web = Image {
        registry,
        path: format!("img{}/web", unique_suffix()),
    };
    let first = web.push("1.0.0");
    web.push("2.0.0");
    web.push("1.1.0-rc.1");
    let served = Served::new(
        &format!(
            "  # moved by the image source web\n  - name: web\n    newName: {reference}\n    newTag: \"1.0.0\"\n    digest: {first}\n",
            reference = web.reference()
        ),
        &format!(
            "    - name: web\n      repository: {reference}\n      policy: {{semver: {{range: \">=1.0.0, <2\"}}}}\n      \
             pinDigest: true\n      credentialsFile: {config}\n      interval: 1s\n      kustomizeName: web\n",
            reference = web.reference(),
            config = served_config(registry).display(),
        ),
    )
    .await;
    let before = served.tip();
    let server = served.start();

    let seen = until_source(&server, "web", "the first look", |s| s.checks >= 1).await;
    assert_eq!(seen.error, "", "{seen:?}");
    assert_eq!(seen.tags, 3);
    assert_eq!(seen.chosen_tag, "1.0.0");
    assert_eq!(seen.digest, first);
    let reasons: Vec<(String, String)> = seen
        .skipped
        .iter()
        .map(|s| (s.tag.clone(), s.reason.clone()))
        .collect();
    assert!(
        reasons.contains(&("2.0.0".into(), "outside the range".into())),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|(tag, reason)| tag == "1.1.0-rc.1" && reason.contains("prerelease")),
        "{reasons:?}"
    );
    assert_eq!(seen.skipped_total, 2);
    assert_eq!(seen.current, format!("{}:1.0.0@{first}", web.reference()));
    eventually("1.0.0 runs in dev", || async {
        served.running("web").await == Some(format!("{}:1.0.0@{first}", web.reference()))
    })
    .await;
    assert_eq!(served.tip(), before, "nothing new, nothing committed");

    let second = web.push("1.1.0");
    let committed = until_source(&server, "web", "1.1.0 committed", |s| {
        s.chosen_tag == "1.1.0" && !s.last_commit.is_empty()
    })
    .await;
    assert_eq!(committed.digest, second);
    assert_eq!(committed.last_commit, served.tip());
    // Looks go on, and find nothing more to commit.
    let checks = committed.checks;
    until_source(&server, "web", "three more looks", |s| {
        s.checks >= checks + 3
    })
    .await;
    assert_eq!(
        served.remote_git(&["rev-list", "--count", &format!("{before}..main")]),
        "1",
        "one commit for one new tag"
    );
    assert_eq!(
        served.remote_git(&[
            "show",
            "-s",
            "--format=%s%n%(trailers:key=Stagehand-Image-Source,valueonly)",
            "main"
        ]),
        format!(
            "Set image web to 1.1.0 in dev\nweb {}:1.1.0@{second}",
            web.reference()
        )
    );
    let kustomization = served.remote_git(&["show", "main:environments/dev/kustomization.yaml"]);
    assert!(
        kustomization.contains(&format!(
            "  # moved by the image source web\n  - name: web\n    newName: {}\n    newTag: \"1.1.0\"\n    digest: {second}",
            web.reference()
        )),
        "{kustomization}"
    );
    eventually("1.1.0 runs in dev", || async {
        served.running("web").await == Some(format!("{}:1.1.0@{second}", web.reference()))
    })
    .await;

    let revisions = EnvironmentServiceClient::connect(server.grpc.clone())
        .await
        .expect("gRPC reachable")
        .list_revisions(proto::ListRevisionsRequest {
            name: "dev".into(),
            limit: 2,
        })
        .await
        .expect("ListRevisions answers")
        .into_inner()
        .revisions;
    assert_eq!(
        revisions
            .iter()
            .map(|r| r.images.clone())
            .collect::<Vec<_>>(),
        [
            vec![format!("{}:1.1.0@{second}", web.reference())],
            vec![format!("{}:1.0.0@{first}", web.reference())],
        ]
    );

    let mut cli = command(&["images", "-o", "json"]);
    cli.args(["--server", &server.grpc]);
    let shown = run_with(cli).json();
    assert_eq!(shown["sources"][0]["name"], "web");
    assert_eq!(shown["sources"][0]["status"]["chosenTag"], "1.1.0");
    assert_eq!(shown["sources"][0]["status"]["lastCommit"], served.tip());
    assert_eq!(shown["sources"][0]["policy"], "semver >=1.0.0, <2");
}

/// The shared registry's docker config.json, written once per test process.
fn served_config(registry: &TestRegistry) -> PathBuf {
    let path = std::env::temp_dir().join(format!(
        "stagehand-registry-config-{}.json",
        std::process::id()
    ));
    std::fs::write(&path, registry.docker_config()).expect("config written");
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_is_an_error_naming_the_registry_and_never_the_password() {
    let registry = registry();
    let web = Image {
        registry,
        path: format!("img{}/web", unique_suffix()),
    };
    web.push("1.0.0");
    const SENTINEL: &str = "wrong-password-7f3a91";
    let served = Served::new(
        "  - name: web\n    newTag: 0.9.0\n",
        &format!(
            "    - name: web\n      repository: {reference}\n      policy: {{semver: {{range: \">=1\"}}}}\n      \
             credentialsFile: CONFIG\n      interval: 1s\n      kustomizeName: web\n",
            reference = web.reference(),
        ),
    )
    .await;
    let config = served.file("config.json", &config_with_password(registry, SENTINEL));
    let text = std::fs::read_to_string(&served.pipeline).expect("pipeline");
    std::fs::write(
        &served.pipeline,
        text.replace("CONFIG", config.to_str().expect("UTF-8")),
    )
    .expect("pipeline");
    let before = served.tip();
    let server = served.start();

    let failed = until_source(&server, "web", "a failed look", |s| !s.error.is_empty()).await;
    assert!(
        failed.error.contains(&format!(
            "registry {}, repository {}: authentication failed",
            registry.address, web.path
        )),
        "{}",
        failed.error
    );
    assert!(!failed.error.contains(SENTINEL), "{}", failed.error);
    assert_eq!(failed.chosen_tag, "");
    let mut cli = command(&["images", "-o", "table"]);
    cli.args(["--server", &server.grpc]);
    let table = run_with(cli);
    assert_eq!(table.code, 0, "{}", table.stderr);
    assert!(
        table
            .stdout
            .contains(&format!("web: registry {}", registry.address)),
        "{}",
        table.stdout
    );
    assert!(!table.stdout.contains(SENTINEL));
    // Looks go on failing, and commit nothing.
    let checks = failed.checks;
    until_source(&server, "web", "two more looks", |s| s.checks >= checks + 2).await;
    assert_eq!(served.tip(), before);
    drop(server);
    let log = std::fs::read_to_string(served.state.join("server.log")).expect("server log");
    assert!(log.contains("authentication failed"), "the log says why");
    assert!(!log.contains(SENTINEL), "the log holds the password");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_commits_its_images_in_one_commit_and_nothing_while_one_of_them_fails() {
    let registry = registry();
    let suffix = unique_suffix();
    let web = Image {
        registry,
        path: format!("img{suffix}/web"),
    };
    let api = Image {
        registry,
        path: format!("img{suffix}/api"),
    };
    web.push("1.0.0");
    web.push("1.1.0");
    api.push("1.0.0");
    let api_digest = api.push("1.1.0");
    let served = Served::new(
        &format!(
            "  - name: web\n    newName: {web}\n    newTag: 1.0.0\n  - name: api\n    newName: {api}\n    newTag: 1.0.0\n",
            web = web.reference(),
            api = api.reference(),
        ),
        &format!(
            "    - {{name: web, repository: {web}, kustomizeName: web, group: shop, interval: 1s, credentialsFile: WEB, policy: {{semver: {{range: \">=1\"}}}}}}\n    \
             - {{name: api, repository: {api}, kustomizeName: api, group: shop, interval: 1s, credentialsSecret: {{name: api-pull}}, pinDigest: true, policy: {{semver: {{range: \">=1\"}}}}}}\n",
            web = web.reference(),
            api = api.reference(),
        ),
    )
    .await;
    let web_config = served.file("web.json", &registry.docker_config());
    served
        .pull_secret("api-pull", &registry.docker_config())
        .await;
    let text = std::fs::read_to_string(&served.pipeline).expect("pipeline");
    std::fs::write(
        &served.pipeline,
        text.replace("WEB", web_config.to_str().expect("UTF-8")),
    )
    .expect("pipeline");
    let before = served.tip();
    let server = served.start();

    let moved = until_source(&server, "api", "the group's commit", |s| {
        !s.last_commit.is_empty()
    })
    .await;
    assert_eq!(source(&server, "web").await.last_commit, moved.last_commit);
    assert_eq!(
        served.remote_git(&["rev-list", "--count", &format!("{before}..main")]),
        "1",
        "both images in one commit"
    );
    assert_eq!(
        served.remote_git(&["show", "-s", "--format=%B", "main"]),
        format!(
            "Set images of group shop in dev: web 1.1.0, api 1.1.0\n\n\
             Stagehand-Image-Group: shop\n\
             Stagehand-Image-Source: web {}:1.1.0\n\
             Stagehand-Image-Source: api {}:1.1.0@{api_digest}",
            web.reference(),
            api.reference()
        )
    );
    eventually("both run in dev", || async {
        served.running("web").await == Some(format!("{}:1.1.0", web.reference()))
            && served.running("api").await
                == Some(format!("{}:1.1.0@{api_digest}", api.reference()))
    })
    .await;

    // api's Secret is rotated to a login the registry refuses: web's new tag waits for it.
    let grouped = served.tip();
    served
        .pull_secret(
            "api-pull",
            &config_with_password(registry, "not-the-password"),
        )
        .await;
    web.push("1.2.0");
    let held = until_source(&server, "web", "web's 1.2.0 held back", |s| {
        s.chosen_tag == "1.2.0" && !s.error.is_empty()
    })
    .await;
    assert_eq!(
        held.error,
        "nothing committed for group shop: source api failed"
    );
    assert!(
        source(&server, "api")
            .await
            .error
            .contains("authentication failed"),
        "api says why"
    );
    assert_eq!(served.tip(), grouped, "nothing committed for the group");

    // Fixed: the group moves, api at the tag it had.
    served
        .pull_secret("api-pull", &registry.docker_config())
        .await;
    until_source(&server, "web", "web's 1.2.0 committed", |s| {
        s.error.is_empty() && s.last_commit != moved.last_commit
    })
    .await;
    assert_eq!(
        served.remote_git(&[
            "log",
            "-1",
            "--format=%(trailers:key=Stagehand-Image-Source,valueonly)",
            "main"
        ]),
        format!(
            "web {}:1.2.0\napi {}:1.1.0@{api_digest}",
            web.reference(),
            api.reference()
        )
    );
    assert_eq!(
        served.remote_git(&["rev-list", "--count", &format!("{grouped}..main")]),
        "1"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_registry_notification_is_refused_and_a_true_one_looks_at_once() {
    let registry = registry();
    let web = Image {
        registry,
        path: format!("img{}/web", unique_suffix()),
    };
    web.push("1.0.0");
    let served = Served::new(
        &format!("  - name: web\n    newName: {}\n    newTag: 1.0.0\n", web.reference()),
        &format!(
            "    - name: web\n      repository: {reference}\n      policy: {{semver: {{range: \">=1\"}}}}\n      \
             credentialsFile: {config}\n      interval: 1h\n      kustomizeName: web\n",
            reference = web.reference(),
            config = served_config(registry).display(),
        ),
    )
    .await;
    let before = served.tip();
    let server = served.start();
    until_source(&server, "web", "the look at start", |s| s.checks == 1).await;
    web.push("1.1.0");

    let envelope = push_envelope(&web.path, "1.1.0");
    assert_eq!(
        post_registry_webhook(server.http, Some("Bearer not-the-token"), &envelope),
        401
    );
    assert_eq!(post_registry_webhook(server.http, None, &envelope), 401);
    assert_eq!(
        post_registry_webhook(
            server.http,
            Some(&format!("Basic {REGISTRY_TOKEN}")),
            &envelope
        ),
        401
    );
    assert_eq!(
        post_registry_webhook(
            server.http,
            Some(&format!("Bearer {REGISTRY_TOKEN}")),
            b"{\"not\": \"an envelope\"}"
        ),
        400
    );
    let other = push_envelope("someone/else", "1.1.0");
    assert_eq!(
        post_registry_webhook(
            server.http,
            Some(&format!("Bearer {REGISTRY_TOKEN}")),
            &other
        ),
        202,
        "a push nobody follows is taken, and looks at nothing"
    );
    let status = source(&server, "web").await;
    assert_eq!((status.checks, status.chosen_tag.as_str()), (1, "1.0.0"));

    assert_eq!(
        post_registry_webhook(
            server.http,
            Some(&format!("Bearer {REGISTRY_TOKEN}")),
            &envelope
        ),
        202
    );
    let looked = until_source(&server, "web", "1.1.0 committed", |s| {
        !s.last_commit.is_empty()
    })
    .await;
    assert_eq!(looked.chosen_tag, "1.1.0");
    assert_eq!(
        looked.checks, 2,
        "one look at start, one for the true notification"
    );
    assert_eq!(looked.last_commit, served.tip());
    assert_ne!(served.tip(), before);

    // docker-registry notifies a push before the tag is listed (it links the tag after storing
    // the manifest, and notifies in between). The test sends the notification first on purpose,
    // the only part here not done by the registry itself, to make that window long: the source
    // looks again until the tag is listed, with the poll an hour away.
    let early = push_envelope(&web.path, "1.2.0");
    assert_eq!(
        post_registry_webhook(
            server.http,
            Some(&format!("Bearer {REGISTRY_TOKEN}")),
            &early
        ),
        202
    );
    until_source(&server, "web", "the look the notification asked for", |s| {
        s.checks >= 3
    })
    .await;
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let digest = web.push("1.2.0");
    let looked = until_source(&server, "web", "1.2.0 committed", |s| {
        s.chosen_tag == "1.2.0"
            && s.last_commit == served.tip()
            && s.last_commit != looked.last_commit
    })
    .await;
    assert_eq!(looked.digest, digest);
    assert!(looked.checks > 3, "{looked:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_the_registry_notifies_is_committed_without_waiting_for_the_poll() {
    let dir = tempfile::tempdir().expect("temp dir");
    // The registry must know the webhook's address before the server starts.
    let http = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    let own = TestRegistry::start(
        dir.path(),
        registry::Options {
            notify: Some(format!("http://{http}/api/registry-webhook")),
            notify_token: Some(REGISTRY_TOKEN.to_owned()),
            ..Default::default()
        },
    );
    let web = Image {
        registry: &own,
        path: "shop/web".into(),
    };
    web.push("1.0.0");
    let served = Served::new(
        &format!("  - name: web\n    newName: {}\n    newTag: 1.0.0\n", web.reference()),
        &format!(
            "    - name: web\n      repository: {reference}\n      policy: {{semver: {{range: \">=1\"}}}}\n      \
             credentialsFile: CONFIG\n      interval: 1h\n      kustomizeName: web\n",
            reference = web.reference(),
        ),
    )
    .await;
    let config = served.file("config.json", &own.docker_config());
    let text = std::fs::read_to_string(&served.pipeline).expect("pipeline");
    std::fs::write(
        &served.pipeline,
        text.replace("CONFIG", config.to_str().expect("UTF-8")),
    )
    .expect("pipeline");
    let server = served.start_at(&http.to_string());
    until_source(&server, "web", "the look at start", |s| s.checks >= 1).await;

    let digest = web.push("1.1.0");
    let looked = until_source_or_show(
        &server,
        "web",
        "1.1.0 committed after the registry's notification",
        |s| !s.last_commit.is_empty(),
        &[
            &served.state.join("server.log"),
            &dir.path().join("registry.log"),
        ],
    )
    .await;
    assert_eq!(
        (looked.chosen_tag.as_str(), looked.digest.as_str()),
        ("1.1.0", digest.as_str())
    );
    eventually("1.1.0 runs in dev", || async {
        served.running("web").await == Some(format!("{}:1.1.0", web.reference()))
    })
    .await;
}
