//! JSON 6902 patches, applied as kustomize's JSON patch library applies them.

use serde_json::{Map, Value};

use super::{Compiled, Error};
use crate::render::kustomization::Selector;
use crate::render::resource::Resource;

/// A JSON 6902 patch given as YAML or JSON text. Text that opens with `[` is JSON, strictly, as
/// kustomize reads it: YAML flow style there is an error, not a second chance.
pub fn apply_json6902_text(
    list: &mut [Resource],
    text: &str,
    target: &Selector,
) -> Result<(), Error> {
    if text.starts_with('[') {
        let ops: Vec<Value> = serde_json::from_str(text).map_err(Error::NotJson)?;
        return apply_json6902(list, &ops, target);
    }
    let docs = crate::yaml::parse_documents(text).map_err(|reason| Error::Yaml {
        what: "JSON patch",
        reason,
    })?;
    let ops = match docs.as_slice() {
        [Value::Array(ops)] => ops.clone(),
        [] => Vec::new(),
        _ => return Err(Error::NotAList),
    };
    apply_json6902(list, &ops, target)
}

pub fn apply_json6902(
    list: &mut [Resource],
    ops: &[Value],
    target: &Selector,
) -> Result<(), Error> {
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

fn pointer_parts(p: &str) -> Result<Vec<String>, Error> {
    if p.is_empty() {
        return Ok(Vec::new());
    }
    let Some(rest) = p.strip_prefix('/') else {
        return Err(Error::Pointer(p.to_owned()));
    };
    Ok(rest
        .split('/')
        .map(|s| s.replace("~1", "/").replace("~0", "~"))
        .collect())
}

fn parent_of<'a>(doc: &'a mut Value, parts: &[String], path: &str) -> Result<&'a mut Value, Error> {
    let mut cur = doc;
    for p in parts {
        cur = match cur {
            Value::Object(m) => m.get_mut(p),
            Value::Array(a) => p.parse::<usize>().ok().and_then(|i| a.get_mut(i)),
            _ => None,
        }
        .ok_or_else(|| Error::MissingPath(path.to_owned()))?;
    }
    Ok(cur)
}

fn get_at(doc: &mut Value, path: &str) -> Result<Value, Error> {
    let parts = pointer_parts(path)?;
    parent_of(doc, &parts, path).map(|v| v.clone())
}

fn remove_at(doc: &mut Value, path: &str) -> Result<Value, Error> {
    let parts = pointer_parts(path)?;
    let (last, init) = parts.split_last().ok_or(Error::RemoveRoot)?;
    let parent = parent_of(doc, init, path)?;
    match parent {
        Value::Object(m) => m.remove(last).ok_or_else(|| Error::DoesNotApply {
            op: "remove",
            path: path.to_owned(),
        }),
        Value::Array(a) => {
            let i: usize = last.parse().map_err(|_| Error::Index(path.to_owned()))?;
            if i >= a.len() {
                return Err(Error::DoesNotApply {
                    op: "remove",
                    path: path.to_owned(),
                });
            }
            Ok(a.remove(i))
        }
        _ => Err(Error::MissingPath(path.to_owned())),
    }
}

fn add_at(doc: &mut Value, path: &str, value: Value, replace: bool) -> Result<(), Error> {
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
            let i: usize = last.parse().map_err(|_| Error::Index(path.to_owned()))?;
            if replace {
                let slot = a.get_mut(i).ok_or_else(|| Error::DoesNotApply {
                    op: "replace",
                    path: path.to_owned(),
                })?;
                *slot = value;
            } else {
                if i > a.len() {
                    return Err(Error::OutOfBounds(path.to_owned()));
                }
                a.insert(i, value);
            }
            Ok(())
        }
        _ => Err(Error::MissingPath(path.to_owned())),
    }
}

fn json_op(doc: &mut Value, op: &Value) -> Result<(), Error> {
    let s = |k: &str| op.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
    let path = s("path");
    let value = || {
        op.get("value").cloned().ok_or_else(|| Error::MissingValue {
            op: s("op"),
            path: path.clone(),
        })
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
                Err(Error::TestFailed(path))
            }
        }
        other => Err(Error::UnknownOp(other.to_owned())),
    }
}
