//! Image sources (`spec.images`): the commit that sets a chosen tag, against a real Git remote
//! checked with the git CLI.

use std::path::{Path, PathBuf};

use stagehand::git::images::{Error, ImageUpdate, Outcome, SetImage};
use stagehand::git::promote::{Identity, Options};
use stagehand::git::{Credentials, RemoteUrl, Repository};
use stagehand::pipeline::Pipeline;

use crate::support::git::{Repo, bare_remote, git};

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
