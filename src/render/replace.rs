//! `replacements` (copy a field of one resource into fields of others) and the older `vars`
//! (`$(NAME)` placeholders filled in at the end of the build).

use serde_json::{Map, Value};

use super::fieldspec::{self, FieldSpec};
use super::kustomization::{Selector, Var};
use super::patch::Compiled;
use super::resource::{Gvk, Resource};

/// A dotted field path: `spec.containers.[name=app].image`, `metadata.labels.[a.b/c]`, `ports.0`.
fn split_path(p: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut depth = 0;
    for c in p.chars() {
        match c {
            '[' => {
                depth += 1;
                cur.push(c);
            }
            ']' => {
                depth -= 1;
                cur.push(c);
            }
            '.' if depth == 0 => out.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    out.push(cur);
    // `containers[name=x]` is the same as `containers.[name=x]`.
    let mut segs = Vec::new();
    for s in out.into_iter().filter(|s| !s.is_empty()) {
        if !s.starts_with('[')
            && let Some(i) = s.find('[')
        {
            segs.push(s[..i].to_owned());
            segs.push(s[i..].to_owned());
        } else {
            segs.push(s);
        }
    }
    segs
}

enum Step<'a> {
    Key(&'a str),
    Match(&'a str, &'a str),
    Index(usize),
    All,
}

fn step(seg: &str) -> Step<'_> {
    if seg == "*" || seg == "[]" {
        return Step::All;
    }
    if let Some(inner) = seg.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
        return match inner.split_once('=') {
            Some((k, v)) => Step::Match(k, v),
            None => match inner.parse() {
                Ok(i) => Step::Index(i),
                Err(_) => Step::Key(inner),
            },
        };
    }
    Step::Key(seg)
}

fn lookup<'a>(v: &'a Value, segs: &[String]) -> Option<&'a Value> {
    let Some((first, rest)) = segs.split_first() else {
        return Some(v);
    };
    let next = match (step(first), v) {
        (Step::Key(k), Value::Object(m)) => m.get(k),
        (Step::Key(k), Value::Array(a)) => k.parse::<usize>().ok().and_then(|i| a.get(i)),
        (Step::Index(i), Value::Array(a)) => a.get(i),
        (Step::Match(k, val), Value::Array(a)) => a
            .iter()
            .find(|e| e.get(k).map(scalar_string).as_deref() == Some(val)),
        _ => None,
    }?;
    lookup(next, rest)
}

fn scalar_string(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Calls `f` on every node at `segs`, telling it whether the node was just made; with `create`,
/// missing maps and the last field are made.
fn visit_mut(
    v: &mut Value,
    segs: &[String],
    create: bool,
    f: &mut dyn FnMut(&mut Value, bool) -> Result<(), Error>,
) -> Result<bool, Error> {
    let Some((first, rest)) = segs.split_first() else {
        f(v, false)?;
        return Ok(true);
    };
    match (step(first), v) {
        (Step::Key(k), Value::Object(m)) => {
            if !m.contains_key(k) {
                if !create {
                    return Ok(false);
                }
                let fresh = match rest.first().map(|s| step(s)) {
                    Some(Step::Index(_)) | Some(Step::Match(..)) | Some(Step::All) => {
                        Value::Array(Vec::new())
                    }
                    Some(_) => Value::Object(Map::new()),
                    None => {
                        f(m.entry(k.to_owned()).or_insert(Value::Null), true)?;
                        return Ok(true);
                    }
                };
                m.insert(k.to_owned(), fresh);
            }
            visit_mut(m.get_mut(k).expect("inserted if missing"), rest, create, f)
        }
        (Step::Key(k), Value::Array(a)) => match k.parse::<usize>().ok().and_then(|i| a.get_mut(i))
        {
            Some(e) => visit_mut(e, rest, create, f),
            None => Ok(false),
        },
        (Step::Index(i), Value::Array(a)) => match a.get_mut(i) {
            Some(e) => visit_mut(e, rest, create, f),
            None => Ok(false),
        },
        (Step::Match(k, val), Value::Array(a)) => {
            let mut any = false;
            for e in a.iter_mut() {
                if e.get(k).map(scalar_string).as_deref() == Some(val) {
                    any |= visit_mut(e, rest, create, f)?;
                }
            }
            if !any && create {
                let mut m = Map::new();
                m.insert(k.to_owned(), Value::String(val.to_owned()));
                a.push(Value::Object(m));
                let last = a.last_mut().expect("just pushed");
                return visit_mut(last, rest, create, f);
            }
            Ok(any)
        }
        (Step::All, Value::Array(a)) => {
            let mut any = false;
            for e in a.iter_mut() {
                any |= visit_mut(e, rest, create, f)?;
            }
            Ok(any)
        }
        (Step::All, Value::Object(m)) => {
            let mut any = false;
            for (_, e) in m.iter_mut() {
                any |= visit_mut(e, rest, create, f)?;
            }
            Ok(any)
        }
        (_, Value::Null) if create => Ok(false),
        _ => Ok(false),
    }
}

/// Why a replacement or a var could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("replacement has no source")]
    NoSource,
    #[error("replacement target has no select")]
    NoSelect,
    #[error("{0}")]
    Selector(serde_json::Error),
    #[error(transparent)]
    Target(#[from] super::patch::Error),
    #[error("nothing selected by {0}")]
    NothingSelected(Value),
    #[error("multiple matches for selector {selector}; found {count} resources")]
    ManySelected { selector: Value, count: usize },
    #[error("fieldPath `{path}` is missing for replacement source {id}")]
    MissingSourceField { path: String, id: String },
    #[error("options.index {index} is out of bounds for value {value}")]
    Index { index: i64, value: String },
    #[error("{path} of {id}: {reason}")]
    Field {
        path: String,
        id: String,
        reason: Box<Error>,
    },
    #[error(transparent)]
    Value(#[from] crate::yaml::ValueError),
    #[error(
        "the field is a {kind} and `{text}` is not (kustomize keeps the type of a field it replaces into)"
    )]
    KeepsType { kind: &'static str, text: String },
    #[error("var '{0}' cannot be mapped to a field in the set of known resources")]
    VarUnmapped(String),
    #[error("unable to disambiguate var '{name}': {count} resources match")]
    VarAmbiguous { name: String, count: usize },
    #[error("field specified in var '{0}' not found in corresponding resource")]
    VarFieldMissing(String),
    #[error("found {count} resId matches for var '{name}' (unable to disambiguate)")]
    VarMatches { name: String, count: usize },
    #[error(transparent)]
    Visit(#[from] fieldspec::VisitError),
}

fn selector_of(v: &Value) -> Result<Selector, Error> {
    let mut sel: Selector = serde_json::from_value(v.clone()).map_err(Error::Selector)?;
    // A selector may give apiVersion instead of group and version.
    if let Some(av) = v.get("apiVersion").and_then(Value::as_str) {
        let g = Gvk::from_api_version(av, "");
        sel.group = g.group;
        sel.version = g.version;
    }
    Ok(sel)
}

#[derive(Default)]
struct Opts {
    delimiter: String,
    index: i64,
    create: bool,
}

fn opts_of(v: Option<&Value>) -> Opts {
    let Some(v) = v else { return Opts::default() };
    Opts {
        delimiter: v
            .get("delimiter")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned(),
        index: v.get("index").and_then(Value::as_i64).unwrap_or(0),
        create: v.get("create").and_then(Value::as_bool).unwrap_or(false),
    }
}

pub fn replacements(list: &mut [Resource], replacements: &[Value]) -> Result<(), Error> {
    for rep in replacements {
        let value = if let Some(v) = rep.get("sourceValue") {
            v.clone()
        } else {
            let src = rep.get("source").ok_or(Error::NoSource)?;
            let sel = Compiled::new(&selector_of(src)?)?;
            let hits: Vec<&Resource> = list.iter().filter(|r| sel.matches_any_id(r)).collect();
            let r = match hits.as_slice() {
                [r] => *r,
                [] => return Err(Error::NothingSelected(src.clone())),
                _ => {
                    return Err(Error::ManySelected {
                        selector: src.clone(),
                        count: hits.len(),
                    });
                }
            };
            let path = src
                .get("fieldPath")
                .and_then(Value::as_str)
                .unwrap_or("metadata.name");
            let obj = Value::Object(r.obj.clone());
            let v = lookup(&obj, &split_path(path))
                .ok_or_else(|| Error::MissingSourceField {
                    path: path.to_owned(),
                    id: r.cur_id().to_string(),
                })?
                .clone();
            let o = opts_of(src.get("options"));
            if o.delimiter.is_empty() {
                v
            } else {
                let s = scalar_string(&v);
                let parts: Vec<&str> = s.split(o.delimiter.as_str()).collect();
                let i = usize::try_from(o.index)
                    .ok()
                    .filter(|i| *i < parts.len())
                    .ok_or_else(|| Error::Index {
                        index: o.index,
                        value: s.clone(),
                    })?;
                Value::String(parts[i].to_owned())
            }
        };
        let targets = match rep.get("targets") {
            Some(Value::Array(t)) => t.clone(),
            _ => Vec::new(),
        };
        for t in &targets {
            let select = t.get("select").ok_or(Error::NoSelect)?;
            let sel = Compiled::new(&selector_of(select)?)?;
            let rejects: Vec<Compiled> = match t.get("reject") {
                Some(Value::Array(rs)) => rs
                    .iter()
                    .map(|r| selector_of(r).and_then(|s| Ok(Compiled::new(&s)?)))
                    .collect::<Result<_, _>>()?,
                _ => Vec::new(),
            };
            let o = opts_of(t.get("options"));
            let paths: Vec<String> = match t.get("fieldPaths") {
                Some(Value::Array(ps)) => ps
                    .iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect(),
                _ => vec!["metadata.name".to_owned()],
            };
            for r in list.iter_mut() {
                if !sel.matches_any_id(r) || rejects.iter().any(|x| x.rejects(r)) {
                    continue;
                }
                let mut obj = Value::Object(std::mem::take(&mut r.obj));
                let mut result = Ok(());
                let id = r.cur_id();
                for p in &paths {
                    let mut set = |node: &mut Value, created: bool| -> Result<(), Error> {
                        let text = if o.delimiter.is_empty() {
                            if !is_scalar(&value) || !(created || is_scalar(node)) {
                                *node = value.clone();
                                return Ok(());
                            }
                            scalar_string(&value)
                        } else {
                            let cur = if created {
                                String::new()
                            } else {
                                scalar_string(node)
                            };
                            let mut parts: Vec<String> =
                                cur.split(o.delimiter.as_str()).map(str::to_owned).collect();
                            let new = scalar_string(&value);
                            if o.index < 0 {
                                parts.insert(0, new);
                            } else if (o.index as usize) >= parts.len() {
                                parts.push(new);
                            } else {
                                parts[o.index as usize] = new;
                            }
                            parts.join(&o.delimiter)
                        };
                        *node = typed_as(&text, (!created).then_some(&*node)).map_err(|m| {
                            Error::Field {
                                path: p.clone(),
                                id: id.to_string(),
                                reason: Box::new(m),
                            }
                        })?;
                        Ok(())
                    };
                    match visit_mut(&mut obj, &split_path(p), o.create, &mut set) {
                        Ok(true) => {}
                        Ok(false) if !o.create && p.contains('[') && !p.contains('=') => {}
                        Ok(false) => {}
                        Err(e) => {
                            result = Err(e);
                            break;
                        }
                    }
                }
                r.obj = match obj {
                    Value::Object(m) => m,
                    _ => Map::new(),
                };
                result?;
            }
        }
    }
    Ok(())
}

fn is_scalar(v: &Value) -> bool {
    !matches!(v, Value::Object(_) | Value::Array(_))
}

/// The value a scalar field holds once `text` is copied into it. kustomize copies only the text
/// into a scalar node, which keeps its type: a string field stays a string, a number field must
/// get a number, a field just made has no type yet and reads `text` as a plain scalar.
fn typed_as(text: &str, field: Option<&Value>) -> Result<Value, Error> {
    if let Some(Value::String(_)) = field {
        return Ok(Value::String(text.to_owned()));
    }
    let read = crate::yaml::plain(text)?;
    let (ok, kind) = match field {
        None => return Ok(read),
        Some(Value::Number(n)) if n.is_f64() => (read.is_number(), "number"),
        Some(Value::Number(_)) => (read.is_i64() || read.is_u64(), "integer"),
        Some(Value::Bool(_)) => (read.is_boolean(), "boolean"),
        Some(_) => (read.is_null(), "null"),
    };
    if ok {
        Ok(read)
    } else {
        Err(Error::KeepsType {
            kind,
            text: text.to_owned(),
        })
    }
}

/// Replaces `$(NAME)` in every var-reference field with the value each var points at.
pub fn resolve_vars(list: &mut [Resource], vars: &[Var], specs: &[FieldSpec]) -> Result<(), Error> {
    if vars.is_empty() {
        return Ok(());
    }
    let mut values: Vec<(String, Value)> = Vec::new();
    for v in vars {
        // A var bound where it was declared resolves against that resource alone.
        let bound: Vec<&Resource> = list
            .iter()
            .filter(|r| r.ref_vars.contains(&v.name))
            .collect();
        let hits: Vec<&Resource> = if bound.is_empty() {
            list.iter().filter(|r| var_selects(v, r)).collect()
        } else {
            bound
        };
        let r = match hits.as_slice() {
            [r] => *r,
            [] => {
                return Err(Error::VarUnmapped(v.name.clone()));
            }
            _ => {
                return Err(Error::VarAmbiguous {
                    name: v.name.clone(),
                    count: hits.len(),
                });
            }
        };
        let path = if v.field_ref.field_path.is_empty() {
            "metadata.name"
        } else {
            &v.field_ref.field_path
        };
        let obj = Value::Object(r.obj.clone());
        let val = lookup(&obj, &split_path(path))
            .ok_or_else(|| Error::VarFieldMissing(v.name.clone()))?;
        values.push((format!("$({})", v.name), val.clone()));
    }
    for r in list.iter_mut() {
        let gvk = r.gvk();
        fieldspec::apply_specs(&mut r.obj, &gvk, specs, &mut |v| {
            substitute(v, &values);
            Ok(())
        })?;
    }
    Ok(())
}

/// Whether `r`, under its current or any earlier id, is the object `v` refers to.
fn var_selects(v: &Var, r: &Resource) -> bool {
    let api = Gvk::from_api_version(&v.obj_ref.api_version, "");
    let want = Gvk {
        group: if v.obj_ref.group.is_empty() {
            api.group
        } else {
            v.obj_ref.group.clone()
        },
        version: if v.obj_ref.version.is_empty() {
            api.version
        } else {
            v.obj_ref.version.clone()
        },
        kind: v.obj_ref.kind.clone(),
    };
    let ids = std::iter::once(r.cur_id()).chain(r.prev_ids());
    ids.into_iter().any(|id| {
        id.gvk.is_selected_by(&want)
            && id.name == v.obj_ref.name
            && (v.obj_ref.namespace.is_empty() || id.namespace == v.obj_ref.namespace)
    })
}

/// Binds a var to the one resource it names among those accumulated where it is declared, so a
/// copy of that resource arriving later through another base (a diamond) does not make it
/// ambiguous.
pub fn bind_var(list: &mut [Resource], v: &Var) -> Result<(), Error> {
    let hits: Vec<usize> = (0..list.len())
        .filter(|&i| var_selects(v, &list[i]))
        .collect();
    match hits.as_slice() {
        [i] => {
            list[*i].ref_vars.push(v.name.clone());
            Ok(())
        }
        [] => Ok(()),
        _ => Err(Error::VarMatches {
            name: v.name.clone(),
            count: hits.len(),
        }),
    }
}

fn substitute(v: &mut Value, values: &[(String, Value)]) {
    match v {
        Value::String(s) if s.contains('$') => *v = expand(s, values),
        Value::Array(items) => items.iter_mut().for_each(|i| substitute(i, values)),
        Value::Object(m) => m.values_mut().for_each(|i| substitute(i, values)),
        _ => {}
    }
}

/// Kubernetes' `$(VAR)` expansion, as kustomize runs it: `$$` is a literal `$`, an unknown or
/// unclosed reference stays as written, and a field that is exactly one reference takes the
/// value with its type.
fn expand(input: &str, values: &[(String, Value)]) -> Value {
    let lookup = |name: &str| {
        values
            .iter()
            .find(|(k, _)| k.strip_prefix("$(").and_then(|k| k.strip_suffix(')')) == Some(name))
            .map(|(_, v)| v)
    };
    let mut out = String::new();
    let mut rest = input;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        match after.chars().next() {
            None => {
                out.push('$');
                rest = after;
            }
            Some('$') => {
                out.push('$');
                rest = &after[1..];
            }
            Some('(') => match after.find(')') {
                Some(close) => {
                    let name = &after[1..close];
                    match lookup(name) {
                        Some(value) if input.len() == name.len() + 3 => return value.clone(),
                        Some(value) => out.push_str(&scalar_string(value)),
                        None => out.push_str(&rest[at..at + close + 2]),
                    }
                    rest = &after[close + 1..];
                }
                None => {
                    out.push_str("$(");
                    rest = &after[1..];
                }
            },
            Some(c) => {
                out.push('$');
                out.push(c);
                rest = &after[c.len_utf8()..];
            }
        }
    }
    out.push_str(rest);
    Value::String(out)
}
