//! The control loops: hub reflectors, the scheduler (one global decision from a consistent
//! snapshot, debounced), per-service workers (fetch, decide targets, apply, status) and the
//! CloudPool status writer. Workers and writers run only while this replica leads.

mod finalize;
mod member_namespaces;
mod member_writes;
mod pending_writes;
mod pool_lifecycle;
mod pool_status;
mod queue;
mod reconcile;
mod reflectors;
mod scheduler;
mod service_status;
mod stalled;

pub use pool_status::pool_status_loop;
pub use queue::WorkQueue;
pub use reconcile::{ReconcileError, worker};
pub use reflectors::start_reflectors;
pub use scheduler::scheduler;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::Store;
use kube::{Client, ResourceExt};
use skyloom_api::{AIService, CloudPool};

use crate::members::{MemberEvent, Registry};
use crate::metrics::Metrics;

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
    /// At most one put-back of a replica count another writer changed per this window.
    pub scaling_conflict_window: Duration,
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
    /// Wakes the CloudPool status loop before its period: an owned Deployment changed, so a
    /// pool's allocated and free capacity did.
    pub pool_status_wake: tokio::sync::Notify,
    /// Moves given up per service (their targets are avoided).
    pub stalled_moves: stalled::StalledMoves,
    /// Member namespaces seen terminating (their services avoid those members).
    pub terminating_namespaces: member_namespaces::TerminatingNamespaces,
    /// Skyloom's member writes not yet shown by the member watches.
    pub pending_writes: pending_writes::PendingWrites,
    /// Replica counts applied per service and member, and put-backs of changed ones.
    pub replica_fights: Mutex<crate::replica_fights::ReplicaFights>,
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

/// How long a service's member Deployment changes are gathered before it is reconciled.
pub const MEMBER_CHANGE_BATCH: Duration = Duration::from_millis(500);

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
            pool_status_wake: tokio::sync::Notify::new(),
            stalled_moves: stalled::StalledMoves::default(),
            terminating_namespaces: member_namespaces::TerminatingNamespaces::default(),
            pending_writes: pending_writes::PendingWrites::default(),
            replica_fights: Mutex::default(),
            metrics,
            started: Instant::now(),
            schedule_soon: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// The replica-count fights, locked.
    pub fn fights(&self) -> std::sync::MutexGuard<'_, crate::replica_fights::ReplicaFights> {
        self.replica_fights
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Reacts to a member event: services to the queue, member changes to the scheduler. A
    /// member Deployment reports a rollout in several status updates within a second; the
    /// service is looked at once they are in (at most [`MEMBER_CHANGE_BATCH`] later), not once
    /// per update, each a status write to the hub.
    pub fn on_member_event(&self, event: MemberEvent) {
        match event {
            MemberEvent::Service(ns, name) => {
                self.queue.push_within((ns, name), MEMBER_CHANGE_BATCH);
                self.pool_status_wake.notify_one();
            }
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

pub(crate) fn key_of(ais: &AIService) -> Key {
    (ais.namespace().unwrap_or_default(), ais.name_any())
}
