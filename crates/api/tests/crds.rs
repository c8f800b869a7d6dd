//! Checks on the generated CRDs: committed files are current, schemas are GitOps-safe,
//! documented, small enough for client-side apply, and carry the validation rules.

// Helpers outside #[test] functions are test code too.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde_json::Value;
use skyloom_api::{crd_file_name, crd_yaml, crds, crds_yaml};

const REGENERATE: &str = "cargo run -p skyloom -- crd --out deploy/crds";

/// kubectl's last-applied-configuration annotation (and all annotations together) must stay
/// below 262,144 bytes; keep 64 KiB of headroom for growth and other annotations.
const CLIENT_SIDE_APPLY_BUDGET: usize = 262_144 - 65_536;

fn crds_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../deploy/crds")
}

fn crd(plural: &str) -> CustomResourceDefinition {
    crds()
        .into_iter()
        .find(|c| c.spec.names.plural == plural)
        .unwrap()
}

fn schema(plural: &str) -> Value {
    let crd = crd(plural);
    let schema = crd.spec.versions[0].schema.as_ref().unwrap();
    serde_json::to_value(schema.open_api_v3_schema.as_ref().unwrap()).unwrap()
}

/// The schema node at a dotted path of property names (`[]` steps into array items).
fn node<'a>(schema: &'a Value, path: &str) -> &'a Value {
    path.split('.').fold(schema, |at, step| {
        if step == "[]" {
            &at["items"]
        } else {
            &at["properties"][step]
        }
    })
}

fn rules(node: &Value) -> Vec<String> {
    node["x-kubernetes-validations"]
        .as_array()
        .map(|r| {
            r.iter()
                .map(|r| r["rule"].as_str().unwrap().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn committed_crds_match_the_types() {
    for crd in crds() {
        let name = crd_file_name(&crd);
        let path = crds_dir().join(&name);
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        let generated = crd_yaml(&crd).unwrap();
        assert!(
            committed == generated,
            "deploy/crds/{name} is out of date with crates/api; regenerate it with `{REGENERATE}`"
        );
    }
}

#[test]
fn printed_stream_is_the_concatenation_of_the_files() {
    let files: Vec<String> = crds().iter().map(|c| crd_yaml(c).unwrap()).collect();
    assert_eq!(crds_yaml().unwrap(), files.join("---\n"));
    assert_eq!(
        crds().iter().map(crd_file_name).collect::<Vec<_>>(),
        ["skyloom.io_cloudpools.yaml", "skyloom.io_aiservices.yaml"]
    );
}

#[test]
fn generation_is_deterministic() {
    assert_eq!(crds_yaml().unwrap(), crds_yaml().unwrap());
}

fn find_defaults(value: &Value, path: &str, found: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                // A property that happens to be called "default" is fine; the keyword is not.
                if key == "default" && !path.ends_with(".properties") {
                    found.push(path.to_owned());
                }
                find_defaults(child, &format!("{path}.{key}"), found);
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                find_defaults(child, &format!("{path}[{i}]"), found);
            }
        }
        _ => {}
    }
}

#[test]
fn schemas_have_no_defaults() {
    for plural in ["cloudpools", "aiservices"] {
        let mut found = vec![];
        find_defaults(&schema(plural), plural, &mut found);
        assert!(
            found.is_empty(),
            "schema defaults make GitOps drift (CASE-11): {found:?}"
        );
    }
}

fn undocumented(value: &Value, path: &str, missing: &mut Vec<String>) {
    let Some(map) = value.as_object() else { return };
    if let Some(props) = map.get("properties").and_then(Value::as_object) {
        for (name, prop) in props {
            let here = format!("{path}.{name}");
            let doc = prop
                .get("description")
                .and_then(Value::as_str)
                .unwrap_or("");
            if doc.trim().len() < 8 {
                missing.push(here.clone());
            }
            undocumented(prop, &here, missing);
        }
    }
    for key in ["items", "additionalProperties"] {
        if let Some(child) = map.get(key) {
            undocumented(child, &format!("{path}[]"), missing);
        }
    }
}

#[test]
fn every_property_is_documented_for_kubectl_explain() {
    for plural in ["cloudpools", "aiservices"] {
        let mut missing = vec![];
        undocumented(&schema(plural), plural, &mut missing);
        assert!(
            missing.is_empty(),
            "properties without description: {missing:?}"
        );
    }
}

#[test]
fn crds_fit_the_client_side_apply_annotation() {
    for crd in crds() {
        let size = serde_json::to_string(&crd).unwrap().len();
        assert!(
            size < CLIENT_SIDE_APPLY_BUDGET,
            "{} is {size} bytes as JSON; client-side kubectl apply stores it in an annotation limited to 262144 bytes",
            crd_file_name(&crd)
        );
    }
}

#[test]
fn aiservice_validation_rules_are_present() {
    let s = schema("aiservices");
    let spec = node(&s, "spec");
    assert_eq!(spec["properties"]["replicas"]["minimum"], 0.0);
    assert_eq!(spec["properties"]["replicas"]["maximum"], 10000.0);
    assert!(
        rules(spec)
            .iter()
            .any(|r| r.contains("self.minReplicas <= self.replicas"))
    );
    assert!(rules(node(&s, "spec.placement.preferences"))[0].contains("exists_one"));
    assert!(rules(node(&s, "spec.placement.objective"))[0].contains("costWeight"));
    assert!(rules(node(&s, "spec.migration"))[0].contains("maxSurge"));
    assert_eq!(rules(node(&s, "spec.tolerations.[]")).len(), 2);
    let expression = node(&s, "spec.placement.cloudSelector.matchExpressions.[]");
    assert_eq!(
        expression["properties"]["operator"]["enum"],
        serde_json::json!(["In", "NotIn", "Exists", "DoesNotExist"])
    );
    assert!(rules(expression)[0].contains("size(self.values) > 0"));
    let requests = node(&s, "spec.template.spec.containers.[].resources.requests");
    assert!(rules(requests)[0].contains("k.contains('/')"));
    assert_eq!(requests["additionalProperties"]["minimum"], 0.0);
    assert_eq!(
        node(&s, "spec.failover.mode")["enum"],
        serde_json::json!(["Move", "Hold"])
    );
    assert_eq!(
        node(&s, "spec.placement.clouds")["x-kubernetes-list-type"],
        "set"
    );
    let containers = node(&s, "spec.template.spec.containers");
    assert_eq!(containers["minItems"], 1);
    assert_eq!(
        containers["items"]["x-kubernetes-preserve-unknown-fields"],
        true
    );
}

#[test]
fn cloudpool_validation_rules_are_present() {
    let s = schema("cloudpools");
    let spec = node(&s, "spec");
    let required: Vec<_> = spec["required"].as_array().unwrap().iter().collect();
    assert_eq!(required, ["kubeconfigSecretRef", "provider", "region"]);
    assert_eq!(
        node(&s, "spec.prices")["additionalProperties"]["pattern"],
        skyloom_api::schema::PRICE_PATTERN
    );
    assert!(rules(node(&s, "spec.capacity"))[0].contains("matches"));
    assert_eq!(
        node(&s, "spec.kubeconfigSecretRef")["required"],
        serde_json::json!(["name"])
    );
    assert!(
        node(&s, "spec.kubeconfigSecretRef.namespace").is_null(),
        "no namespace field: confused deputy"
    );
    assert_eq!(
        node(&s, "spec.taints")["x-kubernetes-list-map-keys"],
        serde_json::json!(["key", "effect"])
    );
    assert_eq!(
        node(&s, "status.conditions")["x-kubernetes-list-map-keys"],
        serde_json::json!(["type"])
    );
}

#[test]
fn kubectl_ux_names_columns_and_subresources() {
    let ais = crd("aiservices");
    assert_eq!(ais.spec.scope, "Namespaced");
    assert_eq!(ais.spec.names.short_names, Some(vec!["ais".into()]));
    assert_eq!(ais.spec.names.categories, Some(vec!["skyloom".into()]));
    let version = &ais.spec.versions[0];
    let sub = version.subresources.as_ref().unwrap();
    let scale = sub.scale.as_ref().unwrap();
    assert_eq!(scale.spec_replicas_path, ".spec.replicas");
    assert_eq!(scale.status_replicas_path, ".status.replicas");
    assert_eq!(
        scale.label_selector_path.as_deref(),
        Some(".status.selector")
    );
    assert!(sub.status.is_some());
    let columns: Vec<_> = version
        .additional_printer_columns
        .as_ref()
        .unwrap()
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(columns, ["Desired", "Ready", "Placement", "$/h", "Age"]);

    let cp = crd("cloudpools");
    assert_eq!(cp.spec.scope, "Cluster");
    assert_eq!(cp.spec.names.short_names, Some(vec!["cp".into()]));
    let version = &cp.spec.versions[0];
    assert!(version.subresources.as_ref().unwrap().status.is_some());
    let columns: Vec<_> = version
        .additional_printer_columns
        .as_ref()
        .unwrap()
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(
        columns,
        [
            "Provider",
            "Region",
            "Ready",
            "GPU Free/Total",
            "CPU Free/Total",
            "$/GPU-h",
            "Age"
        ]
    );
}
