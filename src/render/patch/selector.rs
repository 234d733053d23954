//! The target selectors that pick the resources a patch (or a replacement) applies to: group,
//! version, kind, name and namespace as anchored regular expressions, label and annotation
//! selectors.

use regex::Regex;
use serde_json::{Map, Value};

use super::Error;
use crate::render::kustomization::Selector;
use crate::render::resource::{ResId, Resource};

fn anchored(p: &str) -> Result<Option<Regex>, Error> {
    if p.is_empty() {
        return Ok(None);
    }
    Regex::new(&format!("^(?:{p})$"))
        .map(Some)
        .map_err(|reason| Error::Pattern {
            pattern: p.to_owned(),
            reason,
        })
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

fn parse_selector(s: &str) -> Result<Vec<Requirement>, Error> {
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
            return Err(Error::Requirement(p.to_owned()));
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
    pub fn new(s: &Selector) -> Result<Self, Error> {
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
