//! Talking to an environment's cluster: connect, discover kinds, apply, prune, assess.
//!
//! # Public API
//! - [`Connection::connect`] opens a client for a [`crate::pipeline::Cluster`] (kubeconfig
//!   file and context, the default kubeconfig, or in-cluster); [`Connection::from_client`] wraps
//!   an existing client. Kinds are discovered per group-version on first use and cached; a kind
//!   the cache does not know (a CRD applied a moment ago) triggers a fresh look-up.
//! - [`Object`] / [`ObjectRef`]: a desired manifest and the reference parsed from it.
//! - [`apply::apply`] applies desired objects with server-side apply (field manager
//!   [`FIELD_MANAGER`]) in stages (Namespaces and CRDs first, CRDs waited on until
//!   Established, then the rest concurrently) and returns a [`apply::ChangeSet`]: per object
//!   created, configured, unchanged, drifted (with the fields), healed, recreated or failed.
//!   Unchanged objects cost no request: each kind is listed once and compared by the hash
//!   annotation [`HASH_ANNOTATION`] and field containment; only suspected drift is checked
//!   with a server-side dry-run apply.
//! - [`inventory`]: [`inventory::Inventory`] with pure `new`/`diff`/`merge`, stored in a
//!   ConfigMap ([`inventory::load`], [`inventory::save`], which writes only over the version
//!   it read).
//! - [`prune::prune`] deletes objects that left Git, in reverse apply order, skipping objects
//!   without our [`INVENTORY_LABEL`], objects annotated [`PRUNE_ANNOTATION`]`: disabled`, and
//!   (unless [`prune::Policy`] allows them) Namespaces, CRDs and adopted objects; a pass that
//!   would delete more than the policy's share deletes nothing. Deletes carry the UID read.
//! - [`secret`]: Secrets the service reads through the API (age identities, and the
//!   kubeconfigs of clusters given as `kubeconfigSecret`), in memory only.
//! - [`installation`]: the per-installation ID that is part of every owner.
//! - [`lease`]: `coordination.k8s.io` Leases, each write a compare-and-swap on its
//!   `resourceVersion`, and the expiry rule from this process's own clock.
//! - [`health::assess`]: kstatus-style health of a live object.
//! - [`normalize::normalize`]: defaults older apiservers need under server-side apply.
//! - [`diff`]: field containment and changed field paths (no values).
//! - [`ignore`]: the fields `ignoreDifferences` leaves to other controllers: left out of what is
//!   applied to existing objects and of drift, reported as ignored.
//! - [`redact`]: Secret-safe copies of manifests and scrubbing of free text.
//! - [`events::record`]: a Kubernetes Event on an object (drift, heal, prune).

pub mod apply;
pub mod diff;
pub mod events;
pub mod health;
pub mod ignore;
pub mod installation;
pub mod inventory;
pub mod lease;
pub mod normalize;
mod object;
pub mod prune;
pub mod redact;
pub mod secret;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use kube::api::{Api, ApiResource, DynamicObject};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::discovery::{ApiCapabilities, Scope};

pub use object::{KeyRef, Object, ObjectError, ObjectKey, ObjectRef, Stage};

use crate::pipeline;

/// The one field manager Stagehand applies as.
pub const FIELD_MANAGER: &str = "stagehand";
/// Label on every applied object: the environment (owner) whose inventory holds it.
pub const INVENTORY_LABEL: &str = "stagehand.dev/inventory";
/// Annotation on every applied object: a hash of the manifest as applied.
pub const HASH_ANNOTATION: &str = "stagehand.dev/hash";
/// Annotation a user sets to `disabled` to keep an object when it leaves Git.
pub const PRUNE_ANNOTATION: &str = "stagehand.dev/prune";

/// A cluster operation that failed.
#[derive(Debug, thiserror::Error)]
// Each variant is described by its message, and its fields by the names the message uses.
#[allow(missing_docs)]
pub enum Error {
    /// A request the apiserver refused (`code` set) or that never got an answer (`code` none).
    /// For Secrets, `message` holds field names only.
    #[error("{operation} {target}: {message}")]
    Api {
        operation: &'static str,
        target: String,
        code: Option<u16>,
        reason: String,
        message: String,
    },
    #[error("{object}: the apiserver serves no kind {kind} in {api_version}")]
    UnknownKind {
        object: String,
        api_version: String,
        kind: String,
    },
    #[error("{target}: field {key} is not a valid inventory")]
    InventoryCorrupt {
        target: String,
        key: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error(
        "{target}: another writer changed the inventory since this pass read it; not overwritten"
    )]
    InventoryConflict { target: String },
    /// An object to create exists already and carries no owner label (made by hand or by
    /// another tool); taking it over needs `sync.adopt`.
    #[error(
        "{object} exists already and was not created by Stagehand; set sync.adopt to take it over"
    )]
    Unmanaged { object: String },
    /// An object carries the owner label of another environment or installation.
    #[error("{object} belongs to Stagehand owner {owner:?}, not to this environment")]
    OwnedByOther { object: String, owner: String },
    #[error("CustomResourceDefinition {name}: not Established after {timeout:?}")]
    NotEstablished { name: String, timeout: Duration },
}

impl Error {
    /// The apiserver could not be reached at all (as opposed to refusing a request).
    pub fn is_unreachable(&self) -> bool {
        matches!(self, Self::Api { code: None, .. })
    }

    /// The HTTP status of an API error; `None` when the server was not reached.
    pub fn code(&self) -> Option<u16> {
        match self {
            Self::Api { code, .. } => *code,
            _ => None,
        }
    }
}

/// Turns a kube error into [`Error::Api`]. With `secret`, the apiserver's message is reduced to
/// the fields its causes name and scrubbed of known Secret values, because messages about an
/// invalid object can quote it (kustomize-controller leaked Secret data this way).
pub(crate) fn api_error(
    operation: &'static str,
    target: String,
    error: kube::Error,
    secret: Option<&redact::Redactor>,
) -> Error {
    match error {
        kube::Error::Api(status) => {
            let message = match secret {
                None => status.message.clone(),
                Some(redactor) => {
                    let fields: Vec<String> = status
                        .details
                        .iter()
                        .flat_map(|d| &d.causes)
                        .map(|c| format!("{} ({})", c.field, c.reason))
                        .collect();
                    let summary = if fields.is_empty() {
                        format!(
                            "{} (message withheld: it may quote Secret data)",
                            status.reason
                        )
                    } else {
                        format!("{}: {}", status.reason, fields.join(", "))
                    };
                    redactor.scrub(&summary)
                }
            };
            Error::Api {
                operation,
                target,
                code: Some(status.code),
                reason: status.reason.clone(),
                message,
            }
        }
        other => Error::Api {
            operation,
            target,
            code: None,
            reason: "Unreachable".into(),
            message: other.to_string(),
        },
    }
}

/// A cluster connection that could not be set up.
#[derive(Debug, thiserror::Error)]
// Each variant is described by its message, and its fields by the names the message uses.
#[allow(missing_docs)]
pub enum ConnectError {
    #[error("kubeconfig {}", path.display())]
    ReadKubeconfig {
        path: PathBuf,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error("kubeconfig {} context {}", path.as_ref().map_or("(default)".into(), |p| p.display().to_string()), context.as_deref().unwrap_or("(current)"))]
    Kubeconfig {
        path: Option<PathBuf>,
        context: Option<String>,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error("the default cluster (KUBECONFIG, ~/.kube/config, or the pod's service account)")]
    Default {
        #[source]
        source: kube::config::InferConfigError,
    },
    #[error("in-cluster configuration")]
    InCluster {
        #[source]
        source: kube::config::InClusterError,
    },
    #[error("the service's own cluster (in-cluster, or KUBECONFIG), where it reads its Secrets")]
    Home {
        #[source]
        source: kube::config::InferConfigError,
    },
    #[error("kubeconfig Secret {secret}: {problem}")]
    KubeconfigSecret { secret: String, problem: String },
    #[error("kubeconfig Secret {secret}")]
    ReadSecret {
        secret: String,
        #[source]
        source: Error,
    },
    #[error("cluster {server}: cannot build a client")]
    Client {
        server: String,
        #[source]
        source: kube::Error,
    },
}

/// Why an entry of one of the service's own Secrets cannot be read.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)]
pub enum SecretEntryError {
    #[error(transparent)]
    Home(ConnectError),
    #[error("Secret {secret}: {problem}")]
    Problem { secret: String, problem: String },
    #[error("Secret {secret}")]
    Read {
        secret: String,
        #[source]
        source: Error,
    },
}

/// What a kind resolves to.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The resource to call for the kind.
    pub resource: ApiResource,
    /// Whether objects of the kind live in a namespace.
    pub namespaced: bool,
}

type GroupVersionKinds = Arc<Vec<(ApiResource, ApiCapabilities)>>;

/// A client for one environment's cluster plus its cache of discovered kinds.
pub struct Connection {
    client: kube::Client,
    server: String,
    /// The `resourceVersion` of the kubeconfig Secret it was made from.
    secret_version: Option<String>,
    /// Shared with the fenced copies of this connection (see [`Connection::fenced`]).
    kinds: Arc<tokio::sync::RwLock<HashMap<String, GroupVersionKinds>>>,
}

/// Says whether this process may still write an environment's cluster; asked right before each
/// request that writes (see `crate::shard`).
pub trait WriteGuard: Send + Sync + 'static {
    /// `Err` with why, once writing is no longer allowed.
    fn may_write(&self) -> Result<(), String>;
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

/// Connections shared by every environment on the same cluster: one client (its connection pool
/// and TLS configuration) and one cache of discovered kinds per cluster, however many
/// environments deploy there. Clones share the connections.
#[derive(Clone, Default)]
pub struct Connections {
    open: Arc<tokio::sync::Mutex<HashMap<pipeline::Cluster, Arc<Connection>>>>,
    /// Where kubeconfig Secrets are read; without it a `kubeconfigSecret` cluster fails.
    home: Option<Arc<secret::Home>>,
}

impl std::fmt::Debug for Connections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connections").finish_non_exhaustive()
    }
}

impl Connections {
    /// Connections that read kubeconfig Secrets from `home`.
    pub fn with_home(home: Arc<secret::Home>) -> Self {
        Self {
            open: Arc::default(),
            home: Some(home),
        }
    }

    /// The connection to `cluster`, made on first use (see [`Connection::connect`]). A
    /// cluster given by a kubeconfig Secret reads the Secret on every call and connects again
    /// when it changed, so the next pass after a change uses the new kubeconfig.
    pub async fn get(&self, cluster: &pipeline::Cluster) -> Result<Arc<Connection>, ConnectError> {
        if let pipeline::Cluster::KubeconfigSecret { name, key, context } = cluster {
            return self
                .connect_with_secret(cluster, name, key, context.as_deref())
                .await;
        }
        let mut connections = self.open.lock().await;
        if let Some(connection) = connections.get(cluster) {
            return Ok(connection.clone());
        }
        let connection = Arc::new(Connection::connect(cluster).await?);
        connections.insert(cluster.clone(), connection.clone());
        Ok(connection)
    }

    /// Drops `connection` so that the next [`get`](Self::get) reads the configuration again
    /// (it may have been fixed or rotated); a newer connection made meanwhile stays.
    pub async fn forget(&self, cluster: &pipeline::Cluster, connection: &Arc<Connection>) {
        let mut connections = self.open.lock().await;
        if connections
            .get(cluster)
            .is_some_and(|c| Arc::ptr_eq(c, connection))
        {
            connections.remove(cluster);
        }
    }
}

impl Connections {
    /// Entry `key` of Secret `name` in the service's own namespace, read through the API now,
    /// with the Secret's `namespace/name` for messages.
    pub async fn secret_entry(
        &self,
        name: &str,
        key: &str,
    ) -> Result<(String, zeroize::Zeroizing<Vec<u8>>), SecretEntryError> {
        let home = self
            .home
            .as_ref()
            .ok_or_else(|| SecretEntryError::Problem {
                secret: name.to_owned(),
                problem: "this command reads no Secrets; only `stagehand serve` does".into(),
            })?;
        let (client, namespace) = home.get().await.map_err(SecretEntryError::Home)?;
        let secret = format!("{namespace}/{name}");
        let mut data = secret::read(client, namespace, name)
            .await
            .map_err(|source| SecretEntryError::Read {
                secret: secret.clone(),
                source,
            })?
            .ok_or_else(|| SecretEntryError::Problem {
                secret: secret.clone(),
                problem: "not found".into(),
            })?;
        let entry = data.entries.remove(key).ok_or_else(|| {
            let keys: Vec<&str> = data.entries.keys().map(String::as_str).collect();
            SecretEntryError::Problem {
                secret: secret.clone(),
                problem: format!("has no key {key:?} (its keys: {keys:?})"),
            }
        })?;
        Ok((secret, entry))
    }

    async fn connect_with_secret(
        &self,
        cluster: &pipeline::Cluster,
        name: &str,
        key: &str,
        context: Option<&str>,
    ) -> Result<Arc<Connection>, ConnectError> {
        let home = self
            .home
            .as_ref()
            .ok_or_else(|| ConnectError::KubeconfigSecret {
                secret: name.to_owned(),
                problem: "this command reads no Secrets; only `stagehand serve` does".into(),
            })?;
        let (client, namespace) = home.get().await?;
        let secret = format!("{namespace}/{name}");
        let data = secret::read(client, namespace, name)
            .await
            .map_err(|source| ConnectError::ReadSecret {
                secret: secret.clone(),
                source,
            })?
            .ok_or_else(|| ConnectError::KubeconfigSecret {
                secret: secret.clone(),
                problem: "not found".into(),
            })?;
        if let Some(open) = self.open.lock().await.get(cluster)
            && open.secret_version.as_deref() == Some(data.version.as_str())
        {
            return Ok(open.clone());
        }
        let problem = |problem: String| ConnectError::KubeconfigSecret {
            secret: secret.clone(),
            problem,
        };
        let bytes = data.entries.get(key).ok_or_else(|| {
            let keys: Vec<&str> = data.entries.keys().map(String::as_str).collect();
            problem(format!("has no key {key:?} (its keys: {keys:?})"))
        })?;
        let text = std::str::from_utf8(bytes)
            .map_err(|_| problem(format!("key {key:?}: not UTF-8 text")))?;
        let kubeconfig = Kubeconfig::from_yaml(text).map_err(|e| match e {
            // The parser's message may quote the text, tokens included.
            kube::config::KubeconfigError::Parse(_) => {
                problem(format!("key {key:?}: not kubeconfig YAML"))
            }
            other => problem(format!("key {key:?}: {other}")),
        })?;
        let options = KubeConfigOptions {
            context: context.map(str::to_owned),
            ..KubeConfigOptions::default()
        };
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &options)
            .await
            .map_err(|e| {
                problem(format!(
                    "key {key:?}, context {}: {}",
                    context.unwrap_or("(current)"),
                    crate::error_chain::ErrorChain(&e)
                ))
            })?;
        let (client, server) = client_of(config)?;
        let mut connection = Connection::with_server(client, server);
        connection.secret_version = Some(data.version);
        let connection = Arc::new(connection);
        tracing::info!(secret = %secret, key, server = %connection.server, "connecting with the kubeconfig Secret");
        self.open
            .lock()
            .await
            .insert(cluster.clone(), connection.clone());
        Ok(connection)
    }
}

/// How long a request may wait for a TCP connection; an unreachable cluster should fail a sync
/// quickly so that backoff, not a hung request, decides when to try again.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Requests in flight to one cluster at most, over all the environments that share its client.
/// Each request in flight holds an HTTP/1.1 connection of its own, which the pool keeps
/// afterwards: unbounded, 1,000 environments syncing at once opened thousands of TLS
/// connections and most of the server's memory went to their buffers. The apiserver serves a
/// few dozen requests at once no slower than thousands.
const MAX_REQUESTS_IN_FLIGHT: usize = 32;

/// A client for `config` (with the connect timeout and the cap on requests in flight), and
/// its server's URL.
fn client_of(mut config: kube::Config) -> Result<(kube::Client, String), ConnectError> {
    config.connect_timeout = Some(CONNECT_TIMEOUT);
    let server = config.cluster_url.to_string();
    let client = kube::client::ClientBuilder::try_from(config)
        .map_err(|source| ConnectError::Client {
            server: server.clone(),
            source,
        })?
        .with_layer(&tower::limit::ConcurrencyLimitLayer::new(
            MAX_REQUESTS_IN_FLIGHT,
        ))
        .build();
    Ok((client, server))
}

/// The service under a fenced client: checks, then sends through the real client.
#[derive(Clone)]
struct Fenced {
    client: kube::Client,
    guard: Arc<dyn WriteGuard>,
}

impl tower::Service<http::Request<kube::client::Body>> for Fenced {
    type Response = http::Response<kube::client::Body>;
    type Error = kube::Error;
    type Future = futures::future::BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<kube::client::Body>) -> Self::Future {
        let reads = matches!(*request.method(), http::Method::GET | http::Method::HEAD)
            || request
                .uri()
                .query()
                .is_some_and(|q| q.split('&').any(|p| p == "dryRun=All"));
        let client = self.client.clone();
        let guard = self.guard.clone();
        Box::pin(async move {
            // Checked when the request is about to go, not when it was queued.
            if !reads {
                guard
                    .may_write()
                    .map_err(|reason| kube::Error::Service(reason.into()))?;
            }
            client.send(request).await
        })
    }
}

impl Connection {
    /// Connects as `cluster` says. Only the configuration is read here; the first request
    /// finds out whether the apiserver answers.
    pub async fn connect(cluster: &pipeline::Cluster) -> Result<Self, ConnectError> {
        let config = match cluster {
            pipeline::Cluster::InCluster => {
                kube::Config::incluster().map_err(|source| ConnectError::InCluster { source })?
            }
            pipeline::Cluster::Kubeconfig { path, context } => {
                let kubeconfig =
                    Kubeconfig::read_from(path).map_err(|source| ConnectError::ReadKubeconfig {
                        path: path.clone(),
                        source,
                    })?;
                let options = KubeConfigOptions {
                    context: context.clone(),
                    ..KubeConfigOptions::default()
                };
                kube::Config::from_custom_kubeconfig(kubeconfig, &options)
                    .await
                    .map_err(|source| ConnectError::Kubeconfig {
                        path: Some(path.clone()),
                        context: context.clone(),
                        source,
                    })?
            }
            pipeline::Cluster::KubeconfigSecret { name, .. } => {
                return Err(ConnectError::KubeconfigSecret {
                    secret: name.clone(),
                    problem: "read through the service's connections (Connections::get)".into(),
                });
            }
            // What kubectl and client-go do: the default kubeconfig, else the pod's service
            // account, so that a pipeline without `cluster:` works in and out of a cluster.
            pipeline::Cluster::Default { context: None } => kube::Config::infer()
                .await
                .map_err(|source| ConnectError::Default { source })?,
            pipeline::Cluster::Default { context } => {
                let options = KubeConfigOptions {
                    context: context.clone(),
                    ..KubeConfigOptions::default()
                };
                kube::Config::from_kubeconfig(&options)
                    .await
                    .map_err(|source| ConnectError::Kubeconfig {
                        path: None,
                        context: context.clone(),
                        source,
                    })?
            }
        };
        let (client, server) = client_of(config)?;
        Ok(Self::with_server(client, server))
    }

    /// Wraps a client built elsewhere.
    pub fn from_client(client: kube::Client) -> Self {
        Self::with_server(client, String::from("(client)"))
    }

    fn with_server(client: kube::Client, server: String) -> Self {
        Self {
            client,
            server,
            secret_version: None,
            kinds: Arc::default(),
        }
    }

    /// This connection with every writing request (anything but GET, HEAD and dry runs) asked of
    /// `guard` right before it is sent, and refused without being sent once `guard` says no:
    /// whatever a pass writes (applies, prunes, the inventory, Events) goes through this one
    /// check. Shares the client and the cache of kinds.
    pub fn fenced(&self, guard: Arc<dyn WriteGuard>) -> Self {
        let service = Fenced {
            client: self.client.clone(),
            guard,
        };
        Self {
            client: kube::Client::new(service, self.client.default_namespace().to_owned()),
            server: self.server.clone(),
            secret_version: self.secret_version.clone(),
            kinds: self.kinds.clone(),
        }
    }

    /// The client, for calls this module does not wrap.
    pub fn client(&self) -> &kube::Client {
        &self.client
    }

    /// The apiserver URL, for messages.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// Resolves the kind of `object`, asking the apiserver again when the cached group-version
    /// does not know it (a CRD may have been established since).
    pub async fn resolve(&self, object: &ObjectRef) -> Result<Resolved, Error> {
        let api_version = object.api_version();
        if let Some(found) = self.cached(&api_version, &object.kind).await {
            return Ok(found);
        }
        let gv = kube::core::GroupVersion::gv(&object.group, &object.version);
        match kube::discovery::pinned_group(&self.client, &gv).await {
            Ok(group) => {
                let kinds = Arc::new(group.versioned_resources(&object.version));
                self.kinds.write().await.insert(api_version.clone(), kinds);
            }
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(e) => return Err(api_error("discover", api_version, e, None)),
        }
        self.cached(&api_version, &object.kind)
            .await
            .ok_or_else(|| Error::UnknownKind {
                object: object.to_string(),
                api_version,
                kind: object.kind.clone(),
            })
    }

    async fn cached(&self, api_version: &str, kind: &str) -> Option<Resolved> {
        let kinds = self.kinds.read().await;
        kinds.get(api_version)?.iter().find_map(|(ar, caps)| {
            (ar.kind == kind).then(|| Resolved {
                resource: ar.clone(),
                namespaced: caps.scope == Scope::Namespaced,
            })
        })
    }

    pub(crate) fn api(&self, resolved: &Resolved, namespace: Option<&str>) -> Api<DynamicObject> {
        match namespace {
            Some(ns) if resolved.namespaced => {
                Api::namespaced_with(self.client.clone(), ns, &resolved.resource)
            }
            _ => Api::all_with(self.client.clone(), &resolved.resource),
        }
    }
}
