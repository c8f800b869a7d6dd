//! Installing Skyloom the ways users do, against the testbed's real API servers: the Helm
//! chart (lint, schema, server-side validation of what it renders, install, uninstall), the
//! kustomize manifests, and `skyloom join` / `unjoin` for registering a member cluster.

#![allow(clippy::expect_used, clippy::unwrap_used)] // test code: a failed expectation is a failed test

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::{Value, json};
use skyloom_e2e::{TestNamespace, eventually, kubectl, shared, workspace_root};
use skyloom_testbed::Member;
use tokio::sync::OnceCell;

// ---------------------------------------------------------------------------------------------
// helpers

fn chart_dir() -> PathBuf {
    workspace_root().join("charts/skyloom")
}

fn scratch_dir() -> PathBuf {
    let dir = workspace_root().join("target/e2e-install");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A unique suffix for names.
fn suffix() -> String {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{:x}{n}", t % 0xfffff)
}

/// The testbed's pinned helm, with its state kept out of the user's home.
fn helm() -> Command {
    let mut cmd = Command::new(skyloom_testbed::binaries::bin_dir().join("helm"));
    let home = scratch_dir().join("helm-home");
    cmd.env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_DATA_HOME", home.join("data"))
        .env_remove("KUBECONFIG");
    cmd
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn run(mut cmd: Command, what: &str) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("{what}: cannot start: {e}"))
}

fn run_ok(cmd: Command, what: &str) -> String {
    let out = run(cmd, what);
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// Runs `cmd` with `input` on stdin.
fn run_with_stdin(mut cmd: Command, input: &str, what: &str) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: cannot start: {e}"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn helm_template(release: &str, namespace: &str, sets: &[&str]) -> String {
    let mut cmd = helm();
    cmd.args(["template", release])
        .arg(chart_dir())
        .args(["--namespace", namespace]);
    for s in sets {
        cmd.args(["--set", s]);
    }
    run_ok(cmd, &format!("helm template {sets:?}"))
}

/// `kubectl apply --dry-run=server -o json` of `manifests` on `member`: the API server
/// validates every object (schemas, admission, Pod Security) and returns what it would store.
fn server_dry_run(member: &Member, namespace: &str, manifests: &str) -> (Vec<Value>, String) {
    let mut cmd = kubectl(member);
    cmd.args([
        "apply",
        "--dry-run=server",
        "--server-side",
        "--force-conflicts",
        "--field-manager=skyloom-e2e",
        "-n",
        namespace,
        "-o",
        "json",
        "-f",
        "-",
    ]);
    let out = run_with_stdin(cmd, manifests, "kubectl apply --dry-run=server");
    let stderr = text(&out.stderr);
    assert!(
        out.status.success(),
        "server dry-run rejected the manifests:\n{stderr}"
    );
    (items(&text(&out.stdout)), stderr)
}

/// The objects of kubectl's JSON output (one object or a List).
fn items(json_text: &str) -> Vec<Value> {
    let v: Value = serde_json::from_str(json_text).unwrap();
    match v.get("kind").and_then(Value::as_str) {
        Some("List") => v["items"].as_array().cloned().unwrap_or_default(),
        _ => vec![v],
    }
}

fn find<'a>(objs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objs.iter().filter(|o| o["kind"] == kind).collect()
}

fn one<'a>(objs: &'a [Value], kind: &str) -> &'a Value {
    let found = find(objs, kind);
    assert_eq!(found.len(), 1, "exactly one {kind} expected");
    found[0]
}

fn env_value<'a>(deployment: &'a Value, name: &str) -> Option<&'a str> {
    deployment["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)?
        .get("value")?
        .as_str()
}

/// A namespace on `member` labelled to enforce the restricted Pod Security Standard, so that
/// the API server refuses what the operator's pods may not do.
async fn restricted_namespace(member: &Member, prefix: &str) -> TestNamespace {
    let ns = TestNamespace::create(&member.client().await.unwrap(), prefix)
        .await
        .unwrap();
    let mut cmd = kubectl(member);
    cmd.args([
        "label",
        "namespace",
        &ns.name,
        "pod-security.kubernetes.io/enforce=restricted",
        "pod-security.kubernetes.io/warn=restricted",
    ]);
    run_ok(cmd, "kubectl label namespace");
    ns
}

/// A minimal ServiceMonitor CRD (the Prometheus Operator's is huge; only the kind matters
/// for a dry-run), installed once on the hub.
async fn ensure_servicemonitor_crd(hub: &Member) {
    static DONE: OnceCell<()> = OnceCell::const_new();
    DONE.get_or_init(|| async {
        let crd = json!({
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {"name": "servicemonitors.monitoring.coreos.com"},
            "spec": {
                "group": "monitoring.coreos.com",
                "scope": "Namespaced",
                "names": {"kind": "ServiceMonitor", "listKind": "ServiceMonitorList",
                          "plural": "servicemonitors", "singular": "servicemonitor"},
                "versions": [{"name": "v1", "served": true, "storage": true,
                    "schema": {"openAPIV3Schema": {"type": "object",
                        "x-kubernetes-preserve-unknown-fields": true}}}],
            },
        });
        let mut cmd = kubectl(hub);
        cmd.args([
            "apply",
            "--server-side",
            "--field-manager=skyloom-e2e",
            "-f",
            "-",
        ]);
        let out = run_with_stdin(cmd, &crd.to_string(), "apply ServiceMonitor CRD");
        assert!(out.status.success(), "{}", text(&out.stderr));
        let mut cmd = kubectl(hub);
        cmd.args([
            "wait",
            "--for=condition=Established",
            "crd/servicemonitors.monitoring.coreos.com",
            "--timeout=60s",
        ]);
        run_ok(cmd, "wait for the ServiceMonitor CRD");
    })
    .await;
}

/// What the shared `helm install` produced (see [`installed_release`]).
struct Release {
    name: String,
    namespace: String,
    install_time: Duration,
}

/// Installs the chart once into a fresh restricted namespace of the hub. Both the install
/// test and the join test need the CRDs, and the chart must be the first to create them (Helm
/// refuses to adopt objects another tool created), so this runs before either goes on.
async fn installed_release() -> &'static Release {
    static RELEASE: OnceCell<Release> = OnceCell::const_new();
    RELEASE
        .get_or_init(|| async {
            let tb = shared().await;
            let hub = tb.hub();
            let ns = restricted_namespace(hub, "e2e-helm").await;
            let name = format!("sky-{}", suffix());
            let started = Instant::now();
            let mut cmd = helm();
            cmd.args(["install", &name])
                .arg(chart_dir())
                .args(["--namespace", &ns.name, "--kubeconfig"])
                .arg(hub.kubeconfig_path())
                .args(["--timeout", "60s"]);
            run_ok(cmd, "helm install");
            let install_time = started.elapsed();
            eprintln!("helm install took {install_time:?}");
            Release {
                name,
                namespace: ns.name.clone(),
                install_time,
            }
        })
        .await
}

// ---------------------------------------------------------------------------------------------
// the chart, offline

#[test]
fn chart_crds_are_a_byte_copy_of_deploy_crds() {
    let root = workspace_root();
    let list = |dir: &Path| -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".yaml"))
            .collect();
        names.sort();
        names
    };
    let source = root.join("deploy/crds");
    let copy = root.join("charts/skyloom/files/crds");
    let resync = "run scripts/sync-chart-crds to copy deploy/crds/ into the chart";
    assert_eq!(list(&source), list(&copy), "CRD files differ: {resync}");
    for name in list(&source) {
        let a = std::fs::read(source.join(&name)).unwrap();
        let b = std::fs::read(copy.join(&name)).unwrap();
        assert!(
            a == b,
            "charts/skyloom/files/crds/{name} differs from deploy/crds/{name}: {resync}"
        );
    }
    // The kustomization lists every CRD file too.
    let kustomization = std::fs::read_to_string(root.join("deploy/kustomization.yaml")).unwrap();
    for name in list(&source) {
        assert!(
            kustomization.contains(&format!("crds/{name}")),
            "deploy/kustomization.yaml does not list crds/{name}"
        );
    }
}

#[test]
fn helm_lint_passes_also_strict() {
    for strict in [false, true] {
        let mut cmd = helm();
        cmd.arg("lint").arg(chart_dir());
        if strict {
            cmd.arg("--strict");
        }
        let out = run_ok(cmd, "helm lint");
        assert!(out.contains("0 chart(s) failed"), "{out}");
        let mut cmd = helm();
        cmd.arg("lint").arg(chart_dir()).args([
            "--set",
            "replicaCount=3,serviceMonitor.enabled=true,dashboard.enabled=true,crds.enabled=false,podDisruptionBudget.enabled=true",
        ]);
        if strict {
            cmd.arg("--strict");
        }
        run_ok(cmd, "helm lint with non-default values");
    }
}

#[test]
fn values_schema_rejects_unknown_and_mistyped_values() {
    for (set, expect) in [
        ("replicaCont=2", "replicaCont"),
        ("image.tga=1.0", "tga"),
        ("crds.keeep=false", "keeep"),
        ("serviceMonitor.intervall=10s", "intervall"),
        ("replicaCount=two", "replicaCount"),
        ("logging.format=xml", "format"),
        ("leaderElection.enabled=maybe", "enabled"),
    ] {
        let mut cmd = helm();
        cmd.args(["template", "x"])
            .arg(chart_dir())
            .args(["--set", set]);
        let out = run(cmd, "helm template");
        assert!(!out.status.success(), "--set {set} was accepted");
        let err = text(&out.stderr);
        assert!(err.contains(expect), "--set {set}: {err}");
    }
}

#[test]
fn leader_election_follows_replicas_unless_forced() {
    let leader = |sets: &[&str]| -> (String, String) {
        let rendered = helm_template("x", "skyloom-system", sets);
        let line = |key: &str| {
            let pos = rendered
                .find(key)
                .unwrap_or_else(|| panic!("{key} in {rendered}"));
            rendered[pos..]
                .lines()
                .take(2)
                .collect::<Vec<_>>()
                .join(" ")
        };
        (line("SKYLOOM_LEADER_ELECT"), line("strategy:"))
    };
    let (env, strategy) = leader(&[]);
    assert!(
        env.contains("\"false\"") && strategy.contains("Recreate"),
        "{env} / {strategy}"
    );
    let (env, strategy) = leader(&["replicaCount=2"]);
    assert!(
        env.contains("\"true\"") && strategy.contains("RollingUpdate"),
        "{env} / {strategy}"
    );
    let (env, _) = leader(&["leaderElection.enabled=true"]);
    assert!(env.contains("\"true\""), "{env}");
    let (env, strategy) = leader(&["replicaCount=2", "leaderElection.enabled=false"]);
    assert!(
        env.contains("\"false\"") && strategy.contains("Recreate"),
        "{env} / {strategy}"
    );
}

#[test]
fn dashboard_is_valid_json_with_the_operator_metrics() {
    let text = std::fs::read_to_string(chart_dir().join("files/dashboards/skyloom.json")).unwrap();
    let dashboard: Value = serde_json::from_str(&text).unwrap();
    let exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .map(|t| t["expr"].as_str().unwrap_or_default().to_owned())
        .collect();
    for metric in [
        "skyloom_reconciles_total",
        "skyloom_reconcile_errors_total",
        "skyloom_reconcile_duration_seconds_bucket",
        "skyloom_solve_duration_seconds_bucket",
        "skyloom_placed_replicas",
        "skyloom_cost_per_hour_usd",
        "skyloom_member_ready",
    ] {
        assert!(
            exprs.iter().any(|e| e.contains(metric)),
            "no panel uses {metric}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// the chart and the manifests, on the hub

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rendered_chart_passes_server_validation_with_default_and_custom_values() {
    let tb = shared().await;
    let hub = tb.hub();
    installed_release().await; // the chart owns the CRDs first
    ensure_servicemonitor_crd(hub).await;
    let ns = restricted_namespace(hub, "e2e-template").await;

    // Defaults.
    let rendered = helm_template("sky", &ns.name, &[]);
    let (objs, stderr) = server_dry_run(hub, &ns.name, &rendered);
    assert!(
        !stderr.contains("PodSecurity"),
        "restricted Pod Security violated:\n{stderr}"
    );
    for kind in [
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "Service",
        "Deployment",
    ] {
        one(&objs, kind);
    }
    assert!(find(&objs, "ServiceMonitor").is_empty() && find(&objs, "ConfigMap").is_empty());
    let crds = find(&objs, "CustomResourceDefinition");
    assert_eq!(crds.len(), 2);
    for crd in &crds {
        assert_eq!(
            crd["metadata"]["annotations"]["helm.sh/resource-policy"],
            "keep"
        );
        assert!(
            crd["metadata"]
                .get("finalizers")
                .is_none_or(|f| f.as_array().is_some_and(Vec::is_empty))
        );
    }
    // The rendered CRDs are the committed ones, unchanged apart from labels and annotations.
    let source =
        std::fs::read_to_string(workspace_root().join("deploy/crds/skyloom.io_cloudpools.yaml"))
            .unwrap();
    let (committed, _) = server_dry_run(hub, &ns.name, &source);
    let from_chart = crds
        .iter()
        .find(|c| c["metadata"]["name"] == "cloudpools.skyloom.io")
        .unwrap();
    assert_eq!(from_chart["spec"], committed[0]["spec"]);

    let deployment = one(&objs, "Deployment");
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["securityContext"]["runAsUser"], 65532);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    let sc = &container["securityContext"];
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(container["resources"]["limits"]["memory"], "512Mi");
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(
        container["env"][0]["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.namespace"
    );
    assert_eq!(env_value(deployment, "SKYLOOM_LEADER_ELECT"), Some("false"));
    assert_eq!(
        env_value(deployment, "SKYLOOM_ALLOW_EXEC_CREDENTIALS"),
        Some("false")
    );
    for o in &objs {
        assert!(
            o["metadata"].get("finalizers").is_none(),
            "{} has finalizers",
            o["kind"]
        );
    }

    // Negative control: the namespace really reports Pod Security violations.
    let weakened = helm_template(
        "sky",
        &ns.name,
        &[
            "crds.enabled=false",
            "containerSecurityContext.allowPrivilegeEscalation=true",
        ],
    );
    let (_, stderr) = server_dry_run(hub, &ns.name, &weakened);
    assert!(
        stderr.contains("PodSecurity"),
        "no Pod Security warning for a weakened pod: {stderr}"
    );

    // Non-default values: several replicas, monitoring, dashboard, CRDs managed elsewhere.
    let rendered = helm_template(
        "sky",
        &ns.name,
        &[
            "replicaCount=2",
            "serviceMonitor.enabled=true",
            "serviceMonitor.labels.release=prometheus",
            "dashboard.enabled=true",
            "crds.enabled=false",
            "podDisruptionBudget.enabled=true",
            "topologySpreadConstraints[0].maxSkew=1",
            "topologySpreadConstraints[0].topologyKey=kubernetes.io/hostname",
            "topologySpreadConstraints[0].whenUnsatisfiable=ScheduleAnyway",
            "logging.format=text",
            "config.controlPlaneId=hub-eu",
        ],
    );
    let (objs, stderr) = server_dry_run(hub, &ns.name, &rendered);
    assert!(
        !stderr.contains("PodSecurity"),
        "restricted Pod Security violated:\n{stderr}"
    );
    assert!(find(&objs, "CustomResourceDefinition").is_empty());
    one(&objs, "ServiceMonitor");
    one(&objs, "PodDisruptionBudget");
    let dashboard = one(&objs, "ConfigMap");
    assert_eq!(dashboard["metadata"]["labels"]["grafana_dashboard"], "1");
    let json_text = dashboard["data"]["skyloom.json"].as_str().unwrap();
    let parsed: Value = serde_json::from_str(json_text).unwrap();
    assert!(parsed["panels"].as_array().unwrap().len() >= 10);
    let deployment = one(&objs, "Deployment");
    assert_eq!(deployment["spec"]["replicas"], 2);
    assert_eq!(env_value(deployment, "SKYLOOM_LEADER_ELECT"), Some("true"));
    assert_eq!(
        env_value(deployment, "SKYLOOM_CONTROL_PLANE_ID"),
        Some("hub-eu")
    );
    assert_eq!(deployment["spec"]["strategy"]["type"], "RollingUpdate");
    let spread = &deployment["spec"]["template"]["spec"]["topologySpreadConstraints"][0];
    assert_eq!(
        spread["labelSelector"]["matchLabels"]["app.kubernetes.io/instance"],
        "sky"
    );

    ns.delete().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_install_creates_the_operator_and_uninstall_keeps_crds_and_member_workloads() {
    let tb = shared().await;
    let hub = tb.hub();
    let release = installed_release().await;
    let client = hub.client().await.unwrap();
    let ns = &release.namespace;
    let full = format!("{}-skyloom", release.name);
    assert!(release.install_time < Duration::from_secs(60));

    // What the install created.
    let deployment = Api::<Deployment>::namespaced(client.clone(), ns)
        .get(&full)
        .await
        .unwrap();
    let pod = deployment.spec.template.spec.unwrap();
    assert_eq!(pod.service_account_name.as_deref(), Some(full.as_str()));
    Api::<ServiceAccount>::namespaced(client.clone(), ns)
        .get(&full)
        .await
        .unwrap();
    Api::<Role>::namespaced(client.clone(), ns)
        .get(&full)
        .await
        .unwrap();
    Api::<RoleBinding>::namespaced(client.clone(), ns)
        .get(&full)
        .await
        .unwrap();
    Api::<ClusterRole>::all(client.clone())
        .get(&full)
        .await
        .unwrap();
    Api::<ClusterRoleBinding>::all(client.clone())
        .get(&full)
        .await
        .unwrap();
    let crds = Api::<CustomResourceDefinition>::all(client.clone());
    for name in ["aiservices.skyloom.io", "cloudpools.skyloom.io"] {
        let crd = crds.get(name).await.unwrap();
        let ann = crd.metadata.annotations.unwrap_or_default();
        assert_eq!(
            ann.get("helm.sh/resource-policy").map(String::as_str),
            Some("keep")
        );
    }

    // Least privilege, checked by the API server's authorizer.
    let sa = format!("system:serviceaccount:{ns}:{full}");
    let can = |args: &[&str]| -> bool {
        let mut cmd = kubectl(hub);
        cmd.args(["auth", "can-i", "--as", &sa]).args(args);
        let out = cmd.output().unwrap();
        text(&out.stdout).trim() == "yes"
    };
    assert!(can(&["list", "secrets", "-n", ns]));
    assert!(can(&["watch", "secrets", "-n", ns]));
    assert!(!can(&["list", "secrets", "-n", "default"]));
    assert!(!can(&["get", "secrets", "-n", "kube-system"]));
    assert!(!can(&["list", "secrets", "--all-namespaces"]));
    assert!(!can(&["create", "secrets", "-n", ns]));
    assert!(can(&["update", "leases.coordination.k8s.io", "-n", ns]));
    assert!(!can(&[
        "update",
        "leases.coordination.k8s.io",
        "-n",
        "kube-system"
    ]));
    assert!(can(&["watch", "aiservices.skyloom.io", "--all-namespaces"]));
    assert!(can(&[
        "patch",
        "cloudpools.skyloom.io",
        "--subresource=status"
    ]));
    assert!(can(&[
        "update",
        "aiservices.skyloom.io",
        "--subresource=finalizers",
        "-n",
        "default"
    ]));
    assert!(!can(&["delete", "aiservices.skyloom.io", "-n", "default"]));
    assert!(!can(&["create", "cloudpools.skyloom.io"]));
    assert!(can(&["create", "events", "-n", "default"]));
    assert!(can(&["get", "namespaces"]));
    assert!(!can(&["list", "namespaces"]));
    assert!(!can(&["create", "deployments.apps", "-n", ns]));
    assert!(!can(&["list", "pods", "-n", ns]));

    // User data that must survive an uninstall: an AIService on the hub and a Deployment that
    // the operator would have created in a member (the chart documents that uninstall leaves
    // member workloads running; delete the AIServices first to remove them).
    let tenant = TestNamespace::create(&client, "e2e-tenant").await.unwrap();
    let aiservices = Api::<DynamicObject>::namespaced_with(
        client.clone(),
        &tenant.name,
        &ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("skyloom.io", "v1alpha1", "AIService"),
            "aiservices",
        ),
    );
    let svc: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "skyloom.io/v1alpha1",
        "kind": "AIService",
        "metadata": {"name": "llm"},
        "spec": {"replicas": 1, "template": {"spec": {"containers": [{
            "name": "server", "image": "registry.example/llm:1",
            "resources": {"requests": {"cpu": "1", "memory": "1Gi"}}}]}}},
    }))
    .unwrap();
    aiservices
        .create(&PostParams::default(), &svc)
        .await
        .unwrap();
    let member = &tb.members()[1];
    let member_client = member.client().await.unwrap();
    let member_ns = TestNamespace::create(&member_client, "e2e-uninstall")
        .await
        .unwrap();
    let workload: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "llm", "labels": {"app.kubernetes.io/managed-by": "skyloom",
                                               "skyloom.io/service": format!("{}.llm", tenant.name)}},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "llm"}},
                 "template": {"metadata": {"labels": {"app": "llm"}},
                              "spec": {"containers": [{"name": "server", "image": "registry.example/llm:1"}]}}},
    }))
    .unwrap();
    let member_deployments = Api::<Deployment>::namespaced(member_client.clone(), &member_ns.name);
    member_deployments
        .create(&PostParams::default(), &workload)
        .await
        .unwrap();

    // Uninstall: completes well within 60 s, even though objects in the namespace remain.
    let started = Instant::now();
    let mut cmd = helm();
    cmd.args([
        "uninstall",
        &release.name,
        "--namespace",
        ns,
        "--wait",
        "--timeout",
        "60s",
        "--kubeconfig",
    ])
    .arg(hub.kubeconfig_path());
    run_ok(cmd, "helm uninstall");
    let took = started.elapsed();
    eprintln!("helm uninstall took {took:?}");
    assert!(
        took < Duration::from_secs(60),
        "helm uninstall took {took:?}"
    );

    // The operator is gone...
    assert!(
        Api::<Deployment>::namespaced(client.clone(), ns)
            .get_opt(&full)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        Api::<ClusterRole>::all(client.clone())
            .get_opt(&full)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        Api::<ClusterRoleBinding>::all(client.clone())
            .get_opt(&full)
            .await
            .unwrap()
            .is_none()
    );
    // ...the CRDs and the users' objects are not, and nothing is left Terminating.
    for name in ["aiservices.skyloom.io", "cloudpools.skyloom.io"] {
        let crd = crds.get(name).await.unwrap();
        assert!(
            crd.metadata.deletion_timestamp.is_none(),
            "{name} is terminating"
        );
    }
    let kept = aiservices.get("llm").await.unwrap();
    assert!(kept.metadata.deletion_timestamp.is_none());
    // Member workloads are left running, as documented.
    let still = member_deployments.get("llm").await.unwrap();
    assert!(still.metadata.deletion_timestamp.is_none());

    member_ns.delete().await.unwrap();
    tenant.delete().await.unwrap();
    Api::<Namespace>::all(client.clone())
        .delete(ns, &Default::default())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kustomize_manifests_pass_server_dry_run_and_match_the_chart_defaults() {
    let tb = shared().await;
    let hub = tb.hub();
    installed_release().await; // the chart owns the CRDs first
    let client = hub.client().await.unwrap();
    // A server-side dry run cannot create the namespace it then validates objects in, so the
    // namespace must exist (a real `kubectl apply -k deploy/` creates it first).
    let namespaces = Api::<Namespace>::all(client.clone());
    if namespaces
        .get_opt("skyloom-system")
        .await
        .unwrap()
        .is_none()
    {
        let ns: Namespace =
            serde_json::from_value(json!({"metadata": {"name": "skyloom-system"}})).unwrap();
        namespaces
            .create(&PostParams::default(), &ns)
            .await
            .unwrap();
    }
    let mut cmd = kubectl(hub);
    cmd.arg("apply")
        .arg("-k")
        .arg(workspace_root().join("deploy"))
        .args(["--dry-run=server", "-o", "json"]);
    let out = run(cmd, "kubectl apply -k deploy/ --dry-run=server");
    assert!(
        out.status.success(),
        "kubectl apply -k deploy/ --dry-run=server:\n{}",
        text(&out.stderr)
    );
    let kustomized = items(&text(&out.stdout));

    let rendered = helm_template("skyloom", "skyloom-system", &[]);
    let (charted, _) = server_dry_run(hub, "skyloom-system", &rendered);

    let names = |objs: &[Value]| -> Vec<(String, String)> {
        let mut v: Vec<_> = objs
            .iter()
            .filter(|o| o["kind"] != "Namespace")
            .map(|o| {
                (
                    o["kind"].as_str().unwrap().to_owned(),
                    o["metadata"]["name"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        v.sort();
        v
    };
    assert_eq!(names(&kustomized), names(&charted));
    assert!(kustomized.iter().any(|o| o["kind"] == "Namespace"));

    for kind in ["ClusterRole", "Role"] {
        assert_eq!(
            one(&kustomized, kind)["rules"],
            one(&charted, kind)["rules"],
            "{kind} rules differ"
        );
    }
    for kind in ["ClusterRoleBinding", "RoleBinding"] {
        assert_eq!(
            one(&kustomized, kind)["subjects"],
            one(&charted, kind)["subjects"],
            "{kind} subjects differ"
        );
    }
    let (k, c) = (one(&kustomized, "Deployment"), one(&charted, "Deployment"));
    assert_eq!(k["spec"]["strategy"], c["spec"]["strategy"]);
    let (kp, cp) = (
        &k["spec"]["template"]["spec"],
        &c["spec"]["template"]["spec"],
    );
    for field in [
        "securityContext",
        "nodeSelector",
        "automountServiceAccountToken",
        "serviceAccountName",
    ] {
        assert_eq!(kp[field], cp[field], "pod {field} differs");
    }
    let (kc, cc) = (&kp["containers"][0], &cp["containers"][0]);
    for field in [
        "args",
        "env",
        "ports",
        "livenessProbe",
        "readinessProbe",
        "resources",
        "securityContext",
        "image",
    ] {
        assert_eq!(kc[field], cc[field], "container {field} differs");
    }
    let crd_specs = |objs: &[Value]| -> Vec<Value> {
        find(objs, "CustomResourceDefinition")
            .iter()
            .map(|o| o["spec"].clone())
            .collect()
    };
    assert_eq!(crd_specs(&kustomized), crd_specs(&charted));
}

// ---------------------------------------------------------------------------------------------
// skyloom join / unjoin

/// The `skyloom` binary, built once by this test binary (a no-op when it is up to date).
fn skyloom_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "--quiet", "-p", "skyloom", "--bin", "skyloom"])
            .current_dir(workspace_root());
        run_ok(cmd, "cargo build -p skyloom");
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace_root().join("target"));
        let bin = target.join("debug/skyloom");
        assert!(bin.exists(), "{} missing after cargo build", bin.display());
        bin
    })
    .clone()
}

fn skyloom(args: &[&str]) -> Output {
    let mut cmd = Command::new(skyloom_bin());
    cmd.args(args)
        .env_remove("KUBECONFIG")
        .env_remove("SKYLOOM_NAMESPACE");
    run(
        cmd,
        &format!("skyloom {}", args.first().copied().unwrap_or_default()),
    )
}

/// A copy of `member`'s admin kubeconfig whose CA is a relative file path (as many kubeconfigs
/// have it), to check that join inlines it.
fn kubeconfig_with_ca_file(member: &Member, dir: &Path) -> PathBuf {
    let mut kc: Value = serde_json::from_str(member.kubeconfig_yaml()).unwrap();
    let cluster = &mut kc["clusters"][0]["cluster"];
    let data = cluster["certificate-authority-data"].take();
    let pem: ByteString = serde_json::from_value(data).unwrap();
    std::fs::write(dir.join("member-ca.crt"), &pem.0).unwrap();
    let obj = cluster.as_object_mut().unwrap();
    obj.remove("certificate-authority-data");
    obj.insert("certificate-authority".into(), json!("member-ca.crt"));
    let path = dir.join("member.kubeconfig");
    std::fs::write(&path, kc.to_string()).unwrap();
    path
}

fn as_strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn can_i(kubeconfig: &Path, args: &[&str]) -> bool {
    let mut cmd = Command::new(skyloom_testbed::binaries::bin_dir().join("kubectl"));
    cmd.arg("--kubeconfig")
        .arg(kubeconfig)
        .args(["auth", "can-i"])
        .args(args);
    let out = cmd.output().unwrap();
    let answer = text(&out.stdout);
    assert!(
        answer.trim() == "yes" || answer.trim() == "no",
        "kubectl auth can-i {args:?}: {answer} {}",
        text(&out.stderr)
    );
    answer.trim() == "yes"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_registers_a_member_with_least_privilege_and_unjoin_removes_it() {
    let tb = shared().await;
    installed_release().await; // CRDs on the hub
    let hub = tb.hub();
    let member = &tb.members()[0];
    let hub_client = hub.client().await.unwrap();
    let member_client = member.client().await.unwrap();
    let operator_ns = TestNamespace::create(&hub_client, "e2e-join")
        .await
        .unwrap();
    let pool = format!("e2e-{}", suffix());
    let dir = scratch_dir().join(&pool);
    std::fs::create_dir_all(&dir).unwrap();
    let member_kc = kubeconfig_with_ca_file(member, &dir);
    let member_kc_s = member_kc.to_string_lossy().into_owned();
    let hub_kc = hub.kubeconfig_path().to_string_lossy().into_owned();
    let identity = format!("skyloom-{pool}");
    let secret_name = format!("{pool}-kubeconfig");

    let join_args = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = [
            "join",
            "--member-kubeconfig",
            &member_kc_s,
            "--hub-kubeconfig",
            &hub_kc,
            "--name",
            &pool,
            "--namespace",
            &operator_ns.name,
            "--provider",
            "aws",
            "--region",
            "us-east-1",
            "--zone",
            "us-east-1a",
            "--capacity",
            "nvidia.com/gpu=4",
            "--capacity",
            "cpu=64",
            "--price",
            "nvidia.com/gpu=2.10",
            "--price",
            "cpu=0.04",
            "--performance-score",
            "120",
            "--label",
            "team=e2e",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        v.extend(extra.iter().map(|s| (*s).to_owned()));
        v
    };

    let pools = Api::<DynamicObject>::all_with(
        hub_client.clone(),
        &ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("skyloom.io", "v1alpha1", "CloudPool"),
            "cloudpools",
        ),
    );
    let hub_secrets = Api::<Secret>::namespaced(hub_client.clone(), &operator_ns.name);
    let member_sas = Api::<ServiceAccount>::namespaced(member_client.clone(), "skyloom-member");
    let member_roles = Api::<ClusterRole>::all(member_client.clone());

    // --dry-run prints every object and touches nothing.
    let args = join_args(&["--dry-run"]);
    let out = skyloom(&as_strs(&args));
    assert!(
        out.status.success(),
        "join --dry-run: {}",
        text(&out.stderr)
    );
    let printed = text(&out.stdout);
    for kind in [
        "kind: Namespace",
        "kind: ServiceAccount",
        "kind: ClusterRole",
        "kind: ClusterRoleBinding",
        "kind: Secret",
        "kind: CloudPool",
    ] {
        assert!(
            printed.contains(kind),
            "dry run does not print {kind}:\n{printed}"
        );
    }
    assert!(pools.get_opt(&pool).await.unwrap().is_none());
    assert!(hub_secrets.get_opt(&secret_name).await.unwrap().is_none());
    assert!(member_sas.get_opt(&identity).await.unwrap().is_none());
    assert!(member_roles.get_opt(&identity).await.unwrap().is_none());

    // A hub mistake is found before anything is created in the member, and named.
    let mut bad = join_args(&[]);
    let i = bad.iter().position(|a| a == "--namespace").unwrap();
    bad[i + 1] = "no-such-namespace".into();
    let out = skyloom(&as_strs(&bad));
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("hub") && err.contains("no-such-namespace"),
        "{err}"
    );
    assert!(member_sas.get_opt(&identity).await.unwrap().is_none());

    // The real thing.
    let started = Instant::now();
    let out = skyloom(&as_strs(&join_args(&[])));
    eprintln!("skyloom join took {:?}", started.elapsed());
    assert!(
        out.status.success(),
        "join: {}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let printed = format!("{}{}", text(&out.stdout), text(&out.stderr));

    let secret = hub_secrets.get(&secret_name).await.unwrap();
    let labels = secret.metadata.labels.clone().unwrap_or_default();
    assert_eq!(
        labels.get("skyloom.io/kubeconfig").map(String::as_str),
        Some("true")
    );
    let data = secret.data.clone().unwrap_or_default();
    let kubeconfig_text = String::from_utf8(data.get("kubeconfig").unwrap().0.clone()).unwrap();
    let kc = kube::config::Kubeconfig::from_yaml(&kubeconfig_text).unwrap();
    let cluster = kc.clusters[0].cluster.as_ref().unwrap();
    assert!(
        cluster
            .certificate_authority_data
            .as_ref()
            .is_some_and(|d| !d.is_empty())
    );
    assert!(cluster.certificate_authority.is_none() && cluster.proxy_url.is_none());
    assert_ne!(cluster.insecure_skip_tls_verify, Some(true));
    let user = kc.auth_infos[0].auth_info.as_ref().unwrap();
    assert!(user.token.is_some());
    assert!(user.exec.is_none() && user.auth_provider.is_none() && user.token_file.is_none());
    assert!(user.client_certificate.is_none() && user.client_key.is_none());
    for forbidden in [
        "exec:",
        "auth-provider",
        "tokenFile",
        "certificate-authority:",
        "client-certificate:",
        "client-key:",
    ] {
        assert!(
            !kubeconfig_text.contains(forbidden),
            "{forbidden} in the generated kubeconfig"
        );
    }
    // The operator accepts it under its strict default policy.
    skyloom::kubeconfig_guard::check(
        &kubeconfig_text,
        skyloom::kubeconfig_guard::GuardPolicy::default(),
    )
    .unwrap();
    // The token is never printed.
    let token_line = kubeconfig_text
        .lines()
        .find(|l| l.trim_start().starts_with("token:"))
        .unwrap();
    let token = token_line
        .trim_start()
        .trim_start_matches("token:")
        .trim()
        .trim_matches('"');
    assert!(token.len() > 20);
    assert!(!printed.contains(token), "join printed the token");

    let cp = pools.get(&pool).await.unwrap();
    let spec = &cp.data["spec"];
    assert_eq!(spec["provider"], "aws");
    assert_eq!(spec["region"], "us-east-1");
    assert_eq!(spec["zone"], "us-east-1a");
    assert_eq!(spec["kubeconfigSecretRef"]["name"], secret_name.as_str());
    assert_eq!(spec["capacity"]["nvidia.com/gpu"], "4");
    assert_eq!(spec["prices"]["nvidia.com/gpu"], "2.10");
    assert_eq!(spec["performanceScore"], 120);
    assert_eq!(
        cp.metadata
            .labels
            .as_ref()
            .unwrap()
            .get("team")
            .map(String::as_str),
        Some("e2e")
    );
    let managers: Vec<_> = cp
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .filter_map(|m| m.manager.clone())
        .collect();
    assert_eq!(managers, ["skyloom-join"]);

    // The generated credentials reach the member and can do exactly what the operator needs.
    let generated = dir.join("generated.kubeconfig");
    std::fs::write(&generated, &kubeconfig_text).unwrap();
    assert!(can_i(&generated, &["list", "nodes"]));
    assert!(can_i(&generated, &["watch", "pods", "--all-namespaces"]));
    assert!(can_i(&generated, &["create", "namespaces"]));
    assert!(can_i(
        &generated,
        &["delete", "deployments.apps", "-n", "team-a"]
    ));
    assert!(can_i(
        &generated,
        &[
            "get",
            "deployments.apps",
            "--subresource=status",
            "-n",
            "team-a"
        ]
    ));
    assert!(can_i(&generated, &["create", "events", "-n", "team-a"]));
    assert!(!can_i(&generated, &["list", "secrets"]));
    assert!(!can_i(&generated, &["get", "secrets", "-n", "kube-system"]));
    assert!(!can_i(&generated, &["create", "pods", "-n", "team-a"]));
    assert!(!can_i(&generated, &["get", "pods", "-n", "team-a"]));
    assert!(!can_i(&generated, &["update", "nodes"]));
    assert!(!can_i(
        &generated,
        &["create", "clusterroles.rbac.authorization.k8s.io"]
    ));
    assert!(!can_i(&generated, &["update", "namespaces"]));
    let mut cmd = Command::new(skyloom_testbed::binaries::bin_dir().join("kubectl"));
    cmd.arg("--kubeconfig")
        .arg(&generated)
        .args(["get", "nodes", "-o", "name"]);
    let nodes = run_ok(cmd, "kubectl get nodes with the generated kubeconfig");
    assert!(nodes.lines().count() >= 1, "{nodes}");

    // Idempotent: joining again changes nothing that matters.
    let out = skyloom(&as_strs(&join_args(&[])));
    assert!(out.status.success(), "second join: {}", text(&out.stderr));
    let again = hub_secrets.get(&secret_name).await.unwrap();
    assert_eq!(again.data, secret.data);

    // unjoin removes the CloudPool, the Secret and the member-side objects.
    let out = skyloom(&[
        "unjoin",
        "--name",
        &pool,
        "--namespace",
        &operator_ns.name,
        "--hub-kubeconfig",
        &hub_kc,
        "--member-kubeconfig",
        &member_kc_s,
    ]);
    assert!(out.status.success(), "unjoin: {}", text(&out.stderr));
    assert!(pools.get_opt(&pool).await.unwrap().is_none());
    assert!(hub_secrets.get_opt(&secret_name).await.unwrap().is_none());
    assert!(member_sas.get_opt(&identity).await.unwrap().is_none());
    assert!(member_roles.get_opt(&identity).await.unwrap().is_none());
    assert!(
        Api::<ClusterRoleBinding>::all(member_client.clone())
            .get_opt(&identity)
            .await
            .unwrap()
            .is_none()
    );
    let member_ns = Api::<Namespace>::all(member_client.clone());
    eventually(
        Duration::from_secs(60),
        "skyloom-member to go away",
        || async {
            member_ns
                .get_opt("skyloom-member")
                .await
                .ok()
                .flatten()
                .is_none()
                .then_some(())
        },
    )
    .await
    .unwrap();
    // The old token no longer works once its Secret is gone.
    eventually(
        Duration::from_secs(30),
        "the old token to be rejected",
        || async { (!can_i_quiet(&generated)).then_some(()) },
    )
    .await
    .unwrap();

    operator_ns.delete().await.unwrap();
    std::fs::remove_dir_all(&dir).ok();
}

/// Whether the kubeconfig still authenticates (401 makes `can-i` fail).
fn can_i_quiet(kubeconfig: &Path) -> bool {
    let mut cmd = Command::new(skyloom_testbed::binaries::bin_dir().join("kubectl"));
    cmd.arg("--kubeconfig")
        .arg(kubeconfig)
        .args(["auth", "can-i", "list", "nodes"]);
    cmd.output()
        .map(|o| text(&o.stdout).trim() == "yes")
        .unwrap_or(false)
}
