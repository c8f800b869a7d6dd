//! From API objects to the solver's [`Snapshot`]: one code path for the controller and for
//! `skyloom plan`. Invalid values (unreadable quantities, prices out of range) are reported
//! per object and field; the object is left out and planning goes on for everyone else.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector as KubeSelector;
use skyloom_api::aiservice::TolerationOperator as ApiTolOp;
use skyloom_api::cloudpool::TaintEffect as ApiEffect;
use skyloom_api::{AIService, CloudPool};
use skyloom_solver::selector::{LabelSelector, Requirement, SelectorOperator};
use skyloom_solver::snapshot::{MAX_PERFORMANCE_SCORE, MAX_REPLICAS};
use skyloom_solver::taint::{Taint, TaintEffect, Toleration, TolerationOperator};
use skyloom_solver::{Cloud, ObjectiveWeights, PlacementRules, Preference, Service, Spread};

use crate::capacity::{POD_SLOTS, pod_requests};
use crate::quantity::to_base_units;

/// A value in an object that cannot be planned with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} {object}: field {field}: {message}")]
pub struct SpecIssue {
    /// `CloudPool` or `AIService`.
    pub kind: &'static str,
    /// `name` or `namespace/name`.
    pub object: String,
    /// Path of the field.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

/// What the controller knows about a pool beyond its spec.
#[derive(Debug, Clone, Default)]
pub struct PoolFacts {
    /// Discovered capacity available to Skyloom (allocatable minus foreign use), if known.
    pub discovered: Option<BTreeMap<String, u64>>,
    /// Largest node per resource, if known.
    pub largest_node: Option<BTreeMap<String, u64>>,
    /// Whether new replicas may go there (reachable, authorised).
    pub healthy: bool,
}

fn effect(e: ApiEffect) -> TaintEffect {
    match e {
        ApiEffect::NoSchedule => TaintEffect::NoSchedule,
        ApiEffect::PreferNoSchedule => TaintEffect::PreferNoSchedule,
        ApiEffect::NoExecute => TaintEffect::NoExecute,
    }
}

/// Pod slots of a cloud that neither its Nodes nor its CloudPool count: more than any
/// cluster holds, so the count never binds there.
pub const UNCOUNTED_POD_SLOTS: u64 = 1_000_000;

/// Every replica is a Pod, and a member's Nodes hold at most their allocatable `pods` each
/// (110 by default), whatever CPU they have left. When any cloud counts its Pod slots
/// (discovered from its Nodes, or declared in `spec.capacity`), every service asks for one
/// per replica and clouds that do not count theirs (in total or on their largest node) get
/// [`UNCOUNTED_POD_SLOTS`]. When none does (offline planning from declared capacity), nothing
/// changes.
pub fn count_pod_slots(clouds: &mut [Cloud], services: &mut [Service]) {
    if !clouds.iter().any(|c| c.capacity.contains_key(POD_SLOTS)) {
        return;
    }
    for cloud in clouds.iter_mut() {
        cloud
            .capacity
            .entry(POD_SLOTS.to_owned())
            .or_insert(UNCOUNTED_POD_SLOTS);
        if let Some(node) = cloud.largest_node.as_mut() {
            node.entry(POD_SLOTS.to_owned())
                .or_insert(UNCOUNTED_POD_SLOTS);
        }
    }
    for service in services.iter_mut() {
        service.demand.insert(POD_SLOTS.to_owned(), 1);
    }
}

/// The solver's view of a pool. The capacity is the smaller of the declared quota and what was
/// discovered; with nothing discovered (offline planning), the declared capacity.
pub fn cloud(pool: &CloudPool, facts: &PoolFacts) -> Result<Cloud, SpecIssue> {
    let name = pool.metadata.name.clone().unwrap_or_default();
    let issue = |field: String, message: String| SpecIssue {
        kind: "CloudPool",
        object: name.clone(),
        field,
        message,
    };
    let spec = &pool.spec;
    let mut declared = BTreeMap::new();
    for (res, q) in &spec.capacity {
        let v = to_base_units(res, &q.0)
            .map_err(|e| issue(format!("spec.capacity[{res}]"), e.to_string()))?;
        declared.insert(res.clone(), v);
    }
    let capacity = match &facts.discovered {
        None => declared,
        Some(found) => {
            let mut cap = found.clone();
            for (res, limit) in &declared {
                let e = cap.entry(res.clone()).or_insert(0);
                *e = (*e).min(*limit);
            }
            cap
        }
    };
    let mut prices = BTreeMap::new();
    for res in spec.prices.keys() {
        match spec.price(res) {
            Ok(Some(p)) => {
                prices.insert(res.clone(), p.0);
            }
            Ok(None) => {}
            Err(e) => return Err(issue(format!("spec.prices[{res}]"), e.to_string())),
        }
    }
    // The schema allows 1..=10000; objects that bypassed it (files for `skyloom plan`) are
    // checked here with the same bounds.
    let score = within("spec.performanceScore", spec.performance_score(), 1, 10_000)
        .map_err(|(field, message)| issue(field, message))?
        .min(MAX_PERFORMANCE_SCORE);
    let mut labels: BTreeMap<String, String> = pool.metadata.labels.clone().unwrap_or_default();
    labels
        .entry("skyloom.io/provider".into())
        .or_insert_with(|| spec.provider.clone());
    labels
        .entry("topology.kubernetes.io/region".into())
        .or_insert_with(|| spec.region.clone());
    Ok(Cloud {
        name: name.clone(),
        provider: spec.provider.clone(),
        region: spec.region.clone(),
        labels,
        capacity,
        prices,
        performance_score: score,
        taints: spec
            .taints
            .iter()
            .map(|t| Taint {
                key: t.key.clone(),
                value: t.value.clone().unwrap_or_default(),
                effect: effect(t.effect),
            })
            .collect(),
        cordoned: spec.is_cordoned(),
        healthy: facts.healthy,
        terminating: pool.metadata.deletion_timestamp.is_some(),
        largest_node: facts.largest_node.clone(),
    })
}

fn selector(sel: &KubeSelector) -> Result<LabelSelector, String> {
    let mut out = LabelSelector {
        match_labels: sel.match_labels.clone().unwrap_or_default(),
        match_expressions: Vec::new(),
    };
    for (i, r) in sel.match_expressions.iter().flatten().enumerate() {
        let operator = match r.operator.as_str() {
            "In" => SelectorOperator::In,
            "NotIn" => SelectorOperator::NotIn,
            "Exists" => SelectorOperator::Exists,
            "DoesNotExist" => SelectorOperator::DoesNotExist,
            other => {
                return Err(format!(
                    "matchExpressions[{i}].operator '{other}' is not In, NotIn, Exists or DoesNotExist"
                ));
            }
        };
        out.match_expressions.push(Requirement {
            key: r.key.clone(),
            operator,
            values: r.values.clone().unwrap_or_default(),
        });
    }
    Ok(out)
}

fn clamp(v: i32) -> u32 {
    u32::try_from(v).unwrap_or(0).min(MAX_REPLICAS)
}

/// Checks an integer field against the CRD schema's bounds: admission enforces them, but
/// objects reach `skyloom plan` (and older CRDs) without admission.
fn within(field: &str, value: i32, low: i32, high: i32) -> Result<u32, (String, String)> {
    if (low..=high).contains(&value) {
        Ok(clamp(value))
    } else {
        Err((
            field.to_owned(),
            format!("{value} is outside {low}..={high}"),
        ))
    }
}

/// The AIService fields the solver reads, checked against the schema's bounds.
fn check_bounds(spec: &skyloom_api::AIServiceSpec) -> Result<(), (String, String)> {
    use skyloom_api::aiservice::MAX_REPLICAS as API_MAX;
    within("spec.replicas", spec.replicas, 0, API_MAX)?;
    if let Some(min) = spec.min_replicas {
        within("spec.minReplicas", min, 0, spec.replicas.max(0))?;
    }
    if let Some(priority) = spec.priority {
        within("spec.priority", priority, 0, 1000)?;
    }
    let placement = spec.placement.clone().unwrap_or_default();
    for (i, p) in placement.preferences.iter().enumerate() {
        within(
            &format!("spec.placement.preferences[{i}].weight"),
            p.weight,
            1,
            100,
        )?;
    }
    let spread = spec.spread();
    if let Some(v) = spread.min_clouds {
        within("spec.placement.spread.minClouds", v, 1, 50)?;
    }
    if let Some(v) = spread.max_replicas_per_cloud {
        within("spec.placement.spread.maxReplicasPerCloud", v, 1, API_MAX)?;
    }
    let objective = spec.objective();
    let cost = within(
        "spec.placement.objective.costWeight",
        objective.cost_weight(),
        0,
        100,
    )?;
    let performance = within(
        "spec.placement.objective.performanceWeight",
        objective.performance_weight(),
        0,
        100,
    )?;
    if cost + performance == 0 {
        return Err((
            "spec.placement.objective".to_owned(),
            "costWeight and performanceWeight must not both be 0".to_owned(),
        ));
    }
    within(
        "spec.migration.minSavingsPercent",
        spec.migration().min_savings_percent(),
        0,
        100,
    )?;
    Ok(())
}

/// The solver's view of an AIService, with the replicas running now per cloud.
pub fn service(ais: &AIService, current: BTreeMap<String, u32>) -> Result<Service, SpecIssue> {
    let ns = ais.metadata.namespace.clone().unwrap_or_default();
    let name = ais.metadata.name.clone().unwrap_or_default();
    let issue = |field: String, message: String| SpecIssue {
        kind: "AIService",
        object: format!("{ns}/{name}"),
        field,
        message,
    };
    let spec = &ais.spec;
    check_bounds(spec).map_err(|(field, message)| issue(field, message))?;
    let pod_spec = spec
        .template
        .spec
        .as_ref()
        .ok_or_else(|| issue("spec.template.spec".into(), "is required".into()))?;
    // Unreadable quantities are rejected by the CRD schema; check again, naming the field.
    for (ci, c) in pod_spec.containers.iter().enumerate() {
        let res = c.resources.as_ref();
        for (what, map) in [
            ("requests", res.and_then(|r| r.requests.as_ref())),
            ("limits", res.and_then(|r| r.limits.as_ref())),
        ] {
            for (k, q) in map.into_iter().flatten() {
                to_base_units(k, &q.0).map_err(|e| {
                    issue(
                        format!("spec.template.spec.containers[{ci}].resources.{what}[{k}]"),
                        e.to_string(),
                    )
                })?;
            }
        }
    }
    let demand = pod_requests(pod_spec);
    let placement = spec.placement.clone().unwrap_or_default();
    let cloud_selector = placement
        .cloud_selector
        .as_ref()
        .map(selector)
        .transpose()
        .map_err(|m| issue("spec.placement.cloudSelector".into(), m))?;
    let mut preferences = Vec::new();
    for (i, p) in placement.preferences.iter().enumerate() {
        preferences.push(Preference {
            weight: u32::try_from(p.weight).unwrap_or(0).min(100),
            selector: selector(&p.selector)
                .map_err(|m| issue(format!("spec.placement.preferences[{i}].selector"), m))?,
        });
    }
    let s = spec.spread();
    let spread = Spread {
        min_clouds: clamp(s.min_clouds()).max(1),
        max_replicas_per_cloud: s.max_replicas_per_cloud.map(clamp),
        survive_cloud_loss: s.survive_cloud_loss(),
    };
    let o = spec.objective();
    let objective = ObjectiveWeights {
        cost_weight: clamp(o.cost_weight()).min(10_000),
        performance_weight: clamp(o.performance_weight()).min(10_000),
    };
    let tolerations = spec
        .tolerations
        .iter()
        .map(|t| Toleration {
            key: t.key.clone().unwrap_or_default(),
            operator: match t.operator() {
                ApiTolOp::Equal => TolerationOperator::Equal,
                ApiTolOp::Exists => TolerationOperator::Exists,
            },
            value: t.value.clone().unwrap_or_default(),
            effect: t.effect.map(effect),
        })
        .collect();
    Ok(Service {
        namespace: ns.clone(),
        name: name.clone(),
        demand,
        desired: clamp(spec.replicas),
        min_replicas: spec.min_replicas.map(clamp),
        priority: spec.priority(),
        placement: PlacementRules {
            clouds: placement.clouds.clone(),
            cloud_selector,
            regions: placement.regions.clone(),
            preferences,
            spread,
            objective,
        },
        tolerations,
        min_savings_percent: clamp(spec.migration().min_savings_percent()).min(100),
        current,
        current_reserve: BTreeMap::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_performance_score_outside_the_schema_bounds_is_an_issue_naming_the_field() {
        let pool: CloudPool = serde_json::from_value(serde_json::json!({
            "apiVersion": "skyloom.io/v1alpha1", "kind": "CloudPool", "metadata": {"name": "p"},
            "spec": {"provider": "aws", "region": "us-east-1", "kubeconfigSecretRef": {"name": "s"}, "performanceScore": -5}
        }))
        .unwrap();
        let err = cloud(&pool, &PoolFacts::default()).unwrap_err();
        assert_eq!(err.field, "spec.performanceScore");
        assert!(err.message.contains("-5"), "{}", err.message);
    }

    fn pool(name: &str, cpu_price: &str) -> CloudPool {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "skyloom.io/v1alpha1", "kind": "CloudPool", "metadata": {"name": name},
            "spec": {"provider": "aws", "region": "us-east-1", "kubeconfigSecretRef": {"name": "s"},
                     "prices": {"cpu": cpu_price}}
        }))
        .unwrap()
    }

    fn small_service(replicas: i32) -> AIService {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "skyloom.io/v1alpha1", "kind": "AIService",
            "metadata": {"name": "llm", "namespace": "ns"},
            "spec": {"replicas": replicas, "template": {"spec": {"containers": [{"name": "c",
                "image": "i", "resources": {"requests": {"cpu": "100m"}}}]}}}
        }))
        .unwrap()
    }

    fn discovered(cpu: u64, pods: Option<u64>) -> PoolFacts {
        let mut found = BTreeMap::from([("cpu".to_owned(), cpu)]);
        if let Some(p) = pods {
            found.insert(POD_SLOTS.to_owned(), p);
        }
        PoolFacts {
            discovered: Some(found.clone()),
            largest_node: Some(found),
            healthy: true,
        }
    }

    #[test]
    fn a_member_out_of_pod_slots_takes_no_more_replicas_whatever_cpu_it_has_left() {
        // The cheap member has CPU for 1,000 replicas but 3 Pod slots; the other does not
        // count its slots (its Nodes list no `pods`).
        let mut clouds = vec![
            cloud(&pool("cheap", "0.01"), &discovered(100_000, Some(3))).unwrap(),
            cloud(&pool("dear", "0.05"), &discovered(100_000, None)).unwrap(),
        ];
        let mut services = vec![service(&small_service(5), BTreeMap::new()).unwrap()];
        count_pod_slots(&mut clouds, &mut services);
        assert_eq!(services[0].demand[POD_SLOTS], 1);
        assert_eq!(clouds[1].capacity[POD_SLOTS], UNCOUNTED_POD_SLOTS);
        let snapshot = skyloom_solver::Snapshot::new(clouds, services).unwrap();
        let plan = skyloom_solver::solve(&snapshot, &Default::default()).unwrap();
        let placed: BTreeMap<&str, u32> = plan.services[0]
            .placements
            .iter()
            .map(|p| (p.cloud.as_str(), p.replicas))
            .collect();
        assert_eq!(placed, BTreeMap::from([("cheap", 3), ("dear", 2)]));
    }

    #[test]
    fn without_any_counted_pod_slots_nothing_changes() {
        let mut clouds = vec![cloud(&pool("p", "0.01"), &discovered(1_000, None)).unwrap()];
        let mut services = vec![service(&small_service(2), BTreeMap::new()).unwrap()];
        let before = (clouds.clone(), services.clone());
        count_pod_slots(&mut clouds, &mut services);
        assert_eq!((clouds, services), before);
    }
}
