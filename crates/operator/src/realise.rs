//! Turning a desired placement into per-member writes, make-before-break: a member is scaled
//! down only by as many replicas as are Available elsewhere beyond what the service needs,
//! and scale-ups never take the service above its desired replicas plus the surge budget.
//! Members that cannot be observed are never written to. Pure: no client here.

use std::collections::BTreeMap;

/// What is known about the service's Deployment in one member.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    /// Whether Skyloom can act on the member now (reachable, Deployments listed).
    pub observable: bool,
    /// `spec.replicas` of the owned Deployment, if one exists.
    pub spec_replicas: Option<u32>,
    /// Available replicas of the current template.
    pub available: u32,
    /// The member's Deployment reports `Progressing=False` with reason
    /// `ProgressDeadlineExceeded`: it made no progress within its `progressDeadlineSeconds`
    /// (Skyloom renders `migration.timeoutSeconds` there).
    pub deadline_exceeded: bool,
}

impl Observed {
    /// What to believe after Skyloom wrote `written` replicas (`None`: deleted the Deployment)
    /// that the member's watch does not show yet: the written count, and no more replicas
    /// Available than it keeps. Counting a member at what it showed before the write would
    /// let another member drain on the strength of replicas that are already going.
    pub fn with_pending_write(self, written: Option<u32>) -> Observed {
        Observed {
            spec_replicas: written,
            available: self.available.min(written.unwrap_or(0)),
            deadline_exceeded: self.deadline_exceeded && written.is_some(),
            ..self
        }
    }
}

/// One write to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Apply the Deployment with this many replicas.
    Apply {
        /// The member.
        pool: String,
        /// Replicas to set.
        replicas: u32,
    },
    /// Delete the owned Deployment.
    Delete {
        /// The member.
        pool: String,
    },
}

/// The migration limits of a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Desired replicas of the service.
    pub desired: u32,
    /// Extra replicas allowed during moves.
    pub max_surge: u32,
    /// Replicas that may be unavailable during moves.
    pub max_unavailable: u32,
}

/// Replica counts to set per member (for every observable member that has or should have a
/// Deployment) given the desired placement and what is observed.
pub fn targets(
    desired: &BTreeMap<String, u32>,
    observed: &BTreeMap<String, Observed>,
    limits: Limits,
) -> BTreeMap<String, u32> {
    let want = |p: &str| desired.get(p).copied().unwrap_or(0);
    let pools: std::collections::BTreeSet<&String> =
        desired.keys().chain(observed.keys()).collect();
    // What the service holds now: observed spec where we can see, assumed desired elsewhere.
    let mut held: u32 = 0;
    for p in &pools {
        let o = observed.get(*p);
        held = held.saturating_add(match o {
            Some(o) if o.observable => o.spec_replicas.unwrap_or(0),
            _ => want(p).min(o.and_then(|o| o.spec_replicas).unwrap_or(0)),
        });
    }
    let mut budget = limits
        .desired
        .saturating_add(limits.max_surge)
        .saturating_sub(held);
    let mut out = BTreeMap::new();
    // Scale-ups, in name order, within the surge budget.
    for p in &pools {
        let Some(o) = observed.get(*p).filter(|o| o.observable) else {
            continue;
        };
        let current = o.spec_replicas.unwrap_or(0);
        let target = want(p);
        if target > current {
            let step = (target - current).min(budget);
            budget -= step;
            out.insert((*p).clone(), current + step);
        }
    }
    // Scale-downs, in name order: keep enough here that the replicas Available elsewhere, at
    // what each member keeps after the steps already taken, plus what stays here cover the
    // desired count (minus the unavailability allowance). Counting the other members at what
    // they keep, not only at their share, lets a surplus spread over several members (a move
    // that changed its destination halfway) drain one member at a time instead of each
    // waiting for the other.
    for p in &pools {
        if let Some(o) = observed.get(*p).filter(|o| o.observable) {
            out.entry((*p).clone())
                .or_insert(o.spec_replicas.unwrap_or(0));
        }
    }
    let floor = limits.desired.saturating_sub(limits.max_unavailable);
    for p in &pools {
        let Some(o) = observed.get(*p).filter(|o| o.observable) else {
            continue;
        };
        let current = o.spec_replicas.unwrap_or(0);
        let target = want(p);
        if target >= current {
            continue;
        }
        let elsewhere: u32 = out
            .iter()
            .filter(|(q, _)| q != p)
            .filter_map(|(q, &keeps)| observed.get(q).map(|o| o.available.min(keeps)))
            .sum();
        let keep = target.max(floor.saturating_sub(elsewhere)).min(current);
        out.insert((*p).clone(), keep);
    }
    out
}

/// Targets when an autoscaler in each member owns the replica count (`scaling.mode: Member`):
/// a wanted member keeps the count it has (a new Deployment starts at the decided count); a
/// member no longer wanted is removed only once the wanted members have as many replicas
/// Available as they run, up to `desired - max_unavailable`, so a move still never drops
/// capacity.
pub fn member_scaled_targets(
    desired: &BTreeMap<String, u32>,
    observed: &BTreeMap<String, Observed>,
    limits: Limits,
) -> BTreeMap<String, u32> {
    let want = |p: &str| desired.get(p).copied().unwrap_or(0);
    let visible = || observed.iter().filter(|(_, o)| o.observable);
    let (mut running, mut available) = (0u32, 0u32);
    for (p, o) in visible().filter(|(p, _)| want(p) > 0) {
        let spec = o.spec_replicas.unwrap_or(want(p));
        running = running.saturating_add(spec);
        available = available.saturating_add(o.available.min(spec));
    }
    let enough =
        available >= running.min(limits.desired.saturating_sub(limits.max_unavailable).max(1));
    let mut out = BTreeMap::new();
    for (p, o) in visible() {
        let n = match (want(p), o.spec_replicas) {
            (0, Some(current)) if !enough => current,
            (0, _) => 0,
            (w, None) => w,
            (_, Some(current)) => current,
        };
        out.insert(p.clone(), n);
    }
    out
}

/// Members where a move stalled: the member's Deployment reports `ProgressDeadlineExceeded`,
/// holds fewer Available replicas than the decision wants there, and some other observable
/// member is still held above its own share waiting for them (make-before-break). A rollout
/// that stalls where nothing waits for it (a bad template everywhere) is not a stalled move.
pub fn stalled_moves(
    desired: &BTreeMap<String, u32>,
    observed: &BTreeMap<String, Observed>,
) -> Vec<String> {
    let want = |p: &str| desired.get(p).copied().unwrap_or(0);
    let waiting = |target: &str| {
        observed
            .iter()
            .any(|(q, o)| q != target && o.observable && o.spec_replicas.unwrap_or(0) > want(q))
    };
    observed
        .iter()
        .filter(|(p, o)| o.observable && o.deadline_exceeded && o.available < want(p) && waiting(p))
        .map(|(p, _)| p.clone())
        .collect()
}

/// The writes that move the observed state toward `targets`.
pub fn actions(
    targets: &BTreeMap<String, u32>,
    observed: &BTreeMap<String, Observed>,
    needs_update: &dyn Fn(&str) -> bool,
) -> Vec<Action> {
    let mut out = Vec::new();
    for (pool, &n) in targets {
        let current = observed.get(pool).and_then(|o| o.spec_replicas);
        match (current, n) {
            (None, 0) => {}
            (Some(_), 0) => out.push(Action::Delete { pool: pool.clone() }),
            (Some(c), n) if c == n && !needs_update(pool) => {}
            (_, n) => out.push(Action::Apply {
                pool: pool.clone(),
                replicas: n,
            }),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(spec: Option<u32>, available: u32) -> Observed {
        Observed {
            observable: true,
            spec_replicas: spec,
            available,
            deadline_exceeded: false,
        }
    }

    fn stuck(spec: u32) -> Observed {
        Observed {
            deadline_exceeded: true,
            ..obs(Some(spec), 0)
        }
    }

    fn map<T: Clone>(items: &[(&str, T)]) -> BTreeMap<String, T> {
        items
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect()
    }

    const L4: Limits = Limits {
        desired: 4,
        max_surge: 1,
        max_unavailable: 0,
    };

    #[test]
    fn initial_placement_creates_everything_at_once() {
        let t = targets(
            &map(&[("a", 2), ("b", 2)]),
            &map(&[("a", obs(None, 0)), ("b", obs(None, 0))]),
            L4,
        );
        assert_eq!(t, map(&[("a", 2), ("b", 2)]));
    }

    #[test]
    fn a_move_surges_one_then_shrinks_only_what_is_available_elsewhere() {
        let desired = map(&[("a", 0), ("b", 4)]);
        // Step 1: nothing available in b yet: b gets one surge replica, a keeps all 4.
        let t = targets(
            &desired,
            &map(&[("a", obs(Some(4), 4)), ("b", obs(None, 0))]),
            L4,
        );
        assert_eq!(t, map(&[("a", 4), ("b", 1)]));
        // Step 2: b's replica is Available: a drops one, b may not grow until then.
        let t = targets(
            &desired,
            &map(&[("a", obs(Some(4), 4)), ("b", obs(Some(1), 1))]),
            L4,
        );
        assert_eq!(t, map(&[("a", 3), ("b", 1)]));
        // Never below 4 available, never above 5 requested.
        let t = targets(
            &desired,
            &map(&[("a", obs(Some(3), 3)), ("b", obs(Some(1), 1))]),
            L4,
        );
        assert_eq!(t, map(&[("a", 3), ("b", 2)]));
        let t = targets(
            &desired,
            &map(&[("a", obs(Some(0), 0)), ("b", obs(Some(4), 4))]),
            L4,
        );
        assert_eq!(t, map(&[("a", 0), ("b", 4)]));
    }

    #[test]
    fn a_move_whose_destination_changed_halfway_drains_one_source_at_a_time() {
        // Two placements ago the service ran in a; the last move surged one replica to b; now
        // c is the destination. a and b together are at the surge limit: neither may wait
        // for the other, or nothing ever moves.
        let desired = map(&[("c", 2)]);
        let limits = Limits {
            desired: 2,
            max_surge: 1,
            max_unavailable: 0,
        };
        let observed = map(&[
            ("a", obs(Some(2), 2)),
            ("b", obs(Some(1), 1)),
            ("c", obs(None, 0)),
        ]);
        assert_eq!(
            targets(&desired, &observed, limits),
            map(&[("a", 1), ("b", 1), ("c", 0)]),
            "a gives back the surplus b covers; b stays while a shrinks"
        );
        let observed = map(&[
            ("a", obs(Some(1), 1)),
            ("b", obs(Some(1), 1)),
            ("c", obs(None, 0)),
        ]);
        assert_eq!(
            targets(&desired, &observed, limits),
            map(&[("a", 1), ("b", 1), ("c", 1)])
        );
    }

    #[test]
    fn a_member_whose_deletion_the_watch_has_not_shown_does_not_hold_replicas() {
        // b was deleted in the last pass; its watch still shows 2 Available. Counted as
        // shown, b would let a go while c has 1 of 3: believed as written, a stays.
        let desired = map(&[("a", 0), ("c", 3)]);
        let limits = Limits {
            desired: 3,
            max_surge: 1,
            max_unavailable: 0,
        };
        let b = obs(Some(2), 2).with_pending_write(None);
        assert_eq!((b.spec_replicas, b.available), (None, 0));
        let observed = map(&[("a", obs(Some(2), 2)), ("b", b), ("c", obs(Some(1), 1))]);
        assert_eq!(
            targets(&desired, &observed, limits),
            map(&[("a", 2), ("b", 0), ("c", 2)])
        );
        // A scale-down not shown yet counts only what stays.
        let shrunk = obs(Some(4), 4).with_pending_write(Some(1));
        assert_eq!((shrunk.spec_replicas, shrunk.available), (Some(1), 1));
    }

    #[test]
    fn target_that_never_becomes_ready_never_drains_the_source() {
        let desired = map(&[("a", 0), ("b", 4)]);
        let t = targets(
            &desired,
            &map(&[("a", obs(Some(4), 4)), ("b", obs(Some(1), 0))]),
            L4,
        );
        assert_eq!(t, map(&[("a", 4), ("b", 1)]));
    }

    #[test]
    fn a_target_past_its_deadline_while_the_source_waits_is_a_stalled_move() {
        let desired = map(&[("a", 0), ("b", 4)]);
        let observed = map(&[("a", obs(Some(4), 4)), ("b", stuck(1))]);
        assert_eq!(stalled_moves(&desired, &observed), vec!["b".to_owned()]);
        // Not yet past the deadline: still moving.
        let observed = map(&[("a", obs(Some(4), 4)), ("b", obs(Some(1), 0))]);
        assert!(stalled_moves(&desired, &observed).is_empty());
        // A bad template everywhere, nothing waiting: a stalled rollout, not a stalled move.
        let desired = map(&[("a", 2), ("b", 2)]);
        let observed = map(&[("a", stuck(2)), ("b", stuck(2))]);
        assert!(stalled_moves(&desired, &observed).is_empty());
        // Once the move is given up (b no longer wanted), nothing is stalled any more.
        let desired = map(&[("a", 4)]);
        let observed = map(&[("a", obs(Some(4), 4)), ("b", stuck(1))]);
        assert!(stalled_moves(&desired, &observed).is_empty());
        // ... and the stuck surplus goes at once: the source never lost anything.
        assert_eq!(targets(&desired, &observed, L4), map(&[("a", 4), ("b", 0)]));
    }

    #[test]
    fn member_scaling_keeps_the_members_counts_and_drains_only_when_covered() {
        // New Deployments start at the decided count; existing ones keep what the member chose.
        let t = member_scaled_targets(
            &map(&[("a", 2), ("b", 2)]),
            &map(&[("a", obs(Some(7), 7)), ("b", obs(None, 0))]),
            L4,
        );
        assert_eq!(t, map(&[("a", 7), ("b", 2)]));
        // A member no longer wanted stays until the wanted ones are Available...
        let desired = map(&[("b", 4)]);
        let t = member_scaled_targets(
            &desired,
            &map(&[("a", obs(Some(4), 4)), ("b", obs(Some(4), 1))]),
            L4,
        );
        assert_eq!(t, map(&[("a", 4), ("b", 4)]));
        // ... then goes.
        let t = member_scaled_targets(
            &desired,
            &map(&[("a", obs(Some(4), 4)), ("b", obs(Some(3), 3))]),
            L4,
        );
        assert_eq!(t, map(&[("a", 0), ("b", 3)]));
        // Unobservable members get no target at all.
        let mut observed = map(&[("a", obs(Some(4), 4))]);
        observed.get_mut("a").unwrap().observable = false;
        assert_eq!(
            member_scaled_targets(&map(&[("a", 4)]), &observed, L4),
            BTreeMap::new()
        );
    }

    #[test]
    fn unobservable_members_are_left_alone_and_hold_their_share() {
        let desired = map(&[("a", 2), ("b", 2)]);
        let mut observed = map(&[("a", obs(Some(2), 2)), ("b", obs(Some(2), 2))]);
        observed.get_mut("b").unwrap().observable = false;
        let t = targets(&desired, &observed, L4);
        assert_eq!(t, map(&[("a", 2)]), "nothing is decided for b");
        // After failover b is given up (desired 0) and a grows, although b's copy may run.
        let t = targets(&map(&[("a", 4), ("b", 0)]), &observed, L4);
        assert_eq!(t, map(&[("a", 4)]));
    }

    #[test]
    fn plain_scale_down_is_immediate() {
        let t = targets(
            &map(&[("a", 1), ("b", 1)]),
            &map(&[("a", obs(Some(3), 3)), ("b", obs(Some(3), 3))]),
            Limits {
                desired: 2,
                max_surge: 1,
                max_unavailable: 0,
            },
        );
        assert_eq!(t, map(&[("a", 1), ("b", 1)]));
    }

    #[test]
    fn actions_skip_what_is_already_right() {
        let observed = map(&[
            ("a", obs(Some(2), 2)),
            ("b", obs(Some(1), 1)),
            ("c", obs(None, 0)),
        ]);
        let t = map(&[("a", 2), ("b", 0), ("c", 3)]);
        let acts = actions(&t, &observed, &|_| false);
        assert_eq!(
            acts,
            vec![
                Action::Delete { pool: "b".into() },
                Action::Apply {
                    pool: "c".into(),
                    replicas: 3
                }
            ]
        );
        let acts = actions(&t, &observed, &|p| p == "a");
        assert!(acts.contains(&Action::Apply {
            pool: "a".into(),
            replicas: 2
        }));
    }

    mod moves {
        use super::*;
        use proptest::prelude::*;

        /// One member's Deployment in the simulation: requested and Available replicas.
        #[derive(Debug, Clone, Copy)]
        struct Member {
            spec: Option<u32>,
            available: u32,
        }

        fn available(state: &BTreeMap<String, Member>) -> u32 {
            state
                .values()
                .map(|m| m.available.min(m.spec.unwrap_or(0)))
                .sum()
        }

        fn held(state: &BTreeMap<String, Member>) -> u32 {
            state.values().map(|m| m.spec.unwrap_or(0)).sum()
        }

        fn start() -> impl Strategy<Value = BTreeMap<String, Member>> {
            proptest::collection::btree_map(
                "[a-e]",
                (proptest::option::of(0u32..6), 0u32..6).prop_map(|(spec, extra)| Member {
                    spec,
                    available: spec.map_or(0, |s| s.saturating_sub(extra % 3)),
                }),
                1..5,
            )
        }

        fn placement() -> impl Strategy<Value = BTreeMap<String, u32>> {
            proptest::collection::btree_map("[a-e]", 0u32..5, 1..4)
        }

        proptest! {
            /// From any starting state (several members above their share, as after moves
            /// that changed destination), the writes reach the placement with every new
            /// replica becoming Available a step later; on the way, Available replicas never
            /// drop below the floor once reached, and requested replicas never exceed the
            /// desired count plus the surge budget unless they already did.
            #[test]
            fn moves_converge_without_dropping_below_the_floor(
                mut state in start(),
                desired in placement(),
                max_surge in 1u32..3,
                max_unavailable in 0u32..2,
            ) {
                let want: u32 = desired.values().sum();
                let limits = Limits { desired: want, max_surge, max_unavailable };
                let floor = want.saturating_sub(max_unavailable);
                for step in 0..4 * (want + 10) {
                    let observed: BTreeMap<String, Observed> = state
                        .iter()
                        .map(|(p, m)| (p.clone(), obs(m.spec, m.available)))
                        .chain(
                            desired
                                .keys()
                                .filter(|p| !state.contains_key(*p))
                                .map(|p| (p.clone(), obs(None, 0))),
                        )
                        .collect();
                    let t = targets(&desired, &observed, limits);
                    let (before, held_before) = (available(&state), held(&state));
                    for (p, n) in &t {
                        let m = state.entry(p.clone()).or_insert(Member { spec: None, available: 0 });
                        // A ReplicaSet removes replicas that are not Available first.
                        m.available = m.available.min(*n);
                        m.spec = Some(*n);
                    }
                    let after = available(&state);
                    prop_assert!(
                        after >= before.min(floor),
                        "step {step}: Available fell from {before} to {after} (floor {floor}): {state:?}"
                    );
                    prop_assert!(
                        held(&state) <= held_before.max(want + max_surge),
                        "step {step}: {} requested, limit {}", held(&state), want + max_surge
                    );
                    let done = desired.iter().all(|(p, n)| state.get(p).and_then(|m| m.spec).unwrap_or(0) == *n)
                        && state.iter().all(|(p, m)| desired.contains_key(p) || m.spec.unwrap_or(0) == 0);
                    if done {
                        return Ok(());
                    }
                    // Every requested replica is Available by the next step.
                    for m in state.values_mut() {
                        m.available = m.spec.unwrap_or(0);
                    }
                }
                prop_assert!(false, "no convergence: {state:?} for {desired:?}");
            }
        }
    }
}
