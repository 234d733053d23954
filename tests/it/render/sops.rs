//! SOPS inside a render: encrypted resources and generator sources in a base, an overlay and a
//! component are decrypted on the way, and the result equals what `kubectl kustomize` renders
//! from the same tree in plaintext.

use std::path::Path;
use std::process::Command;

use stagehand::render::{self, Options, fs::DiskFs, sops::SopsDecrypt};
use stagehand::secrets::Identities;

use crate::support::{Tool, kubectl_kustomize, tool, yaml_documents};

const FILES: &[(&str, &str)] = &[
    (
        "base/kustomization.yaml",
        "resources: [db.sops.yaml]\nsecretGenerator:\n  - name: api\n    envs: [api.sops.env]\n",
    ),
    (
        "base/db.sops.yaml",
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: db\nstringData:\n  password: base-sentinel-3141\n",
    ),
    ("base/api.sops.env", "TOKEN=env-sentinel-2718\n"),
    (
        "component/kustomization.yaml",
        "apiVersion: kustomize.config.k8s.io/v1alpha1\nkind: Component\nresources: [extra.sops.yaml]\n",
    ),
    (
        "component/extra.sops.yaml",
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: extra\nstringData:\n  key: component-sentinel-1618\n",
    ),
    (
        "overlay/kustomization.yaml",
        "namespace: team\nnamePrefix: dev-\nresources: [../base]\ncomponents: [../component]\n",
    ),
];

fn write_tree(root: &Path) {
    for (path, content) in FILES {
        let path = root.join(path);
        std::fs::create_dir_all(path.parent().expect("has a parent")).expect("mkdir");
        std::fs::write(path, content).expect("write");
    }
}

#[test]
fn encrypted_resources_generator_sources_and_components_render_as_their_plaintext() {
    let plain = tempfile::tempdir().expect("temp dir");
    write_tree(plain.path());
    let expected = yaml_documents(&kubectl_kustomize(&plain.path().join("overlay")));

    let dir = tempfile::tempdir().expect("temp dir");
    write_tree(dir.path());
    let key = dir.path().join("keys.txt");
    let recipient = crate::support::tools::age_keygen(&key);
    let recipient = recipient.as_str();
    for file in [
        "base/db.sops.yaml",
        "base/api.sops.env",
        "component/extra.sops.yaml",
    ] {
        let out = Command::new(tool(Tool::Sops))
            .args(["--encrypt", "--in-place", "--age", recipient])
            .arg(dir.path().join(file))
            .output()
            .expect("sops runs");
        assert!(
            out.status.success(),
            "{file}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = std::fs::read_to_string(dir.path().join(file)).expect("encrypted file");
        assert!(!text.contains("sentinel"), "{file} is encrypted");
    }

    let fs = DiskFs::new(dir.path()).expect("root");
    let mut identities = Identities::new();
    identities.add_file(&key).expect("the key loads");
    let decrypt = SopsDecrypt::new(&identities);
    let options = Options {
        decrypt: Some(&decrypt),
        ..Options::default()
    };
    let objects = render::render(&fs, "overlay", &options).expect("renders");
    assert_eq!(yaml_documents(&render::to_yaml(&objects)), expected);

    // Without identities the encrypted content passes through; with the wrong ones it fails,
    // naming the file and never a value.
    let raw = render::render(&fs, "overlay", &Options::default()).expect("renders");
    let raw = render::to_yaml(&raw);
    assert!(raw.contains("ENC[AES256_GCM,") && !raw.contains("sentinel"));
    let wrong_key = dir.path().join("other.txt");
    assert!(
        Command::new(tool(Tool::AgeKeygen))
            .arg("-o")
            .arg(&wrong_key)
            .output()
            .expect("runs")
            .status
            .success()
    );
    let mut wrong = Identities::new();
    wrong.add_file(&wrong_key).expect("the key loads");
    let wrong = SopsDecrypt::new(&wrong);
    let err = render::render(
        &fs,
        "overlay",
        &Options {
            decrypt: Some(&wrong),
            ..Options::default()
        },
    )
    .expect_err("no matching identity");
    let text = format!("{err} {err:?}");
    assert!(text.contains(".sops."), "{text}");
    assert!(!text.contains("sentinel"), "{text}");
}

/// Runs `program args` in `dir` with only `key` (if any) as an age identity; returns the exit
/// code and stderr.
fn exit_code(program: &Path, args: &[&str], dir: &Path, key: Option<&Path>) -> (i32, String) {
    let mut command = Command::new(program);
    command
        .args(args)
        .current_dir(dir)
        .env_clear()
        .env("HOME", dir)
        .env("XDG_CONFIG_HOME", dir.join("no-config"));
    if let Some(key) = key {
        command.env("SOPS_AGE_KEY_FILE", key);
    }
    let out = command.output().expect("the program runs");
    (
        out.status.code().expect("the program exits, not killed"),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn render_decrypt_exits_as_secrets_decrypt_and_sops_do_for_a_tampered_file_and_a_missing_key() {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path();
    std::fs::write(
        root.join("kustomization.yaml"),
        "resources: [db.sops.yaml]\n",
    )
    .expect("write");
    let plain = "apiVersion: v1\nkind: Secret\nmetadata:\n  name: db\nstringData:\n  password: tamper-sentinel-577\n  note_unencrypted: open\n";
    std::fs::write(root.join("db.sops.yaml"), plain).expect("write");
    let key = root.join("keys.txt");
    let recipient = crate::support::tools::age_keygen(&key);
    let other_key = root.join("other.txt");
    crate::support::tools::age_keygen(&other_key);
    let sops = tool(Tool::Sops);
    let out = Command::new(&sops)
        .args([
            "--encrypt",
            "--in-place",
            "--age",
            &recipient,
            "db.sops.yaml",
        ])
        .current_dir(root)
        .output()
        .expect("sops runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let ours = Path::new(env!("CARGO_BIN_EXE_stagehand"));
    let render = ["render", "--decrypt", "--root", ".", "."];
    let decrypt = ["secrets", "decrypt", "db.sops.yaml"];
    let (code, stderr) = exit_code(ours, &render, root, Some(&key));
    assert_eq!(code, 0, "{stderr}");

    // Another key than the file's: 128 from all three.
    let (render_code, stderr) = exit_code(ours, &render, root, Some(&other_key));
    assert_eq!(render_code, 128, "{stderr}");
    assert!(
        stderr.contains("db.sops.yaml") && stderr.contains("cannot decrypt"),
        "{stderr}"
    );
    assert!(!stderr.contains("sentinel"), "{stderr}");
    assert_eq!(exit_code(ours, &decrypt, root, Some(&other_key)).0, 128);
    assert_eq!(
        exit_code(&sops, &["-d", "db.sops.yaml"], root, Some(&other_key)).0,
        128
    );

    // A value changed after sops wrote the file: the MAC no longer matches, 51 from all three.
    let encrypted = std::fs::read_to_string(root.join("db.sops.yaml")).expect("read");
    assert!(encrypted.contains("note_unencrypted: open"), "{encrypted}");
    std::fs::write(
        root.join("db.sops.yaml"),
        encrypted.replace("note_unencrypted: open", "note_unencrypted: shut"),
    )
    .expect("write");
    let (render_code, stderr) = exit_code(ours, &render, root, Some(&key));
    assert_eq!(render_code, 51, "{stderr}");
    assert!(stderr.contains("MAC mismatch"), "{stderr}");
    assert_eq!(exit_code(ours, &decrypt, root, Some(&key)).0, 51);
    assert_eq!(
        exit_code(&sops, &["-d", "db.sops.yaml"], root, Some(&key)).0,
        51
    );
}

/// A file that carries SOPS metadata Stagehand cannot read fails the render naming the file:
/// real sops-made files, their metadata then damaged in one way each. Before, such a file
/// counted as plaintext and its ciphertext was rendered as the Secret's value.
#[test]
fn damaged_sops_metadata_fails_the_render_instead_of_passing_for_plaintext() {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path();
    let key = root.join("keys.txt");
    let recipient = crate::support::tools::age_keygen(&key);
    let sops = |file: &str, content: &str| -> String {
        std::fs::write(root.join(file), content).expect("write");
        let out = Command::new(tool(Tool::Sops))
            .args(["--encrypt", "--age", &recipient, file])
            .current_dir(root)
            .output()
            .expect("sops runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8")
    };
    let secret = sops(
        "db.sops.yaml",
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: db\nstringData:\n  password: damaged-sentinel-1\n",
    );
    let env = sops("api.sops.env", "TOKEN=damaged-sentinel-2\n");
    let drop_line = |text: &str, prefix: &str| -> String {
        let kept: Vec<&str> = text
            .lines()
            .filter(|l| !l.trim_start().starts_with(prefix))
            .collect();
        assert!(kept.len() < text.lines().count(), "{prefix} is in the file");
        kept.join("\n") + "\n"
    };
    let version_line = secret
        .lines()
        .find(|l| l.trim_start().starts_with("version:"))
        .expect("sops writes a version");
    let metadata_at = secret.find("\nsops:\n").expect("sops metadata") + 1;
    let cases: Vec<(&str, &str, String)> = vec![
        ("no mac", "db.sops.yaml", drop_line(&secret, "mac:")),
        ("no version", "db.sops.yaml", drop_line(&secret, "version:")),
        (
            "unknown version",
            "db.sops.yaml",
            secret.replace(version_line, "    version: 9.0.0"),
        ),
        (
            "no lastmodified",
            "db.sops.yaml",
            drop_line(&secret, "lastmodified:"),
        ),
        (
            "metadata not a mapping",
            "db.sops.yaml",
            format!("{}sops: damaged\n", &secret[..metadata_at]),
        ),
        (
            "metadata in a later document",
            "db.sops.yaml",
            format!("{}---\n{}", &secret[..metadata_at], &secret[metadata_at..]),
        ),
        (
            "dotenv without mac",
            "api.sops.env",
            drop_line(&env, "sops_mac="),
        ),
    ];
    let mut identities = Identities::new();
    identities.add_file(&key).expect("the key loads");
    let decrypt = SopsDecrypt::new(&identities);
    let options = Options {
        decrypt: Some(&decrypt),
        ..Options::default()
    };
    for (how, file, damaged) in cases {
        std::fs::write(
            root.join("kustomization.yaml"),
            "resources: [db.sops.yaml]\nsecretGenerator:\n  - name: api\n    envs: [api.sops.env]\n",
        )
        .expect("write");
        std::fs::write(root.join("db.sops.yaml"), &secret).expect("write");
        std::fs::write(root.join("api.sops.env"), &env).expect("write");
        let fs = DiskFs::new(root).expect("root");
        render::render(&fs, "", &options).expect("the undamaged files render");
        std::fs::write(root.join(file), &damaged).expect("write");
        let err = match render::render(&fs, "", &options) {
            Ok(objects) => panic!("{how}: rendered as {}", render::to_yaml(&objects)),
            Err(err) => err,
        };
        let text = stagehand::error_chain::ErrorChain(&err).to_string();
        assert!(text.contains(file), "{how}: {text}");
        assert!(err.decryption().is_some(), "{how}: {text}");
        assert!(!text.contains("sentinel"), "{how}: {text}");
    }
}
