//! The identity of one Stagehand installation, part of every owner label it writes.
//!
//! Owners are named after the pipeline and the environment, and two teams can well both run a
//! pipeline `shop` with an environment `dev` against one cluster. Without something that tells
//! their installations apart, each would take the other's objects for its own and prune them.
//! The ID is generated once, at random, and kept in the state directory, so that the service
//! and `stagehand sync` run over the same state directory act as one installation. Replicas
//! that share a PostgreSQL store keep it in the store instead (see
//! [`crate::store::PostgresStore::installation_id`]), proposing the one from their state
//! directory if it has one, so that an installation moving from SQLite to PostgreSQL keeps
//! owning its objects.

use std::fmt;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

/// The file in the state directory that holds the ID.
pub const FILE_NAME: &str = "installation-id";
/// Hex digits of an ID: 32 random bits tell a handful of installations on one cluster apart
/// and leave most of the 63 characters of a label value to the pipeline and environment.
const LEN: usize = 8;

/// An installation ID: eight lowercase hex digits, fit for a label value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstallationId(String);

impl fmt::Display for InstallationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for InstallationId {
    type Err = ();

    fn from_str(text: &str) -> Result<Self, ()> {
        let valid = text.len() == LEN
            && text
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        valid.then(|| Self(text.to_owned())).ok_or(())
    }
}

/// The installation ID could not be read or written.
#[derive(Debug, thiserror::Error)]
// Each variant is described by its message, and its fields by the names the message uses.
#[allow(missing_docs)]
pub enum Error {
    #[error("installation ID {}: {what}", path.display())]
    Io {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("installation ID {}: not {LEN} lowercase hex digits", path.display())]
    Invalid { path: PathBuf },
    #[error("installation ID: no random numbers from the system")]
    Random,
}

/// The ID kept in `state_dir`, generated and stored on first use. Two processes that start
/// at once agree on one ID: the file appears whole or not at all (written aside, then
/// hard-linked, which never replaces an existing file).
pub fn load_or_create(state_dir: &Path) -> Result<InstallationId, Error> {
    let path = state_dir.join(FILE_NAME);
    let io = |what| {
        let path = path.clone();
        move |source| Error::Io { path, what, source }
    };
    if let Some(id) = read(&path)? {
        return Ok(id);
    }
    crate::state_dir::private_dir(state_dir).map_err(io("create the state directory"))?;
    let id = generate()?.0;
    let mut aside = tempfile_in(state_dir).map_err(io("write"))?;
    aside
        .1
        .write_all(format!("{id}\n").as_bytes())
        .and_then(|()| aside.1.sync_all())
        .map_err(io("write"))?;
    let linked = std::fs::hard_link(&aside.0, &path);
    // The aside file has served its purpose either way.
    let _ = std::fs::remove_file(&aside.0);
    match linked {
        Ok(()) => Ok(InstallationId(id)),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            read(&path)?.ok_or(Error::Invalid { path })
        }
        Err(e) => Err(io("store")(e)),
    }
}

/// The ID kept in `state_dir`, if it holds one; nothing is created.
pub fn existing(state_dir: &Path) -> Result<Option<InstallationId>, Error> {
    read(&state_dir.join(FILE_NAME))
}

/// A new ID, at random.
pub fn generate() -> Result<InstallationId, Error> {
    let mut bytes = [0u8; LEN / 2];
    rustls::crypto::ring::default_provider()
        .secure_random
        .fill(&mut bytes)
        .map_err(|_| Error::Random)?;
    Ok(InstallationId(hex::encode(bytes)))
}

fn read(path: &Path) -> Result<Option<InstallationId>, Error> {
    match std::fs::read_to_string(path) {
        Ok(text) => text.trim().parse().map(Some).map_err(|()| Error::Invalid {
            path: path.to_owned(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(Error::Io {
            path: path.to_owned(),
            what: "read",
            source,
        }),
    }
}

/// A new file in `dir` with a name no other process uses.
fn tempfile_in(dir: &Path) -> std::io::Result<(PathBuf, std::fs::File)> {
    let path = dir.join(format!(".{FILE_NAME}.{}", std::process::id()));
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(crate::state_dir::FILE_MODE)
        .open(&path)?;
    Ok((path, file))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_is_made_once_and_read_back_after() {
        let dir =
            std::env::temp_dir().join(format!("stagehand-installation-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let first = load_or_create(&dir).expect("made");
        assert_eq!(first.to_string().len(), LEN);
        assert_eq!(load_or_create(&dir).expect("read"), first);
        std::fs::write(dir.join(FILE_NAME), "not an id\n").expect("write");
        assert!(matches!(load_or_create(&dir), Err(Error::Invalid { .. })));
        std::fs::remove_dir_all(&dir).expect("cleaned up");
    }
}
