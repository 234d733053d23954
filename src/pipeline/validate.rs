//! Turns the raw file into a [`Pipeline`], naming the field of every problem.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::file;
use super::{
    API_VERSION, Alerts, ApprovalPolicy, Cluster, Decryption, Environment, FreezeSchedule,
    FreezeWindow, ImageSelection, KIND, NOTIFICATION_EVENTS, Notification, Pipeline, PromotePolicy,
    PromotedField, PromotionPolicy, Repository, Source, SyncPolicy, Verify, WeeklyTime,
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
    pub file: PathBuf,
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

#[derive(Debug, thiserror::Error)]
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
    let wrap = |kind| Error {
        file: path.to_owned(),
        kind,
    };
    let raw: file::PipelineFile =
        serde_yaml_ng::from_str(text).map_err(|e| wrap(ErrorKind::Syntax(e)))?;
    // Key paths are relative to the pipeline file, as the repository path is.
    let base = path.parent().unwrap_or(Path::new("."));
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
            Repository {
                url: repo.url,
                branch,
            }
        }
        None => Repository {
            url: ".".to_owned(),
            branch: DEFAULT_BRANCH.to_owned(),
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

    Ok(Pipeline {
        name: raw.metadata.name,
        repository,
        environments,
        notifications,
        alerts,
        access: raw.spec.access,
    })
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
            context: None,
        }) => Cluster::InCluster,
        Some(file::Cluster {
            in_cluster: true, ..
        }) => {
            return Err(field(
                format!("{at}.cluster.inCluster"),
                "cannot be combined with kubeconfig or context",
            ));
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
        Some(v) => {
            check_object_name(&format!("{at}.verify.job"), &v.job)?;
            Some(Verify { job: v.job })
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    const DEMO: &str = r#"
apiVersion: stagehand.dev/v1alpha1
kind: Pipeline
metadata: {name: shop}
spec:
  environments:
    - name: dev
      source: {overlay: environments/dev}
      sync: {interval: 30s}
    - name: staging
      promotesFrom: dev
      source: {overlay: environments/staging}
      approval: {required: 1, groups: [qa]}
    - name: prod
      promotesFrom: staging
      source: {branch: env/prod, path: environments/prod}
      cluster: {kubeconfig: /etc/stagehand/prod.kubeconfig, context: prod}
      approval: {required: 2, groups: [release-managers]}
      freezeWindows: [{start: "Fri 16:00", end: "Mon 08:00", timezone: Europe/Berlin}]
"#;

    fn parse_err(text: &str) -> String {
        let err = parse(Path::new("pipeline.yaml"), text).expect_err("the text is invalid");
        crate::error_chain::ErrorChain(&err).to_string()
    }

    #[test]
    fn decryption_keys_follow_their_precedence_and_never_fall_back_to_the_process() {
        let file = Path::new("/gitops/pipeline.yaml");
        let decryption = |text: &str| -> Vec<Decryption> {
            parse(file, text)
                .expect("valid")
                .environments
                .into_iter()
                .map(|e| e.decryption)
                .collect()
        };
        assert!(decryption(DEMO).iter().all(|d| *d == Decryption::Shared));
        let own = DEMO.replace(
            "      sync: {interval: 30s}\n",
            "      sync: {interval: 30s}\n      decryption: {ageKeyFile: keys/mine.txt}\n",
        );
        assert_eq!(
            decryption(&own),
            [
                Decryption::AgeKeyFile("/gitops/keys/mine.txt".into()),
                Decryption::Nothing,
                Decryption::Nothing,
            ]
        );
        let dir = own.replace("spec:\n", "spec:\n  decryption: {ageKeysDir: /keys}\n");
        assert_eq!(
            decryption(&dir),
            [
                Decryption::AgeKeyFile("/gitops/keys/mine.txt".into()),
                Decryption::AgeKeyFile("/keys/staging.agekey".into()),
                Decryption::AgeKeyFile("/keys/prod.agekey".into()),
            ]
        );
        let empty = DEMO.replace("spec:\n", "spec:\n  decryption: {ageKeysDir: \" \"}\n");
        assert!(parse_err(&empty).contains("spec.decryption.ageKeysDir"));
    }

    #[test]
    fn the_design_example_parses_with_defaults_filled_in() {
        let p = parse(Path::new("pipeline.yaml"), DEMO).expect("the example is valid");
        assert_eq!(p.name, "shop");
        assert_eq!(p.repository.url, ".");
        let names: Vec<_> = p.environments.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["dev", "staging", "prod"]);
        let dev = p.environment("dev").expect("dev exists");
        assert_eq!(dev.sync.interval, Duration::from_secs(30));
        assert!(dev.sync.prune && dev.sync.self_heal);
        assert_eq!(dev.sync.timeout, Duration::from_secs(300));
        assert!(!dev.sync.force && !dev.sync.recreate);
        let prod = p.environment("prod").expect("prod exists");
        assert_eq!(
            prod.source,
            Source::Branch {
                branch: "env/prod".into(),
                path: "environments/prod".into()
            }
        );
        assert_eq!(prod.approval.required, 2);
        let FreezeSchedule::Weekly { start, end } = &prod.freeze_windows[0].schedule else {
            panic!("start and end make a weekly window");
        };
        assert_eq!(start.to_string(), "Fri 16:00");
        assert_eq!(end.weekday, 0);
        assert_eq!(prod.freeze_windows[0].reason, None);
        assert_eq!(
            prod.approval,
            ApprovalPolicy {
                required: 2,
                groups: vec!["release-managers".into()],
                allow_self_approval: false,
                allow_author_approval: true,
                exempt_rollbacks: false,
            }
        );
        assert_eq!(prod.promotion, PromotionPolicy::default());
        assert!(prod.promotion.require_healthy && !prod.promotion.auto);
        assert_eq!(prod.verify, None);
        let targets: Vec<_> = p.promotion_targets("dev").map(|e| &e.name).collect();
        assert_eq!(targets, ["staging"]);
    }

    #[test]
    fn a_misspelt_field_is_rejected_by_name() {
        let text = DEMO.replace("promotesFrom: dev", "promoteFrom: dev");
        let err = parse_err(&text);
        assert!(err.contains("pipeline.yaml"), "{err}");
        assert!(err.contains("promoteFrom"), "{err}");
    }

    #[test]
    fn promoting_from_a_later_or_unknown_environment_is_rejected() {
        let err = parse_err(&DEMO.replace("promotesFrom: staging", "promotesFrom: qa"));
        assert!(
            err.contains("spec.environments[2].promotesFrom") && err.contains("\"qa\""),
            "{err}"
        );
    }

    #[test]
    fn duplicate_environment_names_are_rejected() {
        let err = parse_err(&DEMO.replace("- name: prod", "- name: dev"));
        assert!(err.contains("spec.environments[2].name"), "{err}");
        assert!(err.contains("listed twice"), "{err}");
    }

    #[test]
    fn a_source_with_overlay_and_branch_is_rejected() {
        let err = parse_err(&DEMO.replace(
            "source: {overlay: environments/dev}",
            "source: {overlay: environments/dev, branch: dev}",
        ));
        assert!(err.contains("spec.environments[0].source"), "{err}");
    }

    #[test]
    fn paths_that_leave_the_repository_are_rejected() {
        let err = parse_err(&DEMO.replace("environments/dev", "../elsewhere"));
        assert!(
            err.contains("spec.environments[0].source.overlay") && err.contains("leaves"),
            "{err}"
        );
    }

    #[test]
    fn bad_durations_and_freeze_windows_name_their_field() {
        let err = parse_err(&DEMO.replace("interval: 30s", "interval: soon"));
        assert!(err.contains("spec.environments[0].sync.interval"), "{err}");
        let err = parse_err(&DEMO.replace("interval: 30s", "interval: 30s, timeout: later"));
        assert!(err.contains("spec.environments[0].sync.timeout"), "{err}");
        let err = parse_err(&DEMO.replace("Fri 16:00", "Friday 25:00"));
        assert!(
            err.contains("spec.environments[2].freezeWindows[0].start"),
            "{err}"
        );
    }

    #[test]
    fn prune_guards_default_to_off_and_half_and_a_share_above_100_is_refused() {
        let p = parse(Path::new("pipeline.yaml"), DEMO).expect("valid");
        let sync = &p.environments[0].sync;
        assert!(!sync.adopt && !sync.prune_adopted && !sync.prune_namespaces && !sync.prune_crds);
        assert_eq!(sync.max_prune_percent, 50);
        let text = DEMO.replace(
            "interval: 30s",
            "interval: 30s, adopt: true, pruneCRDs: true, maxPrunePercent: 100",
        );
        let p = parse(Path::new("pipeline.yaml"), &text).expect("valid");
        let sync = &p.environments[0].sync;
        assert!(sync.adopt && sync.prune_crds && !sync.prune_namespaces);
        assert_eq!(sync.max_prune_percent, 100);
        let err = parse_err(&DEMO.replace("interval: 30s", "interval: 30s, maxPrunePercent: 101"));
        assert!(
            err.contains("spec.environments[0].sync.maxPrunePercent"),
            "{err}"
        );
    }

    #[test]
    fn a_promote_section_is_validated_with_field_names() {
        let text = DEMO.replace(
            "approval: {required: 1, groups: [qa]}",
            "approval: {required: 1, groups: [qa]}\n      promote: {images: [shop/web], files: [version.env], fields: [{file: app.yaml, path: data.VERSION}]}",
        );
        let p = parse(Path::new("pipeline.yaml"), &text).expect("valid");
        let staging = p.environment("staging").expect("staging exists");
        assert!(staging.promote.images.includes("shop/web"));
        assert!(!staging.promote.images.includes("shop/worker"));
        assert_eq!(staging.promote.fields[0].path, ["data", "VERSION"]);
        assert!(
            p.environment("prod")
                .expect("prod")
                .promote
                .images
                .includes("any")
        );

        let err = parse_err(&text.replace("path: data.VERSION", "path: data..VERSION"));
        assert!(
            err.contains("spec.environments[1].promote.fields[0].path"),
            "{err}"
        );
        let err = parse_err(&text.replace("files: [version.env]", "files: [../x]"));
        assert!(
            err.contains("spec.environments[1].promote.files[0]"),
            "{err}"
        );
        let err = parse_err(&DEMO.replace(
            "sync: {interval: 30s}",
            "sync: {interval: 30s}\n      promote: {allowMerge: true}",
        ));
        assert!(err.contains("spec.environments[0].promote"), "{err}");
    }

    #[test]
    fn credentials_inside_the_repository_url_are_refused_without_repeating_them() {
        let with_url = |url: &str| {
            DEMO.replace(
                "spec:\n",
                &format!("spec:\n  repository: {{url: \"{url}\", branch: main}}\n"),
            )
        };
        for url in [
            "https://deployer:hunter2-secret@git.example.test/shop.git",
            "https://ghp_hunter2-secret@git.example.test/shop.git",
            "http://x-access-token:hunter2-secret@127.0.0.1:8080/shop.git",
            "ssh://git:hunter2-secret@git.example.test/shop.git",
        ] {
            let err = parse_err(&with_url(url));
            assert!(err.contains("spec.repository.url"), "{err}");
            assert!(err.contains("credentials"), "{err}");
            assert!(!err.contains("hunter2-secret"), "{err}");
        }
        for url in [
            "https://git.example.test/shop.git",
            "ssh://git@git.example.test/shop.git",
            "git@git.example.test:team/shop.git",
            "../shop",
        ] {
            parse(Path::new("pipeline.yaml"), &with_url(url))
                .unwrap_or_else(|e| panic!("{url} is fine: {e}"));
        }
    }

    #[test]
    fn branches_that_are_not_valid_ref_names_are_refused_by_field() {
        for bad in [
            "env..prod",
            "env prod",
            "env/prod.lock",
            "-prod",
            "env~1",
            "a@{b",
            "env/",
        ] {
            let err = parse_err(&DEMO.replace("branch: env/prod", &format!("branch: {bad:?}")));
            assert!(
                err.contains("spec.environments[2].source.branch"),
                "{bad}: {err}"
            );
            assert!(err.contains("not a valid branch name"), "{bad}: {err}");
        }
        let err = parse_err(&DEMO.replace(
            "spec:\n",
            "spec:\n  repository: {url: ., branch: \"main..x\"}\n",
        ));
        assert!(err.contains("spec.repository.branch"), "{err}");
    }

    #[test]
    fn a_freeze_window_time_zone_must_be_an_iana_name() {
        for bad in ["Mars/Olympus_Mons", "CEST+2", "Europe/Berlin "] {
            let err =
                parse_err(&DEMO.replace("timezone: Europe/Berlin", &format!("timezone: {bad:?}")));
            assert!(
                err.contains("spec.environments[2].freezeWindows[0].timezone"),
                "{bad}: {err}"
            );
            assert!(err.contains("IANA"), "{bad}: {err}");
        }
        for good in ["America/New_York", "UTC", "Asia/Kolkata"] {
            parse(
                Path::new("pipeline.yaml"),
                &DEMO.replace("timezone: Europe/Berlin", &format!("timezone: {good}")),
            )
            .unwrap_or_else(|e| panic!("{good} is an IANA name: {e}"));
        }
    }

    #[test]
    fn author_approval_and_rollback_exemption_are_read_from_the_approval_section() {
        let text = DEMO.replace(
            "approval: {required: 2, groups: [release-managers]}",
            "approval: {required: 2, groups: [release-managers], allowSelfApproval: true, \
             allowAuthorApproval: false, exemptRollbacks: true}",
        );
        let p = parse(Path::new("pipeline.yaml"), &text).expect("valid");
        let prod = &p.environment("prod").expect("prod").approval;
        assert!(prod.allow_self_approval && !prod.allow_author_approval && prod.exempt_rollbacks);
        let staging = &p.environment("staging").expect("staging").approval;
        assert!(staging.allow_author_approval && !staging.exempt_rollbacks);
        let err = parse_err(&text.replace("exemptRollbacks: true", "exemptRollback: true"));
        assert!(err.contains("exemptRollback"), "{err}");
    }

    #[test]
    fn a_promotion_section_is_read_and_validated_by_field() {
        let with = |env: &str, section: &str| {
            DEMO.replace(
                &format!("source: {{overlay: environments/{env}}}"),
                &format!("source: {{overlay: environments/{env}}}\n      {section}"),
            )
        };
        let text = with(
            "staging",
            "promotion: {soak: 30m, requireHealthy: false, supersede: true}",
        );
        let p = parse(Path::new("pipeline.yaml"), &text).expect("valid");
        let staging = &p.environment("staging").expect("staging").promotion;
        assert_eq!(
            *staging,
            PromotionPolicy {
                soak: Duration::from_secs(1800),
                auto: false,
                require_healthy: false,
                supersede: true,
            }
        );

        let auto = with("staging", "promotion: {auto: true, soak: 1h}").replace(
            "approval: {required: 1, groups: [qa]}",
            "approval: {groups: [qa]}",
        );
        let p = parse(Path::new("pipeline.yaml"), &auto).expect("auto without approvals");
        let staging = &p.environment("staging").expect("staging").promotion;
        assert!(staging.auto && staging.require_healthy);
        assert_eq!(staging.soak, Duration::from_secs(3600));

        let err = parse_err(&with("staging", "promotion: {auto: true}"));
        assert!(err.contains("spec.environments[1].promotion.auto"), "{err}");
        assert!(err.contains("approval.required is 1"), "{err}");
        assert!(err.contains("collect approvals"), "{err}");

        let err = parse_err(&with("staging", "promotion: {soak: a while}"));
        assert!(err.contains("spec.environments[1].promotion.soak"), "{err}");
        assert!(err.contains("\"a while\""), "{err}");

        let err = parse_err(&with("dev", "promotion: {soak: 5m}"));
        assert!(err.contains("spec.environments[0].promotion"), "{err}");
        assert!(err.contains("no promotesFrom"), "{err}");

        let err = parse_err(&with("staging", "promotion: {soakTime: 5m}"));
        assert!(err.contains("soakTime"), "{err}");
    }

    #[test]
    fn a_verify_job_must_be_a_kubernetes_object_name() {
        let with = |job: &str| {
            DEMO.replace(
                "approval: {required: 1, groups: [qa]}",
                &format!("approval: {{required: 1, groups: [qa]}}\n      verify: {{job: {job}}}"),
            )
        };
        let p = parse(Path::new("pipeline.yaml"), &with("smoke-test.v2")).expect("valid");
        assert_eq!(
            p.environment("staging").expect("staging").verify,
            Some(Verify {
                job: "smoke-test.v2".into()
            })
        );
        for bad in ["Smoke", "\"-smoke\"", "\"smoke test\"", "\"\""] {
            let err = parse_err(&with(bad));
            assert!(
                err.contains("spec.environments[1].verify.job"),
                "{bad}: {err}"
            );
        }
        let err = parse_err(&DEMO.replace(
            "approval: {required: 1, groups: [qa]}",
            "verify: {name: smoke}",
        ));
        assert!(err.contains("name"), "{err}");
    }

    #[test]
    fn an_absolute_freeze_window_takes_rfc3339_times_and_a_reason() {
        let with = |window: &str| {
            DEMO.replace(
                r#"freezeWindows: [{start: "Fri 16:00", end: "Mon 08:00", timezone: Europe/Berlin}]"#,
                &format!(
                    r#"freezeWindows: [{{start: "Fri 16:00", end: "Mon 08:00", reason: weekend}}, {window}]"#
                ),
            )
        };
        let text = with(
            r#"{from: "2026-12-20T00:00:00Z", until: "2027-01-04T08:00:00+01:00", reason: holidays}"#,
        );
        let p = parse(Path::new("pipeline.yaml"), &text).expect("valid");
        let windows = &p.environment("prod").expect("prod").freeze_windows;
        assert_eq!(windows[0].reason.as_deref(), Some("weekend"));
        assert_eq!(windows[0].timezone, "UTC");
        assert_eq!(windows[1].reason.as_deref(), Some("holidays"));
        let FreezeSchedule::Absolute { from, until } = windows[1].schedule else {
            panic!("from and until make an absolute window");
        };
        assert_eq!(from.as_second(), 1_797_724_800);
        assert_eq!(until.to_string(), "2027-01-04T07:00:00Z");

        let cases = [
            (
                r#"{from: "2027-01-04T08:00:00+01:00", until: "2027-01-04T07:00:00Z"}"#,
                "freezeWindows[1].until",
                "not after",
            ),
            (
                r#"{from: "2026-12-20", until: "2027-01-04T08:00:00Z"}"#,
                "freezeWindows[1].from",
                "RFC 3339",
            ),
            (
                r#"{from: "2026-12-20T00:00:00", until: "2027-01-04T08:00:00Z"}"#,
                "freezeWindows[1].from",
                "offset",
            ),
            (
                r#"{from: "2026-12-20T00:00:00Z", until: "2027-01-04T08:00:00Z", end: "Mon 08:00"}"#,
                "freezeWindows[1]",
                "mixes",
            ),
            (
                r#"{from: "2026-12-20T00:00:00Z"}"#,
                "freezeWindows[1]",
                "needs both from and until",
            ),
            (
                r#"{start: "Fri 16:00"}"#,
                "freezeWindows[1]",
                "needs both start and end",
            ),
            (
                r#"{timezone: UTC}"#,
                "freezeWindows[1]",
                "needs start and end",
            ),
            (
                r#"{start: "Fri 16:00", end: "fri 16:00"}"#,
                "freezeWindows[1].end",
                "same as start",
            ),
            (
                r#"{start: "Fri 16:00", end: "Sat 16:00", reason: " "}"#,
                "freezeWindows[1].reason",
                "empty",
            ),
        ];
        for (window, at, problem) in cases {
            let err = parse_err(&with(window));
            assert!(
                err.contains(&format!("spec.environments[2].{at}")),
                "{window}: {err}"
            );
            assert!(err.contains(problem), "{window}: {err}");
        }
    }

    #[test]
    fn a_wrong_api_version_is_rejected() {
        let err = parse_err(&DEMO.replace("v1alpha1", "v9"));
        assert!(err.contains("apiVersion"), "{err}");
    }
}
