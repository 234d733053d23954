//! `stagehand status` and `stagehand env`: environments as a running server sees them.

use std::time::SystemTime;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use stagehand::proto;
use stagehand::proto::environment_service_client::EnvironmentServiceClient;
use tokio_stream::StreamExt as _;

use super::client::{self, ServerArgs, rpc_error};
use super::output::{self, Format, OutputArgs, escape};
use super::wire;

type Client = EnvironmentServiceClient<client::Channel>;

#[derive(Debug, Subcommand)]
pub enum EnvCommand {
    /// List the environments of the server's pipeline, in promotion order.
    List {
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Show one environment: source, sync policy, approval policy, freeze windows.
    Get {
        /// The environment's name.
        name: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Reconcile an environment now instead of at its next interval (also in manual sync mode).
    Sync {
        /// The environment's name.
        name: String,
        /// Wait for the pass, printing its progress on stderr; exit 1 when it fails.
        #[arg(long)]
        wait: bool,
        /// Fetch the repository first instead of using the last fetched revision.
        #[arg(long)]
        fetch: bool,
        #[command(flatten)]
        server: ServerArgs,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Stop reconciling an environment (kept across restarts) until `env resume`.
    Suspend {
        /// The environment's name.
        name: String,
        /// Why, for the audit log and for whoever looks next.
        #[arg(long, default_value = "")]
        reason: String,
        #[command(flatten)]
        server: ServerArgs,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Reconcile a suspended environment again, starting with a pass now.
    Resume {
        /// The environment's name.
        name: String,
        #[command(flatten)]
        server: ServerArgs,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// The environment's revisions, newest first: which one runs, when each was applied and
    /// with what result.
    History {
        /// The environment's name.
        name: String,
        /// How many revisions, at most 1000.
        #[arg(long, default_value_t = 20)]
        limit: u32,
        #[command(flatten)]
        server: ServerArgs,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Print a line each time an environment changes, starting with each one's current state;
    /// runs until interrupted. `-o json` prints one Environment object a line.
    Watch {
        /// The environments to watch; all that you may view when none is named.
        names: Vec<String>,
        #[command(flatten)]
        server: ServerArgs,
        #[command(flatten)]
        output: OutputArgs,
    },
}

/// `stagehand status [ENV]`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// One environment, in detail with its objects; every environment, a row each, without.
    name: Option<String>,
    #[command(flatten)]
    server: ServerArgs,
    #[command(flatten)]
    output: OutputArgs,
}

pub async fn status(args: StatusArgs) -> anyhow::Result<()> {
    let mut client = connect(&args.server).await?;
    let format = args.output.format();
    let colours = output::colours_on(&std::io::stdout());
    match args.name {
        None => {
            let list = client
                .list_environments(proto::ListEnvironmentsRequest {})
                .await
                .map_err(|status| rpc_error("ListEnvironments", status))?
                .into_inner();
            output::print(&wire::environments(&list), format, |value| {
                output::environments_table(value, SystemTime::now(), colours)
            })
        }
        Some(name) => {
            let env = client
                .get_environment(proto::GetEnvironmentRequest { name })
                .await
                .map_err(|status| rpc_error("GetEnvironment", status))?
                .into_inner();
            print_environment_as(&env, format)
        }
    }
}

pub async fn run(command: EnvCommand) -> anyhow::Result<()> {
    match command {
        EnvCommand::List { server } => {
            let mut client = connect(&server).await?;
            let list = client
                .list_environments(proto::ListEnvironmentsRequest {})
                .await
                .map_err(|status| rpc_error("ListEnvironments", status))?
                .into_inner();
            println!("pipeline {}", escape(&list.pipeline));
            for env in list.environments {
                let from = if env.promotes_from.is_empty() {
                    String::new()
                } else {
                    format!(" (promoted from {})", escape(&env.promotes_from))
                };
                println!("  {}{from}", escape(&env.name));
            }
        }
        EnvCommand::Get { name, server } => {
            let mut client = connect(&server).await?;
            let env = client
                .get_environment(proto::GetEnvironmentRequest { name })
                .await
                .map_err(|status| rpc_error("GetEnvironment", status))?
                .into_inner();
            print_environment(&env);
        }
        EnvCommand::Sync {
            name,
            wait,
            fetch,
            server,
            output,
        } => sync(connect(&server).await?, name, wait, fetch, output.format()).await?,
        EnvCommand::Suspend {
            name,
            reason,
            server,
            output,
        } => {
            let env = connect(&server)
                .await?
                .suspend_environment(proto::SuspendEnvironmentRequest { name, reason })
                .await
                .map_err(|status| rpc_error("SuspendEnvironment", status))?
                .into_inner();
            print_environment_as(&env, output.format())?;
        }
        EnvCommand::Resume {
            name,
            server,
            output,
        } => {
            let env = connect(&server)
                .await?
                .resume_environment(proto::ResumeEnvironmentRequest { name })
                .await
                .map_err(|status| rpc_error("ResumeEnvironment", status))?
                .into_inner();
            print_environment_as(&env, output.format())?;
        }
        EnvCommand::History {
            name,
            limit,
            server,
            output,
        } => {
            let list = connect(&server)
                .await?
                .list_revisions(proto::ListRevisionsRequest { name, limit })
                .await
                .map_err(|status| rpc_error("ListRevisions", status))?
                .into_inner();
            let colours = output::colours_on(&std::io::stdout());
            output::print(&wire::revisions(&list), output.format(), |value| {
                output::revisions_table(value, colours)
            })?;
        }
        EnvCommand::Watch {
            names,
            server,
            output,
        } => watch(connect(&server).await?, names, output.format()).await?,
    }
    Ok(())
}

async fn connect(server: &ServerArgs) -> Result<Client, client::Error> {
    Ok(EnvironmentServiceClient::new(
        client::connect(server).await?,
    ))
}

fn print_environment_as(env: &proto::Environment, format: Format) -> anyhow::Result<()> {
    let colours = output::colours_on(&std::io::stdout());
    output::print(&wire::environment(env), format, |value| {
        output::environment_detail(value, SystemTime::now(), colours)
    })
}

/// Triggers a pass; with `wait`, follows the environment on a watch stream (progress lines on
/// stderr) until the pass has finished, and fails when it did.
async fn sync(
    mut client: Client,
    name: String,
    wait: bool,
    fetch: bool,
    format: Format,
) -> anyhow::Result<()> {
    let progress = if wait {
        let stream = client
            .watch_environments(proto::WatchEnvironmentsRequest {
                names: vec![name.clone()],
            })
            .await
            .map_err(|status| rpc_error("WatchEnvironments", status))?
            .into_inner();
        let colours = output::colours_on(&std::io::stderr());
        Some(tokio::spawn(async move {
            let mut lines = ChangeLines::default();
            let mut stream = stream;
            while let Some(Ok(env)) = stream.next().await {
                if let Some(line) = lines.next(&wire::environment(&env), colours) {
                    eprintln!("{line}");
                }
            }
        }))
    } else {
        None
    };
    let response = client
        .sync_environment(proto::SyncEnvironmentRequest {
            name: name.clone(),
            fetch,
            wait,
        })
        .await
        .map_err(|status| rpc_error("SyncEnvironment", status));
    if let Some(progress) = progress {
        progress.abort();
    }
    let response = response?.into_inner();
    let colours = output::colours_on(&std::io::stdout());
    output::print(&wire::sync_response(&response), format, |value| {
        output::status_detail(&value["status"], SystemTime::now(), colours)
    })?;
    let failed = response
        .status
        .as_ref()
        .filter(|s| wait && !s.last_error.is_empty());
    if let Some(status) = failed {
        anyhow::bail!("the sync pass of {name} failed: {}", status.reason);
    }
    Ok(())
}

/// Follows `WatchEnvironments` until interrupted. The server ends the stream when it reloads
/// the pipeline; then the watch starts again (its snapshot lines are skipped when unchanged).
async fn watch(mut client: Client, names: Vec<String>, format: Format) -> anyhow::Result<()> {
    let colours = output::colours_on(&std::io::stdout());
    let mut lines = ChangeLines::default();
    loop {
        let mut stream = client
            .watch_environments(proto::WatchEnvironmentsRequest {
                names: names.clone(),
            })
            .await
            .map_err(|status| rpc_error("WatchEnvironments", status))?
            .into_inner();
        while let Some(env) = stream.next().await {
            let env =
                wire::environment(&env.map_err(|status| rpc_error("WatchEnvironments", status))?);
            let Some(line) = lines.next(&env, colours) else {
                continue;
            };
            let text = match format {
                Format::Table => line,
                Format::Json => serde_json::to_string(&env)?,
                Format::Yaml => format!("---\n{}", serde_yaml_ng::to_string(&env)?.trim_end()),
            };
            use std::io::Write as _;
            let mut out = std::io::stdout().lock();
            writeln!(out, "{text}")
                .and_then(|()| out.flush())
                .context("cannot write to stdout")?;
        }
    }
}

/// One line per change that shows: an update that leaves an environment's line as it was
/// (another field moved, a watch restarted) prints nothing.
#[derive(Default)]
struct ChangeLines {
    last: std::collections::HashMap<String, String>,
}

impl ChangeLines {
    fn next(&mut self, env: &serde_json::Value, colours: bool) -> Option<String> {
        let name = env["name"].as_str().unwrap_or_default().to_owned();
        // Compared without the time column, which changes every time.
        let key = output::change_line(env, SystemTime::UNIX_EPOCH, false);
        if self.last.get(&name) == Some(&key) {
            return None;
        }
        self.last.insert(name, key);
        Some(output::change_line(env, SystemTime::now(), colours))
    }
}

fn print_environment(env: &proto::Environment) {
    println!("name: {}", escape(&env.name));
    if !env.promotes_from.is_empty() {
        println!("promotes from: {}", escape(&env.promotes_from));
    }
    match env.source.as_ref().and_then(|s| s.model.as_ref()) {
        Some(proto::source::Model::Overlay(o)) => {
            println!(
                "source: overlay {} on branch {}",
                escape(&o.path),
                escape(&o.branch)
            )
        }
        Some(proto::source::Model::Branch(b)) if b.path.is_empty() => {
            println!("source: branch {}", escape(&b.branch))
        }
        Some(proto::source::Model::Branch(b)) => {
            println!(
                "source: branch {}, path {}",
                escape(&b.branch),
                escape(&b.path)
            )
        }
        None => {}
    }
    if let Some(sync) = &env.sync {
        println!(
            "sync: every {}s, prune {}, self-heal {}{}",
            sync.interval_seconds,
            sync.prune,
            sync.self_heal,
            if sync.suspended { ", suspended" } else { "" }
        );
    }
    if let Some(approval) = env.approval.as_ref().filter(|a| a.required > 0) {
        println!(
            "approval: {} approver(s){}{}",
            approval.required,
            if approval.groups.is_empty() {
                String::new()
            } else {
                format!(" from {}", escape(&approval.groups.join(", ")))
            },
            if approval.allow_self_approval {
                ", self-approval allowed"
            } else {
                ""
            }
        );
        if !approval.allow_author_approval {
            println!("approval: authors of the promoted commits may not approve");
        }
    }
    for w in &env.freeze_windows {
        let when = match (&w.from, &w.until) {
            (Some(from), Some(until)) => format!("{} to {}", rfc3339(from), rfc3339(until)),
            _ => format!("{} to {} ({})", w.start, w.end, w.timezone),
        };
        let when = escape(&when);
        match &w.reason {
            Some(reason) => println!("freeze: {when}: {}", escape(reason)),
            None => println!("freeze: {when}"),
        }
    }
}

/// A time from the API as RFC 3339 in UTC; one out of range is shown as its raw seconds.
fn rfc3339(time: &prost_types::Timestamp) -> String {
    jiff::Timestamp::new(time.seconds, time.nanos)
        .map_or_else(|_| format!("{}s", time.seconds), |t| t.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_watch_prints_a_line_only_when_what_it_shows_changed() {
        let mut lines = ChangeLines::default();
        let dev = |reason: &str, passes: u64| {
            json!({"name": "dev", "status": {"reason": reason, "passes": passes,
                   "appliedRevision": "67e1c1999f75f1295157257d821bc2eab158b573"}})
        };
        let first = lines
            .next(&dev("pending", 0), false)
            .expect("the first state shows");
        assert!(
            first.contains("Z  dev  ")
                && first.contains("  pending  ")
                && first.ends_with("67e1c19"),
            "{first}"
        );
        assert_eq!(
            lines.next(&dev("pending", 1), false),
            None,
            "only the pass count moved"
        );
        assert!(lines.next(&dev("succeeded", 2), false).is_some());
        let staging = json!({"name": "staging", "status": {"reason": "succeeded"}});
        assert!(
            lines.next(&staging, false).is_some(),
            "each environment has its own line"
        );
    }
}
