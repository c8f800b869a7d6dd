//! Fights over a member Deployment's `spec.replicas` (CASE-10). By default Skyloom owns the
//! count and puts it back when someone else changes it, but at most once per window: a
//! writer that keeps changing it (an HPA in the member, a script) would otherwise be fought
//! every few seconds, restarting Pods each time. While the window runs Skyloom holds off
//! and reports `ScalingConflict`; afterwards it puts the count back once more. Users who
//! want the member to own the count set `spec.scaling.mode: Member`. Pure; kept in memory.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// (service namespace, service name, member).
pub type FightKey = (String, String, String);

/// What Skyloom last wrote and when it last put a changed count back.
#[derive(Debug, Clone, Copy)]
struct Fight {
    applied: u32,
    last_revert: Option<Instant>,
}

/// What to do with an apply that sets `spec.replicas`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Apply it: a new count, or the first put-back in the window.
    Apply,
    /// Apply it; it puts back a count someone else changed.
    Revert,
    /// Do not write: the count was put back less than a window ago and was changed again.
    HoldOff,
}

/// Per service and member, the replica counts Skyloom applied and its put-backs.
#[derive(Debug, Default)]
pub struct ReplicaFights(BTreeMap<FightKey, Fight>);

impl ReplicaFights {
    /// Judges an apply of `target` replicas given the count `observed` in the member now.
    /// `template_current`: the member's template is already what Skyloom renders (so the
    /// apply would only change the count).
    pub fn judge(
        &self,
        key: &FightKey,
        target: u32,
        observed: Option<u32>,
        template_current: bool,
        window: Duration,
        now: Instant,
    ) -> Verdict {
        let Some(fight) = self.0.get(key) else {
            return Verdict::Apply;
        };
        let someone_changed_it =
            fight.applied == target && observed.is_some_and(|n| n != target) && template_current;
        if !someone_changed_it {
            return Verdict::Apply;
        }
        match fight.last_revert {
            Some(t) if now.duration_since(t) < window => Verdict::HoldOff,
            _ => Verdict::Revert,
        }
    }

    /// Records an apply of `target` replicas that went through.
    pub fn applied(&mut self, key: FightKey, target: u32, verdict: Verdict, now: Instant) {
        let last_revert = match verdict {
            Verdict::Revert => Some(now),
            _ => self.0.get(&key).and_then(|f| f.last_revert),
        };
        self.0.insert(
            key,
            Fight {
                applied: target,
                last_revert,
            },
        );
    }

    /// Forgets a service's member (its Deployment went, or the service did).
    pub fn forget(&mut self, key: &FightKey) {
        self.0.remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: Duration = Duration::from_secs(300);

    fn key() -> FightKey {
        ("team-a".into(), "llm".into(), "azure".into())
    }

    #[test]
    fn a_one_off_change_is_put_back_at_once() {
        let mut f = ReplicaFights::default();
        let t0 = Instant::now();
        assert_eq!(f.judge(&key(), 4, None, false, WINDOW, t0), Verdict::Apply);
        f.applied(key(), 4, Verdict::Apply, t0);
        assert_eq!(
            f.judge(&key(), 4, Some(4), true, WINDOW, t0),
            Verdict::Apply
        );
        let t1 = t0 + Duration::from_secs(60);
        assert_eq!(
            f.judge(&key(), 4, Some(6), true, WINDOW, t1),
            Verdict::Revert
        );
    }

    #[test]
    fn a_writer_that_keeps_changing_it_is_put_back_once_per_window() {
        let mut f = ReplicaFights::default();
        let t0 = Instant::now();
        f.applied(key(), 4, Verdict::Apply, t0);
        let t1 = t0 + Duration::from_secs(10);
        assert_eq!(
            f.judge(&key(), 4, Some(6), true, WINDOW, t1),
            Verdict::Revert
        );
        f.applied(key(), 4, Verdict::Revert, t1);
        let t2 = t1 + Duration::from_secs(20);
        assert_eq!(
            f.judge(&key(), 4, Some(6), true, WINDOW, t2),
            Verdict::HoldOff
        );
        let t3 = t1 + WINDOW;
        assert_eq!(
            f.judge(&key(), 4, Some(6), true, WINDOW, t3),
            Verdict::Revert
        );
    }

    #[test]
    fn new_counts_and_template_updates_are_not_fights() {
        let mut f = ReplicaFights::default();
        let t0 = Instant::now();
        f.applied(key(), 4, Verdict::Revert, t0);
        // The decision moved on: a new count is Skyloom's own change.
        assert_eq!(
            f.judge(&key(), 5, Some(6), true, WINDOW, t0),
            Verdict::Apply
        );
        // A new template is rolled out whatever the count.
        assert_eq!(
            f.judge(&key(), 4, Some(6), false, WINDOW, t0),
            Verdict::Apply
        );
        f.forget(&key());
        assert_eq!(
            f.judge(&key(), 4, Some(6), true, WINDOW, t0),
            Verdict::Apply
        );
    }
}
