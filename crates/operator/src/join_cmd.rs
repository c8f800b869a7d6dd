//! `skyloom join` and `skyloom unjoin`: register a member cluster with the hub.
//!
//! `join` uses the admin's own kubeconfig for the member (exec plugins such as `aws eks
//! get-token` are fine here: they run on the admin's machine, once) to create a least-privilege
//! ServiceAccount there, and stores a kubeconfig with only that account's token and the
//! member's CA in a Secret in the operator's namespace on the hub, next to the CloudPool.
//! Everything is server-side applied with the field manager `skyloom-join`, so running it again
//! is harmless. The token is never printed.

mod kubeconfig;
mod manifests;

use std::fmt::Debug;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Node, Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use skyloom::kubeconfig_guard::GuardPolicy;
use skyloom_api::CloudPool;

use self::kubeconfig::MemberEndpoint;
use self::manifests::{
    FIELD_MANAGER, MANAGED_BY, MEMBER_NAMESPACE, MemberObjects, PoolRequest, is_ours,
};

/// Arguments of `skyloom join`.
#[derive(Debug, clap::Args)]
pub struct JoinArgs {
    /// Kubeconfig with admin access to the member cluster, used once to create Skyloom's
    /// ServiceAccount there (exec plugins such as `aws eks get-token` are fine here).
    #[arg(long, value_name = "PATH")]
    pub member_kubeconfig: PathBuf,
    /// Context of the member kubeconfig to use (default: its current context).
    #[arg(long, value_name = "NAME")]
    pub member_context: Option<String>,
    /// API server URL the operator should use for the member, when it differs from the one in
    /// the member kubeconfig (e.g. a private endpoint reachable from the hub).
    #[arg(long, value_name = "URL")]
    pub member_server: Option<String>,
    /// Kubeconfig of the hub (default: $KUBECONFIG or ~/.kube/config, else in-cluster).
    #[arg(long, value_name = "PATH")]
    pub hub_kubeconfig: Option<PathBuf>,
    /// Context of the hub kubeconfig to use (default: its current context).
    #[arg(long, value_name = "NAME")]
    pub hub_context: Option<String>,
    /// Name of the CloudPool (a DNS label, e.g. aws-us-east-1).
    #[arg(long, value_name = "POOL")]
    pub name: String,
    /// The operator's namespace on the hub, where the kubeconfig Secret is written.
    #[arg(
        long,
        value_name = "NAMESPACE",
        env = "SKYLOOM_NAMESPACE",
        default_value = "skyloom-system"
    )]
    pub namespace: String,
    /// Cloud provider, e.g. aws, gcp, azure, onprem.
    #[arg(long)]
    pub provider: String,
    /// Region in the provider's naming, e.g. us-east-1.
    #[arg(long)]
    pub region: String,
    /// Zone inside the region.
    #[arg(long)]
    pub zone: Option<String>,
    /// Capacity budget for one resource, e.g. `nvidia.com/gpu=8` (repeatable).
    #[arg(long = "capacity", value_name = "RES=QTY")]
    pub capacity: Vec<String>,
    /// Price in USD per unit-hour for one resource, e.g. `nvidia.com/gpu=2.10` (repeatable).
    #[arg(long = "price", value_name = "RES=USD")]
    pub price: Vec<String>,
    /// Relative performance of this pool for AI work (100 is the baseline).
    #[arg(long, value_name = "SCORE", value_parser = clap::value_parser!(i32).range(1..=10000))]
    pub performance_score: Option<i32>,
    /// Label of the CloudPool, e.g. `tier=gpu` (repeatable).
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub label: Vec<String>,
    /// Use a TokenRequest token that expires after this long (e.g. `720h`, minimum `10m`)
    /// instead of a long-lived ServiceAccount token Secret. Run `join` again to renew it.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub token_duration: Option<Duration>,
    /// How long to wait for the member to issue the token, in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    pub timeout_seconds: u64,
    /// Print every object for the member and the hub as YAML and change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// Arguments of `skyloom unjoin`.
#[derive(Debug, clap::Args)]
pub struct UnjoinArgs {
    /// Name of the CloudPool to remove.
    #[arg(long, value_name = "POOL")]
    pub name: String,
    /// The operator's namespace on the hub.
    #[arg(
        long,
        value_name = "NAMESPACE",
        env = "SKYLOOM_NAMESPACE",
        default_value = "skyloom-system"
    )]
    pub namespace: String,
    /// Kubeconfig of the hub (default: $KUBECONFIG or ~/.kube/config, else in-cluster).
    #[arg(long, value_name = "PATH")]
    pub hub_kubeconfig: Option<PathBuf>,
    /// Context of the hub kubeconfig to use.
    #[arg(long, value_name = "NAME")]
    pub hub_context: Option<String>,
    /// Admin kubeconfig of the member: when given, the ServiceAccount, its token, ClusterRole
    /// and ClusterRoleBinding that `join` created there are removed too.
    #[arg(long, value_name = "PATH")]
    pub member_kubeconfig: Option<PathBuf>,
    /// Context of the member kubeconfig to use.
    #[arg(long, value_name = "NAME")]
    pub member_context: Option<String>,
    /// How long to wait for the CloudPool to disappear (the operator finishes its cleanup
    /// through the Secret first), in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 120)]
    pub timeout_seconds: u64,
}

/// Registers a member.
pub fn join(args: JoinArgs) -> ExitCode {
    block_on("join", join_async(args))
}

/// Unregisters a member.
pub fn unjoin(args: UnjoinArgs) -> ExitCode {
    block_on("unjoin", unjoin_async(args))
}

fn block_on(what: &str, fut: impl Future<Output = anyhow::Result<()>>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("skyloom {what}: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(fut) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("skyloom {what}: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Parses `90s`, `10m`, `720h`, `30d` or plain seconds.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration such as 720h, 30d or 3600s"))?;
    let factor = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => {
            return Err(format!(
                "{text:?}: unknown unit {unit:?} (use s, m, h or d)"
            ));
        }
    };
    let secs = n.saturating_mul(factor);
    if secs < 600 {
        return Err(format!(
            "{text:?} is shorter than 10m, the shortest token Kubernetes issues"
        ));
    }
    Ok(Duration::from_secs(secs))
}

fn progress(line: impl AsRef<str>) {
    eprintln!("{}", line.as_ref());
}

/// Client for the hub: an explicit kubeconfig, else the usual inference.
async fn hub_client(path: Option<&PathBuf>, context: Option<&String>) -> anyhow::Result<Client> {
    let options = KubeConfigOptions {
        context: context.cloned(),
        ..KubeConfigOptions::default()
    };
    let config = match (path, context) {
        (Some(path), _) => {
            let kc = kubeconfig::read(path).context("hub")?;
            Config::from_custom_kubeconfig(kc, &options)
                .await
                .with_context(|| format!("hub: loading kubeconfig {}", path.display()))?
        }
        (None, Some(_)) => Config::from_kubeconfig(&options)
            .await
            .context("hub: loading the kubeconfig from $KUBECONFIG or ~/.kube/config")?,
        (None, None) => Config::infer()
            .await
            .context("hub: no kubeconfig ($KUBECONFIG, ~/.kube/config) and not in a pod")?,
    };
    Client::try_from(config).context("hub: building the client")
}

async fn member_client(kc: &Kubeconfig, context: &str) -> anyhow::Result<Client> {
    let options = KubeConfigOptions {
        context: Some(context.to_owned()),
        ..KubeConfigOptions::default()
    };
    let config = Config::from_custom_kubeconfig(kc.clone(), &options)
        .await
        .with_context(|| format!("member: loading context {context:?}"))?;
    Client::try_from(config).context("member: building the client")
}

/// A hint for the common API errors, so that the message says what to do.
fn hint(e: &kube::Error) -> &'static str {
    match e {
        kube::Error::Api(s) if s.code == 401 => " (the credentials were not accepted)",
        kube::Error::Api(s) if s.code == 403 => {
            " (forbidden: these credentials may not do this; join needs cluster-admin-like rights)"
        }
        _ => "",
    }
}

fn describe<K: Resource<DynamicType = ()>>(obj: &K) -> String {
    match obj.meta().namespace.as_deref() {
        Some(ns) => format!("{} {ns}/{}", K::kind(&()), obj.name_any()),
        None => format!("{} {}", K::kind(&()), obj.name_any()),
    }
}

fn member_ns_api<K>(client: &Client) -> Api<K>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>,
{
    Api::namespaced(client.clone(), MEMBER_NAMESPACE)
}

fn hub_ns_api<K>(client: &Client, request: &PoolRequest) -> Api<K>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>,
{
    Api::namespaced(client.clone(), &request.operator_namespace)
}

/// Server-side applies `obj` as `skyloom-join` (forcing ownership of the fields it sets).
async fn apply<K>(api: &Api<K>, cluster: &str, obj: &K, dry_run: bool) -> anyhow::Result<K>
where
    K: Resource<DynamicType = ()> + Serialize + DeserializeOwned + Clone + Debug,
{
    let mut params = PatchParams::apply(FIELD_MANAGER).force();
    params.dry_run = dry_run;
    api.patch(&obj.name_any(), &params, &Patch::Apply(obj))
        .await
        .map_err(|e| {
            let h = hint(&e);
            anyhow!(e).context(format!("{cluster}: applying {}{h}", describe(obj)))
        })
}

async fn join_async(args: JoinArgs) -> anyhow::Result<()> {
    let request = validate(&args)?;
    let pool = request.pool.clone();
    let member_kc = kubeconfig::read(&args.member_kubeconfig).context("member")?;
    let endpoint = kubeconfig::endpoint(
        &member_kc,
        args.member_context.as_deref(),
        args.member_server.as_deref(),
        &args.member_kubeconfig,
    )?;
    let member = manifests::member_objects(&pool, args.token_duration.is_none());

    if args.dry_run {
        return print_dry_run(&request, &endpoint, &member);
    }

    // Check the hub first (namespace exists, CRD installed, CloudPool valid, permissions), so
    // that a mistake there leaves nothing behind in the member.
    let hub = hub_client(args.hub_kubeconfig.as_ref(), args.hub_context.as_ref()).await?;
    preflight_hub(&hub, &request, &endpoint).await?;

    let member_client = member_client(&member_kc, &endpoint.context).await?;
    let cluster = format!("member {:?}", endpoint.context);
    progress(format!(
        "{cluster} ({}): creating ServiceAccount {MEMBER_NAMESPACE}/{}",
        endpoint.server,
        manifests::member_identity(&pool)
    ));
    let (m, c) = (&member_client, cluster.as_str());
    apply(&Api::all(m.clone()), c, &member.namespace, false).await?;
    apply(&member_ns_api(m), c, &member.service_account, false).await?;
    apply(&Api::all(m.clone()), c, &member.cluster_role, false).await?;
    apply(&Api::all(m.clone()), c, &member.binding, false).await?;

    let timeout = Duration::from_secs(args.timeout_seconds.max(1));
    let (token, secret_ca) = match (&member.token_secret, args.token_duration) {
        (Some(secret), _) => {
            apply(&member_ns_api(&member_client), &cluster, secret, false).await?;
            progress(format!(
                "{cluster}: waiting for the token in Secret {MEMBER_NAMESPACE}/{}",
                secret.name_any()
            ));
            wait_for_token(&member_client, &cluster, &secret.name_any(), timeout).await?
        }
        (None, Some(duration)) => {
            progress(format!(
                "{cluster}: requesting a token valid for {}s",
                duration.as_secs()
            ));
            (
                request_token(&member_client, &cluster, &pool, duration).await?,
                None,
            )
        }
        (None, None) => bail!("internal: neither a token Secret nor a token duration"),
    };

    let ca_data = match (&endpoint.ca_data, secret_ca) {
        (Some(ca), _) => ca.clone(),
        (None, Some(ca)) => kubeconfig::base64(&ca),
        (None, None) => root_ca_from_configmap(&member_client, &cluster).await?,
    };
    verify_member_token(&endpoint, &pool, &ca_data, &token, &cluster).await?;

    let rendered = kubeconfig::render(&pool, &endpoint, &ca_data, &token);
    // Never store what the operator would refuse with its default (strict) policy.
    skyloom::kubeconfig_guard::check(&rendered, GuardPolicy::default()).map_err(|e| {
        anyhow!(
            "the generated kubeconfig for {} would be refused by the operator: {e}",
            endpoint.server
        )
    })?;
    let secret = manifests::hub_secret(&request, &rendered);
    progress(format!(
        "hub: writing Secret {}/{} and CloudPool {pool}",
        request.operator_namespace,
        secret.name_any()
    ));
    apply(&hub_ns_api(&hub, &request), "hub", &secret, false).await?;
    apply(
        &Api::all(hub.clone()),
        "hub",
        &manifests::cloud_pool(&request),
        false,
    )
    .await?;

    println!(
        "Joined {} ({}) as CloudPool {pool}.",
        endpoint.context, endpoint.server
    );
    println!(
        "  member: Namespace {MEMBER_NAMESPACE}, ServiceAccount, ClusterRole and ClusterRoleBinding {}",
        manifests::member_identity(&pool)
    );
    println!(
        "  hub:    Secret {}/{}, CloudPool {pool}",
        request.operator_namespace,
        manifests::kubeconfig_secret_name(&pool)
    );
    println!(
        "Check with: kubectl get cloudpool {pool}   (Ready once the operator has probed the member)"
    );
    Ok(())
}

fn validate(args: &JoinArgs) -> anyhow::Result<PoolRequest> {
    manifests::validate_pool_name(&args.name)?;
    if !manifests::is_dns_label(&args.namespace, 63) {
        bail!(
            "--namespace {:?}: not a valid namespace name",
            args.namespace
        );
    }
    for (flag, value) in [("provider", &args.provider), ("region", &args.region)] {
        if !manifests::is_dns_label(value, 63) {
            bail!("--{flag} {value:?}: must be lower-case letters, digits and '-'");
        }
    }
    if let Some(zone) = &args.zone
        && !manifests::is_dns_label(zone, 63)
    {
        bail!("--zone {zone:?}: must be lower-case letters, digits and '-'");
    }
    Ok(PoolRequest {
        pool: args.name.clone(),
        operator_namespace: args.namespace.clone(),
        provider: args.provider.clone(),
        region: args.region.clone(),
        zone: args.zone.clone(),
        capacity: manifests::parse_capacity(&args.capacity)?,
        prices: manifests::parse_prices(&args.price)?,
        performance_score: args.performance_score,
        labels: manifests::parse_pairs("label", &args.label)?,
    })
}

async fn preflight_hub(
    hub: &Client,
    request: &PoolRequest,
    endpoint: &MemberEndpoint,
) -> anyhow::Result<()> {
    let ns = &request.operator_namespace;
    match Api::<Namespace>::all(hub.clone()).get_opt(ns).await {
        Ok(Some(_)) => {}
        Ok(None) => bail!(
            "hub: namespace {ns:?} does not exist; install the operator first (helm install skyloom charts/skyloom -n {ns} --create-namespace) or pass --namespace"
        ),
        Err(e) => {
            let h = hint(&e);
            return Err(anyhow!(e).context(format!("hub: reading namespace {ns}{h}")));
        }
    }
    let placeholder = kubeconfig::render(&request.pool, endpoint, "Q0E=", "placeholder");
    apply(
        &hub_ns_api(hub, request),
        "hub",
        &manifests::hub_secret(request, &placeholder),
        true,
    )
    .await?;
    let pool = manifests::cloud_pool(request);
    apply(&Api::all(hub.clone()), "hub", &pool, true).await.map_err(|e| {
        let not_found = e
            .chain()
            .any(|c| matches!(c.downcast_ref::<kube::Error>(), Some(kube::Error::Api(s)) if s.code == 404));
        if not_found {
            e.context("hub: the CloudPool CRD (cloudpools.skyloom.io) is not installed; install the chart or kubectl apply -f deploy/crds")
        } else {
            e
        }
    })?;
    Ok(())
}

async fn wait_for_token(
    client: &Client,
    cluster: &str,
    name: &str,
    timeout: Duration,
) -> anyhow::Result<(String, Option<Vec<u8>>)> {
    let api: Api<Secret> = Api::namespaced(client.clone(), MEMBER_NAMESPACE);
    let deadline = Instant::now() + timeout;
    loop {
        let secret = api
            .get(name)
            .await
            .with_context(|| format!("{cluster}: reading Secret {MEMBER_NAMESPACE}/{name}"))?;
        let data = secret.data.unwrap_or_default();
        if let Some(token) = data.get("token").filter(|t| !t.0.is_empty()) {
            let token = String::from_utf8(token.0.clone()).with_context(|| {
                format!("{cluster}: the token in Secret {MEMBER_NAMESPACE}/{name} is not UTF-8")
            })?;
            let ca = data.get("ca.crt").map(|c| c.0.clone());
            return Ok((token, ca));
        }
        if Instant::now() > deadline {
            bail!(
                "{cluster}: no token in Secret {MEMBER_NAMESPACE}/{name} after {}s; is kube-controller-manager's token controller running? (or use --token-duration)",
                timeout.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn request_token(
    client: &Client,
    cluster: &str,
    pool: &str,
    duration: Duration,
) -> anyhow::Result<String> {
    let identity = manifests::member_identity(pool);
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), MEMBER_NAMESPACE);
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            audiences: None,
            expiration_seconds: i64::try_from(duration.as_secs()).ok(),
            ..TokenRequestSpec::default()
        }),
        ..TokenRequest::default()
    };
    let issued: TokenRequest = api
        .create_subresource("token", &identity, &PostParams::default(), &request)
        .await
        .with_context(|| {
            format!(
                "{cluster}: requesting a token for ServiceAccount {MEMBER_NAMESPACE}/{identity}"
            )
        })?;
    match issued.status.and_then(|s| s.token) {
        Some(token) if !token.is_empty() => Ok(token),
        _ => bail!("{cluster}: the TokenRequest for {identity} returned no token"),
    }
}

async fn root_ca_from_configmap(client: &Client, cluster: &str) -> anyhow::Result<String> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), MEMBER_NAMESPACE);
    let cm = api.get_opt("kube-root-ca.crt").await.with_context(|| {
        format!("{cluster}: reading ConfigMap {MEMBER_NAMESPACE}/kube-root-ca.crt")
    })?;
    match cm
        .and_then(|c| c.data)
        .and_then(|d| d.get("ca.crt").cloned())
    {
        Some(pem) => Ok(kubeconfig::base64(pem.as_bytes())),
        None => bail!(
            "{cluster}: the member kubeconfig has no certificate authority and the member publishes none; add certificate-authority-data to the kubeconfig"
        ),
    }
}

/// Lists one Node with the new token, against the admin's server address: proves the token,
/// the CA and the ClusterRole before the hub is told about them.
async fn verify_member_token(
    endpoint: &MemberEndpoint,
    pool: &str,
    ca_data: &str,
    token: &str,
    cluster: &str,
) -> anyhow::Result<()> {
    let text = kubeconfig::render(pool, endpoint, ca_data, token);
    let kc =
        Kubeconfig::from_yaml(&text).context("internal: re-reading the generated kubeconfig")?;
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .context("internal: loading the generated kubeconfig")?;
    let client = Client::try_from(config).context("building a client from the new token")?;
    let nodes: Api<Node> = Api::all(client);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match nodes.list(&ListParams::default().limit(1)).await {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(s))
                if (s.code == 401 || s.code == 403) && Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => {
                return Err(anyhow!(e).context(format!(
                    "{cluster}: the new ServiceAccount token cannot list nodes at {} (if the operator reaches the member at another address, pass --member-server)",
                    endpoint.server
                )));
            }
        }
    }
}

fn yaml_doc<T: Serialize>(obj: &T) -> anyhow::Result<String> {
    serde_saphyr::to_string(obj).context("rendering YAML")
}

fn print_dry_run(
    request: &PoolRequest,
    endpoint: &MemberEndpoint,
    member: &MemberObjects,
) -> anyhow::Result<()> {
    let mut out = String::new();
    out.push_str(&format!(
        "# skyloom join --dry-run: nothing was changed.\n# Member cluster: context {:?}, server {}\n",
        endpoint.context, endpoint.server
    ));
    let mut docs = vec![
        yaml_doc(&member.namespace)?,
        yaml_doc(&member.service_account)?,
        yaml_doc(&member.cluster_role)?,
        yaml_doc(&member.binding)?,
    ];
    if let Some(secret) = &member.token_secret {
        docs.push(yaml_doc(secret)?);
    }
    for d in docs {
        out.push_str("---\n");
        out.push_str(&d);
    }
    let ca = endpoint
        .ca_data
        .clone()
        .unwrap_or_else(|| "<ca.crt published by the member>".to_owned());
    let rendered = kubeconfig::render(
        &request.pool,
        endpoint,
        &ca,
        "<ServiceAccount token, issued by the member at join time>",
    );
    let mut secret = serde_json::to_value(manifests::hub_secret(request, &rendered))
        .context("rendering the Secret")?;
    if let Some(obj) = secret.as_object_mut() {
        obj.remove("data");
        obj.insert(
            "stringData".into(),
            serde_json::json!({ skyloom_api::cloudpool::DEFAULT_KUBECONFIG_KEY: rendered }),
        );
    }
    out.push_str(&format!(
        "# Hub: namespace {} (the Secret is applied as base64 data; shown as stringData)\n---\n",
        request.operator_namespace
    ));
    out.push_str(&yaml_doc(&secret)?);
    out.push_str("---\n");
    out.push_str(&yaml_doc(&manifests::cloud_pool(request))?);
    print!("{out}");
    Ok(())
}

async fn unjoin_async(args: UnjoinArgs) -> anyhow::Result<()> {
    manifests::validate_pool_name(&args.name)?;
    let pool = args.name.clone();
    let ns = args.namespace.clone();
    // Load the member kubeconfig before touching the hub, so a typo stops us early.
    let member = match &args.member_kubeconfig {
        Some(path) => {
            let kc = kubeconfig::read(path).context("member")?;
            let endpoint = kubeconfig::endpoint(&kc, args.member_context.as_deref(), None, path)?;
            Some((member_client(&kc, &endpoint.context).await?, endpoint))
        }
        None => None,
    };
    let hub = hub_client(args.hub_kubeconfig.as_ref(), args.hub_context.as_ref()).await?;

    // The CloudPool first: the operator's cleanup of it may still need the Secret.
    let pools: Api<CloudPool> = Api::all(hub.clone());
    match pools.delete(&pool, &DeleteParams::background()).await {
        Ok(_) => progress(format!("hub: deleting CloudPool {pool}")),
        Err(kube::Error::Api(s)) if s.code == 404 => {
            progress(format!("hub: CloudPool {pool} does not exist"));
        }
        Err(e) => {
            let h = hint(&e);
            return Err(anyhow!(e).context(format!("hub: deleting CloudPool {pool}{h}")));
        }
    }
    let deadline = Instant::now() + Duration::from_secs(args.timeout_seconds.max(1));
    loop {
        match pools.get_opt(&pool).await {
            Ok(None) => break,
            Ok(Some(p)) if Instant::now() > deadline => bail!(
                "hub: CloudPool {pool} is still terminating after {}s (finalizers: {:?}); the operator must finish its cleanup first. The Secret {ns}/{} was kept; run unjoin again later",
                args.timeout_seconds,
                p.finalizers(),
                manifests::kubeconfig_secret_name(&pool)
            ),
            Ok(Some(_)) => tokio::time::sleep(Duration::from_millis(500)).await,
            Err(e) => return Err(anyhow!(e).context(format!("hub: reading CloudPool {pool}"))),
        }
    }

    let secret_name = manifests::kubeconfig_secret_name(&pool);
    delete_if_ours::<Secret>(
        Api::namespaced(hub.clone(), &ns),
        "hub",
        Some(&ns),
        &secret_name,
        &pool,
    )
    .await?;

    if let Some((client, endpoint)) = member {
        let cluster = format!("member {:?}", endpoint.context);
        let identity = manifests::member_identity(&pool);
        delete_if_ours::<ClusterRoleBinding>(
            Api::all(client.clone()),
            &cluster,
            None,
            &identity,
            &pool,
        )
        .await?;
        delete_if_ours::<ClusterRole>(Api::all(client.clone()), &cluster, None, &identity, &pool)
            .await?;
        let token = manifests::token_secret_name(&pool);
        delete_if_ours::<Secret>(
            member_ns_api(&client),
            &cluster,
            Some(MEMBER_NAMESPACE),
            &token,
            &pool,
        )
        .await?;
        delete_if_ours::<ServiceAccount>(
            member_ns_api(&client),
            &cluster,
            Some(MEMBER_NAMESPACE),
            &identity,
            &pool,
        )
        .await?;
        delete_member_namespace_if_unused(&client, &cluster).await?;
    }
    println!("Unjoined CloudPool {pool}.");
    Ok(())
}

/// Deletes `name` only if `join` created it for `pool`; says what it did either way.
async fn delete_if_ours<K>(
    api: Api<K>,
    cluster: &str,
    namespace: Option<&str>,
    name: &str,
    pool: &str,
) -> anyhow::Result<()>
where
    K: Resource<DynamicType = ()> + DeserializeOwned + Clone + Debug,
{
    let what = match namespace {
        Some(ns) => format!("{} {ns}/{name}", K::kind(&())),
        None => format!("{} {name}", K::kind(&())),
    };
    let found = api.get_opt(name).await.map_err(|e| {
        let h = hint(&e);
        anyhow!(e).context(format!("{cluster}: reading {what}{h}"))
    })?;
    let Some(obj) = found else {
        return Ok(());
    };
    if !is_ours(obj.meta(), pool) {
        progress(format!(
            "{cluster}: kept {what}: it was not created by skyloom join for {pool}"
        ));
        return Ok(());
    }
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => {
            progress(format!("{cluster}: deleted {what}"));
            Ok(())
        }
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => {
            let h = hint(&e);
            Err(anyhow!(e).context(format!("{cluster}: deleting {what}{h}")))
        }
    }
}

/// Deletes `skyloom-member` when `join` created it and no other pool's ServiceAccount is left.
async fn delete_member_namespace_if_unused(client: &Client, cluster: &str) -> anyhow::Result<()> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let Some(ns) = namespaces
        .get_opt(MEMBER_NAMESPACE)
        .await
        .with_context(|| format!("{cluster}: reading Namespace {MEMBER_NAMESPACE}"))?
    else {
        return Ok(());
    };
    let created_by_join = ns
        .labels()
        .get("app.kubernetes.io/managed-by")
        .is_some_and(|v| v == MANAGED_BY);
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), MEMBER_NAMESPACE);
    let others = accounts
        .list(&ListParams::default().labels(&format!("app.kubernetes.io/managed-by={MANAGED_BY}")))
        .await
        .with_context(|| format!("{cluster}: listing ServiceAccounts in {MEMBER_NAMESPACE}"))?;
    if !created_by_join || !others.items.is_empty() {
        return Ok(());
    }
    match namespaces
        .delete(MEMBER_NAMESPACE, &DeleteParams::background())
        .await
    {
        Ok(_) => {
            progress(format!("{cluster}: deleted Namespace {MEMBER_NAMESPACE}"));
            Ok(())
        }
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => {
            Err(anyhow!(e).context(format!("{cluster}: deleting Namespace {MEMBER_NAMESPACE}")))
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn durations_parse_with_units_and_a_minimum() {
        assert_eq!(parse_duration("720h"), Ok(Duration::from_secs(720 * 3600)));
        assert_eq!(parse_duration("30d"), Ok(Duration::from_secs(30 * 86_400)));
        assert_eq!(parse_duration("600"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert!(parse_duration("5m").is_err());
        assert!(parse_duration("1w").is_err());
        assert!(parse_duration("h").is_err());
    }
}
