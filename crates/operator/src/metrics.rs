//! Prometheus metrics on an explicit registry: reconciles, solver, placements, money.

use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use skyloom_solver::Plan;
use std::sync::atomic::AtomicU64;

type Labels = Vec<(String, String)>;

/// All of Skyloom's metrics.
pub struct Metrics {
    registry: Registry,
    reconciles: Family<Labels, Counter>,
    reconcile_errors: Family<Labels, Counter>,
    reconcile_seconds: Family<Labels, Histogram>,
    solves: Family<Labels, Counter>,
    solve_seconds: Histogram,
    solver_objective: Gauge<f64, AtomicU64>,
    replicas: Family<Labels, Gauge>,
    cost: Family<Labels, Gauge<f64, AtomicU64>>,
    unplaced: Gauge,
    member_ready: Family<Labels, Gauge>,
    member_probe_seconds: Family<Labels, Histogram>,
    failovers: Family<Labels, Counter>,
    moves: Counter,
    solver_value: Gauge<f64, AtomicU64>,
    solver_gap: Gauge<f64, AtomicU64>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

fn histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("skyloom");
        let reconciles = Family::<Labels, Counter>::default();
        let reconcile_errors = Family::<Labels, Counter>::default();
        let reconcile_seconds =
            Family::<Labels, Histogram>::new_with_constructor(histogram as fn() -> Histogram);
        let solves = Family::<Labels, Counter>::default();
        let solve_seconds = histogram();
        let solver_objective = Gauge::<f64, AtomicU64>::default();
        let replicas = Family::<Labels, Gauge>::default();
        let cost = Family::<Labels, Gauge<f64, AtomicU64>>::default();
        let unplaced = Gauge::default();
        let member_ready = Family::<Labels, Gauge>::default();
        let member_probe_seconds =
            Family::<Labels, Histogram>::new_with_constructor(histogram as fn() -> Histogram);
        let failovers = Family::<Labels, Counter>::default();
        let moves = Counter::default();
        let solver_value = Gauge::<f64, AtomicU64>::default();
        let solver_gap = Gauge::<f64, AtomicU64>::default();
        registry.register("reconciles", "Reconciles by controller", reconciles.clone());
        registry.register(
            "reconcile_errors",
            "Failed reconciles by controller and error kind",
            reconcile_errors.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Reconcile duration by controller",
            reconcile_seconds.clone(),
        );
        registry.register("solves", "Placement solves by result", solves.clone());
        registry.register(
            "solve_duration_seconds",
            "Duration of a placement solve",
            solve_seconds.clone(),
        );
        registry.register(
            "solver_cost_per_hour_usd",
            "Projected USD per hour of the last decision",
            solver_objective.clone(),
        );
        registry.register(
            "placed_replicas",
            "Replicas decided per cloud",
            replicas.clone(),
        );
        registry.register(
            "cost_per_hour_usd",
            "Projected USD per hour per cloud",
            cost.clone(),
        );
        registry.register(
            "unplaced_replicas",
            "Replicas that fit nowhere",
            unplaced.clone(),
        );
        registry.register(
            "member_ready",
            "1 when the member answers and is observed",
            member_ready.clone(),
        );
        Self {
            registry,
            reconciles,
            reconcile_errors,
            reconcile_seconds,
            solves,
            solve_seconds,
            solver_objective,
            replicas,
            cost,
            unplaced,
            member_ready,
            member_probe_seconds,
            failovers,
            moves,
            solver_value,
            solver_gap,
        }
    }
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

impl Metrics {
    /// Records one reconcile.
    pub fn observe_reconcile(&self, controller: &str, took: Duration, error: Option<&str>) {
        let l = labels(&[("controller", controller)]);
        self.reconciles.get_or_create(&l).inc();
        self.reconcile_seconds
            .get_or_create(&l)
            .observe(took.as_secs_f64());
        if let Some(kind) = error {
            self.reconcile_errors
                .get_or_create(&labels(&[("controller", controller), ("kind", kind)]))
                .inc();
        }
    }

    /// Records one solve.
    pub fn observe_solve(&self, took: Duration, ok: bool) {
        self.solves
            .get_or_create(&labels(&[("result", if ok { "ok" } else { "error" })]))
            .inc();
        self.solve_seconds.observe(took.as_secs_f64());
    }

    /// Publishes a decision's placements and money.
    pub fn set_plan(&self, plan: &Plan) {
        self.solver_objective.set(plan.totals.cost_per_hour);
        self.unplaced
            .set(i64::try_from(plan.totals.unplaced).unwrap_or(i64::MAX));
        self.replicas.clear();
        self.cost.clear();
        for c in &plan.clouds {
            let n: u32 = plan
                .services
                .iter()
                .flat_map(|s| s.placements.iter())
                .filter(|p| p.cloud == c.name)
                .map(|p| p.replicas)
                .sum();
            self.replicas
                .get_or_create(&labels(&[("cloud", &c.name)]))
                .set(i64::from(n));
            self.cost
                .get_or_create(&labels(&[("cloud", &c.name)]))
                .set(c.cost_per_hour);
        }
    }

    /// Records a member probe.
    pub fn observe_probe(&self, pool: &str, took: Duration) {
        self.member_probe_seconds
            .get_or_create(&labels(&[("cloud", pool)]))
            .observe(took.as_secs_f64());
    }

    /// Counts a failover away from `pool`.
    pub fn count_failover(&self, pool: &str) {
        self.failovers
            .get_or_create(&labels(&[("cloud", pool)]))
            .inc();
    }

    /// Publishes the solver's objective value, its gap (a ratio, 0 when optimal) and moves.
    pub fn set_solver(&self, objective: f64, gap_ratio: f64, moves: u64) {
        self.solver_value.set(objective);
        self.solver_gap.set(gap_ratio);
        self.moves.inc_by(moves);
    }

    /// Publishes member health.
    pub fn set_member_ready(&self, pool: &str, ready: bool) {
        self.member_ready
            .get_or_create(&labels(&[("cloud", pool)]))
            .set(i64::from(ready));
    }

    /// The text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
