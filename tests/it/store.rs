//! The embedded store on real SQLite files: what is written reads back, survives a restart, and
//! a database that cannot be trusted is refused and left as it was.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use stagehand::store::{
    self, Approval, ApprovalOutcome, AuditAction, AuditFilter, DATABASE_FILE,
    HISTORY_PER_ENVIRONMENT, Hold, NewAuditEvent, NewEvent, NewPromotion, PromotionFilter,
    PromotionKind, PromotionState, Severity, SqliteStore, Store, SyncCounts, SyncRun, Transition,
    TransitionOutcome,
};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// Whole milliseconds, as the store keeps them.
fn at(seconds: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_780_000_000 + seconds)
}

fn audit(actor: &str, action: AuditAction, environment: &str, reason: &str) -> NewAuditEvent {
    NewAuditEvent {
        at: at(5),
        actor: actor.to_owned(),
        action,
        environment: Some(environment.to_owned()),
        promotion_id: None,
        revision: None,
        reason: reason.to_owned(),
    }
}

fn sync_run(environment: &str, revision: &str, applied: bool, started: u64) -> SyncRun {
    SyncRun {
        environment: environment.to_owned(),
        revision: revision.to_owned(),
        content: Some(format!("tree-of-{revision}")),
        started_at: at(started),
        finished_at: at(started + 2),
        result: if applied { "succeeded" } else { "apply_failed" }.to_owned(),
        message: "3 objects".to_owned(),
        trigger: "webhook".to_owned(),
        applied,
        counts: SyncCounts {
            created: 1,
            changed: 2,
            pruned: 3,
            drifted: 4,
            adopted: 5,
        },
    }
}

fn new_promotion(target: &str, revision: &str, second: u64) -> NewPromotion {
    NewPromotion {
        id: store::new_promotion_id(),
        kind: PromotionKind::Promotion,
        source_environment: Some("dev".to_owned()),
        target_environment: target.to_owned(),
        revision: revision.to_owned(),
        rerun: false,
        requested_by: "alice".to_owned(),
        reason: "release 1.2".to_owned(),
        state: PromotionState::AwaitingApproval,
        at: at(second),
        detail: Some(serde_json::json!({"missing": 1})),
    }
}

fn transition(id: &str, from: PromotionState, to: PromotionState) -> Transition {
    Transition {
        promotion_id: id.to_owned(),
        from,
        from_version: None,
        to,
        actor: "stagehand".to_owned(),
        reason: format!("{from} done"),
        at: at(50),
        commit: None,
        detail: None,
        audit: None,
    }
}

/// Writes one of everything the store holds, through the trait object the service will hold;
/// returns the promotion's id.
async fn write_everything(store: &dyn Store) -> Result<String, store::Error> {
    store
        .set_suspension(
            "prod",
            Some(Hold {
                reason: "incident 42".to_owned(),
                by: "bob".to_owned(),
                at: at(1),
            }),
            audit("bob", AuditAction::Suspended, "prod", "incident 42"),
        )
        .await?;
    store
        .save_status(
            "dev",
            serde_json::value::to_raw_value(
                &serde_json::json!({"reason": "Succeeded", "objects": 3}),
            )
            .expect("JSON"),
        )
        .await?;
    store
        .record_sync(sync_run("dev", "aaa111", true, 10))
        .await?;
    store
        .record_sync(sync_run("dev", "bbb222", false, 20))
        .await?;
    store
        .append_event(NewEvent {
            environment: Some("dev".to_owned()),
            at: at(21),
            severity: Severity::Warning,
            kind: "DriftDetected".to_owned(),
            message: "Deployment/web: spec.replicas".to_owned(),
            revision: Some("aaa111".to_owned()),
        })
        .await?;
    let promotion = store
        .create_promotion(new_promotion("staging", "aaa111", 30))
        .await?;
    let approval = Approval {
        approver: "carol".to_owned(),
        email: "carol@example.com".to_owned(),
        groups: vec!["qa".to_owned()],
        at: at(31),
        comment: "tested".to_owned(),
    };
    assert_eq!(
        store.add_approval(&promotion.id, approval).await?,
        ApprovalOutcome::Recorded
    );
    let mut approve = transition(
        &promotion.id,
        PromotionState::AwaitingApproval,
        PromotionState::Approved,
    );
    approve.detail = Some(serde_json::json!({"approvers": ["carol"]}));
    let outcome = store.transition(approve).await?;
    assert!(matches!(outcome, TransitionOutcome::Applied(_)));
    let mut commit = transition(
        &promotion.id,
        PromotionState::Approved,
        PromotionState::Promoting,
    );
    commit.commit = Some("ccc333".to_owned());
    store.transition(commit).await?;
    Ok(promotion.id)
}

/// Reads back what [`write_everything`] wrote, field by field.
async fn assert_everything(store: &dyn Store, id: &str) -> TestResult {
    let prod = store.environment("prod").await?.expect("prod was stored");
    assert_eq!(
        prod.suspended,
        Some(Hold {
            reason: "incident 42".to_owned(),
            by: "bob".to_owned(),
            at: at(1),
        })
    );
    assert_eq!(prod.applied_revision, None);

    let dev = store.environment("dev").await?.expect("dev was stored");
    assert_eq!(dev.applied_revision.as_deref(), Some("aaa111"));
    assert_eq!(dev.applied_at, Some(at(12)));
    assert_eq!(dev.suspended, None);
    assert_eq!(
        dev.status,
        Some(serde_json::json!({"reason": "Succeeded", "objects": 3}))
    );
    let names: Vec<_> = store
        .environments()
        .await?
        .into_iter()
        .map(|env| env.name)
        .collect();
    assert_eq!(names, ["dev", "prod"]);

    let history = store.sync_history("dev", 0).await?;
    assert_eq!(history.len(), 2);
    assert_eq!(history[0].run, sync_run("dev", "bbb222", false, 20));
    assert_eq!(history[1].run, sync_run("dev", "aaa111", true, 10));

    let events = store.events(Some("dev"), 10).await?;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].event.kind, "DriftDetected");
    assert_eq!(events[0].event.severity, Severity::Warning);
    assert_eq!(store.events(None, 10).await?.len(), 1);
    assert!(store.events(Some("prod"), 10).await?.is_empty());

    let detail = store
        .promotion(id)
        .await?
        .expect("the promotion was stored");
    let promotion = &detail.promotion;
    assert_eq!(promotion.state, PromotionState::Promoting);
    assert_eq!(promotion.commit.as_deref(), Some("ccc333"));
    assert_eq!(promotion.message, "Approved done");
    assert_eq!(promotion.version, 3);
    assert_eq!(promotion.created_at, at(30));
    assert_eq!(promotion.updated_at, at(50));
    assert_eq!(promotion.source_environment.as_deref(), Some("dev"));
    assert_eq!(detail.approvals.len(), 1);
    assert_eq!(detail.approvals[0].groups, ["qa"]);
    let states: Vec<_> = detail
        .transitions
        .iter()
        .map(|t| (t.seq, t.from, t.to))
        .collect();
    assert_eq!(
        states,
        [
            (1, None, PromotionState::AwaitingApproval),
            (
                2,
                Some(PromotionState::AwaitingApproval),
                PromotionState::Approved
            ),
            (3, Some(PromotionState::Approved), PromotionState::Promoting),
        ]
    );
    assert_eq!(
        detail.transitions[1].detail,
        Some(serde_json::json!({"approvers": ["carol"]}))
    );

    let audit = store.audit_events(&AuditFilter::default()).await?;
    let actions: Vec<_> = audit
        .items
        .iter()
        .map(|e| (e.event.actor.as_str(), e.event.action))
        .collect();
    assert_eq!(
        actions,
        [
            ("carol", AuditAction::Approved),
            ("alice", AuditAction::Requested),
            ("bob", AuditAction::Suspended),
        ]
    );
    assert_eq!(audit.items[0].event.promotion_id.as_deref(), Some(id));
    Ok(())
}

#[tokio::test]
async fn everything_written_reads_back_the_same() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = SqliteStore::open(dir.path()).await?;
    let id = write_everything(&store).await?;
    assert_everything(&store, &id).await
}

#[tokio::test]
async fn state_survives_closing_and_opening_the_store_again() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = SqliteStore::open(dir.path()).await?;
    let id = write_everything(&store).await?;
    store.close().await?;

    let reopened = SqliteStore::open(dir.path()).await?;
    assert_everything(&reopened, &id).await?;
    // And it keeps working where it left off.
    reopened
        .record_sync(sync_run("dev", "ddd444", true, 60))
        .await?;
    let dev = reopened.environment("dev").await?.expect("dev was stored");
    assert_eq!(dev.applied_revision.as_deref(), Some("ddd444"));
    Ok(())
}

/// Set in the child process of [`nothing_acknowledged_is_lost_when_the_process_is_killed`].
const CRASH_DIR: &str = "STAGEHAND_TEST_STORE_CRASH_DIR";

/// The child writes everything, says so, and waits to be killed with SIGKILL (no close, no
/// checkpoint); the parent then opens the same directory.
#[tokio::test]
async fn nothing_acknowledged_is_lost_when_the_process_is_killed() -> TestResult {
    if let Some(dir) = std::env::var_os(CRASH_DIR) {
        let store = SqliteStore::open(Path::new(&dir)).await?;
        let id = write_everything(&store).await?;
        println!("written {id}");
        std::io::Write::flush(&mut std::io::stdout())?;
        std::thread::sleep(Duration::from_secs(600));
        return Err("the child was not killed".into());
    }
    let dir = tempfile::tempdir()?;
    let mut child = std::process::Command::new(std::env::current_exe()?)
        .args([
            "--exact",
            "store::nothing_acknowledged_is_lost_when_the_process_is_killed",
            "--nocapture",
        ])
        .env(CRASH_DIR, dir.path())
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let stdout = child.stdout.take().expect("stdout is piped");
    let id = std::io::BufRead::lines(std::io::BufReader::new(stdout))
        .map_while(Result::ok)
        .find_map(|line| line.strip_prefix("written ").map(str::to_owned))
        .ok_or("the child never wrote")?;
    child.kill()?;
    child.wait()?;
    assert!(
        dir.path().join(format!("{DATABASE_FILE}-wal")).exists(),
        "the killed process left its write-ahead log behind"
    );

    let reopened = SqliteStore::open(dir.path()).await?;
    assert_everything(&reopened, &id).await
}

#[tokio::test]
async fn a_missing_state_directory_is_created_with_a_database_at_the_current_schema() -> TestResult
{
    let dir = tempfile::tempdir()?;
    let state = dir.path().join("state").join("nested");
    let store = SqliteStore::open(&state).await?;
    assert_eq!(store.path(), state.join(DATABASE_FILE));
    assert_eq!(store.schema_version().await?, 2);
    assert!(store.environment("dev").await?.is_none());
    Ok(())
}

#[tokio::test]
async fn an_empty_file_is_migrated_to_the_current_schema() -> TestResult {
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join(DATABASE_FILE), b"")?;
    let store = SqliteStore::open(dir.path()).await?;
    assert_eq!(store.schema_version().await?, 2);
    let id = write_everything(&store).await?;
    assert_everything(&store, &id).await
}

/// Opens the store expecting a refusal; checks the file was left byte for byte as it was.
async fn refused(dir: &Path) -> store::Error {
    let file = dir.join(DATABASE_FILE);
    let before = std::fs::read(&file).expect("the database file exists");
    let error = match SqliteStore::open(dir).await {
        Ok(_) => panic!("the store opened {}", file.display()),
        Err(error) => error,
    };
    let after = std::fs::read(&file).expect("the database file is still there");
    assert!(before == after, "the refused database was modified");
    assert!(
        error.to_string().contains(&file.display().to_string()),
        "the error names the file: {error}"
    );
    error
}

#[tokio::test]
async fn a_file_that_is_not_a_database_is_refused_and_left_as_it_was() -> TestResult {
    let dir = tempfile::tempdir()?;
    std::fs::write(
        dir.path().join(DATABASE_FILE),
        b"this is not an SQLite database, but it is long enough to hold a header of one".repeat(20),
    )?;
    let error = refused(dir.path()).await;
    assert!(
        matches!(error, store::Error::Corrupt { .. }),
        "refused as corrupt: {error:?}"
    );
    Ok(())
}

#[tokio::test]
async fn a_database_with_damaged_pages_is_refused() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = SqliteStore::open(dir.path()).await?;
    for i in 0..200 {
        store
            .record_sync(sync_run("dev", &format!("rev{i:04}"), true, i))
            .await?;
    }
    store.close().await?;
    // Overwrite the middle of the file, past the header and the schema page.
    let file = dir.path().join(DATABASE_FILE);
    let mut bytes = std::fs::read(&file)?;
    assert!(bytes.len() > 4 * 4096, "the database spans several pages");
    let middle = bytes.len() / 2 / 4096 * 4096;
    bytes[middle..middle + 4096].fill(0xa5);
    std::fs::write(&file, &bytes)?;

    let error = refused(dir.path()).await;
    assert!(
        matches!(error, store::Error::Corrupt { .. }),
        "refused as corrupt: {error:?}"
    );
    assert!(error.to_string().contains("restore it from a backup"));
    Ok(())
}

#[tokio::test]
async fn a_database_from_a_newer_stagehand_is_refused() -> TestResult {
    let dir = tempfile::tempdir()?;
    SqliteStore::open(dir.path()).await?.close().await?;
    let file = dir.path().join(DATABASE_FILE);
    let conn = rusqlite::Connection::open(&file)?;
    conn.pragma_update(None, "user_version", 7)?;
    drop(conn);

    let error = refused(dir.path()).await;
    assert!(
        matches!(
            error,
            store::Error::NewerSchema {
                found: 7,
                supported: 2,
                ..
            }
        ),
        "refused as newer: {error:?}"
    );
    assert!(error.to_string().contains("schema version 7"));
    Ok(())
}

#[tokio::test]
async fn another_applications_database_is_refused() -> TestResult {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join(DATABASE_FILE);
    let conn = rusqlite::Connection::open(&file)?;
    conn.execute_batch("CREATE TABLE notes (text TEXT)")?;
    drop(conn);

    let error = refused(dir.path()).await;
    assert!(
        matches!(error, store::Error::ForeignDatabase { .. }),
        "refused as foreign: {error:?}"
    );
    Ok(())
}

fn quiet(mut run: SyncRun) -> SyncRun {
    run.counts = SyncCounts::default();
    run
}

#[tokio::test]
async fn quiet_passes_fold_into_one_history_record_and_applied_at_keeps_the_first() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = SqliteStore::open(dir.path()).await?;
    let first = store
        .record_sync(sync_run("dev", "aaa111", true, 0))
        .await?;
    assert_eq!(first.passes, 1);
    let quiet_start = store
        .record_sync(quiet(sync_run("dev", "aaa111", true, 10)))
        .await?;
    assert_ne!(quiet_start.id, first.id, "the pass before changed objects");
    for started in [20, 30] {
        let folded = store
            .record_sync(quiet(sync_run("dev", "aaa111", true, started)))
            .await?;
        assert_eq!(folded.id, quiet_start.id);
    }
    store
        .record_sync(quiet(sync_run("dev", "aaa111", false, 40)))
        .await?;
    store
        .record_sync(quiet(sync_run("dev", "bbb222", true, 50)))
        .await?;

    let history = store.sync_history("dev", 0).await?;
    let summary: Vec<_> = history
        .iter()
        .map(|r| (r.run.revision.as_str(), r.run.result.as_str(), r.passes))
        .collect();
    assert_eq!(
        summary,
        [
            ("bbb222", "succeeded", 1),
            ("aaa111", "apply_failed", 1),
            ("aaa111", "succeeded", 3),
            ("aaa111", "succeeded", 1),
        ]
    );
    assert_eq!(history[2].run.started_at, at(10));
    assert_eq!(history[2].run.finished_at, at(32));

    // Soak time counts from the pass that first applied a revision.
    let dev = store.environment("dev").await?.expect("stored");
    assert_eq!(dev.applied_revision.as_deref(), Some("bbb222"));
    assert_eq!(dev.applied_at, Some(at(52)));
    store
        .record_sync(quiet(sync_run("dev", "bbb222", true, 60)))
        .await?;
    let dev = store.environment("dev").await?.expect("stored");
    assert_eq!(dev.applied_at, Some(at(52)));
    Ok(())
}

#[tokio::test]
async fn history_keeps_the_newest_records_of_each_environment() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = SqliteStore::open(dir.path()).await?;
    store.record_sync(sync_run("prod", "p0", true, 0)).await?;
    let total = HISTORY_PER_ENVIRONMENT + 200;
    for i in 0..total {
        store
            .record_sync(sync_run("dev", &format!("d{i}"), true, u64::from(i)))
            .await?;
    }
    store.close().await?;

    let conn = rusqlite::Connection::open(dir.path().join(DATABASE_FILE))?;
    let count = |env: &str| -> rusqlite::Result<u32> {
        conn.query_row(
            "SELECT count(*) FROM sync_run WHERE environment = ?1",
            [env],
            |row| row.get(0),
        )
    };
    let dev = count("dev")?;
    assert!(
        (HISTORY_PER_ENVIRONMENT..HISTORY_PER_ENVIRONMENT + 64).contains(&dev),
        "dev keeps about {HISTORY_PER_ENVIRONMENT} records, not {dev}"
    );
    assert_eq!(count("prod")?, 1, "other environments keep theirs");
    let newest: String = conn.query_row(
        "SELECT revision FROM sync_run WHERE environment = 'dev' ORDER BY id DESC LIMIT 1",
        [],
        |row| row.get(0),
    )?;
    assert_eq!(newest, format!("d{}", total - 1));
    Ok(())
}

#[tokio::test]
async fn a_transition_from_a_state_the_promotion_has_left_writes_nothing() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = SqliteStore::open(dir.path()).await?;
    let promotion = store
        .create_promotion(new_promotion("staging", "aaa111", 1))
        .await?;
    let approve = transition(
        &promotion.id,
        PromotionState::AwaitingApproval,
        PromotionState::Approved,
    );
    assert!(matches!(
        store.transition(approve.clone()).await?,
        TransitionOutcome::Applied(_)
    ));
    // A second caller that still believes it awaits approval.
    assert_eq!(
        store.transition(approve).await?,
        TransitionOutcome::Conflict {
            current: PromotionState::Approved
        }
    );
    let mut abort = transition(
        &promotion.id,
        PromotionState::Approved,
        PromotionState::Aborted,
    );
    abort.actor = "dave".to_owned();
    abort.audit = Some(AuditAction::Aborted);
    assert!(matches!(
        store.transition(abort).await?,
        TransitionOutcome::Applied(_)
    ));
    // An ended promotion never moves again.
    assert_eq!(
        store
            .transition(transition(
                &promotion.id,
                PromotionState::Aborted,
                PromotionState::Promoting
            ))
            .await?,
        TransitionOutcome::Conflict {
            current: PromotionState::Aborted
        }
    );
    assert_eq!(
        store
            .transition(transition(
                "no-such-id",
                PromotionState::Approved,
                PromotionState::Promoting
            ))
            .await?,
        TransitionOutcome::NotFound
    );

    let detail = store.promotion(&promotion.id).await?.expect("stored");
    assert_eq!(detail.promotion.state, PromotionState::Aborted);
    assert_eq!(detail.promotion.version, 3);
    assert_eq!(detail.transitions.len(), 3);
    let aborted = store
        .audit_events(&AuditFilter {
            actions: vec![AuditAction::Aborted],
            ..AuditFilter::default()
        })
        .await?;
    assert_eq!(aborted.items.len(), 1);
    assert_eq!(aborted.items[0].event.actor, "dave");
    assert_eq!(aborted.items[0].event.revision.as_deref(), Some("aaa111"));
    Ok(())
}

#[tokio::test]
async fn a_transition_from_a_version_the_promotion_has_left_writes_nothing() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = SqliteStore::open(dir.path()).await?;
    let read = store
        .create_promotion(new_promotion("staging", "aaa111", 1))
        .await?;
    // An override keeps the state and changes the data: a caller that read before it must not
    // move the promotion on with the old data.
    let mut keep = transition(
        &read.id,
        PromotionState::AwaitingApproval,
        PromotionState::AwaitingApproval,
    );
    keep.from_version = Some(read.version);
    keep.detail = Some(serde_json::json!({"override": "carol"}));
    let TransitionOutcome::Applied(kept) = store.transition(keep).await? else {
        panic!("the same-state move from the version read was refused");
    };
    assert_eq!(kept.version, read.version + 1);
    let mut stale = transition(
        &read.id,
        PromotionState::AwaitingApproval,
        PromotionState::Approved,
    );
    stale.from_version = Some(read.version);
    assert_eq!(
        store.transition(stale.clone()).await?,
        TransitionOutcome::Conflict {
            current: PromotionState::AwaitingApproval
        }
    );
    let now = store.promotion(&read.id).await?.expect("stored");
    assert_eq!(
        now.promotion.detail,
        Some(serde_json::json!({"override": "carol"}))
    );
    stale.from_version = Some(kept.version);
    assert!(matches!(
        store.transition(stale).await?,
        TransitionOutcome::Applied(_)
    ));
    Ok(())
}

#[tokio::test]
async fn the_same_approver_twice_counts_once() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = SqliteStore::open(dir.path()).await?;
    let promotion = store
        .create_promotion(new_promotion("prod", "aaa111", 1))
        .await?;
    let approval = |who: &str, second| Approval {
        approver: who.to_owned(),
        email: format!("{who}@example.com"),
        groups: vec!["release-managers".to_owned()],
        at: at(second),
        comment: String::new(),
    };
    assert_eq!(
        store
            .add_approval(&promotion.id, approval("erin", 2))
            .await?,
        ApprovalOutcome::Recorded
    );
    assert_eq!(
        store
            .add_approval(&promotion.id, approval("erin", 3))
            .await?,
        ApprovalOutcome::AlreadyApproved
    );
    assert_eq!(
        store
            .add_approval(&promotion.id, approval("frank", 4))
            .await?,
        ApprovalOutcome::Recorded
    );
    assert_eq!(
        store
            .add_approval("no-such-id", approval("frank", 4))
            .await?,
        ApprovalOutcome::NotFound
    );
    let detail = store.promotion(&promotion.id).await?.expect("stored");
    let approvers: Vec<_> = detail
        .approvals
        .iter()
        .map(|a| a.approver.as_str())
        .collect();
    assert_eq!(approvers, ["erin", "frank"]);
    assert_eq!(detail.approvals[0].at, at(2));
    let approved = store
        .audit_events(&AuditFilter {
            promotion_id: Some(promotion.id.clone()),
            actions: vec![AuditAction::Approved],
            ..AuditFilter::default()
        })
        .await?;
    assert_eq!(approved.items.len(), 2);
    Ok(())
}

#[tokio::test]
async fn promotions_list_newest_first_in_pages_and_by_filter() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = SqliteStore::open(dir.path()).await?;
    let mut ids = Vec::new();
    for i in 0..25 {
        let target = if i % 2 == 0 { "staging" } else { "prod" };
        ids.push(
            store
                .create_promotion(new_promotion(target, &format!("rev{i}"), i))
                .await?
                .id,
        );
    }
    store
        .transition(transition(
            &ids[24],
            PromotionState::AwaitingApproval,
            PromotionState::Rejected,
        ))
        .await?;

    let mut seen = Vec::new();
    let mut filter = PromotionFilter {
        limit: 10,
        ..PromotionFilter::default()
    };
    loop {
        let page = store.promotions(&filter).await?;
        assert!(page.items.len() <= 10);
        seen.extend(page.items.into_iter().map(|p| p.id));
        match page.next_page_token {
            Some(token) => filter.page_token = Some(token),
            None => break,
        }
    }
    let newest_first: Vec<_> = ids.iter().rev().cloned().collect();
    assert_eq!(seen, newest_first);

    let prod = store
        .promotions(&PromotionFilter {
            environment: Some("prod".to_owned()),
            ..PromotionFilter::default()
        })
        .await?;
    assert_eq!(prod.items.len(), 12);
    assert!(prod.items.iter().all(|p| p.target_environment == "prod"));
    assert_eq!(prod.next_page_token, None);

    let rejected = store
        .promotions(&PromotionFilter {
            states: vec![PromotionState::Rejected],
            ..PromotionFilter::default()
        })
        .await?;
    assert_eq!(rejected.items.len(), 1);
    assert_eq!(rejected.items[0].id, ids[24]);

    let window = store
        .promotions(&PromotionFilter {
            since: Some(at(10)),
            until: Some(at(15)),
            ..PromotionFilter::default()
        })
        .await?;
    assert_eq!(window.items.len(), 5);

    let bad = store
        .promotions(&PromotionFilter {
            page_token: Some("not-a-token".to_owned()),
            ..PromotionFilter::default()
        })
        .await;
    assert!(matches!(bad, Err(store::Error::PageToken { .. })));
    Ok(())
}

#[test]
fn promotion_ids_are_unique_even_within_one_millisecond() {
    let ids: std::collections::HashSet<String> =
        (0..1000).map(|_| store::new_promotion_id()).collect();
    assert_eq!(ids.len(), 1000);
    assert!(
        ids.iter()
            .all(|id| id.len() == 24 && id.bytes().all(|b| b.is_ascii_hexdigit()))
    );
}

#[tokio::test]
async fn soak_time_follows_the_environments_files_not_the_branch_tip() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = SqliteStore::open(dir.path()).await?;
    let run = |revision: &str, content: &str, started| SyncRun {
        content: Some(content.to_owned()),
        ..sync_run("staging", revision, true, started)
    };
    store.record_sync(run("aaa111", "tree-1", 0)).await?;
    // Another environment's commit: a new tip, the same files for staging.
    store.record_sync(run("bbb222", "tree-1", 10)).await?;
    let staging = store.environment("staging").await?.expect("stored");
    assert_eq!(staging.applied_revision.as_deref(), Some("bbb222"));
    assert_eq!(staging.applied_at, Some(at(2)), "the soak goes on");
    store.record_sync(run("ccc333", "tree-2", 20)).await?;
    let staging = store.environment("staging").await?.expect("stored");
    assert_eq!(staging.applied_at, Some(at(22)), "new files soak anew");
    Ok(())
}

#[tokio::test]
async fn an_approval_after_the_promotion_ended_is_refused_and_writes_nothing() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = SqliteStore::open(dir.path()).await?;
    let promotion = store
        .create_promotion(new_promotion("prod", "rev1", 1))
        .await?;
    store
        .transition(transition(
            &promotion.id,
            promotion.state,
            PromotionState::Rejected,
        ))
        .await?;
    let outcome = store
        .add_approval(
            &promotion.id,
            Approval {
                approver: "erin".to_owned(),
                email: "erin@example.com".to_owned(),
                groups: vec!["release-managers".to_owned()],
                at: at(60),
                comment: String::new(),
            },
        )
        .await?;
    assert_eq!(
        outcome,
        ApprovalOutcome::Closed {
            state: PromotionState::Rejected
        }
    );
    let detail = store.promotion(&promotion.id).await?.expect("stored");
    assert!(detail.approvals.is_empty());
    let approved = store
        .audit_events(&AuditFilter {
            promotion_id: Some(promotion.id.clone()),
            actions: vec![AuditAction::Approved],
            ..AuditFilter::default()
        })
        .await?;
    assert!(approved.items.is_empty());
    Ok(())
}
