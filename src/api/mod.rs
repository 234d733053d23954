//! The gRPC API. Handlers only translate between protobuf messages and domain types; what they
//! answer comes from the domain modules.

pub mod auth;
mod environments;
pub mod http;
mod promotions;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
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
}

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
/// reports NOT_SERVING and drains in-flight calls.
pub async fn serve(
    listener: Listener,
    service: Arc<Supervisor>,
    authenticator: auth::Authenticator,
    tls: Option<Tls>,
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
    let mut builder = Server::builder();
    if let Some(Tls(config)) = tls {
        builder = builder.tls_config(config).map_err(Error::Tls)?;
    }
    builder
        .layer(RpcMetricsLayer(service.service().metrics().clone()))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(EnvironmentServiceServer::with_interceptor(
            EnvironmentApi::new(service.clone()),
            authenticator.clone(),
        ))
        .add_service(PromotionServiceServer::with_interceptor(
            PromotionApi::new(service),
            authenticator,
        ))
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener.inner), draining)
        .await
        .map_err(Error::Serve)
}

/// Times every RPC until its response headers and counts it by method and status code (from
/// the headers: tonic answers a handler's error there, as a trailers-only response).
#[derive(Clone)]
struct RpcMetricsLayer(Arc<Metrics>);

impl<S> tower::Layer<S> for RpcMetricsLayer {
    type Service = RpcMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcMetrics {
            inner,
            metrics: self.0.clone(),
        }
    }
}

#[derive(Clone)]
struct RpcMetrics<S> {
    inner: S,
    metrics: Arc<Metrics>,
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
        let method = request.uri().path().to_owned();
        let started = std::time::Instant::now();
        let metrics = self.metrics.clone();
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await;
            if let Ok(response) = &response {
                let code = response
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<i32>().ok())
                    .map_or(tonic::Code::Ok, tonic::Code::from);
                metrics.rpc(&method, &format!("{code:?}"), started.elapsed());
            }
            response
        })
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
