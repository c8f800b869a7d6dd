//! `skyloom`: the operator and its command line.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

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
    let cli = match parse_with_settings_file() {
        Ok(cli) => cli,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Command::Crd(args) => crd_cmd::run(args),
        Command::Plan(args) => plan_cmd::run(args),
        Command::Run(args) => skyloom::run::main(args),
        Command::Join(args) => join_cmd::join(args),
        Command::Unjoin(args) => join_cmd::unjoin(args),
    }
}

/// Parses the command line; for `run --config FILE` parses it again with the file's
/// settings added as flags (flags and environment variables keep precedence).
fn parse_with_settings_file() -> Result<Cli, skyloom::config_file::ConfigFileError> {
    let mut argv: Vec<OsString> = std::env::args_os().collect();
    let matches = Cli::command()
        .try_get_matches_from(&argv)
        .unwrap_or_else(|e| usage_exit(e));
    if let Some(("run", run)) = matches.subcommand()
        && let Some(path) = run.get_one::<PathBuf>("config")
    {
        let command = Cli::command();
        let Some(run_command) = command.find_subcommand("run") else {
            return Ok(parse_or_exit(&matches));
        };
        argv.extend(skyloom::config_file::file_flags(run_command, run, path)?);
        let with_file = Cli::command()
            .try_get_matches_from(&argv)
            .unwrap_or_else(|e| {
                eprintln!("(settings were read from {})", path.display());
                usage_exit(e)
            });
        return Ok(parse_or_exit(&with_file));
    }
    Ok(parse_or_exit(&matches))
}

fn parse_or_exit(matches: &clap::ArgMatches) -> Cli {
    Cli::from_arg_matches(matches).unwrap_or_else(|e| usage_exit(e))
}

/// Exit status of a command line that could not be parsed (sysexits' `EX_USAGE`): not 2,
/// which `skyloom plan` uses for "some replicas unplaced".
const USAGE_ERROR: i32 = 64;

/// Prints clap's message and exits: 0 for `--help` and `--version`, [`USAGE_ERROR`] otherwise.
fn usage_exit(e: clap::Error) -> ! {
    if e.use_stderr() {
        let _ = e.print();
        std::process::exit(USAGE_ERROR);
    }
    e.exit()
}
