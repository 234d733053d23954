//! `stagehand.v1.PromotionService`: parse, check the caller's permission in the target
//! environment, call the promotion engine, convert.

use std::pin::Pin;
use std::sync::Arc;
use std::time::SystemTime;

use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::environments::{plan_to_proto, timestamp};
use crate::api::auth::{self, Authenticator, Permission};
use crate::api::watch::{self, Watcher, Watches};
use crate::promotion::{self, Actor, PromotionView, compare};
use crate::proto;
use crate::service::reload::Supervisor;
use crate::store::{self, PromotionKind, PromotionState};

/// The handlers of `stagehand.v1.PromotionService`.
pub struct PromotionApi {
    supervisor: Arc<Supervisor>,
    authenticator: Authenticator,
    watches: Watches,
}

impl PromotionApi {
    /// Serves the promotions of whatever pipeline `supervisor` runs now; open watches count
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

    /// The caller, when `environment` exists and they hold `permission` in it.
    fn allowed<T>(
        &self,
        request: &Request<T>,
        environment: &str,
        permission: Permission,
    ) -> Result<Actor, Status> {
        if environment.is_empty() {
            return Err(Status::invalid_argument(
                "environment: an environment name is required",
            ));
        }
        let service = self.supervisor.service();
        service
            .environment(environment)
            .map_err(|e| Status::not_found(e.to_string()))?;
        // An environment the caller may not view answers as one that does not exist.
        let unknown = || {
            Status::not_found(
                crate::service::UnknownEnvironment {
                    environment: environment.to_owned(),
                    pipeline: service.pipeline().name.clone(),
                }
                .to_string(),
            )
        };
        let identity = auth::require(request, service.access(), environment, permission, unknown)?;
        Ok(actor(&identity))
    }

    /// The promotion `id` and the caller, when they hold `permission` in its target. A
    /// promotion into an environment the caller may not view answers as one that does not
    /// exist.
    async fn promotion_for<T>(
        &self,
        request: &Request<T>,
        id: &str,
        permission: Permission,
    ) -> Result<(PromotionView, Actor), Status> {
        if id.is_empty() {
            return Err(Status::invalid_argument("id: a promotion id is required"));
        }
        let service = self.supervisor.service();
        let view = service.promotions().get(id).await.map_err(status_of)?;
        let target = &view.promotion.target_environment;
        let identity = auth::identity(request)?;
        if !auth::visible(service.access(), &identity, target) {
            return Err(status_of(promotion::Error::NotFound { id: id.to_owned() }));
        }
        let actor = self.allowed(request, target, permission)?;
        Ok((view, actor))
    }

    /// [`Self::promotion_for`], with a refused permission written to the audit log as
    /// `action`: who tried to approve or override without the right is part of the record.
    async fn refusals_audited<T>(
        &self,
        request: &Request<T>,
        id: &str,
        permission: Permission,
        action: store::AuditAction,
    ) -> Result<(PromotionView, Actor), Status> {
        let result = self.promotion_for(request, id, permission).await;
        if let Err(status) = &result
            && status.code() == tonic::Code::PermissionDenied
        {
            let caller = actor(&*auth::identity(request)?);
            let engine = self.supervisor.service().promotions().clone();
            if let Err(error) = engine.refused(&caller, id, action, status.message()).await {
                tracing::warn!(promotion = %id, error = %crate::service::describe(&error), "cannot audit a refused call");
            }
        }
        result
    }

    /// The environments of the pipeline the caller may view, for listings to stay within;
    /// `None` when that is every one.
    fn visible_environments(&self, identity: &auth::Identity) -> Option<Vec<String>> {
        let service = self.supervisor.service();
        let environments = &service.pipeline().environments;
        let visible: Vec<String> = environments
            .iter()
            .filter(|env| auth::visible(service.access(), identity, &env.name))
            .map(|env| env.name.clone())
            .collect();
        (visible.len() < environments.len()).then_some(visible)
    }

    /// A promotion as the caller of `request` may see it.
    fn to_proto_for<T>(
        &self,
        request: &Request<T>,
        view: &PromotionView,
    ) -> Result<proto::Promotion, Status> {
        let identity = auth::identity(request)?;
        Ok(seen_by(self.supervisor.service().access(), &identity, view))
    }
}

/// A promotion as `identity` may see it: which objects of its source environment are unhealthy
/// only for those who may view that environment.
fn seen_by(
    access: &auth::AccessPolicy,
    identity: &auth::Identity,
    view: &PromotionView,
) -> proto::Promotion {
    let sees_source = view
        .promotion
        .source_environment
        .as_deref()
        .is_none_or(|source| auth::visible(access, identity, source));
    let mut promotion = promotion_to_proto(view);
    if !sees_source {
        redact_source_health(&mut promotion);
    }
    promotion
}

/// Keeps that the source is unhealthy and drops which of its objects are.
fn redact_source_health(promotion: &mut proto::Promotion) {
    for blocker in &mut promotion.blockers {
        if blocker.kind == promotion::BlockerKind::SourceHealth.as_str() {
            blocker.objects.clear();
            blocker.message = format!(
                "environment {:?} is not Healthy at {}",
                promotion.source_environment, promotion.revision
            );
        }
    }
}

fn actor(identity: &auth::Identity) -> Actor {
    Actor {
        name: identity.name.clone(),
        email: identity.email.clone(),
        groups: identity.groups.clone(),
    }
}

/// The one mapping from engine errors to status codes.
fn status_of(error: promotion::Error) -> Status {
    use promotion::Error as E;
    let message = crate::service::describe(&error);
    match error {
        E::Unknown(_) | E::NotFound { .. } => Status::not_found(message),
        E::UnknownRevision { .. } | E::OutsideHistory { .. } => Status::invalid_argument(message),
        E::Refused { .. } => Status::permission_denied(message),
        E::NoSource { .. }
        | E::NothingApplied { .. }
        | E::SourceNotRunning { .. }
        | E::SourceUnhealthy { .. }
        | E::NotSoaked { .. }
        | E::AlreadyRuns { .. }
        | E::AuthorsUnknown { .. }
        | E::UnsignedCommits { .. }
        | E::AllowedSigners { .. }
        | E::WrongState { .. }
        | E::NotFrozen { .. }
        | E::SourceVerificationFailed { .. }
        | E::NoVerifiedRevision { .. }
        | E::Git { .. }
        | E::Check { .. } => Status::failed_precondition(message),
        // Another replica takes writes: a client may try there (or here again later).
        E::NotLeader(_) => Status::unavailable(message),
        E::Repository(_) | E::StoredRevision { .. } | E::Store(_) | E::Stopping => {
            tracing::warn!(error = %message, "promotion request failed");
            Status::unavailable(message)
        }
    }
}

fn state_to_proto(state: PromotionState) -> proto::PromotionState {
    match state {
        PromotionState::Pending => proto::PromotionState::Pending,
        PromotionState::AwaitingApproval => proto::PromotionState::AwaitingApproval,
        PromotionState::Approved => proto::PromotionState::Approved,
        PromotionState::Promoting => proto::PromotionState::Promoting,
        PromotionState::Syncing => proto::PromotionState::Syncing,
        PromotionState::Verifying => proto::PromotionState::Verifying,
        PromotionState::Succeeded => proto::PromotionState::Succeeded,
        PromotionState::Rejected => proto::PromotionState::Rejected,
        PromotionState::Failed => proto::PromotionState::Failed,
        PromotionState::Aborted => proto::PromotionState::Aborted,
    }
}

fn state_from_proto(value: i32) -> Result<PromotionState, Status> {
    let state = proto::PromotionState::try_from(value)
        .map_err(|_| Status::invalid_argument(format!("states: unknown state {value}")))?;
    Ok(match state {
        proto::PromotionState::Unspecified => {
            return Err(Status::invalid_argument(
                "states: PROMOTION_STATE_UNSPECIFIED is not a state",
            ));
        }
        proto::PromotionState::Pending => PromotionState::Pending,
        proto::PromotionState::AwaitingApproval => PromotionState::AwaitingApproval,
        proto::PromotionState::Approved => PromotionState::Approved,
        proto::PromotionState::Promoting => PromotionState::Promoting,
        proto::PromotionState::Syncing => PromotionState::Syncing,
        proto::PromotionState::Verifying => PromotionState::Verifying,
        proto::PromotionState::Succeeded => PromotionState::Succeeded,
        proto::PromotionState::Rejected => PromotionState::Rejected,
        proto::PromotionState::Failed => PromotionState::Failed,
        proto::PromotionState::Aborted => PromotionState::Aborted,
    })
}

fn time_from_proto(time: Option<prost_types::Timestamp>) -> Result<Option<SystemTime>, Status> {
    time.map(|t| {
        SystemTime::try_from(t).map_err(|e| Status::invalid_argument(format!("bad time: {e}")))
    })
    .transpose()
}

fn non_empty(text: &str) -> Option<String> {
    (!text.is_empty()).then(|| text.to_owned())
}

fn promotion_to_proto(view: &PromotionView) -> proto::Promotion {
    let p = &view.promotion;
    proto::Promotion {
        name: format!("promotions/{}", p.id),
        id: p.id.clone(),
        source_environment: p.source_environment.clone().unwrap_or_default(),
        target_environment: p.target_environment.clone(),
        revision: p.revision.clone(),
        rollback: p.kind == PromotionKind::Rollback,
        rerun: p.rerun,
        state: state_to_proto(p.state).into(),
        message: p.message.clone(),
        requested_by: p.requested_by.clone(),
        reason: p.reason.clone(),
        approvals: view
            .approvals
            .iter()
            .map(|a| proto::Approval {
                approver: a.approver.clone(),
                groups: a.groups.clone(),
                time: Some(timestamp(a.at)),
                comment: a.comment.clone(),
            })
            .collect(),
        approvals_missing: view.approvals_missing,
        commit: p.commit.clone().unwrap_or_default(),
        blockers: view
            .blockers
            .iter()
            .map(|b| proto::Blocker {
                kind: b.kind.as_str().to_owned(),
                message: b.message.clone(),
                groups: b.groups.clone(),
                until: b.until.map(timestamp),
                promotion_id: b.promotion_id.clone().unwrap_or_default(),
                objects: b.objects.clone(),
            })
            .collect(),
        transitions: view
            .transitions
            .iter()
            .map(|t| proto::Transition {
                from: t
                    .from
                    .map_or(proto::PromotionState::Unspecified, state_to_proto)
                    .into(),
                to: state_to_proto(t.to).into(),
                actor: t.actor.clone(),
                reason: t.reason.clone(),
                time: Some(timestamp(t.at)),
            })
            .collect(),
        create_time: Some(timestamp(p.created_at)),
        update_time: Some(timestamp(p.updated_at)),
        verification: view
            .verification
            .iter()
            .map(|c| proto::VerificationCheck {
                name: c.name.clone(),
                kind: c.kind.clone(),
                status: c.status.as_str().to_owned(),
                value: c.value.clone().unwrap_or_default(),
                message: c.message.clone(),
                successes: c.successes,
                failures: c.failures,
                runs: c.runs,
                start_time: Some(timestamp(c.started_at)),
                last_run_time: c.last_run_at.map(timestamp),
            })
            .collect(),
    }
}

fn audit_to_proto(event: &store::AuditEvent) -> proto::AuditEvent {
    let e = &event.event;
    proto::AuditEvent {
        id: event.id,
        time: Some(timestamp(e.at)),
        actor: e.actor.clone(),
        action: e.action.as_str().to_owned(),
        environment: e.environment.clone().unwrap_or_default(),
        promotion_id: e.promotion_id.clone().unwrap_or_default(),
        revision: e.revision.clone().unwrap_or_default(),
        reason: e.reason.clone(),
    }
}

type PromotionStream = Pin<Box<dyn Stream<Item = Result<proto::Promotion, Status>> + Send>>;

#[tonic::async_trait]
impl proto::promotion_service_server::PromotionService for PromotionApi {
    async fn request_promotion(
        &self,
        request: Request<proto::RequestPromotionRequest>,
    ) -> Result<Response<proto::Promotion>, Status> {
        let r = request.get_ref();
        let actor = self.allowed(&request, &r.target_environment, Permission::Request)?;
        crate::remark::check("reason", &r.reason)?;
        let identity = auth::identity(&request)?;
        let service = self.supervisor.service();
        let view = service
            .promotions()
            .request(
                &actor,
                &r.target_environment,
                Some(r.revision.as_str()),
                &r.reason,
                r.rerun,
            )
            .await
            .map_err(|error| match error {
                // Which objects of the source are unhealthy only for those who may view it.
                promotion::Error::SourceUnhealthy {
                    source_env,
                    revision,
                    ..
                } if !auth::visible(service.access(), &identity, &source_env) => {
                    Status::failed_precondition(format!(
                        "environment {source_env:?} is not Healthy at {revision}"
                    ))
                }
                error => status_of(error),
            })?;
        Ok(Response::new(self.to_proto_for(&request, &view)?))
    }

    async fn get_promotion(
        &self,
        request: Request<proto::GetPromotionRequest>,
    ) -> Result<Response<proto::Promotion>, Status> {
        let (view, _) = self
            .promotion_for(&request, &request.get_ref().id, Permission::View)
            .await?;
        Ok(Response::new(self.to_proto_for(&request, &view)?))
    }

    async fn list_promotions(
        &self,
        request: Request<proto::ListPromotionsRequest>,
    ) -> Result<Response<proto::ListPromotionsResponse>, Status> {
        let r = request.get_ref();
        let service = self.supervisor.service();
        let identity = auth::identity(&request)?;
        if !r.environment.is_empty() {
            self.allowed(&request, &r.environment, Permission::View)?;
        }
        let filter = store::PromotionFilter {
            environment: non_empty(&r.environment),
            states: r
                .states
                .iter()
                .map(|s| state_from_proto(*s))
                .collect::<Result<_, _>>()?,
            since: time_from_proto(r.since)?,
            until: time_from_proto(r.until)?,
            limit: r.page_size.min(store::MAX_PAGE_SIZE),
            page_token: non_empty(&r.page_token),
            // Only promotions into environments the caller may see, chosen by the store so
            // that pages are full and their tokens only point at those.
            environments: self.visible_environments(&identity),
        };
        let page = service
            .promotions()
            .list(&filter)
            .await
            .map_err(status_of)?;
        let access = service.access();
        Ok(Response::new(proto::ListPromotionsResponse {
            promotions: page
                .items
                .iter()
                .map(|view| seen_by(access, &identity, view))
                .collect(),
            next_page_token: page.next_page_token.unwrap_or_default(),
        }))
    }

    async fn preview_promotion(
        &self,
        request: Request<proto::PreviewPromotionRequest>,
    ) -> Result<Response<proto::PreviewPromotionResponse>, Status> {
        let r = request.get_ref();
        self.allowed(&request, &r.target_environment, Permission::View)?;
        let (revision, candidate, plan) = self
            .supervisor
            .service()
            .promotions()
            .preview(&r.target_environment, Some(r.revision.as_str()))
            .await
            .map_err(status_of)?;
        Ok(Response::new(proto::PreviewPromotionResponse {
            revision,
            candidate_commit: candidate.map(|c| c.to_string()).unwrap_or_default(),
            objects: plan_to_proto(&plan).objects,
        }))
    }

    async fn approve_promotion(
        &self,
        request: Request<proto::ApprovePromotionRequest>,
    ) -> Result<Response<proto::Promotion>, Status> {
        let r = request.get_ref();
        let (_, actor) = self
            .refusals_audited(
                &request,
                &r.id,
                Permission::Approve,
                store::AuditAction::ApprovalRefused,
            )
            .await?;
        crate::remark::check("comment", &r.comment)?;
        let view = self
            .supervisor
            .service()
            .promotions()
            .approve(&actor, &r.id, &r.comment)
            .await
            .map_err(status_of)?;
        Ok(Response::new(self.to_proto_for(&request, &view)?))
    }

    async fn reject_promotion(
        &self,
        request: Request<proto::RejectPromotionRequest>,
    ) -> Result<Response<proto::Promotion>, Status> {
        let r = request.get_ref();
        let (_, actor) = self
            .promotion_for(&request, &r.id, Permission::Approve)
            .await?;
        crate::remark::check("reason", &r.reason)?;
        let view = self
            .supervisor
            .service()
            .promotions()
            .end(&actor, &r.id, &r.reason, true)
            .await
            .map_err(status_of)?;
        Ok(Response::new(self.to_proto_for(&request, &view)?))
    }

    async fn abort_promotion(
        &self,
        request: Request<proto::AbortPromotionRequest>,
    ) -> Result<Response<proto::Promotion>, Status> {
        let r = request.get_ref();
        let (view, actor) = self
            .promotion_for(&request, &r.id, Permission::View)
            .await?;
        // The requester may withdraw their own promotion; others need to be able to request.
        if view.promotion.requested_by != actor.name {
            self.allowed(
                &request,
                &view.promotion.target_environment,
                Permission::Request,
            )?;
        }
        crate::remark::check("reason", &r.reason)?;
        let view = self
            .supervisor
            .service()
            .promotions()
            .end(&actor, &r.id, &r.reason, false)
            .await
            .map_err(status_of)?;
        Ok(Response::new(self.to_proto_for(&request, &view)?))
    }

    async fn override_freeze(
        &self,
        request: Request<proto::OverrideFreezeRequest>,
    ) -> Result<Response<proto::Promotion>, Status> {
        let r = request.get_ref();
        if r.reason.trim().is_empty() {
            return Err(Status::invalid_argument(
                "reason: an override of a freeze window needs a reason",
            ));
        }
        let (_, actor) = self
            .refusals_audited(
                &request,
                &r.id,
                Permission::Override,
                store::AuditAction::OverrideRefused,
            )
            .await?;
        crate::remark::check("reason", &r.reason)?;
        let view = self
            .supervisor
            .service()
            .promotions()
            .override_freeze(&actor, &r.id, &r.reason)
            .await
            .map_err(status_of)?;
        Ok(Response::new(self.to_proto_for(&request, &view)?))
    }

    async fn rollback_environment(
        &self,
        request: Request<proto::RollbackEnvironmentRequest>,
    ) -> Result<Response<proto::Promotion>, Status> {
        let r = request.get_ref();
        let actor = self.allowed(&request, &r.environment, Permission::Rollback)?;
        if r.revision.is_empty() {
            return Err(Status::invalid_argument(
                "revision: the revision to roll back to is required (see ListRevisions)",
            ));
        }
        crate::remark::check("reason", &r.reason)?;
        let view = self
            .supervisor
            .service()
            .promotions()
            .rollback(&actor, &r.environment, &r.revision, &r.reason)
            .await
            .map_err(status_of)?;
        Ok(Response::new(self.to_proto_for(&request, &view)?))
    }

    async fn resume_auto_promotion(
        &self,
        request: Request<proto::ResumeAutoPromotionRequest>,
    ) -> Result<Response<proto::ResumeAutoPromotionResponse>, Status> {
        let r = request.get_ref();
        let actor = self.allowed(&request, &r.environment, Permission::Rollback)?;
        self.supervisor
            .service()
            .promotions()
            .resume_auto_promotion(&actor, &r.environment)
            .await
            .map_err(status_of)?;
        Ok(Response::new(proto::ResumeAutoPromotionResponse {}))
    }

    type WatchPromotionStream = PromotionStream;

    async fn watch_promotion(
        &self,
        request: Request<proto::WatchPromotionRequest>,
    ) -> Result<Response<Self::WatchPromotionStream>, Status> {
        let id = request.get_ref().id.clone();
        let (first, _) = self.promotion_for(&request, &id, Permission::View).await?;
        let identity = auth::identity(&request)?;
        let slot = self.watches.open(&identity.name)?;
        let watcher = Watcher {
            name: identity.name.clone(),
            authenticator: self.authenticator.clone(),
            supervisor: self.supervisor.clone(),
        };
        let service = self.supervisor.service();
        let access = service.access().clone();
        let engine = service.promotions().clone();
        let mut changes = engine.changes();
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        // The promotion now, then once per change, ending after its terminal state is sent, or
        // when the caller loses `view` on its target (PERMISSION_DENIED).
        tokio::spawn(async move {
            use tokio::sync::broadcast::error::RecvError;
            let _slot = slot;
            let target = first.promotion.target_environment.clone();
            let mut recheck = tokio::time::interval(watch::RECHECK);
            let mut view = first;
            loop {
                let done = view.promotion.state.is_terminal();
                if tx
                    .send(Ok(seen_by(&access, &identity, &view)))
                    .await
                    .is_err()
                    || done
                {
                    return;
                }
                loop {
                    tokio::select! {
                        changed = changes.recv() => match changed {
                            Ok(changed) if changed != id => {}
                            Ok(_) | Err(RecvError::Lagged(_)) => break,
                            Err(RecvError::Closed) => {
                                // The engine stopped: judged by the reloaded service's rules.
                                watch::until_replaced(&watcher.supervisor, &service, &mut recheck)
                                    .await;
                                if let Err(status) = watcher.may_view(&target) {
                                    let _ = tx.send(Err(status)).await;
                                }
                                return;
                            }
                        },
                        _ = recheck.tick() => {}
                        () = tx.closed() => return,
                    }
                    if let Err(status) = watcher.may_view(&target) {
                        let _ = tx.send(Err(status)).await;
                        return;
                    }
                }
                if let Err(status) = watcher.may_view(&target) {
                    let _ = tx.send(Err(status)).await;
                    return;
                }
                match engine.get(&id).await {
                    Ok(next) => view = next,
                    Err(error) => {
                        let _ = tx.send(Err(status_of(error))).await;
                        return;
                    }
                }
            }
        });
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
        Ok(Response::new(Box::pin(stream)))
    }

    async fn list_audit_events(
        &self,
        request: Request<proto::ListAuditEventsRequest>,
    ) -> Result<Response<proto::ListAuditEventsResponse>, Status> {
        let r = request.get_ref();
        let service = self.supervisor.service();
        let identity = auth::identity(&request)?;
        if !r.environment.is_empty() {
            self.allowed(&request, &r.environment, Permission::View)?;
        }
        let filter = store::AuditFilter {
            environment: non_empty(&r.environment),
            promotion_id: non_empty(&r.promotion_id),
            actor: non_empty(&r.actor),
            actions: r
                .actions
                .iter()
                .map(|a| {
                    a.parse()
                        .map_err(|e: String| Status::invalid_argument(format!("actions: {e}")))
                })
                .collect::<Result<_, _>>()?,
            since: time_from_proto(r.since)?,
            until: time_from_proto(r.until)?,
            limit: r.page_size.min(store::MAX_PAGE_SIZE),
            page_token: non_empty(&r.page_token),
            environments: self.visible_environments(&identity),
        };
        let page = service
            .promotions()
            .audit_events(&filter)
            .await
            .map_err(status_of)?;
        Ok(Response::new(proto::ListAuditEventsResponse {
            events: page.items.iter().map(audit_to_proto).collect(),
            next_page_token: page.next_page_token.unwrap_or_default(),
        }))
    }

    async fn compare_environments(
        &self,
        request: Request<proto::CompareEnvironmentsRequest>,
    ) -> Result<Response<proto::CompareEnvironmentsResponse>, Status> {
        let r = request.get_ref();
        self.allowed(&request, &r.from_environment, Permission::View)?;
        self.allowed(&request, &r.to_environment, Permission::View)?;
        let comparison = self
            .supervisor
            .service()
            .promotions()
            .compare(&r.from_environment, &r.to_environment)
            .await
            .map_err(status_of)?;
        Ok(Response::new(compare_to_proto(comparison)))
    }

    async fn get_delivery_metrics(
        &self,
        request: Request<proto::GetDeliveryMetricsRequest>,
    ) -> Result<Response<proto::GetDeliveryMetricsResponse>, Status> {
        let r = request.get_ref();
        let service = self.supervisor.service();
        let environments = if r.environment.is_empty() {
            let identity = auth::identity(&request)?;
            service
                .pipeline()
                .environments
                .iter()
                .filter(|env| auth::visible(service.access(), &identity, &env.name))
                .map(|env| env.name.clone())
                .collect()
        } else {
            self.allowed(&request, &r.environment, Permission::View)?;
            vec![r.environment.clone()]
        };
        let window = match r.window {
            None => store::DEFAULT_DELIVERY_WINDOW,
            Some(window) => std::time::Duration::try_from(window)
                .ok()
                .filter(|w| !w.is_zero() && *w <= store::MAX_DELIVERY_WINDOW)
                .ok_or_else(|| {
                    Status::invalid_argument(format!(
                        "window: must be positive and at most {} days",
                        store::MAX_DELIVERY_WINDOW.as_secs() / 86_400
                    ))
                })?,
        };
        let until = time_from_proto(r.end_time)?.unwrap_or_else(SystemTime::now);
        let since = until.checked_sub(window).ok_or_else(|| {
            Status::invalid_argument("end_time: the window would start before 1970")
        })?;
        let metrics = service
            .promotions()
            .delivery_metrics(environments, since, until)
            .await
            .map_err(status_of)?;
        Ok(Response::new(proto::GetDeliveryMetricsResponse {
            start_time: Some(timestamp(since)),
            end_time: Some(timestamp(until)),
            environments: metrics.iter().map(delivery_to_proto).collect(),
        }))
    }
}

fn delivery_to_proto(m: &store::DeliveryMetrics) -> proto::DeliveryMetrics {
    let duration =
        |d: Option<std::time::Duration>| d.and_then(|d| prost_types::Duration::try_from(d).ok());
    proto::DeliveryMetrics {
        environment: m.environment.clone(),
        deployments: m.deployments,
        deployments_per_day: m.deployments_per_day,
        lead_time_count: m.lead_time.count,
        lead_time_median: duration(m.lead_time.median),
        lead_time_p90: duration(m.lead_time.p90),
        changes: m.changes,
        failed_changes: m.failed_changes,
        change_failure_ratio: m.change_failure_ratio,
        restored: m.time_to_restore.count,
        time_to_restore_median: duration(m.time_to_restore.median),
        time_to_restore_p90: duration(m.time_to_restore.p90),
        unrestored: m.unrestored,
    }
}

fn compare_to_proto(comparison: compare::Comparison) -> proto::CompareEnvironmentsResponse {
    proto::CompareEnvironmentsResponse {
        from_revision: comparison.from_revision,
        to_revision: comparison.to_revision,
        objects: comparison
            .objects
            .into_iter()
            .map(|o| proto::ObjectComparison {
                kind: o.kind,
                name: o.name,
                status: o.status.as_str().to_owned(),
                fields: o
                    .fields
                    .into_iter()
                    .map(|f| proto::FieldDifference {
                        path: f.path,
                        from_value: f.from.unwrap_or_default(),
                        to_value: f.to.unwrap_or_default(),
                    })
                    .collect(),
            })
            .collect(),
    }
}
