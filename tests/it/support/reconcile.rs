//! Support for the reconcile tests: environments on the test cluster, a desired-state source
//! the test feeds, a TCP forwarder the test can cut, and log capture.

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use serde_json::{Value, json};
use stagehand::pipeline::{
    ApprovalPolicy, Cluster, Environment, PromotePolicy, PromotionPolicy, Source, SyncPolicy,
};
use stagehand::reconcile::{Desired, DesiredState, SourceError, SourceStage};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// An environment on the cluster behind `kubeconfig`.
pub fn environment(name: &str, kubeconfig: &Path) -> Environment {
    Environment {
        name: name.to_owned(),
        promotes_from: None,
        source: Source::Overlay {
            path: format!("environments/{name}"),
        },
        cluster: Cluster::Kubeconfig {
            path: kubeconfig.to_owned(),
            context: None,
        },
        sync: SyncPolicy {
            interval: Duration::from_secs(300),
            prune: true,
            self_heal: true,
            suspend: false,
            timeout: Duration::from_secs(300),
            force: false,
            recreate: false,
            auto: true,
            adopt: false,
            prune_adopted: false,
            prune_namespaces: false,
            prune_crds: false,
            max_prune_percent: 50,
        },
        approval: ApprovalPolicy::default(),
        freeze_windows: Vec::new(),
        promote: PromotePolicy::default(),
        promotion: PromotionPolicy::default(),
        require_signed_commits: None,
        verify: None,
        decryption: Default::default(),
        ignore_differences: Vec::new(),
    }
}

/// What a [`FedSource`] hands out for one environment.
#[derive(Clone)]
pub enum Fed {
    Objects {
        revision: String,
        objects: Vec<Value>,
    },
    /// A render failure, as the render module would report it.
    RenderFails(String),
}

/// The desired state as the test sets it. It stands in for git + render + secrets, which
/// produce exactly this (a revision and a list of objects) once merged.
#[derive(Default)]
pub struct FedSource {
    fed: Mutex<HashMap<String, Fed>>,
}

impl FedSource {
    pub fn set(&self, env: &str, revision: &str, objects: Vec<Value>) {
        self.fed.lock().expect("not poisoned").insert(
            env.to_owned(),
            Fed::Objects {
                revision: revision.to_owned(),
                objects,
            },
        );
    }

    pub fn fail(&self, env: &str, message: &str) {
        self.fed
            .lock()
            .expect("not poisoned")
            .insert(env.to_owned(), Fed::RenderFails(message.to_owned()));
    }
}

impl DesiredState for FedSource {
    async fn desired(&self, env: &Environment) -> Result<Desired, SourceError> {
        let fed = self
            .fed
            .lock()
            .expect("not poisoned")
            .get(&env.name)
            .cloned();
        match fed {
            Some(Fed::Objects { revision, objects }) => Ok(Desired {
                revision,
                objects,
                tainted: Default::default(),
            }),
            Some(Fed::RenderFails(message)) => Err(SourceError {
                stage: SourceStage::Render,
                revision: Some("bad".into()),
                source: message.into(),
            }),
            None => Err(SourceError {
                stage: SourceStage::Fetch,
                revision: None,
                source: "nothing fed for this environment".into(),
            }),
        }
    }
}

pub fn config_map(ns: &str, name: &str, data: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap",
           "metadata": {"name": name, "namespace": ns}, "data": data})
}

pub fn deployment(ns: &str, name: &str, image: &str) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}},
                 "template": {"metadata": {"labels": {"app": name}},
                              "spec": {"containers": [{"name": "app", "image": image,
                                                       "ports": [{"containerPort": 8080}]}]}}}})
}

/// A Service whose port has no `protocol`, which the 1.20 apiserver rejects under server-side
/// apply unless it is normalised.
pub fn service(ns: &str, name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns},
           "spec": {"selector": {"app": name}, "ports": [{"port": 80, "targetPort": 8080}]}})
}

/// A CRD of kind `Widget` in a group unique to `suffix` (CRDs are cluster-wide).
pub fn widget_crd(group: &str) -> Value {
    json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": format!("widgets.{group}")},
        "spec": {"group": group, "scope": "Namespaced",
                 "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
                 "versions": [{"name": "v1", "served": true, "storage": true,
                               "schema": {"openAPIV3Schema": {"type": "object",
                                          "x-kubernetes-preserve-unknown-fields": true}}}]}})
}

pub fn widget(group: &str, ns: &str, name: &str, size: i64) -> Value {
    json!({"apiVersion": format!("{group}/v1"), "kind": "Widget",
           "metadata": {"name": name, "namespace": ns}, "spec": {"size": size}})
}

/// A TCP forwarder to the real apiserver that the test can cut and restore, so that the
/// apiserver becomes unreachable for real (connections refused) and comes back on the same
/// address.
pub struct Forwarder {
    pub addr: SocketAddr,
    target: SocketAddr,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Forwarder {
    pub async fn start(target: SocketAddr) -> Arc<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a free port");
        let addr = listener.local_addr().expect("bound");
        let forwarder = Arc::new(Self {
            addr,
            target,
            task: Mutex::new(None),
        });
        forwarder.serve(listener);
        forwarder
    }

    fn serve(&self, listener: TcpListener) {
        let target = self.target;
        let task = tokio::spawn(async move {
            // Dropping the set (when this task is aborted) aborts every open connection.
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((mut inbound, _)) = listener.accept().await {
                connections.spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        *self.task.lock().expect("not poisoned") = Some(task);
    }

    /// Closes the port and every open connection.
    pub fn cut(&self) {
        if let Some(task) = self.task.lock().expect("not poisoned").take() {
            task.abort();
        }
    }

    /// Listens on the same address again.
    pub async fn restore(&self) {
        for _ in 0..100 {
            if let Ok(listener) = TcpListener::bind(self.addr).await {
                self.serve(listener);
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("could not listen on {} again", self.addr);
    }

    /// A copy of `kubeconfig` in `dir` whose server is this forwarder.
    pub fn kubeconfig(&self, kubeconfig: &Path, dir: &Path) -> PathBuf {
        let text = std::fs::read_to_string(kubeconfig).expect("kubeconfig readable");
        let text = text.replace(
            &format!("127.0.0.1:{}", self.target.port()),
            &self.addr.to_string(),
        );
        let path = dir.join("forwarded-kubeconfig");
        std::fs::write(&path, text).expect("write kubeconfig");
        path
    }
}

/// The apiserver address of a kubeconfig written by scripts/local-cluster.sh.
pub fn apiserver_addr(kubeconfig: &Path) -> SocketAddr {
    let text = std::fs::read_to_string(kubeconfig).expect("kubeconfig readable");
    let server = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("server: https://"))
        .expect("the kubeconfig names a server");
    server
        .parse()
        .expect("the server is an IP address and port")
}

/// Everything logged (all levels of Stagehand and kube) since the first call in this process.
#[derive(Clone)]
pub struct Logs(Arc<Mutex<Vec<u8>>>);

impl Logs {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("not poisoned")).into_owned()
    }
}

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("not poisoned").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

pub fn capture_logs() -> Logs {
    static LOGS: OnceLock<Logs> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let writer = buffer.clone();
        tracing_subscriber::fmt()
            .with_env_filter("stagehand=trace,kube=trace")
            .with_writer(move || LogWriter(writer.clone()))
            .try_init()
            .expect("no other subscriber is installed in this test process");
        Logs(buffer)
    })
    .clone()
}
