//! What the copy of the pipeline file in the repository (`repository.pipelinePath`) may change.
//!
//! Whoever can push to the repository must not be able to rewrite the service's security: who
//! may do what, where keys come from, where credentials and objects go. So the copy in the
//! repository runs only while every such setting is as the file on disk has it, except the
//! settings the file on disk lists in `spec.repository.inRepository.mayChange`:
//!
//! ```yaml
//! spec:
//!   repository:
//!     url: https://git.example.com/shop.git
//!     pipelinePath: deploy/pipeline.yaml
//!     inRepository:
//!       mayChange: [freezeWindows, promote]
//! ```
//!
//! Only `sync.interval` and `sync.timeout` (how often environments are read, how long objects
//! may stay Progressing) and `images[].interval` change freely: they decide no permission, key,
//! destination or content. `repository` itself can never be changed from the repository, so
//! Git credentials only ever go to the URL on disk; notifications, when they may change, still
//! only use the URL and secret files the file on disk pairs; image sources, when they may
//! change, still only send registry credentials to the registry the file on disk pairs them
//! with.

use std::str::FromStr;

use super::{Environment, ImageSource, Notification, Pipeline, RegistryCredentials};

/// A setting the copy in the repository may change only when `mayChange` lists it. Settings of
/// environments (`source`, `cluster`, ...) are named once for every environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Setting {
    /// `metadata.name`: the label on everything the pipeline owns in its clusters.
    Metadata,
    /// `access`: who may do what.
    Access,
    /// `notifications`: which events go to which of the configured webhooks.
    Notifications,
    /// `alerts`: when a condition is raised to people.
    Alerts,
    /// Which environments exist, in which order, and which promotes from which
    /// (`environments[].name`, `promotesFrom`).
    Environments,
    /// `environments[].source`: which branch and directory an environment runs.
    Source,
    /// `environments[].cluster`: where its objects, and the cluster credentials, go.
    Cluster,
    /// `environments[].sync`, except `interval` and `timeout`: pruning, self-heal, suspension,
    /// manual mode, force, adoption and their guards.
    Sync,
    /// `environments[].approval`: who must approve a promotion.
    Approval,
    /// `environments[].freezeWindows`: when promotions wait.
    FreezeWindows,
    /// `environments[].promote`: what content a promotion carries.
    Promote,
    /// `environments[].promotion`: soak, health and automatic promotion.
    Promotion,
    /// `environments[].verify`: the check a promotion must pass.
    Verify,
    /// `decryption` and `environments[].decryption`: which keys decrypt which environment.
    Decryption,
    /// `environments[].ignoreDifferences`: fields Stagehand leaves to other controllers, so it
    /// neither heals nor reports them; a rule weakens what Git enforces.
    IgnoreDifferences,
    /// `environments[].requireSignedCommits`: whether promoted commits must be signed, and
    /// whose keys count. The allowed signers judge the repository's commits, so the repository
    /// must neither drop the rule nor point it at another file or Secret.
    RequireSignedCommits,
    /// `images`: which image tags Stagehand commits into an environment by itself, and which
    /// registry credentials it sends where.
    Images,
}

impl Setting {
    /// Every setting, in the order errors list them.
    pub const ALL: [Setting; 17] = [
        Self::Metadata,
        Self::Access,
        Self::Notifications,
        Self::Alerts,
        Self::Environments,
        Self::Source,
        Self::Cluster,
        Self::Sync,
        Self::Approval,
        Self::FreezeWindows,
        Self::Promote,
        Self::Promotion,
        Self::Verify,
        Self::Decryption,
        Self::IgnoreDifferences,
        Self::RequireSignedCommits,
        Self::Images,
    ];

    /// The name `mayChange` uses: the field's own name in the file.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Metadata => "metadata",
            Self::Access => "access",
            Self::Notifications => "notifications",
            Self::Alerts => "alerts",
            Self::Environments => "environments",
            Self::Source => "source",
            Self::Cluster => "cluster",
            Self::Sync => "sync",
            Self::Approval => "approval",
            Self::FreezeWindows => "freezeWindows",
            Self::Promote => "promote",
            Self::Promotion => "promotion",
            Self::Verify => "verify",
            Self::Decryption => "decryption",
            Self::IgnoreDifferences => "ignoreDifferences",
            Self::RequireSignedCommits => "requireSignedCommits",
            Self::Images => "images",
        }
    }

    /// The settings of one environment, compared environment by environment.
    const OF_ENVIRONMENT: [Setting; 11] = [
        Self::Source,
        Self::Cluster,
        Self::Sync,
        Self::Approval,
        Self::FreezeWindows,
        Self::Promote,
        Self::Promotion,
        Self::Verify,
        Self::Decryption,
        Self::IgnoreDifferences,
        Self::RequireSignedCommits,
    ];
}

impl std::fmt::Display for Setting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Setting {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|setting| setting.as_str() == s)
            .ok_or_else(|| {
                let known: Vec<_> = Self::ALL.iter().map(|s| s.as_str()).collect();
                format!("unknown setting {s:?} (one of {})", known.join(", "))
            })
    }
}

/// Why the copy in the repository may not run: it changes a setting that only the file on disk
/// may change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// A field of `spec.repository`, which never comes from the repository.
    #[error(
        "field {field} differs from the pipeline file on disk; the repository is only ever \
         taken from that file"
    )]
    Repository {
        /// Such as `spec.repository.url`.
        field: String,
    },
    /// A setting the file on disk does not let the repository change.
    #[error(
        "field {field} differs from the pipeline file on disk, which does not let the \
         repository change it (spec.repository.inRepository.mayChange there would have to \
         list {setting:?})"
    )]
    Setting {
        /// Such as `spec.access` or `spec.environments[2].approval`.
        field: String,
        /// The name `mayChange` would need.
        setting: &'static str,
    },
    /// An image source that sends registry credentials to a registry the file on disk does not
    /// pair them with.
    #[error(
        "field {field}: image sources from the repository may only send the credentials of the \
         pipeline file on disk to the registry it sends them to"
    )]
    Credentials {
        /// Such as `spec.images[0].credentialsSecret`.
        field: String,
    },
    /// A notification that sends to a URL file, or signs with a secret file, the file on disk
    /// does not pair.
    #[error(
        "field {field}: notifications from the repository may only use the urlFile and \
         secretFile pairs of the pipeline file on disk"
    )]
    Webhook {
        /// Such as `spec.notifications[0].urlFile`.
        field: String,
    },
}

/// Whether `candidate`, read from the repository, may run in place of `disk`, the pipeline file
/// on disk: every setting it changes is one `disk` lets the repository change. Relative paths of
/// both must have been resolved against the directory of the file on disk.
pub fn check(disk: &Pipeline, candidate: &Pipeline) -> Result<(), Refused> {
    let allowed = &disk.repository.may_change;
    let setting = |field: String, setting: Setting| Refused::Setting {
        field,
        setting: setting.as_str(),
    };
    let (old, new) = (&disk.repository, &candidate.repository);
    for (field, same) in [
        ("url", old.url == new.url),
        ("branch", old.branch == new.branch),
        ("pipelinePath", old.pipeline_path == new.pipeline_path),
        ("inRepository", old.may_change == new.may_change),
    ] {
        if !same {
            return Err(Refused::Repository {
                field: format!("spec.repository.{field}"),
            });
        }
    }
    let may = |s: Setting| allowed.contains(&s);
    if disk.name != candidate.name && !may(Setting::Metadata) {
        return Err(setting("metadata.name".to_owned(), Setting::Metadata));
    }
    if disk.access != candidate.access && !may(Setting::Access) {
        return Err(setting("spec.access".to_owned(), Setting::Access));
    }
    if disk.alerts != candidate.alerts && !may(Setting::Alerts) {
        return Err(setting("spec.alerts".to_owned(), Setting::Alerts));
    }
    check_notifications(
        &disk.notifications,
        &candidate.notifications,
        may(Setting::Notifications),
    )?;
    check_images(&disk.images, &candidate.images, may(Setting::Images))?;
    let names = |p: &Pipeline| -> Vec<(String, Option<String>)> {
        p.environments
            .iter()
            .map(|e| (e.name.clone(), e.promotes_from.clone()))
            .collect()
    };
    if names(disk) != names(candidate) && !may(Setting::Environments) {
        return Err(setting(
            "spec.environments".to_owned(),
            Setting::Environments,
        ));
    }
    for (i, env) in candidate.environments.iter().enumerate() {
        let at = format!("spec.environments[{i}]");
        match disk.environment(&env.name) {
            Some(before) => {
                for s in Setting::OF_ENVIRONMENT {
                    if !same_setting(s, before, env) && !may(s) {
                        return Err(setting(format!("{at}.{s}"), s));
                    }
                }
            }
            // An environment the file on disk lacks sets every setting anew.
            None => {
                if let Some(s) = Setting::OF_ENVIRONMENT.into_iter().find(|s| !may(*s)) {
                    return Err(setting(format!("{at}.{s}"), s));
                }
            }
        }
    }
    Ok(())
}

/// Whether `setting` of an environment is the same in both versions.
fn same_setting(setting: Setting, a: &Environment, b: &Environment) -> bool {
    match setting {
        Setting::Source => a.source == b.source,
        Setting::Cluster => a.cluster == b.cluster,
        // How often and how long: no permission, key, destination or content depends on them.
        Setting::Sync => {
            let mut b_sync = b.sync.clone();
            b_sync.interval = a.sync.interval;
            b_sync.timeout = a.sync.timeout;
            a.sync == b_sync
        }
        Setting::Approval => a.approval == b.approval,
        Setting::FreezeWindows => a.freeze_windows == b.freeze_windows,
        Setting::Promote => a.promote == b.promote,
        Setting::Promotion => a.promotion == b.promotion,
        Setting::Verify => a.verify == b.verify,
        Setting::Decryption => a.decryption == b.decryption,
        Setting::IgnoreDifferences => a.ignore_differences == b.ignore_differences,
        Setting::RequireSignedCommits => a.require_signed_commits == b.require_signed_commits,
        Setting::Metadata
        | Setting::Access
        | Setting::Notifications
        | Setting::Alerts
        | Setting::Environments
        | Setting::Images => true,
    }
}

/// Without leave, image sources stay as on disk but for their intervals; with it, each source
/// with credentials must use them with the registry the file on disk uses them with.
fn check_images(
    disk: &[ImageSource],
    candidate: &[ImageSource],
    may_change: bool,
) -> Result<(), Refused> {
    if !may_change {
        let same = disk.len() == candidate.len()
            && disk.iter().zip(candidate).all(|(a, b)| {
                let mut b = b.clone();
                b.interval = a.interval;
                *a == b
            });
        return if same {
            Ok(())
        } else {
            Err(Refused::Setting {
                field: "spec.images".to_owned(),
                setting: Setting::Images.as_str(),
            })
        };
    }
    for (i, source) in candidate.iter().enumerate() {
        let Some(credentials) = &source.credentials else {
            continue;
        };
        let paired = disk.iter().any(|d| {
            d.credentials.as_ref() == Some(credentials)
                && d.repository.registry == source.repository.registry
        });
        if !paired {
            let field = match credentials {
                RegistryCredentials::File(_) => "credentialsFile",
                RegistryCredentials::Secret { .. } => "credentialsSecret",
            };
            return Err(Refused::Credentials {
                field: format!("spec.images[{i}].{field}"),
            });
        }
    }
    Ok(())
}

/// Without leave, notifications stay as on disk; with it, each may still only send to a URL
/// file of the file on disk and sign with the secret file paired with it there.
fn check_notifications(
    disk: &[Notification],
    candidate: &[Notification],
    may_change: bool,
) -> Result<(), Refused> {
    if !may_change {
        return if disk == candidate {
            Ok(())
        } else {
            Err(Refused::Setting {
                field: "spec.notifications".to_owned(),
                setting: Setting::Notifications.as_str(),
            })
        };
    }
    for (i, n) in candidate.iter().enumerate() {
        let paired = disk
            .iter()
            .any(|d| d.url_file == n.url_file && d.secret_file == n.secret_file);
        if !paired {
            let field = if disk.iter().any(|d| d.url_file == n.url_file) {
                "secretFile"
            } else {
                "urlFile"
            };
            return Err(Refused::Webhook {
                field: format!("spec.notifications[{i}].{field}"),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    const DISK: &str = r#"
apiVersion: stagehand.dev/v1alpha1
kind: Pipeline
metadata: {name: shop}
spec:
  repository:
    url: https://git.example.com/shop.git
    pipelinePath: deploy/pipeline.yaml
    inRepository: {mayChange: [freezeWindows]}
  decryption: {ageKeysDir: keys}
  notifications:
    - {name: chat, urlFile: /etc/stagehand/chat-url, secretFile: /etc/stagehand/chat-secret}
  access:
    - {groups: [developers], environments: ["*"], permissions: [view]}
  environments:
    - name: dev
      source: {overlay: environments/dev}
      sync: {interval: 30s}
    - name: prod
      promotesFrom: dev
      source: {overlay: environments/prod}
      approval: {required: 2, groups: [release-managers]}
      requireSignedCommits: {allowedSignersFile: /etc/stagehand/allowed_signers}
"#;

    fn disk() -> Pipeline {
        Pipeline::parse(Path::new("/etc/stagehand/pipeline.yaml"), DISK).expect("valid")
    }

    /// `DISK` with `from` replaced by `to`, read as the copy in the repository is.
    fn committed(from: &str, to: &str) -> Result<(), Refused> {
        let text = DISK.replace(from, to);
        assert_ne!(text, DISK, "{from:?} is in the file");
        let candidate = Pipeline::parse_for(
            Path::new("/etc/stagehand/pipeline.yaml"),
            Path::new("deploy/pipeline.yaml at 0123abc"),
            &text,
        )
        .expect("valid");
        check(&disk(), &candidate)
    }

    fn refused_field(result: Result<(), Refused>) -> String {
        match result.expect_err("refused") {
            Refused::Repository { field }
            | Refused::Setting { field, .. }
            | Refused::Webhook { field }
            | Refused::Credentials { field } => field,
        }
    }

    #[test]
    fn the_leave_on_disk_is_validated_naming_the_entry() {
        let cases = [
            (
                "{mayChange: [freezeWindows, approvals]}",
                "field spec.repository.inRepository.mayChange[1]: unknown setting \"approvals\" (one of metadata,",
            ),
            (
                "{mayChange: [repository]}",
                "field spec.repository.inRepository.mayChange[0]: the repository (its URL, branch, \
                 pipelinePath and this list) is only ever taken from the pipeline file on disk",
            ),
            (
                "{mayChange: [sync, sync]}",
                "field spec.repository.inRepository.mayChange[1]: \"sync\" is listed twice",
            ),
        ];
        for (leave, expected) in cases {
            let text = DISK.replace("{mayChange: [freezeWindows]}", leave);
            let error = Pipeline::parse(Path::new("p.yaml"), &text)
                .expect_err("invalid")
                .to_string();
            assert!(error.contains(expected), "{error}");
        }
        let without_copy = DISK.replace("    pipelinePath: deploy/pipeline.yaml\n", "");
        let error = Pipeline::parse(Path::new("p.yaml"), &without_copy)
            .expect_err("invalid")
            .to_string();
        assert!(
            error.contains("field spec.repository.inRepository: is set, but there is no copy"),
            "{error}"
        );
    }

    #[test]
    fn a_comment_or_a_new_interval_changes_nothing_that_matters() {
        assert_eq!(committed("kind: Pipeline", "kind: Pipeline # ours"), Ok(()));
        assert_eq!(
            committed("interval: 30s}", "interval: 1m, timeout: 10m}"),
            Ok(())
        );
    }

    #[test]
    fn every_security_setting_is_refused_naming_its_field() {
        let cases = [
            ("shop.git", "evil.git", "spec.repository.url"),
            (
                "    pipelinePath: deploy/pipeline.yaml\n",
                "    pipelinePath: deploy/pipeline.yaml\n    branch: other\n",
                "spec.repository.branch",
            ),
            (
                "{mayChange: [freezeWindows]}",
                "{mayChange: [freezeWindows, access]}",
                "spec.repository.inRepository",
            ),
            ("{name: shop}", "{name: shop2}", "metadata.name"),
            (
                "permissions: [view]}",
                "permissions: [\"*\"]}",
                "spec.access",
            ),
            (
                "ageKeysDir: keys",
                "ageKeysDir: other",
                "spec.environments[0].decryption",
            ),
            ("chat-url", "other-url", "spec.notifications"),
            (
                "    - name: dev\n",
                "    - name: qa\n      source: {overlay: qa}\n    - name: dev\n",
                "spec.environments",
            ),
            (
                "interval: 30s}",
                "interval: 30s, prune: false}",
                "spec.environments[0].sync",
            ),
            (
                "required: 2",
                "required: 1",
                "spec.environments[1].approval",
            ),
            (
                "environments/prod}",
                "environments/prod}\n      cluster: {kubeconfig: /tmp/mine}",
                "spec.environments[1].cluster",
            ),
            (
                "overlay: environments/prod",
                "overlay: environments/dev",
                "spec.environments[1].source",
            ),
            (
                "environments/prod}",
                "environments/prod}\n      promote: {files: [secret.yaml]}",
                "spec.environments[1].promote",
            ),
            (
                "environments/prod}",
                "environments/prod}\n      ignoreDifferences: [{kind: Deployment, jsonPointers: [/spec]}]",
                "spec.environments[1].ignoreDifferences",
            ),
            (
                "      requireSignedCommits: {allowedSignersFile: /etc/stagehand/allowed_signers}\n",
                "",
                "spec.environments[1].requireSignedCommits",
            ),
            (
                "/etc/stagehand/allowed_signers",
                "/tmp/mine",
                "spec.environments[1].requireSignedCommits",
            ),
        ];
        for (from, to, field) in cases {
            assert_eq!(refused_field(committed(from, to)), field, "{from} -> {to}");
        }
    }

    #[test]
    fn a_setting_listed_on_disk_may_change() {
        assert_eq!(
            committed(
                "groups: [release-managers]}",
                "groups: [release-managers]}\n      freezeWindows: [{start: \"Fri 16:00\", end: \"Mon 08:00\"}]",
            ),
            Ok(())
        );
    }

    #[test]
    fn notifications_may_only_use_the_webhooks_on_disk_even_with_leave() {
        let disk = DISK.replace("[freezeWindows]", "[notifications]");
        let check_with = |from: &str, to: &str| {
            let candidate =
                Pipeline::parse(Path::new("/x/p.yaml"), &disk.replace(from, to)).expect("valid");
            let disk = Pipeline::parse(Path::new("/x/p.yaml"), &disk).expect("valid");
            check(&disk, &candidate)
        };
        assert_eq!(
            check_with("{name: chat,", "{events: [failed], name: chat,"),
            Ok(())
        );
        assert_eq!(
            refused_field(check_with("/etc/stagehand/chat-url", "/tmp/url")),
            "spec.notifications[0].urlFile"
        );
        assert_eq!(
            refused_field(check_with("/etc/stagehand/chat-secret", "/tmp/s")),
            "spec.notifications[0].secretFile"
        );
    }

    #[test]
    fn image_sources_change_their_interval_freely_and_send_credentials_only_where_the_disk_does() {
        let images = "  images:\n    - {name: web, repository: registry.example.com/shop/web, policy: {semver: {range: \">=1\"}}, credentialsSecret: {name: pull}, interval: 5m}\n  environments:\n";
        let with = |leave: &str| {
            DISK.replace("  environments:\n", images)
                .replace("[freezeWindows]", leave)
        };
        let check_with = |leave: &str, from: &str, to: &str| {
            let disk = with(leave);
            let parse = |text: &str| Pipeline::parse(Path::new("/x/p.yaml"), text).expect("valid");
            assert_ne!(disk.replace(from, to), disk, "{from:?} is in the file");
            check(&parse(&disk), &parse(&disk.replace(from, to)))
        };
        assert_eq!(
            check_with("[freezeWindows]", "interval: 5m}", "interval: 1m}"),
            Ok(())
        );
        assert_eq!(
            refused_field(check_with("[freezeWindows]", ">=1", ">=2")),
            "spec.images"
        );
        assert_eq!(check_with("[images]", ">=1", ">=2"), Ok(()));
        assert_eq!(
            check_with("[images]", "shop/web", "shop/api"),
            Ok(()),
            "the same registry may get the credentials for another repository"
        );
        assert_eq!(
            refused_field(check_with(
                "[images]",
                "registry.example.com",
                "evil.example.com"
            )),
            "spec.images[0].credentialsSecret"
        );
        assert_eq!(
            refused_field(check_with("[images]", "{name: pull}", "{name: other}")),
            "spec.images[0].credentialsSecret"
        );
    }

    #[test]
    fn a_new_environment_needs_leave_for_every_setting_of_an_environment() {
        let disk = DISK.replace(
            "[freezeWindows]",
            "[environments, source, sync, approval, freezeWindows, promote, promotion, verify, decryption, ignoreDifferences, requireSignedCommits]",
        );
        let parse = |text: &str| Pipeline::parse(Path::new("/x/p.yaml"), text).expect("valid");
        let with_qa = disk.replace(
            "    - name: prod\n",
            "    - name: qa\n      source: {overlay: qa}\n    - name: prod\n",
        );
        assert_eq!(
            refused_field(check(&parse(&disk), &parse(&with_qa))),
            "spec.environments[1].cluster"
        );
        let all = disk.replace("[environments,", "[cluster, environments,");
        assert_eq!(
            check(
                &parse(&all),
                &parse(&with_qa.replace("[environments,", "[cluster, environments,"))
            ),
            Ok(())
        );
    }
}
