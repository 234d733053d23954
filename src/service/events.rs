//! Alerts as Kubernetes Events in the environment's own cluster, so that `kubectl get events`
//! shows them where the environment runs. An environment's Events are about its inventory
//! ConfigMap (`stagehand-inventory-<owner>` in the inventory namespace): the one object that
//! stands for the whole environment in its cluster, present whatever the environment deploys.

use std::sync::Arc;
use std::time::Duration;

use crate::cluster::events::{Recorded, Series, Type};
use crate::cluster::{Connections, ObjectRef, inventory};
use crate::pipeline::{self, Environment};
use crate::reconcile;

/// A request to the apiserver that takes longer is given up: an Event is not worth waiting for.
const TIMEOUT: Duration = Duration::from_secs(30);

/// The Event `reason` of a raised alert.
pub const RAISED: &str = "AlertRaised";
/// The Event `reason` of alerts that cleared.
pub const RECOVERED: &str = "AlertRecovered";

/// Records one environment's alerts as Events, in the background.
pub struct AlertEvents {
    environment: String,
    cluster: pipeline::Cluster,
    connections: Connections,
    state: Arc<tokio::sync::Mutex<State>>,
}

struct State {
    series: Series,
}

impl AlertEvents {
    /// Events for `env`, sent to its cluster over the shared connection of `options`.
    pub fn new(env: &Environment, options: &reconcile::Options) -> Self {
        let location = inventory::Location::for_owner(
            &options.inventory_namespace,
            &reconcile::owner(options, &env.name),
        );
        let regarding = ObjectRef {
            group: String::new(),
            version: "v1".to_owned(),
            kind: "ConfigMap".to_owned(),
            namespace: Some(location.namespace),
            name: location.name,
        };
        Self {
            environment: env.name.clone(),
            cluster: env.cluster.clone(),
            connections: options.connections.clone(),
            state: Arc::new(tokio::sync::Mutex::new(State {
                series: Series::new(regarding),
            })),
        }
    }

    /// Records an Event without waiting for it; a failure is logged, never retried (the alert
    /// is also in the status, the log and the notifications). `note` holds no Secret value.
    pub fn record(&self, kind: Type, reason: &'static str, note: String) {
        let state = self.state.clone();
        let cluster = self.cluster.clone();
        let connections = self.connections.clone();
        let environment = self.environment.clone();
        tokio::spawn(async move {
            // One at a time per environment, in order, so that a series counts right.
            let mut state = state.lock().await;
            let recorded = tokio::time::timeout(
                TIMEOUT,
                state.record(&connections, &cluster, kind, reason, &note),
            )
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {}s", TIMEOUT.as_secs())));
            match recorded {
                Ok(Recorded::Throttled) => {
                    tracing::debug!(environment = %environment, reason, "too many events lately: not recorded");
                }
                Ok(recorded) => {
                    tracing::debug!(environment = %environment, reason, ?recorded, "event recorded");
                }
                Err(error) => {
                    tracing::warn!(environment = %environment, reason, %error, "cannot record the alert as a Kubernetes Event");
                }
            }
        });
    }
}

impl State {
    async fn record(
        &mut self,
        connections: &Connections,
        cluster: &pipeline::Cluster,
        kind: Type,
        reason: &str,
        note: &str,
    ) -> Result<Recorded, String> {
        let connection = connections
            .get(cluster)
            .await
            .map_err(|e| super::describe(&e))?;
        let recorded = self
            .series
            .record(connection.client(), kind, reason, note)
            .await;
        if recorded.is_err() {
            // Read the kubeconfig again next time: it may have been fixed or rotated.
            connections.forget(cluster, &connection).await;
        }
        recorded.map_err(|e| super::describe(&e))
    }
}
