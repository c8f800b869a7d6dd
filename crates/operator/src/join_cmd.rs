//! `skyloom join` and `skyloom unjoin`: register a member cluster with the hub.

use std::process::ExitCode;

/// Arguments of `skyloom join`.
#[derive(Debug, clap::Args)]
pub struct JoinArgs {}

/// Arguments of `skyloom unjoin`.
#[derive(Debug, clap::Args)]
pub struct UnjoinArgs {}

/// Registers a member.
pub fn join(_args: JoinArgs) -> ExitCode {
    eprintln!("skyloom join: not implemented yet");
    ExitCode::FAILURE
}

/// Unregisters a member.
pub fn unjoin(_args: UnjoinArgs) -> ExitCode {
    eprintln!("skyloom unjoin: not implemented yet");
    ExitCode::FAILURE
}
