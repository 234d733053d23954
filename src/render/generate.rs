//! ConfigMap and Secret generators, merging generated objects into what is already there, and
//! the content hash kustomize appends to generated names.

use base64::Engine;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::error::Error;
use super::kustomization::{GeneratorArgs, GeneratorOptions};
use super::resource::{Behavior, Resource};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    ConfigMap,
    Secret,
}

pub enum GenError {
    Read(Error),
    Invalid(String),
}

fn base_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// `KEY=value` lines of an env file, as kustomize v5 reads them: blank lines and `#` comments are
/// skipped, the key is whatever precedes the first `=` (kustomize does not check it), and a line
/// without `=` is a key with an empty value.
fn parse_env(text: &str) -> Vec<(String, String)> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    text.lines()
        .map(str::trim_start)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| match l.split_once('=') {
            Some((k, v)) => (k.to_owned(), v.to_owned()),
            None => (l.to_owned(), String::new()),
        })
        .collect()
}

/// Base64 as kustomize writes generated data: lines of 70 characters, each ending in a newline
/// once there is more than one line. The hash is taken over this text.
fn encode_base64(bytes: &[u8]) -> String {
    const LINE: usize = 70;
    let encoded = base64::engine::general_purpose::STANDARD.encode(bytes);
    if encoded.len() < LINE {
        return encoded;
    }
    let mut out = String::with_capacity(encoded.len() + encoded.len() / LINE + 1);
    for chunk in encoded.as_bytes().chunks(LINE) {
        out.push_str(std::str::from_utf8(chunk).expect("base64 is ASCII"));
        out.push('\n');
    }
    out
}

fn unquote(v: &str) -> &str {
    if v.len() >= 2
        && ((v.starts_with('"') && v.ends_with('"')) || (v.starts_with('\'') && v.ends_with('\'')))
    {
        &v[1..v.len() - 1]
    } else {
        v
    }
}

/// One generated object, from its arguments; `read` loads a source file.
pub fn generate(
    kind: Kind,
    args: &GeneratorArgs,
    options: &GeneratorOptions,
    read: &mut dyn FnMut(&str) -> Result<Vec<u8>, Error>,
) -> Result<Resource, GenError> {
    let inv = GenError::Invalid;
    if args.name.is_empty() {
        return Err(inv("a generator needs a name".into()));
    }
    // Entries as (key, bytes), in kustomize's order: env files, literals, files.
    let mut entries: Vec<(String, Vec<u8>)> = Vec::new();
    let mut envs = args.envs.clone();
    if !args.env.is_empty() {
        envs.push(args.env.clone());
    }
    for env in &envs {
        let bytes = read(env).map_err(GenError::Read)?;
        let text = std::str::from_utf8(&bytes).map_err(|e| {
            let line = bytes[..e.valid_up_to()]
                .iter()
                .filter(|b| **b == b'\n')
                .count()
                + 1;
            inv(format!("{env}: line {line} is not valid UTF-8"))
        })?;
        for (k, v) in parse_env(text) {
            entries.push((k, v.into_bytes()));
        }
    }
    for lit in &args.literals {
        let Some((k, v)) = lit.split_once('=') else {
            return Err(inv(format!("literal {lit:?} is not of the form key=value")));
        };
        entries.push((k.to_owned(), unquote(v).as_bytes().to_vec()));
    }
    for f in &args.files {
        let (key, path) = match f.split_once('=') {
            Some((k, p)) => {
                if k.is_empty() {
                    return Err(inv(format!("file source {f:?} has an empty key")));
                }
                (k.to_owned(), p.to_owned())
            }
            None => (base_name(f).to_owned(), f.clone()),
        };
        let bytes = read(&path).map_err(GenError::Read)?;
        entries.push((key, bytes));
    }
    let mut data = Map::new();
    let mut binary = Map::new();
    for (k, bytes) in entries {
        if data.contains_key(&k) || binary.contains_key(&k) {
            return Err(inv(format!(
                "cannot add key {k}, another key by that name already exists"
            )));
        }
        match kind {
            Kind::Secret => {
                data.insert(k, Value::String(encode_base64(&bytes)));
            }
            Kind::ConfigMap => match String::from_utf8(bytes) {
                Ok(s) => {
                    data.insert(k, Value::String(s));
                }
                Err(e) => {
                    binary.insert(k, Value::String(encode_base64(e.as_bytes())));
                }
            },
        }
    }
    let mut meta = Map::new();
    meta.insert("name".into(), Value::String(args.name.clone()));
    if !args.namespace.is_empty() {
        meta.insert("namespace".into(), Value::String(args.namespace.clone()));
    }
    let strings = |m: &std::collections::BTreeMap<String, String>| {
        Value::Object(
            m.iter()
                .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                .collect(),
        )
    };
    if !options.labels.is_empty() {
        meta.insert("labels".into(), strings(&options.labels));
    }
    if !options.annotations.is_empty() {
        meta.insert("annotations".into(), strings(&options.annotations));
    }
    let mut obj = Map::new();
    obj.insert("apiVersion".into(), Value::String("v1".into()));
    obj.insert(
        "kind".into(),
        Value::String(
            match kind {
                Kind::ConfigMap => "ConfigMap",
                Kind::Secret => "Secret",
            }
            .into(),
        ),
    );
    obj.insert("metadata".into(), Value::Object(meta));
    if !data.is_empty() {
        obj.insert("data".into(), Value::Object(data));
    }
    if !binary.is_empty() {
        obj.insert("binaryData".into(), Value::Object(binary));
    }
    if kind == Kind::Secret {
        let t = if args.kind.is_empty() {
            "Opaque"
        } else {
            &args.kind
        };
        obj.insert("type".into(), Value::String(t.to_owned()));
    }
    if options.immutable {
        obj.insert("immutable".into(), Value::Bool(true));
    }
    let mut r = Resource::new(obj);
    r.behavior = Some(match args.behavior.as_str() {
        "" | "create" => Behavior::Create,
        "merge" => Behavior::Merge,
        "replace" => Behavior::Replace,
        other => return Err(inv(format!("unknown behavior {other:?}"))),
    });
    r.needs_hash = !options.disable_name_suffix_hash;
    Ok(r)
}

fn merge_string_maps(old: Option<&Value>, new: Option<&Value>) -> Option<Value> {
    let mut out = old.and_then(Value::as_object).cloned().unwrap_or_default();
    if let Some(Value::Object(n)) = new {
        for (k, v) in n {
            out.insert(k.clone(), v.clone());
        }
    }
    (!out.is_empty()).then_some(Value::Object(out))
}

/// Why a generated object cannot join the objects already there.
#[derive(Debug, thiserror::Error)]
pub enum AbsorbError {
    #[error("id {0} does not exist; cannot merge or replace")]
    Missing(String),
    #[error("id {0} exists; behavior must be merge or replace")]
    Exists(String),
    #[error("found multiple objects {0} that generator's id matches")]
    Many(String),
}

/// Adds a generated object, merging it into or replacing an existing one of the same id as its
/// behavior says.
pub fn absorb(list: &mut Vec<Resource>, mut new: Resource) -> Result<(), AbsorbError> {
    let id = new.cur_id();
    let key = id.key();
    let matches: Vec<usize> = list
        .iter()
        .enumerate()
        .filter(|(_, r)| r.cur_id().key() == key || r.prev_ids().iter().any(|p| p.key() == key))
        .map(|(i, _)| i)
        .collect();
    let behavior = new.behavior.unwrap_or_default();
    match matches.as_slice() {
        [] => {
            if behavior != Behavior::Create {
                return Err(AbsorbError::Missing(id.to_string()));
            }
            list.push(new);
            Ok(())
        }
        [i] => {
            let old = &list[*i];
            match behavior {
                Behavior::Create => {
                    return Err(AbsorbError::Exists(id.to_string()));
                }
                Behavior::Replace | Behavior::Merge => {}
            }
            let old_meta = old.obj.get("metadata");
            let labels = merge_string_maps(
                old_meta.and_then(|m| m.get("labels")),
                new.obj.get("metadata").and_then(|m| m.get("labels")),
            );
            let annotations = merge_string_maps(
                old_meta.and_then(|m| m.get("annotations")),
                new.obj.get("metadata").and_then(|m| m.get("annotations")),
            );
            if behavior == Behavior::Merge {
                for field in ["data", "binaryData"] {
                    if let Some(v) = merge_string_maps(old.obj.get(field), new.obj.get(field)) {
                        new.obj.insert(field.into(), v);
                    }
                }
            }
            let (name, ns) = (old.name().to_owned(), old.namespace().to_owned());
            let meta = new.metadata_mut();
            for (k, v) in [("labels", labels), ("annotations", annotations)] {
                match v {
                    Some(v) => meta.insert(k.into(), v),
                    None => meta.remove(k),
                };
            }
            new.set_name(&name);
            new.set_namespace(&ns);
            let old = &list[*i];
            new.prev = old.prev.clone();
            new.prefixes = old.prefixes.clone();
            new.suffixes = old.suffixes.clone();
            // A hash is added only when both the existing object and the merged one ask for it.
            new.needs_hash = old.needs_hash && new.needs_hash;
            // A merge keeps where the object came from; a replace takes the new generator's.
            if new.origin.is_none() || (behavior == Behavior::Merge && old.origin.is_some()) {
                new.origin = old.origin.clone();
            }
            new.transformations = old.transformations.clone();
            list[*i] = new;
            Ok(())
        }
        _ => Err(AbsorbError::Many(id.to_string())),
    }
}

/// Go's `encoding/json` string escaping, which the hash input depends on.
fn go_json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' => {
                out.push_str(&format!("\\u{:04x}", c as u32))
            }
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// `json.Marshal` of a decoded value: map keys sorted, Go's escaping.
fn go_json(out: &mut String, v: &Value) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => out.push_str(&n.to_string()),
        Value::String(s) => go_json_string(out, s),
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                go_json(out, x);
            }
            out.push(']');
        }
        Value::Object(m) => {
            let mut keys: Vec<_> = m.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                go_json_string(out, k);
                out.push(':');
                go_json(out, &m[k]);
            }
            out.push('}');
        }
    }
}

/// kustomize's content hash of a ConfigMap or Secret (its name is not part of it).
pub fn hash(r: &Resource) -> String {
    let field = |k: &str| match r.obj.get(k) {
        None => Value::String(String::new()),
        Some(Value::Object(m)) => Value::Object(m.clone()),
        Some(Value::String(s)) => Value::String(s.clone()),
        Some(other) => Value::String(scalar_text(other)),
    };
    let mut m = Map::new();
    m.insert("kind".into(), Value::String(r.kind().to_owned()));
    m.insert("name".into(), Value::String(String::new()));
    m.insert("data".into(), field("data"));
    match r.kind() {
        "ConfigMap" => {
            if let Some(Value::Object(b)) = r.obj.get("binaryData") {
                m.insert("binaryData".into(), Value::Object(b.clone()));
            }
        }
        "Secret" => {
            m.insert("type".into(), field("type"));
            if let Some(Value::Object(b)) = r.obj.get("stringData") {
                m.insert("stringData".into(), Value::Object(b.clone()));
            }
        }
        _ => {
            m = r.obj.clone();
        }
    }
    let mut text = String::new();
    go_json(&mut text, &Value::Object(m));
    let digest = Sha256::digest(text.as_bytes());
    digest
        .iter()
        .flat_map(|b| [b >> 4, b & 0xf])
        .take(10)
        .map(|n| match n {
            0 => 'g',
            1 => 'h',
            3 => 'k',
            0xa => 'm',
            0xe => 't',
            n => char::from_digit(u32::from(n), 16).expect("a nibble is a hex digit"),
        })
        .collect()
}

fn scalar_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Appends the content hash to the name of every generated object that wants one.
pub fn add_hashes(list: &mut [Resource]) {
    for r in list.iter_mut() {
        let annotated = r
            .obj
            .get("metadata")
            .and_then(|m| m.get("annotations"))
            .and_then(|a| a.get("kustomize.config.k8s.io/needs-hash"))
            .and_then(Value::as_str)
            == Some("true");
        if !(r.needs_hash || annotated) {
            continue;
        }
        let h = hash(r);
        r.store_previous_id();
        let name = format!("{}-{h}", r.name());
        r.set_name(&name);
    }
}
