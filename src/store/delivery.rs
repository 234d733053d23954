//! Delivery metrics (the four DORA keys) per environment over a window, from what the store
//! holds of promotions and their transitions; Git is never read here.
//!
//! Both engines fetch the same rows, one per promotion ([`Attempt`]: its kind, when it was
//! requested, the first commit time its request recorded in the detail it was created with,
//! and when it first entered Syncing, Verifying and Succeeded and left Verifying for Failed),
//! and [`compute`] turns them into figures, so SQLite and PostgreSQL answer the same numbers.
//!
//! For an environment E and a window `[since, until)`:
//!
//! - **Deployments**: promotions and rollbacks into E that entered Succeeded within the window.
//!   Per day: that count divided by the window's length in days.
//! - **Lead time for changes**: for each such deployment that is a promotion (a rollback brings
//!   no new change) and recorded a first commit time, its Succeeded time minus that time. The
//!   first commit time is recorded when the promotion is requested (detail key
//!   [`FIRST_COMMIT_AT`]): the oldest committer time among the commits the promotion brings
//!   that the target did not have, where a commit that is a promotion Stagehand landed into
//!   the source stands for the first commit time that promotion recorded. Reported as the
//!   median and the 90th percentile.
//! - **Change failure rate**: of the promotions and rollbacks into E that entered Verifying
//!   (reached E's cluster) within the window, the share that failed: left Verifying for
//!   Failed, or were followed by a rollback, meaning that the next promotion into E whose
//!   commit landed (entered Syncing), in the order they were requested, is a rollback. Those
//!   that never landed (Rejected, Aborted, failed in pre-flight or at the push, or still
//!   waiting) changed nothing and are passed over.
//! - **Time to restore**: for each failure counted above, from the failure (the Failed
//!   transition, or else the rollback's request) to the Succeeded time of the first promotion or
//!   rollback into E requested after the failed one that Succeeded. Failures with no such
//!   success yet are counted as unrestored. Reported as the median and the 90th percentile.
//!
//! The window selects the events that are measured; what followed them (the next promotion, the
//! deployment that restored) is looked up in everything the store holds. Percentiles
//! interpolate linearly between the two nearest ranks, as PostgreSQL's `percentile_cont` does:
//! the median of an even count is the mean of the middle two. Durations below zero (a commit
//! dated after the deployment by a skewed clock) count as zero.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use super::{PromotionKind, to_millis};

/// The key of a promotion's detail (JSON) that holds the first commit time of its change, in
/// milliseconds since the Unix epoch, as the promotion engine writes it at request time.
pub const FIRST_COMMIT_AT: &str = "firstCommitAt";

/// The window when none is asked for, and that `/metrics` reports: 30 days.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(30 * 86_400);
/// The longest window one may ask for: about ten years.
pub const MAX_WINDOW: Duration = Duration::from_secs(3_660 * 86_400);

/// Which environments, over which window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryQuery {
    /// The environments to report, each in the answer in this order (with zeros when nothing
    /// happened in it).
    pub environments: Vec<String>,
    /// The window's start, included.
    pub since: SystemTime,
    /// The window's end, excluded.
    pub until: SystemTime,
}

/// A median and 90th percentile over some durations.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Spread {
    /// How many durations there were.
    pub count: u32,
    /// `None` when there were none.
    pub median: Option<Duration>,
    /// `None` when there were none.
    pub p90: Option<Duration>,
}

/// The delivery metrics of one environment over a window; see the module's documentation for
/// what each counts.
#[derive(Debug, Clone, PartialEq)]
pub struct DeliveryMetrics {
    /// The environment.
    pub environment: String,
    /// Promotions and rollbacks that Succeeded within the window.
    pub deployments: u32,
    /// `deployments` per day of the window.
    pub deployments_per_day: f64,
    /// From the first commit of a change to its promotion's success.
    pub lead_time: Spread,
    /// Promotions and rollbacks that reached the cluster (entered Verifying) within the window.
    pub changes: u32,
    /// Of those, the ones that failed verification or were followed by a rollback.
    pub failed_changes: u32,
    /// `failed_changes / changes`; `None` when no change reached the cluster.
    pub change_failure_ratio: Option<f64>,
    /// From each failure to the next success, for the failures that have one.
    pub time_to_restore: Spread,
    /// Failures not followed by a success yet.
    pub unrestored: u32,
}

/// One promotion as the metrics read it; times in milliseconds since the Unix epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Attempt {
    pub environment: String,
    pub kind: PromotionKind,
    pub requested_at: i64,
    pub first_commit_at: Option<i64>,
    /// When it first entered Syncing: its commit had landed.
    pub syncing_at: Option<i64>,
    pub verifying_at: Option<i64>,
    /// When it left Verifying for Failed.
    pub verification_failed_at: Option<i64>,
    pub succeeded_at: Option<i64>,
}

/// The one query both engines run, one row per promotion as [`Attempt`] reads it, with each
/// engine's way of reading [`FIRST_COMMIT_AT`] from the JSON of `t.detail` (`first_commit`), of
/// matching a list of environments (`in_environments`, one parameter) and of naming the
/// window's start (`since`, the other). Ordered by environment, then request. The first commit
/// time comes from the detail the promotion was created with (its first transition), which no
/// later transition replaces.
///
/// Only promotions that moved at or after the window's start are read: whatever the figures
/// of the window look at did. A change that reached the cluster in the window moved then; the
/// promotions after it land (one at a time per environment) and succeed after it, so later
/// still.
pub(super) fn attempts_query(first_commit: &str, in_environments: &str, since: &str) -> String {
    format!(
        "SELECT p.target_environment, p.kind, p.created_at,
             MIN(CASE WHEN t.seq = 1 THEN {first_commit} END),
             MIN(CASE WHEN t.to_state = 'Syncing' THEN t.at END),
             MIN(CASE WHEN t.to_state = 'Verifying' THEN t.at END),
             MIN(CASE WHEN t.from_state = 'Verifying' AND t.to_state = 'Failed' THEN t.at END),
             MIN(CASE WHEN t.to_state = 'Succeeded' THEN t.at END)
         FROM promotion p JOIN promotion_transition t ON t.promotion_seq = p.seq
         WHERE p.target_environment {in_environments} AND p.updated_at >= {since}
         GROUP BY p.seq
         ORDER BY p.target_environment, p.seq"
    )
}

/// The figures of `query` from `attempts`, which must hold, per environment in request order,
/// every promotion into it that moved at or after `query.since`.
pub(super) fn compute(query: &DeliveryQuery, attempts: &[Attempt]) -> Vec<DeliveryMetrics> {
    let since = to_millis(query.since);
    let until = to_millis(query.until);
    let mut by_environment: HashMap<&str, Vec<&Attempt>> = HashMap::new();
    for attempt in attempts {
        by_environment
            .entry(attempt.environment.as_str())
            .or_default()
            .push(attempt);
    }
    query
        .environments
        .iter()
        .map(|environment| {
            let own = by_environment
                .get(environment.as_str())
                .map(Vec::as_slice)
                .unwrap_or_default();
            one(environment, own, since, until)
        })
        .collect()
}

fn one(environment: &str, attempts: &[&Attempt], since: i64, until: i64) -> DeliveryMetrics {
    let within = |time: Option<i64>| time.is_some_and(|t| since <= t && t < until);
    let mut deployments = 0u32;
    let mut lead_times = Vec::new();
    let mut changes = 0u32;
    let mut failed_changes = 0u32;
    let mut restores = Vec::new();
    let mut unrestored = 0u32;
    for (i, attempt) in attempts.iter().enumerate() {
        if within(attempt.succeeded_at) {
            deployments += 1;
            if let (PromotionKind::Promotion, Some(done), Some(first)) =
                (attempt.kind, attempt.succeeded_at, attempt.first_commit_at)
            {
                lead_times.push(done - first);
            }
        }
        if !within(attempt.verifying_at) {
            continue;
        }
        changes += 1;
        let later = &attempts[i + 1..];
        let failed_at = attempt.verification_failed_at.or_else(|| {
            later
                .iter()
                .find(|next| next.syncing_at.is_some())
                .filter(|next| next.kind == PromotionKind::Rollback)
                .map(|rollback| rollback.requested_at)
        });
        let Some(failed_at) = failed_at else {
            continue;
        };
        failed_changes += 1;
        match later.iter().find_map(|next| next.succeeded_at) {
            Some(restored_at) => restores.push(restored_at - failed_at),
            None => unrestored += 1,
        }
    }
    let days = (until - since) as f64 / 86_400_000.0;
    DeliveryMetrics {
        environment: environment.to_owned(),
        deployments,
        deployments_per_day: if days > 0.0 {
            f64::from(deployments) / days
        } else {
            0.0
        },
        lead_time: spread(lead_times),
        changes,
        failed_changes,
        change_failure_ratio: (changes > 0).then(|| f64::from(failed_changes) / f64::from(changes)),
        time_to_restore: spread(restores),
        unrestored,
    }
}

/// The median and 90th percentile of durations in milliseconds.
fn spread(mut millis: Vec<i64>) -> Spread {
    for m in &mut millis {
        *m = (*m).max(0);
    }
    millis.sort_unstable();
    Spread {
        count: u32::try_from(millis.len()).unwrap_or(u32::MAX),
        median: percentile(&millis, 0.5),
        p90: percentile(&millis, 0.9),
    }
}

/// Linear interpolation between the closest ranks of `sorted` (`percentile_cont`), to the
/// millisecond that times are stored in.
fn percentile(sorted: &[i64], p: f64) -> Option<Duration> {
    let last = sorted.len().checked_sub(1)?;
    let rank = p * last as f64;
    let below = rank.floor() as usize;
    let above = rank.ceil() as usize;
    let low = sorted[below] as f64;
    let high = sorted[above] as f64;
    let millis = low + (high - low) * (rank - below as f64);
    Some(Duration::from_millis(millis.round() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: i64 = 3_600_000;

    fn attempt(kind: PromotionKind, requested: i64) -> Attempt {
        Attempt {
            environment: "prod".to_owned(),
            kind,
            requested_at: requested * HOUR,
            first_commit_at: None,
            syncing_at: None,
            verifying_at: None,
            verification_failed_at: None,
            succeeded_at: None,
        }
    }

    /// Landed and reached the cluster at `hour`, succeeded an hour later.
    fn deployed(kind: PromotionKind, hour: i64) -> Attempt {
        Attempt {
            syncing_at: Some(hour * HOUR),
            verifying_at: Some(hour * HOUR),
            succeeded_at: Some((hour + 1) * HOUR),
            ..attempt(kind, hour - 1)
        }
    }

    fn failed_changes(attempts: &[Attempt]) -> (u32, u32) {
        let query = DeliveryQuery {
            environments: vec!["prod".to_owned()],
            since: SystemTime::UNIX_EPOCH,
            until: SystemTime::UNIX_EPOCH + Duration::from_secs(1_000 * 3_600),
        };
        let m = &compute(&query, attempts)[0];
        (m.changes, m.failed_changes)
    }

    #[test]
    fn only_a_rollback_that_is_the_next_promotion_to_land_marks_a_change_failed() {
        use PromotionKind::{Promotion, Rollback};
        let change = deployed(Promotion, 10);
        let rollback = deployed(Rollback, 20);
        // Directly followed by a rollback: failed.
        assert_eq!(failed_changes(&[change.clone(), rollback.clone()]), (2, 1));
        // Promotions that never landed (rejected, failed in pre-flight, still waiting for
        // approval) changed nothing: the rollback is still the next change.
        let never_landed = attempt(Promotion, 12);
        assert_eq!(
            failed_changes(&[change.clone(), never_landed, rollback.clone()]),
            (2, 1)
        );
        // One that landed and then failed to sync is the next change, which the rollback
        // undid: the first change does not count as failed.
        let landed_then_failed = Attempt {
            syncing_at: Some(13 * HOUR),
            ..attempt(Promotion, 12)
        };
        assert_eq!(
            failed_changes(&[change.clone(), landed_then_failed, rollback]),
            (2, 0)
        );
        // A rollback that has not landed yet does not count yet.
        let asked = attempt(Rollback, 12);
        assert_eq!(failed_changes(&[change, asked]), (1, 0));
    }

    #[test]
    fn percentiles_interpolate_between_the_nearest_ranks() {
        let ms = |v: &[i64]| percentile(v, 0.5).map(|d| d.as_millis());
        assert_eq!(ms(&[]), None);
        assert_eq!(ms(&[7]), Some(7));
        // Even count: the mean of the middle two.
        assert_eq!(ms(&[1_000, 3_000]), Some(2_000));
        assert_eq!(ms(&[1_000, 2_000, 9_000]), Some(2_000));
        // p90 of 1..=10 seconds: rank 0.9 × 9 = 8.1, between 9 s and 10 s.
        let tens: Vec<i64> = (1..=10).map(|s| s * 1_000).collect();
        assert_eq!(percentile(&tens, 0.9).map(|d| d.as_millis()), Some(9_100));
    }
}
