//! Writing secrets files and key files to disk: atomically, and never over a key.

use std::io::Write as _;
use std::path::Path;

use zeroize::Zeroizing;

use super::error::Error;
use super::pq;
use crate::yaml::time;

/// Replaces `path` with `bytes` through a temporary file in the same directory and a rename,
/// so that a crash or a full disk leaves either the old file or the new one, never a
/// truncated mix. The new file keeps the old one's permissions.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let write_error = |source| Error::Write {
        file: path.to_owned(),
        source,
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| write_error(std::io::ErrorKind::InvalidInput.into()))?;
    let permissions = std::fs::metadata(path).ok().map(|m| m.permissions());
    let (temp_path, mut temp) = create_temp(dir, &name.to_string_lossy()).map_err(write_error)?;
    let written = (|| {
        temp.write_all(bytes)?;
        if let Some(p) = permissions {
            temp.set_permissions(p)?;
        }
        temp.sync_all()?;
        drop(temp);
        std::fs::rename(&temp_path, path)?;
        // The rename itself reaches the disk with the directory.
        std::fs::File::open(dir)?.sync_all()
    })();
    if written.is_err() {
        // The temporary file is ours and incomplete; the original is untouched.
        let _ = std::fs::remove_file(&temp_path);
    }
    written.map_err(write_error)
}

/// A new file beside the target, named after it and the process so that two writers do not
/// meet; `create_new` refuses to follow a planted file or symlink.
fn create_temp(dir: &Path, name: &str) -> std::io::Result<(std::path::PathBuf, std::fs::File)> {
    let mut attempt = 0u32;
    loop {
        let candidate = dir.join(format!(".{name}.{}.{attempt}.tmp", std::process::id()));
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&candidate)
        {
            Ok(file) => return Ok((candidate, file)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && attempt < 100 => {
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

/// The age key types `keygen` makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    /// `AGE-SECRET-KEY-1…` / `age1…`, what `age-keygen` makes.
    X25519,
    /// `AGE-SECRET-KEY-PQ-1…` / `age1pq1…`, what `age-keygen -pq` makes.
    PostQuantum,
}

/// A new identity, as `age-keygen` writes it. No `Debug`: the file text holds the key.
pub struct NewKey {
    /// The recipient (public key) to encrypt to.
    pub recipient: String,
    file_text: Zeroizing<String>,
}

impl NewKey {
    /// What `age-keygen` writes: a `# created:` comment, a `# public key:` comment and the
    /// identity line.
    pub fn file_text(&self) -> &str {
        &self.file_text
    }
}

/// Generates an identity of `kind` from the operating system's randomness.
pub fn keygen(kind: KeyType) -> NewKey {
    use age::secrecy::ExposeSecret as _;
    let (recipient, identity) = match kind {
        KeyType::X25519 => {
            let id = age::x25519::Identity::generate();
            (
                id.to_public().to_string(),
                Zeroizing::new(id.to_string().expose_secret().to_owned()),
            )
        }
        KeyType::PostQuantum => {
            let id = pq::Identity::generate();
            (id.to_public().to_string(), id.to_secret_string())
        }
    };
    let file_text = Zeroizing::new(format!(
        "# created: {}\n# public key: {recipient}\n{}\n",
        time::now_rfc3339(),
        identity.as_str()
    ));
    NewKey {
        recipient,
        file_text,
    }
}

/// Writes a new key file readable by its owner only. An existing file is never overwritten
/// (as `age-keygen -o` refuses to): it may hold the only copy of a key.
pub fn write_new_key_file(path: &Path, key: &NewKey) -> Result<(), Error> {
    let write_error = |source| Error::Write {
        file: path.to_owned(),
        source,
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).map_err(write_error)?;
    file.write_all(key.file_text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(write_error)
}
