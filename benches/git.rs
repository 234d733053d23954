//! Side by side: fetching one new commit and reading one overlay's files. Stagehand (a gix
//! fetch, then the tree read from the object database) against the git CLI (`git fetch`, then
//! `git archive` of the overlay path), on a generated repository with 10,000 files and 5,000
//! commits. Run with `cargo bench --bench git`; prints medians and their ratio.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use stagehand::git::{Credentials, RemoteUrl, Repository};
use stagehand::pipeline::Pipeline;
use stagehand::render::fs::{EntryKind, FileSystem};

const FILES: usize = 10_000;
const COMMITS: usize = 5_000;
const ROUNDS: usize = 15;
const OVERLAY: &str = "environments/staging";

fn git(dir: &Path, args: &[&str]) -> Vec<u8> {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn fast_import(remote: &Path, stream: &[u8]) {
    let mut child = Command::new("git")
        .args(["fast-import", "--quiet"])
        .current_dir(remote)
        .stdin(Stdio::piped())
        .spawn()
        .expect("git fast-import runs");
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(stream)
        .expect("stream written");
    assert!(child.wait().expect("fast-import ends").success());
}

fn data(out: &mut Vec<u8>, content: &str) {
    out.extend_from_slice(format!("data {}\n{content}\n", content.len()).as_bytes());
}

/// The history: one commit adding every file, then commits changing one app file each.
fn generate(remote: &Path) {
    let mut s = Vec::new();
    let mut time = 1_700_000_000u64;
    for n in 0..COMMITS {
        s.extend_from_slice(b"commit refs/heads/main\n");
        s.extend_from_slice(format!("committer Gen <gen@example.test> {time} +0000\n").as_bytes());
        time += 60;
        data(&mut s, &format!("commit {n}"));
        if n == 0 {
            for env in ["dev", "staging", "prod"] {
                for (name, content) in [
                    (
                        "kustomization.yaml",
                        format!(
                            "resources:\n  - ../../apps\nimages:\n  - name: shop/web\n    newTag: \"1.0.{n}\"\n"
                        ),
                    ),
                    ("version.yaml", "data:\n  VERSION: \"1\"\n".to_owned()),
                    (
                        "patch.yaml",
                        format!("kind: Deployment\nmetadata: {{name: {env}}}\n"),
                    ),
                ] {
                    s.extend_from_slice(
                        format!("M 100644 inline environments/{env}/{name}\n").as_bytes(),
                    );
                    data(&mut s, &content);
                }
            }
            for i in 0..FILES - 9 {
                s.extend_from_slice(
                    format!("M 100644 inline apps/app-{:03}/file-{i:05}.yaml\n", i / 100)
                        .as_bytes(),
                );
                data(
                    &mut s,
                    &format!("kind: ConfigMap\nmetadata: {{name: cm-{i}}}\ndata: {{v: \"0\"}}\n"),
                );
            }
        } else {
            let i = (n * 7919) % (FILES - 9);
            s.extend_from_slice(
                format!("M 100644 inline apps/app-{:03}/file-{i:05}.yaml\n", i / 100).as_bytes(),
            );
            data(
                &mut s,
                &format!("kind: ConfigMap\nmetadata: {{name: cm-{i}}}\ndata: {{v: \"{n}\"}}\n"),
            );
        }
        s.push(b'\n');
    }
    fast_import(remote, &s);
}

/// A new commit on main that changes the staging overlay.
fn new_commit(remote: &Path, round: usize) {
    let mut s = Vec::new();
    s.extend_from_slice(b"commit refs/heads/main\n");
    s.extend_from_slice(
        format!(
            "committer Gen <gen@example.test> {} +0000\n",
            1_800_000_000 + round
        )
        .as_bytes(),
    );
    data(&mut s, &format!("round {round}"));
    s.extend_from_slice(b"from refs/heads/main^0\n");
    s.extend_from_slice(format!("M 100644 inline {OVERLAY}/version.yaml\n").as_bytes());
    data(&mut s, &format!("data:\n  VERSION: \"{round}\"\n"));
    fast_import(remote, &s);
}

/// Reads every file under `dir` and returns the bytes read.
fn read_all(fs: &dyn FileSystem, dir: &str) -> usize {
    let mut total = 0;
    for entry in fs.read_dir(dir).expect("overlay listable") {
        let path = format!("{dir}/{}", entry.name);
        total += match entry.kind {
            EntryKind::File => fs.read_file(&path).expect("readable").len(),
            EntryKind::Dir => read_all(fs, &path),
        };
    }
    total
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().expect("temp dir");
    let remote = dir.path().join("remote.git");
    std::fs::create_dir_all(&remote).expect("remote dir");
    git(&remote, &["init", "-q", "--bare", "-b", "main"]);
    let started = Instant::now();
    generate(&remote);
    git(&remote, &["repack", "-adq"]);
    let count = String::from_utf8(git(&remote, &["ls-tree", "-r", "--name-only", "main"]))
        .expect("utf-8")
        .lines()
        .count();
    let commits = String::from_utf8(git(&remote, &["rev-list", "--count", "main"])).expect("utf-8");
    println!(
        "generated {count} files, {} commits in {:.1?}",
        commits.trim(),
        started.elapsed()
    );

    let url = format!("file://{}", remote.display());
    let pipeline = Pipeline::parse(
        Path::new("pipeline.yaml"),
        &format!(
            "apiVersion: stagehand.dev/v1alpha1\nkind: Pipeline\nmetadata: {{name: bench}}\n\
             spec:\n  repository: {{url: {url:?}}}\n  environments:\n\
             \x20   - name: staging\n      source: {{overlay: {OVERLAY}}}\n"
        ),
    )
    .expect("valid pipeline");

    // Initial clones, not part of the comparison.
    let repo = Repository::open(
        &dir.path().join("state"),
        RemoteUrl::new(&url),
        Credentials::None,
    )
    .expect("cache opens");
    let t = Instant::now();
    repo.fetch().expect("initial fetch");
    let stagehand_clone = t.elapsed();
    let cli = dir.path().join("cli.git");
    let t = Instant::now();
    git(
        dir.path(),
        &["clone", "-q", "--bare", &url, cli.to_str().expect("utf-8")],
    );
    let cli_clone = t.elapsed();
    println!("initial clone: stagehand {stagehand_clone:.1?}, git clone --bare {cli_clone:.1?}");

    let mut ours = Vec::new();
    let mut theirs = Vec::new();
    for round in 0..ROUNDS {
        new_commit(&remote, round);
        let run_ours = || {
            let t = Instant::now();
            repo.fetch().expect("fetch");
            let revision = repo.revision(&pipeline, "staging").expect("revision");
            let files = repo.tree(revision.commit).expect("tree");
            let bytes = read_all(&files, OVERLAY);
            (t.elapsed(), bytes)
        };
        let run_theirs = || {
            let t = Instant::now();
            git(
                &cli,
                &["fetch", "-q", &url, "+refs/heads/main:refs/heads/main"],
            );
            let tar = git(&cli, &["archive", "main", OVERLAY]);
            (t.elapsed(), tar.len())
        };
        // Alternate who goes first so neither always meets a warm page cache.
        let ((a, bytes), (b, tar)) = if round % 2 == 0 {
            let a = run_ours();
            (a, run_theirs())
        } else {
            let b = run_theirs();
            (run_ours(), b)
        };
        assert!(bytes > 0 && tar > bytes, "both read the overlay");
        ours.push(a);
        theirs.push(b);
    }
    let (ours, theirs) = (median(ours), median(theirs));
    println!(
        "fetch 1 new commit + read {OVERLAY} ({ROUNDS} rounds, median): \
         stagehand {ours:.2?}, git fetch + git archive {theirs:.2?}, ratio stagehand/git = {:.2}",
        ours.as_secs_f64() / theirs.as_secs_f64()
    );
}
