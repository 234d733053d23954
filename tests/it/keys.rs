//! Keys and clusters from Kubernetes Secrets, against a running `stagehand serve` and the real
//! apiserver: age identities from a Secret read through the API or a kubelet-style mounted
//! directory, added and removed without a restart; `<env>.agekey` isolation; an environment's
//! cluster from a kubeconfig Secret that is switched while the service runs.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, Patch, PatchParams};
use serde_json::Value;

use crate::service::eventually;
use crate::support::git::Repo;
use crate::support::tools::age_keygen;
use crate::support::{Tool, cluster::cluster, tool};

/// A running `stagehand serve`, killed when dropped; its log goes to a file.
pub(crate) struct Serve {
    child: Child,
    pub(crate) url: String,
    log: PathBuf,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Serve {
    fn start(dir: &Path, pipeline: &Path, args: &[&str]) -> Self {
        Self::start_as(dir, pipeline, args, &cluster().kubeconfig)
    }

    /// As [`Serve::start`], with the cluster access of `kubeconfig`.
    pub(crate) fn start_as(dir: &Path, pipeline: &Path, args: &[&str], kubeconfig: &Path) -> Self {
        let log = dir.join("serve.log");
        let mut child = Command::new(env!("CARGO_BIN_EXE_stagehand"))
            .args(["serve", "--listen", "127.0.0.1:0", "--log-level", "info"])
            .arg("--pipeline")
            .arg(pipeline)
            .arg("--state-dir")
            .arg(dir.join("state"))
            .args(args)
            .env("KUBECONFIG", kubeconfig)
            .env_remove("SOPS_AGE_KEY")
            .env_remove("SOPS_AGE_KEY_FILE")
            .env_remove("SOPS_AGE_KEY_CMD")
            .env("XDG_CONFIG_HOME", dir.join("no-config"))
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("stagehand starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("piped"))
            .read_line(&mut line)
            .expect("stagehand prints its address");
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| {
                panic!(
                    "no address ({line:?}); log: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                )
            });
        Self {
            url: format!("http://{addr}"),
            child,
            log,
        }
    }

    /// `status.reason` and `status.message` of `env`.
    pub(crate) fn status(&self, env: &str) -> (String, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_stagehand"))
            .args(["status", env, "-o", "json", "--server", &self.url])
            .output()
            .expect("the CLI runs");
        let doc: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
        (
            text(&doc["status"]["reason"]),
            text(&doc["status"]["message"]),
        )
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// A new age identity made by the real `age-keygen`: (its key file's text, its recipient).
pub(crate) fn identity(dir: &Path, name: &str) -> (String, String) {
    let file = dir.join(format!("{name}.key"));
    let recipient = age_keygen(&file);
    let text = std::fs::read_to_string(&file).expect("key file");
    std::fs::remove_file(&file).expect("the key leaves the disk");
    (text, recipient)
}

/// A Secret manifest named `name` in `namespace` holding `password`, encrypted by the real
/// sops to `recipient`.
pub(crate) fn sealed_secret(
    dir: &Path,
    namespace: &str,
    name: &str,
    password: &str,
    recipient: &str,
) -> String {
    let plain = dir.join(format!("{name}.plain.yaml"));
    std::fs::write(
        &plain,
        format!(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}\n  namespace: {namespace}\ntype: Opaque\nstringData:\n  password: {password}\n"
        ),
    )
    .expect("write");
    let out = Command::new(tool(Tool::Sops))
        .args(["--encrypt", "--age", recipient])
        .args(["--encrypted-regex", "^(data|stringData)$"])
        .args(["--input-type", "yaml", "--output-type", "yaml"])
        .arg(&plain)
        .output()
        .expect("sops runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::remove_file(&plain).expect("remove");
    String::from_utf8(out.stdout).expect("utf-8")
}

/// A repository with one overlay per `(environment, files)`, each overlay listing its files,
/// and a pipeline over them synced every second. Returns the pipeline file.
/// An environment's name, its `cluster:` lines and its overlay's files.
pub(crate) type Overlay<'a> = (&'a str, &'a str, &'a [(&'a str, String)]);

pub(crate) fn repository(dir: &Path, name: &str, envs: &[Overlay<'_>]) -> PathBuf {
    let repo = Repo::init(&dir.join("gitops"));
    let mut pipeline = format!(
        "apiVersion: stagehand.dev/v1alpha1\nkind: Pipeline\nmetadata: {{name: {name}}}\nspec:\n  environments:\n"
    );
    for (env, cluster, files) in envs {
        let mut resources: Vec<String> = files.iter().map(|(f, _)| (*f).to_owned()).collect();
        resources.sort();
        let mut written: Vec<(String, String)> = files
            .iter()
            .map(|(f, text)| (format!("envs/{env}/{f}"), text.clone()))
            .collect();
        written.push((
            format!("envs/{env}/kustomization.yaml"),
            format!("resources: [{}]\n", resources.join(", ")),
        ));
        let written: Vec<(&str, &str)> = written
            .iter()
            .map(|(f, t)| (f.as_str(), t.as_str()))
            .collect();
        repo.write(&written);
        pipeline.push_str(&format!(
            "    - name: {env}\n      source: {{overlay: envs/{env}}}\n      sync: {{interval: 1s}}\n{cluster}"
        ));
    }
    repo.commit("overlays");
    let file = dir.join("pipeline.yaml");
    std::fs::write(
        &file,
        pipeline.replace(
            "spec:\n",
            &format!("spec:\n  repository: {{url: {}}}\n", repo.dir.display()),
        ),
    )
    .expect("write pipeline");
    file
}

pub(crate) async fn put_secret(
    kube: &kube::Client,
    namespace: &str,
    name: &str,
    entries: &[(&str, &str)],
) {
    let data: BTreeMap<String, ByteString> = entries
        .iter()
        .map(|(k, v)| ((*k).to_owned(), ByteString(v.as_bytes().to_vec())))
        .collect();
    let secret = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(namespace.to_owned()),
            ..Default::default()
        },
        data: Some(data),
        ..Default::default()
    };
    let api = Api::<Secret>::namespaced(kube.clone(), namespace);
    let params = PatchParams::apply("keys-test").force();
    // One field manager applies the whole data each time: entries left out are removed.
    api.patch(name, &params, &Patch::Apply(&secret))
        .await
        .expect("the Secret is written");
}

pub(crate) async fn password(kube: &kube::Client, namespace: &str, name: &str) -> Option<String> {
    let secret = Api::<Secret>::namespaced(kube.clone(), namespace)
        .get_opt(name)
        .await
        .expect("get works")?;
    let bytes = secret.data?.get("password")?.0.clone();
    String::from_utf8(bytes).ok()
}

fn unique(prefix: &str) -> String {
    format!("{prefix}{}", std::process::id())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_identity_added_to_the_key_secret_decrypts_without_a_restart_and_stops_when_removed() {
    let kube = cluster().client().await;
    let ns = cluster().namespace(&kube, "keys-api").await;
    let dir = tempfile::tempdir().expect("temp dir");
    let (old_key, _) = identity(dir.path(), "old");
    let (new_key, new_recipient) = identity(dir.path(), "new");
    let sealed = sealed_secret(dir.path(), &ns, "db", "hunter2-api", &new_recipient);
    let pipeline = repository(
        dir.path(),
        &unique("keysapi"),
        &[("dev", "", &[("db.sops.yaml", sealed)])],
    );
    put_secret(&kube, &ns, "age-keys", &[("age.agekey", &old_key)]).await;
    let serve = Serve::start(
        dir.path(),
        &pipeline,
        &["--age-keys-secret", &format!("{ns}/age-keys")],
    );

    eventually("dev cannot decrypt without the new identity", || async {
        serve.status("dev").0 == "decryption_failed"
    })
    .await;
    assert_eq!(password(&kube, &ns, "db").await, None);

    put_secret(
        &kube,
        &ns,
        "age-keys",
        &[("age.agekey", &old_key), ("extra.agekey", &new_key)],
    )
    .await;
    eventually("the new identity decrypts dev's Secret", || async {
        password(&kube, &ns, "db").await.as_deref() == Some("hunter2-api")
    })
    .await;
    eventually("dev succeeds", || async {
        serve.status("dev").0 == "succeeded"
    })
    .await;

    // A damaged entry is refused as a whole: the identities loaded before stay in use, and
    // the log names the Secret, the entry and the line, not the key.
    put_secret(
        &kube,
        &ns,
        "age-keys",
        &[
            ("extra.agekey", &new_key),
            (
                "broken.agekey",
                "# comment\nAGE-SECRET-KEY-1DAMAGEDSENTINEL\n",
            ),
        ],
    )
    .await;
    let secret_name = format!("Secret {ns}/age-keys entry broken.agekey: line 2");
    eventually("the damaged entry is reported", || async {
        serve.log().contains(&secret_name)
    })
    .await;
    let before = serve.status("dev");
    assert_eq!(before.0, "succeeded", "{before:?}");

    put_secret(&kube, &ns, "age-keys", &[("age.agekey", &old_key)]).await;
    eventually("without the identity dev no longer decrypts", || async {
        serve.status("dev").0 == "decryption_failed"
    })
    .await;
    let log = serve.log();
    for secret in [&old_key, &new_key] {
        let key = secret
            .lines()
            .find(|l| l.starts_with("AGE-SECRET-KEY-"))
            .expect("a key line");
        assert!(!log.contains(key), "the log holds a key");
    }
    assert!(
        !log.contains("DAMAGEDSENTINEL"),
        "the log quotes a damaged key"
    );
}

/// A Secret volume as the kubelet writes it: entries link through `..data` to a timestamped
/// directory, and a new version is published by swapping `..data` atomically.
struct MountedSecret {
    dir: PathBuf,
    versions: u32,
}

impl MountedSecret {
    fn new(dir: PathBuf) -> Self {
        std::fs::create_dir_all(&dir).expect("mkdir");
        Self { dir, versions: 0 }
    }

    fn publish(&mut self, entries: &[(&str, &str)]) {
        use std::os::unix::fs::symlink;
        self.versions += 1;
        let version = format!("..2026_12_07_00_00_{:02}.{}", self.versions, self.versions);
        let target = self.dir.join(&version);
        std::fs::create_dir(&target).expect("mkdir");
        for (name, text) in entries {
            std::fs::write(target.join(name), text).expect("write");
        }
        let tmp = self.dir.join("..data_tmp");
        symlink(&version, &tmp).expect("symlink");
        let old = std::fs::read_link(self.dir.join("..data")).ok();
        std::fs::rename(&tmp, self.dir.join("..data")).expect("swap ..data");
        // Entry links: added for new names, removed for names gone, as the kubelet does.
        for entry in std::fs::read_dir(&self.dir).expect("list") {
            let entry = entry.expect("entry");
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.starts_with('.') && !entries.iter().any(|(n, _)| *n == name) {
                std::fs::remove_file(entry.path()).expect("remove link");
            }
        }
        for (name, _) in entries {
            let link = self.dir.join(name);
            if link.symlink_metadata().is_err() {
                symlink(format!("..data/{name}"), &link).expect("link");
            }
        }
        if let Some(old) = old {
            std::fs::remove_dir_all(self.dir.join(old)).expect("old version removed");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mounted_key_directory_is_reloaded_when_the_kubelet_swaps_its_data_link() {
    let kube = cluster().client().await;
    let ns = cluster().namespace(&kube, "keys-dir").await;
    let dir = tempfile::tempdir().expect("temp dir");
    let (old_key, _) = identity(dir.path(), "old");
    let (new_key, new_recipient) = identity(dir.path(), "new");
    let sealed = sealed_secret(dir.path(), &ns, "db", "hunter2-dir", &new_recipient);
    let pipeline = repository(
        dir.path(),
        &unique("keysdir"),
        &[("dev", "", &[("db.sops.yaml", sealed)])],
    );
    let mut mounted = MountedSecret::new(dir.path().join("keys"));
    mounted.publish(&[("age.agekey", &old_key)]);
    let keys = mounted.dir.display().to_string();
    let serve = Serve::start(dir.path(), &pipeline, &["--age-keys-dir", &keys]);

    eventually("dev cannot decrypt without the new identity", || async {
        serve.status("dev").0 == "decryption_failed"
    })
    .await;
    mounted.publish(&[("age.agekey", &old_key), ("identity.agekey", &new_key)]);
    eventually("the new identity decrypts dev's Secret", || async {
        password(&kube, &ns, "db").await.as_deref() == Some("hunter2-dir")
    })
    .await;
    eventually("dev succeeds", || async {
        serve.status("dev").0 == "succeeded"
    })
    .await;

    mounted.publish(&[("age.agekey", &old_key)]);
    eventually("without the identity dev no longer decrypts", || async {
        serve.status("dev").0 == "decryption_failed"
    })
    .await;
    assert_eq!(
        files_holding(&dir.path().join("state"), b"AGE-SECRET-KEY-"),
        Vec::<PathBuf>::new(),
        "no key material in the state directory"
    );
}

/// The files under `dir` whose bytes contain `needle`.
fn files_holding(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).expect("list") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            found.extend(files_holding(&path, needle));
        } else if std::fs::read(&path)
            .map(|bytes| bytes.windows(needle.len()).any(|w| w == needle))
            .unwrap_or(false)
        {
            found.push(path);
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_environment_with_its_own_key_entry_decrypts_with_nothing_else() {
    let kube = cluster().client().await;
    let ns = cluster().namespace(&kube, "keys-own").await;
    let dir = tempfile::tempdir().expect("temp dir");
    let (prod_key, prod_recipient) = identity(dir.path(), "prod");
    let (dev_key, dev_recipient) = identity(dir.path(), "dev");
    let (global_key, global_recipient) = identity(dir.path(), "global");
    let prod_secret = sealed_secret(dir.path(), &ns, "prod-db", "prod-pw", &prod_recipient);
    let qa_secret = sealed_secret(dir.path(), &ns, "qa-db", "qa-pw", &global_recipient);
    let dev_secret = sealed_secret(dir.path(), &ns, "dev-db", "dev-pw", &dev_recipient);
    // dev reaches prod's file (another environment's key); staging reaches qa's (a global
    // key): both have keys of their own, so neither decrypts.
    let pipeline = repository(
        dir.path(),
        &unique("keysown"),
        &[
            ("prod", "", &[("db.sops.yaml", prod_secret.clone())]),
            ("qa", "", &[("db.sops.yaml", qa_secret.clone())]),
            (
                "dev",
                "",
                &[
                    ("db.sops.yaml", dev_secret.clone()),
                    ("prod.sops.yaml", prod_secret),
                ],
            ),
            ("staging", "", &[("qa.sops.yaml", qa_secret)]),
        ],
    );
    put_secret(
        &kube,
        &ns,
        "age-keys",
        &[
            ("prod.agekey", &prod_key),
            ("dev.agekey", &dev_key),
            ("staging.agekey", &dev_key),
            ("age.agekey", &global_key),
        ],
    )
    .await;
    let serve = Serve::start(
        dir.path(),
        &pipeline,
        &["--age-keys-secret", &format!("{ns}/age-keys")],
    );

    eventually("prod decrypts with its own entry", || async {
        password(&kube, &ns, "prod-db").await.as_deref() == Some("prod-pw")
    })
    .await;
    eventually("qa decrypts with the global entry", || async {
        password(&kube, &ns, "qa-db").await.as_deref() == Some("qa-pw")
    })
    .await;
    eventually("dev and staging fail to decrypt", || async {
        serve.status("dev").0 == "decryption_failed"
            && serve.status("staging").0 == "decryption_failed"
    })
    .await;
    let (_, dev) = serve.status("dev");
    assert!(
        dev.contains("only its own age identities (the key entry dev.agekey)")
            && dev.contains("prod.sops.yaml"),
        "{dev}"
    );
    let (_, staging) = serve.status("staging");
    assert!(staging.contains("staging.agekey"), "{staging}");
    assert_eq!(
        password(&kube, &ns, "dev-db").await,
        None,
        "nothing of dev is applied"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_environment_follows_its_kubeconfig_secret_from_missing_to_a_bad_server_to_a_good_one() {
    let kube = cluster().client().await;
    let ns = cluster().namespace(&kube, "keys-kc").await;
    let dir = tempfile::tempdir().expect("temp dir");
    let config_map = format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: remote, namespace: {ns}}}\ndata: {{at: remote}}\n"
    );
    let pipeline = repository(
        dir.path(),
        &unique("keyskc"),
        &[(
            "remote",
            "      cluster: {kubeconfigSecret: {name: remote-cluster}}\n",
            &[("cm.yaml", config_map)],
        )],
    );
    let serve = Serve::start(dir.path(), &pipeline, &["--namespace", &ns]);

    eventually("a missing Secret is named", || async {
        let (reason, message) = serve.status("remote");
        reason == "connect_failed"
            && message.contains(&format!("kubeconfig Secret {ns}/remote-cluster: not found"))
    })
    .await;

    put_secret(&kube, &ns, "remote-cluster", &[("config", "irrelevant")]).await;
    eventually("a missing key is named", || async {
        serve.status("remote").1.contains("has no key \"value\"")
    })
    .await;

    let good = std::fs::read_to_string(&cluster().kubeconfig).expect("kubeconfig");
    let server = good
        .lines()
        .find_map(|l| l.trim().strip_prefix("server: "))
        .expect("a server line")
        .to_owned();
    let bad = good.replace(&server, "https://127.0.0.1:1");
    put_secret(&kube, &ns, "remote-cluster", &[("value", &bad)]).await;
    eventually("the bad server cannot be reached", || async {
        serve.status("remote").0 == "cluster_unreachable"
    })
    .await;
    let configs = Api::<ConfigMap>::namespaced(kube.clone(), &ns);
    assert!(configs.get_opt("remote").await.expect("get").is_none());

    put_secret(&kube, &ns, "remote-cluster", &[("value", &good)]).await;
    eventually("the fixed kubeconfig reconciles", || async {
        configs.get_opt("remote").await.ok().flatten().is_some()
    })
    .await;
    eventually("remote succeeds", || async {
        serve.status("remote").0 == "succeeded"
    })
    .await;
    let token = good
        .lines()
        .find_map(|l| l.trim().strip_prefix("token: "))
        .expect("a token line");
    assert!(
        !serve.log().contains(token),
        "the log holds the kubeconfig's token"
    );
}
