//! Opening the cache of a remote and fetching into it with gix.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use gix::remote::Direction;

use super::{Credentials, RemoteUrl, Repository, TRACKING_PREFIX};

/// What cannot be opened or fetched.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot create the repository cache {}", path.display())]
    CreateCache {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open the repository cache {}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: Box<gix::Error>,
    },
    #[error("{url}: the remote refused the credentials (or needs some and none are configured)")]
    Authentication { url: RemoteUrl },
    #[error("{url}: credentials are only sent over https (or plain http to loopback)")]
    InsecureTransport { url: RemoteUrl },
    #[error("{url}: cannot fetch")]
    Fetch {
        url: RemoteUrl,
        #[source]
        source: Box<gix::Error>,
    },
}

/// What a fetch changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Remote branches whose tip changed (or appeared), by short name.
    pub updated: Vec<String>,
    /// Branches the remote no longer has, forgotten by the cache too.
    pub pruned: Vec<String>,
}

impl Repository {
    /// Opens the cache of `url` under `state_dir`, creating an empty bare repository the first
    /// time; nothing is fetched yet.
    pub fn open(state_dir: &Path, url: RemoteUrl, credentials: Credentials) -> Result<Self, Error> {
        let path = state_dir.join("git").join(cache_name(&url));
        if !path.join("HEAD").exists() {
            std::fs::create_dir_all(&path).map_err(|source| Error::CreateCache {
                path: path.clone(),
                source,
            })?;
            gix::init_bare(&path).map_err(|source| Error::Open {
                path: path.clone(),
                source: Box::new(source),
            })?;
        }
        // Isolated: the user's and system's git configuration (credential helpers, url
        // rewrites) must not change what the service fetches.
        let mut overrides = Vec::new();
        if let Some(command) = credentials.ssh_command() {
            overrides.push(format!("core.sshCommand={command}"));
        }
        let options = gix::open::Options::isolated().config_overrides(overrides);
        let repo = gix::open_opts(&path, options).map_err(|source| Error::Open {
            path: path.clone(),
            source: Box::new(source),
        })?;
        Ok(Self {
            inner: Arc::new(super::Inner {
                path,
                url,
                credentials,
                repo: repo.into_sync(),
                lock: Mutex::new(()),
            }),
        })
    }

    /// Fetches every branch of the remote into `refs/remotes/origin/*` of the cache. Fetches of
    /// one [`Repository`] run one at a time, because each takes the ref locks.
    pub fn fetch(&self) -> Result<Outcome, Error> {
        let _guard = self
            .inner
            .lock
            .lock()
            .expect("the ref lock is only poisoned if a fetch panicked");
        self.fetch_locked()
    }

    pub(crate) fn fetch_locked(&self) -> Result<Outcome, Error> {
        let url = &self.inner.url;
        let wrap = |source| Error::Fetch {
            url: url.clone(),
            source: Box::new(source),
        };
        if url.credentials_in_clear_text() && self.inner.credentials.http_account().is_some() {
            return Err(Error::InsecureTransport { url: url.clone() });
        }
        let repo = self.inner.repo.to_thread_local();
        let remote = repo
            .remote_at(url.as_str())
            .and_then(|r| {
                r.with_refspecs(
                    [format!("+refs/heads/*:{TRACKING_PREFIX}*").as_str()],
                    Direction::Fetch,
                )
            })
            .map_err(wrap)?;
        let refused = Arc::new(AtomicBool::new(false));
        let connection = remote
            .connect(Direction::Fetch)
            .map_err(wrap)?
            .with_credentials(credential_callback(
                self.inner.credentials.clone(),
                refused.clone(),
            ));
        let result = connection
            .prepare_fetch(gix::progress::Discard, Default::default())
            .and_then(|prepare| prepare.receive(gix::progress::Discard, &AtomicBool::new(false)));
        let outcome = match result {
            Ok(outcome) => outcome,
            Err(_) if refused.load(std::sync::atomic::Ordering::SeqCst) => {
                return Err(Error::Authentication { url: url.clone() });
            }
            Err(source) => return Err(wrap(source)),
        };
        let update_refs = match &outcome.status {
            gix::remote::fetch::Status::NoPackReceived { update_refs, .. }
            | gix::remote::fetch::Status::Change { update_refs, .. } => update_refs,
        };
        let updated = update_refs
            .edits
            .iter()
            .map(|edit| {
                let name = edit.name.as_bstr().to_string();
                name.strip_prefix(TRACKING_PREFIX)
                    .unwrap_or(&name)
                    .to_owned()
            })
            .collect();
        let pruned = prune(&repo, &outcome.ref_map).map_err(wrap)?;
        Ok(Outcome { updated, pruned })
    }
}

/// Deletes the tracking refs of branches the remote stopped advertising, so that a deleted
/// environment branch is reported missing instead of served stale.
fn prune(repo: &gix::Repository, map: &gix::remote::fetch::RefMap) -> gix::Result<Vec<String>> {
    use gix::refs::transaction::{Change, PreviousValue, RefEdit, RefLog};
    let keep: std::collections::HashSet<String> = map
        .mappings
        .iter()
        .filter_map(|m| m.local.as_ref().map(ToString::to_string))
        .collect();
    let mut stale = Vec::new();
    for reference in repo.references()?.prefixed(TRACKING_PREFIX)? {
        let reference = reference?;
        let name = reference.name().as_bstr().to_string();
        if !keep.contains(&name) {
            stale.push(reference.name().to_owned());
        }
    }
    let pruned = stale
        .iter()
        .map(|name| {
            let name = name.as_bstr().to_string();
            name.strip_prefix(TRACKING_PREFIX)
                .unwrap_or(&name)
                .to_owned()
        })
        .collect();
    if !stale.is_empty() {
        repo.edit_references(stale.into_iter().map(|name| RefEdit {
            change: Change::Delete {
                expected: PreviousValue::Any,
                log: RefLog::AndReference,
            },
            name,
            deref: false,
        }))?;
    }
    Ok(pruned)
}

/// Answers gix's credential requests from the configured credentials and records whether the
/// remote asked for credentials we do not have or rejected the ones we gave.
fn credential_callback(
    credentials: Credentials,
    refused: Arc<AtomicBool>,
) -> impl FnMut(
    gix::credentials::helper::Action,
) -> gix::Result<Option<gix::credentials::protocol::Outcome>> {
    use gix::credentials::helper::{Action, NextAction};
    use std::sync::atomic::Ordering;
    move |action| match action {
        Action::Get(context) => match credentials.http_account() {
            Some((username, password)) => Ok(Some(gix::credentials::protocol::Outcome {
                identity: gix::sec::identity::Account {
                    username: username.to_owned(),
                    password: password.expose().to_owned(),
                    oauth_refresh_token: None,
                },
                next: NextAction::from(context),
            })),
            None => {
                refused.store(true, Ordering::SeqCst);
                Ok(None)
            }
        },
        Action::Erase(_) => {
            refused.store(true, Ordering::SeqCst);
            Ok(None)
        }
        Action::Store(_) => Ok(None),
    }
}

/// A readable, collision-free directory name for the cache of `url`.
fn cache_name(url: &RemoteUrl) -> String {
    let redacted = url.redacted();
    let base: String = redacted
        .trim_end_matches('/')
        .trim_end_matches(".git")
        .rsplit(['/', ':'])
        .next()
        .unwrap_or("repo")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    // FNV-1a over the full URL (with credentials) keeps distinct remotes apart.
    let hash = url
        .as_str()
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
    format!("{base}-{hash:016x}.git")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_names_are_readable_and_distinct_per_url() {
        let a = cache_name(&RemoteUrl::new("https://example.test/team/shop.git"));
        let b = cache_name(&RemoteUrl::new("https://example.test/other/shop.git"));
        assert!(a.starts_with("shop-") && a.ends_with(".git"), "{a}");
        assert_ne!(a, b);
    }
}
