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
        let value = serde_yaml_ng::Value::deserialize(doc).map_err(|e| ParseError {
            index: i + 1,
            message: e.to_string(),
        })?;
        let value = to_json(value).map_err(|message| ParseError {
            index: i + 1,
            message,
        })?;
        if !value.is_null() {
            out.push(value);
        }
    }
    Ok(out)
}

/// YAML values with non-string keys keep their keys as text, as kustomize's JSON round trip does.
fn to_json(v: serde_yaml_ng::Value) -> Result<Value, String> {
    use serde_yaml_ng::Value as Y;
    Ok(match v {
        Y::Null => Value::Null,
        Y::Bool(b) => Value::Bool(b),
        Y::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::from(i)
            } else if let Some(u) = n.as_u64() {
                Value::from(u)
            } else {
                let f = n.as_f64().unwrap_or(f64::NAN);
                serde_json::Number::from_f64(f)
                    .map(Value::Number)
                    .unwrap_or_else(|| Value::String(n.to_string()))
            }
        }
        Y::String(s) => Value::String(s),
        Y::Sequence(items) => {
            Value::Array(items.into_iter().map(to_json).collect::<Result<_, _>>()?)
        }
        Y::Mapping(m) => {
            let mut out = Map::new();
            for (k, v) in m {
                let key = match k {
                    Y::String(s) => s,
                    Y::Number(n) => n.to_string(),
                    Y::Bool(b) => b.to_string(),
                    Y::Null => "null".to_owned(),
                    other => return Err(format!("unsupported map key {other:?}")),
                };
                if key == "<<" {
                    // YAML merge keys: the merged map's entries, without overriding explicit ones.
                    if let Value::Object(merged) = to_json(v)? {
                        for (mk, mv) in merged {
                            out.entry(mk).or_insert(mv);
                        }
                    }
                    continue;
                }
                out.insert(key, to_json(v)?);
            }
            Value::Object(out)
        }
        Y::Tagged(t) => to_json(t.value)?,
    })
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
