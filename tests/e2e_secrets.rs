//! CASE-20, credentials never leak: member kubeconfigs carrying canary strings (a token the
//! member rejects, a wrong CA, a document that is not YAML, key data that is not base64, a
//! forbidden exec plugin) go through the operator at the most verbose log level, and no canary
//! shows up in its logs, in Events on the hub or the members, in CloudPool or AIService
//! objects, or on /metrics.

#![allow(clippy::expect_used, clippy::unwrap_used)] // test code: a failed expectation is a failed test

use std::time::Duration;

use base64::Engine as _;
use k8s_openapi::api::core::v1::{Event, Secret};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use skyloom_api::{AIService, CloudPool};
use skyloom_e2e::logs::capture_logs;
use skyloom_e2e::operator::{
    OPERATOR_NAMESPACE, OperatorHandle, register_priced_members, test_args,
};
use skyloom_e2e::{
    TestNamespace, eventually, gpu_service, has_condition, remove_service, service_ready, shared,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The canaries: a token, a private key, and a marker only the kubeconfig bodies contain.
struct Canaries {
    token: String,
    key: String,
    body: String,
}

impl Canaries {
    fn new() -> Self {
        let n = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        Self {
            token: format!("CANARY-TOKEN-{n:x}"),
            key: format!("CANARY-KEY-{n:x}"),
            body: format!("CANARY-BODY-{n:x}"),
        }
    }

    /// Every string that must never appear: the canaries and their base64 forms.
    fn needles(&self) -> Vec<String> {
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let key_pem = self.key_pem();
        vec![
            self.token.clone(),
            self.key.clone(),
            self.body.clone(),
            b64(&self.token),
            b64(&key_pem),
        ]
    }

    fn key_pem(&self) -> String {
        format!(
            "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
            self.key
        )
    }
}

/// The kubeconfigs of the canary pools, by pool name.
fn kubeconfigs(
    c: &Canaries,
    server: &str,
    ca: &str,
    other_ca: &str,
) -> Vec<(&'static str, String)> {
    let doc = |ca: &str, user: &str| {
        format!(
            "# {body}\napiVersion: v1\nkind: Config\nclusters:\n- name: m\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\ncontexts:\n- name: m\n  context: {{cluster: m, user: u}}\ncurrent-context: m\nusers:\n- name: u\n  user:\n{user}",
            body = c.body,
        )
    };
    let token = format!("    token: {}\n", c.token);
    let key_b64 = base64::engine::general_purpose::STANDARD.encode(c.key_pem());
    vec![
        ("canary-unauthorized", doc(ca, &token)),
        ("canary-wrong-ca", doc(other_ca, &token)),
        (
            "canary-not-yaml",
            format!("{}  [unclosed: {{ {}\n", doc(ca, &token), c.token),
        ),
        (
            "canary-bad-base64",
            doc(
                ca,
                &format!(
                    "    client-certificate-data: {key_b64}\n    client-key-data: '{}!!not base64'\n",
                    c.key
                ),
            ),
        ),
        (
            "canary-bad-key",
            doc(
                ca,
                &format!(
                    "    client-certificate-data: {key_b64}\n    client-key-data: {key_b64}\n"
                ),
            ),
        ),
        (
            "canary-exec",
            doc(
                ca,
                &format!(
                    "    exec:\n      apiVersion: client.authentication.k8s.io/v1\n      command: /bin/echo\n      args: [{}]\n",
                    c.token
                ),
            ),
        ),
    ]
}

fn ca_data(kubeconfig: &str) -> String {
    let kc = kube::config::Kubeconfig::from_yaml(kubeconfig).unwrap();
    kc.clusters[0]
        .cluster
        .as_ref()
        .and_then(|c| c.certificate_authority_data.clone())
        .unwrap()
}

async fn get_metrics(addr: std::net::SocketAddr) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

fn free_addr() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_credentials_never_reach_logs_events_status_or_metrics() {
    let logs = capture_logs("trace").unwrap();
    let tb = shared().await;
    register_priced_members(tb).await.unwrap();
    let hub = tb.hub().client().await.unwrap();
    let ns = TestNamespace::create(&hub, "canary").await.unwrap();
    let c = Canaries::new();

    let aws = tb.member("aws-us-east-1").unwrap();
    let gcp = tb.member("gcp-europe-west4").unwrap();
    let ssa = PatchParams::apply("skyloom-e2e").force();
    let secrets: Api<Secret> = Api::namespaced(hub.clone(), OPERATOR_NAMESPACE);
    let pools: Api<CloudPool> = Api::all(hub.clone());
    let canary_pools = kubeconfigs(
        &c,
        &aws.server_url(),
        &ca_data(aws.kubeconfig_yaml()),
        &ca_data(gcp.kubeconfig_yaml()),
    );
    for (name, kubeconfig) in &canary_pools {
        let secret = serde_json::json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": name, "namespace": OPERATOR_NAMESPACE},
            "stringData": {"kubeconfig": kubeconfig},
        });
        secrets
            .patch(name, &ssa, &Patch::Apply(&secret))
            .await
            .unwrap();
        let pool = serde_json::json!({
            "apiVersion": "skyloom.io/v1alpha1", "kind": "CloudPool",
            "metadata": {"name": name},
            "spec": {"provider": "onprem", "region": "local",
                     "kubeconfigSecretRef": {"name": name},
                     "prices": {"cpu": "0.01", "memory": "0.001", "nvidia.com/gpu": "0.50"}},
        });
        pools.patch(name, &ssa, &Patch::Apply(&pool)).await.unwrap();
    }

    // The canary really is in what the operator reads.
    let handed = secrets.get("canary-unauthorized").await.unwrap();
    let handed = &handed.data.unwrap()["kubeconfig"].0;
    assert!(String::from_utf8_lossy(handed).contains(&c.token));

    let metrics_addr = free_addr();
    let mut args = test_args();
    args.log = "trace".into();
    args.http_addr = metrics_addr;
    let op = OperatorHandle::start(tb, args);
    let services: Api<AIService> = Api::namespaced(hub.clone(), &ns.name);
    services
        .patch(
            "llm",
            &PatchParams::apply("e2e").force(),
            &Patch::Apply(gpu_service("llm", 1)),
        )
        .await
        .unwrap();

    // Every canary pool is reported not Ready (by reference, not content); the service lands
    // on a real member.
    for (name, _) in &canary_pools {
        let what = format!("{name} to be reported not Ready");
        eventually(Duration::from_secs(30), &what, || async {
            let p = pools.get(name).await.ok()?;
            has_condition(&p.status?.conditions, "Ready", "False").then_some(())
        })
        .await
        .unwrap();
    }
    eventually(
        Duration::from_secs(60),
        "the service to be Ready",
        || async { service_ready(&hub, &ns.name, "llm").await.then_some(()) },
    )
    .await
    .unwrap();
    // A few more probe rounds (1 s each) so every failure path logs again.
    tokio::time::sleep(Duration::from_secs(4)).await;
    for (name, _) in &canary_pools {
        let p = pools.get(name).await.unwrap();
        let ready = p.status.unwrap_or_default().conditions;
        let ready = ready.iter().find(|c| c.type_ == "Ready").unwrap();
        eprintln!("{name}: {} {}", ready.reason, ready.message);
    }

    let mut places: Vec<(String, String)> = vec![
        ("operator logs".into(), logs.text()),
        ("/metrics".into(), get_metrics(metrics_addr).await),
        (
            "CloudPools".into(),
            serde_json::to_string(&pools.list(&ListParams::default()).await.unwrap().items)
                .unwrap(),
        ),
        (
            "AIServices".into(),
            serde_json::to_string(
                &Api::<AIService>::all(hub.clone())
                    .list(&ListParams::default())
                    .await
                    .unwrap()
                    .items,
            )
            .unwrap(),
        ),
    ];
    for m in tb.all() {
        let events = Api::<Event>::all(m.direct_client().await.unwrap())
            .list(&ListParams::default())
            .await
            .unwrap()
            .items;
        places.push((
            format!("Events in {}", m.name()),
            serde_json::to_string(&events).unwrap(),
        ));
    }
    eprintln!("captured {} bytes of operator logs", places[0].1.len());
    assert!(
        places[0].1.contains("canary-unauthorized") && places[0].1.contains("TRACE"),
        "the capture holds the operator's trace output"
    );
    assert!(
        places[1].1.contains("skyloom"),
        "metrics answered: {}",
        places[1].1
    );
    for (place, text) in &places {
        for needle in c.needles() {
            if let Some(at) = text.find(&needle) {
                let from = text[..at]
                    .char_indices()
                    .rev()
                    .nth(300)
                    .map_or(0, |(i, _)| i);
                let context: String = text[from..].chars().take(700).collect();
                panic!("{place} contain a canary ({needle}): ...{context}...");
            }
        }
    }

    for (name, _) in &canary_pools {
        let _ = pools.delete(name, &DeleteParams::default()).await;
        let _ = secrets.delete(name, &DeleteParams::default()).await;
    }
    remove_service(tb, &hub, ns, "llm").await.unwrap();
    op.stop();
}
