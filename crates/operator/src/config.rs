//! Configuration of `skyloom run`: flags, environment variables and an optional file.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Flags of `skyloom run`. Every flag also reads an environment variable; a YAML file given
/// with `--config` supplies values for flags that were not set.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// A YAML file of settings, keyed by the long flag names (`probe-interval-seconds: 5`);
    /// flags and environment variables win over it.
    #[arg(long, env = "SKYLOOM_CONFIG")]
    pub config: Option<PathBuf>,
    /// The operator's own namespace: kubeconfig Secrets are read only here.
    #[arg(long, env = "SKYLOOM_NAMESPACE", default_value = "skyloom-system")]
    pub namespace: String,
    /// Kubeconfig of the hub; in a pod the in-cluster configuration is used.
    #[arg(long, env = "SKYLOOM_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Address of the HTTP server for /metrics, /healthz and /readyz.
    #[arg(long, env = "SKYLOOM_HTTP_ADDR", default_value = "0.0.0.0:8080")]
    pub http_addr: SocketAddr,
    /// Elect a leader through a Lease so that several replicas can run; only the leader writes.
    #[arg(long, env = "SKYLOOM_LEADER_ELECT", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_elect: bool,
    /// Name of the Lease in the operator's namespace.
    #[arg(long, env = "SKYLOOM_LEASE_NAME", default_value = "skyloom-leader")]
    pub lease_name: String,
    /// Lease duration in seconds; a follower takes over at most this long after the leader stops renewing.
    #[arg(long, env = "SKYLOOM_LEASE_DURATION_SECONDS", default_value_t = 15)]
    pub lease_duration_seconds: u64,
    /// Name of this replica (in a pod: the pod's name): the Lease holder identity, and named in
    /// the user-agent of every request to the hub and the members; defaults to the hostname
    /// with a suffix unique to the process.
    #[arg(long, env = "SKYLOOM_IDENTITY")]
    pub identity: Option<String>,
    /// How often each member is probed (health, version, capacity), in seconds.
    #[arg(long, env = "SKYLOOM_PROBE_INTERVAL_SECONDS", default_value_t = 5)]
    pub probe_interval_seconds: u64,
    /// Timeout of each request to a member, in seconds.
    #[arg(long, env = "SKYLOOM_MEMBER_TIMEOUT_SECONDS", default_value_t = 5)]
    pub member_timeout_seconds: u64,
    /// How often every placement is re-optimised even without a change, in seconds (0: never).
    #[arg(
        long,
        env = "SKYLOOM_REOPTIMIZE_INTERVAL_SECONDS",
        default_value_t = 300
    )]
    pub reoptimize_interval_seconds: u64,
    /// Quiet time after a change before the solver runs, in milliseconds (debounce).
    #[arg(long, env = "SKYLOOM_DEBOUNCE_MILLIS", default_value_t = 200)]
    pub debounce_millis: u64,
    /// How long a deleted AIService waits for an unreachable member before giving up its
    /// Deployments there (recorded as orphans), in seconds.
    #[arg(
        long,
        env = "SKYLOOM_ORPHAN_GRACE_PERIOD_SECONDS",
        default_value_t = 600
    )]
    pub orphan_grace_period_seconds: u64,
    /// Solver time limit per decision, in milliseconds.
    #[arg(long, env = "SKYLOOM_SOLVER_TIME_LIMIT_MILLIS", default_value_t = 2000)]
    pub solver_time_limit_millis: u64,
    /// How often at most Skyloom puts back a member Deployment's replica count that another
    /// writer keeps changing (an HPA, a script), in seconds; in between it reports
    /// `ScalingConflict`.
    #[arg(
        long,
        env = "SKYLOOM_SCALING_CONFLICT_WINDOW_SECONDS",
        default_value_t = 300
    )]
    pub scaling_conflict_window_seconds: u64,
    /// How many AIServices are reconciled at the same time.
    #[arg(long, env = "SKYLOOM_WORKERS", default_value_t = 16)]
    pub workers: usize,
    /// Requests per second each client (the hub's and every member's) may send on average;
    /// 0 for no limit.
    #[arg(long, env = "SKYLOOM_CLIENT_QPS", default_value_t = 100.0)]
    pub client_qps: f64,
    /// Requests each client may send at once before `client-qps` applies.
    #[arg(long, env = "SKYLOOM_CLIENT_BURST", default_value_t = 200)]
    pub client_burst: u32,
    /// Allow `exec` and `auth-provider` credentials in member kubeconfigs (off: refused).
    #[arg(long, env = "SKYLOOM_ALLOW_EXEC_CREDENTIALS", default_value_t = false)]
    pub allow_exec_credentials: bool,
    /// Allow `insecure-skip-tls-verify` and link-local or metadata server addresses in member
    /// kubeconfigs (off: refused).
    #[arg(long, env = "SKYLOOM_ALLOW_INSECURE_MEMBERS", default_value_t = false)]
    pub allow_insecure_members: bool,
    /// Identity of this control plane, written on every member object; defaults to the UID of
    /// the hub's `kube-system` namespace.
    #[arg(long, env = "SKYLOOM_CONTROL_PLANE_ID")]
    pub control_plane_id: Option<String>,
    /// Log format.
    #[arg(long, env = "SKYLOOM_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Log filter (tracing's EnvFilter syntax), e.g. `info` or `skyloom=debug`.
    #[arg(long, env = "SKYLOOM_LOG", default_value = "info")]
    pub log: String,
}

impl RunArgs {
    /// Probe interval.
    pub fn probe_interval(&self) -> Duration {
        Duration::from_secs(self.probe_interval_seconds.max(1))
    }

    /// The request limit of every client.
    pub fn request_rate(&self) -> crate::client_limits::RequestRate {
        crate::client_limits::RequestRate {
            qps: self.client_qps,
            burst: self.client_burst,
        }
    }

    /// Member request timeout.
    pub fn member_timeout(&self) -> Duration {
        Duration::from_secs(self.member_timeout_seconds.max(1))
    }
}
