//! Notifications from container registries (`POST /api/registry-webhook`): a push to a
//! repository that image sources follow makes them look at once instead of at their next
//! interval.
//!
//! The body is the Docker Registry notification envelope (`application/vnd.docker.distribution.
//! events.v1+json`, sent by `docker-registry`/distribution and by registries that copy it):
//! `{"events": [{"action": "push", "target": {"repository": "shop/web", "tag": "1.4.2", ...},
//! "request": {"host": ...}}]}`. Such registries cannot sign a body; they send the headers their
//! endpoint configuration names, so the request carries `Authorization: Bearer <token>`, the
//! token from `--registry-webhook-token-file`, compared in constant time. A request without it
//! is refused and triggers nothing. The request only says "look now": what is committed still
//! comes from the registry's own answer to the source's credentials.

use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

/// The token registries send as `Authorization: Bearer <token>`.
pub struct RegistryToken(Zeroizing<Vec<u8>>);

/// Why a request was refused. Never quotes the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// No `Authorization` header, or not a bearer token.
    #[error("no Authorization: Bearer header")]
    Missing,
    /// Another token.
    #[error("the bearer token does not match")]
    Mismatch,
}

impl RegistryToken {
    /// The token as a file holds it; trailing newlines (as `echo` writes) are not part of it.
    pub fn from_file_contents(mut bytes: Vec<u8>) -> Option<Self> {
        while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
            bytes.pop();
        }
        (!bytes.is_empty()).then(|| Self(Zeroizing::new(bytes)))
    }

    /// Checks the request's `Authorization` header.
    pub fn verify(&self, authorization: Option<&[u8]>) -> Result<(), Rejection> {
        let value = authorization.ok_or(Rejection::Missing)?;
        let token = value
            .get(..7)
            .filter(|scheme| scheme.eq_ignore_ascii_case(b"bearer "))
            .map(|_| &value[7..])
            .ok_or(Rejection::Missing)?;
        if bool::from(token.ct_eq(&self.0)) {
            Ok(())
        } else {
            Err(Rejection::Mismatch)
        }
    }
}

/// A body that is not a notification envelope.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a registry notification envelope ({{\"events\": [...]}})")]
pub struct NotAnEnvelope;

#[derive(serde::Deserialize)]
struct Envelope {
    events: Vec<Event>,
}

#[derive(serde::Deserialize)]
struct Event {
    #[serde(default)]
    action: String,
    #[serde(default)]
    target: Option<Target>,
}

#[derive(serde::Deserialize)]
struct Target {
    #[serde(default)]
    repository: String,
    #[serde(default)]
    tag: String,
}

/// A repository that pushes in an envelope named, with the tags they named in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pushed {
    /// The repository's path in the registry, such as `shop/web`.
    pub repository: String,
    /// Tags pushed (a blob or a manifest pushed by digest names none).
    pub tags: Vec<String>,
}

/// The repositories that pushes in `body` named, each once, in the order they came.
pub fn pushes(body: &[u8]) -> Result<Vec<Pushed>, NotAnEnvelope> {
    let envelope: Envelope = serde_json::from_slice(body).map_err(|_| NotAnEnvelope)?;
    let mut pushes: Vec<Pushed> = Vec::new();
    for event in envelope.events {
        if event.action != "push" {
            continue;
        }
        let Some(target) = event.target else { continue };
        if target.repository.is_empty() {
            continue;
        }
        let at = match pushes
            .iter()
            .position(|p| p.repository == target.repository)
        {
            Some(at) => at,
            None => {
                pushes.push(Pushed {
                    repository: target.repository,
                    tags: Vec::new(),
                });
                pushes.len() - 1
            }
        };
        if !target.tag.is_empty() && !pushes[at].tags.contains(&target.tag) {
            pushes[at].tags.push(target.tag);
        }
    }
    Ok(pushes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_bearer_token_of_the_file_is_accepted() {
        let token =
            RegistryToken::from_file_contents(b"s3cret-token\n".to_vec()).expect("not empty");
        assert_eq!(token.verify(Some(b"Bearer s3cret-token")), Ok(()));
        assert_eq!(token.verify(Some(b"bearer s3cret-token")), Ok(()));
        assert_eq!(
            token.verify(Some(b"Bearer s3cret-toke")),
            Err(Rejection::Mismatch)
        );
        assert_eq!(token.verify(Some(b"Bearer ")), Err(Rejection::Mismatch));
        assert_eq!(
            token.verify(Some(b"Basic czNjcmV0")),
            Err(Rejection::Missing)
        );
        assert_eq!(token.verify(None), Err(Rejection::Missing));
        assert!(RegistryToken::from_file_contents(b"\r\n".to_vec()).is_none());
    }

    #[test]
    fn pushes_name_their_repositories_once_with_their_tags_and_pulls_name_none() {
        let body = br#"{"events": [
            {"id": "1", "action": "push", "target": {"mediaType": "application/vnd.oci.image.manifest.v1+json", "repository": "shop/web", "tag": "1.4.2", "digest": "sha256:aa"}, "request": {"host": "127.0.0.1:5000", "method": "PUT"}},
            {"id": "2", "action": "pull", "target": {"repository": "shop/api", "tag": "2.0.0"}},
            {"id": "3", "action": "push", "target": {"repository": "shop/web", "digest": "sha256:bb"}},
            {"id": "4", "action": "push", "target": {"repository": "shop/worker"}}
        ]}"#;
        let pushed = |repository: &str, tags: &[&str]| Pushed {
            repository: repository.to_owned(),
            tags: tags.iter().map(|t| (*t).to_owned()).collect(),
        };
        assert_eq!(
            pushes(body),
            Ok(vec![
                pushed("shop/web", &["1.4.2"]),
                pushed("shop/worker", &[])
            ])
        );
        assert_eq!(pushes(b"{}"), Err(NotAnEnvelope));
        assert_eq!(pushes(b"not json"), Err(NotAnEnvelope));
    }
}
