//! The gRPC API. Handlers only translate between protobuf messages and domain types; what they
//! answer comes from the domain modules.

mod environments;
pub mod http;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::Server;

use crate::proto::environment_service_server::EnvironmentServiceServer;
use crate::service::Service;

pub use environments::EnvironmentApi;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("gRPC server failed")]
    Serve(#[source] tonic::transport::Error),
    #[error("HTTP server failed")]
    Http(#[source] std::io::Error),
    #[error("cannot build the reflection service")]
    Reflection(#[source] tonic_reflection::server::Error),
}

/// A bound listener, so that callers learn the real address (port 0 picks a free one) before
/// the server runs.
pub struct Listener {
    inner: TcpListener,
}

impl Listener {
    pub async fn bind(addr: SocketAddr) -> Result<Self, Error> {
        let inner = TcpListener::bind(addr)
            .await
            .map_err(|source| Error::Bind { addr, source })?;
        Ok(Self { inner })
    }

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
    service: Arc<Service>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), Error> {
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<EnvironmentServiceServer<EnvironmentApi>>()
        .await;

    let reflection_v1 = reflection().build_v1().map_err(Error::Reflection)?;
    // Many deployed clients (older grpcurl, grpcio) still only speak v1alpha reflection.
    let reflection_v1alpha = reflection().build_v1alpha().map_err(Error::Reflection)?;

    let addr = listener.local_addr();
    tracing::info!(%addr, pipeline = %service.pipeline().name, "serving gRPC");
    let draining = async {
        shutdown.await;
        tracing::info!("shutting down: reporting NOT_SERVING and draining calls");
        health
            .set_service_status("", tonic_health::ServingStatus::NotServing)
            .await;
        health
            .set_not_serving::<EnvironmentServiceServer<EnvironmentApi>>()
            .await;
    };
    Server::builder()
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(EnvironmentServiceServer::new(EnvironmentApi::new(service)))
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener.inner), draining)
        .await
        .map_err(Error::Serve)
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

const SERVED: [&str; 4] = [
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
    "stagehand.v1.EnvironmentService",
];
