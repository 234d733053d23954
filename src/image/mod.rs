//! Container images: what a registry holds and which tag an image source follows.
//!
//! Two parts, both free of the pipeline and the service, which call them:
//!
//! - [`registry`]: a client of the OCI distribution API.
//!   [`Client::new`](registry::Client::new) takes [`Credentials`](registry::Credentials) (from a
//!   docker `config.json`'s bytes, as a file or a `kubernetes.io/dockerconfigjson` Secret holds
//!   them, or none); then `client.tags(repository)` lists every tag (all pages),
//!   `client.digest(repository, tag)` gives the manifest digest `sha256:…` a tag points at, and
//!   `client.created(repository, tag)` the image's build time (`None` if its config has none).
//!   A repository is written as in an image reference without a tag:
//!   `127.0.0.1:5000/team/app`, `ghcr.io/org/app`, `nginx`. Errors
//!   ([`registry::Error`]) name the registry and repository, never a credential.
//! - [`policy`]: [`TagPolicy`](policy::TagPolicy), deserialized from the pipeline file
//!   (`semver`, `regex` with a sort key, or `newest` by build time), chooses a tag:
//!   `policy.choose(&tags)` returns a [`Choice`](policy::Choice), the chosen tag and every
//!   skipped tag with its reason. For `newest` (`policy.by_build_time()`), ask the registry for
//!   the creation time of each of `policy.candidates(&tags)` and call
//!   `policy.choose_by_build_time(&timed)`.

pub mod policy;
pub mod registry;
