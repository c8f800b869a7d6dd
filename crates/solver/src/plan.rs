//! The solver's answer: replicas per service and cloud, money, status and explanations.
//!
//! Every list is sorted (services by namespace and name, clouds by name) and every map is a
//! `BTreeMap`, so the same snapshot in any order serializes to the same bytes. Amounts are
//! integers in base units (see [`crate::units`]); money is USD per hour.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::eligibility::{Exclusion, NoNewReplicas};

/// The answer for a whole snapshot.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Plan {
    /// How good the answer is known to be.
    pub status: SolveStatus,
    /// One entry per service, sorted by namespace and name.
    pub services: Vec<ServicePlan>,
    /// One entry per cloud, sorted by name.
    pub clouds: Vec<CloudPlan>,
    /// Totals over all services.
    pub totals: Totals,
    /// The parts of the objective.
    pub objective: ObjectiveParts,
}

/// How good the answer is known to be.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum SolveStatus {
    /// Proven optimal for every level of the objective.
    Optimal,
    /// Feasible; the optimum may be better.
    #[serde(rename_all = "camelCase")]
    Feasible {
        /// Relative gap between the objective value and the best lower bound on it with the
        /// same number of placed replicas per service (0.01 = 1 %).
        gap: f64,
        /// That lower bound, USD per hour (objective units).
        bound: f64,
        /// Whether the number of placed replicas per priority is proven best (true when
        /// nothing is unplaced and no spread rule falls short).
        placement_proven: bool,
        /// Whether the time limit cut the search (the answer may then depend on timing).
        time_limited: bool,
    },
}

/// Totals over all services.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Totals {
    /// Hourly cost of all placed replicas, USD.
    pub cost_per_hour: f64,
    /// Replicas placed.
    pub placed: u64,
    /// Replicas not placed.
    pub unplaced: u64,
    /// Replicas moved away from where they run now.
    pub moves: u64,
    /// Failover reserve held, replicas.
    pub reserve: u64,
}

/// The parts of the lexicographic objective.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectiveParts {
    /// Per priority (highest first): unplaced replicas and spread shortfalls, the first
    /// goal.
    pub by_priority: Vec<PriorityPenalty>,
    /// The weighted objective, the second goal, USD-equivalent per hour: weighted cost minus
    /// the performance and preference terms minus the stay bonus.
    pub value: f64,
    /// Weighted cost part of `value`.
    pub weighted_cost: f64,
    /// Performance part (subtracted), USD-equivalent per hour.
    pub performance: f64,
    /// Preference part (subtracted; `PreferNoSchedule` taints count negative).
    pub preference: f64,
    /// Stay bonus of replicas that do not move (subtracted).
    pub stay_bonus: f64,
    /// Moves, the third goal.
    pub moves: u64,
    /// Failover reserve, the last tie-break.
    pub reserve: u64,
}

/// The first goal's standing in one priority.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PriorityPenalty {
    /// The priority.
    pub priority: i32,
    /// Replicas not placed.
    pub unplaced: u64,
    /// Clouds missing from `minClouds`, summed over services.
    pub missing_clouds: u64,
    /// Replicas missing after the worst provider loss, summed over services.
    pub survival_shortfall: u64,
}

/// The answer for one service.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServicePlan {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Desired replicas.
    pub desired: u32,
    /// Replicas placed.
    pub placed: u32,
    /// Replicas not placed.
    pub unplaced: u32,
    /// Clouds with replicas or reserve, sorted by cloud name.
    pub placements: Vec<CloudReplicas>,
    /// Hourly cost of the placed replicas, USD.
    pub cost_per_hour: f64,
    /// Replicas moved away from where they run now.
    pub moves: u32,
    /// Why.
    pub explanation: ServiceExplanation,
}

/// Replicas of one service in one cloud.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CloudReplicas {
    /// The cloud.
    pub cloud: String,
    /// Running replicas.
    pub replicas: u32,
    /// Capacity kept free for failover, in replicas of this service.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub reserve: u32,
}

fn is_zero(value: &u32) -> bool {
    *value == 0
}

/// Why a service got what it got.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceExplanation {
    /// One line for people.
    pub summary: String,
    /// One verdict per cloud, sorted by cloud name.
    pub clouds: Vec<CloudVerdict>,
    /// Why replicas are unplaced, when some are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unplaced: Option<UnplacedExplanation>,
    /// Spread rules that could not be met.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub spread_shortfalls: Vec<String>,
}

/// Why one cloud got what it got for one service.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CloudVerdict {
    /// The cloud.
    pub cloud: String,
    /// Running replicas.
    pub replicas: u32,
    /// Hourly cost of one replica here, USD.
    pub cost_per_replica: f64,
    /// The verdict.
    pub verdict: Verdict,
}

/// Why a cloud got what it got.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum Verdict {
    /// The cloud runs replicas; `limit` says why not more, when more were wanted.
    #[serde(rename_all = "camelCase")]
    Chosen {
        /// What stopped more replicas here.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<Limit>,
    },
    /// Rules exclude the cloud.
    #[serde(rename_all = "camelCase")]
    Excluded {
        /// Every rule that excludes it.
        rules: Vec<Exclusion>,
    },
    /// Rules admit no new replicas here (and none run here now).
    #[serde(rename_all = "camelCase")]
    NoNewReplicas {
        /// Every such rule.
        rules: Vec<NoNewReplicas>,
    },
    /// Not enough free capacity for one more replica.
    #[serde(rename_all = "camelCase")]
    Full {
        /// The resources short.
        shortfalls: Vec<Shortfall>,
    },
    /// Eligible with room, but worse by the objective than the clouds chosen.
    #[serde(rename_all = "camelCase")]
    MoreExpensive {
        /// How much lower its objective value per replica would have to be to win, USD
        /// per hour (for a cost-only objective: how much cheaper a replica must be).
        by_per_replica: f64,
        /// The chosen cloud it loses against (the worst chosen one).
        than: String,
    },
    /// No replica runs here, but capacity is kept free for failover.
    #[serde(rename_all = "camelCase")]
    FailoverReserve {
        /// The reserve, in replicas.
        replicas: u32,
    },
    /// The service wants no replicas.
    NothingToPlace,
}

/// Why a chosen cloud did not get more replicas.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum Limit {
    /// Capacity ran out.
    #[serde(rename_all = "camelCase")]
    Full {
        /// The resources short.
        shortfalls: Vec<Shortfall>,
    },
    /// `maxReplicasPerCloud` reached.
    #[serde(rename_all = "camelCase")]
    SpreadCap {
        /// The cap.
        max_replicas_per_cloud: u32,
    },
    /// Only the replicas already here may stay.
    #[serde(rename_all = "camelCase")]
    NoNewReplicas {
        /// Every such rule.
        rules: Vec<NoNewReplicas>,
    },
    /// Replicas stay on a dearer cloud because moving would save less than
    /// `minSavingsPercent`.
    #[serde(rename_all = "camelCase")]
    MoveNotWorthIt {
        /// The cheaper cloud.
        cheaper: String,
        /// Percent a move there would save.
        saving_percent: f64,
        /// The threshold.
        min_savings_percent: u32,
    },
}

/// A resource that is short for one more replica.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Shortfall {
    /// The resource.
    pub resource: String,
    /// Free in the cloud after the plan, base units.
    pub free: u64,
    /// One replica needs, base units.
    pub needs: u64,
}

/// Why replicas are unplaced: the smallest set of rules and shortfalls that explains it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UnplacedExplanation {
    /// Unplaced replicas.
    pub replicas: u32,
    /// Clouds excluded or closed to new replicas, grouped by rule.
    pub rules: Vec<RuleBlock>,
    /// Clouds that are eligible but full, with what one more replica lacks and who holds it.
    pub capacity: Vec<CapacityBlock>,
    /// Clouds at `maxReplicasPerCloud`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub spread_capped: Vec<String>,
}

/// Clouds kept off by one rule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RuleBlock {
    /// The rule, e.g. `region` or `taint spot=true:NoSchedule`.
    pub rule: String,
    /// The clouds, sorted.
    pub clouds: Vec<String>,
}

/// A full cloud that blocks a replica.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CapacityBlock {
    /// The cloud.
    pub cloud: String,
    /// What one more replica lacks, per resource, base units.
    pub missing: BTreeMap<String, u64>,
    /// Services (`namespace/name`) of equal or higher priority using most of the short
    /// resources there, largest first (at most three).
    pub held_by: Vec<String>,
}

/// The answer for one cloud.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CloudPlan {
    /// The cloud.
    pub name: String,
    /// Capacity available to the snapshot's services, per demanded resource, base units.
    pub capacity: BTreeMap<String, u64>,
    /// Used by running replicas, base units.
    pub used: BTreeMap<String, u64>,
    /// Kept free as failover reserve, base units.
    pub reserved: BTreeMap<String, u64>,
    /// Hourly cost of the replicas placed here, USD.
    pub cost_per_hour: f64,
    /// Resources that stop a better answer: some service would place (more) replicas here
    /// but for them.
    pub binding: Vec<String>,
    /// Value of one more price unit of each resource (core, GiB, device), USD per hour:
    /// how much the objective would improve. Only non-zero prices are listed.
    pub shadow_prices: BTreeMap<String, ShadowPrice>,
}

/// The marginal value of one more unit of a resource in a cloud.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ShadowPrice {
    /// USD per hour per unit.
    pub usd_per_hour: f64,
    /// The unit: `core`, `GiB` or `unit`.
    pub unit: String,
}
