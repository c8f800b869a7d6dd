//! Moves given up because their target made no progress within `migration.timeoutSeconds`.
//! The target member is avoided for that service (the solver sees it as not allowed) until
//! the AIService's spec or that CloudPool's spec changes. Kept in memory: after a restart a
//! move is tried once more and gives up again after the timeout, never losing availability.

use std::collections::BTreeMap;
use std::sync::Mutex;

use kube::runtime::reflector::{ObjectRef, Store};
use skyloom_api::{AIService, CloudPool};

use super::{Key, key_of};

/// The generations a move was given up at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct GivenUp {
    service_generation: Option<i64>,
    pool_generation: Option<i64>,
}

/// Per service, the members moves to which were given up.
#[derive(Default)]
pub struct StalledMoves(Mutex<BTreeMap<Key, BTreeMap<String, GivenUp>>>);

impl StalledMoves {
    /// Records that moving `ais` to `pools` was given up; returns the members newly recorded.
    pub fn give_up(
        &self,
        ais: &AIService,
        pools: &[String],
        pool_store: &Store<CloudPool>,
    ) -> Vec<String> {
        let mut all = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let entry = all.entry(key_of(ais)).or_default();
        let mut fresh = Vec::new();
        for pool in pools {
            let at = GivenUp {
                service_generation: ais.metadata.generation,
                pool_generation: generation(pool_store, pool),
            };
            if entry.insert(pool.clone(), at) != Some(at) {
                fresh.push(pool.clone());
            }
        }
        fresh
    }

    /// The members `ais` must avoid now; records that a spec change lifted are dropped.
    pub fn avoided(&self, ais: &AIService, pool_store: &Store<CloudPool>) -> Vec<String> {
        let mut all = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let key = key_of(ais);
        let Some(entry) = all.get_mut(&key) else {
            return Vec::new();
        };
        entry.retain(|pool, at| {
            at.service_generation == ais.metadata.generation
                && at.pool_generation == generation(pool_store, pool)
        });
        let out = entry.keys().cloned().collect();
        if entry.is_empty() {
            all.remove(&key);
        }
        out
    }
}

fn generation(store: &Store<CloudPool>, pool: &str) -> Option<i64> {
    store
        .get(&ObjectRef::new(pool))
        .and_then(|p| p.metadata.generation)
}
