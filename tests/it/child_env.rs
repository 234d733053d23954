//! Programs Stagehand starts get a clean environment: a key command (`SOPS_AGE_KEY_CMD`) sees
//! neither `SOPS_AGE_KEY` nor the service's own settings and tokens. (`git` and `ssh` are
//! checked in `git.rs`, while a push runs.)

use std::process::Command;

use crate::secrets::{Keys, sops_encrypt};

#[test]
fn a_key_command_sees_no_sops_age_key_or_other_secrets_of_the_service() {
    let keys = Keys::new();
    let plain = keys.write("s.yaml", b"a: secret\n");
    let enc = keys.write("enc.yaml", &sops_encrypt(&keys, &plain, &[]));
    let key_text = std::fs::read_to_string(keys.key_file(0)).expect("key file readable");
    let secret_line = key_text
        .lines()
        .find(|l| l.starts_with("AGE-SECRET-KEY-"))
        .expect("a key line");
    let seen = keys.path("seen.env");
    let command = format!(
        "sh -c 'env > \"{}\"; cat \"{}\"'",
        seen.display(),
        keys.key_file(1).display()
    );
    let out = Command::new(env!("CARGO_BIN_EXE_stagehand"))
        .args(["secrets", "decrypt"])
        .arg(&enc)
        .env_clear()
        .env("HOME", keys.dir.path())
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("SOPS_AGE_KEY", secret_line)
        .env("STAGEHAND_GIT_TOKEN_FILE", "/run/secrets/git-token")
        .env("AWS_SECRET_ACCESS_KEY", "aws-sentinel")
        .env("SOPS_AGE_KEY_CMD", &command)
        .output()
        .expect("stagehand runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, b"a: secret\n");
    let seen = std::fs::read_to_string(&seen).expect("the key command ran and wrote its env");
    assert!(seen.contains("PATH="), "{seen}");
    assert!(seen.contains("HOME="), "{seen}");
    for secret in [
        "SOPS_AGE_KEY",
        secret_line,
        "STAGEHAND_",
        "AWS_SECRET_ACCESS_KEY",
    ] {
        assert!(
            !seen.contains(secret),
            "the key command saw {secret}: {seen}"
        );
    }
}
