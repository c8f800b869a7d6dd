//! Running the operator in-process against a testbed, on its own thread and runtime so it
//! outlives any one test's runtime, and registering the testbed's members as CloudPools.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{Api, Patch, PatchParams};
use skyloom::config::RunArgs;
use skyloom_testbed::{Member, Testbed};

/// The operator namespace the tests use.
pub const OPERATOR_NAMESPACE: &str = "skyloom-system";

/// Flags for an in-process operator with short intervals (every other setting at its
/// default, so settings added later need no change here).
#[allow(clippy::expect_used)] // fixed flags: a failure is a bug in this function
pub fn test_args() -> RunArgs {
    use clap::{Args, FromArgMatches};
    let argv = [
        "--namespace",
        OPERATOR_NAMESPACE,
        "--http-addr",
        "127.0.0.1:0",
        "--leader-elect",
        "false",
        "--probe-interval-seconds",
        "1",
        "--member-timeout-seconds",
        "2",
        "--reoptimize-interval-seconds",
        "0",
        "--debounce-millis",
        "100",
        "--orphan-grace-period-seconds",
        "30",
        "--workers",
        "8",
        "--control-plane-id",
        "e2e-control-plane",
        "--log",
        "warn,skyloom=info",
    ];
    let command = RunArgs::augment_args(clap::Command::new("run").no_binary_name(true));
    let matches = command
        .try_get_matches_from(argv)
        .expect("the test flags parse");
    RunArgs::from_arg_matches(&matches).expect("the test flags parse")
}

/// A replica name unique in this test process (`e2e-<pid>-<n>`), so that in-process operators
/// never share a Lease identity and their user-agents tell them apart.
pub fn unique_identity() -> String {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    format!("e2e-{}-{n}", std::process::id())
}

/// An operator running on its own thread; dropping it stops the operator.
pub struct OperatorHandle {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    started: std::time::Instant,
}

impl OperatorHandle {
    /// Starts `skyloom run` logic against the testbed's hub.
    pub fn start(testbed: &Testbed, args: RunArgs) -> Self {
        Self::start_with_hub(testbed.hub().kubeconfig_yaml().to_owned(), args)
    }

    /// Starts `skyloom run` logic against the hub that `kubeconfig` points at (for example an
    /// endpoint of its own from `Member::open_endpoint`). Hub requests carry the replica's
    /// user-agent, as in `skyloom run`; without an identity in `args` the replica gets a unique
    /// one.
    pub fn start_with_hub(kubeconfig: String, mut args: RunArgs) -> Self {
        if args.identity.is_none() {
            args.identity = Some(unique_identity());
        }
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let _ = tracing_subscriber_init(&args.log);
            let Ok(rt) = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                let hub = match hub_client(&kubeconfig, args.identity.as_deref()).await {
                    Ok(c) => c,
                    Err(e) => panic!("hub client: {e}"),
                };
                let shutdown = async move {
                    let _ = stopped.await;
                };
                if let Err(e) = skyloom::run::run(args, hub, shutdown).await {
                    panic!("operator failed: {e:#}");
                }
            });
            rt.shutdown_background();
        });
        Self {
            stop: Some(stop),
            thread: Some(thread),
            started: std::time::Instant::now(),
        }
    }

    /// How long ago this operator was started.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Stops the operator and waits for it (a crash-stop: no cleanup happens).
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for OperatorHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// A hub client like the operator's: the replica's user-agent, 5 s connect, 300 s read.
async fn hub_client(kubeconfig: &str, identity: Option<&str>) -> anyhow::Result<kube::Client> {
    let kc = kube::config::Kubeconfig::from_yaml(kubeconfig)?;
    let mut config = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
    config.connect_timeout = Some(Duration::from_secs(5));
    config.read_timeout = Some(Duration::from_secs(300));
    config.write_timeout = Some(Duration::from_secs(300));
    let identity = skyloom::leader::identity(identity);
    config.headers.push(skyloom::leader::user_agent(&identity));
    Ok(kube::Client::try_from(config)?)
}

fn tracing_subscriber_init(filter: &str) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(filter)?)
        .with_test_writer()
        .try_init()
}

/// Installs the CRDs and the operator namespace on the hub, and for each member a kubeconfig
/// Secret and a CloudPool (`pool` renders the CloudPool YAML from the member's name).
pub async fn register_members(
    testbed: &Testbed,
    pool: impl Fn(&Member) -> serde_json::Value,
) -> anyhow::Result<()> {
    crate::install_crds(testbed.hub()).await?;
    let hub = testbed.hub().client().await?;
    let ssa = PatchParams::apply("skyloom-e2e").force();
    let ns: Namespace = serde_json::from_value(
        serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": OPERATOR_NAMESPACE}}),
    )?;
    Api::<Namespace>::all(hub.clone())
        .patch(OPERATOR_NAMESPACE, &ssa, &Patch::Apply(&ns))
        .await?;
    let secrets: Api<Secret> = Api::namespaced(hub.clone(), OPERATOR_NAMESPACE);
    let pools: Api<skyloom_api::CloudPool> = Api::all(hub.clone());
    for m in testbed.members() {
        let name = format!("{}-kubeconfig", m.name());
        let secret = serde_json::json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": name, "namespace": OPERATOR_NAMESPACE},
            "stringData": {"kubeconfig": m.kubeconfig_yaml()},
        });
        secrets.patch(&name, &ssa, &Patch::Apply(&secret)).await?;
        let doc = pool(m);
        pools.patch(m.name(), &ssa, &Patch::Apply(&doc)).await?;
    }
    Ok(())
}

/// A CloudPool for `member` with the given GPU price (USD per GPU-hour) and no declared
/// capacity (the member's Nodes decide).
pub fn pool_for(member: &Member, gpu_price: &str) -> serde_json::Value {
    let provider = member
        .name()
        .split('-')
        .next()
        .unwrap_or("onprem")
        .to_owned();
    serde_json::json!({
        "apiVersion": "skyloom.io/v1alpha1",
        "kind": "CloudPool",
        "metadata": {"name": member.name(), "labels": {"skyloom.io/provider": provider}},
        "spec": {
            "provider": provider,
            "region": member.spec().region.clone().unwrap_or_else(|| "local".into()),
            "kubeconfigSecretRef": {"name": format!("{}-kubeconfig", member.name())},
            "prices": {"cpu": "0.03", "memory": "0.004", "nvidia.com/gpu": gpu_price},
        }
    })
}

/// Registers the default testbed's members with GPU prices that make the choice obvious:
/// azure-eastus 2.00, gcp-europe-west4 2.50, aws-us-east-1 3.00 USD per GPU-hour.
pub async fn register_priced_members(testbed: &Testbed) -> anyhow::Result<()> {
    register_members(testbed, |m| {
        let price = match m.name() {
            "aws-us-east-1" => "3.00",
            "gcp-europe-west4" => "2.50",
            _ => "2.00",
        };
        pool_for(m, price)
    })
    .await
}
