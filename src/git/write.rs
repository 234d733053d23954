//! What Stagehand's commits share, promotions ([`super::promote`]) and image updates
//! ([`super::images`]) alike: files written over a tree, the commit object (author, committer,
//! signature), and landing it on its branch with the fetched tip as the lease, redone on the
//! new tip when someone pushed first.
//!
//! The cache's refs only change after the remote accepted a push ([`Repository::land`]);
//! objects written for a push that failed stay unreferenced.

use gix::ObjectId;
use gix::objs::tree::EntryKind;

use super::promote::{Identity, Options};
use super::revision::{self, commit_tree};
use super::sign::SignError;
use super::{Repository, TRACKING_PREFIX, fetch, push};

/// A write into the cache (an object, a tree edit, a ref) that failed.
#[derive(Debug, thiserror::Error)]
#[error("cannot {what}")]
pub struct WriteError {
    what: String,
    #[source]
    source: Box<gix::Error>,
}

/// Why a commit did not land although the remote answered.
#[derive(Debug, thiserror::Error)]
// Each variant is described by its message, and its fields by the names the message uses.
#[allow(missing_docs)]
pub enum Refused {
    #[error("the remote declined the push to branch {branch:?}: {reason}")]
    Declined { branch: String, reason: String },
    #[error("branch {branch:?} moved on every one of {attempts} pushes; giving up")]
    Contended { branch: String, attempts: u32 },
}

/// Maps a gix failure to a [`WriteError`] saying what was being done: `write_error("write the
/// tree")`.
pub(super) fn write_error(what: impl Into<String>) -> impl FnOnce(gix::Error) -> WriteError {
    let what = what.into();
    move |source| WriteError {
        what,
        source: Box::new(source),
    }
}

/// What one attempt of [`Repository::land`] made of the branch's tip.
pub(super) enum Attempt<T> {
    /// Nothing to push: the work ends here, with this.
    Done(T),
    /// This commit, built on the tip, is to be pushed.
    Push(ObjectId),
}

/// A commit [`Repository::land`] pushed.
pub struct Pushed {
    /// The new commit.
    pub commit: ObjectId,
    /// The branch tip it was built on.
    pub parent: ObjectId,
    /// Pushes it took, 1 when nobody pushed in between.
    pub attempts: u32,
}

impl Repository {
    /// Lands a commit on `branch`: fetch, let `attempt` build it on the branch's tip (and
    /// refuse, with an error, whatever must not be pushed), push it with that tip as the lease;
    /// if someone pushed first, back off, fetch and call `attempt` again on their tip, at most
    /// `max_attempts` times. It ends with what `attempt` ends with, or with the [`Pushed`]
    /// commit once the remote took one. `what` names the work in the log. Blocking.
    pub(super) fn land<T, E>(
        &self,
        branch: &str,
        max_attempts: u32,
        what: &str,
        mut attempt: impl FnMut(ObjectId) -> Result<Attempt<T>, E>,
    ) -> Result<T, E>
    where
        T: From<Pushed>,
        E: From<fetch::Error>
            + From<revision::Error>
            + From<push::Error>
            + From<WriteError>
            + From<Refused>,
    {
        let attempts = max_attempts.max(1);
        for n in 1..=attempts {
            self.fetch()?;
            let tip = self.branch_tip(branch)?;
            let commit = match attempt(tip)? {
                Attempt::Done(done) => return Ok(done),
                Attempt::Push(commit) => commit,
            };
            let answer = push::push_with_lease(
                &self.inner.path,
                &self.inner.url,
                &self.inner.credentials,
                &self.inner.timeouts,
                branch,
                Some(tip),
                commit,
            )?;
            match answer {
                push::Outcome::Updated => {
                    self.record_pushed(branch, commit)?;
                    return Ok(Pushed {
                        commit,
                        parent: tip,
                        attempts: n,
                    }
                    .into());
                }
                push::Outcome::Declined { reason } => {
                    return Err(Refused::Declined {
                        branch: branch.to_owned(),
                        reason,
                    }
                    .into());
                }
                push::Outcome::Rejected { reason } => {
                    tracing::info!(
                        %branch,
                        attempt = n,
                        %reason,
                        "push rejected, redoing {what} on the new tip"
                    );
                    backoff(n);
                }
            }
        }
        Err(Refused::Contended {
            branch: branch.to_owned(),
            attempts,
        }
        .into())
    }

    /// After the remote accepted `commit`, the cache records it like a fetch would have.
    fn record_pushed(&self, branch: &str, commit: ObjectId) -> Result<(), WriteError> {
        use gix::refs::transaction::{Change as RefChange, LogChange, PreviousValue, RefEdit};
        let _guard = self.lock_refs();
        let repo = self.repo();
        let name = format!("{TRACKING_PREFIX}{branch}");
        repo.edit_reference(RefEdit {
            change: RefChange::Update {
                log: LogChange::default(),
                expected: PreviousValue::Any,
                new: gix::refs::Target::Object(commit),
            },
            name: name
                .as_str()
                .try_into()
                .expect("branch names from the pipeline are valid ref names"),
            deref: false,
        })
        .map_err(write_error(format!("update {name}")))?;
        Ok(())
    }
}

/// The tree of commit `base` with each of `files` (repository path, content) written over it.
/// A file that was executable stays so.
pub(super) fn tree_with<E>(
    repo: &gix::Repository,
    base: ObjectId,
    files: impl IntoIterator<Item = (impl AsRef<str>, impl AsRef<[u8]>)>,
) -> Result<ObjectId, E>
where
    E: From<revision::Error> + From<WriteError>,
{
    let mut editor = repo
        .edit_tree(commit_tree(repo, base)?)
        .map_err(write_error("edit the tree"))?;
    for (path, bytes) in files {
        let path = path.as_ref();
        let blob = repo
            .write_blob(bytes.as_ref())
            .map_err(write_error(format!("write {path}")))?;
        let kind = match editor.get(path).map(|e| e.mode().kind()) {
            Some(EntryKind::BlobExecutable) => EntryKind::BlobExecutable,
            _ => EntryKind::Blob,
        };
        editor
            .upsert(path, kind, blob.detach())
            .map_err(write_error(format!("write {path}")))?;
    }
    Ok(editor
        .write()
        .map_err(write_error("write the tree"))?
        .detach())
}

/// Writes the commit of `tree` on `parent` with `message`, by `options`' author and committer
/// and signed with its key when it has one. `what` names the commit in errors ("the promotion
/// commit").
pub(super) fn commit<E>(
    repo: &gix::Repository,
    options: &Options,
    message: String,
    tree: ObjectId,
    parent: ObjectId,
    what: &str,
) -> Result<ObjectId, E>
where
    E: From<SignError> + From<WriteError>,
{
    let now = gix::date::Time::now_utc();
    let signature = |who: &Identity| gix::actor::Signature {
        name: who.name.as_str().into(),
        email: who.email.as_str().into(),
        time: now,
    };
    let mut commit = gix::objs::Commit {
        message: message.into(),
        tree,
        author: signature(&options.author),
        committer: signature(&options.committer),
        encoding: None,
        parents: [parent].into_iter().collect(),
        extra_headers: Vec::new(),
    };
    if let Some(signer) = &options.signer {
        signer.sign_commit(&mut commit)?;
    }
    Ok(repo
        .write_object(&commit)
        .map_err(write_error(format!("write {what}")))?
        .detach())
}

/// A short, growing, jittered pause so that racing writers stop colliding.
fn backoff(attempt: u32) {
    let jitter = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::from(d.subsec_nanos() % 50))
        .unwrap_or(0);
    std::thread::sleep(std::time::Duration::from_millis(
        20 * u64::from(attempt) + jitter,
    ));
}
