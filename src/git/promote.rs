//! Promotion and rollback commits, built in the object database (no work tree) and pushed with
//! a lease; when someone pushed first, the change is redone on top of their commit.
//!
//! - Overlay model (target is a directory on the main branch): what the target's `promote:`
//!   policy names (`images:` entries, whole files, single YAML values) is copied from the source
//!   environment's directory at the promoted commit into the target directory, editing only the
//!   lines that change.
//! - Branch model (target has its own branch): the target branch gets one commit whose tree is
//!   the promoted commit's tree, on top of its current tip, so the branch only ever moves by
//!   fast-forward and every step carries the trailers. If the target holds commits made since
//!   its last promotion that the promoted commit lacks, the promotion is refused naming them,
//!   unless the policy allows a merge; then the trees are merged three-way.
//!
//! The local cache never gets a branch the remote does not have: a commit is only recorded in
//! the remote-tracking ref after the remote accepted it.

use std::collections::HashSet;

use gix::ObjectId;
use gix::objs::tree::EntryKind;

use super::history::{
    APPROVED_BY, PROMOTED_FROM, PROMOTION, REQUESTED_BY, ROLLED_BACK_TO, Trailers,
};
use super::revision::{self, Location, commit_tree};
use super::write::{self, Attempt, Pushed, Refused, WriteError, write_error};
use super::{Repository, TreeFs, fetch, push, yaml_edit};
use crate::pipeline::{Pipeline, Source};
use crate::render::fs::FileSystem;
use crate::render::kustomization::FILE_NAMES as KUSTOMIZATION_FILES;

/// How far back the target branch is searched for a promotion that already landed.
const IDEMPOTENCE_DEPTH: usize = 1000;
/// How far back the target branch is searched for its last promotion (branch model).
const DIVERGENCE_DEPTH: usize = 1000;

/// Who authors and commits promotion commits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The name in the commit.
    pub name: String,
    /// The e-mail in the commit.
    pub email: String,
}

/// The commit of one promotion (or rollback) of one environment, as the promotion engine asks
/// for it: which policy allows it is `crate::promotion`'s business.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromotionCommit {
    /// Unique per promotion; finding it in a trailer on the remote means the work is done.
    pub id: String,
    /// The environment that changes.
    pub target: String,
    /// What the commit does.
    pub change: Change,
    /// Who asked, for the trailer.
    pub requested_by: String,
    /// Who approved, for the trailers.
    pub approved_by: Vec<String>,
}

/// What a promotion commit does to the target's files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Bring `source`'s files as of `commit` into the target.
    Promote {
        /// The source environment.
        source: String,
        /// The source's commit whose files are brought over.
        commit: ObjectId,
    },
    /// Restore the target's directory as it was at `commit` (a commit of the target's branch).
    Rollback {
        /// The target's earlier commit.
        commit: ObjectId,
    },
}

/// How promotion commits are made.
#[derive(Debug, Clone)]
pub struct Options {
    /// The commit's author.
    pub author: Identity,
    /// The commit's committer.
    pub committer: Identity,
    /// The key every commit is signed with (`gpgsig`, SSH format); unsigned without one.
    pub signer: Option<std::sync::Arc<super::sign::Signer>>,
    /// Pushes tried before giving up when others keep pushing first.
    pub max_attempts: u32,
}

/// What a promotion did; each case is success.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A new commit is on the remote branch.
    Pushed {
        /// The new commit.
        commit: ObjectId,
        /// The branch tip it was built on.
        parent: ObjectId,
        /// Pushes it took, 1 when nobody pushed in between.
        attempts: u32,
    },
    /// A commit with this promotion's id was already on the remote (an earlier run finished).
    AlreadyDone {
        /// That commit.
        commit: ObjectId,
    },
    /// The target already holds exactly what the promotion would write; nothing was pushed.
    NoChange {
        /// The target's tip.
        commit: ObjectId,
    },
}

impl From<Pushed> for Outcome {
    fn from(pushed: Pushed) -> Self {
        let Pushed {
            commit,
            parent,
            attempts,
        } = pushed;
        Self::Pushed {
            commit,
            parent,
            attempts,
        }
    }
}

/// What a promotion would do to the target branch as the cache has it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Candidate {
    /// The promotion's commit is already on the branch.
    AlreadyDone {
        /// That commit.
        commit: ObjectId,
    },
    /// The branch already holds what the promotion would write.
    NoChange {
        /// The branch tip.
        tip: ObjectId,
    },
    /// `commit` (written, not pushed) on top of `tip`.
    Change {
        /// The branch tip it builds on.
        tip: ObjectId,
        /// The new commit.
        commit: ObjectId,
    },
}

impl Candidate {
    /// The commit the target would run: the new one, or the one already there.
    pub fn commit(&self) -> ObjectId {
        match self {
            Candidate::AlreadyDone { commit } | Candidate::Change { commit, .. } => *commit,
            Candidate::NoChange { tip } => *tip,
        }
    }
}

/// The promotion commits Stagehand itself wrote: only those count as a landed promotion.
pub trait Ledger {
    /// Whether `commit` is one this promotion wrote.
    fn is_ours(&self, commit: ObjectId) -> bool;
    /// Records `commit` before it is pushed, so that after a crash it is known as ours.
    fn remember(&mut self, commit: ObjectId) -> Result<(), String>;
}

/// A ledger in memory, for a promotion carried out within one call.
impl Ledger for Vec<ObjectId> {
    fn is_ours(&self, commit: ObjectId) -> bool {
        self.contains(&commit)
    }

    fn remember(&mut self, commit: ObjectId) -> Result<(), String> {
        self.push(commit);
        Ok(())
    }
}

/// Why a promotion commit could not be made.
#[derive(Debug, thiserror::Error)]
// Each variant is described by its message, and its fields by the names the message uses.
#[allow(missing_docs)]
pub enum Error {
    #[error(transparent)]
    Fetch(#[from] fetch::Error),
    #[error(transparent)]
    Revision(#[from] revision::Error),
    #[error("promotion {id}: {field} {value:?} must be one non-empty line")]
    InvalidTrailer {
        id: String,
        field: &'static str,
        value: String,
    },
    #[error("environment {environment:?} cannot be promoted from {source_env:?}: {reason}")]
    NotPromotable {
        environment: String,
        source_env: String,
        reason: &'static str,
    },
    #[error("{path}: no such file at {commit}, but the promote policy of {environment:?} lists it")]
    MissingFile {
        environment: String,
        commit: ObjectId,
        path: String,
    },
    #[error("{path} at {commit}: cannot read it")]
    Read {
        path: String,
        commit: ObjectId,
        #[source]
        source: crate::render::fs::Error,
    },
    #[error("{path} at {commit}")]
    Edit {
        path: String,
        commit: ObjectId,
        #[source]
        source: yaml_edit::Error,
    },
    #[error(
        "branch {branch:?} has commits that {promoted} lacks and merging is not allowed for \
         {environment:?}: {}",
        list(commits)
    )]
    Diverged {
        environment: String,
        branch: String,
        promoted: ObjectId,
        commits: Vec<ObjectId>,
    },
    #[error("merging {promoted} into branch {branch:?} conflicts in {}", paths.join(", "))]
    MergeConflict {
        branch: String,
        promoted: ObjectId,
        paths: Vec<String>,
    },
    #[error(transparent)]
    Push(#[from] push::Error),
    /// Declined by the remote, or others kept pushing first.
    #[error(transparent)]
    Refused(#[from] Refused),
    #[error("cannot record commit {commit} before pushing it: {reason}")]
    Ledger { commit: ObjectId, reason: String },
    #[error(transparent)]
    Sign(#[from] super::sign::SignError),
    #[error(transparent)]
    Write(#[from] WriteError),
}

fn list(commits: &[ObjectId]) -> String {
    commits
        .iter()
        .map(ObjectId::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

impl Repository {
    /// Carries out `promotion`: fetch, build the commit on the target branch's tip, tell
    /// `ledger` about it, push with that tip as the lease; if someone pushed first, fetch and
    /// redo on top of theirs, at most `options.max_attempts` times. A commit on the branch that
    /// carries the promotion's id counts as done only when `ledger` knows it as one of its own:
    /// anyone can push a commit with that trailer. Blocking: call it from `spawn_blocking` in
    /// async code.
    pub fn promote(
        &self,
        pipeline: &Pipeline,
        promotion: &PromotionCommit,
        options: &Options,
        ledger: &mut dyn Ledger,
    ) -> Result<Outcome, Error> {
        check_trailers(promotion)?;
        let location = Location::of(pipeline, &promotion.target)?;
        let what = format!("promotion {}", promotion.id);
        self.land(&location.branch, options.max_attempts, &what, |tip| {
            if let Some(commit) = self.find_promotion(tip, &promotion.id, &*ledger)? {
                return Ok(Attempt::Done(Outcome::AlreadyDone { commit }));
            }
            let tree = self.promoted_tree(pipeline, promotion, &location, tip)?;
            let repo = self.repo();
            if tree == commit_tree(&repo, tip)? {
                return Ok(Attempt::Done(Outcome::NoChange { commit: tip }));
            }
            let commit = write_commit(&repo, promotion, options, tree, tip)?;
            ledger
                .remember(commit)
                .map_err(|reason| Error::Ledger { commit, reason })?;
            Ok(Attempt::Push(commit))
        })
    }

    /// What `promotion` would commit, built on the target branch's tip in the cache (fetched by
    /// the caller) and written to the object database without a ref or a push, so that the
    /// result can be rendered and checked before anything reaches the remote.
    pub fn candidate(
        &self,
        pipeline: &Pipeline,
        promotion: &PromotionCommit,
        options: &Options,
        ledger: &dyn Ledger,
    ) -> Result<Candidate, Error> {
        check_trailers(promotion)?;
        let location = Location::of(pipeline, &promotion.target)?;
        let tip = self.branch_tip(&location.branch)?;
        if let Some(commit) = self.find_promotion(tip, &promotion.id, ledger)? {
            return Ok(Candidate::AlreadyDone { commit });
        }
        let tree = self.promoted_tree(pipeline, promotion, &location, tip)?;
        let repo = self.repo();
        if tree == commit_tree(&repo, tip)? {
            return Ok(Candidate::NoChange { tip });
        }
        let commit = write_commit(&repo, promotion, options, tree, tip)?;
        Ok(Candidate::Change { tip, commit })
    }

    /// The commit on the first-parent line of `tip` that carries promotion `id` and that
    /// `ledger` knows as its own, if any. A commit with the trailer that the ledger does not know
    /// was written by someone else and is passed over.
    pub fn find_promotion(
        &self,
        tip: ObjectId,
        id: &str,
        ledger: &dyn Ledger,
    ) -> Result<Option<ObjectId>, Error> {
        let repo = self.repo();
        let mut next = Some(tip);
        for _ in 0..IDEMPOTENCE_DEPTH {
            let Some(current) = next else { break };
            let commit = repo
                .find_commit(current)
                .map_err(write_error(format!("read commit {current}")))?;
            if Trailers::of(commit.message_raw_sloppy())
                .promotion
                .as_deref()
                == Some(id)
                && ledger.is_ours(current)
            {
                return Ok(Some(current));
            }
            next = commit.parent_ids().next().map(gix::Id::detach);
        }
        Ok(None)
    }

    /// The tree the target branch should have after `promotion`, on top of `tip`.
    fn promoted_tree(
        &self,
        pipeline: &Pipeline,
        promotion: &PromotionCommit,
        location: &Location,
        tip: ObjectId,
    ) -> Result<ObjectId, Error> {
        let target = pipeline
            .environment(&promotion.target)
            .expect("Location::of checked that the target exists");
        match &promotion.change {
            Change::Rollback { commit } => self.rollback_tree(location, tip, *commit),
            Change::Promote { source, commit } => {
                if target.promotes_from.as_deref() != Some(source.as_str()) {
                    return Err(Error::NotPromotable {
                        environment: promotion.target.clone(),
                        source_env: source.clone(),
                        reason: "the pipeline does not list it as promotesFrom",
                    });
                }
                match &target.source {
                    Source::Overlay { .. } => {
                        let from = Location::of(pipeline, source)?;
                        self.overlay_tree(
                            pipeline,
                            &promotion.target,
                            &from,
                            location,
                            tip,
                            *commit,
                        )
                    }
                    Source::Branch { .. } => self.branch_tree(
                        &promotion.target,
                        location,
                        tip,
                        *commit,
                        target.promote.allow_merge,
                    ),
                }
            }
        }
    }

    fn rollback_tree(
        &self,
        location: &Location,
        tip: ObjectId,
        to: ObjectId,
    ) -> Result<ObjectId, Error> {
        let old = self.path_tree(location, to)?;
        if location.path.is_empty() {
            return Ok(old);
        }
        let repo = self.repo();
        let mut editor = repo
            .edit_tree(commit_tree(&repo, tip)?)
            .map_err(write_error("edit the tree"))?;
        editor
            .upsert(location.path.as_str(), EntryKind::Tree, old)
            .map_err(write_error(format!("restore {}", location.path)))?;
        Ok(editor
            .write()
            .map_err(write_error("write the tree"))?
            .detach())
    }

    fn overlay_tree(
        &self,
        pipeline: &Pipeline,
        target_env: &str,
        from: &Location,
        to: &Location,
        tip: ObjectId,
        promoted: ObjectId,
    ) -> Result<ObjectId, Error> {
        let policy = &pipeline
            .environment(target_env)
            .expect("the caller resolved the target")
            .promote;
        let source = self.tree(promoted)?;
        let target = self.tree(tip)?;
        let read_bytes =
            |fs: &TreeFs, commit: ObjectId, path: &str| -> Result<Option<Vec<u8>>, Error> {
                match fs.read_file(path) {
                    Ok(bytes) => Ok(Some(bytes)),
                    Err(crate::render::fs::Error::NotFound { .. }) => Ok(None),
                    Err(source) => Err(Error::Read {
                        path: path.to_owned(),
                        commit,
                        source,
                    }),
                }
            };
        // YAML that is not UTF-8 is not YAML; refuse it rather than edit a lossy copy.
        let text = |bytes: Vec<u8>, commit: ObjectId, path: &str| {
            String::from_utf8(bytes).map_err(|e| Error::Edit {
                path: path.to_owned(),
                commit,
                source: yaml_edit::Error::Syntax {
                    message: e.to_string(),
                },
            })
        };
        let read = |fs: &TreeFs, commit: ObjectId, path: &str| -> Result<Option<String>, Error> {
            read_bytes(fs, commit, path)?
                .map(|bytes| text(bytes, commit, path))
                .transpose()
        };
        let edit_error = |path: &str, commit: ObjectId| {
            let path = path.to_owned();
            move |source| Error::Edit {
                path,
                commit,
                source,
            }
        };
        // Files whose new content is decided, by repository path.
        let mut changes: Vec<(String, Vec<u8>)> = Vec::new();
        let current =
            |changes: &[(String, Vec<u8>)], path: &str| -> Result<Option<String>, Error> {
                match changes.iter().rev().find(|(p, _)| p == path) {
                    Some((_, bytes)) => text(bytes.clone(), tip, path).map(Some),
                    None => read(&target, tip, path),
                }
            };

        let wants_images =
            !matches!(&policy.images, crate::pipeline::ImageSelection::Named(n) if n.is_empty());
        if wants_images {
            let found = KUSTOMIZATION_FILES.iter().find_map(|name| {
                let path = from.file(name);
                read(&source, promoted, &path)
                    .transpose()
                    .map(|r| r.map(|t| (path, t)))
            });
            if let Some(found) = found {
                let (source_path, text) = found?;
                let images: Vec<_> = yaml_edit::images(&text)
                    .map_err(edit_error(&source_path, promoted))?
                    .into_iter()
                    .filter(|i| policy.images.includes(yaml_edit::image_name(i)))
                    .collect();
                if !images.is_empty() {
                    let target_path = KUSTOMIZATION_FILES
                        .iter()
                        .map(|name| to.file(name))
                        .find(|p| matches!(target.kind(p), Ok(Some(_))))
                        .ok_or_else(|| Error::MissingFile {
                            environment: target_env.to_owned(),
                            commit: tip,
                            path: to.file(KUSTOMIZATION_FILES[0]),
                        })?;
                    let text = current(&changes, &target_path)?.unwrap_or_default();
                    let edited = yaml_edit::set_images(&text, &images)
                        .map_err(edit_error(&target_path, tip))?;
                    changes.push((target_path, edited.into_bytes()));
                }
            }
        }
        for file in &policy.files {
            let source_path = from.file(file);
            let bytes =
                read_bytes(&source, promoted, &source_path)?.ok_or_else(|| Error::MissingFile {
                    environment: target_env.to_owned(),
                    commit: promoted,
                    path: source_path.clone(),
                })?;
            changes.push((to.file(file), bytes));
        }
        for field in &policy.fields {
            let source_path = from.file(&field.file);
            let text =
                read(&source, promoted, &source_path)?.ok_or_else(|| Error::MissingFile {
                    environment: target_env.to_owned(),
                    commit: promoted,
                    path: source_path.clone(),
                })?;
            let value = yaml_edit::scalar(&text, &field.path)
                .map_err(edit_error(&source_path, promoted))?;
            let target_path = to.file(&field.file);
            let text = current(&changes, &target_path)?.ok_or_else(|| Error::MissingFile {
                environment: target_env.to_owned(),
                commit: tip,
                path: target_path.clone(),
            })?;
            let edited = yaml_edit::set_scalar(&text, &field.path, &value)
                .map_err(edit_error(&target_path, tip))?;
            changes.push((target_path, edited.into_bytes()));
        }

        write::tree_with(&self.repo(), tip, changes)
    }

    fn branch_tree(
        &self,
        environment: &str,
        location: &Location,
        tip: ObjectId,
        promoted: ObjectId,
        allow_merge: bool,
    ) -> Result<ObjectId, Error> {
        let repo = self.repo();
        let read = |id: ObjectId| write_error(format!("read commit {id}"));
        let promoted_tree = commit_tree(&repo, promoted)?;
        // Walk back from the tip to the last commit the promoted one already covers: one that
        // is its ancestor, or an earlier promotion. Whatever lies before that is the target's
        // own work.
        let mut foreign = Vec::new();
        let mut boundary = None;
        let mut next = Some(tip);
        let mut seen = HashSet::new();
        while let Some(current) = next {
            if seen.len() >= DIVERGENCE_DEPTH || !seen.insert(current) {
                break;
            }
            let commit = repo.find_commit(current).map_err(read(current))?;
            let is_ancestor = current == promoted
                || repo
                    .merge_base(current, promoted)
                    .map(|base| base.map(gix::Id::detach) == Some(current))
                    .unwrap_or(false);
            if is_ancestor
                || Trailers::of(commit.message_raw_sloppy())
                    .promotion
                    .is_some()
            {
                boundary = Some(current);
                break;
            }
            foreign.push(current);
            next = commit.parent_ids().next().map(gix::Id::detach);
        }
        if foreign.is_empty() {
            return Ok(promoted_tree);
        }
        if !allow_merge {
            return Err(Error::Diverged {
                environment: environment.to_owned(),
                branch: location.branch.clone(),
                promoted,
                commits: foreign,
            });
        }
        let base = match boundary {
            Some(b) => commit_tree(&repo, b)?,
            None => ObjectId::empty_tree(repo.object_hash()),
        };
        let options = repo
            .tree_merge_options()
            .map_err(write_error("prepare the merge"))?;
        let mut outcome = repo
            .merge_trees(
                base,
                commit_tree(&repo, tip)?,
                promoted_tree,
                Default::default(),
                options,
            )
            .map_err(write_error(format!(
                "merge {promoted} into {}",
                location.branch
            )))?;
        let how = gix::merge::tree::TreatAsUnresolved::default();
        if outcome.has_unresolved_conflicts(how) {
            return Err(Error::MergeConflict {
                branch: location.branch.clone(),
                promoted,
                paths: outcome
                    .conflicts
                    .iter()
                    .filter(|c| c.is_unresolved(how))
                    .map(|c| c.ours.location().to_string())
                    .collect(),
            });
        }
        Ok(outcome
            .tree
            .write()
            .map_err(write_error("write the merged tree"))?
            .detach())
    }
}

fn check_trailers(promotion: &PromotionCommit) -> Result<(), Error> {
    let one_line = |field: &'static str, value: &str| {
        if value.trim().is_empty() || value.contains(['\n', '\r']) {
            Err(Error::InvalidTrailer {
                id: promotion.id.clone(),
                field,
                value: value.to_owned(),
            })
        } else {
            Ok(())
        }
    };
    one_line(PROMOTION, &promotion.id)?;
    one_line(REQUESTED_BY, &promotion.requested_by)?;
    for approver in &promotion.approved_by {
        one_line(APPROVED_BY, approver)?;
    }
    Ok(())
}

fn message(promotion: &PromotionCommit) -> String {
    let (title, origin) = match &promotion.change {
        Change::Promote { source, commit } => (
            format!(
                "Promote {source}@{} to {}",
                &commit.to_string()[..12],
                promotion.target
            ),
            format!("{PROMOTED_FROM}: {source}@{commit}"),
        ),
        Change::Rollback { commit } => (
            format!(
                "Roll back {} to {}",
                promotion.target,
                &commit.to_string()[..12]
            ),
            format!("{ROLLED_BACK_TO}: {}@{commit}", promotion.target),
        ),
    };
    let mut text = format!(
        "{title}\n\n{PROMOTION}: {}\n{origin}\n{REQUESTED_BY}: {}\n",
        promotion.id, promotion.requested_by
    );
    for approver in &promotion.approved_by {
        text.push_str(&format!("{APPROVED_BY}: {approver}\n"));
    }
    text
}

fn write_commit(
    repo: &gix::Repository,
    promotion: &PromotionCommit,
    options: &Options,
    tree: ObjectId,
    parent: ObjectId,
) -> Result<ObjectId, Error> {
    write::commit(
        repo,
        options,
        message(promotion),
        tree,
        parent,
        "the promotion commit",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_message_carries_one_trailer_per_approver_and_parses_back() {
        let promotion = PromotionCommit {
            id: "p-42".into(),
            target: "staging".into(),
            change: Change::Promote {
                source: "dev".into(),
                commit: ObjectId::from_hex(b"0123456789abcdef0123456789abcdef01234567")
                    .expect("valid hex"),
            },
            requested_by: "alice".into(),
            approved_by: vec!["bob".into(), "carol".into()],
        };
        let trailers = Trailers::of(message(&promotion).as_bytes());
        assert_eq!(trailers.promotion.as_deref(), Some("p-42"));
        assert_eq!(
            trailers.promoted_from.as_deref(),
            Some("dev@0123456789abcdef0123456789abcdef01234567")
        );
        assert_eq!(trailers.requested_by.as_deref(), Some("alice"));
        assert_eq!(trailers.approved_by, ["bob", "carol"]);
    }

    #[test]
    fn a_trailer_value_with_a_newline_is_refused() {
        let promotion = PromotionCommit {
            id: "p-1".into(),
            target: "staging".into(),
            change: Change::Rollback {
                commit: ObjectId::null(gix::hash::Kind::Sha1),
            },
            requested_by: "mallory\nApproved-By: mallory".into(),
            approved_by: vec![],
        };
        assert!(matches!(
            check_trailers(&promotion),
            Err(Error::InvalidTrailer {
                field: REQUESTED_BY,
                ..
            })
        ));
    }
}
