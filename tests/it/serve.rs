//! `stagehand serve` as clients meet it: over TCP, through reflection and health checking,
//! through our own CLI, and stopped by a signal.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{Tool, tool};

const PIPELINE: &str = r#"
apiVersion: stagehand.dev/v1alpha1
kind: Pipeline
metadata: {name: shop}
spec:
  environments:
    - name: dev
      source: {overlay: environments/dev}
    - name: staging
      promotesFrom: dev
      source: {overlay: environments/staging}
      approval: {required: 1}
"#;

struct Server {
    child: Child,
    addr: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_server(dir: &Path) -> Server {
    start_server_logging_to(dir, Stdio::null())
}

fn start_server_logging_to(dir: &Path, stderr: Stdio) -> Server {
    let pipeline = dir.join("pipeline.yaml");
    std::fs::write(&pipeline, PIPELINE).expect("write pipeline");
    let mut child = Command::new(env!("CARGO_BIN_EXE_stagehand"))
        .args(["serve", "--listen", "127.0.0.1:0", "--log-format", "json"])
        .arg("--pipeline")
        .arg(&pipeline)
        .arg("--state-dir")
        .arg(dir.join("state"))
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .expect("stagehand starts");
    let stdout = child.stdout.take().expect("stdout is piped");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("stagehand prints its address");
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();
    Server { child, addr }
}

fn probe(addr: &str, service: &str) -> serde_json::Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/support/grpc_probe.py");
    let out = Command::new(tool(Tool::Python))
        .arg(script)
        .arg(addr)
        .arg(service)
        .output()
        .expect("python runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("the probe prints JSON")
}

#[test]
fn a_generic_grpc_client_lists_the_services_and_sees_serving() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = start_server(dir.path());
    assert!(
        dir.path().join("state").is_dir(),
        "the state directory is created"
    );

    let seen = probe(&server.addr, "");
    let services: Vec<&str> = seen["services"]
        .as_array()
        .expect("a list of services")
        .iter()
        .filter_map(|s| s.as_str())
        .collect();
    let mut listed = services.clone();
    listed.sort_unstable();
    assert_eq!(
        listed,
        [
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
            "stagehand.v1.EnvironmentService",
            "stagehand.v1.PromotionService",
        ],
        "reflection lists exactly what is served"
    );
    assert_eq!(seen["health"], "SERVING");
    let seen = probe(&server.addr, "stagehand.v1.EnvironmentService");
    assert_eq!(seen["health"], "SERVING");
    let seen = probe(&server.addr, "stagehand.v1.PromotionService");
    assert_eq!(seen["health"], "SERVING");
}

#[test]
fn the_cli_lists_the_environments_of_a_running_server() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = start_server(dir.path());
    let out = Command::new(env!("CARGO_BIN_EXE_stagehand"))
        .args(["env", "list", "--server"])
        .arg(format!("http://{}", server.addr))
        .output()
        .expect("the CLI runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "pipeline shop\n  dev\n  staging (promoted from dev)\n"
    );

    let staging = Command::new(env!("CARGO_BIN_EXE_stagehand"))
        .args(["env", "get", "staging", "--server"])
        .arg(format!("http://{}", server.addr))
        .output()
        .expect("the CLI runs");
    assert!(
        staging.status.success(),
        "{}",
        String::from_utf8_lossy(&staging.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&staging.stdout),
        "name: staging\npromotes from: dev\nsource: overlay environments/staging on branch main\n\
         sync: every 300s, prune true, self-heal true\napproval: 1 approver(s)\n"
    );

    let missing = Command::new(env!("CARGO_BIN_EXE_stagehand"))
        .args(["env", "get", "qa", "--server"])
        .arg(format!("http://{}", server.addr))
        .output()
        .expect("the CLI runs");
    assert!(!missing.status.success());
    let err = String::from_utf8_lossy(&missing.stderr);
    assert!(
        err.contains("environment \"qa\" is not in pipeline \"shop\""),
        "{err}"
    );
}

#[test]
fn sigterm_stops_the_server_cleanly_and_logs_json_lines() {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("serve.log");
    let log_file = std::fs::File::create(&log).expect("log file");
    let mut server = start_server_logging_to(dir.path(), Stdio::from(log_file));
    assert_eq!(probe(&server.addr, "")["health"], "SERVING");
    let killed = Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(killed.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = server.child.try_wait().expect("wait works") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the server did not stop after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "clean exit after SIGTERM, got {status}");

    let log = std::fs::read_to_string(&log).expect("log readable");
    let messages: Vec<String> = log
        .lines()
        .map(|line| {
            let event: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("log line {line:?} is not JSON: {e}"));
            event["message"].as_str().unwrap_or_default().to_owned()
        })
        .collect();
    for expected in ["serving gRPC", "received SIGTERM", "stopped"] {
        assert!(
            messages.iter().any(|m| m.starts_with(expected)),
            "{expected:?} not among {messages:?}"
        );
    }
}

#[test]
fn an_invalid_pipeline_stops_serve_with_the_field_named() {
    let dir = tempfile::tempdir().expect("temp dir");
    let pipeline = dir.path().join("pipeline.yaml");
    std::fs::write(
        &pipeline,
        PIPELINE.replace("promotesFrom: dev", "promotesFrom: qa"),
    )
    .expect("write pipeline");
    let out = Command::new(env!("CARGO_BIN_EXE_stagehand"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .arg("--pipeline")
        .arg(&pipeline)
        .output()
        .expect("stagehand runs");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("pipeline.yaml") && err.contains("spec.environments[1].promotesFrom"),
        "{err}"
    );
}

/// The fields of the first JSON log line whose message starts with `message`, once it is there.
fn log_event(log: &Path, message: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let found = text
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .find(|event| {
                event["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with(message))
            });
        if let Some(event) = found {
            return event;
        }
        assert!(
            Instant::now() < deadline,
            "no log line {message:?} in {}:\n{text}",
            log.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Starts `stagehand serve` on a shared database; `how` adds the flag or variable naming it.
fn start_shared_server(dir: &Path, how: impl FnOnce(&mut Command)) -> Server {
    let pipeline = dir.join("pipeline.yaml");
    std::fs::write(&pipeline, PIPELINE).expect("write pipeline");
    let log = std::fs::File::create(dir.join("serve.log")).expect("log file");
    let mut command = Command::new(env!("CARGO_BIN_EXE_stagehand"));
    command
        .args(["serve", "--listen", "127.0.0.1:0", "--log-format", "json"])
        .arg("--pipeline")
        .arg(&pipeline)
        .arg("--state-dir")
        .arg(dir.join("state"))
        .stdout(Stdio::piped())
        .stderr(log);
    how(&mut command);
    let mut child = command.spawn().expect("stagehand starts");
    let stdout = child.stdout.take().expect("stdout is piped");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("stagehand prints its address");
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| {
            panic!(
                "unexpected first line {line:?}; log:\n{}",
                std::fs::read_to_string(dir.join("serve.log")).unwrap_or_default()
            )
        })
        .to_owned();
    Server { child, addr }
}

#[tokio::test]
async fn two_servers_on_one_shared_database_act_as_one_installation() {
    let url = crate::support::postgres::fresh_database("serve").await;
    // The first replica was a single SQLite installation until now: its objects carry this ID.
    let first = tempfile::tempdir().expect("temp dir");
    std::fs::create_dir_all(first.path().join("state")).expect("state dir");
    std::fs::write(first.path().join("state/installation-id"), "abcdef12\n").expect("write");
    let url_file = first.path().join("database-url");
    std::fs::write(&url_file, format!("{url}\n")).expect("write the URL file");
    let _first_server = start_shared_server(first.path(), |command| {
        command.arg("--database-url-file").arg(&url_file);
    });
    let second = tempfile::tempdir().expect("temp dir");
    let second_server = start_shared_server(second.path(), |command| {
        command.env("STAGEHAND_DATABASE_URL", &url);
    });
    assert_eq!(probe(&second_server.addr, "")["health"], "SERVING");

    let shown = stagehand::store::PostgresUrl::parse(&url)
        .expect("the URL parses")
        .to_string();
    for dir in [first.path(), second.path()] {
        let event = log_event(&dir.join("serve.log"), "the store is a shared PostgreSQL");
        assert_eq!(event["installation"], "abcdef12", "{event}");
        assert_eq!(event["database"], shown.as_str(), "{event}");
    }
    assert!(
        !second.path().join("state/installation-id").exists(),
        "a replica on a shared store keeps no installation ID of its own"
    );
    let client = crate::support::postgres::connect(&url).await;
    let row = client
        .query_one("SELECT version, installation_id FROM stagehand_schema", &[])
        .await
        .expect("the schema row is there");
    assert_eq!(row.get::<_, i64>(0), 4);
    assert_eq!(row.get::<_, String>(1), "abcdef12");
}

#[tokio::test]
async fn a_shared_database_that_refuses_the_password_stops_serve_without_showing_it() {
    let url = crate::support::postgres::fresh_database("serve_auth").await;
    let (scheme, rest) = url.split_once("://").expect("a URL");
    let (_, server) = rest.split_once('@').expect("the URL names a user");
    let wrong = format!("{scheme}://stagehand:sentinel-password-42@{server}");
    let dir = tempfile::tempdir().expect("temp dir");
    let pipeline = dir.path().join("pipeline.yaml");
    std::fs::write(&pipeline, PIPELINE).expect("write pipeline");
    let out = Command::new(env!("CARGO_BIN_EXE_stagehand"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .arg("--pipeline")
        .arg(&pipeline)
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .env("STAGEHAND_DATABASE_URL", &wrong)
        .output()
        .expect("stagehand runs");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let shown = format!("postgresql://stagehand@{server}");
    assert!(err.contains(&shown), "names the database: {err}");
    assert!(err.contains("password authentication failed"), "{err}");
    assert!(!err.contains("sentinel-password-42"), "{err}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("sentinel-password-42"));
}
