//! Reads CloudPool and AIService manifests from files and directories: multi-document YAML
//! (or JSON), `kind: List` expanded, Secrets and Namespaces skipped, anything else refused.
//! Every error names the file, the document (and its first line), the object and the field.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Read as _;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde::de::DeserializeOwned;
use skyloom_api::{AIService, CloudPool};

/// Where a document came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    /// The file (`-` for standard input).
    pub file: String,
    /// The document's position in the file, from 1, counting non-empty documents.
    pub document: usize,
    /// The line the document starts on, from 1.
    pub line: usize,
    /// The item's position in a `kind: List`, when it came from one.
    pub item: Option<usize>,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: document {} (line {})",
            self.file, self.document, self.line
        )?;
        if let Some(item) = self.item {
            write!(f, ", items[{item}]")?;
        }
        Ok(())
    }
}

/// An object and where it came from.
#[derive(Clone, Debug)]
pub struct Located<T> {
    /// Where.
    pub origin: Origin,
    /// The object.
    pub object: T,
}

/// Everything read.
#[derive(Clone, Debug, Default)]
pub struct Manifests {
    /// CloudPools, in reading order.
    pub pools: Vec<Located<CloudPool>>,
    /// AIServices, in reading order.
    pub services: Vec<Located<AIService>>,
}

/// Why the input could not be read.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    /// A file or directory could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The path.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A document is not YAML (or JSON), or not an object.
    #[error("{origin}: {message}")]
    Syntax {
        /// Where.
        origin: Origin,
        /// The parser's message.
        message: String,
    },
    /// A document of a kind `skyloom plan` does not read.
    #[error(
        "{origin}: kind {kind:?} (apiVersion {api_version:?}) is not a CloudPool or AIService \
         (Secrets and Namespaces are skipped; other kinds are refused)"
    )]
    UnknownKind {
        /// Where.
        origin: Origin,
        /// The kind.
        kind: String,
        /// The apiVersion.
        api_version: String,
    },
    /// An object does not match its type.
    #[error("{origin}: {kind} {name:?}: {message}")]
    Invalid {
        /// Where.
        origin: Origin,
        /// `CloudPool` or `AIService`.
        kind: &'static str,
        /// The object's name (`namespace/name` for AIServices).
        name: String,
        /// What is wrong, with the field.
        message: String,
    },
    /// Two objects of one kind share a name.
    #[error("{second}: {kind} {name:?} is already defined at {first}")]
    Duplicate {
        /// `CloudPool` or `AIService`.
        kind: &'static str,
        /// The name.
        name: String,
        /// The first definition.
        first: Box<Origin>,
        /// The second definition.
        second: Box<Origin>,
    },
    /// Nothing to plan.
    #[error("no CloudPool or AIService found in {0}")]
    Empty(String),
}

/// The fields every Kubernetes object starts with.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Header {
    #[serde(default)]
    api_version: Option<String>,
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    metadata: Option<HeaderMeta>,
}

#[derive(Debug, Default, Deserialize)]
struct HeaderMeta {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    namespace: Option<String>,
}

/// Reads every path (files, directories of `*.yaml`, `*.yml` and `*.json` files, `-` for
/// standard input) in order.
pub fn read(paths: &[PathBuf]) -> Result<Manifests, InputError> {
    let mut manifests = Manifests::default();
    for path in paths {
        for (file, text) in files(path)? {
            read_text(&file, &text, &mut manifests)?;
        }
    }
    if manifests.pools.is_empty() && manifests.services.is_empty() {
        let names: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
        return Err(InputError::Empty(names.join(", ")));
    }
    check_duplicates(&manifests)?;
    Ok(manifests)
}

/// The files behind one path, with their text, in name order for directories.
fn files(path: &Path) -> Result<Vec<(String, String)>, InputError> {
    let display = path.display().to_string();
    let read_error = |source| InputError::Read {
        path: display.clone(),
        source,
    };
    if display == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(read_error)?;
        return Ok(vec![(display, text)]);
    }
    let metadata = std::fs::metadata(path).map_err(read_error)?;
    if !metadata.is_dir() {
        let text = std::fs::read_to_string(path).map_err(read_error)?;
        return Ok(vec![(display, text)]);
    }
    let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(read_error)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.is_file()
                && p.extension()
                    .and_then(|e| e.to_str())
                    .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"))
        })
        .collect();
    entries.sort();
    entries
        .into_iter()
        .map(|p| {
            let name = p.display().to_string();
            std::fs::read_to_string(&p)
                .map(|text| (name.clone(), text))
                .map_err(|source| InputError::Read { path: name, source })
        })
        .collect()
}

/// Splits multi-document YAML at `---` lines; returns (first line, text) of each non-empty
/// document. The text is prefixed with empty lines so that parser errors carry the file's
/// line numbers.
pub fn documents(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut start = 1;
    let mut has_content = false;
    let mut push = |start: usize, current: &mut String, has_content: &mut bool| {
        if *has_content {
            let mut doc = "\n".repeat(start - 1);
            doc.push_str(current);
            out.push((start, doc));
        }
        current.clear();
        *has_content = false;
    };
    for (index, line) in text.lines().enumerate() {
        let number = index + 1;
        let separator = line.starts_with("---")
            && line[3..]
                .chars()
                .next()
                .is_none_or(|c| c.is_whitespace() || c == '#');
        if separator || line.trim_end() == "..." {
            push(start, &mut current, &mut has_content);
            start = number + 1;
            continue;
        }
        let trimmed = line.trim();
        if !has_content && (trimmed.is_empty() || trimmed.starts_with('#')) {
            // Leading blank or comment lines belong to no document.
            start = number + 1;
            continue;
        }
        has_content = true;
        current.push_str(line);
        current.push('\n');
    }
    push(start, &mut current, &mut has_content);
    out
}

fn read_text(file: &str, text: &str, manifests: &mut Manifests) -> Result<(), InputError> {
    for (index, (line, document)) in documents(text).into_iter().enumerate() {
        let origin = Origin {
            file: file.to_owned(),
            document: index + 1,
            line,
            item: None,
        };
        let value: serde_json::Value =
            serde_saphyr::from_str(&document).map_err(|e| InputError::Syntax {
                origin: origin.clone(),
                message: e.to_string(),
            })?;
        if value.is_null() {
            continue;
        }
        read_value(origin, value, Some(&document), manifests)?;
    }
    Ok(())
}

fn read_value(
    origin: Origin,
    value: serde_json::Value,
    text: Option<&str>,
    manifests: &mut Manifests,
) -> Result<(), InputError> {
    // A derived struct also reads a list (positionally), so `- a` would pass as an object.
    if !value.is_object() {
        let shape = match &value {
            serde_json::Value::Array(_) => "a list",
            serde_json::Value::String(_) => "a string",
            serde_json::Value::Number(_) => "a number",
            serde_json::Value::Bool(_) => "a boolean",
            _ => "not a mapping",
        };
        return Err(InputError::Syntax {
            origin,
            message: format!(
                "not a Kubernetes object: the document is {shape}, not a mapping with apiVersion and kind"
            ),
        });
    }
    let header: Header = serde_json::from_value(value.clone()).map_err(|e| InputError::Syntax {
        origin: origin.clone(),
        message: format!("not a Kubernetes object: {e}"),
    })?;
    let kind = header.kind.clone().unwrap_or_default();
    let api_version = header.api_version.clone().unwrap_or_default();
    let meta = header.metadata.unwrap_or_default();
    let ours = match kind.as_str() {
        "CloudPool" => Some("CloudPool"),
        "AIService" => Some("AIService"),
        _ => None,
    }
    .filter(|_| api_version.split('/').next() == Some(skyloom_api::GROUP));
    if let Some(ours) = ours {
        let invalid = |message: String| InputError::Invalid {
            origin: origin.clone(),
            kind: ours,
            name: meta.name.clone().unwrap_or_default(),
            message,
        };
        let served = format!("{}/{}", skyloom_api::GROUP, skyloom_api::VERSION);
        if api_version != served {
            return Err(invalid(format!(
                "apiVersion: {api_version:?} is not served; use {served:?}"
            )));
        }
        if meta.name.as_deref().unwrap_or("").is_empty() {
            return Err(invalid("metadata.name: must not be empty".to_owned()));
        }
    }
    match (api_version.split('/').next(), kind.as_str()) {
        (Some("skyloom.io"), "CloudPool") => {
            let name = meta.name.unwrap_or_default();
            let pool: CloudPool = typed(&origin, "CloudPool", &name, &value, text)?;
            manifests.pools.push(Located {
                origin,
                object: pool,
            });
        }
        (Some("skyloom.io"), "AIService") => {
            let namespace = meta.namespace.unwrap_or_else(|| "default".to_owned());
            let name = format!("{namespace}/{}", meta.name.unwrap_or_default());
            let mut service: AIService = typed(&origin, "AIService", &name, &value, text)?;
            service.metadata.namespace = Some(namespace);
            manifests.services.push(Located {
                origin,
                object: service,
            });
        }
        (_, "Secret" | "Namespace") if api_version == "v1" => {}
        (_, "List") => {
            let items = value
                .get("items")
                .and_then(|i| i.as_array())
                .cloned()
                .unwrap_or_default();
            for (index, item) in items.into_iter().enumerate() {
                let origin = Origin {
                    item: Some(index),
                    ..origin.clone()
                };
                read_value(origin, item, None, manifests)?;
            }
        }
        _ => {
            return Err(InputError::UnknownKind {
                origin,
                kind,
                api_version,
            });
        }
    }
    Ok(())
}

/// Deserializes a typed object, from the YAML text when there is one (its errors carry line
/// and column), and refuses fields the type does not know (a misspelt `capacty` would
/// otherwise silently plan with no capacity).
fn typed<T: DeserializeOwned + serde::Serialize>(
    origin: &Origin,
    kind: &'static str,
    name: &str,
    value: &serde_json::Value,
    text: Option<&str>,
) -> Result<T, InputError> {
    let invalid = |message: String| InputError::Invalid {
        origin: origin.clone(),
        kind,
        name: name.to_owned(),
        message,
    };
    let object: T = match text {
        Some(text) => serde_saphyr::from_str(text).map_err(|e| invalid(e.to_string()))?,
        None => serde_json::from_value(value.clone()).map_err(|e| invalid(e.to_string()))?,
    };
    let known = serde_json::to_value(&object).map_err(|e| invalid(e.to_string()))?;
    if let Some(path) = unknown_field(value, &known, "") {
        return Err(invalid(format!("unknown field {path}")));
    }
    Ok(object)
}

/// The first field (as a path) present in `given` but not in `known`, ignoring null and
/// empty values, which typed objects leave out.
fn unknown_field(
    given: &serde_json::Value,
    known: &serde_json::Value,
    path: &str,
) -> Option<String> {
    use serde_json::Value;
    match (given, known) {
        (Value::Object(given), Value::Object(known)) => {
            let sorted: BTreeMap<&String, &Value> = given.iter().collect();
            for (key, value) in sorted {
                let empty = match value {
                    Value::Null => true,
                    Value::Object(o) => o.is_empty(),
                    Value::Array(a) => a.is_empty(),
                    _ => false,
                };
                let child = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                match known.get(key) {
                    Some(inner) => {
                        if let Some(found) = unknown_field(value, inner, &child) {
                            return Some(found);
                        }
                    }
                    None if !empty => return Some(child),
                    None => {}
                }
            }
            None
        }
        (Value::Array(given), Value::Array(known)) => given
            .iter()
            .zip(known)
            .enumerate()
            .find_map(|(i, (g, k))| unknown_field(g, k, &format!("{path}[{i}]"))),
        _ => None,
    }
}

fn check_duplicates(manifests: &Manifests) -> Result<(), InputError> {
    let mut seen: BTreeMap<String, &Origin> = BTreeMap::new();
    for pool in &manifests.pools {
        let name = pool.object.metadata.name.clone().unwrap_or_default();
        if let Some(first) = seen.insert(name.clone(), &pool.origin) {
            return Err(InputError::Duplicate {
                kind: "CloudPool",
                name,
                first: Box::new(first.clone()),
                second: Box::new(pool.origin.clone()),
            });
        }
    }
    let mut seen: BTreeMap<String, &Origin> = BTreeMap::new();
    for service in &manifests.services {
        let meta = &service.object.metadata;
        let name = format!(
            "{}/{}",
            meta.namespace.clone().unwrap_or_default(),
            meta.name.clone().unwrap_or_default()
        );
        if let Some(first) = seen.insert(name.clone(), &service.origin) {
            return Err(InputError::Duplicate {
                kind: "AIService",
                name,
                first: Box::new(first.clone()),
                second: Box::new(service.origin.clone()),
            });
        }
    }
    Ok(())
}
