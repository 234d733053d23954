//! The delivery page: the four delivery metrics per environment over the last 30 days, with a
//! small server-drawn chart of deployments per day.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use maud::{Markup, PreEscaped, html};

use super::ask;
use crate::api::web::layout::{self, Page};
use crate::api::web::session::Viewer;
use crate::api::web::{Failure, Web, is_partial};
use crate::proto;
use crate::proto::promotion_service_server::PromotionService as _;

const DAYS: i64 = 30;
/// Succeeded promotions read for the daily chart; past it the chart says it is partial.
const CHART_PROMOTIONS: usize = 5_000;

pub async fn page(
    State(web): State<Arc<Web>>,
    viewer: Viewer,
    headers: HeaderMap,
) -> Result<Page, Failure> {
    let who = &viewer.identity;
    let window = Duration::from_secs(u64::try_from(DAYS).unwrap_or(30) * 86_400);
    let metrics = web
        .promotions
        .get_delivery_metrics(ask(
            who,
            proto::GetDeliveryMetricsRequest {
                window: prost_types::Duration::try_from(window).ok(),
                ..Default::default()
            },
        ))
        .await?
        .into_inner();
    let end = metrics.end_time.map_or_else(layout::now, |t| t.seconds);
    let start = end - DAYS * 86_400;
    let mut per_day: HashMap<String, Vec<u32>> = HashMap::new();
    let mut read = 0;
    let mut page_token = String::new();
    loop {
        let page = web
            .promotions
            .list_promotions(ask(
                who,
                proto::ListPromotionsRequest {
                    states: vec![proto::PromotionState::Succeeded as i32],
                    since: Some(prost_types::Timestamp {
                        seconds: start,
                        nanos: 0,
                    }),
                    page_size: 1000,
                    page_token,
                    ..Default::default()
                },
            ))
            .await?
            .into_inner();
        read += page.promotions.len();
        for promotion in &page.promotions {
            let at = promotion.update_time.map_or(end, |t| t.seconds);
            let day = usize::try_from((at - start).clamp(0, DAYS * 86_400 - 1) / 86_400)
                .unwrap_or_default();
            per_day
                .entry(promotion.target_environment.clone())
                .or_insert_with(|| vec![0; usize::try_from(DAYS).unwrap_or(30)])[day] += 1;
        }
        page_token = page.next_page_token;
        if page_token.is_empty() || read >= CHART_PROMOTIONS {
            break;
        }
    }
    let partial_chart = !page_token.is_empty();
    let body = html! {
        h1 { "Delivery, last " (DAYS) " days" }
        p.note {
            "Deployments: promotions and rollbacks that succeeded. Lead time: from the first commit of a promotion to its success. "
            "Change failure rate: changes that failed verification or were rolled back. Time to restore: from such a failure to the next success."
            @if partial_chart { " The daily charts count the newest " (CHART_PROMOTIONS) " promotions only." }
        }
        div.delivery {
            @for environment in &metrics.environments {
                section.delivery-environment data-environment=(environment.environment) {
                    h2 { a href={ "/ui/environments/" (environment.environment) } { (environment.environment) } }
                    (chart(per_day.get(&environment.environment).map(Vec::as_slice).unwrap_or(&[])))
                    dl.facts {
                        dt { "Deployments" }
                        dd.deployments { (environment.deployments) " (" (format!("{:.2}", environment.deployments_per_day)) " a day)" }
                        dt { "Lead time" }
                        dd.lead-time { (median_p90(environment.lead_time_median, environment.lead_time_p90)) }
                        dt { "Change failure rate" }
                        dd.failure-rate {
                            @match environment.change_failure_ratio {
                                Some(ratio) => { (format!("{:.0}%", ratio * 100.0)) " (" (environment.failed_changes) " of " (environment.changes) ")" }
                                None => "no changes",
                            }
                        }
                        dt { "Time to restore" }
                        dd.restore {
                            (median_p90(environment.time_to_restore_median, environment.time_to_restore_p90))
                            @if environment.unrestored > 0 { ", " (environment.unrestored) " not restored yet" }
                        }
                    }
                }
            }
        }
    };
    Ok(Page {
        title: "Delivery".to_owned(),
        viewer,
        body,
        partial: is_partial(&headers),
    })
}

fn median_p90(median: Option<prost_types::Duration>, p90: Option<prost_types::Duration>) -> Markup {
    match (median, p90) {
        (Some(median), Some(p90)) => html! {
            "median " (layout::span_words(median.seconds)) ", p90 " (layout::span_words(p90.seconds))
        },
        _ => html! { "nothing measured" },
    }
}

/// Deployments per day as bars, drawn on the server: no chart library, nothing to load.
fn chart(days: &[u32]) -> Markup {
    const WIDTH: u32 = 300;
    const HEIGHT: u32 = 60;
    let total: u32 = days.iter().sum();
    let highest = days.iter().copied().max().unwrap_or(0).max(1);
    let count = u32::try_from(days.len()).unwrap_or(1).max(1);
    let bar = WIDTH / count;
    let mut svg = format!(
        r#"<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" role="img" aria-label="{total} deployments in {DAYS} days, at most {highest} a day"><title>Deployments per day</title><line x1="0" y1="{HEIGHT}" x2="{WIDTH}" y2="{HEIGHT}" class="axis"/>"#
    );
    for (i, value) in (0u32..).zip(days) {
        if *value == 0 {
            continue;
        }
        let height = (value * (HEIGHT - 4)).div_ceil(highest);
        svg.push_str(&format!(
            r#"<rect x="{}" y="{}" width="{}" height="{height}"><title>{value}</title></rect>"#,
            i * bar,
            HEIGHT - height,
            bar.saturating_sub(1).max(1),
        ));
    }
    svg.push_str("</svg>");
    // Only numbers go into it, so it needs no escaping.
    PreEscaped(svg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chart_draws_one_bar_per_day_with_deployments() {
        let mut days = vec![0; 30];
        days[3] = 2;
        days[29] = 4;
        let svg = chart(&days).into_string();
        assert_eq!(svg.matches("<rect").count(), 2, "{svg}");
        assert!(svg.contains("6 deployments in 30 days"), "{svg}");
        assert!(
            svg.contains(r#"height="56""#),
            "the highest bar fills the chart: {svg}"
        );
    }
}
