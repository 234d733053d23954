//! Printing results: a table for people, JSON or YAML for programs. As with kubectl, flux and
//! argocd, a terminal gets the table unless `-o` says otherwise, and a pipe gets JSON. The table
//! is drawn from the same serialised form as the JSON, so the two cannot disagree.

use std::borrow::Cow;
use std::io::{IsTerminal as _, Write as _};
use std::time::SystemTime;

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
    table: impl FnOnce(&Value) -> String,
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
        .map(|o| {
            let diff: Vec<String> = raw(&o["diff"])
                .split('\n')
                .filter(|line| !line.is_empty())
                .map(escape)
                .chain(ignored_fields(o))
                .collect();
            row(o, text(&o["change"]), diff.join(", "))
        })
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
            .chain([ignored_fields(o).join(", ")])
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

/// `ignored .spec.replicas (ignoreDifferences[0])` for each field `ignoreDifferences` left alone.
fn ignored_fields(entry: &Value) -> Vec<String> {
    entry["ignoredFields"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|i| {
            format!(
                "ignored {} (ignoreDifferences[{}])",
                text(&i["field"]),
                text(&i["rule"])
            )
        })
        .collect()
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

/// A string as a terminal may show it (see [`escape`]), null as nothing, anything else as JSON
/// (which escapes control characters itself).
pub fn text(value: &Value) -> String {
    escape(&raw(value))
}

/// [`text`] before escaping, for the callers that split it into lines first.
fn raw(value: &Value) -> Cow<'_, str> {
    match value {
        Value::Null => Cow::Borrowed(""),
        Value::String(s) => Cow::Borrowed(s),
        other => Cow::Owned(other.to_string()),
    }
}

/// `text` with every character that a terminal would act on instead of showing written as an
/// escape: C0 controls and DEL (`\x1b`, `\n`, `\r`, `\t`), C1 controls (`\x9b`), and the
/// Unicode line separators and bidirectional overrides (`\u{202e}`). Reasons, comments, names
/// and commit summaries come from users and from Git; printed as they are, they could clear the
/// screen, move the cursor or start a new line that looks like another row of the table.
/// Escaping twice changes nothing, since the result holds none of these characters.
pub fn escape(text: &str) -> String {
    if !text.chars().any(acts_on_terminal) {
        return text.to_owned();
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if acts_on_terminal(c) && u32::from(c) < 0x100 => {
                out.push_str(&format!("\\x{:02x}", u32::from(c)));
            }
            c if acts_on_terminal(c) => out.push_str(&format!("\\u{{{:04x}}}", u32::from(c))),
            c => out.push(c),
        }
    }
    out
}

fn acts_on_terminal(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061c}'
                | '\u{200e}'
                | '\u{200f}'
                | '\u{2028}'
                | '\u{2029}'
                | '\u{202a}'..='\u{202e}'
                | '\u{2066}'..='\u{2069}'
        )
}

/// Colours for words people scan for: green for good, yellow for wait, red for act.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tone {
    Good,
    Waiting,
    Bad,
}

/// Whether tables get colours: only on a terminal, and not when NO_COLOR is set (no-color.org).
pub fn colours_on(stream: &impl std::io::IsTerminal) -> bool {
    stream.is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// The tone of a reason (`succeeded`, `apply_failed`, …), a health or a yes/no flag cell.
pub fn tone(word: &str) -> Option<Tone> {
    match word {
        "" | "no" => None,
        "succeeded" | "Healthy" => Some(Tone::Good),
        "pending" | "progressing" | "suspended" | "Progressing" | "yes" => Some(Tone::Waiting),
        _ => Some(Tone::Bad),
    }
}

/// `text` in the tone's ANSI colour when `colours` is on.
pub fn paint(text: &str, tone: Option<Tone>, colours: bool) -> String {
    let code = match (colours, tone) {
        (true, Some(Tone::Good)) => "32",
        (true, Some(Tone::Waiting)) => "33",
        (true, Some(Tone::Bad)) => "31",
        _ => return text.to_owned(),
    };
    format!("\x1b[{code}m{text}\x1b[0m")
}

/// `stagehand status`: one row per environment.
pub fn environments_table(list: &Value, now: SystemTime, colours: bool) -> String {
    let rows: Vec<Vec<String>> = list["environments"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|env| environment_row(env, now))
        .collect();
    let mut out = if rows.is_empty() {
        "no environments (or none you may view)\n".to_owned()
    } else {
        painted_table(
            &ENVIRONMENT_COLUMNS,
            &rows,
            &|column, cell| matches!(column, 3..=6).then(|| tone(cell)).flatten(),
            colours,
        )
    };
    let rejected = text(&list["rejectedPipeline"]);
    if !rejected.is_empty() {
        out.push_str(&format!(
            "\n{}: {rejected}\n",
            paint(
                "the newest pipeline file was refused",
                Some(Tone::Bad),
                colours
            )
        ));
    }
    out
}

const ENVIRONMENT_COLUMNS: [&str; 9] = [
    "NAME",
    "DESIRED",
    "APPLIED",
    "SYNC",
    "HEALTH",
    "SUSPENDED",
    "OUT-OF-SYNC",
    "LAST-SYNC",
    "MESSAGE",
];

fn environment_row(env: &Value, now: SystemTime) -> Vec<String> {
    let status = &env["status"];
    let flag = |v: &Value| {
        if v.as_bool() == Some(true) {
            "yes"
        } else {
            "no"
        }
        .to_owned()
    };
    vec![
        text(&env["name"]),
        short(&status["desiredRevision"]),
        short(&status["appliedRevision"]),
        text(&status["reason"]),
        text(&status["health"]),
        flag(&status["suspended"]),
        flag(&status["outOfSync"]),
        age(&status["lastSyncTime"], now),
        first_line(&status["message"]),
    ]
}

/// `stagehand status ENV`, `env suspend|resume`: the environment, its state, its objects.
pub fn environment_detail(env: &Value, now: SystemTime, colours: bool) -> String {
    let mut out = String::new();
    let mut line = |label: &str, value: String| {
        if !value.is_empty() {
            out.push_str(&format!("{:<20}{value}\n", format!("{label}:")));
        }
    };
    line("name", text(&env["name"]));
    line("promotes from", text(&env["promotesFrom"]));
    let source = &env["source"];
    if source["overlay"].is_object() {
        line(
            "source",
            format!(
                "overlay {} on branch {}",
                text(&source["overlay"]["path"]),
                text(&source["overlay"]["branch"])
            ),
        );
    } else if source["branch"].is_object() {
        let path = text(&source["branch"]["path"]);
        line(
            "source",
            format!("branch {}", text(&source["branch"]["branch"]))
                + &if path.is_empty() {
                    String::new()
                } else {
                    format!(", path {path}")
                },
        );
    }
    let sync = &env["sync"];
    if sync.is_object() {
        let on = |key: &str, word: &str| (sync[key] == true).then(|| format!(", {word}"));
        line(
            "sync",
            format!(
                "{}, every {}{}{}",
                if sync["auto"] == true {
                    "automatic"
                } else {
                    "manual"
                },
                humantime::format_duration(std::time::Duration::from_secs(
                    sync["intervalSeconds"].as_u64().unwrap_or_default()
                )),
                on("prune", "prune").unwrap_or_default(),
                on("selfHeal", "self-heal").unwrap_or_default(),
            ),
        );
    }
    out.push_str(&status_detail(&env["status"], now, colours));
    out
}

/// `env sync`: the state after the pass (or when it was queued), then the objects.
pub fn status_detail(status: &Value, now: SystemTime, colours: bool) -> String {
    if status.is_null() {
        return "status:             none yet (the environment has not run a pass)\n".to_owned();
    }
    let mut out = String::new();
    let mut line = |label: &str, value: String, tone: Option<Tone>| {
        if !value.is_empty() {
            let label = format!("{label}:");
            out.push_str(&format!("{label:<20}{}\n", paint(&value, tone, colours)));
        }
    };
    let when = |key: &str| {
        let time = text(&status[key]);
        if time.is_empty() {
            time
        } else {
            format!("{time} ({})", age(&status[key], now))
        }
    };
    let flag = |key: &str| if status[key] == true { "yes" } else { "" }.to_owned();
    line(
        "reason",
        text(&status["reason"]),
        tone(&text(&status["reason"])),
    );
    line("message", text(&status["message"]), None);
    line("suspended", flag("suspended"), Some(Tone::Waiting));
    line("out of sync", flag("outOfSync"), Some(Tone::Waiting));
    line("desired revision", text(&status["desiredRevision"]), None);
    line("applied revision", text(&status["appliedRevision"]), None);
    line(
        "attempted revision",
        text(&status["attemptedRevision"]),
        None,
    );
    line("last sync", when("lastSyncTime"), None);
    line("last applied", when("lastAppliedTime"), None);
    line("next sync", text(&status["nextSyncTime"]), None);
    line("fetched", when("fetchedTime"), None);
    line(
        "health",
        text(&status["health"]),
        tone(&text(&status["health"])),
    );
    if status["failures"].as_u64().unwrap_or(0) > 0 {
        line(
            "failures in a row",
            text(&status["failures"]),
            Some(Tone::Bad),
        );
    }
    let alerts: Vec<String> = status["alerts"]
        .as_array()
        .into_iter()
        .flatten()
        .map(text)
        .collect();
    line("alerts", alerts.join("; "), Some(Tone::Bad));
    line("last error", text(&status["lastError"]), Some(Tone::Bad));
    out.push('\n');
    out.push_str(&objects_table(&status["objects"], &Value::Null));
    out
}

/// `env history`: one row per revision, newest first, with what its syncs did.
pub fn revisions_table(list: &Value, colours: bool) -> String {
    let rows: Vec<Vec<String>> = list["revisions"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            let syncs = r["syncs"].as_array().map(Vec::as_slice).unwrap_or_default();
            let applied_at = syncs
                .iter()
                .find(|s| s["applied"] == true)
                .map(|s| text(&s["endTime"]))
                .unwrap_or_default();
            vec![
                short(&r["commit"]),
                text(&r["time"]),
                if r["applied"] == true { "yes" } else { "" }.to_owned(),
                applied_at,
                syncs
                    .first()
                    .map(|s| text(&s["result"]))
                    .unwrap_or_default(),
                syncs.len().to_string(),
                text(&r["summary"]),
            ]
        })
        .collect();
    if rows.is_empty() {
        return "no revisions\n".to_owned();
    }
    let header = [
        "COMMIT",
        "TIME",
        "RUNNING",
        "APPLIED",
        "LAST-RESULT",
        "SYNCS",
        "SUMMARY",
    ];
    painted_table(
        &header,
        &rows,
        &|column, cell| (column == 4).then(|| tone(cell)).flatten(),
        colours,
    )
}

/// `env watch`, `env sync --wait`: one line per change of an environment. Columns have fixed
/// widths, since the rows to come are unknown.
pub fn change_line(env: &Value, now: SystemTime, colours: bool) -> String {
    let status = &env["status"];
    let reason = text(&status["reason"]);
    let health = text(&status["health"]);
    let time = humantime::format_rfc3339_seconds(now).to_string();
    format!(
        "{time}  {:<12}  {}  {}  {:<8}  {}",
        text(&env["name"]),
        paint(&format!("{reason:<20}"), tone(&reason), colours),
        paint(&format!("{health:<11}"), tone(&health), colours),
        short(&status["appliedRevision"]),
        first_line(&status["message"]),
    )
    .trim_end()
    .to_owned()
}

/// A commit as `git log --oneline` shortens it.
pub fn short(value: &Value) -> String {
    text(value).chars().take(7).collect()
}

/// The first line of a multi-line text (a status message), escaped.
pub fn first_line(value: &Value) -> String {
    escape(raw(value).lines().next().unwrap_or_default())
}

/// How long ago an RFC 3339 time was, as kubectl prints ages (`45s`, `3m`, `5h`, `2d`).
fn age(value: &Value, now: SystemTime) -> String {
    let Some(then) = value
        .as_str()
        .and_then(|t| humantime::parse_rfc3339(t).ok())
    else {
        return String::new();
    };
    let seconds = now.duration_since(then).map_or(0, |d| d.as_secs());
    match seconds {
        0..120 => format!("{seconds}s"),
        120..7_200 => format!("{}m", seconds / 60),
        7_200..172_800 => format!("{}h", seconds / 3_600),
        _ => format!("{}d", seconds / 86_400),
    }
}

/// Columns padded to their widest cell, two spaces apart, as kubectl prints them.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    painted_table(header, rows, &|_, _| None, false)
}

/// [`table`], with cells painted by `tone(column, cell)` when `colours` is on (after padding,
/// so the escape codes do not count as width). Every cell is [`escape`]d, whichever way it was
/// built: a control character in a cell would break the columns or forge a row.
pub fn painted_table(
    header: &[&str],
    rows: &[Vec<String>],
    tone: &dyn Fn(usize, &str) -> Option<Tone>,
    colours: bool,
) -> String {
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|row| row.iter().map(|cell| escape(cell)).collect())
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = header.iter().map(|h| (*h).to_owned()).collect();
    for (r, row) in std::iter::once(&header).chain(&rows).enumerate() {
        let mut line = String::new();
        for (i, (cell, width)) in row.iter().zip(&widths).enumerate() {
            let padded = if i + 1 == row.len() {
                cell.clone()
            } else {
                format!("{cell:<width$}")
            };
            let tone = if r == 0 { None } else { tone(i, cell) };
            line.push_str(&paint(&padded, tone, colours));
            if i + 1 < row.len() {
                line.push_str("  ");
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
    fn characters_a_terminal_acts_on_are_printed_as_escapes() {
        assert_eq!(escape("plain: ünïcödé ✓"), "plain: ünïcödé ✓");
        assert_eq!(
            escape("\x1b[2J\r\nforged\trow\x07\x7f\u{9b}31m\u{202e}gpj.exe\u{2028}"),
            "\\x1b[2J\\r\\nforged\\trow\\x07\\x7f\\x9b31m\\u{202e}gpj.exe\\u{2028}"
        );
        let once = escape("a\x1bb\nc");
        assert_eq!(escape(&once), once, "escaping twice changes nothing");
    }

    #[test]
    fn a_text_with_a_newline_cannot_forge_a_table_row() {
        let forged = "ok\n2026-11-28T00:00:00Z  mallory  approve  prod\x1b[2J";
        let out = table(
            &["ACTOR", "REASON"],
            &[vec![text(&json!("alice")), text(&json!(forged))]],
        );
        assert_eq!(
            out,
            "ACTOR  REASON\n\
             alice  ok\\n2026-11-28T00:00:00Z  mallory  approve  prod\\x1b[2J\n"
        );
        // Cells built without `text` are escaped by the table itself.
        assert_eq!(table(&["A"], &[vec!["x\ry".to_owned()]]), "A\nx\\ry\n");
        assert_eq!(
            first_line(&json!("first\x1b]0;title\x07\nsecond")),
            "first\\x1b]0;title\\x07"
        );
    }

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
                            "name": "old"}, "change": "prune", "diff": "deleted"},
                {"object": {"apiVersion": "apps/v1", "kind": "Deployment", "namespace": "shop",
                            "name": "api"}, "change": "ignore", "diff": "",
                 "ignoredFields": [{"field": ".spec.replicas", "rule": 0}]}
            ]
        });
        assert_eq!(
            plan_table(&plan),
            "revision: abc\n\n\
             APIVERSION  KIND        NAMESPACE  NAME  CHANGE  DIFF\n\
             apps/v1     Deployment  shop       web   update  .spec.replicas, .spec.template\n\
             v1          Namespace              shop  create\n\
             v1          ConfigMap   shop       old   prune   deleted\n\
             apps/v1     Deployment  shop       api   ignore  ignored .spec.replicas (ignoreDifferences[0])\n"
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

    #[test]
    fn the_environments_table_shortens_revisions_ages_times_and_paints_only_when_asked() {
        let list = json!({
            "pipeline": "shop",
            "environments": [
                {"name": "dev", "status": {
                    "desiredRevision": "67e1c1999f75f1295157257d821bc2eab158b573",
                    "appliedRevision": "67e1c1999f75f1295157257d821bc2eab158b573",
                    "reason": "succeeded", "health": "Healthy", "suspended": false,
                    "outOfSync": false, "lastSyncTime": "2026-11-28T14:00:00.000Z",
                    "message": "applied\nand healthy"}},
                {"name": "production", "status": {
                    "reason": "apply_failed", "suspended": true, "outOfSync": true,
                    "lastSyncTime": "2026-11-28T11:30:00.000Z", "message": "forbidden"}}
            ],
            "rejectedPipeline": ""
        });
        let now = humantime::parse_rfc3339("2026-11-28T14:03:10Z").expect("a time");
        assert_eq!(
            environments_table(&list, now, false),
            "NAME        DESIRED  APPLIED  SYNC          HEALTH   SUSPENDED  OUT-OF-SYNC  LAST-SYNC  MESSAGE\n\
             dev         67e1c19  67e1c19  succeeded     Healthy  no         no           3m         applied\n\
             production                    apply_failed           yes        yes          2h         forbidden\n"
        );
        let painted = environments_table(&list, now, true);
        assert!(
            painted.contains("\x1b[32msucceeded   \x1b[0m  \x1b[32mHealthy\x1b[0m"),
            "{painted}"
        );
        assert!(painted.contains("\x1b[31mapply_failed\x1b[0m"), "{painted}");
        assert!(painted.contains("\x1b[33myes      \x1b[0m"), "{painted}");
    }
}
