//! The desired state of an environment as Git says it: fetch the repository, find the
//! environment's revision, render its directory straight from the object database, decrypting
//! SOPS files on the way.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::Value;

use super::{Desired, DesiredState, SourceError, SourceStage};
use crate::git;
use crate::pipeline::{Decryption, Environment, Pipeline};
use crate::render::fs::{DirEntry, EntryKind, FileSystem};
use crate::render::{self, sops::SopsDecrypt};
use crate::secrets::{self, Identities, Keyring};

/// Whether a [`GitSource`] fetches the repository before reading an environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fetch {
    /// Fetch before every read (a one-off `stagehand sync`).
    BeforeEachRead,
    /// Read the cache as it is: a poller already keeps it fresh.
    Never,
}

/// Reads environments from one Git repository.
pub struct GitSource {
    pipeline: Arc<Pipeline>,
    repository: git::Repository,
    keys: Arc<Keyring>,
    fetch: Fetch,
    renders: Arc<Renders>,
}

/// The last render of each environment that can be reused.
#[derive(Default)]
struct Renders(Mutex<HashMap<String, Rendered>>);

/// An environment's last render that decrypted nothing: while its commit stays, a pass reuses
/// the objects instead of rendering again (most passes of an idle service). A render that
/// decrypted a file is never kept, so plaintext does not outlive its pass and a rotated key
/// file is read again.
struct Rendered {
    commit: gix::ObjectId,
    path: String,
    objects: Arc<[Value]>,
}

impl GitSource {
    /// Environments of `pipeline`, read from `repository` and decrypted with the identities
    /// of `keys` as each environment's `decryption:` allows.
    pub fn new(
        pipeline: Arc<Pipeline>,
        repository: git::Repository,
        keys: Arc<Keyring>,
        fetch: Fetch,
    ) -> Self {
        Self {
            pipeline,
            repository,
            keys,
            fetch,
            renders: Arc::default(),
        }
    }
}

impl Renders {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Rendered>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The objects `env` rendered to at `commit` from `path`, if they were kept.
    fn get(&self, env: &str, commit: gix::ObjectId, path: &str) -> Option<Arc<[Value]>> {
        self.lock()
            .get(env)
            .filter(|r| r.commit == commit && r.path == path)
            .map(|r| r.objects.clone())
    }

    /// Keeps `rendered` as `env`'s last render, or forgets the one kept.
    fn keep(&self, env: &str, rendered: Option<Rendered>) {
        let mut renders = self.lock();
        match rendered {
            Some(rendered) => renders.insert(env.to_owned(), rendered),
            None => renders.remove(env),
        };
    }
}

fn failed(
    stage: SourceStage,
    revision: Option<String>,
    source: impl std::error::Error + Send + Sync + 'static,
) -> SourceError {
    SourceError {
        stage,
        revision,
        source: Box::new(source),
    }
}

impl DesiredState for GitSource {
    async fn desired(&self, env: &Environment) -> Result<Desired, SourceError> {
        self.desired_at(env, None).await
    }
}

/// One environment pinned to one commit of its branch, pushed or not: what a promotion would
/// make it run, checked before anything reaches the remote.
pub struct AtCommit {
    /// The environment's source.
    pub source: Arc<GitSource>,
    /// The commit it is pinned to.
    pub commit: gix::ObjectId,
}

impl DesiredState for AtCommit {
    async fn desired(&self, env: &Environment) -> Result<Desired, SourceError> {
        self.source.desired_at(env, Some(self.commit)).await
    }
}

impl GitSource {
    /// The desired objects of `env` at `commit`, or at its current revision when `None`.
    async fn desired_at(
        &self,
        env: &Environment,
        commit: Option<gix::ObjectId>,
    ) -> Result<Desired, SourceError> {
        let pipeline = self.pipeline.clone();
        let repository = self.repository.clone();
        let decryption = env.decryption.clone();
        // The key ring as it is now: identities added or removed since the last pass count.
        let selected = self.keys.select(
            &env.name,
            self.pipeline.environments.iter().map(|e| e.name.as_str()),
        );
        let key_problem = self.keys.problem();
        let fetch = self.fetch;
        let name = env.name.clone();
        let renders = self.renders.clone();
        let cancelled = Arc::new(AtomicBool::new(false));
        // A pass that times out drops this future; the render on the blocking thread then
        // stops at its next file instead of running on unobserved.
        let _cancel_on_drop = CancelOnDrop(cancelled.clone());
        tokio::task::spawn_blocking(move || {
            if fetch == Fetch::BeforeEachRead {
                repository
                    .fetch()
                    .map_err(|e| failed(SourceStage::Fetch, None, e))?;
            }
            let (commit, path) = match commit {
                Some(commit) => {
                    let location = git::revision::Location::of(&pipeline, &name)
                        .map_err(|e| failed(SourceStage::Fetch, None, e))?;
                    (commit, location.path)
                }
                None => {
                    let revision = repository
                        .revision(&pipeline, &name)
                        .map_err(|e| failed(SourceStage::Fetch, None, e))?;
                    (revision.commit, revision.location.path)
                }
            };
            let tree = repository
                .tree(commit)
                .map_err(|e| failed(SourceStage::Fetch, Some(commit.to_string()), e))?;
            if let Some(objects) = renders.get(&name, commit, &path) {
                return Ok(Desired {
                    revision: commit.to_string(),
                    objects: objects.to_vec(),
                    tainted: secrets::Tainted::default(),
                });
            }
            let commit_id = commit;
            let commit = commit.to_string();
            // Read on every pass, so a rotated key file takes effect without a restart.
            let own = selected.own.is_some();
            let identities = identities_of(&decryption, selected)
                .map_err(|e| failed(SourceStage::Decrypt, Some(commit.clone()), e))?;
            let decrypt = SopsDecrypt::new(&identities);
            let options = render::Options {
                decrypt: Some(&decrypt),
                ..render::Options::default()
            };
            let tree = Cancellable {
                inner: &tree,
                cancelled: &cancelled,
            };
            let objects =
                render::render(&tree, &path, &options).map_err(|e| match e.decryption() {
                    Some(_) if decryption != Decryption::Shared || own => failed(
                        SourceStage::Decrypt,
                        Some(commit.clone()),
                        OwnKeysOnly {
                            keys: own_keys(&decryption, &name, own),
                            stale: key_problem.clone(),
                            source: e,
                        },
                    ),
                    Some(_) => match key_problem.clone() {
                        Some(problem) => failed(
                            SourceStage::Decrypt,
                            Some(commit.clone()),
                            StaleKeys { problem, source: e },
                        ),
                        None => failed(SourceStage::Decrypt, Some(commit.clone()), e),
                    },
                    None => failed(SourceStage::Render, Some(commit.clone()), e),
                })?;
            let objects: Vec<Value> = objects.into_iter().map(Value::Object).collect();
            let kept = (!decrypt.decrypted_any()).then(|| Rendered {
                commit: commit_id,
                path,
                objects: objects.as_slice().into(),
            });
            renders.keep(&name, kept);
            Ok(Desired {
                revision: commit,
                objects,
                tainted: decrypt.tainted(),
            })
        })
        .await
        .unwrap_or_else(|panicked| {
            let message = crate::git::poll::panic_message(panicked);
            Err(failed(SourceStage::Fetch, None, Panicked(message)))
        })
    }
}

/// The identities an environment decrypts with. Keys of its own (its key file from the
/// pipeline, its `<env>.agekey` entry of the key source, or both) exclude every other key;
/// without them it takes the global ones, unless the pipeline gives it none because other
/// environments have key files ([`Decryption::Nothing`]).
fn identities_of(
    decryption: &Decryption,
    selected: secrets::keyring::Selected,
) -> Result<Arc<Identities>, secrets::Error> {
    match (decryption, selected.own) {
        (Decryption::AgeKeyFile(file), own) => {
            let mut from_file = Identities::new();
            from_file.add_file(file)?;
            Ok(Arc::new(Identities::merged(
                std::iter::once(&from_file).chain(own.as_deref()),
            )))
        }
        (_, Some(own)) => Ok(own),
        (Decryption::Shared, None) => Ok(selected.global),
        (Decryption::Nothing, None) => Ok(Arc::new(Identities::new())),
    }
}

fn own_keys(decryption: &Decryption, env: &str, own_entry: bool) -> String {
    let entry = format!("{env}{}", secrets::keyring::KEY_SUFFIX);
    match (decryption, own_entry) {
        (Decryption::AgeKeyFile(file), false) => {
            format!("only its own age identities ({})", file.display())
        }
        (Decryption::AgeKeyFile(file), true) => format!(
            "only its own age identities ({} and the key entry {entry})",
            file.display()
        ),
        (_, true) => format!("only its own age identities (the key entry {entry})"),
        _ => "no age identities (other environments have keys of their own, this one has none)"
            .to_owned(),
    }
}

/// A SOPS file the environment cannot decrypt with its own keys: most likely another
/// environment's, reached by a path, a symlink or a copy.
#[derive(Debug, thiserror::Error)]
#[error("this environment decrypts with {keys}{}", stale.as_ref().map(|p| format!("; {p}")).unwrap_or_default())]
struct OwnKeysOnly {
    keys: String,
    stale: Option<String>,
    #[source]
    source: render::Error,
}

/// A SOPS file that did not decrypt while the key source could not be reloaded: the key it
/// needs may be in the version that failed.
#[derive(Debug, thiserror::Error)]
#[error("{problem}")]
struct StaleKeys {
    problem: String,
    #[source]
    source: render::Error,
}

/// Why [`one_environment`] could not set up a reconciler.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The pipeline lists no environment of that name.
    #[error("pipeline {pipeline:?} has no environment {env:?}")]
    UnknownEnvironment {
        /// The pipeline's name.
        pipeline: String,
        /// The name asked for.
        env: String,
    },
    /// The repository cache in the state directory could not be opened or created.
    #[error("environment {env}: the repository cache")]
    Repository {
        /// The environment's name.
        env: String,
        /// Why.
        #[source]
        source: git::fetch::Error,
    },
}

/// A reconciler for one environment of `pipeline` (loaded from `pipeline_file`), reading Git
/// through the repository cache in `state_dir` and fetching before each pass, as
/// `installation`: what `stagehand diff` and `stagehand sync` run.
pub fn one_environment(
    pipeline: Pipeline,
    pipeline_file: &std::path::Path,
    env: &str,
    state_dir: &std::path::Path,
    installation: crate::cluster::installation::InstallationId,
    credentials: git::Credentials,
    identities: Identities,
) -> Result<super::Reconciler<GitSource>, SetupError> {
    let environment = pipeline
        .environment(env)
        .ok_or_else(|| SetupError::UnknownEnvironment {
            pipeline: pipeline.name.clone(),
            env: env.to_owned(),
        })?
        .clone();
    let url = git::RemoteUrl::new(pipeline.repository.resolved_url(pipeline_file));
    let repository = git::Repository::open(state_dir, url, credentials).map_err(|source| {
        SetupError::Repository {
            env: env.to_owned(),
            source,
        }
    })?;
    let options = super::Options {
        owner_prefix: format!("{}.", pipeline.name),
        installation: Some(installation),
        ..super::Options::default()
    };
    let source = GitSource::new(
        Arc::new(pipeline),
        repository,
        Arc::new(Keyring::fixed(identities)),
        Fetch::BeforeEachRead,
    );
    // Nobody subscribes to a one-off reconciler's events; they are logged as well.
    let (events, _) = tokio::sync::broadcast::channel(16);
    Ok(super::Reconciler::new(
        environment,
        Arc::new(source),
        Arc::new(options),
        events,
    ))
}

/// The blocking task reading Git panicked; the environment reports it and tries again later
/// instead of losing its loop.
#[derive(Debug, thiserror::Error)]
#[error("the task reading the repository stopped unexpectedly: {0}")]
struct Panicked(String);
/// Sets its flag when dropped.
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// A source tree that refuses every read once `cancelled` is set, so that a render abandoned
/// by its pass ends at the next file it reads.
struct Cancellable<'a> {
    inner: &'a dyn FileSystem,
    cancelled: &'a AtomicBool,
}

impl Cancellable<'_> {
    fn check(&self, path: &str) -> Result<(), render::fs::Error> {
        if self.cancelled.load(Ordering::Relaxed) {
            return Err(render::fs::Error::Source {
                path: path.to_owned(),
                message: "the render was cancelled: its pass timed out".into(),
            });
        }
        Ok(())
    }
}

impl FileSystem for Cancellable<'_> {
    fn real_path(&self, path: &str) -> Result<Option<String>, render::fs::Error> {
        self.check(path)?;
        self.inner.real_path(path)
    }

    fn read_file(&self, path: &str) -> Result<Vec<u8>, render::fs::Error> {
        self.check(path)?;
        self.inner.read_file(path)
    }

    fn read_dir(&self, path: &str) -> Result<Vec<DirEntry>, render::fs::Error> {
        self.check(path)?;
        self.inner.read_dir(path)
    }

    fn kind(&self, path: &str) -> Result<Option<EntryKind>, render::fs::Error> {
        self.check(path)?;
        self.inner.kind(path)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;
    use crate::render::fs::DiskFs;

    /// Counts reads and, at the third, cancels as a dropped pass would.
    struct CancelsAtThirdRead<'a> {
        disk: DiskFs,
        reads: AtomicUsize,
        cancelled: &'a AtomicBool,
    }

    impl CancelsAtThirdRead<'_> {
        fn count(&self) {
            if self.reads.fetch_add(1, Ordering::Relaxed) + 1 == 3 {
                self.cancelled.store(true, Ordering::Relaxed);
            }
        }
    }

    impl FileSystem for CancelsAtThirdRead<'_> {
        fn real_path(&self, path: &str) -> Result<Option<String>, render::fs::Error> {
            self.disk.real_path(path)
        }
        fn read_file(&self, path: &str) -> Result<Vec<u8>, render::fs::Error> {
            self.count();
            self.disk.read_file(path)
        }
        fn read_dir(&self, path: &str) -> Result<Vec<DirEntry>, render::fs::Error> {
            self.count();
            self.disk.read_dir(path)
        }
        fn kind(&self, path: &str) -> Result<Option<EntryKind>, render::fs::Error> {
            self.count();
            self.disk.kind(path)
        }
    }

    #[test]
    fn a_cancelled_render_stops_at_the_next_file_it_reads() {
        let dir = std::env::temp_dir().join(format!("stagehand-cancel-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let files: Vec<String> = (0..200).map(|i| format!("cm-{i}.yaml")).collect();
        for (i, file) in files.iter().enumerate() {
            std::fs::write(
                dir.join(file),
                format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cm-{i}\n"),
            )
            .expect("write");
        }
        std::fs::write(
            dir.join("kustomization.yaml"),
            format!("resources: [{}]\n", files.join(", ")),
        )
        .expect("write");
        let cancelled = AtomicBool::new(false);
        let counting = CancelsAtThirdRead {
            disk: DiskFs::new(&dir).expect("exists"),
            reads: AtomicUsize::new(0),
            cancelled: &cancelled,
        };
        let whole = render::render(&counting.disk, "", &render::Options::default())
            .expect("the overlay renders when nothing cancels it");
        assert_eq!(whole.len(), 200);

        let tree = Cancellable {
            inner: &counting,
            cancelled: &cancelled,
        };
        let error = render::render(&tree, "", &render::Options::default())
            .expect_err("a cancelled render fails");
        let chain = crate::error_chain::ErrorChain(&error).to_string();
        assert!(chain.contains("cancelled"), "{chain}");
        assert_eq!(counting.reads.load(Ordering::Relaxed), 3);
        std::fs::remove_dir_all(&dir).expect("cleaned up");
    }

    fn git(dir: &std::path::Path, args: &[&str]) {
        let status = std::process::Command::new("git")
            .args([
                "-c",
                "user.name=t",
                "-c",
                "user.email=t@t",
                "-c",
                "commit.gpgsign=false",
            ])
            .args(args)
            .current_dir(dir)
            .status()
            .expect("git runs");
        assert!(status.success(), "git {args:?}");
    }

    /// The demo pipeline with a key file per environment, committed to a fresh repository.
    fn demo(dir: &std::path::Path) -> (Arc<Pipeline>, git::Repository) {
        let demo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("environments");
        let status = std::process::Command::new("cp")
            .arg("-r")
            .arg(&demo)
            .arg(dir.join("repo"))
            .status()
            .expect("cp runs");
        assert!(status.success());
        let repo = dir.join("repo");
        let file = repo.join("pipeline.yaml");
        let text = std::fs::read_to_string(&file).expect("pipeline");
        std::fs::write(
            &file,
            text.replace("spec:\n", "spec:\n  decryption: {ageKeysDir: keys}\n"),
        )
        .expect("write");
        git(&repo, &["init", "-q", "-b", "main"]);
        git(&repo, &["add", "-A"]);
        git(&repo, &["commit", "-q", "-m", "demo"]);
        let pipeline = Pipeline::load(&file).expect("the demo pipeline is valid");
        let url = git::RemoteUrl::new(pipeline.repository.resolved_url(&file));
        let repository = git::Repository::open(&dir.join("state"), url, git::Credentials::None)
            .expect("the repository cache opens");
        (Arc::new(pipeline), repository)
    }

    fn kept(source: &GitSource, env: &str) -> Option<gix::ObjectId> {
        source.renders.lock().get(env).map(|r| r.commit)
    }

    #[tokio::test]
    async fn a_render_is_reused_only_at_its_commit_and_never_when_it_decrypted_a_file() {
        use age::secrecy::ExposeSecret as _;
        let dir = tempfile::tempdir().expect("temp dir");
        let (pipeline, repository) = demo(dir.path());
        let dev = pipeline.environment("dev").expect("dev").clone();
        let source = GitSource::new(
            pipeline,
            repository,
            Arc::new(Keyring::fixed(Identities::new())),
            Fetch::BeforeEachRead,
        );
        let repo = dir.path().join("repo");
        let key = repo.join("keys/dev.agekey");

        // Dev's Secret is decrypted with dev's key: nothing is kept, so the key file is read
        // on every pass and a wrong key fails the next one.
        let first = source.desired(&dev).await.expect("dev renders");
        assert!(first.objects.iter().any(|o| o["kind"] == "Secret"));
        assert_eq!(kept(&source, "dev"), None);
        let right_key = std::fs::read(&key).expect("dev's key");
        std::fs::write(
            &key,
            age::x25519::Identity::generate()
                .to_string()
                .expose_secret(),
        )
        .expect("write");
        let error = source.desired(&dev).await.expect_err("a wrong key fails");
        assert_eq!(error.stage, SourceStage::Decrypt);
        std::fs::write(&key, right_key).expect("write");

        // Without SOPS files the render is kept for its commit, and a new commit renders again.
        let kustomization = repo.join("dev/kustomization.yaml");
        let text = std::fs::read_to_string(&kustomization).expect("kustomization");
        std::fs::write(&kustomization, text.replace("  - db.sops.yaml\n", "")).expect("write");
        git(&repo, &["commit", "-q", "-am", "dev without its Secret"]);
        let plain = source.desired(&dev).await.expect("dev renders");
        assert_eq!(
            kept(&source, "dev").map(|c| c.to_string()),
            Some(plain.revision.clone())
        );
        let again = source.desired(&dev).await.expect("dev renders");
        assert_eq!(
            (&again.revision, &again.objects),
            (&plain.revision, &plain.objects)
        );
        std::fs::write(
            &kustomization,
            text.replace("  - db.sops.yaml\n", "")
                .replace("count: 1", "count: 3"),
        )
        .expect("write");
        git(&repo, &["commit", "-q", "-am", "dev: three web replicas"]);
        let changed = source.desired(&dev).await.expect("dev renders");
        assert_ne!(changed.revision, plain.revision);
        let replicas = |d: &Desired| {
            d.objects
                .iter()
                .find(|o| o["kind"] == "Deployment" && o["metadata"]["name"] == "web")
                .map(|o| o["spec"]["replicas"].clone())
        };
        assert_eq!(replicas(&changed), Some(serde_json::json!(3)));
        assert_eq!(
            kept(&source, "dev").map(|c| c.to_string()),
            Some(changed.revision)
        );
    }
}
