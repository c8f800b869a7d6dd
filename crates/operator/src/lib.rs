//! The Skyloom operator: watches AIServices and CloudPools on the hub, decides placements with
//! the solver and realises them as Deployments in member clusters.

pub mod capacity;
pub mod client_limits;
pub mod config;
pub mod config_file;
pub mod controller;
pub mod credentials;
pub mod explain;
pub mod identity;
pub mod kubeconfig_guard;
pub mod leader;
pub mod members;
pub mod metrics;
pub mod quantity;
pub mod realise;
pub mod replica_fights;
pub mod run;
pub mod snapshot;
pub mod status;
pub mod trim;
