//! Name references: after prefixes, suffixes, hashes and namespaces changed names, every field
//! that named a resource by its old name is pointed at the new one.

use std::collections::{HashMap, HashSet};

use serde_json::Value;

use super::fieldspec::{self, NameBackRef, VisitError};
use super::resource::{Gvk, ResId, Resource};

/// What the selection needs to know about a possible referral, taken before fields change.
struct Info {
    cur: ResId,
    prev: Vec<ResId>,
    org_ns: String,
    cluster_scoped: bool,
}

/// Why name references could not be fixed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Invalid Input: namespace is blank for resource {0}")]
    BlankSubjectNamespace(String),
    #[error(transparent)]
    Visit(#[from] VisitError),
}

/// kustomize refuses a RoleBinding subject whose namespace is present but blank.
fn check_subjects(list: &[Resource]) -> Result<(), Error> {
    for r in list.iter().filter(|r| r.kind() == "RoleBinding") {
        if let Some(Value::Array(items)) = r.obj.get("subjects") {
            let blank = items.iter().any(|s| {
                s.get("namespace")
                    .is_some_and(|n| n.as_str().is_none_or(|n| n.trim().is_empty()))
            });
            if blank {
                return Err(Error::BlankSubjectNamespace(r.cur_id().to_string()));
            }
        }
    }
    Ok(())
}

pub fn fix(list: &mut [Resource], backrefs: &[NameBackRef]) -> Result<(), Error> {
    check_subjects(list)?;
    // Only renamed resources can be referred to by a name that needs fixing; with none, the
    // look-ups below need not be built.
    if list.iter().all(|r| r.prev.is_empty()) {
        return Ok(());
    }
    let infos: Vec<Info> = list
        .iter()
        .map(|r| {
            let cur = r.cur_id();
            Info {
                cluster_scoped: cur.gvk.is_cluster_scoped(),
                org_ns: r.org_id().namespace,
                prev: r.prev_ids(),
                cur,
            }
        })
        .collect();
    let mut by_prev_name: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, info) in infos.iter().enumerate() {
        let mut names: Vec<&str> = info.prev.iter().map(|p| p.name.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        for n in names {
            by_prev_name.entry(n).or_default().push(i);
        }
    }
    let ctxs: Vec<(Vec<String>, Vec<String>)> = list
        .iter()
        .map(|r| (r.prefixes.clone(), r.suffixes.clone()))
        .collect();
    for (ri, r) in list.iter_mut().enumerate() {
        let org_gvk = r.org_id().gvk;
        let referrer = &infos[ri];
        let rb_namespaces: HashSet<String> = if r.kind() == "RoleBinding" {
            match r.obj.get("subjects") {
                Some(Value::Array(items)) => items
                    .iter()
                    .filter_map(|s| s.get("namespace").and_then(Value::as_str))
                    .map(str::to_owned)
                    .collect(),
                _ => HashSet::new(),
            }
        } else {
            HashSet::new()
        };
        let role_ref_gvk = r.obj.get("roleRef").map(|rr| Gvk {
            group: rr
                .get("apiGroup")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned(),
            version: String::new(),
            kind: rr
                .get("kind")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned(),
        });
        let could_reference = |c: &Info| {
            referrer.cluster_scoped
                || c.cluster_scoped
                || c.cur.effective_namespace() == referrer.cur.effective_namespace()
                || rb_namespaces.contains(&c.cur.namespace)
        };
        let same_ns = |c: &Info| {
            referrer.cluster_scoped
                || c.cluster_scoped
                || c.cur.gvk.kind == "ServiceAccount"
                || c.cur.effective_namespace() == referrer.cur.effective_namespace()
        };
        let (my_prefixes, my_suffixes) = ctxs[ri].clone();
        for br in backrefs {
            let target = br.gvk();
            for fs in &br.referrers {
                if !fs.selects(&org_gvk) {
                    continue;
                }
                let role_ref = fs.path.ends_with("roleRef/name");
                // (old name, namespace filter as (namespace, by original namespace), map referrer)
                let select = |old: &str,
                              ns_filter: Option<(&str, bool)>,
                              is_map: bool|
                 -> Result<Option<(String, String)>, VisitError> {
                    let Some(cands) = by_prev_name.get(old) else {
                        return Ok(None);
                    };
                    let mut c: Vec<usize> = cands
                        .iter()
                        .copied()
                        .filter(|&i| could_reference(&infos[i]))
                        .filter(|&i| match ns_filter {
                            Some((ns, true)) => infos[i].org_ns == ns,
                            Some((ns, false)) => infos[i].cur.namespace == ns,
                            None => true,
                        })
                        .filter(|&i| {
                            infos[i]
                                .prev
                                .iter()
                                .any(|p| p.name == old && p.gvk.is_selected_by(&target))
                        })
                        .filter(|&i| {
                            !role_ref
                                || role_ref_gvk.as_ref().is_none_or(|g| {
                                    infos[i].prev.iter().any(|p| p.gvk.is_selected_by(g))
                                })
                        })
                        .filter(|&i| same_ns(&infos[i]))
                        .collect();
                    if c.len() > 1 {
                        let ps_equal = |i: usize, allow_empty: bool| {
                            let (p, s) = &ctxs[i];
                            let same_end = |a: &[String], b: &[String]| {
                                let (short, long) =
                                    if a.len() <= b.len() { (a, b) } else { (b, a) };
                                if short.is_empty() {
                                    return long.is_empty();
                                }
                                long[long.len() - short.len()..] == *short
                            };
                            if allow_empty {
                                (p.is_empty()
                                    || my_prefixes.is_empty()
                                    || same_end(p, &my_prefixes))
                                    && (s.is_empty()
                                        || my_suffixes.is_empty()
                                        || same_end(s, &my_suffixes))
                            } else {
                                same_end(p, &my_prefixes) && same_end(s, &my_suffixes)
                            }
                        };
                        c.retain(|&i| ps_equal(i, true));
                        if c.len() > 1 {
                            c.retain(|&i| ps_equal(i, false));
                        }
                    }
                    let pick = |i: usize| {
                        Some((infos[i].cur.name.clone(), infos[i].cur.namespace.clone()))
                    };
                    match c.len() {
                        0 => Ok(None),
                        1 => Ok(pick(c[0])),
                        _ => {
                            let first = &infos[c[0]].cur;
                            let identical = c.iter().all(|&i| {
                                infos[i].cur.name == first.name
                                    && (!is_map || infos[i].cur.namespace == first.namespace)
                            });
                            if identical {
                                Ok(pick(c[0]))
                            } else {
                                let ids: Vec<String> =
                                    c.iter().map(|&i| infos[i].cur.to_string()).collect();
                                Err(VisitError::AmbiguousReferral(ids))
                            }
                        }
                    }
                };
                let set_scalar = |v: &mut Value| -> Result<(), VisitError> {
                    if let Value::String(s) = v
                        && let Some((name, _)) = select(s, None, false)?
                    {
                        *s = name;
                    }
                    Ok(())
                };
                let set_map = |m: &mut serde_json::Map<String, Value>| -> Result<(), VisitError> {
                    let Some(Value::String(old)) = m.get("name") else {
                        return Ok(());
                    };
                    let old = old.clone();
                    let ns = m
                        .get("namespace")
                        .and_then(Value::as_str)
                        .map(str::to_owned);
                    // Among the original namespaces first, then the current ones.
                    let hit = match &ns {
                        Some(n) => match select(&old, Some((n, true)), true)? {
                            Some(h) => Some(h),
                            None => select(&old, Some((n, false)), true)?,
                        },
                        None => select(&old, None, true)?,
                    };
                    if let Some((name, namespace)) = hit {
                        m.insert("name".into(), Value::String(name));
                        if !namespace.is_empty() {
                            m.insert("namespace".into(), Value::String(namespace));
                        }
                    }
                    Ok(())
                };
                let mut fix_node = |v: &mut Value| -> Result<(), VisitError> {
                    match v {
                        Value::String(_) => set_scalar(v),
                        Value::Array(items) => {
                            for item in items.iter_mut() {
                                match item {
                                    Value::Object(m) => set_map(m)?,
                                    other => set_scalar(other)?,
                                }
                            }
                            Ok(())
                        }
                        Value::Object(m) => set_map(m),
                        _ => Ok(()),
                    }
                };
                let gvk = r.gvk();
                fieldspec::visit(&mut r.obj, fs.segs(), false, &mut fix_node)
                    .map_err(|e| fieldspec::in_context(fs, &r.obj, &gvk, e))?;
            }
        }
    }
    Ok(())
}
