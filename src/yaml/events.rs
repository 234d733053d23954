//! saphyr-parser's events, with the limits go-yaml puts on untrusted input: a nesting depth and
//! an alias-expansion budget. Every reader in Stagehand takes its events from here, so a
//! hostile file (a billion-laughs bomb, a list nested 100,000 deep) is refused before any tree
//! is built from it.

use std::borrow::Cow;
use std::collections::HashMap;

use saphyr_parser::{Event, Parser, Span, StrInput};

/// Deepest nesting of mappings and sequences a document may have. go-yaml's parser stops at
/// 10,000 (`max_indents`/`max_flow_level`); Stagehand's walkers (patches, transformers, the
/// printer) recurse once per level, so it stops earlier, far past what any manifest nests
/// (Kubernetes objects go a few dozen levels deep).
pub const MAX_DEPTH: usize = 1000;

/// go-yaml v3's alias budget: aliases may make up 99% of the nodes of a document up to 400,000
/// nodes, falling to 10% at 4,000,000; only documents past 1,000 nodes with more than 100 from
/// aliases are checked.
fn allowed_alias_ratio(nodes: usize) -> f64 {
    const LOW: f64 = 400_000.0;
    const HIGH: f64 = 4_000_000.0;
    let n = nodes as f64;
    if n <= LOW {
        0.99
    } else if n >= HIGH {
        0.10
    } else {
        0.99 - 0.89 * (n - LOW) / (HIGH - LOW)
    }
}

/// Why a stream cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The text is not YAML.
    #[error("line {line} column {column}: {problem}")]
    Syntax {
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// The parser's words.
        problem: String,
    },
    /// Nesting past the depth cap, which protects the stack.
    #[error("line {line}: {}", Limit::TooDeep)]
    TooDeep {
        /// 1-based line.
        line: usize,
    },
    /// Aliases past the expansion budget (a "billion laughs" document).
    #[error("line {line}: {}", Limit::ExcessiveAliasing)]
    ExcessiveAliasing {
        /// 1-based line.
        line: usize,
    },
}

/// A limit a stream went past, for readers that name the line themselves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Limit {
    /// See [`Error::TooDeep`].
    #[error("nested deeper than {MAX_DEPTH} levels")]
    TooDeep,
    /// See [`Error::ExcessiveAliasing`].
    #[error("aliases expand to too many nodes (excessive aliasing)")]
    ExcessiveAliasing,
}

impl Error {
    /// The 1-based line the problem is on, and what it is without the line.
    pub fn line_and_problem(self) -> (usize, String) {
        match self {
            Error::Syntax { line, problem, .. } => (line, problem),
            Error::TooDeep { line } => (line, Limit::TooDeep.to_string()),
            Error::ExcessiveAliasing { line } => (line, Limit::ExcessiveAliasing.to_string()),
        }
    }
}

/// The events of one YAML stream, checked against the limits.
pub struct Events<'a> {
    parser: Parser<'a, StrInput<'a>>,
    /// Nodes so far in this document, an alias counted as the nodes it stands for.
    nodes: usize,
    /// Of those, the nodes that aliases stood for.
    aliased: usize,
    /// For each open mapping or sequence: its anchor (0 for none) and `nodes` when it started.
    open: Vec<(usize, usize)>,
    /// Node count of each anchored node of this document.
    sizes: HashMap<usize, usize>,
}

impl<'a> Events<'a> {
    /// The events of `text`, tags kept as written.
    pub fn new(text: &'a str) -> Self {
        Self {
            parser: Parser::new_from_str(text).keep_tags(true),
            nodes: 0,
            aliased: 0,
            open: Vec::new(),
            sizes: HashMap::new(),
        }
    }

    /// How deep the current node is nested: 0 at a document's top.
    pub fn depth(&self) -> usize {
        self.open.len()
    }

    fn account(&mut self, event: &Event<'_>, span: &Span) -> Result<(), Error> {
        let line = span.start.line();
        match event {
            Event::DocumentStart(_) => {
                self.nodes = 0;
                self.aliased = 0;
                self.sizes.clear();
            }
            Event::Scalar(_, _, anchor, _) => {
                self.nodes += 1;
                if *anchor != 0 {
                    self.sizes.insert(*anchor, 1);
                }
            }
            Event::MappingStart(anchor, _) | Event::SequenceStart(anchor, _) => {
                if self.open.len() >= MAX_DEPTH {
                    return Err(Error::TooDeep { line });
                }
                self.open.push((*anchor, self.nodes));
                self.nodes += 1;
            }
            Event::MappingEnd | Event::SequenceEnd => {
                if let Some((anchor, start)) = self.open.pop()
                    && anchor != 0
                {
                    self.sizes.insert(anchor, self.nodes - start);
                }
            }
            Event::Alias(id) => {
                // An anchor still open is an alias to an ancestor, which the readers refuse.
                let size = self.sizes.get(id).copied().unwrap_or(1);
                self.nodes = self.nodes.saturating_add(size);
                self.aliased = self.aliased.saturating_add(size);
                if self.aliased > 100
                    && self.nodes > 1000
                    && self.aliased as f64 / self.nodes as f64 > allowed_alias_ratio(self.nodes)
                {
                    return Err(Error::ExcessiveAliasing { line });
                }
            }
            Event::Nothing | Event::StreamStart | Event::StreamEnd | Event::DocumentEnd => {}
        }
        Ok(())
    }
}

impl<'a> Iterator for Events<'a> {
    type Item = Result<(Event<'a>, Span), Error>;

    fn next(&mut self) -> Option<Self::Item> {
        let next = self.parser.next_event()?;
        Some(
            next.map_err(|e| Error::Syntax {
                line: e.marker().line(),
                column: e.marker().col() + 1,
                problem: e.info().to_owned(),
            })
            .and_then(|(mut event, span)| {
                self.account(&event, &span)?;
                // The parser leaves a plain scalar's text 128 bytes of spare room to grow into;
                // kept in the parsed objects, that room was most of their memory. A copy of the
                // exact size (rather than shrinking in place) hands the roomy buffer back for the
                // next scalar instead of leaving a hole beside each kept one.
                if let Event::Scalar(Cow::Owned(text), ..) = &mut event
                    && text.capacity() > text.len()
                {
                    *text = text.as_str().to_owned();
                }
                Ok((event, span))
            }),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(text: &str) -> Result<usize, Error> {
        Events::new(text).try_fold(0, |n, e| e.map(|_| n + 1))
    }

    #[test]
    fn a_billion_laughs_is_refused_before_it_expands() {
        let mut text = String::from("a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
        for level in 1..10 {
            let prev = (b'a' + level - 1) as char;
            let this = (b'a' + level) as char;
            let refs = vec![format!("*{prev}"); 9].join(", ");
            text.push_str(&format!("{this}: &{this} [{refs}]\n"));
        }
        let err = read_all(&text).expect_err("the aliases expand to a billion nodes");
        assert!(matches!(err, Error::ExcessiveAliasing { .. }), "{err}");
    }

    #[test]
    fn a_few_aliases_of_a_large_anchor_are_fine() {
        let items: Vec<String> = (0..2000).map(|i| format!("k{i}: v")).collect();
        let text = format!("base: &b {{{}}}\ncopy: *b\nother: *b\n", items.join(", "));
        assert!(read_all(&text).is_ok());
    }

    #[test]
    fn scalar_texts_come_without_spare_room() {
        let text = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: config-1\n\
                    data:\n  plain: a longer value with spaces\n  quoted: \"x\"\n  folded: >\n    two\n    lines\n";
        let mut scalars = 0;
        for event in Events::new(text) {
            if let (Event::Scalar(Cow::Owned(s), ..), _) = event.expect("parses") {
                assert_eq!(s.capacity(), s.len(), "{s:?} keeps spare room");
                scalars += 1;
            }
        }
        assert!(scalars >= 10, "only {scalars} owned scalars were checked");
    }

    #[test]
    fn nesting_past_the_limit_is_refused_without_recursion() {
        let deep = "- ".repeat(100_000) + "x\n";
        assert!(matches!(read_all(&deep), Err(Error::TooDeep { line: 1 })));
        // saphyr-parser stops flow nesting itself, earlier.
        let flow = "[".repeat(100_000);
        assert!(matches!(read_all(&flow), Err(Error::Syntax { .. })));
        let ok = "- ".repeat(MAX_DEPTH) + "x\n";
        assert!(read_all(&ok).is_ok());
    }
}
