//! The promotion page: its timeline, approvals, blockers, verification and preview diff, and
//! approve / reject / abort / override for those who may.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};
use serde::Deserialize;

use super::ask;
use crate::api::auth::Permission;
use crate::api::web::layout::{self, Page};
use crate::api::web::session::Viewer;
use crate::api::web::{Failure, Posted, Web, is_partial};
use crate::proto;
use crate::proto::promotion_service_server::PromotionService as _;

pub async fn page(
    State(web): State<Arc<Web>>,
    viewer: Viewer,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Page, Failure> {
    let who = &viewer.identity;
    let promotion = web
        .promotions
        .get_promotion(ask(who, proto::GetPromotionRequest { id: id.clone() }))
        .await?
        .into_inner();
    let (state, label) = layout::state(promotion.state);
    let open = super::OPEN_STATES
        .iter()
        .any(|s| *s as i32 == promotion.state);
    // The preview shows what landing it would change in the target: only while it has not.
    let preview = if open && !promotion.rollback && promotion.commit.is_empty() {
        web.promotions
            .preview_promotion(ask(
                who,
                proto::PreviewPromotionRequest {
                    target_environment: promotion.target_environment.clone(),
                    revision: promotion.revision.clone(),
                },
            ))
            .await
            .map(|r| r.into_inner())
            .map_err(|status| status.message().to_owned())
    } else {
        Err(String::new())
    };
    let target = &promotion.target_environment;
    let may_approve = open && web.may(who, target, Permission::Approve);
    let may_abort =
        open && (promotion.requested_by == who.name || web.may(who, target, Permission::Request));
    let may_override = open
        && promotion.blockers.iter().any(|b| b.kind == "freeze")
        && web.may(who, target, Permission::Override);
    let frozen = promotion.blockers.iter().find(|b| b.kind == "freeze");
    let body = html! {
        h1 {
            @if promotion.rollback { "Rollback of " (target) } @else { "Promotion " (promotion.source_environment) " → " (target) }
        }
        p.summary {
            "State: " span #state data-state=(state) class={ "state " (state) } { (label) }
            " · " (layout::commit(&promotion.revision))
            " · requested by " b { (promotion.requested_by) } " " (layout::ago(promotion.create_time.as_ref()))
            @if !promotion.reason.is_empty() { " · “" (promotion.reason) "”" }
        }
        @if !promotion.message.is_empty() { p.message { (promotion.message) } }
        @if let Some(freeze) = frozen {
            p.alert role="alert" { "❄ A freeze window holds this promotion: " (freeze.message) }
        }
        (layout::blockers(&promotion.blockers))
        @if may_approve || may_abort || may_override {
            div.actions {
                @if may_approve {
                    (action_form(&viewer, &id, "approve", "Approve", "comment", "Comment (optional)"))
                    (action_form(&viewer, &id, "reject", "Reject", "reason", "Why"))
                }
                @if may_abort { (action_form(&viewer, &id, "abort", "Abort", "reason", "Why")) }
                @if may_override { (action_form(&viewer, &id, "override", "Override the freeze", "reason", "Why")) }
            }
        }
        h2 { "Approvals" }
        @if promotion.approvals.is_empty() { p { "None yet." } }
        ul.approvals {
            @for approval in &promotion.approvals {
                li.approval {
                    b { (approval.approver) } " " (layout::ago(approval.time.as_ref()))
                    @if !approval.groups.is_empty() { " (" (approval.groups.join(", ")) ")" }
                    @if !approval.comment.is_empty() { ": “" (approval.comment) "”" }
                }
            }
        }
        @if promotion.approvals_missing > 0 { p { (promotion.approvals_missing) " more needed." } }
        h2 { "Timeline" }
        ol.timeline {
            @for transition in &promotion.transitions {
                li.transition {
                    (layout::ago(transition.time.as_ref())) " "
                    @if transition.from == 0 { "created" } @else { (layout::state_badge(transition.from)) " →" }
                    " " (layout::state_badge(transition.to))
                    " by " b { (transition.actor) }
                    @if !transition.reason.is_empty() { " — " (transition.reason) }
                }
            }
        }
        @if !promotion.verification.is_empty() {
            h2 { "Verification" }
            table.verification {
                thead { tr { th { "Check" } th { "Kind" } th { "Status" } th { "Value" } th { "Message" } } }
                tbody {
                    @for check in &promotion.verification {
                        tr { td { (check.name) } td { (check.kind) } td { (check.status) } td { (check.value) } td { (check.message) } }
                    }
                }
            }
        }
        @if !promotion.commit.is_empty() { p { "Landed as " (layout::commit(&promotion.commit)) "." } }
        @match &preview {
            Ok(preview) => {
                h2 { "What it changes in " (target) }
                (diff(&preview.objects))
            }
            Err(message) if !message.is_empty() => p.error { "No preview: " (message) },
            Err(_) => {},
        }
    };
    Ok(Page {
        title: format!("Promotion {id}"),
        viewer,
        body,
        partial: is_partial(&headers),
    })
}

fn action_form(
    viewer: &Viewer,
    id: &str,
    action: &str,
    label: &str,
    field: &str,
    field_label: &str,
) -> Markup {
    html! {
        form class=(action) method="post" action={ "/ui/promotions/" (id) "/" (action) } {
            (layout::csrf(viewer))
            label for={ (action) "-" (field) } { (field_label) }
            input id={ (action) "-" (field) } name=(field) type="text" maxlength="500";
            button type="submit" { (label) }
        }
    }
}

/// The objects a change touches: per object, the unified diff the API gives, which names a
/// Secret's changed keys and never its values.
pub fn diff(objects: &[proto::ObjectDiff]) -> Markup {
    html! {
        @if objects.is_empty() { p { "Nothing changes." } }
        div.diff {
            @for object in objects {
                @let reference = object.object.clone().unwrap_or_default();
                details.object-diff open[objects.len() <= 5] {
                    summary {
                        span class={ "change " (object.change) } { (object.change) } " "
                        (reference.kind) " " @if !reference.namespace.is_empty() { (reference.namespace) "/" } (reference.name)
                    }
                    @if !object.changed_secret_keys.is_empty() {
                        p { "Secret keys changed (values hidden): " (object.changed_secret_keys.join(", ")) }
                    }
                    @if !object.diff.is_empty() {
                        pre { @for line in object.diff.lines() {
                            @let class = match line.chars().next() { Some('+') => "add", Some('-') => "del", _ => "ctx" };
                            span class=(class) { (line) } "\n"
                        } }
                    }
                }
            }
        }
    }
}

#[derive(Deserialize)]
pub struct ActionForm {
    #[serde(default)]
    comment: String,
    #[serde(default)]
    reason: String,
}

pub async fn act(
    State(web): State<Arc<Web>>,
    Path((id, action)): Path<(String, String)>,
    Posted { viewer, form }: Posted<ActionForm>,
) -> Result<Response, Failure> {
    let who = &viewer.identity;
    let api = &web.promotions;
    let id_ = id.clone();
    match action.as_str() {
        "approve" => {
            api.approve_promotion(ask(
                who,
                proto::ApprovePromotionRequest {
                    id: id_,
                    comment: form.comment,
                },
            ))
            .await?
        }
        "reject" => {
            api.reject_promotion(ask(
                who,
                proto::RejectPromotionRequest {
                    id: id_,
                    reason: form.reason,
                },
            ))
            .await?
        }
        "abort" => {
            api.abort_promotion(ask(
                who,
                proto::AbortPromotionRequest {
                    id: id_,
                    reason: form.reason,
                },
            ))
            .await?
        }
        "override" => {
            api.override_freeze(ask(
                who,
                proto::OverrideFreezeRequest {
                    id: id_,
                    reason: form.reason,
                },
            ))
            .await?
        }
        _ => return Err(Failure::no_action(&action, "promotions")),
    };
    Ok(Redirect::to(&format!("/ui/promotions/{id}")).into_response())
}
