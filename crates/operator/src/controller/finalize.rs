//! The finalizer: remove a deleted AIService's Deployments from its members, giving up
//! members that stay unobservable after the orphan grace period.

use std::time::Duration;

use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use skyloom_api::AIService;

use crate::identity::FINALIZER;

use super::member_writes::delete_deployment;
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
        .map(|t| {
            let now = k8s_openapi::jiff::Timestamp::now();
            Duration::from_secs(u64::try_from(now.as_second() - t.0.as_second()).unwrap_or(0))
        })
        .unwrap_or_default();
    let mut waiting = Vec::new();
    for (pool, view) in ctx.registry.views() {
        if ctx
            .registry
            .deployments_of(&pool, &key.0, &key.1)
            .is_empty()
        {
            continue;
        }
        if view.observable() {
            delete_deployment(ctx, &pool, &key).await?;
            waiting.push(pool);
        } else if deleted_for < ctx.settings.orphan_grace {
            waiting.push(pool);
        } else {
            tracing::warn!(
                service = %format!("{}/{}", key.0, key.1), pool,
                "member unreachable for the whole orphan grace period; its Deployment is given up (left in the member)"
            );
        }
    }
    if !waiting.is_empty() {
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
        Ok(_) => Ok(None),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(None),
        Err(e) => Err(ReconcileError::Hub(e)),
    }
}
