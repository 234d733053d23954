//! The `stagehand` command line: one module per command group, each with its argument types
//! beside the code that runs it; [`output`] prints results as a table, JSON or YAML.

mod client;
mod database;
mod env;
mod git;
mod images;
mod metrics;
mod output;
mod pipeline;
mod promote;
mod render;
mod secrets;
mod serve;
mod sync;
mod wire;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use stagehand::error_chain::ErrorChain;
use stagehand::telemetry::{self, LogFormat};

/// GitOps environment promotion: render, decrypt, reconcile and promote dev → staging → prod.
#[derive(Debug, Parser)]
#[command(name = "stagehand", version, propagate_version = true)]
pub struct Cli {
    /// Log line format.
    #[arg(
        long,
        global = true,
        env = "STAGEHAND_LOG_FORMAT",
        value_enum,
        default_value = "human"
    )]
    log_format: LogFormat,
    /// Log filter in RUST_LOG syntax, e.g. `info` or `stagehand=debug`.
    #[arg(long, global = true, env = "STAGEHAND_LOG", default_value = "info")]
    log_level: String,
    #[command(subcommand)]
    command: Command,
}

/// Exit codes shared by every command that decrypts SOPS files, the same as sops's own.
const EXIT_CODES: &str = "Exit codes: 0 success, 51 MAC mismatch (a SOPS file was altered), \
128 no loaded age identity matches a recipient of a SOPS file, 1 any other failure.";

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the service: the gRPC API with health checking and server reflection.
    Serve(Box<serve::ServeArgs>),
    /// Work with a pipeline file locally, without a server.
    #[command(subcommand)]
    Pipeline(pipeline::PipelineCommand),
    /// The state of every environment of a running server (or of one, in detail).
    Status(env::StatusArgs),
    /// Ask a running server about environments, sync, suspend or resume them.
    #[command(subcommand, name = "env")]
    Env(env::EnvCommand),
    /// Work with the pipeline's Git repository directly, without a server.
    #[command(subcommand)]
    Git(git::GitCommand),
    /// Show what a sync of one environment would change in its cluster, without changing it
    /// (Secret values never appear, changed Secret keys do).
    #[command(after_help = EXIT_CODES)]
    Diff(sync::OneEnvArgs),
    /// Reconcile one environment once: render its revision, decrypt, apply, prune, check health,
    /// and print its status (exit 1 when the pass fails).
    #[command(after_help = EXIT_CODES)]
    Sync(sync::OneEnvArgs),
    /// Decrypt, encrypt and rotate SOPS files encrypted to age, as sops 3.11 does.
    #[command(subcommand)]
    Secrets(secrets::SecretsCommand),
    /// Build a kustomization in-process and print it as `kubectl kustomize DIR` does.
    #[command(after_help = EXIT_CODES)]
    Render(render::RenderArgs),
    /// Ask to promote the revision the source environment runs (or `--revision`) into `--to`.
    Promote(promote::PromoteArgs),
    /// Approve a promotion (approvals count once per person; policy may refuse yours).
    Approve(promote::ApproveArgs),
    /// Reject a promotion that has not reached its Git step; this ends it.
    Reject(promote::ReasonArgs),
    /// Stop a promotion that has not reached its Git step.
    Abort(promote::AbortArgs),
    /// Let a promotion held by a freeze window go ahead (permission `override`; audited).
    Override(promote::ReasonArgs),
    /// Restore an earlier revision of an environment through the promotion gates; holds its
    /// automatic promotion until `resume-auto`.
    Rollback(promote::RollbackArgs),
    /// Resume the automatic promotion into an environment that a rollback put on hold.
    ResumeAuto(promote::ResumeAutoArgs),
    /// Promotions, newest first, optionally of one target environment and in some states.
    Promotions(promote::ListArgs),
    /// One promotion: state, approvals, approvals missing and what it waits for.
    Promotion(promote::IdArgs),
    /// Follow a promotion until it ends: exit 0 when it Succeeded, 1 when it Failed, was
    /// Rejected or Aborted.
    Watch(promote::IdArgs),
    /// The audit log, newest first: who requested, approved, overrode, rolled back, synced.
    Audit(promote::AuditArgs),
    /// What a promotion into `--to` would change in its cluster (server-side dry run; Secret
    /// keys named, values never).
    Preview(promote::PreviewArgs),
    /// What differs between two environments' rendered objects, field by field (Secret values
    /// masked).
    Compare(promote::CompareArgs),
    /// Delivery metrics per environment over a window: deployments, lead time for changes,
    /// change failure rate, time to restore.
    Metrics(metrics::MetricsArgs),
    /// The pipeline's image sources: what each last saw in its registry, the tag its policy
    /// chose (and why others were skipped), and the commit it made.
    Images(images::ImagesArgs),
}

impl Cli {
    /// Runs the command and says how the process ends.
    pub fn run(self) -> ExitCode {
        if let Err(e) = telemetry::init(self.log_format, &self.log_level) {
            eprintln!("error: --log-level {:?}: {e}", self.log_level);
            return ExitCode::from(2);
        }
        let runtime =
            tokio::runtime::Runtime::new().expect("a tokio runtime can be built at start-up");
        match runtime.block_on(self.command.run()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                let error: &(dyn std::error::Error + 'static) = e.as_ref();
                eprintln!("{}", error_line(error));
                exit_code(error)
            }
        }
    }
}

impl Command {
    async fn run(self) -> anyhow::Result<()> {
        match self {
            Self::Serve(args) => serve::run(*args).await,
            Self::Pipeline(command) => pipeline::run(command),
            Self::Status(args) => env::status(args).await,
            Self::Env(command) => env::run(command).await,
            Self::Git(command) => git::run(command).await,
            Self::Diff(args) => sync::diff(args).await,
            Self::Sync(args) => sync::sync(args).await,
            Self::Secrets(command) => secrets::run(command),
            Self::Render(args) => render::run(args),
            Self::Promote(args) => promote::promote(args).await,
            Self::Approve(args) => promote::approve(args).await,
            Self::Reject(args) => promote::reject(args).await,
            Self::Abort(args) => promote::abort(args).await,
            Self::Override(args) => promote::override_freeze(args).await,
            Self::Rollback(args) => promote::rollback(args).await,
            Self::ResumeAuto(args) => promote::resume_auto(args).await,
            Self::Promotions(args) => promote::list(args).await,
            Self::Promotion(args) => promote::get(args).await,
            Self::Watch(args) => promote::watch(args).await,
            Self::Audit(args) => promote::audit(args).await,
            Self::Preview(args) => promote::preview(args).await,
            Self::Compare(args) => promote::compare(args).await,
            Self::Metrics(args) => metrics::run(args).await,
            Self::Images(args) => images::run(args).await,
        }
    }
}

/// How a failed command reads on stderr. Errors quote servers, Git remotes and clusters, whose
/// text may hold control characters: escaped as in tables, so that they cannot rewrite the
/// terminal either.
fn error_line(error: &(dyn std::error::Error + 'static)) -> String {
    format!("error: {}", output::escape(&ErrorChain(error).to_string()))
}

/// sops's exit codes when a secrets error is anywhere in the chain (a render or a sync fails
/// because of it just as `secrets decrypt` does); for a call to a server, the code of its gRPC
/// status (see [`client::exit_code`]); 2 for a wrong `--server` setting, as for clap's usage
/// errors; else 1.
fn exit_code(error: &(dyn std::error::Error + 'static)) -> ExitCode {
    for cause in ErrorChain(error).causes() {
        if let Some(e) = cause.downcast_ref::<client::RpcError>() {
            return e.exit_code();
        }
        match cause.downcast_ref::<client::Error>() {
            Some(client::Error::Connect { .. }) => return client::unreachable_exit_code(),
            Some(e) if e.is_usage() => return ExitCode::from(2),
            _ => {}
        }
    }
    let secrets_error = ErrorChain(error)
        .causes()
        .find_map(|cause| cause.downcast_ref::<stagehand::secrets::Error>());
    match secrets_error {
        Some(e) if e.is_mac_mismatch() => ExitCode::from(51),
        Some(e) if e.is_no_matching_key() => ExitCode::from(128),
        _ => ExitCode::FAILURE,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_from_a_server_is_printed_with_its_control_characters_escaped() {
        let error = client::rpc_error(
            "WatchPromotion",
            tonic::Status::failed_precondition("remote: \x1b[2Jrejected\nforged line"),
        );
        assert_eq!(
            error_line(&error),
            "error: WatchPromotion: FAILED_PRECONDITION: remote: \\x1b[2Jrejected\\nforged line"
        );
    }
}
