//! The service work queue: first in, first out, each key at most once, never handed to two
//! workers at a time, and at most one delayed look-again per key. First in, first out keeps a
//! burst fair: a service created early is not overtaken again and again by services whose own
//! status writes keep requeueing them. Services whose placement just changed have a lane of
//! their own, taken first: writing a new placement to the members is what users wait for,
//! while the status refreshes that member Deployments' progress causes can wait a little. One delayed entry per key, replaced by the latest
//! reconcile's answer, keeps a service that needed many passes from being looked at again once
//! per pass long after it converged.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use super::Key;

#[derive(Default)]
struct State {
    /// Keys waiting, oldest first; each at most once (mirrored by `queued`).
    order: VecDeque<Key>,
    /// Keys whose placement changed, oldest first, taken before `order`; a key is in at most
    /// one of the two.
    placements: VecDeque<Key>,
    queued: BTreeSet<Key>,
    /// Keys a worker is processing now.
    active: BTreeSet<Key>,
    /// When each key is to be looked at again.
    delayed: BTreeMap<Key, Instant>,
    /// Keys whose member changes are being gathered, and when the batch ends; apart from
    /// `delayed`, which the reconcile's own answer replaces.
    batched: BTreeMap<Key, Instant>,
}

impl State {
    fn enqueue(&mut self, key: Key) {
        if self.queued.insert(key.clone()) {
            self.order.push_back(key);
        }
    }

    fn enqueue_placement(&mut self, key: Key) {
        if self.placements.contains(&key) {
            return;
        }
        if !self.queued.insert(key.clone())
            && let Some(i) = self.order.iter().position(|k| *k == key)
        {
            self.order.remove(i);
        }
        self.placements.push_back(key);
    }

    /// Moves due delayed keys to the queue; returns when the next one is due.
    fn promote(&mut self, now: Instant) -> Option<Instant> {
        let due = |m: &BTreeMap<Key, Instant>| -> Vec<Key> {
            m.iter()
                .filter(|(_, at)| **at <= now)
                .map(|(k, _)| k.clone())
                .collect()
        };
        for key in due(&self.delayed) {
            self.delayed.remove(&key);
            self.enqueue(key);
        }
        for key in due(&self.batched) {
            self.batched.remove(&key);
            self.enqueue(key);
        }
        self.delayed
            .values()
            .chain(self.batched.values())
            .min()
            .copied()
    }

    fn take(&mut self) -> Option<Key> {
        let free = |q: &VecDeque<Key>| q.iter().position(|k| !self.active.contains(k));
        let key = match free(&self.placements) {
            Some(i) => self.placements.remove(i)?,
            None => {
                let i = free(&self.order)?;
                self.order.remove(i)?
            }
        };
        self.queued.remove(&key);
        self.active.insert(key.clone());
        Some(key)
    }
}

/// A de-duplicating FIFO work queue of service keys with delayed requeues.
#[derive(Default)]
pub struct WorkQueue {
    state: Mutex<State>,
    notify: tokio::sync::Notify,
}

impl WorkQueue {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `key` now (once, however often it is pushed before a worker takes it).
    pub fn push(&self, key: Key) {
        self.lock().enqueue(key);
        self.notify.notify_one();
    }

    /// Queues `key`, whose placement changed, ahead of the refreshes (once; a refresh of it
    /// already waiting moves up).
    pub fn push_placement(&self, key: Key) {
        self.lock().enqueue_placement(key);
        self.notify.notify_one();
    }

    /// Looks at `key` again after `after`, replacing any earlier look-again of it: the latest
    /// reconcile knows best when the next one is needed.
    pub fn push_after(&self, key: Key, after: Duration) {
        self.lock().delayed.insert(key, Instant::now() + after);
        // A waiting worker recomputes its deadline.
        self.notify.notify_one();
    }

    /// Queues `key` within `within`: a key already waiting stays where it is, a batch already
    /// gathering for it keeps its end. Later pushes never postpone it, so a stream of changes
    /// batches instead of starving; a look-again the reconcile asks for meanwhile does not
    /// replace it.
    pub fn push_within(&self, key: Key, within: Duration) {
        let mut s = self.lock();
        if s.queued.contains(&key) {
            return;
        }
        s.batched
            .entry(key)
            .or_insert_with(|| Instant::now() + within);
        drop(s);
        self.notify.notify_one();
    }

    /// Drops the delayed look-again of `key` (it converged).
    pub fn forget_delayed(&self, key: &Key) {
        self.lock().delayed.remove(key);
    }

    /// Takes the oldest key that no other worker is processing.
    pub async fn pop(&self) -> Key {
        loop {
            let next_due = {
                let mut s = self.lock();
                let next_due = s.promote(Instant::now());
                if let Some(key) = s.take() {
                    return key;
                }
                next_due
            };
            match next_due {
                Some(at) => {
                    let _ = tokio::time::timeout_at(at, self.notify.notified()).await;
                }
                None => self.notify.notified().await,
            }
        }
    }

    /// Marks `key` as no longer processed (it may be taken again).
    pub fn done(&self, key: &Key) {
        self.lock().active.remove(key);
        self.notify.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(name: &str) -> Key {
        ("ns".into(), name.into())
    }

    #[tokio::test]
    async fn first_in_first_out_and_each_key_once() {
        let q = WorkQueue::default();
        for name in ["c", "a", "b", "a", "c"] {
            q.push(k(name));
        }
        assert_eq!(q.pop().await, k("c"));
        assert_eq!(q.pop().await, k("a"));
        assert_eq!(q.pop().await, k("b"));
        assert!(q.lock().order.is_empty());
    }

    #[tokio::test]
    async fn a_key_being_processed_waits_and_others_pass_it() {
        let q = WorkQueue::default();
        q.push(k("a"));
        assert_eq!(q.pop().await, k("a"));
        q.push(k("a"));
        q.push(k("b"));
        assert_eq!(q.pop().await, k("b"), "a is still being processed");
        q.done(&k("a"));
        assert_eq!(q.pop().await, k("a"));
    }

    #[tokio::test]
    async fn changed_placements_pass_waiting_refreshes() {
        let q = WorkQueue::default();
        for name in ["a", "b", "c"] {
            q.push(k(name));
        }
        q.push_placement(k("new"));
        q.push_placement(k("c"));
        q.push_placement(k("c"));
        q.push(k("c"));
        assert_eq!(q.pop().await, k("new"));
        assert_eq!(q.pop().await, k("c"), "moved up once, not queued twice");
        assert_eq!(q.pop().await, k("a"));
        assert_eq!(q.pop().await, k("b"));
        let s = q.lock();
        assert!(s.order.is_empty() && s.placements.is_empty() && s.queued.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_delayed_key_comes_back_once_at_the_latest_time_asked() {
        let q = WorkQueue::default();
        q.push_after(k("a"), Duration::from_secs(2));
        q.push_after(k("a"), Duration::from_secs(30));
        q.push_after(k("b"), Duration::from_secs(5));
        let start = Instant::now();
        assert_eq!(q.pop().await, k("b"));
        assert_eq!(start.elapsed(), Duration::from_secs(5));
        assert_eq!(q.pop().await, k("a"));
        assert_eq!(start.elapsed(), Duration::from_secs(30));
        assert!(q.lock().delayed.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn changes_within_a_batch_make_one_look_that_they_never_postpone() {
        let q = WorkQueue::default();
        let start = Instant::now();
        q.push_within(k("a"), Duration::from_millis(500));
        tokio::time::sleep(Duration::from_millis(300)).await;
        q.push_within(k("a"), Duration::from_millis(500));
        // The reconcile running now asks to look again in 30 s: the batch still ends on time.
        q.push_after(k("a"), Duration::from_secs(30));
        assert_eq!(q.pop().await, k("a"));
        assert_eq!(start.elapsed(), Duration::from_millis(500), "not postponed");
        assert!(q.lock().batched.is_empty());
        q.done(&k("a"));
        // A key already waiting in the queue is not delayed by a batch.
        q.push(k("b"));
        q.push_within(k("b"), Duration::from_secs(5));
        assert_eq!(q.pop().await, k("b"));
        assert_eq!(start.elapsed(), Duration::from_millis(500));
        assert!(q.lock().batched.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_forgotten_delay_never_fires() {
        let q = WorkQueue::default();
        q.push_after(k("a"), Duration::from_secs(1));
        q.forget_delayed(&k("a"));
        q.push_after(k("b"), Duration::from_secs(10));
        assert_eq!(q.pop().await, k("b"));
        assert!(q.lock().order.is_empty() && q.lock().delayed.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_push_wakes_a_worker_waiting_for_a_delay() {
        let q = std::sync::Arc::new(WorkQueue::default());
        q.push_after(k("late"), Duration::from_secs(60));
        let waiting = tokio::spawn({
            let q = q.clone();
            async move { q.pop().await }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        q.push(k("now"));
        assert_eq!(waiting.await.unwrap(), k("now"));
    }
}
