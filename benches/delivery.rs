//! Delivery metrics over 10,000 stored promotions: how long one `Store::delivery_metrics` call
//! takes (what GetDeliveryMetrics and a /metrics refresh run), on SQLite, then on PostgreSQL,
//! and that both answer the same figures.
//!
//! `cargo bench --bench delivery` (SQLite in a temporary directory on the disk `TMPDIR` names;
//! on /dev/shm the fill goes faster, the query is the same). PostgreSQL runs when
//! `STAGEHAND_TEST_DATABASE_URL` names a server (`scripts/postgres.sh up DIR`), in a fresh
//! database. `DELIVERY_BENCH_PROMOTIONS` changes how many promotions are stored.
//!
//! The history: promotions into 4 environments over 90 days, each with its creation and 5
//! transitions and a detail holding authors and a first commit time, as the engine writes
//! them: most succeed, one in 10 fails verification, one in 20 is rejected before Git, and
//! one in 20 is a rollback.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::json;
use stagehand::store::{
    self, DeliveryMetrics, DeliveryQuery, NewPromotion, PostgresStore, PostgresUrl, PromotionKind,
    PromotionState, SqliteStore, Store, Transition,
};

const ENVIRONMENTS: [&str; 4] = ["dev", "staging", "prod", "qa"];
const HISTORY_DAYS: u64 = 90;
const CALLS: usize = 50;

fn promotions() -> usize {
    std::env::var("DELIVERY_BENCH_PROMOTIONS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(10_000)
}

/// The fixed end of the history, so that both engines hold the same times.
fn end() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_800_000_000)
}

async fn fill(store: &dyn Store) {
    let n = promotions() as u64;
    let start = end() - Duration::from_secs(HISTORY_DAYS * 86_400);
    let step = HISTORY_DAYS * 86_400_000 / n;
    for i in 0..n {
        let requested = start + Duration::from_millis(i * step);
        // Each environment gets every fate: the environment is i % 4, the fate (i / 4) % 20.
        let fate = (i / 4) % 20;
        let kind = if fate == 7 {
            PromotionKind::Rollback
        } else {
            PromotionKind::Promotion
        };
        let first_commit = requested - Duration::from_secs(3_600 + (i % 48) * 1_800);
        let first_commit_ms = first_commit
            .duration_since(UNIX_EPOCH)
            .expect("after 1970")
            .as_millis() as i64;
        let detail = match kind {
            PromotionKind::Promotion => json!({
                "authors": ["a@example.com", "b@example.com"],
                "requesterEmail": "riley@example.com",
                store::FIRST_COMMIT_AT: first_commit_ms,
            }),
            PromotionKind::Rollback => json!({"authors": ["a@example.com"]}),
        };
        let created = store
            .create_promotion(NewPromotion {
                id: store::new_promotion_id(),
                kind,
                source_environment: (kind == PromotionKind::Promotion).then(|| "dev".into()),
                target_environment: ENVIRONMENTS[(i % 4) as usize].to_owned(),
                revision: format!("{i:040x}"),
                rerun: false,
                requested_by: "riley".to_owned(),
                reason: "release".to_owned(),
                state: PromotionState::Pending,
                at: requested,
                detail: Some(detail.clone()),
            })
            .await
            .expect("create");
        use PromotionState::*;
        let path: &[PromotionState] = match fate {
            3 => &[AwaitingApproval, Rejected],
            5 | 15 => &[Approved, Promoting, Syncing, Verifying, Failed],
            _ => &[Approved, Promoting, Syncing, Verifying, Succeeded],
        };
        let mut from = Pending;
        for (k, &to) in path.iter().enumerate() {
            store
                .transition(Transition {
                    promotion_id: created.id.clone(),
                    from,
                    from_version: None,
                    to,
                    actor: "stagehand".to_owned(),
                    reason: format!("{to}"),
                    at: requested + Duration::from_secs(60 * (k as u64 + 1)),
                    commit: None,
                    detail: Some(detail.clone()),
                    audit: None,
                })
                .await
                .expect("transition");
            from = to;
        }
    }
}

fn query(days: u64) -> DeliveryQuery {
    DeliveryQuery {
        environments: ENVIRONMENTS.iter().map(|e| (*e).to_owned()).collect(),
        since: end() - Duration::from_secs(days * 86_400),
        until: end(),
    }
}

/// Median and slowest of `CALLS` calls over the last `days`, and the figures.
async fn time(store: &dyn Store, days: u64) -> (Duration, Duration, Vec<DeliveryMetrics>) {
    let mut took = Vec::with_capacity(CALLS);
    let mut figures = Vec::new();
    for _ in 0..CALLS {
        let start = Instant::now();
        figures = store.delivery_metrics(&query(days)).await.expect("metrics");
        took.push(start.elapsed());
    }
    took.sort();
    (took[CALLS / 2], took[CALLS - 1], figures)
}

async fn run(name: &str, store: &dyn Store) -> Vec<Vec<DeliveryMetrics>> {
    let start = Instant::now();
    fill(store).await;
    println!(
        "{name}: stored {} promotions (creation and up to 5 transitions each) in {:.1} s",
        promotions(),
        start.elapsed().as_secs_f64()
    );
    let mut all = Vec::new();
    for days in [30, HISTORY_DAYS] {
        let (median, slowest, figures) = time(store, days).await;
        println!(
            "{name}: delivery_metrics over the last {days} days, 4 environments: median {:.1} ms, \
             slowest {:.1} ms of {CALLS} calls",
            median.as_secs_f64() * 1e3,
            slowest.as_secs_f64() * 1e3,
        );
        all.push(figures);
    }
    let prod = &all[0][2];
    println!(
        "{name}: prod over 30 days: {} deployments ({:.2} a day), lead time median {:?} p90 {:?}, \
         change failure {}/{}, time to restore median {:?}",
        prod.deployments,
        prod.deployments_per_day,
        prod.lead_time.median,
        prod.lead_time.p90,
        prod.failed_changes,
        prod.changes,
        prod.time_to_restore.median,
    );
    all
}

/// A fresh database on the server `STAGEHAND_TEST_DATABASE_URL` names (its URL form).
async fn fresh_postgres(server: &str) -> String {
    let (client, connection) = tokio_postgres::connect(server, tokio_postgres::NoTls)
        .await
        .expect("the PostgreSQL server answers");
    tokio::spawn(connection);
    let name = format!(
        "delivery_bench_{}_{}",
        std::process::id(),
        store::new_promotion_id()
    );
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .expect("a database for the bench");
    let (base, query) = server.split_once('?').unwrap_or((server, ""));
    let (server, _) = base.rsplit_once('/').expect("the URL names a database");
    let query = if query.is_empty() {
        String::new()
    } else {
        format!("?{query}")
    };
    format!("{server}/{name}{query}")
}

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().expect("temp dir");
    let sqlite = SqliteStore::open(dir.path()).await.expect("open");
    let on_sqlite = run("SQLite", &sqlite).await;
    sqlite.close().await.expect("close");

    let Ok(server) = std::env::var("STAGEHAND_TEST_DATABASE_URL") else {
        println!("PostgreSQL: not run (set STAGEHAND_TEST_DATABASE_URL; see the file's header)");
        return;
    };
    let url = PostgresUrl::parse(&fresh_postgres(&server).await).expect("the URL parses");
    let postgres = PostgresStore::connect(&url).await.expect("connect");
    let on_postgres = run("PostgreSQL", &postgres).await;
    assert_eq!(
        on_sqlite, on_postgres,
        "SQLite and PostgreSQL answer the same figures"
    );
    println!("SQLite and PostgreSQL answered the same figures");
    postgres.close().await.expect("close");
}
