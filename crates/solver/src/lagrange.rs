//! Lagrangian relaxations of the capacity rows: a lower bound on the value with shadow
//! prices, and the placement relaxation that guides rounding.
//!
//! [`bound`]: with the number of placed replicas of every service fixed, relaxing the
//! capacity rows with multipliers `λ_ik ≥ 0` splits the problem into one tiny problem per
//! service: take its replicas from the clouds with the lowest `value_ij + Σ_k λ_ik q_jk`. For
//! any `λ` the result minus `Σ λ_ik C_ik` is a valid lower bound on the best value with those
//! counts (spread rules are relaxed too, which only lowers the bound). Subgradient steps
//! (Polyak's rule, with the known placement as target) raise the bound; at the best `λ` the
//! multipliers approximate the LP duals of the capacity rows: the shadow prices.
//!
//! [`placement_relaxation`]: the same relaxation of "place as many replicas as possible,
//! highest priority first, then cheapest", solved by the volume algorithm, whose averaged
//! subproblem solutions approximate the LP's fractional placement.

use crate::model::Model;

/// The result of [`bound`].
#[derive(Clone, Debug)]
pub struct LagrangeBound {
    /// The best lower bound found on the value of the services, nano-USD-equivalent.
    pub bound: f64,
    /// Multipliers at the best bound, nano-USD per base unit and hour, `[i * rc + k]`.
    pub prices: Vec<f64>,
    /// Subgradient iterations run.
    pub iterations: usize,
}

/// Bounds the value of the services in `group` when service `j` places exactly `counts[j]`
/// replicas (counts of services outside the group are ignored). `target` is the value of a
/// known placement with these counts; the search stops when the bound is within
/// `tolerance` (relative) of it or after `max_iterations`.
pub fn bound(
    model: &Model,
    group: &[usize],
    counts: &[u32],
    target: f64,
    max_iterations: usize,
    tolerance: f64,
) -> LagrangeBound {
    let n = model.cloud_count();
    let rc = model.resource_count();
    // Usable replicas per service and cloud: the cap, or none where not even one replica
    // fits the empty cloud. (Capacity is not folded into the cap beyond that, so that the
    // capacity rows keep their multipliers: the shadow prices.)
    let caps: Vec<Vec<u32>> = group
        .iter()
        .map(|&j| {
            let s = &model.services[j];
            (0..n)
                .map(|i| {
                    let fits = (0..rc).all(|k| s.demand[k] <= model.clouds[i].capacity[k]);
                    if fits { s.cap[i] } else { 0 }
                })
                .collect()
        })
        .collect();
    // Rows that can bind: some capacity is positive and the most the group could ask for
    // exceeds it.
    let mut active = vec![false; n * rc];
    for i in 0..n {
        for k in 0..rc {
            let capacity = model.clouds[i].capacity[k];
            let most: i128 = group
                .iter()
                .enumerate()
                .map(|(g, &j)| model.services[j].demand[k] * i128::from(caps[g][i]))
                .sum();
            active[i * rc + k] = capacity > 0 && most > capacity;
        }
    }
    let scale: Vec<f64> = (0..n * rc)
        .map(|ik| {
            let capacity = model.clouds[ik / rc].capacity[ik % rc];
            if active[ik] {
                1.0 / capacity as f64
            } else {
                0.0
            }
        })
        .collect();

    let mut mu = vec![0.0f64; n * rc];
    let mut best = LagrangeBound {
        bound: f64::NEG_INFINITY,
        prices: vec![0.0; n * rc],
        iterations: 0,
    };
    if !active.iter().any(|&a| a) {
        best.bound = evaluate(
            model,
            group,
            counts,
            &caps,
            &mu,
            &scale,
            &mut vec![0.0; n * rc],
        );
        best.iterations = 1;
        return best;
    }
    let mut theta = 1.0f64;
    let mut stall = 0usize;
    let mut usage = vec![0.0f64; n * rc];
    for iteration in 0..max_iterations {
        usage.iter_mut().for_each(|u| *u = 0.0);
        let value = evaluate(model, group, counts, &caps, &mu, &scale, &mut usage);
        best.iterations = iteration + 1;
        if value > best.bound {
            best.bound = value;
            best.prices = mu.iter().zip(&scale).map(|(m, s)| m * s).collect();
            stall = 0;
        } else {
            stall += 1;
            if stall >= 15 {
                theta /= 2.0;
                stall = 0;
            }
        }
        let gap = target - best.bound;
        if gap <= tolerance * target.abs().max(1.0) || theta < 1e-6 {
            break;
        }
        // Subgradient of the normalised rows: usage - 1, projected onto μ ≥ 0.
        let mut norm = 0.0;
        let mut g = vec![0.0f64; n * rc];
        for ik in 0..n * rc {
            if active[ik] {
                let gi = usage[ik] - 1.0;
                g[ik] = if mu[ik] <= 0.0 && gi < 0.0 { 0.0 } else { gi };
                norm += g[ik] * g[ik];
            }
        }
        if norm <= 0.0 {
            break;
        }
        let step = theta * (target - value).max(tolerance * target.abs().max(1.0)) / norm;
        for ik in 0..n * rc {
            if active[ik] {
                mu[ik] = (mu[ik] + step * g[ik]).max(0.0);
            }
        }
    }
    best
}

/// The Lagrangian function at `mu`; accumulates normalised usage per row into `usage`.
fn evaluate(
    model: &Model,
    group: &[usize],
    counts: &[u32],
    caps: &[Vec<u32>],
    mu: &[f64],
    scale: &[f64],
    usage: &mut [f64],
) -> f64 {
    let n = model.cloud_count();
    let rc = model.resource_count();
    let mut total = -mu.iter().sum::<f64>();
    let mut segments: Vec<(f64, usize, u32)> = Vec::with_capacity(2 * n);
    for (g, &j) in group.iter().enumerate() {
        let s = &model.services[j];
        let mut need = counts[j];
        if need == 0 {
            continue;
        }
        segments.clear();
        for i in 0..n {
            let cap = caps[g][i];
            if cap == 0 {
                continue;
            }
            let price: f64 = (0..rc)
                .map(|k| mu[i * rc + k] * scale[i * rc + k] * s.demand_f[k])
                .sum();
            let base = s.value_f[i] + price;
            let kept = s.current[i].min(cap);
            if kept > 0 {
                segments.push((base - s.stay_bonus_f[i], i, kept));
            }
            if cap > kept {
                segments.push((base, i, cap - kept));
            }
        }
        cheapest_first(&mut segments, |key, i, units| {
            let take = units.min(need);
            need -= take;
            total += key * f64::from(take);
            for k in 0..rc {
                usage[i * rc + k] += scale[i * rc + k] * s.demand_f[k] * f64::from(take);
            }
            need > 0
        });
    }
    total
}

/// Takes `segments` (cost, cloud, units) cheapest first, ties by cloud and then by position,
/// handing each to `take` until it returns false or none is left. The same walk as a stable
/// sort by (cost, cloud) followed by a loop, but a service usually stops after one or two
/// segments, so the rest are never ordered (this runs per service in every subgradient
/// iteration).
fn cheapest_first(
    segments: &mut Vec<(f64, usize, u32)>,
    mut take: impl FnMut(f64, usize, u32) -> bool,
) {
    while !segments.is_empty() {
        let mut m = 0;
        for p in 1..segments.len() {
            let (a, b) = (&segments[p], &segments[m]);
            if a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)).is_lt() {
                m = p;
            }
        }
        let (key, i, units) = segments.remove(m);
        if !take(key, i, units) {
            break;
        }
    }
}

/// The placement relaxation solved approximately by the volume algorithm (a subgradient
/// method that also averages the subproblem solutions into a fractional primal):
///
/// ```text
/// maximise Σ_j Σ_i (bonus_t(j) − value_ij) x_ij   subject to capacity, caps and desired
/// ```
///
/// where the per-tier bonus dwarfs every value difference and doubles per tier. Returns the
/// capacity prices (nano-USD per base unit, `[i * rc + k]`), the per-tier bonus, and the
/// averaged fractional placement (`[j * n + i]` for the services of `group`, zero elsewhere)
/// — the relaxation's answer, to be rounded. `known` is the objective of a known placement.
pub fn placement_relaxation(
    model: &Model,
    group: &[usize],
    known: f64,
    max_iterations: usize,
) -> Relaxation {
    let n = model.cloud_count();
    let rc = model.resource_count();
    let m = model.services.len();
    let bonus = tier_bonus(model, group);
    let mut scale = vec![0.0f64; n * rc];
    for i in 0..n {
        for k in 0..rc {
            let capacity = model.clouds[i].capacity[k];
            if capacity > 0 {
                scale[i * rc + k] = 1.0 / capacity as f64;
            }
        }
    }
    let mut x = vec![0.0f64; m * n];
    let mut usage = vec![0.0f64; n * rc];
    let mu = vec![0.0f64; n * rc];
    let mut segments: Vec<(f64, usize, u32)> = Vec::with_capacity(2 * n);
    let mut solve_at = |mu: &[f64], x: &mut [f64], usage: &mut [f64]| -> f64 {
        usage.iter_mut().for_each(|u| *u = 0.0);
        let mut total: f64 = mu.iter().sum();
        for &j in group {
            let s = &model.services[j];
            let b = bonus[s.tier];
            segments.clear();
            for i in 0..n {
                x[j * n + i] = 0.0;
                if s.cap[i] == 0 {
                    continue;
                }
                let mut price = 0.0;
                let mut blocked = false;
                for k in 0..rc {
                    if s.demand[k] > 0 {
                        if scale[i * rc + k] == 0.0 {
                            blocked = true;
                        }
                        price += mu[i * rc + k] * scale[i * rc + k] * s.demand_f[k];
                    }
                }
                if blocked {
                    continue;
                }
                let key = s.value_f[i] + price;
                let kept = s.current[i].min(s.cap[i]);
                if kept > 0 {
                    segments.push((key - s.stay_bonus_f[i], i, kept));
                }
                if s.cap[i] > kept {
                    segments.push((key, i, s.cap[i] - kept));
                }
            }
            let mut need = s.desired;
            if need == 0 {
                continue;
            }
            cheapest_first(&mut segments, |key, i, units| {
                if key >= b {
                    return false;
                }
                let take = units.min(need);
                need -= take;
                total += (b - key) * f64::from(take);
                x[j * n + i] += f64::from(take);
                for k in 0..rc {
                    usage[i * rc + k] += scale[i * rc + k] * s.demand_f[k] * f64::from(take);
                }
                need > 0
            });
        }
        total
    };
    // Volume algorithm (Barahona and Anbil), minimising the dual function.
    let mut best = solve_at(&mu, &mut x, &mut usage);
    let mut best_mu = mu.clone();
    let mut x_bar = x.clone();
    let mut usage_bar = usage.clone();
    let mut step_factor = 0.1f64;
    let mut reds = 0usize;
    let mut trial_mu = vec![0.0f64; n * rc];
    let mut x_t = vec![0.0f64; m * n];
    let mut usage_t = vec![0.0f64; n * rc];
    for _ in 0..max_iterations {
        let g: Vec<f64> = (0..n * rc)
            .map(|ik| {
                if scale[ik] == 0.0 {
                    return 0.0;
                }
                let gi = usage_bar[ik] - 1.0;
                if best_mu[ik] <= 0.0 && gi < 0.0 {
                    0.0
                } else {
                    gi
                }
            })
            .collect();
        let norm: f64 = g.iter().map(|v| v * v).sum();
        if norm < 1e-12 {
            break;
        }
        let gap = (best - known).max(1e-9 * best.abs().max(1.0));
        let step = step_factor * gap / norm;
        for ik in 0..n * rc {
            trial_mu[ik] = (best_mu[ik] + step * g[ik]).max(0.0);
        }
        let value = solve_at(&trial_mu, &mut x_t, &mut usage_t);
        // Mix the new subproblem solution into the average.
        let alpha = 0.1;
        for (bar, new) in x_bar.iter_mut().zip(&x_t) {
            *bar = alpha * new + (1.0 - alpha) * *bar;
        }
        for (bar, new) in usage_bar.iter_mut().zip(&usage_t) {
            *bar = alpha * new + (1.0 - alpha) * *bar;
        }
        if value < best {
            // Green or yellow: move the centre.
            let improvement = best - value;
            best = value;
            best_mu.clone_from(&trial_mu);
            if improvement > 1e-4 * gap {
                step_factor = (step_factor * 1.1).min(2.0);
            }
            reds = 0;
        } else {
            reds += 1;
            if reds >= 20 {
                step_factor *= 0.66;
                reds = 0;
            }
        }
        if step_factor < 1e-5 || (best - known) <= 1e-7 * best.abs().max(1.0) {
            break;
        }
    }
    Relaxation {
        prices: best_mu.iter().zip(&scale).map(|(m, s)| m * s).collect(),
        bonus,
        fractional: x_bar,
    }
}

/// The result of [`placement_relaxation`].
#[derive(Clone, Debug)]
pub struct Relaxation {
    /// Capacity prices, nano-USD per base unit, `[i * rc + k]`.
    pub prices: Vec<f64>,
    /// Bonus per priority tier.
    pub bonus: Vec<f64>,
    /// Averaged fractional placement, `[j * n + i]`.
    pub fractional: Vec<f64>,
}

/// The per-tier bonus of placing one replica in the placement relaxation: twice the largest
/// value magnitude plus one USD, doubled per tier above the lowest.
pub fn tier_bonus(model: &Model, group: &[usize]) -> Vec<f64> {
    let largest = group
        .iter()
        .flat_map(|&j| model.services[j].value.iter())
        .map(|v| v.unsigned_abs() as f64)
        .fold(0.0, f64::max);
    let base = 2.0 * largest + crate::units::NANO_PER_USD as f64;
    let tiers = model.tiers.len();
    (0..tiers)
        .map(|t| base * 2f64.powi(i32::try_from((tiers - 1 - t).min(30)).unwrap_or(30)))
        .collect()
}

/// The placement relaxation's objective of a placement (a lower bound for its maximum).
pub fn placement_objective(
    model: &Model,
    group: &[usize],
    x: impl Fn(usize, usize) -> u32,
    bonus: &[f64],
) -> f64 {
    let mut total = 0.0;
    for &j in group {
        let s = &model.services[j];
        for i in 0..model.cloud_count() {
            let units = x(j, i);
            if units > 0 {
                total += (bonus[s.tier] - s.value[i] as f64) * f64::from(units);
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::cheapest_first;

    #[test]
    fn cheapest_first_walks_as_a_stable_sort_does() {
        // Ties on cost and cloud (a service's kept and new segments of one cloud) keep their
        // order of position; the walk stops when told.
        let segments: Vec<(f64, usize, u32)> = vec![
            (3.0, 2, 1),
            (1.0, 5, 2),
            (1.0, 4, 3),
            (-2.0, 7, 4),
            (1.0, 4, 5),
            (0.5, 1, 6),
        ];
        let mut sorted = segments.clone();
        sorted.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        let mut walked = Vec::new();
        cheapest_first(&mut segments.clone(), |key, i, units| {
            walked.push((key, i, units));
            true
        });
        assert_eq!(walked, sorted);
        assert_eq!(
            walked.iter().map(|s| s.2).collect::<Vec<_>>(),
            vec![4, 6, 3, 5, 2, 1]
        );
        let mut first_two = Vec::new();
        cheapest_first(&mut segments.clone(), |_, i, _| {
            first_two.push(i);
            first_two.len() < 2
        });
        assert_eq!(first_two, vec![7, 1]);
    }
}
