//! Signed commits: promotion and rollback commits signed with an SSH key as git signs them
//! (checked by `git verify-commit`), and the signatures of a promoted range checked against an
//! allowed_signers file, with keys made by `ssh-keygen` and commits signed by `git commit -S`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use stagehand::git::allowed_signers::{AllowedSigners, Verdict};
use stagehand::git::promote::{Change, Identity, Options, Outcome, PromotionCommit};
use stagehand::git::sign::Signer;
use stagehand::git::{Credentials, ObjectId, RemoteUrl, Repository};
use stagehand::pipeline::Pipeline;

use crate::support::git::{Repo, bare_remote};

/// A fresh ed25519 key pair made by `ssh-keygen -t ed25519 -N ''`; returns the private key's
/// path (the public key is beside it, `.pub`).
pub(crate) fn ssh_keygen(dir: &Path, name: &str) -> PathBuf {
    let key = dir.join(name);
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
        .arg(&key)
        .output()
        .expect("ssh-keygen runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    key
}

/// The public key line of the key at `private`.
pub(crate) fn public_key(private: &Path) -> String {
    let mut path = private.as_os_str().to_owned();
    path.push(".pub");
    std::fs::read_to_string(path)
        .expect("ssh-keygen wrote the public key")
        .trim()
        .to_owned()
}

/// An allowed_signers file: one line per (principal, key).
pub(crate) fn allowed_signers(path: &Path, signers: &[(&str, &Path)]) {
    let text: String = signers
        .iter()
        .map(|(principal, key)| format!("{principal} namespaces=\"git\" {}\n", public_key(key)))
        .collect();
    std::fs::write(path, text).expect("allowed signers written");
}

/// `git verify-commit` as a user checks a commit: SSH format, this allowed_signers file.
/// Returns whether it verified, and what git printed.
pub(crate) fn verify_commit(work: &Path, allowed: &Path, commit: &str) -> (bool, String) {
    let out = Command::new("git")
        .current_dir(work)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .args(["-c", "gpg.format=ssh", "-c"])
        .arg(format!("gpg.ssh.allowedSignersFile={}", allowed.display()))
        .args(["verify-commit", "-v", commit])
        .output()
        .expect("git runs");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Commits everything in `work` signed with `key`, as `git commit -S` with `gpg.format=ssh`;
/// `author` overrides the author (`Name <e-mail>`). Returns the commit id.
pub(crate) fn signed_commit(
    work: &Repo,
    key: &Path,
    message: &str,
    author: Option<&str>,
) -> String {
    work.git(&["add", "-A"]);
    let signing_key = format!("user.signingkey={}", key.display());
    let mut args = vec![
        "-c",
        "gpg.format=ssh",
        "-c",
        signing_key.as_str(),
        "commit",
        "-q",
        "--allow-empty",
        "-S",
        "-m",
        message,
    ];
    if let Some(author) = author {
        args.extend(["--author", author]);
    }
    work.git(&args);
    work.git(&["rev-parse", "HEAD"])
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
    - name: prod
      promotesFrom: dev
      source: {{overlay: environments/prod}}
      promote: {{files: [app.yaml]}}
"
        ),
    )
    .expect("the test pipeline is valid")
}

fn options(signer: Option<Arc<Signer>>) -> Options {
    let stagehand = Identity {
        name: "Stagehand".into(),
        email: "stagehand@example.test".into(),
    };
    Options {
        author: stagehand.clone(),
        committer: stagehand,
        signer,
        max_attempts: 3,
    }
}

fn oid(hex: &str) -> ObjectId {
    ObjectId::from_hex(hex.as_bytes()).expect("a full commit id")
}

struct Fixture {
    dir: tempfile::TempDir,
    work: Repo,
    remote: PathBuf,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let remote = bare_remote(&dir.path().join("remote.git"));
        let work = Repo::init(&dir.path().join("work"));
        work.write(&[
            ("environments/dev/app.yaml", "value: dev-1\n"),
            ("environments/prod/app.yaml", "value: prod-1\n"),
        ]);
        work.commit("two environments");
        work.git(&[
            "remote",
            "add",
            "origin",
            remote.to_str().expect("utf-8 path"),
        ]);
        work.git(&["push", "-q", "origin", "main"]);
        Fixture { dir, work, remote }
    }

    fn url(&self) -> String {
        format!("file://{}", self.remote.display())
    }

    fn repository(&self) -> Repository {
        Repository::open(
            &self.dir.path().join("state"),
            RemoteUrl::new(self.url()),
            Credentials::None,
        )
        .expect("the cache opens")
    }

    fn push(&self) {
        self.work.git(&["push", "-q", "origin", "main"]);
    }
}

#[test]
fn promotion_and_rollback_commits_are_signed_so_that_git_verify_commit_accepts_them() {
    let fx = Fixture::new();
    let keys = fx.dir.path();
    let stagehand_key = ssh_keygen(keys, "stagehand");
    let other = ssh_keygen(keys, "other");
    let signer = Arc::new(Signer::from_file(&stagehand_key).expect("a valid key"));
    assert_eq!(signer.public_key(), public_key(&stagehand_key));

    fx.work
        .write(&[("environments/dev/app.yaml", "value: dev-2\n")]);
    let dev = fx.work.commit("dev 2");
    fx.push();
    let repo = fx.repository();
    let pipeline = pipeline(&fx.url());
    let promotion = PromotionCommit {
        id: "p-1".into(),
        target: "prod".into(),
        change: Change::Promote {
            source: "dev".into(),
            commit: oid(&dev),
        },
        requested_by: "alice".into(),
        approved_by: vec!["bob".into()],
    };
    let promoted = match repo
        .promote(
            &pipeline,
            &promotion,
            &options(Some(signer.clone())),
            &mut Vec::new(),
        )
        .expect("promotion")
    {
        Outcome::Pushed { commit, .. } => commit,
        other => panic!("expected a push, got {other:?}"),
    };
    let rollback = PromotionCommit {
        id: "r-1".into(),
        target: "prod".into(),
        change: Change::Rollback {
            commit: oid(&fx.work.git(&["rev-parse", "HEAD~1"])),
        },
        requested_by: "alice".into(),
        approved_by: vec![],
    };
    let rolled_back = match repo
        .promote(
            &pipeline,
            &rollback,
            &options(Some(signer.clone())),
            &mut Vec::new(),
        )
        .expect("rollback")
    {
        Outcome::Pushed { commit, .. } => commit,
        other => panic!("expected a push, got {other:?}"),
    };
    fx.work.git(&["pull", "-q", "origin", "main"]);
    assert_eq!(
        fx.work.git(&["show", "HEAD:environments/prod/app.yaml"]),
        "value: prod-1"
    );

    let trusted = keys.join("allowed_signers");
    allowed_signers(&trusted, &[("stagehand@example.test", &stagehand_key)]);
    let wrong = keys.join("wrong_allowed_signers");
    allowed_signers(&wrong, &[("stagehand@example.test", &other)]);
    for commit in [promoted, rolled_back] {
        let commit = commit.to_string();
        let (ok, said) = verify_commit(&fx.work.dir, &trusted, &commit);
        assert!(ok, "git verify-commit {commit}: {said}");
        assert!(
            said.contains("Good \"git\" signature for stagehand@example.test"),
            "{said}"
        );
        let (ok, said) = verify_commit(&fx.work.dir, &wrong, &commit);
        assert!(!ok, "verified with a file that lacks the key: {said}");
        // The signature covers the commit: git's own raw object holds it in gpgsig.
        let raw = fx.work.git(&["cat-file", "commit", &commit]);
        assert!(
            raw.contains("gpgsig -----BEGIN SSH SIGNATURE-----"),
            "{raw}"
        );
    }

    // Without a key the commits stay unsigned, as before.
    fx.work
        .write(&[("environments/dev/app.yaml", "value: dev-3\n")]);
    let dev3 = fx.work.commit("dev 3");
    fx.push();
    let unsigned = match repo
        .promote(
            &pipeline,
            &PromotionCommit {
                id: "p-2".into(),
                change: Change::Promote {
                    source: "dev".into(),
                    commit: oid(&dev3),
                },
                ..promotion
            },
            &options(None),
            &mut Vec::new(),
        )
        .expect("promotion")
    {
        Outcome::Pushed { commit, .. } => commit,
        other => panic!("expected a push, got {other:?}"),
    };
    let (ok, said) = verify_commit(&fx.work.dir, &trusted, &unsigned.to_string());
    assert!(!ok, "{said}");
}

#[test]
fn a_range_is_judged_by_its_signatures_and_credited_to_the_signer() {
    let fx = Fixture::new();
    let keys = fx.dir.path();
    let carol = ssh_keygen(keys, "carol");
    let mallory = ssh_keygen(keys, "mallory");
    let file = keys.join("allowed_signers");
    allowed_signers(&file, &[("carol@example.test", &carol)]);
    let signers = AllowedSigners::load(&file).expect("a valid file");
    let start = fx.work.git(&["rev-parse", "HEAD"]);

    fx.work
        .write(&[("environments/dev/app.yaml", "value: by-carol\n")]);
    let by_carol = signed_commit(
        &fx.work,
        &carol,
        "carol, posing as bob",
        Some("Bob <bob@example.test>"),
    );
    fx.work
        .write(&[("environments/dev/app.yaml", "value: by-mallory\n")]);
    let by_mallory = signed_commit(&fx.work, &mallory, "mallory's change", None);
    fx.work
        .write(&[("environments/dev/app.yaml", "value: unsigned\n")]);
    let unsigned = fx.work.commit("an unsigned change");
    fx.push();
    let repo = fx.repository();
    repo.fetch().expect("fetch");

    let authored = repo
        .authored(oid(&unsigned), Some(oid(&start)), None, 100, Some(&signers))
        .expect("the range is read");
    let by = |id: &str| {
        authored
            .iter()
            .find(|a| a.commit == oid(id))
            .expect("in the range")
    };
    assert_eq!(by(&unsigned).signature, Some(Verdict::Unsigned));
    assert_eq!(by(&unsigned).summary, "an unsigned change");
    assert!(
        matches!(by(&by_mallory).signature, Some(Verdict::UnknownKey { .. })),
        "{:?}",
        by(&by_mallory).signature
    );
    assert!(
        matches!(&by(&by_carol).signature, Some(Verdict::Good { principals, .. }) if principals == &["carol@example.test"]),
        "{:?}",
        by(&by_carol).signature
    );
    // The forged author e-mail is not credited: the signer is.
    assert_eq!(by(&by_carol).people, ["carol@example.test"]);
    // Without allowed signers, the e-mails the commit claims count, as before.
    let claimed = repo
        .authored(oid(&by_carol), Some(oid(&start)), None, 100, None)
        .expect("the range is read");
    assert_eq!(
        claimed[0].people,
        ["bob@example.test", "committer@example.test"]
    );
    assert_eq!(claimed[0].signature, None);
    // git agrees with each verdict.
    assert!(verify_commit(&fx.work.dir, &file, &by_carol).0);
    assert!(!verify_commit(&fx.work.dir, &file, &by_mallory).0);
    assert!(!verify_commit(&fx.work.dir, &file, &unsigned).0);
}

#[test]
fn a_signing_key_that_cannot_be_used_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let key = ssh_keygen(dir.path(), "protected");
    let out = Command::new("ssh-keygen")
        .args(["-q", "-p", "-N", "a passphrase", "-P", "", "-f"])
        .arg(&key)
        .output()
        .expect("ssh-keygen runs");
    assert!(out.status.success(), "{out:?}");
    let missing = dir.path().join("missing");
    let public = dir.path().join("protected.pub");
    let cases = [
        (key.as_path(), "protected by a passphrase"),
        (missing.as_path(), "cannot read it"),
        (public.as_path(), "not an OpenSSH private key"),
    ];
    let pipeline = dir.path().join("pipeline.yaml");
    std::fs::write(
        &pipeline,
        "apiVersion: stagehand.dev/v1alpha1\nkind: Pipeline\nmetadata: {name: shop}\nspec:\n  environments:\n    - name: dev\n      source: {overlay: dev}\n",
    )
    .expect("pipeline written");
    for (file, expected) in cases {
        let error = Signer::from_file(file).expect_err("unusable").to_string();
        assert!(
            error.contains(&file.display().to_string()) && error.contains(expected),
            "{error}"
        );
        // `serve` stops at start, before listening, with the same words.
        let out = Command::new(env!("CARGO_BIN_EXE_stagehand"))
            .args(["serve", "--listen", "127.0.0.1:0", "--pipeline"])
            .arg(&pipeline)
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .arg("--signing-key")
            .arg(file)
            .env_remove("SOPS_AGE_KEY_FILE")
            .env_remove("SOPS_AGE_KEY")
            .output()
            .expect("stagehand runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{stderr}");
        assert!(
            stderr.contains(&file.display().to_string()) && stderr.contains(expected),
            "{stderr}"
        );
    }
}

mod served {
    //! `stagehand serve` with a signing key and `requireSignedCommits`, driven over gRPC, with
    //! a real Git remote over HTTP and the real kube-apiserver.

    use std::path::{Path, PathBuf};

    use stagehand::proto;
    use stagehand::proto::environment_service_client::EnvironmentServiceClient;
    use stagehand::proto::promotion_service_client::PromotionServiceClient;
    use tonic::Code;
    use tonic::transport::Channel;

    use super::{allowed_signers, signed_commit, ssh_keygen, verify_commit};
    use crate::keys::put_secret;
    use crate::promotions::until_healthy;
    use crate::service::{Server, app, overlay, start_server_with, with_token};
    use crate::support::cluster::cluster;
    use crate::support::git::{Repo, bare_remote};
    use crate::support::git_http::GitHttpServer;

    const ALICE: &str = "alice-token-releaser-5d1e";
    const BOB: &str = "bob-token-approver-8c2a";
    const CAROL: &str = "carol-token-approver-e07b";

    type Promotions = PromotionServiceClient<Channel>;

    struct Fixture {
        _dir: tempfile::TempDir,
        work: Repo,
        pipeline: PathBuf,
        state: PathBuf,
        webhook: PathBuf,
        tokens: PathBuf,
        allowed: PathBuf,
        carol: PathBuf,
        mallory: PathBuf,
        stagehand: PathBuf,
        /// The namespace of the service's own Secrets (edge-prod's allowed signers).
        namespace: String,
        _http: GitHttpServer,
    }

    impl Fixture {
        async fn new(client: &kube::Client) -> Self {
            let dir = tempfile::tempdir().expect("temp dir");
            let keys = dir.path();
            let (carol, mallory, stagehand) = (
                ssh_keygen(keys, "carol"),
                ssh_keygen(keys, "mallory"),
                ssh_keygen(keys, "stagehand"),
            );
            let allowed = keys.join("allowed_signers");
            allowed_signers(
                &allowed,
                &[
                    ("carol@example.test", &carol),
                    ("stagehand@example.test", &stagehand),
                ],
            );
            // edge-prod reads the same list from a Secret of the service's namespace.
            let own = cluster().namespace(client, "sg-own").await;
            put_secret(
                client,
                &own,
                "allowed-signers",
                &[("allowed_signers", &file_at(&allowed))],
            )
            .await;
            let remotes = dir.path().join("remotes");
            bare_remote(&remotes.join("shop.git"));
            let http = GitHttpServer::start(&remotes, None);
            let work = Repo::init(&dir.path().join("work"));
            let mut namespaces = Vec::new();
            for env in ["dev", "prod", "edge", "edge-prod"] {
                let namespace = cluster().namespace(client, &format!("sg-{env}")).await;
                namespaces.push(namespace.clone());
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
            }
            // The first commit is in every range until a promotion lands: carol signs it.
            signed_commit(&work, &carol, "four environments", None);
            work.git(&["remote", "add", "origin", &http.url("shop.git")]);
            work.git(&["push", "-q", "origin", "main"]);

            let state = dir.path().join("state");
            std::fs::create_dir_all(&state).expect("state dir");
            let webhook = dir.path().join("webhook-secret");
            std::fs::write(&webhook, "webhook-secret\n").expect("secret file");
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
  - {{name: carol, email: carol@example.test, groups: [approvers], tokenSha256: [{}]}}
",
                    hash(ALICE),
                    hash(BOB),
                    hash(CAROL)
                ),
            )
            .expect("tokens file");
            let pipeline = dir.path().join("pipeline.yaml");
            let suffix = &namespaces[0];
            std::fs::write(
                &pipeline,
                format!(
                    "apiVersion: stagehand.dev/v1alpha1
kind: Pipeline
metadata: {{name: sg{name}}}
spec:
  repository: {{url: {url}, branch: main}}
  environments:
    - name: dev
      source: {{overlay: environments/dev}}
      sync: {{interval: 1h}}
    - name: prod
      promotesFrom: dev
      source: {{overlay: environments/prod}}
      sync: {{interval: 1h}}
      approval: {{required: 1, groups: [approvers], allowAuthorApproval: false}}
      promote: {{files: [app.yaml]}}
      requireSignedCommits: {{allowedSignersFile: allowed_signers}}
    - name: edge
      source: {{overlay: environments/edge}}
      sync: {{interval: 1h}}
    - name: edge-prod
      promotesFrom: edge
      source: {{overlay: environments/edge-prod}}
      sync: {{interval: 1h}}
      promote: {{files: [app.yaml]}}
      requireSignedCommits: {{allowedSignersSecret: {{name: allowed-signers}}}}
  access:
    - {{groups: [releasers], environments: [\"*\"], permissions: [view, request, sync]}}
    - {{groups: [approvers], environments: [\"*\"], permissions: [view, approve]}}
",
                    name = &suffix[suffix.len() - 6..],
                    url = http.url("shop.git"),
                ),
            )
            .expect("pipeline file");
            Self {
                _dir: dir,
                work,
                pipeline,
                state,
                webhook,
                tokens,
                allowed,
                carol,
                mallory,
                stagehand,
                namespace: own,
                _http: http,
            }
        }

        /// The service, signing with `key` (`--signing-key FILE` or `--signing-key-secret NS/NAME`).
        fn start(&self, key: &[&str]) -> Server {
            let tokens = self.tokens.display().to_string();
            let mut args = vec![
                "--tokens-file",
                tokens.as_str(),
                "--namespace",
                self.namespace.as_str(),
            ];
            args.extend_from_slice(key);
            start_server_with(&self.pipeline, &self.state, &self.webhook, &args)
        }

        fn push(&self) {
            self.work.git(&["pull", "-q", "--rebase", "origin", "main"]);
            self.work.git(&["push", "-q", "origin", "main"]);
        }
    }

    fn short(commit: &str) -> &str {
        &commit[..12]
    }

    async fn request(
        api: &mut Promotions,
        target: &str,
    ) -> Result<proto::Promotion, tonic::Status> {
        api.request_promotion(with_token(
            ALICE,
            proto::RequestPromotionRequest {
                target_environment: target.into(),
                revision: String::new(),
                reason: "release".into(),
                rerun: false,
            },
        ))
        .await
        .map(tonic::Response::into_inner)
    }

    async fn approve(api: &mut Promotions, token: &str, id: &str) -> Result<(), tonic::Status> {
        api.approve_promotion(with_token(
            token,
            proto::ApprovePromotionRequest {
                id: id.into(),
                comment: String::new(),
            },
        ))
        .await
        .map(|_| ())
    }

    async fn promotion(api: &mut Promotions, id: &str) -> proto::Promotion {
        api.get_promotion(with_token(
            ALICE,
            proto::GetPromotionRequest { id: id.into() },
        ))
        .await
        .expect("GetPromotion answers")
        .into_inner()
    }

    /// Waits until promotion `id` reaches `state`; fails the test if it ends in another.
    async fn until_state(
        api: &Promotions,
        id: &str,
        state: proto::PromotionState,
    ) -> proto::Promotion {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
        loop {
            let p = promotion(&mut api.clone(), id).await;
            if p.state == state as i32 {
                return p;
            }
            let ended = [
                proto::PromotionState::Succeeded,
                proto::PromotionState::Failed,
                proto::PromotionState::Rejected,
                proto::PromotionState::Aborted,
            ];
            assert!(
                !ended.iter().any(|s| p.state == *s as i32),
                "promotion {id} ended {:?} ({}) instead of {state:?}",
                p.state,
                p.message
            );
            assert!(
                std::time::Instant::now() < deadline,
                "promotion {id} never reached {state:?}: {p:?}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }

    async fn sync_now(grpc: &str, name: &str) {
        let mut envs = EnvironmentServiceClient::connect(grpc.to_owned())
            .await
            .expect("gRPC reachable");
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

    fn remote_commit(work: &Repo, commit: &str) -> String {
        work.git(&["fetch", "-q", "origin"]);
        work.git(&["rev-parse", commit])
    }

    fn file_at(path: &Path) -> String {
        std::fs::read_to_string(path).expect("readable")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn promotions_need_signed_ranges_and_the_signer_is_the_author_and_stagehand_signs_its_commits()
     {
        let kube = cluster().client().await;
        let fx = Fixture::new(&kube).await;
        let key = fx.stagehand.display().to_string();
        let server = fx.start(&["--signing-key", &key]);
        let mut api = PromotionServiceClient::connect(server.grpc.clone())
            .await
            .expect("gRPC reachable");
        until_healthy(&server.grpc, ALICE, "dev").await;
        until_healthy(&server.grpc, ALICE, "edge").await;

        // edge gets an unsigned commit and one signed by a key nobody listed.
        fx.work
            .write(&[("environments/edge/app.yaml", &app("edge-unsigned"))]);
        let unsigned = fx.work.commit("edge: an unsigned change");
        fx.work
            .write(&[("environments/edge/app.yaml", &app("edge-mallory"))]);
        let unknown = signed_commit(&fx.work, &fx.mallory, "edge: mallory's change", None);
        fx.push();
        sync_now(&server.grpc, "edge").await;
        until_healthy(&server.grpc, ALICE, "edge").await;
        let refused = request(&mut api, "edge-prod").await.unwrap_err();
        assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
        let message = refused.message();
        // The first commit, which carol signed, passes: her key came from the Secret.
        assert!(!message.contains("four environments"), "{message}");
        for expected in [
            "requires signed commits",
            &format!(
                "{} \"edge: an unsigned change\": unsigned",
                short(&unsigned)
            ),
            &format!(
                "{} \"edge: mallory's change\": signed by an unknown key",
                short(&unknown)
            ),
        ] {
            assert!(message.contains(expected), "{expected:?} in {message}");
        }
        let stored = api
            .list_promotions(with_token(
                ALICE,
                proto::ListPromotionsRequest {
                    environment: "edge-prod".into(),
                    ..Default::default()
                },
            ))
            .await
            .expect("ListPromotions answers")
            .into_inner();
        assert!(stored.promotions.is_empty(), "nothing stored: {stored:?}");
        // A Secret that lost its entry refuses the promotion, naming the Secret and entry.
        put_secret(&kube, &fx.namespace, "allowed-signers", &[("other", "x")]).await;
        let unreadable = request(&mut api, "edge-prod").await.unwrap_err();
        assert_eq!(
            unreadable.code(),
            Code::FailedPrecondition,
            "{unreadable:?}"
        );
        assert!(
            unreadable.message().contains(&format!(
                "Secret {}/allowed-signers: has no key \"allowed_signers\"",
                fx.namespace
            )),
            "{unreadable:?}"
        );

        // dev gets a commit signed by carol that claims bob wrote it.
        fx.work
            .write(&[("environments/dev/app.yaml", &app("dev-2"))]);
        let posing = signed_commit(
            &fx.work,
            &fx.carol,
            "dev: carol's change as bob",
            Some("Bob <bob@example.test>"),
        );
        fx.push();
        sync_now(&server.grpc, "dev").await;
        until_healthy(&server.grpc, ALICE, "dev").await;

        // The second guard: carol's key leaves the file after the request; the approved
        // promotion fails before its Git step, naming the commit.
        let first = request(&mut api, "prod").await.expect("a signed range");
        until_state(&api, &first.id, proto::PromotionState::AwaitingApproval).await;
        let trusted = file_at(&fx.allowed);
        allowed_signers(&fx.allowed, &[("stagehand@example.test", &fx.stagehand)]);
        let main_before = remote_commit(&fx.work, "origin/main");
        approve(&mut api, BOB, &first.id)
            .await
            .expect("bob approves");
        let failed = until_state(&api, &first.id, proto::PromotionState::Failed).await;
        assert!(
            failed.message.contains(&format!(
                "{} \"dev: carol's change as bob\": signed by an unknown key",
                short(&posing)
            )),
            "{}",
            failed.message
        );
        assert_eq!(
            remote_commit(&fx.work, "origin/main"),
            main_before,
            "nothing pushed"
        );

        // With carol's key back, the author rule follows the signature, not the claimed author.
        std::fs::write(&fx.allowed, &trusted).expect("allowed signers restored");
        let second = request(&mut api, "prod").await.expect("a signed range");
        until_state(&api, &second.id, proto::PromotionState::AwaitingApproval).await;
        let signer = approve(&mut api, CAROL, &second.id).await.unwrap_err();
        assert_eq!(signer.code(), Code::PermissionDenied, "{signer:?}");
        assert!(signer.message().contains("author"), "{signer:?}");
        approve(&mut api, BOB, &second.id)
            .await
            .expect("bob's e-mail was only claimed; carol signed it");
        let done = until_state(&api, &second.id, proto::PromotionState::Succeeded).await;

        // Stagehand's commit carries its signature, which git checks against the same file.
        let commit = remote_commit(&fx.work, &done.commit);
        let (ok, said) = verify_commit(&fx.work.dir, &fx.allowed, &commit);
        assert!(ok, "{said}");
        assert!(said.contains("stagehand@example.test"), "{said}");
        let wrong = fx._dir.path().join("only_carol");
        allowed_signers(&wrong, &[("carol@example.test", &fx.carol)]);
        let (ok, said) = verify_commit(&fx.work.dir, &wrong, &commit);
        assert!(!ok, "{said}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_signing_key_can_come_from_a_secret_read_through_the_api() {
        let kube = cluster().client().await;
        let fx = Fixture::new(&kube).await;
        let ns = cluster().namespace(&kube, "sg-key").await;
        let key = std::fs::read_to_string(&fx.stagehand).expect("the key");
        put_secret(&kube, &ns, "no-key", &[("identity", &key)]).await;
        // Refused at start, naming the Secret and what is wrong with it.
        for (secret, expected) in [
            ("missing", format!("Secret {ns}/missing not found")),
            (
                "no-key",
                format!("Secret {ns}/no-key has no entry \"ssh-privatekey\""),
            ),
        ] {
            let out = std::process::Command::new(env!("CARGO_BIN_EXE_stagehand"))
                .args(["serve", "--listen", "127.0.0.1:0", "--pipeline"])
                .arg(&fx.pipeline)
                .arg("--state-dir")
                .arg(&fx.state)
                .args(["--signing-key-secret", &format!("{ns}/{secret}")])
                .env("KUBECONFIG", &cluster().kubeconfig)
                .env_remove("SOPS_AGE_KEY_FILE")
                .output()
                .expect("stagehand runs");
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{stderr}");
            assert!(stderr.contains(&expected), "{expected:?} in {stderr}");
        }
        put_secret(&kube, &ns, "signing", &[("ssh-privatekey", &key)]).await;
        // The key file is gone: only the Secret holds it now.
        std::fs::remove_file(&fx.stagehand).expect("key removed");
        let server = fx.start(&["--signing-key-secret", &format!("{ns}/signing")]);
        let mut api = PromotionServiceClient::connect(server.grpc.clone())
            .await
            .expect("gRPC reachable");
        until_healthy(&server.grpc, ALICE, "dev").await;
        let promoted = request(&mut api, "prod").await.expect("a signed range");
        until_state(&api, &promoted.id, proto::PromotionState::AwaitingApproval).await;
        approve(&mut api, BOB, &promoted.id)
            .await
            .expect("bob approves");
        let done = until_state(&api, &promoted.id, proto::PromotionState::Succeeded).await;
        let commit = remote_commit(&fx.work, &done.commit);
        let (ok, said) = verify_commit(&fx.work.dir, &fx.allowed, &commit);
        assert!(ok, "{said}");
        assert!(said.contains("stagehand@example.test"), "{said}");
    }
}
