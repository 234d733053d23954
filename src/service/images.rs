//! Image sources at run time: one loop per unit (a group of sources, or a source without a
//! group) that asks the registries every interval, or at once when a registry webhook names one
//! of their repositories, and commits the tags their policies choose into the environment they
//! enter ([`crate::git::images`]).
//!
//! ```text
//!  interval / webhook ──► look at each source of the unit (tags, policy, digest)
//!                              │ any failed or found no acceptable tag: nothing for the unit
//!                              ▼
//!                         the kustomization already says it? ── yes ──► done
//!                              │ no
//!                              ▼
//!                         one commit for the unit, pushed with a lease ──► fetch now
//! ```
//!
//! With several replicas only the leader looks and commits (it is the replica that writes
//! promotion commits); its claim is checked right before the push. The others keep no status of
//! their own and refuse [`Images::check_now`] naming the leader.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::Notify;
use tokio::task::JoinHandle;

use sha2::{Digest as _, Sha256};

use crate::cluster::Connections;
use crate::git::images::{ImageUpdate, Outcome, SetImage};
use crate::git::{self, poll::Poller};
use crate::image::{policy, registry};
use crate::pipeline::{ImageSource, Pipeline, RegistryCredentials};
use crate::service::registry_webhook::Pushed;
use crate::shard::{self, Ownership};

/// How many skipped tags a status keeps, with their reasons.
pub const SKIPPED_SHOWN: usize = 5;

/// A registry notifies a push of a tag before the tag is listed (distribution links the tag
/// after the manifest is stored, and notifies in between): a unit looks again this soon while a
/// tag a notification named is not listed yet, ...
const AWAITED_AGAIN: Duration = Duration::from_millis(500);

/// ... at most this many times; the next interval finds a tag that takes longer.
const AWAITED_LOOKS: u32 = 10;

/// What a source's last look found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageStatus {
    /// When the registry was last asked, with or without success.
    pub last_check: Option<SystemTime>,
    /// Looks since the service started.
    pub checks: u64,
    /// Tags the repository had at the last successful look.
    pub tags: Option<usize>,
    /// The tag the policy chose then.
    pub chosen: Option<String>,
    /// Its manifest digest.
    pub digest: Option<String>,
    /// A few tags the policy passed over, with why.
    pub skipped: Vec<Skipped>,
    /// How many it passed over in all.
    pub skipped_total: usize,
    /// Why the last look or commit failed, or why the unit did not move.
    pub error: Option<String>,
    /// The last commit the source made or took part in.
    pub last_commit: Option<String>,
    /// When.
    pub last_commit_time: Option<SystemTime>,
    /// What the environment's kustomization set for the image at the last look.
    pub current: Option<String>,
}

/// A tag the policy passed over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// The tag.
    pub tag: String,
    /// Why, in words.
    pub reason: String,
}

/// A source as the API shows it: its definition and its last look.
#[derive(Debug, Clone)]
pub struct ImageSourceView {
    /// The pipeline's definition.
    pub source: ImageSource,
    /// What its last look found.
    pub status: ImageStatus,
}

/// What the loops need.
pub struct Context {
    /// The running pipeline.
    pub pipeline: Arc<Pipeline>,
    /// Its repository's cache.
    pub repository: git::Repository,
    /// Who commits, and the signing key.
    pub git: git::promote::Options,
    /// Whether this replica may write.
    pub ownership: Ownership,
    /// Where credentials Secrets are read.
    pub connections: Connections,
    /// The fetch loop, asked to fetch after a commit so that the environment wakes at once.
    pub poller: Arc<Poller<git::poll::FetchResult>>,
}

struct Unit {
    /// The group's name, or the lone source's.
    name: String,
    sources: Vec<ImageSource>,
    wake: Arc<Notify>,
    /// Tags notifications named that no look has listed yet, by repository path and tag, with
    /// the looks left before giving up on them.
    awaited: Mutex<HashMap<(String, String), u32>>,
}

/// The loops of every unit of the pipeline, and what they found.
pub struct Images {
    units: Vec<Arc<Unit>>,
    status: Arc<Mutex<HashMap<String, ImageStatus>>>,
    ownership: Ownership,
    tasks: Vec<JoinHandle<()>>,
}

impl Images {
    /// Starts one loop per unit; each looks at once, then every interval (the shortest of its
    /// sources', with a little jitter so that many sources do not ask in step). Must run inside
    /// a tokio runtime.
    pub fn start(context: Context) -> Self {
        let mut units: Vec<Unit> = Vec::new();
        for source in &context.pipeline.images {
            match units.iter_mut().find(|u| u.name == source.unit()) {
                Some(unit) => unit.sources.push(source.clone()),
                None => units.push(Unit {
                    name: source.unit().to_owned(),
                    sources: vec![source.clone()],
                    wake: Arc::new(Notify::new()),
                    awaited: Mutex::default(),
                }),
            }
        }
        let units: Vec<Arc<Unit>> = units.into_iter().map(Arc::new).collect();
        let status = Arc::new(Mutex::new(HashMap::new()));
        let ownership = context.ownership.clone();
        let context = Arc::new(context);
        let tasks = units
            .iter()
            .map(|unit| tokio::spawn(run(context.clone(), unit.clone(), status.clone())))
            .collect();
        Self {
            units,
            status,
            ownership,
            tasks,
        }
    }

    /// Every source in pipeline order, with its last look.
    pub fn views(&self, pipeline: &Pipeline) -> Vec<ImageSourceView> {
        let status = self.status.lock().map(|s| s.clone()).unwrap_or_default();
        pipeline
            .images
            .iter()
            .map(|source| ImageSourceView {
                source: source.clone(),
                status: status.get(&source.name).cloned().unwrap_or_default(),
            })
            .collect()
    }

    /// Wakes the units with a source in the pushed repository (a registry's repository path,
    /// such as `shop/web`), so they look now, and again shortly while a pushed tag is not listed
    /// yet; the names of those sources. A look already running is followed by one more.
    pub fn check_now(&self, pushed: &Pushed) -> Result<Vec<String>, shard::NotLeader> {
        self.ownership.lead()?;
        let mut woken = Vec::new();
        for unit in &self.units {
            let named: Vec<&ImageSource> = unit
                .sources
                .iter()
                .filter(|s| s.repository.path == pushed.repository)
                .collect();
            if !named.is_empty() {
                if let Ok(mut awaited) = unit.awaited.lock() {
                    for tag in &pushed.tags {
                        awaited.insert((pushed.repository.clone(), tag.clone()), AWAITED_LOOKS);
                    }
                }
                unit.wake.notify_one();
                woken.extend(named.iter().map(|s| s.name.clone()));
            }
        }
        Ok(woken)
    }

    /// Stops every loop; a look in flight is abandoned.
    pub fn stop(&self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// One unit's loop.
async fn run(
    context: Arc<Context>,
    unit: Arc<Unit>,
    status: Arc<Mutex<HashMap<String, ImageStatus>>>,
) {
    let interval = unit
        .sources
        .iter()
        .map(|s| s.interval)
        .min()
        .expect("a unit has at least one source");
    // The kustomization is read from the cache: wait for the first fetch.
    if context
        .poller
        .subscribe()
        .wait_for(Option::is_some)
        .await
        .is_err()
    {
        return;
    }
    let mut registries: HashMap<String, Registry> = HashMap::new();
    loop {
        let mut next = jittered(interval);
        if context.ownership.lead().is_ok() {
            check(&context, &unit, &status, &mut registries).await;
            if unit.awaited.lock().is_ok_and(|a| !a.is_empty()) {
                next = AWAITED_AGAIN;
            }
        }
        tokio::select! {
            () = tokio::time::sleep(next) => {}
            () = unit.wake.notified() => {}
        }
    }
}

/// `interval` give or take a tenth.
fn jittered(interval: Duration) -> Duration {
    let mut byte = [0u8; 1];
    let spread = match getrandom::fill(&mut byte) {
        Ok(()) => f64::from(byte[0]) / 255.0 * 0.2 - 0.1,
        Err(_) => 0.0,
    };
    interval.mul_f64(1.0 + spread)
}

/// What one look at one source found.
struct Look {
    tags: usize,
    /// Of the tags notifications named, those the registry did not list.
    unlisted: Vec<String>,
    chosen: Option<String>,
    digest: Option<String>,
    skipped: Vec<Skipped>,
    skipped_total: usize,
}

/// Looks at every source of `unit` and, when all found a tag, commits what differs.
async fn check(
    context: &Context,
    unit: &Unit,
    status: &Mutex<HashMap<String, ImageStatus>>,
    registries: &mut HashMap<String, Registry>,
) {
    let update_status = |name: &str, change: &dyn Fn(&mut ImageStatus)| {
        if let Ok(mut table) = status.lock() {
            change(table.entry(name.to_owned()).or_default());
        }
    };
    let now = SystemTime::now();
    let mut looks = Vec::with_capacity(unit.sources.len());
    for source in &unit.sources {
        let awaited: Vec<String> = unit
            .awaited
            .lock()
            .map(|a| {
                a.keys()
                    .filter(|(repository, _)| *repository == source.repository.path)
                    .map(|(_, tag)| tag.clone())
                    .collect()
            })
            .unwrap_or_default();
        let result = look(context, source, registries, &awaited).await;
        if let Ok(mut table) = unit.awaited.lock() {
            settle_awaited(
                &mut table,
                &source.repository.path,
                &awaited,
                result.as_ref().map_or(&awaited[..], |l| &l.unlisted[..]),
            );
        }
        let previous = status
            .lock()
            .ok()
            .and_then(|table| table.get(&source.name).and_then(|s| s.error.clone()));
        if let Err(error) = &result {
            // Said once while it lasts: a source failing every second would flood the log.
            if previous.as_ref() == Some(error) {
                tracing::debug!(image_source = %source.name, %error, "cannot look at the registry");
            } else {
                tracing::warn!(image_source = %source.name, %error, "cannot look at the registry");
            }
        }
        update_status(&source.name, &|s| {
            s.last_check = Some(now);
            s.checks += 1;
            match &result {
                Ok(look) => {
                    s.tags = Some(look.tags);
                    s.chosen = look.chosen.clone();
                    s.digest = look.digest.clone();
                    s.skipped = look.skipped.clone();
                    s.skipped_total = look.skipped_total;
                    s.error = None;
                }
                Err(error) => s.error = Some(error.clone()),
            }
        });
        looks.push(result);
    }
    let grouped = unit.sources.len() > 1 || unit.sources[0].group.is_some();
    // Why the unit does not move, told to every source that did not fail on its own.
    let blocked = unit
        .sources
        .iter()
        .zip(&looks)
        .find_map(|(source, look)| match look {
            Err(_) => Some(format!(
                "nothing committed for group {}: source {} failed",
                unit.name, source.name
            )),
            Ok(Look { chosen: None, .. }) => Some(format!(
                "nothing committed for group {}: source {} has no tag its policy accepts",
                unit.name, source.name
            )),
            Ok(_) => None,
        });
    if let Some(reason) = blocked {
        if grouped {
            for (source, look) in unit.sources.iter().zip(&looks) {
                if look.is_ok() {
                    update_status(&source.name, &|s| s.error = Some(reason.clone()));
                }
            }
        }
        return;
    }
    let update = ImageUpdate {
        environment: unit.sources[0].environment.clone(),
        group: unit.sources[0].group.clone(),
        images: unit
            .sources
            .iter()
            .zip(looks)
            .map(|(source, look)| {
                let look = look.expect("a failed look blocks the unit above");
                SetImage {
                    source: source.name.clone(),
                    kustomize_name: source.kustomize_name.clone(),
                    repository: source.repository.to_string(),
                    tag: look
                        .chosen
                        .expect("a look without a tag blocks the unit above"),
                    digest: look.digest.filter(|_| source.pin_digest),
                }
            })
            .collect(),
    };
    let result = commit(context, &update).await;
    let (commit, error) = match result {
        Ok(Some(commit)) => (Some(commit), None),
        Ok(None) => (None, None),
        Err(error) => {
            tracing::warn!(unit = %unit.name, %error, "cannot commit the image update");
            (None, Some(error))
        }
    };
    let current = current_references(context, &update).await;
    for source in &unit.sources {
        update_status(&source.name, &|s| {
            if let Some(commit) = &commit {
                s.last_commit = Some(commit.clone());
                s.last_commit_time = Some(SystemTime::now());
            }
            if error.is_some() {
                s.error = error.clone();
            }
            if let Some(current) = current.get(&source.kustomize_name) {
                s.current = Some(current.clone());
            }
        });
    }
}

/// After a look at `repository` that was awaiting `asked`, of which `unlisted` were not listed:
/// the listed ones are no longer awaited, the others have one look less.
fn settle_awaited(
    awaited: &mut HashMap<(String, String), u32>,
    repository: &str,
    asked: &[String],
    unlisted: &[String],
) {
    for tag in asked {
        let key = (repository.to_owned(), tag.clone());
        if !unlisted.contains(tag) {
            awaited.remove(&key);
        } else if let Some(left) = awaited.get_mut(&key) {
            *left = left.saturating_sub(1);
            if *left == 0 {
                awaited.remove(&key);
                tracing::info!(%repository, %tag, looks = AWAITED_LOOKS, "a tag a registry notification named is still not listed; the next interval looks again");
            }
        }
    }
}

/// Commits `update` unless the cached kustomization already says it; the new commit's id.
async fn commit(context: &Context, update: &ImageUpdate) -> Result<Option<String>, String> {
    let repository = context.repository.clone();
    let pipeline = context.pipeline.clone();
    let wanted = update.clone();
    let changes = tokio::task::spawn_blocking(move || repository.would_change(&pipeline, &wanted))
        .await
        .expect("reading the kustomization returns errors rather than panicking")
        .map_err(|e| super::describe(&e))?;
    if !changes {
        return Ok(None);
    }
    let claim = context.ownership.lead().map_err(|e| e.to_string())?;
    let repository = context.repository.clone();
    let pipeline = context.pipeline.clone();
    let options = context.git.clone();
    let wanted = update.clone();
    let outcome = tokio::task::spawn_blocking(move || {
        repository.set_images(&pipeline, &wanted, &options, &|| {
            claim.check().map_err(|e| e.to_string())
        })
    })
    .await
    .expect("committing returns errors rather than panicking")
    .map_err(|e| super::describe(&e))?;
    match outcome {
        Outcome::Pushed {
            commit, attempts, ..
        } => {
            tracing::info!(environment = %update.environment, %commit, attempts, images = ?update.images.iter().map(SetImage::reference).collect::<Vec<_>>(), "image update pushed");
            // The environment wakes after the fetch loop sees its tree move.
            let _ = context.poller.fetch_now().await;
            Ok(Some(commit.to_string()))
        }
        Outcome::NoChange { .. } => Ok(None),
    }
}

/// What the environment's kustomization sets now, by image name, as the cache has it.
async fn current_references(context: &Context, update: &ImageUpdate) -> HashMap<String, String> {
    let repository = context.repository.clone();
    let pipeline = context.pipeline.clone();
    let environment = update.environment.clone();
    tokio::task::spawn_blocking(move || {
        let location = git::Location::of(&pipeline, &environment).ok()?;
        let tip = repository.branch_tip(&location.branch).ok()?;
        repository.image_references(&location, tip).ok()
    })
    .await
    .ok()
    .flatten()
    .map(|entries| entries.into_iter().collect())
    .unwrap_or_default()
}

/// The docker config.json of `source`'s credentials, read now.
async fn credentials(
    context: &Context,
    credentials: &RegistryCredentials,
) -> Result<zeroize::Zeroizing<Vec<u8>>, String> {
    match credentials {
        RegistryCredentials::File(path) => {
            let path = path.clone();
            tokio::task::spawn_blocking(move || std::fs::read(&path).map(zeroize::Zeroizing::new))
                .await
                .expect("reading a file returns errors rather than panicking")
                .map_err(|e| format!("credentials {credentials}: {e}"))
        }
        RegistryCredentials::Secret { name, key } => context
            .connections
            .secret_entry(name, key)
            .await
            .map(|(_, bytes)| bytes)
            .map_err(|e| format!("credentials: {}", super::describe(&e))),
    }
}

/// A source's registry client, kept between looks for its tokens, with what it learnt.
struct Registry {
    /// The SHA-256 of the docker config.json the client logs in with: a changed file or
    /// Secret gets a new client.
    login: [u8; 32],
    client: Arc<registry::Client>,
    /// The chosen tag and its digest at the last look: without pinning, a tag that stays
    /// chosen is not asked for its digest again.
    chosen: Option<(String, String)>,
    /// The build times of tags, for `newest`: each tag is asked once.
    created: HashMap<String, Option<jiff::Timestamp>>,
}

/// Asks `source`'s registry for its tags (and for `newest` their build times), lets the policy
/// choose, and asks for the chosen tag's digest.
async fn look(
    context: &Context,
    source: &ImageSource,
    registries: &mut HashMap<String, Registry>,
    awaited: &[String],
) -> Result<Look, String> {
    let config = match &source.credentials {
        Some(c) => Some(credentials(context, c).await?),
        None => None,
    };
    let login: [u8; 32] = Sha256::digest(config.as_deref().map_or(&[][..], |c| &c[..])).into();
    let state = match registries.remove(&source.name) {
        Some(state) if state.login == login => state,
        _ => {
            let logins = match &config {
                Some(bytes) => registry::Credentials::from_docker_config(bytes).map_err(|e| {
                    format!(
                        "credentials {}: {e}",
                        source.credentials.as_ref().expect("read above")
                    )
                })?,
                None => registry::Credentials::none(),
            };
            Registry {
                login,
                client: Arc::new(registry::Client::new(logins)),
                chosen: None,
                created: HashMap::new(),
            }
        }
    };
    let result = ask(source, &state, awaited).await;
    let state = match &result {
        Ok((look, created)) => Registry {
            chosen: look.chosen.clone().zip(look.digest.clone()),
            created: created.clone(),
            ..state
        },
        Err(_) => state,
    };
    registries.insert(source.name.clone(), state);
    result.map(|(look, _)| look)
}

/// The registry requests of one look, with the build times known after it.
async fn ask(
    source: &ImageSource,
    state: &Registry,
    awaited: &[String],
) -> Result<(Look, HashMap<String, Option<jiff::Timestamp>>), String> {
    let client = &state.client;
    let repository = source.repository.to_string();
    let failed = |e: registry::Error| super::describe(&e);
    let tags = client.tags(&repository).await.map_err(failed)?;
    let mut created = HashMap::new();
    let choice = if source.policy.by_build_time() {
        let mut timed = Vec::new();
        for tag in source.policy.candidates(&tags) {
            let time = match state.created.get(tag) {
                Some(time) => *time,
                None => client.created(&repository, tag).await.map_err(failed)?,
            };
            created.insert(tag.clone(), time);
            timed.push((tag.clone(), time));
        }
        source.policy.choose_by_build_time(&timed)
    } else {
        source.policy.choose(&tags)
    };
    let digest = match &choice.chosen {
        None => None,
        Some(tag) => match &state.chosen {
            Some((known, digest)) if known == tag && !source.pin_digest => Some(digest.clone()),
            _ => Some(client.digest(&repository, tag).await.map_err(failed)?),
        },
    };
    // The tags that fell outside the policy say more than older versions it passed over.
    let mut skipped: Vec<&policy::Skipped> = choice.skipped.iter().collect();
    skipped.sort_by_key(|s| matches!(s.reason, policy::SkipReason::Superseded { .. }));
    let look = Look {
        tags: tags.len(),
        unlisted: awaited
            .iter()
            .filter(|tag| !tags.contains(tag))
            .cloned()
            .collect(),
        chosen: choice.chosen.clone(),
        digest,
        skipped: skipped
            .iter()
            .take(SKIPPED_SHOWN)
            .map(|s| Skipped {
                tag: s.tag.clone(),
                reason: s.reason.to_string(),
            })
            .collect(),
        skipped_total: choice.skipped.len(),
    };
    Ok((look, created))
}
