//! The frame every page shares, and the small pieces pages are made of. maud escapes every
//! value it renders, so a commit subject or object name is always text.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::response::{Html, IntoResponse, Response};
use maud::{DOCTYPE, Markup, html};

use super::session::Viewer;
use crate::proto;

/// A page of the view. A live update's fetch gets `main`'s content alone.
pub struct Page {
    pub title: String,
    pub viewer: Viewer,
    pub body: Markup,
    pub partial: bool,
}

impl IntoResponse for Page {
    fn into_response(self) -> Response {
        if self.partial {
            return Html(self.body.into_string()).into_response();
        }
        let viewer = &self.viewer;
        Html(
            html! {
                (DOCTYPE)
                html lang="en" {
                    (head(&self.title))
                    body {
                        header {
                            a.brand href="/ui/" { "Stagehand" }
                            nav aria-label="Pages" {
                                a href="/ui/" { "Pipeline" }
                                a href="/ui/compare" { "Compare" }
                                a href="/ui/audit" { "Audit" }
                                a href="/ui/delivery" { "Delivery" }
                            }
                            span.who {
                                "Signed in as " b #identity { (viewer.identity.name) }
                            }
                            form.sign-out method="post" action="/ui/sign-out" {
                                (csrf(viewer))
                                button type="submit" { "Sign out" }
                            }
                        }
                        main data-live="" { (self.body) }
                        p #live-status role="status" aria-live="polite" {}
                    }
                }
            }
            .into_string(),
        )
        .into_response()
    }
}

fn head(title: &str) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            title { (title) " · Stagehand" }
            link rel="stylesheet" href="/ui/assets/app.css";
            script src="/ui/assets/app.js" defer {}
        }
    }
}

/// A page outside the signed-in frame: sign-in and errors.
pub fn bare(title: &str, body: Markup) -> Html<String> {
    Html(
        html! {
            (DOCTYPE)
            html lang="en" {
                (head(title))
                body.bare { main { (body) } }
            }
        }
        .into_string(),
    )
}

/// The hidden field every state-changing form carries.
pub fn csrf(viewer: &Viewer) -> Markup {
    html! { input type="hidden" name="csrf" value=(viewer.csrf); }
}

/// A health as a word and a symbol, so that it reads without colour.
pub fn health(value: i32) -> Markup {
    let (word, symbol, class) = match proto::Health::try_from(value) {
        Ok(proto::Health::Healthy) => ("Healthy", "✓", "healthy"),
        Ok(proto::Health::Progressing) => ("Progressing", "◌", "progressing"),
        Ok(proto::Health::Degraded) => ("Degraded", "!", "degraded"),
        Ok(proto::Health::Failed) => ("Failed", "✗", "failed"),
        _ => ("Unknown", "?", "unknown"),
    };
    html! { span class={ "health " (class) } { span.symbol aria-hidden="true" { (symbol) } " " (word) } }
}

/// A promotion state's name in data attributes, and its label.
pub fn state(value: i32) -> (&'static str, &'static str) {
    use proto::PromotionState as S;
    match S::try_from(value).unwrap_or(S::Unspecified) {
        S::Pending => ("pending", "Pending"),
        S::AwaitingApproval => ("awaiting_approval", "Awaiting approval"),
        S::Approved => ("approved", "Approved"),
        S::Promoting => ("promoting", "Promoting"),
        S::Syncing => ("syncing", "Syncing"),
        S::Verifying => ("verifying", "Verifying"),
        S::Succeeded => ("succeeded", "Succeeded"),
        S::Rejected => ("rejected", "Rejected"),
        S::Failed => ("failed", "Failed"),
        S::Aborted => ("aborted", "Aborted"),
        S::Unspecified => ("unknown", "Unknown"),
    }
}

/// A state as a badge with its word.
pub fn state_badge(value: i32) -> Markup {
    let (name, label) = state(value);
    html! { span class={ "state " (name) } { (label) } }
}

/// The first seven characters of a commit id.
pub fn short(commit: &str) -> &str {
    commit.get(..7).unwrap_or(commit)
}

/// A commit id as its short form, with the whole id for copying.
pub fn commit(commit: &str) -> Markup {
    html! { code.commit title=(commit) { (short(commit)) } }
}

fn seconds_of(time: &prost_types::Timestamp) -> i64 {
    time.seconds
}

/// Seconds since the epoch now.
pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// How long ago, in the largest whole unit, with the exact time (UTC) on hover.
pub fn ago_seconds(seconds: i64) -> Markup {
    let exact = jiff::Timestamp::from_second(seconds)
        .map(|t| t.strftime("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_default();
    html! { time datetime=(exact) title=(exact) { (span_words(now() - seconds)) " ago" } }
}

/// [`ago_seconds`] of a protobuf time; a dash when unset.
pub fn ago(time: Option<&prost_types::Timestamp>) -> Markup {
    match time {
        Some(time) => ago_seconds(seconds_of(time)),
        None => html! { "–" },
    }
}

/// A duration in the largest whole unit: `45s`, `12m`, `3h`, `2d`.
pub fn span_words(seconds: i64) -> String {
    let seconds = seconds.max(0);
    match seconds {
        s if s < 90 => format!("{s}s"),
        s if s < 90 * 60 => format!("{}m", s / 60),
        s if s < 36 * 3600 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

/// A waiting promotion's blockers, in words.
pub fn blockers(blockers: &[proto::Blocker]) -> Markup {
    html! {
        @if !blockers.is_empty() {
            ul.blockers {
                @for blocker in blockers {
                    li.blocker data-kind=(blocker.kind) {
                        b { (blocker_title(&blocker.kind)) ": " }
                        (blocker.message)
                        @if !blocker.groups.is_empty() {
                            " (" (if blocker.kind == "approvals" { "may approve: " } else { "groups: " })
                            (blocker.groups.join(", ")) ")"
                        }
                        @if !blocker.objects.is_empty() {
                            " — " (blocker.objects.join(", "))
                        }
                    }
                }
            }
        }
    }
}

fn blocker_title(kind: &str) -> &str {
    match kind {
        "approvals" => "Waiting for approval",
        "freeze" => "Freeze window",
        "queue" => "Queued",
        "source_health" => "Source not healthy",
        "source_verification" => "Source failed verification",
        "suspended" => "Suspended",
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_that_looks_like_markup_is_escaped() {
        let subject = "<script>alert(1)</script>";
        let rendered = html! { span.subject { (subject) } }.into_string();
        assert!(!rendered.contains("<script>"), "{rendered}");
        assert!(rendered.contains("&lt;script&gt;"), "{rendered}");
    }

    #[test]
    fn durations_read_in_their_largest_unit() {
        assert_eq!(span_words(5), "5s");
        assert_eq!(span_words(600), "10m");
        assert_eq!(span_words(7200), "2h");
        assert_eq!(span_words(5 * 86_400), "5d");
        assert_eq!(span_words(-3), "0s");
    }
}
