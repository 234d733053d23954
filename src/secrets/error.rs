//! What can go wrong with a secrets file. Every variant names the file; those about one value
//! name its key path. None carries a value, decrypted or not: what a file holds is only ever
//! described by where it sits.

use std::path::PathBuf;

/// Where a value sits in its document, e.g. `data.password` or `items[2]`.
pub type KeyPath = String;

/// Why a secrets file could not be read, decrypted, encrypted or written.
#[derive(Debug, thiserror::Error)]
// Each variant is described by its message, and its fields by the names the message uses.
#[allow(missing_docs)]
pub enum Error {
    #[error("{file}: cannot read")]
    Read {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("{file}: cannot write")]
    Write {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("{file}: not valid {format} (line {line}): {problem}")]
    Syntax {
        file: PathBuf,
        format: &'static str,
        line: usize,
        problem: String,
    },
    #[error("{file}: {key_path}: {problem}")]
    Structure {
        file: PathBuf,
        key_path: KeyPath,
        problem: &'static str,
    },
    #[error("{file}: not a sops file (no `sops` metadata)")]
    NotEncrypted { file: PathBuf },
    #[error("{file}: already a sops file")]
    AlreadyEncrypted { file: PathBuf },
    #[error("{file}: sops metadata field `{field}`: {problem}")]
    Metadata {
        file: PathBuf,
        field: &'static str,
        problem: &'static str,
    },
    #[error(
        "{file}: the data key is not encrypted to any age recipient (only to key services Stagehand does not use)"
    )]
    NoAgeRecipient { file: PathBuf },
    #[error("{file}: no age identity was loaded, so the data key cannot be decrypted")]
    NoIdentities { file: PathBuf },
    #[error(
        "{file}: none of the loaded age identities matches a recipient of the file ({recipients})"
    )]
    NoMatchingIdentity { file: PathBuf, recipients: String },
    #[error("{file}: the encrypted data key for recipient {recipient} is damaged")]
    DataKey { file: PathBuf, recipient: String },
    #[error("{file}: {key_path}: not a well-formed ENC[AES256_GCM,...] value")]
    MalformedValue { file: PathBuf, key_path: KeyPath },
    #[error(
        "{file}: {key_path}: the encrypted value does not authenticate (tampered, or moved from another key)"
    )]
    ValueAuthentication { file: PathBuf, key_path: KeyPath },
    #[error("{file}: {key_path}: unknown value type `{type_name}`")]
    UnknownType {
        file: PathBuf,
        key_path: KeyPath,
        type_name: String,
    },
    #[error("{file}: {key_path}: decrypted text is not a valid `{type_name}`")]
    BadPlaintext {
        file: PathBuf,
        key_path: KeyPath,
        type_name: &'static str,
    },
    #[error("{file}: {key_path}: {what} values cannot be stored by sops")]
    Unsupported {
        file: PathBuf,
        key_path: KeyPath,
        what: &'static str,
    },
    #[error("{file}: the MAC cannot be decrypted (edited or damaged)")]
    MacUndecryptable { file: PathBuf },
    #[error("{file}: MAC mismatch: the file was changed after sops wrote it")]
    MacMismatch { file: PathBuf },
    #[error("{file}: {problem}")]
    Encrypt {
        file: PathBuf,
        problem: &'static str,
    },
    #[error("{file}: invalid age recipient {recipient:?}")]
    Recipient { file: PathBuf, recipient: String },
    #[error("{file}: `{field}`: invalid regular expression")]
    Regex { file: PathBuf, field: &'static str },
    #[error("{source_name}: line {line}: not an age identity")]
    Identity { source_name: String, line: usize },
    #[error("{source_name}: {problem}")]
    KeySource {
        source_name: String,
        problem: String,
    },
    #[error("{file}: no creation rule matches {target}")]
    NoCreationRule { file: PathBuf, target: PathBuf },
}

impl Error {
    /// The MAC did not match or could not be decrypted: the file was altered.
    pub fn is_mac_mismatch(&self) -> bool {
        matches!(
            self,
            Error::MacMismatch { .. } | Error::MacUndecryptable { .. }
        )
    }

    /// No loaded identity could open the data key.
    pub fn is_no_matching_key(&self) -> bool {
        matches!(
            self,
            Error::NoIdentities { .. }
                | Error::NoMatchingIdentity { .. }
                | Error::NoAgeRecipient { .. }
        )
    }
}
