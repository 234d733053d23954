//! `stagehand secrets`: prints what `sops -d` prints, writes files `sops -d` opens, and exits
//! with distinct codes for a MAC mismatch and for no matching key.

use std::process::Command;

use super::{Keys, sops_decrypt, sops_encrypt};

fn stagehand(keys: &Keys, key: Option<usize>, args: &[&str]) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_stagehand"));
    cmd.arg("secrets")
        .args(args)
        .current_dir(keys.dir.path())
        .env_clear()
        .env("HOME", keys.dir.path())
        .env("XDG_CONFIG_HOME", keys.dir.path().join("config"));
    if let Some(i) = key {
        cmd.env("SOPS_AGE_KEY_FILE", keys.key_file(i));
    }
    cmd.output().expect("stagehand runs")
}

#[test]
fn decrypt_prints_what_sops_prints_and_binary_byte_for_byte() {
    let keys = Keys::new();
    for (name, content) in [
        ("s.yaml", &b"a: 1\n# c\nb: [x, y]\n"[..]),
        ("s.json", br#"{"a": {"b": 1.5}}"#),
        ("s.env", b"A=1\n"),
        ("s.bin", b"\x00\xff\x10raw bytes\n"),
    ] {
        let plain = keys.write(name, content);
        let enc = keys.write(&format!("enc.{name}"), &sops_encrypt(&keys, &plain, &[]));
        let out = stagehand(
            &keys,
            Some(0),
            &["decrypt", enc.to_str().expect("UTF-8 path")],
        );
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.stdout, sops_decrypt(&keys, 0, &enc, &[]), "{name}");
        if name == "s.bin" {
            assert_eq!(out.stdout, content);
        }
    }
}

#[test]
fn decrypt_converts_with_input_and_output_types() {
    let keys = Keys::new();
    let plain = keys.write("s.yaml", b"a: 1\nb:\n    c: true\n");
    let enc = keys.write("enc.data", &sops_encrypt(&keys, &plain, &[]));
    let args = ["--input-type", "yaml", "--output-type", "json"];
    let path = enc.to_str().expect("UTF-8 path");
    let out = stagehand(
        &keys,
        Some(0),
        &["decrypt", args[0], args[1], args[2], args[3], path],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, sops_decrypt(&keys, 0, &enc, &args));
}

#[test]
fn a_mac_mismatch_and_a_missing_key_have_their_own_exit_codes() {
    let keys = Keys::new();
    let plain = keys.write("s.yaml", b"a: secret\nb_unencrypted: open\n");
    let enc = String::from_utf8(sops_encrypt(&keys, &plain, &[])).expect("UTF-8");
    let edited = keys.write(
        "edited.yaml",
        enc.replace("b_unencrypted: open", "b_unencrypted: shut")
            .as_bytes(),
    );
    let out = stagehand(
        &keys,
        Some(0),
        &["decrypt", edited.to_str().expect("UTF-8 path")],
    );
    assert_eq!(
        out.status.code(),
        Some(51),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stdout.is_empty(),
        "nothing is printed on a MAC mismatch"
    );
    let out = stagehand(
        &keys,
        Some(0),
        &[
            "decrypt",
            "--ignore-mac",
            edited.to_str().expect("UTF-8 path"),
        ],
    );
    assert!(out.status.success());
    let good = keys.write("good.yaml", enc.as_bytes());
    let other = Keys::new();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_stagehand"));
    let out = cmd
        .args(["secrets", "decrypt", good.to_str().expect("UTF-8 path")])
        .env_clear()
        .env("HOME", other.dir.path())
        .env("SOPS_AGE_KEY_FILE", other.key_file(0))
        .output()
        .expect("stagehand runs");
    assert_eq!(
        out.status.code(),
        Some(128),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let help = Command::new(env!("CARGO_BIN_EXE_stagehand"))
        .args(["secrets", "decrypt", "--help"])
        .output()
        .expect("stagehand runs");
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("51") && help.contains("128"), "{help}");
}

#[test]
fn keys_are_read_from_sops_age_key_and_the_default_keys_txt() {
    let keys = Keys::new();
    let plain = keys.write("s.yaml", b"a: secret\n");
    let enc = keys.write("enc.yaml", &sops_encrypt(&keys, &plain, &[]));
    let key_text = std::fs::read_to_string(keys.key_file(1)).expect("key file readable");
    let secret_line = key_text
        .lines()
        .find(|l| l.starts_with("AGE-SECRET-KEY-"))
        .expect("a key line");
    let out = Command::new(env!("CARGO_BIN_EXE_stagehand"))
        .args(["secrets", "decrypt", enc.to_str().expect("UTF-8 path")])
        .env_clear()
        .env("HOME", keys.dir.path())
        .env("SOPS_AGE_KEY", secret_line)
        .output()
        .expect("stagehand runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let config = keys.dir.path().join("xdg");
    std::fs::create_dir_all(config.join("sops/age")).expect("writable");
    std::fs::copy(keys.key_file(0), config.join("sops/age/keys.txt")).expect("copyable");
    let out = Command::new(env!("CARGO_BIN_EXE_stagehand"))
        .args(["secrets", "decrypt", enc.to_str().expect("UTF-8 path")])
        .env_clear()
        .env("HOME", keys.dir.path())
        .env("XDG_CONFIG_HOME", &config)
        .output()
        .expect("stagehand runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, b"a: secret\n");
    // The command is split into words as sops splits it: quotes keep a path with a space whole.
    let spaced = keys.dir.path().join("key dir");
    std::fs::create_dir_all(&spaced).expect("writable");
    std::fs::copy(keys.key_file(1), spaced.join("key.txt")).expect("copyable");
    let command = format!("cat '{}'", spaced.join("key.txt").display());
    let sops = crate::support::tool(crate::support::Tool::Sops);
    let ours = std::path::PathBuf::from(env!("CARGO_BIN_EXE_stagehand"));
    for (program, args) in [(&sops, &["-d"][..]), (&ours, &["secrets", "decrypt"][..])] {
        let out = Command::new(program)
            .args(args)
            .arg(&enc)
            .env_clear()
            .env("HOME", keys.dir.path())
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("SOPS_AGE_KEY_CMD", &command)
            .output()
            .expect("runs");
        assert!(
            out.status.success(),
            "{}: {}",
            program.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.stdout, b"a: secret\n");
    }
}

#[test]
fn a_missing_key_file_is_skipped_while_another_source_has_the_key_as_in_sops() {
    let keys = Keys::new();
    let plain = keys.write("s.yaml", b"a: secret\n");
    let enc = keys.write("enc.yaml", &sops_encrypt(&keys, &plain, &[]));
    let key_text = std::fs::read_to_string(keys.key_file(1)).expect("key file readable");
    let secret_line = key_text
        .lines()
        .find(|l| l.starts_with("AGE-SECRET-KEY-"))
        .expect("a key line");
    let missing = keys.dir.path().join("no-such-keys.txt");
    let run = |program: &std::path::Path, args: &[&str], with_key: bool| {
        let mut cmd = Command::new(program);
        cmd.args(args)
            .arg(&enc)
            .env_clear()
            .env("HOME", keys.dir.path())
            .env("SOPS_AGE_KEY_FILE", &missing);
        if with_key {
            cmd.env("SOPS_AGE_KEY", secret_line);
        }
        cmd.output().expect("runs")
    };
    let ours = std::path::Path::new(env!("CARGO_BIN_EXE_stagehand"));
    let sops = crate::support::tool(crate::support::Tool::Sops);
    let (theirs, mine) = (
        run(&sops, &["-d"], true),
        run(ours, &["secrets", "decrypt"], true),
    );
    assert!(
        theirs.status.success(),
        "{}",
        String::from_utf8_lossy(&theirs.stderr)
    );
    assert!(
        mine.status.success(),
        "{}",
        String::from_utf8_lossy(&mine.stderr)
    );
    assert_eq!(mine.stdout, theirs.stdout);
    // With no other source, both fail, and ours names the file it could not read.
    let (theirs, mine) = (
        run(&sops, &["-d"], false),
        run(ours, &["secrets", "decrypt"], false),
    );
    assert!(!theirs.status.success());
    assert!(!mine.status.success());
    assert!(mine.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&mine.stderr);
    assert!(stderr.contains("no-such-keys.txt"), "{stderr}");
}

#[test]
fn encrypt_in_place_and_rotate_write_files_sops_opens() {
    let keys = Keys::new();
    let plain = keys.write("s.yaml", b"password: secret\nlist:\n    - 1\n");
    let path = plain.to_str().expect("UTF-8 path");
    let out = stagehand(
        &keys,
        None,
        &["encrypt", "--age", &keys.recipients[0], "--in-place", path],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        sops_decrypt(&keys, 0, &plain, &[]),
        b"password: secret\nlist:\n    - 1\n"
    );
    let out = stagehand(
        &keys,
        Some(0),
        &[
            "rotate",
            "--add-age",
            &keys.recipients[1],
            "--rm-age",
            &keys.recipients[0],
            path,
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        sops_decrypt(&keys, 1, &plain, &[]),
        b"password: secret\nlist:\n    - 1\n"
    );
    assert!(!super::sops(&keys, Some(0), &["-d", path]).status.success());
}

#[test]
fn encrypt_without_recipients_uses_the_sops_yaml_creation_rule() {
    let keys = Keys::new();
    keys.write(
        ".sops.yaml",
        format!(
            "creation_rules:\n  - path_regex: \\.yaml$\n    encrypted_regex: ^data$\n    age: {}\n",
            keys.recipients[1]
        )
        .as_bytes(),
    );
    keys.write("s.yaml", b"kind: Secret\ndata:\n    k: v\n");
    let out = stagehand(&keys, None, &["encrypt", "s.yaml"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("UTF-8");
    assert!(text.starts_with("kind: Secret\n"), "{text}");
    assert!(text.contains("encrypted_regex: ^data$"));
    let enc = keys.write("enc.yaml", text.as_bytes());
    assert_eq!(
        sops_decrypt(&keys, 1, &enc, &[]),
        b"kind: Secret\ndata:\n    k: v\n"
    );
}
