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
    /// Bytes counted against [`MAX_RENDER_BYTES`].
    read: AtomicU64,
    /// Bytes read ahead of their turn and not counted yet ([`Limited::read_ahead`]).
    ahead: AtomicU64,
}

impl<'a> Limited<'a> {
    /// Caps reads of `inner`; one `Limited` per render, as it counts the render's bytes.
    pub fn new(inner: &'a dyn FileSystem) -> Self {
        Self {
            inner,
            read: AtomicU64::new(0),
            ahead: AtomicU64::new(0),
        }
    }

    /// Reads a file ahead of its turn, on any thread: its bytes count against the render's cap
    /// only when [`Limited::charge`] is called in the order a sequential render would read, so
    /// which file passes the cap does not depend on which thread read first. `None` once the
    /// bytes read so far, counted or not, pass the cap: the caller reads the file in its turn
    /// with [`FileSystem::read_file`] instead. Memory stays bounded by the cap and one file
    /// per thread.
    pub fn read_ahead(&self, path: &str) -> Option<Result<Vec<u8>, Error>> {
        let so_far = self.read.load(Ordering::Relaxed) + self.ahead.load(Ordering::Relaxed);
        if so_far > MAX_RENDER_BYTES {
            return None;
        }
        let bytes = self.read_capped(path, MAX_FILE_BYTES);
        if let Ok(b) = &bytes {
            self.ahead.fetch_add(b.len() as u64, Ordering::Relaxed);
        }
        Some(bytes)
    }

    /// Counts `len` bytes of `path`, read by [`Limited::read_ahead`], against the render's cap.
    pub fn charge(&self, path: &str, len: u64) -> Result<(), Error> {
        self.ahead.fetch_sub(len, Ordering::Relaxed);
        self.count(path, len)
    }

    /// The file, refused when longer than `max` (at most [`MAX_FILE_BYTES`]); not counted.
    fn read_capped(&self, path: &str, max: u64) -> Result<Vec<u8>, Error> {
        let max = max.min(MAX_FILE_BYTES);
        let bytes = self.inner.read_file_at_most(path, max)?;
        if bytes.len() as u64 > max {
            return Err(Error::TooLarge {
                path: path.to_owned(),
                max,
                what: "one file may hold",
            });
        }
        Ok(bytes)
    }

    fn count(&self, path: &str, len: u64) -> Result<(), Error> {
        let before = self.read.fetch_add(len, Ordering::Relaxed);
        if before + len > MAX_RENDER_BYTES {
            return Err(Error::TooLarge {
                path: path.to_owned(),
                max: MAX_RENDER_BYTES,
                what: "one render may read with every file before it",
            });
        }
        Ok(())
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
        let bytes = self.read_capped(path, max)?;
        self.count(path, bytes.len() as u64)?;
        Ok(bytes)
    }

    fn read_dir(&self, path: &str) -> Result<Vec<DirEntry>, Error> {
        self.inner.read_dir(path)
    }

    fn kind(&self, path: &str) -> Result<Option<EntryKind>, Error> {
        self.inner.kind(path)
    }
}
