//! The pipeline file: which environments exist, in which order, where their manifests live,
//! which cluster each runs on, and the policies that guard promotions into them.
//!
//! The file is parsed into raw serde types (`file`) and then validated into [`Pipeline`], whose
//! invariants the rest of Stagehand relies on: unique environment names, every `promotesFrom`
//! naming an environment listed earlier (so the graph has no cycles), and well-formed durations
//! and freeze windows.

mod file;
pub mod ignore;
pub mod images;
pub mod in_repository;
mod validate;
pub mod verify;

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use ignore::{FieldPath, IgnoreRule};
pub use images::{ImageRepository, ImageSource, RegistryCredentials};
pub use validate::{Error, ErrorKind};
pub use verify::Verify;

/// The `apiVersion` this build understands.
pub const API_VERSION: &str = "stagehand.dev/v1alpha1";
/// The `kind` of a pipeline document.
pub const KIND: &str = "Pipeline";

/// A validated pipeline.
#[derive(Debug, Clone, PartialEq)]
pub struct Pipeline {
    /// The pipeline's `metadata.name`, which labels what it owns in the cluster.
    pub name: String,
    /// The Git repository that holds the manifests.
    pub repository: Repository,
    /// Environments in the order the file lists them; a promotion source always precedes its
    /// targets.
    pub environments: Vec<Environment>,
    /// Where events are sent (`notifications:`).
    pub notifications: Vec<Notification>,
    /// When a condition becomes an alert (`alerts:`).
    pub alerts: Alerts,
    /// Who may do what, as written (`access:`); validated by [`crate::api::auth::AccessPolicy`].
    pub access: Vec<AccessRule>,
    /// Container image repositories whose new tags enter the pipeline (`images:`).
    pub images: Vec<ImageSource>,
}

/// One rule of the `access:` section: these groups hold these permissions in these
/// environments. `"*"` stands for every environment or every permission.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessRule {
    /// Groups of the token file the rule grants to.
    pub groups: Vec<String>,
    /// Environment names, or `*`.
    pub environments: Vec<String>,
    /// Permission names (`view`, `sync`, ...), or `*`.
    pub permissions: Vec<String>,
}

/// A JSON webhook that receives events, signed with HMAC-SHA256 when it has a secret.
#[derive(Debug, Clone, PartialEq)]
pub struct Notification {
    /// Names the webhook in logs and metrics.
    pub name: String,
    /// A file holding the URL (it often carries a token, so it is never in the pipeline).
    pub url_file: PathBuf,
    /// A file holding the HMAC key of the `X-Stagehand-Signature` header.
    pub secret_file: Option<PathBuf>,
    /// The events sent; empty for all of [`NOTIFICATION_EVENTS`].
    pub events: Vec<String>,
}

/// The event names a notification can subscribe to.
pub const NOTIFICATION_EVENTS: [&str; 6] = [
    "drifted",
    "healed",
    "pruned",
    "failed",
    "alert",
    "recovered",
];

impl Notification {
    /// Whether this webhook subscribes to `event`.
    pub fn wants(&self, event: &str) -> bool {
        self.events.is_empty() || self.events.iter().any(|e| e == event)
    }
}

/// Thresholds past which a condition of an environment is raised as an alert.
#[derive(Debug, Clone, PartialEq)]
pub struct Alerts {
    /// Drift still there after this long.
    pub drift_after: Duration,
    /// This many failed passes in a row.
    pub failures_in_a_row: u32,
}

impl Default for Alerts {
    fn default() -> Self {
        Self {
            drift_after: Duration::from_secs(600),
            failures_in_a_row: 3,
        }
    }
}

/// The repository every environment reads from.
#[derive(Debug, Clone, PartialEq)]
pub struct Repository {
    /// A URL (`file://`, `https://`, `ssh://`) or a path, relative paths being resolved against
    /// the directory of the pipeline file.
    pub url: String,
    /// The branch overlay-model environments live on.
    pub branch: String,
    /// Where this pipeline file itself lies in the repository (`pipelinePath`): the service
    /// follows the version on `branch` as it is fetched, the file on disk being only how it
    /// starts.
    pub pipeline_path: Option<String>,
    /// The settings that the copy at `pipeline_path` may set otherwise than the file on disk
    /// (`inRepository.mayChange`); every other setting must stay as the file on disk has it.
    pub may_change: std::collections::BTreeSet<in_repository::Setting>,
}

/// One environment: where its manifests are, where they go, and how changes reach it.
#[derive(Debug, Clone, PartialEq)]
pub struct Environment {
    /// Unique within the pipeline.
    pub name: String,
    /// The environment whose revisions promote into this one; `None` for the first.
    pub promotes_from: Option<String>,
    /// Where its manifests live in Git.
    pub source: Source,
    /// Where its objects go.
    pub cluster: Cluster,
    /// How and when it is synced.
    pub sync: SyncPolicy,
    /// Who must approve promotions into it.
    pub approval: ApprovalPolicy,
    /// When promotions into it wait.
    pub freeze_windows: Vec<FreezeWindow>,
    /// What a promotion into this environment carries over from its source.
    pub promote: PromotePolicy,
    /// When a promotion into this environment may start (`promotion:`).
    pub promotion: PromotionPolicy,
    /// What must hold after a promotion before it is Succeeded (`verify:`).
    pub verify: Option<Verify>,
    /// Which age identities decrypt this environment's SOPS files (`decryption:`).
    pub decryption: Decryption,
    /// Fields of its objects that other controllers own (`ignoreDifferences:`), in file order:
    /// a rule is named by its index.
    pub ignore_differences: Vec<IgnoreRule>,
    /// Every commit a promotion into this environment brings must carry a good SSH signature
    /// by an allowed key (`requireSignedCommits:`).
    pub require_signed_commits: Option<SignedCommits>,
}

/// `requireSignedCommits`: whose SSH signatures the commits of a promoted range must carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedCommits {
    /// Where the OpenSSH `allowed_signers` list is: on the service's side, never in the
    /// repository, whose commits it judges. Read again at every check.
    pub allowed_signers: AllowedSignersSource,
}

/// Where an environment's allowed signers are read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowedSignersSource {
    /// A file (`allowedSignersFile`), relative to the pipeline file on disk.
    File(PathBuf),
    /// An entry of a Secret in the service's own namespace (`allowedSignersSecret`), read
    /// through the API.
    Secret {
        /// The Secret's name.
        name: String,
        /// The entry (`allowed_signers` unless the file says otherwise).
        key: String,
    },
}

/// Which age identities an environment decrypts with. An environment with keys of its own
/// decrypts with nothing else, so an overlay that pulls in another environment's encrypted
/// file (by path, symlink or copy) cannot decrypt it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Decryption {
    /// The identities of the process, found as sops finds them (`SOPS_AGE_KEY_FILE`…): no
    /// environment of the pipeline has keys of its own.
    #[default]
    Shared,
    /// Only the identities in this file (`decryption.ageKeyFile`, or `<env>.agekey` in
    /// `spec.decryption.ageKeysDir`).
    AgeKeyFile(PathBuf),
    /// No identities: other environments have keys of their own and this one has none, so
    /// any SOPS file it reaches fails to decrypt.
    Nothing,
}

/// When and how promotions into an environment happen (`promotion:` in the file).
#[derive(Debug, Clone, PartialEq)]
pub struct PromotionPolicy {
    /// How long the source must have run a revision before it may be promoted.
    pub soak: Duration,
    /// Stagehand requests a promotion itself when the source is Healthy at a new revision (and
    /// has soaked); only without required approvals.
    pub auto: bool,
    /// The source must be Healthy at the promoted revision.
    pub require_healthy: bool,
    /// A newer request for this environment supersedes the queued ones instead of queueing
    /// behind them.
    pub supersede: bool,
}

impl Default for PromotionPolicy {
    fn default() -> Self {
        Self {
            soak: Duration::ZERO,
            auto: false,
            require_healthy: true,
            supersede: false,
        }
    }
}

/// What a promotion copies from the source environment into this one (`promote:` in the file).
#[derive(Debug, Clone, PartialEq)]
pub struct PromotePolicy {
    /// Overlay model: which `images:` entries of the source kustomization are copied.
    pub images: ImageSelection,
    /// Overlay model: files, relative to the overlay directory, copied whole.
    pub files: Vec<String>,
    /// Overlay model: single values inside YAML files of the overlay.
    pub fields: Vec<PromotedField>,
    /// Branch model: whether a target branch with commits its source lacks may be merged
    /// rather than the promotion refused.
    pub allow_merge: bool,
}

impl Default for PromotePolicy {
    /// Without a `promote:` section, promotions carry the image versions and nothing else.
    fn default() -> Self {
        Self {
            images: ImageSelection::All,
            files: Vec::new(),
            fields: Vec::new(),
            allow_merge: false,
        }
    }
}

/// Which `images:` entries a promotion copies.
#[derive(Debug, Clone, PartialEq)]
pub enum ImageSelection {
    /// Every entry (`images: ["*"]`, the default).
    All,
    /// Only the entries with these names; empty for none.
    Named(Vec<String>),
}

impl ImageSelection {
    /// Whether the entry named `name` is copied.
    pub fn includes(&self, name: &str) -> bool {
        match self {
            ImageSelection::All => true,
            ImageSelection::Named(names) => names.iter().any(|n| n == name),
        }
    }
}

/// One value in a YAML file of the overlay, such as `file: version.yaml, path: data.VERSION`.
#[derive(Debug, Clone, PartialEq)]
pub struct PromotedField {
    /// Relative to the overlay directory.
    pub file: String,
    /// Mapping keys from the document root.
    pub path: Vec<String>,
}

/// Where an environment's manifests live in Git.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// A directory on the repository's main branch.
    Overlay {
        /// Relative to the repository root.
        path: String,
    },
    /// The environment's own branch, optionally with a directory inside it.
    Branch {
        /// The branch.
        branch: String,
        /// Relative to the branch's root; empty for the root.
        path: String,
    },
}

/// The cluster an environment's objects go to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Cluster {
    /// The service account of the pod Stagehand runs in.
    InCluster,
    /// A kubeconfig file, optionally with a context other than its current one.
    Kubeconfig {
        /// The kubeconfig file.
        path: PathBuf,
        /// A context other than the file's current one.
        context: Option<String>,
    },
    /// A kubeconfig in an entry of a Secret in the service's own namespace, read through the
    /// API (never written to disk) and read again each pass (`kubeconfigSecret`), as Flux's
    /// `kubeConfig.secretRef` and Argo CD's cluster Secrets hold them.
    KubeconfigSecret {
        /// The Secret's name.
        name: String,
        /// The entry holding the kubeconfig (`value` unless the file says otherwise).
        key: String,
        /// A context other than the kubeconfig's current one.
        context: Option<String>,
    },
    /// The default kubeconfig (`KUBECONFIG` or `~/.kube/config`) with an optional context;
    /// without a context and without a kubeconfig, the service account of the pod.
    Default {
        /// A context other than the current one.
        context: Option<String>,
    },
}

/// How an environment is synced (`sync:` in the file).
#[derive(Debug, Clone, PartialEq)]
pub struct SyncPolicy {
    /// Between passes when nothing wakes the environment earlier.
    pub interval: Duration,
    /// Delete objects that left Git.
    pub prune: bool,
    /// Undo changes made in the cluster by others (drift).
    pub self_heal: bool,
    /// Start suspended: no pass applies until resumed.
    pub suspend: bool,
    /// How long applied objects may stay Progressing before they count as Failed.
    pub timeout: Duration,
    /// Take ownership of fields another field manager holds (server-side apply `force`).
    pub force: bool,
    /// Delete and create again an object whose change touches an immutable field.
    pub recreate: bool,
    /// Apply new revisions as soon as they are fetched (`sync: {auto: false}` waits for an
    /// explicit sync; the environment then shows as out of sync).
    pub auto: bool,
    /// Take over an object that exists without an owner (made by hand or by another tool)
    /// instead of failing on it; it is reported as adopted.
    pub adopt: bool,
    /// Prune adopted objects that leave Git (by default they are left in the cluster).
    pub prune_adopted: bool,
    /// Prune Namespaces that leave Git (deleting one deletes everything in it).
    pub prune_namespaces: bool,
    /// Prune CustomResourceDefinitions that leave Git (deleting one deletes every instance).
    pub prune_crds: bool,
    /// The largest share, in percent of the environment's objects, one pass may prune; a pass
    /// that would prune more deletes nothing and fails.
    pub max_prune_percent: u8,
}

/// Who must approve a promotion into an environment.
#[derive(Debug, Clone, PartialEq)]
pub struct ApprovalPolicy {
    /// Number of distinct approvers needed; zero means promotions into this environment need no
    /// approval.
    pub required: u32,
    /// Approvers must belong to one of these groups; empty means any authenticated user.
    pub groups: Vec<String>,
    /// The identity that requested a promotion may approve it.
    pub allow_self_approval: bool,
    /// Someone whose e-mail is the Git author of a commit in the promoted range may approve it
    /// (`false` asks for four eyes on the change itself).
    pub allow_author_approval: bool,
    /// Rollbacks need no approvals (by default they need them like promotions).
    pub exempt_rollbacks: bool,
}

impl Default for ApprovalPolicy {
    /// Without an `approval:` section, promotions need no approval.
    fn default() -> Self {
        Self {
            required: 0,
            groups: Vec::new(),
            allow_self_approval: false,
            allow_author_approval: true,
            exempt_rollbacks: false,
        }
    }
}

/// A window during which promotions into an environment wait.
#[derive(Debug, Clone, PartialEq)]
pub struct FreezeWindow {
    /// When it applies.
    pub schedule: FreezeSchedule,
    /// An IANA time zone name such as `Europe/Berlin`; `UTC` when the file gives none. Weekly
    /// times are read in it; absolute ones carry their own offset.
    pub timezone: String,
    /// Why promotions wait, as shown to the people waiting.
    pub reason: Option<String>,
}

/// When a freeze window applies: every week, or once.
#[derive(Debug, Clone, PartialEq)]
pub enum FreezeSchedule {
    /// Every week from `start` to `end` (which may be in the next week, `Fri 16:00` to
    /// `Mon 08:00`); never equal.
    Weekly {
        /// When the freeze begins.
        start: WeeklyTime,
        /// When it ends.
        end: WeeklyTime,
    },
    /// Once, from `from` to `until`; `until` is after `from`.
    Absolute {
        /// When it begins.
        from: jiff::Timestamp,
        /// When it ends.
        until: jiff::Timestamp,
    },
}

/// A point in the week, such as `Fri 16:00`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WeeklyTime {
    /// 0 = Monday … 6 = Sunday.
    pub weekday: u8,
    /// 0 to 23.
    pub hour: u8,
    /// 0 to 59.
    pub minute: u8,
}

impl std::fmt::Display for WeeklyTime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const DAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
        write!(
            f,
            "{} {:02}:{:02}",
            DAYS[usize::from(self.weekday)],
            self.hour,
            self.minute
        )
    }
}

impl Repository {
    /// The repository's URL as given, or its path resolved against the directory of the pipeline
    /// file it was read from.
    pub fn resolved_url(&self, pipeline_file: &Path) -> String {
        let url = &self.url;
        // `host:path` (scp-like) is a URL; `dir/repo:x` and `C:` style paths are not.
        let is_url = url.contains("://")
            || url
                .split_once(':')
                .is_some_and(|(host, _)| !host.contains('/'));
        if is_url || Path::new(url).is_absolute() {
            return url.clone();
        }
        let base = pipeline_file.parent().unwrap_or(Path::new("."));
        base.join(url).display().to_string()
    }
}

impl Pipeline {
    /// Reads and validates a pipeline file.
    pub fn load(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error {
            file: path.to_owned(),
            kind: ErrorKind::Read(source),
        })?;
        Self::parse(path, &text)
    }

    /// Validates pipeline text; `file` names the file in errors, and relative paths in it are
    /// resolved against its directory.
    pub fn parse(file: &Path, text: &str) -> Result<Self, Error> {
        validate::parse(file, text)
    }

    /// Validates pipeline text that was not read from `file` but stands in for it (the copy in
    /// the repository): errors name `name`, and relative paths resolve as they do in `file`.
    pub fn parse_for(file: &Path, name: &Path, text: &str) -> Result<Self, Error> {
        validate::parse_in(name, file.parent().unwrap_or(Path::new(".")), text)
    }

    /// The environment named `name`.
    pub fn environment(&self, name: &str) -> Option<&Environment> {
        self.environments.iter().find(|env| env.name == name)
    }

    /// The environments a revision can be promoted into from `name`.
    pub fn promotion_targets<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Environment> {
        self.environments
            .iter()
            .filter(move |env| env.promotes_from.as_deref() == Some(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repository(url: &str) -> Repository {
        Repository {
            url: url.into(),
            branch: "main".into(),
            pipeline_path: None,
            may_change: Default::default(),
        }
    }

    #[test]
    fn a_relative_repository_path_is_resolved_against_the_pipeline_file_and_urls_are_kept() {
        let file = Path::new("/srv/gitops/pipeline.yaml");
        assert_eq!(repository(".").resolved_url(file), "/srv/gitops/.");
        assert_eq!(
            repository("../repo").resolved_url(file),
            "/srv/gitops/../repo"
        );
        for url in [
            "/abs/repo",
            "file:///abs/repo",
            "https://git.example.com/shop.git",
            "git@git.example.com:shop.git",
        ] {
            assert_eq!(repository(url).resolved_url(file), url);
        }
        assert_eq!(
            repository("repo").resolved_url(Path::new("pipeline.yaml")),
            "repo"
        );
    }
}
