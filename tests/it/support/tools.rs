//! Locates the external tools the tests compare against or drive: the real `sops`, `age`,
//! `kubectl`, `etcd`, `kube-apiserver`, `chromium` and `chromedriver`. `scripts/setup.sh`
//! installs them and records where in `env.sh` under the cache directory; the `STAGEHAND_*`
//! variables override it.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::OnceLock;

#[derive(Debug, Clone, Copy)]
pub enum Tool {
    Sops,
    Age,
    AgeKeygen,
    Kubectl,
    Etcd,
    KubeApiserver,
    Python,
    Prometheus,
    Chromium,
    Chromedriver,
}

impl Tool {
    fn variable(self) -> &'static str {
        match self {
            Tool::Sops => "STAGEHAND_SOPS",
            Tool::Age => "STAGEHAND_AGE",
            Tool::AgeKeygen => "STAGEHAND_AGE_KEYGEN",
            Tool::Kubectl => "STAGEHAND_KUBECTL",
            Tool::Etcd => "STAGEHAND_ETCD",
            Tool::KubeApiserver => "STAGEHAND_KUBE_APISERVER",
            Tool::Python => "STAGEHAND_PYTHON",
            Tool::Prometheus => "STAGEHAND_PROMETHEUS",
            Tool::Chromium => "STAGEHAND_CHROMIUM",
            Tool::Chromedriver => "STAGEHAND_CHROMEDRIVER",
        }
    }
}

pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("STAGEHAND_CACHE") {
        return dir.into();
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME is set for tests")).join(".cache")
        });
    base.join("stagehand")
}

fn recorded() -> &'static HashMap<String, String> {
    static RECORDED: OnceLock<HashMap<String, String>> = OnceLock::new();
    RECORDED.get_or_init(|| {
        let text = std::fs::read_to_string(cache_dir().join("env.sh")).unwrap_or_default();
        text.lines()
            .filter_map(|line| line.strip_prefix("export "))
            .filter_map(|line| line.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.trim_matches('"').to_owned()))
            .collect()
    })
}

/// The path of `tool`. Panics with the fix when the tool is missing: a test that needs a real
/// part must not quietly pass without it.
pub fn tool(tool: Tool) -> PathBuf {
    let var = tool.variable();
    let path = std::env::var(var)
        .ok()
        .filter(|v| !v.is_empty())
        .or_else(|| recorded().get(var).cloned().filter(|v| !v.is_empty()))
        .map(PathBuf::from);
    match path {
        Some(path) if path.exists() => path,
        _ => panic!("{tool:?} is not installed: run scripts/setup.sh (or set {var})"),
    }
}

/// Makes an age identity with the real `age-keygen` at `key_file` and returns its recipient.
pub fn age_keygen(key_file: &std::path::Path) -> String {
    let out = std::process::Command::new(tool(Tool::AgeKeygen))
        .arg("-o")
        .arg(key_file)
        .output()
        .expect("age-keygen runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let keys = std::fs::read_to_string(key_file).expect("age-keygen wrote the key file");
    keys.lines()
        .find_map(|l| l.strip_prefix("# public key: "))
        .expect("age-keygen writes the public key as a comment")
        .to_owned()
}

/// What `kubectl kustomize DIR` prints. Panics with kubectl's message when it refuses the tree.
pub fn kubectl_kustomize(dir: &std::path::Path) -> String {
    let out = std::process::Command::new(tool(Tool::Kubectl))
        .arg("kustomize")
        .arg(dir)
        .output()
        .expect("kubectl runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("kubectl prints UTF-8")
}

/// The YAML documents of a multi-document text, parsed.
pub fn yaml_documents(text: &str) -> Vec<serde_yaml_ng::Value> {
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|d| serde::Deserialize::deserialize(d).expect("valid YAML"))
        .collect()
}
