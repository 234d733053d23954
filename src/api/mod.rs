//! The gRPC API. Handlers only translate between protobuf messages and domain types; what they
//! answer comes from the domain modules.

pub mod auth;
mod environments;
pub mod http;
pub mod limits;
mod promotions;
pub mod watch;
pub mod web;

use std::collections::HashSet;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use prost::Message as _;
use tokio::net::TcpListener;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

use crate::metrics::Metrics;
use crate::proto::environment_service_server::EnvironmentServiceServer;
use crate::proto::promotion_service_server::PromotionServiceServer;
use crate::service::reload::Supervisor;

pub use environments::EnvironmentApi;
pub use promotions::PromotionApi;

/// Why the API server could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The address is taken or not ours.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The gRPC server ended with an error.
    #[error("gRPC server failed")]
    Serve(#[source] tonic::transport::Error),
    /// The webhook and metrics server ended with an error.
    #[error("HTTP server failed")]
    Http(#[source] std::io::Error),
    /// The embedded descriptors could not be served.
    #[error("cannot build the reflection service")]
    Reflection(#[source] tonic_reflection::server::Error),
    /// `--tls-cert`, `--tls-key` or `--tls-client-ca` cannot be used.
    #[error("cannot use the TLS certificate, key or client CA")]
    Tls(#[source] tonic::transport::Error),
    /// The embedded descriptors do not decode (a build problem).
    #[error("cannot read the embedded service descriptors")]
    Descriptors(#[source] prost::DecodeError),
}

impl From<crate::remark::Invalid> for tonic::Status {
    fn from(invalid: crate::remark::Invalid) -> Self {
        tonic::Status::invalid_argument(invalid.to_string())
    }
}

/// What one client may hold of the server.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections open at once from one IP address.
    pub connections_per_peer: usize,
    /// Watch streams open at once per identity.
    pub watches_per_identity: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            connections_per_peer: limits::CONNECTIONS_PER_PEER,
            watches_per_identity: watch::WATCHES_PER_IDENTITY,
        }
    }
}

/// How often the server pings an idle connection, and how long it waits for the answer before
/// closing it: a peer that vanished must not keep its connection slot.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(60);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// The server's TLS settings: its certificate and key, and optionally the CA whose client
/// certificates it requires (mTLS). Checked when built, so `serve` refuses bad files before it
/// listens.
#[derive(Clone)]
pub struct Tls(ServerTlsConfig);

impl Tls {
    /// PEM contents: the certificate chain, its private key, the client CA's certificate.
    pub fn new(cert: Vec<u8>, key: Vec<u8>, client_ca: Option<Vec<u8>>) -> Result<Self, Error> {
        let mut config = ServerTlsConfig::new().identity(Identity::from_pem(cert, key));
        if let Some(ca) = client_ca {
            // Client certificates are then required, not optional (tonic's default).
            config = config.client_ca_root(Certificate::from_pem(ca));
        }
        // tonic parses the files only when a server takes the config.
        Server::builder()
            .tls_config(config.clone())
            .map_err(Error::Tls)?;
        Ok(Self(config))
    }
}

/// A bound listener, so that callers learn the real address (port 0 picks a free one) before
/// the server runs.
pub struct Listener {
    inner: TcpListener,
}

impl Listener {
    /// Binds `addr`; port 0 picks a free port.
    pub async fn bind(addr: SocketAddr) -> Result<Self, Error> {
        let inner = TcpListener::bind(addr)
            .await
            .map_err(|source| Error::Bind { addr, source })?;
        Ok(Self { inner })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner
            .local_addr()
            .expect("a bound TCP listener has a local address")
    }
}

/// Serves the Stagehand API, gRPC health and server reflection until `shutdown` completes, then
/// reports NOT_SERVING and drains in-flight calls. With `health_listener`, gRPC health alone
/// is also served there in plain HTTP/2 without tokens, for probes that can use neither TLS
/// nor tokens (the kubelet's); it reports the same status and stops with the API.
pub async fn serve(
    listener: Listener,
    health_listener: Option<Listener>,
    service: Arc<Supervisor>,
    authenticator: auth::Authenticator,
    tls: Option<Tls>,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), Error> {
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<EnvironmentServiceServer<EnvironmentApi>>()
        .await;
    health
        .set_serving::<PromotionServiceServer<PromotionApi>>()
        .await;

    let reflection_v1 = reflection().build_v1().map_err(Error::Reflection)?;
    // Many deployed clients (older grpcurl, grpcio) still only speak v1alpha reflection.
    let reflection_v1alpha = reflection().build_v1alpha().map_err(Error::Reflection)?;

    let addr = listener.local_addr();
    tracing::info!(%addr, pipeline = %service.service().pipeline().name, tls = tls.is_some(), "serving gRPC");
    let draining = async {
        shutdown.await;
        tracing::info!("shutting down: reporting NOT_SERVING and draining calls");
        health
            .set_service_status("", tonic_health::ServingStatus::NotServing)
            .await;
        health
            .set_not_serving::<EnvironmentServiceServer<EnvironmentApi>>()
            .await;
        health
            .set_not_serving::<PromotionServiceServer<PromotionApi>>()
            .await;
    };
    let mut builder = Server::builder()
        .max_concurrent_streams(limits::MAX_CONCURRENT_STREAMS)
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT));
    if let Some(Tls(config)) = tls {
        builder = builder.tls_config(config).map_err(Error::Tls)?;
    }
    let refusals = Arc::new(limits::RefusalLog::default());
    let connection_limits = limits::ConnectionLimits {
        per_peer: limits.connections_per_peer,
        first_request: Some(limits::HEADER_TIMEOUT),
    };
    let incoming = limits::incoming(listener.inner, connection_limits, refusals.clone());
    let metrics_layer = RpcMetricsLayer {
        metrics: service.service().metrics().clone(),
        methods: Arc::new(served_methods()?),
        refusals: refusals.clone(),
    };
    let health_only = health_listener.map(|listener| {
        tracing::info!(addr = %listener.local_addr(), "serving gRPC health checking alone, without TLS or tokens");
        let incoming = limits::incoming(listener.inner, connection_limits, refusals);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = Server::builder()
            .layer(metrics_layer.clone())
            .add_service(health_service.clone())
            .serve_with_incoming_shutdown(incoming, async {
                let _ = stopped.await;
            });
        (stop, tokio::spawn(server))
    });
    let watches = watch::Watches::new(limits.watches_per_identity);
    let served = builder
        .layer(metrics_layer)
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(EnvironmentServiceServer::with_interceptor(
            EnvironmentApi::new(service.clone(), authenticator.clone(), watches.clone()),
            authenticator.clone(),
        ))
        .add_service(PromotionServiceServer::with_interceptor(
            PromotionApi::new(service, authenticator.clone(), watches),
            authenticator,
        ))
        .serve_with_incoming_shutdown(incoming, draining)
        .await
        .map_err(Error::Serve);
    if let Some((stop, server)) = health_only {
        let _ = stop.send(());
        server
            .await
            .expect("the health server does not panic")
            .map_err(Error::Serve)?;
    }
    served
}

/// The method label of calls to anything [`served_methods`] does not list: the label's values
/// never come from the request, so random paths cannot grow `/metrics`.
const UNKNOWN_METHOD: &str = "unknown";

/// Every method this server answers, as `/package.Service/Method`, from the embedded
/// descriptors of the services in [`SERVED`].
fn served_methods() -> Result<HashSet<String>, Error> {
    let sets = [
        crate::proto::FILE_DESCRIPTOR_SET,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
    ];
    let mut methods = HashSet::new();
    for set in sets {
        let set = prost_types::FileDescriptorSet::decode(set).map_err(Error::Descriptors)?;
        for file in set.file {
            for service in &file.service {
                let name = format!("{}.{}", file.package(), service.name());
                if !SERVED.contains(&name.as_str()) {
                    continue;
                }
                methods.extend(
                    service
                        .method
                        .iter()
                        .map(|method| format!("/{name}/{}", method.name())),
                );
            }
        }
    }
    Ok(methods)
}

/// The edge every call passes: times it until its response headers and counts it by method
/// and status code (from the headers: tonic answers a handler's error there, as a
/// trailers-only response), logs refused calls at most once per peer and
/// [`limits::REFUSAL_LOG_INTERVAL`], and tells the connection a complete request arrived.
#[derive(Clone)]
struct RpcMetricsLayer {
    metrics: Arc<Metrics>,
    methods: Arc<HashSet<String>>,
    refusals: Arc<limits::RefusalLog>,
}

impl<S> tower::Layer<S> for RpcMetricsLayer {
    type Service = RpcMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcMetrics {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
struct RpcMetrics<S> {
    inner: S,
    layer: RpcMetricsLayer,
}

impl<S, B, R> tower::Service<axum::http::Request<B>> for RpcMetrics<S>
where
    S: tower::Service<axum::http::Request<B>, Response = axum::http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = std::pin::Pin<
        Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send + 'static>,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: axum::http::Request<B>) -> Self::Future {
        let path = request.uri().path();
        let method = if self.layer.methods.contains(path) {
            path.to_owned()
        } else {
            UNKNOWN_METHOD.to_owned()
        };
        let peer = request.extensions().get::<limits::Peer>().cloned();
        if let Some(peer) = &peer {
            peer.requested();
        }
        let started = Instant::now();
        let layer = self.layer.clone();
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await;
            if let Ok(response) = &response {
                let status = tonic::Status::from_header_map(response.headers());
                let code = status.as_ref().map_or(tonic::Code::Ok, |s| s.code());
                layer
                    .metrics
                    .rpc(&method, &format!("{code:?}"), started.elapsed());
                if let Some(status) = status {
                    refused(&layer.refusals, peer.as_ref(), &method, &status);
                }
            }
            response
        })
    }
}

/// Logs a call refused for want of a token or a permission, at most once per peer and
/// [`limits::REFUSAL_LOG_INTERVAL`].
fn refused(
    refusals: &limits::RefusalLog,
    peer: Option<&limits::Peer>,
    method: &str,
    status: &tonic::Status,
) {
    let what = match status.code() {
        tonic::Code::Unauthenticated => "refused an unauthenticated call",
        tonic::Code::PermissionDenied => "refused a call without the permission",
        _ => return,
    };
    let ip = peer.map(|p| p.addr().ip());
    if let Some(suppressed) = refusals.admit(ip, Instant::now()) {
        tracing::info!(
            peer = ?ip,
            method,
            reason = status.message(),
            suppressed,
            "{what}"
        );
    }
}

/// Reflection lists only the services this server answers, although the descriptor set also
/// describes services of later versions.
fn reflection() -> tonic_reflection::server::Builder<'static> {
    let mut builder = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET);
    for service in SERVED {
        builder = builder.with_service_name(service);
    }
    builder
}

const SERVED: [&str; 5] = [
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
    "stagehand.v1.EnvironmentService",
    "stagehand.v1.PromotionService",
];
