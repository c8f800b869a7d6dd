//! `skyloom plan` on temporary manifests.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use proptest::prelude::*;

use super::*;

/// A directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "skyloom-plan-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).expect("temp dir");
        TempDir(path)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).expect("write");
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const POOLS: &str = r#"
apiVersion: skyloom.io/v1alpha1
kind: CloudPool
metadata:
  name: aws
spec:
  provider: aws
  region: us-east-1
  kubeconfigSecretRef: {name: aws-kubeconfig}
  capacity: {cpu: "16", memory: 64Gi, nvidia.com/gpu: "2"}
  prices: {cpu: "0.04", memory: "0.005", nvidia.com/gpu: "3.00"}
---
apiVersion: skyloom.io/v1alpha1
kind: CloudPool
metadata:
  name: gcp
spec:
  provider: gcp
  region: europe-west4
  kubeconfigSecretRef: {name: gcp-kubeconfig}
  capacity: {cpu: "16", memory: 64Gi, nvidia.com/gpu: "2"}
  prices: {cpu: "0.03", memory: "0.004", nvidia.com/gpu: "2.50"}
---
apiVersion: v1
kind: Secret
metadata: {name: ignored}
"#;

fn service(name: &str, replicas: u32, gpus: u32) -> String {
    format!(
        r#"
---
apiVersion: skyloom.io/v1alpha1
kind: AIService
metadata:
  name: {name}
  namespace: ml
spec:
  replicas: {replicas}
  template:
    spec:
      containers:
        - name: server
          image: example/server:1
          resources:
            requests: {{cpu: "1", memory: 2Gi, nvidia.com/gpu: "{gpus}"}}
"#
    )
}

fn args(files: Vec<PathBuf>, output: Format) -> PlanArgs {
    PlanArgs {
        files,
        output,
        without: Vec::new(),
        set_price: Vec::new(),
        set_capacity: Vec::new(),
        current: None,
        time_limit: 10.0,
    }
}

fn json(rendered: &Rendered) -> serde_json::Value {
    serde_json::from_str(&rendered.text).expect("JSON output")
}

/// Asserts that `message` contains every one of `parts`.
fn assert_mentions(message: &str, parts: &[&str]) {
    for part in parts {
        assert!(message.contains(part), "{part:?} missing from: {message}");
    }
}

fn error(args: &PlanArgs) -> String {
    match execute(args) {
        Ok(rendered) => panic!("expected an error, got {}", rendered.text),
        Err(error) => error.to_string(),
    }
}

#[test]
fn plans_to_the_documented_json_shape() {
    let dir = TempDir::new();
    let file = dir.write("all.yaml", &format!("{POOLS}{}", service("chat", 3, 1)));
    let rendered = execute(&args(vec![file], Format::Json)).expect("plans");
    assert_eq!(rendered.unplaced, 0);
    let doc = json(&rendered);
    let keys = |v: &serde_json::Value| -> Vec<String> {
        v.as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default()
    };
    assert_eq!(keys(&doc), ["clouds", "services", "solver", "totals"]);
    let service = &doc["services"][0];
    for key in [
        "namespace",
        "name",
        "desired",
        "placed",
        "unplaced",
        "placements",
        "costPerHour",
        "explanation",
    ] {
        assert!(service.get(key).is_some(), "services[0].{key} missing");
    }
    assert_eq!(service["placed"], 3);
    // The cheaper cloud first: gcp takes 2 (its GPUs), aws the third.
    assert_eq!(service["placements"][1]["cloud"], "gcp");
    assert_eq!(service["placements"][1]["replicas"], 2);
    let cloud = &doc["clouds"][0];
    for key in ["name", "capacity", "used", "shadowPrices"] {
        assert!(cloud.get(key).is_some(), "clouds[0].{key} missing");
    }
    assert_eq!(cloud["capacity"]["cpu"], 16.0);
    assert_eq!(cloud["capacity"]["memory"], 64u64 << 30);
    for key in ["costPerHour", "placed", "unplaced"] {
        assert!(doc["totals"].get(key).is_some());
    }
    for key in ["status", "gap", "seconds"] {
        assert!(doc["solver"].get(key).is_some());
    }
    // gcp's GPUs are binding: one more would save the difference to aws.
    assert!(
        doc["clouds"][1]["shadowPrices"]
            .get("nvidia.com/gpu")
            .is_some(),
        "{doc}"
    );
}

#[test]
fn directories_tables_and_yaml_work() {
    let dir = TempDir::new();
    dir.write("pools.yaml", POOLS);
    dir.write("chat.yml", &service("chat", 2, 1));
    dir.write("notes.txt", "not read");
    let rendered = execute(&args(vec![dir.0.clone()], Format::Table)).expect("plans");
    assert!(rendered.text.contains("ml/chat"), "{}", rendered.text);
    assert!(
        rendered.text.contains("TOTAL: 2 placed, 0 unplaced"),
        "{}",
        rendered.text
    );
    let rendered = execute(&args(vec![dir.0.clone()], Format::Yaml)).expect("plans");
    let doc: serde_json::Value = serde_saphyr::from_str(&rendered.text).expect("YAML output");
    assert_eq!(doc["totals"]["placed"], 2);
}

#[test]
fn unplaced_replicas_are_explained_and_exit_2() {
    let dir = TempDir::new();
    let file = dir.write("all.yaml", &format!("{POOLS}{}", service("big", 6, 1)));
    let rendered = execute(&args(vec![file.clone()], Format::Json)).expect("plans");
    assert_eq!(rendered.unplaced, 2);
    let doc = json(&rendered);
    let unplaced = &doc["services"][0]["explanation"]["unplaced"];
    assert_eq!(unplaced["replicas"], 2);
    assert_eq!(
        unplaced["capacity"][0]["missing"]["nvidia.com/gpu"], 1,
        "{unplaced}"
    );
    assert_eq!(run(args(vec![file], Format::Table)), ExitCode::from(2));
}

#[test]
fn what_ifs_change_the_answer() {
    let dir = TempDir::new();
    let file = dir.write("all.yaml", &format!("{POOLS}{}", service("chat", 2, 1)));
    let mut what_if = args(vec![file.clone()], Format::Json);
    what_if.set_price = vec!["aws/nvidia.com/gpu=1.00".to_owned()];
    let doc = json(&execute(&what_if).expect("plans"));
    assert_eq!(doc["services"][0]["placements"][0]["cloud"], "aws");
    assert_eq!(doc["services"][0]["placements"][0]["replicas"], 2);

    let mut what_if = args(vec![file.clone()], Format::Json);
    what_if.without = vec!["gcp".to_owned()];
    what_if.set_capacity = vec!["aws/nvidia.com/gpu=1".to_owned()];
    let rendered = execute(&what_if).expect("plans");
    assert_eq!(rendered.unplaced, 1);
    assert_eq!(json(&rendered)["clouds"].as_array().map(Vec::len), Some(1));

    let mut what_if = args(vec![file], Format::Json);
    what_if.without = vec!["azure".to_owned()];
    assert!(error(&what_if).contains("azure"));
}

#[test]
fn the_current_placement_is_kept() {
    let dir = TempDir::new();
    let file = dir.write("all.yaml", &format!("{POOLS}{}", service("chat", 2, 1)));
    let first = execute(&args(vec![file.clone()], Format::Json)).expect("plans");
    let current = dir.write("current.json", &first.text);
    // aws becomes 5 % cheaper than gcp: below the default 10 % migration threshold.
    let mut again = args(vec![file], Format::Json);
    again.current = Some(current);
    again.set_price = vec!["aws/nvidia.com/gpu=2.30".to_owned()];
    let doc = json(&execute(&again).expect("plans"));
    assert_eq!(doc["services"][0]["placements"][0]["cloud"], "gcp", "{doc}");
}

#[test]
fn a_document_that_is_not_a_mapping_is_refused_as_such() {
    let dir = TempDir::new();
    // A list of two strings reads positionally into a struct; it is no apiVersion and kind.
    for (text, shape) in [
        ("- skyloom.io/v1alpha1\n- CloudPool\n", "a list"),
        ("just words\n", "a string"),
    ] {
        let file = dir.write("odd.yaml", &format!("{POOLS}---\n{text}"));
        let message = error(&args(vec![file], Format::Table));
        assert_mentions(
            &message,
            &["odd.yaml", "document 4", "not a Kubernetes object", shape],
        );
    }
}

#[test]
fn errors_name_file_document_object_and_field() {
    let dir = TempDir::new();
    let bad_price = dir.write("price.yaml", &POOLS.replace("\"0.04\"", "\"NaN\""));
    let message = error(&args(vec![bad_price], Format::Table));
    assert_mentions(
        &message,
        &[
            "price.yaml",
            "document 1",
            "CloudPool aws",
            "spec.prices[cpu]",
        ],
    );

    let bad_quantity = dir.write(
        "quantity.yaml",
        &format!(
            "{POOLS}{}",
            service("chat", 1, 1).replace("memory: 2Gi", "memory: 2Gb")
        ),
    );
    let message = error(&args(vec![bad_quantity], Format::Table));
    assert_mentions(
        &message,
        &[
            "quantity.yaml",
            "document 4",
            "ml/chat",
            "resources.requests[memory]",
        ],
    );

    let unknown_kind = dir.write(
        "kind.yaml",
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\n",
    );
    let message = error(&args(vec![unknown_kind], Format::Table));
    assert!(
        message.contains("kind.yaml: document 1") && message.contains("Deployment"),
        "{message}"
    );

    let duplicate = dir.write(
        "dup.yaml",
        &format!("{POOLS}{}{}", service("chat", 1, 1), service("chat", 2, 1)),
    );
    let message = error(&args(vec![duplicate], Format::Table));
    assert!(
        message.contains("ml/chat") && message.contains("document 5"),
        "{message}"
    );

    let typo = dir.write("typo.yaml", &POOLS.replace("capacity:", "capacty:"));
    let message = error(&args(vec![typo], Format::Table));
    assert!(message.contains("unknown field spec.capacty"), "{message}");

    let negative = dir.write(
        "negative.yaml",
        &format!(
            "{POOLS}{}",
            service("chat", 1, 1).replace("replicas: 1", "replicas: -1")
        ),
    );
    let message = error(&args(vec![negative], Format::Table));
    assert!(message.contains("ml/chat"), "{message}");

    let missing = dir.0.join("missing.yaml");
    let message = error(&args(vec![missing], Format::Table));
    assert!(message.contains("missing.yaml"), "{message}");

    let version = dir.write(
        "version.yaml",
        &POOLS.replacen("skyloom.io/v1alpha1", "skyloom.io/v1", 1),
    );
    let message = error(&args(vec![version], Format::Table));
    assert_mentions(
        &message,
        &[
            "document 1",
            "CloudPool \"aws\"",
            "apiVersion",
            "skyloom.io/v1alpha1",
        ],
    );

    let unnamed = dir.write(
        "unnamed.yaml",
        &POOLS.replacen("name: aws", "name: \"\"", 1),
    );
    let message = error(&args(vec![unnamed], Format::Table));
    assert_mentions(
        &message,
        &[
            "document 1",
            "CloudPool",
            "metadata.name: must not be empty",
        ],
    );

    let half_gpu = dir.write(
        "half.yaml",
        &format!(
            "{POOLS}{}",
            service("chat", 1, 1).replace("nvidia.com/gpu: \"1\"", "nvidia.com/gpu: \"0.5\"")
        ),
    );
    let message = error(&args(vec![half_gpu], Format::Table));
    assert_mentions(
        &message,
        &["ml/chat", "requests[nvidia.com/gpu]", "whole units"],
    );
    let fractional_capacity = dir.write(
        "capacity.yaml",
        &POOLS.replacen("nvidia.com/gpu: \"2\"", "nvidia.com/gpu: \"2.5\"", 1),
    );
    let message = error(&args(vec![fractional_capacity], Format::Table));
    assert_mentions(
        &message,
        &[
            "CloudPool aws",
            "spec.capacity[nvidia.com/gpu]",
            "whole units",
        ],
    );
}

#[test]
fn documents_split_at_separators_and_keep_line_numbers() {
    let docs = input::documents("# head\n---\na: 1\n---\n\n--- # empty\nb: 2\n...\n");
    assert_eq!(docs.len(), 2);
    assert_eq!(docs[0].0, 3);
    assert_eq!(docs[1].0, 7);
    assert!(docs[1].1.ends_with("b: 2\n"));
    assert_eq!(docs[1].1.lines().count(), 7);
}

#[test]
fn the_samples_plan() {
    let samples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/samples");
    if !samples.is_dir() {
        return;
    }
    let rendered = execute(&args(vec![samples], Format::Json)).expect("the samples plan");
    let doc = json(&rendered);
    assert!(doc["totals"]["placed"].as_u64().unwrap_or(0) > 0, "{doc}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Arbitrary text as a manifest never panics the planner.
    #[test]
    fn arbitrary_yaml_never_panics(text in "(\\PC|\n){0,300}") {
        let dir = TempDir::new();
        let file = dir.write("fuzz.yaml", &text);
        let _ = execute(&args(vec![file], Format::Json));
    }

    /// Mutated valid manifests never panic the planner either.
    #[test]
    fn mutated_manifests_never_panic(cut in 0usize..2000, insert in "[-:{}\\[\\]\"'a-z0-9 \n.]{0,12}") {
        let dir = TempDir::new();
        let base = format!("{POOLS}{}", service("chat", 3, 1));
        let cut = cut.min(base.len());
        let cut = (0..=cut).rev().find(|&i| base.is_char_boundary(i)).unwrap_or(0);
        let text = format!("{}{insert}{}", &base[..cut], &base[cut..]);
        let file = dir.write("mutated.yaml", &text);
        let _ = execute(&args(vec![file], Format::Json));
    }
}

#[test]
fn a_plan_fed_back_as_current_is_reproduced() {
    let samples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/samples");
    if !samples.is_dir() {
        return;
    }
    let dir = TempDir::new();
    let first = execute(&args(vec![samples.clone()], Format::Json)).expect("plans");
    let current = dir.write("current.json", &first.text);
    let mut again = args(vec![samples], Format::Json);
    again.current = Some(current);
    let second = execute(&again).expect("plans");
    let placements = |doc: &serde_json::Value| -> Vec<serde_json::Value> {
        doc["services"]
            .as_array()
            .map(|s| s.iter().map(|s| s["placements"].clone()).collect())
            .unwrap_or_default()
    };
    assert_eq!(placements(&json(&first)), placements(&json(&second)));
}

#[test]
fn undeclared_capacity_is_warned_about() {
    let dir = TempDir::new();
    let pools = POOLS.replace(
        "{cpu: \"16\", memory: 64Gi, nvidia.com/gpu: \"2\"}",
        "{nvidia.com/gpu: \"2\"}",
    );
    let file = dir.write("all.yaml", &format!("{pools}{}", service("chat", 1, 1)));
    let rendered = execute(&args(vec![file], Format::Table)).expect("plans");
    assert_eq!(rendered.unplaced, 1);
    assert!(
        rendered
            .warnings
            .iter()
            .any(|w| w.contains("CloudPool aws") && w.contains("cpu, memory")),
        "{:?}",
        rendered.warnings
    );
}
