//! Web sessions: a bearer token is exchanged once for a random session id in an HttpOnly,
//! SameSite=Strict cookie. The server keeps only the token's hash, so every request finds the
//! identity again in the tokens file as it is now: a revoked token ends its sessions at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::api::auth::{Authenticator, Identity};

/// The cookie that carries the session id.
pub const COOKIE: &str = "stagehand_session";

/// How long a session lasts after sign-in; a new sign-in is then needed.
pub const DEFAULT_TTL: Duration = Duration::from_secs(12 * 60 * 60);

/// Sessions one token may hold at once; signing in again beyond it ends the oldest, so a
/// scripted sign-in loop cannot grow the server's memory.
const PER_TOKEN: usize = 16;

/// Sessions the server holds at once in all.
const MAX_SESSIONS: usize = 10_000;

struct Session {
    token_hash: [u8; 32],
    csrf: String,
    created: Instant,
    expires: Instant,
}

/// The open sessions of this server, kept in memory: a restart signs everyone out.
pub struct Sessions {
    ttl: Duration,
    open: Mutex<HashMap<[u8; 32], Session>>,
}

/// A request's signed-in person: who they are now and the session's CSRF token.
#[derive(Clone)]
pub struct Viewer {
    /// As the tokens file lists them at this request.
    pub identity: Arc<Identity>,
    /// Every state-changing form carries it; see [`Viewer::csrf_matches`].
    pub csrf: String,
}

impl Viewer {
    /// Whether a submitted CSRF token is this session's, compared in constant time.
    pub fn csrf_matches(&self, submitted: &str) -> bool {
        !submitted.is_empty() && bool::from(self.csrf.as_bytes().ct_eq(submitted.as_bytes()))
    }
}

impl Sessions {
    /// Sessions that last `ttl` from sign-in.
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            open: Mutex::new(HashMap::new()),
        }
    }

    /// How long a session lasts, for the cookie's Max-Age.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Opens a session for the holder of `token_hash`; returns the id for the cookie.
    pub fn open(&self, token_hash: [u8; 32]) -> String {
        let id = random_hex();
        let now = Instant::now();
        let session = Session {
            token_hash,
            csrf: random_hex(),
            created: now,
            expires: now + self.ttl,
        };
        let mut open = self.open.lock().expect("the session map is never poisoned");
        open.retain(|_, s| s.expires > now);
        let mut of_token: Vec<([u8; 32], Instant)> = open
            .iter()
            .filter(|(_, s)| s.token_hash == token_hash)
            .map(|(key, s)| (*key, s.created))
            .collect();
        if of_token.len() >= PER_TOKEN {
            of_token.sort_by_key(|(_, created)| *created);
            for (key, _) in &of_token[..=of_token.len() - PER_TOKEN] {
                open.remove(key);
            }
        }
        if open.len() >= MAX_SESSIONS
            && let Some(oldest) = open.iter().min_by_key(|(_, s)| s.created).map(|(k, _)| *k)
        {
            open.remove(&oldest);
        }
        open.insert(key_of(&id), session);
        id
    }

    /// The person behind session `id`, if it is open, unexpired and its token still valid.
    pub fn viewer(&self, id: &str, authenticator: &Authenticator) -> Option<Viewer> {
        let key = key_of(id);
        let mut open = self.open.lock().expect("the session map is never poisoned");
        let session = open.get(&key)?;
        if session.expires <= Instant::now() {
            open.remove(&key);
            return None;
        }
        let Some(identity) = authenticator.by_token_hash(&session.token_hash) else {
            open.remove(&key);
            return None;
        };
        Some(Viewer {
            identity,
            csrf: session.csrf.clone(),
        })
    }

    /// Ends session `id`.
    pub fn close(&self, id: &str) {
        self.open
            .lock()
            .expect("the session map is never poisoned")
            .remove(&key_of(id));
    }
}

/// Sessions are looked up by the hash of their id, so the map's timing says nothing about ids.
fn key_of(id: &str) -> [u8; 32] {
    Sha256::digest(id.as_bytes()).into()
}

fn random_hex() -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the operating system provides random bytes");
    hex::encode(bytes)
}

/// The session id from a request's `Cookie` headers.
pub fn from_cookies(headers: &axum::http::HeaderMap) -> Option<String> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.to_owned())
}

/// The `Set-Cookie` value that stores session `id`, or with `None` removes it.
pub fn cookie(id: Option<&str>, ttl: Duration, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    match id {
        Some(id) => format!(
            "{COOKIE}={id}; Path=/ui; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
            ttl.as_secs()
        ),
        None => format!("{COOKIE}=; Path=/ui; HttpOnly; SameSite=Strict; Max-Age=0{secure}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_holds_at_most_its_share_of_sessions() {
        let sessions = Sessions::new(DEFAULT_TTL);
        let authenticator = Authenticator::anonymous();
        let first = sessions.open([1; 32]);
        let rest: Vec<String> = (0..PER_TOKEN).map(|_| sessions.open([1; 32])).collect();
        assert!(sessions.viewer(&first, &authenticator).is_none());
        assert!(
            rest.iter()
                .all(|id| sessions.viewer(id, &authenticator).is_some())
        );
        let other = sessions.open([2; 32]);
        assert!(sessions.viewer(&other, &authenticator).is_some());
    }

    #[test]
    fn an_expired_or_closed_session_is_gone() {
        let sessions = Sessions::new(Duration::ZERO);
        let authenticator = Authenticator::anonymous();
        let id = sessions.open([1; 32]);
        assert!(sessions.viewer(&id, &authenticator).is_none());
        let sessions = Sessions::new(DEFAULT_TTL);
        let id = sessions.open([1; 32]);
        let viewer = sessions.viewer(&id, &authenticator).expect("open");
        assert!(viewer.csrf_matches(&viewer.csrf));
        assert!(!viewer.csrf_matches(""));
        assert!(!viewer.csrf_matches("0"));
        sessions.close(&id);
        assert!(sessions.viewer(&id, &authenticator).is_none());
    }

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let mut headers = axum::http::HeaderMap::new();
        headers.insert(
            axum::http::header::COOKIE,
            "a=1; stagehand_session=abc; b=2".parse().unwrap(),
        );
        assert_eq!(from_cookies(&headers).as_deref(), Some("abc"));
        assert!(cookie(Some("x"), DEFAULT_TTL, true).contains("HttpOnly; SameSite=Strict"));
        assert!(cookie(Some("x"), DEFAULT_TTL, true).ends_with("; Secure"));
    }
}
