//! Status of AIServices and CloudPools, computed from decisions and observations. Pure, and
//! stable: a condition keeps its `lastTransitionTime` while its status does not change, so an
//! unchanged world produces an identical status and no write.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use skyloom_api::aiservice::{CloudPlacement, Explanation, condition, reason};
use skyloom_api::conditions::status as cstatus;

/// One condition to set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cond {
    /// Type.
    pub type_: &'static str,
    /// True, False or Unknown.
    pub status: &'static str,
    /// Reason (CamelCase).
    pub reason: String,
    /// Message for people.
    pub message: String,
}

impl Cond {
    /// A condition.
    pub fn new(
        type_: &'static str,
        status: bool,
        reason: &str,
        message: impl Into<String>,
    ) -> Self {
        Self {
            type_,
            status: if status {
                cstatus::TRUE
            } else {
                cstatus::FALSE
            },
            reason: reason.to_owned(),
            message: message.into(),
        }
    }
}

/// Builds the condition list, keeping transition times of conditions whose status did not
/// change.
pub fn conditions(
    new: &[Cond],
    previous: &[Condition],
    generation: Option<i64>,
    now: &Time,
) -> Vec<Condition> {
    new.iter()
        .map(|c| {
            let prev = previous.iter().find(|p| p.type_ == c.type_);
            let last_transition_time = match prev {
                Some(p) if p.status == c.status => p.last_transition_time.clone(),
                _ => now.clone(),
            };
            Condition {
                type_: c.type_.to_owned(),
                status: c.status.to_owned(),
                reason: c.reason.clone(),
                message: c.message.clone(),
                observed_generation: generation,
                last_transition_time,
            }
        })
        .collect()
}

/// Per-member facts for one AIService.
#[derive(Debug, Clone, Default)]
pub struct PoolReport {
    /// Replicas the decision wants there.
    pub desired: u32,
    /// spec.replicas of the owned Deployment (last observed).
    pub spec: u32,
    /// Ready replicas (last observed).
    pub ready: u32,
    /// Available replicas (last observed).
    pub available: u32,
    /// The Deployment has caught up with its latest template and replica count.
    pub rolled_out: bool,
    /// The member cannot be observed now; its counts are the last known ones.
    pub stale: bool,
    /// The member's Deployment reports ProgressDeadlineExceeded.
    pub deadline_exceeded: bool,
    /// The service's namespace is terminating in this member; it takes no replicas.
    pub namespace_terminating: bool,
    /// When the member was last seen answering (set for stale members only, so the status
    /// does not tick while all is well).
    pub last_observed: Option<Time>,
    /// Why the member is not observable, or a conflict there.
    pub problem: Option<String>,
}

/// Everything the AIService status is computed from.
#[derive(Debug, Clone, Default)]
pub struct ServiceFacts {
    /// The spec's desired replicas.
    pub desired: u32,
    /// minReplicas (or desired).
    pub min_available: u32,
    /// Per member.
    pub pools: BTreeMap<String, PoolReport>,
    /// Replicas the solver could not place (None: no decision yet).
    pub unplaced: Option<u32>,
    /// The decision's explanation.
    pub explanation: Option<Explanation>,
    /// The decision's $/h.
    pub cost_per_hour: Option<f64>,
    /// A spec problem (the object cannot be planned).
    pub invalid: Option<String>,
    /// A member object with our name that is not ours, per member.
    pub conflicts: Vec<String>,
    /// Writes are still pending (the members have not all received this generation).
    pub pending_writes: bool,
    /// Members being failed over (unreachable past the grace period).
    pub failing_over: Vec<String>,
    /// Members a move to which was given up (their target stalled past the deadline).
    pub migration_stalled: Vec<String>,
    /// Members whose replica count another writer keeps changing (Skyloom holds off).
    pub scaling_conflicts: Vec<String>,
    /// The window of at most one put-back, in seconds (for the message).
    pub scaling_conflict_window_seconds: u64,
    /// migration.timeoutSeconds, for messages.
    pub timeout_seconds: u64,
}

/// With `scaling.mode: Member` the members choose the counts: where a wanted member has a
/// Deployment, its count becomes what is desired there. Returns the total desired, or None
/// when no member is wanted.
pub fn member_chosen(reports: &mut BTreeMap<String, PoolReport>) -> Option<u32> {
    let mut total = None::<u32>;
    for r in reports.values_mut().filter(|r| r.desired > 0) {
        if r.spec > 0 {
            r.desired = r.spec;
        }
        total = Some(total.unwrap_or(0).saturating_add(r.desired));
    }
    total
}

/// The computed status parts: totals, placements, summary and conditions.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceStatusParts {
    /// Per member.
    pub placements: Vec<CloudPlacement>,
    /// Σ spec replicas.
    pub replicas: i32,
    /// Σ ready replicas on members that can be observed now.
    pub ready: i32,
    /// Σ available replicas on members that can be observed now.
    pub available: i32,
    /// Unplaced replicas.
    pub unplaced: i32,
    /// "pool=n,pool=m".
    pub summary: String,
    /// The conditions to set.
    pub conditions: Vec<Cond>,
    /// Whether the generation is fully realised (observedGeneration may be advanced).
    pub realised: bool,
}

fn i(v: u32) -> i32 {
    i32::try_from(v).unwrap_or(i32::MAX)
}

/// Computes the AIService's status parts.
pub fn service_status(f: &ServiceFacts) -> ServiceStatusParts {
    let mut placements = Vec::new();
    let (mut replicas, mut ready, mut available) = (0u32, 0u32, 0u32);
    let mut summary = Vec::new();
    for (pool, r) in &f.pools {
        // A member avoided because the namespace is terminating there keeps its entry, which
        // says why the service runs elsewhere for as long as it is avoided.
        if r.desired == 0 && r.spec == 0 && !r.namespace_terminating {
            continue;
        }
        replicas = replicas.saturating_add(r.spec);
        if !r.stale {
            ready = ready.saturating_add(r.ready);
            available = available.saturating_add(r.available);
        }
        if r.desired > 0 {
            summary.push(format!("{pool}={}", r.desired));
        }
        placements.push(CloudPlacement {
            cloud: pool.clone(),
            desired: i(r.desired),
            ready: i(r.ready),
            available: i(r.available),
            stale: r.stale.then_some(true),
            last_observed_time: if r.stale {
                r.last_observed.clone()
            } else {
                None
            },
            reason: if r.stale {
                Some(reason::MEMBER_STATUS_STALE.to_owned())
            } else if r.namespace_terminating {
                Some(reason::NAMESPACE_TERMINATING.to_owned())
            } else if r.deadline_exceeded {
                Some(reason::PROGRESS_DEADLINE_EXCEEDED.to_owned())
            } else {
                r.problem.clone().map(|_| "Conflict".to_owned())
            },
        });
    }
    let stale: Vec<&String> = f
        .pools
        .iter()
        .filter(|(_, r)| r.stale && (r.desired > 0 || r.spec > 0))
        .map(|(k, _)| k)
        .collect();
    let mut conds = Vec::new();
    let mut stalled: Option<(String, String)> = None;
    match (&f.invalid, f.unplaced) {
        (Some(msg), _) => {
            conds.push(Cond::new(
                condition::SCHEDULED,
                false,
                reason::INVALID_SPEC,
                msg.clone(),
            ));
            stalled = Some((reason::INVALID_SPEC.into(), msg.clone()));
        }
        (None, None) => conds.push(Cond {
            type_: condition::SCHEDULED,
            status: cstatus::UNKNOWN,
            reason: "WaitingForSolver".into(),
            message: "the scheduler has not decided this generation yet".into(),
        }),
        (None, Some(0)) => conds.push(Cond::new(
            condition::SCHEDULED,
            true,
            reason::PLACED,
            format!("all {} replicas placed", f.desired),
        )),
        (None, Some(u)) => {
            let placed = f.desired.saturating_sub(u);
            let why = if placed == 0 {
                reason::NO_FEASIBLE_PLACEMENT
            } else {
                reason::PARTIALLY_PLACED
            };
            let detail = f
                .explanation
                .as_ref()
                .and_then(|e| e.summary.clone())
                .unwrap_or_default();
            let msg = format!("{u} of {} replicas fit nowhere. {detail}", f.desired)
                .trim()
                .to_owned();
            conds.push(Cond::new(condition::SCHEDULED, false, why, msg.clone()));
            stalled = Some((why.into(), msg));
        }
    }
    if let Some(c) = f.conflicts.first() {
        stalled = Some(("ConflictUnownedObject".into(), c.clone()));
    }
    // A member Deployment past its progress deadline is a real failure (kstatus Stalled),
    // unless it is the target of a move already given up (its surplus is being removed).
    let past_deadline: Vec<&String> = f
        .pools
        .iter()
        .filter(|(p, r)| {
            r.deadline_exceeded && !r.stale && r.desired > 0 && !f.migration_stalled.contains(p)
        })
        .map(|(k, _)| k)
        .collect();
    if stalled.is_none() && !past_deadline.is_empty() {
        stalled = Some((
            reason::PROGRESS_DEADLINE_EXCEEDED.into(),
            format!(
                "no progress within {}s (migration.timeoutSeconds) in: {}",
                f.timeout_seconds,
                join(&past_deadline)
            ),
        ));
    }
    let enough = available >= f.min_available;
    conds.push(if enough {
        Cond::new(
            condition::AVAILABLE,
            true,
            reason::MINIMUM_REPLICAS_AVAILABLE,
            format!(
                "{available} of {} replicas available (minimum {})",
                f.desired, f.min_available
            ),
        )
    } else if !stale.is_empty() {
        Cond::new(
            condition::AVAILABLE,
            false,
            "MemberUnreachable",
            format!(
                "{available} replicas available on reachable members; unreachable: {}",
                join(&stale)
            ),
        )
    } else {
        Cond::new(
            condition::AVAILABLE,
            false,
            reason::MINIMUM_REPLICAS_UNAVAILABLE,
            format!(
                "{available} of {} replicas available (minimum {})",
                f.desired, f.min_available
            ),
        )
    });
    // A stale member that is no longer wanted (failed over) holds a surplus to prune later; it
    // does not keep the service from being Ready.
    let all_rolled = f
        .pools
        .values()
        .filter(|r| r.desired > 0 || (r.spec > 0 && !r.stale))
        .all(|r| !r.stale && r.rolled_out && r.spec == r.desired && r.available >= r.desired);
    let realised = !f.pending_writes && f.invalid.is_none() && f.unplaced.is_some();
    let is_ready = stalled.is_none()
        && f.unplaced == Some(0)
        && realised
        && all_rolled
        && available >= f.desired;
    if is_ready {
        conds.push(Cond::new(
            condition::READY,
            true,
            reason::RECONCILED,
            format!(
                "{available} replicas available as placed: {}",
                summary.join(", ")
            ),
        ));
        conds.push(Cond::new(
            condition::RECONCILING,
            false,
            reason::RECONCILED,
            "nothing to do",
        ));
        conds.push(Cond::new(
            condition::PROGRESSING,
            true,
            reason::RECONCILED,
            "rollout complete",
        ));
        conds.push(Cond::new(
            condition::STALLED,
            false,
            reason::RECONCILED,
            "progressing normally",
        ));
    } else if let Some((why, msg)) = stalled {
        conds.push(Cond::new(condition::READY, false, &why, msg.clone()));
        conds.push(Cond::new(
            condition::RECONCILING,
            false,
            &why,
            "waiting for a change to the spec or to the clouds",
        ));
        conds.push(Cond::new(condition::PROGRESSING, false, &why, msg.clone()));
        conds.push(Cond::new(condition::STALLED, true, &why, msg));
    } else {
        let (why, msg) = if !f.failing_over.is_empty() {
            (
                reason::FAILING_OVER.to_owned(),
                format!(
                    "replacing replicas of unreachable members: {}",
                    f.failing_over.join(", ")
                ),
            )
        } else if !stale.is_empty() {
            (
                "MemberUnreachable".to_owned(),
                format!("waiting for unreachable members: {}", join(&stale)),
            )
        } else if migrating(f) {
            (
                reason::MIGRATING.to_owned(),
                format!(
                    "moving replicas, make-before-break: {available} of {} available",
                    f.desired
                ),
            )
        } else {
            (
                reason::ROLLING_OUT.to_owned(),
                format!("{available} of {} replicas available", f.desired),
            )
        };
        conds.push(Cond::new(condition::READY, false, &why, msg.clone()));
        conds.push(Cond::new(condition::RECONCILING, true, &why, msg.clone()));
        conds.push(Cond::new(condition::PROGRESSING, true, &why, msg));
        conds.push(Cond::new(condition::STALLED, false, &why, "progressing"));
    }
    conds.push(if f.migration_stalled.is_empty() {
        Cond::new(
            condition::MIGRATION_STALLED,
            false,
            reason::RECONCILED,
            "no move has stalled",
        )
    } else {
        let to = f.migration_stalled.join(", ");
        Cond::new(
            condition::MIGRATION_STALLED,
            true,
            reason::PROGRESS_DEADLINE_EXCEEDED,
            format!(
                "moving replicas to {to} made no progress within {}s (migration.timeoutSeconds): the move was given up, replicas stay where they are Available, and {to} is avoided for this service until its spec or that CloudPool's spec changes",
                f.timeout_seconds
            ),
        )
    });
    conds.push(if f.scaling_conflicts.is_empty() {
        Cond::new(
            condition::SCALING_CONFLICT,
            false,
            reason::RECONCILED,
            "Skyloom's replica counts stand",
        )
    } else {
        Cond::new(
            condition::SCALING_CONFLICT,
            true,
            reason::REPLICAS_CHANGED_IN_MEMBER,
            format!(
                "another writer keeps changing spec.replicas in {}; Skyloom puts its count back at most once every {}s (set spec.scaling.mode: Member to let the member own the count)",
                f.scaling_conflicts.join(", "),
                f.scaling_conflict_window_seconds
            ),
        )
    });
    ServiceStatusParts {
        placements,
        replicas: i(replicas),
        ready: i(ready),
        available: i(available),
        unplaced: i(f.unplaced.unwrap_or(0)),
        summary: summary.join(","),
        conditions: conds,
        realised,
    }
}

/// Replicas are moving between members: one holds more than it should keep while another
/// still waits for its share to become Available.
fn migrating(f: &ServiceFacts) -> bool {
    let visible = || f.pools.values().filter(|r| !r.stale);
    visible().any(|r| r.spec > r.desired) && visible().any(|r| r.available < r.desired)
}

fn join(v: &[&String]) -> String {
    v.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
}

/// A Quantity for `amount` base units of `resource`.
pub fn quantity(resource: &str, amount: u64) -> Quantity {
    if resource == skyloom_solver::units::CPU {
        if amount.is_multiple_of(1000) {
            Quantity((amount / 1000).to_string())
        } else {
            Quantity(format!("{amount}m"))
        }
    } else if skyloom_solver::units::is_byte_resource(resource)
        && amount.is_multiple_of(1 << 30)
        && amount > 0
    {
        Quantity(format!("{}Gi", amount >> 30))
    } else if skyloom_solver::units::is_byte_resource(resource)
        && amount.is_multiple_of(1 << 20)
        && amount > 0
    {
        Quantity(format!("{}Mi", amount >> 20))
    } else {
        Quantity(amount.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(desired: u32, spec: u32, available: u32, stale: bool) -> PoolReport {
        PoolReport {
            desired,
            spec,
            ready: available,
            available,
            rolled_out: true,
            stale,
            deadline_exceeded: false,
            namespace_terminating: false,
            last_observed: None,
            problem: None,
        }
    }

    fn get<'a>(p: &'a ServiceStatusParts, t: &str) -> &'a Cond {
        p.conditions.iter().find(|c| c.type_ == t).unwrap()
    }

    #[test]
    fn ready_only_when_everything_is_placed_and_available() {
        let mut f = ServiceFacts {
            desired: 3,
            min_available: 3,
            unplaced: Some(0),
            ..Default::default()
        };
        f.pools.insert("a".into(), pool(2, 2, 2, false));
        f.pools.insert("b".into(), pool(1, 1, 1, false));
        let s = service_status(&f);
        assert_eq!(get(&s, "Ready").status, "True");
        assert_eq!(s.summary, "a=2,b=1");
        assert_eq!(s.available, 3);
        f.pools.insert("b".into(), pool(1, 1, 0, false));
        let s = service_status(&f);
        assert_eq!(get(&s, "Ready").status, "False");
        assert_eq!(get(&s, "Reconciling").status, "True");
    }

    #[test]
    fn a_member_avoided_for_a_terminating_namespace_keeps_an_entry_saying_so() {
        let mut f = ServiceFacts {
            desired: 1,
            min_available: 1,
            unplaced: Some(0),
            ..Default::default()
        };
        f.pools.insert("gcp".into(), pool(1, 1, 1, false));
        f.pools.insert("idle".into(), pool(0, 0, 0, false));
        let mut avoided = pool(0, 0, 0, false);
        avoided.namespace_terminating = true;
        f.pools.insert("azure".into(), avoided);
        let s = service_status(&f);
        let entries: Vec<(&str, Option<&str>)> = s
            .placements
            .iter()
            .map(|p| (p.cloud.as_str(), p.reason.as_deref()))
            .collect();
        assert_eq!(
            entries,
            [("azure", Some("NamespaceTerminating")), ("gcp", None)]
        );
        assert_eq!(get(&s, "Ready").status, "True");
    }

    #[test]
    fn nothing_placed_is_stalled_not_scheduled() {
        let f = ServiceFacts {
            desired: 2,
            min_available: 2,
            unplaced: Some(2),
            ..Default::default()
        };
        let s = service_status(&f);
        assert_eq!(get(&s, "Scheduled").status, "False");
        assert_eq!(get(&s, "Scheduled").reason, "NoFeasiblePlacement");
        assert_eq!(get(&s, "Stalled").status, "True");
        assert_eq!(get(&s, "Ready").status, "False");
    }

    #[test]
    fn stale_members_do_not_count_as_available() {
        let mut f = ServiceFacts {
            desired: 2,
            min_available: 2,
            unplaced: Some(0),
            ..Default::default()
        };
        let seen = Time(k8s_openapi::jiff::Timestamp::from_second(1_000).unwrap());
        let mut fresh = pool(1, 1, 1, false);
        fresh.last_observed = Some(seen.clone());
        f.pools.insert("a".into(), fresh);
        let mut stale = pool(1, 1, 1, true);
        stale.last_observed = Some(seen.clone());
        f.pools.insert("b".into(), stale);
        let s = service_status(&f);
        assert_eq!(s.available, 1);
        assert_eq!(get(&s, "Available").reason, "MemberUnreachable");
        assert_eq!(s.placements[1].reason.as_deref(), Some("MemberStatusStale"));
        assert_eq!(
            s.placements[1].last_observed_time,
            Some(seen),
            "a stale entry says when it was last seen"
        );
        assert_eq!(
            s.placements[0].last_observed_time, None,
            "a fresh entry carries no ticking timestamp"
        );
    }

    #[test]
    fn a_failed_over_stale_leftover_does_not_block_ready() {
        let mut f = ServiceFacts {
            desired: 2,
            min_available: 2,
            unplaced: Some(0),
            ..Default::default()
        };
        f.pools.insert("a".into(), pool(2, 2, 2, false));
        f.pools.insert("b".into(), pool(0, 2, 2, true));
        let s = service_status(&f);
        assert_eq!(get(&s, "Ready").status, "True");
        assert_eq!(s.available, 2, "the leftover's replicas are not counted");
        f.pools.insert("b".into(), pool(1, 1, 1, true));
        assert_eq!(
            get(&service_status(&f), "Ready").status,
            "False",
            "a wanted stale member blocks Ready"
        );
    }

    #[test]
    fn a_deployment_past_its_deadline_is_stalled_unless_its_move_was_given_up() {
        let mut f = ServiceFacts {
            desired: 2,
            min_available: 2,
            unplaced: Some(0),
            timeout_seconds: 30,
            ..Default::default()
        };
        let mut stuck = pool(2, 2, 0, false);
        stuck.deadline_exceeded = true;
        f.pools.insert("a".into(), stuck.clone());
        let s = service_status(&f);
        for (t, status) in [
            ("Progressing", "False"),
            ("Stalled", "True"),
            ("Ready", "False"),
        ] {
            assert_eq!(get(&s, t).status, status, "{t}");
            assert_eq!(get(&s, t).reason, "ProgressDeadlineExceeded", "{t}");
        }
        assert!(get(&s, "Stalled").message.contains("30s"));
        assert_eq!(
            s.placements[0].reason.as_deref(),
            Some("ProgressDeadlineExceeded")
        );
        assert_eq!(get(&s, "MigrationStalled").status, "False");
        // A given-up move: the source serves everything, the stuck target is being removed.
        f.pools.insert("a".into(), pool(2, 2, 2, false));
        f.pools.insert(
            "b".into(),
            PoolReport {
                desired: 0,
                spec: 1,
                ..stuck
            },
        );
        f.migration_stalled = vec!["b".into()];
        let s = service_status(&f);
        assert_eq!(get(&s, "Stalled").status, "False");
        let m = get(&s, "MigrationStalled");
        assert_eq!(
            (m.status, m.reason.as_str()),
            ("True", "ProgressDeadlineExceeded")
        );
        assert!(m.message.contains("moving replicas to b"), "{}", m.message);
    }

    #[test]
    fn member_scaling_reports_the_members_counts() {
        let mut reports = BTreeMap::from([
            ("a".to_owned(), pool(2, 5, 5, false)),
            ("b".to_owned(), pool(2, 0, 0, false)),
            ("c".to_owned(), pool(0, 1, 1, false)),
        ]);
        assert_eq!(member_chosen(&mut reports), Some(7), "a chose 5, b is new");
        assert_eq!(reports["a"].desired, 5);
        assert_eq!(
            reports["c"].desired, 0,
            "a member no longer wanted stays unwanted"
        );
        assert_eq!(member_chosen(&mut BTreeMap::new()), None);
    }

    #[test]
    fn a_move_in_flight_is_migrating_and_progressing() {
        let mut f = ServiceFacts {
            desired: 2,
            min_available: 2,
            unplaced: Some(0),
            ..Default::default()
        };
        f.pools.insert("a".into(), pool(0, 2, 2, false));
        f.pools.insert("b".into(), pool(2, 1, 0, false));
        let s = service_status(&f);
        let p = get(&s, "Progressing");
        assert_eq!((p.status, p.reason.as_str()), ("True", "Migrating"));
        assert_eq!(get(&s, "Available").status, "True");
        f.pools.insert("a".into(), pool(0, 0, 0, false));
        f.pools.insert("b".into(), pool(2, 2, 2, false));
        let s = service_status(&f);
        let p = get(&s, "Progressing");
        assert_eq!((p.status, p.reason.as_str()), ("True", "Reconciled"));
    }

    #[test]
    fn transition_times_survive_unchanged_status() {
        let old = Time(k8s_openapi::jiff::Timestamp::from_second(1_000).unwrap());
        let now = Time(k8s_openapi::jiff::Timestamp::from_second(2_000).unwrap());
        let c = [Cond::new("Ready", true, "Reconciled", "ok")];
        let first = conditions(&c, &[], Some(1), &old);
        let second = conditions(&c, &first, Some(2), &now);
        assert_eq!(second[0].last_transition_time, old);
        let flipped = conditions(
            &[Cond::new("Ready", false, "RollingOut", "x")],
            &second,
            Some(2),
            &now,
        );
        assert_eq!(flipped[0].last_transition_time, now);
    }

    #[test]
    fn quantities_read_back() {
        assert_eq!(quantity("cpu", 1500).0, "1500m");
        assert_eq!(quantity("cpu", 4000).0, "4");
        assert_eq!(quantity("memory", 16 << 30).0, "16Gi");
        assert_eq!(quantity("nvidia.com/gpu", 3).0, "3");
    }
}
