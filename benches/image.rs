//! Side by side: listing a repository of 10,000 tags from a real registry (Debian's
//! docker-registry on loopback, htpasswd auth) and choosing one by a semver policy, against
//! `skopeo list-tags` on the same repository in the same run. Then `TagPolicy::choose` alone over
//! the 10,000 tags. Run with `cargo bench --bench image`; prints medians and ratios.
//!
//! The tags are one pushed image (`skopeo copy`) and its manifest PUT under 9,999 more names:
//! 9,000 versions `1.M.P` and `2.0.0-rc.N`, and 1,000 `main-<n>` build tags. Debian's registry
//! answers the whole list at once (it ignores `n`), as skopeo asks for it.

#[path = "../tests/it/support/registry.rs"]
#[allow(dead_code)]
mod registry;

use std::process::Command;
use std::time::{Duration, Instant};

use stagehand::image::policy::TagPolicy;
use stagehand::image::registry::{Client, Credentials};

const TAGS: usize = 10_000;
const ROUNDS: usize = 7;
const CHOOSE_ROUNDS: usize = 50;
const REPOSITORY: &str = "bench/app";

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn tag_names() -> Vec<String> {
    let mut tags = Vec::with_capacity(TAGS);
    for i in 0..8_900 {
        tags.push(format!("1.{}.{}", i / 100, i % 100));
    }
    for i in 0..100 {
        tags.push(format!("2.0.0-rc.{i}"));
    }
    for i in 0..1_000 {
        tags.push(format!("main-{i}"));
    }
    tags
}

fn skopeo_list(registry: &registry::TestRegistry) -> usize {
    let mut command = Command::new("skopeo");
    command.args(["list-tags", "--tls-verify=false"]);
    if let Some((user, password)) = &registry.credentials {
        command.arg("--creds").arg(format!("{user}:{password}"));
    }
    command.arg(format!("docker://{}/{REPOSITORY}", registry.address));
    let out = command.output().expect("skopeo runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    listed["Tags"].as_array().expect("tags").len()
}

#[tokio::main]
async fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().expect("tempdir");
    let registry = registry::TestRegistry::start(dir.path(), registry::Options::default());
    let names = tag_names();
    let started = Instant::now();
    registry.push(REPOSITORY, &names[0]);
    registry.retag(REPOSITORY, &names[0], &names[1..]).await;
    println!(
        "setup: {} tags in {:.1} s (one skopeo push, {} manifest PUTs)",
        names.len(),
        started.elapsed().as_secs_f64(),
        names.len() - 1
    );

    let credentials = Credentials::from_docker_config(&registry.docker_config()).expect("config");
    let image = format!("{}/{REPOSITORY}", registry.address);
    let policy: TagPolicy =
        serde_yaml_ng::from_str("semver: {range: '>=1.0.0, <2'}").expect("policy");

    // Each round in turn, so a slow spell of the shared machine lands on all alike.
    let (mut cold, mut warm, mut skopeo) = (vec![], vec![], vec![]);
    let warm_client = Client::new(credentials.clone());
    warm_client.tags(&image).await.expect("listed");
    for _ in 0..ROUNDS {
        let t = Instant::now();
        let client = Client::new(credentials.clone());
        let tags = client.tags(&image).await.expect("listed");
        let choice = policy.choose(&tags);
        cold.push(t.elapsed());
        assert_eq!(tags.len(), TAGS);
        assert_eq!(choice.chosen.as_deref(), Some("1.88.99"));

        let t = Instant::now();
        let tags = warm_client.tags(&image).await.expect("listed");
        policy.choose(&tags);
        warm.push(t.elapsed());

        let t = Instant::now();
        assert_eq!(skopeo_list(&registry), TAGS);
        skopeo.push(t.elapsed());
    }
    let (cold, warm, skopeo) = (median(cold), median(warm), median(skopeo));
    println!("list {TAGS} tags + choose (semver), median of {ROUNDS}:");
    println!(
        "  new client (challenge + list): {}  ({:.1}x skopeo)",
        ms(cold),
        skopeo.as_secs_f64() / cold.as_secs_f64()
    );
    println!(
        "  warm client (one request):     {}  ({:.1}x skopeo)",
        ms(warm),
        skopeo.as_secs_f64() / warm.as_secs_f64()
    );
    println!("  skopeo list-tags:              {}", ms(skopeo));

    let regex: TagPolicy = serde_yaml_ng::from_str(
        "regex: {pattern: '^main-(?P<n>\\d+)$', extract: n, sort: numerical}",
    )
    .expect("policy");
    for (label, policy, expected) in [
        ("semver >=1.0.0, <2", &policy, "1.88.99"),
        ("regex numerical", &regex, "main-999"),
    ] {
        let mut samples = Vec::with_capacity(CHOOSE_ROUNDS);
        for _ in 0..CHOOSE_ROUNDS {
            let t = Instant::now();
            let choice = policy.choose(&names);
            samples.push(t.elapsed());
            assert_eq!(choice.chosen.as_deref(), Some(expected));
            assert_eq!(choice.skipped.len(), TAGS - 1);
        }
        println!(
            "choose alone over {TAGS} tags, {label}: {} (median of {CHOOSE_ROUNDS})",
            ms(median(samples))
        );
    }
}
