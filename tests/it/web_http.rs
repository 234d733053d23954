//! The web view at the HTTP level, as a hostile client would try it: `stagehand serve` on the
//! real apiserver and a real Git remote, requests sent by hand with reqwest (the browser tests
//! are in web.rs). Sessions, CSRF, headers, escaping, permissions, live events, and that the
//! Secret's value is on no page.

use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{HeaderMap, LOCATION, SET_COOKIE};
use stagehand::proto;
use stagehand::proto::environment_service_client::EnvironmentServiceClient;
use stagehand::proto::promotion_service_client::PromotionServiceClient;

use crate::promotions::{ALICE, BOB, DAVE, Fixture, VERA, until_healthy};
use crate::service::{app, eventually, with_token};
use crate::support::cluster::cluster;

/// The plaintext of the fixture's SOPS-encrypted Secret (promotions.rs).
const SECRET_VALUE: &str = "secure-pw";

struct Browser {
    http: reqwest::Client,
    base: String,
    cookie: Option<String>,
    /// Every body received, to search for the Secret's value at the end.
    seen: Vec<String>,
}

impl Browser {
    fn new(base: &str) -> Self {
        Self {
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("a client"),
            base: base.to_owned(),
            cookie: None,
            seen: Vec::new(),
        }
    }

    async fn sign_in(&mut self, token: &str) -> (StatusCode, HeaderMap) {
        let response = self
            .http
            .post(format!("{}/ui/sign-in", self.base))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form_body(&[("token", token)]))
            .send()
            .await
            .expect("the server answers");
        let (status, headers) = (response.status(), response.headers().clone());
        if let Some(cookie) = headers.get(SET_COOKIE) {
            let pair = cookie
                .to_str()
                .expect("ASCII")
                .split(';')
                .next()
                .expect("a pair");
            self.cookie = Some(pair.to_owned());
        }
        (status, headers)
    }

    async fn get(&mut self, path: &str) -> (StatusCode, HeaderMap, String) {
        let mut request = self.http.get(format!("{}{path}", self.base));
        if let Some(cookie) = &self.cookie {
            request = request.header("cookie", cookie);
        }
        let response = request.send().await.expect("the server answers");
        let (status, headers) = (response.status(), response.headers().clone());
        let body = response.text().await.expect("a body");
        self.seen.push(body.clone());
        (status, headers, body)
    }

    async fn post(
        &mut self,
        path: &str,
        form: &[(&str, &str)],
        origin: Option<&str>,
    ) -> StatusCode {
        let mut request = self
            .http
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form_body(form));
        if let Some(cookie) = &self.cookie {
            request = request.header("cookie", cookie);
        }
        if let Some(origin) = origin {
            request = request.header("origin", origin);
        }
        let response = request.send().await.expect("the server answers");
        let status = response.status();
        self.seen.push(response.text().await.expect("a body"));
        status
    }

    /// The CSRF token the signed-in page carries in its forms.
    async fn csrf(&mut self) -> String {
        let (_, _, body) = self.get("/ui/").await;
        let start = body
            .find(r#"name="csrf" value=""#)
            .expect("a form with a CSRF token")
            + r#"name="csrf" value=""#.len();
        body[start..start + 64].to_owned()
    }
}

/// `application/x-www-form-urlencoded`, as a browser sends a form.
fn form_body(fields: &[(&str, &str)]) -> String {
    let encode = |text: &str| -> String {
        text.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    (b as char).to_string()
                }
                b' ' => "+".to_owned(),
                _ => format!("%{b:02X}"),
            })
            .collect()
    };
    fields
        .iter()
        .map(|(name, value)| format!("{}={}", encode(name), encode(value)))
        .collect::<Vec<_>>()
        .join("&")
}

async fn promotion(grpc: &str, id: &str) -> proto::Promotion {
    PromotionServiceClient::connect(grpc.to_owned())
        .await
        .expect("connects")
        .get_promotion(with_token(
            ALICE,
            proto::GetPromotionRequest { id: id.into() },
        ))
        .await
        .expect("GetPromotion answers")
        .into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_web_view_serves_signed_in_people_what_the_api_allows_them_and_refuses_forgeries() {
    let kube = cluster().client().await;
    let fx = Fixture::new(&kube).await;
    let server = fx.start();
    let base = format!("http://{}", server.http);
    for env in ["dev", "staging", "prod", "secure"] {
        until_healthy(&server.grpc, ALICE, env).await;
    }

    // Without a session: to the sign-in page; a live update's fetch is told 401.
    let mut anonymous = Browser::new(&base);
    let (status, headers, _) = anonymous.get("/ui/").await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(headers[LOCATION], "/ui/sign-in");
    let partial = anonymous
        .http
        .get(format!("{base}/ui/"))
        .header("x-stagehand-partial", "1")
        .send()
        .await
        .expect("answers");
    assert_eq!(partial.status(), StatusCode::UNAUTHORIZED);
    let (status, _) = anonymous.sign_in("not-a-token").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(
        anonymous.cookie.is_none(),
        "no session for an unknown token"
    );

    // Signed in: an HttpOnly, SameSite=Strict cookie (not Secure over plain HTTP on loopback).
    let mut alice = Browser::new(&base);
    let (status, headers) = alice.sign_in(ALICE).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let cookie = headers[SET_COOKIE].to_str().expect("ASCII");
    for part in ["HttpOnly", "SameSite=Strict", "Path=/ui", "Max-Age=43200"] {
        assert!(cookie.contains(part), "{part} missing from {cookie}");
    }
    assert!(!cookie.contains("Secure"), "{cookie}");
    assert!(
        !cookie.contains(ALICE),
        "the cookie does not carry the token"
    );

    // The pipeline page: every environment, each with the revision the API reports, and the
    // security headers.
    let mut environments = EnvironmentServiceClient::connect(server.grpc.clone())
        .await
        .expect("connects");
    let listed = environments
        .list_environments(with_token(ALICE, proto::ListEnvironmentsRequest {}))
        .await
        .expect("answers")
        .into_inner()
        .environments;
    let (status, headers, page) = alice.get("/ui/").await;
    assert_eq!(status, StatusCode::OK);
    let csp = headers["content-security-policy"].to_str().expect("ASCII");
    assert!(
        csp.contains("default-src 'none'") && csp.contains("script-src 'self'"),
        "{csp}"
    );
    assert_eq!(headers["x-frame-options"], "DENY");
    // Stricter, no-referrer, would make browsers send `Origin: null` on the page's own posts.
    assert_eq!(headers["referrer-policy"], "same-origin");
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert_eq!(headers["cache-control"], "no-store");
    assert!(page.contains(r#"<b id="identity">alice</b>"#), "{page}");
    for environment in &listed {
        let applied = &environment
            .status
            .as_ref()
            .expect("a status")
            .applied_revision;
        assert!(
            page.contains(&format!(r#"data-environment="{}""#, environment.name)),
            "{} missing",
            environment.name
        );
        assert!(
            page.contains(&format!(r#"data-revision="{applied}""#)),
            "{}'s revision {applied} missing",
            environment.name
        );
    }
    assert!(!page.contains("<script>alert"));

    // A commit subject that is markup shows as text, live events announce it first.
    let mut events = alice
        .http
        .get(format!("{base}/ui/events"))
        .header("cookie", alice.cookie.clone().expect("signed in"))
        .send()
        .await
        .expect("the event stream opens");
    assert_eq!(events.status(), StatusCode::OK);
    assert_eq!(events.headers()["content-type"], "text/event-stream");
    fx.work
        .write(&[("environments/dev/app.yaml", &app("dev-2"))]);
    fx.work.commit("<script>alert(1)</script> & <b>bold</b>");
    fx.work.git(&["push", "-q", "origin", "main"]);
    let mut sync = EnvironmentServiceClient::connect(server.grpc.clone())
        .await
        .expect("connects");
    sync.sync_environment(with_token(
        ALICE,
        proto::SyncEnvironmentRequest {
            name: "dev".into(),
            fetch: true,
            wait: true,
        },
    ))
    .await
    .expect("dev syncs");
    let mut stream = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !stream.contains("data: environment dev") {
        let chunk = tokio::time::timeout_at(deadline, events.chunk())
            .await
            .expect("an event about dev arrives")
            .expect("the stream reads")
            .expect("the stream stays open");
        stream.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(stream.contains("event: change"), "{stream}");
    alice.seen.push(stream);
    let (_, _, page) = alice.get("/ui/").await;
    assert!(
        page.contains("&lt;script&gt;alert(1)&lt;/script&gt; &amp; &lt;b&gt;bold&lt;/b&gt;"),
        "the subject is escaped: {page}"
    );
    assert!(!page.contains("<script>alert(1)"));

    // A promotion into prod needs two approvers. Requested through the page by alice.
    let mut promotions = PromotionServiceClient::connect(server.grpc.clone())
        .await
        .expect("connects");
    let staging = promotions
        .request_promotion(with_token(
            ALICE,
            proto::RequestPromotionRequest {
                target_environment: "staging".into(),
                reason: "for prod".into(),
                ..Default::default()
            },
        ))
        .await
        .expect("requested")
        .into_inner();
    promotions
        .approve_promotion(with_token(
            BOB,
            proto::ApprovePromotionRequest {
                id: staging.id.clone(),
                comment: String::new(),
            },
        ))
        .await
        .expect("approved");
    eventually("staging's promotion succeeds", || {
        let (grpc, id) = (server.grpc.clone(), staging.id.clone());
        async move { promotion(&grpc, &id).await.state == proto::PromotionState::Succeeded as i32 }
    })
    .await;
    let csrf = alice.csrf().await;
    let status = alice
        .post(
            "/ui/environments/prod/promote",
            &[("csrf", &csrf), ("reason", "ship it")],
            None,
        )
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let open = promotions
        .list_promotions(with_token(
            ALICE,
            proto::ListPromotionsRequest {
                environment: "prod".into(),
                ..Default::default()
            },
        ))
        .await
        .expect("answers")
        .into_inner()
        .promotions;
    let prod = open
        .first()
        .expect("the page requested a promotion into prod")
        .clone();
    assert_eq!(prod.requested_by, "alice");
    eventually("prod's promotion awaits approval", || {
        let (grpc, id) = (server.grpc.clone(), prod.id.clone());
        async move {
            promotion(&grpc, &id).await.state == proto::PromotionState::AwaitingApproval as i32
        }
    })
    .await;
    let page_path = format!("/ui/promotions/{}", prod.id);
    let approve = format!("/ui/promotions/{}/approve", prod.id);
    let (_, _, page) = alice.get("/ui/").await;
    assert!(
        page.contains(&format!(
            r#"data-promotion="{}" data-state="awaiting_approval""#,
            prod.id
        )),
        "{page}"
    );
    assert!(
        page.contains("Waiting for approval"),
        "its blocker in words: {page}"
    );

    // vera may view only: no approve form, and her forged approval is refused and changes
    // nothing, with or without her session's own CSRF token.
    let mut vera = Browser::new(&base);
    vera.sign_in(VERA).await;
    let (status, _, page) = vera.get(&page_path).await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains(r#"data-state="awaiting_approval""#));
    assert!(
        !page.contains(r#"class="approve""#),
        "no approve form for a viewer"
    );
    let vera_csrf = vera.csrf().await;
    assert_eq!(
        vera.post(&approve, &[("csrf", &vera_csrf)], None).await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(vera.post(&approve, &[], None).await, StatusCode::FORBIDDEN);

    // bob may approve, but not through a request his page did not send: no token, another
    // session's token, or another site's origin.
    let mut bob = Browser::new(&base);
    bob.sign_in(BOB).await;
    let (_, _, page) = bob.get(&page_path).await;
    assert!(
        page.contains(r#"class="approve""#),
        "an approver sees the approve form"
    );
    let bob_csrf = bob.csrf().await;
    assert_eq!(bob.post(&approve, &[], None).await, StatusCode::FORBIDDEN);
    assert_eq!(
        bob.post(&approve, &[("csrf", &vera_csrf)], None).await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        bob.post(
            &approve,
            &[("csrf", &bob_csrf)],
            Some("http://evil.example")
        )
        .await,
        StatusCode::FORBIDDEN
    );
    let unchanged = promotion(&server.grpc, &prod.id).await;
    assert!(
        unchanged.approvals.is_empty(),
        "nothing changed: {unchanged:?}"
    );

    // The real approvals: bob, then dave, each from his own session; prod then succeeds.
    let origin = base.clone();
    assert_eq!(
        bob.post(
            &approve,
            &[("csrf", &bob_csrf), ("comment", "ok")],
            Some(&origin)
        )
        .await,
        StatusCode::SEE_OTHER
    );
    let mut dave = Browser::new(&base);
    dave.sign_in(DAVE).await;
    let dave_csrf = dave.csrf().await;
    assert_eq!(
        dave.post(&approve, &[("csrf", &dave_csrf)], None).await,
        StatusCode::SEE_OTHER
    );
    eventually("prod's promotion succeeds", || {
        let (grpc, id) = (server.grpc.clone(), prod.id.clone());
        async move { promotion(&grpc, &id).await.state == proto::PromotionState::Succeeded as i32 }
    })
    .await;
    let (_, _, page) = bob.get(&page_path).await;
    assert!(
        page.contains(r#"id="state" data-state="succeeded""#),
        "{page}"
    );
    assert!(page.contains("bob") && page.contains("dave"));

    // Every other page, including those of the environment with the Secret.
    for path in [
        "/ui/environments/secure",
        "/ui/environments/prod",
        "/ui/compare?from=dev&to=secure",
        "/ui/audit?identity=bob",
        "/ui/delivery",
    ] {
        let (status, _, _) = alice.get(path).await;
        assert_eq!(status, StatusCode::OK, "{path}");
    }
    let (_, _, audit) = alice.get("/ui/audit?identity=dave&action=approved").await;
    assert!(
        audit.contains(&prod.id),
        "dave's approval is listed: {audit}"
    );
    assert!(!audit.contains(">bob<"), "only dave's events: {audit}");
    let (status, _, _) = alice.get("/ui/environments/nowhere").await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Signing out ends the session on the server, not only in the browser.
    let csrf = alice.csrf().await;
    let cookie = alice.cookie.clone();
    assert_eq!(
        alice.post("/ui/sign-out", &[("csrf", &csrf)], None).await,
        StatusCode::SEE_OTHER
    );
    alice.cookie = cookie;
    let (status, _, _) = alice.get("/ui/").await;
    assert_eq!(status, StatusCode::SEE_OTHER);

    for browser in [&anonymous, &alice, &vera, &bob, &dave] {
        for body in &browser.seen {
            assert!(
                !body.contains(SECRET_VALUE),
                "a response holds the Secret's value"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_removed_from_the_tokens_file_ends_its_web_sessions() {
    let kube = cluster().client().await;
    let fx = Fixture::new(&kube).await;
    let server = fx.start();
    let base = format!("http://{}", server.http);
    let mut vera = Browser::new(&base);
    vera.sign_in(VERA).await;
    let (status, _, _) = vera.get("/ui/audit").await;
    assert_eq!(status, StatusCode::OK);
    let tokens = std::fs::read_to_string(&fx.tokens).expect("tokens file");
    let without: String = tokens
        .lines()
        .filter(|line| !line.contains("name: vera"))
        .map(|line| format!("{line}\n"))
        .collect();
    std::fs::write(&fx.tokens, without).expect("tokens file rewritten");
    eventually("vera's session ends with her token", || {
        let http = vera.http.clone();
        let cookie = vera.cookie.clone().expect("signed in");
        let url = format!("{base}/ui/audit");
        async move {
            let response = http
                .get(url)
                .header("cookie", cookie)
                .send()
                .await
                .expect("answers");
            response.status() == StatusCode::SEE_OTHER
        }
    })
    .await;
}
