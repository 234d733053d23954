//! Building one kustomization: load it, accumulate its resources, bases and components, run its
//! generators and transformers, then (at the top only) add hash suffixes, fix name references,
//! resolve vars and sort.

use std::collections::{BTreeMap, HashSet};

use serde_json::{Map, Value};

use super::error::Error;
use super::fieldspec::{self, ConfigurationError, FieldSpec, TransformerConfig};
use super::fold::Folded;
use super::fs::{self, EntryKind, FileSystem};
use super::kustomization::{self as kz, Kustomization};
use super::limits;
use super::openapi::Schema;
use super::resource::Resource;
use super::{LoadRestrictor, Object, Options, Order, generate, nameref, patch, replace, transform};
use crate::yaml::{self, Reading};

/// The one Kubernetes OpenAPI schema kustomize v5.8 has built in.
const BUILTIN_OPENAPI_VERSION: &str = "v1.21.2";

struct Ctx<'a> {
    fs: &'a limits::Limited<'a>,
    opts: &'a Options<'a>,
    /// Kustomization directories being built, to refuse cycles.
    stack: std::cell::RefCell<Vec<String>>,
    /// The custom OpenAPI schema of the build: like kustomize, one named by any kustomization
    /// (base, overlay or component) serves every strategic merge patch that follows.
    schema: std::cell::RefCell<Option<std::rc::Rc<Schema>>>,
    /// Whether a kustomization already chose the schema (a custom one or a builtin version).
    schema_chosen: std::cell::Cell<bool>,
    /// Objects read from resource files so far, against [`limits::MAX_OBJECTS`].
    objects: std::cell::Cell<usize>,
}

/// Resources with the transformer configuration and vars gathered so far.
pub(super) struct Acc {
    pub res: Vec<Resource>,
    pub config: TransformerConfig,
    pub vars: Vec<kz::Var>,
}

impl Default for Acc {
    /// The configuration starts empty, as kustomize's does: each kustomization merges in the
    /// built-in one, with its `configurations:`, after those of its resources.
    fn default() -> Self {
        Self {
            res: Vec::new(),
            config: TransformerConfig::default(),
            vars: Vec::new(),
        }
    }
}

pub(super) struct Target {
    pub dir: String,
    /// The kustomization file, relative to the source root.
    pub file: String,
    pub file_name: &'static str,
    pub k: Kustomization,
    /// Path of this kustomization relative to the top one, when origins are tracked.
    pub origin: Option<String>,
    pub build_metadata: Vec<String>,
}

pub(super) fn run(fs: &dyn FileSystem, dir: &str, opts: &Options) -> Result<Vec<Object>, Error> {
    let dir = normalize("", dir).ok_or_else(|| Error::OutsideRoot {
        file: dir.to_owned(),
        field: "dir",
        entry: dir.to_owned(),
    })?;
    let limited = super::limits::Limited::new(fs);
    let ctx = Ctx {
        fs: &limited,
        opts,
        objects: Default::default(),
        stack: Default::default(),
        schema: Default::default(),
        schema_chosen: Default::default(),
    };
    let mut top = load_target(&ctx, &dir)?;
    let origins = !top.k.build_metadata.is_empty();
    if origins {
        top.origin = Some(String::new());
    }
    top.build_metadata = top.k.build_metadata.clone();
    let mut acc = accumulate_target(&ctx, &top, Acc::default())?;
    generate::add_hashes(&mut acc.res);
    nameref::fix(&mut acc.res, &acc.config.name_reference).map_err(|m| top.err("resources", m))?;
    replace::resolve_vars(&mut acc.res, &acc.vars, &acc.config.var_reference)
        .map_err(|m| top.err("vars", m))?;
    // Objects marked as local configuration are inputs to the build, not part of its output.
    acc.res.retain(|r| {
        r.obj
            .get("metadata")
            .and_then(|m| m.get("annotations"))
            .and_then(|a| a.get("config.kubernetes.io/local-config"))
            .and_then(Value::as_str)
            != Some("true")
    });
    let order = match &top.k.sort_options {
        Some(so) => match so.order.as_deref() {
            Some("fifo") => Order::Fifo,
            _ => Order::Legacy,
        },
        None => opts.order.unwrap_or(Order::Legacy),
    };
    if order == Order::Legacy {
        let (first, last) = match top
            .k
            .sort_options
            .as_ref()
            .and_then(|s| s.legacy_sort_options.as_ref())
        {
            Some(l) => (l.order_first.clone(), l.order_last.clone()),
            None => (Vec::new(), Vec::new()),
        };
        transform::legacy_sort(&mut acc.res, &first, &last);
    }
    let keep_origin = top
        .k
        .build_metadata
        .iter()
        .any(|b| b == "originAnnotations");
    let managed_by = top.k.build_metadata.iter().any(|b| b == "managedByLabel");
    let keep_transformations = top
        .k
        .build_metadata
        .iter()
        .any(|b| b == "transformerAnnotations");
    acc.res
        .into_iter()
        .map(|mut r| {
            if managed_by {
                let labels = r
                    .metadata_mut()
                    .entry("labels")
                    .or_insert_with(|| Value::Object(Map::new()));
                if let Value::Object(m) = labels {
                    m.insert(
                        "app.kubernetes.io/managed-by".into(),
                        Value::String("kustomize-v5.8.1".into()),
                    );
                }
            }
            if keep_transformations && !r.transformations.is_empty() {
                let list: String = r
                    .transformations
                    .iter()
                    .map(|by| {
                        let mut item = String::new();
                        for (i, line) in by.lines().enumerate() {
                            item.push_str(if i == 0 { "- " } else { "  " });
                            item.push_str(line);
                            item.push('\n');
                        }
                        item
                    })
                    .collect();
                let annotations = r
                    .metadata_mut()
                    .entry("annotations")
                    .or_insert_with(|| Value::Object(Map::new()));
                if let Value::Object(m) = annotations {
                    m.insert(
                        "alpha.config.kubernetes.io/transformations".into(),
                        Value::String(list),
                    );
                }
            }
            if keep_origin && let Some(o) = r.origin.take() {
                let annotations = r
                    .metadata_mut()
                    .entry("annotations")
                    .or_insert_with(|| Value::Object(Map::new()));
                if let Value::Object(m) = annotations {
                    m.insert("config.kubernetes.io/origin".into(), o);
                }
            }
            tidy_annotations(&mut r).map_err(|m| top.err("resources", m))?;
            Ok(r.obj)
        })
        .collect()
}

/// kustomize rewrites every object's annotations on its way out (it adds and removes internal
/// ones): values become text, and an annotations field that is empty or not a map disappears.
/// An object whose annotations are a list, which kustomize refuses.
#[derive(Debug, thiserror::Error)]
#[error("metadata.annotations of {0} is a list; annotations are a map")]
struct AnnotationsList(String);

fn tidy_annotations(r: &mut Resource) -> Result<(), AnnotationsList> {
    let Some(Value::Object(meta)) = r.obj.get_mut("metadata") else {
        return Ok(());
    };
    match meta.get_mut("annotations") {
        None => {}
        Some(Value::Object(m)) if !m.is_empty() => {
            for v in m.values_mut() {
                match v {
                    Value::String(_) => {}
                    Value::Object(_) | Value::Array(_) => *v = Value::String(String::new()),
                    other => *other = Value::String(other.to_string()),
                }
            }
        }
        Some(Value::Array(_)) => {
            return Err(AnnotationsList(r.cur_id().to_string()));
        }
        Some(_) => {
            meta.remove("annotations");
        }
    }
    Ok(())
}

/// Joins `rel` onto `dir` and resolves `.` and `..`; `None` when the result leaves the root.
pub(super) fn normalize(dir: &str, rel: &str) -> Option<String> {
    if rel.starts_with('/') {
        return None;
    }
    // Nearly every entry is a plain name under a normal directory: the join is the answer.
    let plain = |p: &str| !p.split('/').any(|c| matches!(c, "" | "." | ".."));
    if plain(rel) && (dir.is_empty() || plain(dir)) {
        return Some(join(dir, rel));
    }
    let mut parts: Vec<&str> = dir.split('/').filter(|p| !p.is_empty()).collect();
    for p in rel.split('/') {
        match p {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            p => parts.push(p),
        }
    }
    Some(parts.join("/"))
}

fn is_remote(entry: &str) -> bool {
    let e = entry.to_ascii_lowercase();
    e.starts_with("http://")
        || e.starts_with("https://")
        || e.starts_with("git::")
        || e.starts_with("git@")
        || e.starts_with("ssh://")
        || e.starts_with("github.com/")
        || e.starts_with("gitlab.com/")
        || e.starts_with("bitbucket.org/")
        || e.contains("?ref=")
        || e.contains(".git//")
}

/// Joins a path onto a directory for display: `a/b` + `c` is `a/b/c`.
fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_owned()
    } else {
        format!("{dir}/{name}")
    }
}

fn load_target(ctx: &Ctx, dir: &str) -> Result<Target, Error> {
    let mut found = Vec::new();
    for name in kz::FILE_NAMES {
        let path = join(dir, name);
        if let Ok(Some(EntryKind::File)) = ctx.fs.kind(&path) {
            found.push((name, path));
        }
    }
    let (file_name, file) = match found.len() {
        0 => {
            return Err(Error::MissingKustomization {
                dir: dir.to_owned(),
            });
        }
        1 => found.remove(0),
        _ => {
            return Err(Error::MultipleKustomizations {
                dir: dir.to_owned(),
            });
        }
    };
    let bytes = ctx.fs.read_file(&file).map_err(|source| Error::Read {
        file: file.clone(),
        field: "kustomization",
        entry: file.clone(),
        source,
    })?;
    let text = String::from_utf8_lossy(&bytes);
    let invalid = |message: String| Error::InvalidKustomization {
        file: file.clone(),
        message,
    };
    let docs = yaml::parse_documents(&text).map_err(|e| invalid(e.to_string()))?;
    let value = docs.into_iter().next().unwrap_or(Value::Object(Map::new()));
    // The path names the field at fault: `commonLabels.team: invalid type: boolean ...`.
    let mut k: Kustomization = serde_path_to_error::deserialize(Folded(value)).map_err(|e| {
        invalid(match e.path().to_string().as_str() {
            "." => e.inner().to_string(),
            path => format!("{path}: {}", e.inner()),
        })
    })?;
    k.fix_legacy();
    match k.kind.as_str() {
        "" | "Kustomization" => {
            if !k.api_version.is_empty() && k.api_version != "kustomize.config.k8s.io/v1beta1" {
                return Err(invalid(format!(
                    "apiVersion for Kustomization should be kustomize.config.k8s.io/v1beta1, not {}",
                    k.api_version
                )));
            }
        }
        "Component" => {
            if !k.api_version.is_empty() && k.api_version != "kustomize.config.k8s.io/v1alpha1" {
                return Err(invalid(
                    "apiVersion for Component should be kustomize.config.k8s.io/v1alpha1".into(),
                ));
            }
        }
        other => return Err(invalid(format!("unknown kind {other:?}"))),
    }
    if let Some(so) = &k.sort_options {
        match so.order.as_deref() {
            Some("fifo") if so.legacy_sort_options.is_some() => {
                return Err(invalid(
                    "the field 'sortOptions.legacySortOptions' is set but the selected sort order is 'fifo', not 'legacy'".into(),
                ));
            }
            Some("fifo") | Some("legacy") => {}
            _ => {
                return Err(invalid(
                    "the field 'sortOptions.order' must be one of [fifo, legacy]".into(),
                ));
            }
        }
    }
    let refuse = |field: &'static str, what: &'static str| Error::Refused {
        file: file.clone(),
        field,
        entry: String::new(),
        what,
    };
    if let Some(chart) = k.helm_charts.first() {
        let name = chart.get("name").and_then(Value::as_str).unwrap_or("");
        return Err(Error::Refused {
            file: file.clone(),
            field: "helmCharts",
            entry: name.to_owned(),
            what: "Helm charts",
        });
    }
    if k.helm_globals.is_some() {
        return Err(refuse("helmGlobals", "Helm charts"));
    }
    if !k.helm_chart_inflation_generator.is_empty() {
        return Err(refuse("helmChartInflationGenerator", "Helm charts"));
    }
    if !k.validators.is_empty() {
        return Err(refuse("validators", "validator plugins"));
    }
    Ok(Target {
        dir: dir.to_owned(),
        file,
        file_name,
        k,
        origin: None,
        build_metadata: Vec::new(),
    })
}

impl Target {
    /// Resolves `entry` of `field` against this kustomization's directory.
    pub(super) fn resolve(&self, field: &'static str, entry: &str) -> Result<String, Error> {
        normalize(&self.dir, entry).ok_or_else(|| Error::OutsideRoot {
            file: self.file.clone(),
            field,
            entry: entry.to_owned(),
        })
    }

    /// Refuses `path` when the load restrictor keeps this kustomization from reading it.
    fn restricted(
        &self,
        fs: &dyn FileSystem,
        restrictor: LoadRestrictor,
        field: &'static str,
        path: &str,
    ) -> Result<(), Error> {
        if restrictor == LoadRestrictor::None {
            return Ok(());
        }
        let inside = |dir: &str, path: &str| {
            dir.is_empty()
                || path
                    .strip_prefix(dir)
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        };
        let refused = |path: &str, dir: &str| Error::Restricted {
            file: self.file.clone(),
            field,
            path: format!("/{path}"),
            dir: format!("/{dir}"),
        };
        if !inside(&self.dir, path) {
            return Err(refused(path, &self.dir));
        }
        // Symlinks resolved, as kustomize does: a link inside the directory that points out of
        // it would otherwise read another kustomization's (or another environment's) files.
        let real = |p: &str| {
            fs.real_path(p).map_err(|source| Error::Read {
                file: self.file.clone(),
                field,
                entry: p.to_owned(),
                source,
            })
        };
        let (Some(real_path), Some(real_dir)) = (real(path)?, real(&self.dir)?) else {
            // Nothing there: reading it reports that.
            return Ok(());
        };
        if inside(&real_dir, &real_path) {
            Ok(())
        } else {
            Err(Error::RestrictedLink {
                file: self.file.clone(),
                field,
                path: format!("/{path}"),
                real: format!("/{real_path}"),
                dir: format!("/{real_dir}"),
            })
        }
    }

    /// Reads a file this kustomization names, under the load restrictor and through the
    /// decryption hook.
    fn read(&self, ctx: &Ctx, field: &'static str, entry: &str) -> Result<Vec<u8>, Error> {
        self.read_at(ctx, field, entry, &self.resolve(field, entry)?)
    }

    /// [`Target::read`] of an entry already resolved to `path`.
    fn read_at(
        &self,
        ctx: &Ctx,
        field: &'static str,
        entry: &str,
        path: &str,
    ) -> Result<Vec<u8>, Error> {
        self.restricted(ctx.fs, ctx.opts.load_restrictor, field, path)?;
        let bytes = ctx
            .fs
            .read_file(path)
            .map_err(|source| self.read_error(field, entry, source))?;
        Ok(self
            .decrypt(ctx, field, entry, path, &bytes)?
            .unwrap_or(bytes))
    }

    fn read_error(&self, field: &'static str, entry: &str, source: fs::Error) -> Error {
        Error::Read {
            file: self.file.clone(),
            field,
            entry: entry.to_owned(),
            source,
        }
    }

    /// The plaintext of `bytes` read from `path`, or `None` when the decryption hook (if any)
    /// leaves them as they are.
    fn decrypt(
        &self,
        ctx: &Ctx,
        field: &'static str,
        entry: &str,
        path: &str,
        bytes: &[u8],
    ) -> Result<Option<Vec<u8>>, Error> {
        let Some(d) = ctx.opts.decrypt else {
            return Ok(None);
        };
        d.decrypt(path, bytes).map_err(|source| Error::Decrypt {
            file: self.file.clone(),
            field,
            entry: entry.to_owned(),
            source: Box::new(source),
        })
    }

    pub(super) fn err(&self, field: &'static str, message: impl std::fmt::Display) -> Error {
        Error::Field {
            file: self.file.clone(),
            field,
            message: message.to_string(),
        }
    }

    fn origin_of(&self, entry: &str) -> Option<String> {
        self.origin.as_ref().map(|o| clean_join(o, entry))
    }

    /// Records that the builtin transformer `kind`, configured by this kustomization's fields, ran
    /// over every accumulated resource.
    fn note_transformer(&self, acc: &mut Acc, kind: &str) {
        if let Some(o) = &self.origin {
            let by = format!(
                "configuredIn: {}\nconfiguredBy:\n  apiVersion: builtin\n  kind: {kind}\n",
                clean_join(o, self.file_name)
            );
            note_transformation(acc, by);
        }
    }

    fn generator_origin(&self, kind: &str) -> Option<Value> {
        self.origin.as_ref().map(|o| {
            Value::String(format!(
                "configuredIn: {}\nconfiguredBy:\n  apiVersion: builtin\n  kind: {kind}\n",
                clean_join(o, self.file_name)
            ))
        })
    }
}

/// kustomize notes a transformer on every resource after it runs: as the origin of those without
/// one (it made them), else as one more transformation.
fn note_transformation(acc: &mut Acc, by: String) {
    for r in &mut acc.res {
        if r.origin.is_none() {
            r.origin = Some(Value::String(by.clone()));
        } else {
            r.transformations.push(by.clone());
        }
    }
}

/// `filepath.Join` and `Clean` on relative paths: `../a` + `b/../c` is `../a/c`.
fn clean_join(base: &str, rel: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for p in base.split('/').chain(rel.split('/')) {
        match p {
            "" | "." => {}
            ".." if parts.last().is_some_and(|l| *l != "..") => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    parts.join("/")
}

fn parse_resources(
    t: &Target,
    field: &'static str,
    path: &str,
    bytes: &[u8],
) -> Result<Vec<Resource>, Error> {
    let text = String::from_utf8_lossy(bytes);
    let docs = yaml::documents(&text, Reading::Resources).map_err(|source| Error::Parse {
        file: t.file.clone(),
        field,
        path: path.to_owned(),
        source,
    })?;
    // Nearly every document is one object: the default room for four would hold hundreds of
    // unused bytes per file until the resources are added to the render's list.
    let mut out = Vec::with_capacity(docs.len());
    for d in docs {
        collect_objects(t, field, path, d, &mut out)?;
    }
    Ok(out)
}

fn collect_objects(
    t: &Target,
    field: &'static str,
    path: &str,
    doc: Value,
    out: &mut Vec<Resource>,
) -> Result<(), Error> {
    let Value::Object(mut obj) = doc else {
        return Err(t.err(field, format!("{path}: a document is not a map")));
    };
    let kind = obj.get("kind").and_then(Value::as_str).unwrap_or("");
    if kind.ends_with("List") && obj.get("items").is_some_and(Value::is_array) {
        if let Some(Value::Array(items)) = obj.remove("items") {
            for item in items {
                collect_objects(t, field, path, item, out)?;
            }
        }
        return Ok(());
    }
    if kind.is_empty() {
        return Err(t.err(field, format!("{path}: missing kind in object")));
    }
    let kind = kind.to_owned();
    let r = Resource::new(obj);
    if r.name().is_empty() {
        return Err(t.err(
            field,
            format!("{path}: missing metadata.name in a {kind} object"),
        ));
    }
    if let Some(Value::String(ns)) = r.obj.get("metadata").and_then(|m| m.get("namespace"))
        && ns.trim().is_empty()
    {
        return Err(t.err(
            field,
            format!(
                "Invalid Input: namespace is blank for resource {}",
                r.cur_id()
            ),
        ));
    }
    out.push(r);
    Ok(())
}

/// The identity keys ([`super::resource::ResId::key`]) of the resources accumulated so far, to
/// refuse duplicates by. A hash stands in for each key's five strings (no copies, a few bytes
/// per resource); an equal hash is settled by comparing the keys themselves.
struct Seen {
    state: std::hash::RandomState,
    hashes: HashSet<u64>,
}

impl Seen {
    /// The keys of `acc`'s resources, with room for `more`.
    fn of(acc: &Acc, more: usize) -> Self {
        let state = std::hash::RandomState::new();
        let mut hashes = HashSet::with_capacity(acc.res.len() + more);
        hashes.extend(acc.res.iter().map(|r| r.key_hash(&state)));
        Self { state, hashes }
    }
}

/// Adds resources, refusing an id that is already there. `seen` holds the keys of `acc`'s
/// resources and is kept up to date, so that a kustomization listing many files costs one
/// look-up per resource rather than a pass over everything accumulated before it.
fn append_all(
    t: &Target,
    field: &'static str,
    acc: &mut Acc,
    seen: &mut Seen,
    new: Vec<Resource>,
) -> Result<(), Error> {
    let new = keyed(&seen.state, new);
    append_keyed(t, field, acc, seen, new)
}

/// Each resource with the hash of its identity key.
fn keyed(state: &std::hash::RandomState, res: Vec<Resource>) -> Vec<(Resource, u64)> {
    res.into_iter()
        .map(|r| {
            let hash = r.key_hash(state);
            (r, hash)
        })
        .collect()
}

/// [`append_all`] of resources whose key hashes are already known.
fn append_keyed(
    t: &Target,
    field: &'static str,
    acc: &mut Acc,
    seen: &mut Seen,
    new: Vec<(Resource, u64)>,
) -> Result<(), Error> {
    for (r, hash) in new {
        // A hash seen before is a duplicate only if a resource has the very same key.
        if !seen.hashes.insert(hash) {
            let key = r.cur_id().into_key();
            if acc.res.iter().any(|x| x.cur_id().into_key() == key) {
                return Err(t.err(
                    field,
                    format!(
                        "may not add resource with an already registered id: {}",
                        r.cur_id()
                    ),
                ));
            }
        }
        acc.res.push(r);
    }
    Ok(())
}

fn accumulate_target(ctx: &Ctx, t: &Target, mut acc: Acc) -> Result<Acc, Error> {
    {
        let mut stack = ctx.stack.borrow_mut();
        if let Some(start) = stack.iter().position(|d| *d == t.dir) {
            let mut chain = stack[start..].to_vec();
            chain.push(t.dir.clone());
            return Err(Error::Cycle {
                file: t.file.clone(),
                field: "resources",
                chain: chain.join(" -> "),
            });
        }
        stack.push(t.dir.clone());
    }
    let result = accumulate_inner(ctx, t, &mut acc);
    ctx.stack.borrow_mut().pop();
    result.map(|()| acc)
}

fn accumulate_inner(ctx: &Ctx, t: &Target, acc: &mut Acc) -> Result<(), Error> {
    if let Some(openapi) = &t.k.openapi {
        let path = openapi.get("path").and_then(Value::as_str);
        if path.is_some() && openapi.get("version").is_some() {
            return Err(t.err(
                "openapi",
                "builtin version and custom schema provided, cannot use both",
            ));
        }
        // A builtin version must be one kustomize ships, unless a kustomization loaded before
        // this one already chose the schema (kustomize then looks no further).
        let version = openapi.get("version").and_then(Value::as_str).unwrap_or("");
        if !ctx.schema_chosen.get() && !version.is_empty() && version != BUILTIN_OPENAPI_VERSION {
            return Err(t.err(
                "openapi",
                format!("version {version}: the specified OpenAPI version is not built in"),
            ));
        }
        // A custom schema must at least exist and be JSON or YAML, as kustomize loads it.
        if let Some(path) = path {
            let bytes = t.read(ctx, "openapi", path)?;
            let docs =
                yaml::parse_documents(&String::from_utf8_lossy(&bytes)).map_err(|source| {
                    Error::Parse {
                        file: t.file.clone(),
                        field: "openapi",
                        path: path.to_owned(),
                        source,
                    }
                })?;
            let schema = Schema::parse(docs.first().unwrap_or(&Value::Null))
                .map_err(|m| t.err("openapi", format!("{path}: {m}")))?;
            // The kustomization loaded first (an overlay before its bases) takes precedence.
            if !ctx.schema_chosen.get() {
                *ctx.schema.borrow_mut() = Some(std::rc::Rc::new(schema));
            }
        }
        if path.is_some() || !version.is_empty() {
            ctx.schema_chosen.set(true);
        }
    }
    accumulate_resources(ctx, t, acc, &t.k.resources, "resources")?;
    merge_configurations(ctx, t, acc)?;
    run_generators(ctx, t, acc)?;
    for entry in &t.k.components {
        let path = t.resolve("components", entry)?;
        match ctx.fs.kind(&path) {
            Ok(Some(EntryKind::Dir)) => {}
            Ok(Some(EntryKind::File)) => {
                return Err(t.err(
                    "components",
                    format!("must build at directory: '/{path}': file is not directory"),
                ));
            }
            _ if is_remote(entry) => {
                return Err(Error::Refused {
                    file: t.file.clone(),
                    field: "components",
                    entry: entry.clone(),
                    what: "remote components",
                });
            }
            _ => {
                return Err(t.err("components", format!("{entry}: no such directory")));
            }
        }
        let mut sub = load_target(ctx, &path)?;
        if sub.k.kind != "Component" {
            return Err(t.err(
                "components",
                format!(
                    "expected kind 'Component' for path '/{path}' but got '{}'",
                    sub.k.kind
                ),
            ));
        }
        sub.origin = t.origin_of(entry);
        sub.build_metadata = t.build_metadata.clone();
        let taken = std::mem::take(acc);
        *acc = accumulate_target(ctx, &sub, taken)?;
    }
    run_transformers(ctx, t, acc)?;
    for v in &t.k.vars {
        if acc.vars.iter().any(|x| x.name == v.name) {
            return Err(t.err("vars", format!("var '{}' already encountered", v.name)));
        }
        replace::bind_var(&mut acc.res, v).map_err(|m| t.err("vars", m))?;
        acc.vars.push(v.clone());
    }
    Ok(())
}

/// Merges the built-in configuration, this kustomization's `configurations:` files and the field
/// specs of its `crds:` into `acc`, in kustomize's order: the files together into the built-in
/// one, that into what the resources brought, then the CRDs.
fn merge_configurations(ctx: &Ctx, t: &Target, acc: &mut Acc) -> Result<(), Error> {
    let mut from_files = TransformerConfig::default();
    for entry in &t.k.configurations {
        let bytes = t.read(ctx, "configurations", entry)?;
        let text = String::from_utf8_lossy(&bytes);
        let configs = fieldspec::read_configurations(&text).map_err(|e| match e {
            ConfigurationError::Yaml(source) => Error::Parse {
                file: t.file.clone(),
                field: "configurations",
                path: entry.clone(),
                source,
            },
            ConfigurationError::Shape(e) => t.err("configurations", format!("{entry}: {e}")),
        })?;
        for tc in configs {
            from_files
                .merge(&tc)
                .map_err(|m| t.err("configurations", format!("{entry}: {m}")))?;
        }
    }
    let mut local = TransformerConfig::builtin().clone();
    local
        .merge(&from_files)
        .and_then(|()| acc.config.merge(&local))
        .map_err(|m| t.err("configurations", m))?;
    let mut from_crds = TransformerConfig::default();
    for entry in &t.k.crds {
        let bytes = t.read(ctx, "crds", entry)?;
        let tc = transform::config_from_crds(&bytes)
            .map_err(|m| t.err("crds", format!("{entry}: {m}")))?;
        from_crds
            .merge(&tc)
            .map_err(|m| t.err("crds", format!("{entry}: {m}")))?;
    }
    acc.config.merge(&from_crds).map_err(|m| t.err("crds", m))
}

fn accumulate_resources(
    ctx: &Ctx,
    t: &Target,
    acc: &mut Acc,
    entries: &[String],
    field: &'static str,
) -> Result<(), Error> {
    // Most entries are files of one object each.
    let mut seen = Seen::of(acc, entries.len());
    acc.res.reserve(entries.len());
    // Every entry is looked at, read and parsed ahead, on several threads when there are many
    // (a repository that keeps one object per file has thousands), then taken in order: the
    // first failing entry is still the one reported, and files count against the byte cap in
    // the order a sequential render reads them.
    let restrictor = ctx.opts.load_restrictor;
    let decrypting = ctx.opts.decrypt.is_some();
    let ahead = super::in_chunks(entries, |chunk| {
        chunk
            .iter()
            .map(|entry| look_ahead(ctx.fs, restrictor, decrypting, &seen.state, t, field, entry))
            .collect::<Vec<_>>()
    });
    for (entry, ahead) in entries.iter().zip(ahead.into_iter().flatten()) {
        let mut new = match ahead? {
            Ahead::File {
                path,
                len,
                bytes,
                parsed,
            } => {
                ctx.fs
                    .charge(&path, len)
                    .map_err(|source| t.read_error(field, entry, source))?;
                let plain = match bytes {
                    Some(bytes) => t.decrypt(ctx, field, entry, &path, &bytes)?,
                    None => None,
                };
                match plain {
                    Some(plain) => keyed(&seen.state, parse_resources(t, field, entry, &plain)?),
                    None => parsed?,
                }
            }
            Ahead::Later => match resource_entry(ctx, t, field, entry)? {
                ResourceEntry::File(bytes) => {
                    keyed(&seen.state, parse_resources(t, field, entry, &bytes)?)
                }
                ResourceEntry::Dir(path) => {
                    add_base(ctx, t, field, acc, &mut seen, entry, &path)?;
                    continue;
                }
            },
            Ahead::Dir(path) => {
                add_base(ctx, t, field, acc, &mut seen, entry, &path)?;
                continue;
            }
        };
        ctx.objects.set(ctx.objects.get() + new.len());
        if ctx.objects.get() > limits::MAX_OBJECTS {
            return Err(Error::TooManyObjects {
                file: t.file.clone(),
                field,
                entry: entry.clone(),
                max: limits::MAX_OBJECTS,
            });
        }
        if let Some(o) = t.origin_of(entry) {
            for (r, _) in &mut new {
                r.origin = Some(Value::String(format!("path: {o}\n")));
            }
        }
        append_keyed(t, field, acc, &mut seen, new)?;
    }
    Ok(())
}

/// Accumulates the kustomization directory `path`, named by `entry`, into `acc`.
fn add_base(
    ctx: &Ctx,
    t: &Target,
    field: &'static str,
    acc: &mut Acc,
    seen: &mut Seen,
    entry: &str,
    path: &str,
) -> Result<(), Error> {
    let mut sub = load_target(ctx, path).map_err(|e| match e {
        Error::MissingKustomization { .. } => {
            t.err(field, format!("accumulating resources: '{entry}': {e}"))
        }
        other => other,
    })?;
    if sub.k.kind == "Component" {
        return Err(t.err(
            field,
            format!("expected kind != 'Component' for path '/{path}'"),
        ));
    }
    sub.origin = t.origin_of(entry);
    sub.build_metadata = t.build_metadata.clone();
    let sub_acc = accumulate_target(ctx, &sub, Acc::default())?;
    append_all(t, field, acc, seen, sub_acc.res)?;
    acc.config
        .merge(&sub_acc.config)
        .map_err(|m| t.err(field, format!("'{entry}': {m}")))?;
    for v in sub_acc.vars {
        if acc.vars.iter().any(|x| x.name == v.name) {
            return Err(t.err("vars", format!("var '{}' already encountered", v.name)));
        }
        acc.vars.push(v);
    }
    Ok(())
}

/// A `resources:` entry as read ahead of its turn.
enum Ahead {
    /// A file: its length, not counted against the byte cap yet, its bytes when they are
    /// still to be decrypted (else they are freed as soon as parsed), and the resources they
    /// hold with the hashes of their identity keys.
    File {
        path: String,
        len: u64,
        bytes: Option<Vec<u8>>,
        parsed: Result<Vec<(Resource, u64)>, Error>,
    },
    /// A kustomization directory.
    Dir(String),
    /// A file left for its turn: the render had read its fill of bytes.
    Later,
}

/// What a sequential render finds for `entry` up to reading its bytes, and the resources they
/// hold. Safe on any thread: nothing here depends on the entries before it.
fn look_ahead(
    fs: &limits::Limited,
    restrictor: LoadRestrictor,
    decrypting: bool,
    ids: &std::hash::RandomState,
    t: &Target,
    field: &'static str,
    entry: &str,
) -> Result<Ahead, Error> {
    let path = t.resolve(field, entry)?;
    match entry_kind(fs, t, field, entry, &path)? {
        EntryKind::Dir => Ok(Ahead::Dir(path)),
        EntryKind::File => {
            t.restricted(fs, restrictor, field, &path)?;
            let Some(read) = fs.read_ahead(&path) else {
                return Ok(Ahead::Later);
            };
            let bytes = read.map_err(|source| t.read_error(field, entry, source))?;
            let parsed = parse_resources(t, field, entry, &bytes).map(|res| keyed(ids, res));
            Ok(Ahead::File {
                path,
                len: bytes.len() as u64,
                bytes: decrypting.then_some(bytes),
                parsed,
            })
        }
    }
}

/// A `resources:` entry: a file's bytes (read under the load restrictor, decrypted), or the
/// path of a kustomization directory.
enum ResourceEntry {
    File(Vec<u8>),
    Dir(String),
}

fn resource_entry(
    ctx: &Ctx,
    t: &Target,
    field: &'static str,
    entry: &str,
) -> Result<ResourceEntry, Error> {
    let path = t.resolve(field, entry)?;
    match entry_kind(ctx.fs, t, field, entry, &path)? {
        EntryKind::File => Ok(ResourceEntry::File(t.read_at(ctx, field, entry, &path)?)),
        EntryKind::Dir => Ok(ResourceEntry::Dir(path)),
    }
}

/// What the `resources:` entry resolved to `path` is; an error when nothing readable is there.
fn entry_kind(
    fs: &dyn FileSystem,
    t: &Target,
    field: &'static str,
    entry: &str,
    path: &str,
) -> Result<EntryKind, Error> {
    match fs.kind(path) {
        Ok(Some(kind)) => Ok(kind),
        Err(fs::Error::OutsideRoot { .. }) => Err(Error::OutsideRoot {
            file: t.file.clone(),
            field,
            entry: entry.to_owned(),
        }),
        _ if is_remote(entry) => Err(Error::Refused {
            file: t.file.clone(),
            field,
            entry: entry.to_owned(),
            what: "remote resources",
        }),
        _ => Err(t.err(
            field,
            format!("accumulating resources: '{entry}': no such file or directory"),
        )),
    }
}

/// A generator or transformer named in `generators:`/`transformers:`: inline YAML or a file.
fn plugin_configs(
    ctx: &Ctx,
    t: &Target,
    field: &'static str,
    entries: &[String],
) -> Result<Vec<(Resource, String)>, Error> {
    let mut out = Vec::new();
    for entry in entries {
        let inline = entry.contains('\n') || entry.trim_start().starts_with("apiVersion");
        if inline {
            for r in parse_resources(t, field, "(inline)", entry.as_bytes())? {
                out.push((r, t.file_name.to_owned()));
            }
            continue;
        }
        let path = t.resolve(field, entry)?;
        match ctx.fs.kind(&path) {
            Ok(Some(EntryKind::File)) => {
                let bytes = t.read(ctx, field, entry)?;
                for r in parse_resources(t, field, entry, &bytes)? {
                    out.push((r, entry.clone()));
                }
            }
            Ok(Some(EntryKind::Dir)) => {
                let mut sub = load_target(ctx, &path)?;
                sub.origin = t.origin_of(entry);
                let sub_acc = accumulate_target(ctx, &sub, Acc::default())?;
                for r in sub_acc.res {
                    out.push((r, entry.clone()));
                }
            }
            _ => {
                return Err(Error::Refused {
                    file: t.file.clone(),
                    field,
                    entry: entry.clone(),
                    what: "plugins that are not files in the source",
                });
            }
        }
    }
    Ok(out)
}

/// One generator run: a ConfigMap or Secret to build, or objects a builtin generator made.
enum GenJob {
    Build(generate::Kind, kz::GeneratorArgs),
    Made(Resource),
}

fn run_generators(ctx: &Ctx, t: &Target, acc: &mut Acc) -> Result<(), Error> {
    let global = t.k.generator_options.as_ref();
    let mut jobs: Vec<(GenJob, Option<Value>, &'static str)> = Vec::new();
    for a in &t.k.config_map_generator {
        jobs.push((
            GenJob::Build(generate::Kind::ConfigMap, a.clone()),
            t.generator_origin("ConfigMapGenerator"),
            "configMapGenerator",
        ));
    }
    for a in &t.k.secret_generator {
        jobs.push((
            GenJob::Build(generate::Kind::Secret, a.clone()),
            t.generator_origin("SecretGenerator"),
            "secretGenerator",
        ));
    }
    let mut local_options = vec![true; jobs.len()];
    for (cfg, from) in plugin_configs(ctx, t, "generators", &t.k.generators)? {
        let api = cfg.api_version().to_owned();
        let kind = cfg.kind().to_owned();
        let origin = t.origin.as_ref().map(|o| {
            Value::String(format!(
                "configuredIn: {}\nconfiguredBy:\n  apiVersion: {api}\n  kind: {kind}\n  name: {}\n",
                clean_join(o, &from),
                cfg.name()
            ))
        });
        let gk = match (api.as_str(), kind.as_str()) {
            ("builtin", "ConfigMapGenerator") => generate::Kind::ConfigMap,
            ("builtin", "SecretGenerator") => generate::Kind::Secret,
            ("builtin", "IAMPolicyGenerator") => {
                let sa = iam_policy_service_account(&cfg.obj)
                    .map_err(|m| t.err("generators", format!("{from}: {m}")))?;
                jobs.push((GenJob::Made(sa), origin, "generators"));
                local_options.push(false);
                continue;
            }
            _ => {
                return Err(Error::Refused {
                    file: t.file.clone(),
                    field: "generators",
                    entry: format!("{}", cfg.cur_id()),
                    what: "generator plugins",
                });
            }
        };
        let mut obj = cfg.obj.clone();
        obj.remove("apiVersion");
        obj.remove("kind");
        obj.remove("metadata");
        let mut args: kz::GeneratorArgs = serde_json::from_value(Value::Object(obj))
            .map_err(|e| t.err("generators", format!("{from}: {e}")))?;
        // The plugin's own metadata names the object when its arguments do not.
        if args.name.is_empty() {
            args.name = cfg.name().to_owned();
        }
        if args.namespace.is_empty() {
            args.namespace = cfg.namespace().to_owned();
        }
        jobs.push((GenJob::Build(gk, args), origin, "generators"));
        local_options.push(false);
    }
    for ((job, origin, field), use_global) in jobs.into_iter().zip(local_options) {
        let mut r = match job {
            GenJob::Made(r) => r,
            GenJob::Build(kind, args) => {
                let options = kz::GeneratorOptions::merged(
                    args.options.as_ref(),
                    if use_global { global } else { None },
                );
                let mut read = |entry: &str| t.read(ctx, field, entry);
                generate::generate(kind, &args, &options, &mut read).map_err(|e| match e {
                    generate::GenError::Read(err) => err,
                    generate::GenError::Invalid(m) => t.err(field, m),
                })?
            }
        };
        r.origin = origin;
        generate::absorb(&mut acc.res, r).map_err(|m| t.err(field, m))?;
    }
    Ok(())
}

/// The builtin IAMPolicyGenerator: for `cloud: gke`, a ServiceAccount bound to a Google service
/// account through the Workload Identity annotation.
/// An IAMPolicyGenerator for a cloud other than GKE, which kustomize does not support.
#[derive(Debug, thiserror::Error)]
#[error("cloud provider {0} not supported yet")]
struct UnsupportedCloud(String);

fn iam_policy_service_account(cfg: &Map<String, Value>) -> Result<Resource, UnsupportedCloud> {
    let text = |path: &[&str]| {
        let mut v = Some(&Value::Object(cfg.clone()));
        for p in path {
            v = v.and_then(|x| x.get(*p));
        }
        v.and_then(Value::as_str).unwrap_or("").to_owned()
    };
    let cloud = text(&["cloud"]);
    if cloud != "gke" {
        return Err(UnsupportedCloud(cloud));
    }
    let mut metadata = Map::new();
    let mut annotations = Map::new();
    annotations.insert(
        "iam.gke.io/gcp-service-account".into(),
        Value::String(format!(
            "{}@{}.iam.gserviceaccount.com",
            text(&["serviceAccount", "name"]),
            text(&["serviceAccount", "projectId"])
        )),
    );
    metadata.insert("annotations".into(), Value::Object(annotations));
    metadata.insert(
        "name".into(),
        Value::String(text(&["kubernetesService", "name"])),
    );
    let namespace = text(&["kubernetesService", "namespace"]);
    if !namespace.is_empty() {
        metadata.insert("namespace".into(), Value::String(namespace));
    }
    let mut obj = Map::new();
    obj.insert("apiVersion".into(), Value::String("v1".into()));
    obj.insert("kind".into(), Value::String("ServiceAccount".into()));
    obj.insert("metadata".into(), Value::Object(metadata));
    Ok(Resource::new(obj))
}

fn run_transformers(ctx: &Ctx, t: &Target, acc: &mut Acc) -> Result<(), Error> {
    let k = &t.k;
    let tc = acc.config.clone();
    if !k.patches_strategic_merge.is_empty() {
        let mut patches = Vec::new();
        for entry in &k.patches_strategic_merge {
            let looks_inline = entry.contains('\n') || entry.contains(": ");
            let (text, src) = if looks_inline {
                (entry.clone(), "(inline)".to_owned())
            } else {
                let bytes = t.read(ctx, "patchesStrategicMerge", entry)?;
                (String::from_utf8_lossy(&bytes).into_owned(), entry.clone())
            };
            let docs = yaml::documents(&text, Reading::Patches).map_err(|source| Error::Parse {
                file: t.file.clone(),
                field: "patchesStrategicMerge",
                path: src.clone(),
                source,
            })?;
            if docs.is_empty() {
                return Err(t.err(
                    "patchesStrategicMerge",
                    format!("patch appears to be empty; {src}"),
                ));
            }
            patches.extend(docs);
        }
        patch::strategic_merge_all(&mut acc.res, &patches, ctx.schema.borrow().as_deref())
            .map_err(|m| t.err("patchesStrategicMerge", m))?;
        t.note_transformer(acc, "PatchStrategicMergeTransformer");
    }
    for (i, p) in k.patches.iter().enumerate() {
        let text = patch_text(ctx, t, "patches", p)?;
        // Name the patch that failed: its file, or its place in the list when inline.
        let which = || match p.path.as_str() {
            "" => format!("patches[{i}]"),
            path => path.to_owned(),
        };
        patch::apply_patch(
            &mut acc.res,
            &text,
            p.target.as_ref(),
            &p.options,
            ctx.schema.borrow().as_deref(),
        )
        .map_err(|m| t.err("patches", format!("{}: {m}", which())))?;
        t.note_transformer(acc, "PatchTransformer");
    }
    if !k.namespace.is_empty() {
        transform::namespace(
            &mut acc.res,
            &k.namespace,
            &tc.name_space,
            false,
            "defaultOnly",
        )
        .map_err(|m| t.err("namespace", m))?;
        t.note_transformer(acc, "NamespaceTransformer");
    }
    if !k.name_prefix.is_empty() {
        transform::prefix_suffix(&mut acc.res, &k.name_prefix, "", &tc.name_prefix)
            .map_err(|m| t.err("namePrefix", m))?;
        t.note_transformer(acc, "PrefixTransformer");
    }
    if !k.name_suffix.is_empty() {
        transform::prefix_suffix(&mut acc.res, "", &k.name_suffix, &tc.name_suffix)
            .map_err(|m| t.err("nameSuffix", m))?;
        t.note_transformer(acc, "SuffixTransformer");
    }
    for l in &k.labels {
        // The specs merge as kustomize's label transformer merges them; a conflict is an error.
        let mut fss = l.fields.clone();
        let mut add = |from: &[FieldSpec]| fieldspec::merge_all(&mut fss, from);
        let merged = add(&tc.labels).and_then(|()| {
            if l.include_selectors {
                add(&tc.common_labels)
            } else {
                if l.include_templates {
                    add(&tc.template_labels)?;
                }
                add(&[FieldSpec::new("", "metadata/labels", true)])
            }
        });
        merged.map_err(|m| t.err("labels", m))?;
        transform::set_map_entries(&mut acc.res, &l.pairs, &fss).map_err(|m| t.err("labels", m))?;
        t.note_transformer(acc, "LabelTransformer");
    }
    if !k.common_labels.is_empty() {
        transform::set_map_entries(&mut acc.res, &k.common_labels, &tc.common_labels)
            .map_err(|m| t.err("commonLabels", m))?;
        t.note_transformer(acc, "LabelTransformer");
    }
    if !k.common_annotations.is_empty() {
        transform::set_map_entries(&mut acc.res, &k.common_annotations, &tc.common_annotations)
            .map_err(|m| t.err("commonAnnotations", m))?;
        t.note_transformer(acc, "AnnotationsTransformer");
    }
    for p in &k.patches_json6902 {
        let text = patch_text(ctx, t, "patchesJson6902", p)?;
        let Some(target) = &p.target else {
            return Err(t.err("patchesJson6902", "a JSON patch needs a target"));
        };
        patch::apply_json6902_text(&mut acc.res, &text, target)
            .map_err(|m| t.err("patchesJson6902", m))?;
        t.note_transformer(acc, "PatchJson6902Transformer");
    }
    for r in &k.replicas {
        transform::replicas(&mut acc.res, r, &tc.replicas).map_err(|m| t.err("replicas", m))?;
        t.note_transformer(acc, "ReplicaCountTransformer");
    }
    transform::images(&mut acc.res, &k.images, &tc.images).map_err(|m| t.err("images", m))?;
    // kustomize runs one ImageTagTransformer per entry; each is noted.
    for _ in &k.images {
        t.note_transformer(acc, "ImageTagTransformer");
    }
    if !k.replacements.is_empty() {
        let list = replacement_list(ctx, t, "replacements", &k.replacements)?;
        replace::replacements(&mut acc.res, &list).map_err(|m| t.err("replacements", m))?;
        t.note_transformer(acc, "ReplacementTransformer");
    }
    for (cfg, from) in plugin_configs(ctx, t, "transformers", &k.transformers)? {
        run_builtin_transformer(ctx, t, acc, &cfg, &from)?;
        if let Some(o) = &t.origin {
            let mut by = format!(
                "configuredIn: {}\nconfiguredBy:\n  apiVersion: {}\n  kind: {}\n  name: {}\n",
                clean_join(o, &from),
                cfg.api_version(),
                cfg.kind(),
                cfg.name()
            );
            if !cfg.namespace().is_empty() {
                by.push_str(&format!("  namespace: {}\n", cfg.namespace()));
            }
            note_transformation(acc, by);
        }
    }
    Ok(())
}

fn patch_text(ctx: &Ctx, t: &Target, field: &'static str, p: &kz::Patch) -> Result<String, Error> {
    match (p.patch.trim().is_empty(), p.path.is_empty()) {
        (true, true) => Err(t.err(field, "must specify one of patch and path")),
        (false, false) => Err(t.err(field, "patch and path can't be set at the same time")),
        (false, true) => Ok(p.patch.clone()),
        (true, false) => {
            let bytes = t.read(ctx, field, &p.path)?;
            Ok(String::from_utf8_lossy(&bytes).into_owned())
        }
    }
}

fn replacement_list(
    ctx: &Ctx,
    t: &Target,
    field: &'static str,
    list: &[Value],
) -> Result<Vec<Value>, Error> {
    let mut out = Vec::new();
    for item in list {
        if let Some(path) = item.get("path").and_then(Value::as_str) {
            let bytes = t.read(ctx, field, path)?;
            let docs =
                yaml::parse_documents(&String::from_utf8_lossy(&bytes)).map_err(|source| {
                    Error::Parse {
                        file: t.file.clone(),
                        field,
                        path: path.to_owned(),
                        source,
                    }
                })?;
            for d in docs {
                match d {
                    Value::Array(items) => out.extend(items),
                    other => out.push(other),
                }
            }
        } else {
            out.push(item.clone());
        }
    }
    Ok(out)
}

/// A transformer configuration's field specs that do not read as field specs.
#[derive(Debug, thiserror::Error)]
#[error("{key}: {reason}")]
struct BadFieldSpecs {
    key: String,
    reason: serde_json::Error,
}

fn field_specs(cfg: &Map<String, Value>, key: &str) -> Result<Vec<FieldSpec>, BadFieldSpecs> {
    match cfg.get(key) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(v) => serde_json::from_value(v.clone()).map_err(|reason| BadFieldSpecs {
            key: key.to_owned(),
            reason,
        }),
    }
}

fn string_map(cfg: &Map<String, Value>, key: &str) -> BTreeMap<String, String> {
    cfg.get(key)
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| {
                    let s = match v {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    (k.clone(), s)
                })
                .collect()
        })
        .unwrap_or_default()
}

fn run_builtin_transformer(
    ctx: &Ctx,
    t: &Target,
    acc: &mut Acc,
    cfg: &Resource,
    from: &str,
) -> Result<(), Error> {
    const F: &str = "transformers";
    let e = |m: &dyn std::fmt::Display| t.err(F, format!("{from}: {m}"));
    if cfg.api_version() != "builtin" {
        return Err(Error::Refused {
            file: t.file.clone(),
            field: F,
            entry: format!("{}", cfg.cur_id()),
            what: "transformer plugins",
        });
    }
    let c = &cfg.obj;
    let str_of = |k: &str| c.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
    match cfg.kind() {
        "PrefixSuffixTransformer" | "PrefixTransformer" | "SuffixTransformer" => {
            let fss = field_specs(c, "fieldSpecs").map_err(|x| e(&x))?;
            transform::prefix_suffix(&mut acc.res, &str_of("prefix"), &str_of("suffix"), &fss)
                .map_err(|x| e(&x))
        }
        "LabelTransformer" => {
            let fss = field_specs(c, "fieldSpecs").map_err(|x| e(&x))?;
            transform::set_map_entries(&mut acc.res, &string_map(c, "labels"), &fss)
                .map_err(|x| e(&x))
        }
        "AnnotationsTransformer" => {
            let fss = field_specs(c, "fieldSpecs").map_err(|x| e(&x))?;
            transform::set_map_entries(&mut acc.res, &string_map(c, "annotations"), &fss)
                .map_err(|x| e(&x))
        }
        "NamespaceTransformer" => {
            let fss = field_specs(c, "fieldSpecs").map_err(|x| e(&x))?;
            let ns = c
                .get("metadata")
                .and_then(|m| m.get("namespace"))
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned();
            let unset_only = c.get("unsetOnly").and_then(Value::as_bool).unwrap_or(false);
            let mode = c
                .get("setRoleBindingSubjects")
                .and_then(Value::as_str)
                .unwrap_or("defaultOnly")
                .to_owned();
            if ns.is_empty() {
                return Ok(());
            }
            transform::namespace(&mut acc.res, &ns, &fss, unset_only, &mode).map_err(|x| e(&x))
        }
        "PatchTransformer" => {
            let p: kz::Patch =
                serde_json::from_value(Value::Object(strip_meta(c))).map_err(|x| e(&x))?;
            let text = patch_text(ctx, t, F, &p)?;
            let schema = ctx.schema.borrow();
            patch::apply_patch(
                &mut acc.res,
                &text,
                p.target.as_ref(),
                &p.options,
                schema.as_deref(),
            )
            .map_err(|x| e(&x))
        }
        "PatchJson6902Transformer" => {
            let target: kz::Selector = c
                .get("target")
                .map(|v| serde_json::from_value(v.clone()))
                .transpose()
                .map_err(|x| e(&x))?
                .unwrap_or_default();
            let text = if c.contains_key("path") {
                let bytes = t.read(ctx, F, &str_of("path"))?;
                String::from_utf8_lossy(&bytes).into_owned()
            } else {
                str_of("jsonOp")
            };
            patch::apply_json6902_text(&mut acc.res, &text, &target).map_err(|x| e(&x))
        }
        "PatchStrategicMergeTransformer" => {
            let mut patches = Vec::new();
            if let Some(Value::Array(paths)) = c.get("paths") {
                for p in paths.iter().filter_map(Value::as_str) {
                    let bytes = t.read(ctx, F, p)?;
                    patches.extend(
                        yaml::documents(&String::from_utf8_lossy(&bytes), Reading::Patches)
                            .map_err(|x| e(&x))?,
                    );
                }
            }
            if let Some(Value::String(inline)) = c.get("patches") {
                patches.extend(yaml::documents(inline, Reading::Patches).map_err(|x| e(&x))?);
            }
            patch::strategic_merge_all(&mut acc.res, &patches, ctx.schema.borrow().as_deref())
                .map_err(|x| e(&x))
        }
        "ImageTagTransformer" => {
            let fss = field_specs(c, "fieldSpecs").map_err(|x| e(&x))?;
            let img: kz::Image =
                serde_json::from_value(c.get("imageTag").cloned().unwrap_or_default())
                    .map_err(|x| e(&x))?;
            transform::images(&mut acc.res, &[img], &fss).map_err(|x| e(&x))
        }
        "ReplicaCountTransformer" => {
            let fss = field_specs(c, "fieldSpecs").map_err(|x| e(&x))?;
            let r: kz::Replica =
                serde_json::from_value(c.get("replica").cloned().unwrap_or_default())
                    .map_err(|x| e(&x))?;
            transform::replicas(&mut acc.res, &r, &fss).map_err(|x| e(&x))
        }
        "ReplacementTransformer" => {
            let list = match c.get("replacements") {
                Some(Value::Array(items)) => items.clone(),
                _ => Vec::new(),
            };
            let list = replacement_list(ctx, t, F, &list)?;
            replace::replacements(&mut acc.res, &list).map_err(|x| e(&x))
        }
        "HashTransformer" => Ok(()),
        other => Err(e(&format!(
            "unable to load builtin {}",
            super::resource::Gvk::from_api_version("builtin", other)
        ))),
    }
}

fn strip_meta(c: &Map<String, Value>) -> Map<String, Value> {
    let mut m = c.clone();
    m.remove("apiVersion");
    m.remove("kind");
    m.remove("metadata");
    m
}
