//! The operator end to end on the testbed: placements realised as Deployments where the
//! solver said, scale, delete, unowned objects, refused kubeconfigs. Tests in this binary share
//! one testbed and one operator and run one at a time (they compete for the same GPUs).

#![allow(clippy::expect_used, clippy::unwrap_used)] // test code: a failed expectation is a failed test

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use skyloom_api::{AIService, CloudPool};
use skyloom_e2e::operator::{
    OPERATOR_NAMESPACE, OperatorHandle, register_priced_members, test_args,
};
use skyloom_e2e::{TestNamespace, eventually, run_kubectl, shared};
use skyloom_testbed::Testbed;
use tokio::sync::{Mutex, MutexGuard, OnceCell};

static ENV: OnceCell<OperatorHandle> = OnceCell::const_new();
static SERIAL: Mutex<()> = Mutex::const_new(());

/// The shared testbed with members registered (GPU prices: aws 3.00, gcp 2.50, azure 2.00)
/// and the operator running; and the lock that makes tests in this file run one at a time.
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

fn service(name: &str, replicas: i32, gpus: u32) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "skyloom.io/v1alpha1",
        "kind": "AIService",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "template": {"spec": {"containers": [{
                "name": "server",
                "image": "registry.example/llm:1.0",
                "resources": {"requests": {"cpu": "1", "memory": "4Gi", "nvidia.com/gpu": gpus.to_string()},
                              "limits": {"nvidia.com/gpu": gpus.to_string()}},
            }]}},
        },
    })
}

async fn apply_service(hub: &Client, ns: &str, doc: &serde_json::Value) {
    let api: Api<AIService> = Api::namespaced(hub.clone(), ns);
    let name = doc["metadata"]["name"].as_str().unwrap();
    api.patch(name, &PatchParams::apply("e2e").force(), &Patch::Apply(doc))
        .await
        .unwrap();
}

/// spec.replicas of the Deployment `ns/name` in every member (absent members left out).
async fn member_replicas(tb: &Testbed, ns: &str, name: &str) -> BTreeMap<String, i32> {
    let mut out = BTreeMap::new();
    for m in tb.members() {
        let api: Api<Deployment> = Api::namespaced(m.direct_client().await.unwrap(), ns);
        if let Some(d) = api.get_opt(name).await.unwrap() {
            out.insert(m.name().to_owned(), d.spec.replicas.unwrap_or(0));
        }
    }
    out
}

fn condition(ais: &AIService, type_: &str) -> Option<(String, String)> {
    ais.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone()))
}

async fn wait_ready(hub: &Client, ns: &str, name: &str) -> AIService {
    let api: Api<AIService> = Api::namespaced(hub.clone(), ns);
    let waited = eventually(
        Duration::from_secs(60),
        &format!("{ns}/{name} to be Ready"),
        || async {
            let ais = api.get(name).await.ok()?;
            let ready = condition(&ais, "Ready")?.0 == "True";
            let current = ais.status.as_ref()?.observed_generation == ais.metadata.generation;
            (ready && current).then_some(ais)
        },
    )
    .await;
    match waited {
        Ok(ais) => ais,
        Err(e) => {
            let last = api
                .get(name)
                .await
                .ok()
                .and_then(|a| serde_json::to_string_pretty(&a.status).ok());
            panic!("{e}; last status: {}", last.unwrap_or_default());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gpu_service_lands_on_the_cheapest_member_and_becomes_ready() {
    let (tb, _serial) = env().await;
    let hub = tb.hub().client().await.unwrap();
    let ns = TestNamespace::create(&hub, "op-place").await.unwrap();
    apply_service(&hub, &ns.name, &service("llm", 2, 1)).await;
    let ais = wait_ready(&hub, &ns.name, "llm").await;
    assert_eq!(
        member_replicas(tb, &ns.name, "llm").await,
        BTreeMap::from([("azure-eastus".to_owned(), 2)])
    );
    let st = ais.status.unwrap();
    assert_eq!(st.available_replicas, Some(2));
    assert_eq!(st.placement_summary.as_deref(), Some("azure-eastus=2"));
    assert_eq!(condition_of(&st, "Scheduled"), "True");
    let cost: f64 = st.cost_per_hour.unwrap().parse().unwrap();
    assert!(
        cost > 4.0 && cost < 4.2,
        "2 GPUs at 2.00 plus cpu and memory: {cost}"
    );
    // The member Deployment carries the ownership marks and selects only its own pods.
    let d = Api::<Deployment>::namespaced(
        tb.member("azure-eastus")
            .unwrap()
            .direct_client()
            .await
            .unwrap(),
        &ns.name,
    )
    .get("llm")
    .await
    .unwrap();
    let labels = d.metadata.labels.unwrap();
    assert_eq!(labels["app.kubernetes.io/managed-by"], "skyloom");
    let annotations = d.metadata.annotations.unwrap();
    assert_eq!(
        annotations["skyloom.io/service"],
        format!("{}/llm", ns.name)
    );
    assert_eq!(annotations["skyloom.io/control-plane"], "e2e-control-plane");
    let selector = d.spec.selector.match_labels.unwrap();
    assert_eq!(selector.len(), 1);
    assert!(selector.contains_key("skyloom.io/service-id"));
    delete_and_wait_gone(tb, &hub, &ns.name, "llm").await;
    ns.delete().await.unwrap();
}

fn condition_of(st: &skyloom_api::AIServiceStatus, t: &str) -> String {
    st.conditions
        .iter()
        .find(|c| c.type_ == t)
        .map(|c| c.status.clone())
        .unwrap_or_default()
}

async fn delete_and_wait_gone(tb: &Testbed, hub: &Client, ns: &str, name: &str) {
    let api: Api<AIService> = Api::namespaced(hub.clone(), ns);
    api.delete(name, &DeleteParams::default()).await.unwrap();
    eventually(
        Duration::from_secs(30),
        "the AIService and its member Deployments to be gone",
        || async {
            let gone = api.get_opt(name).await.ok()?.is_none();
            (gone && member_replicas(tb, ns, name).await.is_empty()).then_some(())
        },
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_too_big_for_one_cloud_is_split_and_scales_with_kubectl() {
    let (tb, _serial) = env().await;
    let hub = tb.hub().client().await.unwrap();
    let ns = TestNamespace::create(&hub, "op-split").await.unwrap();
    // 4 GPUs per replica: each member fits 2 (two 4-GPU nodes).
    apply_service(&hub, &ns.name, &service("big", 3, 4)).await;
    wait_ready(&hub, &ns.name, "big").await;
    assert_eq!(
        member_replicas(tb, &ns.name, "big").await,
        BTreeMap::from([
            ("azure-eastus".to_owned(), 2),
            ("gcp-europe-west4".to_owned(), 1)
        ])
    );
    let (ok, _, err) = run_kubectl(
        tb.hub(),
        &["scale", "aiservice/big", "-n", &ns.name, "--replicas", "5"],
    );
    assert!(ok, "{err}");
    wait_ready(&hub, &ns.name, "big").await;
    assert_eq!(
        member_replicas(tb, &ns.name, "big").await,
        BTreeMap::from([
            ("aws-us-east-1".to_owned(), 1),
            ("azure-eastus".to_owned(), 2),
            ("gcp-europe-west4".to_owned(), 2)
        ])
    );
    let (ok, _, err) = run_kubectl(
        tb.hub(),
        &["scale", "aiservice/big", "-n", &ns.name, "--replicas", "1"],
    );
    assert!(ok, "{err}");
    wait_ready(&hub, &ns.name, "big").await;
    let settled = eventually(
        Duration::from_secs(30),
        "the surplus Deployments to go",
        || async {
            let r = member_replicas(tb, &ns.name, "big").await;
            (r == BTreeMap::from([("azure-eastus".to_owned(), 1)])).then_some(())
        },
    )
    .await;
    if let Err(e) = settled {
        panic!(
            "{e}: members have {:?}",
            member_replicas(tb, &ns.name, "big").await
        );
    }
    delete_and_wait_gone(tb, &hub, &ns.name, "big").await;
    ns.delete().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_than_fits_anywhere_is_reported_unplaced_not_scheduled() {
    let (tb, _serial) = env().await;
    let hub = tb.hub().client().await.unwrap();
    let ns = TestNamespace::create(&hub, "op-unplaced").await.unwrap();
    // 5 GPUs per replica: no node anywhere has 5.
    apply_service(&hub, &ns.name, &service("huge", 1, 5)).await;
    let api: Api<AIService> = Api::namespaced(hub.clone(), &ns.name);
    let ais = eventually(Duration::from_secs(30), "Stalled=True", || async {
        let ais = api.get("huge").await.ok()?;
        (condition(&ais, "Stalled")?.0 == "True").then_some(ais)
    })
    .await
    .unwrap();
    assert_eq!(
        condition(&ais, "Scheduled").unwrap(),
        ("False".into(), "NoFeasiblePlacement".into())
    );
    assert_eq!(ais.status.unwrap().unplaced_replicas, Some(1));
    assert!(
        member_replicas(tb, &ns.name, "huge").await.is_empty(),
        "nothing created anywhere"
    );
    delete_and_wait_gone(tb, &hub, &ns.name, "huge").await;
    ns.delete().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unowned_deployment_of_the_same_name_is_never_touched() {
    let (tb, _serial) = env().await;
    let hub = tb.hub().client().await.unwrap();
    let ns = TestNamespace::create(&hub, "op-unowned").await.unwrap();
    let azure = tb
        .member("azure-eastus")
        .unwrap()
        .direct_client()
        .await
        .unwrap();
    let member_ns = TestNamespace::create(&azure, "unused").await.unwrap();
    // Same namespace name in the member, created by its admins, with a foreign Deployment.
    let ns_obj: k8s_openapi::api::core::v1::Namespace =
        serde_json::from_value(serde_json::json!({"metadata": {"name": ns.name}})).unwrap();
    Api::<k8s_openapi::api::core::v1::Namespace>::all(azure.clone())
        .create(&PostParams::default(), &ns_obj)
        .await
        .unwrap();
    let foreign: Deployment = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "web", "labels": {"team": "platform"}},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "w", "image": "nginx"}]}}},
    }))
    .unwrap();
    let deploys: Api<Deployment> = Api::namespaced(azure.clone(), &ns.name);
    let created = deploys
        .create(&PostParams::default(), &foreign)
        .await
        .unwrap();
    apply_service(&hub, &ns.name, &service("web", 1, 1)).await;
    let api: Api<AIService> = Api::namespaced(hub.clone(), &ns.name);
    let ais = eventually(
        Duration::from_secs(30),
        "Stalled=True for the conflict",
        || async {
            let ais = api.get("web").await.ok()?;
            (condition(&ais, "Stalled")? == ("True".into(), "ConflictUnownedObject".into()))
                .then_some(ais)
        },
    )
    .await
    .unwrap();
    let msg = ais
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.type_ == "Stalled")
        .unwrap()
        .message;
    assert!(msg.contains("azure-eastus"), "{msg}");
    let now = deploys.get("web").await.unwrap();
    assert_eq!(now.metadata.uid, created.metadata.uid);
    assert_eq!(
        now.metadata.generation, created.metadata.generation,
        "not modified"
    );
    assert_eq!(now.metadata.labels, created.metadata.labels);
    api.delete("web", &DeleteParams::default()).await.unwrap();
    eventually(Duration::from_secs(30), "the AIService to go", || async {
        api.get_opt("web").await.ok()?.is_none().then_some(())
    })
    .await
    .unwrap();
    assert!(
        deploys.get_opt("web").await.unwrap().is_some(),
        "deleting the AIService left the foreign Deployment alone"
    );
    member_ns.delete().await.unwrap();
    ns.delete().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exec_kubeconfig_is_refused_and_its_command_never_runs() {
    let (tb, _serial) = env().await;
    let hub = tb.hub().client().await.unwrap();
    let marker = std::env::temp_dir().join(format!("skyloom-exec-canary-{}", std::process::id()));
    let _ = std::fs::remove_file(&marker);
    let kubeconfig = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {{server: \"https://127.0.0.1:9\"}}\nusers:\n- name: u\n  user:\n    exec:\n      apiVersion: client.authentication.k8s.io/v1\n      command: sh\n      args: [\"-c\", \"touch {}\"]\ncontexts: [{{name: c, context: {{cluster: c, user: u}}}}]\ncurrent-context: c\n",
        marker.display()
    );
    let secrets: Api<Secret> = Api::namespaced(hub.clone(), OPERATOR_NAMESPACE);
    let ssa = PatchParams::apply("e2e").force();
    secrets
        .patch("evil-kubeconfig", &ssa, &Patch::Apply(serde_json::json!({
            "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "evil-kubeconfig"}, "stringData": {"kubeconfig": kubeconfig}
        })))
        .await
        .unwrap();
    let pools: Api<CloudPool> = Api::all(hub.clone());
    pools
        .patch("pool-evil", &ssa, &Patch::Apply(serde_json::json!({
            "apiVersion": "skyloom.io/v1alpha1", "kind": "CloudPool", "metadata": {"name": "pool-evil"},
            "spec": {"provider": "onprem", "region": "local", "kubeconfigSecretRef": {"name": "evil-kubeconfig"}, "capacity": {"cpu": "1"}}
        })))
        .await
        .unwrap();
    let pool = eventually(
        Duration::from_secs(30),
        "pool-evil to be refused",
        || async {
            let p = pools.get("pool-evil").await.ok()?;
            let c = p
                .status
                .as_ref()?
                .conditions
                .iter()
                .find(|c| c.type_ == "Ready")?
                .clone();
            (c.status == "False" && c.reason == "InsecureKubeconfig").then_some(c)
        },
    )
    .await
    .unwrap();
    assert!(
        pool.message.contains("users[0].user.exec"),
        "{}",
        pool.message
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!marker.exists(), "the exec plugin ran");
    // A pool the operator cannot use takes no replicas.
    let ns = TestNamespace::create(&hub, "op-evil").await.unwrap();
    let mut doc = service("probe", 1, 0);
    doc["spec"]["placement"] = serde_json::json!({"clouds": ["pool-evil", "azure-eastus"]});
    apply_service(&hub, &ns.name, &doc).await;
    wait_ready(&hub, &ns.name, "probe").await;
    assert_eq!(
        member_replicas(tb, &ns.name, "probe").await,
        BTreeMap::from([("azure-eastus".to_owned(), 1)])
    );
    delete_and_wait_gone(tb, &hub, &ns.name, "probe").await;
    pools
        .delete("pool-evil", &DeleteParams::default())
        .await
        .unwrap();
    secrets
        .delete("evil-kubeconfig", &DeleteParams::default())
        .await
        .unwrap();
    ns.delete().await.unwrap();
    let _ = ListParams::default();
}

/// A kubeconfig for `member` that authenticates with `token` (inline CA, no files).
fn token_kubeconfig(member: &skyloom_testbed::Member, token: &str) -> String {
    let admin: serde_json::Value = serde_json::from_str(member.kubeconfig_yaml()).unwrap();
    let ca = admin["clusters"][0]["cluster"]["certificate-authority-data"]
        .as_str()
        .unwrap();
    serde_json::json!({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "m", "cluster": {"server": member.server_url(), "certificate-authority-data": ca}}],
        "users": [{"name": "u", "user": {"token": token}}],
        "contexts": [{"name": "m", "context": {"cluster": "m", "user": "u"}}],
        "current-context": "m",
    })
    .to_string()
}

async fn set_kubeconfig(hub: &Client, pool: &str, kubeconfig: &str) {
    let secrets: Api<Secret> = Api::namespaced(hub.clone(), OPERATOR_NAMESPACE);
    let name = format!("{pool}-kubeconfig");
    secrets
        .patch(&name, &PatchParams::apply("skyloom-e2e").force(), &Patch::Apply(serde_json::json!({
            "apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "stringData": {"kubeconfig": kubeconfig}
        })))
        .await
        .unwrap();
}

async fn pool_ready(hub: &Client, pool: &str) -> Option<(String, String)> {
    let p = Api::<CloudPool>::all(hub.clone()).get(pool).await.ok()?;
    p.status?
        .conditions
        .into_iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| (c.status, c.reason))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_token_is_unauthorized_not_empty_and_a_rotated_one_is_picked_up() {
    let (tb, _serial) = env().await;
    let hub = tb.hub().client().await.unwrap();
    let azure = tb.member("azure-eastus").unwrap();
    let ns = TestNamespace::create(&hub, "op-rotate").await.unwrap();
    apply_service(&hub, &ns.name, &service("rot", 2, 1)).await;
    wait_ready(&hub, &ns.name, "rot").await;
    let deploy_uid = Api::<Deployment>::namespaced(azure.direct_client().await.unwrap(), &ns.name)
        .get("rot")
        .await
        .unwrap()
        .metadata
        .uid;

    // A token the member does not accept: Unauthorized, and nothing there is deleted.
    set_kubeconfig(
        &hub,
        "azure-eastus",
        &token_kubeconfig(azure, "not-a-valid-token"),
    )
    .await;
    eventually(
        Duration::from_secs(30),
        "azure to be Unauthorized",
        || async {
            (pool_ready(&hub, "azure-eastus").await? == ("False".into(), "Unauthorized".into()))
                .then_some(())
        },
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let still = Api::<Deployment>::namespaced(azure.direct_client().await.unwrap(), &ns.name)
        .get("rot")
        .await
        .unwrap();
    assert_eq!(
        still.metadata.uid, deploy_uid,
        "the Deployment was recreated or deleted"
    );
    assert_eq!(still.spec.replicas, Some(2));

    // A valid ServiceAccount token, written into the same Secret key: picked up, no restart.
    let (ok, _, err) = skyloom_e2e::run_kubectl(
        azure,
        &[
            "create",
            "serviceaccount",
            "skyloom-rotated",
            "-n",
            "default",
        ],
    );
    assert!(ok || err.contains("AlreadyExists"), "{err}");
    let (ok, _, err) = skyloom_e2e::run_kubectl(
        azure,
        &[
            "create",
            "clusterrolebinding",
            "skyloom-rotated",
            "--clusterrole=cluster-admin",
            "--serviceaccount=default:skyloom-rotated",
        ],
    );
    assert!(ok || err.contains("AlreadyExists"), "{err}");
    let (ok, token, err) = skyloom_e2e::run_kubectl(
        azure,
        &[
            "create",
            "token",
            "skyloom-rotated",
            "-n",
            "default",
            "--duration=1h",
        ],
    );
    assert!(ok, "{err}");
    set_kubeconfig(&hub, "azure-eastus", &token_kubeconfig(azure, token.trim())).await;
    eventually(
        Duration::from_secs(30),
        "azure to be Ready with the rotated token",
        || async { (pool_ready(&hub, "azure-eastus").await?.0 == "True").then_some(()) },
    )
    .await
    .unwrap();
    // The rotated token is a JWT valid for an hour: its expiry is shown, with a warning.
    let pool = Api::<CloudPool>::all(hub.clone())
        .get("azure-eastus")
        .await
        .unwrap();
    let status = pool.status.unwrap();
    let expiry = status
        .credentials_expiry
        .expect("status.credentialsExpiry")
        .0;
    let left = expiry.as_second() - k8s_openapi::jiff::Timestamp::now().as_second();
    assert!((3000..=3700).contains(&left), "expires in {left} s");
    let expiring = status
        .conditions
        .iter()
        .find(|c| c.type_ == "CredentialsExpiring")
        .expect("a CredentialsExpiring condition");
    assert_eq!(
        (expiring.status.as_str(), expiring.reason.as_str()),
        ("True", "TokenExpiring")
    );
    wait_ready(&hub, &ns.name, "rot").await;
    assert_eq!(
        member_replicas(tb, &ns.name, "rot").await,
        BTreeMap::from([("azure-eastus".to_owned(), 2)])
    );

    set_kubeconfig(&hub, "azure-eastus", azure.kubeconfig_yaml()).await;
    delete_and_wait_gone(tb, &hub, &ns.name, "rot").await;
    ns.delete().await.unwrap();
}

/// The managed-fields paths (`f:`-keys, outermost first) of `manager`'s entries.
fn owned_by(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    manager: &str,
) -> Vec<(Option<String>, Vec<String>)> {
    meta.managed_fields
        .iter()
        .flatten()
        .filter(|m| m.manager.as_deref() == Some(manager))
        .map(|m| {
            let top = m
                .fields_v1
                .as_ref()
                .and_then(|f| f.0.as_object())
                .map(|o| o.keys().cloned().collect())
                .unwrap_or_default();
            (m.subresource.clone(), top)
        })
        .collect()
}

/// CASE-11: what a GitOps tool applied stays as it was applied: after the operator has
/// placed the service, `kubectl diff` against the applied manifest is empty, the generation
/// has not moved, and Skyloom owns only `status` (through the subresource) and its finalizer,
/// on AIServices and CloudPools alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gitops_applied_service_shows_no_drift_after_the_operator_ran() {
    let (tb, _serial) = env().await;
    let hub = tb.hub().client().await.unwrap();
    let ns = TestNamespace::create(&hub, "op-drift").await.unwrap();
    let mut doc = service("synced", 1, 1);
    doc["metadata"]["namespace"] = serde_json::json!(ns.name);
    let file = std::env::temp_dir().join(format!("skyloom-drift-{}.json", ns.name));
    std::fs::write(&file, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
    let path = file.to_str().unwrap();
    // Argo CD's default is a client-side apply; with ServerSideApply=true it is a
    // server-side apply under its own manager. Both, one after the other.
    let (ok, _, err) = run_kubectl(tb.hub(), &["apply", "-f", path]);
    assert!(ok, "{err}");
    let (ok, _, err) = run_kubectl(
        tb.hub(),
        &[
            "apply",
            "--server-side",
            "--field-manager=argocd-controller",
            "-f",
            path,
        ],
    );
    assert!(ok, "{err}");
    let applied_generation = Api::<AIService>::namespaced(hub.clone(), &ns.name)
        .get("synced")
        .await
        .unwrap()
        .metadata
        .generation;
    let ais = wait_ready(&hub, &ns.name, "synced").await;
    tokio::time::sleep(Duration::from_secs(3)).await;

    // E1: no difference in either apply mode.
    for args in [
        vec!["diff", "-f", path],
        vec![
            "diff",
            "--server-side",
            "--field-manager=argocd-controller",
            "-f",
            path,
        ],
    ] {
        let out = skyloom_e2e::kubectl(tb.hub()).args(&args).output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{args:?} shows drift:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // E2: the operator never wrote the spec.
    let now = Api::<AIService>::namespaced(hub.clone(), &ns.name)
        .get("synced")
        .await
        .unwrap();
    // CASE-12 E5: settled, the object is not written at all (no heartbeat in status).
    tokio::time::sleep(Duration::from_secs(5)).await;
    let later = Api::<AIService>::namespaced(hub.clone(), &ns.name)
        .get("synced")
        .await
        .unwrap();
    assert_eq!(
        later.metadata.resource_version, now.metadata.resource_version,
        "a settled AIService was written again"
    );
    assert_eq!(now.metadata.generation, applied_generation);
    assert_eq!(ais.metadata.generation, applied_generation);
    // E3: Skyloom's field manager owns status (via the subresource) and metadata only, and
    // within metadata only the finalizers.
    let check = |meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta, what: &str| {
        let owned = owned_by(meta, "skyloom");
        assert!(
            owned.iter().any(|(s, _)| s.as_deref() == Some("status"))
                && owned.iter().any(|(s, _)| s.is_none()),
            "{what}: skyloom should own its status and its finalizer: {owned:?}"
        );
        for (subresource, top) in owned {
            match subresource.as_deref() {
                Some("status") => assert_eq!(top, vec!["f:status".to_owned()], "{what}"),
                None => assert_eq!(top, vec!["f:metadata".to_owned()], "{what}"),
                other => panic!("{what}: skyloom owns fields through {other:?}"),
            }
        }
        let metadata_fields: Vec<String> = meta
            .managed_fields
            .iter()
            .flatten()
            .filter(|m| m.manager.as_deref() == Some("skyloom") && m.subresource.is_none())
            .filter_map(|m| {
                m.fields_v1
                    .as_ref()?
                    .0
                    .get("f:metadata")?
                    .as_object()
                    .cloned()
            })
            .flat_map(|o| o.keys().cloned().collect::<Vec<_>>())
            .collect();
        assert!(
            metadata_fields.iter().all(|k| k == "f:finalizers"),
            "{what}: skyloom owns {metadata_fields:?} in metadata"
        );
    };
    check(&now.metadata, "AIService");
    let pool = Api::<CloudPool>::all(hub.clone())
        .get("azure-eastus")
        .await
        .unwrap();
    check(&pool.metadata, "CloudPool");

    delete_and_wait_gone(tb, &hub, &ns.name, "synced").await;
    let _ = std::fs::remove_file(&file);
    ns.delete().await.unwrap();
}
