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
use skyloom_e2e::moves::Sampler;
use skyloom_e2e::operator::{OperatorHandle, register_priced_members, test_args};
use skyloom_e2e::{TestNamespace, eventually, member_replicas, set_gpu_price, shared};
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

/// The operator is stopped (and its memory lost) in the middle of a make-before-break move (a price
/// change made gcp cheaper; gcp has some of the replicas Available, azure still holds most).
/// Nothing it remembered survives; the next operator re-derives the move from what the
/// members show and finishes it: every replica on gcp, azure's Deployment gone, no other
/// copy anywhere, and over the whole run (both operators and the gap between them) never
/// fewer than the desired replicas Available nor more than maxSurge extra requested.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_killed_mid_move_finishes_it_after_restart_without_duplicates() {
    const AZURE: &str = "azure-eastus";
    const GCP: &str = "gcp-europe-west4";
    let (tb, _serial) = setup().await;
    let hub = tb.hub().client().await.unwrap();
    let ns = TestNamespace::create(&hub, "rs-mv").await.unwrap();
    let mut doc = skyloom_e2e::gpu_service("mover", 4);
    doc["spec"]["migration"] =
        serde_json::json!({"maxSurge": 1, "maxUnavailable": 0, "timeoutSeconds": 60});
    let first = OperatorHandle::start(tb, test_args());
    apply(&hub, &ns.name, &doc).await;
    converged(
        &hub,
        tb,
        &ns.name,
        "mover",
        BTreeMap::from([(AZURE.into(), 4)]),
    )
    .await;

    let sampler = Sampler::start(tb, &ns.name, "mover", 4, (AZURE, GCP));
    set_gpu_price(&hub, GCP, "1.00").await.unwrap();
    // Mid-move: gcp has replicas Available, azure has not drained below two.
    eventually(
        Duration::from_secs(45),
        "the move to be under way",
        || async {
            let placed = member_replicas(tb, &ns.name, "mover").await;
            let gcp_available = placed.get(GCP).map_or(0, |&(_, available)| available);
            let azure_requested = placed.get(AZURE).map_or(0, |&(requested, _)| requested);
            (gcp_available >= 1 && azure_requested >= 2).then_some(())
        },
    )
    .await
    .unwrap();
    first.stop();
    let frozen = replicas(tb, &ns.name, "mover").await;
    assert!(
        frozen.len() == 2,
        "both members hold copies mid-move: {frozen:?}"
    );
    // Nobody runs: the members keep what they have.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(replicas(tb, &ns.name, "mover").await, frozen);

    let second = OperatorHandle::start(tb, test_args());
    converged(
        &hub,
        tb,
        &ns.name,
        "mover",
        BTreeMap::from([(GCP.into(), 4)]),
    )
    .await;
    let trace = sampler.finish().await;
    trace.assert_make_before_break(4, 1);
    // No orphans and no duplicates: the namespace holds exactly one owned Deployment.
    let owned = owned_deployments(tb, std::slice::from_ref(&ns.name)).await;
    assert_eq!(
        owned.keys().cloned().collect::<Vec<_>>(),
        vec![(GCP.to_owned(), ns.name.clone(), "mover".to_owned())],
        "owned Deployments after the restart"
    );
    set_gpu_price(&hub, GCP, "2.50").await.unwrap();
    skyloom_e2e::remove_service(tb, &hub, ns, "mover")
        .await
        .unwrap();
    second.stop();
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

/// A small CPU-only service (no GPU competition with other tests).
fn small_service(name: &str, replicas: i32) -> serde_json::Value {
    let mut doc = service(name, replicas);
    doc["spec"]["template"]["spec"]["containers"][0]["resources"] =
        serde_json::json!({"requests": {"cpu": "100m", "memory": "128Mi"}});
    doc
}

/// Every owned Deployment in every member: (member, namespace, name) -> (uid, generation,
/// spec.replicas, matchLabels).
type Owned = BTreeMap<(String, String, String), (String, i64, i32, BTreeMap<String, String>)>;

async fn owned_deployments(tb: &Testbed, namespaces: &[String]) -> Owned {
    let mut out = Owned::new();
    for m in tb.members() {
        let client = m.direct_client().await.unwrap();
        for ns in namespaces {
            let list = Api::<Deployment>::namespaced(client.clone(), ns)
                .list(
                    &kube::api::ListParams::default()
                        .labels("app.kubernetes.io/managed-by=skyloom"),
                )
                .await
                .unwrap();
            for d in list {
                let labels = d.spec.selector.match_labels.clone();
                out.insert(
                    (
                        m.name().to_owned(),
                        ns.clone(),
                        d.metadata.name.clone().unwrap(),
                    ),
                    (
                        d.metadata.uid.clone().unwrap(),
                        d.metadata.generation.unwrap_or(0),
                        d.spec.replicas.unwrap_or(0),
                        labels.unwrap_or_default(),
                    ),
                );
            }
        }
    }
    out
}

/// CASE-15: names that collide when joined with a dash, and 60-character names in a
/// 60-character namespace, give one Deployment each with disjoint selectors; deleting one
/// touches no other; a restart recreates nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn colliding_and_long_names_stay_distinct_and_survive_a_restart() {
    let (tb, _serial) = setup().await;
    let hub = tb.hub().client().await.unwrap();
    let team_a = TestNamespace::create(&hub, "c15-team-a").await.unwrap();
    let team_b = TestNamespace::create(&hub, "c15-team-b").await.unwrap();
    let bar = TestNamespace::create(&hub, "c15-bar").await.unwrap();
    // `<bar>-lovely/panda` against `<bar>/lovely-panda`: the same text once joined by a dash.
    let bar_lovely = format!("{}-lovely", bar.name);
    let namespaces = Api::<k8s_openapi::api::core::v1::Namespace>::all(hub.clone());
    namespaces
        .create(
            &Default::default(),
            &serde_json::from_value(serde_json::json!({
                "metadata": {"name": bar_lovely, "labels": {"skyloom.io/e2e": "true"}}
            }))
            .unwrap(),
        )
        .await
        .unwrap();
    // 51 + "-" + an 8-digit suffix: a 60-character namespace, and a 60-character name.
    let long_ns = TestNamespace::create(&hub, &"l".repeat(51)).await.unwrap();
    let long_name = format!("m{}", "0123456789".repeat(6))[..60].to_owned();
    assert!(long_ns.name.len() >= 59, "{}", long_ns.name);

    let services: Vec<(String, String, i32)> = vec![
        (team_a.name.clone(), "llm".into(), 2),
        (team_b.name.clone(), "llm".into(), 3),
        (bar.name.clone(), "lovely-panda".into(), 1),
        (bar_lovely.clone(), "panda".into(), 1),
        (long_ns.name.clone(), long_name.clone(), 1),
    ];
    let all_ns: Vec<String> = services.iter().map(|(ns, _, _)| ns.clone()).collect();
    let first = OperatorHandle::start(tb, test_args());
    for (ns, name, replicas) in &services {
        apply(&hub, ns, &small_service(name, *replicas)).await;
    }
    for (ns, name, replicas) in &services {
        let api: Api<AIService> = Api::namespaced(hub.clone(), ns);
        eventually(
            Duration::from_secs(90),
            &format!("{ns}/{name} Ready"),
            || async {
                let ais = api.get(name).await.ok()?;
                let st = ais.status.as_ref()?;
                let ready = st
                    .conditions
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True");
                // Each AIService counts only its own Pods.
                (ready && st.available_replicas == Some(*replicas)).then_some(())
            },
        )
        .await
        .unwrap();
    }

    // E1: one Deployment per AIService, in its own namespace, with the right replica count.
    let owned = owned_deployments(tb, &all_ns).await;
    for (ns, name, replicas) in &services {
        let mine: Vec<_> = owned
            .iter()
            .filter(|((_, n, d), _)| n == ns && d == name)
            .collect();
        let total: i32 = mine.iter().map(|(_, v)| v.2).sum();
        assert_eq!(total, *replicas, "{ns}/{name}: {mine:?}");
        assert!(mine.len() == 1, "one member holds {ns}/{name}: {mine:?}");
    }
    assert_eq!(
        owned.len(),
        services.len(),
        "nothing else is owned: {owned:?}"
    );

    // E3: no Pod matches the selectors of two owned Deployments of its namespace.
    for m in tb.members() {
        let client = m.direct_client().await.unwrap();
        for ns in &all_ns {
            let pods = Api::<k8s_openapi::api::core::v1::Pod>::namespaced(client.clone(), ns)
                .list(&Default::default())
                .await
                .unwrap();
            for pod in pods {
                let labels = pod.metadata.labels.clone().unwrap_or_default();
                let matching = owned
                    .iter()
                    .filter(|((member, n, _), v)| {
                        member == m.name()
                            && n == ns
                            && v.3.iter().all(|(k, val)| labels.get(k) == Some(val))
                    })
                    .count();
                assert_eq!(
                    matching,
                    1,
                    "pod {ns}/{:?} in {}",
                    pod.metadata.name,
                    m.name()
                );
            }
        }
    }

    // E2: deleting team-a/llm removes exactly its Deployment; team-b's Pods keep their UIDs.
    let pod_uids = |tb: &'static Testbed, ns: String| async move {
        let mut uids = std::collections::BTreeSet::new();
        for m in tb.members() {
            let pods = Api::<k8s_openapi::api::core::v1::Pod>::namespaced(
                m.direct_client().await.unwrap(),
                &ns,
            )
            .list(&Default::default())
            .await
            .unwrap();
            uids.extend(pods.into_iter().filter_map(|p| p.metadata.uid));
        }
        uids
    };
    let team_b_pods = pod_uids(tb, team_b.name.clone()).await;
    assert_eq!(team_b_pods.len(), 3);
    Api::<AIService>::namespaced(hub.clone(), &team_a.name)
        .delete("llm", &DeleteParams::default())
        .await
        .unwrap();
    eventually(Duration::from_secs(30), "team-a/llm gone", || async {
        let gone = Api::<AIService>::namespaced(hub.clone(), &team_a.name)
            .get_opt("llm")
            .await
            .ok()?
            .is_none();
        (gone && replicas(tb, &team_a.name, "llm").await.is_empty()).then_some(())
    })
    .await
    .unwrap();
    let mut expected = owned.clone();
    expected.retain(|(_, ns, _), _| *ns != team_a.name);
    assert_eq!(
        owned_deployments(tb, &all_ns).await,
        expected,
        "only team-a/llm went"
    );
    assert_eq!(pod_uids(tb, team_b.name.clone()).await, team_b_pods);

    // E4: a restart recreates nothing (same UIDs and generations). A new service converging
    // after the restart shows the new operator has decided and reconciled.
    first.stop();
    let second = OperatorHandle::start(tb, test_args());
    apply(&hub, &team_b.name, &small_service("sentinel", 1)).await;
    let sentinel = Api::<AIService>::namespaced(hub.clone(), &team_b.name);
    eventually(Duration::from_secs(90), "the sentinel Ready", || async {
        let ais = sentinel.get("sentinel").await.ok()?;
        ais.status
            .as_ref()?
            .conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
            .then_some(())
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut after = owned_deployments(tb, &all_ns).await;
    after.retain(|(_, _, name), _| name != "sentinel");
    assert_eq!(after, expected, "the restart recreated or changed nothing");
    assert_eq!(pod_uids(tb, team_b.name.clone()).await.len(), 4);

    for (ns, name, _) in services.iter().skip(1) {
        Api::<AIService>::namespaced(hub.clone(), ns)
            .delete(name, &DeleteParams::default())
            .await
            .unwrap();
    }
    sentinel
        .delete("sentinel", &DeleteParams::default())
        .await
        .unwrap();
    eventually(Duration::from_secs(60), "cleanup", || async {
        owned_deployments(tb, &all_ns)
            .await
            .is_empty()
            .then_some(())
    })
    .await
    .unwrap();
    second.stop();
    namespaces
        .delete(&bar_lovely, &DeleteParams::background())
        .await
        .unwrap();
    for ns in [team_a, team_b, bar, long_ns] {
        ns.delete().await.unwrap();
    }
}
