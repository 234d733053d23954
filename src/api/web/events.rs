//! Live updates: server-sent events fed by the same change streams as `WatchEnvironments` and
//! `WatchPromotion`. An event names only what changed, and only what the viewer may see; the
//! page then fetches its own `main` again, so every view is drawn by one piece of code.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;

use super::session::{self, Viewer};
use super::{Failure, Web};
use crate::api::auth::Permission;
use crate::api::watch::WatchSlot;

/// How long a browser waits before it reconnects after the stream ended (a reload of the
/// pipeline file ends it, so that what follows is judged by the new rules).
const RETRY: Duration = Duration::from_secs(2);

pub async fn stream(
    State(web): State<Arc<Web>>,
    viewer: Viewer,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, Failure> {
    let session = session::from_cookies(&headers).unwrap_or_default();
    let slot = web.streams.open(&viewer.identity.name)?;
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(follow(web, session, slot, tx));
    Ok(Sse::new(ReceiverStream::new(rx))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

enum Change {
    Environment(String),
    Promotion(String),
    Missed,
}

async fn follow(
    web: Arc<Web>,
    session: String,
    _slot: WatchSlot,
    tx: mpsc::Sender<Result<Event, Infallible>>,
) {
    let service = web.supervisor.service();
    let mut environments = service.changes();
    let mut promotions = service.promotions().changes();
    if tx
        .send(Ok(Event::default().retry(RETRY).comment("live")))
        .await
        .is_err()
    {
        return;
    }
    loop {
        let change = tokio::select! {
            changed = environments.recv() => match changed {
                Some(name) => Change::Environment(name),
                // The service was replaced: the browser reconnects to the new one.
                None => break,
            },
            changed = promotions.recv() => match changed {
                Ok(id) => Change::Promotion(id),
                Err(RecvError::Lagged(_)) => Change::Missed,
                Err(RecvError::Closed) => break,
            },
            () = tx.closed() => return,
        };
        // Judged at every event: a token removed or a permission withdrawn ends what it sees.
        let Some(viewer) = web.sessions.viewer(&session, &web.authenticator) else {
            let _ = tx
                .send(Ok(Event::default().event("signed-out").data("-")))
                .await;
            return;
        };
        let data = match change {
            Change::Environment(name) => {
                if !web.may(&viewer.identity, &name, Permission::View) {
                    continue;
                }
                format!("environment {name}")
            }
            Change::Promotion(id) => {
                let Ok(view) = service.promotions().get(&id).await else {
                    continue;
                };
                if !web.may(
                    &viewer.identity,
                    &view.promotion.target_environment,
                    Permission::View,
                ) {
                    continue;
                }
                format!("promotion {id}")
            }
            Change::Missed => "some".to_owned(),
        };
        if tx
            .send(Ok(Event::default().event("change").data(data)))
            .await
            .is_err()
        {
            return;
        }
    }
    let _ = tx
        .send(Ok(Event::default().event("change").data("reload")))
        .await;
}
