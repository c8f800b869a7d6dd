//! The solver's explanation, condensed for `AIService.status.explanation`.

use skyloom_api::aiservice::{CloudReason, Explanation};
use skyloom_solver::plan::{Limit, ServicePlan, Verdict};

fn rules_text(rules: &impl serde::Serialize) -> String {
    match serde_json::to_value(rules) {
        Ok(serde_json::Value::Array(items)) => items
            .iter()
            .map(|r| match r {
                serde_json::Value::Object(m) => m
                    .get("kind")
                    .and_then(|k| k.as_str())
                    .map(str::to_owned)
                    .unwrap_or_else(|| r.to_string()),
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect::<Vec<_>>()
            .join(", "),
        Ok(other) => other.to_string(),
        Err(_) => String::new(),
    }
}

/// One line on why a cloud got what it got.
pub fn verdict_text(v: &Verdict) -> String {
    match v {
        Verdict::Chosen { limit: None } => "chosen".into(),
        Verdict::Chosen {
            limit: Some(Limit::Full { shortfalls }),
        } => format!(
            "chosen, full on {}",
            shortfalls
                .iter()
                .map(|s| s.resource.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Verdict::Chosen {
            limit: Some(Limit::SpreadCap {
                max_replicas_per_cloud,
            }),
        } => {
            format!("chosen, capped by maxReplicasPerCloud={max_replicas_per_cloud}")
        }
        Verdict::Chosen {
            limit: Some(Limit::NoNewReplicas { rules }),
        } => {
            format!("kept, no new replicas: {}", rules_text(rules))
        }
        Verdict::Chosen {
            limit:
                Some(Limit::MoveNotWorthIt {
                    cheaper,
                    saving_percent,
                    min_savings_percent,
                }),
        } => format!(
            "kept: moving to {cheaper} would save {saving_percent:.1}% (< minSavingsPercent {min_savings_percent})"
        ),
        Verdict::Excluded { rules } => format!("ineligible: {}", rules_text(rules)),
        Verdict::NoNewReplicas { rules } => format!("no new replicas: {}", rules_text(rules)),
        Verdict::Full { shortfalls } => format!(
            "full: {}",
            shortfalls
                .iter()
                .map(|s| format!("{} needs {} has {}", s.resource, s.needs, s.free))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Verdict::MoreExpensive {
            by_per_replica,
            than,
        } => {
            format!("${by_per_replica:.4}/h more per replica than {than}")
        }
        Verdict::FailoverReserve { replicas } => format!("failover reserve of {replicas}"),
        Verdict::NothingToPlace => "nothing to place".into(),
    }
}

/// The status explanation of one service's plan.
pub fn explanation(plan: &ServicePlan, gap_percent: Option<f64>) -> Explanation {
    let e = &plan.explanation;
    Explanation {
        summary: Some(e.summary.clone()),
        binding_constraints: e.spread_shortfalls.clone(),
        cloud_reasons: e
            .clouds
            .iter()
            .map(|c| CloudReason {
                cloud: c.cloud.clone(),
                replicas: i32::try_from(c.replicas).unwrap_or(i32::MAX),
                reason: verdict_text(&c.verdict),
                break_even_price_cut_percent: None,
            })
            .collect(),
        shadow_prices: Vec::new(),
        conflicting_constraints: e
            .unplaced
            .as_ref()
            .map(|u| {
                u.rules
                    .iter()
                    .map(|r| format!("{} excludes {}", r.rule, r.clouds.join(", ")))
                    .chain(u.capacity.iter().map(|c| {
                        let missing = c
                            .missing
                            .iter()
                            .map(|(k, v)| format!("{k} short by {v}"))
                            .collect::<Vec<_>>()
                            .join(", ");
                        format!("{}: {missing}", c.cloud)
                    }))
                    .collect()
            })
            .unwrap_or_default(),
        optimality_gap_percent: gap_percent.map(|g| format!("{g:.2}")),
    }
}
