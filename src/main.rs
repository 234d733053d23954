//! The `stagehand` command: the service and a CLI built on its gRPC API.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use stagehand::pipeline::Pipeline;
use stagehand::proto::environment_service_client::EnvironmentServiceClient;
use stagehand::telemetry::{self, LogFormat};
use stagehand::{api, git, proto, reconcile, secrets};

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
    /// Work with the pipeline's Git repository directly, without a server.
    #[command(subcommand)]
    Git(GitCommand),
    /// Show what a sync of one environment would change in its cluster, without changing it
    /// (JSON; Secret values never appear, changed Secret keys do).
    Diff(OneEnvArgs),
    /// Reconcile one environment once: render its revision, decrypt, apply, prune, check health
    /// (JSON status; exit 1 when the pass fails).
    Sync(OneEnvArgs),
    /// Decrypt, encrypt and rotate SOPS files encrypted to age, as sops 3.11 does.
    #[command(subcommand)]
    Secrets(SecretsCommand),
    /// Build a kustomization in-process and print it as `kubectl kustomize DIR` does.
    Render(RenderArgs),
}

#[derive(Debug, Subcommand)]
enum GitCommand {
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

/// One environment of a pipeline, read from the repository at its current revision. SOPS files
/// are decrypted with the identities sops itself would use (SOPS_AGE_KEY, SOPS_AGE_KEY_FILE,
/// SOPS_AGE_KEY_CMD, the default keys.txt).
#[derive(Debug, Args)]
struct OneEnvArgs {
    /// The pipeline file.
    #[arg(long, env = "STAGEHAND_PIPELINE", default_value = "pipeline.yaml")]
    pipeline: PathBuf,
    /// The environment's name.
    #[arg(long)]
    env: String,
    /// Directory for durable state; the repository cache lives under `git/` in it.
    #[arg(long, env = "STAGEHAND_STATE_DIR", default_value = ".stagehand")]
    state_dir: PathBuf,
    #[command(flatten)]
    credentials: GitCredentialArgs,
}

/// How to authenticate to the Git remote; secrets are read from files, never from flags.
#[derive(Debug, Args)]
struct GitCredentialArgs {
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
    fn load(&self) -> anyhow::Result<git::Credentials> {
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

const SECRETS_EXIT_CODES: &str = "Exit codes: 0 success, 51 MAC mismatch (the file was altered), \
128 no loaded age identity matches a recipient of the file, 1 any other failure.\n\
Identities are read as sops reads them: SOPS_AGE_KEY, SOPS_AGE_KEY_FILE, SOPS_AGE_KEY_CMD, \
SOPS_AGE_SSH_PRIVATE_KEY_FILE and $XDG_CONFIG_HOME/sops/age/keys.txt.";

#[derive(Debug, Subcommand)]
enum SecretsCommand {
    /// Print the decrypted file, as `sops -d FILE` does.
    #[command(after_help = SECRETS_EXIT_CODES)]
    Decrypt {
        file: PathBuf,
        /// yaml, json, dotenv, ini or binary; by default from the file extension.
        #[arg(long)]
        input_type: Option<String>,
        /// Format to print in; by default the input type.
        #[arg(long)]
        output_type: Option<String>,
        /// Print the plaintext even if the MAC does not match (logged as a warning).
        #[arg(long)]
        ignore_mac: bool,
    },
    /// Encrypt a plaintext file to age recipients (or those of the matching `.sops.yaml`
    /// creation rule) and print it, or replace it with --in-place.
    #[command(after_help = SECRETS_EXIT_CODES)]
    Encrypt {
        file: PathBuf,
        /// An age recipient; repeat or separate with commas for several.
        #[arg(long = "age", value_delimiter = ',')]
        age: Vec<String>,
        /// yaml, json, dotenv, ini or binary; by default from the file extension.
        #[arg(long)]
        input_type: Option<String>,
        /// Write the encrypted file over FILE instead of printing it.
        #[arg(long)]
        in_place: bool,
    },
    /// Re-wrap the data key of FILE for a new set of age recipients, in place (values untouched).
    #[command(after_help = SECRETS_EXIT_CODES)]
    Rotate {
        file: PathBuf,
        /// A recipient to add; repeat or separate with commas.
        #[arg(long = "add-age", value_delimiter = ',')]
        add: Vec<String>,
        /// A recipient to remove; repeat or separate with commas.
        #[arg(long = "rm-age", value_delimiter = ',')]
        remove: Vec<String>,
        /// yaml, json, dotenv, ini or binary; by default from the file extension.
        #[arg(long)]
        input_type: Option<String>,
    },
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
    /// Decrypt SOPS-encrypted resources and generator sources with the age identities sops would
    /// use (SOPS_AGE_KEY, SOPS_AGE_KEY_FILE, SOPS_AGE_KEY_CMD, the default keys.txt). Without it,
    /// encrypted content passes through unchanged.
    #[arg(long)]
    decrypt: bool,
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
    /// Show one environment: source, sync policy, approval policy, freeze windows.
    Get {
        /// The environment's name.
        name: String,
        #[command(flatten)]
        server: ServerArgs,
    },
}

fn main() -> std::process::ExitCode {
    // kube's and reqwest's (gix's HTTP transport) rustls share one process-wide crypto
    // provider; without one installed the first TLS connection panics.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    if let Err(e) = telemetry::init(cli.log_format, &cli.log_level) {
        eprintln!("error: --log-level {:?}: {e}", cli.log_level);
        return std::process::ExitCode::from(2);
    }
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime can be built at start-up");
    match runtime.block_on(run(cli.command)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", error_chain(&e));
            match e.downcast_ref::<stagehand::secrets::Error>() {
                Some(e) if e.is_mac_mismatch() => std::process::ExitCode::from(51),
                Some(e) if e.is_no_matching_key() => std::process::ExitCode::from(128),
                _ => std::process::ExitCode::FAILURE,
            }
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
        Command::Git(GitCommand::Revisions {
            pipeline: file,
            state_dir,
            credentials,
        }) => {
            let pipeline = Pipeline::load(&file)?;
            let url = repository_url(&file, &pipeline.repository.url);
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
        Command::Diff(args) => {
            let mut reconciler = one_environment(args)?;
            let plan = reconciler.plan().await?;
            println!("{}", serde_json::to_string_pretty(&plan)?);
            Ok(())
        }
        Command::Sync(args) => {
            let mut reconciler = one_environment(args)?;
            let outcome = reconciler.reconcile().await;
            println!("{}", serde_json::to_string_pretty(reconciler.status())?);
            outcome?;
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
            print_environment(&env);
            Ok(())
        }
        Command::Secrets(command) => secrets_command(command),
    }
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

/// The error and its causes, skipping a cause whose text its parent already printed (several
/// module errors embed their source's message).
fn error_chain(error: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if !out.contains(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
    }
    out
}

/// A reconciler for one environment, reading Git through the state directory's cache.
fn one_environment(
    args: OneEnvArgs,
) -> anyhow::Result<reconcile::Reconciler<reconcile::source::GitSource>> {
    let pipeline = Pipeline::load(&args.pipeline)?;
    let env = pipeline
        .environment(&args.env)
        .with_context(|| {
            format!(
                "--env {:?}: pipeline {:?} has no such environment",
                args.env, pipeline.name
            )
        })?
        .clone();
    let url = repository_url(&args.pipeline, &pipeline.repository.url);
    let repository = git::Repository::open(&args.state_dir, url, args.credentials.load()?)?;
    let identities = secrets::Identities::from_sops_environment()?;
    let options = reconcile::Options {
        owner_prefix: format!("{}.", pipeline.name),
        installation: Some(stagehand::cluster::installation::load_or_create(
            &args.state_dir,
        )?),
        ..reconcile::Options::default()
    };
    let source = reconcile::source::GitSource::new(
        Arc::new(pipeline),
        repository,
        Arc::new(identities),
        true,
    );
    let (events, _) = tokio::sync::broadcast::channel(16);
    Ok(reconcile::Reconciler::new(
        env,
        Arc::new(source),
        Arc::new(options),
        events,
    ))
}

/// The pipeline's repository: URLs as given, relative paths against the pipeline file's
/// directory.
fn repository_url(pipeline_file: &std::path::Path, url: &str) -> git::RemoteUrl {
    let is_url = url.contains("://")
        || url
            .split_once(':')
            .is_some_and(|(host, _)| !host.contains('/'));
    if is_url || std::path::Path::new(url).is_absolute() {
        return git::RemoteUrl::new(url);
    }
    let base = pipeline_file.parent().unwrap_or(std::path::Path::new("."));
    git::RemoteUrl::new(base.join(url).display().to_string())
}

fn secrets_format(name: Option<&str>, file: &std::path::Path) -> anyhow::Result<secrets::Format> {
    match name {
        None => Ok(secrets::Format::from_path(file)),
        Some(n) => secrets::Format::from_name(n)
            .with_context(|| format!("unknown type {n:?}: use yaml, json, dotenv, ini or binary")),
    }
}

fn secrets_command(command: SecretsCommand) -> anyhow::Result<()> {
    use std::io::Write as _;
    let read = |file: &std::path::Path| {
        std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))
    };
    match command {
        SecretsCommand::Decrypt {
            file,
            input_type,
            output_type,
            ignore_mac,
        } => {
            let format = secrets_format(input_type.as_deref(), &file)?;
            let output = output_type
                .as_deref()
                .map(|t| secrets_format(Some(t), &file))
                .transpose()?;
            let ids = secrets::Identities::from_sops_environment()?;
            let options = secrets::DecryptOptions { ignore_mac, output };
            let plain = secrets::decrypt_with(&read(&file)?, format, &ids, &file, &options)?;
            std::io::stdout()
                .write_all(plain.expose())
                .context("cannot write to stdout")?;
        }
        SecretsCommand::Encrypt {
            file,
            age,
            input_type,
            in_place,
        } => {
            let format = secrets_format(input_type.as_deref(), &file)?;
            let options = if age.is_empty() {
                let cwd = std::env::current_dir().context("cannot read the current directory")?;
                let config = secrets::config::find_config(&cwd)
                    .context("no --age recipient given and no .sops.yaml found")?;
                let rule = secrets::config::creation_rule_for(&config, &file)?;
                secrets::EncryptOptions {
                    recipients: rule.recipients,
                    rules: rule.rules,
                }
            } else {
                secrets::EncryptOptions {
                    recipients: age,
                    rules: secrets::RuleText::default(),
                }
            };
            let encrypted = secrets::encrypt(&read(&file)?, format, &options, &file)?;
            if in_place {
                std::fs::write(&file, encrypted)
                    .with_context(|| format!("cannot write {}", file.display()))?;
            } else {
                std::io::stdout()
                    .write_all(&encrypted)
                    .context("cannot write to stdout")?;
            }
        }
        SecretsCommand::Rotate {
            file,
            add,
            remove,
            input_type,
        } => {
            let format = secrets_format(input_type.as_deref(), &file)?;
            let ids = secrets::Identities::from_sops_environment()?;
            let rotated = secrets::rotate(&read(&file)?, format, &ids, &add, &remove, &file)?;
            std::fs::write(&file, rotated)
                .with_context(|| format!("cannot write {}", file.display()))?;
        }
    }
    Ok(())
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
    let identities = if args.decrypt {
        Some(secrets::Identities::from_sops_environment()?)
    } else {
        None
    };
    let sops = identities.as_ref().map(render::sops::SopsDecrypt::new);
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
        decrypt: sops.as_ref().map(|d| d as &dyn render::Decrypt),
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
    let secret = match &args.webhook_secret_file {
        None => None,
        Some(file) => {
            let bytes = std::fs::read(file).with_context(|| {
                format!("cannot read the webhook secret file {}", file.display())
            })?;
            Some(
                stagehand::service::webhook::WebhookSecret::from_file_contents(bytes)
                    .with_context(|| {
                        format!("the webhook secret file {} is empty", file.display())
                    })?,
            )
        }
    };
    let identities = Arc::new(secrets::Identities::from_sops_environment()?);
    let metrics: Arc<stagehand::metrics::Metrics> = Arc::default();
    let credentials = args.credentials.load()?;
    let (file, state_dir) = (args.pipeline.clone(), args.state_dir.clone());
    let installation = stagehand::cluster::installation::load_or_create(&args.state_dir)?;
    let build: stagehand::service::reload::Builder = Box::new(move |pipeline: Arc<Pipeline>| {
        let url = repository_url(&file, &pipeline.repository.url);
        Ok(stagehand::service::Config {
            repository: git::Repository::open(&state_dir, url, credentials.clone())?,
            notifier: stagehand::service::notify::Notifier::start(&pipeline)?,
            reconcile: reconcile::Options {
                owner_prefix: format!("{}.", pipeline.name),
                installation: Some(installation.clone()),
                ..reconcile::Options::default()
            },
            pipeline,
            identities: identities.clone(),
            metrics: metrics.clone(),
        })
    });
    let text = std::fs::read(&args.pipeline)
        .with_context(|| format!("cannot read {}", args.pipeline.display()))?;
    let first =
        stagehand::service::Service::start(build(pipeline).map_err(|e| anyhow::anyhow!(e))?);
    let service = stagehand::service::reload::Supervisor::start(
        args.pipeline.clone(),
        text,
        first,
        build,
        std::time::Duration::from_secs(2),
    );
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
    service.stop();
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
