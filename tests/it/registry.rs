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

mod client {
    //! `stagehand::image::registry::Client` against the real registry.

    use stagehand::image::policy::TagPolicy;
    use stagehand::image::registry::{Client, Credentials, Error, Options};

    use super::repository;
    use crate::support::cluster::install_crypto_provider;
    use crate::support::registry::{
        Options as RegistryOptions, PagingFront, TestRegistry, registry,
    };

    fn client(options: Options) -> Client {
        install_crypto_provider();
        let credentials =
            Credentials::from_docker_config(&registry().docker_config()).expect("a valid config");
        Client::with_options(credentials, options)
    }

    #[tokio::test]
    async fn every_page_of_tags_is_listed_through_the_link_header() {
        let registry = registry();
        let repo = repository("pages");
        registry.push(&repo, "v1.0.0");
        let mut expected: Vec<String> = (0..11).map(|i| format!("build-{i}")).collect();
        registry.retag(&repo, "v1.0.0", &expected).await;
        expected.push("v1.0.0".to_owned());
        // The registry's own answers, cut into pages of the `n` asked for (see PagingFront).
        let front = PagingFront::start(registry).await;
        install_crypto_provider();
        let config = String::from_utf8(registry.docker_config())
            .expect("UTF-8")
            .replace(&registry.address, &front.address);
        let client = Client::with_options(
            Credentials::from_docker_config(config.as_bytes()).expect("a valid config"),
            Options {
                page_size: Some(5),
                ..Options::default()
            },
        );
        let image = format!("{}/{repo}", front.address);
        let mut listed = client.tags(&image).await.expect("the tags are listed");
        // One request meets the basic-auth challenge, then three pages of at most 5.
        assert_eq!(client.requests(), 4);
        listed.sort();
        let mut by_skopeo = registry.skopeo_tags(&repo);
        by_skopeo.sort();
        expected.sort();
        assert_eq!(listed, expected);
        assert_eq!(listed, by_skopeo);

        // The challenge is remembered: the next listing sends the login at once.
        let again = client.tags(&image).await.expect("listed again");
        assert_eq!(again.len(), 12);
        assert_eq!(client.requests(), 7);
    }

    #[tokio::test]
    async fn digests_and_creation_times_are_the_pushed_ones() {
        let registry = registry();
        let repo = repository("digest");
        let pushed = registry.push_created(&repo, "1.2.3", "2026-02-03T04:05:06Z");
        let other = registry.push_created(&repo, "1.2.4", "2026-02-04T00:00:00Z");
        let client = client(Options::default());
        let image = format!("{}/{repo}", registry.address);
        let digest = client.digest(&image, "1.2.3").await.expect("a digest");
        assert_eq!(digest, pushed);
        assert_eq!(digest, registry.skopeo_digest(&repo, "1.2.3"));
        assert_eq!(
            client.digest(&image, "1.2.4").await.expect("a digest"),
            other
        );
        let created = client.created(&image, "1.2.3").await.expect("a config");
        assert_eq!(
            created.map(|t| t.to_string()).as_deref(),
            Some("2026-02-03T04:05:06Z")
        );
    }

    #[tokio::test]
    async fn a_policy_chooses_among_the_listed_tags() {
        let registry = registry();
        let repo = repository("policy");
        for tag in ["v1.9.0", "v1.10.0", "v2.0.0-rc.1", "latest"] {
            registry.push(&repo, tag);
        }
        let client = client(Options::default());
        let tags = client
            .tags(&format!("{}/{repo}", registry.address))
            .await
            .expect("listed");
        let policy: TagPolicy =
            serde_yaml_ng::from_str("semver: {range: '>=1.0.0'}").expect("a valid policy");
        let choice = policy.choose(&tags);
        assert_eq!(choice.chosen.as_deref(), Some("v1.10.0"));
        let reasons: Vec<String> = choice
            .skipped
            .iter()
            .map(|s| format!("{}: {}", s.tag, s.reason))
            .collect();
        for expected in [
            "latest: not a semantic version",
            "v2.0.0-rc.1: a prerelease, which the range does not ask for",
            "v1.9.0: v1.10.0 is chosen over it",
        ] {
            assert!(reasons.iter().any(|r| r == expected), "{reasons:?}");
        }
    }

    #[tokio::test]
    async fn a_wrong_password_is_an_authentication_error_naming_registry_and_repository() {
        install_crypto_provider();
        let registry = registry();
        let repo = repository("wrong");
        registry.push(&repo, "1");
        let (user, password) = registry.credentials.clone().expect("a login");
        let wrong = format!("{password}-but-wrong");
        let config = serde_json::json!({"auths": {&registry.address: {"username": user, "password": wrong}}});
        let client = Client::new(
            Credentials::from_docker_config(config.to_string().as_bytes()).expect("valid"),
        );
        let image = format!("{}/{repo}", registry.address);
        for error in [
            client.tags(&image).await.expect_err("refused"),
            client.digest(&image, "1").await.expect_err("refused"),
        ] {
            assert!(
                matches!(error, Error::AuthenticationFailed { .. }),
                "{error:?}"
            );
            let text = stagehand::error_chain::ErrorChain(&error).to_string();
            assert!(text.contains(&registry.address), "{text}");
            assert!(text.contains(&repo), "{text}");
            assert!(text.contains("authentication failed"), "{text}");
            assert!(
                !text.contains(&wrong) && !text.contains(&password),
                "{text}"
            );
            assert!(!format!("{error:?}").contains(&wrong), "{error:?}");
        }
    }

    #[tokio::test]
    async fn no_credentials_for_a_registry_that_asks_is_its_own_error() {
        install_crypto_provider();
        let registry = registry();
        let repo = repository("anonymous");
        let client = Client::new(Credentials::none());
        let error = client
            .tags(&format!("{}/{repo}", registry.address))
            .await
            .expect_err("refused");
        assert!(
            matches!(error, Error::CredentialsMissing { .. }),
            "{error:?}"
        );
        assert!(error.to_string().contains("none are configured"), "{error}");
    }

    #[tokio::test]
    async fn missing_repositories_and_tags_are_not_found() {
        let registry = registry();
        let repo = repository("missing");
        let client = client(Options::default());
        let image = format!("{}/{repo}", registry.address);
        let error = client.tags(&image).await.expect_err("no such repository");
        assert!(matches!(error, Error::NotFound { .. }), "{error:?}");
        registry.push(&repo, "1");
        let error = client.digest(&image, "2").await.expect_err("no such tag");
        assert!(matches!(error, Error::NotFound { .. }), "{error:?}");
        assert!(
            error.to_string().contains("manifest 2 not found"),
            "{error}"
        );
        let error = client.created(&image, "../1").await.expect_err("not a tag");
        assert!(matches!(error, Error::InvalidTag { .. }), "{error:?}");
    }

    #[tokio::test]
    async fn a_registry_without_auth_needs_no_credentials() {
        install_crypto_provider();
        let dir = tempfile::tempdir().expect("tempdir");
        let open = TestRegistry::start(
            dir.path(),
            RegistryOptions {
                no_auth: true,
                ..RegistryOptions::default()
            },
        );
        let digest = open.push("open/app", "1.0.0");
        let client = Client::new(Credentials::none());
        let image = format!("{}/open/app", open.address);
        assert_eq!(client.tags(&image).await.expect("listed"), ["1.0.0"]);
        assert_eq!(
            client.digest(&image, "1.0.0").await.expect("digest"),
            digest
        );
        assert_eq!(client.requests(), 2, "no challenge, no token");
    }
}
