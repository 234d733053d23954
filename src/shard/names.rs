//! The names and labels of Stagehand's Leases: DNS-safe whatever the pipeline, environment and
//! replica are called, and never two for two different things.

use sha2::{Digest, Sha256};

/// Label on every Lease of a pipeline: its name as [`label`] spells it.
pub const PIPELINE_LABEL: &str = "stagehand.dev/pipeline";
/// Label saying what a Lease is for: [`ROLE_ENVIRONMENT`], [`ROLE_REPLICA`] or [`ROLE_LEADER`].
pub const ROLE_LABEL: &str = "stagehand.dev/role";
/// An environment's Lease: its holder reconciles it.
pub const ROLE_ENVIRONMENT: &str = "environment";
/// A replica's membership Lease: held while the replica is alive.
pub const ROLE_REPLICA: &str = "replica";
/// The leader's Lease: its holder drives promotions.
pub const ROLE_LEADER: &str = "leader";
/// Annotation with the environment's name as the pipeline spells it.
pub const ENVIRONMENT_ANNOTATION: &str = "stagehand.dev/environment";

/// `text` as a DNS label (and label value): itself when it already is one of at most 40
/// characters, else a cleaned prefix and a hash of the whole, so that two names never meet.
pub fn label(text: &str) -> String {
    let valid = !text.is_empty()
        && text.len() <= 40
        && text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !text.starts_with('-')
        && !text.ends_with('-');
    if valid {
        return text.to_owned();
    }
    let cleaned: String = text
        .chars()
        .map(|c| c.to_ascii_lowercase())
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                c
            } else {
                '-'
            }
        })
        .take(30)
        .collect();
    let cleaned = cleaned.trim_matches('-');
    let hash = hex::encode(&Sha256::digest(text.as_bytes())[..5]);
    if cleaned.is_empty() {
        hash
    } else {
        format!("{cleaned}-{hash}")
    }
}

/// The Lease of `environment` of `pipeline`.
pub fn environment(pipeline: &str, environment: &str) -> String {
    format!("stagehand.{}.env.{}", label(pipeline), label(environment))
}

/// The membership Lease of `replica`.
pub fn member(pipeline: &str, replica: &str) -> String {
    format!("stagehand.{}.replica.{}", label(pipeline), label(replica))
}

/// The leader's Lease.
pub fn leader(pipeline: &str) -> String {
    format!("stagehand.{}.leader", label(pipeline))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dns_subdomain(name: &str) -> bool {
        name.len() <= 253
            && name.split('.').all(|part| {
                !part.is_empty()
                    && part.len() <= 63
                    && part
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                    && !part.starts_with('-')
                    && !part.ends_with('-')
            })
    }

    #[test]
    fn plain_names_stay_readable() {
        assert_eq!(environment("shop", "dev"), "stagehand.shop.env.dev");
        assert_eq!(
            member("shop", "stagehand-7d9f-x2"),
            "stagehand.shop.replica.stagehand-7d9f-x2"
        );
        assert_eq!(leader("shop"), "stagehand.shop.leader");
    }

    #[test]
    fn long_or_odd_names_are_hashed_into_dns_names_that_stay_apart() {
        let long = "a".repeat(200);
        let names = [
            environment(&long, "dev"),
            environment("shop", &format!("{long}x")),
            environment("shop", &format!("{long}y")),
            member("shop", "Host_Name.example.org"),
            member("shop", "host-name-example-org"),
            environment("Shop", "dev"),
            environment("shop", "dev"),
            environment("shop", "---"),
        ];
        for name in &names {
            assert!(dns_subdomain(name), "{name} is not a DNS subdomain");
        }
        let distinct: std::collections::HashSet<_> = names.iter().collect();
        assert_eq!(distinct.len(), names.len(), "{names:?}");
    }
}
