//! `stagehand promote`, `approve`, `reject`, `abort`, `override`, `rollback`, `resume-auto`,
//! `promotions`, `promotion`, `watch`, `audit`, `preview` and `compare`: promotions through a
//! running server's PromotionService.

use std::io::{IsTerminal as _, Write as _};
use std::time::SystemTime;

use anyhow::Context as _;
use clap::Args;
use serde_json::{Value, json};
use stagehand::proto;
use stagehand::proto::promotion_service_client::PromotionServiceClient;
use tokio_stream::StreamExt as _;

use super::client::{self, ServerArgs, rpc_error};
use super::output::{self, Format, OutputArgs, Tone, paint, text};
use super::wire;

type Client = PromotionServiceClient<client::Channel>;

/// `stagehand promote`.
#[derive(Debug, Args)]
pub struct PromoteArgs {
    /// The target environment; the revision comes from the environment it promotes from.
    #[arg(long)]
    to: String,
    /// A commit of the source environment; by default the one it runs now.
    #[arg(long, default_value = "")]
    revision: String,
    /// Why, for the audit log and the approvers.
    #[arg(long, default_value = "")]
    reason: String,
    /// Promote even though the target already runs this revision.
    #[arg(long)]
    rerun: bool,
    /// Follow the promotion until it ends (see `stagehand watch`).
    #[arg(long)]
    wait: bool,
    #[command(flatten)]
    server: ServerArgs,
    #[command(flatten)]
    output: OutputArgs,
}

/// `stagehand approve`.
#[derive(Debug, Args)]
pub struct ApproveArgs {
    /// The promotion's ID.
    id: String,
    /// A note kept with the approval.
    #[arg(long, default_value = "")]
    comment: String,
    #[command(flatten)]
    server: ServerArgs,
    #[command(flatten)]
    output: OutputArgs,
}

/// `stagehand reject` and `stagehand override`: a reason is required.
#[derive(Debug, Args)]
pub struct ReasonArgs {
    /// The promotion's ID.
    id: String,
    /// Why, for the audit log.
    #[arg(long)]
    reason: String,
    #[command(flatten)]
    server: ServerArgs,
    #[command(flatten)]
    output: OutputArgs,
}

/// `stagehand abort`.
#[derive(Debug, Args)]
pub struct AbortArgs {
    /// The promotion's ID.
    id: String,
    /// Why, for the audit log.
    #[arg(long, default_value = "")]
    reason: String,
    #[command(flatten)]
    server: ServerArgs,
    #[command(flatten)]
    output: OutputArgs,
}

/// `stagehand rollback`.
#[derive(Debug, Args)]
pub struct RollbackArgs {
    /// The environment to roll back.
    environment: String,
    /// A revision from `stagehand env history ENV`.
    #[arg(long = "to")]
    revision: String,
    /// Why, for the audit log and the approvers.
    #[arg(long, default_value = "")]
    reason: String,
    /// Follow the rollback until it ends (see `stagehand watch`).
    #[arg(long)]
    wait: bool,
    #[command(flatten)]
    server: ServerArgs,
    #[command(flatten)]
    output: OutputArgs,
}

/// `stagehand resume-auto`.
#[derive(Debug, Args)]
pub struct ResumeAutoArgs {
    /// The environment whose automatic promotion a rollback put on hold.
    environment: String,
    #[command(flatten)]
    server: ServerArgs,
}

/// `stagehand promotions`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only promotions into this environment.
    environment: Option<String>,
    /// Only promotions in these states (repeat or separate with commas).
    #[arg(long = "state", value_enum, value_delimiter = ',')]
    states: Vec<State>,
    /// At most this many, newest first.
    #[arg(long, default_value_t = 50)]
    limit: usize,
    #[command(flatten)]
    server: ServerArgs,
    #[command(flatten)]
    output: OutputArgs,
}

/// `stagehand promotion` and `stagehand watch`.
#[derive(Debug, Args)]
pub struct IdArgs {
    /// The promotion's ID.
    id: String,
    #[command(flatten)]
    server: ServerArgs,
    #[command(flatten)]
    output: OutputArgs,
}

/// `stagehand audit`.
#[derive(Debug, Args)]
pub struct AuditArgs {
    /// Only events of this environment.
    environment: Option<String>,
    /// Only events of this promotion.
    #[arg(long)]
    promotion: Option<String>,
    /// Only events of this actor (an identity, or `stagehand` for the service's own).
    #[arg(long)]
    actor: Option<String>,
    /// At most this many, newest first.
    #[arg(long, default_value_t = 50)]
    limit: usize,
    #[command(flatten)]
    server: ServerArgs,
    #[command(flatten)]
    output: OutputArgs,
}

/// `stagehand preview`.
#[derive(Debug, Args)]
pub struct PreviewArgs {
    /// The target environment.
    #[arg(long)]
    to: String,
    /// A commit of the source environment; by default the one it runs now.
    #[arg(long, default_value = "")]
    revision: String,
    #[command(flatten)]
    server: ServerArgs,
    #[command(flatten)]
    output: OutputArgs,
}

/// `stagehand compare`.
#[derive(Debug, Args)]
pub struct CompareArgs {
    /// The environment compared from (usually the one promoted from).
    from: String,
    /// The environment compared to.
    to: String,
    #[command(flatten)]
    server: ServerArgs,
    #[command(flatten)]
    output: OutputArgs,
}

/// A promotion's state as `--state` takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum State {
    Pending,
    AwaitingApproval,
    Approved,
    Promoting,
    Syncing,
    Verifying,
    Succeeded,
    Rejected,
    Failed,
    Aborted,
}

impl From<State> for proto::PromotionState {
    fn from(state: State) -> Self {
        match state {
            State::Pending => Self::Pending,
            State::AwaitingApproval => Self::AwaitingApproval,
            State::Approved => Self::Approved,
            State::Promoting => Self::Promoting,
            State::Syncing => Self::Syncing,
            State::Verifying => Self::Verifying,
            State::Succeeded => Self::Succeeded,
            State::Rejected => Self::Rejected,
            State::Failed => Self::Failed,
            State::Aborted => Self::Aborted,
        }
    }
}

/// A watched promotion ended other than Succeeded.
#[derive(Debug, thiserror::Error)]
#[error("promotion {id} ended {state}: {message}")]
pub struct Ended {
    id: String,
    state: &'static str,
    message: String,
}

async fn connect(server: &ServerArgs) -> Result<Client, client::Error> {
    Ok(PromotionServiceClient::new(client::connect(server).await?))
}

pub async fn promote(args: PromoteArgs) -> anyhow::Result<()> {
    let mut client = connect(&args.server).await?;
    let promotion = client
        .request_promotion(proto::RequestPromotionRequest {
            target_environment: args.to,
            revision: args.revision,
            reason: args.reason,
            rerun: args.rerun,
        })
        .await
        .map_err(|status| rpc_error("RequestPromotion", status))?
        .into_inner();
    finish(client, promotion, args.wait, args.output.format()).await
}

pub async fn approve(args: ApproveArgs) -> anyhow::Result<()> {
    let promotion = connect(&args.server)
        .await?
        .approve_promotion(proto::ApprovePromotionRequest {
            id: args.id,
            comment: args.comment,
        })
        .await
        .map_err(|status| rpc_error("ApprovePromotion", status))?
        .into_inner();
    print_promotion(&promotion, args.output.format())
}

pub async fn reject(args: ReasonArgs) -> anyhow::Result<()> {
    let promotion = connect(&args.server)
        .await?
        .reject_promotion(proto::RejectPromotionRequest {
            id: args.id,
            reason: args.reason,
        })
        .await
        .map_err(|status| rpc_error("RejectPromotion", status))?
        .into_inner();
    print_promotion(&promotion, args.output.format())
}

pub async fn abort(args: AbortArgs) -> anyhow::Result<()> {
    let promotion = connect(&args.server)
        .await?
        .abort_promotion(proto::AbortPromotionRequest {
            id: args.id,
            reason: args.reason,
        })
        .await
        .map_err(|status| rpc_error("AbortPromotion", status))?
        .into_inner();
    print_promotion(&promotion, args.output.format())
}

pub async fn override_freeze(args: ReasonArgs) -> anyhow::Result<()> {
    let promotion = connect(&args.server)
        .await?
        .override_freeze(proto::OverrideFreezeRequest {
            id: args.id,
            reason: args.reason,
        })
        .await
        .map_err(|status| rpc_error("OverrideFreeze", status))?
        .into_inner();
    print_promotion(&promotion, args.output.format())
}

pub async fn rollback(args: RollbackArgs) -> anyhow::Result<()> {
    let mut client = connect(&args.server).await?;
    let promotion = client
        .rollback_environment(proto::RollbackEnvironmentRequest {
            environment: args.environment,
            revision: args.revision,
            reason: args.reason,
        })
        .await
        .map_err(|status| rpc_error("RollbackEnvironment", status))?
        .into_inner();
    finish(client, promotion, args.wait, args.output.format()).await
}

pub async fn resume_auto(args: ResumeAutoArgs) -> anyhow::Result<()> {
    connect(&args.server)
        .await?
        .resume_auto_promotion(proto::ResumeAutoPromotionRequest {
            environment: args.environment.clone(),
        })
        .await
        .map_err(|status| rpc_error("ResumeAutoPromotion", status))?;
    println!("automatic promotion into {} resumed", args.environment);
    Ok(())
}

pub async fn list(args: ListArgs) -> anyhow::Result<()> {
    let mut client = connect(&args.server).await?;
    let states: Vec<i32> = args
        .states
        .iter()
        .map(|s| proto::PromotionState::from(*s) as i32)
        .collect();
    let mut promotions = Vec::new();
    let mut page_token = String::new();
    while promotions.len() < args.limit {
        let page = client
            .list_promotions(proto::ListPromotionsRequest {
                environment: args.environment.clone().unwrap_or_default(),
                states: states.clone(),
                page_size: page_size(args.limit - promotions.len()),
                page_token,
                ..Default::default()
            })
            .await
            .map_err(|status| rpc_error("ListPromotions", status))?
            .into_inner();
        promotions.extend(page.promotions);
        page_token = page.next_page_token;
        if page_token.is_empty() {
            break;
        }
    }
    promotions.truncate(args.limit);
    let value = json!({"promotions": promotions.iter().map(promotion_json).collect::<Vec<_>>()});
    let colours = output::colours_on(&std::io::stdout());
    output::print(&value, args.output.format(), |v| {
        promotions_table(v, SystemTime::now(), colours)
    })
}

pub async fn get(args: IdArgs) -> anyhow::Result<()> {
    let promotion = connect(&args.server)
        .await?
        .get_promotion(proto::GetPromotionRequest { id: args.id })
        .await
        .map_err(|status| rpc_error("GetPromotion", status))?
        .into_inner();
    print_promotion(&promotion, args.output.format())
}

pub async fn watch(args: IdArgs) -> anyhow::Result<()> {
    let client = connect(&args.server).await?;
    follow(client, args.id, args.output.format()).await
}

pub async fn audit(args: AuditArgs) -> anyhow::Result<()> {
    let mut client = connect(&args.server).await?;
    let mut events = Vec::new();
    let mut page_token = String::new();
    while events.len() < args.limit {
        let page = client
            .list_audit_events(proto::ListAuditEventsRequest {
                environment: args.environment.clone().unwrap_or_default(),
                promotion_id: args.promotion.clone().unwrap_or_default(),
                actor: args.actor.clone().unwrap_or_default(),
                page_size: page_size(args.limit - events.len()),
                page_token,
                ..Default::default()
            })
            .await
            .map_err(|status| rpc_error("ListAuditEvents", status))?
            .into_inner();
        events.extend(page.events);
        page_token = page.next_page_token;
        if page_token.is_empty() {
            break;
        }
    }
    events.truncate(args.limit);
    let value = json!({"events": events.iter().map(audit_json).collect::<Vec<_>>()});
    output::print(&value, args.output.format(), audit_table)
}

pub async fn preview(args: PreviewArgs) -> anyhow::Result<()> {
    let preview = connect(&args.server)
        .await?
        .preview_promotion(proto::PreviewPromotionRequest {
            target_environment: args.to,
            revision: args.revision,
        })
        .await
        .map_err(|status| rpc_error("PreviewPromotion", status))?
        .into_inner();
    let value = json!({
        "revision": preview.revision,
        "candidateCommit": preview.candidate_commit,
        "objects": preview.objects.iter().map(|o| json!({
            "object": o.object.as_ref().map(wire::object),
            "change": o.change,
            "diff": o.diff,
            "changedSecretKeys": o.changed_secret_keys,
        })).collect::<Vec<_>>(),
    });
    output::print(&value, args.output.format(), output::plan_table)
}

pub async fn compare(args: CompareArgs) -> anyhow::Result<()> {
    let comparison = connect(&args.server)
        .await?
        .compare_environments(proto::CompareEnvironmentsRequest {
            from_environment: args.from.clone(),
            to_environment: args.to.clone(),
        })
        .await
        .map_err(|status| rpc_error("CompareEnvironments", status))?
        .into_inner();
    let value = json!({
        "fromEnvironment": args.from,
        "toEnvironment": args.to,
        "fromRevision": comparison.from_revision,
        "toRevision": comparison.to_revision,
        "objects": comparison.objects.iter().map(|o| json!({
            "kind": o.kind,
            "name": o.name,
            "status": o.status,
            "fields": o.fields.iter().map(|f| json!({
                "path": f.path, "fromValue": f.from_value, "toValue": f.to_value,
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    });
    output::print(&value, args.output.format(), compare_table)
}

/// The server's page size for what is still wanted (it caps pages at 1000).
fn page_size(wanted: usize) -> u32 {
    u32::try_from(wanted.min(1000)).unwrap_or(1000)
}

/// Prints the promotion just made, or with `wait` follows it to its end.
async fn finish(
    client: Client,
    promotion: proto::Promotion,
    wait: bool,
    format: Format,
) -> anyhow::Result<()> {
    if wait {
        if format == Format::Table {
            println!("promotion {} requested", promotion.id);
        }
        follow(client, promotion.id, format).await
    } else {
        print_promotion(&promotion, format)
    }
}

fn print_promotion(promotion: &proto::Promotion, format: Format) -> anyhow::Result<()> {
    let colours = output::colours_on(&std::io::stdout());
    output::print(&promotion_json(promotion), format, |v| {
        promotion_detail(v, colours)
    })
}

/// Follows `WatchPromotion` until the promotion ends: on a terminal, a line per transition and
/// a status line redrawn in place with the stages and what it waits for; otherwise a plain line
/// per transition and per change of what it waits for (`-o json`: one Promotion a line). Ends
/// with an [`Ended`] error unless the promotion Succeeded.
async fn follow(mut client: Client, id: String, format: Format) -> anyhow::Result<()> {
    let live = format == Format::Table && std::io::stdout().is_terminal();
    let colours = output::colours_on(&std::io::stdout());
    let mut stream = client
        .watch_promotion(proto::WatchPromotionRequest { id: id.clone() })
        .await
        .map_err(|status| rpc_error("WatchPromotion", status))?
        .into_inner();
    let mut shown_transitions = 0;
    let mut shown_blockers = String::new();
    let mut last = None;
    while let Some(promotion) = stream.next().await {
        let promotion = promotion.map_err(|status| rpc_error("WatchPromotion", status))?;
        let value = promotion_json(&promotion);
        let mut out = std::io::stdout().lock();
        match format {
            Format::Json => writeln!(out, "{}", serde_json::to_string(&value)?)?,
            Format::Yaml => writeln!(out, "---\n{}", serde_yaml_ng::to_string(&value)?.trim_end())?,
            Format::Table => {
                if live {
                    write!(out, "\r\x1b[K")?;
                }
                let transitions = value["transitions"]
                    .as_array()
                    .map_or(&[][..], Vec::as_slice);
                for t in transitions.iter().skip(shown_transitions) {
                    writeln!(out, "{}", transition_line(t, colours))?;
                }
                shown_transitions = shown_transitions.max(transitions.len());
                let blockers = blocker_lines(&value);
                if live {
                    write!(out, "{}", stages_line(&value, colours))?;
                    if let Some(first) = blockers.first() {
                        write!(out, "  waiting: {first}")?;
                    }
                } else if blockers.join("\n") != shown_blockers {
                    for line in &blockers {
                        writeln!(out, "  waiting: {line}")?;
                    }
                    shown_blockers = blockers.join("\n");
                }
            }
        }
        out.flush().context("cannot write to stdout")?;
        last = Some(promotion);
    }
    if live {
        println!();
    }
    let Some(last) = last else {
        anyhow::bail!("WatchPromotion of {id} ended without a promotion");
    };
    match state_of(last.state) {
        proto::PromotionState::Succeeded => Ok(()),
        state @ (proto::PromotionState::Failed
        | proto::PromotionState::Rejected
        | proto::PromotionState::Aborted) => Err(Ended {
            id,
            state: state_name(state),
            message: last.message,
        }
        .into()),
        state => anyhow::bail!(
            "WatchPromotion of {id} ended while the promotion is {}",
            state_name(state)
        ),
    }
}

fn state_of(value: i32) -> proto::PromotionState {
    proto::PromotionState::try_from(value).unwrap_or(proto::PromotionState::Unspecified)
}

/// The state as the lifecycle names it (`AwaitingApproval`); the same in tables and JSON.
fn state_name(state: proto::PromotionState) -> &'static str {
    use proto::PromotionState as S;
    match state {
        S::Unspecified => "",
        S::Pending => "Pending",
        S::AwaitingApproval => "AwaitingApproval",
        S::Approved => "Approved",
        S::Promoting => "Promoting",
        S::Syncing => "Syncing",
        S::Verifying => "Verifying",
        S::Succeeded => "Succeeded",
        S::Rejected => "Rejected",
        S::Failed => "Failed",
        S::Aborted => "Aborted",
    }
}

fn state_tone(state: &str) -> Option<Tone> {
    match state {
        "" => None,
        "Succeeded" => Some(Tone::Good),
        "Rejected" | "Failed" | "Aborted" => Some(Tone::Bad),
        _ => Some(Tone::Waiting),
    }
}

pub fn promotion_json(p: &proto::Promotion) -> Value {
    json!({
        "name": p.name,
        "id": p.id,
        "sourceEnvironment": p.source_environment,
        "targetEnvironment": p.target_environment,
        "revision": p.revision,
        "rollback": p.rollback,
        "rerun": p.rerun,
        "state": state_name(state_of(p.state)),
        "message": p.message,
        "requestedBy": p.requested_by,
        "reason": p.reason,
        "approvals": p.approvals.iter().map(|a| json!({
            "approver": a.approver,
            "groups": a.groups,
            "time": wire::time(&a.time),
            "comment": a.comment,
        })).collect::<Vec<_>>(),
        "approvalsMissing": p.approvals_missing,
        "commit": p.commit,
        "blockers": p.blockers.iter().map(|b| json!({
            "kind": b.kind,
            "message": b.message,
            "groups": b.groups,
            "until": wire::time(&b.until),
            "promotionId": b.promotion_id,
            "objects": b.objects,
        })).collect::<Vec<_>>(),
        "transitions": p.transitions.iter().map(|t| json!({
            "from": state_name(state_of(t.from)),
            "to": state_name(state_of(t.to)),
            "actor": t.actor,
            "reason": t.reason,
            "time": wire::time(&t.time),
        })).collect::<Vec<_>>(),
        "createTime": wire::time(&p.create_time),
        "updateTime": wire::time(&p.update_time),
        "verification": p.verification.iter().map(|c| json!({
            "name": c.name,
            "kind": c.kind,
            "status": c.status,
            "value": c.value,
            "message": c.message,
            "successes": c.successes,
            "failures": c.failures,
            "runs": c.runs,
            "startTime": wire::time(&c.start_time),
            "lastRunTime": wire::time(&c.last_run_time),
        })).collect::<Vec<_>>(),
    })
}

fn audit_json(e: &proto::AuditEvent) -> Value {
    json!({
        "id": e.id,
        "time": wire::time(&e.time),
        "actor": e.actor,
        "action": e.action,
        "environment": e.environment,
        "promotionId": e.promotion_id,
        "revision": e.revision,
        "reason": e.reason,
    })
}

/// Every blocker's message, with the details the message may not spell out.
fn blocker_lines(promotion: &Value) -> Vec<String> {
    promotion["blockers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|b| {
            let mut line = format!("{}: {}", text(&b["kind"]), text(&b["message"]));
            let until = text(&b["until"]);
            if !until.is_empty() && !line.contains(&until) {
                line.push_str(&format!(" (until {until})"));
            }
            let objects: Vec<String> = b["objects"]
                .as_array()
                .into_iter()
                .flatten()
                .map(text)
                .collect();
            if !objects.is_empty() {
                line.push_str(&format!(" [{}]", objects.join(", ")));
            }
            line
        })
        .collect()
}

fn transition_line(t: &Value, colours: bool) -> String {
    let to = text(&t["to"]);
    let from = text(&t["from"]);
    let step = if from.is_empty() {
        "created".to_owned()
    } else {
        format!("{from} →")
    };
    format!(
        "{}  {step} {}  by {}  {}",
        text(&t["time"]),
        paint(&to, state_tone(&to), colours),
        text(&t["actor"]),
        text(&t["reason"]),
    )
    .trim_end()
    .to_owned()
}

const STAGES: [&str; 7] = [
    "Pending",
    "AwaitingApproval",
    "Approved",
    "Promoting",
    "Syncing",
    "Verifying",
    "Succeeded",
];

/// The lifecycle's stages with the current one painted and those before it ticked.
fn stages_line(promotion: &Value, colours: bool) -> String {
    let state = text(&promotion["state"]);
    let current = STAGES.iter().position(|s| *s == state);
    let mut parts: Vec<String> = STAGES
        .iter()
        .enumerate()
        .map(|(i, stage)| match current {
            Some(c) if i < c => format!("✓ {stage}"),
            Some(c) if i == c => paint(&format!("▶ {stage}"), state_tone(stage), colours),
            _ => format!("· {stage}"),
        })
        .collect();
    if current.is_none() {
        parts.push(paint(&format!("✗ {state}"), state_tone(&state), colours));
    }
    parts.join("  ")
}

/// `stagehand promotion ID`: what it is, where it stands and every reason it is not moving.
fn promotion_detail(p: &Value, colours: bool) -> String {
    let state = text(&p["state"]);
    let from = text(&p["sourceEnvironment"]);
    let target = if p["rollback"].as_bool() == Some(true) {
        format!("{} (rollback)", text(&p["targetEnvironment"]))
    } else {
        format!("{} (from {from})", text(&p["targetEnvironment"]))
    };
    let approvals: Vec<String> = p["approvals"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| {
            let comment = text(&a["comment"]);
            let mut line = format!("{} at {}", text(&a["approver"]), text(&a["time"]));
            if !comment.is_empty() {
                line.push_str(&format!(": {comment}"));
            }
            line
        })
        .collect();
    let fields = [
        ("promotion", text(&p["id"])),
        ("target", target),
        ("revision", text(&p["revision"])),
        ("state", paint(&state, state_tone(&state), colours)),
        ("message", text(&p["message"])),
        ("requested by", text(&p["requestedBy"])),
        ("reason", text(&p["reason"])),
        ("approvals", approvals.join("; ")),
        ("approvals missing", text(&p["approvalsMissing"])),
        ("commit", text(&p["commit"])),
        ("created", text(&p["createTime"])),
        ("updated", text(&p["updateTime"])),
    ];
    let mut out = String::new();
    for (label, value) in fields {
        if !value.is_empty() {
            out.push_str(&format!("{:<19}{value}\n", format!("{label}:")));
        }
    }
    let blockers = blocker_lines(p);
    if !blockers.is_empty() {
        out.push_str("\nwaiting for:\n");
        for line in blockers {
            out.push_str(&format!("  - {line}\n"));
        }
    }
    let checks: Vec<Vec<String>> = p["verification"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            vec![
                text(&c["name"]),
                text(&c["kind"]),
                text(&c["status"]),
                text(&c["value"]),
                text(&c["message"]),
            ]
        })
        .collect();
    if !checks.is_empty() {
        out.push_str("\nverification:\n");
        out.push_str(&output::painted_table(
            &["CHECK", "KIND", "STATUS", "VALUE", "MESSAGE"],
            &checks,
            &|column, cell| match (column, cell) {
                (2, "passed") => Some(Tone::Good),
                (2, "failed") => Some(Tone::Bad),
                (2, _) => Some(Tone::Waiting),
                _ => None,
            },
            colours,
        ));
    }
    let rows: Vec<Vec<String>> = p["transitions"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| {
            vec![
                text(&t["time"]),
                text(&t["from"]),
                text(&t["to"]),
                text(&t["actor"]),
                text(&t["reason"]),
            ]
        })
        .collect();
    if !rows.is_empty() {
        out.push('\n');
        out.push_str(&output::painted_table(
            &["TIME", "FROM", "TO", "ACTOR", "REASON"],
            &rows,
            &|column, cell| (column == 2).then(|| state_tone(cell)).flatten(),
            colours,
        ));
    }
    out
}

fn promotions_table(list: &Value, now: SystemTime, colours: bool) -> String {
    let rows: Vec<Vec<String>> = list["promotions"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            let source = if p["rollback"].as_bool() == Some(true) {
                "(rollback)".to_owned()
            } else {
                text(&p["sourceEnvironment"])
            };
            let waiting = blocker_lines(p).into_iter().next();
            vec![
                text(&p["id"]),
                text(&p["targetEnvironment"]),
                source,
                output::short(&p["revision"]),
                text(&p["state"]),
                text(&p["requestedBy"]),
                age(&p["createTime"], now),
                waiting.unwrap_or_else(|| output::first_line(&p["message"])),
            ]
        })
        .collect();
    if rows.is_empty() {
        return "no promotions\n".to_owned();
    }
    output::painted_table(
        &[
            "ID", "TARGET", "FROM", "REVISION", "STATE", "BY", "AGE", "MESSAGE",
        ],
        &rows,
        &|column, cell| (column == 4).then(|| state_tone(cell)).flatten(),
        colours,
    )
}

/// How long ago an RFC 3339 time was, in whole seconds, minutes, hours or days.
fn age(value: &Value, now: SystemTime) -> String {
    let Some(then) = value
        .as_str()
        .and_then(|t| humantime::parse_rfc3339(t).ok())
    else {
        return String::new();
    };
    let seconds = now.duration_since(then).map_or(0, |d| d.as_secs());
    match seconds {
        0..60 => format!("{seconds}s"),
        60..3600 => format!("{}m", seconds / 60),
        3600..86_400 => format!("{}h", seconds / 3600),
        _ => format!("{}d", seconds / 86_400),
    }
}

fn audit_table(list: &Value) -> String {
    let rows: Vec<Vec<String>> = list["events"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            vec![
                text(&e["time"]),
                text(&e["actor"]),
                text(&e["action"]),
                text(&e["environment"]),
                text(&e["promotionId"]),
                output::short(&e["revision"]),
                text(&e["reason"]),
            ]
        })
        .collect();
    if rows.is_empty() {
        return "no audit events\n".to_owned();
    }
    output::table(
        &[
            "TIME",
            "ACTOR",
            "ACTION",
            "ENVIRONMENT",
            "PROMOTION",
            "REVISION",
            "REASON",
        ],
        &rows,
    )
}

/// One row per object that differs (or exists on one side only), one per differing field.
fn compare_table(comparison: &Value) -> String {
    let mut out = format!(
        "{} at {}  →  {} at {}\n\n",
        text(&comparison["fromEnvironment"]),
        output::short(&comparison["fromRevision"]),
        text(&comparison["toEnvironment"]),
        output::short(&comparison["toRevision"]),
    );
    let mut rows = Vec::new();
    for o in comparison["objects"].as_array().into_iter().flatten() {
        if o["status"] == "same" {
            continue;
        }
        let fields = o["fields"].as_array().map_or(&[][..], Vec::as_slice);
        if fields.is_empty() {
            rows.push(vec![
                text(&o["kind"]),
                text(&o["name"]),
                text(&o["status"]),
                String::new(),
                String::new(),
                String::new(),
            ]);
        }
        for f in fields {
            rows.push(vec![
                text(&o["kind"]),
                text(&o["name"]),
                text(&o["status"]),
                text(&f["path"]),
                text(&f["fromValue"]),
                text(&f["toValue"]),
            ]);
        }
    }
    if rows.is_empty() {
        out.push_str("no differences\n");
    } else {
        out.push_str(&output::table(
            &["KIND", "NAME", "STATUS", "FIELD", "FROM", "TO"],
            &rows,
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_verification_prints_each_check_with_its_value() {
        let check = |name: &str, kind: &str, status: &str, value: &str, message: &str| {
            proto::VerificationCheck {
                name: name.into(),
                kind: kind.into(),
                status: status.into(),
                value: value.into(),
                message: message.into(),
                failures: u32::from(status == "failed") * 3,
                ..Default::default()
            }
        };
        let p = proto::Promotion {
            id: "p2".into(),
            target_environment: "staging".into(),
            state: proto::PromotionState::Failed as i32,
            verification: vec![
                check("smoke", "job", "passed", "", "Job smoke succeeded"),
                check(
                    "error-rate",
                    "prometheus",
                    "failed",
                    "0.5",
                    "failed: value 0.5 is not below 0.05",
                ),
            ],
            ..Default::default()
        };
        let value = promotion_json(&p);
        assert_eq!(value["verification"][1]["value"], "0.5");
        assert_eq!(value["verification"][1]["failures"], 3);
        let detail = promotion_detail(&value, false);
        let row = detail
            .lines()
            .find(|l| l.starts_with("error-rate"))
            .unwrap_or_else(|| panic!("a row for the check: {detail}"));
        for cell in ["prometheus", "failed", "0.5", "value 0.5 is not below 0.05"] {
            assert!(row.contains(cell), "{row}");
        }
        assert!(detail.contains("verification:\nCHECK"), "{detail}");
    }

    #[test]
    fn a_waiting_promotion_prints_every_blocker_and_its_state_in_camel_case_json() {
        let p = proto::Promotion {
            id: "p1".into(),
            source_environment: "staging".into(),
            target_environment: "prod".into(),
            state: proto::PromotionState::AwaitingApproval as i32,
            approvals_missing: 1,
            blockers: vec![
                proto::Blocker {
                    kind: "approvals".into(),
                    message: "1 more approval from release-managers".into(),
                    groups: vec!["release-managers".into()],
                    ..Default::default()
                },
                proto::Blocker {
                    kind: "freeze".into(),
                    message: "held by a freeze window".into(),
                    until: Some(prost_types::Timestamp {
                        seconds: 1_795_000_000,
                        nanos: 0,
                    }),
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let value = promotion_json(&p);
        assert_eq!(value["state"], "AwaitingApproval");
        assert_eq!(value["approvalsMissing"], 1);
        assert_eq!(value["blockers"][1]["until"], "2026-11-18T11:06:40.000Z");
        let detail = promotion_detail(&value, false);
        assert!(
            detail.contains("approvals: 1 more approval from release-managers"),
            "{detail}"
        );
        assert!(
            detail.contains("freeze: held by a freeze window (until 2026-11-18T11:06:40.000Z)"),
            "{detail}"
        );
        assert!(!detail.contains("\x1b["), "no colours when off: {detail}");
    }

    #[test]
    fn the_stage_line_ticks_the_stages_done_and_marks_an_end_off_the_happy_path() {
        let line = stages_line(&json!({"state": "Syncing"}), false);
        assert!(
            line.contains("✓ Promoting  ▶ Syncing  · Verifying"),
            "{line}"
        );
        let line = stages_line(&json!({"state": "Rejected"}), false);
        assert!(line.ends_with("✗ Rejected"), "{line}");
    }
}
