//! Whatever sops encrypts, Stagehand decrypts to what `sops -d` prints; whatever Stagehand
//! encrypts or rotates, `sops -d` decrypts to what it prints for its own encryption of the
//! same input.

use stagehand::secrets::{self, EncryptOptions, Format, RuleText};

use super::{Keys, sops_decrypt, sops_encrypt};

/// A plaintext document, its file name (the extension picks the store), and sops flags.
struct Case {
    name: &'static str,
    content: &'static [u8],
    flags: &'static [&'static str],
}

const EVERY_TYPE_YAML: &str = r#"# a head comment
apiVersion: v1
kind: Secret
metadata:
    name: db # a trailing comment
    labels:
        app: shop
stringData:
    password: hunter2-sentinel
    empty: ""
    spaced: "  leading and trailing  "
    quoted: "yes"
    colon: "a: b # not a comment"
    unicode: "grüße ✓"
    multiline: |
        line one
        line two
    folded: >-
        folded
        text
int: 42
negative: -7
hex: 0x1F
big: 123456789012345678901234567890
float: 3.25
exp: 1.5e+300
bool: true
other_bool: False
nothing: null
tilde: ~
date: 2024-01-02
datetime: 2024-01-02T03:04:05.120Z
offset: 2001-12-14t21:59:43.10-05:00
binary: !!binary aGVsbG8gd29ybGQ=
list:
    - one
    # a comment inside a list
    - 2
    - nested: map
      with: [flow, list]
    - - inner
      - list
flow: {a: 1, b: [x, y]}
anchor: &shared
    host: db.example
alias: *shared
merged:
    <<: *shared
    port: 5432
clock: "12:30"
version: "1.10"
octal_like: "0755"
user_unencrypted: plain-text
# a foot comment
"#;

const CASES: &[Case] = &[
    Case { name: "every-type.yaml", content: EVERY_TYPE_YAML.as_bytes(), flags: &[] },
    Case {
        name: "multi.yaml",
        content: b"a: 1\n# first doc\n---\nb: two\nlist:\n    - x\n---\n# only a comment\nc: true\n",
        flags: &[],
    },
    Case { name: "unenc-suffix.yaml", content: EVERY_TYPE_YAML.as_bytes(), flags: &["--unencrypted-suffix", "_plain"] },
    Case { name: "enc-suffix.yaml", content: EVERY_TYPE_YAML.as_bytes(), flags: &["--encrypted-suffix", "word"] },
    Case { name: "unenc-regex.yaml", content: EVERY_TYPE_YAML.as_bytes(), flags: &["--unencrypted-regex", "^(kind|apiVersion|metadata)$"] },
    Case { name: "enc-regex.yaml", content: EVERY_TYPE_YAML.as_bytes(), flags: &["--encrypted-regex", "^(data|stringData)$"] },
    Case {
        name: "unenc-comment.yaml",
        content: b"a: 1\n# sops:plain\nb: visible\nc: hidden\nlist:\n    # sops:plain\n    - shown\n    - hidden\n",
        flags: &["--unencrypted-comment-regex", "sops:plain"],
    },
    Case {
        name: "enc-comment.yaml",
        content: b"a: 1\n# sops:enc\nb: hidden\nc: shown\nnested:\n    # sops:enc\n    # second\n    k: v\n",
        flags: &["--encrypted-comment-regex", "sops:enc"],
    },
    Case { name: "mac-only.yaml", content: EVERY_TYPE_YAML.as_bytes(), flags: &["--encrypted-regex", "^stringData$", "--mac-only-encrypted"] },
    Case {
        name: "every-type.json",
        content: br#"{"password": "hunter2-sentinel", "n": 1, "f": 1.5e300, "big": 12345678901234567890, "neg": -0.25, "t": true, "nil": null, "html": "<a&b>", "nested": {"list": [1, "two", false, {"k": "v"}], "empty": {}, "none": []}, "x_unencrypted": "plain"}"#,
        flags: &[],
    },
    Case { name: "enc-regex.json", content: br#"{"kind": "Secret", "data": {"a": "b"}}"#, flags: &["--encrypted-regex", "^data$"] },
    Case {
        name: "app.env",
        content: b"# database settings\nDB_PASSWORD=hunter2-sentinel\nDB_USER_unencrypted=app\nQUOTED=\"kept quotes\"\nMULTI=line1\\nline2\nEMPTY=\n",
        flags: &[],
    },
    Case {
        name: "app.ini",
        content: b"[database]\npassword = hunter2-sentinel\n; the user\nuser = app\n\n[cache]\nhost=localhost\nport = 6379\n",
        flags: &[],
    },
    // Keys that cannot be simple keys (several lines, more than 128 bytes): the explicit
    // `? key` form (found by the fuzz target: the writer used to emit a block key sops rejects).
    Case {
        name: "odd-keys.json",
        content: br#"{"line one\nline two\n": "v1", "a-key-of-more-than-128-bytes-a-key-of-more-than-128-bytes-a-key-of-more-than-128-bytes-a-key-of-more-than-128-bytes-end": {"nested\nkey": ["x"]}}"#,
        flags: &[],
    },
    Case {
        name: "odd-keys.yaml",
        content: b"? |\n    line one\n    line two\n: v1\nlist:\n    - ? \"multi\\nline\"\n      : v2\n",
        flags: &[],
    },
    Case { name: "blob.bin", content: b"\x00\x01\x02 binary \xff\xfe hunter2-sentinel\n", flags: &[] },
    Case { name: "text.txt", content: b"plain text file\nsecond line\n", flags: &[] },
];

fn rule_text(flags: &[&str]) -> RuleText {
    let mut rules = RuleText::default();
    let mut it = flags.iter();
    while let Some(flag) = it.next() {
        let value = || Some((*it.clone().next().expect("flag has a value")).to_owned());
        match *flag {
            "--unencrypted-suffix" => rules.unencrypted_suffix = value(),
            "--encrypted-suffix" => rules.encrypted_suffix = value(),
            "--unencrypted-regex" => rules.unencrypted_regex = value(),
            "--encrypted-regex" => rules.encrypted_regex = value(),
            "--unencrypted-comment-regex" => rules.unencrypted_comment_regex = value(),
            "--encrypted-comment-regex" => rules.encrypted_comment_regex = value(),
            "--mac-only-encrypted" => {
                rules.mac_only_encrypted = true;
                continue;
            }
            other => panic!("unknown flag {other}"),
        }
        it.next();
    }
    rules
}

#[test]
fn whatever_sops_encrypts_stagehand_decrypts_to_what_sops_prints() {
    let keys = Keys::new();
    for case in CASES {
        let plain = keys.write(case.name, case.content);
        let encrypted = sops_encrypt(&keys, &plain, case.flags);
        let enc_path = keys.write(&format!("sops.{}", case.name), &encrypted);
        let format = Format::from_path(&plain);
        let expected = sops_decrypt(
            &keys,
            0,
            &enc_path,
            &[
                "--input-type",
                name_of(format),
                "--output-type",
                name_of(format),
            ],
        );
        for key in 0..2 {
            let ours = secrets::decrypt(&encrypted, format, &keys.identities(key), &enc_path)
                .unwrap_or_else(|e| panic!("{}: {e}", case.name));
            assert_eq!(
                String::from_utf8_lossy(ours.expose()),
                String::from_utf8_lossy(&expected),
                "{} decrypted with key {key}",
                case.name
            );
        }
        assert!(secrets::is_encrypted(&encrypted, format), "{}", case.name);
        assert!(
            !secrets::is_encrypted(case.content, format) || format == Format::Binary,
            "{}",
            case.name
        );
    }
}

fn name_of(format: Format) -> &'static str {
    match format {
        Format::Yaml => "yaml",
        Format::Json => "json",
        Format::Dotenv => "dotenv",
        Format::Ini => "ini",
        Format::Binary => "binary",
    }
}

#[test]
fn whatever_stagehand_encrypts_sops_decrypts_as_it_decrypts_its_own() {
    let keys = Keys::new();
    for case in CASES {
        let plain = keys.write(case.name, case.content);
        let format = Format::from_path(&plain);
        let options = EncryptOptions {
            recipients: keys.recipients.to_vec(),
            rules: rule_text(case.flags),
            ..EncryptOptions::default()
        };
        let ours = secrets::encrypt(case.content, format, &options, &plain)
            .unwrap_or_else(|e| panic!("{}: {e}", case.name));
        let ours_path = keys.write(&format!("ours.{}", case.name), &ours);
        let theirs_path = keys.write(
            &format!("theirs.{}", case.name),
            &sops_encrypt(&keys, &plain, case.flags),
        );
        let type_args = [
            "--input-type",
            name_of(format),
            "--output-type",
            name_of(format),
        ];
        for key in 0..2 {
            assert_eq!(
                String::from_utf8_lossy(&sops_decrypt(&keys, key, &ours_path, &type_args)),
                String::from_utf8_lossy(&sops_decrypt(&keys, key, &theirs_path, &type_args)),
                "{} with key {key}",
                case.name
            );
        }
    }
}

#[test]
fn values_stagehand_encrypts_are_encrypted_exactly_where_sops_encrypts_them() {
    let keys = Keys::new();
    for case in CASES.iter().filter(|c| c.name.ends_with(".yaml")) {
        let plain = keys.write(case.name, case.content);
        let options = EncryptOptions {
            recipients: keys.recipients.to_vec(),
            rules: rule_text(case.flags),
            ..EncryptOptions::default()
        };
        let ours =
            secrets::encrypt(case.content, Format::Yaml, &options, &plain).expect("encrypts");
        let theirs = sops_encrypt(&keys, &plain, case.flags);
        // Ciphertexts differ by IV; the shape (which lines are ENC[...] and of which type) must not.
        let shape = |text: &[u8]| -> Vec<String> {
            String::from_utf8_lossy(text)
                .lines()
                .take_while(|l| !l.starts_with("sops:"))
                .map(|l| match l.find("ENC[AES256_GCM,") {
                    Some(at) => format!(
                        "{}ENC[{}",
                        &l[..at],
                        &l[l.rfind("type:").expect("envelope has a type")..]
                    ),
                    None => l.to_owned(),
                })
                .collect()
        };
        assert_eq!(shape(&ours), shape(&theirs), "{}", case.name);
    }
}

#[test]
fn a_file_rotated_by_stagehand_opens_for_the_new_recipient_only() {
    let keys = Keys::new();
    for name in [
        "rotate.yaml",
        "rotate.json",
        "rotate.env",
        "rotate.ini",
        "rotate.bin",
    ] {
        let content: &[u8] = match name {
            "rotate.yaml" => EVERY_TYPE_YAML.as_bytes(),
            "rotate.json" => br#"{"a": "b", "n": [1, 2]}"#,
            "rotate.env" => b"A=1\nB=two\n",
            "rotate.ini" => b"[s]\nk = v\n",
            _ => b"\x00binary",
        };
        let plain = keys.write(name, content);
        let format = Format::from_path(&plain);
        // sops encrypts to the first key only; Stagehand moves the file to the second.
        let out = super::sops(
            &keys,
            None,
            &[
                "-e",
                "--age",
                &keys.recipients[0],
                plain.to_str().expect("UTF-8 path"),
            ],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let before_path = keys.write(&format!("before.{name}"), &out.stdout);
        let expected = sops_decrypt(&keys, 0, &before_path, &[]);
        let rotated = secrets::rotate(
            &out.stdout,
            format,
            &keys.identities(0),
            &[keys.recipients[1].clone()],
            &[keys.recipients[0].clone()],
            &before_path,
        )
        .unwrap_or_else(|e| panic!("{name}: {e}"));
        let after_path = keys.write(&format!("after.{name}"), &rotated);
        assert_eq!(sops_decrypt(&keys, 1, &after_path, &[]), expected, "{name}");
        let old_key = super::sops(
            &keys,
            Some(0),
            &["-d", after_path.to_str().expect("UTF-8 path")],
        );
        assert!(
            !old_key.status.success(),
            "{name}: the removed recipient can still decrypt"
        );
        assert!(
            secrets::decrypt(&rotated, format, &keys.identities(0), &after_path)
                .expect_err("the removed recipient must not decrypt")
                .is_no_matching_key()
        );
    }
}

#[test]
fn a_sops_yaml_creation_rule_picks_recipients_and_selection_rules() {
    let keys = Keys::new();
    let config = format!(
        "creation_rules:\n  - path_regex: prod/.*\\.yaml$\n    encrypted_regex: ^(data|stringData)$\n    age: {}\n  - age: {}\n",
        keys.recipients[1], keys.recipients[0]
    );
    let config_path = keys.write(".sops.yaml", config.as_bytes());
    std::fs::create_dir(keys.path("prod")).expect("temp dir is writable");
    let target = keys.path("prod/secret.yaml");
    let rule = secrets::config::creation_rule_for(&config_path, &target).expect("a rule matches");
    assert_eq!(rule.recipients, vec![keys.recipients[1].clone()]);
    assert_eq!(
        rule.rules.encrypted_regex.as_deref(),
        Some("^(data|stringData)$")
    );
    let other = secrets::config::creation_rule_for(&config_path, &keys.path("dev/secret.yaml"))
        .expect("the catch-all matches");
    assert_eq!(other.recipients, vec![keys.recipients[0].clone()]);
    assert_eq!(other.rules, RuleText::default());
}

#[test]
fn identities_from_a_kubernetes_secret_use_only_its_agekey_entries() {
    let keys = Keys::new();
    let plain = keys.write("s.yaml", b"password: hunter2\n");
    let encrypted = sops_encrypt(&keys, &plain, &[]);
    let mut data = std::collections::BTreeMap::new();
    data.insert("README".to_owned(), b"not a key".to_vec());
    data.insert(
        "prod.agekey".to_owned(),
        std::fs::read(keys.key_file(1)).expect("key file readable"),
    );
    let ids = stagehand::secrets::Identities::from_secret_data("flux-system/sops-age", &data)
        .expect("the agekey entry parses and the README is ignored");
    assert_eq!(ids.len(), 1);
    let plain = secrets::decrypt(&encrypted, Format::Yaml, &ids, "s.enc.yaml").expect("decrypts");
    assert_eq!(plain.expose(), b"password: hunter2\n");
    data.insert(
        "broken.agekey".to_owned(),
        b"AGE-SECRET-KEY-1NOTAKEY".to_vec(),
    );
    let e = match stagehand::secrets::Identities::from_secret_data("flux-system/sops-age", &data) {
        Ok(_) => panic!("a broken agekey entry must be refused"),
        Err(e) => e,
    };
    assert!(
        e.to_string().contains("flux-system/sops-age/broken.agekey"),
        "{e}"
    );
    assert!(!format!("{e:?}").contains("NOTAKEY"), "{e:?}");
}

#[test]
fn an_ssh_ed25519_key_decrypts_a_file_sops_encrypted_to_it() {
    let keys = Keys::new();
    let key_path = keys.path("id_ed25519");
    let out = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&key_path)
        .output();
    let Ok(out) = out else {
        panic!("ssh-keygen is needed for this test (Debian package openssh-client)");
    };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let public =
        std::fs::read_to_string(key_path.with_extension("pub")).expect("public key written");
    let public = public
        .split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ");
    let plain = keys.write("s.yaml", b"password: hunter2\n");
    let out = super::sops(
        &keys,
        None,
        &["-e", "--age", &public, plain.to_str().expect("UTF-8 path")],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut ids = stagehand::secrets::Identities::new();
    ids.add_ssh_key("id_ed25519", &std::fs::read(&key_path).expect("readable"))
        .expect("an unencrypted ed25519 key loads");
    let decrypted =
        secrets::decrypt(&out.stdout, Format::Yaml, &ids, "s.enc.yaml").expect("decrypts");
    assert_eq!(decrypted.expose(), b"password: hunter2\n");
}
