//! The HTTP listener beside gRPC: Git hosts' push webhooks, `/metrics` and a liveness probe. It
//! only translates: a verified webhook becomes [`Service::fetch_now`].

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};

use super::{Error, Listener};
use crate::service::reload::Supervisor;
use crate::service::webhook::WebhookSecret;

/// Webhook bodies above this are refused (413) before they are read whole. GitHub caps its
/// payloads at 25 MiB; push events of real repositories are far smaller, and the body only
/// matters for the signature.
pub const WEBHOOK_BODY_LIMIT: usize = 1024 * 1024;

struct Hooks {
    service: Arc<Supervisor>,
    secret: Option<WebhookSecret>,
}

/// Serves `/api/webhook`, `/metrics` and `/healthz` until `shutdown` completes. Without a secret every
/// webhook is refused: an unauthenticated fetch trigger would let anyone make the service
/// fetch in a loop.
pub async fn serve(
    listener: Listener,
    service: Arc<Supervisor>,
    secret: Option<WebhookSecret>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let app = Router::new()
        .route("/api/webhook", post(webhook))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .layer(DefaultBodyLimit::max(WEBHOOK_BODY_LIMIT))
        .with_state(Arc::new(Hooks { service, secret }));
    let addr = listener.local_addr();
    tracing::info!(%addr, "serving HTTP (webhooks)");
    axum::serve(listener.inner, app)
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(Error::Http)
}

async fn webhook(
    State(hooks): State<Arc<Hooks>>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, &'static str) {
    let Some(secret) = &hooks.secret else {
        tracing::warn!("webhook refused: the service has no webhook secret file");
        hooks.service.service().metrics().webhook(None, false);
        return (StatusCode::UNAUTHORIZED, "webhooks are not enabled\n");
    };
    let header = |name: &str| headers.get(name).map(|v| v.as_bytes());
    match secret.verify(header, &body) {
        Ok(provider) => {
            tracing::info!(provider = provider.as_str(), "webhook: fetching now");
            hooks
                .service
                .service()
                .metrics()
                .webhook(Some(provider.as_str()), true);
            let service = hooks.service.service();
            // The sender is answered at once; the fetch coalesces with any already queued.
            tokio::spawn(async move {
                if let Err(error) = service.fetch_now().await {
                    tracing::warn!(error = %error, "fetch after a webhook failed");
                }
            });
            (StatusCode::ACCEPTED, "fetch queued\n")
        }
        Err(rejection) => {
            tracing::warn!(reason = %rejection, "webhook refused");
            hooks.service.service().metrics().webhook(None, false);
            (StatusCode::UNAUTHORIZED, "signature missing or invalid\n")
        }
    }
}

async fn metrics(State(hooks): State<Arc<Hooks>>) -> impl axum::response::IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        hooks.service.service().metrics().encode(),
    )
}
