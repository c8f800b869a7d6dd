//! What a member can still offer Skyloom: the allocatable resources of its schedulable,
//! Ready Nodes minus the requests of Pods that Skyloom does not manage, and the shape of its
//! largest node (per resource) for per-node fit. Pod slots (allocatable `pods`) count as a
//! resource too: every Pod takes one, so a member with room for CPU can still be full.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Node, Pod};

use crate::identity::{MANAGED_BY, MANAGED_BY_LABEL};
use crate::quantity::to_base_units;

/// The Node resource that counts Pod slots; each Pod uses one.
pub const POD_SLOTS: &str = "pods";

/// Capacity of one member in base units.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capacity {
    /// Sum of allocatable over schedulable Ready Nodes.
    pub allocatable: BTreeMap<String, u64>,
    /// Requests of Pods not managed by Skyloom, bound to those Nodes.
    pub foreign: BTreeMap<String, u64>,
    /// Per resource, the largest allocatable of any one schedulable Ready Node.
    pub largest_node: BTreeMap<String, u64>,
    /// Schedulable Ready Nodes.
    pub nodes: u32,
}

impl Capacity {
    /// Allocatable minus foreign usage, per resource (never below zero).
    pub fn available(&self) -> BTreeMap<String, u64> {
        self.allocatable
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    v.saturating_sub(self.foreign.get(k).copied().unwrap_or(0)),
                )
            })
            .collect()
    }
}

fn usable(node: &Node) -> bool {
    let unschedulable = node
        .spec
        .as_ref()
        .and_then(|s| s.unschedulable)
        .unwrap_or(false);
    let ready = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    ready && !unschedulable
}

/// Computes the capacity from listed Nodes and (non-terminal) Pods. Unreadable quantities are
/// skipped: a member's odd Node must not stop planning for everyone.
pub fn compute(nodes: &[Node], pods: &[Pod]) -> Capacity {
    let mut cap = Capacity::default();
    let mut usable_nodes = std::collections::BTreeSet::new();
    for node in nodes.iter().filter(|n| usable(n)) {
        cap.nodes += 1;
        if let Some(name) = &node.metadata.name {
            usable_nodes.insert(name.clone());
        }
        let alloc = node.status.as_ref().and_then(|s| s.allocatable.as_ref());
        for (res, q) in alloc.into_iter().flatten() {
            if let Ok(v) = to_base_units(res, &q.0) {
                let total = cap.allocatable.entry(res.clone()).or_insert(0);
                *total = total.saturating_add(v);
                let largest = cap.largest_node.entry(res.clone()).or_insert(0);
                *largest = (*largest).max(v);
            }
        }
    }
    for pod in pods {
        let managed = pod
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(MANAGED_BY_LABEL))
            .is_some_and(|v| v == MANAGED_BY);
        let Some(spec) = &pod.spec else { continue };
        let on_usable = spec
            .node_name
            .as_ref()
            .is_some_and(|n| usable_nodes.contains(n));
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        if managed || !on_usable || matches!(phase, Some("Succeeded" | "Failed")) {
            continue;
        }
        for (res, v) in pod_requests(spec) {
            let total = cap.foreign.entry(res).or_insert(0);
            *total = total.saturating_add(v);
        }
        let slots = cap.foreign.entry(POD_SLOTS.to_owned()).or_insert(0);
        *slots = slots.saturating_add(1);
    }
    cap
}

/// A Pod's effective requests: the larger of the sum over containers and the largest init
/// container; a container without requests counts its limits, as the scheduler does.
pub fn pod_requests(spec: &k8s_openapi::api::core::v1::PodSpec) -> BTreeMap<String, u64> {
    let container_requests = |c: &k8s_openapi::api::core::v1::Container| {
        let mut out = BTreeMap::new();
        let res = c.resources.as_ref();
        let requests = res.and_then(|r| r.requests.as_ref());
        let limits = res.and_then(|r| r.limits.as_ref());
        for map in [limits, requests].into_iter().flatten() {
            for (k, q) in map {
                if let Ok(v) = to_base_units(k, &q.0) {
                    out.insert(k.clone(), v);
                }
            }
        }
        out
    };
    let mut sum: BTreeMap<String, u64> = BTreeMap::new();
    for c in &spec.containers {
        for (k, v) in container_requests(c) {
            let e = sum.entry(k).or_insert(0);
            *e = e.saturating_add(v);
        }
    }
    for c in spec.init_containers.iter().flatten() {
        for (k, v) in container_requests(c) {
            let e = sum.entry(k).or_insert(0);
            *e = (*e).max(v);
        }
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, cpu: &str, gpu: &str, ready: bool) -> Node {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
            "status": {
                "allocatable": {"cpu": cpu, "memory": "64Gi", "nvidia.com/gpu": gpu, "pods": "110"},
                "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}],
            }
        }))
        .unwrap()
    }

    fn pod(node: &str, cpu: &str, managed: bool, phase: &str) -> Pod {
        let labels = if managed {
            serde_json::json!({"app.kubernetes.io/managed-by": "skyloom"})
        } else {
            serde_json::json!({})
        };
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "labels": labels},
            "spec": {"nodeName": node, "containers": [{"name": "c", "resources": {"requests": {"cpu": cpu}, "limits": {"nvidia.com/gpu": "1"}}}]},
            "status": {"phase": phase},
        }))
        .unwrap()
    }

    #[test]
    fn subtracts_only_foreign_running_pods_on_ready_nodes() {
        let nodes = [
            node("a", "8", "4", true),
            node("b", "16", "2", true),
            node("c", "64", "8", false),
        ];
        let pods = [
            pod("a", "2", false, "Running"),
            pod("a", "1", true, "Running"),
            pod("b", "500m", false, "Succeeded"),
            pod("c", "3", false, "Running"),
        ];
        let cap = compute(&nodes, &pods);
        assert_eq!(cap.nodes, 2);
        assert_eq!(cap.allocatable["cpu"], 24_000);
        assert_eq!(cap.allocatable["nvidia.com/gpu"], 6);
        assert_eq!(cap.foreign["cpu"], 2_000);
        assert_eq!(cap.foreign["nvidia.com/gpu"], 1);
        assert_eq!(cap.available()["cpu"], 22_000);
        assert_eq!(cap.largest_node["nvidia.com/gpu"], 4);
        // Pod slots: 110 per Ready node, one taken by the foreign Pod running on `a`.
        assert_eq!(cap.allocatable[POD_SLOTS], 220);
        assert_eq!(cap.foreign[POD_SLOTS], 1);
        assert_eq!(cap.available()[POD_SLOTS], 219);
        assert_eq!(cap.largest_node[POD_SLOTS], 110);
    }
}
