//! The store on both engines, real SQLite files and a real PostgreSQL server: what is written
//! reads back, survives a restart, and behaves the same on either (each behaviour test is one
//! body run on both, as `<test>::sqlite` and `<test>::postgres`). Then what only one engine
//! has: a damaged SQLite file is refused and left as it was; replicas sharing one PostgreSQL
//! database race a compare-and-swap, migrate at once and share one installation ID.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use stagehand::store::{
    self, Approval, ApprovalOutcome, AuditAction, AuditFilter, DATABASE_FILE,
    HISTORY_PER_ENVIRONMENT, Hold, NewAuditEvent, NewEvent, NewPromotion, PostgresStore,
    PostgresUrl, PromotionFilter, PromotionKind, PromotionState, Severity, SqliteStore, Store,
    SyncCounts, SyncRun, Transition, TransitionOutcome,
};

use crate::support::postgres;

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// The engine a behaviour test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    Sqlite,
    Postgres,
}

/// Where one test keeps its store: a fresh state directory, or a fresh PostgreSQL database.
enum Place {
    Sqlite(tempfile::TempDir),
    Postgres(String),
}

/// A store opened on a [`Place`], either engine, used through the trait as the service does.
enum Opened {
    Sqlite(SqliteStore),
    Postgres(PostgresStore),
}

impl Place {
    async fn new(backend: Backend) -> Self {
        match backend {
            Backend::Sqlite => Self::Sqlite(tempfile::tempdir().expect("a temporary directory")),
            Backend::Postgres => Self::Postgres(postgres::fresh_database("store").await),
        }
    }

    async fn open(&self) -> Result<Opened, store::Error> {
        Ok(match self {
            Self::Sqlite(dir) => Opened::Sqlite(SqliteStore::open(dir.path()).await?),
            Self::Postgres(url) => {
                Opened::Postgres(PostgresStore::connect(&PostgresUrl::parse(url)?).await?)
            }
        })
    }

    /// How many sync records an environment has, and the newest one's revision, read past the
    /// store.
    async fn sync_records(
        &self,
        environment: &str,
    ) -> Result<(i64, String), Box<dyn std::error::Error>> {
        let count = "SELECT count(*) FROM sync_run WHERE environment = $1";
        let newest =
            "SELECT revision FROM sync_run WHERE environment = $1 ORDER BY id DESC LIMIT 1";
        match self {
            Self::Sqlite(dir) => {
                let conn = rusqlite::Connection::open(dir.path().join(DATABASE_FILE))?;
                Ok((
                    conn.query_row(count, [environment], |row| row.get(0))?,
                    conn.query_row(newest, [environment], |row| row.get(0))?,
                ))
            }
            Self::Postgres(url) => {
                let client = postgres::connect(url).await;
                Ok((
                    client.query_one(count, &[&environment]).await?.get(0),
                    client.query_one(newest, &[&environment]).await?.get(0),
                ))
            }
        }
    }
}

impl std::ops::Deref for Opened {
    type Target = dyn Store;

    fn deref(&self) -> &Self::Target {
        match self {
            Self::Sqlite(store) => store,
            Self::Postgres(store) => store,
        }
    }
}

impl Opened {
    async fn close(self) -> Result<(), store::Error> {
        match self {
            Self::Sqlite(store) => store.close().await,
            Self::Postgres(store) => store.close().await,
        }
    }
}

/// Runs a behaviour test, `async fn name(backend: Backend) -> TestResult`, once per engine:
/// as `name::sqlite` and `name::postgres`.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test]
            async fn sqlite() -> super::TestResult {
                super::$name(super::Backend::Sqlite).await
            }

            #[tokio::test]
            async fn postgres() -> super::TestResult {
                super::$name(super::Backend::Postgres).await
            }
        }
    )*};
}

on_both_backends!(
    everything_written_reads_back_the_same,
    state_survives_closing_and_opening_the_store_again,
    nothing_acknowledged_is_lost_when_the_process_is_killed,
    a_database_from_a_newer_stagehand_is_refused,
    quiet_passes_fold_into_one_history_record_and_applied_at_keeps_the_first,
    history_keeps_the_newest_records_of_each_environment,
    a_transition_from_a_state_the_promotion_has_left_writes_nothing,
    a_transition_from_a_version_the_promotion_has_left_writes_nothing,
    the_same_approver_twice_counts_once,
    promotions_list_newest_first_in_pages_and_by_filter,
    audit_events_list_newest_first_in_pages_and_by_filter,
    soak_time_follows_the_environments_files_not_the_branch_tip,
    an_approval_after_the_promotion_ended_is_refused_and_writes_nothing,
);

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

async fn everything_written_reads_back_the_same(backend: Backend) -> TestResult {
    let place = Place::new(backend).await;
    let store = place.open().await?;
    let id = write_everything(&*store).await?;
    assert_everything(&*store, &id).await
}

async fn state_survives_closing_and_opening_the_store_again(backend: Backend) -> TestResult {
    let place = Place::new(backend).await;
    let store = place.open().await?;
    let id = write_everything(&*store).await?;
    store.close().await?;

    let reopened = place.open().await?;
    assert_everything(&*reopened, &id).await?;
    // And it keeps working where it left off.
    reopened
        .record_sync(sync_run("dev", "ddd444", true, 60))
        .await?;
    let dev = reopened.environment("dev").await?.expect("dev was stored");
    assert_eq!(dev.applied_revision.as_deref(), Some("ddd444"));
    Ok(())
}

/// Set in the child process of [`nothing_acknowledged_is_lost_when_the_process_is_killed`]:
/// the state directory or the database URL it writes to.
const CRASH_PLACE: &str = "STAGEHAND_TEST_STORE_CRASH_PLACE";

/// The child writes everything, says so, and waits to be killed with SIGKILL (no close, no
/// checkpoint, connections cut); the parent then opens the same place.
async fn nothing_acknowledged_is_lost_when_the_process_is_killed(backend: Backend) -> TestResult {
    let test = match backend {
        Backend::Sqlite => "sqlite",
        Backend::Postgres => "postgres",
    };
    if let Ok(at) = std::env::var(CRASH_PLACE) {
        let store = match backend {
            Backend::Sqlite => Opened::Sqlite(SqliteStore::open(Path::new(&at)).await?),
            Backend::Postgres => {
                Opened::Postgres(PostgresStore::connect(&PostgresUrl::parse(&at)?).await?)
            }
        };
        let id = write_everything(&*store).await?;
        println!("written {id}");
        std::io::Write::flush(&mut std::io::stdout())?;
        std::thread::sleep(Duration::from_secs(600));
        return Err("the child was not killed".into());
    }
    let place = Place::new(backend).await;
    let at = match &place {
        Place::Sqlite(dir) => dir.path().display().to_string(),
        Place::Postgres(url) => url.clone(),
    };
    let mut child = std::process::Command::new(std::env::current_exe()?)
        .args([
            "--exact",
            &format!("store::nothing_acknowledged_is_lost_when_the_process_is_killed::{test}"),
            "--nocapture",
        ])
        .env(CRASH_PLACE, at)
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let stdout = child.stdout.take().expect("stdout is piped");
    let id = std::io::BufRead::lines(std::io::BufReader::new(stdout))
        .map_while(Result::ok)
        .find_map(|line| line.strip_prefix("written ").map(str::to_owned))
        .ok_or("the child never wrote")?;
    child.kill()?;
    child.wait()?;
    if let Place::Sqlite(dir) = &place {
        assert!(
            dir.path().join(format!("{DATABASE_FILE}-wal")).exists(),
            "the killed process left its write-ahead log behind"
        );
    }

    let reopened = place.open().await?;
    assert_everything(&*reopened, &id).await
}

#[tokio::test]
async fn a_missing_state_directory_is_created_with_a_database_at_the_current_schema() -> TestResult
{
    let dir = tempfile::tempdir()?;
    let state = dir.path().join("state").join("nested");
    let store = SqliteStore::open(&state).await?;
    assert_eq!(store.path(), state.join(DATABASE_FILE));
    assert_eq!(store.schema_version().await?, 4);
    assert!(store.environment("dev").await?.is_none());
    Ok(())
}

#[tokio::test]
async fn an_empty_file_is_migrated_to_the_current_schema() -> TestResult {
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join(DATABASE_FILE), b"")?;
    let store = SqliteStore::open(dir.path()).await?;
    assert_eq!(store.schema_version().await?, 4);
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

async fn a_database_from_a_newer_stagehand_is_refused(backend: Backend) -> TestResult {
    let place = Place::new(backend).await;
    place.open().await?.close().await?;
    let error = match &place {
        Place::Sqlite(dir) => {
            let conn = rusqlite::Connection::open(dir.path().join(DATABASE_FILE))?;
            conn.pragma_update(None, "user_version", 7)?;
            drop(conn);
            refused(dir.path()).await
        }
        Place::Postgres(url) => {
            let client = postgres::connect(url).await;
            client
                .execute("UPDATE stagehand_schema SET version = 7", &[])
                .await?;
            let Err(error) = place.open().await else {
                panic!("the store opened a database of schema version 7");
            };
            let version: i64 = client
                .query_one("SELECT version FROM stagehand_schema", &[])
                .await?
                .get(0);
            assert_eq!(version, 7, "the refused database was left as it was");
            let shown = PostgresUrl::parse(url)?.to_string();
            assert!(
                error.to_string().contains(&shown),
                "the error names the database: {error}"
            );
            error
        }
    };
    assert!(
        matches!(
            error,
            store::Error::NewerSchema {
                found: 7,
                supported: 4,
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

async fn quiet_passes_fold_into_one_history_record_and_applied_at_keeps_the_first(
    backend: Backend,
) -> TestResult {
    let place = Place::new(backend).await;
    let store = place.open().await?;
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

async fn history_keeps_the_newest_records_of_each_environment(backend: Backend) -> TestResult {
    let place = Place::new(backend).await;
    let store = place.open().await?;
    store.record_sync(sync_run("prod", "p0", true, 0)).await?;
    let total = HISTORY_PER_ENVIRONMENT + 200;
    for i in 0..total {
        store
            .record_sync(sync_run("dev", &format!("d{i}"), true, u64::from(i)))
            .await?;
    }
    store.close().await?;

    let (dev, newest) = place.sync_records("dev").await?;
    assert!(
        (i64::from(HISTORY_PER_ENVIRONMENT)..i64::from(HISTORY_PER_ENVIRONMENT) + 64)
            .contains(&dev),
        "dev keeps about {HISTORY_PER_ENVIRONMENT} records, not {dev}"
    );
    assert_eq!(newest, format!("d{}", total - 1));
    assert_eq!(
        place.sync_records("prod").await?,
        (1, "p0".to_owned()),
        "other environments keep theirs"
    );
    Ok(())
}

async fn a_transition_from_a_state_the_promotion_has_left_writes_nothing(
    backend: Backend,
) -> TestResult {
    let place = Place::new(backend).await;
    let store = place.open().await?;
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

async fn a_transition_from_a_version_the_promotion_has_left_writes_nothing(
    backend: Backend,
) -> TestResult {
    let place = Place::new(backend).await;
    let store = place.open().await?;
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

async fn the_same_approver_twice_counts_once(backend: Backend) -> TestResult {
    let place = Place::new(backend).await;
    let store = place.open().await?;
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

async fn promotions_list_newest_first_in_pages_and_by_filter(backend: Backend) -> TestResult {
    let place = Place::new(backend).await;
    let store = place.open().await?;
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

async fn audit_events_list_newest_first_in_pages_and_by_filter(backend: Backend) -> TestResult {
    let place = Place::new(backend).await;
    let store = place.open().await?;
    let mut ids = Vec::new();
    for i in 0..30u64 {
        let environment = ["dev", "staging", "prod"][i as usize % 3];
        let mut event = audit("erin", AuditAction::Synced, environment, "by hand");
        event.at = at(i);
        if i % 5 == 0 {
            event.environment = None;
            event.action = AuditAction::Overrode;
        }
        if i % 4 == 0 {
            event.actor = "frank".to_owned();
        }
        ids.push(store.append_audit(event).await?.id);
    }

    let mut seen = Vec::new();
    let mut filter = AuditFilter {
        limit: 7,
        ..AuditFilter::default()
    };
    loop {
        let page = store.audit_events(&filter).await?;
        assert!(page.items.len() <= 7);
        seen.extend(page.items.into_iter().map(|e| e.id));
        match page.next_page_token {
            Some(token) => filter.page_token = Some(token),
            None => break,
        }
    }
    let newest_first: Vec<_> = ids.iter().rev().copied().collect();
    assert_eq!(seen, newest_first);

    let staging = store
        .audit_events(&AuditFilter {
            environment: Some("staging".to_owned()),
            ..AuditFilter::default()
        })
        .await?;
    // 1, 4, 7, …, 28, less 10 and 25, which concern no environment.
    assert_eq!(staging.items.len(), 8);
    // What a caller who may see prod only is shown: prod's events and those of no environment.
    let visible = store
        .audit_events(&AuditFilter {
            environments: Some(vec!["prod".to_owned()]),
            ..AuditFilter::default()
        })
        .await?;
    assert_eq!(visible.items.len(), 8 + 6);
    assert!(
        visible
            .items
            .iter()
            .all(|e| matches!(e.event.environment.as_deref(), None | Some("prod")))
    );
    let overrides = store
        .audit_events(&AuditFilter {
            actions: vec![AuditAction::Overrode, AuditAction::Rejected],
            since: Some(at(5)),
            until: Some(at(20)),
            ..AuditFilter::default()
        })
        .await?;
    let seconds: Vec<_> = overrides.items.iter().map(|e| e.event.at).collect();
    assert_eq!(seconds, [at(15), at(10), at(5)]);

    let franks = store
        .audit_events(&AuditFilter {
            actor: Some("frank".to_owned()),
            ..AuditFilter::default()
        })
        .await?;
    let seconds: Vec<_> = franks.items.iter().map(|e| e.event.at).collect();
    assert_eq!(
        seconds,
        (0..30)
            .rev()
            .filter(|i| i % 4 == 0)
            .map(at)
            .collect::<Vec<_>>()
    );

    let bad = store
        .audit_events(&AuditFilter {
            page_token: Some("not-a-token".to_owned()),
            ..AuditFilter::default()
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

async fn soak_time_follows_the_environments_files_not_the_branch_tip(
    backend: Backend,
) -> TestResult {
    let place = Place::new(backend).await;
    let store = place.open().await?;
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

async fn an_approval_after_the_promotion_ended_is_refused_and_writes_nothing(
    backend: Backend,
) -> TestResult {
    let place = Place::new(backend).await;
    let store = place.open().await?;
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

/// An error with all its sources, as `anyhow` prints it at the command line.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

/// `url` with its password replaced (the URL form, as `scripts/postgres.sh` prints it).
fn with_password(url: &str, password: &str) -> String {
    let (scheme, rest) = url.split_once("://").expect("a URL");
    let (credentials, server) = rest.split_once('@').expect("the URL names a user");
    let user = credentials.split(':').next().expect("a user");
    format!("{scheme}://{user}:{password}@{server}")
}

async fn shared_store(url: &str) -> PostgresStore {
    PostgresStore::connect(&PostgresUrl::parse(url).expect("the test URL parses"))
        .await
        .expect("the store connects")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_racing_one_transition_apply_it_exactly_once() -> TestResult {
    let url = postgres::fresh_database("race").await;
    let replicas = [shared_store(&url).await, shared_store(&url).await];
    let promotion = replicas[0]
        .create_promotion(new_promotion("prod", "aaa111", 1))
        .await?;
    let replicas = std::sync::Arc::new(replicas);
    let attempts = 16;
    let start = std::sync::Arc::new(tokio::sync::Barrier::new(attempts));
    let tasks: Vec<_> = (0..attempts)
        .map(|i| {
            let (replicas, start, id) = (replicas.clone(), start.clone(), promotion.id.clone());
            tokio::spawn(async move {
                let mut approve = transition(
                    &id,
                    PromotionState::AwaitingApproval,
                    PromotionState::Approved,
                );
                approve.actor = format!("replica-{}", i % 2);
                approve.audit = Some(AuditAction::Overrode);
                start.wait().await;
                replicas[i % 2].transition(approve).await
            })
        })
        .collect();
    let mut applied = 0;
    for task in tasks {
        match task.await?? {
            TransitionOutcome::Applied(record) => {
                applied += 1;
                assert_eq!(record.state, PromotionState::Approved);
            }
            TransitionOutcome::Conflict { current } => {
                assert_eq!(current, PromotionState::Approved)
            }
            TransitionOutcome::NotFound => panic!("the promotion was not found"),
        }
    }
    assert_eq!(applied, 1, "exactly one of {attempts} attempts applied");
    let detail = replicas[1].promotion(&promotion.id).await?.expect("stored");
    assert_eq!(detail.promotion.version, 2);
    assert_eq!(detail.transitions.len(), 2);
    let audited = replicas[1]
        .audit_events(&AuditFilter {
            actions: vec![AuditAction::Overrode],
            ..AuditFilter::default()
        })
        .await?;
    assert_eq!(
        audited.items.len(),
        1,
        "one audit event, with the one transition"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_recording_one_approver_count_it_once() -> TestResult {
    let url = postgres::fresh_database("approve").await;
    let replicas = std::sync::Arc::new([shared_store(&url).await, shared_store(&url).await]);
    let promotion = replicas[0]
        .create_promotion(new_promotion("prod", "aaa111", 1))
        .await?;
    let attempts = 8;
    let start = std::sync::Arc::new(tokio::sync::Barrier::new(attempts));
    let tasks: Vec<_> = (0..attempts)
        .map(|i| {
            let (replicas, start, id) = (replicas.clone(), start.clone(), promotion.id.clone());
            tokio::spawn(async move {
                let approval = Approval {
                    approver: "erin".to_owned(),
                    email: "erin@example.com".to_owned(),
                    groups: vec!["release-managers".to_owned()],
                    at: at(2),
                    comment: format!("attempt {i}"),
                };
                start.wait().await;
                replicas[i % 2].add_approval(&id, approval).await
            })
        })
        .collect();
    let mut recorded = 0;
    for task in tasks {
        match task.await?? {
            ApprovalOutcome::Recorded => recorded += 1,
            ApprovalOutcome::AlreadyApproved => {}
            other => panic!("unexpected outcome {other:?}"),
        }
    }
    assert_eq!(recorded, 1);
    let approved = replicas[0]
        .audit_events(&AuditFilter {
            actions: vec![AuditAction::Approved],
            ..AuditFilter::default()
        })
        .await?;
    assert_eq!(approved.items.len(), 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_starting_together_migrate_once_and_share_one_installation_id() -> TestResult {
    let url = postgres::fresh_database("start").await;
    let replicas = 6;
    let starts: Vec<_> = (0..replicas)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { PostgresStore::connect(&PostgresUrl::parse(&url)?).await })
        })
        .collect();
    let mut stores = Vec::new();
    for start in starts {
        // Without the migration lock, all but one would fail creating tables that exist.
        stores.push(start.await??);
    }
    for store in &stores {
        assert_eq!(store.schema_version().await?, 4);
    }
    let stores = std::sync::Arc::new(stores);
    let asks: Vec<_> = (0..replicas)
        .map(|i| {
            let stores = stores.clone();
            tokio::spawn(async move { stores[i].installation_id(&format!("0000000{i}")).await })
        })
        .collect();
    let mut ids = std::collections::BTreeSet::new();
    for ask in asks {
        ids.insert(ask.await??);
    }
    assert_eq!(
        ids.len(),
        1,
        "one installation ID for every replica: {ids:?}"
    );
    let id = ids.pop_first().expect("one ID");
    assert!(id.starts_with("0000000"), "one of the candidates: {id}");
    let later = shared_store(&url).await;
    assert_eq!(later.installation_id("ffffffff").await?, id);
    Ok(())
}

#[tokio::test]
async fn a_wrong_password_is_refused_naming_the_database_and_not_the_password() -> TestResult {
    let url = postgres::fresh_database("auth").await;
    let real = PostgresUrl::parse(&url)?;
    let wrong = with_password(&url, "wrong-password-sentinel");
    let Err(error) = PostgresStore::connect(&PostgresUrl::parse(&wrong)?).await else {
        panic!("the store connected with a wrong password");
    };
    let text = chain(&error);
    assert!(
        text.contains("password authentication failed"),
        "says why: {text}"
    );
    assert!(
        text.contains(&real.to_string()),
        "names the database: {text}"
    );
    let debug = format!("{error:?}");
    let real_password = url
        .split_once("://")
        .and_then(|(_, rest)| rest.split_once('@'))
        .and_then(|(credentials, _)| credentials.split_once(':'))
        .map(|(_, password)| password.to_owned())
        .expect("the test URL has a password");
    for shown in [&text, &debug] {
        assert!(!shown.contains("wrong-password-sentinel"), "{shown}");
        assert!(!shown.contains(&real_password), "{shown}");
    }
    Ok(())
}

#[tokio::test]
async fn an_unreachable_server_is_named_without_the_password() -> TestResult {
    // A port nothing listens on: bound, then released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let url = format!("postgresql://stagehand:unreachable-sentinel@127.0.0.1:{port}/stagehand");
    let Err(error) = PostgresStore::connect(&PostgresUrl::parse(&url)?).await else {
        panic!("the store connected to a port nothing listens on");
    };
    let text = chain(&error);
    assert!(
        text.contains("error connecting to server"),
        "says why: {text}"
    );
    assert!(
        text.contains(&format!(
            "postgresql://stagehand@127.0.0.1:{port}/stagehand"
        )),
        "names the database: {text}"
    );
    assert!(!text.contains("unreachable-sentinel"), "{text}");
    assert!(!format!("{error:?}").contains("unreachable-sentinel"));
    Ok(())
}

#[test]
fn a_connection_string_shows_without_its_password_in_every_form() {
    for (text, shown) in [
        (
            "postgresql://app:s3cret-sentinel@db.example:6432/stagehand?sslmode=require",
            "postgresql://app@db.example:6432/stagehand",
        ),
        (
            "postgres://app@db.example/stagehand?password=s3cret-sentinel",
            "postgresql://app@db.example:5432/stagehand",
        ),
        (
            "host=db.example port=6432 user=app password='s3cret-sentinel' dbname=stagehand",
            "postgresql://app@db.example:6432/stagehand",
        ),
        (
            "host=/run/postgresql user=app password=s3cret-sentinel dbname=stagehand",
            "postgresql://app@/stagehand?host=/run/postgresql",
        ),
    ] {
        let url = PostgresUrl::parse(text).expect("parses");
        assert_eq!(url.to_string(), shown);
        assert!(!format!("{url:?}").contains("s3cret-sentinel"));
    }
    for bad in [
        "postgresql://app:s3cret-sentinel@db.example:port/stagehand",
        "host=db.example password=s3cret-sentinel frobnicate=yes",
        "host=db.example password='s3cret-sentinel",
    ] {
        let error = PostgresUrl::parse(bad).expect_err("refused");
        let text = chain(&error);
        assert!(text.contains("not valid"), "{text}");
        assert!(!text.contains("s3cret-sentinel"), "{text}");
        assert!(
            !format!("{error:?}").contains("s3cret-sentinel"),
            "{error:?}"
        );
    }
    let unknown = PostgresUrl::parse("host=db.example frobnicate=yes").expect_err("refused");
    assert!(unknown.to_string().contains("frobnicate"), "{unknown}");
}
