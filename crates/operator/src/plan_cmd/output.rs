//! What `skyloom plan` prints: a table for people, or a stable JSON/YAML document.
//!
//! The JSON shape (documented in `docs/solver.md`):
//!
//! ```text
//! {"services":[{"namespace","name","desired","placed","unplaced",
//!               "placements":[{"cloud","replicas"[,"reserve"]}],"costPerHour","explanation"}],
//!  "clouds":[{"name","capacity","used","shadowPrices"}],
//!  "totals":{"costPerHour","placed","unplaced"},
//!  "solver":{"status","gap","seconds"}}
//! ```
//!
//! Resource amounts are plain numbers in base units: cores for `cpu`, bytes for memory,
//! devices for the rest.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;
use skyloom::explain::verdict_text;
use skyloom_solver::plan::{ServiceExplanation, ShadowPrice, Verdict};
use skyloom_solver::units::{CPU, display_amount, report_amount};
use skyloom_solver::{Plan, SolveStatus};

/// The JSON/YAML document.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PlanOutput {
    /// One entry per AIService, sorted by namespace and name.
    pub services: Vec<ServiceOutput>,
    /// One entry per CloudPool, sorted by name.
    pub clouds: Vec<CloudOutput>,
    /// Totals.
    pub totals: TotalsOutput,
    /// How the solve went.
    pub solver: SolverOutput,
}

/// One AIService's placement.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceOutput {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// `spec.replicas`.
    pub desired: u32,
    /// Replicas placed.
    pub placed: u32,
    /// Replicas that fit nowhere.
    pub unplaced: u32,
    /// Replicas per cloud.
    pub placements: Vec<PlacementOutput>,
    /// USD per hour.
    pub cost_per_hour: f64,
    /// Why, per cloud, and why replicas are unplaced.
    pub explanation: ServiceExplanation,
}

/// Replicas in one cloud.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PlacementOutput {
    /// The CloudPool.
    pub cloud: String,
    /// Running replicas.
    pub replicas: u32,
    /// Capacity kept free for failover, in replicas (omitted when 0).
    #[serde(skip_serializing_if = "is_zero")]
    pub reserve: u32,
}

fn is_zero(value: &u32) -> bool {
    *value == 0
}

/// An amount in base units: cores may be fractional.
#[derive(Clone, Copy, Debug, Serialize)]
#[serde(untagged)]
pub enum Amount {
    /// Bytes or devices.
    Whole(u64),
    /// Cores.
    Cores(f64),
}

fn amount(resource: &str, base: u64) -> Amount {
    if resource == CPU {
        Amount::Cores(report_amount(resource, base))
    } else {
        Amount::Whole(base)
    }
}

fn amounts(map: &BTreeMap<String, u64>) -> BTreeMap<String, Amount> {
    map.iter()
        .map(|(r, &v)| (r.clone(), amount(r, v)))
        .collect()
}

/// One CloudPool's use.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CloudOutput {
    /// The CloudPool.
    pub name: String,
    /// Capacity planned with, per resource.
    pub capacity: BTreeMap<String, Amount>,
    /// Used by the placed replicas and failover reserves, per resource.
    pub used: BTreeMap<String, Amount>,
    /// USD per hour the objective gains from one more unit (core, GiB, device).
    pub shadow_prices: BTreeMap<String, ShadowPrice>,
}

/// Totals.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TotalsOutput {
    /// USD per hour.
    pub cost_per_hour: f64,
    /// Replicas placed.
    pub placed: u64,
    /// Replicas unplaced.
    pub unplaced: u64,
}

/// How the solve went.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SolverOutput {
    /// `optimal`, `feasible` or `time-limited`.
    pub status: String,
    /// Relative gap to the best bound (0 when optimal).
    pub gap: f64,
    /// Wall-clock seconds.
    pub seconds: f64,
}

/// Builds the document from a plan.
pub fn document(plan: &Plan, seconds: f64) -> PlanOutput {
    let (status, gap) = match &plan.status {
        SolveStatus::Optimal => ("optimal", 0.0),
        SolveStatus::Feasible {
            gap, time_limited, ..
        } => (
            if *time_limited {
                "time-limited"
            } else {
                "feasible"
            },
            *gap,
        ),
    };
    PlanOutput {
        services: plan
            .services
            .iter()
            .map(|s| ServiceOutput {
                namespace: s.namespace.clone(),
                name: s.name.clone(),
                desired: s.desired,
                placed: s.placed,
                unplaced: s.unplaced,
                placements: s
                    .placements
                    .iter()
                    .map(|p| PlacementOutput {
                        cloud: p.cloud.clone(),
                        replicas: p.replicas,
                        reserve: p.reserve,
                    })
                    .collect(),
                cost_per_hour: s.cost_per_hour,
                explanation: s.explanation.clone(),
            })
            .collect(),
        clouds: plan
            .clouds
            .iter()
            .map(|c| {
                let used: BTreeMap<String, u64> = c
                    .used
                    .iter()
                    .map(|(r, &u)| {
                        (
                            r.clone(),
                            u.saturating_add(c.reserved.get(r).copied().unwrap_or(0)),
                        )
                    })
                    .collect();
                CloudOutput {
                    name: c.name.clone(),
                    capacity: amounts(&counted(&c.capacity)),
                    used: amounts(&used),
                    shadow_prices: c.shadow_prices.clone(),
                }
            })
            .collect(),
        totals: TotalsOutput {
            cost_per_hour: plan.totals.cost_per_hour,
            placed: plan.totals.placed,
            unplaced: plan.totals.unplaced,
        },
        solver: SolverOutput {
            status: status.to_owned(),
            gap,
            seconds: (seconds * 1000.0).round() / 1000.0,
        },
    }
}

/// A plain-text table: one row per service and cloud with replicas, a row for unplaced
/// replicas, the losing clouds' reasons, then the clouds and the totals.
pub fn table(plan: &Plan, doc: &PlanOutput) -> String {
    let mut rows: Vec<[String; 5]> = vec![[
        "SERVICE".into(),
        "CLOUD".into(),
        "REPLICAS".into(),
        "$/H".into(),
        "REASONS".into(),
    ]];
    for s in &plan.services {
        let key = format!("{}/{}", s.namespace, s.name);
        for c in &s.explanation.clouds {
            let reserve = s
                .placements
                .iter()
                .find(|p| p.cloud == c.cloud)
                .map_or(0, |p| p.reserve);
            if c.replicas == 0 && reserve == 0 {
                continue;
            }
            let replicas = if reserve > 0 {
                format!("{} (+{reserve} reserve)", c.replicas)
            } else {
                c.replicas.to_string()
            };
            rows.push([
                key.clone(),
                c.cloud.clone(),
                replicas,
                format!("{:.4}", c.cost_per_replica * f64::from(c.replicas)),
                verdict_text(&c.verdict),
            ]);
        }
        if let Some(unplaced) = &s.explanation.unplaced {
            let mut reasons: Vec<String> = unplaced
                .rules
                .iter()
                .map(|b| format!("{}: {}", b.rule, b.clouds.join(",")))
                .collect();
            for block in &unplaced.capacity {
                let missing: Vec<String> = block
                    .missing
                    .iter()
                    .map(|(r, &v)| format!("{} {}", r, display_amount(r, v)))
                    .collect();
                let held = if block.held_by.is_empty() {
                    String::new()
                } else {
                    format!(" (held by {})", block.held_by.join(", "))
                };
                reasons.push(format!(
                    "{} lacks {}{held}",
                    block.cloud,
                    missing.join(" + ")
                ));
            }
            if !unplaced.spread_capped.is_empty() {
                reasons.push(format!(
                    "maxReplicasPerCloud on {}",
                    unplaced.spread_capped.join(",")
                ));
            }
            rows.push([
                key.clone(),
                "(unplaced)".into(),
                unplaced.replicas.to_string(),
                "-".into(),
                reasons.join("; "),
            ]);
        }
        let losers: Vec<String> = s
            .explanation
            .clouds
            .iter()
            .filter(|c| c.replicas == 0 && !matches!(c.verdict, Verdict::FailoverReserve { .. }))
            .filter(|_| s.explanation.unplaced.is_none())
            .map(|c| format!("{}: {}", c.cloud, verdict_text(&c.verdict)))
            .collect();
        if !losers.is_empty() {
            rows.push([
                key.clone(),
                "(others)".into(),
                "0".into(),
                "-".into(),
                losers.join("; "),
            ]);
        }
        for shortfall in &s.explanation.spread_shortfalls {
            rows.push([
                key.clone(),
                "(spread)".into(),
                "-".into(),
                "-".into(),
                shortfall.clone(),
            ]);
        }
    }
    let mut out = render(&rows);
    out.push('\n');
    let mut cloud_rows: Vec<[String; 5]> = vec![[
        "CLOUD".into(),
        "USED/CAPACITY".into(),
        "$/H".into(),
        "BINDING".into(),
        "SHADOW PRICES ($/H PER UNIT)".into(),
    ]];
    for (c, o) in plan.clouds.iter().zip(&doc.clouds) {
        let used: Vec<String> = counted(&c.capacity)
            .iter()
            .map(|(r, &cap)| {
                let u =
                    c.used.get(r).copied().unwrap_or(0) + c.reserved.get(r).copied().unwrap_or(0);
                format!("{r} {}/{}", display_amount(r, u), display_amount(r, cap))
            })
            .collect();
        let prices: Vec<String> = o
            .shadow_prices
            .iter()
            .map(|(r, p)| format!("{r} {:.4}/{}", p.usd_per_hour, p.unit))
            .collect();
        cloud_rows.push([
            c.name.clone(),
            used.join(", "),
            format!("{:.4}", c.cost_per_hour),
            if c.binding.is_empty() {
                "-".into()
            } else {
                c.binding.join(",")
            },
            if prices.is_empty() {
                "-".into()
            } else {
                prices.join(", ")
            },
        ]);
    }
    out.push_str(&render(&cloud_rows));
    out.push('\n');
    let _ = writeln!(
        out,
        "TOTAL: {} placed, {} unplaced, ${:.4}/h; solver {} (gap {:.2}%) in {:.3}s",
        doc.totals.placed,
        doc.totals.unplaced,
        doc.totals.cost_per_hour,
        doc.solver.status,
        doc.solver.gap * 100.0,
        doc.solver.seconds
    );
    out
}

fn render<const N: usize>(rows: &[[String; N]]) -> String {
    let mut widths = [0usize; N];
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (index, (cell, w)) in row.iter().zip(widths).enumerate() {
            if index + 1 == N {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<w$}  ");
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// A cloud's capacity without the Pod slots no one counted (see
/// [`skyloom::snapshot::UNCOUNTED_POD_SLOTS`]): a placeholder for "no limit", not a figure.
fn counted(capacity: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    capacity
        .iter()
        .filter(|(r, v)| {
            !(r.as_str() == skyloom::capacity::POD_SLOTS
                && **v == skyloom::snapshot::UNCOUNTED_POD_SLOTS)
        })
        .map(|(r, v)| (r.clone(), *v))
        .collect()
}
