//! age identities, loaded the way sops loads them or handed over by a service (a key file per
//! environment, or the `*.agekey` entries of a Kubernetes Secret, as Flux does).
//!
//! Identities have no `Debug` and no `Display`: nothing can print a private key by accident.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::str::FromStr as _;
use std::sync::Arc;

use zeroize::Zeroizing;

use super::error::Error;
use super::pq;

enum Key {
    X25519(age::x25519::Identity),
    // Boxed: an expanded ML-KEM key is some 4.8 kB.
    PostQuantum(Box<pq::Identity>),
    Ssh(age::ssh::Identity),
}

impl Key {
    fn as_dyn(&self) -> &dyn age::Identity {
        match self {
            Key::X25519(k) => k,
            Key::PostQuantum(k) => k.as_ref(),
            Key::Ssh(k) => k,
        }
    }

    /// An identity line's key, when it is of a type Stagehand can use.
    fn parse(word: &str) -> Option<Key> {
        if word.starts_with("AGE-SECRET-KEY-PQ-1") {
            pq::Identity::parse(word).map(|k| Key::PostQuantum(Box::new(k)))
        } else {
            age::x25519::Identity::from_str(word).ok().map(Key::X25519)
        }
    }
}

/// A set of age identities; decryption tries each in turn.
///
/// Keys are shared, not copied, between sets ([`Identities::merged`]): a key's memory is
/// zeroized once the last set holding it is dropped (age's X25519 and our post-quantum keys
/// zeroize on drop).
#[derive(Default)]
pub struct Identities {
    keys: Vec<Arc<Key>>,
}

/// Where sops looks, in its order, for identities.
const SOPS_AGE_KEY: &str = "SOPS_AGE_KEY";
const SOPS_AGE_KEY_FILE: &str = "SOPS_AGE_KEY_FILE";
const SOPS_AGE_KEY_CMD: &str = "SOPS_AGE_KEY_CMD";
const SOPS_AGE_SSH_PRIVATE_KEY_FILE: &str = "SOPS_AGE_SSH_PRIVATE_KEY_FILE";

impl Identities {
    /// No identities; add them before decrypting.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many identities are loaded.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether none is loaded, so nothing can be decrypted.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Adds every identity of an age identity file's text: one `AGE-SECRET-KEY-1…` (X25519)
    /// or `AGE-SECRET-KEY-PQ-1…` (post-quantum) per line, blank lines and `#` comments
    /// skipped. With `several_per_line`, each whitespace-separated word is an identity (sops
    /// reads `SOPS_AGE_KEY` that way).
    ///
    /// A line Stagehand cannot use (a plugin identity, a type it does not know, a damaged
    /// key) is skipped and named at debug level, so the other identities still work; only a
    /// text whose identity lines are all unusable is an error, naming the first such line.
    pub fn add_text(
        &mut self,
        source: &str,
        text: &str,
        several_per_line: bool,
    ) -> Result<(), Error> {
        let mut added = 0;
        let mut first_unusable = None;
        for (n, line) in text.lines().enumerate() {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let words: Vec<&str> = if several_per_line {
                line.split_whitespace().collect()
            } else {
                vec![line.trim_end_matches('\r')]
            };
            for word in words {
                match Key::parse(word) {
                    Some(key) => {
                        self.keys.push(Arc::new(key));
                        added += 1;
                    }
                    None => {
                        // The line's number and its kind only: the line may hold a key.
                        tracing::debug!(
                            source,
                            line = n + 1,
                            kind = identity_kind(word),
                            "skipped an age identity line that cannot be used"
                        );
                        first_unusable.get_or_insert(n + 1);
                    }
                }
            }
        }
        match first_unusable {
            Some(line) if added == 0 => Err(Error::Identity {
                source_name: source.to_owned(),
                line,
            }),
            _ => Ok(()),
        }
    }

    /// Adds the identities of a key file (what `age-keygen` writes).
    pub fn add_file(&mut self, path: &Path) -> Result<(), Error> {
        let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|source| Error::Read {
            file: path.to_owned(),
            source,
        })?);
        self.add_text(&path.display().to_string(), &text, false)
    }

    /// Adds an OpenSSH ed25519 or RSA private key (unencrypted).
    pub fn add_ssh_key(&mut self, source: &str, pem: &[u8]) -> Result<(), Error> {
        let key = age::ssh::Identity::from_buffer(pem, Some(source.to_owned())).map_err(|_| {
            Error::KeySource {
                source_name: source.to_owned(),
                problem: "not an OpenSSH private key".into(),
            }
        })?;
        match key {
            age::ssh::Identity::Unencrypted(_) => {
                self.keys.push(Arc::new(Key::Ssh(key)));
                Ok(())
            }
            _ => Err(Error::KeySource {
                source_name: source.to_owned(),
                problem: "passphrase-protected or unsupported SSH keys cannot be used".into(),
            }),
        }
    }

    /// The identities of an age identity file's text, every identity line usable: what a key
    /// entry of a Kubernetes Secret must hold. Unlike [`Identities::add_text`], one line
    /// Stagehand cannot use is an error naming it (by number), because whoever edited the
    /// Secret should hear of it rather than find one key silently missing. A text without
    /// identity lines holds no identities.
    pub fn from_key_text(source: &str, text: &str) -> Result<Self, Error> {
        let mut ids = Self::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            match Key::parse(line) {
                Some(key) => ids.keys.push(Arc::new(key)),
                None => {
                    return Err(Error::Identity {
                        source_name: source.to_owned(),
                        line: n + 1,
                    });
                }
            }
        }
        Ok(ids)
    }

    /// Every identity of `sets`, shared with them rather than copied.
    pub fn merged<'a>(sets: impl IntoIterator<Item = &'a Identities>) -> Self {
        Self {
            keys: sets
                .into_iter()
                .flat_map(|s| s.keys.iter().cloned())
                .collect(),
        }
    }

    /// Flux's convention: every entry of a Kubernetes Secret's `data` whose name ends in
    /// `.agekey` holds age identities. Other entries are ignored.
    pub fn from_secret_data(secret: &str, data: &BTreeMap<String, Vec<u8>>) -> Result<Self, Error> {
        let mut ids = Self::new();
        for (name, bytes) in data {
            if !name.ends_with(".agekey") {
                continue;
            }
            let source = format!("{secret}/{name}");
            let text = std::str::from_utf8(bytes).map_err(|_| Error::KeySource {
                source_name: source.clone(),
                problem: "not UTF-8 text".into(),
            })?;
            ids.add_text(&source, text, false)?;
        }
        Ok(ids)
    }

    /// What sops would load from its environment: `SOPS_AGE_SSH_PRIVATE_KEY_FILE`,
    /// `SOPS_AGE_KEY`, `SOPS_AGE_KEY_FILE`, `SOPS_AGE_KEY_CMD` and `sops/age/keys.txt` under
    /// the user's config directory (`$XDG_CONFIG_HOME`, else `~/.config`).
    pub fn from_sops_environment() -> Result<Self, Error> {
        Self::from_env_lookup(|name| std::env::var_os(name))
    }

    /// As [`Identities::from_sops_environment`], with the variables supplied by the caller.
    pub fn from_env_lookup(
        var: impl Fn(&str) -> Option<std::ffi::OsString>,
    ) -> Result<Self, Error> {
        let mut ids = Self::new();
        // As sops does, a source that fails to load is skipped while another one yields keys;
        // its error is reported only when no source does.
        let mut first_error = None;
        let mut keep = |result: Result<(), Error>| {
            if let Err(e) = result {
                first_error.get_or_insert(e);
            }
        };
        if let Some(path) = var(SOPS_AGE_SSH_PRIVATE_KEY_FILE) {
            let path = PathBuf::from(path);
            keep(match std::fs::read(&path) {
                Ok(pem) => ids.add_ssh_key(&path.display().to_string(), &Zeroizing::new(pem)),
                Err(source) => Err(Error::Read {
                    file: path.clone(),
                    source,
                }),
            });
        }
        if let Some(text) = var(SOPS_AGE_KEY) {
            let text = Zeroizing::new(text.to_string_lossy().into_owned());
            keep(ids.add_text(SOPS_AGE_KEY, &text, true));
        }
        if let Some(path) = var(SOPS_AGE_KEY_FILE) {
            keep(ids.add_file(Path::new(&path)));
        }
        if let Some(cmd) = var(SOPS_AGE_KEY_CMD) {
            let cmd = cmd.to_string_lossy().into_owned();
            keep(run_key_command(&cmd).and_then(|out| ids.add_text(SOPS_AGE_KEY_CMD, &out, false)));
        }
        let config = var("XDG_CONFIG_HOME")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| var("HOME").map(|h| PathBuf::from(h).join(".config")));
        if let Some(dir) = config {
            let path = dir.join("sops/age/keys.txt");
            if path.is_file() {
                keep(ids.add_file(&path));
            }
        }
        match first_error {
            Some(e) if ids.keys.is_empty() => Err(e),
            _ => Ok(ids),
        }
    }

    /// Opens an armored age file holding a sops data key. `Ok(None)` when no identity matches.
    pub(crate) fn unwrap_data_key(
        &self,
        armored: &str,
    ) -> Result<Option<Zeroizing<Vec<u8>>>, UnwrapError> {
        use std::io::Read as _;
        let reader = age::armor::ArmoredReader::new(armored.as_bytes());
        let decryptor = age::Decryptor::new(reader).map_err(|_| UnwrapError::Damaged)?;
        match decryptor.decrypt(self.keys.iter().map(|k| k.as_dyn())) {
            Ok(mut stream) => {
                let mut out = Zeroizing::new(Vec::new());
                stream
                    .read_to_end(&mut out)
                    .map_err(|_| UnwrapError::Damaged)?;
                Ok(Some(out))
            }
            Err(age::DecryptError::NoMatchingKeys) => Ok(None),
            Err(_) => Err(UnwrapError::Damaged),
        }
    }

    /// The recipients of the loaded X25519 and post-quantum identities, e.g. to encrypt to
    /// oneself.
    pub fn recipients(&self) -> Vec<String> {
        self.keys
            .iter()
            .filter_map(|k| match k.as_ref() {
                Key::X25519(k) => Some(k.to_public().to_string()),
                Key::PostQuantum(k) => Some(k.to_public().to_string()),
                Key::Ssh(_) => None,
            })
            .collect()
    }
}

/// What an identity line looks like, for the debug message about a skipped one: its
/// well-known prefix, never the key itself.
fn identity_kind(word: &str) -> &'static str {
    if word.starts_with("AGE-PLUGIN-") {
        "age plugin identity"
    } else if word.starts_with("AGE-SECRET-KEY-PQ-1") {
        "damaged post-quantum identity"
    } else if word.starts_with("AGE-SECRET-KEY-1") {
        "damaged X25519 identity"
    } else {
        "unknown identity type"
    }
}

pub(crate) enum UnwrapError {
    Damaged,
}

fn run_key_command(cmd: &str) -> Result<Zeroizing<String>, Error> {
    let source = || SOPS_AGE_KEY_CMD.to_owned();
    // sops splits the command into words as a POSIX shell would (quotes, backslashes), but runs
    // no shell: pipes and variables are not expanded.
    let words = shlex::split(cmd).ok_or_else(|| Error::KeySource {
        source_name: source(),
        problem: "unbalanced quotes in the command".into(),
    })?;
    let (program, args) = words.split_first().ok_or_else(|| Error::KeySource {
        source_name: source(),
        problem: "the command is empty".into(),
    })?;
    // A clean environment: the command must not see SOPS_AGE_KEY or other secrets of ours.
    let out = crate::process::clean_command(program)
        .args(args)
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| Error::KeySource {
            source_name: source(),
            problem: format!("cannot run {program}: {e}"),
        })?;
    if !out.status.success() {
        return Err(Error::KeySource {
            source_name: source(),
            problem: format!("{program} exited with {}", out.status),
        });
    }
    let text = String::from_utf8(out.stdout).map_err(|_| Error::KeySource {
        source_name: source(),
        problem: "the command's output is not UTF-8".into(),
    })?;
    Ok(Zeroizing::new(text))
}

/// An `age1…` (X25519), `age1pq1…` (post-quantum) or `ssh-…` recipient.
fn parse_recipient(recipient: &str) -> Option<Box<dyn age::Recipient>> {
    if recipient.starts_with("ssh-") {
        age::ssh::Recipient::from_str(recipient)
            .ok()
            .map(|r| Box::new(r) as Box<dyn age::Recipient>)
    } else if recipient.starts_with("age1pq1") {
        pq::Recipient::parse(recipient).map(|r| Box::new(r) as Box<dyn age::Recipient>)
    } else {
        age::x25519::Recipient::from_str(recipient)
            .ok()
            .map(|r| Box::new(r) as Box<dyn age::Recipient>)
    }
}

/// Encrypts a data key to an age recipient, armored as sops stores it.
pub(crate) fn wrap_data_key(key: &[u8], recipient: &str) -> Result<String, ()> {
    use std::io::Write as _;
    let parsed = parse_recipient(recipient).ok_or(())?;
    let encryptor =
        age::Encryptor::with_recipients(std::iter::once(parsed.as_ref())).map_err(|_| ())?;
    let mut armored = Vec::new();
    let writer =
        age::armor::ArmoredWriter::wrap_output(&mut armored, age::armor::Format::AsciiArmor)
            .map_err(|_| ())?;
    let mut w = encryptor.wrap_output(writer).map_err(|_| ())?;
    w.write_all(key).map_err(|_| ())?;
    w.finish().and_then(|a| a.finish()).map_err(|_| ())?;
    String::from_utf8(armored).map_err(|_| ())
}

/// Whether `recipient` parses as an age X25519, post-quantum or ssh recipient.
pub fn valid_recipient(recipient: &str) -> bool {
    parse_recipient(recipient).is_some()
}
