//! The environment of the programs Stagehand runs (`git`, `ssh`, key commands): they start from
//! an empty environment plus an allow-list, so the service's own secrets (`SOPS_AGE_KEY`,
//! `SOPS_AGE_KEY_FILE`, `STAGEHAND_*` tokens, cloud credentials) never reach them.

use std::ffi::{OsStr, OsString};
use std::process::Command;

/// What a child may inherit: where programs and the home directory are, the locale, temporary
/// files, TLS trust and proxies. Nothing that names a key or a token.
const INHERITED: &[&str] = &[
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "LANG",
    "LANGUAGE",
    "TZ",
    "TMPDIR",
    "XDG_CONFIG_HOME",
    "XDG_RUNTIME_DIR",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "no_proxy",
];

/// Whether a variable of the parent may be passed to a child.
fn inherited(name: &OsStr) -> bool {
    let name = name.to_string_lossy();
    INHERITED.contains(&name.as_ref()) || (name.starts_with("LC_") && name.len() > 3)
}

/// The allowed variables of `parent`, in its order.
pub(crate) fn allowed_vars(
    parent: impl IntoIterator<Item = (OsString, OsString)>,
) -> Vec<(OsString, OsString)> {
    parent
        .into_iter()
        .filter(|(name, _)| inherited(name))
        .collect()
}

/// `program` with an empty environment plus the allowed variables of this process; add what
/// the child needs with `.env()`.
pub(crate) fn clean_command(program: impl AsRef<OsStr>) -> Command {
    clean_command_from(program, std::env::vars_os())
}

/// As [`clean_command`], inheriting from `parent` instead of this process.
pub(crate) fn clean_command_from(
    program: impl AsRef<OsStr>,
    parent: impl IntoIterator<Item = (OsString, OsString)>,
) -> Command {
    let mut command = Command::new(program);
    command.env_clear().envs(allowed_vars(parent));
    command
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_sees_the_allowed_variables_and_none_of_the_secrets() {
        let parent = [
            ("PATH", std::env::var("PATH").unwrap_or_default()),
            ("HOME", "/home/stagehand".to_owned()),
            ("LC_ALL", "C".to_owned()),
            ("SOPS_AGE_KEY", "AGE-SECRET-KEY-1SENTINEL".to_owned()),
            ("SOPS_AGE_KEY_FILE", "/etc/stagehand/keys.txt".to_owned()),
            ("STAGEHAND_GIT_TOKEN", "tok-sentinel".to_owned()),
            ("AWS_SECRET_ACCESS_KEY", "aws-sentinel".to_owned()),
        ]
        .map(|(k, v)| (OsString::from(k), OsString::from(v)));
        let output = clean_command_from("env", parent)
            .output()
            .expect("env runs");
        assert!(output.status.success());
        let seen = String::from_utf8_lossy(&output.stdout);
        assert!(seen.contains("HOME=/home/stagehand\n"), "{seen}");
        assert!(seen.contains("LC_ALL=C\n"), "{seen}");
        for secret in [
            "SOPS_AGE_KEY",
            "STAGEHAND_",
            "AWS_SECRET",
            "SENTINEL",
            "sentinel",
        ] {
            assert!(!seen.contains(secret), "{secret} reached the child: {seen}");
        }
    }
}
