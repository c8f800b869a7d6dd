//! What-if edits on the planning input (`--without`, `--set-price`, `--set-capacity`) and
//! the current placement (`--current`).

use std::collections::BTreeMap;
use std::path::Path;

use skyloom::quantity::to_base_units;
use skyloom_solver::Cloud;

/// Why a what-if could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum WhatIfError {
    /// Not `CLOUD/RESOURCE=VALUE`.
    #[error(
        "{flag} {text:?}: expected CLOUD/RESOURCE=VALUE, e.g. aws-us-east-1/nvidia.com/gpu=2.10"
    )]
    Syntax {
        /// The flag.
        flag: &'static str,
        /// What was given.
        text: String,
    },
    /// The value cannot be read.
    #[error("{flag} {text:?}: {message}")]
    Value {
        /// The flag.
        flag: &'static str,
        /// What was given.
        text: String,
        /// Why.
        message: String,
    },
    /// No such cloud.
    #[error("{flag}: no CloudPool named {cloud:?} (known: {known})")]
    UnknownCloud {
        /// The flag.
        flag: &'static str,
        /// The name given.
        cloud: String,
        /// The CloudPools read.
        known: String,
    },
    /// The current-placement file cannot be read.
    #[error("--current {path}: {message}")]
    Current {
        /// The file.
        path: String,
        /// Why.
        message: String,
    },
}

/// One `CLOUD/RESOURCE=VALUE` edit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Edit {
    /// The cloud.
    pub cloud: String,
    /// The resource.
    pub resource: String,
    /// The value, as given.
    pub value: String,
}

/// Parses `CLOUD/RESOURCE=VALUE`. The cloud is everything before the first `/` (CloudPool
/// names cannot contain one); the resource may contain more, as in `nvidia.com/gpu`.
pub fn parse_edit(flag: &'static str, text: &str) -> Result<Edit, WhatIfError> {
    let syntax = || WhatIfError::Syntax {
        flag,
        text: text.to_owned(),
    };
    let (target, value) = text.split_once('=').ok_or_else(syntax)?;
    let (cloud, resource) = target.split_once('/').ok_or_else(syntax)?;
    if cloud.is_empty() || resource.is_empty() || value.is_empty() {
        return Err(syntax());
    }
    Ok(Edit {
        cloud: cloud.to_owned(),
        resource: resource.to_owned(),
        value: value.to_owned(),
    })
}

fn known_clouds(clouds: &[Cloud]) -> String {
    clouds
        .iter()
        .map(|c| c.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn find<'a>(
    flag: &'static str,
    clouds: &'a mut [Cloud],
    name: &str,
) -> Result<&'a mut Cloud, WhatIfError> {
    let known = known_clouds(clouds);
    clouds
        .iter_mut()
        .find(|c| c.name == name)
        .ok_or_else(|| WhatIfError::UnknownCloud {
            flag,
            cloud: name.to_owned(),
            known,
        })
}

/// The what-ifs of one run.
#[derive(Clone, Debug, Default)]
pub struct WhatIfs {
    /// Clouds to leave out.
    pub without: Vec<String>,
    /// Price overrides, USD per unit-hour.
    pub prices: Vec<Edit>,
    /// Capacity overrides, Kubernetes quantities.
    pub capacities: Vec<Edit>,
}

/// Applies the what-ifs to the solver's clouds.
pub fn apply(clouds: &mut Vec<Cloud>, what_ifs: &WhatIfs) -> Result<(), WhatIfError> {
    for edit in &what_ifs.prices {
        let flag = "--set-price";
        let price = skyloom_api::parse_price(&edit.value).map_err(|e| WhatIfError::Value {
            flag,
            text: format!("{}/{}={}", edit.cloud, edit.resource, edit.value),
            message: e.to_string(),
        })?;
        find(flag, clouds, &edit.cloud)?
            .prices
            .insert(edit.resource.clone(), price.0);
    }
    for edit in &what_ifs.capacities {
        let flag = "--set-capacity";
        let amount =
            to_base_units(&edit.resource, &edit.value).map_err(|e| WhatIfError::Value {
                flag,
                text: format!("{}/{}={}", edit.cloud, edit.resource, edit.value),
                message: e.to_string(),
            })?;
        find(flag, clouds, &edit.cloud)?
            .capacity
            .insert(edit.resource.clone(), amount);
    }
    for name in &what_ifs.without {
        let flag = "--without";
        find(flag, clouds, name)?;
        clouds.retain(|c| &c.name != name);
    }
    Ok(())
}

/// What a service holds now, per cloud.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Held {
    /// Running replicas.
    pub replicas: BTreeMap<String, u32>,
    /// Failover reserve, in replicas (from a previous plan).
    pub reserve: BTreeMap<String, u32>,
}

/// What each service (`namespace/name`) holds now.
pub type Current = BTreeMap<String, Held>;

/// Reads the current placement: the output of a previous `skyloom plan -o json` (or
/// `-o yaml`), whose `services[].placements[]` give the replicas and reserve per cloud, or
/// AIService
/// manifests whose `status.placements[]` give them (`available`, else `desired`).
pub fn read_current(path: &Path) -> Result<Current, WhatIfError> {
    let display = path.display().to_string();
    let fail = |message: String| WhatIfError::Current {
        path: display.clone(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
    let mut current = Current::new();
    for (line, document) in super::input::documents(&text) {
        let value: serde_json::Value = serde_saphyr::from_str(&document)
            .map_err(|e| fail(format!("document at line {line}: {e}")))?;
        if let Some(services) = value.get("services").and_then(|s| s.as_array()) {
            for (index, service) in services.iter().enumerate() {
                let key = service_key(service, &["namespace"], &["name"])
                    .ok_or_else(|| fail(format!("services[{index}] has no namespace and name")))?;
                let placements = service.get("placements").and_then(|p| p.as_array());
                current.insert(
                    key,
                    Held {
                        replicas: counts(placements, &["replicas"]),
                        reserve: counts(placements, &["reserve"]),
                    },
                );
            }
        } else if value.get("kind").and_then(|k| k.as_str()) == Some("AIService") {
            let key = service_key(&value, &["metadata", "namespace"], &["metadata", "name"])
                .ok_or_else(|| fail(format!("AIService at line {line} has no metadata.name")))?;
            let placements = value
                .get("status")
                .and_then(|s| s.get("placements"))
                .and_then(|p| p.as_array());
            current.insert(
                key,
                Held {
                    replicas: counts(placements, &["available", "desired"]),
                    reserve: BTreeMap::new(),
                },
            );
        } else {
            return Err(fail(format!(
                "document at line {line} is neither `skyloom plan` output nor an AIService"
            )));
        }
    }
    Ok(current)
}

fn service_key(value: &serde_json::Value, namespace: &[&str], name: &[&str]) -> Option<String> {
    let get = |path: &[&str]| {
        path.iter()
            .try_fold(value, |v, key| v.get(key))
            .and_then(|v| v.as_str())
            .map(str::to_owned)
    };
    let name = get(name)?;
    let namespace = get(namespace).unwrap_or_else(|| "default".to_owned());
    Some(format!("{namespace}/{name}"))
}

fn counts(placements: Option<&Vec<serde_json::Value>>, fields: &[&str]) -> BTreeMap<String, u32> {
    placements
        .into_iter()
        .flatten()
        .filter_map(|p| {
            let cloud = p.get("cloud")?.as_str()?.to_owned();
            let count = fields.iter().find_map(|f| p.get(*f)?.as_u64())?;
            Some((cloud, u32::try_from(count).unwrap_or(u32::MAX)))
        })
        .filter(|(_, count)| *count > 0)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edits_split_at_the_first_slash() {
        let edit = parse_edit("--set-price", "gcp-eu/nvidia.com/gpu=2.10").expect("parses");
        assert_eq!(edit.cloud, "gcp-eu");
        assert_eq!(edit.resource, "nvidia.com/gpu");
        assert_eq!(edit.value, "2.10");
        assert!(parse_edit("--set-price", "gcp-eu=2").is_err());
        assert!(parse_edit("--set-price", "/cpu=2").is_err());
    }

    #[test]
    fn edits_apply_or_name_the_problem() {
        let mut clouds = vec![Cloud::new("aws"), Cloud::new("gcp")];
        let what_ifs = WhatIfs {
            without: vec!["gcp".to_owned()],
            prices: vec![parse_edit("--set-price", "aws/cpu=0.05").expect("parses")],
            capacities: vec![parse_edit("--set-capacity", "aws/memory=2Gi").expect("parses")],
        };
        apply(&mut clouds, &what_ifs).expect("applies");
        assert_eq!(clouds.len(), 1);
        assert_eq!(clouds[0].prices.get("cpu"), Some(&50_000));
        assert_eq!(clouds[0].capacity.get("memory"), Some(&(2 << 30)));
        let bad = WhatIfs {
            prices: vec![parse_edit("--set-price", "aws/cpu=NaN").expect("parses")],
            ..WhatIfs::default()
        };
        let message = apply(&mut clouds, &bad)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(message.contains("aws/cpu=NaN"), "{message}");
        let unknown = WhatIfs {
            without: vec!["azure".to_owned()],
            ..WhatIfs::default()
        };
        let message = apply(&mut clouds, &unknown)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            message.contains("azure") && message.contains("aws"),
            "{message}"
        );
    }
}
