//! The audit page: the audit log, filterable by environment, identity and action, newest
//! first in pages.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use maud::{Markup, html};
use serde::Deserialize;

use super::ask;
use crate::api::web::layout::{self, Page};
use crate::api::web::session::Viewer;
use crate::api::web::{Failure, Web, is_partial};
use crate::proto;
use crate::proto::promotion_service_server::PromotionService as _;
use crate::store::AuditAction;

const PAGE_SIZE: u32 = 50;

#[derive(Deserialize, Default)]
pub struct Filter {
    #[serde(default)]
    environment: String,
    #[serde(default)]
    identity: String,
    #[serde(default)]
    action: String,
    #[serde(default)]
    page: String,
}

pub async fn page(
    State(web): State<Arc<Web>>,
    viewer: Viewer,
    headers: HeaderMap,
    Query(filter): Query<Filter>,
) -> Result<Page, Failure> {
    let who = &viewer.identity;
    let environments = super::environments(&web, who).await?;
    let events = web
        .promotions
        .list_audit_events(ask(
            who,
            proto::ListAuditEventsRequest {
                environment: filter.environment.clone(),
                actor: filter.identity.trim().to_owned(),
                actions: if filter.action.is_empty() {
                    Vec::new()
                } else {
                    vec![filter.action.clone()]
                },
                page_size: PAGE_SIZE,
                page_token: filter.page.clone(),
                ..Default::default()
            },
        ))
        .await?
        .into_inner();
    let body = html! {
        h1 { "Audit log" }
        form.filters method="get" action="/ui/audit" {
            label for="f-environment" { "Environment" }
            select #f-environment name="environment" {
                option value="" { "all" }
                @for environment in &environments {
                    option value=(environment.name) selected[environment.name == filter.environment] { (environment.name) }
                }
            }
            label for="f-identity" { "Identity" }
            input #f-identity name="identity" type="text" value=(filter.identity);
            label for="f-action" { "Action" }
            select #f-action name="action" {
                option value="" { "all" }
                @for action in AuditAction::ALL {
                    option value=(action.as_str()) selected[action.as_str() == filter.action] { (action.as_str()) }
                }
            }
            button type="submit" { "Filter" }
        }
        (table(&events.events))
        @if !events.next_page_token.is_empty() {
            p { a rel="next" href={ "/ui/audit?environment=" (query(&filter.environment)) "&identity=" (query(&filter.identity)) "&action=" (query(&filter.action)) "&page=" (query(&events.next_page_token)) } { "Older events →" } }
        }
    };
    Ok(Page {
        title: "Audit".to_owned(),
        viewer,
        body,
        partial: is_partial(&headers),
    })
}

/// Audit events as a table, newest first.
pub fn table(events: &[proto::AuditEvent]) -> Markup {
    html! {
        @if events.is_empty() { p { "No events." } }
        @else {
            div.scroll {
            table.audit {
                thead { tr { th { "When" } th { "Who" } th { "Action" } th { "Environment" } th { "Promotion" } th { "Revision" } th { "Reason" } } }
                tbody {
                    @for event in events {
                        tr.audit-event data-action=(event.action) {
                            td { (layout::ago(event.time.as_ref())) }
                            td { (event.actor) }
                            td { (event.action) }
                            td { @if !event.environment.is_empty() { a href={ "/ui/environments/" (event.environment) } { (event.environment) } } }
                            td { @if !event.promotion_id.is_empty() { a href={ "/ui/promotions/" (event.promotion_id) } { (event.promotion_id) } } }
                            td { @if !event.revision.is_empty() { (layout::commit(&event.revision)) } }
                            td { (event.reason) }
                        }
                    }
                }
            }
            }
        }
    }
}

/// A value for a query string: everything but unreserved characters percent-encoded.
fn query(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
