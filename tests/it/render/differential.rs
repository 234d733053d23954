//! Differential tests: the same trees rendered by Stagehand and by `kubectl kustomize` (the
//! oracle) give the same documents in the same order.

use std::path::Path;
use std::process::Command;

use stagehand::render::{self, Options, fs::DiskFs};

use crate::support::git::git;
use crate::support::{Tool, kubectl_kustomize, tool, yaml_documents};

fn assert_same_as_kubectl(root: &Path, dir: &str) {
    let expected = yaml_documents(&kubectl_kustomize(&root.join(dir)));
    let fs = DiskFs::new(root).expect("root exists");
    let objects =
        render::render(&fs, dir, &Options::default()).unwrap_or_else(|e| panic!("{dir}: {e}"));
    let ours = yaml_documents(&render::to_yaml(&objects));
    assert_eq!(ours.len(), expected.len(), "{dir}: number of documents");
    for (i, (a, b)) in ours.iter().zip(&expected).enumerate() {
        assert_eq!(a, b, "{dir}: document {i} differs");
    }
}

/// Writes `files` into a fresh directory and asserts that our render of it prints, byte for
/// byte, what `kubectl kustomize` prints.
fn assert_prints_as_kubectl(files: &[(&str, &str)]) {
    let dir = tempfile::tempdir().expect("temp dir");
    for (name, text) in files {
        let path = dir.path().join(name);
        std::fs::create_dir_all(path.parent().expect("files live in a directory")).expect("mkdir");
        std::fs::write(path, text).expect("write");
    }
    let theirs = kubectl_kustomize(dir.path());
    let fs = DiskFs::new(dir.path()).expect("root exists");
    let ours = render::to_yaml(&render::render(&fs, "", &Options::default()).expect("renders"));
    for (i, (a, b)) in ours.lines().zip(theirs.lines()).enumerate() {
        assert_eq!(a, b, "line {} differs", i + 1);
    }
    assert_eq!(ours, theirs);
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

/// Strings whose quoting, escaping and folding, and map keys whose order, go-yaml v2 (which
/// prints kustomize's output) decides by rules of its own; compared byte for byte.
#[test]
fn scalars_and_keys_print_byte_for_byte_as_kubectl_prints_them() {
    let values = [
        "2024-01-01",
        "2024-1-1",
        "2024-01-01T10:00:00Z",
        "2024-13-01",
        "2024-02-30",
        "2024-01-01 10:00:00",
        "2024-01-01 1:02:03,5",
        "2024-1-1T1:2:3.5+01:00",
        "2024-01-01T10:00:00",
        "2024-01-01t10:00:00z",
        "20240101",
        "<<",
        "0b101",
        "0B11",
        "-0b11",
        "1_000",
        "0o17",
        "0777",
        "08",
        ".5",
        "._5",
        "-.5",
        "+.5",
        "1e3",
        "1e400",
        "1e-400",
        "1e",
        "+.inf",
        ".NaN",
        "0x_1F",
        "1:20",
        "1:20.5",
        "-1:20",
        "1.2.3",
        "+12",
        "9223372036854775808",
        "-9223372036854775809",
        "18446744073709551616",
        "=",
        "y",
        "Off",
        "~",
        "",
        " x\\ny",
        "\\nfoo\\n\\n",
        "x\\u2028y",
        "\\ufeffab c",
        "tab\\there",
        "caf\\u00e9 \\u2603 \\U0001F600",
        "\\u00a0nbsp",
        "a: b",
        "#x",
        "x #y",
        "- x",
        "-x",
        "? x",
        ":x",
        "x:",
        "---x",
        "...",
        "a very long value that goes on and on past the eighty column mark where a printer may fold it",
        "a  double  spaced  value  that  is  long  enough  to  be  folded  past  eighty  columns  ok",
    ];
    let keys = [
        "a10", "a2", "a_b", "aB", "ab", "A", "a.b", "a-b", "b1.10", "b1.9", "1", "10", "9", "x01",
        "x1", "x001", "\\u00e9", "z", "_z", "Z", "n", "on",
    ];
    let mut doc =
        String::from("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: scalars\ndata:\n");
    for (i, v) in values.iter().enumerate() {
        doc.push_str(&format!("  v{i}: \"{v}\"\n"));
    }
    for k in keys {
        doc.push_str(&format!("  \"{k}\": x\n"));
    }
    assert_prints_as_kubectl(&[
        ("cm.yaml", &doc),
        ("kustomization.yaml", "resources:\n- cm.yaml\n"),
    ]);
}

/// A `configurations:` field spec for one kind narrows the field to that kind, whichever
/// order its specs come in; a spec on another path leaves the defaults alone.
#[test]
fn configurations_narrow_a_field_to_the_kinds_they_name_as_kubectl_does() {
    let configs = [
        "commonLabels:\n- path: metadata/labels\n  kind: Deployment\n  create: true\n",
        "namePrefix:\n- path: metadata/name\n  kind: Deployment\n- path: metadata/name\n",
        "namePrefix:\n- path: metadata/name\n- path: metadata/name\n  kind: Deployment\n",
        "namePrefix:\n- path: spec/foo\n",
        // Webhook kinds sort after the spec for every kind, so that one stays: kubectl prefixes
        // the webhook twice.
        "namePrefix:\n- path: metadata/name\n  kind: ValidatingWebhookConfiguration\n",
        // A spec for every kind on a path the defaults hold for Services adds nothing.
        "commonLabels:\n- path: spec/selector\n  create: true\n",
    ];
    for config in configs {
        let dir = tempfile::tempdir().expect("temp dir");
        let write = |name: &str, text: &str| {
            std::fs::write(dir.path().join(name), text).expect("write");
        };
        write(
            "r.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cm\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: d\n---\napiVersion: v1\nkind: Service\nmetadata:\n  name: s\nspec:\n  selector:\n    app: s\n---\napiVersion: example.com/v1\nkind: Widget\nmetadata:\n  name: w\nspec:\n  selector:\n    a: b\n---\napiVersion: admissionregistration.k8s.io/v1\nkind: ValidatingWebhookConfiguration\nmetadata:\n  name: hook\nwebhooks: []\n",
        );
        write(
            "kustomization.yaml",
            "resources:\n- r.yaml\nnamePrefix: p-\ncommonLabels:\n  x: \"y\"\nconfigurations:\n- c.yaml\n",
        );
        write("c.yaml", config);
        assert_same_as_kubectl(dir.path(), "");
    }
}

/// kustomize spells the namespace list of a configuration `namespace`; a spec there extends
/// where the `namespace:` field writes.
#[test]
fn a_configuration_extending_the_namespace_fields_applies_as_kubectl_applies_it() {
    assert_prints_as_kubectl(&[
        (
            "kustomization.yaml",
            "resources:\n- r.yaml\nnamespace: shop\nconfigurations:\n- c.yaml\n",
        ),
        (
            "c.yaml",
            "namespace:\n- kind: Widget\n  path: spec/targetNamespace\n  create: true\n",
        ),
        (
            "r.yaml",
            "apiVersion: example.com/v1\nkind: Widget\nmetadata:\n  name: w\nspec:\n  size: 1\n",
        ),
    ]);
}

#[test]
fn a_base_narrowing_a_field_narrows_it_for_the_overlays_above_it_as_kubectl_does() {
    let dir = tempfile::tempdir().expect("temp dir");
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::create_dir_all(path.parent().expect("has a parent")).expect("mkdir");
        std::fs::write(path, text).expect("write");
    };
    write(
        "base/r.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cm\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: d\n",
    );
    write(
        "base/kustomization.yaml",
        "resources:\n- r.yaml\nconfigurations:\n- c.yaml\n",
    );
    write(
        "base/c.yaml",
        "namePrefix:\n- path: metadata/name\n  kind: Deployment\n",
    );
    write(
        "overlay/kustomization.yaml",
        "resources:\n- ../base\nnamePrefix: o-\nnameSuffix: -s\nconfigurations:\n- c.yaml\n",
    );
    write(
        "overlay/c.yaml",
        "nameSuffix:\n- path: metadata/name\n  kind: ConfigMap\n",
    );
    assert_same_as_kubectl(dir.path(), "overlay");
}

/// Plain scalars are read as kustomize's YAML library reads them (`1.0` and `1_000` numbers,
/// `0777` octal, dates as RFC 3339 text, `1e400` text) and numbers printed as it prints them;
/// merge keys merge, anchors repeat, tags decide. Compared byte for byte.
#[test]
fn plain_scalars_merge_keys_and_tags_read_as_kubectl_reads_them() {
    let values = [
        "2024-01-01",
        "2024-1-1",
        "2024-01-01T10:00:00Z",
        "2024-13-01",
        "2024-02-30",
        "2024-01-01 10:00:00",
        "2024-1-1T1:2:3.5+01:00",
        "2024-01-01T10:00:00",
        "2024-01-01t10:00:00z",
        "20240101",
        "0b101",
        "0B11",
        "-0b11",
        "1_000",
        "0o17",
        "0777",
        "08",
        "09.5",
        ".5",
        "._5",
        "-.5",
        "+.5",
        "1e3",
        "1e400",
        "1e-400",
        ".5e400",
        "1e",
        "0x_1F",
        "1:20",
        "1:20.5",
        "-1:20",
        "1.2.3",
        "+12",
        "9223372036854775807",
        "9223372036854775808",
        "-9223372036854775808",
        "-9223372036854775809",
        "18446744073709551615",
        "18446744073709551616",
        "=",
        "y",
        "Off",
        "~",
        "null",
        "NULL",
        "True",
        "FALSE",
        "yes",
        "-x",
        ":x",
        "---x",
        "1.0",
        "1000.0",
        "1234567.5",
        "123456.5",
        "0.00001",
        "0.0001",
        "1e20",
        "1e21",
        "-0.0",
        "6.02e23",
        "0x1p-2",
        "0X1F",
        "-0x1F",
        "+0o7",
        "0b",
        "0x",
        "1__0",
        "_1",
        "12345678901234567890.0",
        "9.3e18",
        "2.5e-5",
    ];
    let mut doc = String::from(
        "apiVersion: example.com/v1\nkind: Values\nmetadata:\n  name: v\nbase: &b\n  a: 1\n  b: 2\nother: &o\n  b: 20\n  c: 30\nspec:\n  m1:\n    <<: *b\n    a: 10\n  m2:\n    a: 10\n    <<: [*b, *o]\n  t1: !!str 123\n  t2: !custom 123\n  t3: !!float 3\n  t4: !!int \"7\"\n  t5: !custom [1, 2]\n  t6: !!binary aGVsbG8=\n  t7: !!timestamp 2024-01-01\n  t8: !!str .inf\n  quoted: \"<<\"\n",
    );
    for (i, v) in values.iter().enumerate() {
        doc.push_str(&format!("  v{i}: {v}\n"));
    }
    assert_prints_as_kubectl(&[
        ("r.yaml", &doc),
        ("kustomization.yaml", "resources:\n- r.yaml\n"),
    ]);
}

/// A replacement copies the text of a scalar into a scalar field, which keeps its type, as
/// kubectl does: every source against every kind of field either renders the same or is refused
/// by both; a field the replacement creates reads the text as a plain scalar.
#[test]
fn replacements_keep_the_type_of_the_field_they_fill_as_kubectl_does() {
    let sources = [
        "\"9090\"", "abc", "\"true\"", "\"1.5\"", "\"\"", "\"null\"", "80",
    ];
    let fields = [
        "plain: old",
        "quoted: \"old\"",
        "int: 80",
        "bool: true",
        "nothing: null",
        "empty:",
        "float: 1.5",
    ];
    let oracle = tool(Tool::Kubectl);
    let mut compared = 0;
    for (si, source) in sources.iter().enumerate() {
        for field in fields {
            let name = field.split(':').next().expect("a key");
            let dir = tempfile::tempdir().expect("temp dir");
            let resources = format!(
                "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: src\ndata:\n  value: {source}\n---\napiVersion: example.com/v1\nkind: T\nmetadata:\n  name: t\nspec:\n  {field}\n"
            );
            let kustomization = format!(
                "resources:\n- r.yaml\nreplacements:\n- source:\n    kind: ConfigMap\n    fieldPath: data.value\n  targets:\n  - select:\n      kind: T\n    fieldPaths:\n    - spec.{name}\n    - spec.made.s{si}\n    options:\n      create: true\n"
            );
            std::fs::write(dir.path().join("r.yaml"), resources).expect("write");
            std::fs::write(dir.path().join("kustomization.yaml"), kustomization).expect("write");
            let out = std::process::Command::new(&oracle)
                .arg("kustomize")
                .arg(dir.path())
                .output()
                .expect("kubectl runs");
            let fs = DiskFs::new(dir.path()).expect("root exists");
            let ours = render::render(&fs, "", &Options::default()).map(|o| render::to_yaml(&o));
            match (out.status.success(), ours) {
                (true, Ok(ours)) => {
                    assert_eq!(
                        ours,
                        String::from_utf8_lossy(&out.stdout),
                        "{source} into {field}"
                    );
                    compared += 1;
                }
                (false, Err(_)) => {}
                (theirs, ours) => {
                    panic!("{source} into {field}: kubectl succeeded: {theirs}, we: {ours:?}")
                }
            }
        }
    }
    assert!(
        compared >= 15,
        "too few cases rendered to compare: {compared}"
    );
}

/// Repeated keys mean what kustomize makes of them in each kind of file: the last one counts
/// in a kustomization, the first one in a strategic merge patch.
#[test]
fn repeated_keys_in_a_kustomization_and_a_patch_count_as_kubectl_counts_them() {
    assert_prints_as_kubectl(&[
        (
            "r.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\ndata:\n  a: \"1\"\n",
        ),
        (
            "kustomization.yaml",
            "resources:\n- r.yaml\nnamePrefix: first-\nnamePrefix: last-\npatches:\n- patch: |-\n    apiVersion: v1\n    kind: ConfigMap\n    metadata:\n      name: x\n    data:\n      b: first\n      b: last\n",
        ),
    ]);
}

/// kustomize rewrites annotations on the way out (values as the text written, an empty or
/// non-map field dropped) and leaves label values as YAML read them; with and without
/// transformers touching them.
#[test]
fn annotations_and_labels_of_every_shape_print_as_kubectl_prints_them() {
    let shapes = [
        "annotations: {}",
        "annotations: null",
        "annotations:",
        "annotations: text",
        "annotations: {a: 1, b: true, c: null, d: 0777, e: 1.0, f: ~, g: 2024-01-01}",
        "annotations: {a: {x: 1}, b: [1]}",
        "labels: {}",
        "labels: text",
        "labels: {a: 1, b: true, c: 1.0, d: null}",
    ];
    // A transformer writing into a field that is text fails or not depending on the internal
    // annotations kustomize wrote before it; such input is left to the run without transformers.
    for transformers in ["", "namePrefix: p-\ncommonAnnotations:\n  x: z\n"] {
        let mut resources = String::new();
        for (i, shape) in shapes.iter().enumerate() {
            if transformers.is_empty() || !shape.ends_with("text") {
                resources.push_str(&format!(
                    "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: m{i}\n  {shape}\n---\n"
                ));
            }
        }
        assert_prints_as_kubectl(&[
            ("r.yaml", &resources),
            (
                "kustomization.yaml",
                &format!("resources:\n- r.yaml\n{transformers}"),
            ),
        ]);
    }
}

/// Strategic merge directives inside keyed lists, a merged primitive list, and JSON patch copy
/// and move, as kubectl applies them.
#[test]
fn list_directives_and_json_patch_moves_apply_as_kubectl_applies_them() {
    assert_prints_as_kubectl(&[
        (
            "r.yaml",
            "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n  finalizers: [a, b]\nspec:\n  template:\n    spec:\n      containers:\n      - name: main\n        image: nginx\n        env:\n        - {name: A, value: \"1\"}\n        - {name: B, value: \"2\"}\n        ports:\n        - {containerPort: 80, protocol: TCP}\n      - name: side\n        image: busybox\n      volumes:\n      - name: v1\n        emptyDir: {}\n      - name: v2\n        configMap: {name: cm}\n",
        ),
        (
            "kustomization.yaml",
            "resources:\n- r.yaml\npatches:\n- patch: |-\n    apiVersion: apps/v1\n    kind: Deployment\n    metadata:\n      name: web\n      finalizers: [c]\n    spec:\n      template:\n        spec:\n          containers:\n          - name: main\n            env:\n            - {name: B, $patch: delete}\n            - {name: C, value: \"3\"}\n            ports:\n            - {containerPort: 8080, protocol: TCP}\n          - name: side\n            $patch: delete\n          volumes:\n          - name: v2\n            $patch: replace\n            secret: {secretName: s}\n          - name: v3\n            emptyDir: {}\n- target: {kind: Deployment}\n  patch: |-\n    - op: copy\n      from: /spec/template/spec/containers/0/image\n      path: /metadata/labels\n    - op: move\n      from: /metadata/finalizers/0\n      path: /spec/paused\n",
        ),
    ]);
}

/// Generators from env files kustomize v5 reads loosely (comments, `export` in a key, quotes kept,
/// a bare name), renamed and binary files, literals with options, and a TLS Secret.
#[test]
fn generators_from_every_kind_of_source_render_as_kubectl_renders_them() {
    let dir = tempfile::tempdir().expect("temp dir");
    let write =
        |name: &str, bytes: &[u8]| std::fs::write(dir.path().join(name), bytes).expect("write");
    write(
        "app.env",
        b"\xef\xbb\xbf# comment\nA=1\n  export B=two\nC=\"quoted value\"\nD='single'\nE=\nF= spaced \r\nG=a=b\n\nH\n",
    );
    write("file.txt", b"line1\nline2\n");
    write("blob.bin", b"\x00\x01\x02binary\xff");
    write(
        "tls.crt",
        b"-----BEGIN CERT-----\nabc\n-----END CERT-----\n",
    );
    write("tls.key", b"key\n");
    write(
        "kustomization.yaml",
        b"configMapGenerator:\n- name: env\n  envs: [app.env]\n- name: files\n  files: [file.txt, renamed.txt=file.txt, blob.bin]\n- name: lit\n  literals: [\"a=1\", \"b= two \", \"c=x=y\", \"quoted=\\\"q\\\"\", \"empty=\"]\n  options:\n    labels: {l: v}\n    annotations: {an: v}\n    immutable: true\nsecretGenerator:\n- name: tls\n  type: kubernetes.io/tls\n  files: [tls.crt, tls.key]\n- name: opaque\n  literals: [k=v]\n  options:\n    disableNameSuffixHash: true\ngeneratorOptions:\n  labels: {g: x}\n",
    );
    assert_same_as_kubectl(dir.path(), "");
}

/// Images by tag and digest, replicas, vars with Kubernetes' `$(VAR)` expansion (escapes,
/// unknown and unclosed references, typed whole-field values) and a custom legacy order.
#[test]
fn images_replicas_vars_and_a_custom_order_render_as_kubectl_renders_them() {
    const RESOURCES: &str = r#"apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: db
spec:
  replicas: 1
  serviceName: db
  template:
    spec:
      containers:
      - name: db
        image: postgres:13@sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa
        command: ["run", "--svc=$(SVC)", "--escaped=$$(SVC)", "--port=$(PORT)", "$(SVC", "$(UNKNOWN)", "$x", "$", "a$$$(SVC)", "$(SVC)$(SVC)", "$()", "$(PORT)", "$$", "x$", "$(SVC)$"]
        env:
        - name: X
          value: "$(SVC).$(NS)"
      - name: side
        image: registry:5000/side
---
apiVersion: v1
kind: Service
metadata:
  name: db-svc
  namespace: data
spec:
  ports: [{port: 5432}]
---
apiVersion: batch/v1
kind: CronJob
metadata:
  name: job
spec:
  jobTemplate:
    spec:
      template:
        spec:
          containers:
          - name: j
            image: postgres
---
apiVersion: v1
kind: Namespace
metadata:
  name: data
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: zcm
---
apiVersion: v1
kind: Secret
metadata:
  name: asecret
"#;
    const KUSTOMIZATION: &str = r#"resources: [r.yaml]
images:
- name: postgres
  newTag: "14"
- name: registry:5000/side
  newName: other/side
  digest: sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb
replicas:
- name: db
  count: 3
vars:
- name: SVC
  objref: {kind: Service, name: db-svc, apiVersion: v1}
- name: NS
  objref: {kind: Service, name: db-svc, apiVersion: v1}
  fieldref: {fieldpath: metadata.namespace}
- name: PORT
  objref: {kind: Service, name: db-svc, apiVersion: v1}
  fieldref:
    fieldpath: spec.ports[0].port
sortOptions:
  order: legacy
  legacySortOptions:
    orderFirst: [Secret, Namespace]
    orderLast: [StatefulSet]
"#;
    assert_prints_as_kubectl(&[("r.yaml", RESOURCES), ("kustomization.yaml", KUSTOMIZATION)]);
}

/// Kustomization files and JSON patches go through go-yaml v2 in kustomize: a date stays text,
/// `yes` and `on` are booleans in a JSON patch value, `1.0` a number.
#[test]
fn kustomization_files_and_json_patches_read_values_as_kubectl_reads_them() {
    assert_prints_as_kubectl(&[
        (
            "r.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\n",
        ),
        (
            "kustomization.yaml",
            "resources: [r.yaml]\ncommonLabels: {since: 2024-01-01}\ncommonAnnotations: {version: \"yes\"}\npatches:\n- target: {kind: ConfigMap}\n  patch: |-\n    - op: add\n      path: /data\n      value: {a: yes, b: 2024-01-01, c: on, d: 1.0, e: \"no\"}\n",
        ),
    ]);
}

/// kustomize's strategic merge knows only the `$patch` directive: `$retainKeys`,
/// `$setElementOrder/...`, `$deleteFromPrimitiveList/...` and other `$` keys stay in the object
/// as data, and lists of kinds it has no schema for are replaced.
#[test]
fn directives_other_than_patch_stay_as_data_as_kubectl_leaves_them() {
    let cases = [
        (
            r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  strategy:
    type: RollingUpdate
    rollingUpdate: {maxSurge: 1}
  template:
    spec:
      containers:
      - {name: a, image: a}
      - {name: b, image: b}
      - {name: c, image: c}
      tolerations:
      - {key: k1, operator: Exists}
---
apiVersion: x.io/v1
kind: Widget
metadata:
  name: w
spec:
  items: [{name: a, v: 1}, {name: b, v: 2}]
  map: {a: 1, b: 2}
"#,
            r#"resources: [r.yaml]
patches:
- patch: |-
    apiVersion: apps/v1
    kind: Deployment
    metadata:
      name: web
    spec:
      strategy:
        $retainKeys: [type]
        type: Recreate
      template:
        spec:
          $setElementOrder/containers: [{name: c}, {name: a}, {name: b}]
          containers:
          - {name: a, image: a2}
          tolerations:
          - {key: k2, operator: Exists}
- patch: |-
    apiVersion: x.io/v1
    kind: Widget
    metadata:
      name: w
    spec:
      items: [{name: b, v: 3}]
      map: {b: null, c: 3}
"#,
        ),
        (
            r#"apiVersion: v1
kind: ConfigMap
metadata:
  name: c
  finalizers: [a, b, c]
data: {x: "1"}
"#,
            r#"resources: [r.yaml]
patches:
- patch: |-
    apiVersion: v1
    kind: ConfigMap
    metadata:
      name: c
      $deleteFromPrimitiveList/finalizers: [b]
      $other: x
    data:
      $patch: merge
      y: "2"
"#,
        ),
    ];
    for (resources, kustomization) in cases {
        assert_prints_as_kubectl(&[("r.yaml", resources), ("kustomization.yaml", kustomization)]);
    }
}

/// Lists keyed by several fields (ports by number and protocol, spread constraints by key and
/// policy) merge as kustomize's kyaml merges them, including its losses: a patch element that
/// lacks a protocol the original has, or adds one it lacks, is dropped.
#[test]
fn ports_and_spread_constraints_merge_by_all_their_keys_as_kubectl_merges_them() {
    let mut cases: Vec<(String, String)> = [
        (
            r#"apiVersion: v1
kind: Service
metadata:
  name: dns
spec:
  ports:
  - {name: dns, port: 53, protocol: UDP}
  - {name: dns-tcp, port: 53, protocol: TCP}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: d
spec:
  template:
    spec:
      containers:
      - name: c
        image: x
        ports:
        - {containerPort: 53, protocol: UDP, name: u}
        - {containerPort: 53, protocol: TCP, name: t}
        volumeMounts:
        - {name: v, mountPath: /a}
        resources:
          limits: {cpu: 1.0, memory: 1Gi}
      initContainers:
      - {name: i, image: y}
      imagePullSecrets: [{name: s1}]
"#,
            r#"resources: [r.yaml]
patches:
- patch: |-
    apiVersion: v1
    kind: Service
    metadata:
      name: dns
    spec:
      ports:
      - {port: 53, protocol: TCP, targetPort: 5353}
- patch: |-
    apiVersion: apps/v1
    kind: Deployment
    metadata:
      name: d
    spec:
      template:
        spec:
          containers:
          - name: c
            ports:
            - {containerPort: 53, protocol: TCP, hostPort: 53}
            volumeMounts:
            - {name: v2, mountPath: /a}
            resources:
              limits: {cpu: 2}
          initContainers:
          - {name: i2, image: z}
          imagePullSecrets: [{name: s2}]
"#,
        ),
        (
            r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: d
spec:
  template:
    spec:
      containers:
      - name: c
        image: x
        ports:
        - containerPort: 8080
        - containerPort: 9090
          protocol: TCP
"#,
            r#"resources: [r.yaml]
patches:
- patch: |-
    apiVersion: apps/v1
    kind: Deployment
    metadata:
      name: d
    spec:
      template:
        spec:
          containers:
          - name: c
            ports:
            - {containerPort: 8080, protocol: TCP, name: http}
            - {containerPort: 9090, name: metrics}
            - {containerPort: 7070}
"#,
        ),
        (
            r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: d
spec:
  template:
    spec:
      containers: [{name: c, image: x}]
      topologySpreadConstraints:
      - {topologyKey: zone, whenUnsatisfiable: DoNotSchedule, maxSkew: 1}
      - {topologyKey: zone, whenUnsatisfiable: ScheduleAnyway, maxSkew: 2}
"#,
            r#"resources: [r.yaml]
patches:
- patch: |-
    apiVersion: apps/v1
    kind: Deployment
    metadata:
      name: d
    spec:
      template:
        spec:
          topologySpreadConstraints:
          - {topologyKey: zone, whenUnsatisfiable: ScheduleAnyway, maxSkew: 5}
"#,
        ),
    ]
    .iter()
    .map(|(r, k)| (r.to_string(), k.to_string()))
    .collect();
    let service = "apiVersion: v1\nkind: Service\nmetadata:\n  name: s\nspec:\n  ports:\n  - {name: u, port: 53, protocol: UDP}\n  - {name: t, port: 53, protocol: TCP}\n  - {name: h, port: 80}\n";
    for element in [
        "{port: 53, targetPort: 1}",
        "{port: 80, targetPort: 3}",
        "{port: 80, protocol: TCP, targetPort: 2}",
        "{port: 99, targetPort: 4}",
        "{port: 53, protocol: UDP, $patch: delete}",
        "{port: 80, $patch: delete}",
    ] {
        cases.push((
            service.to_owned(),
            format!("resources: [r.yaml]\npatches:\n- patch: |-\n    apiVersion: v1\n    kind: Service\n    metadata:\n      name: s\n    spec:\n      ports:\n      - {element}\n"),
        ));
    }
    for (resources, kustomization) in &cases {
        assert_prints_as_kubectl(&[("r.yaml", resources), ("kustomization.yaml", kustomization)]);
    }
}

/// An `images` entry's name is a regular expression in kustomize (`ngin.*`, a name with its tag);
/// tag suffixes, registries with ports and digests as kubectl applies them.
#[test]
fn image_entries_match_as_kubectl_matches_them() {
    for (resources, kustomization) in [
        (
            r#"apiVersion: v1
kind: Pod
metadata:
  name: p
spec:
  containers:
  - {name: a, image: "nginx"}
  - {name: b, image: "nginxx:1"}
  - {name: c, image: "registry:5000/app:1.0@sha256:abc"}
  - {name: d, image: "dockerXio/nginx"}
  - {name: e, image: "app:v1"}
  - {name: f, image: "app@sha512:zz"}
  - {name: g, image: "ngin:1"}
"#,
            r#"resources: [r.yaml]
images:
- name: ngin.*
  newTag: wild
- name: registry:5000/app
  tagSuffix: -x
- name: docker.io/nginx
  newName: m/n
- name: app
  tagSuffix: -rc
"#,
        ),
        (
            r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: d
spec:
  replicas: 1
  template:
    spec:
      containers:
      - {name: a, image: "nginx:1.0"}
      - {name: b, image: "docker.io/nginx"}
      - {name: c, image: "nginx@sha256:abc"}
---
apiVersion: batch/v1
kind: Job
metadata:
  name: job
spec:
  template:
    spec:
      containers: [{name: j, image: nginx}]
"#,
            r#"resources: [r.yaml]
namePrefix: p-
replicas:
- name: d
  count: 2
images:
- name: nginx:1.0
  newTag: "2.0"
- name: docker.io/nginx
  newName: mirror/nginx
"#,
        ),
    ] {
        assert_prints_as_kubectl(&[("r.yaml", resources), ("kustomization.yaml", kustomization)]);
    }
}

const CONFIG_MAP: &str = "apiVersion: v1
kind: ConfigMap
metadata:
  name: settings
  annotations:
    drop: me
    keep: kept
  labels:
    app: shop
data:
  LEVEL: info
";

/// In a `patches:` entry `null` (or `~`, or nothing) deletes an annotation as it deletes any
/// other field, and a quoted "null" is text; `patchesStrategicMerge` loads its patches as
/// resources, whose annotation values are text as written.
#[test]
fn a_strategic_merge_patch_setting_an_annotation_to_null_deletes_it_as_kubectl_does() {
    for patch in [
        "drop: null\n        keep: \"null\"",
        "drop: ~",
        "drop:",
        "drop: null\n        added: null",
    ] {
        assert_prints_as_kubectl(&[
            ("cm.yaml", CONFIG_MAP),
            (
                "kustomization.yaml",
                &format!(
                    "resources: [cm.yaml]\npatches:\n- patch: |-\n    apiVersion: v1\n    kind: ConfigMap\n    metadata:\n      name: settings\n      annotations:\n        {patch}\n"
                ),
            ),
        ]);
    }
    assert_prints_as_kubectl(&[
        ("cm.yaml", CONFIG_MAP),
        (
            "patch.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\n  annotations:\n    drop: null\n",
        ),
        (
            "kustomization.yaml",
            "resources: [cm.yaml]\npatchesStrategicMerge: [patch.yaml]\n",
        ),
    ]);
}

/// kustomize's JSON patch library replaces a missing key of an existing map by adding it; a
/// missing list index or parent is still an error (render::errors).
#[test]
fn a_json_patch_replacing_a_missing_key_whose_parent_exists_adds_it_as_kubectl_does() {
    assert_prints_as_kubectl(&[
        ("cm.yaml", CONFIG_MAP),
        (
            "kustomization.yaml",
            "resources: [cm.yaml]
patches:
- target: {kind: ConfigMap}
  patch: |-
    - op: replace
      path: /data/ADDED
      value: by-replace
    - op: replace
      path: /metadata/labels/tier
      value: web
",
        ),
    ]);
}

/// kustomize decodes a kustomization through Go's JSON decoder, which matches field names
/// without regard to case at every level; of two spellings of one field the last in byte order
/// wins, and maps given twice are merged.
#[test]
fn kustomization_field_names_match_case_insensitively_as_kubectl_matches_them() {
    assert_prints_as_kubectl(&[
        ("cm.yaml", CONFIG_MAP),
        (
            "kustomization.yaml",
            "RESOURCES: [cm.yaml]
nameprefix: a-
NAMEPREFIX: b-
namesuffix: -t
nameSuffix: -s
Namespace: shop
commonAnnotations: {one: \"1\"}
commonannotations: {two: \"2\"}
Labels:
- PAIRS: {team: t}
  includeselectors: false
patches:
- Patch: |-
    - op: add
      path: /data/EXTRA
      value: x
  TARGET: {KIND: ConfigMap, Name: settings}
configmapgenerator:
- NAME: gen
  LITERALS: [k=v]
  Options: {DisableNameSuffixHash: true}
",
        ),
    ]);
}

/// Only the core group's Namespace is the cluster-scoped Namespace: a custom resource of kind
/// Namespace gets the kustomization's namespace like any namespaced object.
#[test]
fn a_namespace_kind_outside_the_core_group_is_namespaced_as_kubectl_treats_it() {
    assert_prints_as_kubectl(&[
        (
            "r.yaml",
            "apiVersion: servicebus.azure.com/v1api20210101preview
kind: Namespace
metadata:
  name: bus
spec:
  location: westeurope
---
apiVersion: v1
kind: Namespace
metadata:
  name: core
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: bus
",
        ),
        (
            "kustomization.yaml",
            "namespace: shop\nnamePrefix: p-\nresources: [r.yaml]\n",
        ),
    ]);
}

/// kustomize fills in a missing apiVersion for either kind; it refuses only a wrong one.
#[test]
fn a_component_without_api_version_is_accepted_as_kubectl_accepts_it() {
    assert_prints_as_kubectl(&[
        ("cm.yaml", CONFIG_MAP),
        (
            "component/kustomization.yaml",
            "kind: Component\nnamePrefix: c-\n",
        ),
        (
            "kustomization.yaml",
            "resources: [cm.yaml]\ncomponents: [component]\n",
        ),
    ]);
}

fn write_tree(root: &Path, files: &[(&str, &str)]) {
    for (name, text) in files {
        let path = root.join(name);
        std::fs::create_dir_all(path.parent().expect("files live in a directory")).expect("mkdir");
        std::fs::write(path, text).expect("write");
    }
}

fn stagehand_render(cwd: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_stagehand"))
        .arg("render")
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("stagehand runs")
}

/// `kubectl kustomize DIR` works from any directory; so does `stagehand render DIR`. Outside a
/// Git work tree nothing but kustomize's own restriction applies; `--root` narrows it.
#[test]
fn the_cli_renders_a_directory_named_from_elsewhere_as_kubectl_does() {
    let tree = tempfile::tempdir().expect("temp dir");
    write_tree(
        tree.path(),
        &[
            ("base/cm.yaml", CONFIG_MAP),
            ("base/kustomization.yaml", "resources: [cm.yaml]\n"),
            (
                "overlay/kustomization.yaml",
                "resources: [../base]\nnamePrefix: o-\n",
            ),
        ],
    );
    let overlay = tree.path().join("overlay");
    let overlay = overlay.to_str().expect("temp paths are UTF-8");
    let elsewhere = tempfile::tempdir().expect("temp dir");
    let out = stagehand_render(elsewhere.path(), &[overlay]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        kubectl_kustomize(Path::new(overlay))
    );
    let out = stagehand_render(elsewhere.path(), &[overlay, "--root", overlay]);
    assert_eq!(out.status.code(), Some(1), "--root must narrow the render");
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("../base"), "{stderr}");
}

/// Inside a Git work tree the default root is that work tree: a base outside the repository is
/// refused unless `--root` widens the root to hold it.
#[test]
fn the_cli_confines_a_render_to_the_git_work_tree_holding_the_directory() {
    let tree = tempfile::tempdir().expect("temp dir");
    write_tree(
        tree.path(),
        &[
            ("shared/cm.yaml", CONFIG_MAP),
            ("shared/kustomization.yaml", "resources: [cm.yaml]\n"),
            (
                "repo/overlay/kustomization.yaml",
                "resources: [../../shared]\n",
            ),
        ],
    );
    git(&tree.path().join("repo"), &["init", "-q"]);
    let overlay = tree.path().join("repo/overlay");
    let overlay = overlay.to_str().expect("temp paths are UTF-8");
    let out = stagehand_render(tree.path(), &[overlay]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("../../shared"), "{stderr}");
    let root = tree.path().to_str().expect("temp paths are UTF-8");
    let out = stagehand_render(tree.path(), &[overlay, "--root", root]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        kubectl_kustomize(Path::new(overlay))
    );
}
