//! Caps on what one render reads, so that a hostile or mistaken repository cannot exhaust the
//! service's memory: bytes per file, bytes per render, objects per render. Nesting depth and
//! alias expansion are capped where YAML is read ([`crate::yaml::events`]).
//!
//! Flux refuses an encrypted file over 5 MiB (kustomize-controller's `maxEncryptedFileSize`);
//! plain manifests get more room because CRD bundles run to several MiB. The caps sit far above
//! any real overlay and far below what would hurt the service.

use std::sync::atomic::{AtomicU64, Ordering};

use super::fs::{DirEntry, EntryKind, Error, FileSystem};

/// Most bytes one file may hold.
pub const MAX_FILE_BYTES: u64 = 16 << 20;
/// Most bytes one render may read, all files together.
pub const MAX_RENDER_BYTES: u64 = 128 << 20;
/// Most objects one render may read from resource files.
pub const MAX_OBJECTS: usize = 100_000;

/// A source that refuses files past [`MAX_FILE_BYTES`] and reading past [`MAX_RENDER_BYTES`].
pub struct Limited<'a> {
    inner: &'a dyn FileSystem,
    read: AtomicU64,
}

impl<'a> Limited<'a> {
    /// Caps reads of `inner`; one `Limited` per render, as it counts the render's bytes.
    pub fn new(inner: &'a dyn FileSystem) -> Self {
        Self {
            inner,
            read: AtomicU64::new(0),
        }
    }
}

impl FileSystem for Limited<'_> {
    fn real_path(&self, path: &str) -> Result<Option<String>, Error> {
        self.inner.real_path(path)
    }

    fn read_file(&self, path: &str) -> Result<Vec<u8>, Error> {
        self.read_file_at_most(path, MAX_FILE_BYTES)
    }

    fn read_file_at_most(&self, path: &str, max: u64) -> Result<Vec<u8>, Error> {
        let max = max.min(MAX_FILE_BYTES);
        let bytes = self.inner.read_file_at_most(path, max)?;
        let len = bytes.len() as u64;
        if len > max {
            return Err(Error::TooLarge {
                path: path.to_owned(),
                max,
                what: "one file may hold",
            });
        }
        let before = self.read.fetch_add(len, Ordering::Relaxed);
        if before + len > MAX_RENDER_BYTES {
            return Err(Error::TooLarge {
                path: path.to_owned(),
                max: MAX_RENDER_BYTES,
                what: "one render may read with every file before it",
            });
        }
        Ok(bytes)
    }

    fn read_dir(&self, path: &str) -> Result<Vec<DirEntry>, Error> {
        self.inner.read_dir(path)
    }

    fn kind(&self, path: &str) -> Result<Option<EntryKind>, Error> {
        self.inner.kind(path)
    }
}
