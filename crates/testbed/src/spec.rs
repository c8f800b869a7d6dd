//! What a testbed consists of: a hub and member clusters, each with fake Nodes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::TestbedError;

/// A testbed: an optional hub (the control plane Skyloom runs against) and member clusters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TestbedSpec {
    /// Name of the testbed; the CLI keeps its state under this name.
    #[serde(default = "default_name")]
    pub name: String,
    /// Whether to start a hub cluster named `hub` (apiserver and controller-manager, no nodes).
    #[serde(default = "default_true")]
    pub hub: bool,
    /// The member clusters, one per "cloud".
    pub members: Vec<MemberSpec>,
}

/// One member cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MemberSpec {
    /// The member's name: a DNS label, unique in the testbed.
    pub name: String,
    /// Region label put on every Node (`topology.kubernetes.io/region`).
    #[serde(default)]
    pub region: Option<String>,
    /// Zone label put on every Node (`topology.kubernetes.io/zone`).
    #[serde(default)]
    pub zone: Option<String>,
    /// Groups of identical fake Nodes.
    #[serde(default)]
    pub nodes: Vec<NodeGroup>,
}

/// A group of identical fake Nodes managed by kwok.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeGroup {
    /// Name prefix; Nodes are called `<prefix>-<index>`.
    pub name: String,
    /// How many Nodes.
    pub count: u32,
    /// Allocatable CPU per Node (a Kubernetes quantity, e.g. "32").
    pub cpu: String,
    /// Allocatable memory per Node (e.g. "128Gi").
    pub memory: String,
    /// `nvidia.com/gpu` devices per Node.
    #[serde(default)]
    pub gpu: u32,
    /// `node.kubernetes.io/instance-type` label.
    #[serde(default)]
    pub instance_type: Option<String>,
    /// Extra labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

fn default_name() -> String {
    "skyloom".to_owned()
}

fn default_true() -> bool {
    true
}

impl TestbedSpec {
    /// The default testbed: a hub and three GPU members named like real clouds.
    pub fn default_spec() -> Self {
        let member =
            |name: &str, region: &str, zone: &str, gpu_type: &str, cpu_type: &str| MemberSpec {
                name: name.to_owned(),
                region: Some(region.to_owned()),
                zone: Some(zone.to_owned()),
                nodes: vec![
                    NodeGroup {
                        name: "gpu".to_owned(),
                        count: 2,
                        cpu: "48".to_owned(),
                        memory: "384Gi".to_owned(),
                        gpu: 4,
                        instance_type: Some(gpu_type.to_owned()),
                        labels: BTreeMap::new(),
                    },
                    NodeGroup {
                        name: "cpu".to_owned(),
                        count: 2,
                        cpu: "32".to_owned(),
                        memory: "128Gi".to_owned(),
                        gpu: 0,
                        instance_type: Some(cpu_type.to_owned()),
                        labels: BTreeMap::new(),
                    },
                ],
            };
        Self {
            name: default_name(),
            hub: true,
            members: vec![
                member(
                    "aws-us-east-1",
                    "us-east-1",
                    "us-east-1a",
                    "g6e.12xlarge",
                    "m7i.8xlarge",
                ),
                member(
                    "gcp-europe-west4",
                    "europe-west4",
                    "europe-west4-a",
                    "g2-standard-48",
                    "n2-standard-32",
                ),
                member(
                    "azure-eastus",
                    "eastus",
                    "eastus-1",
                    "NC48ads_A100_v4",
                    "D32s_v5",
                ),
            ],
        }
    }

    /// Parses a YAML description and checks it.
    pub fn from_yaml(text: &str) -> Result<Self, TestbedError> {
        let spec: Self =
            serde_saphyr::from_str(text).map_err(|e| TestbedError::Spec(e.to_string()))?;
        spec.validate()?;
        Ok(spec)
    }

    /// Checks names and node groups.
    pub fn validate(&self) -> Result<(), TestbedError> {
        let mut seen = std::collections::BTreeSet::new();
        if self.hub {
            seen.insert("hub");
        }
        if self.members.is_empty() && !self.hub {
            return Err(TestbedError::Spec(
                "a testbed needs a hub or at least one member".into(),
            ));
        }
        for m in &self.members {
            if !is_dns_label(&m.name) {
                return Err(TestbedError::Spec(format!(
                    "members[].name '{}' must be a DNS label (lowercase letters, digits, '-', at most 63)",
                    m.name
                )));
            }
            if !seen.insert(&m.name) {
                return Err(TestbedError::Spec(format!(
                    "members[].name '{}' is used twice (the hub is called 'hub')",
                    m.name
                )));
            }
            for g in &m.nodes {
                if !is_dns_label(&g.name) {
                    return Err(TestbedError::Spec(format!(
                        "members[{}].nodes[].name '{}' must be a DNS label",
                        m.name, g.name
                    )));
                }
                if g.cpu.trim().is_empty() || g.memory.trim().is_empty() {
                    return Err(TestbedError::Spec(format!(
                        "members[{}].nodes[{}]: cpu and memory are required",
                        m.name, g.name
                    )));
                }
            }
        }
        Ok(())
    }
}

/// Whether `s` is an RFC 1123 DNS label.
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_spec_is_valid() {
        let spec = TestbedSpec::default_spec();
        spec.validate().unwrap();
        assert_eq!(spec.members.len(), 3);
        assert!(spec.hub);
    }

    #[test]
    fn yaml_round_trip_and_errors() {
        let spec = TestbedSpec::from_yaml(
            "name: t\nmembers:\n- name: a\n  nodes:\n  - {name: gpu, count: 1, cpu: '8', memory: 32Gi, gpu: 2}\n",
        )
        .unwrap();
        assert_eq!(spec.members[0].nodes[0].gpu, 2);
        assert!(spec.hub);
        let dup = TestbedSpec::from_yaml("members:\n- name: a\n- name: a\n").unwrap_err();
        assert!(dup.to_string().contains("used twice"), "{dup}");
        let bad = TestbedSpec::from_yaml("members:\n- name: A_b\n").unwrap_err();
        assert!(bad.to_string().contains("DNS label"), "{bad}");
        let unknown = TestbedSpec::from_yaml("members: []\nhubb: true\n").unwrap_err();
        assert!(unknown.to_string().contains("hubb"), "{unknown}");
    }
}
