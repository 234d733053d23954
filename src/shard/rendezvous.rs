//! Rendezvous (highest random weight) hashing: each environment goes to the live replica whose
//! hash with it is highest. When a replica joins, only the environments it now wins move to it;
//! when one leaves, only its own move, spread over the others.

use sha2::{Digest, Sha256};

fn weight(member: &str, key: &str) -> u64 {
    let mut hash = Sha256::new();
    hash.update(member.as_bytes());
    hash.update([0]);
    hash.update(key.as_bytes());
    let digest = hash.finalize();
    u64::from_be_bytes(
        digest[..8]
            .try_into()
            .expect("a SHA-256 digest has more than 8 bytes"),
    )
}

/// The member `key` belongs to; `None` without members. Every replica that sees the same
/// members picks the same one.
pub fn preferred<'a>(members: &'a [String], key: &str) -> Option<&'a str> {
    members
        .iter()
        .map(|m| (weight(m, key), m))
        // Ties (practically never) go to the smaller name, so that the pick is still the same
        // on every replica.
        .max_by(|(wa, ma), (wb, mb)| wa.cmp(wb).then_with(|| mb.cmp(ma)))
        .map(|(_, m)| m.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("env-{i}")).collect()
    }

    #[test]
    fn every_key_has_one_member_whatever_the_order_of_the_members() {
        let ab = vec!["a".to_owned(), "b".to_owned()];
        let ba = vec!["b".to_owned(), "a".to_owned()];
        for key in keys(100) {
            assert_eq!(preferred(&ab, &key), preferred(&ba, &key));
        }
        assert_eq!(preferred(&[], "dev"), None);
    }

    #[test]
    fn a_joining_member_takes_only_keys_it_wins_and_gets_a_fair_share() {
        let two = vec!["replica-a".to_owned(), "replica-b".to_owned()];
        let mut three = two.clone();
        three.push("replica-c".to_owned());
        let all = keys(3000);
        let mut to_c = 0;
        for key in &all {
            let before = preferred(&two, key).expect("two members");
            let after = preferred(&three, key).expect("three members");
            if after != before {
                assert_eq!(after, "replica-c", "{key} moved between the old members");
                to_c += 1;
            }
        }
        // A third of 3000, give or take what chance allows (about 6 standard deviations).
        assert!(
            (850..=1150).contains(&to_c),
            "{to_c} keys moved to the new member"
        );
    }
}
