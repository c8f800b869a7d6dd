//! A whole testbed: one etcd, a hub and member clusters, torn down on drop.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::future::try_join_all;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::binaries::Binaries;
use crate::error::{NotReady, TestbedError, io_err};
use crate::member::{Member, READY_TIMEOUT, Role, StartContext};
use crate::process::{ManagedProcess, ProcessGroup};
use crate::spec::{MemberSpec, TestbedSpec};

/// A running testbed. Dropping it kills every process and removes its files; if the drop
/// happens while a thread panics (a failed test) or after [`Testbed::mark_failed`], the logs
/// are kept under `target/testbed-logs/`.
pub struct Testbed {
    spec: TestbedSpec,
    dir: PathBuf,
    keep_logs_dir: PathBuf,
    binaries: Binaries,
    group: Arc<ProcessGroup>,
    etcd: ManagedProcess,
    hub: Option<Member>,
    members: Vec<Member>,
    proxy_runtime: Option<tokio::runtime::Runtime>,
}

impl std::fmt::Debug for Testbed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Testbed")
            .field("name", &self.spec.name)
            .field("dir", &self.dir)
            .field("hub", &self.hub)
            .field("members", &self.members)
            .finish()
    }
}

/// Where kept logs go: `$SKYLOOM_TESTBED_LOGS`, else `<target dir>/testbed-logs`.
pub fn logs_root() -> PathBuf {
    if let Some(d) = std::env::var_os("SKYLOOM_TESTBED_LOGS") {
        return PathBuf::from(d);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    target.join("testbed-logs")
}

impl Testbed {
    /// Starts the testbed described by `spec` and waits until every cluster is ready: the
    /// apiservers answer `/readyz`, the fake Nodes are Ready and the default ServiceAccount
    /// exists. Binaries come from [`Binaries::locate`].
    pub async fn start(spec: TestbedSpec) -> Result<Self, TestbedError> {
        spec.validate()?;
        let binaries = Binaries::locate()?;
        let dir = tempfile::Builder::new()
            .prefix(&format!("skyloom-testbed-{}-", spec.name))
            .tempdir()
            .map_err(io_err("creating the testbed's work directory"))?
            .keep();
        let stamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let keep_logs_dir =
            logs_root().join(format!("{}-{stamp}-{}", spec.name, std::process::id()));
        let group = Arc::new(ProcessGroup::new(&dir, &keep_logs_dir)?);
        let proxy_runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("testbed-proxy")
            .enable_all()
            .build()
            .map_err(io_err("starting the fault proxies' runtime"))?;

        let started = Self::start_clusters(&spec, &binaries, &group, &dir, &proxy_runtime).await;
        match started {
            Ok((etcd, hub, members)) => Ok(Self {
                spec,
                dir,
                keep_logs_dir,
                binaries,
                group,
                etcd,
                hub,
                members,
                proxy_runtime: Some(proxy_runtime),
            }),
            Err(e) => {
                group.mark_failed();
                group.finish();
                proxy_runtime.shutdown_background();
                Err(e)
            }
        }
    }

    async fn start_clusters(
        spec: &TestbedSpec,
        binaries: &Binaries,
        group: &Arc<ProcessGroup>,
        dir: &Path,
        proxy_runtime: &tokio::runtime::Runtime,
    ) -> Result<(ManagedProcess, Option<Member>, Vec<Member>), TestbedError> {
        let (etcd, etcd_url) = start_etcd(binaries, group, dir).await?;
        let ctx = StartContext {
            binaries,
            group: group.clone(),
            etcd_url,
            dir: dir.to_owned(),
            proxy_runtime: proxy_runtime.handle().clone(),
        };
        let hub_spec = MemberSpec {
            name: "hub".into(),
            region: None,
            zone: None,
            nodes: Vec::new(),
        };
        let hub = async {
            if spec.hub {
                Member::start(&ctx, Role::Hub, hub_spec).await.map(Some)
            } else {
                Ok(None)
            }
        };
        let members = try_join_all(
            spec.members
                .iter()
                .map(|m| Member::start(&ctx, Role::Member, m.clone())),
        );
        let (hub, members) = futures::try_join!(hub, members)?;
        Ok((etcd, hub, members))
    }

    /// The spec the testbed was started from.
    pub fn spec(&self) -> &TestbedSpec {
        &self.spec
    }

    /// The hub, or the first member when the testbed was started without a hub.
    pub fn hub(&self) -> &Member {
        match &self.hub {
            Some(h) => h,
            // `validate` guarantees a hub or at least one member.
            None => &self.members[0],
        }
    }

    /// The workload members (not the hub), in spec order.
    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// A cluster by name (`hub` for the hub).
    pub fn member(&self, name: &str) -> Result<&Member, TestbedError> {
        self.all().find(|m| m.name() == name).ok_or_else(|| {
            let known: Vec<&str> = self.all().map(Member::name).collect();
            TestbedError::UnknownMember(name.to_owned(), known.join(", "))
        })
    }

    /// The hub (if any) followed by the members.
    pub fn all(&self) -> impl Iterator<Item = &Member> {
        self.hub.iter().chain(self.members.iter())
    }

    /// The binaries the testbed runs (kubectl and helm included, for tests).
    pub fn binaries(&self) -> &Binaries {
        &self.binaries
    }

    /// The work directory (kubeconfigs, certificates, etcd data, logs).
    pub fn work_dir(&self) -> &Path {
        &self.dir
    }

    /// Where the logs will be kept if the testbed is marked failed.
    pub fn kept_logs_dir(&self) -> &Path {
        &self.keep_logs_dir
    }

    /// Keeps the logs when the testbed goes away (call from a failing test).
    pub fn mark_failed(&self) {
        self.group.mark_failed();
    }

    /// Process ids of every running process of the testbed.
    pub fn pids(&self) -> Vec<(String, u32)> {
        let mut pids: Vec<(String, u32)> = self
            .etcd
            .pid()
            .map(|p| ("etcd".into(), p))
            .into_iter()
            .collect();
        for m in self.all() {
            pids.extend(m.pids());
        }
        pids
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.group.mark_failed();
        }
        for m in self.members.iter().chain(self.hub.iter()) {
            m.stop();
        }
        self.etcd.kill_and_wait();
        // The janitor copies logs if marked failed, then removes the work directory.
        self.group.finish();
        if let Some(rt) = self.proxy_runtime.take() {
            rt.shutdown_background();
        }
    }
}

async fn start_etcd(
    binaries: &Binaries,
    group: &ProcessGroup,
    dir: &Path,
) -> Result<(ManagedProcess, String), TestbedError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let client_port = free_port()?;
        let peer_port = free_port()?;
        let client_url = format!("http://127.0.0.1:{client_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let etcd = ManagedProcess::start(
            group,
            "etcd".into(),
            &binaries.etcd,
            vec![
                "--name=testbed".into(),
                format!("--data-dir={}", dir.join("etcd").display()),
                format!("--listen-client-urls={client_url}"),
                format!("--advertise-client-urls={client_url}"),
                format!("--listen-peer-urls={peer_url}"),
                format!("--initial-advertise-peer-urls={peer_url}"),
                format!("--initial-cluster=testbed={peer_url}"),
                "--unsafe-no-fsync".into(),
                "--log-level=warn".into(),
                "--quota-backend-bytes=4294967296".into(),
            ],
            dir.join("logs/etcd.log"),
        )?;
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut last = String::new();
        loop {
            if !etcd.is_running() {
                break;
            }
            match etcd_health(client_port).await {
                Ok(true) => return Ok((etcd, client_url)),
                Ok(false) => last = "unhealthy".into(),
                Err(e) => last = e.to_string(),
            }
            if Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let tail = etcd.log_tail(30);
        etcd.kill_and_wait();
        if attempt < 3 && tail.contains("address already in use") {
            continue;
        }
        return Err(TestbedError::NotReady(Box::new(NotReady {
            member: "testbed".into(),
            component: "etcd".into(),
            seconds: READY_TIMEOUT.as_secs(),
            reason: if last.is_empty() {
                "the process exited".into()
            } else {
                last
            },
            log: dir.join("logs/etcd.log"),
            tail,
        })));
    }
}

pub(crate) fn free_port() -> Result<u16, TestbedError> {
    let listener =
        std::net::TcpListener::bind("127.0.0.1:0").map_err(io_err("finding a free port"))?;
    Ok(listener
        .local_addr()
        .map_err(io_err("reading a free port"))?
        .port())
}

/// Asks etcd's `/health` endpoint with a bare HTTP/1.0 request.
async fn etcd_health(port: u16) -> std::io::Result<bool> {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    stream
        .write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .await?;
    let mut body = String::new();
    tokio::time::timeout(Duration::from_secs(2), stream.read_to_string(&mut body))
        .await
        .map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::TimedOut, "etcd /health timed out")
        })??;
    Ok(body.contains("\"health\":\"true\""))
}
