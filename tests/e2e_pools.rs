//! CloudPools and members going away (CASE-07): an AIService deleted while a member is cut,
//! a Secret deleted under a pool, and a pool deleted while it holds replicas. Deletion always
//! completes without anyone editing finalizers, and nothing Skyloom cannot see is deleted.

#![allow(clippy::expect_used, clippy::unwrap_used)] // test code: a failed expectation is a failed test

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use skyloom_api::{AIService, CloudPool};
use skyloom_e2e::operator::{
    OPERATOR_NAMESPACE, OperatorHandle, register_priced_members, test_args,
};
use skyloom_e2e::{TestNamespace, eventually, shared};
use skyloom_testbed::Testbed;
use tokio::sync::{Mutex, MutexGuard, OnceCell};

static ENV: OnceCell<OperatorHandle> = OnceCell::const_new();
static SERIAL: Mutex<()> = Mutex::const_new(());

/// Orphan grace period of this file's operator.
const ORPHAN_GRACE: Duration = Duration::from_secs(10);

/// The shared testbed with every member registered (again: tests delete pools) and one
/// operator; and the lock that runs these tests one at a time.
async fn env() -> (&'static Testbed, MutexGuard<'static, ()>) {
    let guard = SERIAL.lock().await;
    let tb = shared().await;
    register_priced_members(tb)
        .await
        .expect("members registered");
    ENV.get_or_init(|| async {
        let mut args = test_args();
        args.orphan_grace_period_seconds = ORPHAN_GRACE.as_secs();
        OperatorHandle::start(tb, args)
    })
    .await;
    (tb, guard)
}

fn service(name: &str, replicas: i32, min_clouds: i32) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "skyloom.io/v1alpha1",
        "kind": "AIService",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "placement": {"spread": {"minClouds": min_clouds}},
            "failover": {"unreachableGracePeriodSeconds": 300},
            "template": {"spec": {"containers": [{
                "name": "server", "image": "registry.example/llm:1.0",
                "resources": {"requests": {"cpu": "1", "memory": "4Gi", "nvidia.com/gpu": "1"},
                              "limits": {"nvidia.com/gpu": "1"}},
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

/// (spec.replicas, available replicas) of `ns/name` per member that answers; members that
/// do not answer are left out.
async fn observe(tb: &Testbed, ns: &str, name: &str) -> BTreeMap<String, (i32, i32)> {
    let mut out = BTreeMap::new();
    for m in tb.members() {
        let Ok(client) = m.direct_client().await else {
            continue;
        };
        let api: Api<Deployment> = Api::namespaced(client, ns);
        if let Ok(Some(d)) = api.get_opt(name).await {
            let available = d.status.and_then(|s| s.available_replicas).unwrap_or(0);
            out.insert(
                m.name().to_owned(),
                (d.spec.replicas.unwrap_or(0), available),
            );
        }
    }
    out
}

async fn ready(hub: &Client, ns: &str, name: &str) -> bool {
    let Ok(ais) = Api::<AIService>::namespaced(hub.clone(), ns)
        .get(name)
        .await
    else {
        return false;
    };
    ais.status.as_ref().is_some_and(|s| {
        s.observed_generation == ais.metadata.generation
            && s.conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
    })
}

/// Waits until `ns/name` is Ready with `want` (member -> replicas) in the members.
async fn placed(tb: &Testbed, hub: &Client, ns: &str, name: &str, want: &[(&str, i32)]) {
    let want: BTreeMap<String, i32> = want.iter().map(|(m, r)| ((*m).to_owned(), *r)).collect();
    let result = eventually(
        Duration::from_secs(60),
        &format!("{ns}/{name} at {want:?}"),
        || async {
            let seen: BTreeMap<String, i32> = observe(tb, ns, name)
                .await
                .into_iter()
                .map(|(m, (spec, _))| (m, spec))
                .collect();
            (ready(hub, ns, name).await && seen == want).then_some(())
        },
    )
    .await;
    if let Err(e) = result {
        panic!("{e}; members have {:?}", observe(tb, ns, name).await);
    }
}

fn pool_condition(pool: &CloudPool, type_: &str) -> Option<(String, String)> {
    pool.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone()))
}

/// Deletes `ns/name` and waits until it and its member Deployments are gone.
async fn remove(tb: &Testbed, hub: &Client, ns: &str, name: &str) {
    let api = Api::<AIService>::namespaced(hub.clone(), ns);
    let _ = api.delete(name, &DeleteParams::default()).await;
    eventually(
        Duration::from_secs(60),
        &format!("{ns}/{name} removed"),
        || async {
            let gone = api.get_opt(name).await.ok()?.is_none();
            (gone && observe(tb, ns, name).await.is_empty()).then_some(())
        },
    )
    .await
    .unwrap();
}

/// CASE-07 a: a member cut for good while its AIService is deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_service_with_a_cut_member_waits_then_leaves_an_orphan_that_is_pruned_on_return()
{
    let (tb, _serial) = env().await;
    let hub = tb.hub().client().await.unwrap();
    let ns = TestNamespace::create(&hub, "c07a").await.unwrap();
    apply(&hub, &ns.name, &service("split", 2, 2)).await;
    placed(
        tb,
        &hub,
        &ns.name,
        "split",
        &[("azure-eastus", 1), ("gcp-europe-west4", 1)],
    )
    .await;

    let gcp = tb.member("gcp-europe-west4").unwrap();
    gcp.cut();
    let api = Api::<AIService>::namespaced(hub.clone(), &ns.name);
    api.delete("split", &DeleteParams::default()).await.unwrap();
    // The reachable member is cleaned up at once; the AIService waits, saying for whom.
    let azure = tb.member("azure-eastus").unwrap();
    let azure_api: Api<Deployment> =
        Api::namespaced(azure.direct_client().await.unwrap(), &ns.name);
    eventually(
        Duration::from_secs(30),
        "azure's Deployment deleted",
        || async {
            azure_api
                .get_opt("split")
                .await
                .ok()?
                .is_none()
                .then_some(())
        },
    )
    .await
    .unwrap();
    let terminating = eventually(
        Duration::from_secs(10),
        "a Terminating condition",
        || async {
            let ais = api.get_opt("split").await.ok()??;
            let ready = ais
                .status?
                .conditions
                .into_iter()
                .find(|c| c.type_ == "Ready")?;
            (ready.reason == "Terminating").then_some(ready.message)
        },
    )
    .await
    .unwrap();
    assert!(terminating.contains("gcp-europe-west4"), "{terminating}");
    // After the orphan grace period the finalizer goes; the leftover is listed on the pool.
    eventually(
        ORPHAN_GRACE + Duration::from_secs(20),
        "the AIService gone",
        || async { api.get_opt("split").await.ok()?.is_none().then_some(()) },
    )
    .await
    .unwrap();
    let pools: Api<CloudPool> = Api::all(hub.clone());
    eventually(
        Duration::from_secs(15),
        "status.orphans on the cut pool",
        || async {
            let pool = pools.get("gcp-europe-west4").await.ok()?;
            pool.status?
                .orphans
                .iter()
                .any(|o| o.namespace == ns.name && o.name == "split" && o.reason == "OwnerGone")
                .then_some(())
        },
    )
    .await
    .unwrap();
    // Back: the leftover is pruned and the list empties.
    gcp.restore();
    let gcp_api: Api<Deployment> = Api::namespaced(gcp.direct_client().await.unwrap(), &ns.name);
    eventually(
        Duration::from_secs(60),
        "the orphan pruned after the return",
        || async {
            let gone = gcp_api.get_opt("split").await.ok()?.is_none();
            let pool = pools.get("gcp-europe-west4").await.ok()?;
            let listed = pool.status.is_some_and(|s| !s.orphans.is_empty());
            (gone && !listed).then_some(())
        },
    )
    .await
    .unwrap();
    ns.delete().await.unwrap();
}

/// CASE-07 b: the Secret of a pool deleted, then the pool itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_secret_deletes_nothing_and_the_pool_can_still_be_deleted() {
    let (tb, _serial) = env().await;
    let hub = tb.hub().client().await.unwrap();
    let ns = TestNamespace::create(&hub, "c07b").await.unwrap();
    apply(&hub, &ns.name, &service("kept", 1, 1)).await;
    placed(tb, &hub, &ns.name, "kept", &[("azure-eastus", 1)]).await;
    // Past its startup grace the operator decides even while a member is not listed; the
    // member must stay "unknown, not empty" then too (it did not, depending on test order).
    let uptime = ENV.get().map(|op| op.uptime()).unwrap_or_default();
    tokio::time::sleep(skyloom::controller::STARTUP_GRACE.saturating_sub(uptime)).await;

    let secrets: Api<Secret> = Api::namespaced(hub.clone(), OPERATOR_NAMESPACE);
    secrets
        .delete("azure-eastus-kubeconfig", &DeleteParams::default())
        .await
        .unwrap();
    let pools: Api<CloudPool> = Api::all(hub.clone());
    eventually(
        Duration::from_secs(30),
        "CredentialsAvailable=False SecretNotFound",
        || async {
            let pool = pools.get("azure-eastus").await.ok()?;
            (pool_condition(&pool, "CredentialsAvailable")
                == Some(("False".into(), "SecretNotFound".into())))
            .then_some(())
        },
    )
    .await
    .unwrap();
    // Unknown, not empty: the member keeps its replica, nothing elsewhere changes.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        observe(tb, &ns.name, "kept").await,
        BTreeMap::from([("azure-eastus".to_owned(), (1, 1))])
    );
    // Deleting the pool completes although its member cannot be cleaned up; what runs there
    // stays (Skyloom cannot see it, so it deletes nothing).
    pools
        .delete("azure-eastus", &DeleteParams::default())
        .await
        .unwrap();
    eventually(Duration::from_secs(60), "the CloudPool deleted", || async {
        pools
            .get_opt("azure-eastus")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await
    .unwrap();
    let kept = observe(tb, &ns.name, "kept").await;
    assert_eq!(kept.get("azure-eastus").map(|r| r.0), Some(1), "{kept:?}");

    // Registered again, the member's Deployment is Skyloom's again and converges.
    register_priced_members(tb).await.unwrap();
    placed(tb, &hub, &ns.name, "kept", &[("azure-eastus", 1)]).await;
    remove(tb, &hub, &ns.name, "kept").await;
    ns.delete().await.unwrap();
}

/// CASE-07 c: a pool deleted while it holds replicas is drained make-before-break and then
/// goes; while it terminates it gets no new replicas.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_pool_drains_it_before_it_goes() {
    let (tb, _serial) = env().await;
    let hub = tb.hub().client().await.unwrap();
    let ns = TestNamespace::create(&hub, "c07c").await.unwrap();
    apply(&hub, &ns.name, &service("moving", 2, 1)).await;
    placed(tb, &hub, &ns.name, "moving", &[("azure-eastus", 2)]).await;

    let pools: Api<CloudPool> = Api::all(hub.clone());
    let pool = pools.get("azure-eastus").await.unwrap();
    assert!(
        pool.metadata
            .finalizers
            .unwrap_or_default()
            .iter()
            .any(|f| f == "skyloom.io/member-cleanup"),
        "live pools carry Skyloom's finalizer"
    );
    pools
        .delete("azure-eastus", &DeleteParams::default())
        .await
        .unwrap();
    // Scaling up while the pool terminates gives it nothing new.
    apply(&hub, &ns.name, &service("moving", 3, 1)).await;
    // (lowest total available, highest replicas asked of the terminating pool)
    let extremes = std::sync::Mutex::new((i32::MAX, 0));
    let extremes = &extremes;
    let (pools, ns_name) = (&pools, &ns.name);
    eventually(
        Duration::from_secs(90),
        "drained to the next-cheapest member",
        || async move {
            let seen = observe(tb, ns_name, "moving").await;
            {
                let mut e = extremes.lock().unwrap();
                e.0 = e.0.min(seen.values().map(|r| r.1).sum());
                e.1 = e.1.max(seen.get("azure-eastus").map_or(0, |r| r.0));
            }
            let gone = pools.get_opt("azure-eastus").await.ok()?.is_none();
            let want = BTreeMap::from([("gcp-europe-west4".to_owned(), (3, 3))]);
            (gone && seen == want).then_some(())
        },
    )
    .await
    .unwrap();
    let (lowest_available, highest_azure) = *extremes.lock().unwrap();
    assert!(
        lowest_available >= 2,
        "never fewer than the 2 available replicas: {lowest_available}"
    );
    assert!(
        highest_azure <= 2,
        "the terminating pool got no new replica: {highest_azure}"
    );

    register_priced_members(tb).await.unwrap();
    remove(tb, &hub, &ns.name, "moving").await;
    ns.delete().await.unwrap();
}

/// CASE-14 E3: the service's namespace stuck Terminating in its member: the member is
/// avoided at once (`NamespaceTerminating` on its placement entry), the replicas run
/// elsewhere, and once the namespace is gone the member is used again without help.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminating_namespace_in_a_member_is_avoided_until_it_is_gone() {
    let (tb, _serial) = env().await;
    let hub = tb.hub().client().await.unwrap();
    let ns = TestNamespace::create(&hub, "c14").await.unwrap();
    apply(&hub, &ns.name, &service("ns-stuck", 1, 1)).await;
    placed(tb, &hub, &ns.name, "ns-stuck", &[("azure-eastus", 1)]).await;

    // In the member, a ConfigMap with a finalizer nobody removes keeps the namespace
    // Terminating once it is deleted.
    let azure = tb.member("azure-eastus").unwrap();
    let member = azure.direct_client().await.unwrap();
    let namespaces = Api::<k8s_openapi::api::core::v1::Namespace>::all(member.clone());
    let created = namespaces.get(&ns.name).await.unwrap();
    assert_eq!(
        created
            .labels()
            .get("skyloom.io/created-by")
            .map(String::as_str),
        Some("skyloom"),
        "Skyloom created the member namespace and says so"
    );
    let configmaps =
        Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(member.clone(), &ns.name);
    configmaps
        .create(
            &Default::default(),
            &serde_json::from_value(serde_json::json!({
                "metadata": {"name": "held", "finalizers": ["e2e.skyloom.io/hold"]}
            }))
            .unwrap(),
        )
        .await
        .unwrap();
    namespaces
        .delete(&ns.name, &DeleteParams::default())
        .await
        .unwrap();

    let api = Api::<AIService>::namespaced(hub.clone(), &ns.name);
    // The member's namespace controller deletes the Deployment first (the operator then
    // finds the namespace terminating); that can take a while on a loaded machine.
    eventually(
        Duration::from_secs(60),
        "NamespaceTerminating on azure's entry",
        || async {
            let ais = api.get("ns-stuck").await.ok()?;
            ais.status?
                .placements
                .iter()
                .any(|p| {
                    p.cloud == "azure-eastus" && p.reason.as_deref() == Some("NamespaceTerminating")
                })
                .then_some(())
        },
    )
    .await
    .unwrap();
    placed(tb, &hub, &ns.name, "ns-stuck", &[("gcp-europe-west4", 1)]).await;

    // The namespace goes; azure, the cheapest, takes the service back on its own.
    configmaps
        .patch(
            "held",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"metadata": {"finalizers": null}})),
        )
        .await
        .unwrap();
    eventually(
        Duration::from_secs(60),
        "the member namespace gone",
        || async {
            namespaces
                .get_opt(&ns.name)
                .await
                .ok()?
                .is_none()
                .then_some(())
        },
    )
    .await
    .unwrap();
    placed(tb, &hub, &ns.name, "ns-stuck", &[("azure-eastus", 1)]).await;
    remove(tb, &hub, &ns.name, "ns-stuck").await;
    ns.delete().await.unwrap();
}
