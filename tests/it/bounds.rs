//! Bounded by design: the real `stagehand serve` attacked over TCP by clients that send random
//! gRPC paths, trickle requests in, open too many connections or watches, hold watches after
//! losing their permission, flood it with bad tokens, ask for huge histories or send reasons
//! that could forge log lines. Each test shows the attack refused and the service unchanged,
//! and prints the server's resident memory before and after (for the note; memory is
//! not asserted, as it depends on the allocator and the machine).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use stagehand::api::auth::hash_token;
use stagehand::proto;
use stagehand::proto::environment_service_client::EnvironmentServiceClient;
use tonic::transport::{Channel, Endpoint};

use crate::service::{eventually, start_server_with, with_token};
use crate::support::cluster::cluster;
use crate::support::git::{bare_remote, git};
use crate::support::git_http::GitHttpServer;

/// In group `viewers`, which may view every environment.
const VERA: &str = "vera-token-bounds-51c2";
/// Also in `viewers`; the tests take her out of it.
const OTTO: &str = "otto-token-bounds-7d04";
/// In no group that any rule names.
const NICK: &str = "nick-token-bounds-e93b";

const ACCESS: &str =
    "  access:\n    - {groups: [viewers], environments: [\"*\"], permissions: [view]}\n";

fn pipeline(repository: Option<&str>) -> String {
    let repository = repository
        .map(|url| format!("  repository: {{url: {url}, branch: main}}\n"))
        .unwrap_or_default();
    format!(
        "apiVersion: stagehand.dev/v1alpha1
kind: Pipeline
metadata: {{name: shop}}
spec:
{repository}  environments:
    - name: dev
      source: {{overlay: environments/dev}}
      sync: {{interval: 1h}}
    - name: staging
      promotesFrom: dev
      source: {{overlay: environments/staging}}
      sync: {{interval: 1h}}
{ACCESS}"
    )
}

fn tokens(otto_groups: &str) -> String {
    format!(
        "apiVersion: stagehand.dev/v1alpha1
kind: Tokens
identities:
  - {{name: vera, email: vera@example.test, groups: [viewers], tokenSha256: [{}]}}
  - {{name: otto, email: otto@example.test, groups: [{otto_groups}], tokenSha256: [{}]}}
  - {{name: nick, email: nick@example.test, groups: [strangers], tokenSha256: [{}]}}
",
        hash_token(VERA),
        hash_token(OTTO),
        hash_token(NICK)
    )
}

/// `stagehand serve` with a tokens file, both listeners on loopback and a JSON log.
struct Served {
    child: Child,
    grpc: SocketAddr,
    http: SocketAddr,
    dir: tempfile::TempDir,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Served {
    fn start(extra: &[&str]) -> Self {
        Self::start_with(&pipeline(None), extra)
    }

    fn start_with(pipeline: &str, extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("pipeline.yaml"), pipeline).expect("pipeline");
        std::fs::write(dir.path().join("tokens.yaml"), tokens("viewers")).expect("tokens");
        let mut child = Command::new(env!("CARGO_BIN_EXE_stagehand"))
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--http-listen",
                "127.0.0.1:0",
            ])
            .args(["--log-format", "json"])
            .arg("--pipeline")
            .arg(dir.path().join("pipeline.yaml"))
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .arg("--tokens-file")
            .arg(dir.path().join("tokens.yaml"))
            .args(extra)
            .env("KUBECONFIG", dir.path().join("no-kubeconfig"))
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(dir.path().join("server.log")).expect("log file"))
            .spawn()
            .expect("stagehand serve starts");
        let mut stdout = std::io::BufReader::new(child.stdout.take().expect("piped stdout"));
        let (mut grpc, mut http) = (None, None);
        while grpc.is_none() || http.is_none() {
            let mut line = String::new();
            let read =
                std::io::BufRead::read_line(&mut stdout, &mut line).expect("stdout readable");
            assert!(read > 0, "serve exited before listening");
            if let Some(addr) = line.trim().strip_prefix("http listening on ") {
                http = Some(addr.parse().expect("an address"));
            } else if let Some(addr) = line.trim().strip_prefix("listening on ") {
                grpc = Some(addr.parse().expect("an address"));
            }
        }
        Self {
            child,
            grpc: grpc.expect("read above"),
            http: http.expect("read above"),
            dir,
        }
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    async fn channel(&self) -> Channel {
        Endpoint::from_shared(format!("http://{}", self.grpc))
            .expect("a URL")
            .connect()
            .await
            .expect("gRPC reachable")
    }

    async fn environments(&self) -> EnvironmentServiceClient<Channel> {
        EnvironmentServiceClient::new(self.channel().await)
    }

    /// The server's resident set size in KiB, from /proc.
    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("the server's /proc status");
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("a VmRSS line")
    }

    /// `/metrics` as the HTTP listener serves it.
    fn metrics(&self) -> String {
        let (status, body) = http_get(self.http, "/metrics");
        assert_eq!(status, 200, "{body}");
        body
    }

    fn log_lines_with(&self, message: &str) -> Vec<String> {
        std::fs::read_to_string(self.file("server.log"))
            .expect("server log")
            .lines()
            .filter(|line| line.contains(message))
            .map(str::to_owned)
            .collect()
    }
}

/// One HTTP/1.1 GET: the status code and the body.
fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).expect("HTTP listener reachable");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("request sent");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("response read");
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {response:?}"));
    (status, body.to_owned())
}

/// Whether the server closes `stream` within `bound` (the bound only catches a server that
/// never does); whatever the server sends before closing is read and dropped.
fn closed_within(stream: &mut TcpStream, bound: Duration) -> bool {
    let deadline = Instant::now() + bound;
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        stream.set_read_timeout(Some(left)).expect("timeout set");
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return false;
            }
            Err(_) => return true,
        }
    }
}

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Speaks HTTP/2 on `stream` as far as the settings: sends the preface and empty SETTINGS,
/// returns the parameters of the server's SETTINGS frame, or `None` when the server closed
/// the connection first.
fn server_settings(stream: &mut TcpStream) -> Option<Vec<(u16, u32)>> {
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout set");
    let empty_settings = [0, 0, 0, 4, 0, 0, 0, 0, 0];
    if stream.write_all(PREFACE).is_err() || stream.write_all(&empty_settings).is_err() {
        return None;
    }
    loop {
        let mut header = [0u8; 9];
        stream.read_exact(&mut header).ok()?;
        let len =
            usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]);
        let mut payload = vec![0u8; len];
        stream.read_exact(&mut payload).ok()?;
        let (kind, flags) = (header[3], header[4]);
        if kind == 4 && flags & 1 == 0 {
            return Some(
                payload
                    .chunks_exact(6)
                    .map(|p| {
                        (
                            u16::from_be_bytes([p[0], p[1]]),
                            u32::from_be_bytes([p[2], p[3], p[4], p[5]]),
                        )
                    })
                    .collect(),
            );
        }
    }
}

/// `n` unary calls to paths no server serves, half of them under a real service's name.
async fn random_calls(channel: &Channel, n: usize, round: &str) {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    for i in 0..n {
        grpc.ready().await.expect("the channel is ready");
        let path = if i % 2 == 0 {
            format!("/stagehand.v1.EnvironmentService/Probe{round}{i}")
        } else {
            format!("/probe{round}{i}.Random/Call")
        };
        let status = grpc
            .unary::<(), (), _>(
                with_token(VERA, ()),
                path.parse().expect("a path"),
                tonic_prost::ProstCodec::default(),
            )
            .await
            .expect_err("no such method");
        assert_eq!(
            status.code(),
            tonic::Code::Unimplemented,
            "{path}: {status:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_to_random_paths_count_under_one_unknown_method_and_do_not_grow_metrics() {
    let server = Served::start(&[]);
    let channel = server.channel().await;
    let rss_before = server.rss_kib();
    random_calls(&channel, 10, "a").await;
    let after_ten = server.metrics();
    random_calls(&channel, 1000, "b").await;
    let after_thousand = server.metrics();
    let rss_after = server.rss_kib();
    eprintln!(
        "RSS of the server: {rss_before} KiB before, {rss_after} KiB after 1,010 calls to random paths"
    );

    assert!(
        !after_thousand.contains("Probe") && !after_thousand.contains("Random"),
        "a path from a request became a label:\n{after_thousand}"
    );
    let unknown: Vec<&str> = after_thousand
        .lines()
        .filter(|l| l.contains("_count{") && l.contains("method=\"unknown\""))
        .collect();
    assert_eq!(
        unknown.len(),
        1,
        "one series for every unknown method: {unknown:?}"
    );
    assert!(unknown[0].ends_with(" 1010"), "{unknown:?}");
    assert_eq!(
        after_ten.lines().count(),
        after_thousand.lines().count(),
        "/metrics has as many lines after 1,010 random paths as after 10"
    );
}

#[test]
fn the_grpc_listener_advertises_a_limit_on_concurrent_streams() {
    let server = Served::start(&[]);
    let mut probe = TcpStream::connect(server.grpc).expect("gRPC listener reachable");
    let settings = server_settings(&mut probe).expect("the server answers the preface");
    let max_streams = settings.iter().find(|(id, _)| *id == 3).map(|(_, v)| *v);
    assert_eq!(
        max_streams,
        Some(stagehand::api::limits::MAX_CONCURRENT_STREAMS),
        "SETTINGS_MAX_CONCURRENT_STREAMS in {settings:?}"
    );
}

#[test]
fn the_grpc_listener_closes_connections_that_never_complete_a_request() {
    let server = Served::start(&[]);
    let rss_before = server.rss_kib();
    // Slowloris: half a preface, then nothing.
    let mut slow = TcpStream::connect(server.grpc).expect("gRPC listener reachable");
    slow.write_all(&PREFACE[..10]).expect("half a preface sent");
    // The preface and the settings, but never a request.
    let mut idle = TcpStream::connect(server.grpc).expect("gRPC listener reachable");
    server_settings(&mut idle).expect("the server answers the preface");
    assert!(
        closed_within(&mut slow, Duration::from_secs(30)),
        "a connection that never sent a whole preface is still open after 30 s"
    );
    assert!(
        closed_within(&mut idle, Duration::from_secs(30)),
        "a connection that never sent a request is still open after 30 s"
    );
    eprintln!(
        "RSS of the server: {rss_before} KiB before, {} KiB after the slow gRPC clients",
        server.rss_kib()
    );
}

#[test]
fn the_http_listener_closes_a_connection_whose_request_headers_never_end() {
    let server = Served::start(&[]);
    let mut slow = TcpStream::connect(server.http).expect("HTTP listener reachable");
    slow.write_all(b"GET /metrics HTTP/1.1\r\nHost: stagehand\r\nX-Slow: ")
        .expect("half a request sent");
    assert!(
        closed_within(&mut slow, Duration::from_secs(25)),
        "a connection with half a request is still open after 25 s"
    );
    assert_eq!(
        http_get(server.http, "/healthz").0,
        200,
        "others are still served"
    );
}

#[test]
fn connections_past_the_per_peer_limit_are_closed_on_both_listeners_until_one_ends() {
    let server = Served::start(&[]);
    let rss_before = server.rss_kib();
    let limit = stagehand::api::limits::CONNECTIONS_PER_PEER;
    assert_eq!(limit, 64, "the documented default");

    // Clients that made a call: the header timeout does not close their connections.
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let mut held: Vec<Channel> = runtime.block_on(async {
        let mut held = Vec::new();
        for _ in 0..limit {
            let channel = server.channel().await;
            EnvironmentServiceClient::new(channel.clone())
                .get_environment(with_token(
                    VERA,
                    proto::GetEnvironmentRequest { name: "dev".into() },
                ))
                .await
                .expect("a connection within the limit is served");
            held.push(channel);
        }
        held
    });
    for _ in 0..50 {
        let mut extra = TcpStream::connect(server.grpc).expect("the port accepts");
        assert_eq!(
            server_settings(&mut extra),
            None,
            "a connection past the limit is closed"
        );
    }
    drop(held.pop());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut again = TcpStream::connect(server.grpc).expect("the port accepts");
        if server_settings(&mut again).is_some() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the slot of a closed connection never came back"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let request = format!("GET /healthz HTTP/1.1\r\nHost: {}\r\n\r\n", server.http);
    let mut kept: Vec<TcpStream> = (0..limit)
        .map(|i| {
            let mut stream = TcpStream::connect(server.http).expect("HTTP listener reachable");
            stream.write_all(request.as_bytes()).expect("request sent");
            let mut buf = [0u8; 12];
            stream.read_exact(&mut buf).expect("an answer");
            assert_eq!(&buf, b"HTTP/1.1 200", "connection {i} is served");
            stream
        })
        .collect();
    let mut extra = TcpStream::connect(server.http).expect("the port accepts");
    let _ = extra.write_all(request.as_bytes());
    let mut answer = Vec::new();
    let _ = extra.read_to_end(&mut answer);
    assert!(
        answer.is_empty(),
        "an HTTP connection past the limit is closed unanswered: {answer:?}"
    );
    kept.clear();
    eprintln!(
        "RSS of the server: {rss_before} KiB before, {} KiB after 50 connections past the limit",
        server.rss_kib()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_refused_calls_and_webhooks_from_one_peer_log_a_few_lines() {
    let server = Served::start(&[]);
    let mut api = server.environments().await;
    let rss_before = server.rss_kib();
    for i in 0..300 {
        let status = api
            .get_environment(with_token(
                &format!("not-a-token-{i}"),
                proto::GetEnvironmentRequest { name: "dev".into() },
            ))
            .await
            .expect_err("an unknown token");
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
        let status = api
            .sync_environment(with_token(
                VERA,
                proto::SyncEnvironmentRequest {
                    name: "dev".into(),
                    fetch: false,
                    wait: false,
                },
            ))
            .await
            .expect_err("a viewer may not sync");
        assert_eq!(status.code(), tonic::Code::PermissionDenied);
    }
    for _ in 0..100 {
        let mut stream = TcpStream::connect(server.http).expect("HTTP listener reachable");
        stream
            .write_all(b"POST /api/webhook HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}")
            .expect("webhook sent");
        let mut response = String::new();
        stream.read_to_string(&mut response).expect("answer read");
        assert!(response.starts_with("HTTP/1.1 401"), "{response}");
    }
    eprintln!(
        "RSS of the server: {rss_before} KiB before, {} KiB after 600 refused calls and 100 refused webhooks",
        server.rss_kib()
    );
    // The calls took far less than the 10 s interval: one line per listener, or two on a slow
    // machine.
    let calls: Vec<String> = [
        "refused an unauthenticated call",
        "refused a call without the permission",
    ]
    .iter()
    .flat_map(|message| server.log_lines_with(message))
    .collect();
    let webhooks = server.log_lines_with("webhook refused");
    for lines in [calls, webhooks] {
        assert!(
            (1..=2).contains(&lines.len()),
            "{} lines: {lines:#?}",
            lines.len()
        );
    }
}

fn watch_all() -> proto::WatchEnvironmentsRequest {
    proto::WatchEnvironmentsRequest { names: Vec::new() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_streams_are_capped_per_identity_and_their_slots_come_back_when_they_end() {
    let server = Served::start(&[]);
    let mut api = server.environments().await;
    let rss_before = server.rss_kib();
    let limit = stagehand::api::watch::WATCHES_PER_IDENTITY;
    assert_eq!(limit, 16, "the documented default");
    let mut open = Vec::new();
    for _ in 0..limit {
        let mut stream = api
            .watch_environments(with_token(VERA, watch_all()))
            .await
            .expect("a watch within the limit")
            .into_inner();
        stream
            .message()
            .await
            .expect("the snapshot")
            .expect("an environment");
        open.push(stream);
    }
    for _ in 0..500 {
        let refused = api
            .watch_environments(with_token(VERA, watch_all()))
            .await
            .expect_err("a watch past the limit");
        assert_eq!(
            refused.code(),
            tonic::Code::ResourceExhausted,
            "{refused:?}"
        );
    }
    api.watch_environments(with_token(OTTO, watch_all()))
        .await
        .expect("another identity has its own slots");
    drop(open.pop());
    let deadline = Instant::now() + Duration::from_secs(30);
    while let Err(status) = api.watch_environments(with_token(VERA, watch_all())).await {
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert!(
            Instant::now() < deadline,
            "the slot of an ended watch never came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "RSS of the server: {rss_before} KiB before, {} KiB after 500 watches past the limit",
        server.rss_kib()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_by_someone_who_may_view_nothing_is_refused() {
    let server = Served::start(&[]);
    let mut api = server.environments().await;
    let unnamed = api
        .watch_environments(with_token(NICK, watch_all()))
        .await
        .expect_err("nick may view nothing");
    assert_eq!(unnamed.code(), tonic::Code::PermissionDenied, "{unnamed:?}");
    assert!(unnamed.message().contains("\"view\""), "{unnamed:?}");
    let named = api
        .watch_environments(with_token(
            NICK,
            proto::WatchEnvironmentsRequest {
                names: vec!["dev".into()],
            },
        ))
        .await
        .expect_err("nick may not view dev");
    // An environment nick may not view answers as one that does not exist.
    assert_eq!(named.code(), tonic::Code::NotFound, "{named:?}");
}

/// Reads `stream` until it ends; the error it ended with. The bound only catches a stream that
/// never ends.
async fn ending_of(stream: &mut tonic::Streaming<proto::Environment>) -> Option<tonic::Status> {
    let deadline = Duration::from_secs(60);
    tokio::time::timeout(deadline, async {
        loop {
            match stream.message().await {
                Ok(Some(_)) => {}
                Ok(None) => return None,
                Err(status) => return Some(status),
            }
        }
    })
    .await
    .expect("the watch never ended")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_watches_end_when_their_identity_loses_view_by_new_rules_or_new_groups() {
    let server = Served::start(&[]);
    let mut api = server.environments().await;
    let open = |token: &'static str| {
        let mut api = api.clone();
        async move {
            let mut stream = api
                .watch_environments(with_token(token, watch_all()))
                .await
                .expect("a viewer may watch")
                .into_inner();
            stream
                .message()
                .await
                .expect("the snapshot")
                .expect("an environment");
            stream
        }
    };

    // Otto leaves the viewers group in the tokens file.
    let mut otto = open(OTTO).await;
    let mut vera = open(VERA).await;
    std::fs::write(server.file("tokens.yaml"), tokens("former-viewers")).expect("tokens");
    let ended = ending_of(&mut otto)
        .await
        .expect("an error, not a quiet end");
    assert_eq!(ended.code(), tonic::Code::PermissionDenied, "{ended:?}");
    assert!(ended.message().contains("\"otto\""), "{ended:?}");

    // The pipeline's rules stop granting view to viewers.
    let text = std::fs::read_to_string(server.file("pipeline.yaml")).expect("pipeline");
    std::fs::write(
        server.file("pipeline.yaml"),
        text.replace("groups: [viewers]", "groups: [auditors]"),
    )
    .expect("pipeline");
    let ended = ending_of(&mut vera)
        .await
        .expect("an error, not a quiet end");
    assert_eq!(ended.code(), tonic::Code::PermissionDenied, "{ended:?}");
    let again = api
        .watch_environments(with_token(VERA, watch_all()))
        .await
        .expect_err("vera may view nothing now");
    assert_eq!(again.code(), tonic::Code::PermissionDenied, "{again:?}");
}

/// A repository whose `dev` changed in the first 1,100 commits and `staging` in the 10,000
/// after them, written by `git fast-import`.
fn long_history(remote: &Path) {
    let mut stream = String::new();
    let kustomization = |env: &str| {
        format!(
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nnamespace: {env}\nresources: [app.yaml]\n"
        )
    };
    let inline = |stream: &mut String, path: &str, content: &str| {
        stream.push_str(&format!(
            "M 644 inline {path}\ndata {}\n{content}\n",
            content.len()
        ));
    };
    for i in 1..=11_100u32 {
        let message = format!("commit {i}");
        stream.push_str(&format!(
            "commit refs/heads/main\nmark :{i}\ncommitter Test <test@example.test> {} +0000\ndata {}\n{message}\n",
            1_700_000_000 + i,
            message.len()
        ));
        if i > 1 {
            stream.push_str(&format!("from :{}\n", i - 1));
        } else {
            inline(
                &mut stream,
                "environments/dev/kustomization.yaml",
                &kustomization("dev"),
            );
            inline(
                &mut stream,
                "environments/staging/kustomization.yaml",
                &kustomization("staging"),
            );
        }
        let env = if i <= 1_100 { "dev" } else { "staging" };
        let app = format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: app\ndata:\n  value: \"{i}\"\n"
        );
        inline(&mut stream, &format!("environments/{env}/app.yaml"), &app);
    }
    let mut import = Command::new("git")
        .args(["fast-import", "--quiet"])
        .current_dir(remote)
        .stdin(Stdio::piped())
        .spawn()
        .expect("git fast-import runs");
    import
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(stream.as_bytes())
        .expect("stream written");
    assert!(import.wait().expect("fast-import ends").success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_revisions_caps_the_page_and_the_commits_it_walks() {
    let dir = tempfile::tempdir().expect("temp dir");
    let remotes = dir.path().join("remotes");
    let remote = bare_remote(&remotes.join("shop.git"));
    long_history(&remote);
    assert_eq!(git(&remote, &["rev-list", "--count", "main"]), "11100");
    let http = GitHttpServer::start(&remotes, None);
    let server = Served::start_with(&pipeline(Some(&http.url("shop.git"))), &[]);
    let mut api = server.environments().await;
    let revisions = |name: &str, limit: u32| {
        let mut api = api.clone();
        let name = name.to_owned();
        async move {
            api.list_revisions(with_token(
                VERA,
                proto::ListRevisionsRequest { name, limit },
            ))
            .await
            .map(|r| r.into_inner().revisions)
        }
    };
    let deadline = Instant::now() + Duration::from_secs(90);
    let staging = loop {
        match revisions("staging", 1_000_000).await {
            Ok(list) if !list.is_empty() => break list,
            _ => {
                assert!(
                    Instant::now() < deadline,
                    "the repository was never fetched"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    assert_eq!(
        staging.len(),
        stagehand::service::HISTORY_MAX,
        "a page holds at most HISTORY_MAX revisions, whatever the request asks"
    );
    assert_eq!(staging[0].summary, "commit 11100");
    // dev last changed 10,000 commits ago: past the walk limit, so its revisions are not read.
    assert_eq!(stagehand::git::history::WALK_LIMIT, 10_000);
    let dev = revisions("dev", 0).await.expect("ListRevisions answers");
    assert!(dev.is_empty(), "{} revisions of dev listed", dev.len());
    api.get_environment(with_token(
        VERA,
        proto::GetEnvironmentRequest { name: "dev".into() },
    ))
    .await
    .expect("the service still answers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_suspension_reason_with_control_characters_or_too_long_is_refused_and_nothing_changes() {
    let server = Served::start(&[]);
    std::fs::write(
        server.file("tokens.yaml"),
        tokens("viewers").replace("[strangers]", "[operators]"),
    )
    .expect("tokens");
    let text = std::fs::read_to_string(server.file("pipeline.yaml")).expect("pipeline");
    std::fs::write(
        server.file("pipeline.yaml"),
        text + "    - {groups: [operators], environments: [dev], permissions: [suspend]}\n",
    )
    .expect("pipeline");
    let mut api = server.environments().await;
    let suspend = |reason: String| proto::SuspendEnvironmentRequest {
        name: "dev".into(),
        reason,
    };
    // The reloads of both files take a few seconds.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut cases = vec![
        ("ok\nRequested-By: mallory".to_owned(), "U+000A"),
        ("\u{1b}]0;owned\u{7}".to_owned(), "U+001B"),
        ("x".repeat(stagehand::remark::MAX_LEN + 1), "1025 bytes"),
    ];
    while let Some((reason, why)) = cases.first().cloned() {
        let status = api
            .suspend_environment(with_token(NICK, suspend(reason)))
            .await
            .expect_err("refused");
        // Until the new rules apply, dev is hidden from nick.
        if matches!(
            status.code(),
            tonic::Code::NotFound | tonic::Code::PermissionDenied
        ) {
            assert!(Instant::now() < deadline, "the new rules never applied");
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        assert!(
            status.message().starts_with("reason: ") && status.message().contains(why),
            "{status:?}"
        );
        cases.remove(0);
    }
    let dev = api
        .get_environment(with_token(
            NICK,
            proto::GetEnvironmentRequest { name: "dev".into() },
        ))
        .await
        .expect("dev")
        .into_inner();
    assert!(
        !dev.status.expect("a status").suspended,
        "dev was not suspended"
    );
    api.suspend_environment(with_token(NICK, suspend("maintenance window".into())))
        .await
        .expect("a plain reason is accepted");
}

fn gauge(metrics: &str, name: &str) -> i64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{name} missing from /metrics"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_diffs_never_holds_more_turns_than_concurrent_syncs() {
    let kube = cluster().client().await;
    let fx = crate::service::Fixture::new(&kube).await;
    let server = start_server_with(
        &fx.pipeline,
        &fx.state,
        &fx.secret,
        &["--concurrent-syncs", "2"],
    );
    let api = EnvironmentServiceClient::connect(server.grpc.clone())
        .await
        .expect("gRPC reachable");
    eventually("broken has a desired revision", || {
        let mut api = api.clone();
        async move {
            let env = api
                .get_environment(proto::GetEnvironmentRequest {
                    name: "broken".into(),
                })
                .await
                .expect("GetEnvironment answers")
                .into_inner();
            env.status.is_some_and(|s| !s.desired_revision.is_empty())
        }
    })
    .await;
    // broken's apiserver accepts connections and never answers: each diff of it keeps its
    // turn, so every diff the service lets run at once stays counted.
    let calls: Vec<_> = (0..6)
        .map(|_| {
            let mut api = api.clone();
            tokio::spawn(async move {
                api.diff_environment(proto::DiffEnvironmentRequest {
                    name: "broken".into(),
                    revision: String::new(),
                })
                .await
            })
        })
        .collect();
    let mut most = 0;
    eventually("every diff holds or waits for a turn", || {
        let text = http_get(server.http, "/metrics").1;
        let (in_use, waiting) = (
            gauge(&text, "stagehand_sync_turns_in_use"),
            gauge(&text, "stagehand_sync_turns_waiting"),
        );
        most = most.max(in_use);
        // broken's own sync pass may hold one of the two turns as well.
        async move { in_use == 2 && in_use + waiting >= 6 }
    })
    .await;
    assert!(
        most <= 2,
        "{most} turns were held at once with --concurrent-syncs 2"
    );
    assert!(
        calls.iter().all(|call| !call.is_finished()),
        "no diff of a hung cluster can have finished"
    );
    for call in calls {
        call.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reasons_and_comments_that_could_forge_a_line_are_refused_and_the_promotion_is_unchanged() {
    use crate::promotions::{ALICE, BOB, VERA as VIEWER, until_healthy};
    use stagehand::proto::promotion_service_client::PromotionServiceClient;
    let kube = cluster().client().await;
    let fx = crate::promotions::Fixture::new(&kube).await;
    let server = fx.start();
    until_healthy(&server.grpc, ALICE, "dev").await;
    let mut api = PromotionServiceClient::connect(server.grpc.clone())
        .await
        .expect("gRPC reachable");
    let forged = "looks fine\nApproved-By: mallory";
    let request = |reason: &str| proto::RequestPromotionRequest {
        target_environment: "staging".into(),
        revision: String::new(),
        reason: reason.into(),
        rerun: false,
    };
    let refused = api
        .request_promotion(with_token(ALICE, request(forged)))
        .await
        .expect_err("a reason with a newline");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    assert!(refused.message().starts_with("reason: "), "{refused:?}");
    let listed = api
        .list_promotions(with_token(
            ALICE,
            proto::ListPromotionsRequest {
                environment: "staging".into(),
                ..Default::default()
            },
        ))
        .await
        .expect("ListPromotions answers")
        .into_inner();
    assert!(listed.promotions.is_empty(), "{listed:?}");

    let promotion = api
        .request_promotion(with_token(ALICE, request("release")))
        .await
        .expect("a plain reason")
        .into_inner();
    let id = promotion.id.clone();
    // The promotion settles in AwaitingApproval after its pre-flight; compare with it there.
    let promotion = loop {
        let now = api
            .get_promotion(with_token(
                ALICE,
                proto::GetPromotionRequest { id: id.clone() },
            ))
            .await
            .expect("GetPromotion answers")
            .into_inner();
        if now.state == proto::PromotionState::AwaitingApproval as i32 {
            break now;
        }
        assert!(
            now.state == proto::PromotionState::Pending as i32,
            "the promotion ended: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let long = "x".repeat(stagehand::remark::MAX_LEN + 1);
    let attempts: Vec<(&str, tonic::Status)> = vec![
        (
            "comment: ",
            api.approve_promotion(with_token(
                BOB,
                proto::ApprovePromotionRequest {
                    id: id.clone(),
                    comment: "\u{1b}[2Jall clear".into(),
                },
            ))
            .await
            .expect_err("an escape sequence"),
        ),
        (
            "reason: ",
            api.reject_promotion(with_token(
                BOB,
                proto::RejectPromotionRequest {
                    id: id.clone(),
                    reason: long.clone(),
                },
            ))
            .await
            .expect_err("too long"),
        ),
        (
            "reason: ",
            api.abort_promotion(with_token(
                ALICE,
                proto::AbortPromotionRequest {
                    id: id.clone(),
                    reason: "done\u{202E}txet".into(),
                },
            ))
            .await
            .expect_err("a bidirectional override"),
        ),
        (
            "reason: ",
            api.rollback_environment(with_token(
                ALICE,
                proto::RollbackEnvironmentRequest {
                    environment: "staging".into(),
                    revision: "HEAD".into(),
                    reason: forged.into(),
                },
            ))
            .await
            .expect_err("a newline"),
        ),
    ];
    for (field, status) in attempts {
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        assert!(status.message().starts_with(field), "{status:?}");
    }
    let now = api
        .get_promotion(with_token(
            ALICE,
            proto::GetPromotionRequest { id: id.clone() },
        ))
        .await
        .expect("GetPromotion answers")
        .into_inner();
    assert_eq!(now.state, promotion.state, "{now:?}");
    assert!(now.approvals.is_empty(), "{now:?}");
    assert_eq!(
        now.transitions.len(),
        promotion.transitions.len(),
        "{now:?}"
    );

    // A viewer's watch of it ends when the tokens file takes them out of their group.
    let mut watch = api
        .watch_promotion(with_token(
            VIEWER,
            proto::WatchPromotionRequest { id: id.clone() },
        ))
        .await
        .expect("a viewer may watch")
        .into_inner();
    watch.message().await.expect("the promotion").expect("now");
    let tokens = std::fs::read_to_string(&fx.tokens).expect("tokens");
    std::fs::write(
        &fx.tokens,
        tokens.replace("groups: [viewers]", "groups: []"),
    )
    .expect("tokens");
    let ended = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            match watch.message().await {
                Ok(Some(_)) => {}
                Ok(None) => return None,
                Err(status) => return Some(status),
            }
        }
    })
    .await
    .expect("the watch never ended")
    .expect("an error, not a quiet end");
    assert_eq!(ended.code(), tonic::Code::PermissionDenied, "{ended:?}");
}
