//! The shared store: the embedded store's tables in a PostgreSQL database, for several replicas.
//!
//! It answers every call as [`super::SqliteStore`] does; what SQLite gets from serialising all
//! writes on one connection, this store gets from transactions and locks:
//! - Each call that writes more than one row is one transaction (READ COMMITTED), so an audit
//!   event lands with what it records or not at all.
//! - A transition or an approval reads its promotion `FOR UPDATE`: two replicas racing one
//!   compare-and-swap queue on the row, and the second sees the state the first wrote, so
//!   exactly one is [`TransitionOutcome::Applied`].
//! - A sync record takes a transaction-scoped advisory lock on its environment, so that folding
//!   a quiet pass always compares with the environment's newest record.
//! - The relaxed writes (statuses, sync history, events) commit with `synchronous_commit = off`,
//!   the server's own form of SQLite's `synchronous=NORMAL`: lost only if the database server
//!   itself crashes before its WAL writer flushes them (a fraction of a second), and flushed by
//!   the next durable commit anyway.
//! - Migrations run under an advisory lock, so replicas that start together migrate once, and
//!   the schema version lives in the one row of `stagehand_schema`, together with the
//!   installation ID that the replicas share.
//!
//! A call whose caller stops waiting is rolled back unless its commit was already sent: either
//! way it is written whole or not at all.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::GenericClient;
use deadpool_postgres::{Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime};
use tokio_postgres::Row;
use tokio_postgres::config::Host;
use tokio_postgres::types::ToSql;

use super::delivery::{self, Attempt};
use super::schema::{CURRENT_VERSION, migrations_from};
use super::{
    Approval, ApprovalOutcome, AuditAction, AuditEvent, AuditFilter, BackendError, Database,
    DeliveryMetrics, DeliveryQuery, EnvironmentRecord, Error, EventRecord, FIRST_COMMIT_AT,
    HISTORY_PER_ENVIRONMENT, Hold, NewAuditEvent, NewEvent, NewPromotion, Page, PromotionDetail,
    PromotionFilter, PromotionKind, PromotionRecord, PromotionState, Result, Store, SyncCounts,
    SyncRecord, SyncRun, TRIM_EVERY, Transition, TransitionOutcome, TransitionRecord,
    VerificationRecord, folds_into, from_millis, page_size, paginate, to_millis,
};

/// Connections one store keeps open at most. Calls are short transactions, so a few serve a
/// replica; several replicas together stay far below a server's default `max_connections`.
const POOL_SIZE: usize = 8;
/// How long a call waits for a free connection before it fails.
const POOL_WAIT: Duration = Duration::from_secs(30);
/// How long connecting may take, unless the URL says (`connect_timeout`).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Advisory locks are two 32-bit keys; the first is Stagehand's ("STGH"), the second what is
/// locked. Another application on the same database uses other keys.
const LOCK_CLASS: i32 = 0x5354_4748;
/// The second key of the lock that migrations hold.
const MIGRATION_LOCK: i32 = 0;
/// The first key of the per-environment sync locks (whose second key is a hash of the name).
const SYNC_LOCK_CLASS: i32 = 0x5354_4749;

/// A PostgreSQL connection string (a `postgresql://` URL or libpq's `key=value` pairs), parsed.
/// It shows, in `Display` and `Debug` alike, as a URL without its password.
#[derive(Clone)]
pub struct PostgresUrl {
    config: tokio_postgres::Config,
    shown: String,
}

impl PostgresUrl {
    /// Parses a connection string. The error never repeats it, since it may hold a password.
    pub fn parse(text: &str) -> Result<Self> {
        let config = tokio_postgres::Config::from_str(text.trim()).map_err(|e| {
            // tokio-postgres names the option at fault, which is worth telling; its other
            // messages quote the text around a syntax error, which could be the password.
            let reason = std::error::Error::source(&e)
                .map(ToString::to_string)
                .filter(|r| r.starts_with("unknown option") || r.starts_with("invalid value"));
            Error::InvalidUrl {
                detail: reason.map(|r| format!(" ({r})")).unwrap_or_default(),
            }
        })?;
        let shown = show(&config);
        Ok(Self { config, shown })
    }

    /// The database as errors name it.
    pub fn database(&self) -> Database {
        Database::Postgres(self.shown.clone())
    }
}

impl FromStr for PostgresUrl {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        Self::parse(text)
    }
}

impl fmt::Display for PostgresUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown)
    }
}

impl fmt::Debug for PostgresUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("PostgresUrl").field(&self.shown).finish()
    }
}

/// `postgresql://user@host:port,host:port/database?host=/socket/dir`, from what was parsed:
/// built anew rather than cut out of the text, so that no form of password can slip through.
fn show(config: &tokio_postgres::Config) -> String {
    let ports = config.get_ports();
    let port = |i: usize| ports.get(i).or(ports.first()).copied().unwrap_or(5432);
    let mut servers = Vec::new();
    let mut sockets = Vec::new();
    for (i, host) in config.get_hosts().iter().enumerate() {
        match host {
            Host::Tcp(name) if name.contains(':') => servers.push(format!("[{name}]:{}", port(i))),
            Host::Tcp(name) => servers.push(format!("{name}:{}", port(i))),
            Host::Unix(dir) => sockets.push(format!("host={}", dir.display())),
        }
    }
    let user = config
        .get_user()
        .map(|u| format!("{u}@"))
        .unwrap_or_default();
    let mut shown = format!(
        "postgresql://{user}{}/{}",
        servers.join(","),
        config.get_dbname().unwrap_or_default()
    );
    if !sockets.is_empty() {
        shown.push('?');
        shown.push_str(&sockets.join("&"));
    }
    shown
}

/// TLS as `sslmode` asks (`prefer` by default: TLS when the server offers it), verifying the
/// server's certificate against the system's roots (`SSL_CERT_FILE` adds a private CA).
fn tls() -> tokio_postgres_rustls::MakeRustlsConnect {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    if !native.errors.is_empty() {
        tracing::debug!(errors = ?native.errors, "some system CA certificates could not be read");
    }
    roots.add_parsable_certificates(native.certs);
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("ring supports rustls' default protocol versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    tokio_postgres_rustls::MakeRustlsConnect::new(config)
}

/// The shared PostgreSQL store.
pub struct PostgresStore {
    pool: Pool,
    database: Database,
}

/// Why a row could not be read: the column, or a value this build does not know.
enum Decode {
    Column(tokio_postgres::Error),
    Value(String),
}

impl From<tokio_postgres::Error> for Decode {
    fn from(e: tokio_postgres::Error) -> Self {
        Self::Column(e)
    }
}

impl PostgresStore {
    /// Connects to the database, checks its schema version and migrates it to the current one
    /// (once, however many replicas start together). A database with a newer schema is
    /// refused and left untouched.
    pub async fn connect(url: &PostgresUrl) -> Result<Self> {
        let mut config = url.config.clone();
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("stagehand");
        }
        let manager = Manager::from_config(
            config,
            tls(),
            ManagerConfig {
                // A connection the server closed (a restart, a failover) is known closed as
                // soon as its socket ends and is replaced; a query per checkout to find out
                // would cost a round trip on every call.
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .wait_timeout(Some(POOL_WAIT))
            .runtime(Runtime::Tokio1)
            .build()
            .expect("a pool with a runtime and timeouts builds");
        let store = Self {
            pool,
            database: url.database(),
        };
        store.migrate().await?;
        Ok(store)
    }

    /// The database, as errors name it.
    pub fn database(&self) -> &Database {
        &self.database
    }

    /// The schema version of the database.
    pub async fn schema_version(&self) -> Result<i64> {
        let what = "reading the schema version";
        let client = self.client(what).await?;
        let row = client
            .query_one("SELECT version FROM stagehand_schema", &[])
            .await
            .map_err(self.sql(what))?;
        row.try_get(0).map_err(self.sql(what))
    }

    /// The installation ID that every replica on this database shares: `candidate` becomes it
    /// unless one is stored already, in which case that one is returned. Replicas that ask at
    /// once agree: the row lock lets one write, and the others find it written.
    pub async fn installation_id(&self, candidate: &str) -> Result<String> {
        let what = "reading the installation ID";
        let client = self.client(what).await?;
        client
            .execute(
                "UPDATE stagehand_schema SET installation_id = $1 WHERE installation_id IS NULL",
                &[&candidate],
            )
            .await
            .map_err(self.sql(what))?;
        let row = client
            .query_one("SELECT installation_id FROM stagehand_schema", &[])
            .await
            .map_err(self.sql(what))?;
        row.try_get(0).map_err(self.sql(what))
    }

    /// Closes the idle connections at once and the others as their calls finish; calls still
    /// in flight complete (or roll back) as they would have.
    pub async fn close(self) -> Result<()> {
        self.pool.close();
        Ok(())
    }

    async fn migrate(&self) -> Result<()> {
        let open = |source: BackendError| Error::Open {
            database: self.database.clone(),
            source,
        };
        let mut client = self.pool.get().await.map_err(|e| open(pool_error(e)))?;
        loop {
            let tx = client
                .transaction()
                .await
                .map_err(|e| open(BackendError::Postgres(e)))?;
            let version = schema_version_locked(&tx)
                .await
                .map_err(|e| open(BackendError::Postgres(e)))?;
            if version > CURRENT_VERSION {
                return Err(Error::NewerSchema {
                    database: self.database.clone(),
                    found: version,
                    supported: CURRENT_VERSION,
                });
            }
            let Some((to, migration)) = migrations_from(version).next() else {
                tx.commit()
                    .await
                    .map_err(|e| open(BackendError::Postgres(e)))?;
                return Ok(());
            };
            let migrate_error = |source| Error::Migrate {
                database: self.database.clone(),
                version: to,
                source: BackendError::Postgres(source),
            };
            tx.batch_execute(migration.postgres)
                .await
                .map_err(migrate_error)?;
            tx.execute("UPDATE stagehand_schema SET version = $1", &[&to])
                .await
                .map_err(migrate_error)?;
            tx.commit().await.map_err(migrate_error)?;
            tracing::info!(database = %self.database, version = to, "migrated the store schema");
        }
    }

    async fn client(&self, what: &'static str) -> Result<deadpool_postgres::Object> {
        self.pool.get().await.map_err(|e| Error::Query {
            database: self.database.clone(),
            what,
            source: pool_error(e),
        })
    }

    fn sql(&self, what: &'static str) -> impl FnOnce(tokio_postgres::Error) -> Error + '_ {
        move |source| Error::Query {
            database: self.database.clone(),
            what,
            source: BackendError::Postgres(source),
        }
    }

    fn decode(&self, what: &'static str) -> impl FnOnce(Decode) -> Error + '_ {
        move |decode| match decode {
            Decode::Column(source) => Error::Query {
                database: self.database.clone(),
                what,
                source: BackendError::Postgres(source),
            },
            Decode::Value(detail) => Error::Invalid {
                database: self.database.clone(),
                what,
                detail,
            },
        }
    }

    /// Runs one statement and reads its rows with `read`.
    async fn rows<T>(
        &self,
        client: &impl GenericClient,
        what: &'static str,
        query: &str,
        params: &[&(dyn ToSql + Sync)],
        read: fn(&Row) -> Result<T, Decode>,
    ) -> Result<Vec<T>> {
        let stmt = client.prepare_cached(query).await.map_err(self.sql(what))?;
        let rows = client.query(&stmt, params).await.map_err(self.sql(what))?;
        rows.iter()
            .map(read)
            .collect::<Result<Vec<T>, Decode>>()
            .map_err(self.decode(what))
    }

    /// Runs one statement that returns at most one row.
    async fn row<T>(
        &self,
        client: &impl GenericClient,
        what: &'static str,
        query: &str,
        params: &[&(dyn ToSql + Sync)],
        read: fn(&Row) -> Result<T, Decode>,
    ) -> Result<Option<T>> {
        Ok(self
            .rows(client, what, query, params, read)
            .await?
            .into_iter()
            .next())
    }

    /// Runs one statement and counts the rows it changed.
    async fn execute(
        &self,
        client: &impl GenericClient,
        what: &'static str,
        query: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64> {
        let stmt = client.prepare_cached(query).await.map_err(self.sql(what))?;
        client.execute(&stmt, params).await.map_err(self.sql(what))
    }

    async fn insert_audit(
        &self,
        client: &impl GenericClient,
        what: &'static str,
        event: &NewAuditEvent,
    ) -> Result<i64> {
        let id = self
            .row(
                client,
                what,
                "INSERT INTO audit_event (at, actor, action, environment, promotion_id, revision,
                     reason)
                 VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
                &[
                    &to_millis(event.at),
                    &event.actor,
                    &event.action.as_str(),
                    &event.environment,
                    &event.promotion_id,
                    &event.revision,
                    &event.reason,
                ],
                |row| Ok(row.try_get::<_, i64>(0)?),
            )
            .await?;
        Ok(id.expect("INSERT … RETURNING returns the row it inserted"))
    }

    /// One environment's hold columns (suspension or auto-promotion hold) set or cleared, with
    /// its audit event, in one transaction.
    async fn set_hold(
        &self,
        what: &'static str,
        query: &str,
        environment: &str,
        hold: Option<Hold>,
        audit: NewAuditEvent,
    ) -> Result<()> {
        let mut client = self.client(what).await?;
        let tx = client.transaction().await.map_err(self.sql(what))?;
        self.execute(
            &tx,
            what,
            query,
            &[
                &environment,
                &hold.as_ref().map(|h| h.reason.as_str()),
                &hold.as_ref().map(|h| h.by.as_str()),
                &hold.as_ref().map(|h| to_millis(h.at)),
            ],
        )
        .await?;
        self.insert_audit(&tx, what, &audit).await?;
        tx.commit().await.map_err(self.sql(what))
    }
}

/// Takes the migration lock for the transaction, makes sure the version row exists, and reads
/// the schema version (0 for a database Stagehand never used).
async fn schema_version_locked(tx: &impl GenericClient) -> Result<i64, tokio_postgres::Error> {
    tx.execute(
        "SELECT pg_advisory_xact_lock($1, $2)",
        &[&LOCK_CLASS, &MIGRATION_LOCK],
    )
    .await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS stagehand_schema (
             singleton       BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (singleton),
             version         BIGINT NOT NULL,
             installation_id TEXT
         );
         INSERT INTO stagehand_schema (version) VALUES (0) ON CONFLICT DO NOTHING;",
    )
    .await?;
    tx.query_one("SELECT version FROM stagehand_schema", &[])
        .await?
        .try_get(0)
}

/// A connection the pool could not make is the server's error; the rest are the pool's own.
fn pool_error(e: PoolError) -> BackendError {
    match e {
        PoolError::Backend(e) => BackendError::Postgres(e),
        other => BackendError::Pool(other),
    }
}

/// The second key of an environment's sync lock: the first four bytes of its name's SHA-256.
/// Two names that share it only wait for each other.
fn sync_lock_key(environment: &str) -> i32 {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(environment.as_bytes());
    i32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]])
}

fn parse<T: FromStr<Err = String>>(row: &Row, idx: usize) -> Result<T, Decode> {
    row.try_get::<_, &str>(idx)?.parse().map_err(Decode::Value)
}

fn json(row: &Row, idx: usize) -> Result<Option<serde_json::Value>, Decode> {
    row.try_get::<_, Option<&str>>(idx)?
        .map(|text| {
            serde_json::from_str(text)
                .map_err(|e| Decode::Value(format!("column {idx} is not JSON: {e}")))
        })
        .transpose()
}

fn json_text(value: &Option<serde_json::Value>) -> Option<String> {
    value.as_ref().map(serde_json::Value::to_string)
}

fn count(row: &Row, idx: usize) -> Result<u32, Decode> {
    let n: i64 = row.try_get(idx)?;
    u32::try_from(n).map_err(|_| Decode::Value(format!("column {idx}: {n} is not a count")))
}

fn millis(row: &Row, idx: usize) -> Result<std::time::SystemTime, Decode> {
    Ok(from_millis(row.try_get(idx)?))
}

fn hold_columns(row: &Row, first: usize) -> Result<Option<Hold>, Decode> {
    let at: Option<i64> = row.try_get(first + 2)?;
    at.map(|at| {
        Ok(Hold {
            reason: row.try_get(first)?,
            by: row.try_get(first + 1)?,
            at: from_millis(at),
        })
    })
    .transpose()
}

fn page_after(database: &Database, token: &Option<String>) -> Result<Option<i64>> {
    token
        .as_deref()
        .map(|token| {
            token.parse::<i64>().map_err(|_| Error::PageToken {
                database: database.clone(),
                token: token.to_owned(),
            })
        })
        .transpose()
}

const ENVIRONMENT_COLUMNS: &str = "name, applied_revision, applied_at, suspended_reason, \
     suspended_by, suspended_at, auto_hold_reason, auto_hold_by, auto_hold_at, status, \
     verification";

fn environment_row(row: &Row) -> Result<EnvironmentRecord, Decode> {
    Ok(EnvironmentRecord {
        name: row.try_get(0)?,
        applied_revision: row.try_get(1)?,
        applied_at: row.try_get::<_, Option<i64>>(2)?.map(from_millis),
        suspended: hold_columns(row, 3)?,
        auto_promotion_hold: hold_columns(row, 6)?,
        status: json(row, 9)?,
        verification: json(row, 10)?
            .map(serde_json::from_value)
            .transpose()
            .map_err(|e| Decode::Value(format!("column 10 is not a verification record: {e}")))?
            .unwrap_or_default(),
    })
}

const SYNC_COLUMNS: &str = "id, environment, revision, started_at, finished_at, result, message, \
     trigger, applied, created, changed, pruned, drifted, adopted, passes, content";

fn sync_row(row: &Row) -> Result<SyncRecord, Decode> {
    Ok(SyncRecord {
        id: row.try_get(0)?,
        passes: count(row, 14)?,
        run: SyncRun {
            environment: row.try_get(1)?,
            revision: row.try_get(2)?,
            content: row.try_get(15)?,
            started_at: millis(row, 3)?,
            finished_at: millis(row, 4)?,
            result: row.try_get(5)?,
            message: row.try_get(6)?,
            trigger: row.try_get(7)?,
            applied: row.try_get(8)?,
            counts: SyncCounts {
                created: count(row, 9)?,
                changed: count(row, 10)?,
                pruned: count(row, 11)?,
                drifted: count(row, 12)?,
                adopted: count(row, 13)?,
            },
        },
    })
}

const EVENT_COLUMNS: &str = "id, environment, at, severity, kind, message, revision";

fn event_row(row: &Row) -> Result<EventRecord, Decode> {
    Ok(EventRecord {
        id: row.try_get(0)?,
        event: NewEvent {
            environment: row.try_get(1)?,
            at: millis(row, 2)?,
            severity: parse(row, 3)?,
            kind: row.try_get(4)?,
            message: row.try_get(5)?,
            revision: row.try_get(6)?,
        },
    })
}

const PROMOTION_COLUMNS: &str = "id, kind, source_environment, target_environment, revision, \
     rerun, requested_by, reason, state, message, promotion_commit, detail, created_at, \
     updated_at, version, seq";

fn promotion_row(row: &Row) -> Result<(i64, PromotionRecord), Decode> {
    let record = PromotionRecord {
        id: row.try_get(0)?,
        kind: parse(row, 1)?,
        source_environment: row.try_get(2)?,
        target_environment: row.try_get(3)?,
        revision: row.try_get(4)?,
        rerun: row.try_get(5)?,
        requested_by: row.try_get(6)?,
        reason: row.try_get(7)?,
        state: parse(row, 8)?,
        message: row.try_get(9)?,
        commit: row.try_get(10)?,
        detail: json(row, 11)?,
        created_at: millis(row, 12)?,
        updated_at: millis(row, 13)?,
        version: row.try_get(14)?,
    };
    Ok((row.try_get(15)?, record))
}

const AUDIT_COLUMNS: &str = "id, at, actor, action, environment, promotion_id, revision, reason";

fn audit_row(row: &Row) -> Result<(i64, AuditEvent), Decode> {
    let event = AuditEvent {
        id: row.try_get(0)?,
        event: NewAuditEvent {
            at: millis(row, 1)?,
            actor: row.try_get(2)?,
            action: parse(row, 3)?,
            environment: row.try_get(4)?,
            promotion_id: row.try_get(5)?,
            revision: row.try_get(6)?,
            reason: row.try_get(7)?,
        },
    };
    Ok((event.id, event))
}

fn approval_row(row: &Row) -> Result<Approval, Decode> {
    let groups: &str = row.try_get(2)?;
    Ok(Approval {
        approver: row.try_get(0)?,
        email: row.try_get(1)?,
        groups: serde_json::from_str(groups)
            .map_err(|e| Decode::Value(format!("approval groups are not a JSON list: {e}")))?,
        at: millis(row, 3)?,
        comment: row.try_get(4)?,
    })
}

fn transition_row(row: &Row) -> Result<TransitionRecord, Decode> {
    let from: Option<&str> = row.try_get(1)?;
    Ok(TransitionRecord {
        seq: row.try_get(0)?,
        from: from.map(|s| s.parse().map_err(Decode::Value)).transpose()?,
        to: parse(row, 2)?,
        actor: row.try_get(3)?,
        reason: row.try_get(4)?,
        at: millis(row, 5)?,
        detail: json(row, 6)?,
    })
}

/// A query whose conditions depend on a filter: its text and its parameters, numbered as they
/// are added.
struct Query {
    text: String,
    params: Vec<Box<dyn ToSql + Sync + Send>>,
}

impl Query {
    fn new(text: String) -> Self {
        Self {
            text,
            params: Vec::new(),
        }
    }

    /// Appends `condition`, whose `$` stands for the next parameter, `value`.
    fn and(&mut self, condition: &str, value: impl ToSql + Sync + Send + 'static) {
        self.params.push(Box::new(value));
        let mark = format!("${}", self.params.len());
        self.text
            .push_str(&format!(" AND {}", condition.replace('$', &mark)));
    }

    fn time_range(
        &mut self,
        column: &str,
        since: Option<std::time::SystemTime>,
        until: Option<std::time::SystemTime>,
    ) {
        if let Some(since) = since {
            self.and(&format!("{column} >= $"), to_millis(since));
        }
        if let Some(until) = until {
            self.and(&format!("{column} < $"), to_millis(until));
        }
    }

    fn newest_first(&mut self, key: &str, size: u32) {
        self.params.push(Box::new(i64::from(size) + 1));
        self.text.push_str(&format!(
            " ORDER BY {key} DESC LIMIT ${}",
            self.params.len()
        ));
    }

    fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        self.params
            .iter()
            .map(|p| p.as_ref() as &(dyn ToSql + Sync))
            .collect()
    }
}

#[async_trait::async_trait]
impl Store for PostgresStore {
    async fn environment(&self, name: &str) -> Result<Option<EnvironmentRecord>> {
        let what = "reading an environment";
        let client = self.client(what).await?;
        self.row(
            &client,
            what,
            &format!("SELECT {ENVIRONMENT_COLUMNS} FROM environment WHERE name = $1"),
            &[&name],
            environment_row,
        )
        .await
    }

    async fn environments(&self) -> Result<Vec<EnvironmentRecord>> {
        let what = "listing environments";
        let client = self.client(what).await?;
        self.rows(
            &client,
            what,
            &format!("SELECT {ENVIRONMENT_COLUMNS} FROM environment ORDER BY name"),
            &[],
            environment_row,
        )
        .await
    }

    async fn set_suspension(
        &self,
        environment: &str,
        suspension: Option<Hold>,
        audit: NewAuditEvent,
    ) -> Result<()> {
        self.set_hold(
            "suspending an environment",
            "INSERT INTO environment (name, suspended_reason, suspended_by, suspended_at)
             VALUES ($1, $2, $3, $4)
             ON CONFLICT (name) DO UPDATE SET suspended_reason = excluded.suspended_reason,
                 suspended_by = excluded.suspended_by, suspended_at = excluded.suspended_at",
            environment,
            suspension,
            audit,
        )
        .await
    }

    async fn set_auto_promotion_hold(
        &self,
        environment: &str,
        hold: Option<Hold>,
        audit: NewAuditEvent,
    ) -> Result<()> {
        self.set_hold(
            "holding auto-promotion",
            "INSERT INTO environment (name, auto_hold_reason, auto_hold_by, auto_hold_at)
             VALUES ($1, $2, $3, $4)
             ON CONFLICT (name) DO UPDATE SET auto_hold_reason = excluded.auto_hold_reason,
                 auto_hold_by = excluded.auto_hold_by, auto_hold_at = excluded.auto_hold_at",
            environment,
            hold,
            audit,
        )
        .await
    }

    async fn set_verification(
        &self,
        environment: &str,
        verification: &VerificationRecord,
        audit: Option<NewAuditEvent>,
    ) -> Result<()> {
        let what = "recording an environment's verification";
        let text = serde_json::to_string(verification).expect("a verification record is JSON");
        let mut client = self.client(what).await?;
        let tx = client.transaction().await.map_err(self.sql(what))?;
        self.execute(
            &tx,
            what,
            "INSERT INTO environment (name, verification) VALUES ($1, $2)
             ON CONFLICT (name) DO UPDATE SET verification = excluded.verification",
            &[&environment, &text],
        )
        .await?;
        if let Some(audit) = &audit {
            self.insert_audit(&tx, what, audit).await?;
        }
        tx.commit().await.map_err(self.sql(what))
    }

    async fn save_status(
        &self,
        environment: &str,
        status: Box<serde_json::value::RawValue>,
    ) -> Result<()> {
        let what = "saving an environment's status";
        let mut client = self.client(what).await?;
        let tx = client.transaction().await.map_err(self.sql(what))?;
        tx.batch_execute(RELAXED).await.map_err(self.sql(what))?;
        self.execute(
            &tx,
            what,
            "INSERT INTO environment (name, status) VALUES ($1, $2)
             ON CONFLICT (name) DO UPDATE SET status = excluded.status",
            &[&environment, &status.get()],
        )
        .await?;
        tx.commit().await.map_err(self.sql(what))
    }

    async fn record_sync(&self, run: SyncRun) -> Result<SyncRecord> {
        let what = "recording a sync";
        let mut client = self.client(what).await?;
        let tx = client.transaction().await.map_err(self.sql(what))?;
        tx.batch_execute(&format!(
            "{RELAXED}; SELECT pg_advisory_xact_lock({SYNC_LOCK_CLASS}, {})",
            sync_lock_key(&run.environment)
        ))
        .await
        .map_err(self.sql(what))?;
        let previous = self
            .row(
                &tx,
                what,
                &format!(
                    "SELECT {SYNC_COLUMNS} FROM sync_run WHERE environment = $1
                     ORDER BY id DESC LIMIT 1"
                ),
                &[&run.environment],
                sync_row,
            )
            .await?;
        let record = match previous {
            Some(previous) if folds_into(&previous.run, &run) => self
                .row(
                    &tx,
                    what,
                    &format!(
                        "UPDATE sync_run SET finished_at = $1, passes = passes + 1 WHERE id = $2
                         RETURNING {SYNC_COLUMNS}"
                    ),
                    &[&to_millis(run.finished_at), &previous.id],
                    sync_row,
                )
                .await?
                .expect("the record read in this transaction is still there"),
            _ => {
                let record = self
                    .row(
                        &tx,
                        what,
                        &format!(
                            "INSERT INTO sync_run (environment, revision, started_at,
                                 finished_at, result, message, trigger, applied, passes, created,
                                 changed, pruned, drifted, adopted, content)
                             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 1, $9, $10, $11, $12, $13,
                                 $14)
                             RETURNING {SYNC_COLUMNS}"
                        ),
                        &[
                            &run.environment,
                            &run.revision,
                            &to_millis(run.started_at),
                            &to_millis(run.finished_at),
                            &run.result,
                            &run.message,
                            &run.trigger,
                            &run.applied,
                            &i64::from(run.counts.created),
                            &i64::from(run.counts.changed),
                            &i64::from(run.counts.pruned),
                            &i64::from(run.counts.drifted),
                            &i64::from(run.counts.adopted),
                            &run.content,
                        ],
                        sync_row,
                    )
                    .await?
                    .expect("INSERT … RETURNING returns the row it inserted");
                if record.id % TRIM_EVERY == 0 {
                    self.execute(
                        &tx,
                        what,
                        "DELETE FROM sync_run WHERE environment = $1 AND id < (
                             SELECT id FROM sync_run WHERE environment = $1
                             ORDER BY id DESC LIMIT 1 OFFSET $2)",
                        &[&run.environment, &i64::from(HISTORY_PER_ENVIRONMENT - 1)],
                    )
                    .await?;
                }
                record
            }
        };
        if run.applied {
            // applied_at moves only with what the environment runs: when its content is
            // known, a new revision with the same content (another environment's commit)
            // keeps it; otherwise any new revision moves it.
            self.execute(
                &tx,
                what,
                "INSERT INTO environment AS e (name, applied_revision, applied_content, applied_at)
                 VALUES ($1, $2, $3, $4)
                 ON CONFLICT (name) DO UPDATE SET
                     applied_at = CASE
                         WHEN excluded.applied_content IS NOT NULL
                             AND e.applied_content IS NOT DISTINCT FROM excluded.applied_content
                             THEN e.applied_at
                         WHEN excluded.applied_content IS NULL
                             AND e.applied_revision IS NOT DISTINCT FROM excluded.applied_revision
                             THEN e.applied_at
                         ELSE excluded.applied_at END,
                     applied_revision = excluded.applied_revision,
                     applied_content = excluded.applied_content",
                &[
                    &run.environment,
                    &run.revision,
                    &run.content,
                    &to_millis(run.finished_at),
                ],
            )
            .await?;
        }
        tx.commit().await.map_err(self.sql(what))?;
        Ok(record)
    }

    async fn sync_history(&self, environment: &str, limit: u32) -> Result<Vec<SyncRecord>> {
        let what = "reading sync history";
        let client = self.client(what).await?;
        self.rows(
            &client,
            what,
            &format!(
                "SELECT {SYNC_COLUMNS} FROM sync_run WHERE environment = $1
                 ORDER BY id DESC LIMIT $2"
            ),
            &[&environment, &i64::from(page_size(limit))],
            sync_row,
        )
        .await
    }

    async fn append_event(&self, event: NewEvent) -> Result<EventRecord> {
        let what = "recording an event";
        let mut client = self.client(what).await?;
        let tx = client.transaction().await.map_err(self.sql(what))?;
        tx.batch_execute(RELAXED).await.map_err(self.sql(what))?;
        let id = self
            .row(
                &tx,
                what,
                "INSERT INTO event (environment, at, severity, kind, message, revision)
                 VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
                &[
                    &event.environment,
                    &to_millis(event.at),
                    &event.severity.as_str(),
                    &event.kind,
                    &event.message,
                    &event.revision,
                ],
                |row| Ok(row.try_get::<_, i64>(0)?),
            )
            .await?
            .expect("INSERT … RETURNING returns the row it inserted");
        if id % TRIM_EVERY == 0 {
            // Two statements rather than `IS NOT DISTINCT FROM`, which no index serves.
            match &event.environment {
                Some(environment) => {
                    self.execute(
                        &tx,
                        what,
                        "DELETE FROM event WHERE environment = $1 AND id < (
                             SELECT id FROM event WHERE environment = $1
                             ORDER BY id DESC LIMIT 1 OFFSET $2)",
                        &[environment, &i64::from(HISTORY_PER_ENVIRONMENT - 1)],
                    )
                    .await?
                }
                None => {
                    self.execute(
                        &tx,
                        what,
                        "DELETE FROM event WHERE environment IS NULL AND id < (
                             SELECT id FROM event WHERE environment IS NULL
                             ORDER BY id DESC LIMIT 1 OFFSET $1)",
                        &[&i64::from(HISTORY_PER_ENVIRONMENT - 1)],
                    )
                    .await?
                }
            };
        }
        tx.commit().await.map_err(self.sql(what))?;
        Ok(EventRecord { id, event })
    }

    async fn events(&self, environment: Option<&str>, limit: u32) -> Result<Vec<EventRecord>> {
        let what = "reading events";
        let client = self.client(what).await?;
        let limit = i64::from(page_size(limit));
        match environment {
            Some(environment) => {
                self.rows(
                    &client,
                    what,
                    &format!(
                        "SELECT {EVENT_COLUMNS} FROM event WHERE environment = $1
                         ORDER BY id DESC LIMIT $2"
                    ),
                    &[&environment, &limit],
                    event_row,
                )
                .await
            }
            None => {
                self.rows(
                    &client,
                    what,
                    &format!("SELECT {EVENT_COLUMNS} FROM event ORDER BY id DESC LIMIT $1"),
                    &[&limit],
                    event_row,
                )
                .await
            }
        }
    }

    async fn create_promotion(&self, promotion: NewPromotion) -> Result<PromotionRecord> {
        let what = "creating a promotion";
        let mut client = self.client(what).await?;
        let tx = client.transaction().await.map_err(self.sql(what))?;
        let at = to_millis(promotion.at);
        let detail = json_text(&promotion.detail);
        let (seq, record) = self
            .row(
                &tx,
                what,
                &format!(
                    "INSERT INTO promotion (id, kind, source_environment, target_environment,
                         revision, rerun, requested_by, reason, state, message,
                         promotion_commit, detail, created_at, updated_at, version)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $8, NULL, $10, $11, $11, 1)
                     RETURNING {PROMOTION_COLUMNS}"
                ),
                &[
                    &promotion.id,
                    &promotion.kind.as_str(),
                    &promotion.source_environment,
                    &promotion.target_environment,
                    &promotion.revision,
                    &promotion.rerun,
                    &promotion.requested_by,
                    &promotion.reason,
                    &promotion.state.as_str(),
                    &detail,
                    &at,
                ],
                promotion_row,
            )
            .await?
            .expect("INSERT … RETURNING returns the row it inserted");
        self.execute(
            &tx,
            what,
            "INSERT INTO promotion_transition (promotion_seq, seq, from_state, to_state, actor,
                 reason, at, detail)
             VALUES ($1, 1, NULL, $2, $3, $4, $5, $6)",
            &[
                &seq,
                &promotion.state.as_str(),
                &promotion.requested_by,
                &promotion.reason,
                &at,
                &detail,
            ],
        )
        .await?;
        let action = match promotion.kind {
            PromotionKind::Promotion => AuditAction::Requested,
            PromotionKind::Rollback => AuditAction::RolledBack,
        };
        self.insert_audit(
            &tx,
            what,
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
        .await?;
        tx.commit().await.map_err(self.sql(what))?;
        Ok(record)
    }

    async fn promotion(&self, id: &str) -> Result<Option<PromotionDetail>> {
        let what = "reading a promotion";
        let mut client = self.client(what).await?;
        // One snapshot for the promotion, its approvals and its transitions.
        let tx = client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(self.sql(what))?;
        let Some((seq, promotion)) = self
            .row(
                &tx,
                what,
                &format!("SELECT {PROMOTION_COLUMNS} FROM promotion WHERE id = $1"),
                &[&id],
                promotion_row,
            )
            .await?
        else {
            return Ok(None);
        };
        let approvals = self
            .rows(
                &tx,
                what,
                "SELECT approver, email, groups, at, comment FROM approval
                 WHERE promotion_seq = $1 ORDER BY at, given",
                &[&seq],
                approval_row,
            )
            .await?;
        let transitions = self
            .rows(
                &tx,
                what,
                "SELECT seq, from_state, to_state, actor, reason, at, detail
                 FROM promotion_transition WHERE promotion_seq = $1 ORDER BY seq",
                &[&seq],
                transition_row,
            )
            .await?;
        tx.commit().await.map_err(self.sql(what))?;
        Ok(Some(PromotionDetail {
            promotion,
            approvals,
            transitions,
        }))
    }

    async fn promotions(&self, filter: &PromotionFilter) -> Result<Page<PromotionRecord>> {
        let what = "listing promotions";
        let size = page_size(filter.limit);
        let mut query = Query::new(format!(
            "SELECT {PROMOTION_COLUMNS} FROM promotion WHERE TRUE"
        ));
        if let Some(after) = page_after(&self.database, &filter.page_token)? {
            query.and("seq < $", after);
        }
        if let Some(env) = &filter.environment {
            query.and("target_environment = $", env.clone());
        }
        if let Some(within) = &filter.environments {
            query.and("target_environment = ANY($)", within.clone());
        }
        if !filter.states.is_empty() {
            let states: Vec<&'static str> = filter.states.iter().map(|s| s.as_str()).collect();
            query.and("state = ANY($)", states);
        }
        query.time_range("created_at", filter.since, filter.until);
        query.newest_first("seq", size);
        let client = self.client(what).await?;
        let rows = self
            .rows(&client, what, &query.text, &query.params(), promotion_row)
            .await?;
        Ok(paginate(rows, size))
    }

    async fn transition(&self, transition: Transition) -> Result<TransitionOutcome> {
        let what = "recording a promotion transition";
        let mut client = self.client(what).await?;
        let tx = client.transaction().await.map_err(self.sql(what))?;
        // The row lock is the compare-and-swap: a racing call waits here, then reads the
        // state this one wrote.
        let Some((seq, current)) = self
            .row(
                &tx,
                what,
                &format!("SELECT {PROMOTION_COLUMNS} FROM promotion WHERE id = $1 FOR UPDATE"),
                &[&transition.promotion_id],
                promotion_row,
            )
            .await?
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
        let (_, updated) = self
            .row(
                &tx,
                what,
                &format!(
                    "UPDATE promotion SET state = $1, message = $2, updated_at = $3,
                         promotion_commit = COALESCE($4, promotion_commit), detail = $5,
                         version = version + 1
                     WHERE seq = $6
                     RETURNING {PROMOTION_COLUMNS}"
                ),
                &[
                    &transition.to.as_str(),
                    &transition.reason,
                    &at,
                    &transition.commit,
                    &detail,
                    &seq,
                ],
                promotion_row,
            )
            .await?
            .expect("the promotion is locked by this transaction");
        self.execute(
            &tx,
            what,
            "INSERT INTO promotion_transition (promotion_seq, seq, from_state, to_state, actor,
                 reason, at, detail)
             VALUES ($1, (SELECT COALESCE(MAX(seq), 0) + 1 FROM promotion_transition
                          WHERE promotion_seq = $1), $2, $3, $4, $5, $6, $7)",
            &[
                &seq,
                &transition.from.as_str(),
                &transition.to.as_str(),
                &transition.actor,
                &transition.reason,
                &at,
                &detail,
            ],
        )
        .await?;
        if let Some(action) = transition.audit {
            self.insert_audit(
                &tx,
                what,
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
            .await?;
        }
        tx.commit().await.map_err(self.sql(what))?;
        Ok(TransitionOutcome::Applied(Box::new(updated)))
    }

    async fn add_approval(
        &self,
        promotion_id: &str,
        approval: Approval,
    ) -> Result<ApprovalOutcome> {
        let what = "recording an approval";
        let mut client = self.client(what).await?;
        let tx = client.transaction().await.map_err(self.sql(what))?;
        let Some((seq, promotion)) = self
            .row(
                &tx,
                what,
                &format!("SELECT {PROMOTION_COLUMNS} FROM promotion WHERE id = $1 FOR UPDATE"),
                &[&promotion_id],
                promotion_row,
            )
            .await?
        else {
            return Ok(ApprovalOutcome::NotFound);
        };
        // Checked under the same row lock as transitions take: an approval never lands after
        // a rejection, an abort or the Git step.
        if !matches!(
            promotion.state,
            PromotionState::Pending | PromotionState::AwaitingApproval | PromotionState::Approved
        ) {
            return Ok(ApprovalOutcome::Closed {
                state: promotion.state,
            });
        }
        let groups = serde_json::Value::from(approval.groups.clone()).to_string();
        let inserted = self
            .execute(
                &tx,
                what,
                "INSERT INTO approval (promotion_seq, approver, email, groups, at, comment)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (promotion_seq, approver) DO NOTHING",
                &[
                    &seq,
                    &approval.approver,
                    &approval.email,
                    &groups,
                    &to_millis(approval.at),
                    &approval.comment,
                ],
            )
            .await?;
        if inserted == 0 {
            return Ok(ApprovalOutcome::AlreadyApproved);
        }
        self.insert_audit(
            &tx,
            what,
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
        .await?;
        tx.commit().await.map_err(self.sql(what))?;
        Ok(ApprovalOutcome::Recorded)
    }

    async fn append_audit(&self, event: NewAuditEvent) -> Result<AuditEvent> {
        let what = "recording an audit event";
        let client = self.client(what).await?;
        let id = self.insert_audit(&client, what, &event).await?;
        Ok(AuditEvent { id, event })
    }

    async fn audit_events(&self, filter: &AuditFilter) -> Result<Page<AuditEvent>> {
        let what = "listing audit events";
        let size = page_size(filter.limit);
        let mut query = Query::new(format!(
            "SELECT {AUDIT_COLUMNS} FROM audit_event WHERE TRUE"
        ));
        if let Some(after) = page_after(&self.database, &filter.page_token)? {
            query.and("id < $", after);
        }
        if let Some(env) = &filter.environment {
            query.and("environment = $", env.clone());
        }
        if let Some(id) = &filter.promotion_id {
            query.and("promotion_id = $", id.clone());
        }
        if let Some(actor) = &filter.actor {
            query.and("actor = $", actor.clone());
        }
        if let Some(within) = &filter.environments {
            query.and(
                "(environment IS NULL OR environment = ANY($))",
                within.clone(),
            );
        }
        if !filter.actions.is_empty() {
            let actions: Vec<&'static str> = filter.actions.iter().map(|a| a.as_str()).collect();
            query.and("action = ANY($)", actions);
        }
        query.time_range("at", filter.since, filter.until);
        query.newest_first("id", size);
        let client = self.client(what).await?;
        let rows = self
            .rows(&client, what, &query.text, &query.params(), audit_row)
            .await?;
        Ok(paginate(rows, size))
    }

    async fn delivery_metrics(&self, query: &DeliveryQuery) -> Result<Vec<DeliveryMetrics>> {
        let what = "reading promotions for delivery metrics";
        let text = delivery::attempts_query(
            &format!("(t.detail::jsonb ->> '{FIRST_COMMIT_AT}')::bigint"),
            "= ANY($1)",
            "$2",
        );
        let since = to_millis(query.since);
        let client = self.client(what).await?;
        let attempts = self
            .rows(
                &client,
                what,
                &text,
                &[&query.environments, &since],
                attempt_row,
            )
            .await?;
        Ok(delivery::compute(query, &attempts))
    }
}

fn attempt_row(row: &Row) -> Result<Attempt, Decode> {
    Ok(Attempt {
        environment: row.try_get(0)?,
        kind: parse(row, 1)?,
        requested_at: row.try_get(2)?,
        first_commit_at: row.try_get(3)?,
        syncing_at: row.try_get(4)?,
        verifying_at: row.try_get(5)?,
        verification_failed_at: row.try_get(6)?,
        succeeded_at: row.try_get(7)?,
    })
}

/// Makes the transaction's commit return before its WAL reaches the disk (see the module docs).
const RELAXED: &str = "SET LOCAL synchronous_commit TO OFF";
