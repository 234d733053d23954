//! Fuzzes the render path: a tree of kustomizations, resources and patches built from the input
//! must render or fail with an error, never panic; libFuzzer's `-timeout` and `-rss_limit_mb`
//! catch a hang or a blow-up.
//!
//! Input: `run-dir \0 path \0 content \0 path \0 content …`, every path relative to the root of
//! an in-memory tree (`seed_corpus.sh` writes the kustomize conformance cases this way).
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use stagehand::render::fs::{DirEntry, EntryKind, Error, FileSystem};
use stagehand::render::{self, LoadRestrictor, Options};

/// Files by normalized path; directories are the prefixes of those paths.
struct Tree(BTreeMap<String, Vec<u8>>);

impl Tree {
    fn parse(data: &[u8]) -> Option<(String, Tree)> {
        let mut parts = data.split(|&b| b == 0);
        let dir = normalize(std::str::from_utf8(parts.next()?).ok()?)?;
        let mut files = BTreeMap::new();
        while let (Some(path), Some(content)) = (parts.next(), parts.next()) {
            let path = normalize(std::str::from_utf8(path).ok()?)?;
            if path.is_empty() {
                return None;
            }
            files.insert(path, content.to_vec());
        }
        let tree = Tree(files);
        // A file may not also be a directory.
        if tree.0.keys().any(|p| tree.is_dir(p)) {
            return None;
        }
        Some((dir, tree))
    }

    fn is_dir(&self, path: &str) -> bool {
        path.is_empty()
            || self
                .0
                .range(format!("{path}/")..)
                .next()
                .is_some_and(|(k, _)| k.starts_with(&format!("{path}/")))
    }
}

/// `a/./b//c` as `a/b/c`; `None` for a path leaving the root or absolute.
fn normalize(path: &str) -> Option<String> {
    let mut out: Vec<&str> = Vec::new();
    if path.starts_with('/') {
        return None;
    }
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                out.pop()?;
            }
            p => out.push(p),
        }
    }
    Some(out.join("/"))
}

impl FileSystem for Tree {
    fn read_file(&self, path: &str) -> Result<Vec<u8>, Error> {
        let key = normalize(path).ok_or_else(|| Error::OutsideRoot { path: path.into() })?;
        match self.0.get(&key) {
            Some(content) => Ok(content.clone()),
            None if self.is_dir(&key) => Err(Error::IsDir { path: path.into() }),
            None => Err(Error::NotFound { path: path.into() }),
        }
    }

    fn read_dir(&self, path: &str) -> Result<Vec<DirEntry>, Error> {
        let key = normalize(path).ok_or_else(|| Error::OutsideRoot { path: path.into() })?;
        if self.0.contains_key(&key) {
            return Err(Error::NotDir { path: path.into() });
        }
        if !self.is_dir(&key) {
            return Err(Error::NotFound { path: path.into() });
        }
        let prefix = if key.is_empty() {
            String::new()
        } else {
            format!("{key}/")
        };
        let mut entries: BTreeMap<String, EntryKind> = BTreeMap::new();
        for file in self.0.keys().filter(|k| k.starts_with(&prefix)) {
            let rest = &file[prefix.len()..];
            match rest.split_once('/') {
                Some((dir, _)) => entries.insert(dir.to_owned(), EntryKind::Dir),
                None => entries.insert(rest.to_owned(), EntryKind::File),
            };
        }
        Ok(entries
            .into_iter()
            .map(|(name, kind)| DirEntry { name, kind })
            .collect())
    }

    fn kind(&self, path: &str) -> Result<Option<EntryKind>, Error> {
        let Some(key) = normalize(path) else {
            return Ok(None);
        };
        Ok(if self.0.contains_key(&key) {
            Some(EntryKind::File)
        } else if self.is_dir(&key) {
            Some(EntryKind::Dir)
        } else {
            None
        })
    }

    fn real_path(&self, path: &str) -> Result<Option<String>, Error> {
        Ok(self.kind(path)?.and(normalize(path)))
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((dir, tree)) = Tree::parse(data) else {
        return;
    };
    for load_restrictor in [LoadRestrictor::RootOnly, LoadRestrictor::None] {
        let options = Options {
            load_restrictor,
            ..Options::default()
        };
        if let Ok(objects) = render::render(&tree, &dir, &options) {
            // What renders must also print.
            let _ = render::to_yaml(&objects);
        }
    }
});
