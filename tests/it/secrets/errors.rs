//! The errors users must get: each names the file and, for a value, its key path; none shows a
//! value; none comes with partial plaintext (the API returns nothing but the error).

use stagehand::secrets::{self, Error, Format, Identities};

use super::{Keys, sops_encrypt};

const SENTINEL: &str = "hunter2-sentinel-value";

struct Fixture {
    keys: Keys,
    encrypted: String,
    path: std::path::PathBuf,
}

/// A Secret encrypted by the real sops, with the sentinel as one of its values.
fn fixture() -> Fixture {
    let keys = Keys::new();
    let plain = format!(
        "apiVersion: v1\nkind: Secret\nstringData:\n    password: {SENTINEL}\n    token: another-{SENTINEL}\n    user_unencrypted: app-{SENTINEL}\n"
    );
    let plain_path = keys.write("secret.yaml", plain.as_bytes());
    let encrypted =
        String::from_utf8(sops_encrypt(&keys, &plain_path, &[])).expect("sops writes UTF-8 YAML");
    let path = keys.path("overlays/prod/secret.enc.yaml");
    Fixture {
        keys,
        encrypted,
        path,
    }
}

impl Fixture {
    fn decrypt(&self, text: &str, ids: &Identities) -> Error {
        match secrets::decrypt(text.as_bytes(), Format::Yaml, ids, &self.path) {
            Ok(_) => panic!("decryption of the damaged file succeeded"),
            Err(e) => e,
        }
    }

    fn line_of(&self, key: &str) -> String {
        self.encrypted
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{key}:")))
            .expect("the key is in the file")
            .to_owned()
    }
}

/// The checks every error gets: file named, key path named when given, no sentinel anywhere.
fn assert_safe(e: &Error, key_path: Option<&str>) {
    let shown = e.to_string();
    let debug = format!("{e:?}");
    assert!(
        shown.contains("overlays/prod/secret.enc.yaml"),
        "file not named: {shown}"
    );
    if let Some(k) = key_path {
        assert!(shown.contains(k), "key path {k} not named: {shown}");
    }
    for text in [&shown, &debug] {
        assert!(!text.contains(SENTINEL), "a value leaked: {text}");
        assert!(!text.contains("hunter2"), "a value leaked: {text}");
    }
}

#[test]
fn a_tampered_ciphertext_is_refused_naming_the_key() {
    let f = fixture();
    let line = f.line_of("password");
    let at = line.find("data:").expect("an envelope") + 5;
    let mut bytes = line.clone().into_bytes();
    bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
    let tampered = f
        .encrypted
        .replace(&line, &String::from_utf8(bytes).expect("ASCII"));
    let e = f.decrypt(&tampered, &f.keys.identities(0));
    assert!(matches!(e, Error::ValueAuthentication { .. }), "{e:?}");
    assert_safe(&e, Some("stringData.password"));
}

#[test]
fn a_value_swapped_with_another_key_is_refused() {
    let f = fixture();
    let (password, token) = (f.line_of("password"), f.line_of("token"));
    let enc = |l: &str| l[l.find("ENC[").expect("an envelope")..].to_owned();
    let swapped = f
        .encrypted
        .replace(&password, &password.replace(&enc(&password), &enc(&token)))
        .replace(&token, &token.replace(&enc(&token), &enc(&password)));
    let e = f.decrypt(&swapped, &f.keys.identities(0));
    assert!(matches!(e, Error::ValueAuthentication { .. }), "{e:?}");
    assert_safe(&e, Some("stringData.password"));
}

#[test]
fn an_edited_unencrypted_value_fails_the_mac() {
    let f = fixture();
    let edited = f
        .encrypted
        .replace(&format!("app-{SENTINEL}"), &format!("evil-{SENTINEL}"));
    assert_ne!(edited, f.encrypted);
    let e = f.decrypt(&edited, &f.keys.identities(0));
    assert!(matches!(e, Error::MacMismatch { .. }), "{e:?}");
    assert!(e.is_mac_mismatch());
    assert_safe(&e, None);
}

#[test]
fn an_edited_mac_is_refused() {
    let f = fixture();
    let mac = f.line_of("mac");
    let at = mac.find("data:").expect("an envelope") + 5;
    let mut bytes = mac.clone().into_bytes();
    bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
    let edited = f
        .encrypted
        .replace(&mac, &String::from_utf8(bytes).expect("ASCII"));
    let e = f.decrypt(&edited, &f.keys.identities(0));
    assert!(e.is_mac_mismatch(), "{e:?}");
    assert_safe(&e, None);
}

#[test]
fn ignoring_the_mac_returns_the_plaintext_of_an_edited_file() {
    let f = fixture();
    let edited = f.encrypted.replace(&format!("app-{SENTINEL}"), "changed");
    let options = secrets::DecryptOptions {
        ignore_mac: true,
        ..secrets::DecryptOptions::default()
    };
    let plain = secrets::decrypt_with(
        edited.as_bytes(),
        Format::Yaml,
        &f.keys.identities(0),
        &f.path,
        &options,
    )
    .expect("the MAC is ignored on request");
    assert!(String::from_utf8_lossy(plain.expose()).contains(&format!("password: {SENTINEL}")));
    assert_eq!(
        format!("{plain:?} {plain}"),
        "Plaintext(<redacted>) <redacted>"
    );
}

#[test]
fn a_wrong_key_is_reported_as_no_matching_identity() {
    let f = fixture();
    let other = Keys::new();
    let e = f.decrypt(&f.encrypted, &other.identities(0));
    assert!(matches!(e, Error::NoMatchingIdentity { .. }), "{e:?}");
    assert!(e.is_no_matching_key());
    assert_safe(&e, None);
}

#[test]
fn no_key_at_all_says_that_no_identity_was_loaded() {
    let f = fixture();
    let e = f.decrypt(&f.encrypted, &Identities::new());
    assert!(matches!(e, Error::NoIdentities { .. }), "{e:?}");
    assert!(e.is_no_matching_key());
    assert_safe(&e, None);
}

#[test]
fn a_malformed_envelope_is_refused_naming_the_key() {
    let f = fixture();
    let line = f.line_of("token");
    let broken = f.encrypted.replace(&line, &line.replace(",iv:", ",IV:"));
    let e = f.decrypt(&broken, &f.keys.identities(0));
    assert!(matches!(e, Error::MalformedValue { .. }), "{e:?}");
    assert_safe(&e, Some("stringData.token"));
    let plain = f.encrypted.replace(&line, "    token: not-encrypted");
    let e = f.decrypt(&plain, &f.keys.identities(0));
    assert!(matches!(e, Error::MalformedValue { .. }), "{e:?}");
    assert_safe(&e, Some("stringData.token"));
}

#[test]
fn truncated_armor_is_reported_as_a_damaged_data_key() {
    let f = fixture();
    // Drop the last base64 line of every armored data key.
    let lines: Vec<&str> = f.encrypted.lines().collect();
    let truncated: Vec<&str> = lines
        .iter()
        .enumerate()
        .filter(|(i, _)| {
            !lines
                .get(i + 1)
                .is_some_and(|next| next.contains("-----END AGE ENCRYPTED FILE-----"))
        })
        .map(|(_, l)| *l)
        .collect();
    assert!(truncated.len() < lines.len());
    let e = f.decrypt(&(truncated.join("\n") + "\n"), &f.keys.identities(0));
    assert!(matches!(e, Error::DataKey { .. }), "{e:?}");
    assert_safe(&e, None);
}

#[test]
fn an_unknown_type_is_refused_naming_the_key_and_the_type() {
    let f = fixture();
    let line = f.line_of("password");
    let e = f.decrypt(
        &f.encrypted
            .replace(&line, &line.replace("type:str]", "type:blob]")),
        &f.keys.identities(0),
    );
    assert!(matches!(e, Error::UnknownType { .. }), "{e:?}");
    assert!(e.to_string().contains("blob"));
    assert_safe(&e, Some("stringData.password"));
}

#[test]
fn a_file_without_age_recipients_says_so() {
    let f = fixture();
    let start = f.encrypted.find("    age:").expect("an age section");
    let end = f
        .encrypted
        .find("    lastmodified:")
        .expect("lastmodified follows age");
    let kms_only = format!(
        "{}    kms:\n        - arn: arn:aws:kms:eu-west-1:1:key/x\n          enc: AQID\n          created_at: \"2020-01-01T00:00:00Z\"\n          aws_profile: \"\"\n{}",
        &f.encrypted[..start],
        &f.encrypted[end..]
    );
    let e = f.decrypt(&kms_only, &f.keys.identities(0));
    assert!(matches!(e, Error::NoAgeRecipient { .. }), "{e:?}");
    assert_safe(&e, None);
}

#[test]
fn a_plain_file_is_not_taken_for_a_sops_file() {
    let f = fixture();
    let e = f.decrypt("a: b\n", &f.keys.identities(0));
    assert!(matches!(e, Error::NotEncrypted { .. }), "{e:?}");
    assert_safe(&e, None);
}

#[test]
fn metadata_of_older_sops_and_other_key_services_is_tolerated() {
    let f = fixture();
    let start = f.encrypted.find("    age:").expect("an age section");
    let end = f
        .encrypted
        .find("    lastmodified:")
        .expect("lastmodified follows age");
    let age_section = &f.encrypted[start..end];
    let others = "    kms:\n        - arn: arn:aws:kms:eu-west-1:1:key/x\n          enc: AQID\n          created_at: \"2020-01-01T00:00:00Z\"\n          aws_profile: \"\"\n    gcp_kms: []\n    azure_kv: []\n    hc_vault: []\n    pgp:\n        - created_at: \"2020-01-01T00:00:00Z\"\n          enc: |\n            -----BEGIN PGP MESSAGE-----\n            AAAA\n            -----END PGP MESSAGE-----\n          fp: 0123456789ABCDEF\n";
    let with_others = format!("{}{others}{}", &f.encrypted[..start], &f.encrypted[start..]);
    let plain = secrets::decrypt(
        with_others.as_bytes(),
        Format::Yaml,
        &f.keys.identities(1),
        &f.path,
    )
    .expect("other key services are ignored");
    assert!(String::from_utf8_lossy(plain.expose()).contains(SENTINEL));
    // sops before 3.x-flattening wrote a single key group; the age stanzas inside it count.
    let grouped_age = age_section.replace("\n    ", "\n          ").replacen(
        "    age:",
        "    key_groups:\n        - age:",
        1,
    );
    let grouped = format!(
        "{}{grouped_age}    shamir_threshold: 1\n{}",
        &f.encrypted[..start],
        &f.encrypted[end..]
    );
    secrets::decrypt(
        grouped.as_bytes(),
        Format::Yaml,
        &f.keys.identities(0),
        &f.path,
    )
    .expect("a single key group is read");
    let two_groups = grouped.replacen(
        "    key_groups:\n",
        "    key_groups:\n        - pgp: []\n",
        1,
    );
    let e = f.decrypt(&two_groups, &f.keys.identities(0));
    assert!(
        matches!(
            e,
            Error::Metadata {
                field: "key_groups",
                ..
            }
        ),
        "{e:?}"
    );
    assert_safe(&e, None);
}

/// Found by the fuzz target: a dotenv sops file keeps its metadata in `sops_*` keys, and
/// encrypting it again used to mix two sets of metadata into a file that failed its own MAC.
#[test]
fn encrypting_a_file_that_is_already_encrypted_is_refused_in_every_store() {
    let keys = Keys::new();
    let options = secrets::EncryptOptions {
        recipients: vec![keys.recipients[0].clone()],
        ..secrets::EncryptOptions::default()
    };
    for (format, plain) in [
        (Format::Dotenv, "TOKEN=abc\n"),
        (Format::Yaml, "token: abc\n"),
        (Format::Json, "{\"token\": \"abc\"}"),
        (Format::Ini, "[app]\ntoken = abc\n"),
    ] {
        let once = secrets::encrypt(plain.as_bytes(), format, &options, "twice")
            .unwrap_or_else(|e| panic!("{format:?}: {e}"));
        let err = secrets::encrypt(&once, format, &options, "twice")
            .expect_err("a sops file is not encrypted twice");
        assert!(
            err.to_string().contains("already a sops file"),
            "{format:?}: {err}"
        );
    }
}

/// Found by the fuzz target: YAML holding control characters was accepted, and the file written
/// for it could not be read back. sops refuses such input; so do we, naming the line.
#[test]
fn yaml_with_control_characters_is_refused_as_sops_refuses_it() {
    let keys = Keys::new();
    let plain = keys.write("ctl.yaml", b"ok: fine\nsp\x16an: value\n");
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
    assert!(!out.status.success(), "sops accepted control characters");
    let options = secrets::EncryptOptions {
        recipients: vec![keys.recipients[0].clone()],
        ..secrets::EncryptOptions::default()
    };
    let input = std::fs::read(&plain).expect("readable");
    let err = secrets::encrypt(&input, Format::Yaml, &options, "ctl.yaml")
        .expect_err("control characters are refused");
    let message = err.to_string();
    assert!(
        message.contains("ctl.yaml") && message.contains("line 2") && message.contains("U+0016"),
        "{message}"
    );
}

/// Found by the fuzz target: a `sops` key in a later YAML document. sops encrypts such a file
/// and then panics reading it back; we refuse it.
#[test]
fn a_sops_key_in_any_yaml_document_is_refused() {
    let keys = Keys::new();
    let options = secrets::EncryptOptions {
        recipients: vec![keys.recipients[0].clone()],
        ..secrets::EncryptOptions::default()
    };
    let err = secrets::encrypt(b"a: 1\n---\nsops: 7\n", Format::Yaml, &options, "docs.yaml")
        .expect_err("a document with a sops key is refused");
    assert!(err.to_string().contains("docs.yaml"), "{err}");
}
