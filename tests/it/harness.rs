//! The test harness itself: the local cluster it starts must not outlive the process that asked
//! for it, however that process ends.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

fn alive(pid: &str) -> bool {
    Command::new("kill")
        .args(["-0", pid])
        .status()
        .expect("kill runs")
        .success()
}

#[test]
fn the_local_cluster_stops_when_the_watched_process_is_killed() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut owner = Command::new("sleep")
        .arg("600")
        .spawn()
        .expect("sleep starts");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/local-cluster.sh");
    let out = Command::new(&script)
        .arg("up")
        .arg(dir.path())
        .arg("--watch")
        .arg(owner.id().to_string())
        .output()
        .expect("local-cluster.sh runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pids = std::fs::read_to_string(dir.path().join("pids")).expect("pids recorded");
    let pids: Vec<&str> = pids.lines().collect();
    assert_eq!(pids.len(), 2, "etcd and kube-apiserver");
    assert!(
        pids.iter().all(|pid| alive(pid)),
        "both run while the owner lives"
    );

    // SIGKILL: the owner gets no chance to clean up, as with an aborted test process.
    owner.kill().expect("owner can be killed");
    owner.wait().expect("owner reaped");
    let deadline = Instant::now() + Duration::from_secs(30);
    // The watchdog kills both, then removes etcd's data: wait for all of it.
    while pids.iter().any(|pid| alive(pid)) || dir.path().join("etcd").exists() {
        assert!(
            Instant::now() < deadline,
            "30 s after its owner died: etcd or kube-apiserver still runs, or etcd data remains"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn the_throwaway_postgres_server_stops_and_is_deleted_when_the_watched_process_is_killed() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut owner = Command::new("sleep")
        .arg("600")
        .spawn()
        .expect("sleep starts");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/postgres.sh");
    let out = Command::new(&script)
        .arg("up")
        .arg(dir.path())
        .arg("--watch")
        .arg(owner.id().to_string())
        .output()
        .expect("postgres.sh runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let url = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(url.starts_with("postgresql://stagehand:"), "{url}");
    let data = std::fs::read_to_string(dir.path().join("data")).expect("the data dir is recorded");
    let data = Path::new(data.trim()).to_owned();
    let pid = std::fs::read_to_string(data.join("pgdata/postmaster.pid")).expect("running");
    let pid = pid.lines().next().expect("the pid line").to_owned();
    assert!(alive(&pid), "the server runs while the owner lives");

    owner.kill().expect("owner can be killed");
    owner.wait().expect("owner reaped");
    let deadline = Instant::now() + Duration::from_secs(30);
    while alive(&pid) || data.exists() {
        assert!(
            Instant::now() < deadline,
            "30 s after its owner died: the server still runs, or its data remains"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
