//! Minimal edits to YAML text: change the few values a promotion moves and leave every other
//! byte (comments, blank lines, quoting, key order) as it was.
//!
//! Only block-style mappings and sequences are edited in place; anything else (flow style,
//! block scalars, anchors at the edited spot) is refused rather than rewritten. Every edit is
//! checked afterwards by parsing the result and comparing it with the intended document, so an
//! edit this line-level approach gets wrong is an error, never a silently different file.

use saphyr_parser::ScalarStyle;
use serde_json::Value;

use crate::render::kustomization;
use crate::yaml::written::{self, Node, Scalar};
use crate::yaml::{self as core, Reading};

/// Why an edit of a kustomization could not be made as written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
// Each variant is described by its message, and its fields by the names the message uses.
#[allow(missing_docs)]
pub enum Error {
    #[error("field {field}: not found")]
    MissingField { field: String },
    #[error("field {field}: {problem}, which Stagehand does not edit in place")]
    Unsupported {
        field: String,
        problem: &'static str,
    },
    #[error("field {field}: is not a scalar (a string, number or boolean)")]
    NotScalar { field: String },
    #[error("not valid YAML: {message}")]
    Syntax { message: String },
    #[error("the edited document does not parse to the intended one (field {field})")]
    Unverified { field: String },
}

/// One `images:` entry of a kustomization as written; absent fields are `None`, and `name` is
/// always there.
pub type Image = kustomization::Image<Option<Scalar>>;

/// How a kustomization is read: its scalars are compared by what kustomize makes of them.
const READING: Reading = Reading::JsonConverted;

/// The one document of `text`, as written; `None` when the text has no document.
fn parse(text: &str) -> Result<Option<Node>, Error> {
    let mut docs = written::documents(text).map_err(|e| Error::Syntax {
        message: e.to_string(),
    })?;
    match docs.len() {
        0 => Ok(None),
        1 => Ok(docs.pop()),
        _ => Err(Error::Unsupported {
            field: "(top level)".into(),
            problem: "the file holds several YAML documents",
        }),
    }
}

/// The `images:` entries of a kustomization's text.
pub fn images(text: &str) -> Result<Vec<Image>, Error> {
    let Some(list) = parse(text)?.and_then(|doc| doc.get("images").cloned()) else {
        return Ok(Vec::new());
    };
    let items = match list {
        Node::Seq(items) => items,
        Node::Scalar(s) if is_null(&s) => return Ok(Vec::new()),
        _ => {
            return Err(Error::Unsupported {
                field: "images".into(),
                problem: "is not a list",
            });
        }
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let field = |key: &str| -> Result<Option<Scalar>, Error> {
                match item.get(key) {
                    None => Ok(None),
                    Some(Node::Scalar(s)) if is_null(s) => Ok(None),
                    Some(Node::Scalar(s)) => Ok(Some(s.clone())),
                    Some(_) => Err(Error::NotScalar {
                        field: format!("images[{i}].{key}"),
                    }),
                }
            };
            let name = field("name")?.ok_or_else(|| Error::MissingField {
                field: format!("images[{i}].name"),
            })?;
            Ok(Image {
                name: Some(name),
                new_name: field("newName")?,
                new_tag: field("newTag")?,
                tag_suffix: field("tagSuffix")?,
                digest: field("digest")?,
            })
        })
        .collect()
}

fn is_null(s: &Scalar) -> bool {
    s.value(READING).is_ok_and(|v| v.is_null())
}

/// The name of an image entry (its text; empty only for an entry [`images`] did not read).
pub fn image_name(image: &Image) -> &str {
    image.name.as_ref().map_or("", |s| s.text.as_str())
}

/// The scalar at `path` (keys of nested mappings), as written.
pub fn scalar(text: &str, path: &[String]) -> Result<Scalar, Error> {
    let field = path.join(".");
    let doc = parse(text)?.ok_or_else(|| Error::MissingField {
        field: field.clone(),
    })?;
    let node = path
        .iter()
        .try_fold(&doc, |node, key| node.get(key))
        .ok_or_else(|| Error::MissingField {
            field: field.clone(),
        })?;
    node.as_scalar().cloned().ok_or(Error::NotScalar { field })
}

/// `text` with the scalar at `path` set to `value`, copied as written.
pub fn set_scalar(text: &str, path: &[String], value: &Scalar) -> Result<String, Error> {
    let field = path.join(".");
    let lines = Lines::new(text);
    let mut region = (0, lines.len());
    let mut line = None;
    for key in path {
        let found = lines
            .find_key(region, key)?
            .ok_or_else(|| Error::MissingField {
                field: field.clone(),
            })?;
        region = lines.body(found);
        line = Some(found);
    }
    let line = line.ok_or_else(|| Error::MissingField {
        field: field.clone(),
    })?;
    let mut out = lines.clone_lines();
    out[line] = replace_value(&lines.0[line], &field, value)?;
    let edited = out.concat();

    let mut expected = parse(text)?.ok_or_else(|| Error::MissingField {
        field: field.clone(),
    })?;
    let slot = path
        .iter()
        .try_fold(&mut expected, |node, key| get_mut(node, key))
        .ok_or_else(|| Error::MissingField {
            field: field.clone(),
        })?;
    *slot = Node::Scalar(value.clone());
    verify(&edited, Some(&expected), &field)?;
    Ok(edited)
}

fn get_mut<'a>(node: &'a mut Node, key: &str) -> Option<&'a mut Node> {
    match node {
        Node::Map(entries) => entries
            .iter_mut()
            .find(|(k, _)| k.text == key)
            .map(|(_, v)| v),
        _ => None,
    }
}

/// A scalar that is the string `text`, as a tag or digest must be: plain when that reads back as
/// the same string, else double-quoted (a plain `1.10` would be the number 1.1).
pub fn string(text: &str) -> Scalar {
    let source = render_new(text);
    let style = if source.starts_with('"') {
        ScalarStyle::DoubleQuoted
    } else {
        ScalarStyle::Plain
    };
    Scalar {
        text: text.to_owned(),
        style,
        tag: None,
        anchored: false,
        source,
        line: 0,
    }
}

/// A plain scalar standing for `text`, as the edits write keys and names.
fn plain_key(text: &str) -> Scalar {
    Scalar {
        text: text.to_owned(),
        style: ScalarStyle::Plain,
        tag: None,
        anchored: false,
        source: text.to_owned(),
        line: 0,
    }
}

/// `text` (a kustomization) with each of `promoted` set in its `images:` list: matching entries
/// get the promoted `newName`/`newTag`/`tagSuffix`/`digest` as written in the source, missing
/// entries are appended.
pub fn set_images(text: &str, promoted: &[Image]) -> Result<String, Error> {
    let mut edited = text.to_owned();
    for image in promoted {
        edited = set_image(&edited, image)?;
    }

    let mut expected = parse(text)?;
    if !promoted.is_empty() {
        let doc = expected.get_or_insert_with(|| Node::Map(Vec::new()));
        let Node::Map(entries) = doc else {
            return Err(Error::Unsupported {
                field: "images".into(),
                problem: "the document is not a mapping",
            });
        };
        let at = match entries.iter().position(|(k, _)| k.text == "images") {
            Some(at) => at,
            None => {
                entries.push((plain_key("images"), Node::Seq(Vec::new())));
                entries.len() - 1
            }
        };
        let Node::Seq(items) = &mut entries[at].1 else {
            return Err(Error::Unsupported {
                field: "images".into(),
                problem: "is not a list",
            });
        };
        for image in promoted {
            let name = image_name(image);
            let position = items.iter().position(|i| {
                i.get("name")
                    .and_then(Node::as_scalar)
                    .is_some_and(|n| n.text == name)
            });
            let index = match position {
                Some(index) => index,
                None => {
                    let name = image.name.clone().unwrap_or_else(|| plain_key(name));
                    items.push(Node::Map(vec![(plain_key("name"), Node::Scalar(name))]));
                    items.len() - 1
                }
            };
            let Node::Map(entry) = &mut items[index] else {
                return Err(Error::Unsupported {
                    field: format!("images[{index}]"),
                    problem: "is not a mapping",
                });
            };
            for (key, value) in image.changes() {
                let slot = entry.iter().position(|(k, _)| k.text == key);
                match (value, slot) {
                    (Some(v), Some(at)) => entry[at].1 = Node::Scalar(v.clone()),
                    (Some(v), None) => entry.push((plain_key(key), Node::Scalar(v.clone()))),
                    (None, Some(at)) => {
                        entry.remove(at);
                    }
                    (None, None) => {}
                }
            }
        }
    }
    verify(&edited, expected.as_ref(), "images")?;
    Ok(edited)
}

fn set_image(text: &str, image: &Image) -> Result<String, Error> {
    let lines = Lines::new(text);
    let mut out = lines.clone_lines();
    let name = image_name(image);
    let name_text = image
        .name
        .as_ref()
        .map_or_else(|| plain_key(name), Clone::clone);
    let Some(images_line) = lines.find_key((0, lines.len()), "images")? else {
        // No list yet: append one at the end, in the usual kustomization layout.
        let mut tail = String::new();
        if !text.is_empty() && !text.ends_with('\n') {
            tail.push('\n');
        }
        tail.push_str("images:\n");
        tail.push_str(&format!("- name: {}\n", render_scalar(&name_text, None)));
        for (key, value) in image.changes() {
            if let Some(v) = value {
                tail.push_str(&format!("  {key}: {}\n", render_scalar(v, None)));
            }
        }
        return Ok(format!("{text}{tail}"));
    };
    if lines.value_text(images_line).is_some() {
        return Err(Error::Unsupported {
            field: "images".into(),
            problem: "is written in flow style ([...])",
        });
    }
    let body = lines.body(images_line);
    let items = lines.sequence_items(body, "images")?;
    let field = |i: usize| format!("images[{i}]");

    for (index, item) in items.iter().enumerate() {
        let keys = lines.item_keys(item);
        let name_line = keys.iter().find(|(k, _)| k == "name").map(|(_, l)| *l);
        let Some(name_line) = name_line else { continue };
        let written =
            core::parse_documents(&format!("v: {}", lines.value_text(name_line).unwrap_or("")))
                .map_err(|e| Error::Syntax {
                    message: e.to_string(),
                })?;
        let found = written
            .first()
            .and_then(|doc| doc.get("v"))
            .and_then(Value::as_str);
        if found != Some(name) {
            continue;
        }
        let mut inserts = Vec::new();
        for (key, value) in image.changes() {
            let line = keys.iter().find(|(k, _)| k == key).map(|(_, l)| *l);
            match (value, line) {
                (Some(v), Some(line)) => {
                    out[line] =
                        replace_value(&lines.0[line], &format!("{}.{key}", field(index)), v)?;
                }
                (Some(v), None) => inserts.push(format!(
                    "{}{key}: {}{}",
                    " ".repeat(item.key_indent),
                    render_scalar(v, None),
                    lines.newline()
                )),
                (None, Some(line)) => out[line].clear(),
                (None, None) => {}
            }
        }
        let last = item.last_line;
        out[last].push_str(&inserts.concat());
        return Ok(out.concat());
    }

    // Not listed yet: a new entry after the last one, laid out like the first.
    let (dash_indent, key_indent, last) = match (items.first(), items.last()) {
        (Some(first), Some(last)) => (first.dash_indent, first.key_indent, last.last_line),
        _ => {
            return Err(Error::Unsupported {
                field: "images".into(),
                problem: "is an empty block",
            });
        }
    };
    let nl = lines.newline();
    let mut entry = format!(
        "{}- name: {}{nl}",
        " ".repeat(dash_indent),
        render_scalar(&name_text, None)
    );
    for (key, value) in image.changes() {
        if let Some(v) = value {
            entry.push_str(&format!(
                "{}{key}: {}{nl}",
                " ".repeat(key_indent),
                render_scalar(v, None)
            ));
        }
    }
    if !out[last].ends_with('\n') {
        out[last].push_str(nl);
    }
    out[last].push_str(&entry);
    Ok(out.concat())
}

/// Whether two documents say the same: the same keys in the same order and scalars that
/// kustomize reads as the same values, however they are quoted.
fn same(a: &Node, b: &Node) -> bool {
    let scalar = |s: &Scalar| s.value(READING).ok();
    match (a, b) {
        (Node::Scalar(x), Node::Scalar(y)) => scalar(x).is_some() && scalar(x) == scalar(y),
        (Node::Seq(x), Node::Seq(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| same(p, q))
        }
        (Node::Map(x), Node::Map(y)) => {
            x.len() == y.len()
                && x.iter()
                    .zip(y)
                    .all(|((k1, v1), (k2, v2))| k1.text == k2.text && same(v1, v2))
        }
        _ => false,
    }
}

fn verify(edited: &str, expected: Option<&Node>, field: &str) -> Result<(), Error> {
    let unverified = || Error::Unverified {
        field: field.to_owned(),
    };
    let actual = parse(edited).map_err(|_| unverified())?;
    let matches = match (&actual, expected) {
        (Some(a), Some(e)) => same(a, e),
        (None, None) => true,
        _ => false,
    };
    if matches { Ok(()) } else { Err(unverified()) }
}

/// A string as a plain scalar when that reads back as the same string, else double-quoted.
fn render_new(value: &str) -> String {
    let plain_safe = !value.is_empty()
        && value.trim() == value
        && !value.contains(": ")
        && !value.contains(" #")
        && !value.starts_with(|c: char| "-?:,[]{}#&*!|>'\"%@`".contains(c))
        && core::parse_documents(&format!("v: {value}"))
            .ok()
            .and_then(|docs| docs.first().and_then(|d| d.get("v")).cloned())
            == Some(Value::String(value.to_owned()));
    if plain_safe {
        value.to_owned()
    } else {
        serde_json::to_string(value).expect("a string always serialises to JSON")
    }
}

/// The text that puts `value` on a `key: value` line whose old value was quoted with
/// `old_quote` (if at all): the source's own text where it fits one line, so that `1.10` stays
/// `1.10`; a string keeps the target's quotes when it had them; else the value written anew.
fn render_scalar(value: &Scalar, old_quote: Option<char>) -> String {
    let read = value.value(READING).ok();
    match (&read, old_quote) {
        (Some(Value::String(s)), Some('"')) => {
            return serde_json::to_string(s).expect("a string always serialises to JSON");
        }
        (Some(Value::String(s)), Some('\'')) if !s.contains(['\n', '\r']) => {
            return format!("'{}'", s.replace('\'', "''"));
        }
        _ => {}
    }
    if value.source_fits_one_line() {
        return value.source.clone();
    }
    match read {
        Some(Value::String(s)) => render_new(&s),
        Some(other) => other.to_string(),
        // Verification refuses whatever this writes for a value kustomize cannot read.
        None => value.source.clone(),
    }
}

/// `line` (`key: value  # comment`) with the value replaced, everything else kept.
fn replace_value(line: &str, field: &str, value: &Scalar) -> Result<String, Error> {
    let (start, end) = value_span(line).ok_or(Error::Unsupported {
        field: field.to_owned(),
        problem: "has no value on its own line (a nested block)",
    })?;
    let old = &line[start..end];
    if old.starts_with(['|', '>']) {
        return Err(Error::Unsupported {
            field: field.to_owned(),
            problem: "is a block scalar",
        });
    }
    if old.starts_with(['[', '{', '&', '*', '!']) {
        return Err(Error::Unsupported {
            field: field.to_owned(),
            problem: "is in flow style or carries an anchor, alias or tag",
        });
    }
    let rendered = render_scalar(
        value,
        old.chars().next().filter(|c| *c == '"' || *c == '\''),
    );
    Ok(format!("{}{rendered}{}", &line[..start], &line[end..]))
}

/// Byte range of the value after `key:` on a mapping line, or `None` when the line has no
/// value (the value is a nested block).
fn value_span(line: &str) -> Option<(usize, usize)> {
    let colon = key_end(line)?;
    let rest = &line[colon + 1..];
    let offset = colon + 1 + (rest.len() - rest.trim_start().len());
    let value = &line[offset..];
    let value = value.trim_end_matches(['\n', '\r']);
    if value.is_empty() || value.starts_with('#') {
        return None;
    }
    let len = match value.chars().next() {
        Some(q @ ('"' | '\'')) => {
            let mut escaped = false;
            let mut end = None;
            for (i, c) in value.char_indices().skip(1) {
                if q == '"' && c == '\\' && !escaped {
                    escaped = true;
                    continue;
                }
                if c == q && !escaped {
                    // '' inside single quotes is an escaped quote.
                    if q == '\'' && value[i + 1..].starts_with('\'') {
                        escaped = true;
                        continue;
                    }
                    end = Some(i + 1);
                    break;
                }
                escaped = false;
            }
            end?
        }
        _ => value.find(" #").unwrap_or(value.len()),
    };
    let trimmed = value[..len].trim_end();
    Some((offset, offset + trimmed.len()))
}

/// Index of the `:` that ends the key of a `key: value` line (after the indent and any `- `).
fn key_end(line: &str) -> Option<usize> {
    let content_start = line.len() - line.trim_start().len();
    let content = &line[content_start..];
    let content_start = if let Some(rest) = content.strip_prefix("- ") {
        content_start + 2 + (rest.len() - rest.trim_start().len())
    } else {
        content_start
    };
    let content = &line[content_start..];
    let mut chars = content.char_indices();
    match content.chars().next() {
        Some(q @ ('"' | '\'')) => {
            chars.next();
            let close = chars.find(|(_, c)| *c == q)?.0;
            let after = &content[close + 1..];
            after.starts_with(':').then_some(content_start + close + 1)
        }
        _ => {
            let bytes = content.as_bytes();
            (0..bytes.len())
                .find(|&i| {
                    bytes[i] == b':'
                        && (i + 1 == bytes.len()
                            || bytes[i + 1] == b' '
                            || bytes[i + 1] == b'\n'
                            || bytes[i + 1] == b'\r')
                })
                .map(|i| content_start + i)
        }
    }
}

/// The key of a mapping line, unquoted.
fn key_of(line: &str) -> Option<String> {
    let end = key_end(line)?;
    let content = line[..end].trim_start();
    let content = content.strip_prefix("- ").unwrap_or(content).trim_start();
    Some(content.trim_matches(['"', '\'']).to_owned())
}

/// An entry of a block sequence of mappings.
struct Item {
    dash_line: usize,
    dash_indent: usize,
    key_indent: usize,
    /// The last non-blank, non-comment line of the entry.
    last_line: usize,
}

/// The document's lines, each with its line ending.
struct Lines(Vec<String>);

impl Lines {
    fn new(text: &str) -> Self {
        Self(text.split_inclusive('\n').map(str::to_owned).collect())
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    fn clone_lines(&self) -> Vec<String> {
        self.0.clone()
    }

    fn newline(&self) -> &'static str {
        if self.0.first().is_some_and(|l| l.ends_with("\r\n")) {
            "\r\n"
        } else {
            "\n"
        }
    }

    /// Blank lines, comments and document markers carry no structure.
    fn is_structural(&self, i: usize) -> bool {
        let t = self.0[i].trim();
        !(t.is_empty() || t.starts_with('#') || t == "---")
    }

    fn indent(&self, i: usize) -> usize {
        self.0[i].len() - self.0[i].trim_start().len()
    }

    fn is_dash(&self, i: usize) -> bool {
        let t = self.0[i].trim_start();
        t == "-" || t.starts_with("- ") || t.starts_with("-\n") || t.starts_with("-\r")
    }

    /// The value text after `key:` on line `i`, if it has one there.
    fn value_text(&self, i: usize) -> Option<&str> {
        value_span(&self.0[i]).map(|(s, e)| &self.0[i][s..e])
    }

    /// The line of `key` among the mapping keys of `region` (the keys sit at the indent of the
    /// region's first structural line).
    fn find_key(&self, (start, end): (usize, usize), key: &str) -> Result<Option<usize>, Error> {
        let Some(first) = (start..end).find(|&i| self.is_structural(i)) else {
            return Ok(None);
        };
        let indent = self.indent(first);
        if self.is_dash(first) {
            return Err(Error::Unsupported {
                field: key.to_owned(),
                problem: "is looked up inside a list",
            });
        }
        for i in first..end {
            if !self.is_structural(i) {
                continue;
            }
            let this = self.indent(i);
            if this < indent {
                break;
            }
            // A `- ` line at the keys' indent is an entry of the previous key's compact list.
            if this == indent && !self.is_dash(i) && key_of(&self.0[i]).as_deref() == Some(key) {
                return Ok(Some(i));
            }
        }
        Ok(None)
    }

    /// The lines holding the value of the key on line `i`: deeper-indented lines, plus `- `
    /// entries at the key's own indent (the compact list style).
    fn body(&self, i: usize) -> (usize, usize) {
        let indent = self.indent(i);
        let mut end = i + 1;
        for j in i + 1..self.len() {
            if !self.is_structural(j) {
                continue;
            }
            let this = self.indent(j);
            if this > indent || (this == indent && self.is_dash(j)) {
                end = j + 1;
            } else {
                break;
            }
        }
        (i + 1, end)
    }

    fn sequence_items(
        &self,
        (start, end): (usize, usize),
        field: &str,
    ) -> Result<Vec<Item>, Error> {
        let mut items: Vec<Item> = Vec::new();
        let Some(first) = (start..end).find(|&i| self.is_structural(i)) else {
            return Ok(items);
        };
        let dash_indent = self.indent(first);
        for i in first..end {
            if !self.is_structural(i) {
                continue;
            }
            let this = self.indent(i);
            if this == dash_indent {
                if !self.is_dash(i) {
                    return Err(Error::Unsupported {
                        field: field.to_owned(),
                        problem: "is not a block list",
                    });
                }
                let line = &self.0[i];
                let after_dash = &line[dash_indent + 1..];
                let key_indent =
                    dash_indent + 1 + (after_dash.len() - after_dash.trim_start().len());
                items.push(Item {
                    dash_line: i,
                    dash_indent,
                    key_indent,
                    last_line: i,
                });
            } else if let Some(item) = items.last_mut() {
                item.last_line = i;
            }
        }
        Ok(items)
    }

    /// The keys of a list entry that is a mapping, with their lines.
    fn item_keys(&self, item: &Item) -> Vec<(String, usize)> {
        (item.dash_line..=item.last_line)
            .filter(|&i| self.is_structural(i))
            .filter(|&i| i == item.dash_line || self.indent(i) == item.key_indent)
            .filter_map(|i| key_of(&self.0[i]).map(|k| (k, i)))
            .collect()
    }
}

#[cfg(test)]
mod tests;
