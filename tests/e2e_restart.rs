//! The operator stopping and starting: what changed while it was down converges on restart
//! (no duplicates, deletions finalized, orphans pruned), and with leader election a second
//! replica takes over when the leader stops.

#![allow(clippy::expect_used, clippy::unwrap_used)] // test code: a failed expectation is a failed test

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use kube::Client;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use skyloom_api::AIService;
use skyloom_e2e::operator::{OperatorHandle, register_priced_members, test_args};
use skyloom_e2e::{TestNamespace, eventually, shared};
use skyloom_testbed::Testbed;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The shared testbed with its members registered, and the lock that keeps the tests of this
/// file (each with operators of its own) from running at the same time.
async fn setup() -> (&'static Testbed, tokio::sync::MutexGuard<'static, ()>) {
    let guard = SERIAL.lock().await;
    let tb = shared().await;
    register_priced_members(tb)
        .await
        .expect("members registered");
    (tb, guard)
}

fn service(name: &str, replicas: i32) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "skyloom.io/v1alpha1",
        "kind": "AIService",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "template": {"spec": {"containers": [{
                "name": "server", "image": "registry.example/llm:1.0",
                "resources": {"requests": {"cpu": "1", "memory": "4Gi", "nvidia.com/gpu": "1"}, "limits": {"nvidia.com/gpu": "1"}},
            }]}},
        },
    })
}

async fn apply(hub: &Client, ns: &str, doc: &serde_json::Value) {
    let name = doc["metadata"]["name"].as_str().unwrap();
    Api::<AIService>::namespaced(hub.clone(), ns)
        .patch(name, &PatchParams::apply("e2e").force(), &Patch::Apply(doc))
        .await
        .unwrap();
}

async fn replicas(tb: &Testbed, ns: &str, name: &str) -> BTreeMap<String, i32> {
    let mut out = BTreeMap::new();
    for m in tb.members() {
        let api: Api<Deployment> = Api::namespaced(m.direct_client().await.unwrap(), ns);
        if let Ok(Some(d)) = api.get_opt(name).await {
            out.insert(m.name().to_owned(), d.spec.replicas.unwrap_or(0));
        }
    }
    out
}

async fn converged(hub: &Client, tb: &Testbed, ns: &str, name: &str, want: BTreeMap<String, i32>) {
    let api: Api<AIService> = Api::namespaced(hub.clone(), ns);
    let what = format!("{ns}/{name} to be Ready as {want:?}");
    let result = eventually(Duration::from_secs(60), &what, || async {
        let ais = api.get(name).await.ok()?;
        let st = ais.status.as_ref()?;
        let ready = st
            .conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
            && st.observed_generation == ais.metadata.generation;
        (ready && replicas(tb, ns, name).await == want).then_some(())
    })
    .await;
    if let Err(e) = result {
        panic!("{e}; members have {:?}", replicas(tb, ns, name).await);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_made_while_the_operator_is_down_converge_on_restart() {
    let (tb, _serial) = setup().await;
    let hub = tb.hub().client().await.unwrap();
    let ns = TestNamespace::create(&hub, "rs").await.unwrap();
    let first = OperatorHandle::start(tb, test_args());
    apply(&hub, &ns.name, &service("keep", 2)).await;
    apply(&hub, &ns.name, &service("drop", 1)).await;
    converged(
        &hub,
        tb,
        &ns.name,
        "keep",
        BTreeMap::from([("azure-eastus".into(), 2)]),
    )
    .await;
    converged(
        &hub,
        tb,
        &ns.name,
        "drop",
        BTreeMap::from([("azure-eastus".into(), 1)]),
    )
    .await;
    first.stop();

    // While nobody runs: scale one service, delete the other (its finalizer holds it), and
    // leave a Deployment with Skyloom's marks whose AIService never existed.
    apply(&hub, &ns.name, &service("keep", 3)).await;
    let api: Api<AIService> = Api::namespaced(hub.clone(), &ns.name);
    api.delete("drop", &DeleteParams::default()).await.unwrap();
    assert!(
        api.get_opt("drop").await.unwrap().is_some(),
        "the finalizer holds the deleted AIService"
    );
    let gcp = tb
        .member("gcp-europe-west4")
        .unwrap()
        .direct_client()
        .await
        .unwrap();
    let ns_obj: k8s_openapi::api::core::v1::Namespace =
        serde_json::from_value(serde_json::json!({"metadata": {"name": ns.name}})).unwrap();
    let _ = Api::<k8s_openapi::api::core::v1::Namespace>::all(gcp.clone())
        .create(&Default::default(), &ns_obj)
        .await;
    let orphan: Deployment = serde_json::from_value(serde_json::json!({
        "metadata": {
            "name": "ghost",
            "labels": skyloom::identity::workload_labels(&ns.name, "ghost"),
            "annotations": skyloom::identity::ownership_annotations(&ns.name, "ghost", "uid-gone", "e2e-control-plane"),
        },
        "spec": {"replicas": 1, "selector": {"matchLabels": {"skyloom.io/service-id": skyloom::identity::service_id(&ns.name, "ghost")}},
                 "template": {"metadata": {"labels": skyloom::identity::workload_labels(&ns.name, "ghost")},
                              "spec": {"containers": [{"name": "g", "image": "registry.example/ghost:1"}]}}},
    }))
    .unwrap();
    Api::<Deployment>::namespaced(gcp.clone(), &ns.name)
        .create(&Default::default(), &orphan)
        .await
        .unwrap();

    let second = OperatorHandle::start(tb, test_args());
    converged(
        &hub,
        tb,
        &ns.name,
        "keep",
        BTreeMap::from([("azure-eastus".into(), 3)]),
    )
    .await;
    eventually(
        Duration::from_secs(60),
        "the deleted AIService to be finalized and its Deployment gone",
        || async {
            let gone = api.get_opt("drop").await.ok()?.is_none();
            (gone && replicas(tb, &ns.name, "drop").await.is_empty()).then_some(())
        },
    )
    .await
    .unwrap();
    eventually(
        Duration::from_secs(60),
        "the orphan to be pruned",
        || async {
            replicas(tb, &ns.name, "ghost")
                .await
                .is_empty()
                .then_some(())
        },
    )
    .await
    .unwrap();
    api.delete("keep", &DeleteParams::default()).await.unwrap();
    eventually(Duration::from_secs(30), "cleanup", || async {
        replicas(tb, &ns.name, "keep")
            .await
            .is_empty()
            .then_some(())
    })
    .await
    .unwrap();
    second.stop();
    ns.delete().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_takes_over_when_the_leader_stops() {
    let (tb, _serial) = setup().await;
    let hub = tb.hub().client().await.unwrap();
    let ns = TestNamespace::create(&hub, "le").await.unwrap();
    let mut args = test_args();
    args.leader_elect = true;
    args.lease_duration_seconds = 4;
    args.lease_name = "e2e-leader".into();
    let leader = OperatorHandle::start(tb, args.clone());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let follower = OperatorHandle::start(tb, args);
    apply(&hub, &ns.name, &service("led", 1)).await;
    converged(
        &hub,
        tb,
        &ns.name,
        "led",
        BTreeMap::from([("azure-eastus".into(), 1)]),
    )
    .await;
    let lease: k8s_openapi::api::coordination::v1::Lease =
        Api::namespaced(hub.clone(), skyloom_e2e::operator::OPERATOR_NAMESPACE)
            .get("e2e-leader")
            .await
            .unwrap();
    let holder = lease.spec.and_then(|s| s.holder_identity).unwrap();
    // The leader stops without a goodbye; the follower takes over within the lease duration.
    leader.stop();
    apply(&hub, &ns.name, &service("led", 2)).await;
    converged(
        &hub,
        tb,
        &ns.name,
        "led",
        BTreeMap::from([("azure-eastus".into(), 2)]),
    )
    .await;
    let lease: k8s_openapi::api::coordination::v1::Lease =
        Api::namespaced(hub.clone(), skyloom_e2e::operator::OPERATOR_NAMESPACE)
            .get("e2e-leader")
            .await
            .unwrap();
    assert_ne!(
        lease.spec.and_then(|s| s.holder_identity).unwrap(),
        holder,
        "leadership moved"
    );
    Api::<AIService>::namespaced(hub.clone(), &ns.name)
        .delete("led", &DeleteParams::default())
        .await
        .unwrap();
    eventually(Duration::from_secs(30), "cleanup", || async {
        replicas(tb, &ns.name, "led").await.is_empty().then_some(())
    })
    .await
    .unwrap();
    follower.stop();
    ns.delete().await.unwrap();
}
