//! Pushing one branch with a lease, through the `git` CLI because gix cannot push yet. This is
//! the only place that runs `git`; swap it out when gix gains push.
//!
//! `git` runs with a clean environment (no secret of the service reaches it or its ssh), no
//! user or system configuration, and nothing secret on its command line, which every local
//! user can read in `/proc`: the token travels as an `http.extraHeader` in `GIT_CONFIG_*`
//! variables of the child alone, and URLs that embed credentials are refused.

use std::path::Path;

use gix::ObjectId;

use super::{Credentials, RemoteUrl, Timeouts};

/// Why a push did not land.
#[derive(Debug, thiserror::Error)]
// Each variant is described by its message, and its fields by the names the message uses.
#[allow(missing_docs)]
pub enum Error {
    #[error("cannot run git to push to {url}")]
    Spawn {
        url: RemoteUrl,
        #[source]
        source: std::io::Error,
    },
    #[error("{url}: the remote refused the credentials (or needs some and none are configured)")]
    Authentication { url: RemoteUrl },
    #[error("{url}: credentials are only sent over https (or plain http to loopback)")]
    InsecureTransport { url: RemoteUrl },
    #[error("{url}: the URL carries credentials, which git would show on its command line")]
    CredentialsInUrl { url: RemoteUrl },
    #[error(
        "{url}: ssh needs a key and a known_hosts file pinning the server's host key \
         (--git-ssh-key, --git-ssh-known-hosts); ssh's own configuration is not used"
    )]
    UnpinnedHostKey { url: RemoteUrl },
    #[error("{url}: push of {branch:?} timed out (connect timeout {}s, idle timeout {}s)", timeouts.connect.as_secs(), timeouts.idle.as_secs())]
    Timeout {
        url: RemoteUrl,
        branch: String,
        timeouts: Timeouts,
    },
    #[error("{url}: push of {branch:?} failed: {message}")]
    Failed {
        url: RemoteUrl,
        branch: String,
        /// git's own words, with any secret scrubbed.
        message: String,
    },
}

/// What the remote did with the push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The branch now points at the pushed commit.
    Updated,
    /// The branch was not where we expected: someone pushed first. Nothing changed there.
    Rejected {
        /// git's words (`stale info`, `fetch first`, ...).
        reason: String,
    },
    /// The remote refused the update itself (a protected branch, a hook that declined it);
    /// trying again on a newer tip would not help. Nothing changed there.
    Declined {
        /// The remote's words.
        reason: String,
    },
}

/// Sets `branch` on the remote to `new` if and only if it is still at `expected` (`None`: must
/// not exist). `git_dir` must hold `new` and its history.
pub fn push_with_lease(
    git_dir: &Path,
    url: &RemoteUrl,
    credentials: &Credentials,
    timeouts: &Timeouts,
    branch: &str,
    expected: Option<ObjectId>,
    new: ObjectId,
) -> Result<Outcome, Error> {
    if url.has_embedded_credentials() {
        return Err(Error::CredentialsInUrl { url: url.clone() });
    }
    if url.credentials_in_clear_text() && credentials.http_account().is_some() {
        return Err(Error::InsecureTransport { url: url.clone() });
    }
    if url.is_ssh() && credentials.known_hosts().is_none() {
        return Err(Error::UnpinnedHostKey { url: url.clone() });
    }
    let refname = format!("refs/heads/{branch}");
    let lease = format!(
        "--force-with-lease={refname}:{}",
        expected.map(|id| id.to_string()).unwrap_or_default()
    );
    let mut command = crate::process::clean_command("git");
    command
        .arg("--git-dir")
        .arg(git_dir)
        .args(["push", "--porcelain", "--no-follow-tags", &lease, "--"])
        .arg(url.as_str())
        .arg(format!("{new}:{refname}"))
        // No user or system configuration (credential helpers, url rewrites), no prompts.
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_ASKPASS", "/bin/false")
        .env("SSH_ASKPASS", "/bin/false")
        .env("LC_ALL", "C");
    // git has no connect timeout for http; the idle one (curl's low-speed limit) also ends a
    // connection that was accepted and then left silent.
    let mut config = vec![
        ("http.lowSpeedLimit".to_owned(), "1".to_owned()),
        (
            "http.lowSpeedTime".to_owned(),
            Timeouts::seconds(timeouts.idle).to_string(),
        ),
    ];
    // Credentials go through the child's environment, never the command line that `ps` shows.
    if let Some((username, password)) = credentials.http_account() {
        let basic = base64_encode(format!("{username}:{}", password.expose()).as_bytes());
        config.push((
            "http.extraHeader".to_owned(),
            format!("Authorization: Basic {basic}"),
        ));
    }
    command.env("GIT_CONFIG_COUNT", config.len().to_string());
    for (i, (key, value)) in config.into_iter().enumerate() {
        command
            .env(format!("GIT_CONFIG_KEY_{i}"), key)
            .env(format!("GIT_CONFIG_VALUE_{i}"), value);
    }
    if let Some(ssh) = credentials.ssh_command(timeouts) {
        command.env("GIT_SSH_COMMAND", ssh);
    }
    let output = command.output().map_err(|source| Error::Spawn {
        url: url.clone(),
        source,
    })?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = credentials.scrub(&String::from_utf8_lossy(&output.stderr));

    // Porcelain: one line per ref, "<flag>\t<from>:<to>\t<summary>"; `!` means rejected.
    let line = stdout
        .lines()
        .find(|l| l.split('\t').nth(1).is_some_and(|r| r.ends_with(&refname)));
    match line {
        // git marks its own lease and fast-forward refusals `[rejected]`, and what the remote
        // refused (hooks, protected branches) `[remote rejected]`.
        Some(line) if line.starts_with('!') => {
            let summary = line.split('\t').nth(2).unwrap_or("rejected").to_owned();
            // A ref that moved while the remote held its lock is a lease conflict too.
            let raced = ["failed to update ref", "failed to lock", "cannot lock ref"]
                .iter()
                .any(|needle| summary.contains(needle) || stderr.contains(needle));
            if summary.starts_with("[remote rejected]") && !raced {
                let hooks: Vec<&str> = stderr
                    .lines()
                    .filter_map(|l| l.strip_prefix("remote: "))
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .collect();
                let reason = if hooks.is_empty() {
                    summary
                } else {
                    format!("{summary}: {}", hooks.join("; "))
                };
                Ok(Outcome::Declined { reason })
            } else {
                Ok(Outcome::Rejected { reason: summary })
            }
        }
        Some(_) if output.status.success() => Ok(Outcome::Updated),
        _ => {
            let message = stderr
                .lines()
                .filter(|l| !l.trim().is_empty())
                .collect::<Vec<_>>()
                .join("; ");
            let auth = [
                "Authentication failed",
                "could not read Username",
                "403",
                "401",
            ];
            if auth.iter().any(|needle| message.contains(needle)) {
                return Err(Error::Authentication { url: url.clone() });
            }
            // curl's "Operation too slow" (error 28) and ssh's connect or keep-alive timeouts.
            let timeout = [
                "curl 28",
                "Operation too slow",
                "timed out",
                "Timeout, server",
            ];
            if timeout.iter().any(|needle| message.contains(needle)) {
                return Err(Error::Timeout {
                    url: url.clone(),
                    branch: branch.to_owned(),
                    timeouts: *timeouts,
                });
            }
            Err(Error::Failed {
                url: url.clone(),
                branch: branch.to_owned(),
                message,
            })
        }
    }
}

fn base64_encode(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_rfc_4648_vectors() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64_encode(plain.as_bytes()), encoded);
        }
    }
}
