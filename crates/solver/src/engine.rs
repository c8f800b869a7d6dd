//! The solve: decompose, build candidates, improve, search exactly where small, bound, and
//! explain.

use std::time::{Duration, Instant};

use crate::decompose::groups;
use crate::error::SolveError;
use crate::exact::{self, ExactLimits};
use crate::explain;
use crate::greedy::{Guide, construct, fill, proportional_split};
use crate::improve::{SearchLimits, improve};
use crate::lagrange;
use crate::lns::{self, LnsLimits};
use crate::model::Model;
use crate::plan::{Plan, SolveStatus};
use crate::snapshot::Snapshot;
use crate::state::State;

/// Limits and effort of a solve. The defaults suit the controller and `skyloom plan`.
#[derive(Clone, Debug, PartialEq)]
pub struct SolveOptions {
    /// Wall-clock budget. Heuristic stages always run (they are bounded by iteration
    /// counts, not by the clock); only exact search and further local search stop at the
    /// limit, and the status then says `timeLimited`.
    pub time_limit: Duration,
    /// Largest group (in integer variables) searched exactly.
    pub exact_max_vars: usize,
    /// Branch-and-bound nodes per stage of the exact search (a deterministic limit).
    pub exact_nodes_per_stage: u64,
    /// Local search passes per candidate.
    pub search_passes: usize,
    /// Subgradient iterations of the Lagrangian bound.
    pub bound_iterations: usize,
    /// Neighbourhoods re-solved exactly by large-neighbourhood search per group too large
    /// for exact search (a deterministic budget; 0 turns the phase off).
    pub lns_neighbourhoods: usize,
    /// Most integer variables in one such neighbourhood.
    pub lns_max_vars: usize,
    /// Branch-and-bound nodes per stage of each neighbourhood's exact search.
    pub lns_nodes_per_stage: u64,
}

impl Default for SolveOptions {
    fn default() -> Self {
        SolveOptions {
            time_limit: Duration::from_secs(30),
            exact_max_vars: 120,
            exact_nodes_per_stage: 2_000,
            search_passes: 12,
            bound_iterations: 400,
            lns_neighbourhoods: 25,
            lns_max_vars: 200,
            lns_nodes_per_stage: 200,
        }
    }
}

/// How one group was solved.
#[derive(Clone, Copy, Debug, Default)]
struct GroupOutcome {
    proven: bool,
    time_limited: bool,
}

/// Solves a snapshot.
///
/// # Errors
/// [`SolveError`] when a cost or value does not fit the engine's integer arithmetic.
pub fn solve(snapshot: &Snapshot, options: &SolveOptions) -> Result<Plan, SolveError> {
    let deadline = Instant::now().checked_add(options.time_limit);
    let model = Model::build(snapshot)?;
    let blind = model.without_current();
    let mut state = State::new(&model);
    let mut blind_state = State::new(&blind);
    let mut proven = true;
    let mut time_limited = false;
    for group in groups(&model) {
        let models = Models {
            model: &model,
            blind: &blind,
        };
        let outcome = solve_group(
            models,
            &mut state,
            &mut blind_state,
            &group,
            options,
            deadline,
        );
        proven &= outcome.proven;
        time_limited |= outcome.time_limited;
        // Keep the current-blind state in step for the next groups' capacity.
        let rows = extract(&state, &group);
        restore(&blind, &mut blind_state, &group, &rows);
    }
    let all: Vec<usize> = (0..model.services.len()).collect();
    let counts: Vec<u32> = state.evals.iter().map(|e| e.placed).collect();
    let value: i128 = state.evals.iter().map(|e| e.value).sum();
    let bound = lagrange::bound(
        &model,
        &all,
        &counts,
        value as f64,
        options.bound_iterations,
        1e-9,
    );
    let status = status(&model, &state, proven, time_limited, value, bound.bound);
    Ok(explain::plan(&model, &state, status, &bound))
}

fn status(
    model: &Model,
    state: &State,
    proven: bool,
    time_limited: bool,
    value: i128,
    bound: f64,
) -> SolveStatus {
    let score = state.score(model, &(0..model.services.len()).collect::<Vec<_>>());
    let placement_proven = proven || score.penalties.iter().all(|&p| p == 0);
    let value = value as f64;
    let gap = if proven {
        0.0
    } else {
        ((value - bound) / value.abs().max(bound.abs()).max(1.0)).max(0.0)
    };
    let closed = gap <= 1e-9 && score.moves == 0 && score.reserve == 0;
    if proven || (placement_proven && closed && !time_limited) {
        SolveStatus::Optimal
    } else {
        SolveStatus::Feasible {
            gap: (gap * 1e6).round() / 1e6,
            bound: explain::usd(bound.round() as i128),
            placement_proven,
            time_limited,
        }
    }
}

/// Rows of a group's services: (running, reserve) per service.
type Rows = Vec<(Vec<u32>, Vec<u32>)>;

fn extract(state: &State, group: &[usize]) -> Rows {
    group
        .iter()
        .map(|&j| (state.row(j).to_vec(), state.reserve_row(j).to_vec()))
        .collect()
}

fn restore(model: &Model, state: &mut State, group: &[usize], rows: &Rows) {
    for (&j, (x, r)) in group.iter().zip(rows) {
        state.set_rows(model, j, x, r);
    }
}

fn clear(model: &Model, state: &mut State, group: &[usize]) {
    for &j in group {
        state.clear(model, j);
    }
}

fn is_simple(model: &Model, j: usize) -> bool {
    let s = &model.services[j];
    s.survive_target == 0 && s.min_clouds <= 1
}

/// The model and its current-blind twin ([`Model::without_current`]).
#[derive(Clone, Copy)]
struct Models<'a> {
    model: &'a Model,
    blind: &'a Model,
}

fn solve_group(
    models: Models<'_>,
    state: &mut State,
    blind_state: &mut State,
    group: &[usize],
    options: &SolveOptions,
    deadline: Option<Instant>,
) -> GroupOutcome {
    let Models { model, blind } = models;
    let none = Guide::none(model);
    let mut outcome = GroupOutcome::default();
    if group.len() == 1 && is_simple(model, group[0]) {
        // A lone service without spread rules: each replica independently takes the best
        // cloud with room (staying where it runs when the move would not pay), which is
        // optimal.
        clear(model, state, group);
        construct(model, state, &none, group);
        outcome.proven = true;
        return outcome;
    }
    let candidate_limits = SearchLimits {
        passes: options.search_passes,
        stop_when_polishing: true,
        deadline,
    };

    // Candidates built without regard to where replicas run now (see
    // `Model::without_current`), so that they are the same from one solve to the next.
    //
    // LP-style rounding: the placement relaxation (volume algorithm) gives a fractional
    // placement and capacity prices; place its integer part, then what it would place at
    // those prices, then whatever still fits; improve.
    clear(blind, blind_state, group);
    construct(blind, blind_state, &none, group);
    let bonus = lagrange::tier_bonus(blind, group);
    let known = lagrange::placement_objective(blind, group, |j, i| blind_state.x(j, i), &bonus);
    let relaxation = lagrange::placement_relaxation(blind, group, known, options.bound_iterations);
    let mut guide = Guide {
        prices: relaxation.prices,
        cutoff: Some(relaxation.bonus),
    };
    clear(blind, blind_state, group);
    round_fractional(blind, blind_state, group, &relaxation.fractional);
    construct(blind, blind_state, &guide, group);
    guide.cutoff = None;
    construct(blind, blind_state, &guide, group);
    outcome.time_limited |= improve(blind, blind_state, &guide, group, candidate_limits);
    // Large groups: re-solve neighbourhoods of a few clouds exactly where replicas or spread
    // are missing (small groups are searched exactly below), then polish again.
    let small = exact::size(model, group) <= options.exact_max_vars;
    if !small && options.lns_neighbourhoods > 0 {
        let lns_limits = LnsLimits {
            neighbourhoods: options.lns_neighbourhoods,
            max_vars: options.lns_max_vars,
            nodes_per_stage: options.lns_nodes_per_stage,
            deadline,
        };
        let found = lns::search(blind, blind_state, group, lns_limits);
        outcome.time_limited |= found.time_limited;
        if found.improved {
            outcome.time_limited |= improve(blind, blind_state, &guide, group, candidate_limits);
        }
    }
    let rounded = extract(blind_state, group);
    let rounded_score = blind_state.score(blind, group);
    // The federators' proportional split, completed, so that the answer is never worse than
    // that baseline; improved only when it leads.
    clear(blind, blind_state, group);
    proportional_split(blind, blind_state, group);
    for &j in group {
        fill(blind, blind_state, &none, j);
    }
    let split = if blind_state
        .score(blind, group)
        .compare(&rounded_score)
        .is_lt()
    {
        outcome.time_limited |= improve(blind, blind_state, &none, group, candidate_limits);
        Some(extract(blind_state, group))
    } else {
        None
    };
    // Exact search of the current-blind problem where the group is small, from the better
    // of the two candidates. Even when a limit cuts it, its answer depends only on the
    // input, never on where replicas run now.
    let exact_limits = ExactLimits {
        nodes_per_stage: options.exact_nodes_per_stage,
        deadline,
    };
    let mut searched = None;
    if small && deadline.is_none_or(|d| Instant::now() < d) {
        let start = split.as_ref().unwrap_or(&rounded);
        clear(blind, blind_state, group);
        restore(blind, blind_state, group, start);
        if let Some(result) = exact::solve(blind, blind_state, group, exact_limits) {
            outcome.time_limited |= result.time_limited;
            let rows: Rows = result.x.into_iter().zip(result.r).collect();
            clear(blind, blind_state, group);
            restore(blind, blind_state, group, &rows);
            if is_feasible(blind, blind_state, group) {
                searched = Some(rows);
            }
        }
    }

    // With the real objective: what runs now, kept within the new caps and capacity and
    // filled, against the candidates above; the best is then improved until no move pays.
    let polish_limits = SearchLimits {
        passes: options.search_passes * 4,
        stop_when_polishing: false,
        deadline,
    };
    warm_start(model, state, group);
    construct(model, state, &none, group);
    if group
        .iter()
        .any(|&j| model.services[j].current.iter().any(|&c| c > 0))
    {
        // Re-planning reserves and fills around what runs now can differ from the answer
        // that put it there; improving it first lets that answer win again.
        outcome.time_limited |= improve(model, state, &none, group, polish_limits);
    }
    let mut best = extract(state, group);
    let mut best_score = state.score(model, group);
    for rows in std::iter::once(&rounded)
        .chain(split.as_ref())
        .chain(searched.as_ref())
    {
        clear(model, state, group);
        restore(model, state, group, rows);
        let score = state.score(model, group);
        if score.compare(&best_score).is_lt() {
            best = rows.clone();
            best_score = score;
        }
    }
    clear(model, state, group);
    restore(model, state, group, &best);
    outcome.time_limited |= improve(model, state, &none, group, polish_limits);
    best = extract(state, group);
    best_score = state.score(model, group);

    // Exact search of the real problem where the group is small, from the best answer so
    // far. Its answer is taken only when proven optimal: an answer cut short by a limit could
    // depend on where replicas run now, and feeding it back could then move replicas again.
    if small
        && deadline.is_none_or(|d| Instant::now() < d)
        && let Some(result) = exact::solve(model, state, group, exact_limits)
    {
        outcome.time_limited |= result.time_limited;
        if result.proven {
            let rows: Rows = result.x.into_iter().zip(result.r).collect();
            clear(model, state, group);
            restore(model, state, group, &rows);
            let score = state.score(model, group);
            if is_feasible(model, state, group) && score.compare(&best_score).is_le() {
                best = rows;
            }
            outcome.proven = true;
            clear(model, state, group);
            restore(model, state, group, &best);
        }
    }
    outcome
}

/// Whether the group's placement respects capacity and per-cloud caps (the exact search's
/// rounded answer is checked before it is trusted).
fn is_feasible(model: &Model, state: &State, group: &[usize]) -> bool {
    let n = model.cloud_count();
    (0..n).all(|i| state.within_capacity(model, i))
        && group.iter().all(|&j| {
            let s = &model.services[j];
            state.row(j).iter().sum::<u32>() <= s.desired
                && (0..n).all(|i| {
                    state.x(j, i) <= s.cap[i]
                        && state.x(j, i) + state.r(j, i) <= s.cap[i].max(s.hold_cap[i])
                        && (state.r(j, i) == 0 || s.admission[i].is_open())
                })
        })
}

/// Places what runs now (and the reserve held now), within caps; then, where a cloud is
/// over capacity, gives up reserve first, then replicas (lowest priority first, then
/// dearest) until it fits.
fn warm_start(model: &Model, state: &mut State, group: &[usize]) {
    clear(model, state, group);
    let n = model.cloud_count();
    for &j in group {
        let s = &model.services[j];
        let mut left = s.desired;
        for i in 0..n {
            let keep = s.current[i].min(s.cap[i]).min(left);
            if keep > 0 {
                state.change(model, j, i, i64::from(keep), 0);
                left -= keep;
            }
        }
        if s.survive_target > 0 {
            for i in 0..n {
                let room = s.cap[i].max(s.hold_cap[i]).saturating_sub(state.x(j, i));
                let reserve = s.current_reserve[i].min(room);
                if reserve > 0 && s.admission[i].is_open() {
                    state.change(model, j, i, 0, i64::from(reserve));
                }
            }
        }
    }
    for i in 0..n {
        if state.within_capacity(model, i) {
            continue;
        }
        for &j in group {
            while state.r(j, i) > 0 && !state.within_capacity(model, i) {
                state.change(model, j, i, 0, -1);
            }
        }
        let mut order: Vec<usize> = group
            .iter()
            .copied()
            .filter(|&j| state.x(j, i) > 0)
            .collect();
        order.sort_by(|&a, &b| {
            let (sa, sb) = (&model.services[a], &model.services[b]);
            sb.tier
                .cmp(&sa.tier)
                .then(sb.value[i].cmp(&sa.value[i]))
                .then(a.cmp(&b))
        });
        for j in order {
            while state.x(j, i) > 0 && !state.within_capacity(model, i) {
                state.change(model, j, i, -1, 0);
            }
        }
    }
    for &j in group {
        state.reeval(model, j);
    }
}

/// Places the integer part of a fractional placement, services in fill order, as far as
/// capacity allows.
fn round_fractional(model: &Model, state: &mut State, group: &[usize], fractional: &[f64]) {
    let n = model.cloud_count();
    for j in crate::greedy::fill_order(model, group) {
        let s = &model.services[j];
        let mut left = s.desired;
        for i in 0..n {
            let want = (fractional[j * n + i] + 1e-6).floor().max(0.0) as u32;
            let units = want.min(s.cap[i]).min(left).min(state.room(model, j, i));
            if units > 0 {
                state.change(model, j, i, i64::from(units), 0);
                left -= units;
            }
        }
        state.reeval(model, j);
    }
}
