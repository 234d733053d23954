//! `stagehand git`: the pipeline's repository, read directly without a server, and the
//! credential flags every command that fetches shares.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use stagehand::git;
use stagehand::pipeline::Pipeline;

#[derive(Debug, Subcommand)]
pub enum GitCommand {
    /// Fetch the repository into the state directory and print each environment's revision.
    Revisions {
        /// The pipeline file.
        #[arg(long, env = "STAGEHAND_PIPELINE", default_value = "pipeline.yaml")]
        pipeline: PathBuf,
        /// Directory for durable state; the repository cache lives under `git/` in it.
        #[arg(long, env = "STAGEHAND_STATE_DIR", default_value = ".stagehand")]
        state_dir: PathBuf,
        #[command(flatten)]
        credentials: GitCredentialArgs,
    },
}

/// How to authenticate to the Git remote; secrets are read from files, never from flags.
#[derive(Debug, Args)]
pub struct GitCredentialArgs {
    /// A file holding an access token (HTTPS).
    #[arg(long, env = "STAGEHAND_GIT_TOKEN_FILE", conflicts_with = "git_ssh_key")]
    git_token_file: Option<PathBuf>,
    /// A private key file (ssh:// and scp-like URLs).
    #[arg(long, env = "STAGEHAND_GIT_SSH_KEY")]
    git_ssh_key: Option<PathBuf>,
    /// A known-hosts file pinning the SSH server's host key.
    #[arg(long, env = "STAGEHAND_GIT_SSH_KNOWN_HOSTS", requires = "git_ssh_key")]
    git_ssh_known_hosts: Option<PathBuf>,
}

impl GitCredentialArgs {
    pub fn load(&self) -> anyhow::Result<git::Credentials> {
        if let Some(file) = &self.git_token_file {
            let token = std::fs::read_to_string(file)
                .with_context(|| format!("cannot read the token file {}", file.display()))?;
            return Ok(git::Credentials::Token {
                token: git::Secret::new(token.trim()),
            });
        }
        Ok(match &self.git_ssh_key {
            Some(path) => git::Credentials::SshKey {
                path: path.clone(),
                known_hosts: self.git_ssh_known_hosts.clone(),
            },
            None => git::Credentials::None,
        })
    }
}

pub async fn run(command: GitCommand) -> anyhow::Result<()> {
    let GitCommand::Revisions {
        pipeline: file,
        state_dir,
        credentials,
    } = command;
    let pipeline = Pipeline::load(&file)?;
    let url = git::RemoteUrl::new(pipeline.repository.resolved_url(&file));
    let credentials = credentials.load()?;
    let revisions = tokio::task::spawn_blocking(move || {
        let repo = git::Repository::open(&state_dir, url, credentials)?;
        repo.fetch()?;
        pipeline
            .environments
            .iter()
            .map(|env| {
                repo.revision(&pipeline, &env.name)
                    .map_err(anyhow::Error::from)
            })
            .collect::<anyhow::Result<Vec<_>>>()
    })
    .await
    .context("the git task panicked")??;
    for r in revisions {
        let path = if r.location.path.is_empty() {
            "/".to_owned()
        } else {
            r.location.path.clone()
        };
        println!(
            "{} {} {}:{path} tree {}",
            r.environment, r.commit, r.location.branch, r.tree
        );
    }
    Ok(())
}
