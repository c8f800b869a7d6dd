//! Failover on the testbed: a member cut off for less than the grace period keeps its
//! replicas and nothing moves; one cut off for longer has its replicas replaced elsewhere,
//! nothing is deleted while it is unreachable, and when it returns the surplus is removed only
//! while enough replicas stay available.

#![allow(clippy::expect_used, clippy::unwrap_used)] // test code: a failed expectation is a failed test

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use skyloom_api::AIService;
use skyloom_e2e::operator::{OperatorHandle, register_priced_members, test_args};
use skyloom_e2e::{
    TestNamespace, eventually, gpu_service, member_replicas, remove_service, service_ready, shared,
};
use skyloom_testbed::Testbed;
use tokio::sync::{Mutex, MutexGuard, OnceCell};

static ENV: OnceCell<OperatorHandle> = OnceCell::const_new();
static SERIAL: Mutex<()> = Mutex::const_new(());

async fn env() -> (&'static Testbed, MutexGuard<'static, ()>) {
    let guard = SERIAL.lock().await;
    let tb = shared().await;
    ENV.get_or_init(|| async {
        register_priced_members(tb)
            .await
            .expect("members registered");
        OperatorHandle::start(tb, test_args())
    })
    .await;
    (tb, guard)
}

fn service(name: &str, replicas: i32, grace_seconds: i32) -> serde_json::Value {
    let mut doc = gpu_service(name, replicas);
    doc["spec"]["failover"] = serde_json::json!({"unreachableGracePeriodSeconds": grace_seconds});
    doc
}

async fn start_service(tb: &Testbed, hub: &Client, ns: &str, doc: serde_json::Value) {
    let name = doc["metadata"]["name"].as_str().unwrap().to_owned();
    Api::<AIService>::namespaced(hub.clone(), ns)
        .patch(
            &name,
            &PatchParams::apply("e2e").force(),
            &Patch::Apply(&doc),
        )
        .await
        .unwrap();
    eventually(
        Duration::from_secs(60),
        "the service to be Ready on azure",
        || async {
            let placed = member_replicas(tb, ns, &name).await;
            (service_ready(hub, ns, &name).await
                && placed == BTreeMap::from([("azure-eastus".to_owned(), (2, 2))]))
            .then_some(())
        },
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_shorter_than_the_grace_period_moves_nothing() {
    let (tb, _serial) = env().await;
    let hub = tb.hub().client().await.unwrap();
    let ns = TestNamespace::create(&hub, "fo-short").await.unwrap();
    start_service(tb, &hub, &ns.name, service("steady", 2, 30)).await;
    let azure = tb.member("azure-eastus").unwrap();
    azure.cut();
    let until = Instant::now() + Duration::from_secs(8);
    while Instant::now() < until {
        let placed = member_replicas(tb, &ns.name, "steady").await;
        assert_eq!(
            placed.keys().collect::<Vec<_>>(),
            vec!["azure-eastus"],
            "a replica moved during a short cut"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    azure.restore();
    eventually(Duration::from_secs(30), "Ready again", || async {
        service_ready(&hub, &ns.name, "steady").await.then_some(())
    })
    .await
    .unwrap();
    assert_eq!(
        member_replicas(tb, &ns.name, "steady").await,
        BTreeMap::from([("azure-eastus".to_owned(), (2, 2))])
    );
    remove_service(tb, &hub, ns, "steady").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_cut_fails_over_and_the_return_prunes_only_the_surplus() {
    let (tb, _serial) = env().await;
    let hub = tb.hub().client().await.unwrap();
    let ns = TestNamespace::create(&hub, "fo-long").await.unwrap();
    start_service(tb, &hub, &ns.name, service("mover", 2, 3)).await;
    let azure = tb.member("azure-eastus").unwrap();
    let cut_at = Instant::now();
    azure.cut();
    // Replacements become Available elsewhere; nothing in the cut member is touched.
    let took = eventually(
        Duration::from_secs(60),
        "replacements Available outside azure",
        || async {
            let placed = member_replicas(tb, &ns.name, "mover").await;
            let elsewhere: i32 = placed
                .iter()
                .filter(|(k, _)| *k != "azure-eastus")
                .map(|(_, v)| v.1)
                .sum();
            (elsewhere >= 2).then(|| cut_at.elapsed())
        },
    )
    .await
    .unwrap();
    assert!(
        took >= Duration::from_secs(3),
        "failover before the grace period: {took:?}"
    );
    let placed = member_replicas(tb, &ns.name, "mover").await;
    assert_eq!(
        placed.get("azure-eastus"),
        Some(&(2, 2)),
        "the unreachable member was left alone"
    );
    assert!(
        !placed.contains_key("aws-us-east-1"),
        "the cheaper healthy member was used: {placed:?}"
    );
    // Back: the surplus goes, and at no sampled moment are fewer than 2 replicas available.
    // Every member's spec.replicas is recorded from the restore on (CASE-02 E4).
    let history = std::sync::Mutex::new(BTreeMap::<String, Vec<i32>>::new());
    let record = |placed: &BTreeMap<String, (i32, i32)>| {
        let mut h = history.lock().unwrap();
        for m in tb.members() {
            let spec = placed.get(m.name()).map_or(0, |v| v.0);
            let seq = h.entry(m.name().to_owned()).or_default();
            if seq.last() != Some(&spec) {
                seq.push(spec);
            }
        }
    };
    record(&member_replicas(tb, &ns.name, "mover").await);
    azure.restore();
    let settled = eventually(
        Duration::from_secs(60),
        "the surplus to be removed",
        || async {
            let placed = member_replicas(tb, &ns.name, "mover").await;
            record(&placed);
            let available: i32 = placed.values().map(|v| v.1).sum();
            assert!(
                available >= 2,
                "fewer than 2 available after the restore: {placed:?}"
            );
            let total: i32 = placed.values().map(|v| v.0).sum();
            (total == 2 && placed.len() == 1).then_some(placed)
        },
    )
    .await
    .unwrap();
    assert_eq!(settled.values().next().unwrap().1, 2);
    eventually(
        Duration::from_secs(30),
        "Ready after the return",
        || async { service_ready(&hub, &ns.name, "mover").await.then_some(()) },
    )
    .await
    .unwrap();
    // No flapping: a little longer, then each member changed at most once since the return.
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until {
        record(&member_replicas(tb, &ns.name, "mover").await);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let history = history.into_inner().unwrap();
    for (member, seq) in &history {
        assert!(
            seq.len() <= 2,
            "{member} changed more than once after the return: {history:?}"
        );
    }
    remove_service(tb, &hub, ns, "mover").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hold_mode_never_fails_over() {
    let (tb, _serial) = env().await;
    let hub = tb.hub().client().await.unwrap();
    let ns = TestNamespace::create(&hub, "fo-hold").await.unwrap();
    let mut doc = service("singleton", 2, 2);
    doc["spec"]["failover"]["mode"] = serde_json::json!("Hold");
    start_service(tb, &hub, &ns.name, doc).await;
    let azure = tb.member("azure-eastus").unwrap();
    azure.cut();
    let api: Api<AIService> = Api::namespaced(hub.clone(), &ns.name);
    // Well past the grace period: nothing anywhere else, and the service says why.
    let until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < until {
        let placed = member_replicas(tb, &ns.name, "singleton").await;
        assert_eq!(
            placed.keys().collect::<Vec<_>>(),
            vec!["azure-eastus"],
            "Hold mode failed over"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let available = api
        .get("singleton")
        .await
        .unwrap()
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.type_ == "Available")
        .unwrap();
    assert_eq!(
        (available.status.as_str(), available.reason.as_str()),
        ("False", "MemberUnreachable")
    );
    azure.restore();
    eventually(Duration::from_secs(30), "Ready again", || async {
        service_ready(&hub, &ns.name, "singleton")
            .await
            .then_some(())
    })
    .await
    .unwrap();
    assert_eq!(
        member_replicas(tb, &ns.name, "singleton").await,
        BTreeMap::from([("azure-eastus".to_owned(), (2, 2))])
    );
    remove_service(tb, &hub, ns, "singleton").await.unwrap();
}
