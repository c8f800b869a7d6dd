//! What the watch caches keep of each object. The stores hold every AIService, CloudPool,
//! operator Secret and owned member Deployment for the life of the process, so everything
//! the operator never reads is dropped before an object enters them: `managedFields` (often
//! larger than the object), kubectl's last-applied annotation (a second copy of the spec, and
//! of the data of a Secret applied with kubectl), and of member Deployments the Pod template
//! except the containers' resources.
//!
//! Readers of member Deployments use: metadata (name, namespace, uid, generation, labels and
//! annotations for ownership and the template hash), `spec.replicas`, the containers'
//! requests and limits (allocated capacity), `spec.progressDeadlineSeconds` and the whole
//! `status`. A new reader of anything else must be added here first.

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{Container, PodSpec, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

/// kubectl's client-side apply annotation: a full copy of the last applied object.
pub const LAST_APPLIED_ANNOTATION: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Drops `managedFields` and the last-applied annotation.
pub fn metadata(meta: &mut ObjectMeta) {
    meta.managed_fields = None;
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.remove(LAST_APPLIED_ANNOTATION);
    }
}

/// Any hub object: see [`metadata`].
pub fn hub_object<K: kube::Resource>(object: &mut K) {
    metadata(object.meta_mut());
}

/// A member Deployment: trimmed metadata, the replica count, the selector, the progress
/// deadline, the containers' names and resources, and the status.
pub fn member_deployment(deployment: &mut Deployment) {
    metadata(&mut deployment.metadata);
    let spec = std::mem::take(&mut deployment.spec);
    let resources_only = |containers: Vec<Container>| -> Vec<Container> {
        containers
            .into_iter()
            .map(|c| Container {
                name: c.name,
                resources: c.resources,
                ..Container::default()
            })
            .collect()
    };
    let pod = spec.template.spec.map(|p| PodSpec {
        containers: resources_only(p.containers),
        init_containers: p.init_containers.map(resources_only),
        ..PodSpec::default()
    });
    deployment.spec = DeploymentSpec {
        replicas: spec.replicas,
        selector: spec.selector,
        progress_deadline_seconds: spec.progress_deadline_seconds,
        template: PodTemplateSpec {
            metadata: None,
            spec: pod,
        },
        ..DeploymentSpec::default()
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capacity::pod_requests;
    use crate::identity::owner_of;

    fn deployment() -> Deployment {
        serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": "svc", "namespace": "ns", "uid": "u1", "generation": 3,
                "resourceVersion": "42",
                "labels": crate::identity::workload_labels("ns", "svc"),
                "annotations": {
                    "skyloom.io/service": "ns/svc", "skyloom.io/service-uid": "s1",
                    "skyloom.io/control-plane": "cp", "skyloom.io/template-hash": "abcd",
                    LAST_APPLIED_ANNOTATION: "{\"a\": \"copy\"}",
                },
                "managedFields": [{"manager": "skyloom", "operation": "Apply", "fieldsV1": {"f:spec": {}}}],
            },
            "spec": {
                "replicas": 4,
                "progressDeadlineSeconds": 120,
                "selector": {"matchLabels": {"skyloom.io/service-id": "x"}},
                "strategy": {"type": "RollingUpdate"},
                "template": {
                    "metadata": {"labels": {"skyloom.io/service-id": "x"}},
                    "spec": {
                        "containers": [{"name": "c", "image": "registry.example/m:1",
                            "env": [{"name": "BIG", "value": "x".repeat(4096)}],
                            "resources": {"requests": {"cpu": "2"}, "limits": {"nvidia.com/gpu": "1"}}}],
                        "initContainers": [{"name": "i", "image": "busybox",
                            "resources": {"requests": {"cpu": "3"}}}],
                        "volumes": [{"name": "v", "emptyDir": {}}],
                    },
                },
            },
            "status": {"replicas": 4, "availableReplicas": 3, "observedGeneration": 3,
                "conditions": [{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"}]},
        }))
        .unwrap()
    }

    #[test]
    fn a_member_deployment_keeps_what_its_readers_use() {
        let full = deployment();
        let mut trimmed = full.clone();
        member_deployment(&mut trimmed);
        assert_eq!(
            owner_of(&trimmed.metadata, "cp"),
            owner_of(&full.metadata, "cp")
        );
        assert!(owner_of(&trimmed.metadata, "cp").is_some());
        let (spec, full_spec) = (&trimmed.spec, &full.spec);
        assert_eq!(spec.replicas, Some(4));
        assert_eq!(spec.progress_deadline_seconds, Some(120));
        assert_eq!(spec.selector, full_spec.selector);
        assert_eq!(
            pod_requests(spec.template.spec.as_ref().unwrap()),
            pod_requests(full_spec.template.spec.as_ref().unwrap())
        );
        assert_eq!(trimmed.status, full.status);
        for key in ["uid", "generation", "resourceVersion", "name", "namespace"] {
            let get = |d: &Deployment| serde_json::to_value(&d.metadata).unwrap()[key].clone();
            assert_eq!(get(&trimmed), get(&full), "{key}");
        }
        assert_eq!(
            trimmed.metadata.annotations.as_ref().unwrap()["skyloom.io/template-hash"],
            "abcd"
        );
    }

    #[test]
    fn a_member_deployment_drops_what_nobody_reads() {
        let mut d = deployment();
        member_deployment(&mut d);
        assert!(d.metadata.managed_fields.is_none());
        assert!(
            !d.metadata
                .annotations
                .as_ref()
                .unwrap()
                .contains_key(LAST_APPLIED_ANNOTATION)
        );
        let spec = &d.spec;
        assert!(spec.strategy.is_none());
        assert!(spec.template.metadata.is_none());
        let pod = spec.template.spec.as_ref().unwrap();
        assert!(pod.volumes.is_none());
        assert!(pod.containers[0].image.is_none() && pod.containers[0].env.is_none());
        let size = serde_json::to_string(&d).unwrap().len();
        assert!(
            size * 4 < serde_json::to_string(&deployment()).unwrap().len(),
            "{size}"
        );
    }

    #[test]
    fn hub_objects_lose_managed_fields_and_the_last_applied_copy_only() {
        let mut secret: k8s_openapi::api::core::v1::Secret =
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "kc", "annotations": {LAST_APPLIED_ANNOTATION: "{\"data\": \"secret\"}", "keep": "me"},
                    "managedFields": [{"manager": "kubectl"}]},
                "data": {"kubeconfig": "YQ=="},
            }))
            .unwrap();
        hub_object(&mut secret);
        assert!(secret.metadata.managed_fields.is_none());
        let annotations = secret.metadata.annotations.as_ref().unwrap();
        assert_eq!(annotations.len(), 1);
        assert_eq!(annotations["keep"], "me");
        assert!(secret.data.unwrap().contains_key("kubeconfig"));
    }
}
