//! `skyloom plan`: solves a placement offline, on the controller's code path
//! ([`skyloom::snapshot`] builds the solver's input from the same API objects).
//!
//! ```text
//! skyloom plan -f FILE_OR_DIR... [-o table|json|yaml] [--without CLOUD]
//!              [--set-price CLOUD/RESOURCE=USD] [--set-capacity CLOUD/RESOURCE=QTY]
//!              [--current FILE]
//! ```
//!
//! Exit status: 0 when every replica is placed, 2 when some are unplaced, 1 on error.
//! CloudPools are planned with their declared `spec.capacity` (nothing is discovered
//! offline), as healthy, with unknown node shapes.

mod input;
mod output;
mod whatif;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use skyloom::snapshot::{self, PoolFacts, SpecIssue};
use skyloom_solver::{Snapshot, SnapshotError, SolveError, SolveOptions, solve};

use input::{InputError, Origin};
use whatif::{WhatIfError, WhatIfs};

/// Arguments of `skyloom plan`.
#[derive(Debug, clap::Args)]
pub struct PlanArgs {
    /// Manifests to plan: files or directories of *.yaml, *.yml and *.json files with
    /// CloudPools and AIServices (multi-document YAML, `kind: List`); `-` reads standard
    /// input. Secrets and Namespaces are skipped; other kinds are an error.
    #[arg(
        short = 'f',
        long = "filename",
        value_name = "FILE_OR_DIR",
        required = true
    )]
    pub files: Vec<PathBuf>,

    /// Output format: a table for people, or the stable JSON/YAML document.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Table)]
    pub output: Format,

    /// Plan as if this CloudPool were gone (repeatable).
    #[arg(long, value_name = "CLOUD")]
    pub without: Vec<String>,

    /// Plan with another price, USD per unit-hour (cpu per core, memory per GiB), e.g.
    /// aws-us-east-1/nvidia.com/gpu=2.10 (repeatable).
    #[arg(long = "set-price", value_name = "CLOUD/RESOURCE=USD")]
    pub set_price: Vec<String>,

    /// Plan with another capacity, a Kubernetes quantity, e.g. gcp-europe-west4/cpu=64
    /// (repeatable).
    #[arg(long = "set-capacity", value_name = "CLOUD/RESOURCE=QTY")]
    pub set_capacity: Vec<String>,

    /// The placement running now, so that the plan says what would move: the output of a
    /// previous `skyloom plan -o json|yaml`, or AIServices with status.placements.
    #[arg(long, value_name = "FILE")]
    pub current: Option<PathBuf>,

    /// Solver time limit in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 30.0)]
    pub time_limit: f64,
}

/// Output format of `skyloom plan`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns.
    Table,
    /// The documented JSON shape.
    Json,
    /// The same shape as YAML.
    Yaml,
}

/// Why planning failed.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// Reading the manifests.
    #[error(transparent)]
    Input(#[from] InputError),
    /// A what-if or the current placement.
    #[error(transparent)]
    WhatIf(#[from] WhatIfError),
    /// An object's value cannot be planned with.
    #[error("{origin}: {issue}")]
    Spec {
        /// Where the object came from.
        origin: Box<Origin>,
        /// What is wrong.
        issue: Box<SpecIssue>,
    },
    /// The solver refused its input.
    #[error("{}{source}", origin.as_ref().map(|o| format!("{o}: ")).unwrap_or_default())]
    Snapshot {
        /// Where the object came from, when known.
        origin: Option<Box<Origin>>,
        /// The refusal.
        source: Box<SnapshotError>,
    },
    /// The solver failed.
    #[error(transparent)]
    Solve(#[from] SolveError),
    /// The time limit is not a positive number of seconds.
    #[error("--time-limit {0}: expected a positive number of seconds")]
    TimeLimit(f64),
    /// Printing failed.
    #[error("cannot render the plan: {0}")]
    Render(String),
}

/// The rendered plan and whether replicas were left unplaced.
#[derive(Debug)]
pub struct Rendered {
    /// What to print.
    pub text: String,
    /// Replicas unplaced.
    pub unplaced: u64,
    /// Warnings for standard error.
    pub warnings: Vec<String>,
}

/// Runs the offline planner: prints the plan, exits 0 (all placed), 2 (some unplaced) or 1
/// (error).
pub fn run(args: PlanArgs) -> ExitCode {
    match execute(&args) {
        Ok(rendered) => {
            for warning in &rendered.warnings {
                eprintln!("skyloom plan: warning: {warning}");
            }
            print!("{}", rendered.text);
            if rendered.unplaced > 0 {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(error) => {
            eprintln!("skyloom plan: {error}");
            ExitCode::from(1)
        }
    }
}

/// Reads, edits, solves and renders.
pub fn execute(args: &PlanArgs) -> Result<Rendered, PlanError> {
    if !(args.time_limit.is_finite() && args.time_limit > 0.0) {
        return Err(PlanError::TimeLimit(args.time_limit));
    }
    let manifests = input::read(&args.files)?;
    let what_ifs = WhatIfs {
        without: args.without.clone(),
        prices: args
            .set_price
            .iter()
            .map(|t| whatif::parse_edit("--set-price", t))
            .collect::<Result<_, _>>()?,
        capacities: args
            .set_capacity
            .iter()
            .map(|t| whatif::parse_edit("--set-capacity", t))
            .collect::<Result<_, _>>()?,
    };
    let current = args
        .current
        .as_deref()
        .map(whatif::read_current)
        .transpose()?
        .unwrap_or_default();
    let mut warnings = Vec::new();

    let facts = PoolFacts {
        discovered: None,
        largest_node: None,
        healthy: true,
    };
    let mut clouds = Vec::with_capacity(manifests.pools.len());
    for pool in &manifests.pools {
        let cloud = snapshot::cloud(&pool.object, &facts).map_err(|issue| PlanError::Spec {
            origin: Box::new(pool.origin.clone()),
            issue: Box::new(issue),
        })?;
        clouds.push(cloud);
    }
    whatif::apply(&mut clouds, &what_ifs)?;

    let mut services = Vec::with_capacity(manifests.services.len());
    for located in &manifests.services {
        let meta = &located.object.metadata;
        let key = format!(
            "{}/{}",
            meta.namespace.as_deref().unwrap_or("default"),
            meta.name.as_deref().unwrap_or_default()
        );
        let held = current.get(&key).cloned().unwrap_or_default();
        let mut service =
            snapshot::service(&located.object, held.replicas).map_err(|issue| PlanError::Spec {
                origin: Box::new(located.origin.clone()),
                issue: Box::new(issue),
            })?;
        service.current_reserve = held.reserve;
        if let Some(names) = &service.placement.clouds {
            for name in names {
                if !clouds.iter().any(|c| &c.name == name) {
                    warnings.push(format!(
                        "{}: AIService {key}: spec.placement.clouds names {name:?}, which is not \
                         among the CloudPools planned with",
                        located.origin
                    ));
                }
            }
        }
        services.push(service);
    }
    // Pod slots bind only where a CloudPool declares `pods`, as in the controller.
    snapshot::count_pod_slots(&mut clouds, &mut services);
    // Offline, a resource a CloudPool does not declare has no capacity: say so, since a
    // forgotten `cpu` or `memory` would otherwise show up only as "full".
    let demanded: std::collections::BTreeSet<&String> =
        services.iter().flat_map(|s| s.demand.keys()).collect();
    for cloud in &clouds {
        let missing: Vec<&str> = demanded
            .iter()
            .filter(|r| !cloud.capacity.contains_key(**r))
            .map(|r| r.as_str())
            .collect();
        let origin = manifests
            .pools
            .iter()
            .find(|p| p.object.metadata.name.as_deref() == Some(cloud.name.as_str()))
            .map(|p| format!("{}: ", p.origin))
            .unwrap_or_default();
        if !missing.is_empty() {
            warnings.push(format!(
                "{origin}CloudPool {}: spec.capacity declares no {}; planning with none",
                cloud.name,
                missing.join(", ")
            ));
        }
    }
    for key in current.keys() {
        if !services
            .iter()
            .any(|s| format!("{}/{}", s.namespace, s.name) == *key)
        {
            warnings.push(format!("--current: no AIService {key} among the manifests"));
        }
    }

    let snapshot = Snapshot::new(clouds, services).map_err(|source| PlanError::Snapshot {
        origin: origin_of(&manifests, &source).map(Box::new),
        source: Box::new(source),
    })?;
    let options = SolveOptions {
        time_limit: Duration::from_secs_f64(args.time_limit.min(86_400.0)),
        ..SolveOptions::default()
    };
    let started = Instant::now();
    let plan = solve(&snapshot, &options)?;
    let seconds = started.elapsed().as_secs_f64();
    let document = output::document(&plan, seconds);
    let text = match args.output {
        Format::Table => output::table(&plan, &document),
        Format::Json => {
            let mut text = serde_json::to_string_pretty(&document)
                .map_err(|e| PlanError::Render(e.to_string()))?;
            text.push('\n');
            text
        }
        Format::Yaml => {
            serde_saphyr::to_string(&document).map_err(|e| PlanError::Render(e.to_string()))?
        }
    };
    Ok(Rendered {
        text,
        unplaced: plan.totals.unplaced,
        warnings,
    })
}

/// The origin of the object a snapshot error is about, found by its name in the message.
fn origin_of(manifests: &input::Manifests, error: &SnapshotError) -> Option<Origin> {
    let object = match error {
        SnapshotError::Invalid { object, .. } => object.clone(),
        SnapshotError::DuplicateCloud(name) => format!("cloud {name:?}"),
        SnapshotError::DuplicateService(key) => format!("service {key}"),
    };
    let pool = manifests.pools.iter().find(|p| {
        object
            == format!(
                "cloud {:?}",
                p.object.metadata.name.as_deref().unwrap_or_default()
            )
    });
    let service = manifests.services.iter().find(|s| {
        let m = &s.object.metadata;
        object
            == format!(
                "service {}/{}",
                m.namespace.as_deref().unwrap_or_default(),
                m.name.as_deref().unwrap_or_default()
            )
    });
    pool.map(|p| p.origin.clone())
        .or_else(|| service.map(|s| s.origin.clone()))
}

#[cfg(test)]
mod tests;
