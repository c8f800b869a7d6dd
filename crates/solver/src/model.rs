//! The dense, canonical model the engine works on, built from a [`Snapshot`].
//!
//! Clouds are sorted by name, services by namespace and name, resources by name, so that the
//! same snapshot in any order gives the same model — and the same answer.
//!
//! Each replica of service `j` on cloud `i` has an objective *value* in nano-USD per hour
//! (lower is better):
//!
//! ```text
//! value_ij = costWeight_j × cost_ij
//!          − ref_j × (performanceWeight_j × score_i + Σ matching preference weights
//!                     − 100 if the cloud has an untolerated PreferNoSchedule taint) / 100
//! ```
//!
//! where `cost_ij = Σ_k price_ik × demand_jk` and `ref_j`, the service's *reference replica
//! cost*, is the mean `cost_ij` over the clouds its rules admit ($1/h when that is zero). The
//! performance and preference terms are so measured in the service's own money: with
//! weights 1:1, a cloud with twice the baseline score (200) is worth one typical replica
//! price more per replica. A replica that stays where it runs earns a bonus of
//! `minSavingsPercent × |value_ij|`, so a move must save that share to happen. Values and
//! bonuses are rounded to whole micro-USD; costs stay exact to the nano-USD.

use std::collections::BTreeMap;

use crate::eligibility::{Admission, admission};
use crate::error::SolveError;
use crate::snapshot::{Cloud, Service, ServiceKey, Snapshot};
use crate::units::{NANO_PER_USD, cost_nano};

/// Largest per-replica cost or value the engine accepts: $10^12 per hour, in nano-USD.
const MAX_VALUE_NANO: i128 = 1_000_000_000_000 * NANO_PER_USD;

/// One cloud in the model.
#[derive(Clone, Debug)]
pub struct CloudData {
    /// The cloud's name.
    pub name: String,
    /// Free capacity per model resource, base units.
    pub capacity: Vec<i128>,
    /// Index of the cloud's failure domain (its provider) in [`Model::domains`].
    pub domain: usize,
}

/// One service in the model.
#[derive(Clone, Debug)]
pub struct ServiceData {
    /// The service's key.
    pub key: ServiceKey,
    /// Per-replica demand per model resource, base units.
    pub demand: Vec<i128>,
    /// `demand` as floating point, for ranking.
    pub demand_f: Vec<f64>,
    /// Desired replicas.
    pub desired: u32,
    /// Priority tier: index into [`Model::tiers`], 0 is the highest priority.
    pub tier: usize,
    /// What the rules allow per cloud.
    pub admission: Vec<Admission>,
    /// Most replicas that may run per cloud (rules, current replicas where only those may
    /// stay, `maxReplicasPerCloud`, desired).
    pub cap: Vec<u32>,
    /// Most replicas that may be held (running plus failover reserve) per cloud.
    pub hold_cap: Vec<u32>,
    /// Hourly cost of one replica per cloud, nano-USD.
    pub cost: Vec<i128>,
    /// Objective value of one replica per cloud, nano-USD-equivalent (lower is better):
    /// `costWeight × cost − performance − preference`.
    pub value: Vec<i128>,
    /// `value` as floating point, for ranking.
    pub value_f: Vec<f64>,
    /// `stay_bonus` as floating point, for ranking.
    pub stay_bonus_f: Vec<f64>,
    /// Performance term of one replica per cloud (subtracted from the value).
    pub performance: Vec<i128>,
    /// Preference term of one replica per cloud (subtracted; negative when discouraged).
    pub preference: Vec<i128>,
    /// The cost weight.
    pub cost_weight: u32,
    /// Bonus per replica that stays where it runs, per cloud.
    pub stay_bonus: Vec<i128>,
    /// Replicas running now, per cloud.
    pub current: Vec<u32>,
    /// Failover reserve held now, per cloud.
    pub current_reserve: Vec<u32>,
    /// Replicas that must survive the loss of one failure domain; 0 when not asked.
    pub survive_target: u32,
    /// Fewest clouds to use, reduced to what desired replicas and usable clouds allow.
    pub min_clouds: u32,
    /// `minClouds` as asked.
    pub min_clouds_asked: u32,
    /// `maxReplicasPerCloud` as asked.
    pub max_per_cloud: Option<u32>,
}

/// The canonical model.
#[derive(Clone, Debug)]
pub struct Model {
    /// Resource names demanded by any service, sorted.
    pub resources: Vec<String>,
    /// Clouds sorted by name.
    pub clouds: Vec<CloudData>,
    /// Services sorted by key.
    pub services: Vec<ServiceData>,
    /// Distinct priorities, highest first.
    pub tiers: Vec<i32>,
    /// Failure domains (provider names, or `cloud/<name>` for clouds without one), sorted.
    pub domains: Vec<String>,
}

impl Model {
    /// Builds the model.
    ///
    /// # Errors
    /// [`SolveError::Overflow`] when a per-replica cost or value exceeds $10^12 per hour.
    pub fn build(snapshot: &Snapshot) -> Result<Self, SolveError> {
        let mut clouds: Vec<&Cloud> = snapshot.clouds().iter().collect();
        clouds.sort_by(|a, b| a.name.cmp(&b.name));
        let mut services: Vec<&Service> = snapshot.services().iter().collect();
        services.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));

        let mut resources: Vec<String> = services
            .iter()
            .flat_map(|s| s.demand.keys().cloned())
            .collect();
        resources.sort();
        resources.dedup();

        let domain_of = |cloud: &Cloud| {
            if cloud.provider.is_empty() {
                format!("cloud/{}", cloud.name)
            } else {
                cloud.provider.clone()
            }
        };
        let mut domains: Vec<String> = clouds.iter().map(|c| domain_of(c)).collect();
        domains.sort();
        domains.dedup();

        let mut tiers: Vec<i32> = services.iter().map(|s| s.priority).collect();
        tiers.sort_by(|a, b| b.cmp(a));
        tiers.dedup();

        let cloud_data = clouds
            .iter()
            .map(|cloud| CloudData {
                name: cloud.name.clone(),
                capacity: resources
                    .iter()
                    .map(|r| i128::from(cloud.capacity.get(r).copied().unwrap_or(0)))
                    .collect(),
                domain: domains
                    .iter()
                    .position(|d| *d == domain_of(cloud))
                    .unwrap_or(0),
            })
            .collect();

        let service_data = services
            .iter()
            .map(|service| build_service(service, &clouds, &resources, &tiers))
            .collect::<Result<Vec<_>, _>>()?;

        Ok(Model {
            resources,
            clouds: cloud_data,
            services: service_data,
            tiers,
            domains,
        })
    }

    /// The same model with no current placement (no stay bonus, no moves) but the same caps:
    /// candidates built on it do not depend on where replicas run now, which makes an
    /// answer fed back as the current placement a fixed point.
    pub fn without_current(&self) -> Model {
        let mut blind = self.clone();
        for s in &mut blind.services {
            s.current.iter_mut().for_each(|c| *c = 0);
            s.current_reserve.iter_mut().for_each(|c| *c = 0);
            s.stay_bonus.iter_mut().for_each(|b| *b = 0);
            s.stay_bonus_f.iter_mut().for_each(|b| *b = 0.0);
        }
        blind
    }

    /// Number of clouds.
    pub fn cloud_count(&self) -> usize {
        self.clouds.len()
    }

    /// Number of resources.
    pub fn resource_count(&self) -> usize {
        self.resources.len()
    }
}

fn build_service(
    service: &Service,
    clouds: &[&Cloud],
    resources: &[String],
    tiers: &[i32],
) -> Result<ServiceData, SolveError> {
    let key = service.key();
    let overflow = |cloud: &str, what: &str| SolveError::Overflow {
        service: key.to_string(),
        cloud: cloud.to_owned(),
        what: what.to_owned(),
    };
    let demand: Vec<i128> = resources
        .iter()
        .map(|r| i128::from(service.demand.get(r).copied().unwrap_or(0)))
        .collect();
    let admissions: Vec<Admission> = clouds.iter().map(|c| admission(service, c)).collect();
    let current: Vec<u32> = clouds
        .iter()
        .map(|c| service.current.get(&c.name).copied().unwrap_or(0))
        .collect();
    let current_reserve: Vec<u32> = clouds
        .iter()
        .map(|c| service.current_reserve.get(&c.name).copied().unwrap_or(0))
        .collect();

    let spread = &service.placement.spread;
    let survive_target = if spread.survive_cloud_loss {
        service.survival_target()
    } else {
        0
    };
    let per_cloud_limit = spread.max_replicas_per_cloud.unwrap_or(u32::MAX);
    let hold_limit = per_cloud_limit.min(service.desired.max(survive_target));
    let mut cap = Vec::with_capacity(clouds.len());
    let mut hold_cap = Vec::with_capacity(clouds.len());
    for (index, admission) in admissions.iter().enumerate() {
        let (running, held) = match admission {
            Admission::Open { .. } => {
                let running = per_cloud_limit.min(service.desired);
                (running, hold_limit)
            }
            Admission::KeepOnly(_) => {
                let running = current[index].min(per_cloud_limit).min(service.desired);
                (running, running)
            }
            Admission::Closed(_) => (0, 0),
        };
        cap.push(running);
        hold_cap.push(held);
    }

    let mut cost = Vec::with_capacity(clouds.len());
    for cloud in clouds {
        let mut total: i128 = 0;
        for (resource, &amount) in &service.demand {
            let price = cloud.prices.get(resource).copied().unwrap_or(0);
            total = cost_nano(resource, amount, price)
                .and_then(|c| total.checked_add(c))
                .filter(|&t| t <= MAX_VALUE_NANO)
                .ok_or_else(|| overflow(&cloud.name, "the cost of one replica"))?;
        }
        cost.push(total);
    }

    let usable: Vec<usize> = (0..clouds.len()).filter(|&i| cap[i] > 0).collect();
    // Over the clouds the rules do not exclude, whether or not replicas run there now, so
    // that the objective does not depend on the current placement.
    let admitted: Vec<usize> = (0..clouds.len())
        .filter(|&i| !matches!(admissions[i], Admission::Closed(_)))
        .collect();
    let reference_cost = if admitted.is_empty() {
        0
    } else {
        admitted.iter().map(|&i| cost[i]).sum::<i128>() / admitted.len() as i128
    };
    let reference_cost = if reference_cost > 0 {
        reference_cost
    } else {
        NANO_PER_USD
    };

    let weights = &service.placement.objective;
    let mut value = Vec::with_capacity(clouds.len());
    let mut performance = Vec::with_capacity(clouds.len());
    let mut preferences = Vec::with_capacity(clouds.len());
    let mut stay_bonus = Vec::with_capacity(clouds.len());
    for (index, cloud) in clouds.iter().enumerate() {
        let preference: i128 = service
            .placement
            .preferences
            .iter()
            .filter(|p| p.selector.matches(&cloud.labels))
            .map(|p| i128::from(p.weight))
            .sum();
        let discouraged = matches!(admissions[index], Admission::Open { discouraged: true });
        let perf = (reference_cost
            * i128::from(weights.performance_weight)
            * i128::from(cloud.performance_score))
        .div_euclid(100);
        let pref =
            (reference_cost * (preference - if discouraged { 100 } else { 0 })).div_euclid(100);
        let v = micro(i128::from(weights.cost_weight) * cost[index] - perf - pref);
        if v.abs() > MAX_VALUE_NANO * 100 {
            return Err(overflow(&cloud.name, "the objective value of one replica"));
        }
        value.push(v);
        performance.push(perf);
        preferences.push(pref);
        stay_bonus.push(micro(
            v.abs() * i128::from(service.min_savings_percent) / 100,
        ));
    }

    let min_clouds = spread
        .min_clouds
        .min(service.desired)
        .min(u32::try_from(usable.len()).unwrap_or(u32::MAX));

    Ok(ServiceData {
        key,
        demand_f: demand.iter().map(|&d| d as f64).collect(),
        value_f: value.iter().map(|&v| v as f64).collect(),
        stay_bonus_f: stay_bonus.iter().map(|&v| v as f64).collect(),
        demand,
        desired: service.desired,
        tier: tiers
            .iter()
            .position(|&p| p == service.priority)
            .unwrap_or(0),
        admission: admissions,
        cap,
        hold_cap,
        cost,
        value,
        performance,
        preference: preferences,
        cost_weight: weights.cost_weight,
        stay_bonus,
        current,
        current_reserve,
        survive_target,
        min_clouds,
        min_clouds_asked: spread.min_clouds,
        max_per_cloud: spread.max_replicas_per_cloud,
    })
}

/// Rounds nano-USD to whole micro-USD (half up). Objective values are kept in micro-USD
/// steps so that two placements' values are either equal or at least a micro-USD apart:
/// exact search can then keep an optimum as a constraint with a slack below that step.
fn micro(nano: i128) -> i128 {
    (nano + 500).div_euclid(1000) * 1000
}

/// Per-resource totals helper: `BTreeMap` from resource name to amount.
pub fn by_resource(model: &Model, amounts: &[i128]) -> BTreeMap<String, u64> {
    model
        .resources
        .iter()
        .zip(amounts)
        .map(|(r, &a)| (r.clone(), u64::try_from(a.max(0)).unwrap_or(u64::MAX)))
        .collect()
}
