//! Patches: strategic merge (with the list merge keys of built-in kinds), JSON 6902, and the
//! target selectors that pick the resources they apply to.

mod json6902;
mod selector;
mod strategic;

use std::collections::BTreeMap;

use serde_json::Value;

use super::kustomization::Selector;
use super::openapi::Schema;
use super::resource::Resource;

use crate::yaml::ParseError;
use json6902::apply_json6902;
pub use json6902::apply_json6902_text;
pub use selector::Compiled;
pub use strategic::strategic_merge_all;
use strategic::{apply_smp, patch_by_own_id};

/// Why a patch could not be applied. Each message is whole (causes included), because the
/// render error that carries it names the kustomization and the patch around it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what}: {reason}")]
    Yaml {
        /// `patch` or `JSON patch`.
        what: &'static str,
        reason: ParseError,
    },
    #[error("JSON patch is not JSON: {0}")]
    NotJson(serde_json::Error),
    #[error("must specify a target for JSON patch")]
    NoTarget,
    #[error("a JSON patch must be a list of operations")]
    NotAList,
    #[error(
        "Multiple Strategic-Merge Patches in one `patches` entry is not allowed to set `patches.target` field"
    )]
    TargetForMany,
    #[error("a strategic merge patch must be a map")]
    NotAMap,
    #[error("patch appears to be empty")]
    Empty,
    #[error("failed to find unique target for patch {id}")]
    NoUniqueTarget { id: String },
    #[error("multiple matches for Id {id}; failed to find unique target for patch {id}")]
    ManyTargets { id: String },
    #[error("invalid selector pattern {pattern:?}: {reason}")]
    Pattern {
        pattern: String,
        reason: regex::Error,
    },
    #[error("unable to parse requirement {0:?}")]
    Requirement(String),
    #[error("invalid JSON pointer {0:?}")]
    Pointer(String),
    #[error("doc is missing path: {0}")]
    MissingPath(String),
    #[error("cannot remove the root")]
    RemoveRoot,
    #[error("{op} operation does not apply: doc is missing path: {path}")]
    DoesNotApply { op: &'static str, path: String },
    #[error("add operation does not apply: index out of bounds: {0}")]
    OutOfBounds(String),
    #[error("invalid index in {0}")]
    Index(String),
    #[error("{op} {path}: missing value")]
    MissingValue { op: String, path: String },
    #[error("testing value {0} failed")]
    TestFailed(String),
    #[error("unexpected JSON patch operation {0:?}")]
    UnknownOp(String),
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
) -> Result<(), Error> {
    let docs =
        crate::yaml::documents(text, crate::yaml::Reading::PatchEntry).map_err(|reason| {
            Error::Yaml {
                what: "patch",
                reason,
            }
        })?;
    // An empty patch file (or one of only comments) changes nothing.
    if docs.is_empty() {
        return Ok(());
    }
    let allow_name = options.get("allowNameChange").copied().unwrap_or(false);
    let allow_kind = options.get("allowKindChange").copied().unwrap_or(false);
    if is_json_patch(&docs) {
        let Some(target) = target else {
            return Err(Error::NoTarget);
        };
        // kustomize converts a JSON patch to JSON through go-yaml v2, which reads values its way.
        let docs = crate::yaml::parse_documents(text).map_err(|reason| Error::Yaml {
            what: "JSON patch",
            reason,
        })?;
        let Some(Value::Array(ops)) = docs.first() else {
            unreachable!("is_json_patch checked the shape")
        };
        return apply_json6902(list, ops, target);
    }
    match target {
        Some(sel) => {
            if docs.len() > 1 {
                return Err(Error::TargetForMany);
            }
            let sel = Compiled::new(sel)?;
            let patch = docs[0].as_object().ok_or(Error::NotAMap)?;
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
                let p = d.as_object().ok_or(Error::NotAMap)?;
                patch_by_own_id(list, p, allow_name, allow_kind, schema)?;
            }
            Ok(())
        }
    }
}
