//! Exactness on tiny cases: the solver's objective equals the best found by enumerating
//! every placement, scored by an independent implementation of the model.

mod common;

use std::collections::BTreeMap;

use common::{domain, tiny_snapshots};
use proptest::prelude::*;
use skyloom_solver::eligibility::{Admission, admission};
use skyloom_solver::units::cost_nano;
use skyloom_solver::{Service, Snapshot, SolveOptions, SolveStatus, solve};

/// One service's options: (running, reserve) per cloud.
type Choice = (Vec<u32>, Vec<u32>);

/// Lexicographic score: penalties per priority (highest first), value, moves, reserve.
type Score = (Vec<i64>, i128, i64, i64);

fn caps(snapshot: &Snapshot, service: &Service) -> Vec<(u32, bool)> {
    snapshot
        .clouds()
        .iter()
        .map(|cloud| {
            let limit = service
                .placement
                .spread
                .max_replicas_per_cloud
                .unwrap_or(u32::MAX)
                .min(service.desired);
            match admission(service, cloud) {
                Admission::Open { .. } => (limit, true),
                Admission::KeepOnly(_) => (
                    service
                        .current
                        .get(&cloud.name)
                        .copied()
                        .unwrap_or(0)
                        .min(limit),
                    false,
                ),
                Admission::Closed(_) => (0, false),
            }
        })
        .collect()
}

fn choices(snapshot: &Snapshot, service: &Service) -> Vec<Choice> {
    let caps = caps(snapshot, service);
    let survive = service.placement.spread.survive_cloud_loss;
    let mut out = vec![(Vec::new(), Vec::new())];
    for &(cap, open) in &caps {
        let mut next = Vec::new();
        for (x, r) in &out {
            for xi in 0..=cap {
                let reserves = if survive && open { cap - xi } else { 0 };
                for ri in 0..=reserves {
                    let mut x = x.clone();
                    let mut r = r.clone();
                    x.push(xi);
                    r.push(ri);
                    if x.iter().sum::<u32>() <= service.desired {
                        next.push((x, r));
                    }
                }
            }
        }
        out = next;
    }
    out
}

fn score(snapshot: &Snapshot, picks: &[&Choice]) -> Option<Score> {
    let clouds = snapshot.clouds();
    // Capacity.
    let mut used: BTreeMap<(usize, &str), u128> = BTreeMap::new();
    for (service, (x, r)) in snapshot.services().iter().zip(picks) {
        for i in 0..clouds.len() {
            for (resource, &q) in &service.demand {
                *used.entry((i, resource.as_str())).or_default() +=
                    u128::from(q) * u128::from(x[i] + r[i]);
            }
        }
    }
    for ((i, resource), amount) in &used {
        if *amount > u128::from(clouds[*i].capacity.get(*resource).copied().unwrap_or(0)) {
            return None;
        }
    }
    let mut priorities: Vec<i32> = snapshot.services().iter().map(|s| s.priority).collect();
    priorities.sort_by(|a, b| b.cmp(a));
    priorities.dedup();
    let mut penalties = vec![0i64; priorities.len()];
    let (mut value, mut moves, mut reserve) = (0i128, 0i64, 0i64);
    for (service, (x, r)) in snapshot.services().iter().zip(picks) {
        let caps = caps(snapshot, service);
        let placed: u32 = x.iter().sum();
        let usable = caps.iter().filter(|c| c.0 > 0).count() as u32;
        let k = service
            .placement
            .spread
            .min_clouds
            .min(service.desired)
            .min(usable);
        let used_clouds = x.iter().filter(|&&v| v > 0).count() as u32;
        let mut penalty =
            i64::from(service.desired - placed) + i64::from(k.saturating_sub(used_clouds));
        if service.placement.spread.survive_cloud_loss {
            let mut held: BTreeMap<String, u64> = BTreeMap::new();
            for cloud in clouds {
                held.entry(domain(cloud)).or_default();
            }
            for (i, cloud) in clouds.iter().enumerate() {
                *held.entry(domain(cloud)).or_default() += u64::from(x[i] + r[i]);
            }
            let total: u64 = held.values().sum();
            let worst = held.values().copied().max().unwrap_or(0);
            penalty +=
                i64::try_from(u64::from(service.survival_target()).saturating_sub(total - worst))
                    .unwrap_or(0);
        }
        let tier = priorities
            .iter()
            .position(|&p| p == service.priority)
            .unwrap_or(0);
        penalties[tier] += penalty;
        for (i, cloud) in clouds.iter().enumerate() {
            let cost: i128 = service
                .demand
                .iter()
                .map(|(resource, &q)| {
                    cost_nano(
                        resource,
                        q,
                        cloud.prices.get(resource).copied().unwrap_or(0),
                    )
                    .unwrap_or(0)
                })
                .sum();
            let current = service.current.get(&cloud.name).copied().unwrap_or(0);
            // The objective counts whole micro-USD (half up), as documented in the model.
            let micro = |nano: i128| (nano + 500).div_euclid(1000) * 1000;
            let per_replica = micro(cost);
            let bonus = micro(per_replica * i128::from(service.min_savings_percent) / 100);
            value += per_replica * i128::from(x[i]) - bonus * i128::from(x[i].min(current));
            moves += i64::from(current.saturating_sub(x[i]));
            reserve += i64::from(r[i]);
        }
    }
    Some((penalties, value, moves, reserve))
}

/// Values within this many nano-USD count as equal (the engine's documented tolerance).
const VALUE_TOLERANCE_NANO: i128 = 10_000;

/// The optimum by goals, as documented: fewest penalties per priority; then the lowest value
/// (within the tolerance); among those, fewest moves, then least reserve, then lowest value.
fn brute_force(snapshot: &Snapshot) -> Option<Score> {
    let all = feasible(snapshot);
    let penalties = all.iter().map(|s| s.0.clone()).min()?;
    let same: Vec<&Score> = all.iter().filter(|s| s.0 == penalties).collect();
    let value = same.iter().map(|s| s.1).min()?;
    same.into_iter()
        .filter(|s| s.1 <= value + VALUE_TOLERANCE_NANO)
        .min_by_key(|s| (s.2, s.3, s.1))
        .cloned()
}

/// The score of every feasible placement.
fn feasible(snapshot: &Snapshot) -> Vec<Score> {
    let options: Vec<Vec<Choice>> = snapshot
        .services()
        .iter()
        .map(|s| choices(snapshot, s))
        .collect();
    let mut found = Vec::new();
    let mut index = vec![0usize; options.len()];
    loop {
        let picks: Vec<&Choice> = index
            .iter()
            .enumerate()
            .map(|(j, &c)| &options[j][c])
            .collect();
        if let Some(s) = score(snapshot, &picks) {
            found.push(s);
        }
        // Next combination.
        let mut j = 0;
        loop {
            if j == index.len() {
                return found;
            }
            index[j] += 1;
            if index[j] < options[j].len() {
                break;
            }
            index[j] = 0;
            j += 1;
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn matches_brute_force(snapshot in tiny_snapshots()) {
        let expected = brute_force(&snapshot);
        let plan = solve(&snapshot, &SolveOptions::default()).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&plan.status, &SolveStatus::Optimal);
        let got: Score = (
            plan.objective
                .by_priority
                .iter()
                .map(|p| i64::try_from(p.unplaced + p.missing_clouds + p.survival_shortfall).unwrap_or(i64::MAX))
                .collect(),
            (plan.objective.value * 1e9).round() as i128,
            i64::try_from(plan.totals.moves).unwrap_or(i64::MAX),
            i64::try_from(plan.totals.reserve).unwrap_or(i64::MAX),
        );
        prop_assert_eq!(Some(got), expected);
    }
}
