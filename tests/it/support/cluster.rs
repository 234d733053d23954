//! A real kube-apiserver + etcd for the tests, shared by every test of a run.
//!
//! `scripts/test.sh` starts one cluster for the whole run and exports its kubeconfig as
//! `STAGEHAND_TEST_KUBECONFIG` (nextest runs each test in its own process, so a per-process
//! cluster would cost seconds per test). Without it, the first test of the process starts a
//! private cluster through `scripts/local-cluster.sh`, whose watchdog stops it when this process
//! ends, however it ends. Each test works in a namespace of its own.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};

pub struct TestCluster {
    pub kubeconfig: PathBuf,
}

pub fn cluster() -> &'static TestCluster {
    static CLUSTER: OnceLock<TestCluster> = OnceLock::new();
    CLUSTER.get_or_init(|| {
        if let Some(path) = std::env::var_os("STAGEHAND_TEST_KUBECONFIG") {
            return TestCluster {
                kubeconfig: path.into(),
            };
        }
        let dir = std::env::temp_dir().join(format!("stagehand-cluster-{}", std::process::id()));
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/local-cluster.sh");
        let out = Command::new(&script)
            .arg("up")
            .arg(&dir)
            .arg("--watch")
            .arg(std::process::id().to_string())
            .output()
            .expect("scripts/local-cluster.sh runs");
        assert!(
            out.status.success(),
            "the local kube-apiserver did not start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        TestCluster {
            kubeconfig: dir.join("kubeconfig"),
        }
    })
}

impl TestCluster {
    pub async fn client(&self) -> kube::Client {
        install_crypto_provider();
        let kubeconfig = Kubeconfig::read_from(&self.kubeconfig).expect("kubeconfig is readable");
        let config =
            kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .expect("kubeconfig is valid");
        kube::Client::try_from(config).expect("client can be built")
    }

    /// Creates a namespace with a unique name for one test and returns its name.
    pub async fn namespace(&self, client: &kube::Client, prefix: &str) -> String {
        let name = format!("{prefix}-{}", unique_suffix());
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}
        }))
        .expect("namespace manifest is valid");
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .expect("namespace can be created");
        name
    }
}

/// kube's rustls and other crates' rustls can both be in the build; without one process-wide
/// provider the first TLS connection panics.
pub fn install_crypto_provider() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

pub fn unique_suffix() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("the clock is after 1970")
        .subsec_nanos();
    format!(
        "{:x}{:x}{}",
        std::process::id(),
        nanos,
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}
