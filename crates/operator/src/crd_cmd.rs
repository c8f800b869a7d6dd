//! `skyloom crd`: prints or writes the CRDs generated from the Rust types.

use std::path::PathBuf;
use std::process::ExitCode;

/// Arguments of `skyloom crd`.
#[derive(Debug, clap::Args)]
pub struct CrdArgs {
    /// Write one file per CRD (e.g. skyloom.io_aiservices.yaml) into this directory instead of
    /// printing them. `skyloom crd --out deploy/crds` regenerates the committed CRDs.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
}

/// Prints every CRD as multi-document YAML on stdout, or writes them into `--out DIR`.
pub fn run(args: CrdArgs) -> ExitCode {
    match execute(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("skyloom crd: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn execute(args: &CrdArgs) -> anyhow::Result<()> {
    let Some(dir) = &args.out else {
        print!("{}", skyloom_api::crds_yaml()?);
        return Ok(());
    };
    std::fs::create_dir_all(dir)
        .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
    for crd in skyloom_api::crds() {
        let path = dir.join(skyloom_api::crd_file_name(&crd));
        std::fs::write(&path, skyloom_api::crd_yaml(&crd)?)
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
