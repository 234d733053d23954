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

/// Go's `strconv.FormatFloat(f, 'f', -1, 64)`: the shortest digits that round-trip, never an
/// exponent. This is what sops hashes and encrypts for a float.
pub fn go_float_fixed(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        };
    }
    // Rust's Display already prints the shortest round-trip digits without an exponent.
    format!("{f}")
}

/// The shortest round-trip decimal digits of `f` (no sign) and the decimal exponent of the
/// first digit, as Go's formatting code works with them.
fn shortest_digits(f: f64) -> (String, i32) {
    let sci = format!("{:e}", f.abs());
    let (mantissa, exp) = sci
        .split_once('e')
        .expect("Rust's {:e} output always contains an exponent");
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let exp: i32 = exp
        .parse()
        .expect("Rust's {:e} exponent is always an integer");
    (digits, exp)
}

fn go_exponent_form(f: f64, min_exp_digits: usize) -> String {
    let (digits, exp) = shortest_digits(f);
    let mut out = String::new();
    if f.is_sign_negative() {
        out.push('-');
    }
    out.push_str(&digits[..1]);
    if digits.len() > 1 {
        out.push('.');
        out.push_str(&digits[1..]);
    }
    out.push('e');
    out.push(if exp < 0 { '-' } else { '+' });
    let e = exp.unsigned_abs().to_string();
    for _ in e.len()..min_exp_digits {
        out.push('0');
    }
    out.push_str(&e);
    out
}

/// Go's `strconv.FormatFloat(f, 'g', -1, 64)` as go-yaml writes floats, with YAML's spellings
/// of the special values.
pub fn go_float_yaml(f: f64) -> String {
    if f.is_nan() {
        return ".nan".into();
    }
    if f.is_infinite() {
        return if f > 0.0 {
            ".inf".into()
        } else {
            "-.inf".into()
        };
    }
    if f == 0.0 {
        return if f.is_sign_negative() { "-0" } else { "0" }.into();
    }
    let (_, exp) = shortest_digits(f);
    // strconv's 'g' with the shortest precision switches to an exponent from 1e6 on.
    if !(-4..6).contains(&exp) {
        go_exponent_form(f, 2)
    } else {
        format!("{f}")
    }
}

/// Go's `encoding/json` rendering of a float64: fixed notation between 1e-6 and 1e21,
/// exponent form outside, without a leading zero in a negative exponent.
pub fn go_float_json(f: f64) -> String {
    let abs = f.abs();
    if abs != 0.0 && !(1e-6..1e21).contains(&abs) {
        go_exponent_form(f, 1)
    } else {
        format!("{f}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_render_as_go_renders_them() {
        assert_eq!(
            go_float_fixed(1.2345678901234568e29),
            "123456789012345680000000000000"
        );
        assert_eq!(go_float_fixed(3.5), "3.5");
        assert_eq!(go_float_fixed(1.0), "1");
        assert_eq!(go_float_fixed(f64::INFINITY), "+Inf");
        assert_eq!(
            go_float_yaml(1.2345678901234568e29),
            "1.2345678901234568e+29"
        );
        assert_eq!(go_float_yaml(0.5), "0.5");
        assert_eq!(go_float_yaml(1234567.0), "1.234567e+06");
        assert_eq!(go_float_yaml(123456.0), "123456");
        assert_eq!(go_float_yaml(1e-7), "1e-07");
        assert_eq!(go_float_json(1e21), "1e+21");
        assert_eq!(go_float_json(1e-7), "1e-7");
        assert_eq!(
            go_float_json(12345678901234567890.0),
            "12345678901234567000"
        );
    }

    #[test]
    fn debug_of_a_value_never_shows_the_value() {
        let v = Value::Map(vec![Item::Entry("k".into(), Value::str("sentinel-42"))]);
        let shown = format!("{v:?}");
        assert!(shown.contains("\"k\""));
        assert!(!shown.contains("sentinel-42"));
    }
}
