//! `stagehand metrics`: delivery metrics (deployments, lead time, change failure rate, time to
//! restore) per environment from a running server's GetDeliveryMetrics.

use std::time::Duration;

use clap::Args;
use serde_json::{Value, json};
use stagehand::proto;
use stagehand::proto::promotion_service_client::PromotionServiceClient;

use super::client::{self, ServerArgs, rpc_error};
use super::output::{self, OutputArgs, text};
use super::wire;

/// `stagehand metrics`.
#[derive(Debug, Args)]
pub struct MetricsArgs {
    /// Only this environment; by default every one you may view.
    #[arg(long)]
    environment: Option<String>,
    /// How far back from now, e.g. `7d`, `12h`, `30d`.
    #[arg(long, default_value = "30d", value_parser = humantime::parse_duration)]
    window: Duration,
    #[command(flatten)]
    server: ServerArgs,
    #[command(flatten)]
    output: OutputArgs,
}

pub async fn run(args: MetricsArgs) -> anyhow::Result<()> {
    let window = prost_types::Duration::try_from(args.window)
        .map_err(|e| anyhow::anyhow!("--window {:?}: {e}", args.window))?;
    let answer = PromotionServiceClient::new(client::connect(&args.server).await?)
        .get_delivery_metrics(proto::GetDeliveryMetricsRequest {
            environment: args.environment.unwrap_or_default(),
            window: Some(window),
            end_time: None,
        })
        .await
        .map_err(|status| rpc_error("GetDeliveryMetrics", status))?
        .into_inner();
    output::print(&to_json(&answer), args.output.format(), table)
}

fn seconds(duration: &Option<prost_types::Duration>) -> Value {
    duration
        .and_then(|d| Duration::try_from(d).ok())
        .map_or(Value::Null, |d| json!(d.as_secs_f64()))
}

/// The answer with durations in seconds and times in RFC 3339.
fn to_json(answer: &proto::GetDeliveryMetricsResponse) -> Value {
    json!({
        "startTime": wire::time(&answer.start_time),
        "endTime": wire::time(&answer.end_time),
        "environments": answer.environments.iter().map(|m| json!({
            "environment": m.environment,
            "deployments": m.deployments,
            "deploymentsPerDay": m.deployments_per_day,
            "leadTime": {
                "count": m.lead_time_count,
                "medianSeconds": seconds(&m.lead_time_median),
                "p90Seconds": seconds(&m.lead_time_p90),
            },
            "changes": m.changes,
            "failedChanges": m.failed_changes,
            "changeFailureRatio": m.change_failure_ratio,
            "timeToRestore": {
                "count": m.restored,
                "medianSeconds": seconds(&m.time_to_restore_median),
                "p90Seconds": seconds(&m.time_to_restore_p90),
            },
            "unrestored": m.unrestored,
        })).collect::<Vec<_>>(),
    })
}

/// A duration in seconds as people read it, to the second (`2h 5m 3s`); `-` when none.
fn human(seconds: &Value) -> String {
    seconds.as_f64().map_or("-".to_owned(), |s| {
        humantime::format_duration(Duration::from_secs(s.round() as u64)).to_string()
    })
}

fn table(value: &Value) -> String {
    let mut out = format!(
        "window: {} to {}\n\n",
        text(&value["startTime"]),
        text(&value["endTime"])
    );
    let rows: Vec<Vec<String>> = value["environments"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| {
            let failure = match m["changeFailureRatio"].as_f64() {
                Some(ratio) => format!(
                    "{}/{} ({:.0}%)",
                    text(&m["failedChanges"]),
                    text(&m["changes"]),
                    ratio * 100.0
                ),
                None => "-".to_owned(),
            };
            vec![
                text(&m["environment"]),
                text(&m["deployments"]),
                format!("{:.2}", m["deploymentsPerDay"].as_f64().unwrap_or(0.0)),
                human(&m["leadTime"]["medianSeconds"]),
                human(&m["leadTime"]["p90Seconds"]),
                failure,
                human(&m["timeToRestore"]["medianSeconds"]),
                text(&m["unrestored"]),
            ]
        })
        .collect();
    if rows.is_empty() {
        out.push_str("no environments (or none you may view)\n");
        return out;
    }
    out.push_str(&output::table(
        &[
            "ENVIRONMENT",
            "DEPLOYMENTS",
            "PER-DAY",
            "LEAD-TIME-P50",
            "LEAD-TIME-P90",
            "CHANGE-FAILURE",
            "RESTORE-P50",
            "UNRESTORED",
        ],
        &rows,
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_shows_durations_to_the_second_and_the_failure_rate_as_a_fraction() {
        let value = json!({
            "startTime": "2026-01-01T00:00:00.000Z",
            "endTime": "2026-01-31T00:00:00.000Z",
            "environments": [
                {"environment": "prod", "deployments": 3, "deploymentsPerDay": 0.1,
                 "leadTime": {"count": 2, "medianSeconds": 7_500.4, "p90Seconds": 9_000.0},
                 "changes": 4, "failedChanges": 1, "changeFailureRatio": 0.25,
                 "timeToRestore": {"count": 1, "medianSeconds": 1_800.0, "p90Seconds": 1_800.0},
                 "unrestored": 0},
                {"environment": "qa", "deployments": 0, "deploymentsPerDay": 0.0,
                 "leadTime": {"count": 0, "medianSeconds": null, "p90Seconds": null},
                 "changes": 0, "failedChanges": 0, "changeFailureRatio": null,
                 "timeToRestore": {"count": 0, "medianSeconds": null, "p90Seconds": null},
                 "unrestored": 0}
            ]
        });
        assert_eq!(
            table(&value),
            "window: 2026-01-01T00:00:00.000Z to 2026-01-31T00:00:00.000Z\n\n\
             ENVIRONMENT  DEPLOYMENTS  PER-DAY  LEAD-TIME-P50  LEAD-TIME-P90  CHANGE-FAILURE  RESTORE-P50  UNRESTORED\n\
             prod         3            0.10     2h 5m          2h 30m         1/4 (25%)       30m          0\n\
             qa           0            0.00     -              -              -               -            0\n"
        );
    }
}
