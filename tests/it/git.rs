//! The git module against real repositories made with the git CLI and a bare remote, reached
//! over `file://` and over HTTP (`git http-backend` behind a loopback server). What Stagehand
//! pushed is checked with the git CLI.

use std::path::{Path, PathBuf};

use stagehand::git::promote::{self, Change, Identity, Options, Outcome, PromotionCommit};
use stagehand::git::{
    Credentials, ObjectId, RemoteUrl, Repository, Secret, Timeouts, fetch, push, revision,
};
use stagehand::pipeline::Pipeline;
use stagehand::render::fs::{EntryKind, FileSystem};

use crate::support::cluster::install_crypto_provider;
use crate::support::git::{Repo, bare_remote, git};
use crate::support::git_http::{GitHttpServer, SilentServer};

const DEV: &str = "\
# Dev overlay: CI bumps the tags here.
resources:
  - ../base
images:
  - name: shop/web
    newTag: \"1.1.0\"
  - name: shop/worker
    newTag: 2.0.0
";

const STAGING: &str = "\
# Staging overlay: promoted from dev by Stagehand.
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization

resources:
  - ../base   # shared manifests

namePrefix: staging-

images:
  # the web front end
  - name: shop/web
    newTag: \"1.0.0\"   # set by promotion
  - name: shop/worker
    newTag: 1.9.0
";

const DEV_VERSION: &str = "data:\n  VERSION: \"2026.11\"\n  OWNER: dev-team\n";
const STAGING_VERSION: &str =
    "# what the status page shows\ndata:\n  VERSION: \"2026.10\" # release train\n  OWNER: qa\n";

fn pipeline(url: &str, allow_merge: bool) -> Pipeline {
    Pipeline::parse(Path::new("pipeline.yaml"), &pipeline_text(url, allow_merge))
        .expect("the test pipeline is valid")
}

fn pipeline_text(url: &str, allow_merge: bool) -> String {
    format!(
        "apiVersion: stagehand.dev/v1alpha1
kind: Pipeline
metadata: {{name: shop}}
spec:
  repository: {{url: {url:?}, branch: main}}
  environments:
    - name: dev
      source: {{overlay: environments/dev}}
    - name: staging
      promotesFrom: dev
      source: {{overlay: environments/staging}}
      promote: {{files: [CHANGELOG.txt], fields: [{{file: version.yaml, path: data.VERSION}}]}}
    - name: prod
      promotesFrom: staging
      source: {{branch: env/prod, path: environments/staging}}
      promote: {{allowMerge: {allow_merge}}}
"
    )
}

/// A work tree with the example overlays, pushed to a bare remote.
struct Fixture {
    _dir: tempfile::TempDir,
    work: Repo,
    remote: PathBuf,
    state: PathBuf,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let remote = bare_remote(&dir.path().join("remote/shop.git"));
        let work = Repo::init(&dir.path().join("work"));
        work.write(&[
            ("README.md", "# shop\n"),
            (
                "environments/base/kustomization.yaml",
                "resources:\n  - deployment.yaml\n",
            ),
            (
                "environments/base/deployment.yaml",
                "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\n",
            ),
            ("environments/dev/kustomization.yaml", DEV),
            ("environments/dev/version.yaml", DEV_VERSION),
            ("environments/staging/kustomization.yaml", STAGING),
            ("environments/staging/version.yaml", STAGING_VERSION),
            ("environments/dev/CHANGELOG.txt", "1.1.0: first\n"),
            ("environments/staging/CHANGELOG.txt", "1.1.0: first\n"),
        ]);
        work.commit("initial overlays");
        work.git(&[
            "remote",
            "add",
            "origin",
            remote.to_str().expect("utf-8 path"),
        ]);
        work.git(&["push", "-q", "origin", "main"]);
        let state = dir.path().join("state");
        Fixture {
            _dir: dir,
            work,
            remote,
            state,
        }
    }

    fn url(&self) -> String {
        format!("file://{}", self.remote.display())
    }

    fn open(&self, state: &str, url: &str, credentials: Credentials) -> Repository {
        Repository::open(&self.state.join(state), RemoteUrl::new(url), credentials)
            .expect("the cache opens")
    }

    /// Commits `files` on main in the work tree and pushes; returns the commit.
    fn push_change(&self, files: &[(&str, &str)], message: &str) -> String {
        self.work.git(&["pull", "-q", "--rebase", "origin", "main"]);
        self.work.write(files);
        let id = self.work.commit(message);
        self.work.git(&["push", "-q", "origin", "main"]);
        id
    }

    fn remote_git(&self, args: &[&str]) -> String {
        git(&self.remote, args)
    }
}

fn options() -> Options {
    Options {
        author: Identity {
            name: "Stagehand".into(),
            email: "stagehand@example.test".into(),
        },
        committer: Identity {
            name: "Stagehand Bot".into(),
            email: "bot@example.test".into(),
        },
        signer: None,
        max_attempts: 8,
    }
}

fn promotion(id: &str, target: &str, source: &str, commit: &str) -> PromotionCommit {
    PromotionCommit {
        id: id.into(),
        target: target.into(),
        change: Change::Promote {
            source: source.into(),
            commit: oid(commit),
        },
        requested_by: "alice@example.test".into(),
        approved_by: vec!["bob@example.test".into(), "carol@example.test".into()],
    }
}

fn oid(hex: &str) -> ObjectId {
    ObjectId::from_hex(hex.as_bytes()).expect("a full commit id")
}

/// Every branch the cache has recorded is exactly where the remote has it: nothing half-written.
fn assert_cache_matches_remote(repo: &Repository, remote: &Path) {
    let cache = git(
        repo.path(),
        &[
            "for-each-ref",
            "--format=%(objectname) %(refname)",
            "refs/remotes/origin/",
        ],
    );
    for line in cache.lines() {
        let (id, name) = line.split_once(' ').expect("two fields");
        let branch = name.trim_start_matches("refs/remotes/origin/");
        let on_remote = git(remote, &["rev-parse", &format!("refs/heads/{branch}")]);
        assert_eq!(id, on_remote, "cache ref {name} differs from the remote");
    }
    let local_branches = git(repo.path(), &["for-each-ref", "refs/heads/"]);
    assert_eq!(local_branches, "", "the cache has no branches of its own");
}

#[test]
fn an_environment_revision_is_read_from_the_object_database_without_a_checkout() {
    let fx = Fixture::new();
    let head = fx.work.git(&["rev-parse", "HEAD"]);
    let repo = fx.open("a", &fx.url(), Credentials::None);
    let fetched = repo.fetch().expect("fetch over file://");
    assert_eq!(fetched.updated, ["main"]);
    let pipeline = pipeline(&fx.url(), false);

    let revision = repo
        .revision(&pipeline, "staging")
        .expect("staging resolves");
    assert_eq!(revision.commit, oid(&head));
    assert_eq!(
        revision.tree.to_string(),
        fx.work.git(&["rev-parse", "HEAD:environments/staging"])
    );
    let files = repo.tree(revision.commit).expect("the commit's tree");
    assert_eq!(
        files
            .read_file("environments/staging/kustomization.yaml")
            .expect("readable"),
        STAGING.as_bytes()
    );
    let names: Vec<_> = files
        .read_dir("environments")
        .expect("listable")
        .into_iter()
        .map(|e| (e.name, e.kind))
        .collect();
    assert_eq!(
        names,
        [
            ("base".to_owned(), EntryKind::Dir),
            ("dev".to_owned(), EntryKind::Dir),
            ("staging".to_owned(), EntryKind::Dir)
        ]
    );
    assert_eq!(files.kind("environments/prod").expect("no error"), None);
    // The cache is bare: there is no work tree with the files in it.
    assert!(!repo.path().join("environments").exists());
    assert_eq!(
        git(repo.path(), &["rev-parse", "--is-bare-repository"]),
        "true"
    );
}

#[test]
fn a_symlink_inside_the_tree_is_followed_and_one_leaving_it_is_refused() {
    let fx = Fixture::new();
    std::os::unix::fs::symlink("../base", fx.work.dir.join("environments/dev/base-link"))
        .expect("symlink");
    std::os::unix::fs::symlink(
        "../../../etc/passwd",
        fx.work.dir.join("environments/escape"),
    )
    .expect("symlink");
    let commit = fx.push_change(&[], "links");
    let repo = fx.open("a", &fx.url(), Credentials::None);
    repo.fetch().expect("fetch");
    let files = repo.tree(oid(&commit)).expect("tree");
    assert_eq!(
        files
            .read_file("environments/dev/base-link/kustomization.yaml")
            .expect("through the link"),
        b"resources:\n  - deployment.yaml\n"
    );
    assert!(matches!(
        files.read_file("environments/escape"),
        Err(stagehand::render::fs::Error::OutsideRoot { .. })
    ));
}

#[test]
fn promoting_into_an_overlay_edits_only_the_promoted_lines_and_records_trailers() {
    let fx = Fixture::new();
    let dev_commit = fx.push_change(
        &[
            (
                "environments/dev/kustomization.yaml",
                &DEV.replace("1.1.0", "1.2.0"),
            ),
            (
                "environments/dev/version.yaml",
                &DEV_VERSION.replace("2026.11", "2026.12"),
            ),
            (
                "environments/dev/CHANGELOG.txt",
                "1.1.0: first\n1.2.0: faster\n",
            ),
        ],
        "dev: web 1.2.0",
    );
    let repo = fx.open("a", &fx.url(), Credentials::None);
    let pipeline = pipeline(&fx.url(), false);
    let outcome = repo
        .promote(
            &pipeline,
            &promotion("p-1", "staging", "dev", &dev_commit),
            &options(),
            &mut Vec::new(),
        )
        .expect("the promotion lands");
    let Outcome::Pushed {
        commit,
        parent,
        attempts,
    } = outcome
    else {
        panic!("expected a pushed commit, got {outcome:?}");
    };
    assert_eq!(parent, oid(&dev_commit));
    assert_eq!(attempts, 1);
    assert_eq!(fx.remote_git(&["rev-parse", "main"]), commit.to_string());

    // The CLI sees exactly the promoted lines changed, comments and layout intact.
    let diff = fx.remote_git(&["diff", "-U0", &format!("{commit}~1"), &commit.to_string()]);
    let changed: Vec<_> = diff
        .lines()
        .filter(|l| {
            (l.starts_with('+') || l.starts_with('-'))
                && !l.starts_with("+++")
                && !l.starts_with("---")
        })
        .collect();
    assert_eq!(
        changed,
        [
            "+1.2.0: faster",
            "-    newTag: \"1.0.0\"   # set by promotion",
            "+    newTag: \"1.2.0\"   # set by promotion",
            "-    newTag: 1.9.0",
            "+    newTag: 2.0.0",
            "-  VERSION: \"2026.10\" # release train",
            "+  VERSION: \"2026.12\" # release train",
        ],
        "{diff}"
    );
    let files = fx.remote_git(&[
        "diff",
        "--name-only",
        &format!("{commit}~1"),
        &commit.to_string(),
    ]);
    assert_eq!(
        files,
        "environments/staging/CHANGELOG.txt\nenvironments/staging/kustomization.yaml\n\
         environments/staging/version.yaml"
    );

    let body = fx.remote_git(&["log", "-1", "--format=%B", &commit.to_string()]);
    assert!(body.starts_with("Promote dev@"), "{body}");
    let trailers = fx.remote_git(&[
        "log",
        "-1",
        "--format=%(trailers:only,unfold)",
        &commit.to_string(),
    ]);
    assert_eq!(
        trailers.lines().collect::<Vec<_>>(),
        [
            "Stagehand-Promotion: p-1".to_owned(),
            format!("Promoted-From: dev@{dev_commit}"),
            "Requested-By: alice@example.test".to_owned(),
            "Approved-By: bob@example.test".to_owned(),
            "Approved-By: carol@example.test".to_owned(),
        ]
    );
    let who = fx.remote_git(&[
        "log",
        "-1",
        "--format=%an <%ae>|%cn <%ce>",
        &commit.to_string(),
    ]);
    assert_eq!(
        who,
        "Stagehand <stagehand@example.test>|Stagehand Bot <bot@example.test>"
    );
    assert_cache_matches_remote(&repo, &fx.remote);
}

#[test]
fn a_promotion_copies_every_image_field_and_value_with_the_text_the_source_writes() {
    // Unquoted `1.10` is a number to a YAML reader (1.1); a promotion must still copy the text.
    let digest = format!("sha256:{}", "0123456789abcdef".repeat(4));
    let dev = format!(
        "\
resources:
  - ../base
images:
  - name: shop/web
    newTag: 1.10
  - name: shop/worker
    newTag: \"1.10\"
  - name: shop/cron
    newTag: 1.0
  - name: shop/batch
    newTag: 010
  - name: shop/api
    newTag: 2.0.0
    tagSuffix: -alpine
  - name: shop/db
    newName: registry.example.test/db
    digest: {digest}
"
    );
    let fx = Fixture::new();
    let dev_commit = fx.push_change(
        &[
            ("environments/dev/kustomization.yaml", &dev),
            (
                "environments/dev/version.yaml",
                "data:\n  VERSION: 1.10\n  OWNER: dev-team\n",
            ),
        ],
        "dev: versions that look like numbers",
    );
    let repo = fx.open("a", &fx.url(), Credentials::None);
    let outcome = repo
        .promote(
            &pipeline(&fx.url(), false),
            &promotion("p-text", "staging", "dev", &dev_commit),
            &options(),
            &mut Vec::new(),
        )
        .expect("the promotion lands");
    let Outcome::Pushed { commit, .. } = outcome else {
        panic!("expected a pushed commit, got {outcome:?}");
    };
    let show = |path: &str| fx.remote_git(&["show", &format!("{commit}:{path}")]);
    let expected = STAGING
        .replace(
            "newTag: \"1.0.0\"   # set by promotion",
            "newTag: 1.10   # set by promotion",
        )
        .replace("newTag: 1.9.0", "newTag: \"1.10\"")
        + [
            "  - name: shop/cron",
            "    newTag: 1.0",
            "  - name: shop/batch",
            "    newTag: 010",
            "  - name: shop/api",
            "    newTag: 2.0.0",
            "    tagSuffix: -alpine",
            "  - name: shop/db",
            "    newName: registry.example.test/db",
            &format!("    digest: {digest}"),
        ]
        .join("\n")
        .as_str();
    assert_eq!(show("environments/staging/kustomization.yaml"), expected);
    assert_eq!(
        show("environments/staging/version.yaml"),
        "# what the status page shows\ndata:\n  VERSION: 1.10 # release train\n  OWNER: qa"
    );
}

#[test]
fn repeating_a_promotion_that_already_landed_reports_the_existing_commit() {
    let fx = Fixture::new();
    let dev_commit = fx.push_change(
        &[(
            "environments/dev/kustomization.yaml",
            &DEV.replace("2.0.0", "2.1.0"),
        )],
        "dev: worker 2.1.0",
    );
    let pipeline = pipeline(&fx.url(), false);
    // What the service records for the promotion before each push, across the crash.
    let mut ledger = Vec::new();
    let first = fx
        .open("a", &fx.url(), Credentials::None)
        .promote(
            &pipeline,
            &promotion("p-7", "staging", "dev", &dev_commit),
            &options(),
            &mut ledger,
        )
        .expect("first run");
    let Outcome::Pushed { commit, .. } = first else {
        panic!("expected a push, got {first:?}");
    };
    // Someone else commits on top; the retried promotion (after a crash, from another cache)
    // still finds its commit by trailer.
    fx.push_change(&[("README.md", "# shop\nmore\n")], "docs");
    let tip_before = fx.remote_git(&["rev-parse", "main"]);
    let again = fx
        .open("b", &fx.url(), Credentials::None)
        .promote(
            &pipeline,
            &promotion("p-7", "staging", "dev", &dev_commit),
            &options(),
            &mut ledger,
        )
        .expect("second run");
    assert_eq!(again, Outcome::AlreadyDone { commit });
    assert_eq!(fx.remote_git(&["rev-parse", "main"]), tip_before);

    // A different promotion of the same content changes nothing and pushes nothing.
    let same = fx
        .open("b", &fx.url(), Credentials::None)
        .promote(
            &pipeline,
            &promotion("p-8", "staging", "dev", &dev_commit),
            &options(),
            &mut Vec::new(),
        )
        .expect("third run");
    assert_eq!(
        same,
        Outcome::NoChange {
            commit: oid(&tip_before)
        }
    );
    assert_eq!(fx.remote_git(&["rev-parse", "main"]), tip_before);
}

#[test]
fn promotion_over_http_with_a_token_fetches_and_pushes_through_git_http_backend() {
    install_crypto_provider();
    let fx = Fixture::new();
    let server = GitHttpServer::start(
        fx.remote.parent().expect("remote has a parent"),
        Some(("x-access-token", "tok-good")),
    );
    let url = server.url("shop.git");
    let dev_commit = fx.push_change(
        &[(
            "environments/dev/kustomization.yaml",
            &DEV.replace("1.1.0", "1.3.0"),
        )],
        "dev: web 1.3.0",
    );
    let repo = fx.open(
        "a",
        &url,
        Credentials::Token {
            token: Secret::new("tok-good"),
        },
    );
    let outcome = repo
        .promote(
            &pipeline(&url, false),
            &promotion("p-http", "staging", "dev", &dev_commit),
            &options(),
            &mut Vec::new(),
        )
        .expect("promotion over http");
    let Outcome::Pushed { commit, .. } = outcome else {
        panic!("expected a push, got {outcome:?}");
    };
    assert_eq!(fx.remote_git(&["rev-parse", "main"]), commit.to_string());
    let staged = fx.remote_git(&["show", "main:environments/staging/kustomization.yaml"]);
    assert!(
        staged.contains("newTag: \"1.3.0\"   # set by promotion"),
        "{staged}"
    );
    assert_cache_matches_remote(&repo, &fx.remote);
}

#[test]
fn refused_or_missing_credentials_are_an_authentication_error_that_leaves_nothing_behind() {
    install_crypto_provider();
    let fx = Fixture::new();
    let server = GitHttpServer::start(
        fx.remote.parent().expect("remote has a parent"),
        Some(("deployer", "right")),
    );
    let url = server.url("shop.git");
    let wrong = fx.open(
        "a",
        &url,
        Credentials::Basic {
            username: "deployer".into(),
            password: Secret::new("wrong-password-123"),
        },
    );
    let err = wrong.fetch().expect_err("the server refuses");
    assert!(
        matches!(err, fetch::Error::Authentication { .. }),
        "{err:?}"
    );
    let text = format!("{err} {err:?}");
    assert!(text.contains(&server.addr.to_string()), "{text}");
    assert!(!text.contains("wrong-password-123"), "{text}");
    assert_eq!(git(wrong.path(), &["for-each-ref"]), "");

    let none = fx.open("b", &url, Credentials::None);
    let err = none.fetch().expect_err("credentials are required");
    assert!(
        matches!(err, fetch::Error::Authentication { .. }),
        "{err:?}"
    );
    assert_eq!(git(none.path(), &["for-each-ref"]), "");
}

#[test]
fn credentials_are_not_sent_in_clear_text_to_another_machine() {
    let fx = Fixture::new();
    let repo = fx.open(
        "a",
        "http://git.example.test/shop.git",
        Credentials::Token {
            token: Secret::new("tok-secret"),
        },
    );
    let err = repo.fetch().expect_err("refused before connecting");
    assert!(
        matches!(err, fetch::Error::InsecureTransport { .. }),
        "{err:?}"
    );
    assert!(!format!("{err} {err:?}").contains("tok-secret"));
}

#[test]
fn pushing_with_refused_credentials_fails_clearly_without_moving_anything() {
    install_crypto_provider();
    let fx = Fixture::new();
    let root = fx.remote.parent().expect("remote has a parent").to_owned();
    let dev_commit = fx.push_change(
        &[(
            "environments/dev/kustomization.yaml",
            &DEV.replace("1.1.0", "1.4.0"),
        )],
        "dev: web 1.4.0",
    );
    // Fetch from an open server, then push to one that refuses our token.
    let open_server = GitHttpServer::start(&root, None);
    let repo = fx.open("a", &open_server.url("shop.git"), Credentials::None);
    repo.fetch().expect("open fetch");
    let tip = fx.remote_git(&["rev-parse", "main"]);
    let locked = GitHttpServer::start(&root, Some(("x-access-token", "right")));
    let err = stagehand::git::push::push_with_lease(
        repo.path(),
        &RemoteUrl::new(locked.url("shop.git")),
        &Credentials::Token {
            token: Secret::new("not-the-token"),
        },
        &Timeouts::default(),
        "main",
        Some(oid(&tip)),
        oid(&dev_commit),
    )
    .expect_err("the push is refused");
    assert!(
        matches!(err, stagehand::git::push::Error::Authentication { .. }),
        "{err:?}"
    );
    assert!(!format!("{err} {err:?}").contains("not-the-token"));
    assert_eq!(fx.remote_git(&["rev-parse", "main"]), tip);
    assert_cache_matches_remote(&repo, &fx.remote);
}

#[test]
fn an_unreachable_remote_is_a_clear_error() {
    install_crypto_provider();
    let fx = Fixture::new();
    // A port that was just free: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("port")
        .local_addr()
        .expect("addr")
        .port();
    let url = format!("http://127.0.0.1:{port}/shop.git");
    let repo = fx.open("a", &url, Credentials::None);
    let err = repo.fetch().expect_err("nobody listens");
    assert!(matches!(err, fetch::Error::Fetch { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&format!("127.0.0.1:{port}")),
        "{err}"
    );

    let missing = fx.open("b", "/nonexistent/stagehand/repo.git", Credentials::None);
    let err = missing.fetch().expect_err("no such repository");
    assert!(
        err.to_string().contains("/nonexistent/stagehand/repo.git"),
        "{err}"
    );

    let pipeline = pipeline(&url, false);
    let err = repo
        .promote(
            &pipeline,
            &promotion("p-x", "staging", "dev", &"0".repeat(40)),
            &options(),
            &mut Vec::new(),
        )
        .expect_err("cannot promote without the remote");
    assert!(matches!(err, promote::Error::Fetch(_)), "{err:?}");
    assert_eq!(git(repo.path(), &["for-each-ref"]), "");
}

#[test]
fn a_missing_branch_or_path_is_named_in_the_error() {
    let fx = Fixture::new();
    let repo = fx.open("a", &fx.url(), Credentials::None);
    let pipeline = pipeline(&fx.url(), false);
    // A branch deleted on the remote is forgotten by the next fetch, not served stale.
    fx.work.git(&["push", "-q", "origin", "main:env/prod"]);
    repo.fetch().expect("fetch");
    repo.revision(&pipeline, "prod").expect("env/prod exists");
    fx.work.git(&["push", "-q", "origin", ":env/prod"]);
    let fetched = repo.fetch().expect("fetch");
    assert_eq!(fetched.pruned, ["env/prod"]);
    let err = repo
        .revision(&pipeline, "prod")
        .expect_err("no env/prod any more");
    assert!(
        matches!(&err, revision::Error::MissingBranch { branch, .. } if branch == "env/prod"),
        "{err:?}"
    );
    assert!(err.to_string().contains("env/prod"), "{err}");

    let moved = Pipeline::parse(
        Path::new("pipeline.yaml"),
        &format!(
            "apiVersion: stagehand.dev/v1alpha1\nkind: Pipeline\nmetadata: {{name: shop}}\n\
             spec:\n  repository: {{url: {:?}}}\n  environments:\n\
             \x20   - name: qa\n      source: {{overlay: environments/qa}}\n",
            fx.url()
        ),
    )
    .expect("valid");
    let err = repo.revision(&moved, "qa").expect_err("no such directory");
    assert!(
        matches!(&err, revision::Error::MissingPath { path, .. } if path == "environments/qa"),
        "{err:?}"
    );
    assert!(err.to_string().contains("environments/qa"), "{err}");

    let err = repo
        .promote(
            &pipeline,
            &promotion(
                "p-prod",
                "prod",
                "staging",
                &fx.work.git(&["rev-parse", "HEAD"]),
            ),
            &options(),
            &mut Vec::new(),
        )
        .expect_err("the target branch is missing");
    assert!(err.to_string().contains("env/prod"), "{err}");

    let listing_missing = Pipeline::parse(
        Path::new("pipeline.yaml"),
        &pipeline_text(&fx.url(), false).replace("CHANGELOG.txt", "MISSING.txt"),
    )
    .expect("valid");
    let err = repo
        .promote(
            &listing_missing,
            &promotion(
                "p-miss",
                "staging",
                "dev",
                &fx.work.git(&["rev-parse", "HEAD"]),
            ),
            &options(),
            &mut Vec::new(),
        )
        .expect_err("the listed file is missing in dev");
    assert!(
        matches!(&err, promote::Error::MissingFile { path, .. } if path == "environments/dev/MISSING.txt"),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("environments/dev/MISSING.txt"),
        "{err}"
    );
    assert_cache_matches_remote(&repo, &fx.remote);
}

#[test]
fn the_branch_model_moves_forward_and_refuses_foreign_commits_unless_merging_is_allowed() {
    let fx = Fixture::new();
    fx.work.git(&["push", "-q", "origin", "main:env/prod"]);
    let staging_commit = fx.push_change(
        &[(
            "environments/staging/version.yaml",
            "data:\n  VERSION: \"2026.12\"\n",
        )],
        "staging: 2026.12",
    );
    let repo = fx.open("a", &fx.url(), Credentials::None);
    let strict = pipeline(&fx.url(), false);
    let outcome = repo
        .promote(
            &strict,
            &promotion("p-prod-1", "prod", "staging", &staging_commit),
            &options(),
            &mut Vec::new(),
        )
        .expect("fast-forward promotion");
    let Outcome::Pushed { commit: first, .. } = outcome else {
        panic!("expected a push, got {outcome:?}");
    };
    // env/prod now has the promoted tree, in one commit on top of its old tip.
    assert_eq!(
        fx.remote_git(&["rev-parse", "env/prod^{tree}"]),
        fx.remote_git(&["rev-parse", &format!("{staging_commit}^{{tree}}")])
    );
    assert_eq!(fx.remote_git(&["rev-list", "--merges", "env/prod"]), "");
    let trailers = fx.remote_git(&[
        "log",
        "-1",
        "--format=%(trailers:key=Promoted-From,valueonly)",
        "env/prod",
    ]);
    assert_eq!(trailers, format!("staging@{staging_commit}"));

    // A hotfix straight on env/prod, then a new staging commit.
    let hotfix_dir = fx._dir.path().join("hotfix");
    git(
        fx._dir.path(),
        &[
            "clone",
            "-q",
            "-b",
            "env/prod",
            fx.remote.to_str().expect("utf-8"),
            hotfix_dir.to_str().expect("utf-8"),
        ],
    );
    let hot = Repo { dir: hotfix_dir };
    hot.write(&[("HOTFIX.md", "patched in prod\n")]);
    let hotfix = hot.commit("hotfix in prod");
    hot.git(&["push", "-q", "origin", "env/prod"]);
    let staging_next = fx.push_change(
        &[(
            "environments/staging/version.yaml",
            "data:\n  VERSION: \"2027.01\"\n",
        )],
        "staging: 2027.01",
    );

    let err = repo
        .promote(
            &strict,
            &promotion("p-prod-2", "prod", "staging", &staging_next),
            &options(),
            &mut Vec::new(),
        )
        .expect_err("diverged without merge permission");
    match &err {
        promote::Error::Diverged {
            commits, branch, ..
        } => {
            assert_eq!(branch, "env/prod");
            assert_eq!(commits, &[oid(&hotfix)]);
        }
        other => panic!("expected Diverged, got {other:?}"),
    }
    assert!(err.to_string().contains(&hotfix), "{err}");
    assert_eq!(fx.remote_git(&["rev-parse", "env/prod"]), hotfix);
    assert_cache_matches_remote(&repo, &fx.remote);

    let lenient = pipeline(&fx.url(), true);
    let outcome = repo
        .promote(
            &lenient,
            &promotion("p-prod-2", "prod", "staging", &staging_next),
            &options(),
            &mut Vec::new(),
        )
        .expect("merge allowed");
    let Outcome::Pushed {
        commit: merged,
        parent,
        ..
    } = outcome
    else {
        panic!("expected a push, got {outcome:?}");
    };
    assert_eq!(parent, oid(&hotfix));
    assert_eq!(
        fx.remote_git(&["show", "env/prod:HOTFIX.md"]),
        "patched in prod"
    );
    assert_eq!(
        fx.remote_git(&["show", "env/prod:environments/staging/version.yaml"]),
        "data:\n  VERSION: \"2027.01\""
    );
    assert_eq!(fx.remote_git(&["rev-list", "--merges", "env/prod"]), "");
    assert_eq!(
        fx.remote_git(&["rev-list", "--first-parent", &format!("{first}..{merged}")]),
        format!("{merged}\n{hotfix}")
    );
}

#[test]
fn history_lists_promotions_and_a_rollback_restores_one_environment() {
    let fx = Fixture::new();
    let repo = fx.open("a", &fx.url(), Credentials::None);
    let pipeline = pipeline(&fx.url(), false);
    let mut promoted = Vec::new();
    for (i, tag) in ["1.5.0", "1.6.0"].iter().enumerate() {
        let dev = fx.push_change(
            &[(
                "environments/dev/kustomization.yaml",
                &DEV.replace("1.1.0", tag),
            )],
            &format!("dev: web {tag}"),
        );
        let outcome = repo
            .promote(
                &pipeline,
                &promotion(&format!("p-h{i}"), "staging", "dev", &dev),
                &options(),
                &mut Vec::new(),
            )
            .expect("promotion");
        let Outcome::Pushed { commit, .. } = outcome else {
            panic!("expected a push, got {outcome:?}");
        };
        promoted.push(commit);
    }
    fx.push_change(&[("README.md", "# shop\nunrelated\n")], "docs only");
    repo.fetch().expect("fetch");

    let history = repo.history(&pipeline, "staging", 10).expect("history");
    let commits: Vec<_> = history.iter().map(|e| e.commit).collect();
    assert_eq!(
        commits[..2],
        [promoted[1], promoted[0]],
        "newest first, docs commit skipped"
    );
    assert_eq!(history[0].trailers.promotion.as_deref(), Some("p-h1"));
    assert_eq!(
        history[0].trailers.approved_by,
        ["bob@example.test", "carol@example.test"]
    );
    assert_eq!(
        history.last().map(|e| e.trailers.promotion.clone()),
        Some(None)
    );

    let dev_before = fx.remote_git(&["rev-parse", "main:environments/dev"]);
    let rollback = PromotionCommit {
        id: "r-1".into(),
        target: "staging".into(),
        change: Change::Rollback {
            commit: promoted[0],
        },
        requested_by: "alice@example.test".into(),
        approved_by: vec![],
    };
    let outcome = repo
        .promote(&pipeline, &rollback, &options(), &mut Vec::new())
        .expect("rollback");
    let Outcome::Pushed { commit, .. } = outcome else {
        panic!("expected a push, got {outcome:?}");
    };
    assert_eq!(
        fx.remote_git(&["rev-parse", "main:environments/staging"]),
        fx.remote_git(&[
            "rev-parse",
            &format!("{}:environments/staging", promoted[0])
        ])
    );
    assert_eq!(
        fx.remote_git(&["rev-parse", "main:environments/dev"]),
        dev_before
    );
    assert_eq!(
        fx.remote_git(&["show", "main:README.md"]),
        "# shop\nunrelated"
    );
    let trailer = fx.remote_git(&[
        "log",
        "-1",
        "--format=%(trailers:key=Rolled-Back-To,valueonly)",
        &commit.to_string(),
    ]);
    assert_eq!(trailer, format!("staging@{}", promoted[0]));
}

#[test]
fn two_racing_promotions_and_a_foreign_commit_all_land_on_a_linear_history() {
    let fx = Fixture::new();
    // The remote holds the first push that reaches it until the test has pushed a foreign
    // commit: a push between that promotion's fetch and its ref update, made on demand.
    let gate = fx._dir.path().join("gate");
    std::fs::create_dir_all(&gate).expect("gate dir");
    let hook = fx.remote.join("hooks/pre-receive");
    std::fs::write(
        &hook,
        format!(
            "#!/bin/sh\nG='{}'\nif [ -e \"$G/armed\" ] && mkdir \"$G/claimed\" 2>/dev/null; then\n  \
             touch \"$G/entered\"\n  while [ ! -e \"$G/open\" ]; do sleep 0.05; done\nfi\n\
             cat >/dev/null\nexit 0\n",
            gate.display()
        ),
    )
    .expect("hook written");
    let mut permissions = std::fs::metadata(&hook).expect("hook").permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut permissions, 0o755);
    std::fs::set_permissions(&hook, permissions).expect("hook executable");

    let web = fx.push_change(
        &[(
            "environments/dev/kustomization.yaml",
            &DEV.replace("1.1.0", "1.7.0"),
        )],
        "dev: web 1.7.0",
    );
    let both = fx.push_change(
        &[(
            "environments/dev/kustomization.yaml",
            &DEV.replace("1.1.0", "1.7.0").replace("2.0.0", "2.7.0"),
        )],
        "dev: worker 2.7.0",
    );
    let before = fx.remote_git(&["rev-parse", "main"]);
    std::fs::write(gate.join("armed"), "").expect("arm");

    let url = fx.url();
    let racers: Vec<_> = [
        ("p-race-a", web.clone(), "a"),
        ("p-race-b", both.clone(), "b"),
    ]
    .into_iter()
    .map(|(id, commit, state)| {
        // Two replicas: separate caches, racing only through the remote.
        let repo = fx.open(state, &url, Credentials::None);
        let pipeline = pipeline(&url, false);
        std::thread::spawn(move || {
            repo.promote(
                &pipeline,
                &promotion(id, "staging", "dev", &commit),
                &options(),
                &mut Vec::new(),
            )
        })
    })
    .collect();

    let entered = gate.join("entered");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while !entered.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "no push reached the remote"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    fx.work.write(&[("README.md", "# shop\nforeign change\n")]);
    let mut foreign = fx.work.commit("foreign: docs");
    // The other promotion may land first; a person would rebase and push again.
    for _ in 0..10 {
        let pushed = std::process::Command::new("git")
            .args(["push", "-q", "origin", "main"])
            .current_dir(&fx.work.dir)
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .status()
            .expect("git runs");
        if pushed.success() {
            break;
        }
        fx.work.git(&["pull", "-q", "--rebase", "origin", "main"]);
        foreign = fx.work.git(&["rev-parse", "HEAD"]);
    }
    std::fs::write(gate.join("open"), "").expect("open the gate");

    let outcomes: Vec<_> = racers
        .into_iter()
        .map(|t| t.join().expect("no panic").expect("each promotion lands"))
        .collect();
    let mut landed = Vec::new();
    for outcome in &outcomes {
        match outcome {
            Outcome::Pushed { commit, .. } => landed.push(*commit),
            other => panic!("expected both to push, got {other:?}"),
        }
    }
    assert!(
        outcomes
            .iter()
            .any(|o| matches!(o, Outcome::Pushed { attempts, .. } if *attempts > 1)),
        "at least one promotion was redone after a rejection: {outcomes:?}"
    );

    // All three commits are on main, one after another, with no merge.
    let line = fx.remote_git(&["rev-list", "--first-parent", &format!("{before}..main")]);
    let line: Vec<_> = line.lines().collect();
    assert_eq!(line.len(), 3, "{line:?}");
    assert!(line.contains(&foreign.as_str()));
    for commit in &landed {
        assert!(line.contains(&commit.to_string().as_str()));
    }
    assert_eq!(
        fx.remote_git(&["rev-list", "--merges", &format!("{before}..main")]),
        ""
    );
    assert_eq!(
        fx.remote_git(&["show", "main:README.md"]),
        "# shop\nforeign change"
    );

    // Each promotion touched only promoted lines of staging, and the last one decides them.
    for commit in &landed {
        let diff = fx.remote_git(&[
            "diff",
            "-U0",
            &format!("{commit}~1"),
            &commit.to_string(),
            "--",
        ]);
        for line in diff.lines() {
            if line.starts_with("+++") || line.starts_with("---") {
                assert!(line.contains("environments/staging/"), "{line}");
            } else if line.starts_with('+') || line.starts_with('-') {
                assert!(
                    line.contains("newTag:") || line.contains("VERSION:"),
                    "unexpected change in {commit}: {line}"
                );
            }
        }
    }
    let last = line
        .iter()
        .find(|c| **c != foreign)
        .expect("a promotion is newest or second newest");
    let last_source = if landed[0] == oid(last) { &web } else { &both };
    let staged = fx.remote_git(&["show", "main:environments/staging/kustomization.yaml"]);
    let dev_then = fx.remote_git(&[
        "show",
        &format!("{last_source}:environments/dev/kustomization.yaml"),
    ]);
    let tag = |text: &str, image: &str| {
        let mut lines = text.lines().skip_while(|l| !l.ends_with(image));
        lines
            .nth(1)
            .map(|l| l.split('#').next().unwrap_or("").trim().to_owned())
    };
    assert_eq!(tag(&staged, "shop/web"), tag(&dev_then, "shop/web"));
    assert_eq!(tag(&staged, "shop/worker"), tag(&dev_then, "shop/worker"));
    assert!(
        staged.contains("resources:\n  - ../base   # shared manifests\n\nnamePrefix: staging-\n")
    );
}

#[tokio::test]
async fn fetch_now_sees_a_commit_pushed_just_before_it() {
    let fx = Fixture::new();
    let repo = fx.open("a", &fx.url(), Credentials::None);
    let poller = repo.poller(std::time::Duration::from_secs(3600));
    poller.fetch_now().await.expect("first fetch");
    let pushed = fx.push_change(&[("README.md", "# shop\nnew\n")], "new commit");
    let outcome = poller.fetch_now().await.expect("second fetch");
    assert_eq!(outcome.updated, ["main"]);
    assert_eq!(repo.branch_tip("main").expect("main"), oid(&pushed));
}

#[test]
fn promotion_over_ssh_uses_the_configured_key_and_pinned_host_key() {
    let fx = Fixture::new();
    let sshd = crate::support::sshd::Sshd::start(&fx._dir.path().join("sshd"));
    let url = sshd.url(&fx.remote);
    let dev_commit = fx.push_change(
        &[(
            "environments/dev/kustomization.yaml",
            &DEV.replace("1.1.0", "1.8.0"),
        )],
        "dev: web 1.8.0",
    );
    let repo = fx.open(
        "a",
        &url,
        Credentials::SshKey {
            path: sshd.client_key.clone(),
            known_hosts: Some(sshd.known_hosts.clone()),
        },
    );
    let outcome = repo
        .promote(
            &pipeline(&url, false),
            &promotion("p-ssh", "staging", "dev", &dev_commit),
            &options(),
            &mut Vec::new(),
        )
        .expect("promotion over ssh");
    let Outcome::Pushed { commit, .. } = outcome else {
        panic!("expected a push, got {outcome:?}");
    };
    assert_eq!(fx.remote_git(&["rev-parse", "main"]), commit.to_string());
    assert_cache_matches_remote(&repo, &fx.remote);

    // A key the server does not know gets nowhere and leaves nothing behind.
    let stranger = fx._dir.path().join("stranger");
    let stranger_pub = fx._dir.path().join("stranger.pub");
    let status = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&stranger)
        .status()
        .expect("ssh-keygen runs");
    assert!(status.success());
    let refused = fx.open(
        "b",
        &url,
        Credentials::SshKey {
            path: stranger,
            known_hosts: Some(sshd.known_hosts.clone()),
        },
    );
    let err = refused.fetch().expect_err("unknown key");
    assert!(
        matches!(err, fetch::Error::Authentication { .. }),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .contains(&format!("127.0.0.1:{}", sshd.port)),
        "{err}"
    );
    assert_eq!(git(refused.path(), &["for-each-ref"]), "");

    // A pin that names another host key: ssh refuses the server, whatever else it trusts.
    let impostor_pin = fx._dir.path().join("impostor_known_hosts");
    let other_key = std::fs::read_to_string(stranger_pub).expect("a public key");
    std::fs::write(
        &impostor_pin,
        format!("[127.0.0.1]:{} {other_key}", sshd.port),
    )
    .expect("writable");
    let mispinned = fx.open(
        "c",
        &url,
        Credentials::SshKey {
            path: sshd.client_key.clone(),
            known_hosts: Some(impostor_pin),
        },
    );
    let err = mispinned
        .fetch()
        .expect_err("the host key is not the pinned one");
    assert!(
        err.to_string()
            .contains(&format!("127.0.0.1:{}", sshd.port)),
        "{err}"
    );
    assert_eq!(git(mispinned.path(), &["for-each-ref"]), "");
}

/// Runs `work` on a thread and gives up after `bound`: a test of a timeout must not hang itself.
fn within<T: Send + 'static>(
    bound: std::time::Duration,
    what: &str,
    work: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || sender.send(work()));
    receiver
        .recv_timeout(bound)
        .unwrap_or_else(|_| panic!("{what} still hangs after {bound:?}"))
}

/// Command lines and environments of the running processes that mention `needle`.
fn processes_mentioning(needle: &str) -> Vec<(u32, String, Vec<String>)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != std::process::id())
        .filter_map(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if !cmdline.contains(needle) {
                return None;
            }
            let environ = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
            let environ = String::from_utf8_lossy(&environ)
                .split('\0')
                .filter(|v| !v.is_empty())
                .map(str::to_owned)
                .collect();
            Some((pid, cmdline, environ))
        })
        .collect()
}

#[test]
fn a_push_never_shows_its_token_on_a_command_line_and_its_git_sees_no_secrets_of_ours() {
    install_crypto_provider();
    let fx = Fixture::new();
    let root = fx.remote.parent().expect("remote has a parent").to_owned();
    let token = "tok-cmdline-sentinel-42";
    let dev_commit = fx.push_change(&[("README.md", "# shop\nslow\n")], "slow push");
    let tip_before = git(&fx.remote, &["rev-parse", "main~1"]);
    let open = GitHttpServer::start(&root, None);
    let repo = fx.open("a", &open.url("shop.git"), Credentials::None);
    repo.fetch().expect("fetch");
    // Every answer waits, so the push and its helpers stay alive long enough to be read.
    let slow = GitHttpServer::start_slow(
        &root,
        Some(("x-access-token", token)),
        std::time::Duration::from_millis(700),
    );
    git(&fx.remote, &["update-ref", "refs/heads/main", &tip_before]);
    let url = RemoteUrl::new(slow.url("shop.git"));
    let git_dir = repo.path().to_owned();
    let new = oid(&dev_commit);
    let pushing = std::thread::spawn(move || {
        push::push_with_lease(
            &git_dir,
            &url,
            &Credentials::Token {
                token: Secret::new(token),
            },
            &Timeouts::default(),
            "main",
            Some(oid(&tip_before)),
            new,
        )
    });
    let needle = slow.addr.to_string();
    let mut seen = std::collections::BTreeMap::new();
    while !pushing.is_finished() {
        for (pid, cmdline, environ) in processes_mentioning(&needle) {
            seen.entry(pid).or_insert((cmdline, environ));
        }
    }
    let outcome = pushing.join().expect("the push thread ends");
    assert_eq!(outcome.expect("the push succeeds"), push::Outcome::Updated);
    assert_eq!(fx.remote_git(&["rev-parse", "main"]), dev_commit);

    let push_line = seen
        .values()
        .map(|(cmdline, _)| cmdline)
        .find(|c| c.contains(" push "))
        .unwrap_or_else(|| panic!("git push was seen running: {seen:?}"));
    assert!(
        push_line.contains(&format!(" -- {}", slow.url("shop.git"))),
        "the remote and refs follow --: {push_line}"
    );
    let basic = "eC1hY2Nlc3MtdG9rZW46dG9rLWNtZGxpbmUtc2VudGluZWwtNDI"; // base64 of the account
    // What cargo, nextest and env.sh set for this test process stands for the service's own
    // settings and secrets: none of it may reach git or its helpers.
    let ours = |name: &str| {
        ["CARGO", "NEXTEST", "RUST", "STAGEHAND_", "SOPS_"]
            .iter()
            .any(|prefix| name.starts_with(prefix))
    };
    assert!(
        std::env::vars().any(|(name, _)| ours(&name)),
        "the test runs with variables of its own"
    );
    for (pid, (cmdline, environ)) in &seen {
        assert!(!cmdline.contains(token), "{pid}: {cmdline}");
        assert!(!cmdline.contains(basic), "{pid}: {cmdline}");
        for variable in environ {
            let name = variable.split('=').next().unwrap_or_default();
            assert!(!ours(name), "process {pid} ({cmdline}) inherited {name}");
        }
    }
}

#[test]
fn a_remote_that_accepts_and_never_answers_times_out_naming_it() {
    install_crypto_provider();
    let fx = Fixture::new();
    let silent = SilentServer::start();
    let addr = silent.addr.to_string();
    let short = Timeouts {
        connect: std::time::Duration::from_secs(2),
        idle: std::time::Duration::from_secs(2),
    };
    let ssh_key = Credentials::SshKey {
        path: fx._dir.path().join("no-key"),
        known_hosts: Some(fx._dir.path().join("known_hosts")),
    };
    for (name, url, credentials) in [
        ("http", format!("http://{addr}/shop.git"), Credentials::None),
        ("git", format!("git://{addr}/shop.git"), Credentials::None),
        ("ssh", format!("ssh://git@{addr}/shop.git"), ssh_key.clone()),
    ] {
        let repo = fx.open(name, &url, credentials).with_timeouts(short);
        let err = within(std::time::Duration::from_secs(120), name, move || {
            repo.fetch().expect_err("nothing answers")
        });
        assert!(
            matches!(err, fetch::Error::Timeout { .. }),
            "{name}: {err:?}"
        );
        assert!(err.to_string().contains(&addr), "{name}: {err}");
    }

    let repo = fx.open("push", &fx.url(), Credentials::None);
    repo.fetch().expect("fetch from the file remote");
    let tip = oid(&fx.remote_git(&["rev-parse", "main"]));
    for (name, url, credentials) in [
        ("http", format!("http://{addr}/shop.git"), Credentials::None),
        ("ssh", format!("ssh://git@{addr}/shop.git"), ssh_key),
    ] {
        let git_dir = repo.path().to_owned();
        let err = within(std::time::Duration::from_secs(120), name, move || {
            push::push_with_lease(
                &git_dir,
                &RemoteUrl::new(url),
                &credentials,
                &short,
                "main",
                Some(tip),
                tip,
            )
            .expect_err("nothing answers")
        });
        assert!(
            matches!(err, push::Error::Timeout { .. }),
            "{name}: {err:?}"
        );
        assert!(err.to_string().contains(&addr), "{name}: {err}");
    }
}

#[test]
fn ssh_without_a_pinned_host_key_is_refused_before_connecting() {
    let fx = Fixture::new();
    let silent = SilentServer::start();
    for url in [
        format!("ssh://git@{}/shop.git", silent.addr),
        "git@git.example.test:team/shop.git".to_owned(),
    ] {
        for credentials in [
            Credentials::None,
            Credentials::SshKey {
                path: fx._dir.path().join("id"),
                known_hosts: None,
            },
        ] {
            let repo = fx.open("a", &url, credentials.clone());
            let err = repo.fetch().expect_err("no pinned host key");
            assert!(
                matches!(err, fetch::Error::UnpinnedHostKey { .. }),
                "{url}: {err:?}"
            );
            let err = push::push_with_lease(
                repo.path(),
                &RemoteUrl::new(url.clone()),
                &credentials,
                &Timeouts::default(),
                "main",
                None,
                oid(&"1".repeat(40)),
            )
            .expect_err("no pinned host key");
            assert!(
                matches!(err, push::Error::UnpinnedHostKey { .. }),
                "{url}: {err:?}"
            );
        }
    }
}

#[test]
fn a_push_url_with_credentials_inside_is_refused() {
    let fx = Fixture::new();
    let repo = fx.open("a", &fx.url(), Credentials::None);
    let err = push::push_with_lease(
        repo.path(),
        &RemoteUrl::new("https://x-access-token:tok-in-url@git.example.test/shop.git"),
        &Credentials::None,
        &Timeouts::default(),
        "main",
        None,
        oid(&"1".repeat(40)),
    )
    .expect_err("credentials in the URL");
    assert!(
        matches!(err, push::Error::CredentialsInUrl { .. }),
        "{err:?}"
    );
    assert!(!format!("{err} {err:?}").contains("tok-in-url"));
}

#[test]
fn a_damaged_cache_is_detected_and_fetched_again() {
    let fx = Fixture::new();
    let pipeline = pipeline(&fx.url(), false);
    let repo = fx.open("a", &fx.url(), Credentials::None);
    repo.fetch().expect("first fetch");
    let expected = repo.revision(&pipeline, "dev").expect("dev revision");
    let objects = repo.path().join("objects");

    // Objects lost under a running service: the same handle notices on its next fetch.
    std::fs::remove_dir_all(&objects).expect("objects removable");
    std::fs::create_dir_all(objects.join("pack")).expect("objects dir");
    repo.fetch().expect("the fetch after the loss");
    let again = repo.revision(&pipeline, "dev").expect("dev revision again");
    assert_eq!(again, expected);
    let overlay = repo
        .tree(again.commit)
        .expect("tree")
        .read_file("environments/dev/kustomization.yaml")
        .expect("the overlay is readable again");
    assert_eq!(overlay, DEV.as_bytes());

    // A cache that cannot even be opened, found when the service starts.
    std::fs::write(repo.path().join("HEAD"), "garbage\n").expect("HEAD writable");
    std::fs::write(repo.path().join("config"), "[[[ not git config").expect("writable");
    let reopened = fx.open("a", &fx.url(), Credentials::None);
    reopened.fetch().expect("the fetch into a fresh cache");
    assert_eq!(
        reopened.revision(&pipeline, "dev").expect("dev revision"),
        expected
    );

    // A pack whose bytes were damaged.
    let pack_dir = reopened.path().join("objects/pack");
    for entry in std::fs::read_dir(&pack_dir).expect("pack dir") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "pack") {
            let mut bytes = std::fs::read(&path).expect("pack readable");
            let len = bytes.len();
            bytes[12..len - 20].fill(0x5a);
            std::fs::write(&path, bytes).expect("pack writable");
        }
    }
    let third = fx.open("a", &fx.url(), Credentials::None);
    third.fetch().expect("the fetch after damage");
    assert_eq!(third.revision(&pipeline, "dev").expect("dev"), expected);
    assert_cache_matches_remote(&third, &fx.remote);
}

/// Commits as `author`, committed by `committer`, with `message` (which may carry trailers).
fn commit_as(
    work: &Repo,
    files: &[(&str, &str)],
    author: &str,
    committer: &str,
    message: &str,
) -> String {
    work.write(files);
    work.git(&["add", "-A"]);
    let out = std::process::Command::new("git")
        .args(["commit", "-q", "-m", message])
        .current_dir(&work.dir)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_AUTHOR_NAME", "A")
        .env("GIT_AUTHOR_EMAIL", author)
        .env("GIT_COMMITTER_NAME", "C")
        .env("GIT_COMMITTER_EMAIL", committer)
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    work.git(&["rev-parse", "HEAD"])
}

#[test]
fn authors_are_everyone_who_wrote_what_moves_and_a_range_too_long_is_refused() {
    let fx = Fixture::new();
    let start = fx.work.git(&["rev-parse", "HEAD"]);
    commit_as(
        &fx.work,
        &[("environments/dev/version.yaml", "version: 2\n")],
        "Ann@Example.test",
        "cy@example.test",
        "dev: version 2\n\nCo-authored-by: Dee <dee@example.test>\n",
    );
    // Only the staging directory: not what a promotion from dev brings.
    commit_as(
        &fx.work,
        &[("environments/staging/version.yaml", "version: 9\n")],
        "stan@example.test",
        "stan@example.test",
        "staging: by hand",
    );
    let to = commit_as(
        &fx.work,
        &[("README.md", "# shop\nnotes\n")],
        "ed@example.test",
        "ed@example.test",
        "docs",
    );
    fx.work.git(&["push", "-q", "origin", "main"]);
    let repo = fx.open("a", &fx.url(), Credentials::None);
    repo.fetch().expect("fetch");
    let pipeline = pipeline(&fx.url(), false);
    let dev = stagehand::git::Location::of(&pipeline, "dev").expect("dev");

    let people = |path: Option<&stagehand::git::Location>| -> Vec<String> {
        let mut people: Vec<String> = Vec::new();
        for commit in repo
            .authored(oid(&to), Some(oid(&start)), path, 100, None)
            .expect("authors")
        {
            assert_eq!(commit.promotion, None, "written by hand");
            people.extend(commit.people);
        }
        people.dedup();
        people
    };
    assert_eq!(
        people(Some(&dev)),
        ["ann@example.test", "cy@example.test", "dee@example.test"]
    );
    let everyone = people(None);
    assert_eq!(everyone.len(), 5, "{everyone:?}");
    let too_long = repo
        .authored(oid(&to), Some(oid(&start)), Some(&dev), 2, None)
        .expect_err("three commits do not fit in two");
    assert!(
        matches!(too_long, stagehand::git::history::AuthorsError::TooLong(_)),
        "{too_long:?}"
    );
    assert!(
        too_long.to_string().contains("more than 2 commits"),
        "{too_long}"
    );
}

#[test]
fn a_revision_belongs_to_an_environment_only_on_the_first_parent_line_of_its_branch() {
    let fx = Fixture::new();
    let initial = fx.work.git(&["rev-parse", "HEAD"]);
    let dev = fx.push_change(
        &[("environments/dev/version.yaml", "version: 2\n")],
        "dev: version 2",
    );
    let docs = fx.push_change(&[("README.md", "# shop\nmore\n")], "docs");
    fx.work.git(&["checkout", "-q", "-b", "feature"]);
    let feature = fx.work.commit("feature: nothing yet");
    fx.work.git(&["push", "-q", "origin", "feature"]);
    fx.work.git(&["checkout", "-q", "main"]);
    let repo = fx.open("a", &fx.url(), Credentials::None);
    repo.fetch().expect("fetch");
    let pipeline = pipeline(&fx.url(), false);
    let revision = |env: &str, commit: &str| {
        repo.revision_of(&pipeline, env, oid(commit), 100)
            .expect("history reads")
            .map(|entry| entry.commit.to_string())
    };
    // A commit that left dev's directory as it was holds dev's previous revision.
    assert_eq!(revision("dev", &docs).as_deref(), Some(dev.as_str()));
    assert_eq!(revision("dev", &dev).as_deref(), Some(dev.as_str()));
    assert_eq!(
        revision("staging", &docs).as_deref(),
        Some(initial.as_str())
    );
    assert_eq!(revision("dev", &feature), None, "another branch");
    assert!(
        repo.creates(&pipeline, "dev", oid(&initial))
            .expect("reads")
    );
    assert!(!repo.creates(&pipeline, "dev", oid(&dev)).expect("reads"));
}
