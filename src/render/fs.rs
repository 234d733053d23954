//! The files a render reads, behind a small trait: a directory on disk and a tree read
//! straight from a Git revision render through the same code.
//!
//! Paths are relative to the root of the source (the repository root), `/`-separated and
//! already normalised: no `.` or `..` components, no leading or trailing `/`; the empty string
//! is the root. Confining paths to the root is the caller's job (the load restrictor); an
//! implementation only has to refuse what it cannot resolve inside its root, such as a symlink
//! that points outside it.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// What is at a path, once symlinks are followed: kustomize treats an entry differently by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// A file (a resource, a patch, a kustomization).
    File,
    /// A directory (a base or a component).
    Dir,
}

/// One entry of a directory listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    /// The entry's name within its directory.
    pub name: String,
    /// What it is, symlinks followed.
    pub kind: EntryKind,
}

/// Why a path could not be read. Every variant names the path, relative to the source root.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Nothing is at the path.
    #[error("{path}: no such file or directory")]
    NotFound {
        /// The path.
        path: String,
    },
    /// A file was expected.
    #[error("{path}: is a directory, expected a file")]
    IsDir {
        /// The path.
        path: String,
    },
    /// A directory was expected.
    #[error("{path}: is not a directory")]
    NotDir {
        /// The path.
        path: String,
    },
    /// A symlink leads out of the root.
    #[error("{path}: resolves outside the source root")]
    OutsideRoot {
        /// The path.
        path: String,
    },
    /// The operating system refused.
    #[error("{path}: cannot read it")]
    Io {
        /// The path.
        path: String,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// A source other than a disk (a Git tree) failed.
    #[error("{path}: cannot read it from the source: {message}")]
    Source {
        /// The path.
        path: String,
        /// The source's own words.
        message: String,
    },
    /// A file, or a render's files together, pass a cap of [`super::limits`].
    #[error("{path}: larger than {max} bytes, the most {what}")]
    TooLarge {
        /// The file.
        path: String,
        /// The cap.
        max: u64,
        /// Which cap: one file's or a whole render's.
        what: &'static str,
    },
}

/// Read access to one source tree.
pub trait FileSystem: Send + Sync {
    /// The whole content of the file at `path`.
    fn read_file(&self, path: &str) -> Result<Vec<u8>, Error>;
    /// The content of the file at `path`, or at least `max + 1` bytes of it when it is longer:
    /// a source that can stop early (a file on disk) does not read past that.
    fn read_file_at_most(&self, path: &str, _max: u64) -> Result<Vec<u8>, Error> {
        self.read_file(path)
    }
    /// The entries of the directory at `path`, sorted by name.
    fn read_dir(&self, path: &str) -> Result<Vec<DirEntry>, Error>;
    /// What is at `path`, or `None` when nothing is.
    fn kind(&self, path: &str) -> Result<Option<EntryKind>, Error>;
    /// Where `path` really is, every symlink on the way resolved, in the same relative form;
    /// `None` when nothing is there. The load restrictor checks this path, not the one
    /// written, as kustomize's does.
    fn real_path(&self, path: &str) -> Result<Option<String>, Error>;
}

/// A directory on disk. Symlinks are followed only while they stay inside the root.
///
/// It remembers where each directory it has seen resolves, so that a file costs one `lstat`
/// rather than a walk over every component of its path (a kustomization of thousands of files
/// otherwise spends most of its time there). It therefore reads a tree that does not change
/// while it is in use: make a new one for each render of a tree that may change.
#[derive(Debug)]
pub struct DiskFs {
    root: PathBuf,
    /// Real locations of the directories resolved so far, by their path under the root.
    dirs: Mutex<HashMap<String, PathBuf>>,
    /// Tells this `DiskFs`'s entry in [`LAST_FILE`] from another's.
    id: u64,
}

/// Ids of `DiskFs` values, never reused.
static NEXT_ID: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// The file [`FileSystem::kind`] found last on this thread, with the id of the `DiskFs` it
    /// belongs to: a render asks what an entry is and then reads it, and the second look-up
    /// would repeat the first. One per thread, as threads of a render read different files.
    static LAST_FILE: RefCell<Option<(u64, Found)>> = const { RefCell::new(None) };
}

/// A file resolved to its real location, with its size when it was looked at.
#[derive(Debug)]
struct Found {
    path: String,
    real: PathBuf,
    len: u64,
}

impl DiskFs {
    /// `root` must exist; it is canonicalised so that symlink targets can be checked against it.
    pub fn new(root: &Path) -> Result<Self, Error> {
        let root = root.canonicalize().map_err(|source| Error::Io {
            path: root.display().to_string(),
            source,
        })?;
        Ok(Self {
            root,
            dirs: Mutex::new(HashMap::new()),
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
        })
    }

    /// The file this thread's last [`FileSystem::kind`] found, if it is `path`: it is read next,
    /// so it is remembered no more.
    fn take_last_file(&self, path: &str) -> Option<Found> {
        LAST_FILE.with_borrow_mut(|last| match last {
            Some((id, found)) if *id == self.id && found.path == path => {
                last.take().map(|(_, found)| found)
            }
            _ => None,
        })
    }

    /// The canonical root every path is read under.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The real location of `path` and what is there, or `None` when nothing is.
    fn resolve(&self, path: &str) -> Result<Option<(PathBuf, EntryKind)>, Error> {
        Ok(self
            .resolve_sized(path)?
            .map(|(real, kind, _)| (real, kind)))
    }

    /// [`DiskFs::resolve`], with the size of what is there.
    fn resolve_sized(&self, path: &str) -> Result<Option<(PathBuf, EntryKind, u64)>, Error> {
        if path.is_empty() {
            return Ok(Some((self.root.clone(), EntryKind::Dir, 0)));
        }
        let (parent, name) = path.rsplit_once('/').unwrap_or(("", path));
        // Fast path: the parent is a known directory and the entry is no symlink, so its real
        // location is the parent's joined with its name and one `lstat` tells what it is.
        if let Some(parent_real) = self.resolve_dir(parent)? {
            let real = parent_real.join(name);
            match std::fs::symlink_metadata(&real) {
                Ok(meta) if !meta.file_type().is_symlink() => {
                    let kind = if meta.is_dir() {
                        EntryKind::Dir
                    } else {
                        EntryKind::File
                    };
                    return Ok(Some((real, kind, meta.len())));
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                _ => {}
            }
        }
        self.canonical(path)
    }

    /// The real location of the directory at `path`, from the cache when it was seen before;
    /// `None` when `path` is no directory.
    fn resolve_dir(&self, path: &str) -> Result<Option<PathBuf>, Error> {
        if path.is_empty() {
            return Ok(Some(self.root.clone()));
        }
        if let Some(real) = self.cached(path) {
            return Ok(Some(real));
        }
        match self.resolve(path)? {
            Some((real, EntryKind::Dir)) => {
                self.dirs
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert(path.to_owned(), real.clone());
                Ok(Some(real))
            }
            _ => Ok(None),
        }
    }

    fn cached(&self, path: &str) -> Option<PathBuf> {
        self.dirs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(path)
            .cloned()
    }

    /// A resolved location as a path relative to the root.
    fn relative(&self, real: &Path) -> String {
        // Resolved paths are already normal, as the root is, so the text after the root's is the
        // answer: comparing text costs a fraction of `Path::strip_prefix`'s component walk.
        let root = self.root.as_os_str().as_encoded_bytes();
        let under = real
            .as_os_str()
            .as_encoded_bytes()
            .strip_prefix(root)
            .and_then(|rest| {
                if rest.is_empty() || root.ends_with(b"/") {
                    Some(rest)
                } else {
                    rest.strip_prefix(b"/")
                }
            });
        match under {
            Some(under) => String::from_utf8_lossy(under).into_owned(),
            None => real
                .components()
                .map(|c| c.as_os_str().to_string_lossy())
                .collect::<Vec<_>>()
                .join("/"),
        }
    }

    /// The slow path for symlinks and anything unusual: the operating system resolves the
    /// whole path, and the result must stay inside the root.
    fn canonical(&self, path: &str) -> Result<Option<(PathBuf, EntryKind, u64)>, Error> {
        let io = |source| Error::Io {
            path: path.to_owned(),
            source,
        };
        match self.root.join(path).canonicalize() {
            Ok(real) if real.starts_with(&self.root) => {
                let meta = std::fs::metadata(&real).map_err(io)?;
                let kind = if meta.is_dir() {
                    EntryKind::Dir
                } else {
                    EntryKind::File
                };
                Ok(Some((real, kind, meta.len())))
            }
            Ok(_) => Err(Error::OutsideRoot {
                path: path.to_owned(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(io(source)),
        }
    }
}

impl FileSystem for DiskFs {
    fn real_path(&self, path: &str) -> Result<Option<String>, Error> {
        // A directory seen before, or the file `kind` just found, needs no new look-up: the load
        // restrictor asks for both for every file it lets through.
        if let Some(real) = self
            .dirs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(path)
        {
            return Ok(Some(self.relative(real)));
        }
        let last = LAST_FILE.with_borrow(|last| match last {
            Some((id, found)) if *id == self.id && found.path == path => {
                Some(self.relative(&found.real))
            }
            _ => None,
        });
        if last.is_some() {
            return Ok(last);
        }
        Ok(self.resolve(path)?.map(|(real, _)| self.relative(&real)))
    }

    fn read_file(&self, path: &str) -> Result<Vec<u8>, Error> {
        self.read_file_at_most(path, u64::MAX)
    }

    fn read_file_at_most(&self, path: &str, max: u64) -> Result<Vec<u8>, Error> {
        use std::io::Read as _;
        let (real, len) = match self.take_last_file(path) {
            Some(f) => (f.real, f.len),
            None => match self.resolve_sized(path)? {
                Some((real, EntryKind::File, len)) => (real, len),
                Some((_, EntryKind::Dir, _)) => {
                    return Err(Error::IsDir {
                        path: path.to_owned(),
                    });
                }
                None => {
                    return Err(Error::NotFound {
                        path: path.to_owned(),
                    });
                }
            },
        };
        let io = |source| Error::Io {
            path: path.to_owned(),
            source,
        };
        // Room for the whole file and one byte more, so that the read after the last one (the
        // one that finds the end) needs no larger buffer: two reads per file, not four.
        let room = len.min(max).saturating_add(1);
        let mut bytes = Vec::with_capacity(usize::try_from(room).unwrap_or(usize::MAX));
        std::fs::File::open(&real)
            .map_err(io)?
            .take(max.saturating_add(1))
            .read_to_end(&mut bytes)
            .map_err(io)?;
        Ok(bytes)
    }

    fn read_dir(&self, path: &str) -> Result<Vec<DirEntry>, Error> {
        let real = match self.resolve(path)? {
            Some((real, EntryKind::Dir)) => real,
            Some(_) => {
                return Err(Error::NotDir {
                    path: path.to_owned(),
                });
            }
            None => {
                return Err(Error::NotFound {
                    path: path.to_owned(),
                });
            }
        };
        let io = |source| Error::Io {
            path: path.to_owned(),
            source,
        };
        let mut entries = Vec::new();
        for entry in std::fs::read_dir(&real).map_err(io)? {
            let entry = entry.map_err(io)?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let child = if path.is_empty() {
                name.clone()
            } else {
                format!("{path}/{name}")
            };
            // A dangling or escaping symlink is listed by nothing rather than failing the
            // whole listing; reading it directly still reports why.
            if let Ok(Some(kind)) = self.kind(&child) {
                entries.push(DirEntry { name, kind });
            }
        }
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(entries)
    }

    fn kind(&self, path: &str) -> Result<Option<EntryKind>, Error> {
        let found = self.resolve_sized(path)?;
        if let Some((real, EntryKind::File, len)) = &found {
            let found = Found {
                path: path.to_owned(),
                real: real.clone(),
                len: *len,
            };
            LAST_FILE.set(Some((self.id, found)));
        }
        Ok(found.map(|(_, kind, _)| kind))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_and_directories_are_read_relative_to_the_root() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir_all(dir.path().join("base/sub")).expect("mkdir");
        std::fs::write(
            dir.path().join("base/kustomization.yaml"),
            "resources: []\n",
        )
        .expect("write");
        let fs = DiskFs::new(dir.path()).expect("root exists");
        assert_eq!(
            fs.read_file("base/kustomization.yaml").expect("readable"),
            b"resources: []\n"
        );
        let names: Vec<_> = fs
            .read_dir("base")
            .expect("listable")
            .into_iter()
            .map(|e| (e.name, e.kind))
            .collect();
        assert_eq!(
            names,
            [
                ("kustomization.yaml".to_owned(), EntryKind::File),
                ("sub".to_owned(), EntryKind::Dir)
            ]
        );
        assert_eq!(fs.kind("").expect("root"), Some(EntryKind::Dir));
        assert_eq!(fs.kind("missing").expect("no error"), None);
        assert!(matches!(
            fs.read_file("missing"),
            Err(Error::NotFound { .. })
        ));
        assert!(matches!(fs.read_file("base"), Err(Error::IsDir { .. })));
    }

    #[test]
    fn a_symlink_out_of_the_root_is_refused() {
        let outside = tempfile::tempdir().expect("temp dir");
        std::fs::write(outside.path().join("secret"), "x").expect("write");
        let dir = tempfile::tempdir().expect("temp dir");
        std::os::unix::fs::symlink(outside.path().join("secret"), dir.path().join("link"))
            .expect("symlink");
        let fs = DiskFs::new(dir.path()).expect("root exists");
        assert!(matches!(
            fs.read_file("link"),
            Err(Error::OutsideRoot { .. })
        ));
    }

    #[test]
    fn files_under_a_symlinked_directory_resolve_through_it_and_stay_inside_the_root() {
        let outside = tempfile::tempdir().expect("temp dir");
        std::fs::write(outside.path().join("secret"), "x").expect("write");
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir_all(dir.path().join("real/sub")).expect("mkdir");
        std::fs::write(dir.path().join("real/sub/a.yaml"), "a").expect("write");
        std::os::unix::fs::symlink("real", dir.path().join("inside")).expect("symlink");
        std::os::unix::fs::symlink(outside.path(), dir.path().join("escape")).expect("symlink");
        let fs = DiskFs::new(dir.path()).expect("root exists");
        // Twice each: the second read goes through the directory the first one remembered.
        for _ in 0..2 {
            assert_eq!(fs.read_file("inside/sub/a.yaml").expect("readable"), b"a");
            assert_eq!(
                fs.kind("inside/sub").expect("resolves"),
                Some(EntryKind::Dir)
            );
            assert!(matches!(
                fs.read_file("escape/secret"),
                Err(Error::OutsideRoot { .. })
            ));
            assert!(matches!(
                fs.read_dir("real/sub/a.yaml"),
                Err(Error::NotDir { .. })
            ));
            assert_eq!(fs.kind("real/missing/a.yaml").expect("no error"), None);
        }
    }
}
