//! Who is calling, and what they may do.
//!
//! **Authentication** happens once, at the edge: [`Authenticator`] is a tonic interceptor that
//! reads the `authorization: Bearer <token>` metadata, looks the token's SHA-256 hash up in the
//! [`Tokens`] file, removes the token from the request and hands the handler an [`Identity`].
//! Tokens are never stored in clear (the file holds hashes), never logged, and never part of an
//! error. The file is checked again every few seconds: a changed one is taken, and one that
//! cannot be read or is not valid ends every token until it is (revocation fails closed). A
//! server takes tokens over plain HTTP/2 only on loopback unless told otherwise
//! ([`allow_bearer_tokens`]).
//!
//! **Authorisation** is a pure function, [`authorize`], of an identity, an environment and a
//! [`Permission`], decided by the [`AccessPolicy`] built from the pipeline's `access:` rules.
//! The pipeline file carries the rules as written ([`AccessRule`]); they are validated here,
//! where they are read, when the service starts or reloads the file.
//!
//! The tokens file:
//!
//! ```yaml
//! apiVersion: stagehand.dev/v1alpha1
//! kind: Tokens
//! identities:
//!   - name: alice
//!     email: alice@example.com
//!     groups: [release-managers]
//!     tokenSha256: [9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08]
//! ```
//!
//! and the `access:` rules (every permission implies `view` on the same environments):
//!
//! ```yaml
//! access:
//!   - {groups: [developers], environments: ["*"], permissions: [view]}
//!   - {groups: [developers], environments: [dev], permissions: [sync, suspend, request]}
//!   - {groups: [release-managers], environments: [prod], permissions: ["*"]}
//! ```

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde::Deserialize;
use sha2::{Digest, Sha256};
use tonic::metadata::{AsciiMetadataValue, MetadataMap};
use tonic::service::Interceptor;
use tonic::{Request, Status};
use zeroize::Zeroizing;

/// The `apiVersion` of a tokens file.
pub const TOKENS_API_VERSION: &str = "stagehand.dev/v1alpha1";
/// The `kind` of a tokens file.
pub const TOKENS_KIND: &str = "Tokens";

/// Who a caller is, as the tokens file names them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Shown in audit events and trailers.
    pub name: String,
    /// Matched against Git author e-mails (an author may not approve their own change).
    pub email: String,
    /// What the `access:` rules grant to.
    pub groups: Vec<String>,
}

impl Identity {
    /// The caller of a server that runs without a tokens file.
    pub fn anonymous() -> Self {
        Self {
            name: "anonymous".to_owned(),
            email: String::new(),
            groups: Vec::new(),
        }
    }
}

/// What a caller may do in an environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Permission {
    /// Read its status, history, diffs and promotions.
    View,
    /// Reconcile it now.
    Sync,
    /// Suspend and resume its reconciliation.
    Suspend,
    /// Request a promotion into it.
    Request,
    /// Approve or reject a promotion into it.
    Approve,
    /// Roll it back to an earlier revision.
    Rollback,
    /// Let a promotion through a freeze window.
    Override,
}

impl Permission {
    /// Every permission, for `*` and for listing them.
    pub const ALL: [Permission; 7] = [
        Self::View,
        Self::Sync,
        Self::Suspend,
        Self::Request,
        Self::Approve,
        Self::Rollback,
        Self::Override,
    ];

    /// The name the `access:` section uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::View => "view",
            Self::Sync => "sync",
            Self::Suspend => "suspend",
            Self::Request => "request",
            Self::Approve => "approve",
            Self::Rollback => "rollback",
            Self::Override => "override",
        }
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Permission {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| {
                let known: Vec<_> = Self::ALL.iter().map(|p| p.as_str()).collect();
                format!(
                    "unknown permission {s:?} (one of {}, or \"*\")",
                    known.join(", ")
                )
            })
    }
}

pub use crate::pipeline::AccessRule;

/// A rule of the `access:` section that does not make sense. Names the file and the field.
#[derive(Debug, thiserror::Error)]
#[error("pipeline file {}: field {field}: {problem}", file.display())]
pub struct AccessError {
    /// The pipeline file.
    pub file: PathBuf,
    /// Such as `access[1].permissions[0]`.
    pub field: String,
    /// What is wrong with it.
    pub problem: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Grant {
    groups: HashSet<String>,
    /// `None`: every environment.
    environments: Option<HashSet<String>>,
    permissions: HashSet<Permission>,
}

/// The validated `access:` rules.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccessPolicy {
    grants: Vec<Grant>,
    allow_all: bool,
}

impl AccessPolicy {
    /// Validates `rules` from the pipeline `file` against its `environments`. Without rules
    /// nobody may do anything: access is granted, never assumed.
    pub fn new(
        file: &Path,
        rules: &[AccessRule],
        environments: &[&str],
    ) -> Result<Self, AccessError> {
        let error = |field: String, problem: String| AccessError {
            file: file.to_owned(),
            field,
            problem,
        };
        let mut grants = Vec::with_capacity(rules.len());
        for (i, rule) in rules.iter().enumerate() {
            let at = |field: &str| format!("access[{i}].{field}");
            for (field, list) in [
                ("groups", &rule.groups),
                ("environments", &rule.environments),
                ("permissions", &rule.permissions),
            ] {
                if list.is_empty() {
                    return Err(error(at(field), "must list at least one entry".to_owned()));
                }
            }
            for (j, group) in rule.groups.iter().enumerate() {
                if group.trim().is_empty() || group == "*" {
                    return Err(error(
                        at(&format!("groups[{j}]")),
                        "must name a group (there is no wildcard for groups)".to_owned(),
                    ));
                }
            }
            let mut named = HashSet::new();
            let mut every_environment = false;
            for (j, env) in rule.environments.iter().enumerate() {
                if env == "*" {
                    every_environment = true;
                } else if environments.contains(&env.as_str()) {
                    named.insert(env.clone());
                } else {
                    return Err(error(
                        at(&format!("environments[{j}]")),
                        format!("names {env:?}, which is not an environment of the pipeline"),
                    ));
                }
            }
            let mut permissions = HashSet::new();
            for (j, permission) in rule.permissions.iter().enumerate() {
                if permission == "*" {
                    permissions.extend(Permission::ALL);
                } else {
                    let parsed = permission
                        .parse()
                        .map_err(|problem| error(at(&format!("permissions[{j}]")), problem))?;
                    permissions.insert(parsed);
                }
            }
            // Whoever may act on an environment may see it.
            permissions.insert(Permission::View);
            grants.push(Grant {
                groups: rule.groups.iter().cloned().collect(),
                environments: (!every_environment).then_some(named),
                permissions,
            });
        }
        Ok(Self {
            grants,
            allow_all: false,
        })
    }

    /// Everyone may do everything: only for a server without tokens on loopback (the demo).
    pub fn allow_all() -> Self {
        Self {
            grants: Vec::new(),
            allow_all: true,
        }
    }

    fn grants_for<'a>(
        &'a self,
        environment: &'a str,
        permission: Permission,
    ) -> impl Iterator<Item = &'a Grant> + 'a {
        self.grants.iter().filter(move |grant| {
            grant.permissions.contains(&permission)
                && grant
                    .environments
                    .as_ref()
                    .is_none_or(|envs| envs.contains(environment))
        })
    }

    /// The groups that hold `permission` in `environment`, sorted; what a person needs to know
    /// to ask the right people.
    pub fn groups_with(&self, environment: &str, permission: Permission) -> Vec<String> {
        let mut groups: Vec<String> = self
            .grants_for(environment, permission)
            .flat_map(|grant| grant.groups.iter().cloned())
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        groups.sort();
        groups
    }
}

/// Whether `identity` holds `permission` in `environment`.
pub fn authorize(
    policy: &AccessPolicy,
    identity: &Identity,
    environment: &str,
    permission: Permission,
) -> Result<(), Denied> {
    let allowed = policy.allow_all
        || policy.grants_for(environment, permission).any(|grant| {
            identity
                .groups
                .iter()
                .any(|group| grant.groups.contains(group))
        });
    if allowed {
        return Ok(());
    }
    Err(Denied {
        identity: identity.name.clone(),
        identity_groups: identity.groups.clone(),
        environment: environment.to_owned(),
        permission,
        granted_to: policy.groups_with(environment, permission),
    })
}

/// A refused permission. Its message, which callers see, names the permission and the
/// environment; the groups that hold it are for the server's log only, so that a refusal does
/// not map out whom to ask for (or to phish for) every permission.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Denied {
    /// Who asked.
    pub identity: String,
    /// The groups they are in.
    pub identity_groups: Vec<String>,
    /// Where.
    pub environment: String,
    /// What they asked to do.
    pub permission: Permission,
    /// The groups that do hold the permission there; logged, never sent.
    pub granted_to: Vec<String>,
}

impl fmt::Display for Denied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "permission {:?} on environment {:?} is not granted to {:?} (groups: {})",
            self.permission.as_str(),
            self.environment,
            self.identity,
            list_or_none(&self.identity_groups),
        )
    }
}

fn list_or_none(items: &[String]) -> String {
    if items.is_empty() {
        "none".to_owned()
    } else {
        items.join(", ")
    }
}

impl From<Denied> for Status {
    fn from(denied: Denied) -> Self {
        tracing::info!(
            identity = %denied.identity,
            environment = %denied.environment,
            permission = %denied.permission,
            granted_to = %list_or_none(&denied.granted_to),
            "refused a call: permission not granted"
        );
        Status::permission_denied(denied.to_string())
    }
}

/// Whether `identity` may know that `environment` exists: whoever may not view it is answered
/// as if it did not.
pub fn visible(policy: &AccessPolicy, identity: &Identity, environment: &str) -> bool {
    authorize(policy, identity, environment, Permission::View).is_ok()
}

/// For handlers: the caller's identity, if it holds `permission` in `environment`. A caller who
/// may not view the environment gets `unknown()`, the answer for an environment that does not
/// exist; one who may view it but lacks `permission` gets PERMISSION_DENIED naming both.
pub fn require<T>(
    request: &Request<T>,
    policy: &AccessPolicy,
    environment: &str,
    permission: Permission,
    unknown: impl FnOnce() -> Status,
) -> Result<Arc<Identity>, Status> {
    let identity = identity(request)?;
    if !visible(policy, &identity, environment) {
        return Err(unknown());
    }
    authorize(policy, &identity, environment, permission)?;
    Ok(identity)
}

/// The identity [`Authenticator`] attached to a request. A request that never passed it fails
/// closed, as UNAUTHENTICATED.
pub fn identity<T>(request: &Request<T>) -> Result<Arc<Identity>, Status> {
    request
        .extensions()
        .get::<Authenticated>()
        .map(|authenticated| authenticated.0.clone())
        .ok_or_else(|| Status::unauthenticated("this call was not authenticated"))
}

/// Private, so that only [`Authenticator`] can mark a request as authenticated.
#[derive(Clone)]
struct Authenticated(Arc<Identity>);

/// A request marked as coming from `identity`, for the web view, which authenticates people
/// by their session (itself opened with a bearer token) and then calls the API's own handlers,
/// so that both answer and refuse alike.
pub(crate) fn authenticated<T>(identity: Arc<Identity>, message: T) -> Request<T> {
    let mut request = Request::new(message);
    request.extensions_mut().insert(Authenticated(identity));
    request
}

/// The SHA-256 of a token, as the tokens file lists it (64 lowercase hex digits).
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct TokensFile {
    api_version: String,
    kind: String,
    #[serde(default)]
    identities: Vec<IdentityEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct IdentityEntry {
    name: String,
    #[serde(default)]
    email: String,
    #[serde(default)]
    groups: Vec<String>,
    token_sha256: Vec<String>,
}

/// A tokens file that cannot be used. Never carries a token or a hash.
#[derive(Debug, thiserror::Error)]
#[error("tokens file {}: {kind}", file.display())]
pub struct TokensError {
    /// The tokens file.
    pub file: PathBuf,
    /// What is wrong with it.
    pub kind: TokensErrorKind,
}

/// What is wrong with a tokens file.
#[derive(Debug, thiserror::Error)]
pub enum TokensErrorKind {
    /// It cannot be read.
    #[error("cannot read it")]
    Read(#[source] std::io::Error),
    /// The parser's own message is withheld: it can quote values, and a mistaken file may hold
    /// tokens in clear.
    #[error("not a valid tokens file at {field}{}", location.map(|(l, c)| format!(" (line {l}, column {c})")).unwrap_or_default())]
    Syntax {
        /// The field path where reading stopped.
        field: String,
        /// Line and column, when known.
        location: Option<(usize, usize)>,
    },
    /// A field holds a value that is not allowed.
    #[error("field {field}: {problem}")]
    Invalid {
        /// The field path.
        field: String,
        /// What is wrong with it.
        problem: String,
    },
}

struct Loaded {
    /// Of the file's bytes, to tell a real change from a rewrite with the same content; `None`
    /// when the file could not be read.
    digest: Option<[u8; 32]>,
    by_hash: HashMap<[u8; 32], Arc<Identity>>,
    by_name: HashMap<String, Arc<Identity>>,
    identities: usize,
}

impl Loaded {
    /// No token is accepted: what a tokens file that cannot be read or used leaves in force.
    fn nothing(digest: Option<[u8; 32]>) -> Self {
        Self {
            digest,
            by_hash: HashMap::new(),
            by_name: HashMap::new(),
            identities: 0,
        }
    }
}

/// The identities of the tokens file, reloaded when the file changes.
pub struct Tokens {
    file: PathBuf,
    current: RwLock<Loaded>,
}

impl Tokens {
    /// Reads and validates the tokens file.
    pub fn load(file: &Path) -> Result<Self, TokensError> {
        let loaded = read_tokens(file)?;
        Ok(Self {
            file: file.to_owned(),
            current: RwLock::new(loaded),
        })
    }

    /// The tokens file, for messages.
    pub fn file(&self) -> &Path {
        &self.file
    }

    /// How many identities the current file lists.
    pub fn identities(&self) -> usize {
        self.read().identities
    }

    /// The identity a presented token belongs to. The lookup is by the token's hash, so the
    /// time it takes tells nothing about which stored hashes resemble the token.
    pub fn authenticate(&self, token: &str) -> Option<Arc<Identity>> {
        self.by_hash(&Sha256::digest(token.as_bytes()).into())
    }

    /// The identity whose token has this SHA-256, as the current file lists it.
    pub fn by_hash(&self, hash: &[u8; 32]) -> Option<Arc<Identity>> {
        self.read().by_hash.get(hash).cloned()
    }

    /// The identity called `name` in the current file, if it still lists it: for approvals
    /// counted with today's groups and calls that outlive their authentication (watches).
    pub fn identity(&self, name: &str) -> Option<Arc<Identity>> {
        self.read().by_name.get(name).cloned()
    }

    /// Reads the file again and, when its content changed and is valid, takes it. Blocking
    /// file I/O.
    ///
    /// Fails closed: when the file cannot be read (removed, replaced by a directory, no longer
    /// readable) or its changed content is not valid, every token stops working until a valid
    /// file is back, and the error says why. Revoking a token is done by editing this file, so
    /// keeping the previous identities would keep a revoked token working for as long as the
    /// edit is broken, unnoticed; refusing everyone is loud and ends with the fix. That holds
    /// for a syntax error too: the operator was in the middle of changing who may act, and
    /// nothing tells which of the previous identities they meant to remove. A file written in
    /// place and caught half-written refuses callers until the next check reads it whole.
    pub fn reload_if_changed(&self) -> Result<bool, TokensError> {
        let bytes = match std::fs::read(&self.file) {
            Ok(bytes) => bytes,
            Err(e) => {
                self.replace(Loaded::nothing(None));
                return Err(self.error(TokensErrorKind::Read(e)));
            }
        };
        let digest: [u8; 32] = Sha256::digest(&bytes).into();
        if Some(digest) == self.read().digest {
            return Ok(false);
        }
        let loaded = match parse_tokens(&self.file, &bytes, digest) {
            Ok(loaded) => loaded,
            Err(e) => {
                self.replace(Loaded::nothing(Some(digest)));
                return Err(e);
            }
        };
        let identities = loaded.identities;
        self.replace(loaded);
        tracing::info!(file = %self.file.display(), identities, "reloaded the tokens file");
        Ok(true)
    }

    /// Checks the file every `every` on a background task and takes changes (see
    /// [`Tokens::reload_if_changed`]). A failure is logged at error level once when it starts
    /// (and again when it changes), not on every check.
    pub fn watch(self: &Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        let tokens = Arc::clone(self);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut failing: Option<String> = None;
            loop {
                ticks.tick().await;
                let check = Arc::clone(&tokens);
                match tokio::task::spawn_blocking(move || check.reload_if_changed()).await {
                    // An unchanged file that failed before fails still: no news.
                    Ok(Ok(false)) => {}
                    Ok(Ok(true)) => failing = None,
                    Ok(Err(error)) => {
                        let message = match &error.kind {
                            TokensErrorKind::Read(io) => format!("{error}: {io}"),
                            _ => error.to_string(),
                        };
                        if failing.as_ref() != Some(&message) {
                            tracing::error!(
                                error = %message,
                                "every bearer token is refused until the tokens file is valid again"
                            );
                            failing = Some(message);
                        }
                    }
                    Err(join) => {
                        tracing::error!(error = %join, "checking the tokens file panicked")
                    }
                }
            }
        })
    }

    fn replace(&self, loaded: Loaded) {
        *self
            .current
            .write()
            .expect("the tokens lock is never held across a panic") = loaded;
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Loaded> {
        self.current
            .read()
            .expect("the tokens lock is never held across a panic")
    }

    fn error(&self, kind: TokensErrorKind) -> TokensError {
        TokensError {
            file: self.file.clone(),
            kind,
        }
    }
}

fn read_tokens(file: &Path) -> Result<Loaded, TokensError> {
    let bytes = std::fs::read(file).map_err(|e| TokensError {
        file: file.to_owned(),
        kind: TokensErrorKind::Read(e),
    })?;
    let digest = Sha256::digest(&bytes).into();
    parse_tokens(file, &bytes, digest)
}

fn parse_tokens(file: &Path, bytes: &[u8], digest: [u8; 32]) -> Result<Loaded, TokensError> {
    let error = |kind| TokensError {
        file: file.to_owned(),
        kind,
    };
    let invalid =
        |field: String, problem: String| error(TokensErrorKind::Invalid { field, problem });
    let parsed: TokensFile = serde_path_to_error::deserialize(
        serde_yaml_ng::Deserializer::from_slice(bytes),
    )
    .map_err(|e| {
        error(TokensErrorKind::Syntax {
            field: match e.path().to_string().as_str() {
                "." => "the top level".to_owned(),
                path => path.to_owned(),
            },
            location: e.inner().location().map(|l| (l.line(), l.column())),
        })
    })?;
    if parsed.api_version != TOKENS_API_VERSION {
        return Err(invalid(
            "apiVersion".to_owned(),
            format!(
                "is {:?}, expected {TOKENS_API_VERSION:?}",
                parsed.api_version
            ),
        ));
    }
    if parsed.kind != TOKENS_KIND {
        return Err(invalid(
            "kind".to_owned(),
            format!("is {:?}, expected {TOKENS_KIND:?}", parsed.kind),
        ));
    }
    let mut by_hash: HashMap<[u8; 32], Arc<Identity>> = HashMap::new();
    let mut by_name: HashMap<String, Arc<Identity>> = HashMap::new();
    for (i, entry) in parsed.identities.iter().enumerate() {
        if entry.name.trim().is_empty() {
            return Err(invalid(
                format!("identities[{i}].name"),
                "must not be empty".to_owned(),
            ));
        }
        if entry
            .name
            .trim()
            .eq_ignore_ascii_case(crate::promotion::SELF)
        {
            return Err(invalid(
                format!("identities[{i}].name"),
                format!(
                    "{:?} is reserved: the audit log and promotion commits name Stagehand itself so",
                    entry.name
                ),
            ));
        }
        if by_name.contains_key(&entry.name) {
            return Err(invalid(
                format!("identities[{i}].name"),
                format!("{:?} is listed twice", entry.name),
            ));
        }
        let identity = Arc::new(Identity {
            name: entry.name.clone(),
            email: entry.email.clone(),
            groups: entry.groups.clone(),
        });
        by_name.insert(entry.name.clone(), Arc::clone(&identity));
        for (j, hash) in entry.token_sha256.iter().enumerate() {
            let field = format!("identities[{i}].tokenSha256[{j}]");
            let Some(bytes) = parse_sha256(hash) else {
                return Err(invalid(
                    field,
                    "is not a SHA-256 hash (64 hex digits): list the token's hash \
                     (`printf %s TOKEN | sha256sum`), never the token"
                        .to_owned(),
                ));
            };
            if let Some(other) = by_hash.insert(bytes, Arc::clone(&identity)) {
                return Err(invalid(
                    field,
                    format!("the same hash is listed for {:?} already", other.name),
                ));
            }
        }
    }
    Ok(Loaded {
        digest: Some(digest),
        by_hash,
        by_name,
        identities: parsed.identities.len(),
    })
}

fn parse_sha256(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)
            .expect("two ASCII hex digits form a byte");
    }
    Some(out)
}

/// A server without a tokens file would let anyone who reaches it act on every environment.
#[derive(Debug, thiserror::Error)]
#[error(
    "refusing to listen on {addr} without a tokens file: every caller who can reach it could sync, \
     suspend and promote every environment; give a tokens file, listen on loopback, or pass \
     --insecure to accept this"
)]
pub struct Unprotected {
    /// The address the server would listen on.
    pub addr: SocketAddr,
}

/// Whether a server on `listen` may run without tokens: on loopback it may (the embedded demo;
/// the caller warns), elsewhere only when the operator said `insecure`.
pub fn allow_anonymous(listen: SocketAddr, insecure: bool) -> Result<(), Unprotected> {
    if listen.ip().is_loopback() || insecure {
        Ok(())
    } else {
        Err(Unprotected { addr: listen })
    }
}

/// A server that takes bearer tokens over plain HTTP/2 hands them to anyone on the network path,
/// who can then act as their holders.
#[derive(Debug, thiserror::Error)]
#[error(
    "refusing to accept bearer tokens over plain HTTP/2 on {addr}: anyone on the network path \
     could read them and act as their holders; serve TLS with --tls-cert and --tls-key, listen on \
     loopback, or pass --insecure if something else encrypts the connection (a service mesh)"
)]
pub struct PlaintextTokens {
    /// The address the server would listen on.
    pub addr: SocketAddr,
}

/// Whether a server on `listen` may accept bearer tokens: over TLS it may, on loopback too
/// (the traffic never leaves the host), elsewhere only when the operator said `insecure`.
pub fn allow_bearer_tokens(
    listen: SocketAddr,
    tls: bool,
    insecure: bool,
) -> Result<(), PlaintextTokens> {
    if tls || listen.ip().is_loopback() || insecure {
        Ok(())
    } else {
        Err(PlaintextTokens { addr: listen })
    }
}

impl crate::promotion::People for Tokens {
    fn person(&self, name: &str) -> Option<crate::promotion::Actor> {
        self.identity(name).map(|identity| crate::promotion::Actor {
            name: identity.name.clone(),
            email: identity.email.clone(),
            groups: identity.groups.clone(),
        })
    }
}

/// The gRPC interceptor that authenticates every call of the services it wraps.
#[derive(Clone)]
pub struct Authenticator {
    /// `None`: no tokens file, every caller is [`Identity::anonymous`].
    tokens: Option<Arc<Tokens>>,
}

impl Authenticator {
    /// Authenticates callers against `tokens`.
    pub fn new(tokens: Arc<Tokens>) -> Self {
        Self {
            tokens: Some(tokens),
        }
    }

    /// Every caller is `anonymous`. Only for a server listening on loopback, paired with
    /// [`AccessPolicy::allow_all`].
    pub fn anonymous() -> Self {
        Self { tokens: None }
    }

    /// The identity named `name` as the tokens file lists it now; `None` when the file no
    /// longer does.
    pub fn current(&self, name: &str) -> Option<Arc<Identity>> {
        match &self.tokens {
            None => Some(Arc::new(Identity::anonymous())),
            Some(tokens) => tokens.identity(name),
        }
    }

    /// Whether callers present tokens at all (without a tokens file everyone is anonymous).
    pub fn requires_tokens(&self) -> bool {
        self.tokens.is_some()
    }

    /// The identity `token` belongs to and the token's SHA-256, by which a web session finds
    /// the identity again at every request without holding the token itself.
    pub fn authenticate_token(&self, token: &str) -> Option<(Arc<Identity>, [u8; 32])> {
        let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        match &self.tokens {
            None => Some((Arc::new(Identity::anonymous()), hash)),
            Some(tokens) => tokens.by_hash(&hash).map(|identity| (identity, hash)),
        }
    }

    /// The identity of the token with this SHA-256 as the tokens file lists it now: a token
    /// removed from the file ends the sessions opened with it at their next request.
    pub fn by_token_hash(&self, hash: &[u8; 32]) -> Option<Arc<Identity>> {
        match &self.tokens {
            None => Some(Arc::new(Identity::anonymous())),
            Some(tokens) => tokens.by_hash(hash),
        }
    }

    /// The identity the request's bearer token belongs to, or UNAUTHENTICATED.
    pub fn authenticate(&self, metadata: &MetadataMap) -> Result<Arc<Identity>, Status> {
        let Some(tokens) = &self.tokens else {
            return Ok(Arc::new(Identity::anonymous()));
        };
        let value = metadata.get("authorization").ok_or_else(|| {
            Status::unauthenticated(
                "missing bearer token: send the metadata `authorization: Bearer <token>`",
            )
        })?;
        let token = value.to_str().ok().and_then(bearer_token).ok_or_else(|| {
            Status::unauthenticated(
                "the authorization metadata is not of the form `Bearer <token>`",
            )
        })?;
        tokens
            .authenticate(token)
            .ok_or_else(|| Status::unauthenticated("unknown bearer token"))
    }
}

/// The token of `Bearer <token>`; the scheme is case-insensitive (RFC 9110).
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

impl Interceptor for Authenticator {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let result = self.authenticate(request.metadata());
        // Nothing after the edge needs the token, so nothing after it can leak it.
        request.metadata_mut().remove("authorization");
        // At info level a refusal is logged, rate-limited per peer, where every refused call is
        // (`api::serve`); one line per call only at debug.
        let identity = result.inspect_err(|status| {
            tracing::debug!(reason = status.message(), "refused an unauthenticated call");
        })?;
        tracing::debug!(identity = %identity.name, "authenticated a call");
        request.extensions_mut().insert(Authenticated(identity));
        Ok(request)
    }
}

/// A client's bearer token, attached to every call as sensitive metadata (HTTP/2 never indexes
/// it, and it does not print).
#[derive(Clone)]
pub struct BearerToken {
    value: AsciiMetadataValue,
}

impl fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BearerToken(<redacted>)")
    }
}

/// A token file that cannot be used. Never carries the token.
#[derive(Debug, thiserror::Error)]
pub enum BearerTokenError {
    /// The file cannot be read.
    #[error("cannot read the token file {}", file.display())]
    Read {
        /// The token file.
        file: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The file holds no usable token.
    #[error("the token file {} is empty or holds characters a token cannot have", file.display())]
    Invalid {
        /// The token file.
        file: PathBuf,
    },
}

impl BearerToken {
    /// Reads a token from a file (surrounding whitespace ignored), as credentials come from
    /// files, never from flags.
    pub fn from_file(file: &Path) -> Result<Self, BearerTokenError> {
        let text = Zeroizing::new(std::fs::read_to_string(file).map_err(|source| {
            BearerTokenError::Read {
                file: file.to_owned(),
                source,
            }
        })?);
        Self::new(text.trim()).ok_or_else(|| BearerTokenError::Invalid {
            file: file.to_owned(),
        })
    }

    /// `None` for an empty token or one that is not visible ASCII.
    pub fn new(token: &str) -> Option<Self> {
        if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
            return None;
        }
        let header = Zeroizing::new(format!("Bearer {token}"));
        let mut value = AsciiMetadataValue::try_from(header.as_str()).ok()?;
        value.set_sensitive(true);
        Some(Self { value })
    }
}

impl Interceptor for BearerToken {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        request
            .metadata_mut()
            .insert("authorization", self.value.clone());
        Ok(request)
    }
}
