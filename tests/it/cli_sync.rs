//! `stagehand diff` and `stagehand sync` end to end: the demo pipeline in a real Git
//! repository, rendered from the object database, its SOPS Secret decrypted in-process with the
//! environment's age key, applied to the real kube-apiserver.

use std::path::Path;
use std::process::{Command, Output};

use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
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
                    o["object"]["kind"].as_str().unwrap_or(""),
                    o["object"]["name"].as_str().unwrap_or("")
                ),
                o["change"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

/// `stagehand diff` with its stdout on a pseudo-terminal (util-linux `script`), no `-o`.
fn on_a_terminal(repo: &Repo, state: &Path, key: &Path) -> String {
    let mut line = vec![env!("CARGO_BIN_EXE_stagehand").to_owned()];
    line.extend(["diff", "--env", "dev", "--log-level", "error", "--pipeline"].map(String::from));
    line.push(repo.dir.join("pipeline.yaml").display().to_string());
    line.push("--state-dir".into());
    line.push(state.display().to_string());
    let line: Vec<String> = line
        .iter()
        .map(|a| {
            shlex::try_quote(a)
                .expect("no NUL in arguments")
                .into_owned()
        })
        .collect();
    let out = Command::new("script")
        .args(["-qec", &line.join(" "), "/dev/null"])
        .env("KUBECONFIG", &cluster().kubeconfig)
        .env("SOPS_AGE_KEY_FILE", key)
        .env("XDG_CONFIG_HOME", state.join("no-config"))
        .output()
        .expect("script runs");
    let text = String::from_utf8_lossy(&out.stdout).replace("\r\n", "\n");
    assert!(out.status.success(), "{text}");
    text
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_secs()
}

/// Seconds since the epoch of an RFC 3339 time, as GNU date reads it.
fn date_seconds(time: &str) -> u64 {
    let out = Command::new("date")
        .args(["--utc", "+%s", "--date", time])
        .output()
        .expect("date runs");
    assert!(out.status.success(), "date cannot read {time:?}");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("date prints seconds")
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

    // Without the key nothing is applied, the error names the file, the status says the
    // decrypt stage failed, and the exit code is sops's for "no matching key".
    let refused = stagehand(&repo, &state, &["sync"], None);
    assert_eq!(refused.status.code(), Some(128));
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("dev/db.sops.yaml"), "{err}");
    let status = json(&refused);
    assert_eq!(status["reason"], "decryption_failed", "{status}");
    assert!(
        status["lastError"]
            .as_str()
            .is_some_and(|e| e.contains("decrypt failed")),
        "{status}"
    );
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
    let plan = json(&diff);
    let planned = changes(&plan);
    assert!(
        planned.contains(&("Secret/shop-db".into(), "create".into())),
        "{planned:?}"
    );
    // Full names, as the gRPC ObjectRef spells them.
    let secret = plan["objects"]
        .as_array()
        .expect("objects")
        .iter()
        .find(|o| o["object"]["kind"] == "Secret")
        .expect("the Secret is planned");
    assert_eq!(
        secret["object"],
        serde_json::json!({"apiVersion": "v1", "kind": "Secret", "namespace": namespace,
                           "name": "shop-db"})
    );
    assert!(
        plan["revision"].as_str().is_some_and(|r| r.len() == 40),
        "{plan}"
    );
    // The same plan as a table, asked for or on a terminal, and as YAML.
    let table = stagehand(&repo, &state, &["diff", "-o", "table"], Some(&key));
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.contains("APIVERSION  KIND")
            && table.contains("CHANGE")
            && table.lines().any(|l| l
                .split_whitespace()
                .eq(["v1", "Secret", &namespace, "shop-db", "create"])),
        "{table}"
    );
    let on_terminal = on_a_terminal(&repo, &state, &key);
    assert!(
        on_terminal.contains("APIVERSION") && on_terminal.contains("shop-db"),
        "{on_terminal}"
    );
    let yaml = stagehand(&repo, &state, &["diff", "--output", "yaml"], Some(&key));
    let yaml = String::from_utf8_lossy(&yaml.stdout);
    assert!(
        yaml.starts_with("revision: ") && yaml.contains("apiVersion: v1"),
        "{yaml}"
    );
    assert!(
        secrets
            .get_opt("shop-db")
            .await
            .expect("get works")
            .is_none(),
        "diff changes nothing"
    );

    let before = unix_now();
    let sync = stagehand(&repo, &state, &["sync"], Some(&key));
    let after = unix_now();
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
    let status = json(&sync);
    // No kubelet runs the Deployments, so they stay Progressing.
    assert_eq!(status["reason"], "progressing", "{status}");
    assert_eq!(status["attemptedRevision"], status["appliedRevision"]);
    for field in ["lastSyncTime", "lastAppliedTime"] {
        let time = status[field].as_str().expect("a time");
        let secs = date_seconds(time);
        assert!(
            before <= secs && secs <= after,
            "{field} {time} is not this sync"
        );
    }
    let applied = status["objects"].as_array().expect("objects");
    assert!(
        applied.iter().any(|o| o["object"]["apiVersion"] == "v1"
            && o["object"]["kind"] == "Secret"
            && o["action"] == "created"
            && o["health"] == "Healthy"),
        "{status}"
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

/// Keys per environment: with `spec.decryption.ageKeysDir`, dev decrypts with `dev.agekey`
/// only, even while the process holds prod's identity. A dev overlay that reaches prod's
/// encrypted file by a relative path, a symlink or a copied generator source fails, naming the
/// environment and the file, and applies nothing of dev.
#[tokio::test]
async fn dev_cannot_decrypt_prod_secrets_by_path_symlink_or_generator() {
    let cluster = cluster();
    let client = cluster.client().await;
    let namespace = format!("shop-dev-keys-{}", std::process::id());
    let work = tempfile::tempdir().expect("temp dir");
    let repo = demo_repo(&work.path().join("gitops"), &namespace);
    let pipeline = repo.dir.join("pipeline.yaml");
    let text = std::fs::read_to_string(&pipeline).expect("pipeline");
    std::fs::write(
        &pipeline,
        text.replace("spec:\n", "spec:\n  decryption: {ageKeysDir: keys}\n"),
    )
    .expect("write");
    repo.commit("keys per environment");
    let state = work.path().join("state");
    let prod_key = repo.dir.join("keys/prod.agekey");
    let kustomization = repo.dir.join("dev/kustomization.yaml");
    let original = std::fs::read_to_string(&kustomization).expect("dev kustomization");
    let namespaces: Api<Namespace> = Api::all(client.clone());

    let with_resource =
        |extra: &str| original.replace("  - ../base\n", &format!("  - ../base\n  - {extra}\n"));
    std::fs::copy(
        repo.dir.join("prod/db.sops.yaml"),
        repo.dir.join("dev/copied.sops.yaml"),
    )
    .expect("copy");
    std::os::unix::fs::symlink(
        "../prod/db.sops.yaml",
        repo.dir.join("dev/linked.sops.yaml"),
    )
    .expect("symlink");
    let cases = [
        ("by path", with_resource("../prod"), "prod/db.sops.yaml"),
        (
            "by symlink",
            with_resource("linked.sops.yaml"),
            "linked.sops.yaml",
        ),
        (
            "through a generator",
            format!(
                "{original}secretGenerator:\n  - name: stolen\n    files: [copied.sops.yaml]\n"
            ),
            "copied.sops.yaml",
        ),
    ];
    for (how, dev_kustomization, file) in cases {
        std::fs::write(&kustomization, dev_kustomization).expect("write");
        repo.commit(how);
        let refused = stagehand(&repo, &state, &["sync"], Some(&prod_key));
        let err = String::from_utf8_lossy(&refused.stderr);
        assert!(
            !refused.status.success(),
            "{how}: dev decrypted prod's file"
        );
        assert!(
            err.contains("environment dev") && err.contains(file),
            "{how}: the error names the environment and the file: {err}"
        );
        assert!(
            // The symlink is refused by the load restrictor before any decryption.
            err.contains("only its own age identities") || err.contains("security;"),
            "{how}: {err}"
        );
        assert!(
            namespaces
                .get_opt(&namespace)
                .await
                .expect("get works")
                .is_none(),
            "{how}: nothing of dev is applied"
        );
    }

    // Dev's own Secret decrypts with dev's own key, though the process holds only prod's.
    std::fs::write(&kustomization, &original).expect("write");
    repo.commit("dev as it was");
    let sync = stagehand(&repo, &state, &["sync"], Some(&prod_key));
    assert!(
        sync.status.success(),
        "{}",
        String::from_utf8_lossy(&sync.stderr)
    );
    let secrets: Api<Secret> = Api::namespaced(client, &namespace);
    assert!(
        secrets
            .get_opt("shop-db")
            .await
            .expect("get works")
            .is_some()
    );
}

/// Every file under `dir`, as bytes (the state directory: store, logs, whatever is there).
fn files_under(dir: &Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("readable dir").flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else if let Ok(bytes) = std::fs::read(&path) {
            out.push((path, bytes));
        }
    }
    out
}

#[tokio::test]
async fn an_apiserver_rejection_of_a_configmap_from_an_encrypted_env_file_never_echoes_its_value() {
    let cluster = cluster();
    let client = cluster.client().await;
    let namespace = format!("shop-dev-taint-{}", std::process::id());
    let work = tempfile::tempdir().expect("temp dir");
    let repo = demo_repo(&work.path().join("gitops"), &namespace);
    let state = work.path().join("state");
    let key = repo.dir.join("keys/dev.agekey");
    let recipient = std::fs::read_to_string(&key)
        .expect("dev key")
        .lines()
        .find_map(|l| l.strip_prefix("# public key: ").map(str::to_owned))
        .expect("the key file names its recipient");

    // A value that is no valid label: the apiserver quotes it when it rejects the ConfigMap.
    let value = "hunter two!";
    let plain = repo.dir.join("dev/settings.sops.env");
    std::fs::write(&plain, format!("PASSWORD={value}\n")).expect("write");
    let sealed = Command::new(tool(Tool::Sops))
        .args(["--encrypt", "--age", &recipient, "--input-type", "dotenv"])
        .args(["--output-type", "dotenv"])
        .arg(&plain)
        .output()
        .expect("sops runs");
    assert!(
        sealed.status.success(),
        "{}",
        String::from_utf8_lossy(&sealed.stderr)
    );
    std::fs::write(&plain, &sealed.stdout).expect("write");
    let kustomization = repo.dir.join("dev/kustomization.yaml");
    let original = std::fs::read_to_string(&kustomization).expect("dev kustomization");
    std::fs::write(
        &kustomization,
        format!(
            "{original}configMapGenerator:\n  - name: settings\n    envs: [settings.sops.env]\n\
             replacements:\n  - source: {{kind: ConfigMap, name: settings, fieldPath: data.PASSWORD}}\n    \
             targets:\n      - select: {{kind: ConfigMap, name: settings}}\n        \
             fieldPaths: [metadata.labels.pw]\n        options: {{create: true}}\n"
        ),
    )
    .expect("write");
    repo.commit("settings from an encrypted env file, copied into a label");

    let b64 = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(value)
    };
    let leaks = |what: &str, bytes: &[u8]| {
        let text = String::from_utf8_lossy(bytes);
        assert!(
            !text.contains(value) && !text.contains(&b64),
            "{what} quotes the decrypted value: {text}"
        );
    };
    let diff = stagehand(&repo, &state, &["diff", "-o", "json"], Some(&key));
    let sync = stagehand(&repo, &state, &["sync", "-o", "json"], Some(&key));
    let again = stagehand(&repo, &state, &["sync", "-o", "table"], Some(&key));
    for (name, out) in [("diff", &diff), ("sync", &sync), ("second sync", &again)] {
        leaks(&format!("{name} stdout"), &out.stdout);
        leaks(&format!("{name} stderr"), &out.stderr);
    }
    assert!(
        !sync.status.success(),
        "the apiserver refused the ConfigMap"
    );
    let reported = String::from_utf8_lossy(&sync.stdout);
    assert!(
        reported.contains("settings-") && reported.contains("metadata.labels"),
        "the failure still names the object and the field: {reported}"
    );
    for (path, bytes) in files_under(&state) {
        leaks(&path.display().to_string(), &bytes);
    }
    let configs: Api<ConfigMap> = Api::namespaced(client, &namespace);
    let names: Vec<String> = configs
        .list(&ListParams::default())
        .await
        .expect("list works")
        .items
        .into_iter()
        .filter_map(|c| c.metadata.name)
        .collect();
    assert!(
        !names.iter().any(|n| n.starts_with("settings-")),
        "the rejected ConfigMap is not there: {names:?}"
    );
}

/// Creates `namespace`, so that `diff` dry-runs each object against the apiserver rather than
/// reporting all as to be created.
async fn namespace_exists(namespace: &str) {
    let namespaces: Api<Namespace> = Api::all(cluster().client().await);
    let ns: Namespace =
        serde_json::from_value(serde_json::json!({"metadata": {"name": namespace}}))
            .expect("namespace");
    namespaces
        .create(&Default::default(), &ns)
        .await
        .expect("namespace created");
}
/// Every output of a run: stdout (the status or plan) and stderr (the error and logs).
fn outputs(out: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test]
async fn a_decrypted_secret_value_copied_into_a_configmap_by_a_replacement_is_never_shown() {
    let work = tempfile::tempdir().expect("temp dir");
    let namespace = format!("shop-dev-copy-{}", std::process::id());
    namespace_exists(&namespace).await;
    let repo = demo_repo(&work.path().join("gitops"), &namespace);
    let state = work.path().join("state");
    let key = repo.dir.join("keys/dev.agekey");
    let value = format!("copied secret value {}", std::process::id());
    let secret = crate::promotions::sops_encrypt(
        &repo.dir.join("dev"),
        "extra.sops.yaml",
        &format!(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: extra\nstringData:\n  password: {value}\n"
        ),
        "age10n6l7ekhqza8trhvgz4zpxfgwndhq7696znpthz43ma095qjhcnsfvjsv5",
    );
    std::fs::write(repo.dir.join("dev/extra.sops.yaml"), secret).expect("write");
    std::fs::write(
        repo.dir.join("dev/copy.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: copy\ndata:\n  copied: placeholder\n",
    )
    .expect("write");
    let kustomization = repo.dir.join("dev/kustomization.yaml");
    let text = std::fs::read_to_string(&kustomization).expect("read");
    std::fs::write(
        &kustomization,
        format!(
            "{}replacements:\n  - source: {{kind: Secret, name: extra, fieldPath: stringData.password}}\n    \
             targets:\n      - select: {{kind: ConfigMap, name: copy}}\n        \
             fieldPaths: [data.copied, metadata.labels.copied]\n        options: {{create: true}}\n",
            text.replace(
                "  - ../base\n",
                "  - ../base\n  - extra.sops.yaml\n  - copy.yaml\n"
            )
        ),
    )
    .expect("write");
    repo.commit("a Secret value copied into a ConfigMap");

    for args in [&["diff"][..], &["diff", "-o", "table"][..]] {
        let diff = stagehand(&repo, &state, args, Some(&key));
        let text = outputs(&diff);
        assert!(!text.contains(&value), "{args:?} shows the value: {text}");
        assert!(
            text.contains("copy") && text.contains("metadata.labels"),
            "{args:?} names the object and the field: {text}"
        );
    }
}

/// With a shared store, `sync` acts as the replicas' installation: its objects carry the
/// installation ID kept in the database, not one of its state directory's own.
#[tokio::test]
async fn sync_with_a_shared_database_applies_as_the_replicas_installation() {
    let url = crate::support::postgres::fresh_database("sync").await;
    let store = stagehand::store::PostgresStore::connect(
        &stagehand::store::PostgresUrl::parse(&url).expect("the URL parses"),
    )
    .await
    .expect("the store connects");
    assert_eq!(
        store.installation_id("0123abcd").await.expect("stored"),
        "0123abcd"
    );
    let client = cluster().client().await;
    let namespace = format!("shop-shared-{}", std::process::id());
    let work = tempfile::tempdir().expect("temp dir");
    let repo = demo_repo(&work.path().join("gitops"), &namespace);
    let state = work.path().join("state");
    let key = repo.dir.join("keys/dev.agekey");

    let mut command = Command::new(env!("CARGO_BIN_EXE_stagehand"));
    command
        .args(["sync", "--env", "dev", "--log-level", "error", "--pipeline"])
        .arg(repo.dir.join("pipeline.yaml"))
        .arg("--state-dir")
        .arg(&state)
        .env("STAGEHAND_DATABASE_URL", &url)
        .env("KUBECONFIG", &cluster().kubeconfig)
        .env("SOPS_AGE_KEY_FILE", &key);
    let sync = command.output().expect("stagehand runs");
    assert!(
        sync.status.success(),
        "{}",
        String::from_utf8_lossy(&sync.stderr)
    );
    let live = Api::<Secret>::namespaced(client, &namespace)
        .get("shop-db")
        .await
        .expect("the Secret is applied");
    let owner = live
        .metadata
        .labels
        .expect("labels")
        .get(stagehand::cluster::INVENTORY_LABEL)
        .cloned()
        .expect("the inventory label");
    assert!(owner.starts_with("0123abcd."), "owner {owner}");
    assert!(
        !state.join("installation-id").exists(),
        "no installation ID of its own"
    );
}
