//! Shared fixtures for the end-to-end tests: one testbed per test binary, started on first
//! use and shared by every test in it (the machine has two cores), plus small helpers.

pub mod logs;
pub mod moves;
pub mod operator;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Once;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Namespace;
use kube::Client;
use kube::api::{Api, DeleteParams, PostParams};
use skyloom_testbed::{Member, Testbed, TestbedSpec};
use tokio::sync::OnceCell;

static SHARED: OnceCell<Testbed> = OnceCell::const_new();
static HOOK: Once = Once::new();

/// The test binary's shared testbed (the default spec: a hub and three GPU members), started
/// on first use. Its processes end with the test binary; if any test panics, its logs are kept
/// under `target/testbed-logs/`.
pub async fn shared() -> &'static Testbed {
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if let Some(t) = SHARED.get() {
                t.mark_failed();
            }
            previous(info);
        }));
    });
    SHARED
        .get_or_init(|| async {
            match Testbed::start(TestbedSpec::default_spec()).await {
                Ok(t) => t,
                Err(e) => panic!("the shared testbed did not start: {e}"),
            }
        })
        .await
}

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_owned)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// The testbed's pinned kubectl, with `--kubeconfig` set to `member`'s admin kubeconfig.
pub fn kubectl(member: &Member) -> Command {
    let bin = skyloom_testbed::binaries::bin_dir().join("kubectl");
    let mut cmd = Command::new(bin);
    cmd.arg("--kubeconfig").arg(member.kubeconfig_path());
    cmd
}

/// Runs kubectl against `member` and returns (success, stdout, stderr).
pub fn run_kubectl(member: &Member, args: &[&str]) -> (bool, String, String) {
    match kubectl(member).args(args).output() {
        Ok(out) => (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ),
        Err(e) => (false, String::new(), format!("running kubectl: {e}")),
    }
}

/// Applies `deploy/crds/` to `member` with server-side apply and waits until every CRD is
/// Established.
pub async fn install_crds(member: &Member) -> anyhow::Result<()> {
    let dir = workspace_root().join("deploy/crds");
    let dir = dir.to_string_lossy().into_owned();
    let (ok, _, err) = run_kubectl(
        member,
        &[
            "apply",
            "--server-side",
            "--field-manager=skyloom-e2e",
            "--force-conflicts",
            "-f",
            &dir,
        ],
    );
    anyhow::ensure!(ok, "applying the CRDs failed: {err}");
    let (ok, _, err) = run_kubectl(
        member,
        &[
            "wait",
            "--for=condition=Established",
            "-f",
            &dir,
            "--timeout=60s",
        ],
    );
    anyhow::ensure!(ok, "the CRDs did not become Established: {err}");
    Ok(())
}

/// A namespace created for one test, with a unique name starting with `prefix`.
pub struct TestNamespace {
    /// The namespace's name.
    pub name: String,
    client: Client,
}

impl TestNamespace {
    /// Creates `prefix-<unique suffix>` with `client`.
    pub async fn create(client: &Client, prefix: &str) -> anyhow::Result<Self> {
        let suffix = format!(
            "{:x}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos() ^ (d.as_secs() as u32))
                .unwrap_or(0)
        );
        let name = format!("{prefix}-{suffix}");
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "labels": {"skyloom.io/e2e": "true"}}
        }))?;
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await?;
        Ok(Self {
            name,
            client: client.clone(),
        })
    }

    /// Deletes the namespace (the namespace controller removes what is in it).
    pub async fn delete(self) -> anyhow::Result<()> {
        match Api::<Namespace>::all(self.client.clone())
            .delete(&self.name, &DeleteParams::background())
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

/// Polls `check` every 200 ms until it returns `Some`, or fails after `timeout` with `what`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return Ok(v);
        }
        if Instant::now() > deadline {
            anyhow::bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// (spec.replicas, available) of the Deployment `ns/name` per member that has one, read past
/// the fault proxies (so a cut member still answers).
pub async fn member_replicas(
    tb: &Testbed,
    ns: &str,
    name: &str,
) -> std::collections::BTreeMap<String, (i32, i32)> {
    let mut out = std::collections::BTreeMap::new();
    for m in tb.members() {
        if let Some(v) = member_replica_pair(m, ns, name).await {
            out.insert(m.name().to_owned(), v);
        }
    }
    out
}

/// (spec.replicas, available) of the Deployment `ns/name` in `member`, if it exists.
pub async fn member_replica_pair(member: &Member, ns: &str, name: &str) -> Option<(i32, i32)> {
    let client = member.direct_client().await.ok()?;
    let api: Api<k8s_openapi::api::apps::v1::Deployment> = Api::namespaced(client, ns);
    let d = api.get_opt(name).await.ok()??;
    let available = d
        .status
        .as_ref()
        .and_then(|s| s.available_replicas)
        .unwrap_or(0);
    Some((d.spec.replicas.unwrap_or(0), available))
}

/// Whether the AIService `ns/name` is Ready for its current generation.
pub async fn service_ready(hub: &Client, ns: &str, name: &str) -> bool {
    let api: Api<skyloom_api::AIService> = Api::namespaced(hub.clone(), ns);
    let Ok(ais) = api.get(name).await else {
        return false;
    };
    ais.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
            && s.observed_generation == ais.metadata.generation
    })
}

/// An AIService of `replicas` replicas, each asking for 1 CPU, 4 GiB and one GPU.
pub fn gpu_service(name: &str, replicas: i32) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "skyloom.io/v1alpha1",
        "kind": "AIService",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "template": {"spec": {"containers": [{
                "name": "server",
                "image": "registry.example/llm:1.0",
                "resources": {"requests": {"cpu": "1", "memory": "4Gi", "nvidia.com/gpu": "1"},
                              "limits": {"nvidia.com/gpu": "1"}},
            }]}},
        },
    })
}

/// Deletes the AIService `name`, waits until no member has its Deployment, then deletes the
/// namespace.
pub async fn remove_service(
    tb: &Testbed,
    hub: &Client,
    ns: TestNamespace,
    name: &str,
) -> anyhow::Result<()> {
    Api::<skyloom_api::AIService>::namespaced(hub.clone(), &ns.name)
        .delete(name, &DeleteParams::default())
        .await?;
    eventually(
        Duration::from_secs(30),
        "member Deployments to go",
        || async {
            member_replicas(tb, &ns.name, name)
                .await
                .is_empty()
                .then_some(())
        },
    )
    .await?;
    ns.delete().await
}

/// Whether `conditions` hold `type_` with `status` ("True", "False" or "Unknown").
pub fn has_condition(
    conditions: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
    type_: &str,
    status: &str,
) -> bool {
    conditions
        .iter()
        .any(|c| c.type_ == type_ && c.status == status)
}

/// Sets the GPU price (USD per GPU-hour) of the CloudPool `pool` with a merge patch.
pub async fn set_gpu_price(hub: &Client, pool: &str, price: &str) -> anyhow::Result<()> {
    let patch = serde_json::json!({"spec": {"prices": {"nvidia.com/gpu": price}}});
    Api::<skyloom_api::CloudPool>::all(hub.clone())
        .patch(
            pool,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&patch),
        )
        .await?;
    Ok(())
}
