//! The hub's reflectors: AIServices, CloudPools and the operator namespace's Secrets, each
//! trimmed before it is cached (see [`crate::trim`]).

use std::collections::BTreeMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::runtime::reflector;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use skyloom_api::{AIService, CloudPool};

use super::{HubStores, Key, SeenGenerations, key_of};

/// What of an AIService, besides its status, was last seen: its status is Skyloom's own, so a
/// change of the status alone (the operator's write coming back through the watch) is no
/// reason to reconcile it again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ServiceMarks {
    generation: Option<i64>,
    deleting: bool,
    /// A hash of the finalizers, labels and annotations.
    metadata: u64,
}

impl ServiceMarks {
    fn of(ais: &AIService) -> Self {
        let mut h = DefaultHasher::new();
        ais.metadata.finalizers.hash(&mut h);
        ais.metadata.labels.hash(&mut h);
        ais.metadata.annotations.hash(&mut h);
        Self {
            generation: ais.metadata.generation,
            deleting: ais.metadata.deletion_timestamp.is_some(),
            metadata: h.finish(),
        }
    }

    /// What a placement depends on: the spec (by its generation) and whether it is deleted.
    fn spec_part(self) -> (Option<i64>, bool) {
        (self.generation, self.deleting)
    }
}

/// Which AIService events call for a reconcile. A change of anything but the status does,
/// saying whether the spec changed or the object is deleted (the scheduler decides again);
/// Skyloom's own status writes coming back do not. A relist is judged at its end, against
/// what was known before it, once the store holds the new list: services that changed, came
/// or went meanwhile are reconciled, the others not.
#[derive(Default)]
struct ServiceEvents {
    known: BTreeMap<Key, ServiceMarks>,
    /// During a relist: what it has listed so far.
    listing: Option<BTreeMap<Key, ServiceMarks>>,
}

impl ServiceEvents {
    /// The services to reconcile after `event`, each with whether its spec changed (or it is
    /// being deleted or gone).
    fn handle(&mut self, event: watcher::Event<AIService>) -> Vec<(Key, bool)> {
        match event {
            watcher::Event::Apply(ais) => {
                let key = key_of(&ais);
                let now = ServiceMarks::of(&ais);
                match self.known.insert(key.clone(), now) {
                    Some(before) if before == now => Vec::new(),
                    Some(before) if before.spec_part() == now.spec_part() => vec![(key, false)],
                    _ => vec![(key, true)],
                }
            }
            watcher::Event::Delete(ais) => {
                let key = key_of(&ais);
                self.known.remove(&key);
                vec![(key, true)]
            }
            watcher::Event::Init => {
                self.listing = Some(BTreeMap::new());
                Vec::new()
            }
            watcher::Event::InitApply(ais) => {
                self.listing
                    .get_or_insert_with(BTreeMap::new)
                    .insert(key_of(&ais), ServiceMarks::of(&ais));
                Vec::new()
            }
            watcher::Event::InitDone => {
                let listed = self.listing.take().unwrap_or_default();
                let mut out: Vec<(Key, bool)> = self
                    .known
                    .keys()
                    .filter(|k| !listed.contains_key(*k))
                    .map(|k| (k.clone(), true))
                    .collect();
                for (key, now) in &listed {
                    match self.known.get(key) {
                        Some(before) if before == now => {}
                        Some(before) if before.spec_part() == now.spec_part() => {
                            out.push((key.clone(), false));
                        }
                        _ => out.push((key.clone(), true)),
                    }
                }
                self.known = listed;
                out
            }
        }
    }
}

/// Starts the hub reflectors; returns their stores and the tasks driving them. `on_service`
/// is told about every AIService change but its status (with whether the spec changed or the
/// object is being deleted or gone), `on_pool_or_secret` about CloudPool and Secret changes.
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
    );
    let t1 = tokio::spawn(async move {
        futures::pin_mut!(svc_stream);
        let mut marks = ServiceEvents::default();
        while let Some(item) = svc_stream.next().await {
            // The watcher relists with backoff by itself after an error.
            let Ok(event) = item else { continue };
            for (key, spec_changed) in marks.handle(event) {
                on_service(key, spec_changed);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn service(name: &str, generation: i64, cost: &str) -> AIService {
        let mut ais: AIService = serde_json::from_value(serde_json::json!({
            "apiVersion": "skyloom.io/v1alpha1", "kind": "AIService",
            "metadata": {"name": name, "namespace": "ns", "generation": generation},
            "spec": {"replicas": 1, "template": {"spec": {"containers": [{"name": "c", "image": "i"}]}}},
        }))
        .unwrap();
        ais.status = Some(skyloom_api::AIServiceStatus {
            cost_per_hour: Some(cost.to_owned()),
            ..Default::default()
        });
        ais
    }

    fn key(name: &str) -> Key {
        ("ns".to_owned(), name.to_owned())
    }

    fn listed(events: &mut ServiceEvents, objects: Vec<AIService>) -> Vec<(Key, bool)> {
        assert!(events.handle(watcher::Event::Init).is_empty());
        for o in objects {
            assert!(events.handle(watcher::Event::InitApply(o)).is_empty());
        }
        events.handle(watcher::Event::InitDone)
    }

    #[test]
    fn skyloom_s_own_status_writes_are_no_reason_to_reconcile() {
        let mut ev = ServiceEvents::default();
        assert_eq!(
            listed(&mut ev, vec![service("a", 1, "")]),
            vec![(key("a"), true)]
        );
        assert!(
            ev.handle(watcher::Event::Apply(service("a", 1, "1.00")))
                .is_empty()
        );
        // A spec change is.
        assert_eq!(
            ev.handle(watcher::Event::Apply(service("a", 2, "1.00"))),
            vec![(key("a"), true)]
        );
        // So is a label (or annotation or finalizer) change, without a new decision.
        let mut labelled = service("a", 2, "1.00");
        labelled
            .metadata
            .labels
            .get_or_insert_default()
            .insert("team".into(), "x".into());
        assert_eq!(
            ev.handle(watcher::Event::Apply(labelled)),
            vec![(key("a"), false)]
        );
        assert_eq!(
            ev.handle(watcher::Event::Delete(service("a", 2, ""))),
            vec![(key("a"), true)]
        );
    }

    #[test]
    fn a_relist_reconciles_only_what_changed_came_or_went() {
        let mut ev = ServiceEvents::default();
        let first = listed(
            &mut ev,
            vec![
                service("same", 1, ""),
                service("edited", 1, ""),
                service("gone", 1, ""),
            ],
        );
        assert_eq!(first.len(), 3);
        let mut again = listed(
            &mut ev,
            vec![
                service("same", 1, "2.00"),
                service("edited", 2, ""),
                service("new", 1, ""),
            ],
        );
        again.sort();
        assert_eq!(
            again,
            vec![
                (key("edited"), true),
                (key("gone"), true),
                (key("new"), true)
            ]
        );
    }
}
