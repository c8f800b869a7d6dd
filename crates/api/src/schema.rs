//! Hand-written OpenAPI v3 fragments for fields whose derived schema is wrong, too weak or too
//! large for a CRD.
//!
//! Each function here is used with `#[schemars(schema_with = "...")]`. The field's own doc
//! comment is added on top as its `description`, so these fragments carry descriptions only
//! for the properties they declare themselves.
//!
//! Nothing here may emit `default:` (see CASE-11): defaults live in code, next to the types.

use schemars::{Schema, SchemaGenerator, json_schema};
use serde_json::{Value, json};

/// Lower-case RFC 1123 label: provider names, regions, zones, container names.
pub const DNS_LABEL_PATTERN: &str = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";

/// Lower-case RFC 1123 subdomain: object names such as CloudPools and Secrets.
pub const DNS_SUBDOMAIN_PATTERN: &str =
    "^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";

/// A label or taint key: an optional DNS-subdomain prefix and a slash, then a name.
pub const LABEL_KEY_PATTERN: &str = "^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$";

/// A label value (may be empty).
pub const LABEL_VALUE_PATTERN: &str = "^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$";

/// The Kubernetes quantity grammar without a minus sign: plain, decimal-SI, binary-SI or
/// exponent forms such as `4`, `500m`, `64Gi`, `1e3`. The exponent is an integer.
pub const NON_NEGATIVE_QUANTITY_PATTERN: &str =
    "^\\+?([0-9]+(\\.[0-9]*)?|\\.[0-9]+)([KMGTPE]i|[numkMGTPE]|[eE][-+]?[0-9]{1,3})?$";

/// A finite, non-negative decimal without exponent, at most 999999.999999.
pub const PRICE_PATTERN: &str = "^(0|[1-9][0-9]{0,5})(\\.[0-9]{1,6})?$";

/// Longest quantity string accepted.
pub const QUANTITY_MAX_LENGTH: u32 = 32;
/// Most resource names in one quantity or price map.
pub const RESOURCE_MAP_MAX_PROPERTIES: u32 = 32;

/// Extended resources (any name with a domain prefix, e.g. `nvidia.com/gpu`) are whole
/// devices: Kubernetes itself refuses fractional values in Pods, so the CRD refuses them early.
const WHOLE_EXTENDED_RESOURCES_RULE: &str =
    "self.all(k, !k.contains('/') || string(self[k]).matches('^[+]?[0-9]+$'))";

/// Schema of one non-negative quantity: an integer or a string in the quantity grammar.
fn quantity_value() -> Value {
    json!({
        "x-kubernetes-int-or-string": true,
        "minimum": 0,
        "pattern": NON_NEGATIVE_QUANTITY_PATTERN,
        "maxLength": QUANTITY_MAX_LENGTH,
    })
}

/// A map from resource name to a non-negative quantity, with whole extended resources.
fn quantity_map() -> Value {
    json!({
        "type": "object",
        "maxProperties": RESOURCE_MAP_MAX_PROPERTIES,
        "additionalProperties": quantity_value(),
        "x-kubernetes-validations": [{
            "rule": WHOLE_EXTENDED_RESOURCES_RULE,
            "message": "extended resources such as nvidia.com/gpu must be whole numbers, e.g. \"1\", not \"0.5\"",
        }],
    })
}

/// `BTreeMap<String, Quantity>` of non-negative quantities.
pub fn quantity_map_schema(_: &mut SchemaGenerator) -> Schema {
    to_schema(quantity_map())
}

/// `BTreeMap<String, Quantity>` written by the operator into status: a plain map of quantities
/// without validation rules.
pub fn status_quantity_map_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "additionalProperties": {"x-kubernetes-int-or-string": true},
    })
}

/// `BTreeMap<String, String>` of prices: finite, non-negative decimal strings.
pub fn price_map_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "maxProperties": RESOURCE_MAP_MAX_PROPERTIES,
        "additionalProperties": {
            "type": "string",
            "pattern": PRICE_PATTERN,
            "maxLength": 13,
        },
    })
}

/// `Vec<String>` of CloudPool names, a set.
pub fn cloud_names_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "array",
        "minItems": 1,
        "maxItems": 100,
        "x-kubernetes-list-type": "set",
        "items": {"type": "string", "minLength": 1, "maxLength": 253, "pattern": DNS_SUBDOMAIN_PATTERN},
    })
}

/// `Vec<String>` of region names, a set.
pub fn region_names_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "array",
        "minItems": 1,
        "maxItems": 100,
        "x-kubernetes-list-type": "set",
        "items": {"type": "string", "minLength": 1, "maxLength": 63, "pattern": DNS_LABEL_PATTERN},
    })
}

fn label_selector() -> Value {
    json!({
        "type": "object",
        "x-kubernetes-map-type": "atomic",
        "properties": {
            "matchLabels": {
                "description": "Labels that must all be present with exactly these values.",
                "type": "object",
                "maxProperties": 64,
                "additionalProperties": {"type": "string", "maxLength": 63, "pattern": LABEL_VALUE_PATTERN},
            },
            "matchExpressions": {
                "description": "Requirements that must all hold.",
                "type": "array",
                "maxItems": 32,
                "x-kubernetes-list-type": "atomic",
                "items": {
                    "type": "object",
                    "required": ["key", "operator"],
                    "properties": {
                        "key": {
                            "description": "The label key the requirement applies to.",
                            "type": "string",
                            "maxLength": 316,
                            "pattern": LABEL_KEY_PATTERN,
                        },
                        "operator": {
                            "description": "How the key relates to the values: In, NotIn, Exists or DoesNotExist.",
                            "type": "string",
                            "enum": ["In", "NotIn", "Exists", "DoesNotExist"],
                        },
                        "values": {
                            "description": "Values for In and NotIn (at least one); must be empty for Exists and DoesNotExist.",
                            "type": "array",
                            "maxItems": 64,
                            "x-kubernetes-list-type": "atomic",
                            "items": {"type": "string", "maxLength": 63},
                        },
                    },
                    "x-kubernetes-validations": [{
                        "rule": "self.operator in ['In', 'NotIn'] ? (has(self.values) && size(self.values) > 0) : (!has(self.values) || size(self.values) == 0)",
                        "message": "values must be non-empty for In and NotIn, and empty for Exists and DoesNotExist",
                    }],
                },
            },
        },
    })
}

/// k8s-openapi `LabelSelector` with the operator restricted to the four valid ones.
pub fn label_selector_schema(_: &mut SchemaGenerator) -> Schema {
    to_schema(label_selector())
}

/// `Vec<Condition>`: the standard `metav1.Condition`, as a map keyed by `type`, without the
/// upstream type's long descriptions.
pub fn conditions_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "array",
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": ["type"],
        "items": {
            "type": "object",
            "required": ["type", "status", "lastTransitionTime", "reason", "message"],
            "properties": {
                "type": {"description": "Condition type in CamelCase, e.g. Ready.", "type": "string", "maxLength": 316},
                "status": {"description": "True, False or Unknown.", "type": "string", "enum": ["True", "False", "Unknown"]},
                "observedGeneration": {"description": "The metadata.generation this condition was computed for.", "type": "integer", "format": "int64", "minimum": 0},
                "lastTransitionTime": {"description": "When the status last changed.", "type": "string", "format": "date-time"},
                "reason": {"description": "A CamelCase machine-readable reason for the last transition.", "type": "string", "maxLength": 1024},
                "message": {"description": "A human-readable explanation; may be empty.", "type": "string", "maxLength": 32768},
            },
        },
    })
}

/// `PodTemplateSpec`, as a compact structural schema.
///
/// The upstream PodTemplateSpec schema is several hundred kilobytes, which would push the CRD
/// over the 262,144-byte annotation limit of client-side `kubectl apply`. This schema declares
/// and validates what Skyloom reads (labels, annotations, containers, names, images, resource
/// requests and limits) and preserves every other field unchanged
/// (`x-kubernetes-preserve-unknown-fields`); the member cluster's API server validates those
/// when the Deployment is created.
pub fn pod_template_schema(_: &mut SchemaGenerator) -> Schema {
    let resources = json!({
        "description": "Compute resources of this container. The requests of all containers, summed, are one replica's demand on a CloudPool.",
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
        "properties": {
            "requests": with_description(quantity_map(), "Minimum resources per replica, e.g. cpu: \"4\", memory: 16Gi, nvidia.com/gpu: \"1\"."),
            "limits": with_description(quantity_map(), "Maximum resources per replica."),
        },
    });
    let container = json!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
        "required": ["name", "image"],
        "properties": {
            "name": {
                "description": "Container name, unique in the Pod (DNS label).",
                "type": "string",
                "maxLength": 63,
                "pattern": DNS_LABEL_PATTERN,
            },
            "image": {
                "description": "Container image reference, e.g. vllm/vllm-openai:v0.6.3.",
                "type": "string",
                "minLength": 1,
                "maxLength": 1024,
            },
            "resources": resources,
        },
    });
    json_schema!({
        "type": "object",
        "properties": {
            "metadata": {
                "description": "Labels and annotations for the Pods. Skyloom adds its own labels; other metadata fields are ignored.",
                "type": "object",
                "properties": {
                    "labels": {
                        "description": "Pod labels.",
                        "type": "object",
                        "maxProperties": 64,
                        "additionalProperties": {"type": "string"},
                    },
                    "annotations": {
                        "description": "Pod annotations.",
                        "type": "object",
                        "additionalProperties": {"type": "string"},
                    },
                },
            },
            "spec": {
                "description": "The Pod spec (core/v1 PodSpec). Only containers, names, images and resources are validated here; every other field is kept as written and validated by the member cluster.",
                "type": "object",
                "x-kubernetes-preserve-unknown-fields": true,
                "required": ["containers"],
                "properties": {
                    "containers": {
                        "description": "The containers of each replica (at least one).",
                        "type": "array",
                        "minItems": 1,
                        "maxItems": 32,
                        "x-kubernetes-list-type": "map",
                        "x-kubernetes-list-map-keys": ["name"],
                        "items": container,
                    },
                },
            },
        },
        "required": ["spec"],
    })
}

/// Removes a type's own description, for enums used as `Option<Enum>` fields: kube's
/// `OptionalEnum` transform would otherwise replace the field's doc with the enum's.
pub fn drop_description(schema: &mut Schema) {
    schema.remove("description");
}

fn with_description(mut value: Value, description: &str) -> Value {
    if let Some(object) = value.as_object_mut() {
        object.insert("description".into(), description.into());
    }
    value
}

fn to_schema(value: Value) -> Schema {
    match value {
        Value::Object(map) => Schema::from(map),
        // Every caller builds an object literal; an empty schema is the harmless fallback.
        _ => Schema::default(),
    }
}
