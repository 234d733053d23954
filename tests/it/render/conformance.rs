//! The kustomize conformance corpus (cases from kustomize's own test suite, with kubectl
//! kustomize's output): every case is rendered in fifo and legacy order and compared with the
//! expected documents; error cases must fail. Prints pass counts per feature.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;
use stagehand::render::{self, LoadRestrictor, Options, Order, fs::DiskFs};

/// Cases known to pass; each must keep passing.
const KNOWN_PASSING: &str = include_str!("conformance_passing.txt");
/// The pass count may not fall below this.
const FLOOR: usize = 187;

fn corpus() -> PathBuf {
    std::env::var_os("STAGEHAND_KUSTOMIZE_CONFORMANCE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/conformance/kustomize/cases")
        })
}

fn parse_stream(text: &str) -> Vec<Value> {
    stagehand::yaml::parse_documents(text).expect("expected output is valid YAML")
}

#[derive(Debug)]
enum Outcome {
    Pass,
    Fail(String),
}

fn run_case(dir: &Path) -> (Outcome, Vec<String>) {
    let case: Value =
        serde_json::from_slice(&std::fs::read(dir.join("case.json")).expect("case.json"))
            .expect("case.json is JSON");
    let features: Vec<String> = case["features"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|f| f.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let run_dir = case["run_dir"].as_str().unwrap_or("input");
    let sub = run_dir
        .strip_prefix("input")
        .unwrap_or(run_dir)
        .trim_start_matches('/');
    let fs = DiskFs::new(&dir.join("input")).expect("case input exists");
    let opts = &case["options"];
    let restrictor = match opts["load_restrictor"].as_str() {
        Some("LoadRestrictionsNone") => LoadRestrictor::None,
        _ => LoadRestrictor::RootOnly,
    };
    let order = match opts["reorder"].as_str() {
        Some("legacy") => Some(Order::Legacy),
        Some("none") => Some(Order::Fifo),
        _ => None,
    };
    let render_with = |order: Option<Order>| {
        render::render(
            &fs,
            sub,
            &Options {
                order,
                load_restrictor: restrictor,
                decrypt: None,
            },
        )
    };
    if case["expect_error"].as_bool() == Some(true) {
        return match render_with(order) {
            Err(e) => {
                // The substrings kustomize's own test requires of its error message.
                let message = stagehand::error_chain::ErrorChain(&e).to_string();
                let missing: Vec<&str> = case["error_checks"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|c| c.get(1).and_then(Value::as_str))
                    .filter(|want| !message.contains(want))
                    .collect();
                if missing.is_empty() {
                    (Outcome::Pass, features)
                } else {
                    (
                        Outcome::Fail(format!("error {message:?} lacks {missing:?}")),
                        features,
                    )
                }
            }
            Ok(_) => (
                Outcome::Fail("rendered, expected an error".into()),
                features,
            ),
        };
    }
    let checks = [(order, "expected.yaml"), (None, "oracle-legacy.yaml")];
    for (order, file) in checks {
        let want = parse_stream(&std::fs::read_to_string(dir.join(file)).expect("expected output"));
        let got = match render_with(order) {
            Ok(objects) => parse_stream(&render::to_yaml(&objects)),
            Err(e) => return (Outcome::Fail(format!("error: {e}")), features),
        };
        if got != want {
            let first = got
                .iter()
                .zip(&want)
                .position(|(g, w)| g != w)
                .unwrap_or(got.len().min(want.len()));
            let show = |v: Option<&Value>| v.map(stagehand::yaml::to_yaml).unwrap_or_default();
            return (
                Outcome::Fail(format!(
                    "{file}: {} documents, want {}; first difference at document {first}:\n--- got\n{}--- want\n{}",
                    got.len(),
                    want.len(),
                    show(got.get(first)),
                    show(want.get(first))
                )),
                features,
            );
        }
    }
    (Outcome::Pass, features)
}

#[test]
fn every_conformance_case_renders_like_kubectl_kustomize() {
    let root = corpus();
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("conformance corpus at {}: {e}", root.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.join("case.json").is_file())
        .collect();
    cases.sort();
    assert!(cases.len() >= 180, "the corpus has {} cases", cases.len());
    let only = std::env::var("CASE").ok();
    let mut per_feature: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    let mut passed = Vec::new();
    let mut failed = Vec::new();
    for dir in &cases {
        let name = dir
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        if only.as_deref().is_some_and(|o| !name.contains(o)) {
            continue;
        }
        let (outcome, features) = run_case(dir);
        let ok = matches!(outcome, Outcome::Pass);
        for f in features {
            let e = per_feature.entry(f).or_default();
            e.1 += 1;
            if ok {
                e.0 += 1;
            }
        }
        match outcome {
            Outcome::Pass => passed.push(name),
            Outcome::Fail(why) => failed.push((name, why)),
        }
    }
    let verbose = std::env::var_os("VERBOSE").is_some();
    for (name, why) in &failed {
        if verbose {
            println!("FAIL {name}: {why}\n");
        } else {
            println!("FAIL {name}: {}", why.lines().next().unwrap_or(""));
        }
    }
    for (f, (p, t)) in &per_feature {
        println!("{f:45} {p:3}/{t:3}");
    }
    println!("TOTAL {}/{}", passed.len(), passed.len() + failed.len());
    if only.is_some() {
        return;
    }
    let regressions: Vec<&str> = KNOWN_PASSING
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .filter(|l| !passed.iter().any(|p| p == l))
        .collect();
    assert!(
        regressions.is_empty(),
        "known-passing cases now fail: {regressions:?}"
    );
    assert!(
        passed.len() >= FLOOR,
        "{} cases pass, the floor is {FLOOR}",
        passed.len()
    );
}
