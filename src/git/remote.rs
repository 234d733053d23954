//! Where a repository lives and how to authenticate to it. Secrets never reach `Debug`,
//! `Display`, error values or logs: URLs are shown with their user info removed.

use std::fmt;
use std::path::PathBuf;

/// A repository location as users write it: `file://`, `https://`, `http://`, `ssh://`,
/// scp-like `user@host:path`, `git://`, or a plain path.
#[derive(Clone, PartialEq, Eq)]
pub struct RemoteUrl(String);

impl RemoteUrl {
    pub fn new(url: impl Into<String>) -> Self {
        Self(url.into())
    }

    /// The URL as given, for the transports; never print it.
    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }

    pub(crate) fn is_plain_http(&self) -> bool {
        self.0.starts_with("http://")
    }

    /// The URL with any `user:password@` removed, safe for errors and logs.
    pub fn redacted(&self) -> String {
        match self.0.split_once("://") {
            Some((scheme, rest)) => {
                let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
                match authority.rsplit_once('@') {
                    Some((_, host)) => format!("{scheme}://{host}{path}"),
                    None => self.0.clone(),
                }
            }
            None => self.0.clone(),
        }
    }
}

impl fmt::Display for RemoteUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl fmt::Debug for RemoteUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RemoteUrl({:?})", self.redacted())
    }
}

/// A secret string: no `Debug` or `Display` shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// How to authenticate to the remote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Credentials {
    /// Nothing beyond what the transport does by itself (file paths, `git://`, an ssh agent).
    #[default]
    None,
    /// HTTP basic authentication.
    Basic { username: String, password: Secret },
    /// An access token, sent as the basic-auth password; most hosts accept any user name with a
    /// token, GitHub documents `x-access-token`.
    Token { token: Secret },
    /// A private key file for `ssh://` and scp-like URLs.
    SshKey { path: PathBuf },
}

impl Credentials {
    /// The user name and password for HTTP, if these credentials have one.
    pub(crate) fn http_account(&self) -> Option<(&str, &Secret)> {
        match self {
            Credentials::Basic { username, password } => Some((username, password)),
            Credentials::Token { token } => Some(("x-access-token", token)),
            Credentials::None | Credentials::SshKey { .. } => None,
        }
    }

    /// The ssh command that uses the configured key and never prompts.
    pub(crate) fn ssh_command(&self) -> Option<String> {
        match self {
            Credentials::SshKey { path } => Some(format!(
                "ssh -i '{}' -o IdentitiesOnly=yes -o BatchMode=yes",
                path.display().to_string().replace('\'', "'\\''")
            )),
            _ => None,
        }
    }

    /// Every secret value, so that text from a subprocess can be scrubbed before it is kept.
    pub(crate) fn secrets(&self) -> Vec<&str> {
        match self {
            Credentials::Basic { password, .. } => vec![password.expose()],
            Credentials::Token { token } => vec![token.expose()],
            Credentials::None | Credentials::SshKey { .. } => Vec::new(),
        }
    }

    /// `text` with every secret replaced by `***`.
    pub(crate) fn scrub(&self, text: &str) -> String {
        self.secrets()
            .into_iter()
            .filter(|s| !s.is_empty())
            .fold(text.to_owned(), |text, secret| text.replace(secret, "***"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_info_is_removed_from_displayed_urls() {
        let url = RemoteUrl::new("https://alice:hunter2@git.example.test/shop.git");
        assert_eq!(url.to_string(), "https://git.example.test/shop.git");
        assert!(!format!("{url:?}").contains("hunter2"));
        assert_eq!(RemoteUrl::new("/srv/git/shop").to_string(), "/srv/git/shop");
    }

    #[test]
    fn secrets_are_not_printed_and_are_scrubbed_from_text() {
        let creds = Credentials::Token {
            token: Secret::new("tok-123"),
        };
        assert!(!format!("{creds:?}").contains("tok-123"));
        assert_eq!(creds.scrub("denied for tok-123"), "denied for ***");
    }
}
