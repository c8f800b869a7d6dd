//! Errors of the solver's two stages: building a snapshot and solving it.

use thiserror::Error;

/// Why a snapshot was refused.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum SnapshotError {
    /// A field breaks a rule.
    #[error("{object}: {field}: {message}")]
    Invalid {
        /// The cloud or service, e.g. `cloud "aws"` or `service ns/name`.
        object: String,
        /// The field, with the resource name where there is one, e.g. `prices[cpu]`.
        field: String,
        /// The rule broken.
        message: String,
    },
    /// Two clouds share a name.
    #[error("cloud {0:?} appears more than once")]
    DuplicateCloud(String),
    /// Two services share a namespace and name.
    #[error("service {0} appears more than once")]
    DuplicateService(String),
}

/// Why a snapshot could not be solved.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum SolveError {
    /// An amount or cost does not fit the solver's integer arithmetic.
    #[error("service {service} on cloud {cloud:?}: {what} is too large to compute with")]
    Overflow {
        /// The service, `namespace/name`.
        service: String,
        /// The cloud.
        cloud: String,
        /// What overflowed, e.g. "the cost of one replica".
        what: String,
    },
}
