//! Field specs: which field of which kinds a transformer touches, kustomize's built-in table of
//! them (`defaults.yaml`), the `configurations:` files that extend it, and walking an object
//! along a spec's path.

use serde::Deserialize;
use serde_json::{Map, Value};

use super::resource::Gvk;

/// One field of objects a transformer touches: kustomize's `FieldSpec`, as a `configurations:`
/// file writes it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(default)]
pub struct FieldSpec {
    /// The API group the spec is limited to; empty for any.
    pub group: String,
    /// The version the spec is limited to; empty for any.
    pub version: String,
    /// The kind the spec is limited to; empty for every kind.
    pub kind: String,
    /// `/`-separated field path; `[]` walks a list, `\/` is a slash inside a name.
    pub path: String,
    /// Whether the transformer makes the field when it is missing.
    #[serde(rename = "create")]
    pub create: bool,
    /// `path` split into segments once: transformers walk the same spec over every object.
    #[serde(skip)]
    segs: std::sync::OnceLock<Vec<Seg>>,
}

impl FieldSpec {
    /// Whether this spec applies to objects of `gvk`: every non-empty part of it must match.
    pub fn selects(&self, gvk: &Gvk) -> bool {
        (self.group.is_empty() || self.group == gvk.group)
            && (self.version.is_empty() || self.version == gvk.version)
            && (self.kind.is_empty() || self.kind == gvk.kind)
    }

    /// The segments of `path`.
    pub fn segs(&self) -> &[Seg] {
        self.segs.get_or_init(|| parse_path(&self.path))
    }

    /// The group, version and kind the spec selects, for ordering and comparing specs.
    pub fn gvk(&self) -> Gvk {
        Gvk {
            group: self.group.clone(),
            version: self.version.clone(),
            kind: self.kind.clone(),
        }
    }

    /// A spec for objects of `kind` in any group and version; every kind when it is empty.
    pub(crate) fn new(kind: &str, path: &str, create: bool) -> Self {
        Self {
            kind: kind.to_owned(),
            path: path.to_owned(),
            create,
            ..Self::default()
        }
    }
}

/// A kind that is referred to by name, and the fields that refer to it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct NameBackRef {
    /// The referred kind's group; empty for any.
    pub group: String,
    /// The referred kind's version; empty for any.
    pub version: String,
    /// The referred kind.
    pub kind: String,
    /// The fields of other objects that hold its name, fixed when it is renamed.
    #[serde(rename = "fieldSpecs")]
    pub referrers: Vec<FieldSpec>,
}

impl NameBackRef {
    /// The referred group, version and kind.
    pub fn gvk(&self) -> Gvk {
        Gvk {
            group: self.group.clone(),
            version: self.version.clone(),
            kind: self.kind.clone(),
        }
    }
}

/// The field specs of every built-in transformer.
// One list per transformer under kustomize's configuration names; `defaults.yaml` shows each.
#[allow(missing_docs)]
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct TransformerConfig {
    pub name_prefix: Vec<FieldSpec>,
    pub name_suffix: Vec<FieldSpec>,
    /// `namespace`, as kustomize spells it (not `nameSpace`).
    #[serde(rename = "namespace")]
    pub name_space: Vec<FieldSpec>,
    pub common_labels: Vec<FieldSpec>,
    pub template_labels: Vec<FieldSpec>,
    pub labels: Vec<FieldSpec>,
    pub common_annotations: Vec<FieldSpec>,
    pub name_reference: Vec<NameBackRef>,
    pub var_reference: Vec<FieldSpec>,
    pub images: Vec<FieldSpec>,
    pub replicas: Vec<FieldSpec>,
}

/// kustomize's `FsSlice.MergeOne`, for each of `incoming`: a spec is left out when one already
/// there on the same path is of a kind it selects (a spec for all kinds after specific ones adds
/// nothing), and it is an error when those two disagree on `create`. Together with the sorting
/// below, this is how a `configurations:` spec for one kind narrows the default for all kinds.
pub(crate) fn merge_all(into: &mut Vec<FieldSpec>, incoming: &[FieldSpec]) -> Result<(), Conflict> {
    for x in incoming {
        match into
            .iter()
            .find(|s| s.path == x.path && x.selects(&s.gvk()))
        {
            Some(s) if s.create != x.create => {
                return Err(Conflict {
                    list: "",
                    path: x.path.clone(),
                    present: describe(&s.gvk()),
                    present_create: s.create,
                    incoming: describe(&x.gvk()),
                });
            }
            Some(_) => {}
            None => into.push(x.clone()),
        }
    }
    Ok(())
}

/// Two field specs on one path disagree on `create`: kustomize refuses to merge them.
#[derive(Debug, thiserror::Error)]
#[error(
    "{}conflicting fieldspecs: path '{path}' for {present} has create: {present_create}, for {incoming} create: {}",
    prefixed(list),
    !present_create
)]
pub struct Conflict {
    /// The configuration list (`namePrefix`, `nameReference`, ...); empty inside one list.
    pub list: &'static str,
    /// The field path both specs name.
    pub path: String,
    /// The kinds the spec already there selects, in words.
    pub present: String,
    /// Its `create`; the incoming spec's is the opposite.
    pub present_create: bool,
    /// The kinds the incoming spec selects, in words.
    pub incoming: String,
}

fn prefixed(list: &str) -> String {
    if list.is_empty() {
        String::new()
    } else {
        format!("{list}: ")
    }
}

fn describe(gvk: &Gvk) -> String {
    let gv = [gvk.group.as_str(), gvk.version.as_str()]
        .into_iter()
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join("/");
    match (gvk.kind.as_str(), gv.as_str()) {
        ("", "") => "every kind".into(),
        ("", gv) => format!("every kind of {gv}"),
        (kind, "") => format!("kind {kind}"),
        (kind, gv) => format!("kind {kind} of {gv}"),
    }
}

/// kustomize keeps every list of a configuration sorted by Gvk (stable here; Go's sort only
/// reorders specs of the same Gvk, which does not change what they select).
fn sort_specs(specs: &mut [FieldSpec]) {
    specs.sort_by_cached_key(|fs| fs.gvk().order_key());
}

impl TransformerConfig {
    /// kustomize's `TransformerConfig.Merge`: `other`'s specs merge in field by field, back
    /// references of the same kind merge their referrers, and every list ends sorted. The error
    /// names the field whose specs conflict.
    pub fn merge(&mut self, other: &TransformerConfig) -> Result<(), Conflict> {
        let mut other = other.clone();
        other.sort();
        let fields: [(&str, &mut Vec<FieldSpec>, &[FieldSpec]); 10] = [
            ("namePrefix", &mut self.name_prefix, &other.name_prefix),
            ("nameSuffix", &mut self.name_suffix, &other.name_suffix),
            ("namespace", &mut self.name_space, &other.name_space),
            (
                "commonLabels",
                &mut self.common_labels,
                &other.common_labels,
            ),
            (
                "templateLabels",
                &mut self.template_labels,
                &other.template_labels,
            ),
            ("labels", &mut self.labels, &other.labels),
            (
                "commonAnnotations",
                &mut self.common_annotations,
                &other.common_annotations,
            ),
            (
                "varReference",
                &mut self.var_reference,
                &other.var_reference,
            ),
            ("images", &mut self.images, &other.images),
            ("replicas", &mut self.replicas, &other.replicas),
        ];
        for (name, into, from) in fields {
            merge_all(into, from).map_err(|e| Conflict { list: name, ..e })?;
        }
        for br in &other.name_reference {
            match self.name_reference.iter_mut().find(|b| b.gvk() == br.gvk()) {
                Some(existing) => {
                    merge_all(&mut existing.referrers, &br.referrers).map_err(|e| Conflict {
                        list: "nameReference",
                        ..e
                    })?
                }
                None => self.name_reference.push(br.clone()),
            }
        }
        self.sort();
        Ok(())
    }

    fn sort(&mut self) {
        for list in [
            &mut self.name_prefix,
            &mut self.name_suffix,
            &mut self.name_space,
            &mut self.common_labels,
            &mut self.template_labels,
            &mut self.labels,
            &mut self.common_annotations,
            &mut self.var_reference,
            &mut self.images,
            &mut self.replicas,
        ] {
            sort_specs(list);
        }
        self.name_reference
            .sort_by_cached_key(|br| br.gvk().order_key());
    }

    /// kustomize's built-in defaults, from `defaults.yaml`.
    pub fn builtin() -> &'static TransformerConfig {
        static CONFIG: std::sync::LazyLock<TransformerConfig> = std::sync::LazyLock::new(|| {
            let mut tc = TransformerConfig::default();
            for doc in read_configurations(include_str!("defaults.yaml"))
                .expect("the embedded defaults are valid: a unit test reads them")
            {
                tc.append(doc);
            }
            // Sorted, as kustomize sorts every configuration it reads.
            tc.sort();
            tc
        });
        &CONFIG
    }

    /// Every list of `other` after this one's, without merging: the built-in table is one
    /// configuration whose specs must all stay, even those a merge would fold together.
    fn append(&mut self, other: TransformerConfig) {
        self.name_prefix.extend(other.name_prefix);
        self.name_suffix.extend(other.name_suffix);
        self.name_space.extend(other.name_space);
        self.common_labels.extend(other.common_labels);
        self.template_labels.extend(other.template_labels);
        self.labels.extend(other.labels);
        self.common_annotations.extend(other.common_annotations);
        self.name_reference.extend(other.name_reference);
        self.var_reference.extend(other.var_reference);
        self.images.extend(other.images);
        self.replicas.extend(other.replicas);
    }
}

/// Why a `configurations:` file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ConfigurationError {
    /// The file is not YAML.
    #[error("not YAML")]
    Yaml(#[source] crate::yaml::ParseError),
    /// A document is YAML but not a transformer configuration; serde's message names the field.
    #[error("{0}")]
    Shape(serde_json::Error),
}

/// The transformer configurations of a `configurations:` file, one per YAML document.
pub fn read_configurations(text: &str) -> Result<Vec<TransformerConfig>, ConfigurationError> {
    crate::yaml::parse_documents(text)
        .map_err(ConfigurationError::Yaml)?
        .into_iter()
        .map(|doc| serde_json::from_value(doc).map_err(ConfigurationError::Shape))
        .collect()
}

/// One step of a field path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seg {
    /// A field of a map.
    Field(String),
    /// `field[]`: every element of the sequence at `field`.
    Each(String),
    /// `field[key=value]`: the elements of the sequence whose `key` equals `value`.
    Match {
        /// The sequence's field.
        field: String,
        /// The key each element is matched on.
        key: String,
        /// The value it must hold.
        value: String,
    },
}

/// Splits `a/b\/c/d[]` into segments; `\/` is a slash inside a field name.
pub fn parse_path(path: &str) -> Vec<Seg> {
    let mut parts = Vec::new();
    let mut cur = String::new();
    let mut chars = path.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&'/') => {
                cur.push('/');
                chars.next();
            }
            '/' => parts.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    parts.push(cur);
    parts
        .into_iter()
        .filter(|p| !p.is_empty())
        .map(|p| {
            if let Some(f) = p.strip_suffix("[]") {
                Seg::Each(f.to_owned())
            } else if let (Some(open), true) = (p.find('['), p.ends_with(']')) {
                let inner = &p[open + 1..p.len() - 1];
                match inner.split_once('=') {
                    Some((k, v)) => Seg::Match {
                        field: p[..open].to_owned(),
                        key: k.to_owned(),
                        value: v.to_owned(),
                    },
                    None => Seg::Field(p),
                }
            } else {
                Seg::Field(p)
            }
        })
        .collect()
}

/// Why a field could not be visited or changed.
#[derive(Debug, thiserror::Error)]
pub enum VisitError {
    /// A field path runs into a scalar before its end; kustomize refuses it.
    #[error("expected a map or a list on the way, found {0}")]
    NotAContainer(&'static str),
    /// A name prefix or suffix spec reaches something other than a string.
    #[error("expected a string")]
    NotAString,
    /// A namespace spec reaches a map or a list.
    #[error("namespace field specs must target scalar nodes")]
    NamespaceNotScalar,
    /// A label or annotation spec reaches something other than a map.
    #[error("a label or annotation field spec must target a map")]
    NotAMap,
    /// A name reference matches several objects that differ.
    #[error("found multiple possible referrals: [{}]", .0.join(" "))]
    AmbiguousReferral(Vec<String>),
    /// One of the above, with the spec and object it happened in, as kustomize words it.
    #[error("field '{path}' of {kind} '{name}': {reason}")]
    InField {
        /// The spec's path.
        path: String,
        /// The object's kind.
        kind: String,
        /// The object's name.
        name: String,
        /// What went wrong there.
        reason: Box<VisitError>,
    },
}

/// What a visit returns.
pub type VisitResult = Result<(), VisitError>;

/// Calls `f` on each node at `path` in `obj`. Sequences met on the way are walked element by
/// element. With `create`, missing maps on the way and a missing final field (as `Null`) are
/// created first.
pub fn visit(
    obj: &mut Map<String, Value>,
    path: &[Seg],
    create: bool,
    f: &mut dyn FnMut(&mut Value) -> VisitResult,
) -> VisitResult {
    let Some((first, rest)) = path.split_first() else {
        return Ok(());
    };
    let name = match first {
        Seg::Field(n) | Seg::Each(n) | Seg::Match { field: n, .. } => n,
    };
    let mut created = false;
    if !obj.contains_key(name.as_str()) {
        if !create || matches!(first, Seg::Match { .. }) {
            return Ok(());
        }
        let fresh = if rest.is_empty() {
            Value::Null
        } else if matches!(first, Seg::Each(_)) {
            return Ok(());
        } else {
            Value::Object(Map::new())
        };
        obj.insert(name.clone(), fresh);
        created = true;
    }
    let node = obj
        .get_mut(name.as_str())
        .expect("inserted above if missing");
    let result = visit_here(first, rest, node, create, f);
    // A map made on the way to a field that never came to be is not kept.
    let unused = match obj.get(name.as_str()) {
        Some(Value::Object(m)) => m.is_empty() && !rest.is_empty(),
        Some(Value::Null) => true,
        _ => false,
    };
    if created && unused {
        obj.remove(name.as_str());
    }
    result
}

fn visit_here(
    first: &Seg,
    rest: &[Seg],
    node: &mut Value,
    create: bool,
    f: &mut dyn FnMut(&mut Value) -> VisitResult,
) -> VisitResult {
    match first {
        Seg::Field(_) if rest.is_empty() => f(node),
        Seg::Match {
            key: k, value: v, ..
        } => {
            if let Value::Array(items) = node {
                for item in items.iter_mut() {
                    let hit = item.get(k).and_then(Value::as_str) == Some(v.as_str());
                    if hit {
                        visit_node(item, rest, create, f)?;
                    }
                }
            }
            Ok(())
        }
        _ => visit_node(node, rest, create, f),
    }
}

fn visit_node(
    node: &mut Value,
    rest: &[Seg],
    create: bool,
    f: &mut dyn FnMut(&mut Value) -> VisitResult,
) -> VisitResult {
    if rest.is_empty() {
        return f(node);
    }
    match node {
        Value::Object(m) => visit(m, rest, create, f),
        Value::Array(items) => {
            for item in items.iter_mut() {
                match item {
                    Value::Object(m) => visit(m, rest, create, f)?,
                    Value::Null => {}
                    other => return Err(not_a_container(other)),
                }
            }
            Ok(())
        }
        Value::Null if create => {
            *node = Value::Object(Map::new());
            visit(
                node.as_object_mut().expect("just made an object"),
                rest,
                create,
                f,
            )
        }
        Value::Null => Ok(()),
        // kustomize refuses a field path that runs into a scalar before its end.
        other => Err(not_a_container(other)),
    }
}

fn not_a_container(v: &Value) -> VisitError {
    let what = match v {
        Value::String(_) => "a string",
        Value::Number(_) => "a number",
        Value::Bool(_) => "a boolean",
        _ => "a scalar",
    };
    VisitError::NotAContainer(what)
}

/// Names the field spec and the object in an error met while visiting it, as kustomize does.
pub fn in_context(
    fs: &FieldSpec,
    obj: &Map<String, Value>,
    gvk: &Gvk,
    e: VisitError,
) -> VisitError {
    let name = obj
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .unwrap_or("");
    VisitError::InField {
        path: fs.path.clone(),
        kind: gvk.kind.clone(),
        name: name.to_owned(),
        reason: Box::new(e),
    }
}

/// Applies `f` along every spec in `specs` that selects `gvk`.
pub fn apply_specs(
    obj: &mut Map<String, Value>,
    gvk: &Gvk,
    specs: &[FieldSpec],
    f: &mut dyn FnMut(&mut Value) -> VisitResult,
) -> VisitResult {
    for fs in specs {
        if !fs.selects(gvk) {
            continue;
        }
        visit(obj, fs.segs(), fs.create, f).map_err(|e| in_context(fs, obj, gvk, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The embedded table loads (the `expect` in `builtin` rests on this) and fills every list
    /// kustomize fills, `namespace` included.
    #[test]
    fn the_embedded_defaults_load_into_every_list() {
        let tc = TransformerConfig::builtin();
        for (name, list) in [
            ("namePrefix", &tc.name_prefix),
            ("nameSuffix", &tc.name_suffix),
            ("namespace", &tc.name_space),
            ("commonLabels", &tc.common_labels),
            ("templateLabels", &tc.template_labels),
            ("commonAnnotations", &tc.common_annotations),
            ("varReference", &tc.var_reference),
            ("images", &tc.images),
            ("replicas", &tc.replicas),
        ] {
            assert!(!list.is_empty(), "{name} is empty");
        }
        let config_map = tc
            .name_reference
            .iter()
            .find(|b| b.kind == "ConfigMap")
            .expect("ConfigMaps are referred to by name");
        assert!(config_map.referrers.iter().any(|s| s.kind == "Deployment"
            && s.path == "spec/template/spec/containers/envFrom/configMapRef/name"));
    }
}
