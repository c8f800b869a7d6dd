//! The API against a real apiserver (the testbed's hub): the CRDs install, every sample applies
//! client-side and server-side without being changed by the server, every invalid fixture is
//! rejected with a message naming the field, and kubectl's explain, scale and get work.

#![allow(clippy::expect_used, clippy::unwrap_used)] // test code: a failed expectation is a failed test

use std::io::Write;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use skyloom_e2e::{
    TestNamespace, eventually, install_crds, kubectl, run_kubectl, shared, workspace_root,
};
use skyloom_testbed::Member;

const POOLS: [&str; 3] = ["aws-us-east-1", "gcp-europe-west4", "azure-eastus"];

/// Runs kubectl against `member` with `stdin` as input; returns (success, stdout, stderr).
fn kubectl_stdin(member: &Member, args: &[&str], stdin: &str) -> (bool, String, String) {
    let mut child = kubectl(member)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl starts");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn yaml_files(dir: &str) -> Vec<PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(workspace_root().join(dir))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

/// The samples (without the namespace manifest), moved into `ns`, with the cluster-scoped
/// CloudPools renamed `<pool>-<suffix>` so that tests do not share them.
fn samples(ns: &str, suffix: &str) -> Vec<(String, String)> {
    yaml_files("config/samples")
        .into_iter()
        .filter(|p| !p.ends_with("00-namespace.yaml"))
        .map(|p| {
            let mut text = std::fs::read_to_string(&p).unwrap();
            text = text.replace("namespace: skyloom-demo", &format!("namespace: {ns}"));
            for pool in POOLS {
                text = text.replace(
                    &format!("  name: {pool}\n"),
                    &format!("  name: {pool}-{suffix}\n"),
                );
            }
            (p.file_name().unwrap().to_string_lossy().into_owned(), text)
        })
        .collect()
}

fn suffix_of(ns: &TestNamespace) -> String {
    ns.name.rsplit('-').next().unwrap().to_owned()
}

fn delete_pools(hub: &Member, suffix: &str) {
    let names: Vec<String> = POOLS.iter().map(|p| format!("{p}-{suffix}")).collect();
    let mut args = vec!["delete", "cloudpool", "--ignore-not-found", "--wait=false"];
    args.extend(names.iter().map(String::as_str));
    let (ok, _, err) = run_kubectl(hub, &args);
    assert!(ok, "deleting the test CloudPools: {err}");
}

/// The manifest as JSON, converted by kubectl itself (no YAML parser needed here).
fn manifest_json(hub: &Member, manifest: &str) -> Value {
    let (ok, out, err) = kubectl_stdin(
        hub,
        &["create", "--dry-run=client", "-o", "json", "-f", "-"],
        manifest,
    );
    assert!(ok, "{err}");
    serde_json::from_str(&out).unwrap()
}

fn live_object(hub: &Member, ns: &str, manifest: &Value) -> Value {
    let kind = manifest["kind"].as_str().unwrap().to_lowercase();
    let name = manifest["metadata"]["name"].as_str().unwrap();
    let (ok, out, err) = run_kubectl(hub, &["get", "-n", ns, &kind, name, "-o", "json"]);
    assert!(ok, "{err}");
    serde_json::from_str(&out).unwrap()
}

/// The shared testbed's hub with the CRDs installed, and a fresh namespace `prefix-<suffix>`.
async fn setup(prefix: &str) -> (&'static Member, TestNamespace) {
    let hub = shared().await.hub();
    install_crds(hub).await.unwrap();
    let ns = TestNamespace::create(&hub.client().await.unwrap(), prefix)
        .await
        .unwrap();
    (hub, ns)
}

/// Applies every sample with `apply_args` twice and checks that the server stored the spec as
/// written (no defaults, no normalisation: CASE-11) and that re-applying changes nothing.
async fn samples_apply_unchanged(prefix: &str, apply_args: &[&str]) {
    let (hub, ns) = setup(prefix).await;
    let suffix = suffix_of(&ns);
    for (file, manifest) in samples(&ns.name, &suffix) {
        for round in 1..=2 {
            let mut args = apply_args.to_vec();
            args.extend(["-n", &ns.name, "-f", "-"]);
            let (ok, _, err) = kubectl_stdin(hub, &args, &manifest);
            assert!(
                ok,
                "{file} (apply {round}, {apply_args:?}) was rejected: {err}"
            );
        }
        let written = manifest_json(hub, &manifest);
        let live = live_object(hub, &ns.name, &written);
        assert_eq!(
            live["spec"], written["spec"],
            "{file}: the server changed the spec"
        );
        assert_eq!(
            live["metadata"]["generation"], 1,
            "{file}: re-applying bumped the generation"
        );
    }
    delete_pools(hub, &suffix);
    ns.delete().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn samples_apply_client_side_unchanged() {
    samples_apply_unchanged("e2e-api-csa", &["apply"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn samples_apply_server_side_unchanged() {
    samples_apply_unchanged(
        "e2e-api-ssa",
        &["apply", "--server-side", "--field-manager=e2e-gitops"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_fixtures_are_rejected_naming_the_field() {
    let (hub, ns) = setup("e2e-api-invalid").await;
    let fixtures = yaml_files("tests/fixtures/invalid");
    assert!(fixtures.len() >= 22);
    let mut failures = vec![];
    for path in &fixtures {
        let text = std::fs::read_to_string(path).unwrap();
        let expect = text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("# expect: "))
            .unwrap();
        let strict = text.lines().any(|l| l.trim() == "# validate: strict");
        let file = path.to_string_lossy().into_owned();
        let mut args = vec!["apply", "-n", &ns.name];
        if strict {
            args.push("--validate=strict");
        }
        args.extend(["-f", &file]);
        let (ok, _, err) = run_kubectl(hub, &args);
        let name = path.file_name().unwrap().to_string_lossy();
        if ok {
            failures.push(format!(
                "{name}: accepted, expected an error containing {expect:?}"
            ));
            run_kubectl(
                hub,
                &["delete", "-n", &ns.name, "--ignore-not-found", "-f", &file],
            );
        } else if !err.contains(expect) {
            failures.push(format!("{name}: error does not contain {expect:?}:\n{err}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} fixtures failed:\n{}",
        failures.len(),
        fixtures.len(),
        failures.join("\n")
    );
    ns.delete().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_fields_are_pruned_when_validation_is_off() {
    // Structural schemas drop unknown fields silently unless the client asks for strict
    // validation; this is why the fixtures with typos are marked `# validate: strict`.
    let (hub, ns) = setup("e2e-api-prune").await;
    let file = workspace_root().join("tests/fixtures/invalid/ais-unknown-field-replica.yaml");
    let file = file.to_string_lossy().into_owned();
    let (ok, _, err) = run_kubectl(
        hub,
        &["apply", "-n", &ns.name, "--validate=ignore", "-f", &file],
    );
    assert!(ok, "{err}");
    let (ok, out, err) = run_kubectl(
        hub,
        &["get", "-n", &ns.name, "aiservice", "invalid", "-o", "json"],
    );
    assert!(ok, "{err}");
    let live: Value = serde_json::from_str(&out).unwrap();
    assert!(
        live["spec"].get("replica").is_none(),
        "unknown field kept: {}",
        live["spec"]
    );
    assert_eq!(live["spec"]["replicas"], 2);
    ns.delete().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_explain_prints_the_field_docs() {
    let tb = shared().await;
    let hub = tb.hub();
    install_crds(hub).await.unwrap();
    // The OpenAPI document that explain reads is republished shortly after a CRD changes.
    let explain = |args: &'static [&'static str], phrase: &'static str| {
        eventually(Duration::from_secs(60), phrase, move || async move {
            let (ok, out, _) = run_kubectl(hub, args);
            (ok && out.contains(phrase)).then_some(out)
        })
    };
    let out = explain(&["explain", "aiservice.spec.placement"], "Data residency")
        .await
        .unwrap();
    assert!(
        out.contains("surviveCloudLoss") || out.contains("spread"),
        "{out}"
    );
    explain(
        &[
            "explain",
            "aiservice.spec.placement.spread.surviveCloudLoss",
        ],
        "loss of any one cloud provider",
    )
    .await
    .unwrap();
    explain(
        &["explain", "cloudpool.spec.kubeconfigSecretRef"],
        "confused deputy",
    )
    .await
    .unwrap();
    explain(&["explain", "cloudpool.spec.prices"], "per GiB-hour")
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_scale_changes_spec_replicas() {
    let (hub, ns) = setup("e2e-api-scale").await;
    let (_, manifest) = samples(&ns.name, &suffix_of(&ns))
        .into_iter()
        .find(|(f, _)| f.contains("image-classifier"))
        .unwrap();
    let (ok, _, err) = kubectl_stdin(hub, &["apply", "-f", "-"], &manifest);
    assert!(ok, "{err}");
    let scale = |replicas: &str| {
        let target = "aiservice/image-classifier";
        run_kubectl(
            hub,
            &["scale", "-n", &ns.name, target, "--replicas", replicas],
        )
    };
    let (ok, _, err) = scale("5");
    assert!(ok, "{err}");
    let (ok, out, err) = run_kubectl(
        hub,
        &[
            "get",
            "-n",
            &ns.name,
            "aiservice",
            "image-classifier",
            "-o",
            "jsonpath={.spec.replicas}",
        ],
    );
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "5");
    // Above the schema's maximum, the scale subresource refuses too.
    let (ok, _, err) = scale("20000");
    assert!(!ok && err.contains("spec.replicas"), "{err}");
    ns.delete().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_get_prints_the_printer_columns() {
    let (hub, ns) = setup("e2e-api-get").await;
    let suffix = suffix_of(&ns);
    for (file, manifest) in samples(&ns.name, &suffix) {
        let (ok, _, err) = kubectl_stdin(hub, &["apply", "--server-side", "-f", "-"], &manifest);
        assert!(ok, "{file}: {err}");
    }
    // Write status as the operator would, through the status subresource.
    let ais_status = r#"{"status":{"observedGeneration":1,"replicas":3,"readyReplicas":2,
        "placementSummary":"aws-us-east-1=2,gcp-europe-west4=1","costPerHour":"10.42",
        "selector":"app.kubernetes.io/name=llm-chat"}}"#;
    let (ok, _, err) = run_kubectl(
        hub,
        &[
            "patch",
            "-n",
            &ns.name,
            "aiservice",
            "llm-chat",
            "--subresource=status",
            "--type=merge",
            "-p",
            ais_status,
        ],
    );
    assert!(ok, "{err}");
    let pool = format!("aws-us-east-1-{suffix}");
    let pool_status = r#"{"status":{"observedGeneration":1,"summary":{"gpu":"6/8","cpu":"84/96"},
        "conditions":[{"type":"Ready","status":"True","reason":"Probed","message":"",
        "lastTransitionTime":"2025-01-01T00:00:00Z","observedGeneration":1}]}}"#;
    let (ok, _, err) = run_kubectl(
        hub,
        &[
            "patch",
            "cloudpool",
            &pool,
            "--subresource=status",
            "--type=merge",
            "-p",
            pool_status,
        ],
    );
    assert!(ok, "{err}");

    let (ok, out, err) = run_kubectl(hub, &["get", "-n", &ns.name, "aiservices,cloudpools"]);
    assert!(ok, "{err}");
    for header in [
        "DESIRED",
        "READY",
        "PLACEMENT",
        "$/H",
        "AGE",
        "PROVIDER",
        "REGION",
        "GPU FREE/TOTAL",
        "CPU FREE/TOTAL",
        "$/GPU-H",
    ] {
        assert!(out.contains(header), "no {header} column in:\n{out}");
    }
    let llm = out.lines().find(|l| l.contains("llm-chat")).unwrap();
    for cell in ["3", "2", "aws-us-east-1=2,gcp-europe-west4=1", "10.42"] {
        assert!(
            llm.split_whitespace().any(|c| c == cell),
            "no {cell} in {llm:?}"
        );
    }
    let aws = out.lines().find(|l| l.contains(&pool)).unwrap();
    for cell in ["aws", "us-east-1", "True", "6/8", "84/96", "3.18"] {
        assert!(
            aws.split_whitespace().any(|c| c == cell),
            "no {cell} in {aws:?}"
        );
    }
    // Short names and the category reach the same objects.
    let (ok, out, err) = run_kubectl(hub, &["get", "-n", &ns.name, "ais,cp", "-o", "name"]);
    assert!(
        ok && out.contains("aiservice.skyloom.io/llm-chat") && out.contains(&pool),
        "{out}{err}"
    );
    let (ok, out, err) = run_kubectl(hub, &["get", "-n", &ns.name, "skyloom", "-o", "name"]);
    assert!(
        ok && out.contains("aiservice.skyloom.io/recommender") && out.contains(&pool),
        "{out}{err}"
    );
    delete_pools(hub, &suffix);
    ns.delete().await.unwrap();
}
