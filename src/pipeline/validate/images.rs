//! `images:` of the pipeline, field by field.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use super::{ErrorKind, check_name, field, file, valid_secret_key, valid_secret_name};
use crate::pipeline::Environment;
use serde::Deserialize as _;

use crate::image::policy::TagPolicy;
use crate::pipeline::images::{ImageRepository, ImageSource, Policy, RegistryCredentials};

/// A registry is asked every five minutes unless the file says otherwise, as environments are
/// synced.
const DEFAULT_INTERVAL: Duration = Duration::from_secs(300);
/// Asking a registry more often than every second is a load on it, not a faster pipeline: its
/// webhook says at once when something is pushed.
const MIN_INTERVAL: Duration = Duration::from_secs(1);
/// The entry of a `kubernetes.io/dockerconfigjson` Secret.
const DOCKER_CONFIG_KEY: &str = ".dockerconfigjson";
/// The registry of a repository written without one, as docker reads `nginx`.
const DOCKER_HUB: &str = "docker.io";

pub(super) fn images(
    raw: Vec<file::ImageSource>,
    environments: &[Environment],
    base: &Path,
) -> Result<Vec<ImageSource>, ErrorKind> {
    let mut sources: Vec<ImageSource> = Vec::with_capacity(raw.len());
    // Per environment and kustomize name, the source that sets it.
    let mut setters: HashMap<(String, String), usize> = HashMap::new();
    // Per group, the environment its first source enters.
    let mut groups: HashMap<String, (usize, String)> = HashMap::new();
    for (i, raw) in raw.into_iter().enumerate() {
        let at = format!("spec.images[{i}]");
        let source = image(&at, raw, environments, base)?;
        if let Some(first) = sources.iter().position(|s| s.name == source.name) {
            return Err(field(
                format!("{at}.name"),
                format!(
                    "{:?} is listed twice (also spec.images[{first}])",
                    source.name
                ),
            ));
        }
        let key = (source.environment.clone(), source.kustomize_name.clone());
        if let Some(first) = setters.insert(key, i) {
            return Err(field(
                format!("{at}.kustomizeName"),
                format!(
                    "{:?} in environment {:?} is already set by spec.images[{first}]; one \
                     source per image entry",
                    source.kustomize_name, source.environment
                ),
            ));
        }
        if let Some(group) = &source.group {
            let (first, environment) = groups
                .entry(group.clone())
                .or_insert_with(|| (i, source.environment.clone()));
            if *environment != source.environment {
                return Err(field(
                    format!("{at}.group"),
                    format!(
                        "group {group:?} enters environment {environment:?} (spec.images[{first}]), \
                         this source enters {:?}: a group moves in one commit, so into one \
                         environment",
                        source.environment
                    ),
                ));
            }
        }
        sources.push(source);
    }
    Ok(sources)
}

fn image(
    at: &str,
    raw: file::ImageSource,
    environments: &[Environment],
    base: &Path,
) -> Result<ImageSource, ErrorKind> {
    check_name(&format!("{at}.name"), &raw.name)?;
    let written = raw.repository.ok_or_else(|| {
        field(
            format!("{at}.repository"),
            "is missing: name the image's repository, such as registry.example.com/shop/web",
        )
    })?;
    let repository = repository(&format!("{at}.repository"), &written)?;
    let policy = raw.policy.ok_or_else(|| {
        field(
            format!("{at}.policy"),
            "is missing: say which tags are wanted, such as {semver: {range: \">=1.0.0\"}}",
        )
    })?;
    let policy = TagPolicy::deserialize(policy)
        .map(Policy)
        .map_err(|e| field(format!("{at}.policy"), e.to_string()))?;
    let credentials = match (raw.credentials_file, raw.credentials_secret) {
        (Some(_), Some(_)) => {
            return Err(field(
                format!("{at}.credentialsSecret"),
                "give either credentialsFile or credentialsSecret, not both",
            ));
        }
        (None, None) => None,
        (Some(file), None) if file.trim().is_empty() => {
            return Err(field(format!("{at}.credentialsFile"), "must not be empty"));
        }
        (Some(file), None) => Some(RegistryCredentials::File(base.join(file))),
        (None, Some(secret)) => {
            if !valid_secret_name(&secret.name) {
                return Err(field(
                    format!("{at}.credentialsSecret.name"),
                    format!(
                        "{:?} is not a Secret name (lower-case DNS subdomain)",
                        secret.name
                    ),
                ));
            }
            let key = secret.key.unwrap_or_else(|| DOCKER_CONFIG_KEY.to_owned());
            if !valid_secret_key(&key) {
                return Err(field(
                    format!("{at}.credentialsSecret.key"),
                    format!("{key:?} is not a Secret key (letters, digits, '-', '_', '.')"),
                ));
            }
            Some(RegistryCredentials::Secret {
                name: secret.name,
                key,
            })
        }
    };
    let interval = match raw.interval {
        None => DEFAULT_INTERVAL,
        Some(text) => {
            let interval = humantime::parse_duration(&text).map_err(|e| {
                field(
                    format!("{at}.interval"),
                    format!("{text:?} is not a duration such as 30s or 5m: {e}"),
                )
            })?;
            if interval < MIN_INTERVAL {
                return Err(field(
                    format!("{at}.interval"),
                    "must be at least 1s (a registry webhook triggers a look at once)",
                ));
            }
            interval
        }
    };
    let environment = match raw.environment {
        None => environments
            .first()
            .expect("validation refuses a pipeline without environments")
            .name
            .clone(),
        Some(name) => {
            let env = environments
                .iter()
                .find(|e| e.name == name)
                .ok_or_else(|| {
                    field(
                        format!("{at}.environment"),
                        format!("names {name:?}, which is not an environment of the pipeline"),
                    )
                })?;
            if let Some(from) = &env.promotes_from {
                return Err(field(
                    format!("{at}.environment"),
                    format!(
                        "{name:?} is promoted from {from:?}: new images enter an environment \
                         nothing promotes into, and reach the others by promotion"
                    ),
                ));
            }
            name
        }
    };
    let kustomize_name = match raw.kustomize_name {
        None => written.trim().to_owned(),
        Some(name) if name.trim().is_empty() || name.chars().any(char::is_whitespace) => {
            return Err(field(
                format!("{at}.kustomizeName"),
                format!("{name:?} is not an image name of a kustomization's images: list"),
            ));
        }
        Some(name) => name,
    };
    let group = match raw.group {
        None => None,
        Some(group) => {
            check_name(&format!("{at}.group"), &group)?;
            Some(group)
        }
    };
    Ok(ImageSource {
        name: raw.name,
        repository,
        policy,
        pin_digest: raw.pin_digest,
        credentials,
        interval,
        environment,
        kustomize_name,
        group,
    })
}

/// `registry.example.com:5000/shop/web`, or `shop/web` on Docker Hub, as docker reads an image
/// reference without its tag and digest (those are the policy's and `pinDigest`'s).
fn repository(at: &str, text: &str) -> Result<ImageRepository, ErrorKind> {
    let text = text.trim();
    if text.is_empty() {
        return Err(field(at, "must not be empty"));
    }
    if text.contains("://") {
        return Err(field(
            at,
            format!(
                "{text:?} is a URL; give the repository as an image reference without a \
                 scheme, such as registry.example.com/shop/web"
            ),
        ));
    }
    if text.contains('@') {
        return Err(field(
            at,
            format!(
                "{text:?} carries a digest or credentials; the digest is chosen (pinDigest) and \
                 credentials come from credentialsFile or credentialsSecret"
            ),
        ));
    }
    let (registry, path) = match text.split_once('/') {
        Some((first, rest)) if first.contains(['.', ':']) || first == "localhost" => {
            (first.to_owned(), rest.to_owned())
        }
        Some(_) => (DOCKER_HUB.to_owned(), text.to_owned()),
        None => (DOCKER_HUB.to_owned(), format!("library/{text}")),
    };
    let host_ok = registry
        .split_once(':')
        .map_or(!registry.is_empty(), |(host, port)| {
            !host.is_empty() && !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit())
        })
        && registry
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':'));
    if !host_ok {
        return Err(field(
            at,
            format!("{registry:?} is not a registry host (a name or address, and a port)"),
        ));
    }
    if path
        .rsplit('/')
        .next()
        .is_some_and(|last| last.contains(':'))
    {
        return Err(field(
            at,
            format!(
                "{text:?} names a tag; the policy chooses the tag, so give the repository alone"
            ),
        ));
    }
    let component_ok = |c: &str| {
        !c.is_empty()
            && c.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
            })
            && c.starts_with(|ch: char| ch.is_ascii_alphanumeric())
            && c.ends_with(|ch: char| ch.is_ascii_alphanumeric())
    };
    if !path.split('/').all(component_ok) {
        return Err(field(
            at,
            format!(
                "{path:?} is not a repository path (lower-case letters, digits and '.', '_', \
                 '-' between them, components separated by '/')"
            ),
        ));
    }
    Ok(ImageRepository { registry, path })
}
