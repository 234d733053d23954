//! The promotion commands of the `stagehand` binary against a real `stagehand serve` (tokens
//! file, Git remote over HTTP, kube-apiserver): promote, approve by a second identity, watch to
//! the end, list, audit, a refused approval's exit code, compare with a masked Secret.

use std::process::Stdio;

use serde_json::Value;

use crate::cli_api::{Run, command, run_with};
use crate::promotions::{ALICE, BOB, Fixture, secret, sops_encrypt, until_healthy};
use crate::service::eventually;
use crate::support::cluster::cluster;

/// `stagehand ARGS` against `server` with `token` in STAGEHAND_TOKEN.
fn as_user(server: &str, token: &str, args: &[&str]) -> Run {
    let mut command = command(args);
    command
        .args(["--server", server])
        .env("STAGEHAND_TOKEN", token);
    run_with(command)
}

/// The states a promotion went through; a transition within one state (the Git step records
/// each commit before pushing it) is not a step of its own.
fn transitions_to(promotion: &Value) -> Vec<String> {
    let mut states: Vec<String> = promotion["transitions"]
        .as_array()
        .expect("transitions")
        .iter()
        .map(|t| t["to"].as_str().expect("a state").to_owned())
        .collect();
    states.dedup();
    states
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_promotes_on_a_second_identitys_approval_watches_it_land_and_reads_the_audit_log() {
    let kube = cluster().client().await;
    let fx = Fixture::new(&kube).await;
    // dev gets its own version of the Secret `db` that secure runs, so that `compare` has a
    // Secret value to mask on both sides.
    let keys = std::fs::read_to_string(&fx.key).expect("server key");
    let recipient = keys
        .lines()
        .find_map(|l| l.strip_prefix("# public key: "))
        .expect("the key file names its recipient")
        .to_owned();
    let scratch = tempfile::tempdir().expect("temp dir");
    let dev_secret = sops_encrypt(scratch.path(), "dev.yaml", &secret("dev-pw"), &recipient);
    let dev_overlay =
        std::fs::read_to_string(fx.work.dir.join("environments/dev/kustomization.yaml"))
            .expect("dev's overlay");
    fx.work.write(&[
        ("environments/dev/db.enc.yaml", &dev_secret),
        (
            "environments/dev/kustomization.yaml",
            &dev_overlay.replace(
                "resources: [app.yaml]",
                "resources: [app.yaml, db.enc.yaml]",
            ),
        ),
    ]);
    fx.work.commit("dev runs the db Secret");
    fx.work.git(&["push", "-q", "origin", "main"]);
    let server = fx.start();
    let url = server.grpc.clone();
    eventually("dev runs dev-1", || async {
        fx.value(&kube, "dev").await.as_deref() == Some("dev-1")
    })
    .await;
    // A promotion needs its source Healthy at the revision, which is recorded after the apply.
    until_healthy(&url, ALICE, "dev").await;

    let requested = as_user(
        &url,
        ALICE,
        &[
            "promote",
            "--to",
            "staging",
            "--reason",
            "release 1",
            "-o",
            "json",
        ],
    )
    .json();
    let id = requested["id"].as_str().expect("an ID").to_owned();
    assert_eq!(requested["targetEnvironment"], "staging");
    assert_eq!(requested["sourceEnvironment"], "dev");
    assert_eq!(requested["requestedBy"], "alice");
    assert_eq!(requested["reason"], "release 1");

    // Alice requested it and is no approver: refused, with the call, code and message.
    let refused = as_user(&url, ALICE, &["approve", &id]);
    assert_eq!(
        refused.code, 27,
        "PERMISSION_DENIED is 20 + 7: {}",
        refused.stderr
    );
    assert!(
        refused
            .stderr
            .starts_with("error: ApprovePromotion: PERMISSION_DENIED: "),
        "{}",
        refused.stderr
    );
    assert!(refused.stdout.is_empty(), "{}", refused.stdout);

    eventually("the promotion waits for an approval", || async {
        as_user(&url, ALICE, &["promotion", &id, "-o", "json"]).json()["state"]
            == "AwaitingApproval"
    })
    .await;
    let waiting = as_user(&url, ALICE, &["promotion", &id, "-o", "json"]).json();
    assert_eq!(waiting["approvalsMissing"], 1);
    assert_eq!(waiting["blockers"][0]["kind"], "approvals", "{waiting}");
    assert_eq!(waiting["blockers"][0]["groups"][0], "approvers");
    let message = waiting["blockers"][0]["message"]
        .as_str()
        .expect("a message")
        .to_owned();
    let table = as_user(&url, ALICE, &["promotion", &id, "-o", "table"]);
    assert_eq!(table.code, 0, "{}", table.stderr);
    assert!(
        table
            .stdout
            .contains(&format!("waiting for:\n  - approvals: {message}")),
        "{}",
        table.stdout
    );
    assert!(
        table.stdout.contains("approvals missing: 1"),
        "{}",
        table.stdout
    );

    // A watch started before the approval follows it to the end.
    let watch = command(&["watch", &id, "-o", "json", "--server", &url])
        .env("STAGEHAND_TOKEN", ALICE)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("watch starts");
    let approved = as_user(
        &url,
        BOB,
        &["approve", &id, "--comment", "looks good", "-o", "json"],
    )
    .json();
    assert_eq!(approved["approvals"][0]["approver"], "bob");
    assert_eq!(approved["approvals"][0]["comment"], "looks good");
    let watched = watch.wait_with_output().expect("watch ends");
    let lines: Vec<Value> = String::from_utf8_lossy(&watched.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert_eq!(
        watched.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&watched.stderr)
    );
    let last = lines.last().expect("at least one promotion");
    assert_eq!(last["state"], "Succeeded", "{last}");
    assert_eq!(
        transitions_to(last),
        [
            "Pending",
            "AwaitingApproval",
            "Approved",
            "Promoting",
            "Syncing",
            "Verifying",
            "Succeeded"
        ]
    );
    assert_eq!(
        fx.commits_of(&id),
        [last["commit"].as_str().expect("a commit")]
    );
    assert_eq!(fx.value(&kube, "staging").await.as_deref(), Some("dev-1"));
    assert!(
        humantime::parse_rfc3339(last["updateTime"].as_str().expect("a time")).is_ok(),
        "{last}"
    );

    // Watching a promotion that has ended prints its transitions as plain lines and exits 0.
    let plain = as_user(&url, ALICE, &["watch", &id, "-o", "table"]);
    assert_eq!(plain.code, 0, "{}", plain.stderr);
    assert!(
        plain.stdout.contains("Verifying → Succeeded"),
        "{}",
        plain.stdout
    );
    assert!(!plain.stdout.contains('\x1b'), "no colours off a terminal");

    let listed = as_user(&url, ALICE, &["promotions", "staging", "-o", "json"]).json();
    let ids: Vec<&str> = listed["promotions"]
        .as_array()
        .expect("promotions")
        .iter()
        .filter_map(|p| p["id"].as_str())
        .collect();
    assert_eq!(ids, [id.as_str()]);
    let failed = as_user(
        &url,
        ALICE,
        &["promotions", "--state", "failed,rejected", "-o", "json"],
    )
    .json();
    assert_eq!(failed["promotions"], serde_json::json!([]));

    let audit = as_user(&url, ALICE, &["audit", "--promotion", &id, "-o", "json"]).json();
    let events: Vec<(String, String)> = audit["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| {
            assert_eq!(e["promotionId"], id.as_str());
            (
                e["actor"].as_str().unwrap_or_default().to_owned(),
                e["action"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    assert!(
        events.contains(&("alice".into(), "requested".into())),
        "{events:?}"
    );
    assert!(
        events.contains(&("bob".into(), "approved".into())),
        "{events:?}"
    );

    // A rejected promotion: watch exits non-zero and says how it ended.
    let prod = as_user(&url, ALICE, &["promote", "--to", "prod", "-o", "json"]).json();
    let prod_id = prod["id"].as_str().expect("an ID").to_owned();
    let rejected = as_user(
        &url,
        BOB,
        &[
            "reject",
            &prod_id,
            "--reason",
            "not this week",
            "-o",
            "json",
        ],
    )
    .json();
    assert_eq!(rejected["state"], "Rejected");
    let ended = as_user(&url, ALICE, &["watch", &prod_id, "-o", "table"]);
    assert_eq!(ended.code, 1, "{}", ended.stderr);
    assert!(
        ended
            .stderr
            .contains(&format!("promotion {prod_id} ended Rejected")),
        "{}",
        ended.stderr
    );

    // compare names the Secret's differing key and never its values.
    let compared = as_user(&url, ALICE, &["compare", "dev", "secure", "-o", "json"]);
    let value = compared.json();
    let db = value["objects"]
        .as_array()
        .expect("objects")
        .iter()
        .find(|o| o["kind"] == "Secret" && o["name"] == "db")
        .unwrap_or_else(|| panic!("no Secret db in {value}"));
    assert_eq!(db["status"], "differs", "{db}");
    assert!(
        db["fields"]
            .as_array()
            .expect("fields")
            .iter()
            .any(|f| f["fromValue"] == "(secret)" && f["toValue"] == "(secret)"),
        "{db}"
    );
    let table = as_user(&url, ALICE, &["compare", "dev", "secure", "-o", "table"]);
    for out in [&compared.stdout, &table.stdout] {
        for plain in ["dev-pw", "secure-pw", "ZGV2LXB3", "c2VjdXJlLXB3"] {
            assert!(!out.contains(plain), "{plain} printed: {out}");
        }
    }
    assert!(table.stdout.contains("(secret)"), "{}", table.stdout);
    drop(server);
}
