//! Large-neighbourhood search: a few clouds at a time, every replica of the services there
//! (and of the services that miss replicas or spread and could go there) is freed and the
//! neighbourhood is re-solved exactly with microlp, the rest of the placement held fixed.
//!
//! Local search moves one replica, or trades one big replica for small ones, at a time; the
//! better placements on large tight instances trade big replicas for several small ones
//! across two clouds at once, which no single move reaches. Neighbourhoods are built from
//! the services with a penalty (unplaced replicas or spread shortfall): each cloud they
//! could use more of, alone, then pairs of the clouds most of them could use.
//!
//! The exact search of a neighbourhood asks for a strictly lower penalty than the placement
//! has (see [`exact::solve_within`]), so a neighbourhood with nothing to gain is usually
//! refused by its LP relaxation at once. Its answer is kept only when the lexicographic
//! objective strictly improves (a [`Trial`]). Everything is deterministic: neighbourhoods are built in a fixed
//! order from the placement alone, their number and the branch-and-bound nodes per stage
//! are bounded, and the clock only cuts the search at the solve's deadline.

use std::collections::BTreeSet;
use std::time::Instant;

use crate::exact::{self, ExactLimits};
use crate::model::Model;
use crate::state::{State, Trial};

/// How much large-neighbourhood search may do.
#[derive(Clone, Copy, Debug)]
pub struct LnsLimits {
    /// Most neighbourhoods solved (a deterministic budget).
    pub neighbourhoods: usize,
    /// Most integer variables in one neighbourhood.
    pub max_vars: usize,
    /// Branch-and-bound nodes per stage of each neighbourhood's exact search.
    pub nodes_per_stage: u64,
    /// Wall-clock deadline of the solve.
    pub deadline: Option<Instant>,
}

/// What a large-neighbourhood search did.
#[derive(Clone, Copy, Debug, Default)]
pub struct LnsOutcome {
    /// Whether some neighbourhood improved the placement.
    pub improved: bool,
    /// Whether the deadline cut the search.
    pub time_limited: bool,
}

/// Clouds, among those where replicas are missing, whose pairs are searched (the first
/// ones, most wanted first). Measured on the benchmark: 4 misses the tight 1,000 x 20
/// instance's better placement, 6 and more cost time for nothing more.
const PAIRED_CLOUDS: usize = 5;

/// Key of a neighbourhood's sub-problem on a given placement: its clouds, its services,
/// their rows and the capacity used on its clouds. The same key gives the same sub-problem,
/// hence the same answer, so it is not solved twice.
type Tried = (Vec<usize>, Vec<usize>, Vec<u32>, Vec<i128>);

/// Improves `state` on `group` by re-solving neighbourhoods exactly; see the module
/// documentation.
pub fn search(model: &Model, state: &mut State, group: &[usize], limits: LnsLimits) -> LnsOutcome {
    let mut outcome = LnsOutcome::default();
    let mut budget = limits.neighbourhoods;
    let mut tried: BTreeSet<Tried> = BTreeSet::new();
    loop {
        let mut improved = false;
        for clouds in neighbourhoods(model, state, group) {
            if budget == 0 {
                return outcome;
            }
            if limits.deadline.is_some_and(|d| Instant::now() >= d) {
                outcome.time_limited = true;
                return outcome;
            }
            let services = neighbourhood_services(model, state, group, &clouds, limits);
            if !services.iter().any(|&j| state.evals[j].penalty() > 0) {
                continue;
            }
            let rows: Vec<u32> = services
                .iter()
                .flat_map(|&j| state.row(j).iter().chain(state.reserve_row(j)).copied())
                .collect();
            let used: Vec<i128> = clouds
                .iter()
                .flat_map(|&i| state.used[i * state.rc..(i + 1) * state.rc].iter().copied())
                .collect();
            if !tried.insert((clouds.clone(), services.clone(), rows, used)) {
                continue;
            }
            budget -= 1;
            let mut free = vec![false; model.cloud_count()];
            for &i in &clouds {
                free[i] = true;
            }
            let exact_limits = ExactLimits {
                nodes_per_stage: limits.nodes_per_stage,
                deadline: limits.deadline,
            };
            let Some(result) =
                exact::solve_within(model, state, &services, &free, true, exact_limits)
            else {
                continue;
            };
            outcome.time_limited |= result.time_limited;
            if apply(model, state, &services, &clouds, &result.x, &result.r) {
                improved = true;
                outcome.improved = true;
            }
        }
        if !improved {
            return outcome;
        }
    }
}

/// Cloud sets to search: every cloud a service with a penalty could hold more on, most
/// missing replicas first, alone; then pairs of the first [`PAIRED_CLOUDS`] of them.
fn neighbourhoods(model: &Model, state: &State, group: &[usize]) -> Vec<Vec<usize>> {
    let n = model.cloud_count();
    let mut wanted = vec![0i64; n];
    for &j in group {
        let penalty = state.evals[j].penalty();
        if penalty == 0 {
            continue;
        }
        let s = &model.services[j];
        for (i, w) in wanted.iter_mut().enumerate() {
            if s.cap[i] > 0 && state.x(j, i) + state.r(j, i) < s.cap[i].max(s.hold_cap[i]) {
                *w += penalty;
            }
        }
    }
    let mut clouds: Vec<usize> = (0..n).filter(|&i| wanted[i] > 0).collect();
    clouds.sort_by(|&a, &b| wanted[b].cmp(&wanted[a]).then(a.cmp(&b)));
    let mut sets: Vec<Vec<usize>> = clouds.iter().map(|&i| vec![i]).collect();
    let top = &clouds[..clouds.len().min(PAIRED_CLOUDS)];
    for (p, &a) in top.iter().enumerate() {
        for &b in &top[p + 1..] {
            sets.push(vec![a.min(b), a.max(b)]);
        }
    }
    sets
}

/// Integer variables service `j` brings to a neighbourhood on `clouds` (as in
/// [`exact::size`]).
fn vars_on(model: &Model, j: usize, clouds: &[usize]) -> usize {
    let s = &model.services[j];
    clouds
        .iter()
        .filter(|&&i| s.cap[i] > 0)
        .map(|&i| {
            1 + usize::from(s.survive_target > 0 && s.admission[i].is_open())
                + usize::from(s.min_clouds >= 2)
        })
        .sum()
}

/// The services freed in a neighbourhood: those with a penalty that could go to `clouds`
/// (highest priority, then smallest first), then those holding replicas or reserve there
/// (biggest first); as many as `limits.max_vars` allows. Sorted.
fn neighbourhood_services(
    model: &Model,
    state: &State,
    group: &[usize],
    clouds: &[usize],
    limits: LnsLimits,
) -> Vec<usize> {
    let rc = model.resource_count();
    // Share of a cloud's capacity one replica takes on its fullest resource.
    let size = |j: usize| -> f64 {
        let demand = &model.services[j].demand_f;
        clouds
            .iter()
            .flat_map(|&i| {
                let capacity = &model.clouds[i].capacity;
                (0..rc)
                    .filter(move |&k| capacity[k] > 0)
                    .map(move |k| demand[k] / capacity[k] as f64)
            })
            .fold(0.0, f64::max)
    };
    let holds = |j: usize| clouds.iter().any(|&i| state.x(j, i) + state.r(j, i) > 0);
    let usable = |j: usize| clouds.iter().any(|&i| model.services[j].cap[i] > 0);
    let mut occupants: Vec<usize> = group
        .iter()
        .copied()
        .filter(|&j| holds(j) && state.evals[j].penalty() == 0)
        .collect();
    occupants.sort_by(|&a, &b| size(b).total_cmp(&size(a)).then(a.cmp(&b)));
    let mut waiting: Vec<usize> = group
        .iter()
        .copied()
        .filter(|&j| state.evals[j].penalty() > 0 && usable(j))
        .collect();
    waiting.sort_by(|&a, &b| {
        let (sa, sb) = (&model.services[a], &model.services[b]);
        sa.tier
            .cmp(&sb.tier)
            .then(size(a).total_cmp(&size(b)))
            .then(a.cmp(&b))
    });
    let mut chosen = Vec::new();
    let mut vars = 0;
    for j in waiting.into_iter().chain(occupants) {
        let more = vars_on(model, j, clouds);
        if more == 0 || vars + more > limits.max_vars {
            continue;
        }
        vars += more;
        chosen.push(j);
    }
    chosen.sort_unstable();
    chosen
}

/// Puts a neighbourhood's answer in place (rows per service in `services` order) and keeps
/// it only when it is within every cap and capacity and strictly improves the objective.
fn apply(
    model: &Model,
    state: &mut State,
    services: &[usize],
    clouds: &[usize],
    x: &[Vec<u32>],
    r: &[Vec<u32>],
) -> bool {
    let n = model.cloud_count();
    let within_caps = services.iter().zip(x.iter().zip(r)).all(|(&j, (x, r))| {
        let s = &model.services[j];
        x.len() == n
            && r.len() == n
            && x.iter().sum::<u32>() <= s.desired
            && (0..n).all(|i| {
                x[i] <= s.cap[i]
                    && x[i] + r[i] <= s.cap[i].max(s.hold_cap[i])
                    && (r[i] == 0 || s.admission[i].is_open())
            })
    });
    let changed = services
        .iter()
        .zip(x.iter().zip(r))
        .any(|(&j, (x, r))| state.row(j) != x.as_slice() || state.reserve_row(j) != r.as_slice());
    if !within_caps || !changed {
        return false;
    }
    let mut trial = Trial::begin(state, services);
    for &i in clouds {
        trial.touch(state, i);
    }
    for (&j, (x, r)) in services.iter().zip(x.iter().zip(r)) {
        state.set_rows(model, j, x, r);
    }
    trial.commit(model, state, false)
}
