//! Turns the raw file into a [`Pipeline`], naming the field of every problem.

use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::file;
use super::in_repository::Setting;
use super::{
    API_VERSION, Alerts, AllowedSignersSource, ApprovalPolicy, Cluster, Decryption, Environment,
    FieldPath, FreezeSchedule, FreezeWindow, IgnoreRule, ImageSelection, KIND, NOTIFICATION_EVENTS,
    Notification, Pipeline, PromotePolicy, PromotedField, PromotionPolicy, Repository,
    SignedCommits, Source, SyncPolicy, WeeklyTime,
};

/// A pass may prune at most half of an environment's objects unless the file says otherwise: a
/// commit that drops most of an environment is more likely a mistake than a decommissioning.
const DEFAULT_MAX_PRUNE_PERCENT: u8 = 50;

/// Environments sync every five minutes unless the file says otherwise, like Flux's
/// common choice for Kustomizations.
const DEFAULT_INTERVAL: Duration = Duration::from_secs(300);
const DEFAULT_BRANCH: &str = "main";
/// How long applied objects may stay Progressing before health reports them Failed; Flux's
/// kustomize-controller waits as long by default.
const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(300);

/// A pipeline file that could not be read or is not valid. The message names the file and what
/// is wrong; the kind's own cause (an I/O or YAML error) is the source.
#[derive(Debug)]
pub struct Error {
    /// The pipeline file.
    pub file: PathBuf,
    /// What is wrong with it.
    pub kind: ErrorKind,
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "pipeline file {}: {}", self.file.display(), self.kind)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        std::error::Error::source(&self.kind)
    }
}

/// What is wrong with a pipeline file; the error around it names where.
#[derive(Debug, thiserror::Error)]
// Each variant is described by its message, and its fields by the names the message uses.
#[allow(missing_docs)]
pub enum ErrorKind {
    #[error("cannot read it")]
    Read(#[source] std::io::Error),
    #[error("not a valid pipeline document")]
    Syntax(#[source] serde_yaml_ng::Error),
    #[error("field {field}: {problem}")]
    Field { field: String, problem: String },
}

fn field(field: impl Into<String>, problem: impl Into<String>) -> ErrorKind {
    ErrorKind::Field {
        field: field.into(),
        problem: problem.into(),
    }
}

pub(super) fn parse(path: &Path, text: &str) -> Result<Pipeline, Error> {
    parse_in(path, path.parent().unwrap_or(Path::new(".")), text)
}

/// `base`: the directory relative key paths are resolved against, that of the pipeline file
/// on disk (as the repository path is).
pub(super) fn parse_in(path: &Path, base: &Path, text: &str) -> Result<Pipeline, Error> {
    let wrap = |kind| Error {
        file: path.to_owned(),
        kind,
    };
    let raw: file::PipelineFile =
        serde_yaml_ng::from_str(text).map_err(|e| wrap(ErrorKind::Syntax(e)))?;
    validate(raw, base).map_err(wrap)
}

fn validate(raw: file::PipelineFile, base: &Path) -> Result<Pipeline, ErrorKind> {
    if raw.api_version != API_VERSION {
        return Err(field(
            "apiVersion",
            format!("is {:?}, expected {API_VERSION:?}", raw.api_version),
        ));
    }
    if raw.kind != KIND {
        return Err(field(
            "kind",
            format!("is {:?}, expected {KIND:?}", raw.kind),
        ));
    }
    check_name("metadata.name", &raw.metadata.name)?;

    let repository = match raw.spec.repository {
        Some(repo) => {
            if repo.url.trim().is_empty() {
                return Err(field("spec.repository.url", "must not be empty"));
            }
            check_no_credentials("spec.repository.url", &repo.url)?;
            let branch = repo.branch.unwrap_or_else(|| DEFAULT_BRANCH.to_owned());
            check_branch("spec.repository.branch", &branch)?;
            let pipeline_path = repo
                .pipeline_path
                .map(|path| relative_path("spec.repository.pipelinePath", &path))
                .transpose()?;
            let may_change = match repo.in_repository {
                None => Default::default(),
                Some(_) if pipeline_path.is_none() => {
                    return Err(field(
                        "spec.repository.inRepository",
                        "is set, but there is no copy in the repository (no pipelinePath)",
                    ));
                }
                Some(in_repository) => may_change(in_repository.may_change)?,
            };
            Repository {
                url: repo.url,
                branch,
                pipeline_path,
                may_change,
            }
        }
        None => Repository {
            url: ".".to_owned(),
            branch: DEFAULT_BRANCH.to_owned(),
            pipeline_path: None,
            may_change: Default::default(),
        },
    };

    if raw.spec.environments.is_empty() {
        return Err(field(
            "spec.environments",
            "must list at least one environment",
        ));
    }
    let mut seen = HashSet::new();
    let mut environments = Vec::with_capacity(raw.spec.environments.len());
    for (index, env) in raw.spec.environments.into_iter().enumerate() {
        let at = format!("spec.environments[{index}]");
        check_name(&format!("{at}.name"), &env.name)?;
        if let Some(from) = &env.promotes_from {
            if from == &env.name {
                return Err(field(
                    format!("{at}.promotesFrom"),
                    format!("environment {:?} cannot promote from itself", env.name),
                ));
            }
            if !seen.contains(from.as_str()) {
                return Err(field(
                    format!("{at}.promotesFrom"),
                    format!(
                        "names {from:?}, which is not an environment listed before {:?}",
                        env.name
                    ),
                ));
            }
        }
        let environment = validate_environment(&at, env, &repository, base)?;
        if !seen.insert(environment.name.clone()) {
            return Err(field(
                format!("{at}.name"),
                format!("environment {:?} is listed twice", environment.name),
            ));
        }
        environments.push(environment);
    }

    let mut notifications = Vec::new();
    for (i, n) in raw.spec.notifications.into_iter().enumerate() {
        let at = format!("spec.notifications[{i}]");
        check_name(&format!("{at}.name"), &n.name)?;
        if notifications
            .iter()
            .any(|o: &Notification| o.name == n.name)
        {
            return Err(field(
                format!("{at}.name"),
                format!("{:?} is listed twice", n.name),
            ));
        }
        if n.url_file.trim().is_empty() {
            return Err(field(
                format!("{at}.urlFile"),
                "must name a file holding the URL",
            ));
        }
        for event in &n.events {
            if !NOTIFICATION_EVENTS.contains(&event.as_str()) {
                return Err(field(
                    format!("{at}.events"),
                    format!("{event:?} is not one of {}", NOTIFICATION_EVENTS.join(", ")),
                ));
            }
        }
        notifications.push(Notification {
            name: n.name,
            url_file: n.url_file.into(),
            secret_file: n.secret_file.map(Into::into),
            events: n.events,
        });
    }
    let mut alerts = Alerts::default();
    if let Some(raw) = raw.spec.alerts {
        if let Some(text) = raw.drift_after {
            alerts.drift_after = humantime::parse_duration(&text).map_err(|e| {
                field(
                    "spec.alerts.driftAfter",
                    format!("{text:?} is not a duration such as 30s or 5m: {e}"),
                )
            })?;
        }
        if let Some(n) = raw.failures_in_a_row {
            if n == 0 {
                return Err(field("spec.alerts.failuresInARow", "must be at least 1"));
            }
            alerts.failures_in_a_row = n;
        }
    }

    decryption(raw.spec.decryption, base, &mut environments)?;
    let images = images::images(raw.spec.images, &environments, base)?;

    Ok(Pipeline {
        name: raw.metadata.name,
        repository,
        environments,
        notifications,
        alerts,
        access: raw.spec.access,
        images,
    })
}

/// The settings listed in `spec.repository.inRepository.mayChange`.
fn may_change(names: Vec<String>) -> Result<BTreeSet<Setting>, ErrorKind> {
    let mut settings = BTreeSet::new();
    for (i, name) in names.iter().enumerate() {
        let at = format!("spec.repository.inRepository.mayChange[{i}]");
        if name == "repository" {
            return Err(field(
                at,
                "the repository (its URL, branch, pipelinePath and this list) is only ever \
                 taken from the pipeline file on disk",
            ));
        }
        let setting = name
            .parse::<Setting>()
            .map_err(|problem| field(&at, problem))?;
        if !settings.insert(setting) {
            return Err(field(at, format!("{name:?} is listed twice")));
        }
    }
    Ok(settings)
}

/// A Kubernetes object name that is a DNS subdomain, as Secret names are.
fn valid_secret_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// A key of a Secret's `data`, as the apiserver accepts it.
fn valid_secret_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 253
        && key != "."
        && key != ".."
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Gives every environment without a key file of its own the `<env>.agekey` of the keys
/// directory; once any environment has keys of its own, the others get none rather than the
/// process's, so no environment decrypts with another's keys.
fn decryption(
    spec: Option<file::SpecDecryption>,
    base: &Path,
    environments: &mut [Environment],
) -> Result<(), ErrorKind> {
    if let Some(spec) = spec {
        if spec.age_keys_dir.trim().is_empty() {
            return Err(field("spec.decryption.ageKeysDir", "must not be empty"));
        }
        let dir = base.join(spec.age_keys_dir);
        for env in environments.iter_mut() {
            if env.decryption == Decryption::Shared {
                env.decryption = Decryption::AgeKeyFile(dir.join(format!("{}.agekey", env.name)));
            }
        }
    }
    if environments
        .iter()
        .any(|e| matches!(e.decryption, Decryption::AgeKeyFile(_)))
    {
        for env in environments.iter_mut() {
            if env.decryption == Decryption::Shared {
                env.decryption = Decryption::Nothing;
            }
        }
    }
    Ok(())
}

fn validate_environment(
    at: &str,
    env: file::Environment,
    repository: &Repository,
    base: &Path,
) -> Result<Environment, ErrorKind> {
    let source = match (env.source.overlay, env.source.branch, env.source.path) {
        (Some(overlay), None, None) => Source::Overlay {
            path: relative_path(&format!("{at}.source.overlay"), &overlay)?,
        },
        (None, Some(branch), path) => {
            if branch.trim().is_empty() {
                return Err(field(format!("{at}.source.branch"), "must not be empty"));
            }
            check_branch(&format!("{at}.source.branch"), &branch)?;
            let path = match path {
                Some(path) => relative_path(&format!("{at}.source.path"), &path)?,
                None => String::new(),
            };
            Source::Branch { branch, path }
        }
        (Some(_), Some(_), _) => {
            return Err(field(
                format!("{at}.source"),
                "give either overlay (a directory on the main branch) or branch, not both",
            ));
        }
        (Some(_), None, Some(_)) => {
            return Err(field(
                format!("{at}.source.path"),
                "path goes with branch; an overlay source is itself a path",
            ));
        }
        (None, None, _) => {
            return Err(field(
                format!("{at}.source"),
                format!(
                    "needs overlay (a directory on branch {:?}) or branch",
                    repository.branch
                ),
            ));
        }
    };

    let cluster = match env.cluster {
        None => Cluster::Default { context: None },
        Some(file::Cluster {
            in_cluster: true,
            kubeconfig: None,
            kubeconfig_secret: None,
            context: None,
        }) => Cluster::InCluster,
        Some(file::Cluster {
            in_cluster: true, ..
        }) => {
            return Err(field(
                format!("{at}.cluster.inCluster"),
                "cannot be combined with kubeconfig, kubeconfigSecret or context",
            ));
        }
        Some(file::Cluster {
            kubeconfig: Some(_),
            kubeconfig_secret: Some(_),
            ..
        }) => {
            return Err(field(
                format!("{at}.cluster.kubeconfigSecret"),
                "give either kubeconfig (a file) or kubeconfigSecret, not both",
            ));
        }
        Some(file::Cluster {
            kubeconfig_secret: Some(secret),
            context,
            ..
        }) => {
            let name_at = format!("{at}.cluster.kubeconfigSecret.name");
            if !valid_secret_name(&secret.name) {
                return Err(field(
                    name_at,
                    format!(
                        "{:?} is not a Secret name (lower-case DNS subdomain)",
                        secret.name
                    ),
                ));
            }
            let key = secret.key.unwrap_or_else(|| "value".to_owned());
            if !valid_secret_key(&key) {
                return Err(field(
                    format!("{at}.cluster.kubeconfigSecret.key"),
                    format!("{key:?} is not a Secret key (letters, digits, '-', '_', '.')"),
                ));
            }
            Cluster::KubeconfigSecret {
                name: secret.name,
                key,
                context,
            }
        }
        Some(file::Cluster {
            kubeconfig: Some(path),
            context,
            ..
        }) => Cluster::Kubeconfig {
            path: PathBuf::from(path),
            context,
        },
        Some(file::Cluster {
            kubeconfig: None,
            context,
            ..
        }) => Cluster::Default { context },
    };

    let sync = env.sync.unwrap_or_default();
    let interval = match sync.interval {
        None => DEFAULT_INTERVAL,
        Some(text) => {
            let interval = humantime::parse_duration(&text).map_err(|e| {
                field(
                    format!("{at}.sync.interval"),
                    format!("{text:?} is not a duration such as 30s or 5m: {e}"),
                )
            })?;
            if interval.is_zero() {
                return Err(field(format!("{at}.sync.interval"), "must be above zero"));
            }
            interval
        }
    };
    let timeout = match sync.timeout {
        None => DEFAULT_HEALTH_TIMEOUT,
        Some(text) => humantime::parse_duration(&text).map_err(|e| {
            field(
                format!("{at}.sync.timeout"),
                format!("{text:?} is not a duration such as 30s or 5m: {e}"),
            )
        })?,
    };
    let sync = SyncPolicy {
        interval,
        prune: sync.prune.unwrap_or(true),
        self_heal: sync.self_heal.unwrap_or(true),
        suspend: sync.suspend,
        timeout,
        force: sync.force,
        recreate: sync.recreate,
        auto: sync.auto.unwrap_or(true),
        adopt: sync.adopt,
        prune_adopted: sync.prune_adopted,
        prune_namespaces: sync.prune_namespaces,
        prune_crds: sync.prune_crds,
        max_prune_percent: match sync.max_prune_percent {
            None => DEFAULT_MAX_PRUNE_PERCENT,
            Some(percent) if percent <= 100 => percent,
            Some(percent) => {
                return Err(field(
                    format!("{at}.sync.maxPrunePercent"),
                    format!("{percent} is not a percentage (0 to 100)"),
                ));
            }
        },
    };

    let approval = env
        .approval
        .map_or_else(ApprovalPolicy::default, |a| ApprovalPolicy {
            required: a.required,
            groups: a.groups,
            allow_self_approval: a.allow_self_approval,
            allow_author_approval: a.allow_author_approval.unwrap_or(true),
            exempt_rollbacks: a.exempt_rollbacks,
        });
    if approval.required > 0 && env.promotes_from.is_none() {
        return Err(field(
            format!("{at}.approval.required"),
            "is set, but nothing is promoted into this environment (it has no promotesFrom)",
        ));
    }

    let freeze_windows = env
        .freeze_windows
        .into_iter()
        .enumerate()
        .map(|(i, w)| freeze_window(&format!("{at}.freezeWindows[{i}]"), w))
        .collect::<Result<_, _>>()?;

    let promotion = match env.promotion {
        None => PromotionPolicy::default(),
        Some(_) if env.promotes_from.is_none() => {
            return Err(field(
                format!("{at}.promotion"),
                "is set, but nothing is promoted into this environment (it has no promotesFrom)",
            ));
        }
        Some(p) => {
            let soak = match p.soak {
                None => Duration::ZERO,
                Some(text) => humantime::parse_duration(&text).map_err(|e| {
                    field(
                        format!("{at}.promotion.soak"),
                        format!("{text:?} is not a duration such as 30m or 1h: {e}"),
                    )
                })?,
            };
            if p.auto && approval.required > 0 {
                return Err(field(
                    format!("{at}.promotion.auto"),
                    format!(
                        "cannot be true while approval.required is {}: an automatic promotion \
                         has nobody to collect approvals from (set required to 0, or leave auto off)",
                        approval.required
                    ),
                ));
            }
            PromotionPolicy {
                soak,
                auto: p.auto,
                require_healthy: p.require_healthy.unwrap_or(true),
                supersede: p.supersede,
            }
        }
    };

    let verify = match env.verify {
        None => None,
        Some(v) => Some(verify::verify(&format!("{at}.verify"), v, base)?),
    };

    let promote = match env.promote {
        None => PromotePolicy::default(),
        Some(_) if env.promotes_from.is_none() => {
            return Err(field(
                format!("{at}.promote"),
                "is set, but nothing is promoted into this environment (it has no promotesFrom)",
            ));
        }
        Some(promote) => validate_promote(&format!("{at}.promote"), promote)?,
    };

    let decryption = match env.decryption {
        None => Decryption::Shared,
        Some(d) if d.age_key_file.trim().is_empty() => {
            return Err(field(
                format!("{at}.decryption.ageKeyFile"),
                "must not be empty",
            ));
        }
        Some(d) => Decryption::AgeKeyFile(base.join(d.age_key_file)),
    };

    let ignore_differences = env
        .ignore_differences
        .into_iter()
        .enumerate()
        .map(|(i, rule)| {
            ignore_rule(&format!("{at}.ignoreDifferences[{i}]"), rule).map_err(|e| match e {
                // The index alone is hard to count in a long file: name the environment too.
                ErrorKind::Field { field, problem } => ErrorKind::Field {
                    field,
                    problem: format!("{problem} (environment {:?})", env.name),
                },
                other => other,
            })
        })
        .collect::<Result<_, _>>()?;
    let require_signed_commits = match env.require_signed_commits {
        None => None,
        Some(_) if env.promotes_from.is_none() => {
            return Err(field(
                format!("{at}.requireSignedCommits"),
                "is set, but nothing is promoted into this environment (it has no promotesFrom)",
            ));
        }
        Some(r) => {
            let at = format!("{at}.requireSignedCommits");
            let allowed_signers = match (r.allowed_signers_file, r.allowed_signers_secret) {
                (Some(_), Some(_)) => {
                    return Err(field(
                        format!("{at}.allowedSignersSecret"),
                        "give either allowedSignersFile or allowedSignersSecret, not both",
                    ));
                }
                (None, None) => {
                    return Err(field(
                        at,
                        "needs allowedSignersFile (a file on the service's side) or \
                         allowedSignersSecret (a Secret of the service's namespace)",
                    ));
                }
                (Some(file), None) if file.trim().is_empty() => {
                    return Err(field(
                        format!("{at}.allowedSignersFile"),
                        "must not be empty",
                    ));
                }
                (Some(file), None) => AllowedSignersSource::File(base.join(file)),
                (None, Some(secret)) => {
                    if !valid_secret_name(&secret.name) {
                        return Err(field(
                            format!("{at}.allowedSignersSecret.name"),
                            format!(
                                "{:?} is not a Secret name (lower-case DNS subdomain)",
                                secret.name
                            ),
                        ));
                    }
                    let key = secret.key.unwrap_or_else(|| "allowed_signers".to_owned());
                    if !valid_secret_key(&key) {
                        return Err(field(
                            format!("{at}.allowedSignersSecret.key"),
                            format!("{key:?} is not a Secret key (letters, digits, '-', '_', '.')"),
                        ));
                    }
                    AllowedSignersSource::Secret {
                        name: secret.name,
                        key,
                    }
                }
            };
            Some(SignedCommits { allowed_signers })
        }
    };

    Ok(Environment {
        name: env.name,
        promotes_from: env.promotes_from,
        source,
        cluster,
        sync,
        approval,
        freeze_windows,
        promote,
        promotion,
        verify,
        decryption,
        ignore_differences,
        require_signed_commits,
    })
}

/// One `ignoreDifferences` rule: which objects (a kind is required, so that a rule never
/// reaches every object by accident) and at least one field or field manager.
fn ignore_rule(at: &str, raw: file::IgnoreDifference) -> Result<IgnoreRule, ErrorKind> {
    let kind = match raw.kind {
        None => {
            return Err(field(
                format!("{at}.kind"),
                "is missing: a rule names the kind of the objects it selects, such as Deployment",
            ));
        }
        Some(kind) => kind,
    };
    let is_kind = kind.starts_with(|c: char| c.is_ascii_alphabetic())
        && kind.chars().all(|c| c.is_ascii_alphanumeric());
    if !is_kind {
        return Err(field(
            format!("{at}.kind"),
            format!("{kind:?} is not a Kubernetes kind such as Deployment (letters and digits)"),
        ));
    }
    if let Some(group) = &raw.group {
        // The core group is the empty one, as in an apiVersion without a slash.
        if !group.is_empty() && !valid_secret_name(group) {
            return Err(field(
                format!("{at}.group"),
                format!(
                    "{group:?} is not an API group such as apps (\"\" for the core group of \
                     ConfigMaps and Services)"
                ),
            ));
        }
    }
    if let Some(name) = &raw.name
        && (name.is_empty() || name.contains('/') || name.chars().any(char::is_whitespace))
    {
        return Err(field(
            format!("{at}.name"),
            format!("{name:?} is not an object name"),
        ));
    }
    if let Some(namespace) = &raw.namespace {
        check_name(&format!("{at}.namespace"), namespace)?;
    }
    let mut fields = Vec::new();
    for (i, text) in raw.json_pointers.iter().enumerate() {
        fields.push(
            FieldPath::from_pointer(text)
                .map_err(|p| field(format!("{at}.jsonPointers[{i}]"), p))?,
        );
    }
    for (i, text) in raw.field_paths.iter().enumerate() {
        fields.push(
            FieldPath::from_dotted(text).map_err(|p| field(format!("{at}.fieldPaths[{i}]"), p))?,
        );
    }
    for (i, manager) in raw.managed_fields_managers.iter().enumerate() {
        super::ignore::check_manager(manager)
            .map_err(|p| field(format!("{at}.managedFieldsManagers[{i}]"), p))?;
    }
    if fields.is_empty() && raw.managed_fields_managers.is_empty() {
        return Err(field(
            at,
            "ignores nothing: give jsonPointers, fieldPaths or managedFieldsManagers",
        ));
    }
    Ok(IgnoreRule {
        group: raw.group,
        kind,
        name: raw.name,
        namespace: raw.namespace,
        fields,
        managers: raw.managed_fields_managers,
    })
}

fn freeze_window(at: &str, w: file::FreezeWindow) -> Result<FreezeWindow, ErrorKind> {
    let timezone = w.timezone.unwrap_or_else(|| "UTC".to_owned());
    if timezone.trim().is_empty() {
        return Err(field(format!("{at}.timezone"), "must not be empty"));
    }
    // UTC needs no database, so a machine without tzdata still takes the default.
    if timezone != "UTC" && jiff::tz::TimeZone::get(&timezone).is_err() {
        return Err(field(
            format!("{at}.timezone"),
            format!("{timezone:?} is not an IANA time zone name such as Europe/Berlin or UTC"),
        ));
    }
    if let Some(reason) = &w.reason
        && reason.trim().is_empty()
    {
        return Err(field(format!("{at}.reason"), "must not be empty"));
    }
    let schedule = match (w.start, w.end, w.from, w.until) {
        (Some(start), Some(end), None, None) => {
            let start = weekly_time(&format!("{at}.start"), &start)?;
            let end = weekly_time(&format!("{at}.end"), &end)?;
            if start == end {
                return Err(field(
                    format!("{at}.end"),
                    format!("is {end}, the same as start: a window must have a length"),
                ));
            }
            FreezeSchedule::Weekly { start, end }
        }
        (None, None, Some(from), Some(until)) => {
            let from = timestamp(&format!("{at}.from"), &from)?;
            let until = timestamp(&format!("{at}.until"), &until)?;
            if until <= from {
                return Err(field(
                    format!("{at}.until"),
                    format!("{until} is not after from ({from})"),
                ));
            }
            FreezeSchedule::Absolute { from, until }
        }
        (start, end, from, until) => {
            let weekly = start.is_some() || end.is_some();
            let absolute = from.is_some() || until.is_some();
            let problem = if weekly && absolute {
                "mixes a weekly window (start, end) with an absolute one (from, until); give one \
                 pair per window"
            } else if weekly {
                "a weekly window needs both start and end, such as start: \"Fri 16:00\", \
                 end: \"Mon 08:00\""
            } else if absolute {
                "an absolute window needs both from and until, as RFC 3339 times such as \
                 \"2026-12-20T00:00:00Z\""
            } else {
                "needs start and end (weekly) or from and until (absolute)"
            };
            return Err(field(at, problem));
        }
    };
    Ok(FreezeWindow {
        schedule,
        timezone,
        reason: w.reason,
    })
}

fn timestamp(at: &str, text: &str) -> Result<jiff::Timestamp, ErrorKind> {
    text.trim().parse().map_err(|e| {
        field(
            at,
            format!(
                "{text:?} is not an RFC 3339 time with an offset, such as \
                 \"2026-12-20T00:00:00Z\" or \"2027-01-04T08:00:00+01:00\": {e}"
            ),
        )
    })
}

/// Kubernetes object names (a Job's, here) are DNS subdomains: lowercase letters, digits, '-'
/// and '.', at most 253, starting and ending with a letter or digit.
fn check_object_name(at: &str, name: &str) -> Result<(), ErrorKind> {
    let valid = !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if valid {
        Ok(())
    } else {
        Err(field(
            at,
            format!(
                "{name:?} is not a Kubernetes object name (lowercase letters, digits, '-' and \
                 '.', starting and ending with a letter or digit)"
            ),
        ))
    }
}

fn validate_promote(at: &str, promote: file::Promote) -> Result<PromotePolicy, ErrorKind> {
    let images = match promote.images {
        None => ImageSelection::All,
        Some(names) if names.iter().any(|n| n == "*") => {
            if names.len() > 1 {
                return Err(field(
                    format!("{at}.images"),
                    "\"*\" (every image) cannot be combined with names",
                ));
            }
            ImageSelection::All
        }
        Some(names) => {
            if let Some(i) = names.iter().position(|n| n.trim().is_empty()) {
                return Err(field(format!("{at}.images[{i}]"), "must not be empty"));
            }
            ImageSelection::Named(names)
        }
    };
    let files = promote
        .files
        .iter()
        .enumerate()
        .map(|(i, f)| relative_path(&format!("{at}.files[{i}]"), f))
        .collect::<Result<_, _>>()?;
    let fields = promote
        .fields
        .into_iter()
        .enumerate()
        .map(|(i, f)| {
            let file = relative_path(&format!("{at}.fields[{i}].file"), &f.file)?;
            let path: Vec<String> = f.path.split('.').map(str::to_owned).collect();
            if path.iter().any(|p| p.trim().is_empty()) {
                return Err(field(
                    format!("{at}.fields[{i}].path"),
                    format!("{:?} is not a dotted key path such as data.VERSION", f.path),
                ));
            }
            Ok(PromotedField { file, path })
        })
        .collect::<Result<_, _>>()?;
    Ok(PromotePolicy {
        images,
        files,
        fields,
        allow_merge: promote.allow_merge,
    })
}

/// Environment and pipeline names end up in labels, branch names and trailers, so they follow
/// the Kubernetes DNS label rules.
fn check_name(at: &str, name: &str) -> Result<(), ErrorKind> {
    let valid = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if valid {
        Ok(())
    } else {
        Err(field(
            at,
            format!(
                "{name:?} is not a valid name (lowercase letters, digits and '-', at most 63, \
                 starting and ending with a letter or digit)"
            ),
        ))
    }
}

/// Tokens and passwords come from files given to the service, never from the pipeline file,
/// which is committed to Git and printed in logs. Any user info in an http(s) URL counts (a
/// token is often written as the user name); ssh URLs may name the login user but not a
/// password. The URL itself is not repeated, since it holds the secret.
fn check_no_credentials(at: &str, url: &str) -> Result<(), ErrorKind> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Ok(());
    };
    let authority = rest.split('/').next().unwrap_or("");
    let Some((user_info, _)) = authority.rsplit_once('@') else {
        return Ok(());
    };
    let http = scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https");
    if http || user_info.contains(':') {
        return Err(field(
            at,
            format!(
                "the {scheme} URL carries credentials before '@'; remove them and give the \
                 token in a file (--git-token-file)"
            ),
        ));
    }
    Ok(())
}

/// A branch becomes `refs/heads/<branch>` in fetches, pushes and promotion commits, so it must
/// be a name git accepts for a branch.
fn check_branch(at: &str, branch: &str) -> Result<(), ErrorKind> {
    let full = format!("refs/heads/{branch}");
    let problem = if branch.starts_with('-') {
        Some("starts with '-'".to_owned())
    } else {
        gix::validate::reference::branch_name(full.as_bytes().into())
            .err()
            .map(|e| e.to_string())
    };
    match problem {
        None => Ok(()),
        Some(problem) => Err(field(
            at,
            format!("{branch:?} is not a valid branch name: {problem}"),
        )),
    }
}

/// Paths in the pipeline are relative to the repository root and may not leave it.
fn relative_path(at: &str, path: &str) -> Result<String, ErrorKind> {
    let trimmed = path.trim_matches('/');
    if path.starts_with('/') {
        return Err(field(
            at,
            format!("{path:?} must be relative to the repository root"),
        ));
    }
    if trimmed.split('/').any(|part| part == "..") {
        return Err(field(at, format!("{path:?} leaves the repository root")));
    }
    if trimmed.is_empty() {
        return Err(field(at, "must not be empty"));
    }
    Ok(trimmed.to_owned())
}

fn weekly_time(at: &str, text: &str) -> Result<WeeklyTime, ErrorKind> {
    let bad = || {
        field(
            at,
            format!("{text:?} is not a weekly time such as \"Fri 16:00\""),
        )
    };
    let (day, time) = text.trim().split_once(' ').ok_or_else(bad)?;
    let weekday = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
        .iter()
        .position(|d| {
            day.trim()
                .get(..3)
                .is_some_and(|p| p.eq_ignore_ascii_case(d))
        })
        .ok_or_else(bad)?;
    let (hour, minute) = time.trim().split_once(':').ok_or_else(bad)?;
    let hour: u8 = hour.parse().map_err(|_| bad())?;
    let minute: u8 = minute.parse().map_err(|_| bad())?;
    if hour > 23 || minute > 59 {
        return Err(bad());
    }
    Ok(WeeklyTime {
        weekday: u8::try_from(weekday).expect("seven weekdays fit in u8"),
        hour,
        minute,
    })
}

mod images;
mod verify;

#[cfg(test)]
mod tests;
