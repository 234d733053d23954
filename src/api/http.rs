//! The HTTP listener beside gRPC: Git hosts' push webhooks, registries' push notifications,
//! `/metrics`, a liveness probe and the web view (`/ui`, see [`super::web`]). It only
//! translates: a verified webhook becomes [`Service::fetch_now`], a verified registry
//! notification [`Service::check_images`].

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Extension, Router};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio_stream::StreamExt as _;
use tower::Service as _;

use super::limits::{self, Peer, RefusalLog};
use super::{Error, Listener};
use crate::service::registry_webhook::{self, RegistryToken};
use crate::service::reload::Supervisor;
use crate::service::webhook::WebhookSecret;

/// Webhook bodies above this are refused (413) before they are read whole. GitHub caps its
/// payloads at 25 MiB; push events of real repositories are far smaller, and the body only
/// matters for the signature.
pub const WEBHOOK_BODY_LIMIT: usize = 1024 * 1024;

struct Hooks {
    service: Arc<Supervisor>,
    secret: Option<WebhookSecret>,
    registry_token: Option<RegistryToken>,
    refusals: Arc<RefusalLog>,
}

/// Serves `/api/webhook`, `/api/registry-webhook`, `/metrics`, `/healthz` and, with `web`, the
/// web view over HTTP/1.1 until `shutdown` completes. Without a secret (a token) every webhook
/// (registry notification) is refused: an unauthenticated trigger would let anyone make the
/// service fetch (ask registries) in a loop. A peer may have `connections_per_peer` connections open,
/// and each request's headers must arrive within [`limits::HEADER_TIMEOUT`].
pub async fn serve(
    listener: Listener,
    service: Arc<Supervisor>,
    secret: Option<WebhookSecret>,
    registry_token: Option<RegistryToken>,
    web: Option<Arc<super::web::Web>>,
    connections_per_peer: usize,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let refusals = Arc::new(RefusalLog::default());
    let mut app = Router::new()
        .route("/api/webhook", post(webhook))
        .route("/api/registry-webhook", post(registry_webhook))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .with_state(Arc::new(Hooks {
            service,
            secret,
            registry_token,
            refusals: refusals.clone(),
        }));
    if let Some(web) = web {
        app = app.merge(super::web::router(web));
    }
    let app = app.layer(DefaultBodyLimit::max(WEBHOOK_BODY_LIMIT));
    let addr = listener.local_addr();
    tracing::info!(%addr, "serving HTTP (webhooks)");
    let incoming = limits::incoming(
        listener.inner,
        limits::ConnectionLimits {
            per_peer: connections_per_peer,
            // hyper's header read timeout bounds every request's headers, not only the first.
            first_request: None,
        },
        refusals,
    );
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits::HEADER_TIMEOUT);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut incoming = pin!(incoming);
    let mut shutdown = pin!(shutdown);
    loop {
        let connection = tokio::select! {
            next = incoming.next() => match next {
                Some(Ok(connection)) => connection,
                Some(Err(error)) => {
                    // Such as too many open files: wait for some to close rather than spin.
                    tracing::warn!(error = %error, "cannot accept an HTTP connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
                None => break,
            },
            () = &mut shutdown => break,
        };
        let peer = connection.peer().clone();
        let app = app.clone();
        let service = hyper::service::service_fn(move |mut request| {
            request.extensions_mut().insert(peer.clone());
            app.clone().call(request)
        });
        let served = graceful.watch(http.serve_connection(TokioIo::new(connection), service));
        tokio::spawn(async move {
            if let Err(error) = served.await {
                tracing::debug!(error = %error, "HTTP connection ended with an error");
            }
        });
    }
    graceful.shutdown().await;
    Ok(())
}

/// Logs a refused webhook at most once per peer and [`limits::REFUSAL_LOG_INTERVAL`].
fn refused(hooks: &Hooks, peer: &Peer, reason: &str) {
    let ip = peer.addr().ip();
    if let Some(suppressed) = hooks.refusals.admit(Some(ip), Instant::now()) {
        tracing::warn!(peer = %ip, reason, suppressed, "webhook refused");
    }
}

async fn webhook(
    State(hooks): State<Arc<Hooks>>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, &'static str) {
    let Some(secret) = &hooks.secret else {
        refused(&hooks, &peer, "the service has no webhook secret file");
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
            refused(&hooks, &peer, &rejection.to_string());
            hooks.service.service().metrics().webhook(None, false);
            (StatusCode::UNAUTHORIZED, "signature missing or invalid\n")
        }
    }
}

async fn registry_webhook(
    State(hooks): State<Arc<Hooks>>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, String) {
    let service = hooks.service.service();
    let Some(token) = &hooks.registry_token else {
        refused(
            &hooks,
            &peer,
            "the service has no registry webhook token file",
        );
        service.metrics().webhook(None, false);
        return (
            StatusCode::UNAUTHORIZED,
            "registry webhooks are not enabled\n".to_owned(),
        );
    };
    let authorization = headers
        .get(axum::http::header::AUTHORIZATION)
        .map(|v| v.as_bytes());
    if let Err(rejection) = token.verify(authorization) {
        refused(&hooks, &peer, &rejection.to_string());
        service.metrics().webhook(None, false);
        return (
            StatusCode::UNAUTHORIZED,
            "bearer token missing or invalid\n".to_owned(),
        );
    }
    let pushes = match registry_webhook::pushes(&body) {
        Ok(pushes) => pushes,
        Err(error) => return (StatusCode::BAD_REQUEST, format!("{error}\n")),
    };
    service.metrics().webhook(Some("registry"), true);
    let mut woken = Vec::new();
    for pushed in &pushes {
        match service.check_images(pushed) {
            Ok(names) => woken.extend(names),
            // Several replicas: the registry retries, and may reach the leader then.
            Err(error) => return (StatusCode::SERVICE_UNAVAILABLE, format!("{error}\n")),
        }
    }
    let repositories: Vec<&str> = pushes.iter().map(|p| p.repository.as_str()).collect();
    tracing::info!(?repositories, sources = ?woken, "registry webhook: looking now");
    // Every push is answered 2xx, followed or not: the registry would resend it otherwise.
    let text = if woken.is_empty() {
        "no image source follows these repositories\n".to_owned()
    } else {
        format!("looking now: {}\n", woken.join(", "))
    };
    (StatusCode::ACCEPTED, text)
}

async fn metrics(State(hooks): State<Arc<Hooks>>) -> impl axum::response::IntoResponse {
    let service = hooks.service.service();
    service
        .metrics()
        .refresh_delivery(|| async {
            let environments = service
                .pipeline()
                .environments
                .iter()
                .map(|env| env.name.clone())
                .collect();
            let until = std::time::SystemTime::now();
            let since = until - crate::store::DEFAULT_DELIVERY_WINDOW;
            match service
                .promotions()
                .delivery_metrics(environments, since, until)
                .await
            {
                Ok(figures) => Some(figures),
                Err(error) => {
                    tracing::warn!(error = %crate::service::describe(&error), "cannot compute delivery metrics for /metrics");
                    None
                }
            }
        })
        .await;
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        service.metrics().encode(),
    )
}
