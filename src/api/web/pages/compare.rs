//! The compare page: two environments side by side, what differs between the objects they
//! run (Secret values never shown, only that they differ).

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use maud::html;
use serde::Deserialize;

use super::ask;
use crate::api::web::layout::{self, Page};
use crate::api::web::session::Viewer;
use crate::api::web::{Failure, Web, is_partial};
use crate::proto;
use crate::proto::promotion_service_server::PromotionService as _;

#[derive(Deserialize, Default)]
pub struct Pair {
    #[serde(default)]
    from: String,
    #[serde(default)]
    to: String,
}

pub async fn page(
    State(web): State<Arc<Web>>,
    viewer: Viewer,
    headers: HeaderMap,
    Query(pair): Query<Pair>,
) -> Result<Page, Failure> {
    let who = &viewer.identity;
    let environments = super::environments(&web, who).await?;
    // By default the first promotion of the pipeline: what the second environment lacks.
    let default_to = environments.iter().find(|e| !e.promotes_from.is_empty());
    let to = if pair.to.is_empty() {
        default_to.map(|e| e.name.clone()).unwrap_or_default()
    } else {
        pair.to.clone()
    };
    let from = if pair.from.is_empty() {
        default_to
            .map(|e| e.promotes_from.clone())
            .unwrap_or_default()
    } else {
        pair.from.clone()
    };
    let comparison = if from.is_empty() || to.is_empty() {
        None
    } else {
        Some(
            web.promotions
                .compare_environments(ask(
                    who,
                    proto::CompareEnvironmentsRequest {
                        from_environment: from.clone(),
                        to_environment: to.clone(),
                    },
                ))
                .await?
                .into_inner(),
        )
    };
    let choose = |name: &str, id: &str, chosen: &str| {
        html! {
            select id=(id) name=(name) {
                @for environment in &environments {
                    option value=(environment.name) selected[environment.name == chosen] { (environment.name) }
                }
            }
        }
    };
    let body = html! {
        h1 { "Compare environments" }
        form.filters method="get" action="/ui/compare" {
            label for="c-from" { "From" } (choose("from", "c-from", &from))
            label for="c-to" { "To" } (choose("to", "c-to", &to))
            button type="submit" { "Compare" }
        }
        @if let Some(comparison) = &comparison {
            p {
                b { (from) } " runs " (layout::commit(&comparison.from_revision)) "; "
                b { (to) } " runs " (layout::commit(&comparison.to_revision)) "."
            }
            @let differing: Vec<_> = comparison.objects.iter().filter(|o| o.status != "same").collect();
            @let same = comparison.objects.len() - differing.len();
            p { (differing.len()) " object(s) differ, " (same) " are the same." }
            div.scroll {
            table.compare {
                thead { tr { th { "Object" } th { "Status" } th { "Field" } th { (from) } th { (to) } } }
                tbody {
                    @for object in &differing {
                        @let status = match object.status.as_str() {
                            "only_in_from" => format!("only in {from}"),
                            "only_in_to" => format!("only in {to}"),
                            _ => "differs".to_owned(),
                        };
                        @if object.fields.is_empty() {
                            tr.comparison data-status=(object.status) { td { (object.kind) " " (object.name) } td { (status) } td {} td {} td {} }
                        }
                        @for (i, field) in object.fields.iter().enumerate() {
                            tr.comparison data-status=(object.status) {
                                td { @if i == 0 { (object.kind) " " (object.name) } }
                                td { @if i == 0 { (status) } }
                                td { code { (field.path) } }
                                td { code { (field.from_value) } }
                                td { code { (field.to_value) } }
                            }
                        }
                    }
                }
            }
            }
        }
    };
    Ok(Page {
        title: "Compare".to_owned(),
        viewer,
        body,
        partial: is_partial(&headers),
    })
}
