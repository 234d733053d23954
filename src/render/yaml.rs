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
    match value {
        Value::Object(m) if !m.is_empty() => write_map(&mut out, m, 0),
        Value::Array(a) if !a.is_empty() => write_seq(&mut out, a, 0),
        other => {
            write_scalar(&mut out, other, 0);
            out.push('\n');
        }
    }
    out
}

/// A multi-document stream, documents separated by `---`, as `kubectl kustomize` prints it.
pub fn to_yaml_stream<'a>(docs: impl IntoIterator<Item = &'a Value>) -> String {
    let mut out = String::new();
    for (i, d) in docs.into_iter().enumerate() {
        if i > 0 {
            out.push_str("---\n");
        }
        out.push_str(&to_yaml(d));
    }
    out
}

fn indent(out: &mut String, n: usize) {
    for _ in 0..n {
        out.push(' ');
    }
}

fn sorted(m: &Map<String, Value>) -> Vec<(&String, &Value)> {
    let mut v: Vec<_> = m.iter().collect();
    v.sort_by(|a, b| a.0.cmp(b.0));
    v
}

fn write_map(out: &mut String, m: &Map<String, Value>, ind: usize) {
    for (i, (k, v)) in sorted(m).into_iter().enumerate() {
        if i > 0 {
            indent(out, ind);
        }
        write_key(out, k);
        out.push(':');
        write_value_after_key(out, v, ind);
    }
}

fn write_value_after_key(out: &mut String, v: &Value, ind: usize) {
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
            write_scalar(out, other, ind + 2);
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
                write_scalar(out, other, ind + 2);
                out.push('\n');
            }
        }
    }
}

fn write_key(out: &mut String, k: &str) {
    if needs_quotes(k) {
        write_double_quoted(out, k);
    } else {
        out.push_str(k);
    }
}

fn write_scalar(out: &mut String, v: &Value, ind: usize) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => out.push_str(&n.to_string()),
        Value::String(s) => write_string(out, s, ind),
        Value::Object(_) => out.push_str("{}"),
        Value::Array(_) => out.push_str("[]"),
    }
}

fn write_string(out: &mut String, s: &str, ind: usize) {
    if s.contains('\n') && literal_ok(s) {
        out.push('|');
        let body = s.strip_suffix('\n');
        match body {
            Some(b) if b.ends_with('\n') => out.push('+'),
            Some(_) => {}
            None => out.push('-'),
        }
        if s.starts_with(' ') {
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
        // The final line break of the block is ours, not part of the scalar.
        out.pop();
        return;
    }
    if needs_quotes(s) {
        if s.contains(['\\', '"']) || s.chars().any(|c| c.is_control()) {
            write_double_quoted(out, s);
        } else {
            out.push('"');
            out.push_str(s);
            out.push('"');
        }
    } else {
        out.push_str(s);
    }
}

fn literal_ok(s: &str) -> bool {
    !s.chars()
        .any(|c| (c.is_control() && c != '\n') || c == '\u{feff}')
        && !s.lines().any(|l| l.ends_with(' '))
}

fn write_double_quoted(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Whether a plain scalar would read back as something other than this string.
fn needs_quotes(s: &str) -> bool {
    if s.is_empty() {
        return true;
    }
    let lower = s.to_ascii_lowercase();
    if matches!(
        lower.as_str(),
        "true" | "false" | "null" | "~" | "yes" | "no" | "on" | "off" | "y" | "n"
    ) {
        return true;
    }
    if looks_numeric(s) {
        return true;
    }
    let first = s.chars().next().unwrap_or(' ');
    if "-?:,[]{}#&*!|>'\"%@`".contains(first) {
        // A leading `-`, `?` or `:` is plain only when followed by a non-space.
        let plain_indicator =
            matches!(first, '-' | '?' | ':') && s.chars().nth(1).is_some_and(|c| c != ' ');
        if !plain_indicator || s == "-" {
            return true;
        }
    }
    if s.starts_with(' ') || s.ends_with(' ') || s.contains(": ") || s.contains(" #") {
        return true;
    }
    if s.ends_with(':') {
        return true;
    }
    s.chars().any(|c| c.is_control() || c == '\u{feff}')
}

fn looks_numeric(s: &str) -> bool {
    let t = s.strip_prefix(['+', '-']).unwrap_or(s);
    if t.is_empty() {
        return false;
    }
    if matches!(t.to_ascii_lowercase().as_str(), ".inf" | ".nan") {
        return true;
    }
    if let Some(h) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0o")) {
        return !h.is_empty() && h.chars().all(|c| c.is_ascii_hexdigit() || c == '_');
    }
    let mut digits = 0;
    let mut ok = true;
    for c in t.chars() {
        match c {
            '0'..='9' => digits += 1,
            '.' | 'e' | 'E' | '+' | '-' | '_' | ':' => {}
            _ => {
                ok = false;
                break;
            }
        }
    }
    ok && digits > 0
        && t.chars()
            .next()
            .is_some_and(|c| c.is_ascii_digit() || c == '.')
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
