//! What the service counts, served on `/metrics` in the OpenMetrics text format (which
//! Prometheus scrapes). One registry per service; the parts that count hold an `Arc<Metrics>`.

use std::future::Future;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of a reconcile pass.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PassLabels {
    /// The environment.
    pub environment: String,
    /// The status reason the pass ended with (`succeeded`, `apply_failed`, ...).
    pub reason: String,
}

/// Labels of a per-environment gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EnvironmentLabels {
    /// The environment.
    pub environment: String,
}

/// Labels of a per-environment quantile.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QuantileLabels {
    /// The environment.
    pub environment: String,
    /// `0.5` or `0.9`.
    pub quantile: String,
}

/// A gauge that holds fractions and seconds.
type FloatGauge = Gauge<f64, AtomicU64>;

/// How long delivery metrics computed for one scrape serve the next ones: a scraper polling
/// often costs one store query per this period, and the figures move slowly anyway.
pub const DELIVERY_REFRESH: Duration = Duration::from_secs(15);

/// Labels of a Git fetch.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FetchLabels {
    /// `ok` or `error`.
    pub result: String,
}

/// Labels of a webhook delivery.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WebhookLabels {
    /// `github`, `gitea`, `gitlab`, `generic`, or `none` when refused.
    pub provider: String,
    /// `accepted` or `refused`.
    pub result: String,
}

/// Labels of a gRPC call.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RpcLabels {
    /// `/stagehand.v1.EnvironmentService/GetEnvironment`, or `unknown` for a path the server
    /// does not serve: never taken from the request unchecked.
    pub method: String,
    /// The gRPC status code name (`OK`, `NOT_FOUND`, ...).
    pub code: String,
}

/// Every metric of the service.
pub struct Metrics {
    registry: Registry,
    /// `stagehand_reconcile_duration_seconds`: how long passes take.
    pub reconcile_duration: Family<PassLabels, Histogram>,
    /// `stagehand_reconcile_passes_total`: passes by how they ended.
    pub reconcile_passes: Family<PassLabels, Counter>,
    /// `stagehand_drifted_objects`: objects changed in the cluster, now.
    pub drifted_objects: Family<EnvironmentLabels, Gauge>,
    /// `stagehand_git_fetch_duration_seconds`: how long fetches take.
    pub fetch_duration: Family<FetchLabels, Histogram>,
    /// `stagehand_webhook_deliveries_total`: deliveries by provider and result.
    pub webhooks: Family<WebhookLabels, Counter>,
    /// `stagehand_grpc_request_duration_seconds`: calls by method and code.
    pub rpc_duration: Family<RpcLabels, Histogram>,
    /// `stagehand_sync_turns_in_use`: turns of `--concurrent-syncs` held now (sync passes,
    /// diffs, previews, comparisons, pre-flight checks).
    pub turns_in_use: Gauge,
    /// `stagehand_sync_turns_waiting`: work waiting for such a turn now.
    pub turns_waiting: Gauge,
    /// `stagehand_environment_held`: 1 while this replica holds the environment's Lease
    /// (several replicas only).
    pub environment_held: Family<EnvironmentLabels, Gauge>,
    /// `stagehand_leader`: 1 while this replica holds the leader Lease (several replicas only).
    pub leader: Gauge,
    /// `stagehand_delivery_*`: the delivery metrics of the last [`DELIVERY_REFRESH`].
    delivery: Delivery,
}

/// The delivery metrics over [`crate::store::DEFAULT_DELIVERY_WINDOW`], refreshed on scrape.
struct Delivery {
    deployments: Family<EnvironmentLabels, FloatGauge>,
    deployments_per_day: Family<EnvironmentLabels, FloatGauge>,
    lead_time: Family<QuantileLabels, FloatGauge>,
    change_failure_ratio: Family<EnvironmentLabels, FloatGauge>,
    time_to_restore: Family<QuantileLabels, FloatGauge>,
    /// When the gauges were last set; one scrape at a time refreshes them.
    refreshed: tokio::sync::Mutex<Option<Instant>>,
}

fn seconds_histogram() -> Histogram {
    // 5 ms to about 80 s.
    Histogram::new(exponential_buckets(0.005, 2.0, 15))
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("stagehand");
        let reconcile_duration =
            Family::<PassLabels, Histogram>::new_with_constructor(seconds_histogram as fn() -> _);
        registry.register(
            "reconcile_duration_seconds",
            "How long a reconcile pass took, per environment and the reason it ended with",
            reconcile_duration.clone(),
        );
        let reconcile_passes = Family::<PassLabels, Counter>::default();
        registry.register(
            "reconcile_passes",
            "Reconcile passes per environment and the reason they ended with",
            reconcile_passes.clone(),
        );
        let drifted_objects = Family::<EnvironmentLabels, Gauge>::default();
        registry.register(
            "drifted_objects",
            "Objects whose cluster state differed from Git at the last pass",
            drifted_objects.clone(),
        );
        let fetch_duration =
            Family::<FetchLabels, Histogram>::new_with_constructor(seconds_histogram as fn() -> _);
        registry.register(
            "git_fetch_duration_seconds",
            "How long a fetch of the repository took",
            fetch_duration.clone(),
        );
        let webhooks = Family::<WebhookLabels, Counter>::default();
        registry.register(
            "webhook_deliveries",
            "Webhook requests per provider and whether they were accepted",
            webhooks.clone(),
        );
        let rpc_duration =
            Family::<RpcLabels, Histogram>::new_with_constructor(seconds_histogram as fn() -> _);
        registry.register(
            "grpc_request_duration_seconds",
            "gRPC requests per method and status code, until the response headers",
            rpc_duration.clone(),
        );
        let turns_in_use = Gauge::default();
        registry.register(
            "sync_turns_in_use",
            "Turns of --concurrent-syncs held now by sync passes, diffs, previews, comparisons and pre-flight checks",
            turns_in_use.clone(),
        );
        let turns_waiting = Gauge::default();
        registry.register(
            "sync_turns_waiting",
            "Sync passes, diffs, previews, comparisons and pre-flight checks waiting for a turn now",
            turns_waiting.clone(),
        );
        let environment_held = Family::<EnvironmentLabels, Gauge>::default();
        registry.register(
            "environment_held",
            "1 while this replica holds the environment's Lease and reconciles it (with --lease-namespace)",
            environment_held.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 while this replica holds the leader Lease and drives promotions (with --lease-namespace)",
            leader.clone(),
        );
        let delivery = Delivery::register(&mut registry);
        Self {
            registry,
            delivery,
            reconcile_duration,
            reconcile_passes,
            drifted_objects,
            fetch_duration,
            webhooks,
            rpc_duration,
            turns_in_use,
            turns_waiting,
            environment_held,
            leader,
        }
    }
}

impl Delivery {
    fn register(registry: &mut Registry) -> Self {
        let deployments = Family::<EnvironmentLabels, FloatGauge>::default();
        registry.register(
            "delivery_deployments",
            "Promotions and rollbacks into the environment that Succeeded in the last 30 days",
            deployments.clone(),
        );
        let deployments_per_day = Family::<EnvironmentLabels, FloatGauge>::default();
        registry.register(
            "delivery_deployments_per_day",
            "Deployments per day over the last 30 days",
            deployments_per_day.clone(),
        );
        let lead_time = Family::<QuantileLabels, FloatGauge>::default();
        registry.register(
            "delivery_lead_time_seconds",
            "From the first commit of a change to its promotion's success, over the promotions that Succeeded in the last 30 days (median and 90th percentile)",
            lead_time.clone(),
        );
        let change_failure_ratio = Family::<EnvironmentLabels, FloatGauge>::default();
        registry.register(
            "delivery_change_failure_ratio",
            "Of the promotions and rollbacks that reached the cluster in the last 30 days, the share that failed verification or were followed by a rollback",
            change_failure_ratio.clone(),
        );
        let time_to_restore = Family::<QuantileLabels, FloatGauge>::default();
        registry.register(
            "delivery_time_to_restore_seconds",
            "From a failed change of the last 30 days to the next success in the environment (median and 90th percentile)",
            time_to_restore.clone(),
        );
        Self {
            deployments,
            deployments_per_day,
            lead_time,
            change_failure_ratio,
            time_to_restore,
            refreshed: tokio::sync::Mutex::new(None),
        }
    }

    /// Replaces every gauge: environments that left the pipeline, and figures that have no
    /// value now (no lead time measured), disappear rather than keep an old value.
    fn set(&self, figures: &[crate::store::DeliveryMetrics]) {
        self.deployments.clear();
        self.deployments_per_day.clear();
        self.lead_time.clear();
        self.change_failure_ratio.clear();
        self.time_to_restore.clear();
        for m in figures {
            let env = EnvironmentLabels {
                environment: m.environment.clone(),
            };
            self.deployments
                .get_or_create(&env)
                .set(f64::from(m.deployments));
            self.deployments_per_day
                .get_or_create(&env)
                .set(m.deployments_per_day);
            if let Some(ratio) = m.change_failure_ratio {
                self.change_failure_ratio.get_or_create(&env).set(ratio);
            }
            for (family, spread) in [
                (&self.lead_time, &m.lead_time),
                (&self.time_to_restore, &m.time_to_restore),
            ] {
                for (quantile, value) in [("0.5", spread.median), ("0.9", spread.p90)] {
                    if let Some(value) = value {
                        family
                            .get_or_create(&QuantileLabels {
                                environment: m.environment.clone(),
                                quantile: quantile.to_owned(),
                            })
                            .set(value.as_secs_f64());
                    }
                }
            }
        }
    }
}

impl Metrics {
    /// Sets the delivery gauges from `compute` unless they were set less than
    /// [`DELIVERY_REFRESH`] ago; concurrent scrapes wait for one computation. When `compute`
    /// fails (`None`), the gauges keep their values and the next scrape tries again.
    pub async fn refresh_delivery<F, Fut>(&self, compute: F)
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Option<Vec<crate::store::DeliveryMetrics>>>,
    {
        let mut refreshed = self.delivery.refreshed.lock().await;
        if refreshed.is_some_and(|at| at.elapsed() < DELIVERY_REFRESH) {
            return;
        }
        if let Some(figures) = compute().await {
            self.delivery.set(&figures);
            *refreshed = Some(Instant::now());
        }
    }

    /// The registry in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String cannot fail");
        text
    }

    /// Counts and times one reconcile pass.
    pub fn pass(&self, environment: &str, reason: &str, took: Duration) {
        let labels = PassLabels {
            environment: environment.to_owned(),
            reason: reason.to_owned(),
        };
        self.reconcile_passes.get_or_create(&labels).inc();
        self.reconcile_duration
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
    }

    /// Times one fetch.
    pub fn fetch(&self, ok: bool, took: Duration) {
        let result = if ok { "ok" } else { "error" }.to_owned();
        self.fetch_duration
            .get_or_create(&FetchLabels { result })
            .observe(took.as_secs_f64());
    }

    /// Counts one webhook delivery; `provider` is `None` when none was recognised.
    pub fn webhook(&self, provider: Option<&str>, accepted: bool) {
        self.webhooks
            .get_or_create(&WebhookLabels {
                provider: provider.unwrap_or("none").to_owned(),
                result: if accepted { "accepted" } else { "refused" }.to_owned(),
            })
            .inc();
    }

    /// Times one gRPC call.
    pub fn rpc(&self, method: &str, code: &str, took: Duration) {
        self.rpc_duration
            .get_or_create(&RpcLabels {
                method: method.to_owned(),
                code: code.to_owned(),
            })
            .observe(took.as_secs_f64());
    }
}
