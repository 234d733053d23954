//! The container registry the image tests run against (tests/it/support/registry.rs): Debian's
//! docker-registry with htpasswd auth, images pushed by the real skopeo.

use crate::support::cluster::unique_suffix;
use crate::support::registry::{Options, TestRegistry, registry};

fn repository(prefix: &str) -> String {
    format!("{prefix}-{}/app", unique_suffix())
}

#[test]
fn pushes_give_each_tag_its_own_digest_as_the_registry_reports_it() {
    let registry = registry();
    let repo = repository("harness");
    let first = registry.push(&repo, "v1.0.0");
    let second = registry.push(&repo, "v1.1.0");
    assert!(first.starts_with("sha256:"), "{first}");
    assert_ne!(first, second, "each push is an image of its own");
    assert_eq!(registry.skopeo_digest(&repo, "v1.0.0"), first);
    assert_eq!(registry.skopeo_digest(&repo, "v1.1.0"), second);
    let mut tags = registry.skopeo_tags(&repo);
    tags.sort();
    assert_eq!(tags, ["v1.0.0", "v1.1.0"]);
}

#[test]
fn the_shared_registry_refuses_a_wrong_password() {
    let registry = registry();
    let (user, _) = registry
        .credentials
        .as_ref()
        .expect("the shared registry asks for a password");
    let out = std::process::Command::new("skopeo")
        .args(["list-tags", "--tls-verify=false", "--creds"])
        .arg(format!("{user}:not-the-password"))
        .arg(format!(
            "docker://{}/{}",
            registry.address,
            repository("refused")
        ))
        .output()
        .expect("skopeo runs");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("unauthorized") || stderr.contains("authentication required"),
        "{stderr}"
    );
}

#[test]
fn a_private_registry_without_auth_takes_pushes_and_stops_when_dropped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let address;
    {
        let registry = TestRegistry::start(
            dir.path(),
            Options {
                no_auth: true,
                ..Options::default()
            },
        );
        assert!(registry.credentials.is_none());
        let digest = registry.push("open/app", "1");
        assert_eq!(registry.skopeo_digest("open/app", "1"), digest);
        address = registry.address.clone();
    }
    assert!(
        std::net::TcpStream::connect(&address).is_err(),
        "the registry at {address} still listens after the drop"
    );
}
