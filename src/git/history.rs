//! An environment's past revisions, with the promotion trailers of each: for audit and to pick a
//! rollback target.

use gix::ObjectId;

use super::Repository;
use super::allowed_signers::{AllowedSigners, Verdict};
use super::revision::{Error, Location};
use crate::pipeline::Pipeline;

/// Trailer carrying the promotion id; finding it on the remote means the promotion is done.
pub const PROMOTION: &str = "Stagehand-Promotion";
/// Trailer naming the source environment and commit of a promotion.
pub const PROMOTED_FROM: &str = "Promoted-From";
/// Trailer naming the commit a rollback restored.
pub const ROLLED_BACK_TO: &str = "Rolled-Back-To";
/// Trailer naming who asked for the change.
pub const REQUESTED_BY: &str = "Requested-By";
/// Trailer naming an approver; one per approver.
pub const APPROVED_BY: &str = "Approved-By";

/// The Stagehand trailers of one commit; all empty for a commit made by hand.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Trailers {
    /// The promotion id.
    pub promotion: Option<String>,
    /// `<environment>@<commit>`.
    pub promoted_from: Option<String>,
    /// `<environment>@<commit>`.
    pub rolled_back_to: Option<String>,
    /// Who asked.
    pub requested_by: Option<String>,
    /// Who approved, in the order they did.
    pub approved_by: Vec<String>,
}

impl Trailers {
    pub(crate) fn of(message: &[u8]) -> Self {
        let mut trailers = Trailers::default();
        let message = gix::objs::commit::MessageRef::from_bytes(message);
        let Some(body) = message.body() else {
            return trailers;
        };
        for trailer in body.trailers() {
            let value = trailer.value.to_string();
            match trailer.token.to_string().as_str() {
                PROMOTION => trailers.promotion = Some(value),
                PROMOTED_FROM => trailers.promoted_from = Some(value),
                ROLLED_BACK_TO => trailers.rolled_back_to = Some(value),
                REQUESTED_BY => trailers.requested_by = Some(value),
                APPROVED_BY => trailers.approved_by.push(value),
                _ => {}
            }
        }
        trailers
    }
}

/// One revision of an environment: a commit that changed its directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The commit.
    pub commit: ObjectId,
    /// The tree of the environment's directory after this commit.
    pub tree: ObjectId,
    /// The commit message's first line.
    pub summary: String,
    /// Committer time, seconds since the Unix epoch.
    pub time: i64,
    /// Stagehand's trailers on it.
    pub trailers: Trailers,
}

/// The most commits one [`Repository::history`] reads: on a long trunk where an environment's
/// directory rarely changes, a request must not walk the whole history. Revisions older than
/// that many first-parent commits are not listed.
pub const WALK_LIMIT: usize = 10_000;

impl Repository {
    /// Up to `limit` revisions of `environment`, newest first, following the first parents of
    /// its branch: the commits that changed its directory (every commit for a whole branch),
    /// among the last [`WALK_LIMIT`] commits.
    pub fn history(
        &self,
        pipeline: &Pipeline,
        environment: &str,
        limit: usize,
    ) -> Result<Vec<Entry>, Error> {
        let location = Location::of(pipeline, environment)?;
        let mut next = Some(self.branch_tip(&location.branch)?);
        let repo = self.repo();
        let read = |what: String| {
            move |source| Error::Read {
                what,
                source: Box::new(source),
            }
        };
        let mut entries = Vec::new();
        let mut walked = 0;
        while let Some(id) = next {
            if entries.len() >= limit || walked >= WALK_LIMIT {
                break;
            }
            walked += 1;
            let commit = repo.find_commit(id).map_err(read(format!("commit {id}")))?;
            let parent = commit.parent_ids().next().map(gix::Id::detach);
            let tree = match self.path_tree(&location, id) {
                Ok(tree) => tree,
                // Before the directory existed there is nothing more of this environment.
                Err(Error::MissingPath { .. }) => break,
                Err(e) => return Err(e),
            };
            let parent_tree = match parent {
                Some(p) => self.path_tree(&location, p).ok(),
                None => None,
            };
            if parent_tree != Some(tree) {
                let message = commit.message_raw_sloppy().to_vec();
                entries.push(Entry {
                    commit: id,
                    tree,
                    summary: gix::objs::commit::MessageRef::from_bytes(&message)
                        .summary()
                        .to_string(),
                    time: commit.time().map_err(read(format!("commit {id}")))?.seconds,
                    trailers: Trailers::of(&message),
                });
            }
            next = parent;
        }
        Ok(entries)
    }
}

/// A promoted range with more commits than a caller allows: its authors cannot all be known.
#[derive(Debug, thiserror::Error)]
#[error(
    "the range from {to} back to {} holds more than {limit} commits; its authors cannot all be \
     checked",
    since.map_or_else(|| "the first commit".to_owned(), |c| c.to_string())
)]
pub struct RangeTooLong {
    /// The newest commit of the range.
    pub to: ObjectId,
    /// Where the range starts (excluded).
    pub since: Option<ObjectId>,
    /// The most commits walked.
    pub limit: usize,
}

/// Why the authors of a range are unknown.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)]
pub enum AuthorsError {
    #[error(transparent)]
    Read(#[from] Error),
    #[error(transparent)]
    TooLong(#[from] RangeTooLong),
}

/// One commit of a range and who wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authored {
    /// The commit.
    pub commit: ObjectId,
    /// Its `Stagehand-Promotion` trailer, which anyone can write.
    pub promotion: Option<String>,
    /// Who wrote it, lowercased: the principals of its signer when it carries a good signature
    /// by an allowed key that names any (see [`Verdict::Good`]), else the e-mails of its author
    /// and committer; and its co-authors either way.
    pub people: Vec<String>,
    /// Committer time, seconds since the Unix epoch: when the commit entered the history as
    /// it is (a rebased or cherry-picked commit counts from then, not from its first draft).
    pub time: i64,
    /// The first line of its message.
    pub summary: String,
    /// Its signature checked against the allowed signers the caller gave; `None` without.
    pub signature: Option<Verdict>,
}

/// Trailer crediting a co-author (`Name <e-mail>`), as GitHub and GitLab write it.
pub const CO_AUTHORED_BY: &str = "Co-authored-by";

impl Repository {
    /// Who wrote each commit reachable from `to` but not from `since` (every ancestor when
    /// `since` is `None`) that changed `path` (every commit when `None`), and when: authors,
    /// committers and `Co-authored-by` trailers, the committer time, and the commit's
    /// promotion trailer so that the caller can tell a promotion it landed (whose content others
    /// wrote) from a commit by hand. With `signers`, each commit's SSH signature is checked
    /// against them, and a commit signed by an allowed key is credited to its signer's
    /// principals rather than to the author and committer it claims. A range of more than
    /// `limit` commits is an error rather than a partial answer.
    pub fn authored(
        &self,
        to: ObjectId,
        since: Option<ObjectId>,
        path: Option<&Location>,
        limit: usize,
        signers: Option<&AllowedSigners>,
    ) -> Result<Vec<Authored>, AuthorsError> {
        let repo = self.repo();
        let read = |what: String| {
            move |source| Error::Read {
                what,
                source: Box::new(source),
            }
        };
        let walk = repo
            .rev_walk([to])
            .with_hidden(since)
            .all()
            .map_err(read(format!("the history of {to}")))?;
        let mut authored = Vec::new();
        for (walked, info) in walk.enumerate() {
            if walked >= limit {
                return Err(RangeTooLong { to, since, limit }.into());
            }
            let info = info.map_err(read(format!("the history of {to}")))?;
            let commit = repo
                .find_commit(info.id)
                .map_err(read(format!("commit {}", info.id)))?;
            if let Some(location) = path {
                let tree = self.path_tree(location, info.id).ok();
                let parent = commit.parent_ids().next().map(gix::Id::detach);
                let parent_tree = parent.and_then(|p| self.path_tree(location, p).ok());
                if tree == parent_tree {
                    continue;
                }
            }
            let signature = signers
                .map(|signers| verdict(&commit, info.id, signers))
                .transpose()?;
            let people = match &signature {
                Some(Verdict::Good { principals, .. }) if !principals.is_empty() => {
                    let mut people = principals.clone();
                    for email in co_authors(&commit) {
                        if !people.contains(&email) {
                            people.push(email);
                        }
                    }
                    people
                }
                _ => people_of(&commit, info.id)?,
            };
            authored.push(Authored {
                commit: info.id,
                promotion: Trailers::of(commit.message_raw_sloppy()).promotion,
                people,
                time: commit
                    .time()
                    .map_err(read(format!("commit {}", info.id)))?
                    .seconds,
                summary: gix::objs::commit::MessageRef::from_bytes(commit.message_raw_sloppy())
                    .summary()
                    .to_string(),
                signature,
            });
        }
        Ok(authored)
    }

    /// Whether `commit` created `environment`'s directory: it has no parent, or its first
    /// parent does not hold the directory.
    pub fn creates(
        &self,
        pipeline: &Pipeline,
        environment: &str,
        commit: ObjectId,
    ) -> Result<bool, Error> {
        let location = Location::of(pipeline, environment)?;
        let repo = self.repo();
        let found = repo.find_commit(commit).map_err(|source| Error::Read {
            what: format!("commit {commit}"),
            source: Box::new(source),
        })?;
        let Some(parent) = found.parent_ids().next().map(gix::Id::detach) else {
            return Ok(true);
        };
        match self.path_tree(&location, parent) {
            Ok(_) => Ok(false),
            Err(Error::MissingPath { .. }) => Ok(true),
            Err(e) => Err(e),
        }
    }

    /// The first line of `commit`'s message and its committer time (seconds since the epoch).
    pub fn subject(&self, commit: ObjectId) -> Result<(String, i64), Error> {
        let repo = self.repo();
        let found = repo.find_commit(commit).map_err(|source| Error::Read {
            what: format!("commit {commit}"),
            source: Box::new(source),
        })?;
        let time = found.time().map_err(|source| Error::Read {
            what: format!("commit {commit}"),
            source: Box::new(source),
        })?;
        let summary = gix::objs::commit::MessageRef::from_bytes(found.message_raw_sloppy())
            .summary()
            .to_string();
        Ok((summary, time.seconds))
    }

    /// The e-mails of who wrote `commit`: its author, its committer and its `Co-authored-by`
    /// trailers.
    pub fn people(&self, commit: ObjectId) -> Result<Vec<String>, Error> {
        let repo = self.repo();
        let found = repo.find_commit(commit).map_err(|source| Error::Read {
            what: format!("commit {commit}"),
            source: Box::new(source),
        })?;
        people_of(&found, commit)
    }

    /// The revision of `environment` whose files `commit` holds: the newest commit at or before
    /// `commit` on the first-parent line of the environment's branch that changed its directory.
    /// `None` when `commit` is not on that line within `limit` commits of the branch tip: it is
    /// not part of the environment's history.
    pub fn revision_of(
        &self,
        pipeline: &Pipeline,
        environment: &str,
        commit: ObjectId,
        limit: usize,
    ) -> Result<Option<Entry>, Error> {
        let location = Location::of(pipeline, environment)?;
        let repo = self.repo();
        let read = |what: String| {
            move |source| Error::Read {
                what,
                source: Box::new(source),
            }
        };
        let mut next = Some(self.branch_tip(&location.branch)?);
        let mut found = false;
        for _ in 0..limit {
            let Some(id) = next else { break };
            found |= id == commit;
            let current = repo.find_commit(id).map_err(read(format!("commit {id}")))?;
            let parent = current.parent_ids().next().map(gix::Id::detach);
            if found {
                let tree = match self.path_tree(&location, id) {
                    Ok(tree) => tree,
                    // From before the environment existed: not one of its revisions.
                    Err(Error::MissingPath { .. }) => return Ok(None),
                    Err(e) => return Err(e),
                };
                let parent_tree = parent.and_then(|p| self.path_tree(&location, p).ok());
                if parent_tree != Some(tree) {
                    let message = current.message_raw_sloppy().to_vec();
                    return Ok(Some(Entry {
                        commit: id,
                        tree,
                        summary: gix::objs::commit::MessageRef::from_bytes(&message)
                            .summary()
                            .to_string(),
                        time: current
                            .time()
                            .map_err(read(format!("commit {id}")))?
                            .seconds,
                        trailers: Trailers::of(&message),
                    }));
                }
            }
            next = parent;
        }
        Ok(None)
    }

    /// The commit `spec` names (a full or abbreviated hash, a branch of the cache, ...).
    pub fn resolve(&self, spec: &str) -> Result<ObjectId, Error> {
        let repo = self.repo();
        repo.rev_parse_single(spec)
            .map_err(|source| Error::Read {
                what: format!("revision {spec:?}"),
                source: Box::new(source),
            })?
            .object()
            .map_err(|source| Error::Read {
                what: format!("revision {spec:?}"),
                source: Box::new(source),
            })?
            .peel_to_commit()
            .map(|commit| commit.id)
            .map_err(|source| Error::Read {
                what: format!("revision {spec:?}"),
                source: Box::new(source),
            })
    }
}

impl Repository {
    /// Whether `descendant` is `ancestor` or has it in its history.
    pub fn descends_from(&self, descendant: ObjectId, ancestor: ObjectId) -> Result<bool, Error> {
        if descendant == ancestor {
            return Ok(true);
        }
        let repo = self.repo();
        let base = repo
            .merge_base(descendant, ancestor)
            .map_err(|source| Error::Read {
                what: format!("the merge base of {descendant} and {ancestor}"),
                source: Box::new(source),
            })?;
        Ok(base.map(gix::Id::detach) == Some(ancestor))
    }
}

fn people_of(commit: &gix::Commit<'_>, id: ObjectId) -> Result<Vec<String>, Error> {
    let read = |what: &str| {
        let what = format!("the {what} of commit {id}");
        move |source| Error::Read {
            what,
            source: Box::new(source),
        }
    };
    let emails = [
        commit.author().map_err(read("author"))?.email.to_string(),
        commit
            .committer()
            .map_err(read("committer"))?
            .email
            .to_string(),
    ];
    let mut people: Vec<String> = Vec::new();
    for email in emails.into_iter().chain(co_authors(commit)) {
        let email = email.trim().to_lowercase();
        if !email.is_empty() && !people.contains(&email) {
            people.push(email);
        }
    }
    Ok(people)
}

/// The e-mails of the `Co-authored-by` trailers of `commit`, lowercased.
fn co_authors(commit: &gix::Commit<'_>) -> Vec<String> {
    let mut emails = Vec::new();
    let message = gix::objs::commit::MessageRef::from_bytes(commit.message_raw_sloppy());
    if let Some(body) = message.body() {
        for trailer in body.trailers() {
            if trailer
                .token
                .to_string()
                .eq_ignore_ascii_case(CO_AUTHORED_BY)
                && let Some(email) = angle_email(&trailer.value.to_string())
            {
                emails.push(email.trim().to_lowercase());
            }
        }
    }
    emails
}

/// How `commit`'s signature checks out against `signers`, at its committer time as git asks
/// ssh-keygen to check it.
fn verdict(
    commit: &gix::Commit<'_>,
    id: ObjectId,
    signers: &AllowedSigners,
) -> Result<Verdict, Error> {
    let read = |source| Error::Read {
        what: format!("the signature of commit {id}"),
        source: Box::new(source),
    };
    let time = commit.time().map_err(read)?.seconds;
    Ok(match commit.signature().map_err(read)? {
        Some((signature, signed)) => {
            signers.check(Some(signature.as_ref()), &signed.to_bstring(), time)
        }
        None => signers.check(None, &[], time),
    })
}

/// The e-mail of `Name <e-mail>`.
fn angle_email(value: &str) -> Option<&str> {
    let start = value.rfind('<')?;
    let end = start + value[start..].find('>')?;
    Some(value[start + 1..end].trim()).filter(|e| !e.is_empty())
}
