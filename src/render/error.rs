//! The error of a render: every variant names the kustomization file and the field at fault.

use super::fs;
use crate::yaml;

/// Why a render failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{dir}: no kustomization.yaml, kustomization.yml or Kustomization in it")]
    MissingKustomization { dir: String },
    #[error("{dir}: Found multiple kustomization files")]
    MultipleKustomizations { dir: String },
    #[error("{file}: invalid kustomization: {message}")]
    InvalidKustomization { file: String, message: String },
    #[error("{file}: {field}: {entry}: the path leaves the source root")]
    OutsideRoot {
        file: String,
        field: &'static str,
        entry: String,
    },
    #[error("{file}: {field}: security; file '{path}' is not in or below '{dir}'")]
    Restricted {
        file: String,
        field: &'static str,
        path: String,
        dir: String,
    },
    /// A symlink that leads out of the kustomization's directory.
    #[error(
        "{file}: {field}: security; file '{path}' resolves to '{real}', which is not in or below '{dir}'"
    )]
    RestrictedLink {
        file: String,
        field: &'static str,
        path: String,
        real: String,
        dir: String,
    },
    #[error("{file}: {field}: {}{what} are not supported", prefixed(entry))]
    Refused {
        file: String,
        field: &'static str,
        entry: String,
        what: &'static str,
    },
    #[error("{file}: {field}: {entry}")]
    Read {
        file: String,
        field: &'static str,
        entry: String,
        #[source]
        source: fs::Error,
    },
    #[error("{file}: {field}: {path}")]
    Parse {
        file: String,
        field: &'static str,
        path: String,
        #[source]
        source: yaml::ParseError,
    },
    /// A SOPS file could not be decrypted; the source, a [`crate::secrets::Error`] (boxed to keep
    /// this type small), says why: MAC mismatch, no key, ...
    #[error("{file}: {field}: {entry}: cannot decrypt")]
    Decrypt {
        /// The kustomization file naming the SOPS file.
        file: String,
        /// Its field (`resources`, `secretGenerator`, ...).
        field: &'static str,
        /// The entry, as written.
        entry: String,
        /// The secrets error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("{file}: {field}: {message}")]
    Field {
        file: String,
        field: &'static str,
        message: String,
    },
    #[error(
        "{object}: {path}: holds U+{character:04X}, a control character kustomize refuses to print"
    )]
    Unprintable {
        object: String,
        path: String,
        character: u32,
    },
    #[error("{file}: {field}: {entry}: the render reads more than {max} objects")]
    TooManyObjects {
        file: String,
        field: &'static str,
        entry: String,
        max: usize,
    },
    #[error("{file}: {field}: cycle, the kustomization includes itself: {chain}")]
    Cycle {
        file: String,
        field: &'static str,
        /// The directories from the first inclusion to the repeated one, `a -> b -> a`.
        chain: String,
    },
}

/// `entry: `, or nothing when there is no entry to name.
fn prefixed(entry: &str) -> String {
    if entry.is_empty() {
        String::new()
    } else {
        format!("{entry}: ")
    }
}
