//! A client of the OCI distribution API: the tags of a repository, the manifest digest of a
//! tag, and the creation time of a tag's image.
//!
//! Authentication follows what the registry answers: a request goes out without credentials
//! until a `401` names a scheme in `WWW-Authenticate`; `Basic` then gets the configured login on
//! every request to that registry, `Bearer` gets a token from the named realm (with the login,
//! if any, for a pull scope on the repository), cached per repository until it expires.
//! Tag lists follow the `Link` header page by page. `429` and `503` are waited out
//! (`Retry-After`, bounded) a few times before they become an error. Plain HTTP is used for
//! loopback registries only, as Git's clear-text credentials are allowed to loopback only: any
//! other registry, and any token realm off loopback, is HTTPS.
//!
//! Errors name the registry and the repository, never a credential.

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use jiff::Timestamp;
use reqwest::header::{ACCEPT, AUTHORIZATION, HeaderMap, RETRY_AFTER, WWW_AUTHENTICATE};
use sha2::{Digest as _, Sha256};
use zeroize::Zeroizing;

/// The manifest media types asked for: an image or an index, OCI's or Docker's.
const MANIFEST_TYPES: &str = "application/vnd.oci.image.index.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, \
    application/vnd.oci.image.manifest.v1+json, \
    application/vnd.docker.distribution.manifest.v2+json";

/// Docker Hub, as references without a registry name it.
const DOCKER_HUB: &str = "docker.io";
/// Where Docker Hub's distribution API answers.
const DOCKER_HUB_API: &str = "registry-1.docker.io";

/// The largest manifest or image config read (registries themselves cap manifests at 4 MiB).
const MAX_DOCUMENT: usize = 8 << 20;
/// The largest page of tags read.
const MAX_TAG_PAGE: usize = 32 << 20;
/// The most pages of tags followed: a registry whose `Link` never ends is an error.
const MAX_PAGES: usize = 100_000;

/// Why a registry call failed. Each names the registry and the repository; none carries a
/// password or a token.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The image repository is not a valid reference name.
    #[error("{name:?} is not an image repository: {reason}")]
    InvalidRepository {
        /// The name as given.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The tag is not a valid tag.
    #[error("repository {repository}: {tag:?} is not a valid tag")]
    InvalidTag {
        /// The repository.
        repository: String,
        /// The tag as given.
        tag: String,
    },
    /// The docker `config.json` could not be read.
    #[error("docker config.json: {reason}")]
    DockerConfig {
        /// What is wrong with it (never its content).
        reason: String,
    },
    /// The registry or its token service refused the configured credentials.
    #[error("registry {registry}, repository {repository}: authentication failed ({detail})")]
    AuthenticationFailed {
        /// The registry.
        registry: String,
        /// The repository.
        repository: String,
        /// What refused them, e.g. the registry's error code.
        detail: String,
    },
    /// The registry asks for credentials and none are configured for it.
    #[error(
        "registry {registry}, repository {repository}: the registry asks for credentials and \
         none are configured for it"
    )]
    CredentialsMissing {
        /// The registry.
        registry: String,
        /// The repository.
        repository: String,
    },
    /// The repository, or a tag of it, does not exist.
    #[error("registry {registry}, repository {repository}: {what} not found")]
    NotFound {
        /// The registry.
        registry: String,
        /// The repository.
        repository: String,
        /// What was looked for: `the repository`, `tag v1`, a blob.
        what: String,
    },
    /// The registry kept answering 429 or 503.
    #[error(
        "registry {registry}, repository {repository}: still HTTP {status} (rate limited or \
         unavailable) after {attempts} attempts"
    )]
    RateLimited {
        /// The registry.
        registry: String,
        /// The repository.
        repository: String,
        /// The last status.
        status: u16,
        /// How many requests were made.
        attempts: u32,
    },
    /// Another unexpected status.
    #[error("registry {registry}, repository {repository}: HTTP {status} for {what}{detail}")]
    Status {
        /// The registry.
        registry: String,
        /// The repository.
        repository: String,
        /// The status.
        status: u16,
        /// What was asked for.
        what: String,
        /// The registry's error codes and messages, when it sent any.
        detail: String,
    },
    /// An answer that does not follow the distribution API.
    #[error("registry {registry}, repository {repository}: {detail}")]
    InvalidResponse {
        /// The registry.
        registry: String,
        /// The repository.
        repository: String,
        /// What is wrong with it.
        detail: String,
    },
    /// A token realm on plain HTTP off loopback: the login would travel in clear text.
    #[error(
        "registry {registry}, repository {repository}: the token service {realm} is plain HTTP \
         on another machine (credentials travel in clear text to loopback only)"
    )]
    InsecureRealm {
        /// The registry.
        registry: String,
        /// The repository.
        repository: String,
        /// The realm the registry named.
        realm: String,
    },
    /// The registry could not be reached, or the connection failed.
    #[error("registry {registry}, repository {repository}: request failed")]
    Transport {
        /// The registry.
        registry: String,
        /// The repository.
        repository: String,
        /// The HTTP client's error (its URL never holds credentials).
        #[source]
        source: reqwest::Error,
    },
}

/// Logins by registry, from a docker `config.json`. `Debug` shows the registries only.
#[derive(Clone, Default)]
pub struct Credentials {
    by_registry: HashMap<String, Login>,
}

#[derive(Clone)]
struct Login {
    username: String,
    password: Zeroizing<String>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut registries: Vec<&String> = self.by_registry.keys().collect();
        registries.sort();
        f.debug_struct("Credentials")
            .field("registries", &registries)
            .finish()
    }
}

impl Credentials {
    /// No logins: anonymous access only.
    pub fn none() -> Self {
        Credentials::default()
    }

    /// The logins of a docker `config.json` (`{"auths": {"REGISTRY": {"auth": base64 of
    /// "user:password"}}}`, or `username` and `password` fields), as `docker login` writes it
    /// or a `kubernetes.io/dockerconfigjson` Secret holds it. Registry keys may be written as
    /// URLs (`https://index.docker.io/v1/`). Credential helpers (`credsStore`, `credHelpers`)
    /// are not run.
    pub fn from_docker_config(bytes: &[u8]) -> Result<Self, Error> {
        let invalid = |reason: String| Error::DockerConfig { reason };
        // Read as a generic value so that no error message can quote a field's content.
        let document: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| {
            invalid(format!(
                "not JSON (line {}, column {})",
                e.line(),
                e.column()
            ))
        })?;
        let Some(object) = document.as_object() else {
            return Err(invalid("not a JSON object".to_owned()));
        };
        let mut by_registry = HashMap::new();
        let Some(auths) = object.get("auths") else {
            return Ok(Credentials { by_registry });
        };
        let Some(auths) = auths.as_object() else {
            return Err(invalid("`auths` is not an object".to_owned()));
        };
        for (key, entry) in auths {
            let registry = registry_key(key);
            let field = |name: &str| {
                entry
                    .get(name)
                    .and_then(|v| v.as_str())
                    .filter(|s| !s.is_empty())
            };
            let login = if let Some(auth) = field("auth") {
                let decoded = Zeroizing::new(
                    base64::engine::general_purpose::STANDARD
                        .decode(auth.trim())
                        .map_err(|_| invalid(format!("auths.{key}.auth is not base64")))?,
                );
                let text = std::str::from_utf8(&decoded)
                    .map_err(|_| invalid(format!("auths.{key}.auth is not UTF-8")))?;
                let (username, password) = text.split_once(':').ok_or_else(|| {
                    invalid(format!(
                        "auths.{key}.auth is not \"user:password\" in base64"
                    ))
                })?;
                Login {
                    username: username.to_owned(),
                    password: Zeroizing::new(password.to_owned()),
                }
            } else if let (Some(username), Some(password)) = (field("username"), field("password"))
            {
                Login {
                    username: username.to_owned(),
                    password: Zeroizing::new(password.to_owned()),
                }
            } else if field("identitytoken").is_some() {
                return Err(invalid(format!(
                    "auths.{key} holds an identity token, which is not supported: give a \
                     username and password (or a registry token as the password)"
                )));
            } else {
                return Err(invalid(format!(
                    "auths.{key} has neither `auth` nor `username` and `password`"
                )));
            };
            by_registry.insert(registry, login);
        }
        Ok(Credentials { by_registry })
    }

    fn login(&self, registry: &str) -> Option<&Login> {
        self.by_registry.get(registry)
    }
}

/// A registry key as docker writes it (`https://host/v1/`, `host`, Docker Hub's aliases), as
/// [`Name::registry`] spells registries.
fn registry_key(key: &str) -> String {
    let key = key.trim();
    let without_scheme = match key.split_once("://") {
        Some((scheme, rest))
            if ["http", "https"]
                .iter()
                .any(|s| scheme.eq_ignore_ascii_case(s)) =>
        {
            rest
        }
        _ => key,
    };
    let host = without_scheme
        .split('/')
        .next()
        .unwrap_or(without_scheme)
        .to_ascii_lowercase();
    match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
            DOCKER_HUB.to_owned()
        }
        _ => host,
    }
}

/// How a [`Client`] behaves; `Options::default()` suits a service polling registries.
#[derive(Debug, Clone)]
pub struct Options {
    /// Tags asked for per page (`n`); `None` lets the registry choose, and its `Link` header
    /// is followed either way.
    pub page_size: Option<u32>,
    /// Requests made for one call while the registry answers 429 or 503.
    pub attempts: u32,
    /// The longest wait between two of them, whatever `Retry-After` asks.
    pub max_wait: Duration,
    /// The wait before the second attempt when the registry gives no `Retry-After`; doubled
    /// each time.
    pub first_wait: Duration,
    /// A bound on each request, connection included.
    pub timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            page_size: None,
            attempts: 4,
            max_wait: Duration::from_secs(30),
            first_wait: Duration::from_secs(1),
            timeout: Duration::from_secs(30),
        }
    }
}

/// A registry client for any number of registries and repositories. Cheap to share behind an
/// `Arc`; it remembers each registry's auth scheme and each repository's token.
pub struct Client {
    http: reqwest::Client,
    credentials: Credentials,
    options: Options,
    auth: Mutex<HashMap<String, RegistryAuth>>,
    requests: AtomicU64,
}

/// What a registry asked for, and the tokens it gave.
#[derive(Default)]
struct RegistryAuth {
    challenge: Option<Challenge>,
    tokens: HashMap<String, Token>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Challenge {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
    },
}

struct Token {
    value: Zeroizing<String>,
    expires: Instant,
}

/// A parsed image repository: `127.0.0.1:5000/team/app`, `ghcr.io/org/app`, `nginx`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Name {
    /// The registry as credentials name it: `host[:port]`, `docker.io` for Docker Hub.
    registry: String,
    /// The repository inside it: `team/app`, `library/nginx`.
    repository: String,
}

impl Name {
    fn parse(name: &str) -> Result<Self, Error> {
        let invalid = |reason| Error::InvalidRepository {
            name: name.to_owned(),
            reason,
        };
        if name.is_empty() || name.len() > 255 {
            return Err(invalid("it must have 1 to 255 characters"));
        }
        let (registry, repository) = match name.split_once('/') {
            // As docker: the first component is a registry when it has a dot or a port, or is
            // localhost.
            Some((first, rest)) if first.contains(['.', ':']) || first == "localhost" => {
                (first.to_ascii_lowercase(), rest.to_owned())
            }
            Some(_) => (DOCKER_HUB.to_owned(), name.to_owned()),
            None => (DOCKER_HUB.to_owned(), format!("library/{name}")),
        };
        let registry = registry_key(&registry);
        if !registry
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-:[]".contains(c))
        {
            return Err(invalid(
                "the registry is not a host name with an optional port",
            ));
        }
        let component_ok = |c: &str| {
            let bytes = c.as_bytes();
            !bytes.is_empty()
                && bytes[0].is_ascii_alphanumeric()
                && bytes[bytes.len() - 1].is_ascii_alphanumeric()
                && bytes
                    .iter()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(b))
                && !c.contains("..")
                && !c.contains("___")
        };
        if !repository.split('/').all(component_ok) {
            return Err(invalid(
                "each path component must be lowercase letters and digits, separated by `.`, \
                 `_`, `__` or dashes",
            ));
        }
        Ok(Name {
            registry,
            repository,
        })
    }

    /// The host the API answers on.
    fn api_host(&self) -> &str {
        if self.registry == DOCKER_HUB {
            DOCKER_HUB_API
        } else {
            &self.registry
        }
    }

    /// `http` for a loopback registry, `https` for any other.
    fn scheme(&self) -> &'static str {
        if is_loopback(self.api_host()) {
            "http"
        } else {
            "https"
        }
    }

    fn base(&self) -> String {
        format!("{}://{}", self.scheme(), self.api_host())
    }

    /// A request to the registry or its token service that failed on the way.
    fn transport_error(&self, source: reqwest::Error) -> Error {
        self.error(|registry, repository| Error::Transport {
            registry,
            repository,
            source,
        })
    }

    fn error(&self, make: impl FnOnce(String, String) -> Error) -> Error {
        make(self.registry.clone(), self.repository.clone())
    }
}

/// Whether `host[:port]` is a loopback address (`localhost`, `127.0.0.0/8`, `[::1]`).
fn is_loopback(host_port: &str) -> bool {
    let host = if let Some(rest) = host_port.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        host_port.split(':').next().unwrap_or("")
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn valid_tag(tag: &str) -> bool {
    let bytes = tag.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 128
        && (bytes[0].is_ascii_alphanumeric() || bytes[0] == b'_')
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(b))
}

fn valid_digest(digest: &str) -> bool {
    match digest.split_once(':') {
        Some((algorithm, hex)) => {
            !algorithm.is_empty()
                && algorithm
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+._-".contains(&b))
                && hex.len() >= 32
                && hex.bytes().all(|b| b.is_ascii_hexdigit())
        }
        None => false,
    }
}

/// What the request was for, for errors and 404s.
#[derive(Clone, Copy)]
enum Target<'a> {
    Tags,
    Manifest(&'a str),
    Blob(&'a str),
}

impl fmt::Display for Target<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Tags => f.write_str("the repository"),
            Target::Manifest(reference) => write!(f, "manifest {reference}"),
            Target::Blob(digest) => write!(f, "blob {digest}"),
        }
    }
}

impl Client {
    /// A client with `credentials` and default options.
    pub fn new(credentials: Credentials) -> Self {
        Client::with_options(credentials, Options::default())
    }

    /// A client with `credentials` and `options`.
    pub fn with_options(credentials: Credentials, options: Options) -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10).min(options.timeout))
            .timeout(options.timeout)
            .user_agent(concat!("stagehand/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("a client with timeouts and a user agent builds");
        Client {
            http,
            credentials,
            options,
            auth: Mutex::new(HashMap::new()),
            requests: AtomicU64::new(0),
        }
    }

    /// How many HTTP requests this client has made (token requests included).
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Every tag of `repository` (`host[:port]/path`, or a Docker Hub name), in the order the
    /// registry lists them, all pages followed.
    pub async fn tags(&self, repository: &str) -> Result<Vec<String>, Error> {
        let name = Name::parse(repository)?;
        let mut path = format!("/v2/{}/tags/list", name.repository);
        if let Some(n) = self.options.page_size {
            path.push_str(&format!("?n={n}"));
        }
        let mut tags = Vec::new();
        for _ in 0..MAX_PAGES {
            let response = self
                .send(&name, reqwest::Method::GET, &path, None, Target::Tags)
                .await?;
            let next = next_link(&name, response.headers())?;
            let body = read_limited(&name, response, MAX_TAG_PAGE).await?;
            #[derive(serde::Deserialize)]
            struct Page {
                #[serde(default)]
                tags: Option<Vec<String>>,
            }
            let page: Page = serde_json::from_slice(&body).map_err(|e| {
                name.error(|registry, repository| Error::InvalidResponse {
                    registry,
                    repository,
                    detail: format!("the tag list is not the API's JSON: {e}"),
                })
            })?;
            tags.extend(page.tags.unwrap_or_default());
            match next {
                None => return Ok(tags),
                Some(next) if next == path => {
                    return Err(name.error(|registry, repository| Error::InvalidResponse {
                        registry,
                        repository,
                        detail: "the tag list's next page is the page itself".to_owned(),
                    }));
                }
                Some(next) => path = next,
            }
        }
        Err(name.error(|registry, repository| Error::InvalidResponse {
            registry,
            repository,
            detail: format!("the tag list goes on past {MAX_PAGES} pages"),
        }))
    }

    /// The manifest digest (`sha256:…`) `repository:tag` points at: an image index's own
    /// digest for a multi-platform image, as a Kustomize `digest` pins it.
    pub async fn digest(&self, repository: &str, tag: &str) -> Result<String, Error> {
        let name = Name::parse(repository)?;
        check_tag(&name, tag)?;
        let path = format!("/v2/{}/manifests/{tag}", name.repository);
        let target = Target::Manifest(tag);
        let send = |method| self.send(&name, method, &path, Some(MANIFEST_TYPES), target);
        let response = send(reqwest::Method::HEAD).await?;
        if let Some(digest) = content_digest(response.headers()) {
            return checked_digest(&name, digest);
        }
        // A registry that leaves the header out of HEAD: the digest of the manifest's bytes.
        let response = send(reqwest::Method::GET).await?;
        let header = content_digest(response.headers());
        let body = read_limited(&name, response, MAX_DOCUMENT).await?;
        match header {
            Some(digest) => checked_digest(&name, digest),
            None => Ok(format!("sha256:{}", hex::encode(Sha256::digest(&body)))),
        }
    }

    /// When the image `repository:tag` was built: its config's `created`. For a
    /// multi-platform image, the image of this machine's platform (else linux/amd64, else the
    /// first). `None` when the config has no creation time (or the manifest no config).
    pub async fn created(&self, repository: &str, tag: &str) -> Result<Option<Timestamp>, Error> {
        let name = Name::parse(repository)?;
        check_tag(&name, tag)?;
        let mut manifest = self.manifest(&name, tag).await?;
        if let Some(entries) = manifest.get("manifests").and_then(|m| m.as_array()) {
            let Some(digest) = platform_entry(entries) else {
                return Ok(None);
            };
            let digest = checked_digest(&name, digest.to_owned())?;
            manifest = self.manifest(&name, &digest).await?;
        }
        let Some(config) = manifest
            .get("config")
            .and_then(|c| c.get("digest"))
            .and_then(|d| d.as_str())
        else {
            return Ok(None);
        };
        let config = checked_digest(&name, config.to_owned())?;
        let path = format!("/v2/{}/blobs/{config}", name.repository);
        let response = self
            .send(
                &name,
                reqwest::Method::GET,
                &path,
                None,
                Target::Blob(&config),
            )
            .await?;
        let body = read_limited(&name, response, MAX_DOCUMENT).await?;
        if let Some(hex) = config.strip_prefix("sha256:")
            && hex::encode(Sha256::digest(&body)) != hex.to_ascii_lowercase()
        {
            return Err(name.error(|registry, repository| Error::InvalidResponse {
                registry,
                repository,
                detail: format!("the config blob does not match its digest {config}"),
            }));
        }
        let document: serde_json::Value = serde_json::from_slice(&body).map_err(|e| {
            name.error(|registry, repository| Error::InvalidResponse {
                registry,
                repository,
                detail: format!("the image config of {tag} is not JSON: {e}"),
            })
        })?;
        let Some(created) = document.get("created").and_then(|c| c.as_str()) else {
            return Ok(None);
        };
        created.parse::<Timestamp>().map(Some).map_err(|e| {
            name.error(|registry, repository| Error::InvalidResponse {
                registry,
                repository,
                detail: format!(
                    "the image config of {tag} has `created` {created:?}, not a time: {e}"
                ),
            })
        })
    }

    async fn manifest(&self, name: &Name, reference: &str) -> Result<serde_json::Value, Error> {
        let path = format!("/v2/{}/manifests/{reference}", name.repository);
        let response = self
            .send(
                name,
                reqwest::Method::GET,
                &path,
                Some(MANIFEST_TYPES),
                Target::Manifest(reference),
            )
            .await?;
        let body = read_limited(name, response, MAX_DOCUMENT).await?;
        serde_json::from_slice(&body).map_err(|e| {
            name.error(|registry, repository| Error::InvalidResponse {
                registry,
                repository,
                detail: format!("manifest {reference} is not JSON: {e}"),
            })
        })
    }

    /// Sends one request with what the registry's challenge asks for, answering new challenges
    /// and waiting out rate limits. Returns a successful response; anything else is an error.
    async fn send(
        &self,
        name: &Name,
        method: reqwest::Method,
        path: &str,
        accept: Option<&str>,
        target: Target<'_>,
    ) -> Result<reqwest::Response, Error> {
        let url = format!("{}{path}", name.base());
        let login = self.credentials.login(&name.registry);
        // Whether the credentials (or a token got with them) were on the last request: a 401
        // then means they were refused, not that a challenge is new.
        let mut authenticated = false;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut request = self.http.request(method.clone(), &url);
            if let Some(accept) = accept {
                request = request.header(ACCEPT, accept);
            }
            let header = self.authorization(name, login);
            if let Some(header) = &header {
                request = request.header(AUTHORIZATION, header.as_str());
            }
            let sent_credentials = header.is_some();
            let response = self.execute(name, request).await?;
            let status = response.status();
            if status.is_success() {
                return Ok(response);
            }
            match status.as_u16() {
                401 => {
                    if authenticated && sent_credentials && login.is_none() {
                        // An anonymous token that does not reach this repository.
                        return Err(
                            name.error(|registry, repository| Error::CredentialsMissing {
                                registry,
                                repository,
                            }),
                        );
                    }
                    if authenticated && sent_credentials {
                        let detail =
                            error_detail(read_limited(name, response, 64 << 10).await.ok());
                        return Err(name.error(|registry, repository| {
                            Error::AuthenticationFailed {
                                registry,
                                repository,
                                detail: if detail.is_empty() {
                                    "the registry answered 401".to_owned()
                                } else {
                                    format!("the registry answered 401{detail}")
                                },
                            }
                        }));
                    }
                    let challenge = response
                        .headers()
                        .get(WWW_AUTHENTICATE)
                        .and_then(|v| v.to_str().ok())
                        .and_then(parse_challenge)
                        .ok_or_else(|| {
                            name.error(|registry, repository| Error::InvalidResponse {
                                registry,
                                repository,
                                detail: "401 without a Basic or Bearer WWW-Authenticate challenge"
                                    .to_owned(),
                            })
                        })?;
                    self.answer(name, login, challenge).await?;
                    authenticated = true;
                    // A new challenge is not a failed attempt.
                    attempt -= 1;
                }
                429 | 503 => {
                    if attempt >= self.options.attempts {
                        return Err(name.error(|registry, repository| Error::RateLimited {
                            registry,
                            repository,
                            status: status.as_u16(),
                            attempts: attempt,
                        }));
                    }
                    let wait = retry_wait(response.headers(), attempt, &self.options);
                    tracing::debug!(registry = %name.registry, repository = %name.repository,
                        status = status.as_u16(), wait_ms = wait.as_millis() as u64,
                        "registry asks to wait");
                    tokio::time::sleep(wait).await;
                }
                404 => {
                    return Err(name.error(|registry, repository| Error::NotFound {
                        registry,
                        repository,
                        what: target.to_string(),
                    }));
                }
                _ => {
                    let detail = if method == reqwest::Method::HEAD {
                        String::new()
                    } else {
                        error_detail(read_limited(name, response, 64 << 10).await.ok())
                    };
                    return Err(name.error(|registry, repository| Error::Status {
                        registry,
                        repository,
                        status: status.as_u16(),
                        what: target.to_string(),
                        detail,
                    }));
                }
            }
        }
    }

    /// Sends `request`, one more in the count of requests made.
    async fn execute(
        &self,
        name: &Name,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, Error> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        request
            .send()
            .await
            .map_err(|source| name.transport_error(source))
    }

    /// The `Authorization` header for `name` as its registry last asked, if any.
    fn authorization(&self, name: &Name, login: Option<&Login>) -> Option<Zeroizing<String>> {
        let auth = self.auth.lock().expect("the auth table is never poisoned");
        let registry = auth.get(&name.registry)?;
        match registry.challenge.as_ref()? {
            Challenge::Basic => login.map(basic),
            Challenge::Bearer { .. } => registry
                .tokens
                .get(&name.repository)
                .filter(|t| t.expires > Instant::now())
                .map(|t| Zeroizing::new(format!("Bearer {}", t.value.as_str()))),
        }
    }

    /// Records `challenge` for the registry and, for a bearer challenge, gets a token for the
    /// repository.
    async fn answer(
        &self,
        name: &Name,
        login: Option<&Login>,
        challenge: Challenge,
    ) -> Result<(), Error> {
        let token = match &challenge {
            Challenge::Basic => {
                if login.is_none() {
                    return Err(
                        name.error(|registry, repository| Error::CredentialsMissing {
                            registry,
                            repository,
                        }),
                    );
                }
                None
            }
            Challenge::Bearer { realm, service } => {
                Some(self.token(name, login, realm, service.as_deref()).await?)
            }
        };
        let mut auth = self.auth.lock().expect("the auth table is never poisoned");
        let registry = auth.entry(name.registry.clone()).or_default();
        if registry.challenge.as_ref() != Some(&challenge) {
            registry.tokens.clear();
            registry.challenge = Some(challenge);
        }
        if let Some(token) = token {
            registry.tokens.insert(name.repository.clone(), token);
        }
        Ok(())
    }

    /// A pull token for the repository from the registry's token service.
    async fn token(
        &self,
        name: &Name,
        login: Option<&Login>,
        realm: &str,
        service: Option<&str>,
    ) -> Result<Token, Error> {
        let parsed = reqwest::Url::parse(realm).map_err(|_| {
            name.error(|registry, repository| Error::InvalidResponse {
                registry,
                repository,
                detail: format!("the token realm {realm:?} is not a URL"),
            })
        })?;
        match parsed.scheme() {
            "https" => {}
            "http" if is_loopback(parsed.host_str().unwrap_or("")) => {}
            _ => {
                return Err(name.error(|registry, repository| Error::InsecureRealm {
                    registry,
                    repository,
                    realm: realm.to_owned(),
                }));
            }
        }
        let mut url = parsed;
        {
            let mut query = url.query_pairs_mut();
            query.append_pair("scope", &format!("repository:{}:pull", name.repository));
            if let Some(service) = service {
                query.append_pair("service", service);
            }
        }
        let mut attempt = 0;
        let response = loop {
            attempt += 1;
            let mut request = self.http.get(url.clone());
            if let Some(login) = login {
                request = request.header(AUTHORIZATION, basic(login).as_str());
            }
            let response = self.execute(name, request).await?;
            let status = response.status().as_u16();
            match status {
                200..=299 => break response,
                401 | 403 if login.is_none() => {
                    return Err(
                        name.error(|registry, repository| Error::CredentialsMissing {
                            registry,
                            repository,
                        }),
                    );
                }
                401 | 403 => {
                    return Err(
                        name.error(|registry, repository| Error::AuthenticationFailed {
                            registry,
                            repository,
                            detail: format!("the token service answered {status}"),
                        }),
                    );
                }
                429 | 503 if attempt < self.options.attempts => {
                    tokio::time::sleep(retry_wait(response.headers(), attempt, &self.options))
                        .await;
                }
                429 | 503 => {
                    return Err(name.error(|registry, repository| Error::RateLimited {
                        registry,
                        repository,
                        status,
                        attempts: attempt,
                    }));
                }
                _ => {
                    return Err(name.error(|registry, repository| Error::Status {
                        registry,
                        repository,
                        status,
                        what: "a token".to_owned(),
                        detail: String::new(),
                    }));
                }
            }
        };
        let body = Zeroizing::new(read_limited(name, response, 1 << 20).await?);
        #[derive(serde::Deserialize)]
        struct Answer {
            #[serde(default)]
            token: Option<String>,
            #[serde(default)]
            access_token: Option<String>,
            #[serde(default)]
            expires_in: Option<u64>,
        }
        let answer: Answer = serde_json::from_slice(&body).map_err(|_| {
            name.error(|registry, repository| Error::InvalidResponse {
                registry,
                repository,
                detail: "the token service's answer is not the token JSON".to_owned(),
            })
        })?;
        let value = answer
            .token
            .or(answer.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                name.error(|registry, repository| Error::InvalidResponse {
                    registry,
                    repository,
                    detail: "the token service's answer has no token".to_owned(),
                })
            })?;
        // The distribution spec's default lifetime is 60 s; a few seconds of margin so a token
        // does not expire in flight.
        let lifetime = Duration::from_secs(answer.expires_in.unwrap_or(60).max(10) - 5);
        Ok(Token {
            value: Zeroizing::new(value),
            expires: Instant::now() + lifetime,
        })
    }
}

fn basic(login: &Login) -> Zeroizing<String> {
    let pair = Zeroizing::new(format!("{}:{}", login.username, login.password.as_str()));
    Zeroizing::new(format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(pair.as_bytes())
    ))
}

fn check_tag(name: &Name, tag: &str) -> Result<(), Error> {
    if valid_tag(tag) {
        Ok(())
    } else {
        Err(Error::InvalidTag {
            repository: format!("{}/{}", name.registry, name.repository),
            tag: tag.to_owned(),
        })
    }
}

fn content_digest(headers: &HeaderMap) -> Option<String> {
    headers
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_owned())
}

fn checked_digest(name: &Name, digest: String) -> Result<String, Error> {
    if valid_digest(&digest) {
        Ok(digest)
    } else {
        Err(name.error(|registry, repository| Error::InvalidResponse {
            registry,
            repository,
            detail: format!("{digest:?} is not a digest"),
        }))
    }
}

/// The entry of an image index for this machine's platform, else linux/amd64, else the first.
fn platform_entry(entries: &[serde_json::Value]) -> Option<&str> {
    let architecture = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    let on = |arch: &str| {
        entries.iter().find(|e| {
            let platform = &e["platform"];
            platform["os"] == "linux" && platform["architecture"] == arch
        })
    };
    on(architecture)
        .or_else(|| on("amd64"))
        .or_else(|| entries.first())
        .and_then(|e| e["digest"].as_str())
}

/// Parses `WWW-Authenticate`: `Basic realm="…"` or `Bearer realm="…",service="…",scope="…"`.
fn parse_challenge(header: &str) -> Option<Challenge> {
    let header = header.trim();
    let (scheme, params) = header.split_once(' ').unwrap_or((header, ""));
    if scheme.eq_ignore_ascii_case("basic") {
        return Some(Challenge::Basic);
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let params = parse_params(params);
    let realm = params.iter().find(|(k, _)| k == "realm")?.1.clone();
    let service = params
        .iter()
        .find(|(k, _)| k == "service")
        .map(|(_, v)| v.clone());
    Some(Challenge::Bearer { realm, service })
}

/// `key="value", key=value` pairs, keys lowercased, quotes and escapes removed.
fn parse_params(text: &str) -> Vec<(String, String)> {
    let mut params = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() {
            return params;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.peek().copied() {
                if c == ',' {
                    break;
                }
                value.push(c);
                chars.next();
            }
            value = value.trim().to_owned();
        }
        params.push((key.trim().to_ascii_lowercase(), value));
    }
}

/// The path and query of the `Link: <…>; rel="next"` page, kept on the same registry.
fn next_link(name: &Name, headers: &HeaderMap) -> Result<Option<String>, Error> {
    for value in headers.get_all(reqwest::header::LINK) {
        let Ok(value) = value.to_str() else { continue };
        for link in value.split(",<").map(|l| l.trim_start_matches('<')) {
            let Some((target, params)) = link.trim().trim_start_matches('<').split_once('>') else {
                continue;
            };
            let is_next = parse_params(params.trim_start_matches(';').replace(';', ",").as_str())
                .iter()
                .any(|(k, v)| k == "rel" && v.split_whitespace().any(|r| r == "next"));
            if !is_next {
                continue;
            }
            if target.starts_with('/') {
                return Ok(Some(target.to_owned()));
            }
            // An absolute link must stay on the registry: the next request carries its login.
            let same_origin = reqwest::Url::parse(target).ok().and_then(|url| {
                let authority = match url.port() {
                    Some(port) => format!("{}:{port}", url.host_str()?),
                    None => url.host_str()?.to_owned(),
                };
                (url.scheme() == name.scheme() && authority.eq_ignore_ascii_case(name.api_host()))
                    .then(|| match url.query() {
                        Some(query) => format!("{}?{query}", url.path()),
                        None => url.path().to_owned(),
                    })
            });
            return same_origin.map(Some).ok_or_else(|| {
                name.error(|registry, repository| Error::InvalidResponse {
                    registry,
                    repository,
                    detail: format!("the tag list's next page {target:?} is not on the registry"),
                })
            });
        }
    }
    Ok(None)
}

/// How long to wait before attempt `attempt + 1`: `Retry-After` (seconds or an HTTP date)
/// when given, else `first_wait` doubled per attempt; never more than `max_wait`.
fn retry_wait(headers: &HeaderMap, attempt: u32, options: &Options) -> Duration {
    let asked = headers
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, Timestamp::now()));
    let backoff = options
        .first_wait
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(16));
    asked.unwrap_or(backoff).min(options.max_wait)
}

/// `Retry-After` as seconds, or as an HTTP date (RFC 9110's IMF-fixdate) relative to `now`.
fn parse_retry_after(value: &str, now: Timestamp) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = jiff::fmt::rfc2822::parse(value).ok()?.timestamp();
    Some(at.duration_since(now).try_into().unwrap_or(Duration::ZERO))
}

/// ` (CODE: message; …)` from a distribution error body, or nothing.
fn error_detail(body: Option<Vec<u8>>) -> String {
    #[derive(serde::Deserialize)]
    struct Envelope {
        errors: Vec<Entry>,
    }
    #[derive(serde::Deserialize)]
    struct Entry {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
    }
    let Some(envelope) = body.and_then(|b| serde_json::from_slice::<Envelope>(&b).ok()) else {
        return String::new();
    };
    let entries: Vec<String> = envelope
        .errors
        .iter()
        .take(5)
        .map(|e| {
            let message: String = e.message.chars().take(200).collect();
            format!("{}: {message}", e.code)
        })
        .collect();
    if entries.is_empty() {
        String::new()
    } else {
        format!(" ({})", entries.join("; "))
    }
}

async fn read_limited(
    name: &Name,
    mut response: reqwest::Response,
    limit: usize,
) -> Result<Vec<u8>, Error> {
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|source| name.transport_error(source))?
    {
        if body.len() + chunk.len() > limit {
            return Err(name.error(|registry, repository| Error::InvalidResponse {
                registry,
                repository,
                detail: format!("an answer larger than {limit} bytes"),
            }));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_split_into_registry_and_repository_as_docker_does() {
        let n = Name::parse("127.0.0.1:5000/team/app").expect("valid");
        assert_eq!(
            (n.registry.as_str(), n.repository.as_str()),
            ("127.0.0.1:5000", "team/app")
        );
        assert_eq!(n.base(), "http://127.0.0.1:5000");
        let n = Name::parse("ghcr.io/org/app").expect("valid");
        assert_eq!(n.base(), "https://ghcr.io");
        let n = Name::parse("nginx").expect("valid");
        assert_eq!(
            (n.registry.as_str(), n.repository.as_str()),
            ("docker.io", "library/nginx")
        );
        assert_eq!(n.base(), "https://registry-1.docker.io");
        let n = Name::parse("bitnami/redis").expect("valid");
        assert_eq!(
            (n.registry.as_str(), n.repository.as_str()),
            ("docker.io", "bitnami/redis")
        );
        let n = Name::parse("localhost/app").expect("valid");
        assert_eq!(n.base(), "http://localhost");
        assert_eq!(
            Name::parse("[::1]:5000/app").expect("valid").scheme(),
            "http"
        );
        assert_eq!(
            Name::parse("10.0.0.1:5000/app").expect("valid").scheme(),
            "https"
        );
        for bad in [
            "",
            "Team/App",
            "host.io/a//b",
            "host.io/-a",
            "host.io/a/../b",
            "h/o?x",
        ] {
            assert!(Name::parse(bad).is_err(), "{bad:?} is refused");
        }
    }

    #[test]
    fn tags_and_digests_are_checked_before_they_reach_a_url() {
        assert!(valid_tag("v1.2.3-rc.1_x"));
        assert!(!valid_tag(".hidden") && !valid_tag("a/b") && !valid_tag("a?b") && !valid_tag(""));
        assert!(!valid_tag(&"a".repeat(129)));
        assert!(valid_digest(&format!("sha256:{}", "ab".repeat(32))));
        assert!(!valid_digest("sha256:../x") && !valid_digest("sha256"));
    }

    #[test]
    fn docker_config_logins_from_auth_or_username_and_password() {
        let config = br#"{"auths": {
            "https://index.docker.io/v1/": {"auth": "aHViOnNlY3JldDE="},
            "127.0.0.1:5000": {"username": "u", "password": "p:w"},
            "HTTPS://Registry.Example/v2/": {"auth": "YTpiOmM="}
        }, "credsStore": "desktop"}"#;
        let credentials = Credentials::from_docker_config(config).expect("valid");
        let hub = credentials
            .login("docker.io")
            .expect("Docker Hub's key is normalised");
        assert_eq!(
            (hub.username.as_str(), hub.password.as_str()),
            ("hub", "secret1")
        );
        let local = credentials.login("127.0.0.1:5000").expect("plain key");
        assert_eq!(local.password.as_str(), "p:w");
        let other = credentials.login("registry.example").expect("URL key");
        assert_eq!(
            (other.username.as_str(), other.password.as_str()),
            ("a", "b:c")
        );
        let debug = format!("{credentials:?}");
        assert!(
            !debug.contains("secret1") && debug.contains("docker.io"),
            "{debug}"
        );
        assert!(
            Credentials::from_docker_config(b"{}")
                .expect("no auths")
                .by_registry
                .is_empty()
        );
    }

    #[test]
    fn a_bad_docker_config_is_an_error_that_quotes_none_of_it() {
        let cases: [(&[u8], &str); 7] = [
            (
                br#"{"auths": {"r.io": {"auth": "not base64 hunter2!"}}}"#,
                "not base64",
            ),
            (
                br#"{"auths": {"r.io": {"auth": "aHVudGVyMg=="}}}"#,
                "user:password",
            ),
            (
                br#"{"auths": {"r.io": {"identitytoken": "hunter2"}}}"#,
                "identity token",
            ),
            (
                br#"{"auths": {"r.io": {"username": "hunter2"}}}"#,
                "neither",
            ),
            (br#"{"auths": "hunter2"}"#, "not an object"),
            (br#"{"auths": {"r.io": {"auth": "hunter2"#, "not JSON"),
            (br#""hunter2""#, "not a JSON object"),
        ];
        for (config, expected) in cases {
            let error = Credentials::from_docker_config(config)
                .expect_err("invalid")
                .to_string();
            assert!(error.contains(expected), "{error}");
            assert!(!error.contains("hunter2"), "{error}");
        }
    }

    #[test]
    fn challenges_are_read_as_registries_send_them() {
        assert_eq!(
            parse_challenge(r#"Basic realm="stagehand-test""#),
            Some(Challenge::Basic)
        );
        assert_eq!(
            parse_challenge(
                r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/nginx:pull""#
            ),
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into())
            })
        );
        assert_eq!(
            parse_challenge(r#"bearer REALM="https://ghcr.io/token", scope="x""#),
            Some(Challenge::Bearer {
                realm: "https://ghcr.io/token".into(),
                service: None
            })
        );
        assert_eq!(parse_challenge("Negotiate abc"), None);
        assert_eq!(
            parse_challenge("Bearer service=\"x\""),
            None,
            "a bearer challenge needs a realm"
        );
    }

    #[test]
    fn the_next_page_link_stays_on_the_registry() {
        let name = Name::parse("127.0.0.1:5000/team/app").expect("valid");
        let link = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(reqwest::header::LINK, value.parse().expect("header"));
            next_link(&name, &headers)
        };
        assert_eq!(
            link(r#"</v2/team/app/tags/list?last=b&n=2>; rel="next""#)
                .expect("ok")
                .as_deref(),
            Some("/v2/team/app/tags/list?last=b&n=2")
        );
        assert_eq!(
            link(r#"<http://127.0.0.1:5000/v2/team/app/tags/list?n=2&last=b>; rel="next""#)
                .expect("ok")
                .as_deref(),
            Some("/v2/team/app/tags/list?n=2&last=b")
        );
        assert_eq!(link(r#"</v2/x>; rel="prev""#).expect("ok"), None);
        assert!(link(r#"<http://elsewhere.example/v2/team/app/tags/list>; rel="next""#).is_err());
        assert_eq!(next_link(&name, &HeaderMap::new()).expect("ok"), None);
    }

    #[test]
    fn rate_limit_waits_follow_retry_after_within_the_bound() {
        let options = Options {
            first_wait: Duration::from_millis(500),
            max_wait: Duration::from_secs(10),
            ..Options::default()
        };
        let headers = |value: Option<&str>| {
            let mut headers = HeaderMap::new();
            if let Some(value) = value {
                headers.insert(RETRY_AFTER, value.parse().expect("header"));
            }
            headers
        };
        assert_eq!(
            retry_wait(&headers(Some("3")), 1, &options),
            Duration::from_secs(3)
        );
        assert_eq!(
            retry_wait(&headers(Some("3600")), 1, &options),
            Duration::from_secs(10)
        );
        assert_eq!(
            retry_wait(&headers(None), 1, &options),
            Duration::from_millis(500)
        );
        assert_eq!(
            retry_wait(&headers(None), 3, &options),
            Duration::from_secs(2)
        );
        assert_eq!(
            retry_wait(&headers(None), 30, &options),
            Duration::from_secs(10)
        );
        let now: Timestamp = "2026-03-01T12:00:00Z".parse().expect("time");
        assert_eq!(
            parse_retry_after("Sun, 01 Mar 2026 12:00:07 GMT", now),
            Some(Duration::from_secs(7))
        );
        assert_eq!(
            parse_retry_after("Sun, 01 Mar 2026 11:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn registry_error_bodies_become_a_short_detail() {
        let body = br#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required","detail":null}]}"#;
        assert_eq!(
            error_detail(Some(body.to_vec())),
            " (UNAUTHORIZED: authentication required)"
        );
        assert_eq!(error_detail(Some(b"<html>".to_vec())), "");
        assert_eq!(error_detail(None), "");
    }
}
