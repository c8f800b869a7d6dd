//! `skyloom`: the operator and its command line.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod crd_cmd;
mod join_cmd;
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
    /// Run the operator: watch AIServices and CloudPools and realise placements in members.
    Run(skyloom::config::RunArgs),
    /// Register a member cluster: least-privilege ServiceAccount there, kubeconfig Secret and
    /// CloudPool on the hub.
    Join(join_cmd::JoinArgs),
    /// Undo `join`: remove the CloudPool, its Secret and the member-side ServiceAccount.
    Unjoin(join_cmd::UnjoinArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Crd(args) => crd_cmd::run(args),
        Command::Plan(args) => plan_cmd::run(args),
        Command::Run(args) => skyloom::run::main(args),
        Command::Join(args) => join_cmd::join(args),
        Command::Unjoin(args) => join_cmd::unjoin(args),
    }
}
