//! Reading YAML streams into JSON-shaped values as kustomize reads them: go-yaml v3 decides what
//! a plain scalar is (`1.0` a number, `0777` octal, `2024-01-02` a timestamp printed as RFC 3339,
//! `1_000` a thousand), merge keys (`<<`) merge, a custom tag leaves its scalar text, and a map
//! key must be text. Each kind of file is read as kustomize's reader for it reads it ([`Reading`]).

use std::borrow::Cow;
use std::collections::HashMap;

use saphyr_parser::{Event, ScalarStyle, Tag};
use serde_json::{Map, Number, Value};

use super::events::{self, Events};
use super::resolve::{Plain, Schema, resolve};
use super::time;

/// Why a stream cannot be read into values.
#[derive(Debug, thiserror::Error)]
#[error("document {index}: {message}")]
pub struct ParseError {
    /// 1-based position of the failing document in its stream.
    pub index: usize,
    /// What is wrong, with its line.
    pub message: String,
}

/// Why a scalar or a merge key has no value. Each message is whole: it becomes the message of
/// a [`ParseError`] or of the caller's own error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    /// A `<<` sequence holds something other than mappings.
    #[error("a merge key (<<) needs mappings in its sequence")]
    MergeSequence,
    /// A `<<` value is neither a mapping nor a sequence.
    #[error("a merge key (<<) needs a mapping or a sequence of mappings")]
    MergeSource,
    /// A `!!binary` scalar whose text is not base64.
    #[error("!!binary value `{0}` is not base64")]
    Binary(String),
    /// A scalar whose standard tag says a type its text is not.
    #[error("cannot decode `{text}` as a !!{tag}")]
    Tag {
        /// The scalar as written.
        text: String,
        /// The tag's suffix: `int`, `float`, `bool`, `null`.
        tag: String,
    },
    /// A float JSON cannot represent (infinity, NaN).
    #[error("{0} is not a number JSON can hold")]
    NotJsonNumber(String),
}

/// Which of kustomize's readers a file goes through; they differ on plain scalars and repeated
/// keys.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Reading {
    /// A resource, read by kyaml (go-yaml v3): a repeated key is an error.
    Resources,
    /// A strategic merge patch, read by kyaml: the first of repeated keys counts, as kustomize
    /// looks fields up by name. `patchesStrategicMerge` loads it as a resource, so annotation
    /// values are text, `null` included.
    Patches,
    /// A `patches:` entry: read as [`Reading::Patches`], except that a null annotation value stays
    /// null (kustomize merges it as YAML, where null deletes the annotation).
    PatchEntry,
    /// A file kustomize converts to JSON through go-yaml v2 (kustomizations, configurations,
    /// replacements, CRDs, JSON patches): YAML 1.1 booleans (`yes`, `on`, `n`...), timestamps stay
    /// text, the last of repeated keys counts.
    JsonConverted,
}

/// A scalar as written, for map keys and for the type checks of explicit tags.
#[derive(Clone)]
struct Node {
    value: Value,
    /// The text of a scalar; `None` for a mapping or a sequence.
    text: Option<String>,
    /// A plain, untagged `<<`: go-yaml's merge key.
    merge: bool,
}

/// A map key waiting for its value.
struct Key {
    text: String,
    line: usize,
    merge: bool,
}

enum Frame {
    Map {
        map: Map<String, Value>,
        /// Where this mapping's keys start in [`Reader::keys`].
        keys_from: usize,
        key: Option<Key>,
        /// Values of `<<` keys, merged in when the mapping ends.
        merges: Vec<Value>,
        anchor: usize,
    },
    Seq {
        items: Vec<Value>,
        anchor: usize,
    },
}

struct Reader {
    reading: Reading,
    frames: Vec<Frame>,
    /// The keys of the open mappings with their lines, innermost mapping last, to name the first
    /// of a repeated key ([`Reading::Resources`] only). One stack for all mappings: a map of lines
    /// per mapping cost an allocation per mapping and per key.
    keys: KeyStack,
    anchors: HashMap<usize, Node>,
    doc: Option<Value>,
    index: usize,
}

impl Reader {
    /// Whether the node being read is a value of the document's `metadata.annotations`: kustomize
    /// rewrites those as text, the text of a scalar as written and nothing for anything else.
    fn at_annotation_value(&self) -> bool {
        let key_is = |f: &Frame, name: &str| match f {
            Frame::Map { key: Some(k), .. } => k.text == name && !k.merge,
            _ => false,
        };
        match self.frames.as_slice() {
            [root, meta, annotations] => {
                key_is(root, "metadata")
                    && key_is(meta, "annotations")
                    && matches!(annotations, Frame::Map { key: Some(_), .. })
            }
            _ => false,
        }
    }

    /// Whether the next node is a key of the innermost mapping.
    fn expects_key(&self) -> bool {
        matches!(self.frames.last(), Some(Frame::Map { key: None, .. }))
    }

    fn err(&self, line: usize, message: impl std::fmt::Display) -> ParseError {
        ParseError {
            index: self.index,
            message: format!("line {line}: {message}"),
        }
    }

    /// Starts the next entry of the innermost mapping with a key that reads as its own text
    /// (see [`is_text`]), or a merge key.
    fn add_key(&mut self, text: String, merge: bool, line: usize) {
        if let Some(Frame::Map { key, .. }) = self.frames.last_mut() {
            *key = Some(Key { text, line, merge });
        }
    }

    /// Places a finished node into the enclosing mapping or sequence, or makes it the document.
    fn add(&mut self, node: Node, anchor: usize, line: usize) -> Result<(), ParseError> {
        if anchor != 0 {
            self.anchors.insert(anchor, node.clone());
        }
        let reading = self.reading;
        match self.frames.last_mut() {
            None => self.doc = Some(node.value),
            Some(Frame::Seq { items, .. }) => items.push(node.value),
            Some(Frame::Map {
                map,
                keys_from,
                key,
                merges,
                ..
            }) => match key.take() {
                None => {
                    let Some(mut text) = node.text else {
                        return Err(self.err(line, "a mapping or sequence cannot be a map key"));
                    };
                    // The JSON conversion writes any scalar key as text: `yes:` becomes "true".
                    if reading == Reading::JsonConverted && !node.merge {
                        text = match node.value {
                            Value::String(s) => s,
                            Value::Null => "null".into(),
                            other => other.to_string(),
                        };
                    } else if !node.merge && !matches!(node.value, Value::String(_)) {
                        return Err(self.err(
                            line,
                            format!("map key {text:?} is not a string (kustomize cannot print it)"),
                        ));
                    }
                    *key = Some(Key {
                        text,
                        line,
                        merge: node.merge,
                    });
                }
                Some(Key { merge: true, .. }) => merges.push(node.value),
                Some(Key { text, line: at, .. }) => match reading {
                    // Keys from `<<` join only when the mapping ends, so `map` holds exactly
                    // the keys written so far.
                    Reading::Resources if map.contains_key(&text) => {
                        let first = self.keys.line_of(*keys_from, &text);
                        return Err(self.err(
                            at,
                            format!("mapping key {text:?} already defined at line {first}"),
                        ));
                    }
                    Reading::Resources => {
                        self.keys.push(&text, at);
                        map.insert(text, node.value);
                    }
                    Reading::Patches | Reading::PatchEntry if map.contains_key(&text) => {}
                    _ => {
                        map.insert(text, node.value);
                    }
                },
            },
        }
        Ok(())
    }
}

/// Key texts of the open mappings, each with its line, in one buffer.
struct KeyStack {
    text: String,
    /// End of each key in `text`, and its line.
    keys: Vec<(usize, usize)>,
}

impl KeyStack {
    fn push(&mut self, key: &str, line: usize) {
        self.text.push_str(key);
        self.keys.push((self.text.len(), line));
    }

    /// Forgets the keys from index `from` on: their mapping ended.
    fn truncate(&mut self, from: usize) {
        self.keys.truncate(from);
        let end = self.keys.last().map_or(0, |k| k.0);
        self.text.truncate(end);
    }

    /// The line of `key` among the keys from index `from` on; 0 when it is not there.
    fn line_of(&self, from: usize, key: &str) -> usize {
        let mut start = from.checked_sub(1).map_or(0, |i| self.keys[i].0);
        for &(end, line) in &self.keys[from..] {
            if &self.text[start..end] == key {
                return line;
            }
            start = end;
        }
        0
    }
}

/// Merges the `<<` sources into `map`: keys written in the mapping win, then earlier sources.
fn apply_merges(map: &mut Map<String, Value>, merges: Vec<Value>) -> Result<(), ValueError> {
    let mut sources = Vec::new();
    for m in merges {
        match m {
            Value::Object(o) => sources.push(o),
            Value::Array(items) => {
                for item in items {
                    match item {
                        Value::Object(o) => sources.push(o),
                        _ => return Err(ValueError::MergeSequence),
                    }
                }
            }
            _ => return Err(ValueError::MergeSource),
        }
    }
    for source in sources {
        for (k, v) in source {
            map.entry(k).or_insert(v);
        }
    }
    Ok(())
}

/// Whether an untagged scalar's value is text equal to `text` itself, in which case it can be a
/// map key as it is (go-yaml's JSON conversion included) without its value being built.
fn is_text(text: &str, style: ScalarStyle, tag: Option<&Tag>, reading: Reading) -> bool {
    let schema = schema_of(reading);
    // A timestamp key is text too: v3 reads it as text (reformatted, but the key keeps what was
    // written), v2 keeps it as written.
    tag.is_none()
        && (style != ScalarStyle::Plain
            || matches!(resolve(text, schema), Plain::Str | Plain::Time))
}

/// A scalar's value: explicit standard tags decide, a custom tag keeps the text, else go-yaml's
/// plain-scalar resolution. The text is taken owned so that a text value needs no copy.
pub(super) fn scalar(
    text: Cow<'_, str>,
    style: ScalarStyle,
    tag: Option<&Tag>,
    reading: Reading,
) -> Result<Value, ValueError> {
    if let Some(t) = tag {
        let standard = matches!(t.handle.as_str(), "tag:yaml.org,2002:" | "!!");
        if !standard {
            return Ok(Value::String(text.into_owned()));
        }
        match t.suffix.as_str() {
            "str" => return Ok(Value::String(text.into_owned())),
            // go-yaml decodes a binary scalar into the text of its bytes.
            "binary" => {
                use base64::Engine as _;
                let compact: String = text.chars().filter(|c| !c.is_whitespace()).collect();
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(compact)
                    .map_err(|_| ValueError::Binary(text.to_string()))?;
                return Ok(Value::String(String::from_utf8_lossy(&bytes).into_owned()));
            }
            _ => {}
        }
        let resolved = read_plain(&text, reading)?;
        let ok = match t.suffix.as_str() {
            "int" => resolved.is_i64() || resolved.is_u64(),
            "float" => resolved.is_number(),
            "bool" => resolved.is_boolean(),
            "null" => resolved.is_null(),
            _ => true,
        };
        return if ok {
            Ok(resolved)
        } else {
            Err(ValueError::Tag {
                text: text.into_owned(),
                tag: t.suffix.clone(),
            })
        };
    }
    match style {
        ScalarStyle::Plain => match resolve(&text, schema_of(reading)) {
            Plain::Str | Plain::Merge => Ok(Value::String(text.into_owned())),
            // go-yaml v2 hands a timestamp to the JSON conversion as the text it was.
            Plain::Time if reading == Reading::JsonConverted => {
                Ok(Value::String(text.into_owned()))
            }
            resolved => from_plain(&text, resolved),
        },
        _ => Ok(Value::String(text.into_owned())),
    }
}

/// Which go-yaml reads plain scalars for a kind of file.
fn schema_of(reading: Reading) -> Schema {
    match reading {
        Reading::JsonConverted => Schema::V2,
        Reading::Resources | Reading::Patches | Reading::PatchEntry => Schema::V3,
    }
}

fn read_plain(text: &str, reading: Reading) -> Result<Value, ValueError> {
    let resolved = resolve(text, schema_of(reading));
    if reading == Reading::JsonConverted && resolved == Plain::Time {
        // go-yaml v2 hands a timestamp to the JSON conversion as the text it was.
        return Ok(Value::String(text.to_owned()));
    }
    from_plain(text, resolved)
}

/// go-yaml v3's reading of a plain scalar, as JSON.
pub fn plain(text: &str) -> Result<Value, ValueError> {
    from_plain(text, resolve(text, Schema::V3))
}

fn from_plain(text: &str, resolved: Plain) -> Result<Value, ValueError> {
    Ok(match resolved {
        Plain::Null => Value::Null,
        Plain::Bool(b) => Value::Bool(b),
        Plain::Int(i) => Value::from(i),
        Plain::Uint(u) => Value::from(u),
        Plain::Float(f) => Number::from_f64(f)
            .map(Value::Number)
            .ok_or_else(|| ValueError::NotJsonNumber(text.to_owned()))?,
        Plain::Time => Value::String(time::from_yaml(text).unwrap_or_else(|| text.to_owned())),
        Plain::Merge | Plain::Str => Value::String(text.to_owned()),
    })
}

/// Every non-empty document of a YAML stream, in order.
pub fn documents(text: &str, reading: Reading) -> Result<Vec<Value>, ParseError> {
    let mut r = Reader {
        reading,
        frames: Vec::new(),
        keys: KeyStack {
            // Room for the keys of a typical object, so the stack rarely grows.
            text: String::with_capacity(if reading == Reading::Resources {
                256
            } else {
                0
            }),
            keys: Vec::with_capacity(if reading == Reading::Resources { 32 } else { 0 }),
        },
        anchors: HashMap::new(),
        doc: None,
        index: 0,
    };
    // kustomize splits resources at `---` before parsing, which leaves a directive without its
    // document: kubectl refuses any. go-yaml's parser knows only YAML 1.1.
    let refused = |line: &str| match reading {
        Reading::JsonConverted => line
            .strip_prefix("%YAML")
            .is_some_and(|v| v.starts_with([' ', '\t']) && v.trim() != "1.1"),
        Reading::Resources | Reading::Patches | Reading::PatchEntry => {
            line.starts_with("%YAML ") || line.starts_with("%TAG ")
        }
    };
    // A directive starts a line with `%`: most files have none, and need no pass over their lines.
    let has_percent_line = text.starts_with('%') || text.contains("\n%");
    if has_percent_line && let Some((n, _)) = text.lines().enumerate().find(|(_, l)| refused(l)) {
        return Err(ParseError {
            index: 1,
            message: format!("line {}: YAML directives are not supported here", n + 1),
        });
    }
    let mut out = Vec::new();
    for next in Events::new(text) {
        let (event, span) = next.map_err(|e: events::Error| ParseError {
            index: r.index.max(1),
            message: e.to_string(),
        })?;
        let line = span.start.line();
        match event {
            Event::Nothing | Event::StreamStart | Event::StreamEnd => {}
            Event::DocumentStart(_) => {
                r.index += 1;
                r.anchors.clear();
            }
            Event::DocumentEnd => {
                if let Some(doc) = r.doc.take().filter(|d| !d.is_null()) {
                    out.push(doc);
                }
            }
            Event::Alias(id) => {
                let node = r
                    .anchors
                    .get(&id)
                    .cloned()
                    .ok_or_else(|| r.err(line, "alias to an unknown anchor"))?;
                r.add(node, 0, line)?;
            }
            Event::Scalar(text, style, anchor, tag) => {
                let merge = style == ScalarStyle::Plain && tag.is_none() && text == "<<";
                let tag = tag.as_deref();
                if anchor == 0 && r.expects_key() && (merge || is_text(&text, style, tag, reading))
                {
                    // A key that reads as its own text needs no value built to check it.
                    r.add_key(text.into_owned(), merge, line);
                    continue;
                }
                // Only a key or an anchored node needs its text besides its value.
                let keep_text = anchor != 0 || r.expects_key();
                let text_copy = keep_text.then(|| text.to_string());
                let value = if r.at_annotation_value() {
                    // A patch deletes an annotation with null; any other value becomes its text.
                    match scalar(Cow::Borrowed(&text), style, tag, reading) {
                        Ok(Value::Null) if reading == Reading::PatchEntry => Value::Null,
                        _ => Value::String(text.into_owned()),
                    }
                } else {
                    scalar(text, style, tag, reading).map_err(|m| r.err(line, m))?
                };
                let node = Node {
                    value,
                    merge,
                    text: text_copy,
                };
                r.add(node, anchor, line)?;
            }
            Event::MappingStart(anchor, _) => r.frames.push(Frame::Map {
                map: Map::new(),
                keys_from: r.keys.keys.len(),
                key: None,
                merges: Vec::new(),
                anchor,
            }),
            Event::SequenceStart(anchor, _) => r.frames.push(Frame::Seq {
                items: Vec::new(),
                anchor,
            }),
            Event::MappingEnd | Event::SequenceEnd => {
                let (value, anchor) = match r.frames.pop().expect("the parser balances events") {
                    Frame::Map {
                        mut map,
                        keys_from,
                        merges,
                        anchor,
                        ..
                    } => {
                        r.keys.truncate(keys_from);
                        apply_merges(&mut map, merges).map_err(|m| r.err(line, m))?;
                        (Value::Object(map), anchor)
                    }
                    Frame::Seq { items, anchor } => (Value::Array(items), anchor),
                };
                let value = if r.at_annotation_value() {
                    Value::String(String::new())
                } else {
                    value
                };
                r.add(
                    Node {
                        value,
                        text: None,
                        merge: false,
                    },
                    anchor,
                    line,
                )?;
            }
        }
    }
    Ok(out)
}
