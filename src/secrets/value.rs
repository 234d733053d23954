//! The document tree every store reads into and writes from, shaped like sops's own tree so that
//! walking it (and therefore the MAC and the additional data of every value) matches sops.

use std::fmt;

use zeroize::{Zeroize, Zeroizing};

/// A comment line, without its leading `#` (or `;` in INI).
#[derive(Clone, PartialEq)]
pub struct Comment {
    pub text: Zeroizing<String>,
}

impl Comment {
    pub fn new(text: impl Into<String>) -> Self {
        Self {
            text: Zeroizing::new(text.into()),
        }
    }
}

/// A scalar or container. Strings live in `Zeroizing` so that dropping a tree clears them.
#[derive(Clone, PartialEq)]
pub enum Value {
    Null,
    Str(Zeroizing<String>),
    /// Bytes that are not text, as sops's `bytes` type and binary files produce.
    Bytes(Zeroizing<Vec<u8>>),
    Int(i64),
    Float(f64),
    Bool(bool),
    /// A timestamp, kept as Go's `time.MarshalText` renders it (RFC 3339 with nanoseconds).
    Time(Zeroizing<String>),
    Comment(Comment),
    Map(Vec<Item>),
    Seq(Vec<Value>),
}

/// One entry of a mapping: a key with its value, or a comment line between entries.
#[derive(Clone, PartialEq)]
pub enum Item {
    Entry(String, Value),
    Comment(Comment),
}

impl Value {
    pub fn str(s: impl Into<String>) -> Self {
        Value::Str(Zeroizing::new(s.into()))
    }

    /// Clears numbers and booleans too; strings clear themselves when dropped.
    pub fn wipe(&mut self) {
        match self {
            Value::Int(i) => i.zeroize(),
            Value::Float(f) => f.zeroize(),
            Value::Bool(b) => b.zeroize(),
            Value::Map(items) => {
                for item in items {
                    if let Item::Entry(_, v) = item {
                        v.wipe();
                    }
                }
            }
            Value::Seq(values) => values.iter_mut().for_each(Value::wipe),
            Value::Null | Value::Str(_) | Value::Bytes(_) | Value::Time(_) | Value::Comment(_) => {}
        }
    }

    pub fn is_container(&self) -> bool {
        matches!(self, Value::Map(_) | Value::Seq(_))
    }
}

/// Shows the shape (keys, nesting) and never a value.
impl fmt::Debug for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Map(items) => f
                .debug_map()
                .entries(items.iter().filter_map(|item| match item {
                    Item::Entry(k, v) => Some((k, v)),
                    Item::Comment(_) => None,
                }))
                .finish(),
            Value::Seq(values) => f.debug_list().entries(values).finish(),
            Value::Null => f.write_str("null"),
            _ => f.write_str("<redacted>"),
        }
    }
}

impl fmt::Debug for Item {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Item::Entry(k, v) => write!(f, "{k:?}: {v:?}"),
            Item::Comment(_) => f.write_str("#<redacted>"),
        }
    }
}

/// A whole file: one branch per YAML document (other stores have exactly one).
#[derive(Clone, PartialEq, Debug)]
pub struct Tree {
    pub branches: Vec<Vec<Item>>,
}

impl Drop for Tree {
    fn drop(&mut self) {
        for branch in &mut self.branches {
            for item in branch {
                if let Item::Entry(_, v) = item {
                    v.wipe();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_of_a_value_never_shows_the_value() {
        let v = Value::Map(vec![Item::Entry("k".into(), Value::str("sentinel-42"))]);
        let shown = format!("{v:?}");
        assert!(shown.contains("\"k\""));
        assert!(!shown.contains("sentinel-42"));
    }
}
