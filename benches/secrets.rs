//! Side by side in one run: decrypting SOPS files with the real sops Go binary and with
//! Stagehand (its CLI, one process per file like sops, and its library in-process).
//!
//! `cargo bench --bench secrets`. Needs `sops` (STAGEHAND_SOPS, or the path recorded by
//! `scripts/setup.sh`) and `age-keygen`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use stagehand::secrets::{self, Format, Identities};

fn recorded(var: &str) -> Option<PathBuf> {
    if let Some(v) = std::env::var_os(var).filter(|v| !v.is_empty()) {
        return Some(v.into());
    }
    let home = std::env::var_os("HOME")?;
    let env = std::fs::read_to_string(Path::new(&home).join(".cache/stagehand/env.sh")).ok()?;
    env.lines()
        .filter_map(|l| l.strip_prefix("export "))
        .filter_map(|l| l.split_once('='))
        .find(|(k, _)| *k == var)
        .map(|(_, v)| PathBuf::from(v.trim_matches('"')))
}

fn run(cmd: &mut Command) -> Vec<u8> {
    let out = cmd.output().expect("the command runs");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn k8s_secret(i: usize) -> String {
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n    name: app-{i}\n    namespace: shop\n    labels:\n        app.kubernetes.io/name: app-{i}\ntype: Opaque\nstringData:\n    DATABASE_URL: postgres://app:pw{i}@db.shop.svc:5432/app\n    REDIS_PASSWORD: r3d1s-{i}-secret\n    API_TOKEN: tok_{i}_0123456789abcdef0123456789abcdef\n    SMTP_PASSWORD: smtp-{i}\n    TLS_KEY: |\n        -----BEGIN PRIVATE KEY-----\n        MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC{i}\n        -----END PRIVATE KEY-----\n"
    )
}

fn large(keys: usize) -> String {
    let mut s = String::from("data:\n");
    for i in 0..keys {
        s.push_str(&format!("    key_{i}: value-{i}-{}\n", "x".repeat(i % 40)));
    }
    s
}

fn time(f: impl FnOnce()) -> Duration {
    let start = Instant::now();
    f();
    start.elapsed()
}

fn report(what: &str, sops: Duration, cli: Duration, lib: Duration) {
    println!(
        "{what}: sops {:.1} ms | stagehand CLI {:.1} ms ({:.1}x faster) | stagehand library {:.2} ms ({:.0}x faster)",
        sops.as_secs_f64() * 1e3,
        cli.as_secs_f64() * 1e3,
        sops.as_secs_f64() / cli.as_secs_f64(),
        lib.as_secs_f64() * 1e3,
        sops.as_secs_f64() / lib.as_secs_f64(),
    );
}

fn main() {
    let sops = recorded("STAGEHAND_SOPS").expect("sops is installed (scripts/setup.sh)");
    let keygen = recorded("STAGEHAND_AGE_KEYGEN").unwrap_or_else(|| "age-keygen".into());
    let stagehand = env!("CARGO_BIN_EXE_stagehand");
    let dir = tempfile::tempdir().expect("a temp dir");
    let key = dir.path().join("key.txt");
    run(Command::new(&keygen).arg("-o").arg(&key));
    let recipient =
        String::from_utf8(run(Command::new(&keygen).arg("-y").arg(&key))).expect("ASCII");
    let recipient = recipient.trim();
    let mut ids = Identities::new();
    ids.add_file(&key).expect("the key loads");

    let encrypt_to = |recipient: &str, name: &str, plain: &str, extra: &[&str]| -> PathBuf {
        let path = dir.path().join(name);
        std::fs::write(&path, plain).expect("writable");
        let enc = run(Command::new(&sops)
            .args(["-e", "--age", recipient])
            .args(extra)
            .arg(&path));
        std::fs::write(&path, enc).expect("writable");
        path
    };
    let encrypt =
        |name: &str, plain: &str, extra: &[&str]| encrypt_to(recipient, name, plain, extra);
    let files: Vec<PathBuf> = (0..100)
        .map(|i| {
            encrypt(
                &format!("secret-{i}.yaml"),
                &k8s_secret(i),
                &["--encrypted-regex", "^(data|stringData)$"],
            )
        })
        .collect();
    let big = encrypt("large.yaml", &large(5000), &[]);

    let cmd_with = |program: &dyn AsRef<std::ffi::OsStr>, key: &Path| {
        let mut c = Command::new(program);
        c.env_clear()
            .env("SOPS_AGE_KEY_FILE", key)
            .env("HOME", dir.path());
        c
    };
    let cmd = |program: &dyn AsRef<std::ffi::OsStr>| cmd_with(program, &key);
    // Warm the page cache and check both tools agree before timing.
    for f in files.iter().take(3).chain([&big]) {
        let a = run(cmd(&sops).arg("-d").arg(f));
        let b = run(cmd(&stagehand).args(["secrets", "decrypt"]).arg(f));
        assert_eq!(a, b, "{} decrypts differently", f.display());
    }
    let contents: Vec<Vec<u8>> = files
        .iter()
        .map(|f| std::fs::read(f).expect("readable"))
        .collect();

    let sops_100 = time(|| {
        files
            .iter()
            .for_each(|f| drop(run(cmd(&sops).arg("-d").arg(f))))
    });
    let cli_100 = time(|| {
        files
            .iter()
            .for_each(|f| drop(run(cmd(&stagehand).args(["secrets", "decrypt"]).arg(f))))
    });
    let lib_100 = time(|| {
        for (f, c) in files.iter().zip(&contents) {
            let plain = secrets::decrypt(c, Format::Yaml, &ids, f).expect("decrypts");
            std::hint::black_box(plain.expose().len());
        }
    });
    report(
        "100 Kubernetes Secrets, one call per file",
        sops_100,
        cli_100,
        lib_100,
    );

    let big_content = std::fs::read(&big).expect("readable");
    let sops_big = time(|| drop(run(cmd(&sops).arg("-d").arg(&big))));
    let cli_big = time(|| drop(run(cmd(&stagehand).args(["secrets", "decrypt"]).arg(&big))));
    let lib_big = time(|| {
        let plain = secrets::decrypt(&big_content, Format::Yaml, &ids, &big).expect("decrypts");
        std::hint::black_box(plain.expose().len());
    });
    report("one file with 5,000 keys", sops_big, cli_big, lib_big);

    // The same 100 Secrets encrypted to a post-quantum (mlkem768x25519) recipient.
    let pq = secrets::keygen(secrets::KeyType::PostQuantum);
    let pq_key = dir.path().join("pq.txt");
    secrets::write_new_key_file(&pq_key, &pq).expect("the key file is written");
    let mut pq_ids = Identities::new();
    pq_ids.add_file(&pq_key).expect("the PQ key loads");
    let pq_files: Vec<PathBuf> = (0..100)
        .map(|i| {
            encrypt_to(
                &pq.recipient,
                &format!("pq-secret-{i}.yaml"),
                &k8s_secret(i),
                &["--encrypted-regex", "^(data|stringData)$"],
            )
        })
        .collect();
    for f in pq_files.iter().take(3) {
        let a = run(cmd_with(&sops, &pq_key).arg("-d").arg(f));
        let b = run(cmd_with(&stagehand, &pq_key)
            .args(["secrets", "decrypt"])
            .arg(f));
        assert_eq!(a, b, "{} decrypts differently", f.display());
    }
    let pq_contents: Vec<Vec<u8>> = pq_files
        .iter()
        .map(|f| std::fs::read(f).expect("readable"))
        .collect();
    let sops_pq = time(|| {
        pq_files
            .iter()
            .for_each(|f| drop(run(cmd_with(&sops, &pq_key).arg("-d").arg(f))))
    });
    let cli_pq = time(|| {
        pq_files.iter().for_each(|f| {
            drop(run(cmd_with(&stagehand, &pq_key)
                .args(["secrets", "decrypt"])
                .arg(f)))
        })
    });
    let lib_pq = time(|| {
        for (f, c) in pq_files.iter().zip(&pq_contents) {
            let plain = secrets::decrypt(c, Format::Yaml, &pq_ids, f).expect("decrypts");
            std::hint::black_box(plain.expose().len());
        }
    });
    report(
        "100 Kubernetes Secrets to a post-quantum recipient, one call per file",
        sops_pq,
        cli_pq,
        lib_pq,
    );
    println!(
        "post-quantum vs X25519, library, per file: {:.3} ms vs {:.3} ms ({:.2}x; the KEM adds {:.3} ms)",
        lib_pq.as_secs_f64() * 10.0,
        lib_100.as_secs_f64() * 10.0,
        lib_pq.as_secs_f64() / lib_100.as_secs_f64(),
        (lib_pq.as_secs_f64() - lib_100.as_secs_f64()) * 10.0,
    );
}
