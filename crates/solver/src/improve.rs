//! Local search: moves that improve the lexicographic objective, tried until none does.
//!
//! Neighbourhoods, per service in fill order:
//! - fill: place missing replicas where capacity has become free;
//! - relocate: move one replica to a cloud where it is worth less (cheaper);
//! - eject: make room on a full cloud by moving (or, for lower priorities, unplacing) a few
//!   replicas of another service, then relocate or place a replica there;
//! - reserve: re-plan a survivable service's failover reserve.
//!
//! Every move is a [`Trial`]: applied, checked against capacity, kept only if the objective
//! strictly improves. The search is deterministic (fixed orders, no clock).

use std::time::Instant;

use crate::greedy::{Guide, construct, fill, fill_order, marginal_key, plan_reserve, trim_reserve};
use crate::model::Model;
use crate::state::{State, Trial};

/// How long local search runs.
#[derive(Clone, Copy, Debug)]
pub struct SearchLimits {
    /// Most passes.
    pub passes: usize,
    /// Stop once a pass leaves the penalties unchanged and improves the value by less than
    /// 0.01 % (a deterministic rule). Off, the search runs until no move improves.
    pub stop_when_polishing: bool,
    /// Wall-clock deadline.
    pub deadline: Option<Instant>,
}

/// Most replicas of another service moved to make room for one replica.
const MAX_EJECTED_UNITS: u32 = 8;
/// Most occupants of a cloud examined per ejection attempt.
const MAX_EJECTION_CANDIDATES: usize = 24;

/// Improves `state` on `group` for at most `passes` passes or until `deadline`; returns
/// whether the deadline cut the search.
pub fn improve(
    model: &Model,
    state: &mut State,
    guide: &Guide,
    group: &[usize],
    limits: SearchLimits,
) -> bool {
    let SearchLimits {
        passes,
        stop_when_polishing,
        deadline,
    } = limits;
    let order = fill_order(model, group);
    let none = Guide::none(model);
    // Sum of the versions of the clouds each service would move to when it was last
    // examined: a service none of whose attractive clouds gained room since has nothing new
    // to try. Attractive: every usable cloud while the service misses replicas or spread,
    // else the clouds with a lower value than its dearest replica.
    let mut seen: Vec<Option<u64>> = vec![None; model.services.len()];
    let mut traded: Vec<Option<(u64, u64)>> = vec![None; model.cloud_count()];
    let stamp = |state: &State, j: usize| -> u64 {
        let s = &model.services[j];
        let n = model.cloud_count();
        let wants_any = state.evals[j].penalty() > 0;
        let dearest = (0..n)
            .filter(|&i| state.x(j, i) > 0)
            .map(|i| s.value[i])
            .max()
            .unwrap_or(i128::MIN);
        (0..n)
            .filter(|&i| {
                s.cap[i] > 0 && (wants_any || s.value[i] < dearest || state.x(j, i) < s.current[i])
            })
            .map(|i| state.versions[i])
            .sum()
    };
    let mut last = state.score(model, group);
    for _ in 0..passes {
        let mut improved = false;
        let occupants = occupants(model, state, group);
        for &j in &order {
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return true;
            }
            let before = stamp(state, j);
            if seen[j] == Some(before) {
                continue;
            }
            improved |= improve_service(model, state, guide, &none, &occupants, j);
            seen[j] = Some(stamp(state, j));
        }
        let waiting_total: u64 = group
            .iter()
            .map(|&j| u64::from(state.evals[j].unplaced))
            .sum();
        for b in 0..model.cloud_count() {
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return true;
            }
            let key = (state.versions[b], waiting_total);
            if traded[b] == Some(key) {
                continue;
            }
            improved |= trade(model, state, &none, group, b);
            traded[b] = Some((state.versions[b], waiting_total));
        }
        if group.iter().any(|&j| model.services[j].survive_target > 0) {
            improved |= refill(model, state, &none, group);
        }
        // Stop when a pass no longer changes the placement penalties and improves the value
        // by less than 0.01 %: later passes only polish (a deterministic rule, no clock).
        let score = state.score(model, group);
        let polish = score.penalties == last.penalties
            && (last.value - score.value) as f64 <= 1e-4 * (last.value.abs() as f64).max(1.0);
        last = score;
        if !improved || (polish && stop_when_polishing) {
            break;
        }
    }
    false
}

/// Services of the group with replicas on each cloud, in fill order.
fn occupants(model: &Model, state: &State, group: &[usize]) -> Vec<Vec<usize>> {
    let n = model.cloud_count();
    let mut lists = vec![Vec::new(); n];
    for &j in group {
        for (i, list) in lists.iter_mut().enumerate() {
            if state.x(j, i) > 0 {
                list.push(j);
            }
        }
    }
    lists
}

fn improve_service(
    model: &Model,
    state: &mut State,
    guide: &Guide,
    none: &Guide,
    occupants: &[Vec<usize>],
    j: usize,
) -> bool {
    let mut improved = false;
    let s = &model.services[j];
    let n = model.cloud_count();
    if state.evals[j].penalty() > 0 {
        let mut trial = Trial::begin(state, &[j]);
        for i in 0..n {
            trial.touch(state, i);
        }
        fill(model, state, guide, j);
        improved |= trial.commit(model, state, false);
    }
    if s.survive_target > 0 {
        improved |= replan_reserve(model, state, guide, j);
    }
    if state.evals[j].cloud_shortfall > 0 {
        improved |= add_cloud(model, state, none, occupants, j);
    }
    // Relocations and ejections towards better clouds.
    let mut targets: Vec<usize> = (0..n).filter(|&i| s.cap[i] > 0).collect();
    targets.sort_by(|&a, &b| s.value[a].cmp(&s.value[b]).then(a.cmp(&b)));
    for &b in &targets {
        loop {
            if state.x(j, b) >= s.cap[b] {
                break;
            }
            let moved = if state.evals[j].unplaced > 0 {
                place_with_ejection(model, state, none, occupants, j, None, b)
            } else {
                relocate_into(model, state, none, occupants, j, b)
            };
            if !moved {
                break;
            }
            improved = true;
        }
    }
    improved
}

/// Tries to move one replica of `j` into `b` from its worst source cloud.
fn relocate_into(
    model: &Model,
    state: &mut State,
    none: &Guide,
    occupants: &[Vec<usize>],
    j: usize,
    b: usize,
) -> bool {
    let s = &model.services[j];
    let n = model.cloud_count();
    let target_key = marginal_key(model, state, none, j, b);
    let mut sources: Vec<(f64, usize)> = (0..n)
        .filter(|&a| a != b && state.x(j, a) > 0)
        .map(|a| (source_key(model, state, j, a), a))
        .collect();
    sources.sort_by(|x, y| y.0.total_cmp(&x.0).then(x.1.cmp(&y.1)));
    let spread_issue = state.evals[j].survive_shortfall > 0 || state.evals[j].cloud_shortfall > 0;
    let mut ejection_tried = false;
    for &(key, a) in &sources {
        let gain = key - target_key;
        if gain <= 0.0 && !spread_issue && state.x(j, b) >= s.current[b] {
            continue;
        }
        if state.fits(model, j, b, 1) {
            let mut trial = Trial::begin(state, &[j]);
            if trial.change(model, state, j, a, -1, 0) && trial.change(model, state, j, b, 1, 0) {
                rebalance_reserve_in_trial(model, state, none, &mut trial, j);
                if trial.commit(model, state, false) {
                    return true;
                }
            } else {
                trial.rollback(model, state);
            }
        } else if !ejection_tried {
            // Making room is expensive to search: try it for the worst source only.
            ejection_tried = true;
            if place_with_ejection(model, state, none, occupants, j, Some((a, gain)), b) {
                return true;
            }
        }
    }
    false
}

/// The value a replica of `j` on `a` is worth removing: its value, plus the stay bonus it
/// would lose.
fn source_key(model: &Model, state: &State, j: usize, a: usize) -> f64 {
    let s = &model.services[j];
    let mut key = s.value[a];
    if state.x(j, a) <= s.current[a] {
        key -= s.stay_bonus[a];
    }
    key as f64
}

/// Makes room on `b` by moving a few replicas of another service, then moves a replica of
/// `j` there from `source` (cloud and gain), or places a new one when `source` is `None`.
fn place_with_ejection(
    model: &Model,
    state: &mut State,
    none: &Guide,
    occupants: &[Vec<usize>],
    j: usize,
    source: Option<(usize, f64)>,
    b: usize,
) -> bool {
    let s = &model.services[j];
    let n = model.cloud_count();
    let rc = model.resource_count();
    if state.fits(model, j, b, 1) {
        let mut trial = Trial::begin(state, &[j]);
        let ok = match source {
            Some((a, _)) => trial.change(model, state, j, a, -1, 0),
            None => true,
        } && trial.change(model, state, j, b, 1, 0);
        if ok {
            rebalance_reserve_in_trial(model, state, none, &mut trial, j);
            return trial.commit(model, state, false);
        }
        trial.rollback(model, state);
        return false;
    }
    // Shortage on each resource for one more replica of j on b.
    let shortage: Vec<i128> = (0..rc)
        .map(|k| (state.used[b * rc + k] + s.demand[k] - model.clouds[b].capacity[k]).max(0))
        .collect();
    let gain = source.map_or(f64::INFINITY, |(_, g)| g);
    let mut tried = 0;
    for &o in &occupants[b] {
        if o == j || state.x(o, b) == 0 {
            continue;
        }
        let so = &model.services[o];
        // Units of o to remove from b.
        let mut units: u32 = 0;
        let mut helps = true;
        for k in 0..rc {
            if shortage[k] > 0 {
                if so.demand[k] == 0 {
                    helps = false;
                    break;
                }
                let need = (shortage[k] + so.demand[k] - 1) / so.demand[k];
                units = units.max(u32::try_from(need).unwrap_or(u32::MAX));
            }
        }
        if !helps || units == 0 || units > MAX_EJECTED_UNITS || units > state.x(o, b) {
            continue;
        }
        tried += 1;
        if tried > MAX_EJECTION_CANDIDATES {
            break;
        }
        // Where o's units go: the cheapest other cloud with room, or nowhere (unplaced)
        // when o has lower priority than j.
        let leave_key = source_key(model, state, o, b);
        // Cheap test first (is the move affordable at all?), capacity last.
        let mut destinations: Vec<(f64, usize)> = (0..n)
            .filter(|&c| c != b && state.x(o, c) + state.r(o, c) + units <= so.cap[c])
            .map(|c| (marginal_key(model, state, none, o, c), c))
            .filter(|&(key, c)| {
                (key - leave_key) * f64::from(units) < gain
                    && fits_after_release(model, state, o, c, units, source.map(|(a, _)| (j, a)))
            })
            .collect();
        destinations.sort_by(|x, y| x.0.total_cmp(&y.0).then(x.1.cmp(&y.1)));
        let mut options: Vec<Option<usize>> =
            destinations.iter().take(3).map(|&(_, c)| Some(c)).collect();
        if so.tier > s.tier {
            options.push(None);
        }
        for destination in options {
            let mut trial = Trial::begin(state, &[j, o]);
            let mut ok = trial.change(model, state, o, b, -i64::from(units), 0);
            if let Some(c) = destination {
                ok = ok && trial.change(model, state, o, c, i64::from(units), 0);
            }
            if let Some((a, _)) = source {
                ok = ok && trial.change(model, state, j, a, -1, 0);
            }
            ok = ok && trial.change(model, state, j, b, 1, 0);
            if !ok {
                trial.rollback(model, state);
                continue;
            }
            rebalance_reserve_in_trial(model, state, none, &mut trial, j);
            rebalance_reserve_in_trial(model, state, none, &mut trial, o);
            if trial.commit(model, state, false) {
                return true;
            }
        }
    }
    false
}

/// Re-plans the reserve of the `touched` services and commits the trial; returns whether it
/// was kept.
fn settle(
    model: &Model,
    state: &mut State,
    none: &Guide,
    mut trial: Trial,
    touched: &[usize],
) -> bool {
    for &j in touched {
        rebalance_reserve_in_trial(model, state, none, &mut trial, j);
    }
    trial.commit(model, state, false)
}

/// Re-plans the reserve of `j` inside a trial (no-op for services without survivability).
fn rebalance_reserve_in_trial(
    model: &Model,
    state: &mut State,
    guide: &Guide,
    trial: &mut Trial,
    j: usize,
) {
    let s = &model.services[j];
    if s.survive_target == 0 {
        return;
    }
    for i in 0..model.cloud_count() {
        trial.touch(state, i);
    }
    state.reeval(model, j);
    if state.evals[j].survive_shortfall > 0 {
        plan_reserve(model, state, guide, j);
    }
    trim_reserve(model, state, j);
}

/// Clears and re-plans the reserve of `j`; keeps the result if it is better.
fn replan_reserve(model: &Model, state: &mut State, guide: &Guide, j: usize) -> bool {
    let n = model.cloud_count();
    let mut trial = Trial::begin(state, &[j]);
    for i in 0..n {
        let r = state.r(j, i);
        if r > 0 {
            state.change(model, j, i, 0, -i64::from(r));
        }
        trial.touch(state, i);
    }
    plan_reserve(model, state, guide, j);
    trim_reserve(model, state, j);
    trial.commit(model, state, false)
}

/// Most occupants relocated to make room for one replica.
const MAX_RELOCATIONS: usize = 4;
/// Big occupants tried as the one replica given up per trade.
const MAX_TRADE_VICTIMS: usize = 8;

/// Relocates replicas of other services from `b` to their best other clouds with room
/// until one replica of `u` fits on `b`, cheapest relocation per unit of shortage first.
/// Works inside `trial`; returns whether `u` now fits.
fn make_room(
    model: &Model,
    state: &mut State,
    none: &Guide,
    trial: &mut Trial,
    movable: &[usize],
    u: usize,
    b: usize,
) -> bool {
    let n = model.cloud_count();
    let rc = model.resource_count();
    for _ in 0..MAX_RELOCATIONS {
        if state.fits(model, u, b, 1) {
            return true;
        }
        let demand = &model.services[u].demand;
        let capacity = &model.clouds[b].capacity;
        let shortage: Vec<f64> = (0..rc)
            .map(|k| {
                let short = state.used[b * rc + k] + demand[k] - capacity[k];
                if short > 0 {
                    short as f64 / capacity[k].max(1) as f64
                } else {
                    0.0
                }
            })
            .collect();
        let mut best: Option<(f64, usize, usize)> = None;
        for &o in movable {
            if o == u || state.x(o, b) == 0 {
                continue;
            }
            let so = &model.services[o];
            let freed: f64 = (0..rc)
                .filter(|&k| shortage[k] > 0.0)
                .map(|k| so.demand_f[k] / capacity[k].max(1) as f64)
                .sum();
            if freed <= 0.0 {
                continue;
            }
            let leave = source_key(model, state, o, b);
            for c in 0..n {
                if c == b
                    || state.x(o, c) + state.r(o, c) >= so.cap[c]
                    || !state.fits(model, o, c, 1)
                {
                    continue;
                }
                let cost = (marginal_key(model, state, none, o, c) - leave).max(0.0) + 1.0;
                let score = cost / freed;
                if best.is_none_or(|(s, _, _)| score < s) {
                    best = Some((score, o, c));
                }
            }
        }
        let Some((_, o, c)) = best else {
            return false;
        };
        if !(trial.change(model, state, o, b, -1, 0) && trial.change(model, state, o, c, 1, 0)) {
            return false;
        }
    }
    state.fits(model, u, b, 1)
}

/// Trades on a full cloud `b`: gives up one replica of a big occupant (moving it elsewhere
/// when possible, else leaving it unplaced), relocates smaller occupants as needed, and fills
/// the freed capacity with unplaced replicas — several small replicas for one big one.
fn trade(model: &Model, state: &mut State, none: &Guide, group: &[usize], b: usize) -> bool {
    let n = model.cloud_count();
    let rc = model.resource_count();
    let mut waiting: Vec<usize> = group
        .iter()
        .copied()
        .filter(|&u| {
            let s = &model.services[u];
            state.evals[u].unplaced > 0
                && s.admission[b].is_open()
                && state.x(u, b) + state.r(u, b) < s.cap[b]
        })
        .collect();
    if waiting.is_empty() {
        return false;
    }
    let capacity = &model.clouds[b].capacity;
    let sizes: Vec<f64> = group
        .iter()
        .map(|&j| {
            let demand = &model.services[j].demand_f;
            (0..rc)
                .filter(|&k| capacity[k] > 0)
                .map(|k| demand[k] / capacity[k] as f64)
                .fold(0.0, f64::max)
        })
        .collect();
    let position = |j: usize| group.binary_search(&j).unwrap_or(0);
    let size = |j: usize| -> f64 { sizes[position(j)] };
    waiting.sort_by(|&a, &c| {
        model.services[a]
            .tier
            .cmp(&model.services[c].tier)
            .then(size(a).total_cmp(&size(c)))
            .then(a.cmp(&c))
    });
    let lowest_waiting_tier = waiting
        .iter()
        .map(|&u| model.services[u].tier)
        .min()
        .unwrap_or(0);
    let smallest_waiting = waiting
        .iter()
        .map(|&u| size(u))
        .fold(f64::INFINITY, f64::min);
    let occupants: Vec<usize> = group
        .iter()
        .copied()
        .filter(|&o| state.x(o, b) > 0)
        .collect();
    let mut victims: Vec<Option<usize>> = vec![None];
    let mut big: Vec<usize> = occupants
        .iter()
        .copied()
        .filter(|&o| model.services[o].tier >= lowest_waiting_tier && size(o) >= smallest_waiting)
        .collect();
    // Victims whose loss hurts least first: a replica of a service that keeps others on this
    // cloud, or that runs in more clouds than it must; then the biggest.
    let harm = |o: usize| -> u32 {
        let so = &model.services[o];
        let clouds = state.row(o).iter().filter(|&&x| x > 0).count() as u32;
        u32::from(state.x(o, b) == 1 && clouds <= so.min_clouds.max(1))
    };
    big.sort_by(|&a, &c| {
        harm(a)
            .cmp(&harm(c))
            .then(size(c).total_cmp(&size(a)))
            .then(a.cmp(&c))
    });
    victims.extend(big.into_iter().take(MAX_TRADE_VICTIMS).map(Some));
    for victim in victims {
        let mut touched: Vec<usize> = waiting.clone();
        touched.extend(occupants.iter().copied());
        touched.sort_unstable();
        touched.dedup();
        let mut trial = Trial::begin(state, &touched);
        if let Some(o) = victim {
            let so = &model.services[o];
            if !trial.change(model, state, o, b, -1, 0) {
                trial.rollback(model, state);
                continue;
            }
            let destination = (0..n)
                .filter(|&c| {
                    c != b
                        && state.x(o, c) + state.r(o, c) < so.cap[c]
                        && state.fits(model, o, c, 1)
                })
                .min_by(|&a, &c| {
                    marginal_key(model, state, none, o, a)
                        .total_cmp(&marginal_key(model, state, none, o, c))
                        .then(a.cmp(&c))
                });
            if let Some(c) = destination {
                trial.change(model, state, o, c, 1, 0);
            }
        }
        let mut placed_any = false;
        for &u in &waiting {
            if Some(u) == victim {
                continue;
            }
            let su = &model.services[u];
            loop {
                let unplaced = su.desired.saturating_sub(state.row(u).iter().sum());
                if unplaced == 0 || state.x(u, b) + state.r(u, b) >= su.cap[b] {
                    break;
                }
                let movable: Vec<usize> = occupants
                    .iter()
                    .copied()
                    .filter(|&o| Some(o) != victim && model.services[o].tier >= su.tier)
                    .collect();
                if !make_room(model, state, none, &mut trial, &movable, u, b) {
                    break;
                }
                trial.change(model, state, u, b, 1, 0);
                placed_any = true;
            }
        }
        if !placed_any {
            trial.rollback(model, state);
            continue;
        }
        if settle(model, state, none, trial, &touched) {
            return true;
        }
    }
    false
}

/// For a service short of `minClouds`: opens one more cloud, moving a replica from its
/// fullest cloud (or placing an unplaced one) and relocating other services' replicas there
/// as needed.
fn add_cloud(
    model: &Model,
    state: &mut State,
    none: &Guide,
    occupants: &[Vec<usize>],
    j: usize,
) -> bool {
    let s = &model.services[j];
    let n = model.cloud_count();
    let mut targets: Vec<usize> = (0..n)
        .filter(|&b| state.x(j, b) == 0 && s.cap[b] > state.r(j, b))
        .collect();
    targets.sort_by(|&a, &b| s.value[a].cmp(&s.value[b]).then(a.cmp(&b)));
    let source = (0..n)
        .filter(|&a| state.x(j, a) > 1)
        .max_by(|&a, &b| state.x(j, a).cmp(&state.x(j, b)).then(b.cmp(&a)));
    for b in targets {
        let mut touched: Vec<usize> = occupants[b].clone();
        touched.push(j);
        touched.sort_unstable();
        touched.dedup();
        let mut trial = Trial::begin(state, &touched);
        if state.evals[j].unplaced == 0 {
            let Some(a) = source else {
                trial.rollback(model, state);
                return false;
            };
            trial.change(model, state, j, a, -1, 0);
        }
        let movable: Vec<usize> = occupants[b]
            .iter()
            .copied()
            .filter(|&o| o != j && model.services[o].tier >= s.tier)
            .collect();
        if !make_room(model, state, none, &mut trial, &movable, j, b)
            || !trial.change(model, state, j, b, 1, 0)
        {
            trial.rollback(model, state);
            continue;
        }
        if settle(model, state, none, trial, &touched) {
            return true;
        }
    }
    false
}

/// Whether `units` replicas of `o` fit on `c` once one replica of `released.0` has left
/// `released.1` (when that is `c`).
fn fits_after_release(
    model: &Model,
    state: &State,
    o: usize,
    c: usize,
    units: u32,
    released: Option<(usize, usize)>,
) -> bool {
    let rc = model.resource_count();
    let demand = &model.services[o].demand;
    let freed = match released {
        Some((j, a)) if a == c => Some(&model.services[j].demand),
        _ => None,
    };
    let capacity = &model.clouds[c].capacity;
    (0..rc).all(|k| {
        let q = demand[k];
        let back = freed.map_or(0, |f| f[k]);
        q == 0 || state.used[c * rc + k] - back + q * i128::from(units) <= capacity[k]
    })
}

/// Gives up every failover reserve of the group, fills what then fits, and plans the
/// reserves again; kept if better. Reserves planned early can block replicas that count
/// as much.
fn refill(model: &Model, state: &mut State, none: &Guide, group: &[usize]) -> bool {
    let mut trial = Trial::begin(state, group);
    for i in 0..model.cloud_count() {
        trial.touch(state, i);
    }
    for &j in group {
        for i in 0..model.cloud_count() {
            let r = state.r(j, i);
            if r > 0 {
                state.change(model, j, i, 0, -i64::from(r));
            }
        }
    }
    construct(model, state, none, group);
    for &j in group {
        trim_reserve(model, state, j);
    }
    trial.commit(model, state, false)
}
