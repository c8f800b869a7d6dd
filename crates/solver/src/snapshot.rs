//! The solver's input: clouds and services at one moment, validated at construction.
//!
//! A [`Snapshot`] can only be built through [`Snapshot::new`] (or deserialized, which calls
//! it), so every snapshot the solver sees has unique names, bounded integers and well-formed
//! selectors. All amounts are integers in base units (see [`crate::units`]); prices are
//! integer micro-USD per price unit and hour, so no NaN or infinity can get in.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::SnapshotError;
use crate::selector::LabelSelector;
use crate::taint::{Taint, Toleration};

/// Largest accepted `desired`, `minReplicas`, `maxReplicasPerCloud` and current count.
pub const MAX_REPLICAS: u32 = 1_000_000;
/// Largest accepted price: 999,999.999999 USD per unit-hour, the API's limit.
pub const MAX_PRICE_MICRO_USD: u64 = 999_999_999_999;
/// Largest accepted performance score.
pub const MAX_PERFORMANCE_SCORE: u32 = 1_000_000;
/// Largest accepted objective weight.
pub const MAX_WEIGHT: u32 = 10_000;
/// Largest accepted preference weight.
pub const MAX_PREFERENCE_WEIGHT: u32 = 100;
/// The baseline performance score.
pub const BASELINE_PERFORMANCE_SCORE: u32 = 100;

/// One cloud (a member cluster in one provider and region) as the solver sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Cloud {
    /// Unique name (the CloudPool's name).
    pub name: String,
    /// Provider, e.g. `aws`. `surviveCloudLoss` treats all clouds of one provider as one
    /// failure domain; an empty provider makes the cloud a failure domain of its own.
    #[serde(default)]
    pub provider: String,
    /// Region, matched by services' allowed regions.
    #[serde(default)]
    pub region: String,
    /// Labels, matched by services' selectors and preferences.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Capacity available to the services of this snapshot, per resource, in base units: the
    /// effective capacity minus what other workloads use. It includes what the snapshot's
    /// services use now, since their replicas are being re-planned. A resource that is not
    /// listed has no capacity.
    #[serde(default)]
    pub capacity: BTreeMap<String, u64>,
    /// Price per resource in micro-USD per price unit and hour (see [`crate::units`]).
    /// Resources that are not listed cost nothing.
    #[serde(default)]
    pub prices: BTreeMap<String, u64>,
    /// Relative performance for AI work; 100 is the baseline.
    #[serde(default = "baseline_score")]
    pub performance_score: u32,
    /// Taints that keep services without a matching toleration away.
    #[serde(default)]
    pub taints: Vec<Taint>,
    /// A cordoned cloud takes no new replicas; replicas already there may stay.
    #[serde(default)]
    pub cordoned: bool,
    /// An unhealthy cloud (unreachable, unauthorised) takes no new replicas; the replicas
    /// it had are kept where they are (the controller decides when to give them up by
    /// removing them from the current placement).
    #[serde(default = "yes")]
    pub healthy: bool,
    /// A terminating cloud (its CloudPool is being deleted) takes no replicas at all.
    #[serde(default)]
    pub terminating: bool,
    /// Per resource, the most any single node can allocate (base units). A replica that needs
    /// more of a resource than this does not fit, whatever the aggregate capacity says.
    /// `None` when node shapes are unknown (no per-node check); a resource missing from a
    /// known shape counts as zero.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub largest_node: Option<BTreeMap<String, u64>>,
}

/// One service (an AIService) as the solver sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Service {
    /// Namespace of the service.
    pub namespace: String,
    /// Name of the service, unique within its namespace.
    pub name: String,
    /// Per-replica demand in base units.
    #[serde(default)]
    pub demand: BTreeMap<String, u64>,
    /// Desired replicas.
    pub desired: u32,
    /// Replicas that must survive the loss of one provider when `surviveCloudLoss` is set;
    /// `None` means all desired replicas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_replicas: Option<u32>,
    /// Priority: when capacity is short, higher priorities are placed first.
    #[serde(default)]
    pub priority: i32,
    /// Hard placement rules and soft preferences.
    #[serde(default)]
    pub placement: PlacementRules,
    /// Taints this service tolerates.
    #[serde(default)]
    pub tolerations: Vec<Toleration>,
    /// A replica moves away from where it runs only if the move saves at least this many
    /// percent of its objective value, 0 to 100.
    #[serde(default)]
    pub min_savings_percent: u32,
    /// Replicas running now, per cloud name. Clouds missing from the snapshot are allowed:
    /// their replicas count as lost and are re-placed.
    #[serde(default)]
    pub current: BTreeMap<String, u32>,
    /// Failover reserve held now (from the previous plan), per cloud name, in replicas. With
    /// it, a plan fed back as the current placement is reproduced exactly; without it the
    /// reserve is planned afresh around the running replicas.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub current_reserve: BTreeMap<String, u32>,
}

/// Where a service may and should run.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PlacementRules {
    /// Names of the clouds the service may use; `None` allows every cloud. Unknown names are
    /// allowed (the cloud may be registered later).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clouds: Option<Vec<String>>,
    /// Only clouds whose labels match are eligible.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloud_selector: Option<LabelSelector>,
    /// Data residency: only clouds in these regions are eligible; `None` allows every region.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regions: Option<Vec<String>>,
    /// Soft preferences; see [`Preference`].
    #[serde(default)]
    pub preferences: Vec<Preference>,
    /// Spread rules.
    #[serde(default)]
    pub spread: Spread,
    /// Objective weights.
    #[serde(default)]
    pub objective: ObjectiveWeights,
}

/// A soft preference: each replica on a matching cloud is worth `weight` percent of the
/// service's reference replica cost (see [`crate::model`]) in the objective.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Preference {
    /// Weight, 0 to 100.
    pub weight: u32,
    /// Clouds whose labels match get the weight.
    pub selector: LabelSelector,
}

/// Spread rules.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Spread {
    /// Run replicas in at least this many clouds (as far as replicas and eligible clouds
    /// allow). Default 1.
    #[serde(default = "one")]
    pub min_clouds: u32,
    /// At most this many replicas (running plus failover reserve) in any one cloud.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_replicas_per_cloud: Option<u32>,
    /// Survive the loss of any one provider: outside every provider, the running replicas
    /// plus the failover reserve kept free for this service add up to `minReplicas`.
    #[serde(default)]
    pub survive_cloud_loss: bool,
}

/// Weights of the objective's terms.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ObjectiveWeights {
    /// Weight of the hourly cost. Default 1.
    #[serde(default = "one")]
    pub cost_weight: u32,
    /// Weight of the clouds' performance score. Default 0.
    #[serde(default)]
    pub performance_weight: u32,
}

impl Default for Spread {
    fn default() -> Self {
        Spread {
            min_clouds: 1,
            max_replicas_per_cloud: None,
            survive_cloud_loss: false,
        }
    }
}

impl Default for ObjectiveWeights {
    fn default() -> Self {
        ObjectiveWeights {
            cost_weight: 1,
            performance_weight: 0,
        }
    }
}

fn one() -> u32 {
    1
}

fn yes() -> bool {
    true
}

fn baseline_score() -> u32 {
    BASELINE_PERFORMANCE_SCORE
}

impl Cloud {
    /// A healthy, uncordoned cloud with the given name and no capacity, prices or labels.
    pub fn new(name: impl Into<String>) -> Self {
        Cloud {
            name: name.into(),
            provider: String::new(),
            region: String::new(),
            labels: BTreeMap::new(),
            capacity: BTreeMap::new(),
            prices: BTreeMap::new(),
            performance_score: BASELINE_PERFORMANCE_SCORE,
            taints: Vec::new(),
            cordoned: false,
            healthy: true,
            terminating: false,
            largest_node: None,
        }
    }
}

impl Service {
    /// A service with the given key and desired replicas, no demand and default rules.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>, desired: u32) -> Self {
        Service {
            namespace: namespace.into(),
            name: name.into(),
            demand: BTreeMap::new(),
            desired,
            min_replicas: None,
            priority: 0,
            placement: PlacementRules::default(),
            tolerations: Vec::new(),
            min_savings_percent: 0,
            current: BTreeMap::new(),
            current_reserve: BTreeMap::new(),
        }
    }

    /// The service's key, `namespace/name`.
    pub fn key(&self) -> ServiceKey {
        ServiceKey {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
        }
    }

    /// The replicas that must survive the loss of one provider.
    pub fn survival_target(&self) -> u32 {
        self.min_replicas.unwrap_or(self.desired)
    }
}

/// A service's identity, ordered by namespace then name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ServiceKey {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// The parts a [`Snapshot`] is made of, before validation (also its serialized form).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SnapshotParts {
    /// The clouds.
    #[serde(default)]
    pub clouds: Vec<Cloud>,
    /// The services.
    #[serde(default)]
    pub services: Vec<Service>,
}

/// A validated solver input. Build it with [`Snapshot::new`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "SnapshotParts", into = "SnapshotParts")]
pub struct Snapshot {
    clouds: Vec<Cloud>,
    services: Vec<Service>,
}

impl TryFrom<SnapshotParts> for Snapshot {
    type Error = SnapshotError;

    fn try_from(parts: SnapshotParts) -> Result<Self, Self::Error> {
        Snapshot::new(parts.clouds, parts.services)
    }
}

impl From<Snapshot> for SnapshotParts {
    fn from(snapshot: Snapshot) -> Self {
        SnapshotParts {
            clouds: snapshot.clouds,
            services: snapshot.services,
        }
    }
}

impl Snapshot {
    /// Validates clouds and services into a snapshot. The order of either list does not
    /// matter: the solver's answer is the same for every order.
    ///
    /// # Errors
    /// [`SnapshotError`] naming the cloud or service, the field (with the resource name where
    /// there is one) and the rule broken.
    pub fn new(clouds: Vec<Cloud>, services: Vec<Service>) -> Result<Self, SnapshotError> {
        let mut names = BTreeSet::new();
        for cloud in &clouds {
            validate_cloud(cloud)?;
            if !names.insert(cloud.name.as_str()) {
                return Err(SnapshotError::DuplicateCloud(cloud.name.clone()));
            }
        }
        let mut keys = BTreeSet::new();
        for service in &services {
            validate_service(service)?;
            if !keys.insert((service.namespace.as_str(), service.name.as_str())) {
                return Err(SnapshotError::DuplicateService(service.key().to_string()));
            }
        }
        Ok(Snapshot { clouds, services })
    }

    /// The clouds, in the order given.
    pub fn clouds(&self) -> &[Cloud] {
        &self.clouds
    }

    /// The services, in the order given.
    pub fn services(&self) -> &[Service] {
        &self.services
    }

    /// Gives the parts back, e.g. to edit them for a what-if and validate again.
    pub fn into_parts(self) -> SnapshotParts {
        self.into()
    }
}

fn invalid(object: String, field: impl Into<String>, message: impl Into<String>) -> SnapshotError {
    SnapshotError::Invalid {
        object,
        field: field.into(),
        message: message.into(),
    }
}

fn validate_cloud(cloud: &Cloud) -> Result<(), SnapshotError> {
    let object = || format!("cloud {:?}", cloud.name);
    if cloud.name.is_empty() {
        return Err(invalid(object(), "name", "must not be empty"));
    }
    for (resource, &price) in &cloud.prices {
        if price > MAX_PRICE_MICRO_USD {
            return Err(invalid(
                object(),
                format!("prices[{resource}]"),
                format!(
                    "{price} micro-USD per unit-hour is above the limit of {MAX_PRICE_MICRO_USD}"
                ),
            ));
        }
    }
    for resource in cloud.capacity.keys().chain(cloud.prices.keys()) {
        if resource.is_empty() {
            return Err(invalid(object(), "capacity/prices", "empty resource name"));
        }
    }
    if cloud.performance_score > MAX_PERFORMANCE_SCORE {
        return Err(invalid(
            object(),
            "performanceScore",
            format!(
                "{} is above the limit of {MAX_PERFORMANCE_SCORE}",
                cloud.performance_score
            ),
        ));
    }
    for (index, taint) in cloud.taints.iter().enumerate() {
        if taint.key.is_empty() {
            return Err(invalid(
                object(),
                format!("taints[{index}].key"),
                "must not be empty",
            ));
        }
    }
    Ok(())
}

fn validate_service(service: &Service) -> Result<(), SnapshotError> {
    let object = || format!("service {}/{}", service.namespace, service.name);
    if service.namespace.is_empty() || service.name.is_empty() {
        return Err(invalid(object(), "namespace/name", "must not be empty"));
    }
    let within = |field: &str, value: u32, limit: u32| {
        if value > limit {
            Err(invalid(
                object(),
                field,
                format!("{value} is above the limit of {limit}"),
            ))
        } else {
            Ok(())
        }
    };
    within("desired", service.desired, MAX_REPLICAS)?;
    if let Some(min) = service.min_replicas
        && min > service.desired
    {
        return Err(invalid(
            object(),
            "minReplicas",
            format!("{min} is more than desired ({})", service.desired),
        ));
    }
    for resource in service.demand.keys() {
        if resource.is_empty() {
            return Err(invalid(object(), "demand", "empty resource name"));
        }
    }
    let placement = &service.placement;
    if let Some(selector) = &placement.cloud_selector {
        selector
            .check()
            .map_err(|message| invalid(object(), "placement.cloudSelector", message))?;
    }
    for (index, preference) in placement.preferences.iter().enumerate() {
        within(
            &format!("placement.preferences[{index}].weight"),
            preference.weight,
            MAX_PREFERENCE_WEIGHT,
        )?;
        preference.selector.check().map_err(|message| {
            invalid(
                object(),
                format!("placement.preferences[{index}].selector"),
                message,
            )
        })?;
    }
    let spread = &placement.spread;
    within(
        "placement.spread.minClouds",
        spread.min_clouds,
        MAX_REPLICAS,
    )?;
    if let Some(max) = spread.max_replicas_per_cloud {
        within("placement.spread.maxReplicasPerCloud", max, MAX_REPLICAS)?;
    }
    let weights = &placement.objective;
    within(
        "placement.objective.costWeight",
        weights.cost_weight,
        MAX_WEIGHT,
    )?;
    within(
        "placement.objective.performanceWeight",
        weights.performance_weight,
        MAX_WEIGHT,
    )?;
    within(
        "migration.minSavingsPercent",
        service.min_savings_percent,
        100,
    )?;
    for (cloud, &count) in &service.current {
        within(&format!("current[{cloud}]"), count, MAX_REPLICAS)?;
    }
    for (cloud, &count) in &service.current_reserve {
        within(&format!("currentReserve[{cloud}]"), count, MAX_REPLICAS)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicates_are_refused() {
        let err = Snapshot::new(vec![Cloud::new("a"), Cloud::new("a")], vec![]);
        assert_eq!(err, Err(SnapshotError::DuplicateCloud("a".to_owned())));
        let s = Service::new("ns", "x", 1);
        let err = Snapshot::new(vec![], vec![s.clone(), s]);
        assert_eq!(err, Err(SnapshotError::DuplicateService("ns/x".to_owned())));
    }

    #[test]
    fn errors_name_cloud_and_resource() {
        let mut cloud = Cloud::new("aws");
        cloud.prices.insert("nvidia.com/gpu".to_owned(), u64::MAX);
        let message = Snapshot::new(vec![cloud], vec![])
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(message.contains("aws"), "{message}");
        assert!(message.contains("prices[nvidia.com/gpu]"), "{message}");
    }

    #[test]
    fn deserializing_validates() {
        let json = r#"{"clouds":[{"name":"a"},{"name":"a"}]}"#;
        assert!(serde_json::from_str::<Snapshot>(json).is_err());
        let json = r#"{"services":[{"namespace":"n","name":"s","desired":2,"minReplicas":3}]}"#;
        assert!(serde_json::from_str::<Snapshot>(json).is_err());
        let json = r#"{"clouds":[{"name":"a","prices":{"cpu":1.5}}]}"#;
        assert!(serde_json::from_str::<Snapshot>(json).is_err());
    }
}
