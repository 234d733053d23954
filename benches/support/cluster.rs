//! The apiserver a benchmark runs against.

use std::path::{Path, PathBuf};
use std::process::Command;

/// `STAGEHAND_TEST_KUBECONFIG` when set, else a private apiserver started with
/// scripts/local-cluster.sh, stopped when this process ends.
pub fn kubeconfig() -> PathBuf {
    if let Some(path) = std::env::var_os("STAGEHAND_TEST_KUBECONFIG") {
        return path.into();
    }
    let dir = std::env::temp_dir().join(format!("stagehand-bench-{}", std::process::id()));
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/local-cluster.sh");
    let out = Command::new(script)
        .arg("up")
        .arg(&dir)
        .arg("--watch")
        .arg(std::process::id().to_string())
        .output()
        .expect("scripts/local-cluster.sh runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir.join("kubeconfig")
}
