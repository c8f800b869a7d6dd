//! Skyloom's custom resources (`skyloom.io/v1alpha1`): [`CloudPool`] and [`AIService`].
//!
//! The Rust types are the source of truth: the CRDs in `deploy/crds/` are generated from them
//! by `skyloom crd --out deploy/crds` (see [`crds`]) and a test fails when the committed files
//! drift. Schemas carry no `default:` values; defaults are applied in code by the helper
//! methods next to each type, so that objects kept in Git stay identical to the live ones.

pub mod aiservice;
pub mod cloudpool;
pub mod conditions;
mod generate;
pub mod price;
pub mod schema;

pub use aiservice::{AIService, AIServiceSpec, AIServiceStatus};
pub use cloudpool::{CloudPool, CloudPoolSpec, CloudPoolStatus};
pub use generate::{CrdError, crd_file_name, crd_yaml, crds, crds_yaml};
pub use price::{MicroUsd, PriceError, parse_price};

/// The API group of both kinds.
pub const GROUP: &str = "skyloom.io";
/// The API version of both kinds.
pub const VERSION: &str = "v1alpha1";
