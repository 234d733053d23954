//! Reading YAML streams into JSON-shaped values and printing them back the way kustomize does
//! (map keys sorted, sequences flush with their parent key, literal blocks for multi-line text).

use serde::Deserialize;
use serde_json::{Map, Value};

#[derive(Debug, thiserror::Error)]
#[error("document {index}: {message}")]
pub struct ParseError {
    /// 1-based position of the failing document in its stream.
    pub index: usize,
    pub message: String,
}

/// Every non-empty document of a YAML stream, in order.
pub fn parse_documents(text: &str) -> Result<Vec<Value>, ParseError> {
    let mut out = Vec::new();
    for (i, doc) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let Loose(value) = Loose::deserialize(doc).map_err(|e| ParseError {
            index: i + 1,
            message: e.to_string(),
        })?;
        if !value.is_null() {
            out.push(value);
        }
    }
    Ok(out)
}

/// A YAML node read as JSON: a repeated map key keeps its last value (as kustomize's JSON
/// round trip does), non-string keys become their text, and custom tags are dropped.
struct Loose(Value);

impl<'de> Deserialize<'de> for Loose {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(LooseVisitor).map(Loose)
    }
}

/// A map key of any scalar type, as text.
struct Key(String);

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let Loose(v) = Loose::deserialize(d)?;
        Ok(Key(match v {
            Value::String(s) => s,
            Value::Null => "null".to_owned(),
            other => other.to_string(),
        }))
    }
}

struct LooseVisitor;

impl<'de> serde::de::Visitor<'de> for LooseVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v)
            .map(Value::Number)
            .unwrap_or_else(|| Value::String(v.to_string())))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        Loose::deserialize(d).map(|l| l.0)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(Loose(v)) = seq.next_element()? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some((Key(k), Loose(v))) = map.next_entry()? {
            out.insert(k, v);
        }
        Ok(Value::Object(out))
    }
    fn visit_enum<A: serde::de::EnumAccess<'de>>(self, data: A) -> Result<Value, A::Error> {
        use serde::de::VariantAccess;
        let (_tag, variant): (Key, _) = data.variant()?;
        variant.newtype_variant::<Loose>().map(|l| l.0)
    }
}

/// One document as kustomize prints it (without the `---` separator).
pub fn to_yaml(value: &Value) -> String {
    let mut out = String::new();
    write_document(&mut out, value);
    out
}

/// Appends one document to `out`.
pub fn write_document(out: &mut String, value: &Value) {
    match value {
        Value::Object(m) if !m.is_empty() => write_map(out, m, 0),
        Value::Array(a) if !a.is_empty() => write_seq(out, a, 0),
        other => {
            write_scalar(out, other, 0, 0);
            out.push('\n');
        }
    }
}

/// Appends one object as a document to `out`.
pub fn write_object(out: &mut String, m: &Map<String, Value>) {
    if m.is_empty() {
        out.push_str("{}\n");
    } else {
        write_map(out, m, 0);
    }
}

/// The column after which the YAML emitter kustomize uses folds long scalars.
const BEST_WIDTH: usize = 80;

fn indent(out: &mut String, n: usize) {
    for _ in 0..n {
        out.push(' ');
    }
}

fn write_map(out: &mut String, m: &Map<String, Value>, ind: usize) {
    let mut entries: Vec<_> = m.iter().collect();
    entries.sort_by(|a, b| a.0.cmp(b.0));
    for (i, (k, v)) in entries.into_iter().enumerate() {
        if i > 0 {
            indent(out, ind);
        }
        let key_width = write_string(out, k, ind, ind + 2, true);
        out.push(':');
        write_value_after_key(out, v, ind, key_width + 1);
    }
}

/// `col` is the column right after the colon.
fn write_value_after_key(out: &mut String, v: &Value, ind: usize, col: usize) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            out.push('\n');
            indent(out, ind + 2);
            write_map(out, m, ind + 2);
        }
        Value::Array(a) if !a.is_empty() => {
            out.push('\n');
            indent(out, ind);
            write_seq(out, a, ind);
        }
        other => {
            out.push(' ');
            write_scalar(out, other, col + 1, ind + 2);
            out.push('\n');
        }
    }
}

fn write_seq(out: &mut String, a: &[Value], ind: usize) {
    for (i, v) in a.iter().enumerate() {
        if i > 0 {
            indent(out, ind);
        }
        out.push_str("- ");
        match v {
            Value::Object(m) if !m.is_empty() => write_map(out, m, ind + 2),
            Value::Array(inner) if !inner.is_empty() => write_seq(out, inner, ind + 2),
            other => {
                write_scalar(out, other, ind + 2, ind + 2);
                out.push('\n');
            }
        }
    }
}

/// Writes a scalar starting at column `col`; folded lines continue at `ind`.
fn write_scalar(out: &mut String, v: &Value, col: usize, ind: usize) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => out.push_str(&n.to_string()),
        Value::String(s) => {
            write_string(out, s, col, ind, false);
        }
        Value::Object(_) => out.push_str("{}"),
        Value::Array(_) => out.push_str("[]"),
    }
}

#[derive(PartialEq, Eq, Clone, Copy)]
enum Style {
    Plain,
    Single,
    Double,
    Literal,
}

fn style_of(s: &str, key: bool) -> Style {
    if s.is_empty() || resolves_to_non_string(s) {
        return Style::Double;
    }
    let special = s
        .chars()
        .any(|c| (c.is_control() && c != '\n') || c == '\u{feff}' || c == '\u{85}');
    let has_break = s.contains('\n');
    let space_break = s.contains(" \n");
    if has_break && !key && !special && !space_break && !s.ends_with(' ') {
        return Style::Literal;
    }
    if special || has_break {
        return Style::Double;
    }
    if plain_ok(s) {
        Style::Plain
    } else {
        Style::Single
    }
}

/// Writes a string starting at column `col` and returns the column after it.
fn write_string(out: &mut String, s: &str, col: usize, ind: usize, key: bool) -> usize {
    match style_of(s, key) {
        Style::Literal => {
            write_literal(out, s, ind);
            0
        }
        Style::Plain => write_folded(out, s, col, ind, Style::Plain, key),
        Style::Single => write_folded(out, s, col, ind, Style::Single, key),
        Style::Double => write_folded(out, s, col, ind, Style::Double, key),
    }
}

fn write_literal(out: &mut String, s: &str, ind: usize) {
    out.push('|');
    let body = s.strip_suffix('\n');
    match body {
        Some(b) if b.ends_with('\n') || b.is_empty() => out.push('+'),
        Some(_) => {}
        None => out.push('-'),
    }
    if s.starts_with(' ') || s.starts_with('\n') {
        out.push('2');
    }
    out.push('\n');
    let content = body.unwrap_or(s);
    for line in content.split('\n') {
        if !line.is_empty() {
            indent(out, ind);
            out.push_str(line);
        }
        out.push('\n');
    }
    // The final line break of the block is the caller's.
    out.pop();
}

/// Plain, single- and double-quoted scalars, folded at spaces past the best width as the
/// emitter does. Returns the column after the scalar.
fn write_folded(
    out: &mut String,
    s: &str,
    mut col: usize,
    ind: usize,
    style: Style,
    key: bool,
) -> usize {
    let chars: Vec<char> = s.chars().collect();
    let quote = match style {
        Style::Single => Some('\''),
        Style::Double => Some('"'),
        _ => None,
    };
    if let Some(q) = quote {
        out.push(q);
        col += 1;
    }
    let mut spaces = false;
    let n = chars.len();
    let mut i = 0;
    while i < n {
        let c = chars[i];
        let next_space = chars.get(i + 1) == Some(&' ');
        if c == ' ' {
            let may_break = !key
                && !spaces
                && col > BEST_WIDTH
                && match style {
                    Style::Plain => !next_space,
                    Style::Single => i != 0 && i != n - 1 && !next_space,
                    _ => i != 0 && i != n - 1,
                };
            if may_break {
                out.push('\n');
                indent(out, ind);
                col = ind;
                if style == Style::Double && next_space {
                    out.push('\\');
                    col += 1;
                }
            } else {
                out.push(' ');
                col += 1;
            }
            spaces = true;
            i += 1;
            continue;
        }
        spaces = false;
        match style {
            Style::Double => {
                let esc = match c {
                    '"' => Some("\\\"".to_owned()),
                    '\\' => Some("\\\\".to_owned()),
                    '\n' => Some("\\n".to_owned()),
                    '\t' => Some("\\t".to_owned()),
                    '\r' => Some("\\r".to_owned()),
                    '\0' => Some("\\0".to_owned()),
                    '\u{7}' => Some("\\a".to_owned()),
                    '\u{8}' => Some("\\b".to_owned()),
                    '\u{b}' => Some("\\v".to_owned()),
                    '\u{c}' => Some("\\f".to_owned()),
                    '\u{1b}' => Some("\\e".to_owned()),
                    '\u{85}' => Some("\\N".to_owned()),
                    '\u{a0}' => Some("\\_".to_owned()),
                    '\u{2028}' => Some("\\L".to_owned()),
                    '\u{2029}' => Some("\\P".to_owned()),
                    '\u{feff}' => Some("\\uFEFF".to_owned()),
                    c if c.is_control() => Some(format!("\\x{:02X}", c as u32)),
                    _ => None,
                };
                match esc {
                    Some(e) => {
                        col += e.len();
                        out.push_str(&e);
                    }
                    None => {
                        out.push(c);
                        col += 1;
                    }
                }
            }
            Style::Single if c == '\'' => {
                out.push_str("''");
                col += 2;
            }
            _ => {
                out.push(c);
                col += 1;
            }
        }
        i += 1;
    }
    if let Some(q) = quote {
        out.push(q);
        col += 1;
    }
    col
}

/// Whether a plain scalar would read back as something other than a string.
fn resolves_to_non_string(s: &str) -> bool {
    matches!(
        s,
        "~" | "null"
            | "Null"
            | "NULL"
            | "true"
            | "True"
            | "TRUE"
            | "false"
            | "False"
            | "FALSE"
            | "y"
            | "Y"
            | "yes"
            | "Yes"
            | "YES"
            | "n"
            | "N"
            | "no"
            | "No"
            | "NO"
            | "on"
            | "On"
            | "ON"
            | "off"
            | "Off"
            | "OFF"
    ) || looks_numeric(s)
}

/// Whether the string may be written without quotes.
fn plain_ok(s: &str) -> bool {
    let first = s.chars().next().unwrap_or(' ');
    if s.starts_with(' ') || s.ends_with(' ') {
        return false;
    }
    if "#,[]{}&*!|>'\"%@`".contains(first) {
        return false;
    }
    if matches!(first, '-' | '?' | ':') {
        let second = s.chars().nth(1);
        if second.is_none_or(|c| c == ' ') {
            return false;
        }
    }
    if s.starts_with("---") || s.starts_with("...") {
        return false;
    }
    !(s.contains(": ") || s.contains(" #") || s.ends_with(':'))
}

fn looks_numeric(s: &str) -> bool {
    let t = s.strip_prefix(['+', '-']).unwrap_or(s);
    if t.is_empty() {
        return false;
    }
    if matches!(t, ".inf" | ".Inf" | ".INF" | ".nan" | ".NaN" | ".NAN") {
        return true;
    }
    if let Some(h) = t.strip_prefix("0x") {
        return !h.is_empty() && h.chars().all(|c| c.is_ascii_hexdigit() || c == '_');
    }
    if let Some(o) = t.strip_prefix("0o") {
        return !o.is_empty() && o.chars().all(|c| c.is_digit(8) || c == '_');
    }
    if let Some(b) = t.strip_prefix("0b") {
        return !b.is_empty() && b.chars().all(|c| c == '0' || c == '1' || c == '_');
    }
    // Integers, floats, and YAML 1.1 sexagesimal numbers like 1:20.
    let mut digits = 0;
    for c in t.chars() {
        match c {
            '0'..='9' => digits += 1,
            '.' | 'e' | 'E' | '+' | '-' | '_' | ':' => {}
            _ => return false,
        }
    }
    digits > 0
        && t.chars()
            .next()
            .is_some_and(|c| c.is_ascii_digit() || c == '.')
        && (t.parse::<f64>().is_ok()
            || t.replace('_', "").parse::<f64>().is_ok()
            || t.split(':')
                .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit() || c == '.')))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printed_documents_read_back_as_the_same_values() {
        let text = "b: \"1\"\na:\n  list:\n  - x: \"true\"\n    y: 2\n  - plain\n  text: |\n    two\n    lines\n  empty: \"\"\n";
        let docs = parse_documents(text).expect("valid yaml");
        let printed = to_yaml(&docs[0]);
        assert!(printed.starts_with("a:\n  empty: \"\"\n  list:\n  - x: \"true\"\n"));
        assert_eq!(parse_documents(&printed).expect("reparse"), docs);
    }
}
