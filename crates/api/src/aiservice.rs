//! `AIService`: one AI workload that Skyloom spreads over CloudPools.

use std::time::Duration;

use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::cloudpool::TaintEffect;
use crate::schema::{
    LABEL_KEY_PATTERN, LABEL_VALUE_PATTERN, cloud_names_schema, conditions_schema,
    drop_description, label_selector_schema, pod_template_schema, region_names_schema,
};

/// Largest accepted `replicas`, `minReplicas` and per-cloud bound: keeps replicas × request
/// far from overflow (CASE-13).
pub const MAX_REPLICAS: i32 = 10_000;
/// Default `priority`.
pub const DEFAULT_PRIORITY: i32 = 0;
/// Default `objective.costWeight`.
pub const DEFAULT_COST_WEIGHT: i32 = 1;
/// Default `objective.performanceWeight`.
pub const DEFAULT_PERFORMANCE_WEIGHT: i32 = 0;
/// Default `spread.minClouds`.
pub const DEFAULT_MIN_CLOUDS: i32 = 1;
/// Default `migration.minSavingsPercent`.
pub const DEFAULT_MIN_SAVINGS_PERCENT: i32 = 10;
/// Default `migration.maxSurge`.
pub const DEFAULT_MAX_SURGE: i32 = 1;
/// Default `migration.maxUnavailable`.
pub const DEFAULT_MAX_UNAVAILABLE: i32 = 0;
/// Default `migration.timeoutSeconds`.
pub const DEFAULT_MIGRATION_TIMEOUT: Duration = Duration::from_secs(600);
/// Default `failover.unreachableGracePeriodSeconds`.
pub const DEFAULT_FAILOVER_GRACE: Duration = Duration::from_secs(30);

/// Desired state of an AIService: one AI workload (a model server in containers). Skyloom
/// decides how many of its replicas run in which CloudPool, creates a Deployment in each chosen
/// member cluster, keeps it there through outages and price changes, and reports the decision
/// and its reasons in status.
// Each printcolumn(...) repeats `type_ = ...`, which clippy mistakes for duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "skyloom.io",
    version = "v1alpha1",
    kind = "AIService",
    plural = "aiservices",
    shortname = "ais",
    category = "skyloom",
    namespaced,
    status = "AIServiceStatus",
    derive = "PartialEq",
    doc = "An AIService is one AI workload that Skyloom places across CloudPools: it chooses how many replicas run in which cloud and runs them there as Deployments.",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(name = "Desired", type_ = "integer", json_path = ".spec.replicas"),
    printcolumn(name = "Ready", type_ = "integer", json_path = ".status.readyReplicas"),
    printcolumn(
        name = "Placement",
        type_ = "string",
        json_path = ".status.placementSummary",
        description = "Replicas per CloudPool"
    ),
    printcolumn(
        name = "$/h",
        type_ = "string",
        json_path = ".status.costPerHour",
        description = "Projected cost of the placement, USD per hour"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "!has(self.minReplicas) || self.minReplicas <= self.replicas",
    "message": "spec.minReplicas must be less than or equal to spec.replicas",
    "fieldPath": ".minReplicas",
    "reason": "FieldValueInvalid",
}]))]
pub struct AIServiceSpec {
    /// Desired number of replicas across all clouds, 0 to 10000. Also reachable through the
    /// scale subresource (`kubectl scale`). When scaling.mode is Member, an autoscaler in each
    /// member owns the replica count instead.
    #[schemars(range(min = 0, max = 10000))]
    pub replicas: i32,

    /// Fewest replicas that must stay available during moves and failovers, 0 to replicas.
    /// Also the floor that surviveCloudLoss must keep after losing any one cloud. Defaults to
    /// replicas (no planned disruption).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 10000))]
    pub min_replicas: Option<i32>,

    /// The Pod template of each replica, as in a Deployment. One replica's demand on a
    /// CloudPool is the sum of its containers' resource requests (extended resources such as
    /// nvidia.com/gpu included).
    #[schemars(schema_with = "pod_template_schema")]
    pub template: PodTemplateSpec,

    /// Priority against other AIServices, 0 to 1000: when capacity is short, higher priority
    /// services are placed first and the rest are reported as unplaced. Defaults to 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000))]
    pub priority: Option<i32>,

    /// Where replicas may and should run. Omitted: any CloudPool, cheapest first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<Placement>,

    /// How Skyloom moves replicas between clouds when a better placement appears.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration: Option<MigrationPolicy>,

    /// What Skyloom does when a member cluster stops answering.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failover: Option<FailoverPolicy>,

    /// Who owns the replica count in the members.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scaling: Option<ScalingPolicy>,

    /// CloudPool taints this service tolerates.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), extend("x-kubernetes-list-type" = "atomic"))]
    pub tolerations: Vec<Toleration>,
}

/// Placement constraints and preferences. All constraints must hold for a CloudPool to be
/// eligible; preferences and the objective then rank the eligible pools.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Placement {
    /// Names of the CloudPools this service may use (at least one). Omitted: every pool.
    /// Unknown names are allowed and reported in status, so an AIService can be applied before
    /// its pools.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "cloud_names_schema")]
    pub clouds: Option<Vec<String>>,

    /// Only CloudPools whose labels match this selector are eligible (e.g.
    /// skyloom.io/jurisdiction In [eu]). Operators: In, NotIn, Exists, DoesNotExist.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "label_selector_schema")]
    pub cloud_selector: Option<LabelSelector>,

    /// Data residency: only CloudPools whose spec.region is in this list are eligible, e.g.
    /// [europe-west4, westeurope]. Omitted: any region.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "region_names_schema")]
    pub regions: Option<Vec<String>>,

    /// Soft preferences: each matching CloudPool gains the weight in the objective. Selectors
    /// must be distinct.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 16),
        extend(
            "x-kubernetes-list-type" = "atomic",
            "x-kubernetes-validations" = [{
                "rule": "self.all(p, self.exists_one(q, q.selector == p.selector))",
                "message": "each preference must have a distinct selector; merge duplicates into one weight",
            }]
        )
    )]
    pub preferences: Vec<Preference>,

    /// How replicas must be spread over clouds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spread: Option<Spread>,

    /// How cost and performance are traded against each other.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub objective: Option<Objective>,
}

/// A weighted soft preference for CloudPools matching a selector.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Preference {
    /// Weight of this preference, 1 to 100.
    #[schemars(range(min = 1, max = 100))]
    pub weight: i32,

    /// CloudPools whose labels match get the weight.
    #[schemars(schema_with = "label_selector_schema")]
    pub selector: LabelSelector,
}

/// Spread constraints.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Spread {
    /// Run replicas in at least this many CloudPools, 1 to 50. Defaults to 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 50))]
    pub min_clouds: Option<i32>,

    /// Run at most this many replicas in any one CloudPool, 1 to 10000. Omitted: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000))]
    pub max_replicas_per_cloud: Option<i32>,

    /// When true, the placement must survive the loss of any one cloud provider: the replicas
    /// outside every single provider still add up to minReplicas (or replicas when minReplicas
    /// is omitted). Defaults to false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub survive_cloud_loss: Option<bool>,
}

/// Objective weights. The solver maximises performanceWeight × performance − costWeight × cost
/// over the placed replicas.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "(has(self.costWeight) ? self.costWeight : 1) + (has(self.performanceWeight) ? self.performanceWeight : 0) > 0",
    "message": "costWeight and performanceWeight must not both be 0",
}]))]
pub struct Objective {
    /// Weight of the hourly cost, 0 to 100. Defaults to 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub cost_weight: Option<i32>,

    /// Weight of the CloudPools' performanceScore, 0 to 100. Defaults to 0 (cost only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub performance_weight: Option<i32>,
}

/// Planned moves between clouds (make-before-break).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "(has(self.maxSurge) ? self.maxSurge : 1) + (has(self.maxUnavailable) ? self.maxUnavailable : 0) > 0",
    "message": "maxSurge and maxUnavailable must not both be 0, or no replica could ever move",
}]))]
pub struct MigrationPolicy {
    /// Move replicas only when the new placement is at least this many percent cheaper (or
    /// better by the objective), 0 to 100. Defaults to 10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub min_savings_percent: Option<i32>,

    /// Extra replicas allowed above replicas while moving, 0 to 10000. Defaults to 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 10000))]
    pub max_surge: Option<i32>,

    /// Replicas that may be unavailable while moving, 0 to 10000, never going below
    /// minReplicas. Defaults to 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 10000))]
    pub max_unavailable: Option<i32>,

    /// Seconds a member Deployment may make no progress, 30 to 86400; rendered as its
    /// progressDeadlineSeconds. A Deployment past it makes the AIService report
    /// Progressing=False with reason ProgressDeadlineExceeded. A move whose target is past it
    /// is given up: MigrationStalled=True, the target's surplus is removed, the source keeps
    /// its replicas, and that cloud is avoided for this service until the AIService's or that
    /// CloudPool's spec changes. Defaults to 600.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 30, max = 86400))]
    pub timeout_seconds: Option<i32>,
}

/// Behaviour when a member cluster becomes unreachable.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FailoverPolicy {
    /// Move (default): after the grace period, place the unreachable member's replicas
    /// elsewhere; they are pruned there only after the member is seen again. Hold: keep
    /// counting them where they were and only report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<FailoverMode>,

    /// Seconds a member may be unreachable before failover starts, 0 to 86400. Defaults to
    /// 30.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 86400))]
    pub unreachable_grace_period_seconds: Option<i32>,
}

/// Failover mode.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
#[schemars(transform = drop_description)]
pub enum FailoverMode {
    /// Replace the unreachable member's replicas elsewhere.
    #[default]
    Move,
    /// Keep the replicas where they were; only report.
    Hold,
}

/// Who owns the replica count.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScalingPolicy {
    /// Operator (default): Skyloom sets each member Deployment's replicas from spec.replicas.
    /// Member: an autoscaler (HPA) in each member owns the Deployment's replicas; Skyloom
    /// chooses the clouds and never overwrites the replica count there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<ScalingMode>,
}

/// Scaling mode.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
#[schemars(transform = drop_description)]
pub enum ScalingMode {
    /// Skyloom owns replicas.
    #[default]
    Operator,
    /// An autoscaler in the member owns replicas.
    Member,
}

/// Tolerates a CloudPool taint.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "!has(self.operator) || self.operator == 'Equal' || !has(self.value) || self.value == ''",
        "message": "value must be empty when operator is Exists",
    },
    {
        "rule": "(has(self.key) && self.key != '') || (has(self.operator) && self.operator == 'Exists')",
        "message": "an empty key requires operator Exists (tolerate every taint)",
    },
]))]
pub struct Toleration {
    /// Taint key to tolerate; empty with operator Exists tolerates every taint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 316), pattern(LABEL_KEY_PATTERN))]
    pub key: Option<String>,

    /// Equal (default): the taint's value must equal value. Exists: any value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operator: Option<TolerationOperator>,

    /// Value to match with operator Equal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63), pattern(LABEL_VALUE_PATTERN))]
    pub value: Option<String>,

    /// Taint effect to tolerate: NoSchedule, PreferNoSchedule or NoExecute. Omitted: all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effect: Option<TaintEffect>,
}

/// Toleration operator.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
#[schemars(transform = drop_description)]
pub enum TolerationOperator {
    /// The values must be equal.
    #[default]
    Equal,
    /// Any value.
    Exists,
}

impl AIServiceSpec {
    /// minReplicas, defaulting to replicas.
    pub fn min_replicas(&self) -> i32 {
        self.min_replicas.unwrap_or(self.replicas)
    }

    /// priority, defaulting to 0.
    pub fn priority(&self) -> i32 {
        self.priority.unwrap_or(DEFAULT_PRIORITY)
    }

    /// The spread rules with defaults.
    pub fn spread(&self) -> Spread {
        self.placement
            .as_ref()
            .and_then(|p| p.spread.clone())
            .unwrap_or_default()
    }

    /// The objective with defaults.
    pub fn objective(&self) -> Objective {
        self.placement
            .as_ref()
            .and_then(|p| p.objective.clone())
            .unwrap_or_default()
    }

    /// The migration policy with defaults.
    pub fn migration(&self) -> MigrationPolicy {
        self.migration.clone().unwrap_or_default()
    }

    /// The failover mode, defaulting to Move.
    pub fn failover_mode(&self) -> FailoverMode {
        self.failover
            .as_ref()
            .and_then(|f| f.mode)
            .unwrap_or_default()
    }

    /// How long a member may be unreachable before failover, defaulting to 30 s.
    pub fn failover_grace(&self) -> Duration {
        self.failover
            .as_ref()
            .and_then(|f| f.unreachable_grace_period_seconds)
            .map_or(DEFAULT_FAILOVER_GRACE, seconds)
    }

    /// The scaling mode, defaulting to Operator.
    pub fn scaling_mode(&self) -> ScalingMode {
        self.scaling
            .as_ref()
            .and_then(|s| s.mode)
            .unwrap_or_default()
    }
}

impl Spread {
    /// minClouds, defaulting to 1.
    pub fn min_clouds(&self) -> i32 {
        self.min_clouds.unwrap_or(DEFAULT_MIN_CLOUDS)
    }

    /// surviveCloudLoss, defaulting to false.
    pub fn survive_cloud_loss(&self) -> bool {
        self.survive_cloud_loss.unwrap_or(false)
    }
}

impl Objective {
    /// costWeight, defaulting to 1.
    pub fn cost_weight(&self) -> i32 {
        self.cost_weight.unwrap_or(DEFAULT_COST_WEIGHT)
    }

    /// performanceWeight, defaulting to 0.
    pub fn performance_weight(&self) -> i32 {
        self.performance_weight
            .unwrap_or(DEFAULT_PERFORMANCE_WEIGHT)
    }
}

impl MigrationPolicy {
    /// minSavingsPercent, defaulting to 10.
    pub fn min_savings_percent(&self) -> i32 {
        self.min_savings_percent
            .unwrap_or(DEFAULT_MIN_SAVINGS_PERCENT)
    }

    /// maxSurge, defaulting to 1.
    pub fn max_surge(&self) -> i32 {
        self.max_surge.unwrap_or(DEFAULT_MAX_SURGE)
    }

    /// maxUnavailable, defaulting to 0.
    pub fn max_unavailable(&self) -> i32 {
        self.max_unavailable.unwrap_or(DEFAULT_MAX_UNAVAILABLE)
    }

    /// timeoutSeconds, defaulting to 600 s.
    pub fn timeout(&self) -> Duration {
        self.timeout_seconds
            .map_or(DEFAULT_MIGRATION_TIMEOUT, seconds)
    }
}

impl Toleration {
    /// The operator, defaulting to Equal.
    pub fn operator(&self) -> TolerationOperator {
        self.operator.unwrap_or_default()
    }
}

/// Seconds from the API (never negative after admission; clamped anyway).
fn seconds(value: i32) -> Duration {
    Duration::from_secs(u64::try_from(value).unwrap_or(0))
}

/// Observed state of an AIService, written only by the operator through the status
/// subresource.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AIServiceStatus {
    /// The metadata.generation that every member Deployment has received and rolled out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Current conditions: Ready, Reconciling, Stalled, Scheduled, Progressing, Available,
    /// MigrationStalled.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,

    /// Replicas per CloudPool, one entry per pool that has or should have replicas.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["cloud"]))]
    pub placements: Vec<CloudPlacement>,

    /// Replicas placed in all clouds together (the scale subresource's status.replicas).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,

    /// Ready replicas in all clouds, counting only members observed recently.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_replicas: Option<i32>,

    /// Available replicas in all clouds, counting only members observed recently.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub available_replicas: Option<i32>,

    /// Desired replicas that fit in no eligible CloudPool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unplaced_replicas: Option<i32>,

    /// Label selector of the Pods, as a string (for the scale subresource and HPA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,

    /// Projected cost of the current placement, USD per hour, as a decimal string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_per_hour: Option<String>,

    /// Replicas per CloudPool in one line, e.g. "aws-us-east-1=2,gcp-europe-west4=1".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement_summary: Option<String>,

    /// Why the solver chose this placement.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub explanation: Option<Explanation>,

    /// When the placement was last solved (changes only when the decision changes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_solve_time: Option<Time>,
}

/// Replicas of this service in one CloudPool.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CloudPlacement {
    /// CloudPool name.
    pub cloud: String,
    /// Replicas the solver assigned here.
    pub desired: i32,
    /// Ready replicas last observed here.
    pub ready: i32,
    /// Available replicas last observed here.
    pub available: i32,
    /// True when the member has not been observed recently: ready and available are the last
    /// known values and are not counted in the totals.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stale: Option<bool>,
    /// When this member's Deployment was last observed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_observed_time: Option<Time>,
    /// Why this entry is as it is, e.g. Placed, MemberStatusStale, Draining.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The solver's explanation of the placement.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Explanation {
    /// One or two sentences for humans.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    /// Constraints that limit the objective, e.g. "capacity aws-us-east-1 nvidia.com/gpu".
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub binding_constraints: Vec<String>,
    /// Per CloudPool: replicas chosen and why it was or was not chosen.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cloud_reasons: Vec<CloudReason>,
    /// Marginal value of one more unit of a resource in a CloudPool, USD per hour.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shadow_prices: Vec<ShadowPrice>,
    /// When nothing fits: the smallest set of constraints that conflict.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conflicting_constraints: Vec<String>,
    /// Relative gap to the optimum in percent, as a decimal string ("0" when exact).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub optimality_gap_percent: Option<String>,
}

/// Why one CloudPool got the replicas it got.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CloudReason {
    /// CloudPool name.
    pub cloud: String,
    /// Replicas placed there.
    pub replicas: i32,
    /// Why, e.g. "cheapest eligible", "excluded: region not allowed", "full: nvidia.com/gpu".
    pub reason: String,
    /// For a losing pool: how many percent cheaper it would have to be to win a replica.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub break_even_price_cut_percent: Option<String>,
}

/// The dual value of a capacity constraint.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ShadowPrice {
    /// CloudPool name.
    pub cloud: String,
    /// Resource name.
    pub resource: String,
    /// Objective gain per extra unit, in USD per hour, as a decimal string.
    pub usd_per_unit_hour: String,
}

/// AIService condition types (plus [`crate::conditions::READY`], `RECONCILING`, `STALLED`).
pub mod condition {
    pub use crate::conditions::{READY, RECONCILING, STALLED};
    /// The solver placed every desired replica (False: some or all are unplaced).
    pub const SCHEDULED: &str = "Scheduled";
    /// A rollout or move is in progress (False with ProgressDeadlineExceeded: it failed).
    pub const PROGRESSING: &str = "Progressing";
    /// At least minReplicas replicas are available for the current generation.
    pub const AVAILABLE: &str = "Available";
    /// A move was given up because its target made no progress within
    /// migration.timeoutSeconds (abnormal-true; the message names the cloud).
    pub const MIGRATION_STALLED: &str = "MigrationStalled";
    /// Another writer keeps changing a member Deployment's replica count; Skyloom puts its
    /// count back at most once per window (abnormal-true; the message names the clouds).
    pub const SCALING_CONFLICT: &str = "ScalingConflict";
}

/// AIService condition reasons.
pub mod reason {
    pub use crate::conditions::reason::{INVALID_SPEC, NEW_GENERATION, RECONCILED};
    /// Every desired replica has a CloudPool.
    pub const PLACED: &str = "Placed";
    /// Some replicas fit nowhere; see status.unplacedReplicas and the explanation.
    pub const PARTIALLY_PLACED: &str = "PartiallyPlaced";
    /// No replica fits anywhere.
    pub const NO_FEASIBLE_PLACEMENT: &str = "NoFeasiblePlacement";
    /// No CloudPool passes the service's constraints (clouds, selector, regions, taints).
    pub const NO_ELIGIBLE_CLOUD: &str = "NoEligibleCloud";
    /// Member Deployments are being created, updated or scaled.
    pub const ROLLING_OUT: &str = "RollingOut";
    /// Replicas are moving between clouds (make-before-break).
    pub const MIGRATING: &str = "Migrating";
    /// Replicas of an unreachable member are being replaced elsewhere.
    pub const FAILING_OVER: &str = "FailingOver";
    /// A rollout or move did not finish within migration.timeoutSeconds.
    pub const PROGRESS_DEADLINE_EXCEEDED: &str = "ProgressDeadlineExceeded";
    /// At least minReplicas replicas are available.
    pub const MINIMUM_REPLICAS_AVAILABLE: &str = "MinimumReplicasAvailable";
    /// Fewer than minReplicas replicas are available.
    pub const MINIMUM_REPLICAS_UNAVAILABLE: &str = "MinimumReplicasUnavailable";
    /// A member's status has not been observed recently; its counts are not trusted.
    pub const MEMBER_STATUS_STALE: &str = "MemberStatusStale";
    /// The AIService's namespace is being deleted in that member; its replicas go elsewhere
    /// until the namespace is gone (per-cloud placement reason).
    pub const NAMESPACE_TERMINATING: &str = "NamespaceTerminating";
    /// Another writer changed a member Deployment's replica count again soon after Skyloom
    /// put it back.
    pub const REPLICAS_CHANGED_IN_MEMBER: &str = "ReplicasChangedInMember";
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn minimal() -> AIServiceSpec {
        serde_json::from_value(json!({
            "replicas": 3,
            "template": {"spec": {"containers": [{"name": "app", "image": "nginx"}]}},
        }))
        .unwrap()
    }

    #[test]
    fn defaults_are_applied_in_code() {
        let s = minimal();
        assert_eq!(s.min_replicas(), 3);
        assert_eq!(s.priority(), 0);
        assert_eq!(s.spread().min_clouds(), 1);
        assert!(!s.spread().survive_cloud_loss());
        assert_eq!(s.spread().max_replicas_per_cloud, None);
        assert_eq!(s.objective().cost_weight(), 1);
        assert_eq!(s.objective().performance_weight(), 0);
        assert_eq!(s.migration().min_savings_percent(), 10);
        assert_eq!(s.migration().max_surge(), 1);
        assert_eq!(s.migration().max_unavailable(), 0);
        assert_eq!(s.migration().timeout(), Duration::from_secs(600));
        assert_eq!(s.failover_mode(), FailoverMode::Move);
        assert_eq!(s.failover_grace(), Duration::from_secs(30));
        assert_eq!(s.scaling_mode(), ScalingMode::Operator);
    }

    #[test]
    fn explicit_values_win_over_defaults() {
        let s: AIServiceSpec = serde_json::from_value(json!({
            "replicas": 3,
            "minReplicas": 2,
            "priority": 7,
            "template": {"spec": {"containers": [{"name": "app", "image": "nginx"}]}},
            "placement": {"objective": {"costWeight": 0, "performanceWeight": 5}},
            "migration": {"timeoutSeconds": 60, "maxSurge": 0, "maxUnavailable": 1},
            "failover": {"mode": "Hold", "unreachableGracePeriodSeconds": 0},
            "scaling": {"mode": "Member"},
        }))
        .unwrap();
        assert_eq!(s.min_replicas(), 2);
        assert_eq!(s.priority(), 7);
        assert_eq!(s.objective().cost_weight(), 0);
        assert_eq!(s.objective().performance_weight(), 5);
        assert_eq!(s.migration().timeout(), Duration::from_secs(60));
        assert_eq!(s.migration().max_surge(), 0);
        assert_eq!(s.failover_mode(), FailoverMode::Hold);
        assert_eq!(s.failover_grace(), Duration::ZERO);
        assert_eq!(s.scaling_mode(), ScalingMode::Member);
    }

    #[test]
    fn round_trip_writes_nothing_the_user_did_not() {
        let input = json!({
            "replicas": 3,
            "template": {"spec": {"containers": [{"name": "app", "image": "nginx"}]}},
            "placement": {"clouds": ["aws-us-east-1"]},
        });
        let spec: AIServiceSpec = serde_json::from_value(input.clone()).unwrap();
        assert_eq!(serde_json::to_value(&spec).unwrap(), input);
    }
}
