//! What an apiserver's audit log says about requests: who (user-agent), what verb on which
//! object or collection, with which selectors, and when, so tests can check from the member's
//! side which client wrote and what it read. Every write is audited; reads (get, list, watch)
//! only of the resources named in the testbed's audit policy (see `member.rs`).

use std::collections::HashMap;
use std::time::SystemTime;

use k8s_openapi::jiff::Timestamp;
use serde::Deserialize;

/// The verbs that change objects; [`AuditRequest::is_write`] is one of these.
pub const WRITE_VERBS: [&str; 5] = ["create", "update", "patch", "delete", "deletecollection"];

/// A write request: the same record as any other audited request.
pub type AuditWrite = AuditRequest;

/// One audited request, from one line of the audit log (`audit.k8s.io/v1` Event).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditRequest {
    /// The apiserver's id of the request: a watch is logged twice (when it starts and when it
    /// ends) under one id.
    #[serde(rename = "auditID", default)]
    pub audit_id: String,
    /// The audit stage of the line kept: `ResponseComplete` for a finished request,
    /// `ResponseStarted` for a watch that had not ended when the log was read.
    #[serde(default)]
    pub stage: String,
    /// get, list, watch, create, update, patch, delete or deletecollection.
    pub verb: String,
    /// The client's User-Agent header (empty when it sent none).
    #[serde(default)]
    pub user_agent: String,
    /// The request's path and query.
    #[serde(rename = "requestURI")]
    pub request_uri: String,
    /// The object written, when the request names one.
    #[serde(default)]
    pub object_ref: Option<AuditObject>,
    /// The HTTP status the apiserver answered with.
    #[serde(default)]
    pub response_status: Option<AuditStatus>,
    /// When the apiserver received the request.
    pub request_received_timestamp: Timestamp,
    /// When the apiserver finished it.
    pub stage_timestamp: Timestamp,
}

/// The object (or, for list and watch, the collection) an audited request was about.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditObject {
    /// Resource (plural), e.g. `deployments`.
    #[serde(default)]
    pub resource: String,
    /// Namespace, empty for cluster-scoped objects.
    #[serde(default)]
    pub namespace: String,
    /// Name, empty for lists, watches and creates that let the server pick it.
    #[serde(default)]
    pub name: String,
    /// Subresource, e.g. `status`.
    #[serde(default)]
    pub subresource: String,
}

/// The status part of an audited response.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
pub struct AuditStatus {
    /// HTTP status code.
    #[serde(default)]
    pub code: u16,
}

impl AuditRequest {
    /// Whether the request changes objects (one of [`WRITE_VERBS`]).
    pub fn is_write(&self) -> bool {
        WRITE_VERBS.contains(&self.verb.as_str())
    }

    /// The decoded value of the query parameter `name`, if the request URI carries it.
    pub fn query_param(&self, name: &str) -> Option<String> {
        let (_, query) = self.request_uri.split_once('?')?;
        query.split('&').find_map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(key) == name).then(|| percent_decode(value))
        })
    }

    /// The request's `labelSelector`, or "" when it has none.
    pub fn label_selector(&self) -> String {
        self.query_param("labelSelector").unwrap_or_default()
    }

    /// The request's `fieldSelector`, or "" when it has none.
    pub fn field_selector(&self) -> String {
        self.query_param("fieldSelector").unwrap_or_default()
    }

    /// The namespace the request was confined to, or "" for a cluster-wide one.
    pub fn namespace(&self) -> &str {
        self.object_ref
            .as_ref()
            .map_or("", |o| o.namespace.as_str())
    }

    /// The object's name, or "" for lists, watches and unnamed creates.
    pub fn name(&self) -> &str {
        self.object_ref.as_ref().map_or("", |o| o.name.as_str())
    }

    /// Whether the client's user-agent contains `needle`.
    pub fn from_agent(&self, needle: &str) -> bool {
        self.user_agent.contains(needle)
    }

    /// Whether the request succeeded (2xx).
    pub fn succeeded(&self) -> bool {
        self.response_status
            .as_ref()
            .is_some_and(|s| (200..300).contains(&s.code))
    }

    /// The object's resource, or "" when there is none.
    pub fn resource(&self) -> &str {
        self.object_ref.as_ref().map_or("", |o| o.resource.as_str())
    }

    /// When the apiserver received the request, as a [`SystemTime`].
    pub fn received(&self) -> SystemTime {
        SystemTime::from(self.request_received_timestamp)
    }

    /// When the apiserver finished the request (for a watch still open, when it started
    /// answering), as a [`SystemTime`].
    pub fn completed(&self) -> SystemTime {
        SystemTime::from(self.stage_timestamp)
    }

    /// Whether the request had finished when the log was read (a watch ends when the
    /// apiserver or the client closes it).
    pub fn ended(&self) -> bool {
        self.stage == "ResponseComplete"
    }
}

/// Parses an audit log: one request per complete line, oldest first (by when they were
/// received), each request once. A watch is logged when it starts and again when it ends;
/// the later line stands in the first one's place, so an ended watch says when it ended. A
/// half-written last line is skipped.
pub fn parse_log(text: &str) -> Vec<AuditRequest> {
    let mut place: HashMap<String, usize> = HashMap::new();
    let mut out: Vec<AuditRequest> = Vec::new();
    for r in text
        .lines()
        .filter_map(|l| serde_json::from_str::<AuditRequest>(l).ok())
    {
        if r.audit_id.is_empty() {
            out.push(r);
        } else if let Some(&i) = place.get(&r.audit_id) {
            out[i] = r;
        } else {
            place.insert(r.audit_id.clone(), out.len());
            out.push(r);
        }
    }
    out
}

/// Decodes `%XX` escapes and `+` (a query string's space); a malformed escape stays as it is.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => match s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                Some(b) => {
                    out.push(b);
                    i += 2;
                }
                None => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_an_audit_line() {
        let line = r#"{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Metadata","auditID":"x","stage":"ResponseComplete","requestURI":"/apis/apps/v1/namespaces/a/deployments/b?fieldManager=skyloom","verb":"patch","user":{"username":"admin"},"userAgent":"skyloom/0.1 (replica-a)","objectRef":{"resource":"deployments","namespace":"a","name":"b","apiGroup":"apps","apiVersion":"v1"},"responseStatus":{"metadata":{},"code":200},"requestReceivedTimestamp":"2026-12-03T19:41:21.123456Z","stageTimestamp":"2026-12-03T19:41:21.130000Z"}"#;
        let w: AuditWrite = serde_json::from_str(line).unwrap();
        assert_eq!(w.verb, "patch");
        assert!(w.from_agent("replica-a"));
        assert!(w.succeeded());
        assert_eq!(w.resource(), "deployments");
        assert!(w.completed() > w.received());
        assert!(w.is_write());
    }

    #[test]
    fn reads_selectors_from_the_request_uri() {
        let line = r#"{"auditID":"w1","stage":"ResponseStarted","requestURI":"/apis/apps/v1/deployments?labelSelector=app.kubernetes.io%2Fmanaged-by%3Dskyloom&fieldSelector=status.phase%21%3DFailed&watch=true","verb":"watch","userAgent":"skyloom/0.1 (r)","objectRef":{"resource":"deployments","apiGroup":"apps","apiVersion":"v1"},"requestReceivedTimestamp":"2026-12-03T19:41:21.123456Z","stageTimestamp":"2026-12-03T19:41:21.130000Z"}"#;
        let ended = line.replace("ResponseStarted", "ResponseComplete");
        let requests = parse_log(&format!("{line}\n{ended}\n{{\"half"));
        assert_eq!(requests.len(), 1, "a watch's two lines are one request");
        let w = &requests[0];
        assert!(w.ended(), "the later line, saying the watch ended, is kept");
        let open = parse_log(line);
        assert!(!open[0].ended());
        assert!(!w.is_write());
        assert_eq!(w.label_selector(), "app.kubernetes.io/managed-by=skyloom");
        assert_eq!(w.field_selector(), "status.phase!=Failed");
        assert_eq!(w.query_param("watch").as_deref(), Some("true"));
        assert_eq!(w.query_param("limit"), None);
        assert_eq!(w.namespace(), "");
        assert_eq!(w.name(), "");
    }

    #[test]
    fn decodes_query_escapes() {
        assert_eq!(percent_decode("a%2Fb+c"), "a/b c");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
    }
}
