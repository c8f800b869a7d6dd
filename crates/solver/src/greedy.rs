//! Constructive heuristics: cheapest-first filling (optionally guided by capacity prices)
//! and the federators' proportional split used as a baseline.

use crate::model::Model;
use crate::state::State;

/// Prices of capacity used to rank clouds while filling: nano-USD per base unit and hour per
/// cloud and resource (`guide[i * rc + k]`). Zero prices rank clouds by value alone.
#[derive(Clone, Debug)]
pub struct Guide {
    /// Price per cloud and resource.
    pub prices: Vec<f64>,
    /// When set, the bonus per priority tier: a replica is placed only where its value plus
    /// capacity price stays below its tier's bonus (the relaxation's choice); the rest is
    /// left for a later unguided fill.
    pub cutoff: Option<Vec<f64>>,
}

impl Guide {
    /// No capacity prices.
    pub fn none(_model: &Model) -> Self {
        Guide {
            prices: Vec::new(),
            cutoff: None,
        }
    }

    /// The capacity price of one replica of `j` on `i` (0 without prices).
    pub fn replica_price(&self, model: &Model, j: usize, i: usize) -> f64 {
        if self.prices.is_empty() {
            return 0.0;
        }
        let rc = model.resource_count();
        let demand = &model.services[j].demand_f;
        let prices = &self.prices[i * rc..(i + 1) * rc];
        prices.iter().zip(demand).map(|(p, q)| p * q).sum()
    }
}

/// The ranking key of one more replica of `j` on `i`: its value (less the stay bonus while
/// within the current count) plus the capacity price. Lower is better.
pub fn marginal_key(model: &Model, state: &State, guide: &Guide, j: usize, i: usize) -> f64 {
    let s = &model.services[j];
    let mut value = s.value_f[i];
    if state.x(j, i) < s.current[i] {
        // Half a nano-USD breaks ties in favour of staying without changing any real order.
        value -= s.stay_bonus_f[i] + 0.5;
    }
    value + guide.replica_price(model, j, i)
}

/// The order in which services are filled: priority first, then larger replicas (harder to
/// pack) first, then by key.
pub fn fill_order(model: &Model, group: &[usize]) -> Vec<usize> {
    let rc = model.resource_count();
    let mut total = vec![0f64; rc];
    for cloud in &model.clouds {
        for (k, t) in total.iter_mut().enumerate() {
            *t += cloud.capacity[k] as f64;
        }
    }
    let size = |j: usize| -> f64 {
        let demand = &model.services[j].demand;
        (0..rc)
            .filter(|&k| total[k] > 0.0)
            .map(|k| demand[k] as f64 / total[k])
            .fold(0.0, f64::max)
    };
    let mut order = group.to_vec();
    order.sort_by(|&a, &b| {
        model.services[a]
            .tier
            .cmp(&model.services[b].tier)
            .then(size(b).total_cmp(&size(a)))
            .then(a.cmp(&b))
    });
    order
}

/// Places the missing replicas of `j` (see [`fill_running`]), then plans its failover
/// reserve.
pub fn fill(model: &Model, state: &mut State, guide: &Guide, j: usize) {
    fill_running(model, state, guide, j);
    plan_reserve(model, state, guide, j);
    state.reeval(model, j);
}

/// Places the missing replicas of `j`, cheapest clouds first, honouring caps, capacity and
/// `minClouds`.
pub fn fill_running(model: &Model, state: &mut State, guide: &Guide, j: usize) {
    fill_up_to(model, state, guide, j, u32::MAX);
}

/// Places the first replicas of `j`: one on each of its `minClouds` best clouds (at least
/// one), the part of its placement the objective values most.
pub fn fill_first(model: &Model, state: &mut State, guide: &Guide, j: usize) {
    let s = &model.services[j];
    fill_up_to(model, state, guide, j, s.min_clouds.max(1));
}

/// Places missing replicas of `j` until it has `total` (or its desired count).
fn fill_up_to(model: &Model, state: &mut State, guide: &Guide, j: usize, total: u32) {
    let s = &model.services[j];
    let limit = guide.cutoff.as_ref().map_or(f64::INFINITY, |c| c[s.tier]);
    let mut need = s
        .desired
        .min(total)
        .saturating_sub(state.row(j).iter().sum());
    // minClouds first: one replica on each of the best clouds not used yet.
    let mut used_clouds = state.row(j).iter().filter(|&&x| x > 0).count() as u32;
    while need > 0 && used_clouds < s.min_clouds {
        let best = best_cloud(model, state, guide, j, limit, |i| {
            state.x(j, i) == 0 && s.cap[i] > 0
        });
        let Some(i) = best else { break };
        state.change(model, j, i, 1, 0);
        need -= 1;
        used_clouds += 1;
    }
    while need > 0 {
        let best = best_cloud(model, state, guide, j, limit, |i| state.x(j, i) < s.cap[i]);
        let Some(i) = best else { break };
        let x = state.x(j, i);
        let held = x + state.r(j, i);
        let mut amount = need
            .min(s.cap[i] - x)
            .min(s.hold_cap[i].max(s.cap[i]).saturating_sub(held))
            .min(state.room(model, j, i));
        if x < s.current[i] {
            amount = amount.min(s.current[i] - x);
        }
        if amount == 0 {
            break;
        }
        state.change(model, j, i, i64::from(amount), 0);
        need -= amount;
    }
    state.reeval(model, j);
}

/// The cloud with the lowest [`marginal_key`] below `limit` among those `allowed` where one
/// more replica of `j` fits; ties go to the lower index.
fn best_cloud(
    model: &Model,
    state: &State,
    guide: &Guide,
    j: usize,
    limit: f64,
    allowed: impl Fn(usize) -> bool,
) -> Option<usize> {
    (0..model.cloud_count())
        .filter(|&i| allowed(i) && fits_one_more(model, state, j, i))
        .map(|i| (marginal_key(model, state, guide, j, i), i))
        .filter(|&(key, _)| key < limit)
        .min_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)))
        .map(|(_, i)| i)
}

/// Whether one more running replica of `j` fits on `i` (capacity and hold cap).
fn fits_one_more(model: &Model, state: &State, j: usize, i: usize) -> bool {
    let s = &model.services[j];
    state.x(j, i) + state.r(j, i) < s.hold_cap[i].max(s.cap[i]) && state.fits(model, j, i, 1)
}

/// Adds failover reserve to `j` until losing any failure domain leaves its survival target,
/// or no eligible cloud has room. Each unit goes outside the domain whose loss hurts most,
/// to the least-held domain, cheapest capacity first.
pub fn plan_reserve(model: &Model, state: &mut State, guide: &Guide, j: usize) {
    let s = &model.services[j];
    if s.survive_target == 0 {
        return;
    }
    let n = model.cloud_count();
    let domains = model.domains.len();
    loop {
        let mut held = vec![0u64; domains];
        for i in 0..n {
            held[model.clouds[i].domain] += u64::from(state.x(j, i) + state.r(j, i));
        }
        let total: u64 = held.iter().sum();
        let (worst, worst_held) =
            held.iter().copied().enumerate().fold(
                (0, 0),
                |best, (d, h)| if h > best.1 { (d, h) } else { best },
            );
        if total - worst_held >= u64::from(s.survive_target) {
            return;
        }
        let best = (0..n)
            .filter(|&i| {
                model.clouds[i].domain != worst
                    && s.admission[i].is_open()
                    && state.x(j, i) + state.r(j, i) < s.hold_cap[i]
                    && state.fits(model, j, i, 1)
            })
            .min_by(|&a, &b| {
                held[model.clouds[a].domain]
                    .cmp(&held[model.clouds[b].domain])
                    .then(
                        guide
                            .replica_price(model, j, a)
                            .total_cmp(&guide.replica_price(model, j, b)),
                    )
                    .then(a.cmp(&b))
            });
        let Some(i) = best else { return };
        state.change(model, j, i, 0, 1);
    }
}

/// Removes reserve that the survival target does not need, most recently useful last.
pub fn trim_reserve(model: &Model, state: &mut State, j: usize) {
    let n = model.cloud_count();
    for i in (0..n).rev() {
        while state.r(j, i) > 0 {
            state.change(model, j, i, 0, -1);
            state.reeval(model, j);
            if state.evals[j].survive_shortfall > 0 {
                state.change(model, j, i, 0, 1);
                state.reeval(model, j);
                break;
            }
        }
    }
}

/// Fills every service of `group` in [`fill_order`]: first the first replicas of each
/// priority's services (so that every service runs somewhere before any gets more), then
/// the rest of their replicas, then the failover reserves.
pub fn construct(model: &Model, state: &mut State, guide: &Guide, group: &[usize]) {
    let order = fill_order(model, group);
    let mut start = 0;
    while start < order.len() {
        let tier = model.services[order[start]].tier;
        let end = order[start..]
            .iter()
            .position(|&j| model.services[j].tier != tier)
            .map_or(order.len(), |p| start + p);
        for &j in &order[start..end] {
            fill_first(model, state, guide, j);
        }
        for &j in &order[start..end] {
            fill_running(model, state, guide, j);
        }
        start = end;
    }
    for &j in &order {
        plan_reserve(model, state, guide, j);
        state.reeval(model, j);
    }
}

/// The usual federator's split (Karmada's dynamic weighting): services one at a time by
/// priority then key, each dividing its replicas over its eligible clouds in proportion to
/// how many replicas each cloud's free capacity can still take, largest remainders first.
/// It ignores prices, `minClouds` and survivability.
pub fn proportional_split(model: &Model, state: &mut State, group: &[usize]) {
    let n = model.cloud_count();
    let mut order = group.to_vec();
    order.sort_by_key(|&j| (model.services[j].tier, j));
    for j in order {
        let s = &model.services[j];
        let available: Vec<u64> = (0..n)
            .map(|i| {
                u64::from(
                    state
                        .room(model, j, i)
                        .min(s.cap[i].saturating_sub(state.x(j, i))),
                )
            })
            .collect();
        let total: u64 = available.iter().sum();
        let want = u64::from(s.desired.saturating_sub(state.row(j).iter().sum()));
        let mut share = vec![0u64; n];
        if total <= want {
            share.clone_from(&available);
        } else if total > 0 {
            let mut remainders = Vec::with_capacity(n);
            let mut given = 0;
            for i in 0..n {
                let exact = u128::from(want) * u128::from(available[i]);
                share[i] = u64::try_from(exact / u128::from(total)).unwrap_or(0);
                given += share[i];
                remainders.push((exact % u128::from(total), available[i], i));
            }
            remainders.sort_by(|a, b| b.0.cmp(&a.0).then(b.1.cmp(&a.1)).then(a.2.cmp(&b.2)));
            for &(_, _, i) in remainders.iter() {
                if given >= want {
                    break;
                }
                if share[i] < available[i] {
                    share[i] += 1;
                    given += 1;
                }
            }
        }
        for (i, &count) in share.iter().enumerate() {
            if count > 0 {
                state.change(model, j, i, i64::try_from(count).unwrap_or(0), 0);
            }
        }
        state.reeval(model, j);
    }
}
