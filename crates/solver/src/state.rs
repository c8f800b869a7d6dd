//! A placement under construction: replicas and reserves per service and cloud, the capacity
//! they use, and each service's standing against the lexicographic objective.

use std::cmp::Ordering;

use crate::model::Model;

/// How one service fares in a placement.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceEval {
    /// Replicas placed.
    pub placed: u32,
    /// Replicas not placed.
    pub unplaced: u32,
    /// Replicas missing, after losing the worst failure domain, from `surviveCloudLoss`.
    pub survive_shortfall: u32,
    /// Clouds missing from `minClouds`.
    pub cloud_shortfall: u32,
    /// Objective value, nano-USD-equivalent per hour (lower is better).
    pub value: i128,
    /// Replicas taken away from where they run now.
    pub moves: u32,
    /// Failover reserve held, in replicas.
    pub reserve: u32,
}

impl ServiceEval {
    /// The service's penalty in its priority tier: unplaced replicas plus spread shortfalls.
    pub fn penalty(&self) -> i64 {
        i64::from(self.unplaced)
            + i64::from(self.survive_shortfall)
            + i64::from(self.cloud_shortfall)
    }
}

/// Evaluates service `j` with replicas `x` and reserves `r` (one entry per cloud).
pub fn evaluate(model: &Model, j: usize, x: &[u32], r: &[u32]) -> ServiceEval {
    let s = &model.services[j];
    let mut placed: u32 = 0;
    let mut value: i128 = 0;
    let mut moves: u32 = 0;
    let mut reserve: u32 = 0;
    let mut clouds_used: u32 = 0;
    for i in 0..x.len() {
        let xi = x[i];
        placed += xi;
        reserve += r[i];
        if xi > 0 {
            clouds_used += 1;
        }
        value += s.value[i] * i128::from(xi) - s.stay_bonus[i] * i128::from(xi.min(s.current[i]));
        moves += s.current[i].saturating_sub(xi);
    }
    let survive_shortfall = if s.survive_target > 0 {
        let mut held = vec![0u64; model.domains.len()];
        let mut total = 0u64;
        for i in 0..x.len() {
            let h = u64::from(x[i]) + u64::from(r[i]);
            held[model.clouds[i].domain] += h;
            total += h;
        }
        let worst = held.iter().copied().max().unwrap_or(0);
        let survivors = total - worst;
        u32::try_from(u64::from(s.survive_target).saturating_sub(survivors)).unwrap_or(u32::MAX)
    } else {
        0
    };
    ServiceEval {
        placed,
        unplaced: s.desired.saturating_sub(placed),
        survive_shortfall,
        cloud_shortfall: s.min_clouds.saturating_sub(clouds_used),
        value,
        moves,
        reserve,
    }
}

/// Objective values closer than this (10 micro-USD per hour) count as equal: no replica
/// moves for less, and exact search keeps its value optimum within this slack.
pub const VALUE_TOLERANCE_NANO: i128 = 10_000;

/// The lexicographic objective of a set of services: penalties per priority tier (highest
/// priority first), then value, then moves, then reserve. Lower is better.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Score {
    /// Penalty per tier.
    pub penalties: Vec<i64>,
    /// Total value.
    pub value: i128,
    /// Total moves.
    pub moves: i64,
    /// Total reserve.
    pub reserve: i64,
}

impl Score {
    /// The zero score for a model's tiers.
    pub fn zero(model: &Model) -> Self {
        Score {
            penalties: vec![0; model.tiers.len()],
            value: 0,
            moves: 0,
            reserve: 0,
        }
    }

    /// Adds (`sign` = 1) or removes (`sign` = -1) one service's evaluation.
    pub fn add(&mut self, tier: usize, eval: &ServiceEval, sign: i64) {
        self.penalties[tier] += sign * eval.penalty();
        self.value += i128::from(sign) * eval.value;
        self.moves += sign * i64::from(eval.moves);
        self.reserve += sign * i64::from(eval.reserve);
    }

    /// Compares two scores lexicographically; `Less` means `self` is better. Values within
    /// [`VALUE_TOLERANCE_NANO`] of each other count as equal for the value goal, so that
    /// fewer moves win over a negligible saving; the exact value breaks the last tie.
    pub fn compare(&self, other: &Score) -> Ordering {
        let value = if (self.value - other.value).abs() > VALUE_TOLERANCE_NANO {
            self.value.cmp(&other.value)
        } else {
            Ordering::Equal
        };
        self.penalties
            .cmp(&other.penalties)
            .then(value)
            .then(self.moves.cmp(&other.moves))
            .then(self.reserve.cmp(&other.reserve))
            .then(self.value.cmp(&other.value))
    }
}

/// Replicas, reserves and used capacity.
#[derive(Clone, Debug)]
pub struct State {
    /// Number of clouds.
    pub n: usize,
    /// Number of resources.
    pub rc: usize,
    /// Running replicas, `x[j * n + i]`.
    pub x: Vec<u32>,
    /// Failover reserve, `r[j * n + i]`.
    pub r: Vec<u32>,
    /// Used capacity, `used[i * rc + k]`.
    pub used: Vec<i128>,
    /// Each service's evaluation, kept current by [`State::reeval`].
    pub evals: Vec<ServiceEval>,
    /// Per cloud, how many committed [`Trial`]s freed capacity there (lets local search skip
    /// services that no cloud they would move to has gained room for).
    pub versions: Vec<u64>,
}

impl State {
    /// The empty placement.
    pub fn new(model: &Model) -> Self {
        let n = model.cloud_count();
        let rc = model.resource_count();
        let m = model.services.len();
        let mut state = State {
            n,
            rc,
            x: vec![0; m * n],
            r: vec![0; m * n],
            used: vec![0; n * rc],
            evals: vec![ServiceEval::default(); m],
            versions: vec![0; n],
        };
        for j in 0..m {
            state.reeval(model, j);
        }
        state
    }

    /// Replicas of `j` per cloud.
    pub fn row(&self, j: usize) -> &[u32] {
        &self.x[j * self.n..(j + 1) * self.n]
    }

    /// Reserve of `j` per cloud.
    pub fn reserve_row(&self, j: usize) -> &[u32] {
        &self.r[j * self.n..(j + 1) * self.n]
    }

    /// Running replicas of `j` on `i`.
    pub fn x(&self, j: usize, i: usize) -> u32 {
        self.x[j * self.n + i]
    }

    /// Reserve of `j` on `i`.
    pub fn r(&self, j: usize, i: usize) -> u32 {
        self.r[j * self.n + i]
    }

    /// Recomputes the evaluation of `j`.
    pub fn reeval(&mut self, model: &Model, j: usize) {
        let range = j * self.n..(j + 1) * self.n;
        self.evals[j] = evaluate(model, j, &self.x[range.clone()], &self.r[range]);
    }

    /// How many more held units of `j` fit on `i` by capacity alone.
    pub fn room(&self, model: &Model, j: usize, i: usize) -> u32 {
        let demand = &model.services[j].demand;
        let capacity = &model.clouds[i].capacity;
        let mut room = u64::from(u32::MAX);
        for k in 0..self.rc {
            let q = demand[k];
            if q > 0 {
                let free = (capacity[k] - self.used[i * self.rc + k]).max(0);
                // 64-bit division where the numbers allow: much faster than 128-bit.
                let fits = match (u64::try_from(free), u64::try_from(q)) {
                    (Ok(f), Ok(d)) => f / d,
                    _ => u64::try_from(free / q).unwrap_or(u64::MAX),
                };
                room = room.min(fits);
                if room == 0 {
                    return 0;
                }
            }
        }
        u32::try_from(room).unwrap_or(u32::MAX)
    }

    /// Whether `units` more held units of `j` fit on `i` by capacity alone.
    pub fn fits(&self, model: &Model, j: usize, i: usize, units: u32) -> bool {
        let demand = &model.services[j].demand;
        let capacity = &model.clouds[i].capacity;
        let units = i128::from(units);
        (0..self.rc).all(|k| {
            let q = demand[k];
            q == 0 || self.used[i * self.rc + k] + q * units <= capacity[k]
        })
    }

    /// Adds `dx` running replicas and `dr` reserve units of `j` on `i` (negative removes),
    /// updating used capacity but not the evaluation. Counts must stay non-negative.
    pub fn change(&mut self, model: &Model, j: usize, i: usize, dx: i64, dr: i64) {
        let index = j * self.n + i;
        let nx = i64::from(self.x[index]) + dx;
        let nr = i64::from(self.r[index]) + dr;
        self.x[index] = u32::try_from(nx.max(0)).unwrap_or(0);
        self.r[index] = u32::try_from(nr.max(0)).unwrap_or(0);
        let units = i128::from(dx + dr);
        if units != 0 {
            let demand = &model.services[j].demand;
            for k in 0..self.rc {
                self.used[i * self.rc + k] += demand[k] * units;
            }
        }
    }

    /// Whether cloud `i` is within its capacity on every resource.
    pub fn within_capacity(&self, model: &Model, i: usize) -> bool {
        let capacity = &model.clouds[i].capacity;
        (0..self.rc).all(|k| self.used[i * self.rc + k] <= capacity[k])
    }

    /// Removes every replica and reserve of `j`.
    pub fn clear(&mut self, model: &Model, j: usize) {
        for i in 0..self.n {
            let (x, r) = (self.x(j, i), self.r(j, i));
            if x > 0 || r > 0 {
                self.change(model, j, i, -i64::from(x), -i64::from(r));
            }
        }
        self.reeval(model, j);
    }

    /// Sets the replicas and reserve of `j` from rows.
    pub fn set_rows(&mut self, model: &Model, j: usize, x: &[u32], r: &[u32]) {
        for i in 0..self.n {
            let dx = i64::from(x[i]) - i64::from(self.x(j, i));
            let dr = i64::from(r[i]) - i64::from(self.r(j, i));
            if dx != 0 || dr != 0 {
                self.change(model, j, i, dx, dr);
            }
        }
        self.reeval(model, j);
    }

    /// The score of the services in `group`.
    pub fn score(&self, model: &Model, group: &[usize]) -> Score {
        let mut score = Score::zero(model);
        for &j in group {
            score.add(model.services[j].tier, &self.evals[j], 1);
        }
        score
    }
}

/// A tentative change to a few services, undone unless it improves the objective.
pub struct Trial {
    saved: Vec<(usize, Vec<u32>, Vec<u32>, ServiceEval)>,
    touched_clouds: Vec<usize>,
    /// Used capacity of each touched cloud when first touched.
    used_before: Vec<Vec<i128>>,
}

impl Trial {
    /// Starts a trial that may change services `services`.
    pub fn begin(state: &State, services: &[usize]) -> Self {
        Trial {
            saved: services
                .iter()
                .map(|&j| {
                    (
                        j,
                        state.row(j).to_vec(),
                        state.reserve_row(j).to_vec(),
                        state.evals[j],
                    )
                })
                .collect(),
            touched_clouds: Vec::new(),
            used_before: Vec::new(),
        }
    }

    /// Applies a change inside the trial; refuses (returns false) changes that break a
    /// per-cloud cap or go negative.
    pub fn change(
        &mut self,
        model: &Model,
        state: &mut State,
        j: usize,
        i: usize,
        dx: i64,
        dr: i64,
    ) -> bool {
        let s = &model.services[j];
        let nx = i64::from(state.x(j, i)) + dx;
        let nr = i64::from(state.r(j, i)) + dr;
        if nx < 0
            || nr < 0
            || nx > i64::from(s.cap[i])
            || nx + nr > i64::from(s.hold_cap[i].max(s.cap[i]))
        {
            return false;
        }
        if nr > 0 && !s.admission[i].is_open() {
            return false;
        }
        self.touch_in(state, i);
        state.change(model, j, i, dx, dr);
        true
    }

    /// Notes that cloud `i` is about to be changed by a helper outside [`Trial::change`].
    pub fn touch(&mut self, state: &State, i: usize) {
        self.touch_in(state, i);
    }

    fn touch_in(&mut self, state: &State, i: usize) {
        if !self.touched_clouds.contains(&i) {
            self.touched_clouds.push(i);
            self.used_before
                .push(state.used[i * state.rc..(i + 1) * state.rc].to_vec());
        }
    }

    /// Keeps the changes if every touched cloud is within capacity and the objective
    /// improved (or, with `accept_equal`, did not get worse); otherwise undoes them.
    /// Returns whether the changes were kept.
    pub fn commit(self, model: &Model, state: &mut State, accept_equal: bool) -> bool {
        let feasible = self
            .touched_clouds
            .iter()
            .all(|&i| state.within_capacity(model, i));
        let mut delta = Score::zero(model);
        if feasible {
            for (j, _, _, before) in &self.saved {
                state.reeval(model, *j);
                let tier = model.services[*j].tier;
                delta.add(tier, &state.evals[*j], 1);
                delta.add(tier, before, -1);
            }
        }
        let better = feasible
            && match delta.compare(&Score::zero(model)) {
                Ordering::Less => true,
                Ordering::Equal => accept_equal,
                Ordering::Greater => false,
            };
        if better {
            // Only clouds with more room than before can offer new moves.
            for (&i, before) in self.touched_clouds.iter().zip(&self.used_before) {
                let now = &state.used[i * state.rc..(i + 1) * state.rc];
                if now.iter().zip(before).any(|(n, b)| n < b) {
                    state.versions[i] += 1;
                }
            }
        } else {
            self.rollback(model, state);
        }
        better
    }

    /// Undoes every change.
    pub fn rollback(self, model: &Model, state: &mut State) {
        for (j, x, r, eval) in &self.saved {
            state.set_rows(model, *j, x, r);
            state.evals[*j] = *eval;
        }
    }
}
