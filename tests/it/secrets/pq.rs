//! Post-quantum age keys (`age1pq1…`) against the real sops 3.11, keys files that mix key
//! types, `.sops.yaml` `stores:`, `keygen`, `--output-type` and atomic in-place writes.

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::Path;
use std::process::{Command, Output};

use super::{Keys, sops, sops_decrypt};

/// Key index 2 (`key2.txt`, beside age-keygen's `key0.txt`/`key1.txt`) is a post-quantum
/// identity made by `stagehand secrets keygen --pq`; returns its recipient.
fn add_pq_key(keys: &Keys) -> String {
    let out = stagehand(keys, &[], &["keygen", "--pq", "-o", "key2.txt"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(keys.key_file(2)).expect("keygen wrote the file");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines.len(),
        3,
        "created, public key, identity: {}",
        lines.len()
    );
    assert!(lines[0].starts_with("# created: 20"));
    let recipient = lines[1]
        .strip_prefix("# public key: ")
        .expect("the public key comment");
    assert!(recipient.starts_with("age1pq1") && recipient.len() > 1900);
    assert!(lines[2].starts_with("AGE-SECRET-KEY-PQ-1"));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        format!("Public key: {recipient}")
    );
    let mode = std::fs::metadata(keys.key_file(2))
        .expect("exists")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    recipient.to_owned()
}

fn stagehand(keys: &Keys, env: &[(&str, &Path)], args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_stagehand"));
    cmd.arg("secrets")
        .args(args)
        .current_dir(keys.dir.path())
        .env_clear()
        .env("HOME", keys.dir.path())
        .env("XDG_CONFIG_HOME", keys.dir.path().join("config"));
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("stagehand runs")
}

fn ok(out: Output, what: &str) -> Vec<u8> {
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

const CASES: &[(&str, &[u8])] = &[
    (
        "s.yaml",
        b"a: 1\nnested:\n    list:\n        - x\n        - k: v\n          m: |\n            two\n            lines\n    s: text\n",
    ),
    ("s.json", br#"{"a": {"b": [1, {"c": "d"}], "e": "f"}}"#),
    ("s.env", b"A=1\nB=two\n"),
    ("s.bin", b"\x00\xff\x10raw bytes\n"),
];

#[test]
fn files_sops_encrypts_to_post_quantum_and_mixed_recipients_decrypt_as_sops_prints_them() {
    let keys = Keys::new();
    let pq = add_pq_key(&keys);
    for (recipients, with) in [
        (pq.clone(), vec![2]),
        (format!("{pq},{}", keys.recipients[0]), vec![0, 2]),
    ] {
        for (name, content) in CASES {
            let plain = keys.write(name, content);
            let enc_name = format!("enc.{name}");
            let out = sops(
                &keys,
                None,
                &["-e", "--age", &recipients, plain.to_str().expect("UTF-8")],
            );
            let enc = keys.write(&enc_name, &ok(out, "sops -e"));
            for &key in &with {
                let ours = ok(
                    stagehand(
                        &keys,
                        &[("SOPS_AGE_KEY_FILE", &keys.key_file(key))],
                        &["decrypt", &enc_name],
                    ),
                    "stagehand decrypt",
                );
                assert_eq!(
                    ours,
                    sops_decrypt(&keys, key, &enc, &[]),
                    "{name} key {key}"
                );
            }
        }
    }
}

#[test]
fn files_stagehand_encrypts_to_post_quantum_and_mixed_recipients_open_with_sops() {
    let keys = Keys::new();
    let pq = add_pq_key(&keys);
    for (recipients, with) in [
        (pq.clone(), vec![2]),
        (format!("{pq},{}", keys.recipients[1]), vec![1, 2]),
    ] {
        for (name, content) in CASES {
            keys.write(name, content);
            let ours = ok(
                stagehand(&keys, &[], &["encrypt", "--age", &recipients, name]),
                "encrypt",
            );
            let enc = keys.write(&format!("ours.{name}"), &ours);
            let theirs_out = sops(&keys, None, &["-e", "--age", &recipients, name]);
            let theirs = keys.write(&format!("theirs.{name}"), &ok(theirs_out, "sops -e"));
            for &key in &with {
                assert_eq!(
                    sops_decrypt(&keys, key, &enc, &[]),
                    sops_decrypt(&keys, key, &theirs, &[]),
                    "{name} key {key}"
                );
            }
        }
    }
}

#[test]
fn rotate_add_age_post_quantum_lets_sops_decrypt_with_the_new_key_and_replaces_the_file_by_rename()
{
    let keys = Keys::new();
    let pq = add_pq_key(&keys);
    let plain = keys.write("s.yaml", b"a: 1\nb: secret\n");
    let out = sops(
        &keys,
        None,
        &[
            "-e",
            "--age",
            &keys.recipients[0],
            plain.to_str().expect("UTF-8"),
        ],
    );
    let enc = keys.write("enc.yaml", &ok(out, "sops -e"));
    std::fs::set_permissions(&enc, std::fs::Permissions::from_mode(0o640)).expect("chmod");
    // A hard link keeps the old inode: a rename replaces the name, a truncating write would
    // change the linked file too.
    let link = keys.path("old.yaml");
    std::fs::hard_link(&enc, &link).expect("hard link");
    let before = std::fs::read(&enc).expect("readable");
    let inode = std::fs::metadata(&enc).expect("exists").ino();
    ok(
        stagehand(
            &keys,
            &[("SOPS_AGE_KEY_FILE", &keys.key_file(0))],
            &["rotate", "--add-age", &pq, "enc.yaml"],
        ),
        "rotate",
    );
    assert_eq!(sops_decrypt(&keys, 2, &enc, &[]), b"a: 1\nb: secret\n");
    assert_eq!(sops_decrypt(&keys, 0, &enc, &[]), b"a: 1\nb: secret\n");
    let meta = std::fs::metadata(&enc).expect("exists");
    assert_ne!(meta.ino(), inode, "rotate replaced the file by a rename");
    assert_eq!(meta.permissions().mode() & 0o777, 0o640, "permissions kept");
    assert_eq!(std::fs::read(&link).expect("readable"), before);
    let leftovers: Vec<_> = std::fs::read_dir(keys.dir.path())
        .expect("readable dir")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "no temporary file is left behind");

    // encrypt --in-place goes the same way.
    let plain_inode = std::fs::metadata(&plain).expect("exists").ino();
    ok(
        stagehand(
            &keys,
            &[],
            &["encrypt", "--in-place", "--age", &pq, "s.yaml"],
        ),
        "encrypt",
    );
    assert_ne!(
        std::fs::metadata(&plain).expect("exists").ino(),
        plain_inode
    );
    assert_eq!(sops_decrypt(&keys, 2, &plain, &[]), b"a: 1\nb: secret\n");
}

#[test]
fn a_keys_file_with_a_post_quantum_identity_first_and_an_unknown_line_decrypts_for_every_key_it_holds()
 {
    let keys = Keys::new();
    let pq = add_pq_key(&keys);
    let x25519 = std::fs::read_to_string(keys.key_file(0)).expect("readable");
    let pq_text = std::fs::read_to_string(keys.key_file(2)).expect("readable");
    let mixed = keys.write(
        "mixed.txt",
        format!(
            "{pq_text}AGE-PLUGIN-YUBIKEY-1QYQSZQGPQYQSZQGPQYQSZQGPQYQSZQGPQYQSZQGPQYQSZQGPQYQSZQGPQYQS\nSOMETHING-ELSE-1\n{x25519}"
        )
        .as_bytes(),
    );
    for (recipient, key) in [(pq.as_str(), 2), (keys.recipients[0].as_str(), 0)] {
        let plain = keys.write("s.yaml", b"a: only\n");
        let out = sops(
            &keys,
            None,
            &["-e", "--age", recipient, plain.to_str().expect("UTF-8")],
        );
        keys.write("enc.yaml", &ok(out, "sops -e"));
        let ours = ok(
            stagehand(
                &keys,
                &[("SOPS_AGE_KEY_FILE", &mixed)],
                &["decrypt", "enc.yaml"],
            ),
            "decrypt",
        );
        assert_eq!(ours, sops_decrypt(&keys, key, &keys.path("enc.yaml"), &[]));
    }
    // A file with nothing usable still fails, naming the line and not its text.
    let bad = keys.write("bad.txt", b"# only\nSOMETHING-ELSE-1SECRETSENTINEL\n");
    let out = stagehand(
        &keys,
        &[("SOPS_AGE_KEY_FILE", &bad)],
        &["decrypt", "enc.yaml"],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 2"), "{err}");
    assert!(!err.contains("SENTINEL"), "{err}");
}

#[test]
fn stores_indents_of_sops_yaml_shape_decrypt_and_encrypt_output_as_sops_does() {
    let keys = Keys::new();
    keys.write(
        ".sops.yaml",
        format!(
            "stores:\n  yaml:\n    indent: 2\n  json:\n    indent: 4\ncreation_rules:\n  - age: {}\n",
            keys.recipients[0]
        )
        .as_bytes(),
    );
    for (name, content) in &CASES[..2] {
        let plain = keys.write(name, content);
        let out = sops(&keys, None, &["-e", plain.to_str().expect("UTF-8")]);
        let enc = keys.write(&format!("enc.{name}"), &ok(out, "sops -e"));
        let ours = ok(
            stagehand(
                &keys,
                &[("SOPS_AGE_KEY_FILE", &keys.key_file(0))],
                &["decrypt", &format!("enc.{name}")],
            ),
            "decrypt",
        );
        let theirs = sops_decrypt(&keys, 0, &enc, &[]);
        assert_eq!(
            String::from_utf8_lossy(&ours),
            String::from_utf8_lossy(&theirs),
            "{name}"
        );
        // Our encrypted file is laid out as sops lays out its own: same lines, values aside.
        let ours_enc = ok(stagehand(&keys, &[], &["encrypt", name]), "encrypt");
        let shape = |t: &[u8]| {
            String::from_utf8_lossy(t)
                .lines()
                .map(|l| l.split(['"', ':']).next().unwrap_or("").to_owned())
                .filter(|l| !l.trim().is_empty())
                .take(12)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            shape(&ours_enc),
            shape(&std::fs::read(&enc).expect("readable")),
            "{name}"
        );
    }
}

#[test]
fn encrypt_output_type_writes_binary_and_dotenv_inputs_in_another_store() {
    let keys = Keys::new();
    for (name, content, input, output) in [
        ("s.bin", &b"\x00\xff\x10raw bytes\n"[..], "binary", "yaml"),
        ("s.env", b"A=1\nB=two\n", "dotenv", "json"),
    ] {
        keys.write(name, content);
        let ours = ok(
            stagehand(
                &keys,
                &[],
                &[
                    "encrypt",
                    "--age",
                    &keys.recipients[0],
                    "--output-type",
                    output,
                    name,
                ],
            ),
            "encrypt",
        );
        let enc = keys.write(&format!("enc.{name}.{output}"), &ours);
        let args = ["--input-type", output, "--output-type", input];
        assert_eq!(sops_decrypt(&keys, 0, &enc, &args), *content, "{name}");
    }
}
