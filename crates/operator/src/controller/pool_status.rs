//! CloudPool status: conditions, capacity summary and replica counts per pool.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, Patch, PatchParams};
use kube::{Resource, ResourceExt};
use serde_json::json;
use skyloom_api::CloudPool;

use crate::identity::FIELD_MANAGER;
use crate::status::{self};

use super::Context;
use super::service_status::publish_transitions;

/// Writes CloudPool status whenever it changes (checked every probe interval, and soon after
/// an owned Deployment in some member changed).
pub async fn pool_status_loop(ctx: Arc<Context>) {
    let mut last_probe_written: BTreeMap<String, Instant> = BTreeMap::new();
    loop {
        super::member_namespaces::recheck(&ctx).await;
        for pool in ctx.pools.state() {
            if let Err(e) = super::pool_lifecycle::reconcile_pool(&ctx, &pool).await {
                tracing::debug!(pool = %pool.name_any(), "pool finalizer not updated: {e}");
            }
            if let Err(e) = write_pool_status(&ctx, &pool, &mut last_probe_written).await {
                tracing::debug!(pool = %pool.name_any(), "pool status not written: {e}");
            }
        }
        // Every probe period, or soon after an owned Deployment changed (batched like the
        // services' member changes), so free capacity follows placements within a second.
        tokio::select! {
            _ = tokio::time::sleep(ctx.settings.probe_interval) => {}
            _ = ctx.pool_status_wake.notified() => {
                tokio::time::sleep(super::MEMBER_CHANGE_BATCH).await;
            }
        }
    }
}

pub(super) async fn write_pool_status(
    ctx: &Context,
    pool: &CloudPool,
    last_written: &mut BTreeMap<String, Instant>,
) -> Result<(), kube::Error> {
    use skyloom_api::cloudpool::{condition as pc, reason as pr};
    use status::Cond;
    let name = pool.name_any();
    let Some(view) = ctx.registry.view(&name) else {
        return Ok(());
    };
    let ready = view.observable();
    let creds = !matches!(
        view.health,
        crate::members::Health::SecretNotFound(_)
            | crate::members::Health::KubeconfigRejected(_)
            | crate::members::Health::InsecureKubeconfig(_)
    );
    let reason = view.health.reason();
    let message = view.health.message();
    let mut conds = vec![
        Cond::new(pc::REACHABLE, ready, reason, message.clone()),
        Cond::new(
            pc::CREDENTIALS_AVAILABLE,
            creds,
            if creds { pr::PROBED } else { reason },
            message.clone(),
        ),
        Cond::new(
            skyloom_api::conditions::READY,
            ready && !pool.spec.is_cordoned(),
            if pool.spec.is_cordoned() && ready {
                pr::CORDONED
            } else {
                reason
            },
            message.clone(),
        ),
        Cond::new(
            skyloom_api::conditions::RECONCILING,
            false,
            reason,
            "probed periodically",
        ),
        Cond::new(skyloom_api::conditions::STALLED, !creds, reason, message),
    ];
    let expiry = view.credentials_expiry;
    let expiring =
        expiry.is_some_and(|t| crate::credentials::expiring_soon(t, std::time::SystemTime::now()));
    conds.push(Cond::new(
        pc::CREDENTIALS_EXPIRING,
        expiring,
        if expiring {
            pr::TOKEN_EXPIRING
        } else {
            pr::TOKEN_VALID
        },
        match expiry.map(k8s_openapi::jiff::Timestamp::try_from) {
            Some(Ok(t)) if expiring => format!("the member token expires at {t}; rotate it"),
            Some(Ok(t)) => format!("the member token expires at {t}"),
            _ => "the member credential carries no expiry".to_owned(),
        },
    ));
    if view.health == crate::members::Health::Unknown {
        conds[0].status = skyloom_api::conditions::status::UNKNOWN;
    }
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let previous = pool.status.clone().unwrap_or_default();
    let mut st = skyloom_api::CloudPoolStatus {
        observed_generation: pool.metadata.generation,
        conditions: status::conditions(
            &conds,
            &previous.conditions,
            pool.metadata.generation,
            &now,
        ),
        capacity: BTreeMap::new(),
        allocated: BTreeMap::new(),
        free: BTreeMap::new(),
        node_count: None,
        kubernetes_version: view.version.clone(),
        last_probe_time: previous.last_probe_time.clone(),
        orphans: super::pool_lifecycle::orphans(ctx, &name),
        credentials_expiry: expiry
            .and_then(|t| k8s_openapi::jiff::Timestamp::try_from(t).ok())
            .map(Time),
        summary: None,
    };
    if let Some(cap) = &view.capacity {
        st.node_count = Some(i32::try_from(cap.nodes).unwrap_or(i32::MAX));
        let mut allocated: BTreeMap<String, u64> = BTreeMap::new();
        for d in ctx
            .registry
            .all_deployments()
            .get(&name)
            .into_iter()
            .flatten()
        {
            let replicas = u64::try_from(d.spec.replicas.unwrap_or(0)).unwrap_or(0);
            if let Some(ps) = d.spec.template.spec.as_ref() {
                for (k, v) in crate::capacity::pod_requests(ps) {
                    let e = allocated.entry(k).or_insert(0);
                    *e = e.saturating_add(v.saturating_mul(replicas));
                }
            }
        }
        let available = cap.available();
        for (k, v) in &cap.allocatable {
            st.capacity.insert(k.clone(), status::quantity(k, *v));
            let used = allocated.get(k).copied().unwrap_or(0);
            st.free.insert(
                k.clone(),
                status::quantity(
                    k,
                    available.get(k).copied().unwrap_or(0).saturating_sub(used),
                ),
            );
        }
        for (k, v) in &allocated {
            st.allocated.insert(k.clone(), status::quantity(k, *v));
        }
        let frac = |res: &str| {
            cap.allocatable.get(res).map(|total| {
                let free = available
                    .get(res)
                    .copied()
                    .unwrap_or(0)
                    .saturating_sub(allocated.get(res).copied().unwrap_or(0));
                if res == "cpu" {
                    format!("{}/{}", free / 1000, total / 1000)
                } else {
                    format!("{free}/{total}")
                }
            })
        };
        st.summary = Some(skyloom_api::cloudpool::CloudPoolSummary {
            gpu: frac("nvidia.com/gpu"),
            cpu: frac("cpu"),
        });
    }
    let probe_due = last_written
        .get(&name)
        .is_none_or(|t| t.elapsed() > Duration::from_secs(60));
    let mut comparable = st.clone();
    comparable.last_probe_time = previous.last_probe_time.clone();
    if pool.status.as_ref() == Some(&comparable) && !probe_due {
        return Ok(());
    }
    st.last_probe_time = view
        .last_probe
        .map(|t| Time(k8s_openapi::jiff::Timestamp::try_from(t).unwrap_or(now.0)));
    last_written.insert(name.clone(), Instant::now());
    publish_transitions(
        ctx,
        &pool.object_ref(&()),
        &previous.conditions,
        &st.conditions,
    )
    .await;
    let api: Api<CloudPool> = Api::all(ctx.hub.clone());
    let patch = json!({"apiVersion": "skyloom.io/v1alpha1", "kind": "CloudPool", "status": st});
    api.patch_status(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}
