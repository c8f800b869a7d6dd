//! Turns a solved model into a [`Plan`] with explanations.

use std::collections::BTreeMap;

use crate::eligibility::Admission;
use crate::lagrange::LagrangeBound;
use crate::model::{Model, by_resource};
use crate::plan::{
    CapacityBlock, CloudPlan, CloudReplicas, CloudVerdict, Limit, ObjectiveParts, Plan,
    PriorityPenalty, RuleBlock, ServiceExplanation, ServicePlan, ShadowPrice, Shortfall,
    SolveStatus, Totals, UnplacedExplanation, Verdict,
};
use crate::state::State;
use crate::units::{NANO_PER_USD, price_unit};

/// USD from nano-USD.
pub fn usd(nano: i128) -> f64 {
    nano as f64 / NANO_PER_USD as f64
}

/// Builds the plan for the placement in `state`.
pub fn plan(model: &Model, state: &State, status: SolveStatus, prices: &LagrangeBound) -> Plan {
    let services: Vec<ServicePlan> = (0..model.services.len())
        .map(|j| service_plan(model, state, j))
        .collect();
    let clouds: Vec<CloudPlan> = (0..model.cloud_count())
        .map(|i| cloud_plan(model, state, prices, i))
        .collect();
    let totals = Totals {
        cost_per_hour: usd(services_cost(model, state)),
        placed: state.evals.iter().map(|e| u64::from(e.placed)).sum(),
        unplaced: state.evals.iter().map(|e| u64::from(e.unplaced)).sum(),
        moves: state.evals.iter().map(|e| u64::from(e.moves)).sum(),
        reserve: state.evals.iter().map(|e| u64::from(e.reserve)).sum(),
    };
    Plan {
        status,
        services,
        clouds,
        totals,
        objective: objective_parts(model, state),
    }
}

fn services_cost(model: &Model, state: &State) -> i128 {
    (0..model.services.len())
        .map(|j| service_cost(model, state, j))
        .sum()
}

fn service_cost(model: &Model, state: &State, j: usize) -> i128 {
    let s = &model.services[j];
    (0..model.cloud_count())
        .map(|i| s.cost[i] * i128::from(state.x(j, i)))
        .sum()
}

fn objective_parts(model: &Model, state: &State) -> ObjectiveParts {
    let mut by_priority: Vec<PriorityPenalty> = model
        .tiers
        .iter()
        .map(|&priority| PriorityPenalty {
            priority,
            unplaced: 0,
            missing_clouds: 0,
            survival_shortfall: 0,
        })
        .collect();
    let (mut value, mut cost, mut perf, mut pref, mut bonus) = (0i128, 0i128, 0i128, 0i128, 0i128);
    for (j, s) in model.services.iter().enumerate() {
        let e = &state.evals[j];
        let tier = &mut by_priority[s.tier];
        tier.unplaced += u64::from(e.unplaced);
        tier.missing_clouds += u64::from(e.cloud_shortfall);
        tier.survival_shortfall += u64::from(e.survive_shortfall);
        value += e.value;
        for i in 0..model.cloud_count() {
            let x = i128::from(state.x(j, i));
            cost += i128::from(s.cost_weight) * s.cost[i] * x;
            perf += s.performance[i] * x;
            pref += s.preference[i] * x;
            bonus += s.stay_bonus[i] * i128::from(state.x(j, i).min(s.current[i]));
        }
    }
    ObjectiveParts {
        by_priority,
        value: usd(value),
        weighted_cost: usd(cost),
        performance: usd(perf),
        preference: usd(pref),
        stay_bonus: usd(bonus),
        moves: state.evals.iter().map(|e| u64::from(e.moves)).sum(),
        reserve: state.evals.iter().map(|e| u64::from(e.reserve)).sum(),
    }
}

/// Free capacity of `i` per model resource.
fn free(model: &Model, state: &State, i: usize) -> Vec<i128> {
    let rc = model.resource_count();
    (0..rc)
        .map(|k| model.clouds[i].capacity[k] - state.used[i * rc + k])
        .collect()
}

fn shortfalls(model: &Model, state: &State, j: usize, i: usize) -> Vec<Shortfall> {
    let demand = &model.services[j].demand;
    free(model, state, i)
        .iter()
        .enumerate()
        .filter(|&(k, &f)| demand[k] > f)
        .map(|(k, &f)| Shortfall {
            resource: model.resources[k].clone(),
            free: u64::try_from(f.max(0)).unwrap_or(u64::MAX),
            needs: u64::try_from(demand[k]).unwrap_or(u64::MAX),
        })
        .collect()
}

/// Whether `j` wants more replicas than it has on cloud `i` (unplaced replicas, a spread
/// shortfall, or a dearer cloud in use).
fn wants_more_on(model: &Model, state: &State, j: usize, i: usize) -> bool {
    let s = &model.services[j];
    let e = &state.evals[j];
    e.unplaced > 0
        || e.survive_shortfall > 0
        || e.cloud_shortfall > 0
        || (0..model.cloud_count()).any(|c| state.x(j, c) > 0 && s.value[c] > s.value[i])
}

fn service_plan(model: &Model, state: &State, j: usize) -> ServicePlan {
    let s = &model.services[j];
    let e = state.evals[j];
    let n = model.cloud_count();
    let placements: Vec<CloudReplicas> = (0..n)
        .filter(|&i| state.x(j, i) > 0 || state.r(j, i) > 0)
        .map(|i| CloudReplicas {
            cloud: model.clouds[i].name.clone(),
            replicas: state.x(j, i),
            reserve: state.r(j, i),
        })
        .collect();
    let chosen: Vec<usize> = (0..n).filter(|&i| state.x(j, i) > 0).collect();
    let worst_chosen = chosen
        .iter()
        .copied()
        .max_by(|&a, &b| s.value[a].cmp(&s.value[b]).then(b.cmp(&a)));
    let clouds: Vec<CloudVerdict> = (0..n)
        .map(|i| CloudVerdict {
            cloud: model.clouds[i].name.clone(),
            replicas: state.x(j, i),
            cost_per_replica: usd(s.cost[i]),
            verdict: verdict(model, state, j, i, worst_chosen),
        })
        .collect();
    let unplaced = (e.unplaced > 0).then(|| unplaced_explanation(model, state, j));
    let mut spread_shortfalls = Vec::new();
    if e.cloud_shortfall > 0 {
        let used = chosen.len();
        spread_shortfalls.push(format!(
            "minClouds {}: runs in {used} cloud(s); no other eligible cloud has room",
            s.min_clouds_asked
        ));
    }
    if e.survive_shortfall > 0 {
        spread_shortfalls.push(format!(
            "surviveCloudLoss: after losing the worst provider only {} of {} replicas can be held \
             (running plus reserve); no other eligible provider has room",
            s.survive_target.saturating_sub(e.survive_shortfall),
            s.survive_target
        ));
    }
    let cost = service_cost(model, state, j);
    let summary = summary(model, state, j, cost, unplaced.as_ref());
    ServicePlan {
        namespace: s.key.namespace.clone(),
        name: s.key.name.clone(),
        desired: s.desired,
        placed: e.placed,
        unplaced: e.unplaced,
        placements,
        cost_per_hour: usd(cost),
        moves: e.moves,
        explanation: ServiceExplanation {
            summary,
            clouds,
            unplaced,
            spread_shortfalls,
        },
    }
}

fn verdict(
    model: &Model,
    state: &State,
    j: usize,
    i: usize,
    worst_chosen: Option<usize>,
) -> Verdict {
    let s = &model.services[j];
    let x = state.x(j, i);
    if s.desired == 0 {
        return Verdict::NothingToPlace;
    }
    match &s.admission[i] {
        Admission::Closed(rules) => {
            return Verdict::Excluded {
                rules: rules.clone(),
            };
        }
        Admission::KeepOnly(rules) if x == 0 => {
            return Verdict::NoNewReplicas {
                rules: rules.clone(),
            };
        }
        _ => {}
    }
    let room = state.room(model, j, i);
    if x > 0 {
        let limit = if let Admission::KeepOnly(rules) = &s.admission[i] {
            Some(Limit::NoNewReplicas {
                rules: rules.clone(),
            })
        } else if x >= s.cap[i] && s.max_per_cloud == Some(s.cap[i]) {
            Some(Limit::SpreadCap {
                max_replicas_per_cloud: s.cap[i],
            })
        } else if room == 0 && x + state.r(j, i) < s.cap[i] && wants_more_on(model, state, j, i) {
            Some(Limit::Full {
                shortfalls: shortfalls(model, state, j, i),
            })
        } else {
            move_not_worth_it(model, state, j, i)
        };
        return Verdict::Chosen { limit };
    }
    if state.r(j, i) > 0 {
        return Verdict::FailoverReserve {
            replicas: state.r(j, i),
        };
    }
    if room == 0 {
        return Verdict::Full {
            shortfalls: shortfalls(model, state, j, i),
        };
    }
    match worst_chosen {
        Some(w) => Verdict::MoreExpensive {
            by_per_replica: usd((s.value[i] - s.value[w]).max(0)),
            than: model.clouds[w].name.clone(),
        },
        None => Verdict::Full {
            shortfalls: shortfalls(model, state, j, i),
        },
    }
}

/// For a chosen cloud with replicas that run there now: a cheaper cloud with room the
/// migration threshold keeps them from.
fn move_not_worth_it(model: &Model, state: &State, j: usize, i: usize) -> Option<Limit> {
    let s = &model.services[j];
    if s.current[i] == 0 || s.stay_bonus[i] == 0 {
        return None;
    }
    let cheaper = (0..model.cloud_count())
        .filter(|&c| {
            c != i
                && s.value[c] < s.value[i]
                && s.admission[c].is_open()
                && state.x(j, c) < s.cap[c]
                && state.room(model, j, c) > 0
        })
        .min_by(|&a, &b| s.value[a].cmp(&s.value[b]).then(a.cmp(&b)))?;
    let saving = (s.value[i] - s.value[cheaper]) as f64 / s.value[i].abs().max(1) as f64 * 100.0;
    Some(Limit::MoveNotWorthIt {
        cheaper: model.clouds[cheaper].name.clone(),
        saving_percent: (saving * 100.0).round() / 100.0,
        min_savings_percent: u32::try_from(s.stay_bonus[i] * 100 / s.value[i].abs().max(1))
            .unwrap_or(100),
    })
}

fn unplaced_explanation(model: &Model, state: &State, j: usize) -> UnplacedExplanation {
    let s = &model.services[j];
    let rc = model.resource_count();
    let mut rules: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut capacity = Vec::new();
    let mut spread_capped = Vec::new();
    for i in 0..model.cloud_count() {
        let name = model.clouds[i].name.clone();
        match &s.admission[i] {
            Admission::Closed(list) => {
                for rule in list {
                    rules
                        .entry(rule.to_string())
                        .or_default()
                        .push(name.clone());
                }
                continue;
            }
            Admission::KeepOnly(list) => {
                for rule in list {
                    rules
                        .entry(rule.to_string())
                        .or_default()
                        .push(name.clone());
                }
                continue;
            }
            Admission::Open { .. } => {}
        }
        if state.x(j, i) + state.r(j, i) >= s.cap[i] {
            spread_capped.push(name);
            continue;
        }
        if state.room(model, j, i) > 0 {
            continue;
        }
        let free = free(model, state, i);
        let missing: BTreeMap<String, u64> = (0..rc)
            .filter(|&k| s.demand[k] > free[k])
            .map(|k| {
                (
                    model.resources[k].clone(),
                    u64::try_from(s.demand[k] - free[k].max(0)).unwrap_or(u64::MAX),
                )
            })
            .collect();
        let short: Vec<usize> = (0..rc).filter(|&k| s.demand[k] > free[k]).collect();
        let mut holders: Vec<(f64, usize)> = (0..model.services.len())
            .filter(|&o| o != j && model.services[o].tier <= s.tier)
            .filter_map(|o| {
                let held = u64::from(state.x(o, i)) + u64::from(state.r(o, i));
                if held == 0 {
                    return None;
                }
                let share: f64 = short
                    .iter()
                    .map(|&k| {
                        model.services[o].demand[k] as f64 * held as f64
                            / model.clouds[i].capacity[k].max(1) as f64
                    })
                    .sum();
                (share > 0.0).then_some((share, o))
            })
            .collect();
        holders.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        capacity.push(CapacityBlock {
            cloud: name,
            missing,
            held_by: holders
                .iter()
                .take(3)
                .map(|&(_, o)| model.services[o].key.to_string())
                .collect(),
        });
    }
    UnplacedExplanation {
        replicas: state.evals[j].unplaced,
        rules: rules
            .into_iter()
            .map(|(rule, clouds)| RuleBlock { rule, clouds })
            .collect(),
        capacity,
        spread_capped,
    }
}

fn summary(
    model: &Model,
    state: &State,
    j: usize,
    cost: i128,
    unplaced: Option<&UnplacedExplanation>,
) -> String {
    let s = &model.services[j];
    let e = &state.evals[j];
    let mut text = if e.placed == 0 {
        format!("placed 0/{}", s.desired)
    } else {
        let parts: Vec<String> = (0..model.cloud_count())
            .filter(|&i| state.x(j, i) > 0)
            .map(|i| format!("{} {}", model.clouds[i].name, state.x(j, i)))
            .collect();
        format!(
            "placed {}/{} ({}), ${:.4}/h",
            e.placed,
            s.desired,
            parts.join(", "),
            usd(cost)
        )
    };
    if e.moves > 0 {
        text.push_str(&format!("; moves {}", e.moves));
    }
    if let Some(u) = unplaced {
        let mut reasons: Vec<String> = u
            .rules
            .iter()
            .map(|b| format!("{} ({})", b.rule, b.clouds.join(",")))
            .collect();
        for block in &u.capacity {
            let short: Vec<&str> = block.missing.keys().map(String::as_str).collect();
            reasons.push(format!("{} full on {}", block.cloud, short.join("+")));
        }
        if !u.spread_capped.is_empty() {
            reasons.push(format!(
                "maxReplicasPerCloud on {}",
                u.spread_capped.join(",")
            ));
        }
        text.push_str(&format!(
            "; {} unplaced: {}",
            u.replicas,
            reasons.join("; ")
        ));
    }
    text
}

fn cloud_plan(model: &Model, state: &State, prices: &LagrangeBound, i: usize) -> CloudPlan {
    let rc = model.resource_count();
    let mut used = vec![0i128; rc];
    let mut reserved = vec![0i128; rc];
    let mut cost = 0i128;
    for (j, s) in model.services.iter().enumerate() {
        let (x, r) = (i128::from(state.x(j, i)), i128::from(state.r(j, i)));
        for k in 0..rc {
            used[k] += s.demand[k] * x;
            reserved[k] += s.demand[k] * r;
        }
        cost += s.cost[i] * x;
    }
    let free = free(model, state, i);
    let mut binding = Vec::new();
    for k in 0..rc {
        let blocks = (0..model.services.len()).any(|j| {
            let s = &model.services[j];
            s.admission[i].is_open()
                && s.demand[k] > free[k]
                && state.x(j, i) + state.r(j, i) < s.cap[i]
                && wants_more_on(model, state, j, i)
        });
        if blocks {
            binding.push(model.resources[k].clone());
        }
    }
    let mut shadow_prices = BTreeMap::new();
    for k in 0..rc {
        let resource = &model.resources[k];
        let unit = price_unit(resource);
        let per_unit = prices.prices.get(i * rc + k).copied().unwrap_or(0.0)
            * unit.base_per_unit as f64
            / NANO_PER_USD as f64;
        let rounded = (per_unit * 1e6).round() / 1e6;
        if rounded > 0.0 {
            shadow_prices.insert(
                resource.clone(),
                ShadowPrice {
                    usd_per_hour: rounded,
                    unit: unit.name.to_owned(),
                },
            );
        }
    }
    CloudPlan {
        name: model.clouds[i].name.clone(),
        capacity: by_resource(model, &model.clouds[i].capacity),
        used: by_resource(model, &used),
        reserved: by_resource(model, &reserved),
        cost_per_hour: usd(cost),
        binding,
        shadow_prices,
    }
}
