//! `stagehand diff` and `stagehand sync` end to end: the demo pipeline in a real Git
//! repository, rendered from the object database, its SOPS Secret decrypted in-process with the
//! environment's age key, applied to the real kube-apiserver.

use std::path::Path;
use std::process::{Command, Output};

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, ListParams};

use crate::support::git::Repo;
use crate::support::{Tool, cluster::cluster, tool};

/// The demo pipeline with its name and dev namespace made unique, so the test owns what it
/// applies and its inventory.
fn demo_repo(dir: &Path, namespace: &str) -> Repo {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("environments");
    let status = Command::new("cp")
        .arg("-r")
        .arg(&source)
        .arg(dir)
        .status()
        .expect("cp runs");
    assert!(status.success());
    for file in ["dev/kustomization.yaml", "dev/namespace.yaml"] {
        let path = dir.join(file);
        let text = std::fs::read_to_string(&path).expect("demo file");
        std::fs::write(&path, text.replace("shop-dev", namespace)).expect("write");
    }
    let repo = Repo {
        dir: dir.to_owned(),
    };
    repo.git(&["init", "-q", "-b", "main"]);
    repo.commit("demo pipeline");
    repo
}

fn stagehand(repo: &Repo, state: &Path, args: &[&str], age_key: Option<&Path>) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_stagehand"));
    command
        .args(args)
        .args(["--env", "dev", "--log-level", "error", "--pipeline"])
        .arg(repo.dir.join("pipeline.yaml"))
        .arg("--state-dir")
        .arg(state)
        .env("KUBECONFIG", &cluster().kubeconfig)
        .env_remove("SOPS_AGE_KEY")
        .env_remove("SOPS_AGE_KEY_CMD")
        .env("XDG_CONFIG_HOME", state.join("no-config"));
    match age_key {
        Some(key) => command.env("SOPS_AGE_KEY_FILE", key),
        None => command.env_remove("SOPS_AGE_KEY_FILE"),
    };
    command.output().expect("stagehand runs")
}

fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}); stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn changes(doc: &serde_json::Value) -> Vec<(String, String)> {
    doc["objects"]
        .as_array()
        .expect("objects")
        .iter()
        .map(|o| {
            (
                format!(
                    "{}/{}",
                    o["reference"]["k"].as_str().unwrap_or(""),
                    o["reference"]["n"].as_str().unwrap_or("")
                ),
                o["change"]["change"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn sync_applies_the_demo_environment_with_its_secret_decrypted_and_prunes_what_left_git() {
    let cluster = cluster();
    let client = cluster.client().await;
    let namespace = format!("shop-dev-{}", std::process::id());
    let work = tempfile::tempdir().expect("temp dir");
    let repo = demo_repo(&work.path().join("gitops"), &namespace);
    let state = work.path().join("state");
    let key = repo.dir.join("keys/dev.agekey");

    // What the real sops says the Secret holds.
    let plain = Command::new(tool(Tool::Sops))
        .args(["-d", "--extract", "[\"stringData\"][\"DATABASE_PASSWORD\"]"])
        .arg(repo.dir.join("dev/db.sops.yaml"))
        .env("SOPS_AGE_KEY_FILE", &key)
        .output()
        .expect("sops runs");
    assert!(
        plain.status.success(),
        "{}",
        String::from_utf8_lossy(&plain.stderr)
    );
    let password = String::from_utf8(plain.stdout).expect("utf-8");

    // Without the key nothing is applied and the error names the file.
    let refused = stagehand(&repo, &state, &["sync"], None);
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("dev/db.sops.yaml"), "{err}");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    assert!(
        secrets
            .get_opt("shop-db")
            .await
            .expect("get works")
            .is_none(),
        "nothing applied without the key"
    );

    let diff = stagehand(&repo, &state, &["diff"], Some(&key));
    assert!(
        diff.status.success(),
        "{}",
        String::from_utf8_lossy(&diff.stderr)
    );
    let planned = changes(&json(&diff));
    assert!(
        planned.contains(&("Secret/shop-db".into(), "created".into())),
        "{planned:?}"
    );
    assert!(
        secrets
            .get_opt("shop-db")
            .await
            .expect("get works")
            .is_none(),
        "diff changes nothing"
    );

    let sync = stagehand(&repo, &state, &["sync"], Some(&key));
    assert!(
        sync.status.success(),
        "{}",
        String::from_utf8_lossy(&sync.stderr)
    );
    let stdout = String::from_utf8_lossy(&sync.stdout);
    assert!(
        !stdout.contains(password.trim()),
        "the status never holds a Secret value"
    );
    let live = secrets.get("shop-db").await.expect("the Secret is applied");
    let data = live.data.expect("Secret data");
    assert_eq!(
        String::from_utf8_lossy(&data["DATABASE_PASSWORD"].0),
        password.trim(),
        "the cluster holds the value sops decrypts"
    );

    // A generator change in Git: a new hashed ConfigMap is applied, the old one pruned.
    let base = repo.dir.join("base/kustomization.yaml");
    let text = std::fs::read_to_string(&base).expect("base");
    std::fs::write(&base, text.replace("CART_TTL=30m", "CART_TTL=45m")).expect("write");
    repo.commit("longer cart ttl");
    let sync = stagehand(&repo, &state, &["sync"], Some(&key));
    assert!(
        sync.status.success(),
        "{}",
        String::from_utf8_lossy(&sync.stderr)
    );
    let maps: Api<ConfigMap> = Api::namespaced(client, &namespace);
    let names: Vec<String> = maps
        .list(&ListParams::default())
        .await
        .expect("list works")
        .items
        .into_iter()
        .filter_map(|m| m.metadata.name)
        .filter(|n| n.starts_with("web-settings-"))
        .collect();
    assert_eq!(
        names.len(),
        1,
        "the old generated ConfigMap is pruned: {names:?}"
    );
    let live = maps.get(&names[0]).await.expect("get works");
    assert_eq!(live.data.expect("data")["CART_TTL"], "45m");
}
