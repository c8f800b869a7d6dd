//! Skyloom's own member writes that the member's Deployment watch has not shown yet. The
//! next pass of a service can come before its last write is back through the watch (a
//! changed placement is reconciled at once). Until the watch shows the written object (its
//! UID at the written generation or later) or shows it gone, or for at most
//! [`PENDING_WRITE_TTL`], the pass believes the member's answer to the write, not the cache.
//! A later change by another writer raises the generation, so it ends the belief and is seen
//! as it is.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;

use super::Key;
use crate::realise::Observed;

/// How long a write the watch does not show is believed over the watch.
pub const PENDING_WRITE_TTL: Duration = Duration::from_secs(30);

/// A member's answer to one write of Skyloom's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Written {
    /// The Deployment as the member returned it from the apply.
    Applied {
        /// Its UID.
        uid: String,
        /// Its generation after the write.
        generation: i64,
        /// Its replica count after the write.
        replicas: Option<u32>,
    },
    /// These Deployments (by UID) were deleted, or were already gone.
    Deleted {
        /// Their UIDs.
        uids: Vec<String>,
    },
}

impl Written {
    /// The answer to an apply, if it carries what is needed to recognise it in the watch.
    pub fn applied(answer: &Deployment) -> Option<Written> {
        Some(Written::Applied {
            uid: answer.metadata.uid.clone()?,
            generation: answer.metadata.generation?,
            replicas: answer.spec.replicas.map(|r| u32::try_from(r).unwrap_or(0)),
        })
    }

    /// Whether the watch, showing `cached` (UID and generation of the service's Deployment in
    /// that member, if any), has caught up with this write.
    fn shown(&self, cached: Option<(&str, i64)>) -> bool {
        match self {
            Written::Applied {
                uid, generation, ..
            } => cached.is_some_and(|(u, g)| u == uid && g >= *generation),
            Written::Deleted { uids } => cached.is_none_or(|(u, _)| !uids.iter().any(|d| d == u)),
        }
    }

    /// The replica count the write left (`None`: no Deployment).
    fn replicas(&self) -> Option<u32> {
        match self {
            Written::Applied { replicas, .. } => Some(replicas.unwrap_or(1)),
            Written::Deleted { .. } => None,
        }
    }
}

/// Writes per (service, member), with when they were made.
type Writes = BTreeMap<(Key, String), (Written, Instant)>;

/// Skyloom's last write per service and member until the watch shows it.
#[derive(Default)]
pub struct PendingWrites(Mutex<Writes>);

impl PendingWrites {
    fn lock(&self) -> std::sync::MutexGuard<'_, Writes> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records Skyloom's write for `key` in `pool`; forgets writes older than the TTL.
    pub fn wrote(&self, key: &Key, pool: &str, written: Written, now: Instant) {
        let mut writes = self.lock();
        writes.retain(|_, (_, at)| now.duration_since(*at) < PENDING_WRITE_TTL);
        writes.insert((key.clone(), pool.to_owned()), (written, now));
    }

    /// The UID of a Deployment Skyloom created or changed in `pool` for `key` within the TTL
    /// that the watch did not show at the last look (so that a delete can reach it).
    pub fn unseen_object(&self, key: &Key, pool: &str, now: Instant) -> Option<String> {
        match self.lock().get(&(key.clone(), pool.to_owned())) {
            Some((Written::Applied { uid, .. }, at))
                if now.duration_since(*at) < PENDING_WRITE_TTL =>
            {
                Some(uid.clone())
            }
            _ => None,
        }
    }

    /// Forgets every write for `key` (the service is gone).
    pub fn forget(&self, key: &Key) {
        self.lock().retain(|(k, _), _| k != key);
    }

    /// `observed` as the watch shows it (`cached`: UID and generation of the Deployment it
    /// shows), or as written while a recent write is not in it yet. A write the watch shows,
    /// or one older than the TTL, is forgotten.
    pub fn correct(
        &self,
        key: &Key,
        pool: &str,
        observed: Observed,
        cached: Option<(&str, i64)>,
        now: Instant,
    ) -> Observed {
        let mut writes = self.lock();
        let id = (key.clone(), pool.to_owned());
        let Some((written, at)) = writes.get(&id) else {
            return observed;
        };
        if written.shown(cached) || now.duration_since(*at) >= PENDING_WRITE_TTL {
            writes.remove(&id);
            return observed;
        }
        // Replicas Available in another object of that name (an old one going away) are not
        // the written object's.
        let other_object = match written {
            Written::Applied { uid, .. } => cached.is_none_or(|(u, _)| u != uid),
            Written::Deleted { .. } => false,
        };
        let observed = if other_object {
            Observed {
                available: 0,
                ..observed
            }
        } else {
            observed
        };
        observed.with_pending_write(written.replicas())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(spec: Option<u32>, available: u32) -> Observed {
        Observed {
            observable: true,
            spec_replicas: spec,
            available,
            deadline_exceeded: false,
        }
    }

    fn applied(uid: &str, generation: i64, replicas: u32) -> Written {
        Written::Applied {
            uid: uid.into(),
            generation,
            replicas: Some(replicas),
        }
    }

    fn deleted(uid: &str) -> Written {
        Written::Deleted {
            uids: vec![uid.into()],
        }
    }

    fn key() -> Key {
        ("ns".into(), "llm".into())
    }

    #[test]
    fn a_delete_is_believed_until_the_watch_shows_the_object_gone() {
        let pending = PendingWrites::default();
        let t0 = Instant::now();
        pending.wrote(&key(), "b", deleted("u1"), t0);
        // Not shown yet: deleted, nothing Available.
        let got = pending.correct(&key(), "b", seen(Some(2), 2), Some(("u1", 3)), t0);
        assert_eq!((got.spec_replicas, got.available), (None, 0));
        // Other members and services are not affected.
        assert_eq!(
            pending.correct(&key(), "a", seen(Some(2), 2), Some(("u9", 1)), t0),
            seen(Some(2), 2)
        );
        let other: Key = ("ns".into(), "other".into());
        assert_eq!(
            pending.correct(&other, "b", seen(Some(2), 2), Some(("u1", 3)), t0),
            seen(Some(2), 2)
        );
        // Shown gone: forgotten, the watch speaks again.
        assert_eq!(
            pending.correct(&key(), "b", seen(None, 0), None, t0),
            seen(None, 0)
        );
        // A new object in place of the deleted one is not the deleted one.
        pending.wrote(&key(), "b", deleted("u1"), t0);
        assert_eq!(
            pending.correct(&key(), "b", seen(Some(1), 0), Some(("u2", 1)), t0),
            seen(Some(1), 0)
        );
    }

    #[test]
    fn an_apply_is_believed_until_its_generation_shows() {
        let pending = PendingWrites::default();
        let t0 = Instant::now();
        // Scaled down from 4 to 1 at generation 5; the cache still shows generation 4.
        pending.wrote(&key(), "a", applied("u1", 5, 1), t0);
        assert_eq!(
            pending.unseen_object(&key(), "a", t0).as_deref(),
            Some("u1")
        );
        let got = pending.correct(&key(), "a", seen(Some(4), 4), Some(("u1", 4)), t0);
        assert_eq!((got.spec_replicas, got.available), (Some(1), 1));
        // The old object of that name, at any generation, is not the written one, and its
        // Available replicas are not the new one's.
        pending.wrote(&key(), "d", applied("u4", 1, 2), t0);
        let got = pending.correct(&key(), "d", seen(Some(5), 5), Some(("u0", 9)), t0);
        assert_eq!((got.spec_replicas, got.available), (Some(2), 0));
        // A new Deployment the cache does not show at all counts as written, none Available.
        pending.wrote(&key(), "c", applied("u3", 1, 2), t0);
        let got = pending.correct(&key(), "c", seen(None, 0), None, t0);
        assert_eq!((got.spec_replicas, got.available), (Some(2), 0));
        // Generation 5 shown: forgotten.
        assert_eq!(
            pending.correct(&key(), "a", seen(Some(1), 4), Some(("u1", 5)), t0),
            seen(Some(1), 4)
        );
        assert_eq!(pending.unseen_object(&key(), "a", t0), None);
    }

    #[test]
    fn another_writer_after_skyloom_is_seen_as_it_is() {
        // Skyloom wrote 2 at generation 7; an autoscaler then set 3 (generation 8). The
        // watch's first event after the write already shows 3: that is the truth, not 2.
        let pending = PendingWrites::default();
        let t0 = Instant::now();
        pending.wrote(&key(), "a", applied("u1", 7, 2), t0);
        assert_eq!(
            pending.correct(&key(), "a", seen(Some(3), 2), Some(("u1", 8)), t0),
            seen(Some(3), 2)
        );
        // And an apply that changed nothing (same generation) ends the belief at once.
        pending.wrote(&key(), "a", applied("u1", 8, 3), t0);
        assert_eq!(
            pending.correct(&key(), "a", seen(Some(3), 3), Some(("u1", 8)), t0),
            seen(Some(3), 3)
        );
    }

    #[test]
    fn a_write_never_shown_is_believed_for_the_ttl_only_and_forget_clears() {
        let pending = PendingWrites::default();
        let t0 = Instant::now();
        pending.wrote(&key(), "c", applied("u1", 2, 1), t0);
        let late = t0 + PENDING_WRITE_TTL;
        assert_eq!(
            pending.correct(&key(), "c", seen(Some(3), 3), Some(("u1", 1)), late),
            seen(Some(3), 3)
        );
        pending.wrote(&key(), "c", applied("u1", 2, 1), t0);
        assert_eq!(
            pending.unseen_object(&key(), "c", late),
            None,
            "past the TTL"
        );
        pending.forget(&key());
        assert_eq!(pending.unseen_object(&key(), "c", t0), None);
        // Old entries of other services go when anything is written.
        pending.wrote(&key(), "c", applied("u1", 2, 1), t0);
        let other: Key = ("ns".into(), "other".into());
        pending.wrote(&other, "c", deleted("u5"), late);
        assert_eq!(pending.unseen_object(&key(), "c", t0), None);
    }
}
