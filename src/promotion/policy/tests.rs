use std::time::{Duration, SystemTime};

use jiff::Timestamp;

use super::*;
use crate::pipeline::{ApprovalPolicy, FreezeSchedule, FreezeWindow, WeeklyTime};
use crate::store::Approval;

fn at(text: &str) -> Timestamp {
    text.parse().expect("the test's time is RFC 3339")
}

/// `"Fri 16:00"`.
fn weekly_time(text: &str) -> WeeklyTime {
    let (day, time) = text.split_once(' ').expect("day and time");
    let weekday = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]
        .iter()
        .position(|d| *d == day)
        .expect("a weekday");
    let (hour, minute) = time.split_once(':').expect("hh:mm");
    WeeklyTime {
        weekday: u8::try_from(weekday).expect("seven days"),
        hour: hour.parse().expect("hour"),
        minute: minute.parse().expect("minute"),
    }
}

fn weekly(start: &str, end: &str, timezone: &str) -> FreezeWindow {
    FreezeWindow {
        schedule: FreezeSchedule::Weekly {
            start: weekly_time(start),
            end: weekly_time(end),
        },
        timezone: timezone.into(),
        reason: None,
    }
}

fn absolute(from: &str, until: &str) -> FreezeWindow {
    FreezeWindow {
        schedule: FreezeSchedule::Absolute {
            from: at(from),
            until: at(until),
        },
        timezone: "UTC".into(),
        reason: None,
    }
}

fn with_reason(mut window: FreezeWindow, reason: &str) -> FreezeWindow {
    window.reason = Some(reason.into());
    window
}

/// Each case: the time asked about and the end of the freeze then (`None`: not frozen).
fn check_freeze(windows: &[FreezeWindow], cases: &[(&str, Option<&str>)]) {
    for (now, expected) in cases {
        let got = active_freeze(windows, at(now)).map(|f| f.until);
        assert_eq!(got, expected.map(at), "at {now}");
    }
}

// 2026-11-27 is a Friday; 2026-11-30 a Monday.

#[test]
fn a_weekly_window_holds_from_its_start_included_to_its_end_excluded_across_the_week_end() {
    let windows = [weekly("Fri 16:00", "Mon 08:00", "UTC")];
    check_freeze(
        &windows,
        &[
            ("2026-11-26T12:00:00Z", None),
            ("2026-11-27T15:59:59Z", None),
            ("2026-11-27T16:00:00Z", Some("2026-11-30T08:00:00Z")),
            ("2026-11-28T03:00:00Z", Some("2026-11-30T08:00:00Z")),
            ("2026-11-29T23:59:59Z", Some("2026-11-30T08:00:00Z")),
            ("2026-11-30T07:59:59.999Z", Some("2026-11-30T08:00:00Z")),
            ("2026-11-30T08:00:00Z", None),
            ("2026-12-02T12:00:00Z", None),
            ("2026-12-04T17:00:00Z", Some("2026-12-07T08:00:00Z")),
        ],
    );
}

#[test]
fn a_weekly_window_within_one_day_or_ending_before_it_starts_on_the_same_day() {
    check_freeze(
        &[weekly("Fri 10:00", "Fri 12:00", "UTC")],
        &[
            ("2026-11-27T09:59:00Z", None),
            ("2026-11-27T10:00:00Z", Some("2026-11-27T12:00:00Z")),
            ("2026-11-27T12:00:00Z", None),
            ("2026-11-28T11:00:00Z", None),
        ],
    );
    // Mon 10:00 to the next Mon 08:00: everything but Monday 08:00 to 10:00.
    check_freeze(
        &[weekly("Mon 10:00", "Mon 08:00", "UTC")],
        &[
            ("2026-11-30T09:00:00Z", None),
            ("2026-11-30T10:00:00Z", Some("2026-12-07T08:00:00Z")),
            ("2026-11-29T12:00:00Z", Some("2026-11-30T08:00:00Z")),
            ("2026-11-30T07:00:00Z", Some("2026-11-30T08:00:00Z")),
        ],
    );
}

#[test]
fn weekly_windows_keep_their_local_hours_in_their_time_zone() {
    // Winter in Berlin is UTC+1, New York UTC-5.
    check_freeze(
        &[weekly("Fri 16:00", "Mon 08:00", "Europe/Berlin")],
        &[
            ("2026-11-27T14:59:00Z", None),
            ("2026-11-27T15:00:00Z", Some("2026-11-30T07:00:00Z")),
            ("2026-11-30T07:00:00Z", None),
        ],
    );
    check_freeze(
        &[weekly("Fri 16:00", "Mon 08:00", "America/New_York")],
        &[
            ("2026-11-27T20:59:00Z", None),
            ("2026-11-27T21:00:00Z", Some("2026-11-30T13:00:00Z")),
            // Monday 02:00 UTC is still Sunday in New York.
            ("2026-11-30T02:00:00Z", Some("2026-11-30T13:00:00Z")),
        ],
    );
}

#[test]
fn a_weekly_window_across_a_dst_change_in_berlin_ends_at_local_time() {
    let windows = [weekly("Fri 16:00", "Mon 08:00", "Europe/Berlin")];
    // Summer time ends Sun 2026-10-25 03:00 CEST -> 02:00 CET: the window starts at 16:00
    // CEST (14:00 UTC) and ends at 08:00 CET (07:00 UTC), 65 hours later, not 64.
    check_freeze(
        &windows,
        &[
            ("2026-10-23T13:59:00Z", None),
            ("2026-10-23T14:00:00Z", Some("2026-10-26T07:00:00Z")),
            ("2026-10-26T06:30:00Z", Some("2026-10-26T07:00:00Z")),
            ("2026-10-26T07:00:00Z", None),
        ],
    );
    // Summer time starts Sun 2026-03-29 02:00 CET -> 03:00 CEST: 16:00 CET is 15:00 UTC and
    // 08:00 CEST is 06:00 UTC, 63 hours later.
    check_freeze(
        &windows,
        &[
            ("2026-03-27T14:59:00Z", None),
            ("2026-03-27T15:00:00Z", Some("2026-03-30T06:00:00Z")),
            ("2026-03-30T05:59:00Z", Some("2026-03-30T06:00:00Z")),
            ("2026-03-30T06:00:00Z", None),
            ("2026-03-30T06:30:00Z", None),
        ],
    );
    // A start inside the skipped hour moves forward by the gap: 02:30 becomes 03:30 CEST (01:30
    // UTC); the end, 05:00 CEST, is 03:00 UTC.
    check_freeze(
        &[weekly("Sun 02:30", "Sun 05:00", "Europe/Berlin")],
        &[
            ("2026-03-29T01:29:00Z", None),
            ("2026-03-29T01:30:00Z", Some("2026-03-29T03:00:00Z")),
            // The week before, without a DST change: 02:30 CET is 01:30 UTC.
            ("2026-03-22T01:29:00Z", None),
            ("2026-03-22T01:30:00Z", Some("2026-03-22T04:00:00Z")),
        ],
    );
}

#[test]
fn an_absolute_window_holds_from_its_start_to_its_end() {
    let windows = [absolute(
        "2026-12-20T00:00:00Z",
        "2027-01-04T08:00:00+01:00",
    )];
    check_freeze(
        &windows,
        &[
            ("2026-12-19T23:59:59Z", None),
            ("2026-12-20T00:00:00Z", Some("2027-01-04T07:00:00Z")),
            ("2027-01-01T12:00:00Z", Some("2027-01-04T07:00:00Z")),
            ("2027-01-04T07:00:00Z", None),
            ("2027-12-25T00:00:00Z", None),
        ],
    );
}

#[test]
fn chained_and_overlapping_windows_hold_until_the_last_of_the_chain_ends() {
    let windows = [
        weekly("Fri 16:00", "Mon 08:00", "UTC"),
        // Starts exactly when the weekend ends.
        absolute("2026-11-30T08:00:00Z", "2026-11-30T12:00:00Z"),
        // Overlaps the previous one and runs to Wednesday.
        absolute("2026-11-30T11:00:00Z", "2026-12-02T09:00:00Z"),
        // After a gap: not part of the chain.
        absolute("2026-12-02T09:01:00Z", "2026-12-03T00:00:00Z"),
    ];
    check_freeze(
        &windows,
        &[
            ("2026-11-27T16:00:00Z", Some("2026-12-02T09:00:00Z")),
            ("2026-11-30T08:00:00Z", Some("2026-12-02T09:00:00Z")),
            ("2026-11-30T11:30:00Z", Some("2026-12-02T09:00:00Z")),
            ("2026-12-02T09:00:00Z", None),
            ("2026-12-02T09:01:00Z", Some("2026-12-03T00:00:00Z")),
            // The following weekend, the absolute windows are over.
            ("2026-12-05T00:00:00Z", Some("2026-12-07T08:00:00Z")),
        ],
    );
    // Two weekly windows back to back chain every week.
    check_freeze(
        &[
            weekly("Sat 00:00", "Mon 00:00", "UTC"),
            weekly("Fri 16:00", "Sat 00:00", "UTC"),
        ],
        &[("2026-11-27T16:00:00Z", Some("2026-11-30T00:00:00Z"))],
    );
}

#[test]
fn the_window_named_is_the_active_one_that_ends_last_with_its_reason() {
    let windows = [
        with_reason(weekly("Fri 16:00", "Mon 08:00", "UTC"), "weekend"),
        with_reason(
            absolute("2026-11-27T00:00:00Z", "2026-12-01T00:00:00Z"),
            "Black Friday",
        ),
        weekly("Sat 00:00", "Sun 00:00", "UTC"),
    ];
    let frozen = active_freeze(&windows, at("2026-11-28T12:00:00Z")).expect("frozen");
    assert_eq!(
        frozen,
        Frozen {
            window: 1,
            until: at("2026-12-01T00:00:00Z"),
            reason: Some("Black Friday".into()),
        }
    );
    let frozen = active_freeze(&windows, at("2026-12-05T12:00:00Z")).expect("frozen");
    assert_eq!(
        (frozen.window, frozen.reason.as_deref()),
        (0, Some("weekend"))
    );
    // Same end: the window listed first.
    let same = [
        weekly("Sat 00:00", "Mon 08:00", "UTC"),
        weekly("Fri 16:00", "Mon 08:00", "UTC"),
    ];
    let frozen = active_freeze(&same, at("2026-11-28T12:00:00Z")).expect("frozen");
    assert_eq!((frozen.window, frozen.reason), (0, None));
    assert_eq!(active_freeze(&[], at("2026-11-28T12:00:00Z")), None);
}

#[test]
fn weekly_windows_covering_the_whole_week_report_a_year_ahead_instead_of_looping() {
    let windows = [
        weekly("Mon 00:00", "Thu 00:00", "Europe/Berlin"),
        weekly("Thu 00:00", "Mon 00:00", "Europe/Berlin"),
    ];
    let now = at("2026-11-28T12:00:00Z");
    let frozen = active_freeze(&windows, now).expect("always frozen");
    assert_eq!(
        frozen.until,
        now.checked_add(FOLLOW_AT_MOST).expect("in range")
    );
}

fn policy(required: u32, groups: &[&str]) -> ApprovalPolicy {
    ApprovalPolicy {
        required,
        groups: groups.iter().map(|g| (*g).to_owned()).collect(),
        ..ApprovalPolicy::default()
    }
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

/// (policy, approver name, e-mail, groups, requester, expected)
type ApprovalCase<'a> = (
    &'a ApprovalPolicy,
    &'a str,
    &'a str,
    &'a Vec<String>,
    &'a str,
    Result<(), Refusal>,
);

#[test]
fn who_may_approve_follows_groups_self_approval_and_authorship() {
    let release = strings(&["release-managers"]);
    let dev = strings(&["developers"]);
    let both = strings(&["developers", "release-managers"]);
    let authors = strings(&["Alice@Example.com ", "carol@example.com"]);
    let strict = ApprovalPolicy {
        allow_author_approval: false,
        ..policy(2, &["release-managers", "sre"])
    };
    let lenient = ApprovalPolicy {
        allow_self_approval: true,
        ..policy(1, &[])
    };
    let not_in_groups = Err(Refusal::NotInGroups {
        groups: strings(&["release-managers", "sre"]),
    });
    let cases: [ApprovalCase; 13] = [
        (&strict, "bob", "bob@example.com", &release, "alice", Ok(())),
        (&strict, "bob", "bob@example.com", &both, "alice", Ok(())),
        (
            &strict,
            "bob",
            "bob@example.com",
            &dev,
            "alice",
            not_in_groups.clone(),
        ),
        (
            &strict,
            "bob",
            "bob@example.com",
            &Vec::new(),
            "alice",
            not_in_groups,
        ),
        (
            &strict,
            "bob",
            "bob@example.com",
            &release,
            "bob",
            Err(Refusal::SelfApproval),
        ),
        (
            &strict,
            "alice",
            " alice@EXAMPLE.com",
            &release,
            "bob",
            Err(Refusal::AuthorOfChange {
                email: "alice@EXAMPLE.com".into(),
            }),
        ),
        // An approver without an e-mail cannot be told apart from the authors.
        (&strict, "dave", "", &release, "bob", Err(Refusal::NoEmail)),
        (
            &strict,
            "dave",
            "  ",
            &release,
            "bob",
            Err(Refusal::NoEmail),
        ),
        // Another identity of the requester (the same e-mail) is the same person.
        (
            &strict,
            "bob-ci",
            "BOB@example.com",
            &release,
            "bob",
            Err(Refusal::SelfApproval),
        ),
        // Groups empty: anyone; self- and author approval allowed.
        (
            &lenient,
            "bob",
            "bob@example.com",
            &Vec::new(),
            "bob",
            Ok(()),
        ),
        (&lenient, "alice", "alice@example.com", &dev, "bob", Ok(())),
        // The default forbids self-approval and allows author approval.
        (
            &policy(1, &[]),
            "bob",
            "bob@example.com",
            &dev,
            "bob",
            Err(Refusal::SelfApproval),
        ),
        (
            &policy(1, &[]),
            "carol",
            "carol@example.com",
            &dev,
            "bob",
            Ok(()),
        ),
    ];
    for (policy, name, email, groups, requester, expected) in cases {
        let approver = Approver {
            name,
            email,
            groups,
        };
        assert_eq!(
            may_approve(
                policy,
                &approver,
                &Requester {
                    name: requester,
                    email: &format!("{requester}@example.com"),
                },
                &authors
            ),
            expected,
            "{name} <{email}> in {groups:?}, requested by {requester}"
        );
    }
}

#[test]
fn refusals_say_what_the_policy_wants() {
    let groups = Refusal::NotInGroups {
        groups: strings(&["release-managers", "sre"]),
    };
    assert_eq!(
        groups.to_string(),
        "only members of release-managers, sre may approve promotions into this environment"
    );
    assert!(
        Refusal::SelfApproval
            .to_string()
            .contains("allowSelfApproval is false")
    );
    let author = Refusal::AuthorOfChange {
        email: "alice@example.com".into(),
    }
    .to_string();
    assert!(
        author.contains("alice@example.com") && author.contains("allowAuthorApproval is false"),
        "{author}"
    );
}

fn approval(approver: &str, email: &str, groups: &[&str]) -> Approval {
    Approval {
        approver: approver.into(),
        email: email.into(),
        groups: strings(groups),
        at: SystemTime::UNIX_EPOCH,
        comment: String::new(),
    }
}

#[test]
fn approvals_count_once_per_identity_and_only_from_the_groups_of_the_policy_now() {
    let two = policy(2, &["release-managers"]);
    let rm = ["release-managers"];
    // (approvals, counted, missing)
    let cases: Vec<(Vec<Approval>, Vec<&str>, u32)> = vec![
        (vec![], vec![], 2),
        (
            vec![approval("bob", "bob@example.com", &rm)],
            vec!["bob"],
            1,
        ),
        (
            vec![
                approval("bob", "bob@example.com", &rm),
                approval("bob", "bob@example.com", &rm),
            ],
            vec!["bob"],
            1,
        ),
        (
            vec![
                approval("bob", "bob@example.com", &rm),
                approval("carol", "carol@example.com", &rm),
            ],
            vec!["bob", "carol"],
            0,
        ),
        (
            vec![
                approval("bob", "bob@example.com", &rm),
                approval("carol", "carol@example.com", &rm),
                approval("dave", "dave@example.com", &rm),
            ],
            vec!["bob", "carol", "dave"],
            0,
        ),
        // Carol left the group since she approved: her approval no longer counts.
        (
            vec![
                approval("bob", "bob@example.com", &rm),
                approval("carol", "carol@example.com", &["developers"]),
            ],
            vec!["bob"],
            1,
        ),
        // One person behind two identities (same e-mail) counts once.
        (
            vec![
                approval("bob", "bob@example.com", &rm),
                approval("bob-ci", " BOB@example.com", &rm),
            ],
            vec!["bob"],
            1,
        ),
        // Identities without e-mail are told apart by name.
        (
            vec![approval("bob", "", &rm), approval("carol", "", &rm)],
            vec!["bob", "carol"],
            0,
        ),
    ];
    for (approvals, counted, missing) in cases {
        let progress = approval_progress(&two, &approvals, &nobody(), &[]);
        assert_eq!(
            progress,
            Progress {
                counted: strings(&counted),
                missing,
                groups: strings(&["release-managers"]),
            },
            "{approvals:?}"
        );
    }
    // Without groups, anyone counts; without required approvals, nothing is missing.
    let anyone = approval_progress(&policy(1, &[]), &[approval("eve", "", &[])], &nobody(), &[]);
    assert_eq!((anyone.counted, anyone.missing), (strings(&["eve"]), 0));
    assert!(anyone.groups.is_empty());
    assert_eq!(
        approval_progress(&policy(0, &["qa"]), &[], &nobody(), &[]).missing,
        0
    );
}

fn nobody() -> Requester<'static> {
    Requester {
        name: "stagehand",
        email: "",
    }
}

#[test]
fn approvals_that_the_rules_would_refuse_now_do_not_count() {
    let rm = ["release-managers"];
    let strict = ApprovalPolicy {
        allow_author_approval: false,
        ..policy(1, &rm)
    };
    let requester = Requester {
        name: "alice",
        email: "alice@example.com",
    };
    let authors = strings(&["carol@example.com"]);
    for (approval, why) in [
        (
            approval("alice-ci", "Alice@example.com", &rm),
            "the requester's other identity",
        ),
        (approval("carol", "carol@example.com", &rm), "an author"),
        (approval("dave", "", &rm), "no e-mail"),
    ] {
        let progress = approval_progress(&strict, &[approval], &requester, &authors);
        assert_eq!(progress.missing, 1, "{why}");
    }
    let bob = approval("bob", "bob@example.com", &rm);
    assert_eq!(
        approval_progress(&strict, &[bob], &requester, &authors).missing,
        0
    );
}

#[test]
fn the_soak_remaining_counts_from_the_apply_time() {
    let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
    let min = |m: u64| Duration::from_secs(60 * m);
    // (soak, applied_at, now, remaining)
    let cases = [
        (Duration::ZERO, None, t0, None),
        (Duration::ZERO, Some(t0), t0, None),
        (min(30), None, t0, Some(min(30))),
        (min(30), Some(t0), t0, Some(min(30))),
        (min(30), Some(t0), t0 + min(10), Some(min(20))),
        (
            min(30),
            Some(t0),
            t0 + min(30) - Duration::from_nanos(1),
            Some(Duration::from_nanos(1)),
        ),
        (min(30), Some(t0), t0 + min(30), None),
        (min(30), Some(t0), t0 + min(90), None),
        // The clock went back: nothing has passed yet.
        (min(30), Some(t0), t0 - min(5), Some(min(30))),
    ];
    for (soak, applied_at, now, remaining) in cases {
        assert_eq!(
            soak_remaining(soak, applied_at, now),
            remaining,
            "soak {soak:?}, applied {applied_at:?}, now {now:?}"
        );
    }
}
