//! `stagehand serve`: the service.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Args;
use stagehand::pipeline::Pipeline;
use stagehand::{api, git, reconcile, secrets, service};

use super::git::GitCredentialArgs;

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address the gRPC API listens on; port 0 picks a free port (logged at start-up).
    #[arg(long, env = "STAGEHAND_LISTEN", default_value = "127.0.0.1:7420")]
    listen: SocketAddr,
    /// The pipeline file the service runs.
    #[arg(long, env = "STAGEHAND_PIPELINE", default_value = "pipeline.yaml")]
    pipeline: PathBuf,
    /// Directory for durable state (created if missing).
    #[arg(long, env = "STAGEHAND_STATE_DIR", default_value = ".stagehand")]
    state_dir: PathBuf,
    /// Address of the HTTP listener for Git hosts' push webhooks (`POST /api/webhook`);
    /// none without it.
    #[arg(long, env = "STAGEHAND_HTTP_LISTEN")]
    http_listen: Option<SocketAddr>,
    /// A file holding the secret webhooks are signed with (GitHub, Gitea/Forgejo, generic
    /// HMAC-SHA256) or carry (GitLab's X-Gitlab-Token). Without it every webhook is refused.
    #[arg(long, env = "STAGEHAND_WEBHOOK_SECRET_FILE")]
    webhook_secret_file: Option<PathBuf>,
    #[command(flatten)]
    credentials: GitCredentialArgs,
}

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let pipeline = Arc::new(Pipeline::load(&args.pipeline)?);
    std::fs::create_dir_all(&args.state_dir)
        .with_context(|| format!("cannot create state directory {}", args.state_dir.display()))?;
    let secret = match &args.webhook_secret_file {
        None => None,
        Some(file) => {
            let bytes = std::fs::read(file).with_context(|| {
                format!("cannot read the webhook secret file {}", file.display())
            })?;
            Some(
                service::webhook::WebhookSecret::from_file_contents(bytes).with_context(|| {
                    format!("the webhook secret file {} is empty", file.display())
                })?,
            )
        }
    };
    let url = git::RemoteUrl::new(pipeline.repository.resolved_url(&args.pipeline));
    let repository = git::Repository::open(&args.state_dir, url, args.credentials.load()?)?;
    let identities = secrets::Identities::from_sops_environment()?;
    let notifier = service::notify::Notifier::start(&pipeline)?;
    let service = service::Service::start(service::Config {
        reconcile: reconcile::Options {
            owner_prefix: format!("{}.", pipeline.name),
            ..reconcile::Options::default()
        },
        pipeline,
        repository,
        identities: Arc::new(identities),
        metrics: Arc::default(),
        notifier,
    });
    let listener = api::Listener::bind(args.listen).await?;
    // Scripts and tests that pass port 0 read the chosen addresses from these lines on stdout.
    println!("listening on {}", listener.local_addr());
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let http = match args.http_listen {
        None => None,
        Some(addr) => {
            let listener = api::Listener::bind(addr).await?;
            println!("http listening on {}", listener.local_addr());
            let mut stopped = stopped.clone();
            let shutdown = async move {
                let _ = stopped.wait_for(|s| *s).await;
            };
            Some(tokio::spawn(api::http::serve(
                listener,
                service.clone(),
                secret,
                shutdown,
            )))
        }
    };
    let grpc = api::serve(listener, service.clone(), async move {
        shutdown_signal().await;
        stop.send_replace(true);
    })
    .await;
    if let Some(http) = http {
        http.await.context("the HTTP task panicked")??;
    }
    grpc?;
    service.shutdown().await;
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
