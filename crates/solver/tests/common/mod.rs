//! Shared helpers for the solver's integration tests: small random snapshots and an
//! independent checker of a plan against its snapshot.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use skyloom_solver::eligibility::{Admission, admission};
use skyloom_solver::selector::{LabelSelector, Requirement, SelectorOperator};
use skyloom_solver::taint::{Taint, TaintEffect, Toleration, TolerationOperator};
use skyloom_solver::{Cloud, Plan, Service, Snapshot, SnapshotError};

/// One GiB in bytes.
pub const GIB: u64 = 1 << 30;

fn cloud_strategy(index: usize) -> impl Strategy<Value = Cloud> {
    (
        (0usize..3, 0usize..3, any::<bool>()),
        (0u64..=8, 0u64..=32, prop::option::weighted(0.6, 0u64..=4)),
        (0u64..=80_000, 0u64..=6_000, 0u64..=3_000_000),
        (
            50u32..=300,
            prop::bool::weighted(0.1),
            prop::bool::weighted(0.1),
            prop::bool::weighted(0.05),
        ),
        (
            prop::option::weighted(0.2, 0u64..=2),
            prop::option::weighted(0.15, 0usize..2),
        ),
    )
        .prop_map(
            move |(
                (provider, region, eu),
                (cores, gib, gpus),
                (cpu_price, memory_price, gpu_price),
                (score, cordoned, unhealthy, terminating),
                (node_gpus, taint),
            )| {
                let mut cloud = Cloud::new(format!("c{index}"));
                cloud.provider = ["aws", "gcp", ""][provider].to_owned();
                cloud.region = ["r1", "r2", "r3"][region].to_owned();
                cloud.labels.insert(
                    "jurisdiction".to_owned(),
                    if eu { "eu" } else { "us" }.to_owned(),
                );
                cloud.capacity.insert("cpu".to_owned(), cores * 1000);
                cloud.capacity.insert("memory".to_owned(), gib * GIB);
                if let Some(g) = gpus {
                    cloud.capacity.insert("nvidia.com/gpu".to_owned(), g);
                    cloud.prices.insert("nvidia.com/gpu".to_owned(), gpu_price);
                }
                cloud.prices.insert("cpu".to_owned(), cpu_price);
                cloud.prices.insert("memory".to_owned(), memory_price);
                cloud.performance_score = score;
                cloud.cordoned = cordoned;
                cloud.healthy = !unhealthy;
                cloud.terminating = terminating;
                if let Some(g) = node_gpus {
                    cloud.largest_node = Some(BTreeMap::from([
                        ("cpu".to_owned(), 8000),
                        ("memory".to_owned(), 32 * GIB),
                        ("nvidia.com/gpu".to_owned(), g),
                    ]));
                }
                if let Some(effect) = taint {
                    cloud.taints.push(Taint {
                        key: "spot".to_owned(),
                        value: "true".to_owned(),
                        effect: [TaintEffect::NoSchedule, TaintEffect::PreferNoSchedule][effect],
                    });
                }
                cloud
            },
        )
}

fn service_strategy(index: usize, clouds: usize) -> impl Strategy<Value = Service> {
    (
        (0u64..=8, 0u64..=8, prop::option::weighted(0.3, 1u64..=2)),
        (
            0u32..=5,
            prop::option::weighted(0.3, 0u32..=5),
            prop::sample::select(vec![0, 0, 10]),
        ),
        (
            prop::option::weighted(0.2, prop::collection::btree_set(0..clouds, 0..=clouds)),
            prop::option::weighted(0.15, any::<bool>()),
            prop::option::weighted(0.15, 0usize..3),
        ),
        (
            1u32..=3,
            prop::option::weighted(0.3, 1u32..=3),
            prop::bool::weighted(0.2),
            prop::bool::weighted(0.2),
        ),
        (
            prop::sample::select(vec![0u32, 0, 10, 50]),
            prop::option::weighted(0.3, prop::collection::vec(0u32..=3, clouds)),
            prop::option::weighted(0.2, (0u32..=3, 0u32..=2)),
            prop::option::weighted(0.2, 0u32..=50),
        ),
    )
        .prop_map(
            move |(
                (quarter_cores, half_gib, gpus),
                (desired, min, priority),
                (allowed, eu, region),
                (min_clouds, max_per_cloud, survive, tolerates),
                (savings, current, weights, preference),
            )| {
                let mut service = Service::new("ns", format!("s{index}"), desired);
                service.demand.insert("cpu".to_owned(), quarter_cores * 250);
                service
                    .demand
                    .insert("memory".to_owned(), half_gib * GIB / 2);
                if let Some(g) = gpus {
                    service.demand.insert("nvidia.com/gpu".to_owned(), g);
                }
                service.min_replicas = min.map(|m| m.min(desired));
                service.priority = priority;
                let rules = &mut service.placement;
                rules.clouds = allowed.map(|set| set.iter().map(|i| format!("c{i}")).collect());
                rules.cloud_selector = eu.map(|eu| LabelSelector {
                    match_labels: BTreeMap::new(),
                    match_expressions: vec![Requirement {
                        key: "jurisdiction".to_owned(),
                        operator: if eu {
                            SelectorOperator::In
                        } else {
                            SelectorOperator::NotIn
                        },
                        values: vec!["eu".to_owned()],
                    }],
                });
                rules.regions = region.map(|r| vec![["r1", "r2", "r3"][r].to_owned()]);
                rules.spread.min_clouds = min_clouds;
                rules.spread.max_replicas_per_cloud = max_per_cloud;
                rules.spread.survive_cloud_loss = survive;
                if let Some((cost, performance)) = weights {
                    rules.objective.cost_weight = cost;
                    rules.objective.performance_weight = performance;
                }
                if let Some(weight) = preference {
                    rules.preferences.push(skyloom_solver::Preference {
                        weight,
                        selector: LabelSelector {
                            match_labels: BTreeMap::from([(
                                "jurisdiction".to_owned(),
                                "eu".to_owned(),
                            )]),
                            match_expressions: Vec::new(),
                        },
                    });
                }
                if tolerates {
                    service.tolerations.push(Toleration {
                        key: "spot".to_owned(),
                        operator: TolerationOperator::Exists,
                        ..Toleration::default()
                    });
                }
                service.min_savings_percent = savings;
                if let Some(current) = current {
                    for (i, count) in current.into_iter().enumerate() {
                        if count > 0 {
                            service.current.insert(format!("c{i}"), count);
                        }
                    }
                }
                service
            },
        )
}

/// Random snapshots with up to `max_clouds` clouds and `max_services` services.
pub fn snapshots(max_clouds: usize, max_services: usize) -> impl Strategy<Value = Snapshot> {
    (1..=max_clouds, 1..=max_services).prop_flat_map(|(clouds, services)| {
        let cloud_list: Vec<_> = (0..clouds).map(cloud_strategy).collect();
        let service_list: Vec<_> = (0..services).map(|j| service_strategy(j, clouds)).collect();
        (cloud_list, service_list).prop_map(|(clouds, services)| {
            match Snapshot::new(clouds, services) {
                Ok(snapshot) => snapshot,
                Err(error) => panic!("generated an invalid snapshot: {error}"),
            }
        })
    })
}

/// The replicas (and reserve) of a plan per (service name, cloud name).
pub fn placements(plan: &Plan) -> BTreeMap<(String, String), (u32, u32)> {
    plan.services
        .iter()
        .flat_map(|s| {
            s.placements
                .iter()
                .map(move |p| ((s.name.clone(), p.cloud.clone()), (p.replicas, p.reserve)))
        })
        .collect()
}

/// The failure domain of a cloud, as the solver defines it.
pub fn domain(cloud: &Cloud) -> String {
    if cloud.provider.is_empty() {
        format!("cloud/{}", cloud.name)
    } else {
        cloud.provider.clone()
    }
}

/// Checks every hard rule of `plan` against `snapshot`; returns the first violation.
pub fn check_plan(snapshot: &Snapshot, plan: &Plan) -> Result<(), String> {
    let clouds: BTreeMap<&str, &Cloud> = snapshot
        .clouds()
        .iter()
        .map(|c| (c.name.as_str(), c))
        .collect();
    let mut used: BTreeMap<(String, String), u128> = BTreeMap::new();
    let domains: BTreeSet<String> = snapshot.clouds().iter().map(domain).collect();
    for service in snapshot.services() {
        let Some(result) = plan
            .services
            .iter()
            .find(|s| s.namespace == service.namespace && s.name == service.name)
        else {
            return Err(format!("{} missing from the plan", service.name));
        };
        let placed: u32 = result.placements.iter().map(|p| p.replicas).sum();
        if placed != result.placed || result.placed + result.unplaced != service.desired {
            return Err(format!(
                "{}: placed {placed}/{} + unplaced {} != desired {}",
                service.name, result.placed, result.unplaced, service.desired
            ));
        }
        let mut held_by_domain: BTreeMap<String, u64> = BTreeMap::new();
        let mut clouds_used = 0;
        for p in &result.placements {
            let Some(cloud) = clouds.get(p.cloud.as_str()) else {
                return Err(format!(
                    "{} placed on unknown cloud {}",
                    service.name, p.cloud
                ));
            };
            if p.replicas > 0 {
                clouds_used += 1;
            }
            match admission(service, cloud) {
                Admission::Closed(rules) => {
                    return Err(format!(
                        "{} on excluded {}: {rules:?}",
                        service.name, p.cloud
                    ));
                }
                Admission::KeepOnly(rules) => {
                    let current = service.current.get(&p.cloud).copied().unwrap_or(0);
                    if p.replicas > current || p.reserve > 0 {
                        return Err(format!(
                            "{} grew on {} closed to new replicas ({rules:?})",
                            service.name, p.cloud
                        ));
                    }
                }
                Admission::Open { .. } => {}
            }
            if let Some(max) = service.placement.spread.max_replicas_per_cloud
                && p.replicas + p.reserve > max
            {
                return Err(format!(
                    "{} exceeds maxReplicasPerCloud on {}",
                    service.name, p.cloud
                ));
            }
            if let Some(node) = &cloud.largest_node {
                for (resource, &need) in &service.demand {
                    if need > node.get(resource).copied().unwrap_or(0) {
                        return Err(format!(
                            "{} does not fit a node of {}",
                            service.name, p.cloud
                        ));
                    }
                }
            }
            for (resource, &need) in &service.demand {
                *used.entry((p.cloud.clone(), resource.clone())).or_default() +=
                    u128::from(need) * u128::from(p.replicas + p.reserve);
            }
            *held_by_domain.entry(domain(cloud)).or_default() += u64::from(p.replicas + p.reserve);
        }
        // Reported spread shortfalls match the placement.
        let usable = snapshot
            .clouds()
            .iter()
            .filter(|c| match admission(service, c) {
                Admission::Open { .. } => true,
                Admission::KeepOnly(_) => service.current.get(&c.name).copied().unwrap_or(0) > 0,
                Admission::Closed(_) => false,
            })
            .count() as u32;
        let min_clouds = service
            .placement
            .spread
            .min_clouds
            .min(service.desired)
            .min(usable);
        let missing_clouds = min_clouds.saturating_sub(clouds_used);
        let mut missing_survival = 0;
        if service.placement.spread.survive_cloud_loss {
            let target = u64::from(service.survival_target());
            let total: u64 = held_by_domain.values().sum();
            let worst = domains
                .iter()
                .map(|d| held_by_domain.get(d).copied().unwrap_or(0))
                .max()
                .unwrap_or(0);
            missing_survival = target.saturating_sub(total - worst);
        }
        let reported = !result.explanation.spread_shortfalls.is_empty();
        if reported != (missing_clouds > 0 || missing_survival > 0) {
            return Err(format!(
                "{}: spread shortfall reported {reported} but missing clouds {missing_clouds}, \
                 survival {missing_survival}",
                service.name
            ));
        }
    }
    for ((cloud, resource), amount) in used {
        let capacity = clouds[cloud.as_str()]
            .capacity
            .get(&resource)
            .copied()
            .unwrap_or(0);
        if amount > u128::from(capacity) {
            return Err(format!(
                "{cloud} over capacity on {resource}: {amount} > {capacity}"
            ));
        }
    }
    Ok(())
}

/// Tiny snapshots for brute force: at most 3 clouds and 3 services with at most 3 replicas
/// (2 with survivability), cost-only objectives, no soft taints or preferences.
pub fn tiny_snapshots() -> impl Strategy<Value = Snapshot> {
    snapshots(3, 3).prop_map(|snapshot| {
        let mut parts = snapshot.into_parts();
        for cloud in &mut parts.clouds {
            cloud
                .taints
                .retain(|t| t.effect != TaintEffect::PreferNoSchedule);
        }
        for service in &mut parts.services {
            let limit = if service.placement.spread.survive_cloud_loss {
                2
            } else {
                3
            };
            service.desired = service.desired.min(limit);
            service.min_replicas = service.min_replicas.map(|m| m.min(service.desired));
            service.placement.objective = skyloom_solver::ObjectiveWeights::default();
            service.placement.preferences.clear();
        }
        match Snapshot::new(parts.clouds, parts.services) {
            Ok(snapshot) => snapshot,
            Err(error) => panic!("tiny snapshot invalid: {error}"),
        }
    })
}

/// A random snapshot and the same snapshot with its clouds and services in another order.
pub fn shuffled_snapshots(
    max_clouds: usize,
    max_services: usize,
) -> impl Strategy<Value = (Snapshot, Snapshot)> {
    snapshots(max_clouds, max_services)
        .prop_flat_map(|s| {
            let clouds: Vec<usize> = (0..s.clouds().len()).collect();
            let services: Vec<usize> = (0..s.services().len()).collect();
            (
                Just(s),
                Just(clouds).prop_shuffle(),
                Just(services).prop_shuffle(),
            )
        })
        .prop_map(|(snapshot, cloud_order, service_order)| {
            let parts = snapshot.clone().into_parts();
            let clouds = cloud_order
                .iter()
                .map(|&i| parts.clouds[i].clone())
                .collect();
            let services = service_order
                .iter()
                .map(|&j| parts.services[j].clone())
                .collect();
            match Snapshot::new(clouds, services) {
                Ok(shuffled) => (snapshot, shuffled),
                Err(error) => panic!("shuffled snapshot invalid: {error}"),
            }
        })
}

/// `snapshot` with `plan`'s replicas and reserve as what runs now.
pub fn with_current(snapshot: Snapshot, plan: &Plan) -> Result<Snapshot, SnapshotError> {
    let mut parts = snapshot.into_parts();
    for service in &mut parts.services {
        let found = plan
            .services
            .iter()
            .find(|s| s.namespace == service.namespace && s.name == service.name);
        let placements = found.map(|s| s.placements.as_slice()).unwrap_or_default();
        service.current = placements
            .iter()
            .filter(|p| p.replicas > 0)
            .map(|p| (p.cloud.clone(), p.replicas))
            .collect();
        service.current_reserve = placements
            .iter()
            .filter(|p| p.reserve > 0)
            .map(|p| (p.cloud.clone(), p.reserve))
            .collect();
    }
    Snapshot::new(parts.clouds, parts.services)
}
