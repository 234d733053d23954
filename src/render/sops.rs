//! The render hook that decrypts SOPS files with the secrets module while a render reads them.

use std::path::Path;

use crate::secrets::{self, Format, Identities};

/// Decrypts every SOPS-encrypted resource file and generator source a render reads; plain
/// content passes through untouched.
pub struct SopsDecrypt<'a> {
    identities: &'a Identities,
}

impl<'a> SopsDecrypt<'a> {
    /// A hook decrypting with `identities`.
    pub fn new(identities: &'a Identities) -> Self {
        Self { identities }
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
