//! Patches: strategic merge (with the list merge keys of built-in kinds), JSON 6902, and the
//! target selectors that pick the resources they apply to.

use std::collections::BTreeMap;

use regex::Regex;
use serde_json::{Map, Value};

use super::kustomization::Selector;
use super::openapi::{ListRule, Schema};
use super::resource::{Gvk, ResId, Resource};

fn anchored(p: &str) -> Result<Option<Regex>, String> {
    if p.is_empty() {
        return Ok(None);
    }
    Regex::new(&format!("^(?:{p})$"))
        .map(Some)
        .map_err(|e| format!("invalid selector pattern {p:?}: {e}"))
}

/// A compiled target selector.
pub struct Compiled {
    group: Option<Regex>,
    version: Option<Regex>,
    kind: Option<Regex>,
    name: Option<Regex>,
    namespace: Option<Regex>,
    labels: Vec<Requirement>,
    annotations: Vec<Requirement>,
}

enum Requirement {
    Eq(String, String),
    NotEq(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

fn parse_selector(s: &str) -> Result<Vec<Requirement>, String> {
    let mut out = Vec::new();
    let mut parts = Vec::new();
    let mut depth = 0;
    let mut cur = String::new();
    for c in s.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(std::mem::take(&mut cur));
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    parts.push(cur);
    for p in parts.iter().map(|p| p.trim()).filter(|p| !p.is_empty()) {
        let set = |rest: &str| -> Vec<String> {
            rest.trim()
                .trim_start_matches('(')
                .trim_end_matches(')')
                .split(',')
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
                .collect()
        };
        if let Some((k, v)) = p.split_once("!=") {
            out.push(Requirement::NotEq(k.trim().into(), v.trim().into()));
        } else if let Some((k, v)) = p.split_once("==") {
            out.push(Requirement::Eq(k.trim().into(), v.trim().into()));
        } else if let Some((k, v)) = p.split_once('=') {
            out.push(Requirement::Eq(k.trim().into(), v.trim().into()));
        } else if let Some((k, v)) = p.split_once(" notin ") {
            out.push(Requirement::NotIn(k.trim().into(), set(v)));
        } else if let Some((k, v)) = p.split_once(" in ") {
            out.push(Requirement::In(k.trim().into(), set(v)));
        } else if let Some(k) = p.strip_prefix('!') {
            out.push(Requirement::NotExists(k.trim().into()));
        } else if p.chars().all(|c| c.is_alphanumeric() || "-_./".contains(c)) {
            out.push(Requirement::Exists(p.into()));
        } else {
            return Err(format!("unable to parse requirement {p:?}"));
        }
    }
    Ok(out)
}

fn matches_requirements(reqs: &[Requirement], m: &Map<String, Value>) -> bool {
    let get = |k: &str| m.get(k).and_then(Value::as_str);
    reqs.iter().all(|r| match r {
        Requirement::Eq(k, v) => get(k) == Some(v),
        Requirement::NotEq(k, v) => get(k) != Some(v),
        Requirement::In(k, vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
        Requirement::NotIn(k, vs) => !get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
        Requirement::Exists(k) => m.contains_key(k),
        Requirement::NotExists(k) => !m.contains_key(k),
    })
}

impl Compiled {
    pub fn new(s: &Selector) -> Result<Self, String> {
        Ok(Self {
            group: anchored(&s.group)?,
            version: anchored(&s.version)?,
            kind: anchored(&s.kind)?,
            name: anchored(&s.name)?,
            namespace: anchored(&s.namespace)?,
            labels: parse_selector(&s.label_selector)?,
            annotations: parse_selector(&s.annotation_selector)?,
        })
    }

    fn has_id_fields(&self) -> bool {
        self.group.is_some()
            || self.version.is_some()
            || self.kind.is_some()
            || self.name.is_some()
            || self.namespace.is_some()
    }

    fn id_matches(&self, id: &ResId) -> bool {
        let is = |re: &Option<Regex>, s: &str| re.as_ref().is_none_or(|re| re.is_match(s));
        is(&self.group, &id.gvk.group)
            && is(&self.version, &id.gvk.version)
            && is(&self.kind, &id.gvk.kind)
            && is(&self.name, &id.name)
            && (is(&self.namespace, &id.namespace) || is(&self.namespace, id.effective_namespace()))
    }

    fn meta_matches(&self, r: &Resource) -> bool {
        matches_requirements(&self.labels, &r.labels())
            && matches_requirements(&self.annotations, &r.annotations())
    }

    /// Replacements select by any identity the resource had: its current one or an earlier.
    pub fn matches_any_id(&self, r: &Resource) -> bool {
        self.meta_matches(r)
            && std::iter::once(r.cur_id())
                .chain(r.prev_ids())
                .any(|id| self.id_matches(&id))
    }

    /// A replacement's reject: by identity when it names one, else by labels and annotations.
    pub fn rejects(&self, r: &Resource) -> bool {
        if self.has_id_fields() {
            std::iter::once(r.cur_id())
                .chain(r.prev_ids())
                .any(|id| self.id_matches(&id))
                && self.meta_matches(r)
        } else {
            (!self.labels.is_empty() || !self.annotations.is_empty()) && self.meta_matches(r)
        }
    }

    pub fn matches(&self, r: &Resource) -> bool {
        let is = |re: &Option<Regex>, s: &str| re.as_ref().is_none_or(|re| re.is_match(s));
        let cur = r.cur_id();
        let org = r.org_id();
        if !(is(&self.namespace, org.effective_namespace())
            || is(&self.namespace, cur.effective_namespace()))
        {
            return false;
        }
        if !(is(&self.name, &org.name) || is(&self.name, &cur.name)) {
            return false;
        }
        let g = &cur.gvk;
        if !(is(&self.group, &g.group) && is(&self.version, &g.version) && is(&self.kind, &g.kind))
        {
            return false;
        }
        matches_requirements(&self.labels, &r.labels())
            && matches_requirements(&self.annotations, &r.annotations())
    }
}

fn is_json_patch(docs: &[Value]) -> bool {
    matches!(docs, [Value::Array(items)] if items.iter().all(|i| i.get("op").is_some()))
}

/// One `patches` entry: a strategic merge patch or a JSON 6902 patch, with or without target.
pub fn apply_patch(
    list: &mut Vec<Resource>,
    text: &str,
    target: Option<&Selector>,
    options: &BTreeMap<String, bool>,
    schema: Option<&Schema>,
) -> Result<(), String> {
    let docs = crate::yaml::documents(text, crate::yaml::Reading::Patches)
        .map_err(|e| format!("patch: {e}"))?;
    // An empty patch file (or one of only comments) changes nothing.
    if docs.is_empty() {
        return Ok(());
    }
    let allow_name = options.get("allowNameChange").copied().unwrap_or(false);
    let allow_kind = options.get("allowKindChange").copied().unwrap_or(false);
    if is_json_patch(&docs) {
        let Some(target) = target else {
            return Err("must specify a target for JSON patch".into());
        };
        // kustomize converts a JSON patch to JSON through go-yaml v2, which reads values its way.
        let docs = crate::yaml::parse_documents(text).map_err(|e| format!("JSON patch: {e}"))?;
        let Some(Value::Array(ops)) = docs.first() else {
            unreachable!("is_json_patch checked the shape")
        };
        return apply_json6902(list, ops, target);
    }
    match target {
        Some(sel) => {
            if docs.len() > 1 {
                return Err("Multiple Strategic-Merge Patches in one `patches` entry is not allowed to set `patches.target` field".into());
            }
            let sel = Compiled::new(sel)?;
            let patch = docs[0]
                .as_object()
                .ok_or("a strategic merge patch must be a map")?;
            let mut kept = Vec::with_capacity(list.len());
            for mut r in std::mem::take(list) {
                if sel.matches(&r) {
                    let mut p = patch.clone();
                    // The patch applies whatever name and group it carries.
                    if let Some(av) = r.obj.get("apiVersion") {
                        p.insert("apiVersion".into(), av.clone());
                    }
                    if !allow_name && let Some(Value::Object(m)) = p.get_mut("metadata") {
                        m.remove("name");
                        m.remove("namespace");
                    }
                    if !apply_smp(&mut r, &p, allow_name, allow_kind, schema)? {
                        continue;
                    }
                }
                kept.push(r);
            }
            *list = kept;
            Ok(())
        }
        None => {
            for d in &docs {
                let p = d
                    .as_object()
                    .ok_or("a strategic merge patch must be a map")?;
                patch_by_own_id(list, p, allow_name, allow_kind, schema)?;
            }
            Ok(())
        }
    }
}

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
fn patch_by_own_id(
    list: &mut Vec<Resource>,
    p: &Map<String, Value>,
    allow_name: bool,
    allow_kind: bool,
    schema: Option<&Schema>,
) -> Result<(), String> {
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
        [] => return Err(format!("failed to find unique target for patch {id}")),
        _ => {
            return Err(format!(
                "multiple matches for Id {id}; failed to find unique target for patch {id}"
            ));
        }
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
) -> Result<(), String> {
    for p in patches {
        let p = p
            .as_object()
            .ok_or("a strategic merge patch must be a map")?;
        if p.is_empty() {
            return Err("patch appears to be empty".into());
        }
        patch_by_own_id(list, p, false, false, schema)?;
    }
    Ok(())
}

/// Merges `patch` into `r`; `false` when the patch deletes the resource.
fn apply_smp(
    r: &mut Resource,
    patch: &Map<String, Value>,
    allow_name: bool,
    allow_kind: bool,
    schema: Option<&Schema>,
) -> Result<bool, String> {
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
        Value::Object(m) => {
            if replace && !m.contains_key(last) {
                return Err(format!(
                    "replace operation does not apply: doc is missing key: {path}"
                ));
            }
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
