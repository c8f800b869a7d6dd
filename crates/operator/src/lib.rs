//! The Skyloom operator: watches AIServices and CloudPools on the hub, decides placements with
//! the solver and realises them as Deployments in member clusters.

pub mod config;
pub mod run;
