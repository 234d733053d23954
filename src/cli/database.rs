//! Where the state lives, for every command that opens the store or acts as the installation:
//! an SQLite file in the state directory (the default, for one replica), or a PostgreSQL
//! database that several replicas share.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use clap::Args;
use stagehand::cluster::installation::{self, InstallationId};
use stagehand::store::{PostgresStore, PostgresUrl, SqliteStore, Store};
use zeroize::Zeroizing;

/// The store flags, shared by `serve`, `sync` and `diff`.
#[derive(Debug, Args)]
pub struct DatabaseArgs {
    /// A PostgreSQL database for the state, shared by every replica:
    /// postgresql://USER:PASSWORD@HOST:PORT/DATABASE (or libpq's key=value pairs). Without it
    /// or --database-url-file, the state is an SQLite file in --state-dir. A password given as
    /// a flag shows in the process list: prefer the environment variable or
    /// --database-url-file. Logs and errors show the URL without its password.
    #[arg(
        long,
        env = "STAGEHAND_DATABASE_URL",
        hide_env_values = true,
        value_name = "URL",
        value_parser = connection_string,
        conflicts_with = "database_url_file"
    )]
    database_url: Option<ConnectionString>,
    /// A file holding the PostgreSQL URL, such as a key of a mounted Kubernetes Secret; read
    /// at start, surrounding whitespace ignored.
    #[arg(long, env = "STAGEHAND_DATABASE_URL_FILE", value_name = "FILE")]
    database_url_file: Option<PathBuf>,
}

/// The connection string as given: it may hold a password, so it never shows, and its memory
/// is wiped when dropped.
#[derive(Clone)]
pub struct ConnectionString(Zeroizing<String>);

impl std::fmt::Debug for ConnectionString {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ConnectionString(…)")
    }
}

/// Takes any text: parsing it here would let clap quote it, password and all, in its error.
fn connection_string(text: &str) -> Result<ConnectionString, std::convert::Infallible> {
    Ok(ConnectionString(Zeroizing::new(text.to_owned())))
}

impl DatabaseArgs {
    /// The PostgreSQL database asked for, if any.
    fn postgres(&self) -> anyhow::Result<Option<PostgresUrl>> {
        if let Some(text) = &self.database_url {
            return PostgresUrl::parse(&text.0)
                .map(Some)
                .context("--database-url (STAGEHAND_DATABASE_URL)");
        }
        let Some(file) = &self.database_url_file else {
            return Ok(None);
        };
        let text =
            Zeroizing::new(std::fs::read_to_string(file).with_context(|| {
                format!("cannot read the database URL file {}", file.display())
            })?);
        if text.trim().is_empty() {
            anyhow::bail!("the database URL file {} is empty", file.display());
        }
        PostgresUrl::parse(&text)
            .map(Some)
            .with_context(|| format!("the database URL file {}", file.display()))
    }

    /// Opens the store and learns the installation ID: from the state directory with SQLite,
    /// from the shared database with PostgreSQL.
    pub async fn open(&self, state_dir: &Path) -> anyhow::Result<(Arc<dyn Store>, InstallationId)> {
        match self.postgres()? {
            None => {
                let installation = installation::load_or_create(state_dir)?;
                let store = SqliteStore::open(state_dir).await?;
                tracing::info!(
                    database = %store.path().display(),
                    %installation,
                    "the store is an SQLite file"
                );
                Ok((Arc::new(store), installation))
            }
            Some(url) => {
                let store = PostgresStore::connect(&url).await?;
                let installation = shared_installation(&store, state_dir).await?;
                tracing::info!(
                    database = %url,
                    %installation,
                    "the store is a shared PostgreSQL database"
                );
                Ok((Arc::new(store), installation))
            }
        }
    }

    /// Only the installation ID, for the commands that act as the installation without the
    /// store (`sync`, `diff`).
    pub async fn installation(&self, state_dir: &Path) -> anyhow::Result<InstallationId> {
        match self.postgres()? {
            None => Ok(installation::load_or_create(state_dir)?),
            Some(url) => {
                let store = PostgresStore::connect(&url).await?;
                let installation = shared_installation(&store, state_dir).await;
                store.close().await?;
                installation
            }
        }
    }
}

/// The installation ID kept in a shared store. The first replica to ask proposes the ID of its
/// state directory if it has one (an installation that moves from SQLite keeps owning the
/// objects it applied), else a new one; every later one gets that.
async fn shared_installation(
    store: &PostgresStore,
    state_dir: &Path,
) -> anyhow::Result<InstallationId> {
    let local = installation::existing(state_dir)?;
    let proposal = match &local {
        Some(id) => id.clone(),
        None => installation::generate()?,
    };
    let stored = store.installation_id(&proposal.to_string()).await?;
    let id: InstallationId = stored.parse().map_err(|()| {
        anyhow::anyhow!(
            "the installation ID stored in {} is not 8 lowercase hex digits: {stored:?}",
            store.database()
        )
    })?;
    if local.as_ref().is_some_and(|local| *local != id) {
        tracing::warn!(
            state_dir = %state_dir.display(),
            database = %store.database(),
            shared = %id,
            "the state directory holds another installation ID than the shared store; the store's is used"
        );
    }
    Ok(id)
}
