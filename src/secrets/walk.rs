//! Walking a tree the way sops walks it: which values are encrypted (the selection rules), the
//! additional data of each value (its key path), and the MAC over the plaintext leaves.

use regex::Regex;
use sha2::{Digest, Sha512};
use zeroize::Zeroizing;

use super::cipher::{self, DataKey, OpenError};
use super::value::{Item, Tree, Value};

/// Written into the hash first when `mac_only_encrypted` is set, so that such a MAC can never
/// equal one over the whole tree (sops's `MACOnlyEncryptedInitialization`).
const MAC_ONLY_ENCRYPTED_INIT: [u8; 32] = [
    0x8a, 0x3f, 0xd2, 0xad, 0x54, 0xce, 0x66, 0x52, 0x7b, 0x10, 0x34, 0xf3, 0xd1, 0x47, 0xbe, 0x0b,
    0x0b, 0x97, 0x5b, 0x3b, 0xf4, 0x4f, 0x72, 0xc6, 0xfd, 0xad, 0xec, 0x81, 0x76, 0xf2, 0x7d, 0x69,
];

/// The selection rules of a file's metadata, regexes compiled.
#[derive(Debug, Default, Clone)]
pub struct Rules {
    pub unencrypted_suffix: Option<String>,
    pub encrypted_suffix: Option<String>,
    pub unencrypted_regex: Option<Regex>,
    pub encrypted_regex: Option<Regex>,
    pub unencrypted_comment_regex: Option<Regex>,
    pub encrypted_comment_regex: Option<Regex>,
    pub mac_only_encrypted: bool,
}

impl Rules {
    /// sops's `shouldBeEncrypted`: each rule, when set, overrides the ones before it.
    fn should_encrypt(&self, path: &[String], comments: &[Vec<String>], is_comment: bool) -> bool {
        let mut encrypted = true;
        if let Some(suffix) = &self.unencrypted_suffix
            && path.iter().any(|k| k.ends_with(suffix.as_str()))
        {
            encrypted = false;
        }
        if let Some(suffix) = &self.encrypted_suffix {
            encrypted = path.iter().any(|k| k.ends_with(suffix.as_str()));
        }
        if let Some(re) = &self.unencrypted_regex
            && path.iter().any(|k| re.is_match(k))
        {
            encrypted = false;
        }
        if let Some(re) = &self.encrypted_regex {
            encrypted = path.iter().any(|k| re.is_match(k));
        }
        if let Some(re) = &self.unencrypted_comment_regex
            && comments.iter().flatten().any(|c| re.is_match(c))
        {
            encrypted = false;
        }
        if let Some(re) = &self.encrypted_comment_regex {
            let last_level = comments.len().wrapping_sub(1);
            let last_index = comments.last().map_or(0, Vec::len).wrapping_sub(1);
            // A matching comment line itself stays readable; only what follows it is encrypted.
            encrypted = comments.iter().enumerate().any(|(i, level)| {
                level.iter().enumerate().any(|(j, c)| {
                    !(is_comment && i == last_level && j == last_index) && re.is_match(c)
                })
            });
        }
        encrypted
    }
}

/// A failure at one leaf, located by its display key path.
#[derive(Debug)]
pub struct LeafError {
    pub key_path: String,
    pub kind: LeafErrorKind,
}

#[derive(Debug)]
pub enum LeafErrorKind {
    Open(OpenError),
    /// A value that should be encrypted is not a string.
    NotAString,
}

enum Mode<'k> {
    Encrypt(&'k DataKey),
    Decrypt(&'k DataKey),
}

struct Walker<'a> {
    rules: &'a Rules,
    mode: Mode<'a>,
    hash: Sha512,
    path: Vec<String>,
    shown: Vec<String>,
    comments: Vec<Vec<String>>,
    /// Decrypting: the plaintext of every value that was encrypted.
    opened: Vec<Zeroizing<Vec<u8>>>,
}

fn aad(path: &[String]) -> String {
    let mut s = path.join(":");
    s.push(':');
    s
}

fn shown_path(shown: &[String]) -> String {
    if shown.is_empty() {
        return "(top level)".into();
    }
    let mut out = String::new();
    for seg in shown {
        if !seg.starts_with('[') && !out.is_empty() {
            out.push('.');
        }
        out.push_str(seg);
    }
    out
}

impl Walker<'_> {
    fn err(&self, kind: LeafErrorKind) -> LeafError {
        LeafError {
            key_path: shown_path(&self.shown),
            kind,
        }
    }

    fn leaf(&mut self, value: &mut Value) -> Result<(), LeafError> {
        let is_comment = matches!(value, Value::Comment(_));
        let encrypted = self
            .rules
            .should_encrypt(&self.path, &self.comments, is_comment);
        let aad = aad(&self.path);
        match self.mode {
            Mode::Decrypt(key) if encrypted => {
                if let Value::Comment(c) = value {
                    // Like sops, a comment that does not open is taken as one written in clear.
                    if let Ok(opened) = cipher::open(key, &c.text, &aad) {
                        let text = match opened {
                            Value::Comment(o) => o.text,
                            Value::Str(s) => s,
                            _ => return Ok(()),
                        };
                        c.text = text;
                    }
                    return Ok(());
                }
                let Value::Str(s) = value else {
                    return Err(self.err(LeafErrorKind::NotAString));
                };
                *value =
                    cipher::open(key, s, &aad).map_err(|e| self.err(LeafErrorKind::Open(e)))?;
                if let Some(plain) = cipher::plain_bytes(value) {
                    self.opened.push(plain);
                }
            }
            _ => {}
        }
        // sops 3.11 leaves out of the MAC whatever is a comment at this point: after
        // decryption that includes a list item that opened as a `comment`.
        if (!self.rules.mac_only_encrypted || encrypted) && !matches!(value, Value::Comment(_)) {
            let bytes = cipher::plain_bytes(value).expect("leaf() is only called on leaves");
            self.hash.update(&bytes[..]);
        }
        if let Mode::Encrypt(key) = self.mode
            && encrypted
        {
            // An encrypted comment becomes a string: sops 3.11 writes it back as a comment line
            // in a mapping but as a plain item in a sequence.
            *value = Value::str(cipher::seal(key, value, &aad));
        }
        Ok(())
    }

    fn value(&mut self, value: &mut Value) -> Result<(), LeafError> {
        match value {
            Value::Null => Ok(()),
            Value::Map(items) => self.branch(items),
            Value::Seq(values) => self.seq(values),
            _ => self.leaf(value),
        }
    }

    fn seq(&mut self, values: &mut [Value]) -> Result<(), LeafError> {
        self.comments.push(Vec::new());
        let result = (|| {
            for (i, v) in values.iter_mut().enumerate() {
                let is_comment = if let Value::Comment(c) = v {
                    let text = c.text.to_string();
                    self.top_comments().push(text);
                    true
                } else {
                    false
                };
                self.shown.push(format!("[{i}]"));
                let r = self.value(v);
                self.shown.pop();
                r?;
                if !is_comment {
                    self.top_comments().clear();
                }
            }
            Ok(())
        })();
        self.comments.pop();
        result
    }

    fn top_comments(&mut self) -> &mut Vec<String> {
        self.comments
            .last_mut()
            .expect("a level is pushed before its items are walked")
    }

    fn branch(&mut self, items: &mut [Item]) -> Result<(), LeafError> {
        self.comments.push(Vec::new());
        let result = (|| {
            for item in items.iter_mut() {
                match item {
                    Item::Comment(c) => {
                        let text = c.text.to_string();
                        self.top_comments().push(text);
                        let mut v = Value::Comment(c.clone());
                        self.leaf(&mut v)?;
                        match v {
                            Value::Comment(done) => *c = done,
                            Value::Str(sealed) => c.text = sealed,
                            _ => unreachable!("a comment leaf stays a comment or becomes a string"),
                        }
                    }
                    Item::Entry(key, v) => {
                        self.path.push(key.clone());
                        self.shown.push(key.clone());
                        let r = self.value(v);
                        self.path.pop();
                        self.shown.pop();
                        r?;
                        self.top_comments().clear();
                    }
                }
            }
            Ok(())
        })();
        self.comments.pop();
        result
    }
}

fn walk(tree: &mut Tree, rules: &Rules, mode: Mode<'_>) -> Result<Walked, LeafError> {
    let mut walker = Walker {
        rules,
        mode,
        hash: Sha512::new(),
        path: Vec::new(),
        shown: Vec::new(),
        comments: Vec::new(),
        opened: Vec::new(),
    };
    if rules.mac_only_encrypted {
        walker.hash.update(MAC_ONLY_ENCRYPTED_INIT);
    }
    for branch in &mut tree.branches {
        walker.branch(branch)?;
    }
    Ok(Walked {
        mac: hex_upper(&walker.hash.finalize()),
        opened: walker.opened,
    })
}

/// What a walk computed.
pub struct Walked {
    /// The MAC sops would compute over the plaintext.
    pub mac: String,
    /// Decrypting: the plaintext of each value that was encrypted, in tree order.
    pub opened: Vec<Zeroizing<Vec<u8>>>,
}

fn hex_upper(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

/// Decrypts every selected value in place; returns the MAC sops would compute and the values
/// that were encrypted.
pub fn decrypt(tree: &mut Tree, rules: &Rules, key: &DataKey) -> Result<Walked, LeafError> {
    walk(tree, rules, Mode::Decrypt(key))
}

/// Encrypts every selected value in place and returns the MAC of the plaintext.
pub fn encrypt(tree: &mut Tree, rules: &Rules, key: &DataKey) -> Result<String, LeafError> {
    walk(tree, rules, Mode::Encrypt(key)).map(|walked| walked.mac)
}
