//! The hub's reflectors: AIServices, CloudPools and the operator namespace's Secrets, each
//! trimmed before it is cached (see [`crate::trim`]).

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::runtime::reflector;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use skyloom_api::{AIService, CloudPool};

use super::{HubStores, Key, SeenGenerations, key_of};

/// Starts the hub reflectors; returns their stores and the tasks driving them. `on_service`
/// is told about every AIService change, `on_pool_or_secret` about CloudPool and Secret changes.
pub fn start_reflectors(
    hub: &Client,
    namespace: &str,
    on_service: Arc<dyn Fn(Key, bool) + Send + Sync>,
    on_pool_or_secret: Arc<dyn Fn(bool) + Send + Sync>,
) -> (HubStores, Vec<tokio::task::JoinHandle<()>>) {
    let (services, w1) = reflector::store();
    let (pools, w2) = reflector::store();
    let (secrets, w3) = reflector::store();
    let svc_stream = reflector::reflector(
        w1,
        watcher::watcher(
            Api::<AIService>::all(hub.clone()),
            watcher::Config::default(),
        )
        .modify(crate::trim::hub_object)
        .default_backoff(),
    )
    .touched_objects();
    let generations: SeenGenerations<Key> = Arc::default();
    let t1 = tokio::spawn(async move {
        futures::pin_mut!(svc_stream);
        while let Some(item) = svc_stream.next().await {
            if let Ok(ais) = item {
                let key = key_of(&ais);
                let now = (
                    ais.metadata.generation,
                    ais.metadata.deletion_timestamp.is_some(),
                );
                let changed = generations
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(key.clone(), now)
                    != Some(now);
                on_service(key, changed);
            }
        }
    });
    let p = on_pool_or_secret.clone();
    let pool_stream = reflector::reflector(
        w2,
        watcher::watcher(
            Api::<CloudPool>::all(hub.clone()),
            watcher::Config::default(),
        )
        .modify(crate::trim::hub_object)
        .default_backoff(),
    )
    .touched_objects();
    let pool_generations: SeenGenerations<String> = Arc::default();
    let t2 = tokio::spawn(async move {
        futures::pin_mut!(pool_stream);
        while let Some(item) = pool_stream.next().await {
            if let Ok(pool) = item {
                let now = (
                    pool.metadata.generation,
                    pool.metadata.deletion_timestamp.is_some(),
                );
                let changed = pool_generations
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(pool.name_any(), now)
                    != Some(now);
                p(changed);
            }
        }
    });
    let secret_stream = reflector::reflector(
        w3,
        watcher::watcher(
            Api::<Secret>::namespaced(hub.clone(), namespace),
            watcher::Config::default(),
        )
        .modify(crate::trim::hub_object)
        .default_backoff(),
    );
    let t3 = tokio::spawn(async move {
        futures::pin_mut!(secret_stream);
        while let Some(item) = secret_stream.next().await {
            if item.is_ok() {
                on_pool_or_secret(false);
            }
        }
    });
    ((services, pools, secrets), vec![t1, t2, t3])
}
