//! The objects `skyloom join` writes, built without a client so that `--dry-run` prints
//! exactly what a real run applies.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Namespace, Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use skyloom_api::cloudpool::{CloudPoolSpec, DEFAULT_KUBECONFIG_KEY, SecretKeyRef};
use skyloom_api::{CloudPool, parse_price};

/// Namespace in the member that holds the ServiceAccounts `join` creates.
pub const MEMBER_NAMESPACE: &str = "skyloom-member";
/// Field manager of every server-side apply `join` makes.
pub const FIELD_MANAGER: &str = "skyloom-join";
/// Label the operator uses to recognise kubeconfig Secrets.
pub const KUBECONFIG_LABEL: &str = "skyloom.io/kubeconfig";
/// Label naming the CloudPool an object was created for.
pub const POOL_LABEL: &str = "skyloom.io/pool";
/// `app.kubernetes.io/managed-by` value on everything `join` creates; `unjoin` deletes only
/// objects that carry it.
pub const MANAGED_BY: &str = "skyloom-join";
const MANAGED_BY_KEY: &str = "app.kubernetes.io/managed-by";

/// What `join` registers, validated before anything is touched.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolRequest {
    /// CloudPool name (a DNS label).
    pub pool: String,
    /// The operator's namespace on the hub.
    pub operator_namespace: String,
    /// `spec.provider`.
    pub provider: String,
    /// `spec.region`.
    pub region: String,
    /// `spec.zone`.
    pub zone: Option<String>,
    /// `spec.capacity`.
    pub capacity: BTreeMap<String, Quantity>,
    /// `spec.prices`.
    pub prices: BTreeMap<String, String>,
    /// `spec.performanceScore`.
    pub performance_score: Option<i32>,
    /// Labels of the CloudPool.
    pub labels: BTreeMap<String, String>,
}

/// A flag value that `join` refuses, with the reason.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InvalidFlag {
    /// The pool name is not a DNS label short enough for the derived object names.
    #[error(
        "--name {0:?}: must be a DNS label (lower-case letters, digits and '-', starting and ending with a letter or digit) of at most 52 characters"
    )]
    PoolName(String),
    /// A `KEY=VALUE` flag without `=` or with an empty side.
    #[error("--{flag} {value:?}: expected KEY=VALUE")]
    Pair {
        /// The flag.
        flag: &'static str,
        /// What was given.
        value: String,
    },
    /// The same key twice.
    #[error("--{flag}: {key:?} given twice")]
    Duplicate {
        /// The flag.
        flag: &'static str,
        /// The repeated key.
        key: String,
    },
    /// A price that is not a plain decimal USD amount.
    #[error("--price {resource}={value}: {reason}")]
    Price {
        /// Resource name.
        resource: String,
        /// What was given.
        value: String,
        /// Why it was refused.
        reason: String,
    },
    /// A quantity that is obviously not one.
    #[error("--capacity {resource}={value}: not a Kubernetes quantity (e.g. 64, 500m, 256Gi)")]
    Quantity {
        /// Resource name.
        resource: String,
        /// What was given.
        value: String,
    },
}

/// Whether `name` is a DNS-1123 label of at most `max` characters.
pub fn is_dns_label(name: &str, max: usize) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= max
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.last().is_some_and(u8::is_ascii_alphanumeric)
}

/// Checks a pool name: derived names such as `<pool>-kubeconfig` and `skyloom-<pool>-token`
/// must stay valid, so the name is a DNS label of at most 52 characters.
pub fn validate_pool_name(pool: &str) -> Result<(), InvalidFlag> {
    if is_dns_label(pool, 52) {
        Ok(())
    } else {
        Err(InvalidFlag::PoolName(pool.to_owned()))
    }
}

/// Parses repeated `KEY=VALUE` flags into a map, refusing duplicates.
pub fn parse_pairs(
    flag: &'static str,
    values: &[String],
) -> Result<BTreeMap<String, String>, InvalidFlag> {
    let mut out = BTreeMap::new();
    for value in values {
        let Some((k, v)) = value.split_once('=') else {
            return Err(InvalidFlag::Pair {
                flag,
                value: value.clone(),
            });
        };
        let (k, v) = (k.trim(), v.trim());
        if k.is_empty() || (v.is_empty() && flag != "label") {
            return Err(InvalidFlag::Pair {
                flag,
                value: value.clone(),
            });
        }
        if out.insert(k.to_owned(), v.to_owned()).is_some() {
            return Err(InvalidFlag::Duplicate {
                flag,
                key: k.to_owned(),
            });
        }
    }
    Ok(out)
}

/// A cheap syntactic check of a quantity (the API server validates it fully): digits with an
/// optional fraction, then an optional suffix of letters, or an exponent.
fn looks_like_quantity(q: &str) -> bool {
    let q = q.strip_prefix('+').unwrap_or(q);
    let number_end = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(q.len());
    let (number, suffix) = q.split_at(number_end);
    let number_ok = number.chars().any(|c| c.is_ascii_digit()) && number.matches('.').count() <= 1;
    let suffix_ok = matches!(
        suffix,
        "" | "m" | "k" | "M" | "G" | "T" | "P" | "E" | "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei"
    ) || (suffix.starts_with(['e', 'E'])
        && suffix[1..]
            .trim_start_matches(['+', '-'])
            .chars()
            .all(|c| c.is_ascii_digit())
        && suffix.len() > 1);
    number_ok && suffix_ok
}

/// Parses `--capacity RES=QTY` flags.
pub fn parse_capacity(values: &[String]) -> Result<BTreeMap<String, Quantity>, InvalidFlag> {
    parse_pairs("capacity", values)?
        .into_iter()
        .map(|(resource, value)| {
            if looks_like_quantity(&value) {
                Ok((resource, Quantity(value)))
            } else {
                Err(InvalidFlag::Quantity { resource, value })
            }
        })
        .collect()
}

/// Parses `--price RES=USD` flags with the same rules as the CRD.
pub fn parse_prices(values: &[String]) -> Result<BTreeMap<String, String>, InvalidFlag> {
    let prices = parse_pairs("price", values)?;
    for (resource, value) in &prices {
        if let Err(e) = parse_price(value) {
            return Err(InvalidFlag::Price {
                resource: resource.clone(),
                value: value.clone(),
                reason: e.to_string(),
            });
        }
    }
    Ok(prices)
}

fn labels(pool: &str, extra: &[(&str, &str)]) -> BTreeMap<String, String> {
    let mut l = BTreeMap::from([
        (MANAGED_BY_KEY.to_owned(), MANAGED_BY.to_owned()),
        ("app.kubernetes.io/part-of".to_owned(), "skyloom".to_owned()),
        (POOL_LABEL.to_owned(), pool.to_owned()),
    ]);
    for (k, v) in extra {
        l.insert((*k).to_owned(), (*v).to_owned());
    }
    l
}

/// Whether `meta` carries the marks of an object `join` created for `pool`.
pub fn is_ours(meta: &ObjectMeta, pool: &str) -> bool {
    let labels = meta.labels.as_ref();
    let get = |k: &str| labels.and_then(|l| l.get(k)).map(String::as_str);
    get(MANAGED_BY_KEY) == Some(MANAGED_BY) && get(POOL_LABEL) == Some(pool)
}

/// Name of the ServiceAccount (and ClusterRole, ClusterRoleBinding) in the member.
pub fn member_identity(pool: &str) -> String {
    format!("skyloom-{pool}")
}

/// Name of the long-lived token Secret in the member.
pub fn token_secret_name(pool: &str) -> String {
    format!("skyloom-{pool}-token")
}

/// Name of the kubeconfig Secret on the hub.
pub fn kubeconfig_secret_name(pool: &str) -> String {
    format!("{pool}-kubeconfig")
}

fn meta(name: &str, namespace: Option<&str>, pool: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: namespace.map(str::to_owned),
        labels: Some(labels(pool, &[])),
        ..ObjectMeta::default()
    }
}

fn rule(groups: &[&str], resources: &[&str], verbs: &[&str]) -> PolicyRule {
    let strings = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    PolicyRule {
        api_groups: Some(strings(groups)),
        resources: Some(strings(resources)),
        verbs: strings(verbs),
        ..PolicyRule::default()
    }
}

/// The rules the operator needs in a member, and nothing more: capacity discovery (nodes,
/// pods), tenant namespaces, the Deployments it realises, Events, and a self check.
pub fn member_rules() -> Vec<PolicyRule> {
    vec![
        rule(&[""], &["nodes"], &["get", "list", "watch"]),
        rule(&[""], &["pods"], &["list", "watch"]),
        rule(
            &[""],
            &["namespaces"],
            &["get", "list", "watch", "create", "delete"],
        ),
        rule(
            &["apps"],
            &["deployments"],
            &[
                "get", "list", "watch", "create", "patch", "update", "delete",
            ],
        ),
        rule(&["apps"], &["deployments/status"], &["get"]),
        rule(&["", "events.k8s.io"], &["events"], &["create"]),
        rule(
            &["authorization.k8s.io"],
            &["selfsubjectaccessreviews"],
            &["create"],
        ),
    ]
}

/// The objects `join` applies in the member cluster.
#[derive(Debug, Clone)]
pub struct MemberObjects {
    /// `skyloom-member`.
    pub namespace: Namespace,
    /// `skyloom-<pool>`.
    pub service_account: ServiceAccount,
    /// `skyloom-<pool>` with [`member_rules`].
    pub cluster_role: ClusterRole,
    /// Binds the ClusterRole to the ServiceAccount.
    pub binding: ClusterRoleBinding,
    /// The long-lived token Secret; `None` when a TokenRequest with a duration is used.
    pub token_secret: Option<Secret>,
}

/// Builds the member-side objects for `pool`.
pub fn member_objects(pool: &str, long_lived_token: bool) -> MemberObjects {
    let identity = member_identity(pool);
    let namespace = Namespace {
        metadata: ObjectMeta {
            name: Some(MEMBER_NAMESPACE.to_owned()),
            labels: Some(BTreeMap::from([
                ("app.kubernetes.io/part-of".to_owned(), "skyloom".to_owned()),
                (MANAGED_BY_KEY.to_owned(), MANAGED_BY.to_owned()),
            ])),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    };
    let service_account = ServiceAccount {
        metadata: meta(&identity, Some(MEMBER_NAMESPACE), pool),
        automount_service_account_token: Some(false),
        ..ServiceAccount::default()
    };
    let cluster_role = ClusterRole {
        metadata: meta(&identity, None, pool),
        rules: Some(member_rules()),
        ..ClusterRole::default()
    };
    let binding = ClusterRoleBinding {
        metadata: meta(&identity, None, pool),
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".to_owned()),
            kind: "ClusterRole".to_owned(),
            name: identity.clone(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".to_owned(),
            name: identity.clone(),
            namespace: Some(MEMBER_NAMESPACE.to_owned()),
            ..Subject::default()
        }]),
    };
    let token_secret = long_lived_token.then(|| {
        let mut m = meta(&token_secret_name(pool), Some(MEMBER_NAMESPACE), pool);
        m.annotations = Some(BTreeMap::from([(
            "kubernetes.io/service-account.name".to_owned(),
            identity.clone(),
        )]));
        Secret {
            metadata: m,
            type_: Some("kubernetes.io/service-account-token".to_owned()),
            ..Secret::default()
        }
    });
    MemberObjects {
        namespace,
        service_account,
        cluster_role,
        binding,
        token_secret,
    }
}

/// The kubeconfig Secret on the hub, in the operator's namespace.
pub fn hub_secret(request: &PoolRequest, kubeconfig_yaml: &str) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(kubeconfig_secret_name(&request.pool)),
            namespace: Some(request.operator_namespace.clone()),
            labels: Some(labels(&request.pool, &[(KUBECONFIG_LABEL, "true")])),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".to_owned()),
        data: Some(BTreeMap::from([(
            DEFAULT_KUBECONFIG_KEY.to_owned(),
            ByteString(kubeconfig_yaml.as_bytes().to_vec()),
        )])),
        ..Secret::default()
    }
}

/// The CloudPool on the hub.
pub fn cloud_pool(request: &PoolRequest) -> CloudPool {
    let mut pool = CloudPool::new(
        &request.pool,
        CloudPoolSpec {
            provider: request.provider.clone(),
            region: request.region.clone(),
            zone: request.zone.clone(),
            kubeconfig_secret_ref: SecretKeyRef {
                name: kubeconfig_secret_name(&request.pool),
                key: None,
            },
            capacity: request.capacity.clone(),
            prices: request.prices.clone(),
            performance_score: request.performance_score,
            cordoned: None,
            taints: Vec::new(),
        },
    );
    let mut l = request.labels.clone();
    l.insert(MANAGED_BY_KEY.to_owned(), MANAGED_BY.to_owned());
    pool.metadata.labels = Some(l);
    pool
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn pool_names_must_be_short_dns_labels() {
        assert!(validate_pool_name("aws-us-east-1").is_ok());
        for bad in ["", "AWS", "-a", "a-", "a.b", "a_b", &"a".repeat(53)] {
            assert!(validate_pool_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn pairs_are_parsed_and_checked() {
        let m = parse_pairs("label", &strings(&["team=ml", "tier="])).unwrap();
        assert_eq!(m.get("team").map(String::as_str), Some("ml"));
        assert_eq!(m.get("tier").map(String::as_str), Some(""));
        assert!(parse_pairs("price", &strings(&["cpu"])).is_err());
        assert!(parse_pairs("price", &strings(&["=1"])).is_err());
        assert!(matches!(
            parse_pairs("price", &strings(&["cpu=1", "cpu=2"])),
            Err(InvalidFlag::Duplicate { .. })
        ));
    }

    #[test]
    fn capacity_and_prices_are_validated() {
        let c = parse_capacity(&strings(&[
            "cpu=64",
            "memory=256Gi",
            "nvidia.com/gpu=8",
            "cpu2=500m",
            "x=1e3",
        ]))
        .unwrap();
        assert_eq!(c.get("memory"), Some(&Quantity("256Gi".into())));
        for bad in ["cpu=lots", "cpu=1Gb", "cpu=.", "cpu=1e"] {
            assert!(parse_capacity(&strings(&[bad])).is_err(), "{bad}");
        }
        let p = parse_prices(&strings(&["nvidia.com/gpu=2.10"])).unwrap();
        assert_eq!(p.get("nvidia.com/gpu").map(String::as_str), Some("2.10"));
        assert!(parse_prices(&strings(&["cpu=-1"])).is_err());
        assert!(parse_prices(&strings(&["cpu=1e3"])).is_err());
    }

    #[test]
    fn member_rbac_is_exactly_what_the_operator_needs() {
        let rules = member_rules();
        let mut flat: Vec<(String, String, String)> = Vec::new();
        for r in &rules {
            for g in r.api_groups.iter().flatten() {
                for res in r.resources.iter().flatten() {
                    for v in &r.verbs {
                        flat.push((g.clone(), res.clone(), v.clone()));
                    }
                }
            }
        }
        assert!(!flat.iter().any(|(_, r, _)| r == "secrets" || r == "*"));
        assert!(!flat.iter().any(|(g, _, v)| g == "*" || v == "*"));
        assert!(flat.contains(&("".into(), "nodes".into(), "list".into())));
        assert!(flat.contains(&("apps".into(), "deployments".into(), "delete".into())));
        assert!(!flat.contains(&("".into(), "pods".into(), "get".into())));
        assert_eq!(flat.len(), 3 + 2 + 5 + 7 + 1 + 2 + 1);
    }

    #[test]
    fn objects_carry_ownership_marks_and_names() {
        let m = member_objects("gcp-eu", true);
        assert_eq!(
            m.service_account.metadata.name.as_deref(),
            Some("skyloom-gcp-eu")
        );
        assert!(is_ours(&m.cluster_role.metadata, "gcp-eu"));
        assert!(!is_ours(&m.cluster_role.metadata, "other"));
        let token = m.token_secret.expect("long-lived token secret");
        assert_eq!(
            token.type_.as_deref(),
            Some("kubernetes.io/service-account-token")
        );
        assert!(member_objects("gcp-eu", false).token_secret.is_none());

        let request = PoolRequest {
            pool: "gcp-eu".into(),
            operator_namespace: "skyloom-system".into(),
            provider: "gcp".into(),
            region: "europe-west4".into(),
            zone: None,
            capacity: BTreeMap::new(),
            prices: BTreeMap::from([("cpu".into(), "0.03".into())]),
            performance_score: Some(120),
            labels: BTreeMap::from([("team".into(), "ml".into())]),
        };
        let secret = hub_secret(&request, "kind: Config\n");
        assert_eq!(
            secret.metadata.labels.unwrap().get(KUBECONFIG_LABEL),
            Some(&"true".to_owned())
        );
        let pool = serde_json::to_value(cloud_pool(&request)).unwrap();
        assert_eq!(pool["apiVersion"], "skyloom.io/v1alpha1");
        assert_eq!(
            pool["spec"]["kubeconfigSecretRef"]["name"],
            "gcp-eu-kubeconfig"
        );
        assert_eq!(pool["spec"]["performanceScore"], 120);
        assert_eq!(pool["metadata"]["labels"]["team"], "ml");
        assert!(pool.get("status").is_none() || pool["status"].is_null());
    }
}
