//! The finalizer: remove a deleted AIService's Deployments from its members, giving up
//! members that stay unobservable after the orphan grace period (or at once when their
//! CloudPool is being deleted). While it waits, the AIService says so with reason
//! `Terminating`, naming the members.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event as KubeEvent, EventType};
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use serde_json::json;
use skyloom_api::conditions::reason::TERMINATING;
use skyloom_api::conditions::{READY, RECONCILING};
use skyloom_api::{AIService, AIServiceStatus};

use crate::identity::{FIELD_MANAGER, FINALIZER};
use crate::status::{self, Cond};

use super::member_writes::{Reach, delete_deployment};
use super::pool_lifecycle::since;
use super::reconcile::ReconcileError;
use super::{Context, key_of};

/// Removes member Deployments of a deleted AIService, then its finalizer. Members that stay
/// unobservable are given up after the orphan grace period, with a log line saying so.
pub(super) async fn finalize(
    ctx: &Context,
    ais: &AIService,
    api: &Api<AIService>,
) -> Result<Option<Duration>, ReconcileError> {
    if !ais.finalizers().iter().any(|f| f == FINALIZER) {
        return Ok(None);
    }
    let key = key_of(ais);
    let deleted_for = ais
        .metadata
        .deletion_timestamp
        .as_ref()
        .map(since)
        .unwrap_or_default();
    let mut waiting = Vec::new();
    let mut unobservable = Vec::new();
    for (pool, view) in ctx.registry.views() {
        if ctx
            .registry
            .deployments_of(&pool, &key.0, &key.1)
            .is_empty()
            && ctx
                .pending_writes
                .unseen_object(&key, &pool, std::time::Instant::now())
                .is_none()
        {
            continue;
        }
        if view.observable() {
            delete_deployment(ctx, &pool, &key, Reach::SeenAndUnseen).await?;
            waiting.push(pool);
        } else if deleted_for < ctx.settings.orphan_grace && !pool_leaving(ctx, &pool) {
            unobservable.push(format!("{pool} ({})", view.health.reason()));
            waiting.push(pool);
        } else {
            tracing::warn!(
                service = %format!("{}/{}", key.0, key.1), pool,
                "member unobservable past the orphan grace period, or its CloudPool is being deleted; its Deployment is given up (left in the member, listed in the CloudPool's status.orphans)"
            );
            let event = KubeEvent {
                type_: EventType::Warning,
                reason: "MemberCleanupAbandoned".into(),
                note: Some(format!(
                    "the Deployment in {pool} could not be deleted ({}); it is left there and listed in the CloudPool's status.orphans until the member returns",
                    view.health.reason()
                )),
                action: "Finalize".into(),
                secondary: None,
            };
            if let Err(e) = ctx.recorder.publish(&event, &ais.object_ref(&())).await {
                tracing::debug!("event not published: {e}");
            }
        }
    }
    if !waiting.is_empty() {
        if !unobservable.is_empty() {
            let message = format!(
                "waiting to delete the Deployments in {} (unobservable; given up {}s after deletion)",
                unobservable.join(", "),
                ctx.settings.orphan_grace.as_secs()
            );
            write_terminating(ais, api, &message).await?;
        }
        return Ok(Some(Duration::from_secs(2)));
    }
    let finalizers: Vec<String> = ais
        .finalizers()
        .iter()
        .filter(|f| *f != FINALIZER)
        .cloned()
        .collect();
    let patch =
        json!({"metadata": {"finalizers": finalizers, "resourceVersion": ais.resource_version()}});
    match api
        .patch(&key.1, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        Err(e) => return Err(ReconcileError::Hub(e)),
    }
    ctx.pending_writes.forget(&key);
    Ok(None)
}

/// True when the CloudPool is gone from the hub or being deleted: nobody will make it
/// observable again, so waiting for it is pointless.
fn pool_leaving(ctx: &Context, pool: &str) -> bool {
    ctx.pools
        .get(&ObjectRef::new(pool))
        .is_none_or(|p| p.metadata.deletion_timestamp.is_some())
}

/// Marks the deleting AIService `Ready=False` / `Reconciling=True` with reason `Terminating`
/// and `message`, keeping every other condition and field of its status.
async fn write_terminating(
    ais: &AIService,
    api: &Api<AIService>,
    message: &str,
) -> Result<(), ReconcileError> {
    let previous = ais.status.clone().unwrap_or_default();
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let conditions =
        terminating_conditions(&previous.conditions, message, ais.metadata.generation, &now);
    if conditions == previous.conditions {
        return Ok(());
    }
    let status = AIServiceStatus {
        conditions,
        ..previous
    };
    let patch = json!({"apiVersion": "skyloom.io/v1alpha1", "kind": "AIService", "status": status});
    match api
        .patch_status(
            &ais.name_any(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(ReconcileError::Hub(e)),
    }
}

/// The conditions of a deleting AIService: `Ready` False and `Reconciling` True, both with
/// reason `Terminating`; the others as they were. Pure.
fn terminating_conditions(
    previous: &[Condition],
    message: &str,
    generation: Option<i64>,
    now: &Time,
) -> Vec<Condition> {
    let changed = status::conditions(
        &[
            Cond::new(READY, false, TERMINATING, message),
            Cond::new(RECONCILING, true, TERMINATING, message),
        ],
        previous,
        generation,
        now,
    );
    let mut out: Vec<Condition> = previous
        .iter()
        .filter(|c| c.type_ != READY && c.type_ != RECONCILING)
        .cloned()
        .collect();
    out.extend(changed);
    out.sort_by(|a, b| a.type_.cmp(&b.type_));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cond(type_: &str, status: &str, reason: &str, at: i64) -> Condition {
        Condition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message: String::new(),
            observed_generation: Some(1),
            last_transition_time: Time(k8s_openapi::jiff::Timestamp::from_second(at).unwrap()),
        }
    }

    #[test]
    fn terminating_turns_ready_false_and_keeps_the_rest() {
        let previous = vec![
            cond("Available", "True", "MinimumReplicasAvailable", 10),
            cond("Ready", "True", "Reconciled", 10),
            cond("Reconciling", "False", "Reconciled", 10),
        ];
        let now = Time(k8s_openapi::jiff::Timestamp::from_second(50).unwrap());
        let out = terminating_conditions(&previous, "waiting for gcp", Some(1), &now);
        let get = |t: &str| out.iter().find(|c| c.type_ == t).unwrap();
        assert_eq!(get("Available"), &previous[0]);
        assert_eq!(
            (get("Ready").status.as_str(), get("Ready").reason.as_str()),
            ("False", "Terminating")
        );
        assert_eq!(get("Ready").message, "waiting for gcp");
        assert_eq!(get("Ready").last_transition_time, now);
        assert_eq!(get("Reconciling").status, "True");
        // Written again with the same message: identical, so no write follows.
        assert_eq!(
            terminating_conditions(&out, "waiting for gcp", Some(1), &now),
            out
        );
    }
}
