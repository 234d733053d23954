//! The files a render reads, behind a small trait: a directory on disk and a tree read
//! straight from a Git revision render through the same code.
//!
//! Paths are relative to the root of the source (the repository root), `/`-separated and
//! already normalised: no `.` or `..` components, no leading or trailing `/`; the empty string
//! is the root. Confining paths to the root is the caller's job (the load restrictor); an
//! implementation only has to refuse what it cannot resolve inside its root, such as a symlink
//! that points outside it.

use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    File,
    Dir,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    pub name: String,
    pub kind: EntryKind,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: no such file or directory")]
    NotFound { path: String },
    #[error("{path}: is a directory, expected a file")]
    IsDir { path: String },
    #[error("{path}: is not a directory")]
    NotDir { path: String },
    #[error("{path}: resolves outside the source root")]
    OutsideRoot { path: String },
    #[error("{path}: cannot read it")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: cannot read it from the source: {message}")]
    Source { path: String, message: String },
    #[error("{path}: larger than {max} bytes, the most {what}")]
    TooLarge {
        path: String,
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
#[derive(Debug, Clone)]
pub struct DiskFs {
    root: PathBuf,
}

impl DiskFs {
    /// `root` must exist; it is canonicalised so that symlink targets can be checked against it.
    pub fn new(root: &Path) -> Result<Self, Error> {
        let root = root.canonicalize().map_err(|source| Error::Io {
            path: root.display().to_string(),
            source,
        })?;
        Ok(Self { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The real location of `path`, or `None` when nothing is there.
    fn resolve(&self, path: &str) -> Result<Option<PathBuf>, Error> {
        let joined = if path.is_empty() {
            self.root.clone()
        } else {
            self.root.join(path)
        };
        match joined.canonicalize() {
            Ok(real) if real.starts_with(&self.root) => Ok(Some(real)),
            Ok(_) => Err(Error::OutsideRoot {
                path: path.to_owned(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(Error::Io {
                path: path.to_owned(),
                source,
            }),
        }
    }
}

impl FileSystem for DiskFs {
    fn real_path(&self, path: &str) -> Result<Option<String>, Error> {
        Ok(self.resolve(path)?.map(|real| {
            real.strip_prefix(&self.root)
                .unwrap_or(&real)
                .components()
                .map(|c| c.as_os_str().to_string_lossy())
                .collect::<Vec<_>>()
                .join("/")
        }))
    }

    fn read_file(&self, path: &str) -> Result<Vec<u8>, Error> {
        self.read_file_at_most(path, u64::MAX)
    }

    fn read_file_at_most(&self, path: &str, max: u64) -> Result<Vec<u8>, Error> {
        use std::io::Read as _;
        let real = self.resolve(path)?.ok_or_else(|| Error::NotFound {
            path: path.to_owned(),
        })?;
        if real.is_dir() {
            return Err(Error::IsDir {
                path: path.to_owned(),
            });
        }
        let io = |source| Error::Io {
            path: path.to_owned(),
            source,
        };
        let mut bytes = Vec::new();
        std::fs::File::open(&real)
            .map_err(io)?
            .take(max.saturating_add(1))
            .read_to_end(&mut bytes)
            .map_err(io)?;
        Ok(bytes)
    }

    fn read_dir(&self, path: &str) -> Result<Vec<DirEntry>, Error> {
        let real = self.resolve(path)?.ok_or_else(|| Error::NotFound {
            path: path.to_owned(),
        })?;
        if !real.is_dir() {
            return Err(Error::NotDir {
                path: path.to_owned(),
            });
        }
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
        Ok(self.resolve(path)?.map(|real| {
            if real.is_dir() {
                EntryKind::Dir
            } else {
                EntryKind::File
            }
        }))
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
}
