//! Property tests of the solver over generated snapshots.

mod common;

use common::{check_plan, placements, shuffled_snapshots, snapshots, with_current};
use proptest::prelude::*;
use skyloom_solver::{SolveOptions, SolveStatus, solve};

fn options() -> SolveOptions {
    SolveOptions {
        time_limit: std::time::Duration::from_secs(60),
        ..SolveOptions::default()
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(160))]

    /// Capacity, eligibility, per-node fit, maxReplicasPerCloud, placed + unplaced = desired,
    /// and reported spread shortfalls all hold.
    #[test]
    fn plans_respect_every_hard_rule(snapshot in snapshots(4, 6)) {
        let plan = solve(&snapshot, &options()).map_err(|e| TestCaseError::fail(e.to_string()))?;
        if let Err(violation) = check_plan(&snapshot, &plan) {
            return Err(TestCaseError::fail(violation));
        }
    }

    /// The same snapshot in any order gives byte-identical output.
    #[test]
    fn output_is_independent_of_input_order((snapshot, shuffled) in shuffled_snapshots(4, 6)) {
        let a = solve(&snapshot, &options()).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let b = solve(&shuffled, &options()).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let a = serde_json::to_string(&a).unwrap_or_default();
        let b = serde_json::to_string(&b).unwrap_or_default();
        prop_assert_eq!(a, b);
    }

    /// Solving again with the answer as the current placement moves nothing.
    #[test]
    fn an_answer_is_a_fixed_point(snapshot in snapshots(4, 6)) {
        let first = solve(&snapshot, &options()).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let again = with_current(snapshot, &first).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let second = solve(&again, &options()).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(second.totals.moves, 0, "status {:?}", second.status);
        let replicas = |plan: &skyloom_solver::Plan| {
            placements(plan).into_iter().map(|(k, (x, _))| (k, x)).filter(|(_, x)| *x > 0).collect::<Vec<_>>()
        };
        prop_assert_eq!(replicas(&first), replicas(&second));
    }

    /// Tiny snapshots are solved to proven optimality.
    #[test]
    fn small_snapshots_are_solved_exactly(snapshot in snapshots(3, 3)) {
        let plan = solve(&snapshot, &options()).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(plan.status, SolveStatus::Optimal);
    }
}
