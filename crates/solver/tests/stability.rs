//! Stability on a realistic instance: a small capacity change moves only what it must, and
//! an answer fed back as the current placement moves nothing.

mod common;
#[path = "../examples/bench/generate.rs"]
#[allow(dead_code)]
mod generate;

use std::collections::BTreeMap;

use skyloom_solver::{Plan, Snapshot, SolveOptions, solve};

fn replicas(plan: &Plan) -> BTreeMap<(String, String), u32> {
    plan.services
        .iter()
        .flat_map(|s| {
            s.placements
                .iter()
                .filter(|p| p.replicas > 0)
                .map(move |p| {
                    (
                        (format!("{}/{}", s.namespace, s.name), p.cloud.clone()),
                        p.replicas,
                    )
                })
        })
        .collect()
}

/// The snapshot with `plan` (replicas and reserve) as the current placement and every
/// service's migration threshold set to `savings` percent.
fn with_current(snapshot: &Snapshot, plan: &Plan, savings: u32) -> Snapshot {
    let mut parts = snapshot.clone().into_parts();
    for service in &mut parts.services {
        service.min_savings_percent = savings;
    }
    match Snapshot::new(parts.clouds, parts.services)
        .and_then(|snapshot| common::with_current(snapshot, plan))
    {
        Ok(snapshot) => snapshot,
        Err(error) => panic!("{error}"),
    }
}

#[test]
fn a_fixed_point_moves_nothing_on_a_realistic_instance() {
    let snapshot = generate::instance(150, 10, 7, true);
    let options = SolveOptions::default();
    let first = solve(&snapshot, &options).expect("solves");
    let again = with_current(&snapshot, &first, 10);
    let second = solve(&again, &options).expect("solves");
    assert_eq!(second.totals.moves, 0);
    assert_eq!(replicas(&first), replicas(&second));
}

#[test]
fn one_percent_less_capacity_moves_only_what_must_move() {
    let snapshot = generate::instance(150, 10, 7, false);
    let options = SolveOptions::default();
    let first = solve(&snapshot, &options).expect("solves");
    let current = with_current(&snapshot, &first, 10);
    // Shrink the busiest cloud's CPU by 1 %.
    let busiest = first
        .clouds
        .iter()
        .max_by_key(|c| c.used.get("cpu").copied().unwrap_or(0))
        .map(|c| c.name.clone())
        .expect("has clouds");
    let mut parts = current.clone().into_parts();
    for cloud in &mut parts.clouds {
        if cloud.name == busiest
            && let Some(cpu) = cloud.capacity.get_mut("cpu")
        {
            *cpu -= *cpu / 100;
        }
    }
    let shrunk = Snapshot::new(parts.clouds, parts.services).expect("valid");
    let second = solve(&shrunk, &options).expect("solves");
    // Only a handful of replicas move (those evicted, and the few moves that then pay for
    // themselves), not the hundreds a fresh solve would shuffle — unless the new solve places
    // more replicas than before, which outranks moving few (goal 1 before goal 3).
    let placed = second.totals.placed;
    let penalty = |plan: &Plan| -> Vec<u64> {
        plan.objective
            .by_priority
            .iter()
            .map(|p| p.unplaced + p.missing_clouds + p.survival_shortfall)
            .collect()
    };
    if penalty(&second) >= penalty(&first) {
        // The evicted replicas, plus chains of moves that together save at least the
        // migration threshold on every replica they move.
        assert!(
            second.totals.moves <= (placed * 3 / 100).max(3),
            "moves {} of {placed} placed",
            second.totals.moves
        );
        let fresh_input = Snapshot::new(
            shrunk.clouds().to_vec(),
            shrunk
                .services()
                .iter()
                .cloned()
                .map(|mut s| {
                    s.current.clear();
                    s.current_reserve.clear();
                    s
                })
                .collect(),
        )
        .expect("valid");
        let fresh = solve(&fresh_input, &options).expect("solves");
        let before = replicas(&first);
        let reshuffled = replicas(&fresh)
            .into_iter()
            .filter(|(k, count)| before.get(k).copied().unwrap_or(0) > *count)
            .count();
        assert!(
            reshuffled > 3 * usize::try_from(second.totals.moves).unwrap_or(0),
            "a fresh solve differs little ({reshuffled})"
        );
    }
}
