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

/// What of an AIService was last seen: enough to tell a spec change (the scheduler decides
/// again) from any other change, and an object a relist repeats unchanged from one that
/// changed during the watch gap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ServiceMarks {
    uid: u64,
    generation: Option<i64>,
    deleting: bool,
    /// A hash of the resourceVersion, which the API server changes with any change.
    version: u64,
}

impl ServiceMarks {
    fn of(ais: &AIService) -> Self {
        let hash = |f: &dyn Fn(&mut DefaultHasher)| {
            let mut h = DefaultHasher::new();
            f(&mut h);
            h.finish()
        };
        Self {
            uid: hash(&|h| ais.metadata.uid.hash(h)),
            generation: ais.metadata.generation,
            deleting: ais.metadata.deletion_timestamp.is_some(),
            version: hash(&|h| ais.metadata.resource_version.hash(h)),
        }
    }

    /// What a placement depends on: which object, its spec (by generation), whether it is
    /// being deleted.
    fn spec_part(self) -> (u64, Option<i64>, bool) {
        (self.uid, self.generation, self.deleting)
    }
}

/// Which AIService events call for a reconcile, and whether the spec changed or the object
/// is deleted (the scheduler decides again). Every change does, Skyloom's own status writes
/// included: the status is compared with the cache, which can lag behind the last write,
/// and the write coming back is what corrects a comparison made against a stale cache. A
/// relist is judged at its end, against what was known before it, once the store holds the
/// new list: services that changed, came or went meanwhile are reconciled, the others not.
#[derive(Default)]
struct ServiceEvents {
    known: BTreeMap<Key, ServiceMarks>,
    /// During a relist: what it has listed so far.
    listing: Option<BTreeMap<Key, ServiceMarks>>,
}

/// Whether a service seen as `now` after `before` needs a reconcile, and if so whether its
/// spec changed (or it is a new object).
fn judge(before: Option<&ServiceMarks>, now: &ServiceMarks) -> Option<bool> {
    match before {
        Some(b) if b == now => None,
        Some(b) => Some(b.spec_part() != now.spec_part()),
        None => Some(true),
    }
}

impl ServiceEvents {
    /// The services to reconcile after `event`, each with whether its spec changed (or it is
    /// being deleted or gone).
    fn handle(&mut self, event: watcher::Event<AIService>) -> Vec<(Key, bool)> {
        match event {
            watcher::Event::Apply(ais) => {
                let key = key_of(&ais);
                let now = ServiceMarks::of(&ais);
                let before = self.known.insert(key.clone(), now);
                // An event repeating what is known still means someone wrote.
                vec![(key, judge(before.as_ref(), &now).unwrap_or(false))]
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
                    if let Some(spec_changed) = judge(self.known.get(key), now) {
                        out.push((key.clone(), spec_changed));
                    }
                }
                self.known = listed;
                out
            }
        }
    }
}

/// Starts the hub reflectors; returns their stores and the tasks driving them. `on_service`
/// is told about every AIService change (with whether the spec changed or the object is
/// being deleted or gone) and about what a relist found changed, `on_pool_or_secret` about
/// CloudPool and Secret changes.
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

    /// An AIService whose resourceVersion, as the API server's, changes with its content.
    fn service(name: &str, generation: i64, cost: &str) -> AIService {
        let mut ais: AIService = serde_json::from_value(serde_json::json!({
            "apiVersion": "skyloom.io/v1alpha1", "kind": "AIService",
            "metadata": {"name": name, "namespace": "ns", "generation": generation,
                         "resourceVersion": format!("{generation}-{cost}")},
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
    fn spec_changes_wake_the_scheduler_and_other_changes_only_the_service() {
        let mut ev = ServiceEvents::default();
        assert_eq!(
            listed(&mut ev, vec![service("a", 1, "")]),
            vec![(key("a"), true)]
        );
        // A status write coming back is reconciled (the cache may have been behind), without
        // a new decision.
        assert_eq!(
            ev.handle(watcher::Event::Apply(service("a", 1, "1.00"))),
            vec![(key("a"), false)]
        );
        assert_eq!(
            ev.handle(watcher::Event::Apply(service("a", 2, "1.00"))),
            vec![(key("a"), true)]
        );
        let mut labelled = service("a", 2, "1.00");
        labelled
            .metadata
            .labels
            .get_or_insert_default()
            .insert("team".into(), "x".into());
        labelled.metadata.resource_version = Some("2-1.00-labelled".into());
        assert_eq!(
            ev.handle(watcher::Event::Apply(labelled)),
            vec![(key("a"), false)]
        );
        // The same name, a new object: decided afresh.
        let mut again = service("a", 2, "1.00");
        again.metadata.uid = Some("another".into());
        assert_eq!(
            ev.handle(watcher::Event::Apply(again)),
            vec![(key("a"), true)]
        );
        assert_eq!(
            ev.handle(watcher::Event::Delete(service("a", 2, ""))),
            vec![(key("a"), true)]
        );
    }

    #[test]
    fn a_relist_reconciles_only_what_changed_came_or_went() {
        let mut ev = ServiceEvents::default();
        let names = ["same", "edited", "status", "gone"];
        let first = listed(&mut ev, names.map(|n| service(n, 1, "")).to_vec());
        assert_eq!(first.len(), 4);
        let mut again = listed(
            &mut ev,
            vec![
                service("same", 1, ""),
                service("edited", 2, ""),
                service("status", 1, "2.00"),
                service("new", 1, ""),
            ],
        );
        again.sort();
        let want = [
            ("edited", true),
            ("gone", true),
            ("new", true),
            ("status", false),
        ];
        assert_eq!(again, want.map(|(n, s)| (key(n), s)).to_vec());
    }
}
