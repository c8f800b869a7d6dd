//! Writes to member clusters: the rendered Deployment, its namespace, server-side apply and
//! guarded deletes. Nothing here touches an object without Skyloom's marks.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::{Client, ResourceExt};
use serde_json::json;
use sha2::{Digest, Sha256};
use skyloom_api::AIService;

use crate::identity::{
    self, CREATED_NAMESPACE_LABEL, FIELD_MANAGER, MANAGED_BY, ownership_annotations,
    workload_labels,
};

use super::member_namespaces::{is_terminating, is_terminating_error};
use super::pending_writes::Written;
use super::reconcile::ReconcileError;
use super::{Context, Key, TEMPLATE_HASH_ANNOTATION, key_of};

/// Renders the member Deployment (without namespace and replicas) and its template hash.
pub(super) fn render(ais: &AIService, control_plane: &str) -> (serde_json::Value, String) {
    let (ns, name) = key_of(ais);
    let labels = workload_labels(&ns, &name);
    let mut template = serde_json::to_value(&ais.spec.template).unwrap_or_else(|_| json!({}));
    let mut pod_labels: BTreeMap<String, String> = ais
        .spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    pod_labels.extend(labels.clone());
    if let Some(obj) = template.as_object_mut() {
        let meta = obj.entry("metadata").or_insert_with(|| json!({}));
        if let Some(m) = meta.as_object_mut() {
            m.insert("labels".into(), json!(pod_labels));
        }
    }
    // The member's controller-manager reports a Deployment that makes no progress within
    // migration.timeoutSeconds as ProgressDeadlineExceeded; that is what stalls a move.
    let deadline = ais.spec.migration().timeout().as_secs();
    let spec = json!({
        "selector": {"matchLabels": {identity::SERVICE_ID_LABEL: identity::service_id(&ns, &name)}},
        "template": template,
        "progressDeadlineSeconds": deadline,
    });
    let mut h = Sha256::new();
    h.update(spec.to_string().as_bytes());
    let hash: String = h.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let mut annotations =
        ownership_annotations(&ns, &name, &ais.uid().unwrap_or_default(), control_plane);
    annotations.insert(TEMPLATE_HASH_ANNOTATION.to_owned(), hash.clone());
    let doc = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": ns, "labels": labels, "annotations": annotations},
        "spec": spec,
    });
    (doc, hash)
}

/// Creates the namespace in a member if it is missing (labelled as Skyloom's).
pub(super) async fn ensure_namespace(
    client: &Client,
    pool: &str,
    ns: &str,
) -> Result<bool, ReconcileError> {
    let api: Api<Namespace> = Api::all(client.clone());
    let member_err = |source| ReconcileError::Member {
        pool: pool.to_owned(),
        source,
    };
    if let Some(existing) = api.get_opt(ns).await.map_err(member_err)? {
        if is_terminating(&existing) {
            return Err(ReconcileError::NamespaceTerminating {
                pool: pool.to_owned(),
                namespace: ns.to_owned(),
            });
        }
        return Ok(false);
    }
    let obj: Namespace = serde_json::from_value(json!({
        "metadata": {"name": ns, "labels": {CREATED_NAMESPACE_LABEL: MANAGED_BY}}
    }))
    .unwrap_or_default();
    match api.create(&PostParams::default(), &obj).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
        Err(e) => Err(member_err(e)),
    }
}

/// Field manager that sets the first replica count of a Deployment whose replicas a member's
/// autoscaler owns (`scaling.mode: Member`): Skyloom's own manager never holds the field, so
/// an HPA or `kubectl scale` takes it over without a conflict.
pub const INITIAL_REPLICAS_MANAGER: &str = "skyloom-initial-replicas";

/// How an apply treats `spec.replicas`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Replicas {
    /// Skyloom owns the count and sets it.
    Owned(u32),
    /// The member owns the count: Skyloom's manager leaves it out; the count (the observed
    /// one, or the decided one for a new Deployment) is held by [`INITIAL_REPLICAS_MANAGER`]
    /// so that leaving it out never resets it.
    Member {
        /// The count to hold.
        count: u32,
        /// Whether the Deployment exists already.
        exists: bool,
    },
}

/// Applies the Deployment in `pool`; returns false when an unowned object of that name is in
/// the way (nothing is written then). The member's answer is recorded as a pending write
/// until the member's watch shows it.
pub(super) async fn apply_deployment(
    ctx: &Context,
    pool: &str,
    ais: &AIService,
    rendered: &serde_json::Value,
    replicas: Replicas,
) -> Result<bool, ReconcileError> {
    let Some(client) = ctx.registry.client(pool) else {
        return Ok(true);
    };
    let (ns, name) = key_of(ais);
    let member_err = |source| ReconcileError::Member {
        pool: pool.to_owned(),
        source,
    };
    let known = (pool.to_owned(), ns.clone());
    let cached = ctx
        .known_namespaces
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .contains(&known);
    let created_now = if cached {
        false
    } else {
        ensure_namespace(&client, pool, &ns).await?
    };
    ctx.known_namespaces
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(known.clone());
    let api: Api<Deployment> = Api::namespaced(client, &ns);
    // A namespace created just now holds nothing; otherwise an object of that name that the
    // watch (which sees only Skyloom's objects) does not show must be looked at first.
    if !created_now
        && ctx.registry.deployments_of(pool, &ns, &name).is_empty()
        && let Some(existing) = api.get_opt(&name).await.map_err(member_err)?
        && identity::owner_of(&existing.metadata, ctx.registry.control_plane()).is_none()
    {
        return Ok(false);
    }
    let mut doc = rendered.clone();
    let hold = match replicas {
        Replicas::Owned(n) => {
            doc["spec"]["replicas"] = json!(n);
            None
        }
        Replicas::Member { count, exists } => Some((count, exists)),
    };
    // An existing Deployment's count is held before Skyloom's manager lets go of it.
    if let Some((count, true)) = hold {
        hold_replicas(&api, &name, &ns, count)
            .await
            .map_err(member_err)?;
    }
    let applied = api
        .patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&doc),
        )
        .await;
    let record = |answer: &Deployment| {
        if let Some(written) = Written::applied(answer) {
            let key = (ns.clone(), name.clone());
            ctx.pending_writes
                .wrote(&key, pool, written, std::time::Instant::now());
        }
    };
    match applied {
        Ok(answer) => record(&answer),
        Err(e) if is_terminating_error(&e) => {
            // The namespace began terminating after it was cached: look again next time.
            ctx.known_namespaces
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&known);
            return Err(ReconcileError::NamespaceTerminating {
                pool: pool.to_owned(),
                namespace: ns,
            });
        }
        Err(e) => return Err(member_err(e)),
    }
    if let Some((count, false)) = hold
        && let Some(held) = hold_replicas(&api, &name, &ns, count)
            .await
            .map_err(member_err)?
    {
        record(&held);
    }
    tracing::info!(service = %format!("{ns}/{name}"), pool, ?replicas, "applied member Deployment");
    Ok(true)
}

/// Applies `spec.replicas` alone under [`INITIAL_REPLICAS_MANAGER`], without force: when
/// another writer (an HPA, `kubectl scale`) set a different count meanwhile, theirs stands
/// (and there is no answer).
async fn hold_replicas(
    api: &Api<Deployment>,
    name: &str,
    ns: &str,
    count: u32,
) -> Result<Option<Deployment>, kube::Error> {
    let doc = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"replicas": count},
    });
    match api
        .patch(
            name,
            &PatchParams::apply(INITIAL_REPLICAS_MANAGER),
            &Patch::Apply(&doc),
        )
        .await
    {
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(None),
        other => other.map(Some),
    }
}

/// Which of a service's member Deployments a delete reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Reach {
    /// Those the watch shows, and one Skyloom wrote in the last moments that the watch does
    /// not show yet (a service's own worker, which knows its writes).
    SeenAndUnseen,
    /// Only those the watch shows (the orphan sweep, which judged what it saw).
    Seen,
}

/// Deletes the owned Deployments of `key` in `pool` that `reach` covers, each only by its
/// UID, so nothing else of that name is touched. What was deleted (or found gone) is recorded
/// as a pending write, also when a later delete fails.
pub(super) async fn delete_deployment(
    ctx: &Context,
    pool: &str,
    key: &Key,
    reach: Reach,
) -> Result<(), ReconcileError> {
    let Some(client) = ctx.registry.client(pool) else {
        return Ok(());
    };
    let api: Api<Deployment> = Api::namespaced(client, &key.0);
    let mut targets: Vec<(String, String)> = ctx
        .registry
        .deployments_of(pool, &key.0, &key.1)
        .iter()
        .filter_map(|d| Some((d.name_any(), d.metadata.uid.clone()?)))
        .collect();
    if reach == Reach::SeenAndUnseen
        && let Some(uid) = ctx
            .pending_writes
            .unseen_object(key, pool, std::time::Instant::now())
        && !targets.iter().any(|(_, u)| *u == uid)
    {
        targets.push((key.1.clone(), uid));
    }
    let mut gone = Vec::new();
    let mut failed = None;
    for (name, uid) in targets {
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: Some(uid.clone()),
                resource_version: None,
            }),
            ..DeleteParams::background()
        };
        match api.delete(&name, &params).await {
            Ok(_) => {
                tracing::info!(service = %format!("{}/{}", key.0, key.1), pool, "deleted member Deployment");
                gone.push(uid);
            }
            Err(kube::Error::Api(s)) if s.code == 404 => gone.push(uid),
            // Another object of that name now: not Skyloom's to delete.
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(source) => {
                failed = Some(ReconcileError::Member {
                    pool: pool.to_owned(),
                    source,
                });
                break;
            }
        }
    }
    if !gone.is_empty() {
        ctx.pending_writes.wrote(
            key,
            pool,
            Written::Deleted { uids: gone },
            std::time::Instant::now(),
        );
    }
    failed.map_or(Ok(()), Err)
}
