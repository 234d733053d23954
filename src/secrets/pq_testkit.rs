//! The C2SP CCTV age test vectors for the hybrid post-quantum recipient (`hybrid*`,
//! `armor_hybrid`), read from `../shared/age-vectors/` beside the crate (or
//! `$STAGEHAND_AGE_VECTORS`): each decrypts, or fails in the class its `expect:` names.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::str::FromStr as _;

use sha2::Digest as _;

use super::pq;

fn corpus() -> PathBuf {
    std::env::var_os("STAGEHAND_AGE_VECTORS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/age-vectors"))
}

/// One vector: its header fields and the age file after the blank line.
struct Vector {
    expect: String,
    payload: Option<String>,
    identities: Vec<String>,
    armored: bool,
    file: Vec<u8>,
}

fn read_vector(path: &Path) -> Vector {
    let bytes = std::fs::read(path).expect("a vector file is readable");
    let split = bytes
        .windows(2)
        .position(|w| w == b"\n\n")
        .expect("a vector has a header block, a blank line and a body");
    let header = std::str::from_utf8(&bytes[..split]).expect("the header is text");
    let mut body = bytes[split + 2..].to_vec();
    let mut v = Vector {
        expect: String::new(),
        payload: None,
        identities: Vec::new(),
        armored: false,
        file: Vec::new(),
    };
    let mut compressed = false;
    for line in header.lines() {
        let (field, value) = line
            .split_once(": ")
            .expect("header lines are `field: value`");
        match field {
            "expect" => v.expect = value.to_owned(),
            "payload" => v.payload = Some(value.to_owned()),
            "identity" => v.identities.push(value.to_owned()),
            "armored" => v.armored = value == "yes",
            "compressed" => {
                assert_eq!(value, "zlib", "{}: unknown compression", path.display());
                compressed = true;
            }
            _ => {}
        }
    }
    if compressed {
        let mut out = Vec::new();
        flate2::read::ZlibDecoder::new(body.as_slice())
            .read_to_end(&mut out)
            .expect("a compressed vector inflates");
        body = out;
    }
    v.file = body;
    v
}

/// The outcome, in the vector's own words.
fn decrypt(v: &Vector) -> (String, Option<Vec<u8>>) {
    enum Key {
        X25519(age::x25519::Identity),
        PostQuantum(Box<pq::Identity>),
    }
    let keys: Vec<Key> = v
        .identities
        .iter()
        .map(|s| {
            if s.starts_with("AGE-SECRET-KEY-PQ-1") {
                let id = pq::Identity::parse(s).expect("the vector's PQ identity parses");
                Key::PostQuantum(Box::new(id))
            } else {
                Key::X25519(age::x25519::Identity::from_str(s).expect("the X25519 one parses"))
            }
        })
        .collect();
    let ids = keys.iter().map(|k| match k {
        Key::X25519(k) => k as &dyn age::Identity,
        Key::PostQuantum(k) => k.as_ref() as &dyn age::Identity,
    });
    // The armored reader passes unarmored input through; an armored vector must start so.
    assert_eq!(
        v.armored,
        v.file.starts_with(b"-----BEGIN AGE ENCRYPTED FILE-----")
    );
    let result = age::Decryptor::new(age::armor::ArmoredReader::new(v.file.as_slice()))
        .and_then(|d| d.decrypt(ids));
    match result {
        Ok(mut stream) => {
            let mut out = Vec::new();
            match stream.read_to_end(&mut out) {
                Ok(_) => ("success".into(), Some(out)),
                Err(_) => ("payload failure".into(), Some(out)),
            }
        }
        Err(age::DecryptError::NoMatchingKeys | age::DecryptError::DecryptionFailed) => {
            ("no match".into(), None)
        }
        Err(age::DecryptError::InvalidMac) => ("HMAC failure".into(), None),
        Err(_) => ("header failure".into(), None),
    }
}

#[test]
fn every_hybrid_cctv_vector_has_the_outcome_it_expects() {
    let dir = corpus();
    let mut names: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: the age vectors are missing: {e}", dir.display()))
        .map(|e| e.expect("a readable directory entry").path())
        .filter(|p| p.file_name().is_some_and(|n| n != "README.md"))
        .collect();
    names.sort();
    assert_eq!(names.len(), 19, "the README promises 19 vectors");
    let mut failures = Vec::new();
    for path in &names {
        let v = read_vector(path);
        let (outcome, plain) = decrypt(&v);
        let name = path.file_name().expect("a file name").to_string_lossy();
        if outcome != v.expect {
            failures.push(format!("{name}: expected {}, got {outcome}", v.expect));
            continue;
        }
        if let (Some(want), Some(plain)) = (&v.payload, plain) {
            let got = sha2::Sha256::digest(&plain)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>();
            if &got != want {
                failures.push(format!("{name}: payload SHA-256 {got}, expected {want}"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
