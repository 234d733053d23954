//! Promotions end to end: `stagehand serve` as its own process with a tokens file, a real Git
//! remote over HTTP, the real kube-apiserver, driven through the gRPC PromotionService. Git is
//! checked with the git CLI, the clusters through the Kubernetes API.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use stagehand::proto;
use stagehand::proto::environment_service_client::EnvironmentServiceClient;
use stagehand::proto::promotion_service_client::PromotionServiceClient;
use tonic::Code;
use tonic::transport::Channel;

use crate::service::{
    Server, app, eventually, generic_client, overlay, start_server_env, value_in, with_token,
};
use crate::support::cluster::cluster;
use crate::support::git::{Repo, bare_remote};
use crate::support::git_http::GitHttpServer;
use crate::support::tools::age_keygen;
use crate::support::{Tool, tool};

pub(crate) const ALICE: &str = "alice-token-releaser-71b2";
pub(crate) const BOB: &str = "bob-token-approver-0c9d";
const CAROL: &str = "carol-token-author-5e11";
pub(crate) const DAVE: &str = "dave-token-approver-a4f0";
pub(crate) const VERA: &str = "vera-token-viewer-33aa";
/// alice's second identity: an approver with alice's e-mail.
const ALICE_CI: &str = "alice-ci-token-approver-9e02";
/// An approver whose identity has no e-mail.
const NEMO: &str = "nemo-token-approver-71c3";
/// The e-mail the test repository's commits are authored with (support::git).
const AUTHOR_EMAIL: &str = "author@example.test";

type Promotions = PromotionServiceClient<Channel>;

pub(crate) fn state_of(p: &proto::Promotion) -> proto::PromotionState {
    proto::PromotionState::try_from(p.state).expect("a known state")
}

/// Encrypts `plain` (a Secret manifest) with the real sops to `recipient`.
pub(crate) fn sops_encrypt(dir: &Path, name: &str, plain: &str, recipient: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, plain).expect("plain secret written");
    let out = Command::new(tool(Tool::Sops))
        .args(["--encrypt", "--age", recipient])
        .args(["--encrypted-regex", "^(data|stringData)$"])
        .arg(&path)
        .output()
        .expect("sops runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::remove_file(&path).expect("plain secret removed");
    String::from_utf8(out.stdout).expect("sops prints UTF-8")
}

pub(crate) fn secret(value: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: db\ntype: Opaque\nstringData:\n  password: {value}\n"
    )
}

pub(crate) struct Fixture {
    _dir: tempfile::TempDir,
    pub(crate) work: Repo,
    pipeline: PathBuf,
    state: PathBuf,
    secret: PathBuf,
    pub(crate) tokens: PathBuf,
    pub(crate) key: PathBuf,
    namespaces: std::collections::HashMap<&'static str, String>,
    _http: GitHttpServer,
}

const ENVIRONMENTS: [&str; 6] = ["dev", "staging", "prod", "soaked", "secure", "qa"];

impl Fixture {
    pub(crate) async fn new(client: &kube::Client) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut namespaces = std::collections::HashMap::new();
        for env in ENVIRONMENTS {
            namespaces.insert(env, cluster().namespace(client, &format!("pr-{env}")).await);
        }
        let remotes = dir.path().join("remotes");
        bare_remote(&remotes.join("shop.git"));
        let http = GitHttpServer::start(&remotes, None);
        let key = dir.path().join("server.agekey");
        let recipient = age_keygen(&key);
        let wrong = age_keygen(&dir.path().join("wrong.agekey"));

        let work = Repo::init(&dir.path().join("work"));
        for env in ENVIRONMENTS {
            work.write(&[
                (
                    &format!("environments/{env}/kustomization.yaml"),
                    &overlay(&namespaces[env]),
                ),
                (
                    &format!("environments/{env}/app.yaml"),
                    &app(&format!("{env}-1")),
                ),
            ]);
        }
        // secure runs a Secret; dev holds a version of it that only the wrong key opens (dev
        // itself does not use it), which a promotion into secure would copy.
        let secure = format!(
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nnamespace: {}\nresources: [app.yaml, db.enc.yaml]\n",
            namespaces["secure"]
        );
        let scratch = dir.path().join("scratch");
        std::fs::create_dir_all(&scratch).expect("scratch dir");
        let good = sops_encrypt(&scratch, "good.yaml", &secret("secure-pw"), &recipient);
        let bad = sops_encrypt(&scratch, "bad.yaml", &secret("other-pw"), &wrong);
        work.write(&[
            ("environments/secure/kustomization.yaml", &secure),
            ("environments/secure/db.enc.yaml", &good),
            ("environments/dev/db.enc.yaml", &bad),
        ]);
        work.commit("six environments");
        work.git(&["remote", "add", "origin", &http.url("shop.git")]);
        work.git(&["push", "-q", "origin", "main"]);

        let state = dir.path().join("state");
        std::fs::create_dir_all(&state).expect("state dir");
        let secret = dir.path().join("webhook-secret");
        std::fs::write(&secret, "webhook-secret\n").expect("secret file");
        let hash = stagehand::api::auth::hash_token;
        let tokens = dir.path().join("tokens.yaml");
        std::fs::write(
            &tokens,
            format!(
                "apiVersion: stagehand.dev/v1alpha1
kind: Tokens
identities:
  - {{name: alice, email: alice@example.test, groups: [releasers], tokenSha256: [{}]}}
  - {{name: bob, email: bob@example.test, groups: [approvers], tokenSha256: [{}]}}
  - {{name: carol, email: {AUTHOR_EMAIL}, groups: [approvers], tokenSha256: [{}]}}
  - {{name: dave, email: dave@example.test, groups: [approvers], tokenSha256: [{}]}}
  - {{name: vera, email: vera@example.test, groups: [viewers], tokenSha256: [{}]}}
  - {{name: alice-ci, email: ALICE@example.test, groups: [approvers], tokenSha256: [{}]}}
  - {{name: nemo, groups: [approvers], tokenSha256: [{}]}}
",
                hash(ALICE),
                hash(BOB),
                hash(CAROL),
                hash(DAVE),
                hash(VERA),
                hash(ALICE_CI),
                hash(NEMO)
            ),
        )
        .expect("tokens file");
        let pipeline = dir.path().join("pipeline.yaml");
        let name = format!("pr{}", &namespaces["dev"][namespaces["dev"].len() - 6..]);
        std::fs::write(
            &pipeline,
            format!(
                "apiVersion: stagehand.dev/v1alpha1
kind: Pipeline
metadata: {{name: {name}}}
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
      approval: {{required: 1, groups: [approvers]}}
      promote: {{files: [app.yaml]}}
    - name: prod
      promotesFrom: staging
      source: {{overlay: environments/prod}}
      sync: {{interval: 1h}}
      approval: {{required: 2, groups: [approvers], allowAuthorApproval: false}}
      promote: {{files: [app.yaml]}}
    - name: soaked
      promotesFrom: dev
      source: {{overlay: environments/soaked}}
      sync: {{interval: 1h}}
      promotion: {{soak: 1h}}
      promote: {{files: [app.yaml]}}
    - name: secure
      promotesFrom: dev
      source: {{overlay: environments/secure}}
      sync: {{interval: 1h}}
      promote: {{files: [app.yaml, db.enc.yaml]}}
    - name: qa
      promotesFrom: dev
      source: {{overlay: environments/qa}}
      sync: {{interval: 1h}}
      promotion: {{auto: true}}
      promote: {{files: [app.yaml]}}
  access:
    - {{groups: [releasers], environments: [\"*\"], permissions: [view, request, rollback, sync, suspend]}}
    - {{groups: [approvers], environments: [\"*\"], permissions: [view, approve]}}
    - {{groups: [viewers], environments: [\"*\"], permissions: [view]}}
",
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
            key,
            namespaces,
            _http: http,
        }
    }

    pub(crate) fn start(&self) -> Server {
        let tokens = self.tokens.display().to_string();
        start_server_env(
            &self.pipeline,
            &self.state,
            &self.secret,
            &["--tokens-file", &tokens],
            &[("SOPS_AGE_KEY_FILE", self.key.as_path())],
        )
    }

    /// The remote's main branch as the git CLI sees it.
    fn remote_main(&self) -> String {
        self.work.git(&["fetch", "-q", "origin"]);
        self.work.git(&["rev-parse", "origin/main"])
    }

    /// The commits on the remote's main branch that carry promotion `id`.
    pub(crate) fn commits_of(&self, id: &str) -> Vec<String> {
        self.work.git(&["fetch", "-q", "origin"]);
        let out = self.work.git(&[
            "log",
            "origin/main",
            "--format=%H",
            &format!("--grep=^Stagehand-Promotion: {id}$"),
        ]);
        out.lines().map(str::to_owned).collect()
    }

    fn message_of(&self, commit: &str) -> String {
        self.work.git(&["log", "-1", "--format=%B", commit])
    }

    pub(crate) async fn value(&self, client: &kube::Client, env: &str) -> Option<String> {
        value_in(client, &self.namespaces[env]).await
    }
}

pub(crate) async fn get(api: &mut Promotions, token: &str, id: &str) -> proto::Promotion {
    api.get_promotion(with_token(
        token,
        proto::GetPromotionRequest { id: id.into() },
    ))
    .await
    .expect("GetPromotion answers")
    .into_inner()
}

/// Waits until promotion `id` reaches `state` (or fails the test when it ends elsewhere).
pub(crate) async fn until_state(
    api: &Promotions,
    token: &str,
    id: &str,
    state: proto::PromotionState,
) {
    eventually(&format!("promotion {id} reaches {state:?}"), || {
        let mut api = api.clone();
        async move {
            let p = get(&mut api, token, id).await;
            let now = state_of(&p);
            let terminal = matches!(
                now,
                proto::PromotionState::Succeeded
                    | proto::PromotionState::Failed
                    | proto::PromotionState::Rejected
                    | proto::PromotionState::Aborted
            );
            assert!(
                now == state || !terminal,
                "promotion {id} ended {now:?} ({}) instead of {state:?}",
                p.message
            );
            now == state
        }
    })
    .await;
}

pub(crate) async fn request(
    api: &mut Promotions,
    token: &str,
    target: &str,
    revision: &str,
) -> Result<proto::Promotion, tonic::Status> {
    api.request_promotion(with_token(
        token,
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

async fn approve(
    api: &mut Promotions,
    token: &str,
    id: &str,
) -> Result<proto::Promotion, tonic::Status> {
    api.approve_promotion(with_token(
        token,
        proto::ApprovePromotionRequest {
            id: id.into(),
            comment: "looks good".into(),
        },
    ))
    .await
    .map(tonic::Response::into_inner)
}

async fn applied(envs: &mut EnvironmentServiceClient<Channel>, name: &str) -> String {
    envs.get_environment(with_token(
        ALICE,
        proto::GetEnvironmentRequest { name: name.into() },
    ))
    .await
    .expect("GetEnvironment answers")
    .into_inner()
    .status
    .expect("a status")
    .applied_revision
}

/// Waits until the service reports `env` applied and Healthy (the cluster shows objects a
/// moment before the pass that applied them has finished).
pub(crate) async fn until_healthy(grpc: &str, token: &str, env: &str) -> String {
    let mut envs = EnvironmentServiceClient::connect(grpc.to_owned())
        .await
        .expect("gRPC reachable");
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        let status = envs
            .get_environment(with_token(
                token,
                proto::GetEnvironmentRequest { name: env.into() },
            ))
            .await
            .expect("GetEnvironment answers")
            .into_inner()
            .status
            .expect("a status");
        if !status.applied_revision.is_empty() && status.health == proto::Health::Healthy as i32 {
            return status.applied_revision;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{env} never became applied and Healthy: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promotions_move_dev_to_staging_to_prod_on_approval_and_a_rollback_holds_auto_promotion() {
    let kube = cluster().client().await;
    let fx = Fixture::new(&kube).await;
    let first = fx.remote_main();
    let server = fx.start();
    let channel = Channel::from_shared(server.grpc.clone())
        .expect("URL")
        .connect()
        .await
        .expect("gRPC reachable");
    let mut api = PromotionServiceClient::new(channel.clone());
    let mut envs = EnvironmentServiceClient::new(channel);

    // dev applies at start; qa, promoted automatically from dev, follows.
    eventually("dev runs dev-1", || async {
        fx.value(&kube, "dev").await.as_deref() == Some("dev-1")
    })
    .await;
    eventually("qa is promoted from dev by itself", || async {
        fx.value(&kube, "qa").await.as_deref() == Some("dev-1")
    })
    .await;
    let dev_revision = until_healthy(&server.grpc, ALICE, "dev").await;
    assert_eq!(dev_revision, first);

    // A viewer may not request; a releaser may.
    let denied = request(&mut api, VERA, "staging", "").await.unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    assert!(denied.message().contains("request"), "{denied:?}");
    let staging = request(&mut api, ALICE, "staging", "")
        .await
        .expect("requested");
    assert_eq!(
        staging.revision, dev_revision,
        "the source's running revision"
    );
    until_state(
        &api,
        ALICE,
        &staging.id,
        proto::PromotionState::AwaitingApproval,
    )
    .await;
    let waiting = get(&mut api, ALICE, &staging.id).await;
    assert_eq!(waiting.approvals_missing, 1);
    let blocker = &waiting.blockers[0];
    assert_eq!(blocker.kind, "approvals", "{waiting:?}");
    assert_eq!(blocker.groups, vec!["approvers".to_owned()]);
    assert!(blocker.message.contains("not alice"), "{blocker:?}");
    // The requester is no approver, and neither is a viewer.
    let own = approve(&mut api, ALICE, &staging.id).await.unwrap_err();
    assert_eq!(own.code(), Code::PermissionDenied, "{own:?}");
    let viewer = approve(&mut api, VERA, &staging.id).await.unwrap_err();
    assert_eq!(viewer.code(), Code::PermissionDenied, "{viewer:?}");
    approve(&mut api, BOB, &staging.id)
        .await
        .expect("bob approves");
    until_state(&api, ALICE, &staging.id, proto::PromotionState::Succeeded).await;
    assert_eq!(fx.value(&kube, "staging").await.as_deref(), Some("dev-1"));
    let landed = fx.commits_of(&staging.id);
    assert_eq!(landed.len(), 1, "exactly one promotion commit");
    let message = fx.message_of(&landed[0]);
    assert!(
        message.contains(&format!("Promoted-From: dev@{dev_revision}")),
        "{message}"
    );
    assert!(message.contains("Requested-By: alice"), "{message}");
    assert!(message.contains("Approved-By: bob"), "{message}");
    let done = get(&mut api, ALICE, &staging.id).await;
    assert_eq!(done.commit, landed[0]);
    let mut states: Vec<_> = done
        .transitions
        .iter()
        .map(|t| proto::PromotionState::try_from(t.to).expect("known"))
        .collect();
    // The Git step records each commit it pushes as a transition within Promoting.
    states.dedup();
    use proto::PromotionState as S;
    assert_eq!(
        states,
        [
            S::Pending,
            S::AwaitingApproval,
            S::Approved,
            S::Promoting,
            S::Syncing,
            S::Verifying,
            S::Succeeded
        ]
    );
    // Promoting what staging already runs is refused unless it is a re-run.
    let again = request(&mut api, ALICE, "staging", &dev_revision)
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::FailedPrecondition, "{again:?}");
    assert!(again.message().contains("already runs"), "{again:?}");

    // prod: two approvers, and nobody who wrote the promoted commits.
    let staging_revision = until_healthy(&server.grpc, ALICE, "staging").await;
    assert_eq!(staging_revision, landed[0]);
    let prod = request(&mut api, ALICE, "prod", "")
        .await
        .expect("requested");
    until_state(
        &api,
        ALICE,
        &prod.id,
        proto::PromotionState::AwaitingApproval,
    )
    .await;
    // A second request queues behind the first, and says so; its requester withdraws it.
    let second = request(&mut api, ALICE, "prod", "").await.expect("queued");
    let queued = get(&mut api, ALICE, &second.id).await;
    let behind = queued
        .blockers
        .iter()
        .find(|b| b.kind == "queue")
        .unwrap_or_else(|| panic!("no queue blocker: {queued:?}"));
    assert_eq!(behind.promotion_id, prod.id);
    let aborted = api
        .abort_promotion(with_token(
            ALICE,
            proto::AbortPromotionRequest {
                id: second.id.clone(),
                reason: "duplicate".into(),
            },
        ))
        .await
        .expect("aborted")
        .into_inner();
    assert_eq!(state_of(&aborted), S::Aborted);
    let author = approve(&mut api, CAROL, &prod.id).await.unwrap_err();
    assert_eq!(author.code(), Code::PermissionDenied, "{author:?}");
    assert!(author.message().contains(AUTHOR_EMAIL), "{author:?}");
    approve(&mut api, BOB, &prod.id)
        .await
        .expect("bob approves");
    let twice = approve(&mut api, BOB, &prod.id).await.expect("idempotent");
    assert_eq!(twice.approvals.len(), 1, "the same approver counts once");
    assert_eq!(twice.approvals_missing, 1);
    assert_eq!(
        state_of(&get(&mut api, ALICE, &prod.id).await),
        S::AwaitingApproval
    );
    approve(&mut api, DAVE, &prod.id)
        .await
        .expect("dave approves");
    until_state(&api, ALICE, &prod.id, S::Succeeded).await;
    assert_eq!(fx.value(&kube, "prod").await.as_deref(), Some("dev-1"));
    let prod_commits = fx.commits_of(&prod.id);
    assert_eq!(prod_commits.len(), 1);
    let message = fx.message_of(&prod_commits[0]);
    assert!(
        message.contains(&format!("Promoted-From: staging@{staging_revision}")),
        "{message}"
    );
    assert!(message.contains("Approved-By: bob") && message.contains("Approved-By: dave"));

    // Soak: dev has run its revision for seconds, not the hour soaked demands.
    let early = request(&mut api, ALICE, "soaked", "").await.unwrap_err();
    assert_eq!(early.code(), Code::FailedPrecondition, "{early:?}");
    assert!(early.message().contains("soak"), "{early:?}");

    // Pre-flight: the Secret secure would get only opens with a key secure does not have.
    let before = fx.remote_main();
    let secure = request(&mut api, ALICE, "secure", "")
        .await
        .expect("requested");
    until_state(&api, ALICE, &secure.id, S::Failed).await;
    let failed = get(&mut api, ALICE, &secure.id).await;
    assert!(failed.message.contains("pre-flight"), "{}", failed.message);
    assert!(failed.message.contains("db.enc.yaml"), "{}", failed.message);
    assert!(!failed.message.contains("other-pw"));
    assert_eq!(fx.remote_main(), before, "nothing reached the remote");
    assert_eq!(fx.value(&kube, "secure").await.as_deref(), Some("secure-1"));

    // Roll qa back to before its automatic promotion: it lands, stays, and holds auto-promotion.
    let rollback = api
        .rollback_environment(with_token(
            ALICE,
            proto::RollbackEnvironmentRequest {
                environment: "qa".into(),
                revision: first.clone(),
                reason: "bad release".into(),
            },
        ))
        .await
        .expect("rollback requested")
        .into_inner();
    assert!(rollback.rollback);
    until_state(&api, ALICE, &rollback.id, S::Succeeded).await;
    assert_eq!(fx.value(&kube, "qa").await.as_deref(), Some("qa-1"));
    let message = fx.message_of(&fx.commits_of(&rollback.id)[0]);
    assert!(
        message.contains(&format!("Rolled-Back-To: qa@{first}")),
        "{message}"
    );
    // dev moves on; qa is not promoted again, however many passes run.
    fx.work.git(&["pull", "-q", "--rebase", "origin", "main"]);
    fx.work
        .write(&[("environments/dev/app.yaml", &app("dev-2"))]);
    let dev2 = fx.work.commit("dev: dev-2");
    fx.work.git(&["push", "-q", "origin", "main"]);
    let sync = |name: &str| {
        with_token(
            ALICE,
            proto::SyncEnvironmentRequest {
                name: name.into(),
                fetch: true,
                wait: true,
            },
        )
    };
    envs.sync_environment(sync("dev")).await.expect("dev syncs");
    assert_eq!(applied(&mut envs, "dev").await, dev2);
    assert_eq!(fx.value(&kube, "dev").await.as_deref(), Some("dev-2"));
    for _ in 0..3 {
        envs.sync_environment(sync("qa")).await.expect("qa syncs");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert_eq!(fx.value(&kube, "qa").await.as_deref(), Some("qa-1"));
    let into_qa = api
        .list_promotions(with_token(
            ALICE,
            proto::ListPromotionsRequest {
                environment: "qa".into(),
                ..Default::default()
            },
        ))
        .await
        .expect("listed")
        .into_inner()
        .promotions;
    assert!(
        into_qa.iter().all(|p| p.revision != dev2),
        "no automatic promotion while held: {into_qa:?}"
    );
    api.resume_auto_promotion(with_token(
        ALICE,
        proto::ResumeAutoPromotionRequest {
            environment: "qa".into(),
        },
    ))
    .await
    .expect("resumed");
    eventually("qa follows dev again", || async {
        fx.value(&kube, "qa").await.as_deref() == Some("dev-2")
    })
    .await;

    // The audit log tells who did what.
    let events = api
        .list_audit_events(with_token(VERA, proto::ListAuditEventsRequest::default()))
        .await
        .expect("audit readable by a viewer")
        .into_inner()
        .events;
    let did = |actor: &str, action: &str, id: &str| {
        events.iter().any(|e| {
            e.actor == actor && e.action == action && (id.is_empty() || e.promotion_id == id)
        })
    };
    assert!(did("alice", "requested", &staging.id), "{events:?}");
    assert!(did("bob", "approved", &staging.id), "{events:?}");
    assert!(did("dave", "approved", &prod.id), "{events:?}");
    assert!(did("alice", "aborted", &second.id), "{events:?}");
    assert!(did("alice", "rolled_back", &rollback.id), "{events:?}");
    assert!(did("alice", "auto_promotion_held", ""), "{events:?}");
    assert!(did("alice", "auto_promotion_resumed", ""), "{events:?}");
    assert!(did("stagehand", "requested", ""), "{events:?}");
    let log = std::fs::read_to_string(fx.state.join("server.log")).expect("server log");
    for token in [ALICE, BOB, CAROL, DAVE, VERA] {
        assert!(!log.contains(token), "a token reached the log");
    }
    assert!(!log.contains("other-pw") && !log.contains("secure-pw"));
    drop(server);
}

/// A pipeline of `dev` and the given targets (each promoted from dev, copying app.yaml, with
/// `extra` YAML lines for its definition), served without tokens; `delay` slows every Git
/// request so that a test can catch a promotion in a state.
struct Small {
    _dir: tempfile::TempDir,
    work: Repo,
    pipeline: PathBuf,
    state: PathBuf,
    secret: PathBuf,
    namespaces: std::collections::HashMap<String, String>,
    _http: GitHttpServer,
}

impl Small {
    async fn new(client: &kube::Client, targets: &[(&str, &str)], delay: Duration) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let remotes = dir.path().join("remotes");
        bare_remote(&remotes.join("shop.git"));
        let http = GitHttpServer::start_slow(&remotes, None, delay);
        let work = Repo::init(&dir.path().join("work"));
        let mut namespaces = std::collections::HashMap::new();
        let mut definitions = String::new();
        for name in std::iter::once("dev").chain(targets.iter().map(|(n, _)| *n)) {
            let ns = cluster().namespace(client, &format!("pc-{name}")).await;
            work.write(&[
                (
                    &format!("environments/{name}/kustomization.yaml"),
                    &overlay(&ns),
                ),
                (
                    &format!("environments/{name}/app.yaml"),
                    &app(&format!("{name}-1")),
                ),
            ]);
            namespaces.insert(name.to_owned(), ns);
        }
        for (name, extra) in targets {
            definitions.push_str(&format!(
                "    - name: {name}
      promotesFrom: dev
      source: {{overlay: environments/{name}}}
      sync: {{interval: 1h}}
      promote: {{files: [app.yaml]}}
{extra}"
            ));
        }
        work.commit("environments");
        work.git(&["remote", "add", "origin", &http.url("shop.git")]);
        work.git(&["push", "-q", "origin", "main"]);
        let state = dir.path().join("state");
        std::fs::create_dir_all(&state).expect("state dir");
        let secret = dir.path().join("webhook-secret");
        std::fs::write(&secret, "webhook-secret\n").expect("secret file");
        let pipeline = dir.path().join("pipeline.yaml");
        let name = format!("pc{}", &namespaces["dev"][namespaces["dev"].len() - 6..]);
        std::fs::write(
            &pipeline,
            format!(
                "apiVersion: stagehand.dev/v1alpha1
kind: Pipeline
metadata: {{name: {name}}}
spec:
  repository: {{url: {url}, branch: main}}
  environments:
    - name: dev
      source: {{overlay: environments/dev}}
      sync: {{interval: 1h}}
{definitions}",
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
            namespaces,
            _http: http,
        }
    }

    fn start(&self) -> Server {
        start_server_env(&self.pipeline, &self.state, &self.secret, &[], &[])
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

    async fn value(&self, client: &kube::Client, env: &str) -> Option<String> {
        value_in(client, &self.namespaces[env]).await
    }
}

async fn connect(server: &Server) -> Promotions {
    PromotionServiceClient::connect(server.grpc.clone())
        .await
        .expect("gRPC reachable")
}

async fn request_anonymous(api: &mut Promotions, target: &str) -> proto::Promotion {
    api.request_promotion(proto::RequestPromotionRequest {
        target_environment: target.into(),
        revision: String::new(),
        reason: "release".into(),
        rerun: false,
    })
    .await
    .expect("requested")
    .into_inner()
}

async fn state_now(api: &mut Promotions, id: &str) -> proto::PromotionState {
    state_of(
        &api.get_promotion(proto::GetPromotionRequest { id: id.into() })
            .await
            .expect("GetPromotion answers")
            .into_inner(),
    )
}

/// An absolute freeze window from a minute ago until `seconds` from now.
fn freeze_for(seconds: i64) -> String {
    let now = jiff::Timestamp::now();
    let from = now - jiff::SignedDuration::from_secs(60);
    let until = now + jiff::SignedDuration::from_secs(seconds);
    format!("      freezeWindows: [{{from: \"{from}\", until: \"{until}\", reason: test}}]\n")
}

fn verify_job() -> String {
    "apiVersion: batch/v1
kind: Job
metadata: {name: check}
spec:
  template:
    spec:
      restartPolicy: Never
      containers: [{name: check, image: busybox}]
"
    .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promotion_killed_in_each_state_resumes_after_a_restart_and_lands_exactly_one_commit() {
    use proto::PromotionState as S;
    let kube = cluster().client().await;
    // Each target is where one state lasts long enough to be killed in: a freeze window holds
    // `approved` in Approved; the slow Git remote stretches Promoting and Syncing; the
    // verification Job (no kubelet runs it) holds `verifying` in Verifying.
    let fx = Small::new(
        &kube,
        &[
            ("approved", &freeze_for(40)),
            ("promoting", ""),
            ("syncing", ""),
            ("verifying", "      verify: {job: check}\n"),
        ],
        Duration::from_millis(700),
    )
    .await;
    // The verification Job lives in the target overlay (it is not promoted).
    let kustomization = format!(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nnamespace: {}\nresources: [app.yaml, job.yaml]\n",
        fx.namespaces["verifying"]
    );
    fx.work.write(&[
        ("environments/verifying/kustomization.yaml", &kustomization),
        ("environments/verifying/job.yaml", &verify_job()),
    ]);
    fx.work.commit("verification job");
    fx.work.git(&["push", "-q", "origin", "main"]);
    let mut server = fx.start();
    let mut api = connect(&server).await;
    until_healthy(&server.grpc, "", "dev").await;

    for (target, state) in [
        ("approved", S::Approved),
        ("promoting", S::Promoting),
        ("syncing", S::Syncing),
        ("verifying", S::Verifying),
    ] {
        let promotion = request_anonymous(&mut api, target).await;
        let deadline = std::time::Instant::now() + Duration::from_secs(90);
        loop {
            let now = state_now(&mut api, &promotion.id).await;
            if now == state {
                break;
            }
            assert!(
                !matches!(now, S::Succeeded | S::Failed | S::Aborted | S::Rejected),
                "{target}: ended {now:?} before it could be caught in {state:?}"
            );
            assert!(
                std::time::Instant::now() < deadline,
                "{target}: never {state:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        server.child.kill().expect("SIGKILL");
        server.child.wait().expect("reaped");
        server = fx.start();
        api = connect(&server).await;
        if target == "verifying" {
            // What a kubelet would report: the Job succeeded.
            let jobs: kube::Api<k8s_openapi::api::batch::v1::Job> =
                kube::Api::namespaced(kube.clone(), &fx.namespaces["verifying"]);
            eventually("the Job exists", || async {
                jobs.get_opt("check")
                    .await
                    .expect("apiserver answers")
                    .is_some()
            })
            .await;
            jobs.patch_status(
                "check",
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(serde_json::json!({"status": {"conditions": [
                    {"type": "Complete", "status": "True", "reason": "Done", "message": "ok"}
                ]}})),
            )
            .await
            .expect("Job status set");
        }
        until_state(&api, "", &promotion.id, S::Succeeded).await;
        assert_eq!(
            fx.commits_of(&promotion.id).len(),
            1,
            "{target}: exactly one promotion commit"
        );
        assert_eq!(fx.value(&kube, target).await.as_deref(), Some("dev-1"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn freeze_windows_hold_promotions_until_an_override_or_their_end_and_a_generic_client_drives_one()
 {
    use proto::PromotionState as S;
    let kube = cluster().client().await;
    let fx = Small::new(
        &kube,
        &[
            ("frozen", &freeze_for(3600)),
            ("thawing", &freeze_for(20)),
            (
                "replaced",
                &format!("{}      promotion: {{supersede: true}}\n", freeze_for(3600)),
            ),
            (
                "gated",
                "      approval: {required: 1, allowSelfApproval: true}\n",
            ),
            (
                "early",
                &format!(
                    "{}      approval: {{required: 1, allowSelfApproval: true}}\n",
                    freeze_for(3600)
                ),
            ),
        ],
        Duration::ZERO,
    )
    .await;
    let server = fx.start();
    let mut api = connect(&server).await;
    until_healthy(&server.grpc, "", "dev").await;

    // Held by a window of an hour: it says until when, and goes on after an override.
    let frozen = request_anonymous(&mut api, "frozen").await;
    until_state(&api, "", &frozen.id, S::Approved).await;
    let held = api
        .get_promotion(proto::GetPromotionRequest {
            id: frozen.id.clone(),
        })
        .await
        .expect("answers")
        .into_inner();
    let freeze = held
        .blockers
        .iter()
        .find(|b| b.kind == "freeze")
        .unwrap_or_else(|| panic!("no freeze blocker: {held:?}"));
    assert!(
        freeze.until.is_some() && freeze.message.contains("test"),
        "{freeze:?}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        state_now(&mut api, &frozen.id).await,
        S::Approved,
        "still held"
    );
    let no_reason = api
        .override_freeze(proto::OverrideFreezeRequest {
            id: frozen.id.clone(),
            reason: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(no_reason.code(), Code::InvalidArgument);
    api.override_freeze(proto::OverrideFreezeRequest {
        id: frozen.id.clone(),
        reason: "hotfix".into(),
    })
    .await
    .expect("overridden");
    until_state(&api, "", &frozen.id, S::Succeeded).await;
    assert_eq!(fx.value(&kube, "frozen").await.as_deref(), Some("dev-1"));

    // Held by a window that ends on its own.
    let thawing = request_anonymous(&mut api, "thawing").await;
    until_state(&api, "", &thawing.id, S::Approved).await;
    let waiting = api
        .get_promotion(proto::GetPromotionRequest {
            id: thawing.id.clone(),
        })
        .await
        .expect("answers")
        .into_inner();
    let window_end = waiting
        .blockers
        .iter()
        .find(|b| b.kind == "freeze")
        .and_then(|b| b.until)
        .unwrap_or_else(|| panic!("held by the window: {waiting:?}"));
    until_state(&api, "", &thawing.id, S::Succeeded).await;
    let done = api
        .get_promotion(proto::GetPromotionRequest {
            id: thawing.id.clone(),
        })
        .await
        .expect("answers")
        .into_inner();
    let promoting_at = done
        .transitions
        .iter()
        .find(|t| t.to == S::Promoting as i32)
        .and_then(|t| t.time)
        .expect("went through Promoting");
    assert!(
        (promoting_at.seconds, promoting_at.nanos) >= (window_end.seconds, window_end.nanos),
        "it went on only once the window ended: {promoting_at:?} vs {window_end:?}"
    );

    // An override given before the approvals, most likely while the pre-flight runs, holds
    // once they arrive.
    let early = request_anonymous(&mut api, "early").await;
    api.override_freeze(proto::OverrideFreezeRequest {
        id: early.id.clone(),
        reason: "hotfix before approval".into(),
    })
    .await
    .expect("overridden before the approvals");
    until_state(&api, "", &early.id, S::AwaitingApproval).await;
    api.approve_promotion(proto::ApprovePromotionRequest {
        id: early.id.clone(),
        comment: String::new(),
    })
    .await
    .expect("approved");
    until_state(&api, "", &early.id, S::Succeeded).await;

    // A newer request replaces one still waiting, where the policy says so.
    let older = request_anonymous(&mut api, "replaced").await;
    until_state(&api, "", &older.id, S::Approved).await;
    let newer = request_anonymous(&mut api, "replaced").await;
    until_state(&api, "", &older.id, S::Aborted).await;
    let replaced = api
        .get_promotion(proto::GetPromotionRequest {
            id: older.id.clone(),
        })
        .await
        .expect("answers")
        .into_inner();
    assert!(
        replaced
            .message
            .contains(&format!("superseded by promotion {}", newer.id)),
        "{}",
        replaced.message
    );

    // A client that knows only reflection requests, approves, watches and reads the audit.
    let addr = server.grpc.trim_start_matches("http://").to_owned();
    let requested = generic_client(&[
        &addr,
        "call",
        "stagehand.v1.PromotionService/RequestPromotion",
        r#"{"targetEnvironment": "gated", "reason": "from python"}"#,
    ]);
    let id = requested["id"].as_str().expect("an id").to_owned();
    let approved = generic_client(&[
        &addr,
        "call",
        "stagehand.v1.PromotionService/ApprovePromotion",
        &format!(r#"{{"id": "{id}", "comment": "ok"}}"#),
    ]);
    assert_eq!(
        approved["approvals"][0]["approver"], "anonymous",
        "{approved}"
    );
    let watched = generic_client(&[
        &addr,
        "stream",
        "stagehand.v1.PromotionService/WatchPromotion",
        &format!(r#"{{"id": "{id}"}}"#),
        "100",
    ]);
    let states: Vec<&str> = watched
        .as_array()
        .expect("a list")
        .iter()
        .filter_map(|p| p["state"].as_str())
        .collect();
    assert_eq!(
        states.last(),
        Some(&"PROMOTION_STATE_SUCCEEDED"),
        "{watched}"
    );
    let audit = generic_client(&[
        &addr,
        "call",
        "stagehand.v1.PromotionService/ListAuditEvents",
        r#"{"environment": "gated"}"#,
    ]);
    let actions: Vec<&str> = audit["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    assert!(
        actions.contains(&"requested") && actions.contains(&"approved"),
        "{audit}"
    );
    let overrides = api
        .list_audit_events(proto::ListAuditEventsRequest {
            environment: "frozen".into(),
            actions: vec!["overrode".into()],
            ..Default::default()
        })
        .await
        .expect("audit")
        .into_inner()
        .events;
    assert_eq!(overrides.len(), 1);
    assert!(overrides[0].reason.contains("hotfix"), "{overrides:?}");
    assert_eq!(fx.value(&kube, "gated").await.as_deref(), Some("dev-1"));
}

async fn rollback(
    api: &mut Promotions,
    environment: &str,
    revision: &str,
) -> Result<proto::Promotion, tonic::Status> {
    api.rollback_environment(with_token(
        ALICE,
        proto::RollbackEnvironmentRequest {
            environment: environment.into(),
            revision: revision.into(),
            reason: "restore".into(),
        },
    ))
    .await
    .map(tonic::Response::into_inner)
}

async fn promotion_count(api: &mut Promotions, environment: &str) -> usize {
    api.list_promotions(with_token(
        ALICE,
        proto::ListPromotionsRequest {
            environment: environment.into(),
            page_size: 1000,
            ..Default::default()
        },
    ))
    .await
    .expect("ListPromotions answers")
    .into_inner()
    .promotions
    .len()
}

async fn audit_actions(api: &mut Promotions, id: &str) -> Vec<String> {
    api.list_audit_events(with_token(
        ALICE,
        proto::ListAuditEventsRequest {
            promotion_id: id.into(),
            page_size: 1000,
            ..Default::default()
        },
    ))
    .await
    .expect("ListAuditEvents answers")
    .into_inner()
    .events
    .into_iter()
    .map(|e| e.action)
    .collect()
}

/// Someone who can push to the repository, or who holds one permission, tries to move content
/// nobody reviewed, to approve their own change under a second identity, to pass a forged
/// commit off as a landed promotion, and to approve what was already rejected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_reviewed_content_moves_and_four_eyes_mean_two_people() {
    let kube = cluster().client().await;
    let fx = Fixture::new(&kube).await;
    let server = fx.start();
    let channel = Channel::from_shared(server.grpc.clone())
        .expect("URL")
        .connect()
        .await
        .expect("gRPC reachable");
    let mut api = PromotionServiceClient::new(channel.clone());
    let mut envs = EnvironmentServiceClient::new(channel);
    let dev_revision = until_healthy(&server.grpc, ALICE, "dev").await;
    until_healthy(&server.grpc, ALICE, "staging").await;

    // A commit on a feature branch, and a candidate commit the service wrote for a preview:
    // neither is in staging's or dev's history.
    fx.work.git(&["checkout", "-q", "-b", "feature-x"]);
    fx.work
        .write(&[("environments/staging/app.yaml", &app("unreviewed"))]);
    let feature = fx.work.commit("feature: unreviewed");
    fx.work.git(&["push", "-q", "origin", "feature-x"]);
    fx.work.git(&["checkout", "-q", "main"]);
    let preview = api
        .preview_promotion(with_token(
            ALICE,
            proto::PreviewPromotionRequest {
                target_environment: "staging".into(),
                revision: String::new(),
            },
        ))
        .await
        .expect("preview answers")
        .into_inner();
    let main_before = fx.remote_main();
    let before = promotion_count(&mut api, "staging").await;
    assert!(!preview.candidate_commit.is_empty(), "{preview:?}");
    for revision in [feature.as_str(), preview.candidate_commit.as_str()] {
        let refused = rollback(&mut api, "staging", revision).await.unwrap_err();
        assert_eq!(
            refused.code(),
            Code::InvalidArgument,
            "{revision}: {refused:?}"
        );
        assert!(
            refused.message().contains("not in the history"),
            "{refused:?}"
        );
    }
    let branch = rollback(&mut api, "staging", "origin/feature-x")
        .await
        .unwrap_err();
    assert_eq!(branch.code(), Code::InvalidArgument, "{branch:?}");
    let named = request(&mut api, ALICE, "staging", &feature)
        .await
        .unwrap_err();
    assert_eq!(named.code(), Code::InvalidArgument, "{named:?}");
    assert_eq!(fx.remote_main(), main_before, "nothing reached Git");
    assert_eq!(
        promotion_count(&mut api, "staging").await,
        before,
        "nothing stored"
    );
    assert_eq!(
        fx.value(&kube, "staging").await.as_deref(),
        Some("staging-1"),
        "nothing reached the cluster"
    );

    // A commit that touches only another environment does not change what staging runs:
    // promoting the revision staging ran before it still works.
    let staging_ran = applied(&mut envs, "staging").await;
    fx.work
        .write(&[("environments/soaked/app.yaml", &app("soaked-2"))]);
    fx.work.commit("soaked only");
    push_main(&fx.work);
    let moved = fx.remote_main();
    sync_now(&mut envs, "staging").await;
    eventually("staging applies the moved trunk", || {
        let mut envs = envs.clone();
        let moved = moved.clone();
        async move { applied(&mut envs, "staging").await == moved }
    })
    .await;
    let prod = request(&mut api, ALICE, "prod", &staging_ran)
        .await
        .expect("what staging runs may be named by the commit it ran it at");
    abort(&mut api, &prod.id).await;

    // alice asks; her second identity (same e-mail, in the approvers group) may not approve.
    // bob writes dev's change (staging lets authors approve; prod does not).
    fx.work
        .write(&[("environments/dev/app.yaml", &app("dev-2"))]);
    fx.work.git(&["add", "-A"]);
    fx.work.git(&[
        "commit",
        "-q",
        "--author",
        "Bob <bob@example.test>",
        "-m",
        "dev 2",
    ]);
    push_main(&fx.work);
    let dev_now = fx.remote_main();
    sync_now(&mut envs, "dev").await;
    eventually("dev runs dev-2", || async {
        fx.value(&kube, "dev").await.as_deref() == Some("dev-2")
    })
    .await;
    until_healthy(&server.grpc, ALICE, "dev").await;
    assert_ne!(dev_now, dev_revision);
    let staging = request(&mut api, ALICE, "staging", "")
        .await
        .expect("requested");
    until_state(
        &api,
        ALICE,
        &staging.id,
        proto::PromotionState::AwaitingApproval,
    )
    .await;
    let twin = approve(&mut api, ALICE_CI, &staging.id).await.unwrap_err();
    assert_eq!(twin.code(), Code::PermissionDenied, "{twin:?}");
    assert!(
        twin.message().contains("requested this promotion"),
        "{twin:?}"
    );
    // So is a viewer's attempt, refused for want of the permission.
    let viewer = approve(&mut api, VERA, &staging.id).await.unwrap_err();
    assert_eq!(viewer.code(), Code::PermissionDenied, "{viewer:?}");
    let refusals = audit_actions(&mut api, &staging.id)
        .await
        .into_iter()
        .filter(|action| action == "approval_refused")
        .count();
    assert_eq!(refusals, 2, "both refused approvals are audited");
    assert_eq!(get(&mut api, ALICE, &staging.id).await.approvals.len(), 0);

    // Someone pushes a commit carrying the promotion's id before it is approved: it is not
    // taken for the promotion, which lands its own commit.
    fx.work
        .write(&[("environments/staging/app.yaml", &app("forged"))]);
    fx.work.commit(&format!(
        "Promote dev to staging\n\nStagehand-Promotion: {}\nApproved-By: bob\n",
        staging.id
    ));
    push_main(&fx.work);
    let forged = fx.work.git(&["rev-parse", "HEAD"]);
    approve(&mut api, BOB, &staging.id)
        .await
        .expect("bob approves");
    until_state(&api, ALICE, &staging.id, proto::PromotionState::Succeeded).await;
    let done = get(&mut api, ALICE, &staging.id).await;
    assert_ne!(
        done.commit, forged,
        "the forged commit is not the promotion"
    );
    assert_eq!(fx.commits_of(&staging.id).len(), 2, "forged and real");
    assert_eq!(fx.value(&kube, "staging").await.as_deref(), Some("dev-2"));
    let revisions = envs
        .list_revisions(with_token(
            ALICE,
            proto::ListRevisionsRequest {
                name: "staging".into(),
                limit: 50,
            },
        ))
        .await
        .expect("ListRevisions answers")
        .into_inner()
        .revisions;
    let real = revisions
        .iter()
        .find(|r| r.commit == done.commit)
        .expect("the promotion commit is a staging revision");
    assert!(real.verified, "{real:?}");
    assert!(
        revisions
            .iter()
            .filter(|r| r.promotion_id == staging.id && r.commit != done.commit)
            .all(|r| !r.verified),
        "{revisions:?}"
    );

    // Approving a promotion that has ended is refused and writes nothing.
    let events = audit_actions(&mut api, &staging.id).await.len();
    let late = approve(&mut api, DAVE, &staging.id).await.unwrap_err();
    assert_eq!(late.code(), Code::FailedPrecondition, "{late:?}");
    assert_eq!(audit_actions(&mut api, &staging.id).await.len(), events);

    // A rollback records who wrote the content it restores, and the author rule applies:
    // prod's first files were written by carol's e-mail.
    let prod_first = applied(&mut envs, "prod").await;
    fx.work
        .write(&[("environments/prod/app.yaml", &app("hand-edit"))]);
    fx.work.commit("prod: by hand");
    push_main(&fx.work);
    sync_now(&mut envs, "prod").await;
    let restore = rollback(&mut api, "prod", &prod_first)
        .await
        .expect("prod's own earlier revision may be restored");
    until_state(
        &api,
        ALICE,
        &restore.id,
        proto::PromotionState::AwaitingApproval,
    )
    .await;
    let waiting = get(&mut api, ALICE, &restore.id).await;
    assert!(
        waiting.blockers[0].message.contains(AUTHOR_EMAIL),
        "{waiting:?}"
    );
    let author = approve(&mut api, CAROL, &restore.id).await.unwrap_err();
    assert_eq!(author.code(), Code::PermissionDenied, "{author:?}");
    assert!(author.message().contains("author"), "{author:?}");
    // Without an e-mail nobody can tell whether nemo wrote it.
    let unknown = approve(&mut api, NEMO, &restore.id).await.unwrap_err();
    assert_eq!(unknown.code(), Code::PermissionDenied, "{unknown:?}");
    assert!(unknown.message().contains("no e-mail"), "{unknown:?}");
    approve(&mut api, BOB, &restore.id)
        .await
        .expect("bob did not write it");

    // bob's dev change reached staging in a promotion commit that Stagehand wrote; promoting it
    // on into prod still counts bob among its authors.
    let onward = request(&mut api, ALICE, "prod", "")
        .await
        .expect("requested");
    until_state(
        &api,
        ALICE,
        &onward.id,
        proto::PromotionState::AwaitingApproval,
    )
    .await;
    let own = approve(&mut api, BOB, &onward.id).await.unwrap_err();
    assert_eq!(own.code(), Code::PermissionDenied, "{own:?}");
    assert!(own.message().contains("bob@example.test"), "{own:?}");
    approve(&mut api, DAVE, &onward.id)
        .await
        .expect("dave wrote none of it");
}

async fn abort(api: &mut Promotions, id: &str) {
    api.abort_promotion(with_token(
        ALICE,
        proto::AbortPromotionRequest {
            id: id.into(),
            reason: "not now".into(),
        },
    ))
    .await
    .expect("abort answers");
}

/// Pushes main after taking what the service committed meanwhile (qa promotes by itself).
fn push_main(work: &Repo) {
    for _ in 0..10 {
        work.git(&["pull", "-q", "--rebase", "origin", "main"]);
        let pushed = Command::new("git")
            .args(["push", "-q", "origin", "main"])
            .current_dir(&work.dir)
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .status()
            .expect("git runs");
        if pushed.success() {
            return;
        }
    }
    panic!("main kept moving under ten pushes");
}

/// Fetches and syncs `name` now, as a person would after pushing.
async fn sync_now(envs: &mut EnvironmentServiceClient<Channel>, name: &str) {
    envs.sync_environment(with_token(
        ALICE,
        proto::SyncEnvironmentRequest {
            name: name.into(),
            fetch: true,
            wait: true,
        },
    ))
    .await
    .expect("the environment syncs");
}

/// Installs `script` as the remote's pre-receive hook.
fn remote_hook(fx: &Fixture, script: &str) {
    let hook = fx._dir.path().join("remotes/shop.git/hooks/pre-receive");
    std::fs::write(&hook, script).expect("hook written");
    let mut permissions = std::fs::metadata(&hook).expect("hook").permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut permissions, 0o755);
    std::fs::set_permissions(&hook, permissions).expect("hook executable");
}

async fn approved_by_bob(api: &mut Promotions, target: &str) -> proto::Promotion {
    let promotion = request(api, ALICE, target, "").await.expect("requested");
    until_state(
        api,
        ALICE,
        &promotion.id,
        proto::PromotionState::AwaitingApproval,
    )
    .await;
    approve(api, BOB, &promotion.id)
        .await
        .expect("bob approves");
    promotion
}

/// A remote that keeps declining the push ends the promotion, and the next one into the target
/// goes on; approvals count with the approver's groups of now; a promotion past Git that waits
/// on a suspended target says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declining_remote_fails_a_promotion_and_approvals_follow_the_tokens_file() {
    let kube = cluster().client().await;
    let fx = Fixture::new(&kube).await;
    let server = fx.start();
    let channel = Channel::from_shared(server.grpc.clone())
        .expect("URL")
        .connect()
        .await
        .expect("gRPC reachable");
    let mut api = PromotionServiceClient::new(channel.clone());
    let mut envs = EnvironmentServiceClient::new(channel);
    until_healthy(&server.grpc, ALICE, "dev").await;

    remote_hook(
        &fx,
        "#!/bin/sh\ncat >/dev/null\necho 'main is a protected branch' >&2\nexit 1\n",
    );
    let before = fx.remote_main();
    let declined = approved_by_bob(&mut api, "staging").await;
    until_state(&api, ALICE, &declined.id, proto::PromotionState::Failed).await;
    let failed = get(&mut api, ALICE, &declined.id).await;
    assert!(
        failed.message.contains("main is a protected branch")
            && failed.message.contains("after 5 attempts"),
        "{failed:?}"
    );
    assert_eq!(
        failed.approvals_missing, 0,
        "an ended promotion misses nothing"
    );
    assert!(failed.blockers.is_empty(), "{failed:?}");
    assert_eq!(fx.remote_main(), before, "nothing reached Git");

    // The remote holds the next push into staging until the test lets it go; meanwhile
    // staging is suspended, so the promotion waits in Syncing and says why. Other pushes
    // (qa's automatic promotion, retrying) pass: one of them entering the gate would suspend
    // staging before its promotion commits, and it would wait in Approved instead.
    let gate = fx._dir.path().join("gate");
    std::fs::create_dir_all(&gate).expect("gate dir");
    remote_hook(
        &fx,
        &format!(
            "#!/bin/sh\nwhile read old new ref; do\n  if git log -1 --format=%s \"$new\" | grep -q ' to staging$'; then\n    touch '{0}/entered'\n    while [ ! -e '{0}/open' ]; do sleep 0.05; done\n  fi\ndone\nexit 0\n",
            gate.display()
        ),
    );
    let next = approved_by_bob(&mut api, "staging").await;
    eventually("the push reaches the remote", || async {
        gate.join("entered").exists()
    })
    .await;
    envs.suspend_environment(with_token(
        ALICE,
        proto::SuspendEnvironmentRequest {
            name: "staging".into(),
            reason: "maintenance".into(),
        },
    ))
    .await
    .expect("staging suspended");
    std::fs::write(gate.join("open"), "").expect("open the gate");
    until_state(&api, ALICE, &next.id, proto::PromotionState::Syncing).await;
    let waiting = get(&mut api, ALICE, &next.id).await;
    assert_eq!(
        waiting
            .blockers
            .iter()
            .map(|b| b.kind.as_str())
            .collect::<Vec<_>>(),
        ["suspended"],
        "{waiting:?}"
    );
    envs.resume_environment(with_token(
        ALICE,
        proto::ResumeEnvironmentRequest {
            name: "staging".into(),
        },
    ))
    .await
    .expect("staging resumed");
    until_state(&api, ALICE, &next.id, proto::PromotionState::Succeeded).await;
    until_healthy(&server.grpc, ALICE, "staging").await;

    // prod needs two approvers. bob approves, then leaves the approvers group: his approval
    // stops counting once the tokens file is read again, and dave's alone is not enough.
    let prod = request(&mut api, ALICE, "prod", "")
        .await
        .expect("requested");
    until_state(
        &api,
        ALICE,
        &prod.id,
        proto::PromotionState::AwaitingApproval,
    )
    .await;
    approve(&mut api, BOB, &prod.id)
        .await
        .expect("bob approves");
    assert_eq!(get(&mut api, ALICE, &prod.id).await.approvals_missing, 1);
    let tokens = std::fs::read_to_string(&fx.tokens).expect("tokens file");
    let demoted = tokens.replace(
        "name: bob, email: bob@example.test, groups: [approvers]",
        "name: bob, email: bob@example.test, groups: [viewers]",
    );
    assert_ne!(tokens, demoted);
    std::fs::write(&fx.tokens, demoted).expect("tokens file rewritten");
    eventually("bob's approval stops counting", || {
        let mut api = api.clone();
        let id = prod.id.clone();
        async move { get(&mut api, ALICE, &id).await.approvals_missing == 2 }
    })
    .await;
    approve(&mut api, DAVE, &prod.id)
        .await
        .expect("dave approves");
    let after = get(&mut api, ALICE, &prod.id).await;
    assert_eq!(after.approvals_missing, 1, "{after:?}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        state_of(&get(&mut api, ALICE, &prod.id).await),
        proto::PromotionState::AwaitingApproval
    );

    // An approved promotion held at the head of the queue (staging is suspended) is checked
    // again before its Git step: dave leaves the group, and it goes back to waiting.
    envs.suspend_environment(with_token(
        ALICE,
        proto::SuspendEnvironmentRequest {
            name: "staging".into(),
            reason: "maintenance".into(),
        },
    ))
    .await
    .expect("staging suspended");
    fx.work
        .write(&[("environments/dev/app.yaml", &app("dev-3"))]);
    fx.work.commit("dev 3");
    push_main(&fx.work);
    sync_now(&mut envs, "dev").await;
    until_healthy(&server.grpc, ALICE, "dev").await;
    let held = request(&mut api, ALICE, "staging", "")
        .await
        .expect("requested");
    until_state(
        &api,
        ALICE,
        &held.id,
        proto::PromotionState::AwaitingApproval,
    )
    .await;
    approve(&mut api, DAVE, &held.id)
        .await
        .expect("dave approves");
    until_state(&api, ALICE, &held.id, proto::PromotionState::Approved).await;
    let tokens = std::fs::read_to_string(&fx.tokens).expect("tokens file");
    std::fs::write(
        &fx.tokens,
        tokens.replace(
            "name: dave, email: dave@example.test, groups: [approvers]",
            "name: dave, email: dave@example.test, groups: [viewers]",
        ),
    )
    .expect("tokens file rewritten");
    until_state(
        &api,
        ALICE,
        &held.id,
        proto::PromotionState::AwaitingApproval,
    )
    .await;
    let back = get(&mut api, ALICE, &held.id).await;
    let last = back.transitions.last().expect("transitions");
    assert!(last.reason.contains("no longer suffice"), "{last:?}");
    assert_eq!(fx.value(&kube, "staging").await.as_deref(), Some("dev-1"));
}

/// How long a NotSoaked refusal says is left.
fn soak_left(refused: &tonic::Status) -> Duration {
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    let message = refused.message();
    let left = message
        .rsplit_once("; ")
        .and_then(|(_, rest)| rest.strip_suffix(" to go"))
        .unwrap_or_else(|| panic!("no time left in {message:?}"));
    assert!(!left.contains('.'), "whole seconds: {message:?}");
    humantime::parse_duration(left).expect("a duration")
}

/// A commit that changes only another environment is not a new revision of the source: its
/// soak goes on, and the revision it ran before can still be named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_follows_the_sources_own_files_not_the_branch_tip() {
    let kube = cluster().client().await;
    let fx = Small::new(
        &kube,
        &[("soaked", "      promotion: {soak: 1h}\n"), ("other", "")],
        Duration::ZERO,
    )
    .await;
    let server = fx.start();
    let mut api = connect(&server).await;
    let first = until_healthy(&server.grpc, "", "dev").await;
    let ask = |revision: &str| proto::RequestPromotionRequest {
        target_environment: "soaked".into(),
        revision: revision.into(),
        reason: "release".into(),
        rerun: false,
    };
    let before = soak_left(&api.request_promotion(ask("")).await.unwrap_err());
    // Time that a soak which goes on counts, and one that restarts at the next apply loses.
    let gap = Duration::from_secs(3);
    tokio::time::sleep(gap).await;

    fx.work
        .write(&[("environments/other/app.yaml", &app("other-2"))]);
    fx.work.commit("other only");
    fx.work.git(&["push", "-q", "origin", "main"]);
    let moved = fx.work.git(&["rev-parse", "HEAD"]);
    let mut envs = EnvironmentServiceClient::connect(server.grpc.clone())
        .await
        .expect("gRPC reachable");
    envs.sync_environment(proto::SyncEnvironmentRequest {
        name: "dev".into(),
        fetch: true,
        wait: true,
    })
    .await
    .expect("dev syncs");
    assert_eq!(until_healthy(&server.grpc, "", "dev").await, moved);

    for revision in ["", first.as_str()] {
        let refused = api.request_promotion(ask(revision)).await.unwrap_err();
        assert!(
            refused.message().contains("soak time"),
            "{revision:?} is what dev runs: {refused:?}"
        );
        let after = soak_left(&refused);
        assert!(
            after + gap <= before,
            "the soak went on through the other environment's commit: {after:?} + {gap:?} <= {before:?}"
        );
    }
}

/// An override lets a promotion through the freeze it was given for, not through the next
/// window: a promotion that could not go on before the first window ended (its target was
/// suspended) is held again by the second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_override_does_not_carry_over_to_the_next_freeze_window() {
    use proto::PromotionState as S;
    let now = jiff::Timestamp::now();
    let at = |seconds: i64| now + jiff::SignedDuration::from_secs(seconds);
    let windows = format!(
        "      freezeWindows:\n        - {{from: \"{}\", until: \"{}\", reason: first}}\n        - {{from: \"{}\", until: \"{}\", reason: second}}\n",
        at(-60),
        at(45),
        at(55),
        at(3600)
    );
    let kube = cluster().client().await;
    let fx = Small::new(&kube, &[("windowed", &windows)], Duration::ZERO).await;
    let server = fx.start();
    let mut api = connect(&server).await;
    let mut envs = EnvironmentServiceClient::connect(server.grpc.clone())
        .await
        .expect("gRPC reachable");
    until_healthy(&server.grpc, "", "dev").await;
    envs.suspend_environment(proto::SuspendEnvironmentRequest {
        name: "windowed".into(),
        reason: "maintenance".into(),
    })
    .await
    .expect("suspended");

    let promotion = request_anonymous(&mut api, "windowed").await;
    until_state(&api, "", &promotion.id, S::Approved).await;
    api.override_freeze(proto::OverrideFreezeRequest {
        id: promotion.id.clone(),
        reason: "hotfix".into(),
    })
    .await
    .expect("overridden during the first window");
    let kinds = |p: &proto::Promotion| -> Vec<String> {
        p.blockers.iter().map(|b| b.kind.clone()).collect()
    };
    let held = get(&mut api, "", &promotion.id).await;
    assert_eq!(kinds(&held), ["suspended"], "{held:?}");

    let second = std::time::SystemTime::from(at(55));
    while std::time::SystemTime::now() < second + Duration::from_secs(1) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    envs.resume_environment(proto::ResumeEnvironmentRequest {
        name: "windowed".into(),
    })
    .await
    .expect("resumed");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let again = get(&mut api, "", &promotion.id).await;
    assert_eq!(state_of(&again), S::Approved, "{again:?}");
    let freeze = again
        .blockers
        .iter()
        .find(|b| b.kind == "freeze")
        .unwrap_or_else(|| panic!("held by the second window: {again:?}"));
    assert!(freeze.message.contains("second"), "{freeze:?}");
    assert!(
        fx.commits_of(&promotion.id).is_empty(),
        "nothing reached Git"
    );
}
