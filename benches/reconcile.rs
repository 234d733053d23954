//! Side by side on one apiserver in one run: 1,000 objects applied by Stagehand and by
//! `kubectl apply --server-side`, and Stagehand's no-change reconcile against its first apply.
//!
//! Uses `STAGEHAND_TEST_KUBECONFIG` when set, else starts a private apiserver with
//! scripts/local-cluster.sh. `STAGEHAND_KUBECTL` (or the setup script's env.sh) names kubectl.
//! Run with `cargo bench --bench reconcile`.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use stagehand::pipeline::{
    ApprovalPolicy, Cluster, Environment, PromotePolicy, PromotionPolicy, Source, SyncPolicy,
};
use stagehand::reconcile::{Desired, DesiredState, Options, Reconciler, SourceError};

#[path = "support/cluster.rs"]
mod cluster;
use cluster::kubeconfig;

const OBJECTS: usize = 1000;
const ROUNDS: usize = 3;

struct Fixed(Vec<Value>);

impl DesiredState for Fixed {
    async fn desired(&self, _env: &Environment) -> Result<Desired, SourceError> {
        Ok(Desired {
            revision: "bench".into(),
            objects: self.0.clone(),
            tainted: Default::default(),
        })
    }
}

fn objects(ns: &str) -> Vec<Value> {
    let mut out = vec![json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})];
    for i in 0..OBJECTS - 1 {
        let name = format!("obj-{i:04}");
        out.push(match i % 5 {
            0 | 1 => json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": name, "namespace": ns, "labels": {"app": "bench"}},
                "data": {"index": i.to_string(), "text": "x".repeat(200)}}),
            2 => json!({"apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": name, "namespace": ns},
                "stringData": {"password": format!("pw-{i}")}}),
            3 => json!({"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": name, "namespace": ns},
                "spec": {"selector": {"app": name}, "ports": [{"port": 80, "protocol": "TCP", "targetPort": 8080}]}}),
            _ => json!({"apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": name, "namespace": ns},
                "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}},
                         "template": {"metadata": {"labels": {"app": name}},
                                      "spec": {"containers": [{"name": "app", "image": "nginx:1.25",
                                               "ports": [{"containerPort": 8080, "protocol": "TCP"}]}]}}}}),
        });
    }
    out
}

fn environment(name: &str, kubeconfig: &Path) -> Environment {
    Environment {
        name: name.into(),
        promotes_from: None,
        source: Source::Overlay { path: name.into() },
        cluster: Cluster::Kubeconfig {
            path: kubeconfig.to_owned(),
            context: None,
        },
        sync: SyncPolicy {
            interval: Duration::from_secs(300),
            prune: true,
            self_heal: true,
            suspend: false,
            timeout: Duration::from_secs(3600),
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

fn recorded(var: &str) -> Option<String> {
    if let Ok(v) = std::env::var(var) {
        return Some(v);
    }
    let home = std::env::var("HOME").ok()?;
    let text = std::fs::read_to_string(Path::new(&home).join(".cache/stagehand/env.sh")).ok()?;
    text.lines()
        .filter_map(|l| l.strip_prefix("export "))
        .filter_map(|l| l.split_once('='))
        .find(|(k, _)| *k == var)
        .map(|(_, v)| v.trim_matches('"').to_owned())
}

/// Runs kubectl under Python's getrusage to learn its peak memory; returns (seconds, KiB).
fn kubectl_apply(kubectl: &str, kubeconfig: &Path, file: &Path) -> (Duration, u64) {
    let script = "import resource,subprocess,sys,time\n\
        t=time.monotonic(); r=subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL); d=time.monotonic()-t\n\
        print(d, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(r.returncode)";
    let out = Command::new("python3")
        .args(["-c", script, kubectl, "--kubeconfig"])
        .arg(kubeconfig)
        .args(["apply", "--server-side", "-f"])
        .arg(file)
        .output()
        .expect("python3 runs kubectl");
    assert!(
        out.status.success(),
        "kubectl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let mut parts = text.split_whitespace();
    let secs: f64 = parts.next().and_then(|s| s.parse().ok()).expect("seconds");
    let kib: u64 = parts.next().and_then(|s| s.parse().ok()).expect("KiB");
    (Duration::from_secs_f64(secs), kib)
}

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// CPU time this process has used so far (user + system).
fn cpu_time() -> Duration {
    process_cpu("self")
}

/// CPU time (user + system) of process `pid` from /proc, in clock ticks of 10 ms.
fn process_cpu(pid: &str) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after_name = stat.rsplit_once(") ").map_or("", |(_, rest)| rest);
    let fields: Vec<u64> = after_name
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    let ticks = fields.get(11).copied().unwrap_or(0) + fields.get(12).copied().unwrap_or(0);
    Duration::from_millis(ticks * 10)
}

/// CPU time of the etcd and apiserver processes scripts/local-cluster.sh started (listed in
/// the `pids` file beside the kubeconfig), so that the report can say where the time goes.
fn cluster_cpu(kubeconfig: &Path) -> Duration {
    let pids = kubeconfig
        .parent()
        .map(|dir| dir.join("pids"))
        .and_then(|p| std::fs::read_to_string(p).ok())
        .unwrap_or_default();
    pids.split_whitespace().map(process_cpu).sum()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let kubeconfig = kubeconfig();
    let kubectl = recorded("STAGEHAND_KUBECTL").expect("STAGEHAND_KUBECTL or scripts/setup.sh");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let dir = std::env::temp_dir().join(format!("stagehand-bench-files-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let run = format!("{:x}", std::process::id());

    let (mut k_first, mut k_again, mut s_first, mut s_again) = (vec![], vec![], vec![], vec![]);
    let mut kubectl_kib = 0;
    for round in 0..ROUNDS {
        // kubectl: the same objects in a namespace of its own, as one multi-document file.
        let k_ns = format!("bench-{run}-kubectl-{round}");
        let file = dir.join(format!("{k_ns}.yaml"));
        let docs: Vec<String> = objects(&k_ns)
            .iter()
            .map(|o| serde_yaml_ng::to_string(o).expect("YAML"))
            .collect();
        std::fs::write(&file, docs.join("---\n")).expect("write objects");
        let server_cpu = cluster_cpu(&kubeconfig);
        let (t, kib) = kubectl_apply(&kubectl, &kubeconfig, &file);
        eprintln!(
            "apiserver+etcd CPU during kubectl's first apply: {:?}",
            cluster_cpu(&kubeconfig) - server_cpu
        );
        k_first.push(t);
        kubectl_kib = kubectl_kib.max(kib);
        let (t, kib) = kubectl_apply(&kubectl, &kubeconfig, &file);
        k_again.push(t);
        kubectl_kib = kubectl_kib.max(kib);

        let s_ns = format!("bench-{run}-stagehand-{round}");
        let source = Arc::new(Fixed(objects(&s_ns)));
        let options = Arc::new(Options {
            owner_prefix: format!("bench-{run}-{round}."),
            inventory_namespace: s_ns.clone(),
            concurrency: std::env::var("STAGEHAND_BENCH_CONCURRENCY")
                .ok()
                .and_then(|c| c.parse().ok())
                .unwrap_or(Options::default().concurrency),
            ..Options::default()
        });
        let (events, _) = tokio::sync::broadcast::channel(16);
        let mut reconciler =
            Reconciler::new(environment("env", &kubeconfig), source, options, events);
        let cpu = cpu_time();
        let server_cpu = cluster_cpu(&kubeconfig);
        runtime.block_on(async {
            let start = Instant::now();
            reconciler.reconcile().await.expect("first apply succeeds");
            s_first.push(start.elapsed());
            eprintln!(
                "stagehand CPU during its first apply: {:?}, apiserver+etcd: {:?}",
                cpu_time() - cpu,
                cluster_cpu(&kubeconfig) - server_cpu
            );
            let start = Instant::now();
            reconciler
                .reconcile()
                .await
                .expect("no-change reconcile succeeds");
            s_again.push(start.elapsed());
        });
        let unchanged = reconciler
            .status()
            .objects
            .iter()
            .filter(|o| o.change == stagehand::cluster::apply::Change::Unchanged)
            .count();
        assert_eq!(unchanged, OBJECTS, "the second pass found nothing to do");
        eprintln!(
            "round {round}: kubectl first {:?} again {:?}; stagehand first {:?} no-change {:?}",
            k_first[round], k_again[round], s_first[round], s_again[round]
        );
    }
    let (kf, ka, sf, sa) = (
        median(k_first),
        median(k_again),
        median(s_first),
        median(s_again),
    );
    println!("objects: {OBJECTS}, rounds: {ROUNDS} (medians)");
    println!("kubectl apply --server-side, first apply:   {kf:>10.3?}");
    println!("kubectl apply --server-side, re-apply:      {ka:>10.3?}");
    println!("stagehand first apply:                      {sf:>10.3?}");
    println!("stagehand no-change reconcile:              {sa:>10.3?}");
    println!(
        "first apply speed-up vs kubectl:            {:>10.2}x (goal >= 2x)",
        kf.as_secs_f64() / sf.as_secs_f64()
    );
    println!(
        "no-change reconcile / first apply:          {:>10.1}% (goal <= 10%)",
        100.0 * sa.as_secs_f64() / sf.as_secs_f64()
    );
    println!(
        "peak memory: stagehand process {} MiB, kubectl {} MiB",
        peak_rss_kib() / 1024,
        kubectl_kib / 1024
    );
}
