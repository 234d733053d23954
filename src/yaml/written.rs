//! A YAML document as written: every scalar keeps the exact text the file holds for it (quotes,
//! tag and all), so that a value can be copied from one file into another without passing
//! through a number or a re-quoted string (`1.10` stays `1.10`, `010` stays `010`).

use saphyr_parser::{Event, ScalarStyle, Span, Tag};
use serde_json::Value;

use super::events::{self, Events};
use super::read::{Reading, ValueError, scalar};

/// Why a document cannot be read as written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The stream itself cannot be read.
    #[error(transparent)]
    Events(#[from] events::Error),
    /// YAML this reader does not keep as written (a complex key, say).
    #[error("line {line}: {problem}")]
    Structure {
        /// 1-based line.
        line: usize,
        /// What is there.
        problem: &'static str,
    },
}

/// A scalar as the file spells it.
#[derive(Debug, Clone, PartialEq)]
pub struct Scalar {
    /// Its content: quotes removed, escapes and folding applied.
    pub text: String,
    /// Plain, quoted or block: it decides what the text means.
    pub style: ScalarStyle,
    /// An explicit tag, which also decides what the text means.
    pub tag: Option<Tag>,
    /// Whether it carries an anchor (or came from an alias).
    pub anchored: bool,
    /// Exactly what the file holds for it, from its first character (tag or anchor included) to
    /// its last.
    pub source: String,
    /// 1-based line where it starts.
    pub line: usize,
}

impl Scalar {
    /// Its value as kustomize reads it in a file of the given kind.
    pub fn value(&self, reading: Reading) -> Result<Value, ValueError> {
        scalar(
            std::borrow::Cow::Borrowed(&self.text),
            self.style,
            self.tag.as_ref(),
            reading,
        )
    }

    /// Whether [`Scalar::source`] can stand as a value on a `key: value` line elsewhere and mean
    /// the same: one line, no anchor or tag, not a block scalar.
    pub fn source_fits_one_line(&self) -> bool {
        !self.anchored
            && self.tag.is_none()
            && matches!(
                self.style,
                ScalarStyle::Plain | ScalarStyle::SingleQuoted | ScalarStyle::DoubleQuoted
            )
            && !self.source.contains(['\n', '\r'])
    }
}

/// A node of the document.
#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    /// A scalar, with its source text.
    Scalar(Scalar),
    /// Entries in the order written; keys are scalars.
    Map(Vec<(Scalar, Node)>),
    /// Items in order.
    Seq(Vec<Node>),
}

impl Node {
    /// The value of the first entry whose key's content is `key`, in a mapping.
    pub fn get(&self, key: &str) -> Option<&Node> {
        match self {
            Node::Map(entries) => entries.iter().find(|(k, _)| k.text == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// The scalar, when this node is one.
    pub fn as_scalar(&self) -> Option<&Scalar> {
        match self {
            Node::Scalar(s) => Some(s),
            _ => None,
        }
    }
}

enum Frame {
    Map {
        entries: Vec<(Scalar, Node)>,
        key: Option<Scalar>,
        anchor: usize,
    },
    Seq {
        items: Vec<Node>,
        anchor: usize,
    },
}

/// Character index to byte offset; saphyr-parser's spans count characters.
struct Offsets<'a> {
    text: &'a str,
    bytes: Option<Vec<usize>>,
}

impl<'a> Offsets<'a> {
    fn new(text: &'a str) -> Self {
        let bytes = (!text.is_ascii()).then(|| {
            text.char_indices()
                .map(|(b, _)| b)
                .chain([text.len()])
                .collect()
        });
        Self { text, bytes }
    }

    fn slice(&self, span: &Span) -> &'a str {
        let at = |i: usize| match &self.bytes {
            None => i.min(self.text.len()),
            Some(b) => b[i.min(b.len() - 1)],
        };
        &self.text[at(span.start.index())..at(span.end.index())]
    }
}

/// `source` up to its closing quote for a quoted scalar, whose span runs on over the blanks and
/// comment after it.
fn quoted_or_plain(source: &str, style: ScalarStyle) -> &str {
    let quote = match style {
        ScalarStyle::DoubleQuoted => '"',
        ScalarStyle::SingleQuoted => '\'',
        _ => return source,
    };
    let Some(open) = source.find(quote) else {
        return source;
    };
    let mut chars = source[open + 1..].char_indices();
    while let Some((i, c)) = chars.next() {
        if quote == '"' && c == '\\' {
            chars.next();
        } else if c == quote {
            let after = open + 1 + i + 1;
            if quote == '\'' && source[after..].starts_with('\'') {
                chars.next();
            } else {
                return &source[..after];
            }
        }
    }
    source
}

/// Every document of `text` as written (an empty document is a null scalar).
pub fn documents(text: &str) -> Result<Vec<Node>, Error> {
    let offsets = Offsets::new(text);
    let mut frames: Vec<Frame> = Vec::new();
    let mut anchors: std::collections::HashMap<usize, Node> = Default::default();
    let mut docs = Vec::new();
    for next in Events::new(text) {
        let (event, span) = next?;
        let line = span.start.line();
        let (node, anchor) = match event {
            Event::Nothing | Event::StreamStart | Event::StreamEnd => continue,
            Event::DocumentStart(_) => {
                anchors.clear();
                continue;
            }
            Event::DocumentEnd => continue,
            Event::MappingStart(anchor, _) => {
                frames.push(Frame::Map {
                    entries: Vec::new(),
                    key: None,
                    anchor,
                });
                continue;
            }
            Event::SequenceStart(anchor, _) => {
                frames.push(Frame::Seq {
                    items: Vec::new(),
                    anchor,
                });
                continue;
            }
            Event::MappingEnd | Event::SequenceEnd => {
                match frames
                    .pop()
                    .expect("the parser balances start and end events")
                {
                    Frame::Map {
                        entries, anchor, ..
                    } => (Node::Map(entries), anchor),
                    Frame::Seq { items, anchor } => (Node::Seq(items), anchor),
                }
            }
            Event::Scalar(value, style, anchor, tag) => (
                Node::Scalar(Scalar {
                    text: value.into_owned(),
                    style,
                    tag: tag.map(|t| t.into_owned()),
                    anchored: anchor != 0,
                    source: quoted_or_plain(offsets.slice(&span), style).to_owned(),
                    line,
                }),
                anchor,
            ),
            Event::Alias(id) => {
                let mut node = anchors.get(&id).cloned().ok_or(Error::Structure {
                    line,
                    problem: "alias to an unknown anchor",
                })?;
                if let Node::Scalar(s) = &mut node {
                    s.anchored = true;
                }
                (node, 0)
            }
        };
        if anchor != 0 {
            anchors.insert(anchor, node.clone());
        }
        match frames.last_mut() {
            None => docs.push(node),
            Some(Frame::Seq { items, .. }) => items.push(node),
            Some(Frame::Map { entries, key, .. }) => match key.take() {
                Some(k) => entries.push((k, node)),
                None => match node {
                    Node::Scalar(s) => *key = Some(s),
                    _ => {
                        return Err(Error::Structure {
                            line,
                            problem: "a mapping or sequence cannot be a map key",
                        });
                    }
                },
            },
        }
    }
    Ok(docs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scalars_keep_the_text_they_are_written_with() {
        let text = "a: 1.10\nb: \"1.10\" # quoted\nc: 'it''s'\nd: !!str 010\nlist:\n- é: ünï\n";
        let docs = documents(text).expect("valid");
        let [doc] = docs.as_slice() else {
            panic!("one document")
        };
        let source = |n: &Node| n.as_scalar().expect("a scalar").source.clone();
        assert_eq!(source(doc.get("a").expect("a")), "1.10");
        assert_eq!(source(doc.get("b").expect("b")), "\"1.10\"");
        assert_eq!(source(doc.get("c").expect("c")), "'it''s'");
        assert_eq!(source(doc.get("d").expect("d")), "!!str 010");
        let Some(Node::Seq(items)) = doc.get("list") else {
            panic!("a list")
        };
        assert_eq!(source(items[0].get("é").expect("key")), "ünï");
        let b = doc.get("b").and_then(Node::as_scalar).expect("b");
        assert_eq!(b.value(Reading::JsonConverted), Ok(Value::from("1.10")));
        let a = doc.get("a").and_then(Node::as_scalar).expect("a");
        assert_eq!(a.value(Reading::JsonConverted), Ok(Value::from(1.1)));
    }

    #[test]
    fn an_empty_text_has_no_document() {
        assert_eq!(documents("# nothing\n"), Ok(vec![]));
    }
}
