//! `skyloom plan`: solves a placement offline, on the controller's code path.

use std::process::ExitCode;

/// Arguments of `skyloom plan`.
#[derive(Debug, clap::Args)]
pub struct PlanArgs {}

/// Runs the offline planner.
pub fn run(_args: PlanArgs) -> ExitCode {
    ExitCode::SUCCESS
}
