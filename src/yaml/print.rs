//! YAML as kustomize prints it: map keys sorted, sequences flush with their parent key, literal
//! blocks for multi-line text.

use std::fmt::Write as _;

use serde_json::{Map, Value};

use super::number;
use super::resolve::{Schema, plain_reads_back};

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
    for (i, (k, v)) in sorted_entries(m).into_iter().enumerate() {
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
        Value::Number(n) => out.push_str(&number_text(n)),
        Value::String(s) => {
            write_string(out, s, col, ind, false);
        }
        Value::Object(_) => out.push_str("{}"),
        Value::Array(_) => out.push_str("[]"),
    }
}

/// A number as kustomize prints it: Go's JSON encoder writes a float, go-yaml v2 reads that text
/// back (an integral float becomes an integer when it fits 64 bits) and prints floats with
/// `strconv.FormatFloat(f, 'g', -1, 64)`.
fn number_text(n: &serde_json::Number) -> String {
    let Some(f) = n.as_f64().filter(|_| n.is_f64()) else {
        return n.to_string();
    };
    if f.fract() == 0.0 && f.abs() < 1e21 {
        // Display prints the shortest digits without an exponent, as Go's JSON encoder does here.
        let text = format!("{f}");
        if let Ok(i) = text.parse::<i64>() {
            return i.to_string();
        }
        if let Ok(u) = text.parse::<u64>() {
            return u.to_string();
        }
    }
    number::format_yaml(f)
}

#[derive(PartialEq, Eq, Clone, Copy)]
enum Style {
    Plain,
    Single,
    Double,
    Literal,
}

// kustomize prints through sigs.k8s.io/yaml, a JSON round trip into go-yaml v2's emitter. What
// follows mirrors that emitter's choices: which style a string gets, how map keys are ordered,
// where long lines fold and how characters are escaped. Each rule was checked against
// `kubectl kustomize` output.

/// What go-yaml's emitter learns of a scalar before it picks a style.
struct Analysis {
    multiline: bool,
    block_plain_allowed: bool,
    single_quoted_allowed: bool,
    block_allowed: bool,
}

/// Characters the emitter prints as they are; anything else forces double quotes and an escape.
fn printable(c: char) -> bool {
    matches!(c, '\n' | '\u{20}'..='\u{7e}' | '\u{a0}'..='\u{d7ff}')
        || (('\u{e000}'..='\u{fffd}').contains(&c) && c != '\u{feff}')
}

fn is_break(c: char) -> bool {
    matches!(c, '\r' | '\n' | '\u{85}' | '\u{2028}' | '\u{2029}')
}

fn is_blank(c: char) -> bool {
    c == ' ' || c == '\t'
}

fn analyze(s: &str) -> Analysis {
    if s.is_empty() {
        return Analysis {
            multiline: false,
            block_plain_allowed: true,
            single_quoted_allowed: true,
            block_allowed: false,
        };
    }
    let chars: Vec<char> = s.chars().collect();
    let n = chars.len();
    let mut block_indicators = s.starts_with("---") || s.starts_with("...");
    let (mut line_breaks, mut special) = (false, false);
    let (mut break_space, mut space_break) = (false, false);
    let (mut previous_space, mut previous_break) = (false, false);
    let mut preceded_by_whitespace = true;
    for (i, &c) in chars.iter().enumerate() {
        let followed_by_whitespace = chars.get(i + 1).is_none_or(|&next| is_blank(next));
        if i == 0 {
            block_indicators |= match c {
                '#' | ',' | '[' | ']' | '{' | '}' | '&' | '*' | '!' | '|' | '>' | '\'' | '"'
                | '%' | '@' | '`' => true,
                '?' | ':' | '-' => followed_by_whitespace,
                _ => false,
            };
        } else {
            block_indicators |= match c {
                ':' => followed_by_whitespace,
                '#' => preceded_by_whitespace,
                _ => false,
            };
        }
        special |= !printable(c);
        if c == ' ' {
            break_space |= previous_break;
            previous_space = true;
            previous_break = false;
        } else if is_break(c) {
            line_breaks = true;
            space_break |= previous_space;
            previous_space = false;
            previous_break = true;
        } else {
            previous_space = false;
            previous_break = false;
        }
        preceded_by_whitespace = is_blank(c) || is_break(c);
    }
    let edge = |c: char| c == ' ' || is_break(c);
    let leading_or_trailing = edge(chars[0]) || edge(chars[n - 1]);
    let trailing_space = chars[n - 1] == ' ';
    Analysis {
        multiline: line_breaks,
        block_plain_allowed: !(leading_or_trailing
            || break_space
            || space_break
            || special
            || line_breaks
            || block_indicators),
        single_quoted_allowed: !(break_space || space_break || special),
        block_allowed: !(trailing_space || space_break || special),
    }
}

fn style_of(s: &str, key: bool) -> Style {
    let a = analyze(s);
    let mut style = if s.contains('\n') {
        Style::Literal
    } else if plain_reads_back(s, Schema::V2) {
        Style::Plain
    } else {
        Style::Double
    };
    if key && a.multiline {
        style = Style::Double;
    }
    if style == Style::Plain && !a.block_plain_allowed {
        style = Style::Single;
    }
    if style == Style::Single && !a.single_quoted_allowed {
        style = Style::Double;
    }
    if style == Style::Literal && (!a.block_allowed || key) {
        style = Style::Double;
    }
    style
}

/// Whether `s` is a word the emitter never folds, escapes or needs to analyse: ASCII letters,
/// digits and `-_./`, starting with a letter or digit (most names, labels and values).
fn is_word(s: &str) -> bool {
    s.as_bytes().first().is_some_and(u8::is_ascii_alphanumeric)
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'/'))
}

/// Writes a string starting at column `col` and returns the column after it.
fn write_string(out: &mut String, s: &str, col: usize, ind: usize, key: bool) -> usize {
    if is_word(s) {
        // Plain unless it would read back as another type (`"80"`, `"true"`), then in double
        // quotes with nothing to escape: what the general path below writes for it.
        if plain_reads_back(s, Schema::V2) {
            out.push_str(s);
            return col + s.len();
        }
        out.push('"');
        out.push_str(s);
        out.push('"');
        return col + s.len() + 2;
    }
    write_any(out, s, col, ind, key)
}

/// [`write_string`] for any string: the emitter's analysis picks the style.
fn write_any(out: &mut String, s: &str, col: usize, ind: usize, key: bool) -> usize {
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
    if s.starts_with(' ') || s.starts_with('\n') {
        out.push('2');
    }
    let body = s.strip_suffix('\n');
    match body {
        Some(b) if b.ends_with('\n') || b.is_empty() => out.push('+'),
        Some(_) => {}
        None => out.push('-'),
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

/// The escape go-yaml writes for `c` inside double quotes.
fn push_escape(out: &mut String, c: char) -> usize {
    let short = match c {
        '\0' => Some('0'),
        '\u{7}' => Some('a'),
        '\u{8}' => Some('b'),
        '\t' => Some('t'),
        '\n' => Some('n'),
        '\u{b}' => Some('v'),
        '\u{c}' => Some('f'),
        '\r' => Some('r'),
        '\u{1b}' => Some('e'),
        '"' => Some('"'),
        '\\' => Some('\\'),
        '\u{85}' => Some('N'),
        '\u{a0}' => Some('_'),
        '\u{2028}' => Some('L'),
        '\u{2029}' => Some('P'),
        _ => None,
    };
    let before = out.len();
    match (short, c as u32) {
        (Some(e), _) => {
            out.push('\\');
            out.push(e);
        }
        (None, v) if v <= 0xff => {
            let _ = write!(out, "\\x{v:02X}");
        }
        (None, v) if v <= 0xffff => {
            let _ = write!(out, "\\u{v:04X}");
        }
        (None, v) => {
            let _ = write!(out, "\\U{v:08X}");
        }
    }
    out.len() - before
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
    // go-yaml tests for a byte order mark at the start of the value while it looks at every
    // character, so such a value has all of its characters escaped.
    let escape_all = s.starts_with('\u{feff}');
    let mut spaces = false;
    let mut breaks = false;
    let n = chars.len();
    let mut i = 0;
    while i < n {
        let c = chars[i];
        if style == Style::Double
            && (escape_all || !printable(c) || is_break(c) || c == '"' || c == '\\')
        {
            col += push_escape(out, c);
            spaces = false;
            i += 1;
            continue;
        }
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
        if style == Style::Single && is_break(c) {
            // Only line and paragraph separators reach here; the emitter writes them as they are
            // and starts a fresh, indented line.
            out.push(c);
            col = 0;
            breaks = true;
            i += 1;
            continue;
        }
        if breaks {
            if col > ind {
                out.push('\n');
                col = 0;
            }
            indent(out, ind - col);
            col = ind;
            breaks = false;
        }
        spaces = false;
        if style == Style::Single && c == '\'' {
            out.push_str("''");
            col += 2;
        } else {
            out.push(c);
            col += 1;
        }
        i += 1;
    }
    if let Some(q) = quote {
        out.push(q);
        col += 1;
    }
    col
}

/// The first string (key or value) holding a character kustomize's YAML reader rejects (DEL,
/// C1 controls but NEL, U+FFFE, U+FFFF; the C0 controls arrive escaped), with its field path.
pub fn unprintable(m: &Map<String, Value>) -> Option<(String, char)> {
    fn bad(s: &str) -> Option<char> {
        // Each of these characters has a byte of 0x7f or above, which most text has none of.
        if s.bytes().all(|b| b < 0x7f) {
            return None;
        }
        s.chars().find(
            |&c| matches!(c, '\u{7f}'..='\u{84}' | '\u{86}'..='\u{9f}' | '\u{fffe}' | '\u{ffff}'),
        )
    }
    fn walk(v: &Value, path: &mut String) -> Option<char> {
        match v {
            Value::String(s) => bad(s),
            Value::Array(items) => items.iter().enumerate().find_map(|(i, item)| {
                let len = path.len();
                let _ = write!(path, "[{i}]");
                let found = walk(item, path);
                if found.is_none() {
                    path.truncate(len);
                }
                found
            }),
            Value::Object(m) => m.iter().find_map(|(k, item)| {
                let len = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(k);
                let found = bad(k).or_else(|| walk(item, path));
                if found.is_none() {
                    path.truncate(len);
                }
                found
            }),
            _ => None,
        }
    }
    /// Whether `v` holds no such character: the common case, checked without building paths.
    fn clean(v: &Value) -> bool {
        match v {
            Value::String(s) => bad(s).is_none(),
            Value::Array(items) => items.iter().all(clean),
            Value::Object(m) => m.iter().all(|(k, v)| bad(k).is_none() && clean(v)),
            _ => true,
        }
    }
    if m.iter().all(|(k, v)| bad(k).is_none() && clean(v)) {
        return None;
    }
    let mut path = String::new();
    for (k, v) in m {
        path.clear();
        path.push_str(k);
        if let Some(c) = bad(k).or_else(|| walk(v, &mut path)) {
            return Some((path, c));
        }
    }
    None
}

/// go-yaml v2's map key order: letters after other characters, runs of digits by their value.
fn key_less(a: &str, b: &str) -> bool {
    // Nearly every key is ASCII, where a byte is a character: no copy needed.
    if a.is_ascii() && b.is_ascii() {
        return key_less_in(a.as_bytes(), b.as_bytes());
    }
    let (ar, br): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    key_less_in(&ar, &br)
}

/// A character of a map key, as [`key_less`] compares it.
trait KeyChar: Copy + Ord {
    fn alphabetic(self) -> bool;
    /// The value of an ASCII digit.
    fn digit(self) -> Option<u8>;
}

impl KeyChar for u8 {
    fn alphabetic(self) -> bool {
        self.is_ascii_alphabetic()
    }
    fn digit(self) -> Option<u8> {
        self.is_ascii_digit().then(|| self - b'0')
    }
}

impl KeyChar for char {
    fn alphabetic(self) -> bool {
        self.is_alphabetic()
    }
    fn digit(self) -> Option<u8> {
        self.is_ascii_digit().then(|| self as u8 - b'0')
    }
}

fn key_less_in<C: KeyChar>(ar: &[C], br: &[C]) -> bool {
    for i in 0..ar.len().min(br.len()) {
        if ar[i] == br[i] {
            continue;
        }
        let (al, bl) = (ar[i].alphabetic(), br[i].alphabetic());
        if al && bl {
            return ar[i] < br[i];
        }
        if al || bl {
            return bl;
        }
        let (mut an, mut bn) = (0u128, 0u128);
        if ar[i].digit() == Some(0) || br[i].digit() == Some(0) {
            let nonzero_before = ar[..i]
                .iter()
                .rev()
                .map_while(|c| c.digit())
                .any(|d| d != 0);
            if nonzero_before {
                (an, bn) = (1, 1);
            }
        }
        let number = |chars: &[C], n: &mut u128| -> usize {
            let mut end = i;
            while let Some(d) = chars.get(end).and_then(|c| c.digit()) {
                *n = n.saturating_mul(10).saturating_add(u128::from(d));
                end += 1;
            }
            end
        };
        let (ai, bi) = (number(ar, &mut an), number(br, &mut bn));
        if an != bn {
            return an < bn;
        }
        if ai != bi {
            return ai < bi;
        }
        return ar[i] < br[i];
    }
    ar.len() < br.len()
}

/// The entries of `m` in go-yaml's key order. Binary insertion keeps the order exactly as the
/// comparison says, without the total-order demands of the standard sort.
fn sorted_entries(m: &Map<String, Value>) -> Vec<(&String, &Value)> {
    let mut sorted: Vec<(&String, &Value)> = Vec::with_capacity(m.len());
    for (k, v) in m {
        let at = sorted.partition_point(|(s, _)| !key_less(k, s));
        sorted.insert(at, (k, v));
    }
    sorted
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_print_as_the_general_path_prints_them() {
        let words = [
            "nginx",
            "config-17",
            "a.b/c",
            "80",
            "0x1F",
            "010",
            "1_000",
            "1e3",
            "1.10",
            "true",
            "True",
            "yes",
            "N",
            "y",
            "on",
            "null",
            "2024-01-02",
            "1.2.3",
            "v1",
            "x_y",
            "0o17",
        ];
        for word in words {
            assert!(is_word(word), "{word}");
            for key in [false, true] {
                let (mut fast, mut general) = (String::new(), String::new());
                let fast_col = write_string(&mut fast, word, 90, 2, key);
                let general_col = write_any(&mut general, word, 90, 2, key);
                assert_eq!((fast, fast_col), (general, general_col), "{word}");
            }
        }
        for not_word in ["", "-x", ".5", "a b", "a:b", "a#b", "é", "~"] {
            assert!(!is_word(not_word), "{not_word}");
        }
    }

    #[test]
    fn ascii_and_unicode_keys_sort_alike() {
        let keys = ["b", "a10", "a9", "a09", "A", "_x", "a", "ä", "a0", "a00"];
        for a in keys {
            for b in keys {
                if a.is_ascii() && b.is_ascii() {
                    let chars = |s: &str| s.chars().collect::<Vec<char>>();
                    assert_eq!(
                        key_less(a, b),
                        key_less_in(&chars(a), &chars(b)),
                        "{a} < {b}"
                    );
                }
            }
        }
    }

    #[test]
    fn printed_documents_read_back_as_the_same_values() {
        let text = "b: \"1\"\na:\n  list:\n  - x: \"true\"\n    y: 2\n  - plain\n  text: |\n    two\n    lines\n  empty: \"\"\n";
        let docs =
            super::super::documents(text, super::super::Reading::Resources).expect("valid yaml");
        let printed = to_yaml(&docs[0]);
        assert!(printed.starts_with("a:\n  empty: \"\"\n  list:\n  - x: \"true\"\n"));
        assert_eq!(
            super::super::documents(&printed, super::super::Reading::Resources).expect("reparse"),
            docs
        );
    }
}
