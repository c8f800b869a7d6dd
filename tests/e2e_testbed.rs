//! The testbed itself, against real control planes: members come up with GPU nodes,
//! Deployments get Pods that honour capacity, faults behave as documented, and nothing is
//! left behind.

#![allow(clippy::expect_used, clippy::unwrap_used)] // test code: a failed expectation is a failed test

use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ListParams, PostParams};
use skyloom_e2e::{TestNamespace, eventually, shared};
use skyloom_testbed::{MemberSpec, NodeGroup, Testbed, TestbedSpec};

fn deployment(name: &str, replicas: i32, gpus: u32) -> Deployment {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{
                    "name": "server",
                    "image": "registry.example/model-server:1.0",
                    "resources": {
                        "requests": {"cpu": "1", "memory": "2Gi", "nvidia.com/gpu": gpus.to_string()},
                        "limits": {"nvidia.com/gpu": gpus.to_string()},
                    },
                }]},
            },
        },
    }))
    .expect("valid deployment")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_member_has_ready_gpu_nodes_with_region_labels() {
    let tb = shared().await;
    assert_eq!(tb.hub().name(), "hub");
    assert_eq!(tb.members().len(), 3);
    for member in tb.members() {
        let nodes: Api<Node> = Api::all(member.client().await.unwrap());
        let list = nodes.list(&ListParams::default()).await.unwrap();
        assert_eq!(list.items.len(), 4, "{}", member.name());
        let gpus: i64 = list
            .items
            .iter()
            .filter_map(|n| {
                n.status
                    .as_ref()?
                    .allocatable
                    .as_ref()?
                    .get("nvidia.com/gpu")
            })
            .map(|q| q.0.parse::<i64>().unwrap())
            .sum();
        assert_eq!(gpus, 8, "{} has two 4-GPU nodes", member.name());
        let region = member.spec().region.clone().unwrap();
        for n in &list.items {
            let labels = n.metadata.labels.as_ref().unwrap();
            assert_eq!(labels.get("topology.kubernetes.io/region"), Some(&region));
        }
    }
    // The hub runs no workloads.
    let hub_nodes: Api<Node> = Api::all(tb.hub().client().await.unwrap());
    assert!(
        hub_nodes
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployment_on_member_b_becomes_available_on_gpu_nodes() {
    let tb = shared().await;
    let b = &tb.members()[1];
    let client = b.client().await.unwrap();
    let ns = TestNamespace::create(&client, "tb-avail").await.unwrap();
    let deploys: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    deploys
        .create(&PostParams::default(), &deployment("llm", 3, 2))
        .await
        .unwrap();
    eventually(
        Duration::from_secs(60),
        "llm to have 3 available replicas",
        || async {
            let d = deploys.get("llm").await.ok()?;
            (d.status?.available_replicas? == 3).then_some(())
        },
    )
    .await
    .unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let list = pods.list(&ListParams::default()).await.unwrap();
    assert_eq!(list.items.len(), 3);
    for p in &list.items {
        assert_eq!(p.status.as_ref().unwrap().phase.as_deref(), Some("Running"));
        let node = p.spec.as_ref().unwrap().node_name.clone().unwrap();
        assert!(node.starts_with("gpu-"), "a GPU pod landed on {node}");
    }
    ns.delete().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_asking_for_more_gpus_than_any_node_stays_pending() {
    let tb = shared().await;
    let b = &tb.members()[1];
    let client = b.client().await.unwrap();
    let ns = TestNamespace::create(&client, "tb-pending").await.unwrap();
    let deploys: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    // Each node has 4 GPUs; the member has 8 in total, but no node can hold 5.
    deploys
        .create(&PostParams::default(), &deployment("too-big", 1, 5))
        .await
        .unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let reason = eventually(
        Duration::from_secs(60),
        "the scheduler to report the pod unschedulable",
        || async {
            let list = pods.list(&ListParams::default()).await.ok()?;
            let pod = list.items.first()?;
            let status = pod.status.as_ref()?;
            let cond = status
                .conditions
                .as_ref()?
                .iter()
                .find(|c| c.type_ == "PodScheduled")?;
            (cond.status == "False").then(|| {
                (
                    status.phase.clone(),
                    cond.reason.clone(),
                    cond.message.clone(),
                )
            })
        },
    )
    .await
    .unwrap();
    assert_eq!(reason.0.as_deref(), Some("Pending"));
    assert_eq!(reason.1.as_deref(), Some("Unschedulable"));
    assert!(reason.2.unwrap_or_default().contains("nvidia.com/gpu"));
    let d = deploys.get("too-big").await.unwrap();
    assert_eq!(d.status.and_then(|s| s.available_replicas).unwrap_or(0), 0);
    ns.delete().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_cut_pause_and_kill_fail_calls_and_recovery_heals() {
    let tb = shared().await;
    // Faults go to the third member only, so other tests on the shared testbed are unaffected.
    let c = &tb.members()[2];
    let timeout = Duration::from_secs(2);
    let client = c.client_with_timeouts(timeout, timeout).await.unwrap();
    let nodes: Api<Node> = Api::all(client.clone());
    nodes.list(&ListParams::default()).await.unwrap();

    // A partition: calls fail within the client timeout, the member itself keeps running.
    c.cut();
    let start = Instant::now();
    assert!(
        nodes.list(&ListParams::default()).await.is_err(),
        "cut member answered"
    );
    assert!(
        start.elapsed() < timeout + Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    let direct: Api<Node> = Api::all(c.direct_client().await.unwrap());
    assert_eq!(
        direct
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .len(),
        4
    );
    c.restore();
    eventually(
        Duration::from_secs(10),
        "calls to work after restore",
        || async { nodes.list(&ListParams::default()).await.ok() },
    )
    .await
    .unwrap();

    // A frozen apiserver.
    c.pause().unwrap();
    let fresh = c.client_with_timeouts(timeout, timeout).await.unwrap();
    let start = Instant::now();
    assert!(
        Api::<Node>::all(fresh)
            .list(&ListParams::default())
            .await
            .is_err()
    );
    assert!(start.elapsed() < timeout + Duration::from_secs(2));
    c.resume().unwrap();
    eventually(
        Duration::from_secs(10),
        "calls to work after resume",
        || async { nodes.list(&ListParams::default()).await.ok() },
    )
    .await
    .unwrap();

    // A killed apiserver comes back on the same address with its data.
    c.kill();
    assert!(!c.apiserver_running());
    assert!(nodes.list(&ListParams::default()).await.is_err());
    c.restart().await.unwrap();
    let after = eventually(
        Duration::from_secs(10),
        "calls to work after restart",
        || async { nodes.list(&ListParams::default()).await.ok() },
    )
    .await
    .unwrap();
    assert_eq!(after.items.len(), 4, "etcd kept the nodes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_testbed_leaves_no_process_and_no_files() {
    let spec = TestbedSpec {
        name: "drop-check".into(),
        hub: false,
        members: vec![MemberSpec {
            name: "solo".into(),
            region: Some("local-1".into()),
            zone: None,
            nodes: vec![NodeGroup {
                name: "n".into(),
                count: 1,
                cpu: "4".into(),
                memory: "8Gi".into(),
                gpu: 1,
                instance_type: None,
                labels: Default::default(),
            }],
        }],
    };
    let tb = Testbed::start(spec).await.unwrap();
    let pids = tb.pids();
    // etcd, apiserver, controller-manager, scheduler, kwok.
    assert_eq!(pids.len(), 5, "{pids:?}");
    let dir = tb.work_dir().to_owned();
    assert!(dir.exists());
    drop(tb);
    for (name, pid) in pids {
        // Every child was killed and reaped, so its /proc entry is gone (no zombie either).
        let gone = !std::path::Path::new(&format!("/proc/{pid}")).exists();
        assert!(gone, "{name} (pid {pid}) still exists after drop");
    }
    assert!(!dir.exists(), "work dir {} removed", dir.display());
}
