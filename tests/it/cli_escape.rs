//! CLI tables print what Git holds with its control characters escaped: a commit summary can
//! neither rewrite the terminal nor forge a row. JSON keeps the text exact. (Reasons and
//! comments with control characters are refused by the API before they are stored.)

use crate::cli_api::{Run, command, run_with};
use crate::promotions::{ALICE, Fixture};
use crate::service::{app, eventually};
use crate::support::cluster::cluster;

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
