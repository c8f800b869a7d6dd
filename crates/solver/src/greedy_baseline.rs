//! The baseline the benchmarks compare against: the usual federator's proportional split.

use crate::error::SolveError;
use crate::explain;
use crate::greedy::proportional_split;
use crate::model::Model;
use crate::snapshot::Snapshot;
use crate::state::State;

/// What the baseline placed.
#[derive(Clone, Debug, PartialEq)]
pub struct BaselineResult {
    /// Replicas placed.
    pub placed: u64,
    /// Replicas not placed.
    pub unplaced: u64,
    /// Hourly cost, USD.
    pub cost_per_hour: f64,
    /// The objective value, USD-equivalent per hour.
    pub value: f64,
    /// Spread shortfalls (missing clouds plus survivability), summed.
    pub spread_shortfall: u64,
    /// Per priority, highest first: unplaced replicas plus spread shortfalls (the solver's
    /// first goal, for comparison).
    pub penalties: Vec<i64>,
}

/// Splits every service's replicas over its eligible clouds in proportion to the replicas
/// their free capacity can still take (Karmada's dynamic weighting), services by priority
/// then name, ignoring prices and spread rules other than `maxReplicasPerCloud`.
///
/// # Errors
/// As [`crate::solve`].
pub fn proportional(snapshot: &Snapshot) -> Result<BaselineResult, SolveError> {
    let model = Model::build(snapshot)?;
    let mut state = State::new(&model);
    let all: Vec<usize> = (0..model.services.len()).collect();
    proportional_split(&model, &mut state, &all);
    let mut cost = 0i128;
    for (j, s) in model.services.iter().enumerate() {
        for i in 0..model.cloud_count() {
            cost += s.cost[i] * i128::from(state.x(j, i));
        }
    }
    Ok(BaselineResult {
        placed: state.evals.iter().map(|e| u64::from(e.placed)).sum(),
        unplaced: state.evals.iter().map(|e| u64::from(e.unplaced)).sum(),
        cost_per_hour: explain::usd(cost),
        value: explain::usd(state.evals.iter().map(|e| e.value).sum()),
        spread_shortfall: state
            .evals
            .iter()
            .map(|e| u64::from(e.cloud_shortfall) + u64::from(e.survive_shortfall))
            .sum(),
        penalties: state.score(&model, &all).penalties,
    })
}
