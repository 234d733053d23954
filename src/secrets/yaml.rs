//! YAML as sops reads and writes it: go-yaml v3's scalar resolution, comments kept as tree
//! items where sops's YAML store puts them, 4-space block output.
//!
//! saphyr-parser gives events with character spans but drops comments; comments are recovered
//! from the text between consecutive events, where nothing but indicators, whitespace and
//! comments can appear.

use std::collections::HashMap;
use std::path::Path;

use base64::Engine as _;
use saphyr_parser::{Event, ScalarStyle, Span};

use super::error::Error;
use super::value::{Comment, Item, Tree, Value};
use crate::yaml::events::Events;
use crate::yaml::number;
use crate::yaml::resolve::{Plain, Schema, plain_reads_back, resolve};
use crate::yaml::time;

struct PendingComment {
    text: String,
    col: usize,
}

enum Frame {
    Map {
        items: Vec<Item>,
        col: usize,
        key: Option<String>,
        anchor: usize,
    },
    Seq {
        values: Vec<Value>,
        col: usize,
        anchor: usize,
    },
}

impl Frame {
    fn col(&self) -> usize {
        match self {
            Frame::Map { col, .. } | Frame::Seq { col, .. } => *col,
        }
    }

    fn push_comment(&mut self, c: Comment) {
        match self {
            Frame::Map { items, .. } => items.push(Item::Comment(c)),
            Frame::Seq { values, .. } => values.push(Value::Comment(c)),
        }
    }
}

struct Reader<'a> {
    file: &'a Path,
    chars: Vec<char>,
    frames: Vec<Frame>,
    pending: Vec<PendingComment>,
    anchors: HashMap<usize, Value>,
    root: Option<Value>,
    /// Comments before or after the root node of the current document.
    doc_comments: Vec<Comment>,
    branches: Vec<Vec<Item>>,
}

fn syntax(file: &Path, line: usize, problem: impl Into<String>) -> Error {
    Error::Syntax {
        file: file.to_owned(),
        format: "YAML",
        line,
        problem: problem.into(),
    }
}

impl Reader<'_> {
    fn structure(&self, problem: &'static str) -> Error {
        Error::Structure {
            file: self.file.to_owned(),
            key_path: self.current_path(),
            problem,
        }
    }

    fn current_path(&self) -> String {
        let mut out = String::new();
        for f in &self.frames {
            match f {
                Frame::Map { key: Some(k), .. } => {
                    if !out.is_empty() {
                        out.push('.');
                    }
                    out.push_str(k);
                }
                Frame::Seq { values, .. } => out.push_str(&format!("[{}]", values.len())),
                Frame::Map { key: None, .. } => {}
            }
        }
        if out.is_empty() {
            "(top level)".into()
        } else {
            out
        }
    }

    /// Finds comments in the text between two events.
    fn scan_gap(&mut self, from: usize, to: usize) {
        let mut i = from;
        // Recover the column of `from`, and whether its line has content before it, by looking
        // back to the previous newline.
        let mut j = from;
        while j > 0 && self.chars[j - 1] != '\n' {
            j -= 1;
        }
        let mut col = from - j;
        let mut line_start_seen_content = self.chars[j..from].iter().any(|c| !c.is_whitespace());
        while i < to.min(self.chars.len()) {
            let c = self.chars[i];
            if c == '\n' {
                col = 0;
                line_start_seen_content = false;
                i += 1;
                continue;
            }
            let prev_blank = i == 0 || matches!(self.chars[i - 1], ' ' | '\t' | '\n');
            if c == '#' && prev_blank {
                let start = i + 1;
                let mut end = start;
                while end < self.chars.len() && self.chars[end] != '\n' {
                    end += 1;
                }
                let mut text: String = self.chars[start..end].iter().collect();
                if text.ends_with('\r') {
                    text.pop();
                }
                if line_start_seen_content {
                    self.inline_comment(text);
                } else {
                    self.pending.push(PendingComment { text, col });
                }
                col += end - i;
                i = end;
                continue;
            }
            if !matches!(c, ' ' | '\t') {
                line_start_seen_content = true;
            }
            col += 1;
            i += 1;
        }
    }

    /// A comment on the same line as the end of the previous node. sops 3.11 stores it as a
    /// comment line before the entry or item it trails.
    fn inline_comment(&mut self, text: String) {
        match self.frames.last_mut() {
            Some(Frame::Map { items, key, .. }) => {
                let c = Item::Comment(Comment::new(text));
                if key.is_none() && !items.is_empty() {
                    let at = items.len() - 1;
                    items.insert(at, c);
                } else {
                    items.push(c);
                }
            }
            Some(Frame::Seq { values, .. }) => {
                let c = Value::Comment(Comment::new(text));
                let at = values.len().saturating_sub(1);
                values.insert(at, c);
            }
            None => self.doc_comments.push(Comment::new(text)),
        }
    }

    /// Hands pending comments at or right of `min_col` to the innermost open container (all of
    /// them when `min_col` is `None`).
    fn flush_pending(&mut self, min_col: Option<usize>) {
        let (take, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.pending)
            .into_iter()
            .partition(|p| min_col.is_none_or(|m| p.col >= m));
        self.pending = keep;
        for p in take {
            let c = Comment::new(p.text);
            match self.frames.last_mut() {
                Some(f) => f.push_comment(c),
                None => self.doc_comments.push(c),
            }
        }
    }

    fn add_node(&mut self, value: Value, anchor: usize) -> Result<(), Error> {
        if anchor != 0 {
            self.anchors.insert(anchor, value.clone());
        }
        match self.frames.last_mut() {
            None => {
                self.root = Some(value);
                Ok(())
            }
            Some(Frame::Seq { values, .. }) => {
                values.push(value);
                Ok(())
            }
            Some(Frame::Map { items, key, .. }) => match key.take() {
                Some(k) => {
                    items.push(Item::Entry(k, value));
                    Ok(())
                }
                None => match value {
                    Value::Str(s) => {
                        *key = Some(s.to_string());
                        Ok(())
                    }
                    _ => Err(self.structure("only string keys are supported")),
                },
            },
        }
    }

    fn end_document(&mut self) -> Result<(), Error> {
        self.flush_pending(None);
        let root = self.root.take();
        let mut branch: Vec<Item> = Vec::new();
        let comments = std::mem::take(&mut self.doc_comments);
        match root {
            None | Some(Value::Null) => {
                branch.extend(comments.into_iter().map(Item::Comment));
            }
            Some(Value::Map(items)) => {
                // Comments around the root mapping went into it; only stray ones are left.
                branch.extend(items);
                branch.extend(comments.into_iter().map(Item::Comment));
            }
            Some(Value::Seq(_)) => {
                return Err(Error::Structure {
                    file: self.file.to_owned(),
                    key_path: "(top level)".into(),
                    problem: "YAML documents that are sequences are not supported",
                });
            }
            Some(_) => {
                return Err(Error::Structure {
                    file: self.file.to_owned(),
                    key_path: "(top level)".into(),
                    problem: "YAML documents that are values are not supported",
                });
            }
        }
        self.branches.push(branch);
        self.anchors.clear();
        Ok(())
    }
}

/// go-yaml v3's resolution of a plain scalar, as sops reads it: sops cannot walk a `uint64`, so
/// such a number stays text.
pub fn resolve_plain(s: &str) -> Value {
    match resolve(s, Schema::V3) {
        Plain::Null => Value::Null,
        Plain::Bool(b) => Value::Bool(b),
        Plain::Int(i) => Value::Int(i),
        Plain::Float(f) => Value::Float(f),
        Plain::Time => match time::from_yaml(s) {
            Some(t) => Value::Time(zeroize::Zeroizing::new(t)),
            None => Value::str(s),
        },
        Plain::Uint(_) | Plain::Merge | Plain::Str => Value::str(s),
    }
}

fn scalar_value(
    file: &Path,
    line: usize,
    text: &str,
    style: ScalarStyle,
    tag: Option<&saphyr_parser::Tag>,
) -> Result<Value, Error> {
    if let Some(t) = tag
        && matches!(t.handle.as_str(), "tag:yaml.org,2002:" | "!!")
    {
        return match t.suffix.as_str() {
            "str" => Ok(Value::str(text)),
            "binary" => {
                let compact: String = text.chars().filter(|c| !c.is_whitespace()).collect();
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(compact)
                    .map_err(|_| syntax(file, line, "!!binary value is not base64"))?;
                Ok(match String::from_utf8(bytes) {
                    Ok(s) => Value::str(s),
                    Err(e) => Value::Bytes(zeroize::Zeroizing::new(e.into_bytes())),
                })
            }
            _ => Ok(resolve_plain(text)),
        };
    }
    Ok(match style {
        ScalarStyle::Plain => resolve_plain(text),
        _ => Value::str(text),
    })
}

/// Reads every document of a YAML stream into a tree, comments included.
pub fn parse(file: &Path, text: &str) -> Result<Tree, Error> {
    // sops's YAML reader refuses these before parsing; accepting them would write files sops
    // cannot open.
    let allowed = |c: char| {
        matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{7e}' | '\u{85}' | '\u{a0}'..='\u{d7ff}')
            || ('\u{e000}'..='\u{fffd}').contains(&c)
            || c >= '\u{10000}'
    };
    if let Some(at) = text.find(|c: char| !allowed(c)) {
        let c = text[at..].chars().next().expect("found at this index");
        let line = text[..at].matches('\n').count() + 1;
        return Err(syntax(
            file,
            line,
            format!("control characters are not allowed (U+{:04X})", c as u32),
        ));
    }
    let mut r = Reader {
        file,
        chars: text.chars().collect(),
        frames: Vec::new(),
        pending: Vec::new(),
        anchors: HashMap::new(),
        root: None,
        doc_comments: Vec::new(),
        branches: Vec::new(),
    };
    let mut prev_end = 0usize;
    let mut in_document = false;
    for next in Events::new(text) {
        let (event, span): (Event<'_>, Span) = next.map_err(|e| {
            let (line, problem) = e.line_and_problem();
            syntax(file, line, problem)
        })?;
        let start = span.start.index();
        if start > prev_end {
            r.scan_gap(prev_end, start);
        }
        match event {
            Event::StreamStart | Event::Nothing => {}
            Event::StreamEnd => {
                if in_document {
                    r.end_document()?;
                }
            }
            Event::DocumentStart(_) => {
                if in_document {
                    r.end_document()?;
                }
                in_document = true;
            }
            Event::DocumentEnd => {
                if in_document {
                    r.end_document()?;
                }
                in_document = false;
            }
            Event::Alias(id) => {
                r.flush_pending(None);
                let value =
                    r.anchors.get(&id).cloned().ok_or_else(|| {
                        syntax(file, span.start.line(), "alias to an unknown anchor")
                    })?;
                r.add_node(value, 0)?;
            }
            Event::Scalar(value, style, anchor, tag) => {
                r.flush_pending(None);
                let v = scalar_value(file, span.start.line(), &value, style, tag.as_deref())?;
                r.add_node(v, anchor)?;
            }
            Event::MappingStart(anchor, _) | Event::SequenceStart(anchor, _) => {
                let col = span.start.col();
                // Comments left of the new container belong to its parent.
                let (inner, outer): (Vec<_>, Vec<_>) = std::mem::take(&mut r.pending)
                    .into_iter()
                    .partition(|p| p.col >= col);
                r.pending = outer;
                r.flush_pending(None);
                r.frames.push(if matches!(event, Event::MappingStart(..)) {
                    Frame::Map {
                        items: Vec::new(),
                        col,
                        key: None,
                        anchor,
                    }
                } else {
                    Frame::Seq {
                        values: Vec::new(),
                        col,
                        anchor,
                    }
                });
                r.pending = inner;
                r.flush_pending(None);
            }
            Event::MappingEnd | Event::SequenceEnd => {
                let col = r.frames.last().map_or(0, Frame::col);
                r.flush_pending(Some(col));
                let frame = r
                    .frames
                    .pop()
                    .expect("the parser balances start and end events");
                let (value, anchor) = match frame {
                    Frame::Map { items, anchor, .. } => (Value::Map(items), anchor),
                    Frame::Seq { values, anchor, .. } => (Value::Seq(values), anchor),
                };
                r.add_node(value, anchor)?;
            }
        }
        let end = span.end.index();
        prev_end = prev_end.max(end);
    }
    Ok(Tree {
        branches: std::mem::take(&mut r.branches),
    })
}

// ---------------------------------------------------------------------------------------------
// Writing

/// go-yaml v3's indentation, which sops keeps unless `.sops.yaml` `stores: {yaml: {indent}}`
/// sets another.
pub const DEFAULT_INDENT: usize = 4;

/// Characters written as they are; anything else is escaped inside double quotes.
fn printable(c: char) -> bool {
    !c.is_control()
        && !matches!(
            c,
            '\u{feff}' | '\u{fffe}' | '\u{ffff}' | '\u{2028}' | '\u{2029}'
        )
}

/// Whether `s`, which reads back as itself, can also be written without quotes.
fn plain_ok(s: &str) -> bool {
    let Some(first) = s.chars().next() else {
        return false;
    };
    let second = s.chars().nth(1);
    if matches!(
        first,
        '?' | ':'
            | ','
            | '['
            | ']'
            | '{'
            | '}'
            | '#'
            | '&'
            | '*'
            | '!'
            | '|'
            | '>'
            | '\''
            | '"'
            | '%'
            | '@'
            | '`'
    ) {
        return false;
    }
    if first == '-' && second.is_none_or(|c| c == ' ') {
        return false;
    }
    if s.starts_with([' ', '\t']) || s.ends_with([' ', '\t', ':']) {
        return false;
    }
    if s.contains(": ") || s.contains(" #") || s.contains(":\t") || s.contains("\t#") {
        return false;
    }
    s.chars().all(printable)
}

fn double_quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            '\0' => out.push_str("\\0"),
            c if !printable(c) => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn literal_ok(s: &str) -> bool {
    s.contains('\n')
        && !s.starts_with([' ', '\t', '\n'])
        && s.chars().all(|c| c == '\n' || printable(c))
        && s.split('\n').all(|l| !l.ends_with([' ', '\t']))
}

/// go-yaml's choice of style: double quotes for text that would read back as another type,
/// a literal block for several lines, plain when the text allows, else single quotes.
fn write_string(out: &mut String, s: &str, indent: usize) {
    if !plain_reads_back(s, Schema::V3) {
        out.push_str(&double_quoted(s));
    } else if s.contains('\n') {
        if literal_ok(s) {
            write_literal(out, s, indent);
        } else {
            out.push_str(&double_quoted(s));
        }
    } else if plain_ok(s) {
        out.push_str(s);
    } else if s.chars().all(printable) {
        out.push('\'');
        out.push_str(&s.replace('\'', "''"));
        out.push('\'');
    } else {
        out.push_str(&double_quoted(s));
    }
}

fn write_literal(out: &mut String, s: &str, indent: usize) {
    let body = s.trim_end_matches('\n');
    let trailing = s.len() - body.len();
    out.push_str(match trailing {
        0 => "|-",
        1 => "|",
        _ => "|+",
    });
    for line in s[..s.len() - trailing.min(1)].split('\n') {
        out.push('\n');
        if !line.is_empty() {
            out.push_str(&" ".repeat(indent));
            out.push_str(line);
        }
    }
}

fn write_scalar(out: &mut String, v: &Value, indent: usize) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Str(s) => write_string(out, s, indent),
        Value::Bytes(b) => {
            out.push_str("!!binary ");
            out.push_str(&base64::engine::general_purpose::STANDARD.encode(&b[..]));
        }
        Value::Int(i) => out.push_str(&i.to_string()),
        Value::Float(f) => out.push_str(&number::format_yaml(*f)),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Time(t) => out.push_str(t),
        Value::Comment(_) | Value::Map(_) | Value::Seq(_) => {
            unreachable!("write_scalar is only called on scalars")
        }
    }
}

fn is_empty_container(v: &Value) -> bool {
    match v {
        Value::Map(items) => items.iter().all(|i| matches!(i, Item::Comment(_))),
        Value::Seq(values) => values.iter().all(|v| matches!(v, Value::Comment(_))),
        _ => false,
    }
}

fn write_comment_line(out: &mut String, indent: usize, c: &Comment) {
    out.push_str(&" ".repeat(indent));
    out.push('#');
    out.push_str(&c.text);
    out.push('\n');
}

/// go-yaml's indentation of a mapping's child: the next multiple of the indent width.
fn child_indent(indent: usize, width: usize) -> usize {
    width * ((indent + width) / width)
}

/// Writes a value after `key:` or `- `. `child` is the column of its content on later lines;
/// `prefixed` means the value starts on the current line (compact form inside a sequence).
fn write_value(out: &mut String, v: &Value, child: usize, prefixed: bool, width: usize) {
    let empty = is_empty_container(v);
    match v {
        Value::Map(items) if !empty => {
            if !prefixed {
                out.push('\n');
            }
            write_map(out, items, child, prefixed, width);
        }
        Value::Seq(values) if !empty => {
            if !prefixed {
                out.push('\n');
            }
            write_seq(out, values, child, prefixed, width);
        }
        Value::Map(items) => {
            out.push_str(if prefixed { "{}\n" } else { " {}\n" });
            for item in items {
                if let Item::Comment(c) = item {
                    write_comment_line(out, child, c);
                }
            }
        }
        Value::Seq(values) => {
            out.push_str(if prefixed { "[]\n" } else { " []\n" });
            for v in values {
                if let Value::Comment(c) = v {
                    write_comment_line(out, child, c);
                }
            }
        }
        scalar => {
            if !prefixed {
                out.push(' ');
            }
            write_scalar(out, scalar, child);
            out.push('\n');
        }
    }
}

fn write_map(out: &mut String, items: &[Item], indent: usize, mut prefixed: bool, width: usize) {
    for item in items {
        if !prefixed {
            out.push_str(&" ".repeat(indent));
        }
        match item {
            Item::Comment(c) => {
                out.push('#');
                out.push_str(&c.text);
                out.push('\n');
                // A comment cannot share the line of "- "; later lines are indented normally.
                if prefixed {
                    out.push_str(&" ".repeat(indent));
                }
                continue;
            }
            Item::Entry(k, v) => {
                prefixed = false;
                if k == "<<" {
                    // go-yaml tags a merge key so that YAML 1.1 readers still merge.
                    out.push_str("!!merge <<");
                } else if k.len() > 128
                    || k.contains(['\n', '\r', '\u{85}', '\u{2028}', '\u{2029}'])
                {
                    // As go-yaml does, a key that cannot be a simple key (several lines, or
                    // longer than 128 bytes) is written in the explicit `? key` / `: value` form.
                    out.push_str("? ");
                    write_string(out, k, child_indent(indent, width));
                    out.push('\n');
                    out.push_str(&" ".repeat(indent));
                } else {
                    write_string(out, k, child_indent(indent, width));
                }
                out.push(':');
                write_value(out, v, child_indent(indent, width), false, width);
            }
        }
    }
}

fn write_seq(out: &mut String, values: &[Value], indent: usize, mut prefixed: bool, width: usize) {
    for v in values {
        if !prefixed {
            out.push_str(&" ".repeat(indent));
        }
        prefixed = false;
        match v {
            Value::Comment(c) => {
                out.push('#');
                out.push_str(&c.text);
                out.push('\n');
            }
            other => {
                out.push_str("- ");
                write_value(out, other, indent + 2, true, width);
            }
        }
    }
}

/// Writes every branch as one YAML document, `---` between them, indented by `width`
/// (go-yaml's `SetIndent`).
pub fn emit(tree: &Tree, width: usize) -> String {
    let mut out = String::new();
    for (i, branch) in tree.branches.iter().enumerate() {
        if i > 0 {
            out.push_str("---\n");
        }
        if branch.iter().all(|i| matches!(i, Item::Comment(_))) {
            for item in branch {
                if let Item::Comment(c) = item {
                    write_comment_line(&mut out, 0, c);
                }
            }
            out.push_str("{}\n");
        } else {
            write_map(&mut out, branch, 0, false, width);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(text: &str) -> String {
        emit(
            &parse(Path::new("t.yaml"), text).expect("test input is valid YAML"),
            DEFAULT_INDENT,
        )
    }

    #[test]
    fn plain_scalars_resolve_as_go_yaml_resolves_them() {
        assert_eq!(resolve_plain("42"), Value::Int(42));
        assert_eq!(resolve_plain("0x1F"), Value::Int(31));
        assert_eq!(resolve_plain("1_000"), Value::Int(1000));
        assert_eq!(resolve_plain("3.5"), Value::Float(3.5));
        assert_eq!(resolve_plain("1e3"), Value::Float(1000.0));
        assert_eq!(resolve_plain("yes"), Value::str("yes"));
        assert_eq!(resolve_plain("True"), Value::Bool(true));
        assert_eq!(resolve_plain("~"), Value::Null);
        assert_eq!(
            resolve_plain("123456789012345678901234567890"),
            Value::Float(1.2345678901234568e29)
        );
        assert!(matches!(resolve_plain("2024-01-02"), Value::Time(_)));
        // Go's time.Parse wants an upper-case Z; its ParseFloat refuses an overflow.
        assert_eq!(
            resolve_plain("2024-01-01t10:00:00z"),
            Value::str("2024-01-01t10:00:00z")
        );
        assert_eq!(resolve_plain("1e400"), Value::str("1e400"));
        assert_eq!(resolve_plain(".5e400"), Value::str(".5e400"));
        assert_eq!(resolve_plain("1.2.3"), Value::str("1.2.3"));
        assert_eq!(
            resolve_plain("18446744073709551615"),
            Value::str("18446744073709551615")
        );
    }

    #[test]
    fn comments_land_in_the_container_they_are_indented_into() {
        let text = "# top\na: 1 # trailing\nnested:\n    # inside\n    k: v\n# outside\nlist:\n    - x # on item\n    # before y\n    - y\n";
        let tree = parse(Path::new("t.yaml"), text).expect("valid");
        let branch = &tree.branches[0];
        assert!(matches!(&branch[0], Item::Comment(c) if &**c.text == " top"));
        assert!(matches!(&branch[1], Item::Comment(c) if &**c.text == " trailing"));
        let Item::Entry(_, Value::Map(nested)) = &branch[3] else {
            panic!("nested map expected, got {branch:?}")
        };
        assert!(matches!(&nested[0], Item::Comment(c) if &**c.text == " inside"));
        assert!(matches!(&branch[4], Item::Comment(c) if &**c.text == " outside"));
        let Item::Entry(_, Value::Seq(list)) = &branch[5] else {
            panic!("list expected")
        };
        assert!(matches!(&list[0], Value::Comment(c) if &**c.text == " on item"));
        assert!(matches!(&list[2], Value::Comment(c) if &**c.text == " before y"));
    }

    #[test]
    fn written_yaml_reads_back_the_same() {
        let text = "a: hello\n\"n\": null\nq: \"yes\"\nm: |\n    multi\n    line\nlist:\n    - x\n    - k: v\n      z: 1\n    # foot\nempty: {}\n";
        assert_eq!(roundtrip(text), text);
    }
}
