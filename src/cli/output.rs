//! Printing results: a table for people, JSON or YAML for programs. As with kubectl, flux and
//! argocd, a terminal gets the table unless `-o` says otherwise, and a pipe gets JSON. The table
//! is drawn from the same serialised form as the JSON, so the two cannot disagree.

use std::io::{IsTerminal as _, Write as _};

use anyhow::Context as _;
use clap::Args;
use serde::Serialize;
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
    Yaml,
}

#[derive(Debug, Args)]
pub struct OutputArgs {
    /// Output format; by default a table on a terminal and JSON otherwise.
    #[arg(short = 'o', long = "output", value_enum)]
    output: Option<Format>,
}

impl OutputArgs {
    pub fn format(&self) -> Format {
        self.output.unwrap_or(if std::io::stdout().is_terminal() {
            Format::Table
        } else {
            Format::Json
        })
    }
}

/// Prints `value` in `format`; `table` draws its table from the JSON form.
pub fn print(
    value: &impl Serialize,
    format: Format,
    table: fn(&Value) -> String,
) -> anyhow::Result<()> {
    let text = match format {
        Format::Json => {
            let mut text = serde_json::to_string_pretty(value)?;
            text.push('\n');
            text
        }
        Format::Yaml => serde_yaml_ng::to_string(value)?,
        Format::Table => table(&serde_json::to_value(value)?),
    };
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .context("cannot write to stdout")
}

/// `stagehand diff`: the revision, then one row per object a sync would change.
pub fn plan_table(plan: &Value) -> String {
    let mut out = format!("revision: {}\n\n", text(&plan["revision"]));
    let rows: Vec<Vec<String>> = plan["objects"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|o| row(o, text(&o["change"]), text(&o["diff"]).replace('\n', ", ")))
        .collect();
    if rows.is_empty() {
        out.push_str("no changes\n");
    } else {
        out.push_str(&table(
            &["APIVERSION", "KIND", "NAMESPACE", "NAME", "CHANGE", "DIFF"],
            &rows,
        ));
    }
    out
}

/// `stagehand sync`: the environment's state, then one row per object and per pruned object.
pub fn status_table(status: &Value) -> String {
    let fields = [
        ("environment", "environment"),
        ("reason", "reason"),
        ("message", "message"),
        ("attempted revision", "attemptedRevision"),
        ("applied revision", "appliedRevision"),
        ("last sync", "lastSyncTime"),
        ("last applied", "lastAppliedTime"),
        ("next attempt in", "nextAttemptIn"),
        ("health", "health"),
    ];
    let mut out = String::new();
    for (label, key) in fields {
        let value = text(&status[key]);
        if !value.is_empty() {
            out.push_str(&format!("{:<20}{value}\n", format!("{label}:")));
        }
    }
    out.push('\n');
    out.push_str(&objects_table(&status["objects"], &status["pruned"]));
    out
}

fn objects_table(objects: &Value, pruned: &Value) -> String {
    let mut rows: Vec<Vec<String>> = Vec::new();
    for o in objects.as_array().into_iter().flatten() {
        let details: Vec<String> = ["changedFields", "driftedFields"]
            .iter()
            .filter_map(|k| o[*k].as_array())
            .map(|fields| fields.iter().map(text).collect::<Vec<_>>().join(", "))
            .chain([text(&o["message"])])
            .filter(|d| !d.is_empty())
            .collect();
        let mut cells = row(o, text(&o["action"]), details.join("; "));
        cells.insert(5, text(&o["health"]));
        rows.push(cells);
    }
    for p in pruned.as_array().into_iter().flatten() {
        let action = match p["outcome"].as_str().unwrap_or("") {
            "deleted" => "pruned".to_owned(),
            "gone" => "already gone".to_owned(),
            "notOwned" => "not owned, kept".to_owned(),
            "kept" => "kept (prune disabled)".to_owned(),
            other => format!("prune {other}"),
        };
        let mut cells = row(p, action, text(&p["error"]));
        cells.insert(5, String::new());
        rows.push(cells);
    }
    if rows.is_empty() {
        return "no objects\n".to_owned();
    }
    let header = [
        "APIVERSION",
        "KIND",
        "NAMESPACE",
        "NAME",
        "ACTION",
        "HEALTH",
        "DETAILS",
    ];
    table(&header, &rows)
}

/// The object's four names, then `action` and `details`.
fn row(entry: &Value, action: String, details: String) -> Vec<String> {
    let object = &entry["object"];
    vec![
        text(&object["apiVersion"]),
        text(&object["kind"]),
        text(&object["namespace"]),
        text(&object["name"]),
        action,
        details,
    ]
}

/// A string as itself, null as nothing, anything else as JSON.
fn text(value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Columns padded to their widest cell, two spaces apart, as kubectl prints them.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = header.iter().map(|h| (*h).to_owned()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, (cell, width)) in row.iter().zip(&widths).enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<width$}  "));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_table_pads_each_column_to_its_widest_cell_and_names_objects_in_full() {
        let plan = json!({
            "revision": "abc",
            "objects": [
                {"object": {"apiVersion": "apps/v1", "kind": "Deployment", "namespace": "shop",
                            "name": "web"},
                 "change": "update", "diff": ".spec.replicas\n.spec.template"},
                {"object": {"apiVersion": "v1", "kind": "Namespace", "name": "shop"},
                 "change": "create", "diff": ""},
                {"object": {"apiVersion": "v1", "kind": "ConfigMap", "namespace": "shop",
                            "name": "old"}, "change": "prune", "diff": "deleted"}
            ]
        });
        assert_eq!(
            plan_table(&plan),
            "revision: abc\n\n\
             APIVERSION  KIND        NAMESPACE  NAME  CHANGE  DIFF\n\
             apps/v1     Deployment  shop       web   update  .spec.replicas, .spec.template\n\
             v1          Namespace              shop  create\n\
             v1          ConfigMap   shop       old   prune   deleted\n"
        );
    }

    #[test]
    fn a_status_table_lists_the_state_then_objects_with_health_and_pruned_ones() {
        let status = json!({
            "environment": "dev", "reason": "failed", "lastSyncTime": "2026-11-28T14:05:09.123Z",
            "objects": [{"object": {"apiVersion": "v1", "kind": "Secret", "namespace": "shop",
                                    "name": "db"},
                         "action": "failed", "message": "forbidden: .data (Forbidden)"}],
            "pruned": [{"object": {"apiVersion": "v1", "kind": "ConfigMap", "namespace": "shop",
                                   "name": "old"}, "outcome": "notOwned"}]
        });
        assert_eq!(
            status_table(&status),
            "environment:        dev\n\
             reason:             failed\n\
             last sync:          2026-11-28T14:05:09.123Z\n\n\
             APIVERSION  KIND       NAMESPACE  NAME  ACTION           HEALTH  DETAILS\n\
             v1          Secret     shop       db    failed                   forbidden: .data (Forbidden)\n\
             v1          ConfigMap  shop       old   not owned, kept\n"
        );
    }
}
