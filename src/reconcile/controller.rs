//! One loop per environment, run in parallel.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::{Notify, broadcast, watch};
use tokio::task::JoinHandle;

use super::{
    Action, DesiredState, EnvironmentStatus, Event, Options, Reason, Reconciler, error_policy,
};
use crate::pipeline::Environment;
use crate::shard::{Claim, Ownership};

/// An environment name the controller does not run.
#[derive(Debug, thiserror::Error)]
#[error("no environment {0:?} in this pipeline")]
pub struct UnknownEnvironment(pub String);

struct Handle {
    trigger: Arc<Notify>,
    suspended: watch::Sender<bool>,
    status: watch::Receiver<EnvironmentStatus>,
}

/// When each loop runs its first pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FirstPass {
    /// At once (a one-shot caller that has the desired state at hand).
    Immediately,
    /// On the first [`Controller::trigger`] (the service, once its first fetch is in).
    OnTrigger,
}

/// Runs every environment's loop and lets callers steer them.
pub struct Controller {
    environments: HashMap<String, Handle>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    events: broadcast::Sender<Event>,
}

impl Controller {
    /// Starts one task per environment; each runs a pass at once unless suspended.
    pub fn start<S: DesiredState>(
        environments: Vec<Environment>,
        source: Arc<S>,
        options: Options,
    ) -> Self {
        let ownership = Ownership::single("local");
        let names: Vec<String> = environments.iter().map(|e| e.name.clone()).collect();
        ownership.set_pipeline("local", &names);
        Self::start_with(
            environments,
            source,
            options,
            FirstPass::Immediately,
            HashMap::new(),
            ownership,
        )
    }

    /// Starts one task per environment, each running its first pass as `first` says. An
    /// environment in manual sync mode (`sync.auto` false) only ever runs a pass when
    /// triggered. `restored` holds statuses remembered from before a restart, answered until
    /// each environment's first pass. A loop runs passes only while `ownership` gives this
    /// replica a claim on its environment (set by [`Ownership::set_pipeline`] beforehand), and
    /// every cluster write of a pass checks that claim first.
    pub fn start_with<S: DesiredState>(
        environments: Vec<Environment>,
        source: Arc<S>,
        options: Options,
        first: FirstPass,
        mut restored: HashMap<String, EnvironmentStatus>,
        ownership: Ownership,
    ) -> Self {
        let options = Arc::new(options);
        let (shutdown, _) = watch::channel(false);
        let (events, _) = broadcast::channel(1024);
        let mut handles = HashMap::new();
        let mut tasks = Vec::new();
        for env in environments {
            let name = env.name.clone();
            let mut reconciler =
                Reconciler::new(env, source.clone(), options.clone(), events.clone());
            if let Some(status) = restored.remove(&name) {
                *reconciler.status_mut() = status;
            }
            let suspended_at_start = reconciler.environment().sync.suspend;
            let (status_tx, status_rx) = watch::channel(reconciler.status().clone());
            let (suspended, suspended_rx) = watch::channel(suspended_at_start);
            let trigger = Arc::new(Notify::new());
            let claims = ownership
                .watch(&name)
                .expect("the service sets the pipeline's environments before starting their loops");
            let steered = Steered {
                claims,
                replica: ownership
                    .is_leased()
                    .then(|| ownership.replica().to_owned()),
                reconciler,
                trigger: trigger.clone(),
                suspended: suspended_rx,
                status: status_tx,
                shutdown: shutdown.subscribe(),
                options: options.clone(),
                first,
            };
            tasks.push(tokio::spawn(steered.run()));
            handles.insert(
                name,
                Handle {
                    trigger,
                    suspended,
                    status: status_rx,
                },
            );
        }
        Self {
            environments: handles,
            shutdown,
            tasks,
            events,
        }
    }

    fn handle(&self, env: &str) -> Result<&Handle, UnknownEnvironment> {
        self.environments
            .get(env)
            .ok_or_else(|| UnknownEnvironment(env.to_owned()))
    }

    /// Runs a pass of `env` now (or right after the running one).
    pub fn trigger(&self, env: &str) -> Result<(), UnknownEnvironment> {
        self.handle(env)?.trigger.notify_one();
        Ok(())
    }

    /// Stops passes of `env` until [`Controller::resume`]; a running pass finishes first.
    pub fn suspend(&self, env: &str) -> Result<(), UnknownEnvironment> {
        self.handle(env)?.suspended.send_replace(true);
        Ok(())
    }

    /// Resumes `env` with a pass at once.
    pub fn resume(&self, env: &str) -> Result<(), UnknownEnvironment> {
        self.handle(env)?.suspended.send_replace(false);
        Ok(())
    }

    /// Whether `env` is suspended (or being suspended: its running pass may still finish).
    pub fn is_suspended(&self, env: &str) -> Result<bool, UnknownEnvironment> {
        Ok(*self.handle(env)?.suspended.borrow())
    }

    /// The current status of `env`.
    pub fn status(&self, env: &str) -> Result<EnvironmentStatus, UnknownEnvironment> {
        Ok(self.handle(env)?.status.borrow().clone())
    }

    /// A receiver that sees each new status of `env`.
    pub fn watch(
        &self,
        env: &str,
    ) -> Result<watch::Receiver<EnvironmentStatus>, UnknownEnvironment> {
        Ok(self.handle(env)?.status.clone())
    }

    /// A receiver that sees every event of every environment from now on.
    pub fn events(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// Tells every loop to stop (a running pass is abandoned) without waiting for them.
    pub fn stop(&self) {
        self.shutdown.send_replace(true);
    }

    /// Stops every loop (a running pass is abandoned) and waits for them.
    pub async fn shutdown(self) {
        self.shutdown.send_replace(true);
        for task in self.tasks {
            // A loop that panicked has nothing left to stop.
            let _ = task.await;
        }
    }
}

/// One environment's loop and what steers it.
struct Steered<S: DesiredState> {
    reconciler: Reconciler<S>,
    /// This replica's claim on the environment: passes run only while it holds one.
    claims: watch::Receiver<Option<Claim>>,
    /// This replica's identity, when several share the work: recorded in each pass's status.
    replica: Option<String>,
    trigger: Arc<Notify>,
    suspended: watch::Receiver<bool>,
    status: watch::Sender<EnvironmentStatus>,
    shutdown: watch::Receiver<bool>,
    options: Arc<Options>,
    first: FirstPass,
}

impl<S: DesiredState> Steered<S> {
    async fn run(self) {
        let Self {
            mut reconciler,
            mut claims,
            replica,
            trigger,
            mut suspended,
            status,
            mut shutdown,
            options,
            first,
        } = self;
        let mut failures = 0u32;
        // A manual environment must not pick up a new revision by itself, and every pass reads
        // the branch tip: it only runs a pass when triggered.
        let manual = !reconciler.environment().sync.auto;
        let mut await_trigger = first == FirstPass::OnTrigger || manual;
        loop {
            if *suspended.borrow_and_update() {
                let s = reconciler.status_mut();
                s.suspended = true;
                s.reason = Reason::Suspended;
                s.next_attempt_in = None;
                status.send_replace(s.clone());
                tokio::select! {
                    _ = suspended.changed() => continue,
                    _ = shutdown.changed() => return,
                }
            }
            if reconciler.status().suspended {
                let s = reconciler.status_mut();
                s.suspended = false;
                s.reason = Reason::Pending;
                status.send_replace(s.clone());
            }
            let held = claims.borrow_and_update().clone().filter(Claim::is_valid);
            let Some(claim) = held else {
                // Another replica reconciles it; wait until this one holds it. A trigger that
                // came meanwhile (the first fetch) stays stored for then.
                tokio::select! {
                    changed = claims.changed() => if changed.is_err() { return },
                    _ = suspended.changed() => {}
                    _ = shutdown.changed() => return,
                }
                continue;
            };
            if await_trigger {
                tokio::select! {
                    _ = trigger.notified() => {}
                    _ = claims.changed() => continue,
                    _ = suspended.changed() => continue,
                    _ = shutdown.changed() => return,
                }
            }
            await_trigger = manual;
            reconciler.set_fence(claim.deadline().map(|_| Arc::new(claim.clone()) as _));
            let result = tokio::select! {
                result = async {
                    // Turns shared by every environment: a pass runs only while it holds one.
                    let _turn = options.passes.take().await;
                    reconciler.reconcile().await
                } => result,
                // Given up or lapsed: the pass stops here; its writes were refused from then on.
                _ = lost(&mut claims, &claim) => continue,
                _ = shutdown.changed() => return,
            };
            if !claim.is_valid() {
                // The environment moved during the pass: what it found is not this replica's
                // to report any more.
                continue;
            }
            let interval = reconciler.environment().sync.interval;
            let action = match result {
                Ok(action) => {
                    failures = 0;
                    action
                }
                Err(error) => {
                    failures = failures.saturating_add(1);
                    error_policy(&error, failures, &options, interval)
                }
            };
            let wait = match action {
                _ if manual => None,
                Action::Requeue(after) => Some(after),
                Action::AwaitChange => None,
            };
            let s = reconciler.status_mut();
            s.failures = failures;
            s.passes += 1;
            s.next_attempt_in = wait;
            s.replica.clone_from(&replica);
            status.send_replace(s.clone());
            if manual {
                continue;
            }
            let sleep = async {
                match wait {
                    Some(after) => tokio::time::sleep(after).await,
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                _ = sleep => {}
                _ = trigger.notified() => {}
                _ = suspended.changed() => {}
                _ = lost(&mut claims, &claim) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}

/// Completes once `claim` no longer holds: given up, taken over, or past its deadline. Never
/// completes for a claim without a deadline that nobody revokes.
async fn lost(claims: &mut watch::Receiver<Option<Claim>>, claim: &Claim) {
    loop {
        if !claim.is_valid() {
            return;
        }
        let deadline = async {
            match claim.deadline() {
                Some(deadline) => tokio::time::sleep_until(deadline).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            changed = claims.changed() => {
                if changed.is_err() {
                    return std::future::pending().await;
                }
            }
            () = deadline => {}
        }
    }
}
