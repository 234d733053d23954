//! Side by side: `stagehand render`, the in-process `render::render` call and
//! `kubectl kustomize` on the same generated input, at 500, 2,000, 8,000 and 32,000 resources:
//! the bare base, the base with only `namespace` set, and a full overlay (namespace, namePrefix,
//! labels with selectors, a JSON6902 patch on every Deployment, 100 `images` entries, a
//! configMapGenerator, a component). Every kubectl output is compared with ours byte for byte.
//! A second case keeps one ConfigMap per file, as real repositories do: a kustomization listing
//! 500, 2,000 and 8,000 files, where any per-file work that grows with the number of files shows.
//!
//! Run with `cargo bench --bench render`; `cargo bench --bench render -- files` (or `-- overlays`)
//! runs one case. `STAGEHAND_KUBECTL` (or the recorded tool path in
//! `~/.cache/stagehand/env.sh`) names kubectl; `BENCH_KUBECTL_MAX` (default 2000) is the largest
//! base kubectl is timed on, because it grows faster than linearly (minutes at 8,000).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use stagehand::render::{self, Options, fs::DiskFs};

fn kubectl() -> PathBuf {
    if let Ok(p) = std::env::var("STAGEHAND_KUBECTL") {
        return p.into();
    }
    let env = std::env::var_os("HOME")
        .map(|h| PathBuf::from(h).join(".cache/stagehand/env.sh"))
        .and_then(|p| std::fs::read_to_string(p).ok())
        .unwrap_or_default();
    env.lines()
        .filter_map(|l| l.strip_prefix("export STAGEHAND_KUBECTL="))
        .map(|v| PathBuf::from(v.trim_matches('"')))
        .next()
        .expect("kubectl: set STAGEHAND_KUBECTL or run scripts/setup.sh")
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().expect("has a parent")).expect("mkdir");
    std::fs::write(path, text).expect("write");
}

/// A base of `n` resources (a quarter each of Deployments, Services, ConfigMaps and
/// ServiceAccounts), a component, and three overlays.
fn generate(root: &Path, n: usize) {
    let per = n / 4;
    let mut base = String::new();
    for i in 0..per {
        base.push_str(&format!(
            "apiVersion: apps/v1
kind: Deployment
metadata:
  name: app-{i}
  labels:
    app: app-{i}
spec:
  replicas: 1
  selector:
    matchLabels:
      app: app-{i}
  template:
    metadata:
      labels:
        app: app-{i}
    spec:
      serviceAccountName: sa-{i}
      containers:
      - name: main
        image: registry.example.com/team/image-{img}:1.0.{i}
        envFrom:
        - configMapRef:
            name: config-{i}
        ports:
        - containerPort: 8080
---
apiVersion: v1
kind: Service
metadata:
  name: app-{i}
spec:
  selector:
    app: app-{i}
  ports:
  - port: 80
    targetPort: 8080
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: config-{i}
data:
  LOG_LEVEL: info
  INDEX: \"{i}\"
---
apiVersion: v1
kind: ServiceAccount
metadata:
  name: sa-{i}
---
",
            img = i % 100
        ));
    }
    write(&root.join("base/resources.yaml"), &base);
    write(
        &root.join("base/kustomization.yaml"),
        "resources:\n- resources.yaml\n",
    );
    write(
        &root.join("components/monitoring/kustomization.yaml"),
        "apiVersion: kustomize.config.k8s.io/v1alpha1
kind: Component
commonAnnotations:
  monitoring.example.com/scrape: \"true\"
configMapGenerator:
- name: monitoring
  literals:
  - interval=30s
",
    );
    let mut images = String::from("images:\n");
    for i in 0..100 {
        images.push_str(&format!(
            "- name: registry.example.com/team/image-{i}\n  newName: mirror.example.com/team/image-{i}\n  newTag: v2.{i}\n"
        ));
    }
    write(
        &root.join("overlays/namespace-only/kustomization.yaml"),
        "resources:\n- ../../base\nnamespace: shop\n",
    );
    for env in ["dev", "staging", "prod"] {
        write(
            &root.join(format!("overlays/{env}/kustomization.yaml")),
            &format!(
                "resources:
- ../../base
components:
- ../../components/monitoring
namespace: shop-{env}
namePrefix: {env}-
labels:
- pairs:
    environment: {env}
  includeSelectors: true
patches:
- target:
    kind: Deployment
  patch: |-
    - op: replace
      path: /spec/replicas
      value: 3
    - op: add
      path: /spec/template/metadata/annotations
      value:
        rollout: \"{env}\"
configMapGenerator:
- name: settings
  literals:
  - ENVIRONMENT={env}
  - FEATURE_X=on
{images}"
            ),
        );
    }
}

fn time_command(cmd: &mut Command) -> (Duration, Vec<u8>) {
    let start = Instant::now();
    let out = cmd.output().expect("the command runs");
    let took = start.elapsed();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (took, out.stdout)
}

fn best<T>(runs: usize, mut f: impl FnMut() -> (Duration, T)) -> (Duration, T) {
    let mut best = f();
    for _ in 1..runs {
        let next = f();
        if next.0 < best.0 {
            best = next;
        }
    }
    best
}

/// Peak resident set size of a command, in KiB, measured by GNU time.
fn peak_rss_kib(program: &Path, args: &[&str], dir: &Path) -> Option<u64> {
    let out = Command::new("/usr/bin/time")
        .arg("-f")
        .arg("%M")
        .arg(program)
        .args(args)
        .current_dir(dir)
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .last()?
        .trim()
        .parse()
        .ok()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// A kustomization in `files/` listing `n` files of one ConfigMap each.
fn generate_many_files(root: &Path, n: usize) {
    let mut kustomization = String::from("resources:\n");
    for i in 0..n {
        let name = format!("config-{i:05}.yaml");
        write(
            &root.join("files").join(&name),
            &format!(
                "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: config-{i}\ndata:\n  INDEX: \"{i}\"\n"
            ),
        );
        kustomization.push_str(&format!("- {name}\n"));
    }
    write(&root.join("files/kustomization.yaml"), &kustomization);
}

fn kubectl_max() -> usize {
    std::env::var("BENCH_KUBECTL_MAX")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000)
}

fn main() {
    // `cargo bench` passes `--bench`; any other argument picks the cases to run.
    let only: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let runs = |case: &str| only.is_empty() || only.iter().any(|o| case.contains(o.as_str()));
    let stagehand = PathBuf::from(env!("CARGO_BIN_EXE_stagehand"));
    let kubectl = kubectl();
    if runs("overlays") {
        overlays(&stagehand, &kubectl);
    }
    if runs("files") {
        many_files(&stagehand, &kubectl);
    }
}

/// One ConfigMap per file: the time per file must not grow with the number of files.
///
/// The sizes are timed in turns (500, 2,000, 8,000, then again), so that a slow spell of this
/// shared machine lands on every size alike instead of on whichever size happened to run during
/// it. Each size prints its best time; the growth is the median, over the rounds, of the ratio
/// between neighbouring sizes timed a moment apart, and the ratio of the best times beside it.
fn many_files(stagehand: &Path, kubectl: &Path) {
    const SIZES: [usize; 3] = [500, 2000, 8000];
    const LIB_ROUNDS: usize = 30;
    const CLI_ROUNDS: usize = 5;
    let kubectl_max = kubectl_max();
    let input = "files";
    let dirs: Vec<_> = SIZES
        .iter()
        .map(|&n| {
            let dir = tempfile::tempdir().expect("temp dir");
            generate_many_files(dir.path(), n);
            dir
        })
        .collect();
    let cli_run = |dir: &Path| {
        time_command(
            Command::new(stagehand)
                .args(["render", input, "--root", "."])
                .current_dir(dir),
        )
    };
    let outputs: Vec<Vec<u8>> = dirs.iter().map(|d| cli_run(d.path()).1).collect();
    let cli_rounds: Vec<Vec<Duration>> = (0..CLI_ROUNDS)
        .map(|_| dirs.iter().map(|d| cli_run(d.path()).0).collect())
        .collect();
    let systems: Vec<_> = dirs
        .iter()
        .map(|d| DiskFs::new(d.path()).expect("root"))
        .collect();
    let lib_rounds: Vec<Vec<Duration>> = (0..LIB_ROUNDS)
        .map(|_| {
            systems
                .iter()
                .zip(&outputs)
                .map(|(fs, output)| {
                    let start = Instant::now();
                    let objects = render::render(fs, input, &Options::default()).expect("renders");
                    let text = render::to_yaml(&objects);
                    let took = start.elapsed();
                    assert_eq!(text.as_bytes(), output, "the library and the CLI agree");
                    took
                })
                .collect()
        })
        .collect();
    let best_of = |rounds: &[Vec<Duration>]| -> Vec<Duration> {
        (0..SIZES.len())
            .map(|i| rounds.iter().map(|r| r[i]).min().expect("rounds"))
            .collect()
    };
    let (cli, lib) = (best_of(&cli_rounds), best_of(&lib_rounds));
    println!(
        "{:>6} {:<16} {:>11} {:>9} {:>9} {:>9} {:>9}",
        "files", "input", "kubectl ms", "cli ms", "lib ms", "cli x", "lib x"
    );
    for (i, &n) in SIZES.iter().enumerate() {
        // kubectl keeps its best of three too, so that neither side is timed at a slow moment only.
        let kube = (n <= kubectl_max).then(|| {
            let (took, theirs) = best(3, || {
                time_command(
                    Command::new(kubectl)
                        .args(["kustomize", input])
                        .current_dir(dirs[i].path()),
                )
            });
            assert!(
                theirs == outputs[i],
                "stagehand and kubectl kustomize disagree on {n} files"
            );
            took
        });
        let ratio = |d: Duration| {
            kube.map(|k| format!("{:.0}x", k.as_secs_f64() / d.as_secs_f64()))
                .unwrap_or_else(|| "-".into())
        };
        println!(
            "{:>6} {:<16} {:>11} {:>9.1} {:>9.1} {:>9} {:>9}",
            n,
            "one per file",
            kube.map(|k| format!("{:.0}", ms(k)))
                .unwrap_or_else(|| "skipped".into()),
            ms(cli[i]),
            ms(lib[i]),
            ratio(cli[i]),
            ratio(lib[i]),
        );
    }
    let growth = |rounds: &[Vec<Duration>], best: &[Duration]| {
        (1..SIZES.len())
            .map(|i| {
                let mut ratios: Vec<f64> = rounds
                    .iter()
                    .map(|r| r[i].as_secs_f64() / r[i - 1].as_secs_f64())
                    .collect();
                ratios.sort_by(f64::total_cmp);
                format!(
                    "x{:.1} (best times x{:.1})",
                    ratios[ratios.len() / 2],
                    best[i].as_secs_f64() / best[i - 1].as_secs_f64()
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!(
        "one object per file, growth per 4x files (500 -> 2,000, 2,000 -> 8,000), median of the \
         rounds: in-process {}; cli {}",
        growth(&lib_rounds, &lib),
        growth(&cli_rounds, &cli)
    );
}

/// The base, the base with a namespace and the full overlay, at four sizes.
fn overlays(stagehand: &Path, kubectl: &Path) {
    let kubectl_max = kubectl_max();
    println!(
        "{:>6} {:<16} {:>11} {:>9} {:>9} {:>9} {:>9} {:>8}",
        "n", "input", "kubectl ms", "cli ms", "lib ms", "cli x", "lib x", "out KiB"
    );
    let mut overlay_lib_ms = Vec::new();
    for n in [500usize, 2000, 8000, 32000] {
        let dir = tempfile::tempdir().expect("temp dir");
        generate(dir.path(), n);
        for (label, input) in [
            ("base", "base"),
            ("base+namespace", "overlays/namespace-only"),
            ("full overlay", "overlays/prod"),
        ] {
            let (cli, ours) = best(3, || {
                time_command(
                    Command::new(stagehand)
                        .args(["render", input, "--root", "."])
                        .current_dir(dir.path()),
                )
            });
            let fs = DiskFs::new(dir.path()).expect("root");
            let (lib, _) = best(5, || {
                let start = Instant::now();
                let objects = render::render(&fs, input, &Options::default()).expect("renders");
                let text = render::to_yaml(&objects);
                (start.elapsed(), text.len())
            });
            let kube = (n <= kubectl_max).then(|| {
                let (took, theirs) = time_command(
                    Command::new(kubectl)
                        .args(["kustomize", input])
                        .current_dir(dir.path()),
                );
                assert!(
                    theirs == ours,
                    "stagehand and kubectl kustomize disagree on {input} at {n} resources"
                );
                took
            });
            if input == "overlays/prod" {
                overlay_lib_ms.push(ms(lib));
            }
            let ratio = |d: Duration| {
                kube.map(|k| format!("{:.0}x", k.as_secs_f64() / d.as_secs_f64()))
                    .unwrap_or_else(|| "-".into())
            };
            println!(
                "{:>6} {:<16} {:>11} {:>9.1} {:>9.1} {:>9} {:>9} {:>8}",
                n,
                label,
                kube.map(|k| format!("{:.0}", ms(k)))
                    .unwrap_or_else(|| "skipped".into()),
                ms(cli),
                ms(lib),
                ratio(cli),
                ratio(lib),
                ours.len() / 1024
            );
        }
        let overlay = "overlays/prod";
        let ours_rss = peak_rss_kib(stagehand, &["render", overlay, "--root", "."], dir.path());
        let theirs_rss = (n <= kubectl_max)
            .then(|| peak_rss_kib(kubectl, &["kustomize", overlay], dir.path()))
            .flatten();
        println!(
            "       peak RSS, full overlay at {n}: stagehand render {} KiB, kubectl kustomize {} KiB",
            ours_rss.map_or("?".into(), |v| v.to_string()),
            theirs_rss.map_or("-".into(), |v| v.to_string())
        );
    }
    let growth: Vec<String> = overlay_lib_ms
        .windows(2)
        .map(|w| format!("x{:.1}", w[1] / w[0]))
        .collect();
    println!(
        "in-process full overlay, growth per 4x resources (500 -> 32,000): {}",
        growth.join(", ")
    );
}
