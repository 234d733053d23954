//! The `sops` section of a file: age stanzas, MAC, last-modified time and selection rules.
//! Key-service entries Stagehand does not use (kms, pgp, …) are kept verbatim so that a file
//! rewritten by rotate still carries them.

use std::path::Path;

use regex::Regex;

use super::error::Error;
use super::value::{Item, Value};
use super::walk::Rules;

/// One age recipient and the data key encrypted to it (an armored age file).
#[derive(Debug, Clone, PartialEq)]
pub struct AgeStanza {
    pub recipient: String,
    pub enc: String,
}

/// The selection rules as written, so they can be written back unchanged.
#[derive(Debug, Clone, Default, PartialEq)]
// sops's own option names (`--unencrypted-suffix` and so on); its documentation describes them.
#[allow(missing_docs)]
pub struct RuleText {
    pub unencrypted_suffix: Option<String>,
    pub encrypted_suffix: Option<String>,
    pub unencrypted_regex: Option<String>,
    pub encrypted_regex: Option<String>,
    pub unencrypted_comment_regex: Option<String>,
    pub encrypted_comment_regex: Option<String>,
    pub mac_only_encrypted: bool,
}

impl RuleText {
    /// The rules ready to match keys; a regular expression that does not compile names its
    /// field.
    pub fn compile(&self, file: &Path) -> Result<Rules, Error> {
        let re = |text: &Option<String>, field: &'static str| {
            text.as_deref()
                .map(|t| {
                    Regex::new(t).map_err(|_| Error::Regex {
                        file: file.to_owned(),
                        field,
                    })
                })
                .transpose()
        };
        Ok(Rules {
            unencrypted_suffix: self.unencrypted_suffix.clone(),
            encrypted_suffix: self.encrypted_suffix.clone(),
            unencrypted_regex: re(&self.unencrypted_regex, "unencrypted_regex")?,
            encrypted_regex: re(&self.encrypted_regex, "encrypted_regex")?,
            unencrypted_comment_regex: re(
                &self.unencrypted_comment_regex,
                "unencrypted_comment_regex",
            )?,
            encrypted_comment_regex: re(&self.encrypted_comment_regex, "encrypted_comment_regex")?,
            mac_only_encrypted: self.mac_only_encrypted,
        })
    }

    /// How many selection rules are set; sops allows at most one.
    pub fn count(&self) -> usize {
        [
            &self.unencrypted_suffix,
            &self.encrypted_suffix,
            &self.unencrypted_regex,
            &self.encrypted_regex,
            &self.unencrypted_comment_regex,
            &self.encrypted_comment_regex,
        ]
        .iter()
        .filter(|r| r.is_some())
        .count()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Metadata {
    pub age: Vec<AgeStanza>,
    /// Whether the age stanzas came from `key_groups` rather than the top-level `age` list.
    pub in_key_groups: bool,
    pub lastmodified: String,
    pub mac: String,
    pub rules: RuleText,
    pub version: String,
    /// Entries for other key services and fields we do not interpret, in file order.
    pub other: Vec<(String, Value)>,
}

fn text_of(v: &Value) -> Option<String> {
    match v {
        Value::Str(s) | Value::Time(s) => Some(s.to_string()),
        Value::Int(i) => Some(i.to_string()),
        Value::Float(f) => Some(crate::yaml::number::format_fixed(*f)),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn entries(v: &Value) -> impl Iterator<Item = (&str, &Value)> {
    let items: &[Item] = match v {
        Value::Map(items) => items,
        _ => &[],
    };
    items.iter().filter_map(|i| match i {
        Item::Entry(k, v) => Some((k.as_str(), v)),
        Item::Comment(_) => None,
    })
}

fn age_list(v: &Value, file: &Path) -> Result<Vec<AgeStanza>, Error> {
    let bad = |problem| Error::Metadata {
        file: file.to_owned(),
        field: "age",
        problem,
    };
    let Value::Seq(items) = v else {
        return Err(bad("is not a list"));
    };
    items
        .iter()
        .filter(|i| !matches!(i, Value::Comment(_)))
        .map(|item| {
            let mut recipient = None;
            let mut enc = None;
            for (k, v) in entries(item) {
                match k {
                    "recipient" => recipient = text_of(v),
                    "enc" => enc = text_of(v),
                    _ => {}
                }
            }
            Ok(AgeStanza {
                recipient: recipient.ok_or_else(|| bad("an entry has no recipient"))?,
                enc: enc.ok_or_else(|| bad("an entry has no enc"))?,
            })
        })
        .collect()
}

impl Metadata {
    pub fn from_value(v: &Value, file: &Path) -> Result<Self, Error> {
        if !matches!(v, Value::Map(_)) {
            return Err(Error::Metadata {
                file: file.to_owned(),
                field: "sops",
                problem: "is not a mapping",
            });
        }
        let mut md = Metadata {
            age: Vec::new(),
            in_key_groups: false,
            lastmodified: String::new(),
            mac: String::new(),
            rules: RuleText::default(),
            version: String::new(),
            other: Vec::new(),
        };
        let mut groups = 0;
        for (key, value) in entries(v) {
            let text = text_of(value);
            match key {
                "age" => md.age.extend(age_list(value, file)?),
                "lastmodified" => md.lastmodified = text.unwrap_or_default(),
                "mac" => md.mac = text.unwrap_or_default(),
                "version" => md.version = text.unwrap_or_default(),
                "unencrypted_suffix" => {
                    md.rules.unencrypted_suffix = text.filter(|t| !t.is_empty())
                }
                "encrypted_suffix" => md.rules.encrypted_suffix = text.filter(|t| !t.is_empty()),
                "unencrypted_regex" => md.rules.unencrypted_regex = text.filter(|t| !t.is_empty()),
                "encrypted_regex" => md.rules.encrypted_regex = text.filter(|t| !t.is_empty()),
                "unencrypted_comment_regex" => {
                    md.rules.unencrypted_comment_regex = text.filter(|t| !t.is_empty())
                }
                "encrypted_comment_regex" => {
                    md.rules.encrypted_comment_regex = text.filter(|t| !t.is_empty())
                }
                "mac_only_encrypted" => {
                    md.rules.mac_only_encrypted = matches!(
                        text.as_deref(),
                        Some("true" | "True" | "TRUE" | "1" | "t" | "T")
                    )
                }
                "key_groups" => {
                    if let Value::Seq(gs) = value {
                        for group in gs.iter().filter(|g| !matches!(g, Value::Comment(_))) {
                            groups += 1;
                            for (k, v) in entries(group) {
                                if k == "age" {
                                    md.age.extend(age_list(v, file)?);
                                    md.in_key_groups = true;
                                }
                            }
                        }
                    }
                    md.other.push((key.to_owned(), value.clone()));
                }
                _ => md.other.push((key.to_owned(), value.clone())),
            }
        }
        // Several key groups always mean the data key was split with Shamir's scheme.
        if groups > 1 {
            return Err(Error::Metadata {
                file: file.to_owned(),
                field: "key_groups",
                problem: "the data key is split across key groups (Shamir), which Stagehand does not support",
            });
        }
        if md.lastmodified.is_empty() {
            return Err(Error::Metadata {
                file: file.to_owned(),
                field: "lastmodified",
                problem: "is missing",
            });
        }
        // Fail closed: metadata Stagehand does not fully understand is refused, never read as
        // far as it goes.
        if md.mac.is_empty() {
            return Err(Error::Metadata {
                file: file.to_owned(),
                field: "mac",
                problem: "is missing",
            });
        }
        if md.version.is_empty() {
            return Err(Error::Metadata {
                file: file.to_owned(),
                field: "version",
                problem: "is missing",
            });
        }
        if md.version.split('.').next() != Some("3") {
            return Err(Error::Metadata {
                file: file.to_owned(),
                field: "version",
                problem: "is not a sops 3 file format version",
            });
        }
        Ok(md)
    }

    /// The `sops` mapping in sops's field order.
    pub fn to_value(&self) -> Value {
        let s = |t: &str| Value::str(t);
        let mut items = Vec::new();
        let (before, after): (Vec<_>, Vec<_>) = self
            .other
            .iter()
            .partition(|(k, _)| !matches!(k.as_str(), "pgp"));
        for (k, v) in before {
            items.push(Item::Entry(k.clone(), v.clone()));
        }
        if !self.age.is_empty() && !self.in_key_groups {
            let list = self
                .age
                .iter()
                .map(|a| {
                    Value::Map(vec![
                        Item::Entry("recipient".into(), s(&a.recipient)),
                        Item::Entry("enc".into(), s(&a.enc)),
                    ])
                })
                .collect();
            items.push(Item::Entry("age".into(), Value::Seq(list)));
        }
        items.push(Item::Entry("lastmodified".into(), s(&self.lastmodified)));
        items.push(Item::Entry("mac".into(), s(&self.mac)));
        for (k, v) in after {
            items.push(Item::Entry(k.clone(), v.clone()));
        }
        let r = &self.rules;
        for (name, value) in [
            ("unencrypted_suffix", &r.unencrypted_suffix),
            ("encrypted_suffix", &r.encrypted_suffix),
            ("unencrypted_regex", &r.unencrypted_regex),
            ("encrypted_regex", &r.encrypted_regex),
            ("unencrypted_comment_regex", &r.unencrypted_comment_regex),
            ("encrypted_comment_regex", &r.encrypted_comment_regex),
        ] {
            if let Some(v) = value {
                items.push(Item::Entry(name.into(), s(v)));
            }
        }
        if r.mac_only_encrypted {
            items.push(Item::Entry("mac_only_encrypted".into(), Value::Bool(true)));
        }
        items.push(Item::Entry("version".into(), s(&self.version)));
        Value::Map(items)
    }
}

enum Seg {
    Key(String),
    Index(usize),
}

/// Splits `age__list_0__map_enc` into `age`, `[0]`, `enc`.
fn split_flat(key: &str) -> Vec<Seg> {
    let mut segs = Vec::new();
    let mut rest = key;
    let mut current = String::new();
    loop {
        let list = rest.find("__list_");
        let map = rest.find("__map_");
        let next = match (list, map) {
            (Some(l), Some(m)) => Some(l.min(m)),
            (a, b) => a.or(b),
        };
        let Some(at) = next else {
            current.push_str(rest);
            segs.push(Seg::Key(current));
            return segs;
        };
        current.push_str(&rest[..at]);
        segs.push(Seg::Key(std::mem::take(&mut current)));
        if rest[at..].starts_with("__list_") {
            let after = &rest[at + 7..];
            let digits = after.bytes().take_while(u8::is_ascii_digit).count();
            segs.push(Seg::Index(after[..digits].parse().unwrap_or(0)));
            rest = &after[digits..];
            // `__list_0` followed directly by `__map_` or the end.
            if let Some(r) = rest.strip_prefix("__map_") {
                rest = r;
            } else if rest.is_empty() {
                return segs;
            }
        } else {
            rest = &rest[at + 6..];
        }
    }
}

fn insert(target: &mut Value, segs: &[Seg], leaf: Value) {
    let Some((first, rest)) = segs.split_first() else {
        *target = leaf;
        return;
    };
    match first {
        Seg::Key(k) if k.is_empty() => insert(target, rest, leaf),
        Seg::Key(k) => {
            if !matches!(target, Value::Map(_)) {
                *target = Value::Map(Vec::new());
            }
            let Value::Map(items) = target else {
                unreachable!("made a map just above")
            };
            let pos = items
                .iter()
                .position(|i| matches!(i, Item::Entry(key, _) if key == k));
            let pos = pos.unwrap_or_else(|| {
                items.push(Item::Entry(k.clone(), Value::Null));
                items.len() - 1
            });
            if let Item::Entry(_, v) = &mut items[pos] {
                insert(v, rest, leaf);
            }
        }
        Seg::Index(i) => {
            if !matches!(target, Value::Seq(_)) {
                *target = Value::Seq(Vec::new());
            }
            let Value::Seq(values) = target else {
                unreachable!("made a list just above")
            };
            while values.len() <= *i {
                values.push(Value::Null);
            }
            insert(&mut values[*i], rest, leaf);
        }
    }
}

/// Rebuilds the nested metadata from the flat `key = value` pairs dotenv and INI files hold.
pub fn unflatten(pairs: &[(String, String)]) -> Value {
    let mut root = Value::Map(Vec::new());
    for (key, value) in pairs {
        insert(&mut root, &split_flat(key), Value::str(value.clone()));
    }
    root
}

/// The flat pairs for dotenv and INI files, sorted by key as sops writes them.
pub fn flatten(v: &Value) -> Vec<(String, String)> {
    fn go(v: &Value, prefix: &str, out: &mut Vec<(String, String)>) {
        match v {
            Value::Map(items) => {
                for item in items {
                    if let Item::Entry(k, v) = item {
                        let name = if prefix.is_empty() {
                            k.clone()
                        } else {
                            format!("{prefix}__map_{k}")
                        };
                        go(v, &name, out);
                    }
                }
            }
            Value::Seq(values) => {
                for (i, v) in values.iter().enumerate() {
                    go(v, &format!("{prefix}__list_{i}"), out);
                }
            }
            other => out.push((prefix.to_owned(), text_of(other).unwrap_or_default())),
        }
    }
    let mut out = Vec::new();
    go(v, "", &mut out);
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_metadata_keys_unflatten_into_the_nested_shape() {
        let pairs = vec![
            ("age__list_0__map_enc".to_owned(), "E".to_owned()),
            ("age__list_0__map_recipient".to_owned(), "R".to_owned()),
            ("lastmodified".to_owned(), "2024-01-01T00:00:00Z".to_owned()),
            ("mac".to_owned(), "M".to_owned()),
            ("version".to_owned(), "3.11.0".to_owned()),
        ];
        let v = unflatten(&pairs);
        let md = Metadata::from_value(&v, Path::new("f")).expect("valid metadata");
        assert_eq!(
            md.age,
            vec![AgeStanza {
                recipient: "R".into(),
                enc: "E".into()
            }]
        );
        assert_eq!(flatten(&v), pairs);
    }
}
