//! Where a repository lives and how to authenticate to it. Secrets never reach `Debug`,
//! `Display`, error values or logs: URLs are shown with their user info removed.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A repository location as users write it: `file://`, `https://`, `http://`, `ssh://`,
/// scp-like `user@host:path`, `git://`, or a plain path.
#[derive(Clone, PartialEq, Eq)]
pub struct RemoteUrl(String);

impl RemoteUrl {
    /// Wraps a URL; nothing is checked until it is used.
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

    /// Whether the transport is ssh: `ssh://` (and git's `git+ssh://` spellings) or scp-like
    /// `host:path`, which git tells from a local path by a `:` before any `/`.
    pub(crate) fn is_ssh(&self) -> bool {
        match self.0.split_once("://") {
            Some((scheme, _)) => ["ssh", "git+ssh", "ssh+git"]
                .iter()
                .any(|s| scheme.eq_ignore_ascii_case(s)),
            None => self
                .0
                .split_once(':')
                .is_some_and(|(host, _)| host.len() > 1 && !host.contains('/')),
        }
    }

    /// Whether the URL itself carries a password or token (`user:password@`, or any user info
    /// over http), which would reach the command line of `git` and its helpers.
    pub(crate) fn has_embedded_credentials(&self) -> bool {
        let Some((scheme, rest)) = self.0.split_once("://") else {
            return false;
        };
        let authority = rest.split('/').next().unwrap_or("");
        let Some((user_info, _)) = authority.rsplit_once('@') else {
            return false;
        };
        scheme.to_ascii_lowercase().starts_with("http") || user_info.contains(':')
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
    /// Wraps a value so that it is never printed.
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

/// How long the network may keep a fetch or push waiting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Establishing the connection (TCP, and for ssh the greeting).
    pub connect: Duration,
    /// The longest wait for the next byte once connected; a server that accepts and then says
    /// nothing fails after this long.
    pub idle: Duration,
}

impl Default for Timeouts {
    /// git's own transports wait minutes or forever; a service that polls should notice a dead
    /// remote on its next interval instead.
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(30),
            idle: Duration::from_secs(60),
        }
    }
}

impl Timeouts {
    /// Whole seconds, at least one, as ssh and git's configuration take them.
    pub(crate) fn seconds(duration: Duration) -> u64 {
        duration.as_secs().max(1)
    }
}

/// How to authenticate to the remote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Credentials {
    /// Nothing beyond what the transport does by itself (file paths, `git://`, an ssh agent).
    #[default]
    None,
    /// HTTP basic authentication.
    Basic {
        /// The user name.
        username: String,
        /// The password.
        password: Secret,
    },
    /// An access token, sent as the basic-auth password; most hosts accept any user name with a
    /// token, GitHub documents `x-access-token`.
    Token {
        /// The token.
        token: Secret,
    },
    /// A private key file for `ssh://` and scp-like URLs, and the known-hosts file that pins the
    /// server's host key; fetch and push refuse an ssh URL without one.
    SshKey {
        /// The private key file.
        path: PathBuf,
        /// The known-hosts file; required for ssh.
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

    /// The pinned known-hosts file ssh must check the server against, if any.
    pub(crate) fn known_hosts(&self) -> Option<&Path> {
        match self {
            Credentials::SshKey {
                known_hosts: Some(file),
                ..
            } => Some(file),
            _ => None,
        }
    }

    /// The ssh command line for git and gix: a clean environment (`env -i` with the allowed
    /// variables, since gix starts ssh with the service's own), no user or system ssh
    /// configuration, only the configured key, only the pinned host key, never a prompt, and
    /// the connect and keep-alive timeouts. `None` unless these are ssh credentials with a
    /// pinned known-hosts file.
    pub(crate) fn ssh_command(&self, timeouts: &Timeouts) -> Option<String> {
        let Credentials::SshKey {
            path,
            known_hosts: Some(known_hosts),
        } = self
        else {
            return None;
        };
        let quote = |text: &str| format!("'{}'", text.replace('\'', "'\\''"));
        let mut command = String::from("env -i");
        for (name, value) in crate::process::allowed_vars(std::env::vars_os()) {
            command.push_str(&format!(
                " {}={}",
                name.to_string_lossy(),
                quote(&value.to_string_lossy())
            ));
        }
        // gix and git hand the protocol version to ssh in this variable, so it must survive.
        command.push_str(" GIT_PROTOCOL=\"$GIT_PROTOCOL\" ssh -F /dev/null");
        let connect = Timeouts::seconds(timeouts.connect);
        // ssh notices a silent server after ServerAliveCountMax unanswered probes.
        let alive = Timeouts::seconds(timeouts.idle / 3);
        for option in [
            format!(
                "UserKnownHostsFile={}",
                quote(&known_hosts.display().to_string())
            ),
            "GlobalKnownHostsFile=/dev/null".to_owned(),
            "StrictHostKeyChecking=yes".to_owned(),
            "UpdateHostKeys=no".to_owned(),
            "IdentitiesOnly=yes".to_owned(),
            "IdentityAgent=none".to_owned(),
            "BatchMode=yes".to_owned(),
            format!("ConnectTimeout={connect}"),
            format!("ServerAliveInterval={alive}"),
            "ServerAliveCountMax=3".to_owned(),
        ] {
            command.push_str(&format!(" -o {option}"));
        }
        command.push_str(&format!(" -i {}", quote(&path.display().to_string())));
        Some(command)
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
    fn ssh_and_embedded_credentials_are_recognised() {
        for url in [
            "ssh://git@git.example.test/shop.git",
            "git+ssh://git.example.test/shop.git",
            "git@git.example.test:team/shop.git",
            "git.example.test:shop.git",
        ] {
            assert!(RemoteUrl::new(url).is_ssh(), "{url}");
        }
        for url in [
            "/srv/git/shop",
            "./a:b",
            "C:/repo",
            "file:///srv/git/shop",
            "https://h/s",
        ] {
            assert!(!RemoteUrl::new(url).is_ssh(), "{url}");
        }
        assert!(RemoteUrl::new("https://tok@h/s.git").has_embedded_credentials());
        assert!(RemoteUrl::new("ssh://git:pw@h/s.git").has_embedded_credentials());
        assert!(!RemoteUrl::new("ssh://git@h/s.git").has_embedded_credentials());
        assert!(!RemoteUrl::new("git@h:s.git").has_embedded_credentials());
    }

    #[test]
    fn the_ssh_command_is_isolated_and_needs_a_pinned_host_key() {
        let unpinned = Credentials::SshKey {
            path: "/keys/id".into(),
            known_hosts: None,
        };
        assert_eq!(unpinned.ssh_command(&Timeouts::default()), None);
        let pinned = Credentials::SshKey {
            path: "/keys/it's".into(),
            known_hosts: Some("/keys/known_hosts".into()),
        };
        let command = pinned
            .ssh_command(&Timeouts::default())
            .expect("pinned credentials have a command");
        assert!(command.starts_with("env -i "), "{command}");
        for part in [
            " ssh -F /dev/null ",
            "-o UserKnownHostsFile='/keys/known_hosts'",
            "-o StrictHostKeyChecking=yes",
            "-o IdentitiesOnly=yes",
            "-o BatchMode=yes",
            "-o ConnectTimeout=30",
            "-i '/keys/it'\\''s'",
        ] {
            assert!(command.contains(part), "{part} missing: {command}");
        }
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
