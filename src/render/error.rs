//! The error of a render: every variant names the kustomization file and the field at fault.

use super::fs;
use crate::yaml;

/// Why a render failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A directory named as a base or the render's root holds no kustomization file.
    #[error("{dir}: no kustomization.yaml, kustomization.yml or Kustomization in it")]
    MissingKustomization {
        /// The directory, relative to the source root.
        dir: String,
    },
    /// kustomize refuses to choose between two kustomization files in one directory.
    #[error("{dir}: Found multiple kustomization files")]
    MultipleKustomizations {
        /// The directory, relative to the source root.
        dir: String,
    },
    /// The kustomization file is not YAML or has a field of the wrong shape.
    #[error("{file}: invalid kustomization: {message}")]
    InvalidKustomization {
        /// The kustomization file.
        file: String,
        /// What is wrong, with the field's path.
        message: String,
    },
    /// An entry climbs out of the source root with `..` or an absolute path.
    #[error("{file}: {field}: {entry}: the path leaves the source root")]
    OutsideRoot {
        /// The kustomization file naming the entry.
        file: String,
        /// Its field.
        field: &'static str,
        /// The entry, as written.
        entry: String,
    },
    /// kustomize's load restrictor: a file must sit in or below its kustomization's directory.
    #[error("{file}: {field}: security; file '{path}' is not in or below '{dir}'")]
    Restricted {
        /// The kustomization file naming the path.
        file: String,
        /// Its field.
        field: &'static str,
        /// The path the entry resolves to.
        path: String,
        /// The kustomization's directory.
        dir: String,
    },
    /// A symlink that leads out of the kustomization's directory.
    #[error(
        "{file}: {field}: security; file '{path}' resolves to '{real}', which is not in or below '{dir}'"
    )]
    RestrictedLink {
        /// The kustomization file naming the path.
        file: String,
        /// Its field.
        field: &'static str,
        /// The path the entry names.
        path: String,
        /// Where its symlinks lead.
        real: String,
        /// The kustomization's directory.
        dir: String,
    },
    /// Something a render must not do silently: remote bases, Helm charts, plugins.
    #[error("{file}: {field}: {}{what} are not supported", prefixed(entry))]
    Refused {
        /// The kustomization file.
        file: String,
        /// Its field.
        field: &'static str,
        /// The entry, as written; empty when the whole field is refused.
        entry: String,
        /// What is refused, in the plural.
        what: &'static str,
    },
    /// A file an entry names could not be read.
    #[error("{file}: {field}: {entry}")]
    Read {
        /// The kustomization file naming it.
        file: String,
        /// Its field.
        field: &'static str,
        /// The entry, as written.
        entry: String,
        /// Why it could not be read.
        #[source]
        source: fs::Error,
    },
    /// A file an entry names is not YAML.
    #[error("{file}: {field}: {path}")]
    Parse {
        /// The kustomization file naming it.
        file: String,
        /// Its field.
        field: &'static str,
        /// The entry, as written.
        path: String,
        /// Where and why the YAML is wrong.
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
    /// A field's transformation failed; the message words it as kustomize does, so that an
    /// error reads the same from both tools.
    #[error("{file}: {field}: {message}")]
    Field {
        /// The kustomization file.
        file: String,
        /// Its field.
        field: &'static str,
        /// What failed.
        message: String,
    },
    /// The output would hold a character kustomize refuses to print.
    #[error(
        "{object}: {path}: holds U+{character:04X}, a control character kustomize refuses to print"
    )]
    Unprintable {
        /// The object, `Kind namespace/name`.
        object: String,
        /// The field holding it.
        path: String,
        /// The character's code point.
        character: u32,
    },
    /// The render reads more objects than [`super::limits::MAX_OBJECTS`].
    #[error("{file}: {field}: {entry}: the render reads more than {max} objects")]
    TooManyObjects {
        /// The kustomization file whose entry passed the cap.
        file: String,
        /// Its field.
        field: &'static str,
        /// The entry, as written.
        entry: String,
        /// The cap.
        max: usize,
    },
    /// A kustomization reaches itself through its bases or components.
    #[error("{file}: {field}: cycle, the kustomization includes itself: {chain}")]
    Cycle {
        /// The kustomization file closing the cycle.
        file: String,
        /// Its field.
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
