//! Real git repositories made with the git CLI, as users make them.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Runs `git` in `dir` with a fixed identity and no user or system configuration, and returns
/// its trimmed stdout. Panics with git's stderr on failure.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_AUTHOR_NAME", "Test Author")
        .env("GIT_AUTHOR_EMAIL", "author@example.test")
        .env("GIT_COMMITTER_NAME", "Test Committer")
        .env("GIT_COMMITTER_EMAIL", "committer@example.test")
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?} in {} failed: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("git prints UTF-8 here")
        .trim()
        .to_owned()
}

/// A work tree with `main` checked out, created empty.
pub struct Repo {
    pub dir: PathBuf,
}

impl Repo {
    pub fn init(dir: &Path) -> Self {
        std::fs::create_dir_all(dir).expect("repository directory can be created");
        git(dir, &["init", "-q", "-b", "main"]);
        Repo {
            dir: dir.to_owned(),
        }
    }

    /// Writes `files` (path, content) relative to the work tree.
    pub fn write(&self, files: &[(&str, &str)]) -> &Self {
        for (path, content) in files {
            let path = self.dir.join(path);
            std::fs::create_dir_all(path.parent().expect("a file path has a parent"))
                .expect("parent directories can be created");
            std::fs::write(&path, content).expect("file can be written");
        }
        self
    }

    /// Stages everything and commits; returns the commit id.
    pub fn commit(&self, message: &str) -> String {
        git(&self.dir, &["add", "-A"]);
        git(&self.dir, &["commit", "-q", "--allow-empty", "-m", message]);
        git(&self.dir, &["rev-parse", "HEAD"])
    }

    pub fn git(&self, args: &[&str]) -> String {
        git(&self.dir, args)
    }

    /// Stages everything and commits with the given author and committer times (seconds since
    /// the Unix epoch, UTC); returns the commit id.
    pub fn commit_at(&self, message: &str, author_time: u64, committer_time: u64) -> String {
        git(&self.dir, &["add", "-A"]);
        let out = Command::new("git")
            .args(["commit", "-q", "--allow-empty", "-m", message])
            .current_dir(&self.dir)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_AUTHOR_NAME", "Test Author")
            .env("GIT_AUTHOR_EMAIL", "author@example.test")
            .env("GIT_COMMITTER_NAME", "Test Committer")
            .env("GIT_COMMITTER_EMAIL", "committer@example.test")
            .env("GIT_AUTHOR_DATE", format!("@{author_time} +0000"))
            .env("GIT_COMMITTER_DATE", format!("@{committer_time} +0000"))
            .output()
            .expect("git runs");
        assert!(
            out.status.success(),
            "git commit in {} failed: {}",
            self.dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        git(&self.dir, &["rev-parse", "HEAD"])
    }
}

/// A bare repository to push to, standing for the remote.
pub fn bare_remote(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).expect("remote directory can be created");
    git(dir, &["init", "-q", "--bare", "-b", "main"]);
    dir.to_owned()
}
