//! Hostile input to `stagehand render`: an alias bomb, a list nested 100,000 deep, a file over
//! the size cap, files past the render's byte cap, more objects than a render may hold. Each is refused by the process with an
//! error naming the file, and the process exits as it does for any bad input (status 1), never
//! by running out of memory or stack.

use std::path::Path;
use std::process::{Command, Output};

use stagehand::render::limits::{MAX_FILE_BYTES, MAX_OBJECTS, MAX_RENDER_BYTES};
use stagehand::render::{self, Options, fs::DiskFs};
use stagehand::yaml::events::MAX_DEPTH;

/// Runs `stagehand render app` in a tree whose kustomization lists `resources.yaml`, written
/// with `resource`.
fn render_with(resource: &[u8]) -> Output {
    let root = tempfile::tempdir().expect("temp dir");
    let write = |path: &str, bytes: &[u8]| {
        let path = root.path().join(path);
        std::fs::create_dir_all(path.parent().expect("a directory")).expect("mkdir");
        std::fs::write(path, bytes).expect("write");
    };
    write("app/kustomization.yaml", b"resources:\n- resources.yaml\n");
    write("app/resources.yaml", resource);
    render_in(root.path())
}

fn render_in(root: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_stagehand"))
        .args(["render", "app", "--root", "."])
        .current_dir(root)
        .output()
        .expect("stagehand runs")
}

/// The process failed cleanly, naming the file and the problem.
fn assert_refused(out: &Output, problem: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "stagehand did not exit with an error (killed by a signal?): {stderr}"
    );
    assert!(out.stdout.is_empty(), "a refused render printed objects");
    assert!(
        stderr.contains("app/kustomization.yaml")
            && stderr.contains("resources.yaml")
            && stderr.contains(problem),
        "{stderr}"
    );
}

#[test]
fn a_ten_level_billion_laughs_config_map_is_refused_by_name() {
    let mut bomb = String::from(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: lol\n  annotations:\n    a0: &a0 lol\n",
    );
    for level in 1..10 {
        let refs = vec![format!("*a{}", level - 1); 10].join(",");
        bomb.push_str(&format!("    a{level}: &a{level} [{refs}]\n"));
    }
    bomb.push_str("data:\n  lol: *a9\n");
    assert_refused(&render_with(bomb.as_bytes()), "excessive aliasing");
}

#[test]
fn a_list_nested_100000_deep_is_refused_by_name_without_overflowing_the_stack() {
    let deep = format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: deep\ndeep:\n{}x\n",
        "- ".repeat(100_000)
    );
    assert_refused(&render_with(deep.as_bytes()), "nested deeper than");
}

#[test]
fn a_list_nested_just_inside_the_limit_renders_on_a_worker_threads_stack() {
    // The deepest document the reader lets through (the top-level mapping and MAX_DEPTH - 1
    // lists) must not overflow any later walk, on the 2 MiB stack of tokio's blocking threads
    // where the service renders.
    let root = tempfile::tempdir().expect("temp dir");
    std::fs::create_dir_all(root.path().join("app")).expect("mkdir");
    std::fs::write(
        root.path().join("app/kustomization.yaml"),
        "resources:\n- deep.yaml\n",
    )
    .expect("write");
    let deep = format!(
        "apiVersion: example.com/v1\nkind: Deep\nmetadata:\n  name: deep\nspec:\n{}leaf\n",
        "- ".repeat(MAX_DEPTH - 1)
    );
    std::fs::write(root.path().join("app/deep.yaml"), deep).expect("write");
    let fs = DiskFs::new(root.path()).expect("root exists");
    let printed = std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(move || {
            let objects = render::render(&fs, "app", &Options::default()).expect("renders");
            render::to_yaml(&objects)
        })
        .expect("a thread starts")
        .join()
        .expect("the render does not overflow its stack");
    assert!(printed.contains("- leaf"), "{printed}");
}

#[test]
fn a_file_over_the_size_cap_is_refused_by_name() {
    let mut big = b"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: big\ndata:\n  a: ".to_vec();
    big.resize(usize::try_from(MAX_FILE_BYTES).expect("fits") + 1, b'x');
    big.push(b'\n');
    assert_refused(&render_with(&big), "larger than");
}

#[test]
fn a_render_past_the_object_cap_is_refused_by_name() {
    let items =
        "- {apiVersion: v1, kind: ConfigMap, metadata: {name: c}}\n".repeat(MAX_OBJECTS + 1);
    let list = format!("apiVersion: v1\nkind: List\nitems:\n{items}");
    assert_refused(&render_with(list.as_bytes()), "objects");
}

#[test]
fn files_past_the_render_byte_cap_are_refused_at_the_first_in_list_order_that_passes_it() {
    // Enough entries that files are read on several threads; nine files at the size cap,
    // spread over the threads' shares, pass the render's cap at the eighth whichever thread
    // reads first.
    let root = tempfile::tempdir().expect("temp dir");
    std::fs::create_dir_all(root.path().join("app")).expect("mkdir");
    let big = [10, 40, 70, 100, 130, 160, 190, 220, 250];
    assert_eq!(8 * MAX_FILE_BYTES, MAX_RENDER_BYTES);
    let mut kustomization = String::from("resources:\n");
    for i in 0..300 {
        let name = format!("c{i:03}.yaml");
        let path = root.path().join("app").join(&name);
        let mut text = format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c{i}\n#");
        if big.contains(&i) {
            // A comment fills the file to the size cap.
            text.push_str(
                &"x".repeat(usize::try_from(MAX_FILE_BYTES).expect("fits") - text.len() - 1),
            );
        }
        text.push('\n');
        std::fs::write(&path, text).expect("write");
        kustomization.push_str(&format!("- {name}\n"));
    }
    std::fs::write(root.path().join("app/kustomization.yaml"), kustomization).expect("write");
    let fs = DiskFs::new(root.path()).expect("root exists");
    let err = render::render(&fs, "app", &Options::default()).expect_err("past the byte cap");
    let message = stagehand::error_chain::ErrorChain(&err).to_string();
    assert!(
        message.contains("app/c220.yaml") && message.contains("one render may read"),
        "{message}"
    );
}
