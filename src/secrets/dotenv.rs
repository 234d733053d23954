//! dotenv files as sops reads them: `KEY=value` lines, `#` comment lines, `\n` escapes, values
//! kept verbatim (quotes included).

use std::path::Path;

use super::error::Error;
use super::value::{Comment, Item, Tree, Value};

pub fn parse(file: &Path, text: &str) -> Result<Tree, Error> {
    let mut branch = Vec::new();
    for (n, line) in text.split('\n').enumerate() {
        if line.is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            branch.push(Item::Comment(Comment::new(comment)));
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            return Err(Error::Syntax {
                file: file.to_owned(),
                format: "dotenv",
                line: n + 1,
                problem: "a line is neither KEY=value nor a comment".into(),
            });
        };
        branch.push(Item::Entry(
            key.to_owned(),
            Value::str(value.replace("\\n", "\n")),
        ));
    }
    Ok(Tree {
        branches: vec![branch],
    })
}

pub fn scalar_text(v: &Value) -> String {
    match v {
        Value::Str(s) | Value::Time(s) => s.to_string(),
        Value::Bytes(b) => String::from_utf8_lossy(b).into_owned(),
        Value::Int(i) => i.to_string(),
        Value::Float(f) => crate::yaml::number::format_fixed(*f),
        Value::Bool(b) => b.to_string(),
        Value::Null => String::new(),
        Value::Comment(c) => c.text.to_string(),
        Value::Map(_) | Value::Seq(_) => String::new(),
    }
}

pub fn emit(file: &Path, tree: &Tree) -> Result<String, Error> {
    let mut out = String::new();
    for item in tree.branches.first().map(Vec::as_slice).unwrap_or_default() {
        match item {
            Item::Comment(c) => {
                out.push('#');
                out.push_str(&c.text);
            }
            Item::Entry(k, v) => {
                if v.is_container() {
                    return Err(Error::Structure {
                        file: file.to_owned(),
                        key_path: k.clone(),
                        problem: "a dotenv file cannot hold nested values",
                    });
                }
                out.push_str(k);
                out.push('=');
                out.push_str(&scalar_text(v).replace('\n', "\\n"));
            }
        }
        out.push('\n');
    }
    Ok(out)
}
