//! `skyloom`: the operator and its command line.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod crd_cmd;
mod plan_cmd;

/// Skyloom places AI services across clouds.
#[derive(Debug, Parser)]
#[command(name = "skyloom", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the CustomResourceDefinitions as multi-document YAML.
    Crd(crd_cmd::CrdArgs),
    /// Solve a placement offline from CloudPool and AIService manifests.
    Plan(plan_cmd::PlanArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Crd(args) => crd_cmd::run(args),
        Command::Plan(args) => plan_cmd::run(args),
    }
}
