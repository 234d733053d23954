//! Opening the cache of a remote and fetching into it with gix. Every fetch is bounded by the
//! repository's [`Timeouts`]; a cache that cannot be opened or whose branches point at missing
//! or unreadable objects is deleted and fetched again from scratch.

use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, RwLock};

use gix::remote::Direction;

use super::{Credentials, RemoteUrl, Repository, TRACKING_PREFIX, Timeouts};

/// The transport gix fetches through, whichever way it was connected.
type BoxedTransport = Box<dyn gix_transport::client::blocking_io::Transport + Send>;

/// What cannot be opened or fetched.
#[derive(Debug, thiserror::Error)]
// Each variant is described by its message, and its fields by the names the message uses.
#[allow(missing_docs)]
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
    #[error(
        "{url}: ssh needs a key and a known_hosts file pinning the server's host key \
         (--git-ssh-key, --git-ssh-known-hosts); ssh's own configuration is not used"
    )]
    UnpinnedHostKey { url: RemoteUrl },
    #[error("{url}: timed out (connect timeout {}s, idle timeout {}s)", timeouts.connect.as_secs(), timeouts.idle.as_secs())]
    Timeout { url: RemoteUrl, timeouts: Timeouts },
    #[error("{url}: cannot connect")]
    Connect {
        url: RemoteUrl,
        #[source]
        source: std::io::Error,
    },
    #[error("{url}: cannot fetch")]
    Fetch {
        url: RemoteUrl,
        #[source]
        source: Box<gix::Error>,
    },
    /// The fetch task panicked; the next fetch starts afresh.
    #[error("{url}: the fetch stopped unexpectedly: {message}")]
    Panicked { url: RemoteUrl, message: String },
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
    /// time (or in place of one that cannot be opened); nothing is fetched yet. Fetches wait at
    /// most [`Timeouts::default`]; see [`Repository::with_timeouts`].
    pub fn open(state_dir: &Path, url: RemoteUrl, credentials: Credentials) -> Result<Self, Error> {
        let caches = state_dir.join("git");
        let path = caches.join(cache_name(&url));
        // gix writes with the umask's modes; a private directory keeps its files private.
        crate::state_dir::private_dir(&caches).map_err(|source| Error::CreateCache {
            path: caches.clone(),
            source,
        })?;
        let repo = if path.join("HEAD").exists() {
            open_cache(&path).or_else(|_| recreate_cache(&path))?
        } else {
            recreate_cache(&path)?
        };
        Ok(Self {
            inner: Arc::new(super::Inner {
                path,
                url,
                credentials,
                timeouts: Timeouts::default(),
                repo: RwLock::new(repo),
                lock: Mutex::new(()),
            }),
        })
    }

    /// The same cache with other network timeouts; call it right after [`Repository::open`],
    /// since the result no longer shares its fetch lock with `self`.
    #[must_use]
    pub fn with_timeouts(self, timeouts: Timeouts) -> Self {
        Self {
            inner: Arc::new(super::Inner {
                path: self.inner.path.clone(),
                url: self.inner.url.clone(),
                credentials: self.inner.credentials.clone(),
                timeouts,
                repo: RwLock::new(self.thread_safe()),
                lock: Mutex::new(()),
            }),
        }
    }

    /// Fetches every branch of the remote into `refs/remotes/origin/*` of the cache. Fetches of
    /// one [`Repository`] run one at a time, because each takes the ref locks.
    pub fn fetch(&self) -> Result<Outcome, Error> {
        let _guard = self.lock_refs();
        self.fetch_locked()
    }

    pub(crate) fn fetch_locked(&self) -> Result<Outcome, Error> {
        let url = &self.inner.url;
        let credentials = &self.inner.credentials;
        let timeouts = self.inner.timeouts;
        let wrap = |source| Error::Fetch {
            url: url.clone(),
            source: Box::new(source),
        };
        if url.credentials_in_clear_text() && credentials.http_account().is_some() {
            return Err(Error::InsecureTransport { url: url.clone() });
        }
        if url.is_ssh() && credentials.known_hosts().is_none() {
            return Err(Error::UnpinnedHostKey { url: url.clone() });
        }
        let repo = self.sound_cache()?;
        let remote = repo
            .remote_at(url.as_str())
            .and_then(|r| {
                r.with_refspecs(
                    [format!("+refs/heads/*:{TRACKING_PREFIX}*").as_str()],
                    Direction::Fetch,
                )
            })
            .map_err(wrap)?;
        let connection = if is_git_daemon(url) {
            let transport: BoxedTransport = Box::new(connect_git_daemon(url, &timeouts)?);
            remote.to_connection_with_transport(transport)
        } else {
            remote.connect(Direction::Fetch).map_err(wrap)?
        };
        let refused = Arc::new(AtomicBool::new(false));
        let mut connection =
            connection.with_credentials(credential_callback(credentials.clone(), refused.clone()));
        if let Some(options) = http_options(&repo, url, &timeouts).map_err(wrap)? {
            connection.set_transport_options(options);
        }
        let result = connection
            .prepare_fetch(gix::progress::Discard, Default::default())
            .and_then(|prepare| prepare.receive(gix::progress::Discard, &AtomicBool::new(false)));
        let outcome = match result {
            Ok(outcome) => outcome,
            Err(_) if refused.load(std::sync::atomic::Ordering::SeqCst) => {
                return Err(Error::Authentication { url: url.clone() });
            }
            Err(source) if is_timeout(&source) => {
                return Err(Error::Timeout {
                    url: url.clone(),
                    timeouts,
                });
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

impl Repository {
    /// The cache opened for this fetch, with the ssh command of these credentials and
    /// timeouts. A cache that cannot be opened, or whose branches point at missing or
    /// unreadable objects, is replaced by an empty one first (the fetch then brings everything
    /// again).
    fn sound_cache(&self) -> Result<gix::Repository, Error> {
        let path = &self.inner.path;
        let sound = open_cache(path).is_ok_and(|repo| cache_is_sound(&repo.to_thread_local()));
        if !sound {
            tracing::warn!(cache = %path.display(), url = %self.inner.url, "the repository cache is damaged; fetching it again from scratch");
            let fresh = recreate_cache(path)?;
            *self
                .inner
                .repo
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = fresh;
        }
        let overrides: Vec<String> = self
            .inner
            .credentials
            .ssh_command(&self.inner.timeouts)
            .into_iter()
            .map(|command| format!("core.sshCommand={command}"))
            .collect();
        gix::open_opts(
            path,
            gix::open::Options::isolated().config_overrides(overrides),
        )
        .map_err(|source| Error::Open {
            path: path.clone(),
            source: Box::new(source),
        })
    }
}

/// Every tracking branch resolves to a readable commit and tree.
fn cache_is_sound(repo: &gix::Repository) -> bool {
    let Ok(platform) = repo.references() else {
        return false;
    };
    let Ok(branches) = platform.prefixed(TRACKING_PREFIX) else {
        return false;
    };
    branches.into_iter().all(|reference| {
        reference
            .ok()
            .and_then(|mut r| r.peel_to_id().ok().map(gix::Id::detach))
            .and_then(|id| repo.find_commit(id).ok())
            .and_then(|commit| commit.tree_id().ok().map(gix::Id::detach))
            .is_some_and(|tree| repo.find_tree(tree).is_ok())
    })
}

/// The cache as it is on disk, isolated from the user's and system's git configuration
/// (credential helpers, url rewrites must not change what the service fetches).
fn open_cache(path: &Path) -> Result<gix::ThreadSafeRepository, Error> {
    gix::open_opts(path, gix::open::Options::isolated())
        .map(gix::Repository::into_sync)
        .map_err(|source| Error::Open {
            path: path.to_owned(),
            source: Box::new(source),
        })
}

/// An empty bare repository at `path`, replacing whatever was there. Only called on the cache
/// directory itself, which holds nothing but fetched objects.
fn recreate_cache(path: &Path) -> Result<gix::ThreadSafeRepository, Error> {
    let create = |source| Error::CreateCache {
        path: path.to_owned(),
        source,
    };
    if path.exists() {
        std::fs::remove_dir_all(path).map_err(create)?;
    }
    std::fs::create_dir_all(path).map_err(create)?;
    gix::init_bare(path).map_err(|source| Error::Open {
        path: path.to_owned(),
        source: Box::new(source),
    })?;
    open_cache(path)
}

fn is_git_daemon(url: &RemoteUrl) -> bool {
    url.as_str()
        .get(..6)
        .is_some_and(|scheme| scheme.eq_ignore_ascii_case("git://"))
}

/// A `git://` connection with the connect and idle timeouts (gix's own waits 5 s to connect
/// and forever for an answer).
fn connect_git_daemon(
    url: &RemoteUrl,
    timeouts: &Timeouts,
) -> Result<gix_transport::client::git::blocking_io::Connection<TcpStream, TcpStream>, Error> {
    let connect = |source| Error::Connect {
        url: url.clone(),
        source,
    };
    let parsed = gix::url::parse(gix::bstr::BStr::new(url.as_str())).map_err(|e| {
        connect(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            e.to_string(),
        ))
    })?;
    let host = parsed.host().unwrap_or("localhost").to_owned();
    let address = (host.as_str(), parsed.port.unwrap_or(9418))
        .to_socket_addrs()
        .map_err(connect)?
        .next()
        .ok_or_else(|| {
            connect(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "the host name resolves to no address",
            ))
        })?;
    let stream = TcpStream::connect_timeout(&address, timeouts.connect).map_err(|e| {
        if e.kind() == std::io::ErrorKind::TimedOut {
            Error::Timeout {
                url: url.clone(),
                timeouts: *timeouts,
            }
        } else {
            connect(e)
        }
    })?;
    stream
        .set_read_timeout(Some(timeouts.idle))
        .and_then(|()| stream.set_write_timeout(Some(timeouts.idle)))
        .map_err(connect)?;
    let reader = stream.try_clone().map_err(connect)?;
    Ok(gix_transport::client::git::blocking_io::Connection::new(
        reader,
        stream,
        gix_transport::Protocol::V2,
        parsed.path.clone(),
        Some((host, parsed.port)),
        gix_transport::client::git::ConnectMode::Daemon,
        false,
    ))
}

/// For http(s): the options git's configuration gives, plus connect and idle timeouts on the
/// reqwest client (whose idle timeout bounds each wait for the next bytes).
fn http_options(
    repo: &gix::Repository,
    url: &RemoteUrl,
    timeouts: &Timeouts,
) -> gix::Result<Option<Box<dyn std::any::Any>>> {
    use gix_transport::client::blocking_io::http;
    let Some(mut options) = repo.transport_options(url.as_str(), None)? else {
        return Ok(None);
    };
    let Some(http_options) = options.downcast_mut::<http::Options>() else {
        return Ok(Some(options));
    };
    let Timeouts { connect, idle } = *timeouts;
    http_options.connect_timeout = Some(connect);
    let backend = http::reqwest::Options {
        configure_client: Some(Box::new(move |builder| {
            Ok(builder.connect_timeout(connect).timeout(idle))
        })),
        configure_request: None,
    };
    http_options.backend = Some(Arc::new(Mutex::new(backend)));
    Ok(Some(options))
}

/// Whether a failed fetch ran out of time rather than failed for another reason: an I/O error
/// that timed out (or a read that would block, as a socket read timeout reports it) anywhere
/// in the chain, or a transport that says so in words (reqwest, ssh).
fn is_timeout(error: &gix::Error) -> bool {
    error.iter_errors().any(|e| {
        let io = e.downcast_ref::<std::io::Error>().is_some_and(|io| {
            matches!(
                io.kind(),
                std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
            )
        });
        let text = e.to_string().to_ascii_lowercase();
        io || text.contains("timed out") || text.contains("timeout")
    })
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
    fn a_ref_lock_poisoned_by_a_panicked_fetch_does_not_stop_later_fetches() {
        let dir = tempfile::tempdir().expect("temp dir");
        let remote = dir.path().join("remote.git");
        gix::init_bare(&remote).expect("an empty remote");
        let repo = Repository::open(
            &dir.path().join("state"),
            RemoteUrl::new(remote.display().to_string()),
            Credentials::None,
        )
        .expect("the cache opens");
        std::thread::scope(|scope| {
            let panicked = scope.spawn(|| {
                let _guard = repo.lock_refs();
                panic!("a fetch panicked while holding the ref lock");
            });
            assert!(panicked.join().is_err());
        });
        assert!(repo.inner.lock.is_poisoned());
        repo.fetch().expect("the next fetch runs");
    }

    #[test]
    fn cache_names_are_readable_and_distinct_per_url() {
        let a = cache_name(&RemoteUrl::new("https://example.test/team/shop.git"));
        let b = cache_name(&RemoteUrl::new("https://example.test/other/shop.git"));
        assert!(a.starts_with("shop-") && a.ends_with(".git"), "{a}");
        assert_ne!(a, b);
    }
}
