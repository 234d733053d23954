//! The pipeline page: the environments left to right in promotion order, what each runs, and
//! the promotions between them with what each waits for.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use maud::{Markup, html};
use serde::Deserialize;

use super::{OPEN_STATES, ask};
use crate::api::auth::Permission;
use crate::api::web::layout::{self, Page};
use crate::api::web::session::Viewer;
use crate::api::web::{Failure, Web, is_partial};
use crate::proto;
use crate::proto::environment_service_server::EnvironmentService as _;
use crate::proto::promotion_service_server::PromotionService as _;

/// Environments per page: a pipeline of a thousand stays quick to serve and to read.
pub const ENVIRONMENTS_PER_PAGE: usize = 24;

/// Promotions listed under "Recently": what ran where (or failed to), newest first.
const RECENT: u32 = 12;

/// Open promotions shown in an environment's card; a longer queue says there are more.
const OPEN_PER_ENVIRONMENT: u32 = 20;

/// The open promotions into one environment, and whether its queue holds more than shown.
struct OpenPromotions {
    promotions: Vec<proto::Promotion>,
    more: bool,
}

/// The environments shown, in columns by their distance from the start of the pipeline: those
/// promoted from the same stage stand one above the other, so a fork reads as one.
fn stages<'a>(
    all: &[proto::Environment],
    shown: &[&'a proto::Environment],
) -> Vec<Vec<&'a proto::Environment>> {
    let from: HashMap<&str, &str> = all
        .iter()
        .map(|e| (e.name.as_str(), e.promotes_from.as_str()))
        .collect();
    let depth = |name: &str| {
        let mut depth = 0;
        let mut at = name;
        // The pipeline has no cycles (validated); the bound only keeps a bad answer finite.
        while let Some(parent) = from.get(at).filter(|p| !p.is_empty()) {
            depth += 1;
            at = parent;
            if depth > all.len() {
                break;
            }
        }
        depth
    };
    let mut stages: Vec<Vec<&proto::Environment>> = Vec::new();
    for environment in shown {
        let at = depth(&environment.name);
        if stages.len() <= at {
            stages.resize_with(at + 1, Vec::new);
        }
        stages[at].push(environment);
    }
    stages.retain(|stage| !stage.is_empty());
    stages
}

fn recent_list(promotions: &[proto::Promotion]) -> Markup {
    html! {
        @if promotions.is_empty() { p { "No promotions yet." } }
        ol.recent {
            @for promotion in promotions {
                @let (state, _) = layout::state(promotion.state);
                li.recent-promotion data-promotion=(promotion.id) data-state=(state) {
                    (layout::ago(promotion.update_time.as_ref())) " "
                    (layout::state_badge(promotion.state)) " "
                    a href={ "/ui/promotions/" (promotion.id) } {
                        @if promotion.rollback { "rollback of " (promotion.target_environment) }
                        @else { (promotion.source_environment) " → " (promotion.target_environment) }
                    }
                    " " (layout::commit(&promotion.revision)) " by " (promotion.requested_by)
                }
            }
        }
    }
}

#[derive(Deserialize)]
pub struct Paging {
    #[serde(default)]
    page: usize,
}

pub async fn page(
    State(web): State<Arc<Web>>,
    viewer: Viewer,
    headers: HeaderMap,
    Query(paging): Query<Paging>,
) -> Result<Page, Failure> {
    let id = &viewer.identity;
    let list = web
        .environments
        .list_environments(ask(id, proto::ListEnvironmentsRequest {}))
        .await?
        .into_inner();
    let pages = list
        .environments
        .len()
        .div_ceil(ENVIRONMENTS_PER_PAGE)
        .max(1);
    let current = paging.page.min(pages - 1);
    let shown: Vec<&proto::Environment> = list
        .environments
        .iter()
        .skip(current * ENVIRONMENTS_PER_PAGE)
        .take(ENVIRONMENTS_PER_PAGE)
        .collect();
    // The open promotions into each environment shown, listed by environment so that none is
    // missed however many the pipeline has, and read whole, as listings carry no blockers or
    // approvals. Those of other pages are not fetched: a page costs the same at any size.
    let listings = futures::future::try_join_all(shown.iter().map(|environment| {
        web.promotions.list_promotions(ask(
            id,
            proto::ListPromotionsRequest {
                environment: environment.name.clone(),
                states: OPEN_STATES.iter().map(|s| *s as i32).collect(),
                page_size: OPEN_PER_ENVIRONMENT,
                ..Default::default()
            },
        ))
    }))
    .await?;
    let mut open: HashMap<String, OpenPromotions> = HashMap::new();
    for (environment, listing) in shown.iter().zip(&listings) {
        open.insert(
            environment.name.clone(),
            OpenPromotions {
                promotions: Vec::new(),
                more: !listing.get_ref().next_page_token.is_empty(),
            },
        );
    }
    let details = futures::future::join_all(
        listings
            .iter()
            .flat_map(|listing| &listing.get_ref().promotions)
            .map(|p| {
                web.promotions
                    .get_promotion(ask(id, proto::GetPromotionRequest { id: p.id.clone() }))
            }),
    )
    .await;
    // One that ended or was hidden since the listing is left out.
    for promotion in details
        .into_iter()
        .flatten()
        .map(tonic::Response::into_inner)
    {
        if let Some(into) = open.get_mut(&promotion.target_environment) {
            into.promotions.push(promotion);
        }
    }
    let recent = web
        .promotions
        .list_promotions(ask(
            id,
            proto::ListPromotionsRequest {
                // Open ones are shown with their blockers in their environment's card.
                states: [
                    proto::PromotionState::Succeeded,
                    proto::PromotionState::Failed,
                    proto::PromotionState::Rejected,
                    proto::PromotionState::Aborted,
                ]
                .iter()
                .map(|s| *s as i32)
                .collect(),
                page_size: RECENT,
                ..Default::default()
            },
        ))
        .await?
        .into_inner()
        .promotions;
    let commits: Vec<String> = shown
        .iter()
        .filter_map(|e| e.status.as_ref())
        .flat_map(|s| [s.applied_revision.clone(), s.desired_revision.clone()])
        .filter(|c| !c.is_empty())
        .collect();
    let service = web.supervisor.service();
    let subjects = service.commit_subjects(commits).await;
    let pipeline = service.pipeline();
    let now = jiff::Timestamp::now();
    let body = html! {
        h1 { "Pipeline " (list.pipeline) }
        @if !list.rejected_pipeline.is_empty() {
            p.error role="alert" { "The pipeline file was changed and refused; the last valid one runs. " (list.rejected_pipeline) }
        }
        @if pages > 1 { (pager(current, pages, list.environments.len())) }
        ol.pipeline {
            @for (depth, stage) in stages(&list.environments, &shown).iter().enumerate() {
                li.stage aria-label={ "Stage " (depth + 1) } {
                    @for environment in stage {
                        @let freeze = pipeline
                            .environments
                            .iter()
                            .find(|e| e.name == environment.name)
                            .and_then(|e| crate::promotion::policy::active_freeze(&e.freeze_windows, now));
                        (environment_card(&web, &viewer, environment, &subjects, freeze.as_ref(), &open[&environment.name]))
                    }
                }
            }
        }
        @if pages > 1 { (pager(current, pages, list.environments.len())) }
        h2 { "Recently" }
        (recent_list(&recent))
    };
    Ok(Page {
        title: "Pipeline".to_owned(),
        viewer,
        body,
        partial: is_partial(&headers),
    })
}

fn pager(current: usize, pages: usize, total: usize) -> Markup {
    html! {
        nav.pager aria-label="Environment pages" {
            @if current > 0 { a rel="prev" href={ "/ui/?page=" (current - 1) } { "← Previous" } }
            span { "Environments " (current * ENVIRONMENTS_PER_PAGE + 1) "–" (((current + 1) * ENVIRONMENTS_PER_PAGE).min(total)) " of " (total) }
            @if current + 1 < pages { a rel="next" href={ "/ui/?page=" (current + 1) } { "Next →" } }
        }
    }
}

fn environment_card(
    web: &Web,
    viewer: &Viewer,
    environment: &proto::Environment,
    subjects: &HashMap<String, (String, i64)>,
    freeze: Option<&crate::promotion::policy::Frozen>,
    open: &OpenPromotions,
) -> Markup {
    let status = environment.status.clone().unwrap_or_default();
    let name = &environment.name;
    let runs = if status.applied_revision.is_empty() {
        &status.desired_revision
    } else {
        &status.applied_revision
    };
    let drifted = status
        .objects
        .iter()
        .filter(|o| !o.drifted_fields.is_empty())
        .count();
    let may_request = web.may(&viewer.identity, name, Permission::Request);
    html! {
        section.environment data-environment=(name) aria-labelledby={ "env-" (name) } {
            h2 #{ "env-" (name) } { a href={ "/ui/environments/" (name) } { (name) } }
            @if !environment.promotes_from.is_empty() {
                p.from { "promoted from " a href={ "/ui/environments/" (environment.promotes_from) } { (environment.promotes_from) } }
            }
            dl.facts {
                dt { "Runs" }
                dd {
                    @if runs.is_empty() {
                        span.revision data-revision="" { "nothing yet" }
                    } @else {
                        span.revision data-revision=(runs) { (layout::commit(runs)) }
                        @if let Some((subject, time)) = subjects.get(runs) {
                            " " span.subject { (subject) }
                            " " span.age { (layout::ago_seconds(*time)) }
                        }
                    }
                }
                @if !status.desired_revision.is_empty() && status.desired_revision != *runs {
                    dt { "Git has" }
                    dd.desired data-revision=(status.desired_revision) {
                        (layout::commit(&status.desired_revision))
                        @if let Some((subject, _)) = subjects.get(&status.desired_revision) {
                            " " span.subject { (subject) }
                        }
                    }
                }
                dt { "Health" }
                dd { (layout::health(status.health)) }
                dt { "Sync" }
                dd.sync { (sync_words(&status)) }
                dt { "Drift" }
                dd.drift data-count=(drifted) {
                    @if drifted == 0 { "none" } @else { (drifted) " object" @if drifted > 1 { "s" } " drifted" }
                }
                dt { "Freeze" }
                dd.freeze {
                    @match freeze {
                        Some(frozen) => {
                            span.frozen { "❄ frozen until " (frozen.until.strftime("%Y-%m-%d %H:%M UTC")) }
                            @if let Some(reason) = &frozen.reason { " — " (reason) }
                        }
                        None => {
                            @if environment.freeze_windows.is_empty() { "no windows" } @else { "open" }
                        }
                    }
                }
            }
            @for alert in &status.alerts { p.alert role="alert" { "⚠ " (alert) } }
            @if !status.last_error.is_empty() { p.error { (status.last_error) } }
            @if !open.promotions.is_empty() {
                h3 { "Promotions into " (name) }
                ul.promotions {
                    @for promotion in &open.promotions { (promotion_item(promotion)) }
                }
                @if open.more {
                    p.more { "More than " (OPEN_PER_ENVIRONMENT) " are open; " code { "stagehand promotions " (name) } " lists them." }
                }
            }
            @if may_request && !environment.promotes_from.is_empty() {
                details.dialog #{ "promote-" (name) } {
                    summary { "Promote " (environment.promotes_from) " → " (name) "…" }
                    form.promote method="post" action={ "/ui/environments/" (name) "/promote" } {
                        (layout::csrf(viewer))
                        p { "Requests a promotion of what " b { (environment.promotes_from) } " runs now into " b { (name) } "; its approvals follow." }
                        label for={ "reason-" (name) } { "Reason" }
                        input #{ "reason-" (name) } name="reason" type="text" maxlength="500";
                        button type="submit" { "Request promotion" }
                    }
                }
            }
        }
    }
}

fn sync_words(status: &proto::EnvironmentStatus) -> Markup {
    html! {
        @if status.suspended { "⏸ suspended" }
        @else if status.out_of_sync { "↻ out of sync" }
        @else if status.applied_revision.is_empty() { "not synced yet" }
        @else { "✓ in sync" }
        @if !status.reason.is_empty() { " (" (status.reason) ")" }
        @if let Some(time) = &status.last_sync_time { ", " (layout::ago(Some(time))) }
    }
}

/// A promotion as one line: its state, what it promotes, and what it waits for.
pub fn promotion_item(promotion: &proto::Promotion) -> Markup {
    let (state, _) = layout::state(promotion.state);
    html! {
        li.promotion data-promotion=(promotion.id) data-state=(state) {
            a href={ "/ui/promotions/" (promotion.id) } {
                (layout::state_badge(promotion.state)) " "
                @if promotion.rollback { "rollback to " } @else { "promote " }
                (layout::commit(&promotion.revision))
                @if !promotion.source_environment.is_empty() { " from " (promotion.source_environment) }
            }
            " by " (promotion.requested_by)
            @if promotion.approvals_missing > 0 {
                " · " (promotion.approvals_missing) " approval" @if promotion.approvals_missing > 1 { "s" } " missing"
            }
            (layout::blockers(&promotion.blockers))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn environment(name: &str, from: &str) -> proto::Environment {
        proto::Environment {
            name: name.to_owned(),
            promotes_from: from.to_owned(),
            ..Default::default()
        }
    }

    #[test]
    fn environments_promoted_from_the_same_stage_share_a_column() {
        let all = [
            environment("dev", ""),
            environment("staging", "dev"),
            environment("prod", "staging"),
            environment("qa", "dev"),
        ];
        let shown: Vec<&proto::Environment> = all.iter().collect();
        let names: Vec<Vec<&str>> = stages(&all, &shown)
            .iter()
            .map(|stage| stage.iter().map(|e| e.name.as_str()).collect())
            .collect();
        assert_eq!(names, [vec!["dev"], vec!["staging", "qa"], vec!["prod"]]);
        // A page that starts past the first stage has no empty column.
        let later: Vec<&proto::Environment> = all[2..].iter().collect();
        let names: Vec<Vec<&str>> = stages(&all, &later)
            .iter()
            .map(|stage| stage.iter().map(|e| e.name.as_str()).collect())
            .collect();
        assert_eq!(names, [vec!["qa"], vec!["prod"]]);
    }
}
