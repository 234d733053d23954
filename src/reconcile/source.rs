//! The desired state of an environment as Git says it: fetch the repository, find the
//! environment's revision, render its directory straight from the object database, decrypting
//! SOPS files on the way.

use std::sync::Arc;

use serde_json::Value;

use super::{Desired, DesiredState, SourceError, SourceStage};
use crate::git;
use crate::pipeline::{Environment, Pipeline};
use crate::render::{self, sops::SopsDecrypt};
use crate::secrets::Identities;

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
    identities: Arc<Identities>,
    fetch: Fetch,
}

impl GitSource {
    /// Environments of `pipeline`, read from `repository` and decrypted with `identities`.
    pub fn new(
        pipeline: Arc<Pipeline>,
        repository: git::Repository,
        identities: Arc<Identities>,
        fetch: Fetch,
    ) -> Self {
        Self {
            pipeline,
            repository,
            identities,
            fetch,
        }
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
        let pipeline = self.pipeline.clone();
        let repository = self.repository.clone();
        let identities = self.identities.clone();
        let fetch = self.fetch;
        let name = env.name.clone();
        tokio::task::spawn_blocking(move || {
            if fetch == Fetch::BeforeEachRead {
                repository
                    .fetch()
                    .map_err(|e| failed(SourceStage::Fetch, None, e))?;
            }
            let revision = repository
                .revision(&pipeline, &name)
                .map_err(|e| failed(SourceStage::Fetch, None, e))?;
            let commit = revision.commit.to_string();
            let tree = repository
                .tree(revision.commit)
                .map_err(|e| failed(SourceStage::Fetch, Some(commit.clone()), e))?;
            let decrypt = SopsDecrypt::new(&identities);
            let options = render::Options {
                decrypt: Some(&decrypt),
                ..render::Options::default()
            };
            let objects =
                render::render(&tree, &revision.location.path, &options).map_err(|e| {
                    let stage = match e.decryption() {
                        Some(_) => SourceStage::Decrypt,
                        None => SourceStage::Render,
                    };
                    failed(stage, Some(commit.clone()), e)
                })?;
            Ok(Desired {
                revision: commit,
                objects: objects.into_iter().map(Value::Object).collect(),
            })
        })
        .await
        .unwrap_or_else(|panicked| {
            let message = crate::git::poll::panic_message(panicked);
            Err(failed(SourceStage::Fetch, None, Panicked(message)))
        })
    }
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
/// through the repository cache in `state_dir` and fetching before each pass: what `stagehand
/// diff` and `stagehand sync` run.
pub fn one_environment(
    pipeline: Pipeline,
    pipeline_file: &std::path::Path,
    env: &str,
    state_dir: &std::path::Path,
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
        ..super::Options::default()
    };
    let source = GitSource::new(
        Arc::new(pipeline),
        repository,
        Arc::new(identities),
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
