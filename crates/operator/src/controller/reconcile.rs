//! Service workers: fetch an AIService, turn its decision into per-member targets, apply
//! them, write its status.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::ObjectRef;
use serde_json::json;
use skyloom_api::AIService;
use skyloom_api::aiservice::ScalingMode;

use crate::identity::FINALIZER;
use crate::realise::{self, Action, Limits, Observed};
use crate::replica_fights::Verdict;
use crate::status::{self, PoolReport, ServiceFacts};

use super::finalize::finalize;
use super::member_writes::{Reach, Replicas, apply_deployment, delete_deployment, render};
use super::service_status::write_service_status;
use super::{Context, Key, TEMPLATE_HASH_ANNOTATION};

/// Runs one service worker until aborted.
pub async fn worker(ctx: Arc<Context>) {
    let mut failures: BTreeMap<Key, u32> = BTreeMap::new();
    loop {
        let key = ctx.queue.pop().await;
        let start = Instant::now();
        let result = reconcile(&ctx, &key).await;
        ctx.queue.done(&key);
        ctx.metrics.observe_reconcile(
            "aiservice",
            start.elapsed(),
            result.as_ref().err().map(|e| e.kind()),
        );
        match result {
            Ok(Some(after)) => {
                failures.remove(&key);
                ctx.queue.push_after(key, after);
            }
            Ok(None) => {
                failures.remove(&key);
                ctx.queue.forget_delayed(&key);
            }
            Err(e) => {
                let n = failures.entry(key.clone()).or_insert(0);
                *n = n.saturating_add(1);
                let backoff = Duration::from_millis(500u64.saturating_mul(1 << (*n).min(6)))
                    .min(Duration::from_secs(30));
                tracing::warn!(service = %format!("{}/{}", key.0, key.1), kind = e.kind(), "reconcile failed, retrying in {backoff:?}: {e}");
                ctx.queue.push_after(key, backoff);
            }
        }
    }
}

/// Errors of one service reconcile, each with a stable kind for metrics.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// A call to the hub failed.
    #[error("hub: {0}")]
    Hub(#[source] kube::Error),
    /// A call to a member failed.
    #[error("member {pool}: {source}")]
    Member {
        /// The member.
        pool: String,
        /// The error.
        #[source]
        source: kube::Error,
    },
    /// The service's namespace is being deleted in a member: nothing new can go there.
    #[error("member {pool}: namespace {namespace} is terminating")]
    NamespaceTerminating {
        /// The member.
        pool: String,
        /// The namespace.
        namespace: String,
    },
}

impl ReconcileError {
    /// Stable kind for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            ReconcileError::Hub(_) => "hub_api",
            ReconcileError::Member { .. } => "member_api",
            ReconcileError::NamespaceTerminating { .. } => "namespace_terminating",
        }
    }
}

fn has_finalizer(ais: &AIService) -> bool {
    ais.finalizers().iter().any(|f| f == FINALIZER)
}

/// Adds Skyloom's finalizer, guarded by the resourceVersion so no other finalizer is lost. The
/// cached object can be behind the hub (the watch lags under load, and this reconcile may
/// follow one that already added it): on a conflict the object is read afresh and, if the
/// finalizer is still missing, patched once more against that version.
async fn add_finalizer(
    api: &Api<AIService>,
    cached: &AIService,
) -> Result<Arc<AIService>, ReconcileError> {
    let patch = |ais: &AIService| {
        let mut finalizers = ais.finalizers().to_vec();
        finalizers.push(FINALIZER.to_owned());
        json!({"metadata": {"finalizers": finalizers, "resourceVersion": ais.resource_version()}})
    };
    let name = cached.name_any();
    match api
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(&patch(cached)),
        )
        .await
    {
        Ok(updated) => return Ok(Arc::new(updated)),
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => return Err(ReconcileError::Hub(e)),
    }
    let fresh = api.get(&name).await.map_err(ReconcileError::Hub)?;
    // An object being deleted takes no new finalizer (the API server refuses it); the
    // caller finalizes it instead.
    if has_finalizer(&fresh) || fresh.metadata.deletion_timestamp.is_some() {
        return Ok(Arc::new(fresh));
    }
    api.patch(
        &name,
        &PatchParams::default(),
        &Patch::Merge(&patch(&fresh)),
    )
    .await
    .map(Arc::new)
    .map_err(ReconcileError::Hub)
}

/// Reconciles one AIService; returns when to look again if not converged.
pub(super) async fn reconcile(
    ctx: &Context,
    key: &Key,
) -> Result<Option<Duration>, ReconcileError> {
    let Some(ais) = ctx.services.get(&ObjectRef::new(&key.1).within(&key.0)) else {
        return Ok(None);
    };
    let api: Api<AIService> = Api::namespaced(ctx.hub.clone(), &key.0);
    if ais.metadata.deletion_timestamp.is_some() {
        return finalize(ctx, &ais, &api).await;
    }
    // The finalizer goes on before anything exists in a member; the updated object is used
    // for the rest of this pass (no extra round through the queue).
    let ais = if has_finalizer(&ais) {
        ais
    } else {
        let fresh = add_finalizer(&api, &ais).await?;
        // Read afresh after a conflict: it may be being deleted already.
        if fresh.metadata.deletion_timestamp.is_some() {
            return finalize(ctx, &fresh, &api).await;
        }
        fresh
    };
    let decision = ctx.decision(key);
    let views = ctx.registry.views();
    let rendered = render(&ais, ctx.registry.control_plane());
    let hash = rendered.1.clone();
    let mut observed = BTreeMap::new();
    let mut reports: BTreeMap<String, PoolReport> = BTreeMap::new();
    for (pool, view) in &views {
        let deployments = ctx.registry.deployments_of(pool, &key.0, &key.1);
        let d = deployments.first();
        let spec = d
            .and_then(|d| d.spec.replicas)
            .map(|r| u32::try_from(r).unwrap_or(0));
        let st = d.and_then(|d| d.status.as_ref());
        let count = |v: Option<i32>| u32::try_from(v.unwrap_or(0)).unwrap_or(0);
        let available = count(st.and_then(|s| s.available_replicas));
        let deadline_exceeded = st.is_some_and(|s| {
            s.conditions.iter().flatten().any(|c| {
                c.type_.as_deref() == Some("Progressing")
                    && c.status.as_deref() == Some("False")
                    && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
            })
        });
        let rolled_out = d.is_some_and(|d| {
            let gen_ok =
                d.status.as_ref().and_then(|s| s.observed_generation) >= d.metadata.generation;
            let hash_ok = d.annotations().get(TEMPLATE_HASH_ANNOTATION) == Some(&hash);
            let updated = count(d.status.as_ref().and_then(|s| s.updated_replicas));
            gen_ok && hash_ok && updated >= spec.unwrap_or(0)
        });
        let seen = Observed {
            observable: view.observable(),
            spec_replicas: spec,
            available,
            deadline_exceeded,
        };
        observed.insert(
            pool.clone(),
            ctx.pending_writes.correct(
                key,
                pool,
                seen,
                d.and_then(|d| Some((d.metadata.uid.as_deref()?, d.metadata.generation?))),
                Instant::now(),
            ),
        );
        reports.insert(
            pool.clone(),
            PoolReport {
                desired: decision
                    .as_ref()
                    .and_then(|d| d.replicas.get(pool).copied())
                    .unwrap_or(0),
                spec: spec.unwrap_or(0),
                ready: count(st.and_then(|s| s.ready_replicas)),
                available,
                rolled_out: rolled_out || spec.is_none(),
                stale: !view.observable(),
                deadline_exceeded,
                namespace_terminating: false,
                last_observed: (!view.observable())
                    .then_some(view.last_probe)
                    .flatten()
                    .and_then(|t| k8s_openapi::jiff::Timestamp::try_from(t).ok())
                    // Whole seconds, as the API stores it: else the status never equals
                    // the cached one and is written again on every pass.
                    .and_then(|t| k8s_openapi::jiff::Timestamp::from_second(t.as_second()).ok())
                    .map(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time),
                problem: (!view.observable()).then(|| view.health.message()),
            },
        );
    }
    let mut conflicts = Vec::new();
    let mut scaling_conflicts = Vec::new();
    let mut pending_writes = false;
    let member_scaled = ais.spec.scaling_mode() == ScalingMode::Member;
    if let Some(decision) = decision.as_ref().filter(|d| d.invalid.is_none()) {
        let migration = ais.spec.migration();
        let limits = Limits {
            desired: u32::try_from(ais.spec.replicas).unwrap_or(0),
            max_surge: u32::try_from(migration.max_surge()).unwrap_or(1),
            max_unavailable: u32::try_from(migration.max_unavailable()).unwrap_or(0),
        };
        let stalled = realise::stalled_moves(&decision.replicas, &observed);
        let given_up = ctx.stalled_moves.give_up(&ais, &stalled, &ctx.pools);
        if !given_up.is_empty() {
            tracing::warn!(service = %format!("{}/{}", key.0, key.1), ?given_up, "a move made no progress within migration.timeoutSeconds; giving it up and avoiding the target");
            ctx.schedule.notify_one();
        }
        let targets = if member_scaled {
            realise::member_scaled_targets(&decision.replicas, &observed, limits)
        } else {
            realise::targets(&decision.replicas, &observed, limits)
        };
        let needs_update = |pool: &str| {
            ctx.registry
                .deployments_of(pool, &key.0, &key.1)
                .first()
                .is_some_and(|d| d.annotations().get(TEMPLATE_HASH_ANNOTATION) != Some(&hash))
        };
        let actions = realise::actions(&targets, &observed, &needs_update);
        pending_writes = !actions.is_empty()
            || targets.iter().any(|(p, n)| {
                let wanted = decision.replicas.get(p).copied().unwrap_or(0);
                if member_scaled {
                    (wanted > 0) != (*n > 0)
                } else {
                    wanted != *n
                }
            });
        for action in actions {
            match action {
                Action::Apply { pool, replicas } => {
                    let fight_key = (key.0.clone(), key.1.clone(), pool.clone());
                    let verdict = if member_scaled {
                        Verdict::Apply
                    } else {
                        ctx.fights().judge(
                            &fight_key,
                            replicas,
                            observed.get(&pool).and_then(|o| o.spec_replicas),
                            !needs_update(&pool),
                            ctx.settings.scaling_conflict_window,
                            Instant::now(),
                        )
                    };
                    if verdict == Verdict::HoldOff {
                        scaling_conflicts.push(pool);
                        continue;
                    }
                    let count = replicas;
                    let replicas = if member_scaled {
                        Replicas::Member {
                            count: replicas,
                            exists: observed
                                .get(&pool)
                                .is_some_and(|o| o.spec_replicas.is_some()),
                        }
                    } else {
                        Replicas::Owned(replicas)
                    };
                    match apply_deployment(ctx, &pool, &ais, &rendered.0, replicas).await {
                        Ok(true) => {
                            if verdict == Verdict::Revert {
                                tracing::info!(service = %format!("{}/{}", key.0, key.1), pool, "another writer changed the member's replica count; put back");
                            }
                            ctx.fights()
                                .applied(fight_key, count, verdict, Instant::now());
                        }
                        Ok(false) => conflicts.push(format!(
                            "member {pool} has a Deployment {}/{} that Skyloom does not own; it is left alone",
                            key.0, key.1
                        )),
                        Err(ReconcileError::NamespaceTerminating { pool, namespace }) => {
                            if ctx.terminating_namespaces.mark(&pool, &namespace) {
                                tracing::warn!(service = %format!("{}/{}", key.0, key.1), pool, "the namespace is terminating in the member; its replicas go elsewhere until it is gone");
                                ctx.schedule.notify_one();
                            }
                        }
                        Err(e) => return Err(e),
                    }
                }
                Action::Delete { pool } => {
                    delete_deployment(ctx, &pool, key, Reach::SeenAndUnseen).await?;
                    ctx.fights().forget(&(key.0.clone(), key.1.clone(), pool));
                }
            }
        }
    }
    for pool in ctx.terminating_namespaces.pools_for(&key.0) {
        if let Some(report) = reports.get_mut(&pool) {
            report.namespace_terminating = true;
        }
    }
    let mut desired = u32::try_from(ais.spec.replicas).unwrap_or(0);
    if member_scaled {
        desired = status::member_chosen(&mut reports).unwrap_or(desired);
    }
    let facts = ServiceFacts {
        desired,
        min_available: u32::try_from(ais.spec.min_replicas())
            .unwrap_or(0)
            .min(desired),
        pools: reports,
        unplaced: decision
            .as_ref()
            .filter(|d| d.invalid.is_none())
            .map(|d| d.unplaced),
        explanation: decision.as_ref().map(|d| d.explanation.clone()),
        cost_per_hour: decision.as_ref().map(|d| d.cost_per_hour),
        invalid: decision.as_ref().and_then(|d| d.invalid.clone()),
        conflicts,
        pending_writes,
        failing_over: decision
            .as_ref()
            .map(|d| d.failing_over.clone())
            .unwrap_or_default(),
        migration_stalled: ctx.stalled_moves.avoided(&ais, &ctx.pools),
        scaling_conflicts,
        scaling_conflict_window_seconds: ctx.settings.scaling_conflict_window.as_secs(),
        timeout_seconds: ais.spec.migration().timeout().as_secs(),
    };
    let parts = status::service_status(&facts);
    let converged = parts
        .conditions
        .iter()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    write_service_status(ctx, &ais, &api, &facts, parts, decision.as_ref()).await?;
    // Member watches trigger reconciles as Deployments change; this is only a safety net.
    Ok((!converged).then_some(Duration::from_secs(30)))
}

#[cfg(test)]
mod tests {
    //! The finalizer's conflict path, against a tower-test mock hub (exact call sequence).

    use http::{Request, Response};
    use kube::Client;
    use kube::client::Body;
    use tower_test::mock;

    use super::*;

    fn service(resource_version: &str, finalizers: &[&str]) -> serde_json::Value {
        serde_json::json!({
            "apiVersion": "skyloom.io/v1alpha1", "kind": "AIService",
            "metadata": {"name": "llm", "namespace": "ml", "resourceVersion": resource_version,
                         "finalizers": finalizers},
            "spec": {"replicas": 1, "template": {"spec": {"containers": [{"name": "c", "image": "i"}]}}},
        })
    }

    fn answer(code: u16, body: serde_json::Value) -> Response<Body> {
        let mut r = Response::new(Body::from(body.to_string().into_bytes()));
        *r.status_mut() = http::StatusCode::from_u16(code).unwrap();
        r
    }

    fn conflict() -> Response<Body> {
        answer(
            409,
            serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                "reason": "Conflict", "code": 409, "message": "the object has been modified"}),
        )
    }

    /// The next request: its method, path and body.
    async fn next(
        handle: &mut mock::Handle<Request<Body>, Response<Body>>,
    ) -> (
        http::Method,
        String,
        serde_json::Value,
        mock::SendResponse<Response<Body>>,
    ) {
        let (request, respond) = handle.next_request().await.expect("a request");
        let (parts, body) = request.into_parts();
        let bytes = body.collect_bytes().await.unwrap();
        let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
        (parts.method, parts.uri.path().to_owned(), json, respond)
    }

    const PATH: &str = "/apis/skyloom.io/v1alpha1/namespaces/ml/aiservices/llm";

    type Hub = mock::Handle<Request<Body>, Response<Body>>;
    type Call = tokio::task::JoinHandle<Result<Arc<AIService>, ReconcileError>>;

    /// `add_finalizer` on `cached` (resourceVersion "1"), running against a mock hub.
    fn start(finalizers: &[&str]) -> (Hub, Call) {
        let (svc, handle) = mock::pair::<Request<Body>, Response<Body>>();
        let api: Api<AIService> = Api::namespaced(Client::new(svc, "ml"), "ml");
        let cached: AIService = serde_json::from_value(service("1", finalizers)).unwrap();
        (
            handle,
            tokio::spawn(async move { add_finalizer(&api, &cached).await }),
        )
    }

    /// Checks that the request is the finalizer patch against `resource_version`, keeping
    /// the other finalizer.
    fn assert_patch(method: http::Method, path: &str, body: &serde_json::Value, rv: &str) {
        assert_eq!((method, path), (http::Method::PATCH, PATH));
        assert_eq!(body["metadata"]["resourceVersion"], rv);
        assert_eq!(
            body["metadata"]["finalizers"],
            serde_json::json!(["other.io/keep", FINALIZER])
        );
    }

    #[tokio::test]
    async fn a_stale_cache_that_misses_the_finalizer_costs_a_read_not_an_error() {
        let (mut handle, call) = start(&["other.io/keep"]);
        let (method, path, body, respond) = next(&mut handle).await;
        assert_patch(method, &path, &body, "1");
        respond.send_response(conflict());
        // The hub already has it (an earlier reconcile added it): read, and nothing more.
        let (method, path, _, respond) = next(&mut handle).await;
        assert_eq!((method, path.as_str()), (http::Method::GET, PATH));
        respond.send_response(answer(200, service("3", &["other.io/keep", FINALIZER])));
        let fresh = call.await.unwrap().expect("no error");
        assert_eq!(fresh.resource_version().as_deref(), Some("3"));
        assert!(has_finalizer(&fresh));
    }

    #[tokio::test]
    async fn a_finalizer_someone_else_added_meanwhile_is_kept() {
        let (mut handle, call) = start(&[]);
        let (_, _, _, respond) = next(&mut handle).await;
        respond.send_response(conflict());
        let (_, _, _, respond) = next(&mut handle).await;
        respond.send_response(answer(200, service("2", &["other.io/keep"])));
        // Patched against the fresh version, with the other finalizer kept.
        let (method, path, body, respond) = next(&mut handle).await;
        assert_patch(method, &path, &body, "2");
        respond.send_response(answer(200, service("3", &["other.io/keep", FINALIZER])));
        assert!(has_finalizer(&call.await.unwrap().expect("no error")));
    }
}
