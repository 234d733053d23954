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

/// Reads environments from one Git repository.
pub struct GitSource {
    pipeline: Arc<Pipeline>,
    repository: git::Repository,
    identities: Arc<Identities>,
    /// Fetch before every read; off when a poller already keeps the cache fresh.
    fetch: bool,
}

impl GitSource {
    pub fn new(
        pipeline: Arc<Pipeline>,
        repository: git::Repository,
        identities: Arc<Identities>,
        fetch: bool,
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
            if fetch {
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
            let objects = render::render(&tree, &revision.location.path, &options)
                .map_err(|e| failed(SourceStage::Render, Some(commit.clone()), e))?;
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

/// The blocking task reading Git panicked; the environment reports it and tries again later
/// instead of losing its loop.
#[derive(Debug, thiserror::Error)]
#[error("the task reading the repository stopped unexpectedly: {0}")]
struct Panicked(String);
