//! `stagehand.v1.EnvironmentService`: the environments of the pipeline as clients see them.

use std::pin::Pin;
use std::sync::Arc;

use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::pipeline::{self, Pipeline};
use crate::proto;

pub struct EnvironmentApi {
    pipeline: Arc<Pipeline>,
}

impl EnvironmentApi {
    pub fn new(pipeline: Arc<Pipeline>) -> Self {
        Self { pipeline }
    }

    fn find(&self, name: &str) -> Result<&pipeline::Environment, Status> {
        if name.is_empty() {
            return Err(Status::invalid_argument(
                "name: an environment name is required",
            ));
        }
        self.pipeline.environment(name).ok_or_else(|| {
            Status::not_found(format!(
                "environment {name:?} is not in pipeline {:?}",
                self.pipeline.name
            ))
        })
    }
}

/// RPCs whose domain module does not exist yet answer UNIMPLEMENTED with the reason, rather than
/// an empty or invented result.
fn not_yet(what: &str) -> Status {
    Status::unimplemented(format!(
        "{what} is not available in this version of stagehand"
    ))
}

type EnvironmentStream = Pin<Box<dyn Stream<Item = Result<proto::Environment, Status>> + Send>>;

#[tonic::async_trait]
impl proto::environment_service_server::EnvironmentService for EnvironmentApi {
    async fn list_environments(
        &self,
        _request: Request<proto::ListEnvironmentsRequest>,
    ) -> Result<Response<proto::ListEnvironmentsResponse>, Status> {
        Ok(Response::new(proto::ListEnvironmentsResponse {
            pipeline: self.pipeline.name.clone(),
            environments: self
                .pipeline
                .environments
                .iter()
                .map(|env| to_proto(env, &self.pipeline.repository.branch))
                .collect(),
        }))
    }

    async fn get_environment(
        &self,
        request: Request<proto::GetEnvironmentRequest>,
    ) -> Result<Response<proto::Environment>, Status> {
        let env = self.find(&request.get_ref().name)?;
        Ok(Response::new(to_proto(
            env,
            &self.pipeline.repository.branch,
        )))
    }

    async fn sync_environment(
        &self,
        request: Request<proto::SyncEnvironmentRequest>,
    ) -> Result<Response<proto::SyncEnvironmentResponse>, Status> {
        self.find(&request.get_ref().name)?;
        Err(not_yet("sync"))
    }

    async fn diff_environment(
        &self,
        request: Request<proto::DiffEnvironmentRequest>,
    ) -> Result<Response<proto::DiffEnvironmentResponse>, Status> {
        self.find(&request.get_ref().name)?;
        Err(not_yet("diff"))
    }

    async fn suspend_environment(
        &self,
        request: Request<proto::SuspendEnvironmentRequest>,
    ) -> Result<Response<proto::Environment>, Status> {
        self.find(&request.get_ref().name)?;
        Err(not_yet("suspend"))
    }

    async fn resume_environment(
        &self,
        request: Request<proto::ResumeEnvironmentRequest>,
    ) -> Result<Response<proto::Environment>, Status> {
        self.find(&request.get_ref().name)?;
        Err(not_yet("resume"))
    }

    async fn list_revisions(
        &self,
        request: Request<proto::ListRevisionsRequest>,
    ) -> Result<Response<proto::ListRevisionsResponse>, Status> {
        self.find(&request.get_ref().name)?;
        Err(not_yet("revision history"))
    }

    type WatchEnvironmentsStream = EnvironmentStream;

    async fn watch_environments(
        &self,
        request: Request<proto::WatchEnvironmentsRequest>,
    ) -> Result<Response<Self::WatchEnvironmentsStream>, Status> {
        for name in &request.get_ref().names {
            self.find(name)?;
        }
        Err(not_yet("watching environments"))
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
        }),
        freeze_windows: env
            .freeze_windows
            .iter()
            .map(|w| proto::FreezeWindow {
                start: w.start.to_string(),
                end: w.end.to_string(),
                timezone: w.timezone.clone(),
            })
            .collect(),
        sync: Some(proto::SyncPolicy {
            interval_seconds: env.sync.interval.as_secs(),
            prune: env.sync.prune,
            self_heal: env.sync.self_heal,
            suspended: env.sync.suspend,
        }),
        status: None,
    }
}
