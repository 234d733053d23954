//! The web view: server-rendered pages on the HTTP listener, under `/ui`. Like the CLI it is a
//! client of the API: every page and every button calls the gRPC handlers in-process as the
//! signed-in person, so the web answers and refuses exactly as the API does. Live updates are
//! server-sent events naming what changed; the page then fetches its own `main` again.

mod events;
mod layout;
mod pages;
mod session;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{FromRequest, FromRequestParts, RawForm, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::api::auth::{self, Authenticator, Identity, Permission};
use crate::api::watch::Watches;
use crate::api::{EnvironmentApi, PromotionApi};
use crate::service::reload::Supervisor;

use session::Viewer;
pub use session::{DEFAULT_TTL, Sessions};

/// How the web view is reached.
#[derive(Debug, Clone)]
pub struct Options {
    /// Browsers reach the listener over HTTPS (a proxy terminates TLS): cookies are `Secure`.
    pub secure_cookies: bool,
    /// How long a session lasts from sign-in.
    pub session_ttl: Duration,
    /// Why sign-in is refused on this listener (a token would cross the network in clear);
    /// `None` when it is allowed.
    pub sign_in_refused: Option<String>,
    /// Live-update streams one identity may have open at once (one per open page).
    pub streams_per_identity: usize,
}

/// What the pages are served from.
pub struct Web {
    supervisor: Arc<Supervisor>,
    authenticator: Authenticator,
    environments: EnvironmentApi,
    promotions: PromotionApi,
    sessions: Sessions,
    streams: Watches,
    options: Options,
}

impl Web {
    /// The web view of whatever pipeline `supervisor` runs, for the people `authenticator`
    /// knows.
    pub fn new(
        supervisor: Arc<Supervisor>,
        authenticator: Authenticator,
        options: Options,
    ) -> Self {
        // The pages open no gRPC watches of their own; live updates count per session instead.
        let watches = Watches::new(usize::MAX);
        Self {
            environments: EnvironmentApi::new(
                supervisor.clone(),
                authenticator.clone(),
                watches.clone(),
            ),
            promotions: PromotionApi::new(supervisor.clone(), authenticator.clone(), watches),
            sessions: Sessions::new(options.session_ttl),
            streams: Watches::new(options.streams_per_identity),
            supervisor,
            authenticator,
            options,
        }
    }

    fn may(&self, identity: &Identity, environment: &str, permission: Permission) -> bool {
        auth::authorize(
            self.supervisor.service().access(),
            identity,
            environment,
            permission,
        )
        .is_ok()
    }
}

/// The routes of the web view, to merge into the HTTP listener's router.
pub fn router(web: Arc<Web>) -> Router {
    Router::new()
        .route("/", get(|| async { Redirect::to("/ui/") }))
        .route("/ui", get(|| async { Redirect::to("/ui/") }))
        .route("/ui/", get(pages::pipeline::page))
        .route("/ui/sign-in", get(sign_in_page).post(sign_in))
        .route("/ui/sign-out", post(sign_out))
        .route("/ui/environments/{name}", get(pages::environment::page))
        .route(
            "/ui/environments/{name}/{action}",
            post(pages::environment::act),
        )
        .route("/ui/promotions/{id}", get(pages::promotion::page))
        .route("/ui/promotions/{id}/{action}", post(pages::promotion::act))
        .route("/ui/compare", get(pages::compare::page))
        .route("/ui/audit", get(pages::audit::page))
        .route("/ui/delivery", get(pages::delivery::page))
        .route("/ui/events", get(events::stream))
        .route("/ui/assets/app.css", get(stylesheet))
        .route("/ui/assets/app.js", get(script))
        .layer(axum::middleware::map_response(security_headers))
        .with_state(web)
}

/// The policy every response carries: nothing loads or runs but this server's own stylesheet
/// and script, and no other site may frame a page.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; \
     base-uri 'none'";

async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // Not `no-referrer`: under it browsers send `Origin: null` on the page's own form posts,
    // which the origin check must refuse. No referrer leaves the site either way.
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}

async fn stylesheet() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        include_str!("assets/app.css"),
    )
}

async fn script() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        include_str!("assets/app.js"),
    )
}

/// Why a page or an action was not served.
#[derive(Debug)]
pub enum Failure {
    /// No valid session: the browser goes to the sign-in page.
    SignIn {
        /// A live update's fetch, answered 401 instead of a redirect.
        partial: bool,
    },
    /// A state-changing request without the session's CSRF token, or from another site.
    Forged,
    /// What the API answered.
    Api(tonic::Status),
}

impl Failure {
    /// A POST to an action that `what` (`environments`, `promotions`) do not have.
    fn no_action(action: &str, what: &str) -> Self {
        Self::Api(tonic::Status::not_found(format!(
            "no action {action:?} on {what}"
        )))
    }
}

impl From<tonic::Status> for Failure {
    fn from(status: tonic::Status) -> Self {
        Self::Api(status)
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let (code, message) = match self {
            Self::SignIn { partial: true } => {
                return (StatusCode::UNAUTHORIZED, "sign in again\n").into_response();
            }
            Self::SignIn { partial: false } => {
                return Redirect::to("/ui/sign-in").into_response();
            }
            Self::Forged => (
                StatusCode::FORBIDDEN,
                "This request did not come from a page of this server (its CSRF token is \
                 missing or wrong, or it came from another site). Nothing was changed."
                    .to_owned(),
            ),
            Self::Api(status) => (http_code(status.code()), status.message().to_owned()),
        };
        let body = layout::bare(
            "Not done",
            maud::html! {
                p.error role="alert" { (message) }
                p { a href="/ui/" { "Back to the pipeline" } }
            },
        );
        (code, body).into_response()
    }
}

fn http_code(code: tonic::Code) -> StatusCode {
    use tonic::Code;
    match code {
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::FailedPrecondition | Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unavailable | Code::DeadlineExceeded => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// Whether a request is a live update's fetch of a page's `main` alone.
fn is_partial(headers: &HeaderMap) -> bool {
    headers.contains_key("x-stagehand-partial")
}

impl FromRequestParts<Arc<Web>> for Viewer {
    type Rejection = Failure;

    async fn from_request_parts(parts: &mut Parts, web: &Arc<Web>) -> Result<Self, Failure> {
        session::from_cookies(&parts.headers)
            .and_then(|id| web.sessions.viewer(&id, &web.authenticator))
            .ok_or(Failure::SignIn {
                partial: is_partial(&parts.headers),
            })
    }
}

/// A state-changing form that a page of this server sent, with its fields `T`, and who sent it.
/// Every POST of a signed-in page takes its form through this extractor, which refuses as
/// [`Failure::Forged`] a body that is not such a form or one that [`check_origin`] refuses.
struct Posted<T> {
    viewer: Viewer,
    form: T,
}

impl<T: DeserializeOwned> FromRequest<Arc<Web>> for Posted<T> {
    type Rejection = Failure;

    async fn from_request(request: Request, web: &Arc<Web>) -> Result<Self, Failure> {
        let (mut parts, body) = request.into_parts();
        let viewer = Viewer::from_request_parts(&mut parts, web).await?;
        let headers = parts.headers.clone();
        // Read as axum's `Form` reads a body, twice: the token every form carries, then `T`.
        let Ok(RawForm(bytes)) = RawForm::from_request(Request::from_parts(parts, body), web).await
        else {
            return Err(Failure::Forged);
        };
        let (Ok(CsrfForm { csrf }), Ok(form)) = (
            serde_urlencoded::from_bytes(&bytes),
            serde_urlencoded::from_bytes(&bytes),
        ) else {
            return Err(Failure::Forged);
        };
        check_origin(&viewer, &csrf, &headers)?;
        Ok(Self { viewer, form })
    }
}

/// Refuses a state-changing request that a page of this server did not send: its form must
/// carry the session's CSRF token, and a browser that says where it comes from must say it
/// comes from here (SameSite=Strict already keeps the cookie off other sites' requests).
fn check_origin(viewer: &Viewer, csrf: &str, headers: &HeaderMap) -> Result<(), Failure> {
    if !viewer.csrf_matches(csrf) || !same_origin(headers) {
        tracing::info!(identity = %viewer.identity.name, "refused a web form without this session's CSRF token or from another site");
        return Err(Failure::Forged);
    }
    Ok(())
}

fn same_origin(headers: &HeaderMap) -> bool {
    let text = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    if let Some(site) = text("sec-fetch-site")
        && !matches!(site, "same-origin" | "none")
    {
        return false;
    }
    match (text("origin"), text("host")) {
        (Some(origin), Some(host)) => {
            let origin = origin
                .strip_prefix("https://")
                .or_else(|| origin.strip_prefix("http://"));
            origin == Some(host)
        }
        // Browsers send Origin on every POST; a request without one is not a browser's
        // cross-site request, and its CSRF token was checked above.
        (None, _) => true,
        (Some(_), None) => false,
    }
}

#[derive(Deserialize)]
struct SignInForm {
    #[serde(default)]
    token: String,
}

async fn sign_in_page(State(web): State<Arc<Web>>) -> Response {
    sign_in_form(&web, StatusCode::OK, None)
}

fn sign_in_form(web: &Web, code: StatusCode, error: Option<&str>) -> Response {
    let body = layout::bare(
        "Sign in",
        maud::html! {
            h1 { "Sign in to Stagehand" }
            @if let Some(refused) = &web.options.sign_in_refused {
                p.error role="alert" { (refused) }
            } @else {
                @if let Some(error) = error { p.error role="alert" { (error) } }
                form #sign-in method="post" action="/ui/sign-in" {
                    @if web.authenticator.requires_tokens() {
                        label for="token" { "Bearer token (as for the API and the CLI)" }
                        input #token type="password" name="token" autocomplete="current-password" required autofocus;
                    } @else {
                        p { "This server has no tokens file: everyone is " b { "anonymous" } "." }
                    }
                    button type="submit" { "Sign in" }
                }
            }
        },
    );
    (code, body).into_response()
}

async fn sign_in(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    Form(form): Form<SignInForm>,
) -> Response {
    if web.options.sign_in_refused.is_some() {
        return sign_in_form(&web, StatusCode::FORBIDDEN, None);
    }
    if !same_origin(&headers) {
        return Failure::Forged.into_response();
    }
    let Some((identity, hash)) = web.authenticator.authenticate_token(form.token.trim()) else {
        tracing::info!("refused a web sign-in: unknown token");
        return sign_in_form(&web, StatusCode::UNAUTHORIZED, Some("Unknown token."));
    };
    tracing::info!(identity = %identity.name, "web sign-in");
    let id = web.sessions.open(hash);
    let cookie = session::cookie(Some(&id), web.sessions.ttl(), web.options.secure_cookies);
    (
        StatusCode::SEE_OTHER,
        [
            (header::SET_COOKIE, cookie),
            (header::LOCATION, "/ui/".to_owned()),
        ],
    )
        .into_response()
}

#[derive(Deserialize)]
struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

async fn sign_out(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    // The token alone: refuses a sign-out that another site asks for.
    _: Posted<CsrfForm>,
) -> Result<Response, Failure> {
    if let Some(id) = session::from_cookies(&headers) {
        web.sessions.close(&id);
    }
    let cookie = session::cookie(None, Duration::ZERO, web.options.secure_cookies);
    Ok((
        StatusCode::SEE_OTHER,
        [
            (header::SET_COOKIE, cookie),
            (header::LOCATION, "/ui/sign-in".to_owned()),
        ],
    )
        .into_response())
}
