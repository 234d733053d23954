//! SOPS files encrypted to age, read and written as sops 3.11 does, without sops.
//!
//! # API for render and reconcile
//!
//! ```no_run
//! use stagehand::secrets::{self, Format, Identities};
//! # fn main() -> Result<(), secrets::Error> {
//! let ids = Identities::from_sops_environment()?; // or Identities::from_secret_data(..)
//! let bytes = std::fs::read("secret.enc.yaml").expect("readable");
//! if secrets::is_encrypted(&bytes, Format::Yaml) {
//!     let plain = secrets::decrypt(&bytes, Format::Yaml, &ids, "overlays/dev/secret.enc.yaml")?;
//!     let yaml: &[u8] = plain.expose(); // what `sops -d` prints; zeroized when `plain` drops
//! #   let _ = yaml;
//! }
//! # Ok(()) }
//! ```
//!
//! - [`Identities`]: age identities (x25519 and OpenSSH ed25519/RSA). Load them as sops does
//!   ([`Identities::from_sops_environment`]), from a key file ([`Identities::add_file`]) or from
//!   a Kubernetes Secret's `*.agekey` entries ([`Identities::from_secret_data`]).
//! - [`Keyring`]: the identities a running service decrypts with, reloaded from a
//!   [`KeySource`] (a mounted Secret directory, [`KeyDirectory`], or a Secret read through the
//!   API) without a restart: global entries and `<environment>.agekey` entries.
//! - [`decrypt`] / [`decrypt_with`]: bytes of a sops file to a [`Plaintext`] (the decrypted
//!   document in the same, or another, [`Format`]). Nothing is returned unless every value
//!   decrypted and the MAC matched (unless [`DecryptOptions::ignore_mac`]).
//! - [`is_encrypted`]: whether bytes are a sops file (carry sops metadata).
//! - [`encrypt`], [`rotate`], [`config::creation_rule_for`]: writing files `sops -d` opens.
//!
//! Errors ([`Error`]) name the file (the `path_for_errors` argument) and the key path, never a
//! value. [`Plaintext`] prints as `<redacted>` under `Debug` and `Display`.

mod cipher;
pub mod config;
mod dotenv;
mod error;
mod files;
mod ini;
mod json;
pub mod keyring;
mod keys;
mod metadata;
mod pq;
#[cfg(test)]
mod pq_testkit;
pub(crate) mod taint;
mod value;
mod walk;
mod yaml;

use std::fmt;
use std::path::Path;

use zeroize::Zeroizing;

pub use config::Stores;
pub use error::{Error, KeyPath};
pub use files::{KeyType, NewKey, keygen, write_atomic, write_new_key_file};
pub use keyring::{KeyDirectory, KeySource, Keyring};
pub use keys::{Identities, valid_recipient};
pub use metadata::RuleText;
pub use taint::{MIN_TAINTED_LEN, Tainted};

use crate::yaml::time;
use cipher::DataKey;
use metadata::{AgeStanza, Metadata};
use value::{Item, Tree, Value};
use walk::{LeafError, LeafErrorKind};

/// The sops version written into files Stagehand creates: the format it follows.
pub const SOPS_FORMAT_VERSION: &str = "3.11.0";

/// Files larger than this are refused before parsing (Flux uses the same guard).
pub const MAX_FILE_SIZE: usize = 32 << 20;

/// The stores sops has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Values encrypted one by one; comments kept.
    Yaml,
    /// Values encrypted one by one.
    Json,
    /// `KEY=value` lines, each value encrypted.
    Dotenv,
    /// Sections of `key = value`, each value encrypted.
    Ini,
    /// The whole file as one encrypted value.
    Binary,
}

impl Format {
    /// sops's choice by file extension; anything unknown is binary.
    pub fn from_path(path: &Path) -> Format {
        match path.extension().and_then(|e| e.to_str()) {
            Some("yaml" | "yml") => Format::Yaml,
            Some("json") => Format::Json,
            Some("env") => Format::Dotenv,
            Some("ini") => Format::Ini,
            _ => Format::Binary,
        }
    }

    /// The names sops's `--input-type`/`--output-type` accept.
    pub fn from_name(name: &str) -> Option<Format> {
        Some(match name {
            "yaml" => Format::Yaml,
            "json" => Format::Json,
            "dotenv" => Format::Dotenv,
            "ini" => Format::Ini,
            "binary" => Format::Binary,
            _ => return None,
        })
    }
}

/// Decrypted bytes. Zeroized on drop; `Debug` and `Display` print `<redacted>`.
pub struct Plaintext {
    document: Zeroizing<Vec<u8>>,
    values: Vec<Zeroizing<Vec<u8>>>,
}

impl Plaintext {
    /// The decrypted document. Keep the borrow short and never log it.
    pub fn expose(&self) -> &[u8] {
        &self.document
    }

    /// Each value that was encrypted in the file, decrypted (as sops hashes it: a boolean as
    /// `True`/`False`), so that callers can keep them out of what they print wherever they
    /// end up. Values left in clear by the file's rules are not among them.
    pub fn values(&self) -> impl Iterator<Item = &[u8]> {
        self.values.iter().map(|v| v.as_slice())
    }
}

impl fmt::Debug for Plaintext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Plaintext(<redacted>)")
    }
}

impl fmt::Display for Plaintext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// How to decrypt.
#[derive(Debug, Clone, Default)]
pub struct DecryptOptions {
    /// Return the plaintext even when the MAC does not match (logged as a warning), as
    /// `sops -d --ignore-mac` and Flux allow.
    pub ignore_mac: bool,
    /// Render the plaintext in this format instead of the input's.
    pub output: Option<Format>,
    /// The layout of the output (`.sops.yaml` `stores:`).
    pub stores: config::Stores,
}

/// Decrypts a sops file; see the module documentation.
pub fn decrypt(
    bytes: &[u8],
    format: Format,
    identities: &Identities,
    path_for_errors: impl AsRef<Path>,
) -> Result<Plaintext, Error> {
    decrypt_with(
        bytes,
        format,
        identities,
        path_for_errors,
        &DecryptOptions::default(),
    )
}

/// [`decrypt`] with options.
pub fn decrypt_with(
    bytes: &[u8],
    format: Format,
    identities: &Identities,
    path_for_errors: impl AsRef<Path>,
    options: &DecryptOptions,
) -> Result<Plaintext, Error> {
    let file = path_for_errors.as_ref();
    let (mut tree, md) = load_encrypted(bytes, format, file)?;
    let key = data_key(&md, identities, file)?;
    let rules = md.rules.compile(file)?;
    let walked = walk::decrypt(&mut tree, &rules, &key).map_err(|e| leaf_error(file, e))?;
    check_mac(&md, &key, &walked.mac, file, options.ignore_mac)?;
    let out = emit(
        &tree,
        options.output.unwrap_or(format),
        &options.stores,
        file,
    )?;
    Ok(Plaintext {
        document: out,
        values: walked.opened,
    })
}

/// Whether `bytes` hold a sops file of this format: whether they carry sops metadata, valid
/// or not. It fails closed: damaged metadata, or a document that cannot be parsed but shows a
/// `sops` key, counts as encrypted, so [`decrypt`] reports the problem instead of the
/// ciphertext passing for plaintext.
pub fn is_encrypted(bytes: &[u8], format: Format) -> bool {
    // Every store names its metadata `sops` (`sops:`, `"sops"`, `[sops]`, `sops_…=`): without
    // those four bytes there is nothing to find, and most files a render reads are plain, so
    // they are spared a second parse.
    if memchr::memmem::find(bytes, b"sops").is_none() {
        return false;
    }
    match load_encrypted(bytes, format, Path::new("")) {
        Ok(_) => true,
        Err(Error::NotEncrypted { .. }) => false,
        Err(Error::Metadata { .. }) => true,
        Err(_) => shows_metadata(bytes, format),
    }
}

/// Whether unparsed text looks as if it held sops metadata: a line opening with the key sops
/// writes for this format.
fn shows_metadata(bytes: &[u8], format: Format) -> bool {
    let text = String::from_utf8_lossy(bytes);
    let mut lines = text.lines();
    match format {
        Format::Yaml => lines.any(|l| l.starts_with("sops:")),
        Format::Dotenv => lines.any(|l| l.starts_with("sops_")),
        Format::Ini => lines.any(|l| l.trim() == "[sops]"),
        Format::Json | Format::Binary => text.contains("\"sops\""),
    }
}

/// What to encrypt to and which values to encrypt.
#[derive(Debug, Clone, Default)]
pub struct EncryptOptions {
    /// age recipients (`age1…` or `ssh-ed25519 …`); at least one.
    pub recipients: Vec<String>,
    /// Selection rules; with none set, sops's default `unencrypted_suffix: _unencrypted`.
    pub rules: RuleText,
    /// Write the encrypted file in this store instead of the input's (sops's
    /// `--output-type`), e.g. a dotenv or binary input as YAML.
    pub output: Option<Format>,
    /// The layout of the output (`.sops.yaml` `stores:`).
    pub stores: config::Stores,
}

/// What `rotate` changes and how it writes the file.
#[derive(Debug, Clone, Default)]
pub struct RotateOptions {
    /// Recipients to add (`age1…`, `age1pq1…`, `ssh-…`).
    pub add: Vec<String>,
    /// Recipients to remove.
    pub remove: Vec<String>,
    /// The layout of the output (`.sops.yaml` `stores:`).
    pub stores: config::Stores,
}

/// Whether a top-level key holds sops metadata: the `sops` tree, or in dotenv files, where
/// metadata is flattened, any `sops_*` key (mixing old and new metadata would break the MAC).
fn is_metadata_key(key: &str, format: Format) -> bool {
    key == "sops" || (format == Format::Dotenv && key.starts_with("sops_"))
}

/// Encrypts a plaintext document to age recipients; `sops -d` opens the result.
pub fn encrypt(
    plaintext: &[u8],
    format: Format,
    options: &EncryptOptions,
    path_for_errors: impl AsRef<Path>,
) -> Result<Vec<u8>, Error> {
    let file = path_for_errors.as_ref();
    if options.recipients.is_empty() {
        return Err(Error::Encrypt {
            file: file.to_owned(),
            problem: "no age recipient given",
        });
    }
    let mut rules_text = options.rules.clone();
    if rules_text.count() > 1 {
        return Err(Error::Encrypt {
            file: file.to_owned(),
            problem: "only one of the unencrypted/encrypted suffix/regex/comment_regex rules may be set",
        });
    }
    if rules_text.count() == 0 {
        rules_text.unencrypted_suffix = Some("_unencrypted".into());
    }
    let mut tree = load_plain(plaintext, format, file)?;
    // Any document, not only the first: sops checks the first alone and then writes a file it
    // cannot open again when a later YAML document has a `sops` key.
    if tree.branches.iter().any(|b| {
        b.iter()
            .any(|i| matches!(i, Item::Entry(k, _) if is_metadata_key(k, format)))
    }) {
        return Err(Error::AlreadyEncrypted {
            file: file.to_owned(),
        });
    }
    let key = DataKey::generate();
    let mut age = Vec::new();
    for recipient in &options.recipients {
        let enc =
            keys::wrap_data_key(key.0.as_ref(), recipient).map_err(|()| Error::Recipient {
                file: file.to_owned(),
                recipient: recipient.clone(),
            })?;
        age.push(AgeStanza {
            recipient: recipient.clone(),
            enc,
        });
    }
    let rules = rules_text.compile(file)?;
    let mac = walk::encrypt(&mut tree, &rules, &key).map_err(|e| leaf_error(file, e))?;
    let lastmodified = time::now_rfc3339();
    let md = Metadata {
        age,
        in_key_groups: false,
        mac: cipher::seal_bytes(&key, mac.as_bytes(), &lastmodified, "str"),
        lastmodified,
        rules: rules_text,
        version: SOPS_FORMAT_VERSION.into(),
        other: Vec::new(),
    };
    let output = options.output.unwrap_or(format);
    store_encrypted(tree, &md, output, &options.stores, file)
}

/// Re-wraps the data key of a sops file for a new recipient set (`sops updatekeys`): the
/// values, the MAC and `lastmodified` stay as they are. Needs an identity that opens the file.
pub fn rotate(
    bytes: &[u8],
    format: Format,
    identities: &Identities,
    add: &[String],
    remove: &[String],
    path_for_errors: impl AsRef<Path>,
) -> Result<Vec<u8>, Error> {
    let options = RotateOptions {
        add: add.to_vec(),
        remove: remove.to_vec(),
        stores: config::Stores::default(),
    };
    rotate_with(bytes, format, identities, &options, path_for_errors)
}

/// [`rotate`] with options.
pub fn rotate_with(
    bytes: &[u8],
    format: Format,
    identities: &Identities,
    options: &RotateOptions,
    path_for_errors: impl AsRef<Path>,
) -> Result<Vec<u8>, Error> {
    let (add, remove) = (&options.add, &options.remove);
    let file = path_for_errors.as_ref();
    let (tree, mut md) = load_encrypted(bytes, format, file)?;
    if md.in_key_groups {
        return Err(Error::Metadata {
            file: file.to_owned(),
            field: "key_groups",
            problem: "rotating recipients inside key groups is not supported",
        });
    }
    let key = data_key(&md, identities, file)?;
    md.age.retain(|a| !remove.contains(&a.recipient));
    for recipient in add {
        if md.age.iter().any(|a| &a.recipient == recipient) {
            continue;
        }
        let enc =
            keys::wrap_data_key(key.0.as_ref(), recipient).map_err(|()| Error::Recipient {
                file: file.to_owned(),
                recipient: recipient.clone(),
            })?;
        md.age.push(AgeStanza {
            recipient: recipient.clone(),
            enc,
        });
    }
    if md.age.is_empty() {
        return Err(Error::Encrypt {
            file: file.to_owned(),
            problem: "rotation would leave the file with no age recipient",
        });
    }
    store_encrypted(tree, &md, format, &options.stores, file)
}

fn leaf_error(file: &Path, e: LeafError) -> Error {
    let file = file.to_owned();
    let key_path = e.key_path;
    match e.kind {
        LeafErrorKind::NotAString => Error::MalformedValue { file, key_path },
        LeafErrorKind::Open(cipher::OpenError::Malformed) => {
            Error::MalformedValue { file, key_path }
        }
        LeafErrorKind::Open(cipher::OpenError::Authentication) => {
            Error::ValueAuthentication { file, key_path }
        }
        LeafErrorKind::Open(cipher::OpenError::UnknownType(type_name)) => Error::UnknownType {
            file,
            key_path,
            type_name,
        },
        LeafErrorKind::Open(cipher::OpenError::BadPlaintext(type_name)) => Error::BadPlaintext {
            file,
            key_path,
            type_name,
        },
    }
}

fn data_key(md: &Metadata, identities: &Identities, file: &Path) -> Result<DataKey, Error> {
    if md.age.is_empty() {
        return Err(Error::NoAgeRecipient {
            file: file.to_owned(),
        });
    }
    if identities.is_empty() {
        return Err(Error::NoIdentities {
            file: file.to_owned(),
        });
    }
    let mut damaged = None;
    for stanza in &md.age {
        match identities.unwrap_data_key(&stanza.enc) {
            Ok(Some(bytes)) => {
                return DataKey::from_slice(&bytes).ok_or_else(|| Error::DataKey {
                    file: file.to_owned(),
                    recipient: stanza.recipient.clone(),
                });
            }
            Ok(None) => {}
            Err(keys::UnwrapError::Damaged) => {
                damaged.get_or_insert_with(|| stanza.recipient.clone());
            }
        }
    }
    match damaged {
        Some(recipient) => Err(Error::DataKey {
            file: file.to_owned(),
            recipient,
        }),
        None => Err(Error::NoMatchingIdentity {
            file: file.to_owned(),
            recipients: md
                .age
                .iter()
                .map(|a| a.recipient.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

fn check_mac(
    md: &Metadata,
    key: &DataKey,
    computed: &str,
    file: &Path,
    ignore: bool,
) -> Result<(), Error> {
    let outcome = (|| {
        let aad = time::rfc3339_seconds(&md.lastmodified).ok_or(Error::Metadata {
            file: file.to_owned(),
            field: "lastmodified",
            problem: "is not an RFC 3339 time",
        })?;
        let stored = cipher::open(key, &md.mac, &aad).map_err(|_| Error::MacUndecryptable {
            file: file.to_owned(),
        })?;
        match stored {
            Value::Str(s) if s.as_str() == computed => Ok(()),
            _ => Err(Error::MacMismatch {
                file: file.to_owned(),
            }),
        }
    })();
    match outcome {
        Err(e) if ignore && e.is_mac_mismatch() => {
            tracing::warn!(file = %file.display(), "MAC mismatch ignored on request");
            Ok(())
        }
        other => other,
    }
}

fn text<'a>(bytes: &'a [u8], format: &'static str, file: &Path) -> Result<&'a str, Error> {
    if bytes.len() > MAX_FILE_SIZE {
        return Err(Error::Syntax {
            file: file.to_owned(),
            format,
            line: 0,
            problem: format!("larger than {MAX_FILE_SIZE} bytes"),
        });
    }
    std::str::from_utf8(bytes).map_err(|e| Error::Syntax {
        file: file.to_owned(),
        format,
        line: 1 + bytes[..e.valid_up_to()]
            .iter()
            .filter(|b| **b == b'\n')
            .count(),
        problem: "not UTF-8".into(),
    })
}

/// Parses a plaintext document of any store.
fn load_plain(bytes: &[u8], format: Format, file: &Path) -> Result<Tree, Error> {
    match format {
        Format::Yaml => yaml::parse(file, text(bytes, "YAML", file)?),
        Format::Json => json::parse(file, text(bytes, "JSON", file)?),
        Format::Dotenv => dotenv::parse(file, text(bytes, "dotenv", file)?),
        Format::Ini => ini::parse(file, text(bytes, "INI", file)?),
        Format::Binary => {
            if bytes.len() > MAX_FILE_SIZE {
                return Err(Error::Syntax {
                    file: file.to_owned(),
                    format: "binary",
                    line: 0,
                    problem: format!("larger than {MAX_FILE_SIZE} bytes"),
                });
            }
            let data = match std::str::from_utf8(bytes) {
                Ok(s) => Value::str(s),
                Err(_) => Value::Bytes(Zeroizing::new(bytes.to_vec())),
            };
            Ok(Tree {
                branches: vec![vec![Item::Entry("data".into(), data)]],
            })
        }
    }
}

/// Parses a sops file and takes its metadata out of the tree.
fn load_encrypted(bytes: &[u8], format: Format, file: &Path) -> Result<(Tree, Metadata), Error> {
    let mut tree = match format {
        Format::Binary => json::parse(file, text(bytes, "JSON", file)?)?,
        other => load_plain(bytes, other, file)?,
    };
    let not_encrypted = || Error::NotEncrypted {
        file: file.to_owned(),
    };
    let md_value = match format {
        Format::Yaml | Format::Json | Format::Binary => {
            let mut found = None;
            for (i, branch) in tree.branches.iter_mut().enumerate() {
                if let Some(pos) = branch
                    .iter()
                    .position(|it| matches!(it, Item::Entry(k, _) if k == "sops"))
                {
                    let Item::Entry(_, v) = branch.remove(pos) else {
                        unreachable!("position matched an entry")
                    };
                    if i == 0 {
                        found = Some(v);
                    } else if found.is_none() {
                        // sops reads the first document's metadata only; a later one's must
                        // not make the file pass for plaintext.
                        return Err(Error::Metadata {
                            file: file.to_owned(),
                            field: "sops",
                            problem: "is in a later YAML document, not the first",
                        });
                    }
                }
            }
            found.ok_or_else(not_encrypted)?
        }
        Format::Dotenv => {
            let branch = tree.branches.first_mut().ok_or_else(not_encrypted)?;
            let mut pairs = Vec::new();
            branch.retain(|it| match it {
                Item::Entry(k, v) if k.starts_with("sops_") => {
                    pairs.push((k["sops_".len()..].to_owned(), dotenv::scalar_text(v)));
                    false
                }
                _ => true,
            });
            if pairs.is_empty() {
                return Err(not_encrypted());
            }
            metadata::unflatten(&pairs)
        }
        Format::Ini => {
            let branch = tree.branches.first_mut().ok_or_else(not_encrypted)?;
            let pos = branch
                .iter()
                .position(|it| matches!(it, Item::Entry(k, _) if k == "sops"))
                .ok_or_else(not_encrypted)?;
            let Item::Entry(_, Value::Map(items)) = branch.remove(pos) else {
                return Err(Error::Metadata {
                    file: file.to_owned(),
                    field: "sops",
                    problem: "is not a section",
                });
            };
            let pairs: Vec<_> = items
                .iter()
                .filter_map(|it| match it {
                    Item::Entry(k, v) => {
                        Some((k.clone(), dotenv::scalar_text(v).replace("\\n", "\n")))
                    }
                    Item::Comment(_) => None,
                })
                .collect();
            metadata::unflatten(&pairs)
        }
    };
    let md = Metadata::from_value(&md_value, file)?;
    Ok((tree, md))
}

/// Renders a (decrypted) tree in a store's plaintext form.
fn emit(
    tree: &Tree,
    format: Format,
    stores: &config::Stores,
    file: &Path,
) -> Result<Zeroizing<Vec<u8>>, Error> {
    let text = match format {
        Format::Yaml => yaml::emit(tree, stores.yaml_indent),
        Format::Json => json::emit(tree, stores.json_indent),
        Format::Dotenv => dotenv::emit(file, tree)?,
        Format::Ini => ini::emit(file, tree)?,
        Format::Binary => {
            let data = tree
                .branches
                .first()
                .and_then(|b| {
                    b.iter().find_map(|i| match i {
                        Item::Entry(k, v) if k == "data" => Some(v),
                        _ => None,
                    })
                })
                .ok_or_else(|| Error::Structure {
                    file: file.to_owned(),
                    key_path: "data".into(),
                    problem: "binary output needs a top-level `data` value",
                })?;
            return Ok(Zeroizing::new(match data {
                Value::Bytes(b) => b.to_vec(),
                other => dotenv::scalar_text(other).into_bytes(),
            }));
        }
    };
    Ok(Zeroizing::new(text.into_bytes()))
}

/// Puts the metadata back into an encrypted tree and renders it.
fn store_encrypted(
    mut tree: Tree,
    md: &Metadata,
    format: Format,
    stores: &config::Stores,
    file: &Path,
) -> Result<Vec<u8>, Error> {
    let md_value = md.to_value();
    match format {
        Format::Yaml => {
            if tree.branches.is_empty() {
                tree.branches.push(Vec::new());
            }
            for branch in &mut tree.branches {
                branch.push(Item::Entry("sops".into(), md_value.clone()));
            }
            Ok(yaml::emit(&tree, stores.yaml_indent).into_bytes())
        }
        Format::Json | Format::Binary => {
            if tree.branches.is_empty() {
                tree.branches.push(Vec::new());
            }
            tree.branches[0].push(Item::Entry("sops".into(), md_value));
            let indent = if format == Format::Binary {
                stores.json_binary_indent
            } else {
                stores.json_indent
            };
            Ok(json::emit(&tree, indent).into_bytes())
        }
        Format::Dotenv => {
            if tree.branches.is_empty() {
                tree.branches.push(Vec::new());
            }
            for (k, v) in metadata::flatten(&md_value) {
                tree.branches[0].push(Item::Entry(format!("sops_{k}"), Value::str(v)));
            }
            Ok(dotenv::emit(file, &tree)?.into_bytes())
        }
        Format::Ini => {
            if tree.branches.is_empty() {
                tree.branches.push(Vec::new());
            }
            let items = metadata::flatten(&md_value)
                .into_iter()
                .map(|(k, v)| Item::Entry(k, Value::str(v.replace('\n', "\\n"))))
                .collect();
            tree.branches[0].push(Item::Entry("sops".into(), Value::Map(items)));
            Ok(ini::emit(file, &tree)?.into_bytes())
        }
    }
}
