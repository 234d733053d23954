//! Git, the single source of truth: the revision each environment should run, the files of a
//! revision without a checkout, and promotion commits pushed back safely.
//!
//! # API
//!
//! Everything hangs off [`Repository`], the cache of one remote: a bare repository under
//! `<state dir>/git/` that only fetches (gix) and recorded pushes change. Its methods block;
//! async callers use `spawn_blocking` (it is `Clone` and cheap to move) or the [`poll::Poller`].
//!
//! - [`Repository::open`]`(state_dir, `[`RemoteUrl`]`, `[`Credentials`]`)`: URLs `file://`,
//!   plain paths, `http(s)://`, `ssh://`, scp-like, `git://`. Credentials: a token or basic auth
//!   (sent only over https), or an SSH key file with the known_hosts file that pins the host key
//!   (ssh URLs are refused without one). Secrets never appear in `Debug`, errors, logs or a
//!   command line. [`Repository::with_timeouts`] sets the connect and idle [`Timeouts`].
//! - [`Repository::fetch`] → [`fetch::Outcome`] | [`fetch::Error`] (`Authentication`,
//!   `InsecureTransport`, `UnpinnedHostKey`, `Timeout`, `Fetch` naming the URL, ...). Fetches of
//!   one cache run one at a time; a cache whose branches point at missing or unreadable objects,
//!   or that cannot be opened, is deleted and fetched again from scratch.
//! - [`Repository::poller`]`(interval)` → [`poll::Poller`]: fetches now, every `interval` and on
//!   [`poll::Poller::fetch_now`] (for the API and webhooks); concurrent requests coalesce into
//!   one fetch that started after they asked. [`poll::Poller::subscribe`] sees every fetch.
//! - [`Repository::revision`]`(pipeline, env)` → [`Revision`] `{ location: `[`Location`]`
//!   { branch, path }, commit, tree }`: the environment's branch tip and the tree id of its
//!   directory. [`Repository::try_branch_tip`] / [`Repository::branch_tip`] for a branch.
//!   Errors: [`revision::Error`] (`UnknownEnvironment`, `MissingBranch`, `MissingPath`, ...).
//! - [`Repository::tree`]`(commit)` → [`TreeFs`], the commit's whole tree as a
//!   [`crate::render::fs::FileSystem`]: objects are read on demand from the object database,
//!   nothing is checked out; symlinks are followed inside the tree and refused outside it.
//! - [`Repository::promote`]`(pipeline, `[`promote::PromotionCommit`]`, `[`promote::Options`]`)` →
//!   [`promote::Outcome`] `Pushed { commit, parent, attempts } | AlreadyDone { commit } |
//!   NoChange { commit }`, or [`promote::Error`] (`Diverged` naming the commits,
//!   `MergeConflict`, `MissingFile`, `Edit` naming file and field, `Refused` with
//!   [`write::Refused`] `Declined | Contended`, `Push`, ...).
//!   A [`promote::Change`] is `Promote { source, commit }` or `Rollback { commit }`. The commit
//!   is built in the object database with trailers `Stagehand-Promotion`, `Promoted-From` (or
//!   `Rolled-Back-To`), `Requested-By` and one `Approved-By` per approver, then pushed with the
//!   fetched tip as lease; on rejection it is redone on the new tip (bounded). A promotion whose
//!   id is already in a trailer on the branch reports `AlreadyDone`, so re-running after a crash
//!   is safe. See [`promote`] for the overlay and branch models.
//! - [`Repository::find_promotion`]`(tip, id)`: the commit carrying a promotion id.
//! - [`Repository::history`]`(pipeline, env, limit)` → [`history::Entry`] `{ commit, tree,
//!   summary, time, trailers: `[`history::Trailers`]` }`, newest first: the commits that changed
//!   the environment's directory on its branch's first-parent line.
//! - [`push::push_with_lease`]: the one place that runs the `git` CLI (gix cannot push yet),
//!   with a clean environment, the token in the child's environment only and `--` before the
//!   remote and refs.
//! - [`Repository::set_images`]`(pipeline, `[`images::ImageUpdate`]`, options, fence)` →
//!   [`images::Outcome`] `Pushed | NoChange`, or [`images::Error`]: one commit setting `newTag`
//!   (and `digest`) of `images:` entries of an environment's kustomization, with a
//!   `Stagehand-Image-Source` trailer per image, pushed as promotions are.
//!   [`Repository::image_references`] reads the `name:tag@digest` of an environment's images at
//!   a commit.
//! - [`write`]: what promotion and image commits share: files written over a tree, the commit
//!   object (author, committer, signature) and the bounded fetch, build, push-with-lease loop
//!   ([`write::Refused`], [`write::WriteError`]).
//! - [`yaml_edit`]: the comment-keeping line edits promotions use.
//! - [`sign::Signer`]: the SSH key promotion, rollback and image commits are signed with (in
//!   [`promote::Options::signer`]), as `git commit -S` with `gpg.format = ssh` signs;
//!   [`allowed_signers::AllowedSigners`] checks a commit's signature as `git verify-commit`
//!   does, both in-process.
//!
//! Nothing half-written: the cache's refs only ever hold what the remote holds (fetched, or
//! pushed and accepted); commits built for a push that failed stay unreferenced objects.

pub mod allowed_signers;
pub mod fetch;
pub mod history;
pub mod images;
pub mod poll;
pub mod promote;
pub mod push;
mod remote;
pub mod revision;
pub mod sign;
mod tree;
pub mod write;
pub mod yaml_edit;

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};

pub use gix::ObjectId;
pub use remote::{Credentials, RemoteUrl, Secret, Timeouts};
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
    timeouts: Timeouts,
    /// Replaced when a damaged cache is created again.
    repo: RwLock<gix::ThreadSafeRepository>,
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
    /// The remote this repository mirrors.
    pub fn url(&self) -> &RemoteUrl {
        &self.inner.url
    }

    /// The bare repository of the cache.
    pub fn path(&self) -> &std::path::Path {
        &self.inner.path
    }

    /// A handle on the cache for this thread.
    fn repo(&self) -> gix::Repository {
        self.thread_safe().to_thread_local()
    }

    fn thread_safe(&self) -> gix::ThreadSafeRepository {
        // The handle inside is replaced whole, so a panic elsewhere cannot leave it half-set.
        self.inner
            .repo
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Serialises ref changes. The lock guards no data, only the order of writers, and gix
    /// removes its ref lock files when a panicking writer unwinds; so a lock poisoned by a
    /// panicked fetch is taken over rather than failing every later fetch of the environment.
    fn lock_refs(&self) -> MutexGuard<'_, ()> {
        self.inner
            .lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}
