//! The solver benchmark: seeded instances solved by Skyloom and by the federators'
//! proportional split, timed, and written out for the HiGHS referee
//! (`bench/highs_referee.py`). Run through `scripts/bench-solver`.
//!
//! Usage: `bench [--out DIR] [--seed N] [--runs N] [--lns-neighbourhoods N] [--lns-max-vars N]
//! [--lns-nodes N] [SERVICESxCLOUDS[t] ...]` — a trailing `t` asks for a tight instance (GPUs
//! short overall); the `--lns-*` flags override the large-neighbourhood search's defaults in
//! `SolveOptions` (`--lns-neighbourhoods 0` turns it off), for tuning.

mod generate;

use std::path::PathBuf;
use std::time::Instant;

use skyloom_solver::greedy_baseline::proportional;
use skyloom_solver::referee::flatten;
use skyloom_solver::{SolveOptions, SolveStatus, solve};

/// Parses a flag's number, keeping `default` when it is missing or not a number.
fn number<T: std::str::FromStr>(arg: Option<String>, default: T) -> T {
    arg.and_then(|s| s.parse().ok()).unwrap_or(default)
}

fn main() {
    let mut out = PathBuf::from("target/bench-solver");
    let mut seed = 42u64;
    let mut runs = 3usize;
    let mut options = SolveOptions::default();
    let mut sizes: Vec<(usize, usize, bool)> = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--out" => out = PathBuf::from(args.next().unwrap_or_default()),
            "--seed" => seed = args.next().and_then(|s| s.parse().ok()).unwrap_or(seed),
            "--runs" => runs = args.next().and_then(|s| s.parse().ok()).unwrap_or(runs),
            "--lns-neighbourhoods" => {
                options.lns_neighbourhoods = number(args.next(), options.lns_neighbourhoods);
            }
            "--lns-max-vars" => options.lns_max_vars = number(args.next(), options.lns_max_vars),
            "--lns-nodes" => {
                options.lns_nodes_per_stage = number(args.next(), options.lns_nodes_per_stage);
            }
            size => {
                let (size, tight) = match size.strip_suffix('t') {
                    Some(rest) => (rest, true),
                    None => (size, false),
                };
                let parsed = size
                    .split_once('x')
                    .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?, tight)));
                match parsed {
                    Some(size) => sizes.push(size),
                    None => {
                        eprintln!("bench: cannot read size {size:?}; expected e.g. 1000x20");
                        std::process::exit(1);
                    }
                }
            }
        }
    }
    if sizes.is_empty() {
        sizes = vec![
            (10, 3, false),
            (100, 10, false),
            (100, 10, true),
            (1000, 20, false),
            (1000, 20, true),
            (2000, 50, false),
            (2000, 50, true),
        ];
    }
    if let Err(error) = std::fs::create_dir_all(&out) {
        eprintln!("bench: cannot create {}: {error}", out.display());
        std::process::exit(1);
    }
    println!(
        "{:>10} {:>9} {:>12} {:>8} {:>10} {:>12} {:>8} {:>10} {:>9}",
        "instance",
        "time s",
        "skyloom $/h",
        "unplaced",
        "penalty",
        "greedy $/h",
        "unplaced",
        "gap bound",
        "status"
    );
    for (services, clouds, tight) in sizes {
        let name = format!("{services}x{clouds}{}", if tight { "t" } else { "" });
        let snapshot = generate::instance(services, clouds, seed, tight);
        let flat = match flatten(&snapshot) {
            Ok(flat) => flat,
            Err(error) => {
                eprintln!("bench: {name}: {error}");
                std::process::exit(1);
            }
        };
        let mut times = Vec::new();
        let mut plan = None;
        for _ in 0..runs.max(1) {
            let started = Instant::now();
            let result = solve(&snapshot, &options);
            times.push(started.elapsed().as_secs_f64());
            plan = Some(result);
        }
        times.sort_by(f64::total_cmp);
        let seconds = times[times.len() / 2];
        let plan = match plan {
            Some(Ok(plan)) => plan,
            Some(Err(error)) => {
                eprintln!("bench: {name}: {error}");
                std::process::exit(1);
            }
            None => unreachable!(),
        };
        let started = Instant::now();
        let greedy = match proportional(&snapshot) {
            Ok(g) => g,
            Err(error) => {
                eprintln!("bench: {name}: {error}");
                std::process::exit(1);
            }
        };
        let greedy_seconds = started.elapsed().as_secs_f64();
        let (status, gap) = match &plan.status {
            SolveStatus::Optimal => ("optimal".to_owned(), 0.0),
            SolveStatus::Feasible {
                gap, time_limited, ..
            } => (
                if *time_limited {
                    "time-cut"
                } else {
                    "feasible"
                }
                .to_owned(),
                *gap,
            ),
        };
        // Penalty per priority, highest first, as in docs/benchmarks.md.
        let penalty = plan
            .objective
            .by_priority
            .iter()
            .map(|p| (p.unplaced + p.missing_clouds + p.survival_shortfall).to_string())
            .collect::<Vec<_>>()
            .join("/");
        println!(
            "{:>10} {:>9.3} {:>12.4} {:>8} {:>10} {:>12.4} {:>8} {:>9.3}% {:>9}",
            name,
            seconds,
            plan.totals.cost_per_hour,
            plan.totals.unplaced,
            penalty,
            greedy.cost_per_hour,
            greedy.unplaced,
            gap * 100.0,
            status
        );
        let result = serde_json::json!({
            "instance": name,
            "services": services,
            "clouds": clouds,
            "seed": seed,
            "skyloom": {
                "seconds": seconds,
                "costPerHour": plan.totals.cost_per_hour,
                "value": plan.objective.value,
                "placed": plan.totals.placed,
                "unplaced": plan.totals.unplaced,
                "byPriority": plan.objective.by_priority,
                "status": plan.status,
                "unplacedByService": plan
                    .services
                    .iter()
                    .filter(|s| s.unplaced > 0)
                    .map(|s| (format!("{}/{}", s.namespace, s.name), s.unplaced))
                    .collect::<std::collections::BTreeMap<_, _>>(),
            },
            "greedy": {
                "seconds": greedy_seconds,
                "costPerHour": greedy.cost_per_hour,
                "value": greedy.value,
                "placed": greedy.placed,
                "unplaced": greedy.unplaced,
                "spreadShortfall": greedy.spread_shortfall,
                "byPriority": greedy.penalties,
            },
        });
        let write = |file: PathBuf, text: String| {
            if let Err(error) = std::fs::write(&file, text) {
                eprintln!("bench: cannot write {}: {error}", file.display());
                std::process::exit(1);
            }
        };
        if std::env::var_os("BENCH_WRITE_PLAN").is_some() {
            write(
                out.join(format!("{name}.plan.json")),
                serde_json::to_string_pretty(&plan).unwrap_or_default(),
            );
        }
        write(
            out.join(format!("{name}.model.json")),
            serde_json::to_string(&flat).unwrap_or_default(),
        );
        write(
            out.join(format!("{name}.result.json")),
            serde_json::to_string_pretty(&result).unwrap_or_default(),
        );
    }
}
