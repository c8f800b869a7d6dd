//! The samples in `config/samples/` parse into the Rust types, survive a round trip unchanged
//! (what Git holds is what the operator reads and would write back, CASE-11), and fit the
//! testbed; the invalid fixtures are well-formed test cases.

// Helpers outside #[test] functions are test code too.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use serde_json::Value;
use skyloom_api::{AIService, CloudPool};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn yaml_files(dir: &str) -> Vec<(String, String)> {
    let mut files: Vec<_> = std::fs::read_dir(repo().join(dir))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read_to_string(&p).unwrap())
        })
        .collect();
    files.sort();
    files
}

fn samples(kind: &str) -> Vec<(String, Value)> {
    yaml_files("config/samples")
        .into_iter()
        .map(|(name, text)| (name, serde_saphyr::from_str::<Value>(&text).unwrap()))
        .filter(|(_, v)| v["kind"] == kind)
        .collect()
}

#[test]
fn cloudpool_samples_round_trip_unchanged() {
    let pools = samples("CloudPool");
    assert_eq!(pools.len(), 3);
    for (name, input) in pools {
        let pool: CloudPool = serde_json::from_value(input.clone()).unwrap();
        assert_eq!(
            serde_json::to_value(&pool.spec).unwrap(),
            input["spec"],
            "{name}"
        );
        assert_eq!(
            pool.spec.kubeconfig_secret_ref.name,
            format!("{}-kubeconfig", pool.metadata.name.as_deref().unwrap())
        );
        for resource in ["cpu", "memory", "nvidia.com/gpu"] {
            assert!(
                pool.spec.price(resource).unwrap().is_some(),
                "{name} prices {resource}"
            );
        }
        let labels = pool.metadata.labels.unwrap_or_default();
        assert_eq!(labels.get("skyloom.io/provider"), Some(&pool.spec.provider));
        assert_eq!(
            labels.get("topology.kubernetes.io/region"),
            Some(&pool.spec.region)
        );
        assert!(labels.contains_key("skyloom.io/jurisdiction"), "{name}");
    }
}

#[test]
fn aiservice_samples_round_trip_unchanged_and_fit_the_testbed() {
    let services = samples("AIService");
    assert_eq!(services.len(), 3);
    let mut gpus = 0;
    for (name, input) in services {
        let service: AIService = serde_json::from_value(input.clone()).unwrap();
        assert_eq!(
            serde_json::to_value(&service.spec).unwrap(),
            input["spec"],
            "{name}"
        );
        assert_eq!(service.metadata.namespace.as_deref(), Some("skyloom-demo"));
        let containers = &service.spec.template.spec.as_ref().unwrap().containers;
        for container in containers {
            let requests = container
                .resources
                .as_ref()
                .and_then(|r| r.requests.as_ref());
            if let Some(gpu) = requests.and_then(|r| r.get("nvidia.com/gpu")) {
                gpus += gpu.0.parse::<i32>().unwrap() * service.spec.replicas;
            }
        }
    }
    // The testbed's members have GPUs to spare, but keep the demo modest.
    assert!(gpus <= 8, "samples need {gpus} GPUs");
}

#[test]
fn llm_chat_sample_survives_a_cloud_loss() {
    let (_, input) = samples("AIService")
        .into_iter()
        .find(|(n, _)| n.contains("llm-chat"))
        .unwrap();
    let service: AIService = serde_json::from_value(input).unwrap();
    assert!(service.spec.spread().survive_cloud_loss());
    assert_eq!(service.spec.min_replicas(), 2);
    assert_eq!(service.spec.replicas, 3);
}

#[test]
fn invalid_fixtures_say_what_the_apiserver_must_answer() {
    let fixtures = yaml_files("tests/fixtures/invalid");
    assert!(
        fixtures.len() >= 22,
        "only {} invalid fixtures",
        fixtures.len()
    );
    for (name, text) in fixtures {
        let mut lines = text.lines();
        let expect = lines
            .next()
            .and_then(|l| l.strip_prefix("# expect: "))
            .unwrap_or("");
        assert!(
            expect.len() >= 6,
            "{name}: first line must be `# expect: <substring>`"
        );
        let doc: Value = serde_saphyr::from_str(&text).unwrap();
        assert_eq!(doc["apiVersion"], "skyloom.io/v1alpha1", "{name}");
        assert!(
            doc["metadata"]["namespace"].is_null(),
            "{name}: tests choose the namespace"
        );
    }
}
