//! `stagehand env`: environments as a running server sees them.

use clap::Subcommand;
use stagehand::proto;
use stagehand::proto::environment_service_client::EnvironmentServiceClient;

use super::client::{self, ServerArgs, rpc_error};

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
}

pub async fn run(command: EnvCommand) -> anyhow::Result<()> {
    match command {
        EnvCommand::List { server } => {
            let mut client = EnvironmentServiceClient::new(client::connect(&server).await?);
            let list = client
                .list_environments(proto::ListEnvironmentsRequest {})
                .await
                .map_err(|status| rpc_error("ListEnvironments", status))?
                .into_inner();
            println!("pipeline {}", list.pipeline);
            for env in list.environments {
                let from = if env.promotes_from.is_empty() {
                    String::new()
                } else {
                    format!(" (promoted from {})", env.promotes_from)
                };
                println!("  {}{from}", env.name);
            }
        }
        EnvCommand::Get { name, server } => {
            let mut client = EnvironmentServiceClient::new(client::connect(&server).await?);
            let env = client
                .get_environment(proto::GetEnvironmentRequest { name })
                .await
                .map_err(|status| rpc_error("GetEnvironment", status))?
                .into_inner();
            print_environment(&env);
        }
    }
    Ok(())
}

fn print_environment(env: &proto::Environment) {
    println!("name: {}", env.name);
    if !env.promotes_from.is_empty() {
        println!("promotes from: {}", env.promotes_from);
    }
    match env.source.as_ref().and_then(|s| s.model.as_ref()) {
        Some(proto::source::Model::Overlay(o)) => {
            println!("source: overlay {} on branch {}", o.path, o.branch)
        }
        Some(proto::source::Model::Branch(b)) if b.path.is_empty() => {
            println!("source: branch {}", b.branch)
        }
        Some(proto::source::Model::Branch(b)) => {
            println!("source: branch {}, path {}", b.branch, b.path)
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
                format!(" from {}", approval.groups.join(", "))
            },
            if approval.allow_self_approval {
                ", self-approval allowed"
            } else {
                ""
            }
        );
    }
    for w in &env.freeze_windows {
        println!("freeze: {} to {} ({})", w.start, w.end, w.timezone);
    }
}
