//! AIService status (server-side apply on the status subresource) and Events on
//! condition transitions.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
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

/// Publishes one Event per condition (Ready, Scheduled, Stalled, Available, Reachable,
/// MigrationStalled, and Progressing when it turns False) whose status changed: events on
/// state changes only, never on every reconcile.
pub(super) async fn publish_transitions(
    ctx: &Context,
    object: &k8s_openapi::api::core::v1::ObjectReference,
    before: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
    after: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
) {
    const NOTEWORTHY: [&str; 7] = [
        "Ready",
        "Scheduled",
        "Stalled",
        "Available",
        "Reachable",
        "MigrationStalled",
        "Progressing",
    ];
    for c in after
        .iter()
        .filter(|c| NOTEWORTHY.contains(&c.type_.as_str()))
    {
        let old = before.iter().find(|p| p.type_ == c.type_);
        if old.is_some_and(|o| o.status == c.status && o.reason == c.reason) {
            continue;
        }
        let bad = matches!(
            (c.type_.as_str(), c.status.as_str()),
            ("Stalled" | "MigrationStalled", "True")
                | (
                    "Ready" | "Scheduled" | "Available" | "Reachable" | "Progressing",
                    "False"
                )
        );
        // Progressing and MigrationStalled speak only when something went wrong or stopped
        // being wrong; Ready already tells every normal step.
        let quiet_unless_bad = matches!(c.type_.as_str(), "Progressing" | "MigrationStalled");
        if quiet_unless_bad && !bad && old.is_none_or(|o| o.status == c.status) {
            continue;
        }
        // A condition's first appearance is the object being new, not a change of state: only
        // a failure (or a member's first reachability) is worth an Event then. A new service
        // would otherwise post a Warning per condition, a hub write each, before anything
        // happened.
        let failure = matches!(
            (c.type_.as_str(), c.status.as_str()),
            ("Stalled" | "MigrationStalled", "True")
        );
        if old.is_none() && (c.status == "Unknown" || !(failure || c.type_ == "Reachable")) {
            continue;
        }
        let event = KubeEvent {
            type_: if bad {
                EventType::Warning
            } else {
                EventType::Normal
            },
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
