//! `skyloom run`.

use std::process::ExitCode;

use crate::config::RunArgs;

/// Runs the operator until SIGTERM or Ctrl-C.
pub fn main(_args: RunArgs) -> ExitCode {
    eprintln!("skyloom run: not implemented yet");
    ExitCode::FAILURE
}
