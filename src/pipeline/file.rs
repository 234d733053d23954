//! The pipeline file exactly as users write it. Unknown fields are rejected so that a typo such
//! as `promoteFrom` is an error rather than a silently ignored setting.

use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PipelineFile {
    pub api_version: String,
    pub kind: String,
    pub metadata: Metadata,
    pub spec: Spec,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Metadata {
    pub name: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Spec {
    #[serde(default)]
    pub repository: Option<Repository>,
    pub environments: Vec<Environment>,
    #[serde(default)]
    pub notifications: Vec<Notification>,
    #[serde(default)]
    pub alerts: Option<Alerts>,
    #[serde(default)]
    pub access: Vec<super::AccessRule>,
    #[serde(default)]
    pub decryption: Option<SpecDecryption>,
    #[serde(default)]
    pub images: Vec<ImageSource>,
}

/// Every field but the name optional here so that validation, not serde, names what is
/// missing.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ImageSource {
    pub name: String,
    #[serde(default)]
    pub repository: Option<String>,
    /// Read by validation, so that a bad range or pattern is named by its field.
    #[serde(default)]
    pub policy: Option<serde_yaml_ng::Value>,
    #[serde(default)]
    pub pin_digest: bool,
    #[serde(default)]
    pub credentials_file: Option<String>,
    #[serde(default)]
    pub credentials_secret: Option<SecretEntry>,
    #[serde(default)]
    pub interval: Option<String>,
    #[serde(default)]
    pub environment: Option<String>,
    #[serde(default)]
    pub kustomize_name: Option<String>,
    #[serde(default)]
    pub group: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SpecDecryption {
    pub age_keys_dir: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnvDecryption {
    pub age_key_file: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Notification {
    pub name: String,
    pub url_file: String,
    #[serde(default)]
    pub secret_file: Option<String>,
    #[serde(default)]
    pub events: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Alerts {
    #[serde(default)]
    pub drift_after: Option<String>,
    #[serde(default)]
    pub failures_in_a_row: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Repository {
    pub url: String,
    #[serde(default)]
    pub branch: Option<String>,
    #[serde(default)]
    pub pipeline_path: Option<String>,
    #[serde(default)]
    pub in_repository: Option<InRepository>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InRepository {
    #[serde(default)]
    pub may_change: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Environment {
    pub name: String,
    #[serde(default)]
    pub promotes_from: Option<String>,
    pub source: Source,
    #[serde(default)]
    pub cluster: Option<Cluster>,
    #[serde(default)]
    pub sync: Option<Sync>,
    #[serde(default)]
    pub approval: Option<Approval>,
    #[serde(default)]
    pub freeze_windows: Vec<FreezeWindow>,
    #[serde(default)]
    pub promote: Option<Promote>,
    #[serde(default)]
    pub promotion: Option<Promotion>,
    #[serde(default)]
    pub verify: Option<Verify>,
    #[serde(default)]
    pub decryption: Option<EnvDecryption>,
    #[serde(default)]
    pub ignore_differences: Vec<IgnoreDifference>,
    #[serde(default)]
    pub require_signed_commits: Option<RequireSignedCommits>,
}

/// Every field optional here so that validation, not serde, names what is missing.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IgnoreDifference {
    #[serde(default)]
    pub group: Option<String>,
    #[serde(default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub json_pointers: Vec<String>,
    #[serde(default)]
    pub field_paths: Vec<String>,
    #[serde(default)]
    pub managed_fields_managers: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RequireSignedCommits {
    #[serde(default)]
    pub allowed_signers_file: Option<String>,
    #[serde(default)]
    pub allowed_signers_secret: Option<SecretEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretEntry {
    pub name: String,
    #[serde(default)]
    pub key: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Promotion {
    #[serde(default)]
    pub soak: Option<String>,
    #[serde(default)]
    pub auto: bool,
    #[serde(default)]
    pub require_healthy: Option<bool>,
    #[serde(default)]
    pub supersede: bool,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Verify {
    #[serde(default)]
    pub job: Option<String>,
    #[serde(default)]
    pub checks: Vec<Check>,
    #[serde(default)]
    pub on_failure: Option<String>,
    #[serde(default)]
    pub every: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Check {
    pub name: String,
    #[serde(default)]
    pub interval: Option<String>,
    #[serde(default)]
    pub timeout: Option<String>,
    #[serde(default)]
    pub successes: Option<u32>,
    #[serde(default)]
    pub failures: Option<u32>,
    #[serde(default)]
    pub prometheus: Option<PrometheusCheck>,
    #[serde(default)]
    pub http: Option<HttpCheck>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PrometheusCheck {
    pub url: String,
    pub query: String,
    #[serde(default)]
    pub below: Option<f64>,
    #[serde(default)]
    pub above: Option<f64>,
    #[serde(default)]
    pub bearer_token_file: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpCheck {
    pub url: String,
    #[serde(default)]
    pub status: Option<u16>,
    #[serde(default)]
    pub condition: Option<String>,
    #[serde(default)]
    pub bearer_token_file: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Promote {
    #[serde(default)]
    pub images: Option<Vec<String>>,
    #[serde(default)]
    pub files: Vec<String>,
    #[serde(default)]
    pub fields: Vec<PromotedField>,
    #[serde(default)]
    pub allow_merge: bool,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PromotedField {
    pub file: String,
    pub path: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Source {
    #[serde(default)]
    pub overlay: Option<String>,
    #[serde(default)]
    pub branch: Option<String>,
    #[serde(default)]
    pub path: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Cluster {
    #[serde(default)]
    pub kubeconfig: Option<String>,
    #[serde(default)]
    pub kubeconfig_secret: Option<KubeconfigSecret>,
    #[serde(default)]
    pub context: Option<String>,
    #[serde(default)]
    pub in_cluster: bool,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KubeconfigSecret {
    pub name: String,
    #[serde(default)]
    pub key: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Sync {
    #[serde(default)]
    pub interval: Option<String>,
    #[serde(default)]
    pub prune: Option<bool>,
    #[serde(default)]
    pub self_heal: Option<bool>,
    #[serde(default)]
    pub suspend: bool,
    #[serde(default)]
    pub timeout: Option<String>,
    #[serde(default)]
    pub force: bool,
    #[serde(default)]
    pub recreate: bool,
    #[serde(default)]
    pub auto: Option<bool>,
    #[serde(default)]
    pub adopt: bool,
    #[serde(default)]
    pub prune_adopted: bool,
    #[serde(default)]
    pub prune_namespaces: bool,
    #[serde(default, rename = "pruneCRDs")]
    pub prune_crds: bool,
    #[serde(default)]
    pub max_prune_percent: Option<u8>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Approval {
    #[serde(default)]
    pub required: u32,
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default)]
    pub allow_self_approval: bool,
    #[serde(default)]
    pub allow_author_approval: Option<bool>,
    #[serde(default)]
    pub exempt_rollbacks: bool,
}

/// Either weekly (`start`, `end`) or absolute (`from`, `until`); which one is decided, and a mix
/// refused, in validation so that the error can name the field.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FreezeWindow {
    #[serde(default)]
    pub start: Option<String>,
    #[serde(default)]
    pub end: Option<String>,
    #[serde(default)]
    pub from: Option<String>,
    #[serde(default)]
    pub until: Option<String>,
    #[serde(default)]
    pub timezone: Option<String>,
    #[serde(default)]
    pub reason: Option<String>,
}
