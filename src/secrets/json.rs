//! JSON as sops's JSON store reads and writes it: key order kept, every number a float64,
//! tab-indented output.

use std::path::Path;

use super::error::Error;
use super::value::{Item, Tree, Value};
use crate::yaml::number::format_json;

struct Reader<'a> {
    file: &'a Path,
    s: &'a [u8],
    i: usize,
    depth: usize,
}

const MAX_DEPTH: usize = 512;

impl Reader<'_> {
    fn err(&self, problem: &'static str) -> Error {
        let line = 1 + self.s[..self.i.min(self.s.len())]
            .iter()
            .filter(|b| **b == b'\n')
            .count();
        Error::Syntax {
            file: self.file.to_owned(),
            format: "JSON",
            line,
            problem: problem.into(),
        }
    }

    fn ws(&mut self) {
        while self.i < self.s.len() && matches!(self.s[self.i], b' ' | b'\t' | b'\n' | b'\r') {
            self.i += 1;
        }
    }

    fn eat(&mut self, b: u8) -> bool {
        self.ws();
        if self.s.get(self.i) == Some(&b) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn value(&mut self) -> Result<Value, Error> {
        self.ws();
        match self.s.get(self.i) {
            None => Err(self.err("unexpected end of input")),
            Some(b'{') => {
                self.enter()?;
                self.i += 1;
                let mut items = Vec::new();
                if !self.eat(b'}') {
                    loop {
                        self.ws();
                        if self.s.get(self.i) != Some(&b'"') {
                            return Err(self.err("expected a string key"));
                        }
                        let key = self.string()?;
                        if !self.eat(b':') {
                            return Err(self.err("expected ':'"));
                        }
                        let v = self.value()?;
                        items.push(Item::Entry(key, v));
                        if self.eat(b',') {
                            continue;
                        }
                        if self.eat(b'}') {
                            break;
                        }
                        return Err(self.err("expected ',' or '}'"));
                    }
                }
                self.depth -= 1;
                Ok(Value::Map(items))
            }
            Some(b'[') => {
                self.enter()?;
                self.i += 1;
                let mut values = Vec::new();
                if !self.eat(b']') {
                    loop {
                        values.push(self.value()?);
                        if self.eat(b',') {
                            continue;
                        }
                        if self.eat(b']') {
                            break;
                        }
                        return Err(self.err("expected ',' or ']'"));
                    }
                }
                self.depth -= 1;
                Ok(Value::Seq(values))
            }
            Some(b'"') => Ok(Value::str(self.string()?)),
            Some(b't') => self.word("true", Value::Bool(true)),
            Some(b'f') => self.word("false", Value::Bool(false)),
            Some(b'n') => self.word("null", Value::Null),
            Some(_) => self.number(),
        }
    }

    fn enter(&mut self) -> Result<(), Error> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(self.err("nested too deeply"));
        }
        Ok(())
    }

    fn word(&mut self, w: &str, v: Value) -> Result<Value, Error> {
        if self.s[self.i..].starts_with(w.as_bytes()) {
            self.i += w.len();
            Ok(v)
        } else {
            Err(self.err("invalid literal"))
        }
    }

    fn number(&mut self) -> Result<Value, Error> {
        let start = self.i;
        while self.i < self.s.len()
            && matches!(
                self.s[self.i],
                b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E'
            )
        {
            self.i += 1;
        }
        let text =
            std::str::from_utf8(&self.s[start..self.i]).map_err(|_| self.err("invalid number"))?;
        let valid = {
            let t = text.strip_prefix('-').unwrap_or(text);
            t.starts_with(|c: char| c.is_ascii_digit())
                && !(t.starts_with('0') && t.len() > 1 && t.as_bytes()[1].is_ascii_digit())
        };
        match text.parse::<f64>() {
            Ok(f) if valid && f.is_finite() => Ok(Value::Float(f)),
            _ => Err(self.err("invalid number")),
        }
    }

    fn hex4(&mut self) -> Result<u32, Error> {
        let h = self
            .s
            .get(self.i..self.i + 4)
            .ok_or_else(|| self.err("truncated \\u escape"))?;
        let h = std::str::from_utf8(h).map_err(|_| self.err("invalid \\u escape"))?;
        let v = u32::from_str_radix(h, 16).map_err(|_| self.err("invalid \\u escape"))?;
        self.i += 4;
        Ok(v)
    }

    fn string(&mut self) -> Result<String, Error> {
        self.i += 1;
        let mut out = Vec::new();
        loop {
            let Some(&b) = self.s.get(self.i) else {
                return Err(self.err("unterminated string"));
            };
            self.i += 1;
            match b {
                b'"' => break,
                b'\\' => {
                    let Some(&e) = self.s.get(self.i) else {
                        return Err(self.err("unterminated string"));
                    };
                    self.i += 1;
                    let c = match e {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => {
                            let hi = self.hex4()?;
                            let code = if (0xD800..0xDC00).contains(&hi)
                                && self.s[self.i..].starts_with(b"\\u")
                            {
                                self.i += 2;
                                let lo = self.hex4()?;
                                if (0xDC00..0xE000).contains(&lo) {
                                    0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
                                } else {
                                    0xFFFD
                                }
                            } else {
                                hi
                            };
                            char::from_u32(code).unwrap_or('\u{FFFD}')
                        }
                        _ => return Err(self.err("invalid escape")),
                    };
                    let mut buf = [0u8; 4];
                    out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                }
                b if b < 0x20 => return Err(self.err("control character in string")),
                b => out.push(b),
            }
        }
        String::from_utf8(out).map_err(|_| self.err("string is not UTF-8"))
    }
}

/// Reads one JSON value; a file must hold an object, as sops requires.
pub fn parse(file: &Path, text: &str) -> Result<Tree, Error> {
    let mut r = Reader {
        file,
        s: text.as_bytes(),
        i: 0,
        depth: 0,
    };
    let v = r.value()?;
    r.ws();
    if r.i != r.s.len() {
        return Err(r.err("trailing characters after the document"));
    }
    match v {
        Value::Map(items) => Ok(Tree {
            branches: vec![items],
        }),
        _ => Err(Error::Structure {
            file: file.to_owned(),
            key_path: "(top level)".into(),
            problem: "a JSON document must be an object",
        }),
    }
}

/// Go's `encoding/json` string escaping, HTML characters included.
pub fn quote(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' => {
                out.push_str(&format!("\\u{:04x}", c as u32))
            }
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

fn write(out: &mut String, v: &Value, depth: usize, unit: &str) {
    let pad = |out: &mut String, d: usize| {
        for _ in 0..d {
            out.push_str(unit);
        }
    };
    match v {
        Value::Null => out.push_str("null"),
        Value::Str(s) | Value::Time(s) => quote(out, s),
        Value::Bytes(b) => quote(out, &String::from_utf8_lossy(b)),
        Value::Int(i) => out.push_str(&i.to_string()),
        Value::Float(f) => out.push_str(&format_json(*f)),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Comment(_) => out.push_str("null"),
        Value::Map(items) => {
            let entries: Vec<_> = items
                .iter()
                .filter_map(|i| match i {
                    Item::Entry(k, v) => Some((k, v)),
                    Item::Comment(_) => None,
                })
                .collect();
            if entries.is_empty() {
                out.push_str("{}");
                return;
            }
            out.push_str("{\n");
            for (n, (k, v)) in entries.iter().enumerate() {
                pad(out, depth + 1);
                quote(out, k);
                out.push_str(": ");
                write(out, v, depth + 1, unit);
                if n + 1 < entries.len() {
                    out.push(',');
                }
                out.push('\n');
            }
            pad(out, depth);
            out.push('}');
        }
        Value::Seq(values) => {
            let values: Vec<_> = values
                .iter()
                .filter(|v| !matches!(v, Value::Comment(_)))
                .collect();
            if values.is_empty() {
                out.push_str("[]");
                return;
            }
            out.push_str("[\n");
            for (n, v) in values.iter().enumerate() {
                pad(out, depth + 1);
                write(out, v, depth + 1, unit);
                if n + 1 < values.len() {
                    out.push(',');
                }
                out.push('\n');
            }
            pad(out, depth);
            out.push(']');
        }
    }
}

/// The first branch as a JSON object, as sops writes it: indented by a tab, or by `spaces`
/// spaces when `.sops.yaml` `stores:` sets an indent (Go's `json.Indent`).
pub fn emit(tree: &Tree, spaces: Option<usize>) -> String {
    let unit = spaces.map_or_else(|| "\t".to_owned(), |n| " ".repeat(n));
    let mut out = String::new();
    let items = tree.branches.first().cloned().unwrap_or_default();
    write(&mut out, &Value::Map(items), 0, &unit);
    out.push('\n');
    out
}
