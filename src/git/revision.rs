//! The revision each environment should run, and the files of a revision.

use gix::ObjectId;

use super::{Repository, TRACKING_PREFIX, TreeFs};
use crate::pipeline::{Pipeline, Source};

/// Why a revision or a file in it could not be read.
#[derive(Debug, thiserror::Error)]
// Each variant is described by its message, and its fields by the names the message uses.
#[allow(missing_docs)]
pub enum Error {
    #[error("environment {environment:?} is not in the pipeline")]
    UnknownEnvironment { environment: String },
    #[error("{url}: branch {branch:?} does not exist on the remote (as of the last fetch)")]
    MissingBranch {
        url: super::RemoteUrl,
        branch: String,
    },
    #[error("{path:?} does not exist at {commit} of branch {branch:?}")]
    MissingPath {
        branch: String,
        commit: ObjectId,
        path: String,
    },
    #[error("{path:?} at {commit} is not a directory")]
    NotADirectory { commit: ObjectId, path: String },
    #[error("cannot read {what} from the repository cache")]
    Read {
        what: String,
        #[source]
        source: Box<gix::Error>,
    },
}

fn read_error(what: impl Into<String>) -> impl FnOnce(gix::Error) -> Error {
    let what = what.into();
    move |source| Error::Read {
        what,
        source: Box::new(source),
    }
}

/// Where an environment lives: a directory on a branch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The branch.
    pub branch: String,
    /// Relative to the repository root; empty for the whole branch.
    pub path: String,
}

impl Location {
    /// The branch and directory of `environment` in `pipeline`.
    pub fn of(pipeline: &Pipeline, environment: &str) -> Result<Self, Error> {
        let env = pipeline
            .environment(environment)
            .ok_or_else(|| Error::UnknownEnvironment {
                environment: environment.to_owned(),
            })?;
        Ok(match &env.source {
            Source::Overlay { path } => Location {
                branch: pipeline.repository.branch.clone(),
                path: path.clone(),
            },
            Source::Branch { branch, path } => Location {
                branch: branch.clone(),
                path: path.clone(),
            },
        })
    }

    /// The repository path of `file`, relative to this directory.
    pub fn file(&self, file: &str) -> String {
        if self.path.is_empty() {
            file.to_owned()
        } else {
            format!("{}/{file}", self.path)
        }
    }
}

/// The revision an environment should run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revision {
    /// The environment.
    pub environment: String,
    /// Where its manifests are.
    pub location: Location,
    /// The tip of the environment's branch.
    pub commit: ObjectId,
    /// The tree of the environment's directory at that commit: when only this changes between
    /// two commits, only this environment's own files changed.
    pub tree: ObjectId,
}

impl Repository {
    /// The tip of `branch` on the remote as of the last fetch, or `None` if it has no such branch.
    pub fn try_branch_tip(&self, branch: &str) -> Result<Option<ObjectId>, Error> {
        let repo = self.repo();
        let name = format!("{TRACKING_PREFIX}{branch}");
        let reference = repo
            .try_find_reference(name.as_str())
            .map_err(read_error(format!("reference {name}")))?;
        match reference {
            None => Ok(None),
            Some(mut r) => Ok(Some(
                r.peel_to_id()
                    .map_err(read_error(format!("reference {name}")))?
                    .detach(),
            )),
        }
    }

    /// Like [`try_branch_tip`](Self::try_branch_tip), absence being an error.
    pub fn branch_tip(&self, branch: &str) -> Result<ObjectId, Error> {
        self.try_branch_tip(branch)?
            .ok_or_else(|| Error::MissingBranch {
                url: self.inner.url.clone(),
                branch: branch.to_owned(),
            })
    }

    /// The revision `environment` should run, as of the last fetch.
    pub fn revision(&self, pipeline: &Pipeline, environment: &str) -> Result<Revision, Error> {
        let location = Location::of(pipeline, environment)?;
        let commit = self.branch_tip(&location.branch)?;
        let tree = self.path_tree(&location, commit)?;
        Ok(Revision {
            environment: environment.to_owned(),
            location,
            commit,
            tree,
        })
    }

    /// The id of the tree at `location.path` in `commit`.
    pub(crate) fn path_tree(
        &self,
        location: &Location,
        commit: ObjectId,
    ) -> Result<ObjectId, Error> {
        let repo = self.repo();
        let root = commit_tree(&repo, commit)?;
        if location.path.is_empty() {
            return Ok(root);
        }
        let tree = repo
            .find_tree(root)
            .map_err(read_error(format!("tree of {commit}")))?;
        let entry = tree
            .lookup_entry_by_path(&location.path)
            .map_err(read_error(format!("{} at {commit}", location.path)))?
            .ok_or_else(|| Error::MissingPath {
                branch: location.branch.clone(),
                commit,
                path: location.path.clone(),
            })?;
        if !entry.mode().is_tree() {
            return Err(Error::NotADirectory {
                commit,
                path: location.path.clone(),
            });
        }
        Ok(entry.object_id())
    }

    /// The files of `commit` (its whole tree), read from the object database on demand.
    pub fn tree(&self, commit: ObjectId) -> Result<TreeFs, Error> {
        let repo = self.repo();
        let root = commit_tree(&repo, commit)?;
        Ok(TreeFs::new(self.thread_safe(), root))
    }
}

pub(crate) fn commit_tree(repo: &gix::Repository, commit: ObjectId) -> Result<ObjectId, Error> {
    repo.find_commit(commit)
        .and_then(|c| c.tree_id())
        .map(gix::Id::detach)
        .map_err(read_error(format!("commit {commit}")))
}
