//! CRD generation: the objects, their YAML and the file names under `deploy/crds/`.
//!
//! Size, measured as the `kubectl.kubernetes.io/last-applied-configuration` annotation that
//! client-side `kubectl apply` stores (limit 262,144 bytes for all annotations together):
//! CloudPool about 9.7 KB, AIService about 21.0 KB (YAML files: 14 KB and 34 KB). The AIService
//! stays small because `spec.template` uses a partial schema (see
//! [`crate::schema::pod_template_schema`]); the test `crds_fit_the_client_side_apply_annotation`
//! keeps both under 196,608 bytes.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps, JSONSchemaPropsOrArray, JSONSchemaPropsOrBool,
};
use kube::CustomResourceExt;
use thiserror::Error;

use crate::{AIService, CloudPool};

/// The comment at the top of every generated CRD file.
pub const GENERATED_HEADER: &str = "# Generated from crates/api by `cargo run -p skyloom -- crd --out deploy/crds`. Do not edit.\n";

/// CRD generation failed.
#[derive(Debug, Error)]
pub enum CrdError {
    /// A CRD could not be serialized to YAML.
    #[error("cannot serialize CRD {name} to YAML: {source}")]
    Yaml {
        /// The CRD's name.
        name: String,
        /// The serializer's error.
        source: serde_saphyr::SerializeError,
    },
}

/// Every Skyloom CRD, in a stable order (CloudPool, then AIService), with descriptions
/// reflowed for `kubectl explain`. Install these rather than `AIService::crd()` directly.
pub fn crds() -> Vec<CustomResourceDefinition> {
    let mut crds = vec![CloudPool::crd(), AIService::crd()];
    for crd in &mut crds {
        for version in &mut crd.spec.versions {
            if let Some(schema) = version
                .schema
                .as_mut()
                .and_then(|s| s.open_api_v3_schema.as_mut())
            {
                reflow_descriptions(schema);
            }
        }
    }
    crds
}

/// Doc comments are wrapped at 100 columns; `kubectl explain` wraps text itself, so hard line
/// breaks inside a paragraph come out ragged. Joins the lines of each paragraph.
fn reflow_descriptions(schema: &mut JSONSchemaProps) {
    if let Some(description) = schema.description.as_mut() {
        *description = description
            .split("\n\n")
            .map(|paragraph| paragraph.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect::<Vec<_>>()
            .join("\n\n");
    }
    let children = schema
        .properties
        .iter_mut()
        .flat_map(|p| p.values_mut())
        .chain(schema.items.iter_mut().filter_map(|items| match items {
            JSONSchemaPropsOrArray::Schema(s) => Some(s.as_mut()),
            JSONSchemaPropsOrArray::Schemas(_) => None,
        }))
        .chain(
            schema
                .additional_properties
                .iter_mut()
                .filter_map(|a| match a {
                    JSONSchemaPropsOrBool::Schema(s) => Some(s.as_mut()),
                    JSONSchemaPropsOrBool::Bool(_) => None,
                }),
        );
    for child in children {
        reflow_descriptions(child);
    }
}

/// The file name of a CRD under `deploy/crds/`, e.g. `skyloom.io_cloudpools.yaml`.
pub fn crd_file_name(crd: &CustomResourceDefinition) -> String {
    format!("{}_{}.yaml", crd.spec.group, crd.spec.names.plural)
}

/// One CRD as a YAML document with the generated-file header.
pub fn crd_yaml(crd: &CustomResourceDefinition) -> Result<String, CrdError> {
    let body = serde_saphyr::to_string(crd).map_err(|source| CrdError::Yaml {
        name: crd.metadata.name.clone().unwrap_or_default(),
        source,
    })?;
    Ok(format!("{GENERATED_HEADER}{body}"))
}

/// Every CRD as one multi-document YAML stream: the concatenation of the files in
/// `deploy/crds/`, separated by `---`.
pub fn crds_yaml() -> Result<String, CrdError> {
    let docs = crds().iter().map(crd_yaml).collect::<Result<Vec<_>, _>>()?;
    Ok(docs.join("---\n"))
}
