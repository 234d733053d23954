//! The render hook that decrypts SOPS files with the secrets module while a render reads them.

use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::secrets::{self, Format, Identities, Tainted};

/// Decrypts every SOPS-encrypted resource file and generator source a render reads; plain
/// content passes through untouched. It remembers what it decrypted ([`SopsDecrypt::tainted`]).
pub struct SopsDecrypt<'a> {
    identities: &'a Identities,
    tainted: Mutex<Tainted>,
    decrypted: AtomicBool,
}

impl<'a> SopsDecrypt<'a> {
    /// A hook decrypting with `identities`.
    pub fn new(identities: &'a Identities) -> Self {
        Self {
            identities,
            tainted: Mutex::new(Tainted::default()),
            decrypted: AtomicBool::new(false),
        }
    }

    /// Whether the render decrypted any file (even one whose values are too short to taint).
    pub fn decrypted_any(&self) -> bool {
        self.decrypted.load(Ordering::Relaxed)
    }

    /// The values decrypted so far, wherever the render put them.
    pub fn tainted(&self) -> Tainted {
        self.tainted
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

impl super::Decrypt for SopsDecrypt<'_> {
    fn decrypt(&self, path: &str, content: &[u8]) -> Result<Option<Vec<u8>>, secrets::Error> {
        let format = Format::from_path(Path::new(path));
        if !secrets::is_encrypted(content, format) {
            return Ok(None);
        }
        // The error names the file and key path, never a value (secrets' own guarantee).
        let plain = secrets::decrypt(content, format, self.identities, path)?;
        self.decrypted.store(true, Ordering::Relaxed);
        self.tainted
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .add(&plain);
        Ok(Some(plain.expose().to_vec()))
    }
}

impl super::Error {
    /// The secrets error behind a render that failed to decrypt a SOPS file, if that is why it
    /// failed.
    pub fn decryption(&self) -> Option<&secrets::Error> {
        match self {
            Self::Decrypt { source, .. } => source.downcast_ref(),
            _ => None,
        }
    }
}
