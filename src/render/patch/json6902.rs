//! JSON 6902 patches, applied as kustomize's JSON patch library applies them.

use serde_json::{Map, Value};

use super::Compiled;
use crate::render::kustomization::Selector;
use crate::render::resource::Resource;

/// A JSON 6902 patch given as YAML or JSON text. Text that opens with `[` is JSON, strictly, as
/// kustomize reads it: YAML flow style there is an error, not a second chance.
pub fn apply_json6902_text(
    list: &mut [Resource],
    text: &str,
    target: &Selector,
) -> Result<(), String> {
    if text.starts_with('[') {
        let ops: Vec<Value> =
            serde_json::from_str(text).map_err(|e| format!("JSON patch is not JSON: {e}"))?;
        return apply_json6902(list, &ops, target);
    }
    let docs = crate::yaml::parse_documents(text).map_err(|e| format!("JSON patch: {e}"))?;
    let ops = match docs.as_slice() {
        [Value::Array(ops)] => ops.clone(),
        [] => Vec::new(),
        _ => return Err("a JSON patch must be a list of operations".into()),
    };
    apply_json6902(list, &ops, target)
}

pub fn apply_json6902(
    list: &mut [Resource],
    ops: &[Value],
    target: &Selector,
) -> Result<(), String> {
    let sel = Compiled::new(target)?;
    for r in list.iter_mut() {
        if !sel.matches(r) {
            continue;
        }
        r.store_previous_id();
        let mut doc = Value::Object(std::mem::take(&mut r.obj));
        let result = ops.iter().try_for_each(|op| json_op(&mut doc, op));
        r.obj = match doc {
            Value::Object(m) => m,
            _ => Map::new(),
        };
        result?;
    }
    Ok(())
}

fn pointer_parts(p: &str) -> Result<Vec<String>, String> {
    if p.is_empty() {
        return Ok(Vec::new());
    }
    let Some(rest) = p.strip_prefix('/') else {
        return Err(format!("invalid JSON pointer {p:?}"));
    };
    Ok(rest
        .split('/')
        .map(|s| s.replace("~1", "/").replace("~0", "~"))
        .collect())
}

fn parent_of<'a>(
    doc: &'a mut Value,
    parts: &[String],
    path: &str,
) -> Result<&'a mut Value, String> {
    let mut cur = doc;
    for p in parts {
        cur = match cur {
            Value::Object(m) => m.get_mut(p),
            Value::Array(a) => p.parse::<usize>().ok().and_then(|i| a.get_mut(i)),
            _ => None,
        }
        .ok_or_else(|| format!("doc is missing path: {path}"))?;
    }
    Ok(cur)
}

fn get_at(doc: &mut Value, path: &str) -> Result<Value, String> {
    let parts = pointer_parts(path)?;
    parent_of(doc, &parts, path).map(|v| v.clone())
}

fn remove_at(doc: &mut Value, path: &str) -> Result<Value, String> {
    let parts = pointer_parts(path)?;
    let (last, init) = parts.split_last().ok_or("cannot remove the root")?;
    let parent = parent_of(doc, init, path)?;
    match parent {
        Value::Object(m) => m
            .remove(last)
            .ok_or_else(|| format!("remove operation does not apply: doc is missing path: {path}")),
        Value::Array(a) => {
            let i: usize = last
                .parse()
                .map_err(|_| format!("invalid index in {path}"))?;
            if i >= a.len() {
                return Err(format!(
                    "remove operation does not apply: doc is missing path: {path}"
                ));
            }
            Ok(a.remove(i))
        }
        _ => Err(format!("doc is missing path: {path}")),
    }
}

fn add_at(doc: &mut Value, path: &str, value: Value, replace: bool) -> Result<(), String> {
    let parts = pointer_parts(path)?;
    let Some((last, init)) = parts.split_last() else {
        *doc = value;
        return Ok(());
    };
    let parent = parent_of(doc, init, path)?;
    match parent {
        // kustomize's JSON patch library replaces a missing key of a map by adding it.
        Value::Object(m) => {
            m.insert(last.clone(), value);
            Ok(())
        }
        Value::Array(a) => {
            if last == "-" && !replace {
                a.push(value);
                return Ok(());
            }
            let i: usize = last
                .parse()
                .map_err(|_| format!("invalid index in {path}"))?;
            if replace {
                let slot = a.get_mut(i).ok_or_else(|| {
                    format!("replace operation does not apply: doc is missing path: {path}")
                })?;
                *slot = value;
            } else {
                if i > a.len() {
                    return Err(format!(
                        "add operation does not apply: index out of bounds: {path}"
                    ));
                }
                a.insert(i, value);
            }
            Ok(())
        }
        _ => Err(format!("doc is missing path: {path}")),
    }
}

fn json_op(doc: &mut Value, op: &Value) -> Result<(), String> {
    let s = |k: &str| op.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
    let path = s("path");
    let value = || {
        op.get("value")
            .cloned()
            .ok_or_else(|| format!("{} {path}: missing value", s("op")))
    };
    match s("op").as_str() {
        "add" => add_at(doc, &path, value()?, false),
        "replace" => add_at(doc, &path, value()?, true),
        "remove" => remove_at(doc, &path).map(|_| ()),
        "move" => {
            let v = remove_at(doc, &s("from"))?;
            add_at(doc, &path, v, false)
        }
        "copy" => {
            let v = get_at(doc, &s("from"))?;
            add_at(doc, &path, v, false)
        }
        "test" => {
            if get_at(doc, &path)? == value()? {
                Ok(())
            } else {
                Err(format!("testing value {path} failed"))
            }
        }
        other => Err(format!("unexpected JSON patch operation {other:?}")),
    }
}
