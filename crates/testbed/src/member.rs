//! One cluster of the testbed: its apiserver behind a fault proxy, its controller-manager,
//! and (for members with nodes) its scheduler, kwok and fake Nodes.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, ServiceAccount};
use kube::api::{Api, ListParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use nix::sys::signal::Signal;
use serde_json::json;
use tokio::runtime::Handle;

use crate::audit::{AuditRequest, AuditWrite};
use crate::binaries::Binaries;
use crate::error::{NotReady, TestbedError, io_err, kube_err};
use crate::kubeconfig;
use crate::pki::MemberPki;
use crate::process::{ManagedProcess, ProcessGroup};
use crate::proxy::{Endpoint, FaultProxy, FaultState};
use crate::spec::MemberSpec;
use crate::testbed::free_port;

/// How long each member may take to become ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(90);

/// The kwok stages every member plays.
const KWOK_STAGES: &str = include_str!("kwok-stages.yaml");

/// Audit policy of every apiserver, at Metadata level (verb, URI with its selectors, object,
/// user-agent, timestamps; never a body): every write, so a test can tell from the member side
/// who wrote what and when; and reads (get, list, watch) only of the kinds whose reads a test
/// checks (Secrets, Pods, Nodes, Namespaces, Deployments and Skyloom's own), so the log stays
/// small: the cluster's own components list and watch these once each and then hold their
/// watches (minutes), and everything else they read (Leases, ReplicaSets, Events, discovery)
/// is not logged.
const AUDIT_POLICY: &str = "apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
- level: Metadata
  verbs: [create, update, patch, delete, deletecollection]
- level: Metadata
  verbs: [get, list, watch]
  resources:
  - group: \"\"
    resources: [secrets, pods, nodes, namespaces]
  - group: apps
    resources: [deployments]
  - group: skyloom.io
    resources: [aiservices, cloudpools]
- level: None
";

/// What a member is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The control plane the operator runs against: apiserver and controller-manager only.
    Hub,
    /// A workload cluster ("a cloud"): adds scheduler, kwok and fake Nodes.
    Member,
}

/// Everything a member needs from its testbed to start.
pub(crate) struct StartContext<'a> {
    pub binaries: &'a Binaries,
    pub group: Arc<ProcessGroup>,
    pub etcd_url: String,
    pub dir: PathBuf,
    pub proxy_runtime: Handle,
}

/// A running cluster of the testbed.
pub struct Member {
    name: String,
    role: Role,
    spec: MemberSpec,
    group: Arc<ProcessGroup>,
    apiserver_addr: SocketAddr,
    proxy: FaultProxy,
    proxy_runtime: Handle,
    audit_log: PathBuf,
    kubeconfig_path: PathBuf,
    kubeconfig_yaml: String,
    direct_kubeconfig_yaml: String,
    apiserver: ManagedProcess,
    components: Vec<ManagedProcess>,
    paused: AtomicBool,
}

impl std::fmt::Debug for Member {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Member")
            .field("name", &self.name)
            .field("role", &self.role)
            .field("apiserver", &self.apiserver_addr)
            .field("proxy", &self.proxy.addr())
            .finish()
    }
}

fn write(path: &Path, contents: &str) -> Result<(), TestbedError> {
    std::fs::write(path, contents).map_err(io_err(format!("writing {}", path.display())))
}

/// Builds a client from kubeconfig text with the given timeouts.
pub async fn client_from_kubeconfig(
    yaml: &str,
    connect_timeout: Duration,
    read_timeout: Duration,
) -> Result<Client, TestbedError> {
    let kc = Kubeconfig::from_yaml(yaml).map_err(|e| TestbedError::Config {
        context: "parsing a testbed kubeconfig".into(),
        message: e.to_string(),
    })?;
    let mut config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .map_err(|e| TestbedError::Config {
            context: "loading a testbed kubeconfig".into(),
            message: e.to_string(),
        })?;
    config.connect_timeout = Some(connect_timeout);
    config.read_timeout = Some(read_timeout);
    config.write_timeout = Some(read_timeout);
    Client::try_from(config).map_err(kube_err("building a client"))
}

impl Member {
    pub(crate) async fn start(
        ctx: &StartContext<'_>,
        role: Role,
        spec: MemberSpec,
    ) -> Result<Self, TestbedError> {
        let name = spec.name.clone();
        let dir = ctx.dir.join("members").join(&name);
        let logs = ctx.dir.join("logs").join(&name);
        for d in [&dir, &logs] {
            std::fs::create_dir_all(d).map_err(io_err(format!("creating {}", d.display())))?;
        }
        let pki = MemberPki::generate(&name)?;
        let file = |n: &str| dir.join(n);
        write(&file("ca.crt"), &pki.ca_cert)?;
        write(&file("apiserver.crt"), &pki.serving_cert)?;
        write(&file("apiserver.key"), &pki.serving_key)?;
        write(&file("sa.key"), &pki.sa_key)?;
        write(&file("sa.pub"), &pki.sa_pub)?;
        write(&file("audit-policy.yaml"), AUDIT_POLICY)?;
        let audit_log = logs.join("audit.log");

        // The apiserver, on a free port; another process may take the port between our probe
        // and the bind, so try a few ports.
        let mut attempt = 0;
        let (apiserver, apiserver_addr, direct_kubeconfig_yaml) = loop {
            attempt += 1;
            let port = free_port()?;
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            let direct = kubeconfig::render(&name, &format!("https://{addr}"), &pki);
            write(&file("kubeconfig-direct"), &direct)?;
            let mut args = apiserver_args(&dir, &ctx.etcd_url, &name, port);
            args.push(format!("--audit-log-path={}", audit_log.display()));
            let proc = ManagedProcess::start(
                &ctx.group,
                format!("{name}/kube-apiserver"),
                &ctx.binaries.kube_apiserver,
                args,
                logs.join("kube-apiserver.log"),
            )?;
            match wait_apiserver_ready(&name, &proc, &direct).await {
                Ok(()) => break (proc, addr, direct),
                Err(e) if attempt < 3 && proc.log_tail(20).contains("address already in use") => {
                    proc.kill_and_wait();
                    tracing::warn!(member = %name, port, "port taken, trying another: {e}");
                }
                Err(e) => {
                    proc.kill_and_wait();
                    return Err(e);
                }
            }
        };

        let proxy = FaultProxy::start(&ctx.proxy_runtime, apiserver_addr)?;
        let kubeconfig_yaml = kubeconfig::render(&name, &format!("https://{}", proxy.addr()), &pki);
        let kubeconfig_path = file("kubeconfig");
        write(&kubeconfig_path, &kubeconfig_yaml)?;

        let mut components = Vec::new();
        components.push(ManagedProcess::start(
            &ctx.group,
            format!("{name}/kube-controller-manager"),
            &ctx.binaries.kube_controller_manager,
            vec![
                format!("--kubeconfig={}", file("kubeconfig-direct").display()),
                "--leader-elect=false".into(),
                format!(
                    "--service-account-private-key-file={}",
                    file("sa.key").display()
                ),
                format!("--root-ca-file={}", file("ca.crt").display()),
                "--use-service-account-credentials=false".into(),
                "--secure-port=0".into(),
                "--controllers=*".into(),
                "--kube-api-qps=100".into(),
                "--kube-api-burst=200".into(),
                "--concurrent-deployment-syncs=10".into(),
                "--concurrent-replicaset-syncs=10".into(),
            ],
            logs.join("kube-controller-manager.log"),
        )?);
        if role == Role::Member {
            components.push(ManagedProcess::start(
                &ctx.group,
                format!("{name}/kube-scheduler"),
                &ctx.binaries.kube_scheduler,
                vec![
                    format!("--kubeconfig={}", file("kubeconfig-direct").display()),
                    "--leader-elect=false".into(),
                    "--secure-port=0".into(),
                    "--kube-api-qps=100".into(),
                    "--kube-api-burst=200".into(),
                ],
                logs.join("kube-scheduler.log"),
            )?);
            write(
                &file("kwok-stages.yaml"),
                &KWOK_STAGES.replace("__TESTBED_MEMBER__", &name),
            )?;
            components.push(ManagedProcess::start(
                &ctx.group,
                format!("{name}/kwok"),
                &ctx.binaries.kwok,
                vec![
                    format!("--kubeconfig={}", file("kubeconfig-direct").display()),
                    format!("--config={}", file("kwok-stages.yaml").display()),
                    "--manage-all-nodes=false".into(),
                    "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake".into(),
                    "--node-lease-duration-seconds=40".into(),
                ],
                logs.join("kwok.log"),
            )?);
        }

        let member = Self {
            name,
            role,
            spec,
            group: ctx.group.clone(),
            apiserver_addr,
            proxy,
            proxy_runtime: ctx.proxy_runtime.clone(),
            audit_log,
            kubeconfig_path,
            kubeconfig_yaml,
            direct_kubeconfig_yaml,
            apiserver,
            components,
            paused: AtomicBool::new(false),
        };
        member.finish_setup().await?;
        Ok(member)
    }

    /// Creates the fake Nodes and waits until they are Ready and the default ServiceAccount
    /// exists (Pods cannot be created before it does).
    async fn finish_setup(&self) -> Result<(), TestbedError> {
        let client = self.direct_client().await?;
        let nodes: Api<Node> = Api::all(client.clone());
        let mut expected = 0usize;
        for group in &self.spec.nodes {
            for i in 0..group.count {
                let node = self.node_object(group, i);
                let node: Node = serde_json::from_value(node).map_err(|e| {
                    TestbedError::Spec(format!("node group {} of {}: {e}", group.name, self.name))
                })?;
                match nodes.create(&PostParams::default(), &node).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(s)) if s.code == 409 => {}
                    Err(e) => return Err(kube_err(format!("creating nodes in {}", self.name))(e)),
                }
                expected += 1;
            }
        }
        let deadline = Instant::now() + READY_TIMEOUT;
        let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), "default");
        loop {
            self.check_alive()?;
            let sa_ready = matches!(sas.get_opt("default").await, Ok(Some(_)));
            let ready_nodes = match nodes.list(&ListParams::default()).await {
                Ok(list) => list.items.iter().filter(|n| node_is_ready(n)).count(),
                Err(_) => 0,
            };
            if sa_ready && ready_nodes >= expected {
                return Ok(());
            }
            if Instant::now() > deadline {
                let (component, proc) = if sa_ready {
                    ("kwok", self.components.last())
                } else {
                    ("kube-controller-manager", self.components.first())
                };
                return Err(TestbedError::NotReady(Box::new(NotReady {
                    member: self.name.clone(),
                    component: component.into(),
                    seconds: READY_TIMEOUT.as_secs(),
                    reason: format!(
                        "default ServiceAccount present: {sa_ready}; Ready nodes {ready_nodes}/{expected}"
                    ),
                    log: proc.map(|p| p.log().to_owned()).unwrap_or_default(),
                    tail: proc.map(|p| p.log_tail(30)).unwrap_or_default(),
                })));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    fn node_object(&self, group: &crate::spec::NodeGroup, index: u32) -> serde_json::Value {
        let node_name = format!("{}-{}", group.name, index);
        let mut labels = serde_json::Map::new();
        labels.insert("kubernetes.io/hostname".into(), json!(node_name));
        labels.insert("kubernetes.io/os".into(), json!("linux"));
        labels.insert("kubernetes.io/arch".into(), json!("amd64"));
        labels.insert("type".into(), json!("kwok"));
        labels.insert("skyloom.io/testbed-member".into(), json!(self.name));
        if let Some(r) = &self.spec.region {
            labels.insert("topology.kubernetes.io/region".into(), json!(r));
        }
        if let Some(z) = &self.spec.zone {
            labels.insert("topology.kubernetes.io/zone".into(), json!(z));
        }
        if let Some(t) = &group.instance_type {
            labels.insert("node.kubernetes.io/instance-type".into(), json!(t));
        }
        for (k, v) in &group.labels {
            labels.insert(k.clone(), json!(v));
        }
        let mut resources = serde_json::Map::new();
        resources.insert("cpu".into(), json!(group.cpu));
        resources.insert("memory".into(), json!(group.memory));
        resources.insert("pods".into(), json!("110"));
        if group.gpu > 0 {
            resources.insert("nvidia.com/gpu".into(), json!(group.gpu.to_string()));
        }
        json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": node_name,
                "labels": labels,
                "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
            },
            "spec": {},
            "status": {"capacity": resources.clone(), "allocatable": resources},
        })
    }

    fn check_alive(&self) -> Result<(), TestbedError> {
        for p in std::iter::once(&self.apiserver).chain(&self.components) {
            if !p.is_running() {
                return Err(TestbedError::NotReady(Box::new(NotReady {
                    member: self.name.clone(),
                    component: p.name.clone(),
                    seconds: 0,
                    reason: "the process exited".into(),
                    log: p.log().to_owned(),
                    tail: p.log_tail(30),
                })));
            }
        }
        Ok(())
    }

    /// The member's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Hub or member.
    pub fn role(&self) -> Role {
        self.role
    }

    /// What the member was started from.
    pub fn spec(&self) -> &MemberSpec {
        &self.spec
    }

    /// Path of the admin kubeconfig that goes through the fault proxy.
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig_path
    }

    /// The admin kubeconfig (through the fault proxy) as text, certificates embedded.
    pub fn kubeconfig_yaml(&self) -> &str {
        &self.kubeconfig_yaml
    }

    /// The URL clients use (the fault proxy).
    pub fn server_url(&self) -> String {
        format!("https://{}", self.proxy.addr())
    }

    /// The apiserver's own address, bypassing the proxy.
    pub fn apiserver_addr(&self) -> SocketAddr {
        self.apiserver_addr
    }

    /// An admin client through the fault proxy (connect timeout 5 s, read timeout 30 s).
    pub async fn client(&self) -> Result<Client, TestbedError> {
        self.client_with_timeouts(Duration::from_secs(5), Duration::from_secs(30))
            .await
    }

    /// An admin client through the fault proxy with the given timeouts.
    pub async fn client_with_timeouts(
        &self,
        connect: Duration,
        read: Duration,
    ) -> Result<Client, TestbedError> {
        client_from_kubeconfig(&self.kubeconfig_yaml, connect, read).await
    }

    /// An admin client that bypasses the fault proxy (for test set-up and inspection while
    /// the member is cut off).
    pub async fn direct_client(&self) -> Result<Client, TestbedError> {
        client_from_kubeconfig(
            &self.direct_kubeconfig_yaml,
            Duration::from_secs(5),
            Duration::from_secs(30),
        )
        .await
    }

    /// Partitions the member from outside callers: open connections through the proxy drop,
    /// new ones hang. Its own components and Pods keep running.
    pub fn cut(&self) {
        self.proxy.cut();
    }

    /// Ends a partition.
    pub fn restore(&self) {
        self.proxy.restore();
    }

    /// A further way in to this apiserver through a fault proxy of its own, so that one
    /// client's path can be cut while everyone else's stays open. The endpoint lives until
    /// it is dropped.
    pub fn open_endpoint(&self) -> Result<Endpoint, TestbedError> {
        let proxy = FaultProxy::start(&self.proxy_runtime, self.apiserver_addr)?;
        let kubeconfig_yaml = self
            .kubeconfig_yaml
            .replace(&self.server_url(), &format!("https://{}", proxy.addr()));
        Ok(Endpoint {
            proxy,
            kubeconfig_yaml,
        })
    }

    /// Path of the apiserver's audit log: one JSON line per audited request (a watch has two:
    /// when it starts and when it ends).
    pub fn audit_log_path(&self) -> &Path {
        &self.audit_log
    }

    /// Every write request the apiserver has completed so far, oldest first.
    pub fn audit_writes(&self) -> Result<Vec<AuditWrite>, TestbedError> {
        let mut requests = self.audit_requests()?;
        requests.retain(AuditRequest::is_write);
        Ok(requests)
    }

    /// Every request the apiserver has audited so far, oldest first, each once: every write,
    /// and the reads (get, list, watch) of the kinds the audit policy names.
    pub fn audit_requests(&self) -> Result<Vec<AuditRequest>, TestbedError> {
        let text = match std::fs::read_to_string(&self.audit_log) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(io_err(format!("reading {}", self.audit_log.display()))(e)),
        };
        Ok(crate::audit::parse_log(&text))
    }

    /// Adds latency to every chunk through the proxy (zero removes it).
    pub fn set_latency(&self, latency: Duration) {
        self.proxy.set_latency(latency);
    }

    /// The proxy's current fault state.
    pub fn fault_state(&self) -> FaultState {
        self.proxy.state()
    }

    /// Freezes the apiserver (SIGSTOP): connections open but nothing answers.
    pub fn pause(&self) -> Result<(), TestbedError> {
        self.apiserver.signal(Signal::SIGSTOP)?;
        self.paused.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// Whether the apiserver is paused.
    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::SeqCst)
    }

    /// Thaws a paused apiserver (SIGCONT).
    pub fn resume(&self) -> Result<(), TestbedError> {
        self.apiserver.signal(Signal::SIGCONT)?;
        self.paused.store(false, Ordering::SeqCst);
        Ok(())
    }

    /// Kills the apiserver (SIGKILL). Data in etcd stays.
    pub fn kill(&self) {
        self.apiserver.kill_and_wait();
        self.paused.store(false, Ordering::SeqCst);
    }

    /// Starts a killed apiserver again on the same port and waits until it is ready.
    pub async fn restart(&self) -> Result<(), TestbedError> {
        self.apiserver.restart(&self.group)?;
        wait_apiserver_ready(&self.name, &self.apiserver, &self.direct_kubeconfig_yaml).await
    }

    /// Whether the apiserver process is running (a paused one counts as running).
    pub fn apiserver_running(&self) -> bool {
        self.apiserver.is_running()
    }

    /// Process ids of this member's processes, for status output and leak checks.
    pub fn pids(&self) -> Vec<(String, u32)> {
        std::iter::once(&self.apiserver)
            .chain(&self.components)
            .filter_map(|p| p.pid().map(|pid| (p.name.clone(), pid)))
            .collect()
    }

    /// Kills every process of the member and reaps them.
    pub(crate) fn stop(&self) {
        for p in self.components.iter().rev() {
            p.kill_and_wait();
        }
        // A paused apiserver still dies from SIGKILL.
        self.apiserver.kill_and_wait();
    }
}

fn apiserver_args(dir: &Path, etcd_url: &str, name: &str, port: u16) -> Vec<String> {
    let f = |n: &str| dir.join(n).display().to_string();
    vec![
        format!("--etcd-servers={etcd_url}"),
        format!("--etcd-prefix=/skyloom-testbed/{name}"),
        "--bind-address=127.0.0.1".into(),
        "--advertise-address=127.0.0.1".into(),
        format!("--secure-port={port}"),
        format!("--tls-cert-file={}", f("apiserver.crt")),
        format!("--tls-private-key-file={}", f("apiserver.key")),
        format!("--audit-policy-file={}", f("audit-policy.yaml")),
        format!("--client-ca-file={}", f("ca.crt")),
        "--service-cluster-ip-range=10.96.0.0/16".into(),
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
        format!("--service-account-key-file={}", f("sa.pub")),
        format!("--service-account-signing-key-file={}", f("sa.key")),
        "--authorization-mode=RBAC".into(),
        "--endpoint-reconciler-type=none".into(),
        "--enable-priority-and-fairness=false".into(),
        "--profiling=false".into(),
        "--allow-privileged=true".into(),
        "--event-ttl=30m".into(),
    ]
}

/// Waits until `/readyz` answers ok, failing early (with the log's tail) if the process exits.
async fn wait_apiserver_ready(
    name: &str,
    proc: &ManagedProcess,
    direct_kubeconfig: &str,
) -> Result<(), TestbedError> {
    let client = client_from_kubeconfig(
        direct_kubeconfig,
        Duration::from_secs(2),
        Duration::from_secs(5),
    )
    .await?;
    let deadline = Instant::now() + READY_TIMEOUT;
    let mut last;
    loop {
        if !proc.is_running() {
            return Err(TestbedError::NotReady(Box::new(NotReady {
                member: name.into(),
                component: "kube-apiserver".into(),
                seconds: 0,
                reason: "the process exited".into(),
                log: proc.log().to_owned(),
                tail: proc.log_tail(30),
            })));
        }
        let req = http::Request::get("/readyz").body(Vec::new());
        match req {
            Ok(req) => match client.request_text(req).await {
                Ok(body) if body.trim() == "ok" => return Ok(()),
                Ok(body) => last = body,
                Err(e) => last = e.to_string(),
            },
            Err(e) => last = e.to_string(),
        }
        if Instant::now() > deadline {
            return Err(TestbedError::NotReady(Box::new(NotReady {
                member: name.into(),
                component: "kube-apiserver".into(),
                seconds: READY_TIMEOUT.as_secs(),
                reason: last,
                log: proc.log().to_owned(),
                tail: proc.log_tail(30),
            })));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn node_is_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}
