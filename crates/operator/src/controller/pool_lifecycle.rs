//! A CloudPool's life: Skyloom keeps its finalizer on every pool so that deleting a pool
//! drains it first. While the pool is terminating the solver gives it no replicas, so its
//! replicas move elsewhere make-before-break; once no owned Deployment is observed in the
//! member the finalizer goes. A member that cannot be observed is never emptied blindly:
//! with unusable credentials (the Secret gone, a refused kubeconfig, 401/403) the pool is
//! released at once, an unreachable one after the orphan grace period, and whatever Skyloom
//! last saw there is named in an Event as left behind.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event as KubeEvent, EventType};
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use serde_json::json;
use skyloom_api::CloudPool;
use skyloom_api::cloudpool::OrphanRef;

use crate::identity::{self, FINALIZER};
use crate::members::Health;

use super::Context;

/// Reason of an orphan whose AIService no longer exists on the hub.
pub const OWNER_GONE: &str = "OwnerGone";

/// Owned Deployments last observed in `pool` whose AIService is gone from the hub, sorted.
/// Re-derived from observations every time; nothing is remembered.
pub(super) fn orphans(ctx: &Context, pool: &str) -> Vec<OrphanRef> {
    let deployments = ctx.registry.all_deployments();
    let mut out = orphans_among(
        deployments.get(pool).map(Vec::as_slice).unwrap_or_default(),
        ctx.registry.control_plane(),
        |ns, name| ctx.services.get(&ObjectRef::new(name).within(ns)).is_some(),
    );
    out.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    out
}

fn orphans_among(
    deployments: &[std::sync::Arc<Deployment>],
    control_plane: &str,
    service_exists: impl Fn(&str, &str) -> bool,
) -> Vec<OrphanRef> {
    deployments
        .iter()
        .filter_map(|d| identity::owner_of(&d.metadata, control_plane))
        .filter(|(ns, name)| !service_exists(ns, name))
        .map(|(namespace, name)| OrphanRef {
            namespace,
            name,
            reason: OWNER_GONE.to_owned(),
        })
        .collect()
}

/// What to do with a pool's finalizer.
#[derive(Debug, PartialEq, Eq)]
enum FinalizerStep {
    /// Add it (a live pool without it).
    Add,
    /// Keep waiting: owned Deployments are still observed in the member.
    Wait,
    /// Remove it: the member holds nothing of ours.
    Release,
    /// Remove it although these Deployments may still run in the member: it cannot be
    /// observed and waiting will not help.
    Abandon,
    /// Nothing to do.
    Nothing,
}

/// Decides the finalizer step from the pool's state. Pure.
fn finalizer_step(
    has_finalizer: bool,
    deleting_for: Option<Duration>,
    health: &Health,
    observable: bool,
    owned_observed: usize,
    orphan_grace: Duration,
) -> FinalizerStep {
    let Some(deleting_for) = deleting_for else {
        return if has_finalizer {
            FinalizerStep::Nothing
        } else {
            FinalizerStep::Add
        };
    };
    if !has_finalizer {
        return FinalizerStep::Nothing;
    }
    if observable {
        return if owned_observed == 0 {
            FinalizerStep::Release
        } else if deleting_for >= orphan_grace {
            FinalizerStep::Abandon
        } else {
            FinalizerStep::Wait
        };
    }
    let credentials_unusable = matches!(
        health,
        Health::SecretNotFound(_)
            | Health::KubeconfigRejected(_)
            | Health::InsecureKubeconfig(_)
            | Health::Unauthorized(_)
    );
    if credentials_unusable || deleting_for >= orphan_grace {
        FinalizerStep::Abandon
    } else {
        FinalizerStep::Wait
    }
}

/// Adds or removes the pool's finalizer as its state requires.
pub(super) async fn reconcile_pool(ctx: &Context, pool: &CloudPool) -> Result<(), kube::Error> {
    let name = pool.name_any();
    let Some(view) = ctx.registry.view(&name) else {
        return Ok(());
    };
    let owned: Vec<(String, String)> = ctx
        .registry
        .all_deployments()
        .get(&name)
        .into_iter()
        .flatten()
        .filter_map(|d| identity::owner_of(&d.metadata, ctx.registry.control_plane()))
        .collect();
    let deleting_for = pool.metadata.deletion_timestamp.as_ref().map(since);
    let has_finalizer = pool.finalizers().iter().any(|f| f == FINALIZER);
    let step = finalizer_step(
        has_finalizer,
        deleting_for,
        &view.health,
        view.observable(),
        owned.len(),
        ctx.settings.orphan_grace,
    );
    let mut finalizers: Vec<String> = pool.finalizers().to_vec();
    match step {
        FinalizerStep::Nothing | FinalizerStep::Wait => return Ok(()),
        FinalizerStep::Add => finalizers.push(FINALIZER.to_owned()),
        FinalizerStep::Release | FinalizerStep::Abandon => finalizers.retain(|f| f != FINALIZER),
    }
    if step == FinalizerStep::Abandon {
        let left: Vec<String> = owned.iter().map(|(ns, n)| format!("{ns}/{n}")).collect();
        tracing::warn!(pool = %name, health = view.health.reason(), left = ?left,
            "releasing a deleted CloudPool whose member cannot be cleaned up; its Deployments stay in the member");
        let note = format!(
            "the member cannot be cleaned up ({}); Deployments left in it: {}",
            view.health.reason(),
            if left.is_empty() {
                "none observed".to_owned()
            } else {
                left.join(", ")
            }
        );
        let event = KubeEvent {
            type_: EventType::Warning,
            reason: "MemberCleanupAbandoned".into(),
            note: Some(note),
            action: "Finalize".into(),
            secondary: None,
        };
        if let Err(e) = ctx.recorder.publish(&event, &pool.object_ref(&())).await {
            tracing::debug!(pool = %name, "event not published: {e}");
        }
    }
    let patch =
        json!({"metadata": {"finalizers": finalizers, "resourceVersion": pool.resource_version()}});
    match Api::<CloudPool>::all(ctx.hub.clone())
        .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
        Err(e) => Err(e),
    }
}

/// How long ago `t` was (zero if in the future).
pub(super) fn since(t: &Time) -> Duration {
    let now = k8s_openapi::jiff::Timestamp::now();
    Duration::from_secs(u64::try_from(now.as_second() - t.0.as_second()).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRACE: Duration = Duration::from_secs(600);

    #[test]
    fn a_live_pool_gets_the_finalizer_once() {
        let step = |has| finalizer_step(has, None, &Health::Ready, true, 3, GRACE);
        assert_eq!(step(false), FinalizerStep::Add);
        assert_eq!(step(true), FinalizerStep::Nothing);
    }

    #[test]
    fn an_observable_pool_is_released_only_when_empty() {
        let deleting = Some(Duration::from_secs(5));
        let step = |owned| finalizer_step(true, deleting, &Health::Ready, true, owned, GRACE);
        assert_eq!(step(2), FinalizerStep::Wait);
        assert_eq!(step(0), FinalizerStep::Release);
        let late = finalizer_step(true, Some(GRACE), &Health::Ready, true, 2, GRACE);
        assert_eq!(
            late,
            FinalizerStep::Abandon,
            "a drain that cannot finish ends"
        );
    }

    #[test]
    fn an_unobservable_pool_waits_unless_its_credentials_are_gone() {
        let deleting = Some(Duration::from_secs(5));
        let unreachable = Health::Unreachable("timeout".into());
        assert_eq!(
            finalizer_step(true, deleting, &unreachable, false, 1, GRACE),
            FinalizerStep::Wait
        );
        assert_eq!(
            finalizer_step(true, Some(GRACE), &unreachable, false, 1, GRACE),
            FinalizerStep::Abandon
        );
        for health in [
            Health::SecretNotFound("gone".into()),
            Health::Unauthorized("401".into()),
            Health::InsecureKubeconfig("exec".into()),
        ] {
            assert_eq!(
                finalizer_step(true, deleting, &health, false, 1, GRACE),
                FinalizerStep::Abandon,
                "{health:?}"
            );
        }
    }

    #[test]
    fn orphans_are_owned_deployments_without_a_service() {
        let marked = |ns: &str, name: &str, cp: &str| {
            let mut d = Deployment::default();
            d.metadata.labels = Some(identity::workload_labels(ns, name));
            d.metadata.annotations = Some(identity::ownership_annotations(ns, name, "uid-1", cp));
            std::sync::Arc::new(d)
        };
        let deployments = vec![
            marked("team-a", "llm", "cp"),
            marked("team-b", "gone", "cp"),
            marked("team-c", "other", "another-control-plane"),
        ];
        let found = orphans_among(&deployments, "cp", |ns, _| ns == "team-a");
        assert_eq!(
            found,
            vec![OrphanRef {
                namespace: "team-b".into(),
                name: "gone".into(),
                reason: OWNER_GONE.into(),
            }]
        );
    }
}
