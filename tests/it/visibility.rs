//! What a caller learns of environments they may not view, and what the audit log records, tried
//! over gRPC against `stagehand serve` with two identities: `boss` holds every permission, and
//! `carol` may only view staging and request promotions into it.

use std::path::PathBuf;

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, Patch, PatchParams};
use stagehand::proto;
use stagehand::proto::environment_service_client::EnvironmentServiceClient;
use stagehand::proto::promotion_service_client::PromotionServiceClient;
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::service::{Server, app, eventually, overlay, start_server_env, with_token};
use crate::support::cluster::cluster;
use crate::support::git::{Repo, bare_remote};
use crate::support::git_http::GitHttpServer;

const BOSS: &str = "boss-token-0f31aa";
const CAROL: &str = "carol-token-staging-82d4";

type Environments = EnvironmentServiceClient<Channel>;
type Promotions = PromotionServiceClient<Channel>;

/// dev, staging and prod, each a ConfigMap in a namespace of its own; dev also runs a
/// Deployment whose status the test sets. Promotions into staging and prod wait for one
/// approval.
struct Fixture {
    _dir: tempfile::TempDir,
    pipeline: PathBuf,
    state: PathBuf,
    dev_namespace: String,
    _http: GitHttpServer,
}

impl Fixture {
    async fn new(kube: &kube::Client) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut namespaces = Vec::new();
        for env in ["dev", "staging", "prod"] {
            namespaces.push(cluster().namespace(kube, &format!("vis-{env}")).await);
        }
        let remotes = dir.path().join("remotes");
        bare_remote(&remotes.join("shop.git"));
        let http = GitHttpServer::start(&remotes, None);
        let work = Repo::init(&dir.path().join("work"));
        for (env, namespace) in ["dev", "staging", "prod"].iter().zip(&namespaces) {
            work.write(&[
                (
                    &format!("environments/{env}/kustomization.yaml"),
                    &overlay(namespace),
                ),
                (
                    &format!("environments/{env}/app.yaml"),
                    &app(&format!("{env}-1")),
                ),
            ]);
        }
        let deployment = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  \
             selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n    \
             spec: {containers: [{name: web, image: registry.example.com/web:1}]}\n";
        work.write(&[
            (
                "environments/dev/kustomization.yaml",
                &overlay(&namespaces[0]).replace("[app.yaml]", "[app.yaml, web.yaml]"),
            ),
            ("environments/dev/web.yaml", deployment),
        ]);
        work.commit("three environments");
        work.git(&["remote", "add", "origin", &http.url("shop.git")]);
        work.git(&["push", "-q", "origin", "main"]);

        let state = dir.path().join("state");
        std::fs::create_dir_all(&state).expect("state dir");
        std::fs::write(state.join("webhook-secret"), "webhook-secret\n").expect("secret");
        let hash = stagehand::api::auth::hash_token;
        std::fs::write(
            state.join("tokens.yaml"),
            format!(
                "apiVersion: stagehand.dev/v1alpha1
kind: Tokens
identities:
  - {{name: boss, email: boss@example.test, groups: [admins], tokenSha256: [{}]}}
  - {{name: carol, email: carol@example.test, groups: [staging-team], tokenSha256: [{}]}}
",
                hash(BOSS),
                hash(CAROL)
            ),
        )
        .expect("tokens file");
        let pipeline = dir.path().join("pipeline.yaml");
        let name = format!("vis{}", &namespaces[0][namespaces[0].len() - 6..]);
        std::fs::write(
            &pipeline,
            format!(
                "apiVersion: stagehand.dev/v1alpha1
kind: Pipeline
metadata: {{name: {name}}}
spec:
  repository: {{url: {url}, branch: main}}
  environments:
    - name: dev
      source: {{overlay: environments/dev}}
      sync: {{interval: 1h}}
    - name: staging
      promotesFrom: dev
      source: {{overlay: environments/staging}}
      sync: {{interval: 1h}}
      approval: {{required: 1, groups: [admins]}}
      promote: {{files: [app.yaml]}}
    - name: prod
      promotesFrom: staging
      source: {{overlay: environments/prod}}
      sync: {{interval: 1h}}
      approval: {{required: 1, groups: [admins]}}
      promote: {{files: [app.yaml]}}
  access:
    - {{groups: [admins], environments: [\"*\"], permissions: [\"*\"]}}
    - {{groups: [staging-team], environments: [staging], permissions: [view, request]}}
",
                url = http.url("shop.git"),
            ),
        )
        .expect("pipeline file");
        Self {
            _dir: dir,
            pipeline,
            state,
            dev_namespace: namespaces[0].clone(),
            _http: http,
        }
    }

    async fn start(&self) -> (Server, Environments, Promotions) {
        let tokens = self.state.join("tokens.yaml").display().to_string();
        let server = start_server_env(
            &self.pipeline,
            &self.state,
            &self.state.join("webhook-secret"),
            &["--tokens-file", &tokens],
            &[],
        );
        let environments = Environments::connect(server.grpc.clone())
            .await
            .expect("gRPC reachable");
        let promotions = Promotions::connect(server.grpc.clone())
            .await
            .expect("gRPC reachable");
        (server, environments, promotions)
    }

    /// Sets dev's Deployment rolled out (`healthy`) or past its progress deadline.
    async fn set_web(&self, kube: &kube::Client, healthy: bool) {
        let api = Api::<Deployment>::namespaced(kube.clone(), &self.dev_namespace);
        let generation = api
            .get("web")
            .await
            .expect("web exists")
            .metadata
            .generation;
        let condition = if healthy {
            serde_json::json!({"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable"})
        } else {
            serde_json::json!({"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded", "message": "web is stuck"})
        };
        let status = serde_json::json!({"status": {"observedGeneration": generation,
            "replicas": 1, "updatedReplicas": 1, "readyReplicas": 1, "availableReplicas": 1,
            "conditions": [condition]}});
        api.patch_status("web", &PatchParams::default(), &Patch::Merge(&status))
            .await
            .expect("status set");
    }
}

async fn sync(environments: &mut Environments, token: &str, name: &str) -> Result<(), Status> {
    environments
        .sync_environment(with_token(
            token,
            proto::SyncEnvironmentRequest {
                name: name.into(),
                fetch: false,
                wait: true,
            },
        ))
        .await
        .map(|_| ())
}

async fn health(environments: &mut Environments, name: &str) -> proto::Health {
    let env = environments
        .get_environment(with_token(
            BOSS,
            proto::GetEnvironmentRequest { name: name.into() },
        ))
        .await
        .expect("the boss sees every environment")
        .into_inner();
    proto::Health::try_from(env.status.expect("status").health).expect("a known health")
}

async fn request(
    promotions: &mut Promotions,
    token: &str,
    target: &str,
) -> Result<proto::Promotion, Status> {
    promotions
        .request_promotion(with_token(
            token,
            proto::RequestPromotionRequest {
                target_environment: target.into(),
                revision: String::new(),
                reason: "release".into(),
                rerun: true,
            },
        ))
        .await
        .map(tonic::Response::into_inner)
}

/// Until dev is Healthy, which the promotions below need.
async fn dev_healthy(fx: &Fixture, kube: &kube::Client, environments: &Environments) {
    eventually("dev's Deployment exists", || async {
        Api::<Deployment>::namespaced(kube.clone(), &fx.dev_namespace)
            .get_opt("web")
            .await
            .expect("get works")
            .is_some()
    })
    .await;
    fx.set_web(kube, true).await;
    eventually("dev is Healthy", || {
        let mut environments = environments.clone();
        async move {
            sync(&mut environments, BOSS, "dev")
                .await
                .expect("the boss may sync");
            health(&mut environments, "dev").await == proto::Health::Healthy
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manual_sync_is_audited_and_a_denial_does_not_say_who_holds_the_permission() {
    let kube = cluster().client().await;
    let fx = Fixture::new(&kube).await;
    let (_server, mut environments, mut promotions) = fx.start().await;
    eventually("staging has a desired revision", || {
        let mut environments = environments.clone();
        async move {
            environments
                .get_environment(with_token(
                    BOSS,
                    proto::GetEnvironmentRequest {
                        name: "staging".into(),
                    },
                ))
                .await
                .expect("GetEnvironment answers")
                .into_inner()
                .status
                .is_some_and(|s| !s.desired_revision.is_empty())
        }
    })
    .await;
    sync(&mut environments, BOSS, "staging")
        .await
        .expect("the boss may sync");
    let revision = environments
        .get_environment(with_token(
            BOSS,
            proto::GetEnvironmentRequest {
                name: "staging".into(),
            },
        ))
        .await
        .expect("GetEnvironment answers")
        .into_inner()
        .status
        .expect("status")
        .desired_revision;
    let events = promotions
        .list_audit_events(with_token(
            CAROL,
            proto::ListAuditEventsRequest {
                environment: "staging".into(),
                actions: vec!["synced".into()],
                ..Default::default()
            },
        ))
        .await
        .expect("carol may read staging's audit log")
        .into_inner()
        .events;
    let [event] = events.as_slice() else {
        panic!("one sync by hand: {events:?}");
    };
    assert_eq!(
        (event.actor.as_str(), event.environment.as_str()),
        ("boss", "staging")
    );
    assert_eq!(event.revision, revision);

    // Carol may view staging, not sync it: told so, but not which groups could.
    let denied = sync(&mut environments, CAROL, "staging")
        .await
        .expect_err("carol may not sync");
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    assert!(
        denied.message().contains("\"sync\"") && denied.message().contains("\"staging\""),
        "{denied:?}"
    );
    assert!(!denied.message().contains("admins"), "{denied:?}");
    // Nothing of the refused sync was recorded.
    let synced = promotions
        .list_audit_events(with_token(
            BOSS,
            proto::ListAuditEventsRequest {
                actions: vec!["synced".into()],
                ..Default::default()
            },
        ))
        .await
        .expect("the boss may read the audit log")
        .into_inner()
        .events;
    assert_eq!(synced.len(), 1, "{synced:?}");
}

/// What carol is told by every call that names promotion `id`, with `id` written as `ID`.
async fn by_id(mut promotions: Promotions, id: &str) -> Vec<(Code, String)> {
    let id = id.to_owned();
    let get = promotions
        .get_promotion(with_token(
            CAROL,
            proto::GetPromotionRequest { id: id.clone() },
        ))
        .await
        .map(|_| ());
    let approve = promotions
        .approve_promotion(with_token(
            CAROL,
            proto::ApprovePromotionRequest {
                id: id.clone(),
                comment: "ok".into(),
            },
        ))
        .await
        .map(|_| ());
    let reject = promotions
        .reject_promotion(with_token(
            CAROL,
            proto::RejectPromotionRequest {
                id: id.clone(),
                reason: "no".into(),
            },
        ))
        .await
        .map(|_| ());
    let abort = promotions
        .abort_promotion(with_token(
            CAROL,
            proto::AbortPromotionRequest {
                id: id.clone(),
                reason: "no".into(),
            },
        ))
        .await
        .map(|_| ());
    let freeze = promotions
        .override_freeze(with_token(
            CAROL,
            proto::OverrideFreezeRequest {
                id: id.clone(),
                reason: "now".into(),
            },
        ))
        .await
        .map(|_| ());
    let watch = promotions
        .watch_promotion(with_token(
            CAROL,
            proto::WatchPromotionRequest { id: id.clone() },
        ))
        .await
        .map(|_| ());
    [get, approve, reject, abort, freeze, watch]
        .into_iter()
        .map(|answer| shape(answer, &id, "ID"))
        .collect()
}

/// The code and message of an answer, with `name` written as `as_name`.
fn shape<T: std::fmt::Debug>(
    answer: Result<T, Status>,
    name: &str,
    as_name: &str,
) -> (Code, String) {
    let status = answer.expect_err("refused");
    (status.code(), status.message().replace(name, as_name))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whoever_may_not_view_an_environment_cannot_tell_it_exists_nor_page_past_its_rows() {
    let kube = cluster().client().await;
    let fx = Fixture::new(&kube).await;
    let (_server, mut environments, mut promotions) = fx.start().await;
    dev_healthy(&fx, &kube, &environments).await;
    // Oldest first: one promotion carol may see, then two she may not.
    let into_staging = request(&mut promotions, BOSS, "staging")
        .await
        .expect("the boss may request");
    eventually("staging runs its revision", || {
        let mut environments = environments.clone();
        async move { health(&mut environments, "staging").await == proto::Health::Healthy }
    })
    .await;
    let into_prod = request(&mut promotions, BOSS, "prod")
        .await
        .expect("the boss may request");
    request(&mut promotions, BOSS, "prod")
        .await
        .expect("the boss may request again");

    // Every call naming prod answers carol as for an environment that does not exist.
    let unknown = "nowhere";
    macro_rules! environments_or_promotions {
        (get_environment, $r:expr) => {
            environments.get_environment($r).await
        };
        (sync_environment, $r:expr) => {
            environments.sync_environment($r).await
        };
        (diff_environment, $r:expr) => {
            environments.diff_environment($r).await
        };
        (suspend_environment, $r:expr) => {
            environments.suspend_environment($r).await
        };
        (resume_environment, $r:expr) => {
            environments.resume_environment($r).await
        };
        (list_revisions, $r:expr) => {
            environments.list_revisions($r).await
        };
        (watch_environments, $r:expr) => {
            environments.watch_environments($r).await.map(|_| ())
        };
        (request_promotion, $r:expr) => {
            promotions.request_promotion($r).await
        };
        (preview_promotion, $r:expr) => {
            promotions.preview_promotion($r).await
        };
        (rollback_environment, $r:expr) => {
            promotions.rollback_environment($r).await
        };
        (resume_auto_promotion, $r:expr) => {
            promotions.resume_auto_promotion($r).await
        };
        (list_promotions, $r:expr) => {
            promotions.list_promotions($r).await
        };
        (list_audit_events, $r:expr) => {
            promotions.list_audit_events($r).await
        };
        (compare_environments, $r:expr) => {
            promotions.compare_environments($r).await
        };
        (get_delivery_metrics, $r:expr) => {
            promotions.get_delivery_metrics($r).await
        };
    }
    macro_rules! alike {
        ($call:ident, $make:expr) => {{
            let make = $make;
            let hidden = shape(
                environments_or_promotions!($call, with_token(CAROL, make("prod"))),
                "prod",
                unknown,
            );
            let missing = shape(
                environments_or_promotions!($call, with_token(CAROL, make(unknown))),
                "prod",
                unknown,
            );
            assert_eq!(
                hidden.0,
                Code::NotFound,
                "{}: {hidden:?}",
                stringify!($call)
            );
            assert_eq!(hidden, missing, "{}", stringify!($call));
        }};
    }
    alike!(get_environment, |n: &str| proto::GetEnvironmentRequest {
        name: n.into()
    });
    alike!(sync_environment, |n: &str| proto::SyncEnvironmentRequest {
        name: n.into(),
        fetch: true,
        wait: false,
    });
    alike!(diff_environment, |n: &str| proto::DiffEnvironmentRequest {
        name: n.into(),
        ..Default::default()
    });
    alike!(suspend_environment, |n: &str| {
        proto::SuspendEnvironmentRequest {
            name: n.into(),
            reason: "mine now".into(),
        }
    });
    alike!(resume_environment, |n: &str| {
        proto::ResumeEnvironmentRequest { name: n.into() }
    });
    alike!(list_revisions, |n: &str| proto::ListRevisionsRequest {
        name: n.into(),
        limit: 1,
    });
    alike!(watch_environments, |n: &str| {
        proto::WatchEnvironmentsRequest {
            names: vec![n.into()],
        }
    });
    alike!(request_promotion, |n: &str| {
        proto::RequestPromotionRequest {
            target_environment: n.into(),
            reason: "mine".into(),
            ..Default::default()
        }
    });
    alike!(preview_promotion, |n: &str| {
        proto::PreviewPromotionRequest {
            target_environment: n.into(),
            ..Default::default()
        }
    });
    alike!(rollback_environment, |n: &str| {
        proto::RollbackEnvironmentRequest {
            environment: n.into(),
            revision: "HEAD".into(),
            reason: "mine".into(),
        }
    });
    alike!(resume_auto_promotion, |n: &str| {
        proto::ResumeAutoPromotionRequest {
            environment: n.into(),
        }
    });
    alike!(list_promotions, |n: &str| proto::ListPromotionsRequest {
        environment: n.into(),
        ..Default::default()
    });
    alike!(list_audit_events, |n: &str| proto::ListAuditEventsRequest {
        environment: n.into(),
        ..Default::default()
    });
    alike!(compare_environments, |n: &str| {
        proto::CompareEnvironmentsRequest {
            from_environment: n.into(),
            to_environment: "staging".into(),
        }
    });
    alike!(get_delivery_metrics, |n: &str| {
        proto::GetDeliveryMetricsRequest {
            environment: n.into(),
            ..Default::default()
        }
    });
    // Asked for every environment, carol gets those she may view.
    let all = promotions
        .get_delivery_metrics(with_token(
            CAROL,
            proto::GetDeliveryMetricsRequest::default(),
        ))
        .await
        .expect("carol may ask for metrics")
        .into_inner();
    let reported: Vec<&str> = all
        .environments
        .iter()
        .map(|m| m.environment.as_str())
        .collect();
    assert_eq!(reported, ["staging"]);

    // A promotion into prod is, to carol, no promotion at all.
    let hidden_id = into_prod.id.clone();
    let last = if hidden_id.ends_with('0') { "1" } else { "0" };
    let missing_id = format!("{}{last}", &hidden_id[..hidden_id.len() - 1]);
    let hidden = by_id(promotions.clone(), &hidden_id).await;
    let missing = by_id(promotions.clone(), &missing_id).await;
    assert!(
        hidden.iter().all(|(code, _)| *code == Code::NotFound),
        "{hidden:?}"
    );
    assert_eq!(hidden, missing);
    // The promotion is still waiting, untouched.
    let still = promotions
        .get_promotion(with_token(
            BOSS,
            proto::GetPromotionRequest { id: hidden_id },
        ))
        .await
        .expect("the boss sees it")
        .into_inner();
    assert_eq!(
        proto::PromotionState::try_from(still.state),
        Ok(proto::PromotionState::AwaitingApproval)
    );
    // Where carol may view but lacks the permission, she is told so.
    let denied = promotions
        .approve_promotion(with_token(
            CAROL,
            proto::ApprovePromotionRequest {
                id: into_staging.id.clone(),
                comment: "ok".into(),
            },
        ))
        .await
        .expect_err("carol may not approve");
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");

    // Pages hold only what carol may see, full, and their tokens point at nothing else.
    let page = promotions
        .list_promotions(with_token(
            CAROL,
            proto::ListPromotionsRequest {
                page_size: 1,
                ..Default::default()
            },
        ))
        .await
        .expect("carol may list")
        .into_inner();
    let ids: Vec<_> = page.promotions.iter().map(|p| p.id.as_str()).collect();
    assert_eq!(ids, [into_staging.id.as_str()]);
    assert_eq!(page.next_page_token, "", "nothing more she may see");
    let mut token = String::new();
    let mut seen = Vec::new();
    loop {
        let page = promotions
            .list_audit_events(with_token(
                CAROL,
                proto::ListAuditEventsRequest {
                    page_size: 1,
                    page_token: token.clone(),
                    ..Default::default()
                },
            ))
            .await
            .expect("carol may list")
            .into_inner();
        assert_eq!(page.events.len(), 1, "a full page: {page:?}");
        seen.extend(page.events.into_iter().map(|e| e.environment));
        token = page.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    assert!(seen.iter().all(|env| env == "staging"), "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promotion_names_its_sources_unhealthy_objects_only_to_who_may_view_the_source() {
    let kube = cluster().client().await;
    let fx = Fixture::new(&kube).await;
    let (_server, environments, mut promotions) = fx.start().await;
    dev_healthy(&fx, &kube, &environments).await;
    let promotion = request(&mut promotions, BOSS, "staging")
        .await
        .expect("the boss may request");
    fx.set_web(&kube, false).await;
    eventually("dev is Failed", || {
        let mut environments = environments.clone();
        async move {
            sync(&mut environments, BOSS, "dev")
                .await
                .expect("the boss may sync");
            health(&mut environments, "dev").await == proto::Health::Failed
        }
    })
    .await;
    let blocker = |token: &'static str| {
        let mut promotions = promotions.clone();
        let id = promotion.id.clone();
        async move {
            promotions
                .get_promotion(with_token(token, proto::GetPromotionRequest { id }))
                .await
                .expect("both may view staging")
                .into_inner()
                .blockers
                .into_iter()
                .find(|b| b.kind == "source_health")
                .expect("dev's health blocks the promotion")
        }
    };
    let seen_by_boss = blocker(BOSS).await;
    assert!(
        seen_by_boss.objects.iter().any(|o| o.contains("web"))
            && seen_by_boss.message.contains("web"),
        "{seen_by_boss:?}"
    );
    let seen_by_carol = blocker(CAROL).await;
    assert!(seen_by_carol.objects.is_empty(), "{seen_by_carol:?}");
    assert!(!seen_by_carol.message.contains("web"), "{seen_by_carol:?}");
    assert!(seen_by_carol.message.contains("dev"), "{seen_by_carol:?}");
    let listed = promotions
        .list_promotions(with_token(CAROL, proto::ListPromotionsRequest::default()))
        .await
        .expect("carol may list")
        .into_inner();
    assert!(
        listed
            .promotions
            .iter()
            .flat_map(|p| &p.blockers)
            .all(|b| b.objects.is_empty() && !b.message.contains("web")),
        "{listed:?}"
    );
    // Asking for another promotion while dev is Failed: refused, without dev's objects.
    let refused = request(&mut promotions, CAROL, "staging")
        .await
        .expect_err("dev is not Healthy");
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(!refused.message().contains("web"), "{refused:?}");
}
