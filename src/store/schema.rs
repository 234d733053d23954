//! The database schema and its migrations, versioned by SQLite's `user_version`.
//!
//! `MIGRATIONS[i]` takes a database from version `i` to `i + 1`; a release that changes the schema
//! appends one and never edits those before it. Each runs in its own transaction together with
//! the version bump, so a crash leaves the database at one version or the next, never between.

use std::path::Path;

use rusqlite::{Connection, ErrorCode, TransactionBehavior};

use super::{Error, Result};

/// `application_id` in the database header ("STGH"), so that another program's SQLite file in
/// the state directory is refused rather than migrated.
pub const APPLICATION_ID: i64 = 0x5354_4748;

/// Version 1 holds what the service (issue 14) and the promotion engine (issue 15) need.
/// Times are milliseconds since the Unix epoch; JSON columns hold data the owning module
/// serialised (statuses, per-state data), never Secret values.
const V1: &str = r#"
CREATE TABLE environment (
    name                TEXT PRIMARY KEY,
    applied_revision    TEXT,
    applied_at          INTEGER,
    suspended_reason    TEXT,
    suspended_by        TEXT,
    suspended_at        INTEGER,
    auto_hold_reason    TEXT,
    auto_hold_by        TEXT,
    auto_hold_at        INTEGER,
    status              TEXT
) STRICT;

CREATE TABLE sync_run (
    id                  INTEGER PRIMARY KEY,
    environment         TEXT NOT NULL,
    revision            TEXT NOT NULL,
    started_at          INTEGER NOT NULL,
    finished_at         INTEGER NOT NULL,
    result              TEXT NOT NULL,
    message             TEXT NOT NULL,
    trigger             TEXT NOT NULL,
    applied             INTEGER NOT NULL,
    -- Quiet passes folded into this row (same revision and result, nothing changed).
    passes              INTEGER NOT NULL,
    created             INTEGER NOT NULL,
    changed             INTEGER NOT NULL,
    pruned              INTEGER NOT NULL,
    drifted             INTEGER NOT NULL,
    adopted             INTEGER NOT NULL
) STRICT;
-- History per environment; also answers "since when has it run this revision" (soak time).
CREATE INDEX sync_run_by_environment ON sync_run (environment, id);
CREATE INDEX sync_run_by_revision ON sync_run (environment, revision, applied);

CREATE TABLE event (
    id                  INTEGER PRIMARY KEY,
    environment         TEXT,
    at                  INTEGER NOT NULL,
    severity            TEXT NOT NULL,
    kind                TEXT NOT NULL,
    message             TEXT NOT NULL,
    revision            TEXT
) STRICT;
CREATE INDEX event_by_environment ON event (environment, id);

CREATE TABLE promotion (
    seq                 INTEGER PRIMARY KEY,
    id                  TEXT NOT NULL UNIQUE,
    kind                TEXT NOT NULL,
    source_environment  TEXT,
    target_environment  TEXT NOT NULL,
    revision            TEXT NOT NULL,
    rerun               INTEGER NOT NULL,
    requested_by        TEXT NOT NULL,
    reason              TEXT NOT NULL,
    state               TEXT NOT NULL,
    message             TEXT NOT NULL,
    promotion_commit    TEXT,
    detail              TEXT,
    created_at          INTEGER NOT NULL,
    updated_at          INTEGER NOT NULL,
    version             INTEGER NOT NULL
) STRICT;
-- Listing newest first by target, and the queue of a target (its unfinished promotions in
-- request order); then listing by state, and the promotions that leave an environment.
CREATE INDEX promotion_by_target ON promotion (target_environment, seq);
CREATE INDEX promotion_by_target_state ON promotion (target_environment, state, seq);
CREATE INDEX promotion_by_state ON promotion (state, seq);
CREATE INDEX promotion_by_source ON promotion (source_environment, seq);

CREATE TABLE promotion_transition (
    promotion_seq       INTEGER NOT NULL REFERENCES promotion (seq),
    seq                 INTEGER NOT NULL,
    from_state          TEXT,
    to_state            TEXT NOT NULL,
    actor               TEXT NOT NULL,
    reason              TEXT NOT NULL,
    at                  INTEGER NOT NULL,
    detail              TEXT,
    PRIMARY KEY (promotion_seq, seq)
) STRICT;

CREATE TABLE approval (
    promotion_seq       INTEGER NOT NULL REFERENCES promotion (seq),
    approver            TEXT NOT NULL,
    email               TEXT NOT NULL,
    groups              TEXT NOT NULL,
    at                  INTEGER NOT NULL,
    comment             TEXT NOT NULL,
    -- The same person approving twice counts once.
    PRIMARY KEY (promotion_seq, approver)
) STRICT;

CREATE TABLE audit_event (
    id                  INTEGER PRIMARY KEY,
    at                  INTEGER NOT NULL,
    actor               TEXT NOT NULL,
    action              TEXT NOT NULL,
    environment         TEXT,
    promotion_id        TEXT,
    revision            TEXT,
    reason              TEXT NOT NULL
) STRICT;
CREATE INDEX audit_by_environment ON audit_event (environment, id);
CREATE INDEX audit_by_promotion ON audit_event (promotion_id, id);
CREATE INDEX audit_by_time ON audit_event (at, id);
"#;

/// Version 2: what an environment runs is its content (the tree of its directory), not the
/// branch tip, so that soak time survives commits that change only other environments.
const V2: &str = r#"
ALTER TABLE sync_run ADD COLUMN content TEXT;
ALTER TABLE environment ADD COLUMN applied_content TEXT;
"#;

const MIGRATIONS: [&str; 2] = [V1, V2];

/// The schema version this build writes.
pub const CURRENT_VERSION: i64 = MIGRATIONS.len() as i64;

/// Checks that `conn` is a sound Stagehand database no newer than this build, then migrates it
/// to [`CURRENT_VERSION`]. A new or empty file counts as version 0.
pub fn check_and_migrate(conn: &mut Connection, path: &Path) -> Result<()> {
    // The first statement reads the header, which is where a file that is not a database fails.
    let application_id = pragma_i64(conn, path, "application_id")?;
    let version = pragma_i64(conn, path, "user_version")?;
    quick_check(conn, path)?;

    if application_id != APPLICATION_ID {
        let empty = application_id == 0 && version == 0 && !has_tables(conn, path)?;
        if !empty {
            return Err(Error::ForeignDatabase {
                path: path.to_owned(),
                found: application_id,
            });
        }
    }
    if version > CURRENT_VERSION {
        return Err(Error::NewerSchema {
            path: path.to_owned(),
            found: version,
            supported: CURRENT_VERSION,
        });
    }
    for (from, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        let to = from as i64 + 1;
        let migrate_error = |source| Error::Migrate {
            path: path.to_owned(),
            version: to,
            source,
        };
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Exclusive)
            .map_err(migrate_error)?;
        tx.execute_batch(sql).map_err(migrate_error)?;
        tx.pragma_update(None, "application_id", APPLICATION_ID)
            .map_err(migrate_error)?;
        tx.pragma_update(None, "user_version", to)
            .map_err(migrate_error)?;
        tx.commit().map_err(migrate_error)?;
        tracing::info!(database = %path.display(), version = to, "migrated the store schema");
    }
    Ok(())
}

/// The schema version of an open database.
pub fn version(conn: &Connection, path: &Path) -> Result<i64> {
    pragma_i64(conn, path, "user_version")
}

fn pragma_i64(conn: &Connection, path: &Path, pragma: &'static str) -> Result<i64> {
    conn.pragma_query_value(None, pragma, |row| row.get(0))
        .map_err(|source| classify(path, "reading the database header", source))
}

/// `PRAGMA quick_check` reads every page (milliseconds for a store of this size), so a damaged
/// file is refused at start rather than failing at some later write.
fn quick_check(conn: &Connection, path: &Path) -> Result<()> {
    let problems = (|| {
        let mut stmt = conn.prepare("PRAGMA quick_check")?;
        let rows = stmt.query_map([], |row| row.get::<_, String>(0))?;
        rows.collect::<rusqlite::Result<Vec<String>>>()
    })()
    .map_err(|source| classify(path, "checking the database", source))?;
    if problems.len() == 1 && problems[0] == "ok" {
        return Ok(());
    }
    Err(Error::Corrupt {
        path: path.to_owned(),
        detail: problems.join("; "),
    })
}

fn has_tables(conn: &Connection, path: &Path) -> Result<bool> {
    conn.query_row("SELECT count(*) FROM sqlite_schema", [], |row| {
        row.get::<_, i64>(0)
    })
    .map(|count| count > 0)
    .map_err(|source| classify(path, "listing tables", source))
}

/// A damaged file shows as "not a database" or "corrupt" errors; those become
/// [`Error::Corrupt`], anything else stays a query error.
pub fn classify(path: &Path, what: &'static str, source: rusqlite::Error) -> Error {
    match source.sqlite_error_code() {
        Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt) => Error::Corrupt {
            path: path.to_owned(),
            detail: source.to_string(),
        },
        _ => Error::Query {
            path: path.to_owned(),
            what,
            source,
        },
    }
}
