//! INI files as sops's INI store reads them: one mapping per section, a comment block above a
//! key stored right after that key, values unquoted and trimmed.

use std::path::Path;

use super::dotenv::scalar_text;
use super::error::Error;
use super::value::{Comment, Item, Tree, Value};

fn strip_comment_char(line: &str) -> &str {
    line.trim_start_matches([';', '#', ' '])
}

fn unquote(v: &str) -> String {
    let v = v.trim();
    for q in ['"', '\'', '`'] {
        if v.len() >= 2 && v.starts_with(q) && v.ends_with(q) {
            return v[1..v.len() - 1].to_owned();
        }
    }
    // An unquoted value ends where a comment introduced by whitespace begins.
    let mut end = v.len();
    for (i, c) in v.char_indices() {
        if (c == ';' || c == '#') && i > 0 && v[..i].ends_with([' ', '\t']) {
            end = i;
            break;
        }
    }
    v[..end].trim_end().to_owned()
}

pub fn parse(file: &Path, text: &str) -> Result<Tree, Error> {
    let mut sections: Vec<(String, Vec<Item>)> = vec![("DEFAULT".into(), Vec::new())];
    let mut comments: Vec<String> = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() {
            continue;
        }
        if line.starts_with([';', '#']) {
            comments.push(strip_comment_char(line).to_owned());
            continue;
        }
        if let Some(name) = line.strip_prefix('[') {
            let Some(name) = name.strip_suffix(']') else {
                return Err(Error::Syntax {
                    file: file.to_owned(),
                    format: "INI",
                    line: n + 1,
                    problem: "unclosed section header".into(),
                });
            };
            let mut items = Vec::new();
            if !comments.is_empty() {
                items.push(Item::Comment(Comment::new(comments.join("\n"))));
                comments.clear();
            }
            sections.push((name.trim().to_owned(), items));
            continue;
        }
        let Some(at) = line.find(['=', ':']) else {
            return Err(Error::Syntax {
                file: file.to_owned(),
                format: "INI",
                line: n + 1,
                problem: "a line is neither key = value, a section nor a comment".into(),
            });
        };
        let key = line[..at].trim().to_owned();
        let value = unquote(&line[at + 1..]);
        let items = &mut sections.last_mut().expect("DEFAULT is always there").1;
        items.push(Item::Entry(key, Value::str(value)));
        if !comments.is_empty() {
            items.push(Item::Comment(Comment::new(comments.join("\n"))));
            comments.clear();
        }
    }
    let branch = sections
        .into_iter()
        .filter(|(name, items)| name != "DEFAULT" || !items.is_empty())
        .map(|(name, items)| Item::Entry(name, Value::Map(items)))
        .collect();
    Ok(Tree {
        branches: vec![branch],
    })
}

pub fn emit(file: &Path, tree: &Tree) -> Result<String, Error> {
    let mut out = String::new();
    for item in tree.branches.first().map(Vec::as_slice).unwrap_or_default() {
        let Item::Entry(section, Value::Map(items)) = item else {
            if let Item::Entry(k, _) = item {
                return Err(Error::Structure {
                    file: file.to_owned(),
                    key_path: k.clone(),
                    problem: "an INI file holds only sections of key = value",
                });
            }
            continue;
        };
        if !out.is_empty() {
            out.push('\n');
        }
        let mut rest: &[Item] = items;
        if let Some(Item::Comment(c)) = rest.first() {
            out.push_str(&format!("; {}\n", &*c.text));
            rest = &rest[1..];
        }
        out.push_str(&format!("[{section}]\n"));
        let width = rest
            .iter()
            .filter_map(|i| match i {
                Item::Entry(k, _) => Some(k.chars().count()),
                Item::Comment(_) => None,
            })
            .max()
            .unwrap_or(0);
        // A comment stored after a key is written above it, where it came from.
        let mut i = 0;
        while i < rest.len() {
            if let Item::Entry(k, v) = &rest[i] {
                if v.is_container() {
                    return Err(Error::Structure {
                        file: file.to_owned(),
                        key_path: format!("{section}.{k}"),
                        problem: "an INI file cannot hold nested values",
                    });
                }
                if let Some(Item::Comment(c)) = rest.get(i + 1) {
                    for line in c.text.split('\n') {
                        out.push_str(&format!("; {line}\n"));
                    }
                }
                let pad = width - k.chars().count();
                out.push_str(&format!("{k}{} = {}\n", " ".repeat(pad), scalar_text(v)));
            }
            i += 1;
        }
    }
    Ok(out)
}
