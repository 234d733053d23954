//! Transport and identities, tried from outside: `stagehand serve` will not take bearer tokens
//! in clear from the network, the CLI will not send them in clear to another host, a tokens
//! file that disappears or breaks ends every token, and the state directory is private
//! whatever the umask.

use std::io::{BufRead as _, BufReader, Read as _};
use std::net::{IpAddr, TcpListener, UdpSocket};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::cli_api::{Run, command, run_with};

const TOKEN: &str = "st_ops_4f1e2d3c4b5a69788796";

const PIPELINE: &str = r#"
apiVersion: stagehand.dev/v1alpha1
kind: Pipeline
metadata: {name: shop}
spec:
  environments:
    - name: dev
      source: {overlay: environments/dev}
  access:
    - {groups: [ops], environments: ["*"], permissions: [view]}
"#;

fn tokens_yaml() -> String {
    format!(
        "apiVersion: stagehand.dev/v1alpha1\nkind: Tokens\nidentities:\n  - {{name: ops, email: ops@example.test, groups: [ops], tokenSha256: [{}]}}\n",
        stagehand::api::auth::hash_token(TOKEN)
    )
}

/// A pipeline and a tokens file in `dir`.
fn files(dir: &Path) -> (PathBuf, PathBuf) {
    let pipeline = dir.join("pipeline.yaml");
    std::fs::write(&pipeline, PIPELINE).expect("pipeline file");
    let tokens = dir.join("tokens.yaml");
    std::fs::write(&tokens, tokens_yaml()).expect("tokens file");
    (pipeline, tokens)
}

struct Server {
    child: Child,
    url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What `serve` did: listened (at this URL), or exited first (with this stderr).
enum Started {
    Listening(Server),
    Exited { code: Option<i32>, stderr: String },
}

/// Runs `command` (a `stagehand serve`) with its log in `log`, until it says where it listens
/// or exits.
fn start(mut command: Command, log: &Path) -> Started {
    let mut server = Server {
        child: command
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(log).expect("log file"))
            .spawn()
            .expect("stagehand starts"),
        url: String::new(),
    };
    let mut stdout = BufReader::new(server.child.stdout.take().expect("piped stdout"));
    let mut line = String::new();
    loop {
        line.clear();
        if stdout.read_line(&mut line).expect("stdout readable") == 0 {
            let status = server.child.wait().expect("serve exited");
            return Started::Exited {
                code: status.code(),
                stderr: std::fs::read_to_string(log).expect("log readable"),
            };
        }
        if let Some(addr) = line.trim().strip_prefix("listening on ") {
            server.url = format!("http://{addr}");
            return Started::Listening(server);
        }
    }
}

fn serve(dir: &Path, args: &[&str]) -> Command {
    let (pipeline, tokens) = files(dir);
    let mut serve = command(&["serve", "--log-format", "json"]);
    serve
        .arg("--pipeline")
        .arg(pipeline)
        .arg("--state-dir")
        .arg(dir.join("state"))
        .arg("--tokens-file")
        .arg(tokens)
        .args(args)
        .env("XDG_CONFIG_HOME", dir.join("no-config"));
    serve
}

fn listening(started: Started, what: &str) -> Server {
    match started {
        Started::Listening(server) => server,
        Started::Exited { code, stderr } => panic!("{what}: serve exited {code:?}: {stderr}"),
    }
}

#[test]
fn serve_refuses_bearer_tokens_over_plain_http2_on_an_address_other_than_loopback() {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("serve.log");
    for listen in ["0.0.0.0:0", "[::]:0"] {
        match start(serve(dir.path(), &["--listen", listen]), &log) {
            Started::Listening(server) => {
                panic!("serve takes tokens in clear on {}", server.url)
            }
            Started::Exited { code, stderr } => {
                assert_eq!(code, Some(1), "{stderr}");
                for words in ["plain HTTP/2", "--tls-cert", "--tls-key", "--insecure"] {
                    assert!(stderr.contains(words), "{words:?} missing: {stderr}");
                }
            }
        }
    }

    // Loopback, TLS, or the operator's explicit word: each lets it start.
    drop(listening(
        start(serve(dir.path(), &["--listen", "127.0.0.1:0"]), &log),
        "loopback",
    ));
    drop(listening(
        start(
            serve(dir.path(), &["--listen", "0.0.0.0:0", "--insecure"]),
            &log,
        ),
        "--insecure",
    ));
    let log_text = std::fs::read_to_string(&log).expect("log");
    assert!(
        log_text.contains("bearer tokens arrive over plain HTTP/2"),
        "--insecure is warned about: {log_text}"
    );
    let certs = dir.path().join("certs");
    std::fs::create_dir_all(&certs).expect("certs dir");
    crate::cli_api::certificates(&certs);
    let (cert, key) = (certs.join("server.pem"), certs.join("server.key"));
    let mut tls = serve(dir.path(), &["--listen", "0.0.0.0:0"]);
    tls.arg("--tls-cert").arg(cert).arg("--tls-key").arg(key);
    drop(listening(start(tls, &log), "TLS"));
}

/// An address of this host other than loopback: the one it would reach the Internet from
/// (connecting a UDP socket sends nothing).
fn other_address() -> IpAddr {
    let socket = UdpSocket::bind("0.0.0.0:0").expect("a UDP socket");
    socket
        .connect("192.0.2.1:9")
        .expect("this host has a route off loopback");
    let ip = socket.local_addr().expect("a local address").ip();
    assert!(!ip.is_loopback(), "{ip}");
    ip
}

#[test]
fn the_cli_refuses_to_send_a_token_over_plain_http_to_another_host() {
    // A listener that records whether anything connected, and hangs up on it.
    let listener = TcpListener::bind("0.0.0.0:0").expect("a listener");
    let port = listener.local_addr().expect("its address").port();
    let connected = Arc::new(AtomicBool::new(false));
    let seen = Arc::clone(&connected);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            seen.store(true, Ordering::SeqCst);
            let mut stream = stream.expect("a connection");
            let mut buffer = [0; 1024];
            let _ = stream.read(&mut buffer);
        }
    });
    let server = format!("http://{}:{port}", other_address());
    let dir = tempfile::tempdir().expect("temp dir");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).expect("token file");

    let mut from_variable = command(&["status", "-o", "json", "--server", &server]);
    from_variable.env("STAGEHAND_TOKEN", TOKEN);
    let mut from_file = command(&["status", "-o", "json", "--server", &server]);
    from_file.arg("--token-file").arg(&token_file);
    for (origin, cli) in [("STAGEHAND_TOKEN", from_variable), ("token", from_file)] {
        let refused = run_with(cli);
        assert_eq!(refused.code, 2, "a usage error: {}", refused.stderr);
        assert!(
            refused.stderr.contains("refusing to send the bearer token")
                && refused.stderr.contains(origin)
                && refused.stderr.contains(&server)
                && refused.stderr.contains("https://"),
            "{}",
            refused.stderr
        );
        assert!(!refused.stderr.contains(TOKEN), "{}", refused.stderr);
    }
    assert!(
        !connected.load(Ordering::SeqCst),
        "the CLI connected to {server}"
    );
    let help = run_with(command(&["status", "--help"]));
    assert!(
        help.stdout.contains("A bearer token is only sent over"),
        "{}",
        help.stdout
    );

    // Loopback over plain HTTP/2 keeps working, by address and by name.
    let server = listening(
        start(
            serve(dir.path(), &["--listen", "127.0.0.1:0"]),
            &dir.path().join("serve.log"),
        ),
        "loopback",
    );
    let by_name = server.url.replace("127.0.0.1", "localhost");
    for url in [server.url.as_str(), by_name.as_str()] {
        let mut status = command(&["status", "-o", "json", "--server", url]);
        status.env("STAGEHAND_TOKEN", TOKEN);
        let run = run_with(status);
        assert_eq!(run.code, 0, "{url}: {}", run.stderr);
    }
}

/// `stagehand status` as the holder of [`TOKEN`].
fn status(url: &str) -> Run {
    let mut status = command(&["status", "-o", "json", "--server", url]);
    status.env("STAGEHAND_TOKEN", TOKEN);
    run_with(status)
}

/// Polls `status` until it exits with `code`; the bound only catches a server that never
/// gets there (the tokens file is checked every 5 s).
fn until_status_exits(url: &str, code: i32, what: &str) -> Run {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let run = status(url);
        if run.code == code {
            return run;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: status still exits {}: {}",
            run.code,
            run.stderr
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_tokens_file_that_disappears_or_breaks_ends_every_token_until_it_is_back() {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("serve.log");
    let server = listening(
        start(serve(dir.path(), &["--listen", "127.0.0.1:0"]), &log),
        "loopback",
    );
    let tokens = dir.path().join("tokens.yaml");
    let url = server.url.clone();
    assert_eq!(status(&url).code, 0, "the token works");

    std::fs::remove_file(&tokens).expect("remove the tokens file");
    let refused = until_status_exits(&url, 36, "after the file was removed");
    assert!(
        refused.stderr.contains("UNAUTHENTICATED"),
        "{}",
        refused.stderr
    );
    std::fs::write(&tokens, tokens_yaml()).expect("restore the tokens file");
    until_status_exits(&url, 0, "after the file was restored");

    // Replaced by something that cannot be read as a file.
    std::fs::remove_file(&tokens).expect("remove the tokens file");
    std::fs::create_dir(&tokens).expect("a directory in its place");
    until_status_exits(&url, 36, "with a directory in its place");
    std::fs::remove_dir(&tokens).expect("remove the directory");
    std::fs::write(&tokens, tokens_yaml()).expect("restore the tokens file");
    until_status_exits(&url, 0, "after the file was restored");

    // A broken edit ends every token too.
    std::fs::write(
        &tokens,
        tokens_yaml().replace("identities:\n", "identities: [\n"),
    )
    .expect("break the tokens file");
    until_status_exits(&url, 36, "with a broken tokens file");
    std::fs::write(&tokens, tokens_yaml()).expect("restore the tokens file");
    until_status_exits(&url, 0, "after the file was fixed");

    drop(server);
    let log = std::fs::read_to_string(&log).expect("log");
    let errors: Vec<serde_json::Value> = log
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|line| {
            line["level"] == "ERROR"
                && line["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("every bearer token is refused"))
        })
        .collect();
    let said = |words: &str| {
        errors.iter().any(|e| {
            e["error"]
                .as_str()
                .is_some_and(|error| error.contains(words))
        })
    };
    assert!(
        said("No such file") && said("Is a directory") && said("not a valid tokens file"),
        "each failure is logged at error level, with its cause: {errors:?}"
    );
    assert!(!log.contains(TOKEN), "the log holds the token");
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

#[test]
fn under_umask_000_the_state_directory_is_0700_and_its_files_0600() {
    let dir = tempfile::tempdir().expect("temp dir");
    let state = dir.path().join("state");
    let serve = serve(dir.path(), &["--listen", "127.0.0.1:0"]);
    // The binary and its arguments, run by a shell that first opens the umask fully.
    let program = serve.get_program().to_owned();
    let args: Vec<_> = serve.get_args().map(ToOwned::to_owned).collect();
    let mut shell = Command::new("sh");
    shell
        .args(["-c", "umask 000 && exec \"$@\"", "sh"])
        .arg(program)
        .args(args);
    for (key, value) in serve.get_envs() {
        match value {
            Some(value) => shell.env(key, value),
            None => shell.env_remove(key),
        };
    }
    let log = dir.path().join("serve.log");
    let server = listening(start(shell, &log), "under umask 000");
    check_private(&state);
    drop(server);

    // A state directory left open to everyone (by hand, or by an earlier version under this
    // umask) is tightened at the next start, and that is logged.
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let database = state.join(stagehand::store::DATABASE_FILE);
    std::fs::set_permissions(&database, std::fs::Permissions::from_mode(0o666)).expect("chmod");
    let server = listening(start(serve, &log), "again");
    check_private(&state);
    drop(server);
    let log = std::fs::read_to_string(&log).expect("log");
    assert!(
        log.contains("others could read the state directory: made it 0700")
            && log.contains("others could read a file of the state directory"),
        "{log}"
    );
}

/// The state directory is 0700, every file in it 0600 at most and every directory 0700.
fn check_private(state: &Path) {
    assert_eq!(mode(state), 0o700, "{}", state.display());
    let mut names = Vec::new();
    for entry in std::fs::read_dir(state).expect("state dir readable") {
        let path = entry.expect("an entry").path();
        names.push(
            path.file_name()
                .expect("a name")
                .to_string_lossy()
                .into_owned(),
        );
        if path.is_dir() {
            assert_eq!(mode(&path), 0o700, "{}", path.display());
        } else {
            assert_eq!(mode(&path) & 0o077, 0, "{}", path.display());
        }
    }
    for expected in ["stagehand.db", "installation-id", "git"] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} in {names:?}"
        );
    }
}
