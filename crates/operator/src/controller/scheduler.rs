//! The scheduler: one global decision from a consistent snapshot of the hub and the
//! members, debounced; grace-period wake-ups, periodic re-optimisation and the orphan sweep.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;
use skyloom_api::aiservice::FailoverMode;
use skyloom_solver::{Snapshot, SolveOptions, SolveStatus};

use crate::explain;
use crate::identity::{self};
use crate::snapshot::{self, PoolFacts};

use super::member_writes::{Reach, delete_deployment};
use super::{Context, Decision, Key, STARTUP_GRACE, key_of};

/// Runs the scheduler until aborted.
pub async fn scheduler(ctx: Arc<Context>) {
    loop {
        let wake = next_wake(&ctx);
        tokio::select! {
            _ = ctx.schedule.notified() => {}
            _ = tokio::time::sleep(wake) => {}
        }
        tokio::time::sleep(ctx.settings.debounce).await;
        let start = Instant::now();
        match decide(&ctx).await {
            Ok(changed) => {
                ctx.metrics.observe_solve(start.elapsed(), true);
                sweep_orphans(&ctx).await;
                for key in changed {
                    ctx.queue.push_placement(key);
                }
            }
            Err(e) => {
                ctx.metrics.observe_solve(start.elapsed(), false);
                tracing::error!("placement failed, keeping the previous decisions: {e}");
            }
        }
    }
}

/// Deletes owned Deployments, in members that can be observed, whose AIService no longer
/// exists on the hub (its finalizer was removed by hand, or it went while nobody watched).
/// Re-derived from what is observed each time, never replayed from memory.
pub(super) async fn sweep_orphans(ctx: &Context) {
    let views = ctx.registry.views();
    for (pool, deployments) in ctx.registry.all_deployments() {
        if !views.get(&pool).is_some_and(|v| v.observable()) {
            continue;
        }
        for d in deployments {
            let Some((ns, name)) = identity::owner_of(&d.metadata, ctx.registry.control_plane())
            else {
                continue;
            };
            if ctx
                .services
                .get(&ObjectRef::new(&name).within(&ns))
                .is_some()
            {
                continue;
            }
            tracing::warn!(service = %format!("{ns}/{name}"), pool = %pool, "pruning an orphaned member Deployment: its AIService is gone");
            if let Err(e) = delete_deployment(ctx, &pool, &(ns, name), Reach::Seen).await {
                tracing::warn!("pruning failed, will retry: {e}");
            }
        }
    }
}

/// The next time something must be decided without an event: the end of a member's grace
/// period for some service, or the periodic re-optimisation.
pub(super) fn next_wake(ctx: &Context) -> Duration {
    if ctx
        .schedule_soon
        .swap(false, std::sync::atomic::Ordering::SeqCst)
    {
        return Duration::from_millis(500);
    }
    let mut wake = ctx.settings.reoptimize.unwrap_or(Duration::from_secs(3600));
    let views = ctx.registry.views();
    for ais in ctx.services.state() {
        let grace = ais.spec.failover_grace();
        for v in views.values() {
            if let Some(since) = v.not_ready_since {
                let elapsed = since.elapsed();
                if elapsed < grace {
                    wake = wake.min(grace - elapsed + Duration::from_millis(50));
                }
            }
        }
    }
    wake.max(Duration::from_millis(100))
}

/// Takes `avoided` members out of the clouds `service` may use (moves there were given up,
/// or the service's namespace is terminating there).
fn avoid(
    service: &mut skyloom_solver::Service,
    avoided: &[String],
    clouds: &[skyloom_solver::Cloud],
) {
    if avoided.is_empty() {
        return;
    }
    let allowed = service
        .placement
        .clouds
        .clone()
        .unwrap_or_else(|| clouds.iter().map(|c| c.name.clone()).collect());
    service.placement.clouds = Some(
        allowed
            .into_iter()
            .filter(|c| !avoided.contains(c))
            .collect(),
    );
}

/// Builds the snapshot, solves, stores the decisions; returns the services whose decision
/// changed.
pub(super) async fn decide(ctx: &Context) -> anyhow::Result<Vec<Key>> {
    let views = ctx.registry.views();
    // Right after start, a member whose Deployments have not been listed yet is unknown, not
    // empty: deciding now could place its replicas a second time elsewhere. A member not yet
    // probed would be left out as if unhealthy, and the first decisions would go to whichever
    // member answered first, only to move once the others do. Wait for every member to be
    // listed and probed, at most for the startup grace period.
    let unknown: Vec<&String> = views
        .iter()
        .filter(|(_, v)| !v.known())
        .map(|(k, _)| k)
        .collect();
    if !unknown.is_empty() && ctx.started.elapsed() < STARTUP_GRACE {
        tracing::debug!(
            ?unknown,
            "waiting for members to be listed and probed before the first decisions"
        );
        ctx.schedule_soon
            .store(true, std::sync::atomic::Ordering::SeqCst);
        return Ok(Vec::new());
    }
    let mut clouds = Vec::new();
    let mut invalid_pools = BTreeSet::new();
    for pool in ctx.pools.state() {
        let name = pool.name_any();
        let view = views.get(&name);
        let facts = PoolFacts {
            discovered: view
                .and_then(|v| v.capacity.as_ref())
                .map(|c| c.available()),
            largest_node: view
                .and_then(|v| v.capacity.as_ref())
                .map(|c| c.largest_node.clone()),
            healthy: view.is_some_and(|v| v.observable()),
        };
        match snapshot::cloud(&pool, &facts) {
            Ok(c) => clouds.push(c),
            Err(e) => {
                tracing::warn!("{e}; the pool is left out of planning");
                invalid_pools.insert(name);
            }
        }
    }
    // Replicas of every owned Deployment, indexed once per decision.
    let mut running: BTreeMap<(String, Key), u32> = BTreeMap::new();
    for (pool, deployments) in ctx.registry.all_deployments() {
        for d in deployments {
            if let Some(owner) = identity::owner_of(&d.metadata, ctx.registry.control_plane()) {
                let n = u32::try_from(d.spec.replicas.unwrap_or(0)).unwrap_or(0);
                *running.entry((pool.clone(), owner)).or_insert(0) += n;
            }
        }
    }
    let mut services = Vec::new();
    let mut invalid = BTreeMap::new();
    let mut failing_over: BTreeMap<Key, Vec<String>> = BTreeMap::new();
    for ais in ctx.services.state() {
        if ais.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let key = key_of(&ais);
        let grace = ais.spec.failover_grace();
        let hold = ais.spec.failover_mode() == FailoverMode::Hold;
        let mut current = BTreeMap::new();
        for (pool, view) in &views {
            let n = running
                .get(&(pool.clone(), key.clone()))
                .copied()
                .unwrap_or(0);
            if n == 0 {
                continue;
            }
            let lost = !view.observable()
                && !hold
                && view.not_ready_since.is_some_and(|s| s.elapsed() >= grace);
            if lost {
                failing_over
                    .entry(key.clone())
                    .or_default()
                    .push(pool.clone());
            } else {
                current.insert(pool.clone(), n);
            }
        }
        match snapshot::service(&ais, current) {
            Ok(mut s) => {
                let mut avoided = ctx.stalled_moves.avoided(&ais, &ctx.pools);
                avoided.extend(ctx.terminating_namespaces.pools_for(&key.0));
                avoid(&mut s, &avoided, &clouds);
                services.push(s)
            }
            Err(e) => {
                invalid.insert(key, e.to_string());
            }
        }
    }
    snapshot::count_pod_slots(&mut clouds, &mut services);
    let snapshot = Snapshot::new(clouds, services)?;
    let options = SolveOptions {
        time_limit: ctx.settings.solver_time_limit,
        ..SolveOptions::default()
    };
    let plan =
        tokio::task::spawn_blocking(move || skyloom_solver::solve(&snapshot, &options)).await??;
    let gap = match &plan.status {
        SolveStatus::Optimal => Some(0.0),
        other => serde_json::to_value(other)
            .ok()
            .and_then(|v| v.get("gapPercent").and_then(|g| g.as_f64())),
    };
    ctx.metrics.set_plan(&plan);
    ctx.metrics.set_solver(
        plan.objective.value,
        gap.unwrap_or(0.0) / 100.0,
        plan.totals.moves,
    );
    let generations: BTreeMap<Key, Option<i64>> = ctx
        .services
        .state()
        .iter()
        .map(|a| (key_of(a), a.metadata.generation))
        .collect();
    let mut next = BTreeMap::new();
    for sp in &plan.services {
        let key = (sp.namespace.clone(), sp.name.clone());
        next.insert(
            key.clone(),
            Decision {
                generation: generations.get(&key).copied().flatten(),
                replicas: sp
                    .placements
                    .iter()
                    .filter(|p| p.replicas > 0)
                    .map(|p| (p.cloud.clone(), p.replicas))
                    .collect(),
                unplaced: sp.unplaced,
                cost_per_hour: sp.cost_per_hour,
                explanation: explain::explanation(sp, gap),
                invalid: None,
                failing_over: failing_over.get(&key).cloned().unwrap_or_default(),
            },
        );
    }
    for (key, message) in invalid {
        next.insert(
            key.clone(),
            Decision {
                generation: generations.get(&key).copied().flatten(),
                replicas: BTreeMap::new(),
                unplaced: 0,
                cost_per_hour: 0.0,
                explanation: Default::default(),
                invalid: Some(message),
                failing_over: Vec::new(),
            },
        );
    }
    let mut decisions = ctx.decisions.write().unwrap_or_else(|p| p.into_inner());
    for (key, d) in &next {
        let before = decisions
            .get(key)
            .map(|p| p.failing_over.clone())
            .unwrap_or_default();
        for pool in d.failing_over.iter().filter(|p| !before.contains(p)) {
            ctx.metrics.count_failover(pool);
        }
    }
    let changed: Vec<Key> = next
        .iter()
        .filter(|(k, d)| decisions.get(*k) != Some(*d))
        .map(|(k, _)| k.clone())
        .chain(decisions.keys().filter(|k| !next.contains_key(*k)).cloned())
        .collect();
    *decisions = next;
    Ok(changed)
}
