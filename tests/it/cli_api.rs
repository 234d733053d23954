//! The CLI over the API: `stagehand status` and `stagehand env …` against a real
//! `stagehand serve` (real apiserver, Git remote over HTTP), with bearer tokens and over TLS.

use std::io::BufRead as _;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

use crate::service::{Fixture, eventually, start_server_with, value_in};
use crate::support::cluster::cluster;

/// What one CLI run ended with.
pub(crate) struct Run {
    pub(crate) code: i32,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

impl Run {
    pub(crate) fn json(&self) -> Value {
        assert_eq!(self.code, 0, "the CLI failed: {}", self.stderr);
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.stdout))
    }
}

pub(crate) fn command(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_stagehand"));
    command
        .args(args)
        .env_remove("STAGEHAND_SERVER")
        .env_remove("STAGEHAND_TOKEN")
        .env_remove("STAGEHAND_TOKEN_FILE");
    command
}

pub(crate) fn run_with(mut command: Command) -> Run {
    let Output {
        status,
        stdout,
        stderr,
    } = command.output().expect("the CLI runs");
    Run {
        code: status
            .code()
            .expect("the CLI exits rather than being killed"),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    }
}

/// `stagehand ARGS --server SERVER`.
fn cli(server: &str, args: &[&str]) -> Run {
    let mut command = command(args);
    command.args(["--server", server]);
    run_with(command)
}

/// Lines a child prints, read on a thread so that a test can wait for the one it expects.
fn lines_of(stdout: std::process::ChildStdout) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// The next line that satisfies `wanted`; the bound only catches a watch that never prints it.
fn line_where(
    lines: &mpsc::Receiver<String>,
    what: &str,
    wanted: impl Fn(&Value) -> bool,
) -> Value {
    loop {
        let line = lines
            .recv_timeout(Duration::from_secs(90))
            .unwrap_or_else(|_| panic!("never printed: {what}"));
        let value: Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        if wanted(&value) {
            return value;
        }
    }
}

fn environment<'a>(list: &'a Value, name: &str) -> &'a Value {
    list["environments"]
        .as_array()
        .expect("a list of environments")
        .iter()
        .find(|e| e["name"] == name)
        .unwrap_or_else(|| panic!("{name} missing from {list}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_shows_syncs_suspends_resumes_and_watches_the_environments_of_a_running_server() {
    let kube = cluster().client().await;
    let fx = Fixture::new(&kube).await;
    let [dev_ns, staging_ns, _] = fx.namespaces.clone();
    let server = start_server_with(&fx.pipeline, &fx.state, &fx.secret, &[]);
    let url = &server.grpc.clone();
    eventually("dev applied at start", || async {
        value_in(&kube, &dev_ns).await.as_deref() == Some("dev-1")
    })
    .await;
    eventually("dev reports its first pass", || async {
        cli(url, &["status", "dev", "-o", "json"]).json()["status"]["reason"] == "succeeded"
    })
    .await;

    // Every environment, in pipeline order, with the gRPC messages' names.
    let all = cli(url, &["status", "-o", "json"]).json();
    let names: Vec<&str> = all["environments"]
        .as_array()
        .expect("environments")
        .iter()
        .filter_map(|e| e["name"].as_str())
        .collect();
    assert_eq!(names, ["failing", "broken", "dev", "staging", "prod"]);
    let dev = &environment(&all, "dev")["status"];
    assert_eq!(
        dev["appliedRevision"].as_str().map(str::len),
        Some(40),
        "{dev}"
    );
    assert_eq!(dev["desiredRevision"], dev["appliedRevision"]);
    assert_eq!(dev["health"], "Healthy");
    assert_eq!(dev["suspended"], false);
    assert!(
        dev["lastSyncTime"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z')),
        "{dev}"
    );
    let staging = &environment(&all, "staging")["status"];
    assert_eq!(staging["outOfSync"], true, "manual mode waits: {staging}");
    assert_eq!(environment(&all, "staging")["sync"]["auto"], false);
    // The same in YAML, and a table for people (no colours off a terminal).
    let yaml: Value = serde_yaml_ng::from_str(&cli(url, &["status", "-o", "yaml"]).stdout)
        .expect("status -o yaml is YAML");
    assert_eq!(yaml["pipeline"], all["pipeline"]);
    let table = cli(url, &["status", "-o", "table"]);
    assert!(
        table.stdout.starts_with("NAME     DESIRED  APPLIED  SYNC"),
        "{}",
        table.stdout
    );
    assert!(!table.stdout.contains('\x1b'), "{}", table.stdout);

    // A manual environment syncs on request; --wait reports the pass and its progress.
    let synced = cli(url, &["env", "sync", "staging", "--wait", "-o", "json"]);
    let status = &synced.json()["status"];
    assert_eq!(status["reason"], "succeeded", "{status}");
    assert_eq!(status["outOfSync"], false);
    assert!(
        synced.stderr.contains("staging"),
        "progress: {}",
        synced.stderr
    );
    assert_eq!(
        value_in(&kube, &staging_ns).await.as_deref(),
        Some("staging-1")
    );
    // A pass that fails exits 1 and still prints the status that says why.
    let failed = cli(url, &["env", "sync", "failing", "--wait", "-o", "json"]);
    assert_eq!(failed.code, 1, "{}", failed.stderr);
    let status: Value = serde_json::from_str(&failed.stdout).expect("the status as JSON");
    assert_eq!(status["status"]["reason"], "source_failed", "{status}");
    assert!(
        failed.stderr.contains("the sync pass of failing failed"),
        "{}",
        failed.stderr
    );
    // An unknown environment: NOT_FOUND, exit 20 + 5.
    let unknown = cli(url, &["env", "sync", "qa"]);
    assert_eq!(unknown.code, 25, "{}", unknown.stderr);
    assert!(
        unknown.stderr.contains("SyncEnvironment: NOT_FOUND") && unknown.stderr.contains("\"qa\""),
        "{}",
        unknown.stderr
    );

    // A watch prints the current state, then a line per change.
    let mut watch = command(&["env", "watch", "dev", "-o", "json", "--server", url])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("env watch starts");
    let lines = lines_of(watch.stdout.take().expect("piped stdout"));
    let first = line_where(&lines, "dev's current state", |_| true);
    assert_eq!(first["name"], "dev");
    let before = first["status"]["appliedRevision"].clone();
    let pushed = fx.push_dev("dev-cli-2");
    let synced = cli(
        url,
        &["env", "sync", "dev", "--fetch", "--wait", "-o", "json"],
    )
    .json();
    assert_eq!(synced["status"]["appliedRevision"], pushed.as_str());
    assert_eq!(value_in(&kube, &dev_ns).await.as_deref(), Some("dev-cli-2"));
    let changed = line_where(&lines, "dev applying the pushed commit", |env| {
        env["status"]["appliedRevision"] == pushed.as_str()
    });
    assert_eq!(changed["name"], "dev");
    let _ = watch.kill();
    let _ = watch.wait();
    // dev's commit left staging's directory as it was: staging lacks nothing.
    let staging = cli(url, &["status", "staging", "-o", "json"]).json();
    assert_eq!(staging["status"]["outOfSync"], false, "{staging}");
    assert_ne!(
        staging["status"]["desiredRevision"],
        staging["status"]["appliedRevision"]
    );

    // History: the pushed commit runs, and each revision says when it was applied.
    let history = cli(url, &["env", "history", "dev", "-o", "json"]).json();
    let revisions = history["revisions"].as_array().expect("revisions");
    assert_eq!(revisions.len(), 2, "{history}");
    assert_eq!(revisions[0]["commit"], pushed.as_str());
    assert_eq!(revisions[0]["applied"], true);
    assert_eq!(revisions[1]["commit"], before);
    assert_eq!(revisions[1]["applied"], false);
    for revision in revisions {
        let applied = revision["syncs"]
            .as_array()
            .expect("syncs")
            .iter()
            .find(|s| s["applied"] == true)
            .unwrap_or_else(|| panic!("no applied sync: {revision}"));
        assert_eq!(applied["result"], "succeeded");
        assert!(applied["endTime"].is_string(), "{applied}");
    }

    // Suspend and resume, observed through status; a suspended environment refuses a sync.
    let suspended = cli(
        url,
        &[
            "env", "suspend", "dev", "--reason", "cli test", "-o", "json",
        ],
    )
    .json();
    assert_eq!(suspended["status"]["suspended"], true, "{suspended}");
    let all = cli(url, &["status", "-o", "json"]).json();
    assert_eq!(environment(&all, "dev")["status"]["suspended"], true);
    let refused = cli(url, &["env", "sync", "dev"]);
    assert_eq!(refused.code, 29, "FAILED_PRECONDITION: {}", refused.stderr);
    assert!(
        refused.stderr.contains("FAILED_PRECONDITION"),
        "{}",
        refused.stderr
    );
    let resumed = cli(url, &["env", "resume", "dev", "-o", "json"]).json();
    assert_eq!(resumed["status"]["suspended"], false, "{resumed}");
    let all = cli(url, &["status", "-o", "json"]).json();
    assert_eq!(environment(&all, "dev")["status"]["suspended"], false);
    drop(server);

    // Nothing listens there any more: UNAVAILABLE's exit code and a hint.
    let gone = cli(url, &["status"]);
    assert_eq!(gone.code, 34, "{}", gone.stderr);
    assert!(
        gone.stderr.contains("cannot reach stagehand at"),
        "{}",
        gone.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn against_a_token_protected_server_the_cli_needs_a_token_and_the_permission() {
    let kube = cluster().client().await;
    let fx = Fixture::new(&kube).await;
    const VIEWER: &str = "cli-viewer-token-3c9e";
    let tokens = fx.state.join("tokens.yaml");
    std::fs::write(
        &tokens,
        format!(
            "apiVersion: stagehand.dev/v1alpha1
kind: Tokens
identities:
  - {{name: vera, email: vera@example.test, groups: [viewers], tokenSha256: [{}]}}
",
            stagehand::api::auth::hash_token(VIEWER)
        ),
    )
    .expect("tokens file");
    let text = std::fs::read_to_string(&fx.pipeline).expect("pipeline");
    std::fs::write(
        &fx.pipeline,
        text + "  access:\n    - {groups: [viewers], environments: [\"*\"], permissions: [view]}\n",
    )
    .expect("pipeline with access rules");
    let tokens_arg = tokens.display().to_string();
    let server = start_server_with(
        &fx.pipeline,
        &fx.state,
        &fx.secret,
        &["--tokens-file", &tokens_arg],
    );
    let url = server.grpc.as_str();

    let anonymous = cli(url, &["status", "-o", "json"]);
    assert_eq!(anonymous.code, 36, "UNAUTHENTICATED: {}", anonymous.stderr);
    assert!(
        anonymous
            .stderr
            .contains("ListEnvironments: UNAUTHENTICATED")
            && anonymous.stderr.contains("--token-file"),
        "{}",
        anonymous.stderr
    );
    let token_file = fx.state.join("viewer-token");
    std::fs::write(&token_file, format!("{VIEWER}\n")).expect("token file");
    let seen = cli(
        url,
        &[
            "status",
            "-o",
            "json",
            "--token-file",
            &token_file.display().to_string(),
        ],
    )
    .json();
    assert_eq!(seen["environments"].as_array().map(Vec::len), Some(5));
    // The token from the variable; a viewer may not sync.
    let mut sync = command(&["env", "sync", "dev", "--server", url]);
    sync.env("STAGEHAND_TOKEN", VIEWER);
    let denied = run_with(sync);
    assert_eq!(denied.code, 27, "PERMISSION_DENIED: {}", denied.stderr);
    assert!(
        denied.stderr.contains("PERMISSION_DENIED") && denied.stderr.contains("\"sync\""),
        "{}",
        denied.stderr
    );
    assert!(
        !denied.stderr.contains(VIEWER),
        "the token is never printed"
    );
}

/// Runs the `openssl` binary in `dir`.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl runs (scripts/setup.sh installs it)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, a server certificate for 127.0.0.1 and localhost and a client certificate, both
/// signed by the CA: `ca.pem`, `server.pem`/`server.key`, `client.pem`/`client.key`.
pub(crate) fn certificates(dir: &Path) {
    let p256 = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    let mut ca = vec![
        "req",
        "-x509",
        "-days",
        "2",
        "-subj",
        "/CN=stagehand test CA",
    ];
    ca.extend(p256);
    ca.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign",
    ]);
    openssl(dir, &ca);
    for (name, extensions) in [
        (
            "server",
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
        ),
        ("client", "extendedKeyUsage=clientAuth\n"),
    ] {
        let mut request = vec!["req", "-subj"];
        let subject = format!("/CN=stagehand test {name}");
        let key = format!("{name}.key");
        let csr = format!("{name}.csr");
        request.push(&subject);
        request.extend(p256);
        request.extend(["-keyout", &key, "-out", &csr]);
        openssl(dir, &request);
        let ext = format!("{name}.ext");
        std::fs::write(dir.join(&ext), extensions).expect("extensions file");
        let pem = format!("{name}.pem");
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                &ext,
                "-out",
                &pem,
            ],
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_the_cli_trusts_only_the_given_ca_and_mtls_refuses_clients_without_a_certificate()
{
    let kube = cluster().client().await;
    let fx = Fixture::new(&kube).await;
    let certs = fx.state.join("certs");
    std::fs::create_dir_all(&certs).expect("certs dir");
    certificates(&certs);
    let file = |name: &str| certs.join(name).display().to_string();
    let (ca, cert, key) = (file("ca.pem"), file("server.pem"), file("server.key"));
    let https = |server: &crate::service::Server| server.grpc.replace("http://", "https://");

    let server = start_server_with(
        &fx.pipeline,
        &fx.state,
        &fx.secret,
        &["--tls-cert", &cert, "--tls-key", &key],
    );
    let url = https(&server);
    let trusted = cli(&url, &["status", "-o", "json", "--ca-file", &ca]).json();
    assert_eq!(trusted["environments"].as_array().map(Vec::len), Some(5));
    let untrusted = cli(&url, &["status", "-o", "json"]);
    assert_eq!(untrusted.code, 34, "{}", untrusted.stderr);
    assert!(
        untrusted.stderr.contains("cannot reach stagehand at")
            && untrusted.stderr.contains("UnknownIssuer"),
        "{}",
        untrusted.stderr
    );
    // Plain HTTP/2 to a TLS listener does not get an answer either.
    let plain = cli(&server.grpc, &["status", "-o", "json"]);
    assert_ne!(plain.code, 0, "{}", plain.stdout);
    drop(server);

    let server = start_server_with(
        &fx.pipeline,
        &fx.state,
        &fx.secret,
        &["--tls-cert", &cert, "--tls-key", &key, "--client-ca", &ca],
    );
    let url = https(&server);
    let anonymous = cli(&url, &["status", "-o", "json", "--ca-file", &ca]);
    assert_ne!(anonymous.code, 0, "a client without a certificate got in");
    assert!(
        anonymous.stderr.to_lowercase().contains("certificate"),
        "{}",
        anonymous.stderr
    );
    let (client_cert, client_key) = (file("client.pem"), file("client.key"));
    let with_cert = cli(
        &url,
        &[
            "status",
            "-o",
            "json",
            "--ca-file",
            &ca,
            "--client-cert",
            &client_cert,
            "--client-key",
            &client_key,
        ],
    )
    .json();
    assert_eq!(with_cert["environments"].as_array().map(Vec::len), Some(5));
}

#[test]
fn serve_refuses_a_tls_key_it_cannot_use_before_it_listens() {
    let dir = tempfile::tempdir().expect("temp dir");
    certificates(dir.path());
    let pipeline = dir.path().join("pipeline.yaml");
    std::fs::write(
        &pipeline,
        "apiVersion: stagehand.dev/v1alpha1\nkind: Pipeline\nmetadata: {name: tls}\nspec:\n  environments:\n    - {name: dev, source: {overlay: dev}}\n",
    )
    .expect("pipeline");
    std::fs::write(dir.path().join("garbage.key"), "not a key\n").expect("key file");
    let mut serve = command(&["serve", "--listen", "127.0.0.1:0", "--tls-key"]);
    serve
        .arg(dir.path().join("garbage.key"))
        .arg("--tls-cert")
        .arg(dir.path().join("server.pem"))
        .arg("--pipeline")
        .arg(&pipeline)
        .arg("--state-dir")
        .arg(dir.path().join("state"));
    let refused = run_with(serve);
    assert_eq!(refused.code, 1, "{}", refused.stderr);
    assert!(
        !refused.stdout.contains("listening on"),
        "{}",
        refused.stdout
    );
    assert!(
        refused.stderr.contains("--tls-cert") && refused.stderr.contains("garbage.key"),
        "{}",
        refused.stderr
    );
}
