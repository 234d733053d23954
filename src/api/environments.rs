//! `stagehand.v1.EnvironmentService`: the environments of the pipeline as clients see them.

use std::pin::Pin;
use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::mpsc;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::api::auth::{self, Authenticator, Permission};
use crate::api::watch::{self, WatchSlot, Watcher, Watches};
use crate::cluster::ObjectRef;
use crate::cluster::apply::Change;
use crate::cluster::health::HealthStatus;
use crate::cluster::ignore::Ignored;
use crate::pipeline;
use crate::proto;
use crate::reconcile::{EnvironmentStatus, Plan};
use crate::service::reload::Supervisor;
use crate::service::{self, EnvironmentView};
use crate::store;

/// The handlers of `stagehand.v1.EnvironmentService`: parse, call the service, convert.
/// Each call goes to the service of the pipeline file as it is now (see [`Supervisor`]).
pub struct EnvironmentApi {
    supervisor: Arc<Supervisor>,
    authenticator: Authenticator,
    watches: Watches,
}

impl EnvironmentApi {
    /// Serves the environments of whatever pipeline `supervisor` runs now; open watches count
    /// against `watches` and look their caller up again through `authenticator`.
    pub fn new(
        supervisor: Arc<Supervisor>,
        authenticator: Authenticator,
        watches: Watches,
    ) -> Self {
        Self {
            supervisor,
            authenticator,
            watches,
        }
    }
}

fn required(name: &str) -> Result<&str, Status> {
    if name.is_empty() {
        Err(Status::invalid_argument(
            "name: an environment name is required",
        ))
    } else {
        Ok(name)
    }
}

/// The one mapping from service errors to status codes. Internal detail is logged; the client
/// gets a message it can act on.
fn status_of(error: service::Error) -> Status {
    match error {
        service::Error::Unknown(e) => Status::not_found(e.to_string()),
        service::Error::Suspended { .. } => Status::failed_precondition(error.to_string()),
        service::Error::Stopping => Status::unavailable(error.to_string()),
        // Several replicas: another one takes this write; the message names it.
        service::Error::NotLeader(_) | service::Error::NotHolder(_) | service::Error::Fenced(_) => {
            Status::unavailable(error.to_string())
        }
        service::Error::Fetch(_)
        | service::Error::History { .. }
        | service::Error::Plan { .. }
        | service::Error::Store { .. } => {
            tracing::warn!(error = %crate::service::describe(&error), "request failed");
            Status::unavailable(format!("{error}; see the server log for the cause"))
        }
    }
}

fn unknown(error: service::UnknownEnvironment) -> Status {
    Status::not_found(error.to_string())
}

type EnvironmentStream = Pin<Box<dyn Stream<Item = Result<proto::Environment, Status>> + Send>>;

#[tonic::async_trait]
impl proto::environment_service_server::EnvironmentService for EnvironmentApi {
    async fn list_environments(
        &self,
        request: Request<proto::ListEnvironmentsRequest>,
    ) -> Result<Response<proto::ListEnvironmentsResponse>, Status> {
        let service = self.supervisor.service();
        let identity = auth::identity(&request)?;
        let pipeline = service.pipeline();
        Ok(Response::new(proto::ListEnvironmentsResponse {
            pipeline: pipeline.name.clone(),
            rejected_pipeline: self.supervisor.rejected().unwrap_or_default(),
            // Only the environments the caller may see.
            environments: service
                .environments()
                .iter()
                .filter(|view| {
                    auth::authorize(
                        service.access(),
                        &identity,
                        &view.environment.name,
                        Permission::View,
                    )
                    .is_ok()
                })
                .map(|view| view_to_proto(view, &pipeline.repository.branch))
                .collect(),
        }))
    }

    async fn get_environment(
        &self,
        request: Request<proto::GetEnvironmentRequest>,
    ) -> Result<Response<proto::Environment>, Status> {
        let name = required(&request.get_ref().name)?;
        self.allowed(&request, name, Permission::View)?;
        let view = self
            .supervisor
            .service()
            .environment(name)
            .map_err(unknown)?;
        Ok(Response::new(self.to_proto(&view)))
    }

    async fn sync_environment(
        &self,
        request: Request<proto::SyncEnvironmentRequest>,
    ) -> Result<Response<proto::SyncEnvironmentResponse>, Status> {
        let identity = self.allowed(&request, &request.get_ref().name, Permission::Sync)?;
        let request = request.into_inner();
        let name = required(&request.name)?;
        let view = self
            .supervisor
            .service()
            .sync_by_hand(name, request.fetch, request.wait, &identity.name)
            .await
            .map_err(status_of)?;
        Ok(Response::new(proto::SyncEnvironmentResponse {
            status: Some(status_to_proto(&view)),
        }))
    }

    async fn diff_environment(
        &self,
        request: Request<proto::DiffEnvironmentRequest>,
    ) -> Result<Response<proto::DiffEnvironmentResponse>, Status> {
        self.allowed(&request, &request.get_ref().name, Permission::View)?;
        let request = request.into_inner();
        let name = required(&request.name)?;
        if !request.revision.is_empty() {
            return Err(Status::invalid_argument(
                "revision: only the desired revision can be compared with the cluster for now; leave it empty",
            ));
        }
        let plan = self
            .supervisor
            .service()
            .diff(name)
            .await
            .map_err(status_of)?;
        Ok(Response::new(plan_to_proto(&plan)))
    }

    async fn suspend_environment(
        &self,
        request: Request<proto::SuspendEnvironmentRequest>,
    ) -> Result<Response<proto::Environment>, Status> {
        let name = required(&request.get_ref().name)?;
        let identity = self.allowed(&request, name, Permission::Suspend)?;
        let reason = &request.get_ref().reason;
        crate::remark::check("reason", reason)?;
        let view = self
            .supervisor
            .service()
            .suspend(name, reason, &identity.name)
            .await
            .map_err(status_of)?;
        Ok(Response::new(self.to_proto(&view)))
    }

    async fn resume_environment(
        &self,
        request: Request<proto::ResumeEnvironmentRequest>,
    ) -> Result<Response<proto::Environment>, Status> {
        let name = required(&request.get_ref().name)?;
        let identity = self.allowed(&request, name, Permission::Suspend)?;
        let view = self
            .supervisor
            .service()
            .resume(name, &identity.name)
            .await
            .map_err(status_of)?;
        Ok(Response::new(self.to_proto(&view)))
    }

    async fn list_revisions(
        &self,
        request: Request<proto::ListRevisionsRequest>,
    ) -> Result<Response<proto::ListRevisionsResponse>, Status> {
        self.allowed(&request, &request.get_ref().name, Permission::View)?;
        let request = request.into_inner();
        let name = required(&request.name)?;
        let limit = match request.limit {
            0 => service::HISTORY_DEFAULT,
            n => usize::try_from(n).unwrap_or(usize::MAX),
        };
        let entries = self
            .supervisor
            .service()
            .history(name, limit)
            .await
            .map_err(status_of)?;
        Ok(Response::new(proto::ListRevisionsResponse {
            revisions: entries.iter().map(revision_to_proto).collect(),
        }))
    }

    async fn list_image_sources(
        &self,
        request: Request<proto::ListImageSourcesRequest>,
    ) -> Result<Response<proto::ListImageSourcesResponse>, Status> {
        let service = self.supervisor.service();
        let identity = auth::identity(&request)?;
        let views = service.image_sources().map_err(|e| status_of(e.into()))?;
        Ok(Response::new(proto::ListImageSourcesResponse {
            // Only the sources entering an environment the caller may see.
            sources: views
                .iter()
                .filter(|view| {
                    auth::authorize(
                        service.access(),
                        &identity,
                        &view.source.environment,
                        Permission::View,
                    )
                    .is_ok()
                })
                .map(image_source_to_proto)
                .collect(),
        }))
    }

    type WatchEnvironmentsStream = EnvironmentStream;

    async fn watch_environments(
        &self,
        request: Request<proto::WatchEnvironmentsRequest>,
    ) -> Result<Response<Self::WatchEnvironmentsStream>, Status> {
        let names = request.get_ref().names.clone();
        for name in &names {
            self.allowed(&request, name, Permission::View)?;
        }
        let identity = auth::identity(&request)?;
        let watcher = Watcher {
            name: identity.name.clone(),
            authenticator: self.authenticator.clone(),
            supervisor: self.supervisor.clone(),
        };
        if names.is_empty() {
            // Someone who may see nothing has nothing to watch: refused, not an empty stream.
            watcher.views_any()?;
        }
        let slot = self.watches.open(&identity.name)?;
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(follow_environments(watcher, names, slot, tx));
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

/// Feeds a `WatchEnvironments` stream: a snapshot of every watched environment the caller may
/// view, then each change, until the caller goes away, the service is replaced (the client
/// watches again) or the caller loses `view` (PERMISSION_DENIED). `names` empty: every
/// environment the caller may view, as long as it may view one.
async fn follow_environments(
    watcher: Watcher,
    names: Vec<String>,
    _slot: WatchSlot,
    tx: mpsc::Sender<Result<proto::Environment, Status>>,
) {
    let service = watcher.supervisor.service();
    let branch = service.pipeline().repository.branch.clone();
    let wanted = |name: &str| names.is_empty() || names.iter().any(|n| n == name);
    let may_watch = || {
        if names.is_empty() {
            watcher.views_any()
        } else {
            names.iter().try_for_each(|name| watcher.may_view(name))
        }
    };
    let mut changes = service.changes();
    for view in service.environments() {
        let name = &view.environment.name;
        if wanted(name)
            && watcher.may_view(name).is_ok()
            && tx.send(Ok(view_to_proto(&view, &branch))).await.is_err()
        {
            return;
        }
    }
    let mut recheck = tokio::time::interval(watch::RECHECK);
    loop {
        let changed = tokio::select! {
            changed = changes.recv() => match changed {
                Some(name) => Some(name),
                None => {
                    // This service stopped: a reload replaced it, or the server stops. The
                    // caller is judged by the new rules before the stream ends.
                    watch::until_replaced(&watcher.supervisor, &service, &mut recheck).await;
                    if let Err(status) = may_watch() {
                        let _ = tx.send(Err(status)).await;
                    }
                    return;
                }
            },
            _ = recheck.tick() => None,
            () = tx.closed() => return,
        };
        if let Err(status) = may_watch() {
            let _ = tx.send(Err(status)).await;
            return;
        }
        let Some(name) = changed.filter(|name| wanted(name) && watcher.may_view(name).is_ok())
        else {
            continue;
        };
        if let Ok(view) = service.environment(&name)
            && tx.send(Ok(view_to_proto(&view, &branch))).await.is_err()
        {
            return;
        }
    }
}

impl EnvironmentApi {
    /// The caller, when `environment` exists and they hold `permission` in it: NOT_FOUND
    /// naming an environment that is unknown or that the caller may not view (alike, so that
    /// names give nothing away), PERMISSION_DENIED naming the permission otherwise.
    fn allowed<T>(
        &self,
        request: &Request<T>,
        environment: &str,
        permission: Permission,
    ) -> Result<Arc<auth::Identity>, Status> {
        let service = self.supervisor.service();
        service
            .environment(required(environment)?)
            .map_err(unknown)?;
        auth::require(request, service.access(), environment, permission, || {
            unknown(service::UnknownEnvironment {
                environment: environment.to_owned(),
                pipeline: service.pipeline().name.clone(),
            })
        })
    }

    fn to_proto(&self, view: &EnvironmentView) -> proto::Environment {
        view_to_proto(
            view,
            &self.supervisor.service().pipeline().repository.branch,
        )
    }
}

fn view_to_proto(view: &EnvironmentView, main_branch: &str) -> proto::Environment {
    proto::Environment {
        status: Some(status_to_proto(view)),
        ..to_proto(&view.environment, main_branch)
    }
}

fn freeze_window(window: &pipeline::FreezeWindow) -> proto::FreezeWindow {
    let mut out = proto::FreezeWindow {
        timezone: window.timezone.clone(),
        reason: window.reason.clone(),
        ..Default::default()
    };
    match &window.schedule {
        pipeline::FreezeSchedule::Weekly { start, end } => {
            out.start = start.to_string();
            out.end = end.to_string();
        }
        pipeline::FreezeSchedule::Absolute { from, until } => {
            out.from = Some(jiff_timestamp(*from));
            out.until = Some(jiff_timestamp(*until));
        }
    }
    out
}

fn jiff_timestamp(time: jiff::Timestamp) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: time.as_second(),
        nanos: time.subsec_nanosecond(),
    }
}

pub(super) fn timestamp(time: SystemTime) -> prost_types::Timestamp {
    prost_types::Timestamp::from(time)
}

pub(super) fn reference(object: &ObjectRef) -> proto::ObjectRef {
    proto::ObjectRef {
        api_version: object.api_version(),
        kind: object.kind.clone(),
        namespace: object.namespace.clone().unwrap_or_default(),
        name: object.name.clone(),
    }
}

fn health(status: Option<HealthStatus>) -> i32 {
    match status {
        None => proto::Health::Unspecified,
        Some(HealthStatus::Healthy) => proto::Health::Healthy,
        Some(HealthStatus::Progressing) => proto::Health::Progressing,
        Some(HealthStatus::Failed) => proto::Health::Failed,
    }
    .into()
}

/// The action word and the field paths of one object's change.
fn action(change: &Change) -> (&'static str, &[String]) {
    match change {
        Change::Created => ("created", &[]),
        Change::Adopted => ("adopted", &[]),
        Change::Configured { fields } => ("configured", fields),
        Change::Unchanged => ("unchanged", &[]),
        Change::Drifted { fields } => ("drifted", fields),
        Change::Healed { fields } => ("healed", fields),
        Change::Recreated => ("recreated", &[]),
        Change::Failed { .. } => ("failed", &[]),
    }
}

fn status_to_proto(view: &EnvironmentView) -> proto::EnvironmentStatus {
    let status: &EnvironmentStatus = &view.status;
    let mut objects: Vec<proto::ObjectStatus> = status
        .objects
        .iter()
        .map(|object| {
            let (word, fields) = action(&object.change);
            let message = match (&object.change, &object.health) {
                (Change::Failed { error }, _) => error.clone(),
                (_, Some(health)) => health.message.clone(),
                _ => String::new(),
            };
            let drifted = status
                .drift
                .iter()
                .find(|d| d.reference == object.reference)
                .map(|d| d.fields.clone())
                .unwrap_or_else(|| match object.change {
                    Change::Drifted { .. } | Change::Healed { .. } => fields.to_vec(),
                    _ => Vec::new(),
                });
            proto::ObjectStatus {
                object: Some(reference(&object.reference)),
                action: word.to_owned(),
                health: health(object.health.as_ref().map(|h| h.status)),
                message,
                drifted_fields: drifted,
                ignored_fields: ignored_to_proto(&object.ignored),
            }
        })
        .collect();
    objects.extend(status.pruned.iter().map(|pruned| proto::ObjectStatus {
        object: Some(reference(&pruned.reference)),
        action: "pruned".to_owned(),
        health: health(None),
        message: pruned.outcome.to_string(),
        drifted_fields: Vec::new(),
        ignored_fields: Vec::new(),
    }));
    let next_sync_time = status
        .next_attempt_in
        .and_then(|after| status.last_attempt.map(|_| SystemTime::now() + after))
        .map(timestamp);
    proto::EnvironmentStatus {
        desired_revision: view
            .desired
            .as_ref()
            .map(|d| d.commit.clone())
            .unwrap_or_default(),
        applied_revision: status.applied_revision.clone().unwrap_or_default(),
        attempted_revision: status.attempted_revision.clone().unwrap_or_default(),
        last_sync_time: status.last_attempt.map(timestamp),
        health: health(status.health),
        last_error: status
            .last_error
            .clone()
            .or_else(|| view.source_error.clone())
            .unwrap_or_default(),
        objects,
        reason: status.reason.as_str().to_owned(),
        message: status.message.clone(),
        suspended: status.suspended,
        out_of_sync: view.out_of_sync(),
        next_sync_time,
        last_applied_time: status.last_applied.map(timestamp),
        failures: status.failures,
        passes: status.passes,
        fetched_time: view.desired.as_ref().map(|d| timestamp(d.fetched)),
        alerts: view.alerts.clone(),
        replica: view.holder.clone().unwrap_or_default(),
    }
}

pub(super) fn plan_to_proto(plan: &Plan) -> proto::DiffEnvironmentResponse {
    proto::DiffEnvironmentResponse {
        revision: plan.revision.clone(),
        // Field paths only: values, and so Secret data, never leave the service.
        objects: plan
            .diffs()
            .into_iter()
            .map(|d| proto::ObjectDiff {
                object: Some(reference(&d.reference)),
                change: d.change.to_owned(),
                diff: d.diff,
                changed_secret_keys: d.changed_secret_keys,
                ignored_fields: ignored_to_proto(&d.ignored_fields),
            })
            .collect(),
    }
}

fn ignored_to_proto(ignored: &[Ignored]) -> Vec<proto::IgnoredField> {
    ignored
        .iter()
        .map(|i| proto::IgnoredField {
            field: i.field.clone(),
            rule: u32::try_from(i.rule)
                .expect("a pipeline file holds far fewer rules than u32::MAX"),
        })
        .collect()
}

fn revision_to_proto(entry: &service::HistoryEntry) -> proto::Revision {
    let git = &entry.entry;
    proto::Revision {
        commit: git.commit.to_string(),
        summary: git.summary.clone(),
        time: Some(prost_types::Timestamp {
            seconds: git.time,
            nanos: 0,
        }),
        promotion_id: git.trailers.promotion.clone().unwrap_or_default(),
        promoted_from: git.trailers.promoted_from.clone().unwrap_or_default(),
        requested_by: git.trailers.requested_by.clone().unwrap_or_default(),
        approved_by: git.trailers.approved_by.clone(),
        applied: entry.applied,
        syncs: entry.syncs.iter().map(sync_to_proto).collect(),
        verified: entry.verified,
        images: entry.images.clone(),
    }
}

fn image_source_to_proto(view: &service::images::ImageSourceView) -> proto::ImageSource {
    let (source, status) = (&view.source, &view.status);
    let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
    proto::ImageSource {
        name: source.name.clone(),
        repository: source.repository.to_string(),
        environment: source.environment.clone(),
        kustomize_name: source.kustomize_name.clone(),
        group: source.group.clone().unwrap_or_default(),
        policy: source.policy.to_string(),
        pin_digest: source.pin_digest,
        interval: prost_types::Duration::try_from(source.interval).ok(),
        status: Some(proto::ImageSourceStatus {
            last_check_time: status.last_check.map(timestamp),
            tags: status.tags.map_or(0, count),
            chosen_tag: status.chosen.clone().unwrap_or_default(),
            digest: status.digest.clone().unwrap_or_default(),
            skipped: status
                .skipped
                .iter()
                .map(|s| proto::SkippedTag {
                    tag: s.tag.clone(),
                    reason: s.reason.clone(),
                })
                .collect(),
            skipped_total: count(status.skipped_total),
            error: status.error.clone().unwrap_or_default(),
            last_commit: status.last_commit.clone().unwrap_or_default(),
            last_commit_time: status.last_commit_time.map(timestamp),
            current: status.current.clone().unwrap_or_default(),
            checks: status.checks,
        }),
    }
}

fn sync_to_proto(record: &store::SyncRecord) -> proto::SyncRun {
    let run = &record.run;
    proto::SyncRun {
        start_time: Some(timestamp(run.started_at)),
        end_time: Some(timestamp(run.finished_at)),
        result: run.result.clone(),
        message: run.message.clone(),
        applied: run.applied,
        passes: record.passes,
        created: run.counts.created,
        changed: run.counts.changed,
        pruned: run.counts.pruned,
        drifted: run.counts.drifted,
    }
}

/// The pipeline's view of an environment; `status` stays empty until reconcile reports one.
pub fn to_proto(env: &pipeline::Environment, main_branch: &str) -> proto::Environment {
    let source = match &env.source {
        pipeline::Source::Overlay { path } => proto::source::Model::Overlay(proto::OverlaySource {
            path: path.clone(),
            branch: main_branch.to_owned(),
        }),
        pipeline::Source::Branch { branch, path } => {
            proto::source::Model::Branch(proto::BranchSource {
                branch: branch.clone(),
                path: path.clone(),
            })
        }
    };
    proto::Environment {
        name: env.name.clone(),
        promotes_from: env.promotes_from.clone().unwrap_or_default(),
        source: Some(proto::Source {
            model: Some(source),
        }),
        approval: Some(proto::ApprovalPolicy {
            required: env.approval.required,
            groups: env.approval.groups.clone(),
            allow_self_approval: env.approval.allow_self_approval,
            allow_author_approval: env.approval.allow_author_approval,
            exempt_rollbacks: env.approval.exempt_rollbacks,
        }),
        freeze_windows: env.freeze_windows.iter().map(freeze_window).collect(),
        sync: Some(proto::SyncPolicy {
            interval_seconds: env.sync.interval.as_secs(),
            prune: env.sync.prune,
            self_heal: env.sync.self_heal,
            suspended: env.sync.suspend,
            auto: env.sync.auto,
        }),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freeze_windows_reach_the_api_in_either_form_with_their_reason() {
        let pipeline = pipeline::Pipeline::parse(
            std::path::Path::new("pipeline.yaml"),
            r#"
apiVersion: stagehand.dev/v1alpha1
kind: Pipeline
metadata: {name: shop}
spec:
  environments:
    - name: dev
      source: {overlay: dev}
      freezeWindows:
        - {start: "Fri 16:00", end: "Mon 08:00", timezone: Europe/Berlin}
        - {from: "2026-12-20T00:00:00Z", until: "2027-01-04T08:00:00.5+01:00", reason: holidays}
"#,
        )
        .expect("valid pipeline");
        let env = to_proto(&pipeline.environments[0], "main");
        let [weekly, absolute] = env.freeze_windows.as_slice() else {
            panic!("two windows: {:?}", env.freeze_windows);
        };
        assert_eq!(
            (weekly.start.as_str(), weekly.end.as_str()),
            ("Fri 16:00", "Mon 08:00")
        );
        assert_eq!(weekly.timezone, "Europe/Berlin");
        assert_eq!(
            (weekly.from, weekly.until, &weekly.reason),
            (None, None, &None)
        );
        assert!(absolute.start.is_empty() && absolute.end.is_empty());
        assert_eq!(
            absolute.from,
            Some(prost_types::Timestamp {
                seconds: 1_797_724_800,
                nanos: 0
            })
        );
        assert_eq!(
            absolute.until,
            Some(prost_types::Timestamp {
                seconds: 1_799_046_000,
                nanos: 500_000_000
            })
        );
        assert_eq!(absolute.reason.as_deref(), Some("holidays"));
        let approval = env.approval.expect("approval policy");
        assert!(approval.allow_author_approval && !approval.exempt_rollbacks);
    }
}
