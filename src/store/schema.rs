//! The database schema and its migrations, in SQLite's dialect and PostgreSQL's side by side.
//!
//! `MIGRATIONS[i]` takes a database from version `i` to `i + 1`; a release that changes the schema
//! appends one and never edits those before it. Each runs in its own transaction together with
//! the version bump, so a crash leaves the database at one version or the next, never between.
//! SQLite keeps the version in its header's `user_version`, PostgreSQL in the one row of
//! `stagehand_schema` (see the postgres module). Both dialects hold the same tables and columns,
//! so a version number means the same data model on either engine.

use std::path::Path;

use rusqlite::{Connection, ErrorCode, TransactionBehavior};

use super::{Database, Error, Result};

/// `application_id` in the database header ("STGH"), so that another program's SQLite file in
/// the state directory is refused rather than migrated.
pub const APPLICATION_ID: i64 = 0x5354_4748;

/// One schema version, in each engine's dialect.
pub struct Migration {
    /// For SQLite.
    pub sqlite: &'static str,
    /// For PostgreSQL: integers are `BIGINT` (counts are `u32`, beyond `INTEGER`), flags
    /// `BOOLEAN`, row ids identity columns; JSON stays text, written and read back verbatim.
    pub postgres: &'static str,
}

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

/// [`V1`] for PostgreSQL. `approval.given` stands for SQLite's implicit rowid, which orders the
/// approvals of one instant as they were given.
const V1_POSTGRES: &str = r#"
CREATE TABLE environment (
    name                TEXT PRIMARY KEY,
    applied_revision    TEXT,
    applied_at          BIGINT,
    suspended_reason    TEXT,
    suspended_by        TEXT,
    suspended_at        BIGINT,
    auto_hold_reason    TEXT,
    auto_hold_by        TEXT,
    auto_hold_at        BIGINT,
    status              TEXT
);

CREATE TABLE sync_run (
    id                  BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    environment         TEXT NOT NULL,
    revision            TEXT NOT NULL,
    started_at          BIGINT NOT NULL,
    finished_at         BIGINT NOT NULL,
    result              TEXT NOT NULL,
    message             TEXT NOT NULL,
    trigger             TEXT NOT NULL,
    applied             BOOLEAN NOT NULL,
    passes              BIGINT NOT NULL,
    created             BIGINT NOT NULL,
    changed             BIGINT NOT NULL,
    pruned              BIGINT NOT NULL,
    drifted             BIGINT NOT NULL,
    adopted             BIGINT NOT NULL
);
CREATE INDEX sync_run_by_environment ON sync_run (environment, id);
CREATE INDEX sync_run_by_revision ON sync_run (environment, revision, applied);

CREATE TABLE event (
    id                  BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    environment         TEXT,
    at                  BIGINT NOT NULL,
    severity            TEXT NOT NULL,
    kind                TEXT NOT NULL,
    message             TEXT NOT NULL,
    revision            TEXT
);
CREATE INDEX event_by_environment ON event (environment, id);

CREATE TABLE promotion (
    seq                 BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id                  TEXT NOT NULL UNIQUE,
    kind                TEXT NOT NULL,
    source_environment  TEXT,
    target_environment  TEXT NOT NULL,
    revision            TEXT NOT NULL,
    rerun               BOOLEAN NOT NULL,
    requested_by        TEXT NOT NULL,
    reason              TEXT NOT NULL,
    state               TEXT NOT NULL,
    message             TEXT NOT NULL,
    promotion_commit    TEXT,
    detail              TEXT,
    created_at          BIGINT NOT NULL,
    updated_at          BIGINT NOT NULL,
    version             BIGINT NOT NULL
);
CREATE INDEX promotion_by_target ON promotion (target_environment, seq);
CREATE INDEX promotion_by_target_state ON promotion (target_environment, state, seq);
CREATE INDEX promotion_by_state ON promotion (state, seq);
CREATE INDEX promotion_by_source ON promotion (source_environment, seq);

CREATE TABLE promotion_transition (
    promotion_seq       BIGINT NOT NULL REFERENCES promotion (seq),
    seq                 BIGINT NOT NULL,
    from_state          TEXT,
    to_state            TEXT NOT NULL,
    actor               TEXT NOT NULL,
    reason              TEXT NOT NULL,
    at                  BIGINT NOT NULL,
    detail              TEXT,
    PRIMARY KEY (promotion_seq, seq)
);

CREATE TABLE approval (
    promotion_seq       BIGINT NOT NULL REFERENCES promotion (seq),
    approver            TEXT NOT NULL,
    email               TEXT NOT NULL,
    groups              TEXT NOT NULL,
    at                  BIGINT NOT NULL,
    comment             TEXT NOT NULL,
    given               BIGINT GENERATED ALWAYS AS IDENTITY,
    PRIMARY KEY (promotion_seq, approver)
);

CREATE TABLE audit_event (
    id                  BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at                  BIGINT NOT NULL,
    actor               TEXT NOT NULL,
    action              TEXT NOT NULL,
    environment         TEXT,
    promotion_id        TEXT,
    revision            TEXT,
    reason              TEXT NOT NULL
);
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

/// Version 3: delivery metrics read a target's promotions that moved since a window's start.
const V3: &str = r#"
CREATE INDEX promotion_by_target_updated ON promotion (target_environment, updated_at);
"#;

/// Version 4: where each environment's verification stands (JSON), so a failed verification
/// keeps blocking promotions out of it after a restart.
const V4: &str = r#"
ALTER TABLE environment ADD COLUMN verification TEXT;
"#;

const MIGRATIONS: [Migration; 4] = [
    Migration {
        sqlite: V1,
        postgres: V1_POSTGRES,
    },
    // The same statements in both dialects.
    Migration {
        sqlite: V2,
        postgres: V2,
    },
    Migration {
        sqlite: V3,
        postgres: V3,
    },
    Migration {
        sqlite: V4,
        postgres: V4,
    },
];

/// The migrations to run on a database at `version`, each with the version it reaches.
pub fn migrations_from(version: i64) -> impl Iterator<Item = (i64, &'static Migration)> {
    MIGRATIONS
        .iter()
        .enumerate()
        .skip(usize::try_from(version).unwrap_or(0))
        .map(|(from, migration)| (from as i64 + 1, migration))
}

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
                database: Database::File(path.to_owned()),
                found: application_id,
            });
        }
    }
    if version > CURRENT_VERSION {
        return Err(Error::NewerSchema {
            database: Database::File(path.to_owned()),
            found: version,
            supported: CURRENT_VERSION,
        });
    }
    for (to, migration) in migrations_from(version) {
        let migrate_error = |source: rusqlite::Error| Error::Migrate {
            database: Database::File(path.to_owned()),
            version: to,
            source: source.into(),
        };
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Exclusive)
            .map_err(migrate_error)?;
        tx.execute_batch(migration.sqlite).map_err(migrate_error)?;
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
        database: Database::File(path.to_owned()),
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
            database: Database::File(path.to_owned()),
            detail: source.to_string(),
        },
        _ => Error::Query {
            database: Database::File(path.to_owned()),
            what,
            source: source.into(),
        },
    }
}
