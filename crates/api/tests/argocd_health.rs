//! Runs the Argo CD health checks in `deploy/argocd/` the way Argo CD does (a Lua chunk with
//! the object in the global `obj`, returning `{status, message}`) on representative objects,
//! and keeps `argocd-cm-patch.yaml` identical to the scripts.

// Helpers outside #[test] functions are test code too.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use mlua::{Lua, LuaSerdeExt, Table};
use serde_json::{Value, json};

fn argocd_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../deploy/argocd")
}

fn script(name: &str) -> String {
    std::fs::read_to_string(argocd_dir().join(name)).unwrap()
}

/// Returns (status, message) of the health check `name` for `obj`.
fn health(name: &str, obj: &Value) -> (String, String) {
    let lua = Lua::new();
    lua.globals()
        .set("obj", lua.to_value(obj).unwrap())
        .unwrap();
    let hs: Table = lua.load(script(name)).set_name(name).eval().unwrap();
    let message: Option<String> = hs.get("message").unwrap();
    (hs.get("status").unwrap(), message.unwrap_or_default())
}

fn condition(kind: &str, status: &str, reason: &str, generation: i64) -> Value {
    json!({
        "type": kind,
        "status": status,
        "reason": reason,
        "message": format!("{kind} is {status} because {reason}"),
        "observedGeneration": generation,
        "lastTransitionTime": "2025-01-01T00:00:00Z",
    })
}

fn aiservice(generation: i64, observed: Option<i64>, conditions: Vec<Value>) -> Value {
    let mut status = json!({ "conditions": conditions });
    if let Some(observed) = observed {
        status["observedGeneration"] = json!(observed);
    }
    json!({
        "apiVersion": "skyloom.io/v1alpha1",
        "kind": "AIService",
        "metadata": {"name": "llm", "namespace": "team-a", "generation": generation},
        "spec": {"replicas": 4},
        "status": status,
    })
}

fn cloudpool(
    generation: i64,
    observed: Option<i64>,
    cordoned: bool,
    conditions: Vec<Value>,
) -> Value {
    let mut obj = aiservice(generation, observed, conditions);
    obj["kind"] = json!("CloudPool");
    obj["spec"] = json!({"provider": "aws", "region": "us-east-1", "cordoned": cordoned});
    obj
}

const AIS: &str = "health-aiservice.lua";
const CP: &str = "health-cloudpool.lua";

#[test]
fn aiservice_without_status_is_progressing() {
    let mut obj = aiservice(1, None, vec![]);
    obj.as_object_mut().unwrap().remove("status");
    assert_eq!(health(AIS, &obj).0, "Progressing");
}

#[test]
fn aiservice_ready_for_the_current_generation_is_healthy() {
    let obj = aiservice(
        3,
        Some(3),
        vec![condition("Ready", "True", "Reconciled", 3)],
    );
    assert_eq!(
        health(AIS, &obj),
        (
            "Healthy".into(),
            "Reconciled: Ready is True because Reconciled".into()
        )
    );
}

#[test]
fn aiservice_ready_for_an_older_generation_is_progressing() {
    // CASE-12: a stale Ready must not make Argo declare success for a new spec.
    let obj = aiservice(
        2,
        Some(1),
        vec![condition("Ready", "True", "Reconciled", 1)],
    );
    let (status, message) = health(AIS, &obj);
    assert_eq!(status, "Progressing");
    assert!(message.contains("generation 2"), "{message}");
}

#[test]
fn aiservice_with_a_stale_condition_but_current_status_is_progressing() {
    let obj = aiservice(
        2,
        Some(2),
        vec![condition("Ready", "True", "Reconciled", 1)],
    );
    assert_eq!(health(AIS, &obj).0, "Progressing");
}

#[test]
fn aiservice_rolling_out_is_progressing() {
    let obj = aiservice(
        2,
        Some(2),
        vec![
            condition("Ready", "False", "RollingOut", 2),
            condition("Reconciling", "True", "RollingOut", 2),
            condition("Progressing", "True", "RollingOut", 2),
        ],
    );
    assert_eq!(health(AIS, &obj).0, "Progressing");
}

#[test]
fn aiservice_past_its_progress_deadline_is_degraded() {
    // CASE-12 E2: a bad image must end Degraded, never Healthy.
    let obj = aiservice(
        2,
        Some(2),
        vec![
            condition("Ready", "False", "MinimumReplicasUnavailable", 2),
            condition("Progressing", "False", "ProgressDeadlineExceeded", 2),
        ],
    );
    let (status, message) = health(AIS, &obj);
    assert_eq!(status, "Degraded");
    assert!(message.starts_with("ProgressDeadlineExceeded"), "{message}");
}

#[test]
fn aiservice_stalled_is_degraded_even_before_rollout() {
    // An invalid spec is never rolled out, so status.observedGeneration stays behind; the
    // Stalled condition for the new generation must still surface.
    let obj = aiservice(
        5,
        Some(4),
        vec![condition("Stalled", "True", "InvalidSpec", 5)],
    );
    assert_eq!(health(AIS, &obj).0, "Degraded");
}

#[test]
fn aiservice_that_does_not_fit_is_degraded() {
    // CASE-13 E2: Scheduled=False with a reason.
    let obj = aiservice(
        1,
        Some(1),
        vec![
            condition("Scheduled", "False", "NoFeasiblePlacement", 1),
            condition("Ready", "False", "NoFeasiblePlacement", 1),
        ],
    );
    assert_eq!(health(AIS, &obj).0, "Degraded");
}

#[test]
fn aiservice_not_ready_for_a_failure_reason_is_degraded() {
    let obj = aiservice(
        1,
        Some(1),
        vec![condition("Ready", "False", "PartiallyPlaced", 1)],
    );
    assert_eq!(health(AIS, &obj).0, "Degraded");
}

#[test]
fn aiservice_failing_over_is_progressing() {
    let obj = aiservice(
        1,
        Some(1),
        vec![condition("Ready", "False", "FailingOver", 1)],
    );
    assert_eq!(health(AIS, &obj).0, "Progressing");
}

#[test]
fn aiservice_old_failure_does_not_degrade_a_new_generation() {
    let obj = aiservice(
        3,
        Some(2),
        vec![condition("Stalled", "True", "InvalidSpec", 2)],
    );
    assert_eq!(health(AIS, &obj).0, "Progressing");
}

#[test]
fn aiservice_conditions_without_own_generation_use_the_status_generation() {
    let mut ready = condition("Ready", "True", "Reconciled", 0);
    ready.as_object_mut().unwrap().remove("observedGeneration");
    assert_eq!(
        health(AIS, &aiservice(2, Some(2), vec![ready.clone()])).0,
        "Healthy"
    );
    assert_eq!(
        health(AIS, &aiservice(2, Some(1), vec![ready])).0,
        "Progressing"
    );
}

#[test]
fn cloudpool_health_follows_ready() {
    let ready = |s, r| vec![condition("Ready", s, r, 1)];
    assert_eq!(
        health(CP, &cloudpool(1, Some(1), false, ready("True", "Probed"))).0,
        "Healthy"
    );
    let (status, message) = health(
        CP,
        &cloudpool(1, Some(1), false, ready("False", "Unreachable")),
    );
    assert_eq!(status, "Degraded");
    assert!(message.starts_with("Unreachable"), "{message}");
    assert_eq!(
        health(CP, &cloudpool(1, Some(1), true, ready("True", "Probed"))).0,
        "Suspended"
    );
    assert_eq!(
        health(CP, &cloudpool(2, Some(1), false, ready("True", "Probed"))).0,
        "Progressing"
    );
    assert_eq!(
        health(CP, &cloudpool(1, Some(1), false, vec![])).0,
        "Progressing"
    );
    let stalled = vec![
        condition("Ready", "Unknown", "Probing", 1),
        condition("Stalled", "True", "SecretNotFound", 1),
    ];
    assert_eq!(
        health(CP, &cloudpool(1, Some(1), false, stalled)).0,
        "Degraded"
    );
}

/// The ConfigMap patch as it should be: the two scripts under Argo CD's health keys.
fn expected_patch() -> String {
    let mut out = String::from(
        "# Argo CD health checks for Skyloom's custom resources. Merge into argocd-cm:\n\
         #   kubectl -n argocd patch configmap argocd-cm --patch-file deploy/argocd/argocd-cm-patch.yaml\n\
         # or copy the keys into the Argo CD Helm chart's configs.cm values.\n\
         # Generated from deploy/argocd/health-*.lua; refresh with\n\
         #   UPDATE_ARGOCD_PATCH=1 cargo test -p skyloom-api --test argocd_health\n\
         data:\n",
    );
    for (kind, file) in [("AIService", AIS), ("CloudPool", CP)] {
        out.push_str(&format!(
            "  resource.customizations.health.skyloom.io_{kind}: |\n"
        ));
        for line in script(file).lines() {
            if line.is_empty() {
                out.push('\n');
            } else {
                out.push_str(&format!("    {line}\n"));
            }
        }
    }
    out
}

#[test]
fn configmap_patch_carries_the_scripts() {
    let path = argocd_dir().join("argocd-cm-patch.yaml");
    let expected = expected_patch();
    if std::env::var_os("UPDATE_ARGOCD_PATCH").is_some() {
        std::fs::write(&path, &expected).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == expected,
        "deploy/argocd/argocd-cm-patch.yaml differs from the health-*.lua scripts; refresh it with \
         `UPDATE_ARGOCD_PATCH=1 cargo test -p skyloom-api --test argocd_health`"
    );
    // And it is YAML whose values are exactly the scripts.
    let parsed: Value = serde_saphyr::from_str(&committed).unwrap();
    assert_eq!(
        parsed["data"]["resource.customizations.health.skyloom.io_AIService"],
        json!(script(AIS))
    );
    assert_eq!(
        parsed["data"]["resource.customizations.health.skyloom.io_CloudPool"],
        json!(script(CP))
    );
}
