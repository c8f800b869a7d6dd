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

/// Cloud sets to search: every cloud a service with a penalty could hold more on (or, short
/// of `minClouds`, does not use yet), most wanted first, alone; then pairs of the first
/// [`PAIRED_CLOUDS`] of them; then, for each such service in turn, pairs of a cloud it
/// wants with one where it holds replicas or reserve (to spread out what it has).
fn neighbourhoods(model: &Model, state: &State, group: &[usize]) -> Vec<Vec<usize>> {
    let n = model.cloud_count();
    let mut wanted = vec![0i64; n];
    // Per penalised service: the clouds it wants and those where it holds something.
    let mut spread: Vec<(Vec<usize>, Vec<usize>)> = Vec::new();
    for &j in group {
        let penalty = state.evals[j].penalty();
        if penalty == 0 {
            continue;
        }
        let s = &model.services[j];
        let short_of_clouds = state.evals[j].cloud_shortfall > 0;
        let (mut wants, mut holds) = (Vec::new(), Vec::new());
        for (i, w) in wanted.iter_mut().enumerate() {
            let (x, r) = (state.x(j, i), state.r(j, i));
            // Room for more here, or a cloud not used yet where reserve could run instead.
            let more = x + r < s.cap[i].max(s.hold_cap[i]);
            if s.cap[i] > 0 && (more || (short_of_clouds && x == 0)) {
                *w += penalty;
                wants.push(i);
            }
            if x + r > 0 {
                holds.push(i);
            }
        }
        spread.push((wants, holds));
    }
    let mut clouds: Vec<usize> = (0..n).filter(|&i| wanted[i] > 0).collect();
    clouds.sort_by(|&a, &b| wanted[b].cmp(&wanted[a]).then(a.cmp(&b)));
    let mut sets: Vec<Vec<usize>> = clouds.iter().map(|&i| vec![i]).collect();
    let mut pairs: Vec<(usize, usize)> = Vec::new();
    let top = &clouds[..clouds.len().min(PAIRED_CLOUDS)];
    for (p, &a) in top.iter().enumerate() {
        pairs.extend(top[p + 1..].iter().map(|&b| (a.min(b), a.max(b))));
    }
    for (wants, holds) in &spread {
        for &a in wants {
            pairs.extend(
                holds
                    .iter()
                    .filter(|&&b| b != a)
                    .map(|&b| (a.min(b), a.max(b))),
            );
        }
    }
    let mut seen = BTreeSet::new();
    sets.extend(
        pairs
            .into_iter()
            .filter(|&pair| seen.insert(pair))
            .map(|(a, b)| vec![a, b]),
    );
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

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::greedy::{Guide, construct};
    use crate::snapshot::{Cloud, Service, Snapshot};

    const GIB: u64 = 1 << 30;

    /// A cloud: cores, GPUs, provider (empty: its own failure domain).
    type CloudSpec = (u64, u64, &'static str);
    /// A service: millicores, GPUs, desired, minClouds, maxReplicasPerCloud,
    /// surviveCloudLoss.
    type ServiceSpec = (u64, u64, u32, u32, Option<u32>, bool);

    fn snapshot(clouds: &[CloudSpec], services: &[ServiceSpec]) -> Snapshot {
        let clouds = clouds
            .iter()
            .enumerate()
            .map(|(i, &(cores, gpus, provider))| {
                let mut cloud = Cloud::new(format!("c{i}"));
                cloud.provider = provider.to_owned();
                cloud.capacity.insert("cpu".to_owned(), cores * 1000);
                cloud.capacity.insert("memory".to_owned(), cores * 4 * GIB);
                cloud.capacity.insert("nvidia.com/gpu".to_owned(), gpus);
                let step = i as u64;
                cloud.prices.insert("cpu".to_owned(), 30_000 + 7_000 * step);
                cloud.prices.insert("memory".to_owned(), 2_000);
                cloud
                    .prices
                    .insert("nvidia.com/gpu".to_owned(), 1_000_000 + 90_000 * step);
                cloud
            })
            .collect();
        let services = services
            .iter()
            .enumerate()
            .map(
                |(j, &(millicores, gpus, desired, min_clouds, max, survive))| {
                    let mut service = Service::new("ns", format!("s{j}"), desired);
                    service.demand.insert("cpu".to_owned(), millicores);
                    service.demand.insert("memory".to_owned(), millicores << 20);
                    if gpus > 0 {
                        service.demand.insert("nvidia.com/gpu".to_owned(), gpus);
                    }
                    let spread = &mut service.placement.spread;
                    spread.min_clouds = min_clouds;
                    spread.max_replicas_per_cloud = max;
                    spread.survive_cloud_loss = survive;
                    service
                },
            )
            .collect();
        match Snapshot::new(clouds, services) {
            Ok(snapshot) => snapshot,
            Err(error) => panic!("invalid test snapshot: {error}"),
        }
    }

    fn instances() -> impl Strategy<Value = (Snapshot, Vec<bool>)> {
        let cloud = (
            0u64..=8,
            0u64..=4,
            prop::sample::select(vec!["p0", "p1", ""]),
        );
        let service = (
            (1u64..=12).prop_map(|q| q * 250),
            prop::sample::select(vec![0u64, 0, 1, 2]),
            1u32..=4,
            1u32..=3,
            prop::option::weighted(0.3, 1u32..=3),
            prop::bool::weighted(0.3),
        );
        (
            prop::collection::vec(cloud, 2..=4),
            prop::collection::vec(service, 1..=5),
        )
            .prop_flat_map(|(clouds, services)| {
                let free = prop::collection::vec(any::<bool>(), clouds.len());
                (Just(snapshot(&clouds, &services)), free)
            })
    }

    /// The model of `snapshot` and a greedy placement of all its services.
    fn start(snapshot: &Snapshot) -> (Model, State, Vec<usize>) {
        let model = match Model::build(snapshot) {
            Ok(model) => model,
            Err(error) => panic!("{error}"),
        };
        let group: Vec<usize> = (0..model.services.len()).collect();
        let mut state = State::new(&model);
        construct(&model, &mut state, &Guide::none(&model), &group);
        (model, state, group)
    }

    const LIMITS: ExactLimits = ExactLimits {
        nodes_per_stage: 2_000,
        deadline: None,
    };

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// A neighbourhood's exact answer leaves the clouds outside it as they were and keeps
        /// capacity, per-cloud caps, `desired` and where reserve may go; proven, it is no
        /// worse on any priority's penalty, and asking it to gain on its own answer gives
        /// nothing.
        #[test]
        fn solve_within_keeps_the_rest_and_every_rule((snapshot, free) in instances()) {
            let (model, state, group) = start(&snapshot);
            let Some(result) = exact::solve_within(&model, &state, &group, &free, false, LIMITS) else {
                return Ok(());
            };
            let n = model.cloud_count();
            let mut after = state.clone();
            for (g, &j) in group.iter().enumerate() {
                let s = &model.services[j];
                let (x, r) = (&result.x[g], &result.r[g]);
                for i in (0..n).filter(|&i| !free[i]) {
                    prop_assert_eq!((x[i], r[i]), (state.x(j, i), state.r(j, i)), "{} on c{}", j, i);
                }
                prop_assert!(x.iter().sum::<u32>() <= s.desired);
                for i in 0..n {
                    prop_assert!(x[i] <= s.cap[i] && x[i] + r[i] <= s.cap[i].max(s.hold_cap[i]));
                    prop_assert!(r[i] == 0 || s.admission[i].is_open());
                }
                after.set_rows(&model, j, x, r);
            }
            for i in 0..n {
                prop_assert!(after.within_capacity(&model, i), "c{} over capacity", i);
            }
            if result.proven {
                let (before, now) = (state.score(&model, &group), after.score(&model, &group));
                prop_assert!(now.penalties <= before.penalties, "{:?} > {:?}", now, before);
                let again = exact::solve_within(&model, &after, &group, &free, true, LIMITS);
                prop_assert!(again.is_none());
            }
        }

        /// Large-neighbourhood search never makes a placement worse, keeps it within
        /// capacity, and gives the same answer from the same start.
        #[test]
        fn search_only_improves((snapshot, _) in instances()) {
            let (model, state, group) = start(&snapshot);
            let limits = LnsLimits { neighbourhoods: 25, max_vars: 200, nodes_per_stage: 200, deadline: None };
            let mut first = state.clone();
            let outcome = search(&model, &mut first, &group, limits);
            let mut second = state.clone();
            search(&model, &mut second, &group, limits);
            prop_assert_eq!(&first.x, &second.x);
            prop_assert_eq!(&first.r, &second.r);
            let (before, after) = (state.score(&model, &group), first.score(&model, &group));
            prop_assert_eq!(outcome.improved, after.compare(&before).is_lt());
            prop_assert!(after.compare(&before).is_le());
            for i in 0..model.cloud_count() {
                prop_assert!(first.within_capacity(&model, i));
            }
        }
    }

    /// `spread` (3 replicas, `minClouds: 2`, `surviveCloudLoss`) runs all its replicas on c0
    /// with its reserve on c1, a cloud short. Only moving a replica to c1 and a reserve unit
    /// to c0 together fixes it: the pair {c0, c1} re-solved exactly does.
    #[test]
    fn a_pair_of_clouds_spreads_a_service_out() {
        // 1.75 and 1.25 cores per replica: spread takes 3 units in each cloud.
        let snapshot = snapshot(
            &[(6, 0, ""), (7, 0, "")],
            &[(1250, 0, 1, 1, None, false), (1750, 0, 3, 2, None, true)],
        );
        let (model, mut state, group) = start(&snapshot);
        for &j in &group {
            state.clear(&model, j);
        }
        state.set_rows(&model, 0, &[0, 1], &[0, 0]);
        state.set_rows(&model, 1, &[3, 0], &[0, 3]);
        assert_eq!(state.score(&model, &group).penalties, vec![1]);
        let limits = LnsLimits {
            neighbourhoods: 25,
            max_vars: 200,
            nodes_per_stage: 200,
            deadline: None,
        };
        let mut off = state.clone();
        let nothing = search(
            &model,
            &mut off,
            &group,
            LnsLimits {
                neighbourhoods: 0,
                ..limits
            },
        );
        assert!(!nothing.improved);
        let outcome = search(&model, &mut state, &group, limits);
        assert!(outcome.improved && !outcome.time_limited);
        assert_eq!(state.score(&model, &group).penalties, vec![0]);
        assert_eq!(state.row(1).iter().filter(|&&x| x > 0).count(), 2);
    }
}
