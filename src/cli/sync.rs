//! `stagehand diff` and `stagehand sync`: one environment against its cluster, without a server.

use std::path::PathBuf;

use clap::Args;
use stagehand::pipeline::Pipeline;
use stagehand::reconcile::{Reconciler, source};
use stagehand::secrets;

use super::database::DatabaseArgs;
use super::git::GitCredentialArgs;
use super::output::{self, OutputArgs};

/// One environment of a pipeline, read from the repository at its current revision. SOPS files
/// are decrypted with the identities sops itself would use (SOPS_AGE_KEY, SOPS_AGE_KEY_FILE,
/// SOPS_AGE_KEY_CMD, the default keys.txt).
#[derive(Debug, Args)]
pub struct OneEnvArgs {
    /// The pipeline file.
    #[arg(long, env = "STAGEHAND_PIPELINE", default_value = "pipeline.yaml")]
    pipeline: PathBuf,
    /// The environment's name.
    #[arg(long)]
    env: String,
    /// Directory for durable state; the repository cache lives under `git/` in it.
    #[arg(long, env = "STAGEHAND_STATE_DIR", default_value = ".stagehand")]
    state_dir: PathBuf,
    /// The installation to act as: with a shared store, the replicas' (see `serve`).
    #[command(flatten)]
    database: DatabaseArgs,
    #[command(flatten)]
    credentials: GitCredentialArgs,
    #[command(flatten)]
    output: OutputArgs,
}

impl OneEnvArgs {
    async fn reconciler(&self) -> anyhow::Result<Reconciler<source::GitSource>> {
        let pipeline = Pipeline::load(&self.pipeline)?;
        let identities = secrets::Identities::from_sops_environment()?;
        let installation = self.database.installation(&self.state_dir).await?;
        Ok(source::one_environment(
            pipeline,
            &self.pipeline,
            &self.env,
            &self.state_dir,
            installation,
            self.credentials.load()?,
            identities,
        )?)
    }
}

pub async fn diff(args: OneEnvArgs) -> anyhow::Result<()> {
    let format = args.output.format();
    let plan = args.reconciler().await?.plan().await?;
    output::print(&plan, format, output::plan_table)
}

pub async fn sync(args: OneEnvArgs) -> anyhow::Result<()> {
    let format = args.output.format();
    let mut reconciler = args.reconciler().await?;
    let outcome = reconciler.reconcile().await;
    // The status is printed either way: it says which stage failed and what was applied.
    output::print(reconciler.status(), format, output::status_table)?;
    outcome?;
    Ok(())
}
