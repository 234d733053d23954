//! The age identities a running service decrypts with, taken from a source that can change
//! under it (a Kubernetes Secret read through the API, a mounted Secret directory) and
//! replaced as a whole when it does, without a restart.
//!
//! A source holds entries; those whose name ends in `.agekey` hold age identities (Flux's
//! convention). `<environment>.agekey` holds that environment's own identities; every other
//! `*.agekey` entry is global. Which entries are whose is decided when an environment asks
//! ([`Keyring::select`]), against the pipeline's environments at that moment, so a reloaded
//! pipeline that adds an environment finds its entry.
//!
//! Key material stays in memory: raw entries are [`Zeroizing`] buffers, dropped (and wiped)
//! once parsed; the parsed keys zeroize when the last set holding them is dropped.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use zeroize::Zeroizing;

use super::error::Error;
use super::keys::Identities;

/// What ends the name of an entry holding age identities.
pub const KEY_SUFFIX: &str = ".agekey";

/// The entries of a key source as read once, and a version that changes when they do.
pub struct Snapshot {
    /// Changes whenever the entries may have (a Secret's `resourceVersion`, the target of a
    /// mounted directory's `..data` link, or the files' sizes and times).
    pub version: String,
    /// Entry name to its bytes.
    pub entries: BTreeMap<String, Zeroizing<Vec<u8>>>,
}

/// Where a [`Keyring`] reloads its entries from.
pub trait KeySource: Send + Sync + 'static {
    /// Names the source in messages: `Secret stagehand/age-keys`, `directory /etc/keys`.
    fn describe(&self) -> String;

    /// The entries, or `None` when the version is still `last`.
    fn read(
        &self,
        last: Option<&str>,
    ) -> impl Future<Output = Result<Option<Snapshot>, Error>> + Send;
}

/// The identities an environment may decrypt with, before the pipeline's `decryption:` is
/// applied (see `reconcile::source`).
pub struct Selected {
    /// The environment's own identities (`<environment>.agekey`), if the source holds some.
    pub own: Option<Arc<Identities>>,
    /// The global identities: every other entry, or the process's identities.
    pub global: Arc<Identities>,
}

/// A set of age identities by entry, replaced as a whole when its source changes.
pub struct Keyring {
    origin: String,
    per_environment: bool,
    state: RwLock<State>,
}

#[derive(Default)]
struct State {
    /// Entry names without [`KEY_SUFFIX`], to their identities.
    entries: BTreeMap<String, Arc<Identities>>,
    version: Option<String>,
    /// Why the last reload failed, while the previous entries stay in use.
    problem: Option<String>,
}

impl Keyring {
    /// A fixed set of global identities (those sops would find): there are no per-environment
    /// entries and nothing reloads.
    pub fn fixed(identities: Identities) -> Self {
        let entries = BTreeMap::from([(String::new(), Arc::new(identities))]);
        Self {
            origin: "the process's age identities".into(),
            per_environment: false,
            state: RwLock::new(State {
                entries,
                ..State::default()
            }),
        }
    }

    /// The identities of `source` as it is now; fails when it cannot be read or one of its
    /// entries is not valid.
    pub async fn load(source: &impl KeySource) -> Result<Self, Error> {
        let ring = Self {
            origin: source.describe(),
            per_environment: true,
            state: RwLock::default(),
        };
        let snapshot = source.read(None).await?.ok_or_else(|| Error::KeySource {
            source_name: ring.origin.clone(),
            problem: "unchanged on its first read".into(),
        })?;
        ring.replace(snapshot)?;
        Ok(ring)
    }

    /// Names the source in messages.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The identities `environment` may use, `environments` being every environment of the
    /// pipeline: an entry named after one of them is that environment's alone.
    pub fn select<'a>(
        &self,
        environment: &str,
        environments: impl IntoIterator<Item = &'a str>,
    ) -> Selected {
        let state = self.read();
        if !self.per_environment {
            let global = state.entries.values().next().cloned().unwrap_or_default();
            return Selected { own: None, global };
        }
        let environments: std::collections::BTreeSet<&str> = environments.into_iter().collect();
        let own = state.entries.get(environment).cloned();
        let global = Identities::merged(
            state
                .entries
                .iter()
                .filter(|(stem, _)| !environments.contains(stem.as_str()))
                .map(|(_, ids)| ids.as_ref()),
        );
        Selected {
            own,
            global: Arc::new(global),
        }
    }

    /// Why the last reload failed (naming the source and entry, never key material), while
    /// the identities loaded before it stay in use; `None` once a reload succeeds.
    pub fn problem(&self) -> Option<String> {
        self.read().problem.clone()
    }

    /// The entry names loaded (with their suffix), for logs.
    pub fn entry_names(&self) -> Vec<String> {
        self.read()
            .entries
            .keys()
            .map(|stem| format!("{stem}{KEY_SUFFIX}"))
            .collect()
    }

    /// Parses every key entry of `snapshot` and, only if all are valid, puts them in place of
    /// the current ones. Each raw entry is wiped as soon as it is parsed.
    fn replace(&self, snapshot: Snapshot) -> Result<(), Error> {
        let mut entries = BTreeMap::new();
        for (name, bytes) in snapshot.entries {
            let Some(stem) = key_entry(&name) else {
                continue;
            };
            let source = format!("{} entry {name}", self.origin);
            let text = std::str::from_utf8(&bytes).map_err(|_| Error::KeySource {
                source_name: source.clone(),
                problem: "not UTF-8 text".into(),
            })?;
            let ids = Identities::from_key_text(&source, text)?;
            entries.insert(stem.to_owned(), Arc::new(ids));
        }
        let mut state = self.write();
        // The old sets drop here; their keys are wiped once no pass in flight holds them.
        state.entries = entries;
        state.version = Some(snapshot.version);
        state.problem = None;
        Ok(())
    }

    /// Reads `source` every `every` and takes its entries when they changed. A source that
    /// cannot be read, or holds an entry that is not valid, leaves the identities as they
    /// were and sets [`Keyring::problem`] until a later read succeeds.
    pub fn watch(self: &Arc<Self>, source: impl KeySource, every: Duration) {
        let ring = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(ring) = ring.upgrade() else {
                    return;
                };
                let last = ring.read().version.clone();
                let outcome = match source.read(last.as_deref()).await {
                    Ok(None) => continue,
                    Ok(Some(snapshot)) => ring.replace(snapshot),
                    Err(e) => Err(e),
                };
                match outcome {
                    Ok(()) => tracing::info!(
                        source = %ring.origin,
                        entries = ?ring.entry_names(),
                        "reloaded the age identities"
                    ),
                    Err(e) => {
                        let problem = format!("{e} (the identities read before stay in use)");
                        let mut state = ring.write();
                        if state.problem.as_deref() != Some(problem.as_str()) {
                            tracing::error!(source = %ring.origin, error = %problem, "cannot reload the age identities");
                        }
                        state.problem = Some(problem);
                    }
                }
            }
        });
    }
}

/// The stem of an entry holding age identities: `prod` for `prod.agekey`; `None` for other
/// entries and for dotfiles (a mounted Secret's `..data` and its kind).
fn key_entry(name: &str) -> Option<&str> {
    if name.starts_with('.') {
        return None;
    }
    name.strip_suffix(KEY_SUFFIX)
        .filter(|stem| !stem.is_empty())
}

/// A directory holding a Secret's entries as files, as the kubelet mounts one: each entry
/// `name -> ..data/name`, `..data -> ..<timestamp>`, the link `..data` swapped atomically on
/// a change. Files starting with a dot are not entries. A plain directory of files works too.
pub struct KeyDirectory {
    dir: PathBuf,
}

/// The link a kubelet swaps to publish a new version of a mounted Secret.
const DATA_LINK: &str = "..data";

impl KeyDirectory {
    /// The key entries of `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    fn error(&self, problem: String) -> Error {
        Error::KeySource {
            source_name: self.describe(),
            problem,
        }
    }

    /// Reads the entries of a kubelet-mounted directory from the version `..data` points to,
    /// so that a swap in the middle cannot mix two versions; `None` when `..data` moved while
    /// reading (the next read takes the new version).
    fn read_mounted(&self, target: PathBuf) -> Result<Option<Snapshot>, Error> {
        let version = self.dir.join(&target);
        let Ok(entries) = read_files(&version) else {
            return Ok(None);
        };
        let now = std::fs::read_link(self.dir.join(DATA_LINK)).ok();
        if now.as_ref() != Some(&target) {
            return Ok(None);
        }
        Ok(Some(Snapshot {
            version: format!("{DATA_LINK} -> {}", target.display()),
            entries,
        }))
    }

    /// The sizes and modification times of a plain directory's files, as its version.
    fn plain_version(&self) -> Result<String, Error> {
        let mut version = String::new();
        let listing =
            std::fs::read_dir(&self.dir).map_err(|e| self.error(format!("cannot list it: {e}")))?;
        let mut names = Vec::new();
        for entry in listing {
            let entry = entry.map_err(|e| self.error(format!("cannot list it: {e}")))?;
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
        names.sort();
        for name in names.iter().filter(|n| !n.starts_with('.')) {
            let Ok(meta) = std::fs::metadata(self.dir.join(name)) else {
                continue;
            };
            let modified = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .unwrap_or_default();
            version.push_str(&format!("{name}:{}:{};", meta.len(), modified.as_nanos()));
        }
        Ok(version)
    }
}

/// The regular files of `dir` (following links) not starting with a dot, read into buffers
/// that are wiped when dropped.
fn read_files(dir: &Path) -> std::io::Result<BTreeMap<String, Zeroizing<Vec<u8>>>> {
    let mut entries = BTreeMap::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || !std::fs::metadata(entry.path())?.is_file() {
            continue;
        }
        let bytes = Zeroizing::new(std::fs::read(entry.path())?);
        entries.insert(name, bytes);
    }
    Ok(entries)
}

impl KeySource for KeyDirectory {
    fn describe(&self) -> String {
        format!("directory {}", self.dir.display())
    }

    async fn read(&self, last: Option<&str>) -> Result<Option<Snapshot>, Error> {
        match std::fs::read_link(self.dir.join(DATA_LINK)) {
            Ok(target) => {
                if last == Some(format!("{DATA_LINK} -> {}", target.display()).as_str()) {
                    return Ok(None);
                }
                self.read_mounted(target)
            }
            Err(_) => {
                let version = self.plain_version()?;
                if last == Some(version.as_str()) {
                    return Ok(None);
                }
                let entries = read_files(&self.dir)
                    .map_err(|e| self.error(format!("cannot read it: {e}")))?;
                Ok(Some(Snapshot { version, entries }))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use age::secrecy::ExposeSecret as _;

    use super::*;

    fn key() -> (String, String) {
        let identity = age::x25519::Identity::generate();
        (
            identity.to_string().expose_secret().to_owned(),
            identity.to_public().to_string(),
        )
    }

    fn snapshot(entries: &[(&str, &str)]) -> Snapshot {
        Snapshot {
            version: "1".into(),
            entries: entries
                .iter()
                .map(|(n, t)| ((*n).to_owned(), Zeroizing::new(t.as_bytes().to_vec())))
                .collect(),
        }
    }

    fn ring() -> Keyring {
        Keyring {
            origin: "Secret stagehand/age".into(),
            per_environment: true,
            state: RwLock::default(),
        }
    }

    #[test]
    fn an_entry_named_after_an_environment_is_its_own_and_the_others_are_global() {
        let ((dev, dev_public), (shared, shared_public)) = (key(), key());
        let ring = ring();
        ring.replace(snapshot(&[
            ("dev.agekey", &dev),
            ("age.agekey", &shared),
            ("README", "not a key"),
            ("..data", "ignored"),
        ]))
        .expect("valid entries");
        let selected = ring.select("dev", ["dev", "prod"]);
        assert_eq!(
            selected.own.expect("dev has its own").recipients(),
            [dev_public]
        );
        assert_eq!(
            selected.global.recipients(),
            std::slice::from_ref(&shared_public)
        );
        let prod = ring.select("prod", ["dev", "prod"]);
        assert!(prod.own.is_none());
        assert_eq!(prod.global.recipients(), [shared_public]);
    }

    #[test]
    fn a_bad_entry_names_the_source_and_entry_and_keeps_the_keys_loaded_before() {
        let (good, public) = key();
        let ring = ring();
        ring.replace(snapshot(&[("age.agekey", &good)]))
            .expect("valid");
        let sentinel = "AGE-SECRET-KEY-1SENTINELSENTINEL";
        let error = ring
            .replace(snapshot(&[
                ("age.agekey", &good),
                ("prod.agekey", &format!("# prod\n{sentinel}\n")),
            ]))
            .expect_err("a damaged key is refused");
        let text = format!("{error} {error:?}");
        assert!(
            text.contains("Secret stagehand/age entry prod.agekey") && text.contains("line 2"),
            "{text}"
        );
        assert!(!text.contains("SENTINEL"), "{text}");
        assert_eq!(ring.select("prod", ["prod"]).global.recipients(), [public]);
        assert!(ring.select("prod", ["prod"]).own.is_none());
    }

    #[tokio::test]
    async fn a_mounted_directory_is_read_from_the_version_its_data_link_points_to() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (first, first_public) = key();
        let (second, second_public) = key();
        let publish = |version: &str, text: &str| {
            let target = dir.path().join(version);
            std::fs::create_dir(&target).expect("mkdir");
            std::fs::write(target.join("age.agekey"), text).expect("write");
            let tmp = dir.path().join("..data_tmp");
            std::os::unix::fs::symlink(version, &tmp).expect("symlink");
            std::fs::rename(&tmp, dir.path().join(DATA_LINK)).expect("swap");
        };
        publish("..v1", &first);
        std::os::unix::fs::symlink("..data/age.agekey", dir.path().join("age.agekey"))
            .expect("symlink");
        let source = KeyDirectory::new(dir.path());
        let ring = Keyring::load(&source).await.expect("loads");
        assert_eq!(
            ring.select("dev", ["dev"]).global.recipients(),
            [first_public]
        );
        let version = ring.read().version.clone();
        assert!(
            source
                .read(version.as_deref())
                .await
                .expect("reads")
                .is_none()
        );
        publish("..v2", &second);
        let snapshot = source
            .read(version.as_deref())
            .await
            .expect("reads")
            .expect("a new version");
        ring.replace(snapshot).expect("valid");
        assert_eq!(
            ring.select("dev", ["dev"]).global.recipients(),
            [second_public]
        );
    }
}
