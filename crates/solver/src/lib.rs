//! Skyloom's placement solver: a pure function from a [`Snapshot`] of clouds and services to
//! a [`Plan`] — replicas per service per cloud, money, and why.
//!
//! The model (see `docs/solver.md`): integer replicas `x_ij` of service `j` in cloud `i`
//! under per-cloud capacity, eligibility, per-node fit and spread rules, optimising
//! lexicographically (1) the replicas placed, highest priority first, together with spread
//! shortfalls, (2) the weighted objective (by default the hourly cost), (3) moves away from
//! the current placement, (4) failover reserve. The engine decomposes the problem into
//! independent groups, builds several candidates (current placement, cheapest-first,
//! capacity-price-guided, proportional split), improves them by local search, searches small
//! groups exactly with microlp, and bounds the rest by Lagrangian relaxation.
//!
//! No I/O, no kube types, no clock reads other than the deadline: the same snapshot, in any
//! order, gives byte-identical output whenever the time limit does not cut the search.

// Dense matrix code indexes several parallel arrays (replicas, caps, values, capacity) by the
// same cloud or resource index; iterator chains would hide that.
#![allow(clippy::needless_range_loop)]

mod decompose;
pub mod eligibility;
mod engine;
pub mod error;
mod exact;
mod explain;
mod greedy;
pub mod greedy_baseline;
mod improve;
mod lagrange;
mod lns;
mod model;
pub mod plan;
pub mod referee;
pub mod selector;
pub mod snapshot;
mod state;
pub mod taint;
pub mod units;

pub use engine::{SolveOptions, solve};
pub use error::{SnapshotError, SolveError};
pub use plan::{Plan, SolveStatus};
pub use snapshot::{
    Cloud, ObjectiveWeights, PlacementRules, Preference, Service, ServiceKey, Snapshot,
    SnapshotParts, Spread,
};
