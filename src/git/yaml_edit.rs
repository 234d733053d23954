//! Minimal edits to YAML text: change the few values a promotion moves and leave every other
//! byte (comments, blank lines, quoting, key order) as it was.
//!
//! Only block-style mappings and sequences are edited in place; anything else (flow style,
//! block scalars, anchors at the edited spot) is refused rather than rewritten. Every edit is
//! checked afterwards by parsing the result and comparing it with the intended document, so an
//! edit this line-level approach gets wrong is an error, never a silently different file.

use serde_yaml_ng::Value;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
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

/// One `images:` entry of a kustomization; absent fields are `None`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    pub name: String,
    pub new_name: Option<String>,
    pub new_tag: Option<String>,
    pub digest: Option<String>,
}

const IMAGE_FIELDS: [&str; 3] = ["newName", "newTag", "digest"];

impl Image {
    fn field(&self, key: &str) -> Option<&String> {
        match key {
            "newName" => self.new_name.as_ref(),
            "newTag" => self.new_tag.as_ref(),
            "digest" => self.digest.as_ref(),
            _ => None,
        }
    }
}

fn parse(text: &str) -> Result<Value, Error> {
    if text.trim().is_empty() {
        return Ok(Value::Null);
    }
    serde_yaml_ng::from_str(text).map_err(|e| Error::Syntax {
        message: e.to_string(),
    })
}

/// The `images:` entries of a kustomization's text.
pub fn images(text: &str) -> Result<Vec<Image>, Error> {
    let doc = parse(text)?;
    let Some(list) = doc.get("images") else {
        return Ok(Vec::new());
    };
    let Value::Sequence(items) = list else {
        return Err(Error::Unsupported {
            field: "images".into(),
            problem: "is not a list",
        });
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let text = |key: &str| -> Result<Option<String>, Error> {
                match item.get(key) {
                    None | Some(Value::Null) => Ok(None),
                    Some(Value::String(s)) => Ok(Some(s.clone())),
                    Some(Value::Number(n)) => Ok(Some(n.to_string())),
                    Some(_) => Err(Error::NotScalar {
                        field: format!("images[{i}].{key}"),
                    }),
                }
            };
            Ok(Image {
                name: text("name")?.ok_or_else(|| Error::MissingField {
                    field: format!("images[{i}].name"),
                })?,
                new_name: text("newName")?,
                new_tag: text("newTag")?,
                digest: text("digest")?,
            })
        })
        .collect()
}

/// The scalar at `path` (keys of nested mappings).
pub fn scalar(text: &str, path: &[String]) -> Result<Value, Error> {
    let doc = parse(text)?;
    let field = path.join(".");
    let value = path
        .iter()
        .try_fold(&doc, |v, key| v.get(key.as_str()))
        .ok_or_else(|| Error::MissingField {
            field: field.clone(),
        })?;
    match value {
        Value::String(_) | Value::Number(_) | Value::Bool(_) | Value::Null => Ok(value.clone()),
        _ => Err(Error::NotScalar { field }),
    }
}

/// `text` with the scalar at `path` set to `value`.
pub fn set_scalar(text: &str, path: &[String], value: &Value) -> Result<String, Error> {
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

    let mut expected = parse(text)?;
    let slot = path
        .iter()
        .try_fold(&mut expected, |v, key| v.get_mut(key.as_str()))
        .ok_or_else(|| Error::MissingField {
            field: field.clone(),
        })?;
    *slot = value.clone();
    verify(&edited, &expected, &field)?;
    Ok(edited)
}

/// `text` (a kustomization) with each of `promoted` set in its `images:` list: matching entries
/// get the promoted `newName`/`newTag`/`digest`, missing entries are appended.
pub fn set_images(text: &str, promoted: &[Image]) -> Result<String, Error> {
    let mut edited = text.to_owned();
    for image in promoted {
        edited = set_image(&edited, image)?;
    }

    let mut expected = parse(text)?;
    if !promoted.is_empty() {
        if expected.is_null() {
            expected = Value::Mapping(Default::default());
        }
        let map = expected
            .as_mapping_mut()
            .ok_or_else(|| Error::Unsupported {
                field: "images".into(),
                problem: "the document is not a mapping",
            })?;
        let list = map
            .entry(Value::from("images"))
            .or_insert_with(|| Value::Sequence(Vec::new()));
        let items = list.as_sequence_mut().ok_or_else(|| Error::Unsupported {
            field: "images".into(),
            problem: "is not a list",
        })?;
        for image in promoted {
            let position = items
                .iter()
                .position(|i| i.get("name").and_then(Value::as_str) == Some(&image.name));
            let index = match position {
                Some(index) => index,
                None => {
                    let mut entry = serde_yaml_ng::Mapping::new();
                    entry.insert("name".into(), image.name.clone().into());
                    items.push(Value::Mapping(entry));
                    items.len() - 1
                }
            };
            let entry = items[index]
                .as_mapping_mut()
                .ok_or_else(|| Error::Unsupported {
                    field: format!("images[{index}]"),
                    problem: "is not a mapping",
                })?;
            for key in IMAGE_FIELDS {
                match image.field(key) {
                    Some(v) => {
                        entry.insert(key.into(), v.clone().into());
                    }
                    None => {
                        entry.remove(key);
                    }
                }
            }
        }
    }
    verify(&edited, &expected, "images")?;
    Ok(edited)
}

fn set_image(text: &str, image: &Image) -> Result<String, Error> {
    let lines = Lines::new(text);
    let mut out = lines.clone_lines();
    let Some(images_line) = lines.find_key((0, lines.len()), "images")? else {
        // No list yet: append one at the end, in the usual kustomization layout.
        let mut tail = String::new();
        if !text.is_empty() && !text.ends_with('\n') {
            tail.push('\n');
        }
        tail.push_str("images:\n");
        tail.push_str(&format!("- name: {}\n", render_new(&image.name)));
        for key in IMAGE_FIELDS {
            if let Some(v) = image.field(key) {
                tail.push_str(&format!("  {key}: {}\n", render_new(v)));
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
        let name = parse(&format!("v: {}", lines.value_text(name_line).unwrap_or("")))?
            .get("v")
            .and_then(Value::as_str)
            .map(str::to_owned);
        if name.as_deref() != Some(image.name.as_str()) {
            continue;
        }
        let mut inserts = Vec::new();
        for key in IMAGE_FIELDS {
            let line = keys.iter().find(|(k, _)| k == key).map(|(_, l)| *l);
            match (image.field(key), line) {
                (Some(v), Some(line)) => {
                    out[line] = replace_value(
                        &lines.0[line],
                        &format!("{}.{key}", field(index)),
                        &Value::from(v.clone()),
                    )?;
                }
                (Some(v), None) => inserts.push(format!(
                    "{}{key}: {}{}",
                    " ".repeat(item.key_indent),
                    render_new(v),
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
        render_new(&image.name)
    );
    for key in IMAGE_FIELDS {
        if let Some(v) = image.field(key) {
            entry.push_str(&format!(
                "{}{key}: {}{nl}",
                " ".repeat(key_indent),
                render_new(v)
            ));
        }
    }
    if !out[last].ends_with('\n') {
        out[last].push_str(nl);
    }
    out[last].push_str(&entry);
    Ok(out.concat())
}

fn verify(edited: &str, expected: &Value, field: &str) -> Result<(), Error> {
    let actual = parse(edited).map_err(|_| Error::Unverified {
        field: field.to_owned(),
    })?;
    if &actual == expected {
        Ok(())
    } else {
        Err(Error::Unverified {
            field: field.to_owned(),
        })
    }
}

/// A string as a plain scalar when that reads back as the same string, else double-quoted.
fn render_new(value: &str) -> String {
    let plain_safe = !value.is_empty()
        && value.trim() == value
        && !value.contains(": ")
        && !value.contains(" #")
        && !value.starts_with(|c: char| "-?:,[]{}#&*!|>'\"%@`".contains(c))
        && serde_yaml_ng::from_str::<Value>(&format!("v: {value}"))
            .ok()
            .and_then(|v| v.get("v").cloned())
            == Some(Value::String(value.to_owned()));
    if plain_safe {
        value.to_owned()
    } else {
        serde_json::to_string(value).expect("a string always serialises to JSON")
    }
}

fn render_value(value: &Value, old_style: Option<char>) -> Result<String, ()> {
    match value {
        Value::String(s) => Ok(match old_style {
            Some('"') => serde_json::to_string(s).expect("a string always serialises to JSON"),
            Some('\'') => format!("'{}'", s.replace('\'', "''")),
            _ => render_new(s),
        }),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        Value::Null => Ok("null".to_owned()),
        _ => Err(()),
    }
}

/// `line` (`key: value  # comment`) with the value replaced, everything else kept.
fn replace_value(line: &str, field: &str, value: &Value) -> Result<String, Error> {
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
    let rendered = render_value(
        value,
        old.chars().next().filter(|c| *c == '"' || *c == '\''),
    )
    .map_err(|()| Error::NotScalar {
        field: field.to_owned(),
    })?;
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
mod tests {
    use super::*;

    const KUSTOMIZATION: &str = "\
# Staging overlay: owned by the shop team.
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization

resources:
  - ../../base   # shared manifests

images:
  # the web front end
  - name: shop/web
    newTag: \"1.4.0\"   # pinned by promotion
  - name: shop/worker
    newName: registry.example.test/shop/worker
    newTag: 2.0.1

replicas:
  - name: web
    count: 3
";

    fn image(name: &str, tag: Option<&str>, digest: Option<&str>) -> Image {
        Image {
            name: name.into(),
            new_name: None,
            new_tag: tag.map(Into::into),
            digest: digest.map(Into::into),
        }
    }

    #[test]
    fn changing_a_tag_touches_only_that_line_and_keeps_its_comment_and_quotes() {
        let edited =
            set_images(KUSTOMIZATION, &[image("shop/web", Some("1.5.0"), None)]).expect("edits");
        let changed: Vec<_> = KUSTOMIZATION
            .lines()
            .zip(edited.lines())
            .filter(|(a, b)| a != b)
            .collect();
        assert_eq!(
            changed,
            [(
                "    newTag: \"1.4.0\"   # pinned by promotion",
                "    newTag: \"1.5.0\"   # pinned by promotion"
            )]
        );
        assert_eq!(edited.lines().count(), KUSTOMIZATION.lines().count());
    }

    #[test]
    fn the_target_entry_mirrors_the_source_entry_and_a_new_image_is_appended_in_the_same_layout() {
        let edited = set_images(
            KUSTOMIZATION,
            &[
                image("shop/worker", None, Some("sha256:abc")),
                image("shop/cron", Some("0.1.0"), None),
            ],
        )
        .expect("edits");
        assert!(edited.contains("  - name: shop/worker\n    digest: sha256:abc\n  - name: shop/cron\n    newTag: 0.1.0\n\nreplicas:"), "{edited}");
        assert!(!edited.contains("2.0.1"));
    }

    #[test]
    fn a_kustomization_without_images_gets_a_list_at_the_end() {
        let text = "resources:\n- ../../base\n";
        let edited = set_images(text, &[image("app", Some("1.0"), None)]).expect("edits");
        assert_eq!(
            edited,
            "resources:\n- ../../base\nimages:\n- name: app\n  newTag: \"1.0\"\n"
        );
        assert_eq!(
            images(&edited).expect("parses")[0].new_tag.as_deref(),
            Some("1.0")
        );
    }

    #[test]
    fn a_nested_scalar_is_set_and_numbers_stay_numbers() {
        let text = "spec:\n  # how many\n  replicas: 2 # keep low\n  template: {}\n";
        let edited =
            set_scalar(text, &["spec".into(), "replicas".into()], &Value::from(5)).expect("edits");
        assert_eq!(
            edited,
            "spec:\n  # how many\n  replicas: 5 # keep low\n  template: {}\n"
        );
    }

    #[test]
    fn a_missing_field_and_a_flow_style_list_are_refused_by_name() {
        let err = set_scalar("a: 1\n", &["b".into()], &Value::from(1)).expect_err("missing");
        assert_eq!(err, Error::MissingField { field: "b".into() });
        let err = set_images(
            "images: [{name: a, newTag: x}]\n",
            &[image("a", Some("y"), None)],
        )
        .expect_err("flow style");
        assert!(
            matches!(err, Error::Unsupported { ref field, .. } if field == "images"),
            "{err}"
        );
    }

    #[test]
    fn images_are_read_with_their_fields() {
        let list = images(KUSTOMIZATION).expect("parses");
        assert_eq!(list.len(), 2);
        assert_eq!(list[0], image("shop/web", Some("1.4.0"), None));
        assert_eq!(
            list[1].new_name.as_deref(),
            Some("registry.example.test/shop/worker")
        );
    }
}
