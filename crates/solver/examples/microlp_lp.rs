//! Measures microlp on the plain LP relaxation of a benchmark instance (the placement
//! objective: priority bonus minus value per replica, capacity rows, one demand row per
//! service), to show why the engine does not hand the whole problem to microlp.
//!
//! Usage: `cargo run --release -p skyloom-solver --example microlp_lp -- 1000 20`

#[path = "bench/generate.rs"]
mod generate;

use std::process::ExitCode;
use std::time::Instant;

use microlp::{ComparisonOp, OptimizationDirection, Problem};
use skyloom_solver::referee::flatten;

fn main() -> ExitCode {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let (services, clouds) = match args.as_slice() {
        [s, c] => (*s, *c),
        _ => {
            eprintln!("usage: microlp_lp SERVICES CLOUDS");
            return ExitCode::FAILURE;
        }
    };
    let flat = match flatten(&generate::instance(services, clouds, 42, false)) {
        Ok(flat) => flat,
        Err(error) => {
            eprintln!("microlp_lp: {error}");
            return ExitCode::FAILURE;
        }
    };
    let started = Instant::now();
    let mut problem = Problem::new(OptimizationDirection::Maximize);
    let n = flat.clouds.len();
    let rc = flat.resources.len();
    let tiers = flat.tiers.len();
    let largest = flat
        .services
        .iter()
        .flat_map(|s| s.value.iter())
        .map(|v| v.unsigned_abs())
        .max()
        .unwrap_or(0) as f64
        / 1e9;
    let mut rows = vec![Vec::new(); n * rc];
    let mut variables = 0;
    for s in &flat.services {
        let bonus = (2.0 * largest + 1.0) * 2f64.powi((tiers - 1 - s.tier) as i32);
        let mut demand_row = Vec::new();
        for i in 0..n {
            if s.cap[i] == 0 {
                continue;
            }
            let v = problem.add_var(bonus - s.value[i] as f64 / 1e9, (0.0, f64::from(s.cap[i])));
            variables += 1;
            demand_row.push((v, 1.0));
            for (k, &q) in s.demand.iter().enumerate() {
                if q > 0 {
                    let capacity = flat.clouds[i].capacity[k].max(1) as f64;
                    rows[i * rc + k].push((v, q as f64 / capacity));
                }
            }
        }
        problem.add_constraint(
            demand_row.as_slice(),
            ComparisonOp::Le,
            f64::from(s.desired),
        );
    }
    for row in rows.iter().filter(|r| !r.is_empty()) {
        problem.add_constraint(row.as_slice(), ComparisonOp::Le, 1.0);
    }
    match problem.solve() {
        Ok(outcome) => {
            let objective = outcome.solution().map_or(f64::NAN, |s| s.objective());
            println!(
                "microlp LP {services}x{clouds}: {variables} variables, {:.3} s, objective {objective:.3}",
                started.elapsed().as_secs_f64()
            );
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("microlp_lp: {error}");
            ExitCode::FAILURE
        }
    }
}
