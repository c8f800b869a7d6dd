//! CASE-17, leader split-brain: two operator replicas with leader election, each reaching the
//! hub through an endpoint of its own. Who wrote what is read from the apiservers' audit logs
//! (user-agent names the replica), never from the operators' own word.

#![allow(clippy::expect_used, clippy::unwrap_used)] // test code: a failed expectation is a failed test

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::coordination::v1::Lease;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use skyloom::leader::Timing;
use skyloom_api::AIService;
use skyloom_e2e::operator::{
    OPERATOR_NAMESPACE, OperatorHandle, register_priced_members, test_args, unique_identity,
};
use skyloom_e2e::{
    TestNamespace, eventually, gpu_service, member_replicas, remove_service, shared,
};
use skyloom_testbed::{AuditWrite, Testbed};

const LEASE_SECONDS: u64 = 6;
const MEMBER: &str = "azure-eastus";

async fn apply(hub: &Client, ns: &str, replicas: i32) {
    Api::<AIService>::namespaced(hub.clone(), ns)
        .patch(
            "llm",
            &PatchParams::apply("e2e").force(),
            &Patch::Apply(gpu_service("llm", replicas)),
        )
        .await
        .unwrap();
}

/// spec.replicas of `ns/llm` per member that has it.
async fn replicas(tb: &Testbed, ns: &str) -> BTreeMap<String, i32> {
    member_replicas(tb, ns, "llm")
        .await
        .into_iter()
        .map(|(m, (desired, _))| (m, desired))
        .collect()
}

async fn holder(hub: &Client, lease: &str) -> Option<String> {
    Api::<Lease>::namespaced(hub.clone(), OPERATOR_NAMESPACE)
        .get_opt(lease)
        .await
        .ok()??
        .spec?
        .holder_identity
}

/// Every write in the members and on the hub, with where it happened.
fn all_writes(tb: &Testbed) -> Vec<(String, AuditWrite)> {
    tb.all()
        .flat_map(|m| {
            let name = m.name().to_owned();
            m.audit_writes()
                .unwrap()
                .into_iter()
                .map(move |w| (name.clone(), w))
        })
        .collect()
}

/// Writes by `replica` other than its Lease bookkeeping.
fn writes_by<'a>(
    writes: &'a [(String, AuditWrite)],
    replica: &'a str,
) -> impl Iterator<Item = &'a (String, AuditWrite)> + 'a {
    writes
        .iter()
        .filter(move |(_, w)| w.from_agent(&format!("({replica})")) && w.resource() != "leases")
}

/// The last successful renewal of `lease` by `replica`, as the hub saw it.
fn last_renewal(tb: &Testbed, replica: &str, lease: &str) -> SystemTime {
    tb.hub()
        .audit_writes()
        .unwrap()
        .into_iter()
        .filter(|w| {
            w.from_agent(&format!("({replica})"))
                && w.resource() == "leases"
                && w.object_ref.as_ref().is_some_and(|o| o.name == lease)
                && w.succeeded()
        })
        .map(|w| w.completed())
        .max()
        .expect("the replica renewed the Lease at least once")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_leader_writes_and_a_cut_off_leader_stops_before_the_new_one_starts() {
    let tb = shared().await;
    register_priced_members(tb).await.unwrap();
    let hub = tb.hub().client().await.unwrap();
    let ns = TestNamespace::create(&hub, "split").await.unwrap();
    let lease = format!("e2e-split-{}", &ns.name[6..]);
    let timing = Timing::for_lease(LEASE_SECONDS);
    let mut args = test_args();
    args.leader_elect = true;
    args.lease_duration_seconds = LEASE_SECONDS;
    args.lease_name = lease.clone();

    // Replica a leads first; each replica reaches the hub through an endpoint of its own.
    let (a, b) = (unique_identity(), unique_identity());
    let (a_hub, b_hub) = (
        tb.hub().open_endpoint().unwrap(),
        tb.hub().open_endpoint().unwrap(),
    );
    args.identity = Some(a.clone());
    let op_a = OperatorHandle::start_with_hub(a_hub.kubeconfig_yaml().to_owned(), args.clone());
    eventually(Duration::from_secs(30), "replica a to lead", || async {
        (holder(&hub, &lease).await.as_deref() == Some(a.as_str())).then_some(())
    })
    .await
    .unwrap();
    args.identity = Some(b.clone());
    let op_b = OperatorHandle::start_with_hub(b_hub.kubeconfig_yaml().to_owned(), args);

    apply(&hub, &ns.name, 4).await;
    let want4 = BTreeMap::from([(MEMBER.to_owned(), 4)]);
    eventually(Duration::from_secs(60), "4 replicas in azure", || async {
        (replicas(tb, &ns.name).await == want4).then_some(())
    })
    .await
    .unwrap();
    // Give the follower time to do anything it (wrongly) would, then read the audit logs.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let writes = all_writes(tb);
    let by_b: Vec<_> = writes_by(&writes, &b).collect();
    assert!(by_b.is_empty(), "the follower wrote: {by_b:#?}");
    let by_a_in_member = writes_by(&writes, &a)
        .filter(|(m, w)| m == MEMBER && w.resource() == "deployments")
        .count();
    assert!(
        by_a_in_member > 0,
        "the leader's member writes carry its user-agent"
    );
    assert!(
        writes_by(&writes, &a).any(|(m, w)| m == "hub" && w.request_uri.contains("/status")),
        "the leader writes status on the hub"
    );

    // Cut only the leader's way to the hub; its way to the members stays open. Then change
    // the service so the new leader has a different plan from the old one.
    a_hub.cut();
    let cut_at = SystemTime::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    apply(&hub, &ns.name, 6).await;
    eventually(
        Duration::from_secs(30),
        "replica b to take over",
        || async { (holder(&hub, &lease).await.as_deref() == Some(b.as_str())).then_some(()) },
    )
    .await
    .unwrap();
    let want6 = BTreeMap::from([(MEMBER.to_owned(), 6)]);
    let mut trace: Vec<i32> = Vec::new();
    let mut record = |now: &BTreeMap<String, i32>| {
        let r = now.get(MEMBER).copied().unwrap_or(0);
        if trace.last() != Some(&r) {
            trace.push(r);
        }
    };
    eventually(Duration::from_secs(45), "the new plan in azure", || async {
        let now = replicas(tb, &ns.name).await;
        (now == want6).then_some(())
    })
    .await
    .unwrap();
    // The block stays a while: the members keep the new plan (no flip-flop).
    for _ in 0..40 {
        record(&replicas(tb, &ns.name).await);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    a_hub.restore();
    // After the block: the old leader is a follower; the plan stays.
    for _ in 0..40 {
        record(&replicas(tb, &ns.name).await);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(
        trace,
        vec![6],
        "azure's replicas after the takeover: {trace:?}"
    );

    // E1/E4: nothing from the old leader after its last renewal plus the renew deadline.
    let renewed = last_renewal(tb, &a, &lease);
    assert!(renewed <= cut_at, "a renewed after the cut");
    let stop_by = renewed + timing.renew_deadline;
    let writes = all_writes(tb);
    let late: Vec<_> = writes_by(&writes, &a)
        .filter(|(_, w)| w.received() > stop_by)
        .collect();
    assert!(
        late.is_empty(),
        "the old leader wrote after {stop_by:?} (renewed {renewed:?}): {late:#?}"
    );
    assert!(
        writes_by(&writes, &b).any(|(m, w)| m == MEMBER && w.resource() == "deployments"),
        "the new leader realised the new plan"
    );
    assert_eq!(holder(&hub, &lease).await.as_deref(), Some(b.as_str()));

    remove_service(tb, &hub, ns, "llm").await.unwrap();
    op_a.stop();
    op_b.stop();
}
