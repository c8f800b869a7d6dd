//! Cloud taints and service tolerations, with Kubernetes matching rules.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A taint on a cloud: services that do not tolerate it are kept away.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Taint {
    /// The taint key.
    pub key: String,
    /// The taint value (empty when absent).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub value: String,
    /// What the taint does.
    pub effect: TaintEffect,
}

/// What a taint does to services that do not tolerate it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum TaintEffect {
    /// No new replicas; replicas already there may stay.
    NoSchedule,
    /// New replicas go elsewhere when another cloud fits: the cloud counts as if a preference
    /// of weight 100 pointed away from it.
    PreferNoSchedule,
    /// No replicas at all: those already there move away.
    NoExecute,
}

/// A toleration of a service for cloud taints.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Toleration {
    /// The taint key; empty with [`TolerationOperator::Exists`] tolerates every taint.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub key: String,
    /// How the value is compared.
    #[serde(default)]
    pub operator: TolerationOperator,
    /// The value compared with [`TolerationOperator::Equal`].
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub value: String,
    /// The effect tolerated; `None` tolerates every effect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effect: Option<TaintEffect>,
}

/// The operator of a [`Toleration`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum TolerationOperator {
    /// Key and value must be equal.
    #[default]
    Equal,
    /// The key must be equal (or empty, matching every key); any value.
    Exists,
}

impl Toleration {
    /// Whether this toleration tolerates `taint`.
    pub fn tolerates(&self, taint: &Taint) -> bool {
        if self.effect.is_some_and(|e| e != taint.effect) {
            return false;
        }
        match self.operator {
            TolerationOperator::Exists => self.key.is_empty() || self.key == taint.key,
            TolerationOperator::Equal => self.key == taint.key && self.value == taint.value,
        }
    }
}

impl fmt::Display for Taint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.value.is_empty() {
            write!(f, "{}:{:?}", self.key, self.effect)
        } else {
            write!(f, "{}={}:{:?}", self.key, self.value, self.effect)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn taint(key: &str, value: &str, effect: TaintEffect) -> Taint {
        Taint {
            key: key.to_owned(),
            value: value.to_owned(),
            effect,
        }
    }

    #[test]
    fn matching_follows_kubernetes() {
        let t = taint("spot", "true", TaintEffect::NoSchedule);
        let equal = Toleration {
            key: "spot".to_owned(),
            value: "true".to_owned(),
            ..Toleration::default()
        };
        assert!(equal.tolerates(&t));
        let wrong_value = Toleration {
            value: "false".to_owned(),
            ..equal.clone()
        };
        assert!(!wrong_value.tolerates(&t));
        let everything = Toleration {
            operator: TolerationOperator::Exists,
            ..Toleration::default()
        };
        assert!(everything.tolerates(&t));
        let other_effect = Toleration {
            effect: Some(TaintEffect::NoExecute),
            ..equal
        };
        assert!(!other_effect.tolerates(&t));
        assert_eq!(t.to_string(), "spot=true:NoSchedule");
    }
}
