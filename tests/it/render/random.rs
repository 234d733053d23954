//! Randomised differential test: trees of kustomizations drawn from a seeded generator, each
//! rendered by Stagehand and by `kubectl kustomize`. The printed output must be byte for byte the
//! same, and where kubectl refuses a tree, Stagehand must refuse it too.
//!
//! The seeds are fixed so a failure reproduces; `STAGEHAND_RENDER_SEED=N` runs one more seed and
//! `STAGEHAND_RENDER_TREES=N` changes how many trees are drawn. A failing tree is kept on disk
//! and its path printed.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

use stagehand::render::{self, Options, fs::DiskFs};

use crate::support::{Tool, tool};

/// splitmix64: small, seedable, and the same on every machine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

const IMAGES: &[&str] = &[
    "nginx",
    "nginx:1.25",
    "registry.example.com/team/api:1.0.0",
    "registry.example.com/team/api",
    "ghcr.io/org/worker@sha256:4b0a6a4e0f8d8a0bd23f0e5f7c1e6d9f0a1b2c3d4e5f60718293a4b5c6d7e8f9",
    "localhost:5000/tools/job:2",
];

/// Values that test how strings are quoted, folded and escaped when printed (as YAML source).
const TRICKY: &[&str] = &[
    // Plain scalars kustomize's YAML reader types: numbers, octal, dates, overflow, booleans.
    "1.0",
    "0777",
    "1_000",
    "2024-01-01",
    "2024-1-1T1:2:3.5+01:00",
    "1234567.5",
    "0.00001",
    "1e400",
    "-0.0",
    "yes",
    "~",
    "12345678901234567890",
    "\"yes\"",
    "\"on\"",
    "\"1.0\"",
    "\"null\"",
    "\"~\"",
    "\"0x1F\"",
    "\"012\"",
    "\"1e3\"",
    "\"true\"",
    "\"a: b\"",
    "\"# not a comment\"",
    "\" leading space\"",
    "\"trailing space \"",
    "\"\"",
    "\"*star\"",
    "\"&anchor\"",
    "\"!tag\"",
    "\"- dash\"",
    "\"[bracket]\"",
    "\"{brace}\"",
    "\"quote ' single\"",
    "'quote \" double'",
    "\"tab\\there\"",
    "\"caf\u{e9} \u{2603} \u{1F600}\"",
    "\"line one\\nline two\"",
    "\"trailing newline\\n\"",
    "\"  indented\\n  lines\\n\"",
    "\"ends with spaces   \\nnext\"",
    "\"a very long value that goes on and on past the eighty column mark where a printer may decide to fold it into several lines\"",
    "\"averyveryverylongwordwithoutanyspacesthatcannotbefoldedanywhereatallbecauseithasnobreaks plus words after it to fold\"",
    "\"2024-01-01\"",
    "\"12:30:00\"",
    "\"=\"",
    "\"<<\"",
    "\"%percent\"",
    "\"@at\"",
    "\"`backtick\"",
    "\"|pipe\"",
    "\">gt\"",
    "\"?q\"",
    "\"key:value\"",
    "\"http://example.com/a?b=c#d\"",
    "\"-\"",
    "\"---\"",
    "\"...\"",
    "\"\\u0007bell\"",
    "\"back\\\\slash\"",
    "\"NaN\"",
    "\".inf\"",
    "\"+1\"",
    "\"-0\"",
    "\"1_000\"",
    "\"0o17\"",
    "\"Y\"",
    "\"n\"",
    "\"Off\"",
    "\"2024-1-1T1:2:3Z\"",
    "\"2024-01-01 10:00:00.5\"",
    "\"2024-02-30\"",
    "\"2024-01-01T10:00:00\"",
    "\"1e400\"",
    "\"._5\"",
    "\"0B11\"",
    "\"08\"",
    "\"0777\"",
    "\"1:20\"",
    "\"1.2.3\"",
    "\"9223372036854775808\"",
    "\"-9223372036854775809\"",
    "\"18446744073709551616\"",
    "\"<<\"",
    "\"x\\u2028y\"",
    "\"\\ufeffbom\"",
    "\"\\u00a0nbsp\"",
    "\"del\\u007f\"",
    "\" \\nleading space line\"",
    "\"\\n\\nblank lines\\n\\n\"",
    "\"trailing space \\nline\"",
    "\"a  double  spaced  value  that  is  long  enough  to  be  folded  past  eighty  columns  ok\"",
];

/// Map keys that test go-yaml's key order (digit runs by value, letters after the rest) and
/// key quoting.
const KEYS: &[&str] = &[
    "k1", "k2", "k10", "k01", "K3", "_k", "k_1", "k-1", "k.1", "node7", "node70", "node007", "1",
    "10", "9", "y", "on", "a b", "z", "\"é\"",
];

/// The base: a few objects of each common kind that refer to each other by name.
fn base(rng: &mut Rng, out: &mut String, kustomization: &mut String) {
    let apps = 1 + rng.below(3);
    let mut files = Vec::new();
    for i in 0..apps {
        let image = rng.pick(IMAGES);
        let sidecar = rng.pick(IMAGES);
        let mut doc = format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: app{i}\n  labels:\n    app: app{i}\nspec:\n  replicas: {}\n  selector:\n    matchLabels:\n      app: app{i}\n  template:\n    metadata:\n      labels:\n        app: app{i}\n    spec:\n      serviceAccountName: sa{i}\n      containers:\n      - name: main\n        image: {image}\n        envFrom:\n        - configMapRef:\n            name: settings\n        env:\n        - name: PASSWORD\n          valueFrom:\n            secretKeyRef:\n              name: creds{i}\n              key: password\n",
            1 + rng.below(3)
        );
        if rng.chance(50) {
            let _ = write!(
                doc,
                "      - name: sidecar\n        image: {sidecar}\n        volumeMounts:\n        - name: data\n          mountPath: /data\n      volumes:\n      - name: data\n        persistentVolumeClaim:\n          claimName: data{i}\n      - name: conf\n        configMap:\n          name: conf{i}\n"
            );
            files.push((
                format!("pvc{i}.yaml"),
                format!("apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata:\n  name: data{i}\nspec:\n  accessModes: [ReadWriteOnce]\n  resources:\n    requests:\n      storage: 1Gi\n"),
            ));
        }
        files.push((format!("app{i}.yaml"), doc));
        files.push((
            format!("svc{i}.yaml"),
            format!("apiVersion: v1\nkind: Service\nmetadata:\n  name: app{i}\nspec:\n  selector:\n    app: app{i}\n  ports:\n  - port: 80\n    targetPort: 8080\n"),
        ));
        files.push((
            format!("sa{i}.yaml"),
            format!("apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: sa{i}\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata:\n  name: reader{i}\nrules:\n- apiGroups: [\"\"]\n  resources: [configmaps]\n  verbs: [get]\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata:\n  name: reader{i}\nroleRef:\n  apiGroup: rbac.authorization.k8s.io\n  kind: Role\n  name: reader{i}\nsubjects:\n- kind: ServiceAccount\n  name: sa{i}\n"),
        ));
        files.push((
            format!("conf{i}.yaml"),
            format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: conf{i}\ndata:\n  level: \"{}\"\n  multi: |\n    line one\n    line two\n", rng.below(10)),
        ));
        if rng.chance(40) {
            files.push((
                format!("hpa{i}.yaml"),
                format!("apiVersion: autoscaling/v2\nkind: HorizontalPodAutoscaler\nmetadata:\n  name: app{i}\nspec:\n  scaleTargetRef:\n    apiVersion: apps/v1\n    kind: Deployment\n    name: app{i}\n  minReplicas: 1\n  maxReplicas: 5\n"),
            ));
        }
        if rng.chance(40) {
            files.push((
                format!("ing{i}.yaml"),
                format!("apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata:\n  name: app{i}\nspec:\n  tls:\n  - secretName: tls{i}\n  rules:\n  - host: app{i}.example.com\n    http:\n      paths:\n      - path: /\n        pathType: Prefix\n        backend:\n          service:\n            name: app{i}\n            port:\n              number: 80\n"),
            ));
        }
    }
    if rng.chance(50) {
        files.push((
            "cron.yaml".into(),
            format!("apiVersion: batch/v1\nkind: CronJob\nmetadata:\n  name: nightly\nspec:\n  schedule: \"0 3 * * *\"\n  jobTemplate:\n    spec:\n      template:\n        spec:\n          restartPolicy: Never\n          containers:\n          - name: job\n            image: {}\n            envFrom:\n            - configMapRef:\n                name: settings\n", rng.pick(IMAGES)),
        ));
    }
    let mut tricky =
        String::from("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: tricky\ndata:\n");
    let mut keys: Vec<&str> = Vec::new();
    for _ in 0..3 + rng.below(8) {
        let key = rng.pick(KEYS);
        if !keys.contains(key) {
            keys.push(key);
            let _ = writeln!(
                tricky,
                "  \"{}\": {}",
                key.trim_matches('"'),
                rng.pick(TRICKY)
            );
        }
    }
    files.push(("tricky.yaml".into(), tricky));
    if rng.chance(30) {
        files.push((
            "widget.yaml".into(),
            "apiVersion: example.com/v1\nkind: Widget\nmetadata:\n  name: gadget\nspec:\n  size: 3\n".into(),
        ));
    }
    // Resources listed in a shuffled order: the legacy sort must not depend on it.
    for i in (1..files.len()).rev() {
        let j = rng.below(i + 1);
        files.swap(i, j);
    }
    kustomization.push_str("resources:\n");
    for (name, text) in &files {
        let _ = writeln!(kustomization, "- {name}");
        let _ = write!(out, "--- {name}\n{text}");
    }
    kustomization.push_str(
        "configMapGenerator:\n- name: settings\n  literals:\n  - MODE=base\n  - SHARED=yes\n",
    );
    kustomization.push_str("secretGenerator:\n");
    for i in 0..apps {
        let _ = write!(
            kustomization,
            "- name: creds{i}\n  literals:\n  - password=s3cr3t{i}\n"
        );
    }
}

/// One overlay over `../base` with a random selection of transformers.
fn overlay(rng: &mut Rng, env: &str, with_component: bool) -> String {
    let mut k = String::from("resources:\n- ../base\n");
    if with_component {
        k.push_str("components:\n- ../component\n");
    }
    if rng.chance(70) {
        let _ = writeln!(k, "namespace: shop-{env}");
    }
    if rng.chance(60) {
        let _ = writeln!(k, "namePrefix: {env}-");
    }
    if rng.chance(40) {
        let _ = writeln!(k, "nameSuffix: -v{}", rng.below(3));
    }
    match rng.below(3) {
        0 => {
            let _ = writeln!(k, "commonLabels:\n  env: {env}");
        }
        1 => {
            let _ = writeln!(
                k,
                "labels:\n- pairs:\n    env: {env}\n  includeSelectors: {}\n  includeTemplates: {}",
                rng.chance(50),
                rng.chance(50)
            );
        }
        _ => {}
    }
    if rng.chance(50) {
        let _ = writeln!(
            k,
            "commonAnnotations:\n  owner: team-{env}\n  note: \"a: b\""
        );
    }
    if rng.chance(60) {
        k.push_str("images:\n");
        for _ in 0..1 + rng.below(3) {
            let full = rng.pick(IMAGES);
            let name = full.split(['@']).next().unwrap_or(full);
            let name = match name.rfind(':') {
                Some(c) if !name[c..].contains('/') => &name[..c],
                _ => name,
            };
            let _ = writeln!(k, "- name: {name}");
            match rng.below(4) {
                0 => {
                    let _ = writeln!(k, "  newTag: \"{}.{}\"", rng.below(5), rng.below(5));
                }
                1 => {
                    let _ = writeln!(k, "  newName: mirror.example.com/{env}/copy");
                }
                2 => {
                    let _ = writeln!(k, "  newName: mirror.example.com/x\n  newTag: stable");
                }
                _ => {
                    let _ = writeln!(
                        k,
                        "  digest: sha256:0000000000000000000000000000000000000000000000000000000000000001"
                    );
                }
            }
        }
    }
    if rng.chance(40) {
        let _ = writeln!(k, "replicas:\n- name: app0\n  count: {}", rng.below(6));
    }
    if rng.chance(60) {
        let behavior = rng.pick(&["merge", "replace"]);
        let _ = writeln!(
            k,
            "configMapGenerator:\n- name: settings\n  behavior: {behavior}\n  literals:\n  - MODE={env}"
        );
        if rng.chance(50) {
            let _ = writeln!(
                k,
                "- name: extra\n  literals:\n  - A=1\n  options:\n    disableNameSuffixHash: {}",
                rng.chance(50)
            );
        }
    }
    if rng.chance(30) {
        let _ = writeln!(
            k,
            "generatorOptions:\n  labels:\n    generated: \"true\"\n  disableNameSuffixHash: {}",
            rng.chance(30)
        );
    }
    let mut patches = Vec::new();
    if rng.chance(50) {
        patches.push(
            "- patch: |-\n    apiVersion: apps/v1\n    kind: Deployment\n    metadata:\n      name: app0\n    spec:\n      template:\n        spec:\n          containers:\n          - name: main\n            resources:\n              limits:\n                memory: 256Mi\n            env:\n            - name: EXTRA\n              value: \"1\""
                .to_owned(),
        );
    }
    if rng.chance(50) {
        patches.push(format!(
            "- target:\n    kind: Deployment\n  patch: |-\n    - op: add\n      path: /metadata/annotations\n      value:\n        rollout: \"{env}\"\n    - op: replace\n      path: /spec/replicas\n      value: {}",
            rng.below(4)
        ));
    }
    if rng.chance(30) {
        patches.push(
            "- target:\n    kind: Service\n    labelSelector: \"env\"\n  patch: |-\n    - op: add\n      path: /spec/type\n      value: NodePort".to_owned(),
        );
    }
    if rng.chance(30) {
        patches.push(
            "- target:\n    group: apps\n    name: app.*\n  patch: |-\n    apiVersion: apps/v1\n    kind: Deployment\n    metadata:\n      name: ignored\n    spec:\n      template:\n        spec:\n          containers:\n          - name: main\n            imagePullPolicy: Always"
                .to_owned(),
        );
    }
    if !patches.is_empty() {
        let _ = writeln!(k, "patches:\n{}", patches.join("\n"));
    }
    if rng.chance(20) {
        k.push_str("sortOptions:\n  order: fifo\n");
    }
    k
}

/// Writes a tree for `seed`: `base/`, maybe `component/`, and `dev/`, `prod/` over the base.
fn draw_tree(seed: u64, root: &Path) -> Vec<&'static str> {
    let mut rng = Rng(seed);
    let write = |path: &str, text: &str| {
        let path = root.join(path);
        std::fs::create_dir_all(path.parent().expect("has a parent")).expect("mkdir");
        std::fs::write(path, text).expect("write");
    };
    let mut docs = String::new();
    let mut kustomization = String::new();
    base(&mut rng, &mut docs, &mut kustomization);
    for chunk in docs.split("--- ").filter(|c| !c.is_empty()) {
        let (name, text) = chunk.split_once('\n').expect("a name line");
        write(&format!("base/{name}"), text);
    }
    write("base/kustomization.yaml", &kustomization);
    let with_component = rng.chance(50);
    if with_component {
        write(
            "component/kustomization.yaml",
            "apiVersion: kustomize.config.k8s.io/v1alpha1\nkind: Component\ncommonLabels:\n  component: metrics\nconfigMapGenerator:\n- name: settings\n  behavior: merge\n  literals:\n  - METRICS=on\n",
        );
    }
    for env in ["dev", "prod"] {
        write(
            &format!("{env}/kustomization.yaml"),
            &overlay(&mut rng, env, with_component),
        );
    }
    write("canary/kustomization.yaml", &canary(&mut rng));
    write(
        "canary/app.env",
        "# comment\nLEVEL=debug\nEMPTY=\nQUOTED=\"a b\"\n",
    );
    write("canary/banner.txt", "Welcome\n  to the canary\n");
    write(
        "canary/drop-sidecar.yaml",
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: app0\nspec:\n  template:\n    spec:\n      containers:\n      - name: sidecar\n        $patch: delete\n",
    );
    vec!["base", "dev", "prod", "canary"]
}

/// An overlay over `prod`: stacked prefixes and namespaces, generators from files, strategic
/// merge deletes, replacements and RoleBinding subjects in other namespaces.
fn canary(rng: &mut Rng) -> String {
    let mut k = String::from("resources:\n- ../prod\n");
    if rng.chance(60) {
        k.push_str("namePrefix: canary-\n");
    }
    if rng.chance(50) {
        k.push_str("namespace: canary\n");
    }
    if rng.chance(50) {
        k.push_str("nameSuffix: -c\n");
    }
    k.push_str(
        "configMapGenerator:\n- name: canary-files\n  files:\n  - banner.txt\n  - motd=banner.txt\n  envs:\n  - app.env\n",
    );
    if rng.chance(50) {
        k.push_str("secretGenerator:\n- name: canary-tls\n  type: kubernetes.io/tls\n  literals:\n  - tls.crt=cert\n  - tls.key=key\n");
    }
    if rng.chance(50) {
        k.push_str("patchesStrategicMerge:\n- drop-sidecar.yaml\n");
    }
    if rng.chance(60) {
        k.push_str(
            "replacements:\n- source:\n    kind: ConfigMap\n    name: canary-files\n    fieldPath: data.LEVEL\n  targets:\n  - select:\n      kind: Deployment\n    fieldPaths:\n    - spec.template.metadata.annotations.level\n    options:\n      create: true\n",
        );
    }
    if rng.chance(50) {
        k.push_str(
            "patches:\n- target:\n    kind: RoleBinding\n  patch: |-\n    - op: add\n      path: /subjects/-\n      value:\n        kind: ServiceAccount\n        name: sa0\n        namespace: elsewhere\n",
        );
    }
    if rng.chance(30) {
        k.push_str("commonAnnotations:\n  track: canary\n");
    }
    k
}

/// How a directory came out: both rendered the same, both refused it, or they disagree.
enum Verdict {
    Same,
    BothRefused,
    Differs(String),
}

fn compare(root: &Path, dir: &str) -> Verdict {
    let theirs = Command::new(tool(Tool::Kubectl))
        .args(["kustomize", dir])
        .current_dir(root)
        .output()
        .expect("kubectl runs");
    let fs = DiskFs::new(root).expect("root exists");
    let ours = render::render(&fs, dir, &Options::default()).map(|o| render::to_yaml(&o));
    match (theirs.status.success(), ours) {
        (true, Ok(text)) if text.as_bytes() == theirs.stdout => Verdict::Same,
        (true, Ok(text)) => {
            let want = String::from_utf8_lossy(&theirs.stdout);
            let line = text
                .lines()
                .zip(want.lines())
                .position(|(a, b)| a != b)
                .unwrap_or(text.lines().count().min(want.lines().count()));
            Verdict::Differs(format!(
                "{dir}: output differs from line {}: ours {:?}, kubectl {:?}",
                line + 1,
                text.lines().nth(line),
                want.lines().nth(line)
            ))
        }
        (true, Err(e)) => Verdict::Differs(format!("{dir}: kubectl renders it, we fail: {e}")),
        (false, Ok(_)) => Verdict::Differs(format!(
            "{dir}: kubectl refuses it ({}), we render it",
            String::from_utf8_lossy(&theirs.stderr).trim()
        )),
        (false, Err(_)) => Verdict::BothRefused,
    }
}

#[test]
fn random_overlays_print_what_kubectl_kustomize_prints() {
    let trees: u64 = std::env::var("STAGEHAND_RENDER_TREES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(40);
    let mut seeds: Vec<u64> = (1..=trees).collect();
    if let Some(extra) = std::env::var("STAGEHAND_RENDER_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        seeds.push(extra);
    }
    let mut failures = Vec::new();
    let (mut same, mut refused) = (0, 0);
    for seed in seeds {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut problems = Vec::new();
        for d in draw_tree(seed, dir.path()) {
            match compare(dir.path(), d) {
                Verdict::Same => same += 1,
                Verdict::BothRefused => refused += 1,
                Verdict::Differs(what) => problems.push(what),
            }
        }
        if !problems.is_empty() {
            let kept = dir.keep();
            failures.push(format!(
                "seed {seed} (tree kept at {}):\n  {}",
                kept.display(),
                problems.join("\n  ")
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // A generator whose trees kubectl mostly refuses would compare little.
    assert!(
        same > 4 * refused,
        "{same} directories rendered alike, {refused} refused by both: the generator needs fixing"
    );
    eprintln!("{same} directories rendered alike, {refused} refused by both");
}
