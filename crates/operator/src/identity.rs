//! How Skyloom names and marks what it creates in member clusters, and how it recognises its
//! own objects. A member object is Skyloom's only if it carries all of its marks: the
//! managed-by label, this control plane's id and the owning AIService's identity. Anything
//! else is never changed or deleted.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

/// Label on every object Skyloom creates.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// Value of [`MANAGED_BY_LABEL`].
pub const MANAGED_BY: &str = "skyloom";
/// Label selector matching Skyloom's objects (used on every member watch).
pub const MANAGED_SELECTOR: &str = "app.kubernetes.io/managed-by=skyloom";
/// Label carrying a stable hash of the AIService's namespace and name; the pod selector.
pub const SERVICE_ID_LABEL: &str = "skyloom.io/service-id";
/// Annotation with the owning AIService as `namespace/name`.
pub const SERVICE_ANNOTATION: &str = "skyloom.io/service";
/// Annotation with the owning AIService's UID.
pub const SERVICE_UID_ANNOTATION: &str = "skyloom.io/service-uid";
/// Annotation with the id of the control plane that owns the object.
pub const CONTROL_PLANE_ANNOTATION: &str = "skyloom.io/control-plane";
/// Label on member namespaces Skyloom created (only those may ever be deleted by it).
pub const CREATED_NAMESPACE_LABEL: &str = "skyloom.io/created-by";
/// Field manager of every write Skyloom makes.
pub const FIELD_MANAGER: &str = "skyloom";
/// Finalizer on AIServices: their member Deployments are removed before they go.
pub const FINALIZER: &str = "skyloom.io/member-cleanup";

/// A stable, DNS-label-safe id for the AIService `namespace/name` (hex of a SHA-256 prefix).
/// Distinct for `bar/lovely-panda` and `bar-lovely/panda`.
pub fn service_id(namespace: &str, name: &str) -> String {
    let mut h = Sha256::new();
    h.update(namespace.as_bytes());
    h.update([0u8]);
    h.update(name.as_bytes());
    let digest = h.finalize();
    digest[..10].iter().map(|b| format!("{b:02x}")).collect()
}

/// The labels of a member Deployment and its Pods for an AIService.
pub fn workload_labels(namespace: &str, name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (MANAGED_BY_LABEL.to_owned(), MANAGED_BY.to_owned()),
        (SERVICE_ID_LABEL.to_owned(), service_id(namespace, name)),
    ])
}

/// The ownership annotations of a member Deployment.
pub fn ownership_annotations(
    namespace: &str,
    name: &str,
    uid: &str,
    control_plane: &str,
) -> BTreeMap<String, String> {
    BTreeMap::from([
        (SERVICE_ANNOTATION.to_owned(), format!("{namespace}/{name}")),
        (SERVICE_UID_ANNOTATION.to_owned(), uid.to_owned()),
        (
            CONTROL_PLANE_ANNOTATION.to_owned(),
            control_plane.to_owned(),
        ),
    ])
}

/// Which AIService a member object belongs to, if it carries all of this control plane's
/// marks.
pub fn owner_of(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    control_plane: &str,
) -> Option<(String, String)> {
    let labels = meta.labels.as_ref()?;
    if labels.get(MANAGED_BY_LABEL).map(String::as_str) != Some(MANAGED_BY) {
        return None;
    }
    let annotations = meta.annotations.as_ref()?;
    if annotations
        .get(CONTROL_PLANE_ANNOTATION)
        .map(String::as_str)
        != Some(control_plane)
    {
        return None;
    }
    let (ns, name) = annotations.get(SERVICE_ANNOTATION)?.split_once('/')?;
    if labels.get(SERVICE_ID_LABEL) != Some(&service_id(ns, name)) {
        return None;
    }
    Some((ns.to_owned(), name.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    #[test]
    fn ids_are_stable_distinct_and_label_safe() {
        let a = service_id("bar", "lovely-panda");
        let b = service_id("bar-lovely", "panda");
        assert_ne!(a, b);
        assert_eq!(a, service_id("bar", "lovely-panda"));
        assert_eq!(a.len(), 20);
        let long = service_id(&"n".repeat(63), &"x".repeat(253));
        assert!(long.len() <= 63 && long.bytes().all(|c| c.is_ascii_hexdigit()));
    }

    #[test]
    fn only_fully_marked_objects_are_owned() {
        let mut meta = ObjectMeta {
            labels: Some(workload_labels("team-a", "llm")),
            annotations: Some(ownership_annotations("team-a", "llm", "uid-1", "cp-1")),
            ..Default::default()
        };
        assert_eq!(
            owner_of(&meta, "cp-1"),
            Some(("team-a".into(), "llm".into()))
        );
        assert_eq!(
            owner_of(&meta, "cp-2"),
            None,
            "another control plane's object"
        );
        meta.annotations
            .as_mut()
            .unwrap()
            .insert(SERVICE_ANNOTATION.into(), "team-b/llm".into());
        assert_eq!(
            owner_of(&meta, "cp-1"),
            None,
            "id label and annotation disagree"
        );
        meta.labels = None;
        assert_eq!(owner_of(&meta, "cp-1"), None);
    }
}
