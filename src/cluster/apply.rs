//! Staged server-side apply that returns what happened to each object.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use kube::api::{
    Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, Preconditions,
    PropagationPolicy,
};
use serde::Serialize;
use serde_json::{Map, Value};
use sha2::{Digest as _, Sha256};

use super::health::{self, Health};
use super::ignore::{self, Ignored};
use super::inventory::Inventory;
use super::object::at;
use super::redact::Redactor;
use super::{
    Connection, Error, FIELD_MANAGER, HASH_ANNOTATION, INVENTORY_LABEL, KeyRef, Object, ObjectKey,
    ObjectRef, Resolved, Stage, api_error, diff, normalize,
};

/// How a sync applies.
#[derive(Debug, Clone)]
pub struct Options {
    /// The environment the objects belong to; the value of [`INVENTORY_LABEL`].
    pub owner: String,
    /// Take fields other managers hold (server-side apply `force`).
    pub force: bool,
    /// Put back fields someone changed in the cluster. Healing takes the fields back, so it
    /// applies with `force`; a Git change is applied with `force` too, because with self-heal
    /// Git wins.
    pub self_heal: bool,
    /// Delete and create again an object whose change touches an immutable field.
    pub recreate: bool,
    /// Take over objects that exist without an owner label instead of failing on them.
    pub adopt: bool,
    /// How many objects of one stage are applied at once.
    pub concurrency: usize,
    /// Ask the apiserver what would happen (server-side dry-run), change nothing.
    pub dry_run: bool,
    /// How long to wait for a CRD to be Established, and for a recreated object to go.
    pub wait_timeout: Duration,
    /// The namespace of namespaced objects that name none.
    pub default_namespace: String,
    /// Fields of existing objects left to other controllers (`ignoreDifferences`).
    pub ignore: Vec<crate::pipeline::IgnoreRule>,
}

impl Options {
    /// Defaults for an apply as `owner` (the field manager and inventory owner): self-heal on, no force.
    pub fn new(owner: impl Into<String>) -> Self {
        Self {
            owner: owner.into(),
            force: false,
            self_heal: true,
            recreate: false,
            adopt: false,
            concurrency: 16,
            dry_run: false,
            wait_timeout: Duration::from_secs(30),
            default_namespace: "default".into(),
            ignore: Vec::new(),
        }
    }
}

/// What applying did to one object (fluxcd/pkg ssa's change set, plus drift).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "change", rename_all = "camelCase")]
pub enum Change {
    /// Did not exist; now does.
    Created,
    /// Existed without an owner before this apply and was taken over (`sync.adopt`).
    Adopted,
    /// Changed by a new manifest from Git; `fields` are the paths that changed.
    Configured {
        /// The changed field paths.
        fields: Vec<String>,
    },
    /// Already as the manifest says.
    Unchanged,
    /// Someone changed these fields in the cluster; left alone (no self-heal or dry run).
    Drifted {
        /// The drifted field paths.
        fields: Vec<String>,
    },
    /// Someone changed these fields in the cluster; put back.
    Healed {
        /// The healed field paths.
        fields: Vec<String>,
    },
    /// Deleted and created again because an immutable field changed.
    Recreated,
    /// Not applied. For Secrets the error names fields only.
    Failed {
        /// Why, naming fields only.
        error: String,
    },
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Created => f.write_str("created"),
            Self::Adopted => f.write_str("adopted"),
            Self::Configured { fields } => write!(f, "configured ({})", fields.join(", ")),
            Self::Unchanged => f.write_str("unchanged"),
            Self::Drifted { fields } => write!(f, "drifted ({})", fields.join(", ")),
            Self::Healed { fields } => write!(f, "healed ({})", fields.join(", ")),
            Self::Recreated => f.write_str("recreated"),
            Self::Failed { error } => write!(f, "failed: {error}"),
        }
    }
}

/// One object's outcome. The live object it keeps (for health) may be a Secret, so `Debug`
/// leaves it out.
#[derive(Clone)]
pub struct Entry {
    /// The object.
    pub reference: ObjectRef,
    /// What happened to it.
    pub change: Change,
    /// Fields whose value in Git the cluster does not hold, left alone by `ignoreDifferences`.
    pub ignored: Vec<Ignored>,
    live: Option<Value>,
}

impl fmt::Debug for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Entry")
            .field("reference", &self.reference)
            .field("change", &self.change)
            .field("ignored", &self.ignored)
            .finish_non_exhaustive()
    }
}

impl Entry {
    fn new(reference: ObjectRef, change: Change, live: Option<Value>) -> Self {
        Self {
            reference,
            change,
            ignored: Vec::new(),
            live,
        }
    }

    fn failed(reference: ObjectRef, error: &Error) -> Self {
        Self::new(
            reference,
            Change::Failed {
                error: error.to_string(),
            },
            None,
        )
    }

    /// Health of the object as last seen (after the apply, or as listed when unchanged); none
    /// for a failed apply or a dry run of a new object.
    pub fn health(&self) -> Option<Health> {
        self.live.as_ref().map(health::assess)
    }
}

/// The outcome of one apply, in apply order.
#[derive(Debug, Clone, Default)]
pub struct ChangeSet {
    /// One entry per object, in apply order.
    pub entries: Vec<Entry>,
}

impl ChangeSet {
    /// The entries whose apply failed.
    pub fn failed(&self) -> impl Iterator<Item = &Entry> {
        self.entries
            .iter()
            .filter(|e| matches!(e.change, Change::Failed { .. }))
    }

    /// The entries found changed in the cluster, healed or not.
    pub fn drifted(&self) -> impl Iterator<Item = &Entry> {
        self.entries
            .iter()
            .filter(|e| matches!(e.change, Change::Drifted { .. } | Change::Healed { .. }))
    }

    /// Whether anything was written to the cluster.
    pub fn wrote(&self) -> bool {
        self.entries.iter().any(|e| {
            matches!(
                e.change,
                Change::Created
                    | Change::Adopted
                    | Change::Configured { .. }
                    | Change::Healed { .. }
                    | Change::Recreated
            )
        })
    }

    /// Every object of the apply.
    pub fn references(&self) -> impl Iterator<Item = &ObjectRef> {
        self.entries.iter().map(|e| &e.reference)
    }

    /// The objects this apply took over.
    pub fn adopted(&self) -> impl Iterator<Item = ObjectKey> {
        self.entries
            .iter()
            .filter(|e| e.change == Change::Adopted)
            .map(|e| e.reference.key())
    }
}

/// The drift "field" of an object someone deleted from the cluster.
pub const DELETED: &str = "(object deleted)";

/// Applies `objects`: Namespaces and CRDs first (CRDs waited on until Established), then the
/// rest, each stage concurrently up to `options.concurrency`. Per-object failures are entries
/// of the change set, not errors; the sync goes on with the other objects. `previous` (the
/// last sync's inventory) tells an object someone deleted, which is drift, from a new one.
pub async fn apply(
    conn: &Connection,
    objects: Vec<Object>,
    options: &Options,
    redactor: &Redactor,
    previous: &Inventory,
) -> ChangeSet {
    let previous: HashSet<KeyRef> = previous.entries().iter().map(ObjectRef::key_ref).collect();
    let ctx = Context {
        conn,
        options,
        redactor,
        previous: &previous,
        new_namespaces: &HashSet::new(),
    };
    // The kinds CRDs of this apply define, by CRD name: instances of them may wait for
    // discovery to catch up.
    let defined: HashMap<String, (String, String)> = objects
        .iter()
        .filter(|o| o.reference().is_crd())
        .filter_map(|o| {
            let m = o.manifest();
            Some((
                o.reference().name.clone(),
                (
                    m.pointer("/spec/group")?.as_str()?.to_owned(),
                    m.pointer("/spec/names/kind")?.as_str()?.to_owned(),
                ),
            ))
        })
        .collect();
    let (definitions, workloads): (Vec<Object>, Vec<Object>) = objects
        .into_iter()
        .partition(|o| o.reference().stage() == Stage::Definitions);

    let mut set = ChangeSet {
        entries: apply_stage(&ctx, definitions, &[]).await,
    };
    // A dry run cannot apply into a namespace that does not exist yet; objects there would be
    // created along with it.
    let new_namespaces: HashSet<String> = set
        .entries
        .iter()
        .filter(|e| options.dry_run && e.reference.is_namespace() && e.change == Change::Created)
        .map(|e| e.reference.name.clone())
        .collect();
    let ctx = Context {
        new_namespaces: &new_namespaces,
        ..ctx
    };
    if !options.dry_run {
        for entry in &mut set.entries {
            if entry.reference.is_crd() && !matches!(entry.change, Change::Failed { .. }) {
                match wait_established(conn, &entry.reference, options.wait_timeout).await {
                    Ok(live) => entry.live = Some(live),
                    Err(e) => *entry = Entry::failed(entry.reference.clone(), &e),
                }
            }
        }
    }
    // Instances of a CRD that failed fail at once instead of waiting for their kind.
    let defined: Vec<(String, String)> = set
        .entries
        .iter()
        .filter(|e| e.reference.is_crd() && !matches!(e.change, Change::Failed { .. }))
        .filter_map(|e| defined.get(&e.reference.name).cloned())
        .collect();
    set.entries
        .extend(apply_stage(&ctx, workloads, &defined).await);
    set
}

/// What every object of one apply needs.
struct Context<'a> {
    conn: &'a Connection,
    options: &'a Options,
    redactor: &'a Redactor,
    previous: &'a HashSet<KeyRef<'a>>,
    /// Namespaces a dry run would create.
    new_namespaces: &'a HashSet<String>,
}

struct Prepared {
    index: usize,
    /// Which list request finds the live object; set once every object is prepared.
    list_key: ListKey,
    object: Object,
    resolved: Resolved,
    hash: String,
}

async fn apply_stage(
    ctx: &Context<'_>,
    objects: Vec<Object>,
    defined: &[(String, String)],
) -> Vec<Entry> {
    let (conn, options) = (ctx.conn, ctx.options);
    let mut done: Vec<(usize, Entry)> = Vec::new();
    let mut prepared = Vec::with_capacity(objects.len());
    for (index, mut object) in objects.into_iter().enumerate() {
        let reference = object.reference().clone();
        let is_defined = defined
            .iter()
            .any(|(g, k)| *g == reference.group && *k == reference.kind);
        let resolved = match resolve(conn, &reference, is_defined, options).await {
            Ok(Some(resolved)) => resolved,
            // A dry run cannot apply an instance of a CRD that is not there yet.
            Ok(None) => {
                done.push((index, Entry::new(reference, Change::Created, None)));
                continue;
            }
            Err(e) => {
                done.push((index, Entry::failed(reference, &e)));
                continue;
            }
        };
        match (&reference.namespace, resolved.namespaced) {
            (None, true) => object.set_namespace(&options.default_namespace),
            (Some(_), false) => object.clear_namespace(),
            _ => {}
        }
        normalize::normalize(object.manifest_mut());
        let hash = stamp(&mut object, &options.owner);
        prepared.push(Prepared {
            index,
            list_key: (String::new(), String::new(), None),
            object,
            resolved,
            hash,
        });
    }

    assign_list_keys(&mut prepared);
    let (mut live, failures, complete) = list_live(conn, &prepared, options, ctx.previous).await;
    if !failures.is_empty() {
        // Without the live objects nothing can be compared: objects of a kind that could not
        // be listed fail, the others go on.
        let (failed, ok): (Vec<Prepared>, Vec<Prepared>) = prepared
            .into_iter()
            .partition(|p| failures.contains_key(&list_key(p)));
        prepared = ok;
        for p in failed {
            let error = failures[&list_key(&p)].clone();
            let reference = p.object.reference().clone();
            done.push((
                p.index,
                Entry::new(reference, Change::Failed { error }, None),
            ));
        }
    }
    let work = prepared.into_iter().map(|p| {
        let current = live.remove(&p.object.reference().key());
        let absent = current.is_none() && complete.contains(&p.list_key);
        async move {
            let index = p.index;
            (index, apply_one(ctx, p, current, absent).await)
        }
    });
    let mut applied: Vec<(usize, Entry)> = futures::stream::iter(work)
        .buffer_unordered(options.concurrency.max(1))
        .collect()
        .await;
    done.append(&mut applied);
    done.sort_by_key(|(i, _)| *i);
    done.into_iter().map(|(_, e)| e).collect()
}

async fn resolve(
    conn: &Connection,
    reference: &ObjectRef,
    defined_here: bool,
    options: &Options,
) -> Result<Option<Resolved>, Error> {
    let deadline = Instant::now() + options.wait_timeout;
    loop {
        match conn.resolve(reference).await {
            Ok(found) => return Ok(Some(found)),
            Err(Error::UnknownKind { .. }) if defined_here && options.dry_run => return Ok(None),
            // Discovery can lag a moment behind the CRD's Established condition.
            Err(Error::UnknownKind { .. }) if defined_here && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Adds our label, then the hash of the manifest so labelled as an annotation; returns the
/// hash. A hash the manifest already carried (copied from a live object) is replaced.
fn stamp(object: &mut Object, owner: &str) -> String {
    let manifest = object.manifest_mut();
    let meta = manifest
        .as_object_mut()
        .expect("a parsed object is a JSON object because it has apiVersion and kind")
        .entry("metadata")
        .or_insert_with(|| Value::Object(Map::new()));
    let meta = meta
        .as_object_mut()
        .expect("metadata is an object because metadata.name was parsed from it");
    let labels = meta
        .entry("labels")
        .or_insert_with(|| Value::Object(Map::new()));
    if let Some(labels) = labels.as_object_mut() {
        labels.insert(INVENTORY_LABEL.into(), Value::String(owner.into()));
    }
    if let Some(annotations) = meta.get_mut("annotations").and_then(Value::as_object_mut) {
        annotations.remove(HASH_ANNOTATION);
        if annotations.is_empty() {
            meta.remove("annotations");
        }
    }
    let mut hasher = HashWriter(Sha256::new());
    serde_json::to_writer(&mut hasher, &*manifest).expect("a JSON value always serialises");
    let hash = hex::encode(&hasher.0.finalize()[..16]);
    let meta = manifest
        .get_mut("metadata")
        .and_then(Value::as_object_mut)
        .expect("metadata was made an object above");
    let annotations = meta
        .entry("annotations")
        .or_insert_with(|| Value::Object(Map::new()));
    if let Some(annotations) = annotations.as_object_mut() {
        annotations.insert(HASH_ANNOTATION.into(), Value::String(hash.clone()));
    }
    hash
}

/// Feeds what is written to a hash, so that an object is hashed without being copied first.
struct HashWriter(Sha256);

impl std::io::Write for HashWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.update(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

type ListKey = (String, String, Option<String>);

fn list_key(p: &Prepared) -> ListKey {
    p.list_key.clone()
}

/// More namespaces than this for one kind, and the kind is listed across all namespaces in one
/// request instead of one per namespace.
const NAMESPACES_PER_LIST: usize = 4;

/// Lists per kind and namespace, or per kind across namespaces when a kind spans many (which
/// needs cluster-wide list permission, as a multi-namespace environment has anyway).
fn assign_list_keys(prepared: &mut [Prepared]) {
    let mut namespaces: HashMap<(String, String), HashSet<Option<String>>> = HashMap::new();
    for p in prepared.iter() {
        let r = p.object.reference();
        namespaces
            .entry((r.api_version(), r.kind.clone()))
            .or_default()
            .insert(r.namespace.clone());
    }
    for p in prepared.iter_mut() {
        let r = p.object.reference();
        let kind = (r.api_version(), r.kind.clone());
        let wide = namespaces[&kind].len() > NAMESPACES_PER_LIST;
        let namespace = r
            .namespace
            .clone()
            .filter(|_| p.resolved.namespaced && !wide);
        p.list_key = (kind.0, kind.1, namespace);
    }
}

/// What [`list_live`] found: live objects by key, the error message for each kind and
/// namespace that could not be listed, and the kinds and namespaces listed whole (an object
/// missing there does not exist).
type Listed = (
    HashMap<ObjectKey, Value>,
    HashMap<ListKey, String>,
    HashSet<ListKey>,
);

/// Lists our live objects with one request per kind and namespace. A kind in one namespace
/// that holds objects new to the inventory is listed whole, without the owner selector, so
/// that an object someone else made is found without a request per object; kinds listed
/// across namespaces or cluster-wide are not, as they can be large. Objects keep their
/// `managedFields` only where an `ignoreDifferences` rule selects one of the list.
async fn list_live(
    conn: &Connection,
    prepared: &[Prepared],
    options: &Options,
    previous: &HashSet<KeyRef<'_>>,
) -> Listed {
    struct Group<'a> {
        resolved: &'a Resolved,
        whole: bool,
        managed_fields: bool,
    }
    let mut groups: HashMap<ListKey, Group<'_>> = HashMap::new();
    for p in prepared {
        let reference = p.object.reference();
        let new = !previous.contains(&reference.key_ref());
        let group = groups.entry(list_key(p)).or_insert(Group {
            resolved: &p.resolved,
            whole: false,
            managed_fields: false,
        });
        group.whole |= new && p.list_key.2.is_some();
        group.managed_fields |= ignore::selects(&options.ignore, reference);
    }
    let ours = format!("{INVENTORY_LABEL}={}", options.owner);
    let complete: HashSet<ListKey> = groups
        .iter()
        .filter(|(_, group)| group.whole)
        .map(|(key, _)| key.clone())
        .collect();
    let lists = groups.into_iter().map(|(key, group)| {
        let selector = if group.whole { "" } else { ours.as_str() };
        async move {
            let api = conn.api(group.resolved, key.2.as_deref());
            let result = if group.managed_fields {
                list::<Value>(&api, selector).await
            } else {
                list::<ListedObject>(&api, selector).await
            };
            (key, group.resolved, result)
        }
    });
    let results = futures::future::join_all(lists).await;
    let mut live = HashMap::new();
    let mut failures = HashMap::new();
    for (key, resolved, result) in results {
        match result {
            Ok(items) => {
                for mut value in items {
                    with_type(&mut value, resolved);
                    if let Some(key) = live_key(&value, resolved) {
                        live.insert(key, value);
                    }
                }
            }
            Err(e) => {
                let target = match &key.2 {
                    Some(ns) => format!("{} {} in {ns}", key.0, key.1),
                    None => format!("{} {}", key.0, key.1),
                };
                failures.insert(key, api_error("list", target, e, None).to_string());
            }
        }
    }
    (live, failures, complete)
}

/// Lists objects carrying `selector` as plain JSON, page by page; `T` says whether to keep
/// their `managedFields`.
async fn list<T: serde::de::DeserializeOwned + Into<Value>>(
    api: &Api<DynamicObject>,
    selector: &str,
) -> Result<Vec<Value>, kube::Error> {
    let mut items = Vec::new();
    let mut params = ListParams::default().limit(500);
    if !selector.is_empty() {
        params = params.labels(selector);
    }
    loop {
        let request = kube::core::Request::new(api.resource_url())
            .list(&params)
            .map_err(kube::Error::BuildRequest)?;
        let page: Page<T> = api.clone().into_client().request(request).await?;
        items.extend(page.items.into_iter().map(Into::into));
        match page.metadata.continue_token {
            Some(token) if !token.is_empty() => params = params.continue_token(&token),
            _ => return Ok(items),
        }
    }
}

/// One page of a list answer.
#[derive(serde::Deserialize)]
#[serde(bound = "T: serde::de::DeserializeOwned")]
struct Page<T> {
    #[serde(default = "Vec::new")]
    items: Vec<T>,
    #[serde(default)]
    metadata: PageMetadata,
}

#[derive(Default, serde::Deserialize)]
struct PageMetadata {
    #[serde(rename = "continue")]
    continue_token: Option<String>,
}

/// A listed object without `metadata.managedFields`: nothing here reads them (drift compares
/// the fields we declared), and they are often half of the object, parsed again on every pass.
struct ListedObject(Value);

impl From<ListedObject> for Value {
    fn from(object: ListedObject) -> Self {
        object.0
    }
}

impl<'de> serde::Deserialize<'de> for ListedObject {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer
            .deserialize_map(Skipping { at_top: true })
            .map(ListedObject)
    }
}

/// Builds an object, leaving out `managedFields` of its top-level `metadata`.
struct Skipping {
    at_top: bool,
}

impl<'de> serde::de::Visitor<'de> for Skipping {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a Kubernetes object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let value = match key.as_str() {
                "metadata" if self.at_top => map.next_value_seed(Skipping { at_top: false })?,
                "managedFields" if !self.at_top => {
                    map.next_value::<serde::de::IgnoredAny>()?;
                    continue;
                }
                _ => map.next_value()?,
            };
            out.insert(key, value);
        }
        Ok(Value::Object(out))
    }
}

impl<'de> serde::de::DeserializeSeed<'de> for Skipping {
    type Value = Value;

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_map(self)
    }
}

fn live_key(value: &Value, resolved: &Resolved) -> Option<ObjectKey> {
    Some(ObjectKey {
        group: resolved.resource.group.clone(),
        kind: resolved.resource.kind.clone(),
        namespace: at(value, &["metadata", "namespace"])
            .and_then(Value::as_str)
            .map(str::to_owned),
        name: at(value, &["metadata", "name"])?.as_str()?.to_owned(),
    })
}

/// An object from the apiserver as JSON, with the apiVersion and kind that list items leave
/// out.
pub(crate) fn to_value(object: DynamicObject, resolved: &Resolved) -> Value {
    let mut value = serde_json::to_value(object).expect("an object from the apiserver serialises");
    with_type(&mut value, resolved);
    value
}

fn with_type(value: &mut Value, resolved: &Resolved) {
    if let Some(map) = value.as_object_mut() {
        map.insert(
            "apiVersion".into(),
            Value::String(resolved.resource.api_version.clone()),
        );
        map.insert("kind".into(), Value::String(resolved.resource.kind.clone()));
    }
}

fn hash_of(live: &Value) -> Option<&str> {
    at(live, &["metadata", "annotations", HASH_ANNOTATION])?.as_str()
}

/// Server-side apply of `desired`, answered as plain JSON: going through `DynamicObject` costs
/// a second conversion per object, which shows with a thousand of them.
async fn patch(
    api: &Api<DynamicObject>,
    resolved: &Resolved,
    name: &str,
    desired: &Value,
    force: bool,
    dry_run: bool,
) -> Result<Value, kube::Error> {
    let mut params = PatchParams::apply(FIELD_MANAGER);
    params.force = force;
    params.dry_run = dry_run;
    let request = kube::core::Request::new(api.resource_url())
        .patch(name, &params, &Patch::Apply(desired))
        .map_err(kube::Error::BuildRequest)?;
    let mut applied: Value = api.clone().into_client().request(request).await?;
    with_type(&mut applied, resolved);
    Ok(applied)
}

fn is_immutable(error: &kube::Error) -> bool {
    match error {
        kube::Error::Api(status) => {
            status.code == 422
                && (status.message.contains("field is immutable")
                    || status
                        .details
                        .iter()
                        .flat_map(|d| &d.causes)
                        .any(|c| c.message.contains("field is immutable")))
        }
        _ => false,
    }
}

fn owner_of(live: &Value) -> Option<&str> {
    at(live, &["metadata", "labels", INVENTORY_LABEL])?.as_str()
}

/// Whose `live` is, for an object the owner-selected list did not return: ours (`Ok(true)`),
/// nobody's to be adopted (`Ok(false)`), or someone else's (`Err`). An object in our
/// inventory whose label someone removed is still ours.
fn ownership(ctx: &Context<'_>, reference: &ObjectRef, live: &Value) -> Result<bool, Error> {
    match owner_of(live) {
        Some(owner) if owner == ctx.options.owner => Ok(true),
        Some(owner) => Err(Error::OwnedByOther {
            object: reference.to_string(),
            owner: owner.to_owned(),
        }),
        None if ctx.previous.contains(&reference.key_ref()) => Ok(true),
        None if ctx.options.adopt => Ok(false),
        None => Err(Error::Unmanaged {
            object: reference.to_string(),
        }),
    }
}

/// Applies one object. `live` is the object as listed; `absent` says that a missing `live`
/// means the object does not exist (its kind and namespace were listed whole).
async fn apply_one(ctx: &Context<'_>, p: Prepared, mut live: Option<Value>, absent: bool) -> Entry {
    let (conn, options, redactor) = (ctx.conn, ctx.options, ctx.redactor);
    let reference = p.object.reference().clone();
    let api = conn.api(&p.resolved, reference.namespace.as_deref());
    let desired = p.object.manifest();
    // An object holding a decrypted value is as sensitive as a Secret, whatever its kind.
    let secret = (reference.is_secret() || redactor.touches(desired)).then_some(redactor);
    let name = reference.name.as_str();
    let fail = |operation: &'static str, e: kube::Error| {
        let error = api_error(operation, reference.to_string(), e, secret);
        Entry::failed(reference.clone(), &error)
    };
    let force = options.force || options.self_heal;

    if reference
        .namespace
        .as_ref()
        .is_some_and(|ns| ctx.new_namespaces.contains(ns))
    {
        return Entry::new(reference.clone(), Change::Created, None);
    }
    if live.is_none() && !absent {
        // Not ours by label: look whether it exists at all before creating over it.
        live = match api.get_opt(name).await {
            Ok(found) => found.map(|o| to_value(o, &p.resolved)),
            Err(e) => return fail("read", e),
        };
    }
    // Fields another controller owns: an existing object is applied without them (or with
    // the values it runs), and they are no drift (see `ignore`).
    let (config, ignored, releases) = match &live {
        Some(existing) if ignore::selects(&options.ignore, &reference) => {
            let fields = ignore::Fields::of(&options.ignore, &reference, existing);
            (
                Cow::Owned(fields.apply_config(desired, existing)),
                fields.differences(desired, existing),
                fields.releases(desired, existing),
            )
        }
        _ => (Cow::Borrowed(desired), Vec::new(), false),
    };
    let entry = |change, live| Entry {
        ignored: ignored.clone(),
        ..Entry::new(reference.clone(), change, live)
    };
    if let Some(existing) = &live {
        match ownership(ctx, &reference, existing) {
            Ok(true) => {}
            Ok(false) => {
                // Taking it over means taking its fields, whoever set them.
                return match patch(&api, &p.resolved, name, &config, true, options.dry_run).await {
                    Ok(applied) => entry(Change::Adopted, Some(applied)),
                    Err(e) => fail("adopt", e),
                };
            }
            Err(error) => return Entry::failed(reference.clone(), &error),
        }
    }
    let Some(live) = live else {
        // Applied by an earlier sync and gone now: someone deleted it.
        let deleted = ctx.previous.contains(&reference.key_ref());
        if deleted && (!options.self_heal || options.dry_run) {
            let fields = vec![DELETED.to_owned()];
            return Entry::new(reference.clone(), Change::Drifted { fields }, None);
        }
        return match patch(&api, &p.resolved, name, desired, force, options.dry_run).await {
            Ok(applied) if deleted => {
                let fields = vec![DELETED.to_owned()];
                Entry::new(reference.clone(), Change::Healed { fields }, Some(applied))
            }
            Ok(applied) => Entry::new(reference.clone(), Change::Created, Some(applied)),
            Err(e) => fail("apply", e),
        };
    };

    if hash_of(&live) == Some(p.hash.as_str()) && !releases {
        // Git has not changed this object since we applied it.
        if diff::contains(&live, &config) {
            return entry(Change::Unchanged, Some(live));
        }
        let preview = match patch(&api, &p.resolved, name, &config, true, true).await {
            Ok(preview) => preview,
            Err(e) => return fail("dry-run apply", e),
        };
        let fields = diff::changed_paths(&live, &preview);
        if fields.is_empty() {
            return entry(Change::Unchanged, Some(live));
        }
        if !options.self_heal || options.dry_run {
            return entry(Change::Drifted { fields }, Some(live));
        }
        return match patch(&api, &p.resolved, name, &config, true, false).await {
            Ok(applied) => entry(Change::Healed { fields }, Some(applied)),
            Err(e) => fail("apply", e),
        };
    }

    match patch(&api, &p.resolved, name, &config, force, options.dry_run).await {
        Ok(applied) => {
            let fields: Vec<String> = diff::changed_paths(&live, &applied)
                .into_iter()
                .filter(|f| !f.ends_with(&format!("[{HASH_ANNOTATION:?}]")))
                .collect();
            let change = if fields.is_empty() {
                Change::Unchanged
            } else {
                Change::Configured { fields }
            };
            entry(change, Some(applied))
        }
        Err(e) if is_immutable(&e) && options.recreate && !options.dry_run => {
            let uid = at(&live, &["metadata", "uid"]).and_then(Value::as_str);
            match recreate(&api, &p, options, secret, uid).await {
                Ok(applied) => Entry::new(reference.clone(), Change::Recreated, Some(applied)),
                Err(error) => Entry::failed(reference.clone(), &error),
            }
        }
        Err(e) => fail("apply", e),
    }
}

/// Deletes the object with UID `uid` (only that one: not a replacement someone made since)
/// and applies it again. For a Secret or an object holding a decrypted value (`secret` set)
/// errors are reduced as apply's are.
async fn recreate(
    api: &Api<DynamicObject>,
    p: &Prepared,
    options: &Options,
    secret: Option<&Redactor>,
    uid: Option<&str>,
) -> Result<Value, Error> {
    let reference = p.object.reference();
    let error = |op, e| api_error(op, reference.to_string(), e, secret);
    let params = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Background),
        preconditions: uid.map(|uid| Preconditions {
            uid: Some(uid.to_owned()),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    api.delete(&reference.name, &params)
        .await
        .map_err(|e| error("delete for recreate", e))?;
    let deadline = Instant::now() + options.wait_timeout;
    while api
        .get_opt(&reference.name)
        .await
        .map_err(|e| error("wait for deletion", e))?
        .is_some()
    {
        if Instant::now() > deadline {
            return Err(Error::Api {
                operation: "recreate",
                target: reference.to_string(),
                code: None,
                reason: "Timeout".into(),
                message: format!("still there {:?} after deleting it", options.wait_timeout),
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    patch(
        api,
        &p.resolved,
        &reference.name,
        p.object.manifest(),
        true,
        false,
    )
    .await
    .map_err(|e| error("apply after delete", e))
}

async fn wait_established(
    conn: &Connection,
    crd: &ObjectRef,
    timeout: Duration,
) -> Result<Value, Error> {
    let resolved = conn.resolve(crd).await?;
    let api = conn.api(&resolved, None);
    let deadline = Instant::now() + timeout;
    loop {
        let live = api
            .get(&crd.name)
            .await
            .map_err(|e| api_error("wait for", crd.to_string(), e, None))?;
        let live = to_value(live, &resolved);
        let established = live
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .is_some_and(|cs| {
                cs.iter().any(|c| {
                    c.get("type").and_then(Value::as_str) == Some("Established")
                        && c.get("status").and_then(Value::as_str) == Some("True")
                })
            });
        if established {
            return Ok(live);
        }
        if Instant::now() > deadline {
            return Err(Error::NotEstablished {
                name: crd.name.clone(),
                timeout,
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn stamped(manifest: Value) -> (Value, String) {
        let mut object = Object::from_manifest(0, manifest).expect("valid");
        let hash = stamp(&mut object, "shop.dev");
        (object.manifest().clone(), hash)
    }

    fn cm(data: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a", "namespace": "x"}, "data": data})
    }

    #[test]
    fn stamping_adds_the_owner_label_and_the_hash_annotation() {
        let (manifest, hash) = stamped(cm(json!({"k": "v"})));
        assert_eq!(manifest["metadata"]["labels"][INVENTORY_LABEL], "shop.dev");
        assert_eq!(
            manifest["metadata"]["annotations"][HASH_ANNOTATION],
            hash.as_str()
        );
        assert_eq!(hash.len(), 32);
    }

    #[test]
    fn the_hash_follows_the_manifest_and_ignores_a_hash_it_already_carried() {
        let (first, hash) = stamped(cm(json!({"k": "v"})));
        let (_, again) = stamped(cm(json!({"k": "v"})));
        let (_, other) = stamped(cm(json!({"k": "w"})));
        assert_eq!(hash, again);
        assert_ne!(hash, other);
        let (_, restamped) = stamped(first);
        assert_eq!(hash, restamped);
    }

    #[test]
    fn a_listed_page_keeps_everything_but_the_objects_managed_fields() {
        let page = json!({
            "metadata": {"continue": "next"},
            "items": [{
                "metadata": {"name": "a", "managedFields": [{"manager": "kubectl"}],
                             "labels": {"managedFields": "kept"}},
                "data": {"managedFields": "kept too"},
                "spec": {"replicas": 2, "ratio": 0.5, "list": [1, "x", null, true]}
            }]
        });
        let page: Page<ListedObject> = serde_json::from_value(page).expect("a list page");
        assert_eq!(page.metadata.continue_token.as_deref(), Some("next"));
        let objects: Vec<Value> = page.items.into_iter().map(|o| o.0).collect();
        assert_eq!(
            objects,
            vec![json!({
                "metadata": {"name": "a", "labels": {"managedFields": "kept"}},
                "data": {"managedFields": "kept too"},
                "spec": {"replicas": 2, "ratio": 0.5, "list": [1, "x", null, true]}
            })]
        );
    }
}
