//! CLI tables print what users and Git wrote with its control characters escaped: a reason, a
//! comment or a commit summary can neither rewrite the terminal nor forge a row. JSON keeps the
//! text exact.

use serde_json::Value;

use crate::cli_api::{Run, command, run_with};
use crate::promotions::{ALICE, BOB, Fixture, until_healthy};
use crate::service::{app, eventually};
use crate::support::cluster::cluster;

/// Clears the screen, then starts a line that looks like a row of the audit table.
const REASON: &str = "release\x1b[2J\r\nforged row  alice  approve  prod";
const COMMENT: &str = "fine\x1b]0;pwned\x07\u{9b}31m\u{202e}";
/// A commit summary has no newline, but may hold the rest.
const SUMMARY: &str = "dev-2\x1b[1A\x1b[2K\rforged\tsummary";

fn as_user(server: &str, token: &str, args: &[&str]) -> Run {
    let mut command = command(args);
    command
        .args(["--server", server])
        .env("STAGEHAND_TOKEN", token);
    run_with(command)
}

/// The table's text, after checking that nothing in it acts on a terminal.
fn table(server: &str, args: &[&str]) -> String {
    let run = as_user(server, ALICE, args);
    assert_eq!(run.code, 0, "{args:?}: {}", run.stderr);
    for c in run.stdout.chars() {
        assert!(
            c == '\n' || !(c.is_control() || ('\u{202a}'..='\u{202e}').contains(&c)),
            "{args:?} printed {c:?}:\n{}",
            run.stdout
        );
    }
    assert!(
        !run.stdout.lines().any(|l| l.starts_with("forged")),
        "{args:?} printed a forged row:\n{}",
        run.stdout
    );
    run.stdout
}

/// Someone with push access writes the summary; `env history` shows it escaped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_history_table_prints_a_commit_summary_with_its_controls_escaped() {
    let kube = cluster().client().await;
    let fx = Fixture::new(&kube).await;
    fx.work
        .write(&[("environments/dev/app.yaml", &app("dev-2"))]);
    fx.work.commit(SUMMARY);
    fx.work.git(&["push", "-q", "origin", "main"]);
    let server = fx.start();
    let url = server.grpc.clone();
    eventually("dev runs dev-2", || async {
        fx.value(&kube, "dev").await.as_deref() == Some("dev-2")
    })
    .await;

    let history = table(&url, &["env", "history", "dev", "-o", "table"]);
    assert!(
        history.contains(r"dev-2\x1b[1A\x1b[2K\rforged\tsummary"),
        "{history}"
    );
    let json = as_user(&url, ALICE, &["env", "history", "dev", "-o", "json"]).json();
    assert_eq!(
        json["revisions"][0]["summary"], SUMMARY,
        "JSON keeps the text exact"
    );
}

/// Reasons and comments sent through the CLI, as stored rows hold them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promotion_and_audit_tables_print_reasons_and_comments_with_controls_escaped() {
    let kube = cluster().client().await;
    let fx = Fixture::new(&kube).await;
    let server = fx.start();
    let url = server.grpc.clone();
    eventually("dev runs dev-1", || async {
        fx.value(&kube, "dev").await.as_deref() == Some("dev-1")
    })
    .await;
    until_healthy(&url, ALICE, "dev").await;

    let requested = as_user(
        &url,
        ALICE,
        &[
            "promote", "--to", "staging", "--reason", REASON, "-o", "json",
        ],
    )
    .json();
    assert_eq!(requested["reason"], REASON, "JSON keeps the text exact");
    let id = requested["id"].as_str().expect("an ID").to_owned();
    let approved = as_user(
        &url,
        BOB,
        &["approve", &id, "--comment", COMMENT, "-o", "json"],
    );
    assert_eq!(approved.code, 0, "{}", approved.stderr);

    let detail = table(&url, &["promotion", &id, "-o", "table"]);
    assert!(
        detail.contains(r"release\x1b[2J\r\nforged row  alice  approve  prod"),
        "{detail}"
    );
    assert!(
        detail.contains(r"fine\x1b]0;pwned\x07\x9b31m\u{202e}"),
        "{detail}"
    );
    let audit = table(&url, &["audit", "-o", "table"]);
    assert!(
        audit.contains(r"release\x1b[2J\r\nforged row  alice  approve  prod"),
        "{audit}"
    );
    table(&url, &["promotions", "-o", "table"]);

    let json = as_user(&url, ALICE, &["promotion", &id, "-o", "json"]).json();
    assert_eq!(json["reason"], REASON);
    assert_eq!(json["approvals"][0]["comment"], COMMENT);
    let yaml = as_user(&url, ALICE, &["promotion", &id, "-o", "yaml"]).stdout;
    let yaml: Value = serde_yaml_ng::from_str(&yaml).expect("YAML");
    assert_eq!(yaml["reason"], REASON, "YAML keeps the text exact");
}
