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

    /// Whether credentials would travel in clear text to another machine: plain `http://` to
    /// anything but a loopback address.
    pub(crate) fn credentials_in_clear_text(&self) -> bool {
        let Some(rest) = self.0.strip_prefix("http://") else {
            return false;
        };
        let authority = rest.split('/').next().unwrap_or("");
        let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        let host = if host_port.starts_with('[') {
            host_port.split(']').next().map_or("", |h| &h[1..])
        } else {
            host_port.split(':').next().unwrap_or("")
        };
        let loopback = host.eq_ignore_ascii_case("localhost")
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        !loopback
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
    /// A private key file for `ssh://` and scp-like URLs, and optionally the known-hosts file
    /// that pins the server's host key (otherwise ssh's own known-hosts files decide).
    SshKey {
        path: PathBuf,
        known_hosts: Option<PathBuf>,
    },
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
            Credentials::SshKey { path, known_hosts } => {
                let quote =
                    |p: &PathBuf| format!("'{}'", p.display().to_string().replace('\'', "'\\''"));
                let mut command = format!(
                    "ssh -i {} -o IdentitiesOnly=yes -o BatchMode=yes",
                    quote(path)
                );
                if let Some(file) = known_hosts {
                    command.push_str(&format!(
                        " -o UserKnownHostsFile={} -o StrictHostKeyChecking=yes",
                        quote(file)
                    ));
                }
                Some(command)
            }
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
    fn only_plain_http_to_another_machine_counts_as_clear_text() {
        let clear = |url: &str| RemoteUrl::new(url).credentials_in_clear_text();
        assert!(clear("http://git.example.test/shop.git"));
        assert!(clear("http://user@10.0.0.1:8080/shop.git"));
        assert!(!clear("http://127.0.0.1:8080/shop.git"));
        assert!(!clear("http://localhost/shop.git"));
        assert!(!clear("http://[::1]:9000/shop.git"));
        assert!(!clear("https://git.example.test/shop.git"));
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
