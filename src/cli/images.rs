//! `stagehand images`: the pipeline's image sources from a running server's ListImageSources.

use clap::Args;
use serde_json::{Value, json};
use stagehand::proto;
use stagehand::proto::environment_service_client::EnvironmentServiceClient;

use super::client::{self, ServerArgs, rpc_error};
use super::output::{self, OutputArgs, text};
use super::wire;

/// `stagehand images`.
#[derive(Debug, Args)]
pub struct ImagesArgs {
    #[command(flatten)]
    server: ServerArgs,
    #[command(flatten)]
    output: OutputArgs,
}

pub async fn run(args: ImagesArgs) -> anyhow::Result<()> {
    let answer = EnvironmentServiceClient::new(client::connect(&args.server).await?)
        .list_image_sources(proto::ListImageSourcesRequest {})
        .await
        .map_err(|status| rpc_error("ListImageSources", status))?
        .into_inner();
    output::print(&to_json(&answer), args.output.format(), table)
}

/// The answer with times in RFC 3339 and the interval in seconds.
fn to_json(answer: &proto::ListImageSourcesResponse) -> Value {
    json!({
        "sources": answer.sources.iter().map(|s| {
            let status = s.status.clone().unwrap_or_default();
            json!({
                "name": s.name,
                "repository": s.repository,
                "environment": s.environment,
                "kustomizeName": s.kustomize_name,
                "group": s.group,
                "policy": s.policy,
                "pinDigest": s.pin_digest,
                "intervalSeconds": s.interval.map(|d| d.seconds),
                "status": {
                    "lastCheckTime": wire::time(&status.last_check_time),
                    "checks": status.checks,
                    "tags": status.tags,
                    "chosenTag": status.chosen_tag,
                    "digest": status.digest,
                    "current": status.current,
                    "skipped": status.skipped.iter().map(|k| json!({"tag": k.tag, "reason": k.reason})).collect::<Vec<_>>(),
                    "skippedTotal": status.skipped_total,
                    "error": status.error,
                    "lastCommit": status.last_commit,
                    "lastCommitTime": wire::time(&status.last_commit_time),
                },
            })
        }).collect::<Vec<_>>(),
    })
}

/// One row per source, then, under the table, the error and the skipped tags of each source
/// that has them.
fn table(value: &Value) -> String {
    let sources = value["sources"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    if sources.is_empty() {
        return "no image sources (or none you may view)\n".to_owned();
    }
    let rows: Vec<Vec<String>> = sources
        .iter()
        .map(|s| {
            let status = &s["status"];
            let digest = text(&status["digest"]);
            vec![
                text(&s["name"]),
                text(&s["repository"]),
                text(&s["environment"]),
                text(&s["policy"]),
                text(&status["tags"]),
                text(&status["chosenTag"]),
                digest
                    .strip_prefix("sha256:")
                    .map_or(digest.clone(), |hex| {
                        format!("sha256:{}", &hex[..hex.len().min(12)])
                    }),
                output::short(&status["lastCommit"]),
                text(&status["lastCheckTime"]),
                if text(&status["error"]).is_empty() {
                    ""
                } else {
                    "error"
                }
                .to_owned(),
            ]
        })
        .collect();
    let mut out = output::table(
        &[
            "NAME",
            "REPOSITORY",
            "ENVIRONMENT",
            "POLICY",
            "TAGS",
            "CHOSEN",
            "DIGEST",
            "COMMIT",
            "CHECKED",
            "",
        ],
        &rows,
    );
    for s in sources {
        let status = &s["status"];
        let error = text(&status["error"]);
        if !error.is_empty() {
            out.push_str(&format!(
                "\n{}: {}\n",
                text(&s["name"]),
                output::escape(&error)
            ));
        }
        let skipped = status["skipped"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default();
        if !skipped.is_empty() {
            out.push_str(&format!(
                "\n{}: {} tags skipped, among them:\n",
                text(&s["name"]),
                text(&status["skippedTotal"])
            ));
            for k in skipped {
                out.push_str(&format!(
                    "  {}  {}\n",
                    output::escape(&text(&k["tag"])),
                    output::escape(&text(&k["reason"]))
                ));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_lists_each_source_then_its_error_and_skipped_tags() {
        let value = json!({"sources": [
            {"name": "web", "repository": "r.example.com/shop/web", "environment": "dev",
             "policy": "semver >=1", "status": {"tags": 3, "chosenTag": "1.2.0",
             "digest": "sha256:0123456789abcdef0123", "lastCommit": "89abcdef0123456789",
             "lastCheckTime": "2026-01-01T00:00:00.000Z", "error": "",
             "skipped": [{"tag": "2.0.0", "reason": "outside >=1 <2"}], "skippedTotal": 2}},
            {"name": "api", "repository": "r.example.com/shop/api", "environment": "dev",
             "policy": "semver >=1", "status": {"tags": null, "chosenTag": "", "digest": "",
             "lastCommit": "", "lastCheckTime": "2026-01-01T00:00:00.000Z",
             "error": "registry r.example.com: unauthorized\u{1b}[2J", "skipped": [], "skippedTotal": 0}},
        ]});
        let out = table(&value);
        assert!(out.contains("sha256:0123456789ab "), "{out}");
        assert!(
            out.contains("web: 2 tags skipped, among them:\n  2.0.0  outside >=1 <2\n"),
            "{out}"
        );
        assert!(
            out.contains("api: registry r.example.com: unauthorized"),
            "{out}"
        );
        assert!(
            !out.contains('\u{1b}'),
            "control characters are escaped: {out}"
        );
    }
}
