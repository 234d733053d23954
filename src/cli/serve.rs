//! `stagehand serve`: the service.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Args;
use stagehand::pipeline::Pipeline;
use stagehand::{api, git, reconcile, secrets, service};

use super::database::DatabaseArgs;
use super::git::GitCredentialArgs;

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address the gRPC API listens on; port 0 picks a free port (logged at start-up).
    #[arg(long, env = "STAGEHAND_LISTEN", default_value = "127.0.0.1:7420")]
    listen: SocketAddr,
    /// The pipeline file the service runs.
    #[arg(long, env = "STAGEHAND_PIPELINE", default_value = "pipeline.yaml")]
    pipeline: PathBuf,
    /// Directory for durable state (created if missing): the Git cache, and the store unless
    /// --database-url names a shared one; made readable by this user only (0700, its files
    /// 0600), whatever the umask.
    #[arg(long, env = "STAGEHAND_STATE_DIR", default_value = ".stagehand")]
    state_dir: PathBuf,
    /// Address of the HTTP listener for Git hosts' push webhooks (`POST /api/webhook`);
    /// none without it.
    #[arg(long, env = "STAGEHAND_HTTP_LISTEN")]
    http_listen: Option<SocketAddr>,
    /// Address of a listener that serves gRPC health checking (`grpc.health.v1`) alone, in
    /// plain HTTP/2 without tokens, for probes that can use neither TLS nor tokens, such as
    /// the kubelet's gRPC probes; none without it. It says only whether the service is up.
    #[arg(long, env = "STAGEHAND_HEALTH_LISTEN")]
    health_listen: Option<SocketAddr>,
    /// After SIGTERM or SIGINT: how long the sync passes in flight may take to finish before
    /// the service stops (no pass starts meanwhile); those still running then are abandoned.
    #[arg(long, env = "STAGEHAND_SHUTDOWN_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    shutdown_timeout: std::time::Duration,
    /// A file holding the secret webhooks are signed with (GitHub, Gitea/Forgejo, generic
    /// HMAC-SHA256) or carry (GitLab's X-Gitlab-Token). Without it every webhook is refused.
    #[arg(long, env = "STAGEHAND_WEBHOOK_SECRET_FILE")]
    webhook_secret_file: Option<PathBuf>,
    /// A file holding the token container registries send as `Authorization: Bearer <token>`
    /// with their push notifications (`POST /api/registry-webhook`; docker-registry's
    /// `notifications.endpoints[].headers`). Without it every registry notification is refused.
    #[arg(long, env = "STAGEHAND_REGISTRY_WEBHOOK_TOKEN_FILE")]
    registry_webhook_token_file: Option<PathBuf>,
    /// Browsers reach the HTTP listener's web view (`/ui`) through HTTPS, a proxy or ingress
    /// terminating TLS: session cookies are marked Secure, and sign-in is allowed on an address
    /// other than loopback (where a token would otherwise cross the network in clear).
    #[arg(long, env = "STAGEHAND_WEB_BEHIND_HTTPS")]
    web_behind_https: bool,
    /// How long a web session lasts from sign-in.
    #[arg(long, env = "STAGEHAND_WEB_SESSION_TTL", default_value = "12h", value_parser = humantime::parse_duration)]
    web_session_ttl: std::time::Duration,
    /// Serve no web view on the HTTP listener.
    #[arg(long, env = "STAGEHAND_NO_WEB")]
    no_web: bool,
    /// The tokens file (YAML: identities with their groups and the SHA-256 of their bearer
    /// tokens), checked every 5 s and taken when it changed; one that cannot be read or is not
    /// valid ends every token until it is valid again. Tokens travel in clear without
    /// --tls-cert, so that needs loopback or --insecure. Without a tokens file every caller is
    /// `anonymous` and may do everything, which is refused unless the server listens on loopback
    /// or `--insecure` says so.
    #[arg(long, env = "STAGEHAND_TOKENS_FILE")]
    tokens_file: Option<PathBuf>,
    /// Environments synced at once; the others queue in order. Each pass in flight holds its
    /// rendered objects and up to 16 requests to its cluster. Diffs, previews, comparisons and
    /// pre-flight checks count against the same limit.
    #[arg(long, env = "STAGEHAND_CONCURRENT_SYNCS", default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..))]
    concurrent_syncs: u16,
    /// Connections one IP address may have open at once, to each listener; further ones are
    /// closed as they arrive. Raise it behind a proxy that connects from one address.
    #[arg(long, env = "STAGEHAND_MAX_CONNECTIONS_PER_PEER", default_value_t = api::limits::CONNECTIONS_PER_PEER as u32, value_parser = clap::value_parser!(u32).range(1..))]
    max_connections_per_peer: u32,
    /// Watch streams (`env watch`, `promote --watch`) one identity may have open at once.
    #[arg(long, env = "STAGEHAND_MAX_WATCHES_PER_IDENTITY", default_value_t = api::watch::WATCHES_PER_IDENTITY as u32, value_parser = clap::value_parser!(u32).range(1..))]
    max_watches_per_identity: u32,
    /// On an address other than loopback: allow running without a tokens file (TLS does not
    /// replace tokens), and allow taking tokens over plain HTTP/2 without --tls-cert (only
    /// where something else encrypts the connection, such as a service mesh).
    #[arg(long)]
    insecure: bool,
    /// Name of the author and committer of promotion commits (the requester and approvers are
    /// in the commit's trailers).
    #[arg(long, env = "STAGEHAND_COMMIT_NAME", default_value = "Stagehand")]
    commit_name: String,
    /// E-mail of the author and committer of promotion commits.
    #[arg(
        long,
        env = "STAGEHAND_COMMIT_EMAIL",
        default_value = "stagehand@localhost"
    )]
    commit_email: String,
    /// An OpenSSH private key file (ed25519, ecdsa or rsa, without a passphrase) that signs
    /// every promotion and rollback commit, as `git commit -S` does with `gpg.format = ssh`;
    /// commits are unsigned without it (or --signing-key-secret). Read once at start.
    #[arg(
        long,
        env = "STAGEHAND_SIGNING_KEY",
        conflicts_with = "signing_key_secret"
    )]
    signing_key: Option<PathBuf>,
    /// The commit signing key from a Secret, as NAMESPACE/NAME (or NAME in --namespace): its
    /// `ssh-privatekey` entry (the key of a `kubernetes.io/ssh-auth` Secret), read through the
    /// API once at start; nothing of it is written to disk.
    #[arg(long, env = "STAGEHAND_SIGNING_KEY_SECRET")]
    signing_key_secret: Option<String>,
    /// PEM certificate chain the gRPC API serves TLS with; plain HTTP/2 without it.
    #[arg(long, env = "STAGEHAND_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of `--tls-cert`.
    #[arg(long, env = "STAGEHAND_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// PEM certificate of a CA: clients must then present a certificate it signed (mTLS).
    #[arg(long, env = "STAGEHAND_CLIENT_CA", requires = "tls_cert")]
    client_ca: Option<PathBuf>,
    /// A Secret holding the age identities, as NAMESPACE/NAME (or NAME in --namespace), read
    /// through the API with the service's own cluster access (in a pod its service account,
    /// else KUBECONFIG) and read again every 5 s. Its entries ending in `.agekey` hold
    /// identities: `<environment>.agekey` that environment's own, the others global (see the
    /// README). Replaces the identities sops would find (SOPS_AGE_KEY_FILE...).
    #[arg(
        long,
        env = "STAGEHAND_AGE_KEYS_SECRET",
        conflicts_with = "age_keys_dir"
    )]
    age_keys_secret: Option<String>,
    /// A directory holding the age identities as files, such as a Secret mounted by the
    /// kubelet: read again every 2 s and when its `..data` link is swapped; dotfiles are
    /// ignored. Entries as for --age-keys-secret.
    #[arg(long, env = "STAGEHAND_AGE_KEYS_DIR")]
    age_keys_dir: Option<PathBuf>,
    /// Namespace of the service's own Secrets (kubeconfigSecret clusters, a --age-keys-secret
    /// without one); by default the pod's namespace, or the kubeconfig context's.
    #[arg(long, env = "STAGEHAND_NAMESPACE")]
    namespace: Option<String>,
    /// Several replicas: the namespace of the Leases through which they share the environments
    /// and elect the one that drives promotions, in the service's own cluster (in a pod its
    /// service account, else KUBECONFIG). Without it this replica does everything alone.
    #[arg(long, env = "STAGEHAND_LEASE_NAMESPACE")]
    lease_namespace: Option<String>,
    /// This replica's name in the Leases: unique among the replicas (in a pod, its name).
    /// Default: the host name.
    #[arg(long, env = "POD_NAME")]
    replica_id: Option<String>,
    /// How long a Lease lasts unless renewed; renewed every third of it. A replica that dies
    /// or is cut off from the apiserver stops writing within this, and its environments move
    /// after it (plus up to a third of it). At least 3s.
    #[arg(long, env = "STAGEHAND_LEASE_DURATION", default_value = "15s", value_parser = humantime::parse_duration)]
    lease_duration: std::time::Duration,
    #[command(flatten)]
    database: DatabaseArgs,
    #[command(flatten)]
    credentials: GitCredentialArgs,
}

/// The replica's identity: --replica-id, else the host name.
fn replica_id(args: &ServeArgs) -> String {
    if let Some(id) = args.replica_id.as_ref().filter(|id| !id.is_empty()) {
        return id.clone();
    }
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| format!("stagehand-{}", std::process::id()))
}

/// One replica alone, or several sharing the work through Leases.
async fn ownership(
    args: &ServeArgs,
    home: &stagehand::cluster::secret::Home,
    metrics: &Arc<stagehand::metrics::Metrics>,
) -> anyhow::Result<stagehand::shard::Ownership> {
    use stagehand::shard::{self, Ownership};
    let replica = replica_id(args);
    let Some(namespace) = &args.lease_namespace else {
        return Ok(Ownership::single(&replica));
    };
    if args.lease_duration < shard::MIN_DURATION {
        anyhow::bail!(
            "--lease-duration {}: at least {} (renewals every third of it must fit round trips)",
            humantime::format_duration(args.lease_duration),
            humantime::format_duration(shard::MIN_DURATION)
        );
    }
    let (client, _) = home.get().await.context("--lease-namespace")?;
    tracing::info!(%replica, %namespace, duration = ?args.lease_duration, "sharing the environments with the other replicas through Leases");
    Ok(Ownership::leased(
        shard::Config {
            client: client.clone(),
            namespace: namespace.clone(),
            replica,
            duration: args.lease_duration,
        },
        metrics.clone(),
    ))
}

/// How often a key Secret is read through the API.
const KEY_SECRET_EVERY: std::time::Duration = std::time::Duration::from_secs(5);
/// How often a key directory is looked at (a few `stat`s unless it changed).
const KEY_DIR_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// The age identities the service decrypts with: from --age-keys-secret or --age-keys-dir,
/// reloaded in the background, else those sops would find, fixed.
async fn keyring(
    args: &ServeArgs,
    home: &stagehand::cluster::secret::Home,
) -> anyhow::Result<Arc<secrets::Keyring>> {
    if let Some(dir) = &args.age_keys_dir {
        let source = secrets::KeyDirectory::new(dir);
        let ring = Arc::new(
            secrets::Keyring::load(&source)
                .await
                .context("--age-keys-dir")?,
        );
        tracing::info!(source = ring.origin(), entries = ?ring.entry_names(), "loaded the age identities");
        ring.watch(source, KEY_DIR_EVERY);
        return Ok(ring);
    }
    let Some(secret) = &args.age_keys_secret else {
        return Ok(Arc::new(secrets::Keyring::fixed(
            secrets::Identities::from_sops_environment()?,
        )));
    };
    let (client, namespace) = home.get().await.context("--age-keys-secret")?;
    let (namespace, name) = match secret.split_once('/') {
        Some((namespace, name)) => (namespace.to_owned(), name.to_owned()),
        None => (namespace.clone(), secret.clone()),
    };
    if namespace.is_empty() || name.is_empty() {
        anyhow::bail!("--age-keys-secret {secret:?}: expected NAMESPACE/NAME");
    }
    let source = stagehand::cluster::secret::SecretKeys::new(client.clone(), namespace, name);
    let ring = Arc::new(
        secrets::Keyring::load(&source)
            .await
            .context("--age-keys-secret")?,
    );
    tracing::info!(source = ring.origin(), entries = ?ring.entry_names(), "loaded the age identities");
    ring.watch(source, KEY_SECRET_EVERY);
    Ok(ring)
}

/// The entry of a signing key Secret that holds the key, as in a `kubernetes.io/ssh-auth` Secret.
const SIGNING_KEY_ENTRY: &str = "ssh-privatekey";

/// The key promotion commits are signed with: --signing-key or --signing-key-secret, or none.
async fn signer(
    args: &ServeArgs,
    home: &stagehand::cluster::secret::Home,
) -> anyhow::Result<Option<Arc<git::sign::Signer>>> {
    let signer = if let Some(file) = &args.signing_key {
        git::sign::Signer::from_file(file).context("--signing-key")?
    } else if let Some(secret) = &args.signing_key_secret {
        let (client, namespace) = home.get().await.context("--signing-key-secret")?;
        let (namespace, name) = match secret.split_once('/') {
            Some((namespace, name)) => (namespace.to_owned(), name.to_owned()),
            None => (namespace.clone(), secret.clone()),
        };
        if namespace.is_empty() || name.is_empty() {
            anyhow::bail!("--signing-key-secret {secret:?}: expected NAMESPACE/NAME");
        }
        let data = stagehand::cluster::secret::read(client, &namespace, &name)
            .await
            .context("--signing-key-secret")?
            .with_context(|| {
                format!("--signing-key-secret: Secret {namespace}/{name} not found")
            })?;
        let bytes = data.entries.get(SIGNING_KEY_ENTRY).with_context(|| {
            format!(
                "--signing-key-secret: Secret {namespace}/{name} has no entry {SIGNING_KEY_ENTRY:?}"
            )
        })?;
        git::sign::Signer::from_bytes(
            format!("Secret {namespace}/{name} entry {SIGNING_KEY_ENTRY}"),
            bytes,
        )
        .context("--signing-key-secret")?
    } else {
        return Ok(None);
    };
    // The public key is what operators put into allowed_signers files, so it is logged.
    tracing::info!(key = signer.origin(), fingerprint = %signer.fingerprint(), public_key = %signer.public_key(), "promotion commits are signed");
    Ok(Some(Arc::new(signer)))
}

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let pipeline = Arc::new(Pipeline::load(&args.pipeline)?);
    let tls = tls(&args)?;
    stagehand::state_dir::private_dir(&args.state_dir)
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
    let registry_token = match &args.registry_webhook_token_file {
        None => None,
        Some(file) => {
            let bytes = std::fs::read(file).with_context(|| {
                format!(
                    "cannot read the registry webhook token file {}",
                    file.display()
                )
            })?;
            Some(
                service::registry_webhook::RegistryToken::from_file_contents(bytes).with_context(
                    || {
                        format!(
                            "the registry webhook token file {} is empty",
                            file.display()
                        )
                    },
                )?,
            )
        }
    };
    let home = Arc::new(stagehand::cluster::secret::Home::new(
        args.namespace.clone(),
    ));
    let keys = keyring(&args, &home).await?;
    let signer = signer(&args, &home).await?;
    let metrics: Arc<stagehand::metrics::Metrics> = Arc::default();
    let ownership = ownership(&args, &home, &metrics).await?;
    let connections = stagehand::cluster::Connections::with_home(home);
    let credentials = args.credentials.load()?;
    let (file, state_dir) = (args.pipeline.clone(), args.state_dir.clone());
    let tokens = match &args.tokens_file {
        Some(file) => {
            api::auth::allow_bearer_tokens(args.listen, tls.is_some(), args.insecure)?;
            if tls.is_none() && !args.listen.ip().is_loopback() {
                tracing::warn!(
                    listen = %args.listen,
                    "--insecure: bearer tokens arrive over plain HTTP/2; only safe where something else encrypts the connection"
                );
            }
            let tokens = Arc::new(api::auth::Tokens::load(file)?);
            tokens.watch(std::time::Duration::from_secs(5));
            Some(tokens)
        }
        None => {
            api::auth::allow_anonymous(args.listen, args.insecure)?;
            tracing::warn!(
                "no --tokens-file: every caller is anonymous and may do everything in every environment"
            );
            None
        }
    };
    let authenticator = match &tokens {
        Some(tokens) => api::auth::Authenticator::new(tokens.clone()),
        None => api::auth::Authenticator::anonymous(),
    };
    let with_tokens = tokens.is_some();
    let people = tokens.clone();
    let (store, installation) = args.database.open(&args.state_dir).await?;
    let committer = git::promote::Identity {
        name: args.commit_name.clone(),
        email: args.commit_email.clone(),
    };
    let git_options = git::promote::Options {
        author: committer.clone(),
        committer,
        signer,
        max_attempts: 5,
    };
    // One set of turns for the process: a reloaded pipeline shares them with the one it replaces.
    let turns = reconcile::Turns::new(usize::from(args.concurrent_syncs))
        .counted(metrics.turns_in_use.clone(), metrics.turns_waiting.clone());
    let draining = turns.clone();
    let leases = ownership.clone();
    let build: service::reload::Builder = Box::new(move |pipeline: Arc<Pipeline>| {
        let url = git::RemoteUrl::new(pipeline.repository.resolved_url(&file));
        let access = if with_tokens {
            let names: Vec<&str> = pipeline
                .environments
                .iter()
                .map(|e| e.name.as_str())
                .collect();
            api::auth::AccessPolicy::new(&file, &pipeline.access, &names)?
        } else {
            api::auth::AccessPolicy::allow_all()
        };
        Ok(service::Config {
            access,
            repository: git::Repository::open(&state_dir, url, credentials.clone())?,
            notifier: service::notify::Notifier::start(&pipeline)?,
            reconcile: reconcile::Options {
                owner_prefix: format!("{}.", pipeline.name),
                installation: Some(installation.clone()),
                passes: turns.clone(),
                connections: connections.clone(),
                ..reconcile::Options::default()
            },
            pipeline,
            keys: keys.clone(),
            metrics: metrics.clone(),
            store: store.clone(),
            git: git_options.clone(),
            people: people
                .clone()
                .map(|tokens| tokens as Arc<dyn stagehand::promotion::People>),
            ownership: leases.clone(),
        })
    });
    let text = std::fs::read(&args.pipeline)
        .with_context(|| format!("cannot read {}", args.pipeline.display()))?;
    let first = service::Service::start(build(pipeline).map_err(|e| anyhow::anyhow!(e))?).await?;
    let service = service::reload::Supervisor::start(
        args.pipeline.clone(),
        text,
        first,
        build,
        std::time::Duration::from_secs(2),
    );
    let listener = api::Listener::bind(args.listen).await?;
    // Scripts and tests that pass port 0 read the chosen addresses from these lines on stdout.
    println!("listening on {}", listener.local_addr());
    let health_listener = match args.health_listen {
        None => None,
        Some(addr) => {
            let listener = api::Listener::bind(addr).await?;
            println!("health listening on {}", listener.local_addr());
            Some(listener)
        }
    };
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let http = match args.http_listen {
        None => None,
        Some(addr) => {
            let listener = api::Listener::bind(addr).await?;
            println!("http listening on {}", listener.local_addr());
            let web = (!args.no_web).then(|| {
                let sign_in_refused = (with_tokens
                    && !addr.ip().is_loopback()
                    && !args.web_behind_https
                    && !args.insecure)
                    .then(|| {
                        format!(
                            "Sign-in is off: this server's HTTP listener ({addr}) is not on loopback and it was \
                             not started with --web-behind-https, so a token would cross the network in clear."
                        )
                    });
                Arc::new(api::web::Web::new(
                    service.clone(),
                    authenticator.clone(),
                    api::web::Options {
                        secure_cookies: args.web_behind_https,
                        session_ttl: args.web_session_ttl,
                        sign_in_refused,
                        streams_per_identity: args.max_watches_per_identity as usize,
                    },
                ))
            });
            let mut stopped = stopped.clone();
            let shutdown = async move {
                let _ = stopped.wait_for(|s| *s).await;
            };
            Some(tokio::spawn(api::http::serve(
                listener,
                service.clone(),
                secret,
                registry_token,
                web,
                args.max_connections_per_peer as usize,
                shutdown,
            )))
        }
    };
    let limits = api::Limits {
        connections_per_peer: args.max_connections_per_peer as usize,
        watches_per_identity: args.max_watches_per_identity as usize,
    };
    let grpc = api::serve(
        listener,
        health_listener,
        service.clone(),
        authenticator,
        tls,
        limits,
        async move {
            shutdown_signal().await;
            stop.send_replace(true);
        },
    )
    .await;
    if let Some(http) = http {
        http.await.context("the HTTP task panicked")??;
    }
    grpc?;
    // Passes in flight finish (their objects applied and their inventory stored) unless they
    // outlast the timeout; none starts meanwhile.
    if tokio::time::timeout(args.shutdown_timeout, draining.drain())
        .await
        .is_err()
    {
        tracing::warn!(timeout = ?args.shutdown_timeout, "stopping with sync passes still running: they are abandoned");
    }
    service.stop();
    // Every loop has stopped: the Leases go, so that the other replicas take over at once.
    ownership.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}

fn tls(args: &ServeArgs) -> anyhow::Result<Option<api::Tls>> {
    let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) else {
        return Ok(None);
    };
    let read = |what: &str, file: &PathBuf| {
        std::fs::read(file).with_context(|| format!("cannot read the {what} {}", file.display()))
    };
    let client_ca = match &args.client_ca {
        Some(file) => Some(read("client CA", file)?),
        None => None,
    };
    let tls = api::Tls::new(
        read("TLS certificate", cert)?,
        read("TLS key", key)?,
        client_ca,
    )
    .with_context(|| format!("--tls-cert {}, --tls-key {}", cert.display(), key.display()))?;
    Ok(Some(tls))
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
