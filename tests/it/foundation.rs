//! The real parts every later feature stands on work together here: a kube-apiserver that
//! does server-side apply, the real sops with a key made by age-keygen, and git read by gix.

use std::process::Command;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, Patch, PatchParams};

use crate::support::git::Repo;
use crate::support::{Tool, cluster::cluster, tool};

#[tokio::test]
async fn server_side_apply_of_a_config_map_records_our_field_manager() {
    let cluster = cluster();
    let client = cluster.client().await;
    let ns = cluster.namespace(&client, "foundation").await;
    let api: Api<ConfigMap> = Api::namespaced(client, &ns);
    let desired = serde_json::json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "settings"},
        "data": {"greeting": "hello"}
    });
    let params = PatchParams::apply("stagehand").force();
    api.patch("settings", &params, &Patch::Apply(&desired))
        .await
        .expect("server-side apply succeeds");

    let live = api.get("settings").await.expect("the ConfigMap exists");
    assert_eq!(
        live.data
            .as_ref()
            .and_then(|d| d.get("greeting"))
            .map(String::as_str),
        Some("hello")
    );
    let managed = live
        .metadata
        .managed_fields
        .expect("managedFields come back");
    let ours = managed
        .iter()
        .find(|m| m.manager.as_deref() == Some("stagehand"))
        .expect("an entry for our field manager");
    assert_eq!(ours.operation.as_deref(), Some("Apply"));
    let fields = serde_json::to_string(&ours.fields_v1).expect("fieldsV1 serialises");
    assert!(fields.contains("f:greeting"), "{fields}");
}

#[test]
fn sops_encrypts_and_decrypts_with_a_key_made_by_age_keygen() {
    let dir = tempfile::tempdir().expect("temp dir");
    let key_file = dir.path().join("keys.txt");
    let recipient = crate::support::tools::age_keygen(&key_file);
    let recipient = recipient.as_str();

    let plain = dir.path().join("secret.yaml");
    std::fs::write(&plain, "password: hunter2\nport: 5432\n").expect("write plaintext");
    let sops = tool(Tool::Sops);
    let enc = Command::new(&sops)
        .args(["--encrypt", "--age", recipient])
        .arg(&plain)
        .output()
        .expect("sops runs");
    assert!(
        enc.status.success(),
        "{}",
        String::from_utf8_lossy(&enc.stderr)
    );
    let encrypted = String::from_utf8(enc.stdout).expect("sops writes YAML");
    assert!(!encrypted.contains("hunter2"), "the value is encrypted");
    assert!(encrypted.contains("ENC[AES256_GCM,"), "{encrypted}");
    let enc_file = dir.path().join("secret.enc.yaml");
    std::fs::write(&enc_file, &encrypted).expect("write ciphertext");

    let dec = Command::new(&sops)
        .args(["--decrypt"])
        .arg(&enc_file)
        .env("SOPS_AGE_KEY_FILE", &key_file)
        .output()
        .expect("sops runs");
    assert!(
        dec.status.success(),
        "{}",
        String::from_utf8_lossy(&dec.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&dec.stdout),
        "password: hunter2\nport: 5432\n"
    );

    let wrong = Command::new(&sops)
        .args(["--decrypt"])
        .arg(&enc_file)
        .env("SOPS_AGE_KEY_FILE", "/dev/null")
        .output()
        .expect("sops runs");
    assert!(!wrong.status.success(), "no key, no plaintext");
}

#[test]
fn a_repository_made_with_the_git_cli_is_read_by_gix() {
    let dir = tempfile::tempdir().expect("temp dir");
    let repo = Repo::init(dir.path());
    repo.write(&[("environments/dev/kustomization.yaml", "resources: []\n")]);
    let first = repo.commit("add dev");
    repo.write(&[("environments/dev/kustomization.yaml", "namespace: dev\n")]);
    let second = repo.commit("set namespace");

    let gix_repo = gix::open(dir.path()).expect("gix opens the repository");
    let head = gix_repo.head_commit().expect("HEAD is a commit");
    assert_eq!(head.id().to_string(), second);
    assert_eq!(
        head.parent_ids().next().map(|id| id.to_string()),
        Some(first)
    );
    let tree = head.tree().expect("the commit has a tree");
    let entry = tree
        .lookup_entry_by_path("environments/dev/kustomization.yaml")
        .expect("lookup works")
        .expect("the file is in the tree");
    let blob = entry.object().expect("the blob can be read");
    assert_eq!(blob.data.as_slice(), b"namespace: dev\n");
}
