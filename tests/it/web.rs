//! The web view (issue 26) in a real browser: Debian's headless Chromium over WebDriver, against
//! `stagehand serve` on the real kube-apiserver and a real Git remote.

use std::path::PathBuf;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use serde_json::json;
use stagehand::proto;
use stagehand::proto::environment_service_client::EnvironmentServiceClient;
use stagehand::proto::promotion_service_client::PromotionServiceClient;
use tonic::transport::Channel;

use crate::promotions::{get, request, secret, sops_encrypt, state_of, until_healthy, until_state};
use crate::service::{
    SECRET, Server, app, github_signature, post_webhook, start_server_env, value_in, with_token,
};
use crate::support::browser::{Browser, Chromedriver};
use crate::support::cluster::{cluster, install_crypto_provider};
use crate::support::git::{Repo, bare_remote};
use crate::support::git_http::GitHttpServer;
use crate::support::tools::age_keygen;

/// A `data:` URL holding `html`, every byte but letters and digits percent-encoded.
fn data_url(html: &str) -> String {
    let mut url = String::from("data:text/html;charset=utf-8,");
    for b in html.bytes() {
        if b.is_ascii_alphanumeric() {
            url.push(b as char);
        } else {
            url.push_str(&format!("%{b:02X}"));
        }
    }
    url
}

/// The harness itself: two sessions at once, each waiting for what its page's script adds a
/// moment later, JavaScript state kept across the wait, a screenshot written as a PNG file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_browser_harness_drives_two_headless_sessions_at_once() {
    let driver = Chromedriver::start();
    let one = driver.session("one").await;
    let two = driver.session("two").await;
    for (browser, word) in [(&one, "first"), (&two, "second")] {
        browser
            .goto(&data_url(&format!(
                "<!doctype html><title>{word}</title><main><p class=late>waiting</p></main>\
                 <script>setTimeout(() => {{ document.querySelector('.late').textContent = \
                 'arrived {word}'; }}, 300)</script>"
            )))
            .await;
        browser
            .execute("window.__marker = arguments[0]", vec![json!(word)])
            .await;
    }
    assert_eq!(
        two.wait_for_text(".late", "arrived").await,
        "arrived second"
    );
    assert_eq!(one.wait_for_text(".late", "arrived").await, "arrived first");
    // Each session kept its own page's state through the wait: no reload, no shared window.
    assert_eq!(one.execute("return window.__marker", vec![]).await, "first");
    assert_eq!(
        two.execute("return window.__marker", vec![]).await,
        "second"
    );
    assert!(one.source().await.contains("arrived first"));
    assert_eq!(one.texts("p").await, ["arrived first"]);
    assert_eq!(two.count("main p").await, 1);
    assert_eq!(one.open_dialog().await, None);
    let shot = one.screenshot("harness").await;
    assert!(std::fs::metadata(&shot).expect("written").len() > 1000);
    one.quit().await;
    two.quit().await;
}

const ALICE: &str = "alice-token-web-releaser-2c7e";
const BOB: &str = "bob-token-web-approver-81fa";
const DAVE: &str = "dave-token-web-approver-4d09";
const VERA: &str = "vera-token-web-viewer-e6b3";

/// The plaintext values of the pipeline's SOPS-encrypted Secret: dev's and staging's. No page,
/// no response and no event may ever hold them.
const DEV_PASSWORD: &str = "dev-db-password-0f3a9c71";
const STAGING_PASSWORD: &str = "staging-db-password-b52e18d4";

/// dev and staging as overlays on main, prod on its own branch; each runs a ConfigMap and a
/// SOPS-encrypted Secret (real sops, a fresh age key the service holds). Promotions into
/// staging copy app.yaml and the Secret and need two approvals (four eyes).
struct Fixture {
    _dir: tempfile::TempDir,
    work: Repo,
    pipeline: PathBuf,
    state: PathBuf,
    secret: PathBuf,
    tokens: PathBuf,
    key: PathBuf,
    namespaces: [String; 3],
    _http: GitHttpServer,
}

impl Fixture {
    async fn new(client: &kube::Client) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut namespaces = Vec::new();
        for env in ENVIRONMENTS {
            namespaces.push(cluster().namespace(client, &format!("web-{env}")).await);
        }
        let namespaces: [String; 3] = namespaces.try_into().expect("three");
        let remotes = dir.path().join("remotes");
        bare_remote(&remotes.join("shop.git"));
        let http = GitHttpServer::start(&remotes, None);
        let key = dir.path().join("server.agekey");
        let recipient = age_keygen(&key);
        let scratch = dir.path().join("scratch");
        std::fs::create_dir_all(&scratch).expect("scratch dir");
        let kustomization = |namespace: &str| {
            format!(
                "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nnamespace: {namespace}\nresources: [app.yaml, db.enc.yaml]\n"
            )
        };
        let encrypted = |value: &str| sops_encrypt(&scratch, "db.yaml", &secret(value), &recipient);

        let work = Repo::init(&dir.path().join("work"));
        work.write(&[
            (
                "environments/dev/kustomization.yaml",
                &kustomization(&namespaces[0]),
            ),
            ("environments/dev/app.yaml", &app("dev-1")),
            ("environments/dev/db.enc.yaml", &encrypted(DEV_PASSWORD)),
            (
                "environments/staging/kustomization.yaml",
                &kustomization(&namespaces[1]),
            ),
            ("environments/staging/app.yaml", &app("staging-1")),
            (
                "environments/staging/db.enc.yaml",
                &encrypted(STAGING_PASSWORD),
            ),
        ]);
        work.commit("dev and staging");
        work.git(&["remote", "add", "origin", &http.url("shop.git")]);
        work.git(&["push", "-q", "origin", "main"]);
        work.git(&["checkout", "-q", "-b", "env/prod"]);
        work.write(&[
            (
                "environments/prod/kustomization.yaml",
                &kustomization(&namespaces[2]),
            ),
            ("environments/prod/app.yaml", &app("prod-1")),
            (
                "environments/prod/db.enc.yaml",
                &encrypted(STAGING_PASSWORD),
            ),
        ]);
        work.commit("prod");
        work.git(&["push", "-q", "origin", "env/prod"]);
        work.git(&["checkout", "-q", "main"]);

        let state = dir.path().join("state");
        std::fs::create_dir_all(&state).expect("state dir");
        let secret = dir.path().join("webhook-secret");
        std::fs::write(&secret, format!("{SECRET}\n")).expect("secret file");
        let hash = stagehand::api::auth::hash_token;
        let tokens = dir.path().join("tokens.yaml");
        std::fs::write(
            &tokens,
            format!(
                "apiVersion: stagehand.dev/v1alpha1
kind: Tokens
identities:
  - {{name: alice, email: alice@example.test, groups: [releasers], tokenSha256: [{}]}}
  - {{name: bob, email: bob@example.test, groups: [approvers], tokenSha256: [{}]}}
  - {{name: dave, email: dave@example.test, groups: [approvers], tokenSha256: [{}]}}
  - {{name: vera, email: vera@example.test, groups: [viewers], tokenSha256: [{}]}}
",
                hash(ALICE),
                hash(BOB),
                hash(DAVE),
                hash(VERA)
            ),
        )
        .expect("tokens file");
        let pipeline = dir.path().join("pipeline.yaml");
        let name = format!("web{}", &namespaces[0][namespaces[0].len() - 6..]);
        std::fs::write(
            &pipeline,
            format!(
                "apiVersion: stagehand.dev/v1alpha1
kind: Pipeline
metadata: {{name: {name}}}
spec:
  repository: {{url: {url}, branch: main}}
  environments:
    - name: dev
      source: {{overlay: environments/dev}}
      sync: {{interval: 1h}}
    - name: staging
      promotesFrom: dev
      source: {{overlay: environments/staging}}
      sync: {{interval: 1h}}
      approval: {{required: 2, groups: [approvers]}}
      promote: {{files: [app.yaml, db.enc.yaml]}}
    - name: prod
      promotesFrom: staging
      source: {{branch: env/prod, path: environments/prod}}
      sync: {{interval: 1h}}
      approval: {{required: 2, groups: [approvers]}}
  access:
    - {{groups: [releasers], environments: [\"*\"], permissions: [view, request, rollback, sync, suspend]}}
    - {{groups: [approvers], environments: [\"*\"], permissions: [view, approve]}}
    - {{groups: [viewers], environments: [\"*\"], permissions: [view]}}
",
                url = http.url("shop.git"),
            ),
        )
        .expect("pipeline file");
        Self {
            _dir: dir,
            work,
            pipeline,
            state,
            secret,
            tokens,
            key,
            namespaces,
            _http: http,
        }
    }

    fn start(&self) -> Server {
        let tokens = self.tokens.display().to_string();
        start_server_env(
            &self.pipeline,
            &self.state,
            &self.secret,
            &["--tokens-file", &tokens],
            &[("SOPS_AGE_KEY_FILE", self.key.as_path())],
        )
    }

    async fn value_of(&self, client: &kube::Client, env: &str) -> Option<String> {
        let index = ENVIRONMENTS
            .iter()
            .position(|e| *e == env)
            .expect("an environment");
        value_in(client, &self.namespaces[index]).await
    }

    /// Commits a change of dev's ConfigMap with `subject` on main and pushes it; returns it.
    fn push_dev(&self, value: &str, subject: &str) -> String {
        self.work
            .write(&[("environments/dev/app.yaml", &app(value))]);
        let commit = self.work.commit(subject);
        self.work.git(&["push", "-q", "origin", "main"]);
        commit
    }
}

const ENVIRONMENTS: [&str; 3] = ["dev", "staging", "prod"];

/// Waits until the service has applied every environment and each is Healthy.
async fn until_all_healthy(server: &Server) {
    for env in ENVIRONMENTS {
        until_healthy(&server.grpc, ALICE, env).await;
    }
}

/// What the tests saw, page by page and response by response, to search for the Secret's
/// plaintext at the end.
#[derive(Default)]
struct Seen(std::sync::Mutex<Vec<(String, String)>>);

impl Seen {
    fn keep(&self, what: &str, text: &str) {
        self.0
            .lock()
            .expect("not poisoned")
            .push((what.to_owned(), text.to_owned()));
    }

    async fn page(&self, browser: &Browser, what: &str) {
        self.keep(
            &format!("{}: {what}", browser.name),
            &browser.source().await,
        );
    }

    /// Fails naming every page or response that holds a plaintext value; `least` is how many
    /// were seen at least, so that an empty search cannot pass.
    fn assert_no_secret_value(&self, least: usize) {
        let seen = self.0.lock().expect("not poisoned");
        assert!(
            seen.len() >= least,
            "only {} pages and responses seen",
            seen.len()
        );
        let leaks: Vec<&str> = seen
            .iter()
            .filter(|(_, text)| text.contains(DEV_PASSWORD) || text.contains(STAGING_PASSWORD))
            .map(|(what, _)| what.as_str())
            .collect();
        assert!(leaks.is_empty(), "a Secret's value is in: {leaks:?}");
    }
}

/// Plain HTTP to the web view with reqwest, as a script (or another site) would send it: no
/// redirects followed, cookies only where given.
struct Http {
    client: reqwest::Client,
    base: String,
}

struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: String,
}

fn form(fields: &[(&str, &str)]) -> String {
    let encode = |s: &str| {
        s.bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect::<String>()
    };
    fields
        .iter()
        .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

impl Http {
    fn new(server: &Server) -> Self {
        install_crypto_provider();
        Self {
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("an HTTP client"),
            base: format!("http://{}", server.http),
        }
    }

    async fn answer(request: reqwest::RequestBuilder, seen: &Seen, what: &str) -> Answer {
        let response = request.send().await.expect("the web view answers");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.text().await.expect("a body");
        seen.keep(what, &format!("{headers:?}\n{body}"));
        Answer {
            status,
            headers,
            body,
        }
    }

    async fn get(&self, path: &str, session: Option<&str>, seen: &Seen) -> Answer {
        let mut request = self.client.get(format!("{}{path}", self.base));
        if let Some(session) = session {
            request = request.header("cookie", format!("stagehand_session={session}"));
        }
        Self::answer(request, seen, &format!("GET {path}")).await
    }

    /// A form POST; `origin` is sent as the Origin header when given.
    async fn post(
        &self,
        path: &str,
        session: Option<&str>,
        origin: Option<&str>,
        fields: &[(&str, &str)],
        seen: &Seen,
    ) -> Answer {
        let mut request = self
            .client
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form(fields));
        if let Some(session) = session {
            request = request.header("cookie", format!("stagehand_session={session}"));
        }
        if let Some(origin) = origin {
            request = request.header("origin", origin);
        }
        Self::answer(request, seen, &format!("POST {path}")).await
    }

    /// Reads the live event stream with `session` until the returned handle is dropped;
    /// everything received is kept in `log`.
    fn events(&self, session: &str, log: Arc<std::sync::Mutex<String>>) -> EventStream {
        let request = self
            .client
            .get(format!("{}/ui/events", self.base))
            .header("cookie", format!("stagehand_session={session}"))
            .header("accept", "text/event-stream");
        EventStream(tokio::spawn(async move {
            let mut response = request.send().await.expect("the event stream answers");
            assert_eq!(response.status().as_u16(), 200, "GET /ui/events");
            while let Ok(Some(chunk)) = response.chunk().await {
                log.lock()
                    .expect("not poisoned")
                    .push_str(&String::from_utf8_lossy(&chunk));
            }
        }))
    }
}

struct EventStream(tokio::task::JoinHandle<()>);

impl Drop for EventStream {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Opens a browser session for `name` and signs in through the form with `token`, as a person
/// would: any page redirects to the sign-in form first.
async fn sign_in(driver: &Chromedriver, base: &str, name: &str, token: &str) -> Browser {
    let browser = driver.session(name).await;
    browser.goto(&format!("{base}/ui/")).await;
    browser.wait_for("form#sign-in input[name=token]").await;
    assert!(
        browser.current_url().await.contains("/ui/sign-in"),
        "{}",
        browser.current_url().await
    );
    browser
        .type_into("form#sign-in input[name=token]", token)
        .await;
    browser.click("form#sign-in button[type=submit]").await;
    browser.wait_for_text("header #identity", name).await;
    browser
}

/// Sets a marker in the page's JavaScript state: it survives live updates, not a reload.
async fn mark(browser: &Browser) {
    browser
        .execute("window.__stagehandMarker = 'not reloaded'", vec![])
        .await;
}

async fn assert_not_reloaded(browser: &Browser) {
    assert_eq!(
        browser
            .execute("return window.__stagehandMarker", vec![])
            .await,
        "not reloaded",
        "{}: the page was reloaded",
        browser.name
    );
}

fn environment_css(env: &str) -> String {
    format!("section.environment[data-environment={env}]")
}

/// Sign-in, the pipeline page against ListEnvironments, a push to dev arriving live, and a
/// commit subject with a script element in it shown as text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pipeline_page_shows_what_the_api_reports_and_a_push_to_dev_arrives_live_as_text() {
    let kube = cluster().client().await;
    let fx = Fixture::new(&kube).await;
    let server = fx.start();
    until_all_healthy(&server).await;
    let base = format!("http://{}", server.http);
    let http = Http::new(&server);
    let seen = Seen::default();

    // Without a session every page sends the visitor to the sign-in form; a wrong token is
    // refused with a message and no session.
    let root = http.get("/", None, &seen).await;
    assert!(
        (300..400).contains(&root.status),
        "GET / answered {}",
        root.status
    );
    assert_eq!(root.headers["location"], "/ui/");
    let anonymous = http.get("/ui/", None, &seen).await;
    assert_eq!(anonymous.status, 303, "{}", anonymous.body);
    assert!(
        anonymous.headers["location"]
            .to_str()
            .expect("ASCII")
            .starts_with("/ui/sign-in"),
        "{:?}",
        anonymous.headers
    );
    let wrong = http
        .post(
            "/ui/sign-in",
            None,
            None,
            &[("token", "not-a-token")],
            &seen,
        )
        .await;
    assert_eq!(wrong.status, 401, "{}", wrong.body);
    assert!(
        !wrong.headers.contains_key("set-cookie"),
        "{:?}",
        wrong.headers
    );

    let driver = Chromedriver::start();
    let refused = driver.session("stranger").await;
    refused.goto(&format!("{base}/ui/sign-in")).await;
    refused
        .type_into("form#sign-in input[name=token]", "not-a-token")
        .await;
    refused.click("form#sign-in button[type=submit]").await;
    refused.wait_for(".error").await;
    assert_eq!(refused.count("header #identity").await, 0);
    seen.page(&refused, "a refused sign-in").await;
    refused.quit().await;

    let alice = sign_in(&driver, &base, "alice", ALICE).await;
    assert!(
        alice.current_url().await.ends_with("/ui/"),
        "{}",
        alice.current_url().await
    );
    let cookie = http
        .post("/ui/sign-in", None, None, &[("token", ALICE)], &seen)
        .await;
    assert_eq!(cookie.status, 303, "{}", cookie.body);
    let set_cookie = cookie.headers["set-cookie"].to_str().expect("ASCII");
    for attribute in [
        "stagehand_session=",
        "HttpOnly",
        "SameSite=Strict",
        "Path=/ui",
        "Max-Age=",
    ] {
        assert!(set_cookie.contains(attribute), "{set_cookie}");
    }
    let session = alice.cookie("stagehand_session").await;
    let page = http.get("/ui/", Some(&session), &seen).await;
    assert_eq!(page.status, 200);
    let csp = page.headers["content-security-policy"]
        .to_str()
        .expect("ASCII");
    for directive in [
        "default-src 'none'",
        "script-src 'self'",
        "frame-ancestors 'none'",
    ] {
        assert!(csp.contains(directive), "{csp}");
    }
    assert!(!csp.contains("unsafe"), "{csp}");

    // Three environments in promotion order, each with the revision the API reports.
    let mut envs = EnvironmentServiceClient::connect(server.grpc.clone())
        .await
        .expect("gRPC reachable");
    let listed = envs
        .list_environments(with_token(ALICE, proto::ListEnvironmentsRequest {}))
        .await
        .expect("ListEnvironments answers")
        .into_inner();
    alice.wait_for("section.environment").await;
    let names = alice
        .execute(
            "return Array.from(document.querySelectorAll('section.environment'), \
             s => s.dataset.environment)",
            vec![],
        )
        .await;
    assert_eq!(names, json!(ENVIRONMENTS));
    for env in &listed.environments {
        let applied = &env.status.as_ref().expect("a status").applied_revision;
        assert_eq!(applied.len(), 40, "{env:?}");
        let revision = format!(
            "{} .revision[data-revision=\"{applied}\"]",
            environment_css(&env.name)
        );
        alice.wait_for(&revision).await;
        assert_eq!(alice.texts(&revision).await, [applied[..7].to_owned()]);
        // The word, whatever icon stands beside it: readable without colour.
        let health = alice
            .texts(&format!("{} .health", environment_css(&env.name)))
            .await;
        assert!(
            matches!(&health[..], [one] if one.contains("Healthy")),
            "{}: {health:?}",
            env.name
        );
    }
    assert_ne!(
        listed.environments[0]
            .status
            .as_ref()
            .expect("status")
            .applied_revision,
        listed.environments[2]
            .status
            .as_ref()
            .expect("status")
            .applied_revision,
        "prod runs its own branch"
    );
    seen.page(&alice, "the pipeline page").await;

    // A commit pushed to dev, its subject holding a script element: the page shows it without
    // a reload, as text.
    mark(&alice).await;
    let subject = "dev: <script>alert(1)</script> & friends";
    let pushed = fx.push_dev("dev-2", subject);
    let body = br#"{"ref":"refs/heads/main"}"#;
    assert_eq!(
        post_webhook(
            server.http,
            &[("X-Hub-Signature-256", github_signature(body))],
            body
        ),
        202
    );
    let dev = environment_css("dev");
    alice
        .wait_for(&format!("{dev} .revision[data-revision=\"{pushed}\"]"))
        .await;
    assert_not_reloaded(&alice).await;
    alice
        .wait_for_text(&format!("{dev} .subject"), subject)
        .await;
    assert_eq!(alice.count(".subject script").await, 0);
    assert_eq!(alice.open_dialog().await, None);
    // The API agrees.
    let dev_status = envs
        .get_environment(with_token(
            ALICE,
            proto::GetEnvironmentRequest { name: "dev".into() },
        ))
        .await
        .expect("GetEnvironment answers")
        .into_inner()
        .status
        .expect("a status");
    assert_eq!(dev_status.applied_revision, pushed);
    seen.page(&alice, "the pipeline page after the push").await;
    alice.screenshot("pipeline-after-push").await;

    // Loaded afresh, the server-rendered page holds the subject escaped, never as markup.
    alice.goto(&format!("{base}/ui/")).await;
    alice
        .wait_for_text(&format!("{dev} .subject"), subject)
        .await;
    assert_eq!(alice.count("script:not([src])").await, 0);
    assert_eq!(alice.open_dialog().await, None);
    let fresh = http.get("/ui/", Some(&session), &seen).await;
    assert!(
        fresh.body.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "{}",
        fresh.body
    );
    assert!(!fresh.body.contains("<script>alert(1)"), "{}", fresh.body);
    seen.page(&alice, "the pipeline page reloaded").await;

    seen.assert_no_secret_value(8);
    alice.quit().await;
}

/// A promotion requested through the API waits on the pipeline page with its blocker in words;
/// two approvers approve it in their own browsers, and every open page follows it to
/// Succeeded without a reload. The pages are screenshotted, and neither they nor the live
/// events hold the Secret's value though the promotion changes that Secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_approvers_approve_in_their_browsers_and_the_pages_follow_the_promotion_live() {
    let kube = cluster().client().await;
    let fx = Fixture::new(&kube).await;
    let server = fx.start();
    until_all_healthy(&server).await;
    let base = format!("http://{}", server.http);
    let http = Http::new(&server);
    let seen = Seen::default();
    let channel = Channel::from_shared(server.grpc.clone())
        .expect("URL")
        .connect()
        .await
        .expect("gRPC reachable");
    let mut api = PromotionServiceClient::new(channel);

    let driver = Chromedriver::start();
    let alice = sign_in(&driver, &base, "alice", ALICE).await;
    let bob = sign_in(&driver, &base, "bob", BOB).await;
    let dave = sign_in(&driver, &base, "dave", DAVE).await;
    let events = Arc::new(std::sync::Mutex::new(String::new()));
    let stream = http.events(&alice.cookie("stagehand_session").await, events.clone());

    let requested = request(&mut api, ALICE, "staging", "")
        .await
        .expect("alice requests staging");
    let id = requested.id.clone();
    until_state(&api, ALICE, &id, proto::PromotionState::AwaitingApproval).await;
    let waiting = get(&mut api, ALICE, &id).await;
    let blocker = waiting.blockers[0].message.clone();
    assert!(blocker.contains("2 more approval"), "{blocker}");

    // On alice's pipeline page, in staging's column, with its blocker in the API's words.
    let promotion = format!(
        "{} .promotion[data-promotion=\"{id}\"]",
        environment_css("staging")
    );
    alice
        .wait_for(&format!("{promotion}[data-state=awaiting_approval]"))
        .await;
    alice
        .wait_for_text(&format!("{promotion} .blocker"), &blocker)
        .await;
    mark(&alice).await;
    alice.screenshot("pipeline-awaiting-approval").await;
    seen.page(&alice, "the pipeline page, awaiting approval")
        .await;

    // bob follows the link to the promotion page; dave opens it too.
    bob.goto(&format!("{base}/ui/")).await;
    bob.click(&format!("{promotion} a[href=\"/ui/promotions/{id}\"]"))
        .await;
    bob.wait_for("#state[data-state=awaiting_approval]").await;
    bob.wait_for_text(".blocker", &blocker).await;
    bob.wait_for(".diff").await;
    // The preview names the Secret's key; its value stays out.
    bob.wait_for_text(".diff", "password").await;
    bob.screenshot("promotion-awaiting-approval").await;
    seen.page(&bob, "the promotion page, awaiting approval")
        .await;
    dave.goto(&format!("{base}/ui/promotions/{id}")).await;
    dave.wait_for("#state[data-state=awaiting_approval]").await;
    mark(&dave).await;
    assert_eq!(dave.count(".approval").await, 0);

    // bob approves: one of two. dave's page and alice's show it without a reload.
    bob.click("form.approve button[type=submit]").await;
    dave.wait_for_text(".approval", "bob").await;
    assert_not_reloaded(&dave).await;
    let half = get(&mut api, ALICE, &id).await;
    assert_eq!(half.approvals.len(), 1, "{half:?}");
    assert_eq!(state_of(&half), proto::PromotionState::AwaitingApproval);
    let still = half.blockers[0].message.clone();
    assert!(still.contains("1 more approval"), "{still}");
    alice
        .wait_for_text(&format!("{promotion} .blocker"), &still)
        .await;
    assert_not_reloaded(&alice).await;
    // Wherever the form's answer took bob, he watches the promotion's page from here on.
    bob.goto(&format!("{base}/ui/promotions/{id}")).await;
    bob.wait_for_text(".approval", "bob").await;
    mark(&bob).await;

    // dave approves: two of two. It runs to Succeeded, and the pages follow: bob's promotion
    // page shows it succeeded; alice's pipeline page shows staging running its commit and the
    // promotion among those that ended recently, no longer open.
    dave.click("form.approve button[type=submit]").await;
    bob.wait_for("#state[data-state=succeeded]").await;
    assert_not_reloaded(&bob).await;
    assert_eq!(bob.count(".approval").await, 2);
    assert!(bob.count(".transition").await >= 5);
    assert_eq!(
        bob.count("form.approve").await,
        0,
        "nothing left to approve"
    );
    let done = get(&mut api, ALICE, &id).await;
    assert_eq!(state_of(&done), proto::PromotionState::Succeeded);
    let approvers: Vec<_> = done.approvals.iter().map(|a| a.approver.as_str()).collect();
    assert_eq!(approvers, ["bob", "dave"]);
    alice
        .wait_for(&format!(
            "{} .revision[data-revision=\"{}\"]",
            environment_css("staging"),
            done.commit
        ))
        .await;
    assert_eq!(alice.count(&promotion).await, 0, "still shown as open");
    alice
        .wait_for(&format!(
            ".recent-promotion[data-promotion=\"{id}\"][data-state=succeeded]"
        ))
        .await;
    assert_not_reloaded(&alice).await;
    assert_eq!(
        fx.value_of(&kube, "staging").await.as_deref(),
        Some("dev-1")
    );
    // The value the pages must never show is live in the cluster: the promotion carried dev's
    // Secret into staging, decrypted.
    let db = Api::<Secret>::namespaced(kube.clone(), &fx.namespaces[1])
        .get("db")
        .await
        .expect("staging's Secret");
    assert_eq!(
        db.data.expect("data")["password"].0,
        DEV_PASSWORD.as_bytes()
    );
    bob.screenshot("promotion-succeeded").await;
    alice.screenshot("pipeline-succeeded").await;
    seen.page(&bob, "the promotion page, succeeded").await;
    seen.page(&alice, "the pipeline page, succeeded").await;

    // staging's page: its objects, the Secret among them, and the buttons alice may use.
    alice.goto(&format!("{base}/ui/environments/staging")).await;
    let staging_ns = &fx.namespaces[1];
    for object in [
        format!("ConfigMap/{staging_ns}/app"),
        format!("Secret/{staging_ns}/db"),
    ] {
        alice
            .wait_for(&format!("tr.object[data-object=\"{object}\"] .health"))
            .await;
    }
    alice.wait_for(".sync-history").await;
    assert_eq!(alice.count("form.sync").await, 1, "alice may sync");
    alice.screenshot("environment-staging").await;
    seen.page(&alice, "staging's environment page").await;
    bob.goto(&format!("{base}/ui/environments/staging")).await;
    bob.wait_for("tr.object").await;
    assert_eq!(bob.count("form.sync").await, 0, "bob may not sync");
    seen.page(&bob, "staging's environment page").await;

    let session = bob.cookie("stagehand_session").await;
    for path in [
        "/ui/".to_owned(),
        format!("/ui/promotions/{id}"),
        "/ui/environments/dev".to_owned(),
        "/ui/environments/staging".to_owned(),
        "/ui/compare?from=dev&to=staging".to_owned(),
        "/ui/audit?environment=staging".to_owned(),
        "/ui/delivery".to_owned(),
    ] {
        let page = http.get(&path, Some(&session), &seen).await;
        assert_eq!(page.status, 200, "GET {path}: {}", page.body);
    }
    drop(stream);
    let events = events.lock().expect("not poisoned").clone();
    assert!(events.contains("data:"), "no event arrived: {events:?}");
    seen.keep("the live events", &events);
    seen.assert_no_secret_value(14);
    for browser in [alice, bob, dave] {
        browser.quit().await;
    }
}

/// A viewer sees no approve, reject or abort form, and no forged POST gets through: not the
/// viewer's own (with or without a valid csrf value), not one sent with an approver's cookie
/// without the right csrf value or from another site. The promotion is unchanged afterwards,
/// and the approver's genuine POST then counts, so the refusals were for what they tested.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_sees_no_approve_form_and_forged_posts_are_refused_and_change_nothing() {
    let kube = cluster().client().await;
    let fx = Fixture::new(&kube).await;
    let server = fx.start();
    until_all_healthy(&server).await;
    let base = format!("http://{}", server.http);
    let http = Http::new(&server);
    let seen = Seen::default();
    let channel = Channel::from_shared(server.grpc.clone())
        .expect("URL")
        .connect()
        .await
        .expect("gRPC reachable");
    let mut api = PromotionServiceClient::new(channel);
    let id = request(&mut api, ALICE, "staging", "")
        .await
        .expect("alice requests staging")
        .id;
    until_state(&api, ALICE, &id, proto::PromotionState::AwaitingApproval).await;
    let before = get(&mut api, ALICE, &id).await;

    let driver = Chromedriver::start();
    let vera = sign_in(&driver, &base, "vera", VERA).await;
    let bob = sign_in(&driver, &base, "bob", BOB).await;
    let page = format!("/ui/promotions/{id}");
    vera.goto(&format!("{base}{page}")).await;
    vera.wait_for("#state[data-state=awaiting_approval]").await;
    for form in ["form.approve", "form.reject", "form.abort"] {
        assert_eq!(vera.count(form).await, 0, "vera sees {form}");
    }
    vera.screenshot("promotion-as-viewer").await;
    seen.page(&vera, "the promotion page as a viewer").await;
    vera.goto(&format!("{base}/ui/")).await;
    vera.wait_for(&format!(".promotion[data-promotion=\"{id}\"]"))
        .await;
    assert_eq!(vera.count("form.approve").await, 0);
    // vera's own csrf value, from a form she does have (signing out).
    let vera_csrf = vera
        .wait_until(
            "a csrf field on vera's page",
            "const f = document.querySelector('input[name=csrf]'); return f && f.value",
            vec![],
        )
        .await
        .as_str()
        .expect("a string")
        .to_owned();
    seen.page(&vera, "the pipeline page as a viewer").await;
    bob.goto(&format!("{base}{page}")).await;
    bob.wait_for("form.approve button[type=submit]").await;
    let bob_csrf = bob
        .execute(
            "return document.querySelector('form.approve input[name=csrf]').value",
            vec![],
        )
        .await
        .as_str()
        .expect("bob's approve form has a csrf value")
        .to_owned();
    assert_ne!(bob_csrf, vera_csrf, "a csrf value belongs to its session");
    let vera_session = vera.cookie("stagehand_session").await;
    let bob_session = bob.cookie("stagehand_session").await;
    let same_site = base.clone();
    let other_site = "http://attacker.example";

    let approve = format!("{page}/approve");
    // (who, action, session, Origin header, csrf value)
    let forged = [
        ("vera", "approve", &vera_session, Some(&*same_site), None),
        (
            "vera",
            "approve",
            &vera_session,
            Some(&*same_site),
            Some(&*vera_csrf),
        ),
        (
            "vera",
            "reject",
            &vera_session,
            Some(&*same_site),
            Some(&*vera_csrf),
        ),
        (
            "vera",
            "abort",
            &vera_session,
            Some(&*same_site),
            Some(&*vera_csrf),
        ),
        ("bob", "approve", &bob_session, Some(&*same_site), None),
        ("bob", "approve", &bob_session, None, None),
        (
            "bob",
            "approve",
            &bob_session,
            Some(&*same_site),
            Some("0123456789abcdef"),
        ),
        (
            "bob",
            "approve",
            &bob_session,
            Some(&*same_site),
            Some(&*vera_csrf),
        ),
        ("bob", "approve", &bob_session, Some(other_site), None),
        (
            "bob",
            "approve",
            &bob_session,
            Some(other_site),
            Some(&*bob_csrf),
        ),
    ];
    for (who, action, session, origin, csrf) in forged {
        let mut fields = vec![("comment", "forged")];
        fields.extend(csrf.map(|c| ("csrf", c)));
        let answer = http
            .post(
                &format!("{page}/{action}"),
                Some(session),
                origin,
                &fields,
                &seen,
            )
            .await;
        assert_eq!(
            answer.status, 403,
            "{who} {action}, Origin {origin:?}, csrf {csrf:?}: {}",
            answer.body
        );
    }
    let after = get(&mut api, ALICE, &id).await;
    assert_eq!(state_of(&after), proto::PromotionState::AwaitingApproval);
    assert!(after.approvals.is_empty(), "{after:?}");
    assert_eq!(
        after.transitions.len(),
        before.transitions.len(),
        "{after:?}"
    );
    assert_eq!(after.update_time, before.update_time);

    // The same request as bob's browser sends it counts.
    let genuine = http
        .post(
            &approve,
            Some(&bob_session),
            Some(&same_site),
            &[("csrf", &bob_csrf)],
            &seen,
        )
        .await;
    assert_eq!(genuine.status, 303, "{}", genuine.body);
    let approved = get(&mut api, ALICE, &id).await;
    let approvers: Vec<_> = approved
        .approvals
        .iter()
        .map(|a| a.approver.as_str())
        .collect();
    assert_eq!(approvers, ["bob"]);

    seen.assert_no_secret_value(12);
    vera.quit().await;
    bob.quit().await;
}
