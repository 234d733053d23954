//! SOPS + age against the real `sops` 3.11 and `age` binaries: interop both ways on a corpus
//! the tests generate, the errors users must get, the CLI, and property tests.

mod cli;
mod errors;
mod interop;
mod pq;
mod props;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use stagehand::secrets::Identities;

use crate::support::{Tool, tool};

/// A scratch directory with two age identities made by the real `age-keygen`.
pub struct Keys {
    pub dir: tempfile::TempDir,
    pub recipients: [String; 2],
}

impl Keys {
    pub fn new() -> Keys {
        let dir = tempfile::tempdir().expect("a temp dir can be created");
        let recipients = [0, 1].map(|i| {
            let path = dir.path().join(format!("key{i}.txt"));
            let out = Command::new(tool(Tool::AgeKeygen))
                .arg("-o")
                .arg(&path)
                .output()
                .expect("age-keygen runs");
            assert!(out.status.success(), "age-keygen failed: {out:?}");
            let public = Command::new(tool(Tool::AgeKeygen))
                .arg("-y")
                .arg(&path)
                .output()
                .expect("age-keygen -y runs");
            String::from_utf8(public.stdout)
                .expect("a recipient is ASCII")
                .trim()
                .to_owned()
        });
        Keys { dir, recipients }
    }

    pub fn key_file(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("key{i}.txt"))
    }

    pub fn identities(&self, i: usize) -> Identities {
        let mut ids = Identities::new();
        ids.add_file(&self.key_file(i))
            .expect("age-keygen output loads");
        ids
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn write(&self, name: &str, content: &[u8]) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, content).expect("the temp dir is writable");
        path
    }
}

/// Runs the real sops in `dir` with identity `key` (an empty environment otherwise, so that no
/// key of the machine leaks in).
pub fn sops(keys: &Keys, key: Option<usize>, args: &[&str]) -> Output {
    let mut cmd = Command::new(tool(Tool::Sops));
    cmd.args(args)
        .current_dir(keys.dir.path())
        .env_clear()
        .env("HOME", keys.dir.path())
        .env("XDG_CONFIG_HOME", keys.dir.path().join("config"));
    if let Some(i) = key {
        cmd.env("SOPS_AGE_KEY_FILE", keys.key_file(i));
    }
    cmd.output().expect("sops runs")
}

/// `sops -d`, asserting success.
pub fn sops_decrypt(keys: &Keys, key: usize, file: &Path, extra: &[&str]) -> Vec<u8> {
    let file = file.to_str().expect("temp paths are UTF-8");
    let mut args = vec!["-d"];
    args.extend_from_slice(extra);
    args.push(file);
    let out = sops(keys, Some(key), &args);
    assert!(
        out.status.success(),
        "sops -d {file} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// `sops -e` to both recipients, asserting success.
pub fn sops_encrypt(keys: &Keys, file: &Path, extra: &[&str]) -> Vec<u8> {
    let recipients = keys.recipients.join(",");
    let file = file.to_str().expect("temp paths are UTF-8");
    let mut args = vec!["-e", "--age", recipients.as_str()];
    args.extend_from_slice(extra);
    args.push(file);
    let out = sops(keys, None, &args);
    assert!(
        out.status.success(),
        "sops -e {file} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}
