//! One module per page. Each handler asks the API as the viewer, then renders.

pub mod audit;
pub mod compare;
pub mod delivery;
pub mod environment;
pub mod pipeline;
pub mod promotion;

use std::sync::Arc;

use crate::api::auth;
use crate::api::auth::Identity;
use crate::api::web::{Failure, Web};
use crate::proto;
use crate::proto::environment_service_server::EnvironmentService as _;

/// A request to the API handlers as `identity`.
fn ask<T>(identity: &Arc<Identity>, message: T) -> tonic::Request<T> {
    auth::authenticated(identity.clone(), message)
}

/// The pipeline's environments, as `identity` may list them.
async fn environments(
    web: &Web,
    identity: &Arc<Identity>,
) -> Result<Vec<proto::Environment>, Failure> {
    Ok(web
        .environments
        .list_environments(ask(identity, proto::ListEnvironmentsRequest {}))
        .await?
        .into_inner()
        .environments)
}

/// The promotion states that have not ended.
pub const OPEN_STATES: [crate::proto::PromotionState; 6] = [
    crate::proto::PromotionState::Pending,
    crate::proto::PromotionState::AwaitingApproval,
    crate::proto::PromotionState::Approved,
    crate::proto::PromotionState::Promoting,
    crate::proto::PromotionState::Syncing,
    crate::proto::PromotionState::Verifying,
];
