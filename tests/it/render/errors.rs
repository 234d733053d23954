//! Bad input to a render: each case is refused by `kubectl kustomize` too (the oracle), and our
//! error names the kustomization file, the field and the entry at fault. A render either returns
//! every object or an error: there is no partial output, and the CLI prints nothing on stdout.

use std::path::Path;
use std::process::Command;

use stagehand::render::{self, Options, fs::DiskFs};

use crate::support::{Tool, tool};

fn write(root: &Path, files: &[(&str, &str)]) {
    for (path, text) in files {
        let path = root.join(path);
        std::fs::create_dir_all(path.parent().expect("files live in a directory")).expect("mkdir");
        std::fs::write(path, text).expect("write");
    }
}

const CONFIG_MAP: &str =
    "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\ndata:\n  a: b\n";

/// Renders `overlay` under a fresh tree made of `files` with Stagehand and with kubectl; both must
/// fail, and our message must hold every one of `names`.
fn assert_refused(files: &[(&str, &str)], names: &[&str]) {
    let root = tempfile::tempdir().expect("temp dir");
    write(root.path(), files);
    let kubectl = Command::new(tool(Tool::Kubectl))
        .args(["kustomize", "app/overlay"])
        .current_dir(root.path())
        .output()
        .expect("kubectl runs");
    assert!(
        !kubectl.status.success(),
        "the oracle accepts this input, so refusing it would be our bug"
    );
    let fs = DiskFs::new(root.path()).expect("root exists");
    let err = render::render(&fs, "app/overlay", &Options::default())
        .expect_err("Stagehand must refuse what kubectl refuses");
    let message = stagehand::error_chain::ErrorChain(&err).to_string();
    for name in names {
        assert!(message.contains(name), "{message:?} does not name {name:?}");
    }
}

#[test]
fn a_resource_outside_the_kustomization_directory_is_refused_by_name() {
    assert_refused(
        &[
            (
                "app/overlay/kustomization.yaml",
                "resources:\n- ../secret.yaml\n",
            ),
            ("app/secret.yaml", CONFIG_MAP),
        ],
        &[
            "app/overlay/kustomization.yaml",
            "resources",
            "app/secret.yaml",
            "not in or below",
        ],
    );
}

#[test]
fn a_missing_resource_file_is_named() {
    assert_refused(
        &[(
            "app/overlay/kustomization.yaml",
            "resources:\n- gone.yaml\n",
        )],
        &["app/overlay/kustomization.yaml", "resources", "gone.yaml"],
    );
}

#[test]
fn a_kustomization_that_is_not_yaml_is_refused_with_its_position() {
    assert_refused(
        &[(
            "app/overlay/kustomization.yaml",
            "resources:\n  - a.yaml\n bad: [\n",
        )],
        &["app/overlay/kustomization.yaml", "line 3"],
    );
}

#[test]
fn an_unknown_kustomization_field_is_named() {
    assert_refused(
        &[("app/overlay/kustomization.yaml", "resourcez:\n- a.yaml\n")],
        &["app/overlay/kustomization.yaml", "resourcez"],
    );
}

#[test]
fn a_remote_base_is_refused_not_skipped() {
    assert_refused(
        &[(
            "app/overlay/kustomization.yaml",
            "resources:\n- https://example.invalid/org/repo//base?ref=v1\n",
        )],
        &[
            "app/overlay/kustomization.yaml",
            "resources",
            "https://example.invalid/org/repo//base?ref=v1",
            "remote",
        ],
    );
}

#[test]
fn a_helm_chart_is_refused_by_name() {
    assert_refused(
        &[(
            "app/overlay/kustomization.yaml",
            "helmCharts:\n- name: redis\n  repo: https://example.invalid/charts\n  version: 1.0.0\n",
        )],
        &[
            "app/overlay/kustomization.yaml",
            "helmCharts",
            "redis",
            "Helm",
        ],
    );
}

#[test]
fn a_generator_plugin_is_refused_by_name() {
    assert_refused(
        &[
            (
                "app/overlay/kustomization.yaml",
                "generators:\n- gen.yaml\n",
            ),
            (
                "app/overlay/gen.yaml",
                "apiVersion: example.com/v1\nkind: SecretsFromVault\nmetadata:\n  name: vault\n",
            ),
        ],
        &[
            "app/overlay/kustomization.yaml",
            "generators",
            "SecretsFromVault",
            "plugins",
        ],
    );
}

#[test]
fn a_patch_whose_target_is_missing_names_the_patch_file() {
    assert_refused(
        &[
            (
                "app/overlay/kustomization.yaml",
                "resources:\n- cm.yaml\npatches:\n- path: retune.yaml\n",
            ),
            ("app/overlay/cm.yaml", CONFIG_MAP),
            (
                "app/overlay/retune.yaml",
                "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: other\ndata:\n  a: c\n",
            ),
        ],
        &[
            "app/overlay/kustomization.yaml",
            "patches",
            "retune.yaml",
            "ConfigMap.v1.[noGrp]/other",
        ],
    );
}

#[test]
fn a_json_patch_on_a_missing_path_names_the_inline_patch() {
    assert_refused(
        &[
            (
                "app/overlay/kustomization.yaml",
                "resources:\n- cm.yaml\npatches:\n- target:\n    kind: ConfigMap\n  patch: |-\n    - op: replace\n      path: /data/a/b\n      value: x\n",
            ),
            ("app/overlay/cm.yaml", CONFIG_MAP),
        ],
        &["app/overlay/kustomization.yaml", "patches[0]", "/data/a/b"],
    );
}

#[test]
fn a_json_patch_in_yaml_flow_style_after_a_bracket_is_not_json() {
    assert_refused(
        &[
            (
                "app/overlay/kustomization.yaml",
                "resources:\n- cm.yaml\npatchesJson6902:\n- target: {version: v1, kind: ConfigMap, name: settings}\n  patch: \"[{op: add, path: /data/x, value: y}]\"\n",
            ),
            ("app/overlay/cm.yaml", CONFIG_MAP),
        ],
        &[
            "app/overlay/kustomization.yaml",
            "patchesJson6902",
            "not JSON",
        ],
    );
}

#[test]
fn the_same_resource_twice_is_refused_with_its_id() {
    assert_refused(
        &[
            (
                "app/overlay/kustomization.yaml",
                "resources:\n- cm.yaml\n- again.yaml\n",
            ),
            ("app/overlay/cm.yaml", CONFIG_MAP),
            ("app/overlay/again.yaml", CONFIG_MAP),
        ],
        &[
            "app/overlay/kustomization.yaml",
            "resources",
            "ConfigMap.v1.[noGrp]/settings",
        ],
    );
}

#[test]
fn a_kustomization_that_includes_itself_is_a_cycle() {
    assert_refused(
        &[
            ("app/overlay/kustomization.yaml", "resources:\n- ../base\n"),
            ("app/base/kustomization.yaml", "resources:\n- ../overlay\n"),
        ],
        &[
            "app/overlay/kustomization.yaml",
            "resources",
            "cycle",
            "app/overlay -> app/base -> app/overlay",
        ],
    );
}

#[test]
fn a_value_kustomize_cannot_print_is_refused_with_its_object_and_field() {
    assert_refused(
        &[
            ("app/overlay/kustomization.yaml", "resources:\n- cm.yaml\n"),
            (
                "app/overlay/cm.yaml",
                "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\ndata:\n  bell: \"rub\\x7fout\"\n",
            ),
        ],
        &["ConfigMap settings", "data.bell", "U+007F"],
    );
}

#[test]
fn the_cli_prints_no_objects_when_the_render_fails() {
    let root = tempfile::tempdir().expect("temp dir");
    write(
        root.path(),
        &[
            (
                "app/overlay/kustomization.yaml",
                "resources:\n- cm.yaml\n- gone.yaml\n",
            ),
            ("app/overlay/cm.yaml", CONFIG_MAP),
        ],
    );
    let out = Command::new(env!("CARGO_BIN_EXE_stagehand"))
        .args(["render", "app/overlay", "--root", "."])
        .current_dir(root.path())
        .output()
        .expect("stagehand runs");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        out.stdout.is_empty(),
        "half a render reached stdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("app/overlay/kustomization.yaml") && stderr.contains("gone.yaml"),
        "{stderr}"
    );
}

#[test]
fn configurations_that_disagree_on_create_for_one_field_are_refused() {
    // The default commonLabels spec for every kind creates metadata/labels; this one does not.
    assert_refused(
        &[
            (
                "app/overlay/kustomization.yaml",
                "resources:\n- cm.yaml\ncommonLabels:\n  team: x\nconfigurations:\n- labels.yaml\n",
            ),
            ("app/overlay/cm.yaml", CONFIG_MAP),
            (
                "app/overlay/labels.yaml",
                "commonLabels:\n- path: metadata/labels\n  kind: ConfigMap\n  create: false\n",
            ),
        ],
        &[
            "app/overlay/kustomization.yaml",
            "configurations",
            "commonLabels",
            "conflicting fieldspecs",
            "metadata/labels",
            "kind ConfigMap",
        ],
    );
}

#[test]
fn a_resource_with_a_repeated_key_is_refused_with_both_lines() {
    assert_refused(
        &[
            ("app/overlay/kustomization.yaml", "resources:\n- cm.yaml\n"),
            (
                "app/overlay/cm.yaml",
                "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\ndata:\n  a: \"1\"\n  a: \"2\"\n",
            ),
        ],
        &[
            "app/overlay/kustomization.yaml",
            "resources",
            "cm.yaml",
            "line 7",
            "\"a\" already defined at line 6",
        ],
    );
}

#[test]
fn a_map_key_that_is_not_text_is_refused() {
    assert_refused(
        &[
            ("app/overlay/kustomization.yaml", "resources:\n- cm.yaml\n"),
            (
                "app/overlay/cm.yaml",
                "apiVersion: example.com/v1\nkind: T\nmetadata:\n  name: x\nspec:\n  8080: http\n",
            ),
        ],
        &[
            "app/overlay/kustomization.yaml",
            "cm.yaml",
            "line 6",
            "8080",
        ],
    );
}

#[test]
fn annotations_that_are_a_list_are_refused() {
    assert_refused(
        &[
            ("app/overlay/kustomization.yaml", "resources:\n- cm.yaml\n"),
            (
                "app/overlay/cm.yaml",
                "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n  annotations: [a]\n",
            ),
        ],
        &["app/overlay/kustomization.yaml", "annotations", "ConfigMap"],
    );
}

#[test]
fn an_env_file_that_is_not_utf8_is_refused_with_its_line() {
    let root = tempfile::tempdir().expect("temp dir");
    write(
        root.path(),
        &[(
            "app/overlay/kustomization.yaml",
            "configMapGenerator:\n- name: env\n  envs: [app.env]\n",
        )],
    );
    std::fs::write(root.path().join("app/overlay/app.env"), b"A=1\nB=\xff\n").expect("write");
    let kubectl = Command::new(tool(Tool::Kubectl))
        .args(["kustomize", "app/overlay"])
        .current_dir(root.path())
        .output()
        .expect("kubectl runs");
    assert!(!kubectl.status.success(), "the oracle refuses it too");
    let fs = DiskFs::new(root.path()).expect("root exists");
    let message = render::render(&fs, "app/overlay", &Options::default())
        .expect_err("refused")
        .to_string();
    for name in [
        "app/overlay/kustomization.yaml",
        "configMapGenerator",
        "app.env",
        "line 2",
    ] {
        assert!(message.contains(name), "{message:?} does not name {name:?}");
    }
}

#[test]
fn a_yaml_1_1_boolean_where_a_kustomization_wants_text_is_refused_naming_the_field() {
    // kustomize reads kustomization files with go-yaml v2: `yes` is a boolean there.
    assert_refused(
        &[
            (
                "app/overlay/kustomization.yaml",
                "resources:\n- cm.yaml\ncommonLabels:\n  enabled: yes\n",
            ),
            ("app/overlay/cm.yaml", CONFIG_MAP),
        ],
        &[
            "app/overlay/kustomization.yaml",
            "commonLabels.enabled",
            "boolean",
        ],
    );
}

#[test]
fn a_field_path_that_runs_into_a_scalar_is_refused_naming_field_and_object() {
    for (spec, field, path) in [
        (
            "spec:\n  selector: x\n",
            "commonLabels",
            "spec/selector/matchLabels",
        ),
        (
            "spec:\n  template:\n    spec:\n      volumes:\n      - name: v\n        configMap: settings\n",
            "resources",
            "spec/template/spec/volumes/configMap/name",
        ),
    ] {
        assert_refused(
            &[
                (
                    "app/overlay/kustomization.yaml",
                    "resources:\n- d.yaml\n- cm.yaml\ncommonLabels:\n  team: a\nnamePrefix: p-\n",
                ),
                (
                    "app/overlay/d.yaml",
                    &format!(
                        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n{spec}"
                    ),
                ),
                ("app/overlay/cm.yaml", CONFIG_MAP),
            ],
            &[
                "app/overlay/kustomization.yaml",
                field,
                path,
                "Deployment 'p-web'",
            ],
        );
    }
}

#[test]
fn a_resource_file_with_a_yaml_directive_is_refused_with_its_line() {
    // kustomize splits resources at `---` before parsing, which strands the directive.
    assert_refused(
        &[
            ("app/overlay/kustomization.yaml", "resources:\n- cm.yaml\n"),
            (
                "app/overlay/cm.yaml",
                "%YAML 1.1\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n",
            ),
        ],
        &[
            "app/overlay/kustomization.yaml",
            "cm.yaml",
            "line 1",
            "directive",
        ],
    );
}

#[test]
fn a_replica_count_for_nothing_and_an_object_without_a_name_are_refused() {
    let deployment = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n";
    assert_refused(
        &[
            (
                "app/overlay/kustomization.yaml",
                "resources:\n- d.yaml\nreplicas:\n- name: missing\n  count: 2\n",
            ),
            ("app/overlay/d.yaml", deployment),
        ],
        &["app/overlay/kustomization.yaml", "replicas", "'missing'"],
    );
    assert_refused(
        &[
            ("app/overlay/kustomization.yaml", "resources:\n- j.yaml\n"),
            (
                "app/overlay/j.yaml",
                "apiVersion: batch/v1\nkind: Job\nmetadata:\n  generateName: job-\n",
            ),
        ],
        &[
            "app/overlay/kustomization.yaml",
            "j.yaml",
            "metadata.name",
            "Job",
        ],
    );
}

#[test]
fn an_openapi_version_kustomize_does_not_ship_is_refused_by_name() {
    assert_refused(
        &[
            (
                "app/overlay/kustomization.yaml",
                "resources:\n- cm.yaml\nopenapi:\n  version: v1.14.1\n",
            ),
            ("app/overlay/cm.yaml", CONFIG_MAP),
        ],
        &["app/overlay/kustomization.yaml", "openapi", "v1.14.1"],
    );
    // In a base too, as long as no kustomization loaded before it chose a schema.
    assert_refused(
        &[
            (
                "app/overlay/kustomization.yaml",
                "resources:\n- ../base\nopenapi:\n  version: \"\"\n",
            ),
            (
                "app/base/kustomization.yaml",
                "resources:\n- cm.yaml\nopenapi:\n  version: v1_21_2\n",
            ),
            ("app/base/cm.yaml", CONFIG_MAP),
        ],
        &["app/base/kustomization.yaml", "openapi", "v1_21_2"],
    );
}

/// Symlinks under the load restrictor, with `kubectl kustomize` as the oracle, read from disk and
/// from a Git tree: a file link that leads out of the kustomization's directory (to a sibling
/// environment, or out of the repository) is refused, as a resource and as a generator source; a
/// link that stays inside, and a linked directory that is a kustomization of its own, render as
/// kubectl renders them.
#[test]
fn symlinks_are_resolved_before_the_load_restrictor_checks_them() {
    use stagehand::git::{Credentials, RemoteUrl, Repository};
    use std::os::unix::fs::symlink;

    let cases: [(&str, &str, bool); 5] = [
        ("to prod", "resources: [stolen.yaml]\n", false),
        ("out of the repository", "resources: [far.yaml]\n", false),
        (
            "as a generator source",
            "configMapGenerator:\n  - name: g\n    files: [stolen.yaml]\n",
            false,
        ),
        ("inside", "resources: [inside.yaml]\n", true),
        (
            "a kustomization directory",
            "resources: [base-link]\n",
            true,
        ),
    ];
    for (how, kustomization, renders) in cases {
        let top = tempfile::tempdir().expect("temp dir");
        let root = top.path().join("repo");
        write(
            &root,
            &[
                ("prod/secret.yaml", CONFIG_MAP),
                ("base/kustomization.yaml", "resources: [cm.yaml]\n"),
                ("base/cm.yaml", CONFIG_MAP),
                ("dev/sub/in.yaml", CONFIG_MAP),
                ("dev/kustomization.yaml", kustomization),
            ],
        );
        write(top.path(), &[("outside.yaml", CONFIG_MAP)]);
        symlink("../prod/secret.yaml", root.join("dev/stolen.yaml")).expect("symlink");
        symlink("../../outside.yaml", root.join("dev/far.yaml")).expect("symlink");
        symlink("sub/in.yaml", root.join("dev/inside.yaml")).expect("symlink");
        symlink("../base", root.join("dev/base-link")).expect("symlink");

        let kubectl = Command::new(tool(Tool::Kubectl))
            .args(["kustomize", "dev"])
            .current_dir(&root)
            .output()
            .expect("kubectl runs");
        assert_eq!(kubectl.status.success(), renders, "{how}: kubectl");

        crate::support::git::git(&root, &["init", "-q", "-b", "main"]);
        crate::support::git::git(&root, &["add", "-A"]);
        crate::support::git::git(&root, &["commit", "-q", "-m", how]);
        let commit = crate::support::git::git(&root, &["rev-parse", "HEAD"]);
        let cache = Repository::open(
            &top.path().join("state"),
            RemoteUrl::new(format!("file://{}", root.display())),
            Credentials::None,
        )
        .expect("the cache opens");
        cache.fetch().expect("fetch");
        let tree = cache
            .tree(gix::ObjectId::from_hex(commit.as_bytes()).expect("a commit id"))
            .expect("the tree");
        let disk = DiskFs::new(&root).expect("root");
        let sources: [(&str, &dyn stagehand::render::fs::FileSystem); 2] =
            [("disk", &disk), ("git", &tree)];
        for (source, fs) in sources {
            match render::render(fs, "dev", &Options::default()) {
                Ok(objects) => {
                    assert!(renders, "{how} ({source}): rendered, kubectl refused");
                    assert_eq!(
                        crate::support::yaml_documents(&render::to_yaml(&objects)),
                        crate::support::yaml_documents(&String::from_utf8_lossy(&kubectl.stdout)),
                        "{how} ({source})"
                    );
                }
                Err(err) => {
                    let text = err.to_string();
                    assert!(!renders, "{how} ({source}): {text}");
                    assert!(
                        text.contains("dev/kustomization.yaml")
                            && (text.contains("security")
                                || text.contains("leaves the source root")),
                        "{how} ({source}): {text}"
                    );
                }
            }
        }
    }
}

#[test]
fn among_many_files_the_first_broken_one_in_the_list_is_named_and_nothing_is_rendered() {
    // Enough files that they are parsed on several threads; the broken ones sit in different
    // threads' shares, and a directory entry splits the list as well.
    let root = tempfile::tempdir().expect("temp dir");
    let mut kustomization = String::from("resources:\n");
    for i in 0..300 {
        let text = match i {
            170 | 40 => "kind: [unclosed\n".to_owned(),
            _ => format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c{i}\n"),
        };
        let name = format!("c{i:03}.yaml");
        write(root.path(), &[(&format!("app/{name}"), &text)]);
        kustomization.push_str(&format!("- {name}\n"));
        if i == 20 {
            kustomization.push_str("- sub\n");
        }
    }
    write(
        root.path(),
        &[
            ("app/kustomization.yaml", &kustomization),
            ("app/sub/kustomization.yaml", "resources: [one.yaml]\n"),
            ("app/sub/one.yaml", CONFIG_MAP),
        ],
    );
    let fs = DiskFs::new(root.path()).expect("root exists");
    let err = render::render(&fs, "app", &Options::default()).expect_err("two files are broken");
    let message = stagehand::error_chain::ErrorChain(&err).to_string();
    assert!(message.contains("c040.yaml"), "{message}");
    assert!(!message.contains("c170.yaml"), "{message}");
}
