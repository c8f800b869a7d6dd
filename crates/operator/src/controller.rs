//! The control loops: hub reflectors, the scheduler (one global decision from a consistent
//! snapshot, debounced), per-service workers (fetch, decide targets, apply, status) and the
//! CloudPool status writer. Workers and writers run only while this replica leads.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use sha2::{Digest, Sha256};
use skyloom_api::aiservice::FailoverMode;
use skyloom_api::{AIService, CloudPool};
use skyloom_solver::{Snapshot, SolveOptions, SolveStatus};

use crate::explain;
use crate::identity::{
    self, CREATED_NAMESPACE_LABEL, FIELD_MANAGER, FINALIZER, MANAGED_BY, ownership_annotations,
    workload_labels,
};
use crate::members::{MemberEvent, Registry};
use crate::metrics::Metrics;
use crate::realise::{self, Action, Limits, Observed};
use crate::snapshot::{self, PoolFacts};
use crate::status::{self, PoolReport, ServiceFacts};

/// Annotation with a hash of everything Skyloom renders into a member Deployment but the
/// replica count; a mismatch means the Deployment needs an update.
pub const TEMPLATE_HASH_ANNOTATION: &str = "skyloom.io/template-hash";

/// (namespace, name) of an AIService.
pub type Key = (String, String);

/// The hub's stores: AIServices, CloudPools, Secrets of the operator namespace.
pub type HubStores = (Store<AIService>, Store<CloudPool>, Store<Secret>);

/// Last seen (generation, deleting) per object, to tell spec changes from status writes.
type SeenGenerations<K> = Arc<Mutex<BTreeMap<K, (Option<i64>, bool)>>>;

/// The scheduler's decision for one service.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// The AIService generation decided on.
    pub generation: Option<i64>,
    /// Replicas per member.
    pub replicas: BTreeMap<String, u32>,
    /// Replicas that fit nowhere.
    pub unplaced: u32,
    /// Projected $/h.
    pub cost_per_hour: f64,
    /// Why.
    pub explanation: skyloom_api::aiservice::Explanation,
    /// A spec problem instead of a plan.
    pub invalid: Option<String>,
    /// Members whose replicas are being replaced (unreachable past the grace period).
    pub failing_over: Vec<String>,
}

/// Settings of the control loops.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Operator namespace.
    pub namespace: String,
    /// Debounce before solving.
    pub debounce: Duration,
    /// Periodic re-optimisation (None: never).
    pub reoptimize: Option<Duration>,
    /// Solver time limit.
    pub solver_time_limit: Duration,
    /// How long a deleted AIService waits for unreachable members.
    pub orphan_grace: Duration,
    /// Probe period (also the pool status cadence).
    pub probe_interval: Duration,
    /// Concurrent service workers.
    pub workers: usize,
}

/// A de-duplicating work queue of service keys.
#[derive(Default)]
pub struct WorkQueue {
    state: Mutex<(BTreeSet<Key>, BTreeSet<Key>)>,
    notify: tokio::sync::Notify,
}

impl WorkQueue {
    /// Queues `key` (once, however often it is pushed before a worker takes it).
    pub fn push(&self, key: Key) {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .0
            .insert(key);
        self.notify.notify_one();
    }

    /// Takes a key that no other worker is processing.
    async fn pop(&self) -> Key {
        loop {
            {
                let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
                let (pending, active) = &mut *s;
                if let Some(k) = pending.iter().find(|k| !active.contains(*k)).cloned() {
                    pending.remove(&k);
                    active.insert(k.clone());
                    return k;
                }
            }
            self.notify.notified().await;
        }
    }

    fn done(&self, key: &Key) {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .1
            .remove(key);
        self.notify.notify_one();
    }
}

/// Shared state of the control loops.
pub struct Context {
    /// Hub client.
    pub hub: Client,
    /// Settings.
    pub settings: Settings,
    /// Members.
    pub registry: Arc<Registry>,
    /// AIServices on the hub.
    pub services: Store<AIService>,
    /// CloudPools on the hub.
    pub pools: Store<CloudPool>,
    /// Secrets in the operator namespace.
    pub secrets: Store<Secret>,
    /// Latest decision per service.
    pub decisions: RwLock<BTreeMap<Key, Decision>>,
    /// Services to reconcile.
    pub queue: WorkQueue,
    /// Wakes the scheduler.
    pub schedule: tokio::sync::Notify,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Publishes Events on state changes.
    pub recorder: Recorder,
    /// (member, namespace) pairs known to exist, so a namespace is looked up once.
    known_namespaces: Mutex<BTreeSet<(String, String)>>,
    /// When the control loops were set up (for the startup grace).
    started: Instant,
    /// The scheduler must look again soon (it deferred a decision).
    schedule_soon: std::sync::atomic::AtomicBool,
}

/// How long the first decisions wait for every member's Deployments to be listed.
pub const STARTUP_GRACE: Duration = Duration::from_secs(30);

impl Context {
    /// A context over started reflectors.
    pub fn new(
        hub: Client,
        settings: Settings,
        registry: Arc<Registry>,
        stores: HubStores,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            recorder: Recorder::new(
                hub.clone(),
                Reporter {
                    controller: "skyloom".into(),
                    instance: std::env::var("POD_NAME").ok(),
                },
            ),
            known_namespaces: Mutex::default(),
            hub,
            settings,
            registry,
            services: stores.0,
            pools: stores.1,
            secrets: stores.2,
            decisions: RwLock::new(BTreeMap::new()),
            queue: WorkQueue::default(),
            schedule: tokio::sync::Notify::new(),
            metrics,
            started: Instant::now(),
            schedule_soon: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Reacts to a member event: services to the queue, member changes to the scheduler.
    pub fn on_member_event(&self, event: MemberEvent) {
        match event {
            MemberEvent::Service(ns, name) => self.queue.push((ns, name)),
            MemberEvent::Member(_) => self.schedule.notify_one(),
        }
    }

    fn decision(&self, key: &Key) -> Option<Decision> {
        self.decisions
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .cloned()
    }
}

fn key_of(ais: &AIService) -> Key {
    (ais.namespace().unwrap_or_default(), ais.name_any())
}

// ---------------------------------------------------------------------------------------
// The scheduler.

/// Runs the scheduler until aborted.
pub async fn scheduler(ctx: Arc<Context>) {
    loop {
        let wake = next_wake(&ctx);
        tokio::select! {
            _ = ctx.schedule.notified() => {}
            _ = tokio::time::sleep(wake) => {}
        }
        tokio::time::sleep(ctx.settings.debounce).await;
        let start = Instant::now();
        match decide(&ctx).await {
            Ok(changed) => {
                ctx.metrics.observe_solve(start.elapsed(), true);
                sweep_orphans(&ctx).await;
                for key in changed {
                    ctx.queue.push(key);
                }
            }
            Err(e) => {
                ctx.metrics.observe_solve(start.elapsed(), false);
                tracing::error!("placement failed, keeping the previous decisions: {e}");
            }
        }
    }
}

/// Deletes owned Deployments, in members that can be observed, whose AIService no longer
/// exists on the hub (its finalizer was removed by hand, or it went while nobody watched).
/// Re-derived from what is observed each time, never replayed from memory.
async fn sweep_orphans(ctx: &Context) {
    let views = ctx.registry.views();
    for (pool, deployments) in ctx.registry.all_deployments() {
        if !views.get(&pool).is_some_and(|v| v.observable()) {
            continue;
        }
        for d in deployments {
            let Some((ns, name)) = identity::owner_of(&d.metadata, ctx.registry.control_plane())
            else {
                continue;
            };
            if ctx
                .services
                .get(&ObjectRef::new(&name).within(&ns))
                .is_some()
            {
                continue;
            }
            tracing::warn!(service = %format!("{ns}/{name}"), pool = %pool, "pruning an orphaned member Deployment: its AIService is gone");
            if let Err(e) = delete_deployment(ctx, &pool, &(ns, name)).await {
                tracing::warn!("pruning failed, will retry: {e}");
            }
        }
    }
}

/// The next time something must be decided without an event: the end of a member's grace
/// period for some service, or the periodic re-optimisation.
fn next_wake(ctx: &Context) -> Duration {
    if ctx
        .schedule_soon
        .swap(false, std::sync::atomic::Ordering::SeqCst)
    {
        return Duration::from_millis(500);
    }
    let mut wake = ctx.settings.reoptimize.unwrap_or(Duration::from_secs(3600));
    let views = ctx.registry.views();
    for ais in ctx.services.state() {
        let grace = ais.spec.failover_grace();
        for v in views.values() {
            if let Some(since) = v.not_ready_since {
                let elapsed = since.elapsed();
                if elapsed < grace {
                    wake = wake.min(grace - elapsed + Duration::from_millis(50));
                }
            }
        }
    }
    wake.max(Duration::from_millis(100))
}

/// Builds the snapshot, solves, stores the decisions; returns the services whose decision
/// changed.
async fn decide(ctx: &Context) -> anyhow::Result<Vec<Key>> {
    let views = ctx.registry.views();
    // Right after start, a member whose Deployments have not been listed yet is unknown, not
    // empty: deciding now could place its replicas a second time elsewhere. Wait for every
    // member to be listed, at most for the startup grace period.
    let unknown: Vec<&String> = views
        .iter()
        .filter(|(_, v)| !v.synced)
        .map(|(k, _)| k)
        .collect();
    if !unknown.is_empty() && ctx.started.elapsed() < STARTUP_GRACE {
        tracing::debug!(
            ?unknown,
            "waiting for members to be listed before the first decisions"
        );
        ctx.schedule_soon
            .store(true, std::sync::atomic::Ordering::SeqCst);
        return Ok(Vec::new());
    }
    let mut clouds = Vec::new();
    let mut invalid_pools = BTreeSet::new();
    for pool in ctx.pools.state() {
        let name = pool.name_any();
        let view = views.get(&name);
        let facts = PoolFacts {
            discovered: view
                .and_then(|v| v.capacity.as_ref())
                .map(|c| c.available()),
            largest_node: view
                .and_then(|v| v.capacity.as_ref())
                .map(|c| c.largest_node.clone()),
            healthy: view.is_some_and(|v| v.observable()),
        };
        match snapshot::cloud(&pool, &facts) {
            Ok(c) => clouds.push(c),
            Err(e) => {
                tracing::warn!("{e}; the pool is left out of planning");
                invalid_pools.insert(name);
            }
        }
    }
    // Replicas of every owned Deployment, indexed once per decision.
    let mut running: BTreeMap<(String, Key), u32> = BTreeMap::new();
    for (pool, deployments) in ctx.registry.all_deployments() {
        for d in deployments {
            if let Some(owner) = identity::owner_of(&d.metadata, ctx.registry.control_plane()) {
                let n = u32::try_from(d.spec.replicas.unwrap_or(0)).unwrap_or(0);
                *running.entry((pool.clone(), owner)).or_insert(0) += n;
            }
        }
    }
    let mut services = Vec::new();
    let mut invalid = BTreeMap::new();
    let mut failing_over: BTreeMap<Key, Vec<String>> = BTreeMap::new();
    for ais in ctx.services.state() {
        if ais.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let key = key_of(&ais);
        let grace = ais.spec.failover_grace();
        let hold = ais.spec.failover_mode() == FailoverMode::Hold;
        let mut current = BTreeMap::new();
        for (pool, view) in &views {
            let n = running
                .get(&(pool.clone(), key.clone()))
                .copied()
                .unwrap_or(0);
            if n == 0 {
                continue;
            }
            let lost = !view.observable()
                && !hold
                && view.not_ready_since.is_some_and(|s| s.elapsed() >= grace);
            if lost {
                failing_over
                    .entry(key.clone())
                    .or_default()
                    .push(pool.clone());
            } else {
                current.insert(pool.clone(), n);
            }
        }
        match snapshot::service(&ais, current) {
            Ok(s) => services.push(s),
            Err(e) => {
                invalid.insert(key, e.to_string());
            }
        }
    }
    let snapshot = Snapshot::new(clouds, services)?;
    let options = SolveOptions {
        time_limit: ctx.settings.solver_time_limit,
        ..SolveOptions::default()
    };
    let plan =
        tokio::task::spawn_blocking(move || skyloom_solver::solve(&snapshot, &options)).await??;
    let gap = match &plan.status {
        SolveStatus::Optimal => Some(0.0),
        other => serde_json::to_value(other)
            .ok()
            .and_then(|v| v.get("gapPercent").and_then(|g| g.as_f64())),
    };
    ctx.metrics.set_plan(&plan);
    ctx.metrics.set_solver(
        plan.objective.value,
        gap.unwrap_or(0.0) / 100.0,
        plan.totals.moves,
    );
    let generations: BTreeMap<Key, Option<i64>> = ctx
        .services
        .state()
        .iter()
        .map(|a| (key_of(a), a.metadata.generation))
        .collect();
    let mut next = BTreeMap::new();
    for sp in &plan.services {
        let key = (sp.namespace.clone(), sp.name.clone());
        next.insert(
            key.clone(),
            Decision {
                generation: generations.get(&key).copied().flatten(),
                replicas: sp
                    .placements
                    .iter()
                    .filter(|p| p.replicas > 0)
                    .map(|p| (p.cloud.clone(), p.replicas))
                    .collect(),
                unplaced: sp.unplaced,
                cost_per_hour: sp.cost_per_hour,
                explanation: explain::explanation(sp, gap),
                invalid: None,
                failing_over: failing_over.get(&key).cloned().unwrap_or_default(),
            },
        );
    }
    for (key, message) in invalid {
        next.insert(
            key.clone(),
            Decision {
                generation: generations.get(&key).copied().flatten(),
                replicas: BTreeMap::new(),
                unplaced: 0,
                cost_per_hour: 0.0,
                explanation: Default::default(),
                invalid: Some(message),
                failing_over: Vec::new(),
            },
        );
    }
    let mut decisions = ctx.decisions.write().unwrap_or_else(|p| p.into_inner());
    for (key, d) in &next {
        let before = decisions
            .get(key)
            .map(|p| p.failing_over.clone())
            .unwrap_or_default();
        for pool in d.failing_over.iter().filter(|p| !before.contains(p)) {
            ctx.metrics.count_failover(pool);
        }
    }
    let changed: Vec<Key> = next
        .iter()
        .filter(|(k, d)| decisions.get(*k) != Some(*d))
        .map(|(k, _)| k.clone())
        .chain(decisions.keys().filter(|k| !next.contains_key(*k)).cloned())
        .collect();
    *decisions = next;
    Ok(changed)
}

// ---------------------------------------------------------------------------------------
// Service workers.

/// Runs one service worker until aborted.
pub async fn worker(ctx: Arc<Context>) {
    let mut failures: BTreeMap<Key, u32> = BTreeMap::new();
    loop {
        let key = ctx.queue.pop().await;
        let start = Instant::now();
        let result = reconcile(&ctx, &key).await;
        ctx.queue.done(&key);
        ctx.metrics.observe_reconcile(
            "aiservice",
            start.elapsed(),
            result.as_ref().err().map(|e| e.kind()),
        );
        match result {
            Ok(Some(after)) => {
                failures.remove(&key);
                requeue(&ctx, key, after);
            }
            Ok(None) => {
                failures.remove(&key);
            }
            Err(e) => {
                let n = failures.entry(key.clone()).or_insert(0);
                *n = n.saturating_add(1);
                let backoff = Duration::from_millis(500u64.saturating_mul(1 << (*n).min(6)))
                    .min(Duration::from_secs(30));
                tracing::warn!(service = %format!("{}/{}", key.0, key.1), kind = e.kind(), "reconcile failed, retrying in {backoff:?}: {e}");
                requeue(&ctx, key, backoff);
            }
        }
    }
}

fn requeue(ctx: &Arc<Context>, key: Key, after: Duration) {
    let ctx = ctx.clone();
    tokio::spawn(async move {
        tokio::time::sleep(after).await;
        ctx.queue.push(key);
    });
}

/// Errors of one service reconcile, each with a stable kind for metrics.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// A call to the hub failed.
    #[error("hub: {0}")]
    Hub(#[source] kube::Error),
    /// A call to a member failed.
    #[error("member {pool}: {source}")]
    Member {
        /// The member.
        pool: String,
        /// The error.
        #[source]
        source: kube::Error,
    },
}

impl ReconcileError {
    /// Stable kind for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            ReconcileError::Hub(_) => "hub_api",
            ReconcileError::Member { .. } => "member_api",
        }
    }
}

/// Reconciles one AIService; returns when to look again if not converged.
async fn reconcile(ctx: &Context, key: &Key) -> Result<Option<Duration>, ReconcileError> {
    let Some(ais) = ctx.services.get(&ObjectRef::new(&key.1).within(&key.0)) else {
        return Ok(None);
    };
    let api: Api<AIService> = Api::namespaced(ctx.hub.clone(), &key.0);
    if ais.metadata.deletion_timestamp.is_some() {
        return finalize(ctx, &ais, &api).await;
    }
    // The finalizer goes on before anything exists in a member; the updated object is used
    // for the rest of this pass (no extra round through the queue).
    let ais = if ais.finalizers().iter().any(|f| f == FINALIZER) {
        ais
    } else {
        let mut finalizers = ais.finalizers().to_vec();
        finalizers.push(FINALIZER.to_owned());
        let patch = json!({"metadata": {"finalizers": finalizers, "resourceVersion": ais.resource_version()}});
        let updated = api
            .patch(&key.1, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(ReconcileError::Hub)?;
        Arc::new(updated)
    };
    let decision = ctx.decision(key);
    let views = ctx.registry.views();
    let rendered = render(&ais, ctx.registry.control_plane());
    let hash = rendered.1.clone();
    let mut observed = BTreeMap::new();
    let mut reports: BTreeMap<String, PoolReport> = BTreeMap::new();
    for (pool, view) in &views {
        let deployments = ctx.registry.deployments_of(pool, &key.0, &key.1);
        let d = deployments.first();
        let spec = d
            .and_then(|d| d.spec.replicas)
            .map(|r| u32::try_from(r).unwrap_or(0));
        let st = d.and_then(|d| d.status.as_ref());
        let count = |v: Option<i32>| u32::try_from(v.unwrap_or(0)).unwrap_or(0);
        let available = count(st.and_then(|s| s.available_replicas));
        let rolled_out = d.is_some_and(|d| {
            let gen_ok =
                d.status.as_ref().and_then(|s| s.observed_generation) >= d.metadata.generation;
            let hash_ok = d.annotations().get(TEMPLATE_HASH_ANNOTATION) == Some(&hash);
            let updated = count(d.status.as_ref().and_then(|s| s.updated_replicas));
            gen_ok && hash_ok && updated >= spec.unwrap_or(0)
        });
        observed.insert(
            pool.clone(),
            Observed {
                observable: view.observable(),
                spec_replicas: spec,
                available,
            },
        );
        reports.insert(
            pool.clone(),
            PoolReport {
                desired: decision
                    .as_ref()
                    .and_then(|d| d.replicas.get(pool).copied())
                    .unwrap_or(0),
                spec: spec.unwrap_or(0),
                ready: count(st.and_then(|s| s.ready_replicas)),
                available,
                rolled_out: rolled_out || spec.is_none(),
                stale: !view.observable(),
                problem: (!view.observable()).then(|| view.health.message()),
            },
        );
    }
    let mut conflicts = Vec::new();
    let mut pending_writes = false;
    if let Some(decision) = decision.as_ref().filter(|d| d.invalid.is_none()) {
        let migration = ais.spec.migration();
        let limits = Limits {
            desired: u32::try_from(ais.spec.replicas).unwrap_or(0),
            max_surge: u32::try_from(migration.max_surge()).unwrap_or(1),
            max_unavailable: u32::try_from(migration.max_unavailable()).unwrap_or(0),
        };
        let targets = realise::targets(&decision.replicas, &observed, limits);
        let needs_update = |pool: &str| {
            ctx.registry
                .deployments_of(pool, &key.0, &key.1)
                .first()
                .is_some_and(|d| d.annotations().get(TEMPLATE_HASH_ANNOTATION) != Some(&hash))
        };
        let actions = realise::actions(&targets, &observed, &needs_update);
        pending_writes = !actions.is_empty()
            || targets
                .iter()
                .any(|(p, n)| decision.replicas.get(p).copied().unwrap_or(0) != *n);
        for action in actions {
            match action {
                Action::Apply { pool, replicas } => {
                    match apply_deployment(ctx, &pool, &ais, &rendered.0, replicas).await {
                        Ok(true) => {}
                        Ok(false) => conflicts.push(format!(
                            "member {pool} has a Deployment {}/{} that Skyloom does not own; it is left alone",
                            key.0, key.1
                        )),
                        Err(e) => return Err(e),
                    }
                }
                Action::Delete { pool } => delete_deployment(ctx, &pool, key).await?,
            }
        }
    }
    let facts = ServiceFacts {
        desired: u32::try_from(ais.spec.replicas).unwrap_or(0),
        min_available: u32::try_from(ais.spec.min_replicas()).unwrap_or(0),
        pools: reports,
        unplaced: decision
            .as_ref()
            .filter(|d| d.invalid.is_none())
            .map(|d| d.unplaced),
        explanation: decision.as_ref().map(|d| d.explanation.clone()),
        cost_per_hour: decision.as_ref().map(|d| d.cost_per_hour),
        invalid: decision.as_ref().and_then(|d| d.invalid.clone()),
        conflicts,
        pending_writes,
        failing_over: decision
            .as_ref()
            .map(|d| d.failing_over.clone())
            .unwrap_or_default(),
    };
    let parts = status::service_status(&facts);
    let converged = parts
        .conditions
        .iter()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    write_service_status(ctx, &ais, &api, &facts, parts, decision.as_ref()).await?;
    // Member watches trigger reconciles as Deployments change; this is only a safety net.
    Ok((!converged).then_some(Duration::from_secs(30)))
}

/// Renders the member Deployment (without namespace and replicas) and its template hash.
fn render(ais: &AIService, control_plane: &str) -> (serde_json::Value, String) {
    let (ns, name) = key_of(ais);
    let labels = workload_labels(&ns, &name);
    let mut template = serde_json::to_value(&ais.spec.template).unwrap_or_else(|_| json!({}));
    let mut pod_labels: BTreeMap<String, String> = ais
        .spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    pod_labels.extend(labels.clone());
    if let Some(obj) = template.as_object_mut() {
        let meta = obj.entry("metadata").or_insert_with(|| json!({}));
        if let Some(m) = meta.as_object_mut() {
            m.insert("labels".into(), json!(pod_labels));
        }
    }
    let spec = json!({
        "selector": {"matchLabels": {identity::SERVICE_ID_LABEL: identity::service_id(&ns, &name)}},
        "template": template,
    });
    let mut h = Sha256::new();
    h.update(spec.to_string().as_bytes());
    let hash: String = h.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let mut annotations =
        ownership_annotations(&ns, &name, &ais.uid().unwrap_or_default(), control_plane);
    annotations.insert(TEMPLATE_HASH_ANNOTATION.to_owned(), hash.clone());
    let doc = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": ns, "labels": labels, "annotations": annotations},
        "spec": spec,
    });
    (doc, hash)
}

/// Creates the namespace in a member if it is missing (labelled as Skyloom's).
async fn ensure_namespace(client: &Client, pool: &str, ns: &str) -> Result<bool, ReconcileError> {
    let api: Api<Namespace> = Api::all(client.clone());
    let member_err = |source| ReconcileError::Member {
        pool: pool.to_owned(),
        source,
    };
    if api.get_opt(ns).await.map_err(member_err)?.is_some() {
        return Ok(false);
    }
    let obj: Namespace = serde_json::from_value(json!({
        "metadata": {"name": ns, "labels": {CREATED_NAMESPACE_LABEL: MANAGED_BY}}
    }))
    .unwrap_or_default();
    match api.create(&PostParams::default(), &obj).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
        Err(e) => Err(member_err(e)),
    }
}

/// Applies the Deployment in `pool`; returns false when an unowned object of that name is in
/// the way (nothing is written then).
async fn apply_deployment(
    ctx: &Context,
    pool: &str,
    ais: &AIService,
    rendered: &serde_json::Value,
    replicas: u32,
) -> Result<bool, ReconcileError> {
    let Some(client) = ctx.registry.client(pool) else {
        return Ok(true);
    };
    let (ns, name) = key_of(ais);
    let member_err = |source| ReconcileError::Member {
        pool: pool.to_owned(),
        source,
    };
    let known = (pool.to_owned(), ns.clone());
    let cached = ctx
        .known_namespaces
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .contains(&known);
    let created_now = if cached {
        false
    } else {
        ensure_namespace(&client, pool, &ns).await?
    };
    ctx.known_namespaces
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(known.clone());
    let api: Api<Deployment> = Api::namespaced(client, &ns);
    // A namespace created just now holds nothing; otherwise an object of that name that the
    // watch (which sees only Skyloom's objects) does not show must be looked at first.
    if !created_now
        && ctx.registry.deployments_of(pool, &ns, &name).is_empty()
        && let Some(existing) = api.get_opt(&name).await.map_err(member_err)?
        && identity::owner_of(&existing.metadata, ctx.registry.control_plane()).is_none()
    {
        return Ok(false);
    }
    let mut doc = rendered.clone();
    doc["spec"]["replicas"] = json!(replicas);
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&doc),
    )
    .await
    .map_err(member_err)?;
    tracing::info!(service = %format!("{ns}/{name}"), pool, replicas, "applied member Deployment");
    Ok(true)
}

/// Deletes the owned Deployment of `key` in `pool` (only if its UID is the observed owned one).
async fn delete_deployment(ctx: &Context, pool: &str, key: &Key) -> Result<(), ReconcileError> {
    let Some(client) = ctx.registry.client(pool) else {
        return Ok(());
    };
    let api: Api<Deployment> = Api::namespaced(client, &key.0);
    for d in ctx.registry.deployments_of(pool, &key.0, &key.1) {
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: d.metadata.uid.clone(),
                resource_version: None,
            }),
            ..DeleteParams::background()
        };
        match api.delete(&d.name_any(), &params).await {
            Ok(_) => {
                tracing::info!(service = %format!("{}/{}", key.0, key.1), pool, "deleted member Deployment")
            }
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
            Err(source) => {
                return Err(ReconcileError::Member {
                    pool: pool.to_owned(),
                    source,
                });
            }
        }
    }
    Ok(())
}

/// Removes member Deployments of a deleted AIService, then its finalizer. Members that stay
/// unobservable are given up after the orphan grace period, with a log line saying so.
async fn finalize(
    ctx: &Context,
    ais: &AIService,
    api: &Api<AIService>,
) -> Result<Option<Duration>, ReconcileError> {
    if !ais.finalizers().iter().any(|f| f == FINALIZER) {
        return Ok(None);
    }
    let key = key_of(ais);
    let deleted_for = ais
        .metadata
        .deletion_timestamp
        .as_ref()
        .map(|t| {
            let now = k8s_openapi::jiff::Timestamp::now();
            Duration::from_secs(u64::try_from(now.as_second() - t.0.as_second()).unwrap_or(0))
        })
        .unwrap_or_default();
    let mut waiting = Vec::new();
    for (pool, view) in ctx.registry.views() {
        if ctx
            .registry
            .deployments_of(&pool, &key.0, &key.1)
            .is_empty()
        {
            continue;
        }
        if view.observable() {
            delete_deployment(ctx, &pool, &key).await?;
            waiting.push(pool);
        } else if deleted_for < ctx.settings.orphan_grace {
            waiting.push(pool);
        } else {
            tracing::warn!(
                service = %format!("{}/{}", key.0, key.1), pool,
                "member unreachable for the whole orphan grace period; its Deployment is given up (left in the member)"
            );
        }
    }
    if !waiting.is_empty() {
        return Ok(Some(Duration::from_secs(2)));
    }
    let finalizers: Vec<String> = ais
        .finalizers()
        .iter()
        .filter(|f| *f != FINALIZER)
        .cloned()
        .collect();
    let patch =
        json!({"metadata": {"finalizers": finalizers, "resourceVersion": ais.resource_version()}});
    match api
        .patch(&key.1, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => Ok(None),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(None),
        Err(e) => Err(ReconcileError::Hub(e)),
    }
}

async fn write_service_status(
    ctx: &Context,
    ais: &AIService,
    api: &Api<AIService>,
    facts: &ServiceFacts,
    parts: status::ServiceStatusParts,
    decision: Option<&Decision>,
) -> Result<(), ReconcileError> {
    let previous = ais.status.clone().unwrap_or_default();
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let generation = ais.metadata.generation;
    let observed_generation = if parts.realised {
        generation
    } else {
        previous.observed_generation
    };
    let (ns, name) = key_of(ais);
    let mut st = skyloom_api::AIServiceStatus {
        observed_generation,
        conditions: status::conditions(&parts.conditions, &previous.conditions, generation, &now),
        placements: parts.placements,
        replicas: Some(parts.replicas),
        ready_replicas: Some(parts.ready),
        available_replicas: Some(parts.available),
        unplaced_replicas: Some(parts.unplaced),
        selector: Some(format!(
            "{}={}",
            identity::SERVICE_ID_LABEL,
            identity::service_id(&ns, &name)
        )),
        cost_per_hour: facts.cost_per_hour.map(|c| format!("{c:.4}")),
        placement_summary: Some(parts.summary),
        explanation: decision.map(|d| d.explanation.clone()),
        last_solve_time: previous.last_solve_time.clone(),
    };
    if previous.explanation != st.explanation || previous.last_solve_time.is_none() {
        st.last_solve_time = Some(now);
    }
    let mut comparable = st.clone();
    comparable.last_solve_time = previous.last_solve_time.clone();
    if ais.status.as_ref() == Some(&comparable) {
        return Ok(());
    }
    publish_transitions(
        ctx,
        &ais.object_ref(&()),
        &previous.conditions,
        &st.conditions,
    )
    .await;
    let patch = json!({"apiVersion": "skyloom.io/v1alpha1", "kind": "AIService", "status": st});
    api.patch_status(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map_err(ReconcileError::Hub)?;
    Ok(())
}

/// Publishes one Event per condition (Ready, Scheduled, Stalled, Available) whose status
/// changed: events on state changes only, never on every reconcile.
async fn publish_transitions(
    ctx: &Context,
    object: &k8s_openapi::api::core::v1::ObjectReference,
    before: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
    after: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
) {
    const NOTEWORTHY: [&str; 5] = ["Ready", "Scheduled", "Stalled", "Available", "Reachable"];
    for c in after
        .iter()
        .filter(|c| NOTEWORTHY.contains(&c.type_.as_str()))
    {
        let old = before.iter().find(|p| p.type_ == c.type_);
        if old.is_some_and(|o| o.status == c.status && o.reason == c.reason) {
            continue;
        }
        if old.is_none() && c.status == "Unknown" {
            continue;
        }
        let bad = matches!(
            (c.type_.as_str(), c.status.as_str()),
            ("Stalled", "True") | ("Ready" | "Scheduled" | "Available" | "Reachable", "False")
        );
        let event = KubeEvent {
            type_: if bad {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: c.reason.clone(),
            note: Some(
                format!("{}={}: {}", c.type_, c.status, c.message)
                    .chars()
                    .take(1000)
                    .collect(),
            ),
            action: format!("Set{}", c.type_),
            secondary: None,
        };
        let recorder = ctx.recorder.clone();
        let object = object.clone();
        // Events are best effort and must not slow the reconcile down.
        tokio::spawn(async move {
            if let Err(e) = recorder.publish(&event, &object).await {
                tracing::debug!("event not published: {e}");
            }
        });
    }
}

// ---------------------------------------------------------------------------------------
// CloudPool status.

/// Writes CloudPool status whenever it changes (checked every probe interval).
pub async fn pool_status_loop(ctx: Arc<Context>) {
    let mut last_probe_written: BTreeMap<String, Instant> = BTreeMap::new();
    loop {
        for pool in ctx.pools.state() {
            if let Err(e) = write_pool_status(&ctx, &pool, &mut last_probe_written).await {
                tracing::debug!(pool = %pool.name_any(), "pool status not written: {e}");
            }
        }
        tokio::time::sleep(ctx.settings.probe_interval).await;
    }
}

async fn write_pool_status(
    ctx: &Context,
    pool: &CloudPool,
    last_written: &mut BTreeMap<String, Instant>,
) -> Result<(), kube::Error> {
    use skyloom_api::cloudpool::{condition as pc, reason as pr};
    use status::Cond;
    let name = pool.name_any();
    let Some(view) = ctx.registry.view(&name) else {
        return Ok(());
    };
    let ready = view.observable();
    let creds = !matches!(
        view.health,
        crate::members::Health::SecretNotFound(_) | crate::members::Health::KubeconfigRejected(_)
    );
    let reason = view.health.reason();
    let message = view.health.message();
    let mut conds = vec![
        Cond::new(pc::REACHABLE, ready, reason, message.clone()),
        Cond::new(
            pc::CREDENTIALS_AVAILABLE,
            creds,
            if creds { pr::PROBED } else { reason },
            message.clone(),
        ),
        Cond::new(
            skyloom_api::conditions::READY,
            ready && !pool.spec.is_cordoned(),
            if pool.spec.is_cordoned() && ready {
                pr::CORDONED
            } else {
                reason
            },
            message.clone(),
        ),
        Cond::new(
            skyloom_api::conditions::RECONCILING,
            false,
            reason,
            "probed periodically",
        ),
        Cond::new(skyloom_api::conditions::STALLED, !creds, reason, message),
    ];
    if view.health == crate::members::Health::Unknown {
        conds[0].status = skyloom_api::conditions::status::UNKNOWN;
    }
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let previous = pool.status.clone().unwrap_or_default();
    let mut st = skyloom_api::CloudPoolStatus {
        observed_generation: pool.metadata.generation,
        conditions: status::conditions(
            &conds,
            &previous.conditions,
            pool.metadata.generation,
            &now,
        ),
        capacity: BTreeMap::new(),
        allocated: BTreeMap::new(),
        free: BTreeMap::new(),
        node_count: None,
        kubernetes_version: view.version.clone(),
        last_probe_time: previous.last_probe_time.clone(),
        orphans: previous.orphans.clone(),
        credentials_expiry: None,
        summary: None,
    };
    if let Some(cap) = &view.capacity {
        st.node_count = Some(i32::try_from(cap.nodes).unwrap_or(i32::MAX));
        let mut allocated: BTreeMap<String, u64> = BTreeMap::new();
        for d in ctx
            .registry
            .all_deployments()
            .get(&name)
            .into_iter()
            .flatten()
        {
            let replicas = u64::try_from(d.spec.replicas.unwrap_or(0)).unwrap_or(0);
            if let Some(ps) = d.spec.template.spec.as_ref() {
                for (k, v) in crate::capacity::pod_requests(ps) {
                    let e = allocated.entry(k).or_insert(0);
                    *e = e.saturating_add(v.saturating_mul(replicas));
                }
            }
        }
        let available = cap.available();
        for (k, v) in &cap.allocatable {
            st.capacity.insert(k.clone(), status::quantity(k, *v));
            let used = allocated.get(k).copied().unwrap_or(0);
            st.free.insert(
                k.clone(),
                status::quantity(
                    k,
                    available.get(k).copied().unwrap_or(0).saturating_sub(used),
                ),
            );
        }
        for (k, v) in &allocated {
            st.allocated.insert(k.clone(), status::quantity(k, *v));
        }
        let frac = |res: &str| {
            cap.allocatable.get(res).map(|total| {
                let free = available
                    .get(res)
                    .copied()
                    .unwrap_or(0)
                    .saturating_sub(allocated.get(res).copied().unwrap_or(0));
                if res == "cpu" {
                    format!("{}/{}", free / 1000, total / 1000)
                } else {
                    format!("{free}/{total}")
                }
            })
        };
        st.summary = Some(skyloom_api::cloudpool::CloudPoolSummary {
            gpu: frac("nvidia.com/gpu"),
            cpu: frac("cpu"),
        });
    }
    let probe_due = last_written
        .get(&name)
        .is_none_or(|t| t.elapsed() > Duration::from_secs(60));
    let mut comparable = st.clone();
    comparable.last_probe_time = previous.last_probe_time.clone();
    if pool.status.as_ref() == Some(&comparable) && !probe_due {
        return Ok(());
    }
    st.last_probe_time = view
        .last_probe
        .map(|t| Time(k8s_openapi::jiff::Timestamp::try_from(t).unwrap_or(now.0)));
    last_written.insert(name.clone(), Instant::now());
    publish_transitions(
        ctx,
        &pool.object_ref(&()),
        &previous.conditions,
        &st.conditions,
    )
    .await;
    let api: Api<CloudPool> = Api::all(ctx.hub.clone());
    let patch = json!({"apiVersion": "skyloom.io/v1alpha1", "kind": "CloudPool", "status": st});
    api.patch_status(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Hub reflectors.

/// Starts the hub reflectors; returns their stores and the tasks driving them. `on_service`
/// is told about every AIService change, `on_pool_or_secret` about CloudPool and Secret changes.
pub fn start_reflectors(
    hub: &Client,
    namespace: &str,
    on_service: Arc<dyn Fn(Key, bool) + Send + Sync>,
    on_pool_or_secret: Arc<dyn Fn(bool) + Send + Sync>,
) -> (HubStores, Vec<tokio::task::JoinHandle<()>>) {
    let (services, w1) = reflector::store();
    let (pools, w2) = reflector::store();
    let (secrets, w3) = reflector::store();
    let svc_stream = reflector::reflector(
        w1,
        watcher::watcher(
            Api::<AIService>::all(hub.clone()),
            watcher::Config::default(),
        )
        .default_backoff(),
    )
    .touched_objects();
    let generations: SeenGenerations<Key> = Arc::default();
    let t1 = tokio::spawn(async move {
        futures::pin_mut!(svc_stream);
        while let Some(item) = svc_stream.next().await {
            if let Ok(ais) = item {
                let key = key_of(&ais);
                let now = (
                    ais.metadata.generation,
                    ais.metadata.deletion_timestamp.is_some(),
                );
                let changed = generations
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(key.clone(), now)
                    != Some(now);
                on_service(key, changed);
            }
        }
    });
    let p = on_pool_or_secret.clone();
    let pool_stream = reflector::reflector(
        w2,
        watcher::watcher(
            Api::<CloudPool>::all(hub.clone()),
            watcher::Config::default(),
        )
        .default_backoff(),
    )
    .touched_objects();
    let pool_generations: SeenGenerations<String> = Arc::default();
    let t2 = tokio::spawn(async move {
        futures::pin_mut!(pool_stream);
        while let Some(item) = pool_stream.next().await {
            if let Ok(pool) = item {
                let now = (
                    pool.metadata.generation,
                    pool.metadata.deletion_timestamp.is_some(),
                );
                let changed = pool_generations
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(pool.name_any(), now)
                    != Some(now);
                p(changed);
            }
        }
    });
    let secret_stream = reflector::reflector(
        w3,
        watcher::watcher(
            Api::<Secret>::namespaced(hub.clone(), namespace),
            watcher::Config::default(),
        )
        .default_backoff(),
    );
    let t3 = tokio::spawn(async move {
        futures::pin_mut!(secret_stream);
        while let Some(item) = secret_stream.next().await {
            if item.is_ok() {
                on_pool_or_secret(false);
            }
        }
    });
    ((services, pools, secrets), vec![t1, t2, t3])
}
