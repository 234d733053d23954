//! The rules a promotion is held to, as pure functions of the pipeline's policy and the facts
//! the engine gathered: whether a freeze window holds it and until when, who may approve it and
//! how many approvals it still lacks, and how long the source must still soak. No I/O, no clock:
//! the caller passes `now`.

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use jiff::civil::Date;
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Span, Timestamp};

use crate::pipeline::{ApprovalPolicy, FreezeSchedule, FreezeWindow, WeeklyTime};
use crate::store;

#[cfg(test)]
mod tests;

/// How far a chain of back-to-back windows is followed. Weekly windows that together cover the
/// whole week never end; such a freeze reports this far ahead instead of looping forever.
const FOLLOW_AT_MOST: SignedDuration = SignedDuration::from_hours(366 * 24);

/// A freeze window holds promotions now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frozen {
    /// The index of the window in the environment's `freezeWindows`.
    pub window: usize,
    /// When promotions become possible again: the end of this window, or of the last window
    /// that overlaps it or starts right when it ends, and so on.
    pub until: Timestamp,
    /// The window's reason, as the file gives it.
    pub reason: Option<String>,
}

/// The freeze that holds promotions at `now`, if any. A window is active from its start
/// (included) to its end (excluded). When several are active, the one that ends last is named.
pub fn active_freeze(windows: &[FreezeWindow], now: Timestamp) -> Option<Frozen> {
    let zones: Vec<TimeZone> = windows.iter().map(|w| zone(&w.timezone)).collect();
    let end_at = |i: usize, at: Timestamp| active_until(&windows[i], &zones[i], at);

    let (window, mut until) = (0..windows.len())
        .filter_map(|i| Some((i, end_at(i, now)?)))
        // The latest end wins; on a tie the window listed first.
        .max_by(|(i, a), (j, b)| a.cmp(b).then(j.cmp(i)))?;
    let horizon = now.checked_add(FOLLOW_AT_MOST).unwrap_or(Timestamp::MAX);
    // A window active at `until` (overlapping, or starting exactly then) keeps the freeze on.
    // Each step moves `until` to a later end, so this ends.
    while until < horizon {
        match (0..windows.len()).filter_map(|i| end_at(i, until)).max() {
            Some(later) if later > until => until = later,
            _ => break,
        }
    }
    Some(Frozen {
        window,
        until: until.min(horizon),
        reason: windows[window].reason.clone(),
    })
}

/// The pipeline was validated with the same time zone database; a zone missing now (the
/// database changed under a running service) falls back to UTC rather than lifting the freeze.
fn zone(name: &str) -> TimeZone {
    if name == "UTC" {
        return TimeZone::UTC;
    }
    TimeZone::get(name).unwrap_or(TimeZone::UTC)
}

/// The end of the occurrence of `window` that contains `at`, if one does.
fn active_until(window: &FreezeWindow, tz: &TimeZone, at: Timestamp) -> Option<Timestamp> {
    let (from, until) = match window.schedule {
        FreezeSchedule::Absolute { from, until } => (from, until),
        FreezeSchedule::Weekly { start, end } => weekly_occurrence(start, end, tz, at)?,
    };
    (from <= at && at < until).then_some(until)
}

/// The latest occurrence of a weekly window that starts at or before `at`, as instants. Both
/// ends are wall-clock times in `tz`, so a window keeps its local hours across a DST change.
fn weekly_occurrence(
    start: WeeklyTime,
    end: WeeklyTime,
    tz: &TimeZone,
    at: Timestamp,
) -> Option<(Timestamp, Timestamp)> {
    let today = at.to_zoned(tz.clone()).date();
    let back = (today.weekday().to_monday_zero_offset() - weekday(start)).rem_euclid(7);
    let mut start_date = add_days(today, -i64::from(back))?;
    let mut from = local(start_date, start, tz)?;
    if from > at {
        start_date = add_days(start_date, -7)?;
        from = local(start_date, start, tz)?;
    }
    let mut ahead = (weekday(end) - weekday(start)).rem_euclid(7);
    // Same weekday with an end at or before the start: the window runs into the next week.
    if ahead == 0 && (end.hour, end.minute) <= (start.hour, start.minute) {
        ahead = 7;
    }
    let until = local(add_days(start_date, i64::from(ahead))?, end, tz)?;
    Some((from, until))
}

fn weekday(time: WeeklyTime) -> i8 {
    // 0..=6, checked when the pipeline was read.
    i8::try_from(time.weekday).unwrap_or(0)
}

fn add_days(date: Date, days: i64) -> Option<Date> {
    date.checked_add(Span::new().try_days(days).ok()?).ok()
}

/// A wall-clock time on `date` in `tz`. A time skipped by a DST change moves forward by the
/// gap; a time that occurs twice is its first occurrence (jiff's "compatible" rule, as RFC 5545
/// calendars do).
fn local(date: Date, time: WeeklyTime, tz: &TimeZone) -> Option<Timestamp> {
    let hour = i8::try_from(time.hour).ok()?;
    let minute = i8::try_from(time.minute).ok()?;
    let zoned = date.at(hour, minute, 0, 0).to_zoned(tz.clone()).ok()?;
    Some(zoned.timestamp())
}

/// Someone asked to approve a promotion.
#[derive(Debug, Clone, Copy)]
pub struct Approver<'a> {
    /// The identity's name, as the requester's is recorded.
    pub name: &'a str,
    /// The identity's e-mail; empty when the tokens file gives none.
    pub email: &'a str,
    /// The identity's groups, checked against `approval.groups`.
    pub groups: &'a [String],
}

/// Who asked for a promotion.
#[derive(Debug, Clone, Copy)]
pub struct Requester<'a> {
    /// The identity's name.
    pub name: &'a str,
    /// Its e-mail when it asked; empty when the tokens file gave none.
    pub email: &'a str,
}

/// Why an approval is refused. The environment and promotion are named by the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
// Each variant is described by its message, and its fields by the names the message uses.
#[allow(missing_docs)]
pub enum Refusal {
    #[error(
        "only members of {} may approve promotions into this environment",
        groups.join(", ")
    )]
    NotInGroups { groups: Vec<String> },
    #[error(
        "you requested this promotion, and this environment needs someone else to approve it \
         (allowSelfApproval is false)"
    )]
    SelfApproval,
    #[error(
        "{email} is the author of a commit in the promoted range, and this environment needs \
         approvers who did not write the change (allowAuthorApproval is false)"
    )]
    AuthorOfChange { email: String },
    #[error(
        "your identity has no e-mail, so it cannot be told apart from the authors of the change, \
         and this environment needs approvers who did not write it (allowAuthorApproval is \
         false); give it an e-mail in the tokens file"
    )]
    NoEmail,
}

/// Whether `approver` may approve a promotion that `requester` asked for and that carries
/// commits by `authors` (their Git e-mails). Persons are compared, not identities: two
/// identities with the same e-mail are one person.
pub fn may_approve(
    policy: &ApprovalPolicy,
    approver: &Approver,
    requester: &Requester,
    authors: &[String],
) -> Result<(), Refusal> {
    if !in_groups(policy, approver.groups) {
        return Err(Refusal::NotInGroups {
            groups: policy.groups.clone(),
        });
    }
    let email = normalized_email(approver.email);
    if !policy.allow_self_approval
        && (approver.name == requester.name
            || email.is_some() && email == normalized_email(requester.email))
    {
        return Err(Refusal::SelfApproval);
    }
    if !policy.allow_author_approval {
        let Some(email) = email else {
            return Err(Refusal::NoEmail);
        };
        if authors
            .iter()
            .any(|author| normalized_email(author).as_ref() == Some(&email))
        {
            return Err(Refusal::AuthorOfChange {
                email: approver.email.trim().to_owned(),
            });
        }
    }
    Ok(())
}

/// Where a promotion stands with its approvals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    /// The names of the approvers that count, each once, in the order they approved.
    pub counted: Vec<String>,
    /// How many more approvals the policy needs.
    pub missing: u32,
    /// The groups whose members may approve; empty means any authenticated identity.
    pub groups: Vec<String>,
}

/// Counts `approvals` against `policy` as it is now, each approver with the groups and e-mail
/// it has now (the caller looks them up): an approval counts only if [`may_approve`] would
/// allow it today, an identity counts once, and so does an e-mail (one person with two tokens
/// is still one pair of eyes).
pub fn approval_progress(
    policy: &ApprovalPolicy,
    approvals: &[store::Approval],
    requester: &Requester,
    authors: &[String],
) -> Progress {
    let mut counted: Vec<String> = Vec::new();
    let mut emails = HashSet::new();
    for approval in approvals {
        let approver = Approver {
            name: &approval.approver,
            email: &approval.email,
            groups: &approval.groups,
        };
        if may_approve(policy, &approver, requester, authors).is_err()
            || counted.contains(&approval.approver)
        {
            continue;
        }
        if let Some(email) = normalized_email(&approval.email)
            && !emails.insert(email)
        {
            continue;
        }
        counted.push(approval.approver.clone());
    }
    let counted_len = u32::try_from(counted.len()).unwrap_or(u32::MAX);
    Progress {
        missing: policy.required.saturating_sub(counted_len),
        counted,
        groups: policy.groups.clone(),
    }
}

fn in_groups(policy: &ApprovalPolicy, groups: &[String]) -> bool {
    policy.groups.is_empty() || groups.iter().any(|g| policy.groups.contains(g))
}

/// E-mails compare trimmed and case-insensitively; an empty one matches nothing.
fn normalized_email(email: &str) -> Option<String> {
    let email = email.trim();
    (!email.is_empty()).then(|| email.to_lowercase())
}

/// How much longer the source must run the revision it applied at `applied_at`; `None` once it
/// has soaked. Without an apply time the whole soak remains; a clock that went back counts as no
/// time passed.
pub fn soak_remaining(
    soak: Duration,
    applied_at: Option<SystemTime>,
    now: SystemTime,
) -> Option<Duration> {
    if soak.is_zero() {
        return None;
    }
    let Some(applied_at) = applied_at else {
        return Some(soak);
    };
    let ran = now.duration_since(applied_at).unwrap_or(Duration::ZERO);
    soak.checked_sub(ran).filter(|left| !left.is_zero())
}
