//! `skyloom run`: start-up, leadership, the HTTP endpoints and shutdown.

use std::future::Future;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::Api;
use kube::{Client, Config};
use tokio::task::JoinHandle;

use crate::config::{LogFormat, RunArgs};
use crate::controller::{self, Context, Settings};
use crate::kubeconfig_guard::GuardPolicy;
use crate::members::{Registry, RegistrySettings};
use crate::metrics::Metrics;

/// Runs the operator until SIGTERM or Ctrl-C.
pub fn main(mut args: RunArgs) -> ExitCode {
    init_logging(&args);
    // Fixed once, so the hub client, the member clients and the Lease name the same replica.
    args.identity = Some(crate::leader::identity(args.identity.as_deref()));
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let hub = hub_client(&args).await?;
        run(args, hub, shutdown_signal()).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("skyloom run failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(args: &RunArgs) {
    let filter = tracing_subscriber::EnvFilter::try_new(&args.log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match args.log_format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

async fn hub_client(args: &RunArgs) -> anyhow::Result<Client> {
    let mut config = match &args.kubeconfig {
        Some(path) => {
            // kube's error already names the file and the OS error; no context chain.
            let kc = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| anyhow::anyhow!("reading the hub kubeconfig: {e}"))?;
            Config::from_custom_kubeconfig(kc, &Default::default())
                .await
                .context("loading hub kubeconfig")?
        }
        None => Config::infer()
            .await
            .context("finding the hub (in-cluster or KUBECONFIG)")?,
    };
    config.headers.push(crate::leader::user_agent(
        args.identity.as_deref().unwrap_or("skyloom"),
    ));
    crate::client_limits::limited_client(config, args.request_rate())
        .context("building the hub client")
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

/// This control plane's id: the flag, or the UID of the hub's `kube-system` namespace.
async fn control_plane_id(args: &RunArgs, hub: &Client) -> anyhow::Result<String> {
    if let Some(id) = &args.control_plane_id {
        return Ok(id.clone());
    }
    let ns = Api::<Namespace>::all(hub.clone())
        .get("kube-system")
        .await
        .context("reading the hub's kube-system namespace for the control-plane id (or set --control-plane-id)")?;
    ns.metadata.uid.context("kube-system has no UID")
}

/// Runs the operator against `hub` until `shutdown` completes.
pub async fn run(
    args: RunArgs,
    hub: Client,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let control_plane = control_plane_id(&args, &hub).await?;
    let identity = crate::leader::identity(args.identity.as_deref());
    let metrics = Arc::new(Metrics::default());
    let ready = Arc::new(AtomicBool::new(false));
    let http = start_http(&args, metrics.clone(), ready.clone()).await?;

    // Late-bound context: member and hub events arrive before the context exists.
    let ctx_cell: Arc<std::sync::OnceLock<Arc<Context>>> = Arc::default();
    let notify_cell = ctx_cell.clone();
    let registry = Arc::new(Registry::new(
        RegistrySettings {
            namespace: args.namespace.clone(),
            probe_interval: args.probe_interval(),
            member_timeout: args.member_timeout(),
            request_rate: args.request_rate(),
            policy: GuardPolicy {
                allow_exec: args.allow_exec_credentials,
                allow_insecure: args.allow_insecure_members,
            },
            control_plane: control_plane.clone(),
            identity: identity.clone(),
        },
        Arc::new(move |event| {
            if let Some(ctx) = notify_cell.get() {
                ctx.on_member_event(event);
            }
        }),
        metrics.clone(),
    ));
    let svc_cell = ctx_cell.clone();
    let pool_cell = ctx_cell.clone();
    let (stores, mut tasks) = controller::start_reflectors(
        &hub,
        &args.namespace,
        Arc::new(move |key, generation_changed| {
            if let Some(ctx) = svc_cell.get() {
                ctx.queue.push(key);
                if generation_changed {
                    ctx.schedule.notify_one();
                }
            }
        }),
        Arc::new(move |generation_changed| {
            if let Some(ctx) = pool_cell.get() {
                ctx.registry.sync(&ctx.pools.state(), &ctx.secrets);
                if generation_changed {
                    ctx.schedule.notify_one();
                }
            }
        }),
    );
    let ctx = Arc::new(Context::new(
        hub.clone(),
        Settings {
            namespace: args.namespace.clone(),
            debounce: Duration::from_millis(args.debounce_millis),
            reoptimize: (args.reoptimize_interval_seconds > 0)
                .then(|| Duration::from_secs(args.reoptimize_interval_seconds)),
            solver_time_limit: Duration::from_millis(args.solver_time_limit_millis.max(10)),
            orphan_grace: Duration::from_secs(args.orphan_grace_period_seconds),
            probe_interval: args.probe_interval(),
            workers: args.workers.clamp(1, 256),
            scaling_conflict_window: Duration::from_secs(args.scaling_conflict_window_seconds),
        },
        registry.clone(),
        stores,
        metrics.clone(),
    ));
    let _ = ctx_cell.set(ctx.clone());
    for (what, ready) in [
        ("AIServices", ctx.services.wait_until_ready().await),
        ("CloudPools", ctx.pools.wait_until_ready().await),
        ("Secrets", ctx.secrets.wait_until_ready().await),
    ] {
        ready.map_err(|e| anyhow::anyhow!("the {what} watch ended before its first list: {e}"))?;
    }
    registry.sync(&ctx.pools.state(), &ctx.secrets);
    ready.store(true, Ordering::SeqCst);
    tracing::info!(control_plane = %control_plane, namespace = %args.namespace, identity = %identity, "skyloom started");

    let lead = crate::leader::leadership(&args, &hub, &identity).await?;
    tokio::pin!(shutdown);
    let mut leading: Vec<JoinHandle<()>> = Vec::new();
    let mut lead = lead;
    loop {
        let is_leader = *lead.borrow();
        if is_leader && leading.is_empty() {
            tracing::info!("leading: starting the scheduler and workers");
            leading.push(tokio::spawn(controller::scheduler(ctx.clone())));
            for _ in 0..ctx.settings.workers {
                leading.push(tokio::spawn(controller::worker(ctx.clone())));
            }
            leading.push(tokio::spawn(controller::pool_status_loop(ctx.clone())));
            ctx.schedule.notify_one();
            for ais in ctx.services.state() {
                ctx.queue.push((
                    ais.metadata.namespace.clone().unwrap_or_default(),
                    ais.metadata.name.clone().unwrap_or_default(),
                ));
            }
        } else if !is_leader && !leading.is_empty() {
            tracing::warn!("leadership lost: stopping every writer");
            for t in leading.drain(..) {
                t.abort();
            }
        }
        tokio::select! {
            _ = &mut shutdown => break,
            changed = lead.changed() => {
                if changed.is_err() {
                    tracing::error!("the leader election task ended; stopping");
                    break;
                }
            }
        }
    }
    for t in leading.drain(..).chain(tasks.drain(..)) {
        t.abort();
    }
    http.abort();
    tracing::info!("skyloom stopped");
    Ok(())
}

async fn start_http(
    args: &RunArgs,
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
) -> anyhow::Result<JoinHandle<()>> {
    let app = Router::new()
        .route(
            "/metrics",
            get(move || {
                let m = metrics.clone();
                async move { m.encode() }
            }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                let r = ready.clone();
                async move {
                    if r.load(Ordering::SeqCst) {
                        (StatusCode::OK, "ok")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "starting")
                    }
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind(args.http_addr)
        .await
        .with_context(|| format!("binding the HTTP endpoint {}", args.http_addr))?;
    Ok(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!("HTTP endpoint failed: {e}");
        }
    }))
}
