//! Git, the single source of truth: the revision each environment should run, the files of a
//! revision without a checkout, and promotion commits pushed back safely.
//!
//! API overview in progress.

pub mod fetch;
pub mod history;
pub mod poll;
pub mod promote;
pub mod push;
mod remote;
pub mod revision;
mod tree;
pub mod yaml_edit;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

pub use gix::ObjectId;
pub use remote::{Credentials, RemoteUrl, Secret};
pub use revision::{Location, Revision};
pub use tree::TreeFs;

/// Where the cache keeps the remote's branches, like `git clone` does.
const TRACKING_PREFIX: &str = "refs/remotes/origin/";

/// The local cache of one remote repository: a bare repository under the state directory that
/// only fetches and pushes change. Cheap to clone; clones share the cache.
#[derive(Clone)]
pub struct Repository {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    url: RemoteUrl,
    credentials: Credentials,
    repo: gix::ThreadSafeRepository,
    /// Held while refs of the cache change (fetch, or recording a push), since gix fails rather
    /// than waits on a ref lock.
    lock: Mutex<()>,
}

impl std::fmt::Debug for Repository {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Repository")
            .field("url", &self.inner.url)
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

impl Repository {
    pub fn url(&self) -> &RemoteUrl {
        &self.inner.url
    }

    /// The bare repository of the cache.
    pub fn path(&self) -> &std::path::Path {
        &self.inner.path
    }
}
