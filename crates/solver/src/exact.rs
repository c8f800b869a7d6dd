//! Exact search for small groups: the integer program solved with microlp, one level of the
//! lexicographic objective at a time.
//!
//! Stages: for each priority tier (highest first) minimise its penalty (unplaced replicas
//! plus spread shortfalls), then the value, then moves, then the reserve. Each stage keeps
//! the optimum of the previous ones as a constraint and starts from the best known
//! placement. Node and time limits bound each stage; the result says whether every stage
//! was proven optimal.

use std::time::{Duration, Instant};

use microlp::{
    ComparisonOp, OptimizationDirection, Problem, SolveOptions, TerminationReason, Variable,
};

use crate::model::Model;
use crate::state::{State, VALUE_TOLERANCE_NANO};
use crate::units::NANO_PER_USD;

/// What an exact search returned.
#[derive(Clone, Debug)]
pub struct ExactResult {
    /// Running replicas per group service (in group order) and cloud.
    pub x: Vec<Vec<u32>>,
    /// Reserve per group service and cloud.
    pub r: Vec<Vec<u32>>,
    /// Whether every stage was proven optimal.
    pub proven: bool,
    /// Whether a time limit (rather than a node limit or a proof) ended a stage.
    pub time_limited: bool,
}

/// Limits of the exact search.
#[derive(Clone, Copy, Debug)]
pub struct ExactLimits {
    /// Branch-and-bound nodes per stage.
    pub nodes_per_stage: u64,
    /// Wall-clock deadline.
    pub deadline: Option<Instant>,
}

/// A variable of the model before it is handed to microlp.
#[derive(Clone, Copy, Debug)]
struct Var {
    integer: bool,
    upper: f64,
}

/// The integer program, independent of the objective (microlp fixes objective coefficients
/// when a variable is added, so each stage builds its own `Problem`).
/// A constraint: terms (variable index, coefficient), comparison, right-hand side.
type Row = (Vec<(usize, f64)>, ComparisonOp, f64);

#[derive(Default)]
struct Program {
    vars: Vec<Var>,
    rows: Vec<Row>,
    hint: Vec<f64>,
}

impl Program {
    fn var(&mut self, integer: bool, upper: f64, hint: f64) -> usize {
        self.vars.push(Var { integer, upper });
        self.hint.push(hint);
        self.vars.len() - 1
    }

    fn row(&mut self, terms: Vec<(usize, f64)>, op: ComparisonOp, rhs: f64) {
        self.rows.push((terms, op, rhs));
    }

    fn problem(&self, objective: &[(usize, f64)]) -> (Problem, Vec<Variable>) {
        let mut coefficients = vec![0.0; self.vars.len()];
        for &(v, c) in objective {
            coefficients[v] += c;
        }
        let mut problem = Problem::new(OptimizationDirection::Minimize);
        let handles: Vec<Variable> = self
            .vars
            .iter()
            .zip(&coefficients)
            .map(|(var, &c)| {
                if var.integer {
                    let upper = var.upper.min(f64::from(i32::MAX)) as i32;
                    problem.add_integer_var(c, (0, upper))
                } else {
                    problem.add_var(c, (0.0, var.upper))
                }
            })
            .collect();
        for (terms, op, rhs) in &self.rows {
            let terms: Vec<(Variable, f64)> = terms.iter().map(|&(v, c)| (handles[v], c)).collect();
            problem.add_constraint(terms.as_slice(), *op, *rhs);
        }
        (problem, handles)
    }
}

/// Number of integer variables the exact model of `group` has.
pub fn size(model: &Model, group: &[usize]) -> usize {
    group
        .iter()
        .map(|&j| {
            let s = &model.services[j];
            let usable = s.cap.iter().filter(|&&c| c > 0).count();
            usable * if s.survive_target > 0 { 2 } else { 1 }
                + if s.min_clouds >= 2 { usable } else { 0 }
        })
        .sum()
}

/// Variable indices of one service.
struct ServiceVars {
    x: Vec<Option<usize>>,
    r: Vec<Option<usize>>,
    kept: Vec<Option<usize>>,
    stop: Vec<Option<usize>>,
    cloud_short: Option<usize>,
    survive_short: Option<usize>,
}

fn add_service(
    program: &mut Program,
    model: &Model,
    state: &State,
    j: usize,
    free: &[bool],
) -> ServiceVars {
    let s = &model.services[j];
    let n = model.cloud_count();
    let row = state.row(j);
    let res = state.reserve_row(j);
    let eval = state.evals[j];
    let mut sv = ServiceVars {
        x: Vec::with_capacity(n),
        r: Vec::with_capacity(n),
        kept: Vec::with_capacity(n),
        stop: Vec::with_capacity(n),
        cloud_short: None,
        survive_short: None,
    };
    let mut used = Vec::with_capacity(n);
    // What the clouds outside the searched ones hold, kept as it is: replicas, clouds used,
    // and held units per failure domain.
    let mut fixed_placed: u32 = 0;
    let mut fixed_used: u32 = 0;
    let mut fixed_held = vec![0u32; model.domains.len()];
    for i in 0..n {
        if !free[i] {
            fixed_placed += row[i];
            fixed_used += u32::from(row[i] > 0);
            fixed_held[model.clouds[i].domain] += row[i] + res[i];
            sv.x.push(None);
            sv.r.push(None);
            sv.kept.push(None);
            sv.stop.push(None);
            used.push(None);
            continue;
        }
        let cap = f64::from(s.cap[i]);
        let x = (s.cap[i] > 0).then(|| program.var(true, cap, f64::from(row[i])));
        let r = (s.cap[i] > 0 && s.survive_target > 0 && s.admission[i].is_open())
            .then(|| program.var(true, cap, f64::from(res[i])));
        let keep_max = s.current[i].min(s.cap[i]);
        let kept = (keep_max > 0 && s.stay_bonus[i] > 0)
            .then(|| program.var(false, f64::from(keep_max), f64::from(row[i].min(keep_max))));
        let stop = (s.current[i] > 0).then(|| {
            program.var(
                false,
                f64::from(s.current[i]),
                f64::from(s.current[i].saturating_sub(row[i])),
            )
        });
        let y = (s.cap[i] > 0 && s.min_clouds >= 2)
            .then(|| program.var(true, 1.0, if row[i] > 0 { 1.0 } else { 0.0 }));
        if let (Some(x), Some(r)) = (x, r) {
            program.row(vec![(x, 1.0), (r, 1.0)], ComparisonOp::Le, cap);
        }
        if let Some(k) = kept {
            let mut terms = vec![(k, 1.0)];
            terms.extend(x.map(|x| (x, -1.0)));
            program.row(terms, ComparisonOp::Le, 0.0);
        }
        if let Some(stop) = stop {
            let mut terms = vec![(stop, 1.0)];
            terms.extend(x.map(|x| (x, 1.0)));
            program.row(terms, ComparisonOp::Ge, f64::from(s.current[i]));
        }
        if let (Some(y), Some(x)) = (y, x) {
            program.row(vec![(y, 1.0), (x, -1.0)], ComparisonOp::Le, 0.0);
        }
        sv.x.push(x);
        sv.r.push(r);
        sv.kept.push(kept);
        sv.stop.push(stop);
        used.push(y);
    }
    let placed: Vec<(usize, f64)> = sv.x.iter().flatten().map(|&v| (v, 1.0)).collect();
    program.row(
        placed.clone(),
        ComparisonOp::Le,
        f64::from(s.desired.saturating_sub(fixed_placed)),
    );
    if s.min_clouds >= 1 {
        let k = f64::from(s.min_clouds);
        let m = program.var(false, k, f64::from(eval.cloud_shortfall));
        let (mut terms, fixed): (Vec<(usize, f64)>, u32) = if s.min_clouds >= 2 {
            (
                used.iter().flatten().map(|&v| (v, 1.0)).collect(),
                fixed_used,
            )
        } else {
            (placed, fixed_placed)
        };
        terms.push((m, 1.0));
        program.row(terms, ComparisonOp::Ge, k - f64::from(fixed));
        sv.cloud_short = Some(m);
    }
    if s.survive_target > 0 {
        let target = f64::from(s.survive_target);
        let short = program.var(false, target, f64::from(eval.survive_shortfall));
        let fixed_total: u32 = fixed_held.iter().sum();
        for d in 0..model.domains.len() {
            let mut terms: Vec<(usize, f64)> = Vec::new();
            for i in 0..n {
                if model.clouds[i].domain != d {
                    terms.extend(sv.x[i].iter().map(|&v| (v, 1.0)));
                    terms.extend(sv.r[i].iter().map(|&v| (v, 1.0)));
                }
            }
            terms.push((short, 1.0));
            let elsewhere = fixed_total - fixed_held[d];
            program.row(terms, ComparisonOp::Ge, target - f64::from(elsewhere));
        }
        sv.survive_short = Some(short);
    }
    sv
}

/// Solves the group exactly (within limits), starting from the placement in `state`.
/// Returns `None` when microlp fails or the limits leave no answer.
pub fn solve(
    model: &Model,
    state: &State,
    group: &[usize],
    limits: ExactLimits,
) -> Option<ExactResult> {
    solve_within(
        model,
        state,
        group,
        &vec![true; model.cloud_count()],
        false,
        limits,
    )
}

/// Like [`solve`], but only the clouds marked in `free` are searched: the group's replicas
/// and reserves on the other clouds stay as they are in `state` (they still count for
/// `desired`, `minClouds` and `surviveCloudLoss`). With `require_gain`, returns `None` as
/// soon as the penalty stages show, or fail within their node limits to refute, that no
/// priority's penalty can beat the placement in `state` (the later stages are then not
/// solved); the last penalty stage is then cut off at one below the start's penalty. Used
/// by large-neighbourhood search.
pub fn solve_within(
    model: &Model,
    state: &State,
    group: &[usize],
    free: &[bool],
    require_gain: bool,
    limits: ExactLimits,
) -> Option<ExactResult> {
    let n = model.cloud_count();
    let rc = model.resource_count();
    let mut program = Program::default();
    let vars: Vec<ServiceVars> = group
        .iter()
        .map(|&j| add_service(&mut program, model, state, j, free))
        .collect();
    // Capacity rows, net of what services outside the group use, scaled to unit size.
    for i in (0..n).filter(|&i| free[i]) {
        for k in 0..rc {
            let mut own: i128 = 0;
            let mut most: i128 = 0;
            let mut terms: Vec<(usize, f64)> = Vec::new();
            for (g, &j) in group.iter().enumerate() {
                let q = model.services[j].demand[k];
                if q == 0 {
                    continue;
                }
                own += q * i128::from(state.x(j, i) + state.r(j, i));
                most += q * i128::from(model.services[j].cap[i]);
                for v in vars[g].x[i].iter().chain(vars[g].r[i].iter()) {
                    terms.push((*v, q as f64));
                }
            }
            let free = model.clouds[i].capacity[k] - (state.used[i * rc + k] - own);
            if terms.is_empty() || most <= free {
                continue;
            }
            let scale = terms.iter().map(|(_, c)| *c).fold(0.0, f64::max);
            let scaled = terms.iter().map(|&(v, c)| (v, c / scale)).collect();
            program.row(scaled, ComparisonOp::Le, free.max(0) as f64 / scale);
        }
    }

    // Each stage: its objective, and whether its optimum is a whole number (penalties,
    // moves and reserve count replicas; the value does not).
    let mut stages: Vec<(Vec<(usize, f64)>, bool)> = Vec::new();
    for tier in 0..model.tiers.len() {
        let mut objective = Vec::new();
        for (g, &j) in group.iter().enumerate() {
            if model.services[j].tier == tier {
                objective.extend(vars[g].x.iter().flatten().map(|&v| (v, -1.0)));
                objective.extend(vars[g].cloud_short.iter().map(|&v| (v, 1.0)));
                objective.extend(vars[g].survive_short.iter().map(|&v| (v, 1.0)));
            }
        }
        if !objective.is_empty() {
            stages.push((objective, true));
        }
    }
    let penalty_stages = stages.len();
    let (mut value, mut moves, mut reserve) = (Vec::new(), Vec::new(), Vec::new());
    for (g, &j) in group.iter().enumerate() {
        let s = &model.services[j];
        for i in 0..n {
            let usd = |nano: i128| nano as f64 / NANO_PER_USD as f64;
            value.extend(vars[g].x[i].map(|v| (v, usd(s.value[i]))));
            value.extend(vars[g].kept[i].map(|v| (v, -usd(s.stay_bonus[i]))));
            moves.extend(vars[g].stop[i].map(|v| (v, 1.0)));
            reserve.extend(vars[g].r[i].map(|v| (v, 1.0)));
        }
    }
    stages.extend(
        [(value, false), (moves, true), (reserve, true)]
            .into_iter()
            .filter(|(o, _)| !o.is_empty()),
    );

    let mut proven = true;
    let mut time_limited = false;
    let mut best: Option<Vec<f64>> = None;
    let mut warm = program.hint.clone();
    // The previous stage's optimum, kept as a constraint: (row index, optimum, slack); only
    // a value stage's slack may be widened.
    let mut kept: Option<(usize, f64, f64, bool)> = None;
    let mut widened = false;
    // Whether a penalty stage found better than the starting placement.
    let mut gained = false;
    'stages: for (stage, (objective, whole)) in stages.into_iter().enumerate() {
        let start: f64 = objective.iter().map(|&(v, c)| c * program.hint[v]).sum();
        // With `require_gain`, the last penalty stage, if no stage before has gained, asks for
        // a penalty at least one lower than the start's: where the LP relaxation has no such
        // point the stage ends at once instead of spending its nodes proving the start
        // optimal. Where branch-and-bound finds no such integer point within its nodes (the
        // start, no longer feasible, cannot serve as incumbent), the stage is solved again
        // without the cutoff.
        let mut cutoff = require_gain && !gained && stage + 1 == penalty_stages;
        if cutoff {
            program.row(
                objective.clone(),
                ComparisonOp::Le,
                start.round() - 1.0 + 1e-6,
            );
        }
        let mut attempts = 0;
        let outcome = loop {
            let remaining = limits
                .deadline
                .map(|d| d.saturating_duration_since(Instant::now()));
            if remaining.is_some_and(|r| r < Duration::from_millis(1)) {
                time_limited = true;
                proven = false;
                break 'stages;
            }
            let (problem, handles) = program.problem(&objective);
            let mut options = SolveOptions::default();
            options.time_limit = remaining;
            options.node_limit = Some(limits.nodes_per_stage);
            options.warm_start = Some(handles.iter().copied().zip(warm.iter().copied()).collect());
            // A retry also goes without presolve, which has refused feasible stages.
            options.presolve = attempts == 0;
            match problem.solve_with(options) {
                Ok(outcome) if cutoff && outcome.solution().is_none() => {
                    program.rows.pop();
                    cutoff = false;
                }
                Ok(outcome) => break (outcome, handles),
                // Nothing better here (or presolve wrongly says so, see below: for a
                // neighbourhood that is only a missed chance, not a wrong answer).
                Err(microlp::Error::Infeasible) if cutoff => return None,
                // microlp's presolve has refused feasible stages: retry without it. Then the
                // previous optimum, kept as a constraint, may be out of reach within the
                // simplex's tolerances: widen its slack.
                Err(microlp::Error::Infeasible) if attempts < 3 => {
                    if attempts > 0 {
                        let Some((row, optimum, slack, false)) = kept.as_mut() else {
                            proven = false;
                            break 'stages;
                        };
                        // A wider slack may keep a slightly worse value: no longer a proof.
                        *slack = (*slack * 100.0).max(1e-7 * optimum.abs());
                        program.rows[*row].2 = *optimum + *slack;
                        widened = true;
                    }
                    attempts += 1;
                }
                Err(_) => {
                    proven = false;
                    break 'stages;
                }
            }
        };
        let (outcome, handles) = outcome;
        if !outcome.is_optimal() {
            proven = false;
            time_limited |= outcome.termination_reason() == TerminationReason::TimeLimit;
        }
        let Ok(found) = outcome.into_solution() else {
            proven = false;
            break;
        };
        let optimum = found.objective();
        let values: Vec<f64> = handles.iter().map(|&h| found.var_value(h)).collect();
        // Keep this stage's optimum for the next stages, with slack for round-off.
        // A whole-number optimum is kept rounded (the simplex reports, say, -1.8e-6 for 0),
        // with a hair of slack for round-off; a looser one would weaken the next stages' LP
        // bounds. Values within the engine's tolerance count as optimal (see
        // `state::VALUE_TOLERANCE_NANO`): the next stages pick among them.
        let (optimum, slack) = if whole {
            (optimum.round(), 1e-6)
        } else {
            (optimum, VALUE_TOLERANCE_NANO as f64 / NANO_PER_USD as f64)
        };
        program.row(objective, ComparisonOp::Le, optimum + slack);
        kept = Some((program.rows.len() - 1, optimum, slack, whole));
        warm.clone_from(&values);
        best = Some(values);
        if stage < penalty_stages && optimum < start.round() - 0.5 {
            gained = true;
        }
        if !proven || (require_gain && !gained && stage + 1 >= penalty_stages) {
            break;
        }
    }
    proven &= !widened;
    if require_gain && !gained {
        return None;
    }
    let values = best?;
    // A cloud outside the searched ones keeps what it holds.
    let pick = |i: usize, v: &Option<usize>, kept: u32| -> u32 {
        if !free[i] {
            return kept;
        }
        v.map_or(0, |v| {
            let value = values[v].round();
            if value > 0.0 { value as u32 } else { 0 }
        })
    };
    Some(ExactResult {
        x: group
            .iter()
            .zip(&vars)
            .map(|(&j, sv)| (0..n).map(|i| pick(i, &sv.x[i], state.x(j, i))).collect())
            .collect(),
        r: group
            .iter()
            .zip(&vars)
            .map(|(&j, sv)| (0..n).map(|i| pick(i, &sv.r[i], state.r(j, i))).collect())
            .collect(),
        proven,
        time_limited,
    })
}
