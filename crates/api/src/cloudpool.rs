//! `CloudPool`: one member cluster in one cloud and region.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::{
    api::resource::Quantity,
    apis::meta::v1::{Condition, Time},
};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::price::{MicroUsd, PriceError, parse_price};
use crate::schema::{
    DNS_LABEL_PATTERN, DNS_SUBDOMAIN_PATTERN, LABEL_KEY_PATTERN, LABEL_VALUE_PATTERN,
    conditions_schema, drop_description, price_map_schema, quantity_map_schema,
    status_quantity_map_schema,
};

/// The Secret key read when `kubeconfigSecretRef.key` is omitted.
pub const DEFAULT_KUBECONFIG_KEY: &str = "kubeconfig";
/// The performance score used when `performanceScore` is omitted: the baseline.
pub const DEFAULT_PERFORMANCE_SCORE: i32 = 100;

/// Desired state of a CloudPool: one member Kubernetes cluster, in one cloud provider and
/// region, where Skyloom may run AIService replicas. It carries the credentials reference, an
/// optional capacity budget, prices per resource-hour and a relative performance score.
// Each printcolumn(...) repeats `type_ = ...`, which clippy mistakes for duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "skyloom.io",
    version = "v1alpha1",
    kind = "CloudPool",
    plural = "cloudpools",
    shortname = "cp",
    category = "skyloom",
    status = "CloudPoolStatus",
    derive = "PartialEq",
    doc = "A CloudPool registers one member Kubernetes cluster (one cloud provider and region) where Skyloom may place AIService replicas.",
    printcolumn(name = "Provider", type_ = "string", json_path = ".spec.provider"),
    printcolumn(name = "Region", type_ = "string", json_path = ".spec.region"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "GPU Free/Total",
        type_ = "string",
        json_path = ".status.summary.gpu",
        description = "nvidia.com/gpu free for Skyloom / effective capacity"
    ),
    printcolumn(
        name = "CPU Free/Total",
        type_ = "string",
        json_path = ".status.summary.cpu",
        description = "CPU cores free for Skyloom / effective capacity"
    ),
    printcolumn(
        name = "$/GPU-h",
        type_ = "string",
        json_path = ".spec.prices.nvidia\\.com/gpu",
        description = "Price of one nvidia.com/gpu for one hour, USD"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct CloudPoolSpec {
    /// Cloud provider of the member cluster, a lower-case DNS label such as aws, gcp, azure or
    /// onprem. Used in explanations and by spread rules that count providers.
    #[schemars(length(min = 1, max = 63), pattern(DNS_LABEL_PATTERN))]
    pub provider: String,

    /// Region of the member cluster in the provider's own naming, lower-case letters, digits
    /// and hyphens, e.g. us-east-1, europe-west4, eastus. AIService placement.regions
    /// (data residency) matches against this value.
    #[schemars(length(min = 1, max = 63), pattern(DNS_LABEL_PATTERN))]
    pub region: String,

    /// Optional zone inside the region, e.g. us-east-1a. Informational.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), pattern(DNS_LABEL_PATTERN))]
    pub zone: Option<String>,

    /// The Secret holding the kubeconfig Skyloom uses to reach the member cluster. The Secret
    /// must live in the operator's own namespace: there is deliberately no namespace field, so
    /// that whoever may write CloudPools cannot make the operator read Secrets from other
    /// namespaces with the operator's privileges (a confused deputy).
    pub kubeconfig_secret_ref: SecretKeyRef,

    /// Optional capacity budget per resource name (cpu, memory, nvidia.com/gpu or any
    /// extended resource), as non-negative quantities. The effective capacity Skyloom plans
    /// with is, per resource, the minimum of this value and what is discovered from the
    /// member's Nodes minus what other workloads already use. Resources not listed are limited
    /// by discovery alone.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "quantity_map_schema")]
    pub capacity: BTreeMap<String, Quantity>,

    /// Price in USD per unit-hour per resource name, as a decimal string without exponent
    /// (at most 999999.999999): cpu per core-hour, memory per GiB-hour, nvidia.com/gpu per
    /// device-hour, other extended resources per unit-hour. A replica's hourly cost here is the
    /// sum over its requests of request times price. Resources without a price cost nothing.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "price_map_schema")]
    pub prices: BTreeMap<String, String>,

    /// Relative performance of this pool for AI work, 1 to 10000, where 100 is the baseline
    /// (e.g. 250 for a pool with accelerators 2.5 times as fast). Used by the performance term
    /// of each AIService's objective. Defaults to 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000))]
    pub performance_score: Option<i32>,

    /// When true, Skyloom places no new replicas here; replicas already running stay until
    /// moved for another reason. Defaults to false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cordoned: Option<bool>,

    /// Taints repel AIServices that do not tolerate them (see AIService spec.tolerations).
    /// Unique per key and effect.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["key", "effect"]))]
    pub taints: Vec<CloudPoolTaint>,
}

/// Reference to a key of a Secret in the operator's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret in the operator's namespace.
    #[schemars(length(min = 1, max = 253), pattern(DNS_SUBDOMAIN_PATTERN))]
    pub name: String,

    /// Key inside the Secret whose value is the kubeconfig. Defaults to "kubeconfig".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), pattern("^[-._a-zA-Z0-9]+$"))]
    pub key: Option<String>,
}

impl SecretKeyRef {
    /// The Secret key to read, with the default applied.
    pub fn key(&self) -> &str {
        self.key.as_deref().unwrap_or(DEFAULT_KUBECONFIG_KEY)
    }
}

/// A taint on a CloudPool.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CloudPoolTaint {
    /// Taint key, in label-key syntax, e.g. skyloom.io/maintenance.
    #[schemars(length(min = 1, max = 316), pattern(LABEL_KEY_PATTERN))]
    pub key: String,

    /// Optional taint value, in label-value syntax.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63), pattern(LABEL_VALUE_PATTERN))]
    pub value: Option<String>,

    /// What the taint does to AIServices that do not tolerate it: NoSchedule (no new
    /// replicas), PreferNoSchedule (avoid when another pool fits) or NoExecute (also move the
    /// replicas already here, make-before-break).
    pub effect: TaintEffect,
}

/// Effect of a CloudPool taint.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[schemars(transform = drop_description)]
pub enum TaintEffect {
    /// No new replicas of non-tolerating services.
    NoSchedule,
    /// New replicas of non-tolerating services go elsewhere when possible.
    PreferNoSchedule,
    /// Replicas of non-tolerating services are moved away.
    NoExecute,
}

impl CloudPoolSpec {
    /// The performance score, defaulting to 100.
    pub fn performance_score(&self) -> i32 {
        self.performance_score.unwrap_or(DEFAULT_PERFORMANCE_SCORE)
    }

    /// Whether the pool refuses new placements (default false).
    pub fn is_cordoned(&self) -> bool {
        self.cordoned.unwrap_or(false)
    }

    /// The declared capacity of one resource, if any.
    pub fn declared_capacity(&self, resource: &str) -> Option<&Quantity> {
        self.capacity.get(resource)
    }

    /// The price of one unit-hour of `resource` in micro-USD; `Ok(None)` when unpriced.
    pub fn price(&self, resource: &str) -> Result<Option<MicroUsd>, PriceError> {
        match self.prices.get(resource) {
            None => Ok(None),
            Some(text) => parse_price(text).map(Some),
        }
    }
}

/// Observed state of a CloudPool, written only by the operator through the status subresource.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CloudPoolStatus {
    /// The metadata.generation of the spec this status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Current conditions: Ready, Reachable, CredentialsAvailable, Reconciling, Stalled.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,

    /// Allocatable resources discovered from the member's schedulable Nodes.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "status_quantity_map_schema")]
    pub capacity: BTreeMap<String, Quantity>,

    /// Resources requested by the replicas Skyloom runs here.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "status_quantity_map_schema")]
    pub allocated: BTreeMap<String, Quantity>,

    /// Resources still available to Skyloom: the effective capacity (minimum of
    /// spec.capacity and discovered capacity minus foreign usage) minus allocated.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "status_quantity_map_schema")]
    pub free: BTreeMap<String, Quantity>,

    /// Number of schedulable Nodes in the member.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_count: Option<i32>,

    /// The member API server's version, e.g. v1.37.2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes_version: Option<String>,

    /// When the member was last probed successfully. Updated only when something else in
    /// status changes, so that idle pools cause no status writes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_probe_time: Option<Time>,

    /// Objects in the member that carry Skyloom's labels but belong to no current placement
    /// and could not be removed yet (e.g. left behind while the member was unreachable).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub orphans: Vec<OrphanRef>,

    /// When the credentials in the kubeconfig expire, if they carry an expiry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_expiry: Option<Time>,

    /// Short strings for `kubectl get cloudpools`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<CloudPoolSummary>,
}

/// A leftover object in a member cluster.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrphanRef {
    /// Namespace of the leftover object in the member.
    pub namespace: String,
    /// Name of the leftover object (a Deployment).
    pub name: String,
    /// Why it is still there, e.g. OwnerGone or DeleteFailed.
    pub reason: String,
}

/// Pre-formatted capacity figures for printer columns (JSONPath cannot compute "free/total").
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CloudPoolSummary {
    /// nvidia.com/gpu free/total, e.g. "3/8".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu: Option<String>,
    /// CPU cores free/total, e.g. "12/64".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<String>,
}

/// CloudPool condition types (plus [`crate::conditions::READY`], `RECONCILING`, `STALLED`).
pub mod condition {
    pub use crate::conditions::{READY, RECONCILING, STALLED};
    /// The member API server answered the last probe.
    pub const REACHABLE: &str = "Reachable";
    /// The kubeconfig Secret exists, is acceptable and authenticates.
    pub const CREDENTIALS_AVAILABLE: &str = "CredentialsAvailable";
    /// The member credential expires within an hour or has expired (abnormal-true; see
    /// `status.credentialsExpiry`). Rotate it, e.g. with `skyloom join` again.
    pub const CREDENTIALS_EXPIRING: &str = "CredentialsExpiring";
}

/// CloudPool condition reasons.
pub mod reason {
    pub use crate::conditions::reason::{INVALID_SPEC, NEW_GENERATION, RECONCILED};
    /// The member answered and its Nodes were read.
    pub const PROBED: &str = "Probed";
    /// The referenced Secret does not exist in the operator's namespace.
    pub const SECRET_NOT_FOUND: &str = "SecretNotFound";
    /// The Secret exists but has no such key.
    pub const SECRET_KEY_MISSING: &str = "SecretKeyMissing";
    /// The kubeconfig could not be parsed or has no usable context.
    pub const KUBECONFIG_REJECTED: &str = "KubeconfigRejected";
    /// The kubeconfig uses exec or auth-provider plugins, or local file paths, which are
    /// refused unless explicitly allowed.
    pub const INSECURE_KUBECONFIG: &str = "InsecureKubeconfig";
    /// The member rejected the credentials (401/403).
    pub const UNAUTHORIZED: &str = "Unauthorized";
    /// The member did not answer in time.
    pub const UNREACHABLE: &str = "Unreachable";
    /// The pool is cordoned: healthy, but takes no new replicas.
    pub const CORDONED: &str = "Cordoned";
    /// The member credential's token carries an expiry less than an hour away.
    pub const TOKEN_EXPIRING: &str = "TokenExpiring";
    /// The member credential's token expires in more than an hour, or carries no expiry.
    pub const TOKEN_VALID: &str = "TokenValid";
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> CloudPoolSpec {
        CloudPoolSpec {
            provider: "aws".into(),
            region: "us-east-1".into(),
            zone: None,
            kubeconfig_secret_ref: SecretKeyRef {
                name: "aws-kubeconfig".into(),
                key: None,
            },
            capacity: BTreeMap::new(),
            prices: BTreeMap::from([("nvidia.com/gpu".into(), "4.10".into())]),
            performance_score: None,
            cordoned: None,
            taints: vec![],
        }
    }

    #[test]
    fn defaults_are_applied_in_code() {
        let s = spec();
        assert_eq!(s.kubeconfig_secret_ref.key(), "kubeconfig");
        assert_eq!(s.performance_score(), 100);
        assert!(!s.is_cordoned());
        assert_eq!(s.price("nvidia.com/gpu"), Ok(Some(MicroUsd(4_100_000))));
        assert_eq!(s.price("cpu"), Ok(None));
    }

    #[test]
    fn omitted_optionals_are_not_serialized() {
        let json = serde_json::to_value(spec()).unwrap_or_default();
        let keys: Vec<_> = json
            .as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default();
        assert_eq!(
            keys,
            ["kubeconfigSecretRef", "prices", "provider", "region"]
        );
    }
}
