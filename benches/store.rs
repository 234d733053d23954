//! The embedded store under the load issue 15 names: 10,000 stored promotions, each with its
//! transitions and an approval, then ListPromotions-shaped reads from 100 concurrent clients.
//!
//! `cargo bench --bench store` (in a temporary directory on the disk `TMPDIR` names; on a
//! tmpfs such as /dev/shm, fsync costs nothing and the figures show the CPU cost alone).
//! `STORE_BENCH_PROMOTIONS` changes how many promotions are stored.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use stagehand::store::{
    self, Approval, NewPromotion, PromotionFilter, PromotionKind, PromotionState, SqliteStore,
    Store, SyncCounts, SyncRun, Transition,
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

async fn fill(store: &SqliteStore) -> Vec<Duration> {
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

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Arc::new(SqliteStore::open(dir.path()).await.expect("open"));

    let start = Instant::now();
    let mut transitions = fill(&store).await;
    let filled = start.elapsed();
    transitions.sort();
    let size = std::fs::metadata(store.path()).map_or(0, |m| m.len());
    println!(
        "wrote {} promotions (create, approval, 5 transitions each) in {:.1} s; \
         transition p50 {:.2} ms, p99 {:.2} ms (synchronous=FULL); database {:.1} MiB",
        promotions(),
        filled.as_secs_f64(),
        ms(percentile(&transitions, 0.5)),
        ms(percentile(&transitions, 0.99)),
        size as f64 / (1024.0 * 1024.0),
    );

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
    syncs.sort();
    println!(
        "record_sync (not synced to disk at once): p50 {:.2} ms, p99 {:.2} ms",
        ms(percentile(&syncs, 0.5)),
        ms(percentile(&syncs, 0.99)),
    );

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
    latencies.sort();
    println!(
        "ListPromotions (50 per page, by environment) from {CLIENTS} concurrent clients: \
         {:.0} requests/s, p50 {:.2} ms, p99 {:.2} ms; peak RSS {:.0} MiB",
        latencies.len() as f64 / READ_FOR.as_secs_f64(),
        ms(percentile(&latencies, 0.5)),
        ms(percentile(&latencies, 0.99)),
        peak_rss_mib(),
    );
}
