//! Delivery metrics: a scripted history (a real Git repository with known commit times, and
//! promotions with known transition times written through the store) whose figures are worked
//! out by hand below and must come out the same on SQLite and PostgreSQL; then a real served
//! stagehand through real promotions, read back with `stagehand metrics -o json` and /metrics.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::json;
use stagehand::git::{Credentials, ObjectId, RemoteUrl, Repository};
use stagehand::store::{
    self, DeliveryMetrics, DeliveryQuery, NewPromotion, PostgresStore, PostgresUrl, PromotionKind,
    PromotionState, Spread, SqliteStore, Store, Transition, TransitionOutcome,
};

use crate::cli_api::{Run, command, run_with};
use crate::promotions::{ALICE, BOB, DAVE, Fixture, VERA, until_healthy};
use crate::service::{app, eventually, generic_client};
use crate::support::cluster::cluster;
use crate::support::git::Repo;
use crate::support::postgres;

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// The start of the window: 2023-11-14T22:13:20Z.
const T: u64 = 1_700_000_000;
const HOUR: u64 = 3_600;
const DAY: u64 = 86_400;

fn at(seconds: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(seconds)
}

fn hours(h: f64) -> Duration {
    Duration::from_secs_f64(h * 3_600.0)
}

/// The oldest committer time of what promoting `to` brings after `since`, as the engine
/// records it at request, read from the repository the way the engine reads it.
fn first_commit_at(repo: &Repository, to: &str, since: Option<&str>) -> i64 {
    let id = |hex: &str| ObjectId::from_hex(hex.as_bytes()).expect("a commit id");
    let range = repo
        .authored(id(to), since.map(id), None, 100, None)
        .expect("the range is read");
    range
        .iter()
        .map(|commit| commit.time * 1000)
        .min()
        .expect("the range has commits")
}

/// One promotion: its request, then each transition at its time.
struct Scripted<'a> {
    target: &'a str,
    kind: PromotionKind,
    requested: u64,
    first_commit_at: Option<i64>,
    steps: &'a [(PromotionState, u64)],
}

async fn write(store: &dyn Store, p: Scripted<'_>) -> Result<(), store::Error> {
    let created = store
        .create_promotion(NewPromotion {
            id: store::new_promotion_id(),
            kind: p.kind,
            source_environment: (p.kind == PromotionKind::Promotion).then(|| "staging".into()),
            target_environment: p.target.to_owned(),
            revision: "0".repeat(40),
            rerun: false,
            requested_by: "riley".to_owned(),
            reason: "scripted".to_owned(),
            state: PromotionState::Pending,
            at: at(p.requested),
            detail: Some(match p.first_commit_at {
                Some(ms) => json!({"authors": [], store::FIRST_COMMIT_AT: ms}),
                None => json!({"authors": []}),
            }),
        })
        .await?;
    let mut state = PromotionState::Pending;
    for &(to, when) in p.steps {
        let outcome = store
            .transition(Transition {
                promotion_id: created.id.clone(),
                from: state,
                from_version: None,
                to,
                actor: "stagehand".to_owned(),
                reason: format!("to {to}"),
                at: at(when),
                commit: None,
                detail: None,
                audit: None,
            })
            .await?;
        assert!(
            matches!(outcome, TransitionOutcome::Applied(_)),
            "{state} → {to}: {outcome:?}"
        );
        state = to;
    }
    Ok(())
}

/// Pending → … → Syncing at `synced`, Verifying half an hour later, then `end` an hour after
/// the sync.
fn through_verifying(requested: u64, end: PromotionState) -> Vec<(PromotionState, u64)> {
    let synced = requested + HOUR;
    vec![
        (PromotionState::Approved, requested + 60),
        (PromotionState::Promoting, requested + 120),
        (PromotionState::Syncing, synced),
        (PromotionState::Verifying, synced + HOUR / 2),
        (end, synced + HOUR),
    ]
}

async fn scripted_history_gives_the_figures_worked_out_by_hand(store: &dyn Store) -> TestResult {
    // The source's history. Author times are days before the committer times, so a figure
    // built on author times would differ: the committer time is what counts.
    let dir = tempfile::tempdir()?;
    let work = Repo::init(&dir.path().join("work"));
    let commit = |name: &str, committed: u64| {
        work.write(&[("environments/dev/app.yaml", name)]);
        work.commit_at(name, committed - 5 * DAY, committed)
    };
    let c0 = commit("c0", T - 10 * DAY);
    let _c1 = commit("c1", T + HOUR);
    let c2 = commit("c2", T + 2 * HOUR);
    let c3 = commit("c3", T + 30 * HOUR);
    let c4 = commit("c4", T + 50 * HOUR);
    let c5 = commit("c5", T + 100 * HOUR);
    let repo = Repository::open(
        &dir.path().join("cache"),
        RemoteUrl::new(format!("file://{}", work.dir.display())),
        Credentials::None,
    )?;
    repo.fetch()?;
    let ms = |seconds: u64| (seconds * 1000) as i64;
    // P1 brings c1 and c2 (prod ran c0): its change began with c1.
    let p1_first = first_commit_at(&repo, &c2, Some(&c0));
    assert_eq!(p1_first, ms(T + HOUR));
    // P3 comes after P2 failed, so it brings what P2 tried (c3) and c4: it began with c3.
    let p3_first = first_commit_at(&repo, &c4, Some(&c2));
    assert_eq!(p3_first, ms(T + 30 * HOUR));
    // P2 brings c3 alone.
    let p2_first = first_commit_at(&repo, &c3, Some(&c2));
    assert_eq!(p2_first, ms(T + 30 * HOUR));
    let p4_first = first_commit_at(&repo, &c5, Some(&c4));
    assert_eq!(p4_first, ms(T + 100 * HOUR));

    use PromotionKind::{Promotion, Rollback};
    use PromotionState::{AwaitingApproval, Failed, Rejected, Succeeded};
    // Before the window: counts for nothing.
    write(
        store,
        Scripted {
            target: "prod",
            kind: Promotion,
            requested: T - 3 * DAY,
            first_commit_at: Some(ms(T - 10 * DAY)),
            steps: &through_verifying(T - 3 * DAY, Succeeded),
        },
    )
    .await?;
    // P1: requested at +3h, Verifying at +4h30m, Succeeded at +5h.
    write(
        store,
        Scripted {
            target: "prod",
            kind: Promotion,
            requested: T + 3 * HOUR,
            first_commit_at: Some(p1_first),
            steps: &through_verifying(T + 3 * HOUR, Succeeded),
        },
    )
    .await?;
    // P2: Verifying at +32h30m, fails verification at +33h.
    write(
        store,
        Scripted {
            target: "prod",
            kind: Promotion,
            requested: T + 31 * HOUR,
            first_commit_at: Some(p2_first),
            steps: &through_verifying(T + 31 * HOUR, Failed),
        },
    )
    .await?;
    // P3: Succeeded at +53h.
    write(
        store,
        Scripted {
            target: "prod",
            kind: Promotion,
            requested: T + 51 * HOUR,
            first_commit_at: Some(p3_first),
            steps: &through_verifying(T + 51 * HOUR, Succeeded),
        },
    )
    .await?;
    // P4: Succeeded at +103h, then rolled back.
    write(
        store,
        Scripted {
            target: "prod",
            kind: Promotion,
            requested: T + 101 * HOUR,
            first_commit_at: Some(p4_first),
            steps: &through_verifying(T + 101 * HOUR, Succeeded),
        },
    )
    .await?;
    // P5: rejected before Git; it changed nothing, so it is not "the next promotion" after P4.
    write(
        store,
        Scripted {
            target: "prod",
            kind: Promotion,
            requested: T + 104 * HOUR,
            first_commit_at: Some(p4_first),
            steps: &[
                (AwaitingApproval, T + 104 * HOUR + 60),
                (Rejected, T + 104 * HOUR + HOUR / 2),
            ],
        },
    )
    .await?;
    // R1: the rollback, requested at +105h, Succeeded at +107h.
    write(
        store,
        Scripted {
            target: "prod",
            kind: Rollback,
            requested: T + 105 * HOUR,
            first_commit_at: None,
            steps: &through_verifying(T + 105 * HOUR, Succeeded),
        },
    )
    .await?;
    // After the window (it ends at +10 days): counts for nothing.
    write(
        store,
        Scripted {
            target: "prod",
            kind: Promotion,
            requested: T + 10 * DAY,
            first_commit_at: Some(p4_first),
            steps: &through_verifying(T + 10 * DAY, Succeeded),
        },
    )
    .await?;
    // staging: one change that failed verification and was never restored.
    write(
        store,
        Scripted {
            target: "staging",
            kind: Promotion,
            requested: T + 20 * HOUR,
            first_commit_at: Some(ms(T + 19 * HOUR)),
            steps: &through_verifying(T + 20 * HOUR, Failed),
        },
    )
    .await?;

    let figures = store
        .delivery_metrics(&DeliveryQuery {
            environments: vec!["prod".into(), "staging".into(), "qa".into()],
            since: at(T),
            until: at(T + 10 * DAY),
        })
        .await?;

    // prod, by hand:
    // - deployments: P1 (+5h), P3 (+53h), P4 (+103h), R1 (+107h) = 4 in 10 days = 0.4 a day.
    // - lead times (promotions only): P1 5h - 1h = 4h; P3 53h - 30h = 23h; P4 103h - 100h =
    //   3h. Sorted 3h, 4h, 23h: median 4h; p90 at rank 0.9 × 2 = 1.8, so 4h + 0.8 × (23h -
    //   4h) = 19.2h.
    // - changes that reached the cluster: P1, P2, P3, P4, R1 = 5; failed: P2 (verification)
    //   and P4 (the next promotion that reached Git is R1, a rollback) = 2; ratio 0.4.
    // - time to restore: P2 failed at 33h, restored by P3 at 53h: 20h; P4's failure is R1's
    //   request at 105h, restored by R1 at 107h: 2h. Sorted 2h, 20h: median 11h; p90 at rank
    //   0.9, so 2h + 0.9 × 18h = 18.2h.
    let prod = DeliveryMetrics {
        environment: "prod".into(),
        deployments: 4,
        deployments_per_day: 0.4,
        lead_time: Spread {
            count: 3,
            median: Some(hours(4.0)),
            p90: Some(hours(19.2)),
        },
        changes: 5,
        failed_changes: 2,
        change_failure_ratio: Some(0.4),
        time_to_restore: Spread {
            count: 2,
            median: Some(hours(11.0)),
            p90: Some(hours(18.2)),
        },
        unrestored: 0,
    };
    // staging: nothing deployed; 1 change, 1 failure (1.0), not restored.
    let staging = DeliveryMetrics {
        environment: "staging".into(),
        deployments: 0,
        deployments_per_day: 0.0,
        lead_time: Spread::default(),
        changes: 1,
        failed_changes: 1,
        change_failure_ratio: Some(1.0),
        time_to_restore: Spread::default(),
        unrestored: 1,
    };
    // qa: nothing at all.
    let qa = DeliveryMetrics {
        environment: "qa".into(),
        deployments: 0,
        deployments_per_day: 0.0,
        lead_time: Spread::default(),
        changes: 0,
        failed_changes: 0,
        change_failure_ratio: None,
        time_to_restore: Spread::default(),
        unrestored: 0,
    };
    assert_eq!(figures, [prod, staging, qa]);

    // A window of the last day only: P4's success is outside it, R1's is inside.
    let last_day = store
        .delivery_metrics(&DeliveryQuery {
            environments: vec!["prod".into()],
            since: at(T + 106 * HOUR),
            until: at(T + 130 * HOUR),
        })
        .await?;
    // R1: one deployment in one day, no lead time (a rollback), one change that did not fail.
    assert_eq!(last_day[0].deployments, 1);
    assert_eq!(last_day[0].deployments_per_day, 1.0);
    assert_eq!(last_day[0].lead_time, Spread::default());
    assert_eq!((last_day[0].changes, last_day[0].failed_changes), (1, 0));
    Ok(())
}

#[tokio::test]
async fn a_scripted_history_gives_the_figures_worked_out_by_hand_on_sqlite() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = SqliteStore::open(dir.path()).await?;
    scripted_history_gives_the_figures_worked_out_by_hand(&store).await?;
    store.close().await?;
    Ok(())
}

#[tokio::test]
async fn a_scripted_history_gives_the_figures_worked_out_by_hand_on_postgres() -> TestResult {
    let url = postgres::fresh_database("delivery").await;
    let store = PostgresStore::connect(&PostgresUrl::parse(&url)?).await?;
    scripted_history_gives_the_figures_worked_out_by_hand(&store).await?;
    store.close().await?;
    Ok(())
}

/// `stagehand ARGS --server SERVER` with `token` in STAGEHAND_TOKEN.
fn as_user(server: &str, token: &str, args: &[&str]) -> Run {
    let mut command = command(args);
    command
        .args(["--server", server])
        .env("STAGEHAND_TOKEN", token);
    run_with(command)
}

/// Waits for promotion `id` to succeed; returns when it did, in milliseconds.
async fn succeeded_at(server: &str, id: &str) -> i64 {
    eventually(&format!("promotion {id} succeeds"), || async {
        let p = as_user(server, ALICE, &["promotion", id, "-o", "json"]).json();
        let state = p["state"].as_str().unwrap_or_default().to_owned();
        assert!(
            !["Failed", "Rejected", "Aborted"].contains(&state.as_str()),
            "promotion {id} ended {state}: {p}"
        );
        state == "Succeeded"
    })
    .await;
    let p = as_user(server, ALICE, &["promotion", id, "-o", "json"]).json();
    let time = p["transitions"]
        .as_array()
        .expect("transitions")
        .iter()
        .find(|t| t["to"] == "Succeeded")
        .and_then(|t| t["time"].as_str())
        .expect("a Succeeded transition with its time");
    millis(time)
}

fn millis(rfc3339: &str) -> i64 {
    let time = humantime::parse_rfc3339(rfc3339).expect("an RFC 3339 time");
    time.duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as i64
}

/// Seconds as the CLI prints them, to the millisecond they are measured in.
fn ms_of(seconds: &serde_json::Value) -> i64 {
    (seconds
        .as_f64()
        .unwrap_or_else(|| panic!("seconds, not {seconds}"))
        * 1000.0)
        .round() as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_served_stagehand_reports_its_promotions_and_rollback_in_metrics_and_on_the_metrics_endpoint()
 {
    let kube = cluster().client().await;
    let fx = Fixture::new(&kube).await;
    // The change began two days ago (committed then; authored a week ago, which does not
    // count): every lead time below runs from this commit.
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();
    let committed = now - 2 * DAY;
    fx.work
        .write(&[("environments/dev/app.yaml", &app("dev-2"))]);
    fx.work
        .commit_at("dev runs dev-2", committed - 5 * DAY, committed);
    fx.work.git(&["push", "-q", "origin", "main"]);
    let server = fx.start();
    let url = server.grpc.clone();
    eventually("dev runs dev-2", || async {
        fx.value(&kube, "dev").await.as_deref() == Some("dev-2")
    })
    .await;
    until_healthy(&url, ALICE, "dev").await;

    // dev → staging, approved by bob.
    let staging = as_user(&url, ALICE, &["promote", "--to", "staging", "-o", "json"]).json();
    let staging_id = staging["id"].as_str().expect("an ID").to_owned();
    as_user(&url, BOB, &["approve", &staging_id, "-o", "json"]).json();
    let staging_done = succeeded_at(&url, &staging_id).await;
    until_healthy(&url, ALICE, "staging").await;

    // staging → prod, two approvals. What prod gets is staging's promotion commit, made just
    // now; it stands for the change it carried, so prod's lead time also runs from two days ago.
    let prod = as_user(&url, ALICE, &["promote", "--to", "prod", "-o", "json"]).json();
    let prod_id = prod["id"].as_str().expect("an ID").to_owned();
    as_user(&url, BOB, &["approve", &prod_id, "-o", "json"]).json();
    as_user(&url, DAVE, &["approve", &prod_id, "-o", "json"]).json();
    let prod_done = succeeded_at(&url, &prod_id).await;
    assert_eq!(fx.value(&kube, "prod").await.as_deref(), Some("dev-2"));

    // Then prod is rolled back to what it ran before: the promotion counts as failed, and the
    // rollback restores prod.
    let history = as_user(&url, ALICE, &["env", "history", "prod", "-o", "json"]).json();
    let before = history["revisions"]
        .as_array()
        .expect("revisions")
        .iter()
        .find(|r| r["summary"] == "six environments")
        .and_then(|r| r["commit"].as_str())
        .unwrap_or_else(|| panic!("an earlier revision of prod in {history}"))
        .to_owned();
    let rollback = as_user(
        &url,
        ALICE,
        &[
            "rollback",
            "prod",
            "--to",
            &before,
            "--reason",
            "dev-2 breaks checkout",
            "-o",
            "json",
        ],
    )
    .json();
    let rollback_id = rollback["id"].as_str().expect("an ID").to_owned();
    let rollback_requested = millis(rollback["createTime"].as_str().expect("a time"));
    as_user(&url, BOB, &["approve", &rollback_id, "-o", "json"]).json();
    as_user(&url, DAVE, &["approve", &rollback_id, "-o", "json"]).json();
    let rollback_done = succeeded_at(&url, &rollback_id).await;
    assert_eq!(fx.value(&kube, "prod").await.as_deref(), Some("prod-1"));

    let metrics = as_user(&url, ALICE, &["metrics", "--window", "7d", "-o", "json"]).json();
    let of = |env: &str| {
        metrics["environments"]
            .as_array()
            .expect("environments")
            .iter()
            .find(|m| m["environment"] == env)
            .unwrap_or_else(|| panic!("{env} missing from {metrics}"))
            .clone()
    };
    let first_commit = (committed * 1000) as i64;
    let staging = of("staging");
    assert_eq!(staging["deployments"], 1, "{staging}");
    assert_eq!(staging["leadTime"]["count"], 1, "{staging}");
    assert_eq!(
        ms_of(&staging["leadTime"]["medianSeconds"]),
        staging_done - first_commit,
        "{staging}"
    );
    assert_eq!(
        (&staging["changes"], &staging["failedChanges"]),
        (&json!(1), &json!(0))
    );
    assert_eq!(staging["changeFailureRatio"], 0.0);
    // prod: the promotion and the rollback deployed; the promotion, the one with a lead time,
    // failed (a rollback followed it) and was restored when the rollback succeeded.
    let prod = of("prod");
    assert_eq!(prod["deployments"], 2, "{prod}");
    assert_eq!(prod["leadTime"]["count"], 1, "{prod}");
    assert_eq!(
        ms_of(&prod["leadTime"]["medianSeconds"]),
        prod_done - first_commit,
        "{prod}"
    );
    assert_eq!(
        (
            &prod["changes"],
            &prod["failedChanges"],
            &prod["changeFailureRatio"]
        ),
        (&json!(2), &json!(1), &json!(0.5)),
        "{prod}"
    );
    assert_eq!(prod["timeToRestore"]["count"], 1, "{prod}");
    assert_eq!(
        ms_of(&prod["timeToRestore"]["medianSeconds"]),
        rollback_done - rollback_requested,
        "{prod}"
    );
    assert_eq!(
        of("dev")["deployments"],
        0,
        "dev is never promoted into: {metrics}"
    );
    // vera may view every environment; a window of one environment answers it alone.
    let one = as_user(
        &url,
        VERA,
        &["metrics", "--environment", "prod", "-o", "json"],
    )
    .json();
    assert_eq!(
        one["environments"].as_array().map(Vec::len),
        Some(1),
        "{one}"
    );
    assert_eq!(one["environments"][0]["deployments"], 2, "{one}");
    let table = as_user(&url, ALICE, &["metrics", "-o", "table"]);
    assert!(
        table.stdout.contains("1/2 (50%)"),
        "prod's change failure rate: {}",
        table.stdout
    );

    // Bad input names the field, or the environment.
    let refused = as_user(&url, ALICE, &["metrics", "--window", "0s"]);
    assert_eq!(
        refused.code, 23,
        "INVALID_ARGUMENT is 20 + 3: {}",
        refused.stderr
    );
    assert!(
        refused.stderr.contains("window: must be positive"),
        "{}",
        refused.stderr
    );
    let unknown = as_user(&url, ALICE, &["metrics", "--environment", "nowhere"]);
    assert_eq!(unknown.code, 25, "NOT_FOUND is 20 + 5: {}", unknown.stderr);
    assert!(unknown.stderr.contains("nowhere"), "{}", unknown.stderr);

    // /metrics, read by the Prometheus client library's parser.
    let scraped = generic_client(&[&format!("http://{}/metrics", server.http), "metrics"]);
    let sample = |family: &str, labels: serde_json::Value| -> Option<f64> {
        scraped[family]
            .as_array()
            .unwrap_or_else(|| panic!("no family {family} in {scraped}"))
            .iter()
            .find(|s| {
                labels
                    .as_object()
                    .expect("labels")
                    .iter()
                    .all(|(k, v)| &s["labels"][k] == v)
            })
            .map(|s| s["value"].as_f64().expect("a number"))
    };
    assert_eq!(
        sample(
            "stagehand_delivery_deployments",
            json!({"environment": "prod"})
        ),
        Some(2.0)
    );
    assert_eq!(
        sample(
            "stagehand_delivery_deployments",
            json!({"environment": "staging"})
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            "stagehand_delivery_change_failure_ratio",
            json!({"environment": "prod"})
        ),
        Some(0.5)
    );
    let lead = sample(
        "stagehand_delivery_lead_time_seconds",
        json!({"environment": "prod", "quantile": "0.5"}),
    )
    .expect("prod's median lead time");
    assert_eq!((lead * 1000.0).round() as i64, prod_done - first_commit);
    let restore = sample(
        "stagehand_delivery_time_to_restore_seconds",
        json!({"environment": "prod", "quantile": "0.5"}),
    )
    .expect("prod's median time to restore");
    assert_eq!(
        (restore * 1000.0).round() as i64,
        rollback_done - rollback_requested
    );
    // Nothing was measured for dev's lead time: no sample rather than a made-up zero.
    assert_eq!(
        sample(
            "stagehand_delivery_lead_time_seconds",
            json!({"environment": "dev"})
        ),
        None
    );
    drop(server);
}
