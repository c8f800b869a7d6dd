//! The model in flat form, for an outside solver to check the engine against (the
//! benchmark's HiGHS referee reads it as JSON).

use serde::Serialize;

use crate::error::SolveError;
use crate::model::Model;
use crate::snapshot::Snapshot;

/// The flattened model: everything an integer-programming solver needs to optimise the same
/// lexicographic objective, with eligibility, per-node fit and values already applied.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FlatModel {
    /// Resource names.
    pub resources: Vec<String>,
    /// Number of failure domains.
    pub domains: usize,
    /// Distinct priorities, highest first.
    pub tiers: Vec<i32>,
    /// Clouds.
    pub clouds: Vec<FlatCloud>,
    /// Services.
    pub services: Vec<FlatService>,
}

/// A cloud of a [`FlatModel`].
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FlatCloud {
    /// Name.
    pub name: String,
    /// Capacity per resource, base units.
    pub capacity: Vec<u64>,
    /// Failure domain index.
    pub domain: usize,
}

/// A service of a [`FlatModel`].
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FlatService {
    /// `namespace/name`.
    pub key: String,
    /// Demand per resource, base units.
    pub demand: Vec<u64>,
    /// Desired replicas.
    pub desired: u32,
    /// Tier index (0 = highest priority).
    pub tier: usize,
    /// Most replicas (running plus reserve) per cloud; 0 where excluded.
    pub cap: Vec<u32>,
    /// Whether failover reserve may be held per cloud.
    pub reserve_allowed: Vec<bool>,
    /// Cost of one replica per cloud, nano-USD per hour.
    pub cost: Vec<i64>,
    /// Objective value of one replica per cloud, nano-USD-equivalent per hour.
    pub value: Vec<i64>,
    /// Stay bonus per replica kept per cloud.
    pub stay_bonus: Vec<i64>,
    /// Current replicas per cloud.
    pub current: Vec<u32>,
    /// Survival target (0 = none).
    pub survive_target: u32,
    /// Effective minClouds.
    pub min_clouds: u32,
}

fn narrow(v: i128) -> i64 {
    i64::try_from(v).unwrap_or(if v < 0 { i64::MIN } else { i64::MAX })
}

/// Flattens a snapshot.
///
/// # Errors
/// As [`crate::solve`].
pub fn flatten(snapshot: &Snapshot) -> Result<FlatModel, SolveError> {
    let model = Model::build(snapshot)?;
    Ok(FlatModel {
        resources: model.resources.clone(),
        domains: model.domains.len(),
        tiers: model.tiers.clone(),
        clouds: model
            .clouds
            .iter()
            .map(|c| FlatCloud {
                name: c.name.clone(),
                capacity: c
                    .capacity
                    .iter()
                    .map(|&v| u64::try_from(v).unwrap_or(u64::MAX))
                    .collect(),
                domain: c.domain,
            })
            .collect(),
        services: model
            .services
            .iter()
            .map(|s| FlatService {
                key: s.key.to_string(),
                demand: s
                    .demand
                    .iter()
                    .map(|&v| u64::try_from(v).unwrap_or(u64::MAX))
                    .collect(),
                desired: s.desired,
                tier: s.tier,
                cap: s.cap.clone(),
                reserve_allowed: s.admission.iter().map(|a| a.is_open()).collect(),
                cost: s.cost.iter().map(|&v| narrow(v)).collect(),
                value: s.value.iter().map(|&v| narrow(v)).collect(),
                stay_bonus: s.stay_bonus.iter().map(|&v| narrow(v)).collect(),
                current: s.current.clone(),
                survive_target: s.survive_target,
                min_clouds: s.min_clouds,
            })
            .collect(),
    })
}
