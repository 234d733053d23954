//! A tree of a commit read straight from the object database, through the render module's
//! [`FileSystem`] trait: nothing is checked out, only the objects a render touches are read.

use gix::ObjectId;
use gix::objs::tree::EntryKind as GitKind;

use crate::render::fs::{DirEntry, EntryKind, Error, FileSystem};

/// Symlinks followed while resolving one path, like the kernel's limit.
const MAX_SYMLINKS: usize = 40;

/// The files of one tree (usually a commit's root tree).
#[derive(Clone)]
pub struct TreeFs {
    repo: gix::ThreadSafeRepository,
    root: ObjectId,
}

impl std::fmt::Debug for TreeFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TreeFs").field("root", &self.root).finish()
    }
}

/// What a path resolves to inside the tree.
enum Resolved {
    Tree(ObjectId),
    Blob(ObjectId),
}

impl TreeFs {
    pub(crate) fn new(repo: gix::ThreadSafeRepository, root: ObjectId) -> Self {
        Self { repo, root }
    }

    /// The id of the root tree.
    pub fn tree_id(&self) -> ObjectId {
        self.root
    }

    fn source_error(path: &str, e: impl std::fmt::Display) -> Error {
        Error::Source {
            path: path.to_owned(),
            message: e.to_string(),
        }
    }

    /// Walks `path` from the root, following symlinks that stay inside the tree.
    fn resolve(&self, repo: &gix::Repository, path: &str) -> Result<Option<Resolved>, Error> {
        Ok(self.walk(repo, path)?.map(|(resolved, _)| resolved))
    }

    /// [`Self::resolve`], with the path it resolved to, symlinks replaced by their targets.
    fn walk(
        &self,
        repo: &gix::Repository,
        path: &str,
    ) -> Result<Option<(Resolved, String)>, Error> {
        let mut remaining: std::collections::VecDeque<String> = path
            .split('/')
            .filter(|c| !c.is_empty())
            .map(str::to_owned)
            .collect();
        // The trees from the root down to the current directory, so `..` can go back up.
        let mut stack = vec![self.root];
        // The names of the directories on the stack below the root.
        let mut names: Vec<String> = Vec::new();
        let mut links = 0;
        while let Some(component) = remaining.pop_front() {
            match component.as_str() {
                "." => continue,
                ".." => {
                    if stack.len() == 1 {
                        return Err(Error::OutsideRoot {
                            path: path.to_owned(),
                        });
                    }
                    stack.pop();
                    names.pop();
                    continue;
                }
                _ => {}
            }
            let dir = *stack.last().expect("the stack always holds the root");
            let tree = repo
                .find_tree(dir)
                .map_err(|e| Self::source_error(path, e))?;
            let Some(entry) = tree.find_entry(component.as_str()) else {
                return Ok(None);
            };
            let id = entry.oid().to_owned();
            match entry.mode().kind() {
                GitKind::Tree => {
                    stack.push(id);
                    names.push(component);
                }
                GitKind::Blob | GitKind::BlobExecutable => {
                    if remaining.is_empty() {
                        names.push(component);
                        return Ok(Some((Resolved::Blob(id), names.join("/"))));
                    }
                    return Err(Error::NotDir {
                        path: path.to_owned(),
                    });
                }
                GitKind::Link => {
                    links += 1;
                    if links > MAX_SYMLINKS {
                        return Err(Self::source_error(path, "too many levels of symlinks"));
                    }
                    let target = repo
                        .find_blob(id)
                        .map_err(|e| Self::source_error(path, e))?;
                    let target = String::from_utf8_lossy(&target.data).into_owned();
                    if target.starts_with('/') {
                        return Err(Error::OutsideRoot {
                            path: path.to_owned(),
                        });
                    }
                    for part in target.rsplit('/').filter(|c| !c.is_empty()) {
                        remaining.push_front(part.to_owned());
                    }
                }
                GitKind::Commit => {
                    return Err(Self::source_error(
                        path,
                        "is a submodule, which is not part of this repository",
                    ));
                }
            }
        }
        Ok(Some((
            Resolved::Tree(*stack.last().expect("the stack always holds the root")),
            names.join("/"),
        )))
    }
}

impl FileSystem for TreeFs {
    fn real_path(&self, path: &str) -> Result<Option<String>, Error> {
        let repo = self.repo.to_thread_local();
        Ok(self.walk(&repo, path)?.map(|(_, real)| real))
    }

    fn read_file(&self, path: &str) -> Result<Vec<u8>, Error> {
        let repo = self.repo.to_thread_local();
        match self.resolve(&repo, path)? {
            None => Err(Error::NotFound {
                path: path.to_owned(),
            }),
            Some(Resolved::Tree(_)) => Err(Error::IsDir {
                path: path.to_owned(),
            }),
            Some(Resolved::Blob(id)) => Ok(repo
                .find_blob(id)
                .map_err(|e| Self::source_error(path, e))?
                .take_data()),
        }
    }

    fn read_dir(&self, path: &str) -> Result<Vec<DirEntry>, Error> {
        let repo = self.repo.to_thread_local();
        let id = match self.resolve(&repo, path)? {
            None => {
                return Err(Error::NotFound {
                    path: path.to_owned(),
                });
            }
            Some(Resolved::Blob(_)) => {
                return Err(Error::NotDir {
                    path: path.to_owned(),
                });
            }
            Some(Resolved::Tree(id)) => id,
        };
        let tree = repo
            .find_tree(id)
            .map_err(|e| Self::source_error(path, e))?;
        let mut entries = Vec::new();
        for entry in tree.iter() {
            let entry = entry.map_err(|e| Self::source_error(path, e))?;
            let name = entry.filename().to_string();
            let kind = match entry.mode().kind() {
                GitKind::Tree => EntryKind::Dir,
                GitKind::Blob | GitKind::BlobExecutable => EntryKind::File,
                GitKind::Link => {
                    let child = if path.is_empty() {
                        name.clone()
                    } else {
                        format!("{path}/{name}")
                    };
                    // Like the disk: a dangling or escaping link is not listed.
                    match self.resolve(&repo, &child) {
                        Ok(Some(Resolved::Tree(_))) => EntryKind::Dir,
                        Ok(Some(Resolved::Blob(_))) => EntryKind::File,
                        _ => continue,
                    }
                }
                GitKind::Commit => continue,
            };
            entries.push(DirEntry { name, kind });
        }
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(entries)
    }

    fn kind(&self, path: &str) -> Result<Option<EntryKind>, Error> {
        let repo = self.repo.to_thread_local();
        Ok(self.resolve(&repo, path)?.map(|r| match r {
            Resolved::Tree(_) => EntryKind::Dir,
            Resolved::Blob(_) => EntryKind::File,
        }))
    }
}
