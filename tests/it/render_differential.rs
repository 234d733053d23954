//! Differential tests: the same trees rendered by Stagehand and by `kubectl kustomize` (the
//! oracle) give the same documents in the same order.

use std::path::Path;
use std::process::Command;

use stagehand::render::{self, Options, fs::DiskFs};

use crate::support::{Tool, tool};

fn documents(text: &str) -> Vec<serde_yaml_ng::Value> {
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|d| serde::Deserialize::deserialize(d).expect("valid YAML"))
        .collect()
}

fn assert_same_as_kubectl(root: &Path, dir: &str) {
    let out = Command::new(tool(Tool::Kubectl))
        .arg("kustomize")
        .arg(root.join(dir))
        .output()
        .expect("kubectl runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let expected = documents(&String::from_utf8_lossy(&out.stdout));
    let fs = DiskFs::new(root).expect("root exists");
    let objects =
        render::render(&fs, dir, &Options::default()).unwrap_or_else(|e| panic!("{dir}: {e}"));
    let ours = documents(&render::to_yaml(&objects));
    assert_eq!(ours.len(), expected.len(), "{dir}: number of documents");
    for (i, (a, b)) in ours.iter().zip(&expected).enumerate() {
        assert_eq!(a, b, "{dir}: document {i} differs");
    }
}

#[test]
fn the_demo_environments_render_as_kubectl_kustomize_renders_them() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("environments");
    for env in ["dev", "staging", "prod"] {
        assert_same_as_kubectl(&root, env);
    }
}

/// A base of every common kind and overlays that use the features environments use most.
fn generated_tree(root: &Path, resources: usize) {
    let write = |path: &str, text: String| {
        let path = root.join(path);
        std::fs::create_dir_all(path.parent().expect("has a parent")).expect("mkdir");
        std::fs::write(path, text).expect("write");
    };
    let mut names = Vec::new();
    for i in 0..resources {
        let name = format!("app{i}");
        write(
            &format!("base/{name}.yaml"),
            format!(
                "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: {name}\nspec:\n  \
                 selector:\n    matchLabels: {{app: {name}}}\n  template:\n    metadata:\n      \
                 labels: {{app: {name}}}\n    spec:\n      serviceAccountName: {name}\n      \
                 containers:\n        - name: main\n          image: registry.example.com/{name}:1.0\n          \
                 envFrom: [{{configMapRef: {{name: settings}}}}]\n---\napiVersion: v1\nkind: Service\n\
                 metadata:\n  name: {name}\nspec:\n  selector: {{app: {name}}}\n  ports: [{{port: 80}}]\n\
                 ---\napiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: {name}\n"
            ),
        );
        names.push(format!("  - {name}.yaml"));
    }
    write(
        "base/kustomization.yaml",
        format!(
            "resources:\n{}\nconfigMapGenerator:\n  - name: settings\n    literals: [A=1, B=two]\n",
            names.join("\n")
        ),
    );
    write(
        "component/kustomization.yaml",
        "apiVersion: kustomize.config.k8s.io/v1alpha1\nkind: Component\ncommonAnnotations:\n  \
         team: shop\n"
            .to_owned(),
    );
    let images: Vec<String> = (0..resources)
        .map(|i| format!("  - name: registry.example.com/app{i}\n    newTag: \"2.{i}\""))
        .collect();
    for (overlay, ns) in [("dev", "shop-dev"), ("prod", "shop-prod")] {
        write(
            &format!("{overlay}/kustomization.yaml"),
            format!(
                "namespace: {ns}\nnamePrefix: {overlay}-\nlabels:\n  - pairs: {{env: {overlay}}}\n    \
                 includeSelectors: true\nresources: [../base]\ncomponents: [../component]\n\
                 images:\n{}\nconfigMapGenerator:\n  - name: settings\n    behavior: merge\n    \
                 literals: [B=three]\npatches:\n  - target: {{kind: Deployment}}\n    patch: |-\n      \
                 - op: add\n        path: /spec/replicas\n        value: 2\nreplicas:\n  - name: app0\n    count: 5\n",
                images.join("\n")
            ),
        );
    }
}

#[test]
fn generated_overlays_render_as_kubectl_kustomize_renders_them() {
    let dir = tempfile::tempdir().expect("temp dir");
    generated_tree(dir.path(), 25);
    for overlay in ["base", "dev", "prod"] {
        assert_same_as_kubectl(dir.path(), overlay);
    }
}
