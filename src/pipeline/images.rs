//! `images:` of the pipeline: container image repositories whose new tags enter the pipeline.
//!
//! ```yaml
//! spec:
//!   images:
//!     - name: web                                  # names the source in trailers, API and CLI
//!       repository: registry.example.com/shop/web  # registry host, then the repository path
//!       policy: {semver: {range: ">=1.4.0 <2"}}    # which tag is wanted (src/image/policy)
//!       pinDigest: true                            # also write the manifest digest
//!       credentialsSecret: {name: registry-pull}   # docker config.json; or credentialsFile
//!       interval: 5m                               # between two looks at the registry
//!       environment: dev                           # where it enters (the first environment)
//!       kustomizeName: web                         # the images[].name of that overlay
//!       group: shop                                # sources of a group move together
//! ```
//!
//! When the policy picks a tag other than the one the environment's kustomization names, one
//! commit sets it (see [`crate::git::images`]); a group sets all its images in one commit, or
//! none. From there the commit is a revision like any other.

use std::path::PathBuf;
use std::time::Duration;

use crate::image::policy::TagPolicy;

/// A source's tag policy. Policies compare by what they say (their `Display`: the range, the
/// pattern and its sort), as compiled patterns do not compare.
#[derive(Debug, Clone)]
pub struct Policy(pub TagPolicy);

impl PartialEq for Policy {
    fn eq(&self, other: &Self) -> bool {
        self.0.to_string() == other.0.to_string()
    }
}

impl std::ops::Deref for Policy {
    type Target = TagPolicy;

    fn deref(&self) -> &TagPolicy {
        &self.0
    }
}

impl std::fmt::Display for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// One image source (an entry of `spec.images`).
#[derive(Debug, Clone, PartialEq)]
pub struct ImageSource {
    /// Unique among the sources; in trailers, the API and the CLI.
    pub name: String,
    /// Where the image lives.
    pub repository: ImageRepository,
    /// Which tag is wanted.
    pub policy: Policy,
    /// Also write the chosen tag's manifest digest (`images[].digest`), so that a tag pushed
    /// again over an old one does not change what runs unseen.
    pub pin_digest: bool,
    /// How to log in to the registry; anonymous without.
    pub credentials: Option<RegistryCredentials>,
    /// Between two looks at the registry (a registry webhook looks at once).
    pub interval: Duration,
    /// The environment the image enters: one nothing promotes into.
    pub environment: String,
    /// The `images[].name` of that environment's kustomization that the source sets.
    pub kustomize_name: String,
    /// Sources of one group change in one commit, or not at all.
    pub group: Option<String>,
}

impl ImageSource {
    /// What the source moves with: its group, or itself alone.
    pub fn unit(&self) -> &str {
        self.group.as_deref().unwrap_or(&self.name)
    }
}

/// A repository in a registry, such as `registry.example.com:5000/shop/web`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImageRepository {
    /// The registry's host, with its port if it has one (`docker.io` when the file names none).
    pub registry: String,
    /// The repository's path in the registry (`library/nginx` for Docker Hub's `nginx`).
    pub path: String,
}

impl std::fmt::Display for ImageRepository {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.registry, self.path)
    }
}

/// Where the docker `config.json` with the registry's credentials is read, at every look.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistryCredentials {
    /// A file on the service's side (`credentialsFile`), relative to the pipeline file.
    File(PathBuf),
    /// An entry of a Secret in the service's namespace (`credentialsSecret`), read through the
    /// API: `.dockerconfigjson` unless the file says otherwise, as in a
    /// `kubernetes.io/dockerconfigjson` Secret.
    Secret {
        /// The Secret's name.
        name: String,
        /// The entry.
        key: String,
    },
}

impl std::fmt::Display for RegistryCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::File(path) => write!(f, "file {}", path.display()),
            Self::Secret { name, key } => write!(f, "Secret {name} entry {key}"),
        }
    }
}
