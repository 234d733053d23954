//! The field-spec driven transformers: namespace, name prefix/suffix, labels and annotations,
//! images, replicas; and the legacy output order.

use std::collections::{BTreeMap, HashMap};

use regex::Regex;

use serde_json::{Map, Value};

use super::fieldspec::{self, FieldSpec, NameBackRef, TransformerConfig, apply_specs};
use super::kustomization::{Image, Replica};
use super::resource::{Gvk, ORDER_FIRST, ORDER_LAST, Resource};

/// Why a built-in transformer could not run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Visit(#[from] fieldspec::VisitError),
    #[error("namespace transformation produces ID conflict: {0}")]
    IdConflict(String),
    #[error("no resource named '{name}' is of a kind replicas apply to ({kinds})")]
    NoReplicaTarget { name: String, kinds: String },
    #[error(transparent)]
    Yaml(#[from] crate::yaml::ParseError),
}

pub fn namespace(
    list: &mut [Resource],
    ns: &str,
    specs: &[FieldSpec],
    unset_only: bool,
    subjects: &str,
) -> Result<(), Error> {
    let set = |v: &mut Value| {
        let empty = match v {
            Value::Null => true,
            Value::String(s) => s.is_empty(),
            _ => false,
        };
        if !unset_only || empty {
            *v = Value::String(ns.to_owned());
        }
    };
    for r in list.iter_mut() {
        r.store_previous_id();
        let gvk = r.gvk();
        if !gvk.is_cluster_scoped() {
            let meta = r.metadata_mut();
            let mut cur = meta.remove("namespace").unwrap_or(Value::Null);
            set(&mut cur);
            meta.insert("namespace".into(), cur);
        }
        let is_binding = gvk.kind == "RoleBinding" || gvk.kind == "ClusterRoleBinding";
        if is_binding
            && subjects != "none"
            && let Some(Value::Array(items)) = r.obj.get_mut("subjects")
        {
            for s in items.iter_mut().filter_map(Value::as_object_mut) {
                let hit = match subjects {
                    "allServiceAccounts" => {
                        s.get("kind").and_then(Value::as_str) == Some("ServiceAccount")
                    }
                    _ => s.get("name").and_then(Value::as_str) == Some("default"),
                };
                if hit {
                    let mut cur = s.remove("namespace").unwrap_or(Value::Null);
                    set(&mut cur);
                    s.insert("namespace".into(), cur);
                }
            }
        }
        let own: Vec<FieldSpec> = specs
            .iter()
            .filter(|fs| fs.path != "metadata/namespace")
            .filter(|fs| fs.path != "metadata/name" || r.api_version() == "v1")
            .filter(|fs| !(is_binding && fs.path == "subjects/namespace"))
            .cloned()
            .collect();
        apply_specs(&mut r.obj, &gvk, &own, &mut |v| {
            if !matches!(v, Value::Null | Value::String(_)) {
                return Err(fieldspec::VisitError::NamespaceNotScalar);
            }
            set(v);
            Ok(())
        })?;
    }
    let mut seen = std::collections::HashSet::new();
    for r in list.iter() {
        if !seen.insert(r.cur_id().key()) {
            return Err(Error::IdConflict(r.cur_id().to_string()));
        }
    }
    Ok(())
}

pub fn prefix_suffix(
    list: &mut [Resource],
    prefix: &str,
    suffix: &str,
    specs: &[FieldSpec],
) -> Result<(), Error> {
    for r in list.iter_mut() {
        let org = r.org_id();
        // kustomize never renames CRDs, Namespaces and APIServices with a prefix or suffix.
        let skipped = org.gvk.kind == "CustomResourceDefinition"
            || org.gvk.kind == "Namespace"
            || (org.gvk.kind == "APIService" && org.gvk.group == "apiregistration.k8s.io");
        if skipped {
            continue;
        }
        for fs in specs {
            if !fs.selects(&org.gvk) {
                continue;
            }
            if fs.path == "metadata/name" {
                if !prefix.is_empty() {
                    r.prefixes.push(prefix.to_owned());
                }
                if !suffix.is_empty() {
                    r.suffixes.push(suffix.to_owned());
                }
                r.store_previous_id();
            }
            fieldspec::visit(&mut r.obj, fs.segs(), fs.create, &mut |v| match v {
                Value::String(s) => {
                    *s = format!("{prefix}{s}{suffix}");
                    Ok(())
                }
                Value::Null => Ok(()),
                _ => Err(fieldspec::VisitError::NotAString),
            })
            .map_err(|e| fieldspec::in_context(fs, &r.obj, &org.gvk, e))?;
        }
    }
    Ok(())
}

/// Sets the entries of `pairs` in the maps at `specs` (labels, annotations, selectors).
pub fn set_map_entries(
    list: &mut [Resource],
    pairs: &BTreeMap<String, String>,
    specs: &[FieldSpec],
) -> Result<(), Error> {
    if pairs.is_empty() {
        return Ok(());
    }
    for r in list.iter_mut() {
        let gvk = r.gvk();
        apply_specs(&mut r.obj, &gvk, specs, &mut |v| {
            if v.is_null() {
                *v = Value::Object(Map::new());
            }
            match v {
                Value::Object(m) => {
                    for (k, val) in pairs {
                        m.insert(k.clone(), Value::String(val.clone()));
                    }
                    Ok(())
                }
                _ => Err(fieldspec::VisitError::NotAMap),
            }
        })?;
    }
    Ok(())
}

/// Splits an image reference into name, tag and digest as kustomize does: past the first `/` (a
/// registry may have a port), the first `@` starts the digest and the first `:` the tag.
fn split_image(s: &str) -> (&str, Option<&str>, Option<&str>) {
    let from = s.find('/').unwrap_or(0);
    let rest = &s[from..];
    let at = rest.find('@').map(|i| i + from);
    let colon = rest.find(':').map(|i| i + from);
    match (colon, at) {
        (None, None) => (s, None, None),
        (c, Some(d)) if c.is_none_or(|c| d < c) => (&s[..d], None, Some(&s[d + 1..])),
        (Some(c), Some(d)) => (&s[..c], Some(&s[c + 1..d]), Some(&s[d + 1..])),
        (Some(c), None) => (&s[..c], Some(&s[c + 1..]), None),
        (None, Some(_)) => unreachable!("handled by the digest-only arm"),
    }
}

/// kustomize v5.8's image match: the entry's name is a regular expression for the image
/// without its tag and sha256 digest (`^NAME(:TAG)?(@sha256:DIGEST)?$`).
enum ImageMatcher {
    /// A name whose only metacharacter is `.` matches a fixed number of characters: compared
    /// directly, as most names are, which spares a long `images` list a regex each.
    Plain(Vec<char>),
    Pattern(Regex),
    /// Not a valid expression (kubectl 1.37 crashes on it): matches nothing.
    Nothing,
}

impl ImageMatcher {
    fn new(name: &str) -> Self {
        if !name.contains([
            '\\', '^', '$', '*', '+', '?', '(', ')', '[', ']', '{', '}', '|',
        ]) {
            return Self::Plain(name.chars().collect());
        }
        match Regex::new(&format!(
            "^{name}(:[a-zA-Z0-9_.{{}}-]*)?(@sha256:[a-zA-Z0-9_.{{}}-]*)?$"
        )) {
            Ok(re) => Self::Pattern(re),
            Err(_) => Self::Nothing,
        }
    }

    fn matches(&self, image: &str) -> bool {
        match self {
            Self::Plain(name) => {
                let mut chars = image.char_indices();
                for want in name {
                    match chars.next() {
                        Some((_, c)) if *want == '.' && c != '\n' || c == *want => {}
                        _ => return false,
                    }
                }
                let rest = chars.next().map_or("", |(i, _)| &image[i..]);
                tag_and_digest(rest)
            }
            Self::Pattern(re) => re.is_match(image),
            Self::Nothing => false,
        }
    }
}

/// `(:[a-zA-Z0-9_.{}-]*)?(@sha256:[a-zA-Z0-9_.{}-]*)?$`
fn tag_and_digest(rest: &str) -> bool {
    let tag_char = |c: char| c.is_ascii_alphanumeric() || "_.{}-".contains(c);
    let skip = |s: &str| -> usize { s.find(|c: char| !tag_char(c)).unwrap_or(s.len()) };
    let mut r = rest;
    if let Some(t) = r.strip_prefix(':') {
        r = &t[skip(t)..];
    }
    if let Some(d) = r.strip_prefix("@sha256:") {
        r = &d[skip(d)..];
    }
    r.is_empty()
}

fn update_image(value: &mut Value, img: &Image, matcher: &ImageMatcher) {
    let Value::String(s) = value else { return };
    if !matcher.matches(s) {
        return;
    }
    let (name, tag, digest) = split_image(s);
    let mut name = name.to_owned();
    let mut tag = tag.map(str::to_owned);
    let mut digest = digest.map(str::to_owned);
    if !img.new_name.is_empty() {
        name = img.new_name.clone();
    }
    // A new tag or digest replaces both; a tag suffix applies only without them.
    if !img.new_tag.is_empty() && !img.digest.is_empty() {
        tag = Some(img.new_tag.clone());
        digest = Some(img.digest.clone());
    } else if !img.new_tag.is_empty() {
        tag = Some(img.new_tag.clone());
        digest = None;
    } else if !img.digest.is_empty() {
        digest = Some(img.digest.clone());
        tag = None;
    } else if !img.tag_suffix.is_empty() {
        tag = Some(format!("{}{}", tag.unwrap_or_default(), img.tag_suffix));
        digest = None;
    }
    let mut out = name;
    if let Some(t) = tag.filter(|t| !t.is_empty()) {
        out.push(':');
        out.push_str(&t);
    }
    if let Some(d) = digest.filter(|d| !d.is_empty()) {
        out.push('@');
        out.push_str(&d);
    }
    *s = out;
}

/// Calls `f` on every `containers`/`initContainers` image anywhere in the object, as kustomize's
/// legacy image filter finds them.
fn each_container_image(v: &mut Value, f: &mut dyn FnMut(&mut Value)) {
    match v {
        Value::Object(m) => {
            for (k, child) in m.iter_mut() {
                if (k == "containers" || k == "initContainers")
                    && let Value::Array(items) = child
                {
                    for c in items.iter_mut() {
                        if let Some(image) = c.get_mut("image") {
                            f(image);
                        }
                    }
                    continue;
                }
                each_container_image(child, f);
            }
        }
        Value::Array(items) => {
            for i in items {
                each_container_image(i, f);
            }
        }
        _ => {}
    }
}

/// The image references the object holds where the image transformer looks.
fn image_refs(obj: &mut Map<String, Value>, gvk: &Gvk, specs: &[FieldSpec]) -> Vec<String> {
    let mut refs = Vec::new();
    let mut note = |v: &mut Value| {
        if let Value::String(s) = v {
            refs.push(s.clone());
        }
    };
    for (k, child) in obj.iter_mut() {
        if k != "apiVersion" && k != "kind" {
            each_container_image(child, &mut note);
        }
    }
    for fs in specs.iter().filter(|fs| fs.selects(gvk)) {
        let _ = fieldspec::visit(obj, fs.segs(), false, &mut |v| {
            note(v);
            Ok(())
        });
    }
    refs
}

/// The `images` entries in order, each as one image transformer, as kustomize runs them. An
/// entry is applied only to objects holding its image name, which keeps a long `images` list
/// from walking every object once per entry.
pub fn images(list: &mut [Resource], imgs: &[Image], specs: &[FieldSpec]) -> Result<(), Error> {
    if imgs.is_empty() {
        return Ok(());
    }
    let matchers: Vec<ImageMatcher> = imgs.iter().map(|i| ImageMatcher::new(&i.name)).collect();
    let matching = |refs: &[String]| -> Vec<bool> {
        matchers
            .iter()
            .map(|m| refs.iter().any(|r| m.matches(r)))
            .collect()
    };
    for r in list.iter_mut() {
        let gvk = r.gvk();
        let mut hit = matching(&image_refs(&mut r.obj, &gvk, specs));
        for (i, img) in imgs.iter().enumerate() {
            if !hit[i] {
                continue;
            }
            let pattern = &matchers[i];
            for (k, child) in r.obj.iter_mut() {
                if k != "apiVersion" && k != "kind" {
                    each_container_image(child, &mut |v| update_image(v, img, pattern));
                }
            }
            apply_specs(&mut r.obj, &gvk, specs, &mut |v| {
                if v.is_string() {
                    update_image(v, img, pattern);
                }
                Ok(())
            })?;
            // A created-but-unset image field is not kustomize's doing: drop the placeholder.
            strip_nulls_at(&mut r.obj, specs, &gvk);
            hit = matching(&image_refs(&mut r.obj, &gvk, specs));
        }
    }
    Ok(())
}

fn strip_nulls_at(obj: &mut Map<String, Value>, specs: &[FieldSpec], gvk: &Gvk) {
    for fs in specs {
        if fs.selects(gvk) {
            strip_null(obj, fs.segs());
        }
    }
}

fn strip_null(obj: &mut Map<String, Value>, segs: &[fieldspec::Seg]) {
    use fieldspec::Seg;
    let Some((first, rest)) = segs.split_first() else {
        return;
    };
    let name = match first {
        Seg::Field(n) | Seg::Each(n) | Seg::Match { field: n, .. } => n,
    };
    if rest.is_empty() {
        if obj.get(name).is_some_and(Value::is_null) {
            obj.remove(name);
        }
        return;
    }
    match obj.get_mut(name) {
        Some(Value::Object(m)) => strip_null(m, rest),
        Some(Value::Array(items)) => {
            for i in items.iter_mut().filter_map(Value::as_object_mut) {
                strip_null(i, rest);
            }
        }
        _ => {}
    }
}

pub fn replicas(list: &mut [Resource], rep: &Replica, specs: &[FieldSpec]) -> Result<(), Error> {
    let mut found = false;
    for r in list.iter_mut() {
        if r.name() != rep.name && r.org_id().name != rep.name {
            continue;
        }
        let gvk = r.gvk();
        found |= specs.iter().any(|fs| fs.selects(&gvk));
        apply_specs(&mut r.obj, &gvk, specs, &mut |v| {
            *v = Value::from(rep.count);
            Ok(())
        })?;
    }
    if !found {
        // kustomize refuses a replica count that applies to nothing.
        let kinds: Vec<&str> = specs.iter().map(|fs| fs.kind.as_str()).collect();
        return Err(Error::NoReplicaTarget {
            name: rep.name.clone(),
            kinds: kinds.join(", "),
        });
    }
    Ok(())
}

/// kustomize's default order: by kind rank, then group/version/kind, then namespace and name.
pub fn legacy_sort(list: &mut Vec<Resource>, first: &[String], last: &[String]) {
    let mut rank: HashMap<&str, i64> = HashMap::new();
    let (first, last): (Vec<&str>, Vec<&str>) = if first.is_empty() && last.is_empty() {
        (ORDER_FIRST.to_vec(), ORDER_LAST.to_vec())
    } else {
        (
            first.iter().map(String::as_str).collect(),
            last.iter().map(String::as_str).collect(),
        )
    };
    let n = first.len() as i64;
    for (i, k) in first.iter().enumerate() {
        rank.insert(k, i as i64 - n);
    }
    for (i, k) in last.iter().enumerate() {
        rank.insert(k, 1 + i as i64);
    }
    // What the order needs of a kind, worked out once per apiVersion and kind: objects of one
    // kind share it, and building it for each object was most of the sort's cost.
    struct KindKey {
        rank: i64,
        sort: String,
        display: String,
        is_ns: bool,
        core_ns: bool,
    }
    let mut kinds: Vec<KindKey> = Vec::new();
    // The keys are sorted with the index of their resource, which is moved once afterwards:
    // a resource is large, and sorting moves each element about log(n) times.
    let mut keyed: Vec<(usize, String, usize)> = {
        let mut kind_of: HashMap<(&str, &str), usize> = HashMap::new();
        list.iter()
            .enumerate()
            .map(|(i, r)| {
                let k = *kind_of
                    .entry((r.api_version(), r.kind()))
                    .or_insert_with(|| {
                        let gvk = r.gvk();
                        let is_ns = gvk.kind == "Namespace";
                        kinds.push(KindKey {
                            rank: rank.get(gvk.kind.as_str()).copied().unwrap_or(0),
                            sort: gvk.sort_string(),
                            display: gvk.to_string(),
                            is_ns,
                            core_ns: is_ns && gvk.group.is_empty(),
                        });
                        kinds.len() - 1
                    });
                let ns = match r.namespace() {
                    "" => "~X",
                    ns => ns,
                };
                let name = match r.name() {
                    "" => "~N",
                    name => name,
                };
                // Joined by hand: `format!` costs several times as much, once per object.
                let display = &kinds[k].display;
                let mut key = String::with_capacity(display.len() + ns.len() + name.len() + 2);
                for part in [display.as_str(), "|", ns, "|", name] {
                    key.push_str(part);
                }
                (k, key, i)
            })
            .collect()
    };
    keyed.sort_by(|a, b| {
        let (ka, kb) = (&kinds[a.0], &kinds[b.0]);
        ka.rank
            .cmp(&kb.rank)
            .then_with(|| {
                if ka.sort == kb.sort {
                    std::cmp::Ordering::Equal
                } else if ka.is_ns && kb.is_ns && (ka.core_ns || kb.core_ns) {
                    kb.sort.cmp(&ka.sort)
                } else {
                    ka.sort.cmp(&kb.sort)
                }
            })
            .then_with(|| a.1.cmp(&b.1))
    });
    let mut slots: Vec<Option<Resource>> = std::mem::take(list).into_iter().map(Some).collect();
    *list = keyed
        .into_iter()
        .map(|k| slots[k.2].take().expect("each index is sorted once"))
        .collect();
}

/// Name references declared by CRD OpenAPI definitions through `x-kubernetes-object-ref-kind`
/// (kustomize's legacy `crds:` field): a map of definition name to `{Schema: ...}`.
pub fn config_from_crds(bytes: &[u8]) -> Result<TransformerConfig, Error> {
    let text = String::from_utf8_lossy(bytes);
    let docs = crate::yaml::parse_documents(&text)?;
    let mut tc = TransformerConfig::default();
    for d in docs {
        let Some(defs) = d.as_object() else { continue };
        let schema_of =
            |name: &str| -> Option<&Value> { defs.get(name).map(|d| d.get("Schema").unwrap_or(d)) };
        for (def_name, def) in defs {
            let kind = def_name.rsplit('.').next().unwrap_or(def_name);
            let root = def.get("Schema").unwrap_or(def);
            // (path so far, schema, depth) — depth bounds recursive definitions.
            let mut walk = vec![(String::new(), root, 0)];
            while let Some((path, node, depth)) = walk.pop() {
                if depth > 16 {
                    continue;
                }
                let Some(props) = node.get("properties").and_then(Value::as_object) else {
                    continue;
                };
                for (field, schema) in props {
                    let p = if path.is_empty() {
                        field.clone()
                    } else {
                        format!("{path}/{field}")
                    };
                    if let Some(rk) = schema
                        .get("x-kubernetes-object-ref-kind")
                        .and_then(Value::as_str)
                    {
                        let key = schema
                            .get("x-kubernetes-object-ref-name-key")
                            .and_then(Value::as_str)
                            .unwrap_or("name");
                        tc.name_reference.push(NameBackRef {
                            kind: rk.to_owned(),
                            referrers: vec![FieldSpec::new(kind, &format!("{p}/{key}"), false)],
                            ..Default::default()
                        });
                        continue;
                    }
                    if let Some(target) = schema
                        .get("$ref")
                        .and_then(Value::as_str)
                        .and_then(schema_of)
                    {
                        walk.push((p.clone(), target, depth + 1));
                    }
                    walk.push((p, schema, depth + 1));
                }
            }
        }
    }
    Ok(tc)
}

#[cfg(test)]
mod image_tests {
    use super::*;

    /// The direct comparison agrees with the regular expression kustomize builds.
    #[test]
    fn plain_image_names_match_as_the_regular_expression_does() {
        let names = [
            "nginx",
            "ngin.",
            "docker.io/nginx",
            "registry:5000/app",
            "nginx:1.0",
        ];
        let images = [
            "nginx",
            "nginx:1",
            "nginx:",
            "nginx@sha256:abc",
            "nginx:1@sha256:a",
            "nginx@sha512:a",
            "nginxx",
            "ngin",
            "dockerXio/nginx",
            "docker.io/nginx:v",
            "registry:5000/app:1.0",
            "nginx:1.0",
            "nginx:1x0",
            "nginx:1.0:2",
            "nginx:a/b",
            "nginx\n",
        ];
        for name in names {
            let ImageMatcher::Plain(_) = ImageMatcher::new(name) else {
                panic!("{name} is a plain name");
            };
            let re = Regex::new(&format!(
                "^{name}(:[a-zA-Z0-9_.{{}}-]*)?(@sha256:[a-zA-Z0-9_.{{}}-]*)?$"
            ))
            .expect("valid");
            for image in images {
                assert_eq!(
                    ImageMatcher::new(name).matches(image),
                    re.is_match(image),
                    "{name} against {image:?}"
                );
            }
        }
    }
}
