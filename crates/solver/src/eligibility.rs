//! Which clouds a service may use, and the rules that keep it off the others.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::snapshot::{Cloud, Service};
use crate::taint::TaintEffect;
use crate::units::display_amount;

/// A hard rule that keeps every replica of a service off a cloud.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum Exclusion {
    /// The cloud is not in `placement.clouds`.
    NotInAllowedClouds,
    /// The cloud's labels fail `placement.cloudSelector`.
    #[serde(rename_all = "camelCase")]
    SelectorMismatch {
        /// The first requirement that fails.
        requirement: String,
    },
    /// The cloud's region is not in `placement.regions`.
    #[serde(rename_all = "camelCase")]
    RegionNotAllowed {
        /// The cloud's region.
        region: String,
    },
    /// The cloud is being removed.
    Terminating,
    /// The cloud has a `NoExecute` taint the service does not tolerate.
    #[serde(rename_all = "camelCase")]
    UntoleratedTaint {
        /// The taint, `key=value:effect`.
        taint: String,
    },
    /// No single node of the cloud can hold one replica.
    #[serde(rename_all = "camelCase")]
    NodeTooSmall {
        /// The resource.
        resource: String,
        /// What one replica needs, in base units.
        needs: u64,
        /// What the largest node offers, in base units.
        largest: u64,
    },
}

/// A rule that allows replicas already on a cloud to stay but admits no new ones.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum NoNewReplicas {
    /// The cloud is cordoned.
    Cordoned,
    /// The cloud is not healthy (unreachable or unauthorised).
    Unhealthy,
    /// The cloud has a `NoSchedule` taint the service does not tolerate.
    #[serde(rename_all = "camelCase")]
    UntoleratedTaint {
        /// The taint, `key=value:effect`.
        taint: String,
    },
}

impl fmt::Display for Exclusion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Exclusion::NotInAllowedClouds => write!(f, "not in placement.clouds"),
            Exclusion::SelectorMismatch { requirement } => {
                write!(f, "cloudSelector needs {requirement}")
            }
            Exclusion::RegionNotAllowed { region } => write!(f, "region {region} not allowed"),
            Exclusion::Terminating => write!(f, "terminating"),
            Exclusion::UntoleratedTaint { taint } => write!(f, "untolerated taint {taint}"),
            Exclusion::NodeTooSmall {
                resource,
                needs,
                largest,
            } => write!(
                f,
                "no node fits {resource} {} (largest {})",
                display_amount(resource, *needs),
                display_amount(resource, *largest)
            ),
        }
    }
}

impl fmt::Display for NoNewReplicas {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NoNewReplicas::Cordoned => write!(f, "cordoned"),
            NoNewReplicas::Unhealthy => write!(f, "unhealthy"),
            NoNewReplicas::UntoleratedTaint { taint } => write!(f, "untolerated taint {taint}"),
        }
    }
}

/// What the rules allow a service on a cloud.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Replicas may run here.
    Open {
        /// Whether an untolerated `PreferNoSchedule` taint asks to avoid the cloud.
        discouraged: bool,
    },
    /// Only replicas already here may stay.
    KeepOnly(Vec<NoNewReplicas>),
    /// No replica may run here.
    Closed(Vec<Exclusion>),
}

impl Admission {
    /// Whether new replicas may be placed.
    pub fn is_open(&self) -> bool {
        matches!(self, Admission::Open { .. })
    }
}

/// Applies every rule of `service` to `cloud`. All failing rules are reported (fixing one is
/// not enough when several fail), hard exclusions first.
pub fn admission(service: &Service, cloud: &Cloud) -> Admission {
    let placement = &service.placement;
    let mut excluded = Vec::new();
    if let Some(allowed) = &placement.clouds
        && !allowed.iter().any(|name| name == &cloud.name)
    {
        excluded.push(Exclusion::NotInAllowedClouds);
    }
    if let Some(selector) = &placement.cloud_selector
        && let Some(requirement) = selector.first_mismatch(&cloud.labels)
    {
        excluded.push(Exclusion::SelectorMismatch { requirement });
    }
    if let Some(regions) = &placement.regions
        && !regions.iter().any(|r| r == &cloud.region)
    {
        excluded.push(Exclusion::RegionNotAllowed {
            region: cloud.region.clone(),
        });
    }
    if cloud.terminating {
        excluded.push(Exclusion::Terminating);
    }
    let untolerated = |effect: TaintEffect| {
        cloud
            .taints
            .iter()
            .filter(move |t| t.effect == effect)
            .filter(|t| !service.tolerations.iter().any(|tol| tol.tolerates(t)))
    };
    for taint in untolerated(TaintEffect::NoExecute) {
        excluded.push(Exclusion::UntoleratedTaint {
            taint: taint.to_string(),
        });
    }
    if let Some(node) = &cloud.largest_node {
        for (resource, &needs) in &service.demand {
            let largest = node.get(resource).copied().unwrap_or(0);
            if needs > largest {
                excluded.push(Exclusion::NodeTooSmall {
                    resource: resource.clone(),
                    needs,
                    largest,
                });
            }
        }
    }
    if !excluded.is_empty() {
        return Admission::Closed(excluded);
    }
    let mut no_new = Vec::new();
    if cloud.cordoned {
        no_new.push(NoNewReplicas::Cordoned);
    }
    if !cloud.healthy {
        no_new.push(NoNewReplicas::Unhealthy);
    }
    for taint in untolerated(TaintEffect::NoSchedule) {
        no_new.push(NoNewReplicas::UntoleratedTaint {
            taint: taint.to_string(),
        });
    }
    if !no_new.is_empty() {
        return Admission::KeepOnly(no_new);
    }
    Admission::Open {
        discouraged: untolerated(TaintEffect::PreferNoSchedule).next().is_some(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::selector::{LabelSelector, Requirement, SelectorOperator};
    use crate::taint::{Taint, Toleration, TolerationOperator};

    fn gpu_cloud() -> Cloud {
        let mut cloud = Cloud::new("aws");
        cloud.region = "us-east-1".to_owned();
        cloud
            .labels
            .insert("jurisdiction".to_owned(), "us".to_owned());
        cloud.largest_node = Some(BTreeMap::from([("nvidia.com/gpu".to_owned(), 1)]));
        cloud
    }

    #[test]
    fn all_failing_rules_are_reported() {
        let mut service = Service::new("ml", "chat", 2);
        service.placement.regions = Some(vec!["europe-west4".to_owned()]);
        service.placement.cloud_selector = Some(LabelSelector {
            match_labels: BTreeMap::new(),
            match_expressions: vec![Requirement {
                key: "jurisdiction".to_owned(),
                operator: SelectorOperator::In,
                values: vec!["eu".to_owned()],
            }],
        });
        service.demand.insert("nvidia.com/gpu".to_owned(), 4);
        let Admission::Closed(rules) = admission(&service, &gpu_cloud()) else {
            panic!("expected the cloud to be closed");
        };
        assert_eq!(rules.len(), 3, "{rules:?}");
        assert!(matches!(
            rules[2],
            Exclusion::NodeTooSmall {
                needs: 4,
                largest: 1,
                ..
            }
        ));
    }

    #[test]
    fn cordon_and_no_schedule_keep_existing_replicas() {
        let mut cloud = gpu_cloud();
        cloud.cordoned = true;
        cloud.taints.push(Taint {
            key: "maintenance".to_owned(),
            value: String::new(),
            effect: TaintEffect::NoSchedule,
        });
        let service = Service::new("ml", "chat", 2);
        assert!(matches!(admission(&service, &cloud), Admission::KeepOnly(r) if r.len() == 2));
        let mut tolerant = service;
        tolerant.tolerations.push(Toleration {
            operator: TolerationOperator::Exists,
            ..Toleration::default()
        });
        cloud.cordoned = false;
        assert!(admission(&tolerant, &cloud).is_open());
    }
}
