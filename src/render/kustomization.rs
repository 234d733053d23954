//! The kustomization file: its fields as kustomize v5 reads them, legacy spellings included.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

use super::fieldspec::FieldSpec;

/// A kustomization (or Component) file. Unknown fields are refused rather than ignored, so that a
/// typo or a field of a newer kustomize does not silently render something else.
// Fields mirror kustomize's types one to one under its camelCase names; kustomize's reference
// documents them, and a doc line per field here would only repeat the name.
#[allow(missing_docs)]
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct Kustomization {
    pub api_version: String,
    pub kind: String,
    pub metadata: Option<Value>,
    pub openapi: Option<Value>,
    pub name_prefix: String,
    pub name_suffix: String,
    pub namespace: String,
    pub common_labels: BTreeMap<String, String>,
    pub labels: Vec<Label>,
    pub common_annotations: BTreeMap<String, String>,
    pub patches_strategic_merge: Vec<String>,
    #[serde(rename = "patchesJson6902")]
    pub patches_json6902: Vec<Patch>,
    pub patches: Vec<Patch>,
    pub images: Vec<Image>,
    pub image_tags: Vec<Image>,
    pub replacements: Vec<Value>,
    pub replicas: Vec<Replica>,
    pub vars: Vec<Var>,
    pub sort_options: Option<SortOptions>,
    pub resources: Vec<String>,
    pub crds: Vec<String>,
    pub bases: Vec<String>,
    pub components: Vec<String>,
    pub config_map_generator: Vec<GeneratorArgs>,
    pub secret_generator: Vec<GeneratorArgs>,
    pub helm_globals: Option<Value>,
    pub helm_charts: Vec<Value>,
    pub helm_chart_inflation_generator: Vec<Value>,
    pub generator_options: Option<GeneratorOptions>,
    pub configurations: Vec<String>,
    pub generators: Vec<String>,
    pub transformers: Vec<String>,
    pub validators: Vec<String>,
    pub build_metadata: Vec<String>,
}

/// One `labels:` entry: unlike `commonLabels`, it says whether selectors and templates change.
// Fields mirror kustomize's types one to one under its camelCase names; kustomize's reference
// documents them, and a doc line per field here would only repeat the name.
#[allow(missing_docs)]
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Label {
    pub pairs: BTreeMap<String, String>,
    pub include_selectors: bool,
    pub include_templates: bool,
    pub fields: Vec<FieldSpec>,
}

/// One `patches:` (or `patchesJson6902:`) entry: a file or inline text, with an optional target.
// Fields mirror kustomize's types one to one under its camelCase names; kustomize's reference
// documents them, and a doc line per field here would only repeat the name.
#[allow(missing_docs)]
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Patch {
    pub path: String,
    pub patch: String,
    pub target: Option<Selector>,
    pub options: BTreeMap<String, bool>,
}

/// A patch or replacement target; the id fields are anchored regular expressions.
// Fields mirror kustomize's types one to one under its camelCase names; kustomize's reference
// documents them, and a doc line per field here would only repeat the name.
#[allow(missing_docs)]
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct Selector {
    pub group: String,
    pub version: String,
    pub kind: String,
    pub name: String,
    pub namespace: String,
    pub label_selector: String,
    pub annotation_selector: String,
}

/// One `images:` entry. `T` is how a field is held: render reads its text (empty when absent,
/// as kustomize's Go struct has it); a promotion reads each field as written
/// (`Option<yaml::written::Scalar>`), so that it copies the text exactly.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(
    default,
    rename_all = "camelCase",
    bound(deserialize = "T: Deserialize<'de> + Default")
)]
// Fields mirror kustomize's types one to one under its camelCase names; kustomize's reference
// documents them, and a doc line per field here would only repeat the name.
#[allow(missing_docs)]
pub struct Image<T = String> {
    pub name: T,
    pub new_name: T,
    pub new_tag: T,
    pub tag_suffix: T,
    pub digest: T,
}

impl<T> Image<T> {
    /// The fields that say what an image becomes, by their names in a kustomization, in the
    /// order kustomize documents them.
    pub fn changes(&self) -> [(&'static str, &T); 4] {
        [
            ("newName", &self.new_name),
            ("newTag", &self.new_tag),
            ("tagSuffix", &self.tag_suffix),
            ("digest", &self.digest),
        ]
    }
}

/// One `replicas:` entry: the count for the objects of that name.
// Fields mirror kustomize's types one to one under its camelCase names; kustomize's reference
// documents them, and a doc line per field here would only repeat the name.
#[allow(missing_docs)]
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Replica {
    pub name: String,
    pub count: i64,
}

/// One legacy `vars:` entry: `$(NAME)` stands for the field it points at.
// Fields mirror kustomize's types one to one under its camelCase names; kustomize's reference
// documents them, and a doc line per field here would only repeat the name.
#[allow(missing_docs)]
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Var {
    pub name: String,
    #[serde(rename = "objref")]
    pub obj_ref: VarTarget,
    #[serde(rename = "fieldref")]
    pub field_ref: FieldRef,
}

/// The object a var reads from.
// Fields mirror kustomize's types one to one under its camelCase names; kustomize's reference
// documents them, and a doc line per field here would only repeat the name.
#[allow(missing_docs)]
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct VarTarget {
    pub api_version: String,
    pub group: String,
    pub version: String,
    pub kind: String,
    pub name: String,
    pub namespace: String,
}

/// The field a var reads; `metadata.name` when empty.
// Fields mirror kustomize's types one to one under its camelCase names; kustomize's reference
// documents them, and a doc line per field here would only repeat the name.
#[allow(missing_docs)]
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct FieldRef {
    #[serde(rename = "fieldpath")]
    pub field_path: String,
}

/// `sortOptions:`: kustomize's legacy kind order (the default) or the order of the input.
// Fields mirror kustomize's types one to one under its camelCase names; kustomize's reference
// documents them, and a doc line per field here would only repeat the name.
#[allow(missing_docs)]
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct SortOptions {
    pub order: Option<String>,
    pub legacy_sort_options: Option<LegacySortOptions>,
}

/// The kinds the legacy order puts first and last, replacing kustomize's own lists.
// Fields mirror kustomize's types one to one under its camelCase names; kustomize's reference
// documents them, and a doc line per field here would only repeat the name.
#[allow(missing_docs)]
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct LegacySortOptions {
    pub order_first: Vec<String>,
    pub order_last: Vec<String>,
}

/// One `configMapGenerator:` or `secretGenerator:` entry.
// Fields mirror kustomize's types one to one under its camelCase names; kustomize's reference
// documents them, and a doc line per field here would only repeat the name.
#[allow(missing_docs)]
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct GeneratorArgs {
    pub name: String,
    pub namespace: String,
    pub behavior: String,
    pub literals: Vec<String>,
    pub files: Vec<String>,
    pub envs: Vec<String>,
    pub env: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub options: Option<GeneratorOptions>,
}

/// `generatorOptions:`, kustomization-wide or per generator.
// Fields mirror kustomize's types one to one under its camelCase names; kustomize's reference
// documents them, and a doc line per field here would only repeat the name.
#[allow(missing_docs)]
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct GeneratorOptions {
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub disable_name_suffix_hash: bool,
    pub immutable: bool,
}

impl GeneratorOptions {
    /// The generator's own options over the kustomization-wide ones.
    pub fn merged(local: Option<&GeneratorOptions>, global: Option<&GeneratorOptions>) -> Self {
        let mut out = global.cloned().unwrap_or_default();
        if let Some(l) = local {
            out.labels.extend(l.labels.clone());
            out.annotations.extend(l.annotations.clone());
            out.disable_name_suffix_hash |= l.disable_name_suffix_hash;
            out.immutable |= l.immutable;
        }
        out
    }
}

/// The file names kustomize recognises, in its order.
pub const FILE_NAMES: [&str; 3] = ["kustomization.yaml", "kustomization.yml", "Kustomization"];

impl Kustomization {
    /// Folds the deprecated spellings into the current fields, as kustomize does on load.
    pub fn fix_legacy(&mut self) {
        let bases = std::mem::take(&mut self.bases);
        self.resources.extend(bases);
        let tags = std::mem::take(&mut self.image_tags);
        self.images.extend(tags);
    }
}
