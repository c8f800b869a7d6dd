//! The member registry: one entry per CloudPool, holding a client built from the pool's
//! kubeconfig Secret (checked first), a health probe, capacity discovery and a watch on the
//! Deployments Skyloom owns there. A client is rebuilt only when the Secret's content changes
//! (token rotation needs no restart; identical rewrites open no new watches).
//!
//! A member that does not answer is *unknown*, not empty: its last observed Deployments stay
//! in the store, and nothing is decided from its silence but the failover after the grace
//! period, which the scheduler owns.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Node, Pod, Secret};
use kube::api::{Api, ListParams};
use kube::config::KubeConfigOptions;
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher::{self, Event};
use kube::{Client, Config};
use sha2::{Digest, Sha256};
use skyloom_api::CloudPool;
use tokio::task::JoinHandle;

use crate::capacity::{self, Capacity};
use crate::client_limits::{RequestRate, limited_client};
use crate::identity::{MANAGED_BY, MANAGED_BY_LABEL, MANAGED_SELECTOR, owner_of};
use crate::kubeconfig_guard::{self, GuardPolicy};

/// The default key of the kubeconfig in a pool's Secret.
pub const DEFAULT_SECRET_KEY: &str = "kubeconfig";

/// How a member is doing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// Not probed yet.
    Unknown,
    /// Answered the last probe.
    Ready,
    /// Did not answer (timeout, refused, TLS failure, 5xx).
    Unreachable(String),
    /// Answered 401 or 403: the credential is wrong, expired or lacks rights.
    Unauthorized(String),
    /// The Secret or its key is missing.
    SecretNotFound(String),
    /// The kubeconfig was refused before any client was built: unparsable or incomplete.
    KubeconfigRejected(String),
    /// The kubeconfig was refused before any client was built because it asks for
    /// something the guard forbids: an exec or auth-provider plugin, a local file, an
    /// insecure or link-local server, a proxy.
    InsecureKubeconfig(String),
}

impl Health {
    /// The condition reason for this health.
    pub fn reason(&self) -> &'static str {
        match self {
            Health::Unknown => "Probing",
            Health::Ready => "Reachable",
            Health::Unreachable(_) => "Unreachable",
            Health::Unauthorized(_) => "Unauthorized",
            Health::SecretNotFound(_) => "SecretNotFound",
            Health::KubeconfigRejected(_) => skyloom_api::cloudpool::reason::KUBECONFIG_REJECTED,
            Health::InsecureKubeconfig(_) => skyloom_api::cloudpool::reason::INSECURE_KUBECONFIG,
        }
    }

    /// A human message without any credential.
    pub fn message(&self) -> String {
        match self {
            Health::Unknown => "waiting for the first probe".into(),
            Health::Ready => "the member's API server answers".into(),
            Health::Unreachable(m)
            | Health::Unauthorized(m)
            | Health::SecretNotFound(m)
            | Health::KubeconfigRejected(m)
            | Health::InsecureKubeconfig(m) => m.clone(),
        }
    }
}

/// What the registry knows about one member right now.
#[derive(Debug, Clone)]
pub struct MemberView {
    /// The CloudPool's name.
    pub pool: String,
    /// Health from the last probe.
    pub health: Health,
    /// Since when the member has not been Ready (None while Ready).
    pub not_ready_since: Option<Instant>,
    /// Kubernetes version reported by the member.
    pub version: Option<String>,
    /// Capacity from the last successful discovery (None until the first), kept while the
    /// member cannot be probed and when its credentials change.
    pub capacity: Option<Capacity>,
    /// Wall-clock time of the last probe.
    pub last_probe: Option<SystemTime>,
    /// Whether the Deployment watch has listed everything since it (re)started.
    pub synced: bool,
    /// When the member credential expires, if it is a token that says so.
    pub credentials_expiry: Option<SystemTime>,
}

impl MemberView {
    /// A fresh view of `pool`, not Ready. A view that replaces `previous` (the Secret changed
    /// or went) keeps when the member stopped being Ready and what capacity it last had: the
    /// member is unknown, not empty, so its running replicas still fit where they are.
    fn new(pool: &str, previous: Option<&MemberView>) -> Self {
        let since = previous.and_then(|v| v.not_ready_since);
        Self {
            pool: pool.to_owned(),
            health: Health::Unknown,
            not_ready_since: Some(since.unwrap_or_else(Instant::now)),
            version: None,
            capacity: previous.and_then(|v| v.capacity.clone()),
            last_probe: None,
            synced: false,
            credentials_expiry: None,
        }
    }

    /// Whether Skyloom may act on this member now: it answers and its Deployments have been
    /// observed since the connection (re)started.
    pub fn observable(&self) -> bool {
        self.health == Health::Ready && self.synced
    }

    /// Whether the member is known since the connection (re)started: its Deployments have been
    /// listed and its first probe has an answer, so its health and capacity are facts, not
    /// defaults.
    pub fn known(&self) -> bool {
        self.synced && self.health != Health::Unknown
    }
}

/// Something changed that others must react to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberEvent {
    /// A member's health, capacity or sync state changed.
    Member(String),
    /// An owned Deployment of this AIService (namespace, name) changed in some member.
    Service(String, String),
}

/// Callback for [`MemberEvent`]s.
pub type Notify = Arc<dyn Fn(MemberEvent) + Send + Sync>;

struct Entry {
    fingerprint: Option<[u8; 32]>,
    client: Option<Client>,
    view: Arc<RwLock<MemberView>>,
    deployments: Option<Store<Deployment>>,
    /// What the previous entry had observed, used until this entry's watch has listed: a new
    /// credential must not make a member look empty.
    inherited: Vec<Arc<Deployment>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Entry {
    /// The owned Deployments as last observed: the watch's store once it has listed, the
    /// previous entry's knowledge before that.
    fn observed(&self) -> Vec<Arc<Deployment>> {
        match &self.deployments {
            Some(store) if read(&self.view).synced => store.state(),
            _ => self.inherited.clone(),
        }
    }
}

impl Drop for Entry {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Settings of the registry.
#[derive(Debug, Clone)]
pub struct RegistrySettings {
    /// The operator's namespace (where kubeconfig Secrets live).
    pub namespace: String,
    /// Probe period.
    pub probe_interval: Duration,
    /// Timeout of each member request.
    pub member_timeout: Duration,
    /// Request limit of each member client.
    pub request_rate: RequestRate,
    /// What the kubeconfig guard allows.
    pub policy: GuardPolicy,
    /// This control plane's id (to recognise owned objects).
    pub control_plane: String,
    /// This replica's identity, named in the user-agent of every member request.
    pub identity: String,
}

/// All members, keyed by CloudPool name.
pub struct Registry {
    settings: RegistrySettings,
    notify: Notify,
    metrics: Arc<crate::metrics::Metrics>,
    entries: RwLock<BTreeMap<String, Entry>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("settings", &self.settings)
            .finish()
    }
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|p| p.into_inner())
}

impl Registry {
    /// An empty registry.
    pub fn new(
        settings: RegistrySettings,
        notify: Notify,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Self {
        Self {
            settings,
            notify,
            metrics,
            entries: RwLock::new(BTreeMap::new()),
        }
    }

    /// Brings the entries in line with the pools and Secrets: new pools get an entry, pools
    /// whose Secret content changed get a new client, removed pools are dropped.
    pub fn sync(&self, pools: &[Arc<CloudPool>], secrets: &Store<Secret>) {
        let mut entries = write(&self.entries);
        let wanted: BTreeMap<String, &CloudPool> = pools
            .iter()
            .filter_map(|p| Some((p.metadata.name.clone()?, p.as_ref())))
            .collect();
        let gone: Vec<String> = entries
            .keys()
            .filter(|k| !wanted.contains_key(*k))
            .cloned()
            .collect();
        for name in gone {
            entries.remove(&name);
            (self.notify)(MemberEvent::Member(name));
        }
        for (name, pool) in wanted {
            let key = pool
                .spec
                .kubeconfig_secret_ref
                .key
                .clone()
                .unwrap_or_else(|| DEFAULT_SECRET_KEY.to_owned());
            let secret_name = pool.spec.kubeconfig_secret_ref.name.clone();
            let secret = secrets
                .get(&reflector::ObjectRef::new(&secret_name).within(&self.settings.namespace));
            let bytes = secret
                .as_ref()
                .and_then(|s| s.data.as_ref())
                .and_then(|d| d.get(&key))
                .map(|b| b.0.clone());
            let fingerprint = bytes.as_ref().map(|b| {
                let mut h = Sha256::new();
                h.update(b);
                let out: [u8; 32] = h.finalize().into();
                out
            });
            // Same credential content: keep the client and its watches.
            if entries
                .get(&name)
                .is_some_and(|e| e.fingerprint == fingerprint)
            {
                continue;
            }
            let previous = entries.get(&name).map(|e| read(&e.view).clone());
            let inherited = entries.get(&name).map(Entry::observed).unwrap_or_default();
            let entry = match bytes {
                None => {
                    let view = MemberView {
                        health: Health::SecretNotFound(format!(
                            "Secret {}/{secret_name} or its key '{key}' not found",
                            self.settings.namespace
                        )),
                        ..MemberView::new(&name, previous.as_ref())
                    };
                    Entry {
                        fingerprint: None,
                        client: None,
                        view: Arc::new(RwLock::new(view)),
                        deployments: None,
                        inherited,
                        tasks: Vec::new(),
                    }
                }
                Some(bytes) => {
                    self.start_entry(&name, &bytes, fingerprint, previous.as_ref(), inherited)
                }
            };
            entries.insert(name.clone(), entry);
            (self.notify)(MemberEvent::Member(name));
        }
    }

    fn start_entry(
        &self,
        name: &str,
        bytes: &[u8],
        fingerprint: Option<[u8; 32]>,
        previous: Option<&MemberView>,
        inherited: Vec<Arc<Deployment>>,
    ) -> Entry {
        let rejected = |health: Health| {
            let view = MemberView {
                health,
                ..MemberView::new(name, previous)
            };
            Entry {
                fingerprint,
                client: None,
                view: Arc::new(RwLock::new(view)),
                deployments: None,
                inherited: inherited.clone(),
                tasks: Vec::new(),
            }
        };
        let Ok(text) = std::str::from_utf8(bytes) else {
            return rejected(Health::KubeconfigRejected(
                "the kubeconfig is not UTF-8 text".into(),
            ));
        };
        let kubeconfig = match kubeconfig_guard::check(text, self.settings.policy) {
            Ok(kc) => kc,
            Err(e @ kubeconfig_guard::KubeconfigRejected::Forbidden { .. }) => {
                return rejected(Health::InsecureKubeconfig(e.to_string()));
            }
            Err(e) => return rejected(Health::KubeconfigRejected(e.to_string())),
        };
        let credentials_expiry = crate::credentials::token_expiry(&kubeconfig);
        let client = match client_from(
            kubeconfig,
            self.settings.member_timeout,
            &self.settings.identity,
            self.settings.request_rate,
        ) {
            Ok(c) => c,
            Err(why) => return rejected(Health::KubeconfigRejected(why)),
        };
        let view = Arc::new(RwLock::new(MemberView {
            credentials_expiry,
            ..MemberView::new(name, previous)
        }));
        let (store, writer) = reflector::store();
        let tasks = vec![
            tokio::spawn(probe_loop(
                name.to_owned(),
                client.clone(),
                view.clone(),
                self.settings.probe_interval,
                self.notify.clone(),
                self.metrics.clone(),
            )),
            tokio::spawn(watch_deployments(
                name.to_owned(),
                client.clone(),
                writer,
                view.clone(),
                self.settings.control_plane.clone(),
                self.notify.clone(),
            )),
        ];
        Entry {
            fingerprint,
            client: Some(client),
            view,
            deployments: Some(store),
            inherited,
            tasks,
        }
    }

    /// Every member's current view, by pool name.
    pub fn views(&self) -> BTreeMap<String, MemberView> {
        read(&self.entries)
            .iter()
            .map(|(k, e)| (k.clone(), read(&e.view).clone()))
            .collect()
    }

    /// One member's view.
    pub fn view(&self, pool: &str) -> Option<MemberView> {
        read(&self.entries).get(pool).map(|e| read(&e.view).clone())
    }

    /// The client of a member (None when its kubeconfig is missing or refused).
    pub fn client(&self, pool: &str) -> Option<Client> {
        read(&self.entries).get(pool).and_then(|e| e.client.clone())
    }

    /// The owned Deployments last observed in `pool` for the AIService `namespace/name`.
    pub fn deployments_of(&self, pool: &str, namespace: &str, name: &str) -> Vec<Arc<Deployment>> {
        let entries = read(&self.entries);
        let Some(entry) = entries.get(pool) else {
            return Vec::new();
        };
        entry
            .observed()
            .into_iter()
            // The member Deployment has the AIService's namespace and name; compare those
            // first, the ownership marks (a hash) only for the match.
            .filter(|d| {
                d.metadata.name.as_deref() == Some(name)
                    && d.metadata.namespace.as_deref() == Some(namespace)
            })
            .filter(|d| {
                owner_of(&d.metadata, &self.settings.control_plane)
                    .is_some_and(|(ns, n)| ns == namespace && n == name)
            })
            .collect()
    }

    /// Every owned Deployment last observed, per pool.
    pub fn all_deployments(&self) -> BTreeMap<String, Vec<Arc<Deployment>>> {
        read(&self.entries)
            .iter()
            .map(|(k, e)| (k.clone(), e.observed()))
            .collect()
    }

    /// This control plane's id.
    pub fn control_plane(&self) -> &str {
        &self.settings.control_plane
    }
}

fn client_from(
    kubeconfig: kube::config::Kubeconfig,
    timeout: Duration,
    identity: &str,
    rate: RequestRate,
) -> Result<Client, String> {
    // The guard has refused exec and auth-provider plugins, so nothing runs here.
    let options = KubeConfigOptions::default();
    let mut config = futures::executor::block_on(Config::from_custom_kubeconfig(
        kubeconfig, &options,
    ))
    .map_err(|e| {
        format!(
            "the kubeconfig cannot be used: {}",
            describe_config_error(&e)
        )
    })?;
    config.connect_timeout = Some(timeout);
    config.read_timeout = Some(Duration::from_secs(295));
    config.write_timeout = Some(timeout);
    config.headers.push(crate::leader::user_agent(identity));
    limited_client(config, rate).map_err(|e| format!("no client could be built: {}", kind_of(&e)))
}

/// A description of a kubeconfig loading error that cannot carry credential material.
fn describe_config_error(e: &kube::config::KubeconfigError) -> &'static str {
    use kube::config::KubeconfigError as K;
    match e {
        K::CurrentContextNotSet => "no current-context",
        K::LoadContext(_) => "the current context does not exist",
        K::LoadClusterOfContext(_) => "the context's cluster does not exist",
        K::ParseClusterUrl(_) => "the cluster server is not a URL",
        K::ParseCertificates(_) => "certificate data is not valid PEM",
        K::LoadCertificateAuthority(_) | K::LoadClientCertificate(_) | K::LoadClientKey(_) => {
            "certificate or key data cannot be decoded"
        }
        K::MissingClusterUrl => "the cluster has no server",
        _ => "invalid kubeconfig",
    }
}

fn kind_of(e: &kube::Error) -> &'static str {
    match e {
        kube::Error::Api(_) => "API error",
        kube::Error::HyperError(_) | kube::Error::Service(_) => "connection failed",
        kube::Error::RustlsTls(_) => "TLS configuration failed",
        _ => "client error",
    }
}

/// Classifies a failed member call.
fn classify(e: &kube::Error) -> Health {
    match e {
        kube::Error::Api(s) if s.code == 401 || s.code == 403 => Health::Unauthorized(format!(
            "the member refused the credential (HTTP {}); rotate the token in the pool's Secret",
            s.code
        )),
        kube::Error::Api(s) => Health::Unreachable(format!("the member answered HTTP {}", s.code)),
        _ => Health::Unreachable(format!(
            "the member's API server does not answer ({})",
            kind_of(e)
        )),
    }
}

/// Capacity is rediscovered at most this often (listing every Pod of a large member on every
/// health probe would cost more than it tells).
const CAPACITY_REFRESH: Duration = Duration::from_secs(30);

/// One probe: the version (health) always, the capacity when `with_capacity`.
async fn probe_once(
    client: &Client,
    with_capacity: bool,
) -> Result<(String, Option<Capacity>), kube::Error> {
    let version = client.apiserver_version().await?;
    if !with_capacity {
        return Ok((version.git_version, None));
    }
    let nodes: Api<Node> = Api::all(client.clone());
    let nodes = nodes.list(&ListParams::default()).await?;
    let pods: Api<Pod> = Api::all(client.clone());
    let pods = pods
        // Only Pods that Skyloom does not manage count against capacity: the API server
        // leaves Skyloom's own out, so the list stays small however much Skyloom runs there.
        .list(
            &ListParams::default()
                .fields("status.phase!=Succeeded,status.phase!=Failed")
                .labels(&format!("{MANAGED_BY_LABEL}!={MANAGED_BY}")),
        )
        .await?;
    Ok((
        version.git_version,
        Some(capacity::compute(&nodes.items, &pods.items)),
    ))
}

async fn probe_loop(
    pool: String,
    client: Client,
    view: Arc<RwLock<MemberView>>,
    interval: Duration,
    notify: Notify,
    metrics: Arc<crate::metrics::Metrics>,
) {
    let mut capacity_at: Option<Instant> = None;
    loop {
        let started = Instant::now();
        // Rediscover capacity periodically, and at once after the member was not Ready.
        let with_capacity = capacity_at.is_none_or(|t| t.elapsed() >= CAPACITY_REFRESH)
            || read(&view).health != Health::Ready;
        let result = tokio::time::timeout(
            interval.max(Duration::from_secs(5)) * 2,
            probe_once(&client, with_capacity),
        )
        .await;
        let changed = {
            let mut v = write(&view);
            let before = (v.health.clone(), v.capacity.clone());
            v.last_probe = Some(SystemTime::now());
            match result {
                Ok(Ok((version, cap))) => {
                    v.health = Health::Ready;
                    v.not_ready_since = None;
                    v.version = Some(version);
                    if let Some(cap) = cap {
                        v.capacity = Some(cap);
                        capacity_at = Some(Instant::now());
                    }
                }
                Ok(Err(e)) => {
                    let health = classify(&e);
                    if v.health != health {
                        tracing::warn!(pool = %pool, reason = health.reason(), "member probe failed: {}", health.message());
                    }
                    v.health = health;
                    v.not_ready_since.get_or_insert_with(Instant::now);
                }
                Err(_) => {
                    v.health = Health::Unreachable(
                        "the member's API server did not answer in time".into(),
                    );
                    v.not_ready_since.get_or_insert_with(Instant::now);
                }
            }
            metrics.observe_probe(&pool, started.elapsed());
            metrics.set_member_ready(&pool, v.health == Health::Ready);
            before != (v.health.clone(), v.capacity.clone())
        };
        if changed {
            (notify)(MemberEvent::Member(pool.clone()));
        }
        tokio::time::sleep(interval).await;
    }
}

async fn watch_deployments(
    pool: String,
    client: Client,
    writer: reflector::store::Writer<Deployment>,
    view: Arc<RwLock<MemberView>>,
    control_plane: String,
    notify: Notify,
) {
    let api: Api<Deployment> = Api::all(client);
    let config = watcher::Config::default().labels(MANAGED_SELECTOR);
    // Until a relist is done the store still holds what was known before it: a relist (after
    // a 410 or a broken watch) wakes only the services whose Deployments changed, came or
    // went meanwhile, not every service in the member.
    let known = writer.as_reader();
    let mut before_relist: BTreeSet<(String, String)> = BTreeSet::new();
    let stream = reflector::reflector(
        writer,
        watcher::watcher(api, config)
            .modify(crate::trim::member_deployment)
            .default_backoff(),
    );
    futures::pin_mut!(stream);
    let mut last_error: Option<Instant> = None;
    while let Some(item) = stream.next().await {
        match item {
            Ok(Event::Init) => {
                write(&view).synced = false;
                before_relist = known
                    .state()
                    .iter()
                    .filter_map(|d| owner_of(&d.metadata, &control_plane))
                    .collect();
            }
            Ok(Event::InitApply(d)) => {
                if let Some(owner) = owner_of(&d.metadata, &control_plane) {
                    let unchanged = known.get(&ObjectRef::from_obj(&d)).is_some_and(|old| {
                        old.metadata.resource_version.is_some()
                            && old.metadata.resource_version == d.metadata.resource_version
                    });
                    before_relist.remove(&owner);
                    if !unchanged {
                        (notify)(MemberEvent::Service(owner.0, owner.1));
                    }
                }
            }
            Ok(Event::InitDone) => {
                write(&view).synced = true;
                last_error = None;
                for (ns, name) in std::mem::take(&mut before_relist) {
                    (notify)(MemberEvent::Service(ns, name));
                }
                (notify)(MemberEvent::Member(pool.clone()));
            }
            Ok(Event::Apply(d) | Event::Delete(d)) => {
                if let Some((ns, name)) = owner_of(&d.metadata, &control_plane) {
                    (notify)(MemberEvent::Service(ns, name));
                }
            }
            Err(e) => {
                // The watcher relists with backoff by itself; log at most once a minute.
                if last_error.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
                    tracing::info!(pool = %pool, "deployment watch interrupted, will relist: {}", watch_error_kind(&e));
                    last_error = Some(Instant::now());
                }
            }
        }
    }
}

fn watch_error_kind(e: &watcher::Error) -> &'static str {
    match e {
        watcher::Error::InitialListFailed(_) => "initial list failed",
        watcher::Error::WatchStartFailed(_) => "watch start failed",
        watcher::Error::WatchError(_) => "watch error (e.g. 410 Gone)",
        watcher::Error::WatchFailed(_) => "watch failed",
        _ => "watch error",
    }
}

#[cfg(test)]
#[path = "members_watch_tests.rs"]
mod watch_tests;
