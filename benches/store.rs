//! The store under the load issue 15 names: 10,000 stored promotions, each with its
//! transitions and an approval, then ListPromotions-shaped reads from 100 concurrent clients;
//! on the embedded SQLite store, then on the shared PostgreSQL store side by side.
//!
//! `cargo bench --bench store` (SQLite in a temporary directory on the disk `TMPDIR` names; on
//! a tmpfs such as /dev/shm, fsync costs nothing and the figures show the CPU cost alone).
//! PostgreSQL runs when `STAGEHAND_TEST_DATABASE_URL` names a server (`scripts/postgres.sh up
//! DIR` starts one, with fsync off), in a fresh database. `STORE_BENCH_PROMOTIONS` changes how
//! many promotions are stored.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use stagehand::store::{
    self, Approval, NewPromotion, PostgresStore, PostgresUrl, PromotionFilter, PromotionKind,
    PromotionState, SqliteStore, Store, SyncCounts, SyncRun, Transition,
};

const CLIENTS: usize = 100;
const READ_FOR: Duration = Duration::from_secs(3);

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p) as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0)
}

fn promotions() -> usize {
    std::env::var("STORE_BENCH_PROMOTIONS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(10_000)
}

async fn fill(store: &dyn Store) -> Vec<Duration> {
    let targets = ["staging", "prod"];
    let mut transitions = Vec::with_capacity(promotions() * 5);
    for i in 0..promotions() {
        let promotion = store
            .create_promotion(NewPromotion {
                id: store::new_promotion_id(),
                kind: PromotionKind::Promotion,
                source_environment: Some("dev".to_owned()),
                target_environment: targets[i % 2].to_owned(),
                revision: format!("{i:040x}"),
                rerun: false,
                requested_by: "release-bot".to_owned(),
                reason: "nightly".to_owned(),
                state: PromotionState::AwaitingApproval,
                at: SystemTime::now(),
                detail: None,
            })
            .await
            .expect("create");
        store
            .add_approval(
                &promotion.id,
                Approval {
                    approver: "alice".to_owned(),
                    email: "alice@example.com".to_owned(),
                    groups: vec!["qa".to_owned()],
                    at: SystemTime::now(),
                    comment: String::new(),
                },
            )
            .await
            .expect("approve");
        for (from, to) in [
            (PromotionState::AwaitingApproval, PromotionState::Approved),
            (PromotionState::Approved, PromotionState::Promoting),
            (PromotionState::Promoting, PromotionState::Syncing),
            (PromotionState::Syncing, PromotionState::Verifying),
            (PromotionState::Verifying, PromotionState::Succeeded),
        ] {
            let start = Instant::now();
            store
                .transition(Transition {
                    promotion_id: promotion.id.clone(),
                    from,
                    from_version: None,
                    to,
                    actor: "stagehand".to_owned(),
                    reason: format!("{to}"),
                    at: SystemTime::now(),
                    commit: None,
                    detail: None,
                    audit: None,
                })
                .await
                .expect("transition");
            transitions.push(start.elapsed());
        }
    }
    transitions
}

/// What one run measured, in milliseconds where not said otherwise.
struct Figures {
    fill_seconds: f64,
    transition: (f64, f64),
    record_sync: (f64, f64),
    list_per_second: f64,
    list: (f64, f64),
}

fn p50_p99(mut samples: Vec<Duration>) -> (f64, f64) {
    samples.sort();
    (
        ms(percentile(&samples, 0.5)),
        ms(percentile(&samples, 0.99)),
    )
}

async fn run(store: Arc<dyn Store>) -> Figures {
    let start = Instant::now();
    let transitions = fill(&*store).await;
    let fill_seconds = start.elapsed().as_secs_f64();

    let mut syncs = Vec::new();
    for i in 0..2_000u32 {
        let start = Instant::now();
        store
            .record_sync(SyncRun {
                environment: format!("env-{}", i % 20),
                revision: format!("{i:040x}"),
                content: Some(format!("{:040x}", i / 2)),
                started_at: SystemTime::now(),
                finished_at: SystemTime::now(),
                result: "succeeded".to_owned(),
                message: String::new(),
                trigger: "poll".to_owned(),
                applied: true,
                counts: SyncCounts::default(),
            })
            .await
            .expect("record a sync");
        syncs.push(start.elapsed());
    }

    let deadline = Instant::now() + READ_FOR;
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let filter = PromotionFilter {
                    environment: Some(if i % 2 == 0 { "prod" } else { "staging" }.to_owned()),
                    limit: 50,
                    ..PromotionFilter::default()
                };
                while Instant::now() < deadline {
                    let start = Instant::now();
                    let page = store.promotions(&filter).await.expect("list");
                    assert_eq!(page.items.len(), 50);
                    latencies.push(start.elapsed());
                }
                latencies
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for client in clients {
        latencies.extend(client.await.expect("client"));
    }
    Figures {
        fill_seconds,
        transition: p50_p99(transitions),
        record_sync: p50_p99(syncs),
        list_per_second: latencies.len() as f64 / READ_FOR.as_secs_f64(),
        list: p50_p99(latencies),
    }
}

/// A fresh database on the server `STAGEHAND_TEST_DATABASE_URL` names (its URL form).
async fn fresh_postgres(server: &str) -> String {
    let (client, connection) = tokio_postgres::connect(server, tokio_postgres::NoTls)
        .await
        .expect("the PostgreSQL server answers");
    tokio::spawn(connection);
    let name = format!(
        "store_bench_{}_{}",
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

fn print(name: &str, f: &Figures) {
    println!(
        "{name}: wrote {} promotions (create, approval, 5 transitions each) in {:.1} s; \
         transition p50 {:.2} ms, p99 {:.2} ms",
        promotions(),
        f.fill_seconds,
        f.transition.0,
        f.transition.1,
    );
    println!(
        "{name}: record_sync (not synced to disk at once): p50 {:.2} ms, p99 {:.2} ms",
        f.record_sync.0, f.record_sync.1,
    );
    println!(
        "{name}: ListPromotions (50 per page, by environment) from {CLIENTS} concurrent \
         clients: {:.0} requests/s, p50 {:.2} ms, p99 {:.2} ms",
        f.list_per_second, f.list.0, f.list.1,
    );
}

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().expect("temp dir");
    let sqlite = SqliteStore::open(dir.path()).await.expect("open");
    let path = sqlite.path().to_owned();
    let on_sqlite = run(Arc::new(sqlite)).await;
    print("SQLite (synchronous=FULL)", &on_sqlite);
    let size = std::fs::metadata(path).map_or(0, |m| m.len());
    println!(
        "SQLite: database {:.1} MiB; peak RSS so far {:.0} MiB",
        size as f64 / (1024.0 * 1024.0),
        peak_rss_mib()
    );

    let Ok(server) = std::env::var("STAGEHAND_TEST_DATABASE_URL") else {
        println!("PostgreSQL: not run (set STAGEHAND_TEST_DATABASE_URL; see the file's header)");
        return;
    };
    let url = PostgresUrl::parse(&fresh_postgres(&server).await).expect("the URL parses");
    let postgres = PostgresStore::connect(&url).await.expect("connect");
    let on_postgres = run(Arc::new(postgres)).await;
    print("PostgreSQL", &on_postgres);
    println!(
        "PostgreSQL / SQLite: fill {:.2}x, transition p50 {:.2}x, record_sync p50 {:.2}x, \
         ListPromotions throughput {:.2}x; peak RSS {:.0} MiB",
        on_postgres.fill_seconds / on_sqlite.fill_seconds,
        on_postgres.transition.0 / on_sqlite.transition.0,
        on_postgres.record_sync.0 / on_sqlite.record_sync.0,
        on_postgres.list_per_second / on_sqlite.list_per_second,
        peak_rss_mib(),
    );
}
