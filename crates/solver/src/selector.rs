//! Label selectors over cloud labels, with Kubernetes semantics.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// A label selector: every `matchLabels` pair and every expression must match.
/// An empty selector matches every cloud.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabelSelector {
    /// Labels that must be present with exactly these values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
    /// Set-based requirements.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<Requirement>,
}

/// One set-based requirement of a [`LabelSelector`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Requirement {
    /// The label key.
    pub key: String,
    /// How the label's value is tested.
    pub operator: SelectorOperator,
    /// Values for `In` and `NotIn` (non-empty); empty for `Exists` and `DoesNotExist`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

/// The operator of a [`Requirement`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum SelectorOperator {
    /// The label is present with one of the values.
    In,
    /// The label is absent, or present with none of the values.
    NotIn,
    /// The label is present.
    Exists,
    /// The label is absent.
    DoesNotExist,
}

impl LabelSelector {
    /// Whether `labels` satisfy this selector.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.first_mismatch(labels).is_none()
    }

    /// The first requirement (in `matchLabels` key order, then expression order) that `labels`
    /// fail, rendered for explanations; `None` when the selector matches.
    pub fn first_mismatch(&self, labels: &BTreeMap<String, String>) -> Option<String> {
        for (key, value) in &self.match_labels {
            if labels.get(key) != Some(value) {
                return Some(format!("{key}={value}"));
            }
        }
        self.match_expressions
            .iter()
            .find(|r| !r.matches(labels))
            .map(ToString::to_string)
    }

    /// Checks the structural rules Kubernetes enforces: `In`/`NotIn` need values,
    /// `Exists`/`DoesNotExist` take none, keys are non-empty.
    pub fn check(&self) -> Result<(), String> {
        for key in self.match_labels.keys() {
            if key.is_empty() {
                return Err("matchLabels has an empty key".to_owned());
            }
        }
        for (index, r) in self.match_expressions.iter().enumerate() {
            if r.key.is_empty() {
                return Err(format!("matchExpressions[{index}].key is empty"));
            }
            match r.operator {
                SelectorOperator::In | SelectorOperator::NotIn if r.values.is_empty() => {
                    return Err(format!(
                        "matchExpressions[{index}] ({}): operator {:?} needs at least one value",
                        r.key, r.operator
                    ));
                }
                SelectorOperator::Exists | SelectorOperator::DoesNotExist
                    if !r.values.is_empty() =>
                {
                    return Err(format!(
                        "matchExpressions[{index}] ({}): operator {:?} takes no values",
                        r.key, r.operator
                    ));
                }
                _ => {}
            }
        }
        Ok(())
    }
}

impl Requirement {
    /// Whether `labels` satisfy this requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let value = labels.get(&self.key);
        match self.operator {
            SelectorOperator::In => value.is_some_and(|v| self.values.contains(v)),
            SelectorOperator::NotIn => value.is_none_or(|v| !self.values.contains(v)),
            SelectorOperator::Exists => value.is_some(),
            SelectorOperator::DoesNotExist => value.is_none(),
        }
    }
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.operator {
            SelectorOperator::In => write!(f, "{} in ({})", self.key, self.values.join(",")),
            SelectorOperator::NotIn => write!(f, "{} notin ({})", self.key, self.values.join(",")),
            SelectorOperator::Exists => write!(f, "{}", self.key),
            SelectorOperator::DoesNotExist => write!(f, "!{}", self.key),
        }
    }
}

impl fmt::Display for LabelSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts: Vec<String> = self
            .match_labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        parts.extend(self.match_expressions.iter().map(ToString::to_string));
        if parts.is_empty() {
            write!(f, "(everything)")
        } else {
            write!(f, "{}", parts.join(","))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn req(key: &str, operator: SelectorOperator, values: &[&str]) -> Requirement {
        Requirement {
            key: key.to_owned(),
            operator,
            values: values.iter().map(|v| (*v).to_owned()).collect(),
        }
    }

    #[test]
    fn operators_follow_kubernetes() {
        let l = labels(&[("tier", "gpu"), ("eu", "yes")]);
        assert!(req("tier", SelectorOperator::In, &["gpu", "tpu"]).matches(&l));
        assert!(!req("tier", SelectorOperator::NotIn, &["gpu"]).matches(&l));
        assert!(req("zone", SelectorOperator::NotIn, &["a"]).matches(&l));
        assert!(req("eu", SelectorOperator::Exists, &[]).matches(&l));
        assert!(!req("eu", SelectorOperator::DoesNotExist, &[]).matches(&l));
        assert!(LabelSelector::default().matches(&l));
    }

    #[test]
    fn mismatch_names_the_failing_rule() {
        let selector = LabelSelector {
            match_labels: labels(&[("eu", "yes")]),
            match_expressions: vec![req("tier", SelectorOperator::In, &["cpu"])],
        };
        assert_eq!(
            selector.first_mismatch(&labels(&[("eu", "yes"), ("tier", "gpu")])),
            Some("tier in (cpu)".to_owned())
        );
        assert_eq!(
            selector.first_mismatch(&labels(&[])),
            Some("eu=yes".to_owned())
        );
    }

    #[test]
    fn structure_is_checked() {
        let bad = LabelSelector {
            match_labels: BTreeMap::new(),
            match_expressions: vec![req("a", SelectorOperator::In, &[])],
        };
        assert!(bad.check().is_err());
        let bad = LabelSelector {
            match_labels: BTreeMap::new(),
            match_expressions: vec![req("a", SelectorOperator::Exists, &["x"])],
        };
        assert!(bad.check().is_err());
    }
}
