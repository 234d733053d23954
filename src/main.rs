//! The `stagehand` command: the service and a CLI built on its gRPC API.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use stagehand::pipeline::Pipeline;
use stagehand::proto::environment_service_client::EnvironmentServiceClient;
use stagehand::telemetry::{self, LogFormat};
use stagehand::{api, proto};

/// GitOps environment promotion: render, decrypt, reconcile and promote dev → staging → prod.
#[derive(Debug, Parser)]
#[command(name = "stagehand", version, propagate_version = true)]
struct Cli {
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

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the service: the gRPC API with health checking and server reflection.
    Serve(ServeArgs),
    /// Work with a pipeline file locally, without a server.
    #[command(subcommand)]
    Pipeline(PipelineCommand),
    /// Ask a running server about environments.
    #[command(subcommand, name = "env")]
    Env(EnvCommand),
    /// Build a kustomization in-process and print it as `kubectl kustomize DIR` does.
    Render(RenderArgs),
}

#[derive(Debug, Args)]
struct RenderArgs {
    /// The kustomization directory.
    dir: PathBuf,
    /// Output order; a kustomization's own `sortOptions` wins. Default: legacy.
    #[arg(long, value_enum)]
    order: Option<RenderOrder>,
    /// Nothing outside this directory is read. Default: the Git work tree holding DIR, else the
    /// current directory.
    #[arg(long)]
    root: Option<PathBuf>,
    /// Let kustomizations read files outside their own directory (still inside the root).
    #[arg(long)]
    no_load_restrictor: bool,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum RenderOrder {
    Legacy,
    Fifo,
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// Address the gRPC API listens on; port 0 picks a free port (logged at start-up).
    #[arg(long, env = "STAGEHAND_LISTEN", default_value = "127.0.0.1:7420")]
    listen: SocketAddr,
    /// The pipeline file the service runs.
    #[arg(long, env = "STAGEHAND_PIPELINE", default_value = "pipeline.yaml")]
    pipeline: PathBuf,
    /// Directory for durable state (created if missing).
    #[arg(long, env = "STAGEHAND_STATE_DIR", default_value = ".stagehand")]
    state_dir: PathBuf,
}

#[derive(Debug, Subcommand)]
enum PipelineCommand {
    /// Check a pipeline file and print its environments in promotion order.
    Validate {
        /// The pipeline file.
        #[arg(long, env = "STAGEHAND_PIPELINE", default_value = "pipeline.yaml")]
        pipeline: PathBuf,
    },
}

#[derive(Debug, Args)]
struct ServerArgs {
    /// URL of a running `stagehand serve`.
    #[arg(
        long,
        env = "STAGEHAND_SERVER",
        default_value = "http://127.0.0.1:7420"
    )]
    server: String,
}

#[derive(Debug, Subcommand)]
enum EnvCommand {
    /// List the environments of the server's pipeline, in promotion order.
    List {
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Show one environment as JSON.
    Get {
        /// The environment's name.
        name: String,
        #[command(flatten)]
        server: ServerArgs,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if let Err(e) = telemetry::init(cli.log_format, &cli.log_level) {
        eprintln!("error: --log-level {:?}: {e}", cli.log_level);
        return std::process::ExitCode::from(2);
    }
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime can be built at start-up");
    match runtime.block_on(run(cli.command)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Render(args) => render(args),
        Command::Serve(args) => serve(args).await,
        Command::Pipeline(PipelineCommand::Validate { pipeline }) => {
            let pipeline = Pipeline::load(&pipeline)?;
            println!("pipeline {}", pipeline.name);
            for env in &pipeline.environments {
                match &env.promotes_from {
                    Some(from) => println!("  {} (promoted from {from})", env.name),
                    None => println!("  {}", env.name),
                }
            }
            Ok(())
        }
        Command::Env(EnvCommand::List { server }) => {
            let mut client = connect(&server).await?;
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
            Ok(())
        }
        Command::Env(EnvCommand::Get { name, server }) => {
            let mut client = connect(&server).await?;
            let env = client
                .get_environment(proto::GetEnvironmentRequest { name })
                .await
                .map_err(|status| rpc_error("GetEnvironment", status))?
                .into_inner();
            println!("{env:#?}");
            Ok(())
        }
    }
}

fn render(args: RenderArgs) -> anyhow::Result<()> {
    use stagehand::render::{self, LoadRestrictor, Options, Order, fs::DiskFs};
    let dir = args.dir.canonicalize().with_context(|| {
        format!(
            "{}: cannot open the kustomization directory",
            args.dir.display()
        )
    })?;
    let root = match args.root {
        Some(r) => r
            .canonicalize()
            .with_context(|| format!("--root {}: cannot open it", r.display()))?,
        None => match dir.ancestors().find(|a| a.join(".git").exists()) {
            Some(work_tree) => work_tree.to_path_buf(),
            None => std::env::current_dir()?.canonicalize()?,
        },
    };
    let rel = dir.strip_prefix(&root).with_context(|| {
        format!(
            "{} is outside the root {} (see --root)",
            dir.display(),
            root.display()
        )
    })?;
    let fs = DiskFs::new(&root)?;
    let options = Options {
        order: args.order.map(|o| match o {
            RenderOrder::Legacy => Order::Legacy,
            RenderOrder::Fifo => Order::Fifo,
        }),
        load_restrictor: if args.no_load_restrictor {
            LoadRestrictor::None
        } else {
            LoadRestrictor::RootOnly
        },
        decrypt: None,
    };
    let rel = rel.to_str().context("the directory path is not UTF-8")?;
    let objects = render::render(&fs, rel, &options)?;
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    out.write_all(render::to_yaml(&objects).as_bytes())?;
    out.flush()?;
    Ok(())
}

/// The server's message is written for people; the code says which kind of failure it was.
fn rpc_error(rpc: &str, status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{rpc}: {} ({:?})", status.message(), status.code())
}

async fn connect(
    args: &ServerArgs,
) -> anyhow::Result<EnvironmentServiceClient<tonic::transport::Channel>> {
    EnvironmentServiceClient::connect(args.server.clone())
        .await
        .with_context(|| format!("cannot reach stagehand at {}", args.server))
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let pipeline = Arc::new(Pipeline::load(&args.pipeline)?);
    std::fs::create_dir_all(&args.state_dir)
        .with_context(|| format!("cannot create state directory {}", args.state_dir.display()))?;
    let listener = api::Listener::bind(args.listen).await?;
    // Scripts and tests that pass port 0 read the chosen address from this line on stdout.
    println!("listening on {}", listener.local_addr());
    api::serve(listener, pipeline, shutdown_signal()).await?;
    tracing::info!("stopped");
    Ok(())
}

/// Completes on SIGINT or SIGTERM, whichever comes first.
async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler only fails outside a tokio runtime");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("received SIGINT"),
        _ = term.recv() => tracing::info!("received SIGTERM"),
    }
}
