//! The embedded store: one SQLite file in the state directory, in WAL mode.
//!
//! Every call runs on one dedicated thread that owns the only connection. SQLite admits one
//! writer at a time anyway, so a single connection serialises writes in the order they were
//! asked without `SQLITE_BUSY` retries, keeps its prepared-statement cache warm, and never
//! blocks a runtime worker. `spawn_blocking` was the alternative: it would need a connection
//! pool and would compete for the blocking pool with Git fetches. A call whose caller stops
//! waiting still completes, so a transition is either fully written or not at all.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, SystemTime};

use rusqlite::types::{Type, Value};
use rusqlite::{Connection, OptionalExtension, Row, Transaction, TransactionBehavior, params};
use tokio::sync::oneshot;

use super::delivery::{self, Attempt};
use super::schema::{self, classify};
use super::{
    Approval, ApprovalOutcome, AuditAction, AuditEvent, AuditFilter, Database, DeliveryMetrics,
    DeliveryQuery, EnvironmentRecord, Error, EventRecord, FIRST_COMMIT_AT, HISTORY_PER_ENVIRONMENT,
    Hold, NewAuditEvent, NewEvent, NewPromotion, Page, PromotionDetail, PromotionFilter,
    PromotionKind, PromotionRecord, PromotionState, Result, Store, SyncCounts, SyncRecord, SyncRun,
    TRIM_EVERY, Transition, TransitionOutcome, TransitionRecord, VerificationRecord, folds_into,
    from_millis, page_size, paginate, to_millis,
};

/// The database's name inside the state directory.
pub const DATABASE_FILE: &str = "stagehand.db";

type Job = Box<dyn FnOnce(&mut Session) + Send>;

/// How far a write must have reached before its call returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Durability {
    /// Synced to disk (`synchronous=FULL`): promotions, approvals, audit events, suspensions,
    /// decisions someone was told about, which must survive a power loss.
    Full,
    /// In the WAL file without a sync (`synchronous=NORMAL`): survives a crash of the process
    /// but not of the machine, until the next full write or checkpoint syncs it. For sync
    /// history, events and statuses, which the next reconcile pass writes again, and which
    /// would otherwise cost a disk sync per environment per pass.
    Relaxed,
}

impl Durability {
    fn pragma(self) -> &'static str {
        match self {
            Self::Full => "FULL",
            Self::Relaxed => "NORMAL",
        }
    }
}

/// What the store's thread owns.
struct Session {
    conn: Connection,
    durability: Durability,
}

/// The embedded SQLite store.
pub struct SqliteStore {
    path: PathBuf,
    jobs: mpsc::Sender<Job>,
    worker: thread::JoinHandle<()>,
}

impl SqliteStore {
    /// Opens `stagehand.db` in `state_dir` (creating both if missing), checks it and migrates
    /// it to the current schema. A corrupt database, another application's, or one with a newer
    /// schema is refused and left untouched.
    pub async fn open(state_dir: &Path) -> Result<Self> {
        crate::state_dir::private_dir(state_dir).map_err(|source| Error::CreateDir {
            path: state_dir.to_owned(),
            source,
        })?;
        let path = state_dir.join(DATABASE_FILE);
        private_files(&path)?;
        let (ready_tx, ready_rx) = oneshot::channel();
        let (jobs, queue) = mpsc::channel::<Job>();
        let worker_path = path.clone();
        let worker = thread::Builder::new()
            .name("stagehand-store".to_owned())
            .spawn(move || {
                let mut session = match open_connection(&worker_path) {
                    Ok(conn) => {
                        let _ = ready_tx.send(Ok(()));
                        Session {
                            conn,
                            durability: Durability::Full,
                        }
                    }
                    Err(error) => {
                        let _ = ready_tx.send(Err(error));
                        return;
                    }
                };
                // Ends when every sender is gone; dropping the connection checkpoints the WAL.
                for job in queue {
                    job(&mut session);
                }
            })
            .map_err(|source| Error::Thread {
                database: Database::File(path.clone()),
                source,
            })?;
        ready_rx.await.map_err(|_| Error::Closed {
            database: Database::File(path.clone()),
        })??;
        Ok(Self { path, jobs, worker })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The schema version of the open database.
    pub async fn schema_version(&self) -> Result<i64> {
        self.call(|conn, path| schema::version(conn, path)).await
    }

    /// Finishes the calls already asked for, then closes the database.
    pub async fn close(self) -> Result<()> {
        let Self { path, jobs, worker } = self;
        drop(jobs);
        tokio::task::spawn_blocking(move || worker.join())
            .await
            .ok()
            .and_then(|joined| joined.ok())
            .ok_or(Error::Closed {
                database: Database::File(path),
            })
    }

    /// Runs `f` on the store's thread and waits for its answer; writes are synced to disk.
    async fn call<R, F>(&self, f: F) -> Result<R>
    where
        F: FnOnce(&mut Connection, &Path) -> Result<R> + Send + 'static,
        R: Send + 'static,
    {
        self.call_with(Durability::Full, f).await
    }

    async fn call_with<R, F>(&self, durability: Durability, f: F) -> Result<R>
    where
        F: FnOnce(&mut Connection, &Path) -> Result<R> + Send + 'static,
        R: Send + 'static,
    {
        let (answer_tx, answer_rx) = oneshot::channel();
        let path = self.path.clone();
        let job: Job = Box::new(move |session| {
            let answer = session
                .set_durability(durability, &path)
                .and_then(|()| f(&mut session.conn, &path));
            let _ = answer_tx.send(answer);
        });
        let closed = || Error::Closed {
            database: Database::File(self.path.clone()),
        };
        self.jobs.send(job).map_err(|_| closed())?;
        answer_rx.await.map_err(|_| closed())?
    }
}

impl Session {
    fn set_durability(&mut self, durability: Durability, path: &Path) -> Result<()> {
        if durability != self.durability {
            self.conn
                .pragma_update(None, "synchronous", durability.pragma())
                .map_err(sql(path, "setting durability"))?;
            self.durability = durability;
        }
        Ok(())
    }
}

/// Makes the database 0600 (creating it empty if missing) before SQLite opens it: SQLite gives
/// its `-wal`, `-shm` and `-journal` files the database's mode, whatever the umask. Those left
/// by an earlier run get it here.
fn private_files(path: &Path) -> Result<()> {
    let private = |file: &Path, result: std::io::Result<()>| {
        result.map_err(|source| Error::Permissions {
            path: file.to_owned(),
            source,
        })
    };
    private(path, crate::state_dir::private_file(path))?;
    for suffix in ["-wal", "-shm", "-journal"] {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        let file = PathBuf::from(name);
        private(&file, crate::state_dir::restrict_file(&file))?;
    }
    Ok(())
}

fn open_connection(path: &Path) -> Result<Connection> {
    let mut conn = Connection::open(path).map_err(|source| Error::Open {
        database: Database::File(path.to_owned()),
        source: source.into(),
    })?;
    schema::check_and_migrate(&mut conn, path)?;
    let setup = |source| classify(path, "configuring the connection", source);
    // Another process holding a lock (a second stagehand on the same directory, a backup
    // tool) is waited for rather than failed at once.
    conn.busy_timeout(Duration::from_secs(5)).map_err(setup)?;
    let mode: String = conn
        .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
        .map_err(setup)?;
    if !mode.eq_ignore_ascii_case("wal") {
        tracing::warn!(database = %path.display(), %mode, "SQLite refused WAL mode");
    }
    // A transition is on disk before the caller acts on it, even across a power loss.
    conn.pragma_update(None, "synchronous", Durability::Full.pragma())
        .map_err(setup)?;
    conn.pragma_update(None, "foreign_keys", true)
        .map_err(setup)?;
    Ok(conn)
}

fn sql<'a>(path: &'a Path, what: &'static str) -> impl FnOnce(rusqlite::Error) -> Error + 'a {
    move |source| classify(path, what, source)
}

fn parse_column<T>(row: &Row<'_>, idx: usize) -> rusqlite::Result<T>
where
    T: FromStr<Err = String>,
{
    let text: String = row.get(idx)?;
    text.parse()
        .map_err(|e: String| rusqlite::Error::FromSqlConversionFailure(idx, Type::Text, e.into()))
}

fn json_column(row: &Row<'_>, idx: usize) -> rusqlite::Result<Option<serde_json::Value>> {
    let text: Option<String> = row.get(idx)?;
    text.map(|text| {
        serde_json::from_str(&text)
            .map_err(|e| rusqlite::Error::FromSqlConversionFailure(idx, Type::Text, Box::new(e)))
    })
    .transpose()
}

fn json_text(value: &Option<serde_json::Value>) -> Option<String> {
    value.as_ref().map(serde_json::Value::to_string)
}

fn hold_columns(row: &Row<'_>, first: usize) -> rusqlite::Result<Option<Hold>> {
    let at: Option<i64> = row.get(first + 2)?;
    at.map(|at| {
        Ok(Hold {
            reason: row.get(first)?,
            by: row.get(first + 1)?,
            at: from_millis(at),
        })
    })
    .transpose()
}

/// Page tokens are the last row's key; they are opaque to clients.
fn page_after(path: &Path, token: &Option<String>) -> Result<Option<i64>> {
    token
        .as_deref()
        .map(|token| {
            token.parse::<i64>().map_err(|_| Error::PageToken {
                database: Database::File(path.to_owned()),
                token: token.to_owned(),
            })
        })
        .transpose()
}

const ENVIRONMENT_COLUMNS: &str = "name, applied_revision, applied_at, suspended_reason, \
     suspended_by, suspended_at, auto_hold_reason, auto_hold_by, auto_hold_at, status, \
     verification";

fn environment_row(row: &Row<'_>) -> rusqlite::Result<EnvironmentRecord> {
    Ok(EnvironmentRecord {
        name: row.get(0)?,
        applied_revision: row.get(1)?,
        applied_at: row.get::<_, Option<i64>>(2)?.map(from_millis),
        suspended: hold_columns(row, 3)?,
        auto_promotion_hold: hold_columns(row, 6)?,
        status: json_column(row, 9)?,
        verification: json_column(row, 10)?
            .map(serde_json::from_value)
            .transpose()
            .map_err(|e| rusqlite::Error::FromSqlConversionFailure(10, Type::Text, Box::new(e)))?
            .unwrap_or_default(),
    })
}

const SYNC_COLUMNS: &str = "id, environment, revision, started_at, finished_at, result, message, \
     trigger, applied, created, changed, pruned, drifted, adopted, passes, content";

fn sync_row(row: &Row<'_>) -> rusqlite::Result<SyncRecord> {
    Ok(SyncRecord {
        id: row.get(0)?,
        passes: row.get(14)?,
        run: SyncRun {
            environment: row.get(1)?,
            revision: row.get(2)?,
            content: row.get(15)?,
            started_at: from_millis(row.get(3)?),
            finished_at: from_millis(row.get(4)?),
            result: row.get(5)?,
            message: row.get(6)?,
            trigger: row.get(7)?,
            applied: row.get(8)?,
            counts: SyncCounts {
                created: row.get(9)?,
                changed: row.get(10)?,
                pruned: row.get(11)?,
                drifted: row.get(12)?,
                adopted: row.get(13)?,
            },
        },
    })
}

const EVENT_COLUMNS: &str = "id, environment, at, severity, kind, message, revision";

fn event_row(row: &Row<'_>) -> rusqlite::Result<EventRecord> {
    Ok(EventRecord {
        id: row.get(0)?,
        event: NewEvent {
            environment: row.get(1)?,
            at: from_millis(row.get(2)?),
            severity: parse_column(row, 3)?,
            kind: row.get(4)?,
            message: row.get(5)?,
            revision: row.get(6)?,
        },
    })
}

const PROMOTION_COLUMNS: &str = "id, kind, source_environment, target_environment, revision, \
     rerun, requested_by, reason, state, message, promotion_commit, detail, created_at, \
     updated_at, version, seq";

fn promotion_row(row: &Row<'_>) -> rusqlite::Result<(i64, PromotionRecord)> {
    let record = PromotionRecord {
        id: row.get(0)?,
        kind: parse_column(row, 1)?,
        source_environment: row.get(2)?,
        target_environment: row.get(3)?,
        revision: row.get(4)?,
        rerun: row.get(5)?,
        requested_by: row.get(6)?,
        reason: row.get(7)?,
        state: parse_column(row, 8)?,
        message: row.get(9)?,
        commit: row.get(10)?,
        detail: json_column(row, 11)?,
        created_at: from_millis(row.get(12)?),
        updated_at: from_millis(row.get(13)?),
        version: row.get(14)?,
    };
    Ok((row.get(15)?, record))
}

fn find_promotion(conn: &Connection, id: &str) -> rusqlite::Result<Option<(i64, PromotionRecord)>> {
    conn.prepare_cached(&format!(
        "SELECT {PROMOTION_COLUMNS} FROM promotion WHERE id = ?1"
    ))?
    .query_row([id], promotion_row)
    .optional()
}

const AUDIT_COLUMNS: &str = "id, at, actor, action, environment, promotion_id, revision, reason";

fn audit_row(row: &Row<'_>) -> rusqlite::Result<AuditEvent> {
    Ok(AuditEvent {
        id: row.get(0)?,
        event: NewAuditEvent {
            at: from_millis(row.get(1)?),
            actor: row.get(2)?,
            action: parse_column(row, 3)?,
            environment: row.get(4)?,
            promotion_id: row.get(5)?,
            revision: row.get(6)?,
            reason: row.get(7)?,
        },
    })
}

fn insert_audit(conn: &Connection, event: &NewAuditEvent) -> rusqlite::Result<i64> {
    conn.prepare_cached(
        "INSERT INTO audit_event (at, actor, action, environment, promotion_id, revision, reason)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        to_millis(event.at),
        event.actor,
        event.action.as_str(),
        event.environment,
        event.promotion_id,
        event.revision,
        event.reason,
    ])?;
    Ok(conn.last_insert_rowid())
}

fn immediate(conn: &mut Connection) -> rusqlite::Result<Transaction<'_>> {
    // IMMEDIATE takes the write lock first, so a read-then-write never fails half-way with
    // SQLITE_BUSY when another process writes.
    conn.transaction_with_behavior(TransactionBehavior::Immediate)
}

/// Adds `AND column IN (…)` for a non-empty list of values.
fn push_in(sql: &mut String, args: &mut Vec<Value>, column: &str, values: Vec<&'static str>) {
    if values.is_empty() {
        return;
    }
    let marks = vec!["?"; values.len()].join(", ");
    sql.push_str(&format!(" AND {column} IN ({marks})"));
    args.extend(values.into_iter().map(|v| Value::Text(v.to_owned())));
}

/// Keeps rows whose `column` is one of `within` (or, with `or_null`, empty); nothing to add
/// for `None`.
fn push_within(
    sql: &mut String,
    args: &mut Vec<Value>,
    column: &str,
    within: Option<Vec<String>>,
    or_null: bool,
) {
    let Some(within) = within else {
        return;
    };
    let marks = vec!["?"; within.len()].join(", ");
    let null = if or_null {
        format!("{column} IS NULL OR ")
    } else {
        String::new()
    };
    sql.push_str(&format!(" AND ({null}{column} IN ({marks}))"));
    args.extend(within.into_iter().map(Value::Text));
}

fn push_time_range(
    sql: &mut String,
    args: &mut Vec<Value>,
    column: &str,
    since: Option<SystemTime>,
    until: Option<SystemTime>,
) {
    if let Some(since) = since {
        sql.push_str(&format!(" AND {column} >= ?"));
        args.push(Value::Integer(to_millis(since)));
    }
    if let Some(until) = until {
        sql.push_str(&format!(" AND {column} < ?"));
        args.push(Value::Integer(to_millis(until)));
    }
}

#[async_trait::async_trait]
impl Store for SqliteStore {
    async fn environment(&self, name: &str) -> Result<Option<EnvironmentRecord>> {
        let name = name.to_owned();
        self.call(move |conn, path| {
            conn.prepare_cached(&format!(
                "SELECT {ENVIRONMENT_COLUMNS} FROM environment WHERE name = ?1"
            ))
            .and_then(|mut stmt| stmt.query_row([&name], environment_row).optional())
            .map_err(sql(path, "reading an environment"))
        })
        .await
    }

    async fn environments(&self) -> Result<Vec<EnvironmentRecord>> {
        self.call(|conn, path| {
            conn.prepare_cached(&format!(
                "SELECT {ENVIRONMENT_COLUMNS} FROM environment ORDER BY name"
            ))
            .and_then(|mut stmt| stmt.query_map([], environment_row)?.collect())
            .map_err(sql(path, "listing environments"))
        })
        .await
    }

    async fn set_suspension(
        &self,
        environment: &str,
        suspension: Option<Hold>,
        audit: NewAuditEvent,
    ) -> Result<()> {
        let environment = environment.to_owned();
        self.call(move |conn, path| {
            let tx = immediate(conn).map_err(sql(path, "suspending an environment"))?;
            tx.prepare_cached(
                "INSERT INTO environment (name, suspended_reason, suspended_by, suspended_at)
                 VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (name) DO UPDATE SET suspended_reason = excluded.suspended_reason,
                     suspended_by = excluded.suspended_by, suspended_at = excluded.suspended_at",
            )
            .and_then(|mut stmt| {
                stmt.execute(params![
                    environment,
                    suspension.as_ref().map(|s| &s.reason),
                    suspension.as_ref().map(|s| &s.by),
                    suspension.as_ref().map(|s| to_millis(s.at)),
                ])
            })
            .and_then(|_| insert_audit(&tx, &audit))
            .and_then(|_| tx.commit())
            .map_err(sql(path, "suspending an environment"))
        })
        .await
    }

    async fn set_auto_promotion_hold(
        &self,
        environment: &str,
        hold: Option<Hold>,
        audit: NewAuditEvent,
    ) -> Result<()> {
        let environment = environment.to_owned();
        self.call(move |conn, path| {
            let tx = immediate(conn).map_err(sql(path, "holding auto-promotion"))?;
            tx.prepare_cached(
                "INSERT INTO environment (name, auto_hold_reason, auto_hold_by, auto_hold_at)
                 VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (name) DO UPDATE SET auto_hold_reason = excluded.auto_hold_reason,
                     auto_hold_by = excluded.auto_hold_by, auto_hold_at = excluded.auto_hold_at",
            )
            .and_then(|mut stmt| {
                stmt.execute(params![
                    environment,
                    hold.as_ref().map(|h| &h.reason),
                    hold.as_ref().map(|h| &h.by),
                    hold.as_ref().map(|h| to_millis(h.at)),
                ])
            })
            .and_then(|_| insert_audit(&tx, &audit))
            .and_then(|_| tx.commit())
            .map_err(sql(path, "holding auto-promotion"))
        })
        .await
    }

    async fn set_verification(
        &self,
        environment: &str,
        verification: &VerificationRecord,
        audit: Option<NewAuditEvent>,
    ) -> Result<()> {
        let environment = environment.to_owned();
        let text = serde_json::to_string(verification).expect("a verification record is JSON");
        self.call(move |conn, path| {
            let what = "recording an environment's verification";
            let tx = immediate(conn).map_err(sql(path, what))?;
            tx.prepare_cached(
                "INSERT INTO environment (name, verification) VALUES (?1, ?2)
                 ON CONFLICT (name) DO UPDATE SET verification = excluded.verification",
            )
            .and_then(|mut stmt| stmt.execute(params![environment, text]))
            .and_then(|_| match &audit {
                Some(audit) => insert_audit(&tx, audit).map(|_| ()),
                None => Ok(()),
            })
            .and_then(|_| tx.commit())
            .map_err(sql(path, what))
        })
        .await
    }

    async fn save_status(
        &self,
        environment: &str,
        status: Box<serde_json::value::RawValue>,
    ) -> Result<()> {
        let environment = environment.to_owned();
        let status = status.get().to_owned();
        self.call_with(Durability::Relaxed, move |conn, path| {
            conn.prepare_cached(
                "INSERT INTO environment (name, status) VALUES (?1, ?2)
                 ON CONFLICT (name) DO UPDATE SET status = excluded.status",
            )
            .and_then(|mut stmt| stmt.execute(params![environment, status]))
            .map(drop)
            .map_err(sql(path, "saving an environment's status"))
        })
        .await
    }

    async fn record_sync(&self, run: SyncRun) -> Result<SyncRecord> {
        self.call_with(Durability::Relaxed, move |conn, path| {
            let what = "recording a sync";
            let tx = immediate(conn).map_err(sql(path, what))?;
            let previous = tx
                .prepare_cached(&format!(
                    "SELECT {SYNC_COLUMNS} FROM sync_run WHERE environment = ?1
                     ORDER BY id DESC LIMIT 1"
                ))
                .and_then(|mut stmt| stmt.query_row([&run.environment], sync_row).optional())
                .map_err(sql(path, what))?;
            let id = match previous {
                Some(previous) if folds_into(&previous.run, &run) => {
                    tx.prepare_cached(
                        "UPDATE sync_run SET finished_at = ?1, passes = passes + 1 WHERE id = ?2",
                    )
                    .and_then(|mut stmt| {
                        stmt.execute(params![to_millis(run.finished_at), previous.id])
                    })
                    .map_err(sql(path, what))?;
                    previous.id
                }
                _ => {
                    tx.prepare_cached(
                        "INSERT INTO sync_run (environment, revision, started_at, finished_at,
                             result, message, trigger, applied, passes, created, changed, pruned,
                             drifted, adopted, content)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 1, ?9, ?10, ?11, ?12, ?13, ?14)",
                    )
                    .and_then(|mut stmt| {
                        stmt.execute(params![
                            run.environment,
                            run.revision,
                            to_millis(run.started_at),
                            to_millis(run.finished_at),
                            run.result,
                            run.message,
                            run.trigger,
                            run.applied,
                            run.counts.created,
                            run.counts.changed,
                            run.counts.pruned,
                            run.counts.drifted,
                            run.counts.adopted,
                            run.content,
                        ])
                    })
                    .map_err(sql(path, what))?;
                    let id = tx.last_insert_rowid();
                    if id % TRIM_EVERY == 0 {
                        tx.prepare_cached(
                            "DELETE FROM sync_run WHERE environment = ?1 AND id < (
                                 SELECT id FROM sync_run WHERE environment = ?1
                                 ORDER BY id DESC LIMIT 1 OFFSET ?2)",
                        )
                        .and_then(|mut stmt| {
                            stmt.execute(params![run.environment, HISTORY_PER_ENVIRONMENT - 1])
                        })
                        .map_err(sql(path, what))?;
                    }
                    id
                }
            };
            if run.applied {
                // applied_at moves only with what the environment runs: when its content is
                // known, a new revision with the same content (another environment's commit)
                // keeps it; otherwise any new revision moves it.
                tx.prepare_cached(
                    "INSERT INTO environment (name, applied_revision, applied_content, applied_at)
                     VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (name) DO UPDATE SET
                         applied_at = CASE
                             WHEN excluded.applied_content IS NOT NULL
                                 AND applied_content IS excluded.applied_content THEN applied_at
                             WHEN excluded.applied_content IS NULL
                                 AND applied_revision IS excluded.applied_revision THEN applied_at
                             ELSE excluded.applied_at END,
                         applied_revision = excluded.applied_revision,
                         applied_content = excluded.applied_content",
                )
                .and_then(|mut stmt| {
                    stmt.execute(params![
                        run.environment,
                        run.revision,
                        run.content,
                        to_millis(run.finished_at)
                    ])
                })
                .map_err(sql(path, what))?;
            }
            let record = tx
                .prepare_cached(&format!(
                    "SELECT {SYNC_COLUMNS} FROM sync_run WHERE id = ?1"
                ))
                .and_then(|mut stmt| stmt.query_row([id], sync_row))
                .map_err(sql(path, what))?;
            tx.commit().map_err(sql(path, what))?;
            Ok(record)
        })
        .await
    }

    async fn sync_history(&self, environment: &str, limit: u32) -> Result<Vec<SyncRecord>> {
        let environment = environment.to_owned();
        let limit = page_size(limit);
        self.call(move |conn, path| {
            conn.prepare_cached(&format!(
                "SELECT {SYNC_COLUMNS} FROM sync_run WHERE environment = ?1
                 ORDER BY id DESC LIMIT ?2"
            ))
            .and_then(|mut stmt| {
                stmt.query_map(params![environment, limit], sync_row)?
                    .collect()
            })
            .map_err(sql(path, "reading sync history"))
        })
        .await
    }

    async fn append_event(&self, event: NewEvent) -> Result<EventRecord> {
        self.call_with(Durability::Relaxed, move |conn, path| {
            let what = "recording an event";
            let tx = immediate(conn).map_err(sql(path, what))?;
            tx.prepare_cached(
                "INSERT INTO event (environment, at, severity, kind, message, revision)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )
            .and_then(|mut stmt| {
                stmt.execute(params![
                    event.environment,
                    to_millis(event.at),
                    event.severity.as_str(),
                    event.kind,
                    event.message,
                    event.revision,
                ])
            })
            .map_err(sql(path, what))?;
            let id = tx.last_insert_rowid();
            if id % TRIM_EVERY == 0 {
                tx.prepare_cached(
                    "DELETE FROM event WHERE environment IS ?1 AND id < (
                         SELECT id FROM event WHERE environment IS ?1
                         ORDER BY id DESC LIMIT 1 OFFSET ?2)",
                )
                .and_then(|mut stmt| {
                    stmt.execute(params![event.environment, HISTORY_PER_ENVIRONMENT - 1])
                })
                .map_err(sql(path, what))?;
            }
            tx.commit().map_err(sql(path, what))?;
            Ok(EventRecord { id, event })
        })
        .await
    }

    async fn events(&self, environment: Option<&str>, limit: u32) -> Result<Vec<EventRecord>> {
        let environment = environment.map(str::to_owned);
        let limit = page_size(limit);
        self.call(move |conn, path| {
            match &environment {
                Some(environment) => conn
                    .prepare_cached(&format!(
                        "SELECT {EVENT_COLUMNS} FROM event WHERE environment = ?1
                         ORDER BY id DESC LIMIT ?2"
                    ))
                    .and_then(|mut stmt| {
                        stmt.query_map(params![environment, limit], event_row)?
                            .collect()
                    }),
                None => conn
                    .prepare_cached(&format!(
                        "SELECT {EVENT_COLUMNS} FROM event ORDER BY id DESC LIMIT ?1"
                    ))
                    .and_then(|mut stmt| stmt.query_map([limit], event_row)?.collect()),
            }
            .map_err(sql(path, "reading events"))
        })
        .await
    }

    async fn create_promotion(&self, promotion: NewPromotion) -> Result<PromotionRecord> {
        self.call(move |conn, path| {
            let what = "creating a promotion";
            let tx = immediate(conn).map_err(sql(path, what))?;
            let at = to_millis(promotion.at);
            let detail = json_text(&promotion.detail);
            tx.prepare_cached(
                "INSERT INTO promotion (id, kind, source_environment, target_environment,
                     revision, rerun, requested_by, reason, state, message, promotion_commit,
                     detail, created_at, updated_at, version)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?8, NULL, ?10, ?11, ?11, 1)",
            )
            .and_then(|mut stmt| {
                stmt.execute(params![
                    promotion.id,
                    promotion.kind.as_str(),
                    promotion.source_environment,
                    promotion.target_environment,
                    promotion.revision,
                    promotion.rerun,
                    promotion.requested_by,
                    promotion.reason,
                    promotion.state.as_str(),
                    detail,
                    at,
                ])
            })
            .map_err(sql(path, what))?;
            let seq = tx.last_insert_rowid();
            tx.prepare_cached(
                "INSERT INTO promotion_transition (promotion_seq, seq, from_state, to_state,
                     actor, reason, at, detail)
                 VALUES (?1, 1, NULL, ?2, ?3, ?4, ?5, ?6)",
            )
            .and_then(|mut stmt| {
                stmt.execute(params![
                    seq,
                    promotion.state.as_str(),
                    promotion.requested_by,
                    promotion.reason,
                    at,
                    detail,
                ])
            })
            .map_err(sql(path, what))?;
            let action = match promotion.kind {
                PromotionKind::Promotion => AuditAction::Requested,
                PromotionKind::Rollback => AuditAction::RolledBack,
            };
            insert_audit(
                &tx,
                &NewAuditEvent {
                    at: promotion.at,
                    actor: promotion.requested_by.clone(),
                    action,
                    environment: Some(promotion.target_environment.clone()),
                    promotion_id: Some(promotion.id.clone()),
                    revision: Some(promotion.revision.clone()),
                    reason: promotion.reason.clone(),
                },
            )
            .map_err(sql(path, what))?;
            let (_, record) = find_promotion(&tx, &promotion.id)
                .map_err(sql(path, what))?
                .expect("the promotion was inserted by this transaction");
            tx.commit().map_err(sql(path, what))?;
            Ok(record)
        })
        .await
    }

    async fn promotion(&self, id: &str) -> Result<Option<PromotionDetail>> {
        let id = id.to_owned();
        self.call(move |conn, path| {
            let what = "reading a promotion";
            let Some((seq, promotion)) = find_promotion(conn, &id).map_err(sql(path, what))? else {
                return Ok(None);
            };
            let approvals = conn
                .prepare_cached(
                    "SELECT approver, email, groups, at, comment FROM approval
                     WHERE promotion_seq = ?1 ORDER BY at, rowid",
                )
                .and_then(|mut stmt| {
                    stmt.query_map([seq], |row| {
                        let groups: String = row.get(2)?;
                        Ok(Approval {
                            approver: row.get(0)?,
                            email: row.get(1)?,
                            groups: serde_json::from_str(&groups).map_err(|e| {
                                rusqlite::Error::FromSqlConversionFailure(
                                    2,
                                    Type::Text,
                                    Box::new(e),
                                )
                            })?,
                            at: from_millis(row.get(3)?),
                            comment: row.get(4)?,
                        })
                    })?
                    .collect::<rusqlite::Result<Vec<_>>>()
                })
                .map_err(sql(path, what))?;
            let transitions = conn
                .prepare_cached(
                    "SELECT seq, from_state, to_state, actor, reason, at, detail
                     FROM promotion_transition WHERE promotion_seq = ?1 ORDER BY seq",
                )
                .and_then(|mut stmt| {
                    stmt.query_map([seq], |row| {
                        let from: Option<String> = row.get(1)?;
                        Ok(TransitionRecord {
                            seq: row.get(0)?,
                            from: from
                                .map(|s| {
                                    s.parse().map_err(|e: String| {
                                        rusqlite::Error::FromSqlConversionFailure(
                                            1,
                                            Type::Text,
                                            e.into(),
                                        )
                                    })
                                })
                                .transpose()?,
                            to: parse_column(row, 2)?,
                            actor: row.get(3)?,
                            reason: row.get(4)?,
                            at: from_millis(row.get(5)?),
                            detail: json_column(row, 6)?,
                        })
                    })?
                    .collect::<rusqlite::Result<Vec<_>>>()
                })
                .map_err(sql(path, what))?;
            Ok(Some(PromotionDetail {
                promotion,
                approvals,
                transitions,
            }))
        })
        .await
    }

    async fn promotions(&self, filter: &PromotionFilter) -> Result<Page<PromotionRecord>> {
        let filter = filter.clone();
        self.call(move |conn, path| {
            let size = page_size(filter.limit);
            let mut query = format!("SELECT {PROMOTION_COLUMNS} FROM promotion WHERE 1 = 1");
            let mut args = Vec::new();
            if let Some(after) = page_after(path, &filter.page_token)? {
                query.push_str(" AND seq < ?");
                args.push(Value::Integer(after));
            }
            if let Some(env) = filter.environment {
                query.push_str(" AND target_environment = ?");
                args.push(Value::Text(env));
            }
            push_within(
                &mut query,
                &mut args,
                "target_environment",
                filter.environments,
                false,
            );
            push_in(
                &mut query,
                &mut args,
                "state",
                filter.states.iter().map(|s| s.as_str()).collect(),
            );
            push_time_range(
                &mut query,
                &mut args,
                "created_at",
                filter.since,
                filter.until,
            );
            query.push_str(" ORDER BY seq DESC LIMIT ?");
            args.push(Value::Integer(i64::from(size) + 1));
            let rows = conn
                .prepare_cached(&query)
                .and_then(|mut stmt| {
                    stmt.query_map(rusqlite::params_from_iter(args), promotion_row)?
                        .collect::<rusqlite::Result<Vec<_>>>()
                })
                .map_err(sql(path, "listing promotions"))?;
            Ok(paginate(rows, size))
        })
        .await
    }

    async fn transition(&self, transition: Transition) -> Result<TransitionOutcome> {
        self.call(move |conn, path| {
            let what = "recording a promotion transition";
            let tx = immediate(conn).map_err(sql(path, what))?;
            let Some((seq, current)) =
                find_promotion(&tx, &transition.promotion_id).map_err(sql(path, what))?
            else {
                return Ok(TransitionOutcome::NotFound);
            };
            // An ended promotion never moves again, whatever the caller believed.
            let moved = transition
                .from_version
                .is_some_and(|version| version != current.version);
            if current.state != transition.from || current.state.is_terminal() || moved {
                return Ok(TransitionOutcome::Conflict {
                    current: current.state,
                });
            }
            let at = to_millis(transition.at);
            let detail = json_text(&transition.detail);
            tx.prepare_cached(
                "UPDATE promotion SET state = ?1, message = ?2, updated_at = ?3,
                     promotion_commit = COALESCE(?4, promotion_commit), detail = ?5,
                     version = version + 1
                 WHERE seq = ?6",
            )
            .and_then(|mut stmt| {
                stmt.execute(params![
                    transition.to.as_str(),
                    transition.reason,
                    at,
                    transition.commit,
                    detail,
                    seq,
                ])
            })
            .map_err(sql(path, what))?;
            tx.prepare_cached(
                "INSERT INTO promotion_transition (promotion_seq, seq, from_state, to_state,
                     actor, reason, at, detail)
                 VALUES (?1, (SELECT COALESCE(MAX(seq), 0) + 1 FROM promotion_transition
                              WHERE promotion_seq = ?1), ?2, ?3, ?4, ?5, ?6, ?7)",
            )
            .and_then(|mut stmt| {
                stmt.execute(params![
                    seq,
                    transition.from.as_str(),
                    transition.to.as_str(),
                    transition.actor,
                    transition.reason,
                    at,
                    detail,
                ])
            })
            .map_err(sql(path, what))?;
            if let Some(action) = transition.audit {
                insert_audit(
                    &tx,
                    &NewAuditEvent {
                        at: transition.at,
                        actor: transition.actor.clone(),
                        action,
                        environment: Some(current.target_environment.clone()),
                        promotion_id: Some(current.id.clone()),
                        revision: Some(current.revision.clone()),
                        reason: transition.reason.clone(),
                    },
                )
                .map_err(sql(path, what))?;
            }
            let (_, updated) = find_promotion(&tx, &transition.promotion_id)
                .map_err(sql(path, what))?
                .expect("the promotion was read by this transaction");
            tx.commit().map_err(sql(path, what))?;
            Ok(TransitionOutcome::Applied(Box::new(updated)))
        })
        .await
    }

    async fn add_approval(
        &self,
        promotion_id: &str,
        approval: Approval,
    ) -> Result<ApprovalOutcome> {
        let promotion_id = promotion_id.to_owned();
        self.call(move |conn, path| {
            let what = "recording an approval";
            let tx = immediate(conn).map_err(sql(path, what))?;
            let Some((seq, promotion)) =
                find_promotion(&tx, &promotion_id).map_err(sql(path, what))?
            else {
                return Ok(ApprovalOutcome::NotFound);
            };
            // Checked in the same transaction as the insert: an approval never lands after a
            // rejection, an abort or the Git step.
            if !matches!(
                promotion.state,
                PromotionState::Pending
                    | PromotionState::AwaitingApproval
                    | PromotionState::Approved
            ) {
                return Ok(ApprovalOutcome::Closed {
                    state: promotion.state,
                });
            }
            let groups = serde_json::Value::from(approval.groups.clone()).to_string();
            let inserted = tx
                .prepare_cached(
                    "INSERT INTO approval (promotion_seq, approver, email, groups, at, comment)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                     ON CONFLICT (promotion_seq, approver) DO NOTHING",
                )
                .and_then(|mut stmt| {
                    stmt.execute(params![
                        seq,
                        approval.approver,
                        approval.email,
                        groups,
                        to_millis(approval.at),
                        approval.comment,
                    ])
                })
                .map_err(sql(path, what))?;
            if inserted == 0 {
                return Ok(ApprovalOutcome::AlreadyApproved);
            }
            insert_audit(
                &tx,
                &NewAuditEvent {
                    at: approval.at,
                    actor: approval.approver.clone(),
                    action: AuditAction::Approved,
                    environment: Some(promotion.target_environment),
                    promotion_id: Some(promotion.id),
                    revision: Some(promotion.revision),
                    reason: approval.comment.clone(),
                },
            )
            .and_then(|_| tx.commit())
            .map_err(sql(path, what))?;
            Ok(ApprovalOutcome::Recorded)
        })
        .await
    }

    async fn append_audit(&self, event: NewAuditEvent) -> Result<AuditEvent> {
        self.call(move |conn, path| {
            let id = insert_audit(conn, &event).map_err(sql(path, "recording an audit event"))?;
            Ok(AuditEvent { id, event })
        })
        .await
    }

    async fn audit_events(&self, filter: &AuditFilter) -> Result<Page<AuditEvent>> {
        let filter = filter.clone();
        self.call(move |conn, path| {
            let size = page_size(filter.limit);
            let mut query = format!("SELECT {AUDIT_COLUMNS} FROM audit_event WHERE 1 = 1");
            let mut args = Vec::new();
            if let Some(after) = page_after(path, &filter.page_token)? {
                query.push_str(" AND id < ?");
                args.push(Value::Integer(after));
            }
            if let Some(env) = filter.environment {
                query.push_str(" AND environment = ?");
                args.push(Value::Text(env));
            }
            if let Some(id) = filter.promotion_id {
                query.push_str(" AND promotion_id = ?");
                args.push(Value::Text(id));
            }
            if let Some(actor) = filter.actor {
                query.push_str(" AND actor = ?");
                args.push(Value::Text(actor));
            }
            push_within(
                &mut query,
                &mut args,
                "environment",
                filter.environments,
                true,
            );
            push_in(
                &mut query,
                &mut args,
                "action",
                filter.actions.iter().map(|a| a.as_str()).collect(),
            );
            push_time_range(&mut query, &mut args, "at", filter.since, filter.until);
            query.push_str(" ORDER BY id DESC LIMIT ?");
            args.push(Value::Integer(i64::from(size) + 1));
            let rows = conn
                .prepare_cached(&query)
                .and_then(|mut stmt| {
                    stmt.query_map(rusqlite::params_from_iter(args), |row| {
                        let event = audit_row(row)?;
                        Ok((event.id, event))
                    })?
                    .collect::<rusqlite::Result<Vec<_>>>()
                })
                .map_err(sql(path, "listing audit events"))?;
            Ok(paginate(rows, size))
        })
        .await
    }

    async fn delivery_metrics(&self, query: &DeliveryQuery) -> Result<Vec<DeliveryMetrics>> {
        let query = query.clone();
        self.call(move |conn, path| {
            let marks = vec!["?"; query.environments.len()].join(", ");
            let text = delivery::attempts_query(
                &format!("json_extract(t.detail, '$.{FIRST_COMMIT_AT}')"),
                &format!("IN ({marks})"),
                "?",
            );
            let mut args: Vec<Value> = query
                .environments
                .iter()
                .map(|env| Value::Text(env.clone()))
                .collect();
            args.push(Value::Integer(to_millis(query.since)));
            let attempts = conn
                .prepare_cached(&text)
                .and_then(|mut stmt| {
                    stmt.query_map(rusqlite::params_from_iter(args), |row| {
                        Ok(Attempt {
                            environment: row.get(0)?,
                            kind: parse_column(row, 1)?,
                            requested_at: row.get(2)?,
                            first_commit_at: row.get(3)?,
                            syncing_at: row.get(4)?,
                            verifying_at: row.get(5)?,
                            verification_failed_at: row.get(6)?,
                            succeeded_at: row.get(7)?,
                        })
                    })?
                    .collect::<rusqlite::Result<Vec<_>>>()
                })
                .map_err(sql(path, "reading promotions for delivery metrics"))?;
            Ok(delivery::compute(&query, &attempts))
        })
        .await
    }
}
