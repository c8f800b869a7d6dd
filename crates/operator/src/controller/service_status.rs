//! AIService status (server-side apply on the status subresource) and Events on
//! condition transitions.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::Resource;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event as KubeEvent, EventType};
use serde_json::json;
use skyloom_api::AIService;

use crate::identity::{self, FIELD_MANAGER};
use crate::status::{self, ServiceFacts};

use super::reconcile::ReconcileError;
use super::{Context, Decision, key_of};

pub(super) async fn write_service_status(
    ctx: &Context,
    ais: &AIService,
    api: &Api<AIService>,
    facts: &ServiceFacts,
    parts: status::ServiceStatusParts,
    decision: Option<&Decision>,
) -> Result<(), ReconcileError> {
    let previous = ais.status.clone().unwrap_or_default();
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let generation = ais.metadata.generation;
    let observed_generation = if parts.realised {
        generation
    } else {
        previous.observed_generation
    };
    let (ns, name) = key_of(ais);
    let mut st = skyloom_api::AIServiceStatus {
        observed_generation,
        conditions: status::conditions(&parts.conditions, &previous.conditions, generation, &now),
        placements: parts.placements,
        replicas: Some(parts.replicas),
        ready_replicas: Some(parts.ready),
        available_replicas: Some(parts.available),
        unplaced_replicas: Some(parts.unplaced),
        selector: Some(format!(
            "{}={}",
            identity::SERVICE_ID_LABEL,
            identity::service_id(&ns, &name)
        )),
        cost_per_hour: facts.cost_per_hour.map(|c| format!("{c:.4}")),
        placement_summary: Some(parts.summary),
        explanation: decision.map(|d| d.explanation.clone()),
        last_solve_time: previous.last_solve_time.clone(),
    };
    if previous.explanation != st.explanation || previous.last_solve_time.is_none() {
        st.last_solve_time = Some(now);
    }
    let mut comparable = st.clone();
    comparable.last_solve_time = previous.last_solve_time.clone();
    if ais.status.as_ref() == Some(&comparable) {
        return Ok(());
    }
    publish_transitions(
        ctx,
        &ais.object_ref(&()),
        &previous.conditions,
        &st.conditions,
    )
    .await;
    let patch = json!({"apiVersion": "skyloom.io/v1alpha1", "kind": "AIService", "status": st});
    api.patch_status(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map_err(ReconcileError::Hub)?;
    Ok(())
}

/// Conditions that are bad when True (abnormal-true).
const ABNORMAL_TRUE: [&str; 4] = [
    "Stalled",
    "MigrationStalled",
    "ScalingConflict",
    "CredentialsExpiring",
];
/// Conditions that are bad when False.
const NORMAL_TRUE: [&str; 5] = [
    "Ready",
    "Scheduled",
    "Available",
    "Reachable",
    "Progressing",
];
/// Conditions that speak only when something went wrong or stopped being wrong; Ready
/// already tells every normal step.
const QUIET_UNLESS_BAD: [&str; 4] = [
    "Progressing",
    "MigrationStalled",
    "ScalingConflict",
    "CredentialsExpiring",
];

/// Conditions whose recovery `Ready` turning True already announces: they speak only when
/// they turn bad.
const ONLY_WHEN_BAD: [&str; 1] = ["Available"];

/// Whether the change of one condition from `old` to `new` deserves an Event, and which
/// type. Events mark state changes only, never a reconcile that changed nothing. Pure.
fn event_type(old: Option<&Condition>, new: &Condition) -> Option<EventType> {
    let kind = new.type_.as_str();
    let abnormal = ABNORMAL_TRUE.contains(&kind);
    if !abnormal && !NORMAL_TRUE.contains(&kind) {
        return None;
    }
    if old.is_some_and(|o| o.status == new.status && o.reason == new.reason) {
        return None;
    }
    // A normal-true condition that stays False changes its reason as a rollout goes on
    // (Pending, RollingOut); failures are announced by Stalled and its kin turning True.
    if !abnormal && old.is_some_and(|o| o.status == new.status) {
        return None;
    }
    let failure = abnormal && new.status == "True";
    let bad = failure || (!abnormal && new.status == "False");
    if ONLY_WHEN_BAD.contains(&kind) && !bad {
        return None;
    }
    if QUIET_UNLESS_BAD.contains(&kind) && !bad && old.is_none_or(|o| o.status == new.status) {
        return None;
    }
    // A condition's first appearance is the object being new, not a change of state: only
    // a failure (or a member's first reachability) is worth an Event then. A new service
    // would otherwise post a Warning per condition, a hub write each, before anything
    // happened.
    if old.is_none() && (new.status == "Unknown" || !(failure || kind == "Reachable")) {
        return None;
    }
    Some(if bad {
        EventType::Warning
    } else {
        EventType::Normal
    })
}

/// Publishes one Event per condition whose state changed (see [`event_type`]).
pub(super) async fn publish_transitions(
    ctx: &Context,
    object: &k8s_openapi::api::core::v1::ObjectReference,
    before: &[Condition],
    after: &[Condition],
) {
    for c in after {
        let old = before.iter().find(|p| p.type_ == c.type_);
        let Some(type_) = event_type(old, c) else {
            continue;
        };
        let event = KubeEvent {
            type_,
            reason: c.reason.clone(),
            note: Some(
                format!("{}={}: {}", c.type_, c.status, c.message)
                    .chars()
                    .take(1000)
                    .collect(),
            ),
            action: format!("Set{}", c.type_),
            secondary: None,
        };
        let recorder = ctx.recorder.clone();
        let object = object.clone();
        // Events are best effort and must not slow the reconcile down.
        tokio::spawn(async move {
            if let Err(e) = recorder.publish(&event, &object).await {
                tracing::debug!("event not published: {e}");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cond(type_: &str, status: &str, reason: &str) -> Condition {
        Condition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message: String::new(),
            observed_generation: None,
            last_transition_time: Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
        }
    }

    #[test]
    fn only_changes_of_state_make_events() {
        let ready = cond("Ready", "True", "Reconciled");
        assert_eq!(event_type(Some(&ready), &ready), None, "no change");
        assert_eq!(event_type(None, &ready), None, "a new object is not news");
        let not_ready = cond("Ready", "False", "RollingOut");
        assert_eq!(
            event_type(Some(&ready), &not_ready),
            Some(EventType::Warning)
        );
        assert_eq!(
            event_type(Some(&not_ready), &ready),
            Some(EventType::Normal)
        );
        assert_eq!(event_type(None, &cond("Unplanned", "True", "X")), None);
    }

    #[test]
    fn a_new_service_rolling_out_makes_events_only_for_placed_and_ready() {
        use EventType::{Normal, Warning};
        // (condition, from "status:reason", to "status:reason", the Event)
        let cases = [
            ("Ready", "False:Pending", "False:RollingOut", None),
            ("Ready", "False:RollingOut", "True:Reconciled", Some(Normal)),
            ("Scheduled", "Unknown:Pending", "True:Placed", Some(Normal)),
            ("Available", "False:Unavailable", "True:Available", None),
            (
                "Available",
                "True:Available",
                "False:Unavailable",
                Some(Warning),
            ),
        ];
        let parse = |kind: &str, state: &str| {
            let (status, reason) = state.split_once(':').unwrap();
            cond(kind, status, reason)
        };
        for (kind, from, to, want) in cases {
            let got = event_type(Some(&parse(kind, from)), &parse(kind, to));
            assert_eq!(got, want, "{kind} {from} -> {to}");
        }
    }

    #[test]
    fn abnormal_true_conditions_warn_when_they_turn_true_and_speak_when_they_clear() {
        for kind in ["ScalingConflict", "CredentialsExpiring", "MigrationStalled"] {
            let off = cond(kind, "False", "Reconciled");
            let on = cond(kind, "True", "Something");
            assert_eq!(event_type(None, &off), None, "{kind}");
            assert_eq!(event_type(None, &on), Some(EventType::Warning), "{kind}");
            assert_eq!(
                event_type(Some(&off), &on),
                Some(EventType::Warning),
                "{kind}"
            );
            assert_eq!(
                event_type(Some(&on), &off),
                Some(EventType::Normal),
                "{kind}"
            );
        }
    }
}
