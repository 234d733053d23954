//! Authentication and authorisation: the access rules as a pure function, the tokens file on
//! disk, and the interceptor in front of a real tonic server over an in-process pipe.

use std::io::Write;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use stagehand::api::auth::{
    self, AccessPolicy, AccessRule, Authenticator, BearerToken, Identity, Permission, Tokens,
};
use stagehand::proto;
use stagehand::proto::environment_service_client::EnvironmentServiceClient;
use stagehand::proto::environment_service_server::{EnvironmentService, EnvironmentServiceServer};
use tokio_stream::Stream;
use tonic::transport::{Channel, Endpoint, Server, Uri};
use tonic::{Code, Request, Response, Status};

type TestResult = Result<(), Box<dyn std::error::Error>>;

const ENVIRONMENTS: [&str; 3] = ["dev", "staging", "prod"];

const ACCESS: &str = r#"
access:
  - {groups: [developers], environments: ["*"], permissions: [view]}
  - {groups: [developers], environments: [dev], permissions: [sync, suspend, request]}
  - {groups: [qa], environments: [staging], permissions: [approve]}
  - {groups: [release-managers], environments: [prod], permissions: ["*"]}
"#;

#[derive(serde::Deserialize)]
struct Section {
    access: Vec<AccessRule>,
}

fn policy_from(yaml: &str) -> Result<AccessPolicy, String> {
    let section: Section = serde_yaml_ng::from_str(yaml).map_err(|e| e.to_string())?;
    AccessPolicy::new(Path::new("pipeline.yaml"), &section.access, &ENVIRONMENTS)
        .map_err(|e| e.to_string())
}

fn policy() -> AccessPolicy {
    policy_from(ACCESS).expect("the test access rules are valid")
}

fn identity(name: &str, groups: &[&str]) -> Identity {
    Identity {
        name: name.to_owned(),
        email: format!("{name}@example.com"),
        groups: groups.iter().map(|g| (*g).to_owned()).collect(),
    }
}

#[test]
fn permissions_follow_the_access_rules_per_environment_and_group() {
    use Permission::*;
    let dev = identity("dana", &["developers"]);
    let qa = identity("quinn", &["qa"]);
    let both = identity("bo", &["developers", "qa"]);
    let manager = identity("mia", &["release-managers"]);
    let nobody = identity("nick", &[]);
    let table: &[(&Identity, &str, Permission, bool)] = &[
        (&dev, "dev", View, true),
        (&dev, "prod", View, true),
        (&dev, "dev", Sync, true),
        (&dev, "staging", Sync, false),
        (&dev, "dev", Suspend, true),
        (&dev, "dev", Request, true),
        (&dev, "dev", Approve, false),
        (&dev, "prod", Rollback, false),
        (&qa, "staging", Approve, true),
        // Approving implies seeing.
        (&qa, "staging", View, true),
        (&qa, "prod", View, false),
        (&qa, "dev", Approve, false),
        (&both, "dev", Sync, true),
        (&both, "staging", Approve, true),
        (&both, "prod", Approve, false),
        (&manager, "prod", Override, true),
        (&manager, "prod", Rollback, true),
        (&manager, "prod", Approve, true),
        (&manager, "staging", View, false),
        (&nobody, "dev", View, false),
    ];
    let policy = policy();
    for (who, env, permission, expected) in table {
        let got = auth::authorize(&policy, who, env, *permission).is_ok();
        assert_eq!(
            got, *expected,
            "{} ({:?}) {permission} on {env}",
            who.name, who.groups
        );
    }
}

#[test]
fn without_rules_nothing_is_allowed_and_allow_all_allows_everything() {
    let none = AccessPolicy::new(Path::new("pipeline.yaml"), &[], &ENVIRONMENTS)
        .expect("no rules is valid");
    let all = AccessPolicy::allow_all();
    let anonymous = Identity::anonymous();
    for env in ENVIRONMENTS {
        for permission in Permission::ALL {
            assert!(auth::authorize(&none, &anonymous, env, permission).is_err());
            assert!(auth::authorize(&all, &anonymous, env, permission).is_ok());
        }
    }
}

#[test]
fn a_denial_names_the_permission_and_the_environment_and_only_the_log_hears_who_holds_it() {
    let viewer = identity("vic", &["developers"]);
    let denied = auth::authorize(&policy(), &viewer, "prod", Permission::Sync)
        .expect_err("a developer may not sync prod");
    assert_eq!(denied.permission, Permission::Sync);
    assert_eq!(denied.granted_to, ["release-managers"]);
    let status = Status::from(denied);
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(
        status.message(),
        "permission \"sync\" on environment \"prod\" is not granted to \"vic\" \
         (groups: developers)"
    );
}

#[test]
fn only_those_who_may_view_an_environment_may_know_it_exists() {
    let policy = policy();
    assert!(auth::visible(
        &policy,
        &identity("dana", &["developers"]),
        "prod"
    ));
    assert!(auth::visible(
        &policy,
        &identity("quinn", &["qa"]),
        "staging"
    ));
    assert!(!auth::visible(&policy, &identity("quinn", &["qa"]), "prod"));
    assert!(!auth::visible(&policy, &identity("nick", &[]), "dev"));
    assert!(auth::visible(
        &AccessPolicy::allow_all(),
        &Identity::anonymous(),
        "prod"
    ));
}

#[test]
fn access_rules_that_make_no_sense_are_refused_naming_the_field() {
    let cases = [
        (
            "access: [{groups: [qa], environments: [staging], permissions: [deploy]}]",
            "pipeline file pipeline.yaml: field access[0].permissions[0]: unknown permission \"deploy\"",
        ),
        (
            "access: [{groups: [qa], environments: [dev, qa], permissions: [view]}]",
            "pipeline file pipeline.yaml: field access[0].environments[1]: names \"qa\", which is not an environment of the pipeline",
        ),
        (
            "access: [{groups: [], environments: [dev], permissions: [view]}]",
            "pipeline file pipeline.yaml: field access[0].groups: must list at least one entry",
        ),
        (
            "access: [{groups: [\"*\"], environments: [dev], permissions: [view]}]",
            "pipeline file pipeline.yaml: field access[0].groups[0]: must name a group",
        ),
        (
            "access: [{groups: [qa], environments: [dev], permissions: [view], users: [bob]}]",
            "unknown field `users`",
        ),
    ];
    for (yaml, expected) in cases {
        let error = policy_from(yaml).expect_err(yaml);
        assert!(
            error.contains(expected),
            "{yaml}\n  gave {error}\n  expected {expected}"
        );
    }
}

#[test]
fn only_a_loopback_server_runs_without_tokens_unless_told_it_is_insecure() {
    let cases = [
        ("127.0.0.1:7420", false, true),
        ("127.0.0.2:0", false, true),
        ("[::1]:7420", false, true),
        ("0.0.0.0:7420", false, false),
        ("[::]:7420", false, false),
        ("10.1.2.3:7420", false, false),
        ("0.0.0.0:7420", true, true),
    ];
    for (addr, insecure, allowed) in cases {
        let result = auth::allow_anonymous(addr.parse().expect("an address"), insecure);
        assert_eq!(result.is_ok(), allowed, "{addr} insecure={insecure}");
        if let Err(error) = result {
            assert!(error.to_string().contains(addr), "{error}");
            assert!(error.to_string().contains("--insecure"), "{error}");
        }
    }
}

#[test]
fn only_tls_or_loopback_takes_bearer_tokens_unless_told_it_is_insecure() {
    let cases = [
        ("127.0.0.1:7420", false, false, true),
        ("[::1]:7420", false, false, true),
        ("0.0.0.0:7420", true, false, true),
        ("10.1.2.3:7420", true, false, true),
        ("0.0.0.0:7420", false, false, false),
        ("[::]:7420", false, false, false),
        ("10.1.2.3:7420", false, false, false),
        ("0.0.0.0:7420", false, true, true),
    ];
    for (addr, tls, insecure, allowed) in cases {
        let result = auth::allow_bearer_tokens(addr.parse().expect("an address"), tls, insecure);
        assert_eq!(
            result.is_ok(),
            allowed,
            "{addr} tls={tls} insecure={insecure}"
        );
        if let Err(error) = result {
            for words in [addr, "--tls-cert", "--insecure", "plain HTTP/2"] {
                assert!(error.to_string().contains(words), "{error}");
            }
        }
    }
}

#[test]
fn a_request_that_never_passed_the_authenticator_is_unauthenticated() {
    use tonic::service::Interceptor;
    let status = auth::identity(&Request::new(())).expect_err("no identity was attached");
    assert_eq!(status.code(), Code::Unauthenticated);

    // Without a tokens file every caller is anonymous, with or without a token.
    let mut anonymous = Authenticator::anonymous();
    let mut request = Request::new(());
    request
        .metadata_mut()
        .insert("authorization", "Bearer whatever".parse().expect("ASCII"));
    let request = anonymous.call(request).expect("admitted");
    assert_eq!(
        *auth::identity(&request).expect("an identity"),
        Identity::anonymous()
    );
    assert!(request.metadata().get("authorization").is_none());
}

#[test]
fn a_token_hash_is_the_sha256_that_sha256sum_prints() {
    // `printf %s test | sha256sum`
    assert_eq!(
        auth::hash_token("test"),
        "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
    );
}

const ALICE: &str = "st_alice_7c0d5e1f9a2b4c6d";
const BOB: &str = "st_bob_0a1b2c3d4e5f6789";
const VIC: &str = "st_vic_5555aaaa6666bbbb";

fn tokens_yaml(entries: &[(&str, &[&str], &str)]) -> String {
    let mut yaml = "apiVersion: stagehand.dev/v1alpha1\nkind: Tokens\nidentities:\n".to_owned();
    for (name, groups, token) in entries {
        yaml.push_str(&format!(
            "  - name: {name}\n    email: {name}@example.com\n    groups: [{}]\n    tokenSha256: [{}]\n",
            groups.join(", "),
            auth::hash_token(token)
        ));
    }
    yaml
}

/// Replaces the file the way editors and Kubernetes do: a new file renamed over the old.
fn replace(file: &Path, text: &str) {
    let temp = file.with_extension("new");
    std::fs::write(&temp, text).expect("write the new tokens file");
    std::fs::rename(&temp, file).expect("replace the tokens file");
}

#[test]
fn the_tokens_file_maps_token_hashes_to_identities() -> TestResult {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("tokens.yaml");
    replace(
        &file,
        &tokens_yaml(&[
            ("alice", &["release-managers", "qa"], ALICE),
            ("bob", &[], BOB),
        ]),
    );
    let tokens = Tokens::load(&file)?;
    assert_eq!(tokens.identities(), 2);
    let alice = tokens.authenticate(ALICE).expect("alice's token is known");
    assert_eq!(*alice, identity("alice", &["release-managers", "qa"]));
    assert_eq!(
        tokens.authenticate(BOB).map(|i| i.name.clone()).as_deref(),
        Some("bob")
    );
    assert!(tokens.authenticate(VIC).is_none());
    // The hash itself is not a token.
    assert!(tokens.authenticate(&auth::hash_token(ALICE)).is_none());
    Ok(())
}

#[test]
fn a_changed_tokens_file_is_reloaded_and_an_invalid_or_missing_one_ends_every_token() -> TestResult
{
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("tokens.yaml");
    let valid = tokens_yaml(&[("bob", &["qa"], BOB)]);
    replace(&file, &tokens_yaml(&[("alice", &["qa"], ALICE)]));
    let tokens = Tokens::load(&file)?;
    assert!(!tokens.reload_if_changed()?, "nothing changed yet");

    replace(&file, &valid);
    assert!(tokens.reload_if_changed()?);
    assert!(
        tokens.authenticate(ALICE).is_none(),
        "alice's token was revoked"
    );
    assert!(tokens.authenticate(BOB).is_some());

    // A broken edit: nobody is let in until it is fixed, and the error names the field.
    replace(
        &file,
        "apiVersion: stagehand.dev/v1alpha1\nkind: Tokens\nidentities: 7\n",
    );
    let error = tokens
        .reload_if_changed()
        .expect_err("the new file is invalid");
    assert!(error.to_string().contains("identities"), "{error}");
    assert!(tokens.authenticate(BOB).is_none(), "fails closed");
    assert!(
        !tokens.reload_if_changed()?,
        "the same broken file is no news"
    );
    assert!(tokens.authenticate(BOB).is_none());
    replace(&file, &valid);
    assert!(tokens.reload_if_changed()?, "the fixed file is taken");
    assert!(tokens.authenticate(BOB).is_some());

    // Gone, or replaced by something that cannot be read: every token ends, on every check.
    std::fs::remove_file(&file)?;
    for _ in 0..2 {
        let error = tokens.reload_if_changed().expect_err("there is no file");
        assert!(error.to_string().contains("cannot read"), "{error}");
        assert!(tokens.authenticate(BOB).is_none(), "fails closed");
    }
    std::fs::create_dir(&file)?;
    tokens.reload_if_changed().expect_err("a directory");
    assert!(tokens.authenticate(BOB).is_none());
    std::fs::remove_dir(&file)?;
    replace(&file, &valid);
    assert!(
        tokens.reload_if_changed()?,
        "the same content as before is taken again"
    );
    assert!(tokens.authenticate(BOB).is_some());
    Ok(())
}

#[tokio::test]
async fn the_watcher_takes_a_changed_tokens_file_without_a_restart() -> TestResult {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("tokens.yaml");
    replace(&file, &tokens_yaml(&[("alice", &["qa"], ALICE)]));
    let tokens = Arc::new(Tokens::load(&file)?);
    let watcher = tokens.watch(Duration::from_millis(20));

    replace(
        &file,
        &tokens_yaml(&[("alice", &["qa"], ALICE), ("bob", &[], BOB)]),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while tokens.authenticate(BOB).is_none() {
        assert!(
            Instant::now() < deadline,
            "the changed file was never taken"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(tokens.authenticate(ALICE).is_some());
    watcher.abort();
    Ok(())
}

/// The watcher runs on this test's single thread, so the thread-local subscriber sees its logs.
#[tokio::test]
async fn the_watcher_logs_a_failing_tokens_file_at_error_level_once_per_failure() -> TestResult {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let logged = || String::from_utf8(captured.0.lock().expect("not poisoned").clone());
    let refusals = |logs: &str| {
        logs.lines()
            .filter(|l| l.contains("ERROR") && l.contains("every bearer token is refused"))
            .count()
    };

    let dir = tempfile::tempdir()?;
    let file = dir.path().join("tokens.yaml");
    let valid = tokens_yaml(&[("alice", &["qa"], ALICE)]);
    replace(&file, &valid);
    let tokens = Arc::new(Tokens::load(&file)?);
    let watcher = tokens.watch(Duration::from_millis(10));

    std::fs::remove_file(&file)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while tokens.authenticate(ALICE).is_some() {
        assert!(Instant::now() < deadline, "the removal was never noticed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Many more checks of the missing file: still one error.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let logs = logged()?;
    assert_eq!(refusals(&logs), 1, "{logs}");
    assert!(logs.contains("No such file"), "{logs}");

    // A different failure is news; the same broken content checked again is not.
    replace(&file, "kind: [\n");
    while refusals(&logged()?) < 2 {
        assert!(
            Instant::now() < deadline,
            "the broken file was never noticed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let logs = logged()?;
    assert_eq!(refusals(&logs), 2, "{logs}");
    assert!(tokens.authenticate(ALICE).is_none(), "fails closed");

    replace(&file, &valid);
    while tokens.authenticate(ALICE).is_none() {
        assert!(Instant::now() < deadline, "the fixed file was never taken");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    std::fs::remove_file(&file)?;
    while refusals(&logged()?) < 3 {
        assert!(
            Instant::now() < deadline,
            "a failure after a recovery is logged again"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    watcher.abort();
    Ok(())
}

#[test]
fn tokens_file_errors_name_the_field_and_never_the_value() -> TestResult {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("tokens.yaml");
    let cases = [
        // A token in clear where its hash belongs.
        (
            format!(
                "apiVersion: stagehand.dev/v1alpha1\nkind: Tokens\nidentities:\n  - name: alice\n    tokenSha256: [{ALICE}]\n"
            ),
            "field identities[0].tokenSha256[0]: is not a SHA-256 hash",
        ),
        // A token where a list belongs, which the YAML parser would quote.
        (
            format!(
                "apiVersion: stagehand.dev/v1alpha1\nkind: Tokens\nidentities:\n  - name: alice\n    groups: {ALICE}\n    tokenSha256: []\n"
            ),
            "not a valid tokens file at identities[0].groups (line 5",
        ),
        (
            format!(
                "apiVersion: stagehand.dev/v1alpha1\nkind: Tokens\nidentities:\n  - name: alice\n    token: {ALICE}\n    tokenSha256: []\n"
            ),
            "not a valid tokens file at identities[0]",
        ),
        (
            tokens_yaml(&[("alice", &[], ALICE), ("alice", &[], BOB)]),
            "field identities[1].name: \"alice\" is listed twice",
        ),
        (
            tokens_yaml(&[("alice", &[], ALICE), ("bob", &[], ALICE)]),
            "field identities[1].tokenSha256[0]: the same hash is listed for \"alice\" already",
        ),
        // The audit log and promotion commits name the service itself so.
        (
            tokens_yaml(&[("alice", &[], ALICE), ("Stagehand", &[], BOB)]),
            "field identities[1].name: \"Stagehand\" is reserved",
        ),
    ];
    for (yaml, expected) in cases {
        replace(&file, &yaml);
        let error = match Tokens::load(&file) {
            Ok(_) => panic!("loaded an invalid tokens file:\n{yaml}"),
            Err(error) => error,
        };
        let shown = format!("{error} / {error:?}");
        assert!(shown.contains(&file.display().to_string()), "{shown}");
        assert!(shown.contains(expected), "{shown}\n  expected {expected}");
        for secret in [ALICE, BOB, &auth::hash_token(ALICE), &auth::hash_token(BOB)] {
            assert!(
                !shown.contains(secret),
                "the error shows a token or hash: {shown}"
            );
        }
    }
    Ok(())
}

/// A stand-in for the real handlers: answers who called and checks permissions as they will.
struct Guarded {
    policy: AccessPolicy,
}

type EnvironmentStream = Pin<Box<dyn Stream<Item = Result<proto::Environment, Status>> + Send>>;

#[tonic::async_trait]
impl EnvironmentService for Guarded {
    async fn list_environments(
        &self,
        _: Request<proto::ListEnvironmentsRequest>,
    ) -> Result<Response<proto::ListEnvironmentsResponse>, Status> {
        Err(Status::unimplemented("not in this test"))
    }

    async fn get_environment(
        &self,
        request: Request<proto::GetEnvironmentRequest>,
    ) -> Result<Response<proto::Environment>, Status> {
        let name = request.get_ref().name.clone();
        let who = auth::require(&request, &self.policy, &name, Permission::View, || {
            Status::not_found("no such environment")
        })?;
        // The handler sees the identity, and no longer the token.
        assert!(request.metadata().get("authorization").is_none());
        Ok(Response::new(proto::Environment {
            name,
            promotes_from: who.name.clone(),
            ..proto::Environment::default()
        }))
    }

    async fn sync_environment(
        &self,
        request: Request<proto::SyncEnvironmentRequest>,
    ) -> Result<Response<proto::SyncEnvironmentResponse>, Status> {
        auth::require(
            &request,
            &self.policy,
            &request.get_ref().name,
            Permission::Sync,
            || Status::not_found("no such environment"),
        )?;
        Ok(Response::new(proto::SyncEnvironmentResponse::default()))
    }

    async fn diff_environment(
        &self,
        _: Request<proto::DiffEnvironmentRequest>,
    ) -> Result<Response<proto::DiffEnvironmentResponse>, Status> {
        Err(Status::unimplemented("not in this test"))
    }

    async fn suspend_environment(
        &self,
        _: Request<proto::SuspendEnvironmentRequest>,
    ) -> Result<Response<proto::Environment>, Status> {
        Err(Status::unimplemented("not in this test"))
    }

    async fn resume_environment(
        &self,
        _: Request<proto::ResumeEnvironmentRequest>,
    ) -> Result<Response<proto::Environment>, Status> {
        Err(Status::unimplemented("not in this test"))
    }

    async fn list_revisions(
        &self,
        _: Request<proto::ListRevisionsRequest>,
    ) -> Result<Response<proto::ListRevisionsResponse>, Status> {
        Err(Status::unimplemented("not in this test"))
    }

    type WatchEnvironmentsStream = EnvironmentStream;

    async fn watch_environments(
        &self,
        _: Request<proto::WatchEnvironmentsRequest>,
    ) -> Result<Response<Self::WatchEnvironmentsStream>, Status> {
        Err(Status::unimplemented("not in this test"))
    }

    async fn list_image_sources(
        &self,
        _: Request<proto::ListImageSourcesRequest>,
    ) -> Result<Response<proto::ListImageSourcesResponse>, Status> {
        Err(Status::unimplemented("not in this test"))
    }
}

/// Serves [`Guarded`] behind the authenticator over an in-process duplex pipe.
async fn serve_in_process(tokens_file: &Path) -> Result<Channel, Box<dyn std::error::Error>> {
    let tokens = Arc::new(Tokens::load(tokens_file)?);
    let service = EnvironmentServiceServer::with_interceptor(
        Guarded { policy: policy() },
        Authenticator::new(tokens),
    );
    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    tokio::spawn(
        Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::once(Ok::<_, std::io::Error>(server_io))),
    );
    let mut client_io = Some(client_io);
    let channel = Endpoint::try_from("http://in-process.invalid")?
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let io = client_io.take();
            async move {
                io.map(TokioIo::new)
                    .ok_or_else(|| std::io::Error::other("the in-process pipe connects once"))
            }
        }))
        .await?;
    Ok(channel)
}

fn tokens_file(dir: &Path) -> std::path::PathBuf {
    let file = dir.join("tokens.yaml");
    replace(
        &file,
        &tokens_yaml(&[
            ("alice", &["release-managers"], ALICE),
            ("vic", &["developers"], VIC),
        ]),
    );
    file
}

fn get(name: &str) -> proto::GetEnvironmentRequest {
    proto::GetEnvironmentRequest {
        name: name.to_owned(),
    }
}

/// Runs the three kinds of caller against one server: no token, an unknown token, and valid
/// tokens with and without the permission. Returns the status codes seen, in order.
async fn exercise(channel: Channel) -> Result<Vec<(String, Code)>, Box<dyn std::error::Error>> {
    let mut seen = Vec::new();
    let code = |result: Result<_, Status>| match result {
        Ok(_) => Code::Ok,
        Err(status) => status.code(),
    };

    let mut anonymous = EnvironmentServiceClient::new(channel.clone());
    seen.push((
        "no token".to_owned(),
        code(anonymous.get_environment(get("prod")).await),
    ));

    let unknown = BearerToken::new("st_mallory_0000000000000000").expect("a valid token");
    let mut mallory = EnvironmentServiceClient::with_interceptor(channel.clone(), unknown);
    seen.push((
        "unknown token".to_owned(),
        code(mallory.get_environment(get("prod")).await),
    ));

    let mut alice = EnvironmentServiceClient::with_interceptor(
        channel.clone(),
        BearerToken::new(ALICE).expect("a valid token"),
    );
    let answer = alice.get_environment(get("prod")).await?.into_inner();
    assert_eq!(answer.promotes_from, "alice", "the handler saw alice");
    seen.push(("alice views prod".to_owned(), Code::Ok));

    let mut vic = EnvironmentServiceClient::with_interceptor(
        channel,
        BearerToken::new(VIC).expect("a valid token"),
    );
    seen.push((
        "vic views prod".to_owned(),
        code(vic.get_environment(get("prod")).await),
    ));
    let denied = vic
        .sync_environment(proto::SyncEnvironmentRequest {
            name: "prod".to_owned(),
            ..proto::SyncEnvironmentRequest::default()
        })
        .await
        .expect_err("a viewer may not sync prod");
    assert!(
        denied
            .message()
            .contains("permission \"sync\" on environment \"prod\""),
        "{}",
        denied.message()
    );
    seen.push(("vic syncs prod".to_owned(), denied.code()));
    Ok(seen)
}

#[tokio::test]
async fn the_interceptor_admits_known_tokens_and_refuses_the_rest() -> TestResult {
    let dir = tempfile::tempdir()?;
    let channel = serve_in_process(&tokens_file(dir.path())).await?;
    let seen = exercise(channel).await?;
    let expected = [
        ("no token", Code::Unauthenticated),
        ("unknown token", Code::Unauthenticated),
        ("alice views prod", Code::Ok),
        ("vic views prod", Code::Ok),
        ("vic syncs prod", Code::PermissionDenied),
    ];
    let seen: Vec<_> = seen
        .iter()
        .map(|(what, code)| (what.as_str(), *code))
        .collect();
    assert_eq!(seen, expected);
    Ok(())
}

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .expect("the log buffer is not poisoned")
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Every crate logs at TRACE into a buffer (the test runtime has one thread, so the
/// thread-local subscriber sees the server, the client and the interceptor).
#[tokio::test]
async fn no_token_appears_in_the_logs_even_at_trace_level() -> TestResult {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let dir = tempfile::tempdir()?;
    let channel = serve_in_process(&tokens_file(dir.path())).await?;
    exercise(channel).await?;

    let logs = String::from_utf8(captured.0.lock().expect("not poisoned").clone())?;
    assert!(
        logs.contains("refused an unauthenticated call") && logs.contains("authenticated a call"),
        "the logs were captured:\n{logs}"
    );
    for secret in [ALICE, VIC, "st_mallory_0000000000000000"] {
        assert!(!logs.contains(secret), "a token appears in the logs");
    }
    Ok(())
}
