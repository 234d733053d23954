//! Strategic merge patches: each applied to the resource it names or to a target's selection,
//! with the list merge keys of built-in kinds (or of a custom OpenAPI schema).

use serde_json::{Map, Value};

use super::Error;
use crate::render::openapi::{ListRule, Schema};
use crate::render::resource::{Gvk, ResId, Resource};

fn patch_id(p: &Map<String, Value>) -> ResId {
    let av = p.get("apiVersion").and_then(Value::as_str).unwrap_or("");
    let kind = p.get("kind").and_then(Value::as_str).unwrap_or("");
    let meta = p.get("metadata");
    let s = |k: &str| {
        meta.and_then(|m| m.get(k))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned()
    };
    ResId {
        gvk: Gvk::from_api_version(av, kind),
        name: s("name"),
        namespace: s("namespace"),
    }
}

/// Applies a patch to the one resource its own apiVersion/kind/name/namespace names.
pub(super) fn patch_by_own_id(
    list: &mut Vec<Resource>,
    p: &Map<String, Value>,
    allow_name: bool,
    allow_kind: bool,
    schema: Option<&Schema>,
) -> Result<(), Error> {
    let id = patch_id(p);
    let key = id.key();
    let selected = |r: &Resource| {
        let cur = r.cur_id();
        let gvk_ok = |g: &Gvk| cur_gvk_matches(g, &id.gvk);
        (cur.key().1 == key.1 && cur.key().2 == key.2 && gvk_ok(&cur.gvk))
            || r.prev_ids()
                .iter()
                .any(|p| p.name == key.1 && p.effective_namespace() == key.2 && gvk_ok(&p.gvk))
    };
    let mut hits: Vec<usize> = list
        .iter()
        .enumerate()
        .filter(|(_, r)| selected(r))
        .map(|(i, _)| i)
        .collect();
    // A patch without a group matches any group, unless one object has exactly its apiVersion.
    if hits.len() > 1 {
        let exact: Vec<usize> = hits
            .iter()
            .copied()
            .filter(|&i| list[i].gvk() == id.gvk)
            .collect();
        if exact.len() == 1 {
            hits = exact;
        }
    }
    let i = match hits.as_slice() {
        [i] => *i,
        [] => return Err(Error::NoUniqueTarget { id: id.to_string() }),
        _ => return Err(Error::ManyTargets { id: id.to_string() }),
    };
    let mut r = list[i].clone();
    if apply_smp(&mut r, p, allow_name, allow_kind, schema)? {
        list[i] = r;
    } else {
        list.remove(i);
    }
    Ok(())
}

/// The patch's group and version select only when set.
fn cur_gvk_matches(g: &Gvk, want: &Gvk) -> bool {
    g.kind == want.kind
        && (want.group.is_empty() || want.group == g.group)
        && (want.version.is_empty() || want.version == g.version)
}

/// Every patch of `patchesStrategicMerge`, each to the resource it names.
pub fn strategic_merge_all(
    list: &mut Vec<Resource>,
    patches: &[Value],
    schema: Option<&Schema>,
) -> Result<(), Error> {
    for p in patches {
        let p = p.as_object().ok_or(Error::NotAMap)?;
        if p.is_empty() {
            return Err(Error::Empty);
        }
        patch_by_own_id(list, p, false, false, schema)?;
    }
    Ok(())
}

/// Merges `patch` into `r`; `false` when the patch deletes the resource.
pub(super) fn apply_smp(
    r: &mut Resource,
    patch: &Map<String, Value>,
    allow_name: bool,
    allow_kind: bool,
    schema: Option<&Schema>,
) -> Result<bool, Error> {
    let (name, ns, kind) = (
        r.name().to_owned(),
        r.namespace().to_owned(),
        r.kind().to_owned(),
    );
    if allow_name || allow_kind {
        r.store_previous_id();
    }
    let gvk = r.gvk();
    // With a custom schema, kubectl kustomize knows the lists of the kinds it defines only.
    let known = match schema {
        Some(s) => match s.definition(&gvk) {
            Some(d) => Known::Custom(s, d),
            None => Known::Nothing,
        },
        None if is_builtin(&gvk) => Known::Builtin,
        None => Known::Nothing,
    };
    let mut obj = Value::Object(std::mem::take(&mut r.obj));
    let deleted = directive(patch) == Some("delete");
    if deleted {
        return Ok(false);
    }
    merge_map(&mut obj, patch, known, &mut Vec::new());
    r.obj = match obj {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    if r.obj.is_empty() {
        return Ok(false);
    }
    if !allow_kind {
        r.obj.insert("kind".into(), Value::String(kind));
    }
    if !allow_name {
        r.set_name(&name);
    }
    r.set_namespace(&ns);
    Ok(true)
}

fn directive(m: &Map<String, Value>) -> Option<&str> {
    m.get("$patch").and_then(Value::as_str)
}

/// API groups whose kinds kustomize knows the schema of.
fn is_builtin(g: &Gvk) -> bool {
    matches!(
        g.group.as_str(),
        "" | "apps"
            | "batch"
            | "extensions"
            | "policy"
            | "autoscaling"
            | "networking.k8s.io"
            | "rbac.authorization.k8s.io"
            | "storage.k8s.io"
            | "scheduling.k8s.io"
            | "admissionregistration.k8s.io"
            | "apiextensions.k8s.io"
            | "apiregistration.k8s.io"
            | "coordination.k8s.io"
            | "discovery.k8s.io"
            | "node.k8s.io"
            | "certificates.k8s.io"
            | "events.k8s.io"
            | "flowcontrol.apiserver.k8s.io"
    ) && !g.kind.is_empty()
}

enum ListKind<'a> {
    Replace,
    Keyed(&'a str),
    /// A list keyed by several fields (`x-kubernetes-list-map-keys`), such as ports by number
    /// and protocol.
    MultiKeyed(&'static [&'static str]),
    Set,
}

/// What the merge knows of an object's lists.
#[derive(Clone, Copy)]
enum Known<'a> {
    /// A kind kustomize has no schema for: lists are replaced.
    Nothing,
    Builtin,
    /// A kind defined by the custom schema, with its definition.
    Custom(&'a Schema, &'a Value),
}

/// The merge strategy of the list at `path` (field names from the object root).
fn list_kind(path: &[String], known: bool) -> ListKind<'static> {
    if !known {
        return ListKind::Replace;
    }
    let last = path.last().map(String::as_str).unwrap_or("");
    let parent = if path.len() >= 2 {
        path[path.len() - 2].as_str()
    } else {
        ""
    };
    let in_container = matches!(
        parent,
        "containers" | "initContainers" | "ephemeralContainers"
    );
    match last {
        "containers" | "initContainers" | "ephemeralContainers" => ListKind::Keyed("name"),
        "volumes" | "imagePullSecrets" | "resourceClaims" | "schedulingGates"
            if parent == "spec" =>
        {
            ListKind::Keyed("name")
        }
        "hostAliases" => ListKind::Keyed("ip"),
        "topologySpreadConstraints" => ListKind::MultiKeyed(&["topologyKey", "whenUnsatisfiable"]),
        "env" if in_container => ListKind::Keyed("name"),
        "volumeMounts" if in_container => ListKind::Keyed("mountPath"),
        "volumeDevices" if in_container => ListKind::Keyed("devicePath"),
        "ports" if in_container => ListKind::MultiKeyed(&["containerPort", "protocol"]),
        "ports" if parent == "spec" && path.len() == 2 => {
            ListKind::MultiKeyed(&["port", "protocol"])
        }
        "finalizers" if parent == "metadata" => ListKind::Set,
        "ownerReferences" if parent == "metadata" => ListKind::Keyed("uid"),
        "conditions" if parent == "status" => ListKind::Keyed("type"),
        "secrets" if path.len() == 1 => ListKind::Keyed("name"),
        _ => ListKind::Replace,
    }
}

/// A patch value with its directives and nulls removed, as it lands where nothing was.
fn clean(v: &Value) -> Option<Value> {
    match v {
        Value::Null => None,
        Value::Object(m) => {
            if directive(m) == Some("delete") {
                return None;
            }
            let mut out = Map::new();
            for (k, x) in m {
                // `$patch` is the only directive kustomize's merge knows; other `$` keys are data.
                if k == "$patch" {
                    continue;
                }
                if let Some(c) = clean(x) {
                    out.insert(k.clone(), c);
                }
            }
            Some(Value::Object(out))
        }
        Value::Array(items) => {
            let list_directive = items.iter().any(|i| {
                i.as_object()
                    .is_some_and(|m| m.len() == 1 && m.contains_key("$patch"))
            });
            Some(Value::Array(
                items
                    .iter()
                    .filter(|i| {
                        !(list_directive
                            && i.as_object()
                                .is_some_and(|m| m.len() == 1 && m.contains_key("$patch")))
                    })
                    .filter_map(clean)
                    .collect(),
            ))
        }
        other => Some(other.clone()),
    }
}

fn merge_map(dest: &mut Value, patch: &Map<String, Value>, known: Known, path: &mut Vec<String>) {
    if directive(patch) == Some("replace") {
        *dest = clean(&Value::Object(patch.clone())).unwrap_or(Value::Null);
        return;
    }
    if !dest.is_object() {
        *dest = Value::Object(Map::new());
    }
    let d = dest.as_object_mut().expect("made an object above");
    for (k, pv) in patch {
        if k == "$patch" {
            continue;
        }
        match pv {
            Value::Null => {
                d.remove(k);
            }
            Value::Object(pm) => {
                if directive(pm) == Some("delete") {
                    d.remove(k);
                    continue;
                }
                match d.get_mut(k) {
                    Some(dv @ Value::Object(_)) => {
                        path.push(k.clone());
                        merge_map(dv, pm, known, path);
                        path.pop();
                    }
                    _ => {
                        if let Some(c) = clean(pv) {
                            d.insert(k.clone(), c);
                        }
                    }
                }
            }
            Value::Array(pl) => {
                path.push(k.clone());
                let merged = match d.remove(k) {
                    Some(Value::Array(dl)) => merge_list(dl, pl, known, path),
                    _ => clean(pv),
                };
                path.pop();
                if let Some(m) = merged {
                    d.insert(k.clone(), m);
                }
            }
            scalar => {
                d.insert(k.clone(), scalar.clone());
            }
        }
    }
}

/// A key field's text in a list element; a missing field is empty.
fn key_text(e: &Value, key: &str) -> String {
    match e.get(key) {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

/// Whether `e` has `values` at `keys`, pairwise (fewer values than keys compare fewer fields);
/// a missing field matches only when `loose`.
fn has_key_values(e: &Value, keys: &[&str], values: &[String], loose: bool) -> bool {
    keys.iter()
        .zip(values)
        .all(|(k, v)| (loose || e.get(*k).is_some_and(|f| !f.is_null())) && key_text(e, k) == *v)
}

/// kyaml's `match`: two key tuples are one element when they share a value and differ only
/// where one of them is empty; the result fills the empty places.
fn merged_tuple(a: &[String], b: &[String]) -> Option<Vec<String>> {
    let mut common = false;
    let mut out = Vec::with_capacity(a.len());
    for (x, y) in a.iter().zip(b) {
        if x == y {
            common = true;
            out.push(x.clone());
        } else if !x.is_empty() && !y.is_empty() {
            return None;
        } else {
            out.push(if x.is_empty() { y.clone() } else { x.clone() });
        }
    }
    common.then_some(out)
}

/// A list keyed by several fields, merged as kustomize's kyaml merges it, quirks included: key
/// tuples that differ only by a missing field are unified first, so a patch element that lacks
/// `protocol` (or adds one the original lacks) matches nothing and is dropped, while the
/// original element stays; elements new to the list come first.
fn merge_multi_keyed(
    mut dest: Vec<Value>,
    patch: &[Value],
    keys: &[&str],
    known: Known,
    path: &mut Vec<String>,
) -> Option<Value> {
    if dest.iter().chain(patch).any(|v| !v.is_object()) {
        return clean(&Value::Array(patch.to_vec()));
    }
    let mut tuples: Vec<Vec<String>> = Vec::new();
    for e in patch.iter().chain(dest.iter()) {
        let t: Vec<String> = keys.iter().map(|k| key_text(e, k)).collect();
        if !tuples.contains(&t) {
            tuples.push(t);
        }
    }
    for i in 0..tuples.len() {
        for j in 0..tuples.len() {
            if let Some(m) = merged_tuple(&tuples[i], &tuples[j]) {
                tuples[i] = m.clone();
                tuples[j] = m;
            }
        }
    }
    // Keys no element gives a value are left out, unless none has any.
    let mut valid: Vec<usize> = (0..keys.len())
        .filter(|&i| tuples.iter().any(|t| !t[i].is_empty()))
        .collect();
    if valid.is_empty() {
        valid = (0..keys.len()).collect();
    }
    let vkeys: Vec<&str> = valid.iter().map(|&i| keys[i]).collect();
    let mut items: Vec<Value> = Vec::new();
    for t in &tuples {
        let values: Vec<String> = valid.iter().map(|&i| t[i].clone()).collect();
        // The elements merged are looked up by the keys this tuple has a value for.
        let (wkeys, wvalues): (Vec<&str>, Vec<String>) = vkeys
            .iter()
            .zip(&values)
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, v)| (*k, v.clone()))
            .unzip();
        let (wkeys, wvalues) = if wkeys.is_empty() {
            (vkeys.clone(), values.clone())
        } else {
            (wkeys, wvalues)
        };
        let at = dest
            .iter()
            .position(|e| has_key_values(e, &wkeys, &wvalues, true));
        let p = patch
            .iter()
            .find(|e| has_key_values(e, &wkeys, &wvalues, true));
        let deleted = p.is_some_and(|p| p.get("$patch").and_then(Value::as_str) == Some("delete"));
        let val = match (at, p) {
            _ if deleted => None,
            (Some(i), Some(p)) => {
                // The original element is merged in place, as kyaml does.
                merge_map(
                    &mut dest[i],
                    p.as_object().expect("checked objects"),
                    known,
                    path,
                );
                Some(dest[i].clone())
            }
            (Some(i), None) => Some(dest[i].clone()),
            (None, Some(p)) => clean(p),
            (None, None) => None,
        };
        let Some(mut val) = val else {
            dest.retain(|e| !has_key_values(e, &vkeys, &values, false));
            continue;
        };
        for (k, v) in vkeys.iter().zip(&values) {
            if !v.is_empty()
                && val.get(*k).is_none()
                && let Value::Object(m) = &mut val
            {
                m.insert((*k).to_owned(), Value::String(v.clone()));
                if let Some(Value::Object(d)) = at.map(|i| &mut dest[i]) {
                    d.insert((*k).to_owned(), Value::String(v.clone()));
                }
            }
        }
        set_element(&mut items, val, &vkeys, &values);
    }
    // The original elements, merged, go after the new ones: each replaces what it matches.
    for e in dest {
        let mut values = Vec::new();
        for k in &vkeys {
            if e.get(*k).is_none_or(Value::is_null) {
                items.push(e.clone());
            } else {
                values.push(key_text(&e, k));
            }
        }
        if vkeys.len() > 1 {
            items.retain(|x| !has_key_values(x, &vkeys, &values, false));
        }
        set_element(&mut items, e, &vkeys, &values);
    }
    Some(Value::Array(items))
}

/// kyaml's `ElementSetter`: `e` replaces every element with `values` at `keys`, or is appended.
fn set_element(items: &mut Vec<Value>, e: Value, keys: &[&str], values: &[String]) {
    let mut found = false;
    for x in items.iter_mut() {
        if has_key_values(x, keys, values, false) {
            *x = e.clone();
            found = true;
        }
    }
    if !found {
        items.push(e);
    }
}

fn merge_list(
    dest: Vec<Value>,
    patch: &[Value],
    known: Known,
    path: &mut Vec<String>,
) -> Option<Value> {
    let list_directive = patch.iter().find_map(|i| {
        i.as_object()
            .filter(|m| m.len() == 1)
            .and_then(|m| m.get("$patch"))
            .and_then(Value::as_str)
    });
    match list_directive {
        Some("replace") => return clean(&Value::Array(patch.to_vec())),
        Some("delete") => return None,
        _ => {}
    }
    let kind = match known {
        Known::Custom(schema, def) => match schema.list_rule(def, path) {
            Some(ListRule::MergeKey(k)) => ListKind::Keyed(k),
            Some(ListRule::MergeSet) => ListKind::Set,
            Some(ListRule::Builtin) => list_kind(path, true),
            Some(ListRule::Replace) | None => ListKind::Replace,
        },
        Known::Builtin => list_kind(path, true),
        Known::Nothing => list_kind(path, false),
    };
    match kind {
        ListKind::Replace => clean(&Value::Array(patch.to_vec())),
        ListKind::Set => {
            let mut out: Vec<Value> = Vec::new();
            for v in patch.iter().chain(dest.iter()) {
                if !out.contains(v) {
                    out.push(v.clone());
                }
            }
            Some(Value::Array(out))
        }
        ListKind::MultiKeyed(keys) => merge_multi_keyed(dest, patch, keys, known, path),
        ListKind::Keyed(key) => {
            let key_of = |v: &Value| v.get(key).filter(|k| !k.is_null()).cloned();
            if dest.iter().chain(patch).any(|v| !v.is_object()) {
                return clean(&Value::Array(patch.to_vec()));
            }
            let mut order: Vec<Value> = Vec::new();
            for v in patch.iter().chain(dest.iter()) {
                if let Some(k) = key_of(v)
                    && !order.contains(&k)
                {
                    order.push(k);
                }
            }
            let mut out = Vec::new();
            for k in &order {
                let d = dest.iter().find(|v| key_of(v).as_ref() == Some(k));
                let p = patch.iter().find(|v| key_of(v).as_ref() == Some(k));
                match (d, p) {
                    (_, Some(p)) if p.get("$patch").and_then(Value::as_str) == Some("delete") => {}
                    // kustomize leaves an element alone when its patch says `$patch: replace`.
                    (Some(d), Some(p))
                        if p.get("$patch").and_then(Value::as_str) == Some("replace") =>
                    {
                        out.push(d.clone());
                    }
                    (Some(d), Some(p)) => {
                        let mut m = d.clone();
                        merge_map(&mut m, p.as_object().expect("checked objects"), known, path);
                        out.push(m);
                    }
                    (Some(d), None) => out.push(d.clone()),
                    (None, Some(p)) => {
                        if let Some(c) = clean(p) {
                            out.push(c);
                        }
                    }
                    (None, None) => {}
                }
            }
            // Elements without the key keep their place after the keyed ones.
            out.extend(dest.iter().filter(|v| key_of(v).is_none()).cloned());
            Some(Value::Array(out))
        }
    }
}
