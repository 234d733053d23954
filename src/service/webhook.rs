//! Push notifications from Git hosts. A request whose signature checks out triggers an
//! immediate fetch (coalesced with any fetch already queued); anything else is refused and
//! triggers nothing. As Argo CD's `/api/webhook`, one endpoint serves every host, told apart by
//! their headers:
//!
//! | host | header | check |
//! | --- | --- | --- |
//! | GitHub | `X-Hub-Signature-256: sha256=<hex>` | HMAC-SHA256 of the body |
//! | Gitea, Forgejo, Gogs | `X-Gitea-Signature` / `X-Forgejo-Signature` / `X-Gogs-Signature: <hex>` | HMAC-SHA256 of the body |
//! | GitLab | `X-Gitlab-Token: <secret>` | the secret itself |
//! | anything else | `X-Stagehand-Signature: sha256=<hex>` | HMAC-SHA256 of the body |
//!
//! The secret comes from a file; it is held in memory only and never logged.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

/// Where a verified request came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    /// `X-Hub-Signature-256`.
    GitHub,
    /// `X-Gitea-Signature`, `X-Forgejo-Signature` or `X-Gogs-Signature`.
    Gitea,
    /// `X-Gitlab-Token`.
    GitLab,
    /// `X-Stagehand-Signature`, for anything else that can sign a body.
    Generic,
}

impl Provider {
    /// A label for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::GitHub => "github",
            Self::Gitea => "gitea",
            Self::GitLab => "gitlab",
            Self::Generic => "generic",
        }
    }
}

/// Why a request was refused. Names the header, never the secret or the signature.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// No header this receiver knows.
    #[error(
        "no signature: expected one of X-Hub-Signature-256, X-Gitea-Signature, X-Forgejo-Signature, X-Gogs-Signature, X-Gitlab-Token, X-Stagehand-Signature"
    )]
    Unsigned,
    /// The header holds something other than a signature.
    #[error("{header}: not a sha256 signature in hex")]
    Malformed {
        /// The header.
        header: &'static str,
    },
    /// Signed with another secret, or the body changed.
    #[error("{header}: the signature does not match the body")]
    Mismatch {
        /// The header.
        header: &'static str,
    },
}

/// The shared secret webhook senders sign with.
pub struct WebhookSecret(Zeroizing<Vec<u8>>);

impl WebhookSecret {
    /// The secret as a file holds it; one trailing newline (as `echo` writes) is not part of it.
    pub fn from_file_contents(mut bytes: Vec<u8>) -> Option<Self> {
        while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
            bytes.pop();
        }
        (!bytes.is_empty()).then(|| Self(Zeroizing::new(bytes)))
    }

    /// The `sha256=<hex>` signature of `body`, as [`WebhookSecret::verify`] checks it.
    pub fn sign(&self, body: &[u8]) -> String {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC accepts a key of any length");
        mac.update(body);
        format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
    }

    /// Checks a request's headers (looked up case-insensitively by `header`) against its body.
    pub fn verify<'h>(
        &self,
        header: impl Fn(&str) -> Option<&'h [u8]>,
        body: &[u8],
    ) -> Result<Provider, Rejection> {
        const HMAC_HEADERS: [(&str, Provider, bool); 5] = [
            ("x-hub-signature-256", Provider::GitHub, true),
            ("x-gitea-signature", Provider::Gitea, false),
            ("x-forgejo-signature", Provider::Gitea, false),
            ("x-gogs-signature", Provider::Gitea, false),
            ("x-stagehand-signature", Provider::Generic, true),
        ];
        for (name, provider, prefixed) in HMAC_HEADERS {
            if let Some(value) = header(name) {
                self.check_hmac(name, value, prefixed, body)?;
                return Ok(provider);
            }
        }
        if let Some(token) = header("x-gitlab-token") {
            return if bool::from(token.ct_eq(&self.0)) {
                Ok(Provider::GitLab)
            } else {
                Err(Rejection::Mismatch {
                    header: "x-gitlab-token",
                })
            };
        }
        Err(Rejection::Unsigned)
    }

    fn check_hmac(
        &self,
        header: &'static str,
        value: &[u8],
        prefixed: bool,
        body: &[u8],
    ) -> Result<(), Rejection> {
        let malformed = Rejection::Malformed { header };
        let hex = if prefixed {
            value.strip_prefix(b"sha256=").ok_or(malformed.clone())?
        } else {
            value
        };
        let signature = decode_hex(hex).ok_or(malformed)?;
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC accepts a key of any length");
        mac.update(body);
        mac.verify_slice(&signature)
            .map_err(|_| Rejection::Mismatch { header })
    }
}

fn decode_hex(text: &[u8]) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    let digit = |c: u8| (c as char).to_digit(16);
    text.chunks(2)
        .map(|pair| Some((digit(pair[0])? * 16 + digit(pair[1])?) as u8))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret() -> WebhookSecret {
        WebhookSecret::from_file_contents(b"s3cret\n".to_vec()).expect("not empty")
    }

    fn sign(body: &[u8]) -> String {
        let signed = secret().sign(body);
        signed
            .strip_prefix("sha256=")
            .expect("signatures carry their algorithm")
            .to_owned()
    }

    fn headers<'a>(pairs: &'a [(&'a str, String)]) -> impl Fn(&str) -> Option<&'a [u8]> {
        move |name| {
            pairs
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_bytes())
        }
    }

    #[test]
    fn a_github_signature_over_the_body_is_accepted_and_one_over_another_body_is_not() {
        let body = br#"{"ref":"refs/heads/main"}"#;
        let signed = [("X-Hub-Signature-256", format!("sha256={}", sign(body)))];
        assert_eq!(
            secret().verify(headers(&signed), body),
            Ok(Provider::GitHub)
        );
        assert_eq!(
            secret().verify(headers(&signed), b"{}"),
            Err(Rejection::Mismatch {
                header: "x-hub-signature-256"
            })
        );
    }

    #[test]
    fn gitea_forgejo_and_generic_senders_are_told_apart_by_their_header() {
        let body = b"payload";
        for (name, value, provider) in [
            ("X-Gitea-Signature", sign(body), Provider::Gitea),
            ("X-Forgejo-Signature", sign(body), Provider::Gitea),
            (
                "X-Stagehand-Signature",
                format!("sha256={}", sign(body)),
                Provider::Generic,
            ),
        ] {
            let pairs = [(name, value)];
            assert_eq!(secret().verify(headers(&pairs), body), Ok(provider));
        }
    }

    #[test]
    fn a_gitlab_token_must_equal_the_secret() {
        let good = [("X-Gitlab-Token", "s3cret".to_owned())];
        let bad = [("X-Gitlab-Token", "s3cre".to_owned())];
        assert_eq!(secret().verify(headers(&good), b""), Ok(Provider::GitLab));
        assert!(matches!(
            secret().verify(headers(&bad), b""),
            Err(Rejection::Mismatch { .. })
        ));
    }

    #[test]
    fn a_request_without_a_signature_or_with_a_garbled_one_is_refused() {
        assert_eq!(
            secret().verify(headers(&[]), b"x"),
            Err(Rejection::Unsigned)
        );
        let garbled = [("X-Hub-Signature-256", "sha1=abcd".to_owned())];
        assert!(matches!(
            secret().verify(headers(&garbled), b"x"),
            Err(Rejection::Malformed { .. })
        ));
        let odd = [("X-Gitea-Signature", "abc".to_owned())];
        assert!(matches!(
            secret().verify(headers(&odd), b"x"),
            Err(Rejection::Malformed { .. })
        ));
    }

    #[test]
    fn an_empty_secret_file_gives_no_secret() {
        assert!(WebhookSecret::from_file_contents(b"\n".to_vec()).is_none());
    }
}
