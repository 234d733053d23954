//! SSH signatures on the commits Stagehand writes, made as git makes them with
//! `gpg.format = ssh`: an SSHSIG (OpenSSH's `PROTOCOL.sshsig`) in the namespace `git`, over the
//! commit object without its `gpgsig` header, armored into that header. Made in-process with
//! RustCrypto's `ssh-key`; no `ssh-keygen` runs.

use std::path::Path;

use gix::objs::WriteTo as _;
use ssh_key::{HashAlg, LineEnding, PrivateKey};
use zeroize::Zeroizing;

/// The SSHSIG namespace git signs and verifies commits in.
pub const NAMESPACE: &str = "git";
/// The commit header that holds the signature (SHA-1 repositories).
pub const HEADER: &str = "gpgsig";

/// A private key that signs commits. Neither `Debug` nor errors ever show the key, only where
/// it came from and its public fingerprint.
pub struct Signer {
    key: PrivateKey,
    origin: String,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("origin", &self.origin)
            .field("fingerprint", &self.fingerprint())
            .finish()
    }
}

/// Why a signing key cannot be used. Messages name the key's origin (a file, a Secret entry),
/// never its content.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)]
pub enum KeyError {
    #[error("signing key {origin}: cannot read it")]
    Read {
        origin: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "signing key {origin}: not an OpenSSH private key (expected \"-----BEGIN OPENSSH PRIVATE \
         KEY-----\", as ssh-keygen writes): {reason}"
    )]
    Format { origin: String, reason: String },
    #[error(
        "signing key {origin}: protected by a passphrase; Stagehand signs unattended and takes \
         keys without one (`ssh-keygen -p -N '' -f <copy>` removes it from a copy)"
    )]
    Encrypted { origin: String },
    #[error("signing key {origin}: {algorithm} keys cannot sign here (ed25519, ecdsa and rsa can)")]
    Unsupported { origin: String, algorithm: String },
}

/// Why a commit could not be signed.
#[derive(Debug, thiserror::Error)]
#[error("cannot sign with the key {origin}: {reason}")]
pub struct SignError {
    origin: String,
    reason: String,
}

impl Signer {
    /// The key in the OpenSSH private key file at `path`.
    pub fn from_file(path: &Path) -> Result<Self, KeyError> {
        let origin = path.display().to_string();
        let bytes = Zeroizing::new(std::fs::read(path).map_err(|source| KeyError::Read {
            origin: origin.clone(),
            source,
        })?);
        Self::from_bytes(origin, &bytes)
    }

    /// The key in `bytes`, an OpenSSH private key; `origin` names it in errors (a file, a
    /// Secret entry).
    pub fn from_bytes(origin: impl Into<String>, bytes: &[u8]) -> Result<Self, KeyError> {
        let origin = origin.into();
        let key = PrivateKey::from_openssh(bytes).map_err(|e| KeyError::Format {
            origin: origin.clone(),
            reason: e.to_string(),
        })?;
        if key.is_encrypted() {
            return Err(KeyError::Encrypted { origin });
        }
        let signer = Self { key, origin };
        // Signing once proves the algorithm is one the crate can sign with, so that a key that
        // cannot sign stops `serve` at start rather than failing the first promotion.
        signer
            .key
            .sign(NAMESPACE, HashAlg::Sha512, b"")
            .map_err(|_| KeyError::Unsupported {
                origin: signer.origin.clone(),
                algorithm: signer.key.algorithm().to_string(),
            })?;
        Ok(signer)
    }

    /// Where the key came from.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The public key's SHA-256 fingerprint, as `ssh-keygen -l` prints it.
    pub fn fingerprint(&self) -> String {
        self.key.fingerprint(HashAlg::Sha256).to_string()
    }

    /// The public key as an `authorized_keys` / `allowed_signers` line would carry it.
    pub fn public_key(&self) -> String {
        self.key
            .public_key()
            .to_openssh()
            .expect("a parsed public key encodes again")
    }

    /// Signs `commit` as `git commit -S` does: the signature covers the object as it is
    /// without a signature header, and goes into that header.
    pub fn sign_commit(&self, commit: &mut gix::objs::Commit) -> Result<(), SignError> {
        commit.extra_headers.retain(|(name, _)| name != HEADER);
        let mut payload = Vec::new();
        commit
            .write_to(&mut payload)
            .expect("writing a commit into memory cannot fail");
        let signature = self
            .key
            .sign(NAMESPACE, HashAlg::Sha512, &payload)
            .and_then(|sig| sig.to_pem(LineEnding::LF))
            .map_err(|e| SignError {
                origin: self.origin.clone(),
                reason: e.to_string(),
            })?;
        commit.extra_headers.push((HEADER.into(), signature.into()));
        Ok(())
    }
}
