//! CASE-18, memory with many unrelated objects (E2, E3, E5): the hub holds a few hundred
//! Secrets that are not Skyloom's (in other namespaces, and some in the operator's own), every
//! member a few hundred Deployments and some Pods that are not Skyloom's. The operator runs two
//! AIServices to Ready; then the apiservers' audit logs (user-agent names the replica) show what
//! it read and how narrowly, never the operator's own word.

#![allow(clippy::expect_used, clippy::unwrap_used)] // test code: a failed expectation is a failed test

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant, SystemTime};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::serde::Serialize;
use k8s_openapi::serde::de::DeserializeOwned;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use skyloom::identity::MANAGED_SELECTOR;
use skyloom_api::AIService;
use skyloom_e2e::operator::{
    OPERATOR_NAMESPACE, OperatorHandle, register_priced_members, test_args, unique_identity,
};
use skyloom_e2e::{
    TestNamespace, eventually, gpu_service, member_replicas, remove_service, service_ready, shared,
};
use skyloom_testbed::{AuditRequest, Member};

/// Unrelated Secrets on the hub: this many namespaces of `SECRETS_PER_NAMESPACE` each.
const SECRET_NAMESPACES: usize = 4;
const SECRETS_PER_NAMESPACE: usize = 50;
/// Unrelated Secrets in the operator's own namespace, which no CloudPool references.
const SECRETS_BESIDE_THE_OPERATOR: usize = 20;
/// Unrelated objects in every member (Deployments at 0 replicas keep the testbed light).
const DEPLOYMENTS_PER_MEMBER: usize = 200;
const PODS_PER_MEMBER: usize = 30;
/// Label on every unrelated object, so the test can clean up what it made.
const NOISE_LABEL: &str = "skyloom.io/e2e-noise";
/// The operator relists a member's Pods and Nodes for capacity every 30 s
/// (`members::CAPACITY_REFRESH`); requests received earlier than this after the start are the
/// startup's.
const STARTUP_WINDOW: Duration = Duration::from_secs(25);
const SERVICES: [&str; 2] = ["llm-a", "llm-b"];
/// The member with the lowest GPU price under `register_priced_members`.
const CHEAPEST: &str = "azure-eastus";

/// Creates every object of `docs` in `api`, 16 at a time.
async fn create_all<K>(api: &Api<K>, docs: Vec<serde_json::Value>)
where
    K: kube::Resource + Clone + DeserializeOwned + Serialize + std::fmt::Debug,
{
    futures::stream::iter(docs)
        .map(|doc| async move {
            let obj: K = serde_json::from_value(doc)?;
            api.create(&PostParams::default(), &obj).await?;
            anyhow::Ok(())
        })
        .buffer_unordered(16)
        .try_collect::<Vec<()>>()
        .await
        .unwrap();
}

/// A ~1 KiB Secret `name` that nothing references.
fn noise_secret(name: String) -> serde_json::Value {
    serde_json::json!({
        "metadata": {"name": name, "labels": {NOISE_LABEL: "true"}},
        "stringData": {"blob": "x".repeat(1024)},
    })
}

/// A Deployment of someone else's, at 0 replicas.
fn noise_deployment(i: usize) -> serde_json::Value {
    let labels = serde_json::json!({"app": format!("noise-{i}"), NOISE_LABEL: "true"});
    serde_json::json!({
        "metadata": {"name": format!("noise-{i}"), "labels": labels},
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "app", "image": "registry.example/noise:1"}]},
            },
        },
    })
}

/// A bare Pod of someone else's, with a small CPU request.
fn noise_pod(i: usize) -> serde_json::Value {
    serde_json::json!({
        "metadata": {"name": format!("noise-{i}"), "labels": {NOISE_LABEL: "true"}},
        "spec": {"containers": [{
            "name": "app",
            "image": "registry.example/noise:1",
            "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}},
        }]},
    })
}

/// The noise of one member: a namespace of unrelated Deployments and Pods.
async fn fill_member(member: &Member) -> TestNamespace {
    let client = member.client().await.unwrap();
    let ns = TestNamespace::create(&client, "noise").await.unwrap();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    create_all(
        &deployments,
        (0..DEPLOYMENTS_PER_MEMBER).map(noise_deployment).collect(),
    )
    .await;
    let pods: Api<Pod> = Api::namespaced(client, &ns.name);
    create_all(&pods, (0..PODS_PER_MEMBER).map(noise_pod).collect()).await;
    ns
}

/// The operator's requests in `member`'s audit log, oldest first.
fn requests_by(member: &Member, replica: &str) -> Vec<AuditRequest> {
    let agent = format!("({replica})");
    member
        .audit_requests()
        .unwrap()
        .into_iter()
        .filter(|r| r.from_agent(&agent))
        .collect()
}

fn is_list_or_watch(r: &AuditRequest) -> bool {
    r.verb == "list" || r.verb == "watch"
}

/// One line per request, for assertion messages.
fn show(requests: &[&AuditRequest]) -> String {
    requests
        .iter()
        .map(|r| format!("{} {}", r.verb, r.request_uri))
        .collect::<Vec<_>>()
        .join("\n")
}

/// E5 for one apiserver: before `until` the operator listed exactly the `kinds`, each at
/// least once, and listed one again only after a watch of that kind, started since the
/// previous list, had ended (a relist follows a broken watch, never a timer or a loop). In
/// the testbed one etcd serves every cluster, so resource versions move with all of them,
/// and an apiserver may end a new watch while its cache catches up with the list's version.
fn check_startup_lists(who: &str, requests: &[AuditRequest], until: SystemTime, kinds: &[&str]) {
    let mut listed: BTreeMap<&str, Vec<&AuditRequest>> = BTreeMap::new();
    for r in requests
        .iter()
        .filter(|r| r.verb == "list" && r.received() < until)
    {
        listed.entry(r.resource()).or_default().push(r);
    }
    let listed_kinds: Vec<&str> = listed.keys().copied().collect();
    assert_eq!(listed_kinds, kinds, "{who}: kinds listed at startup");
    for (kind, lists) in &listed {
        for pair in lists.windows(2) {
            let (before, again) = (pair[0], pair[1]);
            let broken_watch = requests.iter().any(|w| {
                w.verb == "watch"
                    && w.resource() == *kind
                    && w.received() >= before.received()
                    && w.ended()
                    && w.completed() <= again.received()
            });
            let all: Vec<&AuditRequest> = requests
                .iter()
                .filter(|r| r.resource() == *kind && is_list_or_watch(r))
                .collect();
            assert!(
                broken_watch,
                "{who}: {kind} listed again with no ended watch since the previous list:\n{}",
                show(&all)
            );
        }
    }
}

/// E2 on the hub: the operator reads Secrets only in its namespace (list and watch) or by the
/// name of a referenced one (get), and never writes one.
fn check_hub_secrets(requests: &[AuditRequest], referenced: &BTreeSet<String>) {
    let secrets: Vec<&AuditRequest> = requests
        .iter()
        .filter(|r| r.resource() == "secrets")
        .collect();
    let stray: Vec<&AuditRequest> = secrets
        .iter()
        .copied()
        .filter(|r| {
            let in_namespace = r.namespace() == OPERATOR_NAMESPACE;
            let allowed = match r.verb.as_str() {
                "list" | "watch" => in_namespace && r.name().is_empty(),
                "get" => in_namespace && referenced.contains(r.name()),
                _ => false,
            };
            !allowed
        })
        .collect();
    assert!(
        stray.is_empty(),
        "Secret requests outside the operator namespace's list/watch and referenced GETs:\n{}",
        show(&stray)
    );
    for verb in ["list", "watch"] {
        assert!(
            secrets.iter().any(|r| r.verb == verb),
            "the operator's Secret {verb} in {OPERATOR_NAMESPACE} is in the hub's audit log:\n{}",
            show(&secrets)
        );
    }
}

/// E3 in one member: every list and watch of Deployments carries Skyloom's label selector, the
/// capacity Pod list leaves Skyloom's Pods out by label, Nodes are only listed, and nothing
/// else audited is listed or watched.
fn check_member_reads(member: &str, requests: &[AuditRequest]) {
    let reads: Vec<&AuditRequest> = requests.iter().filter(|r| is_list_or_watch(r)).collect();
    let stray: Vec<&AuditRequest> = reads
        .iter()
        .copied()
        .filter(|r| match (r.resource(), r.verb.as_str()) {
            ("deployments", _) => r.label_selector() != MANAGED_SELECTOR,
            ("pods", "list") => !r
                .label_selector()
                .contains("app.kubernetes.io/managed-by!=skyloom"),
            // Capacity needs every Node's allocatable: one list per refresh, never cached.
            ("nodes", "list") => false,
            _ => true,
        })
        .collect();
    assert!(
        stray.is_empty(),
        "{member}: lists/watches without Skyloom's selector:\n{}",
        show(&stray)
    );
    for (resource, verb) in [
        ("deployments", "list"),
        ("deployments", "watch"),
        ("pods", "list"),
        ("nodes", "list"),
    ] {
        assert!(
            reads
                .iter()
                .any(|r| r.resource() == resource && r.verb == verb),
            "{member}: the operator's {verb} of {resource} is in the audit log:\n{}",
            show(&reads)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_reads_only_its_own_among_hundreds_of_unrelated_objects() {
    let tb = shared().await;
    register_priced_members(tb).await.unwrap();
    let hub = tb.hub().client().await.unwrap();
    let setup = Instant::now();

    // The hub: unrelated Secrets in namespaces of their own and beside the operator's.
    let mut noise = Vec::new();
    for _ in 0..SECRET_NAMESPACES {
        let ns = TestNamespace::create(&hub, "noise").await.unwrap();
        let api: Api<Secret> = Api::namespaced(hub.clone(), &ns.name);
        let docs = (0..SECRETS_PER_NAMESPACE)
            .map(|i| noise_secret(format!("noise-{i}")))
            .collect();
        create_all(&api, docs).await;
        noise.push(ns);
    }
    let beside: Api<Secret> = Api::namespaced(hub.clone(), OPERATOR_NAMESPACE);
    let beside_docs = (0..SECRETS_BESIDE_THE_OPERATOR)
        .map(|i| noise_secret(format!("{}-{i}", noise[0].name)))
        .collect();
    create_all(&beside, beside_docs).await;
    // Every member: unrelated Deployments and Pods.
    let mut member_noise = Vec::new();
    for m in tb.members() {
        member_noise.push(fill_member(m).await);
    }
    eprintln!("setup of the unrelated objects took {:?}", setup.elapsed());

    // The operator, and two services it really works for.
    let replica = unique_identity();
    let mut args = test_args();
    args.identity = Some(replica.clone());
    let started = SystemTime::now();
    let op = OperatorHandle::start(tb, args);
    let ns = TestNamespace::create(&hub, "reads").await.unwrap();
    let services: Api<AIService> = Api::namespaced(hub.clone(), &ns.name);
    for name in SERVICES {
        services
            .patch(
                name,
                &PatchParams::apply("e2e").force(),
                &Patch::Apply(gpu_service(name, 2)),
            )
            .await
            .unwrap();
    }
    for name in SERVICES {
        let ready = eventually(Duration::from_secs(45), "the services Ready", || async {
            service_ready(&hub, &ns.name, name).await.then_some(())
        })
        .await;
        if let Err(e) = ready {
            let status = services.get(name).await.map(|s| s.status);
            panic!("{name}: {e}; status: {status:#?}");
        }
    }
    // A few probe intervals of steady state, then what the apiservers saw.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let read_at = started.elapsed().unwrap_or_default();
    eprintln!("operator start to logs read: {read_at:?}");

    // E2: Secrets on the hub.
    let referenced: BTreeSet<String> = tb
        .members()
        .iter()
        .map(|m| format!("{}-kubeconfig", m.name()))
        .collect();
    let hub_requests = requests_by(tb.hub(), &replica);
    check_hub_secrets(&hub_requests, &referenced);

    // E3: reads in every member.
    for m in tb.members() {
        check_member_reads(m.name(), &requests_by(m, &replica));
    }

    // The first decisions waited until every member was listed and probed: the cheapest
    // member has room for both services, so no replica was ever started anywhere else (a
    // member that answered first used to get them, and the moves that followed could stall).
    for m in tb.members().iter().filter(|m| m.name() != CHEAPEST) {
        let requests = requests_by(m, &replica);
        let writes: Vec<&AuditRequest> = requests
            .iter()
            .filter(|r| r.resource() == "deployments")
            .filter(|r| matches!(r.verb.as_str(), "create" | "patch" | "update"))
            .collect();
        assert!(
            writes.is_empty(),
            "{}: the operator wrote Deployments there, not only in {CHEAPEST}:\n{}",
            m.name(),
            show(&writes)
        );
    }

    // E5: at startup, one LIST per kind the operator reads: on the hub AIServices, CloudPools
    // and the namespace's Secrets (the three reflectors); in each member Deployments (the
    // watch's initial list) and Pods and Nodes (the first capacity discovery). Another LIST
    // of a kind only after a watch of it ended (a relist follows a broken watch), and
    // capacity is rediscovered after 30 s, past this window.
    let until = started + STARTUP_WINDOW;
    check_startup_lists(
        "hub",
        &hub_requests,
        until,
        &["aiservices", "cloudpools", "secrets"],
    );
    for m in tb.members() {
        check_startup_lists(
            m.name(),
            &requests_by(m, &replica),
            until,
            &["deployments", "nodes", "pods"],
        );
    }

    // Clean up: the services (their member Deployments go first), then the noise.
    services
        .delete(SERVICES[1], &DeleteParams::default())
        .await
        .unwrap();
    eventually(
        Duration::from_secs(30),
        "llm-b's Deployments to go",
        || async {
            member_replicas(tb, &ns.name, SERVICES[1])
                .await
                .is_empty()
                .then_some(())
        },
    )
    .await
    .unwrap();
    remove_service(tb, &hub, ns, SERVICES[0]).await.unwrap();
    op.stop();
    beside
        .delete_collection(
            &DeleteParams::default(),
            &ListParams::default().labels(&format!("{NOISE_LABEL}=true")),
        )
        .await
        .unwrap();
    for ns in noise.into_iter().chain(member_noise) {
        ns.delete().await.unwrap();
    }
}
