//! The environment page: its objects with health and drift, its revisions with their sync
//! passes, its audit events, and sync / suspend / resume for those who may.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Redirect, Response};
use maud::html;
use serde::Deserialize;

use super::ask;
use crate::api::auth::Permission;
use crate::api::web::layout::{self, Page};
use crate::api::web::session::Viewer;
use crate::api::web::{Failure, Posted, Web, is_partial};
use crate::proto;
use crate::proto::environment_service_server::EnvironmentService as _;
use crate::proto::promotion_service_server::PromotionService as _;

/// Revisions listed with their sync passes.
const REVISIONS: u32 = 10;
/// Audit events listed.
const EVENTS: u32 = 20;

pub async fn page(
    State(web): State<Arc<Web>>,
    viewer: Viewer,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Page, Failure> {
    let id = &viewer.identity;
    let environment = web
        .environments
        .get_environment(ask(id, proto::GetEnvironmentRequest { name: name.clone() }))
        .await?
        .into_inner();
    let revisions = web
        .environments
        .list_revisions(ask(
            id,
            proto::ListRevisionsRequest {
                name: name.clone(),
                limit: REVISIONS,
            },
        ))
        .await?
        .into_inner()
        .revisions;
    let events = web
        .promotions
        .list_audit_events(ask(
            id,
            proto::ListAuditEventsRequest {
                environment: name.clone(),
                page_size: EVENTS,
                ..Default::default()
            },
        ))
        .await?
        .into_inner()
        .events;
    let status = environment.status.clone().unwrap_or_default();
    let may = |permission| web.may(id, &name, permission);
    let body = html! {
        h1 { "Environment " (name) }
        p {
            (layout::health(status.health)) " · "
            @if status.suspended { "⏸ suspended" } @else if status.out_of_sync { "↻ out of sync" } @else { "✓ in sync" }
            @if !status.applied_revision.is_empty() { " · runs " span.revision data-revision=(status.applied_revision) { (layout::commit(&status.applied_revision)) } }
            @if !status.message.is_empty() { " · " (status.message) }
        }
        @for alert in &status.alerts { p.alert role="alert" { "⚠ " (alert) } }
        @if !status.last_error.is_empty() { p.error { (status.last_error) } }
        div.actions {
            @if may(Permission::Sync) {
                form.sync method="post" action={ "/ui/environments/" (name) "/sync" } {
                    (layout::csrf(&viewer)) button type="submit" { "Sync now" }
                }
            }
            @if may(Permission::Suspend) {
                @if status.suspended {
                    form.resume method="post" action={ "/ui/environments/" (name) "/resume" } {
                        (layout::csrf(&viewer)) button type="submit" { "Resume" }
                    }
                } @else {
                    form.suspend method="post" action={ "/ui/environments/" (name) "/suspend" } {
                        (layout::csrf(&viewer))
                        label for="suspend-reason" { "Reason" }
                        input #suspend-reason name="reason" type="text" maxlength="500";
                        button type="submit" { "Suspend" }
                    }
                }
            }
        }
        h2 { "Objects" }
        div.scroll {
        table.objects {
            thead { tr { th { "Object" } th { "Health" } th { "Last action" } th { "Drift" } } }
            tbody {
                @for object in &status.objects {
                    @let reference = object.object.clone().unwrap_or_default();
                    tr.object data-object={ (reference.kind) "/" (reference.namespace) "/" (reference.name) } {
                        td { (reference.kind) " " @if !reference.namespace.is_empty() { (reference.namespace) "/" } (reference.name) }
                        td { (layout::health(object.health)) @if !object.message.is_empty() { br; small { (object.message) } } }
                        td { (object.action) }
                        td.drift {
                            @if object.drifted_fields.is_empty() && object.ignored_fields.is_empty() { "none" }
                            @for field in &object.drifted_fields { code { (field) } " " }
                            @for field in &object.ignored_fields { code.ignored title="left to another controller by ignoreDifferences" { (field.field) " (ignored)" } " " }
                        }
                    }
                }
            }
        }
        }
        h2 { "Revisions and syncs" }
        ol.sync-history {
            @for revision in &revisions {
                li.revision-entry data-revision=(revision.commit) {
                    (layout::commit(&revision.commit)) " " span.subject { (revision.summary) } " "
                    (layout::ago(revision.time.as_ref()))
                    @if revision.applied { " " span.badge { "running" } }
                    @if !revision.promotion_id.is_empty() {
                        " · promotion " a href={ "/ui/promotions/" (revision.promotion_id) } { (revision.promotion_id) }
                        @if !revision.verified { " (unverified trailers)" }
                    }
                    @if !revision.syncs.is_empty() {
                        ul {
                            @for run in &revision.syncs {
                                li.sync-run {
                                    (layout::ago(run.end_time.as_ref())) ": " (run.result)
                                    " · " (run.created) " created, " (run.changed) " changed, " (run.pruned) " pruned, " (run.drifted) " drifted"
                                    @if run.passes > 1 { " (" (run.passes) " passes)" }
                                    @if !run.message.is_empty() { " — " (run.message) }
                                }
                            }
                        }
                    }
                }
            }
        }
        h2 { "Events" }
        (super::audit::table(&events))
    };
    Ok(Page {
        title: name,
        viewer,
        body,
        partial: is_partial(&headers),
    })
}

#[derive(Deserialize)]
pub struct ActionForm {
    #[serde(default)]
    reason: String,
}

pub async fn act(
    State(web): State<Arc<Web>>,
    Path((name, action)): Path<(String, String)>,
    Posted { viewer, form }: Posted<ActionForm>,
) -> Result<Response, Failure> {
    let id = &viewer.identity;
    let back = format!("/ui/environments/{name}");
    match action.as_str() {
        "sync" => {
            web.environments
                .sync_environment(ask(
                    id,
                    proto::SyncEnvironmentRequest {
                        name,
                        fetch: true,
                        wait: false,
                    },
                ))
                .await?;
        }
        "suspend" => {
            web.environments
                .suspend_environment(ask(
                    id,
                    proto::SuspendEnvironmentRequest {
                        name,
                        reason: form.reason,
                    },
                ))
                .await?;
        }
        "resume" => {
            web.environments
                .resume_environment(ask(id, proto::ResumeEnvironmentRequest { name }))
                .await?;
        }
        "promote" => {
            let promotion = web
                .promotions
                .request_promotion(ask(
                    id,
                    proto::RequestPromotionRequest {
                        target_environment: name,
                        reason: form.reason,
                        ..Default::default()
                    },
                ))
                .await?
                .into_inner();
            return Ok(Redirect::to(&format!("/ui/promotions/{}", promotion.id)).into_response());
        }
        _ => return Err(Failure::no_action(&action, "environments")),
    }
    Ok(Redirect::to(&back).into_response())
}
